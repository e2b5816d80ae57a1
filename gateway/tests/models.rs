//! Discovery and model routing: the model list is the union over online nodes, and a
//! request for model M reaches only nodes that serve M.

mod common;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn models_are_the_union_over_nodes_in_openai_shape() {
    let a = sim("a", &["llama3.2", "qwen2.5"]).await;
    let b = sim("b", &["llama3.2", "mistral"]).await;
    let gw = gateway_for(&[("a", &a), ("b", &b)]).await;

    let reply = get(&gw.url("/v1/models")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    assert_eq!(json["object"], "list");
    let ids: Vec<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama3.2", "mistral", "qwen2.5"]);
    assert!(
        json["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["object"] == "model")
    );

    assert_eq!(
        get(&gw.url("/v1/models/qwen2.5")).await.json()["id"],
        "qwen2.5"
    );
    get(&gw.url("/v1/models/gpt-9"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "model_not_found");
}

#[tokio::test]
async fn a_model_goes_only_to_nodes_that_serve_it() {
    let a = sim("a", &["llama3.2", "qwen2.5"]).await;
    let b = sim("b", &["llama3.2", "mistral"]).await;
    let gw = gateway_for(&[("a", &a), ("b", &b)]).await;

    for _ in 0..6 {
        let reply = post(&gw.url("/v1/chat/completions"), chat_body("qwen2.5", false)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["x-meshgate-node"], "a");
    }
    for _ in 0..6 {
        let reply = post(
            &gw.url("/v1/chat/completions"),
            chat_body("llama3.2", false),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(b.stats().by_model.get("qwen2.5"), None);
    assert_eq!(a.stats().by_model["qwen2.5"], 6);
    assert_eq!(b.stats().by_model.get("mistral"), None);
}

#[tokio::test]
async fn unknown_model_is_404_and_reaches_no_node() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    a.reset_stats();

    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("gpt-imaginary", false),
    )
    .await;
    let json = reply.assert_error(StatusCode::NOT_FOUND, "model_not_found");
    assert_eq!(json["error"]["param"], "model");
    assert_eq!(json["error"]["type"], "invalid_request_error");
    // Nothing secret in the message: no node names, no URLs.
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("127.0.0.1") && !message.contains("\"a\""),
        "{message}"
    );
    assert_eq!(a.stats().by_route.get("/v1/chat/completions"), None);
}

#[tokio::test]
async fn health_and_readiness() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    assert_eq!(get(&gw.url("/healthz")).await.status, StatusCode::OK);
    let ready = get(&gw.url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["nodes_online"], 1);

    a.kill();
    wait_until(|| !gw.nodes.any_online()).await;
    let ready = get(&gw.url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        get(&gw.url("/healthz")).await.status,
        StatusCode::OK,
        "alive even with no node"
    );
}

#[tokio::test]
async fn ollama_only_nodes_are_discovered_through_api_tags() {
    // A node that answers /api/tags but 404s /v1/models, like an old Ollama.
    let app = axum::Router::new().route(
        "/api/tags",
        axum::routing::get(|| async {
            axum::Json(serde_json::json!({"models": [{"name": "gemma:2b"}]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let gw = gateway(config_for(&[("old", format!("http://{addr}"))])).await;
    let ids = get(&gw.url("/v1/models")).await.json()["data"][0]["id"].clone();
    assert_eq!(ids, "gemma:2b");
}
