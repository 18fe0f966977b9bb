//! Access control: policies, trust levels and the one gate every host call goes through.
//!
//! # Policies
//!
//! A policy file (TOML or JSON, given to `qi-host --policies FILE`, or loaded with
//! [`PolicySet::load`]) holds access policies; each has an id, a name, a priority, an `active`
//! flag and rules. A rule has an `effect` (`allow` or `deny`), glob patterns over `resources`
//! (`<kind>/<id>`: `context/plan`, `events/plan`, `sync/verdict`, `tool/fs.read`,
//! `file/workspace/src/main.rs`, `network/10.0.0.1:443`), over `agents` (an agent's host-assigned
//! id or its component's name) and over `actions`, and an optional `condition` in the language
//! of [`expr`]. Conditions are parsed when the policies are loaded. Actions by resource kind:
//!
//! | kind | actions |
//! |---|---|
//! | `context` | `create`, `get`, `put`, `patch`, `delete`, `share`, `revoke`, `ids` (id `*`) |
//! | `events` | `subscribe`, `publish` (the id is the context's) |
//! | `sync` | `barrier`, `checkpoint`, `restore`, `vote`, `contribute` |
//! | `tool` | `call` |
//! | `file` | `open`, `write`, `stat`, `mkdir`, `delete`, `link`, `read` (the path as the agent passed it, relative to the directory it opened it from) |
//! | `network` | `bind`, `connect`, `send`, `listen` (the id is `ip:port`) |
//!
//! # Evaluation order
//!
//! 1. Only active policies count. A rule matches when its agent, resource and action patterns
//!    match and its condition holds.
//! 2. Among matching rules, the one of the highest-priority policy decides.
//! 3. At equal priority, `deny` beats `allow`.
//! 4. No matching rule: deny.
//!
//! With no policies loaded the gate is open (sharing, grants and limits still apply). With
//! policies, both the policy and the context's sharing must allow an action: the gate runs
//! first, then the context store's own check.
//!
//! Every decision of the gate is appended to the audit log when one is attached (allowed and
//! denied); a change of the policies takes effect on the next call.

pub mod expr;
pub mod identity;

use crate::audit::{AuditDecision, AuditLog, NewAuditEntry};
use crate::error::Error;
use crate::spec::IsolationLevel;
use expr::{Attr, Expr, Facts, Val};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, RwLock};

/// How far the host trusts an agent.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum TrustLevel {
    /// Not at all.
    None,
    /// The default for a spawned agent.
    #[default]
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Full.
    Full,
}

impl TrustLevel {
    /// Every level, lowest first.
    pub const ALL: [TrustLevel; 5] = [
        TrustLevel::None,
        TrustLevel::Low,
        TrustLevel::Medium,
        TrustLevel::High,
        TrustLevel::Full,
    ];

    /// Name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustLevel::None => "none",
            TrustLevel::Low => "low",
            TrustLevel::Medium => "medium",
            TrustLevel::High => "high",
            TrustLevel::Full => "full",
        }
    }

    /// From its `u8` form (for atomics).
    pub fn from_u8(v: u8) -> TrustLevel {
        Self::ALL[usize::from(v).min(4)]
    }
}

impl std::str::FromStr for TrustLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a trust level; use none, low, medium, high or full")
            })
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
}

/// One rule as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Allow or deny.
    pub effect: Effect,
    /// Resource patterns (`<kind>/<id>` globs).
    pub resources: Vec<String>,
    /// Agent patterns (ids or component names); default all.
    #[serde(default = "all")]
    pub agents: Vec<String>,
    /// Action patterns; default all.
    #[serde(default = "all")]
    pub actions: Vec<String>,
    /// Condition (see [`expr`]).
    #[serde(default)]
    pub condition: Option<String>,
}

fn all() -> Vec<String> {
    vec!["*".into()]
}

fn yes() -> bool {
    true
}

/// One policy as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicy {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Higher wins.
    #[serde(default)]
    pub priority: i32,
    /// Inactive policies are ignored.
    #[serde(default = "yes")]
    pub active: bool,
    /// Rules.
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policies: Vec<AccessPolicy>,
}

/// A compiled pattern list; `*` alone matches everything without running a matcher.
#[derive(Debug)]
enum Matcher {
    Any,
    Set(GlobSet),
}

impl Matcher {
    fn is_match(&self, c: &globset::Candidate<'_>) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Set(s) => s.is_match_candidate(c),
        }
    }
}

#[derive(Debug)]
struct CompiledRule {
    effect: Effect,
    resources: Matcher,
    agents: Matcher,
    actions: Matcher,
    condition: Option<Expr>,
    /// The audit reason when this rule decides.
    reason: String,
}

#[derive(Debug)]
struct CompiledPolicy {
    priority: i32,
    active: bool,
    rules: Vec<CompiledRule>,
}

/// Validated, compiled policies.
#[derive(Debug)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    source: Vec<AccessPolicy>,
    /// Whether any condition reads `resource.type`, `resource.owner` or `resource.labels`
    /// (only then does the gate look the resource up).
    needs_resource_attrs: bool,
}

fn globs(field: &str, patterns: &[String]) -> Result<Matcher, String> {
    if patterns.is_empty() {
        return Err(format!("`{field}` is empty; use [\"*\"] for all"));
    }
    if patterns.iter().any(|p| p == "*" || p == "**") {
        return Ok(Matcher::Any);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| format!("`{field}` pattern `{p}`: {e}"))?);
    }
    b.build()
        .map(Matcher::Set)
        .map_err(|e| format!("`{field}`: {e}"))
}

impl PolicySet {
    /// Validates and compiles policies; the error names the policy, the rule and the part.
    pub fn new(policies: Vec<AccessPolicy>) -> Result<PolicySet, String> {
        let mut compiled = Vec::new();
        let mut ids = std::collections::BTreeSet::new();
        for p in &policies {
            if p.id.trim().is_empty() || !ids.insert(p.id.clone()) {
                return Err(format!("policy id `{}` is empty or used twice", p.id));
            }
            let mut rules = Vec::new();
            for (i, r) in p.rules.iter().enumerate() {
                let at = |m: String| format!("policy `{}` rule {}: {m}", p.id, i + 1);
                let condition = match &r.condition {
                    Some(c) => {
                        Some(expr::parse(c).map_err(|e| at(format!("condition `{c}` {e}")))?)
                    }
                    None => None,
                };
                rules.push(CompiledRule {
                    reason: format!(
                        "policy `{}` rule {} {}",
                        p.id,
                        i + 1,
                        if r.effect == Effect::Allow {
                            "allows it"
                        } else {
                            "denies it"
                        }
                    ),
                    effect: r.effect,
                    resources: globs("resources", &r.resources).map_err(at)?,
                    agents: globs("agents", &r.agents).map_err(at)?,
                    actions: globs("actions", &r.actions).map_err(at)?,
                    condition,
                });
            }
            compiled.push(CompiledPolicy {
                priority: p.priority,
                active: p.active,
                rules,
            });
        }
        let needs_resource_attrs = compiled.iter().flat_map(|p| &p.rules).any(|r| {
            r.condition.as_ref().is_some_and(|c| {
                expr::uses(
                    c,
                    &[
                        Attr::ResourceType,
                        Attr::ResourceOwner,
                        Attr::ResourceLabels,
                    ],
                )
            })
        });
        Ok(PolicySet {
            policies: compiled,
            source: policies,
            needs_resource_attrs,
        })
    }

    /// Reads a policy file: TOML (`[[policies]]`), or JSON (`{"policies": [...]}`) when it ends
    /// in `.json`.
    pub fn load(path: &Path) -> Result<PolicySet, Error> {
        let err = |m: String| Error::field("--policies", format!("{}: {m}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let file: PolicyFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| err(e.to_string().trim().to_string()))?
        };
        PolicySet::new(file.policies).map_err(err)
    }

    /// The policies as written.
    pub fn policies(&self) -> &[AccessPolicy] {
        &self.source
    }

    /// Whether a decision needs the resource's type, owner or labels.
    pub fn needs_resource_attrs(&self) -> bool {
        self.needs_resource_attrs
    }

    /// Decides `req` (see the module docs for the order).
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        self.decide_on(req, &req.resource())
    }

    /// [`decide`](Self::decide) with the resource string (`<kind>/<id>`) already built.
    fn decide_on(&self, req: &Request<'_>, resource: &str) -> Decision {
        let resource_c = globset::Candidate::new(resource);
        let action_c = globset::Candidate::new(req.action);
        let id_c = globset::Candidate::new(req.agent_id);
        let name_c = req.agent_name.map(globset::Candidate::new);
        let mut best: Option<(i32, &CompiledRule)> = None;
        for p in self.policies.iter().filter(|p| p.active) {
            for r in &p.rules {
                if !(r.actions.is_match(&action_c)
                    && r.resources.is_match(&resource_c)
                    && (r.agents.is_match(&id_c)
                        || name_c.as_ref().is_some_and(|n| r.agents.is_match(n))))
                {
                    continue;
                }
                if let Some(c) = &r.condition
                    && !expr::eval(c, req)
                {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((prio, b)) => {
                        p.priority > prio
                            || (p.priority == prio
                                && b.effect == Effect::Allow
                                && r.effect == Effect::Deny)
                    }
                };
                if better {
                    best = Some((p.priority, r));
                }
            }
        }
        match best {
            Some((_, rule)) => Decision {
                allowed: rule.effect == Effect::Allow,
                reason: rule.reason.clone(),
            },
            None => Decision {
                allowed: false,
                reason: "no policy rule matches (default deny)".into(),
            },
        }
    }
}

/// What the gate decides about.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Host-assigned agent id.
    pub agent_id: &'a str,
    /// The agent's name as the host assigned it: the spec's `name` (the manifest's agent kind
    /// in a coordinated run, `--name` for `run-agent`), never the name the component declares
    /// in `describe()`, which a component could choose to impersonate another kind. `None`
    /// when the spec has no name: rules on `agent.name` then do not match.
    pub agent_name: Option<&'a str>,
    /// Its trust level now.
    pub trust: TrustLevel,
    /// Its spec's capabilities.
    pub capabilities: &'a [String],
    /// Its isolation level.
    pub isolation: IsolationLevel,
    /// `context`, `events`, `sync`, `tool`, `file`, `network`.
    pub kind: &'a str,
    /// The resource's id within its kind.
    pub id: &'a str,
    /// Resource type (a context's type).
    pub resource_type: Option<&'a str>,
    /// Resource owner (a context's owner).
    pub owner: Option<&'a str>,
    /// Resource labels.
    pub labels: &'a [String],
    /// The operation.
    pub action: &'a str,
}

impl Request<'_> {
    /// `<kind>/<id>`, what resource patterns match.
    pub fn resource(&self) -> String {
        format!("{}/{}", self.kind, self.id)
    }
}

impl Facts for Request<'_> {
    fn get(&self, attr: Attr) -> Val {
        let s = |x: &str| Val::Str(x.to_string());
        match attr {
            Attr::AgentId => s(self.agent_id),
            Attr::AgentName => self.agent_name.map(s).unwrap_or(Val::Null),
            Attr::AgentTrust => s(self.trust.as_str()),
            Attr::AgentCapabilities => Val::List(self.capabilities.iter().map(|c| s(c)).collect()),
            Attr::AgentIsolation => s(self.isolation.as_str()),
            Attr::ResourceKind => s(self.kind),
            Attr::ResourceId => s(self.id),
            Attr::ResourceType => self.resource_type.map(s).unwrap_or(Val::Null),
            Attr::ResourceOwner => self.owner.map(s).unwrap_or(Val::Null),
            Attr::ResourceLabels => Val::List(self.labels.iter().map(|c| s(c)).collect()),
            Attr::Action => s(self.action),
        }
    }
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed?
    pub allowed: bool,
    /// Which rule decided, or why nothing did.
    pub reason: String,
}

/// The access gate of a host: the current policies (replaceable at runtime) and the audit log.
#[derive(Default)]
pub struct AccessControl {
    policies: RwLock<Option<Arc<PolicySet>>>,
    audit: Option<AuditLog>,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl")
            .field("enabled", &self.enabled())
            .field("audit", &self.audit.is_some())
            .finish()
    }
}

impl AccessControl {
    /// A gate with `policies` (`None`: open) and an optional audit log.
    pub fn new(policies: Option<PolicySet>, audit: Option<AuditLog>) -> Self {
        AccessControl {
            policies: RwLock::new(policies.map(Arc::new)),
            audit,
        }
    }

    /// Replaces the policies; the next call is decided by the new ones. Audited.
    pub fn set_policies(&self, policies: Option<PolicySet>) {
        let ids: Vec<String> = policies
            .as_ref()
            .map(|p| p.policies().iter().map(|x| x.id.clone()).collect())
            .unwrap_or_default();
        *self.policies.write().expect("policy lock poisoned") = policies.map(Arc::new);
        self.record(NewAuditEntry::new(
            crate::context::OPERATOR,
            "policies",
            "set-policies",
            AuditDecision::Record,
            if ids.is_empty() {
                "policies disabled".to_string()
            } else {
                format!("policies now: {}", ids.join(", "))
            },
        ));
    }

    /// Whether policies are loaded.
    pub fn enabled(&self) -> bool {
        self.policies
            .read()
            .expect("policy lock poisoned")
            .is_some()
    }

    /// The audit log, if attached.
    pub fn audit(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    /// Appends to the audit log, if attached.
    pub fn record(&self, entry: NewAuditEntry) {
        if let Some(a) = &self.audit {
            // Fail-closed callers use `AuditLog::record` directly (`AgentShared::gate`).
            let _ = a.record(entry);
        }
    }

    /// The policies in force now (`None`: the gate is open).
    pub fn current(&self) -> Option<Arc<PolicySet>> {
        self.policies.read().expect("policy lock poisoned").clone()
    }

    /// The gate (`enforceAccessControl`): decides `req` by the current policies and audits the
    /// decision. With no policies, allows without recording.
    pub fn enforce(&self, req: &Request<'_>) -> Decision {
        match self.current() {
            Some(p) => self.enforce_with(&p, req),
            None => Decision {
                allowed: true,
                reason: "no policies loaded".into(),
            },
        }
    }

    /// [`enforce`](Self::enforce) with the policies already in hand.
    pub fn enforce_with(&self, policies: &PolicySet, req: &Request<'_>) -> Decision {
        self.enforce_with_audit(policies, req, true)
    }

    /// [`enforce_with`](Self::enforce_with), writing the decision to the audit log only when
    /// `audit` is true (a caller that bounds how many entries one agent may add passes false
    /// past that bound). The decision is the same either way.
    pub fn enforce_with_audit(
        &self,
        policies: &PolicySet,
        req: &Request<'_>,
        audit: bool,
    ) -> Decision {
        let resource = req.resource();
        let d = policies.decide_on(req, &resource);
        if !d.allowed {
            tracing::info!(agent = req.agent_id, %resource, action = req.action, reason = %d.reason, "access denied by policy");
        }
        if !audit {
            return d;
        }
        self.record(NewAuditEntry::new(
            req.agent_id,
            resource,
            req.action,
            if d.allowed {
                AuditDecision::Allow
            } else {
                AuditDecision::Deny
            },
            d.reason.clone(),
        ));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::Effect::{Allow, Deny};
    use super::*;

    fn rule(effect: Effect, resources: &[&str], condition: Option<&str>) -> PolicyRule {
        PolicyRule {
            effect,
            resources: resources.iter().map(|s| s.to_string()).collect(),
            agents: vec!["*".into()],
            actions: vec!["*".into()],
            condition: condition.map(str::to_string),
        }
    }

    fn policy(id: &str, priority: i32, rules: Vec<PolicyRule>) -> AccessPolicy {
        AccessPolicy {
            id: id.into(),
            name: String::new(),
            priority,
            active: true,
            rules,
        }
    }

    fn req<'a>(trust: TrustLevel, kind: &'a str, id: &'a str, action: &'a str) -> Request<'a> {
        Request {
            agent_id: "agent-1",
            agent_name: Some("worker"),
            trust,
            capabilities: &[],
            isolation: IsolationLevel::Sandbox,
            kind,
            id,
            resource_type: Some("notes"),
            owner: Some("agent-0"),
            labels: &[],
            action,
        }
    }

    /// allow/deny × priority × pattern × condition, including conflicting rules.
    #[test]
    fn decisions_follow_priority_then_deny_over_allow_then_conditions_else_deny() {
        let low = TrustLevel::Low;
        let cases: Vec<(Vec<AccessPolicy>, Request<'_>, bool, &str)> = vec![
            // no rule matches: default deny
            (
                vec![policy("p", 0, vec![rule(Allow, &["context/a*"], None)])],
                req(low, "context", "b", "get"),
                false,
                "default deny",
            ),
            // pattern match allows
            (
                vec![policy("p", 0, vec![rule(Allow, &["context/a*"], None)])],
                req(low, "context", "ab", "get"),
                true,
                "glob allow",
            ),
            // equal priority: deny beats allow, whatever the order
            (
                vec![policy(
                    "p",
                    0,
                    vec![
                        rule(Allow, &["context/*"], None),
                        rule(Deny, &["context/*"], None),
                    ],
                )],
                req(low, "context", "x", "get"),
                false,
                "deny beats allow",
            ),
            (
                vec![
                    policy("p", 0, vec![rule(Deny, &["context/*"], None)]),
                    policy("q", 0, vec![rule(Allow, &["context/*"], None)]),
                ],
                req(low, "context", "x", "get"),
                false,
                "deny beats allow across policies",
            ),
            // higher priority wins, in both directions
            (
                vec![
                    policy("p", 0, vec![rule(Deny, &["context/*"], None)]),
                    policy("q", 5, vec![rule(Allow, &["context/x"], None)]),
                ],
                req(low, "context", "x", "get"),
                true,
                "higher allow wins",
            ),
            (
                vec![
                    policy("p", 9, vec![rule(Deny, &["*"], None)]),
                    policy("q", 5, vec![rule(Allow, &["context/x"], None)]),
                ],
                req(low, "context", "x", "get"),
                false,
                "higher deny wins",
            ),
            // conditions
            (
                vec![policy(
                    "p",
                    0,
                    vec![rule(Allow, &["*"], Some(r#"agent.trust >= "medium""#))],
                )],
                req(low, "context", "x", "get"),
                false,
                "trust too low",
            ),
            (
                vec![policy(
                    "p",
                    0,
                    vec![rule(Allow, &["*"], Some(r#"agent.trust >= "medium""#))],
                )],
                req(TrustLevel::High, "context", "x", "get"),
                true,
                "trust enough",
            ),
            (
                vec![policy(
                    "p",
                    0,
                    vec![rule(
                        Allow,
                        &["*"],
                        Some(r#"resource.type == "notes" && resource.owner == "agent-0""#),
                    )],
                )],
                req(low, "context", "x", "get"),
                true,
                "resource attributes",
            ),
            // a deny whose condition does not hold does not count
            (
                vec![policy(
                    "p",
                    0,
                    vec![
                        rule(Allow, &["*"], None),
                        rule(Deny, &["*"], Some(r#"action == "put""#)),
                    ],
                )],
                req(low, "context", "x", "get"),
                true,
                "conditional deny not matching",
            ),
            (
                vec![policy(
                    "p",
                    0,
                    vec![
                        rule(Allow, &["*"], None),
                        rule(Deny, &["*"], Some(r#"action == "put""#)),
                    ],
                )],
                req(low, "context", "x", "put"),
                false,
                "conditional deny matching",
            ),
        ];
        for (policies, r, want, name) in cases {
            let set = PolicySet::new(policies).unwrap();
            assert_eq!(set.decide(&r).allowed, want, "{name}: {:?}", set.decide(&r));
        }
        // Inactive policies are ignored; agent and action patterns.
        let mut p = policy("p", 0, vec![rule(Allow, &["*"], None)]);
        p.active = false;
        assert!(
            !PolicySet::new(vec![p])
                .unwrap()
                .decide(&req(low, "tool", "t", "call"))
                .allowed
        );
        let mut r = rule(Allow, &["tool/*"], None);
        r.agents = vec!["worker".into()];
        r.actions = vec!["call".into()];
        let set = PolicySet::new(vec![policy("p", 0, vec![r])]).unwrap();
        assert!(
            set.decide(&req(low, "tool", "t", "call")).allowed,
            "agent by its name"
        );
        assert!(
            !set.decide(&req(low, "tool", "t", "list")).allowed,
            "action pattern"
        );
    }

    #[test]
    fn load_errors_name_policy_rule_and_part() {
        let e = PolicySet::new(vec![policy(
            "p1",
            0,
            vec![
                rule(Allow, &["*"], None),
                rule(Allow, &["*"], Some("agent.trust >= ")),
            ],
        )])
        .unwrap_err();
        assert!(e.starts_with("policy `p1` rule 2: condition"), "{e}");
        assert!(e.contains("column"), "{e}");
        let e =
            PolicySet::new(vec![policy("p1", 0, vec![rule(Allow, &["a[b"], None)])]).unwrap_err();
        assert!(e.contains("`resources` pattern `a[b`"), "{e}");
        let e = PolicySet::new(vec![policy("p1", 0, vec![]), policy("p1", 0, vec![])]).unwrap_err();
        assert!(e.contains("used twice"), "{e}");
    }

    #[test]
    fn runtime_change_takes_effect_on_the_next_decision() {
        let ac = AccessControl::new(None, None);
        let r = req(TrustLevel::Low, "context", "x", "get");
        assert!(ac.enforce(&r).allowed, "no policies: open");
        ac.set_policies(Some(
            PolicySet::new(vec![policy("p", 0, vec![rule(Deny, &["*"], None)])]).unwrap(),
        ));
        assert!(!ac.enforce(&r).allowed);
        ac.set_policies(Some(
            PolicySet::new(vec![policy("p", 0, vec![rule(Allow, &["*"], None)])]).unwrap(),
        ));
        assert!(ac.enforce(&r).allowed);
    }
}
