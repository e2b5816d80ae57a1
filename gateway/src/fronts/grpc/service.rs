//! `meshgate.v1.Inference`: each RPC turns its message into OpenAI JSON, checks it
//! with the same OpenAI types the REST front uses (so bad input is rejected the same
//! way, before any node sees it), routes it, and turns the node's answer back.

use std::sync::Arc;
use std::time::Duration;

use meshgate_proto::openai;
use meshgate_proto::v1::{
    self, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
    CompletionResponse, EmbeddingRequest, EmbeddingResponse, ListModelsRequest, ListModelsResponse,
    convert, inference_server::Inference,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tower::ServiceExt;

use super::stream::{Messages, sse_messages};
use crate::errors::GatewayError;
use crate::fronts::answer;
use crate::fronts::body::parse;
use crate::request::{GatewayRequest, Inbound, Operation, Routed};
use crate::state::AppState;
use crate::telemetry::meter::{Meter, Tokens};

#[derive(Clone)]
pub struct GrpcFront {
    app: AppState,
}

impl GrpcFront {
    pub fn new(app: AppState) -> Self {
        Self { app }
    }

    /// Validate `json` as the OpenAI request type `T`, then route it (a chat with its
    /// conversation, as on REST).
    async fn route<T: DeserializeOwned + Conversation>(
        &self,
        inbound: Inbound,
        operation: Operation,
        stream: bool,
        json: Map<String, Value>,
    ) -> Result<Routed, Status> {
        let body = serde_json::to_vec(&json).map_err(|e| {
            GatewayError::Internal(format!("encoding the request: {e}")).to_status()
        })?;
        let inbound = parse::<T>(&body)
            .map_err(|e| e.to_status())?
            .conversation(inbound);
        let model = json
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let request = GatewayRequest::new(operation, model, stream, body.into(), inbound)
            .map_err(|e| e.to_status())?;
        self.app
            .routing
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| e.to_status())
    }

    /// A whole answer: the node's JSON, or its non-2xx status as a gRPC status.
    async fn answer<T>(
        &self,
        routed: Routed,
        convert: impl FnOnce(Value) -> Result<T, convert::NotAnObject>,
    ) -> Result<Response<T>, Status> {
        let Routed {
            node,
            response,
            meter,
            ..
        } = routed;
        let (parts, body) = response.into_parts();
        let bytes = answer::whole(&node, body, &meter, self.app.limits.max_response_bytes)
            .await
            .map_err(|e| e.to_status())?;
        if !parts.status.is_success() {
            return Err(GatewayError::from_node_answer(&node, parts.status, &bytes).to_status());
        }
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| failed(&meter, GatewayError::bad_node_answer(&node, e)))?;
        if let Some(tokens) = Tokens::from_usage(&json) {
            meter.tokens(tokens);
        }
        let message =
            convert(json).map_err(|e| failed(&meter, GatewayError::bad_node_answer(&node, e)))?;
        Ok(with_node(Response::new(message), &node))
    }

    /// A stream: the node's SSE chunks as messages, or its non-2xx status.
    async fn stream<T: Send + 'static>(
        &self,
        routed: Routed,
        convert: fn(Value) -> Result<T, convert::NotAnObject>,
    ) -> Result<Response<Messages<T>>, Status> {
        let Routed {
            node,
            response,
            meter,
            ..
        } = routed;
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            let bytes = answer::whole(&node, body, &meter, self.app.limits.max_response_bytes)
                .await
                .map_err(|e| e.to_status())?;
            return Err(GatewayError::from_node_answer(&node, parts.status, &bytes).to_status());
        }
        let is_sse = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if !is_sse {
            return Err(failed(
                &meter,
                GatewayError::bad_node_answer(&node, "asked for a stream, got no event stream"),
            ));
        }
        meter.ready(Duration::ZERO);
        Ok(with_node(
            Response::new(sse_messages(Arc::clone(&node), body, convert, meter)),
            &node,
        ))
    }
}

/// What a request tells of its conversation, for prompt-cache affinity: only chats do.
trait Conversation {
    fn conversation(&self, inbound: Inbound) -> Inbound {
        inbound
    }
}

impl Conversation for openai::ChatCompletionRequest {
    fn conversation(&self, inbound: Inbound) -> Inbound {
        crate::fronts::openai::chat_conversation(inbound, self)
    }
}
impl Conversation for openai::CompletionRequest {}
impl Conversation for openai::EmbeddingRequest {}

/// Book a failure after routing on the request's meter; the client gets its status.
fn failed(meter: &Meter, error: GatewayError) -> Status {
    meter.fail(error).to_status()
}

/// The client's metadata (as HTTP headers) and what the edge layers learned (the
/// caller's identity, the arrival time), from the request's extensions.
fn split<T>(request: Request<T>) -> (Inbound, T) {
    let (metadata, extensions, message) = request.into_parts();
    (Inbound::new(&metadata.into_headers(), &extensions), message)
}

/// Which node served, as on REST's `x-meshgate-node`.
fn with_node<T>(mut response: Response<T>, node: &str) -> Response<T> {
    if let Ok(value) = MetadataValue::try_from(node) {
        response.metadata_mut().insert("x-meshgate-node", value);
    }
    response
}

#[tonic::async_trait]
impl Inference for GrpcFront {
    async fn chat_completion(
        &self,
        request: Request<ChatCompletionRequest>,
    ) -> Result<Response<ChatCompletionResponse>, Status> {
        let (inbound, message) = split(request);
        let json = convert::chat_request_json(message, false);
        let routed = self
            .route::<openai::ChatCompletionRequest>(
                inbound,
                Operation::ChatCompletions,
                false,
                json,
            )
            .await?;
        self.answer(routed, convert::chat_response).await
    }

    type StreamChatCompletionStream = Messages<ChatCompletionChunk>;

    async fn stream_chat_completion(
        &self,
        request: Request<ChatCompletionRequest>,
    ) -> Result<Response<Self::StreamChatCompletionStream>, Status> {
        let (inbound, message) = split(request);
        let json = convert::chat_request_json(message, true);
        let routed = self
            .route::<openai::ChatCompletionRequest>(inbound, Operation::ChatCompletions, true, json)
            .await?;
        self.stream(routed, convert::chat_chunk).await
    }

    async fn completion(
        &self,
        request: Request<CompletionRequest>,
    ) -> Result<Response<CompletionResponse>, Status> {
        let (inbound, message) = split(request);
        let json = convert::completion_request_json(message, false);
        let routed = self
            .route::<openai::CompletionRequest>(inbound, Operation::Completions, false, json)
            .await?;
        self.answer(routed, convert::completion_response).await
    }

    type StreamCompletionStream = Messages<CompletionResponse>;

    async fn stream_completion(
        &self,
        request: Request<CompletionRequest>,
    ) -> Result<Response<Self::StreamCompletionStream>, Status> {
        let (inbound, message) = split(request);
        let json = convert::completion_request_json(message, true);
        let routed = self
            .route::<openai::CompletionRequest>(inbound, Operation::Completions, true, json)
            .await?;
        self.stream(routed, convert::completion_response).await
    }

    async fn embeddings(
        &self,
        request: Request<EmbeddingRequest>,
    ) -> Result<Response<EmbeddingResponse>, Status> {
        let (inbound, message) = split(request);
        let json = convert::embedding_request_json(message);
        let routed = self
            .route::<openai::EmbeddingRequest>(inbound, Operation::Embeddings, false, json)
            .await?;
        self.answer(routed, convert::embedding_response).await
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let data = self
            .app
            .nodes
            .online_models()
            .into_iter()
            .map(|id| v1::Model {
                id,
                object: "model".into(),
                created: 0,
                owned_by: "meshgate".into(),
            })
            .collect();
        Ok(Response::new(ListModelsResponse { data }))
    }
}
