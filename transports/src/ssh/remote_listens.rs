//! The remote listens (`tcpip-forward`) a session's tunnels have asked the server for,
//! and where the server's `forwarded-tcpip` channels for them go.
//!
//! Each remote [`Tunnel`](super::tunnel::Tunnel) registers here once; the session's
//! russh handler ([`super::handshake`]) looks up the tunnel for each channel the server
//! opens, by the address and port the server reports. OpenSSH reports the listen
//! address as the client sent it and the port it actually bound (the allocated one
//! when port 0 was asked for), so the port decides and the address only breaks ties.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use russh::Channel;
use russh::client::{ChannelOpenHandle, Msg};
use tokio::sync::mpsc;

use super::link::LinkWatch;

/// One connection the server accepted on a remote listen, not yet confirmed: the
/// tunnel connects locally first and then accepts or rejects it (as OpenSSH's client
/// does), so a dead local service shows as a failed open on the server's side.
pub(crate) struct Incoming {
    pub channel: Channel<Msg>,
    pub reply: ChannelOpenHandle,
    /// The connection the channel arrived on.
    pub link: LinkWatch,
    /// Who connected, as the server reports it (`host:port`).
    pub originator: String,
}

/// How many unconfirmed connections may queue for one tunnel; more are rejected
/// (the handler must never wait: it runs on the connection's own task).
pub(crate) const QUEUE: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct RemoteListens {
    entries: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    /// The address as sent in the `tcpip-forward` request.
    address: String,
    requested_port: u16,
    /// The port the server bound, while it listens for us.
    bound: Option<u16>,
    tx: mpsc::Sender<Incoming>,
}

impl RemoteListens {
    pub(crate) fn register(
        self: &Arc<Self>,
        address: &str,
        requested_port: u16,
        tx: mpsc::Sender<Incoming>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push(Entry {
            id,
            address: address.to_owned(),
            requested_port,
            bound: None,
            tx,
        });
        Registration {
            listens: self.clone(),
            id,
        }
    }

    /// Hands `incoming` to the tunnel listening on `address:port`; false if there is
    /// none or its queue is full (`incoming` is dropped, which rejects the channel).
    pub(crate) fn dispatch(&self, address: &str, port: u32, incoming: Incoming) -> bool {
        let entries = self.lock();
        let port = u16::try_from(port).ok();
        let by = |f: &dyn Fn(&Entry) -> bool| -> Vec<&Entry> {
            entries.iter().filter(|e| f(e)).collect()
        };
        // The bound port first; then a fixed-port request whose answer is still on its
        // way to the tunnel; then a port-0 request in flight (the only way the server
        // can name a port we have not recorded yet).
        let mut candidates = by(&|e| port.is_some() && e.bound == port);
        if candidates.is_empty() {
            candidates = by(&|e| e.bound.is_none() && port == Some(e.requested_port));
        }
        if candidates.is_empty() {
            candidates = by(&|e| e.bound.is_none() && e.requested_port == 0);
        }
        let chosen = match candidates.as_slice() {
            [one] => Some(*one),
            many => many.iter().copied().find(|e| e.address == address),
        };
        chosen.is_some_and(|entry| entry.tx.try_send(incoming).is_ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A tunnel's entry; removed on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    listens: Arc<RemoteListens>,
    id: u64,
}

impl Registration {
    /// Records the port the server bound (`None`: not listening now).
    pub(crate) fn set_bound(&self, port: Option<u16>) {
        if let Some(e) = self.listens.lock().iter_mut().find(|e| e.id == self.id) {
            e.bound = port;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.listens.lock().retain(|e| e.id != self.id);
    }
}
