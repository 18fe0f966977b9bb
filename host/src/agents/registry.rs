//! The registry of live agents: an entry per agent (status, terminate signal, trust, shared
//! state), removed when the agent's `SubAgent` goes away.

use super::AgentStatus;
use crate::sandbox::AgentShared;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub(super) struct AgentEntry {
    pub(super) status: Mutex<AgentStatus>,
    pub(super) terminate: watch::Sender<Option<String>>,
    pub(super) trust: Arc<std::sync::atomic::AtomicU8>,
    pub(super) shared: std::sync::OnceLock<Arc<AgentShared>>,
}

impl AgentEntry {
    pub(super) fn set(&self, status: AgentStatus) {
        *self.status.lock().expect("status lock poisoned") = status;
    }
}

pub(super) type Registry = Arc<Mutex<HashMap<String, Arc<AgentEntry>>>>;

/// Removes an agent from the registry when its `SubAgent` goes away.
pub(super) struct Registration {
    pub(super) id: String,
    pub(super) agents: Registry,
    pub(super) context: Option<crate::context::ContextService>,
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
