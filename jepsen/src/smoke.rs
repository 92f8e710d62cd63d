//! The smoke matrix (issue 8's CI smoke, consistency-testing.md §6.6): every workload under each
//! fault class alone, which must pass, plus negative controls that must be caught
//! (serializable reads under partitions). One run after another; prints one line per run and
//! `N passed, N failed`.

use serde::Serialize;

use crate::checker::Verdict;
use crate::nemesis::Fault;
use crate::run::{self, RunOptions};
use crate::workload::{ReadMode, Workload};

/// One run of the matrix and what it must answer.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub workload: Workload,
    pub fault: Fault,
    pub reads: ReadMode,
    /// `Valid` for the store under test, `Invalid` for a negative control.
    pub expected: Verdict,
}

/// The matrix: {register, set, append, watch} × {partition, kill, pause}, then a
/// serializable-read control under partitions per read-checking workload.
pub fn cases() -> Vec<Case> {
    let workloads = [Workload::Register, Workload::Set, Workload::Append];
    let mut cases = Vec::new();
    for workload in workloads.into_iter().chain([Workload::Watch]) {
        for fault in [Fault::Partition, Fault::Kill, Fault::Pause] {
            cases.push(Case {
                workload,
                fault,
                reads: ReadMode::Linearizable,
                expected: Verdict::Valid,
            });
        }
    }
    for workload in workloads {
        cases.push(Case {
            workload,
            fault: Fault::Partition,
            reads: ReadMode::Serializable,
            expected: Verdict::Invalid,
        });
    }
    cases
}

/// Runs every case with `base`'s other options; returns how many answered as expected and how
/// many did not. A run the harness could not complete counts as failed.
pub async fn smoke(base: RunOptions) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for case in cases() {
        let mut options = base.clone();
        options.workload = case.workload;
        options.nemesis = vec![case.fault];
        options.reads = case.reads;
        let name = format!("{:?} {:?} {:?}", case.workload, case.fault, case.reads).to_lowercase();
        let (verdict, report) = match run::run(options).await {
            Ok((dir, results)) => (Some(results.verdict), dir.display().to_string()),
            Err(e) => (None, format!("harness error: {e:#}")),
        };
        let ok = verdict == Some(case.expected);
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
        println!(
            "{} {name:<40} expected {:?}, got {} ({report})",
            if ok { "PASS" } else { "FAIL" },
            case.expected,
            verdict.map_or("no verdict".to_string(), |v| format!("{v:?}")),
        );
    }
    println!("{passed} passed, {failed} failed");
    (passed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_covers_every_workload_and_fault_and_a_control_each() {
        let cases = cases();
        assert_eq!(cases.len(), 15);
        let controls: Vec<&Case> = cases
            .iter()
            .filter(|c| c.expected == Verdict::Invalid)
            .collect();
        assert_eq!(controls.len(), 3);
        assert!(controls.iter().all(|c| c.reads == ReadMode::Serializable));
        assert!(cases
            .iter()
            .filter(|c| c.expected == Verdict::Valid)
            .all(|c| c.reads == ReadMode::Linearizable));
    }
}
