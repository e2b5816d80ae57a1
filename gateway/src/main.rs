//! The `meshgate` command: serve, check, demo.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meshgate::reload::{self, Source};
use meshgate::service::{Manager, Scope, Service};
use meshgate::{Config, Gateway, app, check, telemetry};

#[derive(Parser)]
#[command(
    name = "meshgate",
    version,
    about = "One OpenAI-compatible endpoint in front of the LLM servers you run on several machines",
    long_about = "One OpenAI-compatible endpoint in front of the LLM servers you run on several machines.\n\n\
                  Start with `meshgate demo` (a self-contained mesh on loopback), then write a\n\
                  meshgate.toml (see gateway/meshgate.example.toml) and run `meshgate check` and `meshgate serve`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: text (colour only on a terminal) or json
    /// (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormatArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for telemetry::LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Text => telemetry::LogFormat::Text,
            LogFormatArg::Json => telemetry::LogFormat::Json,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway.
    Serve {
        /// Config file. Default: ./meshgate.toml if it exists, else built-in defaults
        /// (listen on 127.0.0.1:8080, one local node at http://127.0.0.1:11434).
        #[arg(short, long, env = "MESHGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Override [server] listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Probe every configured node once and print what works; exits non-zero if no node is usable.
    Check {
        #[arg(short, long, env = "MESHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Make a new API key: prints the key (give it to the client) and the [[keys]] entry
    /// for meshgate.toml, which holds only its SHA-256.
    NewKey {
        /// The key's name in logs and metrics.
        #[arg(long, default_value = "app")]
        name: String,
    },
    /// Print the SHA-256 of a key read from standard input (for [[keys]] sha256).
    HashKey,
    /// Run meshgate as a service: a systemd unit (Linux) or a launchd job (macOS) that
    /// starts at boot or login, restarts on failure and reloads on SIGHUP.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Run a self-contained mesh on loopback: meshgate plus three simulated nodes.
    #[cfg(feature = "demo")]
    Demo {
        /// Where the gateway listens (falls back to a free port if this one is taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

/// Where the config comes from: `--config`, else ./meshgate.toml if it exists, else
/// the built-in defaults.
fn source(path: Option<PathBuf>, listen: Option<SocketAddr>) -> Source {
    let default_file = PathBuf::from("meshgate.toml");
    let path = path.or_else(|| default_file.exists().then_some(default_file));
    // Absolute, so a reload reads the same file whatever the working directory is then.
    let path = path.map(|p| std::path::absolute(&p).unwrap_or(p));
    Source { path, listen }
}

#[derive(Subcommand)]
enum ServiceAction {
    /// Write the unit (or plist) and start it.
    Install {
        #[command(flatten)]
        scope: ScopeArg,
        /// Print the unit instead of installing it.
        #[arg(long)]
        print: bool,
        /// The config the service runs with (default: ./meshgate.toml); checked first.
        #[arg(short, long, env = "MESHGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Default: this platform's (systemd on Linux, launchd on macOS).
        #[arg(long, value_enum)]
        manager: Option<ManagerArg>,
    },
    /// Stop the service and remove its unit.
    Uninstall {
        #[command(flatten)]
        scope: ScopeArg,
        #[arg(long, value_enum)]
        manager: Option<ManagerArg>,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct ScopeArg {
    /// The user's own service manager (no root; `loginctl enable-linger` to run without
    /// a login).
    #[arg(long)]
    user: bool,
    /// The system's, running as the user who installs it (their ~/.ssh names the nodes).
    #[arg(long)]
    system: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ManagerArg {
    Systemd,
    Launchd,
}

fn service(
    scope: &ScopeArg,
    manager: Option<ManagerArg>,
    config: PathBuf,
) -> anyhow::Result<Service> {
    let user = std::env::var("USER")
        .ok()
        .or_else(|| {
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        })
        .filter(|u| !u.is_empty())
        .context("cannot tell which user runs the service")?;
    Ok(Service {
        scope: if scope.system {
            Scope::System
        } else {
            Scope::User
        },
        manager: match manager {
            Some(ManagerArg::Systemd) => Manager::Systemd,
            Some(ManagerArg::Launchd) => Manager::Launchd,
            None => Manager::native(),
        },
        exe: std::env::current_exe().context("cannot find the meshgate binary")?,
        config,
        user,
        agent: std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from),
    })
}

/// Print what a service action did (stdout) or why it failed (stderr).
fn said(outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(source(path, None).load()?)
}

/// Runs `cli`; `serve` runs with `served`, its config, read before the runtime started.
async fn run(cli: Cli, served: Option<(Config, Source)>) -> anyhow::Result<ExitCode> {
    let log_format = cli.log_format;
    match cli.command {
        Command::Serve { .. } => {
            let (config, source) = served.context("serve runs with its config")?;
            let _telemetry = telemetry::init_with(&config.telemetry, log_format.into())
                .map_err(anyhow::Error::msg)?;
            let gateway = Gateway::new(&config).map_err(anyhow::Error::msg)?;
            let listener = tokio::net::TcpListener::bind(config.server.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.server.listen))?;
            let extra = gateway.bind_extra().await?;
            tracing::info!(listen = %listener.local_addr()?, grpc = ?config.grpc.listen, ollama = ?config.ollama.listen, nodes = gateway.nodes().list().len(), "meshgate serving");
            for warning in gateway.config_status().warnings {
                tracing::warn!(%warning, "config");
            }
            let watcher = tokio::spawn(reload::watch(gateway.clone(), source));
            gateway
                .serve_with(listener, extra, app::shutdown_signal())
                .await?;
            watcher.abort();
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let config = load_config(config)?;
            for warning in check::warnings(&config) {
                println!("warning: {warning}");
            }
            let reports = check::check(&config).await.map_err(anyhow::Error::msg)?;
            print!("{}", check::render(&reports));
            let usable = reports.iter().filter(|r| r.probe.result.is_ok()).count();
            println!("\n{usable} of {} nodes usable", reports.len());
            let forwards = check::forwards(&config).await;
            if !forwards.is_empty() {
                print!("\n{}", check::render_forwards(&forwards));
                let working = forwards
                    .iter()
                    .filter(|f| f.status.state == "listening")
                    .count();
                println!("\n{working} of {} forwards working", forwards.len());
            }
            Ok(
                if usable > 0 || (reports.is_empty() && !forwards.is_empty()) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
        Command::NewKey { name } => {
            let mut random = [0u8; 24];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
            let key = format!("mg-{}", hex::encode(random));
            let digest = hex::encode(meshgate::keys::sha256(key.as_bytes()));
            println!("key (give this to the client; it is not stored anywhere):\n  {key}\n");
            println!("for meshgate.toml:\n[[keys]]\nname = \"{name}\"\nsha256 = \"{digest}\"");
            Ok(ExitCode::SUCCESS)
        }
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key)?;
            let key = key.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!key.is_empty(), "no key on standard input");
            println!("{}", hex::encode(meshgate::keys::sha256(key.as_bytes())));
            Ok(ExitCode::SUCCESS)
        }
        Command::Service { action } => match action {
            ServiceAction::Install {
                scope,
                print,
                config,
                manager,
            } => {
                let source = source(config, None);
                let path = source.path.clone().context(
                    "a service needs a config file: pass --config (or run where meshgate.toml is)",
                )?;
                source.load().with_context(|| {
                    format!("{} is not a config meshgate can run", path.display())
                })?;
                let service = service(&scope, manager, path)?;
                if print {
                    print!("{}", service.render());
                    return Ok(ExitCode::SUCCESS);
                }
                Ok(said(service.install()))
            }
            ServiceAction::Uninstall { scope, manager } => {
                let service = service(&scope, manager, PathBuf::new())?;
                Ok(said(service.uninstall()))
            }
        },
        #[cfg(feature = "demo")]
        Command::Demo { listen } => {
            meshgate::demo::run(listen).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `[server] threads` sizes the runtime, so `serve` reads its config before it starts.
    let served = match &cli.command {
        Command::Serve { config, listen } => {
            let source = source(config.clone(), *listen);
            match source.load() {
                Ok(config) => Some((config, source)),
                Err(e) => return fail(e.into()),
            }
        }
        _ => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = served
        .as_ref()
        .map(|(c, _)| c.server.threads)
        .filter(|&n| n > 0)
    {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(main_async(cli, served))
}

async fn main_async(cli: Cli, served: Option<(Config, Source)>) -> ExitCode {
    if !matches!(cli.command, Command::Serve { .. }) {
        // `serve` sets up logging and traces once it has read its config.
        let _ = telemetry::init_with(&Default::default(), cli.log_format.into());
    }
    run(cli, served).await.unwrap_or_else(fail)
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}
