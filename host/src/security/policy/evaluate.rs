//! Tiered evaluation: Cedar decides within a tier (policies of one priority), the host walks
//! the tiers from high to low priority.

use super::compile::{self, CompiledRule};
use super::schema::{ACTION_TYPE, AGENT_TYPE, RESOURCE_TYPE, schema};
use super::{AccessPolicy, Effect, PolicyError};
use crate::security::{Decision, Request};
use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    RestrictedExpression, ValidationMode, Validator,
};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Mutex;

/// Requests whose decisions a policy set remembers; past it the cache starts over. A new set
/// (a policy change) starts with an empty cache.
pub const DECISION_CACHE_ENTRIES: usize = 4096;

/// The stack a decision is evaluated on (Cedar wants 100 KiB left before each recursion;
/// conditions are at most [`super::MAX_CONDITION_DEPTH`] deep).
const EVAL_STACK_BYTES: usize = 1024 * 1024;

/// The stack `stacker` must see left for a decision to run where it is (Cedar asks 100 KiB).
const EVAL_RED_ZONE_BYTES: usize = 256 * 1024;

/// The rules of one priority and their Cedar policies.
struct Tier {
    priority: i32,
    rules: Vec<CompiledRule>,
    cedar: cedar_policy::PolicySet,
}

pub(super) struct Evaluator {
    /// Active tiers, highest priority first.
    tiers: Vec<Tier>,
    needs_resource_attrs: bool,
    authorizer: Authorizer,
    cache: Mutex<HashMap<Box<[u8]>, Decision>>,
}

/// Validates every rule's Cedar policy against the schema (strict mode): each error names the
/// policy, the rule and the position inside its condition.
pub(super) fn validate(
    policies: &[AccessPolicy],
    compiled: &[(usize, CompiledRule, Policy)],
) -> Vec<PolicyError> {
    let mut all = cedar_policy::PolicySet::new();
    for (_, _, p) in compiled {
        if let Err(e) = all.add(p.clone()) {
            return vec![PolicyError::new(e.to_string())];
        }
    }
    let result = Validator::new(schema().clone()).validate(&all, ValidationMode::Strict);
    let mut errors = Vec::new();
    for e in result.validation_errors() {
        let rule = compiled
            .iter()
            .find(|(_, r, _)| r.key == e.policy_id().to_string())
            .map(|(pi, r, _)| (*pi, r));
        let Some((pi, rule)) = rule else {
            errors.push(PolicyError::new(e.to_string()));
            continue;
        };
        let cond = policies[pi].rules[rule.origin.1 - 1]
            .condition
            .as_deref()
            .unwrap_or_default();
        let head = compile::prefix_len(rule.effect, &rule.key);
        for (offset, message) in compile::diagnostics(e, head) {
            errors.push(PolicyError {
                policy: Some(rule.origin.0.clone()),
                rule: Some(rule.origin.1),
                field: Some("condition"),
                in_condition: offset
                    .filter(|o| *o <= cond.len())
                    .map(|o| compile::line_column(cond, o)),
                ..PolicyError::new(message)
            });
        }
    }
    errors
}

impl Evaluator {
    /// Groups the active rules (already validated, see [`validate`]) into tiers.
    pub(super) fn new(
        policies: &[AccessPolicy],
        compiled: Vec<(usize, CompiledRule, Policy)>,
    ) -> Result<Evaluator, Vec<PolicyError>> {
        let mut tiers: Vec<Tier> = Vec::new();
        let needs_resource_attrs = compiled
            .iter()
            .any(|(pi, r, _)| policies[*pi].active && r.reads_resource_attrs);
        for (pi, rule, cedar) in compiled {
            let p = &policies[pi];
            if !p.active {
                continue;
            }
            let tier = match tiers.iter_mut().position(|t| t.priority == p.priority) {
                Some(i) => &mut tiers[i],
                None => {
                    tiers.push(Tier {
                        priority: p.priority,
                        rules: Vec::new(),
                        cedar: cedar_policy::PolicySet::new(),
                    });
                    tiers.last_mut().expect("just pushed")
                }
            };
            tier.cedar
                .add(cedar)
                .map_err(|e| vec![PolicyError::new(e.to_string())])?;
            tier.rules.push(rule);
        }
        tiers.sort_by_key(|t| std::cmp::Reverse(t.priority));
        Ok(Evaluator {
            tiers,
            needs_resource_attrs,
            authorizer: Authorizer::new(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Decisions remembered now.
    #[cfg(test)]
    pub(super) fn cached(&self) -> usize {
        self.cache.lock().expect("decision cache").len()
    }

    pub(super) fn needs_resource_attrs(&self) -> bool {
        self.needs_resource_attrs
    }

    pub(super) fn decide(&self, req: &Request<'_>, cached: bool) -> Decision {
        if !cached {
            return self.evaluate_on_known_stack(req);
        }
        let key = cache_key(req);
        if let Some(d) = self.cache.lock().expect("decision cache").get(&key) {
            return d.clone();
        }
        let d = self.evaluate_on_known_stack(req);
        let mut cache = self.cache.lock().expect("decision cache");
        if cache.len() >= DECISION_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, d.clone());
        d
    }

    /// [`evaluate`](Self::evaluate), on a new stack segment of [`EVAL_STACK_BYTES`] unless
    /// `stacker` sees [`EVAL_RED_ZONE_BYTES`] left. Host calls run on wasmtime fibers, whose
    /// stacks `stacker` (which Cedar asks before recursing) cannot measure: there Cedar would
    /// refuse every request with "recursion limit reached". Whenever `stacker` does not grow
    /// the stack, it sees more than Cedar asks for.
    fn evaluate_on_known_stack(&self, req: &Request<'_>) -> Decision {
        stacker::maybe_grow(EVAL_RED_ZONE_BYTES, EVAL_STACK_BYTES, || self.evaluate(req))
    }

    fn evaluate(&self, req: &Request<'_>) -> Decision {
        let resource = req.resource();
        let resource_c = globset::Candidate::new(&resource);
        let action_c = globset::Candidate::new(req.action);
        let id_c = globset::Candidate::new(req.agent_id);
        let name_c = req.agent_name.map(globset::Candidate::new);
        let mut built: Option<(Entities, EntityUid, EntityUid, EntityUid)> = None;
        for tier in &self.tiers {
            let matched: Vec<&CompiledRule> = tier
                .rules
                .iter()
                .filter(|r| {
                    r.actions.is_match(&action_c)
                        && r.resources.is_match(&resource_c)
                        && (r.agents.is_match(&id_c)
                            || name_c.as_ref().is_some_and(|n| r.agents.is_match(n)))
                })
                .collect();
            if matched.is_empty() {
                continue;
            }
            if built.is_none() {
                match entities(req, &resource) {
                    Ok(b) => built = Some(b),
                    Err(e) => return deny(format!("the request cannot be evaluated: {e}")),
                }
            }
            let (entities, principal, action, resource_uid) = built.as_ref().expect("built");
            let keys = matched
                .iter()
                .map(|r| RestrictedExpression::new_string(r.key.clone()));
            let context = match Context::from_pairs([(
                "rules".to_string(),
                RestrictedExpression::new_set(keys),
            )]) {
                Ok(c) => c,
                Err(e) => return deny(format!("the request cannot be evaluated: {e}")),
            };
            let request = match cedar_policy::Request::new(
                principal.clone(),
                action.clone(),
                resource_uid.clone(),
                context,
                None,
            ) {
                Ok(r) => r,
                Err(e) => return deny(format!("the request cannot be evaluated: {e}")),
            };
            let response = self
                .authorizer
                .is_authorized(&request, &tier.cedar, entities);
            let rule_of = |id: &cedar_policy::PolicyId| {
                matched.iter().find(|r| r.key == id.to_string()).copied()
            };
            // Fail closed: a condition that cannot be evaluated denies, naming its rule.
            if let Some(e) = response.diagnostics().errors().next() {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
                let which = tier
                    .rules
                    .iter()
                    .find(|r| r.key == pe.policy_id().to_string())
                    .map(|r| format!("policy `{}` rule {}", r.origin.0, r.origin.1))
                    .unwrap_or_else(|| "a rule".into());
                return deny(format!("{which}: its condition failed to evaluate: {e}"));
            }
            let deciding: Vec<&CompiledRule> = response
                .diagnostics()
                .reason()
                .filter_map(rule_of)
                .collect();
            let Some(first) = deciding
                .iter()
                .find(|r| r.effect == Effect::Deny)
                .or_else(|| deciding.first())
            else {
                continue;
            };
            return Decision {
                allowed: response.decision() == cedar_policy::Decision::Allow
                    && first.effect == Effect::Allow,
                reason: first.reason.clone(),
            };
        }
        deny("no policy rule matches (default deny)".into())
    }
}

fn deny(reason: String) -> Decision {
    Decision {
        allowed: false,
        reason,
    }
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let ty = EntityTypeName::from_str(ty).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

fn strings<'a>(list: impl IntoIterator<Item = &'a String>) -> RestrictedExpression {
    RestrictedExpression::new_set(
        list.into_iter()
            .map(|s| RestrictedExpression::new_string(s.clone())),
    )
}

/// The principal and resource entities of `req`, and the principal, action and resource uids.
fn entities(
    req: &Request<'_>,
    resource: &str,
) -> Result<(Entities, EntityUid, EntityUid, EntityUid), String> {
    let s = |v: &str| RestrictedExpression::new_string(v.to_string());
    let name = req.agent_name.unwrap_or_default();
    let principal = uid(AGENT_TYPE, req.agent_id)?;
    let agent = Entity::new(
        principal.clone(),
        HashMap::from([
            ("id".to_string(), s(req.agent_id)),
            ("name".to_string(), s(name)),
            ("kind".to_string(), s(name)),
            (
                "trust".to_string(),
                RestrictedExpression::new_long(i64::from(req.trust.rank())),
            ),
            ("capabilities".to_string(), strings(req.capabilities)),
            ("isolation".to_string(), s(req.isolation.as_str())),
        ]),
        HashSet::new(),
    )
    .map_err(|e| e.to_string())?;
    let resource_uid = uid(RESOURCE_TYPE, resource)?;
    let res = Entity::new(
        resource_uid.clone(),
        HashMap::from([
            ("kind".to_string(), s(req.kind)),
            ("id".to_string(), s(req.id)),
            ("name".to_string(), s(resource)),
            ("type".to_string(), s(req.resource_type.unwrap_or_default())),
            ("owner".to_string(), s(req.owner.unwrap_or_default())),
            ("labels".to_string(), strings(req.labels)),
        ]),
        HashSet::new(),
    )
    .map_err(|e| e.to_string())?;
    let entities = Entities::from_entities([agent, res], None).map_err(|e| e.to_string())?;
    Ok((
        entities,
        principal,
        uid(ACTION_TYPE, req.action)?,
        resource_uid,
    ))
}

/// Everything a decision depends on besides the policies, unambiguously joined: each part
/// as its byte length (`u32`, little-endian) then its bytes, so no choice of values can make
/// two requests share a key. Built without formatting: it is made on every gated call.
fn cache_key(req: &Request<'_>) -> Box<[u8]> {
    let fixed = [
        req.agent_id,
        req.agent_name.unwrap_or_default(),
        req.kind,
        req.id,
        req.resource_type.unwrap_or_default(),
        req.owner.unwrap_or_default(),
        req.action,
    ];
    let len = fixed.iter().map(|s| s.len() + 4).sum::<usize>()
        + req.capabilities.iter().map(|s| s.len() + 4).sum::<usize>()
        + req.labels.iter().map(|s| s.len() + 4).sum::<usize>()
        + 12;
    let mut k = Vec::with_capacity(len);
    let mut push = |s: &[u8]| {
        k.extend_from_slice(&(s.len() as u32).to_le_bytes());
        k.extend_from_slice(s);
    };
    for s in fixed {
        push(s.as_bytes());
    }
    push(&[
        u8::from(req.agent_name.is_some()),
        req.trust.rank(),
        req.isolation as u8,
    ]);
    push(&(req.capabilities.len() as u32).to_le_bytes());
    for c in req.capabilities {
        push(c.as_bytes());
    }
    push(&(req.labels.len() as u32).to_le_bytes());
    for l in req.labels {
        push(l.as_bytes());
    }
    k.into_boxed_slice()
}
