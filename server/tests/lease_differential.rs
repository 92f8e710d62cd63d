//! Differential test of `etcdctl lease …` and `put --lease`: the same session against a fresh etcd
//! (the reference) and a fresh Cairn; exit codes, output and error lines must be identical once
//! lease ids (chosen by each server) and etcdctl's own log lines are normalised.

mod common;

use std::thread;

use common::{run_etcdctl, Kind, Member};

/// The session; `$L` is the lease granted by the step marked to capture it.
const SESSION: &[&str] = &[
    "lease grant 1",
    "lease grant 100",
    "lease grant 10000000000",
    "put k1 v --lease=$L",
    "put k2 v --lease=$L",
    "put k3 v --lease=1234",
    "lease timetolive $L --keys",
    "lease keep-alive --once $L",
    "lease keep-alive --once 1234",
    "lease timetolive 1234",
    "put k2 w",
    "lease timetolive $L --keys",
    "lease revoke $L",
    "get k --prefix",
    "lease timetolive $L",
    "lease revoke $L",
    "lease revoke 1234",
];

/// The step whose granted lease becomes `$L`.
const CAPTURE: usize = 1;

/// Replaces 16-digit hex lease ids (which each server picks) and the seconds left (which may tick
/// differently); drops etcdctl's JSON log lines (timestamps, client ids), keeping its `Error:` lines.
fn normalise(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .map(|l| {
            let l = l
                .split(' ')
                .map(|w| {
                    let hex = w.len() == 16 && w.chars().all(|c| c.is_ascii_hexdigit());
                    if hex {
                        "<lease>"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            match l.find("remaining(") {
                Some(at) => {
                    let end = l[at..].find(')').map_or(l.len(), |e| at + e);
                    format!("{}remaining(<s>{}", &l[..at], &l[end..])
                }
                None => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn session(endpoint: &str) -> Vec<(String, String)> {
    let mut lease = String::new();
    let mut out = vec![];
    for (i, step) in SESSION.iter().enumerate() {
        let cmd = step.replace("$L", &lease);
        let text = run_etcdctl(endpoint, &cmd);
        if i == CAPTURE {
            lease = text
                .split_whitespace()
                .skip_while(|w| *w != "lease")
                .nth(1)
                .expect("a granted lease id")
                .to_string();
        }
        out.push((step.to_string(), normalise(&text)));
    }
    out
}

#[test]
fn etcdctl_lease_matches_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Member::start(Kind::Etcd, &dir.path().join("etcd"), &[]);
    let cairn = Member::start(Kind::Cairn, &dir.path().join("cairn"), &[]);
    let (reference, candidate) = thread::scope(|s| {
        let r = s.spawn(|| session(&etcd.endpoint()));
        let c = s.spawn(|| session(&cairn.endpoint()));
        (r.join().unwrap(), c.join().unwrap())
    });
    let text = |step: usize| &reference[step].1;
    assert!(text(0).contains("granted with TTL(2s)"), "{}", text(0));
    assert!(text(2).contains("too large lease TTL"), "{}", text(2));
    assert!(text(5).contains("requested lease not found"), "{}", text(5));
    assert!(text(6).contains("attached keys([k1 k2])"), "{}", text(6));
    assert!(text(11).contains("attached keys([k1])"), "{}", text(11));
    assert!(text(14).contains("already expired"), "{}", text(14));
    let differences: Vec<String> = reference
        .iter()
        .zip(&candidate)
        .filter(|(r, c)| r.1 != c.1)
        .map(|((step, want), (_, got))| {
            format!("etcdctl {step}\n--- etcd ---\n{want}\n--- cairn ---\n{got}")
        })
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} commands differ:\n{}",
        differences.len(),
        reference.len(),
        differences.join("\n")
    );
}
