//! Access policies: the model users write (TOML or JSON), compiled to Cedar policies against a
//! generated schema ([`schema`]) and evaluated in priority tiers ([`PolicySet::decide`]). See
//! the [`security`](super) module docs for the format.

mod compile;
mod evaluate;
pub mod schema;

pub use compile::{MAX_CONDITION_BYTES, MAX_CONDITION_DEPTH, line_column};
pub use evaluate::DECISION_CACHE_ENTRIES;

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Largest policy file, in bytes.
pub const MAX_POLICY_FILE_BYTES: usize = 1024 * 1024;
/// Most policies in one set.
pub const MAX_POLICIES: usize = 500;
/// Most rules in one set, over all its policies.
pub const MAX_RULES: usize = 2000;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Allow (a Cedar `permit`).
    Allow,
    /// Deny (a Cedar `forbid`).
    Deny,
}

/// One rule as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Allow or deny.
    pub effect: Effect,
    /// Resource patterns (`<kind>/<id>` globs; `*` within one `/` segment, `**` across).
    pub resources: Vec<String>,
    /// Agent patterns (host-assigned ids or names); default all.
    #[serde(default = "all")]
    pub agents: Vec<String>,
    /// Action patterns; default all.
    #[serde(default = "all")]
    pub actions: Vec<String>,
    /// A Cedar expression over `principal`, `resource`, `action` and `context`.
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
    /// Id, unique in the set.
    pub id: String,
    /// Name (for people).
    #[serde(default)]
    pub name: String,
    /// Higher tiers decide first; default 0.
    #[serde(default)]
    pub priority: i32,
    /// Inactive policies are ignored; default true.
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

/// One problem in a policy file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based line and column in the file (syntax and shape errors of the TOML or JSON).
    pub in_file: Option<(usize, usize)>,
    /// The policy's id.
    pub policy: Option<String>,
    /// The rule's 1-based number in its policy.
    pub rule: Option<usize>,
    /// The rule's field (`resources`, `agents`, `actions`, `condition`).
    pub field: Option<&'static str>,
    /// 1-based line and column inside the condition (Cedar errors).
    pub in_condition: Option<(usize, usize)>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl PolicyError {
    fn new(message: impl Into<String>) -> PolicyError {
        PolicyError {
            in_file: None,
            policy: None,
            rule: None,
            field: None,
            in_condition: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut at = Vec::new();
        if let Some((l, c)) = self.in_file {
            at.push(format!("line {l}, column {c}"));
        }
        if let Some(p) = &self.policy {
            at.push(format!("policy `{p}`"));
        }
        if let Some(r) = self.rule {
            at.push(format!("rule {r}"));
        }
        if let Some(field) = self.field {
            at.push(format!("`{field}`"));
        }
        if let Some((l, c)) = self.in_condition {
            at.push(format!("at line {l}, column {c} of the condition"));
        }
        if at.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", at.join(" "), self.message)
        }
    }
}

/// The format of a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFormat {
    /// `[[policies]]` tables.
    Toml,
    /// `{"policies": [...]}`.
    Json,
}

impl PolicyFormat {
    /// JSON when `path` ends in `.json`, else TOML.
    pub fn of(path: &Path) -> PolicyFormat {
        if path.extension().is_some_and(|e| e == "json") {
            PolicyFormat::Json
        } else {
            PolicyFormat::Toml
        }
    }
}

/// Validated, compiled policies; immutable (a change is a new set, see
/// [`AccessControl::set_policies`](super::AccessControl::set_policies)).
pub struct PolicySet {
    source: Vec<AccessPolicy>,
    eval: evaluate::Evaluator,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.source.len())
            .finish()
    }
}

impl PolicySet {
    /// Validates and compiles policies; the error lists every problem, each naming the
    /// policy, the rule and the field (and the position inside a condition), one per line.
    pub fn new(policies: Vec<AccessPolicy>) -> Result<PolicySet, String> {
        PolicySet::compile(policies).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// [`new`](Self::new) with the errors as a list.
    pub fn compile(policies: Vec<AccessPolicy>) -> Result<PolicySet, Vec<PolicyError>> {
        if policies.len() > MAX_POLICIES {
            return Err(vec![PolicyError::new(format!(
                "{} policies; at most {MAX_POLICIES} are allowed (merge some)",
                policies.len()
            ))]);
        }
        let rules: usize = policies.iter().map(|p| p.rules.len()).sum();
        if rules > MAX_RULES {
            return Err(vec![PolicyError::new(format!(
                "{rules} rules; at most {MAX_RULES} are allowed over all policies (merge some, \
                 or use patterns)"
            ))]);
        }
        let (compiled, mut errors) = compile::compile(&policies);
        errors.extend(evaluate::validate(&policies, &compiled));
        if !errors.is_empty() {
            return Err(errors);
        }
        let eval = evaluate::Evaluator::new(&policies, compiled)?;
        Ok(PolicySet {
            source: policies,
            eval,
        })
    }

    /// Parses and compiles the text of a policy file; every error with its position.
    pub fn parse(text: &str, format: PolicyFormat) -> Result<PolicySet, Vec<PolicyError>> {
        if text.len() > MAX_POLICY_FILE_BYTES {
            return Err(vec![PolicyError::new(format!(
                "the file is {} bytes; at most {MAX_POLICY_FILE_BYTES} are allowed",
                text.len()
            ))]);
        }
        let file: PolicyFile = match format {
            PolicyFormat::Json => serde_json::from_str(text).map_err(|e| {
                vec![PolicyError {
                    in_file: Some((e.line(), e.column())),
                    ..PolicyError::new(e.to_string())
                }]
            })?,
            PolicyFormat::Toml => toml::from_str(text).map_err(|e| {
                vec![PolicyError {
                    in_file: e.span().map(|s| line_column(text, s.start)),
                    ..PolicyError::new(e.message().trim())
                }]
            })?,
        };
        PolicySet::compile(file.policies)
    }

    /// Reads a policy file: TOML (`[[policies]]`), or JSON (`{"policies": [...]}`) when it ends
    /// in `.json`. Errors: the file, then every problem on its own line.
    pub fn load(path: &Path) -> Result<PolicySet, Error> {
        let err = |m: String| Error::field("--policies", format!("{}: {m}", path.display()));
        let text = read_bounded(path).map_err(err)?;
        PolicySet::parse(&text, PolicyFormat::of(path)).map_err(|errors| {
            err(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"))
        })
    }

    /// The policies as written.
    pub fn policies(&self) -> &[AccessPolicy] {
        &self.source
    }

    /// Whether a decision may need the resource's type, owner or labels (only then does the
    /// gate look the resource up).
    pub fn needs_resource_attrs(&self) -> bool {
        self.eval.needs_resource_attrs()
    }

    /// Decides `req`: priority tiers from high to low, the first with a matching rule decides,
    /// deny wins within a tier, nothing matching denies. Remembers the answer for the same
    /// request (up to [`DECISION_CACHE_ENTRIES`] requests per set).
    pub fn decide(&self, req: &super::Request<'_>) -> super::Decision {
        self.eval.decide(req, true)
    }

    /// [`decide`](Self::decide) without the decision cache: what Cedar costs per decision.
    pub fn decide_uncached(&self, req: &super::Request<'_>) -> super::Decision {
        self.eval.decide(req, false)
    }
}

/// Reads at most [`MAX_POLICY_FILE_BYTES`] (plus one, to tell a longer file).
pub(crate) fn read_bounded(path: &Path) -> Result<String, String> {
    let bytes = crate::bounded_read::read_at_most(path, MAX_POLICY_FILE_BYTES).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            format!(
                "the file is larger than {MAX_POLICY_FILE_BYTES} bytes, the most a policy file may be"
            )
        } else {
            format!("cannot read: {e}")
        }
    })?;
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))
}

#[cfg(test)]
mod tests;
