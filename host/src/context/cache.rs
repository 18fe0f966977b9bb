//! The seeds' `DistributedContextCache`, local tier: a per-agent cache of the contexts an agent
//! reads, on the host side of its `context.get`.
//!
//! # What it keeps
//!
//! Each entry is a context as the agent last read it, with its document already as JSON text
//! (what `context.get` hands the guest), so a hit costs neither a copy of the document's tree
//! nor a serialization. Bounded per agent: at most [`CacheConfig::max_entries`] entries and
//! [`CacheConfig::max_bytes`] bytes ([`CachedDocument::bytes`]); the least recently used entry
//! is evicted first, and a document larger than the byte bound is never cached. An entry lives
//! at most [`CacheConfig::ttl_ms`] (by the service's clock, [`ContextService::now_ms`]).
//!
//! # Coherence
//!
//! An agent never reads from its cache a version older than one it has been told about. While
//! the cache holds entries it follows the event stream (one bus subscription, from before the
//! first entry was read). Before every lookup it takes in everything announced since: any
//! event about a cached context other than `accessed` (an update, delete, rollback, conflict,
//! resolution, share or revoke) drops its entry. Events are announced after their commit and
//! before the writer is answered, so an agent's own write, an event it received from
//! `events.next`, and a subscription's delivery were all announced before it can ask again;
//! the agent's own writes also drop their entry directly. A cache that fell more than
//! [`CacheConfig::max_lag_events`] events behind (an agent that has not read for a while in a
//! busy store) is emptied rather than replayed.
//!
//! # Access
//!
//! The cache never skips an access check: a hit is served only when the agent holds `read` on
//! the context right now ([`ContextService::allowed`]); otherwise the entry is dropped and the
//! read goes to the store, which refuses it and records the refusal as usual. A revoked or
//! expired share therefore makes the next read fail, cached or not. The host's access gate
//! (policies) runs before the cache is consulted.
//!
//! # What a hit does not do
//!
//! A hit is not recorded as an `accessed` event: the read that filled the entry was. Agents at
//! the `monitored` isolation level, whose every read is recorded, bypass the cache.

use super::{ContextError, ContextService, ContextStatus, ContextView, Permission};
use crate::events::{Event, EventFilter, EventType, SubscribeFrom, Subscription};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Default [`CacheConfig::ttl_ms`]: 30,000 ms.
pub const DEFAULT_CACHE_TTL_MS: u64 = 30_000;
/// Default [`CacheConfig::max_entries`]: 256 contexts per agent.
pub const DEFAULT_CACHE_ENTRIES: usize = 256;
/// Default [`CacheConfig::max_bytes`]: 8 MiB per agent.
pub const DEFAULT_CACHE_BYTES: usize = 8 << 20;
/// Default [`CacheConfig::max_lag_events`]: 4,096 events.
pub const DEFAULT_CACHE_MAX_LAG: u64 = 4096;

/// Bounds of one agent's [`ContextCache`]. Every field has a documented default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Milliseconds an entry is served after it was read from the store (0: nothing is
    /// cached). Default [`DEFAULT_CACHE_TTL_MS`] (30 s).
    pub ttl_ms: u64,
    /// Entries held at once; past it the least recently used is evicted (0: nothing is
    /// cached). Default [`DEFAULT_CACHE_ENTRIES`] (256).
    pub max_entries: usize,
    /// Bytes ([`CachedDocument::bytes`]) held at once; past it the least recently used entries
    /// are evicted, and a document larger than this is not cached. Default
    /// [`DEFAULT_CACHE_BYTES`] (8 MiB).
    pub max_bytes: usize,
    /// Events the cache may fall behind the bus before it empties itself instead of reading
    /// them. Default [`DEFAULT_CACHE_MAX_LAG`] (4,096).
    pub max_lag_events: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl_ms: DEFAULT_CACHE_TTL_MS,
            max_entries: DEFAULT_CACHE_ENTRIES,
            max_bytes: DEFAULT_CACHE_BYTES,
            max_lag_events: DEFAULT_CACHE_MAX_LAG,
        }
    }
}

/// A context as cached: what `context.get` returns, the document as JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedDocument {
    /// Id.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Type.
    pub context_type: String,
    /// Version.
    pub version: u64,
    /// Store-wide revision of its last change.
    pub revision: u64,
    /// Status.
    pub status: ContextStatus,
    /// The document, compact JSON text.
    pub doc: Arc<str>,
}

impl CachedDocument {
    /// What the entry costs against [`CacheConfig::max_bytes`]: the document's JSON text plus
    /// the id, owner and type.
    pub fn bytes(&self) -> usize {
        self.doc.len() + self.id.len() + self.owner.len() + self.context_type.len()
    }
}

impl From<ContextView> for CachedDocument {
    fn from(v: ContextView) -> Self {
        CachedDocument {
            doc: Arc::from(v.doc.to_string()),
            id: v.id,
            owner: v.owner,
            context_type: v.context_type,
            version: v.version,
            revision: v.revision,
            status: v.status,
        }
    }
}

/// Whether a read was served by the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From the cache.
    Hit,
    /// From the store (and cached when it fits).
    Miss,
}

/// What a cache holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Entries.
    pub entries: usize,
    /// Bytes of the entries ([`CachedDocument::bytes`]).
    pub bytes: usize,
    /// Whether it follows the event stream (it does while it holds entries).
    pub following_events: bool,
}

struct Entry {
    doc: CachedDocument,
    bytes: usize,
    fetched_at_ms: u64,
    tick: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Entries by last use (tick), least recent first.
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
    events: Option<Subscription>,
}

impl State {
    fn remove(&mut self, id: &str) {
        if let Some(e) = self.entries.remove(id) {
            self.order.remove(&e.tick);
            self.bytes -= e.bytes;
        }
    }

    /// With no entries there is nothing to keep coherent: stop following the stream until
    /// the next entry is read.
    fn tidy(&mut self) {
        if self.entries.is_empty() {
            self.events = None;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.bytes = 0;
        self.events = None;
    }

    fn touch(&mut self, id: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(id) {
            self.order.remove(&e.tick);
            e.tick = tick;
            self.order.insert(tick, id.to_string());
        }
    }

    fn apply(&mut self, event: &Event) {
        if event.event_type == EventType::Accessed {
            return;
        }
        if let Some(id) = &event.context_id {
            self.remove(id);
        }
    }

    fn insert(&mut self, config: &CacheConfig, doc: CachedDocument, now_ms: u64) {
        self.remove(&doc.id);
        let bytes = doc.bytes();
        if config.ttl_ms == 0 || config.max_entries == 0 || bytes > config.max_bytes {
            return;
        }
        while self.entries.len() >= config.max_entries || self.bytes + bytes > config.max_bytes {
            let Some((_, lru)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&lru) {
                self.bytes -= e.bytes;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, doc.id.clone());
        self.bytes += bytes;
        self.entries.insert(
            doc.id.clone(),
            Entry {
                doc,
                bytes,
                fetched_at_ms: now_ms,
                tick: self.tick,
            },
        );
    }
}

/// Polls `fut` once without waiting: `Some(output)` if it is ready now.
fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// One agent's cache of the contexts it reads (see the [module docs](self)). Calls on one
/// cache are serialized.
pub struct ContextCache {
    config: CacheConfig,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for ContextCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for ContextCache {
    fn default() -> Self {
        ContextCache::new(CacheConfig::default())
    }
}

impl ContextCache {
    /// An empty cache with these bounds.
    pub fn new(config: CacheConfig) -> Self {
        ContextCache {
            config,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// Its bounds.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Reads context `id` as `agent`: from the cache when it holds a current entry and the
    /// agent may read the context now, else from `svc` ([`ContextService::get`], which checks
    /// and records the read), caching what it read. Errors are `svc.get`'s.
    pub async fn get(
        &self,
        svc: &ContextService,
        agent: &str,
        id: &str,
    ) -> Result<(CachedDocument, Served), ContextError> {
        let mut st = self.state.lock().await;
        self.catch_up(&mut st, svc).await;
        if let Some(e) = st.entries.get(id) {
            let fresh = svc.now_ms().saturating_sub(e.fetched_at_ms) < self.config.ttl_ms;
            if fresh && svc.allowed(agent, id, Permission::Read).is_ok() {
                let doc = e.doc.clone();
                st.touch(id);
                return Ok((doc, Served::Hit));
            }
            // Expired, or no longer readable: the store decides (and records a refusal).
            st.remove(id);
            st.tidy();
        }
        self.load(&mut st, svc, agent, id)
            .await
            .map(|doc| (doc, Served::Miss))
    }

    /// The seeds' `prefetchContexts` for one context: makes sure the cache holds a current
    /// entry of `id`, reading it from `svc` when it does not. Returns the cached version and
    /// whether it had to be read. Errors are `svc.get`'s (a refusal is recorded as usual).
    pub async fn prefetch(
        &self,
        svc: &ContextService,
        agent: &str,
        id: &str,
    ) -> Result<(u64, Served), ContextError> {
        self.get(svc, agent, id)
            .await
            .map(|(doc, served)| (doc.version, served))
    }

    /// Drops the entry of `id` (the agent wrote it).
    pub async fn invalidate(&self, id: &str) {
        let mut st = self.state.lock().await;
        st.remove(id);
        st.tidy();
    }

    /// The seeds' `ensureCoherence`: drops the entry of `id` unless it holds `version` (the
    /// authoritative version a synchronization found).
    pub async fn ensure_coherence(&self, id: &str, version: u64) {
        let mut st = self.state.lock().await;
        if st.entries.get(id).is_some_and(|e| e.doc.version != version) {
            st.remove(id);
            st.tidy();
        }
    }

    /// Drops every entry.
    pub async fn clear(&self) {
        self.state.lock().await.clear();
    }

    /// What the cache holds now.
    pub async fn stats(&self) -> CacheStats {
        let st = self.state.lock().await;
        CacheStats {
            entries: st.entries.len(),
            bytes: st.bytes,
            following_events: st.events.is_some(),
        }
    }

    /// Reads `id` from the store and caches it when it fits.
    async fn load(
        &self,
        st: &mut State,
        svc: &ContextService,
        agent: &str,
        id: &str,
    ) -> Result<CachedDocument, ContextError> {
        // Follow the stream from before the read: a change committed after it is seen.
        if st.events.is_none() && self.config.ttl_ms > 0 && self.config.max_entries > 0 {
            st.events = svc
                .bus()
                .subscribe(EventFilter::all(), SubscribeFrom::Now)
                .ok();
        }
        let read = svc.get(agent, id).await;
        let doc = match read {
            Ok(view) => CachedDocument::from(view),
            Err(e) => {
                st.tidy();
                return Err(e);
            }
        };
        if st.events.is_some() {
            st.insert(&self.config, doc.clone(), svc.now_ms());
        }
        st.tidy();
        Ok(doc)
    }

    /// Takes in every event announced since the last call (see the module docs).
    async fn catch_up(&self, st: &mut State, svc: &ContextService) {
        let Some(sub) = st.events.as_ref() else {
            return;
        };
        let behind = |sub: &Subscription| svc.bus().last_seq().saturating_sub(sub.last_seq());
        if behind(sub) > self.config.max_lag_events {
            st.clear();
            return;
        }
        loop {
            let Some(sub) = st.events.as_mut() else {
                return;
            };
            let next = match poll_once(sub.next()) {
                Some(next) => next,
                // Announced but not yet delivered (read from the store): wait for it.
                None if behind(sub) > 0 => sub.next().await,
                None => return,
            };
            match next {
                Ok(event) => {
                    st.apply(&event);
                    st.tidy();
                }
                // Unsubscribed or compacted: nothing cached can be trusted.
                Err(_) => {
                    st.clear();
                    return;
                }
            }
        }
    }
}
