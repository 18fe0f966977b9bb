//! `qi:agent/llm`: model calls through the host's broker ([`crate::llm`]), under the agent's
//! grants (`securityConstraints.allowedModels`) and budgets (`resourceLimits.maxLlmCalls`,
//! `maxInputTokens`, `maxOutputTokens`, `maxCostUsd`), gated as `llm/<provider>/<model>`,
//! audited and counted in the receipt.
//!
//! Order of a call: the model is resolved (`invalid-request`), granted (`access-denied`) and
//! gated (`access-denied`); the request is checked against its bounds (`invalid-request`,
//! its response schema compiled under `crate::llm::schema`'s bounds); then the token and cost
//! budgets are checked and the call budget taken (`limit-exceeded`, each
//! before anything is sent); then the broker answers it, from a recording or its provider,
//! within the agent's deadline. Its usage is charged whatever the outcome of the answer's
//! checks, since the provider counted it.

use super::AgentState;
use super::qi;
use crate::error::LimitKind;
use crate::llm::request::{self as r, ChatRequest};
use crate::llm::{Answer, Call, LlmFailure};
use crate::sandbox::AgentShared;
use qi::agent::llm as wit;
use std::sync::atomic::Ordering;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};

/// Adds `qi:agent/llm` to `linker`.
pub fn add_to_linker(linker: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<AgentState, HasSelf<AgentState>>(linker, |s| s)
}

/// Bytes of the prompt and of the answer an audit entry keeps at `monitored` (each; the audit
/// log bounds an entry's details to 16 KiB).
pub const AUDITED_TEXT_BYTES: usize = 6_000;

fn to_wit_error(f: LlmFailure) -> wit::LlmError {
    match f {
        LlmFailure::AccessDenied(m) => wit::LlmError::AccessDenied(m),
        LlmFailure::LimitExceeded(m) => wit::LlmError::LimitExceeded(m),
        LlmFailure::InvalidRequest(m) => wit::LlmError::InvalidRequest(m),
        LlmFailure::RateLimited {
            retry_after_ms,
            message,
        } => wit::LlmError::RateLimited(wit::RateLimit {
            retry_after_ms,
            message,
        }),
        LlmFailure::Unavailable(m) => wit::LlmError::Unavailable(m),
        LlmFailure::ProviderError(m) => wit::LlmError::ProviderError(m),
    }
}

fn json_arg(field: &str, text: &str) -> Result<serde_json::Value, LlmFailure> {
    if text.len() > r::MAX_SCHEMA_BYTES {
        return Err(LlmFailure::InvalidRequest(format!(
            "request.{field}: {} bytes; at most {}",
            text.len(),
            r::MAX_SCHEMA_BYTES
        )));
    }
    serde_json::from_str(text)
        .map_err(|e| LlmFailure::InvalidRequest(format!("request.{field}: not JSON: {e}")))
}

/// The WIT request in the host's form (JSON texts parsed).
fn from_wit(req: wit::Request) -> Result<ChatRequest, LlmFailure> {
    let role = |r: wit::Role| match r {
        wit::Role::System => r::Role::System,
        wit::Role::User => r::Role::User,
        wit::Role::Assistant => r::Role::Assistant,
        wit::Role::Tool => r::Role::Tool,
    };
    let call = |c: wit::ToolCall| r::ToolCall {
        id: c.id,
        name: c.name,
        arguments: c.arguments,
    };
    // Checked before anything is parsed: the lists are the guest's to make long.
    if req.messages.len() > r::MAX_MESSAGES || req.tools.len() > r::MAX_TOOLS {
        return Err(LlmFailure::InvalidRequest(format!(
            "request: {} messages and {} tools; at most {} and {}",
            req.messages.len(),
            req.tools.len(),
            r::MAX_MESSAGES,
            r::MAX_TOOLS
        )));
    }
    let mut tools = Vec::with_capacity(req.tools.len());
    for (i, t) in req.tools.into_iter().enumerate() {
        tools.push(r::ToolDef {
            parameters: json_arg(&format!("tools[{i}].parameters"), &t.parameters)?,
            name: t.name,
            description: t.description,
        });
    }
    let response_format = match req.response_format {
        None => None,
        Some(wit::ResponseFormat::Text) => Some(r::ResponseFormat::Text),
        Some(wit::ResponseFormat::JsonObject) => Some(r::ResponseFormat::JsonObject),
        Some(wit::ResponseFormat::JsonSchema(f)) => Some(r::ResponseFormat::JsonSchema {
            schema: json_arg("response-format.schema", &f.schema)?,
            name: f.name,
            strict: f.strict,
        }),
    };
    Ok(ChatRequest {
        model: req.model,
        messages: req
            .messages
            .into_iter()
            .map(|m| r::Message {
                role: role(m.role),
                content: m.content,
                tool_calls: m.tool_calls.into_iter().map(call).collect(),
                tool_call_id: m.tool_call_id,
            })
            .collect(),
        tools,
        tool_choice: req.tool_choice.map(|c| match c {
            wit::ToolChoice::Auto => r::ToolChoice::Auto,
            wit::ToolChoice::None => r::ToolChoice::None,
            wit::ToolChoice::Required => r::ToolChoice::Required,
            wit::ToolChoice::Named(n) => r::ToolChoice::Named(n),
        }),
        response_format,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop: req.stop,
    })
}

fn to_wit(answer: Answer) -> wit::Response {
    let a = answer.response;
    wit::Response {
        content: a.content,
        tool_calls: a
            .tool_calls
            .into_iter()
            .map(|c| wit::ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
        finish_reason: match a.finish_reason {
            r::FinishReason::Stop => wit::FinishReason::Stop,
            r::FinishReason::Length => wit::FinishReason::Length,
            r::FinishReason::ToolCalls => wit::FinishReason::ToolCalls,
            r::FinishReason::ContentFilter => wit::FinishReason::ContentFilter,
            r::FinishReason::Other => wit::FinishReason::Other,
        },
        model: a.model,
        usage: wit::Usage {
            input_tokens: a.usage.input_tokens,
            output_tokens: a.usage.output_tokens,
        },
        replayed: answer.replayed,
    }
}

/// Input tokens a provider may add to a request that offers tools or asks for a JSON answer
/// (its own tool-use system prompt; Anthropic documents 313 to 346), counted when the input
/// of a call is priced before it is sent.
pub const TOOL_PROMPT_TOKENS: u64 = 1_024;

/// A budget refusal: the violation is recorded (the first one ends a failing agent as
/// `limit-exceeded`), the refusal audited, and the guest told which field.
fn over_budget(shared: &AgentShared, limit: LimitKind, max: u64, detail: String) -> LlmFailure {
    shared.record_violation(limit, max, detail.clone());
    let _ = shared.record_decision(
        "limits",
        &limit.to_string().replace(' ', "-"),
        "take",
        crate::audit::AuditDecision::Deny,
        &detail,
    );
    LlmFailure::LimitExceeded(format!("{} ({}): {detail}", limit.field(), max))
}

/// The cost limit of `shared`, in micro-dollars: `maxCostUsd`, else the level's ceiling.
fn cost_limit(shared: &AgentShared) -> u64 {
    shared
        .spec
        .resource_limits
        .max_cost_usd
        .map(crate::spec::usd_to_micro)
        .unwrap_or_else(|| {
            crate::spec::IsolationCeilings::of(shared.spec.isolation_level).max_cost_micro_usd
        })
}

/// Checks the token and cost budgets and takes the call budget; returns the `max_tokens` to
/// send.
fn budget(
    shared: &AgentShared,
    request: &ChatRequest,
    model_id: &str,
    per_call: u32,
    price: Option<crate::llm::Price>,
) -> Result<u32, LlmFailure> {
    let l = &shared.spec.resource_limits;
    let c = &shared.counters;
    if price.is_none()
        && let Some(usd) = l.max_cost_usd
    {
        return Err(over_budget(
            shared,
            LimitKind::LlmCost,
            crate::spec::usd_to_micro(usd),
            format!(
                "`{model_id}` has no price in the host's llm.prices, so its cost cannot be \
                 counted against this budget; ask for a priced model or leave maxCostUsd out"
            ),
        ));
    }
    let input = c.input_tokens.load(Ordering::Relaxed);
    if input >= l.max_input_tokens {
        return Err(over_budget(
            shared,
            LimitKind::InputTokens,
            l.max_input_tokens,
            format!("{input} input tokens spent; no call can be sent"),
        ));
    }
    let output_left = l
        .max_output_tokens
        .saturating_sub(c.output_tokens.load(Ordering::Relaxed));
    if output_left == 0 {
        return Err(over_budget(
            shared,
            LimitKind::OutputTokens,
            l.max_output_tokens,
            "every output token is spent; no call can be sent".into(),
        ));
    }
    let mut max_tokens = u64::from(request.max_tokens.unwrap_or(per_call)).min(output_left);
    if let Some(price) = price {
        let limit = cost_limit(shared);
        let spent = c.cost_micro_usd.load(Ordering::Relaxed);
        let left = limit.saturating_sub(spent);
        // The input's tokens are known only once the provider counted them: priced at one
        // token per byte of the request (never fewer tokens than that with the tokenizers in
        // use), so that no call can take the spending past the limit.
        let tool_prompt = if request.tools.is_empty() && request.response_format.is_none() {
            0
        } else {
            TOOL_PROMPT_TOKENS
        };
        let input_bound = (request.size() as u64)
            .saturating_add(16 * request.messages.len() as u64)
            .saturating_add(tool_prompt);
        let input_cost = price.micro_usd(input_bound, 0);
        let per_token = price.output_per_million;
        let affordable = if per_token > 0.0 {
            (left.saturating_sub(input_cost) as f64 / per_token).floor() as u64
        } else {
            u64::MAX
        };
        if left == 0 || input_cost >= left || affordable == 0 {
            return Err(over_budget(
                shared,
                LimitKind::LlmCost,
                limit,
                format!(
                    "{spent} of {limit} micro-dollars spent; this request's input may cost up \
                     to {input_cost} (one token per byte) and leave no output token to buy"
                ),
            ));
        }
        max_tokens = max_tokens.min(affordable);
    }
    shared
        .take_budget(LimitKind::LlmCalls)
        .map_err(|d| LlmFailure::LimitExceeded(format!("resourceLimits.maxLlmCalls: {d}")))?;
    Ok(max_tokens.min(u64::from(u32::MAX)) as u32)
}

/// Charges what the provider counted (replayed answers cost nothing).
fn charge(
    shared: &AgentShared,
    u: crate::llm::Usage,
    replayed: bool,
    price: Option<crate::llm::Price>,
) -> u64 {
    let c = &shared.counters;
    c.input_tokens
        .fetch_add(u64::from(u.input_tokens), Ordering::Relaxed);
    c.output_tokens
        .fetch_add(u64::from(u.output_tokens), Ordering::Relaxed);
    if replayed {
        c.llm_replayed.fetch_add(1, Ordering::Relaxed);
        return 0;
    }
    let cost = price.map_or(0, |p| {
        p.micro_usd(u64::from(u.input_tokens), u64::from(u.output_tokens))
    });
    c.cost_micro_usd.fetch_add(cost, Ordering::Relaxed);
    cost
}

/// Checks a JSON answer against the requested format.
fn check_format(request: &ChatRequest, answer: &Answer) -> Result<(), LlmFailure> {
    let content = &answer.response.content;
    if !answer.response.tool_calls.is_empty() {
        return Ok(());
    }
    match &request.response_format {
        Some(r::ResponseFormat::JsonObject) => {
            match serde_json::from_str::<serde_json::Value>(content) {
                Ok(v) if v.is_object() => Ok(()),
                _ => Err(LlmFailure::ProviderError(
                    "the answer is not a JSON object, as the request's response format asks".into(),
                )),
            }
        }
        Some(r::ResponseFormat::JsonSchema { schema, name, .. }) => {
            let value: serde_json::Value = serde_json::from_str(content).map_err(|e| {
                LlmFailure::ProviderError(format!("the answer is not JSON ({e}); schema `{name}`"))
            })?;
            let validator = crate::llm::schema::compile(schema).map_err(|e| {
                LlmFailure::InvalidRequest(format!("request.response-format.schema: {e}"))
            })?;
            match validator.iter_errors(&value).next() {
                None => Ok(()),
                Some(e) => Err(LlmFailure::ProviderError(format!(
                    "the answer does not follow schema `{name}`: {} at `{}`",
                    crate::llm::providers::cap(&e.to_string(), 200),
                    e.instance_path()
                ))),
            }
        }
        _ => Ok(()),
    }
}

/// The call, start to answer, without the audit entry.
async fn chat(
    shared: &AgentShared,
    request: &ChatRequest,
    resolved_id: &mut Option<String>,
    cost: &mut u64,
) -> Result<Answer, LlmFailure> {
    let broker = shared.llm.as_ref().ok_or_else(|| {
        LlmFailure::Unavailable(
            "no models are configured on this host; the operator gives them with \
             `--llm-config FILE` or a manifest's [llm] section"
                .into(),
        )
    })?;
    let resolved = broker
        .resolve(&request.model)
        .map_err(LlmFailure::InvalidRequest)?;
    *resolved_id = Some(resolved.id.clone());
    if !shared.grants.model_allowed(&request.model, &resolved.id) {
        shared
            .counters
            .access_denied
            .fetch_add(1, Ordering::Relaxed);
        let why = if shared.grants.is_prohibited("llm") {
            "`llm` is in securityConstraints.prohibitedOperations".to_string()
        } else {
            format!(
                "neither `{}` nor `{}` is in securityConstraints.allowedModels",
                request.model, resolved.id
            )
        };
        return Err(LlmFailure::AccessDenied(shared.refuse(
            "llm",
            &resolved.id,
            "chat",
            &why,
        )));
    }
    shared
        .gate("llm", &resolved.id, "chat")
        .map_err(LlmFailure::AccessDenied)?;
    // Bounds (the response schema is compiled here) only for an agent that may call the
    // model at all.
    request.check().map_err(LlmFailure::InvalidRequest)?;
    let price = broker.price(&resolved.id);
    let per_call = broker.max_tokens_per_call(&resolved.provider);
    let max_tokens = budget(shared, request, &resolved.id, per_call, price)?;
    // The request is recorded in the data directory with its answer: it counts against the
    // bytes the agent may store, like every other write it causes.
    // As recorded: the request's JSON text (escapes and field names included).
    let recorded = serde_json::to_vec(request).map_or(usize::MAX, |v| v.len());
    super::limits::stored(shared, "llm.chat", "request", recorded, 1)
        .map_err(|r| LlmFailure::LimitExceeded(r.into_message()))?;
    let hash = request.hash(&resolved.id);
    let occurrence = {
        let mut seen = shared.llm_seen.lock().expect("llm_seen poisoned");
        let n = seen.entry(hash.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let scope = match &shared.sync {
        Some(h) => format!("run/{}/{}", h.run_id, h.participant),
        None => format!("agent/{}", shared.id),
    };
    let mut paid = None;
    let answer = broker
        .chat(
            Call {
                request,
                resolved: &resolved,
                max_tokens,
                hash: &hash,
                scope: &scope,
                occurrence,
                deadline: shared.deadline,
            },
            &mut paid,
        )
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            if let Some(usage) = paid {
                *cost = charge(shared, usage, false, price);
            }
            return Err(e);
        }
    };
    *cost = charge(shared, answer.response.usage, answer.replayed, price);
    if !answer.replayed {
        // Already stored: charged in full, so that the next write (or call) is refused once
        // the agent's bound is passed.
        let recorded = serde_json::to_vec(&answer.response).map_or(0, |v| v.len() as u64);
        shared
            .counters
            .stored_bytes
            .fetch_add(recorded, Ordering::Relaxed);
    }
    check_format(request, &answer)?;
    Ok(answer)
}

/// The last messages of `request` as text, for a monitored audit entry.
fn prompt_text(request: &ChatRequest) -> String {
    let mut text = String::new();
    for m in request.messages.iter().rev().take(4).rev() {
        text.push_str(&format!("[{:?}] {}\n", m.role, m.content));
    }
    crate::llm::providers::cap(&text, AUDITED_TEXT_BYTES)
}

impl wit::Host for AgentState {
    async fn chat(&mut self, request: wit::Request) -> Result<wit::Response, wit::LlmError> {
        let shared = self.shared.clone();
        shared.count_host_call();
        let start = Instant::now();
        let model = request.model.clone();
        let mut resolved = None;
        let mut cost = 0;
        let parsed = from_wit(request);
        let size = parsed.as_ref().map_or(0, ChatRequest::size);
        let result = match &parsed {
            Ok(req) => chat(&shared, req, &mut resolved, &mut cost).await,
            Err(e) => Err(e.clone()),
        };
        let outcome = result.as_ref().map_or_else(LlmFailure::kind, |_| "ok");
        let id = resolved.unwrap_or_else(|| crate::llm::providers::cap(&model, 256));
        // Refusals by grants, the gate and the budgets are audited where they are decided.
        let decided_elsewhere = matches!(
            &result,
            Err(LlmFailure::AccessDenied(_) | LlmFailure::LimitExceeded(_))
        );
        if !decided_elsewhere {
            let monitored = shared.grants.monitored;
            shared.audit(&format!("llm/{id}"), "chat", || {
                let mut details = serde_json::json!({
                    "model": model,
                    "latencyMs": start.elapsed().as_millis() as u64,
                    "outcome": outcome,
                });
                if let Ok(a) = &result {
                    details["answeredBy"] = a.response.model.clone().into();
                    details["inputTokens"] = a.response.usage.input_tokens.into();
                    details["outputTokens"] = a.response.usage.output_tokens.into();
                    details["replayed"] = a.replayed.into();
                    details["costUsd"] = (cost as f64 / 1_000_000.0).into();
                }
                if monitored {
                    if let Ok(req) = &parsed {
                        details["prompt"] = prompt_text(req).into();
                    }
                    if let Ok(a) = &result {
                        details["answer"] =
                            crate::llm::providers::cap(&a.response.content, AUDITED_TEXT_BYTES)
                                .into();
                    }
                }
                let reason = match &result {
                    Ok(_) => "answered".to_string(),
                    Err(e) => crate::llm::providers::cap(&e.to_string(), 512),
                };
                (reason, details)
            });
        }
        shared.record_call("llm.chat", &id, size, start, outcome);
        result.map(to_wit).map_err(to_wit_error)
    }

    async fn models(&mut self) -> Vec<String> {
        let shared = &self.shared;
        shared.count_host_call();
        let start = Instant::now();
        let names = match &shared.llm {
            Some(broker) => broker
                .names()
                .into_iter()
                .filter(|n| {
                    broker
                        .resolve(n)
                        .is_ok_and(|res| shared.grants.model_allowed(n, &res.id))
                })
                .collect(),
            None => Vec::new(),
        };
        shared.record_call("llm.models", "", 0, start, "ok");
        names
    }
}
