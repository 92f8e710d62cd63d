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
//! 5. committed membership changes enter raft's configuration (`apply_conf_change`) once the ready
//!    is advanced, and go to the apply worker with the configuration to store.
//!
//! A ready that carries a snapshot first waits for the log writer to go idle, then has the apply
//! worker install it and waits for that (the member has nothing else useful to do meanwhile).
//!
//! **Invariant:** nothing calls `propose`/`step`/`tick`/`apply_conf_change` between `ready()` and
//! `advance_append_async()`: both happen inside [`RaftNode::handle_ready`].

use crate::tls::Dialer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, EntryType,
    HardState, Message, Snapshot,
};
use raft::{Config, RawNode, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use super::log_writer::{self, Persisted, WriteTask, LOG_WRITER_QUEUE_LEN_MAX};
use super::storage::{LogStore, SnapshotSource};
use super::transport::Transport;
use super::{
    Committed, LogProgress, Mailbox, MemberChangeKind, PeerInput, RaftError, RaftHandle,
    RaftStatus, PEER_QUEUE_LEN_MAX, PROPOSAL_QUEUE_LEN_MAX,
};
use crate::cluster::Membership;
use crate::engine::Engine;
use crate::metrics::METRICS;

/// Mailbox messages handled per turn, at most (bounds the latency of one turn).
const MAILBOX_BATCH_MAX: usize = 4096;
/// Log entries kept behind a log truncation for slow followers (etcd: `SnapshotCatchUpEntries`).
const LOG_CATCH_UP_ENTRIES: u64 = 5000;
/// How long a ReadIndex may go unanswered before it is sent again.
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);
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
    pub cluster_id: u64,
    /// Where checkpoints for outgoing snapshots are taken.
    pub snapshot_dir: PathBuf,
    /// How the transport dials peer URLs (TLS for `https://`).
    pub peer_dialer: Dialer,
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
    /// Tasks handed to the log writer and not yet reported persisted.
    writes_inflight: usize,
    transport: Transport,
    membership: watch::Receiver<Membership>,
    snapshots: Arc<SnapshotSource>,
}

/// Starts the raft loop and the log writer for a member whose log already exists in `engine`.
/// Committed entries leave on `committed`; the apply worker reports progress through `applied` and
/// the membership it applies through `membership` (the transport follows it). Peer messages go out
/// on tasks of `runtime`. The loop, and then the log writer, stop once every [`RaftHandle`] is
/// dropped; the returned thread ends after both.
pub fn start(
    engine: Engine,
    cfg: RaftConfig,
    committed: Sender<Vec<Committed>>,
    applied: watch::Receiver<u64>,
    membership: watch::Receiver<Membership>,
    runtime: tokio::runtime::Handle,
) -> Result<(RaftHandle, thread::JoinHandle<()>), raft::Error> {
    let snapshots = SnapshotSource::new(engine.clone(), cfg.snapshot_dir.clone());
    let store = LogStore::open(engine.clone(), cfg.applied, snapshots.clone())
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
        batch_append: true,
        ..Config::default()
    };
    raft_cfg.validate()?;
    let mut node = RawNode::new(&raft_cfg, store, &super::logger::logger(cfg.member_id))?;
    if voters == [cfg.member_id] {
        // Alone in the group: no one to wait for, so win the election now.
        node.campaign()?;
    }
    let (mailbox_tx, mailbox_rx) = crossbeam_channel::bounded(PROPOSAL_QUEUE_LEN_MAX);
    let (peer_tx, peer_rx) = crossbeam_channel::bounded(PEER_QUEUE_LEN_MAX);
    let (writer_tx, writer_rx) = crossbeam_channel::bounded(LOG_WRITER_QUEUE_LEN_MAX);
    let (persisted_tx, persisted_rx) = crossbeam_channel::bounded(LOG_WRITER_QUEUE_LEN_MAX);
    let writer_thread = log_writer::start(engine.clone(), writer_rx, persisted_tx);
    let (status_tx, status_rx) = watch::channel(RaftStatus::default());
    let transport = Transport::new(
        cfg.member_id,
        cfg.cluster_id,
        peer_tx.clone(),
        snapshots.clone(),
        cfg.peer_dialer.clone(),
        runtime,
    );
    let handle = RaftHandle {
        mailbox: mailbox_tx,
        peer: peer_tx,
        peers_active: transport.active(),
        removed: transport.removed(),
        status: status_rx,
        applied: applied.clone(),
    };
    let mut raft = RaftNode {
        node,
        engine,
        tick: cfg.tick,
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
        writes_inflight: 0,
        transport,
        membership,
        snapshots,
    };
    raft.follow_membership();
    let thread = thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            raft.run(mailbox_rx, peer_rx);
            // Dropping the loop closes the log writer's queue: wait for its last write.
            drop(raft);
            let _ = writer_thread.join();
        })
        .expect("spawn raft thread");
    Ok((handle, thread))
}

impl RaftNode {
    fn run(&mut self, mailbox: Receiver<Mailbox>, peer: Receiver<PeerInput>) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(mailbox) -> m => match m {
                    Ok(m) => self.on_mailbox(m),
                    Err(_) => return,
                },
                recv(peer) -> p => {
                    if let Ok(p) = p {
                        self.on_peer(p);
                    }
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
            for p in peer.try_iter().take(MAILBOX_BATCH_MAX) {
                self.on_peer(p);
            }
            while let Ok(p) = self.persisted.try_recv() {
                self.on_persisted(p);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.node.tick();
                // One tick per interval: a late turn does not fire a burst of catch-up ticks.
                next_tick = (next_tick + self.tick).max(now);
                self.retry_reads();
            }
            if self.membership.has_changed().unwrap_or(false) {
                self.follow_membership();
            }
            self.on_applied();
            self.send_read_index();
            if self.node.has_ready() {
                if self.node.raft.raft_log.unstable.snapshot.is_some() {
                    // A snapshot replaces the log: let every earlier write land first.
                    self.wait_writes();
                }
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
            Mailbox::ProposeMemberChange {
                kind,
                member_id,
                context,
            } => {
                // Raft drops a change proposed while it believes the previous one unapplied; the
                // previous one's proposer may already have its answer: tell raft what is applied.
                self.on_applied();
                let change_type = match kind {
                    MemberChangeKind::AddVoter | MemberChangeKind::Promote => {
                        ConfChangeType::AddNode
                    }
                    MemberChangeKind::AddLearner => ConfChangeType::AddLearnerNode,
                    MemberChangeKind::Remove => ConfChangeType::RemoveNode,
                };
                let mut single = ConfChangeSingle::default();
                single.set_change_type(change_type);
                single.node_id = member_id;
                let mut cc = ConfChangeV2::default();
                cc.set_transition(ConfChangeTransition::Auto);
                cc.mut_changes().push(single);
                cc.context = context.into();
                if let Err(e) = self.node.propose_conf_change(vec![], cc) {
                    tracing::debug!("membership change dropped: {e}");
                }
            }
            Mailbox::TransferLeader(to) => self.node.transfer_leader(to),
            Mailbox::Progress(reply) => {
                let raft = &self.node.raft;
                let progress = (raft.state == StateRole::Leader).then(|| LogProgress {
                    last_index: raft.raft_log.last_index(),
                    matched: raft
                        .prs()
                        .iter()
                        .map(|(&id, p)| (id, p.matched))
                        .collect::<HashMap<_, _>>(),
                });
                let _ = reply.send(progress);
            }
        }
    }

    fn on_peer(&mut self, p: PeerInput) {
        match p {
            PeerInput::Step(m) => {
                // Raft refuses to campaign (e.g. on a leader transfer's MsgTimeoutNow) while it
                // believes a configuration change is unapplied: tell it what is applied first.
                self.on_applied();
                if let Err(e) = self.node.step(m) {
                    tracing::debug!("peer message ignored: {e}");
                }
            }
            PeerInput::Unreachable(id) => self.node.report_unreachable(id),
            PeerInput::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.node.report_snapshot(to, status);
            }
        }
    }

    /// Points the transport at the members of the latest applied membership.
    fn follow_membership(&mut self) {
        let peers: HashMap<u64, Vec<String>> = self
            .membership
            .borrow_and_update()
            .members
            .iter()
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect();
        self.transport.set_peers(&peers);
    }

    fn on_persisted(&mut self, p: Persisted) {
        self.writes_inflight -= p.tasks;
        if p.number > self.last_persisted_number {
            self.node.on_persist_ready(p.number);
            self.last_persisted_number = p.number;
        }
        self.node.mut_store().on_persisted(p.last_index);
        self.send(p.messages);
    }

    /// Blocks until every task handed to the log writer is durable.
    fn wait_writes(&mut self) {
        while self.writes_inflight > 0 {
            match self.persisted.recv() {
                Ok(p) => self.on_persisted(p),
                Err(_) => panic!("log writer stopped (fail-stop)"),
            }
        }
    }

    fn on_applied(&mut self) {
        let raft_log = &self.node.raft.raft_log;
        // Raft takes an applied index only up to what it knows is committed and durable here (an
        // installed snapshot counts once its ready is persisted).
        let applied = (*self.applied.borrow())
            .min(raft_log.committed)
            .min(raft_log.persisted);
        if applied <= raft_log.applied {
            return;
        }
        self.node.advance_apply_to(applied);
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
                self.snapshots.release_stale();
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

    /// A ReadIndex that raft dropped (no leader yet, or a leader that has not committed in its term)
    /// is never answered: ask again, for the same reads, after [`READ_INDEX_RETRY`] (etcd 3.5's
    /// `readIndexRetryTime`). Each read gives up at its own deadline.
    fn retry_reads(&mut self) {
        let Some(batch) = self.read_inflight.as_mut() else {
            return;
        };
        if batch.sent.elapsed() < READ_INDEX_RETRY {
            return;
        }
        batch.waiters.retain(|w| !w.is_closed());
        if batch.waiters.is_empty() {
            self.read_inflight = None;
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        batch.ctx = ctx;
        batch.sent = Instant::now();
        self.node.read_index(ctx.to_be_bytes().to_vec());
        METRICS.slow_read_indexes.inc();
    }

    fn fail_reads(&mut self, e: RaftError) {
        if let Some(batch) = self.read_inflight.take() {
            METRICS.read_indexes_failed.inc();
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
                if ss.leader_id != 0 {
                    METRICS.leader_changes_seen.inc();
                }
                self.fail_reads(RaftError::LeaderChanged);
            }
        }
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot(), rd.hs());
        }
        // Published before any entry of this ready is applied, so that a client answered for an
        // entry never sees an older commit index in Status afterwards.
        self.publish_status();
        let committed = rd.take_committed_entries();
        for rs in rd.take_read_states() {
            let ctx = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or_default());
            if self.read_inflight.as_ref().is_some_and(|b| b.ctx == ctx) {
                let batch = self.read_inflight.take().expect("checked above");
                for w in batch.waiters {
                    let _ = w.send(Ok(rs.index));
                }
            } else {
                // The answer to a ReadIndex that was sent again since (etcd: "ignored
                // out-of-date read index response").
                METRICS.slow_read_indexes.inc();
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
        self.dispatch_committed(committed);
    }

    /// Has the apply worker replace the state machine with `snapshot` and waits for it; the log is
    /// replaced in the same last batch of the install.
    fn install_snapshot(&mut self, snapshot: &Snapshot, hs: Option<&HardState>) {
        let meta = snapshot.get_metadata();
        let path = PathBuf::from(String::from_utf8_lossy(&snapshot.data).into_owned());
        tracing::info!(index = meta.index, term = meta.term, "installing snapshot");
        METRICS.snapshot_apply_in_progress.set(1);
        let raft_state = self.node.mut_store().apply_snapshot(meta, hs);
        let index = meta.index;
        if self
            .committed
            .send(vec![Committed::Snapshot {
                index,
                path,
                raft_state,
            }])
            .is_err()
        {
            panic!("apply worker stopped; cannot install a snapshot");
        }
        let mut applied = self.applied.clone();
        if futures::executor::block_on(applied.wait_for(|&a| a >= index)).is_err() {
            panic!("apply worker stopped while installing a snapshot");
        }
        METRICS.snapshot_apply_in_progress.set(0);
        tracing::info!(index, "snapshot installed");
    }

    /// Sends committed entries to the apply worker; a membership change first enters raft's
    /// configuration, whose new value travels with the entry to be stored when it is applied.
    fn dispatch_committed(&mut self, entries: Vec<raft::eraftpb::Entry>) {
        if entries.is_empty() {
            return;
        }
        let mut batch = Vec::with_capacity(entries.len());
        for e in entries {
            let committed = match e.get_entry_type() {
                // Check the type before the data: an empty EntryNormal is a leader's no-op, while
                // raft's own leave-joint change is an EntryConfChangeV2 with empty data.
                EntryType::EntryNormal if e.data.is_empty() => Committed::Noop { index: e.index },
                EntryType::EntryNormal => Committed::Request {
                    index: e.index,
                    data: e.data,
                },
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .unwrap_or_else(|err| panic!("conf change at {}: {err}", e.index));
                    // Cairn proposes only V2 changes; a V1 one is the same single change.
                    let mut single = ConfChangeSingle::default();
                    single.set_change_type(cc.get_change_type());
                    single.node_id = cc.node_id;
                    let mut v2 = ConfChangeV2::default();
                    v2.mut_changes().push(single);
                    v2.context = cc.context;
                    self.apply_conf_change(e.index, v2)
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .unwrap_or_else(|err| panic!("conf change at {}: {err}", e.index));
                    self.apply_conf_change(e.index, cc)
                }
            };
            batch.push(committed);
        }
        if self.committed.send(batch).is_err() {
            panic!("apply worker stopped; cannot apply committed entries");
        }
    }

    fn apply_conf_change(&mut self, index: u64, cc: ConfChangeV2) -> Committed {
        let cs = match self.node.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(e) => panic!("committed membership change at {index} cannot apply: {e}"),
        };
        tracing::info!(index, voters = ?cs.voters, learners = ?cs.learners, "raft configuration changed");
        // raft-rs keeps a leader that removed itself in the leader role (the "step down" TODO in
        // `Raft::post_conf_change`), and the next of its own writes to be persisted then finds no
        // progress for itself and panics (`Raft::on_persist_entries`). Step down now, in the same
        // term, as raft-rs's own check-quorum does; the member stops once it has applied its
        // removal anyway.
        let raft = &mut self.node.raft;
        if raft.state == StateRole::Leader && !cs.voters.contains(&raft.id) {
            let term = raft.term;
            raft.become_follower(term, raft::INVALID_ID);
        }
        let raft_state = self.node.mut_store().set_conf_state(cs);
        Committed::MemberChange {
            index,
            context: cc.context,
            raft_state,
        }
    }

    fn write(&mut self, task: WriteTask) {
        self.writes_inflight += 1;
        if self.writer.send(task).is_err() {
            panic!("log writer stopped (fail-stop)");
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        if !messages.is_empty() {
            self.transport.send(messages);
        }
    }

    fn publish_status(&mut self) {
        let raft = &self.node.raft;
        let previous = *self.status.borrow();
        let leader_since = if raft.leader_id == previous.leader_id {
            previous.leader_since
        } else {
            (raft.leader_id != 0).then(Instant::now)
        };
        let status = RaftStatus {
            leader_id: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            is_leader: raft.state == StateRole::Leader,
            leader_since,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
}
