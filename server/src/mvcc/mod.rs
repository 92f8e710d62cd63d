//! MVCC: etcd's revisioned key-value model on top of the engine.
//!
//! Owns the `kv_latest`, `kv_history` and `kv_revision` column families and the revision keys of
//! `meta` (layouts in [`codec`]). The read side ([`Store`]) serves any revision from a consistent
//! engine view; the write side ([`Writer`], one owner: the apply worker) executes etcd's Put,
//! DeleteRange, Txn and Compact at one new revision per mutating request.
//!
//! **Boundary:** mvcc knows nothing of raft, tonic or the network; it sees ordered requests only.
//! **Invariant:** the current revision starts at 1 and grows by exactly one per mutating request; the
//! revision, its data and the applied index are written in one atomic batch.

pub mod codec;
mod compact;
mod hash;
mod range;
mod write;

#[cfg(test)]
mod model;

use bytes::Bytes;
use cairn_proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, TxnRequest,
    TxnResponse,
};
use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;

use crate::engine::{Cf, Engine, EngineError, RangeIter, ReadView};
use crate::metrics::{count_txn, TxnOps, METRICS};
use codec::KeyBounds;

pub use codec::EventKind;
pub use compact::Compactor;
pub use hash::KvHash;
pub use range::RangeResult;
pub use write::{is_read_only, Writer};

/// Meta key of the current (last written) main revision.
const META_REVISION: &[u8] = b"mvcc/revision";
/// Meta key of the compacted revision: reads below it fail with [`Error::Compacted`].
const META_COMPACT_REVISION: &[u8] = b"mvcc/compact_revision";
/// Meta key of the revision up to which history has been physically removed.
const META_COMPACT_FINISHED: &[u8] = b"mvcc/compact_finished";
/// Meta key of the raft index of the last applied entry (etcd's "consistent index").
pub const META_APPLIED_INDEX: &[u8] = b"apply/applied_index";

/// The revision of an empty store (etcd: the first write gets revision 2).
pub const REVISION_INITIAL: i64 = 1;

/// What a KV request can fail with, in etcd's words (mapped to gRPC statuses in `api::error`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn decode_i64(bytes: Option<Vec<u8>>) -> i64 {
    bytes.map_or(0, |b| {
        i64::from_be_bytes(b.as_slice().try_into().expect("8-byte meta integer"))
    })
}

/// Decodes a stored `KeyValue` (stored without its key) and gives it `key`.
fn decode_kv(key: &[u8], value: &[u8]) -> KeyValue {
    let mut kv = KeyValue::decode(value).expect("stored KeyValue decodes");
    kv.key = Bytes::copy_from_slice(key);
    kv
}

/// Where reads come from: the live engine (apply) or a point-in-time view (API reads).
pub(crate) trait Source {
    fn get(&self, cf: Cf, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, EngineError>;
    fn iter(&self, cf: Cf, lower: &[u8], upper: Option<&[u8]>) -> RangeIter<'_>;
}

impl Source for Engine {
    fn get(&self, cf: Cf, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, EngineError> {
        Engine::get(self, cf, key)
    }
    fn iter(&self, cf: Cf, lower: &[u8], upper: Option<&[u8]>) -> RangeIter<'_> {
        Engine::iter(self, cf, lower, upper)
    }
}

impl Source for ReadView<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, EngineError> {
        ReadView::get(self, cf, key)
    }
    fn iter(&self, cf: Cf, lower: &[u8], upper: Option<&[u8]>) -> RangeIter<'_> {
        ReadView::iter(self, cf, lower, upper)
    }
}

/// Visits the current version of every live key in `bounds`, in key order, until `visit` returns false.
pub(crate) fn scan_latest(
    src: &impl Source,
    bounds: KeyBounds,
    visit: &mut dyn FnMut(KeyValue) -> bool,
) -> Result<()> {
    match bounds {
        KeyBounds::Single(key) => {
            if let Some(v) = src.get(Cf::KvLatest, key)? {
                visit(decode_kv(key, &v));
            }
            Ok(())
        }
        KeyBounds::Range(start, end) => {
            let mut it = src.iter(Cf::KvLatest, start, end);
            while let Some((k, v)) = it.current() {
                if !visit(decode_kv(k, v)) {
                    return Ok(());
                }
                it.advance();
            }
            Ok(it.check()?)
        }
    }
}

/// Visits the version visible at revision `rev` of every key in `bounds` that was live then.
pub(crate) fn scan_history(
    src: &impl Source,
    bounds: KeyBounds,
    rev: i64,
    visit: &mut dyn FnMut(KeyValue) -> bool,
) -> Result<()> {
    let (start, upper) = match bounds {
        // Every version of one key sorts below its escaped form followed by 0xFF bytes.
        KeyBounds::Single(key) => {
            let mut upper = codec::history_key_prefix(key);
            upper.extend_from_slice(&[0xFF; 9]);
            (key, Some(upper))
        }
        KeyBounds::Range(start, end) => (start, end.map(codec::history_key_prefix)),
    };
    let mut it = src.iter(
        Cf::KvHistory,
        &codec::history_key(start, rev),
        upper.as_deref(),
    );
    while let Some((k, v)) = it.current() {
        let (key, key_rev) = codec::decode_history_key(k);
        if key_rev > rev {
            // A version newer than `rev`: jump to this key's version at `rev` (or to the next key).
            let target = codec::history_key(&key, rev);
            it.seek(&target);
            continue;
        }
        if !v.is_empty() && !visit(decode_kv(&key, v)) {
            return Ok(());
        }
        // Skip the older versions of this key.
        let mut next = codec::history_key_prefix(&key);
        next.extend_from_slice(&[0xFF; 8]);
        it.seek(&next);
    }
    Ok(it.check()?)
}

/// The read side of MVCC: cheap to clone, safe to use from any task.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
}

impl Store {
    pub fn new(engine: Engine) -> Store {
        Store { engine }
    }

    /// Executes an etcd Range at a consistent point in time.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult> {
        let view = self.engine.read_view();
        let reader = ViewReader::new(&view)?;
        range::range(&reader, req).inspect(|_| METRICS.record_ops(TxnOps::RANGE))
    }

    /// Executes a read-only txn (see [`is_read_only`]) at a consistent point in time.
    pub fn txn_read_only(&self, req: &TxnRequest) -> Result<TxnResponse> {
        let view = self.engine.read_view();
        let mut reader = ViewReader::new(&view)?;
        write::txn_read_only(&mut reader, req)
            .inspect(|resp| METRICS.record_ops(count_txn(req, resp)))
    }

    /// The current revision (as of the last applied write).
    pub fn current_revision(&self) -> Result<i64> {
        Ok(decode_i64(self.engine.get(Cf::Meta, META_REVISION)?).max(REVISION_INITIAL))
    }

    pub fn compact_revision(&self) -> Result<i64> {
        Ok(decode_i64(
            self.engine.get(Cf::Meta, META_COMPACT_REVISION)?,
        ))
    }

    /// Every lease: (id, granted TTL in seconds), by id.
    pub fn leases(&self) -> Result<Vec<(i64, i64)>> {
        let mut out = vec![];
        let mut it = self.engine.iter(Cf::Lease, b"l", Some(b"m"));
        while let Some((k, v)) = it.current() {
            let id = i64::from_be_bytes(k[1..].try_into().expect("9-byte lease key"));
            out.push((id, decode_i64(Some(v.to_vec()))));
            it.advance();
        }
        it.check()?;
        Ok(out)
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Bytes>> {
        lease_keys(&self.engine, id)
    }
}

/// The keys attached to lease `id`, in key order.
fn lease_keys(engine: &Engine, id: i64) -> Result<Vec<Bytes>> {
    let prefix = codec::lease_attachments_prefix(id);
    let upper = codec::prefix_end(&prefix);
    let mut out = vec![];
    let mut it = engine.iter(Cf::Lease, &prefix, Some(&upper));
    while let Some((k, _)) = it.current() {
        out.push(Bytes::copy_from_slice(&k[prefix.len()..]));
        it.advance();
    }
    it.check()?;
    Ok(out)
}

/// Where [`Store::events`] delivers history: it says which events it wants, then receives them.
pub trait EventSink {
    /// Whether the event of `kind` on `key` at `revision` is wanted: `None` = no; `Some(true)` = yes,
    /// with the previous key-value.
    fn wants(&mut self, revision: i64, kind: EventKind, key: &[u8]) -> Option<bool>;
    /// The event that the last call to `wants` asked for.
    fn event(&mut self, event: Event);
    /// Whether the sink has enough; asked between revisions.
    fn full(&self) -> bool;
}

impl Store {
    /// Replays the events of revisions `from..=to` from history, in order, into `sink`, all from one
    /// consistent view. Stops early at a revision boundary once the sink is full (after at least one
    /// revision). Returns the last revision covered; fails with [`Error::Compacted`] if `from` is
    /// below the compacted revision.
    pub fn events(&self, from: i64, to: i64, sink: &mut dyn EventSink) -> Result<i64> {
        let view = self.engine.read_view();
        let compacted = decode_i64(view.get(Cf::Meta, META_COMPACT_REVISION)?);
        if from < compacted {
            return Err(Error::Compacted);
        }
        let upper = codec::revision_key(to + 1, 0);
        let mut it = view.iter(Cf::KvRevision, &codec::revision_key(from, 0), Some(&upper));
        let mut last = from;
        while let Some((k, v)) = it.current() {
            let (revision, _) = codec::decode_revision_key(k);
            if revision != last && sink.full() {
                return Ok(revision - 1);
            }
            let (kind, key) = codec::decode_revision_value(v);
            if let Some(with_prev) = sink.wants(revision, kind, key) {
                let kv = match kind {
                    EventKind::Put => {
                        let stored = view
                            .get(Cf::KvHistory, &codec::history_key(key, revision))?
                            .expect("every put in the event log has its version in history");
                        decode_kv(key, &stored)
                    }
                    EventKind::Delete => KeyValue {
                        key: Bytes::copy_from_slice(key),
                        mod_revision: revision,
                        ..KeyValue::default()
                    },
                };
                // Like etcd, no previous value when its revision is compacted.
                let mut prev_kv = None;
                if with_prev && revision > compacted {
                    scan_history(&view, KeyBounds::Single(key), revision - 1, &mut |kv| {
                        prev_kv = Some(kv);
                        false
                    })?;
                }
                let event = Event {
                    r#type: match kind {
                        EventKind::Put => EventType::Put,
                        EventKind::Delete => EventType::Delete,
                    } as i32,
                    kv: Some(kv),
                    prev_kv,
                };
                sink.event(event);
            }
            last = revision;
            it.advance();
        }
        it.check()?;
        Ok(to)
    }
}

/// Reads that a range needs: the bounds of valid revisions and the two kinds of scans.
pub(crate) trait KvRead {
    fn current_revision(&self) -> i64;
    fn compact_revision(&self) -> i64;
    fn scan_latest(&self, bounds: KeyBounds, visit: &mut dyn FnMut(KeyValue) -> bool)
        -> Result<()>;
    fn scan_history(
        &self,
        bounds: KeyBounds,
        rev: i64,
        visit: &mut dyn FnMut(KeyValue) -> bool,
    ) -> Result<()>;
}

/// Reads from one consistent engine view; its revision bounds come from the same view.
struct ViewReader<'a> {
    view: &'a ReadView<'a>,
    current: i64,
    compacted: i64,
}

impl<'a> ViewReader<'a> {
    fn new(view: &'a ReadView<'a>) -> Result<ViewReader<'a>> {
        Ok(ViewReader {
            view,
            current: decode_i64(view.get(Cf::Meta, META_REVISION)?).max(REVISION_INITIAL),
            compacted: decode_i64(view.get(Cf::Meta, META_COMPACT_REVISION)?),
        })
    }
}

/// A view serves read-only txns only: their writes are never reached.
impl write::TxnTarget for ViewReader<'_> {
    fn put_request(&mut self, _: &PutRequest) -> Result<PutResponse> {
        unreachable!("a read-only txn has no put")
    }
    fn delete_range_request(&mut self, _: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        unreachable!("a read-only txn has no delete")
    }
}

impl KvRead for ViewReader<'_> {
    fn current_revision(&self) -> i64 {
        self.current
    }
    fn compact_revision(&self) -> i64 {
        self.compacted
    }
    fn scan_latest(
        &self,
        bounds: KeyBounds,
        visit: &mut dyn FnMut(KeyValue) -> bool,
    ) -> Result<()> {
        scan_latest(self.view, bounds, visit)
    }
    fn scan_history(
        &self,
        bounds: KeyBounds,
        rev: i64,
        visit: &mut dyn FnMut(KeyValue) -> bool,
    ) -> Result<()> {
        scan_history(self.view, bounds, rev, visit)
    }
}
