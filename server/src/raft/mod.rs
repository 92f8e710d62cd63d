//! Raft: the only module that imports `raft` (raft-rs).
//!
//! One thread, the raft loop ([`node`]), owns the `RawNode` and its [`storage::LogStore`]; everything
//! else talks to it through a [`RaftHandle`] (bounded mailbox) and hears back through channels:
//! committed entries go to the apply worker as [`Committed`], durable state to the [`log_writer`].
//!
//! **Boundary:** raft never imports mvcc, apply or api; it moves opaque request bytes.

mod log_writer;
mod logger;
mod node;
pub mod storage;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

pub use node::{start, RaftConfig, APPLY_QUEUE_LEN_MAX};

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
}

/// A committed log entry, as the apply worker sees it.
#[derive(Debug, Clone)]
pub enum Committed {
    /// A proposal's request bytes.
    Request { index: u64, data: Bytes },
    /// An entry with no state-machine effect (a new leader's empty entry, a membership change).
    Noop { index: u64 },
}

impl Committed {
    pub fn index(&self) -> u64 {
        match self {
            Committed::Request { index, .. } | Committed::Noop { index } => *index,
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
}

/// Messages into the raft loop.
enum Mailbox {
    Propose(Vec<u8>),
    ReadIndex(oneshot::Sender<Result<u64, RaftError>>),
}

/// The way in to the raft loop. Cheap to clone.
#[derive(Clone)]
pub struct RaftHandle {
    mailbox: crossbeam_channel::Sender<Mailbox>,
    status: watch::Receiver<RaftStatus>,
    applied: watch::Receiver<u64>,
}

impl RaftHandle {
    /// Hands `data` to raft. Success means it is queued, not committed: the caller waits for the
    /// apply worker's answer under its request id.
    pub fn propose(&self, data: Vec<u8>) -> Result<(), RaftError> {
        if self.status().commit_index > self.applied_index() + APPLY_LAG_ENTRIES_MAX {
            return Err(RaftError::TooManyRequests);
        }
        self.mailbox
            .try_send(Mailbox::Propose(data))
            .map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(_) => RaftError::TooManyRequests,
                crossbeam_channel::TrySendError::Disconnected(_) => RaftError::Stopped,
            })
    }

    /// Waits until this member has applied everything committed before the call: after it, a local
    /// read is linearizable. One raft ReadIndex round serves every read that waits at the same time.
    pub async fn wait_linearizable(&self, timeout: Duration) -> Result<(), RaftError> {
        let (tx, rx) = oneshot::channel();
        self.mailbox
            .try_send(Mailbox::ReadIndex(tx))
            .map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(_) => RaftError::TooManyRequests,
                crossbeam_channel::TrySendError::Disconnected(_) => RaftError::Stopped,
            })?;
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
        let mut applied = self.applied.clone();
        applied
            .wait_for(|&a| a >= index)
            .await
            .map(|_| ())
            .map_err(|_| RaftError::Stopped)
    }

    pub fn status(&self) -> RaftStatus {
        *self.status.borrow()
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until some member is leader (this one, in a single-member group).
    pub async fn wait_leader(&self) -> Result<(), RaftError> {
        let mut status = self.status.clone();
        status
            .wait_for(|s| s.leader_id != 0)
            .await
            .map(|_| ())
            .map_err(|_| RaftError::Stopped)
    }
}
