//! OpenAI Chat Completions: <https://platform.openai.com/docs/api-reference/chat>.

use crate::llm::request::{
    ChatRequest, ChatResponse, FinishReason, ResponseFormat, Role, ToolCall, ToolChoice,
};
use serde_json::{Map, Value, json};

/// The request body.
pub fn encode(request: &ChatRequest, model: &str, max_tokens: u32) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| match m.role {
            Role::Tool => json!({
                "role": "tool",
                "tool_call_id": m.tool_call_id.clone().unwrap_or_default(),
                "content": m.content,
            }),
            Role::Assistant if !m.tool_calls.is_empty() => json!({
                "role": "assistant",
                "content": if m.content.is_empty() { Value::Null } else { Value::from(m.content.clone()) },
                "tool_calls": m.tool_calls.iter().map(|c| json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })).collect::<Vec<_>>(),
            }),
            role => json!({
                "role": match role {
                    Role::System => "system",
                    Role::User => "user",
                    _ => "assistant",
                },
                "content": m.content,
            }),
        })
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), messages.into());
    body.insert("max_tokens".into(), max_tokens.into());
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                })
            })
            .collect();
        body.insert("tools".into(), tools.into());
    }
    if let Some(choice) = &request.tool_choice {
        let v = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Named(n) => json!({"type": "function", "function": {"name": n}}),
        };
        body.insert("tool_choice".into(), v);
    }
    match &request.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        }) => {
            body.insert(
                "response_format".into(),
                json!({
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": schema, "strict": strict},
                }),
            );
        }
    }
    Value::Object(body)
}

/// The answer in `body`; `provider` prefixes the model that answered.
pub fn decode(provider: &str, body: &Value) -> Result<ChatResponse, String> {
    let choice = body.pointer("/choices/0").ok_or("it has no `choices[0]`")?;
    let message = choice
        .get("message")
        .ok_or("its `choices[0]` has no `message`")?;
    let content = match message.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("its `message.content` is not text".into()),
    };
    let mut tool_calls = Vec::new();
    if let Some(calls) = message.get("tool_calls").filter(|v| !v.is_null()) {
        let calls = calls.as_array().ok_or("its `tool_calls` is not a list")?;
        if calls.len() > crate::llm::request::MAX_TOOL_CALLS {
            return Err(format!("it asks for {} tool calls", calls.len()));
        }
        for (i, c) in calls.iter().enumerate() {
            let text = |p: &str| {
                c.pointer(p)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| format!("its `tool_calls[{i}]` has no `{p}`"))
            };
            tool_calls.push(ToolCall {
                id: text("/id")?,
                name: text("/function/name")?,
                arguments: text("/function/arguments")?,
            });
        }
    }
    let finish_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("stop") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("content_filter") => FinishReason::ContentFilter,
        _ if !tool_calls.is_empty() => FinishReason::ToolCalls,
        _ => FinishReason::Other,
    };
    super::answer(
        body,
        provider,
        ("prompt_tokens", "completion_tokens"),
        content,
        tool_calls,
        finish_reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::request::{Message, ToolDef};

    #[test]
    fn a_request_with_tools_and_a_schema_encodes_as_openai_documents_it() {
        let r = ChatRequest {
            model: "fast".into(),
            messages: vec![
                Message {
                    role: Role::System,
                    content: "be brief".into(),
                    tool_calls: vec![],
                    tool_call_id: None,
                },
                Message {
                    role: Role::Assistant,
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "clock.now".into(),
                        arguments: "{}".into(),
                    }],
                    tool_call_id: None,
                },
                Message {
                    role: Role::Tool,
                    content: "12:00".into(),
                    tool_calls: vec![],
                    tool_call_id: Some("c1".into()),
                },
            ],
            tools: vec![ToolDef {
                name: "clock.now".into(),
                description: "time".into(),
                parameters: json!({"type": "object"}),
            }],
            tool_choice: Some(ToolChoice::Named("clock.now".into())),
            response_format: Some(ResponseFormat::JsonSchema {
                name: "v".into(),
                schema: json!({"type": "object"}),
                strict: true,
            }),
            max_tokens: None,
            temperature: Some(0.5),
            top_p: None,
            stop: vec!["END".into()],
        };
        let b = encode(&r, "qwen", 100);
        assert_eq!(b["model"], "qwen");
        assert_eq!(b["max_tokens"], 100);
        assert_eq!(b["messages"][1]["content"], Value::Null);
        assert_eq!(
            b["messages"][1]["tool_calls"][0]["function"]["name"],
            "clock.now"
        );
        assert_eq!(b["messages"][2]["tool_call_id"], "c1");
        assert_eq!(b["tool_choice"]["function"]["name"], "clock.now");
        assert_eq!(b["response_format"]["json_schema"]["strict"], true);
        assert_eq!(b["stop"][0], "END");
    }

    #[test]
    fn an_answer_decodes_and_a_missing_usage_is_refused() {
        let body = json!({
            "model": "qwen",
            "choices": [{"message": {"content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "t", "arguments": "{}"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3},
        });
        let a = decode("local", &body).unwrap();
        assert_eq!(a.model, "local/qwen");
        assert_eq!(a.finish_reason, FinishReason::ToolCalls);
        assert_eq!(a.usage.output_tokens, 3);
        let mut no_usage = body.clone();
        no_usage.as_object_mut().unwrap().remove("usage");
        assert!(decode("local", &no_usage).unwrap_err().contains("usage"));
    }
}
