//! `file-stats`: walks a directory with `std::fs` (WASI filesystem) and counts lines, words and
//! bytes per file, so the host's tests can check preopens, read-only mounts and file-operation
//! limits with real filesystem traffic.
//!
//! Input: `{"dir": "<path>"}` (default `/workspace`). Output:
//! `{"files": [{"path", "lines", "words", "bytes"}], "total": {"files", "lines", "words", "bytes"}}`
//! with files sorted by path. Only regular files are read; symlinks are not followed.

use std::fs;
use std::path::{Path, PathBuf};

use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};
use serde::{Deserialize, Serialize};

/// The `file-stats` agent.
pub struct FileStats;

#[derive(Deserialize)]
struct Input {
    #[serde(default = "default_dir")]
    dir: String,
}

fn default_dir() -> String {
    "/workspace".to_owned()
}

#[derive(Serialize)]
struct FileStat {
    path: String,
    lines: u64,
    words: u64,
    bytes: u64,
}

#[derive(Serialize, Default)]
struct Total {
    files: u64,
    lines: u64,
    words: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct Output {
    files: Vec<FileStat>,
    total: Total,
}

impl Agent for FileStats {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "file-stats".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Specialized,
            capabilities: vec!["code-analysis".into(), "file-stats".into()],
            description: "Counts lines, words and bytes of every file under a directory.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let dir = task
            .input_json::<Option<Input>>()?
            .map_or_else(default_dir, |input| input.dir);
        log::info!(dir = dir; "collecting file statistics");

        let mut paths = Vec::new();
        collect_files(Path::new(&dir), &mut paths)?;
        paths.sort();

        let mut files = Vec::with_capacity(paths.len());
        let mut total = Total::default();
        for path in paths {
            let contents = fs::read(&path).map_err(|error| fs_error(&path, &error))?;
            let stat = count(path.display().to_string(), &contents);
            total.files += 1;
            total.lines += stat.lines;
            total.words += stat.words;
            total.bytes += stat.bytes;
            files.push(stat);
        }
        TaskOutput::json(&Output { files, total })
    }
}

/// Pushes every regular file under `dir` (recursively) onto `files`.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), AgentError> {
    let entries = fs::read_dir(dir).map_err(|error| fs_error(dir, &error))?;
    for entry in entries {
        let entry = entry.map_err(|error| fs_error(dir, &error))?;
        let path = entry.path();
        // `DirEntry::file_type` does not follow symlinks.
        let file_type = entry.file_type().map_err(|error| fs_error(&path, &error))?;
        if file_type.is_dir() {
            collect_files(&path, files)?;
        } else if file_type.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

/// Lines as `str::lines` counts them (a last line without `\n` counts), words as runs of
/// non-whitespace bytes.
fn count(path: String, contents: &[u8]) -> FileStat {
    let newlines = contents.iter().filter(|&&byte| byte == b'\n').count() as u64;
    let unterminated_last_line = u64::from(contents.last().is_some_and(|&byte| byte != b'\n'));
    let words = contents
        .split(|byte| byte.is_ascii_whitespace())
        .filter(|word| !word.is_empty())
        .count() as u64;
    FileStat {
        path,
        lines: newlines + unterminated_last_line,
        words,
        bytes: contents.len() as u64,
    }
}

fn fs_error(path: &Path, error: &std::io::Error) -> AgentError {
    AgentError::Failed(format!("{}: {error}", path.display()))
}

qi_guest_sdk::export_agent!(FileStats);

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_like_str_lines_and_split_whitespace() {
        let stat = count("a".into(), b"hello world\nsecond line");
        assert_eq!((stat.lines, stat.words, stat.bytes), (2, 4, 23));
        let stat = count("b".into(), b"one\n\n  two\n");
        assert_eq!((stat.lines, stat.words, stat.bytes), (3, 2, 11));
        let stat = count("c".into(), b"");
        assert_eq!((stat.lines, stat.words, stat.bytes), (0, 0, 0));
    }
}
