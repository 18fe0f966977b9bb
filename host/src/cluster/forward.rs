//! Forwarding a host's committed events to the cluster's stream (an outbox).
//!
//! An event is committed to the host's own SQLite record first, as without a cluster. The
//! [`EventForwarder`] reads the host's events in seq order from where its cursor (`meta` key
//! [`CURSOR_KEY`]) says it stopped, publishes each one to
//! [`EVENTS_STREAM`](super::streams::EVENTS_STREAM) and waits for the server's
//! acknowledgement before moving the cursor past it (the cursor is written by a task of its
//! own, coalescing: after every acknowledgement when forwarding is slow, once per batch when
//! it is busy, and on [`EventForwarder::stop`]).
//!
//! - **NATS unreachable, its streams gone (a server restarted without its storage), a full
//!   stream, any error reply**: the same event is retried (backoff 50 ms doubling to 2 s),
//!   the streams are created again when the server says they are missing, and nothing is
//!   skipped; only forwarding waits (and [`ForwarderStatus::last_error`] says why).
//! - **A resend** (a host killed between an acknowledgement and the cursor's write) carries
//!   the same `Nats-Msg-Id` ([`message_id`]: instance, seq and a digest of the event) and is
//!   dropped by the server inside its duplicate window; past the window, subscribers drop it
//!   ([`ClusterSubscription`](super::ClusterSubscription) remembers recent events). A data
//!   directory restored from a backup commits new events under seqs it had forwarded before;
//!   their digests differ, so they are stored and read like any other.
//! - **A forged duplicate.** When the server calls a publish a duplicate, the forwarder reads
//!   the stored message back; if it is not this event (another client published under this
//!   message id first: ids are visible in headers, so a peer can guess the next ones), it is
//!   published again under `<instance>:<seq>:<128 random bits>`, which no one can guess, and
//!   the forgery is counted ([`ForwarderStatus::forged`]) and logged.
//! - **A message too large for the stream or the server** is sent once more without its
//!   data; if even that is too large, the event is counted in [`ForwarderStatus::refused`],
//!   logged as an error, and skipped, so one event never stops the rest. Size is the only
//!   reason an event is ever skipped.
//! - **The event log failing to read** (other than its retention): logged, and read again
//!   from the cursor after a backoff.

use super::events::{ClusterEvent, encode, event_subject, message_limit};
use super::streams::EVENTS_STREAM;
use super::{Cluster, ClusterError};
use crate::events::{EventBus, EventError, EventFilter, EventType, SubscribeFrom};
use crate::store::Store;
use async_nats::jetstream::context::PublishErrorKind;
use rusqlite::OptionalExtension;
use std::time::Duration;
use tokio::sync::watch;

/// The `meta` key holding the last local event seq the server acknowledged.
pub const CURSOR_KEY: &str = "cluster.events.forwarded";

/// How far the forwarder has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwarderStatus {
    /// The last local seq that is done (acknowledged, or refused for good).
    pub forwarded: u64,
    /// Local events that were gone from the host's record (its retention) before they
    /// could be forwarded, in all; each gap is logged as an error.
    pub lost: u64,
    /// Events too large for the stream even without their data, in all (each logged).
    pub refused: u64,
    /// Publishes the server called duplicates that were not this host's (forgeries).
    pub forged: u64,
    /// The last publish error, cleared by the next acknowledgement.
    pub last_error: Option<String>,
}

/// Forwards this host's committed events to the cluster until stopped or dropped.
pub struct EventForwarder {
    task: tokio::task::JoinHandle<()>,
    cursor_task: tokio::task::JoinHandle<()>,
    store: Store,
    status: watch::Receiver<ForwarderStatus>,
}

impl EventForwarder {
    /// Reads the cursor and starts forwarding from the event after it.
    pub async fn start(cluster: &Cluster, bus: &EventBus) -> Result<EventForwarder, ClusterError> {
        let store = bus.store().clone();
        let cursor = read_cursor(&store).await?;
        let (tx, status) = watch::channel(ForwarderStatus {
            forwarded: cursor,
            ..Default::default()
        });
        let forwarder = Forwarder {
            cluster: cluster.clone(),
            instance: store.host_id().to_string(),
            status: tx,
        };
        let task = tokio::spawn(forwarder.run(bus.clone(), cursor));
        let cursor_task = tokio::spawn(keep_cursor(store.clone(), status.clone(), cursor));
        Ok(EventForwarder {
            task,
            cursor_task,
            store,
            status,
        })
    }

    /// A view of its progress; [`wait_forwarded`](Self::wait_forwarded) waits on it.
    pub fn status(&self) -> watch::Receiver<ForwarderStatus> {
        self.status.clone()
    }

    /// Waits until every local event up to `seq` is done (for a graceful shutdown:
    /// `wait_forwarded(bus.last_seq())`).
    pub async fn wait_forwarded(&self, seq: u64) {
        let mut status = self.status.clone();
        let _ = status.wait_for(|s| s.forwarded >= seq).await;
    }

    /// Stops forwarding, writes the cursor where forwarding got, and returns once the
    /// forwarder has let go of the store (what is not forwarded yet is forwarded by the next
    /// start).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.cursor_task.abort();
        let _ = (&mut self.cursor_task).await;
        let forwarded = self.status.borrow().forwarded;
        if let Err(e) = write_cursor(&self.store, forwarded).await {
            tracing::warn!(error = %e, "cannot record the cluster forwarding cursor");
        }
    }
}

impl Drop for EventForwarder {
    fn drop(&mut self) {
        self.task.abort();
        self.cursor_task.abort();
    }
}

/// Writes the forwarder's progress to the cursor, coalescing: while one write is in flight,
/// later progress waits and only the newest is written next (so a busy forwarder costs one
/// store write per batch, not per event). A write that fails is logged; it only costs
/// resends after a restart, which are deduplicated.
async fn keep_cursor(store: Store, mut status: watch::Receiver<ForwarderStatus>, mut written: u64) {
    while status.changed().await.is_ok() {
        let forwarded = status.borrow_and_update().forwarded;
        if forwarded > written {
            match write_cursor(&store, forwarded).await {
                Ok(()) => written = forwarded,
                Err(e) => tracing::warn!(error = %e, "cannot record the cluster forwarding cursor"),
            }
        }
    }
}

async fn read_cursor(store: &Store) -> Result<u64, ClusterError> {
    let text: Option<String> = store
        .read(|conn| {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [CURSOR_KEY], |r| {
                    r.get(0)
                })
                .optional()?)
        })
        .await?;
    match text {
        None => Ok(0),
        Some(t) => t.parse().map_err(|_| {
            ClusterError::Store(crate::store::StoreError::CorruptRow(format!(
                "meta `{CURSOR_KEY}` is {t:?}, not a seq"
            )))
        }),
    }
}

async fn write_cursor(store: &Store, seq: u64) -> Result<(), ClusterError> {
    store
        .write(move |ctx| {
            ctx.tx().execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                rusqlite::params![CURSOR_KEY, seq.to_string()],
            )?;
            Ok(())
        })
        .await?;
    Ok(())
}

/// `<instance>:<seq>:<digest>`: the digest (16 hex digits of the SHA-256 of the event's
/// full JSON) makes the id differ for a different event under the same instance and seq (a
/// data directory restored from a backup, or copied, commits new events under seqs it had
/// already forwarded), and stay the same for a resend of the same event.
pub fn message_id(instance: &str, seq: u64, full_json: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(full_json);
    format!("{instance}:{seq}:{}", hex::encode(&digest[..8]))
}

/// How one publish ended.
enum Sent {
    /// Stored (or already stored by this host): done.
    Acked,
    /// Not stored; trying the same message again may work (a timeout, a lost connection,
    /// a missing or full stream, any error reply).
    Retry(String),
    /// Over a size limit of the stream or server: sending it unchanged cannot work.
    TooLarge(String),
}

struct Forwarder {
    cluster: Cluster,
    instance: String,
    status: watch::Sender<ForwarderStatus>,
}

impl Forwarder {
    /// (Re)subscribes after the cursor, forwards each event, moves the cursor.
    async fn run(self, bus: EventBus, mut cursor: u64) {
        let mut limit = None;
        loop {
            let mut sub = match bus.subscribe(EventFilter::all(), SubscribeFrom::AfterSeq(cursor)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cluster event forwarding cannot read the event log; stopped");
                    return;
                }
            };
            loop {
                let event = match sub.next_shared().await {
                    Ok(e) => e,
                    Err(EventError::HistoryCompacted { requested, oldest }) => {
                        let lost = oldest.saturating_sub(requested);
                        tracing::error!(
                            requested,
                            oldest,
                            "{lost} local events were dropped by the event log's retention before they reached the cluster"
                        );
                        self.status.send_modify(|s| s.lost += lost);
                        cursor = oldest.saturating_sub(1);
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cluster event forwarding cannot read the event log; reading again from its cursor");
                        self.status
                            .send_modify(|s| s.last_error = Some(e.to_string()));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                };
                // A context change installed from the cluster's bucket: the host that made
                // it forwarded its own event.
                let replicated =
                    matches!(event.event_type, EventType::Created | EventType::Updated)
                        && event.data.get("replicatedFrom").is_some();
                if replicated {
                    cursor = event.seq;
                    self.status.send_modify(|s| s.forwarded = cursor);
                    continue;
                }
                let wire = ClusterEvent {
                    stream_seq: 0,
                    host: self.cluster.host_name().to_string(),
                    instance: self.instance.clone(),
                    event: (*event).clone(),
                };
                self.forward_one(wire, &mut limit).await;
                cursor = event.seq;
                self.status.send_modify(|s| {
                    s.forwarded = cursor;
                    s.last_error = None;
                });
            }
        }
    }

    /// Publishes one event until it is stored, or too large for the stream even without
    /// its data.
    async fn forward_one(&self, wire: ClusterEvent, limit: &mut Option<usize>) {
        let seq = wire.event.seq;
        let subject = event_subject(&self.cluster, &wire.host, &wire.event);
        let msg_id = message_id(&self.instance, seq, &encode(wire.clone(), usize::MAX));
        let mut backoff = Duration::from_millis(50);
        let mut without_data = false;
        loop {
            let max = match (without_data, *limit) {
                (true, _) => 0,
                (false, Some(l)) => l,
                (false, None) => {
                    let l = self.limit().await;
                    *limit = Some(l);
                    l
                }
            };
            let json = encode(wire.clone(), max);
            let payload = self.cluster.seal(&subject, json.clone());
            match self.publish(&subject, &msg_id, payload.into(), &json).await {
                Sent::Acked => return,
                Sent::Retry(e) => {
                    tracing::debug!(error = %e, subject, "event publish not acknowledged; retrying");
                    self.status.send_modify(|s| s.last_error = Some(e));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    // The stream may have been made again, with other limits.
                    *limit = None;
                }
                Sent::TooLarge(e) if !without_data => {
                    tracing::warn!(seq, subject, error = %e, "a local event is too large for the cluster's stream; forwarding it without its data");
                    without_data = true;
                }
                Sent::TooLarge(e) => {
                    tracing::error!(seq, subject, error = %e, "the cluster's stream refused a local event even without its data; skipped (it stays in this host's record)");
                    self.status.send_modify(|s| {
                        s.refused += 1;
                        s.last_error = Some(e);
                    });
                    return;
                }
            }
        }
    }

    /// The largest message the stream and server take now.
    async fn limit(&self) -> usize {
        let server = self.cluster.client().server_info().max_payload;
        let stream = match self.cluster.jetstream().get_stream(EVENTS_STREAM).await {
            Ok(mut s) => s
                .info()
                .await
                .map(|i| i.config.max_message_size)
                .unwrap_or(-1),
            Err(_) => -1,
        };
        message_limit(stream, server)
    }

    /// One publish; a duplicate is read back and checked against `json` (the plaintext).
    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: bytes::Bytes,
        json: &[u8],
    ) -> Sent {
        let mut id = msg_id.to_string();
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            let sent = self
                .cluster
                .jetstream()
                .publish_with_headers(subject.to_string(), headers, payload.clone())
                .await;
            let ack = match sent {
                Ok(ack) => ack.await,
                Err(e) => return self.classify(e.kind(), e.to_string()).await,
            };
            let ack = match ack {
                Ok(a) => a,
                Err(e) => return self.classify(e.kind(), e.to_string()).await,
            };
            if !ack.duplicate || self.stored_is(ack.sequence, subject, json).await {
                return Sent::Acked;
            }
            tracing::warn!(
                subject,
                msg_id = id,
                stream_seq = ack.sequence,
                "another client published under this host's message id first (a forgery); publishing again under an unguessable id"
            );
            self.status.send_modify(|s| s.forged += 1);
            id = format!(
                "{msg_id}:{}",
                hex::encode(crate::store::crypto::random::<16>())
            );
        }
    }

    async fn classify(&self, kind: PublishErrorKind, message: String) -> Sent {
        match kind {
            PublishErrorKind::StreamNotFound => {
                // The server lost its streams (restarted without its storage): make them
                // again; the publish is retried.
                if let Err(e) = super::streams::ensure(&self.cluster).await {
                    return Sent::Retry(format!("{message}; recreating the streams: {e}"));
                }
                Sent::Retry(message)
            }
            PublishErrorKind::MaxPayloadExceeded => Sent::TooLarge(message),
            // JetStream's refusal of a message over the stream's max_msg_size is a generic
            // error reply ("message size exceeds maximum allowed").
            _ if message.contains("message size exceeds maximum") => Sent::TooLarge(message),
            _ => Sent::Retry(message),
        }
    }

    /// Whether the message stored at `seq` is exactly this event (its plaintext JSON is
    /// `json`). A message that cannot be read back counts as not this event: publishing again
    /// under a new id may store it twice, which subscribers drop, where trusting the server
    /// could lose it.
    async fn stored_is(&self, seq: u64, subject: &str, json: &[u8]) -> bool {
        let Ok(stream) = self.cluster.jetstream().get_stream(EVENTS_STREAM).await else {
            return false;
        };
        let Ok(stored) = stream.get_raw_message(seq).await else {
            return false;
        };
        stored.subject.as_str() == subject
            && self
                .cluster
                .open(subject, &stored.payload)
                .is_ok_and(|plain| plain == json)
    }
}
