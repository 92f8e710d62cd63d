//! etcd's watch guarantees (consistency-testing.md §6.3 `watch`; etcd-api.md §1.4), checked on
//! what every watcher of the watch workload received, against each other and against the
//! acknowledged writes.
//!
//! The workload is the cluster's only writer, and every etcd write that changes something takes
//! exactly one new revision, so the store's revisions after 1 are *dense*: each is one of the
//! workload's writes. A watcher that has every event up to revision P must therefore deliver
//! P + 1 next. The checks:
//!
//! - **Per watcher** (one logical log, across its sessions and members): the `created` response
//!   comes before any event of its session; revisions strictly increase; no revision is missing
//!   (**gap**), delivered twice (**duplicate**), or spread over two responses (**split**); a
//!   resumed session starts right after the last revision delivered; a session from revision S
//!   begins at S, one from "now" at most one past its created response's revision; every event
//!   is at or below its response's header revision. Cancellation for compaction is not a
//!   failure: the watcher reports `compact_revision` C, which must be a compaction that was
//!   requested and must be above the revision the watcher needed, and it resumes at C.
//! - **One canonical log**: every watcher that delivered revision R delivered the same events
//!   for it, in the same order.
//! - **The canonical log agrees with the writes**: an acknowledged write appears at exactly the
//!   revision its response reported, with exactly its events (all keys of a txn, every key a
//!   range delete removed); every event belongs to one write that was invoked and did not
//!   definitely fail; one revision holds one write.
//! - **Replay**: applying the canonical log in order, each event's key-value is consistent with
//!   the key's previous one (version, create revision) and each `prev_kv` (on every watcher's
//!   copy, and on the put's own response) equals the key's previous value, or is absent if the
//!   key was; a missing `prev_kv` is excused only where the previous revision may have been
//!   compacted (etcd leaves it out then). Where the replay starts at revision 1 and has no hole,
//!   its state at the final read's revision must equal what that read returned.
//! - **Catch-up**: after healing, every watcher still running must reach the final read's
//!   revision. Without a successful final read this is unchecked and the verdict is `unknown`.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{CheckResult, Verdict, ANOMALIES_REPORTED_MAX};
use crate::history::{
    Actor, Call, Event, EventKind, EventType, Kv, Op, Outcome, Reply, Value, WatchRecord,
    WatchedEvent,
};

/// One watcher's delivery of one revision.
struct Delivery {
    watcher: u64,
    events: Vec<WatchedEvent>,
    /// When the response arrived.
    time_ns: u64,
    /// The watcher had already asked to cancel this watch.
    after_cancel: bool,
}

/// A range of revisions a watcher skipped.
struct Gap {
    watcher: u64,
    from: i64,
    to: i64,
    /// The history index of the response that skipped them.
    index: u64,
    /// It begins at the `compact_revision` the watcher resumed from after a compaction cancel.
    at_compact_revision: bool,
}

/// Anomalies by kind, in order of discovery, and their counts.
#[derive(Default)]
struct Anomalies {
    notes: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
}

impl Anomalies {
    fn note(&mut self, kind: &'static str, text: String) {
        let count = self.counts.entry(kind).or_default();
        *count += 1;
        if *count <= ANOMALIES_REPORTED_MAX as u64 {
            self.notes.push(format!("{kind}: {text}"));
        }
    }
}

/// What reading the watchers' records produced: every delivery by revision, the gaps found,
/// and counters.
#[derive(Default)]
struct Logs {
    deliveries: BTreeMap<i64, Vec<Delivery>>,
    gaps: Vec<Gap>,
    anomalies: Anomalies,
    events: u64,
    sessions: u64,
    /// "watcher w needed n, compacted at c", one per compaction cancel.
    compacted_cancels: Vec<String>,
    excused_revisions: i64,
    server_cancels: u64,
}

impl Logs {
    /// This watcher's earlier delivery of revision `r`, if any.
    fn delivered(&mut self, watcher: u64, r: i64) -> Option<&mut Delivery> {
        self.deliveries
            .get_mut(&r)
            .and_then(|ds| ds.iter_mut().rev().find(|d| d.watcher == watcher))
    }
}

/// A watcher's state while its records are read.
struct WatcherState {
    id: u64,
    /// It has every event up to this revision; `None` while a watch from "now" waits for its
    /// created response.
    position: Option<i64>,
    /// The last revision it delivered, and that delivery's response index.
    last: Option<(i64, u64)>,
    session: Option<SessionState>,
    /// When it stopped, if it did.
    stopped_ns: Option<u64>,
    /// Sessions opened so far.
    sessions: u64,
    /// The `compact_revision` it resumed from, until its next delivery.
    compact_resume: Option<i64>,
}

struct SessionState {
    start_revision: i64,
    created: Option<i64>,
    events_seen: bool,
    cancel_requested: bool,
}

impl WatcherState {
    fn new(id: u64) -> WatcherState {
        WatcherState {
            id,
            position: None,
            last: None,
            session: None,
            stopped_ns: None,
            sessions: 0,
            compact_resume: None,
        }
    }

    /// Reads one record (event `index` at `time_ns`).
    fn read(
        &mut self,
        record: &WatchRecord,
        index: u64,
        time_ns: u64,
        writes: &Writes,
        logs: &mut Logs,
    ) {
        let id = self.id;
        if self.stopped_ns.is_some() {
            logs.anomalies.note(
                "harness",
                format!("watcher {id} has a record after it stopped (index {index})"),
            );
            return;
        }
        let in_session = self.session.is_some()
            || matches!(
                record,
                WatchRecord::Open { .. } | WatchRecord::Broken { .. } | WatchRecord::Stop
            );
        if !in_session {
            logs.anomalies.note(
                "harness",
                format!("watcher {id}: {record:?} outside a session (index {index})"),
            );
            return;
        }
        match record {
            WatchRecord::Open { start_revision, .. } => {
                self.open(*start_revision, index, logs);
            }
            WatchRecord::Created { revision } => self.created(*revision, index, logs),
            WatchRecord::Events { revision, events } => {
                self.events(*revision, events, index, time_ns, logs)
            }
            WatchRecord::Progress { revision } => self.progress(*revision, index, logs),
            WatchRecord::Cancel => {
                if let Some(session) = self.session.as_mut() {
                    session.cancel_requested = true;
                }
            }
            WatchRecord::Canceled {
                compact_revision, ..
            } => self.canceled(*compact_revision, index, writes, logs),
            WatchRecord::Broken { .. } => self.session = None,
            WatchRecord::Stop => {
                self.session = None;
                self.stopped_ns = Some(time_ns);
            }
        }
    }

    fn open(&mut self, start_revision: i64, index: u64, logs: &mut Logs) {
        let id = self.id;
        logs.sessions += 1;
        if self.session.is_some() {
            logs.anomalies.note(
                "harness",
                format!("watcher {id} opened a session at index {index} while one was open"),
            );
        }
        let expected = self.position.map_or(0, |p| p + 1);
        self.sessions += 1;
        if self.sessions == 1 {
            self.position = (start_revision > 0).then_some(start_revision - 1);
        } else if start_revision != expected {
            logs.anomalies.note(
                "harness",
                format!(
                    "watcher {id} resumed at {start_revision}, not at {expected} (index {index})"
                ),
            );
        }
        self.session = Some(SessionState {
            start_revision,
            created: None,
            events_seen: false,
            cancel_requested: false,
        });
    }

    fn created(&mut self, revision: i64, index: u64, logs: &mut Logs) {
        let id = self.id;
        let session = self.session.as_mut().expect("read checked the session");
        if session.created.is_some() {
            logs.anomalies.note(
                "created",
                format!("watcher {id} got a second created response (index {index})"),
            );
        }
        if revision <= 0 {
            logs.anomalies.note(
                "header",
                format!("watcher {id}: created response without a header revision"),
            );
        }
        session.created = Some(revision);
        if self.position.is_none() {
            self.position = Some(revision);
        }
    }

    /// A response with events: checks its header and splits it into revisions.
    fn events(
        &mut self,
        header: i64,
        response: &[WatchedEvent],
        index: u64,
        time_ns: u64,
        logs: &mut Logs,
    ) {
        let id = self.id;
        let session = self.session.as_ref().expect("read checked the session");
        if session.created.is_none() {
            logs.anomalies.note(
                "created",
                format!(
                    "watcher {id} received events before its created response (index {index}, \
                     session from {})",
                    session.start_revision
                ),
            );
        }
        let mut groups: Vec<(i64, Vec<WatchedEvent>)> = Vec::new();
        for e in response {
            logs.events += 1;
            if header <= 0 || e.revision() > header {
                logs.anomalies.note(
                    "header",
                    format!(
                        "watcher {id}: event at revision {} in a response whose header revision \
                         is {header} (index {index})",
                        e.revision()
                    ),
                );
            }
            match groups.last_mut() {
                Some((r, group)) if *r == e.revision() => group.push(e.clone()),
                _ => groups.push((e.revision(), vec![e.clone()])),
            }
        }
        for (r, group) in groups {
            self.deliver(r, group, index, time_ns, logs);
        }
    }

    /// The events of revision `r`, from the response at `index`.
    fn deliver(
        &mut self,
        r: i64,
        group: Vec<WatchedEvent>,
        index: u64,
        time_ns: u64,
        logs: &mut Logs,
    ) {
        let id = self.id;
        if let Some((last, last_index)) = self.last {
            if r == last && last_index != index {
                let earlier = logs
                    .delivered(id, r)
                    .expect("the last revision was delivered");
                if group.iter().all(|e| earlier.events.contains(e)) {
                    logs.anomalies.note(
                        "duplicate",
                        format!(
                            "watcher {id} received revision {r} again (index {index}): {}",
                            brief(&group)
                        ),
                    );
                } else {
                    earlier.events.extend(group.iter().cloned());
                    logs.anomalies.note(
                        "split",
                        format!(
                            "watcher {id} received revision {r} in two responses (the second at \
                             index {index}: {})",
                            brief(&group)
                        ),
                    );
                }
                return;
            }
            if r <= last {
                let kind = if logs.delivered(id, r).is_some() {
                    "duplicate"
                } else {
                    "out-of-order"
                };
                logs.anomalies.note(
                    kind,
                    format!(
                        "watcher {id} received revision {r} after revision {last} (index {index})"
                    ),
                );
                return;
            }
        }
        let session = self.session.as_mut().expect("read checked the session");
        let mut position = self.position.unwrap_or(0);
        // A watch from "now" starts one past the member's revision at its registration, which
        // is at most its created response's revision (etcd takes that header after
        // registering) and may lie below revisions acknowledged elsewhere (a lagging member's
        // "now" is its own), so only that upper bound is known.
        let from_now = session.start_revision == 0 && !session.events_seen;
        if from_now && r <= position {
            position = r - 1;
        }
        let expected = (position + 1).max(2);
        if r > expected {
            logs.gaps.push(Gap {
                watcher: id,
                from: expected,
                to: r - 1,
                index,
                at_compact_revision: self.compact_resume == Some(expected),
            });
        } else if r < expected {
            logs.anomalies.note(
                "before-start",
                format!(
                    "watcher {id} received revision {r} although it had everything up to \
                     {position} (session from {}, index {index})",
                    session.start_revision
                ),
            );
        }
        session.events_seen = true;
        self.compact_resume = None;
        self.position = Some(position.max(r));
        self.last = Some((r, index));
        logs.deliveries.entry(r).or_default().push(Delivery {
            watcher: id,
            events: group,
            time_ns,
            after_cancel: session.cancel_requested,
        });
    }

    /// A progress notification at `revision`: every event up to it has been delivered.
    fn progress(&mut self, revision: i64, index: u64, logs: &mut Logs) {
        let position = self.position.unwrap_or(0);
        if revision > position {
            logs.gaps.push(Gap {
                watcher: self.id,
                from: (position + 1).max(2),
                to: revision,
                index,
                at_compact_revision: self.compact_resume == Some(position + 1),
            });
            self.position = Some(revision);
            self.compact_resume = None;
        }
    }

    fn canceled(&mut self, compact_revision: i64, index: u64, writes: &Writes, logs: &mut Logs) {
        let id = self.id;
        let session = self.session.take().expect("read checked the session");
        if session.created.is_none() {
            logs.anomalies.note(
                "created",
                format!("watcher {id} was canceled before its created response"),
            );
        }
        if compact_revision <= 0 {
            if !session.cancel_requested {
                logs.server_cancels += 1;
            }
            return;
        }
        let c = compact_revision;
        let needed = self.position.map_or(session.start_revision, |p| p + 1);
        if needed >= c {
            logs.anomalies.note(
                "compaction",
                format!(
                    "watcher {id} was canceled as compacted at {c}, but the revision it needed \
                     ({needed}) is not below it (index {index})"
                ),
            );
        }
        if !writes.compactions.contains(&c) {
            logs.anomalies.note(
                "compaction",
                format!(
                    "watcher {id} was told compact_revision {c}, which no compaction asked for \
                     (highest asked: {})",
                    writes.max_compaction
                ),
            );
        }
        logs.excused_revisions += (c - needed).max(0);
        logs.compacted_cancels
            .push(format!("watcher {id} needed {needed}, compacted at {c}"));
        self.position = Some(self.position.unwrap_or(0).max(c - 1));
        self.compact_resume = Some(c);
    }
}

/// Everything the checker needs from the client ops.
struct Writes<'a> {
    ops: &'a [Op],
    /// Acknowledged writes that made a revision: revision → op index.
    acked_at: HashMap<i64, usize>,
    /// Every put value → (op index, key).
    value_owner: HashMap<Value, (usize, &'a str)>,
    /// Revisions compactions were requested at (not definitely failed).
    compactions: HashSet<i64>,
    max_compaction: i64,
    /// (invocation time, revision) of those compactions, by time, with the running maximum.
    compactions_by_time: Vec<(u64, i64)>,
}

impl<'a> Writes<'a> {
    fn new(ops: &'a [Op], anomalies: &mut Anomalies) -> Writes<'a> {
        let mut writes = Writes {
            ops,
            acked_at: HashMap::new(),
            value_owner: HashMap::new(),
            compactions: HashSet::new(),
            max_compaction: 0,
            compactions_by_time: Vec::new(),
        };
        for (at, op) in ops.iter().enumerate() {
            match &op.call {
                Call::Put { key, value } => {
                    writes.value_owner.insert(*value, (at, key));
                }
                Call::PutTxn { puts } => {
                    for (key, value) in puts {
                        writes.value_owner.insert(*value, (at, key));
                    }
                }
                Call::Compact { revision } if op.outcome != Outcome::Fail => {
                    writes.compactions.insert(*revision);
                    writes.max_compaction = writes.max_compaction.max(*revision);
                    writes.compactions_by_time.push((op.invoke_ns, *revision));
                }
                _ => {}
            }
            let Outcome::Ok { reply, revision } = &op.outcome else {
                continue;
            };
            let made_revision = match (&op.call, reply) {
                (Call::Put { .. } | Call::PutTxn { .. }, _) => true,
                (Call::Delete { .. }, Reply::Delete { deleted }) => !deleted.is_empty(),
                _ => false,
            };
            if !made_revision {
                continue;
            }
            if let Some(other) = writes.acked_at.insert(*revision, at) {
                anomalies.note(
                    "reused-revision",
                    format!(
                        "{:?} and {:?} were both acknowledged at revision {revision}",
                        ops[other].call, op.call
                    ),
                );
            }
        }
        running_max(&mut writes.compactions_by_time);
        writes
    }

    /// The highest revision a compaction invoked before `time_ns` asked for.
    fn compacted_before(&self, time_ns: u64) -> i64 {
        latest_before(&self.compactions_by_time, time_ns)
    }

    /// The events `op` makes, if it is a write whose effect is known from its call alone (a put
    /// or txn), or from its acknowledgement (a delete).
    fn expected_events(&self, at: usize) -> Option<Vec<(EventType, &str, Option<Value>)>> {
        let op = &self.ops[at];
        match (&op.call, &op.outcome) {
            (Call::Put { key, value }, _) => Some(vec![(EventType::Put, key, Some(*value))]),
            (Call::PutTxn { puts }, _) => Some(
                puts.iter()
                    .map(|(key, value)| (EventType::Put, key.as_str(), Some(*value)))
                    .collect(),
            ),
            (
                Call::Delete { .. },
                Outcome::Ok {
                    reply: Reply::Delete { deleted },
                    ..
                },
            ) => Some(
                deleted
                    .iter()
                    .map(|kv| (EventType::Delete, kv.key.as_str(), None))
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// Sorts `(time, revision)` pairs by time and makes each revision the maximum so far.
fn running_max(entries: &mut [(u64, i64)]) {
    entries.sort_unstable();
    let mut max = 0;
    for entry in entries {
        max = max.max(entry.1);
        entry.1 = max;
    }
}

/// The running maximum of the entries before `time_ns` (0 if none).
fn latest_before(entries: &[(u64, i64)], time_ns: u64) -> i64 {
    match entries.partition_point(|&(t, _)| t < time_ns) {
        0 => 0,
        n => entries[n - 1].1,
    }
}

fn shape(events: &[WatchedEvent]) -> Vec<(EventType, &str, Option<Value>)> {
    events
        .iter()
        .map(|e| {
            let value = match e.kind {
                EventType::Put => e.kv.value,
                EventType::Delete => None,
            };
            (e.kind, e.kv.key.as_str(), value)
        })
        .collect()
}

/// Whether two deliveries of a revision agree: same events in the same order; `prev_kv` must
/// agree where both have one (a missing one is judged by the replay).
fn same_events(a: &[WatchedEvent], b: &[WatchedEvent]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.kind == y.kind
                && x.kv == y.kv
                && match (&x.prev_kv, &y.prev_kv) {
                    (Some(p), Some(q)) => p == q,
                    _ => true,
                }
        })
}

fn brief(events: &[WatchedEvent]) -> String {
    events
        .iter()
        .map(|e| {
            let event = match e.kind {
                EventType::Put => format!("put {}={}", e.kv.key, e.kv.value.unwrap_or(0)),
                EventType::Delete => format!("delete {}", e.kv.key),
            };
            match &e.prev_kv {
                Some(prev) => format!("{event} (prev {})", prev.value.unwrap_or(0)),
                None => event,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The final read: the last successful read of the prefix.
struct FinalRead<'a> {
    revision: i64,
    kvs: &'a [Kv],
    complete_ns: u64,
}

fn final_read(ops: &[Op]) -> Option<FinalRead<'_>> {
    ops.iter()
        .rev()
        .find_map(|op| match (&op.call, &op.outcome) {
            (
                Call::ReadPrefix,
                Outcome::Ok {
                    reply: Reply::ReadPrefix { kvs },
                    revision,
                },
            ) => Some(FinalRead {
                revision: *revision,
                kvs,
                complete_ns: op.complete_ns.expect("an ok op has completed"),
            }),
            _ => None,
        })
}

/// One canonical log: every delivery of a revision must agree with the first.
fn canonical_log<'a>(
    deliveries: &'a BTreeMap<i64, Vec<Delivery>>,
    anomalies: &mut Anomalies,
) -> BTreeMap<i64, &'a Delivery> {
    let mut canonical = BTreeMap::new();
    for (r, ds) in deliveries {
        let first = &ds[0];
        for d in &ds[1..] {
            if !same_events(&first.events, &d.events) {
                anomalies.note(
                    "disagreement",
                    format!(
                        "revision {r}: watcher {} received [{}], watcher {} received [{}]",
                        first.watcher,
                        brief(&first.events),
                        d.watcher,
                        brief(&d.events)
                    ),
                );
            }
        }
        canonical.insert(*r, first);
    }
    canonical
}

fn report_gaps(gaps: &[Gap], canonical: &BTreeMap<i64, &Delivery>, anomalies: &mut Anomalies) {
    for gap in gaps {
        let elsewhere = canonical.range(gap.from..=gap.to).count();
        let text = format!(
            "watcher {} skipped revisions {}..={} (index {}); {} of them reached other watchers",
            gap.watcher, gap.from, gap.to, gap.index, elsewhere
        );
        if gap.at_compact_revision {
            let missed = canonical
                .get(&gap.from)
                .map_or("unknown".to_string(), |d| brief(&d.events));
            anomalies.note(
                "gap-at-compact-revision",
                format!(
                    "{text}, starting at the compact_revision it resumed from, where others got \
                     [{missed}] (etcd#18089 drops a delete at the compaction revision)"
                ),
            );
        } else {
            anomalies.note("gap", text);
        }
    }
}

/// The canonical log against the writes; returns how many acknowledged writes it verified.
fn check_writes(
    canonical: &BTreeMap<i64, &Delivery>,
    writes: &Writes,
    anomalies: &mut Anomalies,
) -> u64 {
    let ops = writes.ops;
    let mut verified = 0;
    for (&r, d) in canonical {
        let seen = shape(&d.events);
        if let Some(&at) = writes.acked_at.get(&r) {
            let mut expected = writes.expected_events(at).expect("acked writes are writes");
            let mut seen = seen.clone();
            if matches!(ops[at].call, Call::Delete { .. }) {
                expected.sort();
                seen.sort();
            }
            if expected == seen {
                verified += 1;
            } else {
                anomalies.note(
                    "write-mismatch",
                    format!(
                        "revision {r}: {:?} was acknowledged at it, but watchers received [{}]",
                        ops[at].call,
                        brief(&d.events)
                    ),
                );
            }
            continue;
        }
        // No acknowledged write at r: the events must come from one write whose outcome is
        // unknown.
        if seen.iter().all(|(kind, ..)| *kind == EventType::Delete) {
            let keys: Vec<&str> = seen.iter().map(|(_, key, _)| *key).collect();
            let explained = ops.iter().any(|op| match (&op.call, &op.outcome) {
                (Call::Delete { key, range_end }, Outcome::Info) => {
                    keys.iter().all(|k| match range_end {
                        None => k == key,
                        Some(end) => *k >= key.as_str() && *k < end.as_str(),
                    })
                }
                _ => false,
            });
            if !explained {
                anomalies.note(
                    "unexplained",
                    format!(
                        "revision {r}: [{}] matches no acknowledged or indeterminate delete",
                        brief(&d.events)
                    ),
                );
            }
            continue;
        }
        let owners: HashSet<Option<usize>> = seen
            .iter()
            .map(
                |&(kind, key, value)| match value.and_then(|v| writes.value_owner.get(&v)) {
                    Some(&(at, owner_key)) if kind == EventType::Put && owner_key == key => {
                        Some(at)
                    }
                    _ => None,
                },
            )
            .collect();
        let owner = match owners.iter().collect::<Vec<_>>()[..] {
            [Some(at)] => *at,
            _ => {
                anomalies.note(
                    "unexplained",
                    format!(
                        "revision {r}: [{}] is not the effect of one write",
                        brief(&d.events)
                    ),
                );
                continue;
            }
        };
        match &ops[owner].outcome {
            Outcome::Fail => anomalies.note(
                "unexplained",
                format!(
                    "revision {r}: [{}] is the effect of {:?}, which failed",
                    brief(&d.events),
                    ops[owner].call
                ),
            ),
            Outcome::Ok { revision, .. } => anomalies.note(
                "write-mismatch",
                format!(
                    "revision {r}: [{}] is the effect of {:?}, acknowledged at revision \
                     {revision}",
                    brief(&d.events),
                    ops[owner].call
                ),
            ),
            Outcome::Info => {
                let expected = writes.expected_events(owner).expect("puts have events");
                if expected != seen {
                    anomalies.note(
                        "write-mismatch",
                        format!(
                            "revision {r}: [{}] is part of {:?}, whose effect is {expected:?}",
                            brief(&d.events),
                            ops[owner].call,
                        ),
                    );
                }
            }
        }
    }
    verified
}

/// What the replay established.
struct Replayed {
    final_state_checked: bool,
    prev_kv_excused: u64,
    prev_kv_excused_after_cancel: u64,
}

/// Replays the canonical log: each event's key-value follows from the key's previous one, every
/// watcher's `prev_kv` and each acknowledged put's own `prev_kv` is the key's previous value,
/// and the state at the final read's revision is what that read returned. After a hole in the
/// log (revisions no watcher covered) only keys written since are known.
fn replay(
    canonical: &BTreeMap<i64, &Delivery>,
    deliveries: &BTreeMap<i64, Vec<Delivery>>,
    writes: &Writes,
    final_read: Option<&FinalRead>,
    anomalies: &mut Anomalies,
) -> Replayed {
    let mut state: HashMap<&str, &Kv> = HashMap::new();
    // Every key is known (absent unless in `state`) while the log is complete from revision 2.
    let mut all_known = canonical.keys().next() == Some(&2);
    let mut known: HashSet<&str> = HashSet::new();
    let mut previous = canonical.keys().next().map_or(0, |r| r - 1);
    let mut replayed = Replayed {
        final_state_checked: false,
        prev_kv_excused: 0,
        prev_kv_excused_after_cancel: 0,
    };
    for (&r, d) in canonical {
        if r != previous + 1 {
            all_known = false;
            state.clear();
            known.clear();
        }
        previous = r;
        for (i, event) in d.events.iter().enumerate() {
            let key = event.kv.key.as_str();
            let Some(prev) = (all_known || known.contains(key)).then(|| state.get(key).copied())
            else {
                continue;
            };
            match (event.kind, prev) {
                (EventType::Put, prev) => {
                    let version = prev.map_or(1, |p| p.version + 1);
                    let create = prev.map_or(r, |p| p.create_revision);
                    if event.kv.version != version || event.kv.create_revision != create {
                        anomalies.note(
                            "kv",
                            format!(
                                "revision {r}: put of {key} has version {} and create revision \
                                 {}, expected {version} and {create}",
                                event.kv.version, event.kv.create_revision
                            ),
                        );
                    }
                }
                (EventType::Delete, None) => anomalies.note(
                    "kv",
                    format!("revision {r}: delete of {key}, which did not exist"),
                ),
                (EventType::Delete, Some(_)) => {}
            }
            let creates = event.kind == EventType::Put && event.kv.version == 1;
            for delivery in &deliveries[&r] {
                let Some(copy) = delivery.events.get(i) else {
                    continue;
                };
                match (&copy.prev_kv, prev) {
                    (Some(got), Some(want)) if got == want => {}
                    (None, None) => {}
                    // etcd looks prev_kv up at r - 1 when it sends the event, and leaves it out
                    // if that revision has been compacted by then.
                    (None, Some(_))
                        if !creates && writes.compacted_before(delivery.time_ns) >= r =>
                    {
                        replayed.prev_kv_excused += 1;
                    }
                    // etcd forgets a watch's prev_kv flag when it processes the cancel request
                    // (v3rpc/watch.go recvLoop), and sends events still queued for it without.
                    (None, Some(_)) if !creates && delivery.after_cancel => {
                        replayed.prev_kv_excused_after_cancel += 1;
                    }
                    (got, want) => anomalies.note(
                        "prev-kv",
                        format!(
                            "revision {r}: watcher {} got prev_kv {got:?} for {key}, but the \
                             previous value in the log is {want:?}",
                            delivery.watcher
                        ),
                    ),
                }
            }
        }
        // The put's own prev_kv, if it was acknowledged.
        if let Some(&at) = writes.acked_at.get(&r) {
            let op = &writes.ops[at];
            if let (
                Call::Put { key, .. },
                Outcome::Ok {
                    reply: Reply::Put { prev },
                    ..
                },
            ) = (&op.call, &op.outcome)
            {
                let want = state.get(key.as_str()).copied();
                if (all_known || known.contains(key.as_str())) && prev.as_ref() != want {
                    anomalies.note(
                        "prev-kv",
                        format!(
                            "revision {r}: the put's response had prev_kv {prev:?}, but the \
                             previous value in the log is {want:?}"
                        ),
                    );
                }
            }
        }
        for event in &d.events {
            let key = event.kv.key.as_str();
            match event.kind {
                EventType::Put => state.insert(key, &event.kv),
                EventType::Delete => state.remove(key),
            };
            known.insert(key);
        }
        let Some(read) = final_read.filter(|f| f.revision == r) else {
            continue;
        };
        replayed.final_state_checked = all_known;
        let returned: HashMap<&str, &Kv> =
            read.kvs.iter().map(|kv| (kv.key.as_str(), kv)).collect();
        let keys: HashSet<&str> = if all_known {
            returned.keys().chain(state.keys()).copied().collect()
        } else {
            known.clone()
        };
        for key in keys {
            let (want, got) = (state.get(key).copied(), returned.get(key).copied());
            if want != got {
                anomalies.note(
                    "final-state",
                    format!(
                        "{key} at revision {r}: the final read returned {got:?}, the watched log \
                         gives {want:?}"
                    ),
                );
            }
        }
    }
    replayed
}

/// Watchers still running when the final read completed must reach its revision. Returns how
/// many did, and the watchers whose catch-up could not be checked (no final read).
fn check_catch_up(
    watchers: &BTreeMap<u64, WatcherState>,
    final_read: Option<&FinalRead>,
    anomalies: &mut Anomalies,
) -> (u64, Vec<u64>) {
    let mut caught_up = 0;
    let mut unchecked = Vec::new();
    for w in watchers.values() {
        let Some(read) = final_read else {
            unchecked.push(w.id);
            continue;
        };
        if w.stopped_ns
            .is_some_and(|stopped| stopped <= read.complete_ns)
        {
            continue;
        }
        let position = w.position.unwrap_or(0);
        if position >= read.revision {
            caught_up += 1;
        } else {
            anomalies.note(
                "catch-up",
                format!(
                    "watcher {} stopped with every event up to revision {position} only; the \
                     final read was at {}",
                    w.id, read.revision
                ),
            );
        }
    }
    (caught_up, unchecked)
}

/// Checks the watch workload's history; `ops` are its paired client operations.
pub fn check(events: &[Event], ops: &[Op]) -> CheckResult {
    let mut logs = Logs::default();
    let writes = Writes::new(ops, &mut logs.anomalies);
    let final_read = final_read(ops);
    let mut watchers: BTreeMap<u64, WatcherState> = BTreeMap::new();
    for event in events {
        if let (Actor::Watcher(id), EventKind::Watch { record }) = (&event.actor, &event.kind) {
            watchers
                .entry(*id)
                .or_insert_with(|| WatcherState::new(*id))
                .read(record, event.index, event.time_ns, &writes, &mut logs);
        }
    }
    let Logs {
        deliveries,
        gaps,
        mut anomalies,
        ..
    } = logs;
    let canonical = canonical_log(&deliveries, &mut anomalies);
    report_gaps(&gaps, &canonical, &mut anomalies);
    let verified = check_writes(&canonical, &writes, &mut anomalies);
    // Acknowledged writes no watcher delivered and no gap covers: nobody watched them (their
    // revisions were compacted away before any watcher reached them).
    let unwatched = writes
        .acked_at
        .keys()
        .filter(|r| {
            !canonical.contains_key(r) && !gaps.iter().any(|g| (g.from..=g.to).contains(*r))
        })
        .count();
    let replayed = replay(
        &canonical,
        &deliveries,
        &writes,
        final_read.as_ref(),
        &mut anomalies,
    );
    let (caught_up, unchecked) = check_catch_up(&watchers, final_read.as_ref(), &mut anomalies);

    let mut notes = anomalies.notes;
    let verdict = if !anomalies.counts.is_empty() {
        Verdict::Invalid
    } else if !unchecked.is_empty() {
        notes.push(format!(
            "no successful final read: whether watchers {unchecked:?} caught up is unchecked"
        ));
        Verdict::Unknown
    } else if logs.events == 0 {
        notes.push("no watcher received any event".into());
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    if verdict != Verdict::Invalid {
        // Compaction cancels are reported, not failures.
        notes.extend(
            logs.compacted_cancels
                .iter()
                .take(ANOMALIES_REPORTED_MAX)
                .map(|c| format!("compacted (not a failure): {c}")),
        );
    }
    CheckResult {
        checker: "watch".into(),
        verdict,
        anomalies: notes,
        stats: serde_json::json!({
            "watchers": watchers.len(),
            "sessions": logs.sessions,
            "events_delivered": logs.events,
            "revisions_watched": canonical.len(),
            "acknowledged_writes": writes.acked_at.len(),
            "acknowledged_writes_verified": verified,
            "acknowledged_writes_unwatched": unwatched,
            "compacted_cancels": logs.compacted_cancels.len(),
            "revisions_excused_by_compaction": logs.excused_revisions,
            "prev_kv_excused_by_compaction": replayed.prev_kv_excused,
            "prev_kv_excused_after_cancel": replayed.prev_kv_excused_after_cancel,
            "server_cancels": logs.server_cancels,
            "caught_up": caught_up,
            "final_revision": final_read.as_ref().map(|f| f.revision),
            "final_state_checked": replayed.final_state_checked,
            "anomalies": anomalies.counts,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::pair;

    /// One history event before stamping: who, and what.
    type Step = (Actor, EventKind);

    fn kv(key: &str, value: Option<Value>, create: i64, modified: i64, version: i64) -> Kv {
        Kv {
            key: key.into(),
            value,
            create_revision: create,
            mod_revision: modified,
            version,
        }
    }

    fn put(key: &str, value: Value, create: i64, modified: i64, version: i64) -> WatchedEvent {
        let prev = (version > 1).then(|| {
            // The scenario's keys are put at most twice before being deleted.
            kv(key, Some(PREVIOUS[key]), create, create, version - 1)
        });
        WatchedEvent {
            kind: EventType::Put,
            kv: kv(key, Some(value), create, modified, version),
            prev_kv: prev,
        }
    }

    fn del(key: &str, modified: i64, prev: Kv) -> WatchedEvent {
        WatchedEvent {
            kind: EventType::Delete,
            kv: kv(key, None, 0, modified, 0),
            prev_kv: Some(prev),
        }
    }

    /// Values a second put replaces, by key.
    static PREVIOUS: std::sync::LazyLock<HashMap<&'static str, Value>> =
        std::sync::LazyLock::new(|| HashMap::from([("k0", 1)]));

    fn client(process: u64) -> Actor {
        Actor::Client(process)
    }

    fn w(record: WatchRecord) -> EventKind {
        EventKind::Watch { record }
    }

    fn events(at: i64, events: Vec<WatchedEvent>) -> EventKind {
        w(WatchRecord::Events {
            revision: at,
            events,
        })
    }

    fn open(start_revision: i64) -> EventKind {
        w(WatchRecord::Open {
            start_revision,
            require_leader: false,
        })
    }

    fn created(revision: i64) -> EventKind {
        w(WatchRecord::Created { revision })
    }

    fn ok(reply: Reply, revision: i64) -> EventKind {
        EventKind::Ok { reply, revision }
    }

    fn invoke(call: Call) -> EventKind {
        EventKind::Invoke { call }
    }

    fn k0_first() -> Kv {
        kv("k0", Some(4), 2, 4, 2)
    }

    /// A valid history: revision 2 puts k0=1; 3 is a txn putting k1=2 and k2=3; 4 puts k0=4;
    /// 5 deletes the range [k0, k2) (k0 and k1); 6 puts k1=5 by a write whose outcome is
    /// unknown. A compaction at 4. Watcher 0 watches from 1 in one session; watcher 1 from 3,
    /// breaks after 3 and resumes at 4 on another member; watcher 2 starts at 2, is canceled as
    /// compacted and resumes at 4. The final read is at 6.
    fn scenario() -> Vec<Step> {
        let (w0, w1, w2) = (Actor::Watcher(0), Actor::Watcher(1), Actor::Watcher(2));
        let e2 = vec![put("k0", 1, 2, 2, 1)];
        let e3 = vec![put("k1", 2, 3, 3, 1), put("k2", 3, 3, 3, 1)];
        let e4 = vec![put("k0", 4, 2, 4, 2)];
        let e5 = vec![
            del("k0", 5, k0_first()),
            del("k1", 5, kv("k1", Some(2), 3, 3, 1)),
        ];
        let e6 = vec![put("k1", 5, 6, 6, 1)];
        vec![
            (w0, open(1)),
            (w0, created(1)),
            (
                client(1),
                invoke(Call::Put {
                    key: "k0".into(),
                    value: 1,
                }),
            ),
            (client(1), ok(Reply::Put { prev: None }, 2)),
            (w0, events(2, e2.clone())),
            (w1, open(3)),
            (
                client(1),
                invoke(Call::PutTxn {
                    puts: vec![("k1".into(), 2), ("k2".into(), 3)],
                }),
            ),
            (w1, created(2)),
            (client(1), ok(Reply::PutTxn, 3)),
            (w0, events(3, e3.clone())),
            (w1, events(3, e3.clone())),
            (
                w1,
                w(WatchRecord::Broken {
                    error: "member killed".into(),
                }),
            ),
            (
                client(1),
                invoke(Call::Put {
                    key: "k0".into(),
                    value: 4,
                }),
            ),
            (
                client(1),
                ok(
                    Reply::Put {
                        prev: Some(kv("k0", Some(1), 2, 2, 1)),
                    },
                    4,
                ),
            ),
            (w0, events(4, e4.clone())),
            (client(2), invoke(Call::Compact { revision: 4 })),
            (client(2), ok(Reply::Compact, 4)),
            (w2, open(2)),
            (w2, created(4)),
            (
                w2,
                w(WatchRecord::Canceled {
                    compact_revision: 4,
                    reason: String::new(),
                }),
            ),
            (w2, open(4)),
            (w2, created(4)),
            (w2, events(4, e4.clone())),
            (w1, open(4)),
            (w1, created(4)),
            (
                client(1),
                invoke(Call::Delete {
                    key: "k0".into(),
                    range_end: Some("k2".into()),
                }),
            ),
            (
                client(1),
                ok(
                    Reply::Delete {
                        deleted: vec![k0_first(), kv("k1", Some(2), 3, 3, 1)],
                    },
                    5,
                ),
            ),
            (w1, events(5, [e4.clone(), e5.clone()].concat())),
            (w0, events(5, e5.clone())),
            (w2, events(5, e5.clone())),
            (
                client(3),
                invoke(Call::Put {
                    key: "k1".into(),
                    value: 5,
                }),
            ),
            (
                client(3),
                EventKind::Info {
                    error: "timeout".into(),
                },
            ),
            (w0, events(6, e6.clone())),
            (w1, events(6, e6.clone())),
            (w2, events(6, e6)),
            (client(4), invoke(Call::ReadPrefix)),
            (
                client(4),
                ok(
                    Reply::ReadPrefix {
                        kvs: vec![kv("k1", Some(5), 6, 6, 1), kv("k2", Some(3), 3, 3, 1)],
                    },
                    6,
                ),
            ),
            (w0, w(WatchRecord::Stop)),
            (w1, w(WatchRecord::Stop)),
            (w2, w(WatchRecord::Stop)),
        ]
    }

    fn check_steps(steps: &[Step]) -> CheckResult {
        let events: Vec<Event> = steps
            .iter()
            .enumerate()
            .map(|(i, (actor, kind))| Event {
                index: i as u64,
                time_ns: i as u64 * 10,
                actor: *actor,
                node: Some(0),
                kind: kind.clone(),
            })
            .collect();
        let ops = pair(&events).unwrap();
        check(&events, &ops)
    }

    fn kinds(result: &CheckResult) -> Vec<String> {
        result.stats["anomalies"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// The position of the `n`th step (from 0) of `actor` whose kind satisfies `pred`.
    fn find(steps: &[Step], actor: Actor, n: usize, pred: impl Fn(&EventKind) -> bool) -> usize {
        steps
            .iter()
            .enumerate()
            .filter(|(_, (a, k))| *a == actor && pred(k))
            .nth(n)
            .map(|(i, _)| i)
            .expect("the scenario has that step")
    }

    fn is_events(kind: &EventKind) -> bool {
        matches!(
            kind,
            EventKind::Watch {
                record: WatchRecord::Events { .. }
            }
        )
    }

    #[test]
    fn the_scenario_is_valid() {
        let result = check_steps(&scenario());
        assert_eq!(result.verdict, Verdict::Valid, "{result:#?}");
        assert_eq!(result.stats["acknowledged_writes_verified"], 4);
        assert_eq!(result.stats["caught_up"], 3);
        assert_eq!(result.stats["compacted_cancels"], 1);
        assert_eq!(result.stats["final_state_checked"], true);
    }

    #[test]
    fn a_missing_revision_is_a_gap() {
        let mut steps = scenario();
        // Watcher 0 never receives revision 4.
        steps.remove(find(&steps, Actor::Watcher(0), 2, is_events));
        let result = check_steps(&steps);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(kinds(&result), ["gap"], "{result:#?}");
        assert!(result.anomalies[0].contains("skipped revisions 4..=4"));
    }

    #[test]
    fn a_repeated_response_is_a_duplicate() {
        let mut steps = scenario();
        let at = find(&steps, Actor::Watcher(0), 2, is_events);
        steps.insert(at + 1, steps[at].clone());
        let result = check_steps(&steps);
        assert_eq!(kinds(&result), ["duplicate"], "{result:#?}");
    }

    #[test]
    fn a_revision_spread_over_two_responses_is_split() {
        let mut steps = scenario();
        // The txn at revision 3 reaches watcher 0 in two responses.
        let at = find(&steps, Actor::Watcher(0), 1, is_events);
        let e3 = [put("k1", 2, 3, 3, 1), put("k2", 3, 3, 3, 1)];
        steps[at].1 = events(3, e3[..1].to_vec());
        steps.insert(at + 1, (Actor::Watcher(0), events(3, e3[1..].to_vec())));
        let result = check_steps(&steps);
        assert_eq!(kinds(&result), ["split"], "{result:#?}");
    }

    #[test]
    fn watchers_that_disagree_are_caught() {
        let mut steps = scenario();
        let at = find(&steps, Actor::Watcher(1), 2, is_events);
        steps[at].1 = events(6, vec![put("k1", 7, 6, 6, 1)]);
        let result = check_steps(&steps);
        assert!(
            kinds(&result).contains(&"disagreement".to_string()),
            "{result:#?}"
        );
    }

    #[test]
    fn a_wrong_prev_kv_is_caught() {
        let mut steps = scenario();
        let at = find(&steps, Actor::Watcher(0), 2, is_events);
        let mut e4 = put("k0", 4, 2, 4, 2);
        e4.prev_kv.as_mut().unwrap().value = Some(99);
        steps[at].1 = events(4, vec![e4]);
        let result = check_steps(&steps);
        // The other watchers' prev_kv differs, too.
        assert_eq!(kinds(&result), ["disagreement", "prev-kv"], "{result:#?}");
        // So is a missing one, where nothing was compacted yet.
        let mut e4 = put("k0", 4, 2, 4, 2);
        e4.prev_kv = None;
        steps[at].1 = events(4, vec![e4]);
        assert_eq!(kinds(&check_steps(&steps)), ["prev-kv"]);
        // Unless the watcher had asked to cancel (etcd then forgets prev_kv for queued events).
        steps.insert(at, (Actor::Watcher(0), w(WatchRecord::Cancel)));
        let result = check_steps(&steps);
        assert_eq!(result.verdict, Verdict::Valid, "{result:#?}");
        assert_eq!(result.stats["prev_kv_excused_after_cancel"], 1);
    }

    #[test]
    fn events_before_the_created_response_are_caught() {
        let mut steps = scenario();
        let at = find(&steps, Actor::Watcher(0), 0, |k| {
            matches!(
                k,
                EventKind::Watch {
                    record: WatchRecord::Created { .. }
                }
            )
        });
        steps.remove(at);
        let at = find(&steps, Actor::Watcher(0), 0, is_events);
        steps.insert(at + 1, (Actor::Watcher(0), created(2)));
        let result = check_steps(&steps);
        assert!(
            kinds(&result).contains(&"created".to_string()),
            "{result:#?}"
        );
    }

    #[test]
    fn an_acknowledged_write_at_another_revision_is_caught() {
        let mut steps = scenario();
        // The first put claims revision 3, which the txn owns.
        let at = find(&steps, client(1), 0, |k| matches!(k, EventKind::Ok { .. }));
        steps[at].1 = ok(Reply::Put { prev: None }, 3);
        let result = check_steps(&steps);
        let kinds = kinds(&result);
        assert!(
            kinds.contains(&"reused-revision".to_string()),
            "{result:#?}"
        );
        assert!(kinds.contains(&"write-mismatch".to_string()), "{result:#?}");
    }

    #[test]
    fn a_watcher_that_never_catches_up_is_caught() {
        let mut steps = scenario();
        // Watcher 2 never receives revision 6 but is still running at the final read.
        steps.remove(find(&steps, Actor::Watcher(2), 2, is_events));
        let result = check_steps(&steps);
        assert_eq!(kinds(&result), ["catch-up"], "{result:#?}");
    }

    #[test]
    fn compaction_cancels_must_name_a_requested_compaction() {
        let mut steps = scenario();
        let at = find(&steps, Actor::Watcher(2), 0, |k| {
            matches!(
                k,
                EventKind::Watch {
                    record: WatchRecord::Canceled { .. }
                }
            )
        });
        steps[at].1 = w(WatchRecord::Canceled {
            compact_revision: 3,
            reason: String::new(),
        });
        let result = check_steps(&steps);
        assert!(
            kinds(&result).contains(&"compaction".to_string()),
            "{result:#?}"
        );
    }

    #[test]
    fn a_delete_lost_at_the_compaction_revision_is_named() {
        let mut steps = scenario();
        // Watcher 2 resumes at compact_revision 4 and gets 5 first (etcd#18089's shape).
        steps.remove(find(&steps, Actor::Watcher(2), 0, is_events));
        let result = check_steps(&steps);
        assert_eq!(kinds(&result), ["gap-at-compact-revision"], "{result:#?}");
    }

    /// A watch from "now" whose created response says 3 but which registered before the txn at
    /// 3 (etcd reads the header after registering): receiving 3 first is fine (and so would be
    /// an older revision, from a lagging member); receiving 5 first skips 4.
    #[test]
    fn a_watch_from_now_starts_at_most_one_past_its_created_revision() {
        let mut steps = scenario();
        let w3 = Actor::Watcher(3);
        let at = find(&steps, client(1), 0, |k| matches!(k, EventKind::Ok { .. }));
        let e3 = vec![put("k1", 2, 3, 3, 1), put("k2", 3, 3, 3, 1)];
        let stop = steps.len();
        steps.insert(stop, (w3, w(WatchRecord::Stop)));
        for (i, e) in [
            open(0),
            created(3),
            events(3, e3),
            events(4, vec![put("k0", 4, 2, 4, 2)]),
            events(
                5,
                vec![
                    del("k0", 5, k0_first()),
                    del("k1", 5, kv("k1", Some(2), 3, 3, 1)),
                ],
            ),
            events(6, vec![put("k1", 5, 6, 6, 1)]),
        ]
        .into_iter()
        .enumerate()
        .rev()
        {
            // Each right after the scenario's own delivery of the same revision, roughly.
            let after = if i < 2 { at } else { at + 2 * i };
            steps.insert(after + 1, (w3, e));
        }
        let result = check_steps(&steps);
        assert_eq!(result.verdict, Verdict::Valid, "{result:#?}");

        for _ in 0..2 {
            steps.remove(find(&steps, w3, 0, is_events));
        }
        let result = check_steps(&steps);
        assert_eq!(kinds(&result), ["gap"], "{result:#?}");
        // 3 may have preceded its registration; 4 cannot have.
        assert!(result.anomalies[0].contains("skipped revisions 4..=4"));
    }

    #[test]
    fn without_a_final_read_the_catch_up_is_unknown() {
        let steps: Vec<Step> = scenario()
            .into_iter()
            .filter(|(a, _)| *a != client(4))
            .collect();
        let result = check_steps(&steps);
        assert_eq!(result.verdict, Verdict::Unknown, "{result:#?}");
    }

    #[test]
    fn a_final_read_that_disagrees_with_the_log_is_caught() {
        let mut steps = scenario();
        let at = find(&steps, client(4), 0, |k| matches!(k, EventKind::Ok { .. }));
        steps[at].1 = ok(
            Reply::ReadPrefix {
                kvs: vec![kv("k2", Some(3), 3, 3, 1)],
            },
            6,
        );
        let result = check_steps(&steps);
        assert_eq!(kinds(&result), ["final-state"], "{result:#?}");
    }
}
