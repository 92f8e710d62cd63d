//! One test run, start to verdict: start the cluster, run the clients and the nemesis until the
//! time limit, heal and let the cluster settle, run the workload's final reads, then check the
//! history and write the report directory:
//!
//! ```text
//! <store>/<workload>-<unix seconds>-<seed>/
//!   test.json      options and seed
//!   history.jsonl  every event (see `history`)
//!   results.json   every checker's result and the verdict
//!   report.html    timeline, latency and throughput plots with the faults (see `report`)
//!   nodes/n<i>.log member logs, only when the verdict is not valid
//! ```
//!
//! Every wait is bounded: client requests by `--request-timeout-ms`, the run by `--time-limit`,
//! recovery by `--settle-timeout`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::checker::{self, CheckResult, Verdict};
use crate::client::EtcdClient;
use crate::cluster::{Cluster, ClusterSpec};
use crate::history::{self, Actor, Call, EventKind, Recorder, WatchRecord};
use crate::nemesis::{self, Fault};
use crate::report;
use crate::watcher::{self, CompactAt, CompactorSpec, Watchers, WatchersSpec};
use crate::workload::{self, Generator, ReadMode, Workload};

/// Attempts per member at the final read of the set.
const FINAL_READ_ATTEMPTS_MAX: usize = 10;

/// Log lines that mean a member crashed by itself (Go and Rust panics, fatal log levels).
const CRASH_PATTERNS: [&str; 5] = [
    "panic:",
    "panicked at",
    "fatal error:",
    "\"level\":\"fatal\"",
    "\"level\":\"panic\"",
];

/// Everything that defines a run; written to `test.json`.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
pub struct RunOptions {
    /// The member binary: real etcd, or `cairn`.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub bin: PathBuf,
    /// Cluster size: 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    #[arg(long, value_enum, default_value_t = Workload::Register)]
    pub workload: Workload,
    /// Fault classes, comma-separated; `--nemesis` with no value for none.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        num_args = 0..,
        default_value = "kill,pause,partition"
    )]
    pub nemesis: Vec<Fault>,
    /// Seconds between fault changes (a fault is held for one interval, then healed for one).
    #[arg(long, default_value_t = 5.0)]
    pub nemesis_interval_s: f64,
    /// Seconds of client traffic and faults before the final phase.
    #[arg(long, default_value_t = 30)]
    pub time_limit_s: u64,
    /// Client threads; each is pinned to member `thread % members`.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Target total request rate, ops/s.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Deadline of every client request, ms; a write past it is indeterminate.
    #[arg(long, default_value_t = 1000)]
    pub request_timeout_ms: u64,
    /// register: threads sharing one key at a time (half of them only read).
    #[arg(long, default_value_t = 10)]
    pub threads_per_key: usize,
    /// register: operations on a key before its group moves to a fresh key.
    #[arg(long, default_value_t = 200)]
    pub ops_per_key: u64,
    #[arg(long, value_enum, default_value_t = ReadMode::Linearizable)]
    pub reads: ReadMode,
    /// Seconds the healed cluster may take to serve a linearizable read on every member.
    #[arg(long, default_value_t = 30)]
    pub settle_timeout_s: u64,
    /// Random seed for the generator and the nemesis (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Extra flag passed to every member, repeatable (e.g. --member-arg=--snapshot-count=100).
    #[arg(long = "member-arg", allow_hyphen_values = true)]
    pub member_args: Vec<String>,
    /// watch: watcher tasks per member (each keeps one watcher at a time; see `watcher`).
    #[arg(long, default_value_t = 2)]
    pub watchers_per_member: usize,
    /// watch: a watch stream with no response for this long is treated as broken and resumed.
    #[arg(long, default_value_t = 3000)]
    pub watch_idle_timeout_ms: u64,
    /// watch: seconds between compactions (0: never compact).
    #[arg(long, default_value_t = 2.0)]
    pub compact_interval_s: f64,
    /// watch: revisions the compactor stays behind the highest acknowledged one.
    #[arg(long, default_value_t = watcher::COMPACT_LAG_REVISIONS_DEFAULT)]
    pub compact_lag_revisions: i64,
    /// watch: which revisions to compact at (`any` also compacts at deletes' revisions, which
    /// exposes etcd#18089 in etcd 3.4.23).
    #[arg(long, value_enum, default_value_t = CompactAt::Put)]
    pub compact_at: CompactAt,
    /// Where report directories go.
    #[arg(long, default_value = "store")]
    pub store: PathBuf,
}

/// What a run produced.
#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub verdict: Verdict,
    pub checkers: Vec<CheckResult>,
    /// Counts of completions by call and type, and timings.
    pub stats: serde_json::Value,
}

/// Runs the checkers that read only the history (also used by `check`).
pub fn check_history(workload: Workload, events: &[history::Event]) -> anyhow::Result<Results> {
    let ops = history::pair(events)?;
    let workload_result = match workload {
        Workload::Register => checker::linearizable::check(&ops),
        Workload::Set => checker::set::check(&ops),
        Workload::Append => checker::elle::check(&ops),
        Workload::Watch => checker::watch::check(events, &ops),
        Workload::LockSet | Workload::LockEtcdSet => checker::set::check(&ops),
        Workload::KvRobust => checker::kv::check(&ops),
    };
    let checkers = vec![
        workload_result,
        checker::revision::check(&ops),
        checker::faults::check(events),
    ];
    Ok(Results {
        verdict: checkers
            .iter()
            .fold(Verdict::Valid, |v, c| v.and(c.verdict)),
        checkers,
        stats: history_stats(events),
    })
}

/// Completions by call and type, and how many ops the history has.
fn history_stats(events: &[history::Event]) -> serde_json::Value {
    use std::collections::{BTreeMap, HashMap};
    let mut calls: HashMap<Actor, &'static str> = HashMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for event in events {
        let name = match &event.kind {
            EventKind::Invoke { call } => {
                let name = match call {
                    Call::Read { .. } => "read",
                    Call::Write { .. } => "write",
                    Call::Cas { .. } => "cas",
                    Call::Add { .. } => "add",
                    Call::ReadSet => "read_set",
                    Call::Txn { .. } => "txn",
                    Call::Put { .. } => "put",
                    Call::PutTxn { .. } => "put_txn",
                    Call::Delete {
                        range_end: None, ..
                    } => "delete",
                    Call::Delete { .. } => "delete_range",
                    Call::Compact { .. } => "compact",
                    Call::ReadPrefix => "read_prefix",
                    Call::LockAdd { pause_ms: 0, .. } => "lock_add",
                    Call::LockAdd { .. } => "lock_add_paused",
                    Call::LockRead => "lock_read",
                    Call::KvRange { revision: 0, .. } => "range",
                    Call::KvRange { .. } => "range_past",
                    Call::KvCas { .. } => "kv_cas",
                };
                calls.insert(event.actor, name);
                continue;
            }
            EventKind::Ok { .. } => "ok",
            EventKind::Fail { .. } => "fail",
            EventKind::Info { .. } => "info",
            EventKind::Nemesis { .. } => {
                *counts.entry("nemesis_events".into()).or_default() += 1;
                continue;
            }
            EventKind::Watch { record } => {
                let name = match record {
                    WatchRecord::Open { .. } => "watch_open",
                    WatchRecord::Created { .. } => "watch_created",
                    WatchRecord::Events { .. } => "watch_events",
                    WatchRecord::Progress { .. } => "watch_progress",
                    WatchRecord::Cancel => "watch_cancel",
                    WatchRecord::Canceled { .. } => "watch_canceled",
                    WatchRecord::Broken { .. } => "watch_broken",
                    WatchRecord::Stop => "watch_stop",
                };
                *counts.entry(name.into()).or_default() += 1;
                continue;
            }
        };
        let call = calls.get(&event.actor).copied().unwrap_or("unknown");
        *counts.entry(format!("{call}_{name}")).or_default() += 1;
    }
    serde_json::to_value(counts).expect("a map of counters serializes")
}

/// Greps member logs for crashes the harness did not cause (SIGKILL leaves no such line).
fn check_server_logs(paths: &[PathBuf]) -> CheckResult {
    let mut anomalies = Vec::new();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(path) else {
            anomalies.push(format!("cannot read {}", path.display()));
            continue;
        };
        for line in text.lines() {
            if CRASH_PATTERNS.iter().any(|p| line.contains(p)) {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                anomalies.push(format!("{name}: {line}"));
                break;
            }
        }
    }
    CheckResult {
        checker: "server-logs".into(),
        verdict: if anomalies.is_empty() {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
        anomalies,
        stats: serde_json::json!({ "logs": paths.len() }),
    }
}

/// One client thread: invoke, record, repeat until `end`. An indeterminate completion retires
/// the process; the thread carries on as a fresh process with a fresh connection.
#[allow(clippy::too_many_arguments)]
async fn client_thread(
    thread: usize,
    concurrency: usize,
    url: String,
    node: usize,
    generator: Arc<Generator>,
    recorder: Recorder,
    options: Arc<RunOptions>,
    seed: u64,
    end: Instant,
) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(options.request_timeout_ms);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (thread as u64).wrapping_mul(0x9E37));
    let mean_delay = Duration::from_secs_f64(concurrency as f64 / options.rate.max(0.001));
    let mut process = thread as u64;
    let mut client = EtcdClient::new(&url, timeout)?;
    loop {
        let delay = mean_delay.mul_f64(rng.random_range(0.0..2.0));
        tokio::time::sleep_until(end.min(Instant::now() + delay)).await;
        if Instant::now() >= end {
            return Ok(());
        }
        let call = generator.next_call(thread, &mut rng);
        let actor = Actor::Client(process);
        recorder.record(actor, Some(node), EventKind::Invoke { call: call.clone() });
        let completion = workload::invoke(&mut client, &call, options.reads).await;
        generator.observe(thread, &call, &completion);
        let indeterminate = matches!(completion, EventKind::Info { .. });
        recorder.record(actor, Some(node), completion);
        if indeterminate {
            process += concurrency as u64;
            client = EtcdClient::new(&url, timeout)?;
        }
    }
}

/// After healing: one successful read of the whole set (`call`) from every member, each by a
/// fresh process, so every acknowledged add has a read that began after it.
async fn final_set_reads(
    cluster: &Cluster,
    recorder: &Recorder,
    call: &Call,
    first_process: u64,
    timeout: Duration,
    reads: ReadMode,
) -> anyhow::Result<()> {
    for node in 0..cluster.size() {
        let process = first_process + node as u64;
        let mut client = EtcdClient::new(&cluster.client_url(node), timeout)?;
        for _ in 0..FINAL_READ_ATTEMPTS_MAX {
            let actor = Actor::Client(process);
            recorder.record(actor, Some(node), EventKind::Invoke { call: call.clone() });
            let completion = workload::invoke(&mut client, call, reads).await;
            let ok = matches!(completion, EventKind::Ok { .. });
            recorder.record(actor, Some(node), completion);
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// watch, after healing: one successful linearizable read of the watched prefix (trying each
/// member in turn), whose revision every watcher must then reach. `None` if none succeeded.
async fn final_watch_read(
    cluster: &Cluster,
    recorder: &Recorder,
    first_process: u64,
    timeout: Duration,
) -> anyhow::Result<Option<i64>> {
    for attempt in 0..FINAL_READ_ATTEMPTS_MAX {
        let node = attempt % cluster.size();
        let actor = Actor::Client(first_process + attempt as u64);
        let mut client = EtcdClient::new(&cluster.client_url(node), timeout)?;
        recorder.record(
            actor,
            Some(node),
            EventKind::Invoke {
                call: Call::ReadPrefix,
            },
        );
        let completion =
            workload::invoke(&mut client, &Call::ReadPrefix, ReadMode::Linearizable).await;
        let revision = match &completion {
            EventKind::Ok { revision, .. } => Some(*revision),
            _ => None,
        };
        recorder.record(actor, Some(node), completion);
        if revision.is_some() {
            return Ok(revision);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(None)
}

/// Runs one test and writes its report; returns the report directory and the results.
pub async fn run(mut options: RunOptions) -> anyhow::Result<(PathBuf, Results)> {
    anyhow::ensure!(options.concurrency >= 2, "--concurrency must be at least 2");
    anyhow::ensure!(options.rate > 0.0, "--rate must be positive");
    let seed = *options.seed.get_or_insert_with(|| rand::rng().random());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let dir = options
        .store
        .join(format!("{:?}-{now}-{seed}", options.workload).to_lowercase());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let test = serde_json::json!({
        "options": options,
        "bin_version": bin_version(&options.bin),
    });
    std::fs::write(dir.join("test.json"), serde_json::to_vec_pretty(&test)?)?;
    let options = Arc::new(options);

    eprintln!(
        "cairn-jepsen: starting {} members of {}",
        options.members,
        options.bin.display()
    );
    let cluster = Cluster::start(ClusterSpec {
        bin: options.bin.clone(),
        members: options.members,
        extra_args: options.member_args.clone(),
        track_syncs: options.nemesis.contains(&Fault::LoseUnsynced),
    })
    .await?;
    let recorder = Recorder::new();
    let mut generator = Generator::new(
        options.workload,
        options.concurrency,
        options.threads_per_key,
        options.ops_per_key,
    );
    if matches!(options.workload, Workload::LockSet | Workload::LockEtcdSet)
        && options.nemesis.contains(&Fault::Pause)
    {
        generator = generator.client_pauses(Duration::from_secs_f64(options.nemesis_interval_s));
    }
    let generator = Arc::new(generator);
    let end = Instant::now() + Duration::from_secs(options.time_limit_s);
    eprintln!(
        "cairn-jepsen: {:?} workload for {} s, faults {:?}, seed {seed}",
        options.workload, options.time_limit_s, options.nemesis
    );
    let mut clients = tokio::task::JoinSet::new();
    let urls: Vec<String> = (0..cluster.size()).map(|i| cluster.client_url(i)).collect();
    let timeout = Duration::from_millis(options.request_timeout_ms);
    let watchers = (options.workload == Workload::Watch).then(|| {
        Watchers::start(
            WatchersSpec {
                urls: urls.clone(),
                per_member: options.watchers_per_member.max(1),
                open_timeout: timeout,
                idle_timeout: Duration::from_millis(options.watch_idle_timeout_ms),
                end,
                seed,
            },
            generator.clone(),
            recorder.clone(),
        )
    });
    if matches!(options.workload, Workload::Watch | Workload::KvRobust)
        && options.compact_interval_s > 0.0
    {
        clients.spawn(watcher::compactor(
            urls.clone(),
            CompactorSpec {
                interval: Duration::from_secs_f64(options.compact_interval_s),
                lag_revisions: options.compact_lag_revisions.max(1),
                at: options.compact_at,
            },
            timeout,
            generator.clone(),
            recorder.clone(),
            options.concurrency as u64 * 2_000_000,
            end,
            seed,
        ));
    }
    for thread in 0..options.concurrency {
        let node = thread % cluster.size();
        clients.spawn(client_thread(
            thread,
            options.concurrency,
            cluster.client_url(node),
            node,
            generator.clone(),
            recorder.clone(),
            options.clone(),
            seed,
            end,
        ));
    }
    let nemesis = tokio::spawn(nemesis::run(
        cluster,
        options.nemesis.clone(),
        Duration::from_secs_f64(options.nemesis_interval_s),
        end,
        rand::rngs::StdRng::seed_from_u64(seed),
        recorder.clone(),
    ));
    while let Some(joined) = clients.join_next().await {
        joined.context("client thread panicked")??;
    }
    let (mut cluster, nemesis_result) = nemesis.await.context("nemesis panicked")?;
    nemesis_result?;

    eprintln!(
        "cairn-jepsen: healing, then waiting up to {} s for recovery",
        options.settle_timeout_s
    );
    cluster.heal_all()?;
    recorder.record(
        Actor::Nemesis,
        None,
        EventKind::Nemesis {
            action: "heal all".into(),
        },
    );
    let settle = cluster
        .wait_healthy(Duration::from_secs(options.settle_timeout_s))
        .await;
    let recovery = CheckResult {
        checker: "recovery".into(),
        verdict: if settle.is_ok() {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
        anomalies: settle
            .as_ref()
            .err()
            .map(|e| format!("{e:#}"))
            .into_iter()
            .collect(),
        stats: serde_json::json!({
            "recovery_ms": settle.as_ref().ok().map(|d| d.as_millis() as u64),
        }),
    };
    let first_process = options.concurrency as u64 * 1_000_000;
    if let (Some(call), true) = (workload::final_read_call(options.workload), settle.is_ok()) {
        final_set_reads(
            &cluster,
            &recorder,
            &call,
            first_process,
            timeout,
            options.reads,
        )
        .await?;
    }
    if let Some(watchers) = watchers {
        let final_revision = if settle.is_ok() {
            final_watch_read(&cluster, &recorder, first_process, timeout).await?
        } else {
            None
        };
        eprintln!(
            "cairn-jepsen: waiting up to {} s for every watcher to reach revision {final_revision:?}",
            options.settle_timeout_s
        );
        let deadline = Instant::now() + Duration::from_secs(options.settle_timeout_s);
        watchers.finish(final_revision, deadline).await?;
    }

    let events = recorder.snapshot();
    history::write_jsonl(&dir.join("history.jsonl"), &events)?;
    let check_started = std::time::Instant::now();
    let mut results = check_history(options.workload, &events)?;
    let check_ms = check_started.elapsed().as_millis() as u64;
    results.checkers.push(recovery);
    results
        .checkers
        .push(check_server_logs(&cluster.log_paths()));
    results.verdict = results
        .checkers
        .iter()
        .fold(Verdict::Valid, |v, c| v.and(c.verdict));
    results.stats["check_ms"] = check_ms.into();
    let (identified, unidentified) = cluster.network().connection_counts();
    results.stats["peer_connections"] = identified.into();
    results.stats["peer_connections_unidentified"] = unidentified.into();
    results.stats["peer_resets"] = cluster.network().resets().into();
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    write_report(&dir, &events, &results);
    if results.verdict != Verdict::Valid {
        let nodes = dir.join("nodes");
        std::fs::create_dir_all(&nodes)?;
        for log in cluster.log_paths() {
            let name = log.file_name().expect("log paths have names");
            std::fs::copy(&log, nodes.join(name))?;
        }
    }
    drop(cluster);
    Ok((dir, results))
}

/// The first line of `<bin> --version`, for the report.
fn bin_version(bin: &Path) -> String {
    match std::process::Command::new(bin).arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Re-checks a saved report directory's history (`test.json` names the workload).
pub fn check_dir(dir: &Path) -> anyhow::Result<Results> {
    let test: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("test.json")).context("reading test.json")?,
    )?;
    let workload: Workload = serde_json::from_value(test["options"]["workload"].clone())
        .context("test.json: options.workload")?;
    let events = history::read_jsonl(&dir.join("history.jsonl"))?;
    let results = check_history(workload, &events)?;
    write_report(dir, &events, &results);
    Ok(results)
}

/// Writes `report.html` (see `report`) with the verdict and every checker's answer. A report
/// that cannot be written (say, a read-only store) is a warning: the verdict stands without it.
fn write_report(dir: &Path, events: &[history::Event], results: &Results) {
    let mut summary = format!("VERDICT: {:?}\n", results.verdict);
    for checker in &results.checkers {
        summary += &format!(
            "{:<14} {:?} {}\n",
            checker.checker, checker.verdict, checker.stats
        );
        for anomaly in &checker.anomalies {
            summary += &format!("    {anomaly}\n");
        }
    }
    summary += &format!("ops: {}", results.stats);
    let title = dir.file_name().unwrap_or_default().to_string_lossy();
    if let Err(e) = report::write(dir, events, &title, &summary) {
        eprintln!(
            "cairn-jepsen: warning: cannot write {}: {e}",
            dir.join("report.html").display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_log_check_finds_panics_only() {
        let dir = tempfile::tempdir().unwrap();
        let clean = dir.path().join("n0.log");
        let crashed = dir.path().join("n1.log");
        std::fs::write(&clean, "2026 I | raft: elected leader\nlost leader\n").unwrap();
        std::fs::write(&crashed, "ok\npanic: runtime error: index out of range\n").unwrap();
        let result = check_server_logs(std::slice::from_ref(&clean));
        assert_eq!(result.verdict, Verdict::Valid);
        let result = check_server_logs(&[clean, crashed]);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(result.anomalies[0].starts_with("n1.log: panic:"));
    }
}
