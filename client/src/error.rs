//! The client's one error type: etcd's errors by name, plus what can go wrong on the client side.
//!
//! etcd reports its errors as gRPC statuses whose code *and message* identify them (etcd:
//! `api/v3rpc/rpctypes/error.go`); [`Error::from_status`] recognises them by message and gives
//! each its own variant, so callers `match` instead of comparing strings. A status the client
//! does not know stays an [`Error::Status`] with the original status inside.

use tonic::Code;

/// An error from the server (named after etcd's errors) or from the client itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- etcd's request errors ----
    /// The requested revision has been compacted away (`OutOfRange`).
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the store's (`OutOfRange`).
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The backend quota is exhausted; only reads and deletes succeed until space is freed.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// No lease with that id (it expired, was revoked, or never existed).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with the requested id already exists.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The requested lease TTL is above the server's maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// An empty key was given where etcd needs one.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// The request is larger than the server's `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A transaction has more operations than the server's `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A transaction writes the same key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The server is overloaded and refused the request before executing it.
    #[error("etcdserver: too many requests")]
    TooManyRequests,

    // ---- etcd's auth errors ----
    /// The authenticated user may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// The auth token expired or is unknown to the member (the client re-authenticates once).
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Wrong user name or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// Authentication is not enabled on the cluster.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// The request needs a user but the client has none configured.
    #[error("etcdserver: user name is empty")]
    UserEmpty,

    // ---- etcd's cluster errors ----
    /// The member has no leader (it is partitioned or an election is running).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request needs the leader and this member is not.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The leader changed while the request was in flight (its outcome is unknown).
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The server gave up waiting for the request to commit (its outcome is unknown).
    #[error("{0}")]
    Timeout(String),
    /// The server is stopping.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The cluster would lose quorum (membership changes), or is unhealthy.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// The member is a learner, which serves no client requests.
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// The cluster detected data corruption.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// No member with that id.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A member with that id already exists.
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    /// Another member already uses these peer URLs.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// Only learners can be promoted.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// The learner has not caught up with the leader yet.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// The cluster already has its maximum of learners.
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,

    // ---- watch ----
    /// A watch cannot continue: the revision it needed has been compacted away. The watcher
    /// ends; start a new one from a fresh read (at or after `compact_revision`).
    #[error("watch: required revision has been compacted (compact revision {compact_revision})")]
    WatchCompacted {
        /// The store's compacted revision when the watch was refused.
        compact_revision: i64,
    },
    /// The server canceled the watch for another reason (the watcher ends).
    #[error("watch canceled by the server: {reason}")]
    WatchCanceled {
        /// The server's `cancel_reason` (may be empty).
        reason: String,
    },

    // ---- leases and the concurrency recipes ----
    /// A lease being kept alive has expired or was revoked (the keep-alive stopped).
    #[error("lease {id:x} expired or was revoked")]
    LeaseExpired {
        /// The lease id.
        id: i64,
    },
    /// The session's lease is gone, so the lock or election key it held is gone too.
    #[error("session expired")]
    SessionExpired,
    /// [`Mutex::try_lock`](crate::concurrency::Mutex::try_lock): someone else holds the lock.
    #[error("mutex: Locked by another session")]
    Locked,
    /// [`Mutex::unlock`](crate::concurrency::Mutex::unlock): the lock was already released.
    #[error("mutex: lock has already been released")]
    LockReleased,
    /// The campaigner is not (or no longer) the leader.
    #[error("election: not leader")]
    ElectionNotLeader,
    /// Nobody is campaigning.
    #[error("election: no leader")]
    ElectionNoLeader,
    /// An STM transaction conflicted on every attempt.
    #[error("stm: still conflicting after {attempts} attempts")]
    StmConflict {
        /// How many times the transaction was run.
        attempts: u32,
    },

    // ---- client side ----
    /// The method is not implemented by this server (Cairn answers `UNIMPLEMENTED` for services
    /// it does not have yet).
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// No member answered: the connection was refused or broke (a transport error), or the
    /// server said `Unavailable` without naming one of etcd's errors. Requests that are safe to
    /// retry are retried on another member before this is returned.
    #[error("unavailable: {}", .0.message())]
    Unavailable(tonic::Status),
    /// The request's deadline (`ConnectOptions::with_timeout`) passed before it completed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// Invalid arguments given to the client (bad endpoint URL, empty endpoint list, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The endpoint or option needs something this build of the client does not have.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A connection could not be set up ([`Client::connect`](crate::Client::connect)).
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Any other gRPC status from the server. The single-endpoint methods of
    /// [`Client`](crate::Client) (`put`, `get`, `range`, ...) return every server error this way.
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
}

/// `Result` with the client's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Names the error etcd meant by `status` (by its message; the code disambiguates the
    /// generic cases). Unknown statuses stay [`Error::Status`].
    pub fn from_status(status: tonic::Status) -> Error {
        let msg = status.message();
        let named = match msg {
            "etcdserver: mvcc: required revision has been compacted" => Some(Error::Compacted),
            "etcdserver: mvcc: required revision is a future revision" => {
                Some(Error::FutureRevision)
            }
            "etcdserver: mvcc: database space exceeded" => Some(Error::NoSpace),
            "etcdserver: requested lease not found" => Some(Error::LeaseNotFound),
            "etcdserver: lease already exists" => Some(Error::LeaseExists),
            "etcdserver: too large lease TTL" => Some(Error::LeaseTtlTooLarge),
            "etcdserver: key is not provided" => Some(Error::EmptyKey),
            "etcdserver: key not found" => Some(Error::KeyNotFound),
            "etcdserver: request is too large" => Some(Error::RequestTooLarge),
            "etcdserver: too many operations in txn request" => Some(Error::TooManyOps),
            "etcdserver: duplicate key given in txn request" => Some(Error::DuplicateKey),
            "etcdserver: too many requests" => Some(Error::TooManyRequests),
            "etcdserver: permission denied" => Some(Error::PermissionDenied),
            "etcdserver: invalid auth token" => Some(Error::InvalidAuthToken),
            "etcdserver: authentication failed, invalid user ID or password" => {
                Some(Error::AuthFailed)
            }
            "etcdserver: authentication is not enabled" => Some(Error::AuthNotEnabled),
            "etcdserver: user name is empty" => Some(Error::UserEmpty),
            "etcdserver: no leader" => Some(Error::NoLeader),
            "etcdserver: not leader" => Some(Error::NotLeader),
            "etcdserver: leader changed" => Some(Error::LeaderChanged),
            "etcdserver: request timed out"
            | "etcdserver: request timed out, possibly due to previous leader failure"
            | "etcdserver: request timed out, possibly due to connection lost"
            | "etcdserver: request timed out, waiting for the applied index took too long" => {
                Some(Error::Timeout(msg.to_string()))
            }
            "etcdserver: server stopped" => Some(Error::Stopped),
            "etcdserver: unhealthy cluster" => Some(Error::Unhealthy),
            "etcdserver: rpc not supported for learner" => Some(Error::NotSupportedForLearner),
            "etcdserver: corrupt cluster" => Some(Error::Corrupt),
            "etcdserver: member not found" => Some(Error::MemberNotFound),
            "etcdserver: member ID already exist" => Some(Error::MemberExists),
            "etcdserver: Peer URLs already exists" => Some(Error::PeerUrlExists),
            "etcdserver: can only promote a learner member" => Some(Error::MemberNotLearner),
            "etcdserver: can only promote a learner member which is in sync with leader" => {
                Some(Error::LearnerNotReady)
            }
            "etcdserver: too many learner members in cluster" => Some(Error::TooManyLearners),
            "election: not leader" => Some(Error::ElectionNotLeader),
            "election: no leader" => Some(Error::ElectionNoLeader),
            "etcdserver: session expired" | "session expired" => Some(Error::SessionExpired),
            _ => None,
        };
        if let Some(e) = named {
            return e;
        }
        // A status the client's transport made up (it carries the transport error as its
        // source; the server's statuses have none) means the member could not be reached or
        // the connection broke.
        let local = std::error::Error::source(&status).is_some();
        match status.code() {
            Code::Unimplemented => Error::Unimplemented(msg.to_string()),
            Code::Unavailable => Error::Unavailable(status),
            Code::Unknown | Code::Cancelled | Code::Internal if local => Error::Unavailable(status),
            Code::DeadlineExceeded => Error::DeadlineExceeded,
            _ => Error::Status(status),
        }
    }

    /// Whether the member could not serve the request for a transient reason (no leader,
    /// leader changed, timed out, stopped, unreachable, ...): the condition etcd signals with
    /// `Unavailable`, which clients retry on another member when that is safe.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::NoLeader
                | Error::LeaderChanged
                | Error::Timeout(_)
                | Error::Stopped
                | Error::Unhealthy
                | Error::NotSupportedForLearner
                | Error::Unavailable(_)
        )
    }

    /// The gRPC status code etcd would use for this error (`Unknown` for client-side errors).
    pub fn code(&self) -> Code {
        match self {
            Error::Compacted | Error::FutureRevision | Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::NoSpace | Error::TooManyRequests => Code::ResourceExhausted,
            Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
            Error::LeaseExists
            | Error::NotLeader
            | Error::MemberExists
            | Error::PeerUrlExists
            | Error::MemberNotLearner
            | Error::LearnerNotReady
            | Error::TooManyLearners
            | Error::AuthNotEnabled => Code::FailedPrecondition,
            Error::EmptyKey
            | Error::KeyNotFound
            | Error::RequestTooLarge
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::AuthFailed
            | Error::UserEmpty
            | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::PermissionDenied => Code::PermissionDenied,
            Error::InvalidAuthToken => Code::Unauthenticated,
            Error::NoLeader
            | Error::LeaderChanged
            | Error::Timeout(_)
            | Error::Stopped
            | Error::Unhealthy
            | Error::NotSupportedForLearner => Code::Unavailable,
            Error::Corrupt => Code::DataLoss,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Unavailable(s) | Error::Status(s) => s.code(),
            Error::DeadlineExceeded => Code::DeadlineExceeded,
            _ => Code::Unknown,
        }
    }
}

/// What the transport layer can say about whether a failed request reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The connection could not be established: the request never left the client.
    NotSent,
    /// The server refused the request before executing it (learner, overload, bad token).
    Refused,
    /// The request may or may not have been executed (connection lost mid-call, server-side
    /// timeout, leader change).
    Unknown,
    /// The server answered with a definite error.
    Answered,
}

/// Whether the server refused the call for want of a (fresh) token, as clientv3's
/// `shouldRefreshToken` decides: log in again and retry.
pub(crate) fn wants_new_token(status: &tonic::Status) -> bool {
    matches!(
        status.message(),
        "etcdserver: invalid auth token"
            | "etcdserver: user name is empty"
            | "etcdserver: revision of auth store is old"
    )
}

/// Classifies a failed call for the retry policy.
pub(crate) fn delivery_of(status: &tonic::Status) -> Delivery {
    if is_connect_error(status) {
        return Delivery::NotSent;
    }
    if wants_new_token(status) {
        // Checked before the request is proposed, or refused by apply before executing it.
        return Delivery::Refused;
    }
    match status.message() {
        // Each of these is checked before the request is proposed.
        "etcdserver: rpc not supported for learner"
        | "etcdserver: too many requests"
        | "etcdserver: unhealthy cluster" => return Delivery::Refused,
        _ => {}
    }
    let local = std::error::Error::source(status).is_some();
    match status.code() {
        // etcd sends plain Go errors (`election: no leader`, `session expired`) as `Unknown`:
        // definite answers. Only a transport failure behind an `Unknown` leaves the outcome open.
        Code::Unknown if !local => Delivery::Answered,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal => Delivery::Unknown,
        _ => Delivery::Answered,
    }
}

/// Whether tonic failed to connect (the error chain holds a `tonic::ConnectError`).
fn is_connect_error(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_are_named_by_message() {
        let e = Error::from_status(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert!(matches!(e, Error::Compacted));
        assert_eq!(e.code(), Code::OutOfRange);
        let e = Error::from_status(tonic::Status::unavailable("etcdserver: no leader"));
        assert!(matches!(e, Error::NoLeader) && e.is_unavailable());
        let e = Error::from_status(tonic::Status::unavailable("tcp connect error"));
        assert!(matches!(e, Error::Unavailable(_)) && e.is_unavailable());
        let e = Error::from_status(tonic::Status::unimplemented(
            "etcdserverpb.Lease/LeaseGrant",
        ));
        assert!(matches!(e, Error::Unimplemented(_)));
        let e = Error::from_status(tonic::Status::invalid_argument("something else"));
        assert!(matches!(e, Error::Status(_)));
    }

    #[test]
    fn refusals_are_known_not_executed() {
        let s = tonic::Status::unavailable("etcdserver: rpc not supported for learner");
        assert_eq!(delivery_of(&s), Delivery::Refused);
        let s = tonic::Status::unavailable("etcdserver: leader changed");
        assert_eq!(delivery_of(&s), Delivery::Unknown);
        let s = tonic::Status::invalid_argument("etcdserver: key is not provided");
        assert_eq!(delivery_of(&s), Delivery::Answered);
        let s = tonic::Status::unknown("election: no leader");
        assert_eq!(delivery_of(&s), Delivery::Answered);
        let broken = std::io::Error::other("connection reset");
        let s = tonic::Status::from_error(Box::new(broken));
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(delivery_of(&s), Delivery::Unknown);
    }
}
