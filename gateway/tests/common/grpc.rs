//! A gRPC client for tests: the generated `meshgate.v1` client over a plain h2c
//! hyper client (tonic's own transport is not built), plus helpers to read a status.
#![allow(dead_code)]

use std::net::SocketAddr;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshgate_proto::v1::chat_message::Content;
use meshgate_proto::v1::inference_client::InferenceClient;
use meshgate_proto::v1::{ChatCompletionRequest, ChatMessage};
use tonic_types::StatusExt;

pub type H2 = Client<HttpConnector, tonic::body::Body>;

pub fn h2(addr: SocketAddr) -> (H2, http::Uri) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
    (client, origin)
}

pub fn inference(addr: SocketAddr) -> InferenceClient<H2> {
    let (client, origin) = h2(addr);
    InferenceClient::with_origin(client, origin)
}

pub fn chat(model: &str) -> ChatCompletionRequest {
    ChatCompletionRequest {
        model: model.into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: Some(Content::Text("hello mesh".into())),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The OpenAI error code a status carries in its ErrorInfo (`reason`).
pub fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}
