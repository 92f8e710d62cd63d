//! The `clock-skew` fault on Cairn: a member restarted with the LD_PRELOAD shim really lives a
//! day ahead (its log's timestamps say so) and the cluster still serves linearizable reads and
//! writes on every member; and a register run under `clock-skew` and `fsync-fail` stays valid,
//! with the faults done (the fsync-fail victims stopped by themselves, nothing the `faults`
//! checker calls an anomaly).
//!
//! Cairn must be built next to this test (`cargo test --workspace`); skipped otherwise.

mod common;
mod nemesis_common;

use std::time::Duration;

use cairn_jepsen::client::EtcdClient;
use cairn_jepsen::cluster::{Cluster, ClusterSpec};
use cairn_jepsen::shim::ShimConfig;

const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
const DAY_MS: i64 = 86_400_000;

/// The timestamp (`"timestamp":"YYYY-MM-DD`) day of the last JSON line of a Cairn log.
fn last_logged_day(log: &str) -> String {
    log.lines()
        .rev()
        .find_map(|line| line.split("\"timestamp\":\"").nth(1))
        .map(|rest| rest[..10].to_string())
        .expect("a timestamped line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cairn_member_with_a_skewed_clock_lives_ahead_and_the_cluster_serves() {
    let Some(cairn) = common::cairn() else {
        return;
    };
    let mut cluster = Cluster::start(ClusterSpec {
        bin: cairn,
        members: 3,
        extra_args: vec![],
    })
    .await
    .unwrap();
    let leader = cluster
        .leader()
        .await
        .expect("a fresh cluster has a leader");
    let log = &cluster.log_paths()[leader];
    let today = last_logged_day(&std::fs::read_to_string(log).unwrap());
    cluster.kill(leader).await.unwrap();
    cluster
        .set_shim(
            leader,
            Some(ShimConfig {
                clock_offset_ms: DAY_MS,
                clock_rate: 1.05,
                ..ShimConfig::default()
            }),
        )
        .unwrap();
    cluster.restart(leader).unwrap();
    cluster.wait_healthy(CONVERGE_TIMEOUT).await.unwrap();
    let skewed = last_logged_day(&std::fs::read_to_string(log).unwrap());
    assert_ne!(skewed, today, "the restarted member's clock is not skewed");

    for m in 0..3 {
        let mut client = EtcdClient::new(&cluster.client_url(m), REQUEST_TIMEOUT).unwrap();
        client.put(&format!("k{m}"), b"v").await.unwrap();
        for k in 0..=m {
            let got = client.get(&format!("k{k}"), false).await.unwrap();
            assert!(got.kv.is_some(), "n{m} lost k{k}");
        }
    }
}

#[test]
fn cairn_stays_valid_under_clock_skew_and_fsync_failures() {
    let Some(cairn) = common::cairn() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let (code, results) = common::run(
        &cairn,
        store.path(),
        &[
            "--nemesis=clock-skew,fsync-fail",
            "--nemesis-interval-s=2",
            "--time-limit-s=20",
            "--seed=5",
        ],
    );
    assert_eq!(code, 0, "{results:#}");
    let actions = nemesis_common::nemesis_actions(store.path());
    for done in ["clock-skew n", "exited by itself after failing fsyncs"] {
        assert!(
            actions.iter().any(|action| action.contains(done)),
            "no nemesis event with {done:?}: {actions:#?}"
        );
    }
}
