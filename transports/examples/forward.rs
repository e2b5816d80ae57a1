//! Runs one local port forward (`ssh -L`) as a meshgate [`Tunnel`] over a pooled SSH
//! session, until Ctrl-C or SIGTERM; for `loadtest/tunnel` and for trying it by hand:
//!
//! ```text
//! cargo run --release -p meshgate-transports --example forward -- \
//!     ~/.ssh/config aurora 127.0.0.1:5432 127.0.0.1:5432
//! ```
//!
//! Prints `listening <addr>` once the listener is bound and the SSH connection is up,
//! and the tunnel's status (connections, bytes, last error) when it stops.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use meshgate_transports::ssh::{
    Direction, ResolveOptions, Resolver, Session, SessionOptions, SshTarget, Tunnel, TunnelSpec,
};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, alias, listen, remote] = args.as_slice() else {
        eprintln!("usage: forward <ssh_config> <alias> <listen host:port> <remote host:port>");
        return ExitCode::from(2);
    };
    let options = ResolveOptions {
        config_path: Some(PathBuf::from(config)),
        resolver: Resolver::Auto,
        ..Default::default()
    };
    let target = match SshTarget::resolve(alias, &options) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("forward: {e}");
            return ExitCode::FAILURE;
        }
    };
    let session = Session::new(target, SessionOptions::default());
    let spec = TunnelSpec {
        name: format!("{alias}-{remote}"),
        direction: Direction::Local,
        local: listen.clone(),
        remote: remote.clone(),
    };
    let tunnel = match Tunnel::start(session.clone(), spec).await {
        Ok(tunnel) => tunnel,
        Err(e) => {
            eprintln!("forward: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = session.wait_connected().await {
        eprintln!("forward: {e}");
        return ExitCode::FAILURE;
    }
    let port = tunnel.status().listen_port.unwrap_or_default();
    let host = listen.rsplit_once(':').map_or("", |(h, _)| h);
    println!("listening {host}:{port}");

    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("forward: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let status = tunnel.status();
    tunnel.close(Duration::from_secs(1)).await;
    eprintln!(
        "forward: stopped; {} connections, {} bytes in, {} bytes out, last error: {}",
        status.connections_total,
        status.bytes_in,
        status.bytes_out,
        status.last_error.as_deref().unwrap_or("none")
    );
    ExitCode::SUCCESS
}
