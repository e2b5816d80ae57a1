//! End-to-end tests of the simulated node: a real `Sim` on 127.0.0.1, driven by a
//! plain hyper client, checked the way a client of the node would see it.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_sim::{Faults, Sim, SimConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

// ---------------------------------------------------------------- client helpers

fn request(method: Method, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "sim")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// One HTTP/1.1 connection; kept open so tests can send many requests on it.
struct Conn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn(send)
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> http::Response<Incoming> {
        self.0.ready().await.unwrap();
        self.0.send_request(req).await.unwrap()
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn content_type(&self) -> &str {
        self.headers[header::CONTENT_TYPE].to_str().unwrap()
    }
}

async fn call(sim: &Sim, method: Method, path: &str, body: impl Into<Bytes>) -> Answer {
    let resp = Conn::open(sim.addr())
        .await
        .send(request(method, path, body))
        .await;
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn post(sim: &Sim, path: &str, body: Value) -> Answer {
    call(sim, Method::POST, path, body.to_string()).await
}

async fn get(sim: &Sim, path: &str) -> Answer {
    call(sim, Method::GET, path, Bytes::new()).await
}

/// Reads a body frame by frame: the bytes that arrived, and whether it ended in an
/// error (connection cut) rather than a clean end.
async fn read_until_end(mut body: Incoming) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    loop {
        match body.frame().await {
            None => return (data, false),
            Some(Err(_)) => return (data, true),
            Some(Ok(frame)) => data.extend_from_slice(&frame.into_data().unwrap_or_default()),
        }
    }
}

/// The JSON payloads of an SSE body; `[DONE]` is returned as the string itself.
fn sse_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\n\n"), "unterminated SSE body: {body:?}");
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {e:?}"));
            if data == "[DONE]" {
                Value::String(data.into())
            } else {
                serde_json::from_str(data).unwrap()
            }
        })
        .collect()
}

fn ndjson_lines(body: &str) -> Vec<Value> {
    assert!(body.ends_with('\n'), "unterminated NDJSON body: {body:?}");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn chat_body(content: &str) -> Value {
    json!({"model": "llama3.2", "messages": [{"role": "user", "content": content}]})
}

fn with(mut base: Value, extra: Value) -> Value {
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    base
}

async fn sim(cfg: SimConfig) -> Sim {
    Sim::start(cfg).await.unwrap()
}

/// Waits (bounded) until the node reports `n` requests in flight.
async fn wait_in_flight(sim: &Sim, n: u64) {
    for _ in 0..2_000 {
        if sim.stats().in_flight == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("in_flight never reached {n}: {:?}", sim.stats());
}

// ---------------------------------------------------------------- OpenAI

#[tokio::test]
async fn chat_completion_is_deterministic_with_usage() {
    let sim = sim(SimConfig::default()).await;
    let a = post(&sim, "/v1/chat/completions", chat_body("tell me a story")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.content_type(), "application/json");
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "llama3.2");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(content.split(' ').count(), 16, "{content}");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 16, "total_tokens": 20})
    );

    let again = post(&sim, "/v1/chat/completions", chat_body("tell me a story"))
        .await
        .json();
    assert_eq!(again["choices"][0]["message"]["content"], content);
    let other = post(&sim, "/v1/chat/completions", chat_body("tell me a joke"))
        .await
        .json();
    assert_ne!(other["choices"][0]["message"]["content"], content);
}

#[tokio::test]
async fn max_tokens_cuts_the_reply_with_finish_reason_length() {
    let sim = sim(SimConfig::default()).await;
    for limit in [
        json!({"max_tokens": 3}),
        json!({"max_completion_tokens": 3, "max_tokens": 50}),
    ] {
        let v = post(&sim, "/v1/chat/completions", with(chat_body("hi"), limit))
            .await
            .json();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .split(' ')
                .count(),
            3
        );
        assert_eq!(v["usage"]["completion_tokens"], 3);
    }
    let v = post(
        &sim,
        "/v1/chat/completions",
        with(chat_body("hi"), json!({"max_tokens": 16})),
    )
    .await
    .json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let a = post(
        &sim,
        "/v1/chat/completions",
        with(chat_body("hi"), json!({"max_tokens": 0})),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["param"], "max_tokens");
}

#[tokio::test]
async fn chat_stream_with_usage_follows_openai_framing() {
    let sim = sim(SimConfig {
        tokens: 5,
        ..SimConfig::default()
    })
    .await;
    let body = with(
        chat_body("stream it"),
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let a = post(&sim, "/v1/chat/completions", body).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.content_type(), "text/event-stream");
    assert!(a.text().ends_with("data: [DONE]\n\n"));
    let events = sse_events(a.text());
    // role, 5 tokens, finish, usage, [DONE]
    assert_eq!(events.len(), 9, "{events:#?}");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = events[1..6]
        .iter()
        .map(|e| {
            assert_eq!(e["object"], "chat.completion.chunk");
            assert!(e["choices"][0]["finish_reason"].is_null());
            e["choices"][0]["delta"]["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(events[6]["choices"][0]["finish_reason"], "stop");
    for e in &events[..7] {
        assert!(
            e.get("usage").is_some_and(Value::is_null),
            "usage must be null before the last chunk: {e}"
        );
    }
    assert_eq!(events[7]["choices"], json!([]));
    assert_eq!(
        events[7]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7})
    );
    assert_eq!(events[8], "[DONE]");
    let ids: Vec<_> = events[..8].iter().map(|e| e["id"].clone()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]));

    let whole = post(&sim, "/v1/chat/completions", chat_body("stream it"))
        .await
        .json();
    assert_eq!(whole["choices"][0]["message"]["content"], content.as_str());
}

#[tokio::test]
async fn chat_stream_without_usage_has_no_usage_key() {
    let sim = sim(SimConfig {
        tokens: 3,
        ..SimConfig::default()
    })
    .await;
    let a = post(
        &sim,
        "/v1/chat/completions",
        with(chat_body("x"), json!({"stream": true, "max_tokens": 2})),
    )
    .await;
    let events = sse_events(a.text());
    assert_eq!(events.len(), 5, "{events:#?}"); // role, 2 tokens, finish, [DONE]
    assert!(events[..4].iter().all(|e| e.get("usage").is_none()));
    assert_eq!(events[3]["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn text_completions_whole_and_streamed() {
    let sim = sim(SimConfig {
        tokens: 4,
        ..SimConfig::default()
    })
    .await;
    let v = post(
        &sim,
        "/v1/completions",
        json!({"model": "llama3.2", "prompt": "once upon a time"}),
    )
    .await
    .json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text.split(' ').count(), 4);
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8})
    );

    let body = json!({"model": "llama3.2", "prompt": "once upon a time", "stream": true,
        "stream_options": {"include_usage": true}});
    let a = post(&sim, "/v1/completions", body).await;
    assert_eq!(a.content_type(), "text/event-stream");
    let events = sse_events(a.text());
    assert_eq!(events.len(), 7, "{events:#?}"); // 4 tokens, finish, usage, [DONE]
    let streamed: String = events[..4]
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);
    assert!(
        events
            .iter()
            .take(5)
            .all(|e| e["object"] == "text_completion" && e["usage"].is_null())
    );
    assert_eq!(events[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[5]["usage"]["completion_tokens"], 4);
    assert_eq!(events[6], "[DONE]");

    let v = post(
        &sim,
        "/v1/completions",
        json!({"model": "llama3.2", "prompt": [1, 2, 3]}),
    )
    .await
    .json();
    assert_eq!(v["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn embeddings_float_and_base64_agree() {
    let sim = sim(SimConfig::default()).await;
    let req = json!({"model": "llama3.2", "input": ["alpha", "beta gamma"]});
    let floats = post(&sim, "/v1/embeddings", req.clone()).await.json();
    assert_eq!(floats["object"], "list");
    assert_eq!(
        floats["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    let data = floats["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let vectors: Vec<Vec<f32>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i);
            assert_eq!(d["object"], "embedding");
            serde_json::from_value(d["embedding"].clone()).unwrap()
        })
        .collect();
    for v in &vectors {
        assert_eq!(v.len(), 8);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    assert_ne!(vectors[0], vectors[1]);

    let b64 = post(
        &sim,
        "/v1/embeddings",
        with(req, json!({"encoding_format": "base64"})),
    )
    .await
    .json();
    for (d, v) in b64["data"].as_array().unwrap().iter().zip(&vectors) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(d["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = raw
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(&decoded, v);
    }

    let single = post(
        &sim,
        "/v1/embeddings",
        json!({"model": "llama3.2", "input": "alpha", "dimensions": 3}),
    )
    .await;
    assert_eq!(
        single.json()["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let bad = post(
        &sim,
        "/v1/embeddings",
        json!({"model": "llama3.2", "input": "a", "encoding_format": "int8"}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["param"], "encoding_format");
}

#[tokio::test]
async fn models_list_and_retrieve() {
    let sim = sim(SimConfig {
        name: "node-a".into(),
        models: vec!["llama3.2".into(), "qwen2.5".into()],
        ..SimConfig::default()
    })
    .await;
    let v = get(&sim, "/v1/models").await.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<_> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].clone(), m["owned_by"].clone()))
        .collect();
    assert_eq!(
        ids,
        [
            (json!("llama3.2"), json!("node-a")),
            (json!("qwen2.5"), json!("node-a"))
        ]
    );
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(
        get(&sim, "/v1/models/qwen2.5").await.json()["id"],
        "qwen2.5"
    );
    let missing = get(&sim, "/v1/models/org/other").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn unknown_model_gets_openai_404_envelope() {
    let sim = sim(SimConfig::default()).await;
    let bodies = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}),
        ),
        ("/v1/completions", json!({"model": "gpt-9", "prompt": "x"})),
        ("/v1/embeddings", json!({"model": "gpt-9", "input": "x"})),
    ];
    for (path, body) in bodies {
        let a = post(&sim, path, body).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.content_type(), "application/json");
        let e = &a.json()["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["param"], "model");
        assert_eq!(e["code"], "model_not_found");
        assert!(e["message"].as_str().unwrap().contains("gpt-9"));
    }
    assert_eq!(sim.stats().by_model["gpt-9"], 3);
}

#[tokio::test]
async fn malformed_or_mistyped_json_gets_400_envelope() {
    let sim = sim(SimConfig::default()).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            r#"{"model":"llama3.2","messages":["#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"llama3.2","messages":"hi"}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"llama3.2","messages":[]}"#,
        ),
        ("/v1/completions", r#"{"model":"llama3.2"}"#),
        ("/v1/embeddings", r#"{"model":"llama3.2","input":[]}"#),
        ("/v1/embeddings", "not json"),
    ] {
        let a = call(&sim, Method::POST, path, body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path} {body}");
        let e = &a.json()["error"];
        assert_eq!(e["type"], "invalid_request_error", "{e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    // Counted, but only requests whose body parsed name a model.
    let stats = sim.stats();
    assert_eq!(stats.total, 6);
    assert_eq!(stats.by_model["llama3.2"], 2);
}

// ---------------------------------------------------------------- Ollama

#[tokio::test]
async fn ollama_chat_streams_ndjson_by_default() {
    let sim = sim(SimConfig {
        tokens: 6,
        ..SimConfig::default()
    })
    .await;
    let body = json!({"model": "llama3.2", "messages": [{"role": "user", "content": "why is the sky blue"}]});
    let a = post(&sim, "/api/chat", body.clone()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.content_type(), "application/x-ndjson");
    let lines = ndjson_lines(a.text());
    assert_eq!(lines.len(), 7);
    for l in &lines[..6] {
        assert_eq!(l["done"], false);
        assert_eq!(l["message"]["role"], "assistant");
        assert_eq!(l["model"], "llama3.2");
        assert!(l["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let last = &lines[6];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["eval_count"], 6);
    assert_eq!(last["prompt_eval_count"], 5);
    assert!(last["eval_duration"].as_u64().unwrap() > 0);
    let streamed: String = lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();

    let whole = post(&sim, "/api/chat", with(body, json!({"stream": false}))).await;
    assert_eq!(whole.content_type(), "application/json");
    let v = whole.json();
    assert_eq!(v["done"], true);
    assert_eq!(v["message"]["content"], streamed.as_str());

    // The same conversation gets the same words over OpenAI's API.
    let openai = post(
        &sim,
        "/v1/chat/completions",
        chat_body("why is the sky blue"),
    )
    .await
    .json();
    assert_eq!(
        openai["choices"][0]["message"]["content"],
        streamed.as_str()
    );
}

#[tokio::test]
async fn ollama_generate_streams_and_honours_num_predict() {
    let sim = sim(SimConfig::default()).await;
    let body =
        json!({"model": "llama3.2", "prompt": "count to ten", "options": {"num_predict": 2}});
    let lines = ndjson_lines(post(&sim, "/api/generate", body.clone()).await.text());
    assert_eq!(lines.len(), 3);
    assert!(
        lines[..2]
            .iter()
            .all(|l| l["done"] == false && !l["response"].as_str().unwrap().is_empty())
    );
    assert_eq!(lines[2]["done"], true);
    assert_eq!(lines[2]["done_reason"], "length");
    assert_eq!(lines[2]["eval_count"], 2);
    assert_eq!(lines[2]["prompt_eval_count"], 3);

    let v = post(&sim, "/api/generate", with(body, json!({"stream": false})))
        .await
        .json();
    let streamed: String = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert_eq!(v["response"], streamed.as_str());
    assert_eq!(v["done_reason"], "length");

    // An empty prompt only loads the model, as Ollama does.
    let v = post(&sim, "/api/generate", json!({"model": "llama3.2"}))
        .await
        .json();
    assert_eq!(
        (v["done"].clone(), v["done_reason"].clone()),
        (json!(true), json!("load"))
    );
}

#[tokio::test]
async fn ollama_inventory_routes() {
    let sim = sim(SimConfig {
        models: vec!["llama3.2".into(), "qwen2.5".into()],
        loaded: Some(vec!["qwen2.5".into()]),
        ..SimConfig::default()
    })
    .await;
    let tags = get(&sim, "/api/tags").await.json();
    let names: Vec<_> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama3.2", "qwen2.5"]);
    assert_eq!(tags["models"][0]["digest"].as_str().unwrap().len(), 64);
    assert_eq!(tags["models"][0]["details"]["format"], "gguf");

    let ps = get(&sim, "/api/ps").await.json();
    let loaded: Vec<_> = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(loaded, ["qwen2.5"]);
    assert_eq!(ps["models"][0]["digest"], tags["models"][1]["digest"]);

    let default_ps = get(&self::sim(SimConfig::default()).await, "/api/ps")
        .await
        .json();
    assert_eq!(default_ps["models"][0]["name"], "llama3.2");

    assert!(
        !get(&sim, "/api/version").await.json()["version"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    let show = post(&sim, "/api/show", json!({"model": "qwen2.5"})).await;
    assert_eq!(show.status, StatusCode::OK);
    assert_eq!(show.json()["model_info"]["llama.embedding_length"], 8);
    assert_eq!(
        post(&sim, "/api/show", json!({"name": "llama3.2:latest"}))
            .await
            .status,
        StatusCode::OK
    );
    let missing = post(&sim, "/api/show", json!({"model": "mistral"})).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing.json()["error"]
            .as_str()
            .unwrap()
            .contains("mistral")
    );
}

#[tokio::test]
async fn ollama_errors_and_embed() {
    let sim = sim(SimConfig::default()).await;
    let a = post(
        &sim,
        "/api/chat",
        json!({"model": "mistral", "messages": []}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(
        a.json()["error"].is_string(),
        "Ollama's error shape: {}",
        a.text()
    );
    let a = call(&sim, Method::POST, "/api/generate", "{nope").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.json()["error"].is_string());

    let v = post(
        &sim,
        "/api/embed",
        json!({"model": "llama3.2", "input": ["alpha", "beta gamma"]}),
    )
    .await
    .json();
    assert_eq!(v["model"], "llama3.2");
    assert_eq!(v["prompt_eval_count"], 3);
    let openai = post(
        &sim,
        "/v1/embeddings",
        json!({"model": "llama3.2", "input": "beta gamma"}),
    )
    .await
    .json();
    assert_eq!(v["embeddings"][1], openai["data"][0]["embedding"]);
    let one = post(
        &sim,
        "/api/embed",
        json!({"model": "llama3.2", "input": "alpha"}),
    )
    .await
    .json();
    assert_eq!(one["embeddings"], json!([v["embeddings"][0]]));
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn status_fault_answers_everything_with_that_status() {
    let sim = sim(SimConfig {
        faults: Faults {
            status: Some(503),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let a = post(&sim, "/v1/chat/completions", chat_body("hi")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["error"]["type"], "server_error");
    assert!(a.headers.get(header::RETRY_AFTER).is_none());
    assert_eq!(
        get(&sim, "/v1/models").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let a = get(&sim, "/api/tags").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.json()["error"].is_string());

    sim.set_faults(Faults {
        status: Some(429),
        ..Faults::default()
    });
    let a = post(&sim, "/v1/chat/completions", chat_body("hi")).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers[header::RETRY_AFTER], "1");
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");

    // Faulted requests still reach the node, and control routes are never faulted.
    let stats = get(&sim, "/sim/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.json()["total"], 4);
    sim.set_faults(Faults::default());
    assert_eq!(
        post(&sim, "/v1/chat/completions", chat_body("hi"))
            .await
            .status,
        StatusCode::OK
    );
}

/// Statuses of `n` chat requests, sent in order on one connection.
async fn statuses(sim: &Sim, n: usize) -> Vec<u16> {
    let mut conn = Conn::open(sim.addr()).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let resp = conn
            .send(request(
                Method::POST,
                "/v1/chat/completions",
                chat_body("hi").to_string(),
            ))
            .await;
        out.push(resp.status().as_u16());
        resp.into_body().collect().await.unwrap();
    }
    out
}

#[tokio::test]
async fn error_rate_is_a_reproducible_fraction() {
    let faults = Faults {
        error_rate: 0.3,
        ..Faults::default()
    };
    let sim = sim(SimConfig {
        seed: 42,
        faults: faults.clone(),
        ..SimConfig::default()
    })
    .await;
    let first = statuses(&sim, 300).await;
    let failed = first.iter().filter(|s| **s == 500).count();
    assert_eq!(failed + first.iter().filter(|s| **s == 200).count(), 300);
    assert!(
        (60..=120).contains(&failed),
        "{failed} of 300 failed at rate 0.3"
    );

    // Same seed, same counter: the same requests fail again.
    sim.reset_stats();
    assert_eq!(statuses(&sim, 300).await, first);
    let other = self::sim(SimConfig {
        seed: 43,
        faults,
        ..SimConfig::default()
    })
    .await;
    assert_ne!(statuses(&other, 300).await, first);
}

#[tokio::test]
async fn drop_after_cuts_a_stream_after_n_chunks() {
    let sim = sim(SimConfig {
        faults: Faults {
            drop_after: Some(3),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let body = with(chat_body("hi"), json!({"stream": true}));
    let resp = Conn::open(sim.addr())
        .await
        .send(request(
            Method::POST,
            "/v1/chat/completions",
            body.to_string(),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (data, cut) = read_until_end(resp.into_body()).await;
    assert!(
        cut,
        "the client must see an incomplete body, not a clean end"
    );
    let events = sse_events(std::str::from_utf8(&data).unwrap());
    assert_eq!(events.len(), 3, "{events:#?}");
    assert!(!events.contains(&json!("[DONE]")));

    // Ollama streams are cut the same way.
    let body = json!({"model": "llama3.2", "prompt": "hi"});
    let resp = Conn::open(sim.addr())
        .await
        .send(request(Method::POST, "/api/generate", body.to_string()))
        .await;
    let (data, cut) = read_until_end(resp.into_body()).await;
    assert!(cut);
    assert_eq!(ndjson_lines(std::str::from_utf8(&data).unwrap()).len(), 3);
}

#[tokio::test]
async fn drop_after_cuts_a_whole_body_halfway() {
    let sim = sim(SimConfig {
        faults: Faults {
            drop_after: Some(1),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let resp = Conn::open(sim.addr())
        .await
        .send(request(
            Method::POST,
            "/v1/chat/completions",
            chat_body("hi").to_string(),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (data, cut) = read_until_end(resp.into_body()).await;
    assert!(cut);
    assert!(
        data.starts_with(b"{\"id\":\"chatcmpl-"),
        "{:?}",
        String::from_utf8_lossy(&data)
    );
    assert!(serde_json::from_slice::<Value>(&data).is_err());
    wait_in_flight(&sim, 0).await;
}

#[tokio::test(start_paused = true)]
async fn stall_holds_the_request_until_the_client_leaves() {
    let sim = sim(SimConfig {
        faults: Faults {
            stall: true,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let body = chat_body("hi").to_string();
    let mut raw = TcpStream::connect(sim.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    raw.write_all(body.as_bytes()).await.unwrap();
    wait_in_flight(&sim, 1).await;

    // An hour later there is still no answer.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3600), raw.read(&mut buf)).await;
    assert!(read.is_err(), "a stalled node must not answer: {read:?}");
    assert_eq!(sim.stats().in_flight, 1);

    drop(raw);
    wait_in_flight(&sim, 0).await;
    let stats = sim.stats();
    assert_eq!((stats.total, stats.by_model["llama3.2"]), (1, 1));
}

// ---------------------------------------------------------------- timing

#[tokio::test(start_paused = true)]
async fn stream_waits_ttft_then_paces_tokens() {
    let sim = sim(SimConfig {
        tokens: 4,
        ttft: Duration::from_secs(2),
        token_delay: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await;
    let body = with(chat_body("hi"), json!({"stream": true}));
    let start = Instant::now();
    let resp = Conn::open(sim.addr())
        .await
        .send(request(
            Method::POST,
            "/v1/chat/completions",
            body.to_string(),
        ))
        .await;
    let mut body = resp.into_body();
    // (ms since the request, content of each token event)
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        let at = start.elapsed().as_millis();
        for event in sse_events(std::str::from_utf8(&data).unwrap()) {
            if let Some(c) = event["choices"][0]["delta"]["content"]
                .as_str()
                .filter(|c| !c.is_empty())
            {
                arrivals.push((at, c.to_owned()));
            }
        }
        // While the stream is being sent it counts as in flight.
        if at < 2_300 {
            assert_eq!(sim.stats().in_flight, 1);
        }
    }
    let times: Vec<_> = arrivals.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [2_000, 2_100, 2_200, 2_300]);
    wait_in_flight(&sim, 0).await;
}

#[tokio::test(start_paused = true)]
async fn whole_answer_waits_ttft_plus_all_tokens() {
    let sim = sim(SimConfig {
        tokens: 4,
        ..SimConfig::default()
    })
    .await;
    let start = Instant::now();
    assert_eq!(
        post(&sim, "/v1/chat/completions", chat_body("hi"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no latency configured: answers at once"
    );

    sim.set_latency(Duration::from_secs(1), Duration::from_millis(250));
    let start = Instant::now();
    let a = post(
        &sim,
        "/api/chat",
        json!({"model": "llama3.2", "messages": [], "stream": false}),
    )
    .await;
    assert_eq!(a.json()["done_reason"], "load");
    let start_chat = Instant::now();
    assert!(
        start_chat - start < Duration::from_secs(1),
        "a load-only answer generates nothing"
    );
    post(&sim, "/v1/chat/completions", chat_body("hi")).await;
    assert_eq!(start_chat.elapsed(), Duration::from_millis(2_000));

    // The same through the control route.
    let a = post(&sim, "/sim/latency", json!({"ttft_ms": 500})).await;
    assert_eq!(a.json(), json!({"ttft_ms": 500, "token_delay_ms": 250}));
    let start = Instant::now();
    post(
        &sim,
        "/v1/chat/completions",
        with(chat_body("hi"), json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(start.elapsed(), Duration::from_millis(1_000));
}

// ---------------------------------------------------------------- stats and control

#[tokio::test]
async fn stats_count_api_requests_by_route_and_model() {
    let sim = sim(SimConfig {
        name: "n1".into(),
        models: vec!["a".into(), "b".into()],
        ..SimConfig::default()
    })
    .await;
    let chat = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "x"}]});
    post(&sim, "/v1/chat/completions", chat("a")).await;
    post(&sim, "/v1/chat/completions", chat("b")).await;
    post(&sim, "/api/chat", with(chat("a"), json!({"stream": false}))).await;
    get(&sim, "/v1/models").await;
    get(&sim, "/sim/stats").await;
    get(&sim, "/sim/faults").await;
    assert_eq!(get(&sim, "/nope").await.status, StatusCode::NOT_FOUND);

    let s = get(&sim, "/sim/stats").await.json();
    assert_eq!(s["name"], "n1");
    assert_eq!(s["total"], 4);
    assert_eq!(s["in_flight"], 0);
    assert_eq!(s["max_in_flight"], 1);
    assert_eq!(
        s["by_route"],
        json!({"/v1/chat/completions": 2, "/api/chat": 1, "/v1/models": 1})
    );
    assert_eq!(s["by_model"], json!({"a": 2, "b": 1}));
    assert_eq!(serde_json::to_value(sim.stats()).unwrap(), s);

    assert_eq!(
        post(&sim, "/sim/reset", json!({})).await.status,
        StatusCode::NO_CONTENT
    );
    let s = sim.stats();
    assert_eq!(
        (s.total, s.max_in_flight, s.by_route.len(), s.by_model.len()),
        (0, 0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn max_in_flight_tracks_concurrent_requests() {
    let sim = sim(SimConfig {
        ttft: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .await;
    let addr = sim.addr();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                let resp = Conn::open(addr)
                    .await
                    .send(request(
                        Method::POST,
                        "/v1/chat/completions",
                        chat_body("x").to_string(),
                    ))
                    .await;
                resp.into_body().collect().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = sim.stats();
    assert_eq!((s.total, s.in_flight, s.max_in_flight), (3, 0, 3));
}

#[tokio::test]
async fn faults_can_be_set_over_http() {
    let sim = sim(SimConfig::default()).await;
    let a = post(&sim, "/sim/faults", json!({"status": 502})).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        sim.faults(),
        Faults {
            status: Some(502),
            ..Faults::default()
        }
    );
    assert_eq!(
        post(&sim, "/v1/chat/completions", chat_body("hi"))
            .await
            .status,
        StatusCode::BAD_GATEWAY
    );

    for bad in [
        json!({"status": 200}),
        json!({"error_rate": 2.0}),
        json!({"stauts": 500}),
    ] {
        let a = post(&sim, "/sim/faults", bad.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(a.json()["error"].is_string());
    }
    assert_eq!(
        sim.faults().status,
        Some(502),
        "a rejected update changes nothing"
    );

    post(&sim, "/sim/faults", json!({})).await;
    assert_eq!(sim.faults(), Faults::default());
    assert_eq!(
        post(&sim, "/v1/chat/completions", chat_body("hi"))
            .await
            .status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------- lifecycle and protocols

#[tokio::test(start_paused = true)]
async fn kill_cuts_streams_and_revive_serves_on_the_same_port() {
    let sim = sim(SimConfig {
        token_delay: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .await;
    let addr = sim.addr();
    let body = with(chat_body("hi"), json!({"stream": true}));
    let resp = Conn::open(addr)
        .await
        .send(request(
            Method::POST,
            "/v1/chat/completions",
            body.to_string(),
        ))
        .await;
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(sim.stats().in_flight, 1);

    sim.kill();
    let (_, cut) = read_until_end(body).await;
    assert!(cut, "a killed node must cut the stream, not end it");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a killed node must not accept connections"
    );
    wait_in_flight(&sim, 0).await;

    sim.revive().await.unwrap();
    assert_eq!(sim.addr(), addr);
    let a = post(
        &sim,
        "/v1/chat/completions",
        with(chat_body("hi"), json!({"max_tokens": 1})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(sim.stats().total, 2, "counters survive a kill");
    sim.revive().await.unwrap(); // a no-op on a running node
    assert_eq!(get(&sim, "/v1/models").await.status, StatusCode::OK);
}

#[tokio::test]
async fn dropping_the_handle_stops_the_node() {
    let sim = sim(SimConfig::default()).await;
    let addr = sim.addr();
    drop(sim);
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections after the Sim was dropped");
}

#[tokio::test]
async fn serves_h2c_with_prior_knowledge() {
    let sim = sim(SimConfig::default()).await;
    let stream = TcpStream::connect(sim.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let uri = format!("{}/v1/chat/completions", sim.url());
    let req = Request::post(uri)
        .body(Full::new(Bytes::from(chat_body("hi").to_string())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["object"], "chat.completion");
}

#[tokio::test]
async fn llama_cpp_extras_health_and_timings() {
    let sim = sim(SimConfig {
        tokens: 4,
        ttft: Duration::from_millis(20),
        token_delay: Duration::from_millis(5),
        ..SimConfig::default()
    })
    .await;
    let health = get(&sim, "/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok"}));

    // Whole: `timings` beside `usage`, with the same counts.
    let a = post(&sim, "/v1/chat/completions", chat_body("time it")).await;
    let body = a.json();
    let timings = &body["timings"];
    assert_eq!(timings["predicted_n"], body["usage"]["completion_tokens"]);
    assert_eq!(timings["prompt_n"], body["usage"]["prompt_tokens"]);
    assert_eq!(timings["prompt_ms"], 20.0);
    assert_eq!(timings["predicted_ms"], 20.0);
    assert_eq!(timings["predicted_per_second"], 200.0);

    // Streamed: on the chunk that carries finish_reason, as llama-server sends it.
    let body = with(chat_body("time it"), json!({"stream": true}));
    let events = sse_events(post(&sim, "/v1/chat/completions", body).await.text());
    let finish = events
        .iter()
        .find(|e| e["choices"][0]["finish_reason"].is_string())
        .unwrap();
    assert_eq!(finish["timings"]["predicted_n"], 4, "{finish}");
    assert!(events.iter().filter(|e| e.get("timings").is_some()).count() == 1);
}
