//! Physical compaction: removes the history that a logical compaction (see `Writer::compact`) has
//! made unreadable. Runs on its own thread so that apply never waits for it.
//!
//! For compaction at revision C, every key with an event below C keeps only its newest version at or
//! below C (none if that version is a tombstone); the event log below C is dropped whole. Keys whose
//! last event lies below an earlier compaction have nothing left to remove, so the work is
//! proportional to the events being compacted, not to the number of keys.
//!
//! **Invariant:** only versions older than C are removed, and apply only writes versions newer than the
//! current revision (≥ C), so the two never touch the same entries.
//! **Invariant:** the work is idempotent: after a crash it is redone from the start.

use std::collections::HashSet;
use std::thread;

use tokio::sync::watch;

use super::codec;
use super::{decode_i64, Result, META_COMPACT_FINISHED, META_COMPACT_REVISION};
use crate::engine::{Cf, Durability, Engine};

/// Keys handled per write batch.
const COMPACT_BATCH_KEYS_MAX: usize = 10_000;

/// Handle to the compaction thread.
pub struct Compactor {
    /// `None` only while dropping.
    requests: Option<watch::Sender<i64>>,
    finished: watch::Receiver<i64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Compactor {
    /// Stops the thread (after the compaction in progress, if any) and waits for it, so that the
    /// database is not in use when the process exits.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Compactor {
    /// Starts the thread and resumes a compaction that a crash interrupted.
    pub fn start(engine: Engine) -> Result<Compactor> {
        let scheduled = decode_i64(engine.get(Cf::Meta, META_COMPACT_REVISION)?);
        let done = decode_i64(engine.get(Cf::Meta, META_COMPACT_FINISHED)?);
        let (requests, mut rx) = watch::channel(scheduled);
        let (finished_tx, finished) = watch::channel(done);
        let thread = thread::Builder::new()
            .name("compactor".into())
            .spawn(move || loop {
                let target = *rx.borrow_and_update();
                if target > *finished_tx.borrow() {
                    if let Err(e) = compact(&engine, target) {
                        panic!("compaction to revision {target} failed: {e}");
                    }
                    finished_tx.send_replace(target);
                    continue;
                }
                if futures::executor::block_on(rx.changed()).is_err() {
                    return;
                }
            })
            .expect("spawn compactor thread");
        Ok(Compactor {
            requests: Some(requests),
            finished,
            thread: Some(thread),
        })
    }

    /// Asks for history below `revision` to be removed.
    pub fn schedule(&self, revision: i64) {
        let requests = self.requests.as_ref().expect("set until drop");
        requests.send_if_modified(|r| {
            let newer = revision > *r;
            if newer {
                *r = revision;
            }
            newer
        });
    }

    /// Waits until history below `revision` is gone.
    pub async fn wait_finished(&self, revision: i64) {
        let mut rx = self.finished.clone();
        // The thread only stops with the process, so the channel outlives every waiter.
        let _ = rx.wait_for(|&done| done >= revision).await;
    }
}

/// Removes every version older than `target` that no read at or above `target` can see.
pub(crate) fn compact(engine: &Engine, target: i64) -> Result<()> {
    let end = codec::revision_key(target, 0);
    let mut keys: HashSet<Vec<u8>> = HashSet::new();
    let mut it = engine.iter(Cf::KvRevision, &codec::revision_key(0, 0), Some(&end));
    while let Some((_, v)) = it.current() {
        let (_, key) = codec::decode_revision_value(v);
        if !keys.contains(key) {
            keys.insert(key.to_vec());
            if keys.len() >= COMPACT_BATCH_KEYS_MAX {
                compact_keys(engine, target, keys.drain())?;
            }
        }
        it.advance();
    }
    it.check()?;
    compact_keys(engine, target, keys.drain())?;
    let mut batch = engine.batch();
    batch.delete_range(Cf::KvRevision, &codec::revision_key(0, 0), &end);
    batch.put(Cf::Meta, META_COMPACT_FINISHED, &target.to_be_bytes());
    engine.write(batch, Durability::Buffered)?;
    Ok(())
}

fn compact_keys(engine: &Engine, target: i64, keys: impl Iterator<Item = Vec<u8>>) -> Result<()> {
    let mut batch = engine.batch();
    for key in keys {
        let mut upper = codec::history_key_prefix(&key);
        upper.extend_from_slice(&[0xFF; 9]);
        // Versions at or below `target`, newest first.
        let mut it = engine.iter(
            Cf::KvHistory,
            &codec::history_key(&key, target),
            Some(&upper),
        );
        let mut newest = true;
        while let Some((k, v)) = it.current() {
            // The newest version at or below the target stays readable unless it is a tombstone.
            if !newest || v.is_empty() {
                batch.delete(Cf::KvHistory, k);
            }
            newest = false;
            it.advance();
        }
        it.check()?;
    }
    engine.write(batch, Durability::Buffered)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Writer;
    use cairn_proto::etcdserverpb::{DeleteRangeRequest, PutRequest};

    fn count(engine: &Engine, cf: Cf) -> usize {
        let mut it = engine.iter(cf, b"", None);
        let mut n = 0;
        while it.current().is_some() {
            n += 1;
            it.advance();
        }
        n
    }

    #[test]
    fn compaction_keeps_only_what_reads_at_or_above_it_can_see() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut w = Writer::open(engine.clone()).unwrap();
        let put = |key: &str| PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        };
        // a@2..6 (five versions), b@7, b deleted @8, c@9.
        for i in 0..5 {
            w.put(&put("a"), i + 1).unwrap();
        }
        w.put(&put("b"), 6).unwrap();
        let del = DeleteRangeRequest {
            key: b"b".to_vec().into(),
            ..Default::default()
        };
        w.delete_range(&del, 7).unwrap();
        w.put(&put("c"), 8).unwrap();
        w.flush().unwrap();
        assert_eq!(
            (
                count(&engine, Cf::KvHistory),
                count(&engine, Cf::KvRevision)
            ),
            (8, 8)
        );

        w.compact(9, 9).unwrap();
        compact(&engine, 9).unwrap();
        // a keeps its newest version (6); b's tombstone (8) and older are gone; c@9 stays.
        assert_eq!(count(&engine, Cf::KvHistory), 2);
        // Only events at or above the compaction revision remain.
        assert_eq!(count(&engine, Cf::KvRevision), 1);
        // Compacting again is harmless (idempotent after a crash).
        compact(&engine, 9).unwrap();
        assert_eq!(count(&engine, Cf::KvHistory), 2);
    }
}
