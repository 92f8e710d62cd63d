//! `snapshot-catchup`: how long a follower that missed a lot of data takes to catch up.
//!
//! 3 members; one follower is crashed (SIGKILL); `--size-mib` of data is written through the
//! leader (with `--snapshot-count` low enough that the leader compacts its log past the
//! follower, so the follower needs a snapshot); the follower is restarted, and the time until
//! its Status `raftAppliedIndex` reaches the leader's is measured.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::cluster::{self, Cluster, System};
use crate::compare::ServerArgs;
use crate::load::{self, KeySpec, LoadSpec, Stop, Workload};

/// Pause between two Status polls of the restarted follower.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

// The flags of `snapshot-catchup` (a `///` here would replace the subcommand's help text).
#[derive(Args, Debug)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub servers: ServerArgs,
    /// Systems to measure, one after the other.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "cairn,etcd")]
    pub systems: Vec<System>,
    /// Data written while the follower is down, MiB.
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Value size, bytes.
    #[arg(long, default_value_t = 10 * 1024)]
    pub val_size: usize,
    /// --snapshot-count of every member.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Clients writing the data (over clients/4 connections, at least 1).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Give up when the follower has not caught up after this long.
    #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// Also print each result as a JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What one system measured.
struct Catchup {
    system: System,
    load: Duration,
    load_errors: u64,
    first_status: Duration,
    caught_up: Duration,
    target_index: u64,
    follower_peak_rss_bytes: u64,
    follower_disk_bytes: u64,
    leader_disk_bytes: u64,
}

async fn measure(args: &CatchupArgs, system: System) -> anyhow::Result<Catchup> {
    let dir = args.servers.temp_dir()?;
    let mut spec = args.servers.spec(system, 3, dir.path().into());
    spec.settings.snapshot_count = Some(args.snapshot_count);
    let mut cluster = Cluster::start(spec).await?;
    let leader = cluster.leader().await?;
    let follower = (leader + 1) % cluster.size();
    cluster.kill(follower)?;

    let bytes = args.size_mib * 1024 * 1024;
    let total = bytes.div_ceil(args.val_size as u64);
    let load_spec = LoadSpec {
        endpoints: vec![cluster.endpoint(leader)],
        clients: args.clients,
        conns: (args.clients / 4).max(1),
        stop: Stop::Total(total),
        rate: None,
        progress: Some(Duration::from_secs(10)),
    };
    let workload = Workload::Put(KeySpec {
        key_size: 16,
        val_size: args.val_size,
        key_space_size: total,
        sequential: true,
    });
    eprintln!(
        "{}: follower {follower} down; writing {} MiB ({total} puts of {} B) through the leader",
        system.name(),
        args.size_mib,
        args.val_size
    );
    let report = load::run(&load_spec, &workload).await?;
    let target_index = cluster::status(&cluster.endpoint(leader))
        .await?
        .raft_applied_index;

    cluster.restart(follower)?;
    let restarted = Instant::now();
    let mut first_status = None;
    loop {
        if let Ok(status) = cluster::status(&cluster.endpoint(follower)).await {
            first_status.get_or_insert(restarted.elapsed());
            if status.raft_applied_index >= target_index {
                break;
            }
        }
        anyhow::ensure!(
            restarted.elapsed() < args.timeout,
            "{} follower not caught up to index {target_index} after {:?}",
            system.name(),
            args.timeout
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let caught_up = restarted.elapsed();
    Ok(Catchup {
        system,
        load: report.elapsed,
        load_errors: report.errors,
        first_status: first_status.context("caught up without answering Status")?,
        caught_up,
        target_index,
        follower_peak_rss_bytes: cluster.peak_rss_bytes(follower)?,
        follower_disk_bytes: cluster.disk_bytes(follower)?,
        leader_disk_bytes: cluster.disk_bytes(leader)?,
    })
}

/// Measures every system and prints the results.
pub async fn run(args: &CatchupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.val_size >= 1, "--val-size must be at least 1");
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut lines = vec![format!(
        "{:<7}{:>9}{:>10}{:>8}{:>13}{:>12}{:>12}{:>11}{:>11}{:>11}",
        "system",
        "MiB",
        "load s",
        "errors",
        "catch-up s",
        "1st status",
        "index",
        "fol RSS",
        "fol disk",
        "ldr disk"
    )];
    for &system in &args.systems {
        let c = measure(args, system).await?;
        if args.json {
            let json = serde_json::json!({
                "scenario": "snapshot-catchup",
                "system": c.system.name(),
                "size_mib": args.size_mib,
                "val_size": args.val_size,
                "snapshot_count": args.snapshot_count,
                "load_s": c.load.as_secs_f64(),
                "load_errors": c.load_errors,
                "first_status_s": c.first_status.as_secs_f64(),
                "catch_up_s": c.caught_up.as_secs_f64(),
                "target_index": c.target_index,
                "follower_peak_rss_bytes": c.follower_peak_rss_bytes,
                "follower_disk_bytes": c.follower_disk_bytes,
                "leader_disk_bytes": c.leader_disk_bytes,
            });
            println!("{json}");
        }
        lines.push(format!(
            "{:<7}{:>9}{:>10.1}{:>8}{:>13.2}{:>12.2}{:>12}{:>11.1}{:>11.1}{:>11.1}",
            c.system.name(),
            args.size_mib,
            c.load.as_secs_f64(),
            c.load_errors,
            c.caught_up.as_secs_f64(),
            c.first_status.as_secs_f64(),
            c.target_index,
            mib(c.follower_peak_rss_bytes),
            mib(c.follower_disk_bytes),
            mib(c.leader_disk_bytes),
        ));
    }
    println!("{}", lines.join("\n"));
    println!("times from the follower's restart; RSS and disk in MiB (fol: follower, ldr: leader)");
    Ok(())
}
