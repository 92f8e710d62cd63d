//! `etcdserverpb.Watch`: one task per gRPC stream multiplexes its watchers (etcd:
//! `api/v3rpc/watch.go`, `mvcc/watchable_store.go`).
//!
//! The task alone writes the stream's responses, so a watcher's `created` response always precedes
//! its events, and a `canceled` response follows its last one. Between requests it takes work from
//! the [`Hub`](crate::watch::Hub): deliveries queued by apply, or a catch-up step that reads history
//! (on a blocking thread). Responses go through a small bounded channel: a client that reads slowly
//! slows its own task, whose queue in the hub then fills and is replaced by catch-up from storage;
//! apply never waits.

use crate::auth::{Access, AuthError};
use std::collections::HashMap;
use std::sync::Arc;

use cairn_proto::etcdserverpb::watch_create_request::FilterType;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::watch_server::Watch;
use cairn_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use cairn_proto::mvccpb::Event;
use prost::Message;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Credentials;
use super::error::ApiError;
use super::Core;
use crate::raft::RaftError;
use crate::watch::{catch_up, Bounds, Delivery, End, WatchSpec, Work};

/// Responses buffered between a stream's task and gRPC.
const RESPONSES_BUFFERED: usize = 32;
/// Requests buffered between gRPC and a stream's task.
const REQUESTS_BUFFERED: usize = 64;
/// Consecutive leaderless checks (one per election timeout) after which a stream that requires a
/// leader is ended (etcd: `maxNoLeaderCnt`).
const NO_LEADER_CHECKS_MAX: u32 = 3;
/// etcd's reasons for refusing a watcher (sent as `cancel_reason`).
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// Cairn's reason, past `--max-watchers-per-stream` (etcd has no such limit).
const TOO_MANY_WATCHERS: &str = "cairn: too many watchers on this stream";

pub struct WatchService {
    core: Arc<Core>,
}

impl WatchService {
    pub fn new(core: Arc<Core>) -> WatchService {
        WatchService { core }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let requires_leader = request
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        // Checked at each create, as etcd does (the token may expire while the stream lives).
        let credentials = Credentials::from_metadata(request.metadata());
        let mut inbound = request.into_inner();
        let (requests, requests_rx) = mpsc::channel(REQUESTS_BUFFERED);
        let reader = tokio::spawn(async move {
            loop {
                let next = inbound.message().await.transpose();
                let ended = !matches!(next, Some(Ok(_)));
                if let Some(next) = next {
                    if requests.send(next).await.is_err() {
                        return;
                    }
                }
                if ended {
                    return;
                }
            }
        });
        let (responses, responses_rx) = mpsc::channel(RESPONSES_BUFFERED);
        let task = StreamTask::new(
            self.core.clone(),
            responses,
            requires_leader,
            credentials,
            reader,
        );
        tokio::spawn(task.run(requests_rx));
        Ok(Response::new(ReceiverStream::new(responses_rx)))
    }
}

/// The client has gone: the stream's task ends.
struct Gone;

/// What the stream remembers of a watcher it created.
struct Local {
    progress_notify: bool,
    fragment: bool,
    /// Whether it got events since the last progress tick.
    had_events: bool,
    /// False once canceled for compaction: its id stays taken until the client cancels it.
    live: bool,
}

struct StreamTask {
    core: Arc<Core>,
    stream: u64,
    wake: Arc<Notify>,
    responses: mpsc::Sender<Result<WatchResponse, Status>>,
    requires_leader: bool,
    /// What the stream was opened with, to say who calls.
    credentials: Credentials,
    watchers: HashMap<i64, Local>,
    next_id: i64,
    /// A `WatchProgressRequest` waits for every watcher to be synced.
    progress_requested: bool,
    /// The progress-notify interval passed since the last notifications.
    progress_due: bool,
    /// The task reading the client's requests: stopped with this one, so that the request half of
    /// the HTTP/2 stream is released too (a stopping server then closes the connection).
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for StreamTask {
    fn drop(&mut self) {
        self.reader.abort();
        self.core.watch_hub.close_stream(self.stream);
    }
}

impl StreamTask {
    fn new(
        core: Arc<Core>,
        responses: mpsc::Sender<Result<WatchResponse, Status>>,
        requires_leader: bool,
        credentials: Credentials,
        reader: tokio::task::JoinHandle<()>,
    ) -> StreamTask {
        let (stream, wake) = core.watch_hub.open_stream();
        StreamTask {
            core,
            stream,
            wake,
            responses,
            requires_leader,
            credentials,
            watchers: HashMap::new(),
            next_id: 0,
            progress_requested: false,
            progress_due: false,
            reader,
        }
    }

    async fn run(mut self, mut requests: mpsc::Receiver<Result<WatchRequest, Status>>) {
        let interval = self.core.watch_progress_notify_interval;
        let mut progress =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let election = self.core.election_timeout;
        let mut leader_check =
            tokio::time::interval_at(tokio::time::Instant::now() + election, election);
        let mut leaderless = 0;
        let mut requests_open = true;
        loop {
            while requests_open {
                match requests.try_recv() {
                    Ok(Ok(req)) => {
                        if self.handle(req).await.is_err() {
                            return;
                        }
                    }
                    Ok(Err(_)) => return,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => requests_open = false,
                }
            }
            let busy = match self.core.watch_hub.take(self.stream) {
                Work::Deliver {
                    deliveries,
                    synced_through,
                } => self.deliver(deliveries, synced_through).await.map(|_| true),
                Work::CatchUp(plan) => self.catch_up(plan).await.map(|_| true),
                Work::Idle { revision } => self.synced(revision).await.map(|_| false),
                Work::Wait => Ok(false),
                Work::Closed => {
                    let status = Status::from(ApiError::from(RaftError::Stopped));
                    let _ = self.responses.send(Err(status)).await;
                    return;
                }
            };
            match busy {
                Ok(true) => continue,
                Ok(false) => {}
                Err(Gone) => return,
            }
            tokio::select! {
                req = requests.recv(), if requests_open => match req {
                    Some(Ok(req)) => {
                        if self.handle(req).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(_)) => return,
                    None => requests_open = false,
                },
                _ = self.wake.notified() => {}
                _ = progress.tick() => self.progress_due = true,
                _ = leader_check.tick(), if self.requires_leader => {
                    if self.core.raft.status().leader_id == 0 {
                        leaderless += 1;
                    } else {
                        leaderless = 0;
                    }
                    if leaderless >= NO_LEADER_CHECKS_MAX {
                        let status = Status::from(ApiError::from(RaftError::NoLeader));
                        let _ = self.responses.send(Err(status)).await;
                        return;
                    }
                }
                _ = self.responses.closed() => return,
            }
        }
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Gone> {
        self.responses.send(Ok(response)).await.map_err(|_| Gone)
    }

    fn response(&self, revision: i64, watch_id: i64) -> WatchResponse {
        WatchResponse {
            header: self.core.header(revision),
            watch_id,
            ..WatchResponse::default()
        }
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_none() {
                    return Ok(());
                }
                self.core.watch_hub.remove(self.stream, c.watch_id);
                let mut resp = self.response(self.core.watch_hub.revision(), c.watch_id);
                resp.canceled = true;
                self.send(resp).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let bounds = match c.range_end.as_ref() {
            [] => Some(Bounds::Key(c.key.to_vec())),
            [0] => Some(Bounds::Range(c.key.to_vec(), End::Unbounded)),
            end if c.key.as_ref() < end => {
                Some(Bounds::Range(c.key.to_vec(), End::Key(end.to_vec())))
            }
            _ => None,
        };
        let id = if c.watch_id == 0 {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        } else {
            c.watch_id
        };
        let Some(bounds) = bounds else {
            return self.refuse(EMPTY_RANGE).await;
        };
        // Needs READ on the range; a refusal is a canceled watcher naming the gRPC error.
        let permitted = self.core.caller_with(&self.credentials).and_then(|caller| {
            self.core.permit(&caller, |s, u| {
                s.permits(u, Access::Read, &c.key, &c.range_end)
                    .then_some(())
                    .ok_or(AuthError::PermissionDenied)
            })
        });
        if let Err(e) = permitted {
            let status = Status::from(e);
            let reason = format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            );
            return self.refuse(&reason).await;
        }
        if self.watchers.contains_key(&id) {
            return self.refuse(DUPLICATE_ID).await;
        }
        let max = self.core.max_watchers_per_stream;
        if self.watchers.len() >= max {
            let reason = format!("{TOO_MANY_WATCHERS} (--max-watchers-per-stream={max})");
            return self.refuse(&reason).await;
        }
        if c.watch_id == 0 {
            self.next_id += 1;
        }
        let filters = |f: FilterType| c.filters.contains(&(f as i32));
        let spec = WatchSpec {
            bounds,
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            prev_kv: c.prev_kv,
        };
        self.watchers.insert(
            id,
            Local {
                progress_notify: c.progress_notify,
                fragment: c.fragment,
                had_events: false,
                live: true,
            },
        );
        let revision = self
            .core
            .watch_hub
            .add(self.stream, id, spec, c.start_revision);
        let mut resp = self.response(revision, id);
        resp.created = true;
        self.send(resp).await
    }

    /// Answers a create request that made no watcher (etcd: watch id -1, created and canceled).
    async fn refuse(&self, reason: &str) -> Result<(), Gone> {
        let mut resp = self.response(self.core.watch_hub.revision(), -1);
        resp.created = true;
        resp.canceled = true;
        resp.cancel_reason = reason.to_string();
        self.send(resp).await
    }

    /// Sends queued deliveries, one response per watcher (several revisions may share it; one
    /// revision never spans two, unless the watcher asked for fragments).
    async fn deliver(
        &mut self,
        deliveries: Vec<Delivery>,
        synced_through: Option<i64>,
    ) -> Result<(), Gone> {
        let revision = deliveries.last().map_or(0, |d| d.revision);
        let mut order: Vec<i64> = vec![];
        let mut merged: HashMap<i64, Vec<Event>> = HashMap::new();
        for delivery in deliveries {
            for (id, events) in delivery.events {
                merged
                    .entry(id)
                    .or_insert_with(|| {
                        order.push(id);
                        vec![]
                    })
                    .extend(events);
            }
        }
        for id in order {
            let events = merged.remove(&id).expect("every ordered id was merged");
            self.send_events(id, revision, events).await?;
        }
        if let Some(revision) = synced_through {
            self.synced(revision).await?;
        }
        Ok(())
    }

    async fn send_events(
        &mut self,
        id: i64,
        revision: i64,
        events: Vec<Event>,
    ) -> Result<(), Gone> {
        let Some(local) = self.watchers.get_mut(&id).filter(|w| w.live) else {
            // Canceled after these events were queued.
            return Ok(());
        };
        local.had_events = true;
        let fragment = local.fragment;
        let mut resp = self.response(revision, id);
        resp.events = events;
        if !fragment || resp.encoded_len() < self.core.max_request_bytes || resp.events.len() < 2 {
            return self.send(resp).await;
        }
        for part in fragments(resp, self.core.max_request_bytes) {
            self.send(part).await?;
        }
        Ok(())
    }

    /// Reads one window of history for the unsynced watchers and sends it.
    async fn catch_up(&mut self, plan: catch_up::Plan) -> Result<(), Gone> {
        let store = self.core.store.clone();
        let (plan, step) = tokio::task::spawn_blocking(move || {
            let step = plan.run(&store);
            (plan, step)
        })
        .await
        .expect("catch-up task does not panic");
        let step = match step {
            Ok(step) => step,
            Err(e) => {
                // Storage failed: end the stream; the client resumes elsewhere or later.
                let _ = self.responses.send(Err(ApiError::from(e).into())).await;
                return Err(Gone);
            }
        };
        if !self.core.watch_hub.still_valid(&plan) {
            return Ok(());
        }
        for &id in &step.compacted {
            if let Some(local) = self.watchers.get_mut(&id) {
                local.live = false;
                let mut resp = self.response(0, id);
                resp.canceled = true;
                resp.compact_revision = step.compact_revision;
                self.send(resp).await?;
            }
        }
        for (id, events) in step.events {
            self.send_events(id, step.revision, events).await?;
        }
        self.core
            .watch_hub
            .caught_up(self.stream, &step.advanced, &step.compacted);
        Ok(())
    }

    /// Every watcher has been given every event up to `revision`: answer a pending progress
    /// request, and send due progress notifications.
    async fn synced(&mut self, revision: i64) -> Result<(), Gone> {
        if self.progress_requested {
            self.progress_requested = false;
            self.send(self.response(revision, -1)).await?;
        }
        if self.progress_due {
            self.progress_due = false;
            let idle: Vec<i64> = self
                .watchers
                .iter()
                .filter(|(_, w)| w.live && w.progress_notify && !w.had_events)
                .map(|(&id, _)| id)
                .collect();
            for w in self.watchers.values_mut() {
                w.had_events = false;
            }
            for id in idle {
                self.send(self.response(revision, id)).await?;
            }
        }
        Ok(())
    }
}

/// Splits a response whose events exceed `limit` bytes into parts marked `fragment` (all but the
/// last), each holding at least one event and, beyond its first, staying below the limit (etcd:
/// `sendFragments`).
fn fragments(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    let mut parts = vec![];
    let mut events = resp.events.into_iter().peekable();
    let empty = WatchResponse {
        events: vec![],
        fragment: true,
        ..resp
    };
    while events.peek().is_some() {
        let mut part = empty.clone();
        while let Some(event) = events.peek() {
            let grown = part.encoded_len() + event.encoded_len() + 2;
            if !part.events.is_empty() && grown >= limit {
                break;
            }
            part.events.push(events.next().expect("peeked"));
        }
        part.fragment = events.peek().is_some();
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cairn_proto::mvccpb::KeyValue;

    fn event(value_len: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![b'v'; value_len]),
                ..KeyValue::default()
            }),
            ..Event::default()
        }
    }

    #[test]
    fn fragments_keep_every_event_in_order_and_mark_all_but_the_last() {
        let resp = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|i| event(100 + i)).collect(),
            ..WatchResponse::default()
        };
        let parts = fragments(resp.clone(), 350);
        assert!(parts.len() > 1);
        let flags: Vec<bool> = parts.iter().map(|p| p.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|&f| f) && !flags[flags.len() - 1]);
        for p in &parts {
            assert_eq!(p.watch_id, 3);
            assert!(p.events.len() == 1 || p.encoded_len() < 350);
        }
        let rejoined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, resp.events);
    }

    #[test]
    fn an_event_above_the_limit_is_a_part_of_its_own() {
        let resp = WatchResponse {
            events: vec![event(10), event(1000), event(10)],
            ..WatchResponse::default()
        };
        let parts = fragments(resp, 200);
        let sizes: Vec<usize> = parts.iter().map(|p| p.events.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
    }
}
