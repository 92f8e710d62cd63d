//! Integration tests of the Lease service on real `cairn` processes: etcd's answers and errors,
//! attachment and revoke (one revision, one watch response), expiry, restarts, and keep-alives
//! through a follower that survive the loss of the leader without any early expiry.

mod common;

use std::time::{Duration, Instant};

use cairn_client::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_client::proto::etcdserverpb::lease_client::LeaseClient;
use cairn_client::proto::etcdserverpb::watch_client::WatchClient;
use cairn_client::proto::etcdserverpb::watch_request::RequestUnion;
use cairn_client::proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, TxnRequest, WatchCreateRequest, WatchRequest,
};
use cairn_client::proto::mvccpb::event::EventType;
use cairn_client::Client;
use common::{Cluster, Kind, Member};
use tonic::transport::Channel;
use tonic::Code;

async fn lease_client(endpoint: &str) -> LeaseClient<Channel> {
    LeaseClient::connect(endpoint.to_string()).await.unwrap()
}

async fn grant(
    c: &mut LeaseClient<Channel>,
    id: i64,
    ttl: i64,
) -> Result<(i64, i64), tonic::Status> {
    let resp = c
        .lease_grant(LeaseGrantRequest { ttl, id })
        .await?
        .into_inner();
    Ok((resp.id, resp.ttl))
}

async fn put_with_lease(c: &mut Client, key: &str, lease: i64) -> Result<(), tonic::Status> {
    let req = PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        lease,
        ..PutRequest::default()
    };
    c.put_request(req).await.map(|_| ()).map_err(|e| match e {
        cairn_client::Error::Status(s) => s,
        other => panic!("unexpected error {other}"),
    })
}

async fn ttl(c: &mut LeaseClient<Channel>, id: i64) -> (i64, i64, Vec<String>) {
    let r = c
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    let keys = r
        .keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    (r.ttl, r.granted_ttl, keys)
}

/// One keep-alive on a fresh stream: the TTL the server answers.
async fn keep_alive_once(c: &mut LeaseClient<Channel>, id: i64) -> Result<i64, tonic::Status> {
    let requests = tokio_stream::iter(vec![LeaseKeepAliveRequest { id }]);
    let mut responses = c.lease_keep_alive(requests).await?.into_inner();
    let resp = responses.message().await?.expect("one response");
    assert_eq!(resp.id, id);
    assert!(resp.header.is_some());
    Ok(resp.ttl)
}

async fn exists(c: &mut Client, key: &str) -> bool {
    c.get(key).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_api_follows_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let mut l = lease_client(&m.endpoint()).await;
    let mut c = Client::connect(m.endpoint()).await.unwrap();

    // A TTL below the minimum (1.5 election timeouts, rounded up) is raised to it; ids are positive.
    let (id, granted) = grant(&mut l, 0, 1).await.unwrap();
    assert!(id > 0);
    assert_eq!(granted, 2);
    assert_eq!(grant(&mut l, 42, 100).await.unwrap(), (42, 100));
    let exists_err = grant(&mut l, 42, 100).await.unwrap_err();
    assert_eq!(
        (exists_err.code(), exists_err.message()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    let big = grant(&mut l, 0, 9_000_000_001).await.unwrap_err();
    assert_eq!(
        (big.code(), big.message()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );
    let unknown = put_with_lease(&mut c, "k0", 999).await.unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );

    // Attach three keys, detach one by a put without lease.
    for key in ["k1", "k2", "k3"] {
        put_with_lease(&mut c, key, 42).await.unwrap();
    }
    put_with_lease(&mut c, "k3", 0).await.unwrap();
    let (remaining, granted, keys) = ttl(&mut l, 42).await;
    assert_eq!(granted, 100);
    assert!((98..=100).contains(&remaining), "{remaining}");
    assert_eq!(keys, vec!["k1", "k2"]);
    assert_eq!(ttl(&mut l, 999).await.0, -1, "an unknown lease has TTL -1");
    assert_eq!(keep_alive_once(&mut l, 42).await.unwrap(), 100);
    assert_eq!(
        keep_alive_once(&mut l, 999).await.unwrap(),
        0,
        "unknown: TTL 0"
    );
    let leases = l
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<i64> = leases.leases.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    assert!(ids.contains(&42) && ids.contains(&id));

    // Txn compares on a key's lease.
    let txn = TxnRequest {
        compare: vec![Compare {
            key: "k1".into(),
            target: CompareTarget::Lease as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Lease(42)),
            ..Compare::default()
        }],
        ..TxnRequest::default()
    };
    assert!(c.txn(txn).await.unwrap().succeeded);

    // Revoke: every attached key deleted at one revision, in one watch response.
    let mut w = WatchClient::connect(m.endpoint()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let create = WatchCreateRequest {
        key: "k".into(),
        range_end: "l".into(),
        ..WatchCreateRequest::default()
    };
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    })
    .await
    .unwrap();
    let mut events = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(events.message().await.unwrap().unwrap().created);
    let revoked = l.lease_revoke(LeaseRevokeRequest { id: 42 }).await.unwrap();
    let revision = revoked.into_inner().header.unwrap().revision;
    let resp = events.message().await.unwrap().unwrap();
    let deleted: Vec<(EventType, &[u8], i64)> = resp
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (e.r#type(), kv.key.as_ref(), kv.mod_revision)
        })
        .collect();
    assert_eq!(
        deleted,
        vec![
            (EventType::Delete, &b"k1"[..], revision),
            (EventType::Delete, &b"k2"[..], revision)
        ]
    );
    assert!(!exists(&mut c, "k1").await && exists(&mut c, "k3").await);
    let again = l
        .lease_revoke(LeaseRevokeRequest { id: 42 })
        .await
        .unwrap_err();
    assert_eq!(again.message(), "etcdserver: requested lease not found");
    drop(tx);
}

/// A lease outlives its TTL only while kept alive, expires after it, and — with its keys — survives
/// a restart of the member (which, as the new leader, gives it a full TTL again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_on_time_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let mut l = lease_client(&m.endpoint()).await;
    let mut c = Client::connect(m.endpoint()).await.unwrap();
    let (id, _) = grant(&mut l, 0, 3).await.unwrap();
    put_with_lease(&mut c, "short", id).await.unwrap();
    // Kept alive for twice its TTL.
    let kept_until = Instant::now() + Duration::from_secs(6);
    let mut last = Instant::now();
    while Instant::now() < kept_until {
        last = Instant::now();
        assert_eq!(keep_alive_once(&mut l, id).await.unwrap(), 3);
        assert!(exists(&mut c, "short").await, "expired while kept alive");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Then left alone: gone within its TTL of the last renewal (plus the expiry tick), not before.
    while exists(&mut c, "short").await {
        assert!(last.elapsed() < Duration::from_secs(8), "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.elapsed() >= Duration::from_millis(2900),
        "expired early"
    );
    assert_eq!(ttl(&mut l, id).await.0, -1);

    let (long, _) = grant(&mut l, 0, 600).await.unwrap();
    put_with_lease(&mut c, "long", long).await.unwrap();
    tokio::task::block_in_place(|| {
        m.terminate();
        m.restart();
    });
    let mut l = lease_client(&m.endpoint()).await;
    let (remaining, granted, keys) = ttl(&mut l, long).await;
    assert_eq!((granted, keys), (600, vec!["long".to_string()]));
    assert!(
        remaining >= 599,
        "a new leader gives a full TTL: {remaining}"
    );
}

/// Keep-alives through a follower are forwarded to the leader; killing the leader interrupts them
/// for an election, yet the lease never expires: the new leader gives every lease a full TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_through_a_follower_survives_leader_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &[]);
    let endpoints = cluster.endpoints();
    let mut status = Client::connect(endpoints[0].clone()).await.unwrap();
    let leader_id = status.status().await.unwrap().leader;
    let mut leader = 0;
    for (i, e) in endpoints.iter().enumerate() {
        let mut c = Client::connect(e.clone()).await.unwrap();
        if c.status().await.unwrap().header.unwrap().member_id == leader_id {
            leader = i;
        }
    }
    let follower = (leader + 1) % 3;
    let mut l = lease_client(&endpoints[follower]).await;
    let mut c = Client::connect(endpoints[follower].clone()).await.unwrap();
    let (id, ttl_granted) = grant(&mut l, 0, 3).await.unwrap();
    put_with_lease(&mut c, "held", id).await.unwrap();

    let mut renewed = 0;
    let mut failed = 0;
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(10) {
        if !killed && started.elapsed() > Duration::from_secs(3) {
            tokio::task::block_in_place(|| cluster.members[leader].kill9());
            killed = true;
        }
        match keep_alive_once(&mut l, id).await {
            Ok(ttl) => {
                assert_eq!(ttl, ttl_granted, "the lease is alive and renewed");
                renewed += 1;
            }
            // No leader for a moment: retried, as a client does.
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(renewed > 10, "renewed {renewed} times, failed {failed}");
    let mut c = Client::connect(endpoints[follower].clone()).await.unwrap();
    assert!(exists(&mut c, "held").await, "the lease expired early");
    let (remaining, _, keys) = ttl(&mut l, id).await;
    assert!(remaining > 0 && keys == vec!["held".to_string()]);
}
