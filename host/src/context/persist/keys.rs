//! Sealing of context rows and the `context_keys` rows (see `store::crypto`).

use crate::store::crypto::{self, column};
use crate::store::{BlobStore, StoreError, StoredDoc};
use rusqlite::{Connection, OptionalExtension, params};

/// Seals `bytes` of `column` of `context` when values are encrypted at rest.
pub(super) fn seal(
    blobs: &BlobStore,
    context: &str,
    column: &str,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    match blobs.keys() {
        Some(k) => k.seal(context, column, &bytes),
        None => Ok(bytes),
    }
}

/// Opens what [`seal`] wrote (plaintext passes through only while the context has no key).
pub(super) fn unseal(
    blobs: &BlobStore,
    context: &str,
    column: &str,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    match blobs.keys() {
        Some(k) => k.open(context, column, &bytes),
        None if crypto::sealed_version(&bytes).is_some() => Err(StoreError::Decode(format!(
            "context `{context}` is encrypted; this data directory needs its master key"
        ))),
        None => Ok(bytes),
    }
}

/// Conflict values (JSON text) as stored: sealed and hex-encoded with a `sealed:` prefix when
/// values are encrypted at rest.
pub(super) fn seal_text(
    blobs: &BlobStore,
    context: &str,
    column: &str,
    text: String,
) -> Result<String, StoreError> {
    match blobs.keys() {
        Some(k) => Ok(format!(
            "sealed:{}",
            hex::encode(k.seal(context, column, text.as_bytes())?)
        )),
        None => Ok(text),
    }
}

pub(super) fn unseal_text(
    blobs: &BlobStore,
    context: &str,
    column: &str,
    text: String,
) -> Result<String, StoreError> {
    match text.strip_prefix("sealed:") {
        Some(h) => {
            let bytes = hex::decode(h).map_err(|e| StoreError::CorruptRow(e.to_string()))?;
            String::from_utf8(unseal(blobs, context, column, bytes)?)
                .map_err(|e| StoreError::CorruptRow(e.to_string()))
        }
        // Text without the prefix is plaintext: refused once the context has a key.
        None => String::from_utf8(unseal(blobs, context, column, text.into_bytes())?)
            .map_err(|e| StoreError::CorruptRow(e.to_string())),
    }
}

pub(super) fn insert_keys(
    conn: &Connection,
    rows: &[crypto::WrappedKey],
    now_ms: u64,
) -> Result<(), StoreError> {
    for r in rows {
        conn.execute(
            "INSERT OR REPLACE INTO context_keys (context_id, key_version, holder, wrapped, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![r.context_id, r.key_version as i64, r.holder, r.wrapped, now_ms as i64],
        )?;
    }
    Ok(())
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wrapped data keys of a context (every version, every holder).
pub fn load_keys(
    conn: &Connection,
    context_id: &str,
) -> Result<Vec<crypto::WrappedKey>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT key_version, holder, wrapped FROM context_keys WHERE context_id = ?1 ORDER BY key_version",
    )?;
    let rows = stmt
        .query_map(params![context_id], |r| {
            Ok(crypto::WrappedKey {
                context_id: context_id.to_string(),
                key_version: r.get::<_, i64>(0)? as u32,
                holder: r.get(1)?,
                wrapped: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A context written before encryption was enabled just got its first data key: seals its
/// earlier versions and conflicts in the same transaction, since from now on an unsealed row of
/// it is refused. (Plaintext blobs of those versions stay in the blob directory until removed
/// by hand: they are content-addressed and may be shared.)
pub(super) fn seal_earlier_rows(
    conn: &Connection,
    blobs: &BlobStore,
    context: &str,
) -> Result<(), StoreError> {
    let Some(k) = blobs.keys() else {
        return Ok(());
    };
    let versions: Vec<(i64, Option<Vec<u8>>, Option<String>)> = conn
        .prepare("SELECT version, doc, doc_blob FROM versions WHERE context_id = ?1")?
        .query_map(params![context], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (version, d, b) in versions {
        let Some(stored) = StoredDoc::from_columns(d, b)? else {
            continue;
        };
        let bytes = stored.load_bytes(blobs)?;
        if crypto::sealed_version(&bytes).is_some() {
            continue;
        }
        let sealed = StoredDoc::put_bytes(blobs, k.seal(context, column::VERSION_DOC, &bytes)?)?;
        conn.execute(
            "UPDATE versions SET doc = ?3, doc_blob = ?4 WHERE context_id = ?1 AND version = ?2",
            params![context, version, sealed.doc_column(), sealed.blob_column()],
        )?;
    }
    let conflicts: Vec<(i64, String, Option<String>)> = conn
        .prepare("SELECT id, agent_values, resolution FROM conflicts WHERE context_id = ?1")?
        .query_map(params![context], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let reseal = |text: String, col: &str| -> Result<String, StoreError> {
        if text.starts_with("sealed:") {
            Ok(text)
        } else {
            seal_text(blobs, context, col, text)
        }
    };
    for (id, values, resolution) in conflicts {
        conn.execute(
            "UPDATE conflicts SET agent_values = ?2, resolution = ?3 WHERE id = ?1",
            params![
                id,
                reseal(values, column::CONFLICT_VALUES)?,
                resolution
                    .map(|r| reseal(r, column::CONFLICT_RESOLUTION))
                    .transpose()?
            ],
        )?;
    }
    Ok(())
}

/// Gives `context` its first data key when values are encrypted at rest and it has none yet
/// (a new context, or one written before encryption was enabled): wrapped for the operator, its
/// owner (`owner`, else the one stored) and every agent it is shared with; then seals its
/// earlier rows. Call it before sealing any value of the context.
pub(super) fn ensure_key(
    conn: &Connection,
    blobs: &BlobStore,
    context: &str,
    owner: Option<&str>,
) -> Result<(), StoreError> {
    let Some(k) = blobs.keys() else {
        return Ok(());
    };
    if k.has_key(context) {
        return Ok(());
    }
    let mut holders: Vec<String> = conn
        .prepare("SELECT agent_id FROM shares WHERE context_id = ?1 ORDER BY agent_id")?
        .query_map(params![context], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let owner = match owner {
        Some(o) => Some(o.to_string()),
        None => conn
            .query_row(
                "SELECT owner FROM contexts WHERE id = ?1",
                params![context],
                |r| r.get::<_, String>(0),
            )
            .optional()?,
    };
    holders.extend(owner);
    insert_keys(conn, &k.rotate(context, &holders), now_ms())?;
    seal_earlier_rows(conn, blobs, context)
}
