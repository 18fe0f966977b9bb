//! Writing a change to a context through its strategy.

use super::*;

impl ContextService {
    /// Writes a change based on `base_version` (required for strong and causal contexts).
    pub async fn write(
        &self,
        agent: &str,
        id: &str,
        change: Change,
        base_version: Option<u64>,
    ) -> Result<WriteResult, ContextError> {
        let (changes, op) = match &change {
            Change::Put(doc) => {
                self.check_size(doc)?;
                (None, "put")
            }
            Change::Pointer(ops) => (
                Some(
                    patch::from_pointer_ops(ops)
                        .map_err(|e| ContextError::invalid("change", e.to_string()))?,
                ),
                "patch",
            ),
            Change::Merge(p) => (
                Some(
                    patch::from_merge_patch(p)
                        .map_err(|e| ContextError::invalid("change", e.to_string()))?,
                ),
                "patch",
            ),
        };
        // A put is a diff against the version it was based on; fetch that version if it is
        // not the current one.
        let base_doc = match (&change, base_version) {
            (Change::Put(_), Some(b)) => {
                let current = {
                    let inner = self.shared.committed();
                    inner
                        .contexts
                        .get(id)
                        .filter(|c| c.version == b && c.resident)
                        .map(|c| c.doc.clone())
                };
                match current {
                    Some(doc) => Some(doc),
                    None => {
                        let (blobs, id2) = (self.shared.store.blobs().clone(), id.to_string());
                        self.shared
                            .store
                            .read(move |conn| persist::load_version(conn, &blobs, &id2, b))
                            .await?
                    }
                }
            }
            _ => None,
        };
        let (agent, id) = (agent.to_string(), id.to_string());
        self.run(
            Some(id.clone()),
            Box::new(move |sh, inner, ctx| {
                let Some(state) = inner.contexts.get(&id) else {
                    return Err(OpError::Committed(ContextError::NotFound(id)));
                };
                if let Err(reason) = Self::check(sh, inner, &agent, state, Permission::Write) {
                    return Err(Self::deny(sh, ctx, &agent, "write", &id, reason));
                }
                let changes = match (changes, change) {
                    (Some(c), _) => c,
                    (None, Change::Put(doc)) => {
                        let base = base_doc.unwrap_or_else(|| state.doc.clone());
                        let mut c = patch::diff(&base, &doc)
                            .map_err(|e| ContextError::invalid("doc", e.to_string()))?;
                        if c.is_empty() && base_version.is_some_and(|b| b != state.version) {
                            c.push(FieldChange {
                                path: String::new(),
                                value: Some(doc),
                            });
                        }
                        c
                    }
                    (None, _) => unreachable!("only put computes its changes here"),
                };
                let w = Write {
                    agent: agent.clone(),
                    base_version,
                    changes,
                    op,
                };
                Self::commit_write(sh, inner, ctx, &id, w)
            }),
        )
        .await
    }

    pub(super) fn commit_write(
        sh: &Shared,
        inner: &mut Inner,
        ctx: &mut WriteCtx<'_>,
        id: &str,
        w: Write,
    ) -> Result<WriteResult, OpError> {
        let state = inner.contexts.get(id).expect("caller checked").clone();
        let at = sh.stamp(inner);
        let now = at.now_ms;
        let validator = inner.schemas.get(id).cloned();
        let check = validator.as_deref().map(schema_check);
        let applied = engine::apply_write(
            &state,
            &w,
            at,
            check
                .as_ref()
                .map(|c| c as &dyn Fn(&Value) -> Result<(), String>),
        );
        match applied {
            Err((refusal, conflict)) => {
                let conflict = match conflict {
                    Some(mut c) => {
                        c.id = persist::insert_conflict(ctx.tx(), ctx.blobs(), &c)?;
                        sh.bus
                            .stage(ctx, vec![conflict_event(&c, &w.agent, ctx.blobs())])?;
                        Some(c)
                    }
                    None => None,
                };
                Err(OpError::Committed(ContextError::Refused {
                    context: id.to_string(),
                    refusal,
                    conflict,
                }))
            }
            Ok(mut applied) => {
                let mut events = Vec::new();
                for c in &mut applied.conflicts {
                    c.id = persist::insert_conflict(ctx.tx(), ctx.blobs(), c)?;
                    events.push(conflict_event(c, &w.agent, ctx.blobs()));
                }
                if let Some(p) = &mut applied.state.pending {
                    for c in &applied.conflicts {
                        if c.resolution.is_none() {
                            p.conflict_ids.push(c.id);
                        }
                    }
                }
                let new_version = applied.version.is_some();
                if let Some(v) = &applied.version {
                    persist::insert_version(
                        ctx.tx(),
                        ctx.blobs(),
                        v,
                        applied.state.history_limit,
                        now,
                    )?;
                    let event = if w.op == "rollback" {
                        EventType::RolledBack
                    } else {
                        EventType::Updated
                    };
                    events.push(NewEvent::new(event).context(id).agent(&w.agent).data(json!({
                        "version": v.version, "revision": v.revision, "hlc": v.hlc.to_string(), "op": w.op,
                        "fields": w.changes.iter().map(|c| c.path.clone()).collect::<Vec<_>>(),
                    })));
                    inner.revision = at.revision;
                }
                persist::upsert_context(ctx.tx(), ctx.blobs(), &applied.state)?;
                if !events.is_empty() {
                    sh.bus.stage(ctx, events)?;
                }
                let result = result_of(&applied.state, new_version, applied.conflicts);
                inner.contexts.insert(id.to_string(), applied.state);
                Ok(result)
            }
        }
    }
}

/// A conflict event. With encryption at rest the competing values stay out of the event log
/// (only the agents are named); `conflicts` has them.
pub(super) fn conflict_event(
    c: &Conflict,
    agent: &str,
    blobs: &crate::store::BlobStore,
) -> NewEvent {
    let priority = match c.severity {
        ConflictSeverity::Low => 0,
        ConflictSeverity::Medium => 1,
        ConflictSeverity::High => 2,
        ConflictSeverity::Critical => 3,
    };
    NewEvent::new(EventType::Conflict)
        .context(&c.context_id)
        .agent(agent)
        .priority(priority)
        .data({
            let mut data = serde_json::to_value(c).unwrap_or(Value::Null);
            if blobs.keys().is_some()
                && let Some(m) = data.as_object_mut()
            {
                let agents: Vec<String> = c.agent_values.keys().cloned().collect();
                m.insert(
                    "agentValues".into(),
                    json!({"sealed": true, "agents": agents}),
                );
                if let Some(Value::Object(r)) = m.get_mut("resolution")
                    && r.contains_key("resolvedValue")
                {
                    r.insert("resolvedValue".into(), json!({"sealed": true}));
                }
            }
            data
        })
}
