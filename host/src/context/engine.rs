//! The synchronization engine: applies one write to a context's current state under its
//! strategy, detecting and resolving conflicts. Pure: no I/O, no clocks of its own, so the same
//! inputs (including HLC timestamps) always give the same result.

use super::hlc::Hlc;
use super::model::{
    Conflict, ConflictOutcome, ConflictResolution, ConflictSeverity, ConflictType, ContextState,
    ContextStatus, ContextVersion, PendingConflict, StampedField, SyncStrategy,
};
use super::patch::{self, FieldChange, PatchError};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One write as the engine sees it.
#[derive(Debug, Clone)]
pub struct Write {
    /// The writing agent.
    pub agent: String,
    /// The version the writer based its change on (`None`: the current one; not allowed for
    /// strong and causal contexts).
    pub base_version: Option<u64>,
    /// The changes, normalized.
    pub changes: Vec<FieldChange>,
    /// `put`, `patch`, `rollback`, ...
    pub op: &'static str,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Strong strategy: the write was based on an old version.
    #[error(
        "stale write: based on version {base}, but the context is at version {current}; re-read and retry"
    )]
    Stale {
        /// The version the write was based on.
        base: u64,
        /// The current version.
        current: u64,
    },
    /// Strong and causal contexts need `baseVersion`.
    #[error(
        "`baseVersion` is required for {strategy} contexts (the context is at version {current})"
    )]
    BaseRequired {
        /// The strategy.
        strategy: &'static str,
        /// The current version.
        current: u64,
    },
    /// A write based on a version that does not exist yet.
    #[error("`baseVersion` {base} is ahead of the context (version {current})")]
    FutureBase {
        /// Claimed base.
        base: u64,
        /// Current version.
        current: u64,
    },
    /// The context waits for a manual resolution.
    #[error("the context is in conflict on {fields:?}; resolve it first (qi-host context resolve)")]
    InConflict {
        /// Conflicting fields.
        fields: Vec<String>,
    },
    /// The result would break the context's schema.
    #[error("schema mismatch: {0}")]
    Schema(String),
    /// A change could not be applied.
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// The context was deleted.
    #[error("the context was deleted")]
    Deleted,
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The context after the write.
    pub state: ContextState,
    /// The new version, when the document or status changed.
    pub version: Option<ContextVersion>,
    /// Conflicts detected (and, where the strategy says so, resolved).
    pub conflicts: Vec<Conflict>,
}

/// Checks a document against a context schema.
pub type SchemaCheck<'a> = &'a dyn Fn(&Value) -> Result<(), String>;

/// Context for one application: the HLC and revision the write gets, and the time.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// HLC timestamp of the write.
    pub hlc: Hlc,
    /// Store-wide revision it will get if it creates a version.
    pub revision: u64,
    /// Unix ms.
    pub now_ms: u64,
}

fn changes_value(changes: &[FieldChange]) -> Value {
    let mut m = Map::new();
    for c in changes {
        m.insert(c.path.clone(), c.value.clone().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

/// A conflict record for a refused stale write (strong strategy).
pub fn stale_conflict(state: &ContextState, w: &Write, now_ms: u64) -> Conflict {
    let mut agent_values = BTreeMap::new();
    let last_writer = state
        .field_stamps
        .values()
        .max_by_key(|s| s.version)
        .map(|s| s.agent.clone())
        .unwrap_or_else(|| state.owner.clone());
    agent_values.insert(last_writer, state.doc.clone());
    agent_values.insert(w.agent.clone(), changes_value(&w.changes));
    Conflict {
        id: 0,
        context_id: state.id.clone(),
        field: String::new(),
        conflict_type: ConflictType::ConcurrentUpdate,
        severity: ConflictSeverity::Medium,
        agent_values,
        detected_at: now_ms,
        resolution: None,
    }
}

/// Deep-merges `incoming` into `current`: objects key by key; elsewhere the later timestamp's
/// value wins.
fn deep_merge(current: &Value, incoming: &Value, incoming_wins: bool) -> Value {
    match (current, incoming) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = a.clone();
            for (k, vb) in b {
                let merged = match a.get(k) {
                    Some(va) => deep_merge(va, vb, incoming_wins),
                    None => vb.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        _ if incoming_wins => incoming.clone(),
        _ => current.clone(),
    }
}

/// Applies `w` to `state`.
pub fn apply_write(
    state: &ContextState,
    w: &Write,
    at: Stamp,
    schema: Option<SchemaCheck<'_>>,
) -> Result<Applied, (Refusal, Option<Box<Conflict>>)> {
    if state.status == ContextStatus::Deleted {
        return Err((Refusal::Deleted, None));
    }
    let current = state.version;
    let base = match (state.strategy, w.base_version) {
        (SyncStrategy::Strong, Some(b)) if b != current => {
            return Err((
                Refusal::Stale { base: b, current },
                Some(Box::new(stale_conflict(state, w, at.now_ms))),
            ));
        }
        (SyncStrategy::Strong | SyncStrategy::Causal, None) => {
            return Err((
                Refusal::BaseRequired {
                    strategy: state.strategy.as_str(),
                    current,
                },
                None,
            ));
        }
        (_, Some(b)) if b > current => {
            return Err((Refusal::FutureBase { base: b, current }, None));
        }
        (_, b) => b.unwrap_or(current),
    };

    let mut next = state.clone();
    let mut conflicts = Vec::new();

    // A context waiting for manual resolution only accepts further competing values for the
    // fields already in conflict.
    if state.status == ContextStatus::Conflict {
        let pending = state.pending.clone().unwrap_or_default();
        if w.changes
            .iter()
            .all(|c| pending.fields.contains_key(&c.path))
        {
            let mut pending = pending;
            for c in &w.changes {
                pending
                    .fields
                    .get_mut(&c.path)
                    .expect("checked")
                    .insert(w.agent.clone(), c.value.clone().unwrap_or(Value::Null));
            }
            next.pending = Some(pending);
            return Ok(Applied {
                state: next,
                version: None,
                conflicts,
            });
        }
        return Err((
            Refusal::InConflict {
                fields: pending.fields.keys().cloned().collect(),
            },
            None,
        ));
    }

    let resolution = match state.strategy {
        SyncStrategy::Eventual => ConflictResolution::LastWriteWins,
        SyncStrategy::Causal => state.resolution,
        SyncStrategy::Manual => ConflictResolution::Manual,
        SyncStrategy::Strong => ConflictResolution::LastWriteWins, // unreachable: base == current
    };

    let mut doc = state.doc.clone();
    let mut applied: Vec<&FieldChange> = Vec::new();
    let mut pending = PendingConflict::default();
    for c in &w.changes {
        // The most recent concurrent change by another agent to an overlapping field.
        let rival = state
            .field_stamps
            .iter()
            .filter(|(p, s)| s.version > base && s.agent != w.agent && patch::overlaps(p, &c.path))
            .max_by_key(|(_, s)| (s.hlc, s.agent.clone()));
        let Some((rival_path, rival)) = rival else {
            patch::apply(&mut doc, c).map_err(|e| (e.into(), None))?;
            applied.push(c);
            continue;
        };
        let current_value = patch::get(&doc, &c.path).cloned().unwrap_or(Value::Null);
        let incoming_value = c.value.clone().unwrap_or(Value::Null);
        let mut agent_values = BTreeMap::new();
        agent_values.insert(rival.agent.clone(), current_value.clone());
        agent_values.insert(w.agent.clone(), incoming_value.clone());
        // Deterministic order: HLC, then agent id.
        let incoming_wins = (at.hlc, w.agent.as_str()) > (rival.hlc, rival.agent.as_str());
        let mut conflict = Conflict {
            id: 0,
            context_id: state.id.clone(),
            field: if rival_path.len() < c.path.len() {
                rival_path.clone()
            } else {
                c.path.clone()
            },
            conflict_type: ConflictType::FieldModification,
            severity: ConflictSeverity::Low,
            agent_values,
            detected_at: at.now_ms,
            resolution: None,
        };
        match resolution {
            ConflictResolution::Manual => {
                pending
                    .fields
                    .insert(c.path.clone(), conflict.agent_values.clone());
                conflict.severity = ConflictSeverity::Critical;
            }
            ConflictResolution::LastWriteWins => {
                let winner = if incoming_wins {
                    patch::apply(&mut doc, c).map_err(|e| (e.into(), None))?;
                    applied.push(c);
                    incoming_value
                } else {
                    current_value
                };
                conflict.resolution = Some(ConflictOutcome {
                    strategy: ConflictResolution::LastWriteWins,
                    resolved_value: winner,
                    resolved_by: "system".into(),
                    resolved_at: at.now_ms,
                });
            }
            ConflictResolution::Merge => {
                let merged = deep_merge(&current_value, &incoming_value, incoming_wins);
                let change = FieldChange {
                    path: c.path.clone(),
                    value: Some(merged.clone()),
                };
                patch::apply(&mut doc, &change).map_err(|e| (e.into(), None))?;
                applied.push(c);
                conflict.resolution = Some(ConflictOutcome {
                    strategy: ConflictResolution::Merge,
                    resolved_value: merged,
                    resolved_by: "system".into(),
                    resolved_at: at.now_ms,
                });
            }
        }
        conflicts.push(conflict);
    }

    if let Some(check) = schema
        && let Err(message) = check(&doc)
    {
        let mut agent_values = BTreeMap::new();
        agent_values.insert(w.agent.clone(), changes_value(&w.changes));
        let conflict = Conflict {
            id: 0,
            context_id: state.id.clone(),
            field: String::new(),
            conflict_type: ConflictType::SchemaMismatch,
            severity: ConflictSeverity::High,
            agent_values,
            detected_at: at.now_ms,
            resolution: None,
        };
        return Err((Refusal::Schema(message), Some(Box::new(conflict))));
    }

    let to_conflict = !pending.fields.is_empty();
    if applied.is_empty() && !to_conflict {
        // Every change lost: nothing new to record but the conflicts.
        return Ok(Applied {
            state: next,
            version: None,
            conflicts,
        });
    }
    let version = current + 1;
    for c in applied {
        next.field_stamps
            .retain(|p, _| !(p.len() > c.path.len() && patch::overlaps(p, &c.path)));
        next.field_stamps.insert(
            c.path.clone(),
            StampedField {
                version,
                hlc: at.hlc,
                agent: w.agent.clone(),
            },
        );
    }
    if to_conflict {
        next.status = ContextStatus::Conflict;
        next.pending = Some(pending);
    }
    next.doc = doc;
    next.version = version;
    next.revision = at.revision;
    next.hlc = at.hlc;
    next.updated_at = at.now_ms;
    Ok(Applied {
        version: Some(ContextVersion {
            context_id: state.id.clone(),
            version,
            revision: at.revision,
            agent_id: w.agent.clone(),
            hlc: at.hlc,
            op: w.op.to_string(),
            doc: next.doc.clone(),
        }),
        state: next,
        conflicts,
    })
}

/// How an agent or operator resolves a context in conflict.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "choose", content = "value")]
pub enum ResolveChoice {
    /// Take this agent's value for every conflicting field.
    Agent(String),
    /// Take these values (field → value) for the conflicting fields.
    Fields(BTreeMap<String, Value>),
    /// Replace the whole document.
    Document(Value),
}

/// Resolves a context in `conflict` state; returns the new state, version and the resolved
/// value per field.
pub fn resolve(
    state: &ContextState,
    by: &str,
    choice: &ResolveChoice,
    at: Stamp,
) -> Result<(ContextState, ContextVersion, BTreeMap<String, Value>), String> {
    let pending = match (&state.status, &state.pending) {
        (ContextStatus::Conflict, Some(p)) => p,
        _ => return Err(format!("context `{}` is not in conflict", state.id)),
    };
    let mut doc = state.doc.clone();
    let mut chosen = BTreeMap::new();
    match choice {
        ResolveChoice::Agent(agent) => {
            for (field, values) in &pending.fields {
                let v = values.get(agent).ok_or_else(|| {
                    format!(
                        "agent `{agent}` has no value for `{field}`; candidates: {}",
                        values.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })?;
                chosen.insert(field.clone(), v.clone());
            }
        }
        ResolveChoice::Fields(values) => {
            for field in pending.fields.keys() {
                let v = values
                    .get(field)
                    .ok_or_else(|| format!("no value given for conflicting field `{field}`"))?;
                chosen.insert(field.clone(), v.clone());
            }
        }
        ResolveChoice::Document(d) => {
            doc = d.clone();
            for field in pending.fields.keys() {
                chosen.insert(
                    field.clone(),
                    patch::get(d, field).cloned().unwrap_or(Value::Null),
                );
            }
        }
    }
    if !matches!(choice, ResolveChoice::Document(_)) {
        for (field, v) in &chosen {
            patch::apply(
                &mut doc,
                &FieldChange {
                    path: field.clone(),
                    value: Some(v.clone()),
                },
            )
            .map_err(|e| e.to_string())?;
        }
    }
    let mut next = state.clone();
    let version = state.version + 1;
    for field in chosen.keys() {
        next.field_stamps.insert(
            field.clone(),
            StampedField {
                version,
                hlc: at.hlc,
                agent: by.to_string(),
            },
        );
    }
    next.doc = doc;
    next.status = ContextStatus::Active;
    next.pending = None;
    next.version = version;
    next.revision = at.revision;
    next.hlc = at.hlc;
    next.updated_at = at.now_ms;
    let v = ContextVersion {
        context_id: state.id.clone(),
        version,
        revision: at.revision,
        agent_id: by.to_string(),
        hlc: at.hlc,
        op: "resolve".into(),
        doc: next.doc.clone(),
    };
    Ok((next, v, chosen))
}
