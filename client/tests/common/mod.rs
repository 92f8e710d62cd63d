//! Test support: 3-member clusters of real `cairn` or `etcd` processes on loopback.
//!
//! Cairn is the `cairn` binary that `cargo test --workspace` builds next to the test
//! executables (`target/<profile>/cairn`), or `$CAIRN_BIN`; etcd is `/usr/bin/etcd` (3.4.23 in
//! CI). A test whose binary is missing prints why and passes, as the jepsen tests do.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_client::{Client, ConnectOptions};

/// How long a cluster may take to elect a leader and serve.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server binary a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cairn,
    Etcd,
}

impl Backend {
    /// The binary to run, or `None` (with the reason printed) when it is not there.
    pub fn binary(self) -> Option<PathBuf> {
        let path = match self {
            Backend::Cairn => match std::env::var_os("CAIRN_BIN") {
                Some(p) => PathBuf::from(p),
                None => {
                    // target/<profile>/cairn, beside target/<profile>/deps/<this test>.
                    let exe = std::env::current_exe().unwrap();
                    exe.parent()
                        .and_then(|deps| deps.parent())
                        .unwrap()
                        .join("cairn")
                }
            },
            Backend::Etcd => PathBuf::from("/usr/bin/etcd"),
        };
        if path.exists() {
            Some(path)
        } else {
            println!(
                "skipped: {} not found ({})",
                path.display(),
                match self {
                    Backend::Cairn => "cargo test --workspace builds it, or set CAIRN_BIN",
                    Backend::Etcd => "apt-get install etcd-server",
                }
            );
            None
        }
    }
}

/// A free TCP port on 127.0.0.1 for a server to listen on. Taken below the kernel's ephemeral range
/// (32768+), where outgoing connections (etcdctl, clients) could grab it between this check and the
/// server's bind; each process walks the range from its own starting point, skipping ports in use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
    let _ = NEXT.compare_exchange(u32::MAX, seed % COUNT, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// Polls `probe` every 50 ms until it is true; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One member process.
pub struct Member {
    pub name: String,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn healthy(&self) -> bool {
        matches!(http_get(&self.addr(), "/health"), Ok((200, body)) if body.contains("true"))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of members started together with one `--initial-cluster`.
pub struct Cluster {
    pub backend: Backend,
    bin: PathBuf,
    pub members: Vec<Member>,
    initial_cluster: String,
    extra_args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` members of `backend` and waits until each is healthy; `None` if the binary
    /// is missing.
    pub async fn start(backend: Backend, n: usize) -> Option<Cluster> {
        Cluster::start_with(backend, n, &[]).await
    }

    /// As [`Cluster::start`], with extra flags for every member.
    pub async fn start_with(backend: Backend, n: usize, extra_args: &[&str]) -> Option<Cluster> {
        let bin = backend.binary()?;
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (1..=n)
            .map(|i| Member {
                name: format!("m{i}"),
                data_dir: dir.path().join(format!("m{i}")),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            backend,
            bin,
            members,
            initial_cluster,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i).await;
        }
        Some(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.data_dir.with_extension("log"))
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.endpoint()])
            .args(["--advertise-client-urls", &m.endpoint()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "client-tests"])
            .args(&self.extra_args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("start the server binary");
        self.members[i].child = Some(child);
    }

    async fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let m = &mut self.members[i];
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{:?} {} exited with {status} during start; log:\n{}",
                    self.backend,
                    m.name,
                    std::fs::read_to_string(m.data_dir.with_extension("log")).unwrap_or_default()
                );
            }
            let addr = m.addr();
            let healthy = tokio::task::spawn_blocking(move || {
                matches!(http_get(&addr, "/health"), Ok((200, body)) if body.contains("true"))
            })
            .await
            .unwrap();
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} {} did not become healthy",
                self.backend,
                m.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restarts member `i` (killed before) on its ports and data, and waits until it serves.
    pub async fn restart(&mut self, i: usize) {
        self.members[i].kill();
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// A client over every member, with a short deadline suited to tests.
    pub async fn client(&self) -> Client {
        self.client_with(ConnectOptions::new()).await
    }

    pub async fn client_with(&self, options: ConnectOptions) -> Client {
        Client::connect_with(
            self.endpoints(),
            options.with_timeout(Duration::from_secs(15)),
        )
        .await
        .unwrap()
    }

    /// The index of the leader, asking the members that run.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if !m.is_running() {
                    continue;
                }
                let Ok(mut c) = Client::connect(m.endpoint()).await else {
                    continue;
                };
                if let Ok(s) = c.status().await {
                    if s.leader != 0 && s.header.as_ref().is_some_and(|h| h.member_id == s.leader) {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The log of member `i` (for failure messages).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.members[i].data_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }
}

/// Runs `body` once per backend that is installed, printing which.
#[macro_export]
macro_rules! per_backend {
    ($cairn:ident, $etcd:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $cairn() {
            $body(common::Backend::Cairn).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $etcd() {
            $body(common::Backend::Etcd).await;
        }
    };
}
