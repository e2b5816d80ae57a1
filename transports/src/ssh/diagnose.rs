//! What `meshgate check` prints per SSH node: is sshd reachable, did authentication
//! pass, what the host-key check said, does the model server answer through the
//! node's transport, and how long a round trip takes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::ServiceExt;

use super::known_hosts::HostKeyStatus;
use super::session::{Session, SessionState};
use crate::{Kind, Request, Response, TransportError};

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Ok,
    Failed(String),
    /// Not attempted because an earlier step failed.
    Skipped,
}

impl Check {
    pub fn is_ok(&self) -> bool {
        matches!(self, Check::Ok)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Ok => f.write_str("ok"),
            Check::Failed(why) => write!(f, "FAILED: {why}"),
            Check::Skipped => f.write_str("skipped"),
        }
    }
}

/// A node's SSH health, step by step.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    pub node: String,
    /// `alias (user@host:port) via jump`.
    pub target: String,
    pub ssh_reachable: Check,
    pub auth: Check,
    /// `None` if the handshake never got to the host key.
    pub host_key: Option<HostKeyStatus>,
    pub model_server: Check,
    /// HTTP status of the probe request, if one came back.
    pub probe_status: Option<u16>,
    /// Time for the probe request through the transport, head to last body byte.
    pub round_trip: Option<Duration>,
    pub state: SessionState,
}

impl Diagnosis {
    pub fn is_healthy(&self) -> bool {
        self.ssh_reachable.is_ok() && self.auth.is_ok() && self.model_server.is_ok()
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.node, self.target)?;
        writeln!(f, "  ssh reachable : {}", self.ssh_reachable)?;
        let hk = match &self.host_key {
            None => "not checked".to_owned(),
            Some(HostKeyStatus::Unknown { fingerprint }) => format!("unknown ({fingerprint})"),
            Some(HostKeyStatus::Changed {
                fingerprint,
                file,
                line,
            }) => {
                format!("CHANGED (now {fingerprint}; recorded at {file}:{line})")
            }
            Some(other) => other.as_str().to_owned(),
        };
        writeln!(f, "  host key      : {hk}")?;
        writeln!(f, "  auth          : {}", self.auth)?;
        writeln!(f, "  model server  : {}", self.model_server)?;
        match self.round_trip {
            Some(rtt) => write!(f, "  round trip    : {:.1} ms", rtt.as_secs_f64() * 1e3),
            None => write!(f, "  round trip    : -"),
        }
    }
}

/// Connects (or waits for the connection in progress), then sends `GET <probe_path>`
/// (e.g. `/v1/models`, or `/api/tags` for Ollama) through `transport`, which must
/// be the node's own forward or exec transport over `session`.
pub async fn diagnose<T>(session: &Arc<Session>, transport: T, probe_path: &str) -> Diagnosis
where
    T: tower::Service<Request, Response = Response, Error = TransportError>,
{
    let target = session.target();
    let connected = session.wait_connected().await;
    let state = session.state();
    let mut d = Diagnosis {
        node: target.alias.clone(),
        target: target.describe(),
        ssh_reachable: Check::Skipped,
        auth: Check::Skipped,
        host_key: None,
        model_server: Check::Skipped,
        probe_status: None,
        round_trip: None,
        state: state.clone(),
    };
    match (&connected, &state) {
        (Ok(()), SessionState::Connected { host_key, .. }) => {
            d.ssh_reachable = Check::Ok;
            d.auth = Check::Ok;
            d.host_key = Some(host_key.clone());
        }
        (
            _,
            SessionState::BackingOff { last_error: e, .. } | SessionState::Failed { error: e, .. },
        ) => {
            d.host_key = e.host_key.clone();
            match e.kind {
                Kind::HostKey => {
                    d.ssh_reachable = Check::Ok;
                    d.auth = Check::Skipped;
                }
                Kind::Auth => {
                    d.ssh_reachable = Check::Ok;
                    d.auth = Check::Failed(e.message.clone());
                }
                _ => d.ssh_reachable = Check::Failed(e.message.clone()),
            }
            return d;
        }
        (Err(e), _) => {
            d.ssh_reachable = Check::Failed(e.to_string());
            return d;
        }
        (Ok(()), _) => {
            d.ssh_reachable = Check::Ok;
            d.auth = Check::Ok;
        }
    }

    let req = http::Request::get(probe_path)
        .body(Bytes::new())
        .expect("valid probe request");
    let start = Instant::now();
    let result = async {
        let resp = transport.oneshot(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        Ok::<_, TransportError>(status)
    }
    .await;
    match result {
        Ok(status) => {
            d.round_trip = Some(start.elapsed());
            d.probe_status = Some(status.as_u16());
            d.model_server = if status.is_success() {
                Check::Ok
            } else {
                Check::Failed(format!("GET {probe_path} answered {status}"))
            };
        }
        Err(e) => d.model_server = Check::Failed(e.to_string()),
    }
    d
}
