//! The peer transport, sending side: raft messages to the other members over gRPC (`cairnpb.Peer`).
//!
//! One task per peer holds one long-lived `Stream` call and coalesces whatever is queued into each
//! [`RaftBatch`]. Queues are bounded: when a peer's queue is full the message is dropped (raft
//! retransmits). A failed connection or stream is reported to raft (`report_unreachable`), and
//! the task reconnects with exponential backoff. A `MsgSnapshot` travels on its own `Snapshot` call
//! (a separate connection), so a large snapshot never delays heartbeats.
//!
//! Each stream also times a `Probe` call every [`PROBE_INTERVAL`] for
//! `etcd_network_peer_round_trip_time_seconds` (etcd's rafthttp prober), and every message that
//! cannot be sent counts in `etcd_network_peer_sent_failures_total`.
//!
//! **Invariant:** the raft loop never blocks on the network: [`Transport::send`] only enqueues.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::cairnpb::peer_client::PeerClient;
use cairn_proto::cairnpb::{ProbeRequest, RaftBatch, SnapshotChunk};
use crossbeam_channel::Sender;
use prometheus::{Histogram, IntCounter, IntGauge};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::storage::SnapshotSource;
use super::PeerInput;
use crate::metrics::METRICS;
use crate::snapshot::Checkpoint;
use crate::tls::Dialer;

/// Messages queued for one peer, at most.
const PEER_QUEUE_LEN_MAX: usize = 4096;
/// Batches handed to one stream and not yet written to the connection, at most.
const STREAM_BATCHES_MAX: usize = 16;
/// Encoded messages per batch, at most (in bytes; one larger message travels alone).
pub const BATCH_BYTES_MAX: usize = 4 << 20;
/// The largest peer message accepted (a batch, or a chunk of a snapshot).
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a connected peer is probed for its round-trip time.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe unanswered for this long is not measured (the connection's keep-alive judges the peer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 flow-control windows of peer connections, per stream and per connection: with the
/// protocol's 64 KiB default a batch or snapshot chunk waits a round trip per 64 KiB.
pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// What every peer task shares.
struct Shared {
    local: u64,
    cluster_id: u64,
    reports: Sender<PeerInput>,
    snapshots: Arc<SnapshotSource>,
    dialer: Dialer,
    active: PeersActive,
    /// Set when a peer refuses this member as removed from the cluster.
    removed: watch::Sender<bool>,
}

/// Since when each peer's stream has been up (absent: not connected).
pub type PeersActive = Arc<Mutex<HashMap<u64, Instant>>>;

impl Shared {
    fn report(&self, m: PeerInput) {
        // A full mailbox drops the report; raft copes (it probes again).
        let _ = self.reports.try_send(m);
    }
}

/// A peer's queue and the task that drains it (stopped when the link is dropped).
struct Link {
    urls: Vec<String>,
    queue: mpsc::Sender<Message>,
    task: JoinHandle<()>,
    metrics: LinkMetrics,
}

/// The metrics of one peer, labelled once when its link is made.
#[derive(Clone)]
struct LinkMetrics {
    sent_bytes: IntCounter,
    sent_failures: IntCounter,
    round_trip: Histogram,
    active: IntGauge,
    disconnected: IntCounter,
}

impl LinkMetrics {
    fn new(local: u64, to: u64) -> LinkMetrics {
        let (local, to) = (format!("{local:x}"), format!("{to:x}"));
        let m = &*METRICS;
        LinkMetrics {
            sent_bytes: m.peer_sent_bytes.with_label_values(&[&to]),
            sent_failures: m.peer_sent_failures.with_label_values(&[&to]),
            round_trip: m.peer_round_trip_time_seconds.with_label_values(&[&to]),
            active: m.active_peers.with_label_values(&[&local, &to]),
            disconnected: m.disconnected_peers.with_label_values(&[&local, &to]),
        }
    }

    /// `m` will not be sent.
    fn dropped(&self, m: &Message) {
        self.sent_failures.inc();
        if m.get_msg_type() == MessageType::MsgHeartbeat {
            METRICS.heartbeat_send_failures.inc();
        }
    }

    /// The stream to the peer failed (or never came up).
    fn disconnected(&self) {
        if self.active.get() != 0 {
            self.active.set(0);
            self.disconnected.inc();
        }
    }
}

/// The raft loop's way out to the other members. Owned by the raft loop.
pub struct Transport {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    links: HashMap<u64, Link>,
}

impl Transport {
    pub fn new(
        local: u64,
        cluster_id: u64,
        reports: Sender<PeerInput>,
        snapshots: Arc<SnapshotSource>,
        dialer: Dialer,
        runtime: tokio::runtime::Handle,
    ) -> Transport {
        Transport {
            shared: Arc::new(Shared {
                local,
                cluster_id,
                reports,
                snapshots,
                dialer,
                active: PeersActive::default(),
                removed: watch::Sender::new(false),
            }),
            runtime,
            links: HashMap::new(),
        }
    }

    /// Becomes true when a peer refuses this member as removed (it learns of its removal that way
    /// when it was down while the cluster removed it).
    pub fn removed(&self) -> watch::Receiver<bool> {
        self.shared.removed.subscribe()
    }

    /// Since when each peer has been connected.
    pub fn active(&self) -> PeersActive {
        self.shared.active.clone()
    }

    /// Makes the set of peers `peers` (id → peer URLs, without this member): new ones get a link,
    /// removed ones lose theirs, changed URLs reconnect.
    pub fn set_peers(&mut self, peers: &HashMap<u64, Vec<String>>) {
        let active = &self.shared.active;
        self.links.retain(|id, link| {
            let keep = peers.get(id) == Some(&link.urls);
            if !keep {
                active.lock().expect("peers lock").remove(id);
            }
            keep
        });
        for (&id, urls) in peers {
            if id == self.shared.local || self.links.contains_key(&id) {
                continue;
            }
            let (queue, rx) = mpsc::channel(PEER_QUEUE_LEN_MAX);
            let metrics = LinkMetrics::new(self.shared.local, id);
            let task = self.runtime.spawn(run_link(
                self.shared.clone(),
                id,
                urls.clone(),
                rx,
                metrics.clone(),
            ));
            self.links.insert(
                id,
                Link {
                    urls: urls.clone(),
                    queue,
                    task,
                    metrics,
                },
            );
        }
    }

    /// Queues `messages` for their peers; never blocks.
    pub fn send(&mut self, messages: Vec<Message>) {
        for m in messages {
            let Some(link) = self.links.get(&m.to) else {
                tracing::debug!(to = format_args!("{:x}", m.to), "no link to peer; dropped");
                METRICS
                    .peer_sent_failures
                    .with_label_values(&[&format!("{:x}", m.to)])
                    .inc();
                self.shared.report(PeerInput::Unreachable(m.to));
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let (shared, urls) = (self.shared.clone(), link.urls.clone());
                self.runtime.spawn(send_snapshot(shared, urls, m));
                continue;
            }
            if let Err(e) = link.queue.try_send(m) {
                tracing::debug!("peer queue: {e}; message dropped");
                link.metrics.dropped(&e.into_inner());
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
        self.metrics.active.set(0);
    }
}

async fn connect(dialer: &Dialer, urls: &[String]) -> Result<Channel, String> {
    let mut last = String::from("no peer URL");
    for url in urls {
        let endpoint = match Endpoint::from_shared(url.clone()) {
            Ok(e) => e,
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        match dialer.connect(endpoint).await {
            Ok(c) => return Ok(c),
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(last)
}

fn client(channel: Channel) -> PeerClient<Channel> {
    PeerClient::new(channel)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

/// Keeps one stream to peer `to` alive until the link is dropped.
async fn run_link(
    shared: Arc<Shared>,
    to: u64,
    urls: Vec<String>,
    mut rx: mpsc::Receiver<Message>,
    metrics: LinkMetrics,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match stream_to(&shared, to, &urls, &mut rx, &mut backoff, &metrics).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(peer = format_args!("{to:x}"), "peer stream failed: {e}");
                shared.active.lock().expect("peers lock").remove(&to);
                shared.report(PeerInput::Unreachable(to));
                metrics.disconnected();
            }
        }
        // What queues while the peer is down is dropped: raft resends from its log.
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                m = rx.recv() => match m {
                    Some(m) => metrics.dropped(&m),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Streams batches to `to` until the stream fails (`Err`) or the link closes (`Ok`).
async fn stream_to(
    shared: &Shared,
    to: u64,
    urls: &[String],
    rx: &mut mpsc::Receiver<Message>,
    backoff: &mut Duration,
    metrics: &LinkMetrics,
) -> Result<(), String> {
    let channel = connect(&shared.dialer, urls).await?;
    let (batches, batches_rx) = mpsc::channel(STREAM_BATCHES_MAX);
    let mut client = client(channel);
    let prober = tokio::spawn(probe(client.clone(), metrics.round_trip.clone()));
    let mut call =
        tokio::spawn(async move { client.stream(ReceiverStream::new(batches_rx)).await });
    *backoff = BACKOFF_MIN;
    metrics.active.set(1);
    shared
        .active
        .lock()
        .expect("peers lock")
        .entry(to)
        .or_insert_with(Instant::now);
    let result = loop {
        tokio::select! {
            r = &mut call => break Err(match r {
                Ok(Ok(_)) => "peer closed the stream".to_string(),
                Ok(Err(status)) => {
                    if status.code() == tonic::Code::PermissionDenied {
                        shared.removed.send_replace(true);
                    }
                    status.message().to_string()
                }
                Err(e) => e.to_string(),
            }),
            m = rx.recv() => {
                let Some(m) = m else { break Ok(()) };
                let mut size = 0;
                let mut messages = vec![];
                let mut next = Some(m);
                while let Some(m) = next.take() {
                    let bytes = m.write_to_bytes().expect("raft messages encode");
                    size += bytes.len();
                    messages.push(bytes.into());
                    if size < BATCH_BYTES_MAX {
                        next = rx.try_recv().ok();
                    }
                }
                let count = messages.len() as u64;
                let batch = RaftBatch {
                    from: shared.local,
                    to,
                    cluster_id: shared.cluster_id,
                    messages,
                };
                if batches.send(batch).await.is_err() {
                    metrics.sent_failures.inc_by(count);
                    break Err("stream ended".to_string());
                }
                metrics.sent_bytes.inc_by(size as u64);
            }
        }
    };
    call.abort();
    prober.abort();
    result
}

/// Times a `Probe` call to the peer every [`PROBE_INTERVAL`], on the stream's connection (etcd:
/// rafthttp's prober of `/raft/probing`).
async fn probe(mut client: PeerClient<Channel>, round_trip: Histogram) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let start = Instant::now();
        let answer = tokio::time::timeout(PROBE_TIMEOUT, client.probe(ProbeRequest {})).await;
        if let Ok(Ok(_)) = answer {
            round_trip.observe(start.elapsed().as_secs_f64());
        }
    }
}

/// Streams the checkpoint that `m` names to its peer, then tells raft how it went.
async fn send_snapshot(shared: Arc<Shared>, urls: Vec<String>, m: Message) {
    let to = m.to;
    let result = stream_snapshot(&shared, &urls, m).await;
    if let Err(e) = &result {
        tracing::warn!(
            peer = format_args!("{to:x}"),
            "sending snapshot failed: {e}"
        );
        shared.report(PeerInput::Unreachable(to));
    }
    shared.report(PeerInput::SnapshotSent {
        to,
        ok: result.is_ok(),
    });
}

async fn stream_snapshot(shared: &Shared, urls: &[String], m: Message) -> Result<(), String> {
    let checkpoint: Arc<Checkpoint> = shared
        .snapshots
        .checkpoint(m.get_snapshot().get_data())
        .ok_or("the snapshot's checkpoint is gone")?;
    let index = m.get_snapshot().get_metadata().index;
    tracing::info!(peer = format_args!("{:x}", m.to), index, "sending snapshot");
    let channel = connect(&shared.dialer, urls).await?;
    let (chunks, chunks_rx) = mpsc::channel::<SnapshotChunk>(4);
    let header = SnapshotChunk {
        from: shared.local,
        to: m.to,
        cluster_id: shared.cluster_id,
        ..SnapshotChunk::default()
    };
    let first = SnapshotChunk {
        message: m.write_to_bytes().expect("raft messages encode").into(),
        ..header.clone()
    };
    let sent = METRICS
        .peer_sent_bytes
        .with_label_values(&[&format!("{:x}", m.to)]);
    let producer = tokio::task::spawn_blocking(move || {
        sent.inc_by(first.message.len() as u64);
        if chunks.blocking_send(first).is_err() {
            return Ok(());
        }
        checkpoint.for_each_chunk(|records| {
            sent.inc_by(records.len() as u64);
            chunks
                .blocking_send(SnapshotChunk {
                    records: records.into(),
                    ..header.clone()
                })
                .is_ok()
        })?;
        let _ = chunks.blocking_send(SnapshotChunk {
            last: true,
            ..header
        });
        Ok::<_, crate::snapshot::SnapshotError>(())
    });
    let sent = client(channel)
        .snapshot(ReceiverStream::new(chunks_rx))
        .await
        .map_err(|s| s.message().to_string());
    producer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    sent?;
    tracing::info!(index, "snapshot sent");
    Ok(())
}
