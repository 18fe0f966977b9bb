//! `reporter`: the aggregating subtask of a coordinated code review. It combines the
//! `analyzer` findings, the `reviewer` votes and the results of the run's decision and
//! aggregation points into one report, and writes it into the shared context store.
//!
//! Input: the subtask input of a coordinated run ([`SubtaskInput`]) with
//! - `context_id` (required): the context to write the report to; created (type `report`,
//!   strategy `strong`) when it does not exist, else its document is replaced;
//! - `findings`: a list of `analyzer` outputs (`null` entries are skipped; missing: none);
//! - `reviews`: a list of `reviewer` outputs (may be empty or missing);
//! - `verdict` (optional): the decision point's result (`{"decision": ..., "votes": ...}`);
//! - `totals` (optional): the aggregation point's result: a totals object, a list of them
//!   (`concat`) or `{"<participant>": totals}` (`collect`); lists and maps are summed;
//! - `missing` (optional): what the run could not deliver (e.g. subtasks that failed).
//!
//! The report: `{"files": n, "totals": {...}, "totals_source": "aggregation" | "findings",
//! "verdict": "<decision>", "reviews": [{"focus", "vote", "reasons"}], "hotspots": [{"path",
//! "todo", "long_lines", "lines"}], "missing": [...], "markdown": "<the report as Markdown>"}`.
//! `verdict` is the decision point's decision, else the first decision a reviewer reported,
//! else `undecided`. `hotspots` are the (at most [`HOTSPOTS`]) files with the most to-dos, then
//! long lines; files with neither are not hotspots.
//!
//! Output: `{"report": <report>, "context_id": "<id>", "version": <the version written>}`. A
//! refused context write is `failed: context call failed: ...`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use qi_guest_sdk::context::{self, ContextError, SyncStrategy};
use qi_guest_sdk::serde_json::{Map, Value, json};
use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, SubtaskInput, Task, TaskOutput, log};

/// The `reporter` agent.
pub struct Reporter;

/// Most hotspots a report lists.
pub const HOTSPOTS: usize = 5;
/// The context type of a report.
const REPORT_TYPE: &str = "report";
/// The totals fields, in the order the Markdown table shows them.
const TOTALS_FIELDS: &[&str] = &[
    "files",
    "lines",
    "blank",
    "comment",
    "todo",
    "long_lines",
    "functions",
    "bytes",
];

impl Agent for Reporter {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "reporter".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["report".into()],
            description: "Combines analyzer findings and reviewer votes into a report and writes \
                          it into a shared context."
                .into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input = SubtaskInput::from_task(&task)?;
        let context_id = match input.require("context_id")? {
            Value::String(id) if !id.is_empty() => id.clone(),
            other => {
                return Err(AgentError::InvalidInput(format!(
                    "`context_id` must be a non-empty string, got {other}"
                )));
            }
        };
        let findings = objects(&input, "findings")?;
        let reviews = objects(&input, "reviews")?;
        let missing = match input.input("missing") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(missing)) => missing.clone(),
            Some(other) => vec![other.clone()],
        };

        // Every file's counts, and the totals of the findings.
        let mut files: BTreeMap<&str, &Value> = BTreeMap::new();
        let mut findings_totals = Map::new();
        for output in &findings {
            if let Some(per_file) = output.get("findings").and_then(Value::as_object) {
                files.extend(per_file.iter().map(|(path, stats)| (path.as_str(), stats)));
            }
            if let Some(totals) = output.get("totals") {
                add_totals(&mut findings_totals, totals);
            }
        }
        let (totals, totals_source) = match input.input("totals").and_then(aggregated_totals) {
            Some(totals) => (totals, "aggregation"),
            None => (findings_totals, "findings"),
        };
        let file_count = if files.is_empty() {
            totals.get("files").and_then(Value::as_u64).unwrap_or(0)
        } else {
            files.len() as u64
        };

        let verdict = verdict(input.input("verdict"), &reviews);
        let review_summaries: Vec<Value> = reviews
            .iter()
            .map(|output| {
                let review = output.get("review").unwrap_or(output);
                json!({
                    "focus": review.get("focus").cloned().unwrap_or(Value::Null),
                    "vote": review.get("vote").cloned().unwrap_or(Value::Null),
                    "reasons": review.get("reasons").cloned().unwrap_or_else(|| json!([])),
                })
            })
            .collect();
        let hotspots = hotspots(&files);

        let mut report = json!({
            "files": file_count,
            "totals": totals,
            "totals_source": totals_source,
            "verdict": verdict,
            "reviews": review_summaries,
            "hotspots": hotspots,
            "missing": missing,
        });
        let markdown = markdown(&report);
        report["markdown"] = Value::String(markdown);

        let version = write_report(&context_id, &report)?;
        log::info!(
            subtask = input.subtask, context = context_id, version = version;
            "report written: {verdict}"
        );
        TaskOutput::json(&json!({
            "report": report,
            "context_id": context_id,
            "version": version,
        }))
    }
}

/// The objects of the list input `name`; `null` entries are skipped, a missing input is empty.
fn objects<'a>(input: &'a SubtaskInput, name: &str) -> Result<Vec<&'a Value>, AgentError> {
    let items = match input.input(name) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(AgentError::InvalidInput(format!(
                "`{name}` must be a list, got {other}"
            )));
        }
    };
    items
        .iter()
        .filter(|item| !item.is_null())
        .map(|item| {
            if item.is_object() {
                Ok(item)
            } else {
                Err(AgentError::InvalidInput(format!(
                    "`{name}` must hold objects, got {item}"
                )))
            }
        })
        .collect()
}

/// Adds the numeric fields of `totals` to `sum`.
fn add_totals(sum: &mut Map<String, Value>, totals: &Value) {
    let Some(fields) = totals.as_object() else {
        return;
    };
    for (name, value) in fields {
        if let Some(n) = value.as_u64() {
            let before = sum.get(name).and_then(Value::as_u64).unwrap_or(0);
            sum.insert(name.clone(), json!(before + n));
        }
    }
}

/// The aggregation point's result as one totals object: an object of numbers as it is, a list
/// of totals (`concat`) or an object of totals (`collect`) summed. `None` for anything else.
fn aggregated_totals(result: &Value) -> Option<Map<String, Value>> {
    let parts: Vec<&Value> = match result {
        Value::Object(fields) if fields.values().all(Value::is_number) => {
            return Some(fields.clone());
        }
        Value::Object(fields) => fields.values().collect(),
        Value::Array(items) => items.iter().collect(),
        _ => return None,
    };
    if !parts.iter().all(|part| part.is_object() || part.is_null()) {
        return None;
    }
    let mut sum = Map::new();
    for part in parts {
        add_totals(&mut sum, part);
    }
    Some(sum)
}

/// The decision point's decision, else the first decision a reviewer saw, else `undecided`.
fn verdict(verdict: Option<&Value>, reviews: &[&Value]) -> String {
    let decided = match verdict {
        Some(Value::String(decision)) => Some(decision.as_str()),
        Some(result) => result.get("decision").and_then(Value::as_str),
        None => None,
    };
    decided
        .or_else(|| {
            reviews
                .iter()
                .find_map(|review| review.get("decision").and_then(Value::as_str))
        })
        .unwrap_or("undecided")
        .to_owned()
}

/// The files with the most to-dos, then long lines (then by path).
fn hotspots(files: &BTreeMap<&str, &Value>) -> Vec<Value> {
    let n = |stats: &Value, name: &str| stats.get(name).and_then(Value::as_u64).unwrap_or(0);
    let mut ranked: Vec<(&str, u64, u64, u64)> = files
        .iter()
        .map(|(path, stats)| {
            (
                *path,
                n(stats, "todo"),
                n(stats, "long_lines"),
                n(stats, "lines"),
            )
        })
        .filter(|(_, todo, long_lines, _)| todo + long_lines > 0)
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(HOTSPOTS)
        .map(|(path, todo, long_lines, lines)| {
            json!({"path": path, "todo": todo, "long_lines": long_lines, "lines": lines})
        })
        .collect()
}

/// Text of a JSON value for Markdown: strings without quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The report as Markdown.
fn markdown(report: &Value) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Code review report\n");
    let _ = writeln!(md, "**Verdict:** {}\n", plain(&report["verdict"]));
    let _ = writeln!(md, "**Files analyzed:** {}\n", plain(&report["files"]));

    let _ = writeln!(md, "## Totals\n");
    let _ = writeln!(md, "| {} |", TOTALS_FIELDS.join(" | ").replace('_', " "));
    let _ = writeln!(md, "|{}", "---|".repeat(TOTALS_FIELDS.len()));
    let cells: Vec<String> = TOTALS_FIELDS
        .iter()
        .map(|field| plain(&report["totals"][*field]))
        .collect();
    let _ = writeln!(md, "| {} |\n", cells.join(" | "));

    let _ = writeln!(md, "## Reviews\n");
    match report["reviews"].as_array() {
        Some(reviews) if !reviews.is_empty() => {
            for review in reviews {
                let reasons: Vec<String> = review["reasons"]
                    .as_array()
                    .map(|reasons| reasons.iter().map(plain).collect())
                    .unwrap_or_default();
                let _ = writeln!(
                    md,
                    "- **{}**: {}{}",
                    plain(&review["focus"]),
                    plain(&review["vote"]),
                    if reasons.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", reasons.join("; "))
                    }
                );
            }
            md.push('\n');
        }
        _ => {
            let _ = writeln!(md, "No reviews.\n");
        }
    }

    let _ = writeln!(md, "## Hotspots\n");
    match report["hotspots"].as_array() {
        Some(hotspots) if !hotspots.is_empty() => {
            let _ = writeln!(
                md,
                "| file | todo | long lines | lines |\n|---|---|---|---|"
            );
            for spot in hotspots {
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {} | {} |",
                    plain(&spot["path"]),
                    plain(&spot["todo"]),
                    plain(&spot["long_lines"]),
                    plain(&spot["lines"])
                );
            }
            md.push('\n');
        }
        _ => {
            let _ = writeln!(md, "None.\n");
        }
    }

    if let Some(missing) = report["missing"].as_array().filter(|m| !m.is_empty()) {
        let _ = writeln!(md, "## Missing\n");
        for item in missing {
            let _ = writeln!(md, "- {}", plain(item));
        }
    }
    md.truncate(md.trim_end().len());
    md.push('\n');
    md
}

/// Writes the report as the document of context `id`: creates it when it does not exist, else
/// replaces its document. Returns the version written.
fn write_report(id: &str, report: &Value) -> Result<u64, AgentError> {
    match context::get_raw(id) {
        Ok(_) => {}
        Err(ContextError::NotFound(_)) => {
            match context::create(Some(id), REPORT_TYPE, report, SyncStrategy::Strong) {
                Ok(written) => return Ok(written.version),
                // Created by someone else in between: replace it below.
                Err(ContextError::Refused(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(error) => return Err(error.into()),
    }
    let written = context::update(id, |doc: &mut Value| doc.clone_from(report))?;
    Ok(written.version)
}

qi_guest_sdk::export_agent!(Reporter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_totals_accept_each_reducer_shape() {
        let one = json!({"files": 1, "lines": 10});
        assert_eq!(aggregated_totals(&one), one.as_object().cloned());
        let summed = json!({"files": 3, "lines": 30});
        let two = json!({"files": 2, "lines": 20});
        assert_eq!(
            aggregated_totals(&json!([one, two])),
            summed.as_object().cloned()
        );
        assert_eq!(
            aggregated_totals(&json!({"a": one, "b": two})),
            summed.as_object().cloned()
        );
        assert_eq!(aggregated_totals(&json!(30)), None);
        assert_eq!(aggregated_totals(&json!([1, 2])), None);
    }

    #[test]
    fn hotspots_rank_by_todo_then_long_lines() {
        let stats: Vec<(String, Value)> = (0..7)
            .map(|i| {
                (
                    format!("f{i}.rs"),
                    json!({"todo": i % 3, "long_lines": i, "lines": 10}),
                )
            })
            .collect();
        let files: BTreeMap<&str, &Value> = stats.iter().map(|(p, s)| (p.as_str(), s)).collect();
        let paths: Vec<String> = hotspots(&files).iter().map(|h| plain(&h["path"])).collect();
        assert_eq!(paths, vec!["f5.rs", "f2.rs", "f4.rs", "f1.rs", "f6.rs"]);
    }

    #[test]
    fn verdict_prefers_the_decision_point() {
        let review = json!({"decision": "changes-requested"});
        assert_eq!(
            verdict(Some(&json!({"decision": "approve"})), &[&review]),
            "approve"
        );
        assert_eq!(
            verdict(Some(&json!({"decision": null})), &[&review]),
            "changes-requested"
        );
        assert_eq!(verdict(None, &[]), "undecided");
    }

    #[test]
    fn markdown_shows_every_section() {
        let report = json!({
            "files": 2,
            "totals": {"files": 2, "lines": 30, "todo": 1},
            "verdict": "approve",
            "reviews": [{"focus": "todos", "vote": "approve", "reasons": ["1 per kloc"]}],
            "hotspots": [{"path": "a.rs", "todo": 1, "long_lines": 0, "lines": 20}],
            "missing": ["scan-b"],
        });
        let md = markdown(&report);
        assert!(md.contains("**Verdict:** approve"), "{md}");
        assert!(md.contains("| 2 | 30 | - | - | 1 | - | - | - |"), "{md}");
        assert!(md.contains("- **todos**: approve (1 per kloc)"), "{md}");
        assert!(md.contains("| `a.rs` | 1 | 0 | 20 |"), "{md}");
        assert!(md.ends_with("- scan-b\n"), "{md}");
    }
}
