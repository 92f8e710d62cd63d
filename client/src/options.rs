//! [`ConnectOptions`]: how the client reaches and authenticates to the cluster.

use std::time::Duration;

/// Default overall deadline of one request, retries included.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default time allowed to open a TCP connection to one endpoint.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
/// Default interval of HTTP/2 keep-alive pings on a connection with open streams. etcd refuses
/// pings more often than every 5 s (`--grpc-keepalive-min-time`), so this stays above that.
pub const KEEP_ALIVE_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// Default time to wait for a keep-alive ping's answer before declaring the connection dead.
pub const KEEP_ALIVE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default interval between endpoint refreshes from `MemberList`.
pub const AUTO_SYNC_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);

/// How to connect: timeouts, keep-alives, endpoint discovery, credentials.
///
/// ```
/// use std::time::Duration;
/// use cairn_client::ConnectOptions;
///
/// let options = ConnectOptions::new()
///     .with_timeout(Duration::from_secs(5))
///     .with_user("root", "secret")
///     .with_auto_sync_interval(Some(Duration::from_secs(60)));
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) keep_alive_interval: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) auto_sync_interval: Option<Duration>,
    pub(crate) require_leader: bool,
    pub(crate) user: Option<(String, String)>,
    pub(crate) tls: Option<TlsOptions>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            keep_alive_interval: KEEP_ALIVE_INTERVAL_DEFAULT,
            keep_alive_timeout: KEEP_ALIVE_TIMEOUT_DEFAULT,
            auto_sync_interval: Some(AUTO_SYNC_INTERVAL_DEFAULT),
            require_leader: false,
            user: None,
            tls: None,
        }
    }
}

impl ConnectOptions {
    /// The defaults: 10 s per request (retries included), 3 s to connect, keep-alive pings every
    /// 10 s on busy connections, endpoints refreshed from `MemberList` every 30 s, no auth.
    pub fn new() -> Self {
        Self::default()
    }

    /// The overall deadline of one request, retries on other members included. Also the longest
    /// a watch or keep-alive waits for a member before it reports the cluster unreachable.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long to wait for a TCP connection to one endpoint before trying another.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// HTTP/2 keep-alive: ping every `interval` while streams are open, and drop the connection
    /// (failing over its requests and streams) if a ping is not answered within `timeout`.
    /// Keep `interval` at 5 s or more: etcd closes connections that ping more often.
    pub fn with_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive_interval = interval;
        self.keep_alive_timeout = timeout;
        self
    }

    /// Refresh the endpoint list from `MemberList` at connect and then every `interval`
    /// (`None`: use exactly the endpoints given). Learners and members without client URLs are
    /// left out. The default is every 30 s.
    pub fn with_auto_sync_interval(mut self, interval: Option<Duration>) -> Self {
        self.auto_sync_interval = interval;
        self
    }

    /// Send `hasleader: true` with every request and stream (Go's `WithRequireLeader`): a member
    /// without a leader then fails at once with [`Error::NoLeader`](crate::Error::NoLeader)
    /// instead of waiting. Watches and keep-alives always require a leader.
    pub fn with_require_leader(mut self, require: bool) -> Self {
        self.require_leader = require;
        self
    }

    /// Authenticate as `user` (etcd's `Authenticate`) and send the token with every request.
    /// The token is fetched on first use and refreshed when a member answers
    /// `invalid auth token` (an expired simple token, or a member that restarted).
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// Use TLS (rustls) for `https://` endpoints; `http://` ones stay in clear. A CA is required;
    /// bad PEM fails the connect with [`Error::InvalidArgument`](crate::Error::InvalidArgument).
    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// TLS settings (PEM): the CA that signs the servers' certificates, and optionally a client
/// certificate and key for mutual TLS (`--client-cert-auth`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) domain: Option<String>,
}

impl TlsOptions {
    /// No CA, no client certificate, the endpoint's host as the server name.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust servers whose certificates chain to this CA (PEM).
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Present this client certificate and private key (PEM) for mutual TLS.
    pub fn with_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity_pem = Some((cert.into(), key.into()));
        self
    }

    /// Expect this name in the servers' certificates instead of the endpoint's host.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }
}
