//! The service itself: its state (the hot tier), opening, and how an operation runs on the
//! store's writer thread.

use super::hot::{Committed, Staged, Working};
use super::{
    Change, ContextConfig, ContextError, HybridClock, Inner, NewContext, OPERATOR, PhysicalClock,
    Share, Stamp, labels, persist,
};
use crate::events::EventBus;
use crate::store::{Store, StoreError, WriteCtx, WriteMode};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(super) struct Shared {
    pub(super) store: Store,
    pub(super) bus: EventBus,
    pub(super) clock: HybridClock,
    pub(super) config: ContextConfig,
    /// What the current batch staged (see [`hot`](super::hot)); writer thread only.
    pub(super) working: Mutex<Working>,
    /// The hot tier as committed: what readers see.
    pub(super) committed: RwLock<Committed>,
    pub(super) trust: std::sync::RwLock<Option<TrustSource>>,
    pub(super) audit: std::sync::RwLock<Option<crate::audit::AuditLog>>,
    pub(super) attributes_generation: std::sync::atomic::AtomicU64,
    /// What is known of live agents in memory only (see [`Runtime`]).
    pub(super) runtime: Mutex<Runtime>,
    /// Cluster mode: where contexts are replicated ([`replica`](super::replica)).
    pub(super) replication: RwLock<Option<Arc<super::replica::Replication>>>,
}

/// What the service keeps about live agents in memory only: never staged, never stored,
/// gone with the process (agent ids are not reused across host processes).
#[derive(Default)]
pub(super) struct Runtime {
    /// Agents blocked in a host call that counts as presence (see `agents`), how many times.
    pub(super) present: HashMap<String, u32>,
    /// The time (unix ms) of each agent's last host call, when later than its stored
    /// heartbeat: host calls count as heartbeats without a durable write.
    pub(super) last_seen: HashMap<String, u64>,
    /// Live subscriptions by agent, ended when the agent is unregistered or swept.
    pub(super) subscriptions: HashMap<String, Vec<crate::events::SubscriptionId>>,
}

/// Where the service learns an agent's current trust level (for shares that require one).
pub type TrustSource = Arc<dyn Fn(&str) -> Option<crate::security::TrustLevel> + Send + Sync>;

impl Shared {
    /// The committed hot tier, for readers: only changes whose transaction has committed.
    /// Not from inside an operation: it holds this lock while it runs (use its `Inner`).
    pub(super) fn committed(&self) -> RwLockReadGuard<'_, Committed> {
        self.committed.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The in-memory record of live agents ([`Runtime`]). Never held across an await.
    pub(super) fn runtime(&self) -> std::sync::MutexGuard<'_, Runtime> {
        self.runtime.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When `agent` last showed life: the later of its stored heartbeat and its last host
    /// call (unix ms).
    pub(super) fn last_alive(&self, agent: &super::AgentRegistration) -> u64 {
        let seen = self.runtime().last_seen.get(&agent.agent_id).copied();
        agent.last_heartbeat.max(seen.unwrap_or(0))
    }

    /// Whether `agent` is blocked in a host call that counts as presence.
    pub(super) fn is_present(&self, agent: &str) -> bool {
        self.runtime().present.contains_key(agent)
    }

    /// The committed hot tier, to change (publishing, putting back loaded documents).
    pub(super) fn committed_mut(&self) -> RwLockWriteGuard<'_, Committed> {
        self.committed.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The stamp of the next change an operation makes: the time (unix ms), a fresh HLC
    /// tick, and the store-wide revision after the working copy's.
    pub(super) fn stamp(&self, inner: &Inner<'_>) -> Stamp {
        let now_ms = self.clock.now_ms();
        Stamp {
            hlc: self.clock.tick(),
            revision: inner.revision + 1,
            now_ms,
        }
    }

    /// Applies an operation's changes to the committed hot tier (an after-commit hook), and
    /// drops the batch's overlay: every operation of the batch has run, and each publishes
    /// its own changes.
    fn publish(&self, staged: Option<Staged>) {
        self.working
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .published();
        let Some(staged) = staged else { return };
        let attributes = self
            .committed_mut()
            .publish(staged, self.config.hot_tier_bytes);
        if attributes {
            self.attributes_generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The context store service (cheap to clone).
#[derive(Clone)]
pub struct ContextService {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for ContextService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextService").finish_non_exhaustive()
    }
}

pub(super) type Op<T> =
    Box<dyn FnOnce(&Shared, &mut Inner<'_>, &mut WriteCtx<'_>) -> Result<T, OpError> + Send>;

/// How an operation that did not succeed ends.
#[derive(Debug)]
pub(super) enum OpError {
    /// What the operation wrote (a refusal's conflict record and event) commits; the caller
    /// is answered with the error.
    Committed(ContextError),
    /// The operation's writes are rolled back; the caller is answered with the error.
    RolledBack(ContextError),
}

impl From<ContextError> for OpError {
    fn from(e: ContextError) -> Self {
        OpError::RolledBack(e)
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::RolledBack(e.into())
    }
}

pub(super) fn compile_schema(
    id: &str,
    schema: &Value,
) -> Result<Arc<jsonschema::Validator>, ContextError> {
    jsonschema::validator_for(schema)
        .map(Arc::new)
        .map_err(|e| {
            ContextError::invalid(
                "schema",
                format!("context `{id}`: not a valid JSON schema: {e}"),
            )
        })
}

pub(super) fn schema_check(
    v: &jsonschema::Validator,
) -> impl Fn(&Value) -> Result<(), String> + '_ {
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
        let mut committed = Committed::new(loaded.revision);
        for (id, l) in labels {
            committed.labels.load(id, l);
        }
        for c in loaded.contexts {
            if let Some(schema) = &c.schema {
                let validator = compile_schema(&c.id, schema)?;
                committed.schemas.load(c.id.clone(), validator);
            }
            committed.contexts.load(c.id.clone(), c);
        }
        let mut shares: HashMap<String, BTreeMap<String, Share>> = HashMap::new();
        for s in loaded.shares {
            shares
                .entry(s.context_id.clone())
                .or_default()
                .insert(s.agent_id.clone(), s);
        }
        for (id, m) in shares {
            committed.shares.load(id, m);
        }
        for a in loaded.agents {
            committed.agents.load(a.agent_id.clone(), a);
        }
        let working = Working::new(committed.contexts.values().count() as u64 + 1);
        Ok(ContextService {
            shared: Arc::new(Shared {
                clock: HybridClock::new(clock, loaded.hlc),
                store,
                bus,
                config,
                committed: RwLock::new(committed),
                working: Mutex::new(working),
                trust: std::sync::RwLock::new(None),
                audit: std::sync::RwLock::new(None),
                attributes_generation: std::sync::atomic::AtomicU64::new(0),
                runtime: Mutex::new(Runtime::default()),
                replication: RwLock::new(None),
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

    /// Runs `op` on the writer thread, inside the group-commit transaction, against the hot
    /// tier as the batch staged it. What it changes is published to readers once the
    /// transaction has committed, before its events are announced; if it rolls back (or
    /// panics), its changes are undone; if its batch fails to commit, they are dropped.
    /// `context` names the context it is about: its document is loaded first if the hot tier
    /// evicted it.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        context: Option<String>,
        op: Op<T>,
    ) -> Result<T, ContextError> {
        self.run_with(context, op, WriteMode::default()).await
    }

    /// [`run`](Self::run) as `mode` says: with `self_guarded`, for an operation that opens
    /// its own savepoint ([`WriteCtx::guard`]) before any change it may have to undo
    /// ([`Store::write_self_guarded`]); with `may_lead`, committed by the calling thread
    /// when the writer is idle ([`Store::write_with`]).
    pub(super) async fn run_with<T: Send + 'static>(
        &self,
        context: Option<String>,
        op: Op<T>,
        mode: WriteMode,
    ) -> Result<T, ContextError> {
        let replication = self.replication();
        let result = self.run_inner(context, op, mode, replication.clone()).await;
        if let (Err(ContextError::ReplicaChanged { context }), Some(r)) = (&result, &replication) {
            self.catch_up(r, context).await?;
        }
        result
    }

    /// [`run`](Self::run) for an operation that must not be stored in the replica (an
    /// entry being installed from it).
    pub(super) async fn run_unreplicated<T: Send + 'static>(
        &self,
        context: Option<String>,
        op: Op<T>,
    ) -> Result<T, ContextError> {
        self.run_inner(context, op, WriteMode::default(), None)
            .await
    }

    async fn run_inner<T: Send + 'static>(
        &self,
        context: Option<String>,
        op: Op<T>,
        mut mode: WriteMode,
        replication: Option<Arc<super::replica::Replication>>,
    ) -> Result<T, ContextError> {
        if let Some(r) = &replication {
            // The writer thread waits for the replica (never a caller's thread, which may be
            // the runtime's), inside a savepoint the store rolls back when it refuses.
            mode = WriteMode::default();
            if !r.replica.available() {
                return Err(ContextError::Cluster {
                    context: context.clone().unwrap_or_default(),
                    message: "the cluster's NATS server cannot be reached now; nothing was \
                              committed (cluster work resumes when it reconnects)"
                        .into(),
                });
            }
        }
        let shared = self.shared.clone();
        let about = context.clone();
        let op = move |ctx: &mut WriteCtx<'_>| {
            let mut working = shared.working.lock().unwrap_or_else(|p| p.into_inner());
            let committed = shared.committed();
            let mut inner = working.begin(ctx.batch(), &committed);
            // Registered first, so that what the operation changed is published before
            // the hooks it registers (its events) run: whoever is told of a change can
            // read it.
            let staged: Arc<Mutex<Option<Staged>>> = Arc::default();
            ctx.after_commit({
                let (shared, staged) = (shared.clone(), staged.clone());
                move || {
                    let staged = staged.lock().unwrap_or_else(|p| p.into_inner()).take();
                    shared.publish(staged);
                }
            });
            if let Some(id) = &about {
                let loaded =
                    inner.ensure_resident(id, || persist::load_context(ctx.tx(), ctx.blobs(), id));
                if let Err(e) = loaded {
                    inner.undo();
                    return Err(e.into());
                }
            }
            let ran = catch_unwind(AssertUnwindSafe(|| op(&shared, &mut inner, ctx)));
            let answer = match ran {
                Err(panic) => {
                    inner.undo();
                    drop(committed);
                    drop(working);
                    resume_unwind(panic);
                }
                Ok(Err(OpError::RolledBack(e))) => {
                    inner.undo();
                    return Err(e);
                }
                Ok(Ok(value)) => Ok(value),
                Ok(Err(OpError::Committed(e))) => Err(e),
            };
            if let Some(r) = &replication
                && let Err(e) = super::replica::publish(r, &mut inner, ctx)
            {
                inner.undo();
                return Err(e);
            }
            let changes = inner.finish();
            drop(committed);
            drop(working);
            if !changes.is_empty() {
                *staged.lock().unwrap_or_else(|p| p.into_inner()) = Some(changes);
            }
            Ok(answer)
        };
        let result = self.shared.store.write_with(mode, op).await;
        if let Err(e @ ContextError::Store(_)) = &result {
            tracing::debug!(context = ?context, error = %e, "a context operation did not commit");
        }
        result?
    }
}
