//! The bare stack, for benchmarks only: meshgate without counting, auth, rate limits,
//! model authorization, observation or failover — only balance and the node call — so
//! a benchmark can measure what those layers cost. Never for serving.
//!
//! ```text
//! cargo build --release -p meshgate --example bare
//! target/release/examples/bare meshgate.toml
//! ```

use anyhow::Context;
use meshgate::app::Stack;
use meshgate::{Config, Gateway, app};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: bare <meshgate.toml>")?;
    let config = Config::load(std::path::Path::new(&path))?;
    let gateway = Gateway::build(&config, Stack::Bare).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    eprintln!("bare stack (benchmarks only) on {}", listener.local_addr()?);
    gateway.serve(listener, app::shutdown_signal()).await?;
    Ok(())
}
