//! The load generator: `clients` concurrent request loops over `conns` gRPC connections,
//! connections spread round-robin over the endpoints, as etcd's `benchmark` tool does
//! (etcd: tools/benchmark/cmd/util.go: mustCreateClients). Speaks only the etcd v3 API, so it
//! drives Cairn and etcd alike.
//!
//! Each client owns its histogram and random generator; the only shared state on the hot path
//! is two atomic counters (requests issued, requests finished).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::histogram::Histogram;
use crate::report::{OpReport, Report};

/// Deadline of one request: a stuck server fails requests instead of hanging the run.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of opening one connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this many requests (successful or not).
    Total(u64),
    /// No new request after this long.
    Duration(Duration),
    /// After `total` requests, or no new request after `within`, whichever comes first (a
    /// bounded run of a fixed amount of work, such as a fill).
    TotalWithin { total: u64, within: Duration },
}

impl Stop {
    /// Requests in all, if bounded by a count.
    pub fn total(self) -> Option<u64> {
        match self {
            Stop::Total(total) | Stop::TotalWithin { total, .. } => Some(total),
            Stop::Duration(_) => None,
        }
    }

    /// How long requests may be started, if bounded in time.
    pub fn duration(self) -> Option<Duration> {
        match self {
            Stop::Duration(d) | Stop::TotalWithin { within: d, .. } => Some(d),
            Stop::Total(_) => None,
        }
    }
}

/// How reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Serializable,
}

/// The keys and values a writing workload produces (etcd's `--key-size`, `--val-size`,
/// `--key-space-size`, `--sequential-keys`).
#[derive(Clone, Debug, PartialEq)]
pub struct KeySpec {
    pub key_size: usize,
    pub val_size: usize,
    pub key_space_size: u64,
    pub sequential: bool,
}

/// What each request does.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    Put(KeySpec),
    Range {
        key: Vec<u8>,
        range_end: Vec<u8>,
        limit: i64,
        consistency: Consistency,
    },
    /// One transaction of `ops` puts, without compares.
    TxnPut {
        keys: KeySpec,
        ops: usize,
    },
    /// Each request a range of one key of the key space (a read, with probability
    /// `read_ratio`) or a put to one (a write).
    Mixed {
        keys: KeySpec,
        read_ratio: f64,
        consistency: Consistency,
    },
}

/// What one request of a mixed workload was; the index of its latencies in
/// [`Report::ops`](crate::report::Report::ops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read = 0,
    Write = 1,
}

impl Op {
    const ALL: [Op; 2] = [Op::Read, Op::Write];

    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// Whether a request is a read, from a uniform random `draw`: true with probability
/// `read_ratio` (exactly never at 0, always at 1).
fn is_read(draw: u64, read_ratio: f64) -> bool {
    // The top 53 bits, scaled by 2^-53: exactly representable, so strictly below 1.
    ((draw >> 11) as f64) * (1.0 / 9_007_199_254_740_992.0) < read_ratio
}

impl Workload {
    /// The name shown in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put(_) => "put",
            Workload::Range { .. } => "range",
            Workload::TxnPut { .. } => "txn-put",
            Workload::Mixed { .. } => "mixed",
        }
    }
}

/// How much load, from how many clients, to where.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadSpec {
    /// `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    pub stop: Stop,
    /// Requests per second over all clients; `None` for as fast as possible.
    pub rate: Option<f64>,
    /// How often to print a progress line on stderr; `None` for never.
    pub progress: Option<Duration>,
}

/// `host:port` → `http://host:port`; URLs pass through.
pub fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Opens one gRPC connection (HTTP/2) to `endpoint`, eagerly, so that connecting is not timed.
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let url = endpoint_url(endpoint);
    Endpoint::from_shared(url.clone())
        .with_context(|| format!("bad endpoint {endpoint}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Go's `binary.PutVarint` of a non-negative `n` (zig-zag, then LEB128), which is how etcd's
/// benchmark writes a key index into its fixed-size key (etcd: tools/benchmark/cmd/put.go).
fn put_varint(buf: &mut [u8], n: u64) {
    let mut zigzag = n << 1;
    let mut i = 0;
    while zigzag >= 0x80 {
        buf[i] = (zigzag as u8) | 0x80;
        zigzag >>= 7;
        i += 1;
    }
    buf[i] = zigzag as u8;
}

/// Bytes `put_varint(n)` writes.
pub fn varint_len(n: u64) -> usize {
    let bits = 64 - (n << 1).leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// splitmix64: a small, seeded, good-enough generator for keys and values.
#[derive(Clone, Debug)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

impl KeySpec {
    /// The key of the `n`th key written overall (sequential) or a random one.
    fn key(&self, n: u64, rng: &mut Rng) -> Vec<u8> {
        let index = if self.sequential {
            n % self.key_space_size
        } else {
            rng.below(self.key_space_size)
        };
        let mut key = vec![0; self.key_size];
        put_varint(&mut key, index);
        key
    }

    /// A fresh random value: random, so that a store that compresses (RocksDB) is not
    /// flattered on disk by repeated values.
    fn value(&self, rng: &mut Rng) -> Vec<u8> {
        rng.bytes(self.val_size)
    }
}

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_TIMEOUT);
    request
}

/// Sends request number `n` of `workload` (a mixed workload's `op` drawn by the caller).
async fn send(
    kv: &mut KvClient<Channel>,
    workload: &Workload,
    op: Op,
    n: u64,
    rng: &mut Rng,
) -> Result<(), tonic::Status> {
    match workload {
        Workload::Put(keys) => {
            let put = PutRequest {
                key: keys.key(n, rng).into(),
                value: keys.value(rng).into(),
                ..Default::default()
            };
            kv.put(timed(put)).await?;
        }
        Workload::Range {
            key,
            range_end,
            limit,
            consistency,
        } => {
            let range = RangeRequest {
                key: key.clone().into(),
                range_end: range_end.clone().into(),
                limit: *limit,
                serializable: *consistency == Consistency::Serializable,
                ..Default::default()
            };
            kv.range(timed(range)).await?;
        }
        Workload::TxnPut { keys, ops } => {
            let success = (0..*ops as u64)
                .map(|j| RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: keys.key(n * *ops as u64 + j, rng).into(),
                        value: keys.value(rng).into(),
                        ..Default::default()
                    })),
                })
                .collect();
            let txn = TxnRequest {
                success,
                ..Default::default()
            };
            kv.txn(timed(txn)).await?;
        }
        Workload::Mixed {
            keys, consistency, ..
        } => {
            let key = keys.key(n, rng);
            match op {
                Op::Read => {
                    let range = RangeRequest {
                        key: key.into(),
                        serializable: *consistency == Consistency::Serializable,
                        ..Default::default()
                    };
                    kv.range(timed(range)).await?;
                }
                Op::Write => {
                    let put = PutRequest {
                        key: key.into(),
                        value: keys.value(rng).into(),
                        ..Default::default()
                    };
                    kv.put(timed(put)).await?;
                }
            }
        }
    }
    Ok(())
}

/// What one client measured.
struct ClientOutcome {
    latencies: Histogram,
    errors: u64,
    first_error: Option<String>,
    /// Latencies and errors by [`Op`], indexed by it: a mixed workload's reads and writes
    /// (empty for other workloads, which have one kind of request).
    ops: Vec<(Histogram, u64)>,
}

/// Shared by all clients of one run.
struct Shared {
    workload: Workload,
    stop: Stop,
    rate: Option<f64>,
    start: Instant,
    issued: AtomicU64,
    finished: AtomicU64,
}

impl Shared {
    /// Claims the next request number, waiting for its slot under the rate limit; `None` when
    /// the run is over.
    async fn next_request(&self) -> Option<u64> {
        let over = || {
            self.stop
                .duration()
                .is_some_and(|d| self.start.elapsed() >= d)
        };
        if over() {
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.stop.total().is_some_and(|total| n >= total) {
            return None;
        }
        if let Some(rate) = self.rate {
            tokio::time::sleep_until(self.start + Duration::from_secs_f64(n as f64 / rate)).await;
            if over() {
                return None;
            }
        }
        Some(n)
    }
}

async fn client_loop(shared: Arc<Shared>, mut kv: KvClient<Channel>, seed: u64) -> ClientOutcome {
    let mut rng = Rng(seed);
    let mut outcome = ClientOutcome {
        latencies: Histogram::default(),
        errors: 0,
        first_error: None,
        ops: match shared.workload {
            Workload::Mixed { .. } => Op::ALL.map(|_| (Histogram::default(), 0)).to_vec(),
            _ => Vec::new(),
        },
    };
    while let Some(n) = shared.next_request().await {
        let op = match shared.workload {
            Workload::Mixed { read_ratio, .. } if !is_read(rng.next(), read_ratio) => Op::Write,
            Workload::Mixed { .. } => Op::Read,
            // Other workloads have one kind of request; `send` does not look at `op` for them.
            _ => Op::Write,
        };
        let sent = Instant::now();
        match send(&mut kv, &shared.workload, op, n, &mut rng).await {
            Ok(()) => {
                let latency = sent.elapsed();
                outcome.latencies.record(latency);
                if let Some((latencies, _)) = outcome.ops.get_mut(op as usize) {
                    latencies.record(latency);
                }
            }
            Err(status) => {
                outcome.errors += 1;
                if let Some((_, errors)) = outcome.ops.get_mut(op as usize) {
                    *errors += 1;
                }
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
        }
        shared.finished.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

/// Prints a progress line every `every` until aborted.
async fn progress(shared: Arc<Shared>, every: Duration) {
    let name = shared.workload.name();
    let mut ticks = tokio::time::interval_at(shared.start + every, every);
    let mut previous = 0;
    loop {
        ticks.tick().await;
        let finished = shared.finished.load(Ordering::Relaxed);
        let of = shared
            .stop
            .total()
            .map_or(String::new(), |total| format!("/{total}"));
        eprintln!(
            "{name}: {finished}{of} requests after {:.0}s, {:.0} req/s",
            shared.start.elapsed().as_secs_f64(),
            (finished - previous) as f64 / every.as_secs_f64()
        );
        previous = finished;
    }
}

/// How long writing a key space once before a mixed run may take.
pub const PREFILL_TIMEOUT: Duration = Duration::from_secs(300);

/// Writes every key of `keys`' key space once, sequentially numbered, over `spec`'s endpoints,
/// clients and connections: the untimed setup of a run that reads those keys, so that each
/// read finds a value of `keys.val_size` bytes.
pub async fn prefill(spec: &LoadSpec, keys: &KeySpec) -> anyhow::Result<Report> {
    let spec = LoadSpec {
        stop: Stop::TotalWithin {
            total: keys.key_space_size,
            within: PREFILL_TIMEOUT,
        },
        rate: None,
        progress: None,
        ..spec.clone()
    };
    let workload = Workload::Put(KeySpec {
        sequential: true,
        ..keys.clone()
    });
    let report = run(&spec, &workload).await?;
    anyhow::ensure!(
        report.errors == 0 && report.latencies.count() == keys.key_space_size,
        "prefill wrote {} of {} keys in {:.1}s ({} errors; first: {})",
        report.latencies.count(),
        keys.key_space_size,
        report.elapsed.as_secs_f64(),
        report.errors,
        report.first_error.as_deref().unwrap_or("none")
    );
    Ok(report)
}

/// Runs `workload` as `spec` says and measures it.
pub async fn run(spec: &LoadSpec, workload: &Workload) -> anyhow::Result<Report> {
    anyhow::ensure!(!spec.endpoints.is_empty(), "no endpoint");
    anyhow::ensure!(
        spec.clients >= 1 && spec.conns >= 1,
        "clients and conns must be at least 1"
    );
    let mut conns = Vec::with_capacity(spec.conns);
    for i in 0..spec.conns {
        conns.push(KvClient::new(
            connect(&spec.endpoints[i % spec.endpoints.len()]).await?,
        ));
    }
    let shared = Arc::new(Shared {
        workload: workload.clone(),
        stop: spec.stop,
        rate: spec.rate,
        start: Instant::now(),
        issued: AtomicU64::new(0),
        finished: AtomicU64::new(0),
    });
    let progress = spec
        .progress
        .map(|every| tokio::spawn(progress(shared.clone(), every)));
    let clients: Vec<_> = (0..spec.clients)
        .map(|i| {
            let kv = conns[i % conns.len()].clone();
            tokio::spawn(client_loop(shared.clone(), kv, i as u64))
        })
        .collect();
    let mut report = Report {
        workload: workload.name().to_string(),
        latencies: Histogram::default(),
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        ops: Vec::new(),
    };
    if matches!(workload, Workload::Mixed { .. }) {
        report.ops = Op::ALL
            .iter()
            .map(|op| OpReport {
                name: op.name(),
                latencies: Histogram::default(),
                errors: 0,
            })
            .collect();
    }
    for client in clients {
        let outcome = client.await.context("a client task panicked")?;
        report.latencies.merge(&outcome.latencies);
        report.errors += outcome.errors;
        for (op, (latencies, errors)) in report.ops.iter_mut().zip(&outcome.ops) {
            op.latencies.merge(latencies);
            op.errors += errors;
        }
        if report.first_error.is_none() {
            report.first_error = outcome.first_error;
        }
    }
    report.elapsed = shared.start.elapsed();
    if let Some(progress) = progress {
        progress.abort();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    use cairn_proto::etcdserverpb::kv_server::{Kv, KvServer};
    use cairn_proto::etcdserverpb::{
        CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
        PutResponse, RangeResponse, RangeStreamResponse, TxnResponse,
    };
    use tonic::{Response, Status};

    /// A KV service that counts what it is asked: linearizable and serializable ranges, puts.
    #[derive(Default)]
    struct CountingKv {
        linearizable: AtomicU64,
        serializable: AtomicU64,
        puts: AtomicU64,
    }

    /// The service's handle on the counts the test reads.
    struct CountingService(Arc<CountingKv>);

    #[tonic::async_trait]
    impl Kv for CountingService {
        async fn range(
            &self,
            request: tonic::Request<RangeRequest>,
        ) -> Result<Response<RangeResponse>, Status> {
            let counter = if request.get_ref().serializable {
                &self.0.serializable
            } else {
                &self.0.linearizable
            };
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(Response::new(RangeResponse::default()))
        }

        type RangeStreamStream =
            tonic::codegen::tokio_stream::Empty<Result<RangeStreamResponse, Status>>;

        async fn range_stream(
            &self,
            _: tonic::Request<RangeRequest>,
        ) -> Result<Response<Self::RangeStreamStream>, Status> {
            Err(Status::unimplemented("not counted"))
        }

        async fn put(
            &self,
            request: tonic::Request<PutRequest>,
        ) -> Result<Response<PutResponse>, Status> {
            assert_eq!(request.get_ref().value.len(), 16);
            self.0.puts.fetch_add(1, Ordering::Relaxed);
            Ok(Response::new(PutResponse::default()))
        }

        async fn delete_range(
            &self,
            _: tonic::Request<DeleteRangeRequest>,
        ) -> Result<Response<DeleteRangeResponse>, Status> {
            Err(Status::unimplemented("not counted"))
        }

        async fn txn(
            &self,
            _: tonic::Request<cairn_proto::etcdserverpb::TxnRequest>,
        ) -> Result<Response<TxnResponse>, Status> {
            Err(Status::unimplemented("not counted"))
        }

        async fn compact(
            &self,
            _: tonic::Request<CompactionRequest>,
        ) -> Result<Response<CompactionResponse>, Status> {
            Err(Status::unimplemented("not counted"))
        }
    }

    /// Serves `kv` on a loopback port until the returned sender is dropped.
    async fn serve(kv: Arc<CountingKv>) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KvServer::new(CountingService(kv)))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        // Dropping the sender ends the server too.
                        let _ = stopped.await;
                    },
                ),
        );
        (endpoint, stop)
    }

    #[tokio::test]
    async fn a_mixed_run_sends_ranges_and_puts_and_reports_them_apart() {
        let kv = Arc::new(CountingKv::default());
        let (endpoint, _stop) = serve(kv.clone()).await;
        let spec = LoadSpec {
            endpoints: vec![endpoint],
            clients: 8,
            conns: 2,
            stop: Stop::Total(2000),
            rate: None,
            progress: None,
        };
        let keys = KeySpec {
            key_size: 8,
            val_size: 16,
            key_space_size: 100,
            sequential: false,
        };
        let workload = Workload::Mixed {
            keys: keys.clone(),
            read_ratio: 0.75,
            consistency: Consistency::Serializable,
        };
        let report = run(&spec, &workload).await.unwrap();
        let (reads, writes) = (report.op("read").unwrap(), report.op("write").unwrap());
        assert_eq!(report.errors, 0);
        assert_eq!(report.latencies.count(), 2000);
        assert_eq!(
            reads.latencies.count(),
            kv.serializable.load(Ordering::Relaxed)
        );
        assert_eq!(writes.latencies.count(), kv.puts.load(Ordering::Relaxed));
        assert_eq!(reads.latencies.count() + writes.latencies.count(), 2000);
        assert_eq!(kv.linearizable.load(Ordering::Relaxed), 0);
        // 2000 draws at 0.75: 1500 expected, 19 standard deviations each way.
        assert!((1300..1700).contains(&reads.latencies.count()), "{reads:?}");

        let puts_before = kv.puts.load(Ordering::Relaxed);
        let prefill_report = prefill(&spec, &keys).await.unwrap();
        assert_eq!(prefill_report.latencies.count(), 100);
        assert_eq!(kv.puts.load(Ordering::Relaxed) - puts_before, 100);
        assert!(prefill_report.ops.is_empty());
    }

    #[test]
    fn keys_are_go_varints_padded_to_key_size() {
        let mut buf = [0u8; 10];
        put_varint(&mut buf, 1);
        assert_eq!(buf[..2], [2, 0]);
        put_varint(&mut buf, 64);
        assert_eq!(buf[..3], [0x80, 0x01, 0]);
        put_varint(&mut buf, u64::MAX >> 1);
        assert_eq!(
            buf,
            [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        for n in [0, 1, 63, 64, 8191, 8192, 1 << 40, u64::MAX >> 1] {
            let mut buf = [0xaa; 10];
            put_varint(&mut buf, n);
            let len = buf.iter().position(|b| b & 0x80 == 0).unwrap() + 1;
            assert_eq!(varint_len(n), len, "n = {n}");
        }
    }

    #[test]
    fn sequential_keys_cycle_through_the_key_space() {
        let keys = KeySpec {
            key_size: 4,
            val_size: 3,
            key_space_size: 3,
            sequential: true,
        };
        let mut rng = Rng(1);
        let got: Vec<_> = (0..4).map(|n| keys.key(n, &mut rng)).collect();
        assert_eq!(
            got,
            [[0, 0, 0, 0], [2, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0]]
        );
        assert_eq!(keys.value(&mut rng).len(), 3);
    }

    #[test]
    fn random_keys_stay_in_the_key_space_and_values_vary() {
        let keys = KeySpec {
            key_size: 8,
            val_size: 20,
            key_space_size: 5,
            sequential: false,
        };
        let mut rng = Rng(7);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..200 {
            let key = keys.key(n, &mut rng);
            assert_eq!(key.len(), 8);
            seen.insert(key);
        }
        assert_eq!(seen.len(), 5);
        assert_ne!(keys.value(&mut rng), keys.value(&mut rng));
    }

    #[test]
    fn read_ratio_sets_the_share_of_reads() {
        let mut rng = Rng(3);
        let reads = (0..10_000).filter(|_| is_read(rng.next(), 0.9)).count();
        assert!((8_800..9_200).contains(&reads), "{reads}");
        assert!(!is_read(0, 0.0));
        assert!(!is_read(u64::MAX, 0.999));
        assert!(is_read(u64::MAX, 1.0));
        assert!(is_read(0, 0.5) && !is_read(1 << 63, 0.5));
    }

    #[test]
    fn stop_bounds_by_count_time_or_both() {
        let d = Duration::from_secs(3);
        assert_eq!(
            (Stop::Total(5).total(), Stop::Total(5).duration()),
            (Some(5), None)
        );
        assert_eq!(
            (Stop::Duration(d).total(), Stop::Duration(d).duration()),
            (None, Some(d))
        );
        let both = Stop::TotalWithin {
            total: 7,
            within: d,
        };
        assert_eq!((both.total(), both.duration()), (Some(7), Some(d)));
    }

    #[test]
    fn endpoints_without_scheme_get_http() {
        assert_eq!(endpoint_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(endpoint_url("https://a:1"), "https://a:1");
    }
}
