//! The Lease API and [`LeaseKeeper`], the background keep-alive.
//!
//! A keeper owns a task with one `LeaseKeepAlive` stream. It renews every TTL/3 (as Go's
//! clientv3 does) and gives each renewal at most TTL/3 (≥ 1 s) to be answered; a stream that
//! fails or stalls is reopened on another member with backoff. The keeper knows when the lease
//! would expire if no renewal got through (the send time of the last answered renewal + the
//! TTL it returned); if that moment passes, or the server answers TTL 0 (the lease expired or
//! was revoked), the lease is reported lost and the task stops.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::error::{delivery_of, Delivery, Error, Result};
use crate::namespace::Namespace;
use crate::transport::{jittered, Pool, Retry};

/// Shortest time a renewal may wait for its answer before the stream is reopened elsewhere.
const RENEWAL_ANSWER_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Shortest pause between two renewals.
const RENEWAL_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// First pause before a failed keep-alive stream is reopened.
const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause before a failed keep-alive stream is reopened.
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The Lease service. Get one with [`Client::lease`](crate::Client::lease).
#[derive(Clone)]
pub struct Lease {
    pub(crate) pool: Arc<Pool>,
    pub(crate) ns: Namespace,
}

fn lease_client(ch: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(ch)
}

/// Options of [`Lease::grant`].
#[derive(Debug, Clone, Default)]
pub struct LeaseGrantOptions {
    id: i64,
}

impl LeaseGrantOptions {
    /// Let the server choose the id.
    pub fn new() -> Self {
        Self::default()
    }
    /// Ask for this id (fails with [`Error::LeaseExists`] if it is taken).
    pub fn with_id(mut self, id: i64) -> Self {
        self.id = id;
        self
    }
}

impl Lease {
    /// Grants a lease of `ttl_secs` seconds (the server may raise it to its minimum). Not
    /// retried after an unknown outcome.
    pub async fn grant(
        &self,
        ttl_secs: i64,
        options: LeaseGrantOptions,
    ) -> Result<LeaseGrantResponse> {
        let req = LeaseGrantRequest {
            ttl: ttl_secs,
            id: options.id,
        };
        let resp: LeaseGrantResponse = self
            .pool
            .unary(Retry::IfNotExecuted, req, |ch, r| async move {
                lease_client(ch).lease_grant(r).await
            })
            .await?;
        if !resp.error.is_empty() {
            return Err(Error::from_status(tonic::Status::unknown(resp.error)));
        }
        Ok(resp)
    }

    /// Revokes lease `id`, deleting its keys.
    pub async fn revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        self.pool
            .unary(
                Retry::IfNotExecuted,
                LeaseRevokeRequest { id },
                |ch, r| async move { lease_client(ch).lease_revoke(r).await },
            )
            .await
    }

    /// Lease `id`'s remaining and granted TTL (TTL -1: the lease does not exist), and its keys
    /// with [`Lease::time_to_live_with_keys`].
    pub async fn time_to_live(&self, id: i64) -> Result<LeaseTimeToLiveResponse> {
        self.ttl(id, false).await
    }

    /// [`Lease::time_to_live`] with the attached keys (in a namespace: the ones inside it).
    pub async fn time_to_live_with_keys(&self, id: i64) -> Result<LeaseTimeToLiveResponse> {
        self.ttl(id, true).await
    }

    async fn ttl(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        let mut resp: LeaseTimeToLiveResponse = self
            .pool
            .unary(
                Retry::Idempotent,
                LeaseTimeToLiveRequest { id, keys },
                |ch, r| async move { lease_client(ch).lease_time_to_live(r).await },
            )
            .await?;
        if !self.ns.is_empty() {
            resp.keys.retain(|k| k.starts_with(&self.ns.0));
            resp.keys.iter_mut().for_each(|k| self.ns.strip(k));
        }
        Ok(resp)
    }

    /// Every lease's id.
    pub async fn leases(&self) -> Result<LeaseLeasesResponse> {
        self.pool
            .unary(
                Retry::Idempotent,
                LeaseLeasesRequest {},
                |ch, r| async move { lease_client(ch).lease_leases(r).await },
            )
            .await
    }

    /// Renews lease `id` once; returns its new TTL in seconds. Fails with
    /// [`Error::LeaseNotFound`] if the lease is gone.
    pub async fn keep_alive_once(&self, id: i64) -> Result<i64> {
        let deadline = Instant::now() + self.pool.options.request_timeout;
        let (mut stream, _) = self
            .pool
            .open_stream(deadline, (), move |ch, r: tonic::Request<()>| async move {
                let mut request =
                    tonic::Request::new(tokio_stream::iter([LeaseKeepAliveRequest { id }]));
                *request.metadata_mut() = r.metadata().clone();
                lease_client(ch).lease_keep_alive(request).await
            })
            .await?;
        let resp = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| Error::DeadlineExceeded)?
            .map_err(Error::from_status)?
            .ok_or(Error::Stopped)?;
        if resp.ttl <= 0 {
            return Err(Error::LeaseNotFound);
        }
        Ok(resp.ttl)
    }

    /// Keeps lease `id` alive in the background until the returned [`LeaseKeeper`] is dropped.
    /// The first renewal happens before this returns (so a lease that is already gone fails
    /// here with [`Error::LeaseNotFound`]).
    pub async fn keep_alive(&self, id: i64) -> Result<LeaseKeeper> {
        let (state_tx, state_rx) = watch::channel(KeeperState::Alive { ttl: 0 });
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(
            KeepAliveTask {
                pool: self.pool.clone(),
                id,
                state: state_tx,
                first: Some(first_tx),
            }
            .run(),
        );
        match first_rx.await {
            Ok(Ok(())) => Ok(LeaseKeeper {
                id,
                state: state_rx,
                task,
            }),
            Ok(Err(e)) => {
                task.abort();
                Err(e)
            }
            Err(_) => {
                task.abort();
                Err(Error::LeaseExpired { id })
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeeperState {
    /// Renewed; the TTL the last renewal returned.
    Alive { ttl: i64 },
    /// The server said the lease is gone, or no renewal got through before it would expire.
    Lost,
}

impl KeeperState {
    pub(crate) fn is_alive(&self) -> bool {
        matches!(self, KeeperState::Alive { .. })
    }
}

/// Keeps a lease alive in the background; see [`Lease::keep_alive`]. Dropping it stops the
/// renewals (the lease then expires after its TTL; revoke it to end it at once).
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{LeaseGrantOptions, PutOptions};
/// let lease = client.lease().grant(10, LeaseGrantOptions::new()).await?;
/// let keeper = client.lease().keep_alive(lease.id).await?;
/// client.kv().put("service/me", "addr", PutOptions::new().with_lease(lease.id)).await?;
/// let lost = keeper.lost().await; // resolves only if the lease is lost
/// eprintln!("{lost}");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LeaseKeeper {
    id: i64,
    state: watch::Receiver<KeeperState>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL the last renewal returned, or `None` once the lease is lost.
    pub fn ttl(&self) -> Option<i64> {
        match *self.state.borrow() {
            KeeperState::Alive { ttl } => Some(ttl),
            KeeperState::Lost => None,
        }
    }

    /// The keeper's state, to follow from elsewhere; the sender goes away with the keeper.
    pub(crate) fn state_receiver(&self) -> watch::Receiver<KeeperState> {
        self.state.clone()
    }

    /// Whether the lease is still kept alive.
    pub fn is_alive(&self) -> bool {
        self.ttl().is_some()
    }

    /// Resolves when the lease is lost (expired, revoked, or not renewable before it would
    /// expire), with [`Error::LeaseExpired`]; never while it is kept alive.
    pub async fn lost(&self) -> Error {
        let mut state = self.state.clone();
        let _ = state.wait_for(|s| *s == KeeperState::Lost).await;
        Error::LeaseExpired { id: self.id }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct KeepAliveTask {
    pool: Arc<Pool>,
    id: i64,
    state: watch::Sender<KeeperState>,
    /// Reports the first renewal to `Lease::keep_alive`.
    first: Option<oneshot::Sender<Result<()>>>,
}

impl KeepAliveTask {
    async fn run(mut self) {
        let first_deadline = Instant::now() + self.pool.options.request_timeout;
        let mut expires_at: Option<Instant> = None;
        let mut failures: u32 = 0;
        let mut last_error = Error::DeadlineExceeded;
        loop {
            let limit = expires_at.unwrap_or(first_deadline);
            if Instant::now() >= limit {
                tracing::warn!(lease = self.id, error = %last_error, "lease lost: no renewal got through before it expired");
                return self.lose(last_error);
            }
            match self.stream_once(limit, &mut expires_at).await {
                Ok(()) => return,
                Err(e) => last_error = e,
            }
            failures += 1;
            let pause = jittered(REOPEN_BACKOFF_MIN, REOPEN_BACKOFF_MAX, failures.min(6));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.state.closed() => return,
            }
        }
    }

    fn lose(&mut self, e: Error) {
        let _ = self.state.send(KeeperState::Lost);
        if let Some(first) = self.first.take() {
            let _ = first.send(Err(e));
        }
    }

    /// A failed stream: reopened elsewhere if the failure is transient, the end otherwise
    /// (the service is not implemented, permission denied, ...).
    fn on_status(&mut self, uri: &str, status: tonic::Status) -> Result<()> {
        let delivery = delivery_of(&status);
        let e = Error::from_status(status);
        if delivery != Delivery::Answered || e.is_unavailable() {
            self.pool.report_failure(uri);
            return Err(e);
        }
        tracing::warn!(lease = self.id, error = %e, "lease keep-alive refused");
        self.lose(e);
        Ok(())
    }

    /// Serves one stream. `Ok(())`: the task is done (lease lost or keeper dropped);
    /// `Err`: the stream failed and should be reopened.
    async fn stream_once(
        &mut self,
        limit: Instant,
        expires_at: &mut Option<Instant>,
    ) -> Result<()> {
        let picked = self.pool.pick(limit).await?;
        let (tx, rx) = mpsc::channel::<LeaseKeepAliveRequest>(2);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        self.pool.decorate(&mut request, true);
        let req = LeaseKeepAliveRequest { id: self.id };
        let mut sent_at = Instant::now();
        tx.send(req).await.expect("the receiver is alive");
        let mut client = lease_client(picked.channel);
        let opened = tokio::select! {
            r = tokio::time::timeout_at(limit, client.lease_keep_alive(request)) => r,
            _ = self.state.closed() => return Ok(()),
        };
        let mut stream = match opened {
            Err(_) => {
                self.pool.report_failure(&picked.uri);
                return Err(Error::DeadlineExceeded);
            }
            Ok(Err(status)) => return self.on_status(&picked.uri, status),
            Ok(Ok(s)) => s.into_inner(),
        };
        let mut answer_timeout = RENEWAL_ANSWER_TIMEOUT_MIN;
        loop {
            let wait_until = (Instant::now() + answer_timeout).min(expires_at.unwrap_or(limit));
            let msg = tokio::select! {
                m = tokio::time::timeout_at(wait_until, stream.message()) => m,
                _ = self.state.closed() => return Ok(()),
            };
            let resp = match msg {
                Err(_) => {
                    self.pool.report_failure(&picked.uri);
                    return Err(Error::DeadlineExceeded);
                }
                Ok(Err(status)) => return self.on_status(&picked.uri, status),
                Ok(Ok(None)) => {
                    self.pool.report_failure(&picked.uri);
                    return Err(Error::Stopped);
                }
                Ok(Ok(Some(resp))) => resp,
            };
            if resp.ttl <= 0 {
                tracing::warn!(lease = self.id, "lease lost: expired or revoked");
                let e = if self.first.is_some() {
                    Error::LeaseNotFound
                } else {
                    Error::LeaseExpired { id: self.id }
                };
                self.lose(e);
                return Ok(());
            }
            self.pool.report_ok(&picked.uri);
            let ttl = Duration::from_secs(resp.ttl as u64);
            *expires_at = Some(sent_at + ttl);
            let _ = self.state.send(KeeperState::Alive { ttl: resp.ttl });
            if let Some(first) = self.first.take() {
                let _ = first.send(Ok(()));
            }
            answer_timeout = (ttl / 3).max(RENEWAL_ANSWER_TIMEOUT_MIN);
            let next = (ttl / 3).max(RENEWAL_INTERVAL_MIN);
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = self.state.closed() => return Ok(()),
            }
            sent_at = Instant::now();
            if tx.send(req).await.is_err() {
                return Err(Error::Stopped);
            }
        }
    }
}
