//! The service itself: its state (the hot tier), opening, and how an operation runs on the
//! store's writer thread.

use super::*;

#[derive(Default)]
pub(super) struct Inner {
    pub(super) contexts: HashMap<String, ContextState>,
    pub(super) shares: HashMap<String, BTreeMap<String, Share>>,
    pub(super) agents: HashMap<String, AgentRegistration>,
    pub(super) schemas: HashMap<String, Arc<jsonschema::Validator>>,
    pub(super) subscriptions: HashMap<String, Vec<crate::events::SubscriptionId>>,
    /// Agents blocked in a host call that counts as presence (see `agents`), how many times.
    pub(super) present: HashMap<String, u32>,
    /// Host-kept labels by context (see [`labels`]).
    pub(super) labels: HashMap<String, Vec<String>>,
    pub(super) revision: u64,
    pub(super) next_id: u64,
}

pub(super) struct Shared {
    pub(super) store: Store,
    pub(super) bus: EventBus,
    pub(super) clock: HybridClock,
    pub(super) config: ContextConfig,
    pub(super) inner: Mutex<Inner>,
    pub(super) trust: std::sync::RwLock<Option<TrustSource>>,
    pub(super) audit: std::sync::RwLock<Option<crate::audit::AuditLog>>,
    pub(super) labels_generation: std::sync::atomic::AtomicU64,
}

/// Where the service learns an agent's current trust level (for shares that require one).
pub type TrustSource = Arc<dyn Fn(&str) -> Option<crate::security::TrustLevel> + Send + Sync>;

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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

pub(super) type Op<T> = Box<
    dyn FnOnce(
            &Shared,
            &mut Inner,
            &mut WriteCtx<'_>,
        ) -> Result<Result<T, ContextError>, ContextError>
        + Send,
>;

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

    pub(super) async fn run<T: Send + 'static>(
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

    pub(super) async fn reload(&self, id: &str) {
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
}
