//! Sub-agent factory and registry: validate a spec, spawn an agent into its own Store, run one
//! task, terminate, and report measured usage.
//!
//! Lifecycle: `initializing` (Store built, component instantiating) → `ready` (`describe`
//! answered) → `executing` (`run` in progress) → `completed` | `failed` | `terminated`.
//! Every agent runs exactly one task in a fresh instance, so nothing leaks from one task to the
//! next. A failing agent ends with an [`AgentFailure`]; the host and every other agent go on.

mod failure;

use crate::engine::{HostConfig, LoadedComponent, Runtime};
use crate::error::{AgentFailure, Error, ErrorCategory, LimitKind, Result};
use crate::interfaces::WitAgentType;
use crate::interfaces::output::OutputText;
use crate::sandbox::{AgentShared, AgentState, Counters, HostCallRecord, LogRecord, UsageReceipt};
use crate::spec::{AgentType, SpecCeilings, SubAgentSpecification};
use crate::tools::ToolRegistry;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wasmtime::Store;

/// Where an agent is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentStatus {
    /// Store built; instantiating and asking `describe`.
    Initializing,
    /// Instantiated and described; waiting for its task.
    Ready,
    /// Running its task.
    Executing,
    /// Finished its task with a result.
    Completed,
    /// Ended with a failure.
    Failed,
    /// Stopped by `terminate`.
    Terminated,
}

/// What a component says about itself (`describe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentDescription {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Declared agent type.
    pub agent_type: AgentType,
    /// Declared capabilities.
    pub capabilities: Vec<String>,
    /// One sentence.
    pub description: String,
}

/// A task for an agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRequest {
    /// Task id; the host assigns one when `None`.
    pub id: Option<String>,
    /// What to do.
    pub description: String,
    /// Input document.
    pub input: serde_json::Value,
}

impl TaskRequest {
    /// A task with a description and input.
    pub fn new(description: impl Into<String>, input: serde_json::Value) -> Self {
        TaskRequest {
            id: None,
            description: description.into(),
            input,
        }
    }
}

/// The outcome of one agent's task, with its measured usage.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    /// Host-assigned agent id.
    pub agent_id: String,
    /// The task id.
    pub task_id: String,
    /// What the component said about itself, when it got that far.
    pub agent: Option<AgentDescription>,
    /// Final status: completed, failed or terminated.
    pub status: AgentStatus,
    /// The agent's output, on success.
    pub output: Option<serde_json::Value>,
    /// Why it failed, otherwise.
    pub failure: Option<AgentFailure>,
    /// The failure's category.
    pub error_category: Option<ErrorCategory>,
    /// Measured usage.
    pub usage: UsageReceipt,
    /// Log records the agent emitted (first 1,000).
    pub logs: Vec<LogRecord>,
    /// Every host call, when the agent was monitored (the first
    /// [`MAX_AUDIT_ENTRIES_PER_AGENT`](crate::interfaces::limits::MAX_AUDIT_ENTRIES_PER_AGENT)).
    pub host_call_log: Vec<HostCallRecord>,
    /// What the guest wrote to stdout (first 64 KiB).
    pub stdout: String,
    /// What the guest wrote to stderr (first 64 KiB).
    pub stderr: String,
}

impl AgentReport {
    /// The output, or the failure as an error.
    pub fn into_result(self) -> std::result::Result<serde_json::Value, AgentFailure> {
        match (self.output, self.failure) {
            (Some(output), None) => Ok(output),
            (_, Some(f)) => Err(f),
            (None, None) => Err(AgentFailure::Host {
                message: "report has neither output nor failure".into(),
            }),
        }
    }
}

struct AgentEntry {
    status: Mutex<AgentStatus>,
    terminate: watch::Sender<Option<String>>,
    trust: Arc<std::sync::atomic::AtomicU8>,
    shared: std::sync::OnceLock<Arc<AgentShared>>,
}

impl AgentEntry {
    fn set(&self, status: AgentStatus) {
        *self.status.lock().expect("status lock poisoned") = status;
    }
}

type Registry = Arc<Mutex<HashMap<String, Arc<AgentEntry>>>>;

/// The host: one engine and linker, the tools, and the registry of live agents.
pub struct AgentHost {
    context: Option<crate::context::ContextService>,
    access: Option<Arc<crate::security::AccessControl>>,
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
            access: None,
            runtime: Arc::new(Runtime::new(config)?),
            tools: Arc::new(tools),
            agents: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            id_prefix: {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u128(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0),
                );
                format!("{:06x}", h.finish() & 0xff_ffff)
            },
        })
    }

    /// Gives agents the context store and event bus: every sub-agent is registered in it when
    /// spawned (under its host-assigned id) and unregistered when it goes away.
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
        self.access = Some(access);
        self
    }

    /// The access gate, if attached.
    pub fn access(&self) -> Option<&Arc<crate::security::AccessControl>> {
        self.access.as_ref()
    }

    /// Changes a live agent's trust level (`updateAgentTrustLevel`); its next host call is
    /// decided with the new level. Audited.
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
        let old =
            crate::security::TrustLevel::from_u8(entry.trust.swap(level as u8, Ordering::Relaxed));
        if let Some(shared) = entry.shared.get() {
            shared.audit(
                "trust",
                "update-trust-level",
                format!("{} -> {}: {reason}", old.as_str(), level.as_str()),
                serde_json::json!({"from": old, "to": level}),
            );
        }
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

    /// Live agents and their status, sorted by id.
    pub fn list(&self) -> Vec<(String, AgentStatus)> {
        let agents = self.agents.lock().expect("registry poisoned");
        let mut v: Vec<_> = agents
            .iter()
            .map(|(id, e)| (id.clone(), *e.status.lock().expect("status lock poisoned")))
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
        entry.terminate.send_replace(Some(reason.to_string()));
        if let Some(shared) = entry.shared.get() {
            shared.audit(
                "lifecycle",
                "terminate",
                reason.to_string(),
                serde_json::Value::Null,
            );
        }
        Ok(())
    }

    /// Validates `spec`, instantiates the component in a fresh Store and asks `describe`.
    pub async fn spawn(
        &self,
        component: &Arc<LoadedComponent>,
        spec: SubAgentSpecification,
    ) -> Result<SubAgent> {
        self.spawn_with(component, spec, None).await
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
                .contains_key(parent)
        {
            return Err(Error::field(
                "parentAgentId",
                format!("`{parent}` is a sub-agent, and sub-agents cannot spawn sub-agents"),
            ));
        }
        let grants = crate::sandbox::resolve_grants(&spec).await?;
        let descriptors = crate::sandbox::descriptors::reserve(&spec, &grants, "the agent")?;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(spec.resource_limits.max_execution_time_ms);
        let id = format!(
            "agent-{}-{}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (terminate, terminate_rx) = watch::channel(None);
        let trust = Arc::new(std::sync::atomic::AtomicU8::new(spec.trust_level as u8));
        let entry = Arc::new(AgentEntry {
            status: Mutex::new(AgentStatus::Initializing),
            terminate,
            trust: trust.clone(),
            shared: std::sync::OnceLock::new(),
        });
        {
            let mut agents = self.agents.lock().expect("registry poisoned");
            let limit = self.runtime.config().max_live_agents;
            if agents.len() >= limit as usize {
                return Err(Error::TooManyAgents { limit });
            }
            agents.insert(id.clone(), entry.clone());
        }
        let registration = Registration {
            id: id.clone(),
            agents: self.agents.clone(),
            context: self.context.clone(),
        };
        if let Some(ctx) = &self.context {
            ctx.register_agent(&id, crate::context::AgentCapabilities::default())
                .await
                .map_err(|e| {
                    Error::System(anyhow::anyhow!(
                        "registering {id} in the context store: {e}"
                    ))
                })?;
        }
        let shared = Arc::new(AgentShared {
            id: id.clone(),
            operations: Arc::new(tokio::sync::Semaphore::new(
                spec.resource_limits.max_concurrent_operations as usize,
            )),
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
            sync,
            access: self.access.clone(),
            trust,
            name: std::sync::OnceLock::new(),
        });
        let _ = entry.shared.set(shared.clone());
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
            id,
            component: component.clone(),
            store,
            instance: None,
            description: None,
            shared,
            entry,
            terminate_rx,
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
                agent.shared.audit(
                    "lifecycle",
                    "spawn",
                    format!("{} {}", description.name, description.version),
                    serde_json::json!({
                        "component": agent.component.path.display().to_string(),
                        "isolation": agent.shared.spec.isolation_level,
                        "trust": agent.shared.spec.trust_level,
                        "capabilities": agent.shared.spec.capabilities,
                    }),
                );
                agent.description = Some(description);
                agent.entry.set(AgentStatus::Ready);
                Ok(agent)
            }
            Err(failure) => {
                agent.entry.set(AgentStatus::Failed);
                let usage = agent.usage();
                agent.shared.audit(
                    "lifecycle",
                    "spawn-failed",
                    failure::summary(&failure),
                    serde_json::json!({"fuel": usage.fuel_consumed, "hostCalls": usage.host_calls}),
                );
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

/// Removes an agent from the registry when its `SubAgent` goes away.
struct Registration {
    id: String,
    agents: Registry,
    context: Option<crate::context::ContextService>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut agents) = self.agents.lock() {
            agents.remove(&self.id);
        }
        if let (Some(ctx), Ok(rt)) = (self.context.take(), tokio::runtime::Handle::try_current()) {
            let id = std::mem::take(&mut self.id);
            rt.spawn(async move {
                if let Err(e) = ctx.unregister_agent(&id).await {
                    tracing::debug!(agent = %id, error = %e, "unregistering a finished agent");
                }
            });
        }
    }
}

/// A spawned agent, ready to run one task.
pub struct SubAgent {
    id: String,
    component: Arc<LoadedComponent>,
    store: Store<AgentState>,
    instance: Option<crate::interfaces::Agent>,
    description: Option<AgentDescription>,
    shared: Arc<AgentShared>,
    entry: Arc<AgentEntry>,
    terminate_rx: watch::Receiver<Option<String>>,
    max_wasm_stack: usize,
    _registration: Registration,
}

impl std::fmt::Debug for SubAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubAgent")
            .field("id", &self.id)
            .field("component", &self.component.path)
            .finish()
    }
}

impl SubAgent {
    /// Host-assigned id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the component said about itself.
    pub fn description(&self) -> &AgentDescription {
        self.description
            .as_ref()
            .expect("a spawned agent has described itself")
    }

    /// Current status.
    pub fn status(&self) -> AgentStatus {
        *self.entry.status.lock().expect("status lock poisoned")
    }

    /// Runs `f` on the Store, racing it against the deadline and the terminate signal.
    /// Dropping the losing future unwinds the guest wherever it is.
    async fn guarded<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Store<AgentState>) -> wasmtime::Result<T>,
    ) -> std::result::Result<T, AgentFailure> {
        let deadline = tokio::time::Instant::from_std(self.shared.deadline);
        let mut term = self.terminate_rx.clone();
        let limit_ms = self.shared.spec.resource_limits.max_execution_time_ms;
        let result = {
            let work = f(&mut self.store);
            race(work, deadline, &mut term).await
        };
        match result {
            Raced::Done(Ok(v)) => Ok(v),
            Raced::Done(Err(e)) => Err(self.classify(e)),
            Raced::Deadline => {
                self.shared.record_violation(
                    LimitKind::ExecutionTime,
                    limit_ms,
                    format!("still running after {limit_ms} ms; stopped"),
                );
                Err(self.violation().expect("just recorded"))
            }
            Raced::Terminated(reason) => Err(AgentFailure::Terminated { reason }),
        }
    }

    fn violation(&self) -> Option<AgentFailure> {
        self.shared
            .violation
            .lock()
            .expect("violation lock poisoned")
            .clone()
    }

    /// What an error out of the guest means for the agent: see [`failure::classify`].
    fn classify(&self, e: wasmtime::Error) -> AgentFailure {
        let stderr = self.store.data().stderr.contents();
        failure::classify(e, &self.shared, &stderr, self.component_stack_limit())
    }

    /// The usage measured so far.
    fn usage(&self) -> UsageReceipt {
        let data = self.store.data();
        let mut usage = UsageReceipt::from_counters(&self.shared.counters);
        usage.fuel_consumed = self
            .shared
            .spec
            .fuel
            .saturating_sub(self.store.get_fuel().unwrap_or(0));
        usage.peak_memory_bytes = data.limiter.peak_bytes as u64;
        usage.wall_time_us = self.shared.started.elapsed().as_micros() as u64;
        usage.stdout_bytes = data.stdout.contents().len() as u64;
        usage.stderr_bytes = data.stderr.contents().len() as u64;
        usage
    }

    fn component_stack_limit(&self) -> usize {
        self.max_wasm_stack
    }

    /// Runs the task and reports the outcome and measured usage.
    pub async fn run(mut self, task: TaskRequest) -> AgentReport {
        self.entry.set(AgentStatus::Executing);
        let task_id = task
            .id
            .clone()
            .unwrap_or_else(|| format!("{}-task", self.id));
        let wit_task = crate::interfaces::Task {
            id: task_id.clone(),
            description: task.description,
            input: task.input.to_string(),
        };
        let instance = self
            .instance
            .take()
            .expect("a spawned agent has an instance");
        // The output is checked against `maxOutputBytes` in guest memory and copied only when
        // it fits (see `interfaces::output`).
        let max_output = self.shared.overrides.max_output_bytes;
        let limit = usize::try_from(max_output).unwrap_or(usize::MAX);
        let result = self
            .guarded(async |store| {
                crate::interfaces::output::call_run(&instance, store, &wit_task, limit).await
            })
            .await;
        let too_long = |bytes: usize| AgentFailure::LimitExceeded {
            limit: LimitKind::OutputSize,
            limit_value: max_output,
            detail: format!("output is {bytes} bytes; at most {max_output} are accepted"),
        };
        let too_long_error = |bytes: usize| AgentFailure::LimitExceeded {
            limit: LimitKind::OutputSize,
            limit_value: max_output,
            detail: format!(
                "the agent's error message is {bytes} bytes; at most {max_output} are accepted"
            ),
        };
        let outcome =
            match result {
                Ok(Ok(out)) => match out.output {
                    OutputText::TooLong { bytes } => Err(too_long(bytes)),
                    OutputText::Text(text) if text.len() as u64 > max_output => {
                        Err(too_long(text.len()))
                    }
                    OutputText::Text(text) => serde_json::from_str::<serde_json::Value>(&text)
                        .map_err(|e| AgentFailure::InvalidOutput {
                            message: e.to_string(),
                        }),
                },
                Ok(Err(agent_error)) => Err(self.violation().unwrap_or_else(|| {
                    let (error_kind, message) = agent_error.into_parts();
                    let message = match message {
                        OutputText::Text(text) if text.len() as u64 <= max_output => text,
                        OutputText::Text(text) => return too_long_error(text.len()),
                        OutputText::TooLong { bytes } => return too_long_error(bytes),
                    };
                    AgentFailure::AgentError {
                        error_kind: error_kind.to_string(),
                        message,
                    }
                })),
                Err(failure) => Err(failure),
            };
        self.finish(task_id, outcome)
    }

    fn finish(
        self,
        task_id: String,
        outcome: std::result::Result<serde_json::Value, AgentFailure>,
    ) -> AgentReport {
        let status = match &outcome {
            Ok(_) => AgentStatus::Completed,
            Err(AgentFailure::Terminated { .. }) => AgentStatus::Terminated,
            Err(_) => AgentStatus::Failed,
        };
        self.entry.set(status);
        let usage = self.usage();
        let data = self.store.data();
        let stdout = data.stdout.contents();
        let stderr = data.stderr.contents();
        let (output, failure) = match outcome {
            Ok(v) => (Some(v), None),
            Err(f) => (None, Some(f)),
        };
        let summary = failure.as_ref().map(failure::summary);
        match &summary {
            None => tracing::debug!(agent = %self.id, "agent completed"),
            Some(f) => tracing::info!(agent = %self.id, failure = %f, "agent failed"),
        }
        self.shared.audit(
            "lifecycle",
            "finish",
            summary.unwrap_or_else(|| "completed".to_string()),
            serde_json::json!({"status": status, "fuel": usage.fuel_consumed}),
        );
        AgentReport {
            agent_id: self.id.clone(),
            task_id,
            agent: self.description.clone(),
            status,
            error_category: failure.as_ref().map(AgentFailure::category),
            output,
            failure,
            usage,
            logs: std::mem::take(&mut *self.shared.logs.lock().expect("log lock poisoned")),
            host_call_log: std::mem::take(
                &mut *self.shared.call_log.lock().expect("call log poisoned"),
            ),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

enum Raced<T> {
    Done(T),
    Deadline,
    Terminated(String),
}

async fn race<T>(
    work: impl Future<Output = T>,
    deadline: tokio::time::Instant,
    term: &mut watch::Receiver<Option<String>>,
) -> Raced<T> {
    if let Some(reason) = term.borrow().clone() {
        return Raced::Terminated(reason);
    }
    tokio::select! {
        biased;
        changed = term.wait_for(Option::is_some) => match changed {
            Ok(reason) => Raced::Terminated(reason.clone().unwrap_or_default()),
            // The sender lives in the registry as long as the agent does.
            Err(_) => Raced::Terminated("host shut down".into()),
        },
        _ = tokio::time::sleep_until(deadline) => Raced::Deadline,
        v = work => Raced::Done(v),
    }
}
