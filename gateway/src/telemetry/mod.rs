//! Logging setup. Structured fields, no secrets, no prompt text: handlers never log
//! bodies, and auth headers are marked sensitive before the trace layer sees them.

use tracing_subscriber::EnvFilter;

/// Log to stderr; `RUST_LOG` overrides the default (`info` for meshgate, `warn` else).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,meshgate=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
