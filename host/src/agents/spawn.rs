//! The host as agent factory: validate a spec, spawn an agent into its own Store, terminate
//! it, change its trust level.

use super::failure;
use super::lifecycle::Deadline;
use super::registry::{AgentEntry, Registration, Registry};
use super::{AgentDescription, AgentReport, AgentStatus, SubAgent, TaskRequest};
use crate::engine::{HostConfig, LoadedComponent, Runtime};
use crate::error::{AgentFailure, Error, Result};
use crate::interfaces::AgentState;
use crate::interfaces::WitAgentType;
use crate::sandbox::{AgentShared, Counters, LazySemaphore};
use crate::spec::{AgentType, SpecCeilings, SubAgentSpecification};
use crate::tools::ToolRegistry;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::Store;

/// The host: one engine and linker, the tools, and the registry of live agents.
pub struct AgentHost {
    context: Option<crate::context::ContextService>,
    /// The heartbeat sweep of the context store, while this host lives.
    sweeper: Option<crate::context::HeartbeatSweeper>,
    access: Option<Arc<crate::security::AccessControl>>,
    llm: Option<Arc<crate::llm::LlmBroker>>,
    runtime: Arc<Runtime>,
    tools: Arc<ToolRegistry>,
    agents: Registry,
    next_id: AtomicU64,
    /// Random per host process, so that ids never repeat across runs sharing a data directory
    /// (a new agent must not inherit an earlier one's shares).
    id_prefix: String,
}

impl AgentHost {
    /// A host with the built-in tools.
    pub fn new(config: HostConfig) -> Result<Self> {
        Self::with_tools(config, ToolRegistry::with_builtins())
    }

    /// A host with the given tools (start from [`ToolRegistry::with_builtins`] to keep them).
    pub fn with_tools(config: HostConfig, tools: ToolRegistry) -> Result<Self> {
        Ok(AgentHost {
            context: None,
            sweeper: None,
            access: None,
            llm: None,
            runtime: Arc::new(Runtime::new(config)?),
            tools: Arc::new(tools),
            agents: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            id_prefix: crate::model::random_hex(6),
        })
    }

    /// Gives agents the context store and event bus: every sub-agent is registered in it when
    /// spawned (under its host-assigned id) and unregistered when it goes away, and, when
    /// called inside a tokio runtime, the store's heartbeat sweep runs until this host drops
    /// ([`ContextService::start_heartbeat_sweeper`](crate::context::ContextService::start_heartbeat_sweeper)).
    pub fn with_context(mut self, context: crate::context::ContextService) -> Self {
        // Shares that require a trust level ask the host's registry at every check.
        let agents = Arc::downgrade(&self.agents);
        context.set_trust_source(Arc::new(move |id: &str| {
            let agents = agents.upgrade()?;
            let agents = agents.lock().ok()?;
            agents
                .get(id)
                .map(|e| crate::security::TrustLevel::from_u8(e.trust.load(Ordering::Relaxed)))
        }));
        // Grant changes and sharing refusals go to the host's audit log, whichever is attached
        // first.
        if let Some(audit) = self.access.as_ref().and_then(|a| a.audit()) {
            context.set_audit(audit.clone());
        }
        // Agents that stop heartbeating are marked disconnected while this host lives (when
        // made inside a tokio runtime, as a host that runs agents is).
        self.sweeper = tokio::runtime::Handle::try_current()
            .is_ok()
            .then(|| context.start_heartbeat_sweeper());
        self.context = Some(context);
        self
    }

    /// The context store, if attached.
    pub fn context(&self) -> Option<&crate::context::ContextService> {
        self.context.as_ref()
    }

    /// Puts every host call of every agent through `access` (policies and audit log): see
    /// [`crate::security`]. Spawns, terminations, trust changes and limit violations are audited.
    pub fn with_access(mut self, access: Arc<crate::security::AccessControl>) -> Self {
        if let (Some(context), Some(audit)) = (&self.context, access.audit()) {
            context.set_audit(audit.clone());
        }
        self.access = Some(access);
        self
    }

    /// Gives agents `qi:agent/llm` through `broker` (without one every call fails with
    /// `unavailable`: no models are configured).
    pub fn with_llm(mut self, broker: Arc<crate::llm::LlmBroker>) -> Self {
        self.llm = Some(broker);
        self
    }

    /// The model broker, if attached.
    pub fn llm(&self) -> Option<&Arc<crate::llm::LlmBroker>> {
        self.llm.as_ref()
    }

    /// The access gate, if attached.
    pub fn access(&self) -> Option<&Arc<crate::security::AccessControl>> {
        self.access.as_ref()
    }

    /// Changes a live agent's trust level (`updateAgentTrustLevel`); its next host call is
    /// decided with the new level. Audited; a change the audit log cannot record is refused
    /// (`Error::System`) and the level stays as it was.
    pub fn update_agent_trust_level(
        &self,
        agent_id: &str,
        level: crate::security::TrustLevel,
        reason: &str,
    ) -> Result<()> {
        let agents = self.agents.lock().expect("registry poisoned");
        let entry = agents
            .get(agent_id)
            .ok_or_else(|| Error::UnknownAgent(agent_id.to_string()))?;
        // Recorded first (fail-closed): a change the audit log cannot record is refused. The
        // registry lock is held, so no other change comes between the record and the swap.
        let old = crate::security::TrustLevel::from_u8(entry.trust.load(Ordering::Relaxed));
        if let Some(shared) = entry.shared.get() {
            shared
                .audit_or_refuse("trust", "update-trust-level", || {
                    (
                        format!("{} -> {}: {reason}", old.as_str(), level.as_str()),
                        serde_json::json!({"from": old, "to": level}),
                    )
                })
                .map_err(|unrecorded| Error::System(anyhow::anyhow!(unrecorded)))?;
        }
        entry.trust.store(level as u8, Ordering::Relaxed);
        Ok(())
    }

    /// A live agent's trust level.
    pub fn trust_level(&self, agent_id: &str) -> Option<crate::security::TrustLevel> {
        let agents = self.agents.lock().expect("registry poisoned");
        agents
            .get(agent_id)
            .map(|e| crate::security::TrustLevel::from_u8(e.trust.load(Ordering::Relaxed)))
    }

    /// The engine, linker and component cache.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The host's tools.
    pub fn tools(&self) -> &ToolRegistry {
        &self.tools
    }

    /// Loads (compiling or reading from the cache) a component file.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Arc<LoadedComponent>> {
        self.runtime.load_file(path.as_ref())
    }

    fn ceilings(&self) -> SpecCeilings {
        let c = self.runtime.config();
        SpecCeilings {
            max_memory_mb: c.max_memory_mb,
            max_execution_time_ms: c.max_execution_time_ms,
            max_output_bytes: c.max_output_bytes,
        }
    }

    /// Status of a live agent.
    pub fn status(&self, agent_id: &str) -> Option<AgentStatus> {
        let agents = self.agents.lock().expect("registry poisoned");
        agents
            .get(agent_id)
            .map(|e| *e.status.lock().expect("status lock poisoned"))
    }

    /// How many agents are live (spawned and not yet ended).
    pub fn live_count(&self) -> usize {
        self.agents.lock().expect("registry poisoned").len()
    }

    /// Live agents and their status, sorted by id.
    pub fn list(&self) -> Vec<(String, AgentStatus)> {
        let agents = self.agents.lock().expect("registry poisoned");
        let mut v: Vec<_> = agents
            .iter()
            .map(|(id, e)| {
                (
                    id.to_string(),
                    *e.status.lock().expect("status lock poisoned"),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Stops an agent at once, whatever it is doing: spinning, waiting in a host call or
    /// sleeping. Its run ends with [`AgentFailure::Terminated`].
    pub fn terminate(&self, agent_id: &str, reason: &str) -> Result<()> {
        let agents = self.agents.lock().expect("registry poisoned");
        let entry = agents
            .get(agent_id)
            .ok_or_else(|| Error::UnknownAgent(agent_id.to_string()))?;
        entry.terminate(reason);
        if let Some(shared) = entry.shared.get() {
            shared.audit("lifecycle", "terminate", || {
                (reason.to_string(), serde_json::Value::Null)
            });
        }
        Ok(())
    }

    /// Validates `spec`, instantiates the component in a fresh Store and asks `describe`.
    pub fn spawn<'a>(
        &'a self,
        component: &'a Arc<LoadedComponent>,
        spec: SubAgentSpecification,
    ) -> impl Future<Output = Result<SubAgent>> + 'a {
        // Not an `async fn` of its own: one state machine less to build and copy per spawn.
        self.spawn_with(component, spec, None)
    }

    /// [`spawn`](Self::spawn) for an agent that runs a subtask of a coordinated run: its `sync`
    /// calls go to the run's synchronization points as participant `sync.participant`.
    pub async fn spawn_with(
        &self,
        component: &Arc<LoadedComponent>,
        spec: SubAgentSpecification,
        sync: Option<crate::coord::sync::SyncHandle>,
    ) -> Result<SubAgent> {
        let overrides = spec.validate(&self.ceilings())?;
        if let Some(parent) = &spec.parent_agent_id
            && self
                .agents
                .lock()
                .expect("registry poisoned")
                .contains_key(parent.as_str())
        {
            return Err(Error::field(
                "parentAgentId",
                format!("`{parent}` is a sub-agent, and sub-agents cannot spawn sub-agents"),
            ));
        }
        let grants = crate::sandbox::resolve_grants(&spec).await?;
        let descriptors = crate::sandbox::descriptors::reserve(&spec, &grants, "the agent")?;
        let started = Instant::now();
        let time_limit = Duration::from_millis(spec.resource_limits.max_execution_time_ms);
        let deadline = started + time_limit;
        // The timer runs on tokio's clock, taken at the same moment: the same instant, except
        // that a test on paused tokio time can step it exactly.
        let timer_deadline = tokio::time::Instant::now() + time_limit;
        let id = format!(
            "agent-{}-{}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let key: Arc<str> = Arc::from(id.as_str());
        let trust = Arc::new(std::sync::atomic::AtomicU8::new(spec.trust_level as u8));
        let entry = Arc::new(AgentEntry::new(AgentStatus::Initializing, trust.clone()));
        {
            let mut agents = self.agents.lock().expect("registry poisoned");
            let limit = self.runtime.config().max_live_agents;
            if agents.len() >= limit as usize {
                return Err(Error::TooManyAgents { limit });
            }
            agents.insert(key.clone(), entry.clone());
        }
        let registration = Registration {
            id: key,
            agents: self.agents.clone(),
            context: self.context.clone(),
        };
        let gate_memo = crate::sandbox::gate::GateMemo::new(&id);
        let shared = Arc::new(AgentShared {
            id,
            stdio: Default::default(),
            operations: LazySemaphore::new(spec.resource_limits.max_concurrent_operations as usize),
            lookups: LazySemaphore::new(crate::wasi::sockets::lookup::MAX_LOOKUPS_IN_FLIGHT),
            spec,
            overrides,
            grants,
            counters: Counters::default(),
            started,
            deadline,
            violation: Mutex::new(None),
            call_log: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
            tools: self.tools.clone(),
            context: self.context.clone(),
            context_cache: Default::default(),
            sync,
            access: self.access.clone(),
            llm: self.llm.clone(),
            llm_seen: Mutex::new(HashMap::new()),
            trust,
            name: std::sync::OnceLock::new(),
            gate_memo,
        });
        // Set before the first await: from here on, a trust change or terminate is audited.
        let _ = entry.shared.set(shared.clone());
        if let Some(ctx) = &self.context {
            let id = &shared.id;
            ctx.register_agent(id, crate::context::AgentCapabilities::default())
                .await
                .map_err(|e| {
                    Error::System(anyhow::anyhow!(
                        "registering {id} in the context store: {e}"
                    ))
                })?;
        }
        let state = AgentState::new(shared.clone())
            .map_err(anyhow::Error::from)?
            .holding(descriptors);
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(shared.spec.fuel)
            .map_err(|e| Error::System(anyhow::Error::from(e).context("setting fuel")))?;
        // Bounds every guest-to-host transfer (one host call's arguments, the agent's output)
        // before wasmtime copies it; see `interfaces::limits`.
        store.set_hostcall_fuel(failure::hostcall_fuel(&shared));
        store
            .fuel_async_yield_interval(Some(shared.overrides.fuel_yield_interval))
            .map_err(|e| {
                Error::System(anyhow::Error::from(e).context("setting fuel yield interval"))
            })?;

        let mut agent = SubAgent {
            component: component.clone(),
            store,
            instance: None,
            description: None,
            shared,
            entry,
            deadline: Deadline::new(timer_deadline),
            max_wasm_stack: self.runtime.config().max_wasm_stack,
            _registration: registration,
        };
        let pre = component.pre.clone();
        let describing = agent.shared.clone();
        let spawned = agent
            .guarded(async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                // The answer is bounded before it is copied (see `MAX_DESCRIBE_BYTES`).
                let fuel = store.hostcall_fuel();
                store.set_hostcall_fuel(failure::DESCRIBE_TRANSFER_BYTES);
                let info = instance.call_describe(&mut *store).await;
                store.set_hostcall_fuel(fuel);
                match info {
                    Err(e) if failure::is_transfer_refusal(&e) => {
                        failure::describe_too_long(&describing, None);
                        Err(e)
                    }
                    info => Ok((instance, info?)),
                }
            })
            .await
            .and_then(|(instance, info)| {
                let bytes = info.name.len()
                    + info.version.len()
                    + info.description.len()
                    + info.capabilities.iter().map(String::len).sum::<usize>();
                if bytes > crate::interfaces::limits::MAX_DESCRIBE_BYTES {
                    return Err(failure::describe_too_long(&describing, Some(bytes)));
                }
                let description = describe(info);
                check_declared(&describing.spec, &description)?;
                Ok((instance, description))
            });
        match spawned {
            Ok((instance, description)) => {
                agent.instance = Some(instance);
                let _ = agent.shared.name.set(description.name.clone());
                // Fail-closed: an agent whose spawn cannot be recorded does not run.
                let recorded = agent.shared.audit_or_refuse("lifecycle", "spawn", || {
                    (
                        format!("{} {}", description.name, description.version),
                        serde_json::json!({
                            "component": agent.component.path.display().to_string(),
                            "isolation": agent.shared.spec.isolation_level,
                            "trust": agent.shared.spec.trust_level,
                            "capabilities": agent.shared.spec.capabilities,
                        }),
                    )
                });
                if let Err(unrecorded) = recorded {
                    agent.entry.set(AgentStatus::Failed);
                    return Err(Error::System(anyhow::anyhow!(unrecorded)));
                }
                agent.description = Some(description);
                agent.entry.set(AgentStatus::Ready);
                Ok(agent)
            }
            Err(failure) => {
                agent.entry.set(AgentStatus::Failed);
                let usage = agent.usage();
                agent.shared.audit("lifecycle", "spawn-failed", || (failure::summary(&failure), serde_json::json!({"fuel": usage.fuel_consumed, "hostCalls": usage.host_calls})));
                Err(Error::Spawn(failure, Box::new(usage)))
            }
        }
    }

    /// Spawns an agent for `spec` and runs `task` to the end. A failure of the agent is in the
    /// report; `Err` means the agent could not be spawned (bad spec, bad component).
    pub async fn run(
        &self,
        component: &Arc<LoadedComponent>,
        spec: SubAgentSpecification,
        task: TaskRequest,
    ) -> Result<AgentReport> {
        let agent = self.spawn(component, spec).await?;
        Ok(agent.run(task).await)
    }
}

fn describe(info: crate::interfaces::AgentInfo) -> AgentDescription {
    AgentDescription {
        name: info.name,
        version: info.version,
        agent_type: match info.agent_type {
            WitAgentType::Basic => AgentType::Basic,
            WitAgentType::DecisionCapable => AgentType::DecisionCapable,
            WitAgentType::Specialized => AgentType::Specialized,
        },
        capabilities: info.capabilities,
        description: info.description,
    }
}

/// The spec's `agentType` and `capabilities` against what the component declared. A mismatch
/// is found after guest code ran, so it is a spawn failure (with its receipt), in the
/// VALIDATION category.
fn check_declared(
    spec: &SubAgentSpecification,
    d: &AgentDescription,
) -> std::result::Result<(), AgentFailure> {
    let not_declared = |field: &str, message: String| AgentFailure::NotDeclared {
        field: field.to_string(),
        message,
    };
    if spec.agent_type != AgentType::Basic && spec.agent_type != d.agent_type {
        return Err(not_declared(
            "agentType",
            format!(
                "the spec asks for {:?} but component `{}` declares {:?}",
                spec.agent_type, d.name, d.agent_type
            ),
        ));
    }
    if let Some(missing) = spec
        .capabilities
        .iter()
        .find(|c| !d.capabilities.contains(c))
    {
        return Err(not_declared(
            "capabilities",
            format!(
                "component `{}` does not declare `{missing}` (it declares: {})",
                d.name,
                if d.capabilities.is_empty() {
                    "none".to_string()
                } else {
                    d.capabilities.join(", ")
                }
            ),
        ));
    }
    Ok(())
}
