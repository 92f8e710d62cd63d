//! Wiring: opens the member's storage, bootstraps or recovers it, starts the owners of state (raft
//! loop, log writer, apply worker, compactor) and serves the client URLs until shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ClientListener, Core, IdGenerator};
use crate::apply::{self, wait::Wait};
use crate::cluster::Membership;
use crate::config::{parse_http_url, Config};
use crate::engine::Engine;
use crate::mvcc::{Compactor, Store, Writer};
use crate::raft::storage::{self, LogStore};
use crate::raft::{self, RaftConfig};

/// A running member: its client addresses and a way to stop it.
pub struct Server {
    pub client_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    serving: Vec<tokio::task::JoinHandle<()>>,
    /// The raft loop (which outlives its log writer) and the apply worker.
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// How long a clean stop waits for the raft loop and the apply worker to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    /// Stops accepting requests, lets the listeners close, then stops the raft loop, log writer,
    /// apply worker and compactor and waits for them: the database must be idle when the process
    /// exits (RocksDB aborts if its threads are torn down under a writer).
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        for task in self.serving {
            let _ = task.await;
        }
        // The listeners held the last `RaftHandle`s: with them gone the raft loop ends, closing the
        // apply queue, and the last owner of the compactor joins its thread.
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(STOP_TIMEOUT, joined).await.is_err() {
            tracing::warn!("background threads did not stop within {STOP_TIMEOUT:?}");
        }
    }
}

/// Opens (or creates) the member's data, starts it, and serves its client URLs.
pub async fn start(cfg: &Config) -> anyhow::Result<Server> {
    let data_dir = cfg.data_dir();
    let engine = open_engine(&data_dir)?;
    let membership = recover_or_bootstrap(cfg, &engine)?;
    tracing::info!(
        name = %cfg.name,
        data_dir = %data_dir.display(),
        member_id = format_args!("{:x}", membership.member_id),
        cluster_id = format_args!("{:x}", membership.cluster_id),
        "starting member"
    );

    let mut writer = Writer::open(engine.clone())?;
    if writer.applied_index()? < storage::BOOTSTRAP_INDEX {
        // The bootstrap entry carries no request: it counts as applied.
        writer.set_applied(storage::BOOTSTRAP_INDEX)?;
    }
    let applied_index = writer.applied_index()?;
    let compactor = Arc::new(Compactor::start(engine.clone())?);
    let wait = Wait::default();
    let (committed_tx, committed_rx) = crossbeam_channel::bounded(raft::APPLY_QUEUE_LEN_MAX);
    let (applied_tx, applied_rx) = watch::channel(applied_index);
    let apply_thread = apply::start(
        writer,
        compactor.clone(),
        committed_rx,
        applied_tx,
        wait.clone(),
    );
    let (raft, raft_thread) = raft::start(
        engine.clone(),
        RaftConfig {
            member_id: membership.member_id,
            tick: cfg.tick(),
            election_ticks: cfg.election_ticks(),
            heartbeat_ticks: 1,
            snapshot_count: cfg.snapshot_count,
            applied: applied_index,
        },
        committed_tx,
        applied_rx,
    )?;

    // Serve only once the log committed before this start is applied, as etcd does.
    tokio::time::timeout(cfg.request_timeout(), async {
        raft.wait_leader().await?;
        raft.wait_applied(raft.status().commit_index).await
    })
    .await
    .context("no leader elected in time")??;

    let core = Arc::new(Core {
        store: Store::new(engine.clone()),
        raft,
        wait,
        ids: IdGenerator::new(membership.member_id, SystemTime::now()),
        membership,
        client_urls: cfg.advertise_client_urls.clone(),
        compactor,
        engine,
        max_request_bytes: cfg.max_request_bytes as usize,
        max_txn_ops: cfg.max_txn_ops as usize,
        request_timeout: cfg.request_timeout(),
    });
    serve(cfg, core, vec![raft_thread, apply_thread]).await
}

fn open_engine(data_dir: &Path) -> anyhow::Result<Engine> {
    let db_dir = data_dir.join("member").join("rocksdb");
    std::fs::create_dir_all(&db_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Engine::open(&db_dir).with_context(|| format!("cannot open {}", db_dir.display()))
}

/// An existing member keeps its stored membership (the `--initial-cluster*` flags are ignored, as
/// with etcd); a new one derives it from the flags and bootstraps its raft log.
fn recover_or_bootstrap(cfg: &Config, engine: &Engine) -> anyhow::Result<Membership> {
    if LogStore::exists(engine)? {
        if let Some(m) = Membership::load(engine)? {
            return Ok(m);
        }
    }
    if cfg.initial_cluster_state == "existing" {
        bail!("--initial-cluster-state=existing (joining a running cluster) is not supported yet; a member with data ignores the flag");
    }
    let initial = cfg.initial_cluster()?;
    let membership =
        Membership::from_initial_cluster(&initial, &cfg.name, &cfg.initial_cluster_token)
            .map_err(anyhow::Error::msg)?;
    if membership.members.len() > 1 {
        bail!(
            "--initial-cluster names {} members: multi-member clusters are not supported yet",
            membership.members.len()
        );
    }
    let mut advertised = cfg.initial_advertise_peer_urls.clone();
    advertised.sort();
    let me = membership
        .members
        .iter()
        .find(|m| m.id == membership.member_id)
        .expect("local member is in the membership");
    let mut listed = me.peer_urls.clone();
    listed.sort();
    if listed != advertised {
        bail!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
            cfg.name,
            me.peer_urls.join(","),
            cfg.initial_advertise_peer_urls.join(",")
        );
    }
    membership.save(engine)?;
    LogStore::bootstrap(engine, &membership.voter_ids())?;
    Ok(membership)
}

async fn serve(
    cfg: &Config,
    core: Arc<Core>,
    threads: Vec<std::thread::JoinHandle<()>>,
) -> anyhow::Result<Server> {
    let (shutdown, _) = watch::channel(false);
    let mut client_addrs = vec![];
    let mut serving = vec![];
    for url in &cfg.listen_client_urls {
        let (host, port) = parse_http_url(url)?;
        let listener = TcpListener::bind((host.as_str(), port))
            .await
            .with_context(|| format!("cannot listen on {url}"))?;
        let addr = listener.local_addr()?;
        client_addrs.push(addr);
        let router = api::router(core.clone());
        let mut stop = shutdown.subscribe();
        serving.push(tokio::spawn(async move {
            let result = axum::serve(ClientListener(listener), router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|&s| s).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!("client listener failed: {e}");
            }
        }));
        tracing::info!(%addr, "serving client requests");
    }
    Ok(Server {
        client_addrs,
        shutdown,
        serving,
        threads,
    })
}
