//! What the fronts share: the routing service they all adapt onto, the nodes (for the
//! inventory routes), and the size bounds they enforce. Built once in `app.rs`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::errors::GatewayError;
use crate::metrics::OutcomeLabels;
use crate::nodes::Nodes;
use crate::request::{GatewayRequest, Routed};
use crate::response_store::ResponseStore;

/// The routing stack as the fronts see it.
pub type RoutingService = tower::util::BoxCloneSyncService<GatewayRequest, Routed, GatewayError>;

/// Size bounds the fronts enforce.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub routing: RoutingService,
    pub nodes: Arc<Nodes>,
    pub limits: Limits,
    /// Kept Responses-API responses (outlives reloads).
    pub responses: Arc<ResponseStore>,
    /// Mid-stream continuation of chat streams (see `fronts::continuation`).
    pub continuation: Continuation,
}

/// What continuing a cut chat stream needs besides the routing service.
#[derive(Clone)]
pub struct Continuation {
    /// `[routing] continue_streams`.
    pub enabled: bool,
    /// `meshgate_stream_continuations_total{outcome}`.
    pub outcomes: Family<OutcomeLabels, Counter>,
}
