//! `etcdserverpb.KV`: Range is served locally (after a ReadIndex barrier unless serializable); Put,
//! DeleteRange, Txn and Compact go through raft (etcd: `api/v3rpc/key.go`, `etcdserver/v3_server.go`).

use std::sync::Arc;

use cairn_proto::cairnpb::internal_request::Request;
use cairn_proto::etcdserverpb::kv_server::Kv;
use cairn_proto::etcdserverpb::request_op;
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, ResponseHeader, TxnRequest,
    TxnResponse,
};
use tonic::{Request as GrpcRequest, Response, Status};

use super::error::{unimplemented, ApiError};
use super::{validate, Core};
use crate::apply::Applied;
use crate::auth::AuthInfo;
use crate::mvcc;

pub struct KvService {
    core: Arc<Core>,
}

impl KvService {
    pub fn new(core: Arc<Core>) -> KvService {
        KvService { core }
    }

    /// Replaces the revision-only header that apply produced with the full one.
    fn header(&self, partial: Option<ResponseHeader>) -> Option<ResponseHeader> {
        self.core.header(partial.map_or(0, |h| h.revision))
    }

    /// etcd serves read-only txns locally: after a ReadIndex barrier unless every range in it is
    /// serializable.
    async fn txn_read_only(
        &self,
        req: TxnRequest,
        caller: Option<AuthInfo>,
    ) -> Result<TxnResponse, ApiError> {
        if !all_ranges_serializable(&req) {
            self.core.linearizable_barrier().await?;
        }
        // After the barrier: the auth state is then at least as new as any change acknowledged
        // before the read began (a revoked permission is refused at once on every member).
        self.core.permit(&caller, |s, u| s.check_txn(u, &req))?;
        let mut resp = self.core.store.txn_read_only(&req)?;
        resp.header = self.header(resp.header);
        Ok(resp)
    }

    async fn range_inner(
        &self,
        req: RangeRequest,
        caller: Option<AuthInfo>,
    ) -> Result<RangeResponse, ApiError> {
        validate::check_range(&req)?;
        if !req.serializable && self.core.is_learner() {
            return Err(ApiError::NotSupportedForLearner);
        }
        if !req.serializable {
            self.core.linearizable_barrier().await?;
        }
        // After the barrier, as for read-only txns.
        self.core.permit(&caller, |s, u| s.check_range(u, &req))?;
        let r = self.core.store.range(&req)?;
        Ok(RangeResponse {
            header: self.core.header(r.revision),
            kvs: r.kvs,
            more: r.more,
            count: r.count,
        })
    }
}

/// etcd `isTxnSerializable`: every range of the (read-only) txn asks for a serializable read.
fn all_ranges_serializable(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.serializable,
            Some(request_op::Request::RequestTxn(t)) => all_ranges_serializable(t),
            _ => true,
        })
}

pub(super) fn unexpected(applied: Applied) -> Status {
    Status::internal(format!("apply answered with {applied:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: GrpcRequest<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let caller = self.core.caller(req.metadata())?;
        Ok(Response::new(
            self.range_inner(req.into_inner(), caller).await?,
        ))
    }

    async fn put(&self, req: GrpcRequest<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.core.caller(req.metadata())?;
        let req = req.into_inner();
        validate::check_put(&req)?;
        self.core.permit(&caller, |s, u| s.check_put(u, &req))?;
        match self
            .core
            .propose_as(Request::Put(req), caller.as_ref())
            .await?
        {
            Applied::Put(mut resp) => {
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.core.caller(req.metadata())?;
        let req = req.into_inner();
        validate::check_delete(&req)?;
        self.core.permit(&caller, |s, u| s.check_delete(u, &req))?;
        let delete = Request::DeleteRange(req);
        match self.core.propose_as(delete, caller.as_ref()).await? {
            Applied::DeleteRange(mut resp) => {
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: GrpcRequest<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.core.caller(req.metadata())?;
        let req = req.into_inner();
        validate::check_txn(&req, self.core.max_txn_ops)?;
        if mvcc::is_read_only(&req) {
            return Ok(Response::new(self.txn_read_only(req, caller).await?));
        }
        self.core.permit(&caller, |s, u| s.check_txn(u, &req))?;
        match self
            .core
            .propose_as(Request::Txn(req), caller.as_ref())
            .await?
        {
            Applied::Txn(mut resp) => {
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: GrpcRequest<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // Any authenticated user may compact (as in etcd).
        let caller = self.core.caller(req.metadata())?;
        let req = req.into_inner();
        let (revision, physical) = (req.revision, req.physical);
        let compact = Request::Compaction(req);
        match self.core.propose_as(compact, caller.as_ref()).await? {
            Applied::Compaction(mut resp) => {
                if physical {
                    self.core.compactor.wait_finished(revision).await;
                }
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    type RangeStreamStream = futures::stream::Empty<Result<RangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _req: GrpcRequest<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        // etcd 3.7's streaming range; kube-apiserver falls back to Range on Unimplemented.
        Err(unimplemented("/etcdserverpb.KV/RangeStream"))
    }
}
