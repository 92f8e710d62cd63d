//! go-grpc-prometheus's server metrics, which etcd exports for its gRPC API:
//! `grpc_server_{started,handled,msg_received,msg_sent}_total` and, with `--metrics=extensive`,
//! `grpc_server_handling_seconds`, labelled `grpc_type`, `grpc_service`, `grpc_method` (and
//! `grpc_code` by Go's name).
//!
//! The methods come from the protos' descriptors: one [`MethodMetrics`] per method of etcd's
//! services, found by the request path `/package.Service/Method` with one hash lookup and holding
//! every handle the call needs. As `grpc_prometheus.Register` does in etcd, the methods of the
//! services etcd registers before it are exported at zero from the start (every code included);
//! Lock and Election, which etcd registers afterwards, appear at their first call.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use prost_reflect::DescriptorPool;

use super::{register, METRICS};
use crate::config::MetricsLevel;

/// gRPC status codes by number, as Go's `codes.Code.String()` names them.
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
/// The code of a call whose client went away before it was answered.
pub const CODE_CANCELED: u32 = 1;
/// Where an unknown code number is counted.
const CODE_UNKNOWN: u32 = 2;

/// The services whose calls are counted, and whether their methods are exported before their first
/// call (etcd: `v3rpc.Server` registers these, then calls `grpc_prometheus.Register`; Lock and
/// Election are registered later, in `embed/serve.go`).
const SERVICES: &[(&str, bool)] = &[
    ("etcdserverpb.KV", true),
    ("etcdserverpb.Watch", true),
    ("etcdserverpb.Lease", true),
    ("etcdserverpb.Cluster", true),
    ("etcdserverpb.Auth", true),
    ("etcdserverpb.Maintenance", true),
    ("grpc.health.v1.Health", true),
    ("v3lockpb.Lock", false),
    ("v3electionpb.Election", false),
];

/// The metric families, with the handling-time histogram registered only when enabled.
pub(super) struct Families {
    registry: prometheus::Registry,
    started: IntCounterVec,
    handled: IntCounterVec,
    msg_received: IntCounterVec,
    msg_sent: IntCounterVec,
    handling: HistogramVec,
}

impl Families {
    pub(super) fn new(r: &prometheus::Registry) -> Families {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        Families {
            registry: r.clone(),
            started: counter(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &labels,
            ),
            handled: counter(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            ),
            msg_received: counter(
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                &labels,
            ),
            msg_sent: counter(
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                &labels,
            ),
            // Prometheus's default buckets, as go-grpc-prometheus's.
            handling: HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                ),
                &labels,
            )
            .expect("valid metric"),
        }
    }
}

/// The kind of call, as go-grpc-prometheus labels it.
fn grpc_type(client_streaming: bool, server_streaming: bool) -> &'static str {
    match (client_streaming, server_streaming) {
        (false, false) => "unary",
        (true, false) => "client_stream",
        (false, true) => "server_stream",
        (true, true) => "bidi_stream",
    }
}

/// Every handle one call of a method needs.
pub struct MethodMetrics {
    started: IntCounter,
    handled: [IntCounter; CODES.len()],
    /// Messages received from the client.
    pub msg_received: IntCounter,
    /// Messages sent to the client.
    pub msg_sent: IntCounter,
    handling: Option<Histogram>,
}

impl MethodMetrics {
    fn new(f: &Families, labels: [&str; 3], handling_time: bool) -> MethodMetrics {
        MethodMetrics {
            started: f.started.with_label_values(&labels),
            handled: std::array::from_fn(|code| {
                let [t, s, m] = labels;
                f.handled.with_label_values(&[t, s, m, CODES[code]])
            }),
            msg_received: f.msg_received.with_label_values(&labels),
            msg_sent: f.msg_sent.with_label_values(&labels),
            handling: handling_time.then(|| f.handling.with_label_values(&labels)),
        }
    }

    pub fn started(&self) {
        self.started.inc();
    }

    /// The call ended with gRPC status `code` after `elapsed`.
    pub fn handled(&self, code: u32, elapsed: Duration) {
        let code = if (code as usize) < CODES.len() {
            code
        } else {
            CODE_UNKNOWN
        };
        self.handled[code as usize].inc();
        if let Some(h) = &self.handling {
            h.observe(elapsed.as_secs_f64());
        }
    }
}

struct Method {
    labels: [String; 3],
    metrics: OnceLock<MethodMetrics>,
}

struct Table {
    /// By path, `/package.Service/Method`.
    methods: HashMap<String, Method>,
    handling_time: bool,
}

impl Table {
    fn new(f: &Families, level: MetricsLevel) -> Table {
        let handling_time = level == MetricsLevel::Extensive;
        if handling_time {
            f.registry
                .register(Box::new(f.handling.clone()))
                .expect("the handling-time histogram is registered once");
        }
        let pool = DescriptorPool::decode(cairn_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptors decode");
        let mut methods = HashMap::new();
        for &(name, exported_at_start) in SERVICES {
            let service = pool
                .get_service_by_name(name)
                .unwrap_or_else(|| panic!("service {name} is in the protos"));
            for m in service.methods() {
                let kind = grpc_type(m.is_client_streaming(), m.is_server_streaming());
                let method = Method {
                    labels: [kind.to_string(), name.to_string(), m.name().to_string()],
                    metrics: OnceLock::new(),
                };
                if exported_at_start {
                    method.resolve(f, handling_time);
                }
                methods.insert(format!("/{name}/{}", m.name()), method);
            }
        }
        Table {
            methods,
            handling_time,
        }
    }
}

impl Method {
    fn resolve(&self, f: &Families, handling_time: bool) -> &MethodMetrics {
        self.metrics.get_or_init(|| {
            let [t, s, m] = &self.labels;
            MethodMetrics::new(f, [t.as_str(), s.as_str(), m.as_str()], handling_time)
        })
    }
}

static TABLE: OnceLock<Table> = OnceLock::new();

pub(super) fn init(f: &Families, level: MetricsLevel) {
    TABLE.get_or_init(|| Table::new(f, level));
}

/// The metrics of the etcd gRPC method at `path`, or `None` when `path` names none.
pub fn method(path: &str) -> Option<&'static MethodMetrics> {
    let families = &METRICS.grpc;
    let table = TABLE.get_or_init(|| Table::new(families, MetricsLevel::Basic));
    let method = table.methods.get(path)?;
    Some(method.resolve(families, table.handling_time))
}

/// How many times the method at `path` started, received or sent a message (`"started"`,
/// `"received"`, `"sent"`), or ended with the code named `what`.
#[cfg(test)]
pub fn test_count(path: &str, what: &str) -> u64 {
    let m = method(path).expect("an etcd method");
    match what {
        "started" => m.started.get(),
        "received" => m.msg_received.get(),
        "sent" => m.msg_sent.get(),
        code => {
            let i = CODES.iter().position(|c| *c == code).expect("a code name");
            m.handled[i].get()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_typed_from_the_protos() {
        let table = Table::new(&METRICS.grpc, MetricsLevel::Basic);
        let labels = |path: &str| table.methods[path].labels.clone();
        assert_eq!(
            labels("/etcdserverpb.KV/Range"),
            ["unary", "etcdserverpb.KV", "Range"]
        );
        assert_eq!(
            labels("/etcdserverpb.Watch/Watch"),
            ["bidi_stream", "etcdserverpb.Watch", "Watch"]
        );
        assert_eq!(
            labels("/etcdserverpb.Maintenance/Snapshot"),
            ["server_stream", "etcdserverpb.Maintenance", "Snapshot"]
        );
        assert_eq!(
            labels("/v3electionpb.Election/Observe"),
            ["server_stream", "v3electionpb.Election", "Observe"]
        );
        assert_eq!(
            labels("/grpc.health.v1.Health/Check"),
            ["unary", "grpc.health.v1.Health", "Check"]
        );
        assert!(!table.methods.contains_key("/cairnpb.Peer/Stream"));
        assert!(!table.methods.contains_key("/etcdserverpb.KV/Nothing"));
        // Exported at zero from the start, as etcd does, except Lock and Election.
        assert!(table.methods["/etcdserverpb.Auth/UserAdd"]
            .metrics
            .get()
            .is_some());
        assert!(table.methods["/v3lockpb.Lock/Lock"].metrics.get().is_none());
        assert_eq!(grpc_type(true, false), "client_stream");
    }

    #[test]
    fn codes_are_counted_by_go_name() {
        let m = method("/etcdserverpb.Lease/LeaseLeases").expect("an etcd method");
        let count = |code: &str| {
            METRICS
                .grpc
                .handled
                .with_label_values(&["unary", "etcdserverpb.Lease", "LeaseLeases", code])
                .get()
        };
        let (ok, unavailable, unknown) = (count("OK"), count("Unavailable"), count("Unknown"));
        m.handled(0, Duration::ZERO);
        m.handled(14, Duration::ZERO);
        m.handled(99, Duration::ZERO);
        assert_eq!(count("OK"), ok + 1);
        assert_eq!(count("Unavailable"), unavailable + 1);
        assert_eq!(count("Unknown"), unknown + 1);
        assert_eq!(CODES[CODE_CANCELED as usize], "Canceled");
    }
}
