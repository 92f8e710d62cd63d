//! Shared by the tests that drive real etcd or Cairn through the `cairn-jepsen` binary or its
//! library.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_jepsen::checker::Verdict;
use cairn_jepsen::client::EtcdClient;
use cairn_jepsen::cluster::{Cluster, ClusterSpec};
use cairn_jepsen::history::{Actor, Call, EventKind, Mop, Recorder};
use cairn_jepsen::run::check_history;
use cairn_jepsen::workload::{self, ReadMode, Workload};

const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

const ETCD: &str = "/usr/bin/etcd";

/// `target/<profile>/cairn`, beside `target/<profile>/deps/<this test>`, if `cargo test
/// --workspace` (or `cargo build -p cairn-server`) built it there.
#[allow(dead_code)] // not every test file drives Cairn
pub fn cairn() -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("the test knows its executable");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps")
        .join("cairn");
    if bin.exists() {
        Some(bin)
    } else {
        println!(
            "skipped: {} not built (cargo test --workspace builds it)",
            bin.display()
        );
        None
    }
}

#[allow(dead_code)] // not every test file drives etcd
pub fn etcd() -> Option<PathBuf> {
    let path = Path::new(ETCD);
    if path.exists() {
        Some(path.to_path_buf())
    } else {
        println!("skipped: {ETCD} not found (apt-get install etcd-server)");
        None
    }
}

/// Runs `cairn-jepsen test` and returns its exit code and `results.json`.
#[allow(dead_code)] // not every test file uses it
pub fn run(bin: &Path, store: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    run_with_env(bin, store, args, &[])
}

/// [`run`] with environment variables for the harness and the members it starts.
pub fn run_with_env(
    bin: &Path,
    store: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn-jepsen"))
        .envs(env.iter().copied())
        .arg("test")
        .arg(format!("--bin={}", bin.display()))
        .arg(format!("--store={}", store.display()))
        .args(args)
        .output()
        .expect("cairn-jepsen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .unwrap_or_else(|| panic!("no report directory in the output:\n{stdout}\n{stderr}"));
    let results = std::fs::read(Path::new(dir).join("results.json")).expect("results.json");
    (
        output.status.code().expect("exited"),
        serde_json::from_slice(&results).expect("results.json parses"),
    )
}

#[allow(dead_code)] // not every test file reads stats
pub fn stat(results: &serde_json::Value, name: &str) -> u64 {
    results["stats"][name].as_u64().unwrap_or(0)
}

/// One sequential client process: records each call's invocation and completion.
struct Process {
    id: u64,
    node: usize,
    client: EtcdClient,
    recorder: Recorder,
}

impl Process {
    fn new(id: u64, cluster: &Cluster, node: usize, recorder: &Recorder) -> Process {
        Process {
            id,
            node,
            client: EtcdClient::new(&cluster.client_url(node), REQUEST_TIMEOUT).unwrap(),
            recorder: recorder.clone(),
        }
    }

    async fn call(&mut self, call: Call, reads: ReadMode) -> EventKind {
        let actor = Actor::Client(self.id);
        self.recorder.record(
            actor,
            Some(self.node),
            EventKind::Invoke { call: call.clone() },
        );
        let completion = workload::invoke(&mut self.client, &call, reads).await;
        self.recorder
            .record(actor, Some(self.node), completion.clone());
        completion
    }
}

fn is_ok(completion: &EventKind) -> bool {
    matches!(completion, EventKind::Ok { .. })
}

/// The deterministic negative controls: on a 3-member cluster of `bin`, isolate a follower, write
/// on the majority side, then read the isolated member serializably. The read cannot see the
/// write (no byte crosses the partition), so the set, linearizability and Elle checkers must
/// each flag it, every time.
#[allow(dead_code)] // not every test file stages it
pub async fn stale_serializable_reads_are_caught(bin: PathBuf) {
    let cluster = Cluster::start(ClusterSpec {
        bin,
        members: 3,
        extra_args: vec![],
        track_syncs: false,
    })
    .await
    .unwrap();
    let leader = cluster
        .leader()
        .await
        .expect("a fresh cluster has a leader");
    let isolated = (leader + 1) % 3;
    let (set, register, append) = (Recorder::new(), Recorder::new(), Recorder::new());
    let mut writers = [&set, &register, &append].map(|r| Process::new(0, &cluster, leader, r));
    let mut readers = [&set, &register, &append].map(|r| Process::new(1, &cluster, isolated, r));
    let key = "jepsen/r/0".to_string();
    let list = "jepsen/a/0".to_string();
    // Each workload's write of `value`, and its read.
    let write = |w: usize, value: u64| match w {
        0 => Call::Add { element: value },
        1 => Call::Write {
            key: key.clone(),
            value,
        },
        _ => Call::Txn {
            mops: vec![Mop::Append {
                key: list.clone(),
                value,
            }],
        },
    };
    let read = |w: usize| match w {
        0 => Call::ReadSet,
        1 => Call::Read { key: key.clone() },
        _ => Call::Txn {
            mops: vec![Mop::Read { key: list.clone() }],
        },
    };

    // Before the partition: every member holds value 1 of each workload.
    for (w, writer) in writers.iter_mut().enumerate() {
        let done = writer.call(write(w, 1), ReadMode::Linearizable).await;
        assert!(is_ok(&done), "{done:?}");
    }
    let mut probe = EtcdClient::new(&cluster.client_url(isolated), REQUEST_TIMEOUT).unwrap();
    let start = Instant::now();
    while !probe
        .get(&list, true)
        .await
        .is_ok_and(|got| got.kv.is_some())
    {
        assert!(
            start.elapsed() < CONVERGE_TIMEOUT,
            "n{isolated} never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let majority: Vec<usize> = (0..3).filter(|&m| m != isolated).collect();
    cluster.network().partition(&[vec![isolated], majority]);
    // The leader keeps its majority: these are acknowledged at once; the isolated member's
    // serializable reads that follow cannot see them.
    for (w, writer) in writers.iter_mut().enumerate() {
        let done = writer.call(write(w, 2), ReadMode::Linearizable).await;
        assert!(is_ok(&done), "{done:?}");
    }
    for (w, reader) in readers.iter_mut().enumerate() {
        let done = reader.call(read(w), ReadMode::Serializable).await;
        assert!(is_ok(&done), "{done:?}");
    }
    cluster.network().heal();
    // Elle orders an append only once some read has seen it.
    let done = writers[2].call(read(2), ReadMode::Linearizable).await;
    assert!(is_ok(&done), "{done:?}");

    for (recorder, workload, checker) in [
        (&set, Workload::Set, "set-full"),
        (&register, Workload::Register, "linearizable"),
        (&append, Workload::Append, "elle-append"),
    ] {
        let results = check_history(workload, &recorder.snapshot()).unwrap();
        println!("{workload:?}: {:?}", results.checkers[0].anomalies);
        assert_eq!(results.checkers[0].checker, checker);
        assert_eq!(
            results.checkers[0].verdict,
            Verdict::Invalid,
            "{workload:?}: the stale read went unnoticed: {results:#?}"
        );
    }
}
