//! The cluster driver: starts N members of any binary that takes etcd's flags (real etcd, or
//! `cairn`) on 127.0.0.1, each with its own data directory and log, and crashes, restarts,
//! pauses and resumes them, and replaces them by wiped new members (remove, wipe, add, join).
//!
//! Owns the member processes and their directories. Peer traffic goes through one
//! [`PeerProxy`] per member (see `proxy` for the topology); client traffic goes straight to
//! each member's client port.
//!
//! **Invariant:** no member process outlives the [`Cluster`]: children are killed on drop
//! (`kill_on_drop`), and each child also gets `PR_SET_PDEATHSIG = SIGKILL` so a harness that
//! dies by a signal does not leave members behind. Only processes started here are ever
//! signalled, by their pid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::admin::AdminClient;
use crate::client::EtcdClient;
use crate::proxy::{Network, PeerProxy};
use crate::shim::{self, ShimConfig};

/// How long a freshly started cluster may take to answer a linearizable read on every member.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Cluster starts tried before giving up (see [`Cluster::start`]).
const STARTUP_ATTEMPTS_MAX: u32 = 3;

/// A member process exited although the harness did not kill it.
#[derive(Debug)]
struct MemberExited(String);

impl std::fmt::Display for MemberExited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MemberExited {}

/// How long a membership change (remove or add) may keep failing before the fault gives up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of a member's log quoted when it exits by itself.
const LOG_TAIL_LINES: usize = 20;

/// Deadline of one health probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The member binary (`/usr/bin/etcd`, or `cairn`).
    pub bin: PathBuf,
    /// 3 or 5.
    pub members: usize,
    /// Extra flags passed to every member (e.g. `--snapshot-count=100`).
    pub extra_args: Vec<String>,
    /// Start every member with the LD_PRELOAD shim journaling its creations and syncs, so that
    /// [`Cluster::lose_unsynced`] can play a crash that loses the page cache.
    pub track_syncs: bool,
}

/// Whether a member process is running, stopped by SIGSTOP, killed, or removed from the
/// cluster (killed, its data wiped, waiting to be added back as a new member).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Running,
    Paused,
    Killed,
    Removed,
}

struct Member {
    name: String,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    state: MemberState,
    /// Started with `--initial-cluster-state=existing`: it joined a running cluster.
    joined: bool,
    /// Started with the LD_PRELOAD shim, configured so (clock skew, failing fsyncs).
    shim: Option<ShimConfig>,
}

/// A running cluster. Dropping it kills every member and deletes its directory.
pub struct Cluster {
    spec: ClusterSpec,
    members: Vec<Member>,
    proxies: Vec<PeerProxy>,
    network: Network,
    initial_cluster: String,
    /// Each member's raft id, as its Status reports it; learned at startup.
    member_ids: Vec<u64>,
    /// The LD_PRELOAD shim, once built (see `shim`).
    shim_library: Option<PathBuf>,
    /// Data directories and logs. Held only to be deleted on drop; declared last so it goes
    /// after the members' processes.
    dir: tempfile::TempDir,
}

/// First port members listen on: below the kernel's ephemeral range (32768+), where an
/// outgoing connection could take a member's port while it is down between a kill and its
/// restart. (Proxies keep their listeners for the whole run, so the kernel may choose theirs.)
const MEMBER_PORT_FIRST: u32 = 20_000;

/// Ports in the member range.
const MEMBER_PORT_COUNT: u32 = 12_000;

/// Free loopback ports in the member range, all distinct: every listener is held until all are
/// chosen. Each call walks the range from its own starting point, skipping ports in use.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
    let mut listeners = Vec::with_capacity(n);
    for offset in 0..MEMBER_PORT_COUNT {
        if listeners.len() == n {
            break;
        }
        let port = (MEMBER_PORT_FIRST + (seed.wrapping_add(offset)) % MEMBER_PORT_COUNT) as u16;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    anyhow::ensure!(listeners.len() == n, "fewer than {n} free member ports");
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect())
}

impl Cluster {
    /// Starts every member and waits until each answers a linearizable read. A member that
    /// exits during startup may have lost its port to another process between our choosing
    /// and its binding, so the whole cluster is retried on fresh ports, up to
    /// [`STARTUP_ATTEMPTS_MAX`] times.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            spec.members == 3 || spec.members == 5,
            "a cluster has 3 or 5 members, not {}",
            spec.members
        );
        anyhow::ensure!(
            spec.bin.exists(),
            "member binary {} not found",
            spec.bin.display()
        );
        let mut attempt = 1;
        loop {
            match Cluster::start_once(spec.clone()).await {
                Err(e) if attempt < STARTUP_ATTEMPTS_MAX && e.is::<MemberExited>() => {
                    eprintln!("cairn-jepsen: startup attempt {attempt} failed, retrying: {e:#}");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-jepsen-")
            .tempdir()
            .context("creating the cluster's directory")?;
        let n = spec.members;
        let ports = free_ports(2 * n)?;
        let network = Network::new(n);
        let mut members = Vec::with_capacity(n);
        let mut proxies = Vec::with_capacity(n);
        for i in 0..n {
            let peer_addr = SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1]));
            proxies.push(PeerProxy::start(network.clone(), i, peer_addr).await?);
            members.push(Member {
                name: format!("n{i}"),
                client_addr: SocketAddr::from(([127, 0, 0, 1], ports[2 * i])),
                peer_addr,
                data_dir: dir.path().join(format!("n{i}")),
                log_path: dir.path().join(format!("n{i}.log")),
                child: None,
                state: MemberState::Killed,
                joined: false,
                shim: None,
            });
        }
        let initial_cluster = members
            .iter()
            .zip(&proxies)
            .map(|(m, p)| format!("{}=http://{}", m.name, p.addr()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            spec,
            members,
            proxies,
            network,
            initial_cluster,
            member_ids: Vec::new(),
            shim_library: None,
            dir,
        };
        if cluster.spec.track_syncs {
            cluster.shim_library = Some(shim::build(cluster.dir.path())?);
        }
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(STARTUP_TIMEOUT).await?;
        for i in 0..n {
            let mut client = EtcdClient::new(&cluster.client_url(i), PROBE_TIMEOUT)?;
            let (member_id, _) = client
                .status()
                .await
                .with_context(|| format!("status of n{i}"))?;
            cluster.member_ids.push(member_id);
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &self.members[i];
        let advertised = self.proxies[i].addr();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)?;
        let shim = match (&member.shim, self.spec.track_syncs) {
            (config, true) => Some(ShimConfig {
                sync_journal: Some(self.sync_journal(i)),
                ..config.clone().unwrap_or_default()
            }),
            (config, false) => config.clone(),
        };
        let mut command = Command::new(&self.spec.bin);
        command
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", member.data_dir.display()))
            .arg(format!(
                "--listen-client-urls=http://{}",
                member.client_addr
            ))
            .arg(format!(
                "--advertise-client-urls=http://{}",
                member.client_addr
            ))
            .arg(format!("--listen-peer-urls=http://{}", member.peer_addr))
            .arg(format!("--initial-advertise-peer-urls=http://{advertised}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(if member.joined {
                "--initial-cluster-state=existing"
            } else {
                "--initial-cluster-state=new"
            })
            .arg("--initial-cluster-token=cairn-jepsen")
            .args(&self.spec.extra_args)
            .envs(
                shim.iter()
                    .zip(&self.shim_library)
                    .flat_map(|(config, library)| config.env(library)),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
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
        self.network.set_pid(i, child.id());
        let member = &mut self.members[i];
        member.child = Some(child);
        member.state = MemberState::Running;
        Ok(())
    }

    fn signal(&self, i: usize, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = self.members[i]
            .child
            .as_ref()
            .and_then(Child::id)
            .with_context(|| format!("member {i} has no process"))?;
        let pid = libc::pid_t::try_from(pid).expect("pids fit pid_t");
        // SAFETY: plain syscall on a pid we spawned and have not reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The URL clients use for member `i`.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://{}", self.members[i].client_addr)
    }

    /// The partition controls.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Crashes member `i` (SIGKILL) and reaps it.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().await?;
        }
        self.network.set_pid(i, None);
        self.members[i].state = MemberState::Killed;
        Ok(())
    }

    /// Starts a killed member again, with the same flags and data directory.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.members[i].state == MemberState::Killed,
            "member {i} is not killed"
        );
        self.spawn(i)
    }

    /// Sets the LD_PRELOAD shim member `i` starts with from its next restart on (`None`: none).
    /// The member must be killed: clock skew is applied by restarting.
    pub fn set_shim(&mut self, i: usize, config: Option<ShimConfig>) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.members[i].state == MemberState::Killed,
            "member {i} must be killed to change its shim"
        );
        if config.is_some() && self.shim_library.is_none() {
            self.shim_library = Some(shim::build(self.dir.path())?);
        }
        self.members[i].shim = config;
        Ok(())
    }

    /// Where the shim of member `i` looks for its fsync-fail switch, and notes that it failed
    /// one: (fail file, tripped file).
    pub fn fsync_files(&self, i: usize) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        (
            dir.join(format!("n{i}.fsync-fail")),
            dir.join(format!("n{i}.fsync-tripped")),
        )
    }

    /// Where the shim of member `i` journals its creations and syncs (with `track_syncs`).
    fn sync_journal(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.syncs"))
    }

    /// Plays, on killed member `i`, a crash of its machine that loses the page cache: every file
    /// it wrote is cut back to what it had synced (see [`shim::lose_unsynced`]).
    pub fn lose_unsynced(&self, i: usize) -> anyhow::Result<shim::Loss> {
        anyhow::ensure!(
            self.members[i].state == MemberState::Killed,
            "member {i} must be killed to lose its unsynced writes"
        );
        shim::lose_unsynced(&self.sync_journal(i), &self.members[i].data_dir)
    }

    /// Waits up to `timeout` for member `i`'s process to exit by itself. If it did, the member
    /// counts as killed (it can be restarted) and its exit status and last log lines are
    /// returned.
    pub async fn wait_exited(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<Option<String>> {
        let start = Instant::now();
        loop {
            if let Err(e) = self.fail_if_exited(i) {
                if !e.is::<MemberExited>() {
                    return Err(e);
                }
                self.members[i].child = None;
                self.members[i].state = MemberState::Killed;
                self.network.set_pid(i, None);
                return Ok(Some(e.to_string()));
            }
            if start.elapsed() > timeout {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Moves member `i`'s log aside (to `n<i>.<suffix>.log` in the cluster's directory, deleted
    /// with it) so the server-logs check does not read a crash the harness caused on purpose.
    pub fn set_log_aside(&self, i: usize, suffix: &str) -> anyhow::Result<()> {
        let member = &self.members[i];
        let aside = member.log_path.with_extension(format!("{suffix}.log"));
        std::fs::rename(&member.log_path, &aside)?;
        Ok(())
    }

    /// Stops member `i` with SIGSTOP.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, libc::SIGSTOP)?;
        self.members[i].state = MemberState::Paused;
        // SIGSTOP takes effect when each thread next enters the kernel: until every thread shows as
        // stopped, a request in flight can still be answered.
        if let Some(pid) = self.members[i].child.as_ref().and_then(Child::id) {
            wait_stopped(pid, Duration::from_secs(2))?;
        }
        Ok(())
    }

    /// Continues a paused member with SIGCONT.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, libc::SIGCONT)?;
        self.members[i].state = MemberState::Running;
        Ok(())
    }

    /// Removes member `i` from the cluster (MemberRemove through another running member), kills
    /// it and wipes its data directory. Returns the removed member's id.
    pub async fn remove(&mut self, i: usize) -> anyhow::Result<u64> {
        anyhow::ensure!(
            self.members[i].state == MemberState::Running,
            "member {i} is not running"
        );
        let id = self.member_ids[i];
        // A retry after an answer was lost finds the member gone: that is success.
        self.with_admin(i, "MemberRemove", |mut admin| async move {
            match admin.member_remove(id).await {
                Err(e) if !admin.member_list().await?.iter().any(|m| m.id == id) => {
                    eprintln!("cairn-jepsen: MemberRemove {id:x} failed ({e:#}) but it is gone");
                    Ok(())
                }
                result => result,
            }
        })
        .await?;
        self.kill(i).await?;
        let data_dir = &self.members[i].data_dir;
        match std::fs::remove_dir_all(data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow::Error::from(e).context(format!("wiping {}", data_dir.display())))
            }
            _ => {}
        }
        self.members[i].state = MemberState::Removed;
        Ok(id)
    }

    /// Adds removed member `i` back as a new member (MemberAdd with its old peer URL, through
    /// another running member) and starts it on an empty data directory with
    /// `--initial-cluster-state=existing`. Returns its new id.
    pub async fn rejoin(&mut self, i: usize) -> anyhow::Result<u64> {
        anyhow::ensure!(
            self.members[i].state == MemberState::Removed,
            "member {i} is not removed"
        );
        let peer_url = format!("http://{}", self.proxies[i].addr());
        let id = self
            .with_admin(i, "MemberAdd", |mut admin| {
                let peer_url = peer_url.clone();
                // A retry after an answer was lost finds the member added: that is success.
                async move {
                    match admin.member_add(&peer_url).await {
                        Err(e) => admin
                            .member_list()
                            .await?
                            .iter()
                            .find(|m| m.peer_ur_ls.contains(&peer_url))
                            .map(|m| m.id)
                            .ok_or(e),
                        result => result,
                    }
                }
            })
            .await?;
        self.member_ids[i] = id;
        self.members[i].joined = true;
        self.spawn(i)?;
        Ok(id)
    }

    /// Runs `call` on the running members other than `except`, in turn, until one succeeds or
    /// [`MEMBERSHIP_TIMEOUT`] passes.
    async fn with_admin<T, F, Fut>(&self, except: usize, what: &str, call: F) -> anyhow::Result<T>
    where
        F: Fn(AdminClient) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let start = Instant::now();
        let mut last_error = anyhow::anyhow!("no running member to ask");
        loop {
            for m in 0..self.members.len() {
                if m == except || self.members[m].state != MemberState::Running {
                    continue;
                }
                match call(AdminClient::new(&self.client_url(m), PROBE_TIMEOUT)?).await {
                    Ok(answer) => return Ok(answer),
                    Err(e) => last_error = e.context(format!("asking n{m}")),
                }
            }
            if start.elapsed() > MEMBERSHIP_TIMEOUT {
                return Err(last_error.context(format!("{what} failed for {MEMBERSHIP_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Member `i`'s current raft id (a new one after [`Cluster::rejoin`]).
    pub fn member_id(&self, i: usize) -> u64 {
        self.member_ids[i]
    }

    /// Member `i`'s state.
    pub fn state(&self, i: usize) -> MemberState {
        self.members[i].state
    }

    /// Member `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> &std::path::Path {
        &self.members[i].data_dir
    }

    /// Undoes every fault: heals the network, resumes paused and restarts killed members.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        self.network.heal();
        for i in 0..self.members.len() {
            match self.members[i].state {
                MemberState::Paused => self.resume(i)?,
                MemberState::Killed => self.restart(i)?,
                MemberState::Running => {}
                MemberState::Removed => {
                    anyhow::bail!("member {i} is removed; add it back with `rejoin`")
                }
            }
        }
        Ok(())
    }

    /// Waits until member `i` answers a serializable read, or fails after `timeout` or as soon
    /// as its process has exited by itself.
    pub async fn wait_member_healthy(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.fail_if_exited(i)?;
            let mut client = EtcdClient::new(&self.client_url(i), PROBE_TIMEOUT)?;
            match client.get("cairn-jepsen/health", true).await {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > timeout => {
                    anyhow::bail!("n{i} not serving after {timeout:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until every member answers a linearizable read, or fails after `timeout`, or as
    /// soon as a member process has exited by itself (with the end of its log).
    /// Returns how long that took.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut pending: Vec<usize> = (0..self.members.len()).collect();
        let mut last_error = String::new();
        while !pending.is_empty() {
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "members {pending:?} not healthy after {timeout:?} (last error: {last_error})"
                );
            }
            let mut still = Vec::new();
            for &i in &pending {
                self.fail_if_exited(i)?;
                let mut client = EtcdClient::new(&self.client_url(i), PROBE_TIMEOUT)?;
                if let Err(e) = client.get("cairn-jepsen/health", false).await {
                    last_error = format!("n{i}: {e}");
                    still.push(i);
                }
            }
            pending = still;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(start.elapsed())
    }

    /// An error if member `i`'s process has exited although the harness did not kill it.
    fn fail_if_exited(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        let Some(child) = member.child.as_mut() else {
            return Ok(());
        };
        let Some(status) = child.try_wait()? else {
            return Ok(());
        };
        let log = std::fs::read_to_string(&member.log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(MemberExited(format!(
            "member {} exited by itself ({status}); end of {}:\n{}",
            member.name,
            member.log_path.display(),
            tail.join("\n")
        ))
        .into())
    }

    /// The member that most running members name as leader, if any.
    pub async fn leader(&self) -> Option<usize> {
        let mut votes: Vec<u64> = Vec::new();
        for i in 0..self.members.len() {
            if self.members[i].state != MemberState::Running {
                continue;
            }
            let Ok(mut client) = EtcdClient::new(&self.client_url(i), PROBE_TIMEOUT) else {
                continue;
            };
            if let Ok((_, leader)) = client.status().await {
                if leader != 0 {
                    votes.push(leader);
                }
            }
        }
        votes.sort_unstable();
        let leader = votes
            .chunk_by(|a, b| a == b)
            .max_by_key(|run| run.len())
            .map(|run| run[0])?;
        self.member_index(leader)
    }

    /// The index of the member whose raft id is `member_id` (as Status reports it).
    pub fn member_index(&self, member_id: u64) -> Option<usize> {
        self.member_ids.iter().position(|&id| id == member_id)
    }

    /// Each member's log file.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.members.iter().map(|m| m.log_path.clone()).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(child) = member.child.as_mut() {
                // SIGKILL also ends a stopped process; kill_on_drop would too, but reaping here
                // keeps zombies from lingering while the runtime winds down.
                let _ = child.start_kill();
                let _ = child.try_wait();
            }
        }
    }
}

/// Waits until every thread of `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`).
fn wait_stopped(pid: u32, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))?;
        let mut all_stopped = true;
        for task in tasks {
            let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.trim_start().chars().next());
            if !matches!(state, Some('T') | Some('t') | None) {
                all_stopped = false;
            }
        }
        if all_stopped {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "process {pid} did not stop within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ports_are_distinct_and_below_the_ephemeral_range() {
        let ports = free_ports(10).unwrap();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 10);
        let range = MEMBER_PORT_FIRST..MEMBER_PORT_FIRST + MEMBER_PORT_COUNT;
        assert!(
            ports.iter().all(|&p| range.contains(&u32::from(p))),
            "{ports:?}"
        );
    }
}
