//! End to end against real etcd 3.4 (Debian's `/usr/bin/etcd`): the harness must find no
//! anomaly under kill, pause and partition, must actually have injected faults and served
//! traffic, and must catch stale serializable reads, every time. Skipped, with the reason
//! printed, where etcd is not installed.
//!
//! The negative controls are deterministic: a randomized `--reads serializable` run under
//! partitions catches stale reads only when a partition happens to leave a reader on the
//! minority while the majority writes (about 1 run in 6–10 passed by chance, seen before this
//! test was rewritten), so the control stages exactly that.
//!
//! Each run is bounded by the harness's own time limit (a few seconds of traffic, startup and
//! settle); members and directories go away with the harness process.

mod common;

use common::{etcd, run, stat};

#[test]
fn etcd_passes_register_and_set_under_faults() {
    let Some(etcd) = etcd() else { return };
    let store = tempfile::tempdir().unwrap();

    let faults = [
        "--time-limit-s=10",
        "--nemesis=kill,pause,partition",
        "--nemesis-interval-s=2",
        "--seed=1",
    ];
    let (code, results) = run(
        &etcd,
        store.path(),
        &[&faults[..], &["--workload=register"]].concat(),
    );
    assert_eq!(code, 0, "register on etcd: {results:#}");
    assert!(stat(&results, "nemesis_events") >= 4, "{results:#}");
    assert!(
        stat(&results, "read_ok") + stat(&results, "write_ok") > 300,
        "{results:#}"
    );

    let (code, results) = run(
        &etcd,
        store.path(),
        &[&faults[..], &["--workload=set"]].concat(),
    );
    assert_eq!(code, 0, "set on etcd: {results:#}");
    assert!(stat(&results, "add_ok") > 100, "{results:#}");
}

/// The deterministic negative controls (see `common::stale_serializable_reads_are_caught`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_reads_of_an_isolated_member_are_caught_every_time() {
    let Some(etcd) = etcd() else { return };
    common::stale_serializable_reads_are_caught(etcd).await;
}
