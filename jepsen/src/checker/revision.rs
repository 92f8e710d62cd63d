//! etcd's revision guarantees, checked directly on the revisions the store reports
//! (consistency-testing.md §3.4). Linear-time passes that do not trust the values, next to the
//! WGL search that does not trust the revisions: a store that lies about one is caught by the
//! other.
//!
//! - **Real time**: if op A completed before op B was invoked, `rev(B) >= rev(A)`, and
//!   `rev(B) > rev(A)` when B wrote (a put, an add, a CAS that succeeded, a txn that appended, a
//!   delete that deleted something). A read whose header revision is below one already
//!   returned to someone is a stale read or time travel.
//! - **One revision per write**: two acknowledged writes never share a revision.
//! - **Reads agree with writes**: a read of value v reports `mod_revision` = the revision of
//!   the acknowledged write of v (if v's write was acknowledged), never a revision that an
//!   acknowledged write of something else owns, and never above the read's own header revision.
//! - **Reads are snapshots at their revision**: no write known to the key (acknowledged, or
//!   revealed by some read's `mod_revision`) lies in `(mod_revision, revision]` of a read; a read
//!   of the set at revision R holds every add acknowledged at or below R and none above it.
//!   This holds for serializable reads too: they may be old, never torn.

use std::collections::HashMap;

use super::{CheckResult, Verdict, ANOMALIES_REPORTED_MAX};
use crate::history::{Call, Mop, Op, Outcome, Reply, Value};

/// What an acknowledged write put where.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Written {
    key: String,
    value: Value,
}

/// Checks every acknowledged op of `history`.
pub fn check(history: &[Op]) -> CheckResult {
    let mut anomalies: Vec<String> = Vec::new();
    let mut note = |text: String| {
        if anomalies.len() < ANOMALIES_REPORTED_MAX {
            anomalies.push(text);
        }
    };
    let mut count = 0usize;

    // Acknowledged ops: (invoke, complete, revision, wrote, index).
    let mut acked: Vec<(u64, u64, i64, bool, usize)> = Vec::new();
    let mut writes_by_rev: HashMap<i64, Written> = HashMap::new();
    let mut rev_by_write: HashMap<Written, i64> = HashMap::new();
    for (at, op) in history.iter().enumerate() {
        let Outcome::Ok { reply, revision } = &op.outcome else {
            continue;
        };
        let complete = op.complete_ns.expect("an ok op has completed");
        let written = match (&op.call, reply) {
            (Call::Write { key, value }, _)
            | (
                Call::Cas { key, value, .. },
                Reply::Cas {
                    succeeded: true, ..
                },
            ) => Some(Written {
                key: key.clone(),
                value: *value,
            }),
            (Call::Add { element }, _) => Some(Written {
                key: String::new(),
                value: *element,
            }),
            _ => None,
        };
        let appended = match (&op.call, reply) {
            (Call::Txn { mops }, _) => mops.iter().any(|m| matches!(m, Mop::Append { .. })),
            // The watch workload's writes (a delete that deleted nothing makes no revision).
            (Call::Put { .. } | Call::PutTxn { .. }, _) => true,
            (Call::Delete { .. }, Reply::Delete { deleted }) => !deleted.is_empty(),
            // kv-robust's conditional txn, and the lock workloads' write of the set.
            (Call::KvCas { .. }, Reply::KvCas { succeeded, .. }) => *succeeded,
            (Call::LockAdd { .. }, _) => true,
            _ => false,
        };
        acked.push((
            op.invoke_ns,
            complete,
            *revision,
            written.is_some() || appended,
            at,
        ));
        if let Some(written) = written {
            if let Some(other) = writes_by_rev.insert(*revision, written.clone()) {
                count += 1;
                note(format!(
                    "revision {revision} reused: {other:?} and {written:?} were both acknowledged \
                     at it"
                ));
            }
            rev_by_write.insert(written, *revision);
        }
    }

    // Real time: sweep ops by invocation, folding in everything that completed before.
    let mut by_complete: Vec<usize> = (0..acked.len()).collect();
    by_complete.sort_by_key(|&i| acked[i].1);
    let mut by_invoke: Vec<usize> = (0..acked.len()).collect();
    by_invoke.sort_by_key(|&i| acked[i].0);
    let mut done = 0;
    let mut max_before: Option<(i64, usize)> = None;
    for &b in &by_invoke {
        let (invoke, _, rev, wrote, at) = acked[b];
        while done < by_complete.len() && acked[by_complete[done]].1 < invoke {
            let a = acked[by_complete[done]];
            if max_before.is_none_or(|(r, _)| a.2 > r) {
                max_before = Some((a.2, a.4));
            }
            done += 1;
        }
        let Some((before, before_at)) = max_before else {
            continue;
        };
        if rev < before || (wrote && rev == before) {
            count += 1;
            note(format!(
                "real time: process {}'s {:?} invoked at {invoke} ns got revision {rev}, but \
                 process {}'s {:?} had already completed at revision {before}",
                history[at].process,
                history[at].call,
                history[before_at].process,
                history[before_at].call
            ));
        }
    }

    // Reads agree with writes.
    for op in history {
        let (
            Call::Read { key },
            Outcome::Ok {
                reply:
                    Reply::Read {
                        found: Some(found),
                        mod_revision,
                    },
                revision,
            },
        ) = (&op.call, &op.outcome)
        else {
            continue;
        };
        let read = Written {
            key: key.clone(),
            value: found.value,
        };
        if mod_revision > revision {
            count += 1;
            note(format!(
                "{read:?} read at revision {revision} has mod_revision {mod_revision} from the \
                 future"
            ));
        }
        if let Some(&written_at) = rev_by_write.get(&read) {
            if written_at != *mod_revision {
                count += 1;
                note(format!(
                    "{read:?} was acknowledged at revision {written_at} but read with \
                     mod_revision {mod_revision}"
                ));
            }
        }
        if let Some(owner) = writes_by_rev.get(mod_revision) {
            if *owner != read {
                count += 1;
                note(format!(
                    "{read:?} read with mod_revision {mod_revision}, which the acknowledged write \
                     {owner:?} owns"
                ));
            }
        }
    }

    // Reads are snapshots at their revision. Known write revisions per key: acknowledged ones,
    // and those that reads revealed (a found key's mod_revision is a write to it).
    let mut key_revisions: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut add_revisions: Vec<(i64, Value)> = Vec::new();
    for (&rev, written) in &writes_by_rev {
        if written.key.is_empty() {
            add_revisions.push((rev, written.value));
        } else {
            key_revisions.entry(&written.key).or_default().push(rev);
        }
    }
    for op in history {
        if let (
            Call::Read { key },
            Outcome::Ok {
                reply:
                    Reply::Read {
                        found: Some(_),
                        mod_revision,
                    },
                ..
            },
        ) = (&op.call, &op.outcome)
        {
            key_revisions.entry(key).or_default().push(*mod_revision);
        }
    }
    for revisions in key_revisions.values_mut() {
        revisions.sort_unstable();
        revisions.dedup();
    }
    add_revisions.sort_unstable();
    let none = Vec::new();
    for op in history {
        let Outcome::Ok { reply, revision } = &op.outcome else {
            continue;
        };
        match (&op.call, reply) {
            (
                Call::Read { key },
                Reply::Read {
                    found,
                    mod_revision,
                },
            ) => {
                let revisions = key_revisions.get(key.as_str()).unwrap_or(&none);
                let seen = if found.is_some() { *mod_revision } else { 0 };
                let next = revisions.get(revisions.partition_point(|&r| r <= seen));
                if let Some(&next) = next.filter(|&&next| next <= *revision) {
                    count += 1;
                    note(format!(
                        "process {}'s read of {key:?} at revision {revision} returned the version \
                         of revision {seen}, but the key was written at revision {next}",
                        op.process
                    ));
                }
            }
            (Call::ReadSet, Reply::ReadSet { elements }) => {
                let mut elements = elements.clone();
                elements.sort_unstable();
                for &(added_at, element) in &add_revisions {
                    let present = elements.binary_search(&element).is_ok();
                    if present != (added_at <= *revision) {
                        count += 1;
                        note(format!(
                            "process {}'s read of the set at revision {revision} {} element \
                             {element}, added at revision {added_at}",
                            op.process,
                            if present { "holds" } else { "misses" }
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    CheckResult {
        checker: "revision".into(),
        verdict: if count == 0 {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
        anomalies,
        stats: serde_json::json!({ "ops": acked.len(), "anomalies": count }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Versioned;

    fn ok(call: Call, reply: Reply, revision: i64, t0: u64, t1: u64) -> Op {
        Op {
            process: t0,
            call,
            outcome: Outcome::Ok { reply, revision },
            invoke_ns: t0,
            complete_ns: Some(t1),
        }
    }

    fn put(value: Value, revision: i64, t0: u64, t1: u64) -> Op {
        ok(
            Call::Write {
                key: "k".into(),
                value,
            },
            Reply::Write { prev_version: 0 },
            revision,
            t0,
            t1,
        )
    }

    fn get(value: Value, mod_revision: i64, revision: i64, t0: u64, t1: u64) -> Op {
        ok(
            Call::Read { key: "k".into() },
            Reply::Read {
                found: Some(Versioned { value, version: 1 }),
                mod_revision,
            },
            revision,
            t0,
            t1,
        )
    }

    #[test]
    fn consistent_revisions_pass() {
        let h = vec![
            put(1, 2, 0, 1),
            get(1, 2, 2, 2, 3),
            put(2, 3, 4, 5),
            // Concurrent with the put of 2: may still see 1.
            get(1, 2, 2, 4, 6),
            get(2, 3, 5, 7, 8),
        ];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Valid, "{result:?}");
    }

    #[test]
    fn a_read_behind_a_completed_write_is_caught() {
        let h = vec![put(1, 2, 0, 1), put(2, 3, 2, 3), get(1, 2, 2, 4, 5)];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(result.anomalies[0].starts_with("real time"), "{result:?}");
    }

    #[test]
    fn a_write_must_get_a_newer_revision_than_anything_completed_before() {
        let h = vec![put(1, 5, 0, 1), put(2, 5, 2, 3)];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        // Both the reuse and the real-time order are reported.
        assert_eq!(result.stats["anomalies"], 2, "{result:?}");
    }

    /// kv-robust's conditional txn writes only when it succeeded; a lock add always writes.
    #[test]
    fn a_successful_conditional_txn_and_a_lock_add_are_writes() {
        let cas = |succeeded: bool, revision: i64, t0: u64, t1: u64| {
            ok(
                Call::KvCas {
                    key: "k".into(),
                    expect_mod_revision: 0,
                    value: t0,
                    delete: "j".into(),
                },
                Reply::KvCas {
                    succeeded,
                    deleted: vec![],
                    current: None,
                },
                revision,
                t0,
                t1,
            )
        };
        let failed_at_the_same_revision = vec![put(1, 5, 0, 1), cas(false, 5, 2, 3)];
        assert_eq!(check(&failed_at_the_same_revision).verdict, Verdict::Valid);
        let succeeded_at_the_same_revision = vec![put(1, 5, 0, 1), cas(true, 5, 2, 3)];
        assert_eq!(
            check(&succeeded_at_the_same_revision).verdict,
            Verdict::Invalid
        );
        let lock_add = ok(
            Call::LockAdd {
                element: 7,
                fenced: true,
                pause_ms: 0,
            },
            Reply::Add,
            5,
            2,
            3,
        );
        assert_eq!(
            check(&[put(1, 5, 0, 1), lock_add]).verdict,
            Verdict::Invalid
        );
    }

    #[test]
    fn a_reused_revision_is_caught_even_between_concurrent_writes() {
        let h = vec![put(1, 5, 0, 10), put(2, 5, 1, 11)];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(result.anomalies[0].contains("reused"), "{result:?}");
    }

    #[test]
    fn a_read_must_be_current_at_its_own_revision() {
        // Concurrent with the put at revision 3, the read claims revision 4 yet returns the
        // version of revision 2: real time allows it, the snapshot rule does not.
        let h = vec![put(1, 2, 0, 1), put(2, 3, 2, 10), get(1, 2, 4, 3, 5)];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(
            result.anomalies[0].contains("written at revision 3"),
            "{result:?}"
        );
        // The same read at revision 2 is fine.
        let h = vec![put(1, 2, 0, 1), put(2, 3, 2, 10), get(1, 2, 2, 3, 5)];
        assert_eq!(check(&h).verdict, Verdict::Valid);
        // A write revealed only by a read's mod_revision counts too.
        let h = vec![
            put(1, 2, 0, 1),
            get(7, 5, 5, 2, 3), // 7's put was indeterminate; it landed at revision 5
            get(1, 2, 6, 4, 5),
        ];
        assert_eq!(check(&h).stats["anomalies"], 1);
    }

    #[test]
    fn a_set_read_holds_exactly_the_adds_at_or_below_its_revision() {
        let add =
            |element, revision, t0, t1| ok(Call::Add { element }, Reply::Add, revision, t0, t1);
        let read_set = |elements: &[Value], revision, t0, t1| {
            ok(
                Call::ReadSet,
                Reply::ReadSet {
                    elements: elements.to_vec(),
                },
                revision,
                t0,
                t1,
            )
        };
        let h = vec![
            add(1, 2, 0, 1),
            add(2, 3, 0, 10),
            read_set(&[1], 2, 2, 3),
            read_set(&[1, 2], 3, 2, 11),
        ];
        assert_eq!(check(&h).verdict, Verdict::Valid);
        let h = vec![add(1, 2, 0, 1), add(2, 3, 0, 10), read_set(&[2], 3, 2, 11)];
        assert!(check(&h).anomalies[0].contains("misses element 1"));
        let h = vec![
            add(1, 2, 0, 1),
            add(2, 3, 0, 10),
            read_set(&[1, 2], 2, 2, 11),
        ];
        assert!(check(&h).anomalies[0].contains("holds element 2"));
    }

    #[test]
    fn reads_must_report_the_writes_revision() {
        // The read's mod_revision is not the revision at which 1 was written.
        let h = vec![put(1, 2, 0, 1), get(1, 3, 3, 2, 3)];
        assert_eq!(check(&h).verdict, Verdict::Invalid);
        // A mod_revision owned by another write.
        let h = vec![put(1, 2, 0, 1), put(2, 3, 0, 1), get(1, 3, 3, 2, 3)];
        assert_eq!(check(&h).stats["anomalies"], 2);
        // A mod_revision above the read's own revision.
        let h = vec![put(1, 2, 0, 1), get(1, 2, 1, 0, 3)];
        assert_eq!(check(&h).verdict, Verdict::Invalid);
    }
}
