//! Starts real etcd or Cairn clusters on 127.0.0.1 for the side-by-side runners, with the same
//! flags for both (both take etcd's), and measures them from outside: peak RSS from
//! `/proc/<pid>/status` and the disk space of their data directories.
//!
//! **Invariant:** no member process outlives its [`Cluster`]: dropping it kills (SIGKILL) and
//! reaps every member, and each member also gets `PR_SET_PDEATHSIG = SIGKILL` so a runner that
//! dies by a signal leaves none behind. Only processes started here are signalled, by pid.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{RangeRequest, StatusRequest, StatusResponse};

use crate::load;

/// How long a freshly started cluster may take until every member serves a linearizable read.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one probe (health or status), connecting included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of a member's log quoted when it exits by itself.
const LOG_TAIL_LINES: usize = 15;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    Etcd,
    Cairn,
}

impl System {
    /// The name in reports, data directories and member names.
    pub fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Cairn => "cairn",
        }
    }
}

/// Settings both systems get, with the same values (etcd's flags).
#[derive(Clone, Debug)]
pub struct Settings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// `None` for each system's default (100 000 for both).
    pub snapshot_count: Option<u64>,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub system: System,
    pub bin: PathBuf,
    pub members: usize,
    /// Parent of the members' data directories and logs; must exist.
    pub dir: PathBuf,
    pub settings: Settings,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// The running process's highest `VmHWM` read before a [`Cluster::reset_peak_rss`], bytes
    /// (0 until one).
    peak_rss_before_reset: u64,
}

/// A running cluster; dropping it kills every member.
pub struct Cluster {
    spec: ClusterSpec,
    members: Vec<Member>,
    initial_cluster: String,
}

/// Free loopback ports, all distinct: every listener is held until all are chosen.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Bytes allocated on disk under `path`, as `du` counts them: preallocated space included, a
/// file with several hard links (RocksDB checkpoints link SST files) counted once.
pub fn disk_bytes(path: &Path) -> anyhow::Result<u64> {
    fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> anyhow::Result<u64> {
        let meta = std::fs::symlink_metadata(path)?;
        if !seen.insert((meta.dev(), meta.ino())) {
            return Ok(0);
        }
        let mut total = meta.blocks() * 512;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                total += walk(&entry?.path(), seen)?;
            }
        }
        Ok(total)
    }
    walk(path, &mut HashSet::new())
}

/// `VmHWM` (peak resident set) of process `pid`, bytes.
fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM:")
}

/// The size field `field` (`VmHWM:`, `VmRSS:`) of `/proc/<pid>/status`, bytes.
fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&status, field).with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets process `pid`'s `VmHWM` to its current resident set (proc(5): `clear_refs`, 5).
fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of pid {pid}"))
}

/// One Status call with a fresh connection and a deadline.
pub async fn status(endpoint: &str) -> anyhow::Result<StatusResponse> {
    tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut client = MaintenanceClient::new(load::connect(endpoint).await?);
        Ok(client.status(StatusRequest {}).await?.into_inner())
    })
    .await
    .context("status timed out")?
}

/// One linearizable read with a fresh connection and a deadline.
async fn probe(endpoint: &str) -> anyhow::Result<()> {
    tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut client = KvClient::new(load::connect(endpoint).await?);
        client
            .range(RangeRequest {
                key: "cairn-bench/health".into(),
                ..Default::default()
            })
            .await?;
        anyhow::Ok(())
    })
    .await
    .context("read timed out")?
}

impl Cluster {
    /// Starts every member and waits until each serves a linearizable read.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        anyhow::ensure!(spec.bin.exists(), "{} not found", spec.bin.display());
        let ports = free_ports(2 * spec.members)?;
        let label = spec.system.name();
        let members: Vec<Member> = (0..spec.members)
            .map(|i| Member {
                name: format!("{label}{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: spec.dir.join(format!("{label}{i}")),
                log_path: spec.dir.join(format!("{label}{i}.log")),
                child: None,
                peak_rss_before_reset: 0,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            spec,
            members,
            initial_cluster,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let s = &self.spec.settings;
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)?;
        let mut command = Command::new(&self.spec.bin);
        command
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", member.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=cairn-bench")
            .arg(format!("--heartbeat-interval={}", s.heartbeat_interval_ms))
            .arg(format!("--election-timeout={}", s.election_timeout_ms))
            .args(s.snapshot_count.map(|n| format!("--snapshot-count={n}")))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.spec.bin.display()))?;
        self.members[i].child = Some(child);
        self.members[i].peak_rss_before_reset = 0;
        Ok(())
    }

    /// Waits until every running member serves a linearizable read; fails at once, with the
    /// end of its log, if a member exits by itself.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            loop {
                self.fail_if_exited(i)?;
                match probe(&self.endpoint(i)).await {
                    Ok(()) => break,
                    Err(e) if start.elapsed() > STARTUP_TIMEOUT => {
                        anyhow::bail!(
                            "{} not ready after {STARTUP_TIMEOUT:?}: {e:#}",
                            self.members[i].name
                        )
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        Ok(())
    }

    fn fail_if_exited(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        let Some(child) = member.child.as_mut() else {
            return Ok(());
        };
        let Some(exit) = child.try_wait()? else {
            return Ok(());
        };
        member.child = None;
        let log = std::fs::read_to_string(&member.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        anyhow::bail!(
            "{} exited by itself ({exit}); end of {}:\n{tail}",
            member.name,
            member.log_path.display()
        )
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Member `i`'s client endpoint.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// The index of the member that member 0 (or the first running member) names as leader.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let mut ids = Vec::with_capacity(self.members.len());
        for i in 0..self.members.len() {
            let header = status(&self.endpoint(i)).await?.header;
            ids.push(header.context("status without header")?.member_id);
        }
        let leader = status(&self.endpoint(0)).await?.leader;
        ids.iter()
            .position(|&id| id == leader)
            .with_context(|| format!("leader {leader:x} is not a member"))
    }

    /// Crashes member `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts killed member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i)
    }

    fn pid(&self, i: usize) -> anyhow::Result<u32> {
        let child = self.members[i]
            .child
            .as_ref()
            .with_context(|| format!("member {i} is not running"))?;
        Ok(child.id())
    }

    /// Member `i`'s peak resident set since it started, bytes (resets included).
    pub fn peak_rss_bytes(&self, i: usize) -> anyhow::Result<u64> {
        Ok(peak_rss_bytes(self.pid(i)?)?.max(self.members[i].peak_rss_before_reset))
    }

    /// Member `i`'s peak resident set since the last [`Cluster::reset_peak_rss`], bytes.
    pub fn peak_rss_since_reset_bytes(&self, i: usize) -> anyhow::Result<u64> {
        peak_rss_bytes(self.pid(i)?)
    }

    /// Starts a new peak for [`Cluster::peak_rss_since_reset_bytes`] from member `i`'s current
    /// resident set; [`Cluster::peak_rss_bytes`] still counts the peak before.
    pub fn reset_peak_rss(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.pid(i)?;
        let before = peak_rss_bytes(pid)?;
        let member = &mut self.members[i];
        member.peak_rss_before_reset = member.peak_rss_before_reset.max(before);
        reset_peak_rss(pid)
    }

    /// Member `i`'s resident set now, bytes.
    pub fn rss_bytes(&self, i: usize) -> anyhow::Result<u64> {
        status_bytes(self.pid(i)?, "VmRSS:")
    }

    /// Member `i`'s data directory's size on disk, bytes.
    pub fn disk_bytes(&self, i: usize) -> anyhow::Result<u64> {
        disk_bytes(&self.members[i].data_dir)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(child) = member.child.as_mut() {
                // Errors mean the process is already gone; nothing is left to clean.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_and_rss_are_read_in_bytes() {
        let status = "Name:\tetcd\nVmPeak:\t  200 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(12345 * 1024));
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(100 * 1024));
        assert_eq!(parse_status_kib("Name:\tetcd\n", "VmHWM:"), None);
    }

    #[test]
    fn a_reset_brings_the_peak_down_to_the_current_resident_set() {
        // A child of our own, so the test's own threads do not move its resident set: it
        // touches 64 MiB, frees them, and waits for its stdin to close.
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import sys; b = bytearray(64 << 20); del b; print(flush=True); sys.stdin.read()",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let pid = child.id();
        let peak = peak_rss_bytes(pid).unwrap();
        reset_peak_rss(pid).unwrap();
        let after = peak_rss_bytes(pid).unwrap();
        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(peak >= 64 << 20, "{peak}");
        assert!(after < peak - (32 << 20), "{peak} -> {after}");
    }

    #[test]
    fn this_process_has_a_peak_rss() {
        let bytes = peak_rss_bytes(std::process::id()).unwrap();
        assert!(bytes > 1 << 20, "{bytes}");
    }

    #[test]
    fn disk_bytes_counts_files_in_subdirectories_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let empty = disk_bytes(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 1 << 20]).unwrap();
        let full = disk_bytes(dir.path()).unwrap();
        assert!(full - empty >= 1 << 20, "{empty} -> {full}");
        std::fs::hard_link(dir.path().join("sub/f"), dir.path().join("link")).unwrap();
        let linked = disk_bytes(dir.path()).unwrap();
        assert!(
            linked - full < 1 << 20,
            "a hard link counted twice: {full} -> {linked}"
        );
    }
}
