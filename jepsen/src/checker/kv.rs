//! kv-robust's checker: linearizability of etcd's KV with revisions (the model of etcd's
//! robustness suite), by replaying revisions instead of searching orders.
//!
//! etcd gives every write that changes something the next revision, and every reply names its
//! revision, so the store itself says in which order the writes took effect. (The workload is the
//! cluster's only writer and attaches no leases, so every revision after 1 is one of its writes.) The checker takes
//! that order as the candidate linearization and verifies everything against it:
//! - **One write per revision.** An acknowledged write that changed something owns its header
//!   revision; an indeterminate write owns the `mod_revision` any read saw its (unique) value at.
//!   Two writes at one revision, a value seen at another revision than its write's, a value
//!   nobody wrote or whose write definitely failed, a write placed before it was invoked, and
//!   more revisions than writes that could explain them are all anomalies.
//! - **Every reply matches the state it was computed on.** Replaying the writes in revision order
//!   from an empty store gives the state at every revision (value, `mod_revision`,
//!   `create_revision`, `version` of each key). A put's `prev_kv`, a delete's deleted key-values
//!   and a conditional txn's compare and deleted key-values must match the state just before its
//!   revision; a read (a range, a delete that deleted nothing, a txn whose compare failed) must
//!   match the state at its revision exactly — its header revision when linearizable, the
//!   revision it asked for when it reads the past. A read of the past that etcd refused as
//!   compacted is a definite failure and checks nothing.
//!
//! Real-time order (an op invoked after another completed never sees an older revision) is the
//! revision checker's, which runs on every history. Together, that is linearizability.
//!
//! A revision no known write explains belongs to an indeterminate write nobody observed; every
//! key such a write could have touched (one invoked early enough) becomes *unknown* until a known
//! write sets it again. A read of an unknown key is checked only for what is certain: what it
//! returns was written at or after the key's last known write and at or before the read's
//! revision. The replay is linear in revisions and reads; a step budget still turns a history
//! too big to check into `Unknown`, never a pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{CheckResult, Verdict, ANOMALIES_REPORTED_MAX};
use crate::history::{Call, Kv, Op, Outcome, Reply, Value};

/// Steps (revisions replayed, key states compared) before the answer is `Unknown`.
pub const STEPS_MAX: u64 = 200_000_000;

/// One key at one revision, as far as the history tells.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyState {
    Absent,
    /// `create_revision` and `version` are `None` when a put landed on an unknown key.
    Present {
        value: Value,
        mod_revision: i64,
        create_revision: Option<i64>,
        version: Option<i64>,
    },
    /// An unobserved indeterminate write may have changed it.
    Unknown,
}

/// A key's replayed state and the revision of the last known write to it (0: none).
#[derive(Clone, Debug)]
struct KeyReplay {
    state: KeyState,
    last_known_write: i64,
}

/// What the checker found, bounded for the report.
struct Findings {
    anomalies: Vec<String>,
    count: usize,
}

impl Findings {
    fn note(&mut self, text: String) {
        self.count += 1;
        if self.anomalies.len() < ANOMALIES_REPORTED_MAX {
            self.anomalies.push(text);
        }
    }
}

/// The keys of the universe in `[key, range_end)`, or just `key`.
fn keys_in<'a>(
    universe: &'a BTreeSet<String>,
    key: &'a str,
    range_end: Option<&'a str>,
) -> Vec<&'a String> {
    match range_end {
        None => universe.get(key).into_iter().collect(),
        Some(end) => universe
            .range::<str, _>((
                std::ops::Bound::Included(key),
                std::ops::Bound::Excluded(end),
            ))
            .collect(),
    }
}

/// The keys a write may touch.
fn write_keys<'a>(universe: &'a BTreeSet<String>, call: &'a Call) -> Vec<&'a String> {
    match call {
        Call::Put { key, .. } => universe.get(key.as_str()).into_iter().collect(),
        Call::PutTxn { puts } => puts
            .iter()
            .filter_map(|(key, _)| universe.get(key.as_str()))
            .collect(),
        Call::Delete { key, range_end } => keys_in(universe, key, range_end.as_deref()),
        Call::KvCas { key, delete, .. } => [key, delete]
            .into_iter()
            .filter_map(|k| universe.get(k.as_str()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether `op` is one of kv-robust's writes.
fn is_write(call: &Call) -> bool {
    matches!(
        call,
        Call::Put { .. } | Call::PutTxn { .. } | Call::Delete { .. } | Call::KvCas { .. }
    )
}

/// The revision an acknowledged write changed the store at, if it changed anything.
fn effective_revision(op: &Op) -> Option<i64> {
    let Outcome::Ok { reply, revision } = &op.outcome else {
        return None;
    };
    let changed = match (&op.call, reply) {
        (Call::Put { .. } | Call::PutTxn { .. }, _) => true,
        (Call::Delete { .. }, Reply::Delete { deleted }) => !deleted.is_empty(),
        (Call::KvCas { .. }, Reply::KvCas { succeeded, .. }) => *succeeded,
        _ => false,
    };
    changed.then_some(*revision)
}

/// Every key-value a reply reports (reads, `prev_kv`s, deleted key-values).
fn observed(op: &Op) -> Vec<&Kv> {
    let Outcome::Ok { reply, .. } = &op.outcome else {
        return Vec::new();
    };
    match reply {
        Reply::Kvs { kvs } => kvs.iter().collect(),
        Reply::Put { prev } => prev.iter().collect(),
        Reply::Delete { deleted } => deleted.iter().collect(),
        Reply::KvCas {
            deleted, current, ..
        } => deleted.iter().chain(current).collect(),
        _ => Vec::new(),
    }
}

/// Checks kv-robust's ops of `history`.
pub fn check(history: &[Op]) -> CheckResult {
    check_with_budget(history, STEPS_MAX)
}

/// [`check`] with a step budget.
pub fn check_with_budget(history: &[Op], steps_max: u64) -> CheckResult {
    let mut found = Findings {
        anomalies: Vec::new(),
        count: 0,
    };

    // The keys, and who wrote each value.
    let mut universe: BTreeSet<String> = BTreeSet::new();
    let mut writers: HashMap<Value, (usize, &str)> = HashMap::new();
    for (at, op) in history.iter().enumerate() {
        match &op.call {
            Call::Put { key, value } => {
                universe.insert(key.clone());
                writers.insert(*value, (at, key));
            }
            Call::PutTxn { puts } => {
                for (key, value) in puts {
                    universe.insert(key.clone());
                    writers.insert(*value, (at, key));
                }
            }
            Call::KvCas {
                key, value, delete, ..
            } => {
                universe.insert(key.clone());
                universe.insert(delete.clone());
                writers.insert(*value, (at, key));
            }
            Call::Delete {
                key,
                range_end: None,
            }
            | Call::KvRange {
                key,
                range_end: None,
                ..
            } => {
                universe.insert(key.clone());
            }
            _ => {}
        }
        for kv in observed(op) {
            universe.insert(kv.key.clone());
        }
    }

    // The highest revision an op reached before each op was invoked (a write cannot take
    // effect at or below it).
    let mut completions: Vec<(u64, i64)> = history
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Ok { revision, .. } => Some((op.complete_ns?, *revision)),
            _ => None,
        })
        .collect();
    completions.sort_unstable();
    let mut running = 0;
    for completion in &mut completions {
        running = running.max(completion.1);
        completion.1 = running;
    }
    let floor = |op: &Op| {
        let before = completions.partition_point(|&(ns, _)| ns < op.invoke_ns);
        if before == 0 {
            1
        } else {
            completions[before - 1].1
        }
    };

    // One write per revision.
    let mut by_revision: BTreeMap<i64, usize> = BTreeMap::new();
    let mut placed: HashMap<usize, i64> = HashMap::new();
    let mut place = |found: &mut Findings, at: usize, revision: i64| {
        if let Some(&other) = placed.get(&at) {
            if other != revision {
                found.note(format!(
                    "{:?} took effect at revision {other} and at {revision}",
                    history[at].call
                ));
            }
            return;
        }
        placed.insert(at, revision);
        if let Some(&other) = by_revision.get(&revision) {
            found.note(format!(
                "revision {revision} has two writes: process {}'s {:?} and process {}'s {:?}",
                history[other].process, history[other].call, history[at].process, history[at].call
            ));
        } else {
            by_revision.insert(revision, at);
        }
    };
    for (at, op) in history.iter().enumerate() {
        if let Some(revision) = effective_revision(op) {
            place(&mut found, at, revision);
        }
    }
    for op in history {
        for kv in observed(op) {
            let Some(value) = kv.value else {
                found.note(format!(
                    "process {}'s {:?} returned {kv:?}, a value nobody wrote",
                    op.process, op.call
                ));
                continue;
            };
            let Some(&(writer, key)) = writers.get(&value) else {
                found.note(format!(
                    "process {}'s {:?} returned {kv:?}, a value nobody wrote",
                    op.process, op.call
                ));
                continue;
            };
            let write = &history[writer];
            if key != kv.key {
                found.note(format!(
                    "process {}'s {:?} returned {kv:?}, but {value} was written to {key}",
                    op.process, op.call
                ));
            }
            match &write.outcome {
                Outcome::Fail => found.note(format!(
                    "process {}'s {:?} returned {kv:?}, written by {:?}, which definitely failed",
                    op.process, op.call, write.call
                )),
                Outcome::Ok { .. } => match effective_revision(write) {
                    Some(revision) if revision == kv.mod_revision => {}
                    revision => found.note(format!(
                        "process {}'s {:?} returned {kv:?}, but {:?} was acknowledged at \
                         revision {revision:?}",
                        op.process, op.call, write.call
                    )),
                },
                Outcome::Info => {
                    if kv.mod_revision <= floor(write) {
                        found.note(format!(
                            "{:?} took effect at revision {}, before it was invoked (revision {} \
                             had already been returned)",
                            write.call,
                            kv.mod_revision,
                            floor(write)
                        ));
                    }
                    place(&mut found, writer, kv.mod_revision)
                }
            }
        }
    }

    // Indeterminate writes nobody observed: candidates for the revisions nobody explains.
    let unplaced: Vec<(i64, Vec<&String>)> = history
        .iter()
        .enumerate()
        .filter(|(at, op)| {
            op.outcome == Outcome::Info && is_write(&op.call) && !placed.contains_key(at)
        })
        .map(|(_, op)| (floor(op), write_keys(&universe, &op.call)))
        .collect();
    let head = history
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Ok { revision, .. } => Some(*revision),
            _ => None,
        })
        .chain(by_revision.keys().copied())
        .max()
        .unwrap_or(1);
    let gaps = (2..=head).filter(|r| !by_revision.contains_key(r)).count();
    if gaps > unplaced.len() {
        found.note(format!(
            "{gaps} revisions up to {head} have no known write, but only {} indeterminate \
             writes could explain them",
            unplaced.len()
        ));
    }

    // Reads, by the revision whose state they must match.
    let mut reads: Vec<(i64, usize)> = Vec::new();
    for (at, op) in history.iter().enumerate() {
        let Outcome::Ok { reply, revision } = &op.outcome else {
            continue;
        };
        let snapshot = match (&op.call, reply) {
            (Call::KvRange { revision: 0, .. }, _) => *revision,
            (Call::KvRange { revision, .. }, _) => *revision,
            (Call::Delete { .. }, Reply::Delete { deleted }) if deleted.is_empty() => *revision,
            (
                Call::KvCas { .. },
                Reply::KvCas {
                    succeeded: false, ..
                },
            ) => *revision,
            _ => continue,
        };
        reads.push((snapshot, at));
    }
    reads.sort_unstable();

    let mut replay = Replay {
        keys: universe
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    KeyReplay {
                        state: KeyState::Absent,
                        last_known_write: 0,
                    },
                )
            })
            .collect(),
        steps: 0,
        unknown_reads: 0,
    };
    let mut next_read = 0;
    let (mut reads_checked, mut past_reads_checked) = (0u64, 0u64);
    for revision in 1..=head {
        replay.steps += 1 + universe.len() as u64;
        if replay.steps > steps_max {
            return CheckResult {
                checker: "kv".into(),
                verdict: Verdict::Unknown,
                anomalies: vec![format!(
                    "step budget ({steps_max}) exhausted at revision {revision} of {head}"
                )],
                stats: serde_json::json!({ "revisions": head }),
            };
        }
        if revision >= 2 {
            match by_revision.get(&revision) {
                Some(&at) => replay.apply(&mut found, &universe, &history[at], revision),
                None => {
                    for (floor, keys) in &unplaced {
                        if *floor < revision {
                            for key in keys {
                                replay.forget(key);
                            }
                        }
                    }
                }
            }
        }
        while next_read < reads.len() && reads[next_read].0 <= revision {
            let (snapshot, at) = reads[next_read];
            next_read += 1;
            if snapshot < revision {
                // Only a read of the past below revision 1 lands here: etcd refuses those.
                found.note(format!(
                    "process {}'s {:?} read at revision {snapshot}",
                    history[at].process, history[at].call
                ));
                continue;
            }
            replay.check_read(&mut found, &universe, &history[at], snapshot);
            reads_checked += 1;
            if matches!(history[at].call, Call::KvRange { revision: r, .. } if r > 0) {
                past_reads_checked += 1;
            }
        }
    }

    let verdict = if found.count > 0 {
        Verdict::Invalid
    } else if reads_checked == 0 {
        found
            .anomalies
            .push("no successful read: nothing was checked".into());
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    CheckResult {
        checker: "kv".into(),
        verdict,
        anomalies: found.anomalies,
        stats: serde_json::json!({
            "anomalies": found.count,
            "revisions": head,
            "writes_acknowledged": history.iter().filter(|op| effective_revision(op).is_some()).count(),
            "indeterminate_writes_placed": placed.len() - history.iter().filter(|op| effective_revision(op).is_some()).count(),
            "indeterminate_writes_unobserved": unplaced.len(),
            "revisions_unexplained": gaps,
            "reads_checked": reads_checked,
            "past_reads_checked": past_reads_checked,
            "key_reads_of_unknown_state": replay.unknown_reads,
        }),
    }
}

/// The replayed store.
struct Replay {
    keys: BTreeMap<String, KeyReplay>,
    steps: u64,
    /// Key reads checked only loosely, because an unobserved write may have changed the key.
    unknown_reads: u64,
}

impl Replay {
    fn key(&mut self, key: &str) -> &mut KeyReplay {
        self.keys
            .get_mut(key)
            .expect("every key of the history is in the universe")
    }

    fn forget(&mut self, key: &str) {
        self.key(key).state = KeyState::Unknown;
    }

    fn delete(&mut self, key: &str, revision: i64) {
        let replay = self.key(key);
        replay.state = KeyState::Absent;
        replay.last_known_write = revision;
    }

    /// A put of `value` at `revision`; `prev` is what the put itself reported, if it did.
    fn put(&mut self, key: &str, value: Value, revision: i64, prev: Option<&Option<Kv>>) {
        let replay = self.key(key);
        let (create_revision, version) = match (&replay.state, prev) {
            (KeyState::Absent, _) | (KeyState::Unknown, Some(None)) => (Some(revision), Some(1)),
            (
                KeyState::Present {
                    create_revision,
                    version,
                    ..
                },
                _,
            ) => (*create_revision, version.map(|v| v + 1)),
            (KeyState::Unknown, Some(Some(prev))) => {
                (Some(prev.create_revision), Some(prev.version + 1))
            }
            (KeyState::Unknown, None) => (None, None),
        };
        replay.state = KeyState::Present {
            value,
            mod_revision: revision,
            create_revision,
            version,
        };
        replay.last_known_write = revision;
    }

    /// Checks that `got` is `key`'s state at revision `at` (the current replay state).
    fn check_kv(&mut self, found: &mut Findings, key: &str, got: Option<&Kv>, at: i64, what: &Op) {
        self.steps += 1;
        let replay = self.key(key).clone();
        let matches = match (&replay.state, got) {
            (KeyState::Absent, None) => true,
            (
                KeyState::Present {
                    value,
                    mod_revision,
                    create_revision,
                    version,
                },
                Some(kv),
            ) => {
                kv.value == Some(*value)
                    && kv.mod_revision == *mod_revision
                    && create_revision.is_none_or(|c| c == kv.create_revision)
                    && version.is_none_or(|v| v == kv.version)
            }
            (KeyState::Unknown, got) => {
                self.unknown_reads += 1;
                got.is_none_or(|kv| {
                    kv.mod_revision >= replay.last_known_write && kv.mod_revision <= at
                })
            }
            _ => false,
        };
        if !matches {
            found.note(format!(
                "process {}'s {:?} saw {key} as {got:?} at revision {at}, but it was {:?} \
                 (last known write at revision {})",
                what.process, what.call, replay.state, replay.last_known_write
            ));
        }
    }

    /// Applies the write `op` at `revision`, checking its reply against the state before it.
    fn apply(&mut self, found: &mut Findings, universe: &BTreeSet<String>, op: &Op, revision: i64) {
        let reply = match &op.outcome {
            Outcome::Ok { reply, .. } => Some(reply),
            _ => None,
        };
        let before = revision - 1;
        match &op.call {
            Call::Put { key, value } => {
                let prev = match reply {
                    Some(Reply::Put { prev }) => Some(prev),
                    _ => None,
                };
                if let Some(prev) = prev {
                    self.check_kv(found, key, prev.as_ref(), before, op);
                }
                self.put(key, *value, revision, prev);
            }
            Call::PutTxn { puts } => {
                for (key, value) in puts {
                    self.put(key, *value, revision, None);
                }
            }
            Call::Delete { key, range_end } => {
                let keys = keys_in(universe, key, range_end.as_deref());
                if let Some(Reply::Delete { deleted }) = reply {
                    for kv in deleted {
                        if !keys.contains(&&kv.key) {
                            found.note(format!(
                                "process {}'s {:?} deleted {kv:?}, outside its range",
                                op.process, op.call
                            ));
                        }
                    }
                    for k in &keys {
                        let got = deleted.iter().find(|kv| &&kv.key == k);
                        self.check_kv(found, k, got, before, op);
                    }
                }
                for k in keys {
                    self.delete(k, revision);
                }
            }
            Call::KvCas {
                key,
                expect_mod_revision,
                value,
                delete,
            } => {
                let held = match &self.key(key).state {
                    KeyState::Absent => Some(*expect_mod_revision == 0),
                    KeyState::Present { mod_revision, .. } => {
                        Some(mod_revision == expect_mod_revision)
                    }
                    KeyState::Unknown => None,
                };
                if held == Some(false) {
                    found.note(format!(
                        "process {}'s {:?} took effect at revision {revision}, but its compare \
                         was false there: {key} was {:?}",
                        op.process,
                        op.call,
                        self.key(key).state
                    ));
                }
                if let Some(Reply::KvCas { deleted, .. }) = reply {
                    self.check_kv(found, delete, deleted.first(), before, op);
                }
                self.put(key, *value, revision, None);
                self.delete(delete, revision);
            }
            _ => {}
        }
    }

    /// Checks a read-only answer `op` against the state at `at`.
    fn check_read(&mut self, found: &mut Findings, universe: &BTreeSet<String>, op: &Op, at: i64) {
        let Outcome::Ok { reply, .. } = &op.outcome else {
            return;
        };
        match (&op.call, reply) {
            (Call::KvRange { key, range_end, .. }, Reply::Kvs { kvs }) => {
                let keys = keys_in(universe, key, range_end.as_deref());
                for kv in kvs {
                    if !keys.contains(&&kv.key) {
                        found.note(format!(
                            "process {}'s {:?} returned {kv:?}, outside its range",
                            op.process, op.call
                        ));
                    }
                }
                for k in keys {
                    let got = kvs.iter().find(|kv| &kv.key == k);
                    self.check_kv(found, k, got, at, op);
                }
            }
            (Call::Delete { key, range_end }, _) => {
                for k in keys_in(universe, key, range_end.as_deref()) {
                    self.check_kv(found, k, None, at, op);
                }
            }
            (
                Call::KvCas {
                    key,
                    expect_mod_revision,
                    ..
                },
                Reply::KvCas { current, .. },
            ) => {
                let held = match &self.key(key).state {
                    KeyState::Absent => *expect_mod_revision == 0,
                    KeyState::Present { mod_revision, .. } => mod_revision == expect_mod_revision,
                    KeyState::Unknown => false,
                };
                if held {
                    found.note(format!(
                        "process {}'s {:?} failed its compare at revision {at}, but {key} was {:?}",
                        op.process,
                        op.call,
                        self.key(key).state
                    ));
                }
                self.check_kv(found, key, current.as_ref(), at, op);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a history of sequential ops, 10 ns apart.
    #[derive(Default)]
    struct History {
        ops: Vec<Op>,
    }

    fn kv(key: &str, value: Value, create_revision: i64, mod_revision: i64, version: i64) -> Kv {
        Kv {
            key: key.into(),
            value: Some(value),
            create_revision,
            mod_revision,
            version,
        }
    }

    impl History {
        fn push(&mut self, call: Call, outcome: Outcome) -> &mut History {
            let t = self.ops.len() as u64 * 10;
            let complete_ns = (outcome != Outcome::Info).then_some(t + 5);
            self.ops.push(Op {
                process: self.ops.len() as u64,
                call,
                outcome,
                invoke_ns: t,
                complete_ns,
            });
            self
        }
        fn ok(&mut self, call: Call, reply: Reply, revision: i64) -> &mut History {
            self.push(call, Outcome::Ok { reply, revision })
        }
        fn put(
            &mut self,
            key: &str,
            value: Value,
            prev: Option<Kv>,
            revision: i64,
        ) -> &mut History {
            let call = Call::Put {
                key: key.into(),
                value,
            };
            self.ok(call, Reply::Put { prev }, revision)
        }
        fn get(&mut self, key: &str, at: i64, kvs: Vec<Kv>, revision: i64) -> &mut History {
            let call = Call::KvRange {
                key: key.into(),
                range_end: None,
                revision: at,
            };
            self.ok(call, Reply::Kvs { kvs }, revision)
        }
    }

    /// k1 = 1 (rev 2), k1 = 2 (rev 3), reads now and of the past, a delete (rev 4), a
    /// conditional txn on k2 (rev 5), a failed one, an indeterminate put seen by a read (rev 6),
    /// a range of everything.
    fn valid() -> History {
        let mut h = History::default();
        h.put("k1", 1, None, 2)
            .put("k1", 2, Some(kv("k1", 1, 2, 2, 1)), 3)
            .get("k1", 0, vec![kv("k1", 2, 2, 3, 2)], 3)
            .get("k1", 2, vec![kv("k1", 1, 2, 2, 1)], 3)
            .ok(
                Call::Delete {
                    key: "k1".into(),
                    range_end: None,
                },
                Reply::Delete {
                    deleted: vec![kv("k1", 2, 2, 3, 2)],
                },
                4,
            )
            .ok(
                Call::KvCas {
                    key: "k2".into(),
                    expect_mod_revision: 0,
                    value: 5,
                    delete: "k1".into(),
                },
                Reply::KvCas {
                    succeeded: true,
                    deleted: vec![],
                    current: None,
                },
                5,
            )
            .ok(
                Call::KvCas {
                    key: "k2".into(),
                    expect_mod_revision: 0,
                    value: 6,
                    delete: "k1".into(),
                },
                Reply::KvCas {
                    succeeded: false,
                    deleted: vec![],
                    current: Some(kv("k2", 5, 5, 5, 1)),
                },
                5,
            )
            .push(
                Call::Put {
                    key: "k3".into(),
                    value: 9,
                },
                Outcome::Info,
            )
            .get("k3", 0, vec![kv("k3", 9, 6, 6, 1)], 6)
            .ok(
                Call::KvRange {
                    key: "k".into(),
                    range_end: Some("l".into()),
                    revision: 0,
                },
                Reply::Kvs {
                    kvs: vec![kv("k2", 5, 5, 5, 1), kv("k3", 9, 6, 6, 1)],
                },
                6,
            );
        h
    }

    fn verdict(h: &History) -> CheckResult {
        let result = check(&h.ops);
        println!("{result:?}");
        result
    }

    #[test]
    fn a_history_that_follows_revisions_is_valid() {
        let result = verdict(&valid());
        assert_eq!(result.verdict, Verdict::Valid);
        assert_eq!(result.stats["reads_checked"], 5);
        assert_eq!(result.stats["past_reads_checked"], 1);
        assert_eq!(result.stats["indeterminate_writes_placed"], 1);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let mut h = valid();
        h.get("k2", 0, vec![], 6);
        assert_eq!(verdict(&h).verdict, Verdict::Invalid);
    }

    #[test]
    fn a_read_of_the_past_that_sees_a_later_state_is_caught() {
        let mut h = valid();
        h.get("k1", 2, vec![kv("k1", 2, 2, 3, 2)], 6);
        assert_eq!(verdict(&h).verdict, Verdict::Invalid);
        // At revision 4 the key was deleted.
        let mut h = valid();
        h.get("k1", 4, vec![kv("k1", 2, 2, 3, 2)], 6);
        assert_eq!(verdict(&h).verdict, Verdict::Invalid);
    }

    #[test]
    fn a_wrong_version_or_prev_kv_is_caught() {
        let mut h = valid();
        h.get("k3", 0, vec![kv("k3", 9, 6, 6, 2)], 6);
        assert_eq!(verdict(&h).verdict, Verdict::Invalid);
        let mut h = History::default();
        h.put("k1", 1, None, 2)
            .put("k1", 2, None, 3)
            .get("k1", 0, vec![kv("k1", 2, 2, 3, 2)], 3);
        assert_eq!(verdict(&h).verdict, Verdict::Invalid);
    }

    #[test]
    fn a_txn_that_succeeded_against_its_compare_is_caught() {
        let mut h = valid();
        h.ok(
            Call::KvCas {
                key: "k2".into(),
                expect_mod_revision: 0,
                value: 7,
                delete: "k1".into(),
            },
            Reply::KvCas {
                succeeded: true,
                deleted: vec![],
                current: None,
            },
            7,
        )
        .get("k2", 0, vec![kv("k2", 7, 5, 7, 2)], 7);
        assert_eq!(verdict(&h).verdict, Verdict::Invalid);
    }

    #[test]
    fn two_writes_at_one_revision_and_unexplained_revisions_are_caught() {
        let mut h = History::default();
        h.put("k1", 1, None, 2)
            .put("k2", 2, None, 2)
            .get("k1", 0, vec![kv("k1", 1, 2, 2, 1)], 2);
        assert_eq!(verdict(&h).verdict, Verdict::Invalid);
        let mut h = History::default();
        h.put("k1", 1, None, 2)
            .put("k1", 2, Some(kv("k1", 1, 2, 2, 1)), 4)
            .get("k1", 0, vec![kv("k1", 2, 2, 4, 2)], 4);
        let result = verdict(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(result.anomalies[0].contains("no known write"), "{result:?}");
    }

    #[test]
    fn values_nobody_wrote_or_whose_write_failed_are_caught() {
        let mut h = valid();
        h.push(
            Call::Put {
                key: "k4".into(),
                value: 11,
            },
            Outcome::Fail,
        )
        .get("k4", 0, vec![kv("k4", 11, 7, 7, 1)], 7);
        assert_eq!(verdict(&h).verdict, Verdict::Invalid);
        let mut h = valid();
        h.get("k4", 0, vec![kv("k4", 12, 6, 6, 1)], 6);
        assert_eq!(verdict(&h).verdict, Verdict::Invalid);
    }

    /// An indeterminate write nobody observed explains a revision; the keys it may have written
    /// are unknown until a known write, so an old value is no anomaly, and a value older than
    /// the last known write still is.
    #[test]
    fn an_unobserved_indeterminate_write_makes_its_keys_unknown_not_wrong() {
        let mut h = History::default();
        h.put("k1", 1, None, 2)
            .push(
                Call::Put {
                    key: "k1".into(),
                    value: 2,
                },
                Outcome::Info,
            )
            .put("k2", 3, None, 4)
            .get("k1", 0, vec![kv("k1", 1, 2, 2, 1)], 4);
        let result = verdict(&h);
        assert_eq!(result.verdict, Verdict::Valid);
        assert_eq!(result.stats["key_reads_of_unknown_state"], 1);
        assert_eq!(result.stats["revisions_unexplained"], 1);

        h.put("k1", 4, Some(kv("k1", 1, 2, 2, 1)), 5)
            .get("k1", 0, vec![kv("k1", 1, 2, 2, 1)], 5);
        assert_eq!(verdict(&h).verdict, Verdict::Invalid);
    }

    #[test]
    fn an_exhausted_budget_or_no_read_is_unknown_never_a_pass() {
        let h = valid();
        let result = check_with_budget(&h.ops, 10);
        assert_eq!(result.verdict, Verdict::Unknown, "{result:?}");
        let mut h = History::default();
        h.put("k1", 1, None, 2);
        assert_eq!(verdict(&h).verdict, Verdict::Unknown);
    }
}
