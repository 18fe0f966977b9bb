//! Who may do what with a context: the owner, the operator, and agents holding a live share
//! (permission, expiry, trust requirement), subject to their registration and capabilities. A
//! refusal is recorded as an access-violation conflict and event.

use super::hot::Committed;
use super::{
    AgentConnection, AgentRegistration, ConflictSeverity, ConflictType, ContextError,
    ContextService, ContextState, ContextStatus, Inner, OPERATOR, OpError, Permission, Share,
    Shared, engine,
};
use crate::store::WriteCtx;
use serde_json::json;
use std::collections::BTreeMap;

/// What an access decision reads: the committed tier (readers) or an operation's view of it
/// ([`Inner`]: committed with the batch's staged changes).
pub(super) trait Lookup {
    /// Context `id`, maybe without its document (metadata is all a decision needs).
    fn context(&self, id: &str) -> Option<&ContextState>;
    /// Agent `id`'s registration.
    fn agent(&self, id: &str) -> Option<&AgentRegistration>;
    /// `agent`'s grant on context `context`.
    fn share(&self, context: &str, agent: &str) -> Option<&Share>;
}

impl Lookup for Committed {
    fn context(&self, id: &str) -> Option<&ContextState> {
        self.contexts.get(id)
    }
    fn agent(&self, id: &str) -> Option<&AgentRegistration> {
        self.agents.get(id)
    }
    fn share(&self, context: &str, agent: &str) -> Option<&Share> {
        self.shares.get(context).and_then(|m| m.get(agent))
    }
}

impl Lookup for Inner<'_> {
    fn context(&self, id: &str) -> Option<&ContextState> {
        self.contexts.get(id)
    }
    fn agent(&self, id: &str) -> Option<&AgentRegistration> {
        self.agents.get(id)
    }
    fn share(&self, context: &str, agent: &str) -> Option<&Share> {
        self.shares.get(context).and_then(|m| m.get(agent))
    }
}

/// Why [`ContextService::look_up`] refused.
enum Refused {
    NotFound,
    Denied(String),
}

/// Access is decided in one place, [`check`](ContextService::check); the other functions
/// here look the context up, record refusals, or both:
///
/// | function | where | context | a refusal is |
/// |---|---|---|---|
/// | `check` | anywhere | given | returned as the reason |
/// | `require` | in an operation | live, looked up | recorded, `OpError::Committed` |
/// | `allowed` | outside (committed state) | any, looked up | returned, not recorded |
/// | `authorize` | outside (committed state) | any, looked up | recorded, returned |
/// | `deny` | in an operation | — | recorded (the refusal itself) |
impl ContextService {
    /// The access decision: whether `agent` holds `perm` on `state` now (registered and
    /// connected, capabilities, owner or a live share, trust); `Err` says why not. Records
    /// nothing.
    pub(super) fn check(
        sh: &Shared,
        inner: &impl Lookup,
        agent: &str,
        state: &ContextState,
        perm: Permission,
    ) -> Result<(), String> {
        if agent == OPERATOR {
            return Ok(());
        }
        let now = sh.clock.now_ms();
        let reg = inner.agent(agent).ok_or("the agent is not registered")?;
        if reg.status == AgentConnection::Disconnected
            || (now.saturating_sub(sh.last_alive(reg)) > sh.config.heartbeat_timeout_ms
                && !sh.is_present(agent))
        {
            return Err("the agent is disconnected (no heartbeat); send a heartbeat first".into());
        }
        let caps = &reg.capabilities;
        let allowed = match perm {
            Permission::Read => caps.can_read,
            Permission::Write | Permission::Delete => caps.can_write,
            Permission::Share => caps.can_share,
        };
        if !allowed {
            return Err(format!("its capabilities do not include {perm}"));
        }
        if !caps.supported_context_types.is_empty()
            && !caps.supported_context_types.contains(&state.context_type)
        {
            return Err(format!(
                "it does not support context type `{}`",
                state.context_type
            ));
        }
        if state.owner == agent {
            return Ok(());
        }
        match inner.share(&state.id, agent) {
            None => Err("the context is not shared with it".into()),
            Some(s) if s.expires_at.is_some_and(|e| now >= e) => Err(format!(
                "its share expired at {}",
                s.expires_at.unwrap_or_default()
            )),
            Some(s) if !s.grants(perm, now) => Err(format!("its share does not grant {perm}")),
            Some(s) if s.min_trust.is_some() => {
                let need = s.min_trust.unwrap_or_default();
                let has = sh
                    .trust
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .and_then(|f| f(agent))
                    .unwrap_or(crate::security::TrustLevel::None);
                if has >= need {
                    Ok(())
                } else {
                    Err(format!(
                        "its share requires trust level {} and it has {}",
                        need.as_str(),
                        has.as_str()
                    ))
                }
            }
            Some(_) => Ok(()),
        }
    }

    /// In an operation: looks live context `id` up and [`check`](Self::check)s `agent`
    /// against it; a refusal is recorded (access-violation conflict and event) and commits
    /// ([`OpError::Committed`]), as does `NotFound` for an unknown or deleted context.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn require(
        sh: &Shared,
        inner: &Inner,
        ctx: &mut WriteCtx<'_>,
        agent: &str,
        id: &str,
        permission: Permission,
        operation: &str,
    ) -> Result<ContextState, OpError> {
        match Self::look_up(sh, inner, agent, id, permission, true) {
            Ok(state) => Ok(state.clone()),
            Err(Refused::NotFound) => Err(OpError::Committed(ContextError::NotFound(id.into()))),
            Err(Refused::Denied(reason)) => Err(Self::deny(sh, ctx, agent, operation, id, reason)),
        }
    }

    /// Looks context `id` up (only a live one with `live`) and checks `agent` against it.
    fn look_up<'i>(
        sh: &Shared,
        inner: &'i impl Lookup,
        agent: &str,
        id: &str,
        permission: Permission,
        live: bool,
    ) -> Result<&'i ContextState, Refused> {
        let state = inner
            .context(id)
            .filter(|c| !live || c.status != ContextStatus::Deleted)
            .ok_or(Refused::NotFound)?;
        Self::check(sh, inner, agent, state, permission).map_err(Refused::Denied)?;
        Ok(state)
    }

    /// Records an access violation (conflict row + event) and returns the error to report:
    /// [`OpError::Committed`], or [`OpError::RolledBack`] when recording it failed.
    pub(super) fn deny(
        sh: &Shared,
        ctx: &mut WriteCtx<'_>,
        agent: &str,
        operation: &str,
        context: &str,
        reason: String,
    ) -> OpError {
        let denied = || ContextError::AccessDenied {
            agent: agent.to_string(),
            operation: operation.to_string(),
            context: context.to_string(),
            reason: reason.clone(),
        };
        // A record that fails half-way is rolled back alone.
        if let Err(e) = ctx.guard() {
            tracing::warn!(agent, operation, context, error = %e, "a context access denial could not be recorded");
            return OpError::RolledBack(denied());
        }
        match Self::record_denial(sh, ctx, agent, operation, context, reason.clone()) {
            Ok(e) => OpError::Committed(e),
            // Still a refusal: the caller learns nothing of why the record failed (a context
            // from before encryption has no data key to seal the record with until its
            // owner's next write; a denial never gives it one, which would let a refused
            // agent make the writer reseal a context's history).
            Err(e) => {
                tracing::warn!(agent, operation, context, error = %e, "a context access denial could not be recorded");
                OpError::RolledBack(denied())
            }
        }
    }

    fn record_denial(
        sh: &Shared,
        ctx: &mut WriteCtx<'_>,
        agent: &str,
        operation: &str,
        context: &str,
        reason: String,
    ) -> Result<ContextError, ContextError> {
        let mut values = BTreeMap::new();
        values.insert(
            agent.to_string(),
            json!({"operation": operation, "reason": reason}),
        );
        let conflict = engine::conflict(
            context,
            "",
            ConflictType::AccessViolation,
            ConflictSeverity::High,
            values,
            sh.clock.now_ms(),
        );
        Self::record_conflicts(sh, ctx, agent, &mut [conflict])?;
        tracing::info!(agent, operation, context, %reason, "context access denied");
        Ok(ContextError::AccessDenied {
            agent: agent.to_string(),
            operation: operation.to_string(),
            context: context.to_string(),
            reason,
        })
    }

    /// Whether `agent` holds `permission` on context `id` (deleted ones included: their
    /// history stays readable) in the committed state, right now. Nothing is recorded.
    /// Errors: `NotFound`, or `AccessDenied` saying why (operation: the permission's name).
    pub fn allowed(
        &self,
        agent: &str,
        id: &str,
        permission: Permission,
    ) -> Result<(), ContextError> {
        let inner = self.shared.committed();
        match Self::look_up(&self.shared, &*inner, agent, id, permission, false) {
            Ok(_) => Ok(()),
            Err(Refused::NotFound) => Err(ContextError::NotFound(id.to_string())),
            Err(Refused::Denied(reason)) => Err(ContextError::AccessDenied {
                agent: agent.to_string(),
                operation: permission.to_string(),
                context: id.to_string(),
                reason,
            }),
        }
    }

    /// [`allowed`](Self::allowed) again, after reading from the store what it allowed: a
    /// revoke that committed while the read waited for a connection refuses the answer.
    /// `newest`: the highest revision the read returned; the decision waits until the hot
    /// tier has published it (a change the store holds but readers do not see yet may follow
    /// a revoke they do not see yet either).
    pub(super) async fn still_allowed(
        &self,
        agent: &str,
        id: &str,
        permission: Permission,
        newest: Option<u64>,
    ) -> Result<(), ContextError> {
        if newest.is_some_and(|r| r > self.shared.committed().revision) {
            self.published().await?;
        }
        self.allowed(agent, id, permission)
    }

    /// [`allowed`](Self::allowed) for `operation`, outside an operation; a refusal is
    /// recorded like every other (access-violation conflict and event) and returned.
    pub async fn authorize(
        &self,
        agent: &str,
        id: &str,
        permission: Permission,
        operation: &str,
    ) -> Result<(), ContextError> {
        match self.allowed(agent, id, permission) {
            Ok(()) => Ok(()),
            Err(ContextError::AccessDenied { reason, .. }) => {
                let (agent, id, operation) =
                    (agent.to_string(), id.to_string(), operation.to_string());
                self.run(
                    None,
                    Box::new(move |sh, _inner, ctx| {
                        Err(Self::deny(sh, ctx, &agent, &operation, &id, reason))
                    }),
                )
                .await
            }
            Err(e) => Err(e),
        }
    }
}
