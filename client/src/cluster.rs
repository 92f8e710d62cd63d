//! The Cluster service: membership.

use std::sync::Arc;

use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};

pub use cairn_proto::etcdserverpb::Member;

use crate::error::Result;
use crate::transport::{Pool, Retry};

/// The Cluster service (etcd's `member list/add/remove/update/promote`). Get one with
/// [`Client::cluster`](crate::Client::cluster).
///
/// Changes are not retried after an unknown outcome (adding a member twice would fail with
/// [`Error::PeerUrlExists`](crate::Error::PeerUrlExists) and hide the first success).
#[derive(Clone)]
pub struct Cluster {
    pub(crate) pool: Arc<Pool>,
}

impl Cluster {
    /// The members, learners included, as a member sees them (linearizable in etcd ≥ 3.5 and
    /// Cairn; served locally by etcd 3.4).
    pub async fn member_list(&self) -> Result<MemberListResponse> {
        self.pool
            .unary(
                Retry::Idempotent,
                MemberListRequest::default(),
                |ch, r| async move { ClusterClient::new(ch).member_list(r).await },
            )
            .await
    }

    /// Adds a voting member with these peer URLs (start it with
    /// `--initial-cluster-state existing` afterwards).
    pub async fn member_add(&self, peer_urls: Vec<String>) -> Result<MemberAddResponse> {
        self.add(peer_urls, false).await
    }

    /// Adds a learner (a non-voting member that catches up before
    /// [`Cluster::member_promote`]).
    pub async fn member_add_learner(&self, peer_urls: Vec<String>) -> Result<MemberAddResponse> {
        self.add(peer_urls, true).await
    }

    async fn add(&self, peer_urls: Vec<String>, is_learner: bool) -> Result<MemberAddResponse> {
        let req = MemberAddRequest {
            peer_ur_ls: peer_urls,
            is_learner,
        };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                ClusterClient::new(ch).member_add(r).await
            })
            .await
    }

    /// Removes member `id`.
    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse> {
        self.pool
            .unary(
                Retry::IfNotExecuted,
                MemberRemoveRequest { id },
                |ch, r| async move { ClusterClient::new(ch).member_remove(r).await },
            )
            .await
    }

    /// Replaces member `id`'s peer URLs.
    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<MemberUpdateResponse> {
        let req = MemberUpdateRequest {
            id,
            peer_ur_ls: peer_urls,
        };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                ClusterClient::new(ch).member_update(r).await
            })
            .await
    }

    /// Promotes learner `id` to a voting member.
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse> {
        self.pool
            .unary(
                Retry::IfNotExecuted,
                MemberPromoteRequest { id },
                |ch, r| async move { ClusterClient::new(ch).member_promote(r).await },
            )
            .await
    }
}
