//! The raft loop: owns the `RawNode` and drives it (raft-rs "Processing the Ready State", async form).
//!
//! Each turn: drain the mailbox in a batch (proposals, read requests), take what the log writer and the
//! apply worker report, tick, then handle one `Ready` as a checklist:
//! 1. leader's messages go out now, before its own fsync (raft thesis §10.2.1);
//! 2. committed entries go to the apply worker (they are durable on a quorum already);
//! 3. ReadIndex answers go to the waiting reads;
//! 4. new entries and hard state go to the log writer (`advance_append_async`); a follower's messages
//!    ride with them and leave only after the fsync (`persisted_messages`).
//!
//! **Invariant:** nothing calls `propose`/`step`/`tick` between `ready()` and `advance_append_async()`:
//! both happen inside [`RaftNode::handle_ready`].

use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use raft::eraftpb::{EntryType, Message};
use raft::{Config, RawNode, StateRole};
use tokio::sync::{oneshot, watch};

use super::log_writer::{self, Persisted, WriteTask, LOG_WRITER_QUEUE_LEN_MAX};
use super::storage::LogStore;
use super::{Committed, Mailbox, RaftError, RaftHandle, RaftStatus, PROPOSAL_QUEUE_LEN_MAX};
use crate::engine::Engine;

/// Mailbox messages handled per turn, at most (bounds the latency of one turn).
const MAILBOX_BATCH_MAX: usize = 4096;
/// Log entries kept behind a log truncation for slow followers (etcd: `SnapshotCatchUpEntries`).
const LOG_CATCH_UP_ENTRIES: u64 = 5000;
/// Committed-entry batches queued for the apply worker, at most.
pub const APPLY_QUEUE_LEN_MAX: usize = 1024;

/// How to run raft for this member.
pub struct RaftConfig {
    pub member_id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Applied entries after which the log is truncated (`--snapshot-count`).
    pub snapshot_count: u64,
    /// The state machine's applied index at start.
    pub applied: u64,
}

/// A read batch sent to raft as one ReadIndex request.
struct ReadBatch {
    ctx: u64,
    sent: Instant,
    waiters: Vec<oneshot::Sender<Result<u64, RaftError>>>,
}

struct RaftNode {
    node: RawNode<LogStore>,
    engine: Engine,
    tick: Duration,
    read_timeout: Duration,
    snapshot_count: u64,
    writer: Sender<WriteTask>,
    persisted: Receiver<Persisted>,
    committed: Sender<Vec<Committed>>,
    applied: watch::Receiver<u64>,
    status: watch::Sender<RaftStatus>,
    reads_pending: Vec<oneshot::Sender<Result<u64, RaftError>>>,
    read_inflight: Option<ReadBatch>,
    next_read_ctx: u64,
    last_persisted_number: u64,
    last_applied: u64,
}

/// Starts the raft loop and the log writer for a member whose log already exists in `engine`.
/// Committed entries leave on `committed`; the apply worker reports progress through `applied`.
/// The loop, and then the log writer, stop once every [`RaftHandle`] is dropped; the returned
/// thread ends after both.
pub fn start(
    engine: Engine,
    cfg: RaftConfig,
    committed: Sender<Vec<Committed>>,
    applied: watch::Receiver<u64>,
) -> Result<(RaftHandle, thread::JoinHandle<()>), raft::Error> {
    let store = LogStore::open(engine.clone(), cfg.applied)
        .map_err(|e| raft::Error::Store(raft::StorageError::Other(Box::new(e))))?;
    let voters = store.conf_state().voters.clone();
    let raft_cfg = Config {
        id: cfg.member_id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied: cfg.applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        max_uncommitted_size: 64 << 20,
        pre_vote: true,
        check_quorum: true,
        ..Config::default()
    };
    raft_cfg.validate()?;
    let mut node = RawNode::new(&raft_cfg, store, &super::logger::logger(cfg.member_id))?;
    if voters == [cfg.member_id] {
        // Alone in the group: no one to wait for, so win the election now.
        node.campaign()?;
    }
    let (mailbox_tx, mailbox_rx) = crossbeam_channel::bounded(PROPOSAL_QUEUE_LEN_MAX);
    let (writer_tx, writer_rx) = crossbeam_channel::bounded(LOG_WRITER_QUEUE_LEN_MAX);
    let (persisted_tx, persisted_rx) = crossbeam_channel::bounded(LOG_WRITER_QUEUE_LEN_MAX);
    let writer_thread = log_writer::start(engine.clone(), writer_rx, persisted_tx);
    let (status_tx, status_rx) = watch::channel(RaftStatus::default());
    let handle = RaftHandle {
        mailbox: mailbox_tx,
        status: status_rx,
        applied: applied.clone(),
    };
    let mut raft = RaftNode {
        node,
        engine,
        tick: cfg.tick,
        read_timeout: cfg.tick * cfg.election_ticks as u32,
        snapshot_count: cfg.snapshot_count,
        writer: writer_tx,
        persisted: persisted_rx,
        committed,
        applied,
        status: status_tx,
        reads_pending: vec![],
        read_inflight: None,
        next_read_ctx: 1,
        last_persisted_number: 0,
        last_applied: cfg.applied,
    };
    let thread = thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            raft.run(mailbox_rx);
            // Dropping the loop closes the log writer's queue: wait for its last write.
            drop(raft);
            let _ = writer_thread.join();
        })
        .expect("spawn raft thread");
    Ok((handle, thread))
}

impl RaftNode {
    fn run(&mut self, mailbox: Receiver<Mailbox>) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(mailbox) -> m => match m {
                    Ok(m) => self.on_mailbox(m),
                    Err(_) => return,
                },
                recv(self.persisted) -> p => match p {
                    Ok(p) => self.on_persisted(p),
                    Err(_) => return,
                },
                default(timeout) => {}
            }
            for m in mailbox.try_iter().take(MAILBOX_BATCH_MAX) {
                self.on_mailbox(m);
            }
            while let Ok(p) = self.persisted.try_recv() {
                self.on_persisted(p);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.node.tick();
                // One tick per interval: a late turn does not fire a burst of catch-up ticks.
                next_tick = (next_tick + self.tick).max(now);
                self.expire_reads();
            }
            self.on_applied();
            self.send_read_index();
            if self.node.has_ready() {
                self.handle_ready();
            }
        }
    }

    fn on_mailbox(&mut self, m: Mailbox) {
        match m {
            // A dropped proposal (no leader, leader transfer, back-pressure) is never committed;
            // its waiter times out, which is what etcd answers too.
            Mailbox::Propose(data) => {
                if let Err(e) = self.node.propose(vec![], data) {
                    tracing::debug!("proposal dropped: {e}");
                }
            }
            Mailbox::ReadIndex(waiter) => self.reads_pending.push(waiter),
        }
    }

    fn on_persisted(&mut self, p: Persisted) {
        if p.number > self.last_persisted_number {
            self.node.on_persist_ready(p.number);
            self.last_persisted_number = p.number;
        }
        self.node.mut_store().on_persisted(p.last_index);
        self.send(p.messages);
    }

    fn on_applied(&mut self) {
        let applied = *self.applied.borrow();
        if applied <= self.last_applied {
            return;
        }
        self.node.advance_apply_to(applied);
        self.last_applied = applied;
        let store = self.node.store();
        if applied.saturating_sub(store.truncated_index())
            > self.snapshot_count + LOG_CATCH_UP_ENTRIES
        {
            let to = applied - LOG_CATCH_UP_ENTRIES;
            let persisted = self.node.raft.raft_log.persisted;
            if to > store.truncated_index() && to <= persisted {
                let mut batch = self.engine.batch();
                self.node.mut_store().truncate(to, &mut batch);
                self.write(WriteTask {
                    number: 0,
                    batch,
                    sync: false,
                    last_index: 0,
                    messages: vec![],
                });
            }
        }
    }

    /// Sends one ReadIndex for every read that arrived since the last one was answered.
    fn send_read_index(&mut self) {
        if self.read_inflight.is_some() || self.reads_pending.is_empty() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.node.read_index(ctx.to_be_bytes().to_vec());
        self.read_inflight = Some(ReadBatch {
            ctx,
            sent: Instant::now(),
            waiters: std::mem::take(&mut self.reads_pending),
        });
    }

    /// A ReadIndex that raft dropped (no leader, leader lost) is never answered: fail it after an
    /// election timeout so that its reads can be retried.
    fn expire_reads(&mut self) {
        if self
            .read_inflight
            .as_ref()
            .is_some_and(|b| b.sent.elapsed() > self.read_timeout)
        {
            self.fail_reads(RaftError::Timeout);
        }
    }

    fn fail_reads(&mut self, e: RaftError) {
        if let Some(batch) = self.read_inflight.take() {
            for w in batch.waiters {
                let _ = w.send(Err(e));
            }
        }
    }

    fn handle_ready(&mut self) {
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            let leader_changed = ss.leader_id != self.status.borrow().leader_id;
            if leader_changed {
                tracing::info!(
                    leader = format_args!("{:x}", ss.leader_id),
                    role = ?ss.raft_state,
                    "raft leader changed"
                );
                self.fail_reads(RaftError::LeaderChanged);
            }
        }
        self.send(rd.take_messages());
        assert!(
            rd.snapshot().get_metadata().index == 0,
            "a single-member group never receives a snapshot"
        );
        // Published before any entry of this ready is applied, so that a client answered for an
        // entry never sees an older commit index in Status afterwards.
        self.publish_status();
        let committed = rd.take_committed_entries();
        self.dispatch_committed(committed);
        for rs in rd.take_read_states() {
            let ctx = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or_default());
            if self.read_inflight.as_ref().is_some_and(|b| b.ctx == ctx) {
                let batch = self.read_inflight.take().expect("checked above");
                for w in batch.waiters {
                    let _ = w.send(Ok(rs.index));
                }
            }
        }
        let mut batch = self.engine.batch();
        let store = self.node.mut_store();
        store.append(rd.entries(), &mut batch);
        if let Some(hs) = rd.hs() {
            store.set_hard_state(hs.clone());
            // A hard state whose only change is the commit index is not written: the commit index
            // can be re-learned after a restart (and is raised to the applied index there), and the
            // extra RocksDB write per ready contended with the next synced log write (sequential put
            // latency 430 -> 250 us server-side). Term and vote changes are always synced.
            if rd.must_sync() {
                store.save_hard_state(&mut batch);
            }
        }
        let task = WriteTask {
            number: rd.number(),
            batch,
            sync: rd.must_sync(),
            last_index: store.last_index(),
            messages: rd.take_persisted_messages(),
        };
        self.node.advance_append_async(rd);
        self.write(task);
    }

    fn dispatch_committed(&mut self, entries: Vec<raft::eraftpb::Entry>) {
        if entries.is_empty() {
            return;
        }
        let batch = entries
            .into_iter()
            .map(|e| match e.get_entry_type() {
                // Check the type before the data: an empty EntryNormal is a leader's no-op.
                EntryType::EntryNormal if e.data.is_empty() => Committed::Noop { index: e.index },
                EntryType::EntryNormal => Committed::Request {
                    index: e.index,
                    data: e.data,
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    panic!(
                        "membership change at index {}: this member only runs alone",
                        e.index
                    )
                }
            })
            .collect();
        if self.committed.send(batch).is_err() {
            panic!("apply worker stopped; cannot apply committed entries");
        }
    }

    fn write(&mut self, task: WriteTask) {
        if self.writer.send(task).is_err() {
            panic!("log writer stopped (fail-stop)");
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        // A single-member group addresses no one.
        debug_assert!(messages.is_empty(), "no peers to send {messages:?} to");
    }

    fn publish_status(&mut self) {
        let raft = &self.node.raft;
        let status = RaftStatus {
            leader_id: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            is_leader: raft.state == StateRole::Leader,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
}
