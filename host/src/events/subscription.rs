//! [`Subscription`]: a gap-free, resumable stream of the events matching a filter.

use super::{
    BusInner, EVENT_COLUMNS, Event, EventError, EventFilter, Live, filter, query_events, seq_bounds,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, broadcast};

/// Events read from the store per catch-up page: bounds a lagging subscriber's memory.
const CATCH_UP_PAGE: usize = 256;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SubscribeFrom {
    /// With the events committed after subscribing.
    Now,
    /// With the events after this seq (0 = from the beginning); resume with
    /// [`Subscription::last_seq`] of an earlier subscription. A seq beyond the newest event
    /// skips everything up to it.
    AfterSeq(u64),
}

/// Identifies a subscription on its bus.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SubscriptionId(pub u64);

impl std::fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sub-{}", self.0)
    }
}

/// State shared between a subscription and its bus (for `unsubscribe`).
pub(crate) struct SubShared {
    cancelled: AtomicBool,
    wake: Notify,
}

impl SubShared {
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        // Stores a permit if nobody waits, so the next `next()` sees it.
        self.wake.notify_one();
    }
}

/// A stream of the events matching a filter, in seq order, without gaps or duplicates.
/// See the [module documentation](super) for how it keeps up and what it costs.
pub struct Subscription {
    id: SubscriptionId,
    filter: EventFilter,
    bus: Arc<BusInner>,
    shared: Arc<SubShared>,
    live: broadcast::Receiver<Live>,
    /// Every event with a seq up to here has been delivered, skipped as not matching, or
    /// queued in `pending`.
    cursor: u64,
    /// Matching events read from the store, not yet delivered.
    pending: VecDeque<Event>,
    /// The next events must come from the store (resume, lag or gap).
    catching_up: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("filter", &self.filter)
            .field("last_seq", &self.last_seq())
            .field("catching_up", &self.catching_up)
            .finish()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.bus
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Subscription {
    pub(crate) fn start(
        bus: Arc<BusInner>,
        filter: EventFilter,
        from: SubscribeFrom,
    ) -> Result<Subscription, EventError> {
        // Join the live path first: anything announced from here on reaches us, and anything
        // announced earlier is in the store, which the gap check reads when needed.
        let live = bus.live.subscribe();
        let last = bus.last_seq.load(Ordering::Acquire);
        let (cursor, catching_up) = match from {
            SubscribeFrom::Now => (last, false),
            SubscribeFrom::AfterSeq(after) => {
                let oldest = bus.oldest_seq.load(Ordering::Acquire);
                if after < last && after + 1 < oldest {
                    return Err(EventError::HistoryCompacted {
                        requested: after + 1,
                        oldest,
                    });
                }
                (after, after < last)
            }
        };
        let id = bus.new_subscription_id();
        let shared = Arc::new(SubShared {
            cancelled: AtomicBool::new(false),
            wake: Notify::new(),
        });
        bus.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, shared.clone());
        Ok(Subscription {
            id,
            filter,
            bus,
            shared,
            live,
            cursor,
            pending: VecDeque::new(),
            catching_up,
        })
    }

    /// This subscription's id (for [`EventBus::unsubscribe`](super::EventBus::unsubscribe)).
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// The filter it delivers.
    pub fn filter(&self) -> &EventFilter {
        &self.filter
    }

    /// The resume point: every matching event up to this seq has been delivered, so
    /// [`SubscribeFrom::AfterSeq`] with it continues exactly where this one stands.
    pub fn last_seq(&self) -> u64 {
        match self.pending.front() {
            Some(event) => event.seq - 1,
            None => self.cursor,
        }
    }

    /// The next matching event. Fails with [`EventError::Unsubscribed`] once unsubscribed and
    /// with [`EventError::HistoryCompacted`] if the subscription fell so far behind that
    /// retention dropped events it had not seen (it then stays failed). Cancel-safe: dropping
    /// the future loses no event.
    pub async fn next(&mut self) -> Result<Event, EventError> {
        loop {
            if self.shared.cancelled.load(Ordering::Acquire) {
                return Err(EventError::Unsubscribed);
            }
            if let Some(event) = self.pending.pop_front() {
                self.bus.delivered.fetch_add(1, Ordering::Relaxed);
                return Ok(event);
            }
            if self.catching_up {
                self.catch_up().await?;
                continue;
            }
            let received = tokio::select! {
                biased;
                _ = self.shared.wake.notified() => continue,
                received = self.live.recv() => received,
            };
            match received {
                Ok(live) if live.seq <= self.cursor => {}
                Ok(live) if live.seq != self.cursor + 1 => self.fall_back(),
                // Too large for a live slot: read it from the store.
                Ok(Live { event: None, .. }) => self.fall_back(),
                Ok(Live {
                    event: Some(event), ..
                }) => {
                    self.cursor = event.seq;
                    if self.filter.matches(&event) {
                        self.bus.delivered.fetch_add(1, Ordering::Relaxed);
                        return Ok(Event::clone(&event));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.fall_back(),
                Err(broadcast::error::RecvError::Closed) => return Err(EventError::Closed),
            }
        }
    }

    /// Gives back `event`, the last one [`next`](Self::next) returned, undelivered: the next
    /// call returns it again and [`last_seq`](Self::last_seq) stands before it. For a
    /// receiver that refuses a delivery (say, an access check failed) without losing it.
    pub fn put_back(&mut self, event: Event) {
        debug_assert!(self.pending.front().is_none_or(|e| e.seq > event.seq));
        self.bus.delivered.fetch_sub(1, Ordering::Relaxed);
        self.pending.push_front(event);
    }

    /// [`next`](Self::next), or `Ok(None)` if no matching event arrives within `timeout`.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, EventError> {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The live path skipped events (lag or a gap): read them from the store.
    fn fall_back(&mut self) {
        self.catching_up = true;
    }

    /// Reads the next page of matching events after the cursor from the store. State is
    /// only updated after the read, so a dropped `next()` loses nothing.
    async fn catch_up(&mut self) -> Result<(), EventError> {
        let cursor = self.cursor;
        let filter = self.filter.clone();
        let blobs = self.bus.store.blobs().clone();
        let page = self
            .bus
            .store
            .read(move |conn| {
                // One read transaction: bounds and rows from the same snapshot.
                let tx = conn.unchecked_transaction()?;
                let (oldest, last) = seq_bounds(&tx)?;
                if cursor < last && cursor + 1 < oldest {
                    return Ok(Err(EventError::HistoryCompacted {
                        requested: cursor + 1,
                        oldest,
                    }));
                }
                let mut params = Vec::new();
                let condition = filter.sql_condition(&mut params);
                params.push(rusqlite::types::Value::Integer(filter::clamp_i64(cursor)));
                params.push(rusqlite::types::Value::Integer(filter::clamp_i64(last)));
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE {condition} AND seq > ? AND seq <= ? \
                     ORDER BY seq LIMIT {CATCH_UP_PAGE}"
                );
                let events = query_events(&tx, &blobs, &sql, params)?;
                Ok(Ok((events, last)))
            })
            .await??;
        let (events, last) = page;
        self.bus.catch_ups.fetch_add(1, Ordering::Relaxed);
        if events.len() == CATCH_UP_PAGE {
            self.cursor = events.last().map_or(cursor, |e| e.seq);
        } else {
            self.cursor = last.max(cursor);
            self.catching_up = false;
        }
        self.pending.extend(events);
        Ok(())
    }
}
