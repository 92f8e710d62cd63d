//! The apply worker: applies committed entries, in log order, to MVCC, and answers the proposers.
//!
//! **Invariant:** entries are applied exactly once, in order: an entry at or below the applied index
//! stored with the data (etcd's consistent index) is skipped, so a replay after a crash is harmless.
//! **Boundary:** apply never imports raft; it sees [`Committed`] entries carrying request bytes.

pub mod wait;

use std::thread;

use cairn_proto::cairnpb::{internal_request, InternalRequest};
use cairn_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, PutResponse, TxnResponse,
};
use crossbeam_channel::Receiver;
use prost::Message;
use tokio::sync::watch;

use crate::mvcc::{self, Compactor, Writer};
use crate::raft::Committed;
use wait::Wait;

/// The state-machine outcome of one applied request.
#[derive(Debug)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
}

pub type ApplyResult = Result<Applied, mvcc::Error>;

/// Starts the apply worker. It publishes its applied index on `applied` after each batch.
pub fn start(
    mut writer: Writer,
    compactor: std::sync::Arc<Compactor>,
    committed: Receiver<Vec<Committed>>,
    applied: watch::Sender<u64>,
    wait: Wait<ApplyResult>,
) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("apply".into())
        .spawn(move || {
            let mut applied_index = writer.applied_index().expect("read applied index at start");
            for batch in committed {
                for entry in batch {
                    let index = entry.index();
                    if index <= applied_index {
                        continue;
                    }
                    assert_eq!(
                        index,
                        applied_index + 1,
                        "committed entries arrive in order"
                    );
                    apply_one(&mut writer, &compactor, &wait, entry);
                    applied_index = index;
                }
                applied.send_replace(applied_index);
            }
        })
        .expect("spawn apply thread")
}

fn apply_one(
    writer: &mut Writer,
    compactor: &Compactor,
    wait: &Wait<ApplyResult>,
    entry: Committed,
) {
    let (index, data) = match entry {
        Committed::Noop { index } => {
            writer
                .set_applied(index)
                .unwrap_or_else(|e| fatal(index, e));
            return;
        }
        Committed::Request { index, data } => (index, data),
    };
    let req = InternalRequest::decode(data)
        .unwrap_or_else(|e| panic!("committed entry {index} is not an InternalRequest: {e}"));
    let result = match req.request {
        Some(internal_request::Request::Put(r)) => writer.put(&r, index).map(Applied::Put),
        Some(internal_request::Request::DeleteRange(r)) => {
            writer.delete_range(&r, index).map(Applied::DeleteRange)
        }
        Some(internal_request::Request::Txn(r)) => writer.txn(&r, index).map(Applied::Txn),
        Some(internal_request::Request::Compaction(r)) => {
            let result = writer.compact(r.revision, index);
            if result.is_ok() {
                compactor.schedule(r.revision);
            }
            result.map(Applied::Compaction)
        }
        None => {
            writer
                .set_applied(index)
                .unwrap_or_else(|e| fatal(index, e));
            return;
        }
    };
    if let Err(mvcc::Error::Engine(e)) = &result {
        panic!("applying entry {index} failed in storage (fail-stop): {e}");
    }
    wait.trigger(req.id, result);
}

fn fatal(index: u64, e: mvcc::Error) -> ! {
    panic!("applying entry {index} failed in storage (fail-stop): {e}")
}
