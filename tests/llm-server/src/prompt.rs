//! What the default reply and computed usage take from a request.

use serde_json::Value;

use crate::schema::minimal_value;
use crate::wire::{Answer, Finish, Format};

/// The parts of a chat request that shape the default reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prompt {
    /// Bytes of every text in the request: the Anthropic `system` prompt, and every message's
    /// text (string content, `text` parts or blocks, and the text of Anthropic `tool_result`s).
    text_bytes: usize,
    /// The text of the last `user` message that has text (Anthropic user turns that only carry
    /// tool results are skipped); empty when there is none.
    last_user_text: String,
    /// OpenAI `max_completion_tokens`, else `max_tokens`; Anthropic `max_tokens`.
    max_tokens: Option<u64>,
    default_reply: DefaultReply,
}

/// What the default reply answers.
#[derive(Debug, Clone, PartialEq)]
enum DefaultReply {
    /// `"echo: <last user text>"`.
    Echo,
    /// This value as JSON text (OpenAI `response_format` of type `json_schema` or `json_object`).
    JsonText(Value),
    /// A call of this tool with this input (an Anthropic `tool_choice` forcing a tool that has an
    /// `input_schema`: how the host asks Anthropic for structured output).
    ForcedTool(String, Value),
}

impl Prompt {
    /// Reads `request`, a JSON body in `format`. Fields that are missing or of another type are
    /// taken as absent: the server answers whatever it is sent.
    pub(crate) fn read(format: Format, request: &Value) -> Prompt {
        let mut texts = Vec::new();
        if format == Format::Anthropic {
            push_texts(&request["system"], false, &mut texts);
        }
        let mut last_user_text = String::new();
        for message in request["messages"].as_array().into_iter().flatten() {
            push_texts(&message["content"], true, &mut texts);
            if message["role"] == "user" {
                let mut own = Vec::new();
                push_texts(&message["content"], false, &mut own);
                if !own.is_empty() {
                    last_user_text = own.join("\n");
                }
            }
        }
        let max_tokens = match format {
            Format::OpenAi => request["max_completion_tokens"]
                .as_u64()
                .or_else(|| request["max_tokens"].as_u64()),
            Format::Anthropic => request["max_tokens"].as_u64(),
        };
        let default_reply = match format {
            Format::OpenAi => openai_structured_output(request),
            Format::Anthropic => anthropic_forced_tool(request),
        };
        Prompt {
            text_bytes: texts.iter().map(|text| text.len()).sum(),
            last_user_text,
            max_tokens,
            default_reply: default_reply.unwrap_or(DefaultReply::Echo),
        }
    }

    /// `1 + text_bytes / 4`, the default reply's `input_tokens`.
    pub(crate) fn input_tokens(&self) -> u32 {
        u32::try_from(self.text_bytes / 4)
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// A text answer with computed usage: `output_tokens` is the word count of `content`.
    pub(crate) fn text_answer(&self, content: String, finish: Finish) -> Answer {
        Answer {
            output_tokens: word_count(&content),
            text: Some(content),
            tool_calls: Vec::new(),
            finish,
            input_tokens: self.input_tokens(),
        }
    }

    /// The answer when the script is empty (see the crate documentation).
    pub(crate) fn default_answer(&self) -> Answer {
        let content = match &self.default_reply {
            DefaultReply::ForcedTool(name, input) => {
                return Answer {
                    text: None,
                    output_tokens: word_count(&input.to_string()),
                    tool_calls: vec![(name.clone(), input.clone())],
                    finish: Finish::ToolCalls,
                    input_tokens: self.input_tokens(),
                };
            }
            DefaultReply::JsonText(value) => value.to_string(),
            DefaultReply::Echo => format!("echo: {}", self.last_user_text),
        };
        let words = content.split_whitespace();
        match self.max_tokens {
            Some(max) if max < words.clone().count() as u64 => {
                let kept: Vec<&str> = words.take(max as usize).collect();
                let mut answer = self.text_answer(kept.join(" "), Finish::Length);
                answer.output_tokens = u32::try_from(max).unwrap_or(u32::MAX);
                answer
            }
            _ => self.text_answer(content, Finish::Stop),
        }
    }
}

/// Whitespace-separated words of `text`, the unit of computed `output_tokens`.
fn word_count(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

/// Appends the texts of a message's `content` (a string, or an array of OpenAI parts or Anthropic
/// blocks) to `texts`; with `with_tool_results`, also those inside Anthropic `tool_result` blocks.
fn push_texts<'a>(content: &'a Value, with_tool_results: bool, texts: &mut Vec<&'a str>) {
    match content {
        Value::String(text) => texts.push(text),
        Value::Array(blocks) => {
            for block in blocks {
                match block["type"].as_str() {
                    Some("text") => texts.extend(block["text"].as_str()),
                    Some("tool_result") if with_tool_results => {
                        push_texts(&block["content"], false, texts);
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// OpenAI `response_format`: a JSON Schema, or any JSON object.
fn openai_structured_output(request: &Value) -> Option<DefaultReply> {
    let response_format = &request["response_format"];
    match response_format["type"].as_str()? {
        "json_schema" => Some(DefaultReply::JsonText(minimal_value(
            &response_format["json_schema"]["schema"],
        ))),
        "json_object" => Some(DefaultReply::JsonText(Value::Object(Default::default()))),
        _ => None,
    }
}

/// Anthropic `tool_choice: {"type": "tool", "name": N}` where tool `N` has an `input_schema`.
fn anthropic_forced_tool(request: &Value) -> Option<DefaultReply> {
    let choice = &request["tool_choice"];
    if choice["type"] != "tool" {
        return None;
    }
    let name = choice["name"].as_str()?;
    let tool = request["tools"]
        .as_array()?
        .iter()
        .find(|tool| tool["name"] == name)?;
    let schema = tool.get("input_schema")?;
    Some(DefaultReply::ForcedTool(
        name.to_owned(),
        minimal_value(schema),
    ))
}
