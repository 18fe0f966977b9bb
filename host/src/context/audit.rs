//! The context store's audit trail: every grant change (share, revoke, an expiry capped at the
//! sharer's own, grants removed with an agent, labels set) and every refused share, revoke or
//! label change is appended to the host's audit log, through [`record`] (or [`record_on_commit`] inside an operation) alone.

use super::{ContextError, ContextService, Shared};
use crate::audit::{AuditDecision, AuditLog, NewAuditEntry};
use crate::store::WriteCtx;
use std::sync::Arc;

/// Asked before each entry an agent's own call adds to the audit log: true when it may be
/// written (the host passes the agent's per-agent bound,
/// [`MAX_AUDIT_ENTRIES_PER_AGENT`](crate::interfaces::limits::MAX_AUDIT_ENTRIES_PER_AGENT); past it the
/// entry is dropped and counted in the agent's receipt).
pub type AuditBudget = Arc<dyn Fn() -> bool + Send + Sync>;

impl ContextService {
    /// Attaches the host's audit log: from now on every grant change and every refused share,
    /// revoke or label change made through this service (by agents or by the operator) appends
    /// an entry on `context/<id>` (operations `share`, `revoke`, `label`, `unregister`; decision
    /// `record` for a change, `deny` for a refusal). Without one nothing is recorded.
    pub fn set_audit(&self, audit: AuditLog) {
        *self.shared.audit.write().unwrap_or_else(|p| p.into_inner()) = Some(audit);
    }
}

/// An entry by `agent` about context `context`.
pub(super) fn entry(
    agent: &str,
    context: &str,
    operation: &str,
    decision: AuditDecision,
    reason: impl Into<String>,
) -> NewAuditEntry {
    NewAuditEntry::new(
        agent,
        format!("context/{context}"),
        operation,
        decision,
        reason,
    )
}

/// Appends `entry` to the audit log, when one is attached and `budget` (the calling agent's,
/// `None` for the operator and host code) lets it.
///
/// Returns `Err` when the entry could not be recorded, and the caller then refuses the call
/// (fail-closed): [`AuditLog::record`] fails when its bounded queue is full or its writer has
/// failed.
pub(super) fn record(
    sh: &Shared,
    budget: Option<&AuditBudget>,
    entry: NewAuditEntry,
) -> Result<(), ContextError> {
    let audit = sh.audit.read().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = audit.as_ref()
        && budget.is_none_or(|may| may())
    {
        a.record(entry)?;
    }
    Ok(())
}

/// [`record`] for a change made by an operation: the place in the audit queue is taken now
/// (a log that cannot take the entry refuses the operation), and the entry is recorded once
/// the operation's transaction has committed, so that the log names no change that never
/// happened.
pub(super) fn record_on_commit(
    sh: &Shared,
    ctx: &mut WriteCtx<'_>,
    budget: Option<&AuditBudget>,
    entry: NewAuditEntry,
) -> Result<(), ContextError> {
    let audit = sh.audit.read().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = audit.as_ref()
        && budget.is_none_or(|may| may())
    {
        let permit = a.reserve()?;
        ctx.after_commit(move || permit.record(entry));
    }
    Ok(())
}

/// Records a refused call (`decision = deny`) when `result` is a refusal (not a store or event
/// bus failure), and hands `result` back; a failure to record replaces it.
pub(super) fn refusal<T>(
    sh: &Shared,
    budget: Option<&AuditBudget>,
    (agent, context, operation): (&str, &str, &str),
    result: Result<T, ContextError>,
) -> Result<T, ContextError> {
    match &result {
        Ok(_)
        | Err(
            ContextError::Store(_) | ContextError::Events(_) | ContextError::AuditUnavailable(_),
        ) => {}
        Err(e) => record(
            sh,
            budget,
            entry(
                agent,
                context,
                operation,
                AuditDecision::Deny,
                e.to_string(),
            ),
        )?,
    }
    result
}
