//! JWT auth tokens (`--auth-token jwt,...`) on 3-member Cairn clusters, and against etcd 3.4.23:
//! etcdctl logs in with `--user`; a token issued by one member works on every member; a change of
//! the auth state makes older tokens refused (`revision of auth store is old`) until the client logs
//! in again; tokens expire after their TTL; a member with only the public key verifies tokens but
//! refuses logins; the errors match etcd's byte for byte.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{http_post_as, run_etcdctl, wait_for, Cluster, Kind, Member};

const ROOT: &str = "--user=root:rootpw";

/// Writes `<name>.pem` and `<name>.pub` into `dir` with `openssl <args>`; their paths.
fn keys(dir: &Path, name: &str, args: &[&str]) -> (String, String) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub"));
    let run = |args: &[&str], out: &Path| {
        let status = Command::new("openssl")
            .arg(args[0])
            .arg("-out")
            .arg(out)
            .args(&args[1..])
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    run(args, &private);
    let private = private.display().to_string();
    run(&["pkey", "-in", &private, "-pubout"], &public);
    (private, public.display().to_string())
}

fn rsa_keys(dir: &Path) -> (String, String) {
    keys(dir, "rsa", &["genrsa", "2048"])
}

fn ec_keys(dir: &Path) -> (String, String) {
    keys(
        dir,
        "ec",
        &["ecparam", "-genkey", "-name", "prime256v1", "-noout"],
    )
}

fn ok(endpoint: &str, args: &str) -> String {
    let out = run_etcdctl(endpoint, args);
    assert!(out.starts_with("exit Some(0)"), "etcdctl {args}: {out}");
    out
}

/// A gateway login on `addr`: (HTTP status, body).
fn login(addr: &str, user: &str, password: &str) -> (u16, String) {
    let body = format!(r#"{{"name":"{user}","password":"{password}"}}"#);
    http_post_as(addr, "/v3/auth/authenticate", &body, None, None).expect("gateway answers")
}

fn token_of(login: (u16, String)) -> String {
    assert_eq!(login.0, 200, "{}", login.1);
    login
        .1
        .split("\"token\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("a token")
        .to_string()
}

/// A gateway range of `foo` with `token`: (HTTP status, body).
fn get_with(addr: &str, token: &str) -> (u16, String) {
    let body = r#"{"key":"Zm9v"}"#;
    http_post_as(addr, "/v3/kv/range", body, None, Some(token)).expect("gateway answers")
}

/// Creates root, enables auth and writes `foo`.
fn enable_auth(endpoint: &str) {
    ok(endpoint, "user add root --new-user-password=rootpw");
    ok(endpoint, "auth enable");
    ok(endpoint, &format!("{ROOT} put foo bar"));
}

const OLD_REVISION: &str = "etcdserver: revision of auth store is old";
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";

#[test]
fn rs256_tokens_work_on_every_member_and_go_stale_with_the_auth_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_keys(dir.path());
    let flag = format!("--auth-token=jwt,pub-key={public},priv-key={private},sign-method=RS256");
    let cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &["--bcrypt-cost=4", &flag]);
    let eps = cluster.endpoints();
    enable_auth(&eps[0]);
    for ep in &eps {
        let out = ok(ep, &format!("{ROOT} get foo"));
        assert!(out.ends_with("foo\nbar\n"), "{out}");
    }

    let token = token_of(login(&cluster.members[0].addr(), "root", "rootpw"));
    for m in &cluster.members {
        let (code, body) = get_with(&m.addr(), &token);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""value":"YmFy""#), "{body}");
    }

    // A change of the auth state: the old token is refused on every member, a new one works.
    ok(
        &eps[1],
        &format!("{ROOT} user add bob --new-user-password=bobpw"),
    );
    for m in &cluster.members {
        let refused = wait_for("the new auth revision", Duration::from_secs(10), || {
            let (code, body) = get_with(&m.addr(), &token);
            (code != 200).then_some((code, body))
        });
        assert_eq!(refused.0, 400, "{}", refused.1);
        assert!(refused.1.contains(OLD_REVISION), "{}", refused.1);
    }
    let fresh = token_of(login(&cluster.members[2].addr(), "root", "rootpw"));
    assert_eq!(get_with(&cluster.members[0].addr(), &fresh).0, 200);
    ok(&eps[2], &format!("{ROOT} get foo"));

    let (code, body) = get_with(&cluster.members[0].addr(), "garbage");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains(INVALID_TOKEN), "{body}");
    let (code, body) = login(&cluster.members[1].addr(), "root", "wrong");
    assert!(
        code != 200 && body.contains("authentication failed"),
        "{body}"
    );
}

#[test]
fn es256_tokens_expire_and_a_verify_only_member_checks_but_does_not_sign() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = ec_keys(dir.path());
    let signing =
        format!("--auth-token=jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl=2s");
    let verifying = format!("--auth-token=jwt,pub-key={public},sign-method=ES256,ttl=2s");
    let mut members =
        Cluster::unstarted(Kind::Cairn, 3, dir.path(), &["--bcrypt-cost=4", &signing]);
    members[2].extra_args = vec!["--bcrypt-cost=4".into(), verifying];
    for m in &mut members {
        m.spawn_process();
    }
    for m in &mut members {
        m.wait_healthy();
    }
    let cluster = Cluster { members };
    let eps = cluster.endpoints();
    enable_auth(&eps[0]);
    ok(&eps[1], &format!("{ROOT} get foo"));

    let verify_only = &cluster.members[2];
    let (code, body) = login(&verify_only.addr(), "root", "rootpw");
    assert_eq!(code, 500, "{body}");
    assert!(
        body.contains("auth: token signing attempted with verify-only key"),
        "{body}"
    );
    let out = run_etcdctl(&eps[2], &format!("{ROOT} get foo"));
    assert!(
        out.contains("token signing attempted with verify-only key"),
        "{out}"
    );

    let token = token_of(login(&cluster.members[1].addr(), "root", "rootpw"));
    assert_eq!(get_with(&verify_only.addr(), &token).0, 200);
    let expired = wait_for("the token to expire", Duration::from_secs(10), || {
        let (code, body) = get_with(&verify_only.addr(), &token);
        (code != 200).then_some((code, body))
    });
    assert_eq!(expired.0, 401, "{}", expired.1);
    assert!(expired.1.contains(INVALID_TOKEN), "{}", expired.1);
}

/// What a client sees of one server, with its identity masked.
fn observe(kind: Kind, dir: &Path, flag: &str, other_key_token: &str) -> Vec<String> {
    let mut m = Member::start(kind, &dir.join(format!("{kind:?}")), &[flag]);
    let ep = m.endpoint();
    let addr = m.addr();
    let mut seen = Vec::new();
    let mut see = |what: &str, text: String| seen.push(format!("{what}: {}", mask(&text)));
    enable_auth(&ep);
    see("get", run_etcdctl(&ep, &format!("{ROOT} get foo")));
    see(
        "wrong password",
        run_etcdctl(&ep, "--user=root:wrong get foo"),
    );
    see("no user", run_etcdctl(&ep, "get foo"));
    let token = token_of(login(&addr, "root", "rootpw"));
    see("garbage", format!("{:?}", get_with(&addr, "garbage")));
    see(
        "other key",
        format!("{:?}", get_with(&addr, other_key_token)),
    );
    ok(
        &ep,
        &format!("{ROOT} user add bob --new-user-password=bobpw"),
    );
    see("old revision", format!("{:?}", get_with(&addr, &token)));
    let fresh = token_of(login(&addr, "root", "rootpw"));
    see("fresh", format!("{:?}", get_with(&addr, &fresh).0));
    m.kill9();
    seen
}

/// Drops etcdctl's log lines and response headers, which name ports, ids and times.
fn mask(text: &str) -> String {
    let text: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .collect();
    let text = text.join("\n");
    match (text.find(r#""header":{"#), text.find("},")) {
        (Some(from), Some(to)) if from < to => format!("{}{}", &text[..from], &text[to + 2..]),
        _ => text,
    }
}

#[test]
fn errors_match_etcd_with_the_same_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_keys(dir.path());
    let flag = format!("--auth-token=jwt,pub-key={public},priv-key={private},sign-method=RS256");
    let (other, _) = keys(dir.path(), "other", &["genrsa", "2048"]);
    let other_flag = format!("--auth-token=jwt,priv-key={other},sign-method=RS256");
    let mut signer = Member::start(Kind::Cairn, &dir.path().join("signer"), &[&other_flag]);
    enable_auth(&signer.endpoint());
    let other_key_token = token_of(login(&signer.addr(), "root", "rootpw"));
    signer.kill9();

    let etcd = observe(Kind::Etcd, dir.path(), &flag, &other_key_token);
    let cairn = observe(Kind::Cairn, dir.path(), &flag, &other_key_token);
    assert_eq!(cairn, etcd);
    let said =
        |what: &str, text: &str| etcd.iter().any(|l| l.starts_with(what) && l.contains(text));
    assert!(said("get", "foo\nbar"), "{etcd:?}");
    assert!(said("other key", INVALID_TOKEN), "{etcd:?}");
    assert!(said("old revision", OLD_REVISION), "{etcd:?}");
    assert!(said("fresh", "200"), "{etcd:?}");
}
