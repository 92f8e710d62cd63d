//! `etcdserverpb.Cluster`: membership through raft, with etcd 3.4's rules and errors
//! (etcd: `etcdserver/server.go` AddMember/RemoveMember/PromoteMember/UpdateMember and their
//! `mayAdd…/mayRemove…/mayPromote…` strict-reconfiguration checks, `api/v3rpc/member.go`).
//!
//! A member is added as a learner or a voter, promoted once its log is within 90% of the leader's,
//! removed (for good: its id is never reused), or given new peer URLs. Each answer lists the members
//! as of the applied change.

use crate::auth::AuthError;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_proto::cairnpb::{internal_request, member_change, MemberChange, MemberPeerUrls};
use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::cluster_server::Cluster;
use cairn_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use super::error::{ApiError, MemberError};
use super::Core;
use crate::apply::Applied;
use crate::cluster::{self, Membership};
use crate::config::parse_url;
use crate::raft::{MemberChangeKind, RaftError};

/// Learners a cluster may have at once (etcd: `maxLearners`).
const LEARNERS_MAX: usize = 1;
/// How much of the leader's log a learner must have to be promoted (etcd: `readyPercent`).
const LEARNER_READY_FRACTION: f64 = 0.9;
/// How long peers must have been connected for a change to count them as healthy
/// (etcd: `HealthInterval`).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

pub struct ClusterService {
    core: Arc<Core>,
}

impl ClusterService {
    /// With auth on, only root changes the membership (etcd: `permission denied`).
    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = self.core.caller(req.metadata())?;
        Ok(self
            .core
            .permit_admin(&caller, AuthError::PermissionDenied)?)
    }

    pub fn new(core: Arc<Core>) -> ClusterService {
        ClusterService { core }
    }

    fn members(&self, membership: &Membership) -> Vec<Member> {
        let mut members: Vec<Member> = membership.members.iter().map(to_proto).collect();
        members.sort_by_key(|m| m.id);
        members
    }

    /// etcd 3.4's cluster responses carry no revision.
    fn header(&self) -> Option<ResponseHeader> {
        self.core.header(0)
    }
}

fn to_proto(m: &cluster::Member) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

pub(crate) fn check_urls(urls: &[String]) -> Result<(), ApiError> {
    if urls.is_empty() || urls.iter().any(|u| parse_url(u).is_err()) {
        return Err(MemberError::BadUrls.into());
    }
    Ok(())
}

fn known(membership: &Membership, id: u64) -> Result<&cluster::Member, ApiError> {
    membership.get(id).ok_or(MemberError::NotFound.into())
}

/// Members that have started (published their name), among `voters`.
fn started(membership: &Membership, voters: &[u64]) -> usize {
    voters
        .iter()
        .filter(|id| membership.get(**id).is_some_and(|m| !m.name.is_empty()))
        .count()
}

/// etcd `IsReadyTo…VotingMember`: after the change, the started voters still form a quorum.
fn enough_started(membership: &Membership, voters_after: &[u64]) -> Result<(), ApiError> {
    let n = voters_after.len();
    let started = started(membership, voters_after);
    // A one-member cluster may grow to two (etcd special-cases it).
    if n == 2 && started == 1 && membership.voter_ids().len() == 1 {
        return Ok(());
    }
    if started < n / 2 + 1 {
        return Err(MemberError::NotEnoughStarted.into());
    }
    Ok(())
}

impl ClusterService {
    /// Removes or promotes member `id` through raft; returns the membership after it.
    async fn change_existing(
        &self,
        kind: MemberChangeKind,
        id: u64,
    ) -> Result<Membership, ApiError> {
        let proto_kind = match kind {
            MemberChangeKind::Remove => member_change::Kind::Remove,
            MemberChangeKind::Promote => member_change::Kind::Promote,
            MemberChangeKind::AddVoter | MemberChangeKind::AddLearner => {
                unreachable!("an add carries peer URLs: member_add builds it")
            }
        };
        let change = MemberChange {
            member_id: id,
            kind: proto_kind.into(),
            ..MemberChange::default()
        };
        self.core.change_membership(kind, change).await
    }

    async fn forward_promote(
        &self,
        id: u64,
        membership: &Membership,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let leader = self.core.raft.status().leader_id;
        let url = membership
            .get(leader)
            .and_then(|m| m.client_urls.first().cloned())
            .ok_or(ApiError::from(RaftError::NoLeader))?;
        let endpoint = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .timeout(self.core.request_timeout);
        let channel = self
            .core
            .client_dialer
            .connect(endpoint)
            .await
            .map_err(|_| ApiError::from(RaftError::NoLeader))?;
        ClusterClient::new(channel)
            .member_promote(MemberPromoteRequest { id })
            .await
    }

    /// etcd `numConnectedSince`: voters (this member included) connected for a health interval.
    fn connected(&self, voters: &[u64]) -> usize {
        let since = Instant::now().checked_sub(HEALTH_INTERVAL);
        voters
            .iter()
            .filter(|&&id| {
                id == self.core.member_id
                    || self
                        .core
                        .raft
                        .peer_active_since(id)
                        .is_some_and(|t| since.is_some_and(|s| t <= s))
            })
            .count()
    }

    /// etcd `mayAddMember`: every voter has been connected for a health interval.
    fn may_add(&self, membership: &Membership) -> Result<(), ApiError> {
        let voters = membership.voter_ids();
        if self.connected(&voters) < voters.len() {
            return Err(MemberError::Unhealthy.into());
        }
        Ok(())
    }

    /// etcd `mayRemoveMember`: removing a learner or a member that is down is safe; otherwise the
    /// connected voters that remain must still form a quorum.
    fn may_remove(&self, membership: &Membership, id: u64) -> Result<(), ApiError> {
        if membership.get(id).is_some_and(|m| m.is_learner) {
            return Ok(());
        }
        if id != self.core.member_id && self.core.raft.peer_active_since(id).is_none() {
            return Ok(());
        }
        let voters = membership.voter_ids();
        let active = self.connected(&voters);
        if active.saturating_sub(1) < 1 + (voters.len() - 1) / 2 {
            return Err(MemberError::Unhealthy.into());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let membership = self.core.membership.borrow().clone();
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members(&membership),
        }))
    }

    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.admin(&req)?;
        let req = req.into_inner();
        check_urls(&req.peer_ur_ls)?;
        let membership = self.core.membership.borrow().clone();
        if membership.peer_urls_taken(&req.peer_ur_ls, 0) {
            return Err(ApiError::from(MemberError::PeerUrlExists).into());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let id = cluster::member_id(&req.peer_ur_ls, &now.to_string());
        if membership.get(id).is_some() || membership.removed.contains(&id) {
            return Err(ApiError::from(MemberError::IdExists).into());
        }
        let kind = if req.is_learner {
            let learners = membership.members.iter().filter(|m| m.is_learner).count();
            if learners + 1 > LEARNERS_MAX {
                return Err(ApiError::from(MemberError::TooManyLearners).into());
            }
            MemberChangeKind::AddLearner
        } else {
            let mut voters = membership.voter_ids();
            voters.push(id);
            enough_started(&membership, &voters)?;
            MemberChangeKind::AddVoter
        };
        self.may_add(&membership)?;
        let change = MemberChange {
            member_id: id,
            peer_urls: req.peer_ur_ls.clone(),
            is_learner: req.is_learner,
            kind: member_change::Kind::Add.into(),
            ..MemberChange::default()
        };
        let after = self.core.change_membership(kind, change).await?;
        let member = after
            .get(id)
            .map(to_proto)
            .ok_or_else(|| ApiError::Internal("added member is missing".into()))?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members: self.members(&after),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admin(&req)?;
        let id = req.into_inner().id;
        let membership = self.core.membership.borrow().clone();
        let member = known(&membership, id)?;
        if !member.is_learner {
            let voters: Vec<u64> = membership
                .voter_ids()
                .into_iter()
                .filter(|&v| v != id)
                .collect();
            enough_started(&membership, &voters)?;
        }
        self.may_remove(&membership, id)?;
        let after = self.change_existing(MemberChangeKind::Remove, id).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(&after),
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admin(&req)?;
        let req = req.into_inner();
        let membership = self.core.membership.borrow().clone();
        // etcd looks the member up first.
        if membership.get(req.id).is_none() {
            return Err(ApiError::from(MemberError::NotFound).into());
        }
        check_urls(&req.peer_ur_ls)?;
        if membership.peer_urls_taken(&req.peer_ur_ls, req.id) {
            return Err(ApiError::from(MemberError::PeerUrlExists).into());
        }
        let update = internal_request::Request::MemberPeerUrls(MemberPeerUrls {
            member_id: req.id,
            peer_urls: req.peer_ur_ls,
        });
        let after = match self.core.propose(update).await? {
            Applied::Membership(m) => m,
            other => return Err(ApiError::Internal(format!("apply answered {other:?}")).into()),
        };
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.members(&after),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.admin(&req)?;
        let id = req.into_inner().id;
        let membership = self.core.membership.borrow().clone();
        let member = known(&membership, id)?;
        if !member.is_learner {
            return Err(ApiError::from(MemberError::NotLearner).into());
        }
        let mut voters = membership.voter_ids();
        voters.push(id);
        enough_started(&membership, &voters)?;
        // Only the leader knows how far the learner's log is: a follower asks the leader to promote
        // (etcd forwards the request to the leader too).
        let Some(progress) = self.core.raft.progress().await.map_err(ApiError::from)? else {
            return self.forward_promote(id, &membership).await;
        };
        let matched = progress.matched.get(&id).copied().unwrap_or(0);
        if (matched as f64) < progress.last_index as f64 * LEARNER_READY_FRACTION {
            return Err(ApiError::from(MemberError::LearnerNotReady).into());
        }
        let after = self.change_existing(MemberChangeKind::Promote, id).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members(&after),
        }))
    }
}
