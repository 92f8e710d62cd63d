//! The watch workload against a 3-member Cairn cluster under kill, pause and partition, with a
//! compaction every second at any revision (so a delete at the compaction revision must survive,
//! unlike etcd 3.4.23's etcd#18089): every watcher's log must be a gap-free, duplicate-free,
//! unsplit slice of one canonical log that agrees with the acknowledged writes, and every
//! watcher must catch up after healing.
//!
//! It runs the `cairn` binary that `cargo test --workspace` builds next to this test; run alone
//! (`cargo test -p cairn-jepsen`) it is skipped, with the reason printed, if that binary is not
//! there.

mod common;

use common::{cairn, run, stat};

#[test]
fn cairn_keeps_the_watch_guarantees_under_faults() {
    let Some(cairn) = cairn() else { return };
    let store = tempfile::tempdir().unwrap();
    let (code, results) = run(
        &cairn,
        store.path(),
        &[
            "--workload=watch",
            "--time-limit-s=10",
            "--nemesis=kill,pause,partition",
            "--nemesis-interval-s=2",
            "--compact-interval-s=1",
            "--compact-lag-revisions=50",
            "--compact-at=any",
            "--seed=7",
        ],
    );
    assert_eq!(code, 0, "watch on Cairn: {results:#}");
    assert!(stat(&results, "nemesis_events") >= 4, "{results:#}");
    assert!(stat(&results, "watch_events") > 500, "{results:#}");
    assert!(stat(&results, "compact_ok") >= 1, "{results:#}");
    let watch = &results["checkers"][0];
    assert_eq!(watch["checker"], "watch");
    assert!(
        watch["stats"]["acknowledged_writes_verified"]
            .as_u64()
            .unwrap()
            > 200,
        "{results:#}"
    );
}
