//! One-way partitions, slow and flaky links on real 3-member clusters of Cairn (`cairn` built
//! next to this test by `cargo test --workspace`) and etcd 3.4 (`/usr/bin/etcd`); each is
//! skipped, with the reason printed, where its binary is missing.
//!
//! A mute leader (its messages to the others lost, theirs to it delivered) is replaced: the
//! others stop hearing it and elect a new leader, and the old one, which still hears them,
//! follows that new leader — which a two-way partition would not let it learn — while its own
//! requests cannot reach anyone (they are held, and may apply once the link heals). Then a
//! register run under `partition-one-way`, `slow` and
//! `flaky` stays valid.

mod common;
mod nemesis_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cairn_jepsen::client::EtcdClient;
use cairn_jepsen::cluster::{Cluster, ClusterSpec};

const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

fn client(cluster: &Cluster, member: usize) -> EtcdClient {
    EtcdClient::new(&cluster.client_url(member), REQUEST_TIMEOUT).unwrap()
}

/// The leader member `m` reports (an index), if it reports one we know.
async fn leader_seen_by(cluster: &Cluster, m: usize) -> Option<usize> {
    let (_, leader) = client(cluster, m).status().await.ok()?;
    cluster.member_index(leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_cairn_leader_is_replaced_and_follows_the_new_one() {
    if let Some(cairn) = common::cairn() {
        mute_leader(cairn).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_etcd_leader_is_replaced_and_follows_the_new_one() {
    if let Some(etcd) = common::etcd() {
        mute_leader(etcd).await;
    }
}

async fn mute_leader(bin: std::path::PathBuf) {
    let mut cluster = Cluster::start(ClusterSpec {
        bin,
        members: 3,
        extra_args: vec![],
        track_syncs: false,
    })
    .await
    .unwrap();
    let old = cluster
        .leader()
        .await
        .expect("a fresh cluster has a leader");
    let others: Vec<usize> = (0..3).filter(|&m| m != old).collect();
    cluster
        .network()
        .stall(others.iter().map(|&m| (old, m)).collect::<BTreeSet<_>>());

    let start = Instant::now();
    let new = loop {
        match leader_seen_by(&cluster, others[0]).await {
            Some(leader) if leader != old => break leader,
            _ => {}
        }
        assert!(start.elapsed() < CONVERGE_TIMEOUT, "no new leader elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    client(&cluster, new).put("k", b"majority").await.unwrap();
    // The old leader hears the new one: it follows it.
    let start = Instant::now();
    while leader_seen_by(&cluster, old).await != Some(new) {
        assert!(
            start.elapsed() < CONVERGE_TIMEOUT,
            "the mute old leader never learned of the new leader n{new}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // But nothing it says gets through: it can neither forward a write nor confirm a read.
    assert!(
        client(&cluster, old).put("k", b"mute").await.is_err(),
        "a mute member's write went through"
    );
    assert!(client(&cluster, old).get("k", false).await.is_err());

    // After healing, the held bytes flow: the timed-out write may still apply (it was
    // indeterminate), so every member must agree on one of the two values.
    cluster.network().heal();
    cluster.wait_healthy(CONVERGE_TIMEOUT).await.unwrap();
    let mut values = BTreeSet::new();
    for m in 0..3 {
        let got = client(&cluster, m).get("k", false).await.unwrap();
        values.insert(got.kv.unwrap().value.to_vec());
    }
    assert_eq!(values.len(), 1, "members disagree: {values:?}");
    let value = values.pop_first().unwrap();
    assert!(value == b"majority" || value == b"mute", "{value:?}");
}

#[test]
fn cairn_stays_valid_under_one_way_partitions_and_bad_links() {
    let Some(cairn) = common::cairn() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let (code, results) = common::run(
        &cairn,
        store.path(),
        &[
            "--nemesis=partition-one-way,slow,flaky",
            "--nemesis-interval-s=1.5",
            "--time-limit-s=20",
            "--seed=7",
        ],
    );
    assert_eq!(code, 0, "{results:#}");
    let actions = nemesis_common::nemesis_actions(store.path());
    for done in ["one-way n", "slow ", "flaky "] {
        assert!(
            actions.iter().any(|action| action.contains(done)),
            "no nemesis event with {done:?}: {actions:#?}"
        );
    }
}
