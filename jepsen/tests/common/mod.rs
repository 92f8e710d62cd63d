//! Shared by the tests that drive real etcd through the `cairn-jepsen` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

const ETCD: &str = "/usr/bin/etcd";

/// `target/<profile>/cairn`, beside `target/<profile>/deps/<this test>`, if `cargo test
/// --workspace` (or `cargo build -p cairn-server`) built it there.
#[allow(dead_code)] // not every test file drives Cairn
pub fn cairn() -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("the test knows its executable");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps")
        .join("cairn");
    if bin.exists() {
        Some(bin)
    } else {
        println!(
            "skipped: {} not built (cargo test --workspace builds it)",
            bin.display()
        );
        None
    }
}

#[allow(dead_code)] // not every test file drives etcd
pub fn etcd() -> Option<PathBuf> {
    let path = Path::new(ETCD);
    if path.exists() {
        Some(path.to_path_buf())
    } else {
        println!("skipped: {ETCD} not found (apt-get install etcd-server)");
        None
    }
}

/// Runs `cairn-jepsen test` and returns its exit code and `results.json`.
#[allow(dead_code)] // not every test file runs the harness
pub fn run(bin: &Path, store: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn-jepsen"))
        .arg("test")
        .arg(format!("--bin={}", bin.display()))
        .arg(format!("--store={}", store.display()))
        .args(args)
        .output()
        .expect("cairn-jepsen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .unwrap_or_else(|| panic!("no report directory in the output:\n{stdout}\n{stderr}"));
    let results = std::fs::read(Path::new(dir).join("results.json")).expect("results.json");
    (
        output.status.code().expect("exited"),
        serde_json::from_slice(&results).expect("results.json parses"),
    )
}

#[allow(dead_code)] // not every test file runs the harness
pub fn stat(results: &serde_json::Value, name: &str) -> u64 {
    results["stats"][name].as_u64().unwrap_or(0)
}
