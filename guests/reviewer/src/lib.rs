//! `reviewer`: judges the findings of the `analyzer` subtasks from one point of view and votes
//! on them at a decision point, as a subtask of a coordinated code review.
//!
//! Input: the subtask input of a coordinated run ([`SubtaskInput`]) with
//! - `findings` (required): a list of `analyzer` outputs (objects with `totals` and
//!   `findings`; `null` entries, from analyzers that produced nothing, are skipped; a single
//!   output object is accepted too);
//! - `decision` (required): the decision point to vote at;
//! - `thresholds` (optional): overrides of `max_todo_per_kloc` (default 5.0),
//!   `max_long_line_ratio` (0.02), `min_comment_ratio` (0.05), `max_file_lines` (1000).
//!
//! Config (the agent's manifest entry): `focus`, one of `todos` (default), `long-lines`,
//! `comments`, `size`:
//! - `todos`: TODO/FIXME/XXX per 1000 lines over `max_todo_per_kloc` requests changes;
//! - `long-lines`: long lines / lines over `max_long_line_ratio` requests changes;
//! - `comments`: comment lines / lines under `min_comment_ratio` requests changes;
//! - `size`: any file over `max_file_lines` lines requests changes.
//!
//! Files that break the rule on their own are listed in `files_flagged` (sorted).
//!
//! Output: `{"review": {"focus", "vote": "approve" | "changes-requested", "reasons": [...],
//! "files_flagged": [...]}, "decision": <the point's decision or null>, "outcome": <the sync
//! outcome>}`. A sync error is `failed: sync <point>: <error>`.

use std::collections::BTreeMap;

use qi_guest_sdk::serde_json::{Map, Value, json};
use qi_guest_sdk::{
    Agent, AgentError, AgentInfo, AgentType, SubtaskInput, Task, TaskOutput, log, sync,
};

/// The `reviewer` agent.
pub struct Reviewer;

/// The vote when the rule holds.
const APPROVE: &str = "approve";
/// The vote when it does not.
const CHANGES_REQUESTED: &str = "changes-requested";

/// What the reviewer judges by.
#[derive(Clone, Copy)]
enum Focus {
    Todos,
    LongLines,
    Comments,
    Size,
}

impl Focus {
    fn parse(config: &Value) -> Result<Focus, AgentError> {
        match config.get("focus") {
            None | Some(Value::Null) => Ok(Focus::Todos),
            Some(Value::String(focus)) => match focus.as_str() {
                "todos" => Ok(Focus::Todos),
                "long-lines" => Ok(Focus::LongLines),
                "comments" => Ok(Focus::Comments),
                "size" => Ok(Focus::Size),
                other => Err(unknown_focus(other)),
            },
            Some(other) => Err(unknown_focus(&other.to_string())),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Focus::Todos => "todos",
            Focus::LongLines => "long-lines",
            Focus::Comments => "comments",
            Focus::Size => "size",
        }
    }
}

fn unknown_focus(focus: &str) -> AgentError {
    AgentError::InvalidInput(format!(
        "config `focus` must be \"todos\", \"long-lines\", \"comments\" or \"size\", got {focus}"
    ))
}

/// The limits the review applies.
struct Thresholds {
    max_todo_per_kloc: f64,
    max_long_line_ratio: f64,
    min_comment_ratio: f64,
    max_file_lines: f64,
}

impl Thresholds {
    fn parse(value: Option<&Value>) -> Result<Thresholds, AgentError> {
        let mut thresholds = Thresholds {
            max_todo_per_kloc: 5.0,
            max_long_line_ratio: 0.02,
            min_comment_ratio: 0.05,
            max_file_lines: 1000.0,
        };
        let fields = match value {
            None | Some(Value::Null) => return Ok(thresholds),
            Some(Value::Object(fields)) => fields,
            Some(other) => {
                return Err(AgentError::InvalidInput(format!(
                    "`thresholds` must be an object, got {other}"
                )));
            }
        };
        for (name, value) in fields {
            let slot = match name.as_str() {
                "max_todo_per_kloc" => &mut thresholds.max_todo_per_kloc,
                "max_long_line_ratio" => &mut thresholds.max_long_line_ratio,
                "min_comment_ratio" => &mut thresholds.min_comment_ratio,
                "max_file_lines" => &mut thresholds.max_file_lines,
                other => {
                    return Err(AgentError::InvalidInput(format!(
                        "unknown threshold `{other}`; expected max_todo_per_kloc, \
                         max_long_line_ratio, min_comment_ratio or max_file_lines"
                    )));
                }
            };
            *slot = value.as_f64().filter(|n| *n >= 0.0).ok_or_else(|| {
                AgentError::InvalidInput(format!(
                    "threshold `{name}` must be a non-negative number, got {value}"
                ))
            })?;
        }
        Ok(thresholds)
    }
}

/// The counts the review looks at, of one file or of everything.
#[derive(Default, Clone, Copy)]
struct Counts {
    files: u64,
    lines: u64,
    comment: u64,
    todo: u64,
    long_lines: u64,
}

impl Counts {
    fn of(stats: &Value) -> Counts {
        let n = |name: &str| stats.get(name).and_then(Value::as_u64).unwrap_or(0);
        Counts {
            files: n("files"),
            lines: n("lines"),
            comment: n("comment"),
            todo: n("todo"),
            long_lines: n("long_lines"),
        }
    }

    fn add(&mut self, other: Counts) {
        self.files += other.files;
        self.lines += other.lines;
        self.comment += other.comment;
        self.todo += other.todo;
        self.long_lines += other.long_lines;
    }

    /// `part / lines`, 0 without lines.
    fn ratio(&self, part: u64) -> f64 {
        if self.lines == 0 {
            0.0
        } else {
            part as f64 / self.lines as f64
        }
    }
}

/// A review's result before voting.
struct Judgement {
    approve: bool,
    reasons: Vec<String>,
    files_flagged: Vec<String>,
}

impl Agent for Reviewer {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "reviewer".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::DecisionCapable,
            capabilities: vec!["code-review".into()],
            description: "Judges analyzer findings by one focus (todos, long lines, comments, \
                          size) and votes at a decision point."
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
        let thresholds = Thresholds::parse(input.input("thresholds"))?;
        let focus = Focus::parse(&input.config)?;

        let (totals, files) = collect(&outputs);
        let judgement = judge(focus, &thresholds, &totals, &files);
        let vote = if judgement.approve {
            APPROVE
        } else {
            CHANGES_REQUESTED
        };
        log::info!(
            subtask = input.subtask, focus = focus.as_str(), files = files.len();
            "voting {vote} at {point}"
        );

        let outcome = sync::vote(point, vote)
            .map_err(|error| AgentError::Failed(format!("sync {point}: {error}")))?;
        TaskOutput::json(&json!({
            "review": {
                "focus": focus.as_str(),
                "vote": vote,
                "reasons": judgement.reasons,
                "files_flagged": judgement.files_flagged,
            },
            "decision": outcome.decision(),
            "outcome": outcome,
        }))
    }
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

/// The totals over all outputs and the counts of each file.
fn collect(outputs: &[&Map<String, Value>]) -> (Counts, BTreeMap<String, Counts>) {
    let mut totals = Counts::default();
    let mut files = BTreeMap::new();
    for output in outputs {
        let mut own = BTreeMap::new();
        if let Some(findings) = output.get("findings").and_then(Value::as_object) {
            for (path, stats) in findings {
                own.insert(
                    path.clone(),
                    Counts {
                        files: 1,
                        ..Counts::of(stats)
                    },
                );
            }
        }
        match output.get("totals") {
            Some(stats @ Value::Object(_)) => totals.add(Counts::of(stats)),
            _ => own.values().for_each(|counts| totals.add(*counts)),
        }
        files.extend(own);
    }
    (totals, files)
}

fn judge(
    focus: Focus,
    t: &Thresholds,
    totals: &Counts,
    files: &BTreeMap<String, Counts>,
) -> Judgement {
    let flagged = |breaks: &dyn Fn(&Counts) -> bool| -> Vec<String> {
        files
            .iter()
            .filter(|(_, counts)| counts.lines > 0 && breaks(counts))
            .map(|(path, _)| path.clone())
            .collect()
    };
    let mut reasons = Vec::new();
    if totals.lines == 0 && !matches!(focus, Focus::Size) {
        return Judgement {
            approve: true,
            reasons: vec![format!(
                "no lines to review in {} files; nothing to object to",
                totals.files
            )],
            files_flagged: Vec::new(),
        };
    }
    let (approve, files_flagged) = match focus {
        Focus::Todos => {
            let per_kloc = |c: &Counts| c.ratio(c.todo) * 1000.0;
            let value = per_kloc(totals);
            let approve = value <= t.max_todo_per_kloc;
            reasons.push(format!(
                "{} TODO/FIXME/XXX markers in {} lines: {value:.2} per 1000 lines ({} the \
                 maximum of {})",
                totals.todo,
                totals.lines,
                within(approve),
                t.max_todo_per_kloc
            ));
            (approve, flagged(&|c| per_kloc(c) > t.max_todo_per_kloc))
        }
        Focus::LongLines => {
            let ratio = |c: &Counts| c.ratio(c.long_lines);
            let value = ratio(totals);
            let approve = value <= t.max_long_line_ratio;
            reasons.push(format!(
                "{} of {} lines are over 100 characters: a ratio of {value:.4} ({} the maximum \
                 of {})",
                totals.long_lines,
                totals.lines,
                within(approve),
                t.max_long_line_ratio
            ));
            (approve, flagged(&|c| ratio(c) > t.max_long_line_ratio))
        }
        Focus::Comments => {
            let ratio = |c: &Counts| c.ratio(c.comment);
            let value = ratio(totals);
            let approve = value >= t.min_comment_ratio;
            reasons.push(format!(
                "{} of {} lines are comments: a ratio of {value:.4} ({} the minimum of {})",
                totals.comment,
                totals.lines,
                if approve { "meets" } else { "below" },
                t.min_comment_ratio
            ));
            (approve, flagged(&|c| ratio(c) < t.min_comment_ratio))
        }
        Focus::Size => {
            let big = flagged(&|c| c.lines as f64 > t.max_file_lines);
            reasons.push(format!(
                "{} of {} files are over {} lines",
                big.len(),
                files.len(),
                t.max_file_lines
            ));
            if let Some((path, counts)) = files.iter().max_by_key(|(_, c)| c.lines) {
                reasons.push(format!("the largest is {path} with {} lines", counts.lines));
            }
            (big.is_empty(), big)
        }
    };
    if !files_flagged.is_empty() {
        reasons.push(format!(
            "{} files break the rule on their own: {}",
            files_flagged.len(),
            files_flagged.join(", ")
        ));
    }
    Judgement {
        approve,
        reasons,
        files_flagged,
    }
}

fn within(ok: bool) -> &'static str {
    if ok { "within" } else { "over" }
}

qi_guest_sdk::export_agent!(Reviewer);

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs() -> Vec<Value> {
        vec![
            json!({
                "totals": {"files": 2, "lines": 1000, "comment": 100, "todo": 4, "long_lines": 30},
                "findings": {
                    "a.rs": {"lines": 900, "comment": 100, "todo": 1, "long_lines": 0},
                    "b.rs": {"lines": 100, "comment": 0, "todo": 3, "long_lines": 30},
                },
            }),
            Value::Null,
            json!({"findings": {"c.rs": {"lines": 1500, "comment": 0, "todo": 0, "long_lines": 0}}}),
        ]
    }

    fn review(focus: &str, thresholds: Option<Value>) -> Judgement {
        let findings = Value::Array(outputs());
        let outputs = analyzer_outputs(&findings).unwrap();
        let (totals, files) = collect(&outputs);
        assert_eq!(totals.lines, 2500);
        assert_eq!(totals.files, 3);
        let focus = Focus::parse(&json!({ "focus": focus })).unwrap();
        judge(
            focus,
            &Thresholds::parse(thresholds.as_ref()).unwrap(),
            &totals,
            &files,
        )
    }

    #[test]
    fn each_focus_judges_its_numbers() {
        let todos = review("todos", None);
        assert!(todos.approve, "{:?}", todos.reasons);
        assert!(
            todos.reasons[0].contains("1.60 per 1000 lines"),
            "{:?}",
            todos.reasons
        );
        assert_eq!(todos.files_flagged, vec!["b.rs"]);

        let strict = review("todos", Some(json!({"max_todo_per_kloc": 1.0})));
        assert!(!strict.approve);

        let long = review("long-lines", None);
        assert!(long.approve, "{:?}", long.reasons);
        assert_eq!(long.files_flagged, vec!["b.rs"]);

        let comments = review("comments", None);
        assert!(!comments.approve, "{:?}", comments.reasons);
        assert!(
            comments.reasons[0].contains("0.0400 (below"),
            "{:?}",
            comments.reasons
        );
        assert_eq!(comments.files_flagged, vec!["b.rs", "c.rs"]);

        let size = review("size", None);
        assert!(!size.approve);
        assert_eq!(size.files_flagged, vec!["c.rs"]);
        assert!(
            size.reasons[1].contains("c.rs with 1500 lines"),
            "{:?}",
            size.reasons
        );
    }

    #[test]
    fn bad_config_and_thresholds_are_invalid_input() {
        assert!(Focus::parse(&json!({"focus": "style"})).is_err());
        assert!(Focus::parse(&Value::Null).is_ok());
        assert!(Thresholds::parse(Some(&json!({"max_todos": 1}))).is_err());
        assert!(Thresholds::parse(Some(&json!({"max_file_lines": "many"}))).is_err());
        assert!(analyzer_outputs(&json!([{"foo": 1}])).is_err());
    }
}
