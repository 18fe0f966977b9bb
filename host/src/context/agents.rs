//! The agent registry: registration, heartbeats and the sweep of disconnected agents.

use super::{
    AgentCapabilities, AgentConnection, AgentRegistration, ContextError, ContextService, OPERATOR,
    OpError, audit, persist,
};
use crate::audit::AuditDecision::Record;
use crate::events::{EventType, NewEvent};
use crate::store::StoreError;
use serde_json::json;
use std::sync::Arc;

impl ContextService {
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
                Ok(())
            }),
        )
        .await
    }

    /// Unregisters an agent and ends its subscriptions.
    pub async fn unregister_agent(&self, agent_id: &str) -> Result<(), ContextError> {
        let id = agent_id.to_string();
        self.run(
            None,
            Box::new(move |sh, inner, ctx| {
                if inner.agents.remove(&id).is_none() {
                    return Err(OpError::Committed(ContextError::UnknownAgent(id)));
                }
                persist::delete_agent(ctx.tx(), &id)?;
                // Shares die with the agent, so that a later agent with the same id inherits
                // nothing; with encryption at rest each such context's data key rotates
                // (as on a revoke), so its wrapped copy opens no later value.
                let shared_with: Vec<String> = ctx
                    .tx()
                    .prepare(
                        "SELECT context_id FROM shares WHERE agent_id = ?1 ORDER BY context_id",
                    )
                    .and_then(|mut st| st.query_map([&id], |r| r.get(0))?.collect::<Result<_, _>>())
                    .map_err(StoreError::from)?;
                for cid in &shared_with {
                    persist::delete_share(ctx.tx(), ctx.blobs(), cid, &id)?;
                }
                ctx.tx()
                    .execute("DELETE FROM shares WHERE agent_id = ?1", [&id])
                    .map_err(StoreError::from)?;
                for cid in &shared_with {
                    let gone = inner.shares.get_mut(cid).and_then(|m| m.remove(&id));
                    if let Some(gone) = gone {
                        let reason = format!("grant of `{id}` removed: the agent was unregistered");
                        let entry = audit::entry(OPERATOR, cid, "unregister", Record, reason);
                        let details = json!({"target": id, "grantedBy": gone.granted_by});
                        audit::record_on_commit(sh, ctx, None, entry.details(details))?;
                    }
                }
                sh.bus.stage(
                    ctx,
                    vec![NewEvent::new(EventType::AgentUnregistered).agent(&id)],
                )?;
                Ok(())
            }),
        )
        .await?;
        let subs = {
            let mut runtime = self.shared.runtime();
            runtime.last_seen.remove(agent_id);
            runtime.subscriptions.remove(agent_id).unwrap_or_default()
        };
        for s in subs {
            self.shared.bus.unsubscribe(s);
        }
        Ok(())
    }

    /// Registered agents, sorted by id.
    pub fn registered_agents(&self) -> Vec<AgentRegistration> {
        let inner = self.shared.committed();
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
                    return Err(OpError::Committed(ContextError::UnknownAgent(id)));
                };
                let mut reg = reg.clone();
                reg.last_heartbeat = sh.clock.now_ms();
                reg.status = AgentConnection::Active;
                persist::upsert_agent(ctx.tx(), &reg)?;
                inner.agents.insert(id, reg);
                Ok(())
            }),
        )
        .await
    }

    /// Counts a host call of `agent` as a heartbeat, in memory only (no durable write): it
    /// was last alive now. Returns false, changing nothing, when the agent is not registered
    /// or was marked disconnected (reconnecting takes [`touch`](Self::touch)).
    pub fn seen(&self, agent: &str) -> bool {
        let now = self.shared.clock.now_ms();
        let active = self
            .shared
            .committed()
            .agents
            .get(agent)
            .is_some_and(|a| a.status == AgentConnection::Active);
        if active {
            let mut runtime = self.shared.runtime();
            let seen = runtime.last_seen.entry(agent.to_string()).or_default();
            *seen = (*seen).max(now);
        }
        active
    }

    /// Counts a host call of `agent` as a heartbeat: in memory ([`seen`](Self::seen)) while
    /// it is connected, a durable [`heartbeat`](Self::heartbeat) to reconnect it when it was
    /// marked disconnected. Nothing for an agent that is not registered.
    pub async fn touch(&self, agent: &str) -> Result<(), ContextError> {
        if self.seen(agent) || self.shared.committed().agents.get(agent).is_none() {
            return Ok(());
        }
        self.heartbeat(agent).await
    }

    /// Marks `agent` present until the guard drops: it is blocked in a host call (such as
    /// `events.next`) and alive however long that takes, so the sweep does not mark it
    /// disconnected. Counts as a heartbeat when taken and when dropped.
    pub fn present(&self, agent: &str) -> Presence {
        self.seen(agent);
        *self
            .shared
            .runtime()
            .present
            .entry(agent.to_string())
            .or_default() += 1;
        Presence {
            service: self.clone(),
            agent: agent.to_string(),
        }
    }

    /// Whether `agent` holds a [`Presence`] now.
    pub fn is_present(&self, agent: &str) -> bool {
        self.shared.is_present(agent)
    }

    /// Marks agents whose heartbeat is older than the timeout and that are not
    /// [`present`](Self::present) as disconnected and ends their subscriptions; returns
    /// their ids. Access checks also treat such agents as
    /// disconnected without waiting for this to run.
    pub async fn sweep_disconnected(&self) -> Result<Vec<String>, ContextError> {
        let gone = self
            .run(
                None,
                Box::new(move |sh, inner, ctx| {
                    let now = sh.clock.now_ms();
                    let timeout = sh.config.heartbeat_timeout_ms;
                    let mut gone = Vec::new();
                    let mut ids: Vec<String> = inner
                        .agents
                        .values()
                        .filter(|a| {
                            a.status == AgentConnection::Active
                                && now.saturating_sub(sh.last_alive(a)) > timeout
                                && !sh.is_present(&a.agent_id)
                        })
                        .map(|a| a.agent_id.clone())
                        .collect();
                    ids.sort();
                    let mut events = Vec::new();
                    for id in ids {
                        let mut reg = inner.agents[&id].clone();
                        reg.status = AgentConnection::Disconnected;
                        persist::upsert_agent(ctx.tx(), &reg)?;
                        events.push(
                            NewEvent::new(EventType::AgentDisconnected)
                                .agent(&id)
                                .data(json!({"lastHeartbeat": reg.last_heartbeat})),
                        );
                        inner.agents.insert(id.clone(), reg);
                        gone.push(id);
                    }
                    if !events.is_empty() {
                        sh.bus.stage(ctx, events)?;
                    }
                    Ok(gone)
                }),
            )
            .await?;
        let subs: Vec<_> = {
            let mut runtime = self.shared.runtime();
            gone.iter()
                .flat_map(|id| runtime.subscriptions.remove(id).unwrap_or_default())
                .collect()
        };
        for s in subs {
            self.shared.bus.unsubscribe(s);
        }
        Ok(gone)
    }

    /// Runs [`sweep_disconnected`](Self::sweep_disconnected) every half heartbeat timeout
    /// ([`ContextConfig::heartbeat_timeout_ms`]; never more often than every 10 ms) until the
    /// returned guard or the service is dropped. Every host that runs agents holds one
    /// ([`AgentHost::with_context`](crate::AgentHost::with_context)). Needs a tokio runtime.
    pub fn start_heartbeat_sweeper(&self) -> HeartbeatSweeper {
        let half = (self.shared.config.heartbeat_timeout_ms / 2).max(10);
        HeartbeatSweeper(
            self.spawn_heartbeat_sweeper(std::time::Duration::from_millis(half))
                .abort_handle(),
        )
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
}

/// An agent blocked in a host call that counts as presence; see [`ContextService::present`].
pub struct Presence {
    service: ContextService,
    agent: String,
}

impl Drop for Presence {
    fn drop(&mut self) {
        {
            let mut runtime = self.service.shared.runtime();
            if let Some(n) = runtime.present.get_mut(&self.agent) {
                *n -= 1;
                if *n == 0 {
                    runtime.present.remove(&self.agent);
                }
            }
        }
        self.service.seen(&self.agent);
    }
}

/// The heartbeat sweep of a host; stops when dropped. See
/// [`ContextService::start_heartbeat_sweeper`].
#[derive(Debug)]
pub struct HeartbeatSweeper(tokio::task::AbortHandle);

impl Drop for HeartbeatSweeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}
