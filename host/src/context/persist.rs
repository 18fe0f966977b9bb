//! Rows of the context tables: writing a change inside a group-commit transaction and loading
//! the hot tier at startup.

use super::hlc::Hlc;
use super::model::{
    AgentCapabilities, AgentConnection, AgentRegistration, ConflictResolution, ContextState,
    ContextStatus, ContextVersion, PendingConflict, Permission, Share, StampedField, SyncStrategy,
};
mod conflicts;
mod keys;

pub use conflicts::{insert_conflict, load_conflicts, prune_conflicts, update_conflict};
pub use keys::load_keys;
use keys::{ensure_key, insert_keys, now_ms, seal, unseal};

use crate::store::crypto::column;
use crate::store::{BlobStore, StoreError, StoredDoc, encode_value};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use std::collections::BTreeMap;

/// Runs `sql` through the connection's statement cache: the writer runs the same few
/// statements for every change, and preparing one costs more than running it.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(v).map_err(|e| StoreError::Encode(e.to_string()))
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(b).map_err(|e| StoreError::Decode(e.to_string()))
}

/// The stored (possibly sealed) bytes of one version's document.
pub fn load_version_bytes(
    conn: &Connection,
    blobs: &BlobStore,
    context_id: &str,
    version: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row: Option<(Option<Vec<u8>>, Option<String>)> = conn
        .query_row(
            "SELECT doc, doc_blob FROM versions WHERE context_id = ?1 AND version = ?2",
            params![context_id, version as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        Some((d, b)) => match StoredDoc::from_columns(d, b)? {
            Some(doc) => Ok(Some(doc.load_bytes(blobs)?)),
            None => Ok(None),
        },
        None => Ok(None),
    }
}

fn text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_value(Value::String(s.to_string()))
        .map_err(|e| StoreError::CorruptRow(format!("`{s}`: {e}")))
}

/// Writes the current state of a context: inserts its row, or updates the columns a change
/// can alter (an `ON CONFLICT … DO UPDATE`, not `INSERT OR REPLACE`, which deletes and
/// reinserts the row and every index entry of it). Owner, type, schema, strategy, resolution,
/// history limit and creation time are set when the row is inserted and never change.
pub fn upsert_context(
    conn: &Connection,
    blobs: &BlobStore,
    s: &ContextState,
) -> Result<(), StoreError> {
    upsert_context_encoded(conn, blobs, s, encode_value(&s.doc), None)
}

/// [`upsert_context`] with the document already encoded ([`encode_value`] of `s.doc`, not
/// sealed) and, when known, the field stamps encoded the same way ([`encode_stamps`]).
pub fn upsert_context_encoded(
    conn: &Connection,
    blobs: &BlobStore,
    s: &ContextState,
    encoded_doc: Vec<u8>,
    encoded_stamps: Option<Vec<u8>>,
) -> Result<(), StoreError> {
    ensure_key(conn, blobs, &s.id, Some(&s.owner))?;
    let doc = StoredDoc::put_bytes(blobs, seal(blobs, &s.id, column::CONTEXT_DOC, encoded_doc)?)?;
    let stamps = match encoded_stamps {
        Some(b) => b,
        None => encode_stamps(&s.field_stamps)?,
    };
    let stamps = seal(blobs, &s.id, column::FIELD_STAMPS, stamps)?;
    let pending = s
        .pending
        .as_ref()
        .map(|p| enc(p).and_then(|b| seal(blobs, &s.id, column::PENDING_CONFLICT, b)))
        .transpose()?;
    exec(
        conn,
        "INSERT INTO contexts (id, owner, context_type, schema, strategy, resolution, status, version, revision, hlc, doc, doc_blob, field_stamps, conflict, history_limit, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         ON CONFLICT(id) DO UPDATE SET status = excluded.status, version = excluded.version,
           revision = excluded.revision, hlc = excluded.hlc, doc = excluded.doc,
           doc_blob = excluded.doc_blob, field_stamps = excluded.field_stamps,
           conflict = excluded.conflict, updated_at = excluded.updated_at",
        params![
            s.id,
            s.owner,
            s.context_type,
            s.schema.as_ref().map(|v| v.to_string()),
            s.strategy.as_str(),
            text(&s.resolution),
            s.status.as_str(),
            s.version as i64,
            s.revision as i64,
            s.hlc.to_string(),
            doc.doc_column(),
            doc.blob_column(),
            stamps,
            pending,
            s.history_limit.map(|v| v as i64),
            s.created_at as i64,
            s.updated_at as i64,
        ],
    )?;
    Ok(())
}

/// The field stamps of a context as stored (MessagePack, not sealed).
pub fn encode_stamps(stamps: &BTreeMap<String, StampedField>) -> Result<Vec<u8>, StoreError> {
    enc(stamps)
}

/// Appends a version and trims history beyond the context's limit.
pub fn insert_version(
    conn: &Connection,
    blobs: &BlobStore,
    v: &ContextVersion,
    history_limit: Option<u64>,
    now_ms: u64,
) -> Result<(), StoreError> {
    let row = VersionRow {
        context_id: &v.context_id,
        version: v.version,
        revision: v.revision,
        agent_id: &v.agent_id,
        hlc: v.hlc,
        op: &v.op,
    };
    insert_version_encoded(
        conn,
        blobs,
        &row,
        encode_value(&v.doc),
        history_limit,
        now_ms,
    )
}

/// A version row without its document (see [`ContextVersion`] for the fields).
pub struct VersionRow<'a> {
    pub context_id: &'a str,
    pub version: u64,
    pub revision: u64,
    pub agent_id: &'a str,
    pub hlc: Hlc,
    pub op: &'a str,
}

/// [`insert_version`] with the document already encoded ([`encode_value`], not sealed).
/// Deletes the versions of context `id` from `from` on (a cluster host replacing a copy that
/// went its own way with the cluster's state; see `replica`).
pub fn delete_versions_from(conn: &Connection, id: &str, from: u64) -> Result<(), StoreError> {
    exec(
        conn,
        "DELETE FROM versions WHERE context_id = ?1 AND version >= ?2",
        params![id, from as i64],
    )?;
    Ok(())
}

pub fn insert_version_encoded(
    conn: &Connection,
    blobs: &BlobStore,
    v: &VersionRow<'_>,
    encoded_doc: Vec<u8>,
    history_limit: Option<u64>,
    now_ms: u64,
) -> Result<(), StoreError> {
    // A context written before encryption was enabled gets its key on its first new version.
    ensure_key(conn, blobs, v.context_id, None)?;
    let doc = StoredDoc::put_bytes(
        blobs,
        seal(blobs, v.context_id, column::VERSION_DOC, encoded_doc)?,
    )?;
    exec(
        conn,
        "INSERT INTO versions (context_id, version, revision, agent_id, hlc, op, doc, doc_blob, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            v.context_id,
            v.version as i64,
            v.revision as i64,
            v.agent_id,
            v.hlc.to_string(),
            v.op,
            doc.doc_column(),
            doc.blob_column(),
            now_ms as i64
        ],
    )?;
    if let Some(limit) = history_limit {
        exec(
            conn,
            "DELETE FROM versions WHERE context_id = ?1 AND version <= ?2",
            params![v.context_id, v.version as i64 - limit as i64],
        )?;
    }
    Ok(())
}

/// Writes a share.
pub fn upsert_share(conn: &Connection, blobs: &BlobStore, s: &Share) -> Result<(), StoreError> {
    // `encryptContextForAgent`: the agent gets its own wrapped copy of the data key.
    if let Some(k) = blobs.keys()
        && let Some(row) = k.wrap_for(&s.context_id, &s.agent_id)
    {
        insert_keys(conn, &[row], now_ms())?;
    }
    exec(
        conn,
        "INSERT OR REPLACE INTO shares (context_id, agent_id, permissions, granted_by, granted_at, expires_at, min_trust) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            s.context_id,
            s.agent_id,
            Permission::mask(&s.permissions) as i64,
            s.granted_by,
            s.granted_at as i64,
            s.expires_at.map(|e| e as i64),
            s.min_trust.map(|t| t.as_str())
        ],
    )?;
    Ok(())
}

/// Removes a share.
pub fn delete_share(
    conn: &Connection,
    blobs: &BlobStore,
    context_id: &str,
    agent_id: &str,
) -> Result<(), StoreError> {
    exec(
        conn,
        "DELETE FROM shares WHERE context_id = ?1 AND agent_id = ?2",
        params![context_id, agent_id],
    )?;
    // Revoking rotates the data key: later versions use a key the revoked agent never gets.
    if let Some(k) = blobs.keys()
        && k.has_key(context_id)
    {
        let mut holders: Vec<String> = conn
            .prepare("SELECT agent_id FROM shares WHERE context_id = ?1")?
            .query_map(params![context_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if let Some(owner) = conn
            .query_row(
                "SELECT owner FROM contexts WHERE id = ?1",
                params![context_id],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        {
            holders.push(owner);
        }
        insert_keys(conn, &k.rotate(context_id, &holders), now_ms())?;
    }
    Ok(())
}

/// Writes an agent registration.
pub fn upsert_agent(conn: &Connection, a: &AgentRegistration) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT OR REPLACE INTO agents (id, capabilities, registered_at, last_heartbeat, status) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            a.agent_id,
            serde_json::to_string(&a.capabilities).unwrap_or_default(),
            a.registered_at as i64,
            a.last_heartbeat as i64,
            text(&a.status)
        ],
    )?;
    Ok(())
}

/// Removes an agent registration.
pub fn delete_agent(conn: &Connection, id: &str) -> Result<(), StoreError> {
    exec(conn, "DELETE FROM agents WHERE id = ?1", params![id])?;
    Ok(())
}

/// Everything the hot tier needs at startup.
pub struct Loaded {
    /// Current state of every context, without documents ([`ContextState::resident`] false).
    pub contexts: Vec<ContextState>,
    /// Every share.
    pub shares: Vec<Share>,
    /// Every registered agent.
    pub agents: Vec<AgentRegistration>,
    /// Highest revision committed.
    pub revision: u64,
    /// Highest HLC committed.
    pub hlc: Hlc,
}

/// The columns [`context_row`] reads, in order.
const CONTEXT_COLUMNS: &str = "id, owner, context_type, schema, strategy, resolution, status, \
     version, revision, hlc, doc, doc_blob, field_stamps, conflict, history_limit, created_at, \
     updated_at";

/// One row of `contexts` selected with [`CONTEXT_COLUMNS`]; with `document` false, only its
/// metadata (no document, field stamps or pending conflict: they are not even decoded).
fn context_row(
    r: &rusqlite::Row<'_>,
    blobs: &BlobStore,
    document: bool,
) -> Result<ContextState, StoreError> {
    let schema: Option<String> = r.get(3)?;
    let id: String = r.get(0)?;
    let (doc, field_stamps, pending) = if document {
        let doc = load_doc(
            r.get::<_, Option<Vec<u8>>>(10)?,
            r.get::<_, Option<String>>(11)?,
            blobs,
            &id,
            column::CONTEXT_DOC,
        )?;
        let stamps: BTreeMap<String, StampedField> = dec(&unseal(
            blobs,
            &id,
            column::FIELD_STAMPS,
            r.get::<_, Vec<u8>>(12)?,
        )?)?;
        let pending: Option<PendingConflict> = r
            .get::<_, Option<Vec<u8>>>(13)?
            .map(|b| unseal(blobs, &id, column::PENDING_CONFLICT, b).and_then(|b| dec(&b)))
            .transpose()?;
        (doc, stamps, pending)
    } else {
        (Value::Null, BTreeMap::new(), None)
    };
    let hlc: Hlc = r
        .get::<_, String>(9)?
        .parse()
        .map_err(StoreError::CorruptRow)?;
    let status = match r.get::<_, String>(6)?.as_str() {
        "active" => ContextStatus::Active,
        "conflict" => ContextStatus::Conflict,
        _ => ContextStatus::Deleted,
    };
    Ok(ContextState {
        id,
        owner: r.get(1)?,
        context_type: r.get(2)?,
        schema: schema
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| StoreError::CorruptRow(e.to_string()))?,
        strategy: parse::<SyncStrategy>(&r.get::<_, String>(4)?)?,
        resolution: parse::<ConflictResolution>(&r.get::<_, String>(5)?)?,
        status,
        version: r.get::<_, i64>(7)? as u64,
        revision: r.get::<_, i64>(8)? as u64,
        hlc,
        doc,
        field_stamps,
        pending,
        history_limit: r.get::<_, Option<i64>>(14)?.map(|v| v as u64),
        created_at: r.get::<_, i64>(15)? as u64,
        updated_at: r.get::<_, i64>(16)? as u64,
        resident: document,
        kv_revision: 0,
    })
}

/// The current state of context `id` with its document, or `None` if there is no such row.
pub fn load_context(
    conn: &Connection,
    blobs: &BlobStore,
    id: &str,
) -> Result<Option<ContextState>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CONTEXT_COLUMNS} FROM contexts WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(r) => Ok(Some(context_row(r, blobs, true)?)),
        None => Ok(None),
    }
}

/// Loads the hot tier at startup: every context's metadata (documents are loaded when first
/// needed), every share and agent, the highest revision and HLC.
pub fn load_all(conn: &Connection, blobs: &BlobStore) -> Result<Loaded, StoreError> {
    let mut contexts = Vec::new();
    let mut stmt = conn.prepare(&format!("SELECT {CONTEXT_COLUMNS} FROM contexts"))?;
    let mut rows = stmt.query([])?;
    let mut max_hlc = Hlc::default();
    while let Some(r) = rows.next()? {
        let state = context_row(r, blobs, false)?;
        max_hlc = max_hlc.max(state.hlc);
        contexts.push(state);
    }
    let mut shares = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT context_id, agent_id, permissions, granted_by, granted_at, expires_at, min_trust FROM shares",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        shares.push(Share {
            context_id: r.get(0)?,
            agent_id: r.get(1)?,
            permissions: Permission::from_mask(r.get::<_, i64>(2)? as u32),
            granted_by: r.get(3)?,
            granted_at: r.get::<_, i64>(4)? as u64,
            expires_at: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
            min_trust: r
                .get::<_, Option<String>>(6)?
                .map(|t| t.parse().map_err(StoreError::CorruptRow))
                .transpose()?,
        });
    }
    let mut agents = Vec::new();
    let mut stmt =
        conn.prepare("SELECT id, capabilities, registered_at, last_heartbeat, status FROM agents")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let caps: AgentCapabilities = serde_json::from_str(&r.get::<_, String>(1)?)
            .map_err(|e| StoreError::CorruptRow(e.to_string()))?;
        agents.push(AgentRegistration {
            agent_id: r.get(0)?,
            capabilities: caps,
            registered_at: r.get::<_, i64>(2)? as u64,
            last_heartbeat: r.get::<_, i64>(3)? as u64,
            status: parse::<AgentConnection>(&r.get::<_, String>(4)?)?,
        });
    }
    let revision: Option<i64> = conn
        .query_row("SELECT MAX(revision) FROM versions", [], |r| r.get(0))
        .optional()?
        .flatten();
    let ctx_revision: Option<i64> = conn
        .query_row("SELECT MAX(revision) FROM contexts", [], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(Loaded {
        contexts,
        shares,
        agents,
        revision: revision.unwrap_or(0).max(ctx_revision.unwrap_or(0)) as u64,
        hlc: max_hlc,
    })
}

/// Versions of a context, newest first.
pub fn load_versions(
    conn: &Connection,
    blobs: &BlobStore,
    context_id: &str,
    limit: usize,
) -> Result<Vec<ContextVersion>, StoreError> {
    Ok(load_versions_within(conn, blobs, context_id, limit, usize::MAX)?.unwrap_or_default())
}

/// [`load_versions`], reading at most `max_bytes` of stored documents (plus the one that
/// crosses it): `None` when the versions hold more.
pub fn load_versions_within(
    conn: &Connection,
    blobs: &BlobStore,
    context_id: &str,
    limit: usize,
    max_bytes: usize,
) -> Result<Option<Vec<ContextVersion>>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT version, revision, agent_id, hlc, op, doc, doc_blob FROM versions WHERE context_id = ?1 ORDER BY version DESC LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![context_id, limit as i64])?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(r) = rows.next()? {
        let (doc, size) = load_doc_sized(
            r.get::<_, Option<Vec<u8>>>(5)?,
            r.get::<_, Option<String>>(6)?,
            blobs,
            context_id,
            column::VERSION_DOC,
        )?;
        bytes = bytes.saturating_add(size);
        if bytes > max_bytes {
            return Ok(None);
        }
        out.push(ContextVersion {
            context_id: context_id.to_string(),
            version: r.get::<_, i64>(0)? as u64,
            revision: r.get::<_, i64>(1)? as u64,
            agent_id: r.get(2)?,
            hlc: r
                .get::<_, String>(3)?
                .parse()
                .map_err(StoreError::CorruptRow)?,
            op: r.get(4)?,
            doc,
        });
    }
    Ok(Some(out))
}

/// One version of a context.
pub fn load_version(
    conn: &Connection,
    blobs: &BlobStore,
    context_id: &str,
    version: u64,
) -> Result<Option<Value>, StoreError> {
    let row: Option<(Option<Vec<u8>>, Option<String>)> = conn
        .query_row(
            "SELECT doc, doc_blob FROM versions WHERE context_id = ?1 AND version = ?2",
            params![context_id, version as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(d, b)| load_doc(d, b, blobs, context_id, column::VERSION_DOC))
        .transpose()
}

/// Loads a document from its two columns; a row without one (a delete) is `null`.
fn load_doc(
    doc: Option<Vec<u8>>,
    blob: Option<String>,
    blobs: &BlobStore,
    context_id: &str,
    column: &str,
) -> Result<Value, StoreError> {
    load_doc_sized(doc, blob, blobs, context_id, column).map(|(doc, _)| doc)
}

/// [`load_doc`] and the bytes it was stored in.
fn load_doc_sized(
    doc: Option<Vec<u8>>,
    blob: Option<String>,
    blobs: &BlobStore,
    context_id: &str,
    column: &str,
) -> Result<(Value, usize), StoreError> {
    match StoredDoc::from_columns(doc, blob)? {
        Some(d) => {
            let bytes = d.load_bytes(blobs)?;
            let size = bytes.len();
            Ok((
                crate::store::decode_value(&unseal(blobs, context_id, column, bytes)?)?,
                size,
            ))
        }
        None => Ok((Value::Null, 0)),
    }
}
