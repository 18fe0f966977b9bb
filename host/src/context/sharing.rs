//! Sharing a context: grants, their rules, and revocation.
//!
//! The rules, checked when a grant is made or removed (and audited either way, see
//! [`super::audit`]):
//!
//! - an agent cannot share a context with itself (with or without expiry): only the owner or
//!   the operator changes what an agent holds;
//! - a sharer that is not the owner (a *delegated* share) needs `share`, grants only
//!   permissions it holds, and its grant never outlives or outranks its own: the expiry is
//!   capped at the sharer's own grant's expiry, and the trust requirement is the stricter of
//!   the one asked for and the sharer's own;
//! - a delegated sharer changes or revokes only grants it made (`Share::granted_by`); grants
//!   made by anyone else are the owner's and the operator's to change.

use super::audit::{self, AuditBudget};
use super::{
    ContextError, ContextService, ContextStatus, NewEvent, OPERATOR, OpError, Permission, Share,
    ShareResult, SharedContextInfo, TrustSource, persist,
};
use crate::audit::AuditDecision;
use crate::events::EventType;
use crate::security::TrustLevel;
use serde_json::json;

/// What a share grants (the arguments of [`ContextService::share_with_min_trust`]).
struct Grant<'a> {
    targets: &'a [String],
    permissions: &'a [Permission],
    expires_at: Option<u64>,
    min_trust: Option<TrustLevel>,
}

impl ContextService {
    /// Tells the service how to learn agents' trust levels (the host installs its registry).
    pub fn set_trust_source(&self, source: TrustSource) {
        *self.shared.trust.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Shares a context with `targets` (see the module docs for the rules). A sharer that is
    /// not the owner needs the `share` permission and can only grant permissions it holds.
    pub async fn share(
        &self,
        by: &str,
        id: &str,
        targets: &[String],
        permissions: &[Permission],
        expires_at: Option<u64>,
    ) -> Result<ShareResult, ContextError> {
        self.share_with_min_trust(by, id, targets, permissions, expires_at, None)
            .await
    }

    /// [`share`](Self::share) that also requires the agents to hold at least `min_trust` when
    /// they use the share (checked at every call, so a trust change applies at once).
    ///
    /// `expires_at` is unix ms. For a delegated share it is capped at the sharer's own grant's
    /// expiry (`None` then means "as long as mine"), and `min_trust` is raised to the sharer's
    /// own grant's requirement; the result's `expires_at` is the expiry granted. Errors:
    /// `Invalid` for an empty `targets` or `permissions`, `UnknownAgent` for an unregistered
    /// target, `AccessDenied` (recorded as an access violation) for a share to oneself, a
    /// permission the sharer does not hold, or a grant another agent made. Every grant made
    /// and every refusal is audited.
    pub async fn share_with_min_trust(
        &self,
        by: &str,
        id: &str,
        targets: &[String],
        permissions: &[Permission],
        expires_at: Option<u64>,
        min_trust: Option<TrustLevel>,
    ) -> Result<ShareResult, ContextError> {
        let grant = Grant {
            targets,
            permissions,
            expires_at,
            min_trust,
        };
        self.grant(by, id, grant, None).await
    }

    /// [`share`](Self::share) on behalf of an agent's own call: each audit entry it adds is
    /// written only when `budget` allows (the agent's per-agent bound).
    pub async fn share_within(
        &self,
        by: &str,
        id: &str,
        targets: &[String],
        permissions: &[Permission],
        expires_at: Option<u64>,
        budget: AuditBudget,
    ) -> Result<ShareResult, ContextError> {
        let grant = Grant {
            targets,
            permissions,
            expires_at,
            min_trust: None,
        };
        self.grant(by, id, grant, Some(budget)).await
    }

    async fn grant(
        &self,
        by: &str,
        id: &str,
        grant: Grant<'_>,
        budget: Option<AuditBudget>,
    ) -> Result<ShareResult, ContextError> {
        let r = self.grant_checked(by, id, grant, budget.clone()).await;
        audit::refusal(&self.shared, budget.as_ref(), (by, id, "share"), r)
    }

    async fn grant_checked(
        &self,
        by: &str,
        id: &str,
        Grant {
            targets,
            permissions,
            expires_at,
            min_trust,
        }: Grant<'_>,
        budget: Option<AuditBudget>,
    ) -> Result<ShareResult, ContextError> {
        if targets.is_empty() {
            return Err(ContextError::invalid(
                "targetAgents",
                "name at least one agent",
            ));
        }
        if permissions.is_empty() {
            return Err(ContextError::invalid(
                "permissions",
                "grant at least one of read, write, share, delete",
            ));
        }
        let (by, id, targets, permissions) = (
            by.to_string(),
            id.to_string(),
            targets.to_vec(),
            permissions.to_vec(),
        );
        self.run(Some(id.clone()), Box::new(move |sh, inner, ctx| {
            let state = Self::require(sh, inner, ctx, &by, &id, Permission::Share, "share")?;
            let now = sh.clock.now_ms();
            if by != OPERATOR && targets.contains(&by) {
                let reason = "an agent cannot share a context with itself; ask the owner or the operator to change its grant".to_string();
                return Err(Self::deny(sh, ctx, &by, "share", &id, reason));
            }
            let (mut expires, mut trust, mut capped) = (expires_at, min_trust, false);
            if by != OPERATOR && by != state.owner {
                for p in &permissions {
                    if Self::check(sh, inner, &by, &state, *p).is_err() {
                        let reason = format!("it cannot grant {p}, which it does not hold");
                        return Err(Self::deny(sh, ctx, &by, "share", &id, reason));
                    }
                }
                let shares = inner.shares.get(&id);
                if let Some(own) = shares.and_then(|m| m.get(&by)) {
                    if let Some(limit) = own.expires_at
                        && expires.is_none_or(|e| e > limit)
                    {
                        (expires, capped) = (Some(limit), true);
                    }
                    trust = trust.max(own.min_trust);
                }
                if let Some(other) = targets.iter().filter_map(|t| shares.and_then(|m| m.get(t))).find(|s| s.granted_by != by) {
                    let reason = format!(
                        "`{}` already holds a grant made by `{}`, and only the owner (`{}`) or the operator may change it; ask one of them",
                        other.agent_id, other.granted_by, state.owner
                    );
                    return Err(Self::deny(sh, ctx, &by, "share", &id, reason));
                }
            }
            if let Some(unknown) = targets.iter().find(|t| !inner.agents.contains_key(*t)) {
                return Err(OpError::Committed(ContextError::UnknownAgent(unknown.clone())));
            }
            let shares: Vec<Share> = targets.iter().map(|t| Share { context_id: id.clone(), agent_id: t.clone(), permissions: permissions.clone(), granted_by: by.clone(), granted_at: now, expires_at: expires, min_trust: trust }).collect();
            // Audited first (a place taken; recorded on commit), then stored, then applied in memory: a refusal to record changes
            // nothing, and a failed write leaves memory as the disk is.
            for t in &targets {
                let reason = if capped {
                    format!("granted to `{t}`; expiry capped at the sharer's own grant ({} ms)", expires.unwrap_or_default())
                } else {
                    format!("granted to `{t}`")
                };
                let details = json!({"target": t, "permissions": permissions, "expiresAt": expires, "requestedExpiresAt": expires_at, "expiryCapped": capped, "minTrust": trust.map(TrustLevel::as_str)});
                audit::record_on_commit(sh, ctx, budget.as_ref(), audit::entry(&by, &id, "share", AuditDecision::Record, reason).details(details))?;
            }
            let mut events = Vec::new();
            for share in &shares {
                persist::upsert_share(ctx.tx(), ctx.blobs(), share)?;
                events.push(NewEvent::new(EventType::Shared).context(&id).agent(&by).data(json!({"target": share.agent_id, "permissions": permissions, "expiresAt": expires})));
            }
            sh.bus.stage(ctx, events)?;
            for share in shares {
                inner.shares.entry(id.clone()).or_default().insert(share.agent_id.clone(), share);
            }
            Ok(ShareResult { context_id: id, shared_with: targets, permissions, shared_at: now, expires_at: expires })
        }))
        .await
    }

    /// Revokes the grants of `targets`. The owner and the operator revoke any grant; a sharer
    /// that is not the owner needs `share` and revokes only grants it made (`AccessDenied`
    /// otherwise, naming who made the grant). Every removed grant and every refusal is audited.
    pub async fn revoke(&self, by: &str, id: &str, targets: &[String]) -> Result<(), ContextError> {
        let r = self.ungrant(by, id, targets, None).await;
        audit::refusal(&self.shared, None, (by, id, "revoke"), r)
    }

    /// [`revoke`](Self::revoke) on behalf of an agent's own call: each audit entry it adds is
    /// written only when `budget` allows (the agent's per-agent bound).
    pub async fn revoke_within(
        &self,
        by: &str,
        id: &str,
        targets: &[String],
        budget: AuditBudget,
    ) -> Result<(), ContextError> {
        let r = self.ungrant(by, id, targets, Some(budget.clone())).await;
        audit::refusal(&self.shared, Some(&budget), (by, id, "revoke"), r)
    }

    async fn ungrant(
        &self,
        by: &str,
        id: &str,
        targets: &[String],
        budget: Option<AuditBudget>,
    ) -> Result<(), ContextError> {
        let (by, id, targets) = (by.to_string(), id.to_string(), targets.to_vec());
        self.run(
            Some(id.clone()),
            Box::new(move |sh, inner, ctx| {
                let state = Self::require(
                    sh,
                    inner,
                    ctx,
                    &by,
                    &id,
                    Permission::Share,
                    "revoke sharing of",
                )?;
                let shares = inner.shares.get(&id);
                if by != OPERATOR
                    && by != state.owner
                    && let Some(other) = targets
                        .iter()
                        .filter_map(|t| shares.and_then(|m| m.get(t)))
                        .find(|s| s.granted_by != by)
                {
                    let reason = format!(
                        "it may revoke only grants it made; the grant of `{}` was made by `{}`: ask the owner (`{}`) or the operator",
                        other.agent_id, other.granted_by, state.owner
                    );
                    return Err(Self::deny(
                        sh,
                        ctx,
                        &by,
                        "revoke sharing of",
                        &id,
                        reason,
                    ));
                }
                // Audited first, then stored, then applied in memory.
                for t in &targets {
                    let held = inner.shares.get(&id).and_then(|m| m.get(t));
                    let reason = format!("grant of `{t}` revoked");
                    let details = json!({"target": t, "held": held.is_some(),
                                         "grantedBy": held.map(|s| &s.granted_by)});
                    let entry = audit::entry(&by, &id, "revoke", AuditDecision::Record, reason);
                    audit::record_on_commit(sh, ctx, budget.as_ref(), entry.details(details))?;
                }
                let mut events = Vec::new();
                for t in &targets {
                    persist::delete_share(ctx.tx(), ctx.blobs(), &id, t)?;
                    events.push(
                        NewEvent::new(EventType::Revoked)
                            .context(&id)
                            .agent(&by)
                            .data(json!({"target": t})),
                    );
                }
                sh.bus.stage(ctx, events)?;
                if let Some(m) = inner.shares.get_mut(&id) {
                    for t in &targets {
                        m.remove(t);
                    }
                }
                Ok(())
            }),
        )
        .await
    }

    /// The grants of context `id` (live or expired), sorted by agent: what the operator sees.
    pub fn grants(&self, id: &str) -> Vec<Share> {
        let inner = self.shared.committed();
        inner
            .shares
            .get(id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Contexts shared with `agent` (live, unexpired shares), sorted by id.
    pub fn shared_contexts(&self, agent: &str) -> Vec<SharedContextInfo> {
        let inner = self.shared.committed();
        let now = self.shared.clock.now_ms();
        let mut out: Vec<SharedContextInfo> = inner
            .shares
            .iter()
            .filter_map(|(cid, m)| m.get(agent).map(|s| (cid, s)))
            .filter(|(_, s)| s.expires_at.is_none_or(|e| now < e))
            .filter_map(|(cid, s)| {
                let c = inner.contexts.get(cid)?;
                Some(SharedContextInfo {
                    context_id: cid.clone(),
                    owner_id: c.owner.clone(),
                    permissions: s.permissions.clone(),
                    shared_at: s.granted_at,
                    expires_at: s.expires_at,
                    version: c.version,
                    sync_status: if c.status == ContextStatus::Conflict {
                        "conflict"
                    } else {
                        "synced"
                    }
                    .into(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.context_id.cmp(&b.context_id));
        out
    }
}
