//! `ai-reviewer`: the `reviewer` of a coordinated code review, with the verdict from a model.
//! It sends the `analyzer` findings to a model the host brokers, asks for a verdict that
//! follows a JSON Schema, and votes it at a decision point exactly as `reviewer` does, so AI
//! and rule-based reviewers can sit on the same decision.
//!
//! Input: the subtask input of a coordinated run ([`SubtaskInput`]), as for `reviewer`:
//! - `findings` (required): a list of `analyzer` outputs (objects with `totals` and
//!   `findings`; `null` entries, from analyzers that produced nothing, are skipped; a single
//!   output object is accepted too);
//! - `decision` (required): the decision point to vote at;
//! - `thresholds` (optional): overrides of `max_todo_per_kloc` (default 5.0),
//!   `max_long_line_ratio` (0.02), `min_comment_ratio` (0.05), `max_file_lines` (1000), which
//!   the model is given as the team's limits.
//!
//! Config (the agent's manifest entry):
//! - `model` (default `reviewer`): the model alias or `<provider>/<model>` id to ask; the
//!   agent needs it in `securityConstraints.allowedModels`;
//! - `focus` (default `overall`): what to judge by; `todos`, `long-lines`, `comments` and
//!   `size` are explained to the model as `reviewer` applies them, any other text is passed
//!   on as it is;
//! - `max_tokens` (default 1024): the most output tokens of the call.
//!
//! The model gets the totals and the counts of each file (at most [`MAX_FILES`] files, by
//! path) and must answer `{"vote": "approve" | "changes-requested", "reasons": [string],
//! "files_flagged": [string]}` (`files_flagged` optional); the request asks for that JSON
//! Schema at temperature 0, so a retried subtask makes the same request and gets the
//! recorded answer. Files the model flags that are not in the findings are dropped.
//!
//! Output: `{"review": {"focus", "vote", "reasons", "files_flagged", "model", "usage":
//! {"input_tokens", "output_tokens"}, "replayed"}, "decision": <the point's decision or
//! null>, "outcome": <the sync outcome>}`. A model error fails the subtask before it votes
//! (`failed: llm call failed: <kind>: <message>`), so the point counts it as absent; a sync
//! error is `failed: sync <point>: <error>`.

use std::collections::{BTreeMap, BTreeSet};

use qi_guest_sdk::llm::{self, Request};
use qi_guest_sdk::serde_json::{Map, Value, json};
use qi_guest_sdk::{
    Agent, AgentError, AgentInfo, AgentType, SubtaskInput, Task, TaskOutput, log, sync,
};
use serde::Deserialize;

/// The `ai-reviewer` agent.
pub struct AiReviewer;

/// The model asked when the config names none.
const DEFAULT_MODEL: &str = "reviewer";
/// The focus when the config names none.
const DEFAULT_FOCUS: &str = "overall";
/// The most output tokens of the call when the config names no other.
const DEFAULT_MAX_TOKENS: u32 = 1024;
/// The most files whose counts are sent (the first by path); the totals cover all of them.
pub const MAX_FILES: usize = 200;
/// The most reasons kept from the answer, and the most characters of each.
const MAX_REASONS: usize = 20;
const MAX_REASON_CHARS: usize = 1000;

/// The vote when the code is acceptable.
const APPROVE: &str = "approve";
/// The vote when it is not.
const CHANGES_REQUESTED: &str = "changes-requested";

/// What the model must answer.
#[derive(Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Verdict {
    vote: Vote,
    reasons: Vec<String>,
    #[serde(default)]
    files_flagged: Vec<String>,
}

#[derive(Deserialize, Debug, PartialEq, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum Vote {
    Approve,
    ChangesRequested,
}

impl Vote {
    fn as_str(self) -> &'static str {
        match self {
            Vote::Approve => APPROVE,
            Vote::ChangesRequested => CHANGES_REQUESTED,
        }
    }
}

/// The JSON Schema of [`Verdict`].
fn verdict_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "vote": {"type": "string", "enum": [APPROVE, CHANGES_REQUESTED]},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "files_flagged": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["vote", "reasons"],
        "additionalProperties": false,
    })
}

/// The agent's config.
struct Config {
    model: String,
    focus: String,
    max_tokens: u32,
}

impl Config {
    fn parse(config: &Value) -> Result<Config, AgentError> {
        let text = |name: &str, default: &str| match config.get(name) {
            None | Some(Value::Null) => Ok(default.to_owned()),
            Some(Value::String(text)) if !text.trim().is_empty() && text.len() <= 256 => {
                Ok(text.clone())
            }
            Some(other) => Err(AgentError::InvalidInput(format!(
                "config `{name}` must be a non-empty string of at most 256 bytes, got {other}"
            ))),
        };
        let max_tokens = match config.get("max_tokens") {
            None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
            Some(value) => value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    AgentError::InvalidInput(format!(
                        "config `max_tokens` must be a positive integer, got {value}"
                    ))
                })?,
        };
        Ok(Config {
            model: text("model", DEFAULT_MODEL)?,
            focus: text("focus", DEFAULT_FOCUS)?,
            max_tokens,
        })
    }
}

/// What the focus means, for the model.
fn focus_rule(focus: &str) -> String {
    match focus {
        "todos" => "open TODO/FIXME/XXX markers: request changes when there are more than \
                    max_todo_per_kloc per 1000 lines"
            .into(),
        "long-lines" => "line length: request changes when the share of lines over 100 \
                         characters is over max_long_line_ratio"
            .into(),
        "comments" => "documentation: request changes when the share of comment lines is \
                       under min_comment_ratio"
            .into(),
        "size" => {
            "file size: request changes when any file has more than max_file_lines lines".into()
        }
        "overall" => "overall code health, weighing to-do markers, long lines, comments and \
                      file sizes against the limits"
            .into(),
        other => other.to_owned(),
    }
}

/// The limits the team set, as the model gets them.
fn thresholds(value: Option<&Value>) -> Result<Map<String, Value>, AgentError> {
    let mut limits = Map::new();
    limits.insert("max_todo_per_kloc".into(), json!(5.0));
    limits.insert("max_long_line_ratio".into(), json!(0.02));
    limits.insert("min_comment_ratio".into(), json!(0.05));
    limits.insert("max_file_lines".into(), json!(1000.0));
    let fields = match value {
        None | Some(Value::Null) => return Ok(limits),
        Some(Value::Object(fields)) => fields,
        Some(other) => {
            return Err(AgentError::InvalidInput(format!(
                "`thresholds` must be an object, got {other}"
            )));
        }
    };
    for (name, value) in fields {
        if !limits.contains_key(name) {
            return Err(AgentError::InvalidInput(format!(
                "unknown threshold `{name}`; expected max_todo_per_kloc, max_long_line_ratio, \
                 min_comment_ratio or max_file_lines"
            )));
        }
        if !value.as_f64().is_some_and(|n| n >= 0.0) {
            return Err(AgentError::InvalidInput(format!(
                "threshold `{name}` must be a non-negative number, got {value}"
            )));
        }
        limits.insert(name.clone(), value.clone());
    }
    Ok(limits)
}

/// The analyzer outputs in `findings`.
fn analyzer_outputs(findings: &Value) -> Result<Vec<&Map<String, Value>>, AgentError> {
    let items: Vec<&Value> = match findings {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![findings],
        other => {
            return Err(AgentError::InvalidInput(format!(
                "`findings` must be a list of analyzer outputs, got {other}"
            )));
        }
    };
    items
        .into_iter()
        .filter(|item| !item.is_null())
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(output)
                if output.get("totals").is_some_and(Value::is_object)
                    || output.get("findings").is_some_and(Value::is_object) =>
            {
                Ok(output)
            }
            other => Err(AgentError::InvalidInput(format!(
                "`findings` item {i} is not an analyzer output (an object with `totals` and \
                 `findings`): {other}"
            ))),
        })
        .collect()
}

/// The numeric fields of `stats`.
fn counts(stats: &Value) -> BTreeMap<String, u64> {
    stats
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| value.as_u64().map(|n| (name.clone(), n)))
        .collect()
}

fn add(into: &mut BTreeMap<String, u64>, counts: &BTreeMap<String, u64>) {
    for (name, n) in counts {
        let slot = into.entry(name.clone()).or_default();
        *slot = slot.saturating_add(*n);
    }
}

/// What the model is shown: totals over every output (an output's `totals`, else the sum of
/// its files) and the counts of each file.
struct Digest {
    totals: BTreeMap<String, u64>,
    files: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Digest {
    fn of(outputs: &[&Map<String, Value>]) -> Digest {
        let mut totals = BTreeMap::new();
        let mut files = BTreeMap::new();
        for output in outputs {
            let own: BTreeMap<String, BTreeMap<String, u64>> = output
                .get("findings")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(path, stats)| (path.clone(), counts(stats)))
                .collect();
            match output.get("totals") {
                Some(stats @ Value::Object(_)) => add(&mut totals, &counts(stats)),
                _ => {
                    for file in own.values() {
                        add(&mut totals, file);
                    }
                    let slot = totals.entry("files".into()).or_default();
                    *slot = slot.saturating_add(own.len() as u64);
                }
            }
            files.extend(own);
        }
        Digest { totals, files }
    }

    /// The user message: the counts and the limits, as JSON.
    fn prompt(&self, limits: &Map<String, Value>) -> String {
        let shown: BTreeMap<&String, &BTreeMap<String, u64>> =
            self.files.iter().take(MAX_FILES).collect();
        let mut prompt = json!({
            "totals": self.totals,
            "files": shown,
            "limits": limits,
        });
        if self.files.len() > MAX_FILES {
            prompt["files_not_shown"] = json!(self.files.len() - MAX_FILES);
        }
        prompt.to_string()
    }
}

fn system_prompt(focus: &str) -> String {
    format!(
        "You are a code reviewer. You get the static-analysis counts of a project, per file \
         and in total (lines, blank lines, comment lines, TODO/FIXME/XXX markers as `todo`, \
         lines over 100 characters as `long_lines`, the longest line, functions, bytes), and \
         the team's limits. Judge them by one focus: {}. Vote \"{APPROVE}\" when the code is \
         acceptable by that focus and \"{CHANGES_REQUESTED}\" otherwise. Give short reasons \
         that cite the numbers, and list in `files_flagged` the files that break the rule on \
         their own. Answer with the JSON object only.",
        focus_rule(focus)
    )
}

/// The verdict with reasons bounded and flagged files limited to the ones reviewed.
fn tidy(verdict: Verdict, digest: &Digest) -> (Vote, Vec<String>, Vec<String>) {
    let reasons = verdict
        .reasons
        .into_iter()
        .take(MAX_REASONS)
        .map(|reason| reason.chars().take(MAX_REASON_CHARS).collect())
        .collect();
    let flagged: BTreeSet<String> = verdict
        .files_flagged
        .into_iter()
        .filter(|path| digest.files.contains_key(path))
        .collect();
    (verdict.vote, reasons, flagged.into_iter().collect())
}

impl Agent for AiReviewer {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "ai-reviewer".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::DecisionCapable,
            capabilities: vec!["code-review".into(), "llm".into()],
            description: "Asks a model to judge analyzer findings by one focus and votes its \
                          verdict at a decision point."
                .into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input = SubtaskInput::from_task(&task)?;
        let outputs = analyzer_outputs(input.require("findings")?)?;
        let point = match input.require("decision")? {
            Value::String(point) if !point.is_empty() => point.as_str(),
            other => {
                return Err(AgentError::InvalidInput(format!(
                    "`decision` must be a point id (a non-empty string), got {other}"
                )));
            }
        };
        let limits = thresholds(input.input("thresholds"))?;
        let config = Config::parse(&input.config)?;
        let digest = Digest::of(&outputs);

        let request = Request::new(&config.model)
            .system(system_prompt(&config.focus))
            .user(digest.prompt(&limits))
            .temperature(0.0)
            .max_tokens(config.max_tokens)
            .json_schema("verdict", verdict_schema());
        let (verdict, response) = llm::chat_json::<Verdict>(&request).inspect_err(|error| {
            log::warn!(
                subtask = input.subtask, model = config.model;
                "no verdict from the model: {error}"
            );
        })?;
        let (vote, reasons, files_flagged) = tidy(verdict, &digest);
        let vote = vote.as_str();
        log::info!(
            subtask = input.subtask, focus = config.focus, model = response.model,
            files = digest.files.len();
            "voting {vote} at {point}"
        );

        let outcome = sync::vote(point, vote)
            .map_err(|error| AgentError::Failed(format!("sync {point}: {error}")))?;
        TaskOutput::json(&json!({
            "review": {
                "focus": config.focus,
                "vote": vote,
                "reasons": reasons,
                "files_flagged": files_flagged,
                "model": response.model,
                "usage": {
                    "input_tokens": response.usage.input_tokens,
                    "output_tokens": response.usage.output_tokens,
                },
                "replayed": response.replayed,
            },
            "decision": outcome.decision(),
            "outcome": outcome,
        }))
    }
}

qi_guest_sdk::export_agent!(AiReviewer);

#[cfg(test)]
mod tests {
    use super::*;
    use qi_guest_sdk::serde_json;

    fn outputs() -> Value {
        json!([
            {
                "totals": {"files": 2, "lines": 1000, "comment": 100, "todo": 4, "long_lines": 30},
                "findings": {
                    "a.rs": {"lines": 900, "comment": 100, "todo": 1, "long_lines": 0},
                    "b.rs": {"lines": 100, "comment": 0, "todo": 3, "long_lines": 30},
                },
            },
            null,
            {"findings": {"c.rs": {"lines": 1500, "comment": 0, "todo": 0, "long_lines": 0}}},
        ])
    }

    #[test]
    fn the_digest_sums_totals_and_keeps_files() {
        let findings = outputs();
        let digest = Digest::of(&analyzer_outputs(&findings).unwrap());
        assert_eq!(digest.totals["lines"], 2500);
        assert_eq!(digest.totals["files"], 3);
        assert_eq!(digest.totals["todo"], 4);
        assert_eq!(
            digest.files.keys().collect::<Vec<_>>(),
            vec!["a.rs", "b.rs", "c.rs"]
        );
        let prompt: Value =
            serde_json::from_str(&digest.prompt(&thresholds(None).unwrap())).unwrap();
        assert_eq!(prompt["files"]["b.rs"]["long_lines"], 30);
        assert_eq!(prompt["limits"]["max_todo_per_kloc"], 5.0);
        assert!(prompt.get("files_not_shown").is_none());
    }

    #[test]
    fn only_the_first_files_are_shown() {
        let findings: Map<String, Value> = (0..MAX_FILES + 5)
            .map(|i| (format!("f{i:04}.rs"), json!({"lines": 1})))
            .collect();
        let output = json!({ "findings": findings });
        let digest = Digest::of(&analyzer_outputs(&output).unwrap());
        assert_eq!(digest.totals["files"], (MAX_FILES + 5) as u64);
        let prompt: Value = serde_json::from_str(&digest.prompt(&Map::new())).unwrap();
        assert_eq!(prompt["files"].as_object().unwrap().len(), MAX_FILES);
        assert_eq!(prompt["files_not_shown"], 5);
    }

    #[test]
    fn verdicts_parse_and_are_tidied() {
        let findings = outputs();
        let digest = Digest::of(&analyzer_outputs(&findings).unwrap());
        let verdict: Verdict = serde_json::from_value(json!({
            "vote": "changes-requested",
            "reasons": ["4 TODOs", "x".repeat(2000)],
            "files_flagged": ["c.rs", "invented.rs", "b.rs", "c.rs"],
        }))
        .unwrap();
        let (vote, reasons, flagged) = tidy(verdict, &digest);
        assert_eq!(vote.as_str(), "changes-requested");
        assert_eq!(reasons[1].len(), MAX_REASON_CHARS);
        assert_eq!(flagged, vec!["b.rs", "c.rs"]);

        for bad in [
            json!({"vote": "request-changes", "reasons": []}),
            json!({"vote": "approve"}),
            json!({"vote": "approve", "reasons": [], "mood": "good"}),
        ] {
            assert!(
                serde_json::from_value::<Verdict>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let schema = verdict_schema();
        assert_eq!(
            schema["properties"]["vote"]["enum"],
            json!(["approve", "changes-requested"])
        );
    }

    #[test]
    fn config_and_thresholds_are_checked() {
        let config = Config::parse(&Value::Null).unwrap();
        assert_eq!(
            (
                config.model.as_str(),
                config.focus.as_str(),
                config.max_tokens
            ),
            ("reviewer", "overall", 1024)
        );
        let config =
            Config::parse(&json!({"model": "local/qwen", "focus": "todos", "max_tokens": 200}))
                .unwrap();
        assert_eq!(config.model, "local/qwen");
        assert!(system_prompt(&config.focus).contains("max_todo_per_kloc"));
        assert!(Config::parse(&json!({"model": ""})).is_err());
        assert!(Config::parse(&json!({"focus": 3})).is_err());
        assert!(Config::parse(&json!({"max_tokens": 0})).is_err());
        assert!(thresholds(Some(&json!({"max_todos": 1}))).is_err());
        assert!(thresholds(Some(&json!({"max_file_lines": -1}))).is_err());
        assert_eq!(
            thresholds(Some(&json!({"max_file_lines": 50}))).unwrap()["max_file_lines"],
            50
        );
        assert!(analyzer_outputs(&json!([{"foo": 1}])).is_err());
    }
}
