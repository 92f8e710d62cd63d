//! The `lease-keepalive` workload, and the lease machinery it shares with `lease-expiry`:
//! granting (and revoking) leases from many clients, and a *keeper* that renews them over
//! keep-alive streams.
//!
//! `lease-keepalive` grants `leases` leases (keeping each alive from its grant on), renews them
//! for `duration` at a steady `rate` (or as fast as the window allows), then, still renewing,
//! checks a sample of them with `LeaseTimeToLive` and the keys attached to them, and revokes
//! them all.
//!
//! **Expiry while kept alive.** For every lease the keeper remembers when it sent the last
//! renewal the server acknowledged. The server renewed the lease somewhere between that send
//! and its answer, so when a renewal comes back with TTL 0 (the lease is gone), the lease can
//! have expired legitimately only if more than its TTL passed between the previous
//! acknowledged renewal's send and this answer. Otherwise the lease expired *early*: the run
//! fails. The largest such gap over the run is reported next to the TTL.
//!
//! **Ownership:** each keep-alive stream is one task that owns its leases, its in-flight
//! renewals and its histogram; the coordinator steers all streams through one
//! [`watch`] channel of [`Pace`], and grant clients hand new leases to a stream over a bounded
//! channel.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};
use clap::Args;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::histogram::Histogram;
use crate::load::{self, REQUEST_TIMEOUT};
use crate::report::{self, Report};

/// New leases queued for one keep-alive stream.
const NEW_LEASES_QUEUE_LEN: usize = 1024;
/// Times one keep-alive stream is opened again after it failed, at most.
const STREAM_REOPENS_MAX: u32 = 10;
/// Pause before opening a failed stream again.
const STREAM_REOPEN_PAUSE: Duration = Duration::from_millis(100);
/// How long a stopping stream waits for the answers to its outstanding renewals.
const DRAIN_TIMEOUT: Duration = REQUEST_TIMEOUT;
/// Concurrent `LeaseTimeToLive` and `Range` calls of the final check.
const CHECK_CONCURRENCY: usize = 16;
/// Value of the keys attached to leases.
const ATTACHED_VALUE: &[u8] = b"cairn-bench";

// The flags of `lease-keepalive` (a `///` here would replace the subcommand's help text).
#[derive(Args, Debug)]
pub struct KeepaliveArgs {
    /// Comma-separated endpoints; connections go round-robin over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Leases granted and kept alive.
    #[arg(long, default_value_t = 10_000)]
    pub leases: u64,
    /// Requested TTL of every lease, seconds (the server may raise it to its minimum).
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
    /// Keep-alive streams the leases are spread over, round-robin.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// gRPC connections the streams (and the grant clients) are spread over.
    #[arg(long, default_value_t = 10)]
    pub conns: usize,
    /// Renewals per second over all streams during --duration [default: every lease once per
    /// third of its TTL, as etcd's Go client renews]; 0 for as fast as --in-flight allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Renewals outstanding per stream, at most.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// How long to measure the keep-alives (after every lease is granted).
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Concurrent clients granting (and at the end revoking) the leases.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Leases checked at the end with LeaseTimeToLive; each gets a key attached at grant.
    #[arg(long, default_value_t = 1000)]
    pub check_leases: u64,
    /// Print the result as one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Interval of the progress line on stderr; 0 for none.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub progress_interval: Duration,
}

impl KeepaliveArgs {
    pub fn spec(&self) -> anyhow::Result<KeepaliveSpec> {
        let rate = match self.rate {
            None => Some(self.leases as f64 * 3.0 / self.ttl.max(1) as f64),
            Some(r) if r > 0.0 && r.is_finite() => Some(r),
            Some(0.0) => None,
            Some(r) => anyhow::bail!("--rate must be 0 or more, not {r}"),
        };
        let spec = KeepaliveSpec {
            endpoints: self.endpoints.clone(),
            leases: self.leases,
            ttl: self.ttl,
            streams: self.streams,
            conns: self.conns,
            rate,
            in_flight: self.in_flight,
            duration: self.duration,
            clients: self.clients,
            check_leases: self.check_leases.min(self.leases),
            progress: (!self.progress_interval.is_zero()).then_some(self.progress_interval),
        };
        spec.check()?;
        Ok(spec)
    }
}

/// What `lease-keepalive` does.
#[derive(Clone, Debug, PartialEq)]
pub struct KeepaliveSpec {
    pub endpoints: Vec<String>,
    pub leases: u64,
    /// Requested TTL, seconds.
    pub ttl: i64,
    pub streams: usize,
    pub conns: usize,
    /// Renewals per second over all streams; `None` for as fast as the window allows.
    pub rate: Option<f64>,
    /// Renewals outstanding per stream, at most.
    pub in_flight: usize,
    pub duration: Duration,
    pub clients: usize,
    /// Leases checked at the end (each with a key attached).
    pub check_leases: u64,
    pub progress: Option<Duration>,
}

impl KeepaliveSpec {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.endpoints.is_empty(), "no endpoint");
        anyhow::ensure!(self.leases >= 1, "--leases must be at least 1");
        anyhow::ensure!(self.ttl >= 1, "--ttl must be at least 1");
        anyhow::ensure!(self.streams >= 1, "--streams must be at least 1");
        anyhow::ensure!(
            (1..=self.streams).contains(&self.conns),
            "--conns must be between 1 and --streams"
        );
        anyhow::ensure!(self.in_flight >= 1, "--in-flight must be at least 1");
        anyhow::ensure!(self.clients >= 1, "--clients must be at least 1");
        Ok(())
    }

    /// Every `n`th lease gets a key and is checked at the end (0: none).
    fn check_every(&self) -> u64 {
        self.leases.checked_div(self.check_leases).unwrap_or(0)
    }
}

/// A per-run prefix for the keys a lease workload writes, so that runs never see each other's.
pub fn run_prefix(workload: &str) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("cairn-bench/{workload}/{nonce:x}/")
}

/// How the keeper's streams renew their leases; changed for all streams at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Each lease again `interval` after its previous renewal was sent (while leases are being
    /// granted: the load grows with the leases).
    Interval(Duration),
    /// `per_stream` renewals per second on each stream from `since`, cycling over its leases.
    /// Measured.
    Rate { per_stream: f64, since: Instant },
    /// As fast as the window allows, cycling over the leases. Measured.
    Unlimited,
    /// Every lease once more, as fast as the window allows, then end.
    Once,
    /// No more renewals: end once the outstanding ones are answered.
    Stop,
}

impl Pace {
    fn measured(self) -> bool {
        matches!(self, Pace::Rate { .. } | Pace::Unlimited)
    }
}

/// A lease handed to the keeper.
#[derive(Clone, Copy, Debug)]
pub struct NewLease {
    pub id: i64,
    /// Its number in the run (0, 1, …).
    pub index: u64,
    /// The TTL the server granted.
    pub ttl: Duration,
    /// When its grant was sent: the server's deadline is at least this plus `ttl`.
    pub granted_at: Instant,
}

/// One lease as the keeper saw it at the end.
#[derive(Clone, Copy, Debug)]
pub struct LeaseEnd {
    pub id: i64,
    pub index: u64,
    pub ttl: Duration,
    /// Send time of the last renewal (or the grant) the server acknowledged: the server's
    /// deadline for the lease is at least this plus `ttl`.
    pub last_acked_sent: Instant,
    /// A renewal was answered with TTL 0: the lease was gone.
    pub lost: bool,
}

/// What the keeper measured, over all its streams.
#[derive(Clone, Debug, Default)]
pub struct KeeperOutcome {
    /// Round trips of the renewals sent under a measured pace.
    pub latencies: Histogram,
    /// Round trips of the other renewals (while granting, the last round, while checking).
    pub unmeasured_latencies: Histogram,
    /// Renewals acknowledged, in all phases.
    pub renewals: u64,
    /// Renewals that failed (an error, or no answer), and stream failures.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Leases a renewal found gone (TTL 0).
    pub lost: u64,
    /// … of which the server had acknowledged a renewal less than a TTL before: expired early.
    pub lost_early: u64,
    /// The largest time from an acknowledged renewal's send (or the grant's) to the next
    /// renewal's answer, over all leases: a lease expires legitimately only past its TTL.
    pub max_gap: Duration,
    /// Answers that did not come in the order the renewals were sent on their stream.
    pub reordered: u64,
    /// Answers naming a lease with no renewal outstanding on the stream.
    pub foreign: u64,
    /// Keep-alive streams opened again after a failure.
    pub reopens: u64,
    /// Streams that failed more than [`STREAM_REOPENS_MAX`] times and stopped renewing.
    pub dead_streams: u64,
    /// When the last measured renewal was answered.
    pub measured_until: Option<Instant>,
    pub leases: Vec<LeaseEnd>,
}

impl KeeperOutcome {
    fn merge(&mut self, other: KeeperOutcome) {
        self.latencies.merge(&other.latencies);
        self.unmeasured_latencies.merge(&other.unmeasured_latencies);
        self.renewals += other.renewals;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.lost += other.lost;
        self.lost_early += other.lost_early;
        self.max_gap = self.max_gap.max(other.max_gap);
        self.reordered += other.reordered;
        self.foreign += other.foreign;
        self.reopens += other.reopens;
        self.dead_streams += other.dead_streams;
        self.measured_until = self.measured_until.max(other.measured_until);
        self.leases.extend(other.leases);
    }
}

/// One lease on its stream.
struct Tracked {
    end: LeaseEnd,
    last_sent: Instant,
}

/// A renewal sent and not yet answered.
struct Outstanding {
    slot: usize,
    sent: Instant,
    measured: bool,
}

/// An open keep-alive stream.
struct Link {
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

/// One stream's state (owned by its task).
///
/// **Invariant:** `cycle` holds every live lease's slot once, in the order of their last send
/// (or grant): a lease renewed, or newly granted, goes to the back. So the front is always the
/// lease due first, and a fresh lease never holds up older ones that are already due.
struct StreamState {
    leases: Vec<Tracked>,
    /// Slots in renewal order (lost leases are dropped when they reach the front).
    cycle: VecDeque<usize>,
    /// Under [`Pace::Once`]: the slots of the last round not sent yet.
    once: Option<VecDeque<usize>>,
    /// Under [`Pace::Rate`]: its `since`, and renewals sent since.
    rate_since: Option<Instant>,
    rate_sent: u64,
    in_flight: VecDeque<Outstanding>,
    out: KeeperOutcome,
}

impl StreamState {
    fn new() -> StreamState {
        StreamState {
            leases: Vec::new(),
            cycle: VecDeque::new(),
            once: None,
            rate_since: None,
            rate_sent: 0,
            in_flight: VecDeque::new(),
            out: KeeperOutcome::default(),
        }
    }

    fn add(&mut self, lease: NewLease) {
        self.cycle.push_back(self.leases.len());
        self.leases.push(Tracked {
            end: LeaseEnd {
                id: lease.id,
                index: lease.index,
                ttl: lease.ttl,
                last_acked_sent: lease.granted_at,
                lost: false,
            },
            last_sent: lease.granted_at,
        });
    }

    /// Resets the per-pace state when the pace changed.
    fn observe(&mut self, pace: Pace) {
        if let Pace::Rate { since, .. } = pace {
            if self.rate_since != Some(since) {
                self.rate_since = Some(since);
                self.rate_sent = 0;
            }
        }
        if pace == Pace::Once && self.once.is_none() {
            self.once = Some(self.cycle.clone());
        }
    }

    /// The first slot of `queue` whose lease is not known to be gone, dropping those before it.
    fn first_live(leases: &[Tracked], queue: &mut VecDeque<usize>) -> Option<usize> {
        while let Some(&slot) = queue.front() {
            if !leases[slot].end.lost {
                return Some(slot);
            }
            queue.pop_front();
        }
        None
    }

    /// The lease to renew next and when, if any may be sent under `pace` and the window.
    fn next(&mut self, pace: Pace, window: usize, now: Instant) -> Option<(usize, Instant)> {
        if self.in_flight.len() >= window {
            return None;
        }
        if pace == Pace::Once {
            let slot = Self::first_live(&self.leases, self.once.as_mut()?)?;
            return Some((slot, now));
        }
        let slot = Self::first_live(&self.leases, &mut self.cycle)?;
        let due = match pace {
            Pace::Interval(interval) => self.leases[slot].last_sent + interval,
            Pace::Rate { per_stream, since } => {
                since + Duration::from_secs_f64(self.rate_sent as f64 / per_stream)
            }
            Pace::Unlimited => now,
            Pace::Once | Pace::Stop => return None,
        };
        Some((slot, due))
    }

    /// Whether the stream has sent everything its pace asks for.
    fn finishing(&mut self, pace: Pace) -> bool {
        match pace {
            Pace::Stop => true,
            Pace::Once => match self.once.as_mut() {
                Some(once) => Self::first_live(&self.leases, once).is_none(),
                None => true,
            },
            _ => false,
        }
    }

    /// Renewal of `slot` (the one [`StreamState::next`] named) sent at `now`.
    fn sent(&mut self, slot: usize, pace: Pace, now: Instant) {
        self.leases[slot].last_sent = now;
        self.in_flight.push_back(Outstanding {
            slot,
            sent: now,
            measured: pace.measured(),
        });
        if pace == Pace::Once {
            let once = self.once.as_mut().expect("observed before sending");
            assert_eq!(once.pop_front(), Some(slot), "the round goes in order");
        }
        // The lease is now the most recently renewed: to the back of the cycle. It is at the
        // front but in the last round (which follows the cycle's order as it was).
        if self.cycle.front() == Some(&slot) {
            self.cycle.pop_front();
        } else if let Some(pos) = self.cycle.iter().position(|&s| s == slot) {
            self.cycle.remove(pos);
        }
        self.cycle.push_back(slot);
        if matches!(pace, Pace::Rate { .. }) {
            self.rate_sent += 1;
        }
    }

    fn answer(&mut self, resp: &LeaseKeepAliveResponse, now: Instant, acked: &AtomicU64) {
        let leases = &self.leases;
        let Some(pos) = self
            .in_flight
            .iter()
            .position(|o| leases[o.slot].end.id == resp.id)
        else {
            self.out.foreign += 1;
            return;
        };
        if pos > 0 {
            self.out.reordered += 1;
        }
        let o = self
            .in_flight
            .remove(pos)
            .expect("the position was just found");
        let lease = &mut self.leases[o.slot].end;
        let gap = now - lease.last_acked_sent;
        if resp.ttl <= 0 {
            if !lease.lost {
                lease.lost = true;
                self.out.lost += 1;
                if gap <= lease.ttl {
                    self.out.lost_early += 1;
                }
            }
            return;
        }
        self.out.max_gap = self.out.max_gap.max(gap);
        lease.last_acked_sent = lease.last_acked_sent.max(o.sent);
        self.out.renewals += 1;
        acked.fetch_add(1, Ordering::Relaxed);
        if o.measured {
            self.out.latencies.record(now - o.sent);
            self.out.measured_until = Some(now);
        } else {
            self.out.unmeasured_latencies.record(now - o.sent);
        }
    }

    /// The stream failed: its outstanding renewals are lost.
    fn failed(&mut self, error: String) {
        self.out.errors += self.in_flight.len().max(1) as u64;
        self.out.first_error.get_or_insert(error);
        self.in_flight.clear();
    }
}

/// Opens a keep-alive stream with `first` queued (etcd sends a stream's response headers with
/// its first message, so the call returns only once the first renewal is answered).
async fn open_link(
    conn: &Channel,
    first: LeaseKeepAliveRequest,
    window: usize,
) -> Result<Link, String> {
    let (requests, queue) = mpsc::channel(window + 1);
    requests
        .try_send(first)
        .expect("a fresh queue has room for one request");
    let mut client = LeaseClient::new(conn.clone());
    let call = client.lease_keep_alive(ReceiverStream::new(queue));
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Err(_) => Err(format!("keep-alive call: no answer in {REQUEST_TIMEOUT:?}")),
        Ok(Err(status)) => Err(format!(
            "keep-alive call: {:?}: {}",
            status.code(),
            status.message()
        )),
        Ok(Ok(response)) => Ok(Link {
            requests,
            responses: response.into_inner(),
        }),
    }
}

/// One keep-alive stream: renews its leases as `pace` says until told to stop.
async fn keep_stream(
    conn: Channel,
    mut new_leases: mpsc::Receiver<NewLease>,
    mut pace: watch::Receiver<Pace>,
    window: usize,
    acked: Arc<AtomicU64>,
) -> KeeperOutcome {
    let mut st = StreamState::new();
    let mut link: Option<Link> = None;
    let mut new_leases_open = true;
    let mut reopens = 0;
    let mut paused_until: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let mode = *pace.borrow_and_update();
        st.observe(mode);
        let mut now = Instant::now();
        let mut wake = None;
        if paused_until.is_none_or(|p| now >= p) {
            paused_until = None;
            while let Some((slot, due)) = st.next(mode, window, now) {
                if due > now {
                    wake = Some(due);
                    break;
                }
                let request = LeaseKeepAliveRequest {
                    id: st.leases[slot].end.id,
                };
                st.sent(slot, mode, now);
                let sent = match &link {
                    Some(l) => l
                        .requests
                        .try_send(request)
                        .map_err(|_| "the keep-alive stream closed".to_string()),
                    None => open_link(&conn, request, window).await.map(|l| {
                        link = Some(l);
                    }),
                };
                if let Err(error) = sent {
                    link = None;
                    st.failed(error);
                    reopens += 1;
                    st.out.reopens += 1;
                    if reopens > STREAM_REOPENS_MAX {
                        st.out.dead_streams += 1;
                        return finish(st);
                    }
                    paused_until = Some(Instant::now() + STREAM_REOPEN_PAUSE);
                    wake = paused_until;
                    break;
                }
                now = Instant::now();
            }
        } else {
            wake = paused_until;
        }
        if st.finishing(mode) {
            if st.in_flight.is_empty() {
                return finish(st);
            }
            let deadline = *drain_deadline.get_or_insert(now + DRAIN_TIMEOUT);
            if now >= deadline {
                st.failed(format!(
                    "keep-alive: no answer to {} renewals in {DRAIN_TIMEOUT:?}",
                    st.in_flight.len()
                ));
                return finish(st);
            }
            wake = Some(wake.map_or(deadline, |w: Instant| w.min(deadline)));
        }
        let wait_responses = link.is_some();
        tokio::select! {
            biased;
            message = async { link.as_mut().expect("guarded by wait_responses").responses.message().await }, if wait_responses => {
                let error = match message {
                    Ok(Some(resp)) => {
                        st.answer(&resp, Instant::now(), &acked);
                        None
                    }
                    Ok(None) => Some("the server ended a keep-alive stream".to_string()),
                    Err(status) => Some(format!("keep-alive stream: {:?}: {}", status.code(), status.message())),
                };
                if let Some(error) = error {
                    link = None;
                    st.failed(error);
                    reopens += 1;
                    st.out.reopens += 1;
                    if reopens > STREAM_REOPENS_MAX {
                        st.out.dead_streams += 1;
                        return finish(st);
                    }
                    paused_until = Some(Instant::now() + STREAM_REOPEN_PAUSE);
                }
            }
            lease = new_leases.recv(), if new_leases_open => match lease {
                Some(lease) => st.add(lease),
                None => new_leases_open = false,
            },
            changed = pace.changed() => if changed.is_err() {
                // The coordinator is gone (the run failed): nothing will read the outcome.
                return finish(st);
            },
            () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
        }
    }
}

fn finish(mut st: StreamState) -> KeeperOutcome {
    st.out.leases = st.leases.iter().map(|t| t.end).collect();
    st.out
}

/// Renews leases over `streams` keep-alive streams until told to stop.
pub struct Keeper {
    new_leases: Vec<mpsc::Sender<NewLease>>,
    pace: watch::Sender<Pace>,
    streams: JoinSet<KeeperOutcome>,
    /// Renewals acknowledged so far, over all streams.
    pub acked: Arc<AtomicU64>,
}

impl Keeper {
    /// Starts `streams` streams (stream `s` on `conns[s % conns.len()]`), each with at most
    /// `window` renewals outstanding, at `pace`. Streams open on their first lease.
    pub fn start(conns: &[Channel], streams: usize, window: usize, pace: Pace) -> Keeper {
        let (pace_tx, pace_rx) = watch::channel(pace);
        let acked = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let mut new_leases = Vec::with_capacity(streams);
        for s in 0..streams {
            let (tx, rx) = mpsc::channel(NEW_LEASES_QUEUE_LEN);
            new_leases.push(tx);
            tasks.spawn(keep_stream(
                conns[s % conns.len()].clone(),
                rx,
                pace_rx.clone(),
                window,
                acked.clone(),
            ));
        }
        Keeper {
            new_leases,
            pace: pace_tx,
            streams: tasks,
            acked,
        }
    }

    pub fn set_pace(&self, pace: Pace) {
        self.pace.send_replace(pace);
    }

    /// Ends with `last` ([`Pace::Once`] or [`Pace::Stop`]) and gathers every stream's outcome.
    pub async fn finish(mut self, last: Pace) -> anyhow::Result<KeeperOutcome> {
        self.set_pace(last);
        self.new_leases.clear();
        let mut out = KeeperOutcome::default();
        while let Some(stream) = self.streams.join_next().await {
            out.merge(stream.context("a keep-alive stream task panicked")?);
        }
        Ok(out)
    }
}

/// Which leases get a key attached at grant: `{prefix}{index}` for every `every`th (0: none).
#[derive(Clone, Debug)]
pub struct Attach {
    pub prefix: String,
    pub every: u64,
}

impl Attach {
    pub fn key(&self, index: u64) -> Option<Vec<u8>> {
        (self.every > 0 && index.is_multiple_of(self.every))
            .then(|| format!("{}{index}", self.prefix).into_bytes())
    }
}

/// A granted lease.
#[derive(Clone, Copy, Debug)]
pub struct GrantedLease {
    pub index: u64,
    pub id: i64,
    /// Its attached key was written.
    pub attached: bool,
}

/// What granting measured.
#[derive(Clone, Debug, Default)]
pub struct Granted {
    pub leases: Vec<GrantedLease>,
    pub latencies: Histogram,
    pub errors: u64,
    /// Puts of attached keys that failed.
    pub attach_errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// The TTL the server granted (the largest, should they differ), seconds.
    pub granted_ttl: i64,
}

impl Granted {
    pub fn report(&self) -> Report {
        Report {
            workload: "lease-grant".into(),
            latencies: self.latencies.clone(),
            errors: self.errors,
            first_error: self.first_error.clone(),
            elapsed: self.elapsed,
            ops: Vec::new(),
        }
    }
}

fn status_text(what: &str, status: &tonic::Status) -> String {
    format!("{what}: {:?}: {}", status.code(), status.message())
}

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_TIMEOUT);
    request
}

/// Grants `count` leases of `ttl` seconds from `clients` clients (client `c` on
/// `conns[c % conns.len()]`), hands each to `keeper` as soon as it is granted, then writes its
/// attached key, if any.
pub async fn grant(
    conns: &[Channel],
    clients: usize,
    count: u64,
    ttl: i64,
    attach: &Attach,
    keeper: &Keeper,
    progress: Option<Duration>,
) -> anyhow::Result<Granted> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for c in 0..clients {
        let conn = conns[c % conns.len()].clone();
        let (next, done, attach) = (next.clone(), done.clone(), attach.clone());
        // Lease `index` goes to stream `index % streams` (round-robin).
        let streams = keeper.new_leases.clone();
        tasks.spawn(async move {
            let mut lease = LeaseClient::new(conn.clone());
            let mut kv = KvClient::new(conn);
            let mut out = Granted::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                let granted_at = Instant::now();
                let grant = lease
                    .lease_grant(timed(LeaseGrantRequest { ttl, id: 0 }))
                    .await;
                let resp = match grant {
                    Ok(resp) if resp.get_ref().error.is_empty() => resp.into_inner(),
                    Ok(resp) => {
                        out.errors += 1;
                        out.first_error
                            .get_or_insert(format!("grant: {}", resp.get_ref().error));
                        continue;
                    }
                    Err(status) => {
                        out.errors += 1;
                        out.first_error
                            .get_or_insert_with(|| status_text("grant", &status));
                        continue;
                    }
                };
                out.latencies.record(granted_at.elapsed());
                out.granted_ttl = out.granted_ttl.max(resp.ttl);
                let stream = &streams[(index % streams.len() as u64) as usize];
                // A closed stream only means the keeper gave up on it (it says so itself).
                let _ = stream
                    .send(NewLease {
                        id: resp.id,
                        index,
                        ttl: Duration::from_secs(resp.ttl.max(0) as u64),
                        granted_at,
                    })
                    .await;
                let mut attached = false;
                if let Some(key) = attach.key(index) {
                    let put = kv
                        .put(timed(PutRequest {
                            key: key.into(),
                            value: ATTACHED_VALUE.into(),
                            lease: resp.id,
                            ..Default::default()
                        }))
                        .await;
                    match put {
                        Ok(_) => attached = true,
                        Err(status) => {
                            out.attach_errors += 1;
                            out.first_error
                                .get_or_insert_with(|| status_text("put with lease", &status));
                        }
                    }
                }
                out.leases.push(GrantedLease {
                    index,
                    id: resp.id,
                    attached,
                });
                done.fetch_add(1, Ordering::Relaxed);
            }
            out
        });
    }
    let progress_line = progress.map(|every| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(start + every, every);
            loop {
                ticks.tick().await;
                eprintln!(
                    "lease: {}/{count} leases granted after {:.0}s",
                    done.load(Ordering::Relaxed),
                    start.elapsed().as_secs_f64()
                );
            }
        })
    });
    let mut granted = Granted::default();
    while let Some(client) = tasks.join_next().await {
        let out = client.context("a grant client panicked")?;
        granted.leases.extend(out.leases);
        granted.latencies.merge(&out.latencies);
        granted.errors += out.errors;
        granted.attach_errors += out.attach_errors;
        granted.granted_ttl = granted.granted_ttl.max(out.granted_ttl);
        if granted.first_error.is_none() {
            granted.first_error = out.first_error;
        }
    }
    if let Some(line) = progress_line {
        line.abort();
    }
    granted.elapsed = start.elapsed();
    granted.leases.sort_by_key(|l| l.index);
    Ok(granted)
}

/// The TTL the server grants when asked for `ttl` (it may raise it to its minimum), found by
/// granting and revoking one lease.
pub async fn granted_ttl(conn: &Channel, ttl: i64) -> anyhow::Result<i64> {
    let mut lease = LeaseClient::new(conn.clone());
    let granted = lease
        .lease_grant(timed(LeaseGrantRequest { ttl, id: 0 }))
        .await
        .context("granting a probe lease")?
        .into_inner();
    lease
        .lease_revoke(timed(LeaseRevokeRequest { id: granted.id }))
        .await
        .context("revoking the probe lease")?;
    Ok(granted.ttl)
}

/// What revoking measured.
#[derive(Clone, Debug, Default)]
pub struct Revoked {
    pub latencies: Histogram,
    pub errors: u64,
    /// Revokes answered "lease not found": the lease had already expired.
    pub gone: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// Revokes `ids` from `clients` clients.
pub async fn revoke(conns: &[Channel], clients: usize, ids: Vec<i64>) -> anyhow::Result<Revoked> {
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for c in 0..clients {
        let mut lease = LeaseClient::new(conns[c % conns.len()].clone());
        let (ids, next) = (ids.clone(), next.clone());
        tasks.spawn(async move {
            let mut out = Revoked::default();
            while let Some(&id) = ids.get(next.fetch_add(1, Ordering::Relaxed) as usize) {
                let sent = Instant::now();
                match lease.lease_revoke(timed(LeaseRevokeRequest { id })).await {
                    Ok(_) => out.latencies.record(sent.elapsed()),
                    Err(status) if status.code() == tonic::Code::NotFound => out.gone += 1,
                    Err(status) => {
                        out.errors += 1;
                        out.first_error
                            .get_or_insert_with(|| status_text("revoke", &status));
                    }
                }
            }
            out
        });
    }
    let mut revoked = Revoked::default();
    while let Some(client) = tasks.join_next().await {
        let out = client.context("a revoke client panicked")?;
        revoked.latencies.merge(&out.latencies);
        revoked.errors += out.errors;
        revoked.gone += out.gone;
        if revoked.first_error.is_none() {
            revoked.first_error = out.first_error;
        }
    }
    revoked.elapsed = start.elapsed();
    Ok(revoked)
}

/// What the final check of sampled leases found.
#[derive(Clone, Debug, Default)]
pub struct Check {
    pub checked: u64,
    /// LeaseTimeToLive said the lease does not exist (TTL -1) or has no time left.
    pub expired: u64,
    /// The lease's attached key was gone (not in its key list, or not readable with the lease).
    pub keys_vanished: u64,
    /// The smallest remaining TTL among the sampled leases, seconds.
    pub remaining_ttl_min: Option<i64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Checks every granted lease with an attached key: alive, and its key still there.
async fn check_sample(
    conn: Channel,
    sample: Vec<(GrantedLease, Vec<u8>)>,
) -> anyhow::Result<Check> {
    let sample = Arc::new(sample);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..CHECK_CONCURRENCY {
        let (sample, next) = (sample.clone(), next.clone());
        let mut lease = LeaseClient::new(conn.clone());
        let mut kv = KvClient::new(conn.clone());
        tasks.spawn(async move {
            let mut out = Check::default();
            while let Some((granted, key)) =
                sample.get(next.fetch_add(1, Ordering::Relaxed) as usize)
            {
                out.checked += 1;
                let ttl = lease
                    .lease_time_to_live(timed(LeaseTimeToLiveRequest {
                        id: granted.id,
                        keys: true,
                    }))
                    .await;
                let ttl = match ttl {
                    Ok(ttl) => ttl.into_inner(),
                    Err(status) => {
                        out.errors += 1;
                        out.first_error
                            .get_or_insert_with(|| status_text("time-to-live", &status));
                        continue;
                    }
                };
                if ttl.ttl <= 0 {
                    out.expired += 1;
                }
                out.remaining_ttl_min =
                    Some(out.remaining_ttl_min.map_or(ttl.ttl, |m| m.min(ttl.ttl)));
                let range = kv
                    .range(timed(RangeRequest {
                        key: key.clone().into(),
                        ..Default::default()
                    }))
                    .await;
                let present = match range {
                    Ok(range) => range
                        .get_ref()
                        .kvs
                        .first()
                        .is_some_and(|kv| kv.lease == granted.id),
                    Err(status) => {
                        out.errors += 1;
                        out.first_error
                            .get_or_insert_with(|| status_text("range", &status));
                        continue;
                    }
                };
                let listed = ttl.keys.iter().any(|k| k[..] == key[..]);
                if !(present && listed) {
                    out.keys_vanished += 1;
                }
            }
            out
        });
    }
    let mut check = Check::default();
    while let Some(task) = tasks.join_next().await {
        let out = task.context("a check task panicked")?;
        check.checked += out.checked;
        check.expired += out.expired;
        check.keys_vanished += out.keys_vanished;
        check.errors += out.errors;
        check.remaining_ttl_min = match (check.remaining_ttl_min, out.remaining_ttl_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if check.first_error.is_none() {
            check.first_error = out.first_error;
        }
    }
    Ok(check)
}

/// Opens `n` connections round-robin over `endpoints`.
pub async fn connect_all(endpoints: &[String], n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(load::connect(&endpoints[i % endpoints.len()]).await?);
    }
    Ok(conns)
}

/// Prints renewal progress every `every` until aborted.
async fn renewal_progress(acked: Arc<AtomicU64>, every: Duration) {
    let start = Instant::now();
    let mut ticks = tokio::time::interval_at(start + every, every);
    let mut previous = acked.load(Ordering::Relaxed);
    loop {
        ticks.tick().await;
        let now = acked.load(Ordering::Relaxed);
        eprintln!(
            "lease-keepalive: {now} renewals after {:.0}s, {:.0} renewals/s",
            start.elapsed().as_secs_f64(),
            (now - previous) as f64 / every.as_secs_f64()
        );
        previous = now;
    }
}

/// What `lease-keepalive` measured.
#[derive(Clone, Debug)]
pub struct KeepaliveReport {
    pub spec: KeepaliveSpec,
    pub grant: Granted,
    pub keeper: KeeperOutcome,
    /// Renewals sent under the measured pace and acknowledged, per second; latencies are
    /// their round trips.
    pub renewals: Report,
    pub check: Check,
    pub revoke: Revoked,
}

impl KeepaliveReport {
    /// Whether a lease expired while kept alive, or a sampled lease or its key was gone.
    pub fn failed(&self) -> bool {
        self.keeper.lost > 0
            || self.check.expired > 0
            || self.check.keys_vanished > 0
            || self.keeper.dead_streams > 0
    }

    /// Why the run failed, in one line.
    pub fn failure(&self) -> Option<String> {
        self.failed().then(|| {
            format!(
                "{} leases expired while kept alive ({} early: renewed less than a TTL before), \
                 {} of {} sampled leases expired, {} attached keys vanished, {} streams gave up",
                self.keeper.lost,
                self.keeper.lost_early,
                self.check.expired,
                self.check.checked,
                self.check.keys_vanished,
                self.keeper.dead_streams
            )
        })
    }

    pub fn table(&self) -> String {
        let s = &self.spec;
        let k = &self.keeper;
        let g = &self.grant;
        let mut out = format!(
            "lease-keepalive: {} leases (TTL {} s granted, {} requested), {} streams, {} conns, \
             {} in flight per stream\n",
            s.leases, g.granted_ttl, s.ttl, s.streams, s.conns, s.in_flight
        );
        out += &format!(
            "  grant       {} in {:.2}s, {} errors, {:.1} grants/s\n",
            g.latencies.count(),
            g.elapsed.as_secs_f64(),
            g.errors + g.attach_errors,
            g.report().throughput()
        );
        out += &format!(
            "  keep-alive  {} renewals in {:.2}s, {} errors, {:.1} renewals/s (target {})\n",
            self.renewals.latencies.count(),
            self.renewals.elapsed.as_secs_f64(),
            self.renewals.errors,
            self.renewals.throughput(),
            s.rate.map_or("unlimited".into(), |r| format!("{r:.1}/s"))
        );
        out += &format!(
            "  expiry      {} leases lost while kept alive ({} early); largest renewal gap \
             {:.2}s; {} answers reordered, {} foreign; {} stream reopens\n",
            k.lost,
            k.lost_early,
            k.max_gap.as_secs_f64(),
            k.reordered,
            k.foreign,
            k.reopens
        );
        out += &format!(
            "  check       {} sampled: {} expired, {} keys vanished, least TTL left {}s, {} errors: {}\n",
            self.check.checked,
            self.check.expired,
            self.check.keys_vanished,
            self.check
                .remaining_ttl_min
                .map_or("-".into(), |t| t.to_string()),
            self.check.errors,
            if self.failed() { "FAILED" } else { "ok" }
        );
        out += &format!(
            "  revoke      {} in {:.2}s, {} already gone, {} errors, {:.1} revokes/s\n",
            self.revoke.latencies.count(),
            self.revoke.elapsed.as_secs_f64(),
            self.revoke.gone,
            self.revoke.errors,
            self.revoke_report().throughput()
        );
        for error in [
            &g.first_error,
            &self.renewals.first_error,
            &self.check.first_error,
            &self.revoke.first_error,
        ]
        .into_iter()
        .flatten()
        {
            out += &format!("  first error: {error}\n");
        }
        out += &report::latency_table("keep-alive", &self.renewals.latencies);
        out += &report::latency_table("unmeasured", &k.unmeasured_latencies);
        out += &report::latency_table("grant", &g.latencies);
        out += &report::latency_table("revoke", &self.revoke.latencies);
        out += "  (latencies in ms; unmeasured: renewals while granting and checking)\n";
        out
    }

    pub fn revoke_report(&self) -> Report {
        Report {
            workload: "lease-revoke".into(),
            latencies: self.revoke.latencies.clone(),
            errors: self.revoke.errors,
            first_error: self.revoke.first_error.clone(),
            elapsed: self.revoke.elapsed,
            ops: Vec::new(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.spec;
        let k = &self.keeper;
        serde_json::json!({
            "workload": "lease-keepalive",
            "leases": s.leases,
            "ttl": s.ttl,
            "granted_ttl": self.grant.granted_ttl,
            "streams": s.streams,
            "conns": s.conns,
            "in_flight": s.in_flight,
            "target_rate": s.rate,
            "grant": self.grant.report().to_json(),
            "attach_errors": self.grant.attach_errors,
            "renewals": self.renewals.latencies.count(),
            "errors": self.renewals.errors,
            "first_error": self.renewals.first_error,
            "elapsed_s": self.renewals.elapsed.as_secs_f64(),
            "throughput": self.renewals.throughput(),
            "latency_ms": report::latency_json(&self.renewals.latencies),
            "unmeasured_latency_ms": report::latency_json(&k.unmeasured_latencies),
            "lost": k.lost,
            "lost_early": k.lost_early,
            "max_gap_s": k.max_gap.as_secs_f64(),
            "reordered": k.reordered,
            "foreign": k.foreign,
            "reopens": k.reopens,
            "dead_streams": k.dead_streams,
            "checked": self.check.checked,
            "checked_expired": self.check.expired,
            "keys_vanished": self.check.keys_vanished,
            "remaining_ttl_min": self.check.remaining_ttl_min,
            "check_errors": self.check.errors,
            "revoke": self.revoke_report().to_json(),
            "revoke_gone": self.revoke.gone,
            "failed": self.failed(),
        })
    }
}

/// Grants the leases (kept alive from their grant), renews them for `duration`, checks the
/// sample and revokes them all.
pub async fn run_keepalive(spec: &KeepaliveSpec) -> anyhow::Result<KeepaliveReport> {
    spec.check()?;
    let conns = connect_all(&spec.endpoints, spec.conns).await?;
    let attach = Attach {
        prefix: run_prefix("lease-keepalive"),
        every: spec.check_every(),
    };
    // While granting, each lease is renewed every third of its TTL (as etcd's Go client does).
    let ttl = granted_ttl(&conns[0], spec.ttl).await?;
    let setup_interval = Duration::from_secs_f64(ttl as f64 / 3.0);
    let keeper = Keeper::start(
        &conns,
        spec.streams,
        spec.in_flight,
        Pace::Interval(setup_interval),
    );
    let mut progress_lines = JoinSet::new();
    let granted = grant(
        &conns,
        spec.clients,
        spec.leases,
        spec.ttl,
        &attach,
        &keeper,
        spec.progress,
    )
    .await;
    let granted = match granted {
        Ok(granted) => granted,
        Err(e) => {
            keeper.finish(Pace::Stop).await?;
            return Err(e);
        }
    };
    if let Some(every) = spec.progress {
        progress_lines.spawn(renewal_progress(keeper.acked.clone(), every));
    }
    let start = Instant::now();
    keeper.set_pace(match spec.rate {
        Some(rate) => Pace::Rate {
            per_stream: rate / spec.streams as f64,
            since: start,
        },
        None => Pace::Unlimited,
    });
    tokio::time::sleep(spec.duration).await;
    // The leases are checked while still kept alive, at the pace of the grants.
    keeper.set_pace(Pace::Interval(setup_interval));
    progress_lines.abort_all();
    let sample: Vec<_> = granted
        .leases
        .iter()
        .filter(|l| l.attached)
        .filter_map(|l| Some((*l, attach.key(l.index)?)))
        .collect();
    let check = check_sample(conns[0].clone(), sample).await;
    let mut keeper = keeper.finish(Pace::Stop).await?;
    let check = check?;
    let renewals = Report {
        workload: "lease-keepalive".into(),
        latencies: std::mem::take(&mut keeper.latencies),
        errors: keeper.errors,
        first_error: keeper.first_error.clone(),
        elapsed: keeper.measured_until.map_or(spec.duration, |t| t - start),
        ops: Vec::new(),
    };
    let ids = granted.leases.iter().map(|l| l.id).collect();
    let revoked = revoke(&conns, spec.clients, ids).await?;
    Ok(KeepaliveReport {
        spec: spec.clone(),
        grant: granted,
        keeper,
        renewals,
        check,
        revoke: revoked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(n: usize) -> StreamState {
        let now = Instant::now();
        let mut st = StreamState::new();
        for i in 0..n {
            st.add(NewLease {
                id: 100 + i as i64,
                index: i as u64,
                ttl: Duration::from_secs(2),
                granted_at: now,
            });
        }
        st
    }

    fn answer(id: i64, ttl: i64) -> LeaseKeepAliveResponse {
        LeaseKeepAliveResponse {
            header: None,
            id,
            ttl,
        }
    }

    #[test]
    fn unlimited_cycles_over_live_leases_within_the_window() {
        let mut st = state(3);
        let now = Instant::now();
        let mut order = Vec::new();
        while let Some((slot, due)) = st.next(Pace::Unlimited, 2, now) {
            assert_eq!(due, now);
            st.sent(slot, Pace::Unlimited, now);
            order.push(slot);
        }
        assert_eq!(order, [0, 1], "the window of 2 is full");
        let acked = AtomicU64::new(0);
        st.answer(&answer(100, 2), now, &acked);
        let (slot, _) = st.next(Pace::Unlimited, 2, now).unwrap();
        assert_eq!(slot, 2);
        st.sent(slot, Pace::Unlimited, now);
        st.answer(&answer(101, 2), now, &acked);
        st.leases[2].end.lost = true;
        let (slot, _) = st.next(Pace::Unlimited, 2, now).unwrap();
        assert_eq!(slot, 0, "lease 2 is gone: the cycle skips it");
        assert_eq!(acked.load(Ordering::Relaxed), 2);
        assert_eq!(st.out.latencies.count(), 2, "unlimited is measured");
    }

    #[test]
    fn rate_and_interval_schedule_renewals() {
        let mut st = state(2);
        let since = Instant::now();
        let pace = Pace::Rate {
            per_stream: 10.0,
            since,
        };
        st.observe(pace);
        for k in 0..3u64 {
            let (slot, due) = st.next(pace, 10, since).unwrap();
            assert_eq!(slot, (k % 2) as usize);
            assert_eq!(due, since + Duration::from_millis(100 * k));
            st.sent(slot, pace, since + Duration::from_millis(100 * k));
        }
        let interval = Duration::from_millis(500);
        let (slot, due) = st.next(Pace::Interval(interval), 10, since).unwrap();
        assert_eq!(
            (slot, due),
            (1, since + Duration::from_millis(100) + interval)
        );
    }

    #[test]
    fn a_fresh_lease_does_not_hold_up_leases_already_due() {
        let mut st = state(2);
        let t0 = st.leases[0].last_sent;
        let interval = Duration::from_secs(1);
        let pace = Pace::Interval(interval);
        // Lease 0 renewed at t0 + 0.5 s; then lease 2 is granted at t0 + 0.9 s.
        let (slot, _) = st.next(pace, 10, t0).unwrap();
        st.sent(slot, pace, t0 + Duration::from_millis(500));
        st.add(NewLease {
            id: 102,
            index: 2,
            ttl: Duration::from_secs(2),
            granted_at: t0 + Duration::from_millis(900),
        });
        let mut order = Vec::new();
        while let Some((slot, due)) = st.next(pace, 10, t0) {
            order.push((slot, due - t0));
            st.sent(slot, pace, due);
        }
        let ms = Duration::from_millis;
        assert_eq!(
            order[..3],
            [(1, ms(1000)), (0, ms(1500)), (2, ms(1900))],
            "each lease when it is due"
        );
    }

    #[test]
    fn once_renews_every_live_lease_once_then_finishes() {
        let mut st = state(3);
        let now = Instant::now();
        // Renew lease 0 and 1: the cycle is now 2, 0, 1.
        for _ in 0..2 {
            let (slot, _) = st.next(Pace::Unlimited, 10, now).unwrap();
            st.sent(slot, Pace::Unlimited, now);
        }
        st.leases[0].end.lost = true;
        st.observe(Pace::Once);
        assert!(!st.finishing(Pace::Once));
        let mut order = Vec::new();
        while let Some((slot, _)) = st.next(Pace::Once, 10, now) {
            st.sent(slot, Pace::Once, now);
            order.push(slot);
        }
        assert_eq!(order, [2, 1]);
        assert!(st.finishing(Pace::Once));
        assert_eq!(st.out.latencies.count(), 0);
    }

    #[test]
    fn a_lease_gone_within_its_ttl_expired_early() {
        let mut st = state(2);
        let t0 = st.leases[0].end.last_acked_sent;
        let acked = AtomicU64::new(0);
        st.sent(0, Pace::Unlimited, t0 + Duration::from_millis(500));
        st.sent(1, Pace::Unlimited, t0 + Duration::from_millis(500));
        // Answers out of order: lease 101 first.
        st.answer(&answer(101, 0), t0 + Duration::from_secs(3), &acked);
        st.answer(&answer(100, 0), t0 + Duration::from_secs(1), &acked);
        assert_eq!((st.out.lost, st.out.lost_early), (2, 1));
        assert_eq!(st.out.reordered, 1);
        st.answer(&answer(100, 2), t0, &acked);
        assert_eq!(st.out.foreign, 1, "no renewal of 100 outstanding");
        assert!(st.next(Pace::Unlimited, 10, t0).is_none(), "both are gone");
    }

    #[test]
    fn gaps_run_from_the_last_acknowledged_send() {
        let mut st = state(1);
        let t0 = st.leases[0].end.last_acked_sent;
        let acked = AtomicU64::new(0);
        st.sent(
            0,
            Pace::Interval(Duration::ZERO),
            t0 + Duration::from_secs(1),
        );
        st.answer(&answer(100, 2), t0 + Duration::from_millis(1200), &acked);
        assert_eq!(st.out.max_gap, Duration::from_millis(1200));
        assert_eq!(
            st.leases[0].end.last_acked_sent,
            t0 + Duration::from_secs(1)
        );
        assert_eq!(st.out.unmeasured_latencies.count(), 1);
        st.sent(0, Pace::Unlimited, t0 + Duration::from_secs(2));
        st.answer(&answer(100, 2), t0 + Duration::from_millis(2100), &acked);
        assert_eq!(st.out.max_gap, Duration::from_millis(1200));
    }

    #[test]
    fn attach_picks_every_nth_lease() {
        let attach = Attach {
            prefix: "p/".into(),
            every: 3,
        };
        assert_eq!(attach.key(0), Some(b"p/0".to_vec()));
        assert_eq!(attach.key(1), None);
        assert_eq!(attach.key(6), Some(b"p/6".to_vec()));
        let none = Attach {
            prefix: "p/".into(),
            every: 0,
        };
        assert_eq!(none.key(0), None);
    }
}
