//! Prometheus metrics under etcd's names, help texts, labels and buckets, so that etcd's alert
//! mixin and dashboards work unchanged (etcd 3.4: `etcdserver/metrics.go`, `wal/metrics.go`,
//! `mvcc/metrics.go`, `mvcc/backend/metrics.go`, `rafthttp/metrics.go`, `lease/metrics.go`,
//! `etcdserver/api/v3rpc/metrics.go`, go-grpc-prometheus, client_golang's process collector).
//!
//! Metrics are process-wide, as in etcd (one member per process). Owners of state update
//! pre-resolved handles in [`METRICS`]: an atomic add or one histogram observation, never a lookup
//! by label value on a hot path. Values that an owner already publishes (raft status, applied
//! index, database size, watchers) are read only when `/metrics` is scraped, from a
//! [`ServerState`] that `api` fills in.
//!
//! **Boundary:** this module knows nothing of HTTP, tonic, raft or storage; `api` serves
//! [`encode`]'s text and instruments gRPC calls through [`grpc`].

pub mod grpc;
mod mvcc;
pub mod process;

use std::sync::{LazyLock, Mutex};

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use mvcc::{count_txn, TxnOps};

/// Every metric, registered once per process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The handles that owners of state update. Scrape-time values are private: [`encode`] sets them.
pub struct Metrics {
    registry: Registry,
    /// Serialises scrapes (they set the scrape-time values, then read everything).
    scrape: Mutex<()>,

    // Server (etcd: etcdserver/metrics.go).
    has_leader: IntGauge,
    is_leader: IntGauge,
    is_learner: IntGauge,
    /// Leader changes seen by this member (counted by the raft loop).
    pub leader_changes_seen: IntCounter,
    proposals_committed: IntGauge,
    proposals_applied: IntGauge,
    /// Proposals waiting to be applied (raised and lowered by the proposer).
    pub proposals_pending: IntGauge,
    /// Proposals that raft refused or that timed out.
    pub proposals_failed: IntCounter,
    /// ReadIndex requests failed by a leader change.
    pub read_indexes_failed: IntCounter,
    /// ReadIndex requests that had to be sent again (no answer in time).
    pub slow_read_indexes: IntCounter,
    /// Heartbeats to a peer dropped before they could be sent.
    pub heartbeat_send_failures: IntCounter,
    /// Entries whose apply took longer than [`SLOW_APPLY`].
    pub slow_apply: IntCounter,
    /// 1 while a snapshot from the leader is being installed.
    pub snapshot_apply_in_progress: IntGauge,
    quota_backend_bytes: IntGauge,
    server_version: IntGaugeVec,
    server_id: IntGaugeVec,
    cluster_version: IntGaugeVec,

    // Disk (etcd: wal/metrics.go, mvcc/backend/metrics.go).
    /// One synced raft-log write (the WAL's fsync) of the log writer.
    pub wal_fsync_seconds: Histogram,
    /// Bytes written to the raft log (a gauge in etcd 3.4).
    pub wal_write_bytes: IntGauge,
    /// One state-machine write batch of the apply worker (etcd: a bbolt commit).
    pub backend_commit_seconds: Histogram,

    // MVCC (etcd: mvcc/metrics.go).
    db_total_size: IntGauge,
    db_total_size_in_use: IntGauge,
    pub range_total: IntCounter,
    pub put_total: IntCounter,
    pub delete_total: IntCounter,
    pub txn_total: IntCounter,
    current_revision: IntGauge,
    compact_revision: IntGauge,
    watch_stream_total: IntGauge,
    watcher_total: IntGauge,
    slow_watcher_total: IntGauge,

    // Leases (etcd: lease/metrics.go, etcdserver/metrics.go).
    pub lease_granted: IntCounter,
    pub lease_revoked: IntCounter,
    /// Renewals answered by the leader.
    pub lease_renewed: IntCounter,
    /// Revokes of expired leases committed.
    pub lease_expired: IntCounter,

    // Network (etcd: rafthttp/metrics.go, etcdserver/api/v3rpc/metrics.go).
    /// Labels: `To` (peer id in hex).
    pub peer_sent_bytes: IntCounterVec,
    /// Labels: `From`.
    pub peer_received_bytes: IntCounterVec,
    /// Messages to a peer that were dropped. Labels: `To`.
    pub peer_sent_failures: IntCounterVec,
    /// Incoming peer streams that failed. Labels: `From`.
    pub peer_received_failures: IntCounterVec,
    /// Labels: `To`.
    pub peer_round_trip_time_seconds: HistogramVec,
    /// Labels: `Local`, `Remote`.
    pub active_peers: IntGaugeVec,
    /// Labels: `Local`, `Remote`.
    pub disconnected_peers: IntCounterVec,
    /// Payload bytes of gRPC messages received from clients.
    pub client_grpc_received_bytes: IntCounter,
    /// Payload bytes of gRPC messages sent to clients.
    pub client_grpc_sent_bytes: IntCounter,

    grpc: grpc::Families,
    process: process::Gauges,
}

/// An apply slower than this counts in `etcd_server_slow_apply_total` (etcd's default
/// `--warning-apply-duration`).
pub const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

/// What the scrape reads from the owners of state.
#[derive(Debug, Clone, Default)]
pub struct ServerState {
    pub member_id: u64,
    pub server_version: &'static str,
    /// `major.minor`, as etcd labels `etcd_cluster_version`.
    pub cluster_version: &'static str,
    pub is_learner: bool,
    pub has_leader: bool,
    pub is_leader: bool,
    pub committed_index: u64,
    pub applied_index: u64,
    pub quota_backend_bytes: u64,
    pub db_size_bytes: u64,
    pub db_in_use_bytes: u64,
    pub revision: i64,
    /// 0 when nothing was ever compacted.
    pub compact_revision: i64,
    pub watch_streams: usize,
    pub watchers: usize,
    /// Watchers that still have history to read (etcd: unsynced watchers).
    pub slow_watchers: usize,
}

/// The text exposition of every metric, with the scrape-time values taken from `state`.
pub fn encode(state: &ServerState) -> String {
    METRICS.encode(state)
}

/// Sets the process-wide metrics options; call once before any gRPC call is served (etcd:
/// `grpc_prometheus.EnableHandlingTimeHistogram` for `--metrics=extensive`).
pub fn init(level: crate::config::MetricsLevel) {
    grpc::init(&METRICS.grpc, level);
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("every metric name is registered once");
    c
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let opts = HistogramOpts::new(name, help).buckets(buckets);
            register(&r, Histogram::with_opts(opts).expect("valid metric"))
        };
        // etcd: ExponentialBuckets(0.001, 2, 14), 1 ms to 8.192 s.
        let disk_buckets = || exponential_buckets(0.001, 2.0, 14).expect("valid buckets");
        Metrics {
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            is_learner: gauge(
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            leader_changes_seen: counter(
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            // Gauges in etcd (set to the raft indexes), in spite of their names.
            proposals_committed: gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            read_indexes_failed: counter(
                "etcd_server_read_indexes_failed_total",
                "The total number of failed read indexes seen.",
            ),
            slow_read_indexes: counter(
                "etcd_server_slow_read_indexes_total",
                "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
            ),
            heartbeat_send_failures: counter(
                "etcd_server_heartbeat_send_failures_total",
                "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
            ),
            slow_apply: counter(
                "etcd_server_slow_apply_total",
                "The total number of slow apply requests (likely overloaded from slow disk).",
            ),
            snapshot_apply_in_progress: gauge(
                "etcd_server_snapshot_apply_in_progress_total",
                "1 if the server is applying the incoming snapshot. 0 if none.",
            ),
            quota_backend_bytes: gauge(
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
            ),
            server_version: gauge_vec(
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
                &["server_version"],
            ),
            server_id: gauge_vec(
                "etcd_server_id",
                "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                &["server_id"],
            ),
            cluster_version: gauge_vec(
                "etcd_cluster_version",
                "Which version is running. 1 for 'cluster_version' label with current cluster version",
                &["cluster_version"],
            ),
            wal_fsync_seconds: histogram(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                disk_buckets(),
            ),
            wal_write_bytes: gauge(
                "etcd_disk_wal_write_bytes_total",
                "Total number of bytes written in WAL.",
            ),
            backend_commit_seconds: histogram(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                disk_buckets(),
            ),
            db_total_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_total_size_in_use: gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            range_total: counter(
                "etcd_mvcc_range_total",
                "Total number of ranges seen by this member.",
            ),
            put_total: counter(
                "etcd_mvcc_put_total",
                "Total number of puts seen by this member.",
            ),
            delete_total: counter(
                "etcd_mvcc_delete_total",
                "Total number of deletes seen by this member.",
            ),
            txn_total: counter(
                "etcd_mvcc_txn_total",
                "Total number of txns seen by this member.",
            ),
            current_revision: gauge(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            ),
            compact_revision: gauge(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            ),
            watch_stream_total: gauge(
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
            ),
            watcher_total: gauge(
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
            ),
            slow_watcher_total: gauge(
                "etcd_debugging_mvcc_slow_watcher_total",
                "Total number of unsynced slow watchers.",
            ),
            lease_granted: counter(
                "etcd_debugging_lease_granted_total",
                "The total number of granted leases.",
            ),
            lease_revoked: counter(
                "etcd_debugging_lease_revoked_total",
                "The total number of revoked leases.",
            ),
            lease_renewed: counter(
                "etcd_debugging_lease_renewed_total",
                "The number of renewed leases seen by the leader.",
            ),
            lease_expired: counter(
                "etcd_debugging_server_lease_expired_total",
                "The total number of expired leases.",
            ),
            peer_sent_bytes: counter_vec(
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &["To"],
            ),
            peer_received_bytes: counter_vec(
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &["From"],
            ),
            peer_sent_failures: counter_vec(
                "etcd_network_peer_sent_failures_total",
                "The total number of send failures from peers.",
                &["To"],
            ),
            peer_received_failures: counter_vec(
                "etcd_network_peer_received_failures_total",
                "The total number of receive failures from peers.",
                &["From"],
            ),
            peer_round_trip_time_seconds: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "etcd_network_peer_round_trip_time_seconds",
                        "Round-Trip-Time histogram between peers",
                    )
                    // etcd: ExponentialBuckets(0.0001, 2, 16), 100 µs to 3.2768 s.
                    .buckets(exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
                    &["To"],
                )
                .expect("valid metric"),
            ),
            active_peers: gauge_vec(
                "etcd_network_active_peers",
                "The current number of active peer connections.",
                &["Local", "Remote"],
            ),
            disconnected_peers: counter_vec(
                "etcd_network_disconnected_peers_total",
                "The total number of disconnected peers.",
                &["Local", "Remote"],
            ),
            client_grpc_received_bytes: counter(
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            ),
            client_grpc_sent_bytes: counter(
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            ),
            grpc: grpc::Families::new(&r),
            process: process::Gauges::new(&r),
            scrape: Mutex::new(()),
            registry: r,
        }
    }

    fn encode(&self, s: &ServerState) -> String {
        let _scrape = self.scrape.lock().expect("scrape lock");
        self.has_leader.set(s.has_leader.into());
        self.is_leader.set(s.is_leader.into());
        self.is_learner.set(s.is_learner.into());
        self.proposals_committed.set(gauge_value(s.committed_index));
        self.proposals_applied.set(gauge_value(s.applied_index));
        self.quota_backend_bytes
            .set(gauge_value(s.quota_backend_bytes));
        set_only(&self.server_version, s.server_version);
        set_only(&self.server_id, &format!("{:x}", s.member_id));
        set_only(&self.cluster_version, s.cluster_version);
        self.db_total_size.set(gauge_value(s.db_size_bytes));
        self.db_total_size_in_use
            .set(gauge_value(s.db_in_use_bytes));
        self.current_revision.set(s.revision);
        // etcd reports -1 until the first compaction.
        self.compact_revision.set(if s.compact_revision == 0 {
            -1
        } else {
            s.compact_revision
        });
        self.watch_stream_total.set(gauge_value(s.watch_streams));
        self.watcher_total.set(gauge_value(s.watchers));
        self.slow_watcher_total.set(gauge_value(s.slow_watchers));
        self.process.refresh();
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("the text format encodes any metric")
    }
}

/// Counts one proposal in `etcd_server_proposals_pending` for as long as it lives.
pub struct PendingProposal(());

impl PendingProposal {
    pub fn start() -> PendingProposal {
        METRICS.proposals_pending.inc();
        PendingProposal(())
    }
}

impl Drop for PendingProposal {
    fn drop(&mut self) {
        METRICS.proposals_pending.dec();
    }
}

fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// An info gauge: 1 for the label `value` (which never changes while the process runs).
fn set_only(vec: &IntGaugeVec, value: &str) {
    vec.with_label_values(&[value]).set(1);
}
