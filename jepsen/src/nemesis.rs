//! The nemesis: a schedule of faults against the cluster, Jepsen style. Every interval (±20 %
//! jitter) it takes the next enabled fault class (each class once per cycle, in a fresh random
//! order per cycle), starts it against its targets (see [`Fault`]),
//! holds it for one interval, and undoes it (compaction, leader transfer and defragmentation are
//! instantaneous: nothing to undo). It records a `nemesis` event in the history at every start
//! and stop, saying exactly what was done.
//!
//! It owns the [`Cluster`] for the duration of the run and hands it back when done, so the
//! runner can heal it; nothing else signals members meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::admin::AdminClient;
use crate::client::EtcdClient;
use crate::cluster::{Cluster, MemberState};
use crate::history::{Actor, Call, EventKind, Recorder};
use crate::proxy::{Blocked, Link, LinkFault};
use crate::shim::ShimConfig;
use crate::workload::{self, ReadMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL members (the leader, one, a minority or all), restart them with the same data
    /// when the fault stops.
    Kill,
    /// SIGSTOP members (the leader, one, a minority or all), SIGCONT them when the fault stops.
    Pause,
    /// Isolate the leader, split the members into a random majority and minority, or (with 5
    /// members) a majorities ring.
    Partition,
    /// One-way partitions: the leader's messages to everyone are lost (it still hears them),
    /// everyone's messages to the leader are lost, or one member's to some others.
    PartitionOneWay,
    /// Slow links: 20–200 ms of latency plus up to half as much jitter, on every link or on
    /// one member's links (both directions).
    Slow,
    /// Flaky links: each chunk has a 2–10 % chance to drop the connection, plus up to 20 ms
    /// of jitter, on every link or on one member's links.
    Flaky,
    /// Compact the history at a revision 0–50 behind the current one (recorded in the history
    /// as a client's `compact`, so the watch checker knows it was requested).
    Compact,
    /// Move the leadership to another member (MoveLeader, sent to the leader).
    TransferLeader,
    /// Defragment one member, or every member in turn.
    Defrag,
    /// Remove a member (MemberRemove), kill it and wipe its data directory; when the fault
    /// stops, add it back as a new member (MemberAdd, a new id) and start it empty with
    /// `--initial-cluster-state=existing`.
    MemberReplace,
    /// Restart a member (the leader or a random one) with a skewed, drifting clock: its wall
    /// clock 1 s–10 min ahead or behind, and half the time every clock running 1–5 % fast or
    /// slow; restart it with the real clock when the fault stops. Through the LD_PRELOAD shim,
    /// so Cairn only (etcd's Go runtime bypasses libc's clocks).
    ClockSkew,
    /// Restart a member with the LD_PRELOAD shim, make its fsyncs fail, and check that it
    /// exits by itself within 10 s (fail-stop; a member that keeps running after a failed fsync
    /// is an anomaly); restart it with working fsyncs when the fault stops. Cairn only, as
    /// `clock-skew`.
    FsyncFail,
    /// SIGKILL members (every member 40 %, a majority 30 %, the leader or one member 30 %) and
    /// play a crash that loses their page cache: every file each wrote is cut back to what it had
    /// synced (the shim's journal, see `shim.rs`); restart them when the fault stops. With it in
    /// the schedule, every member runs under the shim. Cairn only, as `clock-skew`: on etcd it
    /// is a plain kill, and says so.
    LoseUnsynced,
}

/// A fault in progress, with what is needed to undo it.
#[derive(Debug)]
enum Active {
    Killed(Vec<usize>),
    Paused(Vec<usize>),
    Partitioned(String),
    Degraded(String),
    Removed(usize),
    /// Members restarted with the shim: to restart without it (`crashed`: the log of the run
    /// that crashed on purpose is set aside first).
    Shimmed {
        member: usize,
        crashed: bool,
    },
    /// An instantaneous fault: nothing to undo.
    Done,
}

/// Members `0..n` split into a minority (first) and a majority, at random.
fn majority_split(n: usize, rng: &mut impl Rng) -> Vec<Vec<usize>> {
    let mut members: Vec<usize> = (0..n).collect();
    members.shuffle(rng);
    let majority = members.split_off(n / 2);
    vec![members, majority]
}

/// Jepsen's majorities ring: members in a random ring, each talks only to its two neighbours,
/// so with 5 members each sees a majority (itself and its neighbours) but no two see the same.
fn majorities_ring(n: usize, rng: &mut impl Rng) -> (Blocked, String) {
    let mut ring: Vec<usize> = (0..n).collect();
    ring.shuffle(rng);
    let mut blocked = Blocked::new();
    for i in 0..n {
        for j in i + 1..n {
            let distance = (j - i).min(n - (j - i));
            if distance > 1 {
                let (a, b) = (ring[i], ring[j]);
                blocked.insert((a.min(b), a.max(b)));
            }
        }
    }
    let text = ring
        .iter()
        .map(|m| format!("n{m}"))
        .collect::<Vec<_>>()
        .join("-");
    (blocked, format!("ring {text}"))
}

/// A one-way partition: the leader mute (its messages to everyone lost), the leader deaf
/// (everyone's messages to it lost), or one random member's messages to a random non-empty
/// set of others lost. Without a known leader, the last.
fn one_way(leader: Option<usize>, n: usize, rng: &mut impl Rng) -> BTreeSet<Link> {
    let choice = rng.random_range(0..3);
    match (choice, leader) {
        (0, Some(leader)) => (0..n)
            .filter(|&m| m != leader)
            .map(|m| (leader, m))
            .collect(),
        (1, Some(leader)) => (0..n)
            .filter(|&m| m != leader)
            .map(|m| (m, leader))
            .collect(),
        _ => {
            let from = rng.random_range(0..n);
            let mut others: Vec<usize> = (0..n).filter(|&m| m != from).collect();
            others.shuffle(rng);
            others.truncate(rng.random_range(1..n));
            others.into_iter().map(|to| (from, to)).collect()
        }
    }
}

/// `a->b,c; d->e` for directed links.
fn describe_links(links: &BTreeSet<Link>) -> String {
    let mut by_source: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(from, to) in links {
        by_source.entry(from).or_default().push(to);
    }
    by_source
        .iter()
        .map(|(from, to)| format!("n{from}->{}", names(to)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every directed link (half the time), or both directions of one random member's links.
fn degraded_links(n: usize, rng: &mut impl Rng) -> (Vec<Link>, String) {
    let all = (0..n).flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)));
    if rng.random_bool(0.5) {
        (all.collect(), "all links".into())
    } else {
        let member = rng.random_range(0..n);
        let links = all.filter(|&(a, b)| a == member || b == member).collect();
        (links, format!("n{member}'s links"))
    }
}

/// A slow-link fault: fixed latency of 20–200 ms plus jitter of up to half of it.
fn slow_fault(rng: &mut impl Rng) -> LinkFault {
    let delay = Duration::from_millis(rng.random_range(20..=200));
    LinkFault {
        delay,
        jitter: delay / 2,
        reset_probability: 0.0,
    }
}

/// A flaky-link fault: a 2–10 % chance per chunk of dropping the connection, up to 20 ms of
/// jitter.
fn flaky_fault(rng: &mut impl Rng) -> LinkFault {
    LinkFault {
        delay: Duration::ZERO,
        jitter: Duration::from_millis(20),
        reset_probability: rng.random_range(0.02..0.10),
    }
}

/// Deadline of the nemesis's own requests (compaction, MoveLeader, Defragment).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The nemesis's compactions are recorded as operations of fresh client processes numbered
/// from here, far above the workloads' processes.
const COMPACT_PROCESS_BASE: u64 = 1 << 48;

/// Revisions behind the current one that the `compact` fault compacts at, at most.
const COMPACT_LAG_REVISIONS_MAX: i64 = 50;

/// The `compact` fault: reads the current revision on a random running member, compacts a few
/// revisions behind it, and records the compaction as a client operation.
async fn compact(
    cluster: &Cluster,
    rng: &mut impl Rng,
    recorder: &Recorder,
    process: u64,
) -> anyhow::Result<String> {
    let node = rng.random_range(0..cluster.size());
    let mut client = EtcdClient::new(&cluster.client_url(node), ADMIN_TIMEOUT)?;
    let current = match client.get("cairn-jepsen/health", false).await {
        Ok(got) => got.revision,
        Err(e) => return Ok(format!("compact: no revision from n{node} ({e})")),
    };
    let revision = (current - rng.random_range(0..=COMPACT_LAG_REVISIONS_MAX)).max(1);
    let call = Call::Compact { revision };
    let actor = Actor::Client(COMPACT_PROCESS_BASE + process);
    recorder.record(actor, Some(node), EventKind::Invoke { call: call.clone() });
    let completion = workload::invoke(&mut client, &call, ReadMode::Linearizable).await;
    let outcome = match &completion {
        EventKind::Ok { .. } => "ok".to_string(),
        EventKind::Fail { error } | EventKind::Info { error } => error.clone(),
        other => format!("{other:?}"),
    };
    recorder.record(actor, Some(node), completion);
    Ok(format!(
        "compact at {revision} on n{node} (head {current}): {outcome}"
    ))
}

/// The `transfer-leader` fault: MoveLeader from the leader to another random member.
async fn transfer_leader(
    cluster: &Cluster,
    leader: Option<usize>,
    rng: &mut impl Rng,
) -> anyhow::Result<String> {
    let Some(leader) = leader else {
        return Ok("transfer-leader: no leader known".into());
    };
    let others: Vec<usize> = (0..cluster.size()).filter(|&m| m != leader).collect();
    let target = *others.choose(rng).expect("a cluster has 3 or 5 members");
    let mut admin = AdminClient::new(&cluster.client_url(leader), ADMIN_TIMEOUT)?;
    let outcome = match admin.move_leader(cluster.member_id(target)).await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    Ok(format!("transfer-leader n{leader} -> n{target}: {outcome}"))
}

/// The `defrag` fault: defragments one random member (75 %) or every member in turn.
async fn defrag(cluster: &Cluster, rng: &mut impl Rng) -> anyhow::Result<String> {
    let n = cluster.size();
    let members: Vec<usize> = if rng.random_bool(0.75) {
        vec![rng.random_range(0..n)]
    } else {
        (0..n).collect()
    };
    let mut outcomes = Vec::new();
    for &m in &members {
        let mut admin = AdminClient::new(&cluster.client_url(m), ADMIN_TIMEOUT)?;
        outcomes.push(match admin.defragment().await {
            Ok(()) => format!("n{m} ok"),
            Err(e) => format!("n{m} {e:#}"),
        });
    }
    Ok(format!("defrag {}", outcomes.join(", ")))
}

/// How long a member whose fsyncs fail may keep running.
const FAIL_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a member restarted with the shim may take to serve before its fsyncs are failed.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Nemesis actions that start with this make the `faults` checker report an anomaly.
pub const ANOMALY_PREFIX: &str = "anomaly: ";

/// A skewed clock: the wall clock 1 s–10 min ahead or behind, and half the time every clock
/// 1–5 % fast or slow.
fn clock_skew(rng: &mut impl Rng) -> ShimConfig {
    let offset_ms = rng.random_range(1_000..=600_000) * if rng.random_bool(0.5) { 1 } else { -1 };
    let clock_rate = if rng.random_bool(0.5) {
        1.0
    } else {
        let drift = rng.random_range(0.01..=0.05);
        if rng.random_bool(0.5) {
            1.0 + drift
        } else {
            1.0 - drift
        }
    };
    ShimConfig {
        clock_offset_ms: offset_ms,
        clock_rate,
        ..ShimConfig::default()
    }
}

/// The leader 40 % of the time (when known), else a random member.
fn one_target(leader: Option<usize>, n: usize, rng: &mut impl Rng) -> usize {
    match leader {
        Some(leader) if rng.random_bool(0.4) => leader,
        _ => rng.random_range(0..n),
    }
}

/// Restarts member `i` with `config` preloaded.
async fn restart_with_shim(
    cluster: &mut Cluster,
    i: usize,
    config: Option<ShimConfig>,
) -> anyhow::Result<()> {
    if cluster.state(i) != MemberState::Killed {
        cluster.kill(i).await?;
    }
    cluster.set_shim(i, config)?;
    cluster.restart(i)
}

/// The `fsync-fail` fault on member `i`: restarts it with the shim, waits until it serves,
/// fails its fsyncs and waits for it to exit. Returns whether it crashed, and what to record.
async fn fsync_fail(cluster: &mut Cluster, i: usize) -> anyhow::Result<(bool, String)> {
    let (fail, tripped) = cluster.fsync_files(i);
    // An earlier round on this member may have left its note behind.
    match std::fs::remove_file(&tripped) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    restart_with_shim(
        cluster,
        i,
        Some(ShimConfig {
            fsync_fail_file: Some(fail.clone()),
            fsync_tripped_file: Some(tripped.clone()),
            ..ShimConfig::default()
        }),
    )
    .await?;
    if let Err(e) = cluster.wait_member_healthy(i, SHIM_START_TIMEOUT).await {
        return Ok((
            false,
            format!("fsync-fail n{i}: not serving before the fault ({e:#})"),
        ));
    }
    std::fs::write(&fail, b"")?;
    let exited = cluster.wait_exited(i, FAIL_STOP_TIMEOUT).await?;
    std::fs::remove_file(&fail)?;
    Ok(match (exited, tripped.exists()) {
        (Some(how), _) => {
            let line = |pattern: &str| how.lines().find(|l| l.contains(pattern));
            let why = line("fail-stop")
                .or_else(|| line("fsync"))
                .or_else(|| line("panicked"))
                .unwrap_or_else(|| how.lines().next().unwrap_or_default());
            (true, format!("fsync-fail n{i}: exited by itself after failing fsyncs: {why}"))
        }
        (None, true) => (
            false,
            format!(
                "{ANOMALY_PREFIX}fsync-fail n{i}: still running {FAIL_STOP_TIMEOUT:?} after an fsync failed"
            ),
        ),
        (None, false) => (
            false,
            format!(
                "fsync-fail n{i}: no fsync went through the shim in {FAIL_STOP_TIMEOUT:?} (a Go binary, or no writes)"
            ),
        ),
    })
}

/// Whom `lose-unsynced` hits: every member (40 %), a random majority (30 %), or the leader or
/// one member (30 %). Losing a majority's page cache at once is what finds acknowledged writes
/// that were never synced.
fn crash_targets(leader: Option<usize>, n: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut members: Vec<usize> = (0..n).collect();
    match rng.random_range(0..10) {
        0..=3 => members,
        4..=6 => {
            members.shuffle(rng);
            members.truncate(n / 2 + 1);
            members.sort_unstable();
            members
        }
        _ => vec![one_target(leader, n, rng)],
    }
}

/// The `lose-unsynced` fault on `members`: kills them all, then cuts each one's files back to
/// what it had synced. Returns what to record.
async fn lose_unsynced(cluster: &mut Cluster, members: &[usize]) -> anyhow::Result<String> {
    for &m in members {
        cluster.kill(m).await?;
    }
    let mut outcomes = Vec::with_capacity(members.len());
    for &m in members {
        let loss = cluster.lose_unsynced(m)?;
        outcomes.push(if loss.journaled == 0 {
            format!("n{m} killed, no sync went through the shim (a Go binary)")
        } else {
            format!(
                "n{m} lost {} unsynced bytes in {} files",
                loss.bytes, loss.files
            )
        });
    }
    Ok(format!("lose-unsynced {}", outcomes.join(", ")))
}

/// Whom `kill` and `pause` hit: the leader (40 % when one is known), one random member (30 %),
/// a random minority (20 %), or every member (10 %).
fn targets(leader: Option<usize>, n: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut members: Vec<usize> = (0..n).collect();
    match (rng.random_range(0..10), leader) {
        (0..=3, Some(leader)) => vec![leader],
        (4..=5, _) => {
            members.shuffle(rng);
            members.truncate(n / 2);
            members.sort_unstable();
            members
        }
        (6, _) => members,
        _ => vec![rng.random_range(0..n)],
    }
}

fn names(members: &[usize]) -> String {
    members
        .iter()
        .map(|m| format!("n{m}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn describe(groups: &[Vec<usize>]) -> String {
    groups
        .iter()
        .map(|g| names(g))
        .collect::<Vec<_>>()
        .join(" | ")
}

async fn start(
    cluster: &mut Cluster,
    fault: Fault,
    rng: &mut impl Rng,
    recorder: &Recorder,
    round: u64,
) -> anyhow::Result<(Active, String)> {
    let leader = cluster.leader().await;
    let n = cluster.size();
    Ok(match fault {
        Fault::Kill => {
            let members = targets(leader, n, rng);
            for &m in &members {
                cluster.kill(m).await?;
            }
            let text = format!("kill {}", names(&members));
            (Active::Killed(members), text)
        }
        Fault::Pause => {
            let members = targets(leader, n, rng);
            for &m in &members {
                cluster.pause(m)?;
            }
            let text = format!("pause {}", names(&members));
            (Active::Paused(members), text)
        }
        Fault::Partition => {
            let choice = rng.random_range(0..if n >= 5 { 3 } else { 2 });
            let text = match (choice, leader) {
                (0, Some(leader)) => {
                    let groups = vec![vec![leader], (0..n).filter(|&m| m != leader).collect()];
                    cluster.network().partition(&groups);
                    describe(&groups)
                }
                (2, _) => {
                    let (blocked, text) = majorities_ring(n, rng);
                    cluster.network().block(blocked);
                    text
                }
                _ => {
                    let groups = majority_split(n, rng);
                    cluster.network().partition(&groups);
                    describe(&groups)
                }
            };
            (
                Active::Partitioned(text.clone()),
                format!("partition {text}"),
            )
        }
        Fault::PartitionOneWay => {
            let links = one_way(leader, n, rng);
            let text = format!("one-way {}", describe_links(&links));
            cluster.network().stall(links);
            (
                Active::Partitioned(text.clone()),
                format!("partition {text}"),
            )
        }
        Fault::Slow | Fault::Flaky => {
            let (links, whose) = degraded_links(n, rng);
            let fault = if fault == Fault::Slow {
                slow_fault(rng)
            } else {
                flaky_fault(rng)
            };
            let text = format!(
                "{} {whose}: delay {:?} jitter {:?} reset probability {:.3}",
                if fault.reset_probability > 0.0 {
                    "flaky"
                } else {
                    "slow"
                },
                fault.delay,
                fault.jitter,
                fault.reset_probability
            );
            cluster
                .network()
                .degrade(links.into_iter().map(|link| (link, fault)).collect());
            (Active::Degraded(text.clone()), text)
        }
        Fault::Compact => (Active::Done, compact(cluster, rng, recorder, round).await?),
        Fault::TransferLeader => (Active::Done, transfer_leader(cluster, leader, rng).await?),
        Fault::Defrag => (Active::Done, defrag(cluster, rng).await?),
        Fault::MemberReplace => {
            let member = match leader {
                Some(leader) if rng.random_bool(0.3) => leader,
                _ => rng.random_range(0..n),
            };
            let id = cluster.remove(member).await?;

            (
                Active::Removed(member),
                format!("member-replace: removed n{member} (id {id:x}), data wiped"),
            )
        }
        Fault::ClockSkew => {
            let member = one_target(leader, n, rng);
            let skew = clock_skew(rng);
            let text = format!(
                "clock-skew n{member}: wall clock {:+} ms, clocks at {:.3}x",
                skew.clock_offset_ms, skew.clock_rate
            );
            restart_with_shim(cluster, member, Some(skew)).await?;
            (
                Active::Shimmed {
                    member,
                    crashed: false,
                },
                text,
            )
        }
        Fault::FsyncFail => {
            let member = one_target(leader, n, rng);
            let (crashed, text) = fsync_fail(cluster, member).await?;
            (Active::Shimmed { member, crashed }, text)
        }
        Fault::LoseUnsynced => {
            let members = crash_targets(leader, n, rng);
            let text = lose_unsynced(cluster, &members).await?;
            (Active::Killed(members), text)
        }
    })
}

/// Undoes `active`; the text to record, if there was anything to undo.
async fn stop(cluster: &mut Cluster, active: Active, round: u64) -> anyhow::Result<Option<String>> {
    Ok(Some(match active {
        Active::Killed(members) => {
            for &m in &members {
                cluster.restart(m)?;
            }
            format!("restart {}", names(&members))
        }
        Active::Paused(members) => {
            for &m in &members {
                cluster.resume(m)?;
            }
            format!("resume {}", names(&members))
        }
        Active::Partitioned(text) => {
            cluster.network().heal();
            format!("heal partition {text}")
        }
        Active::Degraded(text) => {
            cluster.network().heal();
            format!("heal {text}")
        }
        Active::Removed(member) => {
            let id = cluster.rejoin(member).await?;
            format!("member-replace: added n{member} back as a new member (id {id:x})")
        }
        Active::Shimmed { member, crashed } => {
            if crashed {
                cluster.set_log_aside(member, &format!("fsync-fail-{round}"))?;
            }
            restart_with_shim(cluster, member, None).await?;
            format!("restart n{member} without the shim")
        }
        Active::Done => return Ok(None),
    }))
}

/// The next fault class: the enabled classes are dealt in a fresh random order each cycle, so
/// every one fires once before any fires twice (a short run with several classes still sees
/// them all, and no class starves).
fn next_fault(deck: &mut Vec<Fault>, faults: &[Fault], rng: &mut impl Rng) -> Fault {
    if deck.is_empty() {
        deck.extend_from_slice(faults);
        deck.shuffle(rng);
    }
    deck.pop().expect("faults is not empty")
}

/// Runs the schedule until `end`, leaving no fault active, and returns the cluster.
pub async fn run(
    mut cluster: Cluster,
    faults: Vec<Fault>,
    interval: Duration,
    end: Instant,
    mut rng: impl Rng + Send,
    recorder: Recorder,
) -> (Cluster, anyhow::Result<()>) {
    let note = |action: String| {
        recorder.record(Actor::Nemesis, None, EventKind::Nemesis { action });
    };
    if faults.is_empty() {
        tokio::time::sleep_until(end).await;
        return (cluster, Ok(()));
    }
    let jittered = |rng: &mut dyn rand::RngCore| interval.mul_f64(rng.random_range(0.8..1.2));
    let mut deck = Vec::new();
    let mut round = 0;
    loop {
        round += 1;
        tokio::time::sleep_until(end.min(Instant::now() + jittered(&mut rng))).await;
        if Instant::now() >= end {
            return (cluster, Ok(()));
        }
        let fault = next_fault(&mut deck, &faults, &mut rng);
        let active = match start(&mut cluster, fault, &mut rng, &recorder, round).await {
            Ok((active, text)) => {
                note(format!("start {text}"));
                active
            }
            Err(e) => return (cluster, Err(e.context(format!("starting {fault:?}")))),
        };
        tokio::time::sleep_until(end.min(Instant::now() + jittered(&mut rng))).await;
        match stop(&mut cluster, active, round).await {
            Ok(Some(text)) => note(format!("stop {text}")),
            Ok(None) => {}
            Err(e) => return (cluster, Err(e.context(format!("stopping {fault:?}")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn majority_splits_leave_a_strict_majority() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for n in [3, 5] {
            for _ in 0..20 {
                let groups = majority_split(n, &mut rng);
                assert_eq!(groups[0].len(), n / 2);
                assert_eq!(groups[1].len(), n - n / 2);
                let mut all: Vec<usize> = groups.concat();
                all.sort_unstable();
                assert_eq!(all, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn a_majorities_ring_gives_everyone_a_different_majority() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let (blocked, _) = majorities_ring(5, &mut rng);
        let sees = |m: usize| -> Vec<usize> {
            (0..5)
                .filter(|&o| !blocked.contains(&(m.min(o), m.max(o))))
                .collect()
        };
        let views: std::collections::BTreeSet<Vec<usize>> = (0..5).map(sees).collect();
        assert_eq!(views.len(), 5, "{blocked:?}");
        assert!(views.iter().all(|v| v.len() == 3), "{views:?}");
    }

    #[test]
    fn targets_cover_leader_one_minority_and_all() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let picks: Vec<Vec<usize>> = (0..200).map(|_| targets(Some(2), 5, &mut rng)).collect();
        assert!(picks.iter().flatten().all(|&m| m < 5));
        assert!(picks.iter().any(|p| p == &vec![2]));
        assert!(picks.iter().any(|p| p.len() == 1 && p[0] != 2));
        assert!(picks.iter().any(|p| p.len() == 2));
        assert!(picks.iter().any(|p| p.len() == 5));
        assert!(picks.iter().all(|p| p.len() != 3 && p.len() != 4));
        assert_eq!(describe(&[vec![0], vec![1, 2]]), "n0 | n1,n2");
    }

    #[test]
    fn one_way_partitions_are_one_way() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut shapes = BTreeSet::new();
        for _ in 0..100 {
            let links = one_way(Some(1), 5, &mut rng);
            assert!(!links.is_empty());
            for &(a, b) in &links {
                assert!(a != b && a < 5 && b < 5);
                assert!(!links.contains(&(b, a)), "{links:?} is two-way");
            }
            let all_from_leader = links.iter().all(|&(a, _)| a == 1) && links.len() == 4;
            let all_to_leader = links.iter().all(|&(_, b)| b == 1) && links.len() == 4;
            shapes.insert((all_from_leader, all_to_leader));
        }
        assert_eq!(shapes.len(), 3, "mute, deaf and random shapes: {shapes:?}");
        let links = BTreeSet::from([(0, 1), (0, 2), (3, 4)]);
        assert_eq!(describe_links(&links), "n0->n1,n2; n3->n4");
    }

    #[test]
    fn degraded_links_cover_all_or_one_member_both_ways() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut sizes = BTreeSet::new();
        for _ in 0..50 {
            let (links, _) = degraded_links(3, &mut rng);
            sizes.insert(links.len());
            for &(a, b) in &links {
                assert!(links.contains(&(b, a)));
            }
        }
        assert_eq!(sizes, BTreeSet::from([4, 6]));
        for _ in 0..50 {
            let slow = slow_fault(&mut rng);
            assert!(slow.delay >= Duration::from_millis(20));
            assert!(slow.delay <= Duration::from_millis(200));
            assert_eq!(slow.jitter, slow.delay / 2);
            assert_eq!(slow.reset_probability, 0.0);
            let flaky = flaky_fault(&mut rng);
            assert!((0.02..0.10).contains(&flaky.reset_probability));
        }
    }

    #[test]
    fn clock_skews_stay_in_their_ranges_and_targets_include_the_leader() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut signs = BTreeSet::new();
        let mut drifting = 0;
        for _ in 0..200 {
            let skew = clock_skew(&mut rng);
            let offset = skew.clock_offset_ms.abs();
            assert!((1_000..=600_000).contains(&offset), "{skew:?}");
            signs.insert(skew.clock_offset_ms.signum());
            if skew.clock_rate != 1.0 {
                drifting += 1;
                let drift = (skew.clock_rate - 1.0).abs();
                assert!((0.01 - 1e-9..=0.05 + 1e-9).contains(&drift), "{skew:?}");
            }
            assert_eq!(skew.fsync_fail_file, None);
        }
        assert_eq!(signs, BTreeSet::from([-1, 1]));
        assert!((50..150).contains(&drifting), "{drifting} of 200 drift");
        let picks: BTreeSet<usize> = (0..100).map(|_| one_target(Some(4), 5, &mut rng)).collect();
        assert_eq!(picks, (0..5).collect());
        assert!((0..100).all(|_| one_target(None, 3, &mut rng) < 3));
    }

    #[test]
    fn crash_targets_are_all_a_majority_or_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let picks: Vec<Vec<usize>> = (0..200)
            .map(|_| crash_targets(Some(1), 5, &mut rng))
            .collect();
        assert!(picks.iter().flatten().all(|&m| m < 5));
        assert!(picks.iter().any(|p| p == &vec![1]));
        assert!(picks.iter().any(|p| p.len() == 1 && p[0] != 1));
        assert!(picks.iter().any(|p| p.len() == 3));
        assert!(picks.iter().any(|p| p.len() == 5));
        assert!(picks.iter().all(|p| matches!(p.len(), 1 | 3 | 5)));
    }

    #[test]
    fn every_enabled_fault_fires_once_per_cycle() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let faults = [
            Fault::Kill,
            Fault::Slow,
            Fault::Compact,
            Fault::MemberReplace,
        ];
        let mut deck = Vec::new();
        let mut orders = BTreeSet::new();
        for _ in 0..20 {
            let cycle: Vec<Fault> = (0..faults.len())
                .map(|_| next_fault(&mut deck, &faults, &mut rng))
                .collect();
            let mut sorted = cycle.clone();
            sorted.sort_by_key(|f| format!("{f:?}"));
            let mut expected = faults.to_vec();
            expected.sort_by_key(|f| format!("{f:?}"));
            assert_eq!(sorted, expected);
            orders.insert(format!("{cycle:?}"));
        }
        assert!(orders.len() > 1, "the order never changes");
    }
}
