//! The `lease-expiry` workload: many leases expiring at once, under a steady write load.
//!
//! 1. Each member's `Status` (leader, raft term) is read; optionally (`before`) one client puts
//!    back to back on the first endpoint as a baseline before anything else happens.
//! 2. A watch on the attached keys' prefix (deletes only) is opened on the first endpoint.
//! 3. `leases` leases of `ttl` seconds are granted, each with one key attached, while a keeper
//!    renews every lease twice per TTL, so none expires during setup however long it takes.
//! 4. The keeper renews every lease one last time, as fast as it can, and stops: from then on
//!    the leases' deadlines fall within that last round, a TTL away. The put client runs from
//!    here on; until the first deletion its puts are the *before* baseline.
//! 5. Just after the last deadline, a few expired leases are *probed*: one keep-alive each,
//!    then a read of the lease's key. etcd answers such a keep-alive only once the lease's
//!    revoke is applied (its keys deleted); an answer "gone" while the key is still readable
//!    is counted as *stale*.
//! 6. The run waits until the watch has seen every attached key deleted (or `timeout` past the
//!    last deadline), puts for `after` more, reads `Status` again and counts the keys left.
//!
//! Put latencies are split by their send time into *before* (the baseline, and puts before the
//! first deletion), *during* (from the first deletion seen to the last) and *after*. A lease's
//! deadline is at least its last acknowledged renewal's send time plus its TTL; a key whose
//! delete event arrives before that expired *early*. Delete events are timed when the watch
//! delivers them, an upper bound on the deletion's time.
//!
//! The TTL defaults to 10 s, not the minimum: to keep 10 000 leases of the minimum TTL (2 s)
//! alive during setup a client must renew 10 000 a second, more than etcd 3.4 answers on a
//! small machine, and once one lease expires etcd holds its keep-alive stream until the revoke
//! is applied, so the others on that stream expire too. `--ttl 1` asks for the minimum.
//!
//! The run fails when a key expired early, a lease was lost during setup, a put failed, a key
//! was left after the timeout, or the leader or raft term changed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::watch_create_request::FilterType;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::{
    LeaseKeepAliveRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use cairn_proto::mvccpb::event::EventType;
use clap::Args;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cluster;
use crate::histogram::Histogram;
use crate::lease::{self, Attach, Pace};
use crate::load::{self, Rng, REQUEST_TIMEOUT};
use crate::report::{self, Report};

/// Distinct keys the put load cycles over.
const PUT_KEYS: u64 = 1000;
/// Expired leases probed with one keep-alive each.
const PROBES: usize = 10;
/// When the probes go, after the last lease's deadline.
const PROBE_DELAY: Duration = Duration::from_millis(200);
/// How long a probe waits for its answer (etcd answers once the revoke is applied, which the
/// 1000 revokes/s limit delays by up to `leases / 1000` seconds).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

// The flags of `lease-expiry` (a `///` here would replace the subcommand's help text).
#[derive(Args, Debug)]
pub struct ExpiryArgs {
    /// Comma-separated endpoints, leader first: the puts and the watch go to the first; the
    /// leases' connections round-robin over all; Status is read from all.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Leases that expire together, each with one key attached.
    #[arg(long, default_value_t = 10_000)]
    pub leases: u64,
    /// Requested TTL, seconds (1: the server raises it to its minimum, 2 s with etcd's
    /// default 1 s election timeout).
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
    /// Concurrent clients granting the leases and attaching the keys.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// gRPC connections for the grants and the keep-alive streams.
    #[arg(long, default_value_t = 10)]
    pub conns: usize,
    /// Keep-alive streams renewing the leases during setup.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// Renewals outstanding per stream, at most.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Baseline put load before the leases are granted (the puts between the last renewal and
    /// the first deletion are a baseline too).
    #[arg(long, default_value = "0s", value_parser = crate::parse_duration)]
    pub before: Duration,
    /// Put load after the last key is gone.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub after: Duration,
    /// Give up waiting for the keys to go this long after the last lease's deadline.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// Value size of the puts, bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Print the result as one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Interval of the progress line on stderr; 0 for none.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub progress_interval: Duration,
}

impl ExpiryArgs {
    pub fn spec(&self) -> anyhow::Result<ExpirySpec> {
        let spec = ExpirySpec {
            endpoints: self.endpoints.clone(),
            leases: self.leases,
            ttl: self.ttl,
            clients: self.clients,
            conns: self.conns,
            streams: self.streams,
            in_flight: self.in_flight,
            before: self.before,
            after: self.after,
            timeout: self.timeout,
            val_size: self.val_size,
            progress: (!self.progress_interval.is_zero()).then_some(self.progress_interval),
        };
        spec.check()?;
        Ok(spec)
    }
}

/// What `lease-expiry` does.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpirySpec {
    pub endpoints: Vec<String>,
    pub leases: u64,
    pub ttl: i64,
    pub clients: usize,
    pub conns: usize,
    pub streams: usize,
    pub in_flight: usize,
    pub before: Duration,
    pub after: Duration,
    pub timeout: Duration,
    pub val_size: usize,
    pub progress: Option<Duration>,
}

impl ExpirySpec {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.endpoints.is_empty(), "no endpoint");
        anyhow::ensure!(self.leases >= 1, "--leases must be at least 1");
        anyhow::ensure!(self.ttl >= 1, "--ttl must be at least 1");
        anyhow::ensure!(self.clients >= 1, "--clients must be at least 1");
        anyhow::ensure!(self.conns >= 1, "--conns must be at least 1");
        anyhow::ensure!(self.streams >= 1, "--streams must be at least 1");
        anyhow::ensure!(self.in_flight >= 1, "--in-flight must be at least 1");
        Ok(())
    }
}

/// One put of the steady load.
#[derive(Clone, Copy, Debug)]
struct PutSample {
    sent: Instant,
    /// `None`: the put failed.
    latency: Option<Duration>,
}

/// One client putting back to back (keys `{prefix}0` … cycling) until `stop`.
async fn put_load(
    conn: Channel,
    prefix: String,
    val_size: usize,
    mut stop: watch::Receiver<bool>,
) -> PutOutcome {
    let mut kv = KvClient::new(conn);
    let mut rng = Rng(0x1ea5e);
    let mut samples = Vec::new();
    let mut first_error = None;
    for n in 0.. {
        if *stop.borrow_and_update() {
            break;
        }
        let mut request = tonic::Request::new(PutRequest {
            key: format!("{prefix}{}", n % PUT_KEYS).into_bytes().into(),
            value: rng.bytes(val_size).into(),
            ..Default::default()
        });
        request.set_timeout(REQUEST_TIMEOUT);
        let sent = Instant::now();
        let latency = match kv.put(request).await {
            Ok(_) => Some(sent.elapsed()),
            Err(status) => {
                first_error.get_or_insert_with(|| {
                    format!("put: {:?}: {}", status.code(), status.message())
                });
                None
            }
        };
        samples.push(PutSample { sent, latency });
    }
    (samples, first_error)
}

/// The put load's samples and its first error.
type PutOutcome = (Vec<PutSample>, Option<String>);

/// Starts the put load; stop it with the returned sender.
fn start_puts(
    conn: &Channel,
    prefix: &str,
    val_size: usize,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<PutOutcome>) {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(put_load(conn.clone(), prefix.into(), val_size, stop_rx));
    (stop, task)
}

/// The end of the range of keys starting with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Lease number `index` of a key `{prefix}{index}`.
fn index_of(key: &[u8], prefix: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(prefix)?)
        .ok()?
        .parse()
        .ok()
}

/// When each attached key's delete event arrived, by lease number.
struct Deletions {
    times: Vec<Option<Instant>>,
    error: Option<String>,
}

/// Watches the deletes under `prefix` on `conn`; returns once the watch is created.
async fn watch_deletes(
    conn: Channel,
    prefix: Vec<u8>,
    leases: u64,
    gone: Arc<AtomicU64>,
    notify: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<Deletions>> {
    let (requests, queue) = mpsc::channel(1);
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.clone().into(),
                range_end: prefix_end(&prefix).into(),
                filters: vec![FilterType::Noput as i32],
                ..Default::default()
            })),
        })
        .await
        .expect("the queue's receiver is alive until the call");
    let mut client = WatchClient::new(conn);
    let mut responses =
        tokio::time::timeout(REQUEST_TIMEOUT, client.watch(ReceiverStream::new(queue)))
            .await
            .context("no answer to a watch call")?
            .context("opening a watch stream")?
            .into_inner();
    let created = tokio::time::timeout(REQUEST_TIMEOUT, responses.message())
        .await
        .context("no created response")?
        .context("watch stream")?
        .context("the server ended the watch stream")?;
    anyhow::ensure!(
        created.created && !created.canceled,
        "watch create answered by {created:?}"
    );
    Ok(tokio::spawn(async move {
        let mut out = Deletions {
            times: vec![None; leases as usize],
            error: None,
        };
        loop {
            let message = tokio::select! {
                message = responses.message() => message,
                _ = stop.wait_for(|&stop| stop) => break,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => {
                    out.error = Some("the server ended the watch stream".into());
                    break;
                }
                Err(status) => {
                    out.error = Some(format!("watch: {:?}: {}", status.code(), status.message()));
                    break;
                }
            };
            if response.canceled {
                out.error = Some(format!("watch canceled: {}", response.cancel_reason));
                break;
            }
            let now = Instant::now();
            for event in &response.events {
                let index = event
                    .kv
                    .as_ref()
                    .filter(|_| event.r#type == EventType::Delete as i32)
                    .and_then(|kv| index_of(&kv.key, &prefix));
                if let Some(slot) = index.and_then(|i| out.times.get_mut(i as usize)) {
                    if slot.is_none() {
                        *slot = Some(now);
                        gone.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            notify.notify_waiters();
        }
        drop(requests);
        out
    }))
}

/// How keep-alives of expired leases were answered.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    pub sent: u64,
    /// Answered TTL 0: the lease is gone.
    pub gone: u64,
    /// … while the lease's key could still be read right after the answer.
    pub stale: u64,
    /// Answered with a TTL above 0: the expired lease was renewed.
    pub renewed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the keep-alive's send to its answer.
    pub latencies: Histogram,
}

/// One keep-alive of lease `id`, then a linearizable read of `key`: (answer time, TTL
/// answered, key still there).
async fn probe(conn: Channel, id: i64, key: Vec<u8>) -> Result<(Duration, i64, bool), String> {
    let (requests, queue) = mpsc::channel(1);
    requests
        .try_send(LeaseKeepAliveRequest { id })
        .expect("a fresh queue has room for one request");
    let sent = Instant::now();
    let status = |s: tonic::Status| format!("probe: {:?}: {}", s.code(), s.message());
    let answer = async {
        let mut client = LeaseClient::new(conn.clone());
        let mut responses = client
            .lease_keep_alive(ReceiverStream::new(queue))
            .await?
            .into_inner();
        responses.message().await
    };
    let answer = tokio::time::timeout(PROBE_TIMEOUT, answer)
        .await
        .map_err(|_| format!("probe: no answer in {PROBE_TIMEOUT:?}"))?
        .map_err(status)?
        .ok_or("probe: the server ended the keep-alive stream")?;
    let latency = sent.elapsed();
    drop(requests);
    let mut request = tonic::Request::new(RangeRequest {
        key: key.into(),
        ..Default::default()
    });
    request.set_timeout(REQUEST_TIMEOUT);
    let range = KvClient::new(conn)
        .range(request)
        .await
        .map_err(status)?
        .into_inner();
    Ok((latency, answer.ttl, !range.kvs.is_empty()))
}

/// Probes `leases` (id, key) at `at`, all at once.
async fn probe_all(conn: Channel, leases: Vec<(i64, Vec<u8>)>, at: Instant) -> Probes {
    tokio::time::sleep_until(at).await;
    let mut tasks = tokio::task::JoinSet::new();
    for (id, key) in leases {
        tasks.spawn(probe(conn.clone(), id, key));
    }
    let mut out = Probes::default();
    while let Some(result) = tasks.join_next().await {
        out.sent += 1;
        match result.unwrap_or_else(|e| Err(format!("probe task: {e}"))) {
            Ok((latency, ttl, present)) => {
                out.latencies.record(latency);
                if ttl > 0 {
                    out.renewed += 1;
                } else {
                    out.gone += 1;
                    out.stale += u64::from(present);
                }
            }
            Err(error) => {
                out.errors += 1;
                out.first_error.get_or_insert(error);
            }
        }
    }
    out
}

/// One member's view of the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftView {
    pub endpoint: String,
    pub leader: u64,
    pub term: u64,
}

async fn raft_views(endpoints: &[String]) -> anyhow::Result<Vec<RaftView>> {
    let mut views = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let status = cluster::status(endpoint)
            .await
            .with_context(|| format!("status of {endpoint}"))?;
        views.push(RaftView {
            endpoint: endpoint.clone(),
            leader: status.leader,
            term: status.raft_term,
        });
    }
    Ok(views)
}

/// Puts of one phase.
#[derive(Clone, Debug, Default)]
pub struct Phase {
    pub latencies: Histogram,
    pub errors: u64,
    /// How long the phase lasted.
    pub span: Duration,
}

impl Phase {
    fn add(&mut self, sample: &PutSample) {
        match sample.latency {
            Some(latency) => self.latencies.record(latency),
            None => self.errors += 1,
        }
    }

    pub fn report(&self, name: &str) -> Report {
        Report {
            workload: name.into(),
            latencies: self.latencies.clone(),
            errors: self.errors,
            first_error: None,
            elapsed: self.span,
            ops: Vec::new(),
        }
    }
}

/// When the keys went, against their leases' deadlines.
#[derive(Clone, Debug, Default)]
pub struct Expiry {
    /// Keys attached (and so expected to go).
    pub expected: u64,
    /// Keys whose delete event came.
    pub gone: u64,
    /// … before their lease's deadline.
    pub early: u64,
    /// The smallest deletion-minus-deadline, seconds (negative: early).
    pub margin_min_s: Option<f64>,
    /// Deletion after the deadline, for the keys that went on time.
    pub lateness: Histogram,
    /// First and last deletion, seconds after the first lease's deadline.
    pub first_gone_s: Option<f64>,
    pub all_gone_s: Option<f64>,
    /// Last deadline minus first, seconds.
    pub deadline_spread_s: f64,
}

/// What `lease-expiry` measured.
#[derive(Clone, Debug)]
pub struct ExpiryReport {
    pub spec: ExpirySpec,
    pub grant: lease::Granted,
    pub keeper: lease::KeeperOutcome,
    /// The keeper's last round, every lease once.
    pub final_round: Duration,
    pub expiry: Expiry,
    pub before: Phase,
    pub during: Phase,
    pub after: Phase,
    pub probes: Probes,
    pub put_first_error: Option<String>,
    pub watch_error: Option<String>,
    /// Attached keys still there at the end.
    pub remaining_keys: i64,
    pub raft_before: Vec<RaftView>,
    pub raft_after: Vec<RaftView>,
}

fn secs_between(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64()
    } else {
        -(earlier - later).as_secs_f64()
    }
}

impl ExpiryReport {
    pub fn leader_changed(&self) -> bool {
        self.raft_before != self.raft_after
    }

    /// Why the run failed, in one line.
    pub fn failure(&self) -> Option<String> {
        let mut reasons = Vec::new();
        let e = &self.expiry;
        if e.early > 0 {
            reasons.push(format!(
                "{} keys gone before their lease's deadline (earliest {:.3}s early)",
                e.early,
                -e.margin_min_s.unwrap_or(0.0)
            ));
        }
        if self.keeper.lost > 0 {
            reasons.push(format!(
                "{} leases expired during setup while kept alive ({} early; largest renewal gap \
                 {:.2}s)",
                self.keeper.lost,
                self.keeper.lost_early,
                self.keeper.max_gap.as_secs_f64()
            ));
        }
        let put_errors = self.before.errors + self.during.errors + self.after.errors;
        if put_errors > 0 {
            reasons.push(format!("{put_errors} puts failed"));
        }
        if e.gone < e.expected || self.remaining_keys > 0 {
            reasons.push(format!(
                "{} of {} keys gone, {} left",
                e.gone, e.expected, self.remaining_keys
            ));
        }
        if self.leader_changed() {
            reasons.push(format!(
                "leader/term changed: {:?} -> {:?}",
                self.raft_before, self.raft_after
            ));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    fn raft_line(&self) -> String {
        let show = |views: &[RaftView]| {
            views
                .iter()
                .map(|v| format!("{:x}@{}", v.leader, v.term))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "leader@term per member {} before, {} after: {}",
            show(&self.raft_before),
            show(&self.raft_after),
            if self.leader_changed() {
                "CHANGED"
            } else {
                "kept"
            }
        )
    }

    pub fn table(&self) -> String {
        let s = &self.spec;
        let g = &self.grant;
        let e = &self.expiry;
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:+.2}s"));
        let mut out = format!(
            "lease-expiry: {} leases (TTL {} s granted, {} requested), {} keys attached\n",
            s.leases, g.granted_ttl, s.ttl, e.expected
        );
        out += &format!(
            "  setup       {} grants in {:.2}s ({:.0}/s, {} errors, {} attach errors); last \
             renewal round {:.2}s; {} leases lost ({} early), largest renewal gap {:.2}s\n",
            g.latencies.count(),
            g.elapsed.as_secs_f64(),
            g.report().throughput(),
            g.errors,
            g.attach_errors,
            self.final_round.as_secs_f64(),
            self.keeper.lost,
            self.keeper.lost_early,
            self.keeper.max_gap.as_secs_f64()
        );
        out += &format!(
            "  expiry      {} of {} keys gone, {} early; first {}, all {} after the first \
             deadline (deadlines spread over {:.2}s); {} left\n",
            e.gone,
            e.expected,
            e.early,
            opt(e.first_gone_s),
            opt(e.all_gone_s),
            e.deadline_spread_s,
            self.remaining_keys
        );
        let p = &self.probes;
        out +=
            &format!(
            "  probes      {} keep-alives of expired leases: {} answered gone ({} while the key \
             was still there), {} renewed, {} errors; answered in {:.0}-{:.0} ms\n",
            p.sent,
            p.gone,
            p.stale,
            p.renewed,
            p.errors,
            p.latencies.min().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
            p.latencies.max().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        );
        out += &format!("  raft        {}\n", self.raft_line());
        for (name, phase) in [
            ("before", &self.before),
            ("during", &self.during),
            ("after", &self.after),
        ] {
            out += &format!(
                "  puts {name:<7}{} in {:.2}s, {} errors, {:.1} puts/s\n",
                phase.latencies.count(),
                phase.span.as_secs_f64(),
                phase.errors,
                phase.report(name).throughput()
            );
        }
        for error in [
            &g.first_error,
            &self.put_first_error,
            &self.watch_error,
            &p.first_error,
        ]
        .into_iter()
        .flatten()
        {
            out += &format!("  first error: {error}\n");
        }
        out += &format!(
            "  result      {}\n",
            self.failure()
                .map_or("ok".into(), |f| format!("FAILED: {f}"))
        );
        out += &report::latency_table("put before", &self.before.latencies);
        out += &report::latency_table("put during", &self.during.latencies);
        out += &report::latency_table("put after", &self.after.latencies);
        out += &report::latency_table("lateness", &e.lateness);
        out += &report::latency_table("renewal", &self.keeper.unmeasured_latencies);
        out += "  (latencies in ms; lateness: delete event after the lease's deadline; renewal: \
                keep-alive round trips during setup and the last round)\n";
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.spec;
        let e = &self.expiry;
        let phase = |p: &Phase, name: &str| p.report(name).to_json();
        serde_json::json!({
            "workload": "lease-expiry",
            "leases": s.leases,
            "ttl": s.ttl,
            "granted_ttl": self.grant.granted_ttl,
            "grant": self.grant.report().to_json(),
            "attach_errors": self.grant.attach_errors,
            "final_round_s": self.final_round.as_secs_f64(),
            "setup_lost": self.keeper.lost,
            "setup_lost_early": self.keeper.lost_early,
            "setup_max_gap_s": self.keeper.max_gap.as_secs_f64(),
            "setup_renewal_latency_ms": report::latency_json(&self.keeper.unmeasured_latencies),
            "expected": e.expected,
            "gone": e.gone,
            "early": e.early,
            "margin_min_s": e.margin_min_s,
            "first_gone_s": e.first_gone_s,
            "all_gone_s": e.all_gone_s,
            "deadline_spread_s": e.deadline_spread_s,
            "lateness_ms": report::latency_json(&e.lateness),
            "remaining_keys": self.remaining_keys,
            "probes": self.probes.sent,
            "probes_gone": self.probes.gone,
            "probes_stale": self.probes.stale,
            "probes_renewed": self.probes.renewed,
            "probe_errors": self.probes.errors,
            "probe_latency_ms": report::latency_json(&self.probes.latencies),
            "leader_changed": self.leader_changed(),
            "raft_before": self.raft_before.iter().map(|v| serde_json::json!({"endpoint": v.endpoint, "leader": format!("{:x}", v.leader), "term": v.term})).collect::<Vec<_>>(),
            "raft_after": self.raft_after.iter().map(|v| serde_json::json!({"endpoint": v.endpoint, "leader": format!("{:x}", v.leader), "term": v.term})).collect::<Vec<_>>(),
            "puts_before": phase(&self.before, "before"),
            "puts_during": phase(&self.during, "during"),
            "puts_after": phase(&self.after, "after"),
            "put_first_error": self.put_first_error,
            "watch_error": self.watch_error,
            "failure": self.failure(),
        })
    }
}

/// Splits the puts into before, during and after the deletions.
fn phases(
    baseline: &[PutSample],
    baseline_span: Duration,
    main: &[PutSample],
    main_span: (Instant, Instant),
    deletions: Option<(Instant, Instant)>,
) -> (Phase, Phase, Phase) {
    let (mut before, mut during, mut after) =
        (Phase::default(), Phase::default(), Phase::default());
    for sample in baseline {
        before.add(sample);
    }
    let (start, end) = main_span;
    let Some((first, last)) = deletions else {
        for sample in main {
            before.add(sample);
        }
        before.span = baseline_span + (end - start);
        return (before, during, after);
    };
    for sample in main {
        if sample.sent < first {
            before.add(sample);
        } else if sample.sent <= last {
            during.add(sample);
        } else {
            after.add(sample);
        }
    }
    before.span = baseline_span + first.saturating_duration_since(start);
    during.span = last - first;
    after.span = end.saturating_duration_since(last);
    (before, during, after)
}

/// Deletion times against deadlines, both by lease number (`None` deadline: no key attached).
fn expiry(deadlines: &[Option<Instant>], times: &[Option<Instant>]) -> Expiry {
    let mut e = Expiry::default();
    let first_deadline = deadlines.iter().flatten().min().copied();
    let last_deadline = deadlines.iter().flatten().max().copied();
    let (mut first_gone, mut last_gone): (Option<Instant>, Option<Instant>) = (None, None);
    for (deadline, time) in deadlines.iter().zip(times) {
        let Some(deadline) = deadline else { continue };
        e.expected += 1;
        let Some(time) = time else { continue };
        e.gone += 1;
        let margin = secs_between(*time, *deadline);
        e.margin_min_s = Some(e.margin_min_s.map_or(margin, |m| m.min(margin)));
        if margin < 0.0 {
            e.early += 1;
        } else {
            e.lateness.record(*time - *deadline);
        }
        first_gone = Some(first_gone.map_or(*time, |t| t.min(*time)));
        last_gone = Some(last_gone.map_or(*time, |t| t.max(*time)));
    }
    if let (Some(first), Some(last)) = (first_deadline, last_deadline) {
        e.deadline_spread_s = (last - first).as_secs_f64();
        e.first_gone_s = first_gone.map(|t| secs_between(t, first));
        e.all_gone_s = last_gone.map(|t| secs_between(t, first));
    }
    e
}

/// Runs the mass expiry.
pub async fn run(spec: &ExpirySpec) -> anyhow::Result<ExpiryReport> {
    spec.check()?;
    let prefix = lease::run_prefix("lease-expiry");
    let keys_prefix = format!("{prefix}k/");
    let puts_prefix = format!("{prefix}p/");
    let conns = lease::connect_all(&spec.endpoints, spec.conns).await?;
    let first = load::connect(&spec.endpoints[0]).await?;
    let raft_before = raft_views(&spec.endpoints).await?;

    let baseline_start = Instant::now();
    let (stop, task) = start_puts(&first, &puts_prefix, spec.val_size);
    tokio::time::sleep(spec.before).await;
    stop.send_replace(true);
    let (baseline, baseline_error) = task.await.context("the put client panicked")?;
    let baseline_span = baseline_start.elapsed();

    let gone = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let (stop_watch, stop_watch_rx) = watch::channel(false);
    let watcher = watch_deletes(
        first.clone(),
        keys_prefix.clone().into_bytes(),
        spec.leases,
        gone.clone(),
        notify.clone(),
        stop_watch_rx,
    )
    .await?;

    // Renewed twice per TTL while granting: none expires however long the grants take.
    let ttl = lease::granted_ttl(&first, spec.ttl).await?;
    let keeper = lease::Keeper::start(
        &conns,
        spec.streams,
        spec.in_flight,
        Pace::Interval(Duration::from_secs_f64(ttl as f64 / 2.0)),
    );
    let attach = Attach {
        prefix: keys_prefix,
        every: 1,
    };
    let granted = lease::grant(
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
    let round_start = Instant::now();
    let keeper = keeper.finish(Pace::Once).await?;
    let final_round = round_start.elapsed();

    let main_start = Instant::now();
    let (stop, task) = start_puts(&first, &puts_prefix, spec.val_size);
    let mut deadlines = vec![None; spec.leases as usize];
    let attached: std::collections::HashSet<u64> = granted
        .leases
        .iter()
        .filter(|l| l.attached)
        .map(|l| l.index)
        .collect();
    for end in &keeper.leases {
        if attached.contains(&end.index) {
            deadlines[end.index as usize] = Some(end.last_acked_sent + end.ttl);
        }
    }
    let expected = attached.len() as u64;
    let last_deadline = deadlines.iter().flatten().max().copied();
    let probed: Vec<(i64, Vec<u8>)> = granted
        .leases
        .iter()
        .filter(|l| l.attached)
        .step_by((attached.len() / PROBES).max(1))
        .take(PROBES)
        .filter_map(|l| Some((l.id, attach.key(l.index)?)))
        .collect();
    let probes = tokio::spawn(probe_all(
        first.clone(),
        probed,
        last_deadline.unwrap_or(main_start) + PROBE_DELAY,
    ));
    let give_up = last_deadline.unwrap_or(main_start) + spec.timeout;
    let mut progress_at = spec.progress.map(|every| main_start + every);
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Instant::now();
        if gone.load(Ordering::Relaxed) >= expected || now >= give_up {
            break;
        }
        if let (Some(at), Some(every)) = (progress_at, spec.progress) {
            if now >= at {
                eprintln!(
                    "lease-expiry: {}/{expected} keys gone after {:.0}s",
                    gone.load(Ordering::Relaxed),
                    main_start.elapsed().as_secs_f64()
                );
                progress_at = Some(at + every);
            }
        }
        let wake = progress_at.map_or(give_up, |p| p.min(give_up));
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    }
    tokio::time::sleep(spec.after).await;
    stop.send_replace(true);
    let (main, main_error) = task.await.context("the put client panicked")?;
    let main_end = Instant::now();
    stop_watch.send_replace(true);
    let deletions = watcher.await.context("the watch reader panicked")?;
    let raft_after = raft_views(&spec.endpoints).await?;
    let probes = probes.await.context("the probes panicked")?;

    let remaining_keys = KvClient::new(first.clone())
        .range(RangeRequest {
            key: attach.prefix.clone().into_bytes().into(),
            range_end: prefix_end(attach.prefix.as_bytes()).into(),
            count_only: true,
            ..Default::default()
        })
        .await
        .context("counting the keys left")?
        .into_inner()
        .count;

    let expiry = expiry(&deadlines, &deletions.times);
    let gone_times: Vec<Instant> = deletions.times.iter().flatten().copied().collect();
    let window = gone_times
        .iter()
        .min()
        .zip(gone_times.iter().max())
        .map(|(a, b)| (*a, *b));
    let (before, during, after) = phases(
        &baseline,
        baseline_span,
        &main,
        (main_start, main_end),
        window,
    );
    Ok(ExpiryReport {
        spec: spec.clone(),
        grant: granted,
        keeper,
        final_round,
        expiry,
        probes,
        before,
        during,
        after,
        put_first_error: baseline_error.or(main_error),
        watch_error: deletions.error,
        remaining_keys,
        raft_before,
        raft_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), [0]);
    }

    #[test]
    fn keys_name_their_lease_number() {
        assert_eq!(index_of(b"p/k/42", b"p/k/"), Some(42));
        assert_eq!(index_of(b"p/x/42", b"p/k/"), None);
        assert_eq!(index_of(b"p/k/4x", b"p/k/"), None);
    }

    #[test]
    fn deletions_are_timed_against_deadlines() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let deadlines = [Some(t + s(2)), Some(t + s(3)), None, Some(t + s(2))];
        let times = [Some(t + s(4)), Some(t + s(1)), Some(t), None];
        let e = expiry(&deadlines, &times);
        assert_eq!((e.expected, e.gone, e.early), (3, 2, 1));
        assert_eq!(e.margin_min_s, Some(-2.0));
        assert_eq!(e.deadline_spread_s, 1.0);
        assert_eq!(e.first_gone_s, Some(-1.0));
        assert_eq!(e.all_gone_s, Some(2.0));
        assert_eq!(e.lateness.count(), 1);
    }

    #[test]
    fn puts_split_at_the_first_and_last_deletion() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let put = |at: u64, ok: bool| PutSample {
            sent: t + ms(at),
            latency: ok.then_some(ms(1)),
        };
        let baseline = [put(0, true)];
        let main = [
            put(100, true),
            put(200, true),
            put(300, false),
            put(400, true),
        ];
        let (before, during, after) = phases(
            &baseline,
            ms(50),
            &main,
            (t + ms(100), t + ms(500)),
            Some((t + ms(150), t + ms(300))),
        );
        assert_eq!(before.latencies.count(), 2);
        assert_eq!((during.latencies.count(), during.errors), (1, 1));
        assert_eq!(after.latencies.count(), 1);
        assert_eq!(before.span, ms(100));
        assert_eq!(during.span, ms(150));
        assert_eq!(after.span, ms(200));
        let (before, during, _) =
            phases(&baseline, ms(50), &main, (t + ms(100), t + ms(500)), None);
        assert_eq!((before.latencies.count(), during.latencies.count()), (4, 0));
    }
}
