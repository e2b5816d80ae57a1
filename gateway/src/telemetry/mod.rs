//! Logs, traces and metrics. Logs: structured fields, no secrets, no prompt text —
//! handlers never log bodies, and auth headers are marked sensitive before the trace
//! layer sees them. Traces: one span per request and one per attempt on a node (see
//! [`spans`]), and one per SSH connect, exported over OTLP/HTTP when `[telemetry]
//! otlp_endpoint` is set; when it is not, no span is even created ([`tracing_on`] is
//! false), so tracing costs nothing. Metrics: see
//! [`crate::metrics`], booked through each request's [`meter`] and scraped on `/metrics`.

pub mod meter;
pub mod otlp;
pub mod spans;

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;

pub use spans::tracing_on;

/// Keeps the span exporter alive; flushes what is buffered when dropped or on [`flush`].
///
/// [`flush`]: Telemetry::flush
#[must_use = "dropping it stops span export"]
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Export every finished span now. Blocks: call it off the async workers (e.g. in
    /// `spawn_blocking`), as the exporter runs on them.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            spans::set_on(false);
            let _ = provider.shutdown();
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; colour only when stderr is a terminal (never in journald
    /// or a file).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// [`init_with`] in the default log format.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, String> {
    init_with(config, LogFormat::Text)
}

/// Log to stderr in `format` (`RUST_LOG` overrides the default: `info` for meshgate,
/// `warn` else), and export spans when `config.otlp_endpoint` is set. Must run inside a
/// tokio runtime when it is (the batch exporter runs on it). Installs the global
/// subscriber once; later calls only return a no-op guard.
pub fn init_with(config: &TelemetryConfig, format: LogFormat) -> Result<Telemetry, String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,meshgate=info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => lines
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => lines.json().with_filter(filter).boxed(),
    };
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => Some(provider(endpoint, config)?),
        None => None,
    };
    // Request and attempt spans use the OpenTelemetry API directly (see [`spans`]); the
    // `tracing` bridge carries the SSH connection spans, made in the transports crate.
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("meshgate"))
            // Per-span extras meshgate's attributes do not need, each an allocation.
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_filter(Targets::new().with_target("meshgate_transports", Level::INFO))
    });
    if tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_err()
    {
        // Someone (a test) installed a subscriber already: ours would not see spans.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Ok(Telemetry::default());
    }
    if let Some(provider) = &provider {
        spans::set_tracer(provider.tracer("meshgate"));
    }
    spans::set_on(provider.is_some());
    Ok(Telemetry { provider })
}

fn provider(endpoint: &str, config: &TelemetryConfig) -> Result<SdkTracerProvider, String> {
    let exporter = otlp::OtlpExporter::new(endpoint, Duration::from_secs(10))?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sampling_ratio)));
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build())
}
