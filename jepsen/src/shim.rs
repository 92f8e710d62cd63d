//! The LD_PRELOAD shim behind the `clock-skew` and `fsync-fail` faults (`shim.c`): the harness
//! compiles it with the system's C compiler (`$CC`, else `cc`) into the cluster's directory the
//! first time a member needs it, and starts that member with it preloaded.
//!
//! It only sees calls made through libc's dynamic symbols: Cairn's (Rust, and RocksDB's C++)
//! do; etcd's Go runtime reads clocks through the vDSO and syncs by raw system calls, so the
//! shim has no effect on etcd (the `fsync-fail` fault notices and says so).

use std::path::{Path, PathBuf};

use anyhow::Context;

const SOURCE: &str = include_str!("shim.c");

/// What the shim does to one member process.
#[derive(Clone, Debug, PartialEq)]
pub struct ShimConfig {
    /// Added to the member's wall clock, ms.
    pub clock_offset_ms: i64,
    /// How fast every clock of the member runs (1.0: real speed).
    pub clock_rate: f64,
    /// While this file exists, the member's fsync and fdatasync fail with EIO.
    pub fsync_fail_file: Option<PathBuf>,
    /// Created by the shim when it failed a sync.
    pub fsync_tripped_file: Option<PathBuf>,
}

impl Default for ShimConfig {
    fn default() -> ShimConfig {
        ShimConfig {
            clock_offset_ms: 0,
            clock_rate: 1.0,
            fsync_fail_file: None,
            fsync_tripped_file: None,
        }
    }
}

impl ShimConfig {
    /// The environment that preloads `library` with this configuration.
    pub fn env(&self, library: &Path) -> Vec<(String, String)> {
        let mut env = vec![
            ("LD_PRELOAD".to_string(), library.display().to_string()),
            (
                "CAIRN_JEPSEN_CLOCK_OFFSET_MS".to_string(),
                self.clock_offset_ms.to_string(),
            ),
            (
                "CAIRN_JEPSEN_CLOCK_RATE".to_string(),
                self.clock_rate.to_string(),
            ),
        ];
        for (name, file) in [
            ("CAIRN_JEPSEN_FSYNC_FAIL_FILE", &self.fsync_fail_file),
            ("CAIRN_JEPSEN_FSYNC_TRIPPED_FILE", &self.fsync_tripped_file),
        ] {
            if let Some(file) = file {
                env.push((name.to_string(), file.display().to_string()));
            }
        }
        env
    }
}

/// Compiles the shim into `dir` and returns the shared library's path.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let source = dir.join("cairn-jepsen-shim.c");
    let library = dir.join("libcairn-jepsen-shim.so");
    std::fs::write(&source, SOURCE)?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let output = std::process::Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .with_context(|| format!("running {cc} to build the LD_PRELOAD shim"))?;
    anyhow::ensure!(
        output.status.success(),
        "{cc} failed to build the shim: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(library)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shim builds, and a real process that preloads it sees a shifted wall clock, and
    /// failing fsyncs exactly while the fail file exists.
    #[test]
    fn a_preloaded_process_sees_skewed_clocks_and_failing_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let library = build(dir.path()).unwrap();
        let date = |config: &ShimConfig| -> i64 {
            let out = std::process::Command::new("date")
                .arg("+%s")
                .envs(config.env(&library))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let real = date(&ShimConfig::default());
        let skewed = date(&ShimConfig {
            clock_offset_ms: 86_400_000,
            ..ShimConfig::default()
        });
        assert!((skewed - real - 86_400).abs() < 60, "{real} -> {skewed}");

        // `sync FILE` fsyncs the file through libc.
        let fail = dir.path().join("fail");
        let tripped = dir.path().join("tripped");
        let config = ShimConfig {
            fsync_fail_file: Some(fail.clone()),
            fsync_tripped_file: Some(tripped.clone()),
            ..ShimConfig::default()
        };
        let sync = || {
            std::process::Command::new("sync")
                .arg(&library)
                .envs(config.env(&library))
                .status()
                .unwrap()
                .success()
        };
        assert!(sync());
        assert!(!tripped.exists());
        std::fs::write(&fail, b"").unwrap();
        assert!(!sync(), "an fsync did not fail");
        assert!(tripped.exists());
    }
}
