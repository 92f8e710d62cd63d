//! The Maintenance service: status, alarms, defragment, hashes, move-leader, snapshot.

use std::sync::Arc;

use cairn_proto::etcdserverpb::alarm_request::AlarmAction;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    StatusRequest, StatusResponse,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::transport::{Pool, Retry};

/// The Maintenance service. Get one with [`Client::maintenance`](crate::Client::maintenance).
///
/// Status, defragment and hashes are about one member: the `*_of(endpoint)` forms address a
/// given member, the others whichever member the client picks.
#[derive(Clone)]
pub struct Maintenance {
    pub(crate) pool: Arc<Pool>,
}

fn client(ch: Channel) -> MaintenanceClient<Channel> {
    MaintenanceClient::new(ch).max_decoding_message_size(usize::MAX)
}

impl Maintenance {
    /// The status of some member (`etcdctl endpoint status`).
    pub async fn status(&self) -> Result<StatusResponse> {
        self.pool
            .unary(Retry::Idempotent, StatusRequest {}, |ch, r| async move {
                client(ch).status(r).await
            })
            .await
    }

    /// The status of the member at `endpoint` (one attempt, within the request deadline).
    pub async fn status_of(&self, endpoint: &str) -> Result<StatusResponse> {
        self.at(endpoint, StatusRequest {}, |ch, r| async move {
            client(ch).status(r).await
        })
        .await
    }

    /// The active alarms (`etcdctl alarm list`).
    pub async fn alarms(&self) -> Result<Vec<AlarmMember>> {
        let req = AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        };
        let resp: AlarmResponse = self
            .pool
            .unary(Retry::Idempotent, req, |ch, r| async move {
                client(ch).alarm(r).await
            })
            .await?;
        Ok(resp.alarms)
    }

    /// Clears `alarm` on `member_id` (0: every member) (`etcdctl alarm disarm`).
    pub async fn alarm_disarm(&self, member_id: u64, alarm: AlarmType) -> Result<Vec<AlarmMember>> {
        let req = AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id,
            alarm: alarm as i32,
        };
        let resp: AlarmResponse = self
            .pool
            .unary(Retry::Idempotent, req, |ch, r| async move {
                client(ch).alarm(r).await
            })
            .await?;
        Ok(resp.alarms)
    }

    /// Defragments the member at `endpoint`.
    pub async fn defragment_of(&self, endpoint: &str) -> Result<DefragmentResponse> {
        self.at(endpoint, DefragmentRequest {}, |ch, r| async move {
            client(ch).defragment(r).await
        })
        .await
    }

    /// The hash of the member at `endpoint`'s keyspace up to `revision` (0: current); members
    /// with the same data agree.
    pub async fn hash_kv_of(&self, endpoint: &str, revision: i64) -> Result<HashKvResponse> {
        self.at(endpoint, HashKvRequest { revision }, |ch, r| async move {
            client(ch).hash_kv(r).await
        })
        .await
    }

    /// Transfers leadership to member `target_id`. The request must reach the leader, so the
    /// client first asks the members' status to find it.
    pub async fn move_leader(&self, target_id: u64) -> Result<MoveLeaderResponse> {
        let leader = self.leader_endpoint().await?;
        self.at(
            &leader,
            MoveLeaderRequest { target_id },
            |ch, r| async move { client(ch).move_leader(r).await },
        )
        .await
    }

    /// The endpoint of the current leader, found by asking the members' status.
    pub async fn leader_endpoint(&self) -> Result<String> {
        let mut last = Error::NoLeader;
        for endpoint in self.pool.endpoints() {
            match self.status_of(&endpoint).await {
                Ok(s)
                    if s.leader != 0
                        && s.header.as_ref().is_some_and(|h| h.member_id == s.leader) =>
                {
                    return Ok(endpoint);
                }
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Streams a snapshot of the whole backend of some member into `out` (`etcdctl snapshot
    /// save`); returns the number of bytes written. Cairn does not serve snapshots yet and
    /// answers [`Error::Unimplemented`].
    pub async fn snapshot<W: AsyncWrite + Unpin>(&self, out: &mut W) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + self.pool.options.request_timeout;
        let (mut stream, _) = self
            .pool
            .open_stream(deadline, SnapshotRequest {}, |ch, r| async move {
                client(ch).snapshot(r).await
            })
            .await?;
        let mut written = 0u64;
        while let Some(chunk) = stream.message().await.map_err(Error::from_status)? {
            out.write_all(&chunk.blob).await.map_err(|e| {
                Error::Status(tonic::Status::data_loss(format!("snapshot write: {e}")))
            })?;
            written += chunk.blob.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| Error::Status(tonic::Status::data_loss(format!("snapshot write: {e}"))))?;
        Ok(written)
    }

    /// One attempt at one member, within the request deadline.
    async fn at<Req, Resp, F, Fut>(&self, endpoint: &str, req: Req, call: F) -> Result<Resp>
    where
        F: FnOnce(Channel, tonic::Request<Req>) -> Fut,
        Fut:
            std::future::Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let picked = self.pool.channel_to(endpoint)?;
        let mut request = tonic::Request::new(req);
        self.pool.decorate(&mut request, false);
        let timeout = self.pool.options.request_timeout;
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, call(picked.channel, request)).await {
            Err(_) => Err(Error::DeadlineExceeded),
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(Error::from_status(s)),
        }
    }
}
