//! etcd's MVCC operation counters (`mvcc/metrics_txn.go`): every range, put and delete a request
//! ran on this member, and the requests that ran more than one operation as txns.

use cairn_proto::etcdserverpb::{request_op, response_op, TxnRequest, TxnResponse};

use super::Metrics;

/// Operations one request ran.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxnOps {
    pub ranges: u64,
    pub puts: u64,
    pub deletes: u64,
}

impl TxnOps {
    pub const RANGE: TxnOps = TxnOps {
        ranges: 1,
        puts: 0,
        deletes: 0,
    };
    pub const PUT: TxnOps = TxnOps {
        ranges: 0,
        puts: 1,
        deletes: 0,
    };
    pub const DELETE: TxnOps = TxnOps {
        ranges: 0,
        puts: 0,
        deletes: 1,
    };
}

/// The operations a txn ran: those of the branches its compares chose, nested txns included.
pub fn count_txn(req: &TxnRequest, resp: &TxnResponse) -> TxnOps {
    let mut ops = TxnOps::default();
    add_txn(&mut ops, req, resp);
    ops
}

fn add_txn(ops: &mut TxnOps, req: &TxnRequest, resp: &TxnResponse) {
    let branch = if resp.succeeded {
        &req.success
    } else {
        &req.failure
    };
    for (op, answer) in branch.iter().zip(&resp.responses) {
        match (&op.request, &answer.response) {
            (Some(request_op::Request::RequestRange(_)), _) => ops.ranges += 1,
            (Some(request_op::Request::RequestPut(_)), _) => ops.puts += 1,
            (Some(request_op::Request::RequestDeleteRange(_)), _) => ops.deletes += 1,
            (
                Some(request_op::Request::RequestTxn(nested)),
                Some(response_op::Response::ResponseTxn(nested_resp)),
            ) => add_txn(ops, nested, nested_resp),
            _ => {}
        }
    }
}

impl Metrics {
    /// Counts the operations of one request (etcd: `metricsTxnWrite.End`).
    pub fn record_ops(&self, ops: TxnOps) {
        if ops.ranges + ops.puts + ops.deletes > 1 {
            self.txn_total.inc();
        }
        self.range_total.inc_by(ops.ranges);
        self.put_total.inc_by(ops.puts);
        self.delete_total.inc_by(ops.deletes);
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::etcdserverpb::{
        DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseOp,
    };

    use super::*;

    fn op(r: request_op::Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    #[test]
    fn only_the_chosen_branches_count() {
        let nested = TxnRequest {
            success: vec![op(request_op::Request::RequestPut(PutRequest::default()))],
            failure: vec![
                op(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest::default(),
                )),
                op(request_op::Request::RequestRange(RangeRequest::default())),
            ],
            ..TxnRequest::default()
        };
        let req = TxnRequest {
            success: vec![
                op(request_op::Request::RequestRange(RangeRequest::default())),
                op(request_op::Request::RequestTxn(nested)),
            ],
            failure: vec![op(request_op::Request::RequestPut(PutRequest::default()))],
            ..TxnRequest::default()
        };
        let nested_failed = TxnResponse {
            succeeded: false,
            responses: vec![ResponseOp::default(), ResponseOp::default()],
            ..TxnResponse::default()
        };
        let resp = TxnResponse {
            succeeded: true,
            responses: vec![
                ResponseOp::default(),
                ResponseOp {
                    response: Some(response_op::Response::ResponseTxn(nested_failed)),
                },
            ],
            ..TxnResponse::default()
        };
        assert_eq!(
            count_txn(&req, &resp),
            TxnOps {
                ranges: 2,
                puts: 0,
                deletes: 1
            }
        );
        let failed = TxnResponse {
            succeeded: false,
            responses: vec![ResponseOp::default()],
            ..TxnResponse::default()
        };
        assert_eq!(count_txn(&req, &failed), TxnOps::PUT);
    }
}
