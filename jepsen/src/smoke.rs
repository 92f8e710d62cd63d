//! The smoke matrix (issue 8's CI smoke, consistency-testing.md §6.6): workloads under each
//! fault class alone, which must pass, plus negative controls that must be caught. One run after
//! another; prints one line per run and `N passed, N failed`.
//!
//! - `full`: {register, set, append, watch, kv-robust, lock-etcd-set} × {partition, kill,
//!   pause}; serializable reads under partitions (register, set, append), which a partition
//!   exposes only when it leaves a reader on the minority while the majority writes (so one run
//!   in several may miss); and lock-set under pauses, which must lose updates.
//! - `ci` (the test suite's Cairn smoke, `tests/cairn_smoke.rs`): {register, append, watch,
//!   kv-robust} × {partition, kill, pause}, lock-etcd-set under pauses, and the lock-set control,
//!   which the client pauses make certain. The serializable-read control is staged
//!   deterministically by `tests/cairn_smoke.rs` instead.

use serde::Serialize;

use crate::checker::Verdict;
use crate::nemesis::Fault;
use crate::run::{self, RunOptions};
use crate::workload::{ReadMode, Workload};

/// kv-robust in the smoke: revisions the compactor stays behind the head, so that short runs
/// compact and some reads of the past meet a compacted revision.
const KV_COMPACT_LAG_REVISIONS: i64 = 50;

/// Which matrix to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Matrix {
    Full,
    Ci,
}

/// `smoke`'s options: the matrix, and every run's other options.
#[derive(Clone, Debug, clap::Args)]
pub struct SmokeOptions {
    #[arg(long, value_enum, default_value_t = Matrix::Full)]
    pub matrix: Matrix,
    #[command(flatten)]
    pub run: RunOptions,
}

/// One run of the matrix and what it must answer.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub workload: Workload,
    pub fault: Fault,
    pub reads: ReadMode,
    /// `Valid` for the store under test, `Invalid` for a negative control.
    pub expected: Verdict,
}

/// The matrix's cases (see the module's documentation).
pub fn cases(matrix: Matrix) -> Vec<Case> {
    let passing: &[Workload] = match matrix {
        Matrix::Full => &[
            Workload::Register,
            Workload::Set,
            Workload::Append,
            Workload::Watch,
            Workload::KvRobust,
            Workload::LockEtcdSet,
        ],
        Matrix::Ci => &[
            Workload::Register,
            Workload::Append,
            Workload::Watch,
            Workload::KvRobust,
        ],
    };
    let case = |workload, fault, reads, expected| Case {
        workload,
        fault,
        reads,
        expected,
    };
    let mut cases = Vec::new();
    for &workload in passing {
        for fault in [Fault::Partition, Fault::Kill, Fault::Pause] {
            cases.push(case(
                workload,
                fault,
                ReadMode::Linearizable,
                Verdict::Valid,
            ));
        }
    }
    match matrix {
        Matrix::Full => {
            for workload in [Workload::Register, Workload::Set, Workload::Append] {
                cases.push(case(
                    workload,
                    Fault::Partition,
                    ReadMode::Serializable,
                    Verdict::Invalid,
                ));
            }
        }
        Matrix::Ci => cases.push(case(
            Workload::LockEtcdSet,
            Fault::Pause,
            ReadMode::Linearizable,
            Verdict::Valid,
        )),
    }
    cases.push(case(
        Workload::LockSet,
        Fault::Pause,
        ReadMode::Linearizable,
        Verdict::Invalid,
    ));
    cases
}

/// Runs every case with `base`'s other options; returns how many answered as expected and how
/// many did not. A run the harness could not complete counts as failed.
pub async fn smoke(smoke: SmokeOptions) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for case in cases(smoke.matrix) {
        let mut options = smoke.run.clone();
        options.workload = case.workload;
        options.nemesis = vec![case.fault];
        options.reads = case.reads;
        if case.workload == Workload::KvRobust {
            options.compact_lag_revisions = KV_COMPACT_LAG_REVISIONS;
        }
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
    fn the_full_matrix_covers_every_workload_and_fault_and_the_controls() {
        let cases = cases(Matrix::Full);
        assert_eq!(cases.len(), 6 * 3 + 3 + 1);
        let controls: Vec<&Case> = cases
            .iter()
            .filter(|c| c.expected == Verdict::Invalid)
            .collect();
        assert_eq!(controls.len(), 4);
        assert_eq!(
            controls
                .iter()
                .filter(|c| c.reads == ReadMode::Serializable)
                .count(),
            3
        );
        assert!(controls
            .iter()
            .any(|c| c.workload == Workload::LockSet && c.fault == Fault::Pause));
        assert!(cases
            .iter()
            .filter(|c| c.expected == Verdict::Valid)
            .all(|c| c.reads == ReadMode::Linearizable && c.workload != Workload::LockSet));
    }

    #[test]
    fn the_ci_matrix_is_cairns_smoke_with_the_certain_control() {
        let cases = cases(Matrix::Ci);
        assert_eq!(cases.len(), 4 * 3 + 2);
        let controls: Vec<&Case> = cases
            .iter()
            .filter(|c| c.expected == Verdict::Invalid)
            .collect();
        assert_eq!(controls.len(), 1);
        assert_eq!(controls[0].workload, Workload::LockSet);
        assert!(cases.iter().all(|c| c.reads == ReadMode::Linearizable));
    }
}
