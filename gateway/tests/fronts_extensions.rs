//! Every front passes what the HTTP layers learned (request extensions, e.g. the
//! caller's identity from auth) and the propagated headers into the one internal
//! request: REST, gRPC unary and streaming, Ollama. A layer here stands in for auth.

mod common;

use std::sync::{Arc, Mutex};

use common::grpc::{chat, inference};
use common::*;
use meshgate::app::RoutingService;
use meshgate::app::{AppState, Limits};
use meshgate::errors::GatewayError;
use meshgate::nodes::Nodes;
use meshgate::request::{GatewayRequest, Operation};

#[derive(Clone, Debug, PartialEq)]
struct Caller(&'static str);

type Seen = Arc<Mutex<Vec<(Operation, Option<Caller>, bool)>>>;

#[tokio::test]
async fn extensions_and_request_ids_reach_routing_from_every_front() {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    // A routing service that records what it was given, then says no node is up.
    let routing = RoutingService::new(tower::service_fn(move |req: GatewayRequest| {
        record.lock().unwrap().push((
            req.operation,
            req.extensions.get::<Caller>().cloned(),
            req.headers.contains_key("x-request-id"),
        ));
        async move { Err::<meshgate::request::Routed, _>(GatewayError::NoNodeAvailable(req.model)) }
    }));
    let state = AppState {
        routing,
        nodes: Arc::new(
            Nodes::from_config(&meshgate::Config {
                nodes: Vec::new(),
                ..Default::default()
            })
            .unwrap(),
        ),
        limits: Limits {
            max_request_bytes: 1 << 20,
            max_response_bytes: 1 << 20,
        },
    };
    let (grpc, health) = meshgate::grpc::routes(state.clone());
    let router = meshgate::http::routes(state.clone())
        .merge(grpc)
        .merge(meshgate::ollama::routes(state))
        .layer(axum::middleware::map_request(
            |mut req: axum::extract::Request| async move {
                req.extensions_mut().insert(Caller("alice"));
                req
            },
        ))
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            tower_http::request_id::MakeRequestUuid,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let url = |path: &str| format!("http://{addr}{path}");

    let rest = post(&url("/v1/chat/completions"), chat_body("m", false)).await;
    assert_eq!(rest.status, http::StatusCode::SERVICE_UNAVAILABLE);
    let mut client = inference(addr);
    assert!(client.chat_completion(chat("m")).await.is_err());
    assert!(client.stream_chat_completion(chat("m")).await.is_err());
    let ollama = post(&url("/api/chat"), r#"{"model":"m","messages":[]}"#).await;
    assert_eq!(ollama.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(ollama.json()["error"].is_string());

    let seen = seen.lock().unwrap().clone();
    let alice = Some(Caller("alice"));
    assert_eq!(
        seen,
        [
            (Operation::ChatCompletions, alice.clone(), true),
            (Operation::ChatCompletions, alice.clone(), true),
            (Operation::ChatCompletions, alice.clone(), true),
            (Operation::OllamaChat, alice, true),
        ]
    );
    server.abort();
    health.abort();
}
