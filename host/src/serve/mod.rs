//! `qi-host serve`: a long-running host that AI clients drive over MCP (stdio or Streamable
//! HTTP at `/mcp`) and a JSON HTTP API (`/v1/...`).
//!
//! The operator's server config ([`config`]) says what clients may run: registered agents
//! (name → component and a spec that is the ceiling of every run) and registered manifests.
//! Clients name them and never pass host paths. Every call is one of the operations of
//! [`tools`], carried out by [`Server::call`] the same way for both fronts: the caller is
//! authenticated ([`caller`]), held to its request rate and runs in progress, audited under
//! its principal id, and checked by the access gate like an agent.
//!
//! Files: [`config`] (the TOML), [`caller`] (who is calling, tokens, sessions, quotas),
//! [`tools`] (argument shapes), [`agents`] (`list_agents`, `run_agent`), [`manifests`] (registered manifests, run inputs), [`runs`] (`run_task`,
//! `plan_task`, `run_status`, `terminate`, resuming after a restart), [`state`] (contexts,
//! events, audit), [`mcp`] (the rmcp server), [`http`] (axum routes, auth, bounds).

pub mod agents;
pub mod caller;
pub mod config;
mod error;
pub mod http;
pub mod manifests;
pub mod mcp;
pub mod runs;
pub mod state;
pub mod tools;

pub use caller::{Caller, Via};
pub use config::ServerConfig;
pub use error::{OpError, OpErrorKind};

use crate::agents::AgentHost;
use crate::audit::{AuditDecision, AuditLog, NewAuditEntry};
use crate::context::ContextService;
use crate::error::Error;
use crate::model::ResourceKind;
use crate::security::{AccessControl, Request};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A running server's state: the host, its data directory, what is registered, who may call.
pub struct Server {
    host: Arc<AgentHost>,
    context: ContextService,
    audit: AuditLog,
    access: Arc<AccessControl>,
    config: ServerConfig,
    agents: agents::Registry,
    manifests: manifests::Manifests,
    runs: runs::Runs,
    /// Callers, sessions.
    pub auth: caller::Auth,
    /// Request rates and runs in progress.
    pub quotas: Arc<caller::Quotas>,
    /// Who opened which MCP session.
    pub mcp_sessions: caller::McpSessions,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// Opens `data_dir` (taking its lock), loads the config's agents and manifests (each is
    /// started once to describe it, so a broken one fails here, naming it), and registers
    /// its callers. Agents run in a host made with `host_config` (`qi-host serve`: 1,000
    /// live agents, the default component cache).
    pub async fn open(
        config: ServerConfig,
        data_dir: &Path,
        key_file: Option<&Path>,
        host_config: crate::HostConfig,
    ) -> Result<Arc<Server>, Error> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::field(
                "--data-dir",
                format!("cannot create `{}`: {e}", data_dir.display()),
            )
        })?;
        let policies = crate::cli::state::load_policies(config.policies.as_deref())?;
        let secured = crate::cli::state::open_secured(data_dir, key_file, policies).await?;
        let host = AgentHost::new(host_config)?
            .with_context(secured.context.clone())
            .with_access(secured.access.clone());
        let host = Arc::new(host);
        let guest_dir = config
            .guest_dir
            .clone()
            .unwrap_or_else(crate::coord::default_guest_dir);
        let agents = agents::Registry::load(&host, &config, &guest_dir).await?;
        let manifests = manifests::Manifests::load(&host, &config, &guest_dir).await?;
        let identities = crate::security::identity::IdentityRegistry::new(
            secured.context.store().host_id(),
            Some(secured.audit.clone()),
        );
        let auth = caller::Auth::new(&config, identities)?;
        for name in config.clients.keys().chain(config.identities.keys()) {
            let id = format!("client:{name}");
            secured
                .context
                .register_agent(&id, Default::default())
                .await
                .map_err(|e| Error::System(anyhow::anyhow!("registering `{id}`: {e}")))?;
        }
        let quotas = Arc::new(caller::Quotas::new(config.limits));
        let mcp_sessions = caller::McpSessions::new(config.limits.max_mcp_sessions_per_client);
        let runs = runs::Runs::new(config.limits.max_tracked_runs);
        Ok(Arc::new(Server {
            host,
            context: secured.context,
            audit: secured.audit,
            access: secured.access,
            config,
            agents,
            manifests,
            runs,
            auth,
            quotas,
            mcp_sessions,
            stopping: AtomicBool::new(false),
        }))
    }

    /// The config in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The host agents run in.
    pub fn host(&self) -> &Arc<AgentHost> {
        &self.host
    }

    /// The shared context store.
    pub fn context(&self) -> &ContextService {
        &self.context
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Carries out tool `name` for `caller`. Every call is audited (before it runs; one the
    /// audit log cannot record is refused) and counted against the caller's request rate.
    pub async fn call(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        args: Value,
    ) -> Result<Value, OpError> {
        self.admit(caller, name, &args)?;
        match name {
            "list_agents" => {
                tools::parse::<tools::ListAgentsArgs>(name, args)?;
                self.list_agents(caller)
            }
            "run_agent" => self.run_agent(caller, tools::parse(name, args)?).await,
            "run_task" => {
                let args: tools::RunTaskArgs = tools::parse(name, args)?;
                let wait = args.wait.unwrap_or(true);
                let started = self.start_run(caller, args).await?;
                if wait {
                    started.wait_on(self).await
                } else {
                    Ok(serde_json::json!({"runId": started.run_id, "state": "running"}))
                }
            }
            "plan_task" => self.plan_task(caller, tools::parse(name, args)?),
            "run_status" => self.run_status(caller, tools::parse(name, args)?),
            "terminate" => self.terminate(caller, tools::parse(name, args)?),
            "context_get" => self.context_get(caller, tools::parse(name, args)?).await,
            "context_put" => self.context_put(caller, tools::parse(name, args)?).await,
            "context_patch" => self.context_patch(caller, tools::parse(name, args)?).await,
            "context_list" => self.context_list(caller, tools::parse(name, args)?).await,
            "context_history" => {
                self.context_history(caller, tools::parse(name, args)?)
                    .await
            }
            "events_tail" => self.events_tail(caller, tools::parse(name, args)?).await,
            "audit_query" => self.audit_query(caller, tools::parse(name, args)?).await,
            other => Err(OpError::not_found(format!(
                "no tool `{other}`; the tools are {}",
                tools::tools()
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The checks every call passes first: not stopping, the argument size, and the audit
    /// record of the request. (The request rate is checked where requests arrive: the HTTP
    /// layer, for every authenticated request.)
    pub(crate) fn admit(&self, caller: &Caller, name: &str, args: &Value) -> Result<(), OpError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(OpError::unavailable(
                "the server is shutting down; retry against the restarted server",
            ));
        }
        let limit = self.config.limits.max_argument_bytes;
        let size = serde_json::to_vec(args)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > limit {
            return Err(OpError::too_large(format!(
                "the arguments of `{name}` are {size} bytes of JSON; at most {limit} \
                 (limits.max_argument_bytes)"
            )));
        }
        self.record(
            caller,
            &format!("serve/{name}"),
            "request",
            AuditDecision::Record,
            format!("via {}", via_name(caller.via)),
        )
    }

    /// The caller's request rate.
    pub(crate) fn rate(&self, caller: &Caller) -> Result<(), OpError> {
        self.quotas.request(&caller.id).map_err(|wait| OpError {
            kind: OpErrorKind::Limit,
            message: format!(
                "too many requests from `{}`: at most {} per second, {} at once \
                 (limits.requests_per_second, limits.burst); retry in {} ms",
                caller.id,
                self.config.limits.requests_per_second,
                self.config.limits.burst,
                wait.as_millis().max(1)
            ),
            retry_after: Some(wait),
        })
    }

    /// Appends to the audit log; `Unavailable` when it cannot.
    pub(crate) fn record(
        &self,
        caller: &Caller,
        resource: &str,
        operation: &str,
        decision: AuditDecision,
        reason: String,
    ) -> Result<(), OpError> {
        self.audit
            .record(NewAuditEntry::new(
                &caller.id, resource, operation, decision, reason,
            ))
            .map_err(|e| {
                OpError::unavailable(format!("the audit log cannot record this request: {e}"))
            })
    }

    /// The access gate for `caller` on `<kind>/<id>`: the same policies as for agents, with
    /// the caller as the principal (`principal.id` `client:<name>` or `operator`,
    /// `principal.name` its config name, its trust and capabilities; isolation `sandbox`).
    pub(crate) fn gate(
        &self,
        caller: &Caller,
        kind: ResourceKind,
        id: &str,
        action: &str,
    ) -> Result<(), OpError> {
        let attrs = match kind {
            ResourceKind::Context | ResourceKind::Events => self.context.attributes(id),
            _ => None,
        };
        let (rtype, owner, labels) = attrs.unwrap_or_default();
        let req = Request {
            agent_id: &caller.id,
            agent_name: Some(&caller.name),
            trust: caller.trust,
            capabilities: &caller.capabilities,
            isolation: crate::spec::IsolationLevel::Sandbox,
            kind: kind.as_str(),
            id,
            resource_type: Some(&rtype).filter(|t| !t.is_empty()).map(String::as_str),
            owner: Some(&owner).filter(|o| !o.is_empty()).map(String::as_str),
            labels: &labels,
            action,
        };
        let d = self.access.enforce(&req);
        if d.allowed {
            Ok(())
        } else {
            Err(OpError::denied(format!(
                "`{}` may not {action} {}: {}",
                caller.id,
                req.resource(),
                d.reason
            )))
        }
    }

    /// Stops accepting calls (`Unavailable` from now on) and waits up to `grace` for runs in
    /// progress; those still running are stopped and stay recorded as running, so the next
    /// server on this data directory resumes them. Flushes the audit log.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.stopping.store(true, Ordering::Release);
        self.runs.drain(grace).await;
        self.audit.flush().await;
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

fn via_name(via: Via) -> &'static str {
    match via {
        Via::Stdio => "mcp-stdio",
        Via::Token => "bearer token",
        Via::Ed25519 => "ed25519 session",
    }
}
