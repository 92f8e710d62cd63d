//! Partitions and bad links on loopback: one TCP proxy in front of each member's peer port.
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
//! The network's [`Rules`] act on *directed links*: the bytes from member `a` to member `b`,
//! whichever of them dialed the connection (a connection `a` dialed to `b`'s proxy carries
//! `a → b` one way and `b → a` the other; etcd's stream connections carry mostly the
//! dialer's peer's messages). A *stalled* link delivers nothing: the proxy stops reading and
//! writing that direction, so the sender's buffers fill as with dropped packets, and after
//! healing the held bytes flow on the same connections, as TCP would retransmit them. A
//! partition stalls both directions of a pair (as iptables grudges in Jepsen); a one-way
//! partition stalls one. A *faulty* link ([`LinkFault`]) delays every chunk by a fixed latency
//! plus random jitter (in order, as TCP delivers) and resets the connection with some
//! probability per chunk (a connection drop; dropping single packets inside a TCP stream
//! would only show as delay). A connection dialed over a stalled link waits to be forwarded
//! until the link heals. A connection whose source cannot be identified is stalled towards
//! (and from) its target while any stalled link ends (or starts) there.
//!
//! This module owns the proxies' tasks and never touches member processes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Bytes read at once per direction of a proxied connection.
const PUMP_BUFFER_BYTES: usize = 64 * 1024;

/// Chunks read but not yet delivered, per direction of a proxied connection (they wait out a
/// faulty link's delay); a full queue stops reading, so a slow link pushes back on the sender.
const CHUNKS_IN_FLIGHT_MAX: usize = 64;

/// Unordered pairs of member indexes that cannot talk, each stored as `(low, high)`.
pub type Blocked = BTreeSet<(usize, usize)>;

/// A directed link: the bytes member `.0` sends to member `.1`.
pub type Link = (usize, usize);

/// What a slow or flaky link does to the bytes crossing it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFault {
    /// Every chunk is delivered this long after it was read...
    pub delay: Duration,
    /// ...plus a uniformly random extra below this (never reordering chunks).
    pub jitter: Duration,
    /// Probability, per chunk, that the connection is closed instead of the chunk delivered.
    pub reset_probability: f64,
}

impl LinkFault {
    /// When a chunk read at `now` is due, given the previous chunk's due time (`jitter_draw` is
    /// in `[0, 1)`): never before the previous one, as TCP keeps order.
    fn due(&self, now: Instant, previous: Instant, jitter_draw: f64) -> Instant {
        previous.max(now + self.delay + self.jitter.mul_f64(jitter_draw))
    }
}

/// The network's state, shared by all proxies: stalled and faulty directed links.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    /// Links that deliver nothing.
    pub stalled: BTreeSet<Link>,
    /// Links that are slow or flaky.
    pub faulty: BTreeMap<Link, LinkFault>,
}

impl Rules {
    /// Whether bytes from `from` to `to` must stall; `None` is a member that could not be
    /// identified, which stalls if any stalled link ends (or starts) at the known member.
    fn stalls(&self, from: Option<usize>, to: Option<usize>) -> bool {
        match (from, to) {
            (Some(from), Some(to)) => self.stalled.contains(&(from, to)),
            (None, Some(to)) => self.stalled.iter().any(|&(_, b)| b == to),
            (Some(from), None) => self.stalled.iter().any(|&(a, _)| a == from),
            (None, None) => false,
        }
    }

    /// The fault on the link from `from` to `to`, if both are known and it has one.
    fn fault(&self, from: Option<usize>, to: Option<usize>) -> Option<LinkFault> {
        self.faulty.get(&(from?, to?)).copied()
    }
}

/// Both directions of every pair in `blocked`.
fn both_ways(blocked: &Blocked) -> BTreeSet<Link> {
    blocked
        .iter()
        .flat_map(|&(a, b)| [(a, b), (b, a)])
        .collect()
}

/// Who may talk to whom, and which process is which member, shared by all proxies.
#[derive(Clone)]
pub struct Network {
    rules: Arc<watch::Sender<Rules>>,
    pids: Arc<watch::Sender<Vec<Option<u32>>>>,
    counts: Arc<ConnectionCounts>,
}

/// Connections accepted by all proxies, by whether their source member was identified.
#[derive(Default)]
struct ConnectionCounts {
    identified: AtomicU64,
    unidentified: AtomicU64,
    resets: AtomicU64,
}

impl Network {
    pub fn new(members: usize) -> Network {
        Network {
            rules: Arc::new(watch::Sender::new(Rules::default())),
            pids: Arc::new(watch::Sender::new(vec![None; members])),
            counts: Arc::default(),
        }
    }

    /// Records member `member`'s current process id (`None` while it is down).
    pub fn set_pid(&self, member: usize, pid: Option<u32>) {
        self.pids.send_modify(|pids| pids[member] = pid);
    }

    /// Stalls both directions of exactly the pairs in `blocked` (replacing any earlier
    /// partition, one-way or not).
    pub fn block(&self, blocked: Blocked) {
        self.stall(both_ways(&blocked));
    }

    /// Stalls exactly the directed links in `links` (replacing any earlier partition): a
    /// one-way partition when a link's reverse is not among them.
    pub fn stall(&self, links: BTreeSet<Link>) {
        self.rules.send_modify(|rules| rules.stalled = links);
    }

    /// Makes exactly the links in `faulty` slow or flaky (replacing earlier link faults).
    pub fn degrade(&self, faulty: BTreeMap<Link, LinkFault>) {
        self.rules.send_modify(|rules| rules.faulty = faulty);
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

    /// Removes every partition and link fault.
    pub fn heal(&self) {
        self.rules.send_replace(Rules::default());
    }

    /// Peer connections accepted so far: (identified, unidentified). Unidentified ones are
    /// treated as stalled by every stalled link touching their target, so they should stay rare.
    pub fn connection_counts(&self) -> (u64, u64) {
        (
            self.counts.identified.load(Ordering::Relaxed),
            self.counts.unidentified.load(Ordering::Relaxed),
        )
    }

    /// Connections closed by a flaky link so far.
    pub fn resets(&self) -> u64 {
        self.counts.resets.load(Ordering::Relaxed)
    }

    /// The rules in force.
    pub fn rules(&self) -> Rules {
        self.rules.borrow().clone()
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
    let mut gate = network.rules.subscribe();
    if gate.wait_for(|r| !r.stalls(from, Some(to))).await.is_err() {
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = pump(in_read, out_write, &network, from, Some(to));
    let down = pump(out_read, in_write, &network, Some(to), from);
    // When one direction ends the connection is over; dropping the other half closes it.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// What the reading half of a pump hands the writing half.
enum Chunk {
    /// Bytes to write once `due`.
    Bytes(Vec<u8>, Instant),
    /// A flaky link dropped the connection.
    Reset,
}

/// Copies bytes from member `from` to member `to`, one way, obeying the rules as they change.
async fn pump(
    reader: tokio::net::tcp::OwnedReadHalf,
    writer: tokio::net::tcp::OwnedWriteHalf,
    network: &Network,
    from: Option<usize>,
    to: Option<usize>,
) {
    let (chunks, queue) = mpsc::channel(CHUNKS_IN_FLIGHT_MAX);
    let read = read_side(reader, chunks, network.rules.subscribe(), from, to);
    let write = write_side(writer, queue, network, from, to);
    // The pump ends with its writing half: after the reading half ended and the queue drained,
    // or at once when writing fails or a flaky link resets the connection.
    tokio::select! {
        () = write => {}
        () = async {
            read.await;
            std::future::pending::<()>().await
        } => {}
    }
}

/// Reads chunks while the link is not stalled, stamps each with its due time, and queues it.
async fn read_side(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    chunks: mpsc::Sender<Chunk>,
    mut gate: watch::Receiver<Rules>,
    from: Option<usize>,
    to: Option<usize>,
) {
    let mut buf = vec![0u8; PUMP_BUFFER_BYTES];
    let mut previous_due = Instant::now();
    loop {
        if gate.wait_for(|r| !r.stalls(from, to)).await.is_err() {
            return;
        }
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let fault = gate.borrow().fault(from, to);
        let chunk = match fault {
            Some(fault) if rand::rng().random_bool(fault.reset_probability.clamp(0.0, 1.0)) => {
                Chunk::Reset
            }
            Some(fault) => {
                let draw = rand::rng().random_range(0.0..1.0);
                previous_due = fault.due(Instant::now(), previous_due, draw);
                Chunk::Bytes(buf[..n].to_vec(), previous_due)
            }
            None => {
                previous_due = previous_due.max(Instant::now());
                Chunk::Bytes(buf[..n].to_vec(), previous_due)
            }
        };
        let reset = matches!(chunk, Chunk::Reset);
        if chunks.send(chunk).await.is_err() || reset {
            return;
        }
    }
}

/// Writes queued chunks when due and while the link is not stalled; shuts the write half down
/// when the reading side ended cleanly, and returns at once on a reset.
async fn write_side(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::Receiver<Chunk>,
    network: &Network,
    from: Option<usize>,
    to: Option<usize>,
) {
    let mut gate = network.rules.subscribe();
    while let Some(chunk) = queue.recv().await {
        let (bytes, due) = match chunk {
            Chunk::Bytes(bytes, due) => (bytes, due),
            Chunk::Reset => {
                network.counts.resets.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        tokio::time::sleep_until(due).await;
        // A partition that began while these bytes were on their way holds them until it heals.
        if gate.wait_for(|r| !r.stalls(from, to)).await.is_err() {
            return;
        }
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
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

    #[test]
    fn partition_stalls_both_directions_across_groups_only() {
        let network = Network::new(5);
        network.partition(&[vec![0, 1], vec![2, 3, 4]]);
        let rules = network.rules();
        assert_eq!(rules.stalled.len(), 12);
        assert!(rules.stalls(Some(1), Some(3)));
        assert!(rules.stalls(Some(3), Some(1)));
        assert!(!rules.stalls(Some(0), Some(1)));
        assert!(!rules.stalls(Some(2), Some(4)));
        // An unidentified source is stalled towards, and from, anyone with a grudge.
        assert!(rules.stalls(None, Some(4)));
        assert!(rules.stalls(Some(4), None));
        network.heal();
        assert!(!network.rules().stalls(None, Some(4)));
    }

    #[test]
    fn a_one_way_partition_stalls_one_direction() {
        let network = Network::new(3);
        network.stall(BTreeSet::from([(0, 1)]));
        let rules = network.rules();
        assert!(rules.stalls(Some(0), Some(1)));
        assert!(!rules.stalls(Some(1), Some(0)));
        assert!(rules.stalls(None, Some(1)));
        assert!(!rules.stalls(None, Some(0)));
        assert!(rules.stalls(Some(0), None));
        assert!(!rules.stalls(Some(1), None));
        // Link faults and partitions are set independently; heal clears both.
        let slow = LinkFault {
            delay: Duration::from_millis(5),
            ..LinkFault::default()
        };
        network.degrade(BTreeMap::from([((1, 2), slow)]));
        assert_eq!(network.rules().stalled.len(), 1);
        assert_eq!(network.rules().fault(Some(1), Some(2)), Some(slow));
        assert_eq!(network.rules().fault(Some(2), Some(1)), None);
        assert_eq!(network.rules().fault(None, Some(2)), None);
        network.heal();
        assert_eq!(network.rules(), Rules::default());
    }

    #[test]
    fn delayed_chunks_keep_their_order() {
        let fault = LinkFault {
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(50),
            reset_probability: 0.0,
        };
        let now = Instant::now();
        assert_eq!(fault.due(now, now, 0.0), now + Duration::from_millis(100));
        assert_eq!(fault.due(now, now, 0.5), now + Duration::from_millis(125));
        // A chunk whose draw is smaller than its predecessor's still comes after it.
        let late = now + Duration::from_millis(149);
        assert_eq!(fault.due(now, late, 0.0), late);
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

    /// The far end of a proxied connection: what it received, and a way to make it send.
    struct FarEnd {
        received: mpsc::UnboundedReceiver<Vec<u8>>,
        send: mpsc::UnboundedSender<Vec<u8>>,
    }

    /// A proxy to member 1 whose only connection comes from this process, identified as
    /// member 0; returns the near end and the far end of one connection through it.
    async fn proxied_pair(network: &Network) -> (PeerProxy, TcpStream, FarEnd) {
        let far = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far_addr = far.local_addr().unwrap();
        network.set_pid(0, Some(std::process::id()));
        let proxy = PeerProxy::start(network.clone(), 1, far_addr)
            .await
            .unwrap();
        let near = TcpStream::connect(proxy.addr()).await.unwrap();
        let (stream, _) = far.accept().await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let (received_tx, received) = mpsc::unbounded_channel();
        let (send, mut to_send) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 || received_tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(bytes) = to_send.recv().await {
                if write.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        (proxy, near, FarEnd { received, send })
    }

    const WAIT: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn a_one_way_partition_stalls_only_its_direction() {
        let network = Network::new(2);
        let (_proxy, mut near, mut far) = proxied_pair(&network).await;
        let mut buf = [0u8; 4];

        // 0 → 1 stalled: member 1 hears nothing, member 0 still hears member 1.
        network.stall(BTreeSet::from([(0, 1)]));
        near.write_all(b"ping").await.unwrap();
        let heard = tokio::time::timeout(QUIET, far.received.recv()).await;
        assert!(heard.is_err(), "bytes crossed a one-way partition");
        far.send.send(b"pong".to_vec()).unwrap();
        tokio::time::timeout(WAIT, near.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"pong");

        // Reversed: the held ping arrives, and member 1's answers stall.
        network.stall(BTreeSet::from([(1, 0)]));
        let held = tokio::time::timeout(WAIT, far.received.recv())
            .await
            .unwrap();
        assert_eq!(held.unwrap(), b"ping");
        far.send.send(b"back".to_vec()).unwrap();
        let answered = tokio::time::timeout(QUIET, near.read_exact(&mut buf)).await;
        assert!(answered.is_err(), "bytes crossed a one-way partition");
        network.heal();
        tokio::time::timeout(WAIT, near.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"back");
    }

    #[tokio::test]
    async fn a_slow_link_delays_and_a_flaky_one_resets() {
        let network = Network::new(2);
        let (_proxy, mut near, mut far) = proxied_pair(&network).await;
        let delay = Duration::from_millis(200);
        network.degrade(BTreeMap::from([(
            (0, 1),
            LinkFault {
                delay,
                jitter: Duration::from_millis(50),
                reset_probability: 0.0,
            },
        )]));
        let sent = Instant::now();
        near.write_all(b"slow").await.unwrap();
        let got = tokio::time::timeout(WAIT, far.received.recv())
            .await
            .unwrap();
        assert_eq!(got.unwrap(), b"slow");
        assert!(sent.elapsed() >= delay, "delivered before the link's delay");

        network.degrade(BTreeMap::from([(
            (1, 0),
            LinkFault {
                reset_probability: 1.0,
                ..LinkFault::default()
            },
        )]));
        far.send.send(b"drop".to_vec()).unwrap();
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(WAIT, near.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(network.resets(), 1);
    }
}
