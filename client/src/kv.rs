//! The KV API: [`Kv`] with option builders, and the typed transaction builder [`Txn`].

use bytes::Bytes;
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, CompactionResponse, Compare as PbCompare,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse as PbTxnResponse,
};
use std::sync::Arc;

use crate::error::Result;
use crate::namespace::Namespace;
use crate::prefix_end;
use crate::transport::{Pool, Retry};

/// The KV service: get, put, delete, txn, compact. Cheap to clone; get one with
/// [`Client::kv`](crate::Client::kv).
///
/// Reads are retried on another member when one fails; writes are retried only when they
/// certainly were not executed (see [`Client`](crate::Client) on failover).
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{GetOptions, PutOptions};
/// let kv = client.kv();
/// kv.put("config/a", "1", PutOptions::new()).await?;
/// let resp = kv.get("config/", GetOptions::new().with_prefix()).await?;
/// for item in resp.kvs {
///     println!("{:?} = {:?}", item.key, item.value);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Kv {
    pub(crate) pool: Arc<Pool>,
    pub(crate) ns: Namespace,
}

fn kv_client(ch: tonic::transport::Channel) -> KvClient<tonic::transport::Channel> {
    KvClient::new(ch).max_decoding_message_size(usize::MAX)
}

impl Kv {
    /// Reads `key` (or the range the options make of it).
    pub async fn get(&self, key: impl Into<Vec<u8>>, options: GetOptions) -> Result<RangeResponse> {
        let mut req = options.into_request(key.into());
        req.key = self.ns.key(&req.key);
        req.range_end = self.ns.range_end(&req.range_end);
        let mut resp = self
            .pool
            .unary(Retry::Idempotent, req, |ch, r| async move {
                kv_client(ch).range(r).await
            })
            .await?;
        self.ns.strip_range(&mut resp);
        Ok(resp)
    }

    /// Writes `key = value`. Not retried when its outcome is unknown.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: PutOptions,
    ) -> Result<PutResponse> {
        let mut req = options.into_request(key.into(), value.into());
        req.key = self.ns.key(&req.key);
        let mut resp = self
            .pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                kv_client(ch).put(r).await
            })
            .await?;
        self.ns.strip_put(&mut resp);
        Ok(resp)
    }

    /// Deletes `key` (or the range the options make of it). Not retried when its outcome is
    /// unknown.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: DeleteOptions,
    ) -> Result<DeleteRangeResponse> {
        let mut req = options.into_request(key.into());
        req.key = self.ns.key(&req.key);
        req.range_end = self.ns.range_end(&req.range_end);
        let mut resp = self
            .pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                kv_client(ch).delete_range(r).await
            })
            .await?;
        self.ns.strip_delete(&mut resp);
        Ok(resp)
    }

    /// Runs a transaction. Retried after an unknown outcome only if it only reads, or was
    /// marked [`Txn::idempotent`].
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let retry = if txn.idempotent || txn.is_read_only() {
            Retry::Idempotent
        } else {
            Retry::IfNotExecuted
        };
        let mut req = txn.into_request();
        self.ns.txn_request(&mut req);
        let mut resp = self
            .pool
            .unary(
                retry,
                req,
                |ch, r| async move { kv_client(ch).txn(r).await },
            )
            .await?;
        self.ns.txn_response(&mut resp);
        Ok(TxnResponse::from(resp))
    }

    /// Compacts the history up to `revision` (etcd's `Compact`).
    pub async fn compact(
        &self,
        revision: i64,
        options: CompactOptions,
    ) -> Result<CompactionResponse> {
        let req = CompactionRequest {
            revision,
            physical: options.physical,
        };
        self.pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                kv_client(ch).compact(r).await
            })
            .await
    }
}

/// Which keys an operation covers, relative to its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum KeyRange {
    /// The key alone.
    #[default]
    Single,
    /// Every key starting with the key.
    Prefix,
    /// Every key at or after the key.
    FromKey,
    /// Every key (the key is ignored).
    All,
    /// The key up to (excluding) this end.
    End(Vec<u8>),
}

impl KeyRange {
    /// `(key, range_end)` as etcd wants them.
    fn apply(&self, key: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        match self {
            KeyRange::Single => (key, Vec::new()),
            KeyRange::Prefix => {
                if key.is_empty() {
                    (vec![0], vec![0])
                } else {
                    let end = prefix_end(&key);
                    (key, end)
                }
            }
            KeyRange::FromKey => {
                let key = if key.is_empty() { vec![0] } else { key };
                (key, vec![0])
            }
            KeyRange::All => (vec![0], vec![0]),
            KeyRange::End(end) => (key, end.clone()),
        }
    }
}

/// The builders that choose which keys an option set covers (its `range` field).
macro_rules! key_range_options {
    () => {
        /// Every key that starts with the key.
        pub fn with_prefix(mut self) -> Self {
            self.range = KeyRange::Prefix;
            self
        }
        /// Every key from the key (inclusive) to `end` (exclusive).
        pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
            self.range = KeyRange::End(end.into());
            self
        }
        /// Every key at or after the key.
        pub fn with_from_key(mut self) -> Self {
            self.range = KeyRange::FromKey;
            self
        }
        /// Every key (the key argument is ignored).
        pub fn with_all_keys(mut self) -> Self {
            self.range = KeyRange::All;
            self
        }
    };
}

/// Options of [`Kv::get`] (etcd's `RangeRequest`), built with `with_*` calls.
///
/// ```
/// use cairn_client::{GetOptions, SortOrder, SortTarget};
/// let newest_first = GetOptions::new()
///     .with_prefix()
///     .with_sort(SortTarget::Mod, SortOrder::Descend)
///     .with_limit(10);
/// # let _ = newest_first;
/// ```
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    range: KeyRange,
    req: RangeRequest,
}

impl GetOptions {
    /// A linearizable read of the key alone, at the current revision.
    pub fn new() -> Self {
        Self::default()
    }
    key_range_options!();
    /// At most `limit` keys (0: no limit).
    pub fn with_limit(mut self, limit: i64) -> Self {
        self.req.limit = limit;
        self
    }
    /// Read as of `revision` (0: current). Fails with [`Error::Compacted`](crate::Error::Compacted)
    /// below the compacted revision.
    pub fn with_revision(mut self, revision: i64) -> Self {
        self.req.revision = revision;
        self
    }
    /// Sort the result by `target` in `order`.
    pub fn with_sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.req.sort_target = target as i32;
        self.req.sort_order = order as i32;
        self
    }
    /// Read the member's local state without a quorum round (may be stale).
    pub fn with_serializable(mut self) -> Self {
        self.req.serializable = true;
        self
    }
    /// Return keys without values.
    pub fn with_keys_only(mut self) -> Self {
        self.req.keys_only = true;
        self
    }
    /// Return only the count.
    pub fn with_count_only(mut self) -> Self {
        self.req.count_only = true;
        self
    }
    /// Only keys last modified at or after `revision`.
    pub fn with_min_mod_revision(mut self, revision: i64) -> Self {
        self.req.min_mod_revision = revision;
        self
    }
    /// Only keys last modified at or before `revision`.
    pub fn with_max_mod_revision(mut self, revision: i64) -> Self {
        self.req.max_mod_revision = revision;
        self
    }
    /// Only keys created at or after `revision`.
    pub fn with_min_create_revision(mut self, revision: i64) -> Self {
        self.req.min_create_revision = revision;
        self
    }
    /// Only keys created at or before `revision`.
    pub fn with_max_create_revision(mut self, revision: i64) -> Self {
        self.req.max_create_revision = revision;
        self
    }
    /// The oldest key of the prefix: Go's `WithFirstCreate` (prefix, sort by create revision
    /// ascending, limit 1).
    pub fn with_first_create(self) -> Self {
        self.with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1)
    }
    /// The newest key of the prefix: Go's `WithLastCreate`.
    pub fn with_last_create(self) -> Self {
        self.with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1)
    }

    pub(crate) fn into_request(self, key: Vec<u8>) -> RangeRequest {
        let (key, end) = self.range.apply(key);
        RangeRequest {
            key: key.into(),
            range_end: end.into(),
            ..self.req
        }
    }
}

/// Options of [`Kv::put`].
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    req: PutRequest,
}

impl PutOptions {
    /// A plain put with no lease.
    pub fn new() -> Self {
        Self::default()
    }
    /// Attach the key to lease `id` (the key is deleted when the lease ends).
    pub fn with_lease(mut self, id: i64) -> Self {
        self.req.lease = id;
        self
    }
    /// Return the previous key-value in the response.
    pub fn with_prev_key(mut self) -> Self {
        self.req.prev_kv = true;
        self
    }
    /// Keep the current value (update the lease only); the key must exist.
    pub fn with_ignore_value(mut self) -> Self {
        self.req.ignore_value = true;
        self
    }
    /// Keep the current lease (update the value only); the key must exist.
    pub fn with_ignore_lease(mut self) -> Self {
        self.req.ignore_lease = true;
        self
    }

    pub(crate) fn into_request(self, key: Vec<u8>, value: Vec<u8>) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..self.req
        }
    }
}

/// Options of [`Kv::delete`].
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    range: KeyRange,
    prev_kv: bool,
}

impl DeleteOptions {
    /// Delete the key alone.
    pub fn new() -> Self {
        Self::default()
    }
    key_range_options!();
    /// Return the deleted key-values.
    pub fn with_prev_key(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    pub(crate) fn into_request(self, key: Vec<u8>) -> DeleteRangeRequest {
        let (key, end) = self.range.apply(key);
        DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: self.prev_kv,
        }
    }
}

/// Options of [`Kv::compact`].
#[derive(Debug, Clone, Default)]
pub struct CompactOptions {
    physical: bool,
}

impl CompactOptions {
    /// Return once the compaction is applied (the data is removed in the background).
    pub fn new() -> Self {
        Self::default()
    }
    /// Return only once the compacted data is physically removed.
    pub fn with_physical(mut self) -> Self {
        self.physical = true;
        self
    }
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

impl From<CompareOp> for CompareResult {
    fn from(op: CompareOp) -> Self {
        match op {
            CompareOp::Equal => CompareResult::Equal,
            CompareOp::NotEqual => CompareResult::NotEqual,
            CompareOp::Greater => CompareResult::Greater,
            CompareOp::Less => CompareResult::Less,
        }
    }
}

/// One guard of a [`Txn`]: a key's version, create or mod revision, value or lease against
/// a constant.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare(pub(crate) PbCompare);

impl Compare {
    fn new(key: Vec<u8>, op: CompareOp, target: CompareTarget, union: TargetUnion) -> Self {
        Compare(PbCompare {
            result: CompareResult::from(op) as i32,
            target: target as i32,
            key: key.into(),
            target_union: Some(union),
            range_end: Bytes::new(),
        })
    }
    /// The key's version (0: the key does not exist).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::new(
            key.into(),
            op,
            CompareTarget::Version,
            TargetUnion::Version(version),
        )
    }
    /// The revision that created the key (0: the key does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(
            key.into(),
            op,
            CompareTarget::Create,
            TargetUnion::CreateRevision(revision),
        )
    }
    /// The revision that last modified the key (0: the key does not exist).
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(
            key.into(),
            op,
            CompareTarget::Mod,
            TargetUnion::ModRevision(revision),
        )
    }
    /// The key's value.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(
            key.into(),
            op,
            CompareTarget::Value,
            TargetUnion::Value(value.into().into()),
        )
    }
    /// The key's lease (0: none).
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Self::new(
            key.into(),
            op,
            CompareTarget::Lease,
            TargetUnion::Lease(lease),
        )
    }
    /// Compare every key from the key to `end` (exclusive); all must satisfy it.
    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.0.range_end = end.into().into();
        self
    }
    /// Compare every key that starts with the key.
    pub fn with_prefix(mut self) -> Self {
        self.0.range_end = prefix_end(&self.0.key).into();
        self
    }
}

/// One operation of a [`Txn`] branch.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnOp(pub(crate) RequestOp);

impl TxnOp {
    /// A read, as [`Kv::get`].
    pub fn get(key: impl Into<Vec<u8>>, options: GetOptions) -> Self {
        TxnOp(RequestOp {
            request: Some(request_op::Request::RequestRange(
                options.into_request(key.into()),
            )),
        })
    }
    /// A write, as [`Kv::put`].
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, options: PutOptions) -> Self {
        TxnOp(RequestOp {
            request: Some(request_op::Request::RequestPut(
                options.into_request(key.into(), value.into()),
            )),
        })
    }
    /// A delete, as [`Kv::delete`].
    pub fn delete(key: impl Into<Vec<u8>>, options: DeleteOptions) -> Self {
        TxnOp(RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                options.into_request(key.into()),
            )),
        })
    }
    /// A nested transaction (etcd ≥ 3.3).
    pub fn txn(txn: Txn) -> Self {
        TxnOp(RequestOp {
            request: Some(request_op::Request::RequestTxn(txn.into_request())),
        })
    }

    fn is_read_only(&self) -> bool {
        match &self.0.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => t
                .success
                .iter()
                .chain(&t.failure)
                .all(|op| TxnOp(op.clone()).is_read_only()),
            _ => false,
        }
    }
}

/// A transaction: if every [`Compare`] holds, run the `and_then` operations, otherwise the
/// `or_else` ones; atomically, at one revision.
///
/// ```
/// use cairn_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
/// // Create "lock" only if it does not exist; otherwise read who holds it.
/// let txn = Txn::new()
///     .when([Compare::create_revision("lock", CompareOp::Equal, 0)])
///     .and_then([TxnOp::put("lock", "me", PutOptions::new())])
///     .or_else([TxnOp::get("lock", GetOptions::new())]);
/// # let _ = txn;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Txn {
    compare: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
    idempotent: bool,
}

impl Txn {
    /// An empty transaction (it succeeds and does nothing).
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds guards (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compares);
        self
    }
    /// Adds operations run when the guards hold.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }
    /// Adds operations run when a guard fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
    /// Declares that running this transaction twice has the same effect as once (for example
    /// a compare-and-set whose guard fails the second time), so the client may retry it on
    /// another member when its outcome is unknown. Read-only transactions are retried anyway.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(TxnOp::is_read_only)
    }

    pub(crate) fn into_request(self) -> TxnRequest {
        TxnRequest {
            compare: self.compare.into_iter().map(|c| c.0).collect(),
            success: self.success.into_iter().map(|o| o.0).collect(),
            failure: self.failure.into_iter().map(|o| o.0).collect(),
        }
    }
}

/// The result of a [`Txn`]: which branch ran and each operation's response, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnResponse {
    /// The revision the transaction ran at (and the member that answered).
    pub header: Option<ResponseHeader>,
    /// Whether every guard held (the `and_then` branch ran).
    pub succeeded: bool,
    /// One response per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

/// The response to one [`TxnOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum TxnOpResponse {
    /// From [`TxnOp::get`].
    Get(RangeResponse),
    /// From [`TxnOp::put`].
    Put(PutResponse),
    /// From [`TxnOp::delete`].
    Delete(DeleteRangeResponse),
    /// From [`TxnOp::txn`].
    Txn(TxnResponse),
}

impl TxnResponse {
    /// The header revision (0 if the server sent no header).
    pub fn revision(&self) -> i64 {
        self.header.as_ref().map_or(0, |h| h.revision)
    }

    /// The `i`-th response if it is a read.
    pub fn get(&self, i: usize) -> Option<&RangeResponse> {
        match self.responses.get(i) {
            Some(TxnOpResponse::Get(r)) => Some(r),
            _ => None,
        }
    }
}

impl From<PbTxnResponse> for TxnResponse {
    fn from(t: PbTxnResponse) -> Self {
        TxnResponse {
            header: t.header,
            succeeded: t.succeeded,
            responses: t
                .responses
                .into_iter()
                .filter_map(|r| {
                    Some(match r.response? {
                        response_op::Response::ResponseRange(r) => TxnOpResponse::Get(r),
                        response_op::Response::ResponsePut(p) => TxnOpResponse::Put(p),
                        response_op::Response::ResponseDeleteRange(d) => TxnOpResponse::Delete(d),
                        response_op::Response::ResponseTxn(t) => TxnOpResponse::Txn(t.into()),
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_etcd_conventions() {
        let r = GetOptions::new().with_prefix().into_request(b"a/".to_vec());
        assert_eq!((&r.key[..], &r.range_end[..]), (&b"a/"[..], &b"a0"[..]));
        let r = GetOptions::new().with_prefix().into_request(Vec::new());
        assert_eq!((&r.key[..], &r.range_end[..]), (&b"\0"[..], &b"\0"[..]));
        let r = GetOptions::new()
            .with_from_key()
            .into_request(b"m".to_vec());
        assert_eq!((&r.key[..], &r.range_end[..]), (&b"m"[..], &b"\0"[..]));
        let d = DeleteOptions::new()
            .with_all_keys()
            .into_request(b"x".to_vec());
        assert_eq!((&d.key[..], &d.range_end[..]), (&b"\0"[..], &b"\0"[..]));
    }

    #[test]
    fn read_only_transactions_are_recognised_through_nesting() {
        let reads = Txn::new()
            .and_then([TxnOp::get("a", GetOptions::new())])
            .or_else([TxnOp::txn(
                Txn::new().and_then([TxnOp::get("b", GetOptions::new())]),
            )]);
        assert!(reads.is_read_only());
        let writes = Txn::new().or_else([TxnOp::txn(Txn::new().and_then([TxnOp::put(
            "b",
            "1",
            PutOptions::new(),
        )]))]);
        assert!(!writes.is_read_only());
    }
}
