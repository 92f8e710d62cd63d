//! The `clock-skew` fault on Cairn: a member restarted with the LD_PRELOAD shim really lives a
//! day ahead (its log's timestamps say so) and the cluster still serves linearizable reads and
//! writes on every member; a leader whose wall clock is 10 minutes ahead or behind and whose
//! clocks run 5 % fast expires a lease neither early (beyond the 5 %) nor late; and a register run under `clock-skew` and `fsync-fail` stays valid,
//! with the faults done (the fsync-fail victims stopped by themselves, nothing the `faults`
//! checker calls an anomaly).
//!
//! Cairn must be built next to this test (`cargo test --workspace`); skipped otherwise.

mod common;
mod nemesis_common;

use std::time::{Duration, Instant};

use cairn_jepsen::admin::AdminClient;
use cairn_jepsen::client::EtcdClient;
use cairn_jepsen::cluster::{Cluster, ClusterSpec};
use cairn_jepsen::shim::ShimConfig;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::{LeaseGrantRequest, PutRequest};

const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
const DAY_MS: i64 = 86_400_000;

fn client(cluster: &Cluster, member: usize) -> EtcdClient {
    EtcdClient::new(&cluster.client_url(member), REQUEST_TIMEOUT).unwrap()
}

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
        track_syncs: false,
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

const LEASE_TTL_S: i64 = 3;
const LEASE_RATE: f64 = 1.05;
/// Beyond its TTL, how long an expired lease may take to be revoked (the leader's expiry
/// checks and a raft round).
const REVOKE_SLACK: Duration = Duration::from_secs(4);

/// Restarts member `m` with `skew` and makes it the leader.
async fn skewed_leader(cluster: &mut Cluster, m: usize, skew: ShimConfig) {
    cluster.kill(m).await.unwrap();
    cluster.set_shim(m, Some(skew)).unwrap();
    cluster.restart(m).unwrap();
    cluster.wait_healthy(CONVERGE_TIMEOUT).await.unwrap();
    let start = Instant::now();
    loop {
        match cluster.leader().await {
            Some(leader) if leader == m => return,
            Some(leader) => {
                let mut admin =
                    AdminClient::new(&cluster.client_url(leader), REQUEST_TIMEOUT).unwrap();
                let _ = admin.move_leader(cluster.member_id(m)).await;
            }
            None => {}
        }
        assert!(start.elapsed() < CONVERGE_TIMEOUT, "n{m} never led");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Grants a lease on member `m`, attaches a key, and returns how long after the grant was sent
/// a linearizable read first found the key gone, and after its answer.
async fn lease_lifetime(cluster: &Cluster, m: usize, key: &str) -> (Duration, Duration) {
    let channel = tonic::transport::Endpoint::from_shared(cluster.client_url(m))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let sent = Instant::now();
    let lease = LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest {
            ttl: LEASE_TTL_S,
            id: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let granted = Instant::now();
    KvClient::new(channel)
        .put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            lease,
            ..PutRequest::default()
        })
        .await
        .unwrap();
    let deadline = Duration::from_secs(LEASE_TTL_S as u64) + REVOKE_SLACK + REVOKE_SLACK;
    loop {
        let got = client(cluster, m).get(key, false).await;
        if got.is_ok_and(|g| g.kv.is_none()) {
            return (sent.elapsed(), granted.elapsed());
        }
        assert!(sent.elapsed() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_a_skewed_cairn_leader_expire_on_time() {
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
    for (m, offset_ms) in [(0, 600_000), (1, -600_000)] {
        let skew = ShimConfig {
            clock_offset_ms: offset_ms,
            clock_rate: LEASE_RATE,
            ..ShimConfig::default()
        };
        skewed_leader(&mut cluster, m, skew).await;
        let (since_sent, since_granted) = lease_lifetime(&cluster, m, &format!("lease/{m}")).await;
        let ttl = Duration::from_secs(LEASE_TTL_S as u64);
        println!(
            "wall clock {offset_ms:+} ms, clocks at {LEASE_RATE}x: a {ttl:?} lease was gone \
             {since_sent:?} after its grant was sent, {since_granted:?} after it was granted"
        );
        assert!(
            since_sent >= ttl.div_f64(LEASE_RATE),
            "wall clock {offset_ms:+} ms: a {ttl:?} lease expired after {since_sent:?}"
        );
        assert!(
            since_granted <= ttl + REVOKE_SLACK,
            "wall clock {offset_ms:+} ms: a {ttl:?} lease lived {since_granted:?}"
        );
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
