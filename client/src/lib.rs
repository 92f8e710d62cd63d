//! cairn-client: a Rust client for Cairn and any etcd v3 cluster, for control-plane code.
//!
//! Connect once with every endpoint you know; the client finds the rest of the cluster with
//! `MemberList`, spreads requests over healthy members, reconnects with backoff, and retries
//! what is safe to retry, so failover is not the caller's job:
//!
//! ```no_run
//! use cairn_client::{Client, ConnectOptions, GetOptions, PutOptions};
//!
//! # async fn demo() -> cairn_client::Result<()> {
//! let client = Client::connect_with(
//!     ["http://127.0.0.1:2379", "http://127.0.0.1:22379"],
//!     ConnectOptions::new(),
//! )
//! .await?;
//! let kv = client.kv();
//! kv.put("greeting", "hello", PutOptions::new()).await?;
//! let resp = kv.get("greeting", GetOptions::new()).await?;
//! assert_eq!(&resp.kvs[0].value[..], b"hello");
//! # Ok(()) }
//! ```
//!
//! # What the client does for you
//!
//! - **Balancing and failover**: requests go round-robin to endpoints that are not failing; a
//!   member that refuses connections, loses its leader or drops a connection is skipped for a
//!   while (exponential backoff, 50 ms to 2 s) and tried again later.
//! - **Retries within a deadline** ([`ConnectOptions::with_timeout`], 10 s by default): reads,
//!   status and other idempotent requests are retried on another member after any transient
//!   failure; writes only when they certainly were not executed (the connection could not be
//!   made, or the member refused them before executing them). A write whose outcome is unknown
//!   fails with an [`Error`] for which [`Error::is_unavailable`] is true: it is never silently
//!   sent twice. Mark a transaction that is safe to repeat with [`Txn::idempotent`].
//! - **Watches that do not break** ([`Watch`]): a [`Watcher`] is a `Stream` of events that
//!   resumes on another member from the last delivered revision + 1 after a disconnect or the
//!   loss of its member, without gaps or duplicates; compaction is reported as
//!   [`Error::WatchCompacted`].
//! - **Leases that stay alive** ([`Lease::keep_alive`]): renewed in the background until the
//!   handle is dropped, on another member if need be, with the loss reported.
//! - **Recipes** in [`concurrency`]: `Session`, `Mutex`, `Election` with Go clientv3's key
//!   layouts (Go programs and `etcdctl lock`/`elect` interoperate with them) and `Stm`.
//! - **Errors by name**: [`Error`] has a variant for each of etcd's errors.
//! - **Auth**: [`ConnectOptions::with_user`] authenticates and refreshes the token when a member
//!   answers `invalid auth token`.
//! - **TLS**: [`ConnectOptions::with_tls`] with `https://` endpoints (rustls; a CA, and a client
//!   certificate for servers that require one).
//!
//! # Single-endpoint methods
//!
//! [`Client::connect`] with one endpoint and the methods directly on [`Client`] (`put`, `get`,
//! `range`, `txn`, ...) are a thin layer over the raw requests: one member, one attempt, every
//! server error as [`Error::Status`]. Tests that probe one member use them; applications want
//! [`Client::connect_with`] and the service handles.
//!
//! # Inside
//!
//! - `transport`: the endpoint pool (one lazily connected channel per endpoint, health and
//!   backoff), the retry policy and the auth token; every request goes through it.
//! - `kv`, `cluster`, `maintenance`, `auth`, `services`: the service handles, thin typed layers
//!   that choose each request's retry policy.
//! - `watch` and `lease`: one background task per watcher or keeper, owning its gRPC stream and
//!   its resume state; the handle talks to it over bounded channels and stops it when dropped.
//! - [`concurrency`]: recipes built only on the public KV, Lease and Watch APIs.
//!
//! **Boundary:** the client depends on `cairn-proto` only, never on the server, and speaks
//! nothing but etcd's public API, so it works with any etcd v3 cluster.
//! **Invariant:** a request is sent again only if it was not executed or is idempotent
//! (`transport::Retry`); a watcher never yields a revision twice or skips one.

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    MemberListRequest, MemberListResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse as PbTxnResponse,
};
use tonic::transport::{Channel, Endpoint};

mod auth;
mod cluster;
pub mod concurrency;
mod error;
mod kv;
mod lease;
mod maintenance;
mod namespace;
mod options;
mod services;
mod stream;
mod tls;
mod transport;
mod watch;

pub use auth::{Access, Auth};
pub use cairn_proto as proto;
pub use cluster::{Cluster, Member};
pub use error::{Error, Result};
pub use kv::{
    CompactOptions, Compare, CompareOp, DeleteOptions, GetOptions, Kv, PutOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
pub use lease::{Lease, LeaseGrantOptions, LeaseKeeper};
pub use maintenance::Maintenance;
pub use options::{ConnectOptions, TlsOptions};
pub use proto::etcdserverpb::range_request::{SortOrder, SortTarget};
pub use proto::etcdserverpb::ResponseHeader;
pub use proto::mvccpb::KeyValue;
pub use proto::v3electionpb::LeaderKey;
pub use services::{ElectionService, LockService};
pub use stream::TaskStream;
pub use watch::{Event, EventKind, Watch, WatchOptions, WatchResponse, Watcher};

use namespace::Namespace;
use transport::Pool;

/// How long the single-endpoint [`Client::connect`] waits for the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A client of one cluster. Cheap to clone: clones share the connections, and every handle
/// ([`Client::kv`], [`Client::watch`], ...) is cheap too. Background work (endpoint sync,
/// watches, keep-alives) stops when the handles that need it are dropped.
#[derive(Clone)]
pub struct Client {
    pool: Arc<Pool>,
    ns: Namespace,
}

impl Client {
    /// Connects to the cluster behind `endpoints` (`http://host:port`, or `host:port`).
    ///
    /// The connections are made lazily: this does not fail when members are down (requests
    /// wait for them until their deadline). With auto-sync on (the default) the endpoint list
    /// is refreshed from `MemberList` now, if a member answers within the connect timeout, and
    /// periodically after that.
    pub async fn connect_with<I, S>(endpoints: I, options: ConnectOptions) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let uris: Vec<String> = endpoints
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .collect();
        let sync = options.auto_sync_interval;
        let connect_timeout = options.connect_timeout;
        let pool = Pool::new(&uris, options)?;
        if let Some(interval) = sync {
            match tokio::time::timeout(connect_timeout, pool.sync_endpoints()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "initial endpoint sync failed"),
                Err(_) => tracing::debug!("initial endpoint sync timed out"),
            }
            transport::spawn_auto_sync(&pool, interval);
        }
        Ok(Client {
            pool,
            ns: Namespace::default(),
        })
    }

    /// Connects to the one member at `endpoint` (e.g. `http://127.0.0.1:2379`) and waits until
    /// the connection is up. The client stays on that member: no discovery, no retries (see
    /// "Single-endpoint methods" above); the service handles work on it too.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client> {
        let endpoint = endpoint.into();
        if endpoint.starts_with("https://") {
            return Err(Error::InvalidArgument(format!(
                "{endpoint}: an https:// endpoint needs Client::connect_with and ConnectOptions::with_tls"
            )));
        }
        let channel = Endpoint::from_shared(endpoint.clone())?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await?;
        let options = ConnectOptions::new().with_auto_sync_interval(None);
        Ok(Client {
            pool: Pool::with_channel(endpoint, channel, options),
            ns: Namespace::default(),
        })
    }

    /// A view of the cluster where every key is under `prefix`: keys sent gain it, keys
    /// received lose it (Go's `clientv3/namespace`). Applies to [`Client::kv`],
    /// [`Client::watch`], lease key lists and the [`concurrency`] recipes built on this client.
    /// Namespaces nest.
    pub fn with_namespace(&self, prefix: impl Into<Vec<u8>>) -> Client {
        let mut p = self.ns.0.to_vec();
        p.extend_from_slice(&prefix.into());
        Client {
            pool: self.pool.clone(),
            ns: Namespace(Bytes::from(p)),
        }
    }

    /// The endpoints the client currently uses.
    pub fn endpoints(&self) -> Vec<String> {
        self.pool.endpoints()
    }

    /// Replaces the endpoints now from `MemberList` (auto-sync does this periodically).
    pub async fn sync_endpoints(&self) -> Result<()> {
        self.pool.sync_endpoints().await
    }

    /// The KV service.
    pub fn kv(&self) -> Kv {
        Kv {
            pool: self.pool.clone(),
            ns: self.ns.clone(),
        }
    }

    /// The Watch service: resumable watches.
    pub fn watch(&self) -> Watch {
        Watch {
            pool: self.pool.clone(),
            ns: self.ns.clone(),
        }
    }

    /// The Lease service: grant, revoke, TTLs and background keep-alive.
    pub fn lease(&self) -> Lease {
        Lease {
            pool: self.pool.clone(),
            ns: self.ns.clone(),
        }
    }

    /// The server-side Lock service (`v3lockpb.Lock`); see also [`concurrency::Mutex`].
    pub fn lock(&self) -> LockService {
        LockService {
            pool: self.pool.clone(),
            ns: self.ns.clone(),
        }
    }

    /// The server-side Election service (`v3electionpb.Election`); see also
    /// [`concurrency::Election`].
    pub fn election(&self) -> ElectionService {
        ElectionService {
            pool: self.pool.clone(),
            ns: self.ns.clone(),
        }
    }

    /// The Auth service: users, roles, permissions, enabling auth.
    pub fn auth(&self) -> Auth {
        Auth {
            pool: self.pool.clone(),
        }
    }

    /// The Cluster service (membership).
    pub fn cluster(&self) -> Cluster {
        Cluster {
            pool: self.pool.clone(),
        }
    }

    /// The Maintenance service (status, alarms, defragment, move-leader, snapshot).
    pub fn maintenance(&self) -> Maintenance {
        Maintenance {
            pool: self.pool.clone(),
        }
    }

    // ---- single-endpoint methods: one attempt, raw statuses ----

    /// A request to the first endpoint (the only one after [`Client::connect`]), with the
    /// auth token if there is one.
    fn raw_request<T>(&self, req: T) -> (Channel, tonic::Request<T>) {
        let uri = self.pool.endpoints().remove(0);
        let picked = self
            .pool
            .channel_of(&uri)
            .expect("an endpoint of the pool has a channel");
        let mut request = tonic::Request::new(req);
        self.pool.decorate(&mut request, false);
        (picked.channel, request)
    }

    /// Puts `key = value` (single endpoint, one attempt).
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

    /// Sends a raw `PutRequest` (single endpoint, one attempt).
    pub async fn put_request(&mut self, req: PutRequest) -> Result<PutResponse> {
        let (ch, req) = self.raw_request(req);
        Ok(raw_kv(ch).put(req).await?.into_inner())
    }

    /// The current value of one key, read linearizably (single endpoint, one attempt).
    pub async fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        let resp = self
            .range(RangeRequest {
                key: key.into().into(),
                ..Default::default()
            })
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Every key that starts with `prefix` (single endpoint, one attempt).
    pub async fn get_prefix(&mut self, prefix: impl Into<Vec<u8>>) -> Result<RangeResponse> {
        let prefix = prefix.into();
        self.range(RangeRequest {
            range_end: prefix_end(&prefix).into(),
            key: prefix.into(),
            ..Default::default()
        })
        .await
    }

    /// Sends a raw `RangeRequest` (single endpoint, one attempt).
    pub async fn range(&mut self, req: RangeRequest) -> Result<RangeResponse> {
        let (ch, req) = self.raw_request(req);
        Ok(raw_kv(ch).range(req).await?.into_inner())
    }

    /// Sends a raw `DeleteRangeRequest` (single endpoint, one attempt).
    pub async fn delete(&mut self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let (ch, req) = self.raw_request(req);
        Ok(raw_kv(ch).delete_range(req).await?.into_inner())
    }

    /// Sends a raw `TxnRequest` (single endpoint, one attempt).
    pub async fn txn(&mut self, req: TxnRequest) -> Result<PbTxnResponse> {
        let (ch, req) = self.raw_request(req);
        Ok(raw_kv(ch).txn(req).await?.into_inner())
    }

    /// Compacts the history up to `revision` (single endpoint, one attempt).
    pub async fn compact(&mut self, revision: i64, physical: bool) -> Result<CompactionResponse> {
        let (ch, req) = self.raw_request(CompactionRequest { revision, physical });
        Ok(raw_kv(ch).compact(req).await?.into_inner())
    }

    /// The member's status (single endpoint, one attempt).
    pub async fn status(&mut self) -> Result<StatusResponse> {
        let (ch, req) = self.raw_request(StatusRequest {});
        Ok(MaintenanceClient::new(ch).status(req).await?.into_inner())
    }

    /// The cluster's members as this member sees them (single endpoint, one attempt).
    pub async fn member_list(&mut self) -> Result<MemberListResponse> {
        let (ch, req) = self.raw_request(MemberListRequest::default());
        Ok(ClusterClient::new(ch).member_list(req).await?.into_inner())
    }
}

fn raw_kv(ch: Channel) -> KvClient<Channel> {
    KvClient::new(ch).max_decoding_message_size(usize::MAX)
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
