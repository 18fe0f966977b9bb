//! The event bus (WIT interface `events`): every change to a context (and every read) is an
//! event with a global sequence number. Subscriptions are gap-free and resumable from a
//! sequence number.
//!
//! ```
//! use qi_guest_sdk::events;
//! use qi_guest_sdk::serde_json::json;
//! use qi_guest_sdk::AgentError;
//! use std::time::Duration;
//!
//! # fn demo() -> Result<(), AgentError> {
//! // Updates of one context, from now on.
//! let mut updates = events::subscribe(&["notes"], &["updated"], None)?;
//! // Ends when a second passes without an event.
//! for event in updates.iter(Duration::from_secs(1)) {
//!     let event = event?;
//!     qi_guest_sdk::log::info!("seq {} made version {}", event.seq, event.data["version"]);
//! }
//! // Later, resume exactly after what was handled.
//! let resume_at = updates.last_seq();
//! drop(updates); // unsubscribes
//! let _again = events::subscribe(&["notes"], &["updated"], Some(resume_at))?;
//!
//! events::publish("notes", 1, &json!({"progress": 0.5}))?;
//! # Ok(())
//! # }
//! ```
//!
//! Event types: `created`, `updated`, `deleted`, `shared`, `revoked`, `accessed`, `conflict`,
//! `resolved`, `rolled-back`, `custom` (what [`publish`] sends), and the agent events.

use serde::Serialize;
use std::time::Duration;

pub use crate::EventError;
use crate::wit::qi::agent::events as raw;

/// One event, with its data parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Global sequence number: strictly increasing along a subscription.
    pub seq: u64,
    /// `created`, `updated`, `deleted`, `shared`, `revoked`, `accessed`, `conflict`,
    /// `resolved`, `rolled-back`, `custom`, ...
    pub event_type: String,
    /// The context it is about.
    pub context_id: Option<String>,
    /// The agent that caused it.
    pub agent_id: Option<String>,
    /// Unix milliseconds.
    pub timestamp_ms: u64,
    /// Priority (0 lowest).
    pub priority: u8,
    /// Event data, e.g. `{"version": 4, "revision": 17, "op": "patch", "fields": ["/a"]}`
    /// for `updated` (data that is not JSON is kept as a JSON string).
    pub data: serde_json::Value,
}

impl From<raw::Event> for Event {
    fn from(e: raw::Event) -> Self {
        let data = serde_json::from_str(&e.data).unwrap_or(serde_json::Value::String(e.data));
        Event {
            seq: e.seq,
            event_type: e.event_type,
            context_id: e.context_id,
            agent_id: e.agent_id,
            timestamp_ms: e.timestamp_ms,
            priority: e.priority,
            data,
        }
    }
}

/// A live subscription. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    last_seq: u64,
    starts_after: u64,
}

/// Subscribes to the events of `context_ids` (each must be readable by the agent), of the
/// given `event_types` only (empty: all types), from now on, or resuming after `after_seq`
/// (`Some(0)`: from the beginning of the kept history).
///
/// # Errors
///
/// [`EventError::AccessDenied`] when a context is not readable by the agent,
/// [`EventError::HistoryCompacted`] when retention already dropped events after `after_seq`,
/// [`EventError::Invalid`] (no context, unknown event type, too many subscriptions).
pub fn subscribe(
    context_ids: &[&str],
    event_types: &[&str],
    after_seq: Option<u64>,
) -> Result<Subscription, EventError> {
    let context_ids: Vec<String> = context_ids.iter().map(|c| (*c).to_owned()).collect();
    let event_types: Vec<String> = event_types.iter().map(|t| (*t).to_owned()).collect();
    let made = raw::subscribe(&context_ids, &event_types, after_seq)?;
    Ok(Subscription {
        id: made.handle,
        last_seq: made.starts_after,
        starts_after: made.starts_after,
    })
}

impl Subscription {
    /// The host's handle for this subscription.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The seq the subscription started after: the `after_seq` given, or the last seq
    /// published when it was made (so a subscription "from now" knows where now was).
    pub fn starts_after(&self) -> u64 {
        self.starts_after
    }

    /// The seq of the last event this subscription delivered, or the one it
    /// [started after](Self::starts_after). Pass it as `after_seq` to resume exactly after it.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Waits up to `timeout` (the host caps a single wait at 60 s) for the next event;
    /// `Ok(None)` when none arrived in time.
    ///
    /// # Errors
    ///
    /// [`EventError::HistoryCompacted`] when the subscription fell so far behind that
    /// retention dropped events it had not seen (it has then ended),
    /// [`EventError::UnknownSubscription`] when it has ended.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Event>, EventError> {
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let event = raw::next(self.id, timeout_ms)?.map(Event::from);
        if let Some(event) = &event {
            self.last_seq = event.seq;
        }
        Ok(event)
    }

    /// The events as an iterator that ends when a wait of `timeout` yields nothing. An error
    /// is yielded once and ends the iteration.
    pub fn iter(&mut self, timeout: Duration) -> impl Iterator<Item = Result<Event, EventError>> {
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            match self.next(timeout) {
                Ok(Some(event)) => Some(Ok(event)),
                Ok(None) => {
                    done = true;
                    None
                }
                Err(error) => {
                    done = true;
                    Some(Err(error))
                }
            }
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        raw::unsubscribe(self.id);
    }
}

/// Publishes a `custom` event about a context the agent can write, with `data` serialized as
/// JSON; returns its seq.
///
/// # Errors
///
/// [`EventError::AccessDenied`] when the agent cannot write the context,
/// [`EventError::Invalid`] when `data` cannot be serialized or is too large.
pub fn publish<T: Serialize + ?Sized>(
    context_id: &str,
    priority: u8,
    data: &T,
) -> Result<u64, EventError> {
    let data = serde_json::to_string(data).map_err(|error| {
        EventError::Invalid(format!(
            "could not serialize the event data as JSON: {error}"
        ))
    })?;
    raw::publish(context_id, priority, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_is_parsed_and_non_json_kept() {
        let raw_event = |data: &str| raw::Event {
            seq: 4,
            event_type: "updated".into(),
            context_id: Some("c".into()),
            agent_id: None,
            timestamp_ms: 1,
            priority: 0,
            data: data.into(),
        };
        let e = Event::from(raw_event(r#"{"version":2}"#));
        assert_eq!(e.data["version"], 2);
        assert_eq!(e.seq, 4);
        let e = Event::from(raw_event("not json"));
        assert_eq!(e.data, serde_json::json!("not json"));
    }
}
