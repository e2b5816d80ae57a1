//! From a config to the list of nodes to route to: Host patterns expanded against the
//! ssh config, every node resolved, and a node whose spec did not change kept as it is
//! (its SSH connection, health, latency estimate and breaker) — what makes a reload
//! cheap and invisible to traffic.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use meshgate_transports::ssh::hosts::{self, HostList};
use meshgate_transports::ssh::{self, Session, SessionOptions, SshTarget};

use super::{Node, NodeSpec};
use crate::config::{Config, NodeConfig};

/// The nodes a config asks for, and what an operator should know about them.
pub struct Plan {
    pub nodes: Vec<Arc<Node>>,
    /// Entries that made no node, with the reason (a pattern that matches no Host, an
    /// alias the ssh config cannot resolve). Not fatal: the rest of the mesh serves.
    pub warnings: Vec<String>,
    /// The ssh config files read for patterns (to watch for edits).
    pub ssh_files: Vec<PathBuf>,
}

impl Plan {
    /// Build the nodes of `config`, reusing those of `current` whose spec is unchanged.
    pub fn new(
        config: &Config,
        current: &[Arc<Node>],
        sessions: &SessionPool,
    ) -> Result<Self, String> {
        let Expanded {
            nodes: wanted,
            mut warnings,
            ssh_files,
        } = expand(config);
        let mut nodes = Vec::with_capacity(wanted.len());
        for (node, from_pattern) in wanted {
            let spec = match NodeSpec::resolve(&node, config) {
                Ok(spec) => spec,
                // One bad Host entry among many a pattern matched must not stop the rest.
                Err(e) if from_pattern => {
                    warnings.push(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match current
                .iter()
                .find(|n| *n.name == *node.name && n.spec == spec)
            {
                Some(same) => nodes.push(Arc::clone(same)),
                None => nodes.push(Arc::new(Node::new(spec, sessions)?)),
            }
        }
        Ok(Self {
            nodes,
            warnings,
            ssh_files,
        })
    }
}

/// The node entries of a config with Host patterns replaced by one entry per matching
/// alias (`from_pattern` true), and what could not be matched.
pub struct Expanded {
    pub nodes: Vec<(NodeConfig, bool)>,
    pub warnings: Vec<String>,
    pub ssh_files: Vec<PathBuf>,
}

/// Expand `config`'s Host patterns against its ssh config. Resolves nothing, connects
/// nothing.
pub fn expand(config: &Config) -> Expanded {
    let mut warnings = Vec::new();
    let mut ssh_files = Vec::new();
    let hosts = if config.nodes.iter().any(is_pattern) {
        let path = ssh_config_path(config);
        match hosts::read(&path) {
            Ok(list) => {
                ssh_files.clone_from(&list.files);
                list
            }
            Err(e) => {
                warnings.push(format!("ssh config {}: {e}", path.display()));
                HostList::default()
            }
        }
    } else {
        HostList::default()
    };
    let mut wanted: Vec<(NodeConfig, bool)> = Vec::new();
    let explicit: Vec<&str> = config
        .nodes
        .iter()
        .filter(|n| !is_pattern(n))
        .map(|n| n.name.as_str())
        .collect();
    for (i, node) in config.nodes.iter().enumerate() {
        if !is_pattern(node) {
            wanted.push((node.clone(), false));
            continue;
        }
        let pattern = node.ssh.as_deref().unwrap_or_default();
        let before = wanted.len();
        for alias in hosts.matching(pattern) {
            // A node named explicitly, or matched by an earlier pattern, wins.
            if explicit.contains(&alias) || wanted.iter().any(|(n, _)| n.name == alias) {
                continue;
            }
            let mut expanded = node.clone();
            expanded.name = alias.to_owned();
            expanded.ssh = Some(alias.to_owned());
            wanted.push((expanded, true));
        }
        if wanted.len() == before {
            warnings.push(format!(
                "nodes[{i}]: ssh pattern `{pattern}` matches no Host entry in {}",
                ssh_config_path(config).display()
            ));
        }
    }
    Expanded {
        nodes: wanted,
        warnings,
        ssh_files,
    }
}

fn is_pattern(node: &NodeConfig) -> bool {
    node.ssh.as_deref().is_some_and(hosts::is_pattern)
}

/// The ssh config patterns are matched against: `[ssh] config`, else `~/.ssh/config`.
pub fn ssh_config_path(config: &Config) -> PathBuf {
    config
        .ssh
        .config
        .as_deref()
        .map_or_else(ssh::config::default_config_path, ssh::config::expand_home)
}

/// One SSH connection per host, shared by the nodes and forwards that reach it: a
/// forward to a node's host rides the node's connection. Holds them weakly; a connection
/// lives as long as something uses it.
#[derive(Default)]
pub struct SessionPool(Mutex<Vec<(SshTarget, Weak<Session>)>>);

impl SessionPool {
    /// The live connection to `target`, or a new one (connecting in the background).
    pub fn session(&self, target: &SshTarget, options: &SessionOptions) -> Arc<Session> {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|(_, session)| session.strong_count() > 0);
        if let Some(session) = pool
            .iter()
            .find(|(t, _)| t == target)
            .and_then(|(_, s)| s.upgrade())
        {
            return session;
        }
        let session = Session::new(target.clone(), options.clone());
        pool.push((target.clone(), Arc::downgrade(&session)));
        session
    }
}
