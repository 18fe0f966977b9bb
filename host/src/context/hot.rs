//! The hot tier: the in-memory state of contexts, shares, agents, schemas and labels, in two
//! copies.
//!
//! * The **working** copy belongs to the writer thread. Operations change it as they run
//!   (so a later operation of the same group-commit batch sees what an earlier one staged).
//!   Every map logs the old value of each key an operation touches: an operation that rolls
//!   back is undone from that log, and at the start of each new batch the keys the previous
//!   batch touched are set back to their committed values (a no-op if that batch committed,
//!   an undo if its `COMMIT` failed).
//! * The **committed** copy is what readers (reads, lists, access checks, grants, labels,
//!   the registry) see. An operation's changes are copied into it by an after-commit hook,
//!   so nothing is visible before its transaction has committed, and a failed batch leaves
//!   no trace.
//!
//! Values sit behind [`Arc`], so logging, publishing and undoing copy pointers, not
//! documents; changing a value in place copies it only while the other copy shares it.

use super::{AgentRegistration, ContextState, Share};
use crate::events::SubscriptionId;
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

/// A map from ids to values that logs, for the running operation, the value each key had
/// before the operation first touched it, and remembers every key the current batch touched.
/// Reading methods mirror [`HashMap`]'s; writing ones log first.
pub(super) struct Tracked<V> {
    map: HashMap<String, Arc<V>>,
    /// First-touch old values of the running operation.
    undo: Vec<(String, Option<Arc<V>>)>,
    undo_keys: HashSet<String>,
    /// Keys touched by any operation of the current batch.
    batch_keys: HashSet<String>,
}

impl<V> Default for Tracked<V> {
    fn default() -> Self {
        Tracked {
            map: HashMap::new(),
            undo: Vec::new(),
            undo_keys: HashSet::new(),
            batch_keys: HashSet::new(),
        }
    }
}

/// The new values of the keys one operation changed (`None`: removed), to publish.
type Changes<V> = Vec<(String, Option<Arc<V>>)>;

impl<V: Clone> Tracked<V> {
    fn log(&mut self, key: &str) {
        if !self.undo_keys.contains(key) {
            self.undo_keys.insert(key.to_string());
            self.batch_keys.insert(key.to_string());
            self.undo
                .push((key.to_string(), self.map.get(key).cloned()));
        }
    }

    pub(super) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map(|v| &**v)
    }

    pub(super) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.contains_key(key)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|v| &**v)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.map.iter().map(|(k, v)| (k, &**v))
    }

    /// Sets `key` to `value`; returns the previous value.
    pub(super) fn insert(&mut self, key: String, value: V) -> Option<Arc<V>> {
        self.log(&key);
        self.map.insert(key, Arc::new(value))
    }

    /// Removes `key`; returns its value.
    pub(super) fn remove<Q>(&mut self, key: &Q) -> Option<Arc<V>>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized + AsRef<str>,
    {
        if !self.map.contains_key(key) {
            return None;
        }
        self.log(key.as_ref());
        self.map.remove(key)
    }

    /// The value of `key`, to change in place (copied first if the committed copy shares it).
    pub(super) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized + AsRef<str>,
    {
        if !self.map.contains_key(key) {
            return None;
        }
        self.log(key.as_ref());
        self.map.get_mut(key).map(Arc::make_mut)
    }

    /// Like [`HashMap::entry`], for `.or_default()`.
    pub(super) fn entry(&mut self, key: String) -> Entry<'_, V> {
        self.log(&key);
        Entry {
            slot: self.map.entry(key),
        }
    }

    /// Starts an operation: forgets the previous operation's undo log.
    fn begin_op(&mut self) {
        self.undo.clear();
        self.undo_keys.clear();
    }

    /// Undoes everything the running operation changed.
    fn undo_op(&mut self) {
        for (key, old) in self.undo.drain(..).rev() {
            match old {
                Some(v) => self.map.insert(key, v),
                None => self.map.remove(&key),
            };
        }
        self.undo_keys.clear();
    }

    /// The new values of every key the running operation touched.
    fn changes(&self) -> Changes<V> {
        self.undo
            .iter()
            .map(|(k, _)| (k.clone(), self.map.get(k).cloned()))
            .collect()
    }

    /// Sets every key the last batch touched back to its value in `committed`.
    fn restore_batch(&mut self, committed: &Tracked<V>) {
        for key in self.batch_keys.drain() {
            match committed.map.get(&key) {
                Some(v) => self.map.insert(key, v.clone()),
                None => self.map.remove(&key),
            };
        }
    }

    fn publish(&mut self, changes: Changes<V>) {
        for (key, value) in changes {
            match value {
                Some(v) => self.map.insert(key, v),
                None => self.map.remove(&key),
            };
        }
    }
}

impl<V, Q> std::ops::Index<&Q> for Tracked<V>
where
    String: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        &self.map[key]
    }
}

/// An entry of a [`Tracked`] map (already logged).
pub(super) struct Entry<'a, V> {
    slot: std::collections::hash_map::Entry<'a, String, Arc<V>>,
}

impl<'a, V: Clone + Default> Entry<'a, V> {
    pub(super) fn or_default(self) -> &'a mut V {
        Arc::make_mut(self.slot.or_default())
    }
}

/// The hot tier's state (one copy of it: working or committed).
#[derive(Default)]
pub(super) struct Inner {
    pub(super) contexts: Tracked<ContextState>,
    pub(super) shares: Tracked<BTreeMap<String, Share>>,
    pub(super) agents: Tracked<AgentRegistration>,
    pub(super) schemas: Tracked<Arc<jsonschema::Validator>>,
    /// Host-kept labels by context (see [`labels`](super::labels)).
    pub(super) labels: Tracked<Vec<String>>,
    /// Live subscriptions by agent (working copy only: the writer cleans them up).
    pub(super) subscriptions: HashMap<String, Vec<SubscriptionId>>,
    /// The last committed revision (working copy: the last staged one).
    pub(super) revision: u64,
    pub(super) next_id: u64,
    /// The store batch the working copy last staged changes in.
    batch: u64,
}

/// What one operation changed, published to the committed copy once its batch commits.
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

    /// Whether it changes labels (readers that cache them need to know).
    pub(super) fn changes_labels(&self) -> bool {
        !self.labels.is_empty()
    }
}

impl Inner {
    /// Prepares the working copy for an operation of store batch `batch`. When the batch is
    /// a new one and the previous batch changed anything, `committed` is asked for the
    /// committed copy and the keys the previous batch touched are set back to their committed
    /// values: they equal them if that batch committed, and must if its `COMMIT` failed.
    pub(super) fn begin_op<'c>(
        &mut self,
        batch: u64,
        committed: impl FnOnce() -> std::sync::RwLockReadGuard<'c, Inner>,
    ) {
        if batch != self.batch {
            let touched = !(self.contexts.batch_keys.is_empty()
                && self.shares.batch_keys.is_empty()
                && self.agents.batch_keys.is_empty()
                && self.schemas.batch_keys.is_empty()
                && self.labels.batch_keys.is_empty());
            if touched {
                let committed = committed();
                self.contexts.restore_batch(&committed.contexts);
                self.shares.restore_batch(&committed.shares);
                self.agents.restore_batch(&committed.agents);
                self.schemas.restore_batch(&committed.schemas);
                self.labels.restore_batch(&committed.labels);
                self.revision = committed.revision;
            }
            self.batch = batch;
        }
        self.contexts.begin_op();
        self.shares.begin_op();
        self.agents.begin_op();
        self.schemas.begin_op();
        self.labels.begin_op();
    }

    /// Undoes the running operation (it rolled back).
    pub(super) fn undo_op(&mut self, revision_before: u64) {
        self.contexts.undo_op();
        self.shares.undo_op();
        self.agents.undo_op();
        self.schemas.undo_op();
        self.labels.undo_op();
        self.revision = revision_before;
    }

    /// What the running operation changed (it succeeded).
    pub(super) fn staged(&self) -> Staged {
        Staged {
            contexts: self.contexts.changes(),
            shares: self.shares.changes(),
            agents: self.agents.changes(),
            schemas: self.schemas.changes(),
            labels: self.labels.changes(),
            revision: self.revision,
        }
    }

    /// Applies an operation's committed changes (on the committed copy).
    pub(super) fn publish(&mut self, staged: Staged) {
        self.contexts.publish(staged.contexts);
        self.shares.publish(staged.shares);
        self.agents.publish(staged.agents);
        self.schemas.publish(staged.schemas);
        self.labels.publish(staged.labels);
        self.revision = self.revision.max(staged.revision);
    }

    /// Forgets what loading logged and returns a copy sharing every value: the committed
    /// copy, at open.
    pub(super) fn settle(&mut self) -> Inner {
        for t in [
            &mut self.contexts.batch_keys,
            &mut self.shares.batch_keys,
            &mut self.agents.batch_keys,
            &mut self.schemas.batch_keys,
            &mut self.labels.batch_keys,
        ] {
            t.clear();
        }
        self.contexts.begin_op();
        self.shares.begin_op();
        self.agents.begin_op();
        self.schemas.begin_op();
        self.labels.begin_op();
        fn copy<V>(t: &Tracked<V>) -> Tracked<V> {
            Tracked {
                map: t.map.clone(),
                ..Tracked::default()
            }
        }
        Inner {
            contexts: copy(&self.contexts),
            shares: copy(&self.shares),
            agents: copy(&self.agents),
            schemas: copy(&self.schemas),
            labels: copy(&self.labels),
            subscriptions: HashMap::new(),
            revision: self.revision,
            next_id: self.next_id,
            batch: 0,
        }
    }
}
