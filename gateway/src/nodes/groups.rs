//! Model groups (`[[models]]`): a name clients ask for, the models that may answer it
//! as one pool, and the fallbacks in order, each a stage of the request's route.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::ModelGroupConfig;

/// The groups of the running config.
#[derive(Debug, Default)]
pub struct Groups(HashMap<String, Group>);

/// One group, with its fallbacks expanded: stage 0 is `use`, then each fallback model
/// (a fallback that names another group adds that group's stages), without repeats.
#[derive(Debug)]
pub struct Group {
    pub stages: Vec<Vec<Arc<str>>>,
    pub context_fallback: Option<Arc<str>>,
}

impl Groups {
    /// From validated config (fallback chains are known not to loop).
    pub fn from_config(configs: &[ModelGroupConfig]) -> Self {
        let by_name: HashMap<&str, &ModelGroupConfig> =
            configs.iter().map(|g| (g.name.as_str(), g)).collect();
        let groups = configs
            .iter()
            .map(|g| {
                let mut stages: Vec<Vec<Arc<str>>> = Vec::new();
                let mut seen: Vec<Arc<str>> = Vec::new();
                add_stages(g, &by_name, &mut stages, &mut seen);
                let group = Group {
                    stages,
                    context_fallback: g.context_fallback.as_deref().map(Arc::from),
                };
                (g.name.clone(), group)
            })
            .collect();
        Self(groups)
    }

    pub fn get(&self, name: &str) -> Option<&Group> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

fn add_stages(
    group: &ModelGroupConfig,
    by_name: &HashMap<&str, &ModelGroupConfig>,
    stages: &mut Vec<Vec<Arc<str>>>,
    seen: &mut Vec<Arc<str>>,
) {
    let fresh = |models: &[String], seen: &mut Vec<Arc<str>>| -> Vec<Arc<str>> {
        let mut stage = Vec::new();
        for m in models {
            if !seen.iter().any(|s| **s == **m) {
                let m: Arc<str> = Arc::from(m.as_str());
                seen.push(Arc::clone(&m));
                stage.push(m);
            }
        }
        stage
    };
    let first = fresh(&group.uses, seen);
    if !first.is_empty() {
        stages.push(first);
    }
    for fallback in &group.fallback {
        match by_name.get(fallback.as_str()) {
            // A group's name as a fallback: its own route, in order.
            Some(other) if other.name != group.name => add_stages(other, by_name, stages, seen),
            _ => {
                let stage = fresh(std::slice::from_ref(fallback), seen);
                if !stage.is_empty() {
                    stages.push(stage);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, uses: &[&str], fallback: &[&str]) -> ModelGroupConfig {
        ModelGroupConfig {
            name: name.into(),
            uses: uses.iter().map(|s| s.to_string()).collect(),
            fallback: fallback.iter().map(|s| s.to_string()).collect(),
            context_fallback: None,
        }
    }

    #[test]
    fn fallbacks_expand_groups_in_order_without_repeats() {
        let groups = Groups::from_config(&[
            group("chat", &["big", "medium"], &["small-group", "tiny", "big"]),
            group("small-group", &["small", "tiny"], &[]),
        ]);
        let stages: Vec<Vec<String>> = groups
            .get("chat")
            .unwrap()
            .stages
            .iter()
            .map(|s| s.iter().map(|m| m.to_string()).collect())
            .collect();
        assert_eq!(stages, vec![vec!["big", "medium"], vec!["small", "tiny"]]);
    }
}
