//! Access control: policies, trust levels and the one gate every host call goes through.
//!
//! # Resources
//!
//! Every resource has one name, `<kind>/<id>`, the same in policies, audit entries and errors:
//!
//! | kind | id | actions |
//! |---|---|---|
//! | `context` | the context id (`*` for `ids`) | `create`, `get`, `put`, `patch`, `delete`, `share`, `revoke`, `ids` |
//! | `events` | the context id | `subscribe`, `publish` |
//! | `sync` | the synchronization point id | `barrier`, `checkpoint`, `restore`, `vote`, `contribute` |
//! | `tool` | the tool name (`fs.read`) | `call` |
//! | `file` | the path as the file layer names it | `open`, `read`, `write`, `stat`, `mkdir`, `delete`, `link` |
//! | `network` | `ip:port`, or the name looked up | `bind`, `connect`, `send`, `receive`, `listen`, `resolve` |
//! | `agent` | a registered agent of `qi-host serve` | `list`, `run`, `terminate` |
//! | `run` | a registered manifest (`start`, `plan`) or a run id | `start`, `plan`, `status`, `terminate` |
//! | `audit` | `log` | `query` |
//!
//! # Policies
//!
//! A policy file (TOML `[[policies]]`, or JSON `{"policies": [...]}` when it ends in `.json`;
//! `qi-host --policies FILE`, [`PolicySet::load`]; check one with `qi-host policy check FILE`)
//! holds policies: `id` (unique), `name`, `priority` (integer, default 0), `active` (default
//! true) and `rules`. A rule has an `effect` (`allow` or `deny`), `resources` (patterns over
//! `<kind>/<id>`), `agents` (patterns over an agent's host-assigned id or its host-assigned
//! name; default all), `actions` (patterns over the action names above; default all) and an
//! optional `condition`, a [Cedar](https://docs.cedarpolicy.com) expression.
//!
//! Patterns are globs with literal separators: `*` and `?` stay within one `/`-separated
//! segment, `**` crosses segments (`file/workspace/*` is a direct child, `file/workspace/**`
//! anything below); `{a,b}` and `[ab]` work as usual; a pattern that is exactly `*` matches
//! everything. A resource pattern names a kind (`<kind>/...`); a literal action must be one of
//! the table's.
//!
//! Conditions see, per the schema the host generates ([`policy::schema`]):
//! - `principal` (the agent): `id`, `name` (the host-assigned name: the spec's `name`, the
//!   manifest's agent kind; `""` when none; never the name `describe()` declares), `kind` (the
//!   same as `name`), `trust` (a number: `none` 0, `low` 1, `medium` 2, `high` 3, `full` 4),
//!   `capabilities` (set of strings), `isolation` (`sandbox`, `restricted`, `monitored`);
//! - `resource`: `kind`, `id`, `name` (`<kind>/<id>`), `type` (a context's type), `owner` (a
//!   context's owner), `labels` (a context's labels as the host keeps them, never read from
//!   the document); `""` or empty when the resource has none;
//! - `action`: `Action::"get"` and so on;
//! - `context.rules`: host-internal (which rules' patterns matched).
//!
//! For example `principal.trust >= 2 && principal.capabilities.contains("code-review")`, or
//! `resource.labels.contains("pii") && action == Action::"get"`.
//!
//! Each rule compiles to one Cedar policy (`permit` or `forbid`) that holds when the rule's
//! patterns match and its condition holds; conditions are type-checked against the schema
//! (strict validation) when the file is loaded. Loading fails, naming the policy, the rule,
//! the field and the position inside the condition, on a bad glob, an unknown kind or action,
//! a syntax or type error; and on bounds: at most [`policy::MAX_POLICY_FILE_BYTES`] of file,
//! [`policy::MAX_POLICIES`] policies, [`policy::MAX_RULES`] rules, and per condition
//! [`policy::MAX_CONDITION_BYTES`] bytes and a nesting depth of
//! [`policy::MAX_CONDITION_DEPTH`] (checked before Cedar parses it).
//!
//! # Evaluation order
//!
//! 1. Only active policies count. Policies of one priority form a tier.
//! 2. Tiers are evaluated from the highest priority down; Cedar decides within a tier, and the
//!    first tier where some rule matches (patterns and condition) decides.
//! 3. Within a tier, `deny` beats `allow`. A condition that fails to evaluate denies.
//! 4. No rule matches in any tier: deny.
//!
//! Decisions are remembered per policy set (keyed by every attribute of the request, up to
//! [`policy::DECISION_CACHE_ENTRIES`]); a change of policies is a new set, so the next call is
//! decided by the new rules.
//!
//! With no policies loaded the gate is open (sharing, grants and limits still apply). With
//! policies, both the policy and the context's sharing must allow an action: the gate runs
//! first, then the context store's own check.
//!
//! Every decision of the gate is appended to the audit log when one is attached (allowed and
//! denied).

pub mod identity;
pub mod policy;
pub mod trust;

pub use policy::{AccessPolicy, Effect, PolicyError, PolicyFormat, PolicyRule, PolicySet};
pub use trust::TrustLevel;

use crate::audit::{AuditDecision, AuditLog, NewAuditEntry};
use crate::spec::IsolationLevel;
use std::sync::{Arc, RwLock};

/// What the gate decides about.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Host-assigned agent id.
    pub agent_id: &'a str,
    /// The agent's name as the host assigned it: the spec's `name` (the manifest's agent kind
    /// in a coordinated run, `--name` for `run-agent`), never the name the component declares
    /// in `describe()`, which a component could choose to impersonate another kind. `None`
    /// when the spec has no name: agent patterns then match the id only, and
    /// `principal.name` is `""`.
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
    /// Resource labels, as the host keeps them (never read from a document's content).
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
        let d = policies.decide(req);
        if !d.allowed {
            tracing::info!(agent = req.agent_id, resource = %req.resource(), action = req.action, reason = %d.reason, "access denied by policy");
        }
        if self.audit.is_none() {
            return d;
        }
        self.record(NewAuditEntry::new(
            req.agent_id,
            req.resource(),
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
