//! Registered agents: `list_agents`, `run_agent`, and terminating an agent a client started.

use super::config::ServerConfig;
use super::tools::{NarrowLimits, OnDisconnect, RunAgentArgs};
use super::{Caller, OpError, Server};
use crate::agents::{AgentDescription, AgentHost, TaskRequest};
use crate::engine::LoadedComponent;
use crate::error::Error;
use crate::model::ResourceKind;
use crate::spec::SubAgentSpecification;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Longest `task` text of `run_agent`, bytes.
pub const MAX_TASK_BYTES: usize = 64 << 10;

/// One registered agent, loaded and described.
#[derive(Debug)]
pub struct Registered {
    component: Arc<LoadedComponent>,
    spec: SubAgentSpecification,
    description: AgentDescription,
    note: Option<String>,
}

/// Registered agents, and the agents `run_agent` started that are still running (agent id →
/// the principal that started it).
#[derive(Debug, Default)]
pub struct Registry {
    agents: BTreeMap<String, Registered>,
    live: Arc<Mutex<HashMap<String, String>>>,
}

impl Registry {
    /// Loads every agent of `config` (a `guest:` component from `guest_dir`) and starts it
    /// once to describe it and check its spec: the first that fails is named in the error.
    pub async fn load(
        host: &AgentHost,
        config: &ServerConfig,
        guest_dir: &Path,
    ) -> Result<Registry, Error> {
        let mut agents = BTreeMap::new();
        for (name, entry) in &config.agents {
            let field = format!("config.agents.{name}");
            let file = match entry.component.strip_prefix("guest:") {
                Some(g) => guest_dir.join(format!("guest_{}.wasm", g.replace('-', "_"))),
                None => entry.component.clone().into(),
            };
            let component = host.load(&file).map_err(|e| {
                Error::field(
                    format!("{field}.component"),
                    format!("cannot load `{}`: {e}", file.display()),
                )
            })?;
            let mut spec = entry.spec.clone();
            spec.name = Some(name.clone());
            let limit = std::time::Duration::from_millis(host.runtime().config().describe_limit_ms);
            let agent = tokio::time::timeout(limit, host.spawn(&component, spec.clone()))
                .await
                .map_err(|_| {
                    Error::field(
                        field.clone(),
                        "the agent did not start and answer describe() in time",
                    )
                })?
                .map_err(|e| Error::field(format!("{field}.spec"), e.to_string()))?;
            let description = agent.description().clone();
            drop(agent);
            agents.insert(
                name.clone(),
                Registered {
                    component,
                    spec,
                    description,
                    note: entry.description.clone(),
                },
            );
        }
        Ok(Registry {
            agents,
            live: Arc::default(),
        })
    }

    /// The principal that started live agent `agent_id`.
    pub(super) fn owner(&self, agent_id: &str) -> Option<String> {
        self.live
            .lock()
            .expect("registry lock poisoned")
            .get(agent_id)
            .cloned()
    }
}

/// `spec` with `limits` applied: each may lower the registered value, never raise it.
pub fn narrow(
    agent: &str,
    spec: &SubAgentSpecification,
    limits: &NarrowLimits,
) -> Result<SubAgentSpecification, OpError> {
    let mut out = spec.clone();
    fn lower<T: PartialOrd + Copy + std::fmt::Display>(
        agent: &str,
        field: &str,
        ceiling: T,
        asked: Option<T>,
        slot: &mut T,
    ) -> Result<(), OpError> {
        if let Some(v) = asked {
            if v > ceiling {
                return Err(OpError::invalid(format!(
                    "limits.{field}: {v} is above agent `{agent}`'s registered ceiling {ceiling}; \
                     a request may only lower limits"
                )));
            }
            *slot = v;
        }
        Ok(())
    }
    lower(agent, "fuel", spec.fuel, limits.fuel, &mut out.fuel)?;
    let (r, o) = (&spec.resource_limits, &mut out.resource_limits);
    lower(
        agent,
        "max_memory_mb",
        r.max_memory_mb,
        limits.max_memory_mb,
        &mut o.max_memory_mb,
    )?;
    lower(
        agent,
        "max_execution_time_ms",
        r.max_execution_time_ms,
        limits.max_execution_time_ms,
        &mut o.max_execution_time_ms,
    )?;
    lower(
        agent,
        "max_tool_calls",
        r.max_tool_calls,
        limits.max_tool_calls,
        &mut o.max_tool_calls,
    )?;
    lower(
        agent,
        "max_file_operations",
        r.max_file_operations,
        limits.max_file_operations,
        &mut o.max_file_operations,
    )?;
    Ok(out)
}

/// Terminates the agent when dropped (a `run_agent` whose client went away), unless
/// disarmed.
struct KillOnDrop {
    host: Arc<AgentHost>,
    agent_id: Option<String>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.agent_id.take() {
            let _ = self
                .host
                .terminate(&id, "the client that started it went away");
        }
    }
}

impl Server {
    /// `list_agents`: each registered agent's describe info and limit ceilings, and the
    /// registered manifests. Entries the gate refuses (`agent/<name>`, `list`) are left out.
    pub(super) fn list_agents(&self, caller: &Caller) -> Result<Value, OpError> {
        let agents: Vec<Value> = self
            .agents
            .agents
            .iter()
            .filter(|(name, _)| self.gate(caller, ResourceKind::Agent, name, "list").is_ok())
            .map(|(name, r)| {
                let l = &r.spec.resource_limits;
                json!({
                    "name": name,
                    "description": r.note.clone().unwrap_or_else(|| r.description.description.clone()),
                    "agent": r.description,
                    "isolationLevel": r.spec.isolation_level,
                    "ceilings": {
                        "fuel": r.spec.fuel,
                        "max_memory_mb": l.max_memory_mb,
                        "max_execution_time_ms": l.max_execution_time_ms,
                        "max_tool_calls": l.max_tool_calls,
                        "max_file_operations": l.max_file_operations,
                    },
                })
            })
            .collect();
        let manifests = self
            .manifests
            .describe(|name| self.gate(caller, ResourceKind::Run, name, "plan").is_ok());
        Ok(json!({"agents": agents, "manifests": manifests}))
    }

    /// `run_agent`: spawns the registered agent with its spec narrowed by the request and
    /// runs the task to the end. Counts as one of the caller's runs in progress.
    pub(super) async fn run_agent(
        &self,
        caller: &Caller,
        args: RunAgentArgs,
    ) -> Result<Value, OpError> {
        let Some(reg) = self.agents.agents.get(&args.agent) else {
            return Err(unknown_agent(&args.agent, self.agents.agents.keys()));
        };
        self.gate(caller, ResourceKind::Agent, &args.agent, "run")?;
        if args.task.len() > MAX_TASK_BYTES {
            return Err(OpError::invalid(format!(
                "task: {} bytes; at most {MAX_TASK_BYTES}",
                args.task.len()
            )));
        }
        let spec = narrow(&args.agent, &reg.spec, &args.limits.unwrap_or_default())?;
        let slot = self.run_slot(caller)?;
        let agent = match self.host.spawn(&reg.component, spec).await {
            Ok(a) => a,
            // The agent itself failed while starting (a limit, a trap in describe()): that is
            // its result, as for a failure while running.
            Err(Error::Spawn(failure, usage)) => {
                return Ok(json!({
                    "agent_id": null,
                    "status": "failed",
                    "output": null,
                    "failure": failure,
                    "error_category": failure.category(),
                    "failure_message": failure.to_string(),
                    "usage": usage,
                }));
            }
            Err(e) => return Err(OpError::from(e)),
        };
        let agent_id = agent.id().to_string();
        self.agents
            .live
            .lock()
            .expect("registry lock poisoned")
            .insert(agent_id.clone(), caller.id.clone());
        let _ = self.record(
            caller,
            &format!("agent/{}", args.agent),
            "run",
            crate::audit::AuditDecision::Record,
            format!("agent id {agent_id}"),
        );
        let task = TaskRequest::new(args.task, args.input);
        // The agent runs in its own task, so that a client going away decides its fate
        // (on_disconnect) instead of the dropped request future.
        // It leaves the list of live agents when it ends, whether or not anyone waits.
        let live = self.agents.live.clone();
        let id = agent_id.clone();
        let handle = tokio::spawn(async move {
            let report = agent.run(task).await;
            live.lock().expect("registry lock poisoned").remove(&id);
            drop(slot);
            report
        });
        let mut guard = KillOnDrop {
            host: self.host.clone(),
            agent_id: (args.on_disconnect.unwrap_or(OnDisconnect::Cancel) == OnDisconnect::Cancel)
                .then(|| agent_id.clone()),
        };
        let report = handle.await;
        guard.agent_id = None;
        let report =
            report.map_err(|e| OpError::failed(format!("the agent's task failed: {e}")))?;
        serde_json::to_value(&report).map_err(|e| OpError::failed(e.to_string()))
    }

    /// Terminates agent `agent_id` if `caller` started it (the operator: any).
    pub(super) fn terminate_agent(
        &self,
        caller: &Caller,
        agent_id: &str,
    ) -> Result<Value, OpError> {
        match self.agents.owner(agent_id) {
            Some(owner) if owner == caller.id || caller.operator => {}
            Some(_) | None => {
                return Err(OpError::not_found(format!(
                    "agent_id: no agent `{agent_id}` of yours is running"
                )));
            }
        }
        self.gate(caller, ResourceKind::Agent, agent_id, "terminate")?;
        self.host
            .terminate(agent_id, &format!("terminated by {}", caller.id))
            .map_err(OpError::from)?;
        Ok(json!({"agentId": agent_id, "terminated": true}))
    }

    /// One of `caller`'s runs in progress, or `Limit`.
    pub(super) fn run_slot(&self, caller: &Caller) -> Result<super::caller::RunSlot, OpError> {
        self.quotas.run_slot(&caller.id).map_err(|n| {
            OpError::limit(format!(
                "`{}` already has {n} runs in progress; at most {} \
                 (limits.max_runs_per_client); wait for one to finish",
                caller.id, self.config.limits.max_runs_per_client
            ))
        })
    }
}

fn unknown_agent<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> OpError {
    let known: Vec<&str> = known.map(String::as_str).collect();
    let hint = if name.contains('/') || name.contains('\\') || name.ends_with(".wasm") {
        "; clients name registered agents and never pass paths"
    } else {
        ""
    };
    OpError::not_found(format!(
        "agent: no registered agent `{name}`{hint} (registered: {})",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    ))
}
