//! `qi:agent/context`: the shared, versioned context store, as the agent's host-assigned id.

mod changes;

pub use changes::{MAX_HISTORY_VERSIONS, MAX_POINTER_OPS};

use super::AgentState;
use super::limits::{self, MAX_DOCUMENT_BYTES, MAX_SHARE_AGENTS, MAX_SHARE_PERMISSIONS};
use super::qi;
use crate::context::{
    Change, ContextError, ContextService, NewContext, Permission, Refusal, SyncStrategy,
};
use crate::sandbox::AgentShared;
use qi::agent::context::{
    ContextError as WitContextError, Document, PointerOp as WitPointerOp,
    ResolveChoice as WitResolveChoice, SyncSummary, VersionInfo, WriteResult as WitWriteResult,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};

/// Adds `qi:agent/context` to `linker`.
pub fn add_to_linker(linker: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    qi::agent::context::add_to_linker::<AgentState, HasSelf<AgentState>>(linker, |s| s)
}

pub(super) fn context_error(e: ContextError) -> WitContextError {
    match e {
        ContextError::AccessDenied { .. } => WitContextError::AccessDenied(e.to_string()),
        ContextError::UnknownAgent(_) => WitContextError::Invalid(e.to_string()),
        ContextError::NotFound(_) => WitContextError::NotFound(e.to_string()),
        ContextError::Refused {
            refusal: Refusal::Stale { current, .. },
            ..
        } => WitContextError::Stale(current),
        ContextError::Refused { .. }
        | ContextError::AlreadyExists(_)
        | ContextError::ReplicaChanged { .. }
        | ContextError::AuditUnavailable(_) => WitContextError::Refused(e.to_string()),
        ContextError::Invalid { .. } => WitContextError::Invalid(e.to_string()),
        ContextError::Store(_) | ContextError::Cluster { .. } | ContextError::Events(_) => {
            WitContextError::Failed(e.to_string())
        }
    }
}

/// [`context_error`] for a call the context store decided: a refusal by its sharing rules
/// (`AccessDenied`) is audited like a gate refusal (`deny` of `context/<id>`, within the
/// agent's per-agent bound). Not for `share` and `revoke`, whose refusals the store audits.
pub(super) fn decided(shared: &AgentShared, e: ContextError) -> WitContextError {
    if let ContextError::AccessDenied {
        context,
        operation,
        reason,
        ..
    } = &e
        && let Err(unrecorded) = shared.record_decision(
            "context",
            context,
            operation,
            crate::audit::AuditDecision::Deny,
            reason,
        )
    {
        return WitContextError::AccessDenied(format!("{e} ({unrecorded})"));
    }
    context_error(e)
}

fn parse_json(field: &str, text: &str) -> Result<serde_json::Value, WitContextError> {
    serde_json::from_str(text)
        .map_err(|e| WitContextError::Invalid(format!("`{field}` is not JSON: {e}")))
}

fn refused(r: limits::ArgumentRefusal) -> WitContextError {
    WitContextError::Invalid(r.into_message())
}

fn write_result(r: crate::context::WriteResult) -> WitWriteResult {
    WitWriteResult {
        id: r.context_id,
        version: r.version,
        new_version: r.new_version,
        conflicts: serde_json::to_string(&r.conflicts).unwrap_or_else(|_| "[]".into()),
    }
}

/// The agent's per-agent audit bound, for the entries the context store adds for its calls.
/// Admits a write of `bytes` by the agent to context `id`: the per-agent quotas
/// (`maxContextWrites`, `maxContextBytes`), then the access gate for `action`; then drops the
/// agent's cached copy of the context, which the write makes stale.
pub(super) async fn admit_write(
    shared: &AgentShared,
    call: &str,
    id: &str,
    action: &str,
    bytes: usize,
) -> Result<(), WitContextError> {
    shared
        .take_context_write(call, bytes)
        .map_err(WitContextError::Refused)?;
    shared
        .gate("context", id, action)
        .map_err(WitContextError::AccessDenied)?;
    shared.context_cache.invalidate(id).await;
    Ok(())
}

/// The guest's answer to a write that sent `sent` bytes; a document stored beyond them (a
/// small patch of a large document) is charged to the quotas.
pub(super) fn written(
    shared: &AgentShared,
    sent: usize,
    r: Result<crate::context::WriteResult, ContextError>,
) -> Result<WitWriteResult, WitContextError> {
    match r {
        Ok(r) => {
            shared.charge_context_stored(sent, &r);
            Ok(write_result(r))
        }
        Err(e) => Err(decided(shared, e)),
    }
}

fn audit_budget(shared: &Arc<AgentShared>) -> crate::context::AuditBudget {
    let shared = shared.clone();
    Arc::new(move || shared.take_audit_entry())
}

/// The context store and the agent's identity in it, counting the call.
pub(super) async fn context_call(
    shared: &Arc<AgentShared>,
    call: &str,
) -> Result<(ContextService, String), WitContextError> {
    {
        let seen = shared.count_host_call();
        let svc = shared.context.clone().ok_or_else(|| {
            WitContextError::Failed(format!("{call}: this host has no context store attached"))
        })?;
        let id = shared.id.clone();
        // Counting the call was the heartbeat; a disconnected agent reconnects (a write).
        if !seen {
            svc.touch(&id).await.map_err(context_error)?;
        }
        Ok((svc, id))
    }
}

impl AgentState {
    fn finish_context<T>(
        &self,
        call: &str,
        target: &str,
        arg_bytes: usize,
        start: Instant,
        r: &Result<T, WitContextError>,
    ) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(WitContextError::AccessDenied(_)) => {
                self.shared
                    .counters
                    .access_denied
                    .fetch_add(1, Ordering::Relaxed);
                "access-denied"
            }
            Err(WitContextError::NotFound(_)) => "not-found",
            Err(WitContextError::Stale(_)) => "stale",
            Err(WitContextError::Refused(_)) => "refused",
            Err(WitContextError::Invalid(_)) => "invalid",
            Err(WitContextError::Failed(_)) => "failed",
        };
        self.shared
            .record_call(call, target, arg_bytes, start, outcome);
    }
}

impl qi::agent::context::Host for AgentState {
    async fn create(
        &mut self,
        id: Option<String>,
        context_type: String,
        doc: String,
        strategy: qi::agent::context::SyncStrategy,
    ) -> Result<WitWriteResult, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let bytes = doc.len() + context_type.len();
        let r = async {
            let (svc, me) = context_call(&shared, "context.create").await?;
            let call = "context.create";
            limits::ids(&shared, call, "id", id.iter()).map_err(refused)?;
            limits::bytes(
                &shared,
                call,
                "context-type",
                &context_type,
                limits::MAX_ID_BYTES,
            )
            .map_err(refused)?;
            limits::bytes(&shared, call, "doc", &doc, MAX_DOCUMENT_BYTES).map_err(refused)?;
            limits::stored(&shared, call, "doc", doc.len() + context_type.len(), 1)
                .map_err(refused)?;
            shared
                .take_context_write(call, doc.len() + context_type.len())
                .map_err(WitContextError::Refused)?;
            shared
                .gate("context", id.as_deref().unwrap_or("*"), "create")
                .map_err(WitContextError::AccessDenied)?;
            let doc = parse_json("doc", &doc)?;
            let strategy = match strategy {
                qi::agent::context::SyncStrategy::Strong => SyncStrategy::Strong,
                qi::agent::context::SyncStrategy::Eventual => SyncStrategy::Eventual,
                qi::agent::context::SyncStrategy::Causal => SyncStrategy::Causal,
                qi::agent::context::SyncStrategy::Manual => SyncStrategy::Manual,
            };
            let resolution = if strategy == SyncStrategy::Causal {
                crate::context::ConflictResolution::Merge
            } else {
                crate::context::ConflictResolution::LastWriteWins
            };
            svc.create(
                &me,
                NewContext {
                    id,
                    context_type,
                    doc,
                    strategy,
                    resolution,
                    ..Default::default()
                },
            )
            .await
            .map(write_result)
            .map_err(|e| decided(&shared, e))
        }
        .await;
        self.finish_context("context.create", "", bytes, start, &r);
        r
    }

    async fn get(&mut self, id: String) -> Result<Document, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "context.get").await?;
            limits::ids(&shared, "context.get", "id", [&id])
                // A read is recorded as an `accessed` event: one stored row.
                .and_then(|()| limits::stored(&shared, "context.get", "id", 0, 1))
                .map_err(refused)?;
            shared
                .gate("context", &id, "get")
                .map_err(WitContextError::AccessDenied)?;
            super::context_cache::read(&shared, &svc, &me, &id).await
        }
        .await;
        self.finish_context("context.get", &id, id.len(), start, &r);
        r
    }

    async fn put(
        &mut self,
        id: String,
        doc: String,
        base_version: Option<u64>,
    ) -> Result<WitWriteResult, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let bytes = doc.len();
        let r = async {
            let (svc, me) = context_call(&shared, "context.put").await?;
            limits::ids(&shared, "context.put", "id", [&id]).map_err(refused)?;
            limits::bytes(&shared, "context.put", "doc", &doc, MAX_DOCUMENT_BYTES)
                .and_then(|()| limits::stored(&shared, "context.put", "doc", doc.len(), 1))
                .map_err(refused)?;
            admit_write(&shared, "context.put", &id, "put", bytes).await?;
            let doc = parse_json("doc", &doc)?;
            let r = svc.write(&me, &id, Change::Put(doc), base_version).await;
            written(&shared, bytes, r)
        }
        .await;
        self.finish_context("context.put", &id, bytes, start, &r);
        r
    }

    async fn patch(
        &mut self,
        id: String,
        merge_patch: String,
        base_version: Option<u64>,
    ) -> Result<WitWriteResult, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let bytes = merge_patch.len();
        let r = async {
            let (svc, me) = context_call(&shared, "context.patch").await?;
            let call = "context.patch";
            limits::ids(&shared, call, "id", [&id]).map_err(refused)?;
            limits::bytes(
                &shared,
                call,
                "merge-patch",
                &merge_patch,
                MAX_DOCUMENT_BYTES,
            )
            .and_then(|()| limits::stored(&shared, call, "merge-patch", merge_patch.len(), 1))
            .map_err(refused)?;
            admit_write(&shared, call, &id, "patch", bytes).await?;
            let patch = parse_json("merge-patch", &merge_patch)?;
            let r = svc
                .write(&me, &id, Change::Merge(patch), base_version)
                .await;
            written(&shared, bytes, r)
        }
        .await;
        self.finish_context("context.patch", &id, bytes, start, &r);
        r
    }

    async fn delete(&mut self, id: String) -> Result<(), WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "context.delete").await?;
            limits::ids(&shared, "context.delete", "id", [&id])
                .and_then(|()| limits::stored(&shared, "context.delete", "id", 0, 1))
                .map_err(refused)?;
            admit_write(&shared, "context.delete", &id, "delete", 0).await?;
            svc.delete(&me, &id)
                .await
                .map(|_| ())
                .map_err(|e| decided(&shared, e))
        }
        .await;
        self.finish_context("context.delete", &id, id.len(), start, &r);
        r
    }

    async fn share(
        &mut self,
        id: String,
        agents: Vec<String>,
        permissions: Vec<qi::agent::context::Permission>,
        expires_in_ms: Option<u64>,
    ) -> Result<(), WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "context.share").await?;
            let call = "context.share";
            limits::ids(&shared, call, "id", [&id]).map_err(refused)?;
            limits::items(&shared, call, "agents", &agents, MAX_SHARE_AGENTS).map_err(refused)?;
            limits::ids(&shared, call, "agents", &agents).map_err(refused)?;
            limits::stored(
                &shared,
                call,
                "agents",
                agents.iter().map(String::len).sum(),
                agents.len(),
            )
            .map_err(refused)?;
            limits::items(
                &shared,
                call,
                "permissions",
                &permissions,
                MAX_SHARE_PERMISSIONS,
            )
            .map_err(refused)?;
            shared
                .gate("context", &id, "share")
                .map_err(WitContextError::AccessDenied)?;
            let perms: Vec<Permission> = permissions
                .into_iter()
                .map(|p| match p {
                    qi::agent::context::Permission::Read => Permission::Read,
                    qi::agent::context::Permission::Write => Permission::Write,
                    qi::agent::context::Permission::Share => Permission::Share,
                    qi::agent::context::Permission::Delete => Permission::Delete,
                })
                .collect();
            let expires = expires_in_ms.map(|ms| svc.now_ms().saturating_add(ms));
            // The store audits every grant it makes and every refusal.
            svc.share_within(&me, &id, &agents, &perms, expires, audit_budget(&shared))
                .await
                .map(|_| ())
                .map_err(context_error)
        }
        .await;
        self.finish_context("context.share", &id, id.len(), start, &r);
        r
    }

    async fn revoke(&mut self, id: String, agents: Vec<String>) -> Result<(), WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "context.revoke").await?;
            let call = "context.revoke";
            limits::ids(&shared, call, "id", [&id]).map_err(refused)?;
            limits::items(&shared, call, "agents", &agents, MAX_SHARE_AGENTS).map_err(refused)?;
            limits::ids(&shared, call, "agents", &agents).map_err(refused)?;
            // Each revocation is recorded as a `revoked` event: one stored row per agent.
            limits::stored(&shared, call, "agents", 0, agents.len()).map_err(refused)?;
            shared
                .gate("context", &id, "revoke")
                .map_err(WitContextError::AccessDenied)?;
            // The store audits every grant it removes and every refusal.
            svc.revoke_within(&me, &id, &agents, audit_budget(&shared))
                .await
                .map_err(context_error)
        }
        .await;
        self.finish_context("context.revoke", &id, id.len(), start, &r);
        r
    }

    async fn ids(&mut self, context_type: Option<String>) -> Vec<String> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = match context_call(&shared, "context.ids").await.and_then(|x| {
            limits::ids(&shared, "context.ids", "context-type", context_type.iter())
                .map_err(refused)?;
            shared
                .gate("context", "*", "ids")
                .map_err(WitContextError::AccessDenied)
                .map(|()| x)
        }) {
            Ok((svc, me)) => Ok(svc.ids(&me, context_type.as_deref(), None)),
            Err(e) => Err(e),
        };
        self.finish_context("context.ids", "", 0, start, &r);
        r.unwrap_or_default()
    }

    async fn pointer_patch(
        &mut self,
        id: String,
        ops: Vec<WitPointerOp>,
        base_version: Option<u64>,
    ) -> Result<WitWriteResult, WitContextError> {
        self.context_pointer_patch(id, ops, base_version).await
    }

    async fn history(
        &mut self,
        id: String,
        limit: u32,
    ) -> Result<Vec<VersionInfo>, WitContextError> {
        self.context_history(id, limit).await
    }

    async fn rollback(
        &mut self,
        id: String,
        version: u64,
    ) -> Result<WitWriteResult, WitContextError> {
        self.context_rollback(id, version).await
    }

    async fn resolve(
        &mut self,
        id: String,
        choice: WitResolveChoice,
    ) -> Result<WitWriteResult, WitContextError> {
        self.context_resolve(id, choice).await
    }

    async fn pending(&mut self, id: String) -> Result<Option<String>, WitContextError> {
        self.context_pending(id).await
    }

    async fn prefetch(&mut self, ids: Vec<String>) -> Vec<Result<u64, WitContextError>> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "context.prefetch").await?;
            super::context_cache::prefetch(&shared, &svc, &me, &ids).await
        }
        .await;
        let arg_bytes = ids.iter().map(String::len).sum();
        self.finish_context("context.prefetch", "", arg_bytes, start, &r);
        // A refusal of the whole call (no store, too many ids) answers every id.
        r.unwrap_or_else(|e| ids.iter().map(|_| Err(e.clone())).collect())
    }

    async fn sync_all_shared(&mut self) -> Result<SyncSummary, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "context.sync-all-shared").await?;
            shared
                .gate("context", "*", "ids")
                .map_err(WitContextError::AccessDenied)?;
            Ok(super::context_cache::sync_all_shared(&shared, &svc, &me).await)
        }
        .await;
        self.finish_context("context.sync-all-shared", "", 0, start, &r);
        r
    }
}
