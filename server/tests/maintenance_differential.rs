//! Differential tests of the space quota and alarms (`--quota-backend-bytes`, `etcdctl alarm`,
//! `defrag`, `/health` under an alarm) and of `etcdctl endpoint hashkv`: the same session against
//! a fresh etcd 3.4.23 (the reference) and a fresh Cairn, with outputs compared once the numbers
//! (member ids, ports, revisions, counts, sizes) are masked.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{etcdctl, http_get, json_number, run_etcdctl, Kind, Member};

/// 4 MiB: a few 512 KiB values exceed it on both servers.
const QUOTA: &str = "--quota-backend-bytes=4194304";
const VALUE_BYTES: usize = 512 * 1024;

/// `etcdctl put <key>` with the value on stdin (too large for an argument).
fn put_large(endpoint: &str, key: &str) -> String {
    let mut child = etcdctl(endpoint, &format!("put {key}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl runs");
    let value = "v".repeat(VALUE_BYTES);
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(value.as_bytes())
        .expect("write the value");
    let out = child.wait_with_output().expect("etcdctl ends");
    format!(
        "exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Masks every run of digits (but in the `exit` line) and drops etcdctl's JSON log lines; keeps
/// `Error:` lines.
fn mask(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.starts_with("{\"level\"")) {
        if line.starts_with("exit ") {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut in_number = false;
        for c in line.chars() {
            if c.is_ascii_digit() {
                if !in_number {
                    out.push('N');
                }
                in_number = true;
            } else {
                in_number = false;
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// The `"errors":[...]` part of `endpoint status -w json`, or "" when there is none.
fn status_errors(text: &str) -> String {
    text.find("\"errors\"")
        .map(|i| {
            let rest = &text[i..];
            rest[..rest.find(']').map_or(rest.len(), |j| j + 1)].to_string()
        })
        .unwrap_or_default()
}

/// Fills the backend until the quota refuses a put, then checks what still works, makes room and
/// disarms. Returns the masked transcript.
fn quota_session(kind: Kind) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(kind, &dir.path().join("m"), &[QUOTA]);
    let ep = m.endpoint();
    let mut transcript = vec![];
    let mut refused = None;
    for i in 0..64 {
        let out = put_large(&ep, &format!("big{i}"));
        if !out.starts_with("exit Some(0)") {
            refused = Some(out);
            break;
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("{kind:?}: the quota never refused a put"));
    transcript.push(("put over quota".to_string(), mask(&refused)));
    let mut step = |name: &str, out: String| transcript.push((name.to_string(), mask(&out)));
    // HTTP answers: the status code stays, the body is compared as is.
    let health = |path: &str| {
        let (code, body) = http_get(&m.addr(), path).unwrap();
        format!("exit {code}\n{body}")
    };
    step("alarm list", run_etcdctl(&ep, "alarm list"));
    step("put small", run_etcdctl(&ep, "put a b"));
    step("lease grant", run_etcdctl(&ep, "lease grant 100"));
    step("get", run_etcdctl(&ep, "get big0 --keys-only"));
    let status = run_etcdctl(&ep, "endpoint status -w json");
    step("status errors", status_errors(&status));
    let unhealthy = health("/health");
    assert!(unhealthy.starts_with("exit 503"), "{unhealthy}");
    if kind == Kind::Cairn {
        // etcd 3.5's reason, which 3.4 does not give.
        assert!(
            unhealthy.contains(r#""reason":"ALARM NOSPACE""#),
            "{unhealthy}"
        );
    }
    step("health", unhealthy.lines().next().unwrap_or("").to_string());
    step(
        "health excluding NOSPACE",
        health("/health?exclude=NOSPACE"),
    );
    step("delete", run_etcdctl(&ep, "del big --prefix"));
    let rev = run_etcdctl(&ep, "get big0 -w json");
    let rev = json_number(&rev, "revision");
    step(
        "compact",
        run_etcdctl(&ep, &format!("compaction {rev} --physical")),
    );
    step("defrag", run_etcdctl(&ep, "defrag"));
    step("put while armed", run_etcdctl(&ep, "put a b"));
    step("disarm", run_etcdctl(&ep, "alarm disarm"));
    step("alarm list after", run_etcdctl(&ep, "alarm list"));
    step("put after", run_etcdctl(&ep, "put a b"));
    step("health after", health("/health"));
    transcript
}

#[test]
fn quota_alarm_and_recovery_match_etcd() {
    let etcd = quota_session(Kind::Etcd);
    let cairn = quota_session(Kind::Cairn);
    for ((step, want), (_, got)) in etcd.iter().zip(&cairn) {
        assert_eq!(
            got, want,
            "step {step:?}: etcd said {want:?}, Cairn {got:?}"
        );
    }
    assert_eq!(etcd.len(), cairn.len());
}

/// `endpoint hashkv` output has etcd's shape, and Cairn's members agree on the hash at any revision.
#[test]
fn hashkv_matches_etcd_shape_and_agrees_across_members() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Member::start(Kind::Etcd, &dir.path().join("etcd"), &[]);
    std::fs::create_dir(dir.path().join("cairn")).unwrap();
    let cluster = common::Cluster::start(Kind::Cairn, 3, &dir.path().join("cairn"), &[]);
    let ep = cluster.members[0].endpoint();
    for e in [&etcd.endpoint(), &ep] {
        for args in [
            "put a 1",
            "put b 2",
            "put a 3",
            "del b",
            "compaction 3",
            "put c 4",
        ] {
            assert!(run_etcdctl(e, args).starts_with("exit Some(0)"), "{args}");
        }
    }
    for args in [
        "endpoint hashkv",
        "endpoint hashkv --rev=4",
        "endpoint hashkv --rev=2",
    ] {
        let want = mask(&run_etcdctl(&etcd.endpoint(), args));
        let got = mask(&run_etcdctl(&ep, args));
        assert_eq!(got, want, "{args}");
    }
    let all = cluster.endpoints().join(",");
    for rev in ["0", "4", "5"] {
        let out = run_etcdctl(&all, &format!("endpoint hashkv --rev={rev} -w json"));
        let hashes: Vec<&str> = out
            .split("\"hash\":")
            .skip(1)
            .map(|s| s.split(',').next().unwrap())
            .collect();
        assert_eq!(hashes.len(), 3, "{out}");
        assert!(hashes.iter().all(|h| *h == hashes[0]), "rev {rev}: {out}");
    }
}
