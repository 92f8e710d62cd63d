//! The endpoint pool and the retry policy: every request of the client goes through here.
//!
//! [`Pool`] owns the list of endpoints (one lazily connected tonic `Channel` each) and their
//! health. A request picks the next endpoint round-robin among those not backing off; a failure
//! that points at the member (connection refused or lost, `no leader`, ...) puts the endpoint
//! in exponential backoff so the next attempt goes elsewhere. [`Pool::unary`] runs one RPC under
//! the request deadline and retries it on another member only when that is safe:
//!
//! - a request that never left the client (connect failure) or that the server refused before
//!   executing it (learner, `too many requests`, stale auth token) is retried whatever it is;
//! - a request whose outcome is unknown (`Unavailable` after it was sent: connection lost,
//!   leader changed, server-side timeout) is retried only if it is idempotent (reads, status,
//!   keep-alives, transactions the caller marked idempotent) — never a write, which could
//!   otherwise be applied twice (Go clientv3's `isSafeRetryMutableRPC` draws the same line).
//!
//! **Boundary:** this module knows nothing of keys or services; it moves requests and
//! classifies failures. It never holds a lock across an `.await`.

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use cairn_proto::etcdserverpb::auth_client::AuthClient;
use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::{AuthenticateRequest, MemberListRequest, MemberListResponse};
use rand::Rng;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::tls::TlsConnector;

use crate::error::{delivery_of, wants_new_token, Delivery, Error, Result};
use crate::options::ConnectOptions;

/// First pause before an endpoint that failed is tried again.
const ENDPOINT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause before an endpoint that keeps failing is tried again.
const ENDPOINT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// First pause between two attempts of one request.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest pause between two attempts of one request.
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Shortest time one attempt of an idempotent request gets before it is tried elsewhere.
const ATTEMPT_TIMEOUT_MIN: Duration = Duration::from_millis(500);
/// Most endpoints the client keeps (a cluster has at most a handful of members).
const ENDPOINTS_MAX: usize = 64;

/// How a request may be retried on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Retry only when the request certainly was not executed (writes).
    IfNotExecuted,
    /// Retry on any transient failure (reads and other idempotent requests).
    Idempotent,
}

/// One endpoint and its health.
struct EndpointState {
    uri: String,
    channel: Channel,
    /// Consecutive failures; 0 = healthy.
    failures: u32,
    /// Not picked before this instant (unless every endpoint is backing off).
    retry_at: Option<Instant>,
}

struct Endpoints {
    list: Vec<EndpointState>,
    /// Round-robin cursor.
    next: usize,
}

/// The endpoint a request was sent to, to report its outcome.
#[derive(Clone)]
pub(crate) struct Picked {
    pub(crate) uri: String,
    pub(crate) channel: Channel,
}

/// Endpoints, their connections and health, credentials: shared by every handle of a client.
pub(crate) struct Pool {
    endpoints: Mutex<Endpoints>,
    pub(crate) options: ConnectOptions,
    /// The TLS transport, when the options ask for it.
    tls: Option<TlsConnector>,
    token: RwLock<Option<String>>,
    /// Serialises re-authentication so that a burst of `invalid auth token` answers makes one
    /// `Authenticate` call.
    auth_lock: tokio::sync::Mutex<()>,
}

impl Pool {
    /// A pool over `uris` (validated, deduplicated). Connections are made on first use.
    pub(crate) fn new(uris: &[String], options: ConnectOptions) -> Result<Arc<Pool>> {
        let tls = options.tls.as_ref().map(TlsConnector::new).transpose()?;
        let mut list = Vec::new();
        for uri in uris {
            let uri = normalize(uri)?;
            if !list.iter().any(|e: &EndpointState| e.uri == uri) {
                let channel = make_channel(&uri, &options, tls.as_ref())?;
                list.push(EndpointState {
                    uri,
                    channel,
                    failures: 0,
                    retry_at: None,
                });
            }
        }
        if list.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        }
        Ok(Arc::new(Pool {
            endpoints: Mutex::new(Endpoints { list, next: 0 }),
            options,
            tls,
            token: RwLock::new(None),
            auth_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// A pool over one already connected channel (the single-endpoint [`crate::Client::connect`]).
    pub(crate) fn with_channel(
        uri: String,
        channel: Channel,
        options: ConnectOptions,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            endpoints: Mutex::new(Endpoints {
                list: vec![EndpointState {
                    uri,
                    channel,
                    failures: 0,
                    retry_at: None,
                }],
                next: 0,
            }),
            options,
            tls: None,
            token: RwLock::new(None),
            auth_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The endpoints currently in use.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        let eps = self.endpoints.lock().expect("endpoint lock poisoned");
        eps.list.iter().map(|e| e.uri.clone()).collect()
    }

    fn endpoint_count(&self) -> usize {
        self.endpoints
            .lock()
            .expect("endpoint lock poisoned")
            .list
            .len()
    }

    /// The channel of one endpoint, if it is in the pool.
    pub(crate) fn channel_of(&self, uri: &str) -> Option<Picked> {
        let uri = normalize(uri).ok()?;
        let eps = self.endpoints.lock().expect("endpoint lock poisoned");
        eps.list.iter().find(|e| e.uri == uri).map(|e| Picked {
            uri: e.uri.clone(),
            channel: e.channel.clone(),
        })
    }

    /// A channel to `uri`, from the pool if it is there, otherwise a new lazy one.
    pub(crate) fn channel_to(&self, uri: &str) -> Result<Picked> {
        if let Some(p) = self.channel_of(uri) {
            return Ok(p);
        }
        let uri = normalize(uri)?;
        let channel = make_channel(&uri, &self.options, self.tls.as_ref())?;
        Ok(Picked { uri, channel })
    }

    /// Replaces the endpoint list, keeping the connections of endpoints that stay.
    pub(crate) fn set_endpoints(&self, uris: &[String]) -> Result<()> {
        let mut fresh = Vec::new();
        for uri in uris.iter().take(ENDPOINTS_MAX) {
            let uri = normalize(uri)?;
            if !fresh.contains(&uri) {
                fresh.push(uri);
            }
        }
        if fresh.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        }
        let mut made = Vec::new();
        for uri in &fresh {
            if self.channel_of(uri).is_none() {
                made.push((
                    uri.clone(),
                    make_channel(uri, &self.options, self.tls.as_ref())?,
                ));
            }
        }
        let mut eps = self.endpoints.lock().expect("endpoint lock poisoned");
        let mut old = std::mem::take(&mut eps.list);
        for uri in fresh {
            if let Some(i) = old.iter().position(|e| e.uri == uri) {
                eps.list.push(old.swap_remove(i));
            } else if let Some(i) = made.iter().position(|(u, _)| *u == uri) {
                let (uri, channel) = made.swap_remove(i);
                eps.list.push(EndpointState {
                    uri,
                    channel,
                    failures: 0,
                    retry_at: None,
                });
            }
        }
        eps.next = 0;
        Ok(())
    }

    /// The next endpoint to use: round-robin over the healthy ones; when every endpoint is
    /// backing off, waits (until `deadline` at most) for the first to come back.
    pub(crate) async fn pick(&self, deadline: Instant) -> Result<Picked> {
        loop {
            let wait_until = {
                let mut eps = self.endpoints.lock().expect("endpoint lock poisoned");
                let now = Instant::now();
                let n = eps.list.len();
                let start = eps.next;
                let mut found = None;
                for i in 0..n {
                    let idx = (start + i) % n;
                    if eps.list[idx].retry_at.is_none_or(|t| t <= now) {
                        found = Some(idx);
                        break;
                    }
                }
                match found {
                    Some(idx) => {
                        eps.next = (idx + 1) % n;
                        let e = &eps.list[idx];
                        return Ok(Picked {
                            uri: e.uri.clone(),
                            channel: e.channel.clone(),
                        });
                    }
                    None => eps
                        .list
                        .iter()
                        .filter_map(|e| e.retry_at)
                        .min()
                        .expect("every endpoint is backing off"),
                }
            };
            if wait_until >= deadline {
                return Err(Error::DeadlineExceeded);
            }
            tokio::time::sleep_until(wait_until).await;
        }
    }

    /// Records that a request on `uri` succeeded.
    pub(crate) fn report_ok(&self, uri: &str) {
        let mut eps = self.endpoints.lock().expect("endpoint lock poisoned");
        if let Some(e) = eps.list.iter_mut().find(|e| e.uri == uri) {
            e.failures = 0;
            e.retry_at = None;
        }
    }

    /// Records that `uri` failed in a way that points at the member: it backs off.
    pub(crate) fn report_failure(&self, uri: &str) {
        let mut eps = self.endpoints.lock().expect("endpoint lock poisoned");
        let many = eps.list.len() > 1;
        if let Some(e) = eps.list.iter_mut().find(|e| e.uri == uri) {
            e.failures = e.failures.saturating_add(1);
            // With a single endpoint there is nowhere else to go: keep its backoff short.
            let backoff = if many {
                jittered(ENDPOINT_BACKOFF_MIN, ENDPOINT_BACKOFF_MAX, e.failures)
            } else {
                ENDPOINT_BACKOFF_MIN
            };
            e.retry_at = Some(Instant::now() + backoff);
        }
    }

    /// Adds the auth token and `hasleader` to a request.
    pub(crate) fn decorate<T>(&self, request: &mut tonic::Request<T>, require_leader: bool) {
        if let Some(token) = self.token.read().expect("token lock poisoned").as_ref() {
            if let Ok(v) = MetadataValue::try_from(token.as_str()) {
                request.metadata_mut().insert("token", v);
            }
        }
        if require_leader || self.options.require_leader {
            request
                .metadata_mut()
                .insert("hasleader", MetadataValue::from_static("true"));
        }
    }

    /// Whether a token must be fetched before the first request.
    fn needs_token(&self) -> bool {
        self.options.user.is_some() && self.token.read().expect("token lock poisoned").is_none()
    }

    /// Fetches a new token with `Authenticate` unless another task replaced `stale` meanwhile.
    pub(crate) async fn refresh_token(
        &self,
        stale: Option<String>,
        deadline: Instant,
    ) -> Result<()> {
        let Some((name, password)) = self.options.user.clone() else {
            return Err(Error::InvalidAuthToken);
        };
        let _one = self.auth_lock.lock().await;
        if *self.token.read().expect("token lock poisoned") != stale {
            return Ok(());
        }
        let req = AuthenticateRequest { name, password };
        // Boxed: `unary_inner` may call back here (on a stale token), a recursion.
        let resp = Box::pin(self.unary_inner(
            Retry::Idempotent,
            deadline,
            false,
            req,
            |ch, r| async move { AuthClient::new(ch).authenticate(r).await },
        ))
        .await?;
        *self.token.write().expect("token lock poisoned") = Some(resp.token);
        Ok(())
    }

    pub(crate) fn current_token(&self) -> Option<String> {
        self.token.read().expect("token lock poisoned").clone()
    }

    /// Runs one RPC with the client's deadline and retry policy (see the module doc).
    pub(crate) async fn unary<Req, Resp, F, Fut>(
        &self,
        retry: Retry,
        req: Req,
        call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.options.request_timeout;
        self.unary_until(retry, deadline, req, call).await
    }

    /// [`Pool::unary`] with a deadline of the caller's choice (blocking calls such as the
    /// server-side lock wait longer than the request timeout).
    pub(crate) async fn unary_until<Req, Resp, F, Fut>(
        &self,
        retry: Retry,
        deadline: Instant,
        req: Req,
        call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        if self.needs_token() {
            self.refresh_token(None, deadline).await?;
        }
        self.unary_inner(retry, deadline, true, req, call).await
    }

    async fn unary_inner<Req, Resp, F, Fut>(
        &self,
        retry: Retry,
        deadline: Instant,
        with_token: bool,
        req: Req,
        call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut attempt: u32 = 0;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let picked = self.pick(deadline).await?;
            let mut request = tonic::Request::new(req.clone());
            let token = if with_token {
                self.current_token()
            } else {
                None
            };
            if with_token {
                self.decorate(&mut request, false);
            } else if self.options.require_leader {
                request
                    .metadata_mut()
                    .insert("hasleader", MetadataValue::from_static("true"));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            // An idempotent request leaves itself time for a second attempt elsewhere in case
            // its member hangs (paused, partitioned); others get the whole deadline.
            let attempt_timeout = if retry == Retry::Idempotent && self.endpoint_count() > 1 {
                (remaining / 2).max(ATTEMPT_TIMEOUT_MIN).min(remaining)
            } else {
                remaining
            };
            request.set_timeout(attempt_timeout);
            let status =
                match tokio::time::timeout(attempt_timeout, call(picked.channel, request)).await {
                    Err(_) => {
                        // Our own deadline: the member did not answer in time.
                        self.report_failure(&picked.uri);
                        if retry == Retry::Idempotent && Instant::now() < deadline {
                            continue;
                        }
                        return Err(Error::DeadlineExceeded);
                    }
                    Ok(Ok(resp)) => {
                        self.report_ok(&picked.uri);
                        return Ok(resp.into_inner());
                    }
                    Ok(Err(status)) => status,
                };
            let delivery = delivery_of(&status);
            let retryable = match delivery {
                Delivery::NotSent => true,
                Delivery::Refused => {
                    if wants_new_token(&status) {
                        if reauthenticated || self.options.user.is_none() {
                            return Err(Error::from_status(status));
                        }
                        reauthenticated = true;
                        self.refresh_token(token, deadline).await?;
                        continue;
                    }
                    true
                }
                Delivery::Unknown => retry == Retry::Idempotent,
                Delivery::Answered => false,
            };
            if delivery != Delivery::Answered {
                self.report_failure(&picked.uri);
            }
            let pause = jittered(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX, attempt);
            if !retryable || Instant::now() + pause >= deadline {
                return Err(Error::from_status(status));
            }
            tracing::debug!(endpoint = %picked.uri, error = %status.message(), attempt, "retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Opens a stream on some endpoint, retrying connection failures until the deadline. Used
    /// by watch, keep-alive, observe: opening a stream changes nothing on the server, so it is
    /// always safe to retry.
    pub(crate) async fn open_stream<Req, S, F, Fut>(
        &self,
        deadline: Instant,
        req: Req,
        open: F,
    ) -> Result<(S, String)>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<S>, tonic::Status>>,
    {
        if self.needs_token() {
            self.refresh_token(None, deadline).await?;
        }
        let mut attempt: u32 = 0;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let picked = self.pick(deadline).await?;
            let token = self.current_token();
            let mut request = tonic::Request::new(req.clone());
            self.decorate(&mut request, true);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let status = match tokio::time::timeout(remaining, open(picked.channel, request)).await
            {
                Err(_) => {
                    self.report_failure(&picked.uri);
                    return Err(Error::DeadlineExceeded);
                }
                Ok(Ok(resp)) => return Ok((resp.into_inner(), picked.uri)),
                Ok(Err(status)) => status,
            };
            let delivery = delivery_of(&status);
            if wants_new_token(&status) && !reauthenticated && self.options.user.is_some() {
                reauthenticated = true;
                self.refresh_token(token, deadline).await?;
                continue;
            }
            if delivery == Delivery::Answered
                && !Error::from_status(status.clone()).is_unavailable()
            {
                return Err(Error::from_status(status));
            }
            self.report_failure(&picked.uri);
            let pause = jittered(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX, attempt);
            if Instant::now() + pause >= deadline {
                return Err(Error::from_status(status));
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Refreshes the endpoints from `MemberList`: the client URLs of voting members.
    pub(crate) async fn sync_endpoints(&self) -> Result<()> {
        let resp: MemberListResponse = self
            .unary(
                Retry::Idempotent,
                MemberListRequest::default(),
                |ch, r| async move { ClusterClient::new(ch).member_list(r).await },
            )
            .await?;
        let urls: Vec<String> = resp
            .members
            .iter()
            .filter(|m| !m.is_learner)
            .flat_map(|m| m.client_ur_ls.iter().cloned())
            .filter(|u| u.starts_with("http://"))
            .collect();
        if urls.is_empty() {
            return Ok(());
        }
        self.set_endpoints(&urls)
    }
}

/// Refreshes `pool`'s endpoints every `interval` while any handle of the client is alive.
pub(crate) fn spawn_auto_sync(pool: &Arc<Pool>, interval: Duration) {
    let weak: Weak<Pool> = Arc::downgrade(pool);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(pool) = weak.upgrade() else { return };
            if let Err(e) = pool.sync_endpoints().await {
                tracing::debug!(error = %e, "endpoint sync failed");
            }
        }
    });
}

/// `http://host:port` or `https://host:port` without a trailing slash (no scheme: `http`).
fn normalize(uri: &str) -> Result<String> {
    let uri = uri.trim().trim_end_matches('/');
    let uri = if uri.contains("://") {
        uri.to_string()
    } else {
        format!("http://{uri}")
    };
    if !uri.starts_with("http://") && !uri.starts_with("https://") {
        return Err(Error::InvalidArgument(format!(
            "{uri}: not an http:// or https:// URL"
        )));
    }
    Ok(uri)
}

/// A lazily connected channel to `uri`: through `tls` when given, in clear otherwise (an
/// `https://` endpoint without TLS options is refused).
fn make_channel(
    uri: &str,
    options: &ConnectOptions,
    tls: Option<&TlsConnector>,
) -> Result<Channel> {
    let endpoint = make_endpoint(uri, options)?;
    match tls {
        Some(tls) => Ok(tls.connect_lazy(endpoint)),
        None if uri.starts_with("https://") => Err(Error::InvalidArgument(format!(
            "{uri}: an https:// endpoint needs ConnectOptions::with_tls"
        ))),
        None => Ok(endpoint.connect_lazy()),
    }
}

fn make_endpoint(uri: &str, options: &ConnectOptions) -> Result<Endpoint> {
    let endpoint = Endpoint::from_shared(uri.to_string())
        .map_err(|e| Error::InvalidArgument(format!("{uri}: {e}")))?
        .connect_timeout(options.connect_timeout)
        .http2_keep_alive_interval(options.keep_alive_interval)
        .keep_alive_timeout(options.keep_alive_timeout)
        .keep_alive_while_idle(false)
        .tcp_nodelay(true);
    Ok(endpoint)
}

/// `min · 2^(n-1)` capped at `max`, with ±25 % jitter so that clients do not retry in step.
pub(crate) fn jittered(min: Duration, max: Duration, n: u32) -> Duration {
    let base = min
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(max);
    let factor = rand::rng().random_range(0.75..1.25);
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        assert_eq!(
            normalize("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize("http://127.0.0.1:2379/").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(normalize("https://a:1/").unwrap(), "https://a:1");
        assert!(matches!(
            normalize("ftp://a:1"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let d = jittered(Duration::from_millis(100), Duration::from_secs(1), 1);
        assert!(d >= Duration::from_millis(75) && d <= Duration::from_millis(125));
        let d = jittered(Duration::from_millis(100), Duration::from_secs(1), 30);
        assert!(d >= Duration::from_millis(750) && d <= Duration::from_millis(1250));
    }

    #[tokio::test]
    async fn failing_endpoints_are_skipped_while_backing_off() {
        let pool = Pool::new(
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            ConnectOptions::new(),
        )
        .unwrap();
        pool.report_failure("http://127.0.0.1:1");
        let deadline = Instant::now() + Duration::from_secs(1);
        for _ in 0..3 {
            assert_eq!(pool.pick(deadline).await.unwrap().uri, "http://127.0.0.1:2");
        }
        pool.report_ok("http://127.0.0.1:1");
        let a = pool.pick(deadline).await.unwrap().uri;
        let b = pool.pick(deadline).await.unwrap().uri;
        assert_ne!(a, b);
    }
}
