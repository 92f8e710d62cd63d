//! Alarms and integrity on 3-member Cairn clusters: a NOSPACE alarm raised by one member stops puts
//! everywhere and survives restarts; a member whose data was altered on disk is refused at start by
//! `--experimental-initial-corrupt-check` and marked CORRUPT by the leader's periodic check;
//! periodic auto compaction compacts on its own; defragment runs under writes.

mod common;

use std::time::Duration;

use cairn_proto::mvccpb::KeyValue;
use cairn_server::engine::{Cf, Durability, Engine};
use cairn_server::mvcc::codec;
use common::{http_get, json_number, run_etcdctl, wait_for, Cluster, Kind, Member};
use prost::Message;

fn ok(endpoint: &str, args: &str) -> String {
    let out = run_etcdctl(endpoint, args);
    assert!(out.starts_with("exit Some(0)"), "etcdctl {args}: {out}");
    out
}

/// (member id, leader id) as `endpoint status` reports them.
fn status_ids(endpoint: &str) -> (u64, u64) {
    let out = ok(endpoint, "endpoint status -w json");
    (json_number(&out, "member_id"), json_number(&out, "leader"))
}

/// Rewrites the value of `key` in a stopped member's database, as silent disk corruption would.
fn alter_value(data_dir: &std::path::Path, key: &[u8]) {
    let engine = Engine::open(&data_dir.join("member").join("rocksdb")).unwrap();
    let stored = engine
        .get(Cf::KvLatest, key)
        .unwrap()
        .expect("the key exists");
    let mut kv = KeyValue::decode(stored.as_slice()).unwrap();
    kv.value = b"bit rot".to_vec().into();
    let mut batch = engine.batch();
    batch.put(Cf::KvLatest, key, &kv.encode_to_vec());
    let history = codec::history_key(key, kv.mod_revision);
    batch.put(Cf::KvHistory, &history, &kv.encode_to_vec());
    engine.write(batch, Durability::Sync).unwrap();
}

#[test]
fn corruption_is_refused_at_start_and_raised_by_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(
        Kind::Cairn,
        3,
        dir.path(),
        &["--experimental-corrupt-check-time=500ms"],
    );
    let endpoints = cluster.endpoints();
    for i in 0..20 {
        ok(&endpoints[0], &format!("put k{i} v{i}"));
    }
    // Every member has applied the puts once each answers a linearizable read at the last revision.
    for ep in &endpoints {
        ok(ep, "get k19");
    }
    let (_, leader) = status_ids(&endpoints[0]);
    let victim = (0..3)
        .find(|&i| status_ids(&endpoints[i]).0 != leader)
        .expect("a follower");
    let victim_id = status_ids(&endpoints[victim]).0;
    let m = &mut cluster.members[victim];
    assert!(m.terminate().success());
    alter_value(&m.data_dir, b"k7");

    m.extra_args
        .push("--experimental-initial-corrupt-check".into());
    m.spawn_process();
    wait_for(
        "the corrupt member to refuse to start",
        Duration::from_secs(30),
        || (!m.is_running()).then_some(()),
    );
    assert!(
        m.log().contains("found data inconsistency with peers"),
        "{}",
        m.log()
    );

    // Without the start check it serves, until the leader's check raises CORRUPT (then /health
    // is false: no waiting for it).
    m.extra_args.pop();
    m.spawn_process();
    let alarm = format!("memberID:{victim_id} alarm:CORRUPT");
    wait_for(
        "the leader to raise CORRUPT",
        Duration::from_secs(30),
        || {
            run_etcdctl(&endpoints[0], "alarm list")
                .contains(&alarm)
                .then_some(())
        },
    );
    let refused = run_etcdctl(&endpoints[0], "put k1 again");
    assert!(refused.contains("etcdserver: corrupt cluster"), "{refused}");
    ok(&endpoints[0], "get k1");
    let (code, body) = http_get(&cluster.members[0].addr(), "/readyz?verbose").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("[-]data_corruption failed: alarm activated: CORRUPT"),
        "{body}"
    );
    let (code, body) = http_get(&cluster.members[0].addr(), "/health").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ALARM CORRUPT"), "{body}");
}

#[test]
fn nospace_raised_by_one_member_refuses_puts_everywhere_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &[]);
    let endpoints = cluster.endpoints();
    ok(&endpoints[1], "put a b");
    // Only member 0 has a quota it cannot meet.
    cluster.members[0]
        .extra_args
        .push("--quota-backend-bytes=1".into());
    cluster.members[0].restart();
    let refused = run_etcdctl(&endpoints[0], "put a b");
    assert!(
        refused.contains("etcdserver: mvcc: database space exceeded"),
        "{refused}"
    );
    let (id0, _) = status_ids(&endpoints[0]);
    let alarm = format!("memberID:{id0} alarm:NOSPACE");
    for ep in &endpoints {
        assert!(ok(ep, "alarm list").contains(&alarm));
    }
    // Member 1's quota is fine: the alarm, applied everywhere, refuses its put.
    let refused = run_etcdctl(&endpoints[1], "put a c");
    assert!(
        refused.contains("etcdserver: mvcc: database space exceeded"),
        "{refused}"
    );
    ok(&endpoints[1], "del a");
    // With an alarm raised, /health is false: wait for the alarm list instead.
    cluster.members[2].kill9();
    cluster.members[2].spawn_process();
    wait_for(
        "the restarted member to list the alarm",
        Duration::from_secs(30),
        || {
            run_etcdctl(&endpoints[2], "alarm list")
                .contains(&alarm)
                .then_some(())
        },
    );
    let status = ok(&endpoints[2], "endpoint status -w json");
    assert!(status.contains(&format!("{alarm} ")), "{status}");
}

#[test]
fn periodic_auto_compaction_compacts_old_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(
        Kind::Cairn,
        &dir.path().join("m"),
        &[
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=2s",
        ],
    );
    let ep = m.endpoint();
    ok(&ep, "put a 1");
    ok(&ep, "put a 2");
    wait_for("an automatic compaction", Duration::from_secs(20), || {
        ok(&ep, "put a 3");
        let out = run_etcdctl(&ep, "get a --rev=2");
        out.contains("required revision has been compacted")
            .then_some(())
    });
    ok(&ep, "get a");
}

#[test]
fn defragment_runs_under_writes_without_losing_any() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(Kind::Cairn, &dir.path().join("m"), &[]);
    let ep = m.endpoint();
    for i in 0..200 {
        ok(&ep, &format!("put old{i} {i}"));
    }
    ok(&ep, "del old --prefix");
    let writer = {
        let ep = ep.clone();
        std::thread::spawn(move || {
            for i in 0..40 {
                ok(&ep, &format!("put new{i} {i}"));
            }
        })
    };
    for _ in 0..3 {
        let out = ok(&ep, "defrag");
        assert!(out.contains("Finished defragmenting etcd member"), "{out}");
    }
    writer.join().unwrap();
    let keys = |prefix: &str| {
        let out = ok(&ep, &format!("get {prefix} --prefix --keys-only"));
        out.lines().skip(1).filter(|l| !l.is_empty()).count()
    };
    assert_eq!(keys("new"), 40);
    assert_eq!(keys("old"), 0);
}
