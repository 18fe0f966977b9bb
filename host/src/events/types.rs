//! [`EventType`], [`Event`] and [`NewEvent`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What happened. Serialized in kebab-case (`rolled-back`, `agent-registered`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    /// A context was created.
    Created,
    /// A context's document changed.
    Updated,
    /// A context was deleted.
    Deleted,
    /// A context was shared with an agent.
    Shared,
    /// A share was revoked.
    Revoked,
    /// A context was read.
    Accessed,
    /// A conflict was detected.
    Conflict,
    /// A conflict was resolved.
    Resolved,
    /// A context was rolled back to an earlier version.
    RolledBack,
    /// An agent registered.
    AgentRegistered,
    /// An agent unregistered.
    AgentUnregistered,
    /// An agent stopped heartbeating and was marked disconnected.
    AgentDisconnected,
    /// A synchronization happened (batch sync, merge).
    Sync,
    /// Anything else; `data` says what.
    Custom,
}

impl EventType {
    /// Every event type, in declaration order.
    pub const ALL: [EventType; 14] = [
        EventType::Created,
        EventType::Updated,
        EventType::Deleted,
        EventType::Shared,
        EventType::Revoked,
        EventType::Accessed,
        EventType::Conflict,
        EventType::Resolved,
        EventType::RolledBack,
        EventType::AgentRegistered,
        EventType::AgentUnregistered,
        EventType::AgentDisconnected,
        EventType::Sync,
        EventType::Custom,
    ];

    /// The kebab-case name, as serialized and stored in `events.event_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "created",
            EventType::Updated => "updated",
            EventType::Deleted => "deleted",
            EventType::Shared => "shared",
            EventType::Revoked => "revoked",
            EventType::Accessed => "accessed",
            EventType::Conflict => "conflict",
            EventType::Resolved => "resolved",
            EventType::RolledBack => "rolled-back",
            EventType::AgentRegistered => "agent-registered",
            EventType::AgentUnregistered => "agent-unregistered",
            EventType::AgentDisconnected => "agent-disconnected",
            EventType::Sync => "sync",
            EventType::Custom => "custom",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of [`EventType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown event type `{0}`; expected one of: created, updated, deleted, shared, revoked, accessed, conflict, resolved, rolled-back, agent-registered, agent-unregistered, agent-disconnected, sync, custom"
)]
pub struct UnknownEventType(pub String);

impl std::str::FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_string()))
    }
}

/// A committed event. `seq` is global, dense and in commit order: the first event is 1 and
/// each later one is exactly one more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Global sequence number.
    pub seq: u64,
    /// What happened.
    pub event_type: EventType,
    /// The context it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    /// The agent that caused it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// When it was committed, unix milliseconds (wall clock of the host).
    pub timestamp_ms: u64,
    /// Higher is more urgent; filters keep events at or above a minimum.
    pub priority: u8,
    /// Event-specific details.
    pub data: Value,
}

/// Fixed part of [`Event::live_bytes`]: the event's own fields and its slot.
pub const EVENT_OVERHEAD_BYTES: usize = 128;

impl Event {
    /// What this event counts for in the live buffer's byte bound
    /// ([`EventBusConfig::buffer_bytes`](super::EventBusConfig::buffer_bytes)): its data as
    /// stored (MessagePack bytes), its context and agent ids, and [`EVENT_OVERHEAD_BYTES`].
    pub fn live_bytes(&self) -> usize {
        self.live_bytes_with(crate::store::encode_value(&self.data).len())
    }

    /// [`live_bytes`](Self::live_bytes) given the length of the encoded data.
    pub(crate) fn live_bytes_with(&self, data_len: usize) -> usize {
        EVENT_OVERHEAD_BYTES
            + data_len
            + self.context_id.as_ref().map_or(0, String::len)
            + self.agent_id.as_ref().map_or(0, String::len)
    }
}

/// An event to publish; the bus assigns `seq` and `timestamp_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    /// What happened.
    pub event_type: EventType,
    /// The context it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    /// The agent that caused it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Higher is more urgent. Default 0.
    #[serde(default)]
    pub priority: u8,
    /// Event-specific details. Default `null`.
    #[serde(default)]
    pub data: Value,
}

impl NewEvent {
    /// An event of `event_type` with no context, no agent, priority 0 and `null` data.
    pub fn new(event_type: EventType) -> Self {
        NewEvent {
            event_type,
            context_id: None,
            agent_id: None,
            priority: 0,
            data: Value::Null,
        }
    }

    /// Sets the context id.
    pub fn context(mut self, context_id: impl Into<String>) -> Self {
        self.context_id = Some(context_id.into());
        self
    }

    /// Sets the agent id.
    pub fn agent(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the data.
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}
