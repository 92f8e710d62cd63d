//! Integration tests of the Lock and Election services on real `cairn` processes: mutual exclusion,
//! handover on unlock, resign and lease expiry (also when the member the holder used dies), etcd's
//! election errors, Observe, and interoperation with `etcdctl lock`, which uses the client-side
//! recipe over the same keys.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use cairn_client::proto::etcdserverpb::lease_client::LeaseClient;
use cairn_client::proto::etcdserverpb::LeaseGrantRequest;
use cairn_client::proto::v3electionpb::election_client::ElectionClient;
use cairn_client::proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use cairn_client::proto::v3lockpb::lock_client::LockClient;
use cairn_client::proto::v3lockpb::{LockRequest, UnlockRequest};
use common::{etcdctl, Cluster, Kind, Member};
use tonic::Code;

/// How long a waiter must stay blocked to show that it waits.
const BLOCKED: Duration = Duration::from_millis(700);
/// Longest wait for a handover that must happen.
const HANDOVER: Duration = Duration::from_secs(15);

async fn lease(endpoint: &str, ttl: i64) -> i64 {
    let mut l = LeaseClient::connect(endpoint.to_string()).await.unwrap();
    let req = LeaseGrantRequest { ttl, id: 0 };
    l.lease_grant(req).await.unwrap().into_inner().id
}

async fn lock_once(endpoint: String, name: &str, lease: i64) -> Result<Vec<u8>, tonic::Status> {
    let mut c = LockClient::connect(endpoint).await.unwrap();
    let req = LockRequest {
        name: name.as_bytes().to_vec().into(),
        lease,
    };
    Ok(c.lock(req).await?.into_inner().key.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_hand_over_and_interoperate_with_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let (a, b) = (
        lease(&m.endpoint(), 60).await,
        lease(&m.endpoint(), 60).await,
    );
    let key_a = lock_once(m.endpoint(), "l", a).await.unwrap();
    assert_eq!(key_a, format!("l/{a:x}").into_bytes());
    // Locking again with the same lease finds its own key: it already holds the lock.
    assert_eq!(lock_once(m.endpoint(), "l", a).await.unwrap(), key_a);

    let waiter = tokio::spawn(lock_once(m.endpoint(), "l", b));
    tokio::time::sleep(BLOCKED).await;
    assert!(
        !waiter.is_finished(),
        "a second holder while the first holds the lock"
    );
    let mut c = LockClient::connect(m.endpoint()).await.unwrap();
    c.unlock(UnlockRequest {
        key: key_a.clone().into(),
    })
    .await
    .unwrap();
    let key_b = tokio::time::timeout(HANDOVER, waiter)
        .await
        .expect("handed over")
        .unwrap()
        .unwrap();
    assert_eq!(key_b, format!("l/{b:x}").into_bytes());

    let err = lock_once(m.endpoint(), "other", 12345).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: requested lease not found");

    // etcdctl's client-side mutex waits on the service's lock, and gets it once it is released.
    let mut child = etcdctl(&m.endpoint(), "lock l")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    assert!(
        line_rx.recv_timeout(BLOCKED).is_err(),
        "etcdctl got the lock while the service's holder has it"
    );
    c.unlock(UnlockRequest { key: key_b.into() }).await.unwrap();
    let line = line_rx
        .recv_timeout(HANDOVER)
        .expect("etcdctl got the lock");
    assert!(line.starts_with("l/"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_follow_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let mut e = ElectionClient::connect(m.endpoint()).await.unwrap();
    let name = || b"e".to_vec().into();
    let none = e.leader(LeaderRequest { name: name() }).await.unwrap_err();
    assert_eq!(
        (none.code(), none.message()),
        (Code::Unknown, "election: no leader")
    );

    let mut observe = e
        .observe(LeaderRequest { name: name() })
        .await
        .unwrap()
        .into_inner();
    let (a, b) = (
        lease(&m.endpoint(), 60).await,
        lease(&m.endpoint(), 60).await,
    );
    let campaign = |lease: i64, value: &str| CampaignRequest {
        name: name(),
        lease,
        value: value.as_bytes().to_vec().into(),
    };
    let leader_a = e
        .campaign(campaign(a, "alice"))
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_eq!(leader_a.key, format!("e/{a:x}").into_bytes());
    let seen = observe.message().await.unwrap().unwrap().kv.unwrap();
    assert_eq!(seen.value, "alice".as_bytes());

    let mut e2 = e.clone();
    let bob_request = campaign(b, "bob");
    let bob = tokio::spawn(async move { e2.campaign(bob_request).await });
    tokio::time::sleep(BLOCKED).await;
    assert!(!bob.is_finished(), "two leaders at once");
    let current = e.leader(LeaderRequest { name: name() }).await.unwrap();
    assert_eq!(current.into_inner().kv.unwrap().value, "alice".as_bytes());

    e.proclaim(ProclaimRequest {
        leader: Some(leader_a.clone()),
        value: "alice2".into(),
    })
    .await
    .unwrap();
    let seen = observe.message().await.unwrap().unwrap().kv.unwrap();
    assert_eq!(seen.value, "alice2".as_bytes());
    let stale = LeaderKey {
        rev: leader_a.rev + 1000,
        ..leader_a.clone()
    };
    let err = e
        .proclaim(ProclaimRequest {
            leader: Some(stale),
            value: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "election: not leader")
    );
    let missing = e
        .proclaim(ProclaimRequest {
            leader: None,
            value: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.message(), "\"leader\" field must be provided");

    e.resign(ResignRequest {
        leader: Some(leader_a),
    })
    .await
    .unwrap();
    let leader_b = tokio::time::timeout(HANDOVER, bob)
        .await
        .expect("bob leads after alice resigns")
        .unwrap()
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_eq!(leader_b.key, format!("e/{b:x}").into_bytes());
    let seen = observe.message().await.unwrap().unwrap().kv.unwrap();
    assert_eq!(seen.value, "bob".as_bytes());
}

/// The leader campaigned through one member and stops renewing its lease (its process died); that
/// member dies too. The waiting candidate, through another member, leads once the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_hands_over_when_the_leader_and_its_member_die() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &[]);
    let endpoints = cluster.endpoints();
    let a = lease(&endpoints[0], 3).await;
    let b = lease(&endpoints[1], 600).await;
    let mut e0 = ElectionClient::connect(endpoints[0].clone()).await.unwrap();
    let req = |lease: i64, value: &str| CampaignRequest {
        name: b"svc".to_vec().into(),
        lease,
        value: value.as_bytes().to_vec().into(),
    };
    e0.campaign(req(a, "a")).await.unwrap();
    let mut e1 = ElectionClient::connect(endpoints[1].clone()).await.unwrap();
    let waiter = tokio::spawn(async move { e1.campaign(req(b, "b")).await });
    tokio::time::sleep(BLOCKED).await;
    assert!(!waiter.is_finished());
    tokio::task::block_in_place(|| cluster.members[0].kill9());
    let won = tokio::time::timeout(HANDOVER, waiter)
        .await
        .expect("the candidate leads once the dead leader's lease expires")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(won.leader.unwrap().lease, b);
    let mut e2 = ElectionClient::connect(endpoints[2].clone()).await.unwrap();
    let leader = e2
        .leader(LeaderRequest {
            name: b"svc".to_vec().into(),
        })
        .await
        .unwrap();
    assert_eq!(leader.into_inner().kv.unwrap().value, "b".as_bytes());
}
