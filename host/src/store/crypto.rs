//! Encryption at rest of context values, envelope style.
//!
//! - A **master key** (32 bytes) comes from a key file or the `QI_HOST_MASTER_KEY` environment
//!   variable (64 hex characters); it is never written to the database.
//! - Every context has a random **data key** per key version. Documents (current and every
//!   version, inline or in the blob tier), field stamps, pending conflicts and recorded conflict
//!   values are sealed with XChaCha20-Poly1305 (`chacha20poly1305`) under the context's current
//!   data key, with a random 24-byte nonce and the context id and key version as associated
//!   data: `b"QE1" | key version (u32, big-endian) | nonce | ciphertext+tag`.
//! - A data key is stored only **wrapped** (sealed the same way) in `context_keys`, once for
//!   the operator (under the master key) and once for each agent the context is shared with,
//!   under that agent's key, derived from the master key with HKDF-SHA-256
//!   (`info = "qi-host agent key v1:" + agent id`). Sharing wraps the current data key for the
//!   new agent ([`Keyring::wrap_for`], the seeds' `encryptContextForAgent`); revoking a share
//!   **rotates** the data key: later versions use a key the revoked agent never received.
//! - Opening a data directory with another master key fails cleanly when the first wrapped key
//!   does not unwrap; rows written before encryption was enabled stay readable (they carry no
//!   header) and are sealed when next written.

use super::StoreError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Prefix of every sealed value.
pub const MAGIC: &[u8; 3] = b"QE1";
const NONCE: usize = 24;
const HEADER: usize = 3 + 4 + NONCE;
/// The holder name of the operator's wrapped copy.
pub const OPERATOR_HOLDER: &str = "operator";

/// The master key. Its `Debug` never prints it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// From 64 hex characters.
    pub fn from_hex(text: &str) -> Result<MasterKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "{} bytes; a master key is 32 bytes (64 hex characters)",
                b.len()
            )
        })?;
        Ok(MasterKey(key))
    }

    /// From a file holding 64 hex characters or exactly 32 raw bytes.
    pub fn from_file(path: &Path) -> Result<MasterKey, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if bytes.len() == 32 {
            let mut k = [0u8; 32];
            k.copy_from_slice(&bytes);
            return Ok(MasterKey(k));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{}: neither 32 raw bytes nor hex", path.display()))?;
        MasterKey::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// From `QI_HOST_MASTER_KEY`, when set.
    pub fn from_env() -> Result<Option<MasterKey>, String> {
        match std::env::var("QI_HOST_MASTER_KEY") {
            Ok(v) if !v.is_empty() => MasterKey::from_hex(&v)
                .map(Some)
                .map_err(|e| format!("QI_HOST_MASTER_KEY: {e}")),
            _ => Ok(None),
        }
    }

    /// A fresh random key (for tests and `qi-host` key generation).
    pub fn generate() -> MasterKey {
        MasterKey(random())
    }

    /// Hex form, to write a key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A 32-byte key for another purpose, derived from this one with HKDF-SHA-256 (salt
    /// `qi-host`, `info` naming the purpose, e.g. `qi-host audit chain v1`): the master key
    /// itself never leaves this type.
    pub fn derive(&self, info: &str) -> [u8; 32] {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"qi-host"), &self.0);
        let mut okm = [0u8; 32];
        hk.expand(info.as_bytes(), &mut okm)
            .expect("32 bytes is a valid HKDF-SHA-256 output length");
        okm
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source works");
    b
}

fn seal_with(key: &[u8; 32], aad: &[u8], version: u32, plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce: [u8; NONCE] = random();
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(HEADER + ct.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// The key version of a sealed value, or `None` for a plaintext one.
pub fn sealed_version(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= HEADER && &bytes[..3] == MAGIC)
        .then(|| u32::from_be_bytes(bytes[3..7].try_into().expect("4 bytes")))
}

fn open_with(key: &[u8; 32], aad: &[u8], bytes: &[u8]) -> Result<Vec<u8>, ()> {
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            XNonce::from_slice(&bytes[7..HEADER]),
            Payload {
                msg: &bytes[HEADER..],
                aad,
            },
        )
        .map_err(|_| ())
}

fn doc_aad(context: &str, version: u32) -> Vec<u8> {
    format!("qi-host doc v1|{context}|{version}").into_bytes()
}

fn key_aad(context: &str, version: u32, holder: &str) -> Vec<u8> {
    format!("qi-host key v1|{context}|{version}|{holder}").into_bytes()
}

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

/// The data keys of a store, unwrapped in memory.
pub struct Keyring {
    master: MasterKey,
    /// (context, version) → data key.
    keys: Mutex<HashMap<(String, u32), [u8; 32]>>,
    /// context → current version.
    current: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(<redacted>)")
    }
}

impl Keyring {
    /// A keyring for `master`, with the operator's wrapped keys loaded from `rows`. Fails when
    /// a key does not unwrap: the data directory belongs to another master key.
    pub fn load(master: MasterKey, rows: &[WrappedKey]) -> Result<Keyring, StoreError> {
        let ring = Keyring {
            master,
            keys: Mutex::new(HashMap::new()),
            current: Mutex::new(HashMap::new()),
        };
        for r in rows.iter().filter(|r| r.holder == OPERATOR_HOLDER) {
            let dk = ring.unwrap_with(&ring.kek(OPERATOR_HOLDER), r).map_err(|()| {
                StoreError::InvalidConfig {
                    field: "master_key",
                    message: format!(
                        "the data key of context `{}` (version {}) does not unwrap: this data directory was encrypted with another master key",
                        r.context_id, r.key_version
                    ),
                }
            })?;
            ring.keys
                .lock()
                .expect("keyring lock poisoned")
                .insert((r.context_id.clone(), r.key_version), dk);
            let mut cur = ring.current.lock().expect("keyring lock poisoned");
            let v = cur.entry(r.context_id.clone()).or_insert(r.key_version);
            *v = (*v).max(r.key_version);
        }
        Ok(ring)
    }

    /// The key-encryption key of `holder`: the master key for the operator, an HKDF-SHA-256
    /// derivation of it for an agent.
    fn kek(&self, holder: &str) -> [u8; 32] {
        if holder == OPERATOR_HOLDER {
            return self.master.0;
        }
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"qi-host"), &self.master.0);
        let mut okm = [0u8; 32];
        hk.expand(
            format!("qi-host agent key v1:{holder}").as_bytes(),
            &mut okm,
        )
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
        okm
    }

    fn unwrap_with(&self, kek: &[u8; 32], r: &WrappedKey) -> Result<[u8; 32], ()> {
        let plain = open_with(
            kek,
            &key_aad(&r.context_id, r.key_version, &r.holder),
            &r.wrapped,
        )?;
        plain.try_into().map_err(|_| ())
    }

    fn wrap(&self, context: &str, version: u32, holder: &str, dk: &[u8; 32]) -> WrappedKey {
        WrappedKey {
            context_id: context.to_string(),
            key_version: version,
            holder: holder.to_string(),
            wrapped: seal_with(
                &self.kek(holder),
                &key_aad(context, version, holder),
                version,
                dk,
            ),
        }
    }

    /// Whether `context` has a data key yet.
    pub fn has_key(&self, context: &str) -> bool {
        self.current
            .lock()
            .expect("keyring lock poisoned")
            .contains_key(context)
    }

    /// Makes a new data key version for `context` (its first, or a rotation) and returns the
    /// rows to store: the operator's copy and one per holder in `holders`.
    pub fn rotate(&self, context: &str, holders: &[String]) -> Vec<WrappedKey> {
        let dk: [u8; 32] = random();
        let version = {
            let mut cur = self.current.lock().expect("keyring lock poisoned");
            let v = cur.get(context).map_or(1, |v| v + 1);
            cur.insert(context.to_string(), v);
            v
        };
        self.keys
            .lock()
            .expect("keyring lock poisoned")
            .insert((context.to_string(), version), dk);
        let mut rows = vec![self.wrap(context, version, OPERATOR_HOLDER, &dk)];
        for h in holders {
            if h != OPERATOR_HOLDER {
                rows.push(self.wrap(context, version, h, &dk));
            }
        }
        rows
    }

    /// `encryptContextForAgent`: the current data key of `context`, wrapped for `agent`.
    pub fn wrap_for(&self, context: &str, agent: &str) -> Option<WrappedKey> {
        let version = *self
            .current
            .lock()
            .expect("keyring lock poisoned")
            .get(context)?;
        let dk = *self
            .keys
            .lock()
            .expect("keyring lock poisoned")
            .get(&(context.to_string(), version))?;
        Some(self.wrap(context, version, agent, &dk))
    }

    /// Seals `plaintext` under the current data key of `context` (which must have one).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let version = *self
            .current
            .lock()
            .expect("keyring lock poisoned")
            .get(context)
            .ok_or_else(|| StoreError::Encode(format!("context `{context}` has no data key")))?;
        let dk = self.data_key(context, version)?;
        Ok(seal_with(
            &dk,
            &doc_aad(context, version),
            version,
            plaintext,
        ))
    }

    fn data_key(&self, context: &str, version: u32) -> Result<[u8; 32], StoreError> {
        self.keys
            .lock()
            .expect("keyring lock poisoned")
            .get(&(context.to_string(), version))
            .copied()
            .ok_or_else(|| {
                StoreError::Decode(format!(
                    "no data key version {version} for context `{context}`"
                ))
            })
    }

    /// Opens a value of `context`; plaintext (written before encryption) passes through.
    pub fn open(&self, context: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        let Some(version) = sealed_version(bytes) else {
            return Ok(bytes.to_vec());
        };
        let dk = self.data_key(context, version)?;
        open_with(&dk, &doc_aad(context, version), bytes).map_err(|()| {
            StoreError::Decode(format!(
                "a value of context `{context}` fails authentication (modified, or sealed for another context)"
            ))
        })
    }

    /// `decryptContextFromAgent`: opens a sealed value of `context` with the data key `agent`
    /// holds (its wrapped copy for the value's key version, unwrapped with its own key). Fails
    /// when the agent holds no copy of that version (a revoked agent and later versions).
    pub fn open_as(
        &self,
        agent: &str,
        wrapped: &[WrappedKey],
        context: &str,
        bytes: &[u8],
    ) -> Result<Vec<u8>, String> {
        let version = sealed_version(bytes).ok_or("the value is not sealed")?;
        let copy = wrapped
            .iter()
            .find(|w| w.holder == agent && w.context_id == context && w.key_version == version)
            .ok_or_else(|| {
                format!("agent `{agent}` holds no key for version {version} of context `{context}`")
            })?;
        let dk = self
            .unwrap_with(&self.kek(agent), copy)
            .map_err(|()| format!("agent `{agent}`'s wrapped key does not unwrap"))?;
        open_with(&dk, &doc_aad(context, version), bytes)
            .map_err(|()| "the value fails authentication".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn refused(result: Result<Vec<u8>, StoreError>, because: &str) {
        match result {
            Err(StoreError::Decode(message)) => {
                assert!(message.contains(because), "{message}")
            }
            other => panic!("expected a refusal ({because}), got {other:?}"),
        }
    }

    #[test]
    fn a_sealed_value_opens_only_unmodified_and_under_its_own_key() {
        let ring = Keyring::load(MasterKey::generate(), &[]).unwrap();
        ring.rotate("c", &[]);
        let sealed = ring.seal("c", b"the plan").unwrap();
        assert_eq!(sealed_version(&sealed), Some(1));
        assert_eq!(ring.open("c", &sealed).unwrap(), b"the plan");

        // Every byte after the version is authenticated: the nonce, the ciphertext, the tag.
        for at in [7, HEADER, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[at] ^= 0x01;
            refused(ring.open("c", &tampered), "fails authentication");
        }
        // A changed key version names the missing key.
        let mut other_version = sealed.clone();
        other_version[3..7].copy_from_slice(&2u32.to_be_bytes());
        refused(ring.open("c", &other_version), "no data key version 2");
        // The same context under another master key: a different data key.
        let stranger = Keyring::load(MasterKey::generate(), &[]).unwrap();
        stranger.rotate("c", &[]);
        refused(stranger.open("c", &sealed), "fails authentication");
        // A ring that never had a key for the context.
        let empty = Keyring::load(MasterKey::generate(), &[]).unwrap();
        refused(empty.open("c", &sealed), "no data key version 1");
    }

    #[test]
    fn master_keys_are_64_hex_characters_or_32_raw_bytes() {
        let key = MasterKey::generate();
        assert_eq!(MasterKey::from_hex(&key.to_hex()).unwrap().0, key.0);
        let dir = tempfile::tempdir().unwrap();
        let hex_file = dir.path().join("hex");
        std::fs::write(&hex_file, format!("{}\n", key.to_hex())).unwrap();
        assert_eq!(MasterKey::from_file(&hex_file).unwrap().0, key.0);
        let raw_file = dir.path().join("raw");
        std::fs::write(&raw_file, key.0).unwrap();
        assert_eq!(MasterKey::from_file(&raw_file).unwrap().0, key.0);

        let short = &key.to_hex()[..62];
        let e = MasterKey::from_hex(short).unwrap_err();
        assert!(e.contains("31 bytes; a master key is 32 bytes"), "{e}");
        let e = MasterKey::from_hex(&"zz".repeat(32)).unwrap_err();
        assert!(e.contains("not hex"), "{e}");
        let raw_short = dir.path().join("raw-short");
        std::fs::write(&raw_short, [0xffu8; 31]).unwrap();
        let e = MasterKey::from_file(&raw_short).unwrap_err();
        assert!(e.contains("raw-short: neither 32 raw bytes nor hex"), "{e}");
        assert!(format!("{key:?}").contains("redacted"));
        assert!(!format!("{key:?}").contains(&key.to_hex()));
    }

    #[test]
    fn seal_open_rotate_and_agent_copies() {
        let ring = Keyring::load(MasterKey::generate(), &[]).unwrap();
        let rows1 = ring.rotate("c", &["a".into(), "b".into()]);
        let v1 = ring.seal("c", b"secret one").unwrap();
        assert_eq!(ring.open("c", &v1).unwrap(), b"secret one");
        assert!(!v1.windows(6).any(|w| w == b"secret"));
        // Another context's key does not open it (associated data binds the context).
        ring.rotate("d", &[]);
        assert!(ring.open("d", &v1).is_err());
        // Revoking b: rotate with only a.
        let rows2 = ring.rotate("c", &["a".into()]);
        let v2 = ring.seal("c", b"secret two").unwrap();
        let all: Vec<WrappedKey> = rows1.iter().chain(&rows2).cloned().collect();
        assert_eq!(ring.open_as("a", &all, "c", &v2).unwrap(), b"secret two");
        assert_eq!(ring.open_as("b", &all, "c", &v1).unwrap(), b"secret one");
        assert!(
            ring.open_as("b", &all, "c", &v2).is_err(),
            "b has no key for version 2"
        );
        // Reloading with the right key works; another key fails cleanly.
        let operator: Vec<WrappedKey> = all.clone();
        let master = ring.master.clone();
        let again = Keyring::load(master, &operator).unwrap();
        assert_eq!(again.open("c", &v2).unwrap(), b"secret two");
        let e = Keyring::load(MasterKey::generate(), &operator).unwrap_err();
        assert!(e.to_string().contains("another master key"), "{e}");
    }
}
