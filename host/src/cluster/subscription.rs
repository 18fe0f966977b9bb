//! Reading the cluster's events: [`ClusterSubscription`].
//!
//! An ordered consumer on [`EVENTS_STREAM`](super::streams::EVENTS_STREAM): the events of
//! every host (or of one context) in stream order, each once, resumable after a stream
//! sequence ([`StartAt::AfterStreamSeq`]).
//!
//! - **Gaps.** Resuming after events the stream has dropped (past
//!   [`ClusterConfig::events_max_bytes`](super::ClusterConfig::events_max_bytes)), or the
//!   stream dropping events the subscriber had not read yet, fails with
//!   [`ClusterError::Compacted`]; the subscription never skips silently. The check is
//!   conservative for a subscription to one context: the stream cannot say which subjects
//!   the messages it dropped had, so any drop past the subscriber's position is reported,
//!   even one of only other contexts' events.
//! - **Peers that are not qi-host.** Anyone allowed to publish on `qi.events.>` can put
//!   messages there. A message that does not decode (not qi-host's JSON, sealed under another
//!   key, moved from another subject) is skipped and counted ([`skipped`]
//!   (ClusterSubscription::skipped)), with a warning; with a master key, only hosts holding it
//!   can write events a subscriber accepts. A replay of an event this subscription has
//!   returned (the same instance, local seq and content) is dropped and counted
//!   ([`replays`](ClusterSubscription::replays)); it remembers the last
//!   [`MAX_TRACKED_EVENTS`] events it returned (least recent forgotten first), so an older
//!   replay, or one reaching a new subscription, is returned again. Events whose instance id
//!   is longer than 64 characters or unprintable are skipped.

use super::events::{ClusterEvent, filter_subject};
use super::streams::EVENTS_STREAM;
use super::{Cluster, ClusterError};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use tokio_stream::StreamExt;

/// How many returned events a subscription remembers to drop replays (about 100 bytes each).
pub const MAX_TRACKED_EVENTS: usize = 65_536;

/// Where a [`ClusterSubscription`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// With the oldest event the stream still holds.
    All,
    /// With the events after this stream sequence (resume with
    /// [`ClusterSubscription::last_stream_seq`]). At most `u64::MAX - 1`.
    AfterStreamSeq(u64),
    /// With the events published after subscribing.
    New,
}

/// The cluster's events, in stream order, gap-free (see the module docs).
pub struct ClusterSubscription {
    cluster: Cluster,
    messages: pull::Ordered,
    last: u64,
    /// Whether `last` is a position the next message must follow without a hole in
    /// between (unless the hole is only other subjects').
    anchored: bool,
    /// (instance, seq) → digest of the event's JSON, of the events returned.
    seen: hashlink::LruCache<(String, u64), [u8; 8]>,
    skipped: u64,
    replays: u64,
}

impl ClusterSubscription {
    /// Subscribes to the events of `context` (every event of every host with `None`).
    pub async fn open(
        cluster: &Cluster,
        context: Option<&str>,
        start: StartAt,
    ) -> Result<ClusterSubscription, ClusterError> {
        let mut stream = cluster
            .jetstream()
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| ClusterError::Stream {
                stream: EVENTS_STREAM.into(),
                message: e.to_string(),
            })?;
        let (deliver_policy, last, anchored) = match start {
            StartAt::All => (DeliverPolicy::All, 0, false),
            StartAt::AfterStreamSeq(n) => {
                let Some(next) = n.checked_add(1) else {
                    return Err(ClusterError::InvalidConfig {
                        field: "after_stream_seq",
                        message: format!("is {n}; must be below {}", u64::MAX),
                    });
                };
                let state = stream
                    .info()
                    .await
                    .map_err(|e| ClusterError::nats("events subscribe", e))?
                    .state
                    .clone();
                // Nothing dropped if the next one is still held, or nothing was ever after `n`.
                if state.messages > 0 && state.first_sequence > next && state.last_sequence > n {
                    return Err(ClusterError::Compacted {
                        requested: next,
                        oldest: state.first_sequence,
                    });
                }
                (
                    DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    },
                    n,
                    true,
                )
            }
            StartAt::New => (DeliverPolicy::New, 0, false),
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter_subject(cluster, context),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::nats("events subscribe", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ClusterError::nats("events subscribe", e))?;
        Ok(ClusterSubscription {
            cluster: cluster.clone(),
            messages,
            last,
            anchored,
            seen: hashlink::LruCache::new(MAX_TRACKED_EVENTS),
            skipped: 0,
            replays: 0,
        })
    }

    /// The stream sequence of the last message read (the `AfterStreamSeq` to resume from).
    pub fn last_stream_seq(&self) -> u64 {
        self.last
    }

    /// Messages skipped because they did not decode (see the module docs).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Events dropped as replays of events already returned.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// The next event. Waits for one; NATS outages are waited out by the consumer.
    pub async fn next(&mut self) -> Result<ClusterEvent, ClusterError> {
        loop {
            let msg = match self.messages.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(ClusterError::nats("events read", e)),
                None => return Err(ClusterError::nats("events read", "the consumer ended")),
            };
            let seq = msg
                .info()
                .map_err(|e| ClusterError::nats("events read", e))?
                .stream_sequence;
            if self.anchored && seq > self.last + 1 {
                self.check_not_dropped().await?;
            }
            self.last = seq;
            self.anchored = true;
            let subject = msg.subject.to_string();
            let decoded = self.cluster.open(&subject, &msg.payload).and_then(|json| {
                let event = serde_json::from_slice::<ClusterEvent>(&json).map_err(|e| {
                    ClusterError::Decode {
                        subject: subject.clone(),
                        message: e.to_string(),
                    }
                })?;
                let instance = &event.instance;
                if instance.is_empty()
                    || instance.len() > 64
                    || instance.chars().any(char::is_control)
                {
                    return Err(ClusterError::Decode {
                        subject: subject.clone(),
                        message:
                            "its instance id is empty, longer than 64 characters or unprintable"
                                .into(),
                    });
                }
                use sha2::Digest;
                let digest: [u8; 8] = sha2::Sha256::digest(&json)[..8]
                    .try_into()
                    .expect("8 bytes of a SHA-256");
                Ok((event, digest))
            });
            let (mut event, digest) = match decoded {
                Ok(e) => e,
                Err(e) => {
                    self.skipped += 1;
                    tracing::warn!(error = %e, stream_seq = seq, "skipping a message on the events stream");
                    continue;
                }
            };
            let key = (event.instance.clone(), event.event.seq);
            if self.seen.get(&key) == Some(&digest) {
                self.replays += 1;
                tracing::warn!(
                    instance = event.instance,
                    seq = event.event.seq,
                    stream_seq = seq,
                    "dropping a replayed event"
                );
                continue;
            }
            self.seen.insert(key, digest);
            event.stream_seq = seq;
            return Ok(event);
        }
    }

    /// Called on a hole in stream sequences after `last`: fine when the messages in it are
    /// still held (they are other subjects'), [`ClusterError::Compacted`] when the stream
    /// dropped some of them.
    async fn check_not_dropped(&self) -> Result<(), ClusterError> {
        let mut stream = self
            .cluster
            .jetstream()
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| ClusterError::nats("events read", e))?;
        let first = stream
            .info()
            .await
            .map_err(|e| ClusterError::nats("events read", e))?
            .state
            .first_sequence;
        if first > self.last + 1 {
            return Err(ClusterError::Compacted {
                requested: self.last + 1,
                oldest: first,
            });
        }
        Ok(())
    }
}
