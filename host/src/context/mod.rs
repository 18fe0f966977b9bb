//! The shared context store: versioned JSON documents with sharing, permissions, expiry,
//! synchronization strategies, typed conflicts, history, rollback, merge and batch sync, an
//! agent registry with heartbeats, and an event for every change (and every read).
//!
//! # How a change happens
//!
//! Every change runs as one operation on the store's single writer thread, inside the
//! group-commit transaction that makes it durable: the access check, the strategy engine
//! ([`engine`]), the rows (current state, version, conflicts, events) and the update of the
//! in-memory hot tier happen together, in commit order, so revisions, versions and event
//! sequence numbers agree with what is on disk. The caller gets its answer when the
//! transaction has committed. Refusals that must be reported (stale writes, access
//! violations, schema mismatches) commit their conflict record and event the same way and
//! then come back as errors.
//!
//! Reads are served from the hot tier. A reader may see a change whose transaction is still
//! committing (microseconds); if that commit fails, the context is reloaded from disk.
//!
//! # Access
//!
//! The owner may do everything. Other agents need a share granting the permission, not
//! expired at the time of the call (no sweep has to run first), and capabilities that allow
//! the kind of operation. The operator (`operator`, the CLI) may do everything. A refusal is
//! [`ContextError::AccessDenied`], an `access-violation` conflict record and a `conflict`
//! event.

mod access;
mod audit;
pub mod engine;
pub mod hlc;
pub mod labels;
pub mod model;
pub mod patch;
mod persist;
mod sharing;

pub use audit::AuditBudget;
pub use engine::{Refusal, ResolveChoice};
pub use hlc::{Hlc, HybridClock, ManualClock, PhysicalClock, SystemClock};
pub use model::*;
pub use patch::{FieldChange, PointerOp};

use crate::audit::AuditDecision::Record;
use crate::events::{EventBus, EventFilter, EventType, NewEvent, SubscribeFrom, Subscription};
use crate::store::{Store, StoreError, WriteCtx};
use engine::{Stamp, Write};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// The operator's agent id: the CLI and embedding code acting with full rights.
pub const OPERATOR: &str = "operator";

/// Errors of the context store.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// No such context.
    #[error("no context `{0}`")]
    NotFound(String),
    /// A context with this id exists.
    #[error("context `{0}` already exists")]
    AlreadyExists(String),
    /// The agent is not registered (or was unregistered).
    #[error("agent `{0}` is not registered; register it first")]
    UnknownAgent(String),
    /// The agent may not do this.
    #[error("access denied: agent `{agent}` may not {operation} context `{context}`: {reason}")]
    AccessDenied {
        /// The agent.
        agent: String,
        /// What it tried.
        operation: String,
        /// The context.
        context: String,
        /// Why not.
        reason: String,
    },
    /// The strategy refused the write.
    #[error("write to `{context}` refused: {refusal}")]
    Refused {
        /// The context.
        context: String,
        /// Why.
        refusal: Refusal,
        /// The conflict recorded for it, if any.
        conflict: Option<Box<Conflict>>,
    },
    /// A request field is invalid.
    #[error("invalid `{field}`: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event bus failed.
    #[error(transparent)]
    Events(#[from] crate::events::EventError),
    /// The audit log could not record the call, so it was refused (fail-closed).
    #[error("the audit log cannot record this call: {0}")]
    AuditUnavailable(#[from] crate::audit::AuditUnavailable),
}

impl ContextError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        ContextError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The seed category.
    pub fn category(&self) -> crate::ErrorCategory {
        use crate::ErrorCategory::*;
        match self {
            ContextError::NotFound(_)
            | ContextError::Invalid { .. }
            | ContextError::UnknownAgent(_) => Validation,
            ContextError::AlreadyExists(_) | ContextError::Refused { .. } => Business,
            ContextError::AccessDenied { .. } => Security,
            ContextError::Store(_)
            | ContextError::Events(_)
            | ContextError::AuditUnavailable(_) => System,
        }
    }
}

/// Configuration of the context store. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct ContextConfig {
    /// An agent that has not heartbeated for this long is marked disconnected and its
    /// subscriptions are cleaned up. Default 30 s.
    pub heartbeat_timeout_ms: u64,
    /// Versions kept per context when the context does not say (None: all). Default all.
    pub default_history_limit: Option<u64>,
    /// Largest document accepted, in bytes of JSON. Default 16 MiB.
    pub max_document_bytes: usize,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            heartbeat_timeout_ms: 30_000,
            default_history_limit: None,
            max_document_bytes: 16 << 20,
        }
    }
}

/// A new context.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NewContext {
    /// Id; generated when empty.
    pub id: Option<String>,
    /// Type, e.g. `review-notes`.
    pub context_type: String,
    /// Initial document (`null` when absent).
    pub doc: Value,
    /// JSON schema every version must satisfy.
    pub schema: Option<Value>,
    /// Synchronization strategy (default strong).
    pub strategy: SyncStrategy,
    /// Conflict resolution for `causal` (default last-write-wins).
    pub resolution: ConflictResolution,
    /// Versions to keep (None: the store default).
    pub history_limit: Option<u64>,
    /// Host-kept labels (what policies see as `resource.labels`; see [`labels`]), set by the
    /// host-side creator; agents creating through `qi:agent/context` cannot set them. Default
    /// none.
    pub labels: Vec<String>,
}

/// A change to a context.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum Change {
    /// Replace the whole document.
    Put(Value),
    /// JSON Pointer operations.
    Pointer(Vec<PointerOp>),
    /// A JSON merge patch (RFC 7396).
    Merge(Value),
}

/// What a committed write produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    /// The context.
    pub context_id: String,
    /// Version after the write.
    pub version: u64,
    /// Store-wide revision of the context's last change.
    pub revision: u64,
    /// HLC of the context's last change.
    pub hlc: Hlc,
    /// Status after the write.
    pub status: ContextStatus,
    /// Whether the write made a new version (a write that lost every field, or that joined a
    /// pending conflict, does not).
    pub new_version: bool,
    /// Conflicts detected by this write.
    pub conflicts: Vec<Conflict>,
}

/// A context as a reader sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextView {
    /// Id.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Type.
    pub context_type: String,
    /// Strategy.
    pub strategy: SyncStrategy,
    /// Status.
    pub status: ContextStatus,
    /// Version.
    pub version: u64,
    /// Revision.
    pub revision: u64,
    /// HLC of the last change.
    pub hlc: Hlc,
    /// Document.
    pub doc: Value,
    /// Competing values while in conflict.
    pub pending: Option<PendingConflict>,
    /// Last change (unix ms).
    pub updated_at: u64,
}

impl From<&ContextState> for ContextView {
    fn from(s: &ContextState) -> Self {
        ContextView {
            id: s.id.clone(),
            owner: s.owner.clone(),
            context_type: s.context_type.clone(),
            strategy: s.strategy,
            status: s.status,
            version: s.version,
            revision: s.revision,
            hlc: s.hlc,
            doc: s.doc.clone(),
            pending: s.pending.clone(),
            updated_at: s.updated_at,
        }
    }
}

/// The seeds' `ShareResult`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareResult {
    /// The context.
    pub context_id: String,
    /// Agents it was shared with.
    pub shared_with: Vec<String>,
    /// Permissions granted.
    pub permissions: Vec<Permission>,
    /// When (unix ms).
    pub shared_at: u64,
    /// Expiry (unix ms).
    pub expires_at: Option<u64>,
}

/// The seeds' `SharedContextInfo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedContextInfo {
    /// The context.
    pub context_id: String,
    /// Its owner.
    pub owner_id: String,
    /// Permissions the agent holds.
    pub permissions: Vec<Permission>,
    /// When shared (unix ms).
    pub shared_at: u64,
    /// Expiry (unix ms).
    pub expires_at: Option<u64>,
    /// Current version.
    pub version: u64,
    /// `synced`, or `conflict` while the context waits for a resolution.
    pub sync_status: String,
}

/// The seeds' `SyncResult` for one context.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResult {
    /// The context.
    pub context_id: String,
    /// Authoritative version.
    pub version: u64,
    /// Status.
    pub status: ContextStatus,
    /// Unresolved conflicts.
    pub conflicts: Vec<Conflict>,
    /// Whether the context could be synchronized (read) by the agent.
    pub success: bool,
    /// Why not, when it could not.
    pub error: Option<String>,
}

#[derive(Default)]
struct Inner {
    contexts: HashMap<String, ContextState>,
    shares: HashMap<String, BTreeMap<String, Share>>,
    agents: HashMap<String, AgentRegistration>,
    schemas: HashMap<String, Arc<jsonschema::Validator>>,
    subscriptions: HashMap<String, Vec<crate::events::SubscriptionId>>,
    /// Host-kept labels by context (see [`labels`]).
    labels: HashMap<String, Vec<String>>,
    revision: u64,
    next_id: u64,
}

struct Shared {
    store: Store,
    bus: EventBus,
    clock: HybridClock,
    config: ContextConfig,
    inner: Mutex<Inner>,
    trust: std::sync::RwLock<Option<TrustSource>>,
    audit: std::sync::RwLock<Option<crate::audit::AuditLog>>,
    labels_generation: std::sync::atomic::AtomicU64,
}

/// Where the service learns an agent's current trust level (for shares that require one).
pub type TrustSource = Arc<dyn Fn(&str) -> Option<crate::security::TrustLevel> + Send + Sync>;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The context store service (cheap to clone).
#[derive(Clone)]
pub struct ContextService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ContextService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextService").finish_non_exhaustive()
    }
}

type Op<T> = Box<
    dyn FnOnce(
            &Shared,
            &mut Inner,
            &mut WriteCtx<'_>,
        ) -> Result<Result<T, ContextError>, ContextError>
        + Send,
>;

fn compile_schema(id: &str, schema: &Value) -> Result<Arc<jsonschema::Validator>, ContextError> {
    jsonschema::validator_for(schema)
        .map(Arc::new)
        .map_err(|e| {
            ContextError::invalid(
                "schema",
                format!("context `{id}`: not a valid JSON schema: {e}"),
            )
        })
}

fn schema_check(v: &jsonschema::Validator) -> impl Fn(&Value) -> Result<(), String> + '_ {
    move |doc| {
        let errors: Vec<String> = v
            .iter_errors(doc)
            .take(5)
            .map(|e| format!("{} (at `{}`)", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl ContextService {
    /// Opens the service over a store and event bus, loading the hot tier.
    pub async fn open(
        store: Store,
        bus: EventBus,
        clock: Arc<dyn PhysicalClock>,
        config: ContextConfig,
    ) -> Result<Self, ContextError> {
        let blobs = store.blobs().clone();
        let loaded = store
            .read(move |conn| persist::load_all(conn, &blobs))
            .await?;
        let labels = store.read(labels::load_all).await?;
        let mut inner = Inner {
            labels,
            revision: loaded.revision,
            next_id: loaded.contexts.len() as u64 + 1,
            ..Inner::default()
        };
        for c in loaded.contexts {
            if let Some(schema) = &c.schema {
                inner
                    .schemas
                    .insert(c.id.clone(), compile_schema(&c.id, schema)?);
            }
            inner.contexts.insert(c.id.clone(), c);
        }
        for s in loaded.shares {
            inner
                .shares
                .entry(s.context_id.clone())
                .or_default()
                .insert(s.agent_id.clone(), s);
        }
        for a in loaded.agents {
            inner.agents.insert(a.agent_id.clone(), a);
        }
        Ok(ContextService {
            shared: Arc::new(Shared {
                clock: HybridClock::new(clock, loaded.hlc),
                store,
                bus,
                config,
                inner: Mutex::new(inner),
                trust: std::sync::RwLock::new(None),
                audit: std::sync::RwLock::new(None),
                labels_generation: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// The host's own documents (run state, outputs, checkpoints): creates `id` owned by the
    /// operator, or replaces its document when it exists.
    pub async fn put_as_operator(
        &self,
        id: &str,
        context_type: &str,
        doc: Value,
    ) -> Result<(), ContextError> {
        let created = self
            .create(
                OPERATOR,
                NewContext {
                    id: Some(id.to_string()),
                    context_type: context_type.to_string(),
                    doc: doc.clone(),
                    ..NewContext::default()
                },
            )
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(create_error) => match self.get(OPERATOR, id).await {
                Ok(view) => self
                    .write(OPERATOR, id, Change::Put(doc), Some(view.version))
                    .await
                    .map(|_| ()),
                Err(_) => Err(create_error),
            },
        }
    }

    /// `decryptContextFromAgent`: opens version `version` of context `id` as stored at rest,
    /// with the data key `agent` holds (its wrapped copy, unwrapped with its own key) rather
    /// than the operator's. Fails when the store is not encrypted, or when the agent holds no
    /// key for that version: an agent whose share was revoked cannot open later versions.
    pub async fn decrypt_context_from_agent(
        &self,
        agent: &str,
        id: &str,
        version: u64,
    ) -> Result<Value, ContextError> {
        let blobs = self.shared.store.blobs().clone();
        let (id2, agent2) = (id.to_string(), agent.to_string());
        let r = self
            .shared
            .store
            .read(move |conn| {
                let keys = persist::load_keys(conn, &id2)?;
                let bytes = persist::load_version_bytes(conn, &blobs, &id2, version)?;
                let Some(ring) = blobs.keys() else {
                    return Ok(Err("this store does not encrypt values at rest".to_string()));
                };
                let Some(bytes) = bytes else {
                    return Ok(Err(format!("context `{id2}` has no version {version}")));
                };
                Ok(ring
                    .open_as(&agent2, &keys, &id2, &bytes)
                    .and_then(|plain| {
                        crate::store::decode_value(&plain).map_err(|e| e.to_string())
                    }))
            })
            .await?;
        r.map_err(|reason| ContextError::AccessDenied {
            agent: agent.to_string(),
            operation: "decrypt".into(),
            context: id.to_string(),
            reason,
        })
    }

    /// The event bus the service publishes on.
    pub fn bus(&self) -> &EventBus {
        &self.shared.bus
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Current physical time of the service's clock (unix ms).
    pub fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    async fn run<T: Send + 'static>(
        &self,
        context: Option<String>,
        op: Op<T>,
    ) -> Result<T, ContextError> {
        let shared = self.shared.clone();
        let result = self
            .shared
            .store
            .write_with_error(move |ctx: &mut WriteCtx<'_>| {
                let mut inner = shared.lock();
                op(&shared, &mut inner, ctx)
            })
            .await;
        match result {
            Ok(r) => r,
            Err(e @ ContextError::Store(_)) => {
                // The transaction did not commit: make the hot tier match the disk again.
                if let Some(id) = context {
                    self.reload(&id).await;
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn reload(&self, id: &str) {
        let blobs = self.shared.store.blobs().clone();
        let Ok(loaded) = self
            .shared
            .store
            .read(move |conn| persist::load_all(conn, &blobs))
            .await
        else {
            return;
        };
        let labels = self.shared.store.read(labels::load_all).await;
        let mut inner = self.shared.lock();
        // Its grants and labels too: a failed share, revoke or relabel leaves them as stored.
        let grants = loaded.shares.into_iter().filter(|s| s.context_id == id);
        inner.shares.insert(
            id.to_string(),
            grants.map(|s| (s.agent_id.clone(), s)).collect(),
        );
        if let Ok(mut labels) = labels {
            match labels.remove(id) {
                Some(l) => inner.labels.insert(id.to_string(), l),
                None => inner.labels.remove(id),
            };
        }
        match loaded.contexts.into_iter().find(|c| c.id == id) {
            Some(c) => {
                inner.contexts.insert(id.to_string(), c);
            }
            None => {
                inner.contexts.remove(id);
            }
        }
        inner.revision = loaded.revision;
    }

    // ---- agents ----------------------------------------------------------------------------

    /// Registers (or re-registers) an agent.
    pub async fn register_agent(
        &self,
        agent_id: &str,
        capabilities: AgentCapabilities,
    ) -> Result<(), ContextError> {
        if agent_id.is_empty() || agent_id == OPERATOR {
            return Err(ContextError::invalid(
                "agentId",
                format!("`{agent_id}` is reserved or empty"),
            ));
        }
        let id = agent_id.to_string();
        self.run(
            None,
            Box::new(move |sh, inner, ctx| {
                let now = sh.clock.now_ms();
                let reg = AgentRegistration {
                    agent_id: id.clone(),
                    capabilities,
                    registered_at: now,
                    last_heartbeat: now,
                    status: AgentConnection::Active,
                };
                persist::upsert_agent(ctx.tx(), &reg)?;
                sh.bus.stage(
                    ctx,
                    vec![
                        NewEvent::new(EventType::AgentRegistered)
                            .agent(&id)
                            .data(json!({"capabilities": reg.capabilities})),
                    ],
                )?;
                inner.agents.insert(id, reg);
                Ok(Ok(()))
            }),
        )
        .await
    }

    /// Unregisters an agent and ends its subscriptions.
    pub async fn unregister_agent(&self, agent_id: &str) -> Result<(), ContextError> {
        let id = agent_id.to_string();
        let subs = self
            .run(
                None,
                Box::new(move |sh, inner, ctx| {
                    if inner.agents.remove(&id).is_none() {
                        return Ok(Err(ContextError::UnknownAgent(id)));
                    }
                    persist::delete_agent(ctx.tx(), &id)?;
                    ctx.tx()
                        .execute("DELETE FROM subscriptions WHERE agent_id = ?1", [&id])
                        .map_err(StoreError::from)?;
                    // Shares die with the agent, so that a later agent with the same id inherits
                    // nothing; with encryption at rest each such context's data key rotates
                    // (as on a revoke), so its wrapped copy opens no later value.
                    let shared_with: Vec<String> = ctx
                        .tx()
                        .prepare(
                            "SELECT context_id FROM shares WHERE agent_id = ?1 ORDER BY context_id",
                        )
                        .and_then(|mut st| {
                            st.query_map([&id], |r| r.get(0))?.collect::<Result<_, _>>()
                        })
                        .map_err(StoreError::from)?;
                    for cid in &shared_with {
                        persist::delete_share(ctx.tx(), ctx.blobs(), cid, &id)?;
                    }
                    ctx.tx()
                        .execute("DELETE FROM shares WHERE agent_id = ?1", [&id])
                        .map_err(StoreError::from)?;
                    for (cid, m) in inner.shares.iter_mut() {
                        if let Some(gone) = m.remove(&id) {
                            let reason =
                                format!("grant of `{id}` removed: the agent was unregistered");
                            let entry = audit::entry(OPERATOR, cid, "unregister", Record, reason);
                            let details = json!({"target": id, "grantedBy": gone.granted_by});
                            audit::record(sh, None, entry.details(details))?;
                        }
                    }
                    sh.bus.stage(
                        ctx,
                        vec![NewEvent::new(EventType::AgentUnregistered).agent(&id)],
                    )?;
                    Ok(Ok(inner.subscriptions.remove(&id).unwrap_or_default()))
                }),
            )
            .await?;
        for s in subs {
            self.shared.bus.unsubscribe(s);
        }
        Ok(())
    }

    /// Registered agents, sorted by id.
    pub fn registered_agents(&self) -> Vec<AgentRegistration> {
        let inner = self.shared.lock();
        let mut v: Vec<_> = inner.agents.values().cloned().collect();
        v.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        v
    }

    /// Records a heartbeat (reconnecting a disconnected agent).
    pub async fn heartbeat(&self, agent_id: &str) -> Result<(), ContextError> {
        let id = agent_id.to_string();
        self.run(
            None,
            Box::new(move |sh, inner, ctx| {
                let Some(reg) = inner.agents.get(&id) else {
                    return Ok(Err(ContextError::UnknownAgent(id)));
                };
                let mut reg = reg.clone();
                reg.last_heartbeat = sh.clock.now_ms();
                reg.status = AgentConnection::Active;
                persist::upsert_agent(ctx.tx(), &reg)?;
                inner.agents.insert(id, reg);
                Ok(Ok(()))
            }),
        )
        .await
    }

    /// Heartbeats `agent` when its last heartbeat is older than half the timeout (so an agent
    /// that keeps calling stays connected without a durable write per call).
    pub async fn touch(&self, agent: &str) -> Result<(), ContextError> {
        let stale = {
            let inner = self.shared.lock();
            let half = self.shared.config.heartbeat_timeout_ms / 2;
            let now = self.shared.clock.now_ms();
            inner.agents.get(agent).is_some_and(|a| {
                a.status == AgentConnection::Disconnected
                    || now.saturating_sub(a.last_heartbeat) > half
            })
        };
        if stale {
            self.heartbeat(agent).await
        } else {
            Ok(())
        }
    }

    /// Marks agents whose heartbeat is older than the timeout as disconnected and cleans up
    /// their subscriptions; returns their ids. Access checks also treat such agents as
    /// disconnected without waiting for this to run.
    pub async fn sweep_disconnected(&self) -> Result<Vec<String>, ContextError> {
        let (gone, subs) = self
            .run(
                None,
                Box::new(move |sh, inner, ctx| {
                    let now = sh.clock.now_ms();
                    let timeout = sh.config.heartbeat_timeout_ms;
                    let mut gone = Vec::new();
                    let mut subs = Vec::new();
                    let mut ids: Vec<String> = inner
                        .agents
                        .values()
                        .filter(|a| {
                            a.status == AgentConnection::Active
                                && now.saturating_sub(a.last_heartbeat) > timeout
                        })
                        .map(|a| a.agent_id.clone())
                        .collect();
                    ids.sort();
                    let mut events = Vec::new();
                    for id in ids {
                        let mut reg = inner.agents[&id].clone();
                        reg.status = AgentConnection::Disconnected;
                        persist::upsert_agent(ctx.tx(), &reg)?;
                        ctx.tx()
                            .execute("DELETE FROM subscriptions WHERE agent_id = ?1", [&id])
                            .map_err(StoreError::from)?;
                        events.push(
                            NewEvent::new(EventType::AgentDisconnected)
                                .agent(&id)
                                .data(json!({"lastHeartbeat": reg.last_heartbeat})),
                        );
                        subs.extend(inner.subscriptions.remove(&id).unwrap_or_default());
                        inner.agents.insert(id.clone(), reg);
                        gone.push(id);
                    }
                    if !events.is_empty() {
                        sh.bus.stage(ctx, events)?;
                    }
                    Ok(Ok((gone, subs)))
                }),
            )
            .await?;
        for s in subs {
            self.shared.bus.unsubscribe(s);
        }
        Ok(gone)
    }

    /// Runs [`sweep_disconnected`](Self::sweep_disconnected) every `every` until the service
    /// is dropped.
    pub fn spawn_heartbeat_sweeper(
        &self,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let service = ContextService { shared };
                if let Err(e) = service.sweep_disconnected().await {
                    tracing::warn!(error = %e, "heartbeat sweep failed");
                }
            }
        })
    }

    // ---- contexts --------------------------------------------------------------------------

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

    fn check_size(&self, doc: &Value) -> Result<(), ContextError> {
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

    /// Reads a context (emits an `accessed` event).
    pub async fn get(&self, agent: &str, id: &str) -> Result<ContextView, ContextError> {
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
                // Reads are events too; the reader does not wait for that one to be durable.
                let store = self.shared.store.clone();
                let shared = self.shared.clone();
                let (agent, id2, version) = (agent.to_string(), id.to_string(), view.version);
                tokio::spawn(async move {
                    let r = store
                        .write(move |ctx| {
                            shared.bus.stage(
                                ctx,
                                vec![
                                    NewEvent::new(EventType::Accessed)
                                        .context(&id2)
                                        .agent(&agent)
                                        .data(json!({"version": version})),
                                ],
                            )?;
                            Ok(())
                        })
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "recording an accessed event failed");
                    }
                });
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
                    let inner = self.shared.lock();
                    inner
                        .contexts
                        .get(id)
                        .filter(|c| c.version == b)
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
                    return Ok(Err(ContextError::NotFound(id)));
                };
                if let Err(reason) = Self::check(sh, inner, &agent, state, Permission::Write) {
                    return Ok(Err(Self::deny(sh, ctx, &agent, "write", &id, reason)?));
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

    fn commit_write(
        sh: &Shared,
        inner: &mut Inner,
        ctx: &mut WriteCtx<'_>,
        id: &str,
        w: Write,
    ) -> Result<Result<WriteResult, ContextError>, ContextError> {
        let state = inner.contexts.get(id).expect("caller checked").clone();
        let now = sh.clock.now_ms();
        let at = Stamp {
            hlc: sh.clock.tick(),
            revision: inner.revision + 1,
            now_ms: now,
        };
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
                Ok(Err(ContextError::Refused {
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
                Ok(Ok(result))
            }
        }
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

    // ---- history, conflicts ----------------------------------------------------------------

    /// Versions of a context, newest first (at most `limit`).
    pub async fn history(
        &self,
        agent: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<ContextVersion>, ContextError> {
        self.read_check(agent, id)?;
        let (blobs, id) = (self.shared.store.blobs().clone(), id.to_string());
        Ok(self
            .shared
            .store
            .read(move |conn| persist::load_versions(conn, &blobs, &id, limit))
            .await?)
    }

    /// Conflicts recorded for a context, oldest first.
    pub async fn conflicts(&self, agent: &str, id: &str) -> Result<Vec<Conflict>, ContextError> {
        self.read_check(agent, id)?;
        let id = id.to_string();
        let blobs = self.shared.store.blobs().clone();
        Ok(self
            .shared
            .store
            .read(move |conn| persist::load_conflicts(conn, &blobs, &id))
            .await?)
    }

    /// Commits a new version whose content equals `version` (history is never rewritten).
    pub async fn rollback(
        &self,
        agent: &str,
        id: &str,
        version: u64,
    ) -> Result<WriteResult, ContextError> {
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
                    return Ok(Err(ContextError::NotFound(id)));
                };
                if let Err(reason) = Self::check(sh, inner, &agent, state, Permission::Write) {
                    return Ok(Err(Self::deny(sh, ctx, &agent, "roll back", &id, reason)?));
                }
                let changes = patch::diff(&state.doc, &old)
                    .map_err(|e| ContextError::invalid("version", e.to_string()))?;
                let w = Write {
                    agent: agent.clone(),
                    base_version: Some(state.version),
                    changes,
                    op: "rollback",
                };
                Self::commit_write(sh, inner, ctx, &id, w)
            }),
        )
        .await
    }

    /// Resolves a context in `conflict` state.
    pub async fn resolve(
        &self,
        agent: &str,
        id: &str,
        choice: ResolveChoice,
    ) -> Result<WriteResult, ContextError> {
        let (agent, id) = (agent.to_string(), id.to_string());
        self.run(Some(id.clone()), Box::new(move |sh, inner, ctx| {
            let state = match Self::authorized(sh, inner, ctx, &agent, &id, Permission::Write, "resolve")? {
                Ok(state) => state,
                Err(e) => return Ok(Err(e)),
            };
            let now = sh.clock.now_ms();
            let at = Stamp { hlc: sh.clock.tick(), revision: inner.revision + 1, now_ms: now };
            let (next, version, chosen) = match engine::resolve(&state, &agent, &choice, at) {
                Ok(r) => r,
                Err(message) => return Ok(Err(ContextError::invalid("resolution", message))),
            };
            if let Some(v) = inner.schemas.get(&id)
                && let Err(message) = schema_check(v)(&next.doc)
            {
                return Ok(Err(ContextError::Refused { context: id, refusal: Refusal::Schema(message), conflict: None }));
            }
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
            Ok(Ok(r))
        }))
        .await
    }

    /// Merges contexts into a new one owned by `agent`: objects key by key, later contexts in
    /// the list winning where two disagree; every disagreement is reported as a conflict.
    pub async fn merge_contexts(
        &self,
        agent: &str,
        ids: &[String],
        into: NewContext,
    ) -> Result<WriteResult, ContextError> {
        if ids.len() < 2 {
            return Err(ContextError::invalid(
                "contexts",
                "name at least two contexts to merge",
            ));
        }
        let mut docs = Vec::new();
        for id in ids {
            docs.push(self.get(agent, id).await?);
        }
        let mut merged = Value::Null;
        let mut origin: BTreeMap<String, (String, Value)> = BTreeMap::new();
        let mut conflicts = Vec::new();
        let now = self.shared.clock.now_ms();
        for view in &docs {
            for c in patch::diff(&empty_like(&view.doc), &view.doc).unwrap_or_default() {
                let value = c.value.clone().unwrap_or(Value::Null);
                if let Some((other, prev)) = origin.get(&c.path)
                    && prev != &value
                {
                    let mut agent_values = BTreeMap::new();
                    agent_values.insert(other.clone(), prev.clone());
                    agent_values.insert(view.id.clone(), value.clone());
                    conflicts.push(Conflict {
                        id: 0,
                        context_id: view.id.clone(),
                        field: c.path.clone(),
                        conflict_type: ConflictType::FieldModification,
                        severity: ConflictSeverity::Low,
                        agent_values,
                        detected_at: now,
                        resolution: Some(ConflictOutcome {
                            strategy: ConflictResolution::Merge,
                            resolved_value: value.clone(),
                            resolved_by: "system".into(),
                            resolved_at: now,
                        }),
                    });
                }
                origin.insert(c.path.clone(), (view.id.clone(), value));
                patch::apply(&mut merged, &c)
                    .map_err(|e| ContextError::invalid("contexts", e.to_string()))?;
            }
        }
        let mut into = into;
        into.doc = merged;
        let mut result = self.create(agent, into).await?;
        if !conflicts.is_empty() {
            let shared = self.shared.clone();
            let agent = agent.to_string();
            let recorded = self
                .shared
                .store
                .write(move |ctx| {
                    let mut events = Vec::new();
                    for c in &mut conflicts {
                        c.id = persist::insert_conflict(ctx.tx(), ctx.blobs(), c)?;
                        events.push(conflict_event(c, &agent, ctx.blobs()));
                    }
                    shared.bus.stage(ctx, events)?;
                    Ok(conflicts)
                })
                .await?;
            result.conflicts = recorded;
        }
        Ok(result)
    }

    /// The authoritative state of a context and its unresolved conflicts.
    pub async fn synchronize(&self, agent: &str, id: &str) -> Result<SyncResult, ContextError> {
        let view = self.get(agent, id).await?;
        let conflicts = self.conflicts(agent, id).await?;
        Ok(SyncResult {
            context_id: view.id,
            version: view.version,
            status: view.status,
            conflicts: conflicts
                .into_iter()
                .filter(|c| c.resolution.is_none())
                .collect(),
            success: true,
            error: None,
        })
    }

    /// [`synchronize`](Self::synchronize) for many contexts; one failing does not stop the others.
    pub async fn batch_sync(&self, agent: &str, ids: &[String]) -> Vec<SyncResult> {
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        for id in ids {
            out.push(match self.synchronize(agent, id).await {
                Ok(r) => r,
                Err(e) => SyncResult {
                    context_id: id.clone(),
                    version: 0,
                    status: ContextStatus::Active,
                    conflicts: Vec::new(),
                    success: false,
                    error: Some(e.to_string()),
                },
            });
        }
        // One `sync` event summarizes the batch (the seeds' SyncSummary).
        let summary = json!({
            "totalContexts": out.len(),
            "syncedContexts": out.iter().filter(|r| r.success).count(),
            "conflicts": out.iter().map(|r| r.conflicts.len()).sum::<usize>(),
            "totalTimeUs": started.elapsed().as_micros() as u64,
        });
        let event = NewEvent::new(EventType::Sync).agent(agent).data(summary);
        if let Err(e) = self.shared.bus.publish(event).await {
            tracing::warn!(error = %e, "recording a sync event failed");
        }
        out
    }

    // ---- subscriptions ---------------------------------------------------------------------

    /// Subscribes `agent` to the events of a context it can read, from now or resuming after a
    /// sequence number.
    pub async fn subscribe(
        &self,
        agent: &str,
        id: &str,
        from: SubscribeFrom,
    ) -> Result<Subscription, ContextError> {
        self.subscribe_to(agent, &[id.to_string()], Vec::new(), from)
            .await
    }

    /// Subscribes `agent` to the events (optionally of some types only) of contexts it can
    /// read. Each context is checked (a refusal is recorded); the subscription is registered so
    /// that unregistering or disconnecting the agent ends it.
    pub async fn subscribe_to(
        &self,
        agent: &str,
        ids: &[String],
        event_types: Vec<EventType>,
        from: SubscribeFrom,
    ) -> Result<Subscription, ContextError> {
        if ids.is_empty() {
            return Err(ContextError::invalid(
                "contextIds",
                "name at least one context",
            ));
        }
        for id in ids {
            self.authorize(agent, id, Permission::Read, "subscribe to")
                .await?;
        }
        let filter = EventFilter {
            context_ids: ids.to_vec(),
            event_types,
            ..EventFilter::default()
        };
        let sub = self.shared.bus.subscribe(filter.clone(), from)?;
        let (sub_id, agent_s) = (sub.id(), agent.to_string());
        let filter_text = serde_json::to_string(&filter).unwrap_or_default();
        let now = self.now_ms();
        let last = sub.last_seq();
        self.run(None, Box::new(move |_sh, inner, ctx| {
            ctx.tx()
                .execute(
                    "INSERT OR REPLACE INTO subscriptions (id, agent_id, filter, last_seq, created_at, active) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                    rusqlite::params![sub_id.to_string(), agent_s, filter_text, last as i64, now as i64],
                )
                .map_err(StoreError::from)?;
            inner.subscriptions.entry(agent_s).or_default().push(sub_id);
            Ok(Ok(()))
        }))
        .await?;
        Ok(sub)
    }

    /// Ends a subscription made with [`subscribe_to`](Self::subscribe_to).
    pub async fn unsubscribe(
        &self,
        agent: &str,
        id: crate::events::SubscriptionId,
    ) -> Result<(), ContextError> {
        self.shared.bus.unsubscribe(id);
        let agent = agent.to_string();
        self.run(
            None,
            Box::new(move |_sh, inner, ctx| {
                ctx.tx()
                    .execute("DELETE FROM subscriptions WHERE id = ?1", [id.to_string()])
                    .map_err(StoreError::from)?;
                if let Some(v) = inner.subscriptions.get_mut(&agent) {
                    v.retain(|s| *s != id);
                }
                Ok(Ok(()))
            }),
        )
        .await
    }
}

/// `{}` for objects (so their fields diff one by one), `null` otherwise.
fn empty_like(doc: &Value) -> Value {
    if doc.is_object() {
        json!({})
    } else {
        Value::Null
    }
}

/// A conflict event. With encryption at rest the competing values stay out of the event log
/// (only the agents are named); `conflicts` has them.
fn conflict_event(c: &Conflict, agent: &str, blobs: &crate::store::BlobStore) -> NewEvent {
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

fn result_of(s: &ContextState, new_version: bool, conflicts: Vec<Conflict>) -> WriteResult {
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

#[cfg(test)]
mod tests;
