//! A deliberately plain etcd v3 client for the harness: one gRPC channel to one member, no
//! retries, no failover, an explicit deadline on every request, and a classification of every
//! error as definite (the request cannot have taken effect) or indefinite (it may have).
//!
//! It speaks only the etcd 3.4 API through `cairn-proto`'s generated stubs, so it works against
//! real etcd and Cairn alike.

use std::time::Duration;

use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::response_op::Response;
use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, StatusRequest,
    TxnRequest, WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use cairn_proto::mvccpb::KeyValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// How long a connection attempt may take, inside the request deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a request did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The request certainly had no effect (rejected, or never sent).
    Definite(String),
    /// The request may or may not have taken effect (timeout, connection lost after sending,
    /// leader change or no leader while proposing).
    Indefinite(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Definite(e) => write!(f, "definite: {e}"),
            ClientError::Indefinite(e) => write!(f, "indefinite: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Classifies a gRPC status by etcd's semantics (consistency-testing.md §6.2).
fn classify(status: &tonic::Status) -> ClientError {
    let text = format!("{:?}: {}", status.code(), status.message());
    let definite = match status.code() {
        // Validation, compaction, quota, auth: rejected before proposing.
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted
        | Code::Unimplemented
        | Code::NotFound
        | Code::AlreadyExists => true,
        // A request whose connection could not be made was never sent.
        Code::Unavailable => {
            status.message().contains("tcp connect error")
                || format!("{status:?}").contains("Connection refused")
        }
        _ => false,
    };
    if definite {
        ClientError::Definite(text)
    } else {
        ClientError::Indefinite(text)
    }
}

/// A connection to one member.
#[derive(Clone)]
pub struct EtcdClient {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    timeout: Duration,
}

/// kv-robust's conditional txn: `if mod_revision(key) == expect then put key = value, delete
/// other else get key`.
pub struct Cas<'a> {
    pub key: &'a str,
    /// 0: the key must be absent.
    pub expect_mod_revision: i64,
    pub value: &'a [u8],
    pub delete: &'a str,
}

/// What a [`Cas`] answered: whether the guard held, the key-values the delete removed (when it
/// did), the key's current key-value (when it did not), and the revision.
pub struct CasReply {
    pub succeeded: bool,
    pub deleted: Vec<KeyValue>,
    pub current: Option<KeyValue>,
    pub revision: i64,
}

/// The answer to a single-key get.
pub struct Got {
    pub kv: Option<KeyValue>,
    pub revision: i64,
}

impl EtcdClient {
    /// A client for `url` (e.g. `http://127.0.0.1:2379`); connects lazily, on the first request.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<EtcdClient> {
        let channel = Endpoint::from_shared(url.to_string())?
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .connect_lazy();
        Ok(EtcdClient {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel),
            timeout,
        })
    }

    /// Runs `request` under the deadline; a missed deadline is indefinite.
    async fn deadline<T>(
        &self,
        request: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(classify(&status)),
            Err(_) => Err(ClientError::Indefinite("client deadline exceeded".into())),
        }
    }

    /// Gets one key; `serializable` reads the member's local state without a quorum round.
    pub async fn get(&mut self, key: &str, serializable: bool) -> Result<Got, ClientError> {
        let request = RangeRequest {
            key: key.as_bytes().to_vec().into(),
            serializable,
            ..Default::default()
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.range(request)).await?;
        Ok(Got {
            kv: response.kvs.into_iter().next(),
            revision: revision(response.header.as_ref()),
        })
    }

    /// Gets every key that starts with `prefix`.
    pub async fn get_prefix(
        &mut self,
        prefix: &str,
        serializable: bool,
    ) -> Result<(Vec<KeyValue>, i64), ClientError> {
        let request = RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: prefix_end(prefix.as_bytes()).into(),
            serializable,
            ..Default::default()
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.range(request)).await?;
        Ok((response.kvs, revision(response.header.as_ref())))
    }

    /// Puts `value` and returns the version it replaced (0 if the key was absent) and the
    /// revision.
    pub async fn put(&mut self, key: &str, value: &[u8]) -> Result<(u64, i64), ClientError> {
        let request = PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.to_vec().into(),
            prev_kv: true,
            ..Default::default()
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.put(request)).await?;
        let prev_version = response.prev_kv.map_or(0, |kv| kv.version as u64);
        Ok((prev_version, revision(response.header.as_ref())))
    }

    /// Txn: if `key`'s value equals `expect`, put `value`. Returns whether it did, the version
    /// it replaced, and the revision.
    pub async fn cas(
        &mut self,
        key: &str,
        expect: &[u8],
        value: &[u8],
    ) -> Result<(bool, u64, i64), ClientError> {
        let key_bytes = key.as_bytes().to_vec();
        let request = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: key_bytes.clone().into(),
                target_union: Some(TargetUnion::Value(expect.to_vec().into())),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key_bytes.into(),
                    value: value.to_vec().into(),
                    prev_kv: true,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.txn(request)).await?;
        let prev_version = response
            .responses
            .first()
            .and_then(|r| match &r.response {
                Some(Response::ResponsePut(put)) => put.prev_kv.as_ref(),
                _ => None,
            })
            .map_or(0, |kv| kv.version as u64);
        Ok((
            response.succeeded,
            prev_version,
            revision(response.header.as_ref()),
        ))
    }

    /// Reads `keys` atomically (one txn of ranges): each key's value (if present) and
    /// `mod_revision` (0 if absent), and the revision of the snapshot. With `serializable`
    /// (on every range) etcd serves the txn from the member's local state.
    pub async fn snapshot(
        &mut self,
        keys: &[&str],
        serializable: bool,
    ) -> Result<(Vec<(Option<Vec<u8>>, i64)>, i64), ClientError> {
        let request = TxnRequest {
            compare: vec![],
            success: keys
                .iter()
                .map(|key| RequestOp {
                    request: Some(Request::RequestRange(RangeRequest {
                        key: key.as_bytes().to_vec().into(),
                        serializable,
                        ..Default::default()
                    })),
                })
                .collect(),
            failure: vec![],
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.txn(request)).await?;
        let values = response
            .responses
            .iter()
            .map(|r| match &r.response {
                Some(Response::ResponseRange(range)) => range
                    .kvs
                    .first()
                    .map_or((None, 0), |kv| (Some(kv.value.to_vec()), kv.mod_revision)),
                _ => (None, 0),
            })
            .collect();
        Ok((values, revision(response.header.as_ref())))
    }

    /// Txn: if every `(key, mod_revision)` still holds (0: the key is absent), put every
    /// `(key, value)`. Returns whether it did, and the revision.
    pub async fn guarded_put(
        &mut self,
        guards: &[(&str, i64)],
        puts: &[(&str, Vec<u8>)],
    ) -> Result<(bool, i64), ClientError> {
        let request = TxnRequest {
            compare: guards
                .iter()
                .map(|&(key, mod_revision)| Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: key.as_bytes().to_vec().into(),
                    target_union: Some(TargetUnion::ModRevision(mod_revision)),
                    ..Default::default()
                })
                .collect(),
            success: puts
                .iter()
                .map(|(key, value)| RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: key.as_bytes().to_vec().into(),
                        value: value.clone().into(),
                        ..Default::default()
                    })),
                })
                .collect(),
            failure: vec![],
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.txn(request)).await?;
        Ok((response.succeeded, revision(response.header.as_ref())))
    }

    /// Puts `value` and returns the key-value it replaced (if any) and the revision.
    pub async fn put_prev(
        &mut self,
        key: &str,
        value: &[u8],
    ) -> Result<(Option<KeyValue>, i64), ClientError> {
        let request = PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.to_vec().into(),
            prev_kv: true,
            ..Default::default()
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.put(request)).await?;
        Ok((response.prev_kv, revision(response.header.as_ref())))
    }

    /// Puts every `(key, value)` in one unconditional txn (one revision); returns the revision.
    pub async fn put_txn(&mut self, puts: &[(&str, Vec<u8>)]) -> Result<i64, ClientError> {
        self.guarded_put(&[], puts)
            .await
            .map(|(_, revision)| revision)
    }

    /// Deletes `key`, or `[key, range_end)`; returns the deleted key-values (in key order) and
    /// the revision.
    pub async fn delete(
        &mut self,
        key: &str,
        range_end: Option<&str>,
    ) -> Result<(Vec<KeyValue>, i64), ClientError> {
        let request = DeleteRangeRequest {
            key: key.as_bytes().to_vec().into(),
            range_end: range_end
                .map_or_else(Vec::new, |e| e.as_bytes().to_vec())
                .into(),
            prev_kv: true,
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.delete_range(request)).await?;
        Ok((response.prev_kvs, revision(response.header.as_ref())))
    }

    /// Compacts the history up to `revision`; returns the response's header revision.
    pub async fn compact(&mut self, revision_to: i64) -> Result<i64, ClientError> {
        let request = CompactionRequest {
            revision: revision_to,
            physical: false,
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.compact(request)).await?;
        Ok(revision(response.header.as_ref()))
    }

    /// Ranges over `[key, range_end)` (only `key` without an end) at `revision` (0: the
    /// current one); returns the key-values and the header revision (the member's current one,
    /// whatever revision was asked for, as in etcd).
    pub async fn range_at(
        &mut self,
        key: &str,
        range_end: Option<&str>,
        revision_at: i64,
        serializable: bool,
    ) -> Result<(Vec<KeyValue>, i64), ClientError> {
        let request = RangeRequest {
            key: key.as_bytes().to_vec().into(),
            range_end: range_end
                .map_or_else(Vec::new, |e| e.as_bytes().to_vec())
                .into(),
            revision: revision_at,
            serializable,
            ..Default::default()
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.range(request)).await?;
        Ok((response.kvs, revision(response.header.as_ref())))
    }

    /// Runs a [`Cas`] txn.
    pub async fn cas_txn(&mut self, cas: &Cas<'_>) -> Result<CasReply, ClientError> {
        let request = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: cas.key.as_bytes().to_vec().into(),
                target_union: Some(TargetUnion::ModRevision(cas.expect_mod_revision)),
                ..Default::default()
            }],
            success: vec![
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: cas.key.as_bytes().to_vec().into(),
                        value: cas.value.to_vec().into(),
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: cas.delete.as_bytes().to_vec().into(),
                        prev_kv: true,
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: cas.key.as_bytes().to_vec().into(),
                    ..Default::default()
                })),
            }],
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.txn(request)).await?;
        let mut reply = CasReply {
            succeeded: response.succeeded,
            deleted: Vec::new(),
            current: None,
            revision: revision(response.header.as_ref()),
        };
        for op in response.responses {
            match op.response {
                Some(Response::ResponseDeleteRange(delete)) => reply.deleted = delete.prev_kvs,
                Some(Response::ResponseRange(range)) => {
                    reply.current = range.kvs.into_iter().next()
                }
                _ => {}
            }
        }
        Ok(reply)
    }

    /// Grants a lease of `ttl_s` seconds; returns its id.
    pub async fn lease_grant(&mut self, ttl_s: i64) -> Result<i64, ClientError> {
        let mut lease = self.lease.clone();
        let request = LeaseGrantRequest { ttl: ttl_s, id: 0 };
        let response = self.deadline(lease.lease_grant(request)).await?;
        Ok(response.id)
    }

    /// Refreshes lease `id` once (one `LeaseKeepAlive` stream, one request, one answer);
    /// returns the TTL left (0 or less: the lease is gone).
    pub async fn lease_keep_alive_once(&mut self, id: i64) -> Result<i64, ClientError> {
        let mut lease = self.lease.clone();
        let requests = tonic::codegen::tokio_stream::iter([LeaseKeepAliveRequest { id }]);
        let mut responses = self.deadline(lease.lease_keep_alive(requests)).await?;
        match tokio::time::timeout(self.timeout, responses.message()).await {
            Ok(Ok(Some(response))) => Ok(response.ttl),
            Ok(Ok(None)) => Err(ClientError::Indefinite("keep-alive stream ended".into())),
            Ok(Err(status)) => Err(classify(&status)),
            Err(_) => Err(ClientError::Indefinite(
                "keep-alive deadline exceeded".into(),
            )),
        }
    }

    /// Revokes lease `id` (deleting its keys).
    pub async fn lease_revoke(&mut self, id: i64) -> Result<(), ClientError> {
        let mut lease = self.lease.clone();
        self.deadline(lease.lease_revoke(LeaseRevokeRequest { id }))
            .await
            .map(|_| ())
    }

    /// Puts `value` attached to lease `lease_id`; returns the revision.
    pub async fn put_with_lease(
        &mut self,
        key: &str,
        value: &[u8],
        lease_id: i64,
    ) -> Result<i64, ClientError> {
        let request = PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.to_vec().into(),
            lease: lease_id,
            ..Default::default()
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.put(request)).await?;
        Ok(revision(response.header.as_ref()))
    }

    /// Txn: if `fence`'s `create_revision` is still `create_revision` (the lock key still
    /// exists, the fencing token of clientv3's `concurrency.Mutex`), put `value`. Returns
    /// whether it did, and the revision.
    pub async fn fenced_put(
        &mut self,
        fence: &str,
        create_revision: i64,
        key: &str,
        value: &[u8],
    ) -> Result<(bool, i64), ClientError> {
        let request = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: fence.as_bytes().to_vec().into(),
                target_union: Some(TargetUnion::CreateRevision(create_revision)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec().into(),
                    value: value.to_vec().into(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let mut kv = self.kv.clone();
        let response = self.deadline(kv.txn(request)).await?;
        Ok((response.succeeded, revision(response.header.as_ref())))
    }

    /// This member's id and the leader it knows of (0 if none).
    pub async fn status(&mut self) -> Result<(u64, u64), ClientError> {
        let mut maintenance = self.maintenance.clone();
        let response = self.deadline(maintenance.status(StatusRequest {})).await?;
        let member_id = response.header.as_ref().map_or(0, |h| h.member_id);
        Ok((member_id, response.leader))
    }
}

/// One watch stream (`Watch/Watch`) to one member, carrying one watcher. Dropping it closes the
/// stream.
pub struct WatchStream {
    /// Held open: closing the request side would end the stream.
    requests: tokio::sync::mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

impl WatchStream {
    /// Opens a stream to `url` and sends `create`. With `require_leader`, the stream carries
    /// clientv3's `hasleader` metadata, so the member cancels it when it has no leader.
    /// `timeout` bounds connecting and the server's first answer (the response headers).
    pub async fn open(
        url: &str,
        create: WatchCreateRequest,
        require_leader: bool,
        timeout: Duration,
    ) -> Result<WatchStream, ClientError> {
        // No per-request timeout on the channel: it would end a long-lived stream.
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| ClientError::Definite(format!("bad url {url}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .connect_lazy();
        let (requests, receiver) = tokio::sync::mpsc::channel(1);
        requests
            .try_send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .expect("a fresh channel has room for one request");
        let mut request = tonic::Request::new(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(receiver),
        );
        if require_leader {
            request.metadata_mut().insert(
                "hasleader",
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        let mut client = WatchClient::new(channel);
        let responses = match tokio::time::timeout(timeout, client.watch(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(classify(&status)),
            Err(_) => {
                return Err(ClientError::Indefinite(
                    "watch open deadline exceeded".into(),
                ))
            }
        };
        Ok(WatchStream {
            requests,
            responses,
        })
    }

    /// Sends a cancel request for `watch_id` (the answer is a `canceled` response).
    pub fn cancel(&self, watch_id: i64) -> Result<(), ClientError> {
        self.requests
            .try_send(WatchRequest {
                request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })),
            })
            .map_err(|e| ClientError::Definite(format!("watch cancel not sent: {e}")))
    }

    /// The next response; an error if the stream failed or ended, or nothing came within
    /// `idle`.
    pub async fn next(&mut self, idle: Duration) -> Result<WatchResponse, ClientError> {
        match tokio::time::timeout(idle, self.responses.message()).await {
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) => Err(ClientError::Indefinite("watch stream ended".into())),
            Ok(Err(status)) => Err(classify(&status)),
            Err(_) => Err(ClientError::Indefinite(format!(
                "no watch response for {} ms",
                idle.as_millis()
            ))),
        }
    }
}

fn revision(header: Option<&ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn errors_are_definite_only_when_etcd_rejects_before_proposing() {
        let too_many = tonic::Status::resource_exhausted("etcdserver: too many requests");
        assert!(matches!(classify(&too_many), ClientError::Definite(_)));
        let timed_out = tonic::Status::unavailable("etcdserver: request timed out");
        assert!(matches!(classify(&timed_out), ClientError::Indefinite(_)));
        let leader = tonic::Status::unavailable("etcdserver: leader changed");
        assert!(matches!(classify(&leader), ClientError::Indefinite(_)));
        let cancelled = tonic::Status::cancelled("reset");
        assert!(matches!(classify(&cancelled), ClientError::Indefinite(_)));
    }

    /// A member that is down: the request is refused before it is sent, so it is definite.
    #[tokio::test]
    async fn a_refused_connection_is_definite() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut client = EtcdClient::new(&url, Duration::from_secs(2)).unwrap();
        let error = client.put("k", b"v").await.err().unwrap();
        assert!(matches!(error, ClientError::Definite(_)), "{error}");
    }
}
