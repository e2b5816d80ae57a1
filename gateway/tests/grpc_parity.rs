//! Parity: the same request over REST and gRPC gives the same content, and the same
//! error class (REST status + OpenAI code == gRPC code + ErrorInfo reason). Adding a
//! case is one line in `cases()`; a case may carry headers (sent as gRPC metadata),
//! e.g. `.header("authorization", "Bearer bad")` once auth exists.

mod common;

use common::grpc::{chat, inference, reason};
use common::*;
use http::StatusCode;
use meshgate_proto::v1::chat_message::Content;
use meshgate_proto::v1::{ChatCompletionRequest, convert};
use serde_json::{Value, json};
use tonic::Code;

enum Expect {
    Ok,
    Error(StatusCode, Code, &'static str),
}

struct Case {
    name: &'static str,
    request: ChatCompletionRequest,
    headers: Vec<(&'static str, &'static str)>,
    expect: Expect,
}

fn case(name: &'static str, request: ChatCompletionRequest, expect: Expect) -> Case {
    Case {
        name,
        request,
        headers: Vec::new(),
        expect,
    }
}

impl Case {
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

fn err(status: u16, code: Code, openai_code: &'static str) -> Expect {
    Expect::Error(StatusCode::from_u16(status).unwrap(), code, openai_code)
}

fn with_extra(mut request: ChatCompletionRequest, extra: Value) -> ChatCompletionRequest {
    request.extra = Some(convert::extra(extra.as_object().unwrap().clone()));
    request
}

fn cases() -> Vec<Case> {
    vec![
        case("a known model", chat("llama3.2"), Expect::Ok),
        case(
            "an unknown model",
            chat("no-such-model"),
            err(404, Code::NotFound, "model_not_found"),
        ),
        case(
            "no node available",
            chat("ghost"),
            err(503, Code::Unavailable, "no_node_available"),
        ),
        case(
            "an empty model",
            chat(""),
            err(400, Code::InvalidArgument, "invalid_value"),
        ),
        case(
            "a wrong type",
            with_extra(chat("llama3.2"), json!({"temperature": "hot"})),
            err(400, Code::InvalidArgument, "invalid_value"),
        ),
        case(
            "a negative count",
            with_extra(chat("llama3.2"), json!({"max_tokens": -5})),
            err(400, Code::InvalidArgument, "invalid_value"),
        ),
    ]
}

#[tokio::test]
async fn rest_and_grpc_agree() {
    let a = sim("a", &["llama3.2"]).await;
    // `ghost` is known (its node was seen) but that node is down.
    let b = sim("b", &["ghost"]).await;
    let gw = gateway_for(&[("a", &a), ("b", &b)]).await;
    b.kill();
    wait_until(|| !gw.nodes.list()[1].is_online()).await;
    let mut client = inference(gw.addr);

    for Case {
        name,
        request,
        headers,
        expect,
    } in cases()
    {
        let body = Value::Object(convert::chat_request_json(request.clone(), false));
        let mut rest = http::Request::post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json");
        for (k, v) in &headers {
            rest = rest.header(*k, *v);
        }
        let rest = client_send(rest.body(body.to_string()).unwrap()).await;

        let mut grpc_request = tonic::Request::new(request);
        for (k, v) in &headers {
            grpc_request.metadata_mut().insert(*k, v.parse().unwrap());
        }
        let grpc = client.chat_completion(grpc_request).await;

        match expect {
            Expect::Ok => {
                assert_eq!(rest.status, StatusCode::OK, "{name}: REST {:?}", rest.body);
                let grpc = grpc
                    .unwrap_or_else(|s| panic!("{name}: gRPC {s:?}"))
                    .into_inner();
                let rest = rest.json();
                let Some(Content::Text(text)) = &grpc.choices[0].message.as_ref().unwrap().content
                else {
                    panic!("{name}: no text")
                };
                assert_eq!(rest["choices"][0]["message"]["content"], *text, "{name}");
                assert_eq!(
                    rest["usage"]["total_tokens"],
                    grpc.usage.unwrap().total_tokens,
                    "{name}"
                );
            }
            Expect::Error(status, code, openai_code) => {
                let json = rest.assert_error(status, openai_code);
                let grpc = grpc.expect_err(name);
                assert_eq!(grpc.code(), code, "{name}: {grpc:?}");
                assert_eq!(reason(&grpc), openai_code, "{name}");
                assert_eq!(json["error"]["message"], grpc.message(), "{name}");
            }
        }
    }
}

async fn client_send(request: http::Request<String>) -> Reply {
    request_reply(request.map(|b| http_body_util::Full::new(bytes::Bytes::from(b)))).await
}

#[tokio::test]
async fn a_stream_says_the_same_over_rest_and_grpc() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;

    let body = Value::Object(convert::chat_request_json(chat("llama3.2"), true));
    let events = EventStream::open(&gw.url("/v1/chat/completions"), body.to_string())
        .await
        .collect()
        .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let rest: Vec<String> = events[..events.len() - 1]
        .iter()
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();

    let mut stream = inference(gw.addr)
        .stream_chat_completion(chat("llama3.2"))
        .await
        .unwrap()
        .into_inner();
    let mut grpc = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        if let Some(content) = chunk
            .choices
            .first()
            .and_then(|c| c.delta.as_ref()?.content.clone())
        {
            grpc.push(content);
        }
    }
    assert_eq!(rest, grpc);
    assert!(rest.len() > 2);
}

/// Auth and rate limits run as HTTP layers shared by every front: the same refusal, in
/// each front's own shape, whichever way the request came in.
#[tokio::test]
async fn auth_and_rate_limits_agree_over_rest_and_grpc() {
    let a = sim("a", &["llama3.2", "qwen2.5"]).await;
    let mut config = tiered(&[("a", &a, 1)]);
    let key = |name: &str, secret: &str| meshgate::config::KeyConfig {
        name: name.into(),
        sha256: Some(hex::encode(meshgate::keys::sha256(secret.as_bytes()))),
        key_env: None,
        models: None,
        requests_per_minute: None,
        burst: None,
        tokens_per_minute: None,
    };
    let mut narrow = key("narrow", "sk-narrow");
    narrow.models = Some(vec!["qwen2.5".into()]);
    let mut limited = key("limited", "sk-limited");
    limited.requests_per_minute = Some(2); // one REST + one gRPC call fit, then none
    config.keys = vec![key("good", "sk-good"), narrow, limited];
    let gw = gateway(config).await;
    let mut client = inference(gw.addr);

    let cases = [
        case("a good key", chat("llama3.2"), Expect::Ok).header("authorization", "Bearer sk-good"),
        case(
            "no key",
            chat("llama3.2"),
            err(401, Code::Unauthenticated, "invalid_api_key"),
        ),
        case(
            "a wrong key",
            chat("llama3.2"),
            err(401, Code::Unauthenticated, "invalid_api_key"),
        )
        .header("authorization", "Bearer sk-guess"),
        case(
            "a model the key may not use",
            chat("llama3.2"),
            err(403, Code::PermissionDenied, "model_not_allowed"),
        )
        .header("authorization", "Bearer sk-narrow"),
        case("within the request limit", chat("llama3.2"), Expect::Ok)
            .header("authorization", "Bearer sk-limited"),
        case(
            "over the request limit",
            chat("llama3.2"),
            err(429, Code::ResourceExhausted, "rate_limit_exceeded"),
        )
        .header("authorization", "Bearer sk-limited"),
    ];
    for Case {
        name,
        request,
        headers,
        expect,
    } in cases
    {
        let body = Value::Object(convert::chat_request_json(request.clone(), false));
        let mut rest = http::Request::post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json");
        let mut grpc_request = tonic::Request::new(request);
        for (k, v) in &headers {
            rest = rest.header(*k, *v);
            grpc_request.metadata_mut().insert(*k, v.parse().unwrap());
        }
        let rest = client_send(rest.body(body.to_string()).unwrap()).await;
        let grpc = client.chat_completion(grpc_request).await;
        match expect {
            Expect::Ok => {
                assert_eq!(rest.status, StatusCode::OK, "{name}: REST {:?}", rest.body);
                assert!(grpc.is_ok(), "{name}: gRPC {grpc:?}");
            }
            Expect::Error(status, code, openai_code) => {
                rest.assert_error(status, openai_code);
                let grpc = grpc.expect_err(name);
                assert_eq!(grpc.code(), code, "{name}: {grpc:?}");
                assert_eq!(reason(&grpc), openai_code, "{name}");
                if status == 429 {
                    use tonic_types::StatusExt;
                    assert!(rest.headers.contains_key("retry-after"), "{name}");
                    assert!(
                        grpc.get_details_retry_info().is_some(),
                        "{name}: no RetryInfo: {grpc:?}"
                    );
                }
            }
        }
    }
}
