//! `meshgate-sim`: run one or many simulated model nodes from the command line.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use meshgate_sim::{Faults, Sim, SimConfig};
use tracing_subscriber::EnvFilter;

/// A simulated LLM node for testing and benchmarking meshgate.
///
/// Speaks OpenAI's API (/v1/chat/completions, /v1/completions, /v1/embeddings,
/// /v1/models) and Ollama's (/api/chat, /api/generate, /api/embed, /api/tags, /api/ps,
/// /api/show, /api/version). Replies are deterministic: the same prompt always gets the
/// same words. Latency and faults can be set here and changed at runtime through
/// POST /sim/latency and POST /sim/faults; GET /sim/stats shows request counts.
///
/// Example: meshgate-sim --port 9000 --count 3 --models llama3.2,qwen2.5 --ttft-ms 200
#[derive(Debug, Parser)]
#[command(name = "meshgate-sim", version, max_term_width = 100)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,

    /// Port of the first node (0 = any free port). Ollama's default port by default.
    #[arg(long, default_value_t = 11434)]
    port: u16,

    /// Number of independent nodes, on consecutive ports from --port, named <name>-<i>
    /// (i from 0). Each gets seed --seed + i.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    count: u16,

    /// Node name: `owned_by` in /v1/models and `name` in /sim/stats.
    #[arg(long, default_value = "sim")]
    name: String,

    /// Models served, comma-separated; other models get 404.
    #[arg(long, value_delimiter = ',', default_value = "llama3.2")]
    models: Vec<String>,

    /// Models /api/ps reports as loaded in memory, comma-separated [default: all of --models]
    #[arg(long, value_delimiter = ',')]
    loaded: Option<Vec<String>>,

    /// Time to first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,

    /// Time between tokens, in milliseconds.
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,

    /// Tokens per reply (a request's max_tokens can cut it shorter).
    #[arg(long, default_value_t = 16)]
    tokens: u32,

    /// Embedding dimension when a request does not ask for one.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=16_384))]
    embedding_dim: u32,

    /// Fault: answer every API request with this HTTP status (400-599).
    #[arg(long, value_parser = clap::value_parser!(u16).range(400..=599))]
    fail_status: Option<u16>,

    /// Fault: answer this fraction (0-1) of API requests with 500, chosen
    /// deterministically from --seed.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    error_rate: f64,

    /// Fault: cut the connection after this many stream chunks (non-streaming
    /// answers are cut halfway through the body).
    #[arg(long)]
    drop_after: Option<u32>,

    /// Fault: accept and count requests but never answer them.
    #[arg(long)]
    stall: bool,

    /// The node's context window in prompt tokens: longer chat prompts get llama.cpp's
    /// "exceeds the available context size" 400.
    #[arg(long)]
    context_tokens: Option<u32>,

    /// A prompt cache: a chat whose first two messages this node served lately starts
    /// after this many milliseconds instead of --ttft-ms.
    #[arg(long)]
    cached_ttft_ms: Option<u64>,

    /// Seed for --error-rate.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Tokio worker threads; 1 runs everything on the main thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not within 0..=1"))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads.into())
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let faults = Faults {
        status: args.fail_status,
        error_rate: args.error_rate,
        drop_after: args.drop_after,
        stall: args.stall,
        context_tokens: args.context_tokens,
        ..Faults::default()
    };
    let mut nodes = Vec::with_capacity(args.count.into());
    let mut stdout = std::io::stdout();
    for i in 0..args.count {
        let port = match args.port {
            0 => 0,
            first => first
                .checked_add(i)
                .context("--port + --count runs past port 65535")?,
        };
        let name = if args.count == 1 {
            args.name.clone()
        } else {
            format!("{}-{i}", args.name)
        };
        let cfg = SimConfig {
            name,
            models: args.models.clone(),
            loaded: args.loaded.clone(),
            ttft: Duration::from_millis(args.ttft_ms),
            token_delay: Duration::from_millis(args.token_delay_ms),
            tokens: args.tokens,
            embedding_dim: args.embedding_dim as usize,
            seed: args.seed.wrapping_add(i.into()),
            cached_ttft: args.cached_ttft_ms.map(Duration::from_millis),
            faults: faults.clone(),
            ..SimConfig::default()
        };
        let addr = SocketAddr::new(args.host, port);
        let sim = Sim::start_on(addr, cfg)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        // Harnesses wait for this line, so flush it now rather than at exit.
        writeln!(
            stdout,
            "meshgate-sim {} listening on {}",
            sim.name(),
            sim.url()
        )?;
        stdout.flush()?;
        nodes.push(sim);
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
