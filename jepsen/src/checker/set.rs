//! Jepsen's `set-full` checker, linearizable flavour (for `set`, and the lock workloads, whose
//! `LockAdd`s and `LockRead`s are adds and reads of one set): once an element is known to be in the set
//! (its add was acknowledged, or some read returned it), every read that *starts* afterwards must
//! contain it.
//!
//! Per element it reports:
//! - **lost**: known, yet absent from the last read that began after it became known (and from
//!   every later one);
//! - **stale**: absent from a read that began after it became known, but present in a later read;
//! - **unexpected**: read but never added, or read although its add definitely failed;
//! - **duplicated**: returned twice by one read;
//! - **never read**: acknowledged, but no read began after the acknowledgement; with such
//!   elements and nothing worse the verdict is `Unknown`, because nothing was checked for them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{CheckResult, Verdict, ANOMALIES_REPORTED_MAX};
use crate::history::{Call, Op, Outcome, Reply, Value};

/// What happened to one add.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AddOutcome {
    Ok { complete_ns: u64 },
    Fail,
    Info,
}

/// A successful read of the whole set.
struct SetRead {
    invoke_ns: u64,
    complete_ns: u64,
    /// Sorted.
    elements: Vec<Value>,
}

/// Checks every `Add` and `ReadSet` of `history`.
pub fn check(history: &[Op]) -> CheckResult {
    let mut adds: BTreeMap<Value, AddOutcome> = BTreeMap::new();
    let mut reads: Vec<SetRead> = Vec::new();
    let mut duplicated: BTreeSet<Value> = BTreeSet::new();
    for op in history {
        match (&op.call, &op.outcome) {
            (Call::Add { element } | Call::LockAdd { element, .. }, outcome) => {
                let add = match outcome {
                    Outcome::Ok { .. } => AddOutcome::Ok {
                        complete_ns: op.complete_ns.expect("an ok op has completed"),
                    },
                    Outcome::Fail => AddOutcome::Fail,
                    Outcome::Info => AddOutcome::Info,
                };
                adds.insert(*element, add);
            }
            (
                Call::ReadSet | Call::LockRead,
                Outcome::Ok {
                    reply: Reply::ReadSet { elements },
                    ..
                },
            ) => {
                let mut elements = elements.clone();
                elements.sort_unstable();
                for pair in elements.windows(2) {
                    if pair[0] == pair[1] {
                        duplicated.insert(pair[0]);
                    }
                }
                elements.dedup();
                reads.push(SetRead {
                    invoke_ns: op.invoke_ns,
                    complete_ns: op.complete_ns.expect("an ok op has completed"),
                    elements,
                });
            }
            _ => {}
        }
    }
    reads.sort_by_key(|r| r.invoke_ns);

    let mut lost = Vec::new();
    let mut stale = Vec::new();
    let mut unexpected = Vec::new();
    let mut never_read = Vec::new();
    let mut ok_adds = 0;
    // For each element, the reads (indexes in invocation order) that returned it. Linear in the
    // size of all reads together.
    let mut present_in: HashMap<Value, Vec<usize>> = HashMap::new();
    for (at, read) in reads.iter().enumerate() {
        for &element in &read.elements {
            present_in.entry(element).or_default().push(at);
        }
    }
    let mut all_elements: BTreeSet<Value> = adds.keys().copied().collect();
    all_elements.extend(present_in.keys().copied());
    let no_reads = Vec::new();
    for element in all_elements {
        let present = present_in.get(&element).unwrap_or(&no_reads);
        let first_seen_ns = present.iter().map(|&at| reads[at].complete_ns).min();
        let add = adds.get(&element).copied();
        match add {
            None => {
                unexpected.push(format!("{element} was read but never added"));
                continue;
            }
            Some(AddOutcome::Fail) if first_seen_ns.is_some() => {
                unexpected.push(format!("{element} was read although its add failed"));
                continue;
            }
            Some(AddOutcome::Ok { .. }) => ok_adds += 1,
            _ => {}
        }
        let ack_ns = match add {
            Some(AddOutcome::Ok { complete_ns }) => Some(complete_ns),
            _ => None,
        };
        let Some(known_ns) = [ack_ns, first_seen_ns].into_iter().flatten().min() else {
            continue;
        };
        // Reads [first_after, len) began after the element was known.
        let first_after = reads.partition_point(|r| r.invoke_ns <= known_ns);
        if first_after == reads.len() {
            if ack_ns.is_some() {
                never_read.push(element);
            }
            continue;
        }
        let present_after = &present[present.partition_point(|&at| at < first_after)..];
        match present_after.last() {
            Some(&last) if last + 1 == reads.len() => {
                // Present at the end; any gap in between is a stale read.
                let missing = (first_after..)
                    .zip(present_after)
                    .find(|(expected, &at)| *expected != at)
                    .map(|(expected, _)| expected);
                if let Some(miss) = missing {
                    stale.push(format!(
                        "{element} known at {known_ns} ns, missing from the read invoked at {} ns, \
                         present later",
                        reads[miss].invoke_ns
                    ));
                }
            }
            last => lost.push(format!(
                "{element} known at {known_ns} ns, missing from all {} reads invoked after \
                 {} ns",
                reads.len() - last.map_or(first_after, |&l| l + 1),
                last.map_or(known_ns, |&l| reads[l].invoke_ns)
            )),
        }
    }

    let invalid =
        !(lost.is_empty() && stale.is_empty() && unexpected.is_empty() && duplicated.is_empty());
    let verdict = if invalid {
        Verdict::Invalid
    } else if !never_read.is_empty() || reads.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    let mut anomalies: Vec<String> = Vec::new();
    for (kind, list) in [
        ("lost", &lost),
        ("stale", &stale),
        ("unexpected", &unexpected),
    ] {
        for note in list.iter().take(ANOMALIES_REPORTED_MAX) {
            anomalies.push(format!("{kind}: {note}"));
        }
    }
    for element in duplicated.iter().take(ANOMALIES_REPORTED_MAX) {
        anomalies.push(format!("duplicated: {element} returned twice by one read"));
    }
    if !never_read.is_empty() {
        anomalies.push(format!(
            "never read: {} acknowledged elements had no read begin after their add (e.g. {:?})",
            never_read.len(),
            &never_read[..never_read.len().min(5)]
        ));
    }
    if reads.is_empty() {
        anomalies.push("no successful read of the set".into());
    }
    CheckResult {
        checker: "set-full".into(),
        verdict,
        anomalies,
        stats: serde_json::json!({
            "attempted": adds.len(),
            "acknowledged": ok_adds,
            "reads": reads.len(),
            "lost": lost.len(),
            "stale": stale.len(),
            "unexpected": unexpected.len(),
            "duplicated": duplicated.len(),
            "never_read": never_read.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(element: Value, t0: u64, t1: u64, outcome: Outcome) -> Op {
        Op {
            process: element,
            call: Call::Add { element },
            complete_ns: (outcome != Outcome::Info).then_some(t1),
            outcome,
            invoke_ns: t0,
        }
    }

    fn ok_add(element: Value, t0: u64, t1: u64) -> Op {
        add(
            element,
            t0,
            t1,
            Outcome::Ok {
                reply: Reply::Add,
                revision: 0,
            },
        )
    }

    fn read(t0: u64, t1: u64, elements: &[Value]) -> Op {
        Op {
            process: 1000,
            call: Call::ReadSet,
            outcome: Outcome::Ok {
                reply: Reply::ReadSet {
                    elements: elements.to_vec(),
                },
                revision: 0,
            },
            invoke_ns: t0,
            complete_ns: Some(t1),
        }
    }

    #[test]
    fn every_acknowledged_element_read_is_valid() {
        let h = vec![
            ok_add(1, 0, 1),
            read(0, 2, &[]), // concurrent with the add: may miss it
            ok_add(2, 3, 4),
            add(3, 5, 0, Outcome::Info),
            add(4, 5, 6, Outcome::Fail),
            read(7, 8, &[1, 2]),
            read(9, 10, &[1, 2, 3]), // the indeterminate add took effect late: fine
        ];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Valid, "{result:?}");
        assert_eq!(result.stats["acknowledged"], 2);
    }

    #[test]
    fn a_lost_acknowledged_add_is_caught() {
        let h = vec![
            ok_add(1, 0, 1),
            ok_add(2, 0, 1),
            read(2, 3, &[1, 2]),
            read(4, 5, &[1]), // 2 vanished for good
        ];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(result.stats["lost"], 1);
        assert!(result.anomalies[0].starts_with("lost: 2 "), "{result:?}");
    }

    #[test]
    fn an_acknowledged_add_never_seen_is_lost() {
        let h = vec![ok_add(1, 0, 1), read(2, 3, &[])];
        assert_eq!(check(&h).stats["lost"], 1);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let h = vec![ok_add(1, 0, 1), read(2, 3, &[]), read(4, 5, &[1])];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(result.stats["stale"], 1);
    }

    #[test]
    fn an_element_read_once_then_missing_is_lost_even_if_its_add_was_indeterminate() {
        let h = vec![
            add(1, 0, 0, Outcome::Info),
            read(1, 2, &[1]),
            read(3, 4, &[]),
        ];
        assert_eq!(check(&h).stats["lost"], 1);
    }

    #[test]
    fn unexpected_and_duplicated_elements_are_caught() {
        let h = vec![
            add(1, 0, 1, Outcome::Fail),
            read(2, 3, &[1]),
            read(4, 5, &[7]),
        ];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(result.stats["unexpected"], 2);
        let h = vec![ok_add(1, 0, 1), read(2, 3, &[1, 1])];
        assert_eq!(check(&h).stats["duplicated"], 1);
    }

    #[test]
    fn an_acknowledged_add_with_no_later_read_is_unknown() {
        let h = vec![read(0, 1, &[]), ok_add(1, 2, 3)];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Unknown);
        assert_eq!(result.stats["never_read"], 1);
        assert_eq!(check(&[ok_add(1, 0, 1)]).verdict, Verdict::Unknown);
    }

    /// The lock workloads' ops are the same adds and reads: the lost update lock-set produces
    /// (a paused holder writes back a list read before another holder's add), a fenced write
    /// refused (definitely failed, so never expected), and a last add with no read after it.
    #[test]
    fn lock_adds_and_reads_are_set_ops() {
        let lock_add = |element: Value, t0: u64, t1: u64, outcome: Outcome| Op {
            process: element,
            call: Call::LockAdd {
                element,
                fenced: false,
                pause_ms: 0,
            },
            complete_ns: Some(t1),
            outcome,
            invoke_ns: t0,
        };
        let lock_read = |t0: u64, t1: u64, elements: &[Value]| Op {
            call: Call::LockRead,
            ..read(t0, t1, elements)
        };
        let acked = Outcome::Ok {
            reply: Reply::Add,
            revision: 0,
        };
        let lost_update = vec![
            lock_add(1, 0, 10, acked.clone()),
            lock_add(2, 1, 5, acked.clone()),
            lock_read(11, 12, &[1]),
        ];
        let result = check(&lost_update);
        assert_eq!(result.verdict, Verdict::Invalid, "{result:?}");
        assert_eq!(result.stats["lost"], 1);
        let fenced = vec![
            lock_add(1, 0, 10, acked.clone()),
            lock_add(2, 1, 5, Outcome::Fail),
            lock_read(11, 12, &[1]),
        ];
        assert_eq!(check(&fenced).verdict, Verdict::Valid);
        let unread = vec![lock_read(0, 1, &[]), lock_add(1, 2, 3, acked)];
        assert_eq!(check(&unread).verdict, Verdict::Unknown);
    }
}
