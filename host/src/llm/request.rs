//! The host's own form of a model call and its answer (what `qi:agent/llm` carries, what the
//! wire formats encode and what recordings hold), the bounds a request must fit, and the
//! request hash recordings are keyed by.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most messages in one request.
pub const MAX_MESSAGES: usize = 1_024;
/// Most tool definitions in one request.
pub const MAX_TOOLS: usize = 128;
/// Most tool calls in one assistant message.
pub const MAX_TOOL_CALLS: usize = 128;
/// Most stop sequences (OpenAI's own bound).
pub const MAX_STOP: usize = 4;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Longest tool or schema name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest model name, in bytes.
pub const MAX_MODEL_BYTES: usize = 256;
/// Largest JSON Schema (tool parameters or response format), in bytes of JSON text.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;
/// Largest request, in bytes: every text of it together (messages, tool calls, definitions,
/// schemas).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The agent's words.
    User,
    /// The model's earlier answer.
    Assistant,
    /// A tool result.
    Tool,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// An assistant message's tool calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A tool message's call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A tool the model may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Its arguments' JSON Schema (an object).
    pub parameters: serde_json::Value,
}

/// Whether and which tool to call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool.
    None,
    /// Some tool.
    Required,
    /// This tool.
    Named(String),
}

/// The answer's form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseFormat {
    /// Text.
    Text,
    /// A JSON object.
    JsonObject,
    /// A JSON value following `schema`.
    JsonSchema {
        /// The schema's name.
        name: String,
        /// The schema.
        schema: serde_json::Value,
        /// Ask for strict adherence.
        strict: bool,
    },
}

/// One model call, as the agent asked for it (the model as it named it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Alias or `<provider>/<model>`.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Tools offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDef>,
    /// Tool choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Answer form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Most output tokens asked for (before the budget clamps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Top-p.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinishReason {
    /// Finished.
    Stop,
    /// Hit max-tokens.
    Length,
    /// Asked for tools.
    ToolCalls,
    /// Filtered.
    ContentFilter,
    /// Something else.
    Other,
}

/// Tokens a provider counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Answer tokens.
    pub output_tokens: u32,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Text (for a JSON format, the JSON text).
    pub content: String,
    /// Tool calls asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// `<provider>/<model>`.
    pub model: String,
    /// Tokens.
    pub usage: Usage,
}

fn bad(field: &str, message: impl std::fmt::Display) -> String {
    format!("request.{field}: {message}")
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl ChatRequest {
    /// Checks the request against every bound before anything is sent; `Err` names the field
    /// (`request.messages[3].content: ...`).
    pub fn check(&self) -> Result<(), String> {
        if self.model.is_empty()
            || self.model.len() > MAX_MODEL_BYTES
            || !self.model.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad(
                "model",
                format!("give 1 to {MAX_MODEL_BYTES} bytes of visible ASCII"),
            ));
        }
        if self.messages.is_empty() {
            return Err(bad("messages", "give at least one message"));
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(bad(
                "messages",
                format!("{} messages; at most {MAX_MESSAGES}", self.messages.len()),
            ));
        }
        if self.tools.len() > MAX_TOOLS {
            return Err(bad(
                "tools",
                format!("{} tools; at most {MAX_TOOLS}", self.tools.len()),
            ));
        }
        if self.stop.len() > MAX_STOP {
            return Err(bad(
                "stop",
                format!("{} sequences; at most {MAX_STOP}", self.stop.len()),
            ));
        }
        for (i, s) in self.stop.iter().enumerate() {
            if s.is_empty() || s.len() > MAX_STOP_BYTES {
                return Err(bad(
                    &format!("stop[{i}]"),
                    format!("give 1 to {MAX_STOP_BYTES} bytes"),
                ));
            }
        }
        if let Some(t) = self.temperature
            && !(t.is_finite() && (0.0..=2.0).contains(&t))
        {
            return Err(bad("temperature", format!("{t} is not in 0.0 to 2.0")));
        }
        if let Some(p) = self.top_p
            && !(p.is_finite() && (0.0..=1.0).contains(&p))
        {
            return Err(bad("top-p", format!("{p} is not in 0.0 to 1.0")));
        }
        if self.max_tokens == Some(0) {
            return Err(bad(
                "max-tokens",
                "0 tokens; give at least 1 or leave it out",
            ));
        }
        for (i, m) in self.messages.iter().enumerate() {
            if m.tool_calls.len() > MAX_TOOL_CALLS {
                return Err(bad(
                    &format!("messages[{i}].tool-calls"),
                    format!("{} calls; at most {MAX_TOOL_CALLS}", m.tool_calls.len()),
                ));
            }
            if !m.tool_calls.is_empty() && m.role != Role::Assistant {
                return Err(bad(
                    &format!("messages[{i}].tool-calls"),
                    "only an assistant message has tool calls",
                ));
            }
            match (m.role, &m.tool_call_id) {
                (Role::Tool, None) => {
                    return Err(bad(
                        &format!("messages[{i}].tool-call-id"),
                        "a tool message names the call it answers",
                    ));
                }
                (r, Some(_)) if r != Role::Tool => {
                    return Err(bad(
                        &format!("messages[{i}].tool-call-id"),
                        "only a tool message answers a call",
                    ));
                }
                _ => {}
            }
            for (j, c) in m.tool_calls.iter().enumerate() {
                if !name_ok(&c.name) {
                    return Err(bad(
                        &format!("messages[{i}].tool-calls[{j}].name"),
                        "use 1 to 64 of ASCII letters, digits, `_`, `-`, `.`",
                    ));
                }
            }
        }
        for (i, t) in self.tools.iter().enumerate() {
            if !name_ok(&t.name) {
                return Err(bad(
                    &format!("tools[{i}].name"),
                    format!(
                        "`{}`: use 1 to 64 of ASCII letters, digits, `_`, `-`, `.`",
                        t.name
                    ),
                ));
            }
            if !t.parameters.is_object() {
                return Err(bad(
                    &format!("tools[{i}].parameters"),
                    "must be a JSON Schema object",
                ));
            }
        }
        if let Some(ToolChoice::Named(n)) = &self.tool_choice
            && !self.tools.iter().any(|t| &t.name == n)
        {
            return Err(bad(
                "tool-choice",
                format!("names `{n}`, which is not one of the request's tools"),
            ));
        }
        if let Some(ResponseFormat::JsonSchema { name, schema, .. }) = &self.response_format {
            if !name_ok(name) || name.contains('.') {
                return Err(bad(
                    "response-format.name",
                    "use 1 to 64 of ASCII letters, digits, `_`, `-`",
                ));
            }
            super::schema::compile(schema).map_err(|e| bad("response-format.schema", e))?;
        }
        let size = self.size();
        if size > MAX_REQUEST_BYTES {
            return Err(bad(
                "messages",
                format!("the request holds {size} bytes; at most {MAX_REQUEST_BYTES}"),
            ));
        }
        Ok(())
    }

    /// The bytes of every text of the request together.
    pub fn size(&self) -> usize {
        let messages: usize = self
            .messages
            .iter()
            .map(|m| {
                m.content.len()
                    + m.tool_call_id.as_ref().map_or(0, String::len)
                    + m.tool_calls
                        .iter()
                        .map(|c| c.id.len() + c.name.len() + c.arguments.len())
                        .sum::<usize>()
            })
            .sum();
        let tools: usize = self
            .tools
            .iter()
            .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
            .sum();
        let format = match &self.response_format {
            Some(ResponseFormat::JsonSchema { schema, .. }) => schema.to_string().len(),
            _ => 0,
        };
        messages + tools + format + self.stop.iter().map(String::len).sum::<usize>()
    }

    /// The hash recordings are keyed by: SHA-256 (hex) of the request as sent to `model_id`
    /// (the alias resolved), with `max-tokens` as the agent asked for it, not as the budget
    /// clamped it.
    pub fn hash(&self, model_id: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"qi-host llm request v1\n");
        h.update(model_id.as_bytes());
        h.update(b"\n");
        let mut body = self.clone();
        body.model = String::new();
        h.update(serde_json::to_vec(&body).unwrap_or_default());
        hex::encode(h.finalize())
    }

    /// A short description for messages: the model and the start of the last user message.
    pub fn describe(&self, hash: &str) -> String {
        let last = self
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or("");
        let mut cut: String = last.chars().take(60).collect();
        if cut.len() < last.len() {
            cut.push('…');
        }
        format!(
            "request {} to `{}` (last user message: {cut:?})",
            &hash[..16.min(hash.len())],
            self.model
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ChatRequest {
        ChatRequest {
            model: "fast".into(),
            messages: vec![Message {
                role: Role::User,
                content: "hi".into(),
                tool_calls: vec![],
                tool_call_id: None,
            }],
            tools: vec![],
            tool_choice: None,
            response_format: None,
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop: vec![],
        }
    }

    #[test]
    fn the_hash_follows_the_resolved_model_and_the_content() {
        let r = request();
        assert_eq!(r.hash("a/m"), r.hash("a/m"));
        assert_ne!(r.hash("a/m"), r.hash("a/n"));
        let mut other = r.clone();
        other.messages[0].content = "hi!".into();
        assert_ne!(r.hash("a/m"), other.hash("a/m"));
        // The alias the agent used does not matter, only what it resolves to.
        let mut alias = r.clone();
        alias.model = "a/m".into();
        assert_eq!(r.hash("a/m"), alias.hash("a/m"));
    }

    #[test]
    fn bounds_hold_at_their_edges() {
        let mut r = request();
        r.stop = vec!["x".into(); MAX_STOP];
        assert!(r.check().is_ok());
        r.stop.push("x".into());
        assert!(r.check().unwrap_err().contains("request.stop"));
        let mut r = request();
        r.messages = vec![r.messages[0].clone(); MAX_MESSAGES];
        assert!(r.check().is_ok());
        r.messages.push(r.messages[0].clone());
        assert!(r.check().unwrap_err().contains("request.messages"));
        let mut r = request();
        r.messages[0].content = "x".repeat(MAX_REQUEST_BYTES);
        assert!(r.check().is_ok());
        r.messages[0].content.push('x');
        assert!(r.check().unwrap_err().contains("bytes"));
        let mut r = request();
        r.temperature = Some(2.0);
        assert!(r.check().is_ok());
        r.temperature = Some(2.01);
        assert!(r.check().unwrap_err().contains("temperature"));
        r.temperature = Some(f32::NAN);
        assert!(r.check().is_err());
    }

    #[test]
    fn a_tool_message_names_its_call() {
        let mut r = request();
        r.messages[0].role = Role::Tool;
        assert!(r.check().unwrap_err().contains("tool-call-id"));
        r.messages[0].tool_call_id = Some("c1".into());
        assert!(r.check().is_ok());
    }
}
