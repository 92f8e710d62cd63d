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
use crate::report::Report;

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
}

impl Workload {
    /// The name shown in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put(_) => "put",
            Workload::Range { .. } => "range",
            Workload::TxnPut { .. } => "txn-put",
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

/// Sends request number `n` of `workload`.
async fn send(
    kv: &mut KvClient<Channel>,
    workload: &Workload,
    n: u64,
    rng: &mut Rng,
) -> Result<(), tonic::Status> {
    fn timed<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(REQUEST_TIMEOUT);
        request
    }
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
    }
    Ok(())
}

/// What one client measured.
struct ClientOutcome {
    latencies: Histogram,
    errors: u64,
    first_error: Option<String>,
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
        if let Stop::Duration(d) = self.stop {
            if self.start.elapsed() >= d {
                return None;
            }
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        if let Stop::Total(total) = self.stop {
            if n >= total {
                return None;
            }
        }
        if let Some(rate) = self.rate {
            tokio::time::sleep_until(self.start + Duration::from_secs_f64(n as f64 / rate)).await;
            if let Stop::Duration(d) = self.stop {
                if self.start.elapsed() >= d {
                    return None;
                }
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
    };
    while let Some(n) = shared.next_request().await {
        let sent = Instant::now();
        match send(&mut kv, &shared.workload, n, &mut rng).await {
            Ok(()) => outcome.latencies.record(sent.elapsed()),
            Err(status) => {
                outcome.errors += 1;
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
        let of = match shared.stop {
            Stop::Total(total) => format!("/{total}"),
            Stop::Duration(_) => String::new(),
        };
        eprintln!(
            "{name}: {finished}{of} requests after {:.0}s, {:.0} req/s",
            shared.start.elapsed().as_secs_f64(),
            (finished - previous) as f64 / every.as_secs_f64()
        );
        previous = finished;
    }
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
    };
    for client in clients {
        let outcome = client.await.context("a client task panicked")?;
        report.latencies.merge(&outcome.latencies);
        report.errors += outcome.errors;
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
    fn endpoints_without_scheme_get_http() {
        assert_eq!(endpoint_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(endpoint_url("https://a:1"), "https://a:1");
    }
}
