//! Transport errors say which phase failed, because that decides whether failing over
//! to another node is safe: anything before the first response byte may be retried
//! elsewhere; a cut body may not (the client already has part of the answer).

use std::fmt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How far a request got before the transport failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Reaching the node: TCP/SSH connect, handshake, authentication, channel open.
    Connect,
    /// Writing the request to the node.
    Send,
    /// Waiting for the response head: the node got the request but never answered.
    FirstByte,
    /// Reading the response body: the answer was cut after it began.
    Body,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Send => "send",
            Phase::FirstByte => "first byte",
            Phase::Body => "body",
        }
    }
}

/// What went wrong, independent of the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Nothing listens where the model server should be (connection refused).
    Refused,
    /// A deadline passed (connect, first byte, idle gap).
    Timeout,
    /// The connection or channel went away under the request.
    Closed,
    /// The node refused our credentials (SSH authentication).
    Auth,
    /// The node's host key is unknown or changed.
    HostKey,
    /// The node answered something that is not valid HTTP (or curl output).
    Protocol,
    /// A local misconfiguration or resource problem (bad URL, missing binary on the node).
    Config,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Refused => "refused",
            Kind::Timeout => "timeout",
            Kind::Closed => "closed",
            Kind::Auth => "auth",
            Kind::HostKey => "host key",
            Kind::Protocol => "protocol",
            Kind::Config => "config",
        }
    }
}

#[derive(Debug)]
pub struct TransportError {
    phase: Phase,
    kind: Kind,
    message: String,
    source: Option<BoxError>,
}

impl TransportError {
    pub fn new(phase: Phase, kind: Kind, message: impl Into<String>) -> Self {
        Self {
            phase,
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The same failure, seen from a later phase (e.g. a timeout wrapper that knows
    /// the head had already arrived).
    pub fn in_phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
        self
    }

    /// Whether another node may be tried: only if no part of a response was relayed.
    pub fn is_retryable(&self) -> bool {
        self.phase != Phase::Body
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed ({}): {}",
            self.phase.as_str(),
            self.kind.as_str(),
            self.message
        )?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Whether an I/O error of this kind is anywhere in `err`'s source chain.
pub fn caused_by_io(err: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_body_failures_forbid_failover() {
        for phase in [Phase::Connect, Phase::Send, Phase::FirstByte] {
            assert!(TransportError::new(phase, Kind::Closed, "x").is_retryable());
        }
        assert!(!TransportError::new(Phase::Body, Kind::Closed, "x").is_retryable());
    }

    #[test]
    fn display_names_phase_kind_and_cause() {
        let e = TransportError::new(Phase::Connect, Kind::Refused, "127.0.0.1:1")
            .with_source(std::io::Error::other("connection refused"));
        assert_eq!(
            e.to_string(),
            "connect failed (refused): 127.0.0.1:1: connection refused"
        );
    }
}
