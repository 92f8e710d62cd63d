//! The one place where Cairn's errors become gRPC statuses, with etcd's codes and exact messages
//! (etcd: `api/v3rpc/rpctypes/error.go`, 3.4).

use tonic::{Code, Status};

use crate::alarm::Refusal;
use crate::apply::ApplyError;
use crate::auth::AuthError;
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
    #[error(transparent)]
    Member(#[from] MemberError),
    #[error("{0}")]
    Internal(String),
    #[error("rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("mvcc: database space exceeded")]
    NoSpace,
    #[error("corrupt cluster")]
    Corrupt,
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> ApiError {
        match e {
            ApplyError::Mvcc(m) => ApiError::Mvcc(m),
            ApplyError::Alarm(Refusal::NoSpace) => ApiError::NoSpace,
            ApplyError::Alarm(Refusal::Corrupt) => ApiError::Corrupt,
            ApplyError::Auth(a) => ApiError::Auth(a),
        }
    }
}

/// Why a membership request was refused (etcd: `membership` errors as `rpctypes` maps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("member ID already exist")]
    IdExists,
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    #[error("re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("given member URLs are invalid")]
    BadUrls,
    #[error("member not found")]
    NotFound,
    #[error("can only promote a learner member")]
    NotLearner,
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("too many learner members in cluster")]
    TooManyLearners,
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    #[error("request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("unhealthy cluster")]
    Unhealthy,
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        if let ApiError::Member(m) = &e {
            let code = match m {
                MemberError::BadUrls => Code::InvalidArgument,
                MemberError::NotFound => Code::NotFound,
                MemberError::LeaderTransferTimeout | MemberError::Unhealthy => Code::Unavailable,
                _ => Code::FailedPrecondition,
            };
            return Status::new(code, format!("etcdserver: {m}"));
        }
        if let ApiError::Auth(a) = &e {
            let code = match a {
                AuthError::UserEmpty
                | AuthError::RoleEmpty
                | AuthError::AuthFailed
                | AuthError::InvalidAuthManagement
                | AuthError::OldRevision => Code::InvalidArgument,
                AuthError::PermissionDenied => Code::PermissionDenied,
                AuthError::InvalidAuthToken => Code::Unauthenticated,
                AuthError::AdminOnly | AuthError::VerifyOnly => {
                    return Status::unknown(a.to_string())
                }
                _ => Code::FailedPrecondition,
            };
            return Status::new(code, format!("etcdserver: {a}"));
        }
        let (code, msg) = match &e {
            ApiError::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            ApiError::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            ApiError::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            ApiError::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
            ApiError::NoSpace => (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            ApiError::Corrupt => (Code::DataLoss, "etcdserver: corrupt cluster"),
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
                mvcc::Error::LeaseExists => {
                    (Code::FailedPrecondition, "etcdserver: lease already exists")
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
                RaftError::TimeoutLeaderFail => (
                    Code::Unavailable,
                    "etcdserver: request timed out, possibly due to previous leader failure",
                ),
                RaftError::TimeoutConnectionLost => (
                    Code::Unavailable,
                    "etcdserver: request timed out, possibly due to connection lost",
                ),
                RaftError::NotLeader => (Code::FailedPrecondition, "etcdserver: not leader"),
            },
            ApiError::Internal(msg) => return Status::internal(msg.clone()),
            ApiError::NotSupportedForLearner => (
                Code::Unavailable,
                "etcdserver: rpc not supported for learner",
            ),
            ApiError::Member(_) | ApiError::Auth(_) => unreachable!("mapped above"),
        };
        Status::new(code, msg)
    }
}

/// The answer of a method that Cairn does not serve yet.
pub fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!("cairn does not implement {method} yet"))
}
