//! Administrative calls the nemesis makes on a member: the cluster's membership (list, add,
//! remove) and maintenance (move the leader, defragment). Like [`crate::client`], one channel
//! to one member, an explicit deadline on every request, no retries; unlike it, errors are not
//! classified, since these calls are faults, not operations of the history.

use std::time::Duration;

use anyhow::Context;
use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{
    DefragmentRequest, Member, MemberAddRequest, MemberListRequest, MemberRemoveRequest,
    MoveLeaderRequest,
};
use tonic::transport::{Channel, Endpoint};

/// A connection to one member for administrative calls.
pub struct AdminClient {
    cluster: ClusterClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    timeout: Duration,
}

impl AdminClient {
    /// A client for `url`; connects lazily, on the first request.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<AdminClient> {
        let channel = Endpoint::from_shared(url.to_string())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        Ok(AdminClient {
            cluster: ClusterClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel),
            timeout,
        })
    }

    async fn deadline<T>(
        &self,
        what: &str,
        request: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(anyhow::anyhow!(
                "{what}: {:?}: {}",
                status.code(),
                status.message()
            )),
            Err(_) => Err(anyhow::anyhow!("{what}: deadline exceeded")),
        }
    }

    /// The members as this member knows them.
    pub async fn member_list(&mut self) -> anyhow::Result<Vec<Member>> {
        let mut cluster = self.cluster.clone();
        let request = cluster.member_list(MemberListRequest {
            linearizable: false,
        });
        Ok(self.deadline("MemberList", request).await?.members)
    }

    /// Adds a voting member with `peer_url`; returns its new id.
    pub async fn member_add(&mut self, peer_url: &str) -> anyhow::Result<u64> {
        let mut cluster = self.cluster.clone();
        let request = cluster.member_add(MemberAddRequest {
            peer_ur_ls: vec![peer_url.to_string()],
            is_learner: false,
        });
        let response = self.deadline("MemberAdd", request).await?;
        Ok(response
            .member
            .context("MemberAdd: no member in the answer")?
            .id)
    }

    /// Removes member `id` from the cluster.
    pub async fn member_remove(&mut self, id: u64) -> anyhow::Result<()> {
        let mut cluster = self.cluster.clone();
        let request = cluster.member_remove(MemberRemoveRequest { id });
        self.deadline("MemberRemove", request).await.map(|_| ())
    }

    /// Asks this member, which must be the leader, to hand leadership to `target_id`.
    pub async fn move_leader(&mut self, target_id: u64) -> anyhow::Result<()> {
        let mut maintenance = self.maintenance.clone();
        let request = maintenance.move_leader(MoveLeaderRequest { target_id });
        self.deadline("MoveLeader", request).await.map(|_| ())
    }

    /// Defragments this member's backend.
    pub async fn defragment(&mut self) -> anyhow::Result<()> {
        let mut maintenance = self.maintenance.clone();
        let request = maintenance.defragment(DefragmentRequest {});
        self.deadline("Defragment", request).await.map(|_| ())
    }
}
