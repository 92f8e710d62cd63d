//! Cluster and Maintenance against a 3-member Cairn and etcd: membership, status, leader
//! transfer, hashes, defragmentation, alarms, snapshot.

mod common;

use std::time::Duration;

use cairn_client::{Error, PutOptions};
use common::{Backend, Cluster};

async fn cluster_and_maintenance(backend: Backend) {
    let Some(cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;
    let members = client.cluster().member_list().await.unwrap().members;
    assert_eq!(members.len(), 3);

    // A learner can be added and removed without starting it. (The client retries the add
    // while the fresh cluster answers "unhealthy cluster": that is refused before proposing.)
    let learner_url = format!("http://127.0.0.1:{}", common::free_port());
    let added = client
        .cluster()
        .member_add_learner(vec![learner_url.clone()])
        .await
        .unwrap();
    let id = added.member.unwrap().id;
    for e in cluster.endpoints() {
        common::eventually(
            "every member to see the learner",
            Duration::from_secs(10),
            || {
                let e = e.clone();
                async move {
                    let mut c = cairn_client::Client::connect(e).await.unwrap();
                    c.member_list()
                        .await
                        .unwrap()
                        .members
                        .iter()
                        .any(|m| m.id == id)
                }
            },
        )
        .await;
    }
    let err = client
        .cluster()
        .member_add_learner(vec![learner_url])
        .await
        .unwrap_err();
    // etcd checks the new member's id (peer URLs and the current second) before the URLs, so
    // within the same second it says "member ID already exist".
    assert!(
        matches!(err, Error::PeerUrlExists | Error::MemberExists),
        "{backend:?}: {err:?}"
    );
    // A change proposed while raft still applies the previous one is dropped by raft and
    // times out (etcd and Cairn alike): an unknown outcome, so the client does not retry it.
    loop {
        match client.cluster().member_remove(id).await {
            Ok(_) | Err(Error::MemberNotFound) => break,
            Err(e) if e.is_unavailable() => println!("{backend:?}: remove: {e}"),
            Err(e) => panic!("{backend:?}: remove: {e:?}"),
        }
    }
    let err = client.cluster().member_remove(id).await.unwrap_err();
    assert!(matches!(err, Error::MemberNotFound), "{backend:?}: {err:?}");

    // Status of each member, the leader found through it, and a leader transfer.
    let maintenance = client.maintenance();
    let leader = maintenance.leader_endpoint().await.unwrap();
    let leader_status = maintenance.status_of(&leader).await.unwrap();
    let target = members
        .iter()
        .find(|m| m.id != leader_status.leader)
        .unwrap()
        .id;
    let mut tries = 0;
    while let Err(e) = maintenance.move_leader(target).await {
        // "leader transfer took too long" (Unavailable) when the target lags: try again.
        tries += 1;
        assert!(
            e.is_unavailable() && tries < 3,
            "{backend:?}: move_leader: {e:?}"
        );
        println!("{backend:?}: move_leader: {e}");
    }
    common::eventually("the leadership to move", Duration::from_secs(10), || {
        let m = maintenance.clone();
        async move { m.status().await.is_ok_and(|s| s.leader == target) }
    })
    .await;

    // Every member has the same data at the same revision.
    let rev = client
        .kv()
        .put("h", "1", PutOptions::new())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let mut hashes = Vec::new();
    for e in cluster.endpoints() {
        maintenance.defragment_of(&e).await.unwrap();
        let h = loop {
            match maintenance.hash_kv_of(&e, rev).await {
                Ok(h) => break Some(h.hash),
                Err(Error::Unimplemented(m)) => {
                    println!("{backend:?}: {m}");
                    break None;
                }
                // A member that has not applied `rev` yet.
                Err(Error::FutureRevision) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(err) => panic!("{backend:?}: hash_kv of {e}: {err:?}"),
            }
        };
        hashes.extend(h);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    assert!(maintenance.alarms().await.unwrap().is_empty());

    let mut snapshot = Vec::new();
    match maintenance.snapshot(&mut snapshot).await {
        Ok(n) => assert!(n > 0 && n as usize == snapshot.len()),
        Err(Error::Unimplemented(m)) => println!("{backend:?}: snapshot not served: {m}"),
        Err(e) => panic!("{backend:?}: snapshot: {e:?}"),
    }
}

per_backend!(
    cairn_cluster_and_maintenance,
    etcd_cluster_and_maintenance,
    cluster_and_maintenance
);
