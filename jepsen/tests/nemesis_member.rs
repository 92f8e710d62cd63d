//! The `member-replace` fault really replaces a member, on real etcd 3.4 and on Cairn: the
//! removed member leaves the member list and its data directory is gone; the cluster keeps
//! taking writes without it; added back, it has a new id, starts from an empty directory with
//! `--initial-cluster-state=existing`, and catches up with the writes made while it was away —
//! on Cairn through a snapshot, as every member that joins a running Cairn cluster does (its
//! log starts after the bootstrap; etcd replays a new member the log from index 1 until the
//! leader has truncated it, 5,000 entries past `--snapshot-count`).
//!
//! etcd must be at `/usr/bin/etcd` and Cairn built next to this test (`cargo test
//! --workspace`); each half is skipped, with the reason printed, otherwise.

mod common;
mod nemesis_common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_jepsen::admin::AdminClient;
use cairn_jepsen::client::EtcdClient;
use cairn_jepsen::cluster::{Cluster, ClusterSpec, MemberState};

const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes before the removal: well past `--snapshot-count`.
const WRITES: usize = 60;

/// Writes while the member is away: past `--snapshot-count`.
const AWAY_WRITES: usize = 240;

/// How long the away writes may take.
const AWAY_WRITES_TIMEOUT: Duration = Duration::from_secs(30);

/// Concurrent writers of the away writes.
const AWAY_WRITERS: usize = 8;

fn client(cluster: &Cluster, member: usize) -> EtcdClient {
    EtcdClient::new(&cluster.client_url(member), REQUEST_TIMEOUT).unwrap()
}

/// Puts `key` through any member that takes it, retrying until [`CONVERGE_TIMEOUT`].
async fn put_somewhere(cluster: &Cluster, members: &[usize], key: &str, value: &[u8]) {
    let start = Instant::now();
    loop {
        for &m in members {
            if client(cluster, m).put(key, value).await.is_ok() {
                return;
            }
        }
        assert!(start.elapsed() < CONVERGE_TIMEOUT, "no member took {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn member_ids(cluster: &Cluster, via: usize) -> Vec<u64> {
    let mut admin = AdminClient::new(&cluster.client_url(via), REQUEST_TIMEOUT).unwrap();
    let mut ids: Vec<u64> = admin
        .member_list()
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// What Cairn logs when a follower has installed a snapshot from its leader.
const SNAPSHOT_INSTALLED: &str = "snapshot installed";

/// Whether the rejoining member must have caught up by snapshot (Cairn) or may replay the log
/// (etcd).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CatchUp {
    Snapshot,
    Any,
}

async fn replace_a_member(bin: PathBuf, catch_up: CatchUp) {
    let mut cluster = Cluster::start(ClusterSpec {
        bin,
        members: 3,
        extra_args: vec!["--snapshot-count=20".into()],
        track_syncs: false,
    })
    .await
    .unwrap();
    let all: Vec<usize> = (0..3).collect();
    for k in 0..WRITES {
        put_somewhere(&cluster, &all, &format!("before/{k}"), b"v").await;
    }
    // Replace the leader: the hardest case (it must hand over before it leaves).
    let target = cluster
        .leader()
        .await
        .expect("a fresh cluster has a leader");
    let others: Vec<usize> = all.iter().copied().filter(|&m| m != target).collect();
    let old_id = cluster.remove(target).await.unwrap();
    assert_eq!(cluster.state(target), MemberState::Removed);
    assert!(!cluster.data_dir(target).exists(), "the data was not wiped");
    assert!(!member_ids(&cluster, others[0]).await.contains(&old_id));

    let mut writers = tokio::task::JoinSet::new();
    for w in 0..AWAY_WRITERS {
        let urls: Vec<String> = others.iter().map(|&m| cluster.client_url(m)).collect();
        writers.spawn(async move {
            let start = Instant::now();
            let mut written = 0;
            let mut attempt = 0usize;
            while written < AWAY_WRITES / AWAY_WRITERS {
                assert!(
                    start.elapsed() < AWAY_WRITES_TIMEOUT,
                    "writer {w}: {written} writes in {AWAY_WRITES_TIMEOUT:?}"
                );
                let url = &urls[attempt % urls.len()];
                let mut client = EtcdClient::new(url, REQUEST_TIMEOUT).unwrap();
                match client
                    .put(&format!("away/{w}/{}", written % 50), b"v")
                    .await
                {
                    Ok(_) => written += 1,
                    Err(_) => attempt += 1,
                }
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    put_somewhere(&cluster, &others, "away/last", b"v").await;
    let new_id = cluster.rejoin(target).await.unwrap();
    assert_ne!(new_id, old_id, "the replacement kept the old id");
    cluster.wait_healthy(CONVERGE_TIMEOUT).await.unwrap();
    assert!(cluster.data_dir(target).exists());
    let mut expected = vec![
        new_id,
        cluster.member_id(others[0]),
        cluster.member_id(others[1]),
    ];
    expected.sort_unstable();
    for m in 0..3 {
        assert_eq!(
            member_ids(&cluster, m).await,
            expected,
            "member list on n{m}"
        );
    }
    // Its own state (a serializable read) has everything written while it was away.
    let start = Instant::now();
    loop {
        let local = client(&cluster, target).get("away/last", true).await;
        if local.is_ok_and(|got| got.kv.is_some()) {
            break;
        }
        assert!(
            start.elapsed() < CONVERGE_TIMEOUT,
            "the new member never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = client(&cluster, target)
        .get("before/0", true)
        .await
        .unwrap();
    assert!(first.kv.is_some(), "the new member lacks the early writes");
    if catch_up == CatchUp::Snapshot {
        let log = std::fs::read_to_string(&cluster.log_paths()[target]).unwrap();
        assert!(
            log.contains(SNAPSHOT_INSTALLED),
            "the new member caught up without a snapshot"
        );
    }
    // And it is a voting member: the cluster still takes writes with another member down.
    cluster.kill(others[0]).await.unwrap();
    put_somewhere(&cluster, &[target, others[1]], "after", b"v").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_etcd_member_rejoins_with_a_new_id_and_a_wiped_dir() {
    if let Some(etcd) = common::etcd() {
        replace_a_member(etcd, CatchUp::Any).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_cairn_member_rejoins_with_a_new_id_and_a_wiped_dir() {
    if let Some(cairn) = common::cairn() {
        replace_a_member(cairn, CatchUp::Snapshot).await;
    }
}

/// A register run on Cairn under member replacement and the admin faults, with a snapshot every
/// 50 entries (too few writes for a leader to truncate its log past a rejoining member: that is
/// the test above): it must stay valid, and the faults must have happened (a member was added
/// back, and the admin calls succeeded).
#[test]
fn cairn_stays_valid_under_member_replacement_and_admin_faults() {
    let Some(cairn) = common::cairn() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let (code, results) = common::run(
        &cairn,
        store.path(),
        &[
            "--nemesis=member-replace,transfer-leader,compact,defrag",
            "--member-arg=--snapshot-count=50",
            "--nemesis-interval-s=1.5",
            "--time-limit-s=25",
            "--seed=3",
        ],
    );
    assert_eq!(code, 0, "{results:#}");
    assert!(common::stat(&results, "nemesis_events") >= 5, "{results:#}");
    let history = nemesis_common::nemesis_actions(store.path());
    for done in ["added n", "transfer-leader n", "compact at", "defrag n"] {
        assert!(
            history.iter().any(|action| action.contains(done)),
            "no nemesis event with {done:?}: {history:#?}"
        );
    }
    assert!(
        !history.iter().any(|action| action.contains("failed")),
        "{history:#?}"
    );
}

/// Removing a Cairn leader while it is busy appending must not crash it: it applies its own
/// removal while writes are still being persisted. Regression test: raft-rs kept the removed
/// member leader, and the next persisted write panicked it (`Raft::on_persist_entries`, its own
/// progress gone: raft.rs:1055 in raft 0.7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_cairn_leader_removed_from_the_cluster_stops_cleanly() {
    let Some(cairn) = common::cairn() else {
        return;
    };
    for round in 0..ROUNDS {
        let mut cluster = Cluster::start(ClusterSpec {
            bin: cairn.clone(),
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
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let url = cluster.client_url(leader);
            writers.spawn(async move {
                let mut client = EtcdClient::new(&url, REQUEST_TIMEOUT).unwrap();
                for k in 0u64.. {
                    if client.put(&format!("w{w}/{}", k % 16), b"v").await.is_err() {
                        return;
                    }
                }
            });
        }
        let other = (leader + 1) % 3;
        put_somewhere(&cluster, &[other], "warm", b"v").await;
        // Like etcd 3.4 (--strict-reconfig-check), Cairn refuses a removal until the peers left
        // have been connected for a while.
        let mut admin = AdminClient::new(&cluster.client_url(other), REQUEST_TIMEOUT).unwrap();
        let start = Instant::now();
        while let Err(e) = admin.member_remove(cluster.member_id(leader)).await {
            assert!(start.elapsed() < CONVERGE_TIMEOUT, "{e:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let exit = cluster
            .wait_exited(leader, CONVERGE_TIMEOUT)
            .await
            .unwrap()
            .expect("a removed member stops by itself");
        writers.abort_all();
        let log = std::fs::read_to_string(&cluster.log_paths()[leader]).unwrap();
        assert!(
            !log.contains("panicked"),
            "round {round}: the removed leader crashed: {exit}"
        );
    }
}

const ROUNDS: usize = 3;
const WRITERS: usize = 4;
