//! The client-facing API: tonic services and the HTTP side of the client port.
//!
//! Services validate a request, hand mutations to raft through [`Core::propose`] (and wait for the
//! apply worker's answer), serve reads from the MVCC read side after a linearizable barrier, and map
//! every error to etcd's status in one place ([`error`]).
//!
//! **Boundary:** the only module that implements tonic service traits or speaks HTTP.

mod auth;
mod auto_compact;
pub(crate) mod cluster;
mod concurrency;
mod corrupt;
mod error;
pub(crate) mod gateway;
mod health;
mod http;
mod kv;
mod lease;
mod listener;
mod maintenance;
mod metrics;
mod snapshot;
pub(crate) mod validate;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_proto::cairnpb::{internal_request, InternalRequest, MemberChange};
use cairn_proto::etcdserverpb::auth_server::AuthServer;
use cairn_proto::etcdserverpb::cluster_server::ClusterServer;
use cairn_proto::etcdserverpb::kv_server::KvServer;
use cairn_proto::etcdserverpb::lease_server::LeaseServer;
use cairn_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use cairn_proto::etcdserverpb::watch_server::WatchServer;
use cairn_proto::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmType, PutResponse, ResponseHeader,
};
use cairn_proto::grpc_health_v1::health_server::HealthServer;
use cairn_proto::v3electionpb::election_server::ElectionServer;
use cairn_proto::v3lockpb::lock_server::LockServer;
use prost::Message;
use tokio::sync::oneshot;

use crate::alarm::{quota_cost, Alarms};
use crate::apply::wait::Wait;
use crate::apply::{Applied, ApplyResult, MembershipRefusal};
use crate::auth::{AuthInfo, AuthState, TokenProvider};
use crate::cluster::Membership;
use crate::engine::Engine;
use crate::failpoints;
use crate::metrics::{PendingProposal, METRICS};
use crate::mvcc::{Compactor, Store};
use crate::raft::{MemberChangeKind, RaftError, RaftHandle};
use crate::tls::Dialer;
pub use auto_compact::run_auto_compaction;
pub use corrupt::run_corruption_checks;
pub use error::ApiError;
pub use lease::{run_expiry, LeaderLinks, LeaseLeader};
pub use listener::{serve_clients, ClientAddr, ClientListener};
pub use snapshot::SnapshotSaves;

/// The etcd API version whose semantics Cairn implements (reported by Status and `/version`).
pub const ETCD_VERSION: &str = "3.4.23";
/// The cluster version reported by `/version`.
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";
/// Added to `--max-request-bytes` for the gRPC receive limit (etcd: `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Unique request ids, as etcd's `idutil.Generator`: the member id's low 16 bits, then a 48-bit
/// counter that starts from the current time in milliseconds (so ids stay unique across restarts).
pub struct IdGenerator {
    prefix: u64,
    suffix: AtomicU64,
}

impl IdGenerator {
    pub fn new(member_id: u64, now: SystemTime) -> IdGenerator {
        let ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        IdGenerator {
            prefix: member_id << 48,
            suffix: AtomicU64::new((ms & 0xFF_FFFF_FFFF) << 8),
        }
    }

    pub fn next(&self) -> u64 {
        let suffix = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
        self.prefix | (suffix & 0xFFFF_FFFF_FFFF)
    }
}

/// What every service shares: the way into raft, the MVCC read side and this member's identity.
pub struct Core {
    pub store: Store,
    pub raft: RaftHandle,
    pub wait: Wait<ApplyResult>,
    pub ids: IdGenerator,
    pub member_id: u64,
    pub cluster_id: u64,
    /// The membership as of the applied index.
    pub membership: tokio::sync::watch::Receiver<Membership>,
    /// The alarms as of the applied index.
    pub alarms: tokio::sync::watch::Receiver<Alarms>,
    /// The auth state as of the applied index.
    pub auth: tokio::sync::watch::Receiver<Arc<AuthState>>,
    pub tokens: Arc<TokenProvider>,
    pub bcrypt_cost: u32,
    /// `--quota-backend-bytes` (`None`: no quota).
    pub quota_bytes: Option<u64>,
    pub db_size: DbSize,
    pub client_urls: Vec<String>,
    pub compactor: Arc<Compactor>,
    pub engine: Engine,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// `--max-watchers-per-stream`.
    pub max_watchers_per_stream: usize,
    pub request_timeout: Duration,
    pub election_timeout: Duration,
    pub watch_hub: Arc<crate::watch::Hub>,
    pub watch_progress_notify_interval: Duration,
    pub lease_leader: Arc<LeaseLeader>,
    pub leader_links: LeaderLinks,
    /// `Maintenance.Snapshot` streams in progress.
    pub snapshot_saves: Arc<SnapshotSaves>,
    /// Dials the other members' peer URLs (lease forwarding, hash checks).
    pub peer_dialer: Dialer,
    /// Dials the other members' client URLs (member promote forwarding), with this member's
    /// client-side certificate.
    pub client_dialer: Dialer,
}

/// The backend's size, as the quota and Status read it: refreshed at most every
/// [`DbSize::REFRESH`] (asking RocksDB costs microseconds; every write asks).
pub struct DbSize {
    engine: Engine,
    epoch: Instant,
    bytes: AtomicU64,
    refreshed_ms: AtomicU64,
}

impl DbSize {
    const REFRESH: Duration = Duration::from_millis(100);

    pub fn new(engine: Engine) -> DbSize {
        let bytes = AtomicU64::new(engine.state_size_bytes());
        DbSize {
            engine,
            epoch: Instant::now(),
            bytes,
            refreshed_ms: AtomicU64::new(0),
        }
    }

    /// Asks RocksDB now (after a change of size that the next request must see, e.g. defragment).
    pub fn refresh(&self) {
        self.bytes
            .store(self.engine.state_size_bytes(), Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.refreshed_ms.load(Ordering::Relaxed);
        if now >= last + Self::REFRESH.as_millis() as u64
            && self
                .refreshed_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.bytes
                .store(self.engine.state_size_bytes(), Ordering::Relaxed);
        }
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Core {
    /// Whether `request` would take the backend over `--quota-backend-bytes`.
    fn over_quota(&self, request: &internal_request::Request) -> bool {
        let Some(limit) = self.quota_bytes else {
            return false;
        };
        let cost = quota_cost(request);
        cost > 0 && self.db_size.bytes() + cost >= limit
    }

    /// Replicates `request` and waits until it is applied; returns the state machine's answer.
    pub async fn propose(&self, request: internal_request::Request) -> Result<Applied, ApiError> {
        self.propose_within(request, self.request_timeout).await
    }

    /// [`Core::propose`] on behalf of `caller`, whose permission was checked at its auth
    /// revision (apply refuses the request if the auth state has changed since).
    pub async fn propose_as(
        &self,
        request: internal_request::Request,
        caller: Option<&AuthInfo>,
    ) -> Result<Applied, ApiError> {
        self.propose_full(request, self.request_timeout, caller)
            .await
    }

    /// [`Core::propose`] with its own deadline.
    pub async fn propose_within(
        &self,
        request: internal_request::Request,
        timeout: Duration,
    ) -> Result<Applied, ApiError> {
        self.propose_full(request, timeout, None).await
    }

    async fn propose_full(
        &self,
        request: internal_request::Request,
        timeout: Duration,
        caller: Option<&AuthInfo>,
    ) -> Result<Applied, ApiError> {
        // etcd's quota check (`api/v3rpc/quota.go`): over quota, the member raises NOSPACE for
        // itself, through raft, and refuses the request.
        if self.over_quota(&request) {
            let raise = AlarmRequest {
                action: alarm_request::AlarmAction::Activate as i32,
                member_id: self.member_id,
                alarm: AlarmType::Nospace as i32,
            };
            let raise = internal_request::Request::Alarm(raise);
            let raised = self.replicate(raise, timeout, None);
            if let Err(e) = raised.await {
                tracing::warn!("raising the NOSPACE alarm failed: {e}");
            }
            return Err(ApiError::NoSpace);
        }
        self.replicate(request, timeout, caller).await
    }

    async fn replicate(
        &self,
        request: internal_request::Request,
        timeout: Duration,
        caller: Option<&AuthInfo>,
    ) -> Result<Applied, ApiError> {
        let _pending = PendingProposal::start();
        let id = self.ids.next();
        let ack_early = failpoints::active(failpoints::Bug::AckBeforeCommit)
            && matches!(request, internal_request::Request::Put(_));
        let data = InternalRequest {
            id,
            request: Some(request),
            username: caller.map(|c| c.user.clone()).unwrap_or_default(),
            // Without a caller, the auth state it was admitted under (apply refuses a keyspace
            // write admitted before auth was enabled).
            auth_revision: caller.map_or_else(|| self.auth_state().revision, |c| c.revision),
        }
        .encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(ApiError::RequestTooLarge);
        }
        let applied = self.wait.register(id);
        if let Err(e) = self.raft.propose(data) {
            self.wait.cancel(id);
            METRICS.proposals_failed.inc();
            return Err(e.into());
        }
        if ack_early {
            self.wait.cancel(id);
            return Ok(Applied::Put(PutResponse {
                header: Some(ResponseHeader::default()),
                prev_kv: None,
            }));
        }
        self.wait_applied(id, applied, timeout).await
    }

    /// Proposes a membership change and waits until it is applied; returns the new membership.
    pub async fn change_membership(
        &self,
        kind: MemberChangeKind,
        mut change: MemberChange,
    ) -> Result<Membership, ApiError> {
        let _pending = PendingProposal::start();
        let id = self.ids.next();
        change.id = id;
        let applied = self.wait.register(id);
        let member_id = change.member_id;
        if let Err(e) = self
            .raft
            .propose_member_change(kind, member_id, change.encode_to_vec())
        {
            self.wait.cancel(id);
            METRICS.proposals_failed.inc();
            return Err(e.into());
        }
        match self.wait_applied(id, applied, self.request_timeout).await? {
            Applied::Membership(m) => Ok(m),
            Applied::MembershipRefused(r) => Err(ApiError::Member(match r {
                MembershipRefusal::IdExists => error::MemberError::IdExists,
                MembershipRefusal::NotFound => error::MemberError::NotFound,
            })),
            other => Err(ApiError::Internal(format!("apply answered with {other:?}"))),
        }
    }

    async fn wait_applied(
        &self,
        id: u64,
        applied: oneshot::Receiver<ApplyResult>,
        timeout: Duration,
    ) -> Result<Applied, ApiError> {
        let start = std::time::Instant::now();
        match tokio::time::timeout(timeout, applied).await {
            Ok(Ok(result)) => Ok(result?),
            Ok(Err(_)) => {
                METRICS.proposals_failed.inc();
                Err(RaftError::Stopped.into())
            }
            Err(_) => {
                METRICS.proposals_failed.inc();
                self.wait.cancel(id);
                Err(self.raft.timeout_cause(start, self.election_timeout).into())
            }
        }
    }

    /// Returns once a local read would be linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), ApiError> {
        if failpoints::active(failpoints::Bug::ReadWithoutReadIndex) {
            return Ok(());
        }
        Ok(self.raft.wait_linearizable(self.request_timeout).await?)
    }

    /// etcd's response header: this member's identity, the raft term and `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.status().term,
        })
    }
}

/// The client port's router: the gRPC services, the HTTP endpoints, and a fallback that names
/// gRPC methods Cairn does not serve yet.
pub fn router(core: Arc<Core>) -> axum::Router {
    let recv_max = core.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let grpc = tonic::service::Routes::new(
        KvServer::new(kv::KvService::new(core.clone()))
            .max_decoding_message_size(recv_max)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService::new(core.clone()))
            .max_decoding_message_size(recv_max)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        ClusterServer::new(cluster::ClusterService::new(core.clone()))
            .max_decoding_message_size(recv_max)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService::new(core.clone()))
            .max_decoding_message_size(recv_max)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        WatchServer::new(watch::WatchService::new(core.clone()))
            .max_decoding_message_size(recv_max)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        LockServer::new(concurrency::LockService::new(core.clone()))
            .max_decoding_message_size(recv_max)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        ElectionServer::new(concurrency::ElectionService::new(core.clone()))
            .max_decoding_message_size(recv_max)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        AuthServer::new(auth::AuthService::new(core.clone()))
            .max_decoding_message_size(recv_max)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(HealthServer::new(health::HealthService));
    let grpc = grpc
        .into_axum_router()
        .layer(metrics::GrpcMetricsLayer)
        .layer(axum::middleware::from_fn_with_state(
            core.clone(),
            admission,
        ))
        .layer(axum::middleware::from_fn(auth::tls_identity));
    let gateway = Arc::new(gateway::Gateway::new(grpc.clone()));
    http::routes(grpc, core).merge(gateway::routes(gateway))
}

/// What `--listen-metrics-urls` serve: `/metrics` and the health endpoints, no gRPC.
pub fn metrics_router(core: Arc<Core>) -> axum::Router {
    http::metrics_routes(core)
}

impl Core {
    pub fn is_learner(&self) -> bool {
        self.membership
            .borrow()
            .get(self.member_id)
            .is_some_and(|m| m.is_learner)
    }
}

/// etcd's unary and stream interceptors, in front of every gRPC service: a learner serves only
/// `Status`, health checks and serializable `Range` (the KV service checks the latter), and a client
/// that sets the `hasleader` metadata (clientv3's `WithRequireLeader`) is refused with `no leader`
/// while this member knows of none.
async fn admission(
    axum::extract::State(core): axum::extract::State<Arc<Core>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    const LEARNER_METHODS: [&str; 3] = [
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.KV/Range",
        "/grpc.health.v1.Health/Check",
    ];
    if core.is_learner() && !LEARNER_METHODS.contains(&req.uri().path()) {
        return tonic::Status::from(ApiError::NotSupportedForLearner).into_http();
    }
    let requires_leader = req
        .headers()
        .get("hasleader")
        .is_some_and(|v| v.as_bytes() == b"true");
    if requires_leader && core.raft.status().leader_id == 0 {
        return tonic::Status::from(ApiError::from(RaftError::NoLeader)).into_http();
    }
    next.run(req).await
}
