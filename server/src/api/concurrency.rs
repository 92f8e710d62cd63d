//! `v3lockpb.Lock` and `v3electionpb.Election`: etcd's server-side wrappers of the clientv3
//! `concurrency` recipes (etcd: `etcdserver/api/v3lock`, `v3election`, `clientv3/concurrency`), run
//! here on the member's own KV, leases and watch hub, with the same key layout (`<name>/<lease hex>`)
//! so that these services, `etcdctl lock|elect` and Go clients contend for the same locks.
//!
//! A waiter owns the lock (or leads) once every key of the prefix created before its own is
//! deleted; it waits on those deletions with watches from the hub. A call abandoned while waiting
//! (client gone) deletes its key, as the Go recipe does on cancellation.

use crate::auth::{Access, AuthError};
use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::cairnpb::internal_request::Request;
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::{Event, KeyValue};
use cairn_proto::v3electionpb::election_server::Election;
use cairn_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use cairn_proto::v3lockpb::lock_server::Lock;
use cairn_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response, Status};

use super::error::ApiError;
use super::Core;
use crate::apply::Applied;
use crate::mvcc;
use crate::raft::RaftError;
use crate::watch::{Bounds, End, WatchSpec, Work};

/// etcd's election errors: plain Go errors, so gRPC code Unknown with these texts.
const NO_LEADER: &str = "election: no leader";
const NOT_LEADER: &str = "election: not leader";
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
/// Observe responses buffered per stream.
const OBSERVE_RESPONSES_BUFFERED: usize = 16;

/// One watcher of the hub, used by the server itself.
struct HubWatch {
    core: Arc<Core>,
    stream: u64,
    wake: Arc<Notify>,
}

impl HubWatch {
    fn new(core: &Arc<Core>, bounds: Bounds, start: i64) -> HubWatch {
        let (stream, wake) = core.watch_hub.open_stream();
        let spec = WatchSpec {
            bounds,
            no_put: false,
            no_delete: false,
            prev_kv: false,
        };
        core.watch_hub.add(stream, 0, spec, start);
        HubWatch {
            core: core.clone(),
            stream,
            wake,
        }
    }

    /// The next events, in revision order (never empty).
    async fn next(&mut self) -> Result<Vec<Event>, Status> {
        let hub = &self.core.watch_hub;
        loop {
            match hub.take(self.stream) {
                Work::Deliver { deliveries, .. } => {
                    let events: Vec<Event> = deliveries
                        .into_iter()
                        .flat_map(|d| d.events)
                        .flat_map(|(_, events)| events)
                        .collect();
                    if !events.is_empty() {
                        return Ok(events);
                    }
                }
                Work::CatchUp(plan) => {
                    let store = self.core.store.clone();
                    let (plan, step) = tokio::task::spawn_blocking(move || {
                        let step = plan.run(&store);
                        (plan, step)
                    })
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                    let step = step.map_err(ApiError::from)?;
                    if !hub.still_valid(&plan) {
                        continue;
                    }
                    if !step.compacted.is_empty() {
                        return Err(ApiError::from(mvcc::Error::Compacted).into());
                    }
                    hub.caught_up(self.stream, &step.advanced, &step.compacted);
                    let events: Vec<Event> = step.events.into_iter().flat_map(|(_, e)| e).collect();
                    if !events.is_empty() {
                        return Ok(events);
                    }
                }
                Work::Idle { .. } | Work::Wait => self.wake.notified().await,
                Work::Closed => return Err(ApiError::from(RaftError::Stopped).into()),
            }
        }
    }
}

impl Drop for HubWatch {
    fn drop(&mut self) {
        self.core.watch_hub.close_stream(self.stream);
    }
}

/// Deletes a key unless disarmed: the cleanup of a lock or campaign whose caller went away.
struct Abandon {
    core: Arc<Core>,
    key: Option<Bytes>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let core = self.core.clone();
            tokio::spawn(async move {
                let _ = core.delete_key(key).await;
            });
        }
    }
}

fn prefix_range(prefix: &[u8], order: SortOrder) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: mvcc::codec::prefix_end(prefix).into(),
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        ..RangeRequest::default()
    }
}

fn create_revision_is(key: &Bytes, revision: i64) -> Compare {
    Compare {
        key: key.clone(),
        target: CompareTarget::Create as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::CreateRevision(revision)),
        ..Compare::default()
    }
}

fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn put(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    op(request_op::Request::RequestPut(PutRequest {
        key: key.clone(),
        value,
        lease,
        ..PutRequest::default()
    }))
}

fn get(key: &Bytes) -> RequestOp {
    op(request_op::Request::RequestRange(RangeRequest {
        key: key.clone(),
        ..RangeRequest::default()
    }))
}

/// The kvs of the `i`th response of a txn, which must be a range.
fn range_kvs(resp: &TxnResponse, i: usize) -> &[KeyValue] {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

/// `<prefix><lease in lower-case hex>`, the recipes' key for a session's lease.
fn session_key(prefix: &[u8], lease: i64) -> Bytes {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key.into()
}

fn with_slash(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

impl Core {
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, ApiError> {
        match self.propose(Request::Txn(req)).await? {
            Applied::Txn(mut resp) => {
                resp.header = self.header(resp.header.map_or(0, |h| h.revision));
                Ok(resp)
            }
            other => Err(ApiError::Internal(format!("apply answered with {other:?}"))),
        }
    }

    async fn linearizable_range(&self, req: RangeRequest) -> Result<RangeResponse, ApiError> {
        self.linearizable_barrier().await?;
        let r = self.store.range(&req)?;
        Ok(RangeResponse {
            header: self.header(r.revision),
            kvs: r.kvs,
            more: r.more,
            count: r.count,
        })
    }

    async fn delete_key(&self, key: Bytes) -> Result<Option<ResponseHeader>, ApiError> {
        let req = DeleteRangeRequest {
            key,
            ..DeleteRangeRequest::default()
        };
        match self.propose(Request::DeleteRange(req)).await? {
            Applied::DeleteRange(resp) => Ok(self.header(resp.header.map_or(0, |h| h.revision))),
            other => Err(ApiError::Internal(format!("apply answered with {other:?}"))),
        }
    }
}

/// Waits until no key of `prefix` created at or below `max_create_revision` is left (etcd
/// `waitDeletes`); returns the header of the last read.
async fn wait_deletes(
    core: &Arc<Core>,
    prefix: &[u8],
    max_create_revision: i64,
) -> Result<Option<ResponseHeader>, Status> {
    loop {
        let mut req = prefix_range(prefix, SortOrder::Descend);
        req.max_create_revision = max_create_revision;
        let resp = core.linearizable_range(req).await?;
        let Some(last) = resp.kvs.first() else {
            return Ok(resp.header);
        };
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        let mut watch = HubWatch::new(core, Bounds::Key(last.key.to_vec()), revision);
        while !watch
            .next()
            .await?
            .iter()
            .any(|e| e.r#type() == EventType::Delete)
        {}
    }
}

pub struct LockService {
    core: Arc<Core>,
}

impl LockService {
    pub fn new(core: Arc<Core>) -> LockService {
        LockService { core }
    }
}

/// With auth on, a lock or election `name` needs READ and WRITE on every key under `name/` (what
/// the recipe's txns, ranges and watches touch as the caller in etcd).
fn permit_name<T>(core: &Core, req: &GrpcRequest<T>, name: &[u8]) -> Result<(), Status> {
    let caller = core.caller(req.metadata())?;
    Ok(core.permit_prefix(&caller, &with_slash(name))?)
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: GrpcRequest<LockRequest>) -> Result<Response<LockResponse>, Status> {
        permit_name(&self.core, &req, &req.get_ref().name)?;
        let req = req.into_inner();
        let core = &self.core;
        let prefix = with_slash(&req.name);
        let key = session_key(&prefix, req.lease);
        let owner = prefix_range(&prefix, SortOrder::Ascend);
        let txn = TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![
                put(&key, Bytes::new(), req.lease),
                op(request_op::Request::RequestRange(owner.clone())),
            ],
            failure: vec![get(&key), op(request_op::Request::RequestRange(owner))],
        };
        let resp = core.txn(txn).await?;
        let mut header = resp.header;
        let mine = if resp.succeeded {
            header.as_ref().map_or(0, |h| h.revision)
        } else {
            range_kvs(&resp, 0)
                .first()
                .map_or(0, |kv| kv.create_revision)
        };
        let owned = range_kvs(&resp, 1)
            .first()
            .is_none_or(|kv| kv.create_revision == mine);
        if !owned {
            let mut abandon = Abandon {
                core: core.clone(),
                key: Some(key.clone()),
            };
            header = wait_deletes(core, &prefix, mine - 1).await?;
            abandon.key = None;
        }
        Ok(Response::new(LockResponse { header, key }))
    }

    async fn unlock(
        &self,
        req: GrpcRequest<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let caller = self.core.caller(req.metadata())?;
        let key = req.into_inner().key;
        self.core.permit(&caller, |s, u| {
            s.permits(u, Access::Write, &key, &[])
                .then_some(())
                .ok_or(AuthError::PermissionDenied)
        })?;
        let header = self.core.delete_key(key).await?;
        Ok(Response::new(UnlockResponse { header }))
    }
}

pub struct ElectionService {
    core: Arc<Core>,
}

impl ElectionService {
    pub fn new(core: Arc<Core>) -> ElectionService {
        ElectionService { core }
    }

    /// The current leader's key-value: the oldest key of the election's prefix.
    async fn leader_kv(&self, name: &[u8]) -> Result<(Option<ResponseHeader>, KeyValue), Status> {
        let req = prefix_range(&with_slash(name), SortOrder::Ascend);
        let resp = self.core.linearizable_range(req).await?;
        match resp.kvs.into_iter().next() {
            Some(kv) => Ok((resp.header, kv)),
            None => Err(Status::unknown(NO_LEADER)),
        }
    }
}

fn leader_key(leader: Option<LeaderKey>) -> Result<LeaderKey, Status> {
    leader.ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))
}

/// Puts `value` on the leader key if this is still the campaign that created it.
async fn proclaim(core: &Core, leader: &LeaderKey, value: Bytes) -> Result<TxnResponse, Status> {
    let key = Bytes::copy_from_slice(&leader.key);
    let txn = TxnRequest {
        compare: vec![create_revision_is(&key, leader.rev)],
        success: vec![put(&key, value, leader.lease)],
        failure: vec![],
    };
    let resp = core.txn(txn).await?;
    if !resp.succeeded {
        return Err(Status::unknown(NOT_LEADER));
    }
    Ok(resp)
}

/// Deletes the leader key if this is still the campaign that created it.
async fn resign(core: &Core, leader: &LeaderKey) -> Result<TxnResponse, ApiError> {
    let key = Bytes::copy_from_slice(&leader.key);
    let txn = TxnRequest {
        compare: vec![create_revision_is(&key, leader.rev)],
        success: vec![op(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key,
                ..DeleteRangeRequest::default()
            },
        ))],
        failure: vec![],
    };
    core.txn(txn).await
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: GrpcRequest<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        permit_name(&self.core, &req, &req.get_ref().name)?;
        let req = req.into_inner();
        let core = &self.core;
        let prefix = with_slash(&req.name);
        let key = session_key(&prefix, req.lease);
        let txn = TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![put(&key, req.value.clone(), req.lease)],
            failure: vec![get(&key)],
        };
        let resp = core.txn(txn).await?;
        let mut leader = LeaderKey {
            name: req.name.clone(),
            key: key.clone(),
            rev: resp.header.as_ref().map_or(0, |h| h.revision),
            lease: req.lease,
        };
        let mut abandon = Abandon {
            core: core.clone(),
            key: Some(key),
        };
        if !resp.succeeded {
            let existing = range_kvs(&resp, 0).first().cloned().unwrap_or_default();
            leader.rev = existing.create_revision;
            if existing.value != req.value {
                proclaim(core, &leader, req.value).await?;
            }
        }
        wait_deletes(core, &prefix, leader.rev - 1).await?;
        abandon.key = None;
        Ok(Response::new(CampaignResponse {
            header: resp.header,
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        req: GrpcRequest<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let name = req.get_ref().leader.as_ref().map(|l| l.name.clone());
        permit_name(&self.core, &req, &name.unwrap_or_default())?;
        let req = req.into_inner();
        let leader = leader_key(req.leader)?;
        let resp = proclaim(&self.core, &leader, req.value).await?;
        Ok(Response::new(ProclaimResponse {
            header: resp.header,
        }))
    }

    async fn leader(
        &self,
        req: GrpcRequest<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        permit_name(&self.core, &req, &req.get_ref().name)?;
        let (header, kv) = self.leader_kv(&req.into_inner().name).await?;
        Ok(Response::new(LeaderResponse {
            header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    async fn observe(
        &self,
        req: GrpcRequest<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        permit_name(&self.core, &req, &req.get_ref().name)?;
        let name = req.into_inner().name;
        let (tx, rx) = mpsc::channel(OBSERVE_RESPONSES_BUFFERED);
        let service = ElectionService::new(self.core.clone());
        tokio::spawn(async move {
            tokio::select! {
                result = service.observe_into(&name, &tx) => {
                    if let Err(status) = result {
                        let _ = tx.send(Err(status)).await;
                    }
                }
                _ = tx.closed() => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resign(
        &self,
        req: GrpcRequest<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let name = req.get_ref().leader.as_ref().map(|l| l.name.clone());
        permit_name(&self.core, &req, &name.unwrap_or_default())?;
        let leader = leader_key(req.into_inner().leader)?;
        let resp = resign(&self.core, &leader).await?;
        Ok(Response::new(ResignResponse {
            header: resp.header,
        }))
    }
}

impl ElectionService {
    /// Sends the leader, then every change of its value, then the next leader, … (etcd
    /// `Election.Observe`).
    async fn observe_into(
        &self,
        name: &[u8],
        tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
    ) -> Result<(), Status> {
        let core = &self.core;
        let prefix = with_slash(name);
        loop {
            let req = prefix_range(&prefix, SortOrder::Ascend);
            let resp = core.linearizable_range(req).await?;
            let revision = resp.header.as_ref().map_or(0, |h| h.revision);
            let (mut header, kv) = match resp.kvs.into_iter().next() {
                Some(kv) => (resp.header, kv),
                None => {
                    // No leader yet: wait for the first put on the prefix.
                    let bounds =
                        Bounds::Range(prefix.clone(), End::Key(mvcc::codec::prefix_end(&prefix)));
                    let mut watch = HubWatch::new(core, bounds, revision);
                    loop {
                        let put = watch
                            .next()
                            .await?
                            .into_iter()
                            .find(|e| e.r#type() == EventType::Put);
                        if let Some(kv) = put.and_then(|e| e.kv) {
                            break (core.header(kv.mod_revision), kv);
                        }
                    }
                }
            };
            let from = header.as_ref().map_or(0, |h| h.revision) + 1;
            let key = kv.key.to_vec();
            if tx
                .send(Ok(LeaderResponse {
                    header: header.take(),
                    kv: Some(kv),
                }))
                .await
                .is_err()
            {
                return Ok(());
            }
            let mut watch = HubWatch::new(core, Bounds::Key(key), from);
            'leader: loop {
                for event in watch.next().await? {
                    if event.r#type() == EventType::Delete {
                        break 'leader;
                    }
                    let Some(kv) = event.kv else { continue };
                    let resp = LeaderResponse {
                        header: core.header(kv.mod_revision),
                        kv: Some(kv),
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
