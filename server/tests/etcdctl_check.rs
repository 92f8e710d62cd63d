//! `etcdctl check perf` against Cairn: the same pass/fail verdict etcd operators run on new hardware
//! (60 s of rate-limited writes from 50 clients; a test binary of its own, so nothing else runs
//! beside it). `check datascale` is covered with the metrics (it reads `/metrics`).

mod common;

use common::{run_etcdctl, Kind, Member};

#[test]
fn check_perf_passes() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(Kind::Cairn, &dir.path().join("m"), &[]);
    let out = run_etcdctl(
        &m.endpoint(),
        "check perf --load=s --auto-compact --auto-defrag",
    );
    assert!(out.starts_with("exit Some(0)"), "{out}");
    let verdict: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        .collect();
    assert!(
        verdict.len() == 4 && verdict.iter().all(|l| l.starts_with("PASS")),
        "{verdict:?}"
    );
}
