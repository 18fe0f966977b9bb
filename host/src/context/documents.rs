//! Creating, reading, listing and deleting contexts.

use super::{
    Conflict, ContextError, ContextService, ContextState, ContextStatus, ContextVersion,
    ContextView, NewContext, OPERATOR, OpError, Permission, Refusal, Stamp, StampedField,
    WriteResult, audit, compile_schema, labels, patch, persist, schema_check,
};
use crate::audit::AuditDecision::Record;
use crate::events::{EventType, NewEvent, ReadRecording};
use crate::store::StoreError;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The prefix of the contexts a coordinated run writes as the operator
/// (`run/<run>/output/...`, `.../sync/...`, `.../channel/...`): agents cannot create contexts
/// there, so nothing an agent made can pass for the run's own records.
pub const RUN_PREFIX: &str = "run/";

impl ContextService {
    /// Creates a context owned by `agent`.
    pub async fn create(&self, agent: &str, new: NewContext) -> Result<WriteResult, ContextError> {
        let mut tries = 0;
        loop {
            match self.create_once(agent, new.clone()).await {
                // Cluster mode: another host made or changed a context of this id first; its
                // state is installed now, and the create is made again (an id given is then
                // `AlreadyExists`; a generated one moves on).
                Err(ContextError::ReplicaChanged { .. })
                    if tries < super::replica::MAX_REPLICA_TRIES =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    async fn create_once(&self, agent: &str, new: NewContext) -> Result<WriteResult, ContextError> {
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
        if agent != OPERATOR
            && let Some(id) = &new.id
            && id.starts_with(RUN_PREFIX)
        {
            return Err(ContextError::invalid(
                "id",
                "ids under `run/` are reserved for the host's coordinated runs (outputs, sync \
                 points, channel messages); choose another prefix, e.g. `results/{run}`",
            ));
        }
        self.check_size(&new.doc)?;
        let new_labels = labels::validate(&new.labels)?;
        let schema = match &new.schema {
            Some(s) => Some(compile_schema(new.id.as_deref().unwrap_or("new"), s)?),
            None => None,
        };
        let agent = agent.to_string();
        // A create that writes no blob file may be committed by its caller when the writer is
        // idle, as a write may (see `writes`): a lone creator skips the two thread hand-offs.
        // The document's stored size is its encoded (MessagePack) size, which the JSON size
        // can underestimate; encoding twice is checked only when the JSON size is near the
        // threshold.
        let threshold = self.shared.store.blobs().threshold();
        let json = json_len(&new.doc) as usize;
        let may_lead = json.saturating_mul(4) + crate::store::crypto::SEALED_OVERHEAD <= threshold
            || (json + crate::store::crypto::SEALED_OVERHEAD <= threshold
                && crate::store::encode_value(&new.doc).len()
                    + crate::store::crypto::SEALED_OVERHEAD
                    <= threshold);
        let mode = crate::store::WriteMode {
            self_guarded: false,
            may_lead,
        };
        self.run_with(new.id.clone(), Box::new(move |sh, inner, ctx| {
            let id = new.id.clone().unwrap_or_else(|| loop {
                let id = format!("ctx-{}", inner.next_id);
                inner.next_id += 1;
                if !inner.contexts.contains_key(&id) {
                    break id;
                }
            });
            if inner.contexts.contains_key(&id) {
                return Err(OpError::Committed(ContextError::AlreadyExists(id)));
            }
            if agent != OPERATOR {
                let Some(reg) = inner.agents.get(&agent) else {
                    return Err(OpError::Committed(ContextError::UnknownAgent(agent)));
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
                    return Err(Self::deny(sh, ctx, &agent, "create", &id, reason));
                }
            }
            if let Some(v) = &schema
                && let Err(message) = schema_check(v)(&new.doc)
            {
                return Err(OpError::Committed(ContextError::Refused { context: id, refusal: Refusal::Schema(message), conflict: None }));
            }
            let Stamp { now_ms: now, hlc, revision } = sh.stamp(inner);
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
                resident: true,
                kv_revision: 0,
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
                audit::record_on_commit(sh, ctx, None, entry.details(json!({"before": [], "after": new_labels})))?;
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
            }
            inner.contexts.insert(id, state);
            Ok(result)
        }), mode)
        .await
    }

    pub(super) fn check_size(&self, doc: &Value) -> Result<(), ContextError> {
        let len = json_len(doc) as usize;
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
        match self.readable_state(agent, id).await? {
            Ok(state) => {
                let view = ContextView::from(&*state);
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
                    None,
                    Box::new(move |sh, _inner, ctx| {
                        Err(Self::deny(sh, ctx, &agent, "read", &id, reason))
                    }),
                )
                .await
            }
        }
    }

    /// Context `id` with its document if `agent` may read it (`Err`: why not): as is if the
    /// hot tier holds it, else read from the store and put back into the hot tier (unless the
    /// context changed meanwhile). A document read from the store is answered only if the
    /// agent may still read the context once it is loaded, and only once the hot tier has
    /// published it: a change the store holds but readers do not see yet may follow a revoke
    /// they do not see yet either.
    async fn readable_state(
        &self,
        agent: &str,
        id: &str,
    ) -> Result<Result<Arc<ContextState>, String>, ContextError> {
        let mut state = {
            let committed = self.shared.committed();
            let state = match self.readable_in(&committed, agent, id)? {
                Ok(s) => s,
                Err(reason) => return Ok(Err(reason)),
            };
            if state.resident {
                committed.touch(id);
            }
            state
        };
        // A context that keeps changing while it is loaded is loaded again, a few times at
        // most; then the version read (committed, if not the newest) is the answer.
        for attempt in 0.. {
            if state.resident {
                return Ok(Ok(state));
            }
            let blobs = self.shared.store.blobs().clone();
            let id2 = id.to_string();
            let loaded = self
                .shared
                .store
                .read(move |conn| persist::load_context(conn, &blobs, &id2))
                .await?
                .ok_or_else(|| ContextError::NotFound(id.to_string()))?;
            if self.unpublished(&loaded) {
                self.published().await?;
            }
            let bound = self.shared.config.hot_tier_bytes;
            // In cluster mode the store's writer may hold the hot tier's read lock while it
            // waits for NATS, whose I/O runs on this runtime: a runtime thread never waits for
            // the write lock then (waiting, it would stall every reader behind it, and with
            // them NATS). The document read is the answer, not put back.
            let mut committed = if self.replication().is_some() {
                match self.shared.committed.try_write() {
                    Ok(c) => c,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => {
                        let committed = self.shared.committed();
                        return Ok(self
                            .readable_in(&committed, agent, id)?
                            .map(|_| Arc::new(loaded)));
                    }
                }
            } else {
                self.shared.committed_mut()
            };
            if let Err(reason) = self.readable_in(&committed, agent, id)? {
                return Ok(Err(reason));
            }
            match committed.put_back(&state, loaded.clone(), bound) {
                Ok(hot) => return Ok(Ok(hot)),
                Err(_) if attempt >= 3 => return Ok(Ok(Arc::new(loaded))),
                Err(newer) => state = newer,
            }
        }
        unreachable!("the loop returns")
    }

    /// Context `id` as `committed` has it, if `agent` may read it (`Err(reason)` otherwise).
    fn readable_in(
        &self,
        committed: &super::hot::Committed,
        agent: &str,
        id: &str,
    ) -> Result<Result<Arc<ContextState>, String>, ContextError> {
        let state = committed
            .context_arc(id)
            .ok_or_else(|| ContextError::NotFound(id.to_string()))?;
        Ok(Self::check(&self.shared, committed, agent, &state, Permission::Read).map(|()| state))
    }

    /// Whether `loaded`, read from the store, is newer than what the hot tier has published.
    fn unpublished(&self, loaded: &ContextState) -> bool {
        self.shared
            .committed()
            .context_arc(&loaded.id)
            .is_none_or(|c| loaded.revision > c.revision)
    }

    /// Returns once every batch committed so far has been published (an empty write queues
    /// behind them: a batch's after-commit hooks run before the next batch starts).
    /// On a read-only store (a CLI beside a live host) there is no writer here to wait for:
    /// the store is ahead of this process's hot tier by another process's writes.
    pub(super) async fn published(&self) -> Result<(), ContextError> {
        if self.shared.store.is_read_only() {
            return Ok(());
        }
        self.shared.store.write(|_| Ok(())).await?;
        Ok(())
    }

    /// Contexts `agent` can read, optionally filtered by type and owner, sorted by id, with
    /// their documents (evicted ones are read from the store, not made hot again).
    pub async fn list(
        &self,
        agent: &str,
        context_type: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Vec<ContextView>, ContextError> {
        let states = self.readable(agent, context_type, owner);
        let cold: Vec<String> = states
            .iter()
            .filter(|s| !s.resident)
            .map(|s| s.id.clone())
            .collect();
        let mut loaded: HashMap<String, ContextState> = HashMap::new();
        if !cold.is_empty() {
            let blobs = self.shared.store.blobs().clone();
            let rows = self
                .shared
                .store
                .read(move |conn| {
                    let mut rows = Vec::with_capacity(cold.len());
                    for id in &cold {
                        rows.extend(persist::load_context(conn, &blobs, id)?);
                    }
                    Ok(rows)
                })
                .await?;
            loaded.extend(rows.into_iter().map(|s| (s.id.clone(), s)));
        }
        if loaded.values().any(|l| self.unpublished(l)) {
            self.published().await?;
        }
        // Decided again now that the documents are loaded (a revoke may have come meanwhile).
        let committed = self.shared.committed();
        Ok(states
            .iter()
            .filter(|s| {
                committed.context_arc(&s.id).is_some_and(|now| {
                    now.status != ContextStatus::Deleted
                        && Self::check(&self.shared, &*committed, agent, &now, Permission::Read)
                            .is_ok()
                })
            })
            .map(|s| match loaded.get(&s.id) {
                // Loaded after the list was taken: the metadata of the list wins if newer.
                Some(l) if !s.resident && l.revision >= s.revision => ContextView::from(l),
                _ => ContextView::from(&**s),
            })
            .collect())
    }

    /// The ids of the contexts `agent` can read, optionally filtered by type and owner,
    /// sorted (no document is read).
    pub fn ids(&self, agent: &str, context_type: Option<&str>, owner: Option<&str>) -> Vec<String> {
        self.readable(agent, context_type, owner)
            .into_iter()
            .map(|s| s.id.clone())
            .collect()
    }

    /// The live contexts `agent` can read (maybe without documents), sorted by id.
    fn readable(
        &self,
        agent: &str,
        context_type: Option<&str>,
        owner: Option<&str>,
    ) -> Vec<Arc<ContextState>> {
        let committed = self.shared.committed();
        let mut v: Vec<Arc<ContextState>> = committed
            .contexts
            .values()
            .filter(|c| c.status != ContextStatus::Deleted)
            .filter(|c| context_type.is_none_or(|t| c.context_type == t))
            .filter(|c| owner.is_none_or(|o| c.owner == o))
            .filter(|c| Self::check(&self.shared, &*committed, agent, c, Permission::Read).is_ok())
            .filter_map(|c| committed.context_arc(&c.id))
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
                let state =
                    Self::require(sh, inner, ctx, &agent, &id, Permission::Delete, "delete")?;
                let Stamp {
                    now_ms: now,
                    hlc,
                    revision,
                } = sh.stamp(inner);
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
                Ok(r)
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
    let len = if new_version { json_len(&s.doc) } else { 0 };
    result_with_len(s, new_version, conflicts, len)
}

/// [`result_of`] for a document of `doc_json` bytes of JSON ([`json_len`]).
pub(super) fn result_with_len(
    s: &ContextState,
    new_version: bool,
    conflicts: Vec<Conflict>,
    doc_json: u64,
) -> WriteResult {
    WriteResult {
        context_id: s.id.clone(),
        version: s.version,
        revision: s.revision,
        hlc: s.hlc,
        status: s.status,
        new_version,
        conflicts,
        doc_bytes: if new_version { doc_json } else { 0 },
    }
}

/// The length of `doc`'s compact JSON text, counted without building it.
pub(super) fn json_len(doc: &impl serde::Serialize) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, doc);
    count.0
}
