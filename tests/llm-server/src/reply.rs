//! The scripted answers a [`TestServer`](crate::TestServer) can give.

use axum::http::{HeaderValue, StatusCode};
use serde_json::Value;

/// One scripted answer. [`TestServer::push`](crate::TestServer::push) queues it; the next
/// authorized request with a JSON body, in either wire format, takes it (first in, first out).
///
/// Answers that carry content are rendered in the format of the request that takes them: a
/// `chat.completion` object for OpenAI, a `message` object for Anthropic. Where a variant says its
/// usage is *computed*, it is computed as for the default reply: `input_tokens` is
/// `1 + (bytes of every text in the request) / 4` and `output_tokens` is the number of
/// whitespace-separated words of the content (see the crate documentation).
///
/// Scripted answers are served verbatim: the request's `max_tokens` does not cut them (use
/// [`Reply::Length`] for an answer that stops at the token limit).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A text answer with exactly this usage; finishes normally (`"stop"` / `"end_turn"`).
    Text {
        /// The assistant's text.
        content: String,
        /// Reported prompt tokens (`prompt_tokens` / `input_tokens`).
        input_tokens: u32,
        /// Reported completion tokens (`completion_tokens` / `output_tokens`).
        output_tokens: u32,
    },
    /// A text answer whose usage is computed from the request and the content; finishes normally.
    /// [`Reply::text`] builds it.
    TextDefaultUsage(String),
    /// Tool calls and no text, with exactly this usage; finishes with `"tool_calls"` / `"tool_use"`.
    /// Each call gets an id of its own (`call_N` / `toolu_N`). OpenAI receives the arguments as
    /// JSON text (`function.arguments`), Anthropic as the JSON value itself (`input`).
    ToolCalls {
        /// `(tool name, arguments)` in the order the model "calls" them.
        calls: Vec<(String, Value)>,
        /// Reported prompt tokens.
        input_tokens: u32,
        /// Reported completion tokens.
        output_tokens: u32,
    },
    /// A text answer whose content is this value as compact JSON text; usage computed; finishes
    /// normally. For structured-output tests that need a particular value.
    Json(Value),
    /// An answer with any status and this body, verbatim, in neither format's shape unless the
    /// body is. `retry_after` is sent as the `Retry-After` header value, verbatim (seconds such
    /// as `"2"`, or an HTTP date). The content type is `application/json` when the body parses
    /// as JSON, `text/plain` otherwise.
    ///
    /// [`TestServer::push`](crate::TestServer::push) panics if `code` is not an HTTP status
    /// (100 to 999) or `retry_after` is not a valid header value.
    Status {
        /// The HTTP status code.
        code: u16,
        /// The `Retry-After` header value, if any.
        retry_after: Option<String>,
        /// The response body.
        body: String,
    },
    /// No answer until [`TestServer::release_hung`](crate::TestServer::release_hung), which
    /// makes it answer 503 in the format's error shape; or until the server stops, which closes
    /// the connection without an answer. For testing the client's timeouts and cancellation.
    Hang,
    /// Status 200, content type `application/json`, and this raw body: for testing how the
    /// client handles a provider answer it cannot parse.
    Malformed(String),
    /// A text answer whose content is this many bytes (ASCII words); usage computed; finishes
    /// normally. For testing the client's bound on answer size.
    Large(usize),
    /// Status 401 in the format's error shape, whose message repeats the `Authorization` and
    /// `x-api-key` header values the client sent (`<none>` when absent): a provider that echoes
    /// the key, for testing that the client never passes a provider's message on with the key in it.
    EchoCredentials,
    /// A text answer that stopped at the token limit (`"length"` / `"max_tokens"`); usage computed.
    Length {
        /// The (cut) text.
        content: String,
    },
}

impl Reply {
    /// A text answer with computed usage ([`Reply::TextDefaultUsage`]).
    pub fn text(content: impl Into<String>) -> Reply {
        Reply::TextDefaultUsage(content.into())
    }

    /// One tool call with exactly this usage ([`Reply::ToolCalls`]).
    pub fn tool_call(
        name: impl Into<String>,
        arguments: Value,
        input_tokens: u32,
        output_tokens: u32,
    ) -> Reply {
        Reply::ToolCalls {
            calls: vec![(name.into(), arguments)],
            input_tokens,
            output_tokens,
        }
    }

    /// A text answer whose content is `value` as JSON text ([`Reply::Json`]).
    pub fn json(value: Value) -> Reply {
        Reply::Json(value)
    }

    /// An answer with status `code` and this body, without `Retry-After` ([`Reply::Status`]).
    pub fn status(code: u16, body: impl Into<String>) -> Reply {
        Reply::Status {
            code,
            retry_after: None,
            body: body.into(),
        }
    }

    /// An answer with status `code`, this `Retry-After` header value (verbatim) and this body
    /// ([`Reply::Status`]).
    pub fn status_with_retry_after(
        code: u16,
        retry_after: impl Into<String>,
        body: impl Into<String>,
    ) -> Reply {
        Reply::Status {
            code,
            retry_after: Some(retry_after.into()),
            body: body.into(),
        }
    }

    /// A text answer that stopped at the token limit ([`Reply::Length`]).
    pub fn length(content: impl Into<String>) -> Reply {
        Reply::Length {
            content: content.into(),
        }
    }

    /// Panics (at the caller of `push`) on a reply the server could not send, so that a mistake
    /// in a test script shows where it was made rather than as a dropped connection.
    #[track_caller]
    pub(crate) fn assert_sendable(&self) {
        if let Reply::Status {
            code, retry_after, ..
        } = self
        {
            assert!(
                StatusCode::from_u16(*code).is_ok(),
                "Reply::Status code {code} is not an HTTP status (100 to 999)"
            );
            if let Some(value) = retry_after {
                assert!(
                    HeaderValue::from_str(value).is_ok(),
                    "Reply::Status retry_after {value:?} is not a valid header value"
                );
            }
        }
    }
}
