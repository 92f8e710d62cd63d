//! `cairn-jepsen`: run a consistency test against a cluster of etcd or Cairn, run the smoke
//! matrix, or re-check a saved history. Exit code of `test` and `check`: 0 valid, 1 invalid,
//! 2 unknown, 3 the harness itself failed; of `smoke`: 0 iff every run answered as expected.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_jepsen::checker::Verdict;
use cairn_jepsen::run::{self, Results, RunOptions};
use cairn_jepsen::smoke;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Consistency tests for Cairn or any etcd v3 cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a cluster, run a workload under faults, check the history.
    Test(RunOptions),
    /// Run the smoke matrix (`--matrix full`: {register, set, append, watch, kv-robust,
    /// lock-etcd-set} × {partition, kill, pause} must pass, serializable reads under partitions
    /// and lock-set under pauses must be caught; `--matrix ci`: Cairn's CI smoke). Other options
    /// apply to every run (their --workload, --nemesis and --reads are replaced). Exit 0 iff
    /// every run answers as expected.
    Smoke(smoke::SmokeOptions),
    /// Re-run the history checkers on a saved report directory.
    Check {
        /// A directory written by `test`.
        dir: PathBuf,
    },
}

fn report(results: &Results) -> ExitCode {
    for checker in &results.checkers {
        println!(
            "{:<14} {:?} {}",
            checker.checker, checker.verdict, checker.stats
        );
        for anomaly in &checker.anomalies {
            println!("    {anomaly}");
        }
    }
    println!("ops: {}", results.stats);
    match results.verdict {
        Verdict::Valid => {
            println!("VERDICT: valid — no anomaly found");
            ExitCode::from(0)
        }
        Verdict::Invalid => {
            println!("VERDICT: INVALID — anomalies found");
            ExitCode::from(1)
        }
        Verdict::Unknown => {
            println!("VERDICT: unknown — the checks could not decide (this is not a pass)");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Test(options) => runtime().block_on(run::run(options)).map(|(dir, results)| {
            println!("report: {}", dir.display());
            results
        }),
        Command::Smoke(options) => {
            let (_, failed) = runtime().block_on(smoke::smoke(options));
            return ExitCode::from(if failed == 0 { 0 } else { 1 });
        }
        Command::Check { dir } => run::check_dir(&dir),
    };
    match outcome {
        Ok(results) => report(&results),
        Err(e) => {
            eprintln!("cairn-jepsen: error: {e:#}");
            ExitCode::from(3)
        }
    }
}
