//! History, conflicts, rollback and resolution.

use super::*;

impl ContextService {
    /// Versions of a context, newest first (at most `limit`). Needs `read`; a refusal is
    /// recorded as an access violation like every other.
    pub async fn history(
        &self,
        agent: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<ContextVersion>, ContextError> {
        self.authorize(agent, id, Permission::Read, "read the history of")
            .await?;
        let (blobs, id2) = (self.shared.store.blobs().clone(), id.to_string());
        let versions = (self.shared.store)
            .read(move |conn| persist::load_versions(conn, &blobs, &id2, limit))
            .await?;
        let newest = versions.iter().map(|v| v.revision).max();
        self.still_allowed(agent, id, Permission::Read, newest)
            .await?;
        Ok(versions)
    }

    /// Conflicts recorded for a context, oldest first. Needs `read`; a refusal is recorded.
    pub async fn conflicts(&self, agent: &str, id: &str) -> Result<Vec<Conflict>, ContextError> {
        self.authorize(agent, id, Permission::Read, "read the conflicts of")
            .await?;
        let (blobs, id2) = (self.shared.store.blobs().clone(), id.to_string());
        let conflicts = (self.shared.store)
            .read(move |conn| persist::load_conflicts(conn, &blobs, &id2))
            .await?;
        self.still_allowed(agent, id, Permission::Read, None)
            .await?;
        Ok(conflicts)
    }

    /// Commits a new version whose content equals `version` (history is never rewritten).
    /// Needs `write`; the result must stay under `max_document_bytes`. Errors: `Invalid` on
    /// `version` when the version does not exist or retention dropped it.
    pub async fn rollback(
        &self,
        agent: &str,
        id: &str,
        version: u64,
    ) -> Result<WriteResult, ContextError> {
        // Before the version is read: an agent without `write` learns nothing about the
        // context's versions (nor makes the host read one). Checked again when it commits.
        self.authorize(agent, id, Permission::Write, "roll back")
            .await?;
        let (blobs, id2) = (self.shared.store.blobs().clone(), id.to_string());
        let old = self
            .shared
            .store
            .read(move |conn| persist::load_version(conn, &blobs, &id2, version))
            .await?
            .ok_or_else(|| {
                ContextError::invalid(
                    "version",
                    format!("context `{id}` has no version {version} (or retention dropped it)"),
                )
            })?;
        let (agent, id) = (agent.to_string(), id.to_string());
        self.run(
            Some(id.clone()),
            Box::new(move |sh, inner, ctx| {
                let Some(state) = inner.contexts.get(&id) else {
                    return Err(OpError::Committed(ContextError::NotFound(id)));
                };
                if let Err(reason) = Self::check(sh, inner, &agent, state, Permission::Write) {
                    return Err(Self::deny(sh, ctx, &agent, "roll back", &id, reason));
                }
                let changes = patch::diff(&state.doc, &old)
                    .map_err(|e| ContextError::invalid("version", e.to_string()))?;
                let w = Write {
                    agent: agent.clone(),
                    base_version: Some(state.version),
                    changes,
                    op: "rollback",
                    hlc: sh.clock.tick(),
                };
                Self::commit_write(sh, inner, ctx, &id, w, &[])
            }),
        )
        .await
    }

    /// Resolves a context in `conflict` state (needs `write`): takes one agent's values, a
    /// value per conflicting field, or a whole document. The result must stay under
    /// `max_document_bytes`. Errors: `Invalid` on `resolution` when the context is not in
    /// conflict or the choice does not cover every conflicting field.
    pub async fn resolve(
        &self,
        agent: &str,
        id: &str,
        choice: ResolveChoice,
    ) -> Result<WriteResult, ContextError> {
        let (agent, id) = (agent.to_string(), id.to_string());
        self.run(Some(id.clone()), Box::new(move |sh, inner, ctx| {
            let state = Self::require(sh, inner, ctx, &agent, &id, Permission::Write, "resolve")?;
            let at = sh.stamp(inner);
            let now = at.now_ms;
            let (next, version, chosen) = match engine::resolve(&state, &agent, &choice, at) {
                Ok(r) => r,
                Err(message) => return Err(OpError::Committed(ContextError::invalid("resolution", message))),
            };
            if let Some(v) = inner.schemas.get(&id)
                && let Err(message) = schema_check(v)(&next.doc)
            {
                return Err(OpError::Committed(ContextError::Refused { context: id, refusal: Refusal::Schema(message), conflict: None }));
            }
            Self::check_result_size(sh, "resolve", &next)?;
            let pending = state.pending.clone().unwrap_or_default();
            let mut conflicts = persist::load_conflicts(ctx.tx(), ctx.blobs(), &id)?;
            conflicts.retain(|c| pending.conflict_ids.contains(&c.id));
            for c in &mut conflicts {
                // Competing values that arrived after detection are part of the record too.
                if let Some(values) = pending.fields.get(&c.field) {
                    c.agent_values = values.clone();
                }
                c.resolution = Some(ConflictOutcome {
                    strategy: ConflictResolution::Manual,
                    resolved_value: chosen.get(&c.field).cloned().unwrap_or(Value::Null),
                    resolved_by: agent.clone(),
                    resolved_at: now,
                });
                persist::update_conflict(ctx.tx(), ctx.blobs(), c)?;
            }
            persist::insert_version(ctx.tx(), ctx.blobs(), &version, next.history_limit, now)?;
            persist::upsert_context(ctx.tx(), ctx.blobs(), &next)?;
            sh.bus.stage(ctx, vec![NewEvent::new(EventType::Resolved).context(&id).agent(&agent).priority(1).data(json!({
                "version": version.version, "revision": version.revision,
                // With encryption at rest, the chosen values stay out of the event log.
                "chosen": if ctx.blobs().keys().is_some() { json!({"sealed": true, "fields": chosen.keys().collect::<Vec<_>>()}) } else { json!(chosen) },
                "conflicts": conflicts.iter().map(|c| c.id).collect::<Vec<_>>(),
            }))])?;
            inner.revision = at.revision;
            let r = result_of(&next, true, conflicts);
            inner.contexts.insert(id, next);
            Ok(r)
        }))
        .await
    }
}
