//! The run's resource manager: allocations against host budgets (total memory of live agents,
//! number of live agents), refusal with a `RESOURCE` error when over, and expiry of allocations
//! that were never released.

use super::manifest::ResourceBudget;
use crate::error::Error;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
// Tokio's clock (the system's outside a paused test runtime), so expiry can be tested on paused
// time.
use tokio::time::Instant;

/// What one allocation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequest {
    /// Memory, MiB (the agent's `maxMemoryMB`).
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    /// Live agents (1 per attempt).
    pub agents: u32,
}

/// A granted allocation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAllocation {
    /// Id.
    pub allocation_id: u64,
    /// Who holds it (subtask and attempt).
    pub holder: String,
    /// What it holds.
    pub request: ResourceRequest,
    /// When it is reclaimed if not released, in milliseconds from grant.
    pub expires_in_ms: u64,
}

#[derive(Debug)]
struct Held {
    holder: String,
    request: ResourceRequest,
    expires: Instant,
}

/// Usage figures.
#[derive(Debug, Clone, Copy, Default, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStats {
    /// Allocations granted.
    pub granted: u64,
    /// Allocations refused (over budget at the time).
    pub refused: u64,
    /// Allocations reclaimed by expiry.
    pub expired: u64,
    /// Most memory held at once, MiB.
    #[serde(rename = "peakMemoryMB")]
    pub peak_memory_mb: u64,
    /// Most agents held at once.
    pub peak_agents: u32,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    held: HashMap<u64, Held>,
    memory_mb: u64,
    agents: u32,
    stats: ResourceStats,
}

/// Accounting against a [`ResourceBudget`].
#[derive(Debug)]
pub struct ResourceManager {
    budget: ResourceBudget,
    state: Mutex<State>,
}

impl ResourceManager {
    /// A manager with nothing allocated.
    pub fn new(budget: ResourceBudget) -> Self {
        ResourceManager {
            budget,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether `request` could ever be granted (it fits the budget when nothing else is held).
    pub fn fits(&self, request: ResourceRequest) -> Result<(), Error> {
        if request.memory_mb > self.budget.max_total_memory_mb {
            return Err(Error::Resource(format!(
                "{} MiB asked, but the run's whole budget is {} MiB (`resources.maxTotalMemoryMB`)",
                request.memory_mb, self.budget.max_total_memory_mb
            )));
        }
        if request.agents > self.budget.max_concurrent_allocations {
            return Err(Error::Resource(format!(
                "{} agents asked, but the run's budget is {} (`resources.maxConcurrentAllocations`)",
                request.agents, self.budget.max_concurrent_allocations
            )));
        }
        Ok(())
    }

    /// Grants `request` to `holder` until `lifetime` (plus the budget's grace) passes, or
    /// refuses with [`Error::Resource`] when the budget does not have it now. Expired
    /// allocations are reclaimed first.
    pub fn allocate(
        &self,
        holder: &str,
        request: ResourceRequest,
        lifetime: Duration,
    ) -> Result<ResourceAllocation, Error> {
        self.fits(request)?;
        let mut st = self.state.lock().expect("resource lock poisoned");
        Self::reclaim(&mut st);
        let memory = st.memory_mb + request.memory_mb;
        let agents = st.agents + request.agents;
        if memory > self.budget.max_total_memory_mb
            || agents > self.budget.max_concurrent_allocations
        {
            st.stats.refused += 1;
            return Err(Error::Resource(format!(
                "`{holder}` needs {} MiB and {} agent(s); held now: {} of {} MiB, {} of {} agents",
                request.memory_mb,
                request.agents,
                st.memory_mb,
                self.budget.max_total_memory_mb,
                st.agents,
                self.budget.max_concurrent_allocations
            )));
        }
        st.next += 1;
        let id = st.next;
        let ttl = lifetime + Duration::from_millis(self.budget.allocation_grace_ms);
        st.held.insert(
            id,
            Held {
                holder: holder.to_string(),
                request,
                expires: Instant::now() + ttl,
            },
        );
        st.memory_mb = memory;
        st.agents = agents;
        st.stats.granted += 1;
        st.stats.peak_memory_mb = st.stats.peak_memory_mb.max(memory);
        st.stats.peak_agents = st.stats.peak_agents.max(agents);
        Ok(ResourceAllocation {
            allocation_id: id,
            holder: holder.to_string(),
            request,
            expires_in_ms: ttl.as_millis() as u64,
        })
    }

    /// Returns an allocation; `false` if it was already released or reclaimed.
    pub fn release(&self, allocation: &ResourceAllocation) -> bool {
        let mut st = self.state.lock().expect("resource lock poisoned");
        match st.held.remove(&allocation.allocation_id) {
            Some(h) => {
                st.memory_mb -= h.request.memory_mb;
                st.agents -= h.request.agents;
                true
            }
            None => false,
        }
    }

    fn reclaim(st: &mut State) {
        let now = Instant::now();
        let expired: Vec<u64> = st
            .held
            .iter()
            .filter(|(_, h)| h.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(h) = st.held.remove(&id) {
                tracing::warn!(holder = %h.holder, "resource allocation expired unreleased; reclaimed");
                st.memory_mb -= h.request.memory_mb;
                st.agents -= h.request.agents;
                st.stats.expired += 1;
            }
        }
    }

    /// Memory and agents held now.
    pub fn held(&self) -> (u64, u32) {
        let mut st = self.state.lock().expect("resource lock poisoned");
        Self::reclaim(&mut st);
        (st.memory_mb, st.agents)
    }

    /// Counters so far.
    pub fn stats(&self) -> ResourceStats {
        self.state.lock().expect("resource lock poisoned").stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mgr(mem: u64, agents: u32, grace: u64) -> ResourceManager {
        ResourceManager::new(ResourceBudget {
            max_total_memory_mb: mem,
            max_concurrent_allocations: agents,
            allocation_grace_ms: grace,
        })
    }

    #[test]
    fn allocation_up_to_the_budget_and_one_past() {
        let m = mgr(128, 10, 1_000);
        let req = ResourceRequest {
            memory_mb: 64,
            agents: 1,
        };
        let a = m.allocate("a", req, Duration::from_secs(1)).unwrap();
        let b = m.allocate("b", req, Duration::from_secs(1)).unwrap();
        let e = m.allocate("c", req, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.category(), crate::ErrorCategory::Resource);
        assert!(m.release(&a));
        assert!(!m.release(&a));
        m.allocate("c", req, Duration::from_secs(1)).unwrap();
        assert!(m.release(&b));
        assert_eq!(m.stats().refused, 1);
        assert!(
            m.fits(ResourceRequest {
                memory_mb: 129,
                agents: 1
            })
            .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreleased_allocation_is_held_until_its_lifetime_and_grace_pass() {
        let m = mgr(64, 10, 5);
        let req = ResourceRequest {
            memory_mb: 64,
            agents: 1,
        };
        let a = m.allocate("a", req, Duration::from_millis(20)).unwrap();
        assert_eq!(a.expires_in_ms, 25, "lifetime plus grace");
        // Just inside: 1 ms before expiry the budget is still taken.
        tokio::time::advance(Duration::from_millis(24)).await;
        assert_eq!(m.held(), (64, 1));
        assert!(m.allocate("b", req, Duration::from_secs(1)).is_err());
        assert_eq!(m.stats().expired, 0);
        // Just past: reclaimed, and the budget is free again.
        tokio::time::advance(Duration::from_millis(1)).await;
        m.allocate("b", req, Duration::from_secs(1)).unwrap();
        assert_eq!(m.stats().expired, 1);
        assert!(!m.release(&a), "already reclaimed");
    }

    #[test]
    fn the_agent_count_is_a_budget_too() {
        let m = mgr(1024, 2, 1_000);
        let req = ResourceRequest {
            memory_mb: 1,
            agents: 1,
        };
        m.allocate("a", req, Duration::from_secs(1)).unwrap();
        m.allocate("b", req, Duration::from_secs(1)).unwrap();
        let e = m.allocate("c", req, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("2 of 2 agents"), "{e}");
        assert_eq!(m.stats().peak_agents, 2);
        let e = m
            .fits(ResourceRequest {
                memory_mb: 1,
                agents: 3,
            })
            .unwrap_err();
        assert!(e.to_string().contains("maxConcurrentAllocations"), "{e}");
    }
}
