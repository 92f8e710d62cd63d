//! `etcdserverpb.Maintenance`: what `etcdctl endpoint status|health|hashkv`, `alarm`, `defrag` and
//! `move-leader` need. The other methods answer `Unimplemented` by name.

use std::sync::Arc;

use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use cairn_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use super::error::{unimplemented, MemberError};
use super::{ApiError, Core, ETCD_VERSION};
use crate::apply::Applied;
use crate::auth::AuthError;
use crate::raft::RaftError;

/// HashKV at `revision` on a blocking thread: the hash, and the answer without its header.
pub(super) async fn hash_kv(
    store: crate::mvcc::Store,
    revision: i64,
) -> Result<(crate::mvcc::KvHash, HashKvResponse), Status> {
    let h = tokio::task::spawn_blocking(move || store.hash_kv(revision))
        .await
        .map_err(|e| Status::internal(format!("hashkv: {e}")))?
        .map_err(ApiError::from)?;
    let resp = HashKvResponse {
        header: None,
        hash: h.hash,
        compact_revision: h.compact_revision,
        hash_revision: h.revision,
    };
    Ok((h, resp))
}

pub struct MaintenanceService {
    core: Arc<Core>,
}

impl MaintenanceService {
    pub fn new(core: Arc<Core>) -> MaintenanceService {
        MaintenanceService { core }
    }

    /// etcd's `authMaintenanceServer`: with auth on, only root may defragment, hash or snapshot
    /// (others get `auth: permission denied`); Status, Alarm and MoveLeader are not checked (3.4).
    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = self.core.caller(req.metadata())?;
        Ok(self.core.permit_admin(&caller, AuthError::AdminOnly)?)
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let core = &self.core;
        let raft = core.raft.status();
        let revision = core.store.current_revision().map_err(ApiError::from)?;
        let db_size = core.db_size.bytes() as i64;
        // etcd lists a missing leader and each alarm, in the alarm's protobuf text form.
        let mut errors = vec![];
        if raft.leader_id == 0 {
            errors.push("etcdserver: no leader".to_string());
        }
        for a in core.alarms.borrow().get(AlarmType::None) {
            errors.push(format!(
                "memberID:{} alarm:{} ",
                a.member_id,
                a.alarm().as_str_name()
            ));
        }
        let is_learner = core
            .membership
            .borrow()
            .get(core.member_id)
            .is_some_and(|m| m.is_learner);
        Ok(Response::new(StatusResponse {
            header: core.header(revision),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: raft.leader_id,
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: core.raft.applied_index(),
            db_size_in_use: db_size,
            is_learner,
            errors,
            ..Default::default()
        }))
    }

    /// GET lists the alarms of a type (NONE: all) as applied after a linearizable barrier;
    /// ACTIVATE and DEACTIVATE go through raft (see [`crate::alarm`]). Like etcd 3.4, the answer
    /// has no header.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // Not auth-checked, as in etcd.
        let req = req.into_inner();
        if req.action() == alarm_request::AlarmAction::Get {
            self.core.linearizable_barrier().await?;
            let alarms = self.core.alarms.borrow().get(req.alarm());
            return Ok(Response::new(AlarmResponse {
                header: None,
                alarms,
            }));
        }
        match self
            .core
            .propose(cairn_proto::cairnpb::internal_request::Request::Alarm(req))
            .await?
        {
            Applied::Alarm(resp) => Ok(Response::new(resp)),
            other => Err(ApiError::Internal(format!("apply answered with {other:?}")).into()),
        }
    }

    /// A full RocksDB compaction of this member's database. Like etcd 3.4, the answer has no header.
    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin(&req)?;
        let engine = self.core.engine.clone();
        tokio::task::spawn_blocking(move || engine.compact_all())
            .await
            .map_err(|e| Status::internal(format!("defragment: {e}")))?;
        self.core.db_size.refresh();
        Ok(Response::new(DefragmentResponse::default()))
    }

    /// The hash of this member's whole replicated state (see [`crate::mvcc::KvHash`] for HashKV).
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin(&req)?;
        let store = self.core.store.clone();
        let (hash, revision) = tokio::task::spawn_blocking(move || store.hash_all())
            .await
            .map_err(|e| Status::internal(format!("hash: {e}")))?
            .map_err(ApiError::from)?;
        Ok(Response::new(HashResponse {
            header: self.core.header(revision),
            hash,
        }))
    }

    /// The hash of the key-value history up to a revision: equal on every member at that revision.
    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin(&req)?;
        let revision = req.into_inner().revision;
        let (h, resp) = hash_kv(self.core.store.clone(), revision).await?;
        Ok(Response::new(HashKvResponse {
            header: self.core.header(h.current_revision),
            ..resp
        }))
    }

    type SnapshotStream = super::snapshot::SnapshotStream;

    /// A consistent copy of this member's state, streamed as etcd streams its database.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin(&req)?;
        super::snapshot::serve(&self.core).map(Response::new)
    }

    /// etcd `MoveLeader`: only the leader hands over, only to a voting member, and answers once the
    /// transferee leads (or with a timeout).
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let core = &self.core;
        let target = req.into_inner().target_id;
        if !core.raft.status().is_leader {
            return Err(ApiError::from(RaftError::NotLeader).into());
        }
        let is_voter = core
            .membership
            .borrow()
            .get(target)
            .is_some_and(|m| !m.is_learner);
        if !is_voter {
            return Err(ApiError::from(MemberError::BadLeaderTransferee).into());
        }
        let mut status = core.raft.watch_status();
        // Raft abandons a transfer after an election timeout (e.g. when the target could not yet
        // campaign because it had a configuration change left to apply); ask again until it moves.
        let attempt = core.election_timeout + core.election_timeout / 2;
        let moved = async {
            loop {
                core.raft.transfer_leader(target).map_err(ApiError::from)?;
                let arrived = status.wait_for(|s| s.leader_id == target);
                if let Ok(arrived) = tokio::time::timeout(attempt, arrived).await {
                    arrived.map_err(|_| ApiError::from(RaftError::Stopped))?;
                    return Ok::<_, ApiError>(());
                }
            }
        };
        match tokio::time::timeout(core.request_timeout, moved).await {
            Ok(r) => r?,
            Err(_) => return Err(ApiError::from(MemberError::LeaderTransferTimeout).into()),
        }
        Ok(Response::new(MoveLeaderResponse {
            header: core.header(core.store.current_revision().map_err(ApiError::from)?),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("/etcdserverpb.Maintenance/Downgrade"))
    }
}
