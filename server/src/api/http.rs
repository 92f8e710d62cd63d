//! The HTTP/1.1 side of the client port: `/version` and `/health` with etcd's JSON, and the answer
//! to paths nobody serves (etcd: `etcdserver/api/etcdhttp/{base,metrics}.go`, 3.4).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::error::unimplemented;
use super::{Core, ETCD_CLUSTER_VERSION, ETCD_VERSION};

/// How long `/health` waits for a linearizable round (etcd: one second).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

pub fn routes(grpc: Router, core: Arc<Core>) -> Router {
    let http = Router::new()
        .route("/version", get(version))
        .route("/health", get(health))
        .with_state(core);
    grpc.merge(http).fallback(fallback)
}

/// etcd's field order (Go struct order), which `serde_json` maps would sort away.
async fn version() -> Response {
    let body =
        format!(r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}"}}"#);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Healthy when there is a leader and a linearizable round completes in time.
async fn health(State(core): State<Arc<Core>>) -> Response {
    let healthy = core.raft.status().leader_id != 0
        && tokio::time::timeout(HEALTH_TIMEOUT, core.raft.wait_linearizable(HEALTH_TIMEOUT))
            .await
            .is_ok_and(|r| r.is_ok());
    let (status, body) = if healthy {
        (StatusCode::OK, json!({"health": "true"}))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, json!({"health": "false"}))
    };
    (status, Json(body)).into_response()
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
        (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
    }
}
