//! Who may do what with a context: the owner, the operator, and agents holding a live share
//! (permission, expiry, trust requirement), subject to their registration and capabilities. A
//! refusal is recorded as an access-violation conflict and event.

use super::{
    AgentConnection, ConflictSeverity, ConflictType, ContextError, ContextService, ContextState,
    ContextStatus, Inner, OPERATOR, OpError, Permission, Shared, engine,
};
use crate::store::WriteCtx;
use serde_json::json;
use std::collections::BTreeMap;

impl ContextService {
    /// Whether `agent` holds `perm` on `state` now; `Err` says why not (recorded nowhere).
    pub(super) fn check(
        sh: &Shared,
        inner: &Inner,
        agent: &str,
        state: &ContextState,
        perm: Permission,
    ) -> Result<(), String> {
        if agent == OPERATOR {
            return Ok(());
        }
        let now = sh.clock.now_ms();
        let reg = inner
            .agents
            .get(agent)
            .ok_or("the agent is not registered")?;
        if reg.status == AgentConnection::Disconnected
            || now.saturating_sub(reg.last_heartbeat) > sh.config.heartbeat_timeout_ms
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
        match inner.shares.get(&state.id).and_then(|m| m.get(agent)) {
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

    /// Looks a live context up and checks that `agent` holds `permission` for `operation`; a
    /// refusal is recorded (and commits: [`OpError::Committed`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn authorized(
        sh: &Shared,
        inner: &Inner,
        ctx: &mut WriteCtx<'_>,
        agent: &str,
        id: &str,
        permission: Permission,
        operation: &str,
    ) -> Result<ContextState, OpError> {
        let Some(state) = inner
            .contexts
            .get(id)
            .filter(|c| c.status != ContextStatus::Deleted)
        else {
            return Err(OpError::Committed(ContextError::NotFound(id.to_string())));
        };
        match Self::check(sh, inner, agent, state, permission) {
            Ok(()) => Ok(state.clone()),
            Err(reason) => Err(Self::deny(sh, ctx, agent, operation, id, reason)),
        }
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
        match Self::record_denial(sh, ctx, agent, operation, context, reason) {
            Ok(e) => OpError::Committed(e),
            Err(e) => OpError::RolledBack(e),
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

    /// Whether `agent` holds `permission` on context `id` right now (nothing is recorded).
    pub fn allowed(
        &self,
        agent: &str,
        id: &str,
        permission: Permission,
    ) -> Result<(), ContextError> {
        let inner = self.shared.lock();
        let state = inner
            .contexts
            .get(id)
            .ok_or_else(|| ContextError::NotFound(id.to_string()))?;
        Self::check(&self.shared, &inner, agent, state, permission).map_err(|reason| {
            ContextError::AccessDenied {
                agent: agent.to_string(),
                operation: permission.to_string(),
                context: id.to_string(),
                reason,
            }
        })
    }

    /// Checks that `agent` holds `permission` on context `id` for `operation`; a refusal is
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
