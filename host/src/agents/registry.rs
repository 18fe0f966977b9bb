//! The registry of live agents: an entry per agent (status, terminate signal, trust, shared
//! state), removed when the agent's `SubAgent` goes away.

use super::AgentStatus;
use crate::sandbox::AgentShared;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

pub(super) struct AgentEntry {
    pub(super) status: Mutex<AgentStatus>,
    /// Why the agent was told to stop: the first reason given wins.
    terminate_reason: OnceLock<String>,
    /// Woken when `terminate_reason` is set.
    terminated: Notify,
    pub(super) trust: Arc<std::sync::atomic::AtomicU8>,
    pub(super) shared: OnceLock<Arc<AgentShared>>,
}

impl AgentEntry {
    pub(super) fn new(status: AgentStatus, trust: Arc<std::sync::atomic::AtomicU8>) -> Self {
        AgentEntry {
            status: Mutex::new(status),
            terminate_reason: OnceLock::new(),
            terminated: Notify::new(),
            trust,
            shared: OnceLock::new(),
        }
    }

    pub(super) fn set(&self, status: AgentStatus) {
        *self.status.lock().expect("status lock poisoned") = status;
    }

    /// Tells the agent to stop. A later call keeps the first reason.
    pub(super) fn terminate(&self, reason: &str) {
        let _ = self.terminate_reason.set(reason.to_string());
        self.terminated.notify_waiters();
    }

    /// The reason, once the agent has been told to stop.
    pub(super) fn terminate_reason(&self) -> Option<&str> {
        self.terminate_reason.get().map(String::as_str)
    }

    /// Resolves with the reason when the agent is told to stop (at once if it already was).
    pub(super) async fn terminated(&self) -> String {
        loop {
            let notified = self.terminated.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a `terminate` between the two is not missed.
            notified.as_mut().enable();
            if let Some(reason) = self.terminate_reason() {
                return reason.to_string();
            }
            notified.await;
        }
    }
}

/// Live agents by id. The key is shared with the agent's [`Registration`].
pub(super) type Registry = Arc<Mutex<HashMap<Arc<str>, Arc<AgentEntry>>>>;

/// Removes an agent from the registry when its `SubAgent` goes away.
pub(super) struct Registration {
    pub(super) id: Arc<str>,
    pub(super) agents: Registry,
    pub(super) context: Option<crate::context::ContextService>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut agents) = self.agents.lock() {
            agents.remove(&*self.id);
        }
        if let (Some(ctx), Ok(rt)) = (self.context.take(), tokio::runtime::Handle::try_current()) {
            let id = self.id.clone();
            rt.spawn(async move {
                if let Err(e) = ctx.unregister_agent(&id).await {
                    tracing::debug!(agent = %id, error = %e, "unregistering a finished agent");
                }
            });
        }
    }
}
