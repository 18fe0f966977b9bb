//! `hostile`: attacks the sandbox from inside, one attack per mode, so the host's tests can
//! check that every wall holds and that each attack ends with its own precise error.
//!
//! Input: `{"mode": "<wall>.<attack>", ...}` where `<wall>` is `fs` (filesystem: links,
//! handles, disk), `net` (sockets and name resolution) or `host` (host-call arguments, output,
//! stdio, exit, identity). Each wall's modes, their extra input and their output are documented
//! in its module. A mode reports what the host let it do (the walls are judged by the tests,
//! not by the agent); an unknown mode is `invalid-input`.

mod fs;
mod fs_wasi;
mod host;
mod net;

use qi_guest_sdk::serde_json::Value;
use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput};

/// The `hostile` agent.
pub struct Hostile;

impl Agent for Hostile {
    /// With a directory mounted at `/describe` holding a file `bytes` (a number N), the
    /// description is N bytes long: the host's bound on `describe()` is tested that way (the
    /// task input is not known yet when `describe` runs). With a file `spin` there, it never
    /// returns; with `sleep_ms` (a number), it sleeps that long first.
    fn describe() -> AgentInfo {
        // A file `/describe/spin`: `describe()` computes for ever (the host's limits on an
        // agent that never finishes starting are tested that way).
        if let Ok(ms) = std::fs::read_to_string("/describe/sleep_ms") {
            std::thread::sleep(std::time::Duration::from_millis(
                ms.trim().parse().unwrap_or(0),
            ));
        }
        if std::fs::metadata("/describe/spin").is_ok() {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        let description = match std::fs::read_to_string("/describe/bytes") {
            Ok(n) => "d".repeat(n.trim().parse().unwrap_or(0)),
            Err(_) => "Attacks one sandbox wall per mode (fs.*, net.*, host.*).".into(),
        };
        AgentInfo {
            name: "hostile".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["sandbox-probe".into()],
            description,
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input: Value = task.input_json()?;
        // In a coordinated run the attack comes in the subtask's inputs.
        let input = match input.get("inputs") {
            Some(inputs) if inputs.get("mode").is_some() => inputs.clone(),
            _ => input,
        };
        let mode = input["mode"].as_str().unwrap_or_default().to_string();
        match mode.split_once('.') {
            Some(("fs", attack)) => fs::run(attack, &input),
            Some(("net", attack)) => net::run(attack, &input),
            Some(("host", attack)) => host::run(attack, &input),
            _ => Err(unknown(&mode)),
        }
    }
}

/// The error for a mode no module knows.
fn unknown(mode: &str) -> AgentError {
    AgentError::InvalidInput(format!(
        "unknown mode `{mode}`; use `fs.<attack>`, `net.<attack>` or `host.<attack>`"
    ))
}

qi_guest_sdk::export_agent!(Hostile);
