//! [`EventError`].

use crate::store::StoreError;

/// A failure of the event bus or of one subscription.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The events after `requested - 1` are no longer retained, so delivering from there
    /// would leave a gap. Resubscribe from [`SubscribeFrom::Now`](super::SubscribeFrom::Now) or
    /// from `oldest - 1` (accepting the loss), or raise `EventBusConfig::retention`.
    #[error(
        "event {requested} is no longer retained (the oldest kept is {oldest}); resubscribe \
         from `now` or from seq {} and accept the gap, or raise the bus's retention",
        oldest.saturating_sub(1)
    )]
    HistoryCompacted {
        /// The first seq the subscriber still needed.
        requested: u64,
        /// The oldest seq still stored.
        oldest: u64,
    },
    /// The subscription was ended by [`EventBus::unsubscribe`](super::EventBus::unsubscribe).
    #[error("the subscription was unsubscribed")]
    Unsubscribed,
    /// The event bus was dropped; no more events will come.
    #[error("the event bus was shut down")]
    Closed,
    /// A filter given on the command line (or elsewhere as text) is malformed.
    #[error("invalid event filter `{key}`: {message}")]
    InvalidFilter {
        /// The offending key (or pair).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An [`EventBusConfig`](super::EventBusConfig) field is unusable.
    #[error("invalid event bus configuration `{field}`: {message}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is allowed.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<EventError> for crate::Error {
    fn from(error: EventError) -> Self {
        match error {
            EventError::InvalidFilter { key, message } => {
                crate::Error::field(format!("filter.{key}"), message)
            }
            other => crate::Error::System(anyhow::Error::new(other)),
        }
    }
}
