//! `etcdserverpb.Maintenance` and `etcdserverpb.Cluster`: what `etcdctl endpoint status`,
//! `endpoint health` and `member list` need. The other methods answer `Unimplemented` by name.

use std::sync::Arc;

use cairn_proto::etcdserverpb::cluster_server::Cluster;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use cairn_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use super::error::unimplemented;
use super::{ApiError, Core, ETCD_VERSION};

pub struct MaintenanceService {
    core: Arc<Core>,
}

impl MaintenanceService {
    pub fn new(core: Arc<Core>) -> MaintenanceService {
        MaintenanceService { core }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let core = &self.core;
        let raft = core.raft.status();
        let revision = core.store.current_revision().map_err(ApiError::from)?;
        let db_size = core.engine.state_size_bytes() as i64;
        Ok(Response::new(StatusResponse {
            header: core.header(revision),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: raft.leader_id,
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: core.raft.applied_index(),
            db_size_in_use: db_size,
            ..Default::default()
        }))
    }

    /// Cairn raises no alarms yet (the space quota arrives with the operations issue), so GET
    /// lists none and DEACTIVATE has nothing to clear. Like etcd 3.4, the answer has no header.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        match req.into_inner().action() {
            alarm_request::AlarmAction::Get | alarm_request::AlarmAction::Deactivate => {
                Ok(Response::new(AlarmResponse::default()))
            }
            alarm_request::AlarmAction::Activate => Err(Status::unimplemented(
                "cairn does not implement activating alarms (/etcdserverpb.Maintenance/Alarm ACTIVATE) yet",
            )),
        }
    }

    /// A full RocksDB compaction of this member's database. Like etcd 3.4, the answer has no header.
    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let engine = self.core.engine.clone();
        tokio::task::spawn_blocking(move || engine.compact_all())
            .await
            .map_err(|e| Status::internal(format!("defragment: {e}")))?;
        Ok(Response::new(DefragmentResponse::default()))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(unimplemented("/etcdserverpb.Maintenance/Hash"))
    }

    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(unimplemented("/etcdserverpb.Maintenance/HashKV"))
    }

    type SnapshotStream = futures::stream::Empty<Result<SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("/etcdserverpb.Maintenance/Snapshot"))
    }

    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(unimplemented("/etcdserverpb.Maintenance/MoveLeader"))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("/etcdserverpb.Maintenance/Downgrade"))
    }
}

pub struct ClusterService {
    core: Arc<Core>,
}

impl ClusterService {
    pub fn new(core: Arc<Core>) -> ClusterService {
        ClusterService { core }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let core = &self.core;
        let members = core
            .membership
            .members
            .iter()
            .map(|m| Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: if m.id == core.membership.member_id {
                    core.client_urls.clone()
                } else {
                    vec![]
                },
                is_learner: false,
            })
            .collect();
        Ok(Response::new(MemberListResponse {
            // etcd 3.4's cluster responses carry no revision.
            header: core.header(0),
            members,
        }))
    }

    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(unimplemented("/etcdserverpb.Cluster/MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(unimplemented("/etcdserverpb.Cluster/MemberRemove"))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unimplemented("/etcdserverpb.Cluster/MemberUpdate"))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(unimplemented("/etcdserverpb.Cluster/MemberPromote"))
    }
}
