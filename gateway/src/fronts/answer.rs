//! Reading a node's whole (non-streaming) answer, the same way on every front: bounded
//! by the response limit, a cut body an error (never truncated JSON), the time spent
//! reading booked as node time and the answer marked ready on the request's meter, a
//! failure booked on it.

use bytes::Bytes;
use tokio::time::Instant;

use std::sync::Arc;

use tower::ServiceExt;

use crate::errors::GatewayError;
use crate::request::{Dialect, GatewayRequest, Routed, read_answer};
use crate::state::AppState;
use crate::telemetry::meter::Meter;

/// A routed request's successful answer, its head and body apart.
pub struct Answered {
    pub node: Arc<str>,
    /// The model as the node was asked for it.
    pub model: Arc<str>,
    pub dialect: Dialect,
    pub parts: http::response::Parts,
    pub body: meshgate_transports::Body,
    pub meter: Meter,
}

/// Route `request`; a node's non-2xx answer comes back as the error (with the node's
/// message), for fronts that render errors in their own shape rather than pass them on.
pub async fn route(app: &AppState, request: GatewayRequest) -> Result<Answered, GatewayError> {
    let Routed {
        node,
        model,
        dialect,
        response,
        meter,
        ..
    } = app.routing.clone().oneshot(request).await?;
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        let bytes = whole(&node, body, &meter, app.limits.max_response_bytes).await?;
        return Err(GatewayError::from_node_answer(&node, parts.status, &bytes));
    }
    Ok(Answered {
        node,
        model,
        dialect,
        parts,
        body,
        meter,
    })
}

/// `node`'s whole answer `body`, at most `max_bytes`, booked on `meter`.
pub async fn whole(
    node: &str,
    body: meshgate_transports::Body,
    meter: &Meter,
    max_bytes: usize,
) -> Result<Bytes, GatewayError> {
    let reading = Instant::now();
    let bytes = read_answer(node, body, max_bytes)
        .await
        .map_err(|e| meter.fail(e))?;
    meter.ready(reading.elapsed());
    Ok(bytes)
}

/// [`whole`], parsed as JSON; an answer that is not JSON is the node's failure, booked.
pub async fn whole_json(
    node: &str,
    body: meshgate_transports::Body,
    meter: &Meter,
    max_bytes: usize,
) -> Result<serde_json::Value, GatewayError> {
    let bytes = whole(node, body, meter, max_bytes).await?;
    serde_json::from_slice(&bytes).map_err(|e| meter.fail(GatewayError::bad_node_answer(node, e)))
}
