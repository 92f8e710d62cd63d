//! `grpc.health.v1.Health`, which etcd registers with the overall service ("") SERVING.

use std::pin::Pin;

use cairn_proto::grpc_health_v1::health_check_response::ServingStatus;
use cairn_proto::grpc_health_v1::health_server::Health;
use cairn_proto::grpc_health_v1::{HealthCheckRequest, HealthCheckResponse};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

pub struct HealthService;

fn check(service: &str) -> Result<HealthCheckResponse, Status> {
    if !service.is_empty() {
        return Err(Status::not_found("unknown service"));
    }
    Ok(HealthCheckResponse {
        status: ServingStatus::Serving as i32,
    })
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(check(&req.into_inner().service)?))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    /// Sends the status once; it never changes while the member serves, so the stream then stays open.
    async fn watch(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let status = check(&req.into_inner().service)?;
        let stream =
            futures::stream::once(async move { Ok(status) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}
