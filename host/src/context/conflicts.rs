//! Conflict records, built in one place: their constructor, the record of a refused stale write,
//! the concurrent changes (rivals) a write meets, and how much of a value a record copies.

use super::engine::Write;
use super::model::{Conflict, ConflictSeverity, ConflictType, ContextState, ContextVersion};
use super::patch::{self, FieldChange};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// A conflict record, not yet stored (id 0): every conflict the store records is built here.
pub fn conflict(
    context_id: &str,
    field: &str,
    conflict_type: ConflictType,
    severity: ConflictSeverity,
    agent_values: BTreeMap<String, Value>,
    detected_at: u64,
) -> Conflict {
    Conflict {
        id: 0,
        context_id: context_id.to_string(),
        field: field.to_string(),
        conflict_type,
        severity,
        agent_values,
        detected_at,
        resolution: None,
    }
}

/// A conflict record for a refused stale write (strong strategy): the refused change, and for
/// the agent whose change made the current version a reference to it (`{"version": n}`), not a
/// copy of the document.
pub fn stale_conflict(state: &ContextState, w: &Write, now_ms: u64) -> Conflict {
    let mut agent_values = BTreeMap::new();
    let last_writer = state
        .field_stamps
        .values()
        .max_by_key(|s| s.version)
        .map(|s| s.agent.clone())
        .unwrap_or_else(|| state.owner.clone());
    agent_values.insert(last_writer, json!({ "version": state.version }));
    agent_values.insert(w.agent.clone(), changes_value(&w.changes));
    conflict(
        &state.id,
        "",
        ConflictType::ConcurrentUpdate,
        ConflictSeverity::Medium,
        agent_values,
        now_ms,
    )
}

pub(super) fn changes_value(changes: &[FieldChange]) -> Value {
    let mut m = Map::new();
    for c in changes {
        m.insert(c.path.clone(), c.value.clone().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

/// Agents other than `me` whose versions after the first of `observed` changed the value at
/// `path`, each with the last value it left there and the version that holds it.
pub(super) fn rivals(
    observed: &[ContextVersion],
    me: &str,
    path: &str,
) -> BTreeMap<String, (u64, Value)> {
    let mut out = BTreeMap::new();
    for pair in observed.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let value = patch::get(&after.doc, path);
        if after.agent_id != me && patch::get(&before.doc, path) != value {
            out.insert(
                after.agent_id.clone(),
                (after.version, value.cloned().unwrap_or(Value::Null)),
            );
        }
    }
    out
}

/// Largest value a conflict record copies (bytes of JSON); a larger one that a version holds
/// is recorded as a reference to that version, `{"version": n}`.
pub const MAX_INLINE_CONFLICT_VALUE_BYTES: usize = 64 << 10;

/// `value` as a conflict record keeps it: itself, or `{"version": n}` when it is larger than
/// [`MAX_INLINE_CONFLICT_VALUE_BYTES`] and version `n` holds it.
pub(super) fn inline(value: &Value, version: u64) -> Value {
    let len = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if len <= MAX_INLINE_CONFLICT_VALUE_BYTES {
        value.clone()
    } else {
        json!({ "version": version })
    }
}
