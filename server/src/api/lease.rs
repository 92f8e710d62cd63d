//! `etcdserverpb.Lease` (etcd: `api/v3rpc/lease.go`, `etcdserver/v3_server.go`), and the leader's
//! side of leases: expiry (a revoke proposed through raft for each expired lease, rate-limited) and
//! answers to the renewals and TTL queries that followers forward over the peer port.
//!
//! Grants and revokes are proposals like any write. Renewals and remaining TTLs depend on the
//! leader's clock, so a follower forwards them to the leader (`cairnpb.Peer/LeaseRenew`,
//! `LeaseTimeToLive`); lease lists are answered locally, as etcd does.

use crate::auth::{Access, AuthError};
use cairn_proto::etcdserverpb::HashKvResponse;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::cairnpb::internal_request::Request;
use cairn_proto::cairnpb::peer_client::PeerClient;
use cairn_proto::etcdserverpb::lease_server::Lease;
use cairn_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request as GrpcRequest, Response, Status, Streaming};

use super::error::ApiError;
use super::Core;
use crate::apply::Applied;
use crate::lease::{Lessor, MAX_LEASE_TTL};
use crate::metrics::METRICS;
use crate::mvcc::Store;
use crate::raft::{PeerQueries, RaftError, RaftObserver};

/// Expired leases revoked per second at most (etcd: `leaseRevokeRate`).
const REVOKES_PER_SECOND: usize = 1000;
/// How often the leader looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// Pause between attempts to reach a leader that is being elected or just failed.
const LEADER_RETRY: Duration = Duration::from_millis(100);
/// Keep-alive responses buffered per stream.
const KEEPALIVE_RESPONSES_BUFFERED: usize = 16;

/// The leader's answers about leases (also served to followers through the peer service).
pub struct LeaseLeader {
    pub lessor: Arc<Lessor>,
    pub store: Store,
    /// Not a `RaftHandle`: the peer service holds this, and must not keep the raft loop alive.
    pub raft: RaftObserver,
    pub request_timeout: Duration,
}

impl LeaseLeader {
    /// Refuses unless this member leads (and keeps the deadlines), after applying everything
    /// committed: a lease granted or revoked just before is then known (etcd: `waitAppliedIndex`).
    async fn ready(&self) -> Result<(), Status> {
        let commit = self.raft.status().commit_index;
        tokio::time::timeout(self.request_timeout, self.raft.wait_applied(commit))
            .await
            .map_err(|_| ApiError::from(RaftError::Timeout))?
            .map_err(ApiError::from)?;
        if !self.lessor.is_primary() {
            return Err(ApiError::from(RaftError::NotLeader).into());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl PeerQueries for LeaseLeader {
    async fn renew(&self, id: i64) -> Result<i64, Status> {
        self.ready().await?;
        if let Some(ttl) = self.lessor.renew(id) {
            return Ok(ttl);
        }
        // Expired: answer once the revoke has deleted its keys, as etcd does.
        let _ = tokio::time::timeout(self.request_timeout, self.lessor.wait_gone(id)).await;
        if self.lessor.exists(id) {
            let e = if self.lessor.is_primary() {
                RaftError::Timeout
            } else {
                RaftError::NotLeader
            };
            return Err(ApiError::from(e).into());
        }
        Ok(0)
    }

    async fn time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        self.ready().await?;
        let Some(remaining) = self.lessor.time_to_live(req.id) else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(LeaseTimeToLiveResponse {
                id: req.id,
                ttl: -1,
                ..LeaseTimeToLiveResponse::default()
            });
        };
        let keys = if req.keys {
            // Listing a lease's keys reads storage.
            let (store, id) = (self.store.clone(), req.id);
            let keys = tokio::task::spawn_blocking(move || store.lease_keys(id))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(ApiError::from)?;
            keys.into_iter().map(|k| k.to_vec().into()).collect()
        } else {
            vec![]
        };
        Ok(LeaseTimeToLiveResponse {
            header: None,
            id: req.id,
            ttl: remaining.ttl,
            granted_ttl: remaining.granted_ttl,
            keys,
        })
    }

    async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse, Status> {
        Ok(super::maintenance::hash_kv(self.store.clone(), revision)
            .await?
            .1)
    }
}

pub struct LeaseService {
    core: Arc<Core>,
}

impl LeaseService {
    pub fn new(core: Arc<Core>) -> LeaseService {
        LeaseService { core }
    }
}

/// Peer clients to the members that led, by member id.
#[derive(Default)]
pub struct LeaderLinks {
    clients: Mutex<HashMap<u64, PeerClient<Channel>>>,
}

impl Core {
    /// The current leader's peer client, or `no leader`.
    fn leader_link(&self) -> Result<PeerClient<Channel>, ApiError> {
        let leader = self.raft.status().leader_id;
        if leader == 0 {
            return Err(RaftError::NoLeader.into());
        }
        let mut clients = self.leader_links.clients.lock().expect("lock poisoned");
        if let Some(c) = clients.get(&leader) {
            return Ok(c.clone());
        }
        let url = self
            .membership
            .borrow()
            .get(leader)
            .and_then(|m| m.peer_urls.first().cloned())
            .ok_or(RaftError::NoLeader)?;
        let endpoint = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .connect_timeout(self.election_timeout);
        let channel = self.peer_dialer.connect_lazy(endpoint);
        let client = PeerClient::new(channel);
        clients.insert(leader, client.clone());
        Ok(client)
    }

    /// Asks the leader (this member, or the one it forwards to) until it answers or the request
    /// times out: through an election it waits for the new leader, as etcd's `LeaseRenew` does.
    async fn ask_leader<T, F, Fut>(&self, mut ask: F) -> Result<T, Status>
    where
        F: FnMut(Option<PeerClient<Channel>>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let attempt = async {
                if self.raft.status().is_leader {
                    ask(None).await
                } else {
                    ask(Some(self.leader_link()?)).await
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(_)) if tokio::time::Instant::now() + LEADER_RETRY < deadline => {
                    tokio::time::sleep(LEADER_RETRY).await
                }
                _ if self.raft.status().leader_id == 0 => {
                    return Err(ApiError::from(RaftError::NoLeader).into())
                }
                _ => return Err(ApiError::from(RaftError::Timeout).into()),
            }
        }
    }

    /// Renews lease `id` on the leader; its TTL, 0 if there is no such lease.
    async fn lease_renew(&self, id: i64) -> Result<i64, Status> {
        self.ask_leader(|leader| async move {
            match leader {
                None => self.lease_leader.renew(id).await,
                Some(mut leader) => Ok(leader
                    .lease_renew(LeaseKeepAliveRequest { id })
                    .await?
                    .into_inner()
                    .ttl),
            }
        })
        .await
    }

    async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        self.ask_leader(|leader| async move {
            match leader {
                None => self.lease_leader.time_to_live(req).await,
                Some(mut leader) => Ok(leader.lease_time_to_live(req).await?.into_inner()),
            }
        })
        .await
    }

    fn current_header(&self) -> Option<cairn_proto::etcdserverpb::ResponseHeader> {
        self.header(self.store.current_revision().unwrap_or_default())
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: GrpcRequest<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = self.core.caller(req.metadata())?;
        let mut req = req.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(ApiError::LeaseTtlTooLarge.into());
        }
        // etcd picks a positive id from its request-id generator.
        while req.id == 0 {
            req.id = (self.core.ids.next() & i64::MAX as u64) as i64;
        }
        let grant = Request::LeaseGrant(req);
        match self.core.propose_as(grant, caller.as_ref()).await? {
            Applied::LeaseGrant(mut resp) => {
                resp.header = self.core.header(resp.header.map_or(0, |h| h.revision));
                Ok(Response::new(resp))
            }
            other => Err(super::kv::unexpected(other)),
        }
    }

    async fn lease_revoke(
        &self,
        req: GrpcRequest<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // Revoking deletes the lease's keys: the caller must be allowed to write each.
        let caller = self.core.caller(req.metadata())?;
        let req = req.into_inner();
        if caller.is_some() {
            let keys = self.core.store.lease_keys(req.id).map_err(ApiError::from)?;
            self.core.permit(&caller, |s, u| {
                keys.iter()
                    .all(|k| s.permits(u, Access::Write, k, &[]))
                    .then_some(())
                    .ok_or(AuthError::PermissionDenied)
            })?;
        }
        let revoke = Request::LeaseRevoke(req);
        match self.core.propose_as(revoke, caller.as_ref()).await? {
            Applied::LeaseRevoke(mut resp) => {
                resp.header = self.core.header(resp.header.map_or(0, |h| h.revision));
                Ok(Response::new(resp))
            }
            other => Err(super::kv::unexpected(other)),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: GrpcRequest<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_RESPONSES_BUFFERED);
        let core = self.core.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    req = inbound.message() => req,
                    _ = tx.closed() => return,
                };
                let req = match req {
                    Ok(Some(req)) => req,
                    Ok(None) | Err(_) => return,
                };
                let resp = core
                    .lease_renew(req.id)
                    .await
                    .map(|ttl| LeaseKeepAliveResponse {
                        header: core.current_header(),
                        id: req.id,
                        ttl,
                    });
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        req: GrpcRequest<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let mut resp = self.core.lease_time_to_live(req.into_inner()).await?;
        resp.header = self.core.current_header();
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _: GrpcRequest<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .core
            .lease_leader
            .lessor
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.core.current_header(),
            leases,
        }))
    }
}

/// The leader's lease duties, for as long as the member runs: follows leadership (promote with an
/// election timeout of grace, demote) and proposes a revoke for each expired lease, at most
/// [`REVOKES_PER_SECOND`].
pub async fn run_expiry(core: Arc<Core>) {
    let mut status = core.raft.watch_status();
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_tick = (REVOKES_PER_SECOND as u128 * EXPIRY_TICK.as_millis() / 1000) as usize;
    let lessor = core.lease_leader.lessor.clone();
    loop {
        let leading = status.borrow_and_update().is_leader;
        if leading != lessor.is_primary() {
            if leading {
                lessor.promote(core.election_timeout);
            } else {
                lessor.demote();
            }
        }
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        for id in lessor.expired(per_tick) {
            let core = core.clone();
            tokio::spawn(async move {
                let revoke = Request::LeaseRevoke(LeaseRevokeRequest { id });
                match core.propose(revoke).await {
                    Ok(_) => METRICS.lease_expired.inc(),
                    Err(e) => tracing::debug!(lease = id, "revoking an expired lease failed: {e}"),
                }
            });
        }
    }
}
