//! Creating, reading, listing and deleting contexts.

use super::*;

impl ContextService {
    /// Creates a context owned by `agent`.
    pub async fn create(&self, agent: &str, new: NewContext) -> Result<WriteResult, ContextError> {
        if new.context_type.trim().is_empty() {
            return Err(ContextError::invalid(
                "contextType",
                "must not be empty, e.g. `review-notes`",
            ));
        }
        if let Some(id) = &new.id
            && (id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()))
        {
            return Err(ContextError::invalid(
                "id",
                "must be 1-200 printable characters",
            ));
        }
        self.check_size(&new.doc)?;
        let new_labels = labels::validate(&new.labels)?;
        let schema = match &new.schema {
            Some(s) => Some(compile_schema(new.id.as_deref().unwrap_or("new"), s)?),
            None => None,
        };
        let agent = agent.to_string();
        self.run(new.id.clone(), Box::new(move |sh, inner, ctx| {
            let id = new.id.clone().unwrap_or_else(|| loop {
                let id = format!("ctx-{}", inner.next_id);
                inner.next_id += 1;
                if !inner.contexts.contains_key(&id) {
                    break id;
                }
            });
            if inner.contexts.contains_key(&id) {
                return Ok(Err(ContextError::AlreadyExists(id)));
            }
            if agent != OPERATOR {
                let Some(reg) = inner.agents.get(&agent) else {
                    return Ok(Err(ContextError::UnknownAgent(agent)));
                };
                let caps = &reg.capabilities;
                let owned = inner.contexts.values().filter(|c| c.owner == agent && c.status != ContextStatus::Deleted).count();
                let reason = if !caps.can_write {
                    Some("its capabilities do not include write".to_string())
                } else if !caps.supported_context_types.is_empty() && !caps.supported_context_types.contains(&new.context_type) {
                    Some(format!("it does not support context type `{}`", new.context_type))
                } else if owned >= caps.max_concurrent_contexts as usize {
                    Some(format!("it already owns {owned} contexts (maxConcurrentContexts)"))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Ok(Err(Self::deny(sh, ctx, &agent, "create", &id, reason)?));
                }
            }
            if let Some(v) = &schema
                && let Err(message) = schema_check(v)(&new.doc)
            {
                return Ok(Err(ContextError::Refused { context: id, refusal: Refusal::Schema(message), conflict: None }));
            }
            let now = sh.clock.now_ms();
            let hlc = sh.clock.tick();
            let revision = inner.revision + 1;
            let mut stamps = BTreeMap::new();
            for c in patch::diff(&empty_like(&new.doc), &new.doc).unwrap_or_default() {
                stamps.insert(c.path, StampedField { version: 1, hlc, agent: agent.clone() });
            }
            let state = ContextState {
                id: id.clone(),
                owner: agent.clone(),
                context_type: new.context_type.clone(),
                schema: new.schema.clone(),
                strategy: new.strategy,
                resolution: new.resolution,
                status: ContextStatus::Active,
                version: 1,
                revision,
                hlc,
                doc: new.doc.clone(),
                field_stamps: stamps,
                pending: None,
                history_limit: new.history_limit.or(sh.config.default_history_limit),
                created_at: now,
                updated_at: now,
            };
            let version = ContextVersion {
                context_id: id.clone(),
                version: 1,
                revision,
                agent_id: agent.clone(),
                hlc,
                op: "create".into(),
                doc: new.doc,
            };
            if !new_labels.is_empty() {
                let reason = format!("labels at create: [{}]", new_labels.join(", "));
                let entry = audit::entry(&agent, &id, "label", Record, reason);
                audit::record(sh, None, entry.details(json!({"before": [], "after": new_labels})))?;
                labels::save(ctx.tx(), &id, &new_labels, &agent, now)?;
            }
            persist::upsert_context(ctx.tx(), ctx.blobs(), &state)?;
            persist::insert_version(ctx.tx(), ctx.blobs(), &version, state.history_limit, now)?;
            sh.bus.stage(ctx, vec![NewEvent::new(EventType::Created).context(&id).agent(&agent).data(json!({
                "version": 1, "revision": revision, "contextType": state.context_type, "strategy": state.strategy,
            }))])?;
            let result = result_of(&state, true, Vec::new());
            inner.revision = revision;
            if let Some(v) = schema {
                inner.schemas.insert(id.clone(), v);
            }
            if !new_labels.is_empty() {
                inner.labels.insert(id.clone(), new_labels);
                sh.labels_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            inner.contexts.insert(id, state);
            Ok(Ok(result))
        }))
        .await
    }

    pub(super) fn check_size(&self, doc: &Value) -> Result<(), ContextError> {
        let len = serde_json::to_vec(doc).map(|v| v.len()).unwrap_or(0);
        if len > self.shared.config.max_document_bytes {
            return Err(ContextError::invalid(
                "doc",
                format!(
                    "is {len} bytes; the limit is {}",
                    self.shared.config.max_document_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Reads a context; the read is recorded as an `accessed` event, coalesced per agent and
    /// context (see [`get_with`](Self::get_with)).
    pub async fn get(&self, agent: &str, id: &str) -> Result<ContextView, ContextError> {
        self.get_with(agent, id, ReadRecording::Coalesced).await
    }

    /// Reads a context, recording the read as an `accessed` event as `recording` says:
    /// coalesced (at most one per agent and context per
    /// [`EventBusConfig::access_window_ms`](crate::events::EventBusConfig::access_window_ms))
    /// or every read (agents at the `monitored` isolation level). The reader does not wait for
    /// the event to be durable, only for room in the bus's write queue.
    pub async fn get_with(
        &self,
        agent: &str,
        id: &str,
        recording: ReadRecording,
    ) -> Result<ContextView, ContextError> {
        let checked = {
            let inner = self.shared.lock();
            let state = inner
                .contexts
                .get(id)
                .ok_or_else(|| ContextError::NotFound(id.to_string()))?;
            Self::check(&self.shared, &inner, agent, state, Permission::Read)
                .map(|()| ContextView::from(state))
        };
        match checked {
            Ok(view) => {
                let event = NewEvent::new(EventType::Accessed)
                    .context(id)
                    .agent(agent)
                    .data(json!({"version": view.version}));
                let now = self.now_ms();
                self.shared.bus.record_access(event, now, recording).await;
                Ok(view)
            }
            Err(reason) => {
                let (agent, id) = (agent.to_string(), id.to_string());
                self.run(
                    Some(id.clone()),
                    Box::new(move |sh, _inner, ctx| {
                        Ok(Err(Self::deny(sh, ctx, &agent, "read", &id, reason)?))
                    }),
                )
                .await
            }
        }
    }

    /// Contexts `agent` can read, optionally filtered by type and owner, sorted by id.
    pub fn list(
        &self,
        agent: &str,
        context_type: Option<&str>,
        owner: Option<&str>,
    ) -> Vec<ContextView> {
        let inner = self.shared.lock();
        let mut v: Vec<ContextView> = inner
            .contexts
            .values()
            .filter(|c| c.status != ContextStatus::Deleted)
            .filter(|c| context_type.is_none_or(|t| c.context_type == t))
            .filter(|c| owner.is_none_or(|o| c.owner == o))
            .filter(|c| Self::check(&self.shared, &inner, agent, c, Permission::Read).is_ok())
            .map(ContextView::from)
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Deletes a context (history is kept).
    pub async fn delete(&self, agent: &str, id: &str) -> Result<WriteResult, ContextError> {
        let (agent, id) = (agent.to_string(), id.to_string());
        self.run(
            Some(id.clone()),
            Box::new(move |sh, inner, ctx| {
                let state = match Self::authorized(
                    sh,
                    inner,
                    ctx,
                    &agent,
                    &id,
                    Permission::Delete,
                    "delete",
                )? {
                    Ok(state) => state,
                    Err(e) => return Ok(Err(e)),
                };
                let now = sh.clock.now_ms();
                let hlc = sh.clock.tick();
                let revision = inner.revision + 1;
                let mut next = state.clone();
                next.status = ContextStatus::Deleted;
                next.version += 1;
                next.revision = revision;
                next.hlc = hlc;
                next.updated_at = now;
                next.pending = None;
                let v = ContextVersion {
                    context_id: id.clone(),
                    version: next.version,
                    revision,
                    agent_id: agent.clone(),
                    hlc,
                    op: "delete".into(),
                    doc: Value::Null,
                };
                persist::insert_version(ctx.tx(), ctx.blobs(), &v, next.history_limit, now)?;
                persist::upsert_context(ctx.tx(), ctx.blobs(), &next)?;
                ctx.tx()
                    .execute("DELETE FROM shares WHERE context_id = ?1", [&id])
                    .map_err(StoreError::from)?;
                sh.bus.stage(
                    ctx,
                    vec![
                        NewEvent::new(EventType::Deleted)
                            .context(&id)
                            .agent(&agent)
                            .data(json!({"version": next.version, "revision": revision})),
                    ],
                )?;
                inner.revision = revision;
                inner.shares.remove(&id);
                let r = result_of(&next, true, Vec::new());
                inner.contexts.insert(id, next);
                Ok(Ok(r))
            }),
        )
        .await
    }
}

/// `{}` for objects (so their fields diff one by one), `null` otherwise.
pub(super) fn empty_like(doc: &Value) -> Value {
    if doc.is_object() {
        json!({})
    } else {
        Value::Null
    }
}

pub(super) fn result_of(
    s: &ContextState,
    new_version: bool,
    conflicts: Vec<Conflict>,
) -> WriteResult {
    WriteResult {
        context_id: s.id.clone(),
        version: s.version,
        revision: s.revision,
        hlc: s.hlc,
        status: s.status,
        new_version,
        conflicts,
    }
}
