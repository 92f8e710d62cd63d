//! `LogStore`: raft-rs's `Storage` over the engine's `raft_log` and `raft_state` column families.
//!
//! The raft loop mutates it in memory at `Ready` time (the tail cache makes new entries readable at
//! once, as `advance_append_async` requires) and hands the same data to the log writer, which makes it
//! durable. Entries older than the cache are read back from RocksDB.
//!
//! **Invariant:** the log is contiguous: `truncated_index < first cached index ≤ last_index + 1`, and
//! every index in `(truncated_index, last_index]` is in the cache or in RocksDB.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::engine::{Batch, Cf, Engine, EngineError};
use crate::snapshot::Checkpoint;

const STATE_HARD: &[u8] = b"hard_state";
const STATE_CONF: &[u8] = b"conf_state";
const STATE_TRUNCATED: &[u8] = b"truncated";

/// The index of the virtual entry a new log starts after (it holds the initial configuration).
pub const BOOTSTRAP_INDEX: u64 = 1;

/// Entries kept in memory once durable (for followers' catch-up and for apply), at most.
const CACHE_ENTRIES_MAX: usize = 4096;

/// How long a checkpoint is offered to lagging followers before a fresher one is taken.
const CHECKPOINT_REUSE: Duration = Duration::from_secs(30);

pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The leader's source of snapshots: checkpoints of the state machine, taken on a background thread
/// when raft first asks (raft retries while one is being taken), and shared by every follower that
/// needs one while fresh. The transport streams them.
pub struct SnapshotSource {
    engine: Engine,
    dir: PathBuf,
    state: Mutex<SourceState>,
}

#[derive(Default)]
struct SourceState {
    latest: Option<Latest>,
    building: bool,
    next_id: u64,
}

struct Latest {
    id: u64,
    checkpoint: Arc<Checkpoint>,
    index: u64,
    conf_state: ConfState,
    taken: Instant,
}

impl SnapshotSource {
    pub fn new(engine: Engine, dir: PathBuf) -> Arc<SnapshotSource> {
        Arc::new(SnapshotSource {
            engine,
            dir,
            state: Mutex::default(),
        })
    }

    /// The checkpoint a snapshot message's data names, if it is still the latest.
    pub fn checkpoint(&self, data: &[u8]) -> Option<Arc<Checkpoint>> {
        let id = u64::from_be_bytes(data.try_into().ok()?);
        let state = self.state.lock().expect("snapshot source lock");
        let latest = state.latest.as_ref()?;
        (latest.id == id).then(|| latest.checkpoint.clone())
    }

    /// The latest checkpoint (id, index, conf state) if it is fresh and covers `request_index`.
    fn usable(&self, request_index: u64) -> Option<(u64, u64, ConfState)> {
        let state = self.state.lock().expect("snapshot source lock");
        let l = state.latest.as_ref()?;
        (l.index >= request_index && l.taken.elapsed() < CHECKPOINT_REUSE)
            .then(|| (l.id, l.index, l.conf_state.clone()))
    }

    /// Starts taking a new checkpoint unless one is being taken.
    fn build(self: &Arc<SnapshotSource>) {
        let id = {
            let mut state = self.state.lock().expect("snapshot source lock");
            if state.building {
                return;
            }
            state.building = true;
            state.next_id += 1;
            state.next_id
        };
        let source = self.clone();
        std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let taken = source.take(id);
                let mut state = source.state.lock().expect("snapshot source lock");
                state.building = false;
                match taken {
                    Ok(latest) => {
                        tracing::info!(index = latest.index, "took a checkpoint for snapshots");
                        state.latest = Some(latest);
                    }
                    Err(e) => tracing::error!("cannot take a checkpoint for a snapshot: {e}"),
                }
            })
            .expect("spawn checkpoint thread");
    }

    fn take(&self, id: u64) -> Result<Latest, crate::snapshot::SnapshotError> {
        let dir = self.dir.join(format!("checkpoint-{id}"));
        let checkpoint = Checkpoint::create(&self.engine, dir)?;
        let index = checkpoint.applied_index()?;
        let conf_state = checkpoint
            .engine
            .get(Cf::RaftState, STATE_CONF)?
            .map(|b| decode(&b))
            .unwrap_or_default();
        Ok(Latest {
            id,
            checkpoint: Arc::new(checkpoint),
            index,
            conf_state,
            taken: Instant::now(),
        })
    }

    /// Lets go of a checkpoint that is no longer fresh (senders still using it keep it alive).
    pub fn release_stale(&self) {
        let mut state = self.state.lock().expect("snapshot source lock");
        if state
            .latest
            .as_ref()
            .is_some_and(|l| l.taken.elapsed() >= CHECKPOINT_REUSE)
        {
            state.latest = None;
        }
    }
}

pub struct LogStore {
    engine: Engine,
    snapshots: Arc<SnapshotSource>,
    hard_state: HardState,
    conf_state: ConfState,
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    /// The newest entries, contiguous and ending at `last_index`.
    cache: VecDeque<Entry>,
    /// Entries up to here are durable (so may leave the cache).
    persisted_index: u64,
}

fn decode<M: protobuf::Message>(bytes: &[u8]) -> M {
    M::parse_from_bytes(bytes).expect("raft state written by us decodes")
}

fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes().expect("raft messages encode")
}

fn fatal(e: EngineError) -> raft::Error {
    // An unreadable raft log leaves no safe way on: the caller crashes (fail-stop).
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl LogStore {
    /// Bootstraps a member of a new cluster: the log starts after a virtual entry at index 1, term 1,
    /// whose configuration is `voters` (raft-rs: `MemStorage::initialize_with_conf_state`), so that a
    /// member that joins later catches up through a snapshot.
    pub fn bootstrap(engine: &Engine, voters: &[u64]) -> Result<(), EngineError> {
        let hs = HardState {
            term: 1,
            commit: BOOTSTRAP_INDEX,
            ..HardState::default()
        };
        let cs = ConfState {
            voters: voters.to_vec(),
            ..ConfState::default()
        };
        Self::write_initial(engine, &hs, &cs, BOOTSTRAP_INDEX, 1)
    }

    /// Bootstraps a member that joins a running cluster: an empty log and no configuration; the
    /// leader's first message finds nothing to match and sends a snapshot.
    pub fn bootstrap_joining(engine: &Engine) -> Result<(), EngineError> {
        Self::write_initial(engine, &HardState::default(), &ConfState::default(), 0, 0)
    }

    fn write_initial(
        engine: &Engine,
        hs: &HardState,
        cs: &ConfState,
        truncated_index: u64,
        truncated_term: u64,
    ) -> Result<(), EngineError> {
        let mut batch = engine.batch();
        batch.put(Cf::RaftState, STATE_HARD, &encode(hs));
        batch.put(Cf::RaftState, STATE_CONF, &encode(cs));
        batch.put(
            Cf::RaftState,
            STATE_TRUNCATED,
            &truncated_value(truncated_index, truncated_term),
        );
        engine.write(batch, crate::engine::Durability::Sync)
    }

    /// Whether the engine holds a raft log (a member that ran before).
    pub fn exists(engine: &Engine) -> Result<bool, EngineError> {
        Ok(engine.get(Cf::RaftState, STATE_CONF)?.is_some())
    }

    /// Loads the log state. `applied` is the state machine's applied index: an entry is applied only
    /// once committed, so a commit index below it (written unsynced, lost in a crash) is raised to it.
    pub fn open(
        engine: Engine,
        applied: u64,
        snapshots: Arc<SnapshotSource>,
    ) -> Result<LogStore, EngineError> {
        let hard_state: HardState = engine
            .get(Cf::RaftState, STATE_HARD)?
            .map(|b| decode(&b))
            .unwrap_or_default();
        let conf_state: ConfState = engine
            .get(Cf::RaftState, STATE_CONF)?
            .map(|b| decode(&b))
            .unwrap_or_default();
        let (truncated_index, truncated_term) =
            engine
                .get(Cf::RaftState, STATE_TRUNCATED)?
                .map_or((0, 0), |b| {
                    (
                        u64::from_be_bytes(b[..8].try_into().expect("16 bytes")),
                        u64::from_be_bytes(b[8..].try_into().expect("16 bytes")),
                    )
                });
        let mut last_index = truncated_index;
        {
            let mut it = engine.iter(Cf::RaftLog, &log_key(truncated_index + 1), None);
            while let Some((k, _)) = it.current() {
                let index = u64::from_be_bytes(k.try_into().expect("8-byte log key"));
                assert_eq!(
                    index,
                    last_index + 1,
                    "raft log has a gap at {}",
                    last_index + 1
                );
                last_index = index;
                it.advance();
            }
            it.check()?;
        }
        let mut store = LogStore {
            engine,
            snapshots,
            hard_state,
            conf_state,
            truncated_index,
            truncated_term,
            last_index,
            cache: VecDeque::new(),
            persisted_index: last_index,
        };
        assert!(
            applied <= last_index,
            "applied index {applied} beyond the raft log's last index {last_index}"
        );
        if store.hard_state.commit < applied {
            store.hard_state.commit = applied;
        }
        Ok(store)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Takes the configuration raft reports after applying a membership change; returns the write
    /// that the apply worker makes with the entry (the stored configuration follows the applied index).
    pub fn set_conf_state(&mut self, cs: ConfState) -> Batch {
        let mut batch = self.engine.batch();
        batch.put(Cf::RaftState, STATE_CONF, &encode(&cs));
        self.conf_state = cs;
        batch
    }

    /// Replaces the whole log with a snapshot's position (raft-rs `MemStorage::apply_snapshot`);
    /// returns what the install writes in its last batch: the truncation point, the configuration,
    /// the hard state, and the deletion of every older entry.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata, hs: Option<&HardState>) -> Batch {
        let mut batch = self.engine.batch();
        batch.delete_range(
            Cf::RaftLog,
            &log_key(self.truncated_index + 1),
            &log_key(self.last_index.max(meta.index) + 1),
        );
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.truncated_index = meta.index;
        self.truncated_term = meta.term;
        self.last_index = meta.index;
        self.persisted_index = meta.index;
        self.cache.clear();
        batch.put(Cf::RaftState, STATE_HARD, &encode(&self.hard_state));
        batch.put(Cf::RaftState, STATE_CONF, &encode(&self.conf_state));
        batch.put(
            Cf::RaftState,
            STATE_TRUNCATED,
            &truncated_value(meta.index, meta.term),
        );
        batch
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    pub fn truncated_index(&self) -> u64 {
        self.truncated_index
    }

    /// Takes new entries into the log (they may replace a conflicting tail) and returns what the log
    /// writer must do to make the same change durable.
    pub fn append(&mut self, entries: &[Entry], batch: &mut Batch) {
        let Some(first) = entries.first() else {
            return;
        };
        assert!(
            first.index > self.truncated_index && first.index <= self.last_index + 1,
            "append at {} leaves a gap after {} (truncated at {})",
            first.index,
            self.last_index,
            self.truncated_index
        );
        let new_last = entries.last().expect("non-empty").index;
        if first.index <= self.last_index {
            // A conflicting tail is replaced: forget it in memory and on disk.
            let cache_first = self.cache.front().map_or(self.last_index + 1, |e| e.index);
            if first.index < cache_first {
                self.cache.clear();
            } else {
                self.cache.truncate((first.index - cache_first) as usize);
            }
            if new_last < self.last_index {
                batch.delete_range(
                    Cf::RaftLog,
                    &log_key(new_last + 1),
                    &log_key(self.last_index + 1),
                );
            }
            self.persisted_index = self.persisted_index.min(first.index - 1);
        }
        for e in entries {
            batch.put(Cf::RaftLog, &log_key(e.index), &encode(e));
            self.cache.push_back(e.clone());
        }
        self.last_index = new_last;
    }

    /// Adds the hard state to a log writer batch.
    pub fn save_hard_state(&self, batch: &mut Batch) {
        batch.put(Cf::RaftState, STATE_HARD, &encode(&self.hard_state));
    }

    /// Entries up to `index` are durable: the cache may let go of old ones.
    pub fn on_persisted(&mut self, index: u64) {
        self.persisted_index = self.persisted_index.max(index.min(self.last_index));
        while self.cache.len() > CACHE_ENTRIES_MAX
            && self
                .cache
                .front()
                .is_some_and(|e| e.index <= self.persisted_index)
        {
            self.cache.pop_front();
        }
    }

    /// Drops the log up to and including `index` (it is applied and no longer needed); returns the
    /// batch writes that make it durable.
    pub fn truncate(&mut self, index: u64, batch: &mut Batch) {
        assert!(index <= self.persisted_index && index > self.truncated_index);
        let term = self.term(index).expect("entry to truncate at exists");
        batch.delete_range(
            Cf::RaftLog,
            &log_key(self.truncated_index + 1),
            &log_key(index + 1),
        );
        batch.put(
            Cf::RaftState,
            STATE_TRUNCATED,
            &truncated_value(index, term),
        );
        self.truncated_index = index;
        self.truncated_term = term;
        while self.cache.front().is_some_and(|e| e.index <= index) {
            self.cache.pop_front();
        }
    }

    fn cached(&self, index: u64) -> Option<&Entry> {
        let first = self.cache.front()?.index;
        if index < first {
            return None;
        }
        self.cache.get((index - first) as usize)
    }

    fn load(&self, index: u64) -> raft::Result<Entry> {
        let bytes = self
            .engine
            .get(Cf::RaftLog, &log_key(index))
            .map_err(fatal)?
            .unwrap_or_else(|| panic!("raft log entry {index} is missing"));
        Ok(decode(&bytes))
    }
}

fn truncated_value(index: u64, term: u64) -> Vec<u8> {
    let mut v = index.to_be_bytes().to_vec();
    v.extend_from_slice(&term.to_be_bytes());
    v
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last_index + 1,
            "entries({low}, {high}) beyond {}",
            self.last_index
        );
        let max_size = max_size.into();
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let entry = match self.cached(index) {
                Some(e) => e.clone(),
                None => self.load(index)?,
            };
            size += u64::from(entry.compute_size());
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.cached(idx) {
            Some(e) => Ok(e.term),
            None => Ok(self.load(idx)?.term),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// Offers the latest checkpoint when it is fresh, covers `request_index` and its term is still
    /// known; otherwise starts taking one and asks raft to retry (it does, on the next heartbeat).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if let Some((id, index, conf_state)) = self.snapshots.usable(request_index) {
            if let Ok(term) = self.term(index) {
                let mut snapshot = Snapshot {
                    data: id.to_be_bytes().to_vec().into(),
                    ..Snapshot::default()
                };
                let meta = snapshot.mut_metadata();
                meta.index = index;
                meta.term = term;
                meta.set_conf_state(conf_state);
                return Ok(snapshot);
            }
        }
        self.snapshots.build();
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Entry::default()
        }
    }

    #[test]
    fn append_replace_truncate_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let snapshots = SnapshotSource::new(engine.clone(), dir.path().join("snap"));
        LogStore::bootstrap(&engine, &[7]).unwrap();
        let mut store = LogStore::open(engine.clone(), 0, snapshots.clone()).unwrap();
        assert_eq!(store.first_index().unwrap(), 2);
        assert_eq!(store.term(1).unwrap(), 1);

        let mut batch = engine.batch();
        store.append(&[entry(2, 2), entry(3, 2), entry(4, 2)], &mut batch);
        engine
            .write(batch, crate::engine::Durability::Sync)
            .unwrap();
        store.on_persisted(4);
        // A new leader's entries replace index 3 onwards.
        let mut batch = engine.batch();
        store.append(&[entry(3, 3)], &mut batch);
        engine
            .write(batch, crate::engine::Durability::Sync)
            .unwrap();
        assert_eq!(store.last_index, 3);
        let got = store
            .entries(2, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(2, 2), (3, 3)]
        );

        store.on_persisted(3);
        let mut batch = engine.batch();
        store.truncate(2, &mut batch);
        engine
            .write(batch, crate::engine::Durability::Sync)
            .unwrap();

        let reopened = LogStore::open(engine, 3, snapshots).unwrap();
        assert_eq!(reopened.first_index().unwrap(), 3);
        assert_eq!(reopened.last_index, 3);
        assert_eq!(reopened.term(2).unwrap(), 2);
        assert_eq!(reopened.term(3).unwrap(), 3);
        assert_eq!(
            reopened.hard_state.commit, 3,
            "commit raised to the applied index"
        );
        assert!(matches!(
            reopened.entries(2, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
    }
}
