//! Encryption at rest, envelope style.
//!
//! - A **master key** (32 bytes) comes from a key file or the `QI_HOST_MASTER_KEY` environment
//!   variable (64 hex characters); it is never written to the database and is zeroized when
//!   dropped.
//! - Every context has a random **data key** per key version. Documents (current and every
//!   version, inline or in the blob tier), field stamps, pending conflicts and recorded conflict
//!   values are sealed with XChaCha20-Poly1305 (`chacha20poly1305`) under the context's current
//!   data key with a random 24-byte nonce: `b"QE2" | key version (u32, big-endian) | nonce |
//!   ciphertext+tag`.
//! - The **associated data** binds what a value is for (see [`aad`]): `b"qi-host v2"`, then the
//!   purpose (`value`, `key`, `event`), the context id, the key version and the column
//!   ([`column`]), each variable-length part prefixed by its length (u32, big-endian). A
//!   value moved to another context, key version, row kind or column fails to open.
//! - Published **event data** (including `sync-resolved` outcomes, checkpoint states, votes and
//!   contributions) is sealed the same way under an events key derived from the master key with
//!   HKDF-SHA-256 (`info = "qi-host events key v2"`), bound to the event's sequence number.
//! - A data key is stored only **wrapped** (sealed the same way, purpose `key`, column = the
//!   holder) in `context_keys`, once for the operator (under the master key) and once for each
//!   agent the context is shared with, under that agent's key, derived from the master key with
//!   HKDF-SHA-256 (`info = "qi-host agent key v1:" + agent id`). Revoking a share or
//!   unregistering an agent **rotates** the data key: later values use a key it never received.
//!   A rotated key becomes current only once the transaction storing it commits
//!   ([`Keyring::rotate`]).
//! - **Old data**: values and wrapped keys written by earlier versions carry the `QE1` header
//!   and the older associated data (`"qi-host doc v1|<context>|<version>"`); they stay
//!   readable, and every value written from now on uses `QE2`. A value without any header is
//!   accepted only for a context that has no data key at all (written before encryption was
//!   enabled and never since); once a context has a key, an unsealed value is refused.
//! - Opening a data directory with another master key fails cleanly when the first wrapped key
//!   does not unwrap; a malformed key row (short, no header, wrong length) is an error naming
//!   its context and version.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::Sha256;
use std::path::Path;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use super::keyring::{Keyring, WrappedKey};

/// Prefix of every value sealed by this version.
pub const MAGIC: &[u8; 3] = b"QE2";
/// Prefix of values sealed before the associated data named the purpose and the column.
pub const LEGACY_MAGIC: &[u8; 3] = b"QE1";
pub(crate) const NONCE: usize = 24;
pub(crate) const HEADER: usize = 3 + 4 + NONCE;
/// How many bytes sealing adds to a value: the header and the AEAD tag.
pub(crate) const SEALED_OVERHEAD: usize = HEADER + 16;
/// The holder name of the operator's wrapped copy.
pub const OPERATOR_HOLDER: &str = "operator";

/// Column names bound into the associated data of sealed values.
pub mod column {
    /// `contexts.doc` / `contexts.doc_blob`: the current document.
    pub const CONTEXT_DOC: &str = "contexts.doc";
    /// `contexts.field_stamps`.
    pub const FIELD_STAMPS: &str = "contexts.field_stamps";
    /// `contexts.conflict`: the pending conflict.
    pub const PENDING_CONFLICT: &str = "contexts.conflict";
    /// `versions.doc` / `versions.doc_blob`: a version's document.
    pub const VERSION_DOC: &str = "versions.doc";
    /// `conflicts.agent_values`.
    pub const CONFLICT_VALUES: &str = "conflicts.agent_values";
    /// `conflicts.resolution`.
    pub const CONFLICT_RESOLUTION: &str = "conflicts.resolution";
    /// `events.data`.
    pub const EVENT_DATA: &str = "events.data";
}

/// The master key. Its `Debug` never prints it; it is zeroized when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// From 64 hex characters.
    pub fn from_hex(text: &str) -> Result<MasterKey, String> {
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?);
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "{} bytes; a master key is 32 bytes (64 hex characters)",
                bytes.len()
            )
        })?;
        Ok(MasterKey(key))
    }

    /// From a file holding 64 hex characters or exactly 32 raw bytes.
    pub fn from_file(path: &Path) -> Result<MasterKey, String> {
        let bytes =
            // 64 hex characters and a line break at most: a huge file is refused unread.
            Zeroizing::new(crate::bounded_read::read_at_most(path, 1024).map_err(|e| {
                format!("{}: {e}; a master key file holds 64 hex characters or 32 bytes", path.display())
            })?);
        if bytes.len() == 32 {
            let mut k = [0u8; 32];
            k.copy_from_slice(&bytes);
            return Ok(MasterKey(k));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| format!("{}: neither 32 raw bytes nor hex", path.display()))?;
        MasterKey::from_hex(text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// From `QI_HOST_MASTER_KEY`, when set.
    pub fn from_env() -> Result<Option<MasterKey>, String> {
        match std::env::var("QI_HOST_MASTER_KEY") {
            Ok(v) if !v.is_empty() => {
                let v = Zeroizing::new(v);
                MasterKey::from_hex(&v)
                    .map(Some)
                    .map_err(|e| format!("QI_HOST_MASTER_KEY: {e}"))
            }
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
    pub fn derive(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"qi-host"), &self.0);
        let mut okm = Zeroizing::new([0u8; 32]);
        hk.expand(info, okm.as_mut())
            .expect("32 bytes is a valid HKDF-SHA-256 output length");
        okm
    }
}

pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source works");
    b
}

/// The associated data of a sealed value: `b"qi-host v2" | len purpose | purpose |
/// len context | context | key version (u32, big-endian) | len column | column`, lengths as
/// u32 big-endian.
pub fn aad(purpose: &str, context: &str, version: u32, column: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + purpose.len() + context.len() + column.len());
    a.extend_from_slice(b"qi-host v2");
    push_part(&mut a, purpose);
    push_part(&mut a, context);
    a.extend_from_slice(&version.to_be_bytes());
    push_part(&mut a, column);
    a
}

fn push_part(a: &mut Vec<u8>, part: &str) {
    a.extend_from_slice(&(part.len() as u32).to_be_bytes());
    a.extend_from_slice(part.as_bytes());
}

/// The associated data of values written with the `QE1` header.
pub(crate) fn legacy_value_aad(context: &str, version: u32) -> Vec<u8> {
    format!("qi-host doc v1|{context}|{version}").into_bytes()
}

/// The associated data of data keys wrapped with the `QE1` header.
pub(crate) fn legacy_key_aad(context: &str, version: u32, holder: &str) -> Vec<u8> {
    format!("qi-host key v1|{context}|{version}|{holder}").into_bytes()
}

/// Seals `plaintext` under `key` with a `QE2` header.
pub(crate) fn seal_with(key: &[u8; 32], aad: &[u8], version: u32, plaintext: &[u8]) -> Vec<u8> {
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

/// The header of a sealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `QE1`: the older associated data.
    Legacy,
    /// `QE2`: [`aad`].
    Current,
}

/// The format and key version of a sealed value, or `None` for bytes without a header.
pub(crate) fn header(bytes: &[u8]) -> Option<(Format, u32)> {
    if bytes.len() < HEADER {
        return None;
    }
    let format = match &bytes[..3] {
        m if m == MAGIC => Format::Current,
        m if m == LEGACY_MAGIC => Format::Legacy,
        _ => return None,
    };
    let version = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]);
    Some((format, version))
}

/// The key version of a sealed value (either header), or `None` for a plaintext one.
pub fn sealed_version(bytes: &[u8]) -> Option<u32> {
    header(bytes).map(|(_, v)| v)
}

/// Opens a value whose header [`header`] already accepted (so it is at least `HEADER` long).
pub(crate) fn open_with(key: &[u8; 32], aad: &[u8], bytes: &[u8]) -> Result<Vec<u8>, ()> {
    if bytes.len() < HEADER {
        return Err(());
    }
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
