//! `meshgate check`: probe every configured node once, through its own transport, try
//! every forward, and print what an operator needs to fix a broken mesh.

use std::fmt::Write as _;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::config::Config;
use meshgate_transports::ssh::{Diagnosis, diagnose};

use crate::forwards::{ForwardStatus, Forwards};
use crate::nodes::{Nodes, Probe, SessionPool, probe};

pub struct NodeReport {
    pub name: String,
    pub transport: &'static str,
    pub target: String,
    pub priority: u32,
    pub probe: Probe,
    /// SSH nodes: reachable, host key, auth, model server through the transport.
    pub ssh: Option<Diagnosis>,
}

/// Probe every node concurrently.
pub async fn check(config: &Config) -> Result<Vec<NodeReport>, String> {
    let nodes = Nodes::from_config(config)?.list();
    let reports = nodes.iter().map(|node| async move {
        // SSH first: it waits for the connection the model-list probe then uses.
        let ssh = match node.ssh_sessions.first() {
            Some(session) => Some(diagnose(session, node.transport.clone(), "/v1/models").await),
            None => None,
        };
        NodeReport {
            name: node.name.to_string(),
            transport: node.transport_kind.as_str(),
            target: node.target.to_string(),
            priority: node.priority,
            probe: probe(node, config.discovery.timeout).await,
            ssh,
        }
    });
    Ok(join_all(reports).await)
}

/// A fixed-width table, one row per node.
pub fn render(reports: &[NodeReport]) -> String {
    let mut rows = vec![
        [
            "NODE",
            "TRANSPORT",
            "TARGET",
            "TIER",
            "STATUS",
            "RTT",
            "MODELS / ERROR",
        ]
        .map(String::from),
    ];
    for r in reports {
        let (status, rtt, detail) = match &r.probe.result {
            Ok(found) => (
                "ok",
                format!("{:.1}ms", r.probe.rtt.as_secs_f64() * 1e3),
                found.models.join(", "),
            ),
            Err(e) => ("FAILED", "-".into(), e.clone()),
        };
        rows.push([
            r.name.clone(),
            r.transport.into(),
            r.target.clone(),
            r.priority.to_string(),
            status.into(),
            rtt,
            detail,
        ]);
    }
    let mut out = table(&rows);
    for diagnosis in reports.iter().filter_map(|r| r.ssh.as_ref()) {
        let _ = writeln!(out, "\n{diagnosis}");
    }
    out
}

/// Config entries that make nothing (a Host pattern that matches no alias).
pub fn warnings(config: &Config) -> Vec<String> {
    crate::nodes::plan::expand(config).warnings
}

pub struct ForwardReport {
    pub status: ForwardStatus,
}

/// Start every forward once, wait (up to the connect timeout plus a little) for each
/// to listen or be refused, and close them again. Run it while `meshgate serve` is not
/// running with the same config: its local ports are taken then.
pub async fn forwards(config: &Config) -> Vec<ForwardReport> {
    if config.forwards.is_empty() {
        return Vec::new();
    }
    let forwards = Arc::new(Forwards::default());
    let sessions = Arc::new(SessionPool::default());
    forwards.sync(config, &sessions, Duration::ZERO).await;
    let deadline = Instant::now() + config.timeouts.connect + Duration::from_secs(2);
    while Instant::now() < deadline && forwards.status().iter().any(|f| f.state == "waiting") {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reports = forwards
        .status()
        .into_iter()
        .map(|status| ForwardReport { status })
        .collect();
    forwards.close_all(Duration::ZERO).await;
    reports
}

/// A fixed-width table, one row per forward.
pub fn render_forwards(reports: &[ForwardReport]) -> String {
    let mut rows =
        vec![["FORWARD", "DIRECTION", "LOCAL", "SSH", "REMOTE", "STATUS"].map(String::from)];
    let mut details = Vec::new();
    for r in reports {
        let s = &r.status;
        let ok = s.state == "listening";
        rows.push([
            s.name.clone(),
            s.direction.into(),
            s.local.clone(),
            s.ssh.clone(),
            s.remote.clone(),
            if ok {
                "ok".into()
            } else {
                s.state.to_uppercase()
            },
        ]);
        if let Some(reason) = &s.reason {
            details.push(format!("{}: {reason}", s.name));
        }
    }
    let mut out = table(&rows);
    for detail in details {
        let _ = writeln!(out, "  {detail}");
    }
    out
}

/// Columns padded to their widest cell; the last one is left ragged.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N - 1)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(out, "{cell:<width$}  ");
        }
        let _ = writeln!(out, "{}", row[N - 1]);
    }
    out
}
