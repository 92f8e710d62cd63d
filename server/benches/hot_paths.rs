//! Micro-benchmarks of the server's hot paths (issue 7): MVCC put, range and txn as the apply
//! worker and the read path run them, the log writer's group commit, watch matching and fan-out,
//! and the encoding of what travels through raft.
//!
//! `cargo bench -p cairn-server --bench hot_paths [-- FILTER]` prints, per benchmark, the median
//! and 90th/99th percentile of the time per operation over samples of a fixed count of operations,
//! and operations per second at the median. Data lives in a temporary directory under `/var/tmp`
//! (a real disk: `/tmp` may be memory-backed, which would flatter fsync).
//!
//! The harness is this file's few lines rather than criterion: criterion's dependencies change
//! the features of crates that RocksDB's build script depends on, so adding it to the server's
//! dev-dependencies rebuilds RocksDB's C++ (20 minutes on 2 cores) in every target directory.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_proto::cairnpb::{internal_request, InternalRequest};
use cairn_proto::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
};
use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use cairn_server::engine::{Cf, Engine};
use cairn_server::mvcc::{Store, Writer};
use cairn_server::raft::log_writer::{self, WriteTask};
use cairn_server::watch::{Bounds, Hub, WatchSpec, Work};
use prost::Message;

/// Samples per benchmark, after one warm-up sample.
const SAMPLES: usize = 30;

/// Runs the benchmarks whose name contains the command line's filter (all without one).
struct Bencher {
    filter: Option<String>,
}

impl Bencher {
    /// Times `SAMPLES` samples; `sample` runs `ops` operations and returns the time they took.
    fn run(&self, name: &str, ops: u64, mut sample: impl FnMut() -> Duration) {
        if self
            .filter
            .as_ref()
            .is_some_and(|f| !name.contains(f.as_str()))
        {
            return;
        }
        sample();
        let mut per_op: Vec<f64> = (0..SAMPLES)
            .map(|_| sample().as_nanos() as f64 / ops as f64)
            .collect();
        per_op.sort_by(f64::total_cmp);
        let at = |q: f64| per_op[((per_op.len() - 1) as f64 * q).round() as usize];
        let (p50, p90, p99) = (at(0.5), at(0.9), at(0.99));
        println!(
            "{name:<56} {:>10} {:>10} {:>10} {:>12.0}",
            nanos(p50),
            nanos(p90),
            nanos(p99),
            1e9 / p50
        );
    }

    /// Times `op` run `ops` times per sample.
    fn iter<R>(&self, name: &str, ops: u64, mut op: impl FnMut() -> R) {
        self.run(name, ops, || {
            let start = Instant::now();
            for _ in 0..ops {
                black_box(op());
            }
            start.elapsed()
        });
    }
}

fn nanos(ns: f64) -> String {
    match ns {
        ns if ns < 1e3 => format!("{ns:.0} ns"),
        ns if ns < 1e6 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{:.2} ms", ns / 1e6),
    }
}

/// etcd benchmark's defaults: 8-byte keys in a space of 100 000, 256-byte values.
const KEY_SPACE: u64 = 100_000;
const VALUE_BYTES: usize = 256;

fn key(i: u64) -> Bytes {
    Bytes::copy_from_slice(&(i % KEY_SPACE).to_be_bytes())
}

fn value(i: u64) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; VALUE_BYTES])
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cairn-bench-")
        .tempdir_in("/var/tmp")
        .expect("a temporary directory under /var/tmp")
}

/// A store with every key of the key space written once.
fn filled_store() -> (tempfile::TempDir, Engine, Writer) {
    let dir = temp_dir();
    let engine = Engine::open(dir.path()).expect("open engine");
    let mut writer = Writer::open(engine.clone()).expect("open writer");
    for i in 0..KEY_SPACE {
        let req = PutRequest {
            key: key(i),
            value: value(i),
            ..PutRequest::default()
        };
        writer.put(&req, i + 1).expect("fill");
        if i % 1000 == 999 {
            writer.flush().expect("flush");
        }
    }
    writer.flush().expect("flush");
    (dir, engine, writer)
}

fn put(b: &Bencher) {
    let (_dir, _engine, mut writer) = filled_store();
    let mut applied = KEY_SPACE;
    // Apply writes each committed batch's requests to the engine at once.
    for group in [1, 16, 128] {
        let name = format!("mvcc put 256 B of 100k keys, {group} per engine write");
        b.iter(&name, 1024, || {
            applied += 1;
            let req = PutRequest {
                key: key(applied.wrapping_mul(0x9E37_79B9)),
                value: value(applied),
                ..PutRequest::default()
            };
            writer.put(&req, applied).expect("put");
            if applied.is_multiple_of(group) {
                writer.flush().expect("flush");
            }
        });
    }
    writer.flush().expect("flush");
    b.iter(
        "mvcc txn: compare mod_revision, put (16 per write)",
        1024,
        || {
            applied += 1;
            let k = key(applied.wrapping_mul(0x9E37_79B9));
            let req = TxnRequest {
                compare: vec![Compare {
                    key: k.clone(),
                    target: compare::CompareTarget::Mod as i32,
                    result: compare::CompareResult::Greater as i32,
                    target_union: Some(compare::TargetUnion::ModRevision(0)),
                    ..Compare::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: k,
                        value: value(applied),
                        ..PutRequest::default()
                    })),
                }],
                failure: vec![],
            };
            let resp = writer.txn(&req, applied).expect("txn");
            if applied.is_multiple_of(16) {
                writer.flush().expect("flush");
            }
            resp
        },
    );
}

fn range(b: &Bencher) {
    let (_dir, engine, _writer) = filled_store();
    let store = Store::new(engine);
    let mut i = 0u64;
    b.iter("mvcc range 1 key (latest)", 1024, || {
        i += 7919;
        let req = RangeRequest {
            key: key(i),
            ..RangeRequest::default()
        };
        store.range(&req).expect("range")
    });
    b.iter("mvcc range 100 keys (latest)", 64, || {
        i += 7919;
        let start = i % (KEY_SPACE - 100);
        let req = RangeRequest {
            key: key(start),
            range_end: key(start + 100),
            ..RangeRequest::default()
        };
        store.range(&req).expect("range")
    });
}

/// The log writer as the raft loop drives it: `n` tasks queued at once (one per `Ready`), each
/// with one 300-byte entry, synced once for the group.
fn log_group_commit(b: &Bencher) {
    let dir = temp_dir();
    let engine = Engine::open(dir.path()).expect("open engine");
    let (tasks, task_rx) = crossbeam_channel::unbounded();
    let (done_tx, done) = crossbeam_channel::unbounded();
    let writer = log_writer::start(engine.clone(), task_rx, done_tx);
    let mut index = 0u64;
    for n in [1u64, 16, 128] {
        let name = format!("log writer: {n} tasks queued at once, synced (per task)");
        b.run(&name, n, || {
            let start = Instant::now();
            for _ in 0..n {
                index += 1;
                let mut batch = engine.batch();
                batch.put(Cf::RaftLog, &index.to_be_bytes(), &[7u8; 300]);
                let task = WriteTask {
                    number: index,
                    batch,
                    sync: true,
                    last_index: index,
                    messages: vec![],
                };
                tasks.send(task).expect("log writer runs");
            }
            let mut persisted = 0;
            while persisted < n as usize {
                persisted += done.recv().expect("log writer reports").tasks;
            }
            start.elapsed()
        });
    }
    drop(tasks);
    writer.join().expect("log writer stops");
}

fn event(key: Bytes, revision: i64) -> Event {
    Event {
        r#type: EventType::Put as i32,
        kv: Some(KeyValue {
            key,
            create_revision: 2,
            mod_revision: revision,
            version: 1,
            value: value(revision as u64),
            lease: 0,
        }),
        prev_kv: None,
    }
}

fn spec(bounds: Bounds) -> WatchSpec {
    WatchSpec {
        bounds,
        no_put: false,
        no_delete: false,
        prev_kv: false,
    }
}

/// Apply's side of watch: matching one event against many watchers, and fanning it out to the
/// ones that match (the streams' queues are drained outside the timed part).
fn watch(b: &Bencher) {
    for (name, watchers, keys) in [
        (
            "watch publish: 10k watchers on 10k keys, 1 matches",
            10_000u64,
            10_000u64,
        ),
        ("watch publish: 1k watchers on 1 key, all match", 1_000, 1),
    ] {
        let hub = Hub::new(1);
        let streams: Vec<u64> = (0..100).map(|_| hub.open_stream().0).collect();
        for w in 0..watchers {
            let stream = streams[(w % streams.len() as u64) as usize];
            hub.add(
                stream,
                w as i64,
                spec(Bounds::Key(key(w % keys).to_vec())),
                2,
            );
        }
        let mut revision = 1;
        b.run(name, 64, || {
            let mut spent = Duration::ZERO;
            for _ in 0..64 {
                revision += 1;
                let events = [event(key(revision as u64 % keys), revision)];
                let start = Instant::now();
                hub.publish(revision, &events);
                spent += start.elapsed();
                for &s in &streams {
                    if let Work::Deliver { deliveries, .. } = hub.take(s) {
                        black_box(deliveries);
                    }
                }
            }
            spent
        });
    }
}

/// What every write and read pays in encoding: a put as it goes through raft, and a 100-key range
/// answer.
fn codec(b: &Bencher) {
    let req = InternalRequest {
        id: 42,
        request: Some(internal_request::Request::Put(PutRequest {
            key: key(7),
            value: value(7),
            ..PutRequest::default()
        })),
        ..InternalRequest::default()
    };
    let bytes = Bytes::from(req.encode_to_vec());
    b.iter("codec: put InternalRequest encode", 4096, || {
        black_box(&req).encode_to_vec()
    });
    b.iter("codec: put InternalRequest decode", 4096, || {
        InternalRequest::decode(bytes.clone()).expect("decode")
    });
    let resp = RangeResponse {
        kvs: (0..100)
            .map(|i| event(key(i), i as i64 + 2).kv.expect("a kv"))
            .collect(),
        count: 100,
        ..RangeResponse::default()
    };
    b.iter("codec: range response of 100 keys encode", 256, || {
        black_box(&resp).encode_to_vec()
    });
}

fn main() {
    // `cargo bench` passes `--bench`; anything else not starting with `-` filters.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let b = Bencher { filter };
    println!(
        "{:<56} {:>10} {:>10} {:>10} {:>12}",
        "per operation", "p50", "p90", "p99", "ops/s (p50)"
    );
    put(&b);
    range(&b);
    log_group_commit(&b);
    watch(&b);
    codec(&b);
}
