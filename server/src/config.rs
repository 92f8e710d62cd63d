//! Command-line flags and `ETCD_*` environment variables, with etcd's names and defaults
//! (etcd: `server/etcdmain/help.go`, `server/embed/config.go`).
//!
//! An etcd flag whose feature Cairn does not have yet is refused by name — never accepted and
//! silently ignored. A flag set both on the command line and in the environment is an error, as in etcd.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::auth::jwt::{Jwt, JwtOptions, SignMethod};
use crate::auth::{TokenProvider, Tokens};
use crate::tls::{TlsPolicy, TlsSettings};

/// How long a JWT is valid when `--auth-token jwt,...` names no `ttl` (etcd's default).
const JWT_TTL_DEFAULT: Duration = Duration::from_secs(5 * 60);

/// etcd flags that Cairn recognises but does not implement yet; using one is an error.
const UNSUPPORTED_FLAGS: &[&str] = &[
    "config-file",
    "wal-dir",
    "snapshot-catchup-entries",
    "initial-election-tick-advance",
    "max-wals",
    "backend-bbolt-freelist-type",
    "backend-batch-interval",
    "backend-batch-limit",
    "grpc-keepalive-min-time",
    "grpc-keepalive-interval",
    "grpc-keepalive-timeout",
    "memory-mlock",
    "socket-reuse-port",
    "socket-reuse-address",
    "enable-grpc-gateway",
    "raft-read-timeout",
    "raft-write-timeout",
    "feature-gates",
    "listen-client-http-urls",
    "discovery",
    "discovery-srv",
    "discovery-srv-name",
    "discovery-token",
    "discovery-endpoints",
    "discovery-fallback",
    "discovery-proxy",
    "strict-reconfig-check",
    "pre-vote",
    "max-learners",
    "client-cert-file",
    "client-key-file",
    "peer-client-cert-file",
    "peer-client-key-file",
    "peer-skip-client-san-verification",
    "self-signed-cert-validity",
    "cors",
    "host-whitelist",
    "enable-pprof",
    "logger",
    "log-format",
    "log-outputs",
    "enable-log-rotation",
    "log-rotation-config-json",
    "warning-unary-request-duration",
    "warning-apply-duration",
    "enable-distributed-tracing",
    "experimental-enable-distributed-tracing",
    "distributed-tracing-address",
    "distributed-tracing-service-name",
    "distributed-tracing-instance-id",
    "distributed-tracing-sampling-rate",
    "compact-hash-check-time",
    "compaction-batch-limit",
    "experimental-compaction-batch-limit",
    "compaction-sleep-interval",
    "bootstrap-defrag-threshold-megabytes",
    "downgrade-check-time",
    "force-new-cluster",
    "unsafe-no-fsync",
    "v2-deprecation",
    "enable-v2",
    "enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint",
    "proxy",
];

/// Cairn's server flags (etcd's names, defaults and environment variables).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: an etcd-compatible, Raft-replicated key-value store",
    after_help = "Every flag can also be set with an ETCD_ environment variable: the flag's name in upper case, '-' as '_' (e.g. ETCD_DATA_DIR)."
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: ${name}.etcd].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (gRPC and HTTP on the same port).
    #[arg(long, default_value = "http://localhost:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,
    /// Client URLs of this member, as advertised to the cluster and clients.
    #[arg(long, default_value = "http://localhost:2379", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,
    /// URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub listen_peer_urls: Vec<String>,
    /// Peer URLs of this member, as advertised to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = 1_572_864)]
    pub max_request_bytes: u32,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: u32,
    /// Maximum concurrent streams that each client can open at a time (HTTP/2, per connection).
    #[arg(long, default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// Maximum watchers one watch stream holds at a time; creating one more is refused with a
    /// canceled response (a Cairn flag: etcd has no limit, nor has Cairn by default).
    #[arg(long, default_value_t = u32::MAX)]
    pub max_watchers_per_stream: u32,
    /// Auth token type: 'simple', or
    /// 'jwt,pub-key=<path>,priv-key=<path>,sign-method=<RS256|...|ES384>,ttl=<duration>'.
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// Seconds an idle simple token stays valid.
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost for hashing passwords (4 to 31).
    #[arg(long, default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Raise the NOSPACE alarm when the backend exceeds this many bytes (0: 2 GiB; negative: no quota).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub quota_backend_bytes: i64,
    /// Interpret --auto-compaction-retention as 'periodic' (a duration) or 'revision' (a count).
    #[arg(long, default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Auto compaction retention: a duration (1h, 30m; a bare number means hours) for 'periodic', a
    /// number of revisions for 'revision'. 0 disables auto compaction.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// Check the data against the other members' before serving clients.
    #[arg(
        long,
        alias = "experimental-initial-corrupt-check",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        action = clap::ArgAction::Set
    )]
    pub initial_corrupt_check: bool,
    /// How often the leader compares the members' hashes (0: never).
    #[arg(
        long,
        alias = "experimental-corrupt-check-time",
        default_value = "0s",
        value_parser = parse_go_duration
    )]
    pub corrupt_check_time: Duration,
    /// Number of committed transactions after which the raft log is truncated.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Duration of periodic watch progress notifications (e.g. 10m, 5s, 500ms).
    #[arg(
        long,
        alias = "experimental-watch-progress-notify-interval",
        default_value = "10m",
        value_parser = parse_go_duration
    )]
    pub watch_progress_notify_interval: Duration,
    /// URLs to listen on for metrics and health checks (`/metrics`, `/health`, `/livez`, `/readyz`,
    /// `/version`; no gRPC).
    #[arg(long, value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
    /// Level of detail for exported metrics: 'basic', or 'extensive' to include server side gRPC
    /// histogram metrics.
    #[arg(long, value_enum, default_value_t = MetricsLevel::Basic)]
    pub metrics: MetricsLevel,
    /// Path to the client server TLS cert file.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Enable client cert authentication (the certificate's common name is the user when auth is
    /// on and the request carries no token).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Path to the client certificate revocation list file (PEM or DER; read again when it
    /// changes). Needs --client-cert-auth.
    #[arg(long)]
    pub client_crl_file: Option<PathBuf>,
    /// Allowed TLS hostname for client cert authentication (a DNS name or IP address the client
    /// certificate's SANs must cover). Needs --client-cert-auth.
    #[arg(long)]
    pub client_cert_allowed_hostname: Option<String>,
    /// Client TLS using generated certificates.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub auto_tls: bool,
    /// Path to the peer server TLS cert file (also this member's client certificate to its peers).
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Path to the peer certificate revocation list file (PEM or DER; read again when it
    /// changes). Needs --peer-client-cert-auth.
    #[arg(long)]
    pub peer_crl_file: Option<PathBuf>,
    /// Required CN for client certs connecting to the peer endpoint (and for the certificates of
    /// the peers this member dials). Needs --peer-client-cert-auth.
    #[arg(long)]
    pub peer_cert_allowed_cn: Option<String>,
    /// Allowed TLS hostname for inter peer authentication (a DNS name or IP address the peer
    /// certificates' SANs must cover). Needs --peer-client-cert-auth.
    #[arg(long)]
    pub peer_cert_allowed_hostname: Option<String>,
    /// Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,
    /// Comma-separated list of supported TLS 1.2 cipher suites between client/server and peers
    /// (Go's names; empty: rustls's defaults).
    #[arg(long, value_delimiter = ',')]
    pub cipher_suites: Vec<String>,
    /// Minimum TLS version supported by cairn: TLS1.2 or TLS1.3 [default: TLS1.2].
    #[arg(long)]
    pub tls_min_version: Option<String>,
    /// Maximum TLS version supported by cairn: TLS1.2 or TLS1.3 [default: TLS1.3].
    #[arg(long)]
    pub tls_max_version: Option<String>,
    /// Log level: debug, info, warn, error, panic or fatal.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// `--metrics`: how much detail `/metrics` exports (etcd: `embed.Config.Metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsLevel {
    Basic,
    /// Adds `grpc_server_handling_seconds`, which etcd's `etcdGRPCRequestsSlow` alert reads.
    Extensive,
}

/// A bad command line: exits with status 2, like etcd's flag errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Parses and validates `args` (the program name first) against the environment.
    pub fn parse_from_env_and_args(
        args: Vec<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        for arg in args.iter().skip(1) {
            let name = arg.trim_start_matches('-').split('=').next().unwrap_or("");
            if arg.starts_with('-') && UNSUPPORTED_FLAGS.contains(&name) {
                return Err(unsupported(name));
            }
        }
        for name in UNSUPPORTED_FLAGS {
            if env(&env_name(name)).is_some() {
                return Err(ConfigError(format!(
                    "environment variable {} sets etcd flag --{name}, which cairn does not support yet",
                    env_name(name)
                )));
            }
        }
        let given = parse_matches(&args)?;
        let args = with_env(args, &given, env)?;
        let matches = parse_matches(&args)?;
        let cfg = Config::from_arg_matches(&matches).map_err(|e| ConfigError(e.to_string()))?;
        if matches.value_source("listen_client_urls") == Some(ValueSource::CommandLine)
            && matches.value_source("advertise_client_urls") == Some(ValueSource::DefaultValue)
        {
            return Err(ConfigError(
                "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                    .into(),
            ));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval == 0 {
            return Err(ConfigError("--heartbeat-interval must be positive".into()));
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            )));
        }
        if self.election_timeout > 50_000 {
            return Err(ConfigError(format!(
                "--election-timeout[{}ms] is too long, and should be set less than 50000ms",
                self.election_timeout
            )));
        }
        match self.initial_cluster_state.as_str() {
            "new" | "existing" => {}
            other => {
                return Err(ConfigError(format!(
                    "invalid value \"{other}\" for flag -initial-cluster-state: valid values are \"new\" or \"existing\""
                )))
            }
        }
        if !["debug", "info", "warn", "error", "panic", "fatal"].contains(&self.log_level.as_str())
        {
            return Err(ConfigError(format!(
                "unknown log level {:?} (debug, info, warn, error, panic, fatal)",
                self.log_level
            )));
        }
        let listen = [&self.listen_client_urls, &self.listen_peer_urls];
        for url in listen.into_iter().flatten() {
            parse_url(url)?;
        }
        for url in &self.listen_metrics_urls {
            if url.starts_with("https://") {
                return Err(ConfigError(format!(
                    "--listen-metrics-urls {url:?}: metrics URLs are served in clear only (http://)"
                )));
            }
            parse_url(url)?;
        }
        self.tls_policy().resolve().map_err(ConfigError)?;
        self.initial_cluster()?;
        self.auto_compaction()?;
        self.token_provider()?;
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(ConfigError(format!(
                "--bcrypt-cost {} is out of range [4, 31]",
                self.bcrypt_cost
            )));
        }
        Ok(())
    }

    /// The token provider `--auth-token` names, with its keys loaded (etcd:
    /// `auth.NewTokenProvider`; unknown JWT options are ignored, as etcd only warns of them).
    pub fn token_provider(&self) -> Result<TokenProvider, ConfigError> {
        let bad = |why: String| ConfigError(format!("--auth-token {:?}: {why}", self.auth_token));
        let mut parts = self.auth_token.split(',');
        match parts.next() {
            Some("simple") => {
                let ttl = Duration::from_secs(self.auth_token_ttl);
                return Ok(TokenProvider::Simple(Tokens::new(ttl)));
            }
            Some("jwt") => {}
            _ => return Err(bad("auth: invalid auth options (unknown token type)".into())),
        }
        let (mut public_key, mut private_key, mut sign_method, mut ttl) = (None, None, None, None);
        for option in parts {
            let (name, value) = option.split_once('=').unwrap_or((option, ""));
            match name {
                "pub-key" => public_key = Some(PathBuf::from(value)),
                "priv-key" => private_key = Some(PathBuf::from(value)),
                "sign-method" => sign_method = Some(value),
                "ttl" => ttl = Some(parse_go_duration(value).map_err(bad)?),
                _ => tracing::warn!(option, "unknown JWT option"),
            }
        }
        let sign_method = sign_method.ok_or_else(|| bad("sign-method is missing".into()))?;
        let options = JwtOptions {
            sign_method: SignMethod::parse(sign_method).map_err(|e| bad(e.to_string()))?,
            public_key,
            private_key,
            ttl: ttl.unwrap_or(JWT_TTL_DEFAULT),
        };
        let jwt = Jwt::load(&options).map_err(|e| bad(e.to_string()))?;
        Ok(TokenProvider::Jwt(std::sync::Arc::new(jwt)))
    }

    /// The client side's TLS flags.
    pub fn client_tls(&self) -> TlsSettings {
        TlsSettings {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            auto_tls: self.auto_tls,
            crl_file: non_empty_path(&self.client_crl_file),
            allowed_cn: None,
            allowed_hostname: non_empty(&self.client_cert_allowed_hostname),
        }
    }

    /// The peer side's TLS flags.
    pub fn peer_tls(&self) -> TlsSettings {
        TlsSettings {
            cert_file: self.peer_cert_file.clone(),
            key_file: self.peer_key_file.clone(),
            trusted_ca_file: self.peer_trusted_ca_file.clone(),
            client_cert_auth: self.peer_client_cert_auth,
            auto_tls: self.peer_auto_tls,
            crl_file: non_empty_path(&self.peer_crl_file),
            allowed_cn: non_empty(&self.peer_cert_allowed_cn),
            allowed_hostname: non_empty(&self.peer_cert_allowed_hostname),
        }
    }

    /// `--tls-min-version`, `--tls-max-version` and `--cipher-suites`.
    pub fn tls_policy(&self) -> TlsPolicy {
        TlsPolicy {
            min_version: self.tls_min_version.clone().filter(|v| !v.is_empty()),
            max_version: self.tls_max_version.clone().filter(|v| !v.is_empty()),
            cipher_suites: self.cipher_suites.clone(),
        }
    }

    /// `--quota-backend-bytes` as etcd reads it: 0 means the 2 GiB default, a negative value no quota.
    pub fn quota_backend_bytes(&self) -> Option<u64> {
        match self.quota_backend_bytes {
            q if q < 0 => None,
            0 => Some(DEFAULT_QUOTA_BYTES),
            q => Some(q as u64),
        }
    }

    /// `--auto-compaction-mode` and `--auto-compaction-retention`, or `None` when disabled.
    pub fn auto_compaction(&self) -> Result<Option<AutoCompaction>, ConfigError> {
        let retention = self.auto_compaction_retention.trim();
        let bad = || {
            ConfigError(format!(
                "invalid auto-compaction-retention {retention:?} for mode {:?}",
                self.auto_compaction_mode
            ))
        };
        let policy = match self.auto_compaction_mode.as_str() {
            "periodic" => {
                // etcd: a bare integer is a number of hours.
                let period = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => parse_go_duration(retention).map_err(|_| bad())?,
                };
                (!period.is_zero()).then_some(AutoCompaction::Periodic(period))
            }
            "revision" => {
                let keep = retention.parse::<i64>().map_err(|_| bad())?;
                (keep > 0).then_some(AutoCompaction::Revision(keep))
            }
            other => {
                return Err(ConfigError(format!(
                    "unknown auto-compaction-mode {other:?} (periodic or revision)"
                )))
            }
        };
        Ok(policy)
    }

    /// `--data-dir`, or `${name}.etcd`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    /// `--initial-cluster` as (name, peer URLs) pairs, in order of first appearance.
    pub fn initial_cluster(&self) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let text = match &self.initial_cluster {
            Some(t) => t.clone(),
            None => self
                .initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(","),
        };
        parse_initial_cluster(&text)
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval)
    }

    pub fn election_ticks(&self) -> usize {
        (self.election_timeout / self.heartbeat_interval) as usize
    }

    /// etcd's request timeout: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * Duration::from_millis(self.election_timeout)
    }

    /// The `tracing` filter directive for `--log-level`.
    pub fn log_filter(&self) -> &'static str {
        match self.log_level.as_str() {
            "debug" => "debug",
            "info" => "info",
            "warn" => "warn",
            _ => "error",
        }
    }
}

/// etcd's `DefaultQuotaBytes`.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// How the leader compacts history by itself (etcd: `server/etcdserver/api/v3compactor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the history of the last period.
    Periodic(Duration),
    /// Keep the last this many revisions.
    Revision(i64),
}

/// Parses an `--initial-cluster` value (`name=url,...`) into (name, peer URLs) pairs, in order of
/// first appearance; a name listed twice has several peer URLs.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut members: Vec<(String, Vec<String>)> = vec![];
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (name, url) = part.split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "--initial-cluster: {part:?} is not of the form name=url"
            ))
        })?;
        parse_url(url)?;
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(members)
}

/// A string flag's value; etcd's default, the empty string, means unset.
fn non_empty(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.is_empty())
}

fn non_empty_path(value: &Option<PathBuf>) -> Option<PathBuf> {
    value.clone().filter(|v| !v.as_os_str().is_empty())
}

fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.to_uppercase().replace('-', "_"))
}

fn unsupported(flag: &str) -> ConfigError {
    ConfigError(format!(
        "flag --{flag} is an etcd flag that cairn does not support yet"
    ))
}

fn parse_matches(args: &[String]) -> Result<ArgMatches, ConfigError> {
    Config::command()
        .try_get_matches_from(args)
        .map_err(|e| match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                e.exit()
            }
            _ => ConfigError(e.to_string()),
        })
}

/// Adds `--flag=value` for every `ETCD_<FLAG>` variable; a flag given both ways is an error.
fn with_env(
    mut args: Vec<String>,
    given: &ArgMatches,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ConfigError> {
    for arg in Config::command().get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        let names = std::iter::once(long).chain(arg.get_all_aliases().into_iter().flatten());
        let Some((var, value)) = names
            .map(env_name)
            .find_map(|var| env(&var).map(|value| (var, value)))
        else {
            continue;
        };
        if given.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            return Err(ConfigError(format!(
                "conflicting environment variable {var:?} is shadowed by corresponding command-line flag --{long} (either unset environment variable or disable flag)"
            )));
        }
        args.push(format!("--{long}={value}"));
    }
    Ok(args)
}

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal numbers with units ns, us
/// (or µs), ms, s, m, h, such as "10m", "1h30m" or "1.5s"; "0" alone is zero.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration {text:?}");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {text:?}"))?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// Splits an `http://host:port` or `https://host:port` URL into (host, port). Other schemes
/// (etcd's `unix://`, `unixs://`) are refused.
pub fn parse_url(url: &str) -> Result<(String, u16), ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            ConfigError(format!(
                "URL {url:?}: only http:// and https:// URLs are supported"
            ))
        })?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| ConfigError(format!("URL {url:?}: missing port")))?;
    let port = port
        .parse()
        .map_err(|_| ConfigError(format!("URL {url:?}: invalid port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut all = vec!["cairn".to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        Config::parse_from_env_and_args(all, &lookup)
    }

    #[test]
    fn defaults_follow_etcd() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.data_dir(), PathBuf::from("default.etcd"));
        assert_eq!(
            c.initial_cluster().unwrap(),
            vec![(
                "default".to_string(),
                vec!["http://localhost:2380".to_string()]
            )]
        );
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.election_ticks(), 10);
        assert_eq!(c.request_timeout(), Duration::from_secs(7));
    }

    #[test]
    fn unsupported_and_unknown_flags_are_refused_by_name() {
        let e = parse(&["--max-wals=5"], &[]).unwrap_err();
        assert!(e.0.contains("--max-wals"), "{e}");
        let e = parse(&["--no-such-flag"], &[]).unwrap_err();
        assert!(e.0.contains("--no-such-flag"), "{e}");
        let e = parse(&[], &[("ETCD_PEER_CLIENT_CERT_FILE", "x")]).unwrap_err();
        assert!(e.0.contains("ETCD_PEER_CLIENT_CERT_FILE"), "{e}");
    }

    #[test]
    fn auth_token_options_are_checked_at_startup() {
        let refused = |flag: &str, why: &str| {
            let e = parse(&[&format!("--auth-token={flag}")], &[]).unwrap_err();
            assert!(e.0.contains(why), "{flag}: {e}");
        };
        refused("bogus", "invalid auth options");
        refused("jwt,sign-method=RS256", "auth: missing key data");
        refused(
            "jwt,pub-key=/no/such,sign-method=XX256",
            "invalid auth signature method",
        );
        refused("jwt,pub-key=/no/such,sign-method=ES512", "not supported");
        refused("jwt,pub-key=/no/such,sign-method=RS256", "/no/such");
        refused(
            "jwt,pub-key=/no/such,sign-method=RS256,ttl=xx",
            "invalid duration",
        );
        refused("jwt,pub-key=/no/such", "sign-method is missing");
        assert!(matches!(
            parse(&[], &[]).unwrap().token_provider(),
            Ok(TokenProvider::Simple(_))
        ));
    }

    #[test]
    fn quota_and_auto_compaction_follow_etcd() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.quota_backend_bytes(), Some(DEFAULT_QUOTA_BYTES));
        assert_eq!(c.auto_compaction().unwrap(), None);
        let c = parse(&["--quota-backend-bytes=-1"], &[]).unwrap();
        assert_eq!(c.quota_backend_bytes(), None);
        let c = parse(&[], &[("ETCD_QUOTA_BACKEND_BYTES", "8388608")]).unwrap();
        assert_eq!(c.quota_backend_bytes(), Some(8 << 20));
        let c = parse(&["--auto-compaction-retention=1"], &[]).unwrap();
        let hour = Duration::from_secs(3600);
        assert_eq!(
            c.auto_compaction().unwrap(),
            Some(AutoCompaction::Periodic(hour))
        );
        let c = parse(&["--auto-compaction-retention=90m"], &[]).unwrap();
        assert_eq!(
            c.auto_compaction().unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        let args = [
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
        ];
        let c = parse(&args, &[]).unwrap();
        assert_eq!(
            c.auto_compaction().unwrap(),
            Some(AutoCompaction::Revision(1000))
        );
        let args = [
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1h",
        ];
        assert!(parse(&args, &[]).is_err());
        assert!(parse(&["--auto-compaction-mode=sometimes"], &[]).is_err());
        let c = parse(&["--experimental-initial-corrupt-check"], &[]).unwrap();
        assert!(c.initial_corrupt_check);
        let c = parse(&["--experimental-corrupt-check-time=5s"], &[]).unwrap();
        assert_eq!(c.corrupt_check_time, Duration::from_secs(5));
        let c = parse(&[], &[("ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", "true")]).unwrap();
        assert!(c.initial_corrupt_check);
    }

    #[test]
    fn environment_is_read_and_conflicts_are_errors() {
        let c = parse(&[], &[("ETCD_NAME", "n1")]).unwrap();
        assert_eq!(c.name, "n1");
        let e = parse(&["--name", "n2"], &[("ETCD_NAME", "n1")]).unwrap_err();
        assert!(e.0.contains("ETCD_NAME"), "{e}");
    }

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("5x").is_err());
        let cfg = parse(
            &["--experimental-watch-progress-notify-interval", "5s"],
            &[],
        )
        .unwrap();
        assert_eq!(cfg.watch_progress_notify_interval, Duration::from_secs(5));
        let cfg = parse(&[], &[("ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL", "2s")]).unwrap();
        assert_eq!(cfg.watch_progress_notify_interval, Duration::from_secs(2));
        let env = [("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", "3s")];
        let cfg = parse(&[], &env).unwrap();
        assert_eq!(cfg.watch_progress_notify_interval, Duration::from_secs(3));
    }

    #[test]
    fn metrics_flags_follow_etcd() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.metrics, MetricsLevel::Basic);
        assert!(c.listen_metrics_urls.is_empty());
        let c = parse(
            &[
                "--metrics=extensive",
                "--listen-metrics-urls",
                "http://127.0.0.1:1,http://127.0.0.1:2",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.metrics, MetricsLevel::Extensive);
        assert_eq!(
            c.listen_metrics_urls,
            vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        let env = [
            ("ETCD_METRICS", "extensive"),
            ("ETCD_LISTEN_METRICS_URLS", "http://127.0.0.1:3"),
        ];
        let c = parse(&[], &env).unwrap();
        assert_eq!(c.metrics, MetricsLevel::Extensive);
        assert_eq!(c.listen_metrics_urls, vec!["http://127.0.0.1:3"]);
        let e = parse(&["--metrics", "verbose"], &[]).unwrap_err();
        assert!(e.0.contains("verbose"), "{e}");
        let e = parse(&["--listen-metrics-urls", "https://127.0.0.1:4"], &[]).unwrap_err();
        assert!(e.0.contains("https://127.0.0.1:4"), "{e}");
        let e = parse(&["--metrics=basic"], &[("ETCD_METRICS", "basic")]).unwrap_err();
        assert!(e.0.contains("ETCD_METRICS"), "{e}");
    }

    #[test]
    fn etcd_validation_rules() {
        let e = parse(&["--listen-client-urls", "http://127.0.0.1:1"], &[]).unwrap_err();
        assert!(e.0.contains("--advertise-client-urls is required"), "{e}");
        let e = parse(&["--election-timeout", "400"], &[]).unwrap_err();
        assert!(e.0.contains("5 times"), "{e}");
        let e = parse(&["--initial-cluster-state", "odd"], &[]).unwrap_err();
        assert!(e.0.contains("odd"), "{e}");
    }
}
