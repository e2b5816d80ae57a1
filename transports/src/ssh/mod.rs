//! Reaching nodes over SSH, by their `Host` aliases in `~/.ssh/config`.
//!
//! ```text
//! SshTarget::resolve(alias, &ResolveOptions)   settings from the OpenSSH config (config.rs)
//!   └─ Session::new(target, SessionOptions)    one connection, kept up in the background (session.rs)
//!        │    (each attempt: handshake.rs — TCP/jump, host key, auth.rs, warm-up)
//!        ├─ ForwardTransport::new(session, port)   HTTP over direct-tcpip channels (forward.rs)
//!        ├─ ExecTransport::new(sessions, port)     HTTP through a pipe process per exec channel,
//!        │                                         or curl per request (exec/)
//!        └─ Tunnel::start(session, TunnelSpec)     long-lived `ssh -L` / `ssh -R` port forwards,
//!                                                  kept across reconnects (tunnel.rs; the server's
//!                                                  forwarded connections reach it through the
//!                                                  handler and remote_listens.rs)
//! diagnose(&session, port)                      what `meshgate check` prints per node
//! ```
//!
//! Both transports are `tower::Service`s of the crate's one shape, boxable into
//! [`crate::BoxTransport`].

mod auth;
mod channel_io;
pub mod config;
pub mod diagnose;
pub mod exec;
pub mod forward;
mod handshake;
pub mod hosts;
pub mod known_hosts;
mod link;
mod remote_listens;
pub mod session;
pub mod stats;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tunnel;

pub use config::{ConfigError, HostKeyPolicy, ResolveOptions, Resolver, SshTarget};
pub use diagnose::{Diagnosis, diagnose};
pub use exec::ExecTransport;
pub use forward::ForwardTransport;
pub use known_hosts::HostKeyStatus;
pub use session::{Session, SessionError, SessionOptions, SessionState};
pub use tunnel::{Direction, Tunnel, TunnelError, TunnelSpec, TunnelState, TunnelStatus};
