//! [`Session`]: a lease kept alive in the background (Go's `concurrency.Session`).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::lease::{LeaseGrantOptions, LeaseKeeper};
use crate::Client;

/// Go's default session TTL, seconds.
pub const SESSION_TTL_DEFAULT_SECS: i64 = 60;

/// Options of [`Session::new`].
#[derive(Debug, Clone)]
pub struct SessionOptions {
    ttl_secs: i64,
    lease: Option<i64>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ttl_secs: SESSION_TTL_DEFAULT_SECS,
            lease: None,
        }
    }
}

impl SessionOptions {
    /// A new lease of 60 s.
    pub fn new() -> Self {
        Self::default()
    }
    /// The TTL of the session's lease: how long its locks and candidacies outlive the process
    /// if it dies without closing the session.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl_secs = (ttl.as_secs() as i64).max(1);
        self
    }
    /// Use (and keep alive) an existing lease instead of granting one.
    pub fn with_lease(mut self, id: i64) -> Self {
        self.lease = Some(id);
        self
    }
}

/// A lease kept alive until the session is closed or dropped. Locks, elections and other
/// keys attached to it vanish when the process holding it dies (after the TTL) or closes it.
/// Clones share the session.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use std::time::Duration;
/// use cairn_client::concurrency::{Session, SessionOptions};
/// let session = Session::new(&client, SessionOptions::new().with_ttl(Duration::from_secs(10))).await?;
/// // ... use it for a Mutex or an Election ...
/// session.close().await?; // revoke: release everything at once
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    lease: i64,
    ttl_secs: i64,
    keeper: std::sync::Mutex<Option<LeaseKeeper>>,
    /// A second view of the keeper's state for `done()`, usable without the lock.
    loss: tokio::sync::watch::Receiver<bool>,
}

impl Session {
    /// Grants a lease (or takes the given one) and starts keeping it alive.
    pub async fn new(client: &Client, options: SessionOptions) -> Result<Session> {
        let lease_api = client.lease();
        let (id, ttl_secs) = match options.lease {
            Some(id) => (id, options.ttl_secs),
            None => {
                let g = lease_api
                    .grant(options.ttl_secs, LeaseGrantOptions::new())
                    .await?;
                (g.id, g.ttl)
            }
        };
        let keeper = lease_api.keep_alive(id).await?;
        let (loss_tx, loss_rx) = tokio::sync::watch::channel(false);
        let watched = keeper.state_receiver();
        tokio::spawn(async move {
            let mut watched = watched;
            // Ends when the keeper reports the loss or is dropped (closed, orphaned).
            let _ = watched.wait_for(|s| !s.is_alive()).await;
            let _ = loss_tx.send(true);
        });
        Ok(Session {
            inner: Arc::new(Inner {
                client: client.clone(),
                lease: id,
                ttl_secs,
                keeper: std::sync::Mutex::new(Some(keeper)),
                loss: loss_rx,
            }),
        })
    }

    /// The session's lease id.
    pub fn lease(&self) -> i64 {
        self.inner.lease
    }

    /// The lease's TTL in seconds.
    pub fn ttl_secs(&self) -> i64 {
        self.inner.ttl_secs
    }

    /// The client the session was made with (and its namespace).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Whether the lease is still kept alive.
    pub fn is_alive(&self) -> bool {
        !*self.inner.loss.borrow()
    }

    /// Resolves when the lease is no longer kept alive: lost (expired, revoked, unreachable
    /// past its TTL), or the session was closed or orphaned. Go's `Session.Done()`.
    pub async fn done(&self) {
        let mut loss = self.inner.loss.clone();
        let _ = loss.wait_for(|lost| *lost).await;
    }

    /// [`Session::done`], as the error that ended the session.
    pub(crate) async fn expired(&self) -> Error {
        self.done().await;
        Error::SessionExpired
    }

    /// Stops the keep-alive without revoking the lease (it expires after its TTL); returns
    /// the lease id. Go's `Orphan`.
    pub fn orphan(&self) -> i64 {
        self.inner
            .keeper
            .lock()
            .expect("keeper lock poisoned")
            .take();
        self.inner.lease
    }

    /// Stops the keep-alive and revokes the lease, deleting every key attached to it (the
    /// session's locks and candidacies end at once).
    pub async fn close(&self) -> Result<()> {
        self.orphan();
        match self.inner.client.lease().revoke(self.inner.lease).await {
            Ok(_) | Err(Error::LeaseNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
