//! The Ollama surface: chat and generate (NDJSON by default, or whole), inventory
//! (tags, ps, show, version), errors in Ollama's shape. A node that speaks Ollama gets
//! the client's request natively; a node that speaks only OpenAI's API gets it
//! translated, and the answer comes back in Ollama's shape either way.

mod common;

use common::openai_only::OpenAiOnly;
use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};

fn chat_json(model: &str, stream: Option<bool>) -> String {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hello mesh"}]});
    if let Some(stream) = stream {
        body["stream"] = stream.into();
    }
    body.to_string()
}

/// POST and read NDJSON lines as they come.
async fn lines(url: &str, body: String) -> (StatusCode, http::HeaderMap, Vec<Value>) {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "half a line: {text:?}"
    );
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    (parts.status, parts.headers, lines)
}

fn text_of(lines: &[Value], chat: bool) -> String {
    lines
        .iter()
        .filter_map(|l| {
            if chat {
                l["message"]["content"].as_str()
            } else {
                l["response"].as_str()
            }
        })
        .collect()
}

#[tokio::test]
async fn chat_streams_ndjson_by_default_from_an_ollama_node() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    wait_until(|| gw.nodes.list()[0].speaks_ollama()).await;

    let (status, headers, lines) = lines(&gw.url("/api/chat"), chat_json("llama3.2", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert_eq!(headers["x-meshgate-node"], "a");
    assert_eq!(lines.len(), 6, "5 tokens and the done line: {lines:?}");
    assert!(lines[..5].iter().all(|l| l["done"] == false));
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(done["eval_count"], 5);
    // Native: the node got Ollama's request, not a translation.
    assert_eq!(a.stats().by_route.get("/api/chat"), Some(&1));
    assert_eq!(a.stats().by_route.get("/v1/chat/completions"), None);

    let reply = post(&gw.url("/api/chat"), chat_json("llama3.2", Some(false))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    assert_eq!(json["done"], true);
    assert_eq!(json["message"]["content"], text_of(&lines, true));
}

#[tokio::test]
async fn generate_streams_and_not() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    wait_until(|| gw.nodes.list()[0].speaks_ollama()).await;
    let body = json!({"model": "llama3.2", "prompt": "why is the sky blue"});
    let (status, _, lines) = lines(&gw.url("/api/generate"), body.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lines.last().unwrap()["done"], true);
    assert!(!text_of(&lines, false).is_empty());

    let body = json!({"model": "llama3.2", "prompt": "why is the sky blue", "stream": false});
    let reply = post(&gw.url("/api/generate"), body.to_string()).await;
    assert_eq!(reply.json()["response"], text_of(&lines, false));
    assert_eq!(a.stats().by_route["/api/generate"], 2);

    let body = json!({"model": "llama3.2", "input": "alpha"});
    let reply = post(&gw.url("/api/embed"), body.to_string()).await;
    assert_eq!(reply.json()["embeddings"].as_array().unwrap().len(), 1);
    assert_eq!(a.stats().by_route["/api/embed"], 1);
}

#[tokio::test]
async fn an_openai_only_node_gets_a_translated_request_and_the_client_an_ollama_answer() {
    let sim_node = sim("v", &["qwen2.5"]).await;
    let node = OpenAiOnly::start(&sim_node.url()).await;
    let gw = gateway(config_for(&[("vllm", node.url.clone())])).await;
    assert!(!gw.nodes.list()[0].speaks_ollama());

    // Streamed chat: NDJSON lines made from SSE chunks, then done with counters.
    let (status, headers, lines) = lines(&gw.url("/api/chat"), chat_json("qwen2.5", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines[0]["message"]["role"], "assistant");
    assert_eq!(lines[0]["model"], "qwen2.5");
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(done["done_reason"], "stop");
    assert_eq!(done["eval_count"], 5);
    assert!(done["prompt_eval_count"].as_u64().unwrap() > 0);

    // Whole chat and generate.
    let reply = post(&gw.url("/api/chat"), chat_json("qwen2.5", Some(false))).await;
    let json = reply.json();
    assert_eq!(json["done"], true);
    assert_eq!(json["message"]["content"], text_of(&lines, true));
    let body = json!({"model": "qwen2.5", "prompt": "hello mesh", "system": "be brief", "stream": false,
                      "options": {"num_predict": 3, "temperature": 0}});
    let json = post(&gw.url("/api/generate"), body.to_string())
        .await
        .json();
    assert_eq!(json["done_reason"], "length");
    assert_eq!(json["eval_count"], 3);

    // Embeddings.
    let body = json!({"model": "qwen2.5", "input": ["alpha", "beta"]});
    let json = post(&gw.url("/api/embed"), body.to_string()).await.json();
    assert_eq!(json["embeddings"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(json["embeddings"][0].as_array().unwrap().len(), 8);

    // What the node was sent: OpenAI requests.
    let seen = node.inference_requests();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[3].0, "/v1/embeddings");
    assert_eq!(seen[3].1["encoding_format"], "float");
    assert_eq!(seen[0].0, "/v1/chat/completions");
    assert_eq!(seen[0].1["stream"], true);
    assert_eq!(seen[0].1["stream_options"]["include_usage"], true);
    assert_eq!(
        seen[0].1["messages"],
        json!([{"role": "user", "content": "hello mesh"}])
    );
    assert_eq!(seen[1].1["stream"], false);
    assert_eq!(seen[2].0, "/v1/chat/completions");
    assert_eq!(seen[2].1["max_tokens"], 3);
    assert_eq!(
        seen[2].1["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(sim_node.stats().by_route.get("/api/chat"), None);

    // Node errors come back in Ollama's shape with the node's status.
    sim_node.set_faults(Faults {
        status: Some(400),
        ..Faults::default()
    });
    let reply = post(&gw.url("/api/chat"), chat_json("qwen2.5", Some(false))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("injected fault")
    );
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_line_and_no_done() {
    let a = sim("a", &["llama3.2"]).await;
    let sim_v = sim("v", &["qwen2.5"]).await;
    let v = OpenAiOnly::start(&sim_v.url()).await;
    let gw = gateway(config_for(&[("a", a.url()), ("v", v.url.clone())])).await;
    wait_until(|| gw.nodes.list()[0].speaks_ollama()).await;
    for s in [&a, &sim_v] {
        s.set_faults(Faults {
            drop_after: Some(3),
            ..Faults::default()
        });
    }
    for model in ["llama3.2", "qwen2.5"] {
        let (status, _, lines) = lines(&gw.url("/api/chat"), chat_json(model, None)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !lines.iter().any(|l| l["done"] == true),
            "{model}: {lines:?}"
        );
        let last = lines.last().unwrap();
        assert!(
            last["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{model}: {lines:?}"
        );
        assert!(
            lines.len() >= 2,
            "{model}: some lines came first: {lines:?}"
        );
    }
}

#[tokio::test]
async fn errors_are_ollama_shaped_and_bad_input_reaches_no_node() {
    let a = sim("a", &["llama3.2"]).await;
    let mut config = config_for(&[("a", a.url())]);
    config.server.max_request_bytes = 1024;
    let gw = gateway(config).await;
    a.reset_stats();

    let cases: &[(&str, &[u8], StatusCode, &str)] = &[
        (
            "/api/chat",
            b"{\"model\": ",
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            "/api/chat",
            br#"{"messages": []}"#,
            StatusCode::BAD_REQUEST,
            "model",
        ),
        (
            "/api/chat",
            br#"{"model": "", "messages": []}"#,
            StatusCode::BAD_REQUEST,
            "model",
        ),
        (
            "/api/chat",
            br#"{"model": "llama3.2", "messages": "hi"}"#,
            StatusCode::BAD_REQUEST,
            "messages",
        ),
        (
            "/api/chat",
            br#"{"model": "llama3.2", "stream": "yes"}"#,
            StatusCode::BAD_REQUEST,
            "stream",
        ),
        (
            "/api/generate",
            br#"{"model": 7, "prompt": "x"}"#,
            StatusCode::BAD_REQUEST,
            "model",
        ),
        (
            "/api/chat",
            br#"{"model": "nope", "messages": []}"#,
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            "/api/show",
            br#"{"model": "nope"}"#,
            StatusCode::NOT_FOUND,
            "nope",
        ),
    ];
    for (path, body, status, mentions) in cases {
        let reply = post(&gw.url(path), body.to_vec()).await;
        assert_eq!(reply.status, *status, "{}", String::from_utf8_lossy(body));
        assert_eq!(reply.headers["content-type"], "application/json");
        let json = reply.json();
        let error = json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("Ollama's shape: {json}"));
        assert!(
            error.contains(mentions),
            "{error:?} should mention {mentions}"
        );
    }
    let big = chat_json(&"x".repeat(4096), None);
    let reply = post(&gw.url("/api/chat"), big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.json()["error"].as_str().unwrap().contains("1024"));

    let inference = inference_count(&a);
    assert_eq!(
        inference,
        0,
        "bad input reached the node: {:?}",
        a.stats().by_route
    );
}

#[tokio::test]
async fn inventory_is_the_union_over_nodes() {
    let a = sim("a", &["llama3.2", "qwen2.5"]).await;
    let b = sim("b", &["llama3.2", "mistral"]).await;
    let sim_v = sim("v", &["phi4"]).await;
    let v = OpenAiOnly::start(&sim_v.url()).await;
    let gw = gateway(config_for(&[
        ("a", a.url()),
        ("b", b.url()),
        ("v", v.url.clone()),
    ]))
    .await;
    wait_until(|| gw.nodes.list()[0].speaks_ollama() && gw.nodes.list()[1].speaks_ollama()).await;

    let tags = get(&gw.url("/api/tags")).await.json();
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama3.2", "mistral", "phi4", "qwen2.5"]);
    // Ollama nodes' own details are kept.
    assert_eq!(tags["models"][0]["details"]["family"], "llama");

    let ps = get(&gw.url("/api/ps")).await.json();
    assert_eq!(ps["models"].as_array().unwrap().len(), 4, "{ps}");

    let show = post(
        &gw.url("/api/show"),
        json!({"model": "mistral"}).to_string(),
    )
    .await;
    assert_eq!(show.status, StatusCode::OK);
    assert!(
        show.json()["modelfile"]
            .as_str()
            .unwrap()
            .contains("mistral")
    );
    assert_eq!(b.stats().by_route["/api/show"], 1);
    let show = post(&gw.url("/api/show"), json!({"name": "phi4"}).to_string()).await;
    assert_eq!(show.status, StatusCode::OK);
    assert!(show.json()["capabilities"].is_array());

    let version = get(&gw.url("/api/version")).await.json();
    assert!(version["version"].is_string());
}

#[tokio::test]
async fn a_name_without_a_tag_finds_the_latest_tag() {
    let a = sim("a", &["llama3.2:latest"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    let reply = post(&gw.url("/api/chat"), chat_json("llama3.2", Some(false))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["model"], "llama3.2");
}

#[tokio::test]
async fn an_ollama_listener_of_its_own_is_a_drop_in() {
    // Started as an operator starts it: `[ollama] listen` in the config of the binary.
    let a = sim("a", &["llama3.2"]).await;
    let (port, ollama_port) = (free_port(), free_port());
    let config = bin::TempConfig::new(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[ollama]\nlisten = \"127.0.0.1:{ollama_port}\"\n\
         [[nodes]]\nname = \"a\"\nurl = \"{}\"\n",
        a.url()
    ));
    let (_meshgate, _) = bin::serve(&config, port).await;
    let addr = format!("127.0.0.1:{ollama_port}");

    let root = get(&format!("http://{addr}/")).await;
    assert_eq!(&root.body[..], b"Ollama is running");
    let reply = post(
        &format!("http://{addr}/api/chat"),
        chat_json("llama3.2", Some(false)),
    )
    .await;
    assert_eq!(reply.json()["done"], true);
    assert!(
        reply.headers.contains_key("x-request-id"),
        "the same layers run"
    );
    let other = post(
        &format!("http://{addr}/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert!(other.json()["error"].is_string(), "Ollama-shaped 404");
}
