//! The harness's self-tests against deliberately broken Cairn members (issue 8): each bug of
//! `server/src/failpoints.rs`, switched on in every member, must make a run INVALID, and the
//! checker that should notice it must be the one that does.
//!
//! It runs `target/<profile>/cairn-failpoints`: the server built with `--features failpoints`,
//! which `scripts/test.sh` builds and copies there before the suite (`cargo build -p cairn-server
//! --features failpoints --bin cairn`, then copy `target/<profile>/cairn`).

mod common;

use std::path::PathBuf;

use common::run_with_env;

fn failpoints_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("the test knows its executable");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps")
        .join("cairn-failpoints");
    if bin.exists() {
        return Some(bin);
    }
    let why = format!(
        "{} not built (scripts/test.sh builds it: cargo build -p cairn-server --features \
         failpoints --bin cairn, then copies the binary)",
        bin.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{why}");
    println!("skipped: {why}");
    None
}

/// Runs `cairn-jepsen test args` on 3 members with `bug` on; the run must be INVALID and
/// `checker` must be among those that found anomalies.
fn caught(bug: &str, args: &[&str], checker: &str) {
    let Some(bin) = failpoints_binary() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let (code, results) = run_with_env(&bin, store.path(), args, &[("CAIRN_FAILPOINTS", bug)]);
    assert_eq!(code, 1, "{bug} must make the run INVALID: {results:#}");
    let anomalies: Vec<String> = results["checkers"]
        .as_array()
        .expect("checkers")
        .iter()
        .filter(|c| c["checker"] == checker)
        .flat_map(|c| c["anomalies"].as_array().cloned().unwrap_or_default())
        .map(|a| a.to_string())
        .collect();
    assert!(
        !anomalies.is_empty(),
        "{bug}: the {checker} checker found nothing: {results:#}"
    );
    println!(
        "{bug}: {} {checker} anomalies, e.g. {}",
        anomalies.len(),
        anomalies[0]
    );
}

#[test]
fn reads_without_read_index_are_caught_as_stale_reads() {
    caught(
        "read-without-read-index",
        &[
            "--workload=register",
            "--nemesis=partition",
            "--nemesis-interval-s=2",
            "--time-limit-s=16",
            "--seed=3",
        ],
        "linearizable",
    );
}

#[test]
fn puts_acknowledged_before_commit_are_caught_as_lost() {
    caught(
        "ack-before-commit",
        &[
            "--workload=set",
            "--nemesis=partition",
            "--nemesis-interval-s=2",
            "--time-limit-s=16",
            "--seed=3",
        ],
        "set-full",
    );
}

#[test]
fn a_dropped_watch_event_is_caught_as_a_gap() {
    caught(
        "drop-watch-event",
        &[
            "--workload=watch",
            "--nemesis",
            "--time-limit-s=8",
            "--seed=3",
        ],
        "watch",
    );
}

#[test]
fn acks_before_fsync_are_caught_as_lost_when_the_page_cache_is() {
    caught(
        "ack-before-fsync",
        &[
            "--workload=set",
            "--nemesis=lose-unsynced",
            "--nemesis-interval-s=2",
            "--time-limit-s=16",
            "--seed=3",
        ],
        "set-full",
    );
}

#[test]
fn a_reused_revision_is_caught_by_the_revision_checker() {
    caught(
        "reuse-revision",
        &[
            "--workload=register",
            "--nemesis",
            "--time-limit-s=8",
            "--seed=3",
        ],
        "revision",
    );
}
