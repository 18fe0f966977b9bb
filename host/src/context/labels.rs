//! Host-kept labels of a context: what access policies see as `resource.labels`.
//!
//! Labels are metadata the host keeps beside the document (table `context_labels`), set by the
//! host-side creator in [`NewContext::labels`](super::NewContext::labels) or by the operator
//! with [`ContextService::set_labels`] (`qi-host context label ID LABEL...`). They are never
//! read from the document, so an agent that may write a context cannot relabel it to pass a
//! policy. Every change is audited like a grant change (operation `label`).

use super::audit;
use super::{ContextError, ContextService, ContextStatus, OPERATOR, OpError};
use crate::audit::AuditDecision;
use crate::store::StoreError;
use rusqlite::Connection;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// Most labels one context may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;

/// Checks `labels` (each 1-[`MAX_LABEL_BYTES`] bytes of ASCII letters, digits, `-`, `_`, `.`,
/// `:`; at most [`MAX_LABELS`]) and returns them sorted, without duplicates. The error names
/// the field `labels` and the offending label.
pub fn validate(labels: &[String]) -> Result<Vec<String>, ContextError> {
    let mut out: Vec<String> = labels.to_vec();
    out.sort();
    out.dedup();
    if out.len() > MAX_LABELS {
        return Err(ContextError::invalid(
            "labels",
            format!(
                "{} labels given, at most {MAX_LABELS} are allowed; drop some",
                out.len()
            ),
        ));
    }
    for l in &out {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
        if l.is_empty() || l.len() > MAX_LABEL_BYTES || !l.chars().all(ok_char) {
            return Err(ContextError::invalid(
                "labels",
                format!(
                    "`{l}` is not a label: use 1-{MAX_LABEL_BYTES} ASCII letters, digits, `-`, `_`, `.` or `:`"
                ),
            ));
        }
    }
    Ok(out)
}

/// Stores the labels of `id` (an empty list removes the row).
pub(super) fn save(
    tx: &Connection,
    id: &str,
    labels: &[String],
    by: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    if labels.is_empty() {
        tx.execute("DELETE FROM context_labels WHERE context_id = ?1", [id])?;
    } else {
        let text = serde_json::to_string(labels).unwrap_or_else(|_| "[]".into());
        tx.execute(
            "INSERT OR REPLACE INTO context_labels (context_id, labels, set_by, set_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![id, text, by, now_ms as i64],
        )?;
    }
    Ok(())
}

/// Every context's labels. A row that is not a JSON list of strings is an error naming it.
pub(super) fn load_all(conn: &Connection) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let mut stmt = conn.prepare("SELECT context_id, labels FROM context_labels")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (id, text) = row?;
        let labels: Vec<String> = serde_json::from_str(&text).map_err(|e| {
            StoreError::CorruptRow(format!(
                "context_labels row of `{id}` is not a JSON list of strings: {e}"
            ))
        })?;
        out.insert(id, labels);
    }
    Ok(out)
}

impl ContextService {
    /// A context's type, owner and host-kept labels (see the module docs), for access
    /// policies; read from memory, recorded nowhere. `None` when there is no such context.
    pub fn attributes(&self, id: &str) -> Option<(String, String, Vec<String>)> {
        let inner = self.shared.committed();
        let c = inner.contexts.get(id)?;
        let labels = inner.labels.get(id).cloned().unwrap_or_default();
        Some((c.context_type.clone(), c.owner.clone(), labels))
    }

    /// The host-kept labels of context `id` (empty when none were set), or `None` when there is
    /// no such context.
    pub fn labels(&self, id: &str) -> Option<Vec<String>> {
        let inner = self.shared.committed();
        inner.contexts.get(id)?;
        Some(inner.labels.get(id).cloned().unwrap_or_default())
    }

    /// Counts committed changes to what [`attributes`](Self::attributes) returns for any
    /// context (a context created or deleted, its type or owner changed, its labels set)
    /// since the service opened: a caller that cached an access decision made on a context's
    /// attributes decides again when this moved.
    pub fn attributes_generation(&self) -> u64 {
        self.shared.attributes_generation.load(Ordering::Acquire)
    }

    /// Replaces the labels of context `id` with `labels` (validated by [`validate`]; an empty
    /// list clears them) and returns them as stored. Only the operator may relabel a context:
    /// anyone else is refused with `AccessDenied`. Persisted, and audited (operation `label`)
    /// whether it succeeds or is refused. Errors: `NotFound` for an unknown or deleted context,
    /// `Invalid` (field `labels`) for a bad label.
    pub async fn set_labels(
        &self,
        by: &str,
        id: &str,
        labels: &[String],
    ) -> Result<Vec<String>, ContextError> {
        let r = self.relabel(by, id, labels).await;
        audit::refusal(&self.shared, None, (by, id, "label"), r)
    }

    async fn relabel(
        &self,
        by: &str,
        id: &str,
        labels: &[String],
    ) -> Result<Vec<String>, ContextError> {
        let labels = validate(labels)?;
        if by != OPERATOR {
            return Err(ContextError::AccessDenied {
                agent: by.to_string(),
                operation: "label".into(),
                context: id.to_string(),
                reason: "only the operator sets a context's labels; ask the operator to run \
                         `qi-host context label`"
                    .into(),
            });
        }
        let (by, id) = (by.to_string(), id.to_string());
        self.run(
            Some(id.clone()),
            Box::new(move |sh, inner, ctx| {
                if !inner
                    .contexts
                    .get(&id)
                    .is_some_and(|c| c.status != ContextStatus::Deleted)
                {
                    return Err(OpError::Committed(ContextError::NotFound(id)));
                }
                let before = inner.labels.get(&id).cloned().unwrap_or_default();
                audit::record_on_commit(
                    sh,
                    ctx,
                    None,
                    audit::entry(
                        &by,
                        &id,
                        "label",
                        AuditDecision::Record,
                        format!("labels now: [{}]", labels.join(", ")),
                    )
                    .details(json!({"before": before, "after": labels})),
                )?;
                save(ctx.tx(), &id, &labels, &by, sh.clock.now_ms())?;
                if labels.is_empty() {
                    inner.labels.remove(&id);
                } else {
                    inner.labels.insert(id, labels.clone());
                }
                Ok(labels)
            }),
        )
        .await
    }
}
