//! Bad input on the gRPC front: malformed protobuf, a wrong wire type, a missing
//! model, wrong JSON types in `extra`, an oversize message. Each gets a clear status,
//! nothing reaches a node, nothing panics.

mod common;

use bytes::Bytes;
use common::grpc::{chat, inference, reason};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshgate_proto::v1::chat_message::Content;
use meshgate_proto::v1::convert;
use serde_json::json;
use tonic::Code;

/// Send raw bytes as one gRPC message frame; the status from headers or trailers.
async fn raw_call(addr: std::net::SocketAddr, message: &[u8]) -> tonic::Status {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    let request = http::Request::post(format!(
        "http://{addr}/meshgate.v1.Inference/ChatCompletion"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(Bytes::from(frame)))
    .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().expect("a status in trailers");
    tonic::Status::from_header_map(trailers).unwrap()
}

#[tokio::test]
async fn bad_messages_get_a_clear_status_and_never_reach_a_node() {
    let node = sim("a", &["llama3.2"]).await;
    let mut config = config_for(&[("a", node.url())]);
    config.server.max_request_bytes = 1024;
    let gw = gateway(config).await;
    let mut client = inference(gw.addr);

    // Not protobuf at all.
    let status = raw_call(gw.addr, &[0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().to_lowercase().contains("decode") || status.message().contains("invalid"),
        "{status:?}"
    );
    // Field 1 (model, a string) sent as a varint.
    let status = raw_call(gw.addr, &[0x08, 0x01]).await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    // An empty frame is a valid (empty) message: no model.
    let status = raw_call(gw.addr, &[]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Missing model.
    let status = client.chat_completion(chat("")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "invalid_value");
    assert!(status.message().contains("model"));

    // Wrong JSON types smuggled in `extra` are checked like REST bodies.
    for (extra, param) in [
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"stream_options": "yes", "n": "two"}), "n"),
    ] {
        let mut request = chat("llama3.2");
        request.extra = Some(convert::extra(extra.as_object().unwrap().clone()));
        let status = client.chat_completion(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{extra}: {status:?}");
        let details = tonic_types::StatusExt::get_error_details(&status);
        assert_eq!(
            details.error_info().unwrap().metadata["param"],
            param,
            "{extra}"
        );
    }

    // Over the size limit.
    let mut big = chat("llama3.2");
    big.messages[0].content = Some(Content::Text("x".repeat(4096)));
    let status = client.chat_completion(big).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("1024"), "{status:?}");

    assert_eq!(inference_count(&node), 0, "{:?}", node.stats().by_route);
    // And the gateway still serves.
    assert!(client.chat_completion(chat("llama3.2")).await.is_ok());
}
