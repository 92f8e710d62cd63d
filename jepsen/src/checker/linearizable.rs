//! Linearizability of per-key versioned registers: a Wing–Gong–Lowe search (porcupine's
//! algorithm) with a cache of visited (linearized set, state) configurations, one search per key
//! (P-compositionality: a history of independent registers is linearizable iff every key's
//! sub-history is).
//!
//! The model is Jepsen's VersionedRegister, sharpened with what etcd returns: a register's state
//! is its value and its etcd `version`; a put reports the version it replaced (`prev_kv`), so a
//! write lost or applied twice moves the version off by one and shows up even when values agree.
//!
//! Semantics of outcomes: `fail` ops never happened and are dropped; `info` writes may take
//! effect at any point after their invocation, or never (their return is at +∞, so the search
//! may place them last, where they change nothing that was observed); `info` reads are dropped.
//! The search has a step budget per key; running out answers `Unknown`.
//!
//! Symmetry reduction: indeterminate writes are what make the search explode (each may apply
//! anywhere after its invocation, or never). An indeterminate put or CAS whose unique value no
//! read ever returned and no CAS ever expected is indistinguishable from any other such op with
//! the same expectation once both have been invoked, so the cache counts those ops per class
//! instead of naming them, and their value becomes one unobservable [`UNSEEN`] value. Two
//! configurations that differ only in which members of a class were linearized are equivalent:
//! every linearized member was callable when placed, so the members left are the same up to
//! renaming.

use std::collections::{BTreeMap, HashSet};

use super::{CheckResult, Verdict, ANOMALIES_REPORTED_MAX};
use crate::history::{Call, Op, Outcome, Reply, Versioned};

/// Search steps allowed per key before the answer is `Unknown`.
pub const STEPS_PER_KEY_MAX: u64 = 20_000_000;

/// The value given to indeterminate writes whose value nobody observed; never written.
const UNSEEN: u64 = u64::MAX - 1;

/// A register: `None` while the key does not exist.
type State = Option<Versioned>;

/// A call reduced to what the model needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelOp {
    Read(State),
    /// `prev_version` is `None` when the outcome is unknown.
    Write {
        value: u64,
        prev_version: Option<u64>,
    },
    /// `result` is `None` when the outcome is unknown, else `(succeeded, prev_version)`.
    Cas {
        expect: u64,
        value: u64,
        result: Option<(bool, u64)>,
    },
}

/// The sequential specification: the state after `op`, or `None` if `op` cannot happen in `state`.
fn step(state: State, op: ModelOp) -> Option<State> {
    let version = state.map_or(0, |s| s.version);
    match op {
        ModelOp::Read(seen) => (seen == state).then_some(state),
        ModelOp::Write {
            value,
            prev_version,
        } => {
            if prev_version.is_some_and(|p| p != version) {
                return None;
            }
            Some(Some(Versioned {
                value,
                version: version + 1,
            }))
        }
        ModelOp::Cas {
            expect,
            value,
            result,
        } => {
            let matches = state.is_some_and(|s| s.value == expect);
            let applied = Some(Versioned {
                value,
                version: version + 1,
            });
            match result {
                None => Some(if matches { applied } else { state }),
                Some((true, prev)) => (matches && prev == version).then_some(applied),
                Some((false, _)) => (!matches).then_some(state),
            }
        }
    }
}

/// An op of one key's sub-history, ready for the search.
#[derive(Clone, Debug)]
struct KeyOp {
    model: ModelOp,
    invoke_ns: u64,
    /// `u64::MAX` for indeterminate ops.
    return_ns: u64,
    /// The op's index in the full paired history, for reports.
    history_at: usize,
    /// For unobserved indeterminate writes: their equivalence class (see the module docs).
    class: Option<usize>,
}

/// Reduces an op to the model, or `None` if it is irrelevant (failed, or an indeterminate read).
fn model_op(op: &Op) -> Option<ModelOp> {
    match (&op.call, &op.outcome) {
        (_, Outcome::Fail) | (Call::Read { .. }, Outcome::Info) => None,
        (
            Call::Read { .. },
            Outcome::Ok {
                reply: Reply::Read { found, .. },
                ..
            },
        ) => Some(ModelOp::Read(*found)),
        (Call::Write { value, .. }, Outcome::Info) => Some(ModelOp::Write {
            value: *value,
            prev_version: None,
        }),
        (
            Call::Write { value, .. },
            Outcome::Ok {
                reply: Reply::Write { prev_version },
                ..
            },
        ) => Some(ModelOp::Write {
            value: *value,
            prev_version: Some(*prev_version),
        }),
        (Call::Cas { expect, value, .. }, Outcome::Info) => Some(ModelOp::Cas {
            expect: *expect,
            value: *value,
            result: None,
        }),
        (
            Call::Cas { expect, value, .. },
            Outcome::Ok {
                reply:
                    Reply::Cas {
                        succeeded,
                        prev_version,
                    },
                ..
            },
        ) => Some(ModelOp::Cas {
            expect: *expect,
            value: *value,
            result: Some((*succeeded, *prev_version)),
        }),
        _ => None,
    }
}

/// The answer for one key.
#[derive(Debug, PartialEq, Eq)]
enum KeyVerdict {
    Linearizable,
    /// The longest linearizable prefix found, and the op that could not be placed after it.
    Illegal {
        linearized: usize,
        stuck_history_at: usize,
    },
    Unknown,
}

/// A fixed-size bitset over a key's ops.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

const NIL: usize = usize::MAX;

/// An entry of the doubly linked list of calls and returns, in time order.
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call: its return entry.
    matching: usize,
    prev: usize,
    next: usize,
}

/// How the search remembers visited configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cache {
    /// 128-bit Zobrist hashes: fast; a collision could only prune a configuration never seen,
    /// i.e. turn a linearizable key into a false `Illegal`, so `Illegal` is re-checked `Exact`.
    Hashed,
    /// The linearized set verbatim.
    Exact,
}

/// Zobrist key space of single ops; classes use their index (always below it).
const OP_SPACE: u64 = u64::MAX;

/// A pseudo-random 128-bit key for (`space`, `n`): two rounds of splitmix64.
fn zobrist(space: u64, n: u32) -> u128 {
    fn splitmix64(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let seed = splitmix64(space) ^ u64::from(n).rotate_left(17);
    let high = splitmix64(seed);
    let low = splitmix64(high ^ 0x5851_F42D_4C95_7F2D);
    (u128::from(high) << 64) | u128::from(low)
}

/// WGL/Lowe search over one key's ops (porcupine's `checkSingle`).
fn check_key(ops: &[KeyOp], steps_max: u64, cache: Cache) -> KeyVerdict {
    // Entry 0 is the list head. Calls sort before returns at the same instant, so touching
    // intervals count as concurrent (closed intervals, as porcupine).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke_ns, false, i));
        events.push((op.return_ns, true, i));
    }
    events.sort_by_key(|&(t, is_return, i)| (t, is_return, i));
    let mut entries = vec![Entry {
        op: NIL,
        is_call: false,
        matching: NIL,
        prev: NIL,
        next: NIL,
    }];
    let mut call_entry = vec![NIL; ops.len()];
    for &(_, is_return, op) in &events {
        let at = entries.len();
        let prev = at - 1;
        entries[prev].next = at;
        entries.push(Entry {
            op,
            is_call: !is_return,
            matching: NIL,
            prev,
            next: NIL,
        });
        if is_return {
            entries[call_entry[op]].matching = at;
        } else {
            call_entry[op] = at;
        }
    }

    fn lift(entries: &mut [Entry], e: usize) {
        let (prev, next, m) = (entries[e].prev, entries[e].next, entries[e].matching);
        entries[prev].next = next;
        entries[next].prev = prev;
        let (mprev, mnext) = (entries[m].prev, entries[m].next);
        entries[mprev].next = mnext;
        if mnext != NIL {
            entries[mnext].prev = mprev;
        }
    }
    fn unlift(entries: &mut [Entry], e: usize) {
        let m = entries[e].matching;
        let (mprev, mnext) = (entries[m].prev, entries[m].next);
        entries[mprev].next = m;
        if mnext != NIL {
            entries[mnext].prev = m;
        }
        let (prev, next) = (entries[e].prev, entries[e].next);
        entries[prev].next = e;
        entries[next].prev = e;
    }

    // The cache key of a configuration: the linearized ops outside any class, how many of each
    // class are linearized, and the state. `Cache::Hashed` keeps a 128-bit Zobrist hash of the
    // first two instead (no allocation per step); `Cache::Exact` keeps them verbatim.
    let classes = ops
        .iter()
        .filter_map(|op| op.class)
        .max()
        .map_or(0, |c| c + 1);
    let mut linearized = Bits::new(ops.len());
    let mut counts = vec![0u32; classes];
    let mut hash: u128 = 0;
    let mut exact_cache: HashSet<(Bits, Vec<u32>, State)> = HashSet::new();
    let mut hashed_cache: HashSet<(u128, State)> = HashSet::new();
    let mut stack: Vec<(usize, State, u128)> = Vec::new();
    let mut state: State = None;
    let mut deepest = (0, NIL);
    let mut steps = 0u64;
    let mut entry = entries[0].next;
    while entries[0].next != NIL {
        steps += 1;
        if steps > steps_max {
            return KeyVerdict::Unknown;
        }
        if entries[entry].is_call {
            let op = entries[entry].op;
            if let Some(next_state) = step(state, ops[op].model) {
                let next_hash = hash
                    ^ match ops[op].class {
                        Some(c) => zobrist(c as u64, counts[c]) ^ zobrist(c as u64, counts[c] + 1),
                        None => zobrist(OP_SPACE, op as u32),
                    };
                let fresh = match cache {
                    Cache::Hashed => hashed_cache.insert((next_hash, next_state)),
                    Cache::Exact => {
                        let mut bits = linearized.clone();
                        let mut class_counts = counts.clone();
                        match ops[op].class {
                            Some(c) => class_counts[c] += 1,
                            None => bits.set(op),
                        }
                        exact_cache.insert((bits, class_counts, next_state))
                    }
                };
                if fresh {
                    stack.push((entry, state, hash));
                    state = next_state;
                    hash = next_hash;
                    match ops[op].class {
                        Some(c) => counts[c] += 1,
                        None => linearized.set(op),
                    }
                    lift(&mut entries, entry);
                    entry = entries[0].next;
                    continue;
                }
            }
            entry = entries[entry].next;
        } else {
            if deepest.1 == NIL || stack.len() > deepest.0 {
                deepest = (stack.len(), entries[entry].op);
            }
            let Some((call, prev_state, prev_hash)) = stack.pop() else {
                return KeyVerdict::Illegal {
                    linearized: deepest.0,
                    stuck_history_at: ops[deepest.1].history_at,
                };
            };
            state = prev_state;
            hash = prev_hash;
            let op = entries[call].op;
            match ops[op].class {
                Some(c) => counts[c] -= 1,
                None => linearized.clear(op),
            }
            unlift(&mut entries, call);
            entry = entries[call].next;
        }
    }
    KeyVerdict::Linearizable
}

/// Puts every indeterminate write whose value nobody observed into an equivalence class:
/// puts all in one, CASes by expected value (see the module docs).
fn classify_unseen_writes(ops: &mut [KeyOp]) {
    let mut observed: HashSet<u64> = HashSet::new();
    for op in ops.iter() {
        match op.model {
            ModelOp::Read(Some(seen)) => {
                observed.insert(seen.value);
            }
            ModelOp::Cas { expect, .. } => {
                observed.insert(expect);
            }
            _ => {}
        }
    }
    let mut classes: BTreeMap<Option<u64>, usize> = BTreeMap::new();
    for op in ops.iter_mut() {
        let expect = match &mut op.model {
            ModelOp::Write {
                value,
                prev_version: None,
            } if !observed.contains(value) => {
                *value = UNSEEN;
                None
            }
            ModelOp::Cas {
                expect,
                value,
                result: None,
            } if !observed.contains(value) => {
                *value = UNSEEN;
                Some(*expect)
            }
            _ => continue,
        };
        let next = classes.len();
        op.class = Some(*classes.entry(expect).or_insert(next));
    }
}

/// Each key's ops, reduced to the model, with unobserved indeterminate writes classified.
fn key_ops(history: &[Op]) -> BTreeMap<&str, Vec<KeyOp>> {
    let mut by_key: BTreeMap<&str, Vec<KeyOp>> = BTreeMap::new();
    for (at, op) in history.iter().enumerate() {
        let (Some(key), Some(model)) = (op.call.key(), model_op(op)) else {
            continue;
        };
        by_key.entry(key).or_default().push(KeyOp {
            model,
            invoke_ns: op.invoke_ns,
            return_ns: op.complete_ns.unwrap_or(u64::MAX),
            history_at: at,
            class: None,
        });
    }
    for ops in by_key.values_mut() {
        classify_unseen_writes(ops);
    }
    by_key
}

/// Threads that search keys at once.
const CHECK_THREADS_MAX: usize = 4;

/// Searches every key, on up to [`CHECK_THREADS_MAX`] threads; verdicts in key order.
fn check_keys_in_parallel(keys: &[(&str, Vec<KeyOp>)], steps_max: u64) -> Vec<KeyVerdict> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, CHECK_THREADS_MAX);
    let next = AtomicUsize::new(0);
    let verdicts: Mutex<Vec<Option<KeyVerdict>>> =
        Mutex::new((0..keys.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let at = next.fetch_add(1, Ordering::Relaxed);
                let Some((_, ops)) = keys.get(at) else {
                    return;
                };
                let verdict = match check_key(ops, steps_max, Cache::Hashed) {
                    KeyVerdict::Illegal { .. } => check_key(ops, steps_max, Cache::Exact),
                    verdict => verdict,
                };
                verdicts.lock().expect("no thread panics holding it")[at] = Some(verdict);
            });
        }
    });
    verdicts
        .into_inner()
        .expect("no thread panics holding it")
        .into_iter()
        .map(|v| v.expect("every key was searched"))
        .collect()
}

/// Checks every register key of `history` independently.
pub fn check(history: &[Op]) -> CheckResult {
    check_with_budget(history, STEPS_PER_KEY_MAX)
}

fn check_with_budget(history: &[Op], steps_per_key_max: u64) -> CheckResult {
    let by_key = key_ops(history);
    let keys: Vec<(&str, Vec<KeyOp>)> = by_key.into_iter().collect();
    let verdicts = check_keys_in_parallel(&keys, steps_per_key_max);
    let mut verdict = Verdict::Valid;
    let mut anomalies = Vec::new();
    let mut ops_checked = 0;
    for ((key, ops), key_verdict) in keys.iter().zip(verdicts) {
        ops_checked += ops.len();
        let (this, note) = match key_verdict {
            KeyVerdict::Linearizable => (Verdict::Valid, None),
            KeyVerdict::Illegal {
                linearized,
                stuck_history_at,
            } => {
                let op = &history[stuck_history_at];
                (
                    Verdict::Invalid,
                    Some(format!(
                        "key {key:?}: not linearizable; longest linearizable prefix has \
                         {linearized} of {} ops, then cannot place process {}'s {:?} -> {:?} \
                         (invoked at {} ns)",
                        ops.len(),
                        op.process,
                        op.call,
                        op.outcome,
                        op.invoke_ns
                    )),
                )
            }
            KeyVerdict::Unknown => (
                Verdict::Unknown,
                Some(format!(
                    "key {key:?}: search of {} ops exceeded {steps_per_key_max} steps",
                    ops.len()
                )),
            ),
        };
        verdict = verdict.and(this);
        if let Some(note) = note {
            if anomalies.len() < ANOMALIES_REPORTED_MAX {
                anomalies.push(note);
            }
        }
    }
    CheckResult {
        checker: "linearizable".into(),
        verdict,
        anomalies,
        stats: serde_json::json!({ "keys": keys.len(), "ops": ops_checked }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(value: u64, version: u64) -> Option<Versioned> {
        Some(Versioned { value, version })
    }

    /// Builds an op on key "k" from `(process, invoke, complete, call, outcome)`.
    fn op(process: u64, invoke: u64, complete: Option<u64>, call: Call, outcome: Outcome) -> Op {
        Op {
            process,
            call,
            outcome,
            invoke_ns: invoke,
            complete_ns: complete,
        }
    }

    fn read(p: u64, t0: u64, t1: u64, found: Option<Versioned>) -> Op {
        op(
            p,
            t0,
            Some(t1),
            Call::Read { key: "k".into() },
            Outcome::Ok {
                reply: Reply::Read {
                    found,
                    mod_revision: 0,
                },
                revision: 0,
            },
        )
    }

    fn write(p: u64, t0: u64, t1: u64, value: u64, prev_version: u64) -> Op {
        op(
            p,
            t0,
            Some(t1),
            Call::Write {
                key: "k".into(),
                value,
            },
            Outcome::Ok {
                reply: Reply::Write { prev_version },
                revision: 0,
            },
        )
    }

    fn write_info(p: u64, t0: u64, value: u64) -> Op {
        op(
            p,
            t0,
            None,
            Call::Write {
                key: "k".into(),
                value,
            },
            Outcome::Info,
        )
    }

    fn cas(p: u64, t0: u64, t1: u64, expect: u64, value: u64, result: (bool, u64)) -> Op {
        op(
            p,
            t0,
            Some(t1),
            Call::Cas {
                key: "k".into(),
                expect,
                value,
            },
            Outcome::Ok {
                reply: Reply::Cas {
                    succeeded: result.0,
                    prev_version: result.1,
                },
                revision: 0,
            },
        )
    }

    fn verdict(history: &[Op]) -> Verdict {
        check(history).verdict
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            read(1, 0, 1, None),
            write(1, 2, 3, 10, 0),
            read(2, 4, 5, v(10, 1)),
            cas(2, 6, 7, 10, 11, (true, 1)),
            cas(1, 8, 9, 10, 12, (false, 0)),
            read(1, 10, 11, v(11, 2)),
        ];
        assert_eq!(verdict(&h), Verdict::Valid);
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_a_write() {
        // The write spans both reads, so one may see the old and one the new state, in that order.
        let h = vec![
            write(1, 0, 1, 10, 0),
            write(1, 2, 20, 11, 1),
            read(2, 3, 5, v(10, 1)),
            read(3, 6, 8, v(11, 2)),
        ];
        assert_eq!(verdict(&h), Verdict::Valid);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = vec![
            write(1, 0, 1, 10, 0),
            write(1, 2, 3, 11, 1),
            // Starts after the second write returned, yet sees the first value.
            read(2, 4, 5, v(10, 1)),
        ];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(
            result.anomalies[0].contains("not linearizable"),
            "{result:?}"
        );
    }

    #[test]
    fn reads_going_back_in_time_are_caught() {
        // Two sequential reads by different processes concurrent with one write: new then old.
        let h = vec![
            write(1, 0, 1, 10, 0),
            write(1, 2, 30, 11, 1),
            read(2, 3, 5, v(11, 2)),
            read(3, 6, 8, v(10, 1)),
        ];
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    #[test]
    fn a_lost_version_is_caught_even_when_values_agree() {
        // The second put claims to replace version 2, but only one put happened before it.
        let h = vec![write(1, 0, 1, 10, 0), write(1, 2, 3, 11, 2)];
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    #[test]
    fn indeterminate_writes_may_apply_late_or_never() {
        // Never observed: fine.
        let never = vec![
            write(1, 0, 1, 10, 0),
            write_info(2, 2, 11),
            read(3, 50, 51, v(10, 1)),
        ];
        assert_eq!(verdict(&never), Verdict::Valid);
        // Observed long after the client gave up: fine too.
        let late = vec![
            write(1, 0, 1, 10, 0),
            write_info(2, 2, 11),
            read(3, 50, 51, v(10, 1)),
            read(3, 60, 61, v(11, 2)),
        ];
        assert_eq!(verdict(&late), Verdict::Valid);
        // But it cannot take effect before it was invoked.
        let early = vec![
            write(1, 0, 1, 10, 0),
            read(3, 2, 3, v(11, 2)),
            write_info(2, 4, 11),
        ];
        assert_eq!(verdict(&early), Verdict::Invalid);
    }

    #[test]
    fn failed_ops_are_dropped_and_a_failed_write_seen_is_caught() {
        let failed = op(
            2,
            2,
            Some(3),
            Call::Write {
                key: "k".into(),
                value: 11,
            },
            Outcome::Fail,
        );
        let h = vec![
            write(1, 0, 1, 10, 0),
            failed.clone(),
            read(3, 4, 5, v(10, 1)),
        ];
        assert_eq!(verdict(&h), Verdict::Valid);
        let h = vec![write(1, 0, 1, 10, 0), failed, read(3, 4, 5, v(11, 2))];
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    #[test]
    fn cas_outcome_must_match_the_state() {
        // A CAS that reports failure while the value matched.
        let h = vec![write(1, 0, 1, 10, 0), cas(2, 2, 3, 10, 11, (false, 0))];
        assert_eq!(verdict(&h), Verdict::Invalid);
        // An indeterminate CAS whose expected value never matched cannot have applied.
        let h = vec![
            write(1, 0, 1, 10, 0),
            op(
                2,
                2,
                None,
                Call::Cas {
                    key: "k".into(),
                    expect: 99,
                    value: 11,
                },
                Outcome::Info,
            ),
            read(3, 10, 11, v(11, 2)),
        ];
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = write(5, 0, 1, 10, 0);
        other.call = Call::Write {
            key: "other".into(),
            value: 10,
        };
        let h = vec![other, read(1, 2, 3, None)];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Valid);
        assert_eq!(result.stats["keys"], 2);
    }

    #[test]
    fn running_out_of_budget_is_unknown_not_valid() {
        // Many concurrent indeterminate writes then a read of one of them: a large search.
        let mut h = vec![write(0, 0, 1, 1, 0)];
        for p in 1..=12 {
            h.push(write_info(p, 2 + p, 100 + p));
        }
        h.push(read(99, 100, 101, v(112, 13)));
        assert_eq!(check_with_budget(&h, 5).verdict, Verdict::Unknown);
        assert_eq!(check(&h).verdict, Verdict::Valid);
    }

    #[test]
    fn many_unobserved_indeterminate_writes_stay_cheap() {
        // 40 concurrent indeterminate puts nobody read: without symmetry reduction 2^40
        // configurations; with it, 41 counts.
        let mut h = vec![write(0, 0, 1, 1, 0)];
        for p in 1..=40 {
            h.push(write_info(p, 2, 100 + p));
        }
        // A later put saw 30 of them applied: possible.
        h.push(write(99, 50, 51, 500, 31));
        h.push(read(99, 52, 53, v(500, 32)));
        assert_eq!(check_with_budget(&h, 100_000).verdict, Verdict::Valid);
        // A stale read of the first value after that put returned: impossible, and decided.
        h.push(read(98, 60, 61, v(1, 1)));
        assert_eq!(check_with_budget(&h, 100_000).verdict, Verdict::Invalid);
    }

    #[test]
    fn unobserved_indeterminate_writes_still_count_towards_versions() {
        let mut h = vec![write(0, 0, 1, 1, 0)];
        for p in 1..=3 {
            h.push(write_info(p, 2, 100 + p));
        }
        // At most 3 of them can have applied before this put: version 1 + 3 = 4.
        h.push(write(99, 50, 51, 500, 4));
        assert_eq!(verdict(&h), Verdict::Valid);
        h.pop();
        h.push(write(99, 50, 51, 500, 5));
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    #[test]
    fn indeterminate_cas_classes_respect_their_expectation() {
        // Two indeterminate CASes expecting 1 (the current value): at most one can apply, since
        // the first changes the value. A put that saw version 3 needs both: impossible.
        let cas_info = |p: u64, value: u64| {
            op(
                p,
                2,
                None,
                Call::Cas {
                    key: "k".into(),
                    expect: 1,
                    value,
                },
                Outcome::Info,
            )
        };
        let mut h = vec![write(0, 0, 1, 1, 0), cas_info(1, 101), cas_info(2, 102)];
        h.push(write(99, 50, 51, 500, 2));
        assert_eq!(verdict(&h), Verdict::Valid);
        h.pop();
        h.push(write(99, 50, 51, 500, 3));
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    #[test]
    fn hashed_and_exact_caches_agree() {
        let mut h = vec![write(0, 0, 1, 1, 0)];
        for p in 1..=8 {
            h.push(write_info(p, 2, 100 + p));
            h.push(read(50 + p, 2 + p, 20 + p, v(100 + p, 2)));
        }
        let ops = &key_ops(&h)["k"];
        for cache in [Cache::Hashed, Cache::Exact] {
            assert!(matches!(
                check_key(ops, 1_000_000, cache),
                KeyVerdict::Illegal { .. }
            ));
        }
        h.truncate(3);
        let ops = &key_ops(&h)["k"];
        for cache in [Cache::Hashed, Cache::Exact] {
            assert_eq!(check_key(ops, 1_000_000, cache), KeyVerdict::Linearizable);
        }
    }

    /// A larger valid history: a simulated atomic register with overlapping ops must pass.
    #[test]
    fn simulated_atomic_register_passes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut state: State = None;
        let mut next_value = 1;
        let mut h = Vec::new();
        // The state each op saw when it took effect.
        let mut states = Vec::new();
        // Each op takes effect at its own instant `t`, inside an interval around it.
        for t in (10..4000u64).step_by(10) {
            let p = rng.random_range(0..5u64) + 100 * t; // a fresh process per op
            let t0 = t - rng.random_range(0..9);
            let t1 = t + rng.random_range(0..25);
            let version = state.map_or(0, |s| s.version);
            states.push(state);
            let op = match rng.random_range(0..3) {
                0 => read(p, t0, t1, state),
                1 => {
                    next_value += 1;
                    state = v(next_value, version + 1);
                    write(p, t0, t1, next_value, version)
                }
                _ => {
                    let expect = state.map_or(0, |s| s.value);
                    next_value += 1;
                    let succeeded = state.is_some() && rng.random_bool(0.5);
                    let expect = if succeeded {
                        expect
                    } else {
                        expect + 1_000_000
                    };
                    if succeeded {
                        state = v(next_value, version + 1);
                    }
                    cas(p, t0, t1, expect, next_value, (succeeded, version))
                }
            };
            h.push(op);
        }
        assert_eq!(verdict(&h), Verdict::Valid);
        // Now make the last read return a state from long before: must be caught.
        let at = h
            .iter()
            .rposition(|o| matches!(o.call, Call::Read { .. }))
            .unwrap();
        let stale = states[at / 2];
        assert_ne!(stale, states[at]);
        if let Outcome::Ok {
            reply: Reply::Read { found, .. },
            ..
        } = &mut h[at].outcome
        {
            *found = stale;
        }
        assert_eq!(verdict(&h), Verdict::Invalid);
    }
}
