//! Leases and the background keep-alive against a 3-member Cairn and etcd: the keep-alive
//! survives the loss of the member it used, reports the lease's loss, and stops when dropped.

mod common;

use std::time::{Duration, Instant};

use cairn_client::{ConnectOptions, Error, GetOptions, LeaseGrantOptions, PutOptions};
use common::{Backend, Cluster};

async fn lease_api(backend: Backend) {
    let Some(cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;
    let lease = client.lease();
    let g = lease
        .grant(30, LeaseGrantOptions::new().with_id(0x1234))
        .await
        .unwrap();
    assert_eq!((g.id, g.ttl), (0x1234, 30));
    let err = lease
        .grant(30, LeaseGrantOptions::new().with_id(0x1234))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseExists), "{backend:?}: {err:?}");

    let ns = client.with_namespace("ns/");
    ns.kv()
        .put("a", "1", PutOptions::new().with_lease(g.id))
        .await
        .unwrap();
    client
        .kv()
        .put("outside", "1", PutOptions::new().with_lease(g.id))
        .await
        .unwrap();
    let ttl = lease.time_to_live_with_keys(g.id).await.unwrap();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(ttl.ttl > 0 && ttl.ttl <= 30);
    assert_eq!(ttl.keys.len(), 2);
    let in_ns = ns.lease().time_to_live_with_keys(g.id).await.unwrap();
    assert_eq!(in_ns.keys, [b"a".to_vec()], "{backend:?}");
    assert!(lease
        .leases()
        .await
        .unwrap()
        .leases
        .iter()
        .any(|l| l.id == g.id));
    assert_eq!(lease.keep_alive_once(g.id).await.unwrap(), 30);

    lease.revoke(g.id).await.unwrap();
    let r = client.kv().get("ns/a", GetOptions::new()).await.unwrap();
    assert!(r.kvs.is_empty(), "revoking deletes the lease's keys");
    assert_eq!(lease.time_to_live(g.id).await.unwrap().ttl, -1);
    let err = lease.revoke(g.id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound), "{backend:?}: {err:?}");
    let err = lease.keep_alive_once(g.id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound), "{backend:?}: {err:?}");
    let err = lease.keep_alive(g.id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound), "{backend:?}: {err:?}");

    // A dropped keeper stops renewing: the lease then expires after its TTL.
    let short = lease.grant(2, LeaseGrantOptions::new()).await.unwrap();
    let keeper = lease.keep_alive(short.id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(keeper.is_alive());
    assert!(lease.time_to_live(short.id).await.unwrap().ttl > 0);
    drop(keeper);
    common::eventually(
        "the dropped keeper's lease to expire",
        Duration::from_secs(8),
        || {
            let lease = lease.clone();
            async move { lease.time_to_live(short.id).await.unwrap().ttl == -1 }
        },
    )
    .await;
}

per_backend!(cairn_lease_api, etcd_lease_api, lease_api);

async fn keep_alive_survives_the_loss_of_its_member(backend: Backend) {
    let Some(mut cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;
    let leader = cluster.leader().await;
    // Renewals fail while the cluster elects a new leader (up to two election timeouts): the
    // TTL must cover that, or the keeper rightly declares the lease lost (as Go's would).
    let g = client
        .lease()
        .grant(5, LeaseGrantOptions::new())
        .await
        .unwrap();
    client
        .kv()
        .put("alive", "1", PutOptions::new().with_lease(g.id))
        .await
        .unwrap();
    // A client whose first request (the keep-alive stream) goes to the leader.
    let mut order = cluster.endpoints();
    order.swap(0, leader);
    let keeping = cairn_client::Client::connect_with(
        order,
        ConnectOptions::new()
            .with_auto_sync_interval(None)
            .with_timeout(Duration::from_secs(15)),
    )
    .await
    .unwrap();
    let keeper = keeping.lease().keep_alive(g.id).await.unwrap();
    cluster.members[leader].kill();
    println!(
        "{backend:?}: killed m{}, the leader the keep-alive used",
        leader + 1
    );
    // Longer than the TTL without the member: renewals must go through another one.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        assert!(
            keeper.is_alive(),
            "{backend:?}: keep-alive lost the lease after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = client.kv().get("alive", GetOptions::new()).await.unwrap();
    assert_eq!(r.kvs.len(), 1, "{backend:?}: the leased key survived");
    assert!(client.lease().time_to_live(g.id).await.unwrap().ttl > 0);

    // Revoked elsewhere: the keeper reports the loss.
    client.lease().revoke(g.id).await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(5), keeper.lost())
        .await
        .expect("the loss is reported within a renewal period");
    assert!(matches!(lost, Error::LeaseExpired { id } if id == g.id));
    assert!(!keeper.is_alive());
}

per_backend!(
    cairn_keep_alive_survives_the_loss_of_its_member,
    etcd_keep_alive_survives_the_loss_of_its_member,
    keep_alive_survives_the_loss_of_its_member
);
