//! `meshgate check`: probe every configured node once, through its own transport, and
//! print what an operator needs to fix a broken mesh.

use std::fmt::Write as _;

use futures_util::future::join_all;

use crate::config::Config;
use crate::nodes::{Nodes, Probe, probe};

pub struct NodeReport {
    pub name: String,
    pub transport: &'static str,
    pub target: String,
    pub priority: u32,
    pub probe: Probe,
}

/// Probe every node concurrently.
pub async fn check(config: &Config) -> Result<Vec<NodeReport>, String> {
    let nodes = Nodes::from_config(config)?;
    let probes = join_all(
        nodes
            .list
            .iter()
            .map(|n| probe(n, config.discovery.timeout)),
    )
    .await;
    Ok(nodes
        .list
        .iter()
        .zip(probes)
        .map(|(node, probe)| NodeReport {
            name: node.name.to_string(),
            transport: node.transport_kind.as_str(),
            target: node.target.clone(),
            priority: node.priority,
            probe,
        })
        .collect())
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
    out
}
