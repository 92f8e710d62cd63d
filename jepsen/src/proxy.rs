//! Partitions on loopback: one TCP proxy in front of each member's peer port.
//!
//! Topology: member `i` listens for peers on its own port `P_i` but advertises the proxy's port
//! `X_i` (in `--initial-advertise-peer-urls` and every member's `--initial-cluster`), so every
//! member reaches `i` only through `i`'s proxy, and `i`'s own advertised URL still matches its
//! `--initial-cluster` entry (etcd requires that). Clients talk to members directly.
//!
//! All members share 127.0.0.1, so the proxy tells who is connecting by finding which member
//! process owns the connecting socket (`/proc/net/tcp` gives the socket's inode for the source
//! port, `/proc/<pid>/fd` the owner). That works for any binary, etcd or Cairn, without
//! looking inside the peer protocol.
//!
//! A partition is a set of blocked member pairs (both directions, as iptables grudges in
//! Jepsen). Bytes between a blocked pair stall: the proxy stops reading and writing, so the
//! sender's buffers fill and nothing is delivered, as with dropped packets; after healing the
//! held bytes flow on the same connections, as TCP would retransmit them. A connection whose
//! source cannot be identified is treated as blocked while its target has any blocked pair.
//!
//! This module owns the proxies' tasks and never touches member processes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Bytes buffered per direction of a proxied connection.
const PUMP_BUFFER_BYTES: usize = 64 * 1024;

/// Unordered pairs of member indexes that cannot talk, each stored as `(low, high)`.
pub type Blocked = BTreeSet<(usize, usize)>;

/// Who may talk to whom, and which process is which member, shared by all proxies.
#[derive(Clone)]
pub struct Network {
    blocked: Arc<watch::Sender<Blocked>>,
    pids: Arc<watch::Sender<Vec<Option<u32>>>>,
    counts: Arc<ConnectionCounts>,
}

/// Connections accepted by all proxies, by whether their source member was identified.
#[derive(Default)]
struct ConnectionCounts {
    identified: AtomicU64,
    unidentified: AtomicU64,
}

impl Network {
    pub fn new(members: usize) -> Network {
        Network {
            blocked: Arc::new(watch::Sender::new(Blocked::new())),
            pids: Arc::new(watch::Sender::new(vec![None; members])),
            counts: Arc::default(),
        }
    }

    /// Records member `member`'s current process id (`None` while it is down).
    pub fn set_pid(&self, member: usize, pid: Option<u32>) {
        self.pids.send_modify(|pids| pids[member] = pid);
    }

    /// Blocks exactly `blocked` (replacing any earlier partition).
    pub fn block(&self, blocked: Blocked) {
        self.blocked.send_replace(blocked);
    }

    /// Splits the members into groups that can only talk within themselves.
    /// Members in no group can talk to everyone.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        let mut blocked = Blocked::new();
        for (g, group) in groups.iter().enumerate() {
            for other in &groups[g + 1..] {
                for &a in group {
                    for &b in other {
                        blocked.insert((a.min(b), a.max(b)));
                    }
                }
            }
        }
        self.block(blocked);
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.blocked.send_replace(Blocked::new());
    }

    /// Peer connections accepted so far: (identified, unidentified). Unidentified ones are
    /// treated as blocked by every grudge against their target, so they should stay rare.
    pub fn connection_counts(&self) -> (u64, u64) {
        (
            self.counts.identified.load(Ordering::Relaxed),
            self.counts.unidentified.load(Ordering::Relaxed),
        )
    }

    /// The pairs currently blocked.
    #[cfg(test)]
    fn blocked(&self) -> Blocked {
        self.blocked.borrow().clone()
    }
}

/// Whether traffic from `from` (if known) to `to` must stall under `blocked`.
fn is_blocked(blocked: &Blocked, from: Option<usize>, to: usize) -> bool {
    match from {
        Some(from) => blocked.contains(&(from.min(to), from.max(to))),
        None => blocked.iter().any(|&(a, b)| a == to || b == to),
    }
}

/// The proxy in front of one member's peer port. Dropping it stops it and all its connections.
pub struct PeerProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl PeerProxy {
    /// Listens on a free loopback port and forwards to `target`, the member `to`'s peer port.
    pub async fn start(network: Network, to: usize, target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, network, to, target));
        Ok(PeerProxy { addr, task })
    }

    /// Where peers must connect to reach the member: its advertised peer address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, network: Network, to: usize, target: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, source)) = accepted else { continue };
                let proxy_addr = listener.local_addr().expect("a bound listener has an address");
                connections.spawn(proxy_connection(
                    inbound,
                    source,
                    proxy_addr,
                    network.clone(),
                    to,
                    target,
                ));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn proxy_connection(
    inbound: TcpStream,
    source: SocketAddr,
    proxy_addr: SocketAddr,
    network: Network,
    to: usize,
    target: SocketAddr,
) {
    let pids = network.pids.borrow().clone();
    let from = tokio::task::spawn_blocking(move || identify(source, proxy_addr, &pids))
        .await
        .unwrap_or(None);
    let counter = match from {
        Some(_) => &network.counts.identified,
        None => &network.counts.unidentified,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let mut gate = network.blocked.subscribe();
    if gate.wait_for(|b| !is_blocked(b, from, to)).await.is_err() {
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = pump(in_read, out_write, network.blocked.subscribe(), from, to);
    let down = pump(out_read, in_write, network.blocked.subscribe(), from, to);
    // When one direction ends the connection is over; dropping the other half closes it.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies bytes one way, stalling while the pair is blocked.
async fn pump(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<Blocked>,
    from: Option<usize>,
    to: usize,
) {
    let mut buf = vec![0u8; PUMP_BUFFER_BYTES];
    loop {
        if gate.wait_for(|b| !is_blocked(b, from, to)).await.is_err() {
            return;
        }
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = writer.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // A partition that began while we waited for these bytes holds them until it heals.
        if gate.wait_for(|b| !is_blocked(b, from, to)).await.is_err() {
            return;
        }
        if writer.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Which member owns the socket connected from `source` to `proxy_addr`, if any.
fn identify(source: SocketAddr, proxy_addr: SocketAddr, pids: &[Option<u32>]) -> Option<usize> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = socket_inode(&tcp, source, proxy_addr)?;
    let link = format!("socket:[{inode}]");
    pids.iter().position(|pid| {
        pid.is_some_and(|pid| owns_socket(&Path::new("/proc").join(pid.to_string()), &link))
    })
}

fn owns_socket(proc_dir: &Path, link: &str) -> bool {
    let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == link))
}

/// `/proc/net/tcp` writes an IPv4 endpoint as `AABBCCDD:PPPP`: the address as a little-endian
/// u32 in hex, the port in hex.
fn proc_endpoint(addr: SocketAddr) -> Option<String> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let ip = u32::from_le_bytes(v4.ip().octets());
    Some(format!("{ip:08X}:{:04X}", v4.port()))
}

/// The inode of the socket whose local end is `local` and remote end is `remote`.
fn socket_inode(proc_net_tcp: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (local, remote) = (proc_endpoint(local)?, proc_endpoint(remote)?);
    proc_net_tcp.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        (fields.len() > 9 && fields[1] == local && fields[2] == remote)
            .then(|| fields[9].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn partition_blocks_pairs_across_groups_only() {
        let network = Network::new(5);
        network.partition(&[vec![0, 1], vec![2, 3, 4]]);
        let blocked = network.blocked();
        assert_eq!(blocked.len(), 6);
        assert!(is_blocked(&blocked, Some(1), 3));
        assert!(is_blocked(&blocked, Some(3), 1));
        assert!(!is_blocked(&blocked, Some(0), 1));
        assert!(!is_blocked(&blocked, Some(2), 4));
        // An unidentified source is blocked towards anyone with a grudge.
        assert!(is_blocked(&blocked, None, 4));
        network.heal();
        assert!(!is_blocked(&network.blocked(), None, 4));
    }

    #[test]
    fn finds_socket_inodes_in_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:A5B3 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n";
        let local: SocketAddr = "127.0.0.1:42419".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(socket_inode(table, local, remote), Some(4242));
        assert_eq!(socket_inode(table, remote, local), None);
    }

    /// A real proxy: identifies this very process as member 0, forwards, stalls under a
    /// partition, and delivers the held bytes after healing.
    #[tokio::test]
    async fn stalls_blocked_pairs_and_resumes_after_heal() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let network = Network::new(2);
        network.set_pid(0, Some(std::process::id()));
        let proxy = PeerProxy::start(network.clone(), 1, echo_addr)
            .await
            .unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 5];
        conn.write_all(b"hello").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(network.connection_counts(), (1, 0));

        network.partition(&[vec![0], vec![1]]);
        conn.write_all(b"again").await.unwrap();
        let stalled = tokio::time::timeout(Duration::from_millis(300), conn.read_exact(&mut buf));
        assert!(stalled.await.is_err(), "bytes crossed a partition");

        network.heal();
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"again");
        drop(proxy);
    }
}
