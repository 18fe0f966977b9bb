//! Writing a change to a context through its strategy.

use super::*;
use crate::store::WriteMode;
use std::sync::Arc;

impl ContextService {
    /// Writes a change based on `base_version`, the version the writer observed (required for
    /// strong, eventual and causal contexts; see [`engine`] for what each strategy does with
    /// it). The result, document and pending competing values together, must stay under
    /// `max_document_bytes` (`Invalid` on `doc` otherwise). Refusals: `BaseRequired`,
    /// `Stale`, `FutureBase`, `BaseNotRetained`, `BaseTooOld` (more than
    /// [`engine::MAX_VERSIONS_BEHIND`] versions behind), `NotCausal`, `InConflict`, `Schema`.
    ///
    /// A write that failed only because its group commit was rolled back whole
    /// ([`StoreError::TransactionAborted`](crate::store::StoreError::TransactionAborted):
    /// another write of the batch failed after changing rows it could not undo alone, or
    /// SQLite ended the transaction) kept nothing, and is tried once more in a later batch.
    pub async fn write(
        &self,
        agent: &str,
        id: &str,
        change: Change,
        base_version: Option<u64>,
    ) -> Result<WriteResult, ContextError> {
        let change = Arc::new(change);
        // Stamped when the host accepts the call (once, whatever the tries): last-writer-wins
        // compares these.
        let hlc = self.shared.clock.tick();
        let mut tries = 0;
        loop {
            match self
                .write_once(agent, id, change.clone(), base_version, hlc)
                .await
            {
                Err(ContextError::Store(crate::store::StoreError::TransactionAborted {
                    cause,
                })) if tries == 0 => {
                    tracing::debug!(context = id, %cause, "a write's batch was rolled back; trying it once more");
                }
                // Cluster mode: another host wrote first; its state is installed now, and
                // the write is made again on it (a strong write based on the replaced version
                // is then refused as stale).
                Err(ContextError::ReplicaChanged { .. })
                    if tries < super::replica::MAX_REPLICA_TRIES => {}
                other => return other,
            }
            tries += 1;
        }
    }

    async fn write_once(
        &self,
        agent: &str,
        id: &str,
        change: Arc<Change>,
        base_version: Option<u64>,
        hlc: super::hlc::Hlc,
    ) -> Result<WriteResult, ContextError> {
        let (changes, op) = match &*change {
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
        let (agent, id) = (agent.to_string(), id.to_string());
        let put = match &*change {
            Change::Put(doc) => Some(doc),
            _ => None,
        };
        let prepared = self.prepare(
            &id,
            base_version,
            put,
            changes.as_deref(),
            Write {
                agent: agent.clone(),
                base_version,
                changes: Vec::new(),
                op,
                hlc,
            },
        );
        // A prepared write changes rows only when it stores what it already checked (anything
        // else opens its savepoint first). It may be committed by the caller itself when the
        // writer is idle (a lone writer's latency is mostly the hand-offs to the writer thread
        // and back), unless it writes a blob file, whose fsync would hold the caller's thread.
        let threshold = self.shared.store.blobs().threshold();
        let mode = WriteMode {
            self_guarded: prepared.is_some(),
            may_lead: prepared.as_ref().is_some_and(|p| p.stays_inline(threshold)),
        };
        self.run_with(
            Some(id.clone()),
            Box::new(move |sh, inner, ctx| {
                // Held until the caller has its answer, so the state this write replaces is
                // freed on the caller's thread, not on the store's writer thread.
                let replaced = inner.contexts.get_arc(&id);
                let apply = || {
                    if let Some(p) = prepared
                        && let Some(outcome) = Self::commit_prepared(sh, inner, ctx, &id, p)
                    {
                        return outcome;
                    }
                    ctx.guard()?;
                    let Some(state) = inner.contexts.get(&id) else {
                        return Err(OpError::Committed(ContextError::NotFound(id)));
                    };
                    if let Err(reason) = Self::check(sh, inner, &agent, state, Permission::Write) {
                        return Err(Self::deny(sh, ctx, &agent, "write", &id, reason));
                    }
                    let observed = Self::observed(sh, ctx, state, base_version)?;
                    let changes = match (changes, &*change) {
                        (Some(c), _) => c,
                        (None, Change::Put(doc)) => {
                            // A put is a diff against the version it was based on.
                            let base = match base_version {
                                Some(b) if b < state.version && !observed.is_empty() => {
                                    &observed[0].doc
                                }
                                _ => &state.doc,
                            };
                            let mut c = patch::diff(base, doc)
                                .map_err(|e| ContextError::invalid("doc", e.to_string()))?;
                            if c.is_empty() && base_version.is_some_and(|b| b != state.version) {
                                c.push(FieldChange {
                                    path: String::new(),
                                    value: Some(doc.clone()),
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
                        hlc,
                    };
                    Self::commit_write(sh, inner, ctx, &id, w, &observed)
                };
                apply().map(|result| (result, replaced))
            }),
            mode,
        )
        .await
        .map(|(result, replaced)| {
            drop(replaced);
            result
        })
    }

    /// The retained versions from `base` to the current one, oldest first, when a write based
    /// on `base` needs them to find concurrent changes (a base older than the current version,
    /// on a context that is not strong); refused when retention dropped the base or when they hold
    /// more bytes than [`engine::OBSERVED_DOCUMENTS`] documents.
    fn observed(
        sh: &Shared,
        ctx: &mut WriteCtx<'_>,
        state: &ContextState,
        base: Option<u64>,
    ) -> Result<Vec<ContextVersion>, OpError> {
        let Some(base) = base.filter(|b| *b < state.version) else {
            return Ok(Vec::new());
        };
        if state.strategy == SyncStrategy::Strong {
            return Ok(Vec::new());
        }
        let behind = state.version - base;
        if behind > engine::MAX_VERSIONS_BEHIND {
            return Err(OpError::Committed(ContextError::Refused {
                context: state.id.clone(),
                refusal: Refusal::BaseTooOld {
                    base,
                    behind,
                    current: state.version,
                    max: engine::MAX_VERSIONS_BEHIND,
                },
                conflict: None,
            }));
        }
        let span = (state.version - base + 1) as usize;
        let max_bytes = engine::OBSERVED_DOCUMENTS.saturating_mul(sh.config.max_document_bytes);
        let Some(mut versions) =
            persist::load_versions_within(ctx.tx(), ctx.blobs(), &state.id, span, max_bytes)?
        else {
            return Err(OpError::Committed(ContextError::Refused {
                context: state.id.clone(),
                refusal: Refusal::ChangesTooLarge {
                    base,
                    current: state.version,
                    max_bytes,
                },
                conflict: None,
            }));
        };
        versions.reverse();
        if let Err(refusal) = engine::check_observed(state, base, &versions) {
            return Err(OpError::Committed(ContextError::Refused {
                context: state.id.clone(),
                refusal,
                conflict: None,
            }));
        }
        Ok(versions)
    }

    /// Refuses a result larger than `max_document_bytes` (the document and a pending
    /// conflict's values together), after the change was applied.
    pub(super) fn check_result_size(
        sh: &Shared,
        op: &str,
        state: &ContextState,
    ) -> Result<(), ContextError> {
        Self::check_result_size_of(sh, op, state, json_len(&state.doc) as usize)
    }

    /// [`check_result_size`](Self::check_result_size) for a document of `doc` bytes of JSON.
    pub(super) fn check_result_size_of(
        sh: &Shared,
        op: &str,
        state: &ContextState,
        doc: usize,
    ) -> Result<(), ContextError> {
        let pending = state.pending.as_ref().map_or(0, |p| json_len(p) as usize);
        let limit = sh.config.max_document_bytes;
        if doc + pending > limit {
            return Err(ContextError::invalid(
                "doc",
                format!(
                    "context `{}` would be {} bytes after this {op} ({doc} of document, {pending} of competing values); the limit (maxDocumentBytes) is {limit}: write less, or split the data over several contexts",
                    state.id,
                    doc + pending
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn commit_write(
        sh: &Shared,
        inner: &mut Inner,
        ctx: &mut WriteCtx<'_>,
        id: &str,
        w: Write,
        observed: &[ContextVersion],
    ) -> Result<WriteResult, OpError> {
        let state = inner.contexts.get_arc(id).expect("caller checked");
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
            observed,
        );
        match applied {
            Err((refusal, conflict)) => {
                let conflict = match conflict {
                    Some(mut c) => {
                        Self::record_conflicts(sh, ctx, &w.agent, std::slice::from_mut(&mut c))?;
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
                let doc_json = json_len(&applied.state.doc);
                Self::check_result_size_of(sh, w.op, &applied.state, doc_json as usize)?;
                Self::record_conflicts(sh, ctx, &w.agent, &mut applied.conflicts)?;
                let mut events = Vec::new();
                if let Some(p) = &mut applied.state.pending {
                    for c in &applied.conflicts {
                        if c.resolution.is_none() {
                            p.conflict_ids.push(c.id);
                        }
                    }
                }
                let new_version = applied.version.is_some();
                let s = &applied.state;
                if let Some(version) = applied.version {
                    // Encoded once, for the version row and the current-state row.
                    let encoded = encode_value(&s.doc);
                    let row = persist::VersionRow {
                        context_id: id,
                        version,
                        revision: s.revision,
                        agent_id: &w.agent,
                        hlc: s.hlc,
                        op: w.op,
                    };
                    persist::insert_version_encoded(
                        ctx.tx(),
                        ctx.blobs(),
                        &row,
                        encoded.clone(),
                        s.history_limit,
                        now,
                    )?;
                    persist::upsert_context_encoded(ctx.tx(), ctx.blobs(), s, encoded, None)?;
                    let event = if w.op == "rollback" {
                        EventType::RolledBack
                    } else {
                        EventType::Updated
                    };
                    events.push(NewEvent::new(event).context(id).agent(&w.agent).data(json!({
                        "version": version, "revision": s.revision, "hlc": s.hlc.to_string(), "op": w.op,
                        "fields": w.changes.iter().map(|c| c.path.clone()).collect::<Vec<_>>(),
                    })));
                    inner.revision = at.revision;
                } else {
                    persist::upsert_context(ctx.tx(), ctx.blobs(), s)?;
                }
                if !events.is_empty() {
                    sh.bus.stage_only(ctx, events)?;
                }
                let result =
                    result_with_len(&applied.state, new_version, applied.conflicts, doc_json);
                inner.contexts.insert(id.to_string(), applied.state);
                Ok(result)
            }
        }
    }

    /// Stores conflict records (giving each its id), applies conflict retention
    /// (`max_conflicts_per_context`) and stages one `conflict` event for each.
    pub(super) fn record_conflicts(
        sh: &Shared,
        ctx: &mut WriteCtx<'_>,
        agent: &str,
        conflicts: &mut [Conflict],
    ) -> Result<(), ContextError> {
        if conflicts.is_empty() {
            return Ok(());
        }
        let mut events = Vec::new();
        for c in conflicts.iter_mut() {
            c.id = persist::insert_conflict(ctx.tx(), ctx.blobs(), c)?;
            events.push(conflict_event(c, agent));
        }
        persist::prune_conflicts(
            ctx.tx(),
            &conflicts[0].context_id,
            sh.config.max_conflicts_per_context,
        )?;
        sh.bus.stage_only(ctx, events)?;
        Ok(())
    }
}

/// A conflict event. It refers to the conflict record (`id`) and names the agents; the values
/// stay in the record (read them with `conflicts`), so an event is small whatever the values.
fn conflict_event(c: &Conflict, agent: &str) -> NewEvent {
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
        .data(json!({
            "id": c.id,
            "contextId": c.context_id,
            "field": c.field,
            "conflictType": c.conflict_type,
            "severity": c.severity,
            "agents": c.agent_values.keys().collect::<Vec<_>>(),
            "detectedAt": c.detected_at,
            "resolution": c.resolution.as_ref().map(|r| json!({
                "strategy": r.strategy, "resolvedBy": r.resolved_by, "resolvedAt": r.resolved_at,
            })),
        }))
}
