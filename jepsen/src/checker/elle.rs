//! An Elle-style checker for list-append transactions (Kingsbury & Alvaro, "Elle", VLDB 2020),
//! at strict serializability.
//!
//! Appended values are unique and a read returns a key's whole list, so every read is a prefix of
//! the key's version order, and the longest read gives that order. From it:
//! - **ww**: the appender of a key's i-th element precedes the appender of its (i+1)-th;
//! - **wr**: the appender of the last element a read saw precedes the reader;
//! - **rw**: a reader precedes the appender of the first element it did not see;
//! - **realtime**: a transaction that completed precedes one invoked afterwards.
//!
//! A cycle in that graph is an anomaly, named by its edges as Adya/Elle do: only ww → G0;
//! ww and wr → G1c; exactly one rw → G-single; more → G2; a realtime edge in the cycle adds
//! `-realtime` (serializable, but not strictly). Besides cycles it reports reads that are not
//! prefixes of one another (incompatible orders), duplicated elements, elements from failed
//! appends (G1a, aborted reads) and elements nobody appended.
//!
//! Realtime edges are encoded in linear space: a chain of one node per completion time; a
//! transaction points at its completion's node, and the latest completion node before a
//! transaction's invocation points at it.

use std::collections::{HashMap, VecDeque};

use super::{CheckResult, Verdict, ANOMALIES_REPORTED_MAX};
use crate::history::{Call, Mop, Op, Outcome, Reply, Value};

/// Transactions of one strongly connected component tried as the start of its reported cycle.
const CYCLE_STARTS_MAX: usize = 32;

/// Why one transaction precedes another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edge {
    Ww,
    Wr,
    Rw,
    Realtime,
}

/// A list-append transaction that may have taken effect.
struct Txn<'a> {
    op: &'a Op,
    mops: &'a [Mop],
    /// Per mop: the list read (ok transactions only).
    reads: Option<&'a [Option<Vec<Value>>]>,
}

/// The dependency graph: nodes `0..txns` are transactions, the rest realtime chain nodes.
struct Graph {
    edges: Vec<Vec<(usize, Edge)>>,
}

impl Graph {
    fn add(&mut self, from: usize, to: usize, edge: Edge) {
        if from != to {
            self.edges[from].push((to, edge));
        }
    }
}

/// Strongly connected components (Tarjan, iterative), each as a list of nodes.
fn components(graph: &Graph) -> Vec<Vec<usize>> {
    let n = graph.edges.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let mut next_index = 0;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        // (node, next edge to look at)
        let mut work = vec![(root, 0usize)];
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (node, ref mut edge)) = work.last_mut() {
            if let Some(&(to, _)) = graph.edges[node].get(*edge) {
                *edge += 1;
                if index[to] == usize::MAX {
                    index[to] = next_index;
                    low[to] = next_index;
                    next_index += 1;
                    stack.push(to);
                    on_stack[to] = true;
                    work.push((to, 0));
                } else if on_stack[to] {
                    low[node] = low[node].min(index[to]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[node]);
            }
            if low[node] == index[node] {
                let mut component = Vec::new();
                loop {
                    let member = stack.pop().expect("the component's root is on the stack");
                    on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                out.push(component);
            }
        }
    }
    out
}

/// The shortest cycle through `start` inside `component` (BFS), as (node, edge to next) pairs.
fn shortest_cycle(graph: &Graph, component: &[usize], start: usize) -> Vec<(usize, Edge)> {
    let inside: std::collections::HashSet<usize> = component.iter().copied().collect();
    let mut parent: HashMap<usize, (usize, Edge)> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &(to, edge) in &graph.edges[node] {
            if !inside.contains(&to) {
                continue;
            }
            if to == start {
                let mut cycle = vec![(node, edge)];
                let mut at = node;
                while at != start {
                    let (prev, prev_edge) = parent[&at];
                    cycle.push((prev, prev_edge));
                    at = prev;
                }
                cycle.reverse();
                return cycle;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = parent.entry(to) {
                slot.insert((node, edge));
                queue.push_back(to);
            }
        }
    }
    unreachable!("every node of a non-trivial strongly connected component is on a cycle")
}

/// Adya/Elle's name for a cycle with these edges.
fn classify(edges: &[Edge]) -> String {
    let rw = edges.iter().filter(|e| **e == Edge::Rw).count();
    let base = match rw {
        0 if edges.contains(&Edge::Wr) => "G1c",
        0 if edges.contains(&Edge::Ww) => "G0",
        0 => "realtime",
        1 => "G-single",
        _ => "G2",
    };
    if edges.contains(&Edge::Realtime) && base != "realtime" {
        format!("{base}-realtime")
    } else {
        base.to_string()
    }
}

/// Checks every list-append transaction of `history`.
pub fn check(history: &[Op]) -> CheckResult {
    let mut anomalies: Vec<String> = Vec::new();
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    let mut note = |kind: &str, text: String| {
        *kinds.entry(kind.to_string()).or_default() += 1;
        if anomalies.len() < ANOMALIES_REPORTED_MAX {
            anomalies.push(format!("{kind}: {text}"));
        }
    };

    // Who appended what, and what failed.
    let mut appender: HashMap<(&str, Value), usize> = HashMap::new();
    let mut failed: HashMap<(&str, Value), usize> = HashMap::new();
    let mut txns: Vec<Txn> = Vec::new();
    for (at, op) in history.iter().enumerate() {
        let Call::Txn { mops } = &op.call else {
            continue;
        };
        let reads = match &op.outcome {
            Outcome::Ok {
                reply: Reply::Txn { reads },
                ..
            } => Some(reads.as_slice()),
            Outcome::Fail => {
                for mop in mops {
                    if let Mop::Append { key, value } = mop {
                        failed.insert((key.as_str(), *value), at);
                    }
                }
                continue;
            }
            _ => None,
        };
        for mop in mops {
            if let Mop::Append { key, value } = mop {
                appender.insert((key.as_str(), *value), txns.len());
            }
        }
        txns.push(Txn { op, mops, reads });
    }

    // Each key's version order: the longest read; every read must be a prefix of it.
    let mut order: HashMap<&str, &[Value]> = HashMap::new();
    let mut observed_txns = vec![false; txns.len()];
    for txn in &txns {
        let Some(reads) = txn.reads else { continue };
        for (mop, read) in txn.mops.iter().zip(reads) {
            let (Mop::Read { key }, Some(list)) = (mop, read) else {
                continue;
            };
            let longest = order.entry(key.as_str()).or_insert(list.as_slice());
            if list.len() > longest.len() {
                *longest = list.as_slice();
            }
            let mut seen = std::collections::HashSet::new();
            for value in list {
                if !seen.insert(value) {
                    note("duplicate", format!("{key:?} read as {list:?}"));
                }
                match appender.get(&(key.as_str(), *value)) {
                    Some(&writer) => observed_txns[writer] = true,
                    None if failed.contains_key(&(key.as_str(), *value)) => note(
                        "G1a",
                        format!("{key:?} read as {list:?} holds {value}, whose append failed"),
                    ),
                    None => note(
                        "unexpected",
                        format!("{key:?} read as {list:?} holds {value}, never appended"),
                    ),
                }
            }
        }
    }
    for txn in &txns {
        let Some(reads) = txn.reads else { continue };
        for (mop, read) in txn.mops.iter().zip(reads) {
            let (Mop::Read { key }, Some(list)) = (mop, read) else {
                continue;
            };
            let longest = order[key.as_str()];
            if !longest.starts_with(list) {
                note(
                    "incompatible-order",
                    format!("{key:?} read as {list:?} and as {longest:?}"),
                );
            }
        }
    }

    // The graph. An indeterminate transaction joins only if one of its appends was seen.
    let included: Vec<bool> = txns
        .iter()
        .zip(&observed_txns)
        .map(|(t, seen)| t.reads.is_some() || *seen)
        .collect();
    let mut completions: Vec<u64> = txns
        .iter()
        .filter_map(|t| t.reads.and(t.op.complete_ns))
        .collect();
    completions.sort_unstable();
    completions.dedup();
    let chain = txns.len();
    let mut graph = Graph {
        edges: vec![Vec::new(); txns.len() + completions.len()],
    };
    for c in 1..completions.len() {
        graph.add(chain + c - 1, chain + c, Edge::Realtime);
    }
    for (t, txn) in txns.iter().enumerate() {
        if !included[t] {
            continue;
        }
        if let (Some(_), Some(complete)) = (txn.reads, txn.op.complete_ns) {
            let c = completions
                .binary_search(&complete)
                .expect("collected above");
            graph.add(t, chain + c, Edge::Realtime);
        }
        let before = completions.partition_point(|&c| c < txn.op.invoke_ns);
        if before > 0 {
            graph.add(chain + before - 1, t, Edge::Realtime);
        }
    }
    for (key, versions) in &order {
        for pair in versions.windows(2) {
            if let (Some(&a), Some(&b)) = (
                appender.get(&(*key, pair[0])),
                appender.get(&(*key, pair[1])),
            ) {
                graph.add(a, b, Edge::Ww);
            }
        }
    }
    for (t, txn) in txns.iter().enumerate() {
        let Some(reads) = txn.reads else { continue };
        for (mop, read) in txn.mops.iter().zip(reads) {
            let (Mop::Read { key }, Some(list)) = (mop, read) else {
                continue;
            };
            if let Some(&writer) = list.last().and_then(|v| appender.get(&(key.as_str(), *v))) {
                graph.add(writer, t, Edge::Wr);
            }
            let versions = order[key.as_str()];
            if let Some(&writer) = versions
                .get(list.len())
                .filter(|_| versions.starts_with(list))
                .and_then(|v| appender.get(&(key.as_str(), *v)))
            {
                graph.add(t, writer, Edge::Rw);
            }
        }
    }

    let mut cycles = 0;
    for component in components(&graph) {
        if component.len() < 2 || !component.iter().any(|&n| n < chain) {
            continue;
        }
        cycles += 1;
        // The shortest cycle through any of the first few transactions: a short witness reads
        // best and names the anomaly most precisely.
        let cycle = component
            .iter()
            .filter(|&&n| n < chain)
            .take(CYCLE_STARTS_MAX)
            .map(|&start| shortest_cycle(&graph, &component, start))
            .min_by_key(|cycle| cycle.iter().filter(|&&(n, _)| n < chain).count())
            .expect("the component holds a transaction");
        let edges: Vec<Edge> = cycle.iter().map(|&(_, e)| e).collect();
        let steps: Vec<String> = cycle
            .iter()
            .filter(|&&(node, _)| node < chain)
            .map(|&(node, _)| {
                let op = txns[node].op;
                format!("process {} {:?}", op.process, txns[node].mops)
            })
            .collect();
        note(
            &classify(&edges),
            format!(
                "cycle of {} transactions: {}",
                steps.len(),
                steps.join(" -> ")
            ),
        );
    }

    let count: usize = kinds.values().sum();
    CheckResult {
        checker: "elle-append".into(),
        verdict: if count == 0 {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
        anomalies,
        stats: serde_json::json!({
            "txns": txns.len(),
            "keys": order.len(),
            "cycles": cycles,
            "anomaly_types": kinds,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(key: &str, value: Value) -> Mop {
        Mop::Append {
            key: key.into(),
            value,
        }
    }

    fn read(key: &str) -> Mop {
        Mop::Read { key: key.into() }
    }

    /// An ok transaction; `reads` holds the list of each read mop, in order.
    fn txn(process: u64, t0: u64, t1: u64, mops: Vec<Mop>, reads: Vec<Vec<Value>>) -> Op {
        let mut lists = reads.into_iter();
        let reads = mops
            .iter()
            .map(|m| match m {
                Mop::Read { .. } => Some(lists.next().expect("a list per read")),
                Mop::Append { .. } => None,
            })
            .collect();
        Op {
            process,
            call: Call::Txn { mops },
            outcome: Outcome::Ok {
                reply: Reply::Txn { reads },
                revision: 0,
            },
            invoke_ns: t0,
            complete_ns: Some(t1),
        }
    }

    fn kinds(history: &[Op]) -> serde_json::Value {
        check(history).stats["anomaly_types"].clone()
    }

    #[test]
    fn a_serial_history_is_valid() {
        let h = vec![
            txn(1, 0, 1, vec![append("x", 1), read("x")], vec![vec![1]]),
            txn(2, 2, 3, vec![read("x"), append("y", 2)], vec![vec![1]]),
            txn(1, 4, 5, vec![read("x"), read("y")], vec![vec![1], vec![2]]),
        ];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Valid, "{result:?}");
        assert_eq!(result.stats["cycles"], 0);
    }

    #[test]
    fn concurrent_transactions_may_serialize_either_way() {
        let h = vec![
            txn(1, 0, 10, vec![append("x", 1)], vec![]),
            txn(2, 0, 10, vec![read("x")], vec![vec![]]),
            txn(3, 11, 12, vec![read("x")], vec![vec![1]]),
        ];
        assert_eq!(check(&h).verdict, Verdict::Valid);
    }

    #[test]
    fn write_skew_is_g2() {
        // T1 reads y empty and appends x; T2 reads x empty and appends y; a later read sees both.
        let h = vec![
            txn(1, 0, 10, vec![read("y"), append("x", 1)], vec![vec![]]),
            txn(2, 0, 10, vec![read("x"), append("y", 2)], vec![vec![]]),
            txn(
                3,
                20,
                21,
                vec![read("x"), read("y")],
                vec![vec![1], vec![2]],
            ),
        ];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(kinds(&h)["G2"], 1, "{result:?}");
    }

    #[test]
    fn lost_update_is_g_single() {
        // Both read x = [] and append; the final order says T2 came after T1, yet T2 read [].
        let h = vec![
            txn(1, 0, 10, vec![read("x"), append("x", 1)], vec![vec![]]),
            txn(2, 0, 10, vec![read("x"), append("x", 2)], vec![vec![]]),
            txn(3, 20, 21, vec![read("x")], vec![vec![1, 2]]),
        ];
        assert_eq!(kinds(&h)["G-single"], 1, "{:?}", check(&h));
    }

    #[test]
    fn a_stale_read_is_a_realtime_cycle() {
        // T1 appended and completed; T2 began afterwards and did not see it.
        let h = vec![
            txn(1, 0, 1, vec![append("x", 1)], vec![]),
            txn(2, 2, 3, vec![read("x")], vec![vec![]]),
            txn(3, 4, 5, vec![read("x")], vec![vec![1]]),
        ];
        let result = check(&h);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(kinds(&h)["G-single-realtime"], 1, "{result:?}");
        assert!(
            result.anomalies[0].contains("cycle of 2 transactions"),
            "{result:?}"
        );
    }

    #[test]
    fn circular_information_flow_is_g1c() {
        // Each reads the other's append: wr both ways.
        let h = vec![
            txn(1, 0, 10, vec![append("x", 1), read("y")], vec![vec![2]]),
            txn(2, 0, 10, vec![append("y", 2), read("x")], vec![vec![1]]),
        ];
        assert_eq!(kinds(&h)["G1c"], 1, "{:?}", check(&h));
    }

    #[test]
    fn aborted_reads_orders_and_duplicates_are_caught() {
        let failed = Op {
            process: 9,
            call: Call::Txn {
                mops: vec![append("x", 7)],
            },
            outcome: Outcome::Fail,
            invoke_ns: 0,
            complete_ns: Some(1),
        };
        let h = vec![failed, txn(1, 2, 3, vec![read("x")], vec![vec![7]])];
        assert_eq!(kinds(&h)["G1a"], 1);
        let h = vec![
            txn(1, 0, 1, vec![append("x", 1), append("x", 2)], vec![]),
            txn(2, 2, 3, vec![read("x")], vec![vec![1, 2]]),
            txn(3, 2, 3, vec![read("x")], vec![vec![2, 1]]),
        ];
        assert_eq!(kinds(&h)["incompatible-order"], 1, "{:?}", check(&h));
        let h = vec![
            txn(1, 0, 1, vec![append("x", 1)], vec![]),
            txn(2, 2, 3, vec![read("x")], vec![vec![1, 1]]),
        ];
        assert_eq!(kinds(&h)["duplicate"], 1);
        let h = vec![txn(2, 2, 3, vec![read("x")], vec![vec![5]])];
        assert_eq!(kinds(&h)["unexpected"], 1);
    }

    #[test]
    fn an_indeterminate_append_counts_only_once_seen() {
        let info = Op {
            process: 4,
            call: Call::Txn {
                mops: vec![append("x", 1)],
            },
            outcome: Outcome::Info,
            invoke_ns: 0,
            complete_ns: None,
        };
        let h = vec![info.clone(), txn(1, 50, 51, vec![read("x")], vec![vec![]])];
        assert_eq!(check(&h).verdict, Verdict::Valid);
        let h = vec![
            info,
            txn(1, 50, 51, vec![read("x")], vec![vec![1]]),
            txn(2, 60, 61, vec![read("x")], vec![vec![1]]),
        ];
        assert_eq!(check(&h).verdict, Verdict::Valid);
    }

    #[test]
    fn tarjan_finds_components() {
        let mut graph = Graph {
            edges: vec![Vec::new(); 5],
        };
        graph.add(0, 1, Edge::Ww);
        graph.add(1, 2, Edge::Ww);
        graph.add(2, 0, Edge::Ww);
        graph.add(2, 3, Edge::Ww);
        graph.add(3, 4, Edge::Ww);
        let mut sizes: Vec<usize> = components(&graph).iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![1, 1, 3]);
        let cycle = shortest_cycle(&graph, &[0, 1, 2], 0);
        assert_eq!(cycle.len(), 3);
    }
}
