//! `grpc.health.v1` kept current: SERVING while at least one node is online (the same
//! rule as `/readyz`), NOT_SERVING otherwise, for the whole server ("") and for
//! `meshgate.v1.Inference`.

use std::sync::Arc;
use std::time::Duration;

use meshgate_proto::v1::inference_server::SERVICE_NAME;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::nodes::Nodes;

/// How often node health is looked at. Reading it is a few lock reads; discovery
/// changes it at most every discovery interval.
const EVERY: Duration = Duration::from_millis(100);

pub async fn track(nodes: Arc<Nodes>, reporter: HealthReporter) {
    let mut last = None;
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let status = if nodes.any_online() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE_NAME, status).await;
            last = Some(status);
        }
    }
}
