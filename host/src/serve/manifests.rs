//! Registered manifests: prepared once when the server starts (validated, agents loaded and
//! described, distribution planned), and the `inputs` a `run_task` may give them.

use super::OpError;
use super::config::ServerConfig;
use crate::agents::AgentHost;
use crate::coord::{self, Prepared};
use crate::error::Error;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Most `inputs` entries of one `run_task`.
pub const MAX_INPUTS: usize = 256;

/// Registered manifests, prepared (validated, agents loaded and described, planned).
#[derive(Debug, Default)]
pub struct Manifests(BTreeMap<String, (Prepared, Option<String>)>);

impl Manifests {
    /// Prepares every manifest of `config`; the first that fails is named.
    pub async fn load(
        host: &AgentHost,
        config: &ServerConfig,
        guest_dir: &Path,
    ) -> Result<Manifests, Error> {
        let mut out = BTreeMap::new();
        for (name, entry) in &config.manifests {
            let prepared = coord::prepare(host, &entry.path, Some(guest_dir))
                .await
                .map_err(|e| Error::field(format!("config.manifests.{name}"), e.to_string()))?;
            out.insert(name.clone(), (prepared, entry.description.clone()));
        }
        Ok(Manifests(out))
    }

    /// Name, description and subtask count of each manifest `keep` accepts.
    pub fn describe(&self, keep: impl Fn(&str) -> bool) -> Vec<Value> {
        self.0
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(name, (p, note))| {
                json!({
                    "name": name,
                    "description": note.clone().unwrap_or_else(|| p.manifest.task.description.clone()),
                    "task": p.manifest.task.id,
                    "subtasks": p.manifest.subtasks.len(),
                })
            })
            .collect()
    }

    pub(super) fn get(&self, name: &str) -> Result<&Prepared, OpError> {
        self.0.get(name).map(|(p, _)| p).ok_or_else(|| {
            let hint = if name.contains('/') || name.ends_with(".toml") {
                "; clients name registered manifests and never pass paths"
            } else {
                ""
            };
            OpError::not_found(format!(
                "manifest: no registered manifest `{name}`{hint} (registered: {})",
                if self.0.is_empty() {
                    "none".to_string()
                } else {
                    self.0.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ))
        })
    }
}

/// The manifest with `inputs` (`<subtask>.<input>` → value) replacing literal input values.
pub(super) fn with_inputs(
    prepared: &Prepared,
    inputs: &BTreeMap<String, Value>,
) -> Result<Prepared, OpError> {
    if inputs.is_empty() {
        return Ok(prepared.clone());
    }
    if inputs.len() > MAX_INPUTS {
        return Err(OpError::invalid(format!(
            "inputs: {} entries; at most {MAX_INPUTS}",
            inputs.len()
        )));
    }
    let mut manifest = (*prepared.manifest).clone();
    for (key, value) in inputs {
        let Some((subtask, input)) = key.split_once('.') else {
            return Err(OpError::invalid(format!(
                "inputs.{key}: keys are `<subtask>.<input>`"
            )));
        };
        let Some(s) = manifest.subtasks.iter_mut().find(|s| s.id == subtask) else {
            return Err(OpError::invalid(format!(
                "inputs.{key}: the manifest has no subtask `{subtask}`"
            )));
        };
        let Some(i) = s.inputs.iter_mut().find(|i| i.name == input) else {
            return Err(OpError::invalid(format!(
                "inputs.{key}: subtask `{subtask}` has no input `{input}`"
            )));
        };
        if i.value.is_none() {
            return Err(OpError::invalid(format!(
                "inputs.{key}: this input comes from another subtask (`from`); only literal \
                 inputs (`value`) can be given"
            )));
        }
        i.value = Some(value.clone());
    }
    Ok(Prepared {
        manifest: Arc::new(manifest),
        agents: prepared.agents.clone(),
        plan: prepared.plan.clone(),
    })
}
