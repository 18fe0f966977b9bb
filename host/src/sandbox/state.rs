//! What outlives a borrow of an agent's Store ([`AgentShared`]): identity, spec, grants,
//! counters, the access gate. The Store data itself is `crate::interfaces::AgentState`.

use super::{Counters, Grants, HostCallRecord, LogRecord};
use crate::error::{AgentFailure, LimitKind};
use crate::spec::{ResolvedOverrides, SubAgentSpecification};
use crate::tools::ToolRegistry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Audit entries one agent's own actions may add to the audit log: refused network attempts,
/// access-gate decisions and (when monitored) host-call records. Each is cheap for the guest and
/// is queued in host memory until the audit writer commits it, so a guest in a tight loop would
/// otherwise grow the queue and the log without bound. Past the bound the entries are dropped
/// and counted (`UsageReceipt::audit_dropped`), one `audit-truncated` entry says so, and every
/// decision is still enforced and counted in the receipt. Lifecycle entries (spawn, finish,
/// terminate, trust changes, the limit violation) are always written.
pub const MAX_AUDIT_ENTRIES_PER_AGENT: u64 = 10_000;

/// Everything about an agent that outlives a borrow of its Store.
#[derive(Debug)]
pub struct AgentShared {
    /// Host-assigned id; the agent cannot choose or change it.
    pub id: String,
    /// The spec it was spawned with.
    pub spec: SubAgentSpecification,
    /// Overrides resolved from the spec.
    pub overrides: ResolvedOverrides,
    /// Resolved grants.
    pub grants: Grants,
    /// Live counters.
    pub counters: Counters,
    /// When the agent's clock started (spawn).
    pub started: Instant,
    /// The wall-clock deadline.
    pub deadline: Instant,
    /// The first limit the agent ran into, if any.
    pub violation: Mutex<Option<AgentFailure>>,
    /// Host calls, when monitored.
    pub call_log: Mutex<Vec<HostCallRecord>>,
    /// Log records kept for the report.
    pub logs: Mutex<Vec<LogRecord>>,
    /// Tools the host offers.
    pub tools: Arc<ToolRegistry>,
    /// Gate on in-flight host operations (`maxConcurrentOperations`).
    pub operations: LazySemaphore,
    /// The kept bytes of the agent's stdout and stderr (see [`super::BoundedCapture`]).
    pub stdio: super::StdioBuffers,
    /// Name lookups that may run at once
    /// ([`MAX_LOOKUPS_IN_FLIGHT`](crate::wasi::sockets::lookup::MAX_LOOKUPS_IN_FLIGHT)).
    pub lookups: LazySemaphore,
    /// The context store, when the host has one; the agent acts in it as `id`.
    pub context: Option<crate::context::ContextService>,
    /// The agent's cache of the contexts it reads (default bounds, see
    /// [`crate::context::cache`]).
    pub context_cache: crate::context::cache::ContextCache,
    /// The run's synchronization points and this agent's subtask, inside a coordinated run.
    pub sync: Option<crate::coord::sync::SyncHandle>,
    /// The host's access gate and audit log.
    pub access: Option<Arc<crate::security::AccessControl>>,
    /// The host's model broker, if it has one (`qi:agent/llm`).
    pub llm: Option<Arc<crate::llm::LlmBroker>>,
    /// How many times this agent made each model request so far, by request hash (which
    /// recording a repeated request is answered from).
    pub llm_seen: Mutex<std::collections::HashMap<String, u32>>,
    /// Current trust level (a `TrustLevel` as `u8`), shared with the host's registry.
    pub trust: Arc<std::sync::atomic::AtomicU8>,
    /// The component's declared name, once `describe` answered. For reports only: access
    /// decisions use `spec.name`, which the host assigned.
    pub name: std::sync::OnceLock<String>,
    /// The agent's recent gate decisions (see [`super::gate`]).
    pub(crate) gate_memo: super::gate::GateMemo,
}

impl AgentShared {
    /// The access gate (`enforceAccessControl`) for one host call: `kind`/`id` name the
    /// resource (`context`/`plan`, `tool`/`fs.read`, ...). `Err` carries the guest-facing
    /// reason. With policies loaded the decision (allow or deny) is audited; without them the
    /// call is allowed, and audited as allowed when the agent is `monitored`. Fail-closed: an
    /// allowed call whose audit entry cannot be recorded is refused ("the audit log cannot
    /// record this call: ...").
    pub fn gate(&self, kind: &str, id: &str, action: &str) -> Result<(), String> {
        let Some(access) = &self.access else {
            return Ok(());
        };
        let Some(policies) = access.current() else {
            if self.grants.monitored {
                return self.record_decision(
                    kind,
                    id,
                    action,
                    crate::audit::AuditDecision::Allow,
                    "no policies loaded",
                );
            }
            return Ok(());
        };
        let stamp = super::gate::GateStamp::with(self, policies);
        let remembered = match self.gate_memo.get(kind, id, action, &stamp) {
            Some(remembered) => remembered,
            None => {
                let d = self.decide(&stamp, kind, id, action);
                self.gate_memo
                    .put(kind, id, action, stamp, d.allowed, &d.reason)
            }
        };
        if remembered.allowed {
            self.record_shared_decision(remembered.entry)
        } else {
            self.counters.access_denied.fetch_add(1, Ordering::Relaxed);
            Err(self.refuse(kind, id, action, &remembered.entry.reason))
        }
    }

    /// [`record_decision`](Self::record_decision) for a decision the gate's memo holds.
    fn record_shared_decision(&self, entry: crate::audit::SharedDecision) -> Result<(), String> {
        self.within_audit_budget(|log| log.record_decision(entry))
    }

    /// Runs `record` on the audit log, if there is one and this agent is within
    /// [`MAX_AUDIT_ENTRIES_PER_AGENT`] (past it the entry is only counted); a log that refuses
    /// the entry refuses the call.
    fn within_audit_budget(
        &self,
        record: impl FnOnce(&crate::audit::AuditLog) -> Result<(), crate::audit::AuditUnavailable>,
    ) -> Result<(), String> {
        let Some(log) = self.access.as_ref().and_then(|a| a.audit()) else {
            return Ok(());
        };
        if !self.take_audit_entry() {
            return Ok(());
        }
        record(log).map_err(|e| format!("the audit log cannot record this call: {e}"))
    }

    /// The decision of `stamp`'s policies on `action` of `kind`/`id` by this agent at
    /// `stamp`'s trust level, with the context's attributes when the policies read them (not
    /// audited: [`gate`](Self::gate) records it). The trust level is the stamp's, not read
    /// again: a level changed in between would otherwise be remembered under the old one.
    fn decide(
        &self,
        stamp: &super::gate::GateStamp,
        kind: &str,
        id: &str,
        action: &str,
    ) -> crate::security::Decision {
        let attrs = match kind {
            "context" | "events" if stamp.policies().needs_resource_attrs() => {
                self.context.as_ref().and_then(|c| c.attributes(id))
            }
            _ => None,
        };
        let no_labels = Vec::new();
        let req = crate::security::Request {
            agent_id: &self.id,
            // The host-assigned name, never the one `describe()` declared.
            agent_name: self.spec.name.as_deref(),
            trust: crate::security::TrustLevel::from_u8(stamp.trust()),
            capabilities: &self.spec.capabilities,
            isolation: self.spec.isolation_level,
            kind,
            id,
            resource_type: attrs.as_ref().map(|a| a.0.as_str()),
            owner: attrs.as_ref().map(|a| a.1.as_str()),
            labels: attrs.as_ref().map(|a| &a.2).unwrap_or(&no_labels),
            action,
        };
        let d = stamp.policies().decide(&req);
        if !d.allowed {
            tracing::info!(agent = req.agent_id, resource = %req.resource(), action, reason = %d.reason, "access denied by policy");
        }
        d
    }

    /// The one audited refusal: records a `deny` entry for `kind/id` and `action` with
    /// `reason` (within the agent's [`MAX_AUDIT_ENTRIES_PER_AGENT`]; past it only counted) and
    /// returns the guest-facing message, `"{action} on {kind}/{id} refused: {reason}"`. The
    /// call is refused whether or not the entry could be recorded; when it could not, the
    /// message says so too. Callers count the refusal in their own counter.
    pub fn refuse(&self, kind: &str, id: &str, action: &str, reason: &str) -> String {
        let message = format!("{action} on {kind}/{id} refused: {reason}");
        tracing::info!(agent = %self.id, kind, id, action, reason, "refused");
        match self.record_decision(kind, id, action, crate::audit::AuditDecision::Deny, reason) {
            Ok(()) => message,
            Err(unrecorded) => format!("{message} ({unrecorded})"),
        }
    }

    /// Records an access decision about `kind/id` for this agent, fail-closed: `Err("the
    /// audit log cannot record this call: ...")` when the log refuses the entry (full queue,
    /// failed writer); the caller must then refuse the call. `Ok` without writing when there is
    /// no audit log, or past [`MAX_AUDIT_ENTRIES_PER_AGENT`] (counted as dropped).
    pub fn record_decision(
        &self,
        kind: &str,
        id: &str,
        action: &str,
        decision: crate::audit::AuditDecision,
        reason: &str,
    ) -> Result<(), String> {
        self.within_audit_budget(|log| {
            log.record(crate::audit::NewAuditEntry::new(
                self.id.clone(),
                format!("{kind}/{id}"),
                action,
                decision,
                reason,
            ))
        })
    }

    /// Appends a lifecycle fact about this agent to the audit log, if there is one. `entry`
    /// gives the entry's reason and details; it is called only when an audit log is attached,
    /// so an agent without one pays nothing to describe what would have been recorded. A fact
    /// that cannot be recorded (full queue, failed log) is only in the log's `status()` (and
    /// logged); use [`audit_or_refuse`](Self::audit_or_refuse) where the action must not go
    /// ahead unrecorded.
    pub fn audit(
        &self,
        resource: &str,
        operation: &str,
        entry: impl FnOnce() -> (String, serde_json::Value),
    ) {
        let _ = self.audit_or_refuse(resource, operation, entry);
    }

    /// [`audit`](Self::audit), fail-closed: `Err("the audit log cannot record this: ...")`
    /// when the log refuses the entry; the caller must then not go ahead (a spawn fails).
    pub fn audit_or_refuse(
        &self,
        resource: &str,
        operation: &str,
        entry: impl FnOnce() -> (String, serde_json::Value),
    ) -> Result<(), String> {
        let Some(log) = self.access.as_ref().and_then(|a| a.audit()) else {
            return Ok(());
        };
        let (reason, details) = entry();
        log.record(
            crate::audit::NewAuditEntry::new(
                self.id.clone(),
                resource,
                operation,
                crate::audit::AuditDecision::Record,
                reason,
            )
            .details(details),
        )
        .map_err(|e| format!("the audit log cannot record this {operation}: {e}"))
    }

    /// Takes one of the audit entries the agent's own actions may add (refused network
    /// attempts, gate decisions, monitored host calls): true when the entry may be written.
    /// Past [`MAX_AUDIT_ENTRIES_PER_AGENT`] the entry is dropped and counted
    /// (`UsageReceipt::audit_dropped`); the first one dropped writes one `audit-truncated`
    /// entry instead. Without an audit log nothing is written or counted.
    pub fn take_audit_entry(&self) -> bool {
        const MAX: u64 = MAX_AUDIT_ENTRIES_PER_AGENT;
        if self.access.as_ref().and_then(|a| a.audit()).is_none() {
            return false;
        }
        let n = self.counters.audit_entries.fetch_add(1, Ordering::Relaxed) + 1;
        if n == MAX + 1 {
            self.audit("limits", "audit-truncated", || {
                (
                    format!(
                        "the agent caused more than {MAX} audit entries; further ones are dropped \
                     and counted in its receipt (audit_dropped), their decisions still enforced"
                    ),
                    serde_json::json!({"limit": MAX}),
                )
            });
        }
        n <= MAX
    }

    /// Records the first limit violation (later ones are consequences of the first).
    pub fn record_violation(&self, limit: LimitKind, limit_value: u64, detail: String) {
        let mut v = self.violation.lock().expect("violation lock poisoned");
        if v.is_none() {
            self.audit("limits", "limit-violation", || {
                (
                    format!("{limit} limit ({limit_value}): {detail}"),
                    serde_json::json!({"limit": limit, "limitValue": limit_value}),
                )
            });
            *v = Some(AgentFailure::LimitExceeded {
                limit,
                limit_value,
                detail,
            });
        }
    }

    /// The counter and the limit of a counted budget (tool calls, file operations, network
    /// operations); `None` for every other limit.
    fn counted(&self, limit: LimitKind) -> Option<(&AtomicU64, u64)> {
        let l = &self.spec.resource_limits;
        Some(match limit {
            LimitKind::ToolCalls => (&self.counters.tool_calls, u64::from(l.max_tool_calls)),
            LimitKind::FileOperations => (
                &self.counters.file_operations,
                u64::from(l.max_file_operations),
            ),
            LimitKind::NetworkOperations => (
                &self.counters.network_operations,
                u64::from(l.max_network_operations),
            ),
            LimitKind::LlmCalls => (&self.counters.llm_calls, u64::from(l.max_llm_calls)),
            _ => return None,
        })
    }

    /// Takes one unit of a counted budget; `Err` (and a recorded violation) when it is spent.
    pub fn take_budget(&self, limit: LimitKind) -> Result<(), String> {
        let (counter, max) = self.counted(limit).expect("only counted budgets are taken");
        let used = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if used > max {
            counter.fetch_sub(1, Ordering::Relaxed);
            let detail = format!("attempt {used} refused: the agent may make {max} {limit}");
            self.record_violation(limit, max, detail.clone());
            // Every refused attempt is audited (within the agent's audit bound), not only the
            // first violation.
            let _ = self.record_decision(
                "limits",
                &limit.to_string().replace(' ', "-"),
                "take",
                crate::audit::AuditDecision::Deny,
                &detail,
            );
            return Err(detail);
        }
        Ok(())
    }

    /// Remaining budget of a counted limit (0 for any other limit).
    pub fn remaining(&self, limit: LimitKind) -> u64 {
        self.counted(limit).map_or(0, |(counter, max)| {
            max.saturating_sub(counter.load(Ordering::Relaxed))
        })
    }

    /// Counts a `qi:agent` host call, at its start. It is also a heartbeat of the agent in the
    /// context store (in memory, no write; see
    /// [`ContextService::seen`](crate::context::ContextService::seen)).
    /// Returns false when the context store has the agent as disconnected (or not
    /// registered), which the heartbeat in memory cannot change.
    pub fn count_host_call(&self) -> bool {
        self.counters
            .host_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.context.as_ref().is_none_or(|c| c.seen(&self.id))
    }

    /// Appends a monitored host-call record (no-op unless monitored).
    pub fn record_call(
        &self,
        call: &str,
        target: &str,
        arg_bytes: usize,
        start: Instant,
        outcome: &str,
    ) {
        if !self.grants.monitored {
            return;
        }
        let duration_us = start.elapsed().as_micros() as u64;
        if self.take_audit_entry() {
            self.audit(&format!("call/{target}"), call, || {
                (
                    outcome.to_string(),
                    serde_json::json!({"argBytes": arg_bytes, "durationUs": duration_us}),
                )
            });
        }
        let mut log = self.call_log.lock().expect("call log poisoned");
        // Bounded like everything a guest controls: as many records as audit entries, each
        // target cut as the audit log cuts it (a path is the guest's to make long).
        if log.len() < MAX_AUDIT_ENTRIES_PER_AGENT as usize {
            let target = crate::audit::cap_text(target.to_string(), crate::audit::MAX_NAME_BYTES);
            log.push(HostCallRecord {
                call: call.to_string(),
                target,
                arg_bytes: arg_bytes as u64,
                duration_us: start.elapsed().as_micros() as u64,
                outcome: outcome.to_string(),
            });
        }
    }
}

/// A semaphore made on first use: most agents never make the calls it gates, and an agent's
/// spawn should not pay for one.
#[derive(Debug)]
pub struct LazySemaphore {
    permits: usize,
    semaphore: std::sync::OnceLock<Arc<tokio::sync::Semaphore>>,
}

impl LazySemaphore {
    /// A semaphore of `permits` permits, made when first asked for.
    pub fn new(permits: usize) -> Self {
        LazySemaphore {
            permits,
            semaphore: std::sync::OnceLock::new(),
        }
    }

    /// The semaphore (made now if this is the first use).
    pub fn get(&self) -> &Arc<tokio::sync::Semaphore> {
        self.semaphore
            .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(self.permits)))
    }
}
