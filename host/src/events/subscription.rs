//! [`Subscription`]: a gap-free, resumable stream of the events matching a filter.

use super::{
    BusInner, EVENT_COLUMNS, Event, EventError, EventFilter, Live, filter, query_events, seq_bounds,
};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;
use tokio::sync::broadcast;

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

/// State shared between a subscription and its bus (for `unsubscribe` and the metrics).
pub(crate) struct SubShared {
    cancelled: AtomicBool,
    /// The task of a pending [`Subscription::next`], woken by [`cancel`](Self::cancel).
    /// Registered again only when the task changes, so a delivery costs one uncontended lock,
    /// not a waiter-list insertion and removal.
    waiter: Mutex<Option<Waker>>,
    /// Events this subscription delivered (wrapping; folded into the bus's count when it
    /// ends). Per subscription, so a thousand deliveries of one event do not all bounce one
    /// cache line between cores.
    pub(crate) delivered: AtomicU64,
}

impl SubShared {
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        let waiter = self.waiter.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(waker) = waiter {
            waker.wake();
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Makes `waker` the one [`cancel`](Self::cancel) wakes.
    fn register(&self, waker: &Waker) {
        let mut waiter = self.waiter.lock().unwrap_or_else(|p| p.into_inner());
        if !waiter.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *waiter = Some(waker.clone());
        }
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
    /// Matching events read from the store (or given back), not yet delivered.
    pending: VecDeque<Arc<Event>>,
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
        // Under the lock `metrics` reads with, so it never sees the count in neither place.
        let mut subscribers = self
            .bus
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        subscribers.remove(&self.id);
        self.bus.retire(&self.shared);
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
            waiter: Mutex::new(None),
            delivered: AtomicU64::new(0),
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
    /// the future loses no event. An event from the live path is cloned out of the copy all
    /// subscribers share; [`next_shared`](Self::next_shared) hands out that copy instead.
    pub async fn next(&mut self) -> Result<Event, EventError> {
        self.next_shared().await.map(Arc::unwrap_or_clone)
    }

    /// [`next`](Self::next), returning the event as the `Arc` every subscriber that receives
    /// it on the live path shares: no per-subscriber copy of its ids and data. Same errors,
    /// same cancel safety.
    pub async fn next_shared(&mut self) -> Result<Arc<Event>, EventError> {
        loop {
            if self.shared.is_cancelled() {
                return Err(EventError::Unsubscribed);
            }
            if let Some(event) = self.pending.pop_front() {
                self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                return Ok(event);
            }
            if self.catching_up {
                self.catch_up().await?;
                continue;
            }
            // Waits for the live path or for `unsubscribe`, whichever comes first.
            let received = {
                let shared = &self.shared;
                let recv = self.live.recv();
                tokio::pin!(recv);
                std::future::poll_fn(|cx| {
                    if shared.is_cancelled() {
                        return Poll::Ready(None);
                    }
                    shared.register(cx.waker());
                    // Seen after registering: a cancel either finds the waker or is seen here.
                    if shared.is_cancelled() {
                        return Poll::Ready(None);
                    }
                    recv.as_mut().poll(cx).map(Some)
                })
                .await
            };
            let Some(received) = received else { continue };
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
                        self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                        return Ok(event);
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
    /// Takes an [`Event`] or the `Arc` [`next_shared`](Self::next_shared) returned.
    pub fn put_back(&mut self, event: impl Into<Arc<Event>>) {
        let event = event.into();
        debug_assert!(self.pending.front().is_none_or(|e| e.seq > event.seq));
        self.shared.delivered.fetch_sub(1, Ordering::Relaxed);
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
        self.pending.extend(events.into_iter().map(Arc::new));
        Ok(())
    }
}
