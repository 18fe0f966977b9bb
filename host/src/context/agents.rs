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
        let subs = self
            .run(
                None,
                Box::new(move |sh, inner, ctx| {
                    if inner.agents.remove(&id).is_none() {
                        return Err(OpError::Committed(ContextError::UnknownAgent(id)));
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
                    for cid in &shared_with {
                        let gone = inner.shares.get_mut(cid).and_then(|m| m.remove(&id));
                        if let Some(gone) = gone {
                            let reason =
                                format!("grant of `{id}` removed: the agent was unregistered");
                            let entry = audit::entry(OPERATOR, cid, "unregister", Record, reason);
                            let details = json!({"target": id, "grantedBy": gone.granted_by});
                            audit::record_on_commit(sh, ctx, None, entry.details(details))?;
                        }
                    }
                    sh.bus.stage(
                        ctx,
                        vec![NewEvent::new(EventType::AgentUnregistered).agent(&id)],
                    )?;
                    Ok(inner
                        .subscriptions
                        .remove(&id)
                        .map_or_else(Vec::new, |s| s.to_vec()))
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

    /// Heartbeats `agent` when its last heartbeat is older than half the timeout (so an agent
    /// that keeps calling stays connected without a durable write per call).
    pub async fn touch(&self, agent: &str) -> Result<(), ContextError> {
        let stale = {
            let inner = self.shared.committed();
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
                        subs.extend(
                            inner
                                .subscriptions
                                .remove(&id)
                                .iter()
                                .flat_map(|s| s.iter()),
                        );
                        inner.agents.insert(id.clone(), reg);
                        gone.push(id);
                    }
                    if !events.is_empty() {
                        sh.bus.stage(ctx, events)?;
                    }
                    Ok((gone, subs))
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
}
