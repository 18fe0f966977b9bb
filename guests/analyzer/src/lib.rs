//! `analyzer`: static analysis of one shard of a source tree mounted (read-only) at
//! `/workspace`, as a subtask of a coordinated code review.
//!
//! Input: the subtask input of a coordinated run ([`SubtaskInput`]) with
//! - `files` (required): paths relative to `/workspace` (absolute paths and `..` are refused
//!   per file);
//! - `barrier` (optional): a barrier point to arrive at once the analysis is done;
//! - `aggregate` (optional): an aggregation point to contribute `totals` to, after the barrier.
//!
//! Per file it counts `lines`, `blank` lines, `comment` lines (trimmed text starts with `//`,
//! `#`, `/*`, `*` or `--`), `todo` (occurrences of `TODO`, `FIXME` and `XXX`), `long_lines`
//! (over [`LONG_LINE`] characters), `longest_line` (characters), `functions` (trimmed text
//! starts with `fn `, `pub fn `, `pub(crate) fn `, `async fn `, `pub async fn `, `def ` or
//! `function `) and `bytes`. Text that is not UTF-8 is read lossily.
//!
//! Output: `{"analysis": {"findings", "totals"}, "findings": {"<path>": {lines, blank, comment, todo, long_lines, longest_line,
//! functions, bytes}}, "totals": {files, lines, blank, comment, todo, long_lines, functions,
//! bytes}, "errors": {"<path>": "<reason>"}, "sync": [<outcome of the barrier, then of the
//! aggregation>]}`. `analysis` repeats `findings` and `totals` together, so a manifest can hand
//! a whole analysis to a reviewer or reporter as one output.
//!
//! A file that cannot be read is listed in `errors`, not a failure; but an empty `files`, or a
//! shard where every file failed, is `failed`. A sync error is `failed: sync <point>: <error>`.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::{
    Agent, AgentError, AgentInfo, AgentType, SubtaskInput, Task, TaskOutput, log, sync,
};

/// The `analyzer` agent.
pub struct Analyzer;

/// Where the source tree is mounted.
const WORKSPACE: &str = "/workspace";
/// A line longer than this many characters is a long line.
const LONG_LINE: usize = 100;
/// Prefixes (of the trimmed line) of a comment line.
const COMMENT_PREFIXES: &[&str] = &["//", "#", "/*", "*", "--"];
/// Prefixes (of the trimmed line) of a function definition.
const FUNCTION_PREFIXES: &[&str] = &[
    "fn ",
    "pub fn ",
    "pub(crate) fn ",
    "async fn ",
    "pub async fn ",
    "def ",
    "function ",
];
/// Markers counted as to-dos.
const TODO_MARKERS: &[&str] = &["TODO", "FIXME", "XXX"];

/// What one file contains.
#[derive(Default)]
struct FileStats {
    lines: u64,
    blank: u64,
    comment: u64,
    todo: u64,
    long_lines: u64,
    longest_line: u64,
    functions: u64,
    bytes: u64,
}

impl FileStats {
    fn of(bytes: &[u8]) -> FileStats {
        let text = String::from_utf8_lossy(bytes);
        let mut stats = FileStats {
            bytes: bytes.len() as u64,
            ..FileStats::default()
        };
        for line in text.lines() {
            stats.lines += 1;
            let chars = line.chars().count() as u64;
            stats.longest_line = stats.longest_line.max(chars);
            if chars > LONG_LINE as u64 {
                stats.long_lines += 1;
            }
            stats.todo += TODO_MARKERS
                .iter()
                .map(|marker| line.matches(marker).count() as u64)
                .sum::<u64>();
            let trimmed = line.trim();
            if trimmed.is_empty() {
                stats.blank += 1;
            } else if COMMENT_PREFIXES.iter().any(|p| trimmed.starts_with(p)) {
                stats.comment += 1;
            }
            if FUNCTION_PREFIXES.iter().any(|p| trimmed.starts_with(p)) {
                stats.functions += 1;
            }
        }
        stats
    }

    fn to_json(&self) -> Value {
        json!({
            "lines": self.lines,
            "blank": self.blank,
            "comment": self.comment,
            "todo": self.todo,
            "long_lines": self.long_lines,
            "longest_line": self.longest_line,
            "functions": self.functions,
            "bytes": self.bytes,
        })
    }
}

impl Agent for Analyzer {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "analyzer".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Specialized,
            capabilities: vec!["code-analysis".into()],
            description: "Counts lines, comments, to-dos, long lines and functions of a shard of \
                          the source tree at /workspace."
                .into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input = SubtaskInput::from_task(&task)?;
        let files = string_list(input.require("files")?, "files")?;
        let barrier = optional_point(&input, "barrier")?;
        let aggregate = optional_point(&input, "aggregate")?;
        if files.is_empty() {
            return Err(AgentError::Failed(format!(
                "subtask `{}` was given no files to analyze",
                input.subtask
            )));
        }

        let mut findings = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for path in &files {
            match analyze(path) {
                Ok(stats) => {
                    findings.insert(path.clone(), stats);
                }
                Err(reason) => {
                    errors.insert(path.clone(), reason);
                }
            }
        }
        if findings.is_empty() {
            let reasons: Vec<String> = errors
                .iter()
                .map(|(path, reason)| format!("{path}: {reason}"))
                .collect();
            return Err(AgentError::Failed(format!(
                "none of the {} files could be analyzed: {}",
                errors.len(),
                reasons.join("; ")
            )));
        }

        let sum = |f: fn(&FileStats) -> u64| findings.values().map(f).sum::<u64>();
        let totals = json!({
            "files": findings.len(),
            "lines": sum(|s| s.lines),
            "blank": sum(|s| s.blank),
            "comment": sum(|s| s.comment),
            "todo": sum(|s| s.todo),
            "long_lines": sum(|s| s.long_lines),
            "functions": sum(|s| s.functions),
            "bytes": sum(|s| s.bytes),
        });
        log::info!(
            subtask = input.subtask, files = findings.len(), errors = errors.len();
            "analyzed {} lines", totals["lines"]
        );

        let mut synced = Vec::new();
        if let Some(point) = barrier {
            let outcome = sync::barrier(point)
                .map_err(|error| AgentError::Failed(format!("sync {point}: {error}")))?;
            synced.push(json!(outcome));
        }
        if let Some(point) = aggregate {
            let outcome = sync::contribute(point, &totals)
                .map_err(|error| AgentError::Failed(format!("sync {point}: {error}")))?;
            synced.push(json!(outcome));
        }

        let findings: BTreeMap<&String, Value> = findings
            .iter()
            .map(|(path, stats)| (path, stats.to_json()))
            .collect();
        TaskOutput::json(&json!({
            "analysis": {"findings": findings, "totals": totals},
            "findings": findings,
            "totals": totals,
            "errors": errors,
            "sync": synced,
        }))
    }
}

/// Reads and counts one file; the reason when it cannot be read.
fn analyze(path: &str) -> Result<FileStats, String> {
    let relative = Path::new(path);
    if path.is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "not a path relative to {WORKSPACE} (absolute paths and `..` are refused)"
        ));
    }
    let full = Path::new(WORKSPACE).join(relative);
    let bytes = std::fs::read(&full).map_err(|error| format!("cannot read: {error}"))?;
    Ok(FileStats::of(&bytes))
}

/// A list of strings, or `invalid-input` naming the input.
fn string_list(value: &Value, name: &str) -> Result<Vec<String>, AgentError> {
    let invalid = || AgentError::InvalidInput(format!("`{name}` must be a list of paths"));
    value
        .as_array()
        .ok_or_else(invalid)?
        .iter()
        .map(|item| item.as_str().map(str::to_owned).ok_or_else(invalid))
        .collect()
}

/// An optional point id input.
fn optional_point<'a>(input: &'a SubtaskInput, name: &str) -> Result<Option<&'a str>, AgentError> {
    match input.input(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(point)) if !point.is_empty() => Ok(Some(point)),
        Some(other) => Err(AgentError::InvalidInput(format!(
            "`{name}` must be a point id (a non-empty string), got {other}"
        ))),
    }
}

qi_guest_sdk::export_agent!(Analyzer);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_comments_todos_and_functions() {
        let long = "x".repeat(LONG_LINE + 1);
        let text = format!(
            "// header TODO\n\npub fn a() {{\n    # not rust\n    let x = 1; // FIXME XXX\n}}\n\
             {long}\n  def b():\n * star\n-- sql\nasync fn c() {{}}\nfunction d() {{}}\r\n"
        );
        let s = FileStats::of(text.as_bytes());
        assert_eq!(s.lines, 12);
        assert_eq!(s.blank, 1);
        assert_eq!(s.comment, 4);
        assert_eq!(s.todo, 3);
        assert_eq!(s.long_lines, 1);
        assert_eq!(s.longest_line, LONG_LINE as u64 + 1);
        assert_eq!(s.functions, 4);
        assert_eq!(s.bytes, text.len() as u64);
    }

    #[test]
    fn paths_outside_the_workspace_are_refused() {
        for path in ["", "/etc/passwd", "../x", "a/../../x"] {
            let reason = analyze(path).err().unwrap();
            assert!(reason.contains("relative"), "{path}: {reason}");
        }
    }
}
