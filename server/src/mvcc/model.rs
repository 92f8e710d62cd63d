//! A small in-memory model of etcd's KV semantics, and property tests that hold the RocksDB-backed
//! store to it: the same random sequence of puts, deletes, txns and compactions must give the same
//! answers to ranges at every readable revision, whichever requests the writer defers together
//! (`Flush` marks where apply would write them out).

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use cairn_proto::mvccpb::KeyValue;
use proptest::prelude::*;

use super::codec::key_range;
use super::{Error, Store, Writer};
use crate::engine::Engine;

/// Every version of every key: `None` marks a deletion.
#[derive(Default)]
struct Model {
    history: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
    revision: i64,
    compacted: i64,
}

impl Model {
    fn new() -> Model {
        Model {
            revision: 1,
            compacted: -1,
            ..Model::default()
        }
    }

    fn at(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        self.history
            .get(key)?
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)
            .and_then(|(_, kv)| kv.clone())
    }

    fn keys_at(&self, key: &[u8], end: &[u8], rev: i64) -> Vec<KeyValue> {
        let Some(bounds) = key_range(key, end) else {
            return vec![];
        };
        self.history
            .keys()
            .filter(|k| bounds.contains(k))
            .filter_map(|k| self.at(k, rev))
            .collect()
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        let rev = self.revision + 1;
        let prev = self.at(key, self.revision);
        let kv = KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: Bytes::copy_from_slice(value),
            lease: 0,
        };
        self.history
            .entry(key.to_vec())
            .or_default()
            .push((rev, Some(kv)));
        self.revision = rev;
    }

    fn delete(&mut self, key: &[u8], end: &[u8]) -> i64 {
        let doomed = self.keys_at(key, end, self.revision);
        if doomed.is_empty() {
            return 0;
        }
        self.revision += 1;
        for kv in &doomed {
            self.history
                .get_mut(kv.key.as_ref())
                .unwrap()
                .push((self.revision, None));
        }
        doomed.len() as i64
    }

    fn range(&self, key: &[u8], end: &[u8], rev: i64) -> Result<(Vec<KeyValue>, i64), String> {
        if rev > self.revision {
            return Err("future".into());
        }
        let rev = if rev <= 0 { self.revision } else { rev };
        if rev < self.compacted {
            return Err("compacted".into());
        }
        let kvs = self.keys_at(key, end, rev);
        let count = kvs.len() as i64;
        Ok((kvs, count))
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>, Vec<u8>),
    /// If `key` has version `version`, put `value`; otherwise delete `key`.
    CasTxn(Vec<u8>, i64, Vec<u8>),
    Compact(i64),
    /// A txn that reads `key` `back` revisions ago, then puts `value` to it.
    RangePutTxn(Vec<u8>, i64, Vec<u8>),
    /// Write the deferred requests to the engine (apply does it once per committed batch).
    Flush,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        b"a".to_vec(),
        b"ab".to_vec(),
        b"a\0".to_vec(),
        b"b".to_vec(),
        b"c\xff".to_vec(),
    ])
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        vec![],
        b"\0".to_vec(),
        b"b".to_vec(),
        b"c".to_vec(),
        b"a\x01".to_vec(),
    ])
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), prop::collection::vec(any::<u8>(), 0..3)).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (key(), range_end()).prop_map(|(k, e)| Op::Delete(k, e)),
        2 => (key(), 0i64..3, prop::collection::vec(any::<u8>(), 0..3))
            .prop_map(|(k, ver, v)| Op::CasTxn(k, ver, v)),
        1 => (0i64..30).prop_map(Op::Compact),
        1 => (key(), 0i64..4, prop::collection::vec(any::<u8>(), 0..3))
            .prop_map(|(k, back, v)| Op::RangePutTxn(k, back, v)),
        2 => Just(Op::Flush),
    ]
}

fn run(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut writer = Writer::open(engine.clone()).unwrap();
    let store = Store::new(engine.clone());
    let mut model = Model::new();
    let mut applied = 0;
    for op in ops {
        applied += 1;
        match op {
            Op::Put(k, v) => {
                let req = PutRequest {
                    key: k.clone().into(),
                    value: v.clone().into(),
                    ..Default::default()
                };
                let resp = writer.put(&req, applied).unwrap();
                model.put(k, v);
                assert_eq!(resp.header.unwrap().revision, model.revision);
            }
            Op::Delete(k, e) => {
                let req = DeleteRangeRequest {
                    key: k.clone().into(),
                    range_end: e.clone().into(),
                    ..Default::default()
                };
                let resp = writer.delete_range(&req, applied).unwrap();
                assert_eq!(resp.deleted, model.delete(k, e));
                assert_eq!(resp.header.unwrap().revision, model.revision);
            }
            Op::CasTxn(k, version, v) => {
                let req = TxnRequest {
                    compare: vec![Compare {
                        key: k.clone().into(),
                        target: compare::CompareTarget::Version as i32,
                        target_union: Some(compare::TargetUnion::Version(*version)),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: k.clone().into(),
                            value: v.clone().into(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: k.clone().into(),
                                ..Default::default()
                            },
                        )),
                    }],
                };
                let resp = writer.txn(&req, applied).unwrap();
                let matches = model.at(k, model.revision).map_or(0, |kv| kv.version) == *version;
                assert_eq!(resp.succeeded, matches);
                if matches {
                    model.put(k, v);
                } else {
                    model.delete(k, b"");
                }
                assert_eq!(resp.header.unwrap().revision, model.revision);
            }
            Op::Compact(rev) => match writer.compact(*rev, applied) {
                Ok(_) => {
                    assert!(*rev > model.compacted && *rev <= model.revision);
                    model.compacted = *rev;
                    super::compact::compact(&engine, *rev).unwrap();
                }
                Err(Error::Compacted) => assert!(*rev <= model.compacted),
                Err(Error::FutureRevision) => assert!(*rev > model.revision),
                Err(e) => panic!("unexpected {e}"),
            },
            Op::RangePutTxn(k, back, v) => {
                let rev = (model.revision - back).max(1);
                let req = TxnRequest {
                    success: vec![
                        RequestOp {
                            request: Some(request_op::Request::RequestRange(RangeRequest {
                                key: k.clone().into(),
                                revision: rev,
                                ..Default::default()
                            })),
                        },
                        RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: k.clone().into(),
                                value: v.clone().into(),
                                ..Default::default()
                            })),
                        },
                    ],
                    ..Default::default()
                };
                match (writer.txn(&req, applied), model.range(k, b"", rev)) {
                    (Ok(resp), Ok((kvs, _))) => {
                        let Some(response_op::Response::ResponseRange(range)) =
                            resp.responses[0].response.clone()
                        else {
                            panic!("a range answer");
                        };
                        assert_eq!(range.kvs, kvs, "range {k:?} at {rev} in a txn");
                        model.put(k, v);
                        assert_eq!(resp.header.unwrap().revision, model.revision);
                    }
                    (Err(Error::Compacted), Err(e)) => assert_eq!(e, "compacted"),
                    (got, want) => panic!("txn reading {k:?} at {rev}: {got:?}, model {want:?}"),
                }
            }
            Op::Flush => writer.flush().unwrap(),
        }
    }
    writer.flush().unwrap();
    for rev in model.compacted.max(0)..=model.revision + 1 {
        for (k, e) in [
            (&b"a"[..], &b"\0"[..]),
            (b"a", b""),
            (b"ab", b"c"),
            (b"a\0", b"b"),
        ] {
            let req = RangeRequest {
                key: k.to_vec().into(),
                range_end: e.to_vec().into(),
                revision: rev,
                ..Default::default()
            };
            let got = store
                .range(&req)
                .map(|r| (r.kvs, r.count))
                .map_err(|e| match e {
                    Error::Compacted => "compacted".to_string(),
                    Error::FutureRevision => "future".to_string(),
                    other => other.to_string(),
                });
            assert_eq!(got, model.range(k, e, rev), "range {k:?}..{e:?} at {rev}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}
