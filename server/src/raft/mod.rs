//! Raft: the only module that imports `raft` (raft-rs).
//!
//! One thread, the raft loop ([`node`]), owns the `RawNode` and its [`storage::LogStore`]; everything
//! else talks to it through a [`RaftHandle`] (bounded mailbox) and hears back through channels:
//! committed entries go to the apply worker as [`Committed`], durable state to the [`log_writer`].
//! Other members are reached through the [`transport`] (out) and the [`PeerService`] (in); the
//! loop follows the membership that the apply worker publishes.
//!
//! **Boundary:** raft never imports mvcc, apply or api; it moves opaque request bytes.

pub mod log_writer;
mod logger;
mod node;
pub(crate) mod peer;
pub mod storage;
mod transport;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::engine::Batch;
pub use node::{start, RaftConfig, APPLY_QUEUE_LEN_MAX};
pub use peer::{PeerQueries, PeerService};
pub use transport::{CONNECTION_WINDOW_BYTES, PEER_MESSAGE_BYTES_MAX, STREAM_WINDOW_BYTES};

/// Proposals and read requests waiting in the raft loop's mailbox, at most.
pub const PROPOSAL_QUEUE_LEN_MAX: usize = 16 * 1024;
/// Committed but unapplied entries beyond which proposals are refused (etcd: `maxGapBetweenApplyAndCommitIndex`).
pub const APPLY_LAG_ENTRIES_MAX: u64 = 5000;

/// Why raft could not take or finish a request (mapped to etcd's errors by `api::error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error("no leader")]
    NoLeader,
    #[error("leader changed")]
    LeaderChanged,
    #[error("too many requests")]
    TooManyRequests,
    #[error("server stopped")]
    Stopped,
    #[error("request timed out")]
    Timeout,
    #[error("request timed out, possibly due to previous leader failure")]
    TimeoutLeaderFail,
    #[error("request timed out, possibly due to connection lost")]
    TimeoutConnectionLost,
    #[error("not leader")]
    NotLeader,
}

/// A membership change to propose (the request's context travels with it to the apply worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChangeKind {
    AddVoter,
    AddLearner,
    Promote,
    Remove,
}

/// A committed log entry, as the apply worker sees it.
pub enum Committed {
    /// A proposal's request bytes.
    Request { index: u64, data: Bytes },
    /// An entry with no state-machine effect (a new leader's empty entry).
    Noop { index: u64 },
    /// A membership change that raft has taken into its configuration: `context` is the proposer's
    /// `MemberChange` (empty for raft's own entries); `raft_state` must be written in the same batch
    /// as the change is applied.
    MemberChange {
        index: u64,
        context: Bytes,
        raft_state: Batch,
    },
    /// The state machine is replaced by the snapshot in `path` (taken at `index`); `raft_state` is
    /// written in the last batch of the install.
    Snapshot {
        index: u64,
        path: PathBuf,
        raft_state: Batch,
    },
}

impl Committed {
    pub fn index(&self) -> u64 {
        match self {
            Committed::Request { index, .. }
            | Committed::Noop { index }
            | Committed::MemberChange { index, .. }
            | Committed::Snapshot { index, .. } => *index,
        }
    }
}

/// What the raft loop publishes after every `Ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub is_leader: bool,
    /// When the current leader became known here (etcd: `leadElectedTime`).
    pub leader_since: Option<std::time::Instant>,
}

/// Messages into the raft loop.
enum Mailbox {
    Propose(Vec<u8>),
    ReadIndex(oneshot::Sender<Result<u64, RaftError>>),
    ProposeMemberChange {
        kind: MemberChangeKind,
        member_id: u64,
        context: Vec<u8>,
    },
    TransferLeader(u64),
    /// The leader's view of how far each member's log matches its own (`None` on a follower).
    Progress(oneshot::Sender<Option<LogProgress>>),
}

/// What the peer transport brings into the raft loop. Apart from [`Mailbox`] so that the loop's
/// lifetime follows the [`RaftHandle`]s alone.
enum PeerInput {
    /// A message from a peer.
    Step(raft::eraftpb::Message),
    Unreachable(u64),
    SnapshotSent {
        to: u64,
        ok: bool,
    },
}

/// Peer messages queued for the raft loop, at most (more are dropped; raft retransmits).
const PEER_QUEUE_LEN_MAX: usize = 16 * 1024;

/// The leader's last log index and, for every member, the index up to which its log matches.
#[derive(Debug, Clone, Default)]
pub struct LogProgress {
    pub last_index: u64,
    pub matched: HashMap<u64, u64>,
}

/// The way in to the raft loop. Cheap to clone.
#[derive(Clone)]
pub struct RaftHandle {
    mailbox: crossbeam_channel::Sender<Mailbox>,
    peer: crossbeam_channel::Sender<PeerInput>,
    peers_active: transport::PeersActive,
    removed: watch::Receiver<bool>,
    status: watch::Receiver<RaftStatus>,
    applied: watch::Receiver<u64>,
}

/// Raft's status and applied index, without a way into the raft loop: holding one does not keep
/// the loop alive (it ends when the last [`RaftHandle`] is dropped).
#[derive(Clone)]
pub struct RaftObserver {
    status: watch::Receiver<RaftStatus>,
    applied: watch::Receiver<u64>,
}

impl RaftObserver {
    pub fn status(&self) -> RaftStatus {
        *self.status.borrow()
    }

    /// Waits until the state machine has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), RaftError> {
        let mut applied = self.applied.clone();
        applied
            .wait_for(|&a| a >= index)
            .await
            .map(|_| ())
            .map_err(|_| RaftError::Stopped)
    }
}

impl RaftHandle {
    pub fn observer(&self) -> RaftObserver {
        RaftObserver {
            status: self.status.clone(),
            applied: self.applied.clone(),
        }
    }

    /// Hands `data` to raft. Success means it is queued, not committed: the caller waits for the
    /// apply worker's answer under its request id.
    pub fn propose(&self, data: Vec<u8>) -> Result<(), RaftError> {
        if self.status().commit_index > self.applied_index() + APPLY_LAG_ENTRIES_MAX {
            return Err(RaftError::TooManyRequests);
        }
        self.send(Mailbox::Propose(data))
    }

    /// Proposes a membership change; like [`RaftHandle::propose`], success means queued.
    pub fn propose_member_change(
        &self,
        kind: MemberChangeKind,
        member_id: u64,
        context: Vec<u8>,
    ) -> Result<(), RaftError> {
        self.send(Mailbox::ProposeMemberChange {
            kind,
            member_id,
            context,
        })
    }

    /// Asks the leader to hand leadership to `to` (raft's leader transfer).
    pub fn transfer_leader(&self, to: u64) -> Result<(), RaftError> {
        self.send(Mailbox::TransferLeader(to))
    }

    /// Returns `true` once a peer has refused this member as removed from the cluster, or
    /// `false` if the transport is gone (it can no longer tell).
    pub async fn refused_as_removed(&self) -> bool {
        let mut removed = self.removed.clone();
        let refused = removed.wait_for(|&r| r).await.is_ok();
        refused
    }

    /// Since when this member's stream to peer `id` has been up; `None` when it is not connected.
    pub fn peer_active_since(&self, id: u64) -> Option<std::time::Instant> {
        self.peers_active
            .lock()
            .expect("peers lock")
            .get(&id)
            .copied()
    }

    /// The leader's view of its followers' logs; `None` when this member is not the leader.
    pub async fn progress(&self) -> Result<Option<LogProgress>, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Mailbox::Progress(tx))?;
        rx.await.map_err(|_| RaftError::Stopped)
    }

    fn send(&self, m: Mailbox) -> Result<(), RaftError> {
        self.mailbox.try_send(m).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => RaftError::TooManyRequests,
            crossbeam_channel::TrySendError::Disconnected(_) => RaftError::Stopped,
        })
    }

    /// Waits until this member has applied everything committed before the call: after it, a local
    /// read is linearizable. One raft ReadIndex round serves every read that waits at the same time.
    pub async fn wait_linearizable(&self, timeout: Duration) -> Result<(), RaftError> {
        let (tx, rx) = oneshot::channel();
        self.send(Mailbox::ReadIndex(tx))?;
        let wait = async {
            let index = rx.await.map_err(|_| RaftError::Stopped)??;
            self.wait_applied(index).await
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| RaftError::Timeout)?
    }

    /// Waits until the state machine has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), RaftError> {
        self.observer().wait_applied(index).await
    }

    pub fn status(&self) -> RaftStatus {
        *self.status.borrow()
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Why a request that started at `start` timed out, as etcd words it (`parseProposeCtxErr`): a
    /// leader elected during the request (after losing the previous one), a lost connection to
    /// the leader, or plain time.
    pub fn timeout_cause(
        &self,
        start: std::time::Instant,
        election_timeout: Duration,
    ) -> RaftError {
        let status = self.status();
        if let Some(elected) = status.leader_since {
            let lost = elected.checked_sub(election_timeout * 2).unwrap_or(elected);
            if start > lost && start < elected {
                return RaftError::TimeoutLeaderFail;
            }
        }
        let leader = status.leader_id;
        if leader != 0
            && !status.is_leader
            && self.peer_active_since(leader).is_none_or(|t| t > start)
        {
            return RaftError::TimeoutConnectionLost;
        }
        RaftError::Timeout
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn handle(status: RaftStatus, leader_connected: Option<Instant>) -> RaftHandle {
        let (mailbox, _) = crossbeam_channel::bounded(1);
        let (peer, _) = crossbeam_channel::bounded(1);
        let peers_active = transport::PeersActive::default();
        if let Some(t) = leader_connected {
            peers_active.lock().unwrap().insert(status.leader_id, t);
        }
        RaftHandle {
            mailbox,
            peer,
            peers_active,
            removed: watch::channel(false).1,
            status: watch::channel(status).1,
            applied: watch::channel(0).1,
        }
    }

    #[test]
    fn a_timeout_is_explained_as_etcd_does() {
        let now = Instant::now();
        let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap();
        let election = Duration::from_secs(1);
        let following = |since: u64| RaftStatus {
            leader_id: 2,
            leader_since: Some(ago(since)),
            ..RaftStatus::default()
        };
        // A leader elected while the request waited, soon after the request started.
        let h = handle(following(100), Some(ago(100)));
        assert_eq!(
            h.timeout_cause(ago(500), election),
            RaftError::TimeoutLeaderFail
        );
        // A stable leader this member has been connected to all along.
        let h = handle(following(60_000), Some(ago(60_000)));
        assert_eq!(h.timeout_cause(ago(7000), election), RaftError::Timeout);
        // A stable leader whose connection dropped (or came back) during the request.
        let h = handle(following(60_000), None);
        assert_eq!(
            h.timeout_cause(ago(7000), election),
            RaftError::TimeoutConnectionLost
        );
        let h = handle(following(60_000), Some(ago(1000)));
        assert_eq!(
            h.timeout_cause(ago(7000), election),
            RaftError::TimeoutConnectionLost
        );
        // No leader at all.
        let h = handle(RaftStatus::default(), None);
        assert_eq!(h.timeout_cause(ago(7000), election), RaftError::Timeout);
    }
}
