//! Hostile input: a corpus of malformed and abusive requests across REST, the Ollama
//! surface, the Responses and Messages APIs and gRPC, sent as raw bytes. Each must get
//! a clear 4xx (or gRPC's equivalent) or a bounded close; none may reach a node; the
//! gateway must not panic, and must keep serving a well-behaved client meanwhile.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one hostile request may take to be answered or closed (a hang guard,
/// generous against the gateway's own bounds below, which are what is being tested).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What a hostile request must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This exact status.
    Status(u16),
    /// Some 4xx.
    ClientError,
    /// A 4xx, or the connection closed without an answer (hyper refuses some heads
    /// that way).
    ClientErrorOrClose,
    /// Odd but legitimate (RFC 9112 lets a server take a bare LF as a line end, and
    /// many query parameters are just ignored): anything but a 5xx.
    Handled,
}

/// What the gateway did with one request.
#[derive(Debug)]
enum Outcome {
    Status(u16),
    Closed,
}

/// Sends `raw` on a fresh connection and reads until the status line arrives or the
/// connection closes.
async fn send_raw(addr: std::net::SocketAddr, raw: &[u8]) -> Outcome {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The gateway may answer (and close) before reading everything we send.
    let _ = tcp.write_all(raw).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(ANSWER_WITHIN, async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(2).any(|w| w == b"\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer and no close within {ANSWER_WITHIN:?} for {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(200)])
    );
    if std::env::var_os("HOSTILE_VERBOSE").is_some() {
        eprintln!(
            "  <- {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(300)])
        );
    }
    match status_of(&buf) {
        Some(status) => Outcome::Status(status),
        None => Outcome::Closed,
    }
}

fn status_of(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

fn request(head: &str) -> Vec<u8> {
    head.as_bytes().to_vec()
}

const CHAT: &str = "/v1/chat/completions";

/// JSON bodies every JSON surface must refuse with a 400-class answer.
fn bad_json_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let deep = "[".repeat(25_000) + &"]".repeat(25_000);
    let deep_object = r#"{"a":"#.repeat(5_000) + "1" + &"}".repeat(5_000);
    vec![
        ("empty", b"".to_vec()),
        ("whitespace", b"   \n\t ".to_vec()),
        (
            "truncated",
            br#"{"model": "llama3.2", "messages": ["#.to_vec(),
        ),
        ("not an object", b"[1,2,3]".to_vec()),
        ("a string", br#""hello""#.to_vec()),
        ("null", b"null".to_vec()),
        ("two objects", br#"{"model":"llama3.2"} {}"#.to_vec()),
        ("trailing comma", br#"{"model":"llama3.2",}"#.to_vec()),
        ("single quotes", b"{'model':'llama3.2'}".to_vec()),
        ("bad utf-8", b"{\"model\":\"\xff\xfe\"}".to_vec()),
        ("nul byte", b"{\"model\":\"a\0b\"}".to_vec()),
        ("lone surrogate", br#"{"model":"\ud800"}"#.to_vec()),
        ("deep array", deep.into_bytes()),
        ("deep object", deep_object.into_bytes()),
        ("huge exponent", br#"{"model":1e999999}"#.to_vec()),
    ]
}

/// Bodies that are JSON but wrong for a chat request (OpenAI's chat shape).
fn bad_chat_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let long_model = format!(r#"{{"model":"{}","messages":[]}}"#, "m".repeat(50_000));
    vec![
        ("model null", br#"{"model":null,"messages":[]}"#.to_vec()),
        (
            "messages null",
            br#"{"model":"llama3.2","messages":null}"#.to_vec(),
        ),
        ("model a number", br#"{"model":42,"messages":[]}"#.to_vec()),
        (
            "model an object",
            br#"{"model":{"a":1},"messages":[]}"#.to_vec(),
        ),
        (
            "messages a string",
            br#"{"model":"llama3.2","messages":"hi"}"#.to_vec(),
        ),
        (
            "message without role",
            br#"{"model":"llama3.2","messages":[{"content":"hi"}]}"#.to_vec(),
        ),
        (
            "role a number",
            br#"{"model":"llama3.2","messages":[{"role":1,"content":"hi"}]}"#.to_vec(),
        ),
        (
            "content a number",
            br#"{"model":"llama3.2","messages":[{"role":"user","content":5}]}"#.to_vec(),
        ),
        (
            "stream a string",
            br#"{"model":"llama3.2","messages":[],"stream":"yes"}"#.to_vec(),
        ),
        (
            "max_tokens huge",
            br#"{"model":"llama3.2","messages":[],"max_tokens":123456789012345678901234567890}"#
                .to_vec(),
        ),
        (
            "max_tokens negative",
            br#"{"model":"llama3.2","messages":[],"max_tokens":-1}"#.to_vec(),
        ),
        (
            "max_tokens fractional",
            br#"{"model":"llama3.2","messages":[],"max_tokens":1.5}"#.to_vec(),
        ),
        (
            "temperature a string",
            br#"{"model":"llama3.2","messages":[],"temperature":"hot"}"#.to_vec(),
        ),
        (
            "temperature NaN text",
            br#"{"model":"llama3.2","messages":[],"temperature":NaN}"#.to_vec(),
        ),
        (
            "duplicate model",
            br#"{"model":"llama3.2","model":"other","messages":[]}"#.to_vec(),
        ),
        ("empty model", br#"{"model":"","messages":[]}"#.to_vec()),
        ("model of 50k chars", long_model.into_bytes()),
        (
            "tools not a list",
            br#"{"model":"llama3.2","messages":[],"tools":{}}"#.to_vec(),
        ),
        (
            "stream_options a string",
            br#"{"model":"llama3.2","messages":[],"stream":true,"stream_options":"yes"}"#.to_vec(),
        ),
    ]
}

fn corpus() -> Vec<(String, Vec<u8>, Expect)> {
    let mut cases: Vec<(String, Vec<u8>, Expect)> = Vec::new();
    // Broken JSON on every JSON surface.
    let surfaces = [
        CHAT,
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/show",
    ];
    for path in surfaces {
        for (name, body) in bad_json_bodies() {
            // Each surface gets the full set on chat, three representative ones elsewhere.
            if path != CHAT && !matches!(name, "truncated" | "bad utf-8" | "deep array") {
                continue;
            }
            cases.push((
                format!("{path}: {name}"),
                post(path, &body),
                Expect::Status(400),
            ));
        }
    }
    for (name, body) in bad_chat_bodies() {
        // A model name nobody serves is a 404, whatever its length.
        let expect = if name == "model of 50k chars" {
            Expect::ClientError
        } else {
            Expect::Status(400)
        };
        cases.push((format!("{CHAT}: {name}"), post(CHAT, &body), expect));
    }
    // The other dialects' shapes.
    for (path, name, body) in [
        ("/v1/responses", "input a number", &br#"{"model":"llama3.2","input":5}"#[..]),
        ("/v1/responses", "no model", br#"{"input":"hi"}"#),
        ("/v1/responses", "unknown previous id", br#"{"model":"llama3.2","input":"hi","previous_response_id":"resp_nope"}"#),
        ("/v1/responses", "item of no type", br#"{"model":"llama3.2","input":[{"x":1}]}"#),
        ("/v1/messages", "no max_tokens", br#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#),
        ("/v1/messages", "content block of no type", br#"{"model":"llama3.2","max_tokens":5,"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#),
        ("/v1/messages", "system a number", br#"{"model":"llama3.2","max_tokens":5,"system":5,"messages":[]}"#),
        ("/api/chat", "messages a number", br#"{"model":"llama3.2","messages":7}"#),
        ("/api/generate", "no model", br#"{"prompt":"hi"}"#),
        ("/api/embed", "input an object", br#"{"model":"llama3.2","input":{"a":1}}"#),
        ("/v1/embeddings", "input null", br#"{"model":"llama3.2","input":null}"#),
        ("/v1/completions", "prompt an object", br#"{"model":"llama3.2","prompt":{"a":1}}"#),
    ] {
        cases.push((format!("{path}: {name}"), post(path, body), Expect::ClientError));
    }
    // Sizes.
    let big = format!(
        r#"{{"model":"llama3.2","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(70_000)
    );
    cases.push((
        "oversize body".into(),
        post(CHAT, big.as_bytes()),
        Expect::Status(413),
    ));
    cases.push((
        "declared 1 GiB, nothing sent".into(),
        request("POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"),
        Expect::Status(413),
    ));
    cases.push((
        "declared 1 GiB with Expect: 100-continue".into(),
        request("POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 1073741824\r\n\r\n"),
        Expect::Status(413),
    ));
    cases.push((
        "chunked body over the limit".into(),
        {
            let mut raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
            for _ in 0..20 {
                raw.extend_from_slice(format!("{:x}\r\n{}\r\n", 4096, "y".repeat(4096)).as_bytes());
            }
            raw.extend_from_slice(b"0\r\n\r\n");
            raw
        },
        Expect::Status(413),
    ));
    // Framing and headers.
    for (name, head) in [
        (
            "bad content-length",
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: abc\r\n\r\n",
        ),
        (
            "negative content-length",
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n",
        ),
        (
            "two content-lengths",
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "content-length and chunked (smuggling)",
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "bad chunk size",
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "unknown transfer-encoding",
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
        (
            "bare CR in a header value",
            "GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-A: a\rInjected: yes\r\n\r\n",
        ),
        (
            "NUL in a header value",
            "GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-A: a\0b\r\n\r\n",
        ),
        (
            "space before the colon",
            "GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-A : b\r\n\r\n",
        ),
        (
            "header without a colon",
            "GET /v1/models HTTP/1.1\r\nHost: gw\r\nNoColon\r\n\r\n",
        ),
        (
            "obsolete line folding",
            "GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n  folded\r\n\r\n",
        ),
        (
            "bad HTTP version",
            "GET /v1/models HTTP/9.9\r\nHost: gw\r\n\r\n",
        ),
        (
            "garbage request line (a TLS hello)",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03\r\n\r\n",
        ),
        (
            "lowercase method",
            "get /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n",
        ),
        (
            "space in the path",
            "GET /v1/mod els HTTP/1.1\r\nHost: gw\r\n\r\n",
        ),
    ] {
        cases.push((name.into(), request(head), Expect::ClientErrorOrClose));
    }
    cases.push((
        "bare LF in a header value (two headers, RFC 9112 2.2)".into(),
        request("GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-A: a\nInjected: yes\r\nConnection: close\r\n\r\n"),
        Expect::Handled,
    ));
    // CR/LF smuggled in JSON strings that meshgate copies into headers (model names,
    // ids): refused or carried, never a header of their own and never a panic.
    for (path, body, expect) in [
        (
            CHAT,
            &br#"{"model":"llama3.2\r\nX-Evil: 1","messages":[{"role":"user","content":"hi"}]}"#[..],
            Expect::ClientError,
        ),
        (
            "/v1/responses",
            br#"{"model":"llama3.2\r\nSet-Cookie: a=b","input":"hi"}"#,
            Expect::ClientError,
        ),
        (
            "/v1/messages",
            br#"{"model":"llama3.2\nX-Evil: 1","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
            Expect::ClientError,
        ),
        (
            "/api/chat",
            br#"{"model":"llama3.2\r\n\r\nHTTP/1.1 200 OK","messages":[]}"#,
            Expect::ClientError,
        ),
    ] {
        cases.push((format!("{path}: CRLF in a model name"), post(path, body), expect));
    }
    let huge_header = format!(
        "GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\n\r\n",
        "h".repeat(100_000)
    );
    cases.push((
        "a 100 KB header".into(),
        huge_header.into_bytes(),
        Expect::ClientErrorOrClose,
    ));
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    cases.push((
        "500 headers".into(),
        format!("GET /v1/models HTTP/1.1\r\nHost: gw\r\n{many}\r\n").into_bytes(),
        Expect::ClientErrorOrClose,
    ));
    let huge_bearer = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        "k".repeat(60_000)
    );
    cases.push((
        "a 60 KB bearer token".into(),
        huge_bearer.into_bytes(),
        Expect::ClientErrorOrClose,
    ));
    cases.push((
        "content-type text/plain".into(),
        request("POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
        Expect::Status(400),
    ));
    // Paths and methods.
    for (name, line) in [
        ("dot-dot into the API", "POST /v1/../v1/chat/completions"),
        ("encoded slash", "POST /v1/chat%2Fcompletions"),
        ("encoded dot-dot", "GET /%2e%2e/%2e%2e/etc/passwd"),
        ("dot-dot out of the root", "GET /../../etc/passwd"),
        (
            "model id with dot-dot",
            "GET /v1/models/..%2F..%2Fetc%2Fpasswd",
        ),
        ("double slash", "POST //v1/chat/completions"),
        ("trailing slash", "POST /v1/chat/completions/"),
        ("encoded NUL", "POST /v1/chat/completions%00"),
        (
            "absolute-form to another host",
            "POST http://evil.example/v1/chat/completions",
        ),
        ("asterisk form", "OPTIONS *"),
        ("TRACE", "TRACE /v1/models"),
        ("unknown method", "FOO /v1/models"),
        ("PUT on chat", "PUT /v1/chat/completions"),
        ("DELETE on chat", "DELETE /v1/chat/completions"),
        ("GET on a POST route", "GET /api/chat"),
        ("unknown API path", "POST /v1/chat/completion"),
        ("admin-looking path", "GET /admin"),
        ("a 10 KB path", &format!("GET /{}", "p".repeat(10_000))),
    ] {
        let raw = format!(
            "{line} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        cases.push((name.into(), raw.into_bytes(), Expect::ClientErrorOrClose));
    }
    for (name, raw) in [
        (
            "query abuse",
            format!(
                "GET /v1/models?{} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
                "a=1&".repeat(2_000)
            ),
        ),
        (
            "fragment in the target",
            "GET /v1/models#frag HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_owned(),
        ),
        (
            "control bytes in a header value",
            "GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Request-Id: \x7f\x01abc\r\nConnection: close\r\n\r\n"
                .to_owned(),
        ),
        (
            "an 8 KB session id",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Session-Id: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
                "s".repeat(8_000)
            ),
        ),
    ] {
        cases.push((name.into(), raw.into_bytes(), Expect::Handled));
    }
    cases.push((
        "CONNECT to a model port".into(),
        request("CONNECT 127.0.0.1:11434 HTTP/1.1\r\nHost: 127.0.0.1:11434\r\n\r\n"),
        Expect::ClientErrorOrClose,
    ));
    cases.push((
        "websocket upgrade".into(),
        request("GET /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        Expect::ClientErrorOrClose,
    ));
    cases.push((
        "h2c upgrade with a chat body".into(),
        post(CHAT, br#"{"model":"llama3.2","messages":"x"}"#)
            .into_iter()
            .collect::<Vec<u8>>()
            .replace_head("Connection: close", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
        Expect::ClientErrorOrClose,
    ));
    cases
}

trait ReplaceHead {
    fn replace_head(self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplaceHead for Vec<u8> {
    fn replace_head(self, from: &str, to: &str) -> Vec<u8> {
        let at = self
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .expect("in the head");
        let mut out = self[..at].to_vec();
        out.extend_from_slice(to.as_bytes());
        out.extend_from_slice(&self[at + from.len()..]);
        out
    }
}

/// What the gateway answered a raw gRPC call: the gRPC status code (from headers or
/// trailers), or the HTTP status when it is not 200.
async fn grpc_raw(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<tonic::Code, u16> {
    use http_body_util::BodyExt;
    let (h2, _) = common::grpc::h2(addr);
    let mut request = http::Request::post(format!("http://{addr}{path}")).header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .unwrap();
    let response = tokio::time::timeout(ANSWER_WITHIN, h2.request(request))
        .await
        .expect("a gRPC answer in time")
        .expect("an HTTP/2 answer");
    if response.status() != 200 {
        return Err(response.status().as_u16());
    }
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return Ok(status.code());
    }
    let collected = tokio::time::timeout(ANSWER_WITHIN, response.into_body().collect())
        .await
        .expect("gRPC trailers in time")
        .expect("a whole gRPC body");
    let trailers = collected.trailers().expect("a status in trailers");
    Ok(tonic::Status::from_header_map(trailers)
        .expect("grpc-status")
        .code())
}

/// A gRPC message frame: flag, length, bytes.
fn frame(compressed: bool, declared: u32, message: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// (name, path, headers, body) of one raw gRPC call.
type GrpcCase = (
    String,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
);

fn grpc_corpus() -> Vec<GrpcCase> {
    use prost::Message;
    const CHAT_RPC: &str = "/meshgate.v1.Inference/ChatCompletion";
    const GRPC: (&str, &str) = ("content-type", "application/grpc");
    // A chat whose `extra` Struct nests lists 1000 deep.
    let mut deep = prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(1.0)),
    };
    for _ in 0..1000 {
        deep = prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(
                prost_types::ListValue { values: vec![deep] },
            )),
        };
    }
    let mut nested = common::grpc::chat("llama3.2");
    nested.extra = Some(prost_types::Struct {
        fields: [("deep".to_owned(), deep)].into_iter().collect(),
    });
    let nested = nested.encode_to_vec();
    let valid = common::grpc::chat("llama3.2").encode_to_vec();
    vec![
        (
            "grpc: not protobuf".into(),
            CHAT_RPC,
            vec![GRPC],
            frame(false, 4, &[0xff; 4]),
        ),
        (
            "grpc: wrong wire type".into(),
            CHAT_RPC,
            vec![GRPC],
            frame(false, 2, &[0x08, 0x01]),
        ),
        (
            "grpc: no model".into(),
            CHAT_RPC,
            vec![GRPC],
            frame(false, 0, &[]),
        ),
        (
            "grpc: no frame at all".into(),
            CHAT_RPC,
            vec![GRPC],
            Vec::new(),
        ),
        (
            "grpc: half a frame header".into(),
            CHAT_RPC,
            vec![GRPC],
            vec![0, 0, 0],
        ),
        (
            "grpc: length past the data".into(),
            CHAT_RPC,
            vec![GRPC],
            frame(false, 100, &valid),
        ),
        (
            "grpc: 2 GiB declared".into(),
            CHAT_RPC,
            vec![GRPC],
            frame(false, 1 << 31, &valid),
        ),
        (
            "grpc: compressed flag, no encoding".into(),
            CHAT_RPC,
            vec![GRPC],
            frame(true, valid.len() as u32, &valid),
        ),
        (
            "grpc: gzip garbage".into(),
            CHAT_RPC,
            vec![GRPC, ("grpc-encoding", "gzip")],
            frame(true, 4, &[1, 2, 3, 4]),
        ),
        (
            "grpc: two messages on a unary call".into(),
            CHAT_RPC,
            vec![GRPC],
            [frame(false, 0, &[]), frame(false, 0, &[])].concat(),
        ),
        (
            "grpc: lists nested 1000 deep".into(),
            CHAT_RPC,
            vec![GRPC],
            frame(false, nested.len() as u32, &nested),
        ),
        (
            "grpc: JSON on the gRPC path".into(),
            CHAT_RPC,
            vec![("content-type", "application/json")],
            br#"{"model":"llama3.2"}"#.to_vec(),
        ),
        (
            "grpc: unknown method".into(),
            "/meshgate.v1.Inference/Nope",
            vec![GRPC],
            frame(false, 0, &[]),
        ),
        (
            "grpc: unknown service".into(),
            "/evil.Service/Run",
            vec![GRPC],
            frame(false, 0, &[]),
        ),
        (
            "grpc: health check with garbage".into(),
            "/grpc.health.v1.Health/Check",
            vec![GRPC],
            frame(false, 4, &[0xff; 4]),
        ),
    ]
}

/// A gateway with tight client bounds so slow-client cases finish quickly.
async fn hostile_gateway(node: &Sim) -> TestGateway {
    let mut config = config_for(&[("a", node.url())]);
    config.server.max_request_bytes = 64 << 10;
    config.server.header_timeout = Duration::from_secs(1);
    config.server.body_timeout = Duration::from_secs(1);
    config.server.idle_timeout = Duration::from_secs(2);
    gateway(config).await
}

/// Counts panics anywhere in this test process (the gateway runs in it).
fn count_panics() -> Arc<AtomicU64> {
    let panics = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
    panics
}

/// A well-behaved client, running while the corpus is sent: every request must be
/// served; returns each latency.
fn steady_client(
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let start = tokio::time::Instant::now();
            let reply = common::post(&url, chat_body("llama3.2", false)).await;
            assert_eq!(
                reply.status, 200,
                "a well-behaved client was refused: {:?}",
                reply.body
            );
            latencies.push(start.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies
    })
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_hostile_requests_gets_4xx_or_a_bounded_close_and_reaches_no_node() {
    let panics = count_panics();
    let node = sim("a", &["llama3.2"]).await;
    let gw = hostile_gateway(&node).await;
    let url = gw.url(CHAT);

    // The well-behaved client's latency alone, then while the corpus runs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let alone = steady_client(url.clone(), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let alone = alone.await.unwrap();
    node.reset_stats();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during = steady_client(url.clone(), Arc::clone(&stop));
    let cases = corpus();
    let total = cases.len();
    let mut failures = Vec::new();
    let mut closed = 0;
    for (name, raw, expect) in cases {
        let outcome = send_raw(gw.addr, &raw).await;
        let ok = match (expect, &outcome) {
            (Expect::Status(s), Outcome::Status(got)) => s == *got,
            (Expect::ClientError | Expect::ClientErrorOrClose, Outcome::Status(got)) => {
                (400..500).contains(got)
            }
            (Expect::ClientErrorOrClose | Expect::Handled, Outcome::Closed) => {
                closed += 1;
                true
            }
            (Expect::Handled, Outcome::Status(got)) => *got < 500,
            _ => false,
        };
        if !ok {
            failures.push(format!("{name}: expected {expect:?}, got {outcome:?}"));
        }
    }
    let grpc_cases = grpc_corpus();
    let total = total + grpc_cases.len();
    for (name, path, headers, body) in grpc_cases {
        match grpc_raw(gw.addr, path, &headers, body).await {
            Ok(tonic::Code::Ok) => failures.push(format!("{name}: answered OK")),
            Ok(_) => {}
            Err(status) if (400..500).contains(&status) => {}
            Err(status) => failures.push(format!("{name}: HTTP {status}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let during = during.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= 80, "the corpus has {total} cases");
    // The well-behaved client's requests are the only inference the node saw.
    assert_eq!(
        inference_count(&node),
        during.len() as u64,
        "hostile input reached the node: {:?}",
        node.stats().by_route
    );
    assert_eq!(panics.load(Ordering::Relaxed), 0, "the gateway panicked");
    eprintln!(
        "hostile corpus: {total} requests, {} answered 4xx, {closed} closed; a well-behaved client's \
         p50 {:?} alone, {:?} meanwhile ({} requests, all served)",
        total - closed,
        p50(alone),
        p50(during.clone()),
        during.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_after_a_bounded_time() {
    let node = sim("a", &["llama3.2"]).await;
    let gw = hostile_gateway(&node).await;
    node.reset_stats();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = steady_client(gw.url(CHAT), Arc::clone(&stop));

    // Slowloris: a head sent a byte at a time, never finished (header_timeout 1 s).
    let slow_heads: Vec<_> = (0..20)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: ";
                let cut = tokio::time::timeout(ANSWER_WITHIN, async {
                    for byte in head.iter().cycle() {
                        if tcp.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
                .await;
                assert!(cut.is_ok(), "a slowloris head was held open");
            })
        })
        .collect();
    // A body declared but never finished (body_timeout 1 s): 408.
    let slow_body = send_raw(
        gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .await;
    assert!(matches!(slow_body, Outcome::Status(408)), "{slow_body:?}");
    // A body trickling in, a byte every 200 ms, longer than body_timeout: 408.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n",
    )
    .await
    .unwrap();
    let trickle = tokio::time::timeout(ANSWER_WITHIN, async {
        let mut buf = [0u8; 512];
        loop {
            let _ = tcp.write_all(b" ").await;
            tokio::select! {
                n = tcp.read(&mut buf) => return buf[..n.unwrap_or(0)].to_vec(),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    })
    .await
    .expect("a trickling body was held open");
    assert_eq!(
        status_of(&trickle),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&trickle)
    );
    // Idle connections: opened and never used, or used once and left (idle_timeout 2 s).
    let idle: Vec<_> = (0..50)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                if i % 2 == 0 {
                    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
                        .await
                        .unwrap();
                }
                let mut buf = vec![0u8; 4096];
                let closed = tokio::time::timeout(ANSWER_WITHIN, async {
                    loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                assert!(closed.is_ok(), "an idle connection was held open");
            })
        })
        .collect();
    for task in slow_heads.into_iter().chain(idle) {
        task.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let served = steady.await.unwrap();
    assert!(!served.is_empty());
    assert_eq!(inference_count(&node), served.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_floods_and_rapid_resets_leave_the_gateway_serving() {
    let node = sim("a", &["llama3.2"]).await;
    let gw = hostile_gateway(&node).await;
    node.reset_stats();
    let (h2, _) = common::grpc::h2(gw.addr);
    let models: http::Uri = gw.url("/v1/models").parse().unwrap();

    // Many streams at once on one connection: past the stream limit they are refused
    // or queued, never crash the connection's neighbours.
    let flood: Vec<_> = (0..600)
        .map(|_| {
            let request = http::Request::get(models.clone())
                .body(tonic::body::Body::empty())
                .unwrap();
            let h2 = h2.clone();
            tokio::spawn(async move { h2.request(request).await.map(|r| r.status()) })
        })
        .collect();
    let mut ok = 0;
    for f in flood {
        if let Ok(Ok(status)) = f.await {
            assert!(status == 200 || status.is_client_error(), "{status}");
            ok += 1;
        }
    }
    assert!(ok > 0);
    // Rapid reset: streams opened and cancelled at once, over and over.
    for _ in 0..2000 {
        let request = http::Request::post(gw.url(CHAT))
            .header("content-type", "application/json")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from(chat_body("llama3.2", false)),
            )))
            .unwrap();
        let call = h2.request(request);
        // Polled once (the stream opens), then dropped (RST_STREAM).
        let _ = tokio::time::timeout(Duration::from_micros(1), call).await;
    }
    // The gateway still serves, over HTTP/1 and HTTP/2.
    let reply = common::post(&gw.url(CHAT), chat_body("llama3.2", false)).await;
    assert_eq!(reply.status, 200);
    let fresh = common::grpc::inference(gw.addr)
        .chat_completion(common::grpc::chat("llama3.2"))
        .await;
    assert!(fresh.is_ok(), "{fresh:?}");
}
