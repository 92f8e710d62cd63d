//! `Maintenance.Snapshot`: streams a backup of this member's state (the file format is in
//! [`crate::backup`]) the way etcd does (etcd: `server/etcdserver/api/v3rpc/maintenance.go`):
//! blobs whose `remaining_bytes` count down to 0, then one last message whose blob is the SHA-256
//! of every byte before it. `etcdctl snapshot save` writes the blobs to its file as they come.
//!
//! Each stream has its own thread ("snapshot-save"): it takes a RocksDB checkpoint (hard links, so
//! reads and writes go on), counts it, then reads it and sends; a bounded queue holds it back to the
//! client's pace. When the client goes, the next send fails and the thread ends, and dropping the
//! checkpoint deletes it. Memory stays bounded by the queue and one chunk of records.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cairn_proto::etcdserverpb::{ResponseHeader, SnapshotResponse};
use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

use super::{ApiError, Core, ETCD_CLUSTER_VERSION};
use crate::backup::{Backup, BackupError};
use crate::engine::Engine;
use crate::raft::RaftError;

/// The blob size of each message (etcd: 32 KiB). Larger blobs cost fewer messages (saving 200 MB
/// took 1.9–3.0 s with 1 MiB against 2.7–3.2 s with 32 or 256 KiB); this stays well below the
/// 4 MiB that gRPC clients accept by default.
const SNAPSHOT_MESSAGE_BYTES: usize = 1 << 20;
/// Messages queued ahead of the client, at most.
const SNAPSHOT_QUEUE_MESSAGES: usize = 4;
/// Snapshots streamed at once, at most: each pins a checkpoint (disk space as the database moves
/// on) and a thread. More are refused with `too many requests`.
pub const SNAPSHOT_SAVES_MAX: usize = 2;

pub type SnapshotStream = tokio_stream::wrappers::ReceiverStream<Result<SnapshotResponse, Status>>;

/// The snapshots this member is streaming to clients.
pub struct SnapshotSaves {
    /// Where checkpoints are taken (the member's snapshot dir, emptied at every start).
    dir: PathBuf,
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
}

impl SnapshotSaves {
    pub fn new(dir: PathBuf) -> SnapshotSaves {
        SnapshotSaves {
            dir,
            permits: Arc::new(Semaphore::new(SNAPSHOT_SAVES_MAX)),
            next_id: AtomicU64::new(0),
        }
    }

    /// Waits until no snapshot is being streamed; false if that took longer than `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let all = self.permits.acquire_many(SNAPSHOT_SAVES_MAX as u32);
        matches!(tokio::time::timeout(timeout, all).await, Ok(Ok(_)))
    }
}

/// Starts streaming a snapshot of this member's state.
pub fn serve(core: &Core) -> Result<SnapshotStream, Status> {
    let saves = &core.snapshot_saves;
    let permit = saves
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::from(RaftError::TooManyRequests))?;
    let id = saves.next_id.fetch_add(1, Ordering::Relaxed);
    let dir = saves.dir.join(format!("backup-{id}"));
    let engine = core.engine.clone();
    let header = ResponseHeader {
        cluster_id: core.cluster_id,
        member_id: core.member_id,
        revision: 0,
        raft_term: core.raft.status().term,
    };
    let (tx, rx) = mpsc::channel(SNAPSHOT_QUEUE_MESSAGES);
    std::thread::Builder::new()
        .name("snapshot-save".into())
        .spawn(move || {
            let start = Instant::now();
            match send(engine, dir, header, &tx) {
                Ok(Some(bytes)) => tracing::info!(
                    bytes,
                    took_ms = start.elapsed().as_millis() as u64,
                    "sent a snapshot to a client"
                ),
                Ok(None) => tracing::info!("a client stopped reading its snapshot"),
                Err(e) => {
                    tracing::error!("cannot send a snapshot: {e}");
                    let status = Status::from(ApiError::Internal(format!("snapshot: {e}")));
                    let _ = tx.blocking_send(Err(status));
                }
            }
            drop(permit);
        })
        .map_err(|e| ApiError::Internal(format!("cannot start a snapshot: {e}")))?;
    Ok(SnapshotStream::new(rx))
}

/// Takes the backup and sends it; returns the bytes sent, or `None` if the client went away.
fn send(
    engine: Engine,
    dir: PathBuf,
    mut header: ResponseHeader,
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> Result<Option<u64>, BackupError> {
    let backup = Backup::take(&engine, dir)?;
    drop(engine);
    header.revision = backup.header.revision;
    let mut blobs = Blobs {
        tx,
        buf: BytesMut::with_capacity(SNAPSHOT_MESSAGE_BYTES),
        remaining: backup.header.body_bytes(),
        header: Some(header),
    };
    let Some(sha) = backup.write_body(|piece| blobs.push(piece))? else {
        return Ok(None);
    };
    assert_eq!(blobs.remaining, 0, "the body is as long as the header said");
    let hash = SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: sha.to_vec().into(),
        version: ETCD_CLUSTER_VERSION.to_string(),
    };
    if tx.blocking_send(Ok(hash)).is_err() {
        return Ok(None);
    }
    Ok(Some(backup.header.file_bytes()))
}

/// Cuts the body into messages of [`SNAPSHOT_MESSAGE_BYTES`].
struct Blobs<'a> {
    tx: &'a mpsc::Sender<Result<SnapshotResponse, Status>>,
    buf: BytesMut,
    /// Body bytes not yet sent (what each message reports).
    remaining: u64,
    /// The first message carries the response header, with the snapshot's revision.
    header: Option<ResponseHeader>,
}

impl Blobs<'_> {
    /// Takes the next piece of the body; false once the client is gone.
    fn push(&mut self, mut piece: &[u8]) -> bool {
        while !piece.is_empty() {
            let n = piece.len().min(SNAPSHOT_MESSAGE_BYTES - self.buf.len());
            self.buf.extend_from_slice(&piece[..n]);
            piece = &piece[n..];
            let full = self.buf.len() == SNAPSHOT_MESSAGE_BYTES;
            if (full || self.buf.len() as u64 == self.remaining) && !self.flush() {
                return false;
            }
        }
        true
    }

    fn flush(&mut self) -> bool {
        let blob = self.buf.split().freeze();
        self.remaining -= blob.len() as u64;
        let message = SnapshotResponse {
            header: self.header.take(),
            remaining_bytes: self.remaining,
            blob,
            version: ETCD_CLUSTER_VERSION.to_string(),
        };
        self.buf.reserve(SNAPSHOT_MESSAGE_BYTES);
        self.tx.blocking_send(Ok(message)).is_ok()
    }
}
