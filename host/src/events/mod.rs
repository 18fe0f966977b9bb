//! The event bus: typed events with a global sequence number, persisted in the store,
//! delivered to filtered subscriptions that are gap-free and resumable.
//!
//! ```
//! use qi_host::events::{EventBus, EventBusConfig, EventFilter, EventType, NewEvent, SubscribeFrom};
//! use qi_host::store::{Store, StoreConfig};
//!
//! # fn main() -> Result<(), qi_host::events::EventError> {
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = Store::open(StoreConfig::in_memory())?;
//! let bus = EventBus::new(store, EventBusConfig::default()).await?;
//! let filter = EventFilter::parse_cli("type=updated,context=ctx-1")?;
//! let mut updates = bus.subscribe(filter, SubscribeFrom::Now)?;
//! bus.publish(NewEvent::new(EventType::Updated).context("ctx-1")).await?;
//! let event = updates.next().await?;
//! assert_eq!((event.seq, event.event_type), (1, EventType::Updated));
//! // Later, possibly in another process: resume exactly after what was handled.
//! let resumed = bus.subscribe(EventFilter::all(), SubscribeFrom::AfterSeq(updates.last_seq()))?;
//! # drop(resumed);
//! # Ok(()) })
//! # }
//! ```
//!
//! # Sequence numbers
//!
//! Every event gets a global `seq`: 1 for the first, then exactly one more for each next one,
//! in commit order. Events are inserted by [`EventBus::stage`] inside a [`Store::write`], so a
//! context change and its events commit atomically, and since the store has a single writer
//! thread, the seq is `max(seq) + 1` read inside the transaction: a write that rolls back
//! leaves no hole. After the commit, an after-commit hook announces the events to live
//! subscribers, in seq order.
//!
//! # Delivery and backpressure
//!
//! A subscription delivers the events matching its filter in seq order, with no gaps and no
//! duplicates, from where it started ([`SubscribeFrom`]) until it is dropped or unsubscribed.
//!
//! - **Live path.** Announced events go through one bounded tokio `broadcast` channel
//!   ([`EventBusConfig::buffer`] slots), bounded in bytes too: an event is carried in a slot
//!   only when its size ([`Event::live_bytes`]) is at most [`EventBusConfig::buffer_bytes`] /
//!   `buffer`; a larger one is announced by its seq alone and its subscribers read it from
//!   the store. Publishing never waits for subscribers, and the memory held for subscribers
//!   is at most `buffer_bytes` whatever they do.
//! - **Falling behind.** A subscriber that does not keep up is overtaken by the buffer
//!   (`RecvError::Lagged`), or sees a seq that is not the successor of the last one it
//!   handled. Either way it does not lose anything: it reads the persisted events after its
//!   last seq from SQLite, a page at a time, then rejoins the live path, skipping anything it
//!   has already seen (dedupe by seq). A slow subscriber therefore costs reads, never memory
//!   beyond one page and never publisher latency.
//! - **Retention.** The store keeps the newest [`EventBusConfig::retention`] events; older
//!   ones are deleted in the same transaction that pushes the count over the bound. Asking
//!   for events that are gone (subscribing or querying history after a seq older than the
//!   oldest kept, or lagging so far behind that retention overtook the subscriber) fails with
//!   [`EventError::HistoryCompacted`]; there is never a silent gap.
//!
//! # Reads and the write queue
//!
//! [`EventBus::record_access`] records that an agent read a context as an `accessed` event
//! without making the reader wait for the commit. Such events are coalesced: at most one per
//! (agent, context) per [`EventBusConfig::access_window_ms`] (every read when the caller asks
//! for [`ReadRecording::Every`], as agents at the `monitored` isolation level do), so a
//! reader in a loop cannot fill the log and push other agents' history out of retention.
//! The writes the bus makes on its own are bounded: at most [`EventBusConfig::write_queue`]
//! wait for the store at once; past that, `record_access` waits for one to finish
//! (backpressure), it never drops one.
//!
//! Use one `EventBus` per [`Store`]: seqs come from the database, but live announcements
//! reach only the subscribers of the bus that staged the events.

mod error;
mod filter;
mod rows;
mod staging;
mod subscription;
mod types;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bounds;
#[cfg(test)]
mod tests_live;
#[cfg(test)]
mod tests_redteam;

pub use error::EventError;
pub use filter::EventFilter;
pub use subscription::{SubscribeFrom, Subscription, SubscriptionId};
pub use types::{EVENT_OVERHEAD_BYTES, Event, EventType, NewEvent, UnknownEventType};

pub(crate) use rows::{query_events, seq_bounds};

use crate::store::Store;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use subscription::SubShared;
use tokio::sync::broadcast;

/// Events kept by default: 1,000,000.
pub const DEFAULT_RETENTION: usize = 1_000_000;

/// Live buffer by default: 4,096 events.
pub const DEFAULT_BUFFER: usize = 4096;

/// Bytes the live buffer may hold by default: 16 MiB (so events up to 4 KiB ride in it).
pub const DEFAULT_BUFFER_BYTES: usize = 16 << 20;

/// Window of `accessed` coalescing by default: 60,000 ms.
pub const DEFAULT_ACCESS_WINDOW_MS: u64 = 60_000;

/// Writes of the bus's own (accessed events) waiting for the store at once, by default: 1,024.
pub const DEFAULT_WRITE_QUEUE: usize = 1024;

/// Entries of the coalescing table past which entries older than the window are dropped.
const ACCESS_TABLE_PRUNE: usize = 4096;

/// Configuration of an [`EventBus`]. Every field has a documented default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBusConfig {
    /// How many of the newest events the store keeps; at least 1. Subscriptions can resume
    /// from any seq still kept. Default [`DEFAULT_RETENTION`] (1,000,000).
    pub retention: usize,
    /// Capacity of the live broadcast buffer, shared by all subscribers; at least 1. It
    /// bounds the memory slow subscribers can hold; a subscriber further behind catches up
    /// from the store. Default [`DEFAULT_BUFFER`] (4,096).
    pub buffer: usize,
    /// Bytes the live buffer may hold, at least 1: each slot carries an event of at most
    /// `buffer_bytes / buffer` bytes ([`Event::live_bytes`]); larger events are announced
    /// by seq and read from the store. Default [`DEFAULT_BUFFER_BYTES`] (16 MiB).
    pub buffer_bytes: usize,
    /// [`EventBus::record_access`] records at most one `accessed` event per (agent,
    /// context) per this many milliseconds (0: every read). Default
    /// [`DEFAULT_ACCESS_WINDOW_MS`] (60 s).
    pub access_window_ms: u64,
    /// Writes the bus makes on its own (accessed events) that may wait for the store at
    /// once, at least 1; past it [`EventBus::record_access`] waits. Default
    /// [`DEFAULT_WRITE_QUEUE`] (1,024).
    pub write_queue: usize,
}

/// How [`EventBus::record_access`] records a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRecording {
    /// At most one `accessed` event per (agent, context) per
    /// [`EventBusConfig::access_window_ms`].
    Coalesced,
    /// An `accessed` event for every read (the `monitored` isolation level).
    Every,
}

impl Default for EventBusConfig {
    fn default() -> Self {
        EventBusConfig {
            retention: DEFAULT_RETENTION,
            buffer: DEFAULT_BUFFER,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            access_window_ms: DEFAULT_ACCESS_WINDOW_MS,
            write_queue: DEFAULT_WRITE_QUEUE,
        }
    }
}

/// Counters of an [`EventBus`] since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventBusMetrics {
    /// Events committed through this bus.
    pub published: u64,
    /// Events handed to subscribers by [`Subscription::next`].
    pub delivered: u64,
    /// Pages subscribers read from the store to resume or to catch up after falling behind.
    pub catch_ups: u64,
    /// Live subscriptions.
    pub subscribers: usize,
    /// The newest committed seq (0 before the first event).
    pub last_seq: u64,
    /// The oldest seq still stored (`last_seq + 1` when none is).
    pub oldest_seq: u64,
    /// Events announced by seq alone because they were larger than a live slot.
    pub announced_by_seq: u64,
    /// `accessed` events recorded by [`EventBus::record_access`].
    pub reads_recorded: u64,
    /// Reads [`EventBus::record_access`] left unrecorded as within the window.
    pub reads_coalesced: u64,
}

/// The event bus. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

pub(crate) struct BusInner {
    pub(crate) store: Store,
    retention: u64,
    pub(crate) live: broadcast::Sender<Live>,
    /// Largest [`Event::live_bytes`] carried in a live slot.
    slot_bytes: usize,
    access_window_ms: u64,
    /// When each (agent, context) last had a read recorded (unix ms of the caller's clock).
    accessed: Mutex<HashMap<(String, String), u64>>,
    /// Permits for the writes the bus makes on its own.
    write_queue: Arc<tokio::sync::Semaphore>,
    announced_by_seq: AtomicU64,
    reads_recorded: AtomicU64,
    reads_coalesced: AtomicU64,
    /// The newest seq announced on the live path.
    pub(crate) last_seq: AtomicU64,
    /// The oldest seq still stored, as of the last commit.
    pub(crate) oldest_seq: AtomicU64,
    published: AtomicU64,
    /// Deliveries of subscriptions that have ended (live ones count in their [`SubShared`]).
    delivered: AtomicU64,
    pub(crate) catch_ups: AtomicU64,
    pub(crate) subscribers: Mutex<HashMap<SubscriptionId, Arc<SubShared>>>,
    next_subscription: AtomicU64,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("metrics", &self.metrics())
            .finish()
    }
}

/// Columns read for an [`Event`], in the order `rows` reads them.
pub(crate) const EVENT_COLUMNS: &str = "seq, event_type, context_id, agent_id, ts, priority, data";

impl EventBus {
    /// A bus over `store`'s `events` table; reads the newest and oldest stored seq.
    pub async fn new(store: Store, config: EventBusConfig) -> Result<EventBus, EventError> {
        if config.retention == 0 {
            return Err(EventError::InvalidConfig {
                field: "retention",
                message: "must keep at least 1 event".into(),
            });
        }
        if config.buffer == 0 {
            return Err(EventError::InvalidConfig {
                field: "buffer",
                message: "must hold at least 1 event".into(),
            });
        }
        if config.buffer_bytes == 0 {
            return Err(EventError::InvalidConfig {
                field: "buffer_bytes",
                message: "must allow at least 1 byte".into(),
            });
        }
        if config.write_queue == 0 {
            return Err(EventError::InvalidConfig {
                field: "write_queue",
                message: "must let at least 1 write wait".into(),
            });
        }
        let (oldest, last) = store.read(seq_bounds).await?;
        let (live, _) = broadcast::channel(config.buffer);
        Ok(EventBus {
            inner: Arc::new(BusInner {
                store,
                retention: config.retention as u64,
                live,
                slot_bytes: config.buffer_bytes / config.buffer,
                access_window_ms: config.access_window_ms,
                accessed: Mutex::default(),
                write_queue: Arc::new(tokio::sync::Semaphore::new(config.write_queue)),
                announced_by_seq: AtomicU64::new(0),
                reads_recorded: AtomicU64::new(0),
                reads_coalesced: AtomicU64::new(0),
                last_seq: AtomicU64::new(last),
                oldest_seq: AtomicU64::new(oldest),
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                catch_ups: AtomicU64::new(0),
                subscribers: Mutex::default(),
                next_subscription: AtomicU64::new(1),
            }),
        })
    }

    /// The store this bus persists to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Records that `event.agent_id` read `event.context_id` (an `accessed` event), unless
    /// `how` is [`ReadRecording::Coalesced`] and a read of that pair was recorded less than
    /// [`EventBusConfig::access_window_ms`] before `now_ms` (the caller's clock, unix ms).
    /// Returns whether it is recorded. The write is queued, not awaited: this waits only
    /// when [`EventBusConfig::write_queue`] writes are already waiting (backpressure; none
    /// is dropped). A failed write is logged.
    pub async fn record_access(&self, event: NewEvent, now_ms: u64, how: ReadRecording) -> bool {
        let inner = &self.inner;
        if how == ReadRecording::Coalesced && inner.access_window_ms > 0 {
            let key = (
                event.agent_id.clone().unwrap_or_default(),
                event.context_id.clone().unwrap_or_default(),
            );
            let window = inner.access_window_ms;
            let mut seen = inner.accessed.lock().unwrap_or_else(|p| p.into_inner());
            if seen
                .get(&key)
                .is_some_and(|&at| now_ms.saturating_sub(at) < window)
            {
                inner.reads_coalesced.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            seen.insert(key, now_ms);
            if seen.len() > ACCESS_TABLE_PRUNE {
                seen.retain(|_, at| now_ms.saturating_sub(*at) < window);
            }
        }
        let Ok(permit) = inner.write_queue.clone().acquire_owned().await else {
            // Never closed.
            return false;
        };
        inner.reads_recorded.fetch_add(1, Ordering::Relaxed);
        let bus = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = bus.publish(event).await {
                tracing::warn!(error = %e, "recording an accessed event failed");
            }
        });
        true
    }

    /// Subscribes to the events matching `filter`, starting after `from`. Fails with
    /// [`EventError::HistoryCompacted`] if `from` is older than retention.
    pub fn subscribe(
        &self,
        filter: EventFilter,
        from: SubscribeFrom,
    ) -> Result<Subscription, EventError> {
        Subscription::start(self.inner.clone(), filter, from)
    }

    /// Ends the subscription `id`: its pending and future [`Subscription::next`] calls fail
    /// with [`EventError::Unsubscribed`]. Returns whether it was live.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        // Removed and retired under one lock, so `metrics` counts its deliveries exactly once.
        let shared = {
            let mut subscribers = self
                .inner
                .subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let shared = subscribers.remove(&id);
            if let Some(shared) = &shared {
                self.inner.retire(shared);
            }
            shared
        };
        match shared {
            Some(shared) => {
                shared.cancel();
                true
            }
            None => false,
        }
    }

    /// Stored events matching `filter` (getEventHistory), in seq order. With `after_seq`,
    /// the first `limit` matching events after it (failing with
    /// [`EventError::HistoryCompacted`] if events after it were already dropped); without,
    /// the newest `limit` matching events.
    pub async fn history(
        &self,
        filter: &EventFilter,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, EventError> {
        let filter = filter.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let blobs = self.inner.store.blobs().clone();
        self.inner
            .store
            .read(move |conn| {
                let tx = conn.unchecked_transaction()?;
                let (oldest, last) = seq_bounds(&tx)?;
                let mut params = Vec::new();
                let condition = filter.sql_condition(&mut params);
                let sql = match after_seq {
                    Some(after) => {
                        if after < last && after + 1 < oldest {
                            return Ok(Err(EventError::HistoryCompacted {
                                requested: after + 1,
                                oldest,
                            }));
                        }
                        params.push(rusqlite::types::Value::Integer(filter::clamp_i64(after)));
                        format!(
                            "SELECT {EVENT_COLUMNS} FROM events WHERE {condition} AND seq > ? \
                             ORDER BY seq LIMIT {limit}"
                        )
                    }
                    None => format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE {condition} \
                         ORDER BY seq DESC LIMIT {limit}"
                    ),
                };
                let mut events = query_events(&tx, &blobs, &sql, params)?;
                if after_seq.is_none() {
                    events.reverse();
                }
                Ok(Ok(events))
            })
            .await?
    }

    /// The newest seq announced to live subscribers (the newest stored one when the bus was
    /// created; 0 for an empty log): the same as
    /// [`EventBusMetrics::last_seq`] without gathering every other counter, whose delivery
    /// count sums over all subscriptions.
    pub fn last_seq(&self) -> u64 {
        self.inner.last_seq.load(Ordering::Acquire)
    }

    /// Counters since this bus was created.
    pub fn metrics(&self) -> EventBusMetrics {
        let inner = &self.inner;
        let (subscribers, delivered) = {
            let subscribers = inner.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            let live = subscribers.values().fold(0u64, |sum, s| {
                sum.wrapping_add(s.delivered.load(Ordering::Relaxed))
            });
            // Under the lock too: a subscription is either in the map or retired, never both.
            let retired = inner.delivered.load(Ordering::Relaxed);
            (subscribers.len(), retired.wrapping_add(live))
        };
        EventBusMetrics {
            published: inner.published.load(Ordering::Relaxed),
            delivered,
            catch_ups: inner.catch_ups.load(Ordering::Relaxed),
            subscribers,
            last_seq: inner.last_seq.load(Ordering::Acquire),
            oldest_seq: inner.oldest_seq.load(Ordering::Acquire),
            announced_by_seq: inner.announced_by_seq.load(Ordering::Relaxed),
            reads_recorded: inner.reads_recorded.load(Ordering::Relaxed),
            reads_coalesced: inner.reads_coalesced.load(Ordering::Relaxed),
        }
    }
}

/// What the live path carries for one committed event: the event itself when it fits a slot,
/// else only its seq (subscribers then read it from the store).
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) seq: u64,
    pub(crate) event: Option<Arc<Event>>,
}

impl BusInner {
    pub(crate) fn new_subscription_id(&self) -> SubscriptionId {
        SubscriptionId(self.next_subscription.fetch_add(1, Ordering::Relaxed))
    }

    /// Moves the deliveries `shared` counted into the bus's own count (once it has ended;
    /// a second call, or one after a later `put_back`, moves only what is left).
    pub(crate) fn retire(&self, shared: &SubShared) {
        let delivered = shared.delivered.swap(0, Ordering::AcqRel);
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
