//! `meshgate check`: probe every configured node once, through its own transport, and
//! print what an operator needs to fix a broken mesh.

use std::fmt::Write as _;

use futures_util::future::join_all;

use crate::config::Config;
use meshgate_transports::ssh::{Diagnosis, diagnose};

use crate::nodes::{Nodes, Probe, probe};

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
    let ssh: Vec<&Diagnosis> = reports.iter().filter_map(|r| r.ssh.as_ref()).collect();
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        for (c, width) in widths.iter().enumerate() {
            let _ = write!(out, "{:<width$}  ", row[c]);
        }
        let _ = writeln!(out, "{}", row[6]);
    }
    for diagnosis in ssh {
        let _ = writeln!(out, "\n{diagnosis}");
    }
    out
}
