//! Differential tests of `etcdctl lease …` and `put --lease`, and of the lease-based recipes `etcdctl
//! lock` and `etcdctl elect`: the same session against a fresh etcd (the reference) and a fresh
//! Cairn; exit codes, output and error lines must be identical once lease ids (chosen by each
//! server) and etcdctl's own log lines are normalised.

mod common;

use std::thread;
use std::time::Duration;

use common::{run_etcdctl, spawn_etcdctl, stop_etcdctl, Kind, Member};

/// (step, normalised output) per command.
type Transcript = Vec<(String, String)>;

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

/// Replaces hex lease ids (which each server picks; 8 to 16 digits, as `%x` drops leading zeros;
/// also inside `name/<id>` keys) and the seconds left (which may tick differently); sorts a lease's
/// attached keys (etcd lists them in map order); drops etcdctl's JSON log lines (timestamps, client ids), keeping its `Error:` lines.
fn normalise(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .map(|l| {
            let l = l
                .split(' ')
                .map(|word| {
                    word.split('/')
                        .map(|part| {
                            let id = (8..=16).contains(&part.len())
                                && part.chars().all(|c| c.is_ascii_hexdigit());
                            if id {
                                "<lease>"
                            } else {
                                part
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .collect::<Vec<_>>()
                .join(" ");
            let l = replace_between(&l, "remaining(", ")", |_| "<s>".into());
            replace_between(&l, "attached keys([", "])", |keys| {
                let mut keys: Vec<&str> = keys.split(' ').collect();
                keys.sort_unstable();
                keys.join(" ")
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rewrites the text between the first `open` and the following `close` with `f`.
fn replace_between(line: &str, open: &str, close: &str, f: impl Fn(&str) -> String) -> String {
    let Some(at) = line.find(open).map(|a| a + open.len()) else {
        return line.to_string();
    };
    let end = line[at..].find(close).map_or(line.len(), |e| at + e);
    format!("{}{}{}", &line[..at], f(&line[at..end]), &line[end..])
}

fn session(endpoint: &str) -> Transcript {
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

/// Time for a background etcdctl to act (acquire, print, observe) before the next step.
const SETTLE: Duration = Duration::from_millis(1000);

/// Lock handover and an election with an observer: holders stop with SIGTERM, on which etcdctl
/// releases what it holds.
fn recipes_session(endpoint: &str) -> Transcript {
    let mut out = vec![];
    out.push((
        "lock l1 echo hi".into(),
        run_etcdctl(endpoint, "lock l1 echo hi"),
    ));
    let holder = spawn_etcdctl(endpoint, "lock l2", "");
    thread::sleep(SETTLE);
    let waiter = spawn_etcdctl(endpoint, "lock l2 echo second", "");
    thread::sleep(SETTLE);
    out.push(("lock l2 (holder)".into(), stop_etcdctl(holder, "TERM")));
    thread::sleep(SETTLE);
    out.push(("lock l2 echo second".into(), stop_etcdctl(waiter, "TERM")));
    let alice = spawn_etcdctl(endpoint, "elect e1 alice", "");
    thread::sleep(SETTLE);
    let observer = spawn_etcdctl(endpoint, "elect -l e1", "");
    thread::sleep(SETTLE);
    let bob = spawn_etcdctl(endpoint, "elect e1 bob", "");
    thread::sleep(SETTLE);
    out.push(("elect e1 alice".into(), stop_etcdctl(alice, "TERM")));
    thread::sleep(SETTLE);
    out.push(("elect e1 bob".into(), stop_etcdctl(bob, "TERM")));
    out.push(("elect -l e1".into(), stop_etcdctl(observer, "TERM")));
    out.into_iter()
        .map(|(step, text)| (step, normalise(&text)))
        .collect()
}

/// Runs `session` against a fresh etcd and a fresh Cairn at once.
fn both(session: fn(&str) -> Transcript) -> (Transcript, Transcript) {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Member::start(Kind::Etcd, &dir.path().join("etcd"), &[]);
    let cairn = Member::start(Kind::Cairn, &dir.path().join("cairn"), &[]);
    thread::scope(|s| {
        let r = s.spawn(|| session(&etcd.endpoint()));
        let c = s.spawn(|| session(&cairn.endpoint()));
        (r.join().unwrap(), c.join().unwrap())
    })
}

fn assert_same(reference: &[(String, String)], candidate: &[(String, String)]) {
    let differences: Vec<String> = reference
        .iter()
        .zip(candidate)
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

#[test]
fn etcdctl_lock_and_elect_match_etcd() {
    let (reference, candidate) = both(recipes_session);
    let text = |step: usize| &reference[step].1;
    assert!(text(0).contains("hi"), "{}", text(0));
    assert!(text(2).contains("second"), "{}", text(2));
    assert!(
        text(5).contains("alice") && text(5).contains("bob"),
        "{}",
        text(5)
    );
    assert_same(&reference, &candidate);
}

#[test]
fn etcdctl_lease_matches_etcd() {
    let (reference, candidate) = both(session);
    let text = |step: usize| &reference[step].1;
    assert!(text(0).contains("granted with TTL(2s)"), "{}", text(0));
    assert!(text(2).contains("too large lease TTL"), "{}", text(2));
    assert!(text(5).contains("requested lease not found"), "{}", text(5));
    assert!(text(6).contains("attached keys([k1 k2])"), "{}", text(6));
    assert!(text(11).contains("attached keys([k1])"), "{}", text(11));
    assert!(text(14).contains("already expired"), "{}", text(14));
    assert_same(&reference, &candidate);
}
