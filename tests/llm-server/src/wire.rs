//! The two wire formats: who is authorized, and how answers and errors are written.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Recorded;

/// Which provider API a request came in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenAI Chat Completions, `POST /v1/chat/completions`.
    OpenAi,
    /// Anthropic Messages, `POST /v1/messages`.
    Anthropic,
}

/// Why the server refuses a request; each maps to a status and to both formats' error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Wrong or missing key, or a scripted [`Reply::EchoCredentials`](crate::Reply::EchoCredentials).
    Authentication,
    /// The body is not JSON.
    InvalidJson,
    /// No API at this path.
    NotFound,
    /// The API exists, but only for `POST`.
    MethodNotAllowed,
    /// A [`Reply::Hang`](crate::Reply::Hang) let go by `release_hung`.
    Unavailable,
}

impl ErrorKind {
    fn status(self) -> StatusCode {
        match self {
            ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
            ErrorKind::InvalidJson => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// OpenAI's `error.type` and `error.code`.
    fn openai_type_and_code(self) -> (&'static str, &'static str) {
        match self {
            ErrorKind::Authentication => ("invalid_request_error", "invalid_api_key"),
            ErrorKind::InvalidJson => ("invalid_request_error", "invalid_json"),
            ErrorKind::NotFound => ("invalid_request_error", "unknown_url"),
            ErrorKind::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            ErrorKind::Unavailable => ("server_error", "service_unavailable"),
        }
    }

    /// Anthropic's `error.type`.
    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::InvalidJson | ErrorKind::MethodNotAllowed => "invalid_request_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::Unavailable => "api_error",
        }
    }
}

/// How an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The model finished its text.
    Stop,
    /// The model asks for tool calls.
    ToolCalls,
    /// The model hit the token limit.
    Length,
}

/// A successful answer before it is written in a format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// The assistant's text; `None` writes OpenAI `content: null` and no Anthropic text block.
    pub(crate) text: Option<String>,
    /// `(tool name, arguments)` in order.
    pub(crate) tool_calls: Vec<(String, Value)>,
    pub(crate) finish: Finish,
    pub(crate) input_tokens: u32,
    pub(crate) output_tokens: u32,
}

/// The numbers in answer and tool-call ids (`chatcmpl-N`, `msg_N`, `call_N`, `toolu_N`): 1, 2, 3…
/// in the order the server hands them out, unique within one server.
#[derive(Debug, Default)]
pub(crate) struct Ids(AtomicU64);

impl Ids {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Format {
    /// Whether the request carries `key` where this format carries it.
    pub(crate) fn is_authorized(self, request: &Recorded, key: &str) -> bool {
        match self {
            Format::OpenAi => request
                .authorization
                .as_deref()
                .and_then(|value| value.strip_prefix("Bearer "))
                .is_some_and(|sent| sent == key),
            Format::Anthropic => request.api_key.as_deref() == Some(key),
        }
    }

    /// An error in this format's shape, with the status of `kind`.
    pub(crate) fn error(self, kind: ErrorKind, message: &str) -> Response {
        let body = match self {
            Format::OpenAi => {
                let (error_type, code) = kind.openai_type_and_code();
                json!({"error": {"message": message, "type": error_type, "code": code}})
            }
            Format::Anthropic => json!({
                "type": "error",
                "error": {"type": kind.anthropic_type(), "message": message},
            }),
        };
        (kind.status(), Json(body)).into_response()
    }

    /// A 200 answer in this format's shape; `model` is the request's `model`, echoed back.
    pub(crate) fn render(self, answer: Answer, model: &Value, ids: &Ids) -> Response {
        let body = match self {
            Format::OpenAi => render_openai(answer, model, ids),
            Format::Anthropic => render_anthropic(answer, model, ids),
        };
        Json(body).into_response()
    }
}

fn render_openai(answer: Answer, model: &Value, ids: &Ids) -> Value {
    let id = format!("chatcmpl-{}", ids.next());
    let mut message = json!({"role": "assistant", "content": answer.text});
    if !answer.tool_calls.is_empty() {
        let calls: Vec<Value> = answer
            .tool_calls
            .into_iter()
            .map(|(name, arguments)| {
                json!({
                    "id": format!("call_{}", ids.next()),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments.to_string()},
                })
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    let finish_reason = match answer.finish {
        Finish::Stop => "stop",
        Finish::ToolCalls => "tool_calls",
        Finish::Length => "length",
    };
    json!({
        "id": id,
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": answer.input_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": u64::from(answer.input_tokens) + u64::from(answer.output_tokens),
        },
    })
}

fn render_anthropic(answer: Answer, model: &Value, ids: &Ids) -> Value {
    let id = format!("msg_{}", ids.next());
    let text_block = answer
        .text
        .map(|text| json!({"type": "text", "text": text}));
    let tool_blocks = answer.tool_calls.into_iter().map(|(name, input)| {
        json!({"type": "tool_use", "id": format!("toolu_{}", ids.next()), "name": name, "input": input})
    });
    let content: Vec<Value> = text_block.into_iter().chain(tool_blocks).collect();
    let stop_reason = match answer.finish {
        Finish::Stop => "end_turn",
        Finish::ToolCalls => "tool_use",
        Finish::Length => "max_tokens",
    };
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens},
    })
}
