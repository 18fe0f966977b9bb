//! A channel as a manifest declares it (`[[strategy.channels]]`), its defaults and bounds.

use crate::coord::manifest::CommunicationProtocol;
use serde::{Deserialize, Serialize};

/// Largest `maxMessageBytes` a manifest may set: 1 MiB (the size of a sync payload).
pub const MAX_MESSAGE_BYTES: u64 = 1 << 20;
/// Default `maxMessageBytes`: 64 KiB.
pub const DEFAULT_MESSAGE_BYTES: u64 = 64 << 10;
/// Largest `maxDepth`: 100,000 messages.
pub const MAX_DEPTH: u64 = 100_000;
/// Default `maxDepth`: 1,024 messages.
pub const DEFAULT_DEPTH: u64 = 1_024;
/// Smallest `ackTimeoutMs`: 10 ms.
pub const MIN_ACK_TIMEOUT_MS: u64 = 10;
/// Largest `ackTimeoutMs`: one hour.
pub const MAX_ACK_TIMEOUT_MS: u64 = 60 * 60 * 1000;
/// Default `ackTimeoutMs`: 30 s.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 30_000;
/// Largest `maxDeliveries`: 100.
pub const MAX_DELIVERIES: u64 = 100;
/// Default `maxDeliveries`: 5.
pub const DEFAULT_DELIVERIES: u64 = 5;
/// Most channels one manifest may declare.
pub const MAX_CHANNELS: usize = 1_000;
/// Most producers plus consumers over all channels of a manifest.
pub const MAX_CHANNEL_MEMBERS: usize = 100_000;
/// Largest `strategy.maxChannelBytes`: 1 GiB.
pub const MAX_CHANNEL_BYTES: u64 = 1 << 30;
/// Default `strategy.maxChannelBytes`: 64 MiB.
pub const DEFAULT_CHANNEL_BYTES: u64 = 64 << 20;

/// One channel of a run (the seeds' `CommunicationChannel`). See `wit/channels.wit` for what
/// each type does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelDef {
    /// Unique id among the run's channels (letters, digits, `-`, `_`).
    pub id: String,
    /// `direct`, `message-queue` or `event-driven`; `strategy.communicationProtocol` when
    /// left out.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CommunicationProtocol>,
    /// Subtasks that may send.
    pub producers: Vec<String>,
    /// Subtasks that may receive (on `direct`, each has its own mailbox).
    pub consumers: Vec<String>,
    /// Longest body, in bytes. Default 64 KiB, 1 B to [`MAX_MESSAGE_BYTES`].
    #[serde(default = "default_message_bytes")]
    pub max_message_bytes: u64,
    /// Messages held at once: not yet received on `direct` (per mailbox), not yet acked on
    /// `message-queue`, sent in the whole run on `event-driven` (a topic keeps every message
    /// for consumers that start later). Default 1,024, 1 to [`MAX_DEPTH`].
    #[serde(default = "default_depth")]
    pub max_depth: u64,
    /// `message-queue` only: a delivered message not acked this long after delivery is
    /// delivered again. Default 30 s, [`MIN_ACK_TIMEOUT_MS`] to [`MAX_ACK_TIMEOUT_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    /// `message-queue` only: deliveries before a message is dead-lettered (listed in the run
    /// report and never delivered again). Default 5, 1 to [`MAX_DELIVERIES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u64>,
}

fn default_message_bytes() -> u64 {
    DEFAULT_MESSAGE_BYTES
}

fn default_depth() -> u64 {
    DEFAULT_DEPTH
}

impl ChannelDef {
    /// The channel's type: its own, else the manifest's `communicationProtocol`.
    pub fn kind_or(&self, protocol: CommunicationProtocol) -> CommunicationProtocol {
        self.kind.unwrap_or(protocol)
    }

    /// `ackTimeoutMs` with its default.
    pub fn ack_timeout_ms(&self) -> u64 {
        self.ack_timeout_ms.unwrap_or(DEFAULT_ACK_TIMEOUT_MS)
    }

    /// `maxDeliveries` with its default.
    pub fn max_deliveries(&self) -> u32 {
        u32::try_from(self.max_deliveries.unwrap_or(DEFAULT_DELIVERIES)).unwrap_or(u32::MAX)
    }
}

impl CommunicationProtocol {
    /// The type's name, as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            CommunicationProtocol::Direct => "direct",
            CommunicationProtocol::MessageQueue => "message-queue",
            CommunicationProtocol::EventDriven => "event-driven",
        }
    }
}
