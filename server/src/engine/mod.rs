//! The engine: the only module that imports `rocksdb`.
//!
//! One RocksDB per member, with a fixed set of column families ([`Cf`]). Everything above this module
//! speaks in our own types: [`Engine`] for the database, [`Batch`] for an atomic multi-CF write,
//! [`ReadView`] for a consistent point-in-time read, and [`RangeIter`] for ordered scans.
//!
//! **Invariant:** a [`Batch`] is applied atomically across column families (one WAL record).
//! **Invariant:** writes that must be durable before they are acknowledged use [`Durability::Sync`]
//! (fdatasync of the WAL); nothing ever disables the WAL.
//! **Boundary:** this module knows nothing of raft, revisions or etcd; keys and values are bytes.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, DBRawIteratorWithThreadMode,
    Options, ReadOptions, SnapshotWithThreadMode, WriteBatch, WriteOptions, DB,
};

/// The most WAL RocksDB keeps before flushing memtables (and so the most an open replays).
const WAL_BYTES_MAX: u64 = 32 << 20;

/// The column families of a member's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// Raft log entries, keyed by big-endian log index.
    RaftLog,
    /// Raft hard state, conf state and log truncation point.
    RaftState,
    /// MVCC: the current version of every live key, keyed by the raw user key.
    KvLatest,
    /// MVCC: every version of every key (until compaction), keyed by (escaped key, inverted revision).
    KvHistory,
    /// MVCC: the event log, keyed by (main revision, sub revision); values name the key and event type.
    KvRevision,
    /// Applied index, current and compacted revision, cluster and member identity.
    Meta,
    /// Leases (id → granted TTL) and their attached keys.
    Lease,
}

impl Cf {
    pub const ALL: [Cf; 7] = [
        Cf::RaftLog,
        Cf::RaftState,
        Cf::KvLatest,
        Cf::KvHistory,
        Cf::KvRevision,
        Cf::Meta,
        Cf::Lease,
    ];

    /// The column families of the replicated state machine (what a raft snapshot carries).
    pub const STATE: [Cf; 5] = [
        Cf::KvLatest,
        Cf::KvHistory,
        Cf::KvRevision,
        Cf::Meta,
        Cf::Lease,
    ];

    /// A stable one-byte tag (used in snapshot records).
    pub fn tag(self) -> u8 {
        Cf::ALL.iter().position(|&c| c == self).expect("listed") as u8
    }

    pub fn from_tag(tag: u8) -> Option<Cf> {
        Cf::ALL.get(tag as usize).copied()
    }

    fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
            Cf::KvLatest => "kv_latest",
            Cf::KvHistory => "kv_history",
            Cf::KvRevision => "kv_revision",
            Cf::Meta => "meta",
            Cf::Lease => "lease",
        }
    }

    fn options(self) -> Options {
        let mut opts = Options::default();
        match self {
            // The raft log is written once, read rarely (catch-up) and deleted by range: no compression,
            // small memtables.
            Cf::RaftLog => {
                opts.set_compression_type(DBCompressionType::None);
                opts.set_write_buffer_size(32 << 20);
            }
            Cf::RaftState | Cf::Meta | Cf::Lease => {
                opts.set_compression_type(DBCompressionType::None);
                opts.set_write_buffer_size(4 << 20);
            }
            Cf::KvLatest | Cf::KvHistory | Cf::KvRevision => {
                opts.set_compression_type(DBCompressionType::Lz4);
                let mut table = BlockBasedOptions::default();
                table.set_bloom_filter(10.0, false);
                table.set_cache_index_and_filter_blocks(true);
                opts.set_block_based_table_factory(&table);
                opts.set_write_buffer_size(32 << 20);
            }
        }
        opts
    }
}

/// Whether a write must reach stable storage before [`Engine::write`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync the WAL: for the raft log and hard state (the durability promise rests on it).
    Sync,
    /// Leave it in the OS cache: for state-machine writes, which the raft log can replay.
    Buffered,
}

/// An I/O error from the storage engine.
#[derive(Debug, thiserror::Error)]
#[error("storage engine: {0}")]
pub struct EngineError(#[from] rocksdb::Error);

pub type Result<T> = std::result::Result<T, EngineError>;

/// A member's database. Cheap to clone; all clones share one RocksDB instance.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
}

impl Engine {
    /// Opens (or creates) the database in `dir`, with every column family of [`Cf::ALL`].
    pub fn open(dir: &Path) -> Result<Engine> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        // Bounds the WAL that an open must replay, so restart time does not grow with the write
        // rate: past this size RocksDB flushes the column families that pin the oldest WAL file.
        opts.set_max_total_wal_size(WAL_BYTES_MAX);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf.options()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Engine { db: Arc::new(db) })
    }

    fn handle(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family is created at open")
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.handle(cf), key)?)
    }

    /// Applies `batch` atomically.
    pub fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(durability == Durability::Sync);
        self.db.write_opt(batch.inner, &wo)?;
        Ok(())
    }

    /// A new, empty batch for this engine.
    pub fn batch(&self) -> Batch {
        Batch {
            engine: self.clone(),
            inner: WriteBatch::default(),
        }
    }

    /// A consistent view of the whole database as of now.
    pub fn read_view(&self) -> ReadView<'_> {
        ReadView {
            engine: self,
            snapshot: self.db.snapshot(),
        }
    }

    /// Opens a checkpoint (see [`Engine::checkpoint`]) for reading.
    pub fn open_read_only(dir: &Path) -> Result<Engine> {
        let names = Cf::ALL.iter().map(|cf| cf.name());
        let db = DB::open_cf_for_read_only(&Options::default(), dir, names, false)?;
        Ok(Engine { db: Arc::new(db) })
    }

    /// Writes a consistent copy of the whole database to the new directory `dir` (hard links to
    /// the immutable files plus a flush of the memtables: cheap and fast).
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    /// Adds to `batch` the deletion of every key of `cf`.
    pub fn clear(&self, cf: Cf, batch: &mut Batch) -> Result<()> {
        let mut it = self.db.raw_iterator_cf(self.handle(cf));
        it.seek_to_first();
        let first = it.key().map(<[u8]>::to_vec);
        it.seek_to_last();
        let last = it.key().map(<[u8]>::to_vec);
        it.status()?;
        if let (Some(first), Some(last)) = (first, last) {
            batch.delete_range(cf, &first, &last);
            batch.delete(cf, &last);
        }
        Ok(())
    }

    /// Rebuilds a batch from [`Batch::data`].
    pub fn batch_from_data(&self, data: &[u8]) -> Batch {
        Batch {
            engine: self.clone(),
            inner: WriteBatch::from_data(data),
        }
    }

    /// An iterator over `[lower, upper)` of the live database (no snapshot); `upper = None` means to the end.
    pub fn iter(&self, cf: Cf, lower: &[u8], upper: Option<&[u8]>) -> RangeIter<'_> {
        let mut ro = ReadOptions::default();
        if let Some(upper) = upper {
            ro.set_iterate_upper_bound(upper.to_vec());
        }
        let mut raw = self.db.raw_iterator_cf_opt(self.handle(cf), ro);
        raw.seek(lower);
        RangeIter { raw }
    }

    /// Every entry of `cf`, in order (for tests).
    #[cfg(test)]
    pub fn dump(&self, cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = vec![];
        let mut it = self.iter(cf, &[], None);
        while let Some((k, v)) = it.current() {
            out.push((k.to_vec(), v.to_vec()));
            it.advance();
        }
        out
    }

    /// Compacts every column family fully, dropping deleted and overwritten data from disk
    /// (what etcd's defragment achieves for bbolt). Blocks until done.
    pub fn compact_all(&self) {
        for cf in Cf::ALL {
            self.db
                .compact_range_cf(self.handle(cf), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Estimated size of the state machine's data (SST files plus memtables of every column family
    /// but the raft log's), in bytes: what etcd reports as its backend's `dbSize` (its WAL is apart).
    pub fn state_size_bytes(&self) -> u64 {
        self.state_property_sum(&[
            "rocksdb.total-sst-files-size",
            "rocksdb.cur-size-all-mem-tables",
        ])
    }

    /// Estimated bytes of live state-machine data (RocksDB's estimate of the SST data that a full
    /// compaction would keep, plus memtables): what etcd reports as its backend's `dbSizeInUse`.
    /// The rest of [`Engine::state_size_bytes`] is obsolete versions and tombstones, which
    /// Defragment (a full compaction) drops.
    pub fn state_live_bytes(&self) -> u64 {
        self.state_property_sum(&[
            "rocksdb.estimate-live-data-size",
            "rocksdb.cur-size-all-mem-tables",
        ])
    }

    /// The sum of integer properties `names` over every column family but the raft log's.
    fn state_property_sum(&self, names: &[&str]) -> u64 {
        Cf::ALL
            .iter()
            .filter(|cf| !matches!(cf, Cf::RaftLog | Cf::RaftState))
            .flat_map(|&cf| names.iter().map(move |&name| (cf, name)))
            .map(|(cf, name)| {
                self.db
                    .property_int_value_cf(self.handle(cf), name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// A set of writes across column families, applied atomically by [`Engine::write`].
pub struct Batch {
    engine: Engine,
    inner: WriteBatch,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.put_cf(self.engine.handle(cf), key, value);
    }

    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.inner.delete_cf(self.engine.handle(cf), key);
    }

    /// Deletes every key in `[from, to)`.
    pub fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        self.inner.delete_range_cf(self.engine.handle(cf), from, to);
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The number of writes in the batch.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn size_bytes(&self) -> usize {
        self.inner.size_in_bytes()
    }

    /// The batch's serialized form (for [`Engine::batch_from_data`] on the same database).
    pub fn data(&self) -> Vec<u8> {
        self.inner.data().to_vec()
    }
}

/// A point-in-time view: every read through it sees the same state.
pub struct ReadView<'a> {
    engine: &'a Engine,
    snapshot: SnapshotWithThreadMode<'a, DB>,
}

impl<'a> ReadView<'a> {
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.snapshot.get_cf(self.engine.handle(cf), key)?)
    }

    /// An iterator over `[lower, upper)` as of this view, positioned at the first key ≥ `lower`.
    pub fn iter(&self, cf: Cf, lower: &[u8], upper: Option<&[u8]>) -> RangeIter<'_> {
        let mut ro = ReadOptions::default();
        if let Some(upper) = upper {
            ro.set_iterate_upper_bound(upper.to_vec());
        }
        let mut raw = self
            .snapshot
            .raw_iterator_cf_opt(self.engine.handle(cf), ro);
        raw.seek(lower);
        RangeIter { raw }
    }
}

/// A forward iterator over one column family. Call [`RangeIter::check`] after iteration ends to learn
/// whether it ended because of an I/O error.
pub struct RangeIter<'a> {
    raw: DBRawIteratorWithThreadMode<'a, DB>,
}

impl RangeIter<'_> {
    /// The current entry, or `None` at the end of the range.
    pub fn current(&self) -> Option<(&[u8], &[u8])> {
        if self.raw.valid() {
            Some((self.raw.key()?, self.raw.value()?))
        } else {
            None
        }
    }

    pub fn advance(&mut self) {
        self.raw.next();
    }

    /// Repositions at the first key ≥ `key` (still within the bounds given at creation).
    pub fn seek(&mut self, key: &[u8]) {
        self.raw.seek(key);
    }

    /// The error that ended iteration early, if any.
    pub fn check(&self) -> Result<()> {
        Ok(self.raw.status()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_atomic_across_column_families_and_views_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut batch = engine.batch();
        batch.put(Cf::KvLatest, b"a", b"1");
        batch.put(Cf::Meta, b"applied", b"7");
        engine.write(batch, Durability::Sync).unwrap();

        let view = engine.read_view();
        let mut batch = engine.batch();
        batch.put(Cf::KvLatest, b"b", b"2");
        batch.delete(Cf::KvLatest, b"a");
        engine.write(batch, Durability::Buffered).unwrap();

        assert_eq!(
            view.get(Cf::Meta, b"applied").unwrap().as_deref(),
            Some(&b"7"[..])
        );
        let mut it = view.iter(Cf::KvLatest, b"", None);
        assert_eq!(it.current().map(|(k, _)| k.to_vec()), Some(b"a".to_vec()));
        it.advance();
        assert!(it.current().is_none());
        it.check().unwrap();

        let mut it = engine.iter(Cf::KvLatest, b"", Some(b"c"));
        assert_eq!(it.current().map(|(k, _)| k.to_vec()), Some(b"b".to_vec()));
        it.advance();
        assert!(it.current().is_none());
    }

    #[test]
    fn delete_range_removes_half_open_interval() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut batch = engine.batch();
        for i in 0u8..5 {
            batch.put(Cf::RaftLog, &[i], b"x");
        }
        engine.write(batch, Durability::Sync).unwrap();
        let mut batch = engine.batch();
        batch.delete_range(Cf::RaftLog, &[1], &[3]);
        engine.write(batch, Durability::Sync).unwrap();
        let mut keys = vec![];
        let mut it = engine.iter(Cf::RaftLog, b"", None);
        while let Some((k, _)) = it.current() {
            keys.push(k[0]);
            it.advance();
        }
        assert_eq!(keys, vec![0, 3, 4]);
    }
}
