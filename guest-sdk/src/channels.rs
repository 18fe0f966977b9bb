//! Communication channels of a coordinated run (WIT interface `channels`, see
//! `wit/channels.wit`).
//!
//! Under `qi-host run <manifest>` the manifest declares each channel
//! (`[[strategy.channels]]`): its id, its type, the subtasks that may send on it (`producers`)
//! and those that may receive from it (`consumers`), and its bounds (`maxMessageBytes`,
//! `maxDepth`, for a queue `ackTimeoutMs` and `maxDeliveries`). The run creates exactly those
//! channels; there are no others. A body is text, usually JSON ([`send_json`],
//! [`Message::json`]).
//!
//! - `direct`: one bounded mailbox per consumer. A producer sends to one consumer by name
//!   ([`send_to`]); the consumer receives its own messages in send order. A message is
//!   delivered once: it leaves the mailbox when it is received.
//! - `message-queue`: one durable work queue shared by the consumers. [`receive`] hands out the
//!   oldest available message to one consumer, which must [`ack`](Message::ack) it within
//!   `ackTimeoutMs`. A message whose consumer failed, was terminated, finished or timed out
//!   without acking is delivered again (at-least-once: [`Message::delivery_count`] says which
//!   delivery it is, so make handling a message idempotent), up to `maxDeliveries`, after which
//!   it is dead-lettered and listed in the run report.
//! - `event-driven`: a topic on the event bus. Every consumer receives every message, in send
//!   order, from the first one of the run (each attempt of a consumer starts from the first).
//!
//! Every message is durable before [`send`] returns, so a resumed run still has what finished
//! producers sent. A channel is *closed* once every producer is over (completed, failed for
//! good, skipped or cancelled) and nothing is left for the caller: [`receive`] then returns
//! [`ChannelError::Closed`], and [`messages`] ends.
//!
//! ```
//! use qi_guest_sdk::channels::{self, ChannelError};
//! use qi_guest_sdk::serde_json::json;
//! use qi_guest_sdk::AgentError;
//! use std::time::Duration;
//!
//! # fn demo() -> Result<(), AgentError> {
//! // A producer: one job per item, stored durably before `send_json` returns.
//! for n in 0..3 {
//!     let id = channels::send_json("jobs", &json!({"n": n}))?;
//!     qi_guest_sdk::log::info!("sent job {n} as message {id}");
//! }
//! // On a `direct` channel, to one consumer's mailbox.
//! channels::send_to("replies", "consume-a", "hello")?;
//!
//! // A consumer: every message until the producers are over; waits of a second at a time.
//! for message in channels::messages("jobs", Duration::from_secs(1)) {
//!     let message = message?;
//!     let job: qi_guest_sdk::serde_json::Value = message.json()?;
//!     if message.delivery_count > 1 {
//!         qi_guest_sdk::log::warn!("job {job} again: delivery {}", message.delivery_count);
//!     }
//!     // ... handle the job, then tell the queue it is done ...
//!     message.ack()?;
//! }
//!
//! // One wait, with the outcomes told apart.
//! match channels::receive("jobs", Duration::from_millis(200)) {
//!     Ok(Some(message)) => message.ack()?,
//!     Ok(None) => {} // nothing within 200 ms
//!     Err(ChannelError::Closed(_)) => {} // no message will come any more
//!     Err(error) => return Err(error.into()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Outside a coordinated run (`qi-host run-agent`) every call returns
//! [`ChannelError::NotCoordinated`]. `?` on a [`ChannelError`] inside [`Agent::run`] ends the
//! run as [`AgentError::Failed`](crate::AgentError::Failed).
//!
//! [`Agent::run`]: crate::Agent::run

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

pub use crate::ChannelError;
use crate::wit::qi::agent::channels as raw;

/// The longest single wait of [`receive`]: 60 s, the host's limit (`timeout-ms` is at most
/// 60,000). A longer timeout waits this long.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The channel it came from.
    pub channel: String,
    /// Its id: unique within the channel, increasing in send order. [`Message::ack`] passes it.
    pub id: u64,
    /// The subtask that sent it.
    pub sender: String,
    /// The body, as sent.
    pub body: String,
    /// Which delivery this is: 1 the first time; more when an earlier consumer of a
    /// `message-queue` message did not ack it.
    pub delivery_count: u32,
}

impl From<raw::Message> for Message {
    fn from(m: raw::Message) -> Self {
        Message {
            channel: m.channel,
            id: m.id,
            sender: m.sender,
            body: m.body,
            delivery_count: m.delivery_count,
        }
    }
}

impl Message {
    /// Parses the body (JSON text) as `T`.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Invalid`] naming the channel, the message, its sender and the expected
    /// type when the body is not a valid `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ChannelError> {
        serde_json::from_str(&self.body).map_err(|error| {
            ChannelError::Invalid(format!(
                "message {} on `{}` from `{}` is not a valid `{}`: {error}",
                self.id,
                self.channel,
                self.sender,
                crate::task::short_type_name::<T>()
            ))
        })
    }

    /// Acknowledges this message: on a `message-queue` channel it is done and will not be
    /// delivered again. See [`ack`].
    ///
    /// # Errors
    ///
    /// As [`ack`].
    pub fn ack(&self) -> Result<(), ChannelError> {
        ack(&self.channel, self.id)
    }
}

fn to_json<T: Serialize + ?Sized>(channel: &str, value: &T) -> Result<String, ChannelError> {
    serde_json::to_string(value).map_err(|error| {
        ChannelError::Invalid(format!(
            "could not serialize a message for `{channel}` as JSON: {error}"
        ))
    })
}

/// Sends `body` on `channel` (a `message-queue` or `event-driven` one) and returns the
/// message's id once it is stored durably.
///
/// # Errors
///
/// [`ChannelError::NotCoordinated`], [`ChannelError::UnknownChannel`],
/// [`ChannelError::Invalid`] (the caller is not a producer of the channel, or the channel is
/// `direct`: use [`send_to`]), [`ChannelError::TooLarge`] (over `maxMessageBytes`),
/// [`ChannelError::Full`] (the channel holds `maxDepth` messages: send again later),
/// [`ChannelError::AccessDenied`], [`ChannelError::Failed`].
pub fn send(channel: &str, body: &str) -> Result<u64, ChannelError> {
    raw::send(channel, None, body)
}

/// Sends `body` on the `direct` channel `channel` to the consumer `to` (a subtask id) and
/// returns the message's id once it is stored durably.
///
/// # Errors
///
/// As [`send`]; [`ChannelError::Invalid`] also when the channel is not `direct` or `to` is not
/// one of its consumers, and [`ChannelError::Full`] when `to`'s mailbox holds `maxDepth`
/// messages.
pub fn send_to(channel: &str, to: &str, body: &str) -> Result<u64, ChannelError> {
    raw::send(channel, Some(to), body)
}

/// [`send`] with `value` serialized as JSON.
///
/// # Errors
///
/// As [`send`]; [`ChannelError::Invalid`] also when `value` cannot be serialized.
pub fn send_json<T: Serialize + ?Sized>(channel: &str, value: &T) -> Result<u64, ChannelError> {
    send(channel, &to_json(channel, value)?)
}

/// [`send_to`] with `value` serialized as JSON.
///
/// # Errors
///
/// As [`send_to`]; [`ChannelError::Invalid`] also when `value` cannot be serialized.
pub fn send_json_to<T: Serialize + ?Sized>(
    channel: &str,
    to: &str,
    value: &T,
) -> Result<u64, ChannelError> {
    send_to(channel, to, &to_json(channel, value)?)
}

/// Waits up to `timeout` (at most [`MAX_WAIT`]) for the next message on `channel` for the
/// caller; `Ok(None)` when the time passed first.
///
/// On a `message-queue` channel the message is the caller's until it [acks](Message::ack) it
/// or `ackTimeoutMs` passes, after which it is delivered again.
///
/// # Errors
///
/// [`ChannelError::Closed`] once no message can come any more (every producer is over and
/// nothing is left for the caller); [`ChannelError::NotCoordinated`],
/// [`ChannelError::UnknownChannel`], [`ChannelError::Invalid`] (the caller is not a consumer of
/// the channel), [`ChannelError::AccessDenied`], [`ChannelError::Failed`].
pub fn receive(channel: &str, timeout: Duration) -> Result<Option<Message>, ChannelError> {
    raw::receive(channel, wait_ms(timeout)).map(|message| message.map(Message::from))
}

/// Acknowledges the `message-queue` message `id` of `channel`, which the caller received: it is
/// done and will not be delivered again.
///
/// # Errors
///
/// [`ChannelError::Invalid`] when the channel is not a `message-queue` (its messages need no
/// ack) or the message is not one the caller holds (never received, already acked, or
/// delivered to another consumer after `ackTimeoutMs`); [`ChannelError::NotCoordinated`],
/// [`ChannelError::UnknownChannel`], [`ChannelError::AccessDenied`], [`ChannelError::Failed`].
pub fn ack(channel: &str, id: u64) -> Result<(), ChannelError> {
    raw::ack(channel, id)
}

/// Every message of `channel` for the caller, as an iterator that waits up to
/// `timeout_per_wait` at a time (at most [`MAX_WAIT`]) and waits again when a wait yields
/// nothing. It ends when the channel is [closed](ChannelError::Closed); any other error is
/// yielded once and ends it.
///
/// It does not ack: on a `message-queue` channel, [`Message::ack`] each message once it is
/// handled.
pub fn messages(
    channel: &str,
    timeout_per_wait: Duration,
) -> impl Iterator<Item = Result<Message, ChannelError>> {
    let channel = channel.to_owned();
    until_closed(move || receive(&channel, timeout_per_wait))
}

/// The messages `receive` returns, waiting again on `Ok(None)`, until it returns
/// [`ChannelError::Closed`] (the end) or another error (yielded, then the end).
fn until_closed(
    mut receive: impl FnMut() -> Result<Option<Message>, ChannelError>,
) -> impl Iterator<Item = Result<Message, ChannelError>> {
    let mut done = false;
    std::iter::from_fn(move || {
        while !done {
            match receive() {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) => continue,
                Err(ChannelError::Closed(_)) => done = true,
                Err(error) => {
                    done = true;
                    return Some(Err(error));
                }
            }
        }
        None
    })
}

/// `timeout` in whole milliseconds, capped at [`MAX_WAIT`].
fn wait_ms(timeout: Duration) -> u32 {
    u32::try_from(timeout.min(MAX_WAIT).as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::VecDeque;

    fn message(id: u64, body: &str) -> Message {
        Message::from(raw::Message {
            channel: "jobs".into(),
            id,
            sender: "produce".into(),
            body: body.into(),
            delivery_count: 2,
        })
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Job {
        n: u32,
    }

    #[test]
    fn message_bodies_parse_and_name_failures() {
        let m = message(7, r#"{"n": 3}"#);
        assert_eq!(m.delivery_count, 2);
        assert_eq!(m.sender, "produce");
        assert_eq!(m.json::<Job>().unwrap(), Job { n: 3 });
        assert_eq!(m.json::<serde_json::Value>().unwrap(), json!({"n": 3}));

        let error = message(8, "not json").json::<Job>().unwrap_err();
        assert_eq!(error.kind(), "invalid");
        let text = error.to_string();
        for part in ["message 8", "`jobs`", "`produce`", "`Job`"] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        let error = message(9, r#"{"m": 1}"#).json::<Job>().unwrap_err();
        assert!(error.message().contains("missing field `n`"), "{error}");
    }

    #[test]
    fn waits_are_whole_milliseconds_capped_at_the_hosts_limit() {
        assert_eq!(wait_ms(Duration::ZERO), 0);
        assert_eq!(wait_ms(Duration::from_micros(1_999)), 1);
        assert_eq!(wait_ms(Duration::from_millis(250)), 250);
        assert_eq!(wait_ms(MAX_WAIT), 60_000);
        assert_eq!(wait_ms(Duration::from_secs(61)), 60_000);
        assert_eq!(wait_ms(Duration::MAX), 60_000);
    }

    /// The iterator over a scripted sequence of `receive` results; panics if it asks for more.
    fn drain(
        script: Vec<Result<Option<Message>, ChannelError>>,
    ) -> (Vec<Result<Message, ChannelError>>, usize) {
        let mut script = VecDeque::from(script);
        let mut calls = 0;
        let items = until_closed(|| {
            calls += 1;
            script.pop_front().expect("receive called after the end")
        })
        .collect();
        (items, calls)
    }

    #[test]
    fn messages_wait_again_on_timeouts_and_end_when_closed() {
        let (items, calls) = drain(vec![
            Ok(None),
            Ok(Some(message(1, "a"))),
            Ok(None),
            Ok(None),
            Ok(Some(message(2, "b"))),
            Err(ChannelError::Closed("over".into())),
        ]);
        let ids: Vec<u64> = items.into_iter().map(|m| m.unwrap().id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(calls, 6);
    }

    #[test]
    fn messages_yield_another_error_once_and_end() {
        let (items, calls) = drain(vec![
            Ok(Some(message(1, "a"))),
            Err(ChannelError::Invalid("not a consumer".into())),
        ]);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap().id, 1);
        assert_eq!(
            items[1],
            Err(ChannelError::Invalid("not a consumer".into()))
        );
        assert_eq!(calls, 2);

        let (items, _) = drain(vec![Err(ChannelError::Closed("none sent".into()))]);
        assert!(items.is_empty());
    }
}
