//! Model calls brokered by the host (WIT interface `llm`, see `wit/llm.wit`).
//!
//! The agent never holds a provider key or a connection: it hands the host a [`Request`], and
//! the host checks the agent's grants (`securityConstraints.allowedModels`, deny by default)
//! and budgets (`resourceLimits.maxLlmCalls`, `maxInputTokens`, `maxOutputTokens`,
//! `maxCostUsd`), sends the request with the operator's key to the provider configured for the
//! model, records the answer and returns it as a [`Response`]. A refusal or a failure is an
//! [`LlmError`], never a trap.
//!
//! A model is named by what the operator configured: an alias (`fast`) or a
//! `<provider>/<model>` id (`local/qwen2.5-7b`); [`models`] lists the ones this agent may use.
//!
//! Every answer is recorded, keyed by a hash of the request: a retried or resumed subtask that
//! makes the same request gets the recorded answer ([`Response::replayed`] is `true`, nothing
//! is paid), and under `qi-host run --llm-replay` every answer comes from a recording.
//!
//! ```
//! use qi_guest_sdk::llm::{self, LlmError, Request};
//! use qi_guest_sdk::serde_json::json;
//! use qi_guest_sdk::{AgentError, log};
//! use serde::Deserialize;
//!
//! # fn demo() -> Result<(), AgentError> {
//! // One question, one answer; `?` ends the run as `failed: llm call failed: ...`.
//! let answer = Request::new("fast")
//!     .system("Answer in one sentence.")
//!     .user("What is a WebAssembly component?")
//!     .max_tokens(200)
//!     .send()?;
//! log::info!("{} ({} tokens)", answer.content, answer.usage.output_tokens);
//!
//! // A typed answer following a JSON Schema, which the host checks the answer against.
//! #[derive(Deserialize)]
//! struct Verdict {
//!     vote: String,
//!     reasons: Vec<String>,
//! }
//! let request = Request::new("reviewer")
//!     .user("12 TODOs in 800 lines: approve or request changes?")
//!     .json_schema("verdict", json!({
//!         "type": "object",
//!         "properties": {
//!             "vote": {"enum": ["approve", "changes-requested"]},
//!             "reasons": {"type": "array", "items": {"type": "string"}},
//!         },
//!         "required": ["vote", "reasons"],
//!     }));
//! let (verdict, _response) = llm::chat_json::<Verdict>(&request)?;
//! log::info!("{}: {}", verdict.vote, verdict.reasons.join("; "));
//!
//! // Let the model call host tools (checked against `allowedTools`), for at most 3 rounds.
//! let request = Request::new("fast")
//!     .user("What time is it in UTC?")
//!     .tool("clock.now", "The current time", json!({"type": "object", "properties": {}}));
//! let run = llm::run_tools(request, 3)?;
//! log::info!("{} after {} tool rounds", run.response.content, run.rounds);
//!
//! // Errors told apart: a spent budget is a reason to wrap up, not to fail.
//! match Request::new("fast").user("One more idea?").send() {
//!     Ok(answer) => log::info!("{}", answer.content),
//!     Err(LlmError::LimitExceeded(budget)) => log::warn!("no more model calls: {budget}"),
//!     Err(error @ LlmError::RateLimited(_)) => {
//!         log::warn!("try again in {:?}", error.retry_after());
//!     }
//!     Err(error) => return Err(error.into()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Budgets: a call is refused with [`LlmError::LimitExceeded`] once `maxLlmCalls` calls were
//! made, once the input tokens reach `maxInputTokens`, or once no output token (or no cost) is
//! left; `max_tokens` is clamped to what is left. `?` on an [`LlmError`] inside [`Agent::run`]
//! ends the run as [`AgentError::Failed`](crate::AgentError::Failed).
//!
//! [`Agent::run`]: crate::Agent::run

use serde::de::DeserializeOwned;

pub use crate::LlmError;
use crate::ToolError;
use crate::wit::qi::agent::llm as raw;
pub use crate::wit::qi::agent::llm::{
    FinishReason, JsonSchemaFormat, Message, RateLimit, Request, Response, ResponseFormat, Role,
    ToolCall, ToolChoice, ToolDefinition, Usage,
};

/// Sends `request` to its model and returns the answer. [`Request::send`] does the same.
///
/// # Errors
///
/// The host's [`LlmError`]: the model is not allowed (`access-denied`), a budget is spent
/// (`limit-exceeded`), the request is malformed or names an unknown model
/// (`invalid-request`), the provider asks for a wait longer than the time left
/// (`rate-limited`), cannot be reached or has no recording under `--llm-replay`
/// (`unavailable`), or refused the request or answered something unusable
/// (`provider-error`).
pub fn chat(request: &Request) -> Result<Response, LlmError> {
    raw::chat(request)
}

/// Sends `request` and parses the answer's content (JSON text) as `T`; returns the value and
/// the whole answer.
///
/// Ask for JSON in the request ([`Request::json_schema`], which the host checks the answer
/// against, or [`Request::json_object`]): this function does not change the request, and a
/// model asked for text rarely answers bare JSON.
///
/// # Errors
///
/// Everything [`chat`] returns, plus [`LlmError::ProviderError`] naming the model, `T` and
/// serde's message when the content is not a valid `T`.
pub fn chat_json<T: DeserializeOwned>(request: &Request) -> Result<(T, Response), LlmError> {
    let response = chat(request)?;
    let value = response.json()?;
    Ok((value, response))
}

/// The model names (aliases and `<provider>/<model>` ids) this agent may use, sorted. Empty
/// when it may use none.
pub fn models() -> Vec<String> {
    raw::models()
}

/// Sends `request` and lets the model call host tools, for at most `max_rounds` rounds.
///
/// A round: the answer asked for tool calls, so its assistant message (with the calls) is
/// appended to the conversation, each call runs in order through [`tools::call_raw`] with the
/// model's arguments (empty arguments are sent as `{}`), a `tool` message per call is appended
/// with the tool's output (JSON text) or, when the call failed, the [`ToolError`]'s text (e.g.
/// `access-denied: ...`) so that the model can react, and the conversation is sent again.
///
/// The loop stops when the model answers without tool calls, or when `max_rounds` rounds were
/// run: then the last answer is returned with its tool calls not run
/// ([`ToolLoop::finished`] is `false`). With `max_rounds` 0 it is one [`chat`]. Only the
/// tools the request offers (its `tools`) run; a call of any other tool is answered with an
/// `access-denied` error text and runs nothing. The host still checks every call against
/// `allowedTools` and counts it against `maxToolCalls`.
///
/// # Errors
///
/// The first [`LlmError`] of any model call, which ends the loop (the tool results so far are
/// lost with it); a spent budget is [`LlmError::LimitExceeded`]. A failed tool call is not an
/// error: the model is told.
///
/// [`tools::call_raw`]: crate::tools::call_raw
pub fn run_tools(request: Request, max_rounds: u32) -> Result<ToolLoop, LlmError> {
    tool_loop(request, max_rounds, chat, crate::tools::call_raw)
}

/// The result of [`run_tools`].
#[derive(Debug, Clone, PartialEq)]
pub struct ToolLoop {
    /// The last answer. When [`ToolLoop::finished`] is `false` its tool calls were not run.
    pub response: Response,
    /// The last request sent: the whole conversation up to `response` (the original messages,
    /// then each round's assistant and `tool` messages). To go on talking, append
    /// [`Response::to_message`] of `response` and the next message to it.
    pub request: Request,
    /// How many rounds of tool calls were run (at most the `max_rounds` given).
    pub rounds: u32,
    /// How many model calls were made: `rounds + 1`.
    pub model_calls: u32,
    /// Every tool call that was run, in order, with its outcome.
    pub tool_results: Vec<ToolResult>,
    /// The tokens of every model call of the loop, added up.
    pub usage: Usage,
    /// `true` when every answer of the loop came from a recording (nothing was paid).
    pub replayed: bool,
}

impl ToolLoop {
    /// `true` when the model's last answer asked for no tool call; `false` when the loop ran
    /// out of rounds.
    pub fn finished(&self) -> bool {
        self.response.tool_calls.is_empty()
    }
}

/// A tool call the model asked for during [`run_tools`], and what it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// The call as the model asked for it.
    pub call: ToolCall,
    /// The tool's output (JSON text), or why the call did not succeed.
    pub output: Result<String, ToolError>,
}

impl ToolResult {
    /// The content of the `tool` message that told the model: the output, or the error's text.
    pub fn text(&self) -> String {
        match &self.output {
            Ok(output) => output.clone(),
            Err(error) => error.to_string(),
        }
    }
}

/// The loop of [`run_tools`], with the model and the tools passed in.
fn tool_loop(
    mut request: Request,
    max_rounds: u32,
    mut send: impl FnMut(&Request) -> Result<Response, LlmError>,
    mut call_tool: impl FnMut(&str, &str) -> Result<String, ToolError>,
) -> Result<ToolLoop, LlmError> {
    let mut response = send(&request)?;
    let mut usage = response.usage;
    let mut replayed = response.replayed;
    let mut rounds = 0;
    let mut tool_results = Vec::new();
    while !response.tool_calls.is_empty() && rounds < max_rounds {
        request.messages.push(response.to_message());
        for call in response.tool_calls {
            let arguments = if call.arguments.trim().is_empty() {
                "{}"
            } else {
                call.arguments.as_str()
            };
            // Only the tools the request offered run: a model (or a prompt injected into it)
            // naming another tool the agent may call gets an error, and nothing runs.
            let offered = request.tools.iter().any(|t| t.name == call.name);
            let output = if offered {
                call_tool(&call.name, arguments)
            } else {
                Err(ToolError::AccessDenied(format!(
                    "tool `{}` was not offered to the model in this request",
                    call.name
                )))
            };
            let result = ToolResult { output, call };
            request
                .messages
                .push(Message::tool_result(result.call.id.clone(), result.text()));
            tool_results.push(result);
        }
        rounds += 1;
        response = send(&request)?;
        usage.input_tokens = usage
            .input_tokens
            .saturating_add(response.usage.input_tokens);
        usage.output_tokens = usage
            .output_tokens
            .saturating_add(response.usage.output_tokens);
        replayed &= response.replayed;
    }
    Ok(ToolLoop {
        response,
        request,
        rounds,
        model_calls: rounds + 1,
        tool_results,
        usage,
        replayed,
    })
}

impl Request {
    /// A request to `model` (an alias or a `<provider>/<model>` id) with everything else at
    /// its default: no messages (add at least one before sending), no tools, no tool choice
    /// (the provider's default: `auto` when tools are given), a text answer, no `max_tokens`
    /// (the provider's `maxTokensPerCall`, clamped to the budget left), the provider's
    /// temperature and top-p, and no stop sequences.
    pub fn new(model: impl Into<String>) -> Request {
        Request {
            model: model.into(),
            messages: Vec::new(),
            tools: Vec::new(),
            tool_choice: None,
            response_format: None,
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop: Vec::new(),
        }
    }

    /// Appends a `system` message: instructions for the model.
    pub fn system(self, text: impl Into<String>) -> Request {
        self.message(Message::system(text))
    }

    /// Appends a `user` message.
    pub fn user(self, text: impl Into<String>) -> Request {
        self.message(Message::user(text))
    }

    /// Appends an `assistant` message without tool calls: an earlier answer of the model.
    pub fn assistant(self, text: impl Into<String>) -> Request {
        self.message(Message::assistant(text))
    }

    /// Appends any message, e.g. [`Response::to_message`] of an earlier answer.
    pub fn message(mut self, message: Message) -> Request {
        self.messages.push(message);
        self
    }

    /// Appends a `tool` message answering the tool call `call_id` with `content` (usually
    /// the tool's JSON output).
    pub fn tool_result(self, call_id: impl Into<String>, content: impl Into<String>) -> Request {
        self.message(Message::tool_result(call_id, content))
    }

    /// Offers the model a tool: its `name` (ASCII letters, digits, `_`, `-`, `.`; at most 64
    /// bytes), what it does, and its arguments as a JSON Schema of an object.
    pub fn tool(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: serde_json::Value,
    ) -> Request {
        self.tools.push(ToolDefinition {
            name: name.into(),
            description: description.into(),
            parameters: parameters.to_string(),
        });
        self
    }

    /// Says whether and which tool the model should call (default: the provider's, `auto`
    /// when tools are given).
    pub fn tool_choice(mut self, choice: ToolChoice) -> Request {
        self.tool_choice = Some(choice);
        self
    }

    /// The most output tokens for this call; the host clamps it to the budget left.
    pub fn max_tokens(mut self, max_tokens: u32) -> Request {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// The sampling temperature, 0.0 to 2.0 (the host refuses others as `invalid-request`).
    pub fn temperature(mut self, temperature: f32) -> Request {
        self.temperature = Some(temperature);
        self
    }

    /// Nucleus sampling, 0.0 to 1.0 (the host refuses others as `invalid-request`).
    pub fn top_p(mut self, top_p: f32) -> Request {
        self.top_p = Some(top_p);
        self
    }

    /// Adds a sequence that ends the answer (at most 4 in all).
    pub fn stop(mut self, sequence: impl Into<String>) -> Request {
        self.stop.push(sequence.into());
        self
    }

    /// Asks for a JSON object as the answer (without a schema).
    pub fn json_object(self) -> Request {
        self.response_format(ResponseFormat::JsonObject)
    }

    /// Asks for a JSON value following `schema`, named `name` (ASCII letters, digits, `_`,
    /// `-`; at most 64 bytes). The host checks the answer against the schema and returns
    /// [`LlmError::ProviderError`] when it does not follow it. `strict` is off, so any valid
    /// JSON Schema works; for OpenAI's strict mode pass a [`JsonSchemaFormat`] with `strict`
    /// to [`Request::response_format`].
    pub fn json_schema(self, name: impl Into<String>, schema: serde_json::Value) -> Request {
        self.response_format(ResponseFormat::JsonSchema(JsonSchemaFormat {
            name: name.into(),
            schema: schema.to_string(),
            strict: false,
        }))
    }

    /// Sets the form of the answer (default: text).
    pub fn response_format(mut self, format: ResponseFormat) -> Request {
        self.response_format = Some(format);
        self
    }

    /// Sends the request: [`chat`].
    ///
    /// # Errors
    ///
    /// As [`chat`].
    pub fn send(&self) -> Result<Response, LlmError> {
        chat(self)
    }

    /// Sends the request and parses the answer as `T`: [`chat_json`].
    ///
    /// # Errors
    ///
    /// As [`chat_json`].
    pub fn send_json<T: DeserializeOwned>(&self) -> Result<(T, Response), LlmError> {
        chat_json(self)
    }
}

impl Message {
    /// A message of `role` with `text` and nothing else.
    fn text(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            content: text.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A `system` message.
    pub fn system(text: impl Into<String>) -> Message {
        Message::text(Role::System, text)
    }

    /// A `user` message.
    pub fn user(text: impl Into<String>) -> Message {
        Message::text(Role::User, text)
    }

    /// An `assistant` message without tool calls.
    pub fn assistant(text: impl Into<String>) -> Message {
        Message::text(Role::Assistant, text)
    }

    /// A `tool` message answering the call `call_id` with `content`.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            tool_call_id: Some(call_id.into()),
            ..Message::text(Role::Tool, content)
        }
    }
}

impl Role {
    /// The WIT name: `system`, `user`, `assistant` or `tool`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl FinishReason {
    /// The WIT name: `stop`, `length`, `tool-calls`, `content-filter` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool-calls",
            FinishReason::ContentFilter => "content-filter",
            FinishReason::Other => "other",
        }
    }
}

impl Response {
    /// The answer as the `assistant` message that continues the conversation: its content and
    /// its tool calls.
    pub fn to_message(&self) -> Message {
        Message {
            role: Role::Assistant,
            content: self.content.clone(),
            tool_calls: self.tool_calls.clone(),
            tool_call_id: None,
        }
    }

    /// Parses the content (JSON text) as `T`.
    ///
    /// # Errors
    ///
    /// [`LlmError::ProviderError`] naming the model, `T` and serde's message when the content
    /// is not a valid `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, LlmError> {
        serde_json::from_str(&self.content).map_err(|error| {
            LlmError::ProviderError(format!(
                "the answer of `{}` is not a valid `{}`: {error}",
                self.model,
                crate::task::short_type_name::<T>()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn answer(content: &str, tool_calls: Vec<ToolCall>) -> Response {
        Response {
            content: content.into(),
            finish_reason: if tool_calls.is_empty() {
                FinishReason::Stop
            } else {
                FinishReason::ToolCalls
            },
            tool_calls,
            model: "local/test".into(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 3,
            },
            replayed: false,
        }
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn builder_fills_every_field() {
        let request = Request::new("fast")
            .system("be brief")
            .user("hi")
            .assistant("hello")
            .tool_result("call-1", "{\"ok\":true}")
            .tool(
                "clock.now",
                "the time",
                json!({"type": "object", "properties": {}}),
            )
            .tool_choice(ToolChoice::Named("clock.now".into()))
            .max_tokens(64)
            .temperature(0.5)
            .top_p(0.9)
            .stop("END")
            .stop("STOP")
            .json_schema("answer", json!({"type": "object"}));
        let expected = Request {
            model: "fast".into(),
            messages: vec![
                Message {
                    role: Role::System,
                    content: "be brief".into(),
                    tool_calls: vec![],
                    tool_call_id: None,
                },
                Message {
                    role: Role::User,
                    content: "hi".into(),
                    tool_calls: vec![],
                    tool_call_id: None,
                },
                Message {
                    role: Role::Assistant,
                    content: "hello".into(),
                    tool_calls: vec![],
                    tool_call_id: None,
                },
                Message {
                    role: Role::Tool,
                    content: "{\"ok\":true}".into(),
                    tool_calls: vec![],
                    tool_call_id: Some("call-1".into()),
                },
            ],
            tools: vec![ToolDefinition {
                name: "clock.now".into(),
                description: "the time".into(),
                // Compared as JSON below: key order depends on serde_json's `preserve_order`,
                // which another crate of the workspace may turn on.
                parameters: request.tools[0].parameters.clone(),
            }],
            tool_choice: Some(ToolChoice::Named("clock.now".into())),
            response_format: Some(ResponseFormat::JsonSchema(JsonSchemaFormat {
                name: "answer".into(),
                schema: r#"{"type":"object"}"#.into(),
                strict: false,
            })),
            max_tokens: Some(64),
            temperature: Some(0.5),
            top_p: Some(0.9),
            stop: vec!["END".into(), "STOP".into()],
        };
        assert_eq!(request, expected);
        let parsed: Value = serde_json::from_str(&request.tools[0].parameters).unwrap();
        assert_eq!(parsed, json!({"type": "object", "properties": {}}));
    }

    #[test]
    fn new_request_has_every_default() {
        let request = Request::new("local/qwen");
        assert_eq!(request.model, "local/qwen");
        assert!(request.messages.is_empty() && request.tools.is_empty() && request.stop.is_empty());
        assert_eq!(request.tool_choice, None);
        assert_eq!(request.response_format, None);
        assert_eq!(
            (request.max_tokens, request.temperature, request.top_p),
            (None, None, None)
        );
        assert_eq!(
            Request::new("m").json_object().response_format,
            Some(ResponseFormat::JsonObject)
        );
    }

    #[test]
    fn enums_have_their_wit_names() {
        assert_eq!(FinishReason::ToolCalls.as_str(), "tool-calls");
        assert_eq!(FinishReason::ContentFilter.as_str(), "content-filter");
        assert_eq!(Role::Tool.as_str(), "tool");
        assert_eq!(answer("x", vec![]).finish_reason.as_str(), "stop");
    }

    #[test]
    fn json_answers_parse_or_name_the_type() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Verdict {
            vote: String,
        }
        let good = answer(r#" {"vote": "approve"} "#, vec![]);
        assert_eq!(
            good.json::<Verdict>().unwrap(),
            Verdict {
                vote: "approve".into()
            }
        );
        let error = answer("Sure! Here it is: {", vec![])
            .json::<Verdict>()
            .unwrap_err();
        let LlmError::ProviderError(message) = &error else {
            panic!("expected provider-error, got {error}");
        };
        assert!(
            message.starts_with("the answer of `local/test` is not a valid `Verdict`: expected"),
            "{message}"
        );
    }

    #[test]
    fn tool_loop_runs_calls_and_tells_the_model() {
        let mut sent = Vec::new();
        let mut answers = vec![
            answer(
                "",
                vec![
                    call("c1", "clock.now", ""),
                    call("c2", "fs.read", r#"{"path":"x"}"#),
                ],
            ),
            answer("It is noon.", vec![]),
        ]
        .into_iter();
        let mut tool_calls = Vec::new();
        let run = tool_loop(
            Request::new("fast")
                .user("time?")
                .tool("clock.now", "", serde_json::json!({"type": "object"}))
                .tool("fs.read", "", serde_json::json!({"type": "object"})),
            3,
            |request| {
                sent.push(request.clone());
                Ok(answers.next().expect("no more answers"))
            },
            |name, input| {
                tool_calls.push((name.to_owned(), input.to_owned()));
                match name {
                    "clock.now" => Ok(r#"{"unix_ms":1}"#.to_owned()),
                    _ => Err(ToolError::AccessDenied("fs.read is not allowed".into())),
                }
            },
        )
        .unwrap();

        assert_eq!(
            tool_calls,
            vec![
                ("clock.now".to_owned(), "{}".to_owned()),
                ("fs.read".to_owned(), r#"{"path":"x"}"#.to_owned()),
            ]
        );
        assert_eq!(sent.len(), 2);
        let second = &sent[1].messages;
        assert_eq!(second.len(), 4, "{second:?}");
        assert_eq!(second[1].role, Role::Assistant);
        assert_eq!(second[1].tool_calls.len(), 2);
        assert_eq!(second[2].role, Role::Tool);
        assert_eq!(second[2].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(second[2].content, r#"{"unix_ms":1}"#);
        assert_eq!(second[3].tool_call_id.as_deref(), Some("c2"));
        assert_eq!(second[3].content, "access-denied: fs.read is not allowed");

        assert!(run.finished());
        assert_eq!(run.response.content, "It is noon.");
        assert_eq!(run.request, sent[1]);
        assert_eq!((run.rounds, run.model_calls), (1, 2));
        assert_eq!(run.tool_results.len(), 2);
        assert_eq!(run.tool_results[1].text(), second[3].content);
        assert_eq!(
            run.usage,
            Usage {
                input_tokens: 20,
                output_tokens: 6
            }
        );
        assert!(!run.replayed);
    }

    #[test]
    fn tool_loop_stops_after_max_rounds() {
        let mut calls = 0;
        let run = tool_loop(
            Request::new("fast").user("loop forever"),
            2,
            |_| {
                calls += 1;
                Ok(Response {
                    replayed: true,
                    ..answer("", vec![call(&format!("c{calls}"), "clock.now", "{}")])
                })
            },
            |_, _| Ok("{}".to_owned()),
        )
        .unwrap();
        assert_eq!(calls, 3);
        assert_eq!((run.rounds, run.model_calls), (2, 3));
        assert!(!run.finished());
        assert_eq!(run.response.tool_calls[0].id, "c3");
        assert_eq!(run.tool_results.len(), 2);
        assert!(run.replayed);

        let once = tool_loop(
            Request::new("fast").user("x"),
            0,
            |_| Ok(answer("", vec![call("c1", "clock.now", "{}")])),
            |_, _| panic!("no tool runs with max_rounds 0"),
        )
        .unwrap();
        assert_eq!((once.rounds, once.model_calls), (0, 1));
        assert!(!once.finished());
    }

    #[test]
    fn tool_loop_ends_on_the_first_model_error() {
        let mut calls = 0;
        let error = tool_loop(
            Request::new("fast").user("x"),
            5,
            |_| {
                calls += 1;
                if calls == 1 {
                    Ok(answer("", vec![call("c1", "clock.now", "{}")]))
                } else {
                    Err(LlmError::LimitExceeded("maxLlmCalls (1) reached".into()))
                }
            },
            |_, _| Ok("{}".to_owned()),
        )
        .unwrap_err();
        assert_eq!(
            error,
            LlmError::LimitExceeded("maxLlmCalls (1) reached".into())
        );
        assert_eq!(calls, 2);
    }

    #[test]
    fn tool_loop_runs_no_tool_the_request_did_not_offer() {
        let mut answers = vec![
            answer("", vec![call("c1", "test.signal", "{}")]),
            answer("done", vec![]),
        ]
        .into_iter();
        let run = tool_loop(
            Request::new("fast").user("x").tool(
                "clock.now",
                "",
                serde_json::json!({"type": "object"}),
            ),
            3,
            |_| Ok(answers.next().expect("no more answers")),
            |name, _| panic!("{name} was not offered and must not run"),
        )
        .unwrap();
        let told = &run.request.messages[2].content;
        assert!(told.contains("was not offered"), "{told}");
    }
}
