//! Hashes of the state for `Maintenance.Hash` and `HashKV` (etcd: `mvcc/kvstore.go` `HashByRev`),
//! and so for the corruption check, which compares members' HashKV at one revision.
//!
//! HashKV covers the key-value history up to a revision as etcd defines it: every version newer
//! than the compacted revision, plus, at or below it, only the version each key still shows at the
//! hashed revision (what a compaction keeps). So the hash does not depend on how far the physical
//! compaction thread has got, and members with the same history agree on it. CRC-32C, as etcd;
//! the bytes hashed are Cairn's own (history keys and stored values), so the values differ from
//! etcd's.

use crc::{Crc, CRC_32_ISCSI};

use super::{codec, REVISION_INITIAL};
use super::{decode_i64, Error, Result, Store, META_COMPACT_REVISION, META_REVISION};
use crate::cluster::LOCAL_PREFIX;
use crate::engine::Cf;

const CASTAGNOLI: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// A HashKV answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The compacted revision when the hash was taken.
    pub compact_revision: i64,
    /// The revision hashed.
    pub revision: i64,
    /// The current revision when the hash was taken.
    pub current_revision: i64,
}

impl Store {
    /// The hash of the history up to `revision` (0: the current one); fails with
    /// [`Error::Compacted`] at or below the compacted revision and [`Error::FutureRevision`]
    /// above the current one, as etcd does.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash> {
        let view = self.engine.read_view();
        let current = decode_i64(view.get(Cf::Meta, META_REVISION)?).max(REVISION_INITIAL);
        let compacted = decode_i64(view.get(Cf::Meta, META_COMPACT_REVISION)?);
        if revision > 0 && revision <= compacted {
            return Err(Error::Compacted);
        }
        if revision > current {
            return Err(Error::FutureRevision);
        }
        let revision = if revision == 0 { current } else { revision };
        let mut digest = CASTAGNOLI.digest();
        let mut it = view.iter(Cf::KvHistory, &[], None);
        // The escaped key of the version visited last, and whether it was that key's newest
        // version at or below `revision`.
        let mut last_key: Vec<u8> = vec![];
        while let Some((k, v)) = it.current() {
            let (escaped, inverted) = k.split_at(k.len() - 8);
            let rev = codec::uninvert(inverted);
            if rev <= revision {
                let newest = escaped != last_key.as_slice();
                if newest {
                    last_key.clear();
                    last_key.extend_from_slice(escaped);
                }
                // At or below the compacted revision only the version a compaction keeps counts:
                // the key's newest, unless it is a tombstone.
                if rev > compacted || (newest && !v.is_empty()) {
                    digest.update(k);
                    digest.update(v);
                }
            }
            it.advance();
        }
        it.check()?;
        Ok(KvHash {
            hash: digest.finalize(),
            compact_revision: compacted,
            revision,
            current_revision: current,
        })
    }

    /// The hash of every record of the replicated state (etcd hashes its whole backend): equal on
    /// members that applied the same entries and compacted equally far.
    pub fn hash_all(&self) -> Result<(u32, i64)> {
        let view = self.engine.read_view();
        let current = decode_i64(view.get(Cf::Meta, META_REVISION)?).max(REVISION_INITIAL);
        let mut digest = CASTAGNOLI.digest();
        for cf in Cf::STATE {
            digest.update(&[cf.tag()]);
            let mut it = view.iter(cf, &[], None);
            while let Some((k, v)) = it.current() {
                if !(cf == Cf::Meta && k.starts_with(LOCAL_PREFIX)) {
                    digest.update(k);
                    digest.update(v);
                }
                it.advance();
            }
            it.check()?;
        }
        Ok((digest.finalize(), current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::mvcc::Writer;
    use cairn_proto::etcdserverpb::{DeleteRangeRequest, PutRequest};

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        }
    }

    /// A store with a@2..4, b@5, b deleted @6, c@7, compacted (logically) at 5; and its writer.
    fn store(last_value: &str) -> (tempfile::TempDir, Engine, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut w = Writer::open(engine.clone()).unwrap();
        for i in 1..=3 {
            w.put(&put("a", &i.to_string()), i).unwrap();
        }
        w.put(&put("b", "x"), 4).unwrap();
        let del = DeleteRangeRequest {
            key: b"b".to_vec().into(),
            ..Default::default()
        };
        w.delete_range(&del, 5).unwrap();
        w.put(&put("c", last_value), 6).unwrap();
        w.compact(5, 7).unwrap();
        (dir, engine, w)
    }

    #[test]
    fn hash_does_not_depend_on_physical_compaction() {
        let (_d1, e1, _) = store("v");
        let (_d2, e2, _) = store("v");
        crate::mvcc::compact::compact(&e2, 5).unwrap();
        let (s1, s2) = (Store::new(e1), Store::new(e2));
        assert_eq!(s1.hash_kv(0).unwrap(), s2.hash_kv(0).unwrap());
        assert_eq!(s1.hash_kv(6).unwrap(), s2.hash_kv(6).unwrap());
        let h = s1.hash_kv(0).unwrap();
        assert_eq!((h.revision, h.compact_revision), (7, 5));
    }

    #[test]
    fn hash_covers_values_and_stays_fixed_for_a_past_revision() {
        let (_d1, e1, mut w) = store("v");
        let (_d2, e2, _) = store("w");
        let (s1, s2) = (Store::new(e1), Store::new(e2));
        assert_ne!(s1.hash_kv(0).unwrap().hash, s2.hash_kv(0).unwrap().hash);
        let before = s1.hash_kv(7).unwrap();
        w.put(&put("d", "later"), 8).unwrap();
        w.flush().unwrap();
        assert_eq!(
            s1.hash_kv(7).unwrap(),
            KvHash {
                current_revision: 8,
                ..before
            }
        );
        assert_ne!(s1.hash_kv(8).unwrap().hash, before.hash);
    }

    #[test]
    fn compacted_and_future_revisions_are_refused() {
        let (_d, e, _) = store("v");
        let s = Store::new(e);
        assert!(matches!(s.hash_kv(5), Err(Error::Compacted)));
        assert!(matches!(s.hash_kv(8), Err(Error::FutureRevision)));
        assert!(s.hash_kv(6).is_ok());
        let (h1, rev) = s.hash_all().unwrap();
        assert_eq!((s.hash_all().unwrap().0, rev), (h1, 7));
    }
}
