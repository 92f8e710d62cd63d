//! `cairn-jepsen check` regenerates a run's `report.html` from the saved history: a page with
//! the verdict, the timeline, latency and throughput plots, and the nemesis's faults, with no
//! script and nothing fetched from elsewhere.

use std::process::Command;

use cairn_jepsen::history::{write_jsonl, Actor, Call, EventKind, Recorder, Reply};

#[test]
fn check_regenerates_the_html_report() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("test.json"),
        r#"{"options": {"workload": "register"}, "bin_version": "hand-made"}"#,
    )
    .unwrap();
    let recorder = Recorder::new();
    let actor = Actor::Client(0);
    let write = Call::Write {
        key: "k".into(),
        value: 1,
    };
    recorder.record(actor, Some(0), EventKind::Invoke { call: write });
    recorder.record(
        Actor::Nemesis,
        None,
        EventKind::Nemesis {
            action: "start partition one-way n0->n1,n2".into(),
        },
    );
    recorder.record(
        actor,
        Some(0),
        EventKind::Ok {
            reply: Reply::Write { prev_version: 0 },
            revision: 2,
        },
    );
    recorder.record(
        Actor::Nemesis,
        None,
        EventKind::Nemesis {
            action: "stop heal partition one-way n0->n1,n2".into(),
        },
    );
    write_jsonl(&dir.path().join("history.jsonl"), &recorder.snapshot()).unwrap();

    let report = dir.path().join("report.html");
    assert!(!report.exists());
    let output = Command::new(env!("CARGO_BIN_EXE_cairn-jepsen"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let page = std::fs::read_to_string(&report).expect("check wrote report.html");
    assert!(page.contains("VERDICT: Valid"), "{page}");
    assert_eq!(page.matches("<svg").count(), 3);
    assert!(page.contains("one-way n0-&gt;n1,n2"));
    assert!(page.contains("process 0 write on n0: ok"));
    assert!(!page.contains("<script"));
}
