//! The synchronization engine: applies one write to a context's current state under its
//! strategy, detecting and resolving conflicts. Pure: no I/O, no clocks of its own, so the same
//! inputs (including HLC timestamps) always give the same result.
//!
//! # What the strategies promise
//!
//! A write names the version it observed (`baseVersion`). The changes other agents committed
//! after that version are *concurrent* with it; a concurrent change *overlaps* a field of the
//! write when it changed the value at that field's JSON Pointer (the field itself, a part of
//! it, or a parent replaced). To find them the engine is given the retained versions from the
//! base to the current one ([`apply_write`]'s `observed`); a base that retention already
//! dropped is refused ([`Refusal::BaseNotRetained`]), never silently diffed against the current
//! document.
//!
//! - `strong`: the base must be the current version; otherwise the write is refused
//!   ([`Refusal::Stale`]) and a `concurrent-update` conflict records the refused change and a
//!   reference to the current version (`{"version": n}`), not a copy of the document.
//! - `eventual`: the base is required. Fields nobody else changed since the base merge; an
//!   overlapped field is last-writer-wins by HLC timestamp (the timestamp the host gave the
//!   write when it accepted it, [`Write::hlc`], compared with the timestamp of the change that
//!   holds the field; ties broken by agent id), not by commit order. An agent's own earlier
//!   writes never conflict with it.
//! - `causal`: as `eventual`, plus two rules. (1) Monotonic writes: an agent must have observed
//!   its own earlier writes, so a write whose base is older than a version the same agent made
//!   is refused ([`Refusal::NotCausal`]) — under `eventual` it is accepted. (2) An overlapped
//!   field resolves by the context's [`ConflictResolution`] (last-writer-wins by HLC, a
//!   key-by-key merge, or a manual resolution), where `eventual` always takes last-writer-wins.
//! - `manual`: an overlapped field puts the context into `conflict` state, holding every
//!   competing value (in arrival order, several per agent if an agent writes more than once)
//!   until an agent with `write` or the operator resolves it. A write without a base is taken
//!   as based on the current version.
//!
//! Every overlap is one conflict record per field, naming every agent that changed the field
//! concurrently (its last value) and the writer (its value). A rival's or resolved value larger
//! than [`MAX_INLINE_CONFLICT_VALUE_BYTES`] is recorded as a reference to the version holding
//! it (`{"version": n}`), so a record never copies a large document; the writer's own value is
//! always copied, since a losing write makes no version. A `manual` context's pending conflict
//! holds the values themselves (a resolution takes one), counted against the document limit.

pub use super::conflicts::{MAX_INLINE_CONFLICT_VALUE_BYTES, conflict, stale_conflict};

use super::conflicts::{changes_value, inline, rivals};
use super::hlc::Hlc;
use super::model::{
    CompetingValue, Conflict, ConflictOutcome, ConflictResolution, ConflictSeverity, ConflictType,
    ContextState, ContextStatus, ContextVersion, PendingConflict, StampedField, SyncStrategy,
};
use super::patch::{self, FieldChange, PatchError};
use serde_json::Value;
use std::collections::BTreeMap;

/// One write as the engine sees it.
#[derive(Debug, Clone)]
pub struct Write {
    /// The writing agent.
    pub agent: String,
    /// The version the writer based its change on (`None`: the current one; allowed only for
    /// `manual` contexts and the host's own writes).
    pub base_version: Option<u64>,
    /// The changes, normalized.
    pub changes: Vec<FieldChange>,
    /// `put`, `patch`, `rollback`, ...
    pub op: &'static str,
    /// HLC timestamp the host gave the write when it accepted the call (before it queued for
    /// the writer): what last-writer-wins compares.
    pub hlc: Hlc,
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
    /// Strong, eventual and causal contexts need `baseVersion`.
    #[error(
        "`baseVersion` is required for {strategy} contexts (the context is at version {current}): pass the version the change is based on, or use the SDK's `context::update`, which reads the context and writes with the version it read"
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
    /// The base version is no longer kept, so what changed since cannot be known.
    #[error(
        "`baseVersion` {base} is no longer retained (the oldest kept version is {oldest}; see the context's historyLimit): re-read the context and base the change on its current version {current}"
    )]
    BaseNotRetained {
        /// Claimed base.
        base: u64,
        /// Oldest version still kept (0: none).
        oldest: u64,
        /// Current version.
        current: u64,
    },
    /// The base is further behind the current version than a write may be.
    #[error(
        "`baseVersion` {base} is {behind} versions behind the context (version {current}); a write may be at most {max} behind: re-read the context and base the change on its current version"
    )]
    BaseTooOld {
        /// Claimed base.
        base: u64,
        /// `current - base`.
        behind: u64,
        /// Current version.
        current: u64,
        /// [`MAX_VERSIONS_BEHIND`].
        max: u64,
    },
    /// The versions between the base and the current one hold more than a write may read
    /// ([`OBSERVED_DOCUMENTS`] documents' worth of bytes).
    #[error(
        "the versions since `baseVersion` {base} hold more than {max_bytes} bytes, more than a write may read to find concurrent changes: re-read the context and base the change on its current version {current}"
    )]
    ChangesTooLarge {
        /// Claimed base.
        base: u64,
        /// Current version.
        current: u64,
        /// [`OBSERVED_DOCUMENTS`] × `max_document_bytes`.
        max_bytes: usize,
    },
    /// Causal strategy: the writer did not observe its own earlier write.
    #[error(
        "not causal: based on version {base}, but this agent's own write made version {own}; base the change on version {own} or later"
    )]
    NotCausal {
        /// Claimed base.
        base: u64,
        /// The writer's latest version after the base.
        own: u64,
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

/// Most versions a write's base may be behind the current one (the versions in between are
/// read to find concurrent changes, on the store's writer, so the work of one write is bounded).
pub const MAX_VERSIONS_BEHIND: u64 = 1_000;

/// Most bytes of stored documents the versions a write is behind may hold, in units of
/// `max_document_bytes`: a thousand versions of a large document would otherwise be read into
/// memory on the writer for one write (a guest makes them with tiny patches).
pub const OBSERVED_DOCUMENTS: usize = 4;

/// What a write did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The context after the write.
    pub state: ContextState,
    /// The number of the new version, when the document or status changed. The version is
    /// `state` as it is now: its document, revision and HLC, made by the writing agent with
    /// the write's `op` (not copied here, so a write holds one copy of the document).
    pub version: Option<u64>,
    /// Conflicts detected (and, where the strategy says so, resolved).
    pub conflicts: Vec<Conflict>,
}

/// Checks a document against a context schema.
pub type SchemaCheck<'a> = &'a dyn Fn(&Value) -> Result<(), String>;

/// Context for one application: the HLC and revision the write gets, and the time.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// HLC timestamp of the commit (the version's and the context's).
    pub hlc: Hlc,
    /// Store-wide revision it will get if it creates a version.
    pub revision: u64,
    /// Unix ms.
    pub now_ms: u64,
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

/// Checks that `observed` holds every version from `base` to the current one, in order (what
/// a write based on `base` needs to find its concurrent changes).
pub fn check_observed(
    state: &ContextState,
    base: u64,
    observed: &[ContextVersion],
) -> Result<(), Refusal> {
    let complete = observed.first().is_some_and(|v| v.version == base)
        && observed.last().is_some_and(|v| v.version == state.version)
        && observed.len() as u64 == state.version - base + 1;
    if complete {
        return Ok(());
    }
    Err(Refusal::BaseNotRetained {
        base,
        oldest: observed.first().map_or(0, |v| v.version),
        current: state.version,
    })
}

/// Applies `w` to `state`. `observed` holds the versions from the write's base to the current
/// one, oldest first (see [`check_observed`]); it may be empty when the base is the current
/// version or the strategy is strong.
pub fn apply_write(
    state: &ContextState,
    w: &Write,
    at: Stamp,
    schema: Option<SchemaCheck<'_>>,
    observed: &[ContextVersion],
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
        (SyncStrategy::Strong | SyncStrategy::Eventual | SyncStrategy::Causal, None) => {
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
    let observed: &[ContextVersion] = if base < current {
        check_observed(state, base, observed).map_err(|r| (r, None))?;
        observed
    } else {
        &[]
    };
    if state.strategy == SyncStrategy::Causal
        && let Some(own) = observed[1.min(observed.len())..]
            .iter()
            .rfind(|v| v.agent_id == w.agent)
    {
        return Err((
            Refusal::NotCausal {
                base,
                own: own.version,
            },
            None,
        ));
    }

    let mut conflicts = Vec::new();

    // A context waiting for manual resolution only accepts further competing values for the
    // fields already in conflict; every one is kept.
    if state.status == ContextStatus::Conflict {
        let mut next = state.clone();
        let pending = state.pending.clone().unwrap_or_default();
        if w.changes
            .iter()
            .all(|c| pending.fields.contains_key(&c.path))
        {
            let mut pending = pending;
            for c in &w.changes {
                let value = c.value.clone().unwrap_or(Value::Null);
                pending
                    .fields
                    .get_mut(&c.path)
                    .expect("checked")
                    .insert(w.agent.clone(), value.clone());
                pending.values.push(CompetingValue {
                    field: c.path.clone(),
                    agent: w.agent.clone(),
                    value,
                });
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
    // The rest of the state; the document is `doc` until the end.
    let mut next = state.with_doc(Value::Null);
    let mut applied: Vec<&FieldChange> = Vec::new();
    let mut pending = PendingConflict::default();
    for c in &w.changes {
        let rivals = rivals(observed, &w.agent, &c.path);
        if rivals.is_empty() {
            patch::apply(&mut doc, c).map_err(|e| (e.into(), None))?;
            applied.push(c);
            continue;
        }
        // The change that holds the field now, if another agent made it after the base.
        let holder = state
            .field_stamps
            .iter()
            .filter(|(p, s)| s.version > base && s.agent != w.agent && patch::overlaps(p, &c.path))
            .map(|(_, s)| s)
            .max_by(|a, b| (a.hlc, &a.agent).cmp(&(b.hlc, &b.agent)));
        // Last writer by HLC, then agent id; not commit order.
        let incoming_wins =
            holder.is_none_or(|h| (w.hlc, w.agent.as_str()) > (h.hlc, h.agent.as_str()));
        let current_value = patch::get(&doc, &c.path).cloned().unwrap_or(Value::Null);
        let incoming_value = c.value.clone().unwrap_or(Value::Null);
        // The record: rivals' values (large ones by reference to their version) and this
        // write's value, always copied (a losing write makes no version).
        let mut agent_values: BTreeMap<String, Value> = rivals
            .iter()
            .map(|(agent, (version, value))| (agent.clone(), inline(value, *version)))
            .collect();
        agent_values.insert(w.agent.clone(), incoming_value.clone());
        let mut record = conflict(
            &state.id,
            &c.path,
            ConflictType::FieldModification,
            ConflictSeverity::Low,
            agent_values,
            at.now_ms,
        );
        let outcome = |strategy, value: &Value, version| ConflictOutcome {
            strategy,
            resolved_value: inline(value, version),
            resolved_by: "system".into(),
            resolved_at: at.now_ms,
        };
        match resolution {
            ConflictResolution::Manual => {
                // The competing values themselves (a resolution takes one): the value the
                // document holds now if its holder is no rival, the rivals', then this write's.
                let mut competing: BTreeMap<String, Value> = rivals
                    .into_iter()
                    .map(|(agent, (_, value))| (agent, value))
                    .collect();
                if let Some(h) = holder
                    && !competing.contains_key(&h.agent)
                {
                    competing.insert(h.agent.clone(), current_value.clone());
                    record
                        .agent_values
                        .insert(h.agent.clone(), inline(&current_value, current));
                }
                for (agent, value) in &competing {
                    pending.values.push(CompetingValue {
                        field: c.path.clone(),
                        agent: agent.clone(),
                        value: value.clone(),
                    });
                }
                pending.values.push(CompetingValue {
                    field: c.path.clone(),
                    agent: w.agent.clone(),
                    value: incoming_value.clone(),
                });
                competing.insert(w.agent.clone(), incoming_value);
                pending.fields.insert(c.path.clone(), competing);
                record.severity = ConflictSeverity::Critical;
            }
            ConflictResolution::LastWriteWins => {
                record.resolution = Some(if incoming_wins {
                    patch::apply(&mut doc, c).map_err(|e| (e.into(), None))?;
                    applied.push(c);
                    outcome(
                        ConflictResolution::LastWriteWins,
                        &incoming_value,
                        current + 1,
                    )
                } else {
                    outcome(ConflictResolution::LastWriteWins, &current_value, current)
                });
            }
            ConflictResolution::Merge => {
                let merged = deep_merge(&current_value, &incoming_value, incoming_wins);
                record.resolution = Some(outcome(ConflictResolution::Merge, &merged, current + 1));
                let change = FieldChange {
                    path: c.path.clone(),
                    value: Some(merged),
                };
                patch::apply(&mut doc, &change).map_err(|e| (e.into(), None))?;
                applied.push(c);
            }
        }
        conflicts.push(record);
    }

    if let Some(check) = schema
        && let Err(message) = check(&doc)
    {
        let mut agent_values = BTreeMap::new();
        agent_values.insert(w.agent.clone(), changes_value(&w.changes));
        let record = conflict(
            &state.id,
            "",
            ConflictType::SchemaMismatch,
            ConflictSeverity::High,
            agent_values,
            at.now_ms,
        );
        return Err((Refusal::Schema(message), Some(Box::new(record))));
    }

    let to_conflict = !pending.fields.is_empty();
    if applied.is_empty() && !to_conflict {
        // Every change lost: nothing new to record but the conflicts.
        next.doc = doc;
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
                hlc: w.hlc,
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
        version: Some(version),
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
