//! The one error a `qi-host serve` operation returns: a kind (what HTTP status and MCP
//! result it becomes) and a one-line message naming the field and how to fix it.

use std::time::Duration;

/// What went wrong, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpErrorKind {
    /// Bad arguments (HTTP 400).
    Invalid,
    /// No such agent, manifest, run or context (HTTP 404).
    NotFound,
    /// A policy, the context's sharing or ownership refused it (HTTP 403).
    Denied,
    /// A bound was reached: the request rate or runs in progress (HTTP 429).
    Limit,
    /// A request body or a call's arguments are larger than allowed (HTTP 413).
    TooLarge,
    /// The server is stopping, or its audit log cannot record (HTTP 503).
    Unavailable,
    /// The host failed (HTTP 500).
    Failed,
}

/// An operation's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    /// What kind.
    pub kind: OpErrorKind,
    /// One line: what is wrong, and how to fix it.
    pub message: String,
    /// For `Limit` on the request rate: when to retry.
    pub retry_after: Option<Duration>,
}

impl OpError {
    fn new(kind: OpErrorKind, message: impl Into<String>) -> OpError {
        // One line, whatever the cause said.
        let message: String = message.into();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        OpError {
            kind,
            message,
            retry_after: None,
        }
    }

    /// Bad input.
    pub fn invalid(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Invalid, message)
    }

    /// Nothing by that name.
    pub fn not_found(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::NotFound, message)
    }

    /// Refused.
    pub fn denied(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Denied, message)
    }

    /// A bound.
    pub fn limit(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Limit, message)
    }

    /// Too large.
    pub fn too_large(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::TooLarge, message)
    }

    /// Not now.
    pub fn unavailable(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Unavailable, message)
    }

    /// The host failed.
    pub fn failed(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Failed, message)
    }

    /// The HTTP status it becomes.
    pub fn status(&self) -> u16 {
        match self.kind {
            OpErrorKind::Invalid => 400,
            OpErrorKind::NotFound => 404,
            OpErrorKind::Denied => 403,
            OpErrorKind::Limit => 429,
            OpErrorKind::TooLarge => 413,
            OpErrorKind::Unavailable => 503,
            OpErrorKind::Failed => 500,
        }
    }

    /// As JSON: `{"error": {"kind": ..., "message": ...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"kind": self.kind, "message": self.message}})
    }
}

impl From<crate::context::ContextError> for OpError {
    fn from(e: crate::context::ContextError) -> OpError {
        use crate::context::ContextError as C;
        match &e {
            C::NotFound(_) => OpError::not_found(e.to_string()),
            C::AccessDenied { .. } => OpError::denied(e.to_string()),
            C::Invalid { .. } | C::UnknownAgent(_) | C::AlreadyExists(_) | C::Refused { .. } => {
                OpError::invalid(e.to_string())
            }
            // Another host changed it first (make the call again), or NATS is out of reach.
            C::AuditUnavailable(_) | C::ReplicaChanged { .. } | C::Cluster { .. } => {
                OpError::unavailable(e.to_string())
            }
            C::Store(_) | C::Events(_) => OpError::failed(e.to_string()),
        }
    }
}

impl From<crate::error::Error> for OpError {
    fn from(e: crate::error::Error) -> OpError {
        use crate::error::ErrorCategory as K;
        match e.category() {
            K::Validation => OpError::invalid(e.to_string()),
            K::Security => OpError::denied(e.to_string()),
            // The host's own capacity (live agents, memory): retry later.
            K::Resource => OpError::unavailable(e.to_string()),
            K::Business | K::System => OpError::failed(e.to_string()),
        }
    }
}
