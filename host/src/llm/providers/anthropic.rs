//! Anthropic Messages: <https://docs.anthropic.com/en/api/messages>.
//!
//! System messages become the `system` field (joined by blank lines); a `tool` message becomes
//! a user turn with a `tool_result` block; consecutive turns of one role are merged. Anthropic
//! has no response format: a JSON answer is asked for as a forced call of a tool named after the
//! schema (`json_object` for a plain object) whose input schema is the requested one, and that
//! call's input is the answer's content.

use crate::llm::request::{
    ChatRequest, ChatResponse, FinishReason, ResponseFormat, Role, ToolCall, ToolChoice,
};
use serde_json::{Map, Value, json};

/// The version header every request carries.
pub const VERSION: &str = "2023-06-01";

/// The tool a JSON answer is asked for through, with its schema, if the request asks for one.
fn answer_tool(request: &ChatRequest) -> Option<(String, Value)> {
    match &request.response_format {
        Some(ResponseFormat::JsonSchema { name, schema, .. }) => {
            Some((name.clone(), schema.clone()))
        }
        Some(ResponseFormat::JsonObject) => Some(("json_object".into(), json!({"type": "object"}))),
        _ => None,
    }
}

/// The request body. `Err` when an assistant tool call's arguments are not a JSON object
/// (Anthropic carries them as an object).
pub fn encode(request: &ChatRequest, model: &str, max_tokens: u32) -> Result<Value, String> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in request.messages.iter().enumerate() {
        let (role, blocks) = match m.role {
            Role::System => {
                system.push(m.content.clone());
                continue;
            }
            Role::User => ("user", vec![json!({"type": "text", "text": m.content})]),
            Role::Tool => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                    "content": m.content,
                })],
            ),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                for (j, c) in m.tool_calls.iter().enumerate() {
                    let input: Value = serde_json::from_str(&c.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .ok_or_else(|| {
                            format!(
                                "request.messages[{i}].tool-calls[{j}].arguments: not a JSON \
                                 object, which Anthropic needs"
                            )
                        })?;
                    blocks.push(json!({
                        "type": "tool_use", "id": c.id, "name": c.name, "input": input,
                    }));
                }
                ("assistant", blocks)
            }
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("max_tokens".into(), max_tokens.into());
    body.insert("messages".into(), messages.into());
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    if let Some(t) = request.temperature {
        // Anthropic's range is 0 to 1.
        body.insert("temperature".into(), json!(t.min(1.0)));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    let mut tools: Vec<Value> = request
        .tools
        .iter()
        .map(
            |t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}),
        )
        .collect();
    let mut choice = request.tool_choice.as_ref().map(|c| match c {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Named(n) => json!({"type": "tool", "name": n}),
    });
    if let Some((name, schema)) = answer_tool(request) {
        tools.push(json!({
            "name": name,
            "description": "Give your answer as this tool's input.",
            "input_schema": schema,
        }));
        choice = Some(json!({"type": "tool", "name": name}));
    }
    if !tools.is_empty() {
        body.insert("tools".into(), tools.into());
    }
    if let Some(c) = choice {
        body.insert("tool_choice".into(), c);
    }
    Ok(Value::Object(body))
}

/// The answer in `body` to `request`.
pub fn decode(request: &ChatRequest, provider: &str, body: &Value) -> Result<ChatResponse, String> {
    let blocks = body
        .get("content")
        .and_then(Value::as_array)
        .ok_or("it has no `content` list")?;
    if blocks.len() > crate::llm::request::MAX_TOOL_CALLS + 16 {
        return Err(format!("it has {} content blocks", blocks.len()));
    }
    let answer_tool = answer_tool(request).map(|(n, _)| n);
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    let mut answered_by_tool = false;
    for (i, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => content.push_str(
                b.get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("its `content[{i}]` has no `text`"))?,
            ),
            Some("tool_use") => {
                let field = |p: &str| {
                    b.get(p)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| format!("its `content[{i}]` has no `{p}`"))
                };
                let name = field("name")?;
                let input = b
                    .get("input")
                    .ok_or_else(|| format!("its `content[{i}]` has no `input`"))?;
                if answer_tool.as_deref() == Some(name.as_str()) {
                    content = input.to_string();
                    answered_by_tool = true;
                } else {
                    tool_calls.push(ToolCall {
                        id: field("id")?,
                        name,
                        arguments: input.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
    if tool_calls.len() > crate::llm::request::MAX_TOOL_CALLS {
        return Err(format!(
            "it asks for {} tool calls; a request may carry {}",
            tool_calls.len(),
            crate::llm::request::MAX_TOOL_CALLS
        ));
    }
    let finish_reason = match body.get("stop_reason").and_then(Value::as_str) {
        _ if answered_by_tool && tool_calls.is_empty() => FinishReason::Stop,
        Some("end_turn" | "stop_sequence") => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    };
    super::answer(
        body,
        provider,
        ("input_tokens", "output_tokens"),
        content,
        tool_calls,
        finish_reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::request::Message;

    fn msg(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
        }
    }

    #[test]
    fn system_moves_out_and_tool_results_become_user_turns() {
        let mut tool = msg(Role::Tool, "42");
        tool.tool_call_id = Some("t1".into());
        let mut asked = msg(Role::Assistant, "");
        asked.tool_calls.push(ToolCall {
            id: "t1".into(),
            name: "calc".into(),
            arguments: r#"{"x":1}"#.into(),
        });
        let r = ChatRequest {
            model: "m".into(),
            messages: vec![
                msg(Role::System, "rules"),
                msg(Role::User, "q"),
                asked,
                tool,
                msg(Role::User, "and?"),
            ],
            tools: vec![],
            tool_choice: None,
            response_format: Some(ResponseFormat::JsonSchema {
                name: "verdict".into(),
                schema: json!({"type": "object"}),
                strict: false,
            }),
            max_tokens: None,
            temperature: Some(1.5),
            top_p: None,
            stop: vec![],
        };
        let b = encode(&r, "claude", 50).unwrap();
        assert_eq!(b["system"], "rules");
        assert_eq!(b["temperature"], 1.0);
        let turns = b["messages"].as_array().unwrap();
        assert_eq!(turns.len(), 3, "{b}");
        assert_eq!(turns[1]["content"][0]["input"]["x"], 1);
        assert_eq!(turns[2]["content"][0]["type"], "tool_result");
        assert_eq!(turns[2]["content"][1]["text"], "and?");
        assert_eq!(b["tool_choice"]["name"], "verdict");
        let answer = json!({
            "model": "claude", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "x", "name": "verdict", "input": {"vote": "approve"}}],
            "usage": {"input_tokens": 9, "output_tokens": 4},
        });
        let a = decode(&r, "anth", &answer).unwrap();
        assert_eq!(a.content, r#"{"vote":"approve"}"#);
        assert!(a.tool_calls.is_empty());
        assert_eq!(a.finish_reason, FinishReason::Stop);
    }

    #[test]
    fn tool_arguments_that_are_not_an_object_are_refused() {
        let mut asked = msg(Role::Assistant, "");
        asked.tool_calls.push(ToolCall {
            id: "t".into(),
            name: "n".into(),
            arguments: "[1]".into(),
        });
        let r = ChatRequest {
            model: "m".into(),
            messages: vec![asked],
            tools: vec![],
            tool_choice: None,
            response_format: None,
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop: vec![],
        };
        assert!(encode(&r, "m", 1).unwrap_err().contains("arguments"));
    }
}
