//! kv-robust and the lock workloads end to end against real etcd 3.4 (Debian's `/usr/bin/etcd`):
//! kv-robust and lock-etcd-set must find no anomaly under kill, pause and partition, and lock-set
//! must lose updates under pauses. A test binary of its own, so that its clusters do not run
//! beside `tests/etcd.rs`'s on 2 cores. Skipped, with the reason printed, where etcd is not
//! installed; each run is bounded by the harness's time limit, settle timeout and lock bounds.

mod common;

use std::collections::HashMap;
use std::path::Path;

use cairn_jepsen::checker::Verdict;
use cairn_jepsen::history::{self, Actor, Call, EventKind, Reply};
use cairn_jepsen::run::check_history;
use cairn_jepsen::workload::Workload;
use common::{etcd, run, stat};

/// kv-robust and lock-etcd-set must pass under every fault; lock-set, whose lock holders are
/// paused past their lease between read and write, must lose updates (the negative control).
#[test]
fn etcd_passes_kv_robust_and_the_fenced_lock_and_loses_updates_without_the_fence() {
    let Some(etcd) = etcd() else { return };
    let store = tempfile::tempdir().unwrap();
    let faults = [
        "--time-limit-s=10",
        "--nemesis=kill,pause,partition",
        "--nemesis-interval-s=2",
        "--seed=3",
    ];
    let (code, results) = run(
        &etcd,
        store.path(),
        &[
            &faults[..],
            &[
                "--workload=kv-robust",
                "--compact-interval-s=1",
                "--compact-lag-revisions=50",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "kv-robust on etcd: {results:#}");
    let kv = &results["checkers"][0];
    assert_eq!(kv["checker"], "kv");
    assert!(
        kv["stats"]["reads_checked"].as_u64().unwrap() > 100,
        "{results:#}"
    );
    assert!(
        kv["stats"]["past_reads_checked"].as_u64().unwrap() > 10,
        "{results:#}"
    );
    assert!(stat(&results, "compact_ok") >= 1, "{results:#}");
    doctored_kv_histories_are_caught(store.path());

    let (code, results) = run(
        &etcd,
        store.path(),
        &[&faults[..], &["--workload=lock-etcd-set"]].concat(),
    );
    assert_eq!(code, 0, "lock-etcd-set on etcd: {results:#}");
    assert!(stat(&results, "lock_add_ok") >= 2, "{results:#}");
    let refused = report_history(store.path(), "locketcdset-")
        .iter()
        .filter(|event| {
            matches!(&event.kind, EventKind::Fail { error } if error.starts_with("fenced write refused"))
        })
        .count();
    assert!(
        refused >= 1,
        "no paused holder's fenced write was refused: {results:#}"
    );

    let (code, results) = run(
        &etcd,
        store.path(),
        &[
            "--workload=lock-set",
            "--time-limit-s=8",
            "--nemesis=pause",
            "--nemesis-interval-s=2",
            "--seed=3",
        ],
    );
    assert_eq!(code, 1, "lock-set on etcd must lose updates: {results:#}");
    let set = &results["checkers"][0];
    assert_eq!(set["checker"], "set-full");
    assert!(set["stats"]["lost"].as_u64().unwrap() >= 1, "{results:#}");
}

/// The kv checker on the real kv-robust history in `store`, doctored two ways: every range of all
/// keys misses its first key-value, and every read of the past reports a version one too high.
/// Each must be `Invalid`.
fn doctored_kv_histories_are_caught(store: &Path) {
    let events = report_history(store, "kvrobust-");
    let doctor = |change: &dyn Fn(&Call, &mut Reply) -> bool| {
        let mut calls: HashMap<Actor, Call> = HashMap::new();
        let mut doctored = events.clone();
        let mut changed = 0;
        for event in &mut doctored {
            let reply = match &mut event.kind {
                EventKind::Invoke { call } => {
                    calls.insert(event.actor, call.clone());
                    None
                }
                EventKind::Ok { reply, .. } => calls.get(&event.actor).map(|call| (call, reply)),
                _ => None,
            };
            changed += usize::from(reply.is_some_and(|(call, reply)| change(call, reply)));
        }
        assert!(changed >= 5, "only {changed} replies to doctor");
        check_history(Workload::KvRobust, &doctored).unwrap()
    };
    let missing = doctor(&|call, reply| match (call, reply) {
        (
            Call::KvRange {
                range_end: Some(_), ..
            },
            Reply::Kvs { kvs },
        ) if !kvs.is_empty() => {
            kvs.remove(0);
            true
        }
        _ => false,
    });
    assert_eq!(
        missing.checkers[0].verdict,
        Verdict::Invalid,
        "{missing:#?}"
    );
    let versions = doctor(&|call, reply| match (call, reply) {
        (Call::KvRange { revision, .. }, Reply::Kvs { kvs })
            if *revision > 0 && !kvs.is_empty() =>
        {
            kvs[0].version += 1;
            true
        }
        _ => false,
    });
    assert_eq!(
        versions.checkers[0].verdict,
        Verdict::Invalid,
        "{versions:#?}"
    );
}

/// The history of the report in `store` whose directory name starts with `prefix`.
fn report_history(store: &Path, prefix: &str) -> Vec<history::Event> {
    let dir = std::fs::read_dir(store)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(prefix)
        })
        .unwrap_or_else(|| panic!("no {prefix} report in {}", store.display()));
    history::read_jsonl(&dir.join("history.jsonl")).unwrap()
}
