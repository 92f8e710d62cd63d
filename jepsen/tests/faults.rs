//! The cluster driver's faults do what they claim, on a real 3-member etcd 3.4 cluster
//! (`/usr/bin/etcd`; skipped, with the reason printed, where it is not installed):
//! isolating the leader makes the majority elect another one and the old leader stop serving
//! linearizable reads; a paused member stops answering; a killed member refuses connections and
//! comes back with its data after a restart. Every wait has a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_jepsen::client::{ClientError, EtcdClient};
use cairn_jepsen::cluster::{Cluster, ClusterSpec};

const ETCD: &str = "/usr/bin/etcd";
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

fn client(cluster: &Cluster, member: usize) -> EtcdClient {
    EtcdClient::new(&cluster.client_url(member), REQUEST_TIMEOUT).unwrap()
}

/// Polls `probe` every 100 ms until it is true, for at most `CONVERGE_TIMEOUT`.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_pauses_and_kills_act_on_a_real_etcd_cluster() {
    if !Path::new(ETCD).exists() {
        println!("skipped: {ETCD} not found (apt-get install etcd-server)");
        return;
    }
    let mut cluster = Cluster::start(ClusterSpec {
        bin: ETCD.into(),
        members: 3,
        extra_args: vec![],
        track_syncs: false,
    })
    .await
    .unwrap();

    // Partition: isolate the leader.
    let leader = cluster
        .leader()
        .await
        .expect("a fresh cluster has a leader");
    let others: Vec<usize> = (0..3).filter(|&m| m != leader).collect();
    cluster.network().partition(&[vec![leader], others.clone()]);
    eventually("a new leader among the majority", || {
        let cluster = &cluster;
        let others = &others;
        async move {
            let mut c = client(cluster, others[0]);
            c.status()
                .await
                .is_ok_and(|(_, l)| l != 0 && cluster.member_index(l) != Some(leader))
        }
    })
    .await;
    client(&cluster, others[0]).put("k", b"1").await.unwrap();
    let stale = client(&cluster, leader).get("k", false).await;
    assert!(
        stale.is_err(),
        "the isolated old leader served a linearizable read"
    );
    // Its local state is stale: a serializable read there does not see the majority's write.
    let local = client(&cluster, leader).get("k", true).await.unwrap();
    assert!(local.kv.is_none(), "the write crossed the partition");
    cluster.network().heal();
    cluster.wait_healthy(CONVERGE_TIMEOUT).await.unwrap();
    let healed = client(&cluster, leader).get("k", false).await.unwrap();
    assert_eq!(healed.kv.unwrap().value.as_ref(), b"1");

    // Pause: the member stops answering, then answers again.
    let m = others[0];
    cluster.pause(m).unwrap();
    let paused = client(&cluster, m).get("k", true).await;
    assert!(
        matches!(paused, Err(ClientError::Indefinite(_))),
        "a paused member answered"
    );
    cluster.resume(m).unwrap();
    cluster.wait_healthy(CONVERGE_TIMEOUT).await.unwrap();

    // Kill: connections are refused (a definite failure), and the data survives a restart.
    cluster.kill(m).await.unwrap();
    let killed = client(&cluster, m).put("k", b"2").await;
    assert!(
        matches!(killed, Err(ClientError::Definite(_))),
        "{killed:?}"
    );
    // The killed member may have been the leader: retry until the others elect one.
    eventually("a write with one member down", || {
        let mut c = client(&cluster, leader);
        async move { c.put("k", b"3").await.is_ok() }
    })
    .await;
    cluster.restart(m).unwrap();
    cluster.wait_healthy(CONVERGE_TIMEOUT).await.unwrap();
    let restarted = client(&cluster, m).get("k", false).await.unwrap();
    assert_eq!(restarted.kv.unwrap().value.as_ref(), b"3");
}

/// A member binary that dies at once makes `start` fail fast, quoting the member, instead of
/// waiting out the startup timeout.
#[tokio::test]
async fn a_member_that_exits_by_itself_fails_startup_fast() {
    let started = Instant::now();
    let error = Cluster::start(ClusterSpec {
        bin: "/bin/false".into(),
        members: 3,
        extra_args: vec![],
        track_syncs: false,
    })
    .await
    .err()
    .expect("/bin/false is no store");
    assert!(
        format!("{error:#}").contains("exited by itself"),
        "{error:#}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
