//! Errors of the context store.

use super::{Conflict, Refusal};
use crate::store::StoreError;

/// Errors of the context store.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// No such context.
    #[error("no context `{0}`")]
    NotFound(String),
    /// A context with this id exists.
    #[error("context `{0}` already exists")]
    AlreadyExists(String),
    /// The agent is not registered (or was unregistered).
    #[error("agent `{0}` is not registered; register it first")]
    UnknownAgent(String),
    /// The agent may not do this.
    #[error("access denied: agent `{agent}` may not {operation} context `{context}`: {reason}")]
    AccessDenied {
        /// The agent.
        agent: String,
        /// What it tried.
        operation: String,
        /// The context.
        context: String,
        /// Why not.
        reason: String,
    },
    /// The strategy refused the write.
    #[error("write to `{context}` refused: {refusal}")]
    Refused {
        /// The context.
        context: String,
        /// Why.
        refusal: Refusal,
        /// The conflict recorded for it, if any.
        conflict: Option<Box<Conflict>>,
    },
    /// A request field is invalid.
    #[error("invalid `{field}`: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// Cluster mode: another host changed the context first; its newer state is installed
    /// and nothing of this operation was committed.
    #[error(
        "context `{context}` was changed on another host of the cluster while this operation ran; its newer state is now here and nothing of this operation was committed: make it again"
    )]
    ReplicaChanged {
        /// The context.
        context: String,
    },
    /// Cluster mode: the cluster's context bucket could not be asked, or refused the change;
    /// nothing was committed.
    #[error("context `{context}` cannot be changed in the cluster: {message}")]
    Cluster {
        /// The context.
        context: String,
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event bus failed.
    #[error(transparent)]
    Events(#[from] crate::events::EventError),
    /// The audit log could not record the call, so it was refused (fail-closed).
    #[error("the audit log cannot record this call: {0}")]
    AuditUnavailable(#[from] crate::audit::AuditUnavailable),
}

impl ContextError {
    pub(super) fn invalid(field: &str, message: impl Into<String>) -> Self {
        ContextError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The seed category.
    pub fn category(&self) -> crate::ErrorCategory {
        use crate::ErrorCategory::*;
        match self {
            ContextError::NotFound(_)
            | ContextError::Invalid { .. }
            | ContextError::UnknownAgent(_) => Validation,
            ContextError::AlreadyExists(_)
            | ContextError::Refused { .. }
            | ContextError::ReplicaChanged { .. } => Business,
            ContextError::AccessDenied { .. } => Security,
            ContextError::Store(_)
            | ContextError::Cluster { .. }
            | ContextError::Events(_)
            | ContextError::AuditUnavailable(_) => System,
        }
    }
}
