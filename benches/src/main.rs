//! `cairn-bench`: a load generator for Cairn or any etcd v3 cluster, in the spirit of etcd's
//! `benchmark` tool (same subcommands, flags and defaults), plus runners that start real etcd and
//! Cairn side by side and compare them.
//!
//! **Boundary:** speaks to servers only through the etcd v3 gRPC API (`cairn-proto`); never
//! links `cairn-server`, so it measures Cairn exactly as an etcd client sees it.

mod catchup;
mod cluster;
mod compare;
mod expiry;
mod floor;
mod histogram;
mod lease;
mod load;
mod report;
mod watch;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use load::{Consistency, KeySpec, LoadSpec, Stop, Workload};

/// Requests of a run given neither `--total` nor `--duration` (etcd's default `--total`).
const TOTAL_DEFAULT: u64 = 10_000;

#[derive(Parser, Debug)]
#[command(name = "cairn-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Load(LoadCommand),
    /// Starts etcd and Cairn side by side, runs the same workloads on both, prints the ratios.
    Compare(compare::CompareArgs),
    /// Times a crashed follower's catch-up after data was written without it.
    SnapshotCatchup(catchup::CatchupArgs),
    /// Watchers over streams and keys, and puts to those keys: put-to-event latency, events/s,
    /// and a delivery check (every event to every watcher of its key, once, in order).
    Watch(watch::WatchArgs),
    /// Grants leases and keeps them alive over keep-alive streams: renewals/s, keep-alive
    /// latency, and whether any lease expired while kept alive.
    LeaseKeepalive(lease::KeepaliveArgs),
    /// Measures the machine's floor for one durable write: a small append + fdatasync (alone,
    /// and a quorum's of several at once) and a loopback round trip.
    Floor(floor::FloorArgs),
    /// Lets many leases (each with a key) expire at once under a steady put load: put latency
    /// before and during the expiry, time until every key is gone, leader kept or not.
    LeaseExpiry(expiry::ExpiryArgs),
}

/// The subcommands that put load on given endpoints.
#[derive(Subcommand, Debug)]
enum LoadCommand {
    /// Puts keys (etcd: benchmark put).
    Put {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Ranges over a key or key range (etcd: benchmark range).
    Range(RangeArgs),
    /// Transactions of puts (etcd: benchmark txn-put).
    TxnPut {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        keys: KeyArgs,
        /// Puts per transaction.
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Ranges of single keys (reads) and puts (writes) over a key space, mixed at random;
    /// latencies of reads and writes reported apart.
    Mixed(MixedArgs),
}

#[derive(Args, Debug)]
struct MixedArgs {
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// Share of requests that are reads (ranges of one key), from 0 to 1; the rest are puts.
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// Reads: l: linearizable, s: serializable.
    #[arg(long, value_enum, default_value = "l")]
    consistency: ConsistencyArg,
    /// Before the timed run, write every key of the key space once (untimed), so that every
    /// read finds a value.
    #[arg(long)]
    prefill: bool,
}

/// Flags every load subcommand takes.
#[derive(Args, Debug)]
struct LoadArgs {
    /// Comma-separated endpoints (host:port or URL); connections are spread over them
    /// round-robin.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Concurrent clients (request loops).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Requests in all [default: 10000 unless --duration].
    #[arg(long, conflicts_with = "duration")]
    total: Option<u64>,
    /// Run for this long instead (e.g. 30s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Requests per second over all clients; 0 for no limit.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Print the result as one JSON line instead of a table.
    #[arg(long)]
    json: bool,
    /// Interval of the progress line on stderr; 0 for none.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    progress_interval: Duration,
}

/// Flags of the writing subcommands.
#[derive(Args, Debug)]
struct KeyArgs {
    /// Key size, bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size, bytes.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Write keys 0, 1, 2, … in turn instead of at random.
    #[arg(long)]
    sequential_keys: bool,
}

#[derive(Args, Debug)]
struct RangeArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// First key of the range.
    key: String,
    /// End of the range (exclusive); a single key if absent.
    end: Option<String>,
    /// l: linearizable, s: serializable.
    #[arg(long, value_enum, default_value = "l")]
    consistency: ConsistencyArg,
    /// Maximum keys per response; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    limit: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ConsistencyArg {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

/// `30s`, `500ms`, `2m`, or plain seconds (`1.5`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit_secs) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?} (try 30s, 500ms, 2m)"))?;
    Duration::try_from_secs_f64(value * unit_secs)
        .map_err(|e| format!("bad duration {text:?}: {e}"))
}

impl LoadArgs {
    fn spec(&self) -> anyhow::Result<LoadSpec> {
        anyhow::ensure!(self.clients >= 1, "--clients must be at least 1");
        anyhow::ensure!(self.conns >= 1, "--conns must be at least 1");
        anyhow::ensure!(
            self.rate >= 0.0 && self.rate.is_finite(),
            "--rate must be 0 or more"
        );
        let stop = match (self.total, self.duration) {
            (_, Some(d)) => Stop::Duration(d),
            (Some(n), None) => Stop::Total(n),
            (None, None) => Stop::Total(TOTAL_DEFAULT),
        };
        Ok(LoadSpec {
            endpoints: self.endpoints.clone(),
            clients: self.clients,
            conns: self.conns,
            stop,
            rate: (self.rate > 0.0).then_some(self.rate),
            progress: (!self.progress_interval.is_zero()).then_some(self.progress_interval),
        })
    }
}

impl KeyArgs {
    fn spec(&self) -> anyhow::Result<KeySpec> {
        anyhow::ensure!(
            self.key_space_size >= 1,
            "--key-space-size must be at least 1"
        );
        let needed = load::varint_len(self.key_space_size - 1);
        anyhow::ensure!(
            self.key_size >= needed,
            "--key-size {} cannot hold {} distinct keys (needs {needed} bytes)",
            self.key_size,
            self.key_space_size
        );
        Ok(KeySpec {
            key_size: self.key_size,
            val_size: self.val_size,
            key_space_size: self.key_space_size,
            sequential: self.sequential_keys,
        })
    }
}

impl LoadCommand {
    /// The load and the workload.
    fn load(&self) -> anyhow::Result<(&LoadArgs, Workload)> {
        Ok(match self {
            LoadCommand::Put { load, keys } => (load, Workload::Put(keys.spec()?)),
            LoadCommand::TxnPut {
                load,
                keys,
                txn_ops,
            } => {
                anyhow::ensure!(*txn_ops >= 1, "--txn-ops must be at least 1");
                (
                    load,
                    Workload::TxnPut {
                        keys: keys.spec()?,
                        ops: *txn_ops,
                    },
                )
            }
            LoadCommand::Range(range) => (
                &range.load,
                Workload::Range {
                    key: range.key.clone().into_bytes(),
                    range_end: range.end.clone().unwrap_or_default().into_bytes(),
                    limit: range.limit,
                    consistency: range.consistency.into(),
                },
            ),
            LoadCommand::Mixed(mixed) => {
                anyhow::ensure!(
                    (0.0..=1.0).contains(&mixed.read_ratio),
                    "--read-ratio must be between 0 and 1"
                );
                (
                    &mixed.load,
                    Workload::Mixed {
                        keys: mixed.keys.spec()?,
                        read_ratio: mixed.read_ratio,
                        consistency: mixed.consistency.into(),
                    },
                )
            }
        })
    }
}

impl From<ConsistencyArg> for Consistency {
    fn from(arg: ConsistencyArg) -> Consistency {
        match arg {
            ConsistencyArg::L => Consistency::Linearizable,
            ConsistencyArg::S => Consistency::Serializable,
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match &command {
        Command::Compare(args) => compare::run(args).await,
        Command::SnapshotCatchup(args) => catchup::run(args).await,
        Command::Floor(args) => floor::run(args).await,
        Command::Watch(args) => {
            let report = watch::run(&args.spec()?).await?;
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            anyhow::ensure!(
                !report.failed(),
                "delivery check failed: {}",
                report.delivery.summary()
            );
            Ok(())
        }
        Command::LeaseKeepalive(args) => {
            let report = lease::run_keepalive(&args.spec()?).await?;
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            match report.failure() {
                Some(failure) => anyhow::bail!("lease check failed: {failure}"),
                None => Ok(()),
            }
        }
        Command::LeaseExpiry(args) => {
            let report = expiry::run(&args.spec()?).await?;
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            match report.failure() {
                Some(failure) => anyhow::bail!("lease expiry failed: {failure}"),
                None => Ok(()),
            }
        }
        Command::Load(command) => {
            let (load_args, workload) = command.load()?;
            let spec = load_args.spec()?;
            if let (LoadCommand::Mixed(mixed), Workload::Mixed { keys, .. }) = (command, &workload)
            {
                if mixed.prefill {
                    let prefill = load::prefill(&spec, keys).await?;
                    eprintln!(
                        "prefill: {} keys in {:.1}s",
                        prefill.latencies.count(),
                        prefill.elapsed.as_secs_f64()
                    );
                }
            }
            let report = load::run(&spec, &workload).await?;
            if load_args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM, with the signal's name.
async fn interrupted() -> anyhow::Result<&'static str> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map(|()| "SIGINT").map_err(Into::into),
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // On a signal the running command is dropped, and with it every cluster (members killed)
    // and temporary directory (removed).
    tokio::select! {
        result = execute(cli.command) => result,
        signal = interrupted() => anyhow::bail!("stopped by {}", signal?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cairn-bench").chain(args.iter().copied()))
    }

    /// The load subcommand `args` parse to.
    fn load_command(args: &[&str]) -> LoadCommand {
        match parse(args).unwrap().command {
            Command::Load(command) => command,
            other => panic!("not a load subcommand: {other:?}"),
        }
    }

    #[test]
    fn put_takes_etcd_benchmark_defaults() {
        let cli = load_command(&["put"]);
        let (load, workload) = cli.load().unwrap();
        let spec = load.spec().unwrap();
        assert_eq!(spec.endpoints, ["127.0.0.1:2379"]);
        assert_eq!((spec.clients, spec.conns), (1, 1));
        assert_eq!(spec.stop, Stop::Total(TOTAL_DEFAULT));
        assert_eq!(spec.rate, None);
        assert_eq!(
            workload,
            Workload::Put(KeySpec {
                key_size: 8,
                val_size: 8,
                key_space_size: 1,
                sequential: false
            })
        );
    }

    #[test]
    fn put_flags_reach_the_specs() {
        let cli = load_command(&[
            "put",
            "--endpoints=a:1,b:2",
            "--clients=1000",
            "--conns=100",
            "--duration=1.5s",
            "--rate=200",
            "--key-size=16",
            "--val-size=256",
            "--key-space-size=100000",
            "--sequential-keys",
            "--progress-interval=0",
        ]);
        let (load, workload) = cli.load().unwrap();
        let spec = load.spec().unwrap();
        assert_eq!(spec.endpoints, ["a:1", "b:2"]);
        assert_eq!((spec.clients, spec.conns), (1000, 100));
        assert_eq!(spec.stop, Stop::Duration(Duration::from_millis(1500)));
        assert_eq!(spec.rate, Some(200.0));
        assert_eq!(spec.progress, None);
        let Workload::Put(keys) = workload else {
            panic!("not a put: {workload:?}")
        };
        assert_eq!(
            (
                keys.key_size,
                keys.val_size,
                keys.key_space_size,
                keys.sequential
            ),
            (16, 256, 100_000, true)
        );
    }

    #[test]
    fn total_and_duration_exclude_each_other() {
        assert!(parse(&["put", "--total=5", "--duration=5s"]).is_err());
        let cli = load_command(&["put", "--total=5"]);
        assert_eq!(cli.load().unwrap().0.spec().unwrap().stop, Stop::Total(5));
    }

    #[test]
    fn a_key_too_short_for_the_key_space_is_refused() {
        let cli = load_command(&["put", "--key-size=1", "--key-space-size=65"]);
        let error = cli.load().unwrap_err().to_string();
        assert!(error.contains("needs 2 bytes"), "{error}");
        let cli = load_command(&["put", "--key-size=1", "--key-space-size=64"]);
        assert!(cli.load().is_ok());
    }

    #[test]
    fn range_takes_key_end_consistency_and_limit() {
        let cli = load_command(&["range", "a", "z", "--consistency=s", "--limit=10"]);
        let (_, workload) = cli.load().unwrap();
        assert_eq!(
            workload,
            Workload::Range {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                limit: 10,
                consistency: Consistency::Serializable
            }
        );
        let cli = load_command(&["range", "k"]);
        let (_, workload) = cli.load().unwrap();
        assert!(matches!(
            workload,
            Workload::Range { ref range_end, consistency: Consistency::Linearizable, .. } if range_end.is_empty()
        ));
        assert!(parse(&["range", "k", "--consistency=x"]).is_err());
        assert!(parse(&["range"]).is_err());
    }

    #[test]
    fn txn_put_takes_txn_ops() {
        let cli = load_command(&["txn-put", "--txn-ops=4", "--key-space-size=10"]);
        let (_, workload) = cli.load().unwrap();
        assert!(
            matches!(workload, Workload::TxnPut { ops: 4, ref keys } if keys.key_space_size == 10)
        );
        let cli = load_command(&["txn-put", "--txn-ops=0"]);
        assert!(cli.load().is_err());
    }

    #[test]
    fn mixed_takes_put_flags_read_ratio_and_consistency() {
        let cli = load_command(&[
            "mixed",
            "--clients=1000",
            "--conns=100",
            "--duration=5s",
            "--val-size=256",
            "--key-space-size=10000",
            "--read-ratio=0.75",
            "--consistency=s",
            "--rate=500",
            "--prefill",
        ]);
        let LoadCommand::Mixed(ref args) = cli else {
            panic!("not mixed: {cli:?}")
        };
        assert!(args.prefill);
        let (load, workload) = cli.load().unwrap();
        let spec = load.spec().unwrap();
        assert_eq!((spec.clients, spec.conns), (1000, 100));
        assert_eq!(spec.stop, Stop::Duration(Duration::from_secs(5)));
        assert_eq!(spec.rate, Some(500.0));
        let Workload::Mixed {
            keys,
            read_ratio,
            consistency,
        } = workload
        else {
            panic!("not mixed: {workload:?}")
        };
        assert_eq!((keys.val_size, keys.key_space_size), (256, 10_000));
        assert_eq!((read_ratio, consistency), (0.75, Consistency::Serializable));
        let (_, workload) = load_command(&["mixed"]).load().unwrap();
        assert!(matches!(
            workload,
            Workload::Mixed {
                read_ratio: 0.9,
                consistency: Consistency::Linearizable,
                ..
            }
        ));
        assert!(load_command(&["mixed", "--read-ratio=1.5"]).load().is_err());
        assert!(load_command(&["mixed", "--read-ratio=-0.1"])
            .load()
            .is_err());
    }

    #[test]
    fn compare_defaults_fit_the_five_minute_budget() {
        let cli = parse(&["compare"]).unwrap();
        let Command::Compare(args) = cli.command else {
            panic!("not compare")
        };
        assert_eq!(args.members, [1, 3]);
        assert_eq!(args.workloads.len(), 7);
        assert!(args.workloads.contains(&compare::Scenario::Mixed));
        assert!(!args.workloads.contains(&compare::Scenario::Fill));
        assert_eq!(args.fill_keys, 1_000_000);
        assert_eq!(
            (args.mixed_read_ratio, args.mixed_key_space_size),
            (0.9, 10_000)
        );
        assert!(args.workloads.contains(&compare::Scenario::WatchFanout));
        assert!(args.workloads.contains(&compare::Scenario::LeaseKeepalive));
        assert!(!args.workloads.contains(&compare::Scenario::LeaseExpiry));
        assert_eq!(
            (args.keepalive_leases, args.expiry_leases),
            (10_000, 10_000)
        );
        assert_eq!((args.clients, args.conns), (1000, 100));
        assert_eq!(
            (
                args.servers.heartbeat_interval,
                args.servers.election_timeout
            ),
            (100, 1000)
        );
        // Timed runs only: creating watchers and granting/revoking leases come on top.
        let runs = args.members.len() * args.workloads.len() * 2;
        assert!(args.duration * runs as u32 <= Duration::from_secs(240));
        assert!(parse(&[
            "compare",
            "--workloads=put1,range-s",
            "--members=3",
            "--duration=2s"
        ])
        .is_ok());
        assert!(parse(&["compare", "--workloads=nope"]).is_err());
        let Command::Compare(args) = parse(&[
            "compare",
            "--workloads=mixed,fill",
            "--fill-keys=100000",
            "--fill-timeout=2m",
            "--mixed-read-ratio=0.5",
        ])
        .unwrap()
        .command
        else {
            panic!("not compare")
        };
        assert_eq!(
            args.workloads,
            [compare::Scenario::Mixed, compare::Scenario::Fill]
        );
        assert_eq!(
            (args.fill_keys, args.fill_timeout, args.mixed_read_ratio),
            (100_000, Duration::from_secs(120), 0.5)
        );
        assert!(parse(&["compare", "--workloads=watch-fanout,watch-spread"]).is_ok());
        assert!(parse(&[
            "compare",
            "--workloads=lease-keepalive,lease-expiry",
            "--keepalive-leases=100000",
            "--keepalive-rate=5000",
            "--expiry-ttl=1"
        ])
        .is_ok());
    }

    #[test]
    fn snapshot_catchup_takes_size_and_systems() {
        let cli = parse(&["snapshot-catchup", "--size-mib=1024", "--systems=cairn"]).unwrap();
        let Command::SnapshotCatchup(args) = cli.command else {
            panic!("not snapshot-catchup")
        };
        assert_eq!(args.size_mib, 1024);
        assert_eq!(args.systems, [cluster::System::Cairn]);
        assert_eq!(args.val_size, 10 * 1024);
        assert!(Cli::try_parse_from(["cairn-bench", "snapshot-catchup", "--systems=zk"]).is_err());
    }

    #[test]
    fn watch_takes_etcd_benchmark_defaults_and_its_flags() {
        let Command::Watch(args) = parse(&["watch"]).unwrap().command else {
            panic!("not watch")
        };
        let spec = args.spec().unwrap();
        assert_eq!(
            (spec.watchers, spec.streams, spec.conns, spec.keys),
            (1000, 10, 1, 1)
        );
        assert_eq!(spec.stop, Stop::Total(1000));
        assert_eq!((spec.rate, spec.in_flight), (Some(100.0), None));
        let Command::Watch(args) = parse(&[
            "watch",
            "--watchers=100000",
            "--streams=100",
            "--conns=10",
            "--keys=10000",
            "--duration=8s",
            "--rate=0",
            "--in-flight=256",
            "--put-clients=100",
            "--val-size=256",
        ])
        .unwrap()
        .command
        else {
            panic!("not watch")
        };
        let spec = args.spec().unwrap();
        assert_eq!(
            (
                spec.watchers,
                spec.streams,
                spec.conns,
                spec.keys,
                spec.put_clients
            ),
            (100_000, 100, 10, 10_000, 100)
        );
        assert_eq!(spec.stop, Stop::Duration(Duration::from_secs(8)));
        assert_eq!((spec.rate, spec.in_flight), (None, Some(256)));
        assert!(parse(&["watch", "--total=5", "--duration=5s"]).is_err());
        let Command::Watch(args) = parse(&["watch", "--val-size=8"]).unwrap().command else {
            panic!("not watch")
        };
        assert!(args.spec().is_err());
    }

    #[test]
    fn lease_keepalive_renews_at_the_go_client_pace_unless_told() {
        let Command::LeaseKeepalive(args) = parse(&["lease-keepalive", "--leases=100000"])
            .unwrap()
            .command
        else {
            panic!("not lease-keepalive")
        };
        let spec = args.spec().unwrap();
        assert_eq!(
            (spec.leases, spec.ttl, spec.streams, spec.conns),
            (100_000, 60, 100, 10)
        );
        assert_eq!(spec.rate, Some(5000.0), "every lease once per TTL/3");
        assert_eq!(spec.check_leases, 1000);
        let Command::LeaseKeepalive(args) = parse(&["lease-keepalive", "--rate=0", "--leases=10"])
            .unwrap()
            .command
        else {
            panic!("not lease-keepalive")
        };
        let spec = args.spec().unwrap();
        assert_eq!((spec.rate, spec.check_leases), (None, 10));
        let Command::LeaseKeepalive(args) =
            parse(&["lease-keepalive", "--conns=200"]).unwrap().command
        else {
            panic!("not lease-keepalive")
        };
        assert!(args.spec().is_err(), "more connections than streams");
    }

    #[test]
    fn lease_expiry_takes_its_flags() {
        let Command::LeaseExpiry(args) = parse(&["lease-expiry"]).unwrap().command else {
            panic!("not lease-expiry")
        };
        let spec = args.spec().unwrap();
        assert_eq!((spec.leases, spec.ttl), (10_000, 10));
        assert_eq!(spec.before, Duration::ZERO);
        let Command::LeaseExpiry(args) =
            parse(&["lease-expiry", "--ttl=1", "--leases=5", "--before=3s"])
                .unwrap()
                .command
        else {
            panic!("not lease-expiry")
        };
        let spec = args.spec().unwrap();
        assert_eq!(
            (spec.leases, spec.ttl, spec.before),
            (5, 1, Duration::from_secs(3))
        );
        let Command::LeaseExpiry(args) = parse(&["lease-expiry", "--leases=0"]).unwrap().command
        else {
            panic!("not lease-expiry")
        };
        assert!(args.spec().is_err());
    }

    #[test]
    fn floor_takes_dir_members_and_sample_counts() {
        let Command::Floor(args) = parse(&["floor"]).unwrap().command else {
            panic!("not floor")
        };
        let spec = args.spec().unwrap();
        assert_eq!(spec.members, [1, 3]);
        assert_eq!(
            (spec.sync_rounds, spec.round_trips),
            (floor::SYNC_ROUNDS_DEFAULT, floor::ROUND_TRIPS_DEFAULT)
        );
        let Command::Floor(args) = parse(&[
            "floor",
            "--dir=/var/tmp",
            "--members=5",
            "--sync-rounds=10",
            "--round-trips=20",
        ])
        .unwrap()
        .command
        else {
            panic!("not floor")
        };
        assert_eq!(args.dir, std::path::Path::new("/var/tmp"));
        let spec = args.spec().unwrap();
        assert_eq!(
            (spec.members, spec.sync_rounds, spec.round_trips),
            (vec![5], 10, 20)
        );
        for bad in ["--members=0", "--sync-rounds=0", "--round-trips=0"] {
            let Command::Floor(args) = parse(&["floor", bad]).unwrap().command else {
                panic!("not floor")
            };
            assert!(args.spec().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn zero_clients_or_negative_rate_are_refused() {
        let cli = load_command(&["put", "--clients=0"]);
        assert!(cli.load().unwrap().0.spec().is_err());
        let cli = load_command(&["put", "--rate=-1"]);
        assert!(cli.load().unwrap().0.spec().is_err());
    }
}
