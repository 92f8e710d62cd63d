//! The watch workload's watchers and compactor (its writers are ordinary client threads, see
//! `workload`).
//!
//! Each watcher task keeps one *logical watcher* at a time: an ordered log of events under
//! [`WATCH_PREFIX`] that must be a gap-free, duplicate-free slice of the store's history
//! (`checker::watch`). A logical watcher is carried by one stream at a time (a *session*, one
//! prefix watch with `prev_kv`); when a stream breaks (error, member killed, idle for
//! `--watch-idle-timeout-ms`, e.g. a paused or cut-off member) the watcher resumes from the
//! revision after the last one it has, half the time on another member, exactly as an etcd
//! client would. A watch canceled because its start revision was compacted resumes from the
//! reported `compact_revision` (the events in between are gone; the checker excuses them).
//!
//! Tasks `0..members` start at once from revision 1 and keep their watcher for the whole run, so
//! the history is covered from its start; the others start at random times from a random
//! revision (now, 1, a random past one or a near-future one) and cancel their watcher after a
//! random lifetime to start a fresh one. Half the tasks ask for clientv3's `WithRequireLeader`.
//!
//! After the run, [`Watchers::finish`] tells every watcher the final revision; each stops once
//! it has every event up to it, or at the deadline (the checker then reports it).
//!
//! Everything a watcher receives is recorded, in order, as [`WatchRecord`]s of its
//! [`Actor::Watcher`]. Nothing here judges what it receives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::WatchCreateRequest;
use cairn_proto::mvccpb;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{prefix_end, EtcdClient, WatchStream};
use crate::history::{
    Actor, Call, EventKind, EventType, ProcessId, Recorder, WatchRecord, WatchedEvent,
};
use crate::workload::{self, kv_of, Generator, ReadMode, WATCH_PREFIX};

/// Revisions the compactor stays behind the highest acknowledged revision, by default: far
/// enough that a watcher resuming after a fault usually still finds its next revision, close
/// enough that watchers starting at old revisions meet compaction.
pub const COMPACT_LAG_REVISIONS_DEFAULT: i64 = 300;

/// Pause after a failed attempt to open a stream, before the next one.
const REOPEN_BACKOFF: Duration = Duration::from_millis(100);

/// Lifetime of a logical watcher of a restarting task, seconds (uniform).
const LIFETIME_S: std::ops::Range<f64> = 1.0..6.0;

/// Revisions ahead of the highest acknowledged one that a future-start watcher asks for, at most.
const FUTURE_START_REVISIONS_MAX: i64 = 20;

/// How the watchers are run.
#[derive(Clone, Debug)]
pub struct WatchersSpec {
    /// Each member's client URL.
    pub urls: Vec<String>,
    /// Watcher tasks per member.
    pub per_member: usize,
    /// Deadline of opening a stream (connect and first answer).
    pub open_timeout: Duration,
    /// A stream with no response for this long is treated as broken.
    pub idle_timeout: Duration,
    /// Until when new watchers start and old ones restart.
    pub end: Instant,
    pub seed: u64,
}

/// When watchers stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    /// Keep watching.
    Running,
    /// Stop once every event up to `revision` has arrived, or at `deadline`.
    CatchUp { revision: i64, deadline: Instant },
    /// Stop now (there is no final revision to reach).
    Now,
}

/// The running watcher tasks.
pub struct Watchers {
    tasks: JoinSet<()>,
    finish: tokio::sync::watch::Sender<Finish>,
}

impl Watchers {
    /// Starts `per_member` watcher tasks per member.
    pub fn start(spec: WatchersSpec, generator: Arc<Generator>, recorder: Recorder) -> Watchers {
        let (finish, _) = tokio::sync::watch::channel(Finish::Running);
        let ids = Arc::new(AtomicU64::new(0));
        let spec = Arc::new(spec);
        let mut tasks = JoinSet::new();
        for task in 0..spec.urls.len() * spec.per_member {
            tasks.spawn(watcher_task(
                task,
                spec.clone(),
                generator.clone(),
                recorder.clone(),
                ids.clone(),
                finish.subscribe(),
            ));
        }
        Watchers { tasks, finish }
    }

    /// Tells every watcher to stop once it has every event up to `revision` (or at once if
    /// `None`), at the latest at `deadline`, and waits for all of them.
    pub async fn finish(mut self, revision: Option<i64>, deadline: Instant) -> anyhow::Result<()> {
        self.finish.send_replace(match revision {
            Some(revision) => Finish::CatchUp { revision, deadline },
            None => Finish::Now,
        });
        while let Some(joined) = self.tasks.join_next().await {
            joined.map_err(|e| anyhow::anyhow!("watcher task panicked: {e}"))?;
        }
        Ok(())
    }
}

/// A logical watcher's progress: it has every event up to `revision`, and resumes at
/// `revision + 1`.
struct Position {
    /// `None` only for a watch from "now" (start 0) until its created response tells where now
    /// was; `start - 1` for a watch from `start`.
    revision: Option<i64>,
}

impl Position {
    fn new(start: i64) -> Position {
        Position {
            revision: (start > 0).then_some(start - 1),
        }
    }

    fn next_start(&self) -> i64 {
        self.revision.map_or(0, |r| r + 1)
    }

    fn reached(&self, target: i64) -> bool {
        self.revision.is_some_and(|r| r >= target)
    }

    fn advance(&mut self, revision: i64) {
        self.revision = Some(self.revision.map_or(revision, |r| r.max(revision)));
    }
}

/// Why a session ended.
enum SessionEnd {
    /// Open another session for the same logical watcher.
    Resume,
    /// The logical watcher is done (lifetime over, or the run is).
    Stop,
}

async fn watcher_task(
    task: usize,
    spec: Arc<WatchersSpec>,
    generator: Arc<Generator>,
    recorder: Recorder,
    ids: Arc<AtomicU64>,
    mut finish: tokio::sync::watch::Receiver<Finish>,
) {
    let members = spec.urls.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed ^ 0x5741_7463 ^ task as u64);
    let home = task % members;
    let long_lived = task < members;
    let require_leader = task % 2 == 1;
    if !long_lived {
        let run_left = spec.end.saturating_duration_since(Instant::now());
        let delay = run_left.mul_f64(rng.random_range(0.0..0.25));
        tokio::time::sleep(delay).await;
    }
    let mut first = true;
    loop {
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let actor = Actor::Watcher(id);
        let start = if long_lived && first {
            1
        } else {
            choose_start(generator.max_revision(), &mut rng)
        };
        first = false;
        let lifetime_end = (!long_lived)
            .then(|| Instant::now() + Duration::from_secs_f64(rng.random_range(LIFETIME_S)));
        let mut position = Position::new(start);
        let mut node = home;
        loop {
            if should_stop(&finish, &position) {
                recorder.record(actor, Some(node), watch(WatchRecord::Stop));
                return;
            }
            let session = Session {
                actor,
                node,
                url: &spec.urls[node],
                require_leader,
                spec: &spec,
                recorder: &recorder,
                lifetime_end,
            };
            match session.run(&mut position, &mut finish).await {
                SessionEnd::Resume => {
                    if rng.random_bool(0.5) {
                        node = rng.random_range(0..members);
                    }
                }
                SessionEnd::Stop => break,
            }
        }
        recorder.record(actor, Some(node), watch(WatchRecord::Stop));
        if *finish.borrow() != Finish::Running {
            return;
        }
    }
}

/// A new restarting watcher's start revision: now (20 %), the beginning (20 %), a random past
/// revision (45 %) or a near-future one (15 %).
fn choose_start(max_revision: i64, rng: &mut impl Rng) -> i64 {
    match rng.random_range(0..20) {
        0..=3 => 0,
        4..=7 => 1,
        8..=16 => rng.random_range(1..=max_revision.max(1)),
        _ => max_revision + rng.random_range(1..=FUTURE_START_REVISIONS_MAX),
    }
}

/// Whether the logical watcher must stop now: it reached the final revision, or the final
/// deadline passed, or the run has no final revision.
fn should_stop(finish: &tokio::sync::watch::Receiver<Finish>, position: &Position) -> bool {
    match *finish.borrow() {
        Finish::Running => false,
        Finish::CatchUp { revision, deadline } => {
            position.reached(revision) || Instant::now() >= deadline
        }
        Finish::Now => true,
    }
}

fn watch(record: WatchRecord) -> EventKind {
    EventKind::Watch { record }
}

/// One stream of one logical watcher.
struct Session<'a> {
    actor: Actor,
    node: usize,
    url: &'a str,
    require_leader: bool,
    spec: &'a WatchersSpec,
    recorder: &'a Recorder,
    /// When a restarting watcher cancels itself (if the run is still going).
    lifetime_end: Option<Instant>,
}

impl Session<'_> {
    fn record(&self, record: WatchRecord) {
        self.recorder
            .record(self.actor, Some(self.node), watch(record));
    }

    async fn run(
        &self,
        position: &mut Position,
        finish: &mut tokio::sync::watch::Receiver<Finish>,
    ) -> SessionEnd {
        let start_revision = position.next_start();
        let create = WatchCreateRequest {
            key: WATCH_PREFIX.as_bytes().to_vec().into(),
            range_end: prefix_end(WATCH_PREFIX.as_bytes()).into(),
            start_revision,
            prev_kv: true,
            ..Default::default()
        };
        self.record(WatchRecord::Open {
            start_revision,
            require_leader: self.require_leader,
        });
        let mut stream = match WatchStream::open(
            self.url,
            create,
            self.require_leader,
            self.spec.open_timeout,
        )
        .await
        {
            Ok(stream) => stream,
            Err(e) => {
                self.record(WatchRecord::Broken {
                    error: e.to_string(),
                });
                tokio::time::sleep(REOPEN_BACKOFF).await;
                return SessionEnd::Resume;
            }
        };
        let mut watch_id = None;
        let mut canceling = false;
        loop {
            if should_stop(finish, position) {
                return SessionEnd::Stop;
            }
            // When to look up from the stream: a restarting watcher's end of life, or the final
            // deadline.
            let wake_at = match (*finish.borrow(), self.lifetime_end) {
                (Finish::Running, Some(at)) if !canceling => Some(at),
                (Finish::CatchUp { deadline, .. }, _) => Some(deadline),
                _ => None,
            };
            // Far enough never to fire within a run.
            let wake_at = wake_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            let response = tokio::select! {
                response = stream.next(self.spec.idle_timeout) => response,
                _ = finish.changed() => continue,
                _ = tokio::time::sleep_until(wake_at) => {
                    if *finish.borrow() != Finish::Running {
                        continue;
                    }
                    // A voluntary restart: cancel and wait for the canceled response (events
                    // may still arrive before it).
                    match watch_id {
                        Some(id) if stream.cancel(id).is_ok() => {
                            self.record(WatchRecord::Cancel);
                            canceling = true;
                            continue;
                        }
                        _ => return SessionEnd::Stop,
                    }
                }
            };
            let response = match response {
                Ok(response) => response,
                Err(e) => {
                    self.record(WatchRecord::Broken {
                        error: e.to_string(),
                    });
                    return if canceling {
                        SessionEnd::Stop
                    } else {
                        SessionEnd::Resume
                    };
                }
            };
            let revision = response.header.as_ref().map_or(0, |h| h.revision);
            if response.created {
                watch_id = Some(response.watch_id);
                self.record(WatchRecord::Created { revision });
                if position.revision.is_none() {
                    position.advance(revision);
                }
            }
            if !response.events.is_empty() {
                let events: Vec<WatchedEvent> = response.events.iter().map(event_of).collect();
                let last = events.last().map_or(0, WatchedEvent::revision);
                self.record(WatchRecord::Events { revision, events });
                position.advance(last);
            } else if !response.created && !response.canceled {
                self.record(WatchRecord::Progress { revision });
            }
            if response.canceled {
                self.record(WatchRecord::Canceled {
                    compact_revision: response.compact_revision,
                    reason: response.cancel_reason.clone(),
                });
                if response.compact_revision > 0 {
                    // Resume at the oldest revision left.
                    position.advance(response.compact_revision - 1);
                    return SessionEnd::Resume;
                }
                return if canceling {
                    SessionEnd::Stop
                } else {
                    SessionEnd::Resume
                };
            }
        }
    }
}

fn event_of(event: &mvccpb::Event) -> WatchedEvent {
    let kind = if event.r#type == mvccpb::event::EventType::Delete as i32 {
        EventType::Delete
    } else {
        EventType::Put
    };
    WatchedEvent {
        kind,
        kv: event
            .kv
            .as_ref()
            .map(kv_of)
            .unwrap_or_else(|| kv_of(&Default::default())),
        prev_kv: event.prev_kv.as_ref().map(kv_of),
    }
}

/// Which revisions the compactor may compact at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CompactAt {
    /// Only revisions of acknowledged puts. etcd 3.4.23 drops a delete's tombstone when
    /// compacting at exactly its revision, so a watcher resuming at that `compact_revision`
    /// never receives the delete (etcd-io/etcd#18089, fixed upstream by #18274, backported to
    /// 3.4 and 3.5 in August 2024). Compacting elsewhere keeps the other guarantees testable on
    /// etcd 3.4.23.
    Put,
    /// Any revision (exposes etcd#18089).
    Any,
}

/// When and where the compactor compacts.
#[derive(Clone, Copy, Debug)]
pub struct CompactorSpec {
    pub interval: Duration,
    /// Revisions behind the highest acknowledged revision.
    pub lag_revisions: i64,
    pub at: CompactAt,
}

/// Compacts every `spec.interval` (±20 %) until `end`, about `spec.lag_revisions` behind the
/// highest acknowledged revision (at a put's revision with [`CompactAt::Put`]), on a random
/// member. Each compaction is a client op of its own process (`first_process`, then the next
/// after an indeterminate one).
#[allow(clippy::too_many_arguments)]
pub async fn compactor(
    urls: Vec<String>,
    spec: CompactorSpec,
    timeout: Duration,
    generator: Arc<Generator>,
    recorder: Recorder,
    first_process: ProcessId,
    end: Instant,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xC0_4BAC);
    let mut process = first_process;
    let mut compacted = 0;
    // The latest put revision at each tick, oldest first.
    let mut put_revisions: std::collections::VecDeque<i64> = Default::default();
    loop {
        let delay = spec.interval.mul_f64(rng.random_range(0.8..1.2));
        tokio::time::sleep_until(end.min(Instant::now() + delay)).await;
        if Instant::now() >= end {
            return Ok(());
        }
        let horizon = generator.max_revision() - spec.lag_revisions;
        put_revisions.push_back(generator.max_put_revision());
        let revision = match spec.at {
            CompactAt::Any => horizon,
            CompactAt::Put => {
                let mut chosen = 0;
                while put_revisions.front().is_some_and(|&r| r <= horizon) {
                    chosen = put_revisions.pop_front().expect("front exists");
                }
                chosen
            }
        };
        if revision <= compacted {
            continue;
        }
        let node = rng.random_range(0..urls.len());
        let mut client = EtcdClient::new(&urls[node], timeout)?;
        let call = Call::Compact { revision };
        let actor = Actor::Client(process);
        recorder.record(actor, Some(node), EventKind::Invoke { call: call.clone() });
        let completion = workload::invoke(&mut client, &call, ReadMode::Linearizable).await;
        match completion {
            EventKind::Ok { .. } => compacted = revision,
            EventKind::Info { .. } => process += 1,
            _ => {}
        }
        recorder.record(actor, Some(node), completion);
    }
}
