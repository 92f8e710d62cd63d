//! Test support: real `cairn` (and etcd) processes on loopback, each with its own data dir.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a member may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The first number after `"field":` in JSON text (etcdctl's `-w json` output).
pub fn json_number(text: &str, field: &str) -> u64 {
    text.split(&format!("\"{field}\":"))
        .nth(1)
        .and_then(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in {text}"))
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
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

/// A plain HTTP/1.1 POST of `body`; returns (status, body), with a chunked body decoded. Reads
/// until the server closes, or for `stream_for` at most (for streaming responses).
pub fn http_post(
    addr: &str,
    path: &str,
    body: &str,
    stream_for: Option<Duration>,
) -> std::io::Result<(u16, String)> {
    http_post_as(addr, path, body, stream_for, None)
}

/// [`http_post`] with an `Authorization` header (the JSON gateway's auth token).
pub fn http_post_as(
    addr: &str,
    path: &str,
    body: &str,
    stream_for: Option<Duration>,
    authorization: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    let deadline = Instant::now() + stream_for.unwrap_or(Duration::from_secs(10));
    let auth = authorization.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !chunked {
        return Ok((status, rest.to_string()));
    }
    let mut body = String::new();
    let mut rest = rest;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            body.push_str(&after[..size.min(after.len())]);
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    Ok((status, body))
}

/// Which server binary a [`Member`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cairn,
    Etcd,
}

/// One server process (alone, or one member of a [`Cluster`]).
pub struct Member {
    pub kind: Kind,
    pub name: String,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub extra_args: Vec<String>,
    /// `--initial-cluster`; a single member names itself.
    pub initial_cluster: String,
    pub initial_cluster_state: String,
    /// For a member with `https://` client and peer URLs: etcdctl's TLS flags
    /// (`--cacert=… --cert=… --key=…`), used to check its health. `None`: `http://` URLs.
    pub tls: Option<String>,
    child: Option<Child>,
}

impl Member {
    /// Starts a server of `kind` with its data in `data_dir` and waits until `/health` is true.
    pub fn start(kind: Kind, data_dir: &Path, extra_args: &[&str]) -> Member {
        let mut m = Member::new(kind, "m1", data_dir, extra_args);
        m.initial_cluster = format!("m1={}", m.peer_url());
        m.spawn();
        m
    }

    /// A member that is not started yet.
    pub fn new(kind: Kind, name: &str, data_dir: &Path, extra_args: &[&str]) -> Member {
        Member {
            kind,
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
            client_port: free_port(),
            peer_port: free_port(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            initial_cluster: String::new(),
            initial_cluster_state: "new".to_string(),
            tls: None,
            child: None,
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        self.spawn_process();
        self.wait_healthy();
    }

    /// Starts the process without waiting for it to serve.
    pub fn spawn_process(&mut self) {
        let bin = match self.kind {
            Kind::Cairn => env!("CARGO_BIN_EXE_cairn").to_string(),
            Kind::Etcd => "etcd".to_string(),
        };
        let peer = self.peer_url();
        let client = self.endpoint();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(bin)
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", &self.initial_cluster_state])
            .args(&self.extra_args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start server binary");
        self.child = Some(child);
    }

    /// Waits until `/health` reports true (with TLS: until `etcdctl endpoint health` succeeds).
    pub fn wait_healthy(&mut self) {
        let addr = self.addr();
        let endpoint = self.endpoint();
        let tls = self.tls.clone();
        wait_for("the server to report healthy", START_TIMEOUT, || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{:?} exited with {status} during start; log: {}",
                    self.kind,
                    std::fs::read_to_string(self.data_dir.with_extension("log"))
                        .unwrap_or_default()
                );
            }
            if let Some(flags) = &tls {
                let args = format!("{flags} --command-timeout=1s endpoint health");
                let ok = etcdctl(&endpoint, &args)
                    .output()
                    .is_ok_and(|o| o.status.success());
                return ok.then_some(());
            }
            match http_get(&addr, "/health") {
                Ok((200, body)) if body.contains("true") => Some(()),
                _ => None,
            }
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        wait_for("the server to exit", Duration::from_secs(20), || {
            c.try_wait().unwrap()
        })
    }

    /// Starts the same member again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Several members started together with one `--initial-cluster`.
pub struct Cluster {
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts `n` members named m1..mn under `dir` and waits until each is healthy.
    pub fn start(kind: Kind, n: usize, dir: &Path, extra_args: &[&str]) -> Cluster {
        let mut members = Cluster::unstarted(kind, n, dir, extra_args);
        for m in &mut members {
            m.spawn_process();
        }
        for m in &mut members {
            m.wait_healthy();
        }
        Cluster { members }
    }

    /// `n` members named m1..mn under `dir` that share one `--initial-cluster`, not started.
    pub fn unstarted(kind: Kind, n: usize, dir: &Path, extra_args: &[&str]) -> Vec<Member> {
        let mut members: Vec<Member> = (1..=n)
            .map(|i| {
                let name = format!("m{i}");
                Member::new(kind, &name, &dir.join(&name), extra_args)
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = initial.clone();
        }
        members
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// The `--initial-cluster` value listing the current members plus `extra`.
    pub fn initial_cluster_with(&self, extra: &Member) -> String {
        self.members
            .iter()
            .chain(std::iter::once(extra))
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `etcdctl --endpoints=<endpoint> <args>` (split on spaces), in a clean environment.
pub fn etcdctl(endpoint: &str, args: &str) -> Command {
    let mut cmd = Command::new("etcdctl");
    cmd.arg(format!("--endpoints={endpoint}"))
        .args(args.split(' '))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ETCDCTL_API", "3");
    cmd
}

/// Runs an etcdctl command to completion: its exit code, stdout and stderr as one text.
pub fn run_etcdctl(endpoint: &str, args: &str) -> String {
    let out = etcdctl(endpoint, args).output().expect("etcdctl runs");
    format!(
        "exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts an etcdctl command that runs until stopped, with `input` written to its stdin, which stays
/// open (interactive commands end at the end of their input).
pub fn spawn_etcdctl(endpoint: &str, args: &str, input: &str) -> Child {
    let mut child = etcdctl(endpoint, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl runs");
    child
        .stdin
        .as_mut()
        .expect("piped")
        .write_all(input.as_bytes())
        .expect("write etcdctl's input");
    child
}

/// Sends `signal` (e.g. `TERM`, `KILL`) to an etcdctl started by [`spawn_etcdctl`], waits for it,
/// and returns what it printed.
pub fn stop_etcdctl(mut child: Child, signal: &str) -> String {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .expect("read etcdctl's output");
    out
}
