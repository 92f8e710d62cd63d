//! Property tests of the hub's guarantees against the full event log: every watcher receives exactly
//! the events it asked for — in order, without gaps or duplicates, a revision never split — whether it
//! started in the past, present or future, was demoted by a full queue, or was caught up from storage
//! while history was compacted; a canceled or compacted watcher receives nothing afterwards.

use std::collections::HashMap;

use bytes::Bytes;
use cairn_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use cairn_proto::mvccpb::Event;
use proptest::prelude::*;

use super::*;
use crate::engine::Engine;
use crate::mvcc::{Store, Writer};

const KEYS: &[&[u8]] = &[b"a", b"b", b"ba", b"c", b"d"];

#[derive(Debug, Clone)]
enum Op {
    Put(usize),
    /// Deletes keys in [from, to).
    DeleteRange(usize, usize),
    /// Puts several distinct keys in one revision.
    Txn(Vec<usize>),
    /// Adds a watcher to a stream: bounds, start offset (0 = now, k > 0 = k revisions back,
    /// k < 0 = that many revisions ahead), prev_kv, filter.
    Watch {
        stream: usize,
        bounds: Bounds,
        back: i64,
        prev_kv: bool,
        filter: u8,
    },
    Cancel(usize, usize),
    /// A stream takes and completes one piece of work.
    Step(usize),
    /// Compacts `back` revisions behind the current one.
    Compact(i64),
}

fn bounds() -> impl Strategy<Value = Bounds> {
    let key = prop::sample::select(KEYS.to_vec()).prop_map(|k| k.to_vec());
    prop_oneof![
        key.clone().prop_map(Bounds::Key),
        (key.clone(), key.clone()).prop_filter_map("non-empty", |(a, b)| {
            (a < b).then_some(Bounds::Range(a, End::Key(b)))
        }),
        key.prop_map(|a| Bounds::Range(a, End::Unbounded)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS.len();
    prop_oneof![
        4 => k.clone().prop_map(Op::Put),
        1 => (k.clone(), k.clone()).prop_map(|(a, b)| Op::DeleteRange(a.min(b), a.max(b) + 1)),
        2 => prop::collection::btree_set(k, 2..4).prop_map(|s| Op::Txn(s.into_iter().collect())),
        2 => (0..3usize, bounds(), -3i64..12, any::<bool>(), 0..3u8).prop_map(
            |(stream, bounds, back, prev_kv, filter)| Op::Watch { stream, bounds, back, prev_kv, filter }),
        1 => (0..3usize, 0..4usize).prop_map(|(s, w)| Op::Cancel(s, w)),
        5 => (0..3usize).prop_map(Op::Step),
        1 => (0..6i64).prop_map(Op::Compact),
    ]
}

/// A simulated watch stream: what the API's stream task does, without gRPC.
struct Sim {
    id: u64,
    /// Every watcher created: (spec, first revision it may see, canceled).
    watchers: Vec<(WatchSpec, i64, bool)>,
    received: HashMap<i64, Vec<Vec<Event>>>,
    compacted: HashMap<i64, i64>,
}

impl Sim {
    fn step(&mut self, hub: &Hub, store: &Store) -> bool {
        match hub.take(self.id) {
            Work::Deliver { deliveries, .. } => {
                for d in deliveries {
                    for (id, events) in d.events {
                        if !self.watchers[id as usize].2 {
                            self.received.entry(id).or_default().push(events);
                        }
                    }
                }
                true
            }
            Work::CatchUp(plan) => {
                let step = plan.run(store).unwrap();
                assert!(hub.still_valid(&plan));
                for &id in &step.compacted {
                    self.compacted.insert(id, step.compact_revision);
                }
                for (id, events) in step.events {
                    // A catch-up response may hold several revisions: split them to compare.
                    for rev in events.chunk_by(|a, b| rev_of(a) == rev_of(b)) {
                        self.received.entry(id).or_default().push(rev.to_vec());
                    }
                }
                hub.caught_up(self.id, &step.advanced, &step.compacted);
                true
            }
            Work::Idle { .. } | Work::Wait | Work::Closed => false,
        }
    }
}

fn rev_of(e: &Event) -> i64 {
    e.kv.as_ref().unwrap().mod_revision
}

fn run(ops: Vec<Op>, queue_deliveries: usize) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut writer = Writer::open(engine.clone()).unwrap();
    let store = Store::new(engine);
    let hub = Hub::with_queue_limit(writer.revision(), queue_deliveries);
    let mut sims: Vec<Sim> = (0..3)
        .map(|_| Sim {
            id: hub.open_stream().0,
            watchers: vec![],
            received: HashMap::new(),
            compacted: HashMap::new(),
        })
        .collect();
    // Every revision's events as apply produced them.
    let mut log: Vec<(i64, Vec<Event>)> = vec![];
    let mut applied = 0;
    let mut compactions = vec![];
    let key = |i: usize| Bytes::from_static(KEYS[i]);
    for op in ops {
        applied += 1;
        let wrote = match op {
            Op::Put(k) => {
                let req = PutRequest {
                    key: key(k),
                    value: Bytes::from(format!("v{applied}")),
                    ..PutRequest::default()
                };
                writer.put(&req, applied).is_ok()
            }
            Op::DeleteRange(a, b) => {
                let req = DeleteRangeRequest {
                    key: key(a),
                    range_end: if b < KEYS.len() {
                        key(b)
                    } else {
                        Bytes::from_static(b"\0")
                    },
                    ..DeleteRangeRequest::default()
                };
                writer.delete_range(&req, applied).is_ok()
            }
            Op::Txn(keys) => {
                let success = keys
                    .iter()
                    .map(|&k| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key(k),
                            value: Bytes::from(format!("t{applied}")),
                            ..PutRequest::default()
                        })),
                    })
                    .collect();
                let req = TxnRequest {
                    success,
                    ..TxnRequest::default()
                };
                writer.txn(&req, applied).is_ok()
            }
            Op::Watch {
                stream,
                bounds,
                back,
                prev_kv,
                filter,
            } => {
                let sim = &mut sims[stream];
                let spec = WatchSpec {
                    bounds,
                    no_put: filter == 1,
                    no_delete: filter == 2,
                    prev_kv,
                };
                let current = hub.revision();
                let start = match back {
                    0 => 0,
                    b if b > 0 => (current - b).max(1),
                    b => current - b,
                };
                let id = sim.watchers.len() as i64;
                let at = hub.add(sim.id, id, spec.clone(), start);
                assert_eq!(at, current);
                let first = if start == 0 { current + 1 } else { start };
                sim.watchers.push((spec, first, false));
                false
            }
            Op::Cancel(s, w) => {
                let sim = &mut sims[s];
                if let Some(entry) = sim.watchers.get_mut(w) {
                    if !entry.2 {
                        entry.2 = true;
                        hub.remove(sim.id, w as i64);
                    }
                }
                false
            }
            Op::Step(s) => {
                sims[s].step(&hub, &store);
                false
            }
            Op::Compact(back) => {
                let target = writer.revision() - back;
                if target > 1 && writer.compact(target, applied).is_ok() {
                    compactions.push(target);
                }
                false
            }
        };
        if !wrote {
            writer.set_applied(applied);
        }
        writer.flush().unwrap();
        let events = writer.take_events();
        if !events.is_empty() {
            hub.publish(writer.revision(), &events);
            log.push((writer.revision(), events));
        }
    }
    for sim in &mut sims {
        while sim.step(&hub, &store) {}
    }
    for sim in &sims {
        for (id, (spec, first, canceled)) in sim.watchers.iter().enumerate() {
            let id = id as i64;
            let got = sim.received.get(&id).cloned().unwrap_or_default();
            let want: Vec<Vec<Event>> = log
                .iter()
                .filter(|(rev, _)| rev >= first)
                .map(|(_, events)| {
                    events
                        .iter()
                        .filter(|e| {
                            spec.bounds.contains(&e.kv.as_ref().unwrap().key)
                                && spec.wants(e.r#type())
                        })
                        .map(|e| event_for(e, spec.prev_kv))
                        .collect::<Vec<_>>()
                })
                .filter(|events| !events.is_empty())
                .collect();
            let compacted = sim.compacted.get(&id);
            if *canceled || compacted.is_some() {
                // A prefix of what it asked for, then nothing.
                assert!(got.len() <= want.len(), "watcher {id}: more than asked for");
                if let Some(&c) = compacted {
                    let seen_through = got.last().map_or(first - 1, |r| rev_of(&r[0]));
                    assert!(
                        seen_through + 1 < c,
                        "watcher {id} canceled though not compacted"
                    );
                }
            } else {
                assert_eq!(got.len(), want.len(), "watcher {id} of stream {}", sim.id);
            }
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.len(), w.len(), "watcher {id}: revision split or merged");
                for (ge, we) in g.iter().zip(w) {
                    assert_eq!(ge.kv, we.kv, "watcher {id}: gap, duplicate or reorder");
                    assert_eq!(ge.r#type, we.r#type);
                    // History below a compaction has no previous values (as in etcd).
                    if !compactions.contains(&rev_of(ge)) {
                        assert_eq!(ge.prev_kv, we.prev_kv, "watcher {id}: prev_kv");
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Roomy queues: watchers stay synced unless they start in the past.
    #[test]
    fn watchers_get_exactly_their_events(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, 1024);
    }

    /// A queue of one delivery: streams are demoted all the time and catch up from storage.
    #[test]
    fn demoted_streams_catch_up_without_gaps(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, 1);
    }
}

#[test]
fn counts_follow_streams_and_watchers() {
    let hub = Hub::new(5);
    let spec = || WatchSpec {
        bounds: Bounds::Key(b"a".to_vec()),
        no_put: false,
        no_delete: false,
        prev_kv: false,
    };
    let (a, _) = hub.open_stream();
    let (b, _) = hub.open_stream();
    hub.add(a, 0, spec(), 0);
    hub.add(b, 0, spec(), 2);
    hub.add(b, 1, spec(), 0);
    let counts = |streams, watchers, unsynced| WatchCounts {
        streams,
        watchers,
        unsynced,
    };
    assert_eq!(hub.counts(), counts(2, 3, 1));
    assert!(hub.remove(b, 0));
    assert_eq!(hub.counts(), counts(2, 2, 0));
    hub.close_stream(b);
    assert_eq!(hub.counts(), counts(1, 1, 0));
}
