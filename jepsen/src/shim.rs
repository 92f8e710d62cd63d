//! The LD_PRELOAD shim behind the `clock-skew`, `fsync-fail` and `lose-unsynced` faults
//! (`shim.c`): the harness
//! compiles it with the system's C compiler (`$CC`, else `cc`) into the cluster's directory the
//! first time a member needs it, and starts that member with it preloaded.
//!
//! It only sees calls made through libc's dynamic symbols: Cairn's (Rust, and RocksDB's C++)
//! do; etcd's Go runtime reads clocks through the vDSO and syncs by raw system calls, so the
//! shim has no effect on etcd (the `fsync-fail` and `lose-unsynced` faults notice and say so).
//!
//! For `lose-unsynced`, the shim keeps a journal of what is durable: each file's size when it
//! was created and when each fsync or fdatasync on it began. [`lose_unsynced`] then plays a crash
//! that loses the page cache: it cuts every journaled file back to its last durable size. Files
//! the journal never saw (they predate the member's start) are left whole, and directory
//! entries (renames, deletes) are kept: the model loses unsynced data, not unsynced metadata.

use std::collections::HashMap;
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
    /// Where the shim journals file creations and syncs (see [`lose_unsynced`]).
    pub sync_journal: Option<PathBuf>,
}

impl Default for ShimConfig {
    fn default() -> ShimConfig {
        ShimConfig {
            clock_offset_ms: 0,
            clock_rate: 1.0,
            fsync_fail_file: None,
            fsync_tripped_file: None,
            sync_journal: None,
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
            ("CAIRN_JEPSEN_SYNC_JOURNAL", &self.sync_journal),
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

/// What [`lose_unsynced`] cut.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loss {
    /// Lines in the journal: creations and syncs seen.
    pub journaled: usize,
    /// Files cut back to their last durable size.
    pub files: usize,
    /// Bytes dropped from them.
    pub bytes: u64,
}

/// Cuts every file under `data_dir` named in `journal` back to its last durable size, then
/// deletes the journal. The process that wrote it must be dead. A missing journal means no
/// file was created or synced through the shim (a Go binary, or no shim).
pub fn lose_unsynced(journal: &Path, data_dir: &Path) -> anyhow::Result<Loss> {
    let text = match std::fs::read_to_string(journal) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loss::default()),
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!("reading {}", journal.display())))
        }
    };
    // Syncs on one file can finish, and be journaled, out of order: the largest size synced since
    // the file's creation is durable. A creation starts over (the name may be reused).
    let mut durable: HashMap<&str, u64> = HashMap::new();
    let mut loss = Loss::default();
    for line in text.lines() {
        let mut fields = line.splitn(3, ' ');
        let (Some(kind), Some(size), Some(path)) = (fields.next(), fields.next(), fields.next())
        else {
            anyhow::bail!("{}: malformed line {line:?}", journal.display());
        };
        let size: u64 = size
            .parse()
            .with_context(|| format!("{}: malformed line {line:?}", journal.display()))?;
        loss.journaled += 1;
        match kind {
            "c" => {
                durable.insert(path, size);
            }
            "s" => {
                let at = durable.entry(path).or_insert(size);
                *at = (*at).max(size);
            }
            _ => anyhow::bail!("{}: malformed line {line:?}", journal.display()),
        }
    }
    for (path, size) in durable {
        let path = Path::new(path);
        if !path.starts_with(data_dir) {
            continue;
        }
        let file = match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!("opening {}", path.display())))
            }
        };
        let len = file.metadata()?.len();
        if len > size {
            file.set_len(size)
                .with_context(|| format!("cutting {} to {size} bytes", path.display()))?;
            loss.files += 1;
            loss.bytes += len - size;
        }
    }
    std::fs::remove_file(journal)?;
    Ok(loss)
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

    /// Real processes that preload the shim journal what they create and sync, and a loss cuts
    /// each file back to what was synced: unsynced appends and never-synced files go, synced data
    /// and files outside the data directory stay.
    #[test]
    fn a_loss_cuts_files_back_to_what_was_synced() {
        let dir = tempfile::tempdir().unwrap();
        let library = build(dir.path()).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let journal = dir.path().join("journal");
        let config = ShimConfig {
            sync_journal: Some(journal.clone()),
            ..ShimConfig::default()
        };
        let outside = dir.path().join("outside");
        let script = format!(
            "printf synced > a && sync a && printf +lost >> a && printf never > b && \
             printf kept > {}",
            outside.display()
        );
        let status = std::process::Command::new("sh")
            .args(["-c", &script])
            .current_dir(&data)
            .envs(config.env(&library))
            .status()
            .unwrap();
        assert!(status.success());
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        assert_eq!(read(&data.join("a")), "synced+lost");
        let loss = lose_unsynced(&journal, &data).unwrap();
        assert_eq!(read(&data.join("a")), "synced");
        assert_eq!(read(&data.join("b")), "");
        assert_eq!(read(&outside), "kept");
        assert_eq!((loss.files, loss.bytes), (2, 5 + 5));
        assert!(loss.journaled >= 4, "{loss:?}");
        assert!(!journal.exists());
        assert_eq!(lose_unsynced(&journal, &data).unwrap(), Loss::default());
    }
}
