//! Differential test: one scripted `etcdctl` session runs against a fresh single-member etcd (the
//! reference) and a fresh single-member Cairn started with the same flags; every command's exit
//! code, stdout and stderr must be identical once the parts that legitimately differ between two
//! servers are normalised.
//!
//! Normalised (differs between any two servers, even two etcds): client/peer URLs and ports,
//! member and cluster ids (JSON fields and the id columns of `member list` / `endpoint status`),
//! `raft_term`, raft index columns, db size, etcdctl log timestamps and client UUIDs, and the
//! latency `endpoint health` prints.
//! Never normalised: revisions, keys, values, versions, counts, `more`, exit codes, error messages
//! and the gRPC codes etcdctl logs next to them.
//!
//! `etcd_session_is_reproducible_under_normalisation` runs the script against two etcds: it proves
//! the normalisation is enough (and no more is needed), so any difference against Cairn is real.
//! Each step also states what etcd must do (succeed, or fail with a given message), so a typo in the
//! script cannot make both sides fail identically and pass vacuously.
//!
//! Set `DIFFERENTIAL_TRANSCRIPT=1` to print the reference session (handy when fixing a mismatch).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Kind, Member};

/// etcdctl's own deadline per request; generous next to a local single member.
const COMMAND_TIMEOUT_S: u64 = 10;
/// After this an etcdctl process is killed and the step recorded as timed out.
const STEP_TIMEOUT: Duration = Duration::from_secs(COMMAND_TIMEOUT_S + 5);
/// Wall-clock budget for one side's whole session; later steps are recorded as not run.
const SESSION_BUDGET: Duration = Duration::from_secs(40);
/// Above `--max-request-bytes` (1.5 MiB) but below the 2 MiB gRPC receive limit.
const VALUE_TOO_LARGE_BYTES: usize = 1_600_000;
/// Well inside the request limit.
const VALUE_LARGE_BYTES: usize = 1_000_000;
/// etcd's `--max-txn-ops` default.
const TXN_OPS_MAX: usize = 128;
/// Longest field shown in full in a mismatch report.
const REPORT_FIELD_CHARS_MAX: usize = 3000;

/// What etcd (the reference) must do for a step; checked against etcd only.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Success,
    /// Non-zero exit with this text on stderr.
    Failure(&'static str),
}

/// Output layouts that carry ids or sizes in fixed columns rather than JSON fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Plain,
    /// `endpoint status` simple output: `url, id, version, db size, leader, learner, term, index, applied, errors`.
    EndpointStatus,
    /// `member list` simple output: `id, status, name, peer urls, client urls, learner`.
    MemberList,
}

/// One etcdctl invocation of the script.
struct Step {
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    expect: Expect,
    shape: Shape,
}

impl Step {
    fn with_stdin(mut self, input: impl Into<Vec<u8>>) -> Step {
        self.stdin = Some(input.into());
        self
    }

    fn with_shape(mut self, shape: Shape) -> Step {
        self.shape = shape;
        self
    }

    /// The command as a user would type it (stdin summarised).
    fn describe(&self) -> String {
        let mut s = String::from("etcdctl");
        for a in &self.args {
            s.push(' ');
            if a.is_empty() || a.contains(' ') {
                s.push_str(&format!("{a:?}"));
            } else {
                s.push_str(a);
            }
        }
        match &self.stdin {
            Some(input) if input.len() > 400 => {
                s.push_str(&format!("  <<< stdin: {} bytes", input.len()))
            }
            Some(input) => {
                let text = String::from_utf8_lossy(input);
                s.push_str("  <<< stdin:\n");
                for line in text.lines() {
                    s.push_str(&format!("        | {line}\n"));
                }
            }
            None => {}
        }
        s
    }
}

/// Splits a command line on spaces; `"..."` makes one word (possibly empty or with spaces).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let mut word = String::new();
        if c == '"' {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                word.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
    out
}

fn ok(line: &str) -> Step {
    Step {
        args: words(line),
        stdin: None,
        expect: Expect::Success,
        shape: Shape::Plain,
    }
}

fn fails(line: &str, stderr_contains: &'static str) -> Step {
    Step {
        expect: Expect::Failure(stderr_contains),
        ..ok(line)
    }
}

/// A non-interactive `txn`: compares, blank line, success ops, blank line, failure ops, blank line.
fn txn_input(compares: &[&str], success: &[&str], failure: &[&str]) -> String {
    let mut s = String::new();
    for part in [compares, success, failure] {
        for line in part {
            s.push_str(line);
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

fn txn(args: &str, compares: &[&str], success: &[&str], failure: &[&str]) -> Step {
    ok(&format!("txn {args}")).with_stdin(txn_input(compares, success, failure))
}

fn txn_fails(
    compares: &[&str],
    success: &[&str],
    failure: &[&str],
    stderr_contains: &'static str,
) -> Step {
    fails("txn", stderr_contains).with_stdin(txn_input(compares, success, failure))
}

const KEY_NOT_PROVIDED: &str = "Error: etcdserver: key is not provided";
const KEY_NOT_FOUND: &str = "Error: etcdserver: key not found";
const COMPACTED: &str = "Error: etcdserver: mvcc: required revision has been compacted";
const FUTURE_REV: &str = "Error: etcdserver: mvcc: required revision is a future revision";
const DUPLICATE_KEY: &str = "Error: etcdserver: duplicate key given in txn request";

/// The session. Revisions in comments are the store revision after the step (a fresh store is
/// at 1); the `--rev`, `compaction` and `mod(...)` arguments depend on them.
fn script() -> Vec<Step> {
    // Reads of missing keys: exactly at and just over the txn op limit.
    let gets: Vec<String> = (0..=TXN_OPS_MAX)
        .map(|i| format!("get t/many/{i}"))
        .collect();
    let gets_129: Vec<&str> = gets.iter().map(String::as_str).collect();
    let gets_128 = &gets_129[..TXN_OPS_MAX];

    vec![
        // --- an empty store; compaction 0 is allowed before any compaction (rev 1)
        ok("get foo"),
        ok("get foo -w json"),
        ok("compaction 0"),
        // --- put
        ok("put foo bar"),                // 2
        ok("put foo bar2 --prev-kv"),     // 3
        ok("put foo --ignore-value"),     // 4: keeps bar2
        ok("put foo baz --ignore-lease"), // 5
        ok("put foo baz"),                // 6: same value still bumps
        ok("get foo -w json"),            // version 5, create 2, mod 6
        fails("put nokey --ignore-value", KEY_NOT_FOUND),
        fails("put nokey v --ignore-lease", KEY_NOT_FOUND),
        fails(
            "put foo v --lease=1234abcd",
            "Error: etcdserver: requested lease not found",
        ),
        fails(r#"put "" v"#, KEY_NOT_PROVIDED),
        ok("put foo qux --prev-kv -w json"),             // 7
        ok("put bar 1 --prev-kv -w json"),               // 8
        ok("put bar 2 --prev-kv -w json"),               // 9
        ok(r#"put "with space" "a value with spaces""#), // 10
        fails("put big", "Error: etcdserver: request is too large")
            .with_stdin(vec![b'x'; VALUE_TOO_LARGE_BYTES]),
        ok("put large").with_stdin(vec![b'y'; VALUE_LARGE_BYTES]), // 11
        ok("get large --print-value-only"),
        ok("del large"), // 12
        ok("get foo --rev=2"),
        ok("get foo --rev=3 -w json"),
        ok("get foo"),
        ok(r#"get "with space""#),
        // --- a range data set: creation order, key order, value order and versions all differ
        ok("put k/c v-2"), // 13
        ok("put k/a v-5"), // 14
        ok("put k/e v-1"), // 15
        ok("put k/b v-4"), // 16
        ok("put k/d v-3"), // 17
        ok("put k/a v-6"), // 18
        ok("put k/c v-0"), // 19
        ok("put k0 zero"), // 20: sorts after every k/ key
        ok("put u/z z"),   // 21
        ok("put u/é e"),   // 22: bytes c3 a9, after z
        ok("put u/ü u"),   // 23: bytes c3 bc
        // --- get
        ok("get k/a"),
        ok("get k/a k/d"),
        ok("get k/d k/a"),
        ok("get k/a k/a"),
        ok("get k/ --prefix"),
        ok("get k/c --from-key"),
        ok("get k/c --from-key --limit 2 -w json"),
        ok(r#"get "" --prefix --keys-only"#),
        ok(r#"get "" --from-key --keys-only"#),
        fails(r#"get """#, KEY_NOT_PROVIDED),
        ok("get u/ --prefix"),
        ok("get missing"),
        ok("get missing -w json"),
        ok("get k/ --prefix --limit 2"),
        ok("get k/ --prefix --limit 2 -w json"),
        ok("get k/ --prefix --limit 10 -w json"),
        ok("get k/ --prefix --limit=-1 -w json"), // negative limit: no limit
        ok("get k/ --prefix --order DESCEND"),
        ok("get k/ --prefix --order ASCEND"),
        ok("get k/ --prefix --sort-by CREATE"),
        ok("get k/ --prefix --sort-by CREATE --order DESCEND"),
        ok("get k/ --prefix --sort-by MODIFY --order ASCEND"),
        ok("get k/ --prefix --sort-by MODIFY --order DESCEND --limit 2 -w json"),
        ok("get k/ --prefix --sort-by VALUE"),
        ok("get k/ --prefix --sort-by VALUE --order DESCEND --limit 3"),
        ok("get k/ --prefix --sort-by VALUE --order DESCEND --limit 3 -w json"),
        ok("get k/ --prefix --sort-by VERSION"),
        ok("get k/ --prefix --sort-by VERSION --order DESCEND"),
        ok("get k/ --prefix --sort-by KEY --order DESCEND"),
        ok("get k/ --prefix --sort-by KEY --order ASCEND --limit 2 -w json"),
        ok("get k/ --prefix --keys-only"),
        ok("get k/ --prefix --keys-only -w json"),
        ok("get k/ --prefix --keys-only --sort-by VALUE"),
        ok("get k/ --prefix --print-value-only"),
        ok("get k/a --print-value-only"),
        ok("get k/a --consistency s"),
        ok("get k/ --prefix --consistency s -w json"),
        ok("get k/a --rev=14"),
        ok("get k/a --rev=13"),
        ok("get k/a --rev=-1"), // negative revision: latest
        ok("get k/ --prefix --rev=16 -w json"),
        ok("get k/ --prefix --rev=16 --limit 1 -w json"),
        ok("get k/ --prefix --rev=17 --sort-by MODIFY --order DESCEND"),
        ok("get k/ --prefix --rev=23"),
        fails("get k/a --rev=24", FUTURE_REV),
        fails("get k/a --rev=1000", FUTURE_REV),
        // --- del
        ok("del missing -w json"),
        ok("del missing"),                       // 0 deleted, no new revision
        ok("get foo -w json"),                   // header still at 23
        ok("del k/a"),                           // 24
        ok("del k/b k/d"),                       // 25: k/b, k/c
        ok("del k/e --prev-kv"),                 // 26
        ok("del k/ --prefix"),                   // 27: k/d
        ok("del k/ --prefix"),                   // nothing
        ok("del u/ --prefix --prev-kv -w json"), // 28
        fails(r#"del """#, KEY_NOT_PROVIDED),
        ok("put r/1 1"),                    // 29
        ok("put r/2 2"),                    // 30
        ok("put r/3 3"),                    // 31
        ok("put s 4"),                      // 32
        ok("del r/2 --from-key"),           // 33: r/2, r/3, s and "with space"
        ok("del r/9 --from-key --prev-kv"), // nothing
        ok(r#"get "" --prefix -w json --keys-only"#),
        ok("put k/a again"), // 34: recreated, version 1
        ok("get k/a -w json"),
        // --- txn
        ok("put t/a x"), // 35
        ok("put t/b y"), // 36
        txn(
            "",
            &[
                r#"mod("t/a") = "35""#,
                r#"create("t/a") = "35""#,
                r#"ver("t/a") = "1""#,
                r#"value("t/a") = "x""#,
                r#"mod("t/b") > "35""#,
                r#"ver("t/b") < "2""#,
                r#"value("t/b") != "z""#,
            ],
            &["put t/c c", "get t/a", "del t/b"],
            &["put t/fail f"],
        ), // 37: one revision for the whole txn
        ok("get t/ --prefix -w json"),
        txn(
            "",
            &[r#"value("t/a") = "nope""#],
            &["put t/s s"],
            &["put t/f f", "get t/f", "del t/a"],
        ), // 38: failure branch
        ok("get t/ --prefix"),
        txn(
            "",
            &[
                r#"create("t/missing") = "0""#,
                r#"mod("t/missing") = "0""#,
                r#"ver("t/missing") = "0""#,
                r#"mod("t/missing") < "1""#,
            ],
            &["get t/ --prefix --keys-only"],
            &["put t/wrong w"],
        ), // read-only: no new revision
        txn(
            "",
            &[r#"create("t/missing") > "0""#],
            &["put t/wrong w"],
            &[],
        ),
        // VALUE compares against a missing key always fail, even != and <.
        txn(
            "",
            &[r#"value("t/missing") != "x""#],
            &["put t/wrong w"],
            &["put t/vm 1"],
        ), // 39
        txn("", &[r#"value("t/missing") = """#], &["put t/wrong w"], &[]),
        txn(
            "",
            &[r#"value("t/missing") < "z""#],
            &["put t/wrong w"],
            &[],
        ),
        txn(
            "",
            &[r#"value("t/c") > "b""#, r#"value("t/c") < "d""#],
            &["get t/c"],
            &[],
        ),
        txn("", &[], &["put t/e e", "get t/e"], &[]), // 40: reads its own write
        txn("", &[], &["del t/none"], &[]),           // deletes nothing: no new revision
        ok("get foo -w json"),                        // header still at 40
        txn(
            "-w json",
            &[r#"ver("t/e") = "1""#],
            &["put t/e e2 --prev-kv", "get t/e", "del t/none"],
            &["get t/e"],
        ), // 41
        txn(
            "-w json",
            &[r#"ver("t/e") = "1""#],
            &["put t/wrong w"],
            &["get t/ --prefix --keys-only"],
        ),
        txn(
            "",
            &[r#"mod("t/e") = "41""#],
            &["put t/x 1"],
            &["put t/x 2"],
        ), // 42: the same key in both branches is fine
        txn("", &[], &["del t/ --prefix --prev-kv"], &[]), // 43
        txn_fails(&[], &["put t/d 1", "put t/d 2"], &[], DUPLICATE_KEY),
        txn_fails(&[], &["put t/d 1", "del t/ --prefix"], &[], DUPLICATE_KEY),
        txn_fails(&[], &["del t/ --prefix", "put t/d 1"], &[], DUPLICATE_KEY),
        txn_fails(
            &[r#"ver("t/d") = "5""#],
            &[],
            &["put t/d 1", "put t/d 2"],
            DUPLICATE_KEY,
        ),
        txn_fails(&[r#"value("") = "x""#], &[], &[], KEY_NOT_PROVIDED),
        txn_fails(&[], &[r#"put "" x"#], &[], KEY_NOT_PROVIDED),
        txn_fails(&[], &[r#"get """#], &[], KEY_NOT_PROVIDED),
        txn("", &[], gets_128, &[]),
        txn_fails(
            &[],
            &gets_129,
            &[],
            "Error: etcdserver: too many operations in txn request",
        ),
        txn_fails(
            &[],
            &[],
            &gets_129,
            "Error: etcdserver: too many operations in txn request",
        ),
        ok("get foo -w json"), // still 43
        // --- compaction
        ok("compaction 5"),
        fails("compaction 5", COMPACTED),
        fails("compaction 4", COMPACTED),
        fails("compaction -- -1", COMPACTED),
        fails("compaction 44", FUTURE_REV),
        fails("compaction 100000", FUTURE_REV),
        ok("compaction 14 --physical"),
        fails("get foo --rev=13", COMPACTED),
        fails("get k/ --prefix --rev=5", COMPACTED),
        ok("get k/ --prefix --rev=14 -w json"), // the compacted revision itself is readable
        ok("get foo --rev=15"),
        ok("get foo -w json"), // compaction does not change the revision
        ok("put foo after"),   // 44
        ok("compaction 44"),
        fails("compaction 44", COMPACTED),
        fails("get foo --rev=43", COMPACTED),
        ok("get foo --rev=44"),
        ok("del foo --prev-kv"), // 45
        ok(r#"get "" --prefix -w json"#),
        ok(r#"del "" --prefix"#), // 46
        ok(r#"get "" --prefix -w json"#),
        // --- cluster and maintenance views
        ok("endpoint health"),
        ok("endpoint health -w json"),
        ok("endpoint status").with_shape(Shape::EndpointStatus),
        ok("endpoint status -w json"),
        ok("member list").with_shape(Shape::MemberList),
        ok("member list -w json"),
        ok("alarm list"),
        ok("alarm list -w json"),
        ok("alarm disarm"),
        ok("defrag"),
    ]
}

/// What one etcdctl run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// The exit code, or why there is none.
    exit: String,
    stdout: String,
    stderr: String,
}

/// Where one side's server listens; everything here is replaced by a placeholder.
struct Side {
    label: &'static str,
    client_url: String,
    client_addr: String,
    peer_url: String,
    peer_addr: String,
}

impl Side {
    fn of(label: &'static str, m: &Member) -> Side {
        Side {
            label,
            client_url: m.endpoint(),
            client_addr: m.addr(),
            peer_url: format!("http://127.0.0.1:{}", m.peer_port),
            peer_addr: format!("127.0.0.1:{}", m.peer_port),
        }
    }
}

fn run_etcdctl(side: &Side, step: &Step, timeout: Duration) -> Outcome {
    let mut child = Command::new("etcdctl")
        .arg(format!("--endpoints={}", side.client_url))
        .arg(format!("--command-timeout={COMMAND_TIMEOUT_S}s"))
        .arg("--dial-timeout=5s")
        .args(&step.args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ETCDCTL_API", "3")
        .stdin(if step.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is on PATH (checked at start)");
    let stdin = child.stdin.take();
    let input = step.stdin.clone();
    let writer = thread::spawn(move || {
        if let (Some(mut pipe), Some(input)) = (stdin, input) {
            // etcdctl may exit before reading everything (e.g. on a bad argument).
            let _ = pipe.write_all(&input);
        }
    });
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let exit = loop {
        if let Some(status) = child.try_wait().expect("wait for etcdctl") {
            break match status.code() {
                Some(code) => code.to_string(),
                None => format!("killed by a signal ({status})"),
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break format!("killed after {} s (timeout)", timeout.as_secs());
        }
        thread::sleep(Duration::from_millis(2));
    };
    writer.join().expect("stdin writer");
    let stdout = String::from_utf8_lossy(&out_reader.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned();
    Outcome {
        exit,
        stdout,
        stderr,
    }
}

/// Runs the whole script against one side, in order, within [`SESSION_BUDGET`].
fn run_session(side: &Side, script: &[Step]) -> Vec<Outcome> {
    let deadline = Instant::now() + SESSION_BUDGET;
    script
        .iter()
        .map(|step| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Outcome {
                    exit: format!(
                        "not run: the session budget of {} s was used up",
                        SESSION_BUDGET.as_secs()
                    ),
                    stdout: String::new(),
                    stderr: String::new(),
                };
            }
            let raw = run_etcdctl(side, step, STEP_TIMEOUT.min(left));
            normalise(side, step.shape, raw)
        })
        .collect()
}

/// Replaces the run of characters after each `marker` that satisfy `part` with `placeholder`.
fn replace_after(
    text: &str,
    marker: &str,
    placeholder: &str,
    part: impl Fn(char) -> bool,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        let after = at + marker.len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let run = rest.find(|c: char| !part(c)).unwrap_or(rest.len());
        if run > 0 {
            out.push_str(placeholder);
            rest = &rest[run..];
        }
    }
    out.push_str(rest);
    out
}

/// JSON number fields that hold ids, terms, raft indexes or sizes (etcdctl `-w json`).
const JSON_NUMBER_FIELDS_NORMALISED: [&str; 10] = [
    "cluster_id",
    "member_id",
    "raft_term",
    "ID",
    "leader",
    "raftTerm",
    "raftIndex",
    "raftAppliedIndex",
    "dbSize",
    "dbSizeInUse",
];

/// Replaces the comma-separated columns `columns` of every line with placeholders.
fn normalise_columns(text: &str, columns: &[(usize, &str)]) -> String {
    text.split('\n')
        .map(|line| {
            let mut fields: Vec<&str> = line.split(", ").collect();
            for &(i, placeholder) in columns {
                if i < fields.len() && fields.len() > 1 {
                    fields[i] = placeholder;
                }
            }
            fields.join(", ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn normalise_text(side: &Side, text: &str) -> String {
    let mut t = text
        .replace(&side.client_url, "<client-url>")
        .replace(&side.peer_url, "<peer-url>")
        .replace(&side.client_addr, "<client-addr>")
        .replace(&side.peer_addr, "<peer-addr>");
    for field in JSON_NUMBER_FIELDS_NORMALISED {
        t = replace_after(&t, &format!("\"{field}\":"), &format!("<{field}>"), |c| {
            c.is_ascii_digit() || c == '-'
        });
    }
    // etcdctl's client-side log lines: {"level":"warn","ts":"…","target":"endpoint://client-<uuid>/…",…}
    t = replace_after(&t, "\"ts\":\"", "<ts>", |c| c != '"');
    t = replace_after(&t, "endpoint://client-", "<uuid>", |c| {
        c.is_ascii_hexdigit() || c == '-'
    });
    // endpoint health: "… successfully committed proposal: took = 1.2ms", or `"took":"1.2ms"` in JSON
    t = replace_after(&t, "\"took\":\"", "<duration>", |c| c != '"');
    replace_after(&t, "took = ", "<duration>", |c| !c.is_whitespace())
}

fn normalise(side: &Side, shape: Shape, raw: Outcome) -> Outcome {
    let stdout = normalise_text(side, &raw.stdout);
    let stdout = match shape {
        Shape::Plain => stdout,
        Shape::EndpointStatus => normalise_columns(
            &stdout,
            &[
                (1, "<member-id>"),
                (3, "<db-size>"),
                (6, "<raft-term>"),
                (7, "<raft-index>"),
                (8, "<raft-applied-index>"),
            ],
        ),
        Shape::MemberList => normalise_columns(&stdout, &[(0, "<member-id>")]),
    };
    Outcome {
        exit: raw.exit,
        stdout,
        stderr: normalise_text(side, &raw.stderr),
    }
}

/// Panics unless etcd did what each step says it should: keeps the script honest.
fn check_reference(script: &[Step], reference: &[Outcome], label: &str) {
    let mut wrong = Vec::new();
    for (i, (step, out)) in script.iter().zip(reference).enumerate() {
        let fine = match step.expect {
            Expect::Success => out.exit == "0",
            Expect::Failure(text) => out.exit != "0" && out.stderr.contains(text),
        };
        if !fine {
            wrong.push(format!(
                "#{i} {}\n  expected {:?}, got exit {}\n  stdout: {}\n  stderr: {}",
                step.describe(),
                step.expect,
                out.exit,
                out.stdout,
                out.stderr
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the script does not do what it says against {label}; fix the script:\n{}",
        wrong.join("\n")
    );
}

fn first_difference(a: &str, b: &str) -> usize {
    a.bytes()
        .zip(b.bytes())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// A field for the report: whole if short, else an excerpt around the first difference.
fn excerpt(text: &str, diff_at: usize) -> String {
    if text.len() <= REPORT_FIELD_CHARS_MAX {
        return text.to_string();
    }
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let start = floor(diff_at.saturating_sub(300));
    let end = floor(diff_at + 700);
    format!(
        "[{} bytes; showing bytes {start}..{end}, first difference at byte {diff_at}]\n…{}…",
        text.len(),
        &text[start..end]
    )
}

fn indent(text: &str) -> String {
    if text.is_empty() {
        return "      (empty)".to_string();
    }
    text.lines()
        .map(|l| format!("      |{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every step whose outcomes differ, formatted for a human; empty when the sessions agree.
fn differences(
    script: &[Step],
    left: (&str, &[Outcome]),
    right: (&str, &[Outcome]),
) -> Vec<String> {
    let (ln, lo) = left;
    let (rn, ro) = right;
    let mut report = Vec::new();
    for (i, ((step, l), r)) in script.iter().zip(lo).zip(ro).enumerate() {
        if l == r {
            continue;
        }
        let mut entry = format!("#{i} {}\n", step.describe().trim_end());
        let fields = [
            ("exit", &l.exit, &r.exit),
            ("stdout", &l.stdout, &r.stdout),
            ("stderr", &l.stderr, &r.stderr),
        ];
        for (name, a, b) in fields {
            if a == b {
                entry.push_str(&format!("  {name}: same on both\n"));
                continue;
            }
            let at = first_difference(a, b);
            entry.push_str(&format!(
                "  {name} DIFFERS\n    {ln}:\n{}\n    {rn}:\n{}\n",
                indent(&excerpt(a, at)),
                indent(&excerpt(b, at))
            ));
        }
        report.push(entry);
    }
    report
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn require_etcd() {
    for bin in ["etcd", "etcdctl"] {
        assert!(
            on_path(bin),
            "`{bin}` is not on PATH: the differential test needs a real etcd 3.4 server and etcdctl; \
             install the etcd-server and etcd-client packages (apt-get install etcd-server etcd-client; \
             the CI script installs them)"
        );
    }
}

fn log_tail(data_dir: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn print_transcript(script: &[Step], outcomes: &[Outcome]) {
    if std::env::var_os("DIFFERENTIAL_TRANSCRIPT").is_none() {
        return;
    }
    for (i, (step, out)) in script.iter().zip(outcomes).enumerate() {
        println!(
            "#{i} {}\n  exit {}\n  stdout:\n{}\n  stderr:\n{}",
            step.describe().trim_end(),
            out.exit,
            indent(&excerpt(&out.stdout, 0)),
            indent(&excerpt(&out.stderr, 0))
        );
    }
}

/// Starts both servers fresh with the same flags, runs the session on both at once and returns
/// the report of differences (empty if none).
fn compare(reference_kind: Kind, candidate_kind: Kind) -> (Vec<String>, usize, String) {
    require_etcd();
    let script = script();
    let ref_dir = tempfile::tempdir().expect("tempdir");
    let cand_dir = tempfile::tempdir().expect("tempdir");
    let ref_data = ref_dir.path().join("member");
    let cand_data = cand_dir.path().join("member");
    let reference = Member::start(reference_kind, &ref_data, &[]);
    let candidate = Member::start(candidate_kind, &cand_data, &[]);
    let ref_name = "etcd";
    let cand_name = match candidate_kind {
        Kind::Etcd => "etcd (second)",
        Kind::Cairn => "cairn",
    };
    let ref_side = Side::of(ref_name, &reference);
    let cand_side = Side::of(cand_name, &candidate);

    let started = Instant::now();
    let (ref_out, cand_out) = thread::scope(|s| {
        let r = s.spawn(|| run_session(&ref_side, &script));
        let c = s.spawn(|| run_session(&cand_side, &script));
        (
            r.join().expect("reference session"),
            c.join().expect("candidate session"),
        )
    });
    println!(
        "differential: {} etcdctl commands against {} and {} in {:.1?}",
        script.len(),
        ref_side.label,
        cand_side.label,
        started.elapsed()
    );
    print_transcript(&script, &ref_out);
    check_reference(&script, &ref_out, ref_side.label);
    let report = differences(&script, (ref_name, &ref_out), (cand_name, &cand_out));
    let tail = if report.is_empty() {
        String::new()
    } else {
        log_tail(&cand_data, 30)
    };
    drop(candidate);
    drop(reference);
    (report, script.len(), tail)
}

fn assert_no_differences(report: Vec<String>, total: usize, candidate: &str, log_tail: String) {
    // One line per differing step first, then the details.
    let index: Vec<&str> = report.iter().filter_map(|e| e.lines().next()).collect();
    assert!(
        report.is_empty(),
        "{} of {total} etcdctl commands differ between etcd (reference) and {candidate} \
         (after normalising ids, terms, URLs and timings):\n  {}\n\n{}\n--- last lines of the {candidate} log ---\n{log_tail}",
        report.len(),
        index.join("\n  "),
        report.join("\n")
    );
}

#[test]
fn etcdctl_session_matches_etcd() {
    let (report, total, tail) = compare(Kind::Etcd, Kind::Cairn);
    assert_no_differences(report, total, "cairn", tail);
}

/// Two etcds must agree under the normalisation: proves it covers everything that legitimately
/// differs between servers, so a difference against Cairn is a real one.
#[test]
fn etcd_session_is_reproducible_under_normalisation() {
    let (report, total, tail) = compare(Kind::Etcd, Kind::Etcd);
    assert_no_differences(report, total, "a second etcd", tail);
}

/// The normalisation must leave revisions, values, counts and errors alone.
#[test]
fn normalisation_keeps_what_must_match() {
    let side = |port: u16| Side {
        label: "x",
        client_url: format!("http://127.0.0.1:{port}"),
        client_addr: format!("127.0.0.1:{port}"),
        peer_url: format!("http://127.0.0.1:{}", port + 1),
        peer_addr: format!("127.0.0.1:{}", port + 1),
    };
    let (a, b) = (side(1000), side(2000));
    let n = |s: &Side, text: &str| normalise_text(s, text);
    let header = |cluster: u64, member: u64, rev: u64, term: u64, value: &str| {
        format!(
            r#"{{"header":{{"cluster_id":{cluster},"member_id":{member},"revision":{rev},"raft_term":{term}}},"kvs":[{{"key":"Zm9v","value":"{value}"}}],"count":1}}"#
        )
    };
    // Ids, terms and ports differ legitimately.
    assert_eq!(
        n(&a, &header(1, 2, 5, 2, "YQ==")),
        n(&b, &header(3, 4, 5, 7, "YQ=="))
    );
    assert_eq!(
        n(
            &a,
            "http://127.0.0.1:1000 is healthy: successfully committed proposal: took = 1.2ms"
        ),
        n(
            &b,
            "http://127.0.0.1:2000 is healthy: successfully committed proposal: took = 950µs"
        )
    );
    // Revisions, values, counts and error texts do not.
    assert_ne!(
        n(&a, &header(1, 2, 5, 2, "YQ==")),
        n(&b, &header(1, 2, 6, 2, "YQ=="))
    );
    assert_ne!(
        n(&a, &header(1, 2, 5, 2, "YQ==")),
        n(&b, &header(1, 2, 5, 2, "Yg=="))
    );
    assert_ne!(n(&a, r#""count":1"#), n(&b, r#""count":2"#));
    assert_ne!(
        n(&a, "Error: etcdserver: key not found"),
        n(&b, "Error: etcdserver: key is not provided")
    );
    assert_ne!(
        n(
            &a,
            r#"{"level":"warn","ts":"t1","error":"rpc error: code = InvalidArgument desc = x"}"#
        ),
        n(
            &b,
            r#"{"level":"warn","ts":"t2","error":"rpc error: code = NotFound desc = x"}"#
        )
    );
    // Status columns: version and leadership are compared, ids/sizes/terms/indexes are not.
    let status = |id: &str, size: &str, leader: &str, term: u64| {
        format!("<client-url>, {id}, 3.4.23, {size}, {leader}, false, {term}, 9, 9, ")
    };
    let cols = |t: &str| {
        normalise(
            &a,
            Shape::EndpointStatus,
            Outcome {
                exit: "0".into(),
                stdout: t.into(),
                stderr: String::new(),
            },
        )
        .stdout
    };
    assert_eq!(
        cols(&status("abc", "20 kB", "true", 2)),
        cols(&status("def", "1 MB", "true", 3))
    );
    assert_ne!(
        cols(&status("abc", "20 kB", "true", 2)),
        cols(&status("abc", "20 kB", "false", 2))
    );
    // And the report lists every differing step.
    let script = vec![ok("get a"), ok("get b"), ok("get c")];
    let out = |s: &str| Outcome {
        exit: "0".into(),
        stdout: s.into(),
        stderr: String::new(),
    };
    let left = vec![out("1"), out("2"), out("3")];
    let right = vec![out("1"), out("x"), out("y")];
    let report = differences(&script, ("etcd", &left), ("cairn", &right));
    assert_eq!(report.len(), 2);
    assert!(report[0].contains("get b") && report[1].contains("get c"));
}
