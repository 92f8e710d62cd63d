//! The apply worker: applies committed entries, in log order, to MVCC, and answers the proposers.
//!
//! **Invariant:** entries are applied exactly once, in order: an entry at or below the applied index
//! stored with the data (etcd's consistent index) is skipped, so a replay after a crash is harmless.
//! Each revision's events go to the watch hub after the revision is written and before the proposer
//! is answered (as in etcd, a client that saw its write acknowledged then watches from later on).
//!
//! Puts, deletes and txns of one committed batch are written to the engine together (the
//! [`Writer`] defers them; [`Apply::flush`] writes them, then publishes their events and answers
//! their proposers, in log order). Every other entry is applied on its own: the deferred writes
//! are flushed before it and its own effects right after, so what it changes outside MVCC (leases,
//! alarms, auth, membership) never runs ahead of, or behind, the keyspace.
//! It also owns the replicated membership: membership entries and member attributes change it in the
//! same batch as their applied index, and every change is published on a `watch` channel.
//!
//! **Boundary:** apply never imports raft's crate; it sees [`Committed`] entries carrying request
//! bytes, and raft's own state as opaque batches to write with them.

pub mod wait;

use std::thread;
use std::time::Instant;

use cairn_proto::cairnpb::{internal_request, member_change, InternalRequest, MemberChange};
use cairn_proto::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmResponse, CompactionResponse, DeleteRangeResponse,
    LeaseGrantResponse, LeaseRevokeResponse, PutResponse, ResponseHeader, TxnResponse,
};
use crossbeam_channel::Receiver;
use prost::Message;
use tokio::sync::watch;

use crate::alarm::{Alarms, Refusal};
use crate::auth::{AuthError, AuthState, TokenProvider};
use crate::cluster::{Member, Membership};
use crate::engine::Batch;
use crate::failpoints;
use crate::lease::Lessor;
use crate::metrics::{METRICS, SLOW_APPLY};
use crate::mvcc::{self, Compactor, Writer};
use crate::raft::Committed;
use crate::snapshot;
use crate::watch::Hub;
use wait::Wait;

/// The state-machine outcome of one applied request.
#[derive(Debug)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Alarm(AlarmResponse),
    /// An auth change; a login's simple token.
    Auth {
        token: Option<String>,
    },
    /// A membership change or member update: the membership after it.
    Membership(Membership),
    /// A membership change that the membership as applied refuses (decided at apply, as etcd's
    /// `ValidateConfigurationChange`, so that members proposing concurrently agree).
    MembershipRefused(MembershipRefusal),
}

/// Why an applied membership change did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipRefusal {
    /// Add: the id is (or was) a member.
    IdExists,
    /// Remove or promote: no such member.
    NotFound,
}

/// Why an applied request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Mvcc(#[from] mvcc::Error),
    /// Refused by a raised alarm (see [`crate::alarm`]).
    #[error("refused by an alarm: {0:?}")]
    Alarm(Refusal),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

pub type ApplyResult = Result<Applied, ApplyError>;

/// Deferred writes past this size are flushed before the next entry, so a long committed batch
/// (a replay after restart) does not grow one engine write without bound.
const DEFERRED_BYTES_MAX: usize = 4 << 20;

/// What waits for the deferred writes: each revision's events, and the proposers' answers.
#[derive(Default)]
pub struct Unflushed {
    events: Vec<(i64, Vec<cairn_proto::mvccpb::Event>)>,
    answers: Vec<(u64, ApplyResult)>,
}

/// What the apply worker works on.
pub struct Apply {
    pub writer: Writer,
    pub compactor: std::sync::Arc<Compactor>,
    pub wait: Wait<ApplyResult>,
    /// The membership as of the applied index; the worker publishes every change.
    pub membership: watch::Sender<Membership>,
    /// The alarms as of the applied index; the worker publishes every change.
    pub alarms: watch::Sender<Alarms>,
    /// The auth state as of the applied index; the worker publishes every change.
    pub auth: watch::Sender<std::sync::Arc<AuthState>>,
    /// Simple tokens, which every member assigns when it applies a login.
    pub tokens: std::sync::Arc<TokenProvider>,
    /// Where each revision's events go, once written.
    pub watch_hub: std::sync::Arc<Hub>,
    pub lessor: std::sync::Arc<Lessor>,
    /// The least TTL a lease is granted (etcd raises smaller requests to it).
    pub min_lease_ttl: i64,
    pub unflushed: Unflushed,
}

/// Starts the apply worker. It publishes its applied index on `applied` after each batch.
pub fn start(
    mut apply: Apply,
    committed: Receiver<Vec<Committed>>,
    applied: watch::Sender<u64>,
) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("apply".into())
        .spawn(move || {
            let mut applied_index = apply
                .writer
                .applied_index()
                .expect("read applied index at start");
            for batch in committed {
                for entry in batch {
                    let index = entry.index();
                    if index <= applied_index {
                        continue;
                    }
                    if let Committed::Snapshot {
                        path, raft_state, ..
                    } = entry
                    {
                        apply.flush();
                        apply.install_snapshot(index, &path, raft_state);
                    } else {
                        assert_eq!(
                            index,
                            applied_index + 1,
                            "committed entries arrive in order"
                        );
                        let start = Instant::now();
                        apply.apply_one(entry);
                        if start.elapsed() > SLOW_APPLY {
                            METRICS.slow_apply.inc();
                        }
                        if apply.writer.pending_bytes() > DEFERRED_BYTES_MAX {
                            apply.flush();
                        }
                    }
                    applied_index = index;
                }
                apply.flush();
                applied.send_replace(applied_index);
            }
        })
        .expect("spawn apply thread")
}

impl Apply {
    /// Writes the deferred requests, then publishes their events and answers their proposers.
    pub(crate) fn flush(&mut self) {
        if let Err(e) = self.writer.flush() {
            panic!("writing applied entries failed in storage (fail-stop): {e}");
        }
        for (revision, events) in self.unflushed.events.drain(..) {
            let dropped = failpoints::active(failpoints::Bug::DropWatchEvent) && revision % 25 == 0;
            let events = if dropped { &[][..] } else { &events[..] };
            self.watch_hub.publish(revision, events);
        }
        for (id, result) in self.unflushed.answers.drain(..) {
            self.wait.trigger(id, result);
        }
    }

    /// Answers proposal `id` once the entry's writes are flushed.
    fn answer(&mut self, id: u64, result: ApplyResult) {
        self.unflushed.answers.push((id, result));
    }

    pub(crate) fn apply_one(&mut self, entry: Committed) {
        let (index, data) = match entry {
            Committed::Noop { index } => return self.writer.set_applied(index),
            Committed::MemberChange {
                index,
                context,
                raft_state,
            } => {
                self.flush();
                self.apply_member_change(index, &context, raft_state);
                return self.flush();
            }
            Committed::Snapshot { .. } => unreachable!("handled by the caller"),
            Committed::Request { index, data } => (index, data),
        };
        let req = InternalRequest::decode(data)
            .unwrap_or_else(|e| panic!("committed entry {index} is not an InternalRequest: {e}"));
        use internal_request::Request as R;
        let deferred = matches!(req.request, Some(R::Put(_) | R::DeleteRange(_) | R::Txn(_)));
        if !deferred {
            self.flush();
        }
        self.apply_request(index, req);
        if !deferred {
            self.flush();
        }
    }

    fn apply_request(&mut self, index: u64, req: InternalRequest) {
        use internal_request::Request as R;
        let refusal = req
            .request
            .as_ref()
            .and_then(|r| self.alarms.borrow().refuses(r));
        let refusal = refusal.map(ApplyError::Alarm).or_else(|| {
            // Checked under an older auth state: refused, as etcd does (the client retries). A
            // keyspace write checked while auth was still disabled has no user: etcd's apply-time
            // check refuses it as `user name is empty`.
            let auth = self.auth.borrow();
            let kv_write = matches!(req.request, Some(R::Put(_) | R::DeleteRange(_) | R::Txn(_)));
            let stale = auth.enabled
                && req.auth_revision < auth.revision
                && (!req.username.is_empty() || kv_write);
            stale.then_some(ApplyError::Auth(if req.username.is_empty() {
                AuthError::UserEmpty
            } else {
                AuthError::OldRevision
            }))
        });
        if let Some(refusal) = refusal {
            self.writer.set_applied(index);
            return self.answer(req.id, Err(refusal));
        }
        let writer = &mut self.writer;
        let result = match req.request {
            Some(internal_request::Request::Put(r)) => writer.put(&r, index).map(Applied::Put),
            Some(internal_request::Request::DeleteRange(r)) => {
                writer.delete_range(&r, index).map(Applied::DeleteRange)
            }
            Some(internal_request::Request::Txn(r)) => writer.txn(&r, index).map(Applied::Txn),
            Some(internal_request::Request::Compaction(r)) => {
                let result = writer.compact(r.revision, index);
                if result.is_ok() {
                    self.compactor.schedule(r.revision);
                }
                result.map(Applied::Compaction)
            }
            Some(internal_request::Request::LeaseGrant(g)) => {
                let ttl = g.ttl.max(self.min_lease_ttl);
                let result = writer.lease_grant(g.id, ttl, index);
                if result.is_ok() {
                    self.lessor.granted(g.id, ttl);
                }
                result.map(|()| {
                    Applied::LeaseGrant(LeaseGrantResponse {
                        header: Some(ResponseHeader {
                            revision: writer.revision(),
                            ..ResponseHeader::default()
                        }),
                        id: g.id,
                        ttl,
                        error: String::new(),
                    })
                })
            }
            Some(internal_request::Request::LeaseRevoke(r)) => {
                let result = writer.lease_revoke(r.id, index);
                if result.is_ok() {
                    self.lessor.revoked(r.id);
                }
                result.map(|revision| {
                    Applied::LeaseRevoke(LeaseRevokeResponse {
                        header: Some(ResponseHeader {
                            revision,
                            ..ResponseHeader::default()
                        }),
                    })
                })
            }
            Some(internal_request::Request::Alarm(a)) => Ok(self.apply_alarm(index, &a)),
            Some(internal_request::Request::Auth(a)) => {
                let applied = self.apply_auth(index, a.request);
                return self.answer(req.id, applied);
            }
            Some(internal_request::Request::MemberAttributes(a)) => {
                self.update_membership(index, |m| {
                    if let Some(member) = m.get_mut(a.member_id) {
                        member.name = a.name;
                        member.client_urls = a.client_urls;
                    }
                })
            }
            Some(internal_request::Request::MemberPeerUrls(u)) => {
                self.update_membership(index, |m| {
                    if let Some(member) = m.get_mut(u.member_id) {
                        member.peer_urls = u.peer_urls;
                    }
                })
            }
            None => return self.writer.set_applied(index),
        };
        if let Err(mvcc::Error::Engine(e)) = &result {
            panic!("applying entry {index} failed in storage (fail-stop): {e}");
        }
        let events = self.writer.take_events();
        if !events.is_empty() {
            let revision = self.writer.revision();
            self.unflushed.events.push((revision, events));
        }
        self.answer(req.id, result.map_err(ApplyError::from));
    }

    /// A user, role or switch change, or a login (which assigns its token on every member).
    fn apply_auth(
        &mut self,
        index: u64,
        req: Option<cairn_proto::cairnpb::auth_request::Request>,
    ) -> ApplyResult {
        use cairn_proto::cairnpb::auth_request::Request as Auth;
        let mut batch = self.writer.engine().batch();
        let mut state = AuthState::clone(&self.auth.borrow());
        let outcome = match &req {
            Some(r) => state.apply(r, &mut batch),
            None => Ok(()),
        };
        let r = self.writer.commit_with_applied(batch, index);
        r.unwrap_or_else(|e| fatal(index, e));
        outcome?;
        let mut token = None;
        match &req {
            Some(Auth::Authenticate(a)) => {
                let t = format!("{}.{index}", a.token_prefix);
                self.tokens.assign(t.clone(), &a.name);
                token = Some(t);
            }
            Some(Auth::UserDelete(u)) => self.tokens.invalidate_user(&u.name),
            Some(Auth::UserChangePassword(u)) => self.tokens.invalidate_user(&u.name),
            Some(Auth::Disable(_)) => self.tokens.clear(),
            _ => {}
        }
        self.auth.send_if_modified(|current| {
            let modified = **current != state;
            if modified {
                *current = std::sync::Arc::new(state);
            }
            modified
        });
        Ok(Applied::Auth { token })
    }

    /// etcd's `applierV3backend.Alarm` for ACTIVATE and DEACTIVATE: the answer lists the alarm
    /// acted on (an activation also when it was raised before; a deactivation only if it was).
    fn apply_alarm(&mut self, index: u64, req: &AlarmRequest) -> Applied {
        let mut batch = self.writer.engine().batch();
        let mut alarms = self.alarms.borrow().clone();
        let changed = match req.action() {
            alarm_request::AlarmAction::Activate => {
                Some(alarms.activate(req.member_id, req.alarm, &mut batch))
            }
            alarm_request::AlarmAction::Deactivate => {
                alarms.deactivate(req.member_id, req.alarm, &mut batch)
            }
            alarm_request::AlarmAction::Get => None,
        };
        let r = self.writer.commit_with_applied(batch, index);
        r.unwrap_or_else(|e| fatal(index, e));
        if let Some(m) = &changed {
            tracing::warn!(
                member = format_args!("{:x}", m.member_id),
                alarm = ?m.alarm(),
                action = ?req.action(),
                "alarm changed"
            );
        }
        self.alarms.send_if_modified(|current| {
            let modified = *current != alarms;
            *current = alarms;
            modified
        });
        Applied::Alarm(AlarmResponse {
            header: None,
            alarms: changed.into_iter().collect(),
        })
    }

    /// Changes the membership, stores it with `index` (and `extra`), publishes it.
    fn change_membership(
        &mut self,
        index: u64,
        mut extra: Batch,
        change: impl FnOnce(&mut Membership),
    ) -> Membership {
        let mut membership = self.membership.borrow().clone();
        change(&mut membership);
        membership.save(&mut extra);
        let r = self.writer.commit_with_applied(extra, index);
        r.unwrap_or_else(|e| fatal(index, e));
        self.membership.send_replace(membership.clone());
        membership
    }

    fn update_membership(
        &mut self,
        index: u64,
        change: impl FnOnce(&mut Membership),
    ) -> mvcc::Result<Applied> {
        let batch = self.writer.engine().batch();
        Ok(Applied::Membership(
            self.change_membership(index, batch, change),
        ))
    }

    fn apply_member_change(&mut self, index: u64, context: &[u8], raft_state: Batch) {
        if context.is_empty() {
            // Raft's own change (leaving a joint configuration): only raft's state changes.
            let r = self.writer.commit_with_applied(raft_state, index);
            return r.unwrap_or_else(|e| fatal(index, e));
        }
        let change = MemberChange::decode(context)
            .unwrap_or_else(|e| panic!("membership change at {index} is malformed: {e}"));
        let refusal = {
            let current = self.membership.borrow();
            let known = current.get(change.member_id).is_some();
            match change.kind() {
                member_change::Kind::Add
                    if known || current.removed.contains(&change.member_id) =>
                {
                    Some(MembershipRefusal::IdExists)
                }
                member_change::Kind::Remove | member_change::Kind::Promote if !known => {
                    Some(MembershipRefusal::NotFound)
                }
                _ => None,
            }
        };
        let membership = self.change_membership(index, raft_state, |m| match change.kind() {
            _ if refusal.is_some() => {}
            member_change::Kind::Add => {
                if m.get(change.member_id).is_none() {
                    m.members.push(Member {
                        id: change.member_id,
                        name: String::new(),
                        peer_urls: change.peer_urls.clone(),
                        client_urls: vec![],
                        is_learner: change.is_learner,
                    });
                }
            }
            member_change::Kind::Promote => {
                if let Some(member) = m.get_mut(change.member_id) {
                    member.is_learner = false;
                }
            }
            member_change::Kind::Remove => {
                m.members.retain(|x| x.id != change.member_id);
                if !m.removed.contains(&change.member_id) {
                    m.removed.push(change.member_id);
                }
            }
        });
        tracing::info!(
            index,
            member = format_args!("{:x}", change.member_id),
            kind = ?change.kind(),
            "membership changed"
        );
        let answer = match refusal {
            Some(r) => Applied::MembershipRefused(r),
            None => Applied::Membership(membership),
        };
        self.answer(change.id, Ok(answer));
    }

    fn install_snapshot(&mut self, index: u64, path: &std::path::Path, raft_state: Batch) {
        let engine = self.writer.engine().clone();
        self.watch_hub.begin_install();
        if let Err(e) = snapshot::install(&engine, path, raft_state) {
            panic!("installing the snapshot at {index} failed (fail-stop): {e}");
        }
        self.writer = Writer::open(engine.clone())
            .unwrap_or_else(|e| panic!("reopening the store after a snapshot: {e}"));
        self.watch_hub.finish_install(self.writer.revision());
        let leases = mvcc::Store::new(engine.clone())
            .leases()
            .unwrap_or_else(|e| panic!("reading leases after a snapshot: {e}"));
        self.lessor.reload(leases);
        let alarms = Alarms::load(&engine)
            .unwrap_or_else(|e| panic!("reading alarms after a snapshot: {e}"));
        self.alarms.send_replace(alarms);
        let auth = AuthState::load(&engine)
            .unwrap_or_else(|e| panic!("reading auth state after a snapshot: {e}"));
        self.auth.send_replace(std::sync::Arc::new(auth));
        let membership = Membership::load(&engine)
            .unwrap_or_else(|e| panic!("reading membership after a snapshot: {e}"))
            .map(|(m, _)| m)
            .unwrap_or_default();
        self.membership.send_replace(membership);
    }
}

fn fatal(index: u64, e: impl std::fmt::Display) -> ! {
    panic!("applying entry {index} failed in storage (fail-stop): {e}")
}
