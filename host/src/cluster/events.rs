//! Shared events: every host's committed events on one JetStream stream, in the form
//! [`ClusterEvent`]. The forwarder that puts them there is [`forward`](super::forward), the
//! reader [`subscription`](super::subscription).
//!
//! **Subjects.** An event about context `c` goes on `qi.events.ctx.<token>`, where the token
//! is [`Cluster::context_token`] (a keyed hash with a master key, else
//! [`subject::token`](super::subject::token)); any other on `qi.events.host.<host>`. The payload is the
//! JSON of [`ClusterEvent`] (`host`, `instance`, `event`), sealed when the host has a master
//! key. An event whose payload would not fit in a message of the stream (the smallest of
//! [`MAX_MESSAGE_BYTES`], the stream's `max_msg_size` and the server's `max_payload`, less
//! [`FRAMING_BYTES`]) is forwarded with its `data` replaced by
//! `{"dataOmitted": true, "bytes": n}`; the full event stays in the host's record.
//!
//! **Identity.** `instance` is the host's data-directory id (`Store::host_id`, 128 random
//! bits): two hosts given the same name, or one whose data directory was replaced, still
//! never share message ids (`Nats-Msg-Id: <instance>:<seq>:<digest>`), and a subscriber tells their
//! events apart.

use super::streams::MAX_MESSAGE_BYTES;
use super::{Cluster, subject};
use crate::events::Event;
use serde::{Deserialize, Serialize};

/// Room left in a message for what is not the event's JSON, in bytes: the headers
/// (`Nats-Msg-Id: <32 hex>:<seq>[:<n>]`, about 80 bytes) and the seal (47 bytes), with
/// margin. A stream's `max_msg_size` counts headers and payload together.
pub const FRAMING_BYTES: usize = 512;

/// An event as the cluster carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEvent {
    /// Its sequence in the events stream (0 before it is published).
    #[serde(skip)]
    pub stream_seq: u64,
    /// The name of the host that committed it.
    pub host: String,
    /// That host's data-directory id (see the module docs).
    pub instance: String,
    /// The event as that host committed it (`seq` is that host's local seq).
    pub event: Event,
}

/// The subject of an event committed on host `host`.
pub fn event_subject(cluster: &Cluster, host: &str, event: &Event) -> String {
    match &event.context_id {
        Some(c) => format!("qi.events.ctx.{}", cluster.context_token(c)),
        None => format!("qi.events.host.{}", subject::token(host)),
    }
}

/// The subject filter for the events of context `context`, or of every context and host.
pub fn filter_subject(cluster: &Cluster, context: Option<&str>) -> String {
    match context {
        Some(c) => format!("qi.events.ctx.{}", cluster.context_token(c)),
        None => super::streams::EVENTS_SUBJECTS.to_string(),
    }
}

/// The JSON of `wire`, with its data omitted when the JSON would pass `max_message`
/// (bytes, framing included: see the module docs).
pub fn encode(mut wire: ClusterEvent, max_message: usize) -> Vec<u8> {
    let json = serde_json::to_vec(&wire).expect("an event serializes");
    if json.len() + FRAMING_BYTES <= max_message {
        return json;
    }
    wire.event.data = serde_json::json!({"dataOmitted": true, "bytes": json.len()});
    serde_json::to_vec(&wire).expect("an event serializes")
}

/// The largest message the forwarder sends: [`MAX_MESSAGE_BYTES`], or less when the stream
/// (`max_message_size`, if set) or the server (`max_payload`) allows less.
pub fn message_limit(stream_max: i32, server_max: usize) -> usize {
    let mut limit = MAX_MESSAGE_BYTES.min(server_max.max(1));
    if stream_max > 0 {
        limit = limit.min(stream_max as usize);
    }
    limit
}
