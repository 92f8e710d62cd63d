//! cairn-client: a typed client for Cairn and any etcd v3 endpoint.
//!
//! This first version is a thin, typed layer over the KV, Maintenance and Cluster services with
//! etcd's request shapes; failover, retries, watch and leases come with the client issue.
//! It depends on `cairn-proto` only, never on the server.

use std::time::Duration;

use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    MemberListRequest, MemberListResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use cairn_proto::mvccpb::KeyValue;
use tonic::transport::{Channel, Endpoint};

pub use cairn_proto as proto;

/// How long `connect` waits for the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The key just after every key that starts with `prefix` (etcd's prefix range end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A connection to one endpoint.
#[derive(Clone)]
pub struct Client {
    kv: KvClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    cluster: ClusterClient<Channel>,
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client> {
        let channel = Endpoint::from_shared(endpoint.into())?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await?;
        Ok(Client {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(usize::MAX),
            maintenance: MaintenanceClient::new(channel.clone()),
            cluster: ClusterClient::new(channel),
        })
    }

    pub async fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResponse> {
        self.put_request(PutRequest {
            key: key.into().into(),
            value: value.into().into(),
            ..Default::default()
        })
        .await
    }

    pub async fn put_request(&mut self, req: PutRequest) -> Result<PutResponse> {
        Ok(self.kv.put(req).await?.into_inner())
    }

    /// The current value of one key, read linearizably.
    pub async fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        let resp = self
            .range(RangeRequest {
                key: key.into().into(),
                ..Default::default()
            })
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Every key that starts with `prefix`.
    pub async fn get_prefix(&mut self, prefix: impl Into<Vec<u8>>) -> Result<RangeResponse> {
        let prefix = prefix.into();
        self.range(RangeRequest {
            range_end: prefix_end(&prefix).into(),
            key: prefix.into(),
            ..Default::default()
        })
        .await
    }

    pub async fn range(&mut self, req: RangeRequest) -> Result<RangeResponse> {
        Ok(self.kv.range(req).await?.into_inner())
    }

    pub async fn delete(&mut self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        Ok(self.kv.delete_range(req).await?.into_inner())
    }

    pub async fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse> {
        Ok(self.kv.txn(req).await?.into_inner())
    }

    pub async fn compact(&mut self, revision: i64, physical: bool) -> Result<CompactionResponse> {
        Ok(self
            .kv
            .compact(CompactionRequest { revision, physical })
            .await?
            .into_inner())
    }

    pub async fn status(&mut self) -> Result<StatusResponse> {
        Ok(self
            .maintenance
            .status(StatusRequest {})
            .await?
            .into_inner())
    }

    pub async fn member_list(&mut self) -> Result<MemberListResponse> {
        Ok(self
            .cluster
            .member_list(MemberListRequest::default())
            .await?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
