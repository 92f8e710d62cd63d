//! `compare`: starts real etcd and Cairn with the same topology and settings, runs the same
//! workloads against each (alternating which goes first), and prints Cairn/etcd ratios of
//! throughput, p99 latency, peak RSS and data-directory size.
//!
//! Both clusters run at once, on one temporary directory (one disk), so each workload is
//! measured on both back to back and slow drifts of a shared machine hit both alike.
//!
//! A run that cannot be done (a system answers `UNIMPLEMENTED`, say) or whose watch delivery
//! check fails does not stop the others: it shows in the table, is listed under it, and makes
//! the command exit non-zero once the table is printed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cluster::{Cluster, ClusterSpec, Settings, System};
use crate::expiry::{self, ExpirySpec};
use crate::floor::{self, Floor, FloorSpec};
use crate::histogram::Histogram;
use crate::lease::{self, KeepaliveSpec};
use crate::load::{self, Consistency, KeySpec, LoadSpec, Stop, Workload};
use crate::report::Report;
use crate::watch::{self, WatchSpec};

/// The key the range workloads read, written once before them.
const RANGE_KEY: &[u8] = b"cairn-bench/range";
/// Fan-out: puts whose events are not all delivered yet, at most. 2 keeps the servers busy
/// (the next put is in flight while one is delivered) without a backlog, so the put-to-event
/// latency is that of one put reaching every watcher.
const FANOUT_IN_FLIGHT_PUTS: u64 = 2;
/// Spread: concurrent putters (a put reaches few watchers, so it takes many to load the
/// servers' matching and delivery) …
const SPREAD_PUT_CLIENTS: u64 = 100;
/// … and puts not yet delivered, at most.
const SPREAD_IN_FLIGHT_PUTS: u64 = 256;
/// A watch run gives up after this long without an event.
const WATCH_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients granting and revoking leases (round-robin over the lease connections).
const LEASE_CLIENTS: usize = 100;
/// Keep-alive leases checked at the end (LeaseTimeToLive, attached key).
const KEEPALIVE_CHECK_LEASES: u64 = 1000;
/// Lease-expiry: how long past the last lease's deadline to wait for the keys to go.
const EXPIRY_TIMEOUT: Duration = Duration::from_secs(60);
/// Lease-expiry: puts after the last key is gone.
const EXPIRY_AFTER: Duration = Duration::from_secs(2);
/// Fill: key size, bytes. Longer than the other workloads' 8-byte keys, so the fill's keys
/// are all new even after them.
const FILL_KEY_BYTES: usize = 16;
/// Fill: interval of its progress line on stderr (a fill of a million keys takes minutes).
const FILL_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Where the servers come from and the settings both get.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// etcd binary (3.4.23 from Debian's etcd-server).
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// cairn binary (release build).
    #[arg(long, default_value = "/var/tmp/cairn-target/release/cairn")]
    pub cairn_bin: PathBuf,
    /// Directory under which a temporary directory holds every member's data and log.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub dir: PathBuf,
    /// --heartbeat-interval of every member, ms.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// --election-timeout of every member, ms.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Keep the temporary directory (data and logs) after the run.
    #[arg(long)]
    pub keep: bool,
}

impl ServerArgs {
    /// A temporary directory under `--dir`, removed on drop unless `--keep`.
    pub fn temp_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        let mut dir = tempfile::Builder::new()
            .prefix("cairn-bench-")
            .tempdir_in(&self.dir)?;
        if self.keep {
            dir.disable_cleanup(true);
            eprintln!("data and logs kept in {}", dir.path().display());
        }
        Ok(dir)
    }

    /// The cluster to start for `system`, its data under `dir`.
    pub fn spec(&self, system: System, members: usize, dir: PathBuf) -> ClusterSpec {
        ClusterSpec {
            system,
            bin: match system {
                System::Etcd => self.etcd_bin.clone(),
                System::Cairn => self.cairn_bin.clone(),
            },
            members,
            dir,
            settings: Settings {
                heartbeat_interval_ms: self.heartbeat_interval,
                election_timeout_ms: self.election_timeout,
                snapshot_count: None,
            },
        }
    }
}

/// The workloads `compare` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// put, 1 client, sequential keys: latency.
    Put1,
    /// put, --clients over --conns, random keys: throughput.
    PutMany,
    /// linearizable range of one key, --clients over --conns.
    RangeL,
    /// serializable range of one key, --clients over --conns.
    RangeS,
    /// watch fan-out: every put to one key reaches --fanout-watchers watchers.
    WatchFanout,
    /// watch spread: --spread-watchers watchers over --spread-keys keys, 100 putters.
    WatchSpread,
    /// lease keep-alive: --keepalive-leases leases renewed over --lease-streams streams.
    LeaseKeepalive,
    /// lease expiry: --expiry-leases leases (one key each) expiring at once under 1 putter.
    LeaseExpiry,
    /// mixed: --mixed-read-ratio linearizable ranges of one key, the rest puts, over
    /// --mixed-key-space-size keys written once before (untimed); --clients over --conns.
    Mixed,
    /// fill: --fill-keys distinct keys of --val-size bytes, --clients over --conns, as fast
    /// as taken; then each member's peak and current RSS and the disk used.
    Fill,
}

impl Scenario {
    fn is_watch(self) -> bool {
        matches!(self, Scenario::WatchFanout | Scenario::WatchSpread)
    }

    /// What the rate and latency columns of the scenario's row are.
    fn unit(self) -> &'static str {
        match self {
            Scenario::WatchFanout | Scenario::WatchSpread => "events",
            Scenario::LeaseKeepalive => "renewals",
            _ => "req",
        }
    }
}

// The flags of `compare` (a `///` here would replace the subcommand's help text).
#[derive(Args, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub servers: ServerArgs,
    /// Cluster sizes to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub members: Vec<usize>,
    /// Workloads to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "put1,put-many,range-l,range-s,mixed,watch-fanout,lease-keepalive"
    )]
    pub workloads: Vec<Scenario>,
    /// Length of each workload on each system.
    #[arg(long, default_value = "8s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Clients of the many-client workloads.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Connections of the many-client workloads.
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// Key space of the put workloads.
    #[arg(long, default_value_t = 100_000)]
    pub key_space_size: u64,
    /// Value size of the put workloads, of the key the range workloads read and of the
    /// watched puts, bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Watchers of the one key of watch-fanout.
    #[arg(long, default_value_t = 10_000)]
    pub fanout_watchers: u64,
    /// Watchers of watch-spread.
    #[arg(long, default_value_t = 100_000)]
    pub spread_watchers: u64,
    /// Keys of watch-spread (watchers round-robin over them).
    #[arg(long, default_value_t = 10_000)]
    pub spread_keys: u64,
    /// gRPC streams of the watch workloads.
    #[arg(long, default_value_t = 100)]
    pub watch_streams: u64,
    /// Connections of the watch workloads' streams (round-robin over the members).
    #[arg(long, default_value_t = 10)]
    pub watch_conns: u64,
    /// Leases of lease-keepalive.
    #[arg(long, default_value_t = 10_000)]
    pub keepalive_leases: u64,
    /// Requested TTL of lease-keepalive's leases, seconds.
    #[arg(long, default_value_t = 60)]
    pub keepalive_ttl: i64,
    /// Renewals per second of lease-keepalive over all streams; 0 for as fast as
    /// --lease-in-flight allows (capacity).
    #[arg(long, default_value_t = 0.0)]
    pub keepalive_rate: f64,
    /// Keep-alive streams of the lease workloads.
    #[arg(long, default_value_t = 100)]
    pub lease_streams: usize,
    /// Connections of the lease workloads (round-robin over the members).
    #[arg(long, default_value_t = 10)]
    pub lease_conns: usize,
    /// Renewals outstanding per keep-alive stream, at most.
    #[arg(long, default_value_t = 16)]
    pub lease_in_flight: usize,
    /// Leases of lease-expiry (each with one key), expiring at once.
    #[arg(long, default_value_t = 10_000)]
    pub expiry_leases: u64,
    /// Requested TTL of lease-expiry's leases, seconds (1: each system's minimum).
    #[arg(long, default_value_t = 10)]
    pub expiry_ttl: i64,
    /// Share of mixed's requests that are reads, from 0 to 1.
    #[arg(long, default_value_t = 0.9)]
    pub mixed_read_ratio: f64,
    /// Keys mixed reads and writes (each written once before the timed run).
    #[arg(long, default_value_t = 10_000)]
    pub mixed_key_space_size: u64,
    /// Distinct keys fill writes.
    #[arg(long, default_value_t = 1_000_000)]
    pub fill_keys: u64,
    /// Longest a fill may take on one system (it fails if not all keys are written by then).
    #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
    pub fill_timeout: Duration,
    /// Also print every run as a JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

impl CompareArgs {
    /// The row label of `scenario`.
    fn label(&self, scenario: Scenario) -> String {
        let (clients, conns) = (self.clients, self.conns);
        match scenario {
            Scenario::Put1 => "put, 1 client, seq keys".into(),
            Scenario::PutMany => format!("put, {clients} cl/{conns} conns"),
            Scenario::RangeL => format!("range l, {clients} cl/{conns} conns"),
            Scenario::RangeS => format!("range s, {clients} cl/{conns} conns"),
            Scenario::WatchFanout => format!("watch, 1 key, {} watchers", self.fanout_watchers),
            Scenario::WatchSpread => format!(
                "watch, {} w / {} keys",
                self.spread_watchers, self.spread_keys
            ),
            Scenario::LeaseKeepalive => {
                format!("lease keep-alive, {} leases", self.keepalive_leases)
            }
            Scenario::LeaseExpiry => format!("expiry of {} leases: puts", self.expiry_leases),
            Scenario::Mixed => {
                let reads = (self.mixed_read_ratio * 100.0).round();
                format!(
                    "mixed {reads}/{}, {clients} cl/{conns} conns",
                    100.0 - reads
                )
            }
            Scenario::Fill => format!("fill, {} keys of {} B", self.fill_keys, self.val_size),
        }
    }

    /// The keys mixed reads and writes.
    fn mixed_keys(&self) -> KeySpec {
        KeySpec {
            key_size: 8,
            val_size: self.val_size,
            key_space_size: self.mixed_key_space_size,
            sequential: false,
        }
    }

    /// The fill: `--fill-keys` puts of distinct keys, bounded by `--fill-timeout`.
    fn fill(&self, endpoints: Vec<String>) -> (LoadSpec, Workload) {
        let spec = LoadSpec {
            endpoints,
            clients: self.clients,
            conns: self.conns,
            stop: Stop::TotalWithin {
                total: self.fill_keys,
                within: self.fill_timeout,
            },
            rate: None,
            progress: Some(FILL_PROGRESS_INTERVAL),
        };
        let workload = Workload::Put(KeySpec {
            key_size: FILL_KEY_BYTES,
            val_size: self.val_size,
            key_space_size: self.fill_keys,
            sequential: true,
        });
        (spec, workload)
    }

    /// The keep-alive run: leases granted, renewed for `--duration`, checked and revoked.
    fn keepalive(&self, endpoints: Vec<String>) -> KeepaliveSpec {
        KeepaliveSpec {
            endpoints,
            leases: self.keepalive_leases,
            ttl: self.keepalive_ttl,
            streams: self.lease_streams,
            conns: self.lease_conns.min(self.lease_streams),
            rate: (self.keepalive_rate > 0.0).then_some(self.keepalive_rate),
            in_flight: self.lease_in_flight,
            duration: self.duration,
            clients: LEASE_CLIENTS,
            check_leases: KEEPALIVE_CHECK_LEASES.min(self.keepalive_leases),
            progress: None,
        }
    }

    /// The mass-expiry run: puts and the watch on the leader, leases over all members.
    fn expiry(&self, endpoints: Vec<String>) -> ExpirySpec {
        ExpirySpec {
            endpoints,
            leases: self.expiry_leases,
            ttl: self.expiry_ttl,
            clients: LEASE_CLIENTS,
            conns: self.lease_conns,
            streams: self.lease_streams,
            in_flight: self.lease_in_flight,
            before: Duration::ZERO,
            after: EXPIRY_AFTER,
            timeout: EXPIRY_TIMEOUT,
            val_size: self.val_size,
            progress: None,
        }
    }

    /// The watch run of a watch scenario: watchers on every member (connections round-robin
    /// from the leader), puts through the leader, for `--duration`.
    fn watch(&self, scenario: Scenario, endpoints: Vec<String>) -> WatchSpec {
        let (watchers, keys, put_clients, in_flight) = match scenario {
            Scenario::WatchSpread => (
                self.spread_watchers,
                self.spread_keys,
                SPREAD_PUT_CLIENTS,
                SPREAD_IN_FLIGHT_PUTS,
            ),
            _ => (self.fanout_watchers, 1, 1, FANOUT_IN_FLIGHT_PUTS),
        };
        let streams = self.watch_streams.min(watchers);
        WatchSpec {
            endpoints,
            watchers,
            streams,
            conns: self.watch_conns.min(streams),
            keys,
            put_clients,
            stop: Stop::Duration(self.duration),
            rate: None,
            in_flight: Some(in_flight),
            val_size: self.val_size.max(watch::VALUE_HEADER_BYTES),
            drain_timeout: WATCH_DRAIN_TIMEOUT,
            progress: None,
        }
    }

    fn load(&self, scenario: Scenario, endpoints: Vec<String>) -> (LoadSpec, Workload) {
        let keys = KeySpec {
            key_size: 8,
            val_size: self.val_size,
            key_space_size: self.key_space_size,
            sequential: scenario == Scenario::Put1,
        };
        let range = |consistency| Workload::Range {
            key: RANGE_KEY.to_vec(),
            range_end: Vec::new(),
            limit: 0,
            consistency,
        };
        let (clients, conns, workload) = match scenario {
            Scenario::Put1 => (1, 1, Workload::Put(keys)),
            Scenario::PutMany => (self.clients, self.conns, Workload::Put(keys)),
            Scenario::RangeL => (self.clients, self.conns, range(Consistency::Linearizable)),
            Scenario::RangeS => (self.clients, self.conns, range(Consistency::Serializable)),
            Scenario::Mixed => (
                self.clients,
                self.conns,
                Workload::Mixed {
                    keys: self.mixed_keys(),
                    read_ratio: self.mixed_read_ratio,
                    consistency: Consistency::Linearizable,
                },
            ),
            Scenario::WatchFanout
            | Scenario::WatchSpread
            | Scenario::LeaseKeepalive
            | Scenario::LeaseExpiry
            | Scenario::Fill => {
                unreachable!("watch, lease and fill scenarios have specs of their own")
            }
        };
        let spec = LoadSpec {
            endpoints,
            clients,
            conns,
            stop: Stop::Duration(self.duration),
            rate: None,
            progress: None,
        };
        (spec, workload)
    }
}

/// A line of the table under a scenario's row: one more number of the run.
#[derive(Clone, Debug)]
struct Extra {
    label: &'static str,
    /// Shown in the throughput columns.
    value: f64,
    /// Shown in the p99 columns, ms.
    latency_ms: Option<f64>,
}

/// One run of one scenario on one system.
struct Run {
    /// For a watch run: events/s and put-to-event latencies (see `WatchReport::events`); for
    /// lease-keepalive, renewals; for lease-expiry, the puts during the expiry.
    report: Report,
    /// More lines of numbers (lease scenarios).
    extras: Vec<Extra>,
    /// The run as a JSON line.
    json: serde_json::Value,
    /// Why the run failed: it could not be done, or its delivery or lease check failed.
    failure: Option<String>,
}

fn p99_ms(report: &Report) -> Option<f64> {
    report.p99().map(|d| d.as_secs_f64() * 1e3)
}

fn max_ms(h: &Histogram) -> f64 {
    h.max().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

impl Run {
    /// A run that could not be done.
    fn failed(error: anyhow::Error) -> Run {
        let error = format!("{error:#}");
        Run {
            report: Report {
                workload: "failed".into(),
                latencies: Histogram::default(),
                errors: 1,
                first_error: Some(error.clone()),
                elapsed: Duration::ZERO,
                ops: Vec::new(),
            },
            extras: Vec::new(),
            json: serde_json::json!({ "error": error }),
            failure: Some(error),
        }
    }
}

fn keepalive_run(report: lease::KeepaliveReport) -> Run {
    let grant = report.grant.report();
    let revoke = report.revoke_report();
    Run {
        extras: vec![
            Extra {
                label: "  lease grants/s",
                value: grant.throughput(),
                latency_ms: p99_ms(&grant),
            },
            Extra {
                label: "  lease revokes/s",
                value: revoke.throughput(),
                latency_ms: p99_ms(&revoke),
            },
        ],
        json: report.to_json(),
        failure: report.failure(),
        report: report.renewals,
    }
}

fn expiry_run(report: expiry::ExpiryReport) -> Run {
    let before = report.before.report("before");
    Run {
        extras: vec![
            Extra {
                label: "  puts before the expiry",
                value: before.throughput(),
                latency_ms: p99_ms(&before),
            },
            Extra {
                label: "  put max ms: before",
                value: max_ms(&report.before.latencies),
                latency_ms: None,
            },
            Extra {
                label: "  put max ms: during",
                value: max_ms(&report.during.latencies),
                latency_ms: None,
            },
            Extra {
                label: "  s until all keys gone",
                value: report.expiry.all_gone_s.unwrap_or(f64::NAN),
                latency_ms: None,
            },
            Extra {
                label: "  stale keep-alive answers",
                value: report.probes.stale as f64,
                latency_ms: None,
            },
        ],
        json: report.to_json(),
        failure: report.failure(),
        report: report.during.report("lease-expiry puts"),
    }
}

fn mixed_run(report: Report) -> Run {
    let extras = [("  reads/s", "read"), ("  writes/s", "write")]
        .into_iter()
        .filter_map(|(label, op)| {
            let op = report.op(op)?;
            Some(Extra {
                label,
                value: report.rate(&op.latencies),
                latency_ms: op.latencies.quantile(0.99).map(|d| d.as_secs_f64() * 1e3),
            })
        })
        .collect();
    Run {
        extras,
        json: report.to_json(),
        report,
        failure: None,
    }
}

/// The mixed run: its key space written once (untimed), then the timed mix.
async fn mixed(args: &CompareArgs, endpoints: Vec<String>) -> anyhow::Result<Report> {
    let (spec, workload) = args.load(Scenario::Mixed, endpoints);
    load::prefill(&spec, &args.mixed_keys()).await?;
    load::run(&spec, &workload).await
}

/// The fill run: every member's peak RSS reset, the keys written, then the peaks, the
/// resident sets and the disk used.
async fn fill(
    args: &CompareArgs,
    cluster: &mut Cluster,
    endpoints: Vec<String>,
) -> anyhow::Result<Run> {
    for i in 0..cluster.size() {
        cluster.reset_peak_rss(i)?;
    }
    let (spec, workload) = args.fill(endpoints);
    let report = load::run(&spec, &workload).await?;
    let mut peaks = Vec::new();
    let mut rss = Vec::new();
    let mut disk_bytes = 0;
    for i in 0..cluster.size() {
        peaks.push(cluster.peak_rss_since_reset_bytes(i)?);
        rss.push(cluster.rss_bytes(i)?);
        disk_bytes += cluster.disk_bytes(i)?;
    }
    let largest = |bytes: &[u64]| mib(bytes.iter().copied().max().unwrap_or(0));
    let written = report.latencies.count();
    let failure = (written < args.fill_keys).then(|| {
        format!(
            "wrote {written} of {} keys in {:.1}s ({} errors; first: {})",
            args.fill_keys,
            report.elapsed.as_secs_f64(),
            report.errors,
            report.first_error.as_deref().unwrap_or("none")
        )
    });
    let mut json = report.to_json();
    json["peak_rss_mib"] = peaks.iter().map(|&b| mib(b)).collect::<Vec<_>>().into();
    json["rss_mib"] = rss.iter().map(|&b| mib(b)).collect::<Vec<_>>().into();
    json["disk_mib"] = mib(disk_bytes).into();
    Ok(Run {
        extras: vec![
            Extra {
                label: "  fill peak RSS MiB (largest)",
                value: largest(&peaks),
                latency_ms: None,
            },
            Extra {
                label: "  RSS MiB after fill (largest)",
                value: largest(&rss),
                latency_ms: None,
            },
            Extra {
                label: "  disk MiB after fill (all)",
                value: mib(disk_bytes),
                latency_ms: None,
            },
        ],
        json,
        failure,
        report,
    })
}

/// Runs `scenario` on `cluster` through `endpoints` (leader first).
async fn run_scenario(
    args: &CompareArgs,
    scenario: Scenario,
    cluster: &mut Cluster,
    endpoints: Vec<String>,
) -> Run {
    if scenario == Scenario::Fill {
        fill(args, cluster, endpoints)
            .await
            .unwrap_or_else(Run::failed)
    } else if scenario == Scenario::Mixed {
        match mixed(args, endpoints).await {
            Ok(report) => mixed_run(report),
            Err(error) => Run::failed(error),
        }
    } else if scenario == Scenario::LeaseKeepalive {
        match lease::run_keepalive(&args.keepalive(endpoints)).await {
            Ok(report) => keepalive_run(report),
            Err(error) => Run::failed(error),
        }
    } else if scenario == Scenario::LeaseExpiry {
        match expiry::run(&args.expiry(endpoints)).await {
            Ok(report) => expiry_run(report),
            Err(error) => Run::failed(error),
        }
    } else if scenario.is_watch() {
        match watch::run(&args.watch(scenario, endpoints)).await {
            Ok(watch) => Run {
                extras: Vec::new(),
                json: watch.to_json(),
                failure: watch
                    .failed()
                    .then(|| format!("delivery check: {}", watch.delivery.summary())),
                report: watch.events,
            },
            Err(error) => Run::failed(error),
        }
    } else {
        let (spec, workload) = args.load(scenario, endpoints);
        match load::run(&spec, &workload).await {
            Ok(report) => Run {
                extras: Vec::new(),
                json: report.to_json(),
                report,
                failure: None,
            },
            Err(error) => Run::failed(error),
        }
    }
}

/// One system's measurements in one topology.
struct Measured {
    runs: Vec<Run>,
    peak_rss_bytes: u64,
    disk_bytes: u64,
}

/// The endpoints of `cluster`, its leader's first (a 1-connection workload then talks to the
/// leader, as etcd's performance docs do).
async fn endpoints_leader_first(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let leader = cluster.leader().await?;
    Ok((0..cluster.size())
        .map(|i| cluster.endpoint((leader + i) % cluster.size()))
        .collect())
}

async fn put_range_key(endpoint: &str, val_size: usize) -> anyhow::Result<()> {
    let mut kv =
        cairn_proto::etcdserverpb::kv_client::KvClient::new(load::connect(endpoint).await?);
    kv.put(cairn_proto::etcdserverpb::PutRequest {
        key: RANGE_KEY.into(),
        value: vec![b'v'; val_size].into(),
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// The machine's floor for `members`, measured in `dir` (the clusters' directory).
async fn measure_floor(members: usize, dir: &std::path::Path) -> anyhow::Result<Floor> {
    let spec = FloorSpec {
        members: vec![members],
        sync_rounds: floor::SYNC_ROUNDS_DEFAULT,
        round_trips: floor::ROUND_TRIPS_DEFAULT,
    };
    floor::measure(&spec, dir).await
}

/// What one topology measured: each system's runs, and the machine's floor, taken in the
/// clusters' directory once they are up and again right after the put1 runs (the shared disk's
/// speed drifts by 10× over minutes, so the floor is taken next to the runs it is set against).
struct Topology {
    measured: [Measured; 2],
    floor: Floor,
}

/// Runs every workload on both systems in one topology.
async fn compare_topology(args: &CompareArgs, members: usize) -> anyhow::Result<Topology> {
    let dir = args.servers.temp_dir()?;
    let mut clusters = Vec::new();
    for system in [System::Etcd, System::Cairn] {
        let cluster = Cluster::start(args.servers.spec(system, members, dir.path().into())).await?;
        let endpoints = endpoints_leader_first(&cluster).await?;
        put_range_key(&endpoints[0], args.val_size).await?;
        clusters.push((system, cluster, endpoints));
    }
    let mut floor = measure_floor(members, dir.path()).await?;
    let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for (w, &scenario) in args.workloads.iter().enumerate() {
        let order = if (w + members).is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        };
        for s in order {
            let (system, cluster, endpoints) = &mut clusters[s];
            let mut run = run_scenario(args, scenario, cluster, endpoints.clone()).await;
            let report = &run.report;
            eprintln!(
                "{members} member(s), {}, {}: {:.0} {}/s, p99 {:.2} ms, {} errors{}",
                args.label(scenario),
                system.name(),
                report.throughput(),
                scenario.unit(),
                report.p99().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
                report.errors,
                run.failure
                    .as_ref()
                    .map_or(String::new(), |f| format!("; FAILED: {f}"))
            );
            run.json["system"] = system.name().into();
            run.json["members"] = members.into();
            run.json["scenario"] = args.label(scenario).into();
            if args.json {
                println!("{}", run.json);
            }
            runs[s].push(run);
        }
        if scenario == Scenario::Put1 {
            floor.merge(&measure_floor(members, dir.path()).await?);
        }
    }
    eprint!("{}", floor.table(&args.servers.dir));
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "members": members, "floor": floor.to_json() })
        );
    }
    let mut measured = Vec::new();
    for ((_, cluster, _), runs) in clusters.iter().zip(runs) {
        let mut peak_rss_bytes = 0;
        let mut disk_bytes = 0;
        for i in 0..cluster.size() {
            peak_rss_bytes = peak_rss_bytes.max(cluster.peak_rss_bytes(i)?);
            disk_bytes += cluster.disk_bytes(i)?;
        }
        measured.push(Measured {
            runs,
            peak_rss_bytes,
            disk_bytes,
        });
    }
    drop(clusters);
    let [etcd, cairn]: [Measured; 2] = measured.try_into().ok().expect("two systems measured");
    Ok(Topology {
        measured: [etcd, cairn],
        floor,
    })
}

fn ratio(cairn: f64, etcd: f64) -> String {
    if etcd > 0.0 && cairn.is_finite() {
        format!("{:.2}", cairn / etcd)
    } else {
        "-".into()
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A number with two decimals when small, none when large.
fn number(value: f64) -> String {
    if value.abs() < 100.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.0}")
    }
}

/// The extra rows of one scenario, etcd's and Cairn's paired by label.
fn extra_rows(members: usize, etcd: &[Extra], cairn: &[Extra]) -> String {
    let mut labels: Vec<&'static str> = etcd.iter().map(|x| x.label).collect();
    for x in cairn {
        if !labels.contains(&x.label) {
            labels.push(x.label);
        }
    }
    let find = |extras: &[Extra], label| extras.iter().find(|x| x.label == label).cloned();
    let mut out = String::new();
    for label in labels {
        let (e, c) = (find(etcd, label), find(cairn, label));
        let value = |x: &Option<Extra>| x.as_ref().map_or(f64::NAN, |x| x.value);
        let latency = |x: &Option<Extra>| x.as_ref().and_then(|x| x.latency_ms);
        out += &format!(
            "{:<4}{:<30}{:>11}{:>11}{:>7}",
            members,
            label,
            number(value(&e)),
            number(value(&c)),
            ratio(value(&c), value(&e)),
        );
        if latency(&e).is_some() || latency(&c).is_some() {
            let (le, lc) = (
                latency(&e).unwrap_or(f64::NAN),
                latency(&c).unwrap_or(f64::NAN),
            );
            out += &format!("{le:>10.2}{lc:>10.2}{:>7}", ratio(lc, le));
        }
        out += "\n";
    }
    out
}

/// `put, 1 client` p50 latency as a multiple of the machine's floor for `members`, for etcd
/// and Cairn: one row under the put1 row.
fn floor_row(members: usize, floor: &Floor, etcd: &Report, cairn: &Report) -> String {
    let floor_ms = floor.write_ms(members);
    let multiple = |r: &Report| {
        r.latencies
            .quantile(0.5)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3 / floor_ms)
    };
    let (e, c) = (multiple(etcd), multiple(cairn));
    format!(
        "{:<4}{:<30}{:>11.2}{:>11.2}{:>7}\n",
        members,
        format!("  p50 / floor ({floor_ms:.2} ms)"),
        e,
        c,
        ratio(c, e)
    )
}

/// The comparison table.
fn table(args: &CompareArgs, results: &[(usize, Topology)]) -> String {
    let mut out = format!(
        "{:<4}{:<30}{:>11}{:>11}{:>7}{:>10}{:>10}{:>7}\n",
        "n", "workload", "etcd/s", "cairn/s", "ratio", "etcd p99", "cairn p99", "ratio"
    );
    for (members, Topology { measured, floor }) in results {
        let [etcd, cairn] = measured;
        for (i, scenario) in args.workloads.iter().enumerate() {
            let (e, c) = (&etcd.runs[i].report, &cairn.runs[i].report);
            let p99 = |r: &Report| r.p99().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
            // A run with no success (one that could not be done) has no throughput either.
            let rate = |r: &Report| {
                if r.latencies.count() > 0 {
                    r.throughput()
                } else {
                    f64::NAN
                }
            };
            let errors = e.errors + c.errors;
            out += &format!(
                "{:<4}{:<30}{:>11.0}{:>11.0}{:>7}{:>10.2}{:>10.2}{:>7}{}\n",
                members,
                args.label(*scenario),
                rate(e),
                rate(c),
                ratio(rate(c), rate(e)),
                p99(e),
                p99(c),
                ratio(p99(c), p99(e)),
                if errors > 0 {
                    format!("  ({errors} errors)")
                } else {
                    String::new()
                }
            );
            if *scenario == Scenario::Put1 {
                out += &floor_row(*members, floor, e, c);
            }
            out += &extra_rows(*members, &etcd.runs[i].extras, &cairn.runs[i].extras);
        }
        out += &format!(
            "{:<4}{:<30}{:>11.1}{:>11.1}{:>7}\n",
            members,
            "peak RSS MiB (largest member)",
            mib(etcd.peak_rss_bytes),
            mib(cairn.peak_rss_bytes),
            ratio(mib(cairn.peak_rss_bytes), mib(etcd.peak_rss_bytes))
        );
        out += &format!(
            "{:<4}{:<30}{:>11.1}{:>11.1}{:>7}\n",
            members,
            "disk MiB (all members)",
            mib(etcd.disk_bytes),
            mib(cairn.disk_bytes),
            ratio(mib(cairn.disk_bytes), mib(etcd.disk_bytes))
        );
    }
    out += "latencies in ms; ratio = cairn / etcd (throughput: higher is better; p99, RSS, disk: lower is better)\n";
    if args.workloads.contains(&Scenario::Put1) {
        out += "p50 / floor: put, 1 client p50 latency as a multiple of the machine's floor for \
                one write (above)\n";
    }
    if args.workloads.contains(&Scenario::Mixed) {
        out += "mixed: all requests/s and p99, then the reads (linearizable ranges of one key) \
                and the writes (puts) apart\n";
    }
    if args.workloads.contains(&Scenario::Fill) {
        out += "fill: puts/s and p99 of the fill; each system's peak RSS during the fill (peaks \
                reset before it) and resident set after it, largest member; disk of all members \
                after it\n";
    }
    if args.workloads.iter().any(|s| s.is_watch()) {
        out += "watch rows: events/s delivered to the watchers, and put-to-event p99\n";
    }
    if args.workloads.contains(&Scenario::LeaseKeepalive) {
        out +=
            "lease keep-alive: renewals/s and keep-alive round-trip p99; then grants and revokes \
                of its leases\n";
    }
    if args.workloads.contains(&Scenario::LeaseExpiry) {
        out += "lease expiry: 1 putter's puts/s and p99 while the keys are deleted (first to last \
                delete event), then before it; the keys' last delete event after the first \
                deadline; expired leases (of 10 probed) answered gone while their key was still \
                there\n";
    }
    for (members, Topology { measured, .. }) in results {
        for (m, system) in measured.iter().zip([System::Etcd, System::Cairn]) {
            for (run, scenario) in m.runs.iter().zip(&args.workloads) {
                if let Some(failure) = &run.failure {
                    out += &format!(
                        "FAILED: {members} member(s), {}, {}: {failure}\n",
                        args.label(*scenario),
                        system.name()
                    );
                }
            }
        }
    }
    out
}

/// Runs the comparison and prints its table.
pub async fn run(args: &CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.members.is_empty(), "no --members");
    anyhow::ensure!(!args.workloads.is_empty(), "no --workloads");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.mixed_read_ratio),
        "--mixed-read-ratio must be between 0 and 1"
    );
    anyhow::ensure!(
        args.mixed_key_space_size >= 1 && args.fill_keys >= 1,
        "--mixed-key-space-size and --fill-keys must be at least 1"
    );
    let mut results = Vec::new();
    for &members in &args.members {
        anyhow::ensure!(members >= 1, "--members must be at least 1");
        results.push((members, compare_topology(args, members).await?));
    }
    for (_, topology) in &results {
        print!("{}", topology.floor.table(&args.servers.dir));
    }
    print!("{}", table(args, &results));
    let failed = results
        .iter()
        .flat_map(|(_, topology)| topology.measured.iter())
        .flat_map(|m| &m.runs)
        .filter(|run| run.failure.is_some())
        .count();
    anyhow::ensure!(
        failed == 0,
        "{failed} run(s) failed (listed under the table)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::floor::QuorumSync;

    fn report_of(latencies_ms: &[u64]) -> Report {
        let mut latencies = Histogram::default();
        for &ms in latencies_ms {
            latencies.record(Duration::from_millis(ms));
        }
        Report {
            workload: "put".into(),
            latencies,
            errors: 0,
            first_error: None,
            elapsed: Duration::from_secs(1),
            ops: Vec::new(),
        }
    }

    #[test]
    fn the_floor_row_shows_p50_as_multiples_of_the_floor() {
        let (mut sync, mut rtt) = (Histogram::default(), Histogram::default());
        sync.record(Duration::from_millis(1));
        rtt.record(Duration::from_millis(1));
        let floor = Floor {
            syncs: vec![QuorumSync { members: 1, sync }],
            rtt,
        };
        // floor(1) = 1 ms + 1 ms; p50s 3 ms and 4 ms (one value each: exact, not a bucket's
        // bound).
        let row = floor_row(1, &floor, &report_of(&[3, 3]), &report_of(&[4]));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["1", "p50", "/", "floor", "(2.00", "ms)", "1.50", "2.00", "1.33"]
        );
        // An unmeasured size has no floor: no multiples, no ratio.
        let row = floor_row(3, &floor, &report_of(&[3]), &report_of(&[4]));
        assert!(
            row.contains("NaN") && row.trim_end().ends_with('-'),
            "{row}"
        );
    }

    #[test]
    fn ratios_are_cairn_over_etcd_and_undefined_without_etcd() {
        assert_eq!(ratio(1.0, 2.0), "0.50");
        assert_eq!(ratio(1.0, 0.0), "-");
        assert_eq!(ratio(f64::NAN, 2.0), "-");
    }
}
