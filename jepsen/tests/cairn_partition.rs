//! A real network partition of a 3-member Cairn cluster, through cairn-jepsen's peer proxies: the
//! isolated leader steps down and refuses linearizable reads and writes, the majority elects a new
//! leader and keeps writing, and after healing every member converges on the majority's history.
//!
//! It runs the `cairn` binary that `cargo test --workspace` builds next to this test (the server's
//! integration tests need it); run alone (`cargo test -p cairn-jepsen`) it is skipped, with the
//! reason printed, if that binary is not there.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_jepsen::client::EtcdClient;
use cairn_jepsen::cluster::{Cluster, ClusterSpec};

const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

fn client(cluster: &Cluster, member: usize) -> EtcdClient {
    EtcdClient::new(&cluster.client_url(member), REQUEST_TIMEOUT).unwrap()
}

async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(
            start.elapsed() < CONVERGE_TIMEOUT,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `target/<profile>/cairn`, beside `target/<profile>/deps/<this test>`.
fn cairn_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("cairn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_cairn_leader_steps_down_and_the_cluster_heals() {
    let bin = cairn_binary();
    if !bin.exists() {
        println!(
            "skipped: {} not built (cargo test --workspace builds it)",
            bin.display()
        );
        return;
    }
    let mut cluster = Cluster::start(ClusterSpec {
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
    client(&cluster, leader).put("before", b"0").await.unwrap();
    let majority: Vec<usize> = (0..3).filter(|&m| m != leader).collect();

    cluster
        .network()
        .partition(&[vec![leader], majority.clone()]);
    eventually("a new leader on the majority side", || {
        let mut c = client(&cluster, majority[0]);
        let old = leader;
        let cluster = &cluster;
        async move {
            c.status()
                .await
                .is_ok_and(|(_, l)| l != 0 && cluster.member_index(l) != Some(old))
        }
    })
    .await;
    client(&cluster, majority[0])
        .put("k", b"majority")
        .await
        .unwrap();
    eventually("the isolated leader to step down", || {
        let mut c = client(&cluster, leader);
        async move { c.status().await.is_ok_and(|(_, l)| l == 0) }
    })
    .await;
    let mut minority = client(&cluster, leader);
    assert!(
        minority.get("k", false).await.is_err(),
        "the minority served a linearizable read"
    );
    assert!(
        minority.put("k", b"minority").await.is_err(),
        "the minority took a write"
    );
    let stale = minority.get("k", true).await.unwrap();
    assert!(
        stale.kv.is_none(),
        "the majority's write crossed the partition"
    );

    cluster.network().heal();
    cluster.wait_healthy(CONVERGE_TIMEOUT).await.unwrap();
    for m in 0..3 {
        let got = client(&cluster, m).get("k", false).await.unwrap();
        assert_eq!(got.kv.unwrap().value.as_ref(), b"majority", "member {m}");
    }
}
