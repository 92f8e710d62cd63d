//! `cairn-jepsen check` re-checks a saved history and answers with its exit code: here on
//! hand-made report directories, one valid and one that lost an acknowledged add.

use std::path::Path;
use std::process::Command;

use cairn_jepsen::history::{write_jsonl, Actor, Call, EventKind, Recorder, Reply};

/// Writes a `set` report whose history acknowledges adds 1 and 2; the final read returns
/// `final_read`.
fn write_report(dir: &Path, final_read: &[u64]) {
    std::fs::write(
        dir.join("test.json"),
        r#"{"options": {"workload": "set"}, "bin_version": "hand-made"}"#,
    )
    .unwrap();
    let recorder = Recorder::new();
    for element in [1, 2] {
        let actor = Actor::Client(element);
        recorder.record(
            actor,
            Some(0),
            EventKind::Invoke {
                call: Call::Add { element },
            },
        );
        recorder.record(
            actor,
            Some(0),
            EventKind::Ok {
                reply: Reply::Add,
                revision: 1 + element as i64,
            },
        );
    }
    let reader = Actor::Client(100);
    recorder.record(
        reader,
        Some(1),
        EventKind::Invoke {
            call: Call::ReadSet,
        },
    );
    recorder.record(
        reader,
        Some(1),
        EventKind::Ok {
            reply: Reply::ReadSet {
                elements: final_read.to_vec(),
            },
            revision: 3,
        },
    );
    write_jsonl(&dir.join("history.jsonl"), &recorder.snapshot()).unwrap();
}

fn check(dir: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn-jepsen"))
        .arg("check")
        .arg(dir)
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn check_passes_a_valid_history_and_fails_a_lost_write() {
    let valid = tempfile::tempdir().unwrap();
    write_report(valid.path(), &[1, 2]);
    let (code, out) = check(valid.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("VERDICT: valid"), "{out}");

    let lost = tempfile::tempdir().unwrap();
    write_report(lost.path(), &[1]);
    let (code, out) = check(lost.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("lost: 2 "), "{out}");
}

#[test]
fn check_of_a_missing_directory_is_a_harness_error() {
    let (code, _) = check(Path::new("/nonexistent/cairn-jepsen-report"));
    assert_eq!(code, 3);
}
