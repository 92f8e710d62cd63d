//! `cairn`: runs one member with etcd's flags and environment variables; `cairn snapshot
//! restore|status` are etcdutl's offline snapshot commands.

use std::process::ExitCode;

use cairn_server::config::Config;
use cairn_server::server::Departure;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("snapshot") {
        return cairn_server::backup::cli::run(&args);
    }
    let cfg = match Config::parse_from_env_and_args(args, &|k| std::env::var(k).ok()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::new(cfg.log_filter()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime");
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let server = cairn_server::server::start(&cfg).await?;
    let departure = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("received shutdown signal; stopping");
            None
        }
        departure = server.departure() => Some(departure),
    };
    if departure == Some(Departure::Removed) {
        tracing::warn!("this member was removed from the cluster; stopping");
    }
    server.stop().await;
    anyhow::ensure!(
        departure != Some(Departure::RaftStopped),
        "the raft loop stopped after a fatal error (fail-stop, see above); exiting"
    );
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
