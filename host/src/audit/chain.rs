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

/// `sha256_hex(prev_hash || canonical(content))`, where `canonical` is `seq` and `time_ms` as
/// 8-byte big-endian integers followed by `agent`, `resource`, `operation`, `decision`,
/// `reason` and `details`, each as an 8-byte big-endian byte length and then its bytes.
/// `prev_hash` is its 64 lowercase hex characters (ASCII).
pub(crate) fn entry_hash(prev_hash: &[u8], content: &Content<'_>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(content.seq.to_be_bytes());
    hasher.update(content.time_ms.to_be_bytes());
    for field in [
        content.agent,
        content.resource,
        content.operation,
        content.decision,
        content.reason,
        content.details,
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hex::encode(hasher.finalize())
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
