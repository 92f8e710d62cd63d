//! Auth on a 3-member Cairn cluster: a token issued by one member works on every member and
//! survives a leader change; a revoked role is refused at once on every member, even to a reader
//! on another member and to a writer under load; a restarted member keeps users and roles.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{http_post_as, json_number, run_etcdctl, wait_for, Cluster, Kind};

fn ok(endpoint: &str, args: &str) -> String {
    let out = run_etcdctl(endpoint, args);
    assert!(out.starts_with("exit Some(0)"), "etcdctl {args}: {out}");
    out
}

/// A gateway login on `addr`; the token.
fn login(addr: &str, user: &str, password: &str) -> String {
    let body = format!(r#"{{"name":"{user}","password":"{password}"}}"#);
    let (code, resp) = http_post_as(addr, "/v3/auth/authenticate", &body, None, None).unwrap();
    assert_eq!(code, 200, "{resp}");
    resp.split("\"token\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_string()
}

/// A gateway put of key `/a/1` with `token`; (HTTP status, body).
fn put_with(addr: &str, token: &str) -> (u16, String) {
    let body = r#"{"key":"L2EvMQ==","value":"dg=="}"#;
    http_post_as(addr, "/v3/kv/put", body, None, Some(token)).unwrap()
}

/// `field` of `endpoint status`, in hex (`leader`, `member_id`).
fn status_id(endpoint: &str, field: &str) -> String {
    let out = ok(endpoint, "--user=root:rootpw endpoint status -w json");
    format!("{:x}", json_number(&out, field))
}

#[test]
fn tokens_work_everywhere_and_revocations_take_effect_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &["--bcrypt-cost=4"]);
    let eps = cluster.endpoints();
    for args in [
        "user add root --new-user-password=rootpw",
        "user add alice --new-user-password=alicepw",
        "role add a",
        "role grant-permission a readwrite /a/ --prefix",
        "user grant-role alice a",
        "auth enable",
    ] {
        ok(&eps[0], args);
    }

    // A token from member 0 works on every member.
    let token = login(&cluster.members[0].addr(), "alice", "alicepw");
    for m in &cluster.members {
        let (code, body) = put_with(&m.addr(), &token);
        assert_eq!(code, 200, "{body}");
    }

    // It survives a leader change.
    let leader = status_id(&eps[0], "leader");
    let target_id = eps
        .iter()
        .map(|ep| status_id(ep, "member_id"))
        .find(|id| *id != leader)
        .unwrap();
    let all = eps.join(",");
    ok(&all, &format!("--user=root:rootpw move-leader {target_id}"));
    assert_eq!(status_id(&eps[0], "leader"), target_id);
    for m in &cluster.members {
        let (code, body) = put_with(&m.addr(), &token);
        assert_eq!(code, 200, "{body}");
    }

    // A writer keeps writing through member 1 while the role is revoked through member 0.
    let stop = Arc::new(AtomicBool::new(false));
    let refused_after = Arc::new(AtomicUsize::new(0));
    let revoked = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, refused_after, revoked) = (stop.clone(), refused_after.clone(), revoked.clone());
        let addr = cluster.members[1].addr();
        let token = token.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let was_revoked = revoked.load(Ordering::SeqCst);
                let (code, body) = put_with(&addr, &token);
                if was_revoked {
                    // Once the revoke was acknowledged, no put may pass.
                    assert_ne!(code, 200, "a put passed after the revoke: {body}");
                    refused_after.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    ok(&eps[0], "--user=root:rootpw user revoke-role alice a");
    revoked.store(true, Ordering::SeqCst);
    // Reads right away, on the other members, are refused too.
    for ep in &eps[1..] {
        let out = run_etcdctl(ep, "--user=alice:alicepw get /a/1");
        assert!(out.contains("etcdserver: permission denied"), "{ep}: {out}");
    }
    wait_for("refused puts", Duration::from_secs(10), || {
        (refused_after.load(Ordering::SeqCst) >= 3).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    // Users and roles survive a restart; the restarted member's tokens do not (as in etcd).
    cluster.members[2].restart();
    let (code, body) = put_with(&cluster.members[2].addr(), &token);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("invalid auth token"), "{body}");
    let out = ok(&eps[2], "--user=root:rootpw user get alice");
    assert!(out.contains("Roles:"), "{out}");
    ok(&eps[2], "--user=root:rootpw user grant-role alice a");
    ok(&eps[2], "--user=alice:alicepw put /a/2 v");
}
