//! Per-agent context quotas from the spec: `resourceLimits.maxContextWrites` and
//! `resourceLimits.maxContextBytes` (see [`ResourceLimits`](crate::spec::ResourceLimits)).
//!
//! Every context write an agent makes through `qi:agent/context` (create, put, patch, delete)
//! takes one write and the bytes of the JSON text it sends from these budgets before the
//! context store sees it; a write that stored a larger document than it sent (a patch, a
//! rollback, a resolution: each version holds the whole document) is then charged the rest. Both are taken or neither is: a write refused by either quota costs
//! nothing. A write that the store then refuses (access denied, stale) has still been counted,
//! as tool calls are: a guest cannot probe the store for free.

use super::AgentShared;
use crate::error::LimitKind;
use std::sync::atomic::{AtomicU64, Ordering};

/// Adds `amount` to `counter` if the total stays at most `max`; the total before, on refusal.
fn take(counter: &AtomicU64, amount: u64, max: u64) -> Result<(), u64> {
    let mut used = counter.load(Ordering::Relaxed);
    loop {
        let total = used.saturating_add(amount);
        if total > max {
            return Err(used);
        }
        match counter.compare_exchange_weak(used, total, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(now) => used = now,
        }
    }
}

impl AgentShared {
    /// Takes one context write of `bytes` bytes for host call `call` (e.g. `context.put`)
    /// from the agent's `maxContextWrites` and `maxContextBytes`. On refusal nothing is taken,
    /// the agent's first violation becomes [`LimitKind::ContextWrites`] or
    /// [`LimitKind::ContextBytes`], and the `Err` message names the spec field, what was used,
    /// the limit, and how to raise it.
    pub fn take_context_write(&self, call: &str, bytes: usize) -> Result<(), String> {
        let limits = &self.spec.resource_limits;
        let counters = &self.counters;
        let max_writes = u64::from(limits.max_context_writes);
        if let Err(used) = take(&counters.context_writes, 1, max_writes) {
            return Err(self.context_quota_refused(
                LimitKind::ContextWrites,
                max_writes,
                format!(
                    "{call}: write {} refused: resourceLimits.maxContextWrites lets the agent \
                     make {max_writes} context writes; raise it in the spec (within the \
                     isolation level's ceiling) or write less often",
                    used + 1
                ),
            ));
        }
        let max_bytes = limits.max_context_bytes;
        if let Err(used) = take(&counters.context_bytes, bytes as u64, max_bytes) {
            // Both or neither: give the write back.
            counters.context_writes.fetch_sub(1, Ordering::Relaxed);
            return Err(self.context_quota_refused(
                LimitKind::ContextBytes,
                max_bytes,
                format!(
                    "{call}: a write of {bytes} bytes refused: the agent has written {used} of \
                     the {max_bytes} bytes resourceLimits.maxContextBytes allows; raise it in \
                     the spec (within the isolation level's ceiling) or write less"
                ),
            ));
        }
        Ok(())
    }

    /// Counts against `maxContextBytes` and the stored-bytes bound what a write stored beyond
    /// the `taken` bytes it took before it ([`take_context_write`](Self::take_context_write)):
    /// a small patch, a rollback or a resolution makes a version holding the whole document.
    /// Never refuses (the write is done): the agent's next write finds the budget spent.
    pub fn charge_context_stored(&self, taken: usize, result: &crate::context::WriteResult) {
        let extra = result.doc_bytes.saturating_sub(taken as u64);
        if extra > 0 {
            for counter in [&self.counters.context_bytes, &self.counters.stored_bytes] {
                counter.fetch_add(extra, Ordering::Relaxed);
            }
        }
    }

    fn context_quota_refused(&self, limit: LimitKind, max: u64, detail: String) -> String {
        self.record_violation(limit, max, detail.clone());
        let _ = self.record_decision(
            "limits",
            &limit.to_string().replace(' ', "-"),
            "take",
            crate::audit::AuditDecision::Deny,
            &detail,
        );
        detail
    }
}
