//! Thin clients of etcd's server-side Lock and Election services (`v3lockpb`,
//! `v3electionpb`): the server runs the same recipes as [`crate::concurrency`] on the caller's
//! lease. Prefer the client-side recipes, which need no server support and react to the
//! session's loss; these exist for parity with etcd's API (and its gRPC gateway users).
//!
//! The blocking calls (`lock`, `campaign`) wait as long as it takes, with no deadline: wrap
//! them in `tokio::time::timeout` to bound them. With a lease they are retried on another
//! member after a failure, which is safe because the server derives the key from the lease.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::v3electionpb::election_client::ElectionClient;
use cairn_proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use cairn_proto::v3lockpb::lock_client::LockClient;
use cairn_proto::v3lockpb::{LockRequest, UnlockRequest};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::namespace::Namespace;
use crate::stream::TaskStream;
use crate::transport::{jittered, Pool, Retry};
use crate::{KeyValue, ResponseHeader};

/// How far in the future "no deadline" is.
const NO_DEADLINE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn retry_for(lease: i64) -> Retry {
    // Without a lease the server grants a fresh one per call: a retry would queue twice.
    if lease != 0 {
        Retry::Idempotent
    } else {
        Retry::IfNotExecuted
    }
}

/// The server-side Lock service. Get one with [`Client::lock`](crate::Client::lock).
#[derive(Clone)]
pub struct LockService {
    pub(crate) pool: Arc<Pool>,
    pub(crate) ns: Namespace,
}

impl LockService {
    /// Waits for the lock `name` and returns the key that holds it (owned by `lease`; pass 0
    /// and the server grants a 60 s lease that nobody renews). Unlock with
    /// [`LockService::unlock`] or by ending the lease.
    pub async fn lock(
        &self,
        name: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<(Vec<u8>, ResponseHeader)> {
        let req = LockRequest {
            name: self.ns.key(&name.into()),
            lease,
        };
        let deadline = Instant::now() + NO_DEADLINE;
        let resp = self
            .pool
            .unary_until(retry_for(lease), deadline, req, |ch, r| async move {
                LockClient::new(ch).lock(r).await
            })
            .await?;
        let mut key = resp.key;
        self.ns.strip(&mut key);
        Ok((key.to_vec(), resp.header.unwrap_or_default()))
    }

    /// Releases the lock held by `key` (deletes it).
    pub async fn unlock(&self, key: impl Into<Vec<u8>>) -> Result<ResponseHeader> {
        let req = UnlockRequest {
            key: self.ns.key(&key.into()),
        };
        let resp = self
            .pool
            .unary(Retry::Idempotent, req, |ch, r| async move {
                LockClient::new(ch).unlock(r).await
            })
            .await?;
        Ok(resp.header.unwrap_or_default())
    }
}

/// The server-side Election service. Get one with
/// [`Client::election`](crate::Client::election).
#[derive(Clone)]
pub struct ElectionService {
    pub(crate) pool: Arc<Pool>,
    pub(crate) ns: Namespace,
}

impl ElectionService {
    fn outbound(&self, mut leader: LeaderKey) -> LeaderKey {
        leader.name = self.ns.key(&leader.name);
        leader.key = self.ns.key(&leader.key);
        leader
    }

    fn inbound(&self, mut leader: LeaderKey) -> LeaderKey {
        self.ns.strip(&mut leader.name);
        self.ns.strip(&mut leader.key);
        leader
    }

    /// Campaigns in election `name` with `value` under `lease`; returns once elected, with the
    /// key that proves leadership (for [`ElectionService::proclaim`] and
    /// [`ElectionService::resign`]).
    pub async fn campaign(
        &self,
        name: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<LeaderKey> {
        let req = CampaignRequest {
            name: self.ns.key(&name.into()),
            lease,
            value: value.into().into(),
        };
        let deadline = Instant::now() + NO_DEADLINE;
        let resp = self
            .pool
            .unary_until(retry_for(lease), deadline, req, |ch, r| async move {
                ElectionClient::new(ch).campaign(r).await
            })
            .await?;
        Ok(self.inbound(resp.leader.unwrap_or_default()))
    }

    /// Replaces the leader's value ([`Error::ElectionNotLeader`] if `leader` no longer leads).
    pub async fn proclaim(
        &self,
        leader: LeaderKey,
        value: impl Into<Vec<u8>>,
    ) -> Result<ResponseHeader> {
        let req = ProclaimRequest {
            leader: Some(self.outbound(leader)),
            value: value.into().into(),
        };
        let resp = self
            .pool
            .unary(Retry::Idempotent, req, |ch, r| async move {
                ElectionClient::new(ch).proclaim(r).await
            })
            .await?;
        Ok(resp.header.unwrap_or_default())
    }

    /// The current leader of election `name` ([`Error::ElectionNoLeader`] if none).
    pub async fn leader(&self, name: impl Into<Vec<u8>>) -> Result<KeyValue> {
        let req = LeaderRequest {
            name: self.ns.key(&name.into()),
        };
        let resp = self
            .pool
            .unary(Retry::Idempotent, req, |ch, r| async move {
                ElectionClient::new(ch).leader(r).await
            })
            .await?;
        let mut kv = resp.kv.ok_or(Error::ElectionNoLeader)?;
        self.ns.strip(&mut kv.key);
        Ok(kv)
    }

    /// Gives up leadership.
    pub async fn resign(&self, leader: LeaderKey) -> Result<ResponseHeader> {
        let req = ResignRequest {
            leader: Some(self.outbound(leader)),
        };
        let resp = self
            .pool
            .unary(Retry::Idempotent, req, |ch, r| async move {
                ElectionClient::new(ch).resign(r).await
            })
            .await?;
        Ok(resp.header.unwrap_or_default())
    }

    /// The leader of election `name` and each change of it, as the server reports them. The
    /// stream is reopened on another member if its member fails (the current leader is then
    /// reported again).
    pub fn observe(&self, name: impl Into<Vec<u8>>) -> TaskStream<Result<KeyValue>> {
        let (tx, rx) = mpsc::channel(16);
        let pool = self.pool.clone();
        let ns = self.ns.clone();
        let req = LeaderRequest {
            name: ns.key(&name.into()),
        };
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let deadline = Instant::now() + pool.options.request_timeout;
                let opened = pool
                    .open_stream(deadline, req.clone(), |ch, r| async move {
                        ElectionClient::new(ch).observe(r).await
                    })
                    .await;
                let (mut stream, uri) = match opened {
                    Ok(s) => s,
                    Err(e) if e.is_unavailable() || matches!(e, Error::DeadlineExceeded) => {
                        failures += 1;
                        tokio::time::sleep(jittered(
                            Duration::from_millis(50),
                            Duration::from_secs(2),
                            failures.min(6),
                        ))
                        .await;
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            failures = 0;
                            if let Some(mut kv) = resp.kv {
                                ns.strip(&mut kv.key);
                                if tx.send(Ok(kv)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            let e = Error::from_status(status);
                            if !e.is_unavailable() {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                            break;
                        }
                    }
                }
                pool.report_failure(&uri);
                failures += 1;
            }
        });
        TaskStream { rx, task }
    }
}
