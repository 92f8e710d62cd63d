//! Differential tests of authentication and RBAC: the same `etcdctl user|role|auth` session, the
//! same permission checks (KV, txn, watch, maintenance) and the same JSON-gateway logins against a
//! fresh etcd 3.4.23 (the reference) and a fresh Cairn; exit codes and output must be identical
//! once ports, lease ids, tokens and etcdctl's own log lines are masked.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_post_as, Kind, Member};

const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

/// One step: etcdctl's arguments (split on spaces; `<empty>` is an empty argument) and its stdin.
struct Step<'a>(&'a str, Option<&'a str>);

const SESSION: &[Step<'static>] = &[
    Step("auth enable", None),
    Step("user add root --new-user-password=rootpw", None),
    Step("user get root", None),
    Step("role list", None),
    Step("auth enable", None),
    Step("role list", None),
    Step("$R role list", None),
    Step("$R user get root", None),
    Step("$R user add alice --new-user-password=alicepw", None),
    Step("$R user add alice --new-user-password=alicepw", None),
    Step("$R role add reader", None),
    Step("$R role add reader", None),
    Step("$R role grant-permission reader read /app/ --prefix", None),
    Step("$R role grant-permission reader readwrite /alice", None),
    Step("$R role grant-permission reader write /w1 /w3", None),
    Step(
        "$R role grant-permission reader readwrite /t/ --prefix",
        None,
    ),
    Step("$R role grant-permission nosuch read /x", None),
    Step("$R role get reader", None),
    Step("$R user grant-role alice reader", None),
    Step("$R user grant-role alice nosuch", None),
    Step("$R user grant-role bob reader", None),
    Step("$R user get alice", None),
    Step("$R user get alice --detail", None),
    Step("$R user list", None),
    Step("$R put /app/x 1", None),
    Step("--user=root:wrong get /app/x", None),
    Step("--user=nobody:pw get /app/x", None),
    Step("$A get /app/x", None),
    Step("$A get /app/ --prefix", None),
    Step("$A get /ap --prefix", None),
    Step("$A put /app/x 2", None),
    Step("$A put /alice 2", None),
    Step("$A get /alice", None),
    Step("$A put /w2 2", None),
    Step("$A get /w2", None),
    Step("$A del /w1 /w3", None),
    Step("$A del /w1 /w4", None),
    Step("$A put /alice 3 --prev-kv", None),
    Step("$A put /w2 3 --prev-kv", None),
    Step(
        "$A txn",
        Some("value(\"/t/a\") = \"x\"\n\nput /t/a 1\n\nput /t/b 2\n\n"),
    ),
    Step(
        "$A txn",
        Some("value(\"/nope\") = \"x\"\n\nput /t/a 1\n\n\n"),
    ),
    Step("$A txn", Some("\nput /t/a 1\n\nput /nope 2\n\n")),
    Step("$A watch /nope", None),
    Step("$A user list", None),
    Step("$A user get alice", None),
    Step("$A user get root", None),
    Step("$A role get reader", None),
    Step("$A role get root", None),
    Step("$A alarm list", None),
    Step("$A lease grant 100", None),
    Step("$A compaction 1", None),
    Step("$A defrag", None),
    Step("$A endpoint hashkv", None),
    Step("$A snapshot save $DIR/snap.db", None),
    Step("$A member list", None),
    Step("member list", None),
    Step("$A member add x --peer-urls=http://127.0.0.1:1", None),
    Step("member add x --peer-urls=http://127.0.0.1:1", None),
    Step("$A member remove 1234", None),
    Step("$A member update 1234 --peer-urls=http://127.0.0.1:2", None),
    Step("$A move-leader 1234", None),
    Step("lease list", None),
    Step("alarm list", None),
    Step("$A alarm disarm", None),
    Step("$A lease timetolive 1234", None),
    Step("$A endpoint health", None),
    Step("endpoint health", None),
    Step("get /app/x", None),
    Step("$R role revoke-permission reader /alice", None),
    Step("$R role revoke-permission reader /nope", None),
    Step("$A get /alice", None),
    Step("$R user passwd alice --interactive=false", Some("newpw\n")),
    Step("$A get /app/x", None),
    Step("--user=alice:newpw get /app/x", None),
    Step("$R user revoke-role alice reader", None),
    Step("$R user revoke-role alice reader", None),
    Step("--user=alice:newpw get /app/x", None),
    Step("$R role delete reader", None),
    Step("$R role delete reader", None),
    Step("$R user delete alice", None),
    Step("$R user delete alice", None),
    Step("$R user revoke-role root root", None),
    Step("$R role delete root", None),
    Step("$R user delete root", None),
    Step("$R user add <empty> --new-user-password=x", None),
    Step("$R role add <empty>", None),
    Step("$R auth disable", None),
    Step("auth disable", None),
    Step("get /app/x", None),
    Step("user list", None),
    Step("role list", None),
    Step("user get root", None),
];

/// Runs one step (killed after 10 s: a watch that should have been refused would never end).
fn run(endpoint: &str, dir: &str, step: &Step<'_>) -> String {
    let args: Vec<String> = step
        .0
        .replace("$R", ROOT)
        .replace("$A", ALICE)
        .replace("$DIR", dir)
        .split(' ')
        .map(|a| {
            if a == "<empty>" {
                String::new()
            } else {
                a.to_string()
            }
        })
        .collect();
    let mut child = Command::new("etcdctl")
        .arg(format!("--endpoints={endpoint}"))
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl runs");
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(input) = step.1 {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    format!(
        "exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Masks what each server chooses (ports, ids, timings) and drops etcdctl's log lines.
fn mask(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .map(|l| match l.split_once("took = ") {
            Some((before, _)) => format!("{before}took = <took>"),
            None => l.to_string(),
        })
        .map(|l| {
            let mut out = String::new();
            let mut word = String::new();
            for c in l.chars().chain(std::iter::once('\n')) {
                if c.is_ascii_alphanumeric() || c == '.' || c == ':' {
                    word.push(c);
                    continue;
                }
                let masked = if word.starts_with("127.0.0.1:") {
                    "<addr>".to_string()
                } else if word.len() >= 8 && word.chars().all(|c| c.is_ascii_hexdigit()) {
                    "<id>".to_string()
                } else {
                    word.clone()
                };
                out.push_str(&masked);
                word.clear();
                out.push(c);
            }
            out
        })
        .collect()
}

fn session(kind: Kind) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(kind, &dir.path().join("m"), &[]);
    let mut outs: Vec<String> = SESSION
        .iter()
        .map(|s| mask(&run(&m.endpoint(), &dir.path().display().to_string(), s)))
        .collect();
    let fresh = Member::start(kind, &dir.path().join("gw"), &[]);
    outs.extend(gateway_logins(&fresh));
    outs
}

/// Logins and token use through the JSON gateway (`Authorization: <token>`).
fn gateway_logins(m: &Member) -> Vec<String> {
    let ep = m.endpoint();
    for args in [
        "user add root --new-user-password=rootpw",
        "user add gw --new-user-password=gwpw",
        "role add gw",
        "role grant-permission gw readwrite /gw/ --prefix",
        "user grant-role gw gw",
        "auth enable",
    ] {
        let out = run(&ep, "", &Step(args, None));
        assert!(out.starts_with("exit Some(0)"), "{args}: {out}");
    }
    let post = |path: &str, body: &str, token: Option<&str>| {
        let (code, body) = http_post_as(&m.addr(), path, body, None, token).unwrap();
        format!("{code} {body}")
    };
    let login = post(
        "/v3/auth/authenticate",
        r#"{"name":"gw","password":"gwpw"}"#,
        None,
    );
    let token = login
        .split("\"token\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap_or_else(|| panic!("no token: {login}"))
        .to_string();
    let put = |key_b64: &str, token: Option<&str>| {
        let body = format!(r#"{{"key":"{key_b64}","value":"dg=="}}"#);
        post("/v3/kv/put", &body, token)
    };
    let outcome = |s: String| {
        // Headers differ in ids and revisions: keep the status and any error.
        let code = s.split(' ').next().unwrap_or("").to_string();
        let error = s.split("\"error\":").nth(1).unwrap_or("").to_string();
        format!("{code} {error}")
    };
    vec![
        outcome(login.clone()),
        // "/gw/1"
        outcome(put("L2d3LzE=", Some(&token))),
        outcome(put("L2d3LzE=", None)),
        outcome(put("L2d3LzE=", Some("bogus.1"))),
        // "/b"
        outcome(put("L2I=", Some(&token))),
        outcome(post(
            "/v3/auth/authenticate",
            r#"{"name":"gw","password":"bad"}"#,
            None,
        )),
    ]
}

#[test]
fn auth_sessions_match_etcd() {
    let etcd = session(Kind::Etcd);
    let cairn = session(Kind::Cairn);
    let names = SESSION
        .iter()
        .map(|s| s.0.to_string())
        .chain((0..6).map(|i| format!("gateway step {i}")));
    for ((name, want), got) in names.zip(&etcd).zip(&cairn) {
        assert_eq!(got, want, "step {name:?}");
    }
    assert_eq!(etcd.len(), cairn.len());
}
