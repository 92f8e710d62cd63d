//! `compare`: starts real etcd and Cairn with the same topology and settings, runs the same
//! workloads against each (alternating which goes first), and prints Cairn/etcd ratios of
//! throughput, p99 latency, peak RSS and data-directory size.
//!
//! Both clusters run at once, on one temporary directory (one disk), so each workload is
//! measured on both back to back and slow drifts of a shared machine hit both alike.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cluster::{Cluster, ClusterSpec, Settings, System};
use crate::load::{self, Consistency, KeySpec, LoadSpec, Stop, Workload};
use crate::report::Report;

/// The key the range workloads read, written once before them.
const RANGE_KEY: &[u8] = b"cairn-bench/range";

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
}

impl Scenario {
    fn label(self, clients: usize, conns: usize) -> String {
        match self {
            Scenario::Put1 => "put, 1 client, seq keys".into(),
            Scenario::PutMany => format!("put, {clients} cl/{conns} conns"),
            Scenario::RangeL => format!("range l, {clients} cl/{conns} conns"),
            Scenario::RangeS => format!("range s, {clients} cl/{conns} conns"),
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
        default_value = "put1,put-many,range-l,range-s"
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
    /// Value size of the put workloads and of the key the range workloads read, bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Also print every run as a JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

impl CompareArgs {
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

/// One system's measurements in one topology.
struct Measured {
    reports: Vec<Report>,
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

/// Runs every workload on both systems in one topology.
async fn compare_topology(args: &CompareArgs, members: usize) -> anyhow::Result<[Measured; 2]> {
    let dir = args.servers.temp_dir()?;
    let mut clusters = Vec::new();
    for system in [System::Etcd, System::Cairn] {
        let cluster = Cluster::start(args.servers.spec(system, members, dir.path().into())).await?;
        let endpoints = endpoints_leader_first(&cluster).await?;
        put_range_key(&endpoints[0], args.val_size).await?;
        clusters.push((system, cluster, endpoints));
    }
    let mut reports: [Vec<Report>; 2] = [Vec::new(), Vec::new()];
    for (w, &scenario) in args.workloads.iter().enumerate() {
        let order = if (w + members).is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        };
        for s in order {
            let (system, _, endpoints) = &clusters[s];
            let (spec, workload) = args.load(scenario, endpoints.clone());
            let report = load::run(&spec, &workload).await?;
            eprintln!(
                "{members} member(s), {}, {}: {:.0} req/s, p99 {:.2} ms, {} errors",
                scenario.label(args.clients, args.conns),
                system.name(),
                report.throughput(),
                report.p99().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
                report.errors
            );
            if args.json {
                let mut json = report.to_json();
                json["system"] = system.name().into();
                json["members"] = members.into();
                json["scenario"] = scenario.label(args.clients, args.conns).into();
                println!("{json}");
            }
            reports[s].push(report);
        }
    }
    let mut measured = Vec::new();
    for ((_, cluster, _), reports) in clusters.iter().zip(reports) {
        let mut peak_rss_bytes = 0;
        let mut disk_bytes = 0;
        for i in 0..cluster.size() {
            peak_rss_bytes = peak_rss_bytes.max(cluster.peak_rss_bytes(i)?);
            disk_bytes += cluster.disk_bytes(i)?;
        }
        measured.push(Measured {
            reports,
            peak_rss_bytes,
            disk_bytes,
        });
    }
    drop(clusters);
    let [etcd, cairn]: [Measured; 2] = measured.try_into().ok().expect("two systems measured");
    Ok([etcd, cairn])
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

/// The comparison table.
fn table(args: &CompareArgs, results: &[(usize, [Measured; 2])]) -> String {
    let mut out = format!(
        "{:<4}{:<30}{:>11}{:>11}{:>7}{:>10}{:>10}{:>7}\n",
        "n", "workload", "etcd/s", "cairn/s", "ratio", "etcd p99", "cairn p99", "ratio"
    );
    for (members, [etcd, cairn]) in results {
        for (i, scenario) in args.workloads.iter().enumerate() {
            let (e, c) = (&etcd.reports[i], &cairn.reports[i]);
            let p99 = |r: &Report| r.p99().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
            let errors = e.errors + c.errors;
            out += &format!(
                "{:<4}{:<30}{:>11.0}{:>11.0}{:>7}{:>10.2}{:>10.2}{:>7}{}\n",
                members,
                scenario.label(args.clients, args.conns),
                e.throughput(),
                c.throughput(),
                ratio(c.throughput(), e.throughput()),
                p99(e),
                p99(c),
                ratio(p99(c), p99(e)),
                if errors > 0 {
                    format!("  ({errors} errors)")
                } else {
                    String::new()
                }
            );
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
    out
}

/// Runs the comparison and prints its table.
pub async fn run(args: &CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.members.is_empty(), "no --members");
    anyhow::ensure!(!args.workloads.is_empty(), "no --workloads");
    let mut results = Vec::new();
    for &members in &args.members {
        anyhow::ensure!(members >= 1, "--members must be at least 1");
        results.push((members, compare_topology(args, members).await?));
    }
    print!("{}", table(args, &results));
    Ok(())
}
