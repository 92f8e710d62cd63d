//! In-tree fuzzing on stable Rust: hostile bytes through every decoder that takes input from
//! outside the process (client requests, the JSON gateway, committed raft entries, peer messages,
//! the stored membership), checked against properties rather than expected answers.
//!
//! Each target (see [`targets`]) has a corpus under `server/fuzz/corpus/<target>/`: seeds that
//! [`seeds`] writes from real encoded messages of every kind (`CAIRN_FUZZ_WRITE_SEEDS=1`
//! rewrites them; a test checks that the files match the generator), plus every input that ever
//! failed. A run replays every corpus file, then mutates corpus entries (see [`mutate`]) with a
//! seeded RNG until its time budget is spent. An input that panics, breaks a property or takes
//! longer than [`EXEC_SECS_MAX`] is written to the corpus as `crash-<hash>` and fails the test with
//! its path: once fixed, it stays as a regression seed.
//!
//! Knobs (environment): `CAIRN_FUZZ_SECS` (mutation seconds per target, default
//! [`DEFAULT_SECS`]), `CAIRN_FUZZ_SEED` (default fixed, so CI runs are reproducible),
//! `CAIRN_FUZZ_GROW=1` (also save inputs that reach an outcome no corpus entry reached, as
//! `grown-<hash>`). Each target prints its numbers (execs, execs/s, corpus, outcomes) on stderr.
//!
//! Coverage is approximated by outcomes: each target names what an input did (which request,
//! which error); an input with a new outcome joins the in-memory corpus for the rest of the run.

mod mutate;
mod seeds;
mod targets;

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Mutation time per target when `CAIRN_FUZZ_SECS` is not set: six targets, two cores, well
/// inside CI's budget.
const DEFAULT_SECS: u64 = 6;
const DEFAULT_SEED: u64 = 0xCA1E_F022;
/// One input taking longer than this is a finding (a hostile request must not stall a member).
const EXEC_SECS_MAX: u64 = 10;
/// A failing input is printed (hex) with the failure when it is at most this long, so a CI log
/// alone reproduces it.
const PRINTED_INPUT_BYTES_MAX: usize = 4096;

/// What an input did (a short label), or which property it broke.
type Outcome = Result<String, String>;

/// A decoder under test and the properties its output must have.
pub(crate) struct Target {
    pub name: &'static str,
    /// Leading bytes that select a variant (request type, route): mutated only as bytes.
    pub header_bytes: usize,
    pub format: Format,
    pub run: fn(&[u8]) -> Outcome,
}

/// How the mutator may read the input behind the header, beyond bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Format {
    Protobuf,
    Json,
}

pub(crate) fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// FNV-1a: a stable name for an input.
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn load_corpus(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Runs one input, turning a panic or an overlong run into a failure.
fn execute(target: &Target, input: &[u8]) -> Outcome {
    let start = Instant::now();
    let outcome = match panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))) {
        Ok(outcome) => outcome,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {message}"))
        }
    };
    let elapsed = start.elapsed();
    if outcome.is_ok() && elapsed > Duration::from_secs(EXEC_SECS_MAX) {
        return Err(format!("took {elapsed:?}"));
    }
    outcome
}

fn fail(target: &Target, path: &Path, input: &[u8], why: &str) -> ! {
    let hex = if input.len() <= PRINTED_INPUT_BYTES_MAX {
        input.iter().map(|b| format!("{b:02x}")).collect::<String>()
    } else {
        format!("({} bytes)", input.len())
    };
    panic!(
        "fuzz target {}: {why}\n  input: {}\n  hex: {hex}",
        target.name,
        path.display()
    )
}

/// What a run did, for the report.
#[derive(Debug)]
pub(crate) struct Stats {
    pub execs: u64,
    pub secs: f64,
    pub corpus_files: usize,
    pub corpus_in_memory: usize,
    pub outcomes: usize,
}

/// Replays the target's corpus, then fuzzes it for `secs` seconds from `seed`.
pub(crate) fn run(target: &Target, secs: u64, seed: u64, grow: bool) -> Stats {
    let dir = corpus_root().join(target.name);
    let files = load_corpus(&dir);
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    let mut outcomes = HashSet::new();
    for (path, input) in &files {
        match execute(target, input) {
            Ok(label) => {
                outcomes.insert(label);
            }
            Err(why) => fail(target, path, input, &why),
        }
    }
    let corpus_files = files.len();
    let mut corpus: Vec<Vec<u8>> = files.into_iter().map(|(_, bytes)| bytes).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ hash(target.name.as_bytes()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut execs = 0;
    while Instant::now() < deadline {
        let input = {
            let base = &corpus[rng.random_range(0..corpus.len())];
            mutate::mutate(&mut rng, base, &corpus, target.header_bytes, target.format)
        };
        execs += 1;
        match execute(target, &input) {
            Ok(label) => {
                if outcomes.insert(label) {
                    if grow {
                        let path = dir.join(format!("grown-{:016x}", hash(&input)));
                        std::fs::write(&path, &input).expect("write a grown corpus entry");
                    }
                    corpus.push(input);
                }
            }
            Err(why) => {
                let path = dir.join(format!("crash-{:016x}", hash(&input)));
                std::fs::write(&path, &input).expect("write the failing input");
                fail(target, &path, &input, &why);
            }
        }
    }
    let stats = Stats {
        execs,
        secs: start.elapsed().as_secs_f64(),
        corpus_files,
        corpus_in_memory: corpus.len(),
        outcomes: outcomes.len(),
    };
    eprintln!(
        "fuzz {}: {} execs in {:.0} s ({:.0}/s), corpus {} files + {} found, {} outcomes, seed {seed:#x}",
        target.name,
        stats.execs,
        stats.secs,
        stats.execs as f64 / stats.secs.max(1e-9),
        stats.corpus_files,
        stats.corpus_in_memory - stats.corpus_files,
        stats.outcomes,
    );
    stats
}

/// Runs `target` with the budget and seed from the environment.
fn fuzz(target: &Target) {
    let secs = env_u64("CAIRN_FUZZ_SECS", DEFAULT_SECS);
    let seed = env_u64("CAIRN_FUZZ_SEED", DEFAULT_SEED);
    let grow = std::env::var("CAIRN_FUZZ_GROW").is_ok_and(|v| v == "1");
    let stats = run(target, secs, seed, grow);
    assert!(
        secs == 0 || stats.execs > 0,
        "{}: no input ran in {secs} s",
        target.name
    );
}

#[test]
fn requests() {
    fuzz(&targets::REQUEST);
}

#[test]
fn gateway_json() {
    fuzz(&targets::GATEWAY);
}

#[test]
fn internal_requests() {
    fuzz(&targets::INTERNAL_REQUEST);
}

#[test]
fn member_changes() {
    fuzz(&targets::MEMBER_CHANGE);
}

#[test]
fn raft_batches() {
    fuzz(&targets::RAFT_BATCH);
}

#[test]
fn stored_membership() {
    fuzz(&targets::MEMBERSHIP);
}

#[test]
fn mutations_are_deterministic_and_failures_are_kept() {
    let seeds = [
        b"\x0a\x03abc\x10\x05".to_vec(),
        b"{\"key\":\"YQ==\"}".to_vec(),
    ];
    let run = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..200)
            .map(|i| mutate::mutate(&mut rng, &seeds[i % 2], &seeds, 0, Format::Protobuf))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    // A target that fails on one byte value: the harness names the input and keeps it.
    let dir = tempfile::tempdir().unwrap();
    let target = Target {
        name: "self-test",
        header_bytes: 0,
        format: Format::Protobuf,
        run: |input| match input.first() {
            Some(0x42) => panic!("the bug"),
            _ => Ok(String::new()),
        },
    };
    let path = dir.path().join("crash");
    let failure = panic::catch_unwind(|| fail(&target, &path, &[0x42], "panicked: the bug"));
    let message = failure.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("hex: 42"), "{message}");
    assert!(execute(&target, &[0x42]).unwrap_err().contains("the bug"));
    assert_eq!(execute(&target, &[1]), Ok(String::new()));
}
