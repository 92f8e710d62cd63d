//! The `watch` workload: put-to-event latency, delivered events/s, and a delivery check of
//! etcd's Watch.
//!
//! `watchers` watchers, each on one of `keys` keys (watcher `w` on key `w % keys`; `keys = 1`
//! is fan-out: every put reaches every watcher), spread round-robin over `streams` gRPC watch
//! streams, the streams round-robin over `conns` connections and the connections over the
//! endpoints. Once every watcher is created, `put_clients` putters write the keys round-robin
//! (put `n` writes key `n % keys`) through the first endpoint, at `rate` and/or with at most
//! `in_flight` puts whose events are not all delivered yet (a closed loop that measures
//! capacity without an unbounded backlog).
//!
//! Each put's value starts with the put's number and its send time (ns since the put phase
//! began), so a watcher times an event and knows which put it is from the event alone. Each
//! watcher keeps a bitset of the puts to its key it received: at the end, a put that was
//! acknowledged but never reached one of its watchers is *missing*, a second receipt is a
//! *duplicate*, and an event whose revision is not above the watcher's previous one is *out of
//! order*. Any of those fails the run.
//!
//! Creation follows etcd's Go client (clientv3/watcher.go): one create request outstanding per
//! stream, the next one sent after the previous one's `created` response, because etcd answers
//! creates in order and names in each only the watch id it assigned.
//!
//! **Ownership:** each stream's reader task owns its watchers and its latency histogram; the
//! shared state on the hot path is a few atomic counters and the [`Notify`] that wakes
//! putters waiting for the `in_flight` window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::Event;
use clap::Args;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Bytes;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::histogram::Histogram;
use crate::load::{self, Rng, Stop, REQUEST_TIMEOUT};
use crate::report::{self, Report};

/// Bytes at the start of every value: the put's number and its send time, both u64 LE.
pub const VALUE_HEADER_BYTES: usize = 16;
/// Puts of a run given neither `--total` nor `--duration` (etcd benchmark watch's
/// `--put-total`).
const TOTAL_DEFAULT: u64 = 1000;
/// Requests queued on one stream (creates go one at a time, so 1 would do).
const STREAM_QUEUE_LEN: usize = 4;

// The flags of `watch` (a `///` here would replace the subcommand's help text).
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Comma-separated endpoints; watch connections go round-robin over them, puts to the
    /// first.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Watchers in all.
    #[arg(long, default_value_t = 1000)]
    pub watchers: u64,
    /// gRPC watch streams the watchers are spread over, round-robin.
    #[arg(long, default_value_t = 10)]
    pub streams: u64,
    /// Connections the streams are spread over, round-robin.
    #[arg(long, default_value_t = 1)]
    pub conns: u64,
    /// Distinct keys; watcher w watches key w % keys (1: every put reaches every watcher).
    #[arg(long, default_value_t = 1)]
    pub keys: u64,
    /// Puts in all [default: 1000 unless --duration].
    #[arg(long, conflicts_with = "duration")]
    pub total: Option<u64>,
    /// Put for this long instead (e.g. 30s, 500ms, 2m).
    #[arg(long, value_parser = crate::parse_duration)]
    pub duration: Option<Duration>,
    /// Puts per second over all putters; 0 for no limit.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Puts whose events are not all delivered yet, at most (a closed loop); 0 for no limit.
    #[arg(long, default_value_t = 0)]
    pub in_flight: u64,
    /// Concurrent putters, on one connection to the first endpoint.
    #[arg(long, default_value_t = 1)]
    pub put_clients: u64,
    /// Value size, bytes (at least 16: the put's number and send time).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// Give up waiting for events after this long without a new one.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub drain_timeout: Duration,
    /// Print the result as one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Interval of the progress line on stderr; 0 for none.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub progress_interval: Duration,
}

impl WatchArgs {
    pub fn spec(&self) -> anyhow::Result<WatchSpec> {
        anyhow::ensure!(
            self.rate >= 0.0 && self.rate.is_finite(),
            "--rate must be 0 or more"
        );
        let spec = WatchSpec {
            endpoints: self.endpoints.clone(),
            watchers: self.watchers,
            streams: self.streams,
            conns: self.conns,
            keys: self.keys,
            put_clients: self.put_clients,
            stop: match (self.total, self.duration) {
                (_, Some(d)) => Stop::Duration(d),
                (Some(n), None) => Stop::Total(n),
                (None, None) => Stop::Total(TOTAL_DEFAULT),
            },
            rate: (self.rate > 0.0).then_some(self.rate),
            in_flight: (self.in_flight > 0).then_some(self.in_flight),
            val_size: self.val_size,
            drain_timeout: self.drain_timeout,
            progress: (!self.progress_interval.is_zero()).then_some(self.progress_interval),
        };
        spec.check()?;
        Ok(spec)
    }
}

/// Who watches what, and how the keys are written.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchSpec {
    /// `host:port` or URL; watch connections round-robin, puts to the first.
    pub endpoints: Vec<String>,
    pub watchers: u64,
    pub streams: u64,
    pub conns: u64,
    pub keys: u64,
    pub put_clients: u64,
    /// Puts in all, or how long to put.
    pub stop: Stop,
    /// Puts per second over all putters; `None` for no limit.
    pub rate: Option<f64>,
    /// Puts not yet delivered to all their watchers, at most; `None` for no limit.
    pub in_flight: Option<u64>,
    pub val_size: usize,
    /// How long the run waits for events without a new one before it gives up.
    pub drain_timeout: Duration,
    /// How often to print a progress line on stderr; `None` for never.
    pub progress: Option<Duration>,
}

impl WatchSpec {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.endpoints.is_empty(), "no endpoint");
        anyhow::ensure!(self.keys >= 1, "--keys must be at least 1");
        anyhow::ensure!(
            self.watchers >= self.keys,
            "--watchers ({}) must be at least --keys ({}): every key needs a watcher",
            self.watchers,
            self.keys
        );
        anyhow::ensure!(
            (1..=self.watchers).contains(&self.streams),
            "--streams must be between 1 and --watchers"
        );
        anyhow::ensure!(
            (1..=self.streams).contains(&self.conns),
            "--conns must be between 1 and --streams"
        );
        anyhow::ensure!(self.put_clients >= 1, "--put-clients must be at least 1");
        anyhow::ensure!(
            self.val_size >= VALUE_HEADER_BYTES,
            "--val-size must be at least {VALUE_HEADER_BYTES} (the put's number and send time)"
        );
        Ok(())
    }

    fn fanout(&self) -> Fanout {
        Fanout {
            watchers: self.watchers,
            keys: self.keys,
        }
    }
}

/// The arithmetic of watchers round-robin over keys and puts round-robin over keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fanout {
    watchers: u64,
    keys: u64,
}

impl Fanout {
    fn key_of_watcher(self, w: u64) -> u64 {
        w % self.keys
    }

    fn key_of_put(self, n: u64) -> u64 {
        n % self.keys
    }

    /// Put `n`'s position among the puts to its key.
    fn seq_of_put(self, n: u64) -> u64 {
        n / self.keys
    }

    fn watchers_of_key(self, k: u64) -> u64 {
        self.watchers / self.keys + u64::from(k < self.watchers % self.keys)
    }

    fn watchers_of_key_max(self) -> u64 {
        self.watchers.div_ceil(self.keys)
    }

    /// Events that puts `0..n` produce.
    fn events_of_puts(self, n: u64) -> u64 {
        let (cycles, rest) = (n / self.keys, n % self.keys);
        cycles * self.watchers
            + rest * (self.watchers / self.keys)
            + rest.min(self.watchers % self.keys)
    }
}

/// The name of key `k`.
fn key_name(k: u64) -> Bytes {
    format!("cairn-bench/watch/{k}").into()
}

/// Put `n`'s value: its number, its send time, then `filler`.
fn encode_value(n: u64, sent_ns: u64, filler: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_HEADER_BYTES + filler.len());
    value.extend_from_slice(&n.to_le_bytes());
    value.extend_from_slice(&sent_ns.to_le_bytes());
    value.extend_from_slice(filler);
    value
}

/// The put number and send time at the start of `value`.
fn decode_value(value: &[u8]) -> Option<(u64, u64)> {
    let n = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let sent_ns = u64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
    Some((n, sent_ns))
}

/// One watcher's view of the puts to its key.
#[derive(Clone, Debug, Default)]
struct Watcher {
    key: u64,
    /// Bit `seq` set: the `seq`th put to the key was received.
    received: Vec<u64>,
    /// The highest revision received, 0 before any.
    last_revision: i64,
}

impl Watcher {
    fn new(key: u64) -> Self {
        Watcher {
            key,
            ..Default::default()
        }
    }

    /// Marks put `seq` (of this watcher's key) received; false if it already was.
    fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.received.len() {
            self.received.resize(word + 1, 0);
        }
        let fresh = self.received[word] & bit == 0;
        self.received[word] |= bit;
        fresh
    }
}

/// What the delivery check counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Events a watcher received for the first time.
    pub events: u64,
    /// Events of acknowledged puts that a watcher never received.
    pub missing: u64,
    /// Events a watcher received again.
    pub duplicates: u64,
    /// First receipts whose revision was not above the watcher's previous event's.
    pub out_of_order: u64,
    /// Events of an unknown watch id or another key, not puts, or with a value this run did
    /// not write.
    pub foreign: u64,
    /// Watchers the server canceled, and streams it ended or failed.
    pub canceled: u64,
    /// Events of puts whose request failed (they may still have been applied): no failure.
    pub unacked: u64,
}

impl Delivery {
    /// Counts that fail the run.
    pub fn failures(&self) -> u64 {
        self.missing + self.duplicates + self.out_of_order + self.foreign + self.canceled
    }

    fn add(&mut self, other: &Delivery) {
        self.events += other.events;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.foreign += other.foreign;
        self.canceled += other.canceled;
        self.unacked += other.unacked;
    }

    /// `0 missing, 0 duplicate, …`.
    pub fn summary(&self) -> String {
        format!(
            "{} missing, {} duplicate, {} out of order, {} foreign, {} canceled",
            self.missing, self.duplicates, self.out_of_order, self.foreign, self.canceled
        )
    }
}

/// Checks one event against the watcher it came to and marks it received; the put's send time
/// (ns) if this is the watcher's first receipt of it. `issued` bounds the put numbers this run
/// has handed out.
fn receive(
    fanout: Fanout,
    key_name: &[u8],
    issued: u64,
    watcher: &mut Watcher,
    event: &Event,
    delivery: &mut Delivery,
) -> Option<u64> {
    let ours = event
        .kv
        .as_ref()
        .filter(|kv| event.r#type == EventType::Put as i32 && kv.key == key_name)
        .and_then(|kv| Some((kv.mod_revision, decode_value(&kv.value)?)))
        .filter(|&(_, (n, _))| n < issued && fanout.key_of_put(n) == watcher.key);
    let Some((revision, (n, sent_ns))) = ours else {
        delivery.foreign += 1;
        return None;
    };
    if !watcher.mark(fanout.seq_of_put(n)) {
        delivery.duplicates += 1;
        return None;
    }
    if revision <= watcher.last_revision {
        delivery.out_of_order += 1;
    } else {
        watcher.last_revision = revision;
    }
    delivery.events += 1;
    Some(sent_ns)
}

/// Per key, a bitset over the key's puts: set for the acknowledged ones.
fn acked_by_key(fanout: Fanout, acked: &[u64]) -> Vec<Vec<u64>> {
    let mut by_key = vec![Vec::new(); fanout.keys as usize];
    for &n in acked {
        let bits: &mut Vec<u64> = &mut by_key[fanout.key_of_put(n) as usize];
        let seq = fanout.seq_of_put(n);
        let word = (seq / 64) as usize;
        if word >= bits.len() {
            bits.resize(word + 1, 0);
        }
        bits[word] |= 1 << (seq % 64);
    }
    by_key
}

/// Adds `watcher`'s missing events (acknowledged, not received) and unacknowledged ones
/// (received, not acknowledged) to `delivery`.
fn settle(watcher: &Watcher, acked: &[u64], delivery: &mut Delivery) {
    for i in 0..acked.len().max(watcher.received.len()) {
        let expected = acked.get(i).copied().unwrap_or(0);
        let got = watcher.received.get(i).copied().unwrap_or(0);
        delivery.missing += u64::from((expected & !got).count_ones());
        delivery.unacked += u64::from((got & !expected).count_ones());
    }
}

/// Shared by the putters, the stream readers and the progress line.
struct Shared {
    fanout: Fanout,
    key_names: Arc<Vec<Bytes>>,
    /// The put phase's start: the origin of the send times carried in values.
    start: Instant,
    stop: Stop,
    rate: Option<f64>,
    /// The window in events (`in_flight` × the largest fan-out of a key).
    in_flight_events: Option<u64>,
    val_size: usize,
    drain_timeout: Duration,
    /// Put numbers handed out (some past the end, never sent).
    claimed: AtomicU64,
    /// Puts acknowledged.
    acked: AtomicU64,
    /// Events of puts that failed: never waited for.
    forgiven: AtomicU64,
    /// First receipts of an event by its watcher, over all streams.
    delivered: AtomicU64,
    /// Signalled whenever `delivered` or `forgiven` grows.
    delivery: Notify,
    /// Set when events stopped coming for `drain_timeout`: no more puts.
    stalled: AtomicBool,
}

impl Shared {
    fn settled(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed) + self.forgiven.load(Ordering::Relaxed)
    }

    fn past(&self, deadline: Option<Instant>) -> bool {
        deadline.is_some_and(|d| Instant::now() >= d) || self.stalled.load(Ordering::Relaxed)
    }

    /// Claims the next put number, waiting for its slot under the rate and the window;
    /// `None` when the put phase is over.
    async fn next_put(&self) -> Option<u64> {
        let deadline = self.stop.duration().map(|d| self.start + d);
        if self.past(deadline) {
            return None;
        }
        let n = self.claimed.fetch_add(1, Ordering::Relaxed);
        if self.stop.total().is_some_and(|total| n >= total) {
            return None;
        }
        if let Some(rate) = self.rate {
            tokio::time::sleep_until(self.start + Duration::from_secs_f64(n as f64 / rate)).await;
            if self.past(deadline) {
                return None;
            }
        }
        if let Some(window) = self.in_flight_events {
            let needed = self.fanout.events_of_puts(n + 1).saturating_sub(window);
            if !self.wait_settled(needed, deadline).await {
                return None;
            }
        }
        Some(n)
    }

    /// Waits until `needed` events are delivered (or forgiven); false if `deadline` comes
    /// first or no event arrives for `drain_timeout` (then the run is marked stalled).
    async fn wait_settled(&self, needed: u64, deadline: Option<Instant>) -> bool {
        let mut seen = self.settled();
        let mut progress_at = Instant::now();
        loop {
            let notified = self.delivery.notified();
            tokio::pin!(notified);
            // Registered before the check, so a delivery between the check and the await
            // still wakes this waiter.
            notified.as_mut().enable();
            let settled = self.settled();
            if settled >= needed {
                return true;
            }
            if self.past(deadline) {
                return false;
            }
            if settled != seen {
                (seen, progress_at) = (settled, Instant::now());
            }
            let stall_at = progress_at + self.drain_timeout;
            if Instant::now() >= stall_at {
                self.stalled.store(true, Ordering::Relaxed);
                self.delivery.notify_waiters();
                return false;
            }
            let wake_at = deadline.map_or(stall_at, |d| d.min(stall_at));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }
}

/// What one putter did.
#[derive(Default)]
struct PutterOutcome {
    acked: Vec<u64>,
    failed: Vec<u64>,
    latencies: Histogram,
    first_error: Option<String>,
}

async fn putter(shared: Arc<Shared>, mut kv: KvClient<Channel>, seed: u64) -> PutterOutcome {
    let mut rng = Rng(seed);
    let mut outcome = PutterOutcome::default();
    while let Some(n) = shared.next_put().await {
        let key = shared.fanout.key_of_put(n);
        let filler = rng.bytes(shared.val_size - VALUE_HEADER_BYTES);
        let sent = shared.start.elapsed();
        let value = encode_value(n, sent.as_nanos() as u64, &filler);
        let mut request = tonic::Request::new(PutRequest {
            key: shared.key_names[key as usize].clone(),
            value: value.into(),
            ..Default::default()
        });
        request.set_timeout(REQUEST_TIMEOUT);
        match kv.put(request).await {
            Ok(_) => {
                outcome.latencies.record(shared.start.elapsed() - sent);
                outcome.acked.push(n);
                shared.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                outcome.failed.push(n);
                outcome.first_error.get_or_insert_with(|| {
                    format!("put: {:?}: {}", status.code(), status.message())
                });
                shared
                    .forgiven
                    .fetch_add(shared.fanout.watchers_of_key(key), Ordering::Relaxed);
                shared.delivery.notify_waiters();
            }
        }
    }
    outcome
}

/// One stream after all its watchers were created.
struct OpenStream {
    /// Kept until the end: dropping it half-closes the stream.
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
    /// Watch id (assigned by the server) → index in `watchers`.
    ids: HashMap<i64, usize>,
    watchers: Vec<Watcher>,
}

/// Opens a watch stream on `channel` and creates a watcher on each of `keys` in turn,
/// counting them in `created`.
async fn open_stream(
    channel: Channel,
    keys: Vec<u64>,
    key_names: Arc<Vec<Bytes>>,
    created: Arc<AtomicU64>,
) -> anyhow::Result<OpenStream> {
    let create = |k: u64| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key_names[k as usize].clone(),
            ..Default::default()
        })),
    };
    let (requests, queue) = mpsc::channel(STREAM_QUEUE_LEN);
    // etcd sends the stream's response headers with its first message, so the call returns
    // only after the first create is answered: queue it before.
    requests
        .send(create(keys[0]))
        .await
        .expect("the queue's receiver is alive until the call");
    let mut client = WatchClient::new(channel);
    let call = client.watch(ReceiverStream::new(queue));
    let mut responses = tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .context("no answer to a watch call")?
        .context("opening a watch stream")?
        .into_inner();
    let mut ids = HashMap::with_capacity(keys.len());
    let mut watchers = Vec::with_capacity(keys.len());
    for (i, &k) in keys.iter().enumerate() {
        if i > 0 {
            requests
                .send(create(k))
                .await
                .context("the watch stream closed")?;
        }
        let response = tokio::time::timeout(REQUEST_TIMEOUT, responses.message())
            .await
            .with_context(|| format!("no created response after {REQUEST_TIMEOUT:?}"))?
            .context("watch stream")?
            .context("the server ended the watch stream")?;
        anyhow::ensure!(
            response.created && !response.canceled,
            "create answered by {response:?}"
        );
        anyhow::ensure!(
            ids.insert(response.watch_id, i).is_none(),
            "watch id {} assigned twice on one stream",
            response.watch_id
        );
        watchers.push(Watcher::new(k));
        created.fetch_add(1, Ordering::Relaxed);
    }
    Ok(OpenStream {
        requests,
        responses,
        ids,
        watchers,
    })
}

/// What one stream's reader measured.
struct StreamOutcome {
    watchers: Vec<Watcher>,
    latencies: Histogram,
    delivery: Delivery,
    last_event: Option<Instant>,
    error: Option<String>,
}

/// Reads one stream's responses until `done`, checking and timing every event.
async fn read_stream(
    shared: Arc<Shared>,
    stream: OpenStream,
    mut done: watch::Receiver<bool>,
) -> StreamOutcome {
    let OpenStream {
        requests,
        mut responses,
        ids,
        mut watchers,
    } = stream;
    let mut outcome = StreamOutcome {
        watchers: Vec::new(),
        latencies: Histogram::default(),
        delivery: Delivery::default(),
        last_event: None,
        error: None,
    };
    loop {
        let message = tokio::select! {
            message = responses.message() => message,
            _ = done.wait_for(|&done| done) => break,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                outcome.delivery.canceled += 1;
                outcome.error = Some("the server ended a watch stream".into());
                break;
            }
            Err(status) => {
                outcome.delivery.canceled += 1;
                outcome.error = Some(format!(
                    "watch stream: {:?}: {}",
                    status.code(),
                    status.message()
                ));
                break;
            }
        };
        let Some(&i) = ids.get(&response.watch_id) else {
            // Progress notifications (watch id -1) carry no events.
            outcome.delivery.foreign += response.events.len() as u64;
            continue;
        };
        if response.canceled {
            outcome.delivery.canceled += 1;
            outcome
                .error
                .get_or_insert_with(|| format!("watcher canceled: {:?}", response.cancel_reason));
        }
        let now_ns = shared.start.elapsed().as_nanos() as u64;
        let issued = shared.claimed.load(Ordering::Relaxed);
        let watcher = &mut watchers[i];
        let key_name = &shared.key_names[watcher.key as usize];
        let mut fresh = 0;
        for event in &response.events {
            let first = receive(
                shared.fanout,
                key_name,
                issued,
                watcher,
                event,
                &mut outcome.delivery,
            );
            if let Some(sent_ns) = first {
                outcome
                    .latencies
                    .record(Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
                fresh += 1;
            }
        }
        if fresh > 0 {
            outcome.last_event = Some(Instant::now());
            shared.delivered.fetch_add(fresh, Ordering::Relaxed);
            shared.delivery.notify_waiters();
        }
    }
    drop(requests);
    outcome.watchers = watchers;
    outcome
}

/// Prints a creation progress line every `every` until aborted.
async fn creation_progress(created: Arc<AtomicU64>, watchers: u64, every: Duration) {
    let start = Instant::now();
    let mut ticks = tokio::time::interval_at(start + every, every);
    loop {
        ticks.tick().await;
        eprintln!(
            "watch: {}/{watchers} watchers created after {:.0}s",
            created.load(Ordering::Relaxed),
            start.elapsed().as_secs_f64()
        );
    }
}

/// Prints a progress line every `every` until aborted.
async fn progress(shared: Arc<Shared>, every: Duration) {
    let mut ticks = tokio::time::interval_at(shared.start + every, every);
    let mut previous = 0;
    loop {
        ticks.tick().await;
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let acked = shared.acked.load(Ordering::Relaxed);
        eprintln!(
            "watch: {acked} puts, {delivered} events after {:.0}s, {:.0} events/s",
            shared.start.elapsed().as_secs_f64(),
            (delivered - previous) as f64 / every.as_secs_f64()
        );
        previous = delivered;
    }
}

/// What a watch run measured.
#[derive(Clone, Debug)]
pub struct WatchReport {
    pub spec: WatchSpec,
    /// Creating every watcher (all streams at once, one create at a time per stream).
    pub create_elapsed: Duration,
    /// Latencies of the acknowledged puts.
    pub put_latencies: Histogram,
    pub put_errors: u64,
    /// From the first put sent to the last one answered.
    pub put_elapsed: Duration,
    /// Events the acknowledged puts should reach.
    pub expected_events: u64,
    pub delivery: Delivery,
    /// Events stopped coming for `drain_timeout` before all were delivered.
    pub stalled: bool,
    /// Put-to-event latencies of first receipts; `elapsed` from the first put sent to the last
    /// event received; `errors` counts put errors and delivery failures; so `throughput()` is
    /// delivered events/s.
    pub events: Report,
}

impl WatchReport {
    /// Whether the delivery check failed.
    pub fn failed(&self) -> bool {
        self.delivery.failures() > 0
    }

    pub fn puts(&self) -> u64 {
        self.put_latencies.count()
    }

    pub fn table(&self) -> String {
        let s = &self.spec;
        let mut out = format!(
            "watch: {} watchers on {} key(s), {} streams, {} conns; created in {:.2}s\n",
            s.watchers,
            s.keys,
            s.streams,
            s.conns,
            self.create_elapsed.as_secs_f64()
        );
        out += &format!(
            "  puts        {} in {:.2}s, {} errors, {:.1} puts/s\n",
            self.puts(),
            self.put_elapsed.as_secs_f64(),
            self.put_errors,
            self.puts() as f64 / self.put_elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
        );
        out += &format!(
            "  events      {} of {} delivered in {:.2}s{}\n",
            self.delivery.events - self.delivery.unacked,
            self.expected_events,
            self.events.elapsed.as_secs_f64(),
            if self.stalled { " (stalled)" } else { "" }
        );
        out += &format!("  throughput  {:.1} events/s\n", self.events.throughput());
        out += &format!(
            "  delivery    {}: {}\n",
            self.delivery.summary(),
            if self.failed() { "FAILED" } else { "ok" }
        );
        if let Some(error) = &self.events.first_error {
            out += &format!("  first error: {error}\n");
        }
        out += &report::latency_table("put-to-event", &self.events.latencies);
        out += &report::latency_table("put", &self.put_latencies);
        out += "  (latencies in ms)\n";
        out
    }

    /// One JSON object: the spec, the counts, events/s and both latency distributions (ms).
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.spec;
        let d = &self.delivery;
        serde_json::json!({
            "workload": "watch",
            "watchers": s.watchers,
            "streams": s.streams,
            "conns": s.conns,
            "keys": s.keys,
            "create_s": self.create_elapsed.as_secs_f64(),
            "puts": self.puts(),
            "put_errors": self.put_errors,
            "put_elapsed_s": self.put_elapsed.as_secs_f64(),
            "expected_events": self.expected_events,
            "events": d.events,
            "missing": d.missing,
            "duplicates": d.duplicates,
            "out_of_order": d.out_of_order,
            "foreign": d.foreign,
            "canceled": d.canceled,
            "unacked": d.unacked,
            "stalled": self.stalled,
            "failed": self.failed(),
            "first_error": self.events.first_error,
            "elapsed_s": self.events.elapsed.as_secs_f64(),
            "throughput": self.events.throughput(),
            "latency_ms": report::latency_json(&self.events.latencies),
            "put_latency_ms": report::latency_json(&self.put_latencies),
        })
    }
}

/// Creates the watchers, puts, waits for the events and checks their delivery.
pub async fn run(spec: &WatchSpec) -> anyhow::Result<WatchReport> {
    spec.check()?;
    let fanout = spec.fanout();
    let key_names: Arc<Vec<Bytes>> = Arc::new((0..spec.keys).map(key_name).collect());
    let mut conns = Vec::new();
    for i in 0..spec.conns as usize {
        conns.push(load::connect(&spec.endpoints[i % spec.endpoints.len()]).await?);
    }
    let put_conn = load::connect(&spec.endpoints[0]).await?;

    let create_start = Instant::now();
    let created = Arc::new(AtomicU64::new(0));
    // Progress lines run in a JoinSet so that leaving early (an error) aborts them too.
    let mut progress_lines = JoinSet::new();
    if let Some(every) = spec.progress {
        progress_lines.spawn(creation_progress(created.clone(), spec.watchers, every));
    }
    let mut creating = JoinSet::new();
    for s in 0..spec.streams {
        let keys = (s..spec.watchers)
            .step_by(spec.streams as usize)
            .map(|w| fanout.key_of_watcher(w))
            .collect();
        let conn = conns[(s % spec.conns) as usize].clone();
        creating.spawn(open_stream(conn, keys, key_names.clone(), created.clone()));
    }
    let mut streams = Vec::with_capacity(spec.streams as usize);
    while let Some(stream) = creating.join_next().await {
        streams.push(
            stream
                .context("a stream task panicked")?
                .context("creating watchers")?,
        );
    }
    let create_elapsed = create_start.elapsed();
    progress_lines.abort_all();

    let shared = Arc::new(Shared {
        fanout,
        key_names,
        start: Instant::now(),
        stop: spec.stop,
        rate: spec.rate,
        in_flight_events: spec
            .in_flight
            .map(|puts| puts * fanout.watchers_of_key_max()),
        val_size: spec.val_size,
        drain_timeout: spec.drain_timeout,
        claimed: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        forgiven: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        delivery: Notify::new(),
        stalled: AtomicBool::new(false),
    });
    let (done, done_rx) = watch::channel(false);
    let mut readers = JoinSet::new();
    for stream in streams {
        readers.spawn(read_stream(shared.clone(), stream, done_rx.clone()));
    }
    if let Some(every) = spec.progress {
        progress_lines.spawn(progress(shared.clone(), every));
    }
    let mut putters = JoinSet::new();
    for i in 0..spec.put_clients {
        putters.spawn(putter(shared.clone(), KvClient::new(put_conn.clone()), i));
    }
    let mut puts = PutterOutcome::default();
    while let Some(outcome) = putters.join_next().await {
        let outcome = outcome.context("a putter panicked")?;
        puts.acked.extend(outcome.acked);
        puts.failed.extend(outcome.failed);
        puts.latencies.merge(&outcome.latencies);
        if puts.first_error.is_none() {
            puts.first_error = outcome.first_error;
        }
    }
    let put_elapsed = shared.start.elapsed();
    let events_of = |puts: &[u64]| -> u64 {
        puts.iter()
            .map(|&n| fanout.watchers_of_key(fanout.key_of_put(n)))
            .sum()
    };
    let expected_events = events_of(&puts.acked);
    let all_delivered = shared
        .wait_settled(expected_events + events_of(&puts.failed), None)
        .await;
    done.send(true)
        .expect("the readers hold receivers until they return");

    let acked = acked_by_key(fanout, &puts.acked);
    let mut latencies = Histogram::default();
    let mut delivery = Delivery::default();
    let mut last_event = None;
    let mut first_error = puts.first_error;
    while let Some(outcome) = readers.join_next().await {
        let outcome = outcome.context("a stream reader panicked")?;
        latencies.merge(&outcome.latencies);
        for watcher in &outcome.watchers {
            settle(watcher, &acked[watcher.key as usize], &mut delivery);
        }
        delivery.add(&outcome.delivery);
        last_event = last_event.max(outcome.last_event);
        if first_error.is_none() {
            first_error = outcome.error;
        }
    }
    progress_lines.abort_all();
    if delivery.failures() > 0 && first_error.is_none() {
        first_error = Some(format!("delivery check: {}", delivery.summary()));
    }
    let put_errors = puts.failed.len() as u64;
    Ok(WatchReport {
        spec: spec.clone(),
        create_elapsed,
        put_latencies: puts.latencies,
        put_errors,
        put_elapsed,
        expected_events,
        delivery,
        stalled: !all_delivered,
        events: Report {
            workload: "watch".into(),
            latencies,
            errors: put_errors + delivery.failures(),
            first_error,
            elapsed: last_event.map_or(put_elapsed, |at| at - shared.start),
            ops: Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::KeyValue;

    fn put_event(key: u64, n: u64, revision: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key_name(key),
                mod_revision: revision,
                value: encode_value(n, 1000 + n, b"filler").into(),
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn watchers_and_puts_go_round_robin_over_keys() {
        let fanout = Fanout {
            watchers: 10,
            keys: 4,
        };
        let per_key: Vec<u64> = (0..4).map(|k| fanout.watchers_of_key(k)).collect();
        assert_eq!(per_key, [3, 3, 2, 2]);
        assert_eq!(
            per_key,
            (0..4)
                .map(|k| (0..10).filter(|&w| fanout.key_of_watcher(w) == k).count() as u64)
                .collect::<Vec<_>>()
        );
        assert_eq!(fanout.watchers_of_key_max(), 3);
        for n in 0..20 {
            let by_hand: u64 = (0..n)
                .map(|i| fanout.watchers_of_key(fanout.key_of_put(i)))
                .sum();
            assert_eq!(fanout.events_of_puts(n), by_hand, "n = {n}");
        }
        assert_eq!((fanout.key_of_put(9), fanout.seq_of_put(9)), (1, 2));
        let one_key = Fanout {
            watchers: 10_000,
            keys: 1,
        };
        assert_eq!(one_key.events_of_puts(3), 30_000);
    }

    #[test]
    fn values_carry_the_put_number_and_send_time() {
        let value = encode_value(42, 7_000_000, &[9; 16]);
        assert_eq!(value.len(), 32);
        assert_eq!(decode_value(&value), Some((42, 7_000_000)));
        assert_eq!(decode_value(&value[..15]), None);
    }

    #[test]
    fn receive_counts_first_receipts_duplicates_and_disorder() {
        let fanout = Fanout {
            watchers: 4,
            keys: 2,
        };
        let mut watcher = Watcher::new(1);
        let mut d = Delivery::default();
        let name = key_name(1);
        // Puts 1, 3, 5 write key 1 (seqs 0, 1, 2).
        assert_eq!(
            receive(fanout, &name, 10, &mut watcher, &put_event(1, 1, 5), &mut d),
            Some(1001)
        );
        assert_eq!(
            receive(fanout, &name, 10, &mut watcher, &put_event(1, 5, 9), &mut d),
            Some(1005)
        );
        // Put 3 after put 5: delivered, but out of revision order.
        assert!(receive(fanout, &name, 10, &mut watcher, &put_event(1, 3, 7), &mut d).is_some());
        // Put 5 again.
        assert!(receive(fanout, &name, 10, &mut watcher, &put_event(1, 5, 9), &mut d).is_none());
        assert_eq!(
            (d.events, d.duplicates, d.out_of_order, d.foreign),
            (3, 1, 1, 0)
        );
        // Another key's name, a put number of another key, a number never issued, a delete.
        let mut other_key = put_event(1, 1, 11);
        other_key.kv.as_mut().unwrap().key = key_name(0);
        let mut delete = put_event(1, 7, 12);
        delete.r#type = EventType::Delete as i32;
        for event in [other_key, put_event(1, 2, 11), put_event(1, 11, 11), delete] {
            assert!(receive(fanout, &name, 10, &mut watcher, &event, &mut d).is_none());
        }
        assert_eq!((d.events, d.foreign), (3, 4));
        assert_eq!(watcher.last_revision, 9);
    }

    #[test]
    fn settle_finds_missing_and_unacknowledged_events() {
        let fanout = Fanout {
            watchers: 2,
            keys: 2,
        };
        // Key 0's puts: 0, 2, 4, …, 200 (seqs 0..=100); 130 (seq 65) failed.
        let acked: Vec<u64> = (0..=200).step_by(2).filter(|&n| n != 130).collect();
        let by_key = acked_by_key(fanout, &acked);
        let mut watcher = Watcher::new(0);
        for seq in 0..=100 {
            if seq != 3 && seq != 99 {
                watcher.mark(seq);
            }
        }
        watcher.mark(101);
        let mut d = Delivery::default();
        settle(&watcher, &by_key[0], &mut d);
        // Missing: seqs 3 and 99. Unacknowledged: 65 (failed) and 101 (never acknowledged).
        assert_eq!((d.missing, d.unacked), (2, 2));
        assert_eq!(d.failures(), 2);
        let mut d = Delivery::default();
        settle(&Watcher::new(1), &by_key[1], &mut d);
        assert_eq!(d, Delivery::default());
    }

    #[test]
    fn specs_that_cannot_work_are_refused() {
        let spec = WatchSpec {
            endpoints: vec!["127.0.0.1:2379".into()],
            watchers: 10,
            streams: 2,
            conns: 1,
            keys: 5,
            put_clients: 1,
            stop: Stop::Total(10),
            rate: None,
            in_flight: Some(1),
            val_size: 16,
            drain_timeout: Duration::from_secs(1),
            progress: None,
        };
        assert!(spec.check().is_ok());
        for bad in [
            WatchSpec {
                keys: 11,
                ..spec.clone()
            },
            WatchSpec {
                streams: 11,
                ..spec.clone()
            },
            WatchSpec {
                conns: 3,
                ..spec.clone()
            },
            WatchSpec {
                val_size: 15,
                ..spec.clone()
            },
            WatchSpec {
                put_clients: 0,
                ..spec.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
