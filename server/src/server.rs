//! Wiring: opens the member's storage, bootstraps or recovers it, starts the owners of state (raft
//! loop, log writer, apply worker, compactor) and serves the client URLs until shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use cairn_proto::cairnpb::peer_client::PeerClient;
use cairn_proto::cairnpb::peer_server::PeerServer;
use cairn_proto::cairnpb::{internal_request, MemberAttributes, MembersRequest};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::alarm::Alarms;
use crate::api::{self, ClientListener, Core, IdGenerator};
use crate::apply::{self, wait::Wait, Apply};
use crate::auth::AuthState;
use crate::cluster::{Member, Membership};
use crate::config::{parse_url, Config};
use crate::engine::Engine;
use crate::mvcc::{Compactor, Store, Writer};
use crate::raft::storage::{self, LogStore};
use crate::raft::{self, PeerService, RaftConfig};
use crate::snapshot;
use crate::tls::{Dialer, Side, Tls};

/// A running member: its addresses and a way to stop it.
pub struct Server {
    pub client_addrs: Vec<SocketAddr>,
    pub peer_addrs: Vec<SocketAddr>,
    member_id: u64,
    membership: watch::Receiver<Membership>,
    raft: raft::RaftHandle,
    shutdown: watch::Sender<bool>,
    /// Client listeners (they drain on shutdown).
    serving: Vec<tokio::task::JoinHandle<()>>,
    /// Peer listeners (their streams never end by themselves: aborted on shutdown).
    peer_serving: Vec<tokio::task::JoinHandle<()>>,
    /// The raft loop (which outlives its log writer) and the apply worker.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Watch streams never end by themselves: closed on shutdown.
    watch_hub: Arc<crate::watch::Hub>,
    /// Tasks that hold the core and never end by themselves (the leader's lease expiry, auto
    /// compaction, corruption checks): aborted on shutdown.
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Snapshots being streamed to clients (their threads read checkpoints): waited for on shutdown.
    snapshot_saves: Arc<api::SnapshotSaves>,
}

/// Why a member stops by itself (see [`Server::departure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// Removed from the cluster: a clean stop.
    Removed,
    /// The raft loop ended after a fatal error: the process must exit with a failure, never
    /// as if it had been removed (a supervisor must see the crash).
    RaftStopped,
}

/// How long a clean stop waits for the raft loop and the apply worker to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    /// Returns once this member must stop by itself: it was removed from the cluster, or its
    /// raft loop ended, which only a fail-stop error (a failed raft log write or fsync, logged
    /// by the thread that hit it) makes it do while the server runs.
    pub async fn departure(&self) -> Departure {
        let mut membership = self.membership.clone();
        let id = self.member_id;
        let removed = tokio::select! {
            removed = async { membership.wait_for(|m| m.removed.contains(&id)).await.is_ok() } => removed,
            refused = self.raft.refused_as_removed() => refused,
        };
        if removed {
            Departure::Removed
        } else {
            Departure::RaftStopped
        }
    }

    /// Stops accepting requests, lets the listeners close, then stops the raft loop, log writer,
    /// apply worker and compactor and waits for them: the database must be idle when the process
    /// exits (RocksDB aborts if its threads are torn down under a writer).
    pub async fn stop(self) {
        let Server {
            shutdown,
            mut serving,
            peer_serving,
            threads,
            raft,
            watch_hub,
            background,
            snapshot_saves,
            ..
        } = self;
        shutdown.send_replace(true);
        watch_hub.close();
        for task in background {
            task.abort();
        }
        for task in peer_serving {
            task.abort();
        }
        let drained = async {
            for task in &mut serving {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(STOP_TIMEOUT, drained).await.is_err() {
            tracing::warn!("client connections did not drain within {STOP_TIMEOUT:?}");
            for task in &serving {
                task.abort();
            }
        }
        // Their clients are gone: each sender stops at its next message and removes its checkpoint.
        if !snapshot_saves.wait_idle(STOP_TIMEOUT).await {
            tracing::warn!("snapshot senders did not stop within {STOP_TIMEOUT:?}");
        }
        // The listeners held the other `RaftHandle`s: with them and this one gone the raft loop
        // ends, closing the apply queue, and the last owner of the compactor joins its thread.
        drop(raft);
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

/// Opens (or creates) the member's data, starts it, serves its peer URLs at once and its client URLs
/// once it has joined the cluster (published its name and client URLs through raft, as etcd does).
pub async fn start(cfg: &Config) -> anyhow::Result<Server> {
    crate::metrics::init(cfg.metrics);
    let data_dir = cfg.data_dir();
    let engine = open_engine(&data_dir)?;
    let client_tls = cfg.client_tls().load(
        Side::Client,
        &cfg.listen_client_urls,
        &hosts(&[&cfg.listen_client_urls, &cfg.advertise_client_urls]),
        &data_dir,
        &cfg.tls_policy(),
    )?;
    let initial_peer_urls: Vec<String> = cfg
        .initial_cluster()?
        .into_iter()
        .flat_map(|(_, urls)| urls)
        .collect();
    let peer_tls = cfg.peer_tls().load(
        Side::Peer,
        &[&cfg.listen_peer_urls[..], &initial_peer_urls[..]].concat(),
        &hosts(&[&cfg.listen_peer_urls, &cfg.initial_advertise_peer_urls]),
        &data_dir,
        &cfg.tls_policy(),
    )?;
    let peer_dialer = Dialer::new(peer_tls.as_ref());
    let snapshot_dir = member_dir(&data_dir).join("snap");
    snapshot::resume_install(&engine)?;
    snapshot::remove_stale_files(&engine, &snapshot_dir)?;
    let (membership, member_id) = recover_or_bootstrap(cfg, &engine, &peer_dialer).await?;
    tracing::info!(
        name = %cfg.name,
        data_dir = %data_dir.display(),
        member_id = format_args!("{member_id:x}"),
        cluster_id = format_args!("{:x}", membership.cluster_id),
        "starting member"
    );
    let cluster_id = membership.cluster_id;
    if membership.removed.contains(&member_id) {
        bail!("member {member_id:x} has been removed from the cluster; its data dir cannot rejoin");
    }

    let writer = Writer::open(engine.clone())?;
    let applied_index = writer.applied_index()?;
    let compactor = Arc::new(Compactor::start(engine.clone())?);
    let wait = Wait::default();
    let watch_hub = Arc::new(crate::watch::Hub::new(writer.revision()));
    let store = Store::new(engine.clone());
    let lessor = Arc::new(crate::lease::Lessor::new(store.leases()?));
    let (membership_tx, membership_rx) = watch::channel(membership);
    let (alarms_tx, alarms_rx) = watch::channel(Alarms::load(&engine)?);
    let (auth_tx, auth_rx) = watch::channel(Arc::new(AuthState::load(&engine)?));
    let tokens = Arc::new(cfg.token_provider()?);
    let (committed_tx, committed_rx) = crossbeam_channel::bounded(raft::APPLY_QUEUE_LEN_MAX);
    let (applied_tx, applied_rx) = watch::channel(applied_index);
    let apply_thread = apply::start(
        Apply {
            writer,
            compactor: compactor.clone(),
            wait: wait.clone(),
            membership: membership_tx,
            alarms: alarms_tx,
            auth: auth_tx,
            tokens: tokens.clone(),
            watch_hub: watch_hub.clone(),
            lessor: lessor.clone(),
            min_lease_ttl: crate::lease::min_ttl(cfg.tick(), cfg.election_ticks()),
            unflushed: Default::default(),
        },
        committed_rx,
        applied_tx,
    );
    let (raft, raft_thread) = raft::start(
        engine.clone(),
        RaftConfig {
            member_id,
            tick: cfg.tick(),
            election_ticks: cfg.election_ticks(),
            heartbeat_ticks: 1,
            snapshot_count: cfg.snapshot_count,
            applied: applied_index,
            cluster_id,
            snapshot_dir: snapshot_dir.clone(),
            peer_dialer: peer_dialer.clone(),
        },
        committed_tx,
        applied_rx,
        membership_rx.clone(),
        tokio::runtime::Handle::current(),
    )?;
    let lease_leader = Arc::new(api::LeaseLeader {
        lessor,
        store: store.clone(),
        raft: raft.observer(),
        request_timeout: cfg.request_timeout(),
    });
    let peer_service = PeerService::new(
        &raft,
        member_id,
        cluster_id,
        membership_rx.clone(),
        snapshot_dir.clone(),
        lease_leader.clone(),
    );
    let snapshot_saves = Arc::new(api::SnapshotSaves::new(snapshot_dir));

    let core = Arc::new(Core {
        store,
        raft: raft.clone(),
        wait,
        ids: IdGenerator::new(member_id, SystemTime::now()),
        member_id,
        cluster_id,
        membership: membership_rx.clone(),
        alarms: alarms_rx,
        auth: auth_rx,
        tokens,
        bcrypt_cost: cfg.bcrypt_cost,
        quota_bytes: cfg.quota_backend_bytes(),
        db_size: api::DbSize::new(engine.clone()),
        client_urls: cfg.advertise_client_urls.clone(),
        compactor,
        engine,
        max_request_bytes: cfg.max_request_bytes as usize,
        max_txn_ops: cfg.max_txn_ops as usize,
        max_watchers_per_stream: cfg.max_watchers_per_stream as usize,
        request_timeout: cfg.request_timeout(),
        election_timeout: Duration::from_millis(cfg.election_timeout),
        watch_hub: watch_hub.clone(),
        watch_progress_notify_interval: cfg.watch_progress_notify_interval,
        lease_leader,
        leader_links: api::LeaderLinks::default(),
        snapshot_saves: snapshot_saves.clone(),
        peer_dialer,
        client_dialer: Dialer::new(client_tls.as_ref()),
    });
    if cfg.initial_corrupt_check {
        core.initial_corruption_check().await?;
    }
    let mut background = vec![tokio::spawn(api::run_expiry(core.clone()))];
    if let Some(policy) = cfg.auto_compaction()? {
        background.push(tokio::spawn(api::run_auto_compaction(core.clone(), policy)));
    }
    if !cfg.corrupt_check_time.is_zero() {
        let every = cfg.corrupt_check_time;
        background.push(tokio::spawn(api::run_corruption_checks(
            core.clone(),
            every,
        )));
    }
    let (shutdown, _) = watch::channel(false);
    let mut serving = vec![];
    let mut peer_serving = vec![];
    let peer_addrs = serve_peers(cfg, peer_service, peer_tls.as_ref(), &mut peer_serving).await?;
    serve_metrics(cfg, core.clone(), &shutdown, &mut serving).await?;
    let client_addrs =
        serve_clients(cfg, core, client_tls.as_ref(), &shutdown, &mut serving).await?;
    Ok(Server {
        client_addrs,
        peer_addrs,
        member_id,
        membership: membership_rx,
        raft,
        shutdown,
        serving,
        peer_serving,
        threads: vec![raft_thread, apply_thread],
        watch_hub,
        background,
        snapshot_saves,
    })
}

/// The directory of a member's own files inside its data dir (etcd's layout: `<data-dir>/member`).
pub(crate) fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member")
}

/// Where a member's database lives inside `member_dir`.
pub(crate) fn db_dir(member_dir: &Path) -> PathBuf {
    member_dir.join("rocksdb")
}

/// Creates `data_dir` if needed, readable by its owner only (etcd: `fileutil.TouchDirAll`, 0700).
pub(crate) fn create_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn open_engine(data_dir: &Path) -> anyhow::Result<Engine> {
    create_data_dir(data_dir)?;
    let db_dir = db_dir(&member_dir(data_dir));
    std::fs::create_dir_all(&db_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    Engine::open(&db_dir).with_context(|| format!("cannot open {}", db_dir.display()))
}

/// An existing member keeps its stored membership (the `--initial-cluster*` flags are ignored, as
/// with etcd). A member of a new cluster derives it from the flags; a member joining a running one
/// (`--initial-cluster-state=existing`) asks the other members listed in `--initial-cluster`.
async fn recover_or_bootstrap(
    cfg: &Config,
    engine: &Engine,
    dialer: &Dialer,
) -> anyhow::Result<(Membership, u64)> {
    if LogStore::exists(engine)? {
        if let Some(found) = Membership::load(engine)? {
            return Ok(found);
        }
    }
    let (flags, local) = initial_membership(
        &cfg.initial_cluster()?,
        &cfg.name,
        &cfg.initial_cluster_token,
        &cfg.initial_advertise_peer_urls,
    )?;
    let mut advertised = cfg.initial_advertise_peer_urls.clone();
    advertised.sort();
    if cfg.initial_cluster_state == "existing" {
        let others: Vec<&Member> = flags.members.iter().filter(|m| m.id != local).collect();
        let (membership, local) = fetch_membership(&others, &advertised, dialer).await?;
        membership.save_bootstrap(engine, local)?;
        LogStore::bootstrap_joining(engine)?;
        return Ok((membership, local));
    }
    bootstrap_new(engine, &flags, local)?;
    Ok((flags, local))
}

/// The membership that `--initial-cluster` describes and the id of member `name` in it; the
/// member's entry must list exactly its `--initial-advertise-peer-urls` (etcd: `VerifyBootstrap`).
pub(crate) fn initial_membership(
    initial: &[(String, Vec<String>)],
    name: &str,
    token: &str,
    advertise_peer_urls: &[String],
) -> anyhow::Result<(Membership, u64)> {
    let (membership, local) =
        Membership::from_initial_cluster(initial, name, token).map_err(anyhow::Error::msg)?;
    let mut advertised = advertise_peer_urls.to_vec();
    advertised.sort();
    let me = membership
        .get(local)
        .expect("local member is in the membership");
    let mut listed = me.peer_urls.clone();
    listed.sort();
    if listed != advertised {
        bail!(
            "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={}",
            me.peer_urls.join(","),
            advertise_peer_urls.join(",")
        );
    }
    Ok((membership, local))
}

/// Makes `engine` a member of a new cluster, whatever state machine it holds: the membership and
/// this member's id, the bootstrap entry counted as applied (it carries no request), and a raft log
/// that starts after it with the membership as configuration. The log's state is written last and
/// synced: until it exists the member is not bootstrapped (see [`LogStore::exists`]), and its sync
/// makes every earlier write durable.
pub(crate) fn bootstrap_new(
    engine: &Engine,
    membership: &Membership,
    local: u64,
) -> anyhow::Result<()> {
    membership.save_bootstrap(engine, local)?;
    let mut writer = Writer::open(engine.clone())?;
    writer.set_applied(storage::BOOTSTRAP_INDEX);
    writer.flush()?;
    LogStore::bootstrap(engine, &membership.voter_ids())?;
    Ok(())
}

/// Asks the running members for the cluster, and finds this member in it by its peer URLs.
async fn fetch_membership(
    others: &[&Member],
    advertised: &[String],
    dialer: &Dialer,
) -> anyhow::Result<(Membership, u64)> {
    let mut last_error = anyhow::anyhow!("--initial-cluster names no other member to join");
    for url in others.iter().flat_map(|m| &m.peer_urls) {
        let answer = async {
            let endpoint = tonic::transport::Endpoint::from_shared(url.clone())?;
            let mut client = PeerClient::new(dialer.connect(endpoint).await?);
            Ok::<_, anyhow::Error>(client.members(MembersRequest {}).await?.into_inner())
        };
        let resp = match tokio::time::timeout(Duration::from_secs(5), answer).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                last_error = e.context(format!("cannot fetch the cluster from {url}"));
                continue;
            }
            Err(_) => {
                last_error = anyhow::anyhow!("cannot fetch the cluster from {url}: timed out");
                continue;
            }
        };
        let membership = Membership {
            cluster_id: resp.cluster_id,
            members: resp
                .members
                .into_iter()
                .map(|m| Member {
                    id: m.id,
                    name: m.name,
                    peer_urls: m.peer_ur_ls,
                    client_urls: m.client_ur_ls,
                    is_learner: m.is_learner,
                })
                .collect(),
            removed: vec![],
        };
        let local = membership.members.iter().find(|m| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls == advertised
        });
        let Some(local) = local else {
            bail!(
                "this member (peer URLs {}) is not in the cluster: add it with `member add` first",
                advertised.join(",")
            );
        };
        let local = local.id;
        return Ok((membership, local));
    }
    Err(last_error)
}

async fn serve_peers(
    cfg: &Config,
    service: PeerService,
    tls: Option<&Tls>,
    serving: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Vec<SocketAddr>> {
    let service = PeerServer::new(service)
        .max_decoding_message_size(raft::PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(raft::PEER_MESSAGE_BYTES_MAX);
    let mut addrs = vec![];
    for url in &cfg.listen_peer_urls {
        let listener = bind(url).await?;
        let addr = listener.local_addr()?;
        addrs.push(addr);
        let incoming = ReceiverStream::new(crate::tls::accept(
            listener,
            tls.filter(|_| url.starts_with("https://"))
                .map(|t| t.server.clone()),
        ))
        .map(|(stream, _)| Ok::<_, std::io::Error>(stream));
        let router = tonic::transport::Server::builder()
            .initial_stream_window_size(raft::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(raft::CONNECTION_WINDOW_BYTES)
            .add_service(service.clone());
        serving.push(tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming(incoming).await {
                tracing::error!("peer listener failed: {e}");
            }
        }));
        tracing::info!(%addr, "serving peer traffic");
    }
    Ok(addrs)
}

/// The hosts of `urls`, without duplicates (the names a self-signed certificate covers).
fn hosts(urls: &[&Vec<String>]) -> Vec<String> {
    let mut hosts: Vec<String> = urls
        .iter()
        .flat_map(|list| list.iter())
        .filter_map(|u| parse_url(u).ok().map(|(host, _)| host))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

async fn bind(url: &str) -> anyhow::Result<TcpListener> {
    let (host, port) = parse_url(url)?;
    TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {url}"))
}

/// Binds the client URLs now and serves them once this member has published its attributes through
/// raft: by then it has a leader and has applied everything committed before it started.
async fn serve_clients(
    cfg: &Config,
    core: Arc<Core>,
    tls: Option<&Tls>,
    shutdown: &watch::Sender<bool>,
    serving: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Vec<SocketAddr>> {
    let mut listeners = vec![];
    let mut addrs = vec![];
    for url in &cfg.listen_client_urls {
        let listener = bind(url).await?;
        addrs.push(listener.local_addr()?);
        let tls = tls.filter(|_| url.starts_with("https://"));
        listeners.push(ClientListener::new(listener, tls)?);
    }
    let attributes = MemberAttributes {
        member_id: core.member_id,
        name: cfg.name.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
    };
    let mut stop = shutdown.subscribe();
    let served = addrs.clone();
    let max_streams = cfg.max_concurrent_streams;
    serving.push(tokio::spawn(async move {
        tokio::select! {
            _ = publish(&core, attributes) => {}
            _ = stop.wait_for(|&s| s) => return,
        }
        let mut tasks = vec![];
        for (listener, addr) in listeners.into_iter().zip(served) {
            let stop = stop.clone();
            tasks.push(tokio::spawn(api::serve_clients(
                listener,
                api::router(core.clone()),
                max_streams,
                stop,
            )));
            tracing::info!(%addr, "serving client requests");
        }
        drop(core);
        for t in tasks {
            let _ = t.await;
        }
    }));
    Ok(addrs)
}

/// Serves `/metrics` and the health endpoints on `--listen-metrics-urls` from now on (etcd serves
/// them before the member has joined, so a scrape can watch it start).
async fn serve_metrics(
    cfg: &Config,
    core: Arc<Core>,
    shutdown: &watch::Sender<bool>,
    serving: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    for url in &cfg.listen_metrics_urls {
        let listener = bind(url).await?;
        let addr = listener.local_addr()?;
        let router = api::metrics_router(core.clone());
        let mut stop = shutdown.subscribe();
        serving.push(tokio::spawn(async move {
            let result = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|&s| s).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!("metrics listener failed: {e}");
            }
        }));
        tracing::info!(%addr, "serving metrics");
    }
    Ok(())
}

/// How long one attempt to publish waits: a proposal made before this member knows its leader is
/// dropped by raft and would otherwise wait out the whole request timeout.
const PUBLISH_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// Proposes this member's name and client URLs until it succeeds (etcd: `publish`).
async fn publish(core: &Core, attributes: MemberAttributes) {
    loop {
        let request = internal_request::Request::MemberAttributes(attributes.clone());
        match core.propose_within(request, PUBLISH_ATTEMPT_TIMEOUT).await {
            Ok(_) => {
                tracing::info!("published member attributes; ready to serve clients");
                return;
            }
            Err(e) => {
                tracing::debug!("publishing member attributes: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
