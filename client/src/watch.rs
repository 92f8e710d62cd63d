//! Watches that survive their member: [`Watch::watch`] returns a [`Watcher`], an async `Stream`
//! of typed events.
//!
//! Each watcher has its own gRPC stream, owned by a background task. The task remembers the
//! next revision the consumer has not seen (`next_rev`: the last delivered event's revision +
//! 1, or the revision after a progress notification or after the created header of a watch
//! "from now"). When the stream fails for any reason but a definite one (connection lost,
//! member killed or stopped, member lost its leader — watches always carry `hasleader`, so a
//! member cut off from the quorum ends them with `no leader`), the task opens a new stream on
//! another member from `next_rev`, with backoff. Events below `next_rev` are dropped, so the
//! consumer sees every revision once, in order, whole (fragments are reassembled), with no gap.
//! A start revision that has been compacted away meanwhile ends the watcher with
//! [`Error::WatchCompacted`]: the consumer must re-read the state and watch again.
//!
//! **Invariant:** `next_rev` only grows, and every event delivered has a revision ≥ the
//! `next_rev` before it and < the one after it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::watch_create_request::FilterType;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse as PbWatchResponse,
};
use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::KeyValue;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{delivery_of, Delivery, Error, Result};
use crate::namespace::Namespace;
use crate::prefix_end;
use crate::transport::{jittered, Pool};

/// Responses buffered between the watch task and the consumer (back-pressure beyond that:
/// the task stops reading and the server's flow control holds the rest).
const WATCH_BUFFER_RESPONSES_MAX: usize = 64;
/// First pause before a failed watch stream is reopened.
const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause before a failed watch stream is reopened.
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Most events held while a fragmented response is reassembled.
const FRAGMENT_EVENTS_MAX: usize = 1_000_000;

/// The Watch service. Get one with [`Client::watch`](crate::Client::watch).
#[derive(Clone)]
pub struct Watch {
    pub(crate) pool: Arc<Pool>,
    pub(crate) ns: Namespace,
}

/// What a watch covers and how.
///
/// ```
/// use cairn_client::WatchOptions;
/// let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(42);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    range_end: Option<RangeEnd>,
    start_revision: i64,
    prev_kv: bool,
    progress_notify: bool,
    no_put: bool,
    no_delete: bool,
}

#[derive(Debug, Clone)]
enum RangeEnd {
    Prefix,
    FromKey,
    End(Vec<u8>),
}

impl WatchOptions {
    /// The key alone, from the current revision on.
    pub fn new() -> Self {
        Self::default()
    }
    /// Every key starting with the key.
    pub fn with_prefix(mut self) -> Self {
        self.range_end = Some(RangeEnd::Prefix);
        self
    }
    /// Every key at or after the key.
    pub fn with_from_key(mut self) -> Self {
        self.range_end = Some(RangeEnd::FromKey);
        self
    }
    /// The keys from the key (inclusive) to `end` (exclusive).
    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = Some(RangeEnd::End(end.into()));
        self
    }
    /// Start at `revision` (replaying history from there) instead of after the current one.
    pub fn with_start_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }
    /// Include each key's previous value in its events.
    pub fn with_prev_key(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Ask the server for periodic progress notifications (empty responses whose revision
    /// says every event up to it was delivered) on quiet watches.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
    /// Leave out put events.
    pub fn with_no_put(mut self) -> Self {
        self.no_put = true;
        self
    }
    /// Leave out delete events.
    pub fn with_no_delete(mut self) -> Self {
        self.no_delete = true;
        self
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted (the event's `kv` holds the key and the deletion revision).
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: the key, and `mod_revision` = the deletion's).
    pub kv: KeyValue,
    /// The key before the change, if the watch asked for it and the key existed.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// What a [`Watcher`] yields: the events of one or more whole revisions, in order, or a
/// progress notification (no events).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchResponse {
    /// The server's header; its revision is the store's revision when the response was sent.
    pub header: ResponseHeader,
    /// The events, in revision order.
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// The header revision.
    pub fn revision(&self) -> i64 {
        self.header.revision
    }
    /// Whether this is a progress notification: no events, every event up to
    /// [`WatchResponse::revision`] has been delivered.
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
    }
}

enum Control {
    RequestProgress,
}

/// A running watch: a `Stream` of [`WatchResponse`]s that resumes by itself on another member
/// (see the module docs). It ends after yielding an error that cannot be resumed from
/// ([`Error::WatchCompacted`], [`Error::WatchCanceled`], permission denied, ...). Dropping it
/// cancels the watch.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use futures::StreamExt;
/// use cairn_client::WatchOptions;
/// let mut watcher = client.watch().watch("config/", WatchOptions::new().with_prefix()).await?;
/// while let Some(resp) = watcher.next().await {
///     for event in resp?.events {
///         println!("{:?} {:?} at {}", event.kind, event.kv.key, event.revision());
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Watcher {
    rx: mpsc::Receiver<Result<WatchResponse>>,
    ctl: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
    created_revision: i64,
}

impl Watcher {
    /// The store's revision when the watch was first created: with no start revision, the
    /// watcher sees exactly the events after it.
    pub fn created_revision(&self) -> i64 {
        self.created_revision
    }

    /// Asks for a progress notification (etcd ≥ 3.4): an empty response whose revision tells
    /// how far the watch has got, once it has caught up.
    pub async fn request_progress(&self) -> Result<()> {
        self.ctl
            .send(Control::RequestProgress)
            .await
            .map_err(|_| Error::WatchCanceled {
                reason: "the watcher has ended".into(),
            })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Watcher {
    type Item = Result<WatchResponse>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Watch {
    /// Starts watching `key` (or the range the options make of it). Returns once the server
    /// has created the watch, so every change after [`Watcher::created_revision`] will be
    /// seen; fails if no member could create it within the request deadline.
    pub async fn watch(&self, key: impl Into<Vec<u8>>, options: WatchOptions) -> Result<Watcher> {
        let key: Vec<u8> = key.into();
        let range_end = match &options.range_end {
            None => Vec::new(),
            Some(RangeEnd::Prefix) if key.is_empty() => vec![0],
            Some(RangeEnd::Prefix) => prefix_end(&key),
            Some(RangeEnd::FromKey) => vec![0],
            Some(RangeEnd::End(e)) => e.clone(),
        };
        let key = if key.is_empty() && !range_end.is_empty() {
            vec![0]
        } else {
            key
        };
        let mut filters = Vec::new();
        if options.no_put {
            filters.push(FilterType::Noput as i32);
        }
        if options.no_delete {
            filters.push(FilterType::Nodelete as i32);
        }
        let create = WatchCreateRequest {
            key: self.ns.key(&key),
            range_end: self.ns.range_end(&range_end),
            start_revision: options.start_revision,
            progress_notify: options.progress_notify,
            filters,
            prev_kv: options.prev_kv,
            watch_id: 0,
            fragment: true,
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER_RESPONSES_MAX);
        let (ctl_tx, ctl_rx) = mpsc::channel(4);
        let (created_tx, created_rx) = oneshot::channel();
        let task = WatchTask {
            pool: self.pool.clone(),
            ns: self.ns.clone(),
            create,
            next_rev: options.start_revision.max(0),
            tx,
            ctl: ctl_rx,
            created: Some(created_tx),
        };
        let task = tokio::spawn(task.run());
        match created_rx.await {
            Ok(Ok(created_revision)) => Ok(Watcher {
                rx,
                ctl: ctl_tx,
                task,
                created_revision,
            }),
            Ok(Err(e)) => {
                task.abort();
                Err(e)
            }
            Err(_) => {
                // The task ended without reporting: it must have panicked.
                task.abort();
                Err(Error::WatchCanceled {
                    reason: "watch task ended".into(),
                })
            }
        }
    }
}

/// Why a stream ended.
enum StreamEnd {
    /// The consumer went away: stop.
    Closed,
    /// A definite error was delivered: stop.
    Terminal,
    /// Transient: reopen elsewhere from `next_rev`.
    Retry,
}

struct WatchTask {
    pool: Arc<Pool>,
    ns: Namespace,
    create: WatchCreateRequest,
    /// The first revision the consumer has not seen; 0 = "now" until the first creation.
    next_rev: i64,
    tx: mpsc::Sender<Result<WatchResponse>>,
    ctl: mpsc::Receiver<Control>,
    /// Reports the first creation (or a failure before it) to `Watch::watch`.
    created: Option<oneshot::Sender<Result<i64>>>,
}

impl WatchTask {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        // Before the first creation, failing to reach any member within the request deadline
        // fails `watch()`; afterwards the task keeps trying for as long as the watcher lives.
        let first_deadline = Instant::now() + self.pool.options.request_timeout;
        let mut last_error: Option<Error> = None;
        loop {
            if self.created.is_some() && Instant::now() >= first_deadline {
                let e = last_error.take().unwrap_or(Error::DeadlineExceeded);
                let _ = self.created.take().expect("checked").send(Err(e));
                return;
            }
            match self.stream_once(&mut last_error).await {
                StreamEnd::Closed | StreamEnd::Terminal => return,
                StreamEnd::Retry => {}
            }
            failures += 1;
            let pause = jittered(REOPEN_BACKOFF_MIN, REOPEN_BACKOFF_MAX, failures.min(8));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.tx.closed() => return,
            }
            if failures > 3 {
                // A long outage: forget the streak slowly so a flapping member does not
                // pin the backoff at its maximum forever.
                failures = 3;
            }
        }
    }

    /// Delivers a definite error: to `watch()` before creation, to the consumer after.
    async fn fail(&mut self, e: Error) -> StreamEnd {
        match self.created.take() {
            Some(created) => {
                let _ = created.send(Err(e));
            }
            None => {
                let _ = self.tx.send(Err(e)).await;
            }
        }
        StreamEnd::Terminal
    }

    /// Opens one stream from `next_rev` and serves it until it ends.
    async fn stream_once(&mut self, last_error: &mut Option<Error>) -> StreamEnd {
        let deadline = Instant::now() + self.pool.options.request_timeout;
        let picked = match self.pool.pick(deadline).await {
            Ok(p) => p,
            Err(e) => {
                *last_error = Some(e);
                return StreamEnd::Retry;
            }
        };
        let mut create = self.create.clone();
        if self.next_rev > 0 {
            create.start_revision = self.next_rev;
        }
        let (req_tx, req_rx) = mpsc::channel::<WatchRequest>(4);
        req_tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await
            .expect("the receiver is alive");
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(req_rx));
        self.pool.decorate(&mut request, true);
        let mut client = WatchClient::new(picked.channel).max_decoding_message_size(usize::MAX);
        let opened = tokio::select! {
            r = tokio::time::timeout_at(deadline, client.watch(request)) => r,
            _ = self.tx.closed() => return StreamEnd::Closed,
        };
        let mut stream = match opened {
            Err(_) => {
                self.pool.report_failure(&picked.uri);
                *last_error = Some(Error::DeadlineExceeded);
                return StreamEnd::Retry;
            }
            Ok(Err(status)) => return self.on_status(&picked.uri, status, last_error).await,
            Ok(Ok(resp)) => resp.into_inner(),
        };
        let mut fragments: Vec<cairn_proto::mvccpb::Event> = Vec::new();
        let mut created_here = false;
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                ctl = self.ctl.recv() => {
                    if let Some(Control::RequestProgress) = ctl {
                        let _ = req_tx
                            .send(WatchRequest {
                                request_union: Some(RequestUnion::ProgressRequest(
                                    WatchProgressRequest {},
                                )),
                            })
                            .await;
                    }
                    continue;
                }
                _ = self.tx.closed() => return StreamEnd::Closed,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    // The server ended the stream without a status (it is shutting down).
                    self.pool.report_failure(&picked.uri);
                    *last_error = Some(Error::Stopped);
                    return StreamEnd::Retry;
                }
                Err(status) => return self.on_status(&picked.uri, status, last_error).await,
            };
            if resp.created && !created_here {
                created_here = true;
                self.pool.report_ok(&picked.uri);
                let rev = resp.header.as_ref().map_or(0, |h| h.revision);
                if self.next_rev == 0 {
                    self.next_rev = rev + 1;
                }
                if let Some(created) = self.created.take() {
                    if created.send(Ok(rev)).is_err() {
                        return StreamEnd::Closed;
                    }
                }
            }
            if resp.canceled {
                let e = if resp.compact_revision > 0 {
                    Error::WatchCompacted {
                        compact_revision: resp.compact_revision,
                    }
                } else {
                    match Error::from_status(tonic::Status::unknown(resp.cancel_reason.clone())) {
                        e if e.is_unavailable() => {
                            self.pool.report_failure(&picked.uri);
                            *last_error = Some(e);
                            return StreamEnd::Retry;
                        }
                        Error::Status(_) => Error::WatchCanceled {
                            reason: resp.cancel_reason.clone(),
                        },
                        e => e,
                    }
                };
                return self.fail(e).await;
            }
            if resp.fragment {
                if fragments.len() + resp.events.len() > FRAGMENT_EVENTS_MAX {
                    return self
                        .fail(Error::WatchCanceled {
                            reason: "fragmented revision too large".into(),
                        })
                        .await;
                }
                fragments.extend(resp.events);
                continue;
            }
            let mut resp = resp;
            if !fragments.is_empty() {
                fragments.append(&mut resp.events);
                resp.events = std::mem::take(&mut fragments);
            }
            if let Some(out) = self.deliverable(resp) {
                if self.tx.send(Ok(out)).await.is_err() {
                    return StreamEnd::Closed;
                }
            }
        }
    }

    /// Classifies a failed stream: transient failures are retried elsewhere.
    async fn on_status(
        &mut self,
        uri: &str,
        status: tonic::Status,
        last_error: &mut Option<Error>,
    ) -> StreamEnd {
        let delivery = delivery_of(&status);
        let e = Error::from_status(status);
        if delivery != Delivery::Answered || e.is_unavailable() {
            self.pool.report_failure(uri);
            *last_error = Some(e);
            return StreamEnd::Retry;
        }
        if matches!(e, Error::InvalidAuthToken) && self.pool.options.user.is_some() {
            let deadline = Instant::now() + self.pool.options.request_timeout;
            let stale = self.pool.current_token();
            if let Err(e) = self.pool.refresh_token(stale, deadline).await {
                *last_error = Some(e);
            }
            return StreamEnd::Retry;
        }
        self.fail(e).await
    }

    /// The consumer's view of a response: events already delivered dropped, keys stripped of
    /// the namespace; `None` if nothing is left to say. Advances `next_rev`.
    fn deliverable(&mut self, resp: PbWatchResponse) -> Option<WatchResponse> {
        let header = resp.header.unwrap_or_default();
        if resp.events.is_empty() {
            if resp.created || resp.canceled {
                return None;
            }
            // A progress notification: everything up to the header revision was sent.
            self.next_rev = self.next_rev.max(header.revision + 1);
            return Some(WatchResponse {
                header,
                events: Vec::new(),
            });
        }
        let floor = self.next_rev;
        let mut events = Vec::with_capacity(resp.events.len());
        for e in resp.events {
            let Some(mut kv) = e.kv else { continue };
            if kv.mod_revision < floor {
                tracing::debug!(
                    revision = kv.mod_revision,
                    "dropping an event already delivered"
                );
                continue;
            }
            debug_assert!(
                kv.mod_revision + 1 >= self.next_rev,
                "events arrive in revision order"
            );
            self.next_rev = kv.mod_revision + 1;
            self.ns.strip_kv(&mut kv);
            let prev_kv = e.prev_kv.map(|mut p| {
                self.ns.strip_kv(&mut p);
                p
            });
            let kind = if e.r#type == EventType::Delete as i32 {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            events.push(Event { kind, kv, prev_kv });
        }
        if events.is_empty() {
            return None;
        }
        Some(WatchResponse { header, events })
    }
}
