//! The hot tier: the in-memory state of contexts, shares, agents, schemas and labels.
//!
//! * [`Committed`] is what readers (reads, lists, access checks, grants, labels, the
//!   registry) see: only changes whose transaction has committed. An operation's changes
//!   are copied into it by an after-commit hook ([`Committed::publish`]), so a batch that
//!   fails to commit leaves no trace.
//! * [`Working`] belongs to the writer thread: an overlay of what the current group-commit
//!   batch has staged over the committed state. An operation sees it through [`Inner`] (the
//!   committed maps with the overlay on top), so a later operation of the batch sees what an
//!   earlier one staged. Every change logs the overlay entry it replaced: an operation that
//!   rolls back is undone from that log. The overlay is dropped when the next batch starts:
//!   by then it was either published (the batch committed) or must vanish (it did not).
//!
//! Contexts are bounded in bytes: the committed tier keeps the documents of the
//! least-recently-used contexts up to [`ContextConfig::hot_tier_bytes`] (a document larger
//! than the whole bound is not kept, rather than evicting every other one); beyond it, a
//! context keeps only its metadata (owner, type, status, version: what access checks and
//! lists need) and its document, field stamps and pending conflict are loaded from SQLite
//! when next needed. A document's size is its JSON-encoded length plus its field stamps and
//! the competing values of its pending conflict.
//! Values sit behind [`Arc`], so publishing, logging and undoing copy pointers, not
//! documents.
//!
//! [`ContextConfig::hot_tier_bytes`]: super::ContextConfig::hot_tier_bytes

use super::{AgentRegistration, ContextState, Share};

use hashlink::LinkedHashMap;
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A committed map from ids to values.
pub(super) struct Map<V> {
    map: HashMap<String, Arc<V>>,
}

impl<V> Default for Map<V> {
    fn default() -> Self {
        Map {
            map: HashMap::new(),
        }
    }
}

impl<V> Map<V> {
    pub(super) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map(|v| &**v)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|v| &**v)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.map.iter().map(|(k, v)| (k, &**v))
    }

    /// Sets `key` (loading at open).
    pub(super) fn load(&mut self, key: String, value: V) {
        self.map.insert(key, Arc::new(value));
    }
}

/// What the current batch staged over one committed map (`None`: removed), and the undo log
/// of the running operation (the overlay entry each key had before it first touched it).
struct Overlay<V> {
    entries: HashMap<String, Option<Arc<V>>>,
    undo: Vec<(String, Option<Option<Arc<V>>>)>,
    undo_keys: HashSet<String>,
}

impl<V> Default for Overlay<V> {
    fn default() -> Self {
        Overlay {
            entries: HashMap::new(),
            undo: Vec::new(),
            undo_keys: HashSet::new(),
        }
    }
}

impl<V> Overlay<V> {
    fn begin_op(&mut self) {
        self.undo.clear();
        self.undo_keys.clear();
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.undo.clear();
        self.undo_keys.clear();
    }

    fn undo_op(&mut self) {
        for (key, old) in self.undo.drain(..).rev() {
            match old {
                Some(entry) => self.entries.insert(key, entry),
                None => self.entries.remove(&key),
            };
        }
        self.undo_keys.clear();
    }

    /// The new values of every key the running operation touched.
    fn changes(&self) -> Changes<V> {
        self.undo
            .iter()
            .map(|(k, _)| (k.clone(), self.entries.get(k).cloned().flatten()))
            .collect()
    }
}

/// One map as an operation sees it: the committed values with the batch's overlay on top.
/// Reading methods mirror [`HashMap`]'s; writing ones log first.
pub(super) struct Staging<'a, V> {
    base: &'a Map<V>,
    overlay: &'a mut Overlay<V>,
}

impl<V: Clone> Staging<'_, V> {
    fn log(&mut self, key: &str) {
        if self.overlay.undo_keys.insert(key.to_string()) {
            let before = self.overlay.entries.get(key).cloned();
            self.overlay.undo.push((key.to_string(), before));
        }
    }

    fn current(&self, key: &str) -> Option<&Arc<V>> {
        match self.overlay.entries.get(key) {
            Some(staged) => staged.as_ref(),
            None => self.base.map.get(key),
        }
    }

    pub(super) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized + AsRef<str>,
    {
        self.current(key.as_ref()).map(|v| &**v)
    }

    /// The value of `key`, shared (a pointer copy, not a copy of the value).
    pub(super) fn get_arc(&self, key: &str) -> Option<Arc<V>> {
        self.current(key).cloned()
    }

    pub(super) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized + AsRef<str>,
    {
        self.current(key.as_ref()).is_some()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        let staged = &self.overlay.entries;
        self.base
            .map
            .iter()
            .filter(|(k, _)| !staged.contains_key(*k))
            .map(|(k, v)| (k, &**v))
            .chain(
                staged
                    .iter()
                    .filter_map(|(k, v)| v.as_deref().map(|v| (k, v))),
            )
    }

    /// The keys the running operation changed, each with its value before the operation.
    pub(super) fn touched(&self) -> Vec<(String, Option<Arc<V>>)> {
        self.overlay
            .undo
            .iter()
            .map(|(k, before)| {
                let before = match before {
                    Some(staged) => staged.clone(),
                    None => self.base.map.get(k).cloned(),
                };
                (k.clone(), before)
            })
            .collect()
    }

    /// Sets `key` to `value`; returns the previous value.
    pub(super) fn insert(&mut self, key: String, value: V) -> Option<Arc<V>> {
        self.log(&key);
        let before = self.current(&key).cloned();
        self.overlay.entries.insert(key, Some(Arc::new(value)));
        before
    }

    /// Removes `key`; returns its value.
    pub(super) fn remove<Q>(&mut self, key: &Q) -> Option<Arc<V>>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized + AsRef<str>,
    {
        let key = key.as_ref();
        let before = self.current(key).cloned()?;
        self.log(key);
        self.overlay.entries.insert(key.to_string(), None);
        Some(before)
    }

    /// The value of `key`, to change in place (copied first while the committed state
    /// shares it).
    pub(super) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized + AsRef<str>,
    {
        let key = key.as_ref();
        let value = self.current(key).cloned()?;
        self.log(key);
        let slot = self.overlay.entries.entry(key.to_string()).or_default();
        Some(Arc::make_mut(slot.get_or_insert(value)))
    }

    /// Like [`HashMap::entry`], for `.or_default()`.
    pub(super) fn entry(&mut self, key: String) -> Entry<'_, V> {
        self.log(&key);
        let value = self.current(&key).cloned();
        let slot = self.overlay.entries.entry(key).or_default();
        *slot = value;
        Entry { slot }
    }
}

impl<V: Clone, Q> std::ops::Index<&Q> for Staging<'_, V>
where
    String: Borrow<Q>,
    Q: Hash + Eq + ?Sized + AsRef<str>,
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

/// An entry of a [`Staging`] map (already logged).
pub(super) struct Entry<'a, V> {
    slot: &'a mut Option<Arc<V>>,
}

impl<'a, V: Clone + Default> Entry<'a, V> {
    pub(super) fn or_default(self) -> &'a mut V {
        Arc::make_mut(self.slot.get_or_insert_with(Arc::default))
    }
}

/// The new values of the keys one operation changed (`None`: removed), to publish.
type Changes<V> = Vec<(String, Option<Arc<V>>)>;

/// The committed hot tier: what readers see.
#[derive(Default)]
pub(super) struct Committed {
    pub(super) contexts: Map<ContextState>,
    pub(super) shares: Map<BTreeMap<String, Share>>,
    pub(super) agents: Map<AgentRegistration>,
    pub(super) schemas: Map<Arc<jsonschema::Validator>>,
    /// Host-kept labels by context (see [`labels`](super::labels)).
    pub(super) labels: Map<Vec<String>>,
    /// The last committed revision.
    pub(super) revision: u64,
    lru: Mutex<Lru>,
}

/// Contexts whose documents are in memory, least recently used first, with their sizes.
#[derive(Default)]
struct Lru {
    order: LinkedHashMap<String, usize>,
    bytes: usize,
}

impl Lru {
    fn put(&mut self, id: &str, size: usize) {
        if let Some(old) = self.order.insert(id.to_string(), size) {
            self.bytes -= old;
        }
        self.bytes += size;
    }

    fn forget(&mut self, id: &str) {
        if let Some(old) = self.order.remove(id) {
            self.bytes -= old;
        }
    }
}

/// The size a context counts for in the hot tier: its JSON-encoded document, its field
/// stamps and the competing values of its pending conflict.
fn resident_bytes(state: &ContextState) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, &state.doc);
    if let Some(pending) = &state.pending {
        let _ = serde_json::to_writer(&mut count, pending);
    }
    let stamps: usize = state.field_stamps.keys().map(|k| k.len() + 48).sum();
    count.0 + stamps
}

impl Committed {
    /// An empty tier at `revision` (fill it with the maps' `load`).
    pub(super) fn new(revision: u64) -> Committed {
        Committed {
            revision,
            ..Committed::default()
        }
    }

    /// Applies an operation's committed changes, then evicts documents beyond `bound` bytes.
    /// A document larger than the whole bound is not kept (and evicts nothing).
    /// Applies `staged` and returns whether it changed what an access decision reads of a
    /// context (its existence, type, owner or labels: see
    /// [`attributes_generation`](super::ContextService::attributes_generation)).
    pub(super) fn publish(&mut self, staged: Staged, bound: usize) -> bool {
        let attributes = !staged.labels.is_empty()
            || staged.contexts.iter().any(|(id, new)| {
                let old = self.contexts.map.get(id);
                match (old, new) {
                    (Some(o), Some(n)) => o.context_type != n.context_type || o.owner != n.owner,
                    (None, None) => false,
                    _ => true,
                }
            });
        let mut oversized = Vec::new();
        {
            let lru = self.lru.get_mut().unwrap_or_else(|p| p.into_inner());
            for (id, state) in &staged.contexts {
                match state {
                    Some(s) if s.resident => match resident_bytes(s) {
                        size if size <= bound => lru.put(id, size),
                        _ => {
                            lru.forget(id);
                            oversized.push(id.clone());
                        }
                    },
                    _ => lru.forget(id),
                }
            }
        }
        publish(&mut self.contexts, staged.contexts);
        for id in oversized {
            if let Some(state) = self.contexts.map.get_mut(&id) {
                *state = Arc::new(state.without_document());
            }
        }
        publish(&mut self.shares, staged.shares);
        publish(&mut self.agents, staged.agents);
        publish(&mut self.schemas, staged.schemas);
        publish(&mut self.labels, staged.labels);
        self.revision = self.revision.max(staged.revision);
        self.evict(bound);
        attributes
    }

    /// Marks context `id` as just used (its document is evicted last).
    pub(super) fn touch(&self, id: &str) {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        lru.order.to_back(id);
    }

    /// Puts back `loaded`, the document of a context read from disk while `seen` (its
    /// metadata without document) was current, and returns the state to answer with. If the
    /// context changed meanwhile, nothing is put back: the answer is the current state if it
    /// is hot, `loaded` if it is the same version, else `Err` with the current metadata, to
    /// load again.
    pub(super) fn put_back(
        &mut self,
        seen: &Arc<ContextState>,
        loaded: ContextState,
        bound: usize,
    ) -> Result<Arc<ContextState>, Arc<ContextState>> {
        match self.contexts.map.get(&loaded.id) {
            Some(now) if Arc::ptr_eq(now, seen) && loaded.revision >= now.revision => {
                // The replica revision is kept in memory only.
                let loaded = ContextState {
                    kv_revision: now.kv_revision,
                    ..loaded
                };
                let size = resident_bytes(&loaded);
                if size > bound {
                    // Too large to keep: answered, and nothing is evicted for it.
                    return Ok(Arc::new(loaded));
                }
                let loaded = Arc::new(loaded);
                let lru = self.lru.get_mut().unwrap_or_else(|p| p.into_inner());
                lru.put(&loaded.id, size);
                self.contexts.map.insert(loaded.id.clone(), loaded.clone());
                self.evict(bound);
                Ok(loaded)
            }
            Some(now) if now.resident => Ok(now.clone()),
            Some(now) if now.revision != loaded.revision => Err(now.clone()),
            _ => Ok(Arc::new(loaded)),
        }
    }

    /// The committed state of context `id` as stored in the tier (maybe without document).
    pub(super) fn context_arc(&self, id: &str) -> Option<Arc<ContextState>> {
        self.contexts.map.get(id).cloned()
    }

    /// Bytes of documents held, and how many contexts hold theirs.
    #[cfg(test)]
    pub(super) fn resident(&self) -> (usize, usize) {
        let lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        (lru.bytes, lru.order.len())
    }

    /// Drops the documents of the least recently used contexts until at most `bound` bytes
    /// are held.
    fn evict(&mut self, bound: usize) {
        let lru = self.lru.get_mut().unwrap_or_else(|p| p.into_inner());
        while lru.bytes > bound {
            let Some((id, size)) = lru.order.pop_front() else {
                break;
            };
            lru.bytes -= size;
            if let Some(state) = self.contexts.map.get_mut(&id) {
                *state = Arc::new(state.without_document());
            }
        }
    }
}

fn publish<V>(map: &mut Map<V>, changes: Changes<V>) {
    for (key, value) in changes {
        match value {
            Some(v) => map.map.insert(key, v),
            None => map.map.remove(&key),
        };
    }
}

/// The writer's state: the current batch's overlay and what only the writer keeps.
#[derive(Default)]
pub(super) struct Working {
    contexts: Overlay<ContextState>,
    shares: Overlay<BTreeMap<String, Share>>,
    agents: Overlay<AgentRegistration>,
    schemas: Overlay<Arc<jsonschema::Validator>>,
    labels: Overlay<Vec<String>>,
    /// The next generated context number.
    pub(super) next_id: u64,
    /// The last revision the current batch staged.
    staged_revision: Option<u64>,
    /// The store batch the overlay belongs to.
    batch: u64,
}

impl Working {
    /// A writer state whose generated context ids start at `ctx-{next_id}`.
    pub(super) fn new(next_id: u64) -> Working {
        Working {
            next_id,
            ..Working::default()
        }
    }

    /// Drops what the current batch staged, once it is published (so that the writer holds
    /// no document past the hot tier's bound between batches).
    pub(super) fn published(&mut self) {
        self.contexts.clear();
        self.shares.clear();
        self.agents.clear();
        self.schemas.clear();
        self.labels.clear();
    }

    /// Starts an operation of store batch `batch` over `committed`. A new batch drops the
    /// previous batch's overlay: published if it committed, void if it did not.
    pub(super) fn begin<'a>(&'a mut self, batch: u64, committed: &'a Committed) -> Inner<'a> {
        if batch != self.batch {
            self.contexts.entries.clear();
            self.shares.entries.clear();
            self.agents.entries.clear();
            self.schemas.entries.clear();
            self.labels.entries.clear();
            self.staged_revision = None;
            self.batch = batch;
        }
        self.contexts.begin_op();
        self.shares.begin_op();
        self.agents.begin_op();
        self.schemas.begin_op();
        self.labels.begin_op();
        let revision = self
            .staged_revision
            .unwrap_or(committed.revision)
            .max(committed.revision);
        Inner {
            contexts: Staging {
                base: &committed.contexts,
                overlay: &mut self.contexts,
            },
            shares: Staging {
                base: &committed.shares,
                overlay: &mut self.shares,
            },
            agents: Staging {
                base: &committed.agents,
                overlay: &mut self.agents,
            },
            schemas: Staging {
                base: &committed.schemas,
                overlay: &mut self.schemas,
            },
            labels: Staging {
                base: &committed.labels,
                overlay: &mut self.labels,
            },
            revision,
            next_id: self.next_id,
            staged_revision: &mut self.staged_revision,
            next_id_slot: &mut self.next_id,
        }
    }
}

/// The hot tier as an operation sees it: committed state with the batch's staged changes on
/// top. Change it like plain maps; the service publishes or undoes the changes.
pub(super) struct Inner<'a> {
    pub(super) contexts: Staging<'a, ContextState>,
    pub(super) shares: Staging<'a, BTreeMap<String, Share>>,
    pub(super) agents: Staging<'a, AgentRegistration>,
    pub(super) schemas: Staging<'a, Arc<jsonschema::Validator>>,
    /// Host-kept labels by context.
    pub(super) labels: Staging<'a, Vec<String>>,
    /// The last revision (committed or staged by this batch); a change takes the next one.
    pub(super) revision: u64,
    pub(super) next_id: u64,
    staged_revision: &'a mut Option<u64>,
    next_id_slot: &'a mut u64,
}

/// What one operation changed, published to the committed tier once its batch commits.
pub(super) struct Staged {
    contexts: Changes<ContextState>,
    shares: Changes<BTreeMap<String, Share>>,
    agents: Changes<AgentRegistration>,
    schemas: Changes<Arc<jsonschema::Validator>>,
    labels: Changes<Vec<String>>,
    revision: u64,
}

impl Staged {
    pub(super) fn is_empty(&self) -> bool {
        self.contexts.is_empty()
            && self.shares.is_empty()
            && self.agents.is_empty()
            && self.schemas.is_empty()
            && self.labels.is_empty()
    }
}

#[cfg(test)]
impl Working {
    /// Bytes of documents the writer holds for its batch (staged or in an undo log).
    pub(super) fn held_document_bytes(&self) -> usize {
        let staged = self.contexts.entries.values().flatten();
        let logged = self
            .contexts
            .undo
            .iter()
            .filter_map(|(_, v)| v.clone().flatten());
        staged
            .cloned()
            .chain(logged)
            .filter(|s| s.resident)
            .map(|s| resident_bytes(&s))
            .sum()
    }
}

impl Inner<'_> {
    /// Puts the document of context `id` back into the overlay if the committed tier holds
    /// only its metadata (`load` reads it inside the write transaction).
    pub(super) fn ensure_resident(
        &mut self,
        id: &str,
        load: impl FnOnce() -> Result<Option<ContextState>, crate::store::StoreError>,
    ) -> Result<(), crate::store::StoreError> {
        if let Some(kv_revision) = self
            .contexts
            .get(id)
            .filter(|c| !c.resident)
            .map(|c| c.kv_revision)
            && let Some(state) = load()?
        {
            // The replica revision is kept in memory only.
            let state = ContextState {
                kv_revision,
                ..state
            };
            self.contexts.insert(id.to_string(), state);
        }
        Ok(())
    }

    /// Ends an operation that rolled back (or panicked): undoes its changes.
    pub(super) fn undo(self) {
        self.contexts.overlay.undo_op();
        self.shares.overlay.undo_op();
        self.agents.overlay.undo_op();
        self.schemas.overlay.undo_op();
        self.labels.overlay.undo_op();
        *self.next_id_slot = (*self.next_id_slot).max(self.next_id);
    }

    /// Ends an operation whose changes stay staged: what it changed, to publish.
    pub(super) fn finish(self) -> Staged {
        *self.next_id_slot = (*self.next_id_slot).max(self.next_id);
        *self.staged_revision = Some(self.revision);
        Staged {
            contexts: self.contexts.overlay.changes(),
            shares: self.shares.overlay.changes(),
            agents: self.agents.overlay.changes(),
            schemas: self.schemas.overlay.changes(),
            labels: self.labels.overlay.changes(),
            revision: self.revision,
        }
    }
}
