//! The hash chain: the canonical encoding of an entry, its SHA-256 link to the previous entry,
//! and the size caps applied before an entry is hashed.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest `reason` kept, in bytes (UTF-8); longer ones are cut and end with a marker.
pub const MAX_REASON_BYTES: usize = 1024;

/// Longest `details` kept, in bytes of compact JSON; larger values are replaced by
/// `{"truncated": true, "originalBytes": N, "prefix": "<start of the JSON text>"}`.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;

/// Longest `agent`, `resource` and `operation` kept, in bytes; longer ones are cut and end
/// with a marker. Large enough for any path (`PATH_MAX` is 4,096).
pub const MAX_NAME_BYTES: usize = 4096;

/// The hashed fields of one entry, as stored (text columns as their raw bytes, so a row whose
/// text is not valid UTF-8 can still be checked).
pub(crate) struct Content<'a> {
    pub seq: u64,
    pub time_ms: u64,
    pub agent: &'a [u8],
    pub resource: &'a [u8],
    pub operation: &'a [u8],
    pub decision: &'a [u8],
    pub reason: &'a [u8],
    pub details: &'a [u8],
}

/// The HKDF-SHA-256 `info` of the chain key derived from the master key.
pub const CHAIN_KEY_INFO: &str = "qi-host audit chain v1";

/// The HKDF-SHA-256 `info` of the key that authenticates the head file.
pub const HEAD_KEY_INFO: &str = "qi-host audit head v1";

/// How an entry's hash is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChainScheme {
    /// `sha256(prev_hash || canonical(entry))`: anyone who can write the database can recompute
    /// it; only the head file (and an external anchor) catch a rewrite.
    Sha256,
    /// `hmac_sha256(chain key, prev_hash || canonical(entry))`, the chain key derived from the
    /// master key: without the master key no one can compute a valid entry.
    HmacSha256,
}

impl ChainScheme {
    /// `sha256` or `hmac-sha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainScheme::Sha256 => "sha256",
            ChainScheme::HmacSha256 => "hmac-sha256",
        }
    }
}

impl std::fmt::Display for ChainScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The keys of a keyed log, derived from the master key. Zeroized on drop.
pub(crate) struct ChainKeys {
    pub chain: zeroize::Zeroizing<[u8; 32]>,
    pub head: zeroize::Zeroizing<[u8; 32]>,
}

impl ChainKeys {
    pub(crate) fn derive(master: &crate::store::crypto::MasterKey) -> ChainKeys {
        ChainKeys {
            chain: master.derive(CHAIN_KEY_INFO.as_bytes()),
            head: master.derive(HEAD_KEY_INFO.as_bytes()),
        }
    }
}

/// Feeds `prev_hash || canonical(content)` to `update`: `seq` and `time_ms` as 8-byte
/// big-endian integers, then `agent`, `resource`, `operation`, `decision`, `reason` and
/// `details`, each as an 8-byte big-endian byte length and then its bytes. `prev_hash` is its
/// 64 lowercase hex characters (ASCII).
fn feed(prev_hash: &[u8], content: &Content<'_>, mut update: impl FnMut(&[u8])) {
    update(prev_hash);
    update(&content.seq.to_be_bytes());
    update(&content.time_ms.to_be_bytes());
    for field in [
        content.agent,
        content.resource,
        content.operation,
        content.decision,
        content.reason,
        content.details,
    ] {
        update(&(field.len() as u64).to_be_bytes());
        update(field);
    }
}

/// The entry's hash, lowercase hex: `sha256(prev_hash || canonical(content))` without a key,
/// `hmac_sha256(key, prev_hash || canonical(content))` with one.
pub(crate) fn entry_hash(
    key: Option<&[u8; 32]>,
    prev_hash: &[u8],
    content: &Content<'_>,
) -> String {
    match key {
        None => {
            let mut hasher = Sha256::new();
            feed(prev_hash, content, |b| hasher.update(b));
            lower_hex(&hasher.finalize().into())
        }
        Some(key) => lower_hex(&hmac(key, |update| feed(prev_hash, content, update))),
    }
}

/// `digest` as 64 lowercase hex characters (`hex`'s table encoder, not its per-char iterator:
/// every audit entry is hashed once).
fn lower_hex(digest: &[u8; 32]) -> String {
    let mut out = [0u8; 64];
    hex::encode_to_slice(digest, &mut out).expect("64 bytes hold 32 bytes in hex");
    String::from_utf8(out.to_vec()).expect("hex is ASCII")
}

/// HMAC-SHA-256 under `key` of what `input` feeds.
pub(crate) fn hmac(key: &[u8; 32], input: impl FnOnce(&mut dyn FnMut(&[u8]))) -> [u8; 32] {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC-SHA-256 takes a key of any length");
    input(&mut |b: &[u8]| mac.update(b));
    mac.finalize().into_bytes().into()
}

/// `text` if it fits in `max` bytes, else its longest prefix (on a character boundary) that
/// fits together with a marker saying how long it was.
pub(crate) fn cap_text(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let marker = format!("...[truncated from {} bytes]", text.len());
    let mut keep = max.saturating_sub(marker.len());
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    let mut capped = String::with_capacity(keep + marker.len());
    capped.push_str(&text[..keep]);
    capped.push_str(&marker);
    capped
}

/// `v` with every object's keys in sorted order.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The compact JSON text stored and hashed for `details`, at most [`MAX_DETAILS_BYTES`].
pub(crate) fn details_text(details: &Value) -> String {
    // Keys sorted: serde_json keeps insertion order when any crate in the build turns on its
    // `preserve_order` feature (cedar-policy-core does), and the stored text must not depend
    // on that. Serializing a `Value` cannot fail (its map keys are strings); keep a valid
    // text anyway.
    let text = serde_json::to_string(&sorted(details)).unwrap_or_else(|_| "null".to_string());
    if text.len() <= MAX_DETAILS_BYTES {
        return text;
    }
    let original = text.len();
    let capped = |keep: usize| {
        serde_json::json!({
            "truncated": true,
            "originalBytes": original,
            "prefix": &text[..keep],
        })
        .to_string()
    };
    let overhead = capped(0).len();
    // Quotes and backslashes in `text` double when it is embedded as a string, so a prefix of
    // `keep` bytes takes between `keep` and `2 * keep` bytes: shrink it in proportion to the
    // overshoot until it fits (at least one byte per round).
    let mut keep = MAX_DETAILS_BYTES - overhead;
    loop {
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        let result = capped(keep);
        if result.len() <= MAX_DETAILS_BYTES || keep == 0 {
            return result;
        }
        let budget = MAX_DETAILS_BYTES - overhead;
        let used = result.len() - overhead;
        keep = (keep * budget / used).min(keep - 1);
    }
}
