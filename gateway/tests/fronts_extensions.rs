//! Every front passes what the HTTP layers learned (the caller's identity from auth,
//! carried as a request extension) and the propagated headers into the one internal
//! request: REST, gRPC unary and streaming, Ollama. A layer here stands in for auth.

mod common;

use std::sync::{Arc, Mutex};

use common::grpc::{chat, inference};
use common::*;
use meshgate::app::RoutingService;
use meshgate::app::{AppState, Limits};
use meshgate::config::KeyConfig;
use meshgate::errors::GatewayError;
use meshgate::keys::Keys;
use meshgate::nodes::Nodes;
use meshgate::request::{GatewayRequest, Operation};

/// The caller's key name, as routing saw it.
#[derive(Clone, Debug, PartialEq)]
struct Caller(String);

type Seen = Arc<Mutex<Vec<(Operation, Option<Caller>, bool)>>>;

#[tokio::test]
async fn extensions_and_request_ids_reach_routing_from_every_front() {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    // A routing service that records what it was given, then says no node is up.
    let routing = RoutingService::new(tower::service_fn(move |req: GatewayRequest| {
        record.lock().unwrap().push((
            req.operation,
            req.caller.as_ref().map(|c| Caller(c.0.name.to_string())),
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
            body_timeout: std::time::Duration::from_secs(30),
        },
        responses: Arc::new(meshgate::response_store::ResponseStore::new(
            16,
            std::time::Duration::from_secs(60),
            None,
        )),
        continuation: meshgate::app::Continuation {
            enabled: false,
            outcomes: Default::default(),
        },
    };
    let keys = Keys::from_config(
        &[KeyConfig {
            name: "alice".into(),
            sha256: Some(hex::encode(meshgate::keys::sha256(b"k"))),
            key_env: None,
            models: None,
            requests_per_minute: None,
            burst: None,
            tokens_per_minute: None,
        }],
        None,
    )
    .unwrap();
    let alice = meshgate::keys::Caller(keys.find(b"k").unwrap());
    let (grpc, health) = meshgate::fronts::grpc::routes(state.clone());
    let router = meshgate::fronts::openai::routes(state.clone())
        .merge(grpc)
        .merge(meshgate::fronts::responses::routes(state.clone()))
        .merge(meshgate::fronts::anthropic::routes(state.clone()))
        .merge(meshgate::fronts::ollama::routes(state))
        .layer(axum::middleware::map_request(
            move |mut req: axum::extract::Request| {
                let alice = alice.clone();
                async move {
                    req.extensions_mut().insert(alice);
                    req
                }
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
    let responses = post(&url("/v1/responses"), r#"{"model":"m","input":"hi"}"#).await;
    assert_eq!(responses.status, http::StatusCode::SERVICE_UNAVAILABLE);
    let messages = post(
        &url("/v1/messages"),
        r#"{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(messages.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(messages.json()["error"]["type"], "overloaded_error");

    let seen = seen.lock().unwrap().clone();
    let alice = Some(Caller("alice".into()));
    assert_eq!(
        seen,
        [
            (Operation::ChatCompletions, alice.clone(), true),
            (Operation::ChatCompletions, alice.clone(), true),
            (Operation::ChatCompletions, alice.clone(), true),
            (Operation::OllamaChat, alice.clone(), true),
            (Operation::Responses, alice.clone(), true),
            (Operation::Messages, alice, true),
        ]
    );
    server.abort();
    health.abort();
}
