//! From the policy model as written to compiled rules: pattern lists become segment globs,
//! conditions are bounded, parsed as Cedar expressions and wrapped in one Cedar policy per rule.

use super::schema;
use super::{AccessPolicy, Effect, PolicyError};
use cedar_policy::{Expression, Policy, PolicyId};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::str::FromStr;

/// Longest condition, in bytes, checked before Cedar parses it.
pub const MAX_CONDITION_BYTES: usize = 2048;
/// Deepest condition: open brackets (`(`, `[`, `{`) plus `if` keywords plus a run of `!` at
/// any point plus every `+`, `-` and `*` (a chain nests one level per operator), checked
/// before Cedar parses it.
pub const MAX_CONDITION_DEPTH: usize = 32;

/// A compiled pattern list: `*` (or `**`) alone matches everything without a matcher.
#[derive(Debug)]
pub(super) enum Matcher {
    Any,
    Set(GlobSet),
}

impl Matcher {
    pub(super) fn is_match(&self, c: &globset::Candidate<'_>) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Set(s) => s.is_match_candidate(c),
        }
    }
}

/// One rule, compiled.
#[derive(Debug)]
pub(super) struct CompiledRule {
    pub effect: Effect,
    pub resources: Matcher,
    pub agents: Matcher,
    pub actions: Matcher,
    /// The rule's key in `context.rules` and its Cedar policy id.
    pub key: String,
    /// The audit reason when this rule decides.
    pub reason: String,
    /// Its policy's id and its 1-based number there (for errors).
    pub origin: (String, usize),
    /// Whether its condition may read `resource.type`, `resource.owner` or `resource.labels`.
    pub reads_resource_attrs: bool,
}

fn has_glob_syntax(p: &str) -> bool {
    p.contains(['*', '?', '[', '{'])
}

/// Compiles one pattern list (`field` names it in errors).
pub(super) fn patterns(field: &'static str, list: &[String]) -> Result<Matcher, String> {
    if list.is_empty() {
        return Err("is empty; use [\"*\"] for all".into());
    }
    if list.iter().any(|p| p == "*" || p == "**") {
        return Ok(Matcher::Any);
    }
    let actions = schema::action_names();
    let mut b = GlobSetBuilder::new();
    for p in list {
        let glob = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("pattern `{p}`: {}", e.kind()))?;
        match field {
            "actions" if !has_glob_syntax(p) && !actions.contains(&p.as_str()) => {
                return Err(format!(
                    "`{p}` is not an action; use one of {}",
                    actions.join(", ")
                ));
            }
            "actions" => {
                let m = glob.compile_matcher();
                if !actions.iter().any(|a| m.is_match(a)) {
                    return Err(format!("pattern `{p}` matches no action"));
                }
            }
            "resources" => {
                let kind = p.split('/').next().unwrap_or_default();
                if !p.contains('/') {
                    return Err(format!(
                        "pattern `{p}` names no kind; a resource is `<kind>/<id>` (e.g. \
                         `context/plan`, `file/workspace/**`), or `*` for all"
                    ));
                }
                // `file/` alone is the root of a `/` mount.
                if kind == "file"
                    && p != "file/"
                    && p["file/".len()..]
                        .split('/')
                        .any(|s| s.is_empty() || s == "." || s == "..")
                {
                    return Err(format!(
                        "pattern `{p}` can never match: a file is named by its absolute path \
                         without the leading `/`, normalised (no empty, `.` or `..` segment, no \
                         trailing `/` but in `file/`, the root), e.g. `file/workspace/secret/**`"
                    ));
                }
                if !has_glob_syntax(kind) && !schema::is_kind(kind) {
                    let kinds: Vec<&str> = schema::ACTIONS.iter().map(|(k, _)| *k).collect();
                    return Err(format!(
                        "pattern `{p}`: `{kind}` is not a resource kind; use one of {}",
                        kinds.join(", ")
                    ));
                }
            }
            _ => {}
        }
        b.add(glob);
    }
    b.build().map(Matcher::Set).map_err(|e| e.to_string())
}

/// Checks that every action a rule names is an action of some kind its resources name (when
/// they name their kinds literally): `get` on `file/**` would never match anything.
fn check_actions_fit_kinds(resources: &[String], actions: &[String]) -> Result<(), String> {
    let mut kinds: Vec<&str> = Vec::new();
    for p in resources {
        let kind = p.split('/').next().unwrap_or_default();
        if p == "*" || p == "**" || has_glob_syntax(kind) || !schema::is_kind(kind) {
            return Ok(());
        }
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let of_kinds: Vec<&str> = schema::ACTIONS
        .iter()
        .filter(|(k, _)| kinds.contains(k))
        .flat_map(|(_, a)| a.iter().copied())
        .collect();
    for a in actions {
        if a == "*" || a == "**" {
            return Ok(());
        }
        let fits = match GlobBuilder::new(a).literal_separator(true).build() {
            Ok(g) => {
                let m = g.compile_matcher();
                of_kinds.iter().any(|x| m.is_match(x))
            }
            Err(_) => return Ok(()),
        };
        if !fits {
            return Err(format!(
                "`{a}` is no action of {} (their actions: {}), so the rule would never match",
                kinds.join(", "),
                of_kinds.join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks a condition's size and nesting before Cedar parses it; the error's position is a
/// byte offset in the condition.
pub(super) fn check_bounds(cond: &str) -> Result<(), (usize, String)> {
    if cond.len() > MAX_CONDITION_BYTES {
        return Err((
            MAX_CONDITION_BYTES,
            format!(
                "is {} bytes long; at most {MAX_CONDITION_BYTES} are allowed (split it into \
                 several rules)",
                cond.len()
            ),
        ));
    }
    let bytes = cond.as_bytes();
    let (mut brackets, mut ifs, mut unary, mut arith) = (0usize, 0usize, 0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' => {
                // Skip the string literal (Cedar's escapes are backslash-prefixed).
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                unary = 0;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                // A comment, to the end of its line: a quote in it opens no string.
                while i + 1 < bytes.len() && bytes[i + 1] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                brackets += 1;
                unary = 0;
            }
            b')' | b']' | b'}' => {
                brackets = brackets.saturating_sub(1);
                unary = 0;
            }
            b'!' if bytes.get(i + 1) != Some(&b'=') => unary += 1,
            // Each `+`, `-` and `*` of a chain nests one level deeper (`1+1+1` is `(1+1)+1`).
            b'+' | b'-' | b'*' => arith += 1,
            c if c.is_ascii_whitespace() => {}
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let start = i;
                while i + 1 < bytes.len()
                    && (bytes[i + 1].is_ascii_alphanumeric() || bytes[i + 1] == b'_')
                {
                    i += 1;
                }
                if &cond[start..=i] == "if" {
                    ifs += 1;
                }
                unary = 0;
            }
            _ => unary = 0,
        }
        if brackets + ifs + unary + arith > MAX_CONDITION_DEPTH {
            return Err((
                i,
                format!(
                    "nests deeper than {MAX_CONDITION_DEPTH} (brackets, `if`, unary operators \
                     and `+`, `-`, `*`); flatten it or split it into several rules"
                ),
            ));
        }
        i += 1;
    }
    Ok(())
}

/// The Cedar policy text of a rule before its condition.
fn prefix(effect: Effect, key: &str) -> String {
    let verb = match effect {
        Effect::Allow => "permit",
        Effect::Deny => "forbid",
    };
    format!(
        "{verb} (principal, action, resource) when {{ context.rules.contains(\"{key}\") }} when {{ "
    )
}

/// The length of [`prefix`]: where the condition starts in a rule's Cedar policy text.
pub(super) fn prefix_len(effect: Effect, key: &str) -> usize {
    prefix(effect, key).len()
}

/// Compiles a rule's condition (`None`: always) into its Cedar policy. The error's offset is
/// a byte offset in the condition.
pub(super) fn cedar_policy(
    effect: Effect,
    key: &str,
    condition: Option<&str>,
) -> Result<Policy, Vec<(Option<usize>, String)>> {
    let cond = condition.unwrap_or("true");
    check_bounds(cond).map_err(|(at, m)| vec![(Some(at), m)])?;
    // Parsed alone first, so a condition is one expression and cannot close the clause.
    Expression::from_str(cond).map_err(|e| diagnostics(&e, 0))?;
    let head = prefix(effect, key);
    let text = format!("{head}{cond}\n}};");
    Policy::parse(Some(PolicyId::new(key)), text).map_err(|e| diagnostics(&e, head.len()))
}

/// The messages of a Cedar diagnostic with their byte offsets, shifted back by `shift` (the
/// length of the text before the condition).
pub(super) fn diagnostics(
    e: &(dyn miette::Diagnostic + 'static),
    shift: usize,
) -> Vec<(Option<usize>, String)> {
    let mut out = Vec::new();
    let mut push = |d: &dyn miette::Diagnostic| {
        let at = d
            .labels()
            .and_then(|mut l| l.next())
            .and_then(|l| l.offset().checked_sub(shift));
        let mut msg = d.to_string();
        if let Some(help) = d.help() {
            msg = format!("{msg} ({help})");
        }
        out.push((at, msg));
    };
    // Cedar puts its first error on top and the rest in `related`.
    push(e);
    if let Some(related) = e.related() {
        related.for_each(push);
    }
    out
}

/// 1-based line and column of byte `offset` in `text` (columns count characters).
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    (line, col)
}

/// Compiles every rule of `policies` (active or not): the rules (with their policy's index)
/// and the Cedar policies, and every error found. A rule whose patterns are wrong but whose
/// condition parsed is still returned (matching nothing), so validation can report its
/// condition's errors too; the set is only used when there are no errors.
#[allow(clippy::type_complexity)]
pub(super) fn compile(
    policies: &[AccessPolicy],
) -> (Vec<(usize, CompiledRule, Policy)>, Vec<PolicyError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for (pi, p) in policies.iter().enumerate() {
        if p.id.trim().is_empty() || !ids.insert(p.id.as_str()) {
            errors.push(PolicyError {
                policy: Some(p.id.clone()),
                ..PolicyError::new(format!(
                    "the id of policy {} in the file is empty or used twice; give every policy \
                     its own id",
                    pi + 1
                ))
            });
            continue;
        }
        for (ri, r) in p.rules.iter().enumerate() {
            let at = |field: &'static str, message: String| PolicyError {
                policy: Some(p.id.clone()),
                rule: Some(ri + 1),
                field: Some(field),
                ..PolicyError::new(message)
            };
            let key = out.len().to_string();
            let mut field = |name: &'static str, list: &[String]| {
                patterns(name, list)
                    .map_err(|m| errors.push(at(name, m)))
                    .ok()
            };
            let resources = field("resources", &r.resources);
            let agents = field("agents", &r.agents);
            let mut actions = field("actions", &r.actions);
            if resources.is_some()
                && actions.is_some()
                && let Err(m) = check_actions_fit_kinds(&r.resources, &r.actions)
            {
                errors.push(at("actions", m));
                actions = None;
            }
            let cedar = match cedar_policy(r.effect, &key, r.condition.as_deref()) {
                Ok(c) => Some(c),
                Err(list) => {
                    let cond = r.condition.as_deref().unwrap_or_default();
                    for (offset, m) in list {
                        let mut e = at("condition", m);
                        e.in_condition = offset.map(|o| line_column(cond, o));
                        errors.push(e);
                    }
                    None
                }
            };
            let Some(cedar) = cedar else {
                continue;
            };
            let none = || Matcher::Set(GlobSet::empty());
            let (resources, agents, actions) = (
                resources.unwrap_or_else(none),
                agents.unwrap_or_else(none),
                actions.unwrap_or_else(none),
            );
            let reads_resource_attrs = r
                .condition
                .as_deref()
                // A backslash may spell an attribute name with escapes (`resource["\u{6f}wner"]`).
                .is_some_and(|c| {
                    ["type", "owner", "labels", "\\"]
                        .iter()
                        .any(|a| c.contains(a))
                });
            out.push((
                pi,
                CompiledRule {
                    effect: r.effect,
                    resources,
                    agents,
                    actions,
                    reason: format!(
                        "policy `{}` rule {} {}",
                        p.id,
                        ri + 1,
                        match r.effect {
                            Effect::Allow => "allows it",
                            Effect::Deny => "denies it",
                        }
                    ),
                    key,
                    reads_resource_attrs,
                    origin: (p.id.clone(), ri + 1),
                },
                cedar,
            ));
        }
    }
    (out, errors)
}
