//! Whether one SSH connection is still up, for whoever uses a channel on it.
//!
//! The russh handler of each connection holds a [`LinkAlive`]; it is dropped with the
//! handler when russh's connection task ends. A [`LinkWatch`] taken from it resolves
//! [`LinkWatch::lost`] then. Tunnels need this because a channel on a dead connection
//! can otherwise wait forever (a write waiting for window space, or a half-closed
//! channel nobody reads any more), and a read says `Ok(0)` like a clean end.

use tokio::sync::watch;

/// Held by the connection's handler; dropping it marks the connection lost.
#[derive(Debug)]
pub(crate) struct LinkAlive(watch::Sender<()>);

impl LinkAlive {
    pub(crate) fn new() -> Self {
        Self(watch::channel(()).0)
    }

    pub(crate) fn watch(&self) -> LinkWatch {
        LinkWatch(self.0.subscribe())
    }
}

/// Watches one connection.
#[derive(Debug, Clone)]
pub(crate) struct LinkWatch(watch::Receiver<()>);

impl LinkWatch {
    /// Resolves once the connection is gone (at once if it already is).
    pub(crate) async fn lost(&mut self) {
        // Nothing is ever sent: `changed` only returns when the sender is dropped.
        while self.0.changed().await.is_ok() {}
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.0.has_changed().is_err()
    }
}
