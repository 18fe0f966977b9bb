//! The process-wide descriptor budget: how many host file descriptors the agents of this
//! process may hold together, so that no set of agents can starve the host (or each other) of
//! descriptors (EMFILE for SQLite, the server's sockets, the component cache).
//!
//! The budget is derived once from `RLIMIT_NOFILE`: at first use the soft limit is raised to the
//! hard limit (a plain `setrlimit`, harmless and refused by nothing), then a quarter of it (at
//! least [`HOST_RESERVED_DESCRIPTORS`]) stays for the host's own use and the rest is shared by
//! agents. An agent that can open host descriptors (it has preopened directories, or network
//! access) reserves its `resourceLimits.maxOpenHandles` plus the descriptors the host opens for
//! its preopens when it is spawned, and gives them back when its Store is dropped. A spawn that
//! would go past the budget is refused with [`Error::Resource`] naming the numbers.
//!
//! ```
//! use qi_host::sandbox::descriptors::DescriptorBudget;
//! let budget = std::sync::Arc::new(DescriptorBudget::new(100));
//! let held = budget.reserve(60, "agent-1").unwrap();
//! assert!(budget.reserve(41, "agent-2").is_err());
//! drop(held);
//! assert_eq!(budget.reserved(), 0);
//! ```

use super::Grants;
use crate::error::{Error, Result};
use crate::spec::SubAgentSpecification;
use std::sync::{Arc, Mutex, OnceLock};

/// Descriptors kept for the host itself whatever `RLIMIT_NOFILE` is (at least a quarter of the
/// limit is kept).
pub const HOST_RESERVED_DESCRIPTORS: u64 = 256;

/// Descriptors the host opens per preopened directory of an agent: the grant's own handle and
/// the WASI context's.
const DESCRIPTORS_PER_PREOPEN: u64 = 2;

/// A pool of descriptors shared by agents (see the module documentation).
#[derive(Debug)]
pub struct DescriptorBudget {
    total: u64,
    reserved: Mutex<u64>,
}

impl DescriptorBudget {
    /// A budget of `total` descriptors for agents.
    pub fn new(total: u64) -> Self {
        DescriptorBudget {
            total,
            reserved: Mutex::new(0),
        }
    }

    /// The process's budget: `RLIMIT_NOFILE` (soft limit raised to the hard limit first) minus
    /// the host's share (a quarter, at least [`HOST_RESERVED_DESCRIPTORS`]).
    pub fn process() -> &'static Arc<DescriptorBudget> {
        static BUDGET: OnceLock<Arc<DescriptorBudget>> = OnceLock::new();
        BUDGET.get_or_init(|| {
            let limit = raise_nofile_limit();
            let host_share = (limit / 4).max(HOST_RESERVED_DESCRIPTORS);
            let total = limit.saturating_sub(host_share);
            tracing::debug!(limit, total, "descriptor budget for agents");
            Arc::new(DescriptorBudget::new(total))
        })
    }

    /// Descriptors agents may hold together.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Descriptors reserved by live agents now.
    pub fn reserved(&self) -> u64 {
        *self.reserved.lock().expect("descriptor budget poisoned")
    }

    /// Reserves `count` descriptors for `agent` until the returned guard is dropped; past the
    /// budget, [`Error::Resource`] says how many are in use and how to get room.
    pub fn reserve(self: &Arc<Self>, count: u64, agent: &str) -> Result<DescriptorReservation> {
        let mut reserved = self.reserved.lock().expect("descriptor budget poisoned");
        if *reserved + count > self.total {
            return Err(Error::Resource(format!(
                "{agent} needs {count} host descriptors (resourceLimits.maxOpenHandles plus its \
                 preopened directories) but only {} of the host's {} are free ({} reserved by live \
                 agents); lower resourceLimits.maxOpenHandles, wait for agents to finish, or raise \
                 the host's `ulimit -n`",
                self.total - *reserved,
                self.total,
                *reserved
            )));
        }
        *reserved += count;
        Ok(DescriptorReservation {
            budget: self.clone(),
            count,
        })
    }
}

/// Descriptors held by one agent; given back on drop.
#[derive(Debug)]
pub struct DescriptorReservation {
    budget: Arc<DescriptorBudget>,
    count: u64,
}

impl DescriptorReservation {
    /// Descriptors held.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Drop for DescriptorReservation {
    fn drop(&mut self) {
        if let Ok(mut reserved) = self.budget.reserved.lock() {
            *reserved -= self.count;
        }
    }
}

/// Reserves, from the process budget, what an agent with `spec` and `grants` can open: nothing
/// (`None`) when it has neither preopened directories nor network access, otherwise
/// `maxOpenHandles` plus two per preopened directory.
pub fn reserve(
    spec: &SubAgentSpecification,
    grants: &Grants,
    agent: &str,
) -> Result<Option<DescriptorReservation>> {
    let network =
        (grants.network_any || !grants.network.is_empty()) && !grants.is_prohibited("network");
    if grants.preopens.is_empty() && !network {
        return Ok(None);
    }
    let count = u64::from(spec.resource_limits.max_open_handles)
        + DESCRIPTORS_PER_PREOPEN * grants.preopens.len() as u64;
    DescriptorBudget::process().reserve(count, agent).map(Some)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the resulting soft limit
/// (2²⁰ when it is unlimited).
fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "cannot raise the descriptor limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_up_to_the_budget_pass_one_more_is_refused() {
        let budget = Arc::new(DescriptorBudget::new(10));
        let a = budget.reserve(6, "a").unwrap();
        let b = budget.reserve(4, "b").unwrap();
        assert_eq!(budget.reserved(), 10);
        let err = budget.reserve(1, "c").unwrap_err().to_string();
        assert!(err.contains("c needs 1 host descriptors"), "{err}");
        assert!(err.contains("only 0 of the host's 10 are free"), "{err}");
        drop(a);
        budget.reserve(6, "c").unwrap();
        drop(b);
    }

    #[test]
    fn the_process_budget_leaves_the_host_a_share() {
        let b = DescriptorBudget::process();
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap();
        assert!(b.total() + HOST_RESERVED_DESCRIPTORS <= soft);
        assert!(b.total() + soft / 4 <= soft);
    }
}
