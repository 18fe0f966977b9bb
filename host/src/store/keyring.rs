//! [`Keyring`]: the unwrapped data keys of a store, and when a rotated key becomes current.
//!
//! The format and the associated data are described in [`crypto`](super::crypto).

use super::StoreError;
use super::crypto::{
    Format, MasterKey, OPERATOR_HOLDER, aad, column, header, legacy_key_aad, legacy_value_aad,
    open_with, random, seal_with,
};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use zeroize::Zeroizing;

type Key = Zeroizing<[u8; 32]>;

/// A wrapped data key row of `context_keys`.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    /// Context.
    pub context_id: String,
    /// Key version.
    pub key_version: u32,
    /// `operator` or an agent id.
    pub holder: String,
    /// The sealed data key.
    pub wrapped: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// (context, version) → data key: committed keys and keys staged by the open transaction
    /// (no committed row can name a staged version, so holding them here is harmless).
    keys: HashMap<(String, u32), Key>,
    /// context → current version, committed.
    current: HashMap<String, u32>,
    /// context → highest version ever handed out in this process (never reused).
    allocated: HashMap<String, u32>,
    /// Versions staged by the write running now (its savepoint).
    write: HashMap<String, u32>,
    /// Versions staged by writes of the open batch whose savepoints were released.
    batch: HashMap<String, u32>,
}

impl State {
    /// The version a new value of `context` is sealed under: the running write's own rotation,
    /// else one from an earlier write of the same batch, else the committed one.
    fn sealing_version(&self, context: &str) -> Option<u32> {
        self.write
            .get(context)
            .or_else(|| self.batch.get(context))
            .or_else(|| self.current.get(context))
            .copied()
    }
}

/// The data keys of a store, unwrapped in memory (zeroized when dropped).
///
/// A rotation ([`rotate`](Keyring::rotate)) runs inside a [`Store::write`](super::Store::write):
/// its key seals that write's values at once, the batch's later writes once the write's
/// savepoint is released, and everybody's once the batch's `COMMIT` returned. If the write or
/// the batch rolls back, the key is forgotten and values keep being sealed under the last
/// committed version, so nothing is ever sealed under a key that was not stored.
pub struct Keyring {
    master: MasterKey,
    events: Key,
    state: Mutex<State>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(<redacted>)")
    }
}

fn corrupt_key(r: &WrappedKey, why: &str) -> StoreError {
    StoreError::CorruptRow(format!(
        "the wrapped data key of context `{}` (version {}, holder `{}`) {why}; restore `context_keys` from a backup",
        r.context_id, r.key_version, r.holder
    ))
}

impl Keyring {
    /// A keyring for `master`, with the operator's wrapped keys loaded from `rows`. Fails with
    /// [`StoreError::InvalidConfig`] when a key does not unwrap (the data directory belongs to
    /// another master key) and with [`StoreError::CorruptRow`] naming the context and version
    /// when a row is malformed (no header, short, another version in its header, not 32 bytes).
    pub fn load(master: MasterKey, rows: &[WrappedKey]) -> Result<Keyring, StoreError> {
        let events = master.derive(b"qi-host events key v2");
        let ring = Keyring {
            master,
            events,
            state: Mutex::new(State::default()),
        };
        {
            let mut st = ring.lock();
            for r in rows.iter().filter(|r| r.holder == OPERATOR_HOLDER) {
                let dk = ring.unwrap_with(&ring.kek(OPERATOR_HOLDER), r)?;
                st.keys.insert((r.context_id.clone(), r.key_version), dk);
                let v = st
                    .current
                    .entry(r.context_id.clone())
                    .or_insert(r.key_version);
                *v = (*v).max(r.key_version);
            }
            st.allocated = st.current.clone();
        }
        Ok(ring)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key-encryption key of `holder`: the master key for the operator, an HKDF-SHA-256
    /// derivation of it for an agent.
    fn kek(&self, holder: &str) -> Key {
        if holder == OPERATOR_HOLDER {
            return Zeroizing::new(self.master.0);
        }
        self.master
            .derive(format!("qi-host agent key v1:{holder}").as_bytes())
    }

    fn unwrap_with(&self, kek: &[u8; 32], r: &WrappedKey) -> Result<Key, StoreError> {
        let (format, version) =
            header(&r.wrapped).ok_or_else(|| corrupt_key(r, "has no sealed header or is short"))?;
        if version != r.key_version {
            return Err(corrupt_key(r, &format!("names version {version} inside")));
        }
        let ad = match format {
            Format::Current => aad("key", &r.context_id, version, &r.holder),
            Format::Legacy => legacy_key_aad(&r.context_id, version, &r.holder),
        };
        let plain = Zeroizing::new(open_with(kek, &ad, &r.wrapped).map_err(|()| {
            StoreError::InvalidConfig {
                field: "master_key",
                message: format!(
                    "the data key of context `{}` (version {}) does not unwrap: this data directory was encrypted with another master key, or the key row was modified",
                    r.context_id, r.key_version
                ),
            }
        })?);
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| corrupt_key(r, &format!("unwraps to {} bytes, not 32", plain.len())))?;
        Ok(Zeroizing::new(key))
    }

    fn wrap(&self, context: &str, version: u32, holder: &str, dk: &[u8; 32]) -> WrappedKey {
        WrappedKey {
            context_id: context.to_string(),
            key_version: version,
            holder: holder.to_string(),
            wrapped: seal_with(
                &self.kek(holder),
                &aad("key", context, version, holder),
                version,
                dk,
            ),
        }
    }

    /// Whether `context` has a data key (committed, or staged by the open transaction).
    pub fn has_key(&self, context: &str) -> bool {
        self.lock().sealing_version(context).is_some()
    }

    /// Makes a new data key version for `context` (its first, or a rotation) and returns the
    /// rows to store in `context_keys`: the operator's copy and one per holder in `holders`.
    ///
    /// Call it inside a [`Store::write`](super::Store::write) and store the rows in the same
    /// write: the new version seals this write's values at once and becomes current for
    /// everyone only after the transaction commits; a rollback forgets it. Version numbers
    /// are never reused within a process.
    pub fn rotate(&self, context: &str, holders: &[String]) -> Vec<WrappedKey> {
        let dk: Key = Zeroizing::new(random());
        let version = {
            let mut st = self.lock();
            let last = [
                st.allocated.get(context),
                st.current.get(context),
                st.write.get(context),
                st.batch.get(context),
            ]
            .into_iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(0);
            let version = last + 1;
            st.allocated.insert(context.to_string(), version);
            st.write.insert(context.to_string(), version);
            st.keys
                .insert((context.to_string(), version), Zeroizing::new(*dk));
            version
        };
        let mut rows = vec![self.wrap(context, version, OPERATOR_HOLDER, &dk)];
        for h in holders {
            if h != OPERATOR_HOLDER {
                rows.push(self.wrap(context, version, h, &dk));
            }
        }
        rows
    }

    /// The writer: the write that just ran is kept (`true`, its savepoint was released) or
    /// rolled back (`false`, its rotations are forgotten).
    pub(crate) fn write_ended(&self, kept: bool) {
        let mut st = self.lock();
        let staged: Vec<(String, u32)> = st.write.drain().collect();
        for (context, version) in staged {
            if kept {
                st.batch.insert(context, version);
            } else {
                st.keys.remove(&(context, version));
            }
        }
    }

    /// The writer: the batch committed (`true`: its rotations become current) or rolled back
    /// (`false`: they are forgotten). Called before any caller of the batch is answered.
    pub(crate) fn batch_ended(&self, committed: bool) {
        let mut st = self.lock();
        let mut staged: Vec<(String, u32)> = st.batch.drain().collect();
        staged.extend(st.write.drain());
        for (context, version) in staged {
            if committed {
                st.current.insert(context, version);
            } else {
                st.keys.remove(&(context, version));
            }
        }
    }

    /// `encryptContextForAgent`: the data key `context` seals under now, wrapped for `agent`.
    pub fn wrap_for(&self, context: &str, agent: &str) -> Option<WrappedKey> {
        let (version, dk) = {
            let st = self.lock();
            let version = st.sealing_version(context)?;
            let dk = st.keys.get(&(context.to_string(), version))?.clone();
            (version, dk)
        };
        Some(self.wrap(context, version, agent, &dk))
    }

    /// Seals `plaintext`, a value of `column` of `context` (which must have a data key), under
    /// the version it seals under now. Errors: [`StoreError::Encode`] when it has no key.
    pub fn seal(
        &self,
        context: &str,
        column: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let (version, dk) = {
            let st = self.lock();
            let version = st.sealing_version(context).ok_or_else(|| {
                StoreError::Encode(format!("context `{context}` has no data key"))
            })?;
            (version, self.key_of(&st, context, version)?)
        };
        Ok(seal_with(
            &dk,
            &aad("value", context, version, column),
            version,
            plaintext,
        ))
    }

    fn key_of(&self, st: &State, context: &str, version: u32) -> Result<Key, StoreError> {
        st.keys
            .get(&(context.to_string(), version))
            .cloned()
            .ok_or_else(|| {
                StoreError::Decode(format!(
                    "no data key version {version} for context `{context}`"
                ))
            })
    }

    /// Opens a value of `column` of `context`. Bytes without a sealed header pass through only
    /// while the context has no committed data key; once it has one they are refused
    /// ([`StoreError::Decode`]), as is a value sealed for another context, key version or
    /// column, or modified.
    pub fn open(&self, context: &str, column: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        let Some((format, version)) = header(bytes) else {
            // Decided on committed keys: a reader must not refuse a committed plaintext row of
            // a context whose first key (and the sealing of its rows) has not committed yet.
            if self.lock().current.contains_key(context) {
                return Err(StoreError::Decode(format!(
                    "a value of context `{context}` ({column}) is not sealed, but the context has a data key: refusing a row not written by this host"
                )));
            }
            return Ok(bytes.to_vec());
        };
        let dk = {
            let st = self.lock();
            self.key_of(&st, context, version)?
        };
        let ad = match format {
            Format::Current => aad("value", context, version, column),
            Format::Legacy => legacy_value_aad(context, version),
        };
        open_with(&dk, &ad, bytes).map_err(|()| {
            StoreError::Decode(format!(
                "a value of context `{context}` ({column}, key version {version}) fails authentication (modified, or sealed for another context, version or column)"
            ))
        })
    }

    /// Seals the data of event `seq` under the events key.
    pub fn seal_event(&self, seq: u64, plaintext: &[u8]) -> Vec<u8> {
        seal_with(
            &self.events,
            &aad("event", &seq.to_string(), 0, column::EVENT_DATA),
            0,
            plaintext,
        )
    }

    /// Opens the data of event `seq`; bytes without a sealed header are refused.
    pub fn open_event(&self, seq: u64, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        match header(bytes) {
            Some((Format::Current, 0)) => open_with(
                &self.events,
                &aad("event", &seq.to_string(), 0, column::EVENT_DATA),
                bytes,
            )
            .map_err(|()| {
                StoreError::Decode(format!(
                    "the data of event {seq} fails authentication (modified, or moved from another event)"
                ))
            }),
            _ => Err(StoreError::Decode(format!(
                "the data of event {seq} is not sealed under the events key: refusing a row not written by this host"
            ))),
        }
    }

    /// `decryptContextFromAgent`: opens a sealed version document (`versions.doc`) of
    /// `context` with the data key `agent` holds (its wrapped copy for the value's key
    /// version, unwrapped with its own key). Fails when the agent holds no copy of that
    /// version (a revoked or unregistered agent and later versions).
    pub fn open_as(
        &self,
        agent: &str,
        wrapped: &[WrappedKey],
        context: &str,
        bytes: &[u8],
    ) -> Result<Vec<u8>, String> {
        let (format, version) = header(bytes).ok_or("the value is not sealed")?;
        let copy = wrapped
            .iter()
            .find(|w| w.holder == agent && w.context_id == context && w.key_version == version)
            .ok_or_else(|| {
                format!("agent `{agent}` holds no key for version {version} of context `{context}`")
            })?;
        let dk = self
            .unwrap_with(&self.kek(agent), copy)
            .map_err(|e| format!("agent `{agent}`'s wrapped key does not unwrap: {e}"))?;
        let ad = match format {
            Format::Current => aad("value", context, version, column::VERSION_DOC),
            Format::Legacy => legacy_value_aad(context, version),
        };
        open_with(&dk, &ad, bytes).map_err(|()| "the value fails authentication".to_string())
    }

    /// The master key (for tests of reloading).
    #[cfg(test)]
    pub(crate) fn master(&self) -> &MasterKey {
        &self.master
    }
}
