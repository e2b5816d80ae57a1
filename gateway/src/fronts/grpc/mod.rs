//! The gRPC front: `meshgate.v1.Inference` (chat unary and streaming, completions,
//! embeddings, models), `grpc.health.v1` and server reflection (v1 and v1alpha), all
//! mounted on an axum `Router` so the same HTTP layers (request id, trace, auth, rate
//! limit) run in front of gRPC as in front of REST. Served over h2c on the REST
//! listener, and optionally on a listener of its own (`[grpc] listen`).
//!
//! The front is a thin adapter: a proto request becomes OpenAI JSON bytes in the one
//! internal [`GatewayRequest`](crate::request::GatewayRequest); the node's JSON or SSE
//! chunks become proto messages; every error is rendered from the one error table.

mod health;
mod service;
mod stream;

use std::convert::Infallible;

use axum::Router;
use axum::response::IntoResponse;
use meshgate_proto::v1;
use tokio::task::JoinHandle;
use tonic::server::NamedService;

use crate::state::AppState;

pub use service::GrpcFront;

/// The gRPC routes (no fallback, so they merge into the REST router), and the task
/// that keeps `grpc.health.v1` in step with node health (abort it on shutdown).
pub fn routes(state: AppState) -> (Router, JoinHandle<()>) {
    let limits = state.limits;
    let nodes = std::sync::Arc::clone(&state.nodes);
    let inference = v1::inference_server::InferenceServer::new(GrpcFront::new(state))
        .max_decoding_message_size(limits.max_request_bytes)
        .max_encoding_message_size(limits.max_response_bytes);
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // The descriptor sets are compiled in; failing to read them is a build defect.
    let reflection_v1 = reflection()
        .build_v1()
        .expect("embedded descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("embedded descriptor sets are valid");

    let router = Router::new();
    let router = mount(router, inference);
    let router = mount(router, health);
    let router = mount(router, reflection_v1);
    // v1alpha too: grpcio's reflection client and older grpcurl still ask for it.
    let router = mount(router, reflection_v1alpha);
    let task = tokio::spawn(health::track(nodes, reporter));
    (router, task)
}

/// Route `/{package.Service}/*` to `svc`, as tonic's own `Routes` does, minus the
/// fallback that would clash with the REST router's.
fn mount<S>(router: Router, svc: S) -> Router
where
    S: tower::Service<http::Request<axum::body::Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    router.route_service(&format!("/{}/{{*rest}}", S::NAME), svc)
}
