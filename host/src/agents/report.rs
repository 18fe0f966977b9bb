//! What an agent is and did: its status, its description, its task and its report.

use crate::error::{AgentFailure, ErrorCategory};
use crate::sandbox::{HostCallRecord, LogRecord, UsageReceipt};
use crate::spec::AgentType;
use serde::Serialize;

/// Where an agent is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentStatus {
    /// Store built; instantiating and asking `describe`.
    Initializing,
    /// Instantiated and described; waiting for its task.
    Ready,
    /// Running its task.
    Executing,
    /// Finished its task with a result.
    Completed,
    /// Ended with a failure.
    Failed,
    /// Stopped by `terminate`.
    Terminated,
}

/// What a component says about itself (`describe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentDescription {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Declared agent type.
    pub agent_type: AgentType,
    /// Declared capabilities.
    pub capabilities: Vec<String>,
    /// One sentence.
    pub description: String,
}

/// A task for an agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRequest {
    /// Task id; the host assigns one when `None`.
    pub id: Option<String>,
    /// What to do.
    pub description: String,
    /// Input document.
    pub input: serde_json::Value,
}

impl TaskRequest {
    /// A task with a description and input.
    pub fn new(description: impl Into<String>, input: serde_json::Value) -> Self {
        TaskRequest {
            id: None,
            description: description.into(),
            input,
        }
    }
}

/// The outcome of one agent's task, with its measured usage.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    /// Host-assigned agent id.
    pub agent_id: String,
    /// The task id.
    pub task_id: String,
    /// What the component said about itself, when it got that far.
    pub agent: Option<AgentDescription>,
    /// Final status: completed, failed or terminated.
    pub status: AgentStatus,
    /// The agent's output, on success.
    pub output: Option<serde_json::Value>,
    /// Why it failed, otherwise.
    pub failure: Option<AgentFailure>,
    /// The failure's category.
    pub error_category: Option<ErrorCategory>,
    /// Measured usage.
    pub usage: UsageReceipt,
    /// Log records the agent emitted (first 1,000).
    pub logs: Vec<LogRecord>,
    /// Every host call, when the agent was monitored.
    pub host_call_log: Vec<HostCallRecord>,
    /// What the guest wrote to stdout (first 64 KiB).
    pub stdout: String,
    /// What the guest wrote to stderr (first 64 KiB).
    pub stderr: String,
    /// The audit log's head once the run's entries were written (set by `qi-host run-agent`
    /// with `--data-dir`; `None` otherwise): keep it outside the host as an anchor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<crate::audit::AuditHead>,
}

impl AgentReport {
    /// The output, or the failure as an error.
    pub fn into_result(self) -> std::result::Result<serde_json::Value, AgentFailure> {
        match (self.output, self.failure) {
            (Some(output), None) => Ok(output),
            (_, Some(f)) => Err(f),
            (None, None) => Err(AgentFailure::Host {
                message: "report has neither output nor failure".into(),
            }),
        }
    }
}
