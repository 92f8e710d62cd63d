//! Differential test of the JSON gateway: the same HTTP requests (KV, txn as Patroni sends it,
//! leases, watch streams with history, compaction and progress, keep-alive, status, errors) against
//! a fresh etcd (the reference) and a fresh Cairn; status codes and bodies must be identical once
//! member ids, terms, lease ids and sizes are normalised.

mod common;

use std::thread;
use std::time::Duration;

use common::{http_post, Kind, Member};

/// How long a streaming request is read.
const STREAM: Duration = Duration::from_millis(1500);

/// (path, body, streamed): the session, in order.
const SESSION: &[(&str, &str, bool)] = &[
    ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#, false),
    ("/v3/kv/range", r#"{"key":"Zm9v"}"#, false),
    ("/v3/kv/range", r#"{"key":"bm9uZQ=="}"#, false),
    (
        "/v3beta/kv/range",
        r#"{"key":"Zm9v","count_only":true}"#,
        false,
    ),
    // Patroni's leader race: numbers for revisions, CREATE by name, EQUAL left out.
    (
        "/v3/kv/txn",
        r#"{"compare":[{"target":"CREATE","create_revision":0,"key":"bGVhZGVy"}],"success":[{"request_put":{"key":"bGVhZGVy","value":"bm9kZTE="}}]}"#,
        false,
    ),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"target":"CREATE","create_revision":0,"key":"bGVhZGVy"}],"success":[{"request_put":{"key":"bGVhZGVy","value":"bm9kZTE="}}]}"#,
        false,
    ),
    ("/v3/kv/range", r#"{"key":"","range_end":"AA=="}"#, false),
    ("/v3/lease/revoke", r#"{"ID":"123"}"#, false),
    ("/v3/lease/grant", r#"{"TTL":30}"#, false),
    ("/v3/lease/timetolive", r#"{"ID":"123"}"#, false),
    ("/v3/kv/lease/leases", r#"{}"#, false),
    ("/v3/kv/compaction", r#"{"revision":"3"}"#, false),
    (
        "/v3/watch",
        r#"{"create_request":{"key":"Zm9v","start_revision":"2"}}"#,
        true,
    ),
    (
        "/v3/watch",
        r#"{"create_request":{"key":"Zm9v","start_revision":"3","prev_kv":true}} {"progress_request":{}}"#,
        true,
    ),
    (
        "/v3/watch",
        r#"{"create_request":{"key":"bGVhZGVy","range_end":"bGVhZGVz","start_revision":1}}"#,
        true,
    ),
    ("/v3/lease/keepalive", r#"{"ID":"1"}"#, true),
    (
        "/v3/kv/deleterange",
        r#"{"key":"bGVhZGVy","prev_kv":true}"#,
        false,
    ),
    ("/v3/maintenance/status", r#"{}"#, false),
    ("/v3/cluster/member/update", r#"{"ID":"1"}"#, false),
    ("/v3/nothing/here", r#"{}"#, false),
];

/// Replaces the values of fields that differ between any two servers.
fn normalise(text: &str) -> String {
    let mut out = text.to_string();
    for field in [
        "cluster_id",
        "member_id",
        "raft_term",
        "ID",
        "leader",
        "dbSize",
        "dbSizeInUse",
        "raftIndex",
        "raftTerm",
        "raftAppliedIndex",
    ] {
        let key = format!("\"{field}\":\"");
        let mut from = 0;
        while let Some(at) = out[from..].find(&key) {
            let start = from + at + key.len();
            let len = out[start..].find('"').unwrap_or(0);
            out.replace_range(start..start + len, "N");
            from = start;
        }
    }
    out
}

fn session(addr: &str) -> Vec<(String, String)> {
    SESSION
        .iter()
        .map(|(path, body, streamed)| {
            let stream_for = streamed.then_some(STREAM);
            let (status, text) = http_post(addr, path, body, stream_for).expect("HTTP works");
            (
                format!("POST {path} {body}"),
                format!("{status} {}", normalise(&text)),
            )
        })
        .collect()
}

#[test]
fn json_gateway_matches_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Member::start(Kind::Etcd, &dir.path().join("etcd"), &[]);
    let cairn = Member::start(Kind::Cairn, &dir.path().join("cairn"), &[]);
    let (reference, candidate) = thread::scope(|s| {
        let r = s.spawn(|| session(&etcd.addr()));
        let c = s.spawn(|| session(&cairn.addr()));
        (r.join().unwrap(), c.join().unwrap())
    });
    // What the script is about, on the reference, so both sides cannot agree vacuously.
    let text = |i: usize| reference[i].1.as_str();
    assert!(text(1).contains(r#""value":"YmFy""#), "{}", text(1));
    assert!(text(4).contains(r#""succeeded":true"#), "{}", text(4));
    assert!(
        text(7).starts_with("404 ") && text(7).contains(r#""code":5"#),
        "{}",
        text(7)
    );
    assert!(
        text(12).contains(r#""compact_revision":"3""#),
        "{}",
        text(12)
    );
    assert!(text(13).contains(r#""watch_id":"-1""#), "{}", text(13));
    let differences: Vec<String> = reference
        .iter()
        .zip(&candidate)
        .filter(|(r, c)| r.1 != c.1)
        .map(|((req, want), (_, got))| format!("{req}\n--- etcd ---\n{want}\n--- cairn ---\n{got}"))
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} requests differ:\n{}",
        differences.len(),
        reference.len(),
        differences.join("\n")
    );
}
