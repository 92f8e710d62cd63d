//! The API's side of metrics: `GET /metrics` (on the client URLs and `--listen-metrics-urls`) and
//! the gRPC layer that counts every call of etcd's services as go-grpc-prometheus does.
//!
//! The layer sits inside the admission checks, as etcd's interceptor chain puts
//! `grpc_prometheus` after its own (a call refused for `no leader` or to a learner is not counted),
//! and wraps the JSON gateway's in-process calls too (etcd's gateway is a gRPC client of itself).
//! It counts messages by their gRPC framing (a 5-byte prefix: flag, big-endian length) in the
//! request and response bodies, and takes the status from the trailers (or, for an answer without
//! a body, from the headers). A call whose response is dropped before its status was sent (the
//! client went away) ends as `Canceled`, as a Go handler sees its context canceled.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tower::{Layer, Service};

use super::{Core, ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::metrics::grpc::{MethodMetrics, CODE_CANCELED};
use crate::metrics::{ServerState, METRICS};

/// The gRPC status of a response that ended without one.
const CODE_UNKNOWN: u32 = 2;

/// `/metrics`: Prometheus's text format (any HTTP method, as Go's `promhttp` handler).
pub(super) async fn metrics(State(core): State<Arc<Core>>) -> Response {
    // RocksDB properties and /proc are read on a blocking thread.
    let text = tokio::task::spawn_blocking(move || crate::metrics::encode(&server_state(&core)))
        .await
        .expect("encoding metrics does not panic");
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn server_state(core: &Core) -> ServerState {
    let status = core.raft.status();
    let watch = core.watch_hub.counts();
    ServerState {
        member_id: core.member_id,
        server_version: ETCD_VERSION,
        cluster_version: ETCD_CLUSTER_VERSION
            .rsplit_once('.')
            .map_or(ETCD_CLUSTER_VERSION, |(major_minor, _)| major_minor),
        is_learner: core.is_learner(),
        has_leader: status.leader_id != 0,
        is_leader: status.is_leader,
        committed_index: status.commit_index,
        applied_index: core.raft.applied_index(),
        // `--quota-backend-bytes` (0 when there is none).
        quota_backend_bytes: core.quota_bytes.unwrap_or(0),
        db_size_bytes: core.engine.state_size_bytes(),
        db_in_use_bytes: core.engine.state_live_bytes(),
        revision: core.store.current_revision().unwrap_or_default(),
        compact_revision: core.store.compact_revision().unwrap_or_default(),
        watch_streams: watch.streams,
        watchers: watch.watchers,
        slow_watchers: watch.unsynced,
    }
}

/// Counts the calls of etcd's gRPC methods that pass through it (see the module's comment).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S> Service<Request> for GrpcMetrics<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(method) = crate::metrics::grpc::method(req.uri().path()) else {
            return ResponseFuture {
                inner: self.inner.call(req),
                call: None,
            };
        };
        method.started();
        let req = req.map(|body| {
            Body::new(Received {
                inner: body,
                framing: Framing::default(),
                method,
            })
        });
        ResponseFuture {
            inner: self.inner.call(req),
            call: Some(Call {
                method,
                start: Instant::now(),
                ended: false,
            }),
        }
    }
}

/// One counted call, from its start until its status is known; dropped before that, it ends as
/// `Canceled`.
struct Call {
    method: &'static MethodMetrics,
    start: Instant,
    ended: bool,
}

impl Call {
    fn end(&mut self, code: u32) {
        if !self.ended {
            self.ended = true;
            self.method.handled(code, self.start.elapsed());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.end(CODE_CANCELED);
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

pub struct ResponseFuture<F> {
    inner: F,
    call: Option<Call>,
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = match ready!(Pin::new(&mut this.inner).poll(cx)) {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let Some(mut call) = this.call.take() else {
            return Poll::Ready(Ok(response));
        };
        // A "trailers-only" answer (an error before any message) carries its status in the headers.
        if let Some(code) = grpc_status(response.headers()) {
            call.end(code);
            return Poll::Ready(Ok(response));
        }
        Poll::Ready(Ok(response.map(|body| {
            Body::new(Sent {
                inner: body,
                framing: Framing::default(),
                call,
            })
        })))
    }
}

/// Finds the messages in one direction of a call, across body chunks of any size.
#[derive(Debug, Default)]
struct Framing {
    prefix: [u8; 5],
    prefix_len: usize,
    /// The payload length of the message being read.
    message_len: u64,
    /// Its payload bytes still to come.
    remaining: u64,
}

impl Framing {
    /// Reads `data`; calls `message(payload length)` once for every message it completes.
    fn feed(&mut self, mut data: &[u8], mut message: impl FnMut(u64)) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    message(self.message_len);
                }
                continue;
            }
            let n = (self.prefix.len() - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == self.prefix.len() {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                self.message_len = u32::from_be_bytes([a, b, c, d]).into();
                self.remaining = self.message_len;
                if self.message_len == 0 {
                    message(0);
                }
            }
        }
    }
}

/// A request body whose messages are counted as they are read.
struct Received {
    inner: Body,
    framing: Framing,
    method: &'static MethodMetrics,
}

impl HttpBody for Received {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
            let method = this.method;
            this.framing.feed(data, |len| {
                method.msg_received.inc();
                METRICS.client_grpc_received_bytes.inc_by(len);
            });
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body whose messages are counted as they are sent; its trailers end the call.
struct Sent {
    inner: Body,
    framing: Framing,
    call: Call,
}

impl HttpBody for Sent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    let method = this.call.method;
                    this.framing.feed(data, |len| {
                        method.msg_sent.inc();
                        METRICS.client_grpc_sent_bytes.inc_by(len);
                    });
                } else if let Some(trailers) = f.trailers_ref() {
                    this.call.end(grpc_status(trailers).unwrap_or(CODE_UNKNOWN));
                }
            }
            // The body broke off: the client sees a reset stream, not a status.
            Some(Err(_)) => {}
            None => this.call.end(CODE_UNKNOWN),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::metrics::grpc::test_count;

    #[test]
    fn framing_finds_messages_split_across_chunks() {
        let wire: Vec<u8> = [&b"abc"[..], b"", &[7u8; 300][..]]
            .iter()
            .flat_map(|p| framed(p).to_vec())
            .collect();
        for chunk in [1, 2, 4, 5, 6, 7, wire.len()] {
            let mut framing = Framing::default();
            let mut seen = vec![];
            for piece in wire.chunks(chunk) {
                framing.feed(piece, |len| seen.push(len));
            }
            assert_eq!(seen, vec![3, 0, 300], "chunks of {chunk}");
        }
    }

    fn framed(payload: &[u8]) -> Bytes {
        let mut b = vec![0u8];
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        b.into()
    }

    fn body(frames: Vec<Frame<Bytes>>) -> Body {
        let frames = futures::stream::iter(frames).map(Ok::<_, Infallible>);
        Body::new(http_body_util::StreamBody::new(frames))
    }

    fn trailers(code: &str) -> Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", code.parse().unwrap());
        Frame::trailers(t)
    }

    /// Runs one call through the layer to a service that reads the whole request, then answers
    /// `response`.
    async fn call(path: &str, request: Vec<Bytes>, response: Response) -> Response {
        let mut response = Some(response);
        let inner = tower::service_fn(move |req: Request| {
            let response = response.take().expect("one call");
            Box::pin(async move {
                req.into_body().collect().await.unwrap();
                Ok::<_, Infallible>(response)
            }) as Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>
        });
        let req = Request::builder()
            .uri(path)
            .body(body(request.into_iter().map(Frame::data).collect()))
            .unwrap();
        GrpcMetricsLayer.layer(inner).oneshot(req).await.unwrap()
    }

    // Each test uses its own methods: the counters are process-wide.

    #[tokio::test]
    async fn a_call_counts_its_messages_and_its_status_from_the_trailers() {
        let path = "/etcdserverpb.Maintenance/Hash";
        let bytes_in = METRICS.client_grpc_received_bytes.get();
        let bytes_out = METRICS.client_grpc_sent_bytes.get();
        let answer = body(vec![
            Frame::data(framed(b"first")),
            Frame::data(framed(b"second")),
            trailers("0"),
        ]);
        let resp = call(path, vec![framed(b"ask")], Response::new(answer)).await;
        assert_eq!(test_count(path, "started"), 1);
        assert_eq!(test_count(path, "received"), 1);
        assert_eq!(test_count(path, "OK"), 0, "not before the trailers");
        resp.into_body().collect().await.unwrap();
        assert_eq!(test_count(path, "sent"), 2);
        assert_eq!(test_count(path, "OK"), 1);
        assert!(METRICS.client_grpc_received_bytes.get() >= bytes_in + 3);
        assert!(METRICS.client_grpc_sent_bytes.get() >= bytes_out + 11);
    }

    #[tokio::test]
    async fn an_answer_without_body_has_its_status_in_the_headers() {
        let path = "/etcdserverpb.Maintenance/MoveLeader";
        let mut error = Response::new(Body::empty());
        error
            .headers_mut()
            .insert("grpc-status", "9".parse().unwrap());
        let resp = call(path, vec![framed(b"x")], error).await;
        assert_eq!(test_count(path, "FailedPrecondition"), 1);
        resp.into_body().collect().await.unwrap();
        assert_eq!(test_count(path, "FailedPrecondition"), 1);
        assert_eq!(test_count(path, "Unknown"), 0);
        assert_eq!(test_count(path, "sent"), 0);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_status_is_canceled() {
        let path = "/etcdserverpb.Watch/Watch";
        let stream = body(vec![Frame::data(framed(b"created"))]);
        let resp = call(path, vec![framed(b"create")], Response::new(stream)).await;
        drop(resp);
        assert_eq!(test_count(path, "Canceled"), 1);
        let path = "/etcdserverpb.Maintenance/Defragment";
        let resp = call(path, vec![], Response::new(body(vec![]))).await;
        resp.into_body().collect().await.unwrap();
        assert_eq!(test_count(path, "Unknown"), 1, "ended without a status");
    }

    #[tokio::test]
    async fn other_paths_pass_through_uncounted() {
        let answer = body(vec![Frame::data(framed(b"x")), trailers("0")]);
        let resp = call("/cairnpb.Peer/Members", vec![], Response::new(answer)).await;
        resp.into_body().collect().await.unwrap();
        assert!(crate::metrics::grpc::method("/cairnpb.Peer/Members").is_none());
    }
}
