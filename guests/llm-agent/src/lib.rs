//! `llm-agent`: makes the model calls its input describes, in order, and reports every answer
//! and every error, so the host's tests can check the model broker end to end (grants,
//! budgets, tool calls, JSON Schema answers, record and replay).
//!
//! Input (`inputs` of a coordinated subtask are read the same way):
//!
//! ```json
//! {"calls": [{"model": "fast", "system": "...", "prompt": "...", "maxTokens": 64,
//!             "temperature": 0.2, "topP": 0.9, "stop": ["END"], "json_schema": {...},
//!             "tools": [{"name": "clock.now", "description": "...", "parameters": {...}}],
//!             "tool_choice": "auto" | "none" | "required" | "<tool name>", "tool_loop": 3}],
//!  "stop_on_error": false}
//! ```
//!
//! Only `model` is required in a call. `system` and `prompt` become a `system` and a `user`
//! message (a call with neither sends no message, which the host refuses as
//! `invalid-request`). `maxTokens`, `temperature`, `topP`, `tool_choice` and `tool_loop` are
//! also accepted in snake/camel case (`max_tokens`, `top_p`, `toolChoice`, `toolLoop`,
//! `jsonSchema`, `stopOnError`). A tool's `description` defaults to empty and its
//! `parameters` to an object schema without properties.
//!
//! Each call is one model call, except that with `tool_loop` N it runs the SDK's tool loop
//! (`llm::run_tools`, at most N rounds; the model's tool calls run as qi tool calls, e.g. the
//! built-in `clock.now`). With `json_schema` the answer must follow that schema (named
//! `answer`) and is parsed as JSON (`llm::chat_json`).
//!
//! Output:
//!
//! ```json
//! {"results": [
//!    {"ok": true, "index": 0, "content": "...", "json": <parsed answer, with json_schema>,
//!     "tool_calls": [{"id", "name", "arguments"}], "finish_reason": "stop", "model": "p/m",
//!     "input_tokens": n, "output_tokens": n, "replayed": false,
//!     "rounds": n, "model_calls": n, "finished": true,
//!     "tool_results": [{"id", "name", "arguments", "ok", "output" | "error"}]},
//!    {"ok": false, "index": 1, "error_kind": "limit-exceeded", "message": "...",
//!     "retry_after_ms": n}],
//!  "models": ["<what llm::models() lists>"]}
//! ```
//!
//! `rounds`, `model_calls`, `finished` and `tool_results` come only with `tool_loop`; then the
//! tokens are those of the whole loop, `replayed` is true only if every answer of the loop
//! was, and `tool_calls` are those of the last answer (not run when `finished` is false).
//! `retry_after_ms` comes only with `rate-limited`; `message` is the error's text without its
//! kind. With `stop_on_error` the calls stop after the first error. A model error never fails
//! the task; only input that is not the above is `invalid-input`.

use qi_guest_sdk::llm::{self, LlmError, Request, Response, ToolChoice, ToolLoop};
use qi_guest_sdk::serde_json::{self, Map, Value, json};
use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};
use serde::Deserialize;

/// The `llm-agent` agent.
pub struct LlmAgent;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    calls: Vec<Call>,
    #[serde(default, alias = "stopOnError")]
    stop_on_error: bool,
}

/// One entry of `calls`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Call {
    model: String,
    system: Option<String>,
    prompt: Option<String>,
    #[serde(rename = "maxTokens", alias = "max_tokens")]
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    #[serde(rename = "topP", alias = "top_p")]
    top_p: Option<f32>,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(alias = "jsonSchema")]
    json_schema: Option<Value>,
    #[serde(default)]
    tools: Vec<ToolSpec>,
    #[serde(alias = "toolChoice")]
    tool_choice: Option<String>,
    #[serde(alias = "toolLoop")]
    tool_loop: Option<u32>,
}

/// A tool offered to the model.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolSpec {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "empty_object_schema")]
    parameters: Value,
}

fn empty_object_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

impl Call {
    fn request(&self) -> Request {
        let mut request = Request::new(&self.model);
        if let Some(system) = &self.system {
            request = request.system(system);
        }
        if let Some(prompt) = &self.prompt {
            request = request.user(prompt);
        }
        for tool in &self.tools {
            request = request.tool(&tool.name, &tool.description, tool.parameters.clone());
        }
        if let Some(choice) = &self.tool_choice {
            request = request.tool_choice(match choice.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                name => ToolChoice::Named(name.to_owned()),
            });
        }
        if let Some(max_tokens) = self.max_tokens {
            request = request.max_tokens(max_tokens);
        }
        if let Some(temperature) = self.temperature {
            request = request.temperature(temperature);
        }
        if let Some(top_p) = self.top_p {
            request = request.top_p(top_p);
        }
        for sequence in &self.stop {
            request = request.stop(sequence);
        }
        if let Some(schema) = &self.json_schema {
            request = request.json_schema("answer", schema.clone());
        }
        request
    }

    /// Makes the call; the result's JSON on success.
    fn run(&self) -> Result<Map<String, Value>, LlmError> {
        let request = self.request();
        match self.tool_loop {
            Some(max_rounds) => {
                let run = llm::run_tools(request, max_rounds)?;
                let parsed = match self.json_schema {
                    Some(_) => Some(run.response.json::<Value>()?),
                    None => None,
                };
                Ok(loop_result(&run, parsed))
            }
            None if self.json_schema.is_some() => {
                let (parsed, response) = llm::chat_json::<Value>(&request)?;
                Ok(answer_result(&response, Some(parsed)))
            }
            None => Ok(answer_result(&request.send()?, None)),
        }
    }
}

/// What one answer says.
fn answer_result(response: &Response, parsed: Option<Value>) -> Map<String, Value> {
    let tool_calls: Vec<Value> = response
        .tool_calls
        .iter()
        .map(|call| json!({"id": call.id, "name": call.name, "arguments": call.arguments}))
        .collect();
    let mut result = Map::new();
    result.insert("ok".into(), json!(true));
    result.insert("content".into(), json!(response.content));
    if let Some(parsed) = parsed {
        result.insert("json".into(), parsed);
    }
    result.insert("tool_calls".into(), json!(tool_calls));
    result.insert(
        "finish_reason".into(),
        json!(response.finish_reason.as_str()),
    );
    result.insert("model".into(), json!(response.model));
    result.insert("input_tokens".into(), json!(response.usage.input_tokens));
    result.insert("output_tokens".into(), json!(response.usage.output_tokens));
    result.insert("replayed".into(), json!(response.replayed));
    result
}

/// What a tool loop did: its last answer, with the loop's totals.
fn loop_result(run: &ToolLoop, parsed: Option<Value>) -> Map<String, Value> {
    let mut result = answer_result(&run.response, parsed);
    result.insert("input_tokens".into(), json!(run.usage.input_tokens));
    result.insert("output_tokens".into(), json!(run.usage.output_tokens));
    result.insert("replayed".into(), json!(run.replayed));
    result.insert("rounds".into(), json!(run.rounds));
    result.insert("model_calls".into(), json!(run.model_calls));
    result.insert("finished".into(), json!(run.finished()));
    let tool_results: Vec<Value> = run
        .tool_results
        .iter()
        .map(|tool| {
            let mut entry = json!({
                "id": tool.call.id,
                "name": tool.call.name,
                "arguments": tool.call.arguments,
                "ok": tool.output.is_ok(),
            });
            match &tool.output {
                Ok(output) => entry["output"] = json!(output),
                Err(error) => entry["error"] = json!(error.to_string()),
            }
            entry
        })
        .collect();
    result.insert("tool_results".into(), json!(tool_results));
    result
}

fn error_result(error: &LlmError) -> Map<String, Value> {
    let mut result = Map::new();
    result.insert("ok".into(), json!(false));
    result.insert("error_kind".into(), json!(error.kind()));
    let message = match error {
        LlmError::RateLimited(limit) => limit.message.clone(),
        other => other.message().into_owned(),
    };
    result.insert("message".into(), json!(message));
    if let Some(wait) = error.retry_after() {
        result.insert(
            "retry_after_ms".into(),
            json!(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    result
}

/// The input: the task's, or the `inputs` of a coordinated subtask.
fn parse_input(task: &Task) -> Result<Input, AgentError> {
    let value = task.input_value();
    let value = match value.get("inputs") {
        Some(inputs) if inputs.get("calls").is_some() => inputs.clone(),
        _ => value,
    };
    serde_json::from_value(value).map_err(|error| {
        AgentError::InvalidInput(format!(
            "expected {{\"calls\": [{{\"model\": ..., \"prompt\": ..., ...}}], \
             \"stop_on_error\": bool}}: {error}"
        ))
    })
}

impl Agent for LlmAgent {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "llm-agent".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["llm".into()],
            description: "Makes the model calls its input lists and reports every answer and \
                          error."
                .into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input = parse_input(&task)?;
        let mut results = Vec::with_capacity(input.calls.len());
        for (index, call) in input.calls.iter().enumerate() {
            let outcome = call.run();
            let failed = outcome.is_err();
            let mut result = match outcome {
                Ok(result) => {
                    log::info!(
                        task_id = task.id, index = index, model = call.model;
                        "model call {index} answered"
                    );
                    result
                }
                Err(error) => {
                    log::warn!(
                        task_id = task.id, index = index, model = call.model;
                        "model call {index} failed: {error}"
                    );
                    error_result(&error)
                }
            };
            result.insert("index".into(), json!(index));
            results.push(Value::Object(result));
            if failed && input.stop_on_error {
                break;
            }
        }
        TaskOutput::json(&json!({ "results": results, "models": llm::models() }))
    }
}

qi_guest_sdk::export_agent!(LlmAgent);

#[cfg(test)]
mod tests {
    use super::*;
    use qi_guest_sdk::llm::{ResponseFormat, Role};

    fn task(input: Value) -> Task {
        Task {
            id: "t".into(),
            description: "test".into(),
            input: input.to_string(),
        }
    }

    #[test]
    fn calls_become_requests() {
        let input: Input = serde_json::from_value(json!({
            "calls": [{
                "model": "fast",
                "system": "be brief",
                "prompt": "time?",
                "maxTokens": 32,
                "temperature": 0.5,
                "top_p": 0.9,
                "stop": ["END"],
                "json_schema": {"type": "object"},
                "tools": [{"name": "clock.now"}],
                "tool_choice": "clock.now",
                "toolLoop": 2,
            }],
            "stopOnError": true,
        }))
        .unwrap();
        assert!(input.stop_on_error);
        let call = &input.calls[0];
        assert_eq!(call.tool_loop, Some(2));
        let request = call.request();
        assert_eq!(request.model, "fast");
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::System, Role::User]);
        assert_eq!(request.max_tokens, Some(32));
        assert_eq!(request.temperature, Some(0.5));
        assert_eq!(request.top_p, Some(0.9));
        assert_eq!(request.stop, vec!["END"]);
        assert_eq!(request.tools[0].name, "clock.now");
        assert_eq!(
            serde_json::from_str::<Value>(&request.tools[0].parameters).unwrap(),
            empty_object_schema()
        );
        assert_eq!(
            request.tool_choice,
            Some(ToolChoice::Named("clock.now".into()))
        );
        assert!(matches!(
            request.response_format,
            Some(ResponseFormat::JsonSchema(_))
        ));
    }

    #[test]
    fn subtask_inputs_are_read_too() {
        let input = parse_input(&task(json!({
            "subtask": "ask",
            "attempt": 1,
            "inputs": {"calls": [{"model": "fast", "prompt": "hi"}]},
            "config": null,
        })))
        .unwrap();
        assert_eq!(input.calls.len(), 1);
        assert!(!input.stop_on_error);
    }

    #[test]
    fn bad_input_is_invalid_input() {
        for bad in [
            json!(null),
            json!({}),
            json!({"calls": [{"prompt": "no model"}]}),
            json!({"calls": [{"model": "m", "max_tokenz": 1}]}),
            json!({"calls": [], "extra": 1}),
        ] {
            let error = parse_input(&task(bad.clone())).err();
            assert!(
                matches!(error, Some(AgentError::InvalidInput(_))),
                "{bad}: {error:?}"
            );
        }
    }

    #[test]
    fn errors_report_kind_message_and_wait() {
        let result = error_result(&LlmError::RateLimited(llm::RateLimit {
            retry_after_ms: 1500,
            message: "429".into(),
        }));
        assert_eq!(
            Value::Object(result),
            json!({"ok": false, "error_kind": "rate-limited", "message": "429",
                   "retry_after_ms": 1500})
        );
        let result = error_result(&LlmError::LimitExceeded("maxLlmCalls (1) reached".into()));
        assert_eq!(
            Value::Object(result),
            json!({"ok": false, "error_kind": "limit-exceeded",
                   "message": "maxLlmCalls (1) reached"})
        );
    }
}
