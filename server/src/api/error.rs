//! The one place where Cairn's errors become gRPC statuses, with etcd's codes and exact messages
//! (etcd: `api/v3rpc/rpctypes/error.go`, 3.4).

use tonic::{Code, Status};

use crate::mvcc;
use crate::raft::RaftError;

/// Everything a client request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Mvcc(#[from] mvcc::Error),
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error("key is not provided")]
    EmptyKey,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("request is too large")]
    RequestTooLarge,
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let (code, msg) = match &e {
            ApiError::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            ApiError::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            ApiError::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            ApiError::TooManyOps => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            ApiError::DuplicateKey => (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            ApiError::RequestTooLarge => {
                (Code::InvalidArgument, "etcdserver: request is too large")
            }
            ApiError::Mvcc(m) => match m {
                mvcc::Error::Compacted => (
                    Code::OutOfRange,
                    "etcdserver: mvcc: required revision has been compacted",
                ),
                mvcc::Error::FutureRevision => (
                    Code::OutOfRange,
                    "etcdserver: mvcc: required revision is a future revision",
                ),
                mvcc::Error::KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
                mvcc::Error::LeaseNotFound => {
                    (Code::NotFound, "etcdserver: requested lease not found")
                }
                mvcc::Error::Engine(io) => {
                    return Status::internal(format!("etcdserver: {io}"));
                }
            },
            ApiError::Raft(r) => match r {
                RaftError::NoLeader => (Code::Unavailable, "etcdserver: no leader"),
                RaftError::LeaderChanged => (Code::Unavailable, "etcdserver: leader changed"),
                RaftError::TooManyRequests => {
                    (Code::ResourceExhausted, "etcdserver: too many requests")
                }
                RaftError::Stopped => (Code::Unavailable, "etcdserver: server stopped"),
                RaftError::Timeout => (Code::Unavailable, "etcdserver: request timed out"),
            },
        };
        Status::new(code, msg)
    }
}

/// The answer of a method that Cairn does not serve yet.
pub fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!("cairn does not implement {method} yet"))
}
