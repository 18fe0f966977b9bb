//! Shared events: every host's committed events on one JetStream stream.
//!
//! **Forwarding (an outbox).** An event is committed to the host's own SQLite record first,
//! as without a cluster. The [`EventForwarder`] reads the host's events in seq order from
//! where its cursor (`meta` key [`CURSOR_KEY`]) says it stopped, publishes each one to
//! [`EVENTS_STREAM`](super::streams::EVENTS_STREAM) and waits for the server's
//! acknowledgement before moving the cursor past it. While NATS is unreachable it keeps
//! retrying the same event (backoff 50 ms doubling to 2 s); nothing is skipped and nothing
//! waits on it but forwarding. A host killed between an acknowledgement and the cursor's
//! write resends that event on restart with the same `Nats-Msg-Id` (`<host>:<seq>`), which
//! the server drops inside its duplicate window.
//!
//! **Subjects.** An event about context `c` goes on `qi.events.ctx.<token(c)>`, any other on
//! `qi.events.host.<host>` ([`subject::token`](super::subject::token)). The payload is the
//! JSON of [`ClusterEvent`]'s `host` and `event`, sealed when the host has a master key. An
//! event whose payload would pass [`MAX_MESSAGE_BYTES`] is forwarded with its `data`
//! replaced by `{"dataOmitted": true, "bytes": n}` (the full event stays in the host's
//! record).
//!
//! **Subscribing.** A [`ClusterSubscription`] on any host reads the stream with an ordered
//! consumer: events of every host (or of one context), in stream order, with no gaps and no
//! duplicates, resumable after a stream sequence ([`StartAt::AfterStreamSeq`]). If the stream
//! dropped events the subscriber still needed (past
//! [`ClusterConfig::events_max_bytes`](super::ClusterConfig::events_max_bytes)),
//! [`ClusterSubscription::next`] fails with [`ClusterError::Nats`] naming the gap, never
//! silently skipping it.

use super::streams::{EVENTS_STREAM, MAX_MESSAGE_BYTES};
use super::{Cluster, ClusterError, subject};
use crate::events::{Event, EventBus, EventError, EventFilter, SubscribeFrom};
use crate::store::Store;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// The `meta` key holding the last local event seq the server acknowledged.
pub const CURSOR_KEY: &str = "cluster.events.forwarded";

/// Room left in a message for its headers and JSON framing, in bytes.
pub(super) const FRAMING_BYTES: usize = 4096;

/// An event as the cluster carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEvent {
    /// Its sequence in the events stream (0 before it is published).
    #[serde(skip)]
    pub stream_seq: u64,
    /// The host that committed it.
    pub host: String,
    /// The event as that host committed it (`seq` is that host's local seq).
    pub event: Event,
}

/// The subject of an event committed on host `host`.
pub fn event_subject(host: &str, event: &Event) -> String {
    match &event.context_id {
        Some(c) => format!("qi.events.ctx.{}", subject::token(c)),
        None => format!("qi.events.host.{}", subject::token(host)),
    }
}

/// The subject filter for the events of context `context`, or of every context and host.
pub fn filter_subject(context: Option<&str>) -> String {
    match context {
        Some(c) => format!("qi.events.ctx.{}", subject::token(c)),
        None => super::streams::EVENTS_SUBJECTS.to_string(),
    }
}

/// How far the forwarder has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwarderStatus {
    /// The last local seq the server acknowledged (everything up to it is in the stream).
    pub forwarded: u64,
    /// Local events that were gone from the host's record (its retention) before they
    /// could be forwarded, in all; each gap is logged as an error.
    pub lost: u64,
    /// The last publish error, cleared by the next acknowledgement.
    pub last_error: Option<String>,
}

/// Forwards this host's committed events to the cluster until stopped or dropped.
pub struct EventForwarder {
    task: tokio::task::JoinHandle<()>,
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
        let task = tokio::spawn(forward(cluster.clone(), bus.clone(), store, cursor, tx));
        Ok(EventForwarder { task, status })
    }

    /// A view of its progress; [`wait_forwarded`](Self::wait_forwarded) waits on it.
    pub fn status(&self) -> watch::Receiver<ForwarderStatus> {
        self.status.clone()
    }

    /// Waits until every local event up to `seq` is acknowledged by the server (for a
    /// graceful shutdown: `wait_forwarded(bus.last_seq())`).
    pub async fn wait_forwarded(&self, seq: u64) {
        let mut status = self.status.clone();
        let _ = status.wait_for(|s| s.forwarded >= seq).await;
    }

    /// Stops forwarding and returns once the forwarder has let go of the store (what is not
    /// forwarded yet is forwarded by the next start).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for EventForwarder {
    fn drop(&mut self) {
        self.task.abort();
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

/// The forwarder's loop: (re)subscribe after the cursor, publish each event until it is
/// acknowledged, move the cursor.
async fn forward(
    cluster: Cluster,
    bus: EventBus,
    store: Store,
    mut cursor: u64,
    status: watch::Sender<ForwarderStatus>,
) {
    let host = cluster.host_name().to_string();
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
                    status.send_modify(|s| s.lost += lost);
                    cursor = oldest.saturating_sub(1);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cluster event forwarding stopped");
                    return;
                }
            };
            let wire = ClusterEvent {
                stream_seq: 0,
                host: host.clone(),
                event: (*event).clone(),
            };
            let subject = event_subject(&host, &wire.event);
            let payload = cluster.seal(&subject, encode(wire));
            let msg_id = format!("{host}:{}", event.seq);
            publish_until_acked(&cluster, &subject, &msg_id, payload.into(), &status).await;
            cursor = event.seq;
            // The cursor is advisory (a resend is deduplicated), so a failed write only
            // costs resends after a restart.
            if let Err(e) = write_cursor(&store, cursor).await {
                tracing::warn!(error = %e, "cannot record the cluster forwarding cursor");
            }
            status.send_modify(|s| {
                s.forwarded = cursor;
                s.last_error = None;
            });
        }
    }
}

/// The JSON of `wire`, its data omitted when it would not fit in a message.
pub(super) fn encode(mut wire: ClusterEvent) -> Vec<u8> {
    let json = serde_json::to_vec(&wire).expect("an event serializes");
    if json.len() + FRAMING_BYTES <= MAX_MESSAGE_BYTES {
        return json;
    }
    wire.event.data = serde_json::json!({"dataOmitted": true, "bytes": json.len()});
    serde_json::to_vec(&wire).expect("an event serializes")
}

async fn publish_until_acked(
    cluster: &Cluster,
    subject: &str,
    msg_id: &str,
    payload: bytes::Bytes,
    status: &watch::Sender<ForwarderStatus>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        let acked = match cluster
            .jetstream()
            .publish_with_headers(subject.to_string(), headers, payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match acked {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, subject, "event publish not acknowledged; retrying");
                status.send_modify(|s| s.last_error = Some(e));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Where a [`ClusterSubscription`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// With the oldest event the stream still holds.
    All,
    /// With the events after this stream sequence (resume with
    /// [`ClusterSubscription::last_stream_seq`]).
    AfterStreamSeq(u64),
    /// With the events published after subscribing.
    New,
}

/// The cluster's events, in stream order, gap-free (see the module docs).
pub struct ClusterSubscription {
    cluster: Cluster,
    messages: pull::Ordered,
    last: u64,
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
        if let StartAt::AfterStreamSeq(n) = start {
            let state = stream
                .info()
                .await
                .map_err(|e| ClusterError::nats("events subscribe", e))?
                .state
                .clone();
            // Nothing dropped if the next one is still held, or nothing was ever after `n`.
            if state.messages > 0 && state.first_sequence > n + 1 && state.last_sequence > n {
                return Err(ClusterError::Compacted {
                    requested: n + 1,
                    oldest: state.first_sequence,
                });
            }
        }
        let (deliver_policy, last) = match start {
            StartAt::All => (DeliverPolicy::All, 0),
            StartAt::AfterStreamSeq(n) => (
                DeliverPolicy::ByStartSequence {
                    start_sequence: n + 1,
                },
                n,
            ),
            StartAt::New => (DeliverPolicy::New, 0),
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter_subject(context),
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
        })
    }

    /// The stream sequence of the last event returned (the `AfterStreamSeq` to resume from).
    pub fn last_stream_seq(&self) -> u64 {
        self.last
    }

    /// The next event. Waits for one; NATS outages are waited out by the consumer.
    pub async fn next(&mut self) -> Result<ClusterEvent, ClusterError> {
        let msg = match self.messages.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(ClusterError::nats("events read", e)),
            None => return Err(ClusterError::nats("events read", "the consumer ended")),
        };
        let seq = msg
            .info()
            .map_err(|e| ClusterError::nats("events read", e))?
            .stream_sequence;
        let subject = msg.subject.to_string();
        let json = self.cluster.open(&subject, &msg.payload)?;
        let mut event: ClusterEvent =
            serde_json::from_slice(&json).map_err(|e| ClusterError::Decode {
                subject: subject.clone(),
                message: e.to_string(),
            })?;
        event.stream_seq = seq;
        self.last = seq;
        Ok(event)
    }
}
