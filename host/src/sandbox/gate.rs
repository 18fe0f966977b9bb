//! What an access-gate decision was made with ([`GateStamp`]), and each agent's memo of its
//! recent decisions ([`GateMemo`]): a decision stands while its stamp does, so a guest that
//! reads one context in a loop pays for one lookup per call, not for a policy evaluation.

use super::AgentShared;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Decisions one agent's memo keeps; past it the memo starts over (the decisions are made
/// again, by the policy set's own cache or by Cedar). Each holds a resource id the guest
/// chose, so the bound keeps a guest naming many resources from growing host memory.
pub const MAX_GATE_MEMO_ENTRIES: usize = 1024;

/// What one gate decision was made with: the policy set in force (held, so its address cannot
/// be reused by a later one), the agent's trust level and the context store's
/// [`attributes_generation`](crate::context::ContextService::attributes_generation). Everything
/// else a decision reads (the agent's id, name, capabilities and isolation level) is fixed for
/// the agent's life. While the stamp is the same, so is the decision.
#[derive(Clone)]
pub(crate) struct GateStamp {
    policies: Arc<crate::security::PolicySet>,
    trust: u8,
    attributes: u64,
}

impl PartialEq for GateStamp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.policies, &other.policies)
            && self.trust == other.trust
            && self.attributes == other.attributes
    }
}

impl GateStamp {
    /// The stamp a decision made now would carry; `None` when no policies are loaded (the
    /// gate is open, nothing to decide).
    pub(crate) fn now(shared: &AgentShared) -> Option<GateStamp> {
        let policies = shared.access.as_ref()?.current()?;
        Some(GateStamp::with(shared, policies))
    }

    /// The stamp of a decision made now under `policies`.
    pub(crate) fn with(shared: &AgentShared, policies: Arc<crate::security::PolicySet>) -> Self {
        GateStamp {
            policies,
            trust: shared.trust.load(Ordering::Relaxed),
            attributes: shared
                .context
                .as_ref()
                .map_or(0, crate::context::ContextService::attributes_generation),
        }
    }

    /// The trust level (a `TrustLevel` as `u8`) the decision is made at.
    pub(crate) fn trust(&self) -> u8 {
        self.trust
    }

    /// The policy set the decision is made by.
    pub(crate) fn policies(&self) -> &crate::security::PolicySet {
        &self.policies
    }
}

/// A remembered decision.
struct Memo {
    kind: Box<str>,
    stamp: GateStamp,
    decision: Remembered,
}

/// A decision as the memo hands it out: whether it allowed, and the audit entry that records
/// it, its strings shared so that recording it again copies none.
#[derive(Clone)]
pub(crate) struct Remembered {
    pub allowed: bool,
    pub entry: crate::audit::SharedDecision,
}

/// The memo's decisions by resource id, and how many it holds in all.
type ById = (HashMap<Box<str>, Vec<Memo>>, usize);

/// What the memo holds: its decisions, and the policy set they were all made under.
#[derive(Default)]
struct Held {
    by_id: ById,
    policies: Option<Arc<crate::security::PolicySet>>,
}

/// An agent's recent gate decisions, by resource id, at most [`MAX_GATE_MEMO_ENTRIES`].
pub(crate) struct GateMemo {
    /// The agent's id, shared by every entry.
    agent: Arc<str>,
    held: Mutex<Held>,
}

impl std::fmt::Debug for GateMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateMemo").finish_non_exhaustive()
    }
}

impl GateMemo {
    /// An empty memo for the agent `agent`.
    pub(crate) fn new(agent: &str) -> Self {
        GateMemo {
            agent: Arc::from(agent),
            held: Mutex::default(),
        }
    }

    /// The decision on `action` of `kind`/`id` made under `stamp`, if one is remembered.
    pub(crate) fn get(
        &self,
        kind: &str,
        id: &str,
        action: &str,
        stamp: &GateStamp,
    ) -> Option<Remembered> {
        let memo = self.held.lock().unwrap_or_else(|p| p.into_inner());
        memo.by_id
            .0
            .get(id)?
            .iter()
            .find(|m| {
                &*m.kind == kind && &*m.decision.entry.operation == action && m.stamp == *stamp
            })
            .map(|m| m.decision.clone())
    }

    /// Remembers a decision made under `stamp` (replacing an older one on the same request)
    /// and returns it as [`get`](Self::get) will.
    pub(crate) fn put(
        &self,
        kind: &str,
        id: &str,
        action: &str,
        stamp: GateStamp,
        allowed: bool,
        reason: &str,
    ) -> Remembered {
        let decision = Remembered {
            allowed,
            entry: crate::audit::SharedDecision {
                agent: self.agent.clone(),
                resource: Arc::from(format!("{kind}/{id}")),
                operation: Arc::from(action),
                decision: if allowed {
                    crate::audit::AuditDecision::Allow
                } else {
                    crate::audit::AuditDecision::Deny
                },
                reason: Arc::from(reason),
            },
        };
        let mut memo = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let Held { by_id, policies } = &mut *memo;
        let (map, count) = by_id;
        // A policy set is never current again once replaced, so decisions made under another
        // one can never answer again; dropped now, they do not keep every replaced set (and
        // its decision cache) alive until the bound is reached.
        if !policies
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, &stamp.policies))
        {
            map.clear();
            *count = 0;
            *policies = Some(stamp.policies.clone());
        }
        if let Some(list) = map.get_mut(id)
            && let Some(m) = list
                .iter_mut()
                .find(|m| &*m.kind == kind && &*m.decision.entry.operation == action)
        {
            (m.stamp, m.decision) = (stamp, decision.clone());
            return decision;
        }
        if *count >= MAX_GATE_MEMO_ENTRIES {
            map.clear();
            *count = 0;
        }
        *count += 1;
        map.entry(id.into()).or_default().push(Memo {
            kind: kind.into(),
            stamp,
            decision: decision.clone(),
        });
        decision
    }

    /// Decisions remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).by_id.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::PolicySet;

    fn stamp(policies: &Arc<PolicySet>, trust: u8, attributes: u64) -> GateStamp {
        GateStamp {
            policies: policies.clone(),
            trust,
            attributes,
        }
    }

    /// What `get` answered, as (allowed, reason).
    fn seen(r: Option<Remembered>) -> Option<(bool, String)> {
        r.map(|r| (r.allowed, r.entry.reason.to_string()))
    }

    #[test]
    fn a_decision_stands_only_under_the_same_stamp_and_request() {
        let p = Arc::new(PolicySet::new(Vec::new()).unwrap());
        let memo = GateMemo::new("agent-1");
        memo.put("context", "doc", "get", stamp(&p, 1, 7), true, "rule r");
        let hit = memo.get("context", "doc", "get", &stamp(&p, 1, 7));
        assert_eq!(seen(hit.clone()), Some((true, "rule r".to_string())));
        let entry = hit.unwrap().entry;
        assert_eq!(
            (&*entry.agent, &*entry.resource, &*entry.operation),
            ("agent-1", "context/doc", "get")
        );
        // Another policy set (even an equal one), trust level, attributes generation,
        // resource kind, id or action: decided again.
        let q = Arc::new(PolicySet::new(Vec::new()).unwrap());
        for (kind, id, action, s) in [
            ("context", "doc", "get", stamp(&q, 1, 7)),
            ("context", "doc", "get", stamp(&p, 2, 7)),
            ("context", "doc", "get", stamp(&p, 1, 8)),
            ("events", "doc", "get", stamp(&p, 1, 7)),
            ("context", "doc2", "get", stamp(&p, 1, 7)),
            ("context", "doc", "put", stamp(&p, 1, 7)),
        ] {
            assert!(
                memo.get(kind, id, action, &s).is_none(),
                "{kind}/{id} {action}"
            );
        }
        // A new decision on the same request replaces the old one.
        memo.put("context", "doc", "get", stamp(&p, 2, 7), false, "no rule");
        assert!(
            memo.get("context", "doc", "get", &stamp(&p, 1, 7))
                .is_none()
        );
        assert_eq!(
            seen(memo.get("context", "doc", "get", &stamp(&p, 2, 7))),
            Some((false, "no rule".to_string()))
        );
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn a_decision_under_a_new_policy_set_drops_those_made_under_the_old_one() {
        let p = Arc::new(PolicySet::new(Vec::new()).unwrap());
        let memo = GateMemo::new("agent-1");
        memo.put("context", "a", "get", stamp(&p, 1, 0), true, "r");
        memo.put("context", "b", "get", stamp(&p, 1, 0), true, "r");
        assert_eq!(
            Arc::strong_count(&p),
            4,
            "each decision holds the set, and the memo too"
        );
        let q = Arc::new(PolicySet::new(Vec::new()).unwrap());
        memo.put("context", "c", "get", stamp(&q, 1, 0), true, "r");
        assert_eq!(memo.len(), 1);
        assert_eq!(
            Arc::strong_count(&p),
            1,
            "the replaced set is no longer kept alive by the memo"
        );
        assert!(memo.get("context", "c", "get", &stamp(&q, 1, 0)).is_some());
    }

    #[test]
    fn the_memo_keeps_its_bound_and_then_starts_over() {
        let p = Arc::new(PolicySet::new(Vec::new()).unwrap());
        let memo = GateMemo::new("agent-1");
        for n in 0..MAX_GATE_MEMO_ENTRIES {
            memo.put(
                "context",
                &format!("c{n}"),
                "get",
                stamp(&p, 1, 0),
                true,
                "r",
            );
        }
        assert_eq!(memo.len(), MAX_GATE_MEMO_ENTRIES, "just inside: all kept");
        assert!(memo.get("context", "c0", "get", &stamp(&p, 1, 0)).is_some());
        memo.put("context", "one-more", "get", stamp(&p, 1, 0), true, "r");
        assert_eq!(memo.len(), 1, "just past: the memo starts over");
        assert!(memo.get("context", "c0", "get", &stamp(&p, 1, 0)).is_none());
        assert!(
            memo.get("context", "one-more", "get", &stamp(&p, 1, 0))
                .is_some()
        );
    }
}
