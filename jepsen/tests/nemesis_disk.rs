//! The `fsync-fail` fault's mechanism on Cairn: a member started with the LD_PRELOAD shim whose
//! fsyncs then fail must stop by itself (fail-stop, STYLE.md §5) with a failure status, never
//! carry on and never exit as if cleanly removed; restarted without the shim it serves again.
//! Regression test for a Cairn bug: a failed raft log write panicked the log-writer thread, and
//! the process then exited with status 0 logging "this member was removed from the cluster".
//!
//!
//! Then the `lose-unsynced` fault end to end: crashes that lose the page cache of every member,
//! a majority or one must lose no acknowledged write (Cairn syncs its raft log before it
//! acknowledges), and the fault must really have cut data.
//!
//! Cairn must be built next to this test (`cargo test --workspace`); skipped otherwise.

mod common;
mod nemesis_common;

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_jepsen::client::EtcdClient;
use cairn_jepsen::cluster::{Cluster, ClusterSpec};
use cairn_jepsen::shim::ShimConfig;

const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
const FAIL_STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cairn_member_whose_fsync_fails_stops_with_a_failure() {
    let Some(cairn) = common::cairn() else {
        return;
    };
    let mut cluster = Cluster::start(ClusterSpec {
        bin: cairn,
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
    let victim = (leader + 1) % 3;
    let (fail, tripped) = cluster.fsync_files(victim);
    cluster.kill(victim).await.unwrap();
    cluster
        .set_shim(
            victim,
            Some(ShimConfig {
                fsync_fail_file: Some(fail.clone()),
                fsync_tripped_file: Some(tripped.clone()),
                ..ShimConfig::default()
            }),
        )
        .unwrap();
    cluster.restart(victim).unwrap();
    cluster.wait_healthy(CONVERGE_TIMEOUT).await.unwrap();

    // Writes on the leader make the follower append, and fsync, its raft log.
    std::fs::write(&fail, b"").unwrap();
    let url = cluster.client_url(leader);
    let writer = tokio::spawn(async move {
        let start = Instant::now();
        let mut client = EtcdClient::new(&url, REQUEST_TIMEOUT).unwrap();
        for k in 0u64.. {
            if start.elapsed() > FAIL_STOP_TIMEOUT {
                break;
            }
            let _ = client.put(&format!("k{}", k % 10), b"v").await;
        }
    });
    let exited = cluster
        .wait_exited(victim, FAIL_STOP_TIMEOUT)
        .await
        .unwrap()
        .expect("the member kept running after its fsync failed");
    writer.abort();
    assert!(tripped.exists(), "no fsync failed, yet it exited: {exited}");
    assert!(
        !exited.contains("exit status: 0"),
        "a fail-stop must exit with a failure: {exited}"
    );
    assert!(
        !exited.contains("removed from the cluster"),
        "a fail-stop claimed a removal: {exited}"
    );
    assert!(exited.contains("fail-stop"), "{exited}");

    // Healthy disk again: it restarts on its data and serves.
    std::fs::remove_file(&fail).unwrap();
    cluster.set_shim(victim, None).unwrap();
    cluster.restart(victim).unwrap();
    cluster.wait_healthy(CONVERGE_TIMEOUT).await.unwrap();
}

/// The unsynced bytes the `lose-unsynced` faults of the run stored in `store` cut, in total.
fn unsynced_bytes_lost(store: &Path) -> u64 {
    nemesis_common::nemesis_actions(store)
        .iter()
        .flat_map(|action| action.split(" lost ").skip(1))
        .map(|rest| {
            let (bytes, _) = rest.split_once(" unsynced bytes").expect("a loss");
            bytes.parse::<u64>().expect("a byte count")
        })
        .sum()
}

#[test]
fn acknowledged_writes_survive_crashes_that_lose_the_page_cache() {
    let Some(cairn) = common::cairn() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let (code, results) = common::run(
        &cairn,
        store.path(),
        &[
            "--workload=set",
            "--nemesis=lose-unsynced",
            "--nemesis-interval-s=2",
            "--time-limit-s=20",
            "--seed=4",
        ],
    );
    assert_eq!(code, 0, "{results:#}");
    assert!(common::stat(&results, "nemesis_events") >= 4, "{results:#}");
    let lost = unsynced_bytes_lost(store.path());
    assert!(lost > 0, "no crash cut any unsynced data");
    println!("the crashes cut {lost} unsynced bytes; no acknowledged add was lost");
}
