//! OpenAI's Responses API and Anthropic's Messages API through meshgate, on nodes that
//! speak them natively and on nodes that speak only chat completions (translated both
//! ways): whole and streamed, tool calls, the response store, errors in each API's own
//! shape, and bad input that never reaches a node.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use meshgate::config::KeyConfig;
use meshgate::keys::sha256;
use serde_json::{Value, json};

async fn node(name: &str, native: bool) -> Sim {
    Sim::start(SimConfig {
        name: name.into(),
        models: vec!["llama3.2".into()],
        tokens: 5,
        native_apis: native,
        ..SimConfig::default()
    })
    .await
    .expect("sim starts")
}

fn route_count(sim: &Sim, path: &str) -> u64 {
    sim.stats().by_route.get(path).copied().unwrap_or(0)
}

fn inference(sim: &Sim) -> u64 {
    ["/v1/chat/completions", "/v1/responses", "/v1/messages"]
        .iter()
        .map(|p| route_count(sim, p))
        .sum()
}

async fn call(url: &str, headers: &[(&str, &str)], method: &str, body: Value) -> Reply {
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let response = client()
        .request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// `event:` names and data of a whole SSE body.
fn events(body: &[u8]) -> Vec<(String, Value)> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut kind = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).unwrap_or_else(|_| panic!("not JSON: {v}"));
                }
            }
            (kind, data)
        })
        .collect()
}

const WEATHER: &str = r#"{"type":"function","name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_whole_and_streamed_on_native_and_translated_nodes() {
    for native in [true, false] {
        let sim = node("n", native).await;
        let gw = gateway_for(&[("n", &sim)]).await;
        let url = gw.url("/v1/responses");
        let r = call(
            &url,
            &[],
            "POST",
            json!({"model": "llama3.2", "input": "hello there", "instructions": "be brief"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let j = r.json();
        assert_eq!(j["object"], "response");
        assert_eq!(j["status"], "completed");
        assert_eq!(j["output"][0]["type"], "message");
        assert!(
            j["output"][0]["content"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
        assert!(j["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert_eq!(j["usage"]["output_tokens"], 5);

        let r = call(
            &url,
            &[],
            "POST",
            json!({"model": "llama3.2", "input": [{"role": "user", "content": "stream it"}], "stream": true}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["content-type"], "text/event-stream");
        let evs = events(&r.body);
        let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds[..2], ["response.created", "response.in_progress"]);
        assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
        for k in [
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
        ] {
            assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
        }
        for (i, (_, e)) in evs.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64, "{kinds:?}");
        }
        let deltas: String = evs
            .iter()
            .filter(|(k, _)| k == "response.output_text.delta")
            .map(|(_, e)| e["delta"].as_str().unwrap())
            .collect();
        let done = &evs.last().unwrap().1["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], deltas);
        assert_eq!(done["usage"]["output_tokens"], 5);

        // Which API the node was asked in.
        let (ours, other) = if native {
            ("/v1/responses", "/v1/chat/completions")
        } else {
            ("/v1/chat/completions", "/v1/responses")
        };
        assert_eq!(route_count(&sim, ours), 2, "native={native}");
        assert_eq!(route_count(&sim, other), 0, "native={native}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_function_call_round_trip_and_follow_up_on_another_node() {
    // The follow-up lands on whichever node; the store makes it work on both kinds.
    let native = node("native", true).await;
    let plain = node("plain", false).await;
    let gw = gateway_for(&[("native", &native), ("plain", &plain)]).await;
    let url = gw.url("/v1/responses");
    let tools: Value = serde_json::from_str(&format!("[{WEATHER}]")).unwrap();
    for stream in [false, true] {
        let r = call(
            &url,
            &[],
            "POST",
            json!({"model": "llama3.2", "input": "weather in Oslo?", "tools": tools, "stream": stream}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let response = if stream {
            let evs = events(&r.body);
            assert!(
                evs.iter()
                    .any(|(k, _)| k == "response.function_call_arguments.delta")
            );
            assert!(
                evs.iter()
                    .any(|(k, _)| k == "response.function_call_arguments.done")
            );
            evs.last().unwrap().1["response"].clone()
        } else {
            r.json()
        };
        let call_item = &response["output"][0];
        assert_eq!(call_item["type"], "function_call", "{response}");
        assert_eq!(call_item["name"], "get_weather");
        assert_eq!(call_item["arguments"], r#"{"city":"sim"}"#);
        let id = response["id"].as_str().unwrap();
        // The follow-up must go to the other node (of the other kind): this one fails.
        let served = served_by(&r).to_owned();
        let (this, other) = if served == "native" {
            (&native, "plain")
        } else {
            (&plain, "native")
        };
        this.set_faults(Faults {
            status: Some(503),
            ..Faults::default()
        });

        // The tool's output, continuing the stored conversation.
        for _ in 0..2 {
            let r = call(
                &url,
                &[],
                "POST",
                json!({"model": "llama3.2", "previous_response_id": id, "tools": tools,
                    "input": [{"type": "function_call_output", "call_id": call_item["call_id"], "output": "sunny"}]}),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            assert_eq!(r.json()["output"][0]["type"], "message");
            assert_eq!(r.json()["previous_response_id"], id);
            assert_eq!(served_by(&r), other);
        }
        this.set_faults(Faults::default());
        let nodes = std::sync::Arc::clone(&gw.nodes);
        wait_until(|| nodes.list().iter().all(|n| n.is_online())).await;
    }

    // GET and DELETE what was stored; then it is gone.
    let r = call(
        &url,
        &[],
        "POST",
        json!({"model": "llama3.2", "input": "keep me"}),
    )
    .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let got = call(
        &gw.url(&format!("/v1/responses/{id}")),
        &[],
        "GET",
        Value::Null,
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["id"], id.as_str());
    let del = call(
        &gw.url(&format!("/v1/responses/{id}")),
        &[],
        "DELETE",
        Value::Null,
    )
    .await;
    assert_eq!(del.json()["deleted"], true);
    let got = call(
        &gw.url(&format!("/v1/responses/{id}")),
        &[],
        "GET",
        Value::Null,
    )
    .await;
    got.assert_error(StatusCode::NOT_FOUND, "not_found");
    let before = inference(&native) + inference(&plain);
    let r = call(
        &url,
        &[],
        "POST",
        json!({"model": "llama3.2", "previous_response_id": id, "input": "again"}),
    )
    .await;
    let j = r.assert_error(StatusCode::BAD_REQUEST, "previous_response_not_found");
    assert_eq!(j["error"]["param"], "previous_response_id");
    // store: false keeps it out.
    let r = call(
        &url,
        &[],
        "POST",
        json!({"model": "llama3.2", "input": "forget me", "store": false}),
    )
    .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let got = call(
        &gw.url(&format!("/v1/responses/{id}")),
        &[],
        "GET",
        Value::Null,
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(inference(&native) + inference(&plain), before + 1);
}

fn key(name: &str, secret: &str) -> KeyConfig {
    KeyConfig {
        name: name.into(),
        sha256: Some(hex::encode(sha256(secret.as_bytes()))),
        key_env: None,
        models: None,
        requests_per_minute: None,
        burst: None,
        tokens_per_minute: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_responses_belong_to_their_key_and_anthropic_takes_x_api_key() {
    let sim = node("n", false).await;
    let mut config = config_for(&[("n", sim.url())]);
    config.keys = vec![key("alice", "sk-alice"), key("bob", "sk-bob")];
    let gw = gateway(config).await;
    let alice = [("authorization", "Bearer sk-alice")];
    let bob = [("authorization", "Bearer sk-bob")];
    let r = call(
        &gw.url("/v1/responses"),
        &alice,
        "POST",
        json!({"model": "llama3.2", "input": "mine"}),
    )
    .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/responses/{id}");
    assert_eq!(
        call(&gw.url(&path), &alice, "GET", Value::Null)
            .await
            .status,
        StatusCode::OK
    );
    call(&gw.url(&path), &bob, "GET", Value::Null)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let before = inference(&sim);
    call(
        &gw.url("/v1/responses"),
        &bob,
        "POST",
        json!({"model": "llama3.2", "input": "steal", "previous_response_id": id}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "previous_response_not_found");
    assert_eq!(inference(&sim), before, "refused before any node");

    // Messages: x-api-key, and Anthropic's error shape without one.
    let body = json!({"model": "llama3.2", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]});
    let r = call(
        &gw.url("/v1/messages"),
        &[("x-api-key", "sk-bob"), ("anthropic-version", "2023-06-01")],
        "POST",
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["type"], "message");
    let r = call(&gw.url("/v1/messages"), &[], "POST", body.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json(),
        json!({"type": "error", "error": {"type": "authentication_error",
            "message": r.json()["error"]["message"]}})
    );
    let r = call(
        &gw.url("/v1/messages"),
        &[("x-api-key", "wrong")],
        "POST",
        body,
    )
    .await;
    assert_eq!(r.json()["error"]["type"], "authentication_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_whole_streamed_and_tool_use_on_native_and_translated_nodes() {
    for native in [true, false] {
        let sim = node("n", native).await;
        let gw = gateway_for(&[("n", &sim)]).await;
        let url = gw.url("/v1/messages");
        let r = call(
            &url,
            &[],
            "POST",
            json!({"model": "llama3.2", "max_tokens": 64, "system": [{"type": "text", "text": "sys"}],
                "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let j = r.json();
        assert_eq!(
            (j["type"].as_str(), j["role"].as_str()),
            (Some("message"), Some("assistant"))
        );
        assert_eq!(j["content"][0]["type"], "text");
        assert_eq!(j["stop_reason"], "end_turn");
        assert_eq!(j["usage"]["output_tokens"], 5);

        let r = call(
            &url,
            &[],
            "POST",
            json!({"model": "llama3.2", "max_tokens": 64, "stream": true,
                "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
        let evs = events(&r.body);
        let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds[0], "message_start");
        assert!(kinds.contains(&"ping") && kinds.contains(&"content_block_start"));
        assert_eq!(
            kinds[kinds.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"],
            "{kinds:?}"
        );
        let text: String = evs
            .iter()
            .filter_map(|(_, e)| e.pointer("/delta/text").and_then(Value::as_str))
            .collect();
        assert!(!text.is_empty());
        assert_eq!(evs[evs.len() - 2].1["usage"]["output_tokens"], 5);

        // tool_use, then its tool_result answered with text; streamed tool input.
        let tools = json!([{"name": "get_weather", "description": "weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
        let first = call(
            &url,
            &[],
            "POST",
            json!({"model": "llama3.2", "max_tokens": 64, "tools": tools,
                "messages": [{"role": "user", "content": "weather?"}]}),
        )
        .await
        .json();
        assert_eq!(first["stop_reason"], "tool_use", "{first}");
        let tool_use = &first["content"][0];
        assert_eq!(tool_use["input"], json!({"city": "sim"}));
        let r = call(
            &url,
            &[],
            "POST",
            json!({"model": "llama3.2", "max_tokens": 64, "tools": tools, "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [tool_use]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "sunny"}]},
            ]}),
        )
        .await;
        assert_eq!(r.json()["content"][0]["type"], "text", "{}", r.json());
        let r = call(
            &url,
            &[],
            "POST",
            json!({"model": "llama3.2", "max_tokens": 64, "tools": tools, "stream": true,
                "messages": [{"role": "user", "content": "weather?"}]}),
        )
        .await;
        let evs = events(&r.body);
        let json_input: String = evs
            .iter()
            .filter_map(|(_, e)| e.pointer("/delta/partial_json").and_then(Value::as_str))
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&json_input).unwrap(),
            json!({"city": "sim"})
        );
        assert!(
            evs.iter()
                .any(|(_, e)| e.pointer("/delta/stop_reason") == Some(&json!("tool_use")))
        );

        let count = call(
            &gw.url("/v1/messages/count_tokens"),
            &[],
            "POST",
            json!({"model": "llama3.2", "messages": [{"role": "user", "content": "count these words please"}]}),
        )
        .await;
        assert!(count.json()["input_tokens"].as_u64().unwrap() > 0);

        let (ours, other) = if native {
            ("/v1/messages", "/v1/chat/completions")
        } else {
            ("/v1/chat/completions", "/v1/messages")
        };
        assert_eq!(route_count(&sim, ours), 5, "native={native}");
        assert_eq!(route_count(&sim, other), 0, "native={native}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_in_each_api_shape_before_any_node() {
    let sim = node("n", false).await;
    let mut config = config_for(&[("n", sim.url())]);
    config.server.max_request_bytes = 64 * 1024;
    let gw = gateway(config).await;
    let responses = gw.url("/v1/responses");
    for (body, param) in [
        (
            json!({"model": "llama3.2", "input": [{"type": "bogus"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "llama3.2", "input": [{"role": "robot", "content": "x"}]}),
            "input[0].role",
        ),
        (
            json!({"model": "llama3.2", "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}),
            "input[0].call_id",
        ),
        (json!({"model": "llama3.2", "input": 7}), "input"),
        (json!({"input": "no model"}), "model"),
    ] {
        let j = call(&responses, &[], "POST", body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_value");
        assert_eq!(j["error"]["param"], param);
    }
    let huge = json!({"model": "llama3.2", "input": "x".repeat(100 * 1024)});
    call(&responses, &[], "POST", huge)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large");

    let messages = gw.url("/v1/messages");
    for body in [
        json!({"model": "llama3.2", "messages": [{"role": "user", "content": "no max_tokens"}]}),
        json!({"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
        json!({"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "x"}]}]}),
        json!({"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
        json!({"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
        json!({"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": "x".repeat(100 * 1024)}]}),
    ] {
        let r = call(&messages, &[], "POST", body).await;
        assert!(r.status.is_client_error(), "{}", r.status);
        let j = r.json();
        assert_eq!(j["type"], "error", "{j}");
        let kind = j["error"]["type"].as_str().unwrap();
        assert!(
            ["invalid_request_error", "request_too_large"].contains(&kind),
            "{j}"
        );
    }
    let r = call(
        &messages,
        &[],
        "POST",
        json!({"model": "no-such", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    assert_eq!(inference(&sim), 0, "nothing reached the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_failing_mid_stream_ends_with_a_failure_event_never_a_completion() {
    for native in [true, false] {
        let sim = node("n", native).await;
        let gw = gateway(probe_once(config_for(&[("n", sim.url())]))).await;
        sim.set_faults(Faults {
            drop_after: Some(4),
            ..Faults::default()
        });
        let r = call(
            &gw.url("/v1/responses"),
            &[],
            "POST",
            json!({"model": "llama3.2", "input": "hi", "stream": true}),
        )
        .await;
        let kinds: Vec<String> = events(&r.body).into_iter().map(|(k, _)| k).collect();
        let last = kinds.last().unwrap().as_str();
        assert!(["response.failed", "error"].contains(&last), "{kinds:?}");
        assert!(!kinds.iter().any(|k| k == "response.completed"));

        let r = call(
            &gw.url("/v1/messages"),
            &[],
            "POST",
            json!({"model": "llama3.2", "max_tokens": 9, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        let evs = events(&r.body);
        let (kind, data) = evs.last().unwrap();
        assert_eq!(kind, "error", "native={native}");
        assert_eq!(data["type"], "error");
        assert!(!evs.iter().any(|(k, _)| k == "message_stop"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_tool_calls_survive_translation_to_an_openai_only_node() {
    let sim = node("n", false).await;
    let only = common::openai_only::OpenAiOnly::start(&sim.url()).await;
    let gw = gateway_for_urls(&[("n", only.url.clone())]).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    for stream in [false, true] {
        let r = call(
            &gw.url("/api/chat"),
            &[],
            "POST",
            json!({"model": "llama3.2", "stream": stream, "tools": tools,
                "messages": [{"role": "user", "content": "weather?"}]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let lines: Vec<Value> = String::from_utf8_lossy(&r.body)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let calls: Vec<&Value> = lines
            .iter()
            .filter_map(|l| l.pointer("/message/tool_calls/0"))
            .collect();
        assert_eq!(calls.len(), 1, "{lines:?}");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["arguments"], json!({"city": "sim"}));
        assert_eq!(lines.last().unwrap()["done"], true);
    }
    // The tool's answer goes back as a tool message.
    let r = call(
        &gw.url("/api/chat"),
        &[],
        "POST",
        json!({"model": "llama3.2", "stream": false, "tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ]}),
    )
    .await;
    assert!(
        r.json()["message"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    let sent = only.inference_requests();
    let last = &sent.last().unwrap().1;
    assert_eq!(
        last["messages"][1]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Oslo"}"#
    );
    assert_eq!(last["messages"][2]["role"], "tool");
    assert_eq!(
        last["messages"][2]["tool_call_id"],
        last["messages"][1]["tool_calls"][0]["id"]
    );
}

async fn gateway_for_urls(nodes: &[(&str, String)]) -> TestGateway {
    gateway(config_for(nodes)).await
}
