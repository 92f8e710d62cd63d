//! The HTTP/1.1 side of the client port: `/version` and `/health` with etcd's JSON, `/livez` and
//! `/readyz` with etcd's text checks (3.5.12+), `/metrics` (`api::metrics`), and the answer to
//! paths nobody serves (etcd: `etcdserver/api/etcdhttp/{base,metrics,health}.go`). The same
//! endpoints, without gRPC, serve `--listen-metrics-urls`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::handler::Handler;
use axum::http::Uri;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use cairn_proto::etcdserverpb::AlarmType;
use serde_json::json;

use super::error::unimplemented;
use super::{Core, ETCD_CLUSTER_VERSION, ETCD_VERSION};

/// The most of an unserved request's body that is read before answering 404.
const DRAIN_BYTES_MAX: usize = 1 << 20;
/// How long `/health` waits for a linearizable round (etcd: one second).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

pub fn routes(grpc: Router, core: Arc<Core>) -> Router {
    // A call to a service Cairn does not serve (Auth) is counted like etcd's gRPC calls.
    grpc.merge(http(core))
        .fallback(fallback.layer(super::metrics::GrpcMetricsLayer))
}

/// The routes of `--listen-metrics-urls` (etcd: `serveMetrics`): the HTTP endpoints, no gRPC.
pub fn metrics_routes(core: Arc<Core>) -> Router {
    http(core).fallback(fallback)
}

fn http(core: Arc<Core>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/livez/{check}", get(livez_one))
        .route("/readyz", get(readyz))
        .route("/readyz/{check}", get(readyz_one))
        .route("/metrics", any(super::metrics::metrics))
        .with_state(core)
}

/// etcd's field order (Go struct order), which `serde_json` maps would sort away.
async fn version() -> Response {
    let body =
        format!(r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}"}}"#);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// etcd's `/health`: healthy with no alarm (but those named by `?exclude=`), a leader and a read
/// that completes in time (local with `?serializable=true`, which also skips the leader check).
/// An unhealthy answer says why (`reason`, as etcd 3.5 does).
async fn health(State(core): State<Arc<Core>>, uri: Uri) -> Response {
    let query = query_pairs(&uri);
    let excluded: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    let serializable = query
        .iter()
        .any(|(k, v)| k == "serializable" && v == "true");
    match health_failure(&core, &excluded, serializable).await {
        None => (StatusCode::OK, Json(json!({"health": "true"}))).into_response(),
        Some(reason) => {
            let body = json!({"health": "false", "reason": reason});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn health_failure(core: &Core, excluded: &[&str], serializable: bool) -> Option<String> {
    let alarms = core.alarms.borrow().get(AlarmType::None);
    if let Some(a) = alarms
        .iter()
        .find(|a| !excluded.contains(&a.alarm().as_str_name()))
    {
        return Some(match a.alarm() {
            AlarmType::Nospace => "ALARM NOSPACE".into(),
            AlarmType::Corrupt => "ALARM CORRUPT".into(),
            AlarmType::None => "ALARM UNKNOWN".into(),
        });
    }
    if serializable {
        return core
            .store
            .current_revision()
            .err()
            .map(|e| format!("RANGE ERROR:etcdserver: {e}"));
    }
    if core.raft.status().leader_id == 0 {
        return Some("RAFT NO LEADER".into());
    }
    Check::LinearizableRead
        .run(core)
        .await
        .err()
        .map(|e| format!("RANGE ERROR:{e}"))
}

/// The checks behind `/livez` and `/readyz` (etcd 3.5.12+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// A local read works.
    SerializableRead,
    /// A read through the leader (ReadIndex) works in time.
    LinearizableRead,
    /// No CORRUPT alarm.
    DataCorruption,
    /// The member votes.
    NonLearner,
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::DataCorruption => "data_corruption",
            Check::NonLearner => "non_learner",
        }
    }

    /// `Err(reason)` when the check fails.
    async fn run(self, core: &Core) -> Result<(), String> {
        match self {
            Check::SerializableRead => core
                .store
                .current_revision()
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Check::LinearizableRead => {
                match tokio::time::timeout(
                    HEALTH_TIMEOUT,
                    core.raft.wait_linearizable(HEALTH_TIMEOUT),
                )
                .await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("etcdserver: {e}")),
                    Err(_) => Err("etcdserver: request timed out".into()),
                }
            }
            Check::DataCorruption => {
                if core.alarms.borrow().is_raised(AlarmType::Corrupt) {
                    Err("alarm activated: CORRUPT".into())
                } else {
                    Ok(())
                }
            }
            Check::NonLearner => {
                if core.is_learner() {
                    Err("etcdserver: rpc not supported for learner".into())
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Runs `checks` (skipping `?exclude=` ones): 200 `ok` (with every line if `?verbose`), or 503 with
/// every line and `<path> check failed`.
async fn run_checks(
    core: &Core,
    path: &str,
    checks: &[Check],
    query: &[(String, String)],
) -> Response {
    let excluded: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    let verbose = query.iter().any(|(k, _)| k == "verbose");
    let mut lines = String::new();
    let mut failed = false;
    for check in checks {
        let name = check.name();
        if excluded.contains(&name) {
            lines.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match check.run(core).await {
            Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
            Err(reason) => {
                failed = true;
                lines.push_str(&format!("[-]{name} failed: {reason}\n"));
            }
        }
    }
    if failed {
        let body = format!("{lines}{path} check failed\n");
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let body = if verbose {
        format!("{lines}ok\n")
    } else {
        "ok\n".into()
    };
    (StatusCode::OK, body).into_response()
}

/// The query's `key=value` pairs (a bare `key` has an empty value).
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

async fn livez(State(core): State<Arc<Core>>, uri: Uri) -> Response {
    run_checks(&core, "/livez", LIVEZ, &query_pairs(&uri)).await
}

async fn readyz(State(core): State<Arc<Core>>, uri: Uri) -> Response {
    run_checks(&core, "/readyz", READYZ, &query_pairs(&uri)).await
}

/// One check of a probe, as a sub-path (`/readyz/linearizable_read`).
async fn one_check(core: &Core, path: &str, checks: &[Check], name: &str) -> Response {
    match checks.iter().find(|c| c.name() == name) {
        Some(&check) => run_checks(core, &format!("{path}/{name}"), &[check], &[]).await,
        None => (StatusCode::NOT_FOUND, "404 page not found\n").into_response(),
    }
}

async fn livez_one(State(core): State<Arc<Core>>, Path(name): Path<String>) -> Response {
    one_check(&core, "/livez", LIVEZ, &name).await
}

async fn readyz_one(State(core): State<Arc<Core>>, Path(name): Path<String>) -> Response {
    one_check(&core, "/readyz", READYZ, &name).await
}

/// gRPC calls to services Cairn does not serve yet get `Unimplemented` naming the method; other
/// paths get Go's plain 404.
async fn fallback(req: Request) -> Response {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if is_grpc {
        unimplemented(req.uri().path()).into_http()
    } else {
        // Read the body first: closing a connection with unread bytes resets it, and the
        // client could lose the answer (etcd's Go server drains it too).
        let _ = axum::body::to_bytes(req.into_body(), DRAIN_BYTES_MAX).await;
        (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
    }
}
