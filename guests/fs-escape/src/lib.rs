//! `fs-escape`: tries to reach files outside its preopened directory, so the host's tests can
//! check that every attempt fails (and that a read-only mount refuses writes).
//!
//! Output: `{"attempts": [{"op": "read" | "write" | "list", "path", "ok": bool,
//! "error": "..." | null}]}`. The agent itself never fails.

use std::fs;
use std::io;

use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};
use serde::Serialize;

/// The `fs-escape` agent.
pub struct FsEscape;

#[derive(Serialize)]
struct Attempt {
    op: &'static str,
    path: &'static str,
    ok: bool,
    error: Option<String>,
}

impl Attempt {
    fn new(op: &'static str, path: &'static str, result: io::Result<()>) -> Attempt {
        let error = result.err().map(|error| error.to_string());
        Attempt {
            op,
            path,
            ok: error.is_none(),
            error,
        }
    }
}

impl Agent for FsEscape {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "fs-escape".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["sandbox-probe".into()],
            description: "Tries to read, write and list outside its preopened directory.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        log::info!(task_id = task.id; "probing the filesystem sandbox");
        let read = |path| fs::read(path).map(drop);
        let attempts = vec![
            Attempt::new("read", "/etc/passwd", read("/etc/passwd")),
            Attempt::new("read", "../outside.txt", read("../outside.txt")),
            Attempt::new(
                "read",
                "/workspace/../outside.txt",
                read("/workspace/../outside.txt"),
            ),
            // The host's test places a symlink here that points outside the preopen.
            Attempt::new("read", "/workspace/link-out", read("/workspace/link-out")),
            Attempt::new(
                "write",
                "/workspace/escape-write.txt",
                fs::write("/workspace/escape-write.txt", b"written by fs-escape\n"),
            ),
            Attempt::new(
                "list",
                "/",
                fs::read_dir("/")
                    .and_then(|mut entries| entries.try_for_each(|entry| entry.map(drop))),
            ),
        ];
        TaskOutput::json(&qi_guest_sdk::serde_json::json!({ "attempts": attempts }))
    }
}

qi_guest_sdk::export_agent!(FsEscape);
