//! `cairn snapshot restore|status`: etcdutl's offline snapshot commands (etcd:
//! `etcdutl/etcdutl/snapshot_command.go`), with its flags, defaults, messages and output formats,
//! on Cairn's backups. Like etcdutl they read no environment variables.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

use super::restore::{restore, RestoreOptions};
use super::{status, HashCheck, Status};
use crate::config::parse_initial_cluster;

/// etcdutl flags that make no sense for Cairn's layout; refused by name.
const UNSUPPORTED_FLAGS: &[&str] = &["wal-dir", "initial-memory-map-size"];

#[derive(Debug, Parser)]
#[command(
    name = "snapshot",
    bin_name = "cairn snapshot",
    about = "Restores or inspects a snapshot that `etcdctl snapshot save` took from a Cairn member"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Restores a snapshot into a new member's data directory, for a new cluster.
    Restore(RestoreArgs),
    /// Checks a snapshot file and prints its hash, revision, total keys and total size.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The snapshot file.
    file: PathBuf,
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the output data directory [default: ${name}.etcd].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initial cluster configuration for restore bootstrap.
    #[arg(long, default_value = "default=http://localhost:2380")]
    initial_cluster: String,
    /// Initial cluster token for the cluster during restore bootstrap.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Ignore the snapshot's integrity hash.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false, action = ArgAction::Set)]
    skip_hash_check: bool,
    /// How much to increase the latest revision after restore.
    #[arg(long, default_value_t = 0)]
    bump_revision: u64,
    /// Mark the latest revision after restore as the point of scheduled compaction (required if
    /// --bump-revision > 0, disallowed otherwise).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false, action = ArgAction::Set)]
    mark_compacted: bool,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The snapshot file.
    file: PathBuf,
    /// Output format.
    #[arg(short = 'w', long = "write-out", default_value = "simple",
          value_parser = ["simple", "table", "json"])]
    write_out: String,
}

/// Runs `cairn snapshot ...`; `args` starts with the program name, then `snapshot`.
pub fn run(args: &[String]) -> ExitCode {
    for arg in args.iter().skip(2) {
        let name = arg.trim_start_matches('-').split('=').next().unwrap_or("");
        if arg.starts_with("--") && UNSUPPORTED_FLAGS.contains(&name) {
            eprintln!("Error: flag --{name} is an etcdutl flag that cairn does not support");
            return ExitCode::from(2);
        }
    }
    let cli = match Cli::try_parse_from(&args[1..]) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Restore(args) => run_restore(args),
        Command::Status(args) => run_status(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadArgs(e)) => {
            eprintln!("Error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Error(e)) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// etcdutl's exit codes: 2 for bad arguments, 1 for anything else.
enum Failure {
    BadArgs(String),
    Error(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Error(e)
    }
}

fn run_restore(args: RestoreArgs) -> Result<(), Failure> {
    if (args.bump_revision == 0) == args.mark_compacted {
        return Err(Failure::BadArgs(
            "--mark-compacted required if --bump-revision > 0".into(),
        ));
    }
    let initial_cluster =
        parse_initial_cluster(&args.initial_cluster).map_err(|e| Failure::BadArgs(e.0))?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name)));
    let opts = RestoreOptions {
        file: args.file,
        name: args.name,
        data_dir,
        initial_cluster,
        initial_cluster_token: args.initial_cluster_token,
        initial_advertise_peer_urls: args.initial_advertise_peer_urls,
        hash_check: if args.skip_hash_check {
            HashCheck::Skip
        } else {
            HashCheck::Verify
        },
        bump_revision: args.mark_compacted.then_some(args.bump_revision),
    };
    let r = restore(&opts)?;
    let mut line = format!(
        "restored snapshot {} into {}: member {:x} of new cluster {:x}, {} records, revision {}",
        opts.file.display(),
        opts.data_dir.display(),
        r.member_id,
        r.cluster_id,
        r.header.records,
        r.revision,
    );
    if opts.bump_revision.is_some() {
        line += &format!(
            " (bumped from {}, compacted at {})",
            r.header.revision, r.compact_revision
        );
    }
    eprintln!("{line}");
    Ok(())
}

fn run_status(args: &StatusArgs) -> Result<(), Failure> {
    let s = status(&args.file).map_err(|e| Failure::Error(e.into()))?;
    match args.write_out.as_str() {
        "json" => println!("{}", serde_json::to_string(&s).expect("status serializes")),
        "table" => print!("{}", table(&s)),
        _ => println!(
            "{:x}, {}, {}, {}",
            s.hash,
            s.revision,
            s.total_key,
            human_bytes(s.total_size)
        ),
    }
    Ok(())
}

/// etcdctl's table (olekukonko/tablewriter): headers upper-case and centred, cells right-aligned.
fn table(s: &Status) -> String {
    let headers = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
    let cells = [
        format!("{:x}", s.hash),
        s.revision.to_string(),
        s.total_key.to_string(),
        human_bytes(s.total_size),
    ];
    let widths: Vec<usize> = headers
        .iter()
        .zip(&cells)
        .map(|(h, c)| h.len().max(c.len()))
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let header: String = headers
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let left = (w - h.len()) / 2;
            format!(
                "| {}{h}{} ",
                " ".repeat(left),
                " ".repeat(w - h.len() - left)
            )
        })
        .collect::<String>()
        + "|\n";
    let row: String = cells
        .iter()
        .zip(&widths)
        .map(|(c, w)| format!("| {c:>w$} "))
        .collect::<String>()
        + "|\n";
    format!("{rule}{header}{rule}{row}{rule}")
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = (n as f64).log(1000.0).floor();
    let value = ((n as f64) / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    let unit = UNITS[e as usize];
    if value < 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_prints_like_etcdctl() {
        // `etcdctl snapshot status -w table` on an etcd 3.4.23 snapshot.
        let s = Status {
            hash: 0x78f5a04,
            revision: 21,
            total_key: 24,
            total_size: 20480,
        };
        assert_eq!(
            table(&s),
            "+---------+----------+------------+------------+\n\
             |  HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +---------+----------+------------+------------+\n\
             | 78f5a04 |       21 |         24 |      20 kB |\n\
             +---------+----------+------------+------------+\n"
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"hash":126835204,"revision":21,"totalKey":24,"totalSize":20480}"#
        );
        assert_eq!(human_bytes(9), "9 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2_101_248), "2.1 MB");
        assert_eq!(human_bytes(1_000_000_000), "1.0 GB");
    }
}
