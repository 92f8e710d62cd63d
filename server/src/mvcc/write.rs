//! The write side of MVCC: etcd's Put, DeleteRange, Txn and Compact, one revision per mutating request.
//! Mirrors etcd 3.4 `etcdserver/apply.go` (Put/DeleteRange/Txn/applyTxn/compareToPath/checkRequests)
//! and `mvcc/kvstore_txn.go` (put/delete and their header revisions).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Instant;

use bytes::Bytes;
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::{
    request_op, response_op, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;

use super::codec::{self, key_range, EventKind, KeyBounds};
use super::range::{self, read_revision, scan_at};
use super::{
    decode_i64, Error, KvRead, Result, META_APPLIED_INDEX, META_COMPACT_REVISION, META_REVISION,
    REVISION_INITIAL,
};
use crate::engine::{Batch, Cf, Durability, Engine};
use crate::failpoints;
use crate::metrics::{count_txn, TxnOps, METRICS};

/// The single writer of MVCC state. Owned by the apply worker; every method applies one committed
/// raft entry and records its index as applied.
///
/// Puts, deletes, txns and lease revokes are *deferred*: their writes collect in one pending batch
/// that [`Writer::flush`] writes to the engine, with the last applied index, in one atomic write
/// (apply flushes once per committed batch: one engine write, one WAL record and one meta update
/// for many requests). Until then only the writer sees them (through its overlay of the latest
/// versions); every other method flushes first and writes at once.
///
/// **Invariant:** the engine always holds a prefix of the applied requests together with the
/// index of the last one, so a crash loses no more than raft replays.
pub struct Writer {
    engine: Engine,
    revision: i64,
    /// -1 until the first compaction (etcd's `compactMainRev` starts at -1).
    compact_revision: i64,
    /// The events of the last committed request, for the watch hub.
    events: Vec<Event>,
    pending: Pending,
    /// The revision the engine holds (`revision` once flushed).
    flushed_revision: i64,
}

/// Deferred writes of applied requests (see [`Writer`]).
struct Pending {
    batch: Batch,
    /// The latest version of every key written since the last flush (`None`: deleted): reads of
    /// the keyspace see it before the engine.
    latest: BTreeMap<Vec<u8>, Option<KeyValue>>,
    /// The index of the last entry applied since the last flush.
    applied: Option<u64>,
}

/// Writes one state-machine batch, unsynced (the raft log replays it), timed as etcd times its
/// backend commits.
fn commit_batch(engine: &Engine, batch: Batch) -> Result<()> {
    let start = Instant::now();
    engine.write(batch, Durability::Buffered)?;
    METRICS
        .backend_commit_seconds
        .observe(start.elapsed().as_secs_f64());
    Ok(())
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

impl Writer {
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn open(engine: Engine) -> Result<Writer> {
        let revision = decode_i64(engine.get(Cf::Meta, META_REVISION)?).max(REVISION_INITIAL);
        let compact_revision = engine
            .get(Cf::Meta, META_COMPACT_REVISION)?
            .map_or(-1, |b| decode_i64(Some(b)));
        Ok(Writer {
            pending: Pending {
                batch: engine.batch(),
                latest: BTreeMap::new(),
                applied: None,
            },
            engine,
            revision,
            compact_revision,
            events: vec![],
            flushed_revision: revision,
        })
    }

    /// Writes the deferred requests, the revision and the last applied index to the engine in one
    /// atomic write. Readers of the engine (and so the watch hub's catch-up and linearizable reads)
    /// see the requests only from here on.
    pub fn flush(&mut self) -> Result<()> {
        let Some(applied) = self.pending.applied.take() else {
            assert!(
                self.pending.batch.is_empty(),
                "pending writes have an index"
            );
            return Ok(());
        };
        let mut batch = std::mem::replace(&mut self.pending.batch, self.engine.batch());
        self.pending.latest.clear();
        if self.revision != self.flushed_revision {
            batch.put(Cf::Meta, META_REVISION, &self.revision.to_be_bytes());
        }
        batch.put(
            Cf::Meta,
            META_APPLIED_INDEX,
            &(applied as i64).to_be_bytes(),
        );
        commit_batch(&self.engine, batch)?;
        self.flushed_revision = self.revision;
        Ok(())
    }

    /// The size of the deferred writes, in bytes (apply flushes past a bound).
    pub fn pending_bytes(&self) -> usize {
        self.pending.batch.size_bytes()
    }

    /// The revision of the last applied write.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The events of the last request that changed the keyspace, in sub-revision order (each with its
    /// previous key-value, if the key existed); empty afterwards.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The raft index of the last entry this store applied (0 on a new store), as flushed.
    pub fn applied_index(&self) -> Result<u64> {
        Ok(decode_i64(self.engine.get(Cf::Meta, META_APPLIED_INDEX)?) as u64)
    }

    /// Records that entry `applied` is applied without changing the keyspace (no-ops, failed
    /// requests); deferred like a put.
    pub fn set_applied(&mut self, applied: u64) {
        self.pending.applied = Some(applied);
    }

    /// Writes `batch` (state outside the keyspace, such as membership) together with `applied`,
    /// after the deferred writes.
    pub fn commit_with_applied(&mut self, mut batch: Batch, applied: u64) -> Result<()> {
        self.flush()?;
        batch.put(
            Cf::Meta,
            META_APPLIED_INDEX,
            &(applied as i64).to_be_bytes(),
        );
        commit_batch(&self.engine, batch)
    }

    /// Runs `op` as one request on top of the deferred writes and defers its own with `applied`.
    /// A request fails only before it writes (its checks come first), so a failed one defers
    /// nothing but `applied`.
    fn execute<R>(
        &mut self,
        applied: u64,
        op: impl FnOnce(&mut WriteTxn) -> Result<R>,
    ) -> Result<R> {
        let writes_before = self.pending.batch.len();
        let reused = failpoints::active(failpoints::Bug::ReuseRevision)
            && applied.is_multiple_of(20)
            && self.revision > 1;
        let mut txn = WriteTxn {
            engine: &self.engine,
            batch: &mut self.pending.batch,
            begin: self.revision - i64::from(reused),
            compacted: self.compact_revision,
            sub: 0,
            overlay: &mut self.pending.latest,
            events: vec![],
        };
        let result = op(&mut txn);
        let (revision, events) = (txn.current_revision(), std::mem::take(&mut txn.events));
        match &result {
            Ok(_) => {
                self.revision = revision;
                self.events = events;
            }
            Err(Error::Engine(_)) => {}
            Err(_) => assert_eq!(
                self.pending.batch.len(),
                writes_before,
                "a failed request wrote nothing"
            ),
        }
        self.pending.applied = Some(applied);
        result
    }

    pub fn put(&mut self, req: &PutRequest, applied: u64) -> Result<PutResponse> {
        self.execute(applied, |txn| {
            check_put(txn, req)?;
            txn.put_request(req)
        })
        .inspect(|_| METRICS.record_ops(TxnOps::PUT))
    }

    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
        applied: u64,
    ) -> Result<DeleteRangeResponse> {
        self.execute(applied, |txn| txn.delete_range_request(req))
            .inspect(|_| METRICS.record_ops(TxnOps::DELETE))
    }

    pub fn txn(&mut self, req: &TxnRequest, applied: u64) -> Result<TxnResponse> {
        if reads_history(req) {
            // History of deferred revisions is not in the engine yet.
            self.flush()?;
        }
        self.execute(applied, |txn| {
            let path = compare_path(txn, req)?;
            check_branches(req, &path, &mut |op| match op {
                request_op::Request::RequestPut(put) => check_put(txn, put),
                _ => Ok(()),
            })?;
            run_txn(txn, req, &path)
        })
        .inspect(|resp| METRICS.record_ops(count_txn(req, resp)))
    }

    /// Grants lease `id` with `ttl` seconds (already raised to the minimum by the caller).
    pub fn lease_grant(&mut self, id: i64, ttl: i64, applied: u64) -> Result<()> {
        self.flush()?;
        if lease_exists(&self.engine, id)? {
            self.set_applied(applied);
            return Err(Error::LeaseExists);
        }
        let mut batch = self.engine.batch();
        batch.put(Cf::Lease, &codec::lease_key(id), &ttl.to_be_bytes());
        self.commit_with_applied(batch, applied)
    }

    /// Revokes lease `id`: deletes every key attached to it, all at one new revision (none if it has
    /// no keys), and the lease. Returns the store's revision afterwards.
    pub fn lease_revoke(&mut self, id: i64, applied: u64) -> Result<i64> {
        // The lease's attachments are read from the engine.
        self.flush()?;
        self.execute(applied, |txn| {
            if !lease_exists(txn.engine, id)? {
                return Err(Error::LeaseNotFound);
            }
            let mut deletes = 0;
            for key in super::lease_keys(txn.engine, id)? {
                if let Some(kv) = txn.get_latest(&key)? {
                    txn.delete(&kv);
                    deletes += 1;
                }
            }
            txn.batch.delete(Cf::Lease, &codec::lease_key(id));
            Ok(deletes)
        })
        .map(|deletes| {
            METRICS.record_ops(TxnOps {
                deletes,
                ..TxnOps::default()
            })
        })?;
        Ok(self.revision)
    }

    /// Marks history below `revision` as compacted (reads of it fail from now on). The caller hands
    /// `revision` to the [`super::Compactor`], which removes the history physically.
    pub fn compact(&mut self, revision: i64, applied: u64) -> Result<CompactionResponse> {
        self.flush()?;
        if revision <= self.compact_revision {
            self.set_applied(applied);
            return Err(Error::Compacted);
        }
        if revision > self.revision {
            self.set_applied(applied);
            return Err(Error::FutureRevision);
        }
        let mut batch = self.engine.batch();
        batch.put(Cf::Meta, META_COMPACT_REVISION, &revision.to_be_bytes());
        batch.put(
            Cf::Meta,
            META_APPLIED_INDEX,
            &(applied as i64).to_be_bytes(),
        );
        commit_batch(&self.engine, batch)?;
        self.compact_revision = revision;
        Ok(CompactionResponse {
            header: header(self.revision),
        })
    }

    /// Offline, on a store restored from a backup: raises the revision by `by` and marks the new
    /// revision compacted (etcdutl `snapshot restore --bump-revision N --mark-compacted`, which it
    /// only accepts together), so that no revision a client saw before is reused and watchers from
    /// older revisions are told `compacted`. The compactor removes the old history at start.
    pub fn bump_revision(&mut self, by: i64) -> Result<i64> {
        assert!(by > 0, "a bump raises the revision");
        self.flush()?;
        let revision = self.revision + by;
        let mut batch = self.engine.batch();
        batch.put(Cf::Meta, META_REVISION, &revision.to_be_bytes());
        batch.put(Cf::Meta, META_COMPACT_REVISION, &revision.to_be_bytes());
        self.engine.write(batch, Durability::Buffered)?;
        self.revision = revision;
        self.flushed_revision = revision;
        self.compact_revision = revision;
        Ok(revision)
    }
}

/// What the ops of a txn run against: every target reads; only a write txn writes.
pub(super) trait TxnTarget: KvRead {
    fn put_request(&mut self, req: &PutRequest) -> Result<PutResponse>;
    fn delete_range_request(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse>;
}

impl TxnTarget for WriteTxn<'_> {
    fn put_request(&mut self, req: &PutRequest) -> Result<PutResponse> {
        WriteTxn::put_request(self, req)
    }
    fn delete_range_request(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        WriteTxn::delete_range_request(self, req)
    }
}

/// Executes a txn that [`is_read_only`] against a reader whose writes are never called
/// (etcd serves read-only txns without raft).
pub(super) fn txn_read_only(reader: &mut dyn TxnTarget, req: &TxnRequest) -> Result<TxnResponse> {
    assert!(is_read_only(req), "only read-only txns run outside apply");
    let path = compare_path(reader, req)?;
    run_txn(reader, req, &path)
}

/// The checks every txn passes before it runs (etcd `checkRequestRange`), then its execution; the
/// response header holds the revision after the txn.
fn run_txn(target: &mut dyn TxnTarget, req: &TxnRequest, path: &[bool]) -> Result<TxnResponse> {
    check_branches(req, path, &mut |op| match op {
        request_op::Request::RequestRange(r) if r.revision != 0 => {
            read_revision(&*target, r.revision).map(|_| ())
        }
        _ => Ok(()),
    })?;
    let mut resp = execute_txn(target, req, path)?;
    resp.header = header(target.current_revision());
    Ok(resp)
}

fn range_response(reader: &dyn KvRead, req: &RangeRequest) -> Result<RangeResponse> {
    let r = range::range(reader, req)?;
    Ok(RangeResponse {
        header: header(r.revision),
        kvs: r.kvs,
        more: r.more,
        count: r.count,
    })
}

/// etcd `applyTxn`: runs the branches `path` selects, in order.
fn execute_txn(target: &mut dyn TxnTarget, req: &TxnRequest, path: &[bool]) -> Result<TxnResponse> {
    fn walk(t: &mut dyn TxnTarget, req: &TxnRequest, path: &mut &[bool]) -> Result<TxnResponse> {
        let succeeded = path[0];
        *path = &path[1..];
        let ops: &[RequestOp] = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => Some(
                    response_op::Response::ResponseRange(range_response(&*t, r)?),
                ),
                Some(request_op::Request::RequestPut(p)) => {
                    Some(response_op::Response::ResponsePut(t.put_request(p)?))
                }
                Some(request_op::Request::RequestDeleteRange(d)) => Some(
                    response_op::Response::ResponseDeleteRange(t.delete_range_request(d)?),
                ),
                Some(request_op::Request::RequestTxn(n)) => {
                    Some(response_op::Response::ResponseTxn(walk(t, n, path)?))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        })
    }
    let mut path = path;
    walk(target, req, &mut path)
}

/// etcd `checkRequestPut`: ignore_* needs an existing key; a lease must exist.
fn check_put(txn: &WriteTxn, req: &PutRequest) -> Result<()> {
    if (req.ignore_value || req.ignore_lease) && txn.get_latest(&req.key)?.is_none() {
        return Err(Error::KeyNotFound);
    }
    if req.lease != 0 && !lease_exists(txn.engine, req.lease)? {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

fn lease_exists(engine: &Engine, id: i64) -> Result<bool> {
    Ok(engine.get(Cf::Lease, &codec::lease_key(id))?.is_some())
}

/// Whether a range of the txn, in either branch or a nested txn, reads at an explicit revision.
fn reads_history(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.revision != 0,
            Some(request_op::Request::RequestTxn(t)) => reads_history(t),
            _ => false,
        })
}

/// Whether every op of the txn, in both branches and nested txns, is a range.
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => is_read_only(t),
            Some(_) => false,
        })
}

/// etcd `compareToPath`: every compare of the txn tree that will run, evaluated up front against the
/// state before the txn, in depth-first order of the branches taken.
fn compare_path(reader: &dyn KvRead, req: &TxnRequest) -> Result<Vec<bool>> {
    let mut path = vec![];
    fn walk(reader: &dyn KvRead, req: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
        let mut ok = true;
        for c in &req.compare {
            if !compare(reader, c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                walk(reader, t, path)?;
            }
        }
        Ok(())
    }
    walk(reader, req, &mut path)?;
    Ok(path)
}

/// Calls `check` on every non-txn op of the branches `path` selects.
fn check_branches(
    req: &TxnRequest,
    path: &[bool],
    check: &mut dyn FnMut(&request_op::Request) -> Result<()>,
) -> Result<()> {
    fn walk(
        req: &TxnRequest,
        path: &mut &[bool],
        check: &mut dyn FnMut(&request_op::Request) -> Result<()>,
    ) -> Result<()> {
        let ops = if path[0] { &req.success } else { &req.failure };
        *path = &path[1..];
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestTxn(t)) => walk(t, path, check)?,
                Some(other) => check(other)?,
                None => {}
            }
        }
        Ok(())
    }
    let mut path = path;
    walk(req, &mut path, check)
}

/// etcd `applyCompare`: every key in the compare's range must satisfy it; a missing key compares as
/// a zero KeyValue, except that VALUE compares on missing keys always fail.
fn compare(reader: &dyn KvRead, c: &Compare) -> Result<bool> {
    let Some(bounds) = key_range(&c.key, &c.range_end) else {
        return Ok(zero_compare(c));
    };
    let mut seen = false;
    let mut all = true;
    scan_at(reader, bounds, reader.current_revision(), &mut |kv| {
        seen = true;
        all = compare_kv(c, &kv);
        all
    })?;
    Ok(if seen { all } else { zero_compare(c) })
}

fn zero_compare(c: &Compare) -> bool {
    c.target() != CompareTarget::Value && compare_kv(c, &KeyValue::default())
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let int = |f: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(f).unwrap_or(0);
    let ord = match c.target() {
        CompareTarget::Value => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(v)
        }
        CompareTarget::Version => kv.version.cmp(&int(|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Create => kv.create_revision.cmp(&int(|t| match t {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Mod => kv.mod_revision.cmp(&int(|t| match t {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Lease => kv.lease.cmp(&int(|t| match t {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
    };
    match c.result() {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

/// One mutating request in progress: writes go to the writer's pending batch, and reads see them
/// (and the deferred requests' writes) through an overlay of the keys written so far (etcd: reads
/// inside a txn see its earlier writes).
struct WriteTxn<'a> {
    engine: &'a Engine,
    batch: &'a mut Batch,
    /// The revision before this request.
    begin: i64,
    compacted: i64,
    /// The next sub-revision; also the number of changes so far.
    sub: i64,
    /// Keys written by this request and the deferred ones: `None` = deleted.
    overlay: &'a mut BTreeMap<Vec<u8>, Option<KeyValue>>,
    /// This request's changes as watch events.
    events: Vec<Event>,
}

impl WriteTxn<'_> {
    fn revision(&self) -> i64 {
        self.begin + 1
    }

    fn get_latest(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        if let Some(entry) = self.overlay.get(key) {
            return Ok(entry.clone());
        }
        let mut found = None;
        super::scan_latest(self.engine, KeyBounds::Single(key), &mut |kv| {
            found = Some(kv);
            false
        })?;
        Ok(found)
    }

    fn put(&mut self, key: &[u8], value: Bytes, lease: i64) -> Result<KeyValue> {
        let rev = self.revision();
        let prev = self.get_latest(key)?;
        let (create_revision, version) = match &prev {
            Some(prev) => (prev.create_revision, prev.version + 1),
            None => (rev, 1),
        };
        let mut kv = KeyValue {
            key: Bytes::new(),
            create_revision,
            mod_revision: rev,
            version,
            value,
            lease,
        };
        let stored = kv.encode_to_vec();
        self.batch.put(Cf::KvLatest, key, &stored);
        let prev_lease = prev.as_ref().map_or(0, |p| p.lease);
        if prev_lease != lease {
            self.detach(prev_lease, key);
            if lease != 0 {
                self.batch
                    .put(Cf::Lease, &codec::lease_attachment_key(lease, key), &[]);
            }
        }
        self.batch
            .put(Cf::KvHistory, &codec::history_key(key, rev), &stored);
        self.record(EventKind::Put, key);
        kv.key = Bytes::copy_from_slice(key);
        self.overlay.insert(key.to_vec(), Some(kv.clone()));
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: prev,
        });
        Ok(kv)
    }

    fn delete(&mut self, prev: &KeyValue) {
        let rev = self.revision();
        let key = &prev.key;
        self.batch.delete(Cf::KvLatest, key);
        self.batch
            .put(Cf::KvHistory, &codec::history_key(key, rev), &[]);
        self.record(EventKind::Delete, key);
        self.detach(prev.lease, key);
        self.overlay.insert(key.to_vec(), None);
        self.events.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.clone(),
                mod_revision: rev,
                ..KeyValue::default()
            }),
            prev_kv: Some(prev.clone()),
        });
    }

    fn detach(&mut self, lease: i64, key: &[u8]) {
        if lease != 0 {
            self.batch
                .delete(Cf::Lease, &codec::lease_attachment_key(lease, key));
        }
    }

    fn record(&mut self, kind: EventKind, key: &[u8]) {
        let rev_key = codec::revision_key(self.revision(), self.sub);
        self.batch
            .put(Cf::KvRevision, &rev_key, &codec::revision_value(kind, key));
        self.sub += 1;
    }

    fn put_request(&mut self, req: &PutRequest) -> Result<PutResponse> {
        let prev = if req.ignore_value || req.ignore_lease || req.prev_kv {
            self.get_latest(&req.key)?
        } else {
            None
        };
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        self.put(&req.key, value, lease)?;
        Ok(PutResponse {
            header: header(self.revision()),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn delete_range_request(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let mut doomed = vec![];
        if let Some(bounds) = key_range(&req.key, &req.range_end) {
            self.scan_latest(bounds, &mut |kv| {
                doomed.push(kv);
                true
            })?;
        }
        for kv in &doomed {
            self.delete(kv);
        }
        Ok(DeleteRangeResponse {
            header: header(self.current_revision()),
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { vec![] },
        })
    }
}

impl KvRead for WriteTxn<'_> {
    fn current_revision(&self) -> i64 {
        if self.sub > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }

    fn compact_revision(&self) -> i64 {
        self.compacted
    }

    fn scan_latest(
        &self,
        bounds: KeyBounds,
        visit: &mut dyn FnMut(KeyValue) -> bool,
    ) -> Result<()> {
        if self.overlay.is_empty() {
            return super::scan_latest(self.engine, bounds, visit);
        }
        let (start, end) = match bounds {
            KeyBounds::Single(key) => {
                if let Some(kv) = self.get_latest(key)? {
                    visit(kv);
                }
                return Ok(());
            }
            KeyBounds::Range(start, end) => (start, end),
        };
        // Merge the stored keys with this request's writes, which take precedence.
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut pending = self
            .overlay
            .range::<[u8], _>((Bound::Included(start), upper))
            .peekable();
        let mut stopped = false;
        super::scan_latest(self.engine, bounds, &mut |kv| {
            while let Some((k, v)) = pending.next_if(|(k, _)| k.as_slice() < kv.key.as_ref()) {
                debug_assert!(k.as_slice() < kv.key.as_ref());
                if let Some(v) = v {
                    if !visit(v.clone()) {
                        stopped = true;
                        return false;
                    }
                }
            }
            let own = pending.next_if(|(k, _)| k.as_slice() == kv.key.as_ref());
            let keep_going = match own {
                Some((_, Some(v))) => visit(v.clone()),
                Some((_, None)) => true,
                None => visit(kv),
            };
            stopped = !keep_going;
            keep_going
        })?;
        if !stopped {
            for (_, v) in pending {
                if let Some(v) = v {
                    if !visit(v.clone()) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn scan_history(
        &self,
        bounds: KeyBounds,
        rev: i64,
        visit: &mut dyn FnMut(KeyValue) -> bool,
    ) -> Result<()> {
        debug_assert!(
            rev <= self.begin,
            "history reads never see this request's writes"
        );
        super::scan_history(self.engine, bounds, rev, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Store;

    fn put(w: &mut Writer, key: &str, lease: i64, applied: u64) -> Result<PutResponse> {
        let req = PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            lease,
            ..PutRequest::default()
        };
        w.put(&req, applied)
    }

    /// Attachments follow every write: a put with a lease attaches, a put without one or a delete
    /// detaches, and a revoke deletes exactly the keys still attached, at one revision.
    #[test]
    fn lease_attachments_follow_writes_and_revoke_deletes_them_at_one_revision() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let store = Store::new(engine.clone());
        let mut w = Writer::open(engine).unwrap();
        assert!(matches!(put(&mut w, "a", 5, 1), Err(Error::LeaseNotFound)));
        w.lease_grant(5, 10, 2).unwrap();
        assert!(matches!(w.lease_grant(5, 10, 3), Err(Error::LeaseExists)));
        for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
            put(&mut w, key, 5, 4 + i as u64).unwrap();
        }
        put(&mut w, "a", 0, 8).unwrap();
        w.delete_range(
            &DeleteRangeRequest {
                key: Bytes::from_static(b"b"),
                ..DeleteRangeRequest::default()
            },
            9,
        )
        .unwrap();
        w.take_events();
        w.flush().unwrap();
        assert_eq!(store.lease_keys(5).unwrap(), vec!["c", "d"]);
        assert_eq!(store.leases().unwrap(), vec![(5, 10)]);
        let before = w.revision();
        assert_eq!(w.lease_revoke(5, 10).unwrap(), before + 1);
        let events = w.take_events();
        let deleted: Vec<&[u8]> = events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().key.as_ref())
            .collect();
        assert_eq!(deleted, vec![b"c", b"d"]);
        assert!(events
            .iter()
            .all(|e| e.kv.as_ref().unwrap().mod_revision == before + 1));
        w.flush().unwrap();
        assert!(store.lease_keys(5).unwrap().is_empty());
        assert!(store.leases().unwrap().is_empty());
        assert!(matches!(w.lease_revoke(5, 11), Err(Error::LeaseNotFound)));
        // A lease without keys is revoked without a new revision.
        w.lease_grant(6, 10, 12).unwrap();
        assert_eq!(w.lease_revoke(6, 13).unwrap(), before + 1);
    }
}
