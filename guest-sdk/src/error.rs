//! The two error types that cross the WIT boundary: [`AgentError`] (what `run` returns) and
//! [`ToolError`] (why a host tool call did not succeed).

use std::fmt;

/// Why a `run` failed, as reported by the agent itself (WIT `types.agent-error`).
///
/// `Display` prints the kind and the message, e.g. `invalid-input: missing field `dir``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// The task input was not what the agent expects; retrying the same input will not help.
    InvalidInput(String),
    /// A host tool call failed and the agent gave up; the message says which and why.
    ToolFailed(String),
    /// Any other failure; the message says what went wrong.
    Failed(String),
}

impl AgentError {
    /// The WIT name of the case: `invalid-input`, `tool-failed` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::InvalidInput(_) => "invalid-input",
            AgentError::ToolFailed(_) => "tool-failed",
            AgentError::Failed(_) => "failed",
        }
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            AgentError::InvalidInput(message)
            | AgentError::ToolFailed(message)
            | AgentError::Failed(message) => message,
        }
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for AgentError {}

/// A tool call failing ends the agent's run as [`AgentError::ToolFailed`], carrying the tool
/// error's text (kind and message), so `?` works on tool calls inside [`Agent::run`].
///
/// [`Agent::run`]: crate::Agent::run
impl From<ToolError> for AgentError {
    fn from(error: ToolError) -> Self {
        AgentError::ToolFailed(error.to_string())
    }
}

/// Why a tool call did not succeed (WIT `tools.tool-error`). A refusal by the host is always one
/// of these values, never a trap, so an agent can handle it.
///
/// `Display` prints the kind and the message, e.g. `limit-exceeded: maxToolCalls (10) reached`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The agent is not allowed to call this tool (not in `allowedTools`, or prohibited).
    AccessDenied(String),
    /// A budget ran out: tool calls, file operations or concurrent operations.
    LimitExceeded(String),
    /// No tool with this name is registered in the host.
    NotFound(String),
    /// The input was rejected before the tool ran (not JSON, wrong shape, too large).
    InvalidInput(String),
    /// The tool ran and failed; the message says why.
    Failed(String),
}

impl ToolError {
    /// The WIT name of the case: `access-denied`, `limit-exceeded`, `not-found`,
    /// `invalid-input` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            ToolError::AccessDenied(_) => "access-denied",
            ToolError::LimitExceeded(_) => "limit-exceeded",
            ToolError::NotFound(_) => "not-found",
            ToolError::InvalidInput(_) => "invalid-input",
            ToolError::Failed(_) => "failed",
        }
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            ToolError::AccessDenied(message)
            | ToolError::LimitExceeded(message)
            | ToolError::NotFound(message)
            | ToolError::InvalidInput(message)
            | ToolError::Failed(message) => message,
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for ToolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind() {
        let error = ToolError::LimitExceeded("maxToolCalls (3) reached".into());
        assert_eq!(
            error.to_string(),
            "limit-exceeded: maxToolCalls (3) reached"
        );
        assert_eq!(
            AgentError::from(error),
            AgentError::ToolFailed("limit-exceeded: maxToolCalls (3) reached".into())
        );
    }
}
