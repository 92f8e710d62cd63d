//! The peer transport, receiving side: the `cairnpb.Peer` service on `--listen-peer-urls`.
//!
//! Batches from a peer are decoded and handed to the raft loop's mailbox (dropped when it is full:
//! raft retransmits). A snapshot is written to a file as it arrives and handed to raft only once
//! complete. Messages from another cluster or from a removed member are refused.
//! Lease renewals and TTL queries that followers forward to the leader are answered through
//! [`PeerQueries`], which the API implements (raft knows nothing of leases).

use std::path::PathBuf;
use std::sync::Arc;

use cairn_proto::cairnpb::peer_server::Peer;
use cairn_proto::cairnpb::{
    MembersRequest, MembersResponse, ProbeRequest, ProbeResponse, RaftBatch, RaftBatchAck,
    SnapshotAck, SnapshotChunk,
};
use cairn_proto::etcdserverpb::{
    self, HashKvRequest, HashKvResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crossbeam_channel::Sender;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::PeerInput;
use crate::cluster::Membership;
use crate::metrics::METRICS;
use crate::snapshot::SnapshotFile;

/// What peers ask of this member that the API layer answers: the leader's answers about leases
/// (for followers), and the HashKV the corruption check compares.
#[tonic::async_trait]
pub trait PeerQueries: Send + Sync {
    /// Renews lease `id`; its TTL, or 0 if there is no such lease.
    async fn renew(&self, id: i64) -> Result<i64, Status>;
    async fn time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status>;
    async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse, Status>;
}

#[derive(Clone)]
pub struct PeerService {
    local: u64,
    cluster_id: u64,
    mailbox: Sender<PeerInput>,
    membership: watch::Receiver<Membership>,
    snapshot_dir: PathBuf,
    leases: Arc<dyn PeerQueries>,
}

impl PeerService {
    pub fn new(
        handle: &super::RaftHandle,
        local: u64,
        cluster_id: u64,
        membership: watch::Receiver<Membership>,
        snapshot_dir: PathBuf,
        leases: Arc<dyn PeerQueries>,
    ) -> PeerService {
        PeerService {
            local,
            cluster_id,
            mailbox: handle.peer.clone(),
            membership,
            snapshot_dir,
            leases,
        }
    }

    fn check(&self, from: u64, to: u64, cluster_id: u64) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: this member is in cluster {:x}, the sender in {cluster_id:x}",
                self.cluster_id
            )));
        }
        if self.membership.borrow().removed.contains(&from) {
            return Err(Status::permission_denied(
                "the member has been permanently removed from the cluster",
            ));
        }
        if to != self.local {
            return Err(Status::failed_precondition(format!(
                "message for member {to:x} reached member {:x}",
                self.local
            )));
        }
        Ok(())
    }
}

impl PeerService {
    /// Hands every message of a `Stream` call to the raft loop; `from` learns the sender.
    async fn receive(
        &self,
        batches: &mut Streaming<RaftBatch>,
        from: &mut Option<u64>,
    ) -> Result<Response<RaftBatchAck>, Status> {
        let mut received = None;
        while let Some(batch) = batches.message().await? {
            self.check(batch.from, batch.to, batch.cluster_id)?;
            let received = received.get_or_insert_with(|| {
                *from = Some(batch.from);
                METRICS
                    .peer_received_bytes
                    .with_label_values(&[&format!("{:x}", batch.from)])
            });
            for bytes in &batch.messages {
                received.inc_by(bytes.len() as u64);
                let m = decode(bytes)?;
                if m.from != batch.from || m.get_msg_type() == MessageType::MsgSnapshot {
                    return Err(Status::invalid_argument("message does not match its batch"));
                }
                if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
                    self.mailbox.try_send(PeerInput::Step(m))
                {
                    return Err(Status::unavailable("member is stopping"));
                }
            }
        }
        Ok(Response::new(RaftBatchAck {}))
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn stream(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftBatchAck>, Status> {
        let mut batches = request.into_inner();
        // The sender, once its first batch names it (metrics are labelled with it).
        let mut from = None;
        let result = self.receive(&mut batches, &mut from).await;
        if let (Err(_), Some(from)) = (&result, from) {
            METRICS
                .peer_received_failures
                .with_label_values(&[&format!("{from:x}")])
                .inc();
        }
        result
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check(first.from, first.to, first.cluster_id)?;
        let received = METRICS
            .peer_received_bytes
            .with_label_values(&[&format!("{:x}", first.from)]);
        received.inc_by(first.message.len() as u64);
        let mut m = decode(&first.message)?;
        if m.get_msg_type() != MessageType::MsgSnapshot || m.from != first.from {
            return Err(Status::invalid_argument(
                "first chunk is not a snapshot message",
            ));
        }
        let index = m.get_snapshot().get_metadata().index;
        let internal = |e: crate::snapshot::SnapshotError| Status::internal(e.to_string());
        let mut file = SnapshotFile::create(&self.snapshot_dir, index).map_err(internal)?;
        loop {
            let chunk = chunks
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("snapshot stream ended early"))?;
            received.inc_by(chunk.records.len() as u64);
            tokio::task::block_in_place(|| file.append(&chunk.records))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if chunk.last {
                break;
            }
        }
        let path = tokio::task::block_in_place(|| file.finish()).map_err(internal)?;
        tracing::info!(index, path = %path.display(), "snapshot received");
        m.mut_snapshot().data = path.to_string_lossy().into_owned().into_bytes().into();
        self.mailbox
            .try_send(PeerInput::Step(m))
            .map_err(|_| Status::unavailable("member is busy"))?;
        Ok(Response::new(SnapshotAck {}))
    }

    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let membership = self.membership.borrow().clone();
        Ok(Response::new(MembersResponse {
            cluster_id: membership.cluster_id,
            members: membership
                .members
                .iter()
                .map(|m| etcdserverpb::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_ur_ls: m.peer_urls.clone(),
                    client_ur_ls: m.client_urls.clone(),
                    is_learner: m.is_learner,
                })
                .collect(),
        }))
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        let id = req.into_inner().id;
        let ttl = self.leases.renew(id).await?;
        Ok(Response::new(LeaseKeepAliveResponse {
            header: None,
            id,
            ttl,
        }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let resp = self.leases.time_to_live(req.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {}))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let resp = self.leases.hash_kv(req.into_inner().revision).await?;
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoLeases;

    #[tonic::async_trait]
    impl PeerQueries for NoLeases {
        async fn renew(&self, _: i64) -> Result<i64, Status> {
            Err(Status::unavailable("no leases here"))
        }
        async fn time_to_live(
            &self,
            _: LeaseTimeToLiveRequest,
        ) -> Result<LeaseTimeToLiveResponse, Status> {
            Err(Status::unavailable("no leases here"))
        }
        async fn hash_kv(&self, _: i64) -> Result<HashKvResponse, Status> {
            Err(Status::unavailable("no hashes here"))
        }
    }
    use crate::raft::transport::PeersActive;
    use crate::raft::{RaftHandle, RaftStatus};

    #[test]
    fn foreign_clusters_removed_members_and_misaddressed_messages_are_refused() {
        let (mailbox, _) = crossbeam_channel::bounded(1);
        let (peer, _peer_rx) = crossbeam_channel::bounded(1);
        let handle = RaftHandle {
            mailbox,
            peer,
            peers_active: PeersActive::default(),
            removed: watch::channel(false).1,
            status: watch::channel(RaftStatus::default()).1,
            applied: watch::channel(0).1,
        };
        let membership = Membership {
            cluster_id: 7,
            removed: vec![3],
            ..Membership::default()
        };
        let service = PeerService::new(
            &handle,
            1,
            7,
            watch::channel(membership).1,
            PathBuf::from("/nonexistent"),
            Arc::new(NoLeases),
        );
        assert!(service.check(2, 1, 7).is_ok());
        let foreign = service.check(2, 1, 8).unwrap_err();
        assert_eq!(foreign.code(), tonic::Code::FailedPrecondition);
        assert!(
            foreign.message().starts_with("cluster ID mismatch"),
            "{foreign:?}"
        );
        let removed = service.check(3, 1, 7).unwrap_err();
        assert_eq!(removed.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            service.check(2, 9, 7).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }
}
