//! The log writer: the one thread that makes raft state durable.
//!
//! It takes every pending [`WriteTask`] at once, writes their batches in order and syncs the WAL once
//! for the whole group (a later synced write makes every earlier write to the same WAL durable), then
//! reports back. The fsync count therefore follows the load, not the number of proposals.
//!
//! **Invariant:** a task's `messages` (a follower's acks and votes) leave only after its data is
//! synced. An I/O error here crashes the process: durability is unknown (fail-stop).

use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use raft::eraftpb::Message;

use crate::engine::{Batch, Durability, Engine};
use crate::failpoints;
use crate::metrics::METRICS;

/// Ready work that the log writer takes from the raft loop at once, at most.
pub const LOG_WRITER_QUEUE_LEN_MAX: usize = 1024;

/// One `Ready`'s worth of durable state.
pub struct WriteTask {
    /// The `Ready::number()` this task persists.
    pub number: u64,
    pub batch: Batch,
    /// Whether the data must be synced before the task counts as persisted (raft's `must_sync`).
    pub sync: bool,
    /// The last log index this task makes durable.
    pub last_index: u64,
    /// Messages to send once the task is durable.
    pub messages: Vec<Message>,
}

/// What the log writer reports: every task up to `number` is durable.
pub struct Persisted {
    /// How many tasks this report covers.
    pub tasks: usize,
    pub number: u64,
    pub last_index: u64,
    pub messages: Vec<Message>,
}

/// Starts the writer thread; it stops when `tasks` is closed.
pub fn start(
    engine: Engine,
    tasks: Receiver<WriteTask>,
    done: Sender<Persisted>,
) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            while let Ok(first) = tasks.recv() {
                let mut group = vec![first];
                group.extend(tasks.try_iter().take(LOG_WRITER_QUEUE_LEN_MAX));
                // Syncing the last write makes every earlier write of the group durable too.
                let sync_at = group
                    .iter()
                    .rposition(|t| !t.batch.is_empty())
                    .filter(|_| group.iter().any(|t| t.sync));
                let mut persisted = Persisted {
                    tasks: group.len(),
                    number: 0,
                    last_index: 0,
                    messages: vec![],
                };
                for (i, task) in group.into_iter().enumerate() {
                    let unsynced = failpoints::active(failpoints::Bug::AckBeforeFsync);
                    let durability = if sync_at == Some(i) && !unsynced {
                        Durability::Sync
                    } else {
                        Durability::Buffered
                    };
                    if !task.batch.is_empty() {
                        let bytes = task.batch.size_bytes() as i64;
                        let start = Instant::now();
                        if let Err(e) = engine.write(task.batch, durability) {
                            panic!("raft log write failed, stopping (fail-stop): {e}");
                        }
                        if durability == Durability::Sync {
                            METRICS
                                .wal_fsync_seconds
                                .observe(start.elapsed().as_secs_f64());
                        }
                        METRICS.wal_write_bytes.add(bytes);
                    }
                    persisted.number = persisted.number.max(task.number);
                    persisted.last_index = persisted.last_index.max(task.last_index);
                    persisted.messages.extend(task.messages);
                }
                if done.send(persisted).is_err() {
                    return;
                }
            }
        })
        .expect("spawn log writer thread")
}
