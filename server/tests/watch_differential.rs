//! Differential test of `etcdctl watch`: the same history is written to a fresh etcd (the reference)
//! and a fresh Cairn; the same watch commands (`--rev`, `--prefix`, `--prev-kv`, ranges, JSON output,
//! interactive `progress`, a compacted start) run against both while live writes arrive, and their
//! output must be identical once member ids and raft terms are normalised.

mod common;

use std::process::Child;
use std::thread;
use std::time::Duration;

use common::{run_etcdctl as run, spawn_etcdctl, stop_etcdctl, Kind, Member};

/// Time for watchers to connect and print the history before live writes, and for live events to
/// arrive before the watchers are stopped.
const SETTLE: Duration = Duration::from_millis(1500);

/// The history written before any watcher starts (revisions 2..=9).
const HISTORY: &[&str] = &[
    "put k1 v1",
    "put k2 v2",
    "put k1 v1b",
    "put k3 v3",
    "del k1",
    "put k1 v1c",
    "del k --prefix",
    "put k2 v2b",
];

/// Writes made while the watchers run.
const LIVE: &[&str] = &["put k5 v5", "put k1 live", "put k2 live", "del k1 k3"];

/// Long-running watch commands: (arguments, interactive input).
const WATCHES: &[(&str, &str)] = &[
    ("watch --rev=2 --prefix k", ""),
    ("watch --rev=2 --prefix --prev-kv k", ""),
    ("watch --rev=4 k1", ""),
    ("watch --rev=2 k2 k4", ""),
    // A revision in the future: waits for the first live write.
    ("watch --rev=10 k5", ""),
    // History only (k3 is not written live), so the response grouping does not depend on timing.
    ("watch --rev=3 k3 -w json", ""),
    ("watch -i", "watch --rev=3 k2\n"),
];

/// Replaces the values of JSON fields that differ between any two servers.
fn normalise(text: &str) -> String {
    let mut out = text.to_string();
    for field in ["\"cluster_id\":", "\"member_id\":", "\"raft_term\":"] {
        let mut from = 0;
        while let Some(at) = out[from..].find(field) {
            let start = from + at + field.len();
            let len = out[start..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(out.len() - start);
            out.replace_range(start..start + len, "N");
            from = start;
        }
    }
    out
}

/// Runs the whole session against one server; returns one transcript entry per command.
fn session(endpoint: &str) -> Vec<(String, String)> {
    let mut transcript = vec![];
    for cmd in HISTORY {
        transcript.push((cmd.to_string(), run(endpoint, cmd)));
    }
    let watchers: Vec<Child> = WATCHES
        .iter()
        .map(|(args, input)| spawn_etcdctl(endpoint, args, input))
        .collect();
    thread::sleep(SETTLE);
    for cmd in LIVE {
        transcript.push((cmd.to_string(), run(endpoint, cmd)));
    }
    thread::sleep(SETTLE);
    // Every watcher is synced by now: a progress request reports the current revision.
    let progress = spawn_etcdctl(endpoint, "watch -i", "watch k9\nprogress\n");
    thread::sleep(SETTLE);
    for ((args, _), child) in WATCHES.iter().zip(watchers) {
        transcript.push((args.to_string(), normalise(&stop_etcdctl(child, "KILL"))));
    }
    transcript.push(("watch -i; progress".into(), stop_etcdctl(progress, "KILL")));
    transcript.push(("compaction 6".into(), run(endpoint, "compaction 6")));
    transcript.push(("watch --rev=5 k1".into(), run(endpoint, "watch --rev=5 k1")));
    transcript
}

#[test]
fn etcdctl_watch_matches_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Member::start(Kind::Etcd, &dir.path().join("etcd"), &[]);
    let cairn = Member::start(Kind::Cairn, &dir.path().join("cairn"), &[]);
    let (reference, candidate) = thread::scope(|s| {
        let r = s.spawn(|| session(&etcd.endpoint()));
        let c = s.spawn(|| session(&cairn.endpoint()));
        (r.join().unwrap(), c.join().unwrap())
    });
    // The reference must show what the script is about, so that both sides cannot agree vacuously.
    let text = |cmd: &str| &reference.iter().find(|(c, _)| c == cmd).unwrap().1;
    assert!(text("watch --rev=2 --prefix --prev-kv k").contains("v1b"));
    assert!(text("watch --rev=10 k5").contains("v5"));
    assert!(text("watch --rev=3 k3 -w json").contains(r#""type":1"#));
    assert!(text("watch -i; progress").contains("progress notify: 13"));
    assert!(text("watch --rev=5 k1").contains("required revision has been compacted"));
    let mut differences = vec![];
    for ((cmd, want), (_, got)) in reference.iter().zip(&candidate) {
        if want != got {
            differences.push(format!(
                "etcdctl {cmd}\n--- etcd ---\n{want}\n--- cairn ---\n{got}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} commands differ:\n{}",
        differences.len(),
        reference.len(),
        differences.join("\n")
    );
}
