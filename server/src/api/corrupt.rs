//! The corruption check (etcd: `etcdserver/corrupt.go`): members compare HashKV at one revision,
//! asking each other on the peer port (`cairnpb.Peer/HashKV`), as etcd does.
//! - At start (`--initial-corrupt-check`), before serving clients: this member against every peer;
//!   a mismatch stops the member.
//! - Periodically on the leader (`--corrupt-check-time`): a member whose hash differs from the
//!   leader's at the leader's revision is marked with the CORRUPT alarm, through raft, which stops
//!   every write cluster-wide until an operator intervenes.
//!
//! Hashes are compared only at the same compacted revision; a peer that has not reached the
//! revision yet, or has compacted it away, is skipped (etcd does the same).

use std::time::Duration;

use cairn_proto::cairnpb::internal_request::Request;
use cairn_proto::cairnpb::peer_client::PeerClient;
use cairn_proto::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmType, HashKvRequest, HashKvResponse,
};
use tonic::transport::Endpoint;

use super::{ApiError, Core};
use crate::mvcc::KvHash;

/// One peer's answer: its member id and its hash, or why there is none.
type PeerHash = (u64, Result<HashKvResponse, String>);

impl Core {
    fn local_hash(&self) -> Result<KvHash, ApiError> {
        Ok(self.store.hash_kv(0)?)
    }

    /// Every other member's HashKV at `revision`, asked concurrently within the request timeout.
    async fn peer_hashes(&self, revision: i64) -> Vec<PeerHash> {
        let peers: Vec<(u64, Vec<String>)> = self
            .membership
            .borrow()
            .members
            .iter()
            .filter(|m| m.id != self.member_id)
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect();
        let asks = peers.into_iter().map(|(id, urls)| async move {
            let mut last = String::from("no peer URL answered");
            for url in urls {
                match self.ask_hash(&url, revision).await {
                    Ok(resp) => return (id, Ok(resp)),
                    Err(e) => last = format!("{url}: {e}"),
                }
            }
            (id, Err(last))
        });
        futures::future::join_all(asks).await
    }

    async fn ask_hash(&self, url: &str, revision: i64) -> Result<HashKvResponse, String> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(self.election_timeout)
            .timeout(self.request_timeout);
        let channel = self
            .peer_dialer
            .connect(endpoint)
            .await
            .map_err(|e| e.to_string())?;
        PeerClient::new(channel)
            .hash_kv(HashKvRequest { revision })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    }

    /// `--initial-corrupt-check`: fails if a peer's hash at this member's revision differs.
    pub async fn initial_corruption_check(&self) -> anyhow::Result<()> {
        let local = self.local_hash()?;
        let mut mismatches = 0;
        for (peer, answer) in self.peer_hashes(local.revision).await {
            match answer {
                Ok(p) if p.hash == local.hash => {}
                Ok(p) if p.compact_revision == local.compact_revision => {
                    tracing::error!(
                        peer = format_args!("{peer:x}"),
                        local_hash = local.hash,
                        peer_hash = p.hash,
                        revision = local.revision,
                        "hash mismatch with a peer"
                    );
                    mismatches += 1;
                }
                Ok(p) => tracing::warn!(
                    peer = format_args!("{peer:x}"),
                    peer_compact_revision = p.compact_revision,
                    "cannot compare hashes: the peer compacted to another revision"
                ),
                Err(e) => tracing::warn!(
                    peer = format_args!("{peer:x}"),
                    "cannot check the peer's hash: {e}"
                ),
            }
        }
        if mismatches > 0 {
            anyhow::bail!("{:x} found data inconsistency with peers", self.member_id);
        }
        tracing::info!(revision = local.revision, "initial corruption check passed");
        Ok(())
    }

    /// One round of the leader's periodic check; returns the members it marked CORRUPT.
    pub async fn check_peers_once(&self) -> Result<Vec<u64>, ApiError> {
        let local = self.local_hash()?;
        let peers = self.peer_hashes(local.revision).await;
        let mut corrupt = vec![];
        let again = self.local_hash()?;
        if again.revision == local.revision
            && again.compact_revision == local.compact_revision
            && again.hash != local.hash
        {
            corrupt.push(self.member_id);
        }
        for (peer, answer) in peers {
            match answer {
                Ok(p) if p.compact_revision == local.compact_revision && p.hash != local.hash => {
                    tracing::error!(
                        peer = format_args!("{peer:x}"),
                        local_hash = local.hash,
                        peer_hash = p.hash,
                        revision = local.revision,
                        "hash mismatch with a peer: raising CORRUPT"
                    );
                    corrupt.push(peer);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(peer = format_args!("{peer:x}"), "no hash: {e}"),
            }
        }
        for &member_id in &corrupt {
            let raise = AlarmRequest {
                action: alarm_request::AlarmAction::Activate as i32,
                member_id,
                alarm: AlarmType::Corrupt as i32,
            };
            self.propose(Request::Alarm(raise)).await?;
        }
        Ok(corrupt)
    }
}

/// `--corrupt-check-time`: the leader compares hashes every `every`, for as long as the member runs.
pub async fn run_corruption_checks(core: std::sync::Arc<Core>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if !core.raft.status().is_leader {
            continue;
        }
        if let Err(e) = core.check_peers_once().await {
            tracing::warn!("corruption check failed: {e}");
        }
    }
}
