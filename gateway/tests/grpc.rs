//! The gRPC front (meshgate.v1.Inference over h2c on the REST listener): unary and
//! streaming chat, completions, embeddings, models, node errors mapped to codes, a
//! stream cut mid-way ending non-OK, health following the nodes, a listener of its own.

mod common;

use common::grpc::{chat, inference, reason};
use common::*;
use meshgate_proto::v1::chat_message::Content;
use meshgate_proto::v1::{CompletionRequest, EmbeddingRequest, ListModelsRequest};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn unary_chat_reaches_a_node_and_says_which() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    let mut client = inference(gw.addr);

    let reply = client.chat_completion(chat("llama3.2")).await.unwrap();
    assert_eq!(reply.metadata().get("x-meshgate-node").unwrap(), "a");
    assert!(reply.metadata().contains_key("x-request-id"));
    let reply = reply.into_inner();
    assert_eq!(reply.object, "chat.completion");
    let message = reply.choices[0].message.as_ref().unwrap();
    assert_eq!(message.role, "assistant");
    assert!(matches!(&message.content, Some(Content::Text(t)) if !t.is_empty()));
    assert_eq!(reply.choices[0].finish_reason.as_deref(), Some("stop"));
    let usage = reply.usage.unwrap();
    assert_eq!(usage.completion_tokens, 5);
    assert_eq!(a.stats().by_route["/v1/chat/completions"], 1);
}

#[tokio::test]
async fn streaming_chat_yields_chunks_then_ends_ok() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    let mut client = inference(gw.addr);

    let mut request = chat("llama3.2");
    request.include_usage = Some(true);
    let mut stream = client
        .stream_chat_completion(request)
        .await
        .unwrap()
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        chunks.push(chunk);
    }
    // role chunk, 5 tokens, finish chunk, usage chunk
    assert_eq!(chunks.len(), 8, "{chunks:#?}");
    let text: String = chunks
        .iter()
        .filter_map(|c| c.choices.first()?.delta.as_ref()?.content.clone())
        .collect();
    assert!(!text.is_empty());
    assert_eq!(chunks[6].choices[0].finish_reason.as_deref(), Some("stop"));
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    assert_eq!(last.usage.as_ref().unwrap().completion_tokens, 5);
}

#[tokio::test]
async fn completions_embeddings_and_models() {
    let a = sim("a", &["llama3.2", "qwen2.5"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    let mut client = inference(gw.addr);

    let reply = client
        .completion(CompletionRequest {
            model: "llama3.2".into(),
            prompt: vec!["once upon a time".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.choices[0].text.is_empty());

    let mut stream = client
        .stream_completion(CompletionRequest {
            model: "llama3.2".into(),
            prompt: vec!["once".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    assert!(n >= 5, "{n} chunks");

    let reply = client
        .embeddings(EmbeddingRequest {
            model: "llama3.2".into(),
            input: vec!["alpha".into(), "beta".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.data.len(), 2);
    assert_eq!(reply.data[1].index, 1);
    assert_eq!(reply.data[0].embedding.len(), 8);

    let models = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["llama3.2", "qwen2.5"]);
}

#[tokio::test]
async fn node_errors_become_grpc_codes_with_the_nodes_message() {
    let a = sim("a", &["llama3.2"]).await;
    let mut config = config_for(&[("a", a.url())]);
    // Probe once only: the faults would fail the probes too and take the node offline.
    config.discovery.interval = std::time::Duration::from_secs(3600);
    // Each status on its own: no breaker opening on the 5xx run.
    config.breaker.failures = 100;
    let gw = gateway(config).await;
    let mut client = inference(gw.addr);

    for (http, code) in [
        (400, Code::InvalidArgument),
        (404, Code::NotFound),
        (429, Code::ResourceExhausted),
        (500, Code::Unavailable),
        (503, Code::Unavailable),
    ] {
        a.set_faults(Faults {
            status: Some(http),
            ..Faults::default()
        });
        let status = client.chat_completion(chat("llama3.2")).await.unwrap_err();
        assert_eq!(status.code(), code, "node {http}: {status:?}");
        assert!(
            status.message().contains("injected fault"),
            "the node's message is carried: {status:?}"
        );
        assert_eq!(reason(&status), "upstream_error");
        // Streams too: the status comes before any message.
        let status = client
            .stream_chat_completion(chat("llama3.2"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "stream, node {http}");
    }
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_unavailable_not_ok() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    a.set_faults(Faults {
        drop_after: Some(3),
        ..Faults::default()
    });
    let mut client = inference(gw.addr);
    let mut stream = client
        .stream_chat_completion(chat("llama3.2"))
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("a cut stream ended OK after {received} messages"),
            Err(status) => break status,
        }
    };
    assert_eq!(received, 3);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "upstream_stream_error");
}

#[tokio::test]
async fn health_follows_the_nodes() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    let (h2, origin) = common::grpc::h2(gw.addr);
    let mut health = HealthClient::with_origin(h2, origin);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };

    let mut status = None;
    for _ in 0..100 {
        let reply = health.check(check("")).await.unwrap().into_inner();
        status = Some(reply.status());
        if status == Some(ServingStatus::Serving) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, Some(ServingStatus::Serving));
    let reply = health
        .check(check("meshgate.v1.Inference"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status(), ServingStatus::Serving);

    a.kill();
    wait_until(|| !gw.nodes.any_online()).await;
    let mut status = None;
    for _ in 0..100 {
        status = Some(health.check(check("")).await.unwrap().into_inner().status());
        if status == Some(ServingStatus::NotServing) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, Some(ServingStatus::NotServing));
    let unknown = health.check(check("no.such.Service")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn an_unknown_grpc_service_is_unimplemented() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    let (h2, origin) = common::grpc::h2(gw.addr);
    // Speak to a service meshgate does not have, with the health client's codec.
    let mut grpc = tonic::client::Grpc::with_origin(h2, origin);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, tonic_health::pb::HealthCheckResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/no.such.Service/Method");
    let status = grpc
        .unary(
            tonic::Request::new(HealthCheckRequest::default()),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn a_grpc_listener_of_its_own_serves_only_grpc() {
    // Started as an operator starts it: `[grpc] listen` in the config of the binary.
    let a = sim("a", &["llama3.2"]).await;
    let (port, grpc_port) = (free_port(), free_port());
    let config = bin::TempConfig::new(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[grpc]\nlisten = \"127.0.0.1:{grpc_port}\"\n\
         [[nodes]]\nname = \"a\"\nurl = \"{}\"\n",
        a.url()
    ));
    let (_meshgate, _) = bin::serve(&config, port).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], grpc_port).into();

    let reply = inference(addr)
        .chat_completion(chat("llama3.2"))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.choices.is_empty());
    // REST is not served there.
    let rest = post(
        &format!("http://{addr}/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    assert_eq!(rest.status, http::StatusCode::NOT_FOUND);
}
