//! Communication channels of a coordinated run (the seeds' `CommunicationChannel`): what
//! `[[strategy.channels]]` declares, created by the run and reached by agents through the WIT
//! interface `channels` (`wit/channels.wit`).
//!
//! | type | shape | delivery | kept in |
//! |---|---|---|---|
//! | `direct` | one mailbox per consumer; `send(to, ...)` | once, in send order; a message leaves the mailbox when received | `run/<run>/channel/<id>/<msg>` |
//! | `message-queue` | one queue, competing consumers | at least once: a message not acked within `ackTimeoutMs`, or whose consumer's attempt ended, is delivered again, up to `maxDeliveries`, then dead-lettered | `run/<run>/channel/<id>/<msg>` |
//! | `event-driven` | a topic; every consumer reads every message | each attempt of a consumer reads from the first message | events of context `run/<run>/channel/<id>` |
//!
//! Every message is durable before `send` returns: a context document written by the operator
//! identity (its `state` goes from `held` to `delivered`, `acked` or `dead`; the body is
//! dropped then) or, on a topic, an event on the bus. A resumed run loads what is still held,
//! with its delivery count, so what finished producers sent is not lost.
//!
//! A channel is **closed** for a consumer once every producer is over (completed, failed for
//! good, skipped or cancelled), no send is in flight and nothing is left for it: on a queue,
//! no message is waiting or leased (a leased message may come back). `receive` then returns
//! `closed`, so a consumer loop ends without a timeout guess.
//!
//! Bounds: `maxMessageBytes` per body, `maxDepth` messages per mailbox, queue or topic, and
//! `strategy.maxChannelBytes` of bodies held over all channels of the run; past a depth or
//! byte bound `send` returns `full`. Calls are gated by the access policies (resource
//! `channel:<id>`, actions `send`, `receive`, `ack`), audited like every gate decision, and
//! counted in the agent's usage receipt.

use crate::context::{ContextService, OPERATOR};
use crate::coord::manifest::CommunicationProtocol;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub mod def;
mod durable;
mod hub;
#[cfg(test)]
mod redteam_tests;
mod state;
#[cfg(test)]
mod tests;

pub use def::{ChannelDef, DEFAULT_CHANNEL_BYTES};
pub use hub::ChannelHub;

/// Longest a `receive` waits, in ms (longer requests are shortened to it), as for
/// `events.next`.
pub const MAX_RECEIVE_TIMEOUT_MS: u32 = 60_000;

/// Why a channel call failed (the WIT `channel-error`, less what the interface layer decides:
/// `not-coordinated` and `access-denied`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelFailure {
    /// No channel with that id.
    UnknownChannel(String),
    /// The call does not fit the channel; the message says why.
    Invalid(String),
    /// The body is over `maxMessageBytes`.
    TooLarge(String),
    /// A depth or byte bound is reached.
    Full(String),
    /// Nothing more will come.
    Closed(String),
    /// The store refused or failed.
    Failed(String),
}

/// A message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The channel.
    pub channel: String,
    /// Its id within the channel.
    pub id: u64,
    /// The subtask that sent it.
    pub sender: String,
    /// The body.
    pub body: Arc<str>,
    /// Which delivery this is (1 the first time).
    pub delivery_count: u32,
}

/// Who calls: the subtask and its attempt (leases and topic cursors are per attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The subtask id.
    pub participant: String,
    /// Its attempt, from 1.
    pub attempt: u32,
}

/// A message a queue gave up on after `maxDeliveries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Its id.
    pub id: u64,
    /// Who sent it.
    pub sender: String,
    /// How many times it was delivered.
    pub deliveries: u32,
    /// Body length in bytes (the body stays readable in the context store's history of
    /// `run/<run>/channel/<channel>/<id>`).
    pub bytes: u64,
}

/// What one channel carried in a run (the run report's `channels`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelReport {
    /// The channel's type.
    #[serde(rename = "type")]
    pub kind: CommunicationProtocol,
    /// Messages sent (and stored) in this process; a resumed run counts from the resume.
    pub sent: u64,
    /// Deliveries, redeliveries included.
    pub delivered: u64,
    /// Deliveries past the first of a message (to the same consumer's later attempt, or to
    /// another consumer of a queue).
    pub redelivered: u64,
    /// Queue messages acked.
    pub acked: u64,
    /// Queue leases that passed `ackTimeoutMs` unacked.
    pub expired: u64,
    /// Queue messages dead-lettered after `maxDeliveries`.
    pub dead_lettered: Vec<DeadLetter>,
    /// Messages still held when the run ended (never received, or not acked).
    pub left: u64,
}

impl ChannelReport {
    fn new(kind: CommunicationProtocol) -> ChannelReport {
        ChannelReport {
            kind,
            sent: 0,
            delivered: 0,
            redelivered: 0,
            acked: 0,
            expired: 0,
            dead_lettered: Vec::new(),
            left: 0,
        }
    }
}
