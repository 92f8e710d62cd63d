//! Integration tests of replication: real 3- and 5-member `cairn` clusters on loopback, killed,
//! paused, grown and shrunk while clients write; every acknowledged write must survive.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_client::proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_client::proto::etcdserverpb::lease_client::LeaseClient;
use cairn_client::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_client::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseLeasesRequest, LeaseRevokeRequest, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest, MoveLeaderRequest, PutRequest,
    RangeRequest, StatusRequest, StatusResponse,
};
use cairn_client::Client;
use common::{http_get, wait_for, Cluster, Kind, Member};
use tonic::transport::Channel;
use tonic::Code;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .unwrap()
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .unwrap()
}

async fn status(endpoint: &str) -> Option<StatusResponse> {
    let ch = Channel::from_shared(endpoint.to_string())
        .ok()?
        .timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    let resp = MaintenanceClient::new(ch)
        .status(StatusRequest {})
        .await
        .ok()?;
    Some(resp.into_inner())
}

/// The leader's member id as every endpoint in `endpoints` agrees on, waiting up to `timeout`.
async fn agreed_leader(endpoints: &[String], timeout: Duration) -> u64 {
    agreed_leader_other_than(endpoints, 0, timeout).await
}

/// Like [`agreed_leader`], for a leader other than `old` (which was just lost).
async fn agreed_leader_other_than(endpoints: &[String], old: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut leaders = vec![];
        for e in endpoints {
            if let Some(s) = status(e).await {
                leaders.push(s.leader);
            }
        }
        if leaders.len() == endpoints.len()
            && leaders[0] != 0
            && leaders[0] != old
            && leaders.iter().all(|&l| l == leaders[0])
        {
            return leaders[0];
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader among {endpoints:?}: {leaders:x?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Index of the member whose id is `id`.
async fn index_of(cluster: &Cluster, id: u64) -> usize {
    for (i, m) in cluster.members.iter().enumerate() {
        if let Some(s) = status(&m.endpoint()).await {
            if s.header.unwrap().member_id == id {
                return i;
            }
        }
    }
    panic!("no member has id {id:x}");
}

/// Puts `count` keys `prefix/i` through `endpoint` from `parallel` tasks; returns the acknowledged
/// keys (a failed put is left out: it may or may not have happened).
async fn put_many(endpoint: &str, prefix: &str, count: usize, parallel: usize) -> Vec<String> {
    let mut tasks = vec![];
    for t in 0..parallel {
        let endpoint = endpoint.to_string();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = vec![];
            let Ok(mut c) = Client::connect(endpoint).await else {
                return acked;
            };
            for i in (t..count).step_by(parallel) {
                let key = format!("{prefix}/{i:06}");
                if c.put(key.clone(), "v").await.is_ok() {
                    acked.push(key);
                }
            }
            acked
        }));
    }
    let mut acked = vec![];
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked
}

/// Every key of `prefix` as a serializable (local) read on `endpoint` sees it.
async fn local_keys(endpoint: &str, prefix: &str) -> Vec<String> {
    let mut c = Client::connect(endpoint.to_string()).await.unwrap();
    let resp = c
        .range(RangeRequest {
            key: format!("{prefix}/").into_bytes().into(),
            range_end: format!("{prefix}0").into_bytes().into(),
            serializable: true,
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect()
}

/// Waits until a serializable read on `endpoint` has every key of `expected`.
async fn converged(endpoint: &str, prefix: &str, expected: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = local_keys(endpoint, prefix).await;
        let missing: Vec<&String> = expected.iter().filter(|k| !have.contains(k)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} misses {} acknowledged keys, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_serve_everywhere_and_survive_losing_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &[]);
    let endpoints = cluster.endpoints();
    let leader = agreed_leader(&endpoints, Duration::from_secs(10)).await;
    let li = index_of(&cluster, leader).await;
    let follower = &endpoints[(li + 1) % 3];

    // A write through a follower reaches the leader; a linearizable read anywhere sees it.
    let mut c = Client::connect(follower.clone()).await.unwrap();
    let put = c.put("k", "v1").await.unwrap();
    for e in &endpoints {
        let mut c = Client::connect(e.clone()).await.unwrap();
        let kv = c
            .get("k")
            .await
            .unwrap()
            .expect("linearizable read sees the write");
        assert_eq!(kv.mod_revision, put.header.as_ref().unwrap().revision);
    }

    // Every member reports the same leader, term and its own id.
    let mut ids = vec![];
    for e in &endpoints {
        let s = status(e).await.unwrap();
        assert_eq!(s.leader, leader);
        assert!(s.raft_applied_index > 0 && s.raft_index >= s.raft_applied_index);
        assert!(!s.is_learner);
        ids.push(s.header.unwrap().member_id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);

    // Kill the leader while clients write through a follower; count the failover.
    let writer = {
        let follower = follower.clone();
        tokio::spawn(async move { put_many(&follower, "fo", 600, 8).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed_at = Instant::now();
    cluster.members[li].kill9();
    let survivors: Vec<String> = endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, e)| e.clone())
        .collect();
    let new_leader = agreed_leader_other_than(&survivors, leader, Duration::from_secs(10)).await;
    let failover = killed_at.elapsed();
    println!("leader failover (election timeout 1000 ms): {failover:?}");
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 300,
        "writes continue after failover: {} of 600",
        acked.len()
    );

    // The old leader comes back as a follower and has every acknowledged write.
    cluster.members[li].restart();
    for e in &endpoints {
        converged(e, "fo", &acked).await;
    }
    assert_eq!(
        agreed_leader(&endpoints, Duration::from_secs(10)).await,
        new_leader
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_down_past_the_snapshot_threshold_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &["--snapshot-count", "100"]);
    let endpoints = cluster.endpoints();
    let leader = agreed_leader(&endpoints, Duration::from_secs(10)).await;
    let li = index_of(&cluster, leader).await;
    let fi = (li + 1) % 3;
    cluster.members[fi].kill9();

    // More than snapshot-count plus the 5000 entries kept for slow followers: the log is truncated
    // past where the stopped follower is.
    let acked = put_many(&endpoints[li], "snap", 5600, 32).await;
    assert_eq!(acked.len(), 5600);
    let mut c = Client::connect(endpoints[li].clone()).await.unwrap();
    c.put("after", "x").await.unwrap();
    // A lease and its key travel in the snapshot too.
    let mut leases = LeaseClient::new(channel(&endpoints[li]).await);
    let grant = LeaseGrantRequest { ttl: 600, id: 77 };
    leases.lease_grant(grant).await.unwrap();
    let leased = PutRequest {
        key: "leased/k".into(),
        lease: 77,
        ..PutRequest::default()
    };
    c.put_request(leased).await.unwrap();

    let started = Instant::now();
    cluster.members[fi].restart();
    converged(&endpoints[fi], "snap", &acked).await;
    println!("catch-up by snapshot of 5600 keys: {:?}", started.elapsed());
    let log = cluster.members[fi].log();
    assert!(
        log.contains("snapshot installed"),
        "the follower installed a snapshot"
    );
    // And it keeps following the log after the snapshot.
    c.put("snap/later", "y").await.unwrap();
    converged(&endpoints[fi], "snap", &["snap/later".to_string()]).await;
    converged(&endpoints[fi], "leased", &["leased/k".to_string()]).await;
    let mut follower_leases = LeaseClient::new(channel(&endpoints[fi]).await);
    let listed = follower_leases.lease_leases(LeaseLeasesRequest {}).await;
    assert_eq!(listed.unwrap().into_inner().leases.len(), 1);
    leases
        .lease_revoke(LeaseRevokeRequest { id: 77 })
        .await
        .unwrap();
    wait_for_async(
        "the revoke to delete the key on the follower",
        Duration::from_secs(10),
        || async { local_keys(&endpoints[fi], "leased").await.is_empty() },
    )
    .await;
    let local = status(&endpoints[fi]).await.unwrap();
    assert_eq!(local.leader, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minority_refuses_requests_and_the_cluster_heals() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &[]);
    let endpoints = cluster.endpoints();
    let leader = agreed_leader(&endpoints, Duration::from_secs(10)).await;
    let li = index_of(&cluster, leader).await;
    // Pause both followers: the leader is alone (a minority of one) and steps down (check quorum).
    let followers: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    for &i in &followers {
        cluster.members[i].signal("STOP");
    }
    let lone = &endpoints[li];
    wait_for_async(
        "the isolated leader to step down",
        Duration::from_secs(10),
        || async { status(lone).await.is_some_and(|s| s.leader == 0) },
    )
    .await;
    let mut c = Client::connect(lone.clone()).await.unwrap();
    let err = c.put("minority", "x").await.unwrap_err();
    assert!(
        matches!(&err, cairn_client::Error::Status(s) if s.code() == Code::Unavailable),
        "{err}"
    );
    let err = c.get("minority").await.unwrap_err();
    assert!(
        matches!(&err, cairn_client::Error::Status(s) if s.code() == Code::Unavailable),
        "{err}"
    );
    // `hasleader` fails at once instead of timing out.
    let mut kv = cairn_client::proto::etcdserverpb::kv_client::KvClient::new(channel(lone).await);
    let mut req = tonic::Request::new(RangeRequest {
        key: b"minority".to_vec().into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("hasleader", "true".parse().unwrap());
    let err = kv.range(req).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unavailable, "etcdserver: no leader")
    );
    // Still live (local reads work), not ready (no linearizable read).
    let addr = cluster.members[li].addr();
    let (code, body) = http_get(&addr, "/livez").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http_get(&addr, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("[-]linearizable_read failed: "), "{body}");
    assert!(body.contains("[+]serializable_read ok\n") && body.ends_with("/readyz check failed\n"));
    let (code, _) = http_get(&addr, "/readyz?exclude=linearizable_read").unwrap();
    assert_eq!(code, 200);

    for &i in &followers {
        cluster.members[i].signal("CONT");
    }
    agreed_leader(&endpoints, Duration::from_secs(15)).await;
    let mut c = Client::connect(lone.clone()).await.unwrap();
    c.put("healed", "y").await.unwrap();
    for e in &endpoints {
        let mut c = Client::connect(e.clone()).await.unwrap();
        assert!(c.get("healed").await.unwrap().is_some());
        assert!(
            c.get("minority").await.unwrap().is_none(),
            "the refused write never happened"
        );
    }
}

async fn wait_for_async<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// MoveLeader right after a membership change: the target may still have the change to apply when
/// the transfer reaches it (raft then refuses to campaign); the transfer is asked again and lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_moves_right_after_membership_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &[]);
    let endpoints = cluster.endpoints();
    for round in 0..3 {
        let leader = agreed_leader(&endpoints, Duration::from_secs(10)).await;
        let li = index_of(&cluster, leader).await;
        let members = ClusterClient::new(channel(&endpoints[li]).await);
        let add = MemberAddRequest {
            peer_ur_ls: vec![format!("http://127.0.0.1:{}", common::free_port())],
            is_learner: true,
        };
        let added = while_unhealthy(|| {
            let (mut members, add) = (members.clone(), add.clone());
            async move { members.member_add(add).await }
        })
        .await;
        let id = added.member.unwrap().id;
        while_unhealthy(|| {
            let mut members = members.clone();
            async move { members.member_remove(MemberRemoveRequest { id }).await }
        })
        .await;
        let ti = (li + 1) % 3;
        let target = status(&endpoints[ti])
            .await
            .unwrap()
            .header
            .unwrap()
            .member_id;
        let mut maint = MaintenanceClient::new(channel(&endpoints[li]).await);
        let moved = maint
            .move_leader(MoveLeaderRequest { target_id: target })
            .await;
        assert!(moved.is_ok(), "round {round}: {moved:?}");
        assert_eq!(
            agreed_leader(&endpoints, Duration::from_secs(10)).await,
            target
        );
    }
}

/// Retries a membership change while the cluster answers etcd's "unhealthy cluster" (voters
/// connected for less than 5 s, or a member just lost), as an operator would.
async fn while_unhealthy<T, F, Fut>(mut change: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match change().await {
            Ok(r) => return r.into_inner(),
            Err(e)
                if e.message() == "etcdserver: unhealthy cluster" && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("membership change failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_are_added_promoted_updated_and_removed_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &[]);
    let endpoints = cluster.endpoints();
    let leader = agreed_leader(&endpoints, Duration::from_secs(10)).await;
    let li = index_of(&cluster, leader).await;
    let mut members = ClusterClient::new(channel(&endpoints[li]).await);

    let load = {
        let e = endpoints[(li + 1) % 3].clone();
        tokio::spawn(async move { put_many(&e, "load", 3000, 4).await })
    };

    // Add m4 as a learner, start it with --initial-cluster-state existing. Like etcd, a cluster
    // refuses changes until its voters have been connected for 5 s ("unhealthy cluster").
    let mut m4 = Member::new(Kind::Cairn, "m4", &dir.path().join("m4"), &[]);
    let add = MemberAddRequest {
        peer_ur_ls: vec![m4.peer_url()],
        is_learner: true,
    };
    let added = while_unhealthy(|| {
        let mut members = members.clone();
        let add = add.clone();
        async move { members.member_add(add).await }
    })
    .await;
    let new = added.member.unwrap();
    assert!(new.is_learner && new.name.is_empty() && new.client_ur_ls.is_empty());
    assert_eq!(added.members.len(), 4);
    // A second learner is refused (etcd allows one).
    let err = members
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:1".into()],
            is_learner: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "etcdserver: too many learner members in cluster"
    );
    let err = members
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![m4.peer_url()],
            is_learner: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: Peer URLs already exists");

    m4.initial_cluster = cluster.initial_cluster_with(&m4);
    m4.initial_cluster_state = "existing".into();
    m4.spawn_process();
    m4.wait_healthy();
    let learner_status = status(&m4.endpoint()).await.unwrap();
    assert!(learner_status.is_learner);
    assert_eq!(learner_status.header.unwrap().member_id, new.id);

    // Promote once it has caught up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match members
            .member_promote(MemberPromoteRequest { id: new.id })
            .await
        {
            Ok(r) => {
                let after = r.into_inner().members;
                assert!(after.iter().all(|m| !m.is_learner));
                break;
            }
            Err(e) if e.message().contains("in sync with leader") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("promote failed: {e}"),
        }
    }
    let err = members
        .member_promote(MemberPromoteRequest { id: new.id })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "etcdserver: can only promote a learner member"
    );

    // The new member's name and client URLs were published.
    let list = members
        .member_list(MemberListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let m4_listed = list.members.iter().find(|m| m.id == new.id).unwrap();
    assert_eq!(m4_listed.name, "m4");
    assert_eq!(m4_listed.client_ur_ls, vec![m4.endpoint()]);

    // Update a member's peer URLs to the same value (a no-op change that still goes through raft).
    let victim = (li + 2) % 3;
    let victim_id = status(&endpoints[victim])
        .await
        .unwrap()
        .header
        .unwrap()
        .member_id;
    members
        .member_update(MemberUpdateRequest {
            id: victim_id,
            peer_ur_ls: vec![cluster.members[victim].peer_url()],
        })
        .await
        .unwrap();

    // Remove a follower: it stops by itself; the rest keep serving.
    let after = members
        .member_remove(MemberRemoveRequest { id: victim_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.members.len(), 3);
    wait_for(
        "the removed member to stop",
        Duration::from_secs(15),
        || (!cluster.members[victim].is_running()).then_some(()),
    );
    let err = members
        .member_remove(MemberRemoveRequest { id: victim_id })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "etcdserver: member not found")
    );

    let acked = load.await.unwrap();
    assert!(acked.len() > 2000, "writes continued: {}", acked.len());
    let remaining: Vec<String> = endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, e)| e.clone())
        .chain(std::iter::once(m4.endpoint()))
        .collect();
    for e in &remaining {
        converged(e, "load", &acked).await;
    }
    agreed_leader(&remaining, Duration::from_secs(10)).await;

    // A member removed while it was down learns it from its peers when it comes back, and stops.
    m4.kill9();
    let after = while_unhealthy(|| {
        let mut members = members.clone();
        async move {
            members
                .member_remove(MemberRemoveRequest { id: new.id })
                .await
        }
    })
    .await;
    assert_eq!(after.members.len(), 2);
    m4.spawn_process();
    wait_for(
        "the member removed while down to stop",
        Duration::from_secs(15),
        || (!m4.is_running()).then_some(()),
    );
    let two: Vec<String> = remaining[..2].to_vec();
    agreed_leader(&two, Duration::from_secs(10)).await;
    let mut c = Client::connect(two[0].clone()).await.unwrap();
    c.put("two", "left").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_survive_two_failures_move_leader_and_restart_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(Kind::Cairn, 5, dir.path(), &[]);
    let endpoints = cluster.endpoints();
    let leader = agreed_leader(&endpoints, Duration::from_secs(10)).await;
    let li = index_of(&cluster, leader).await;

    // MoveLeader: only the leader hands over, only to a voter.
    let target_i = (li + 1) % 5;
    let target = status(&endpoints[target_i])
        .await
        .unwrap()
        .header
        .unwrap()
        .member_id;
    let mut follower_maint = MaintenanceClient::new(channel(&endpoints[target_i]).await);
    let err = follower_maint
        .move_leader(MoveLeaderRequest { target_id: leader })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: not leader");
    let mut maint = MaintenanceClient::new(channel(&endpoints[li]).await);
    let err = maint
        .move_leader(MoveLeaderRequest { target_id: 42 })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: bad leader transferee");
    maint
        .move_leader(MoveLeaderRequest { target_id: target })
        .await
        .unwrap();
    assert_eq!(
        agreed_leader(&endpoints, Duration::from_secs(10)).await,
        target
    );

    // Lose two of five (including the leader): the other three carry on.
    let down = [target_i, (target_i + 1) % 5];
    for &i in &down {
        cluster.members[i].kill9();
    }
    let up: Vec<String> = (0..5)
        .filter(|i| !down.contains(i))
        .map(|i| endpoints[i].clone())
        .collect();
    agreed_leader_other_than(&up, target, Duration::from_secs(10)).await;
    let acked = put_many(&up[0], "five", 300, 4).await;
    assert_eq!(acked.len(), 300);

    // Whole-cluster restart: everything comes back, with every acknowledged write.
    for m in &mut cluster.members {
        m.kill9();
    }
    for m in &mut cluster.members {
        m.spawn_process();
    }
    for m in &mut cluster.members {
        m.wait_healthy();
    }
    agreed_leader(&endpoints, Duration::from_secs(10)).await;
    let mut revisions = BTreeMap::new();
    for e in &endpoints {
        converged(e, "five", &acked).await;
        let mut c = Client::connect(e.clone()).await.unwrap();
        let r = c.get_prefix("five/").await.unwrap();
        revisions.insert(e.clone(), (r.count, r.header.unwrap().revision));
    }
    let first = *revisions.values().next().unwrap();
    assert!(
        revisions.values().all(|v| *v == first),
        "members agree: {revisions:?}"
    );

    // SIGTERM stops a member cleanly while its peers keep their streams to it open.
    let exit = cluster.members[0].terminate();
    assert!(exit.success(), "{exit}");
}
