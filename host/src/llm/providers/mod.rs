//! The providers' wire formats: a [`ChatRequest`] encoded as a request body, an answer body
//! decoded as a [`ChatResponse`], and the error message pulled out of a refusal.
//!
//! - [`openai`]: OpenAI Chat Completions (`POST /v1/chat/completions`), spoken by OpenAI, vLLM,
//!   llama.cpp server, Ollama and LM Studio.
//! - [`anthropic`]: Anthropic Messages (`POST /v1/messages`).
//!
//! To add a wire format: a file here with its `encode` and `decode`, a
//! [`ProviderKind`] variant, and its arm in [`endpoint`], [`encode`], [`decode`] and [`usage`].

pub mod anthropic;
pub mod openai;

use super::config::ProviderKind;
use super::request::{ChatRequest, ChatResponse};
use serde_json::Value;

/// The path appended to a provider's base URL (a base URL ending in `/v1` loses it first).
pub fn endpoint(kind: ProviderKind, base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    match kind {
        ProviderKind::Openai => format!("{base}/v1/chat/completions"),
        ProviderKind::Anthropic => format!("{base}/v1/messages"),
    }
}

/// The body of `request` for `model` (the provider's own model name) with `max_tokens`.
/// `Err` names the request field the format cannot carry.
pub fn encode(
    kind: ProviderKind,
    request: &ChatRequest,
    model: &str,
    max_tokens: u32,
) -> Result<Value, String> {
    match kind {
        ProviderKind::Openai => Ok(openai::encode(request, model, max_tokens)),
        ProviderKind::Anthropic => anthropic::encode(request, model, max_tokens),
    }
}

/// The answer in `body`, for a call of `request`; `model_id` is what the answer says answered
/// when the body does not. `Err` says what is wrong with the body.
pub fn decode(
    kind: ProviderKind,
    request: &ChatRequest,
    provider: &str,
    body: &Value,
) -> Result<ChatResponse, String> {
    match kind {
        ProviderKind::Openai => openai::decode(provider, body),
        ProviderKind::Anthropic => anthropic::decode(request, provider, body),
    }
}

/// The answer of either format once its content, tool calls and finish reason are read:
/// the usage (`fields`: the input and output count names) and the model that answered (as
/// `<provider>/<model>`) are read the same way in both.
fn answer(
    body: &Value,
    provider: &str,
    fields: (&str, &str),
    content: String,
    tool_calls: Vec<super::request::ToolCall>,
    finish_reason: super::request::FinishReason,
) -> Result<ChatResponse, String> {
    let u = body
        .get("usage")
        .filter(|u| u.is_object())
        .ok_or("it has no `usage`; qi-host needs the provider's token counts for the budgets")?;
    let tokens = |field: &str| -> Result<u32, String> {
        let n = u
            .get(field)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("its usage has no `{field}` count"))?;
        u32::try_from(n).map_err(|_| format!("its usage `{field}` of {n} is not a token count"))
    };
    let usage = super::request::Usage {
        input_tokens: tokens(fields.0)?,
        output_tokens: tokens(fields.1)?,
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .map(|m| format!("{provider}/{m}"))
        .unwrap_or_else(|| format!("{provider}/unknown"));
    Ok(ChatResponse {
        content,
        tool_calls,
        finish_reason,
        model,
        usage,
    })
}

/// The tokens an answer body reports, read before anything else of it (so an answer the host
/// then refuses is still charged); counts past `u32::MAX` are `u32::MAX`.
pub fn usage(kind: ProviderKind, body: &Value) -> Option<super::request::Usage> {
    let (i, o) = match kind {
        ProviderKind::Openai => ("prompt_tokens", "completion_tokens"),
        ProviderKind::Anthropic => ("input_tokens", "output_tokens"),
    };
    let u = body.get("usage")?;
    let n = |f: &str| {
        u.get(f)
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    Some(super::request::Usage {
        input_tokens: n(i)?,
        output_tokens: n(o)?,
    })
}

/// The message of an error body of either format (`{"error": {"message": ...}}`), else the
/// start of the body as text; at most 16 KiB (the caller scrubs it of the key, then cuts it
/// shorter).
pub fn error_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.pointer("/message"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    cap(&text, 16 << 10)
}

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
pub fn cap(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_a_base_with_or_without_v1() {
        for base in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            "http://h:1/v1/",
        ] {
            assert_eq!(
                endpoint(ProviderKind::Openai, base),
                "http://h:1/v1/chat/completions"
            );
            assert_eq!(
                endpoint(ProviderKind::Anthropic, base),
                "http://h:1/v1/messages"
            );
        }
    }

    #[test]
    fn error_messages_come_from_either_shape_and_are_capped() {
        assert_eq!(error_message(br#"{"error":{"message":"bad"}}"#), "bad");
        assert_eq!(
            error_message(br#"{"type":"error","error":{"type":"x","message":"worse"}}"#),
            "worse"
        );
        let long = "é".repeat(10_000);
        assert!(error_message(long.as_bytes()).len() <= (16 << 10) + 3);
    }
}
