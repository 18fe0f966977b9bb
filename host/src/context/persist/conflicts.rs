//! Rows of the `conflicts` table: recorded, updated, pruned to the retention, loaded.

use super::keys::{seal_text, unseal_text};
use super::{exec, parse, text};
use crate::context::model::Conflict;
use crate::store::crypto::column;
use crate::store::{BlobStore, StoreError};
use rusqlite::{Connection, params};

/// Records a conflict; returns its id.
pub fn insert_conflict(
    conn: &Connection,
    blobs: &BlobStore,
    c: &Conflict,
) -> Result<u64, StoreError> {
    exec(
        conn,
        "INSERT INTO conflicts (context_id, field, conflict_type, severity, agent_values, detected_at, resolved_at, resolution)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            c.context_id,
            c.field,
            text(&c.conflict_type),
            text(&c.severity),
            seal_text(blobs, &c.context_id, column::CONFLICT_VALUES, serde_json::to_string(&c.agent_values).unwrap_or_default())?,
            c.detected_at as i64,
            c.resolution.as_ref().map(|r| r.resolved_at as i64),
            c.resolution
                .as_ref()
                .map(|r| seal_text(blobs, &c.context_id, column::CONFLICT_RESOLUTION, serde_json::to_string(r).unwrap_or_default()))
                .transpose()?,
        ],
    )?;
    Ok(conn.last_insert_rowid() as u64)
}

/// Conflict retention: keeps the newest `keep` conflict records of a context, and every
/// unresolved `critical` one (what a context in `conflict` state waits on).
pub fn prune_conflicts(conn: &Connection, context_id: &str, keep: u64) -> Result<(), StoreError> {
    exec(
        conn,
        "DELETE FROM conflicts WHERE context_id = ?1
           AND NOT (severity = ?3 AND resolved_at IS NULL)
           AND id <= (SELECT id FROM conflicts WHERE context_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![
            context_id,
            keep as i64,
            text(&crate::context::model::ConflictSeverity::Critical)
        ],
    )?;
    Ok(())
}

/// Updates the values and resolution of a recorded conflict.
pub fn update_conflict(
    conn: &Connection,
    blobs: &BlobStore,
    c: &Conflict,
) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE conflicts SET agent_values = ?2, resolved_at = ?3, resolution = ?4 WHERE id = ?1",
        params![
            c.id as i64,
            seal_text(
                blobs,
                &c.context_id,
                column::CONFLICT_VALUES,
                serde_json::to_string(&c.agent_values).unwrap_or_default()
            )?,
            c.resolution.as_ref().map(|r| r.resolved_at as i64),
            c.resolution
                .as_ref()
                .map(|r| seal_text(
                    blobs,
                    &c.context_id,
                    column::CONFLICT_RESOLUTION,
                    serde_json::to_string(r).unwrap_or_default()
                ))
                .transpose()?,
        ],
    )?;
    Ok(())
}

/// Conflicts of a context, oldest first.
pub fn load_conflicts(
    conn: &Connection,
    blobs: &BlobStore,
    context_id: &str,
) -> Result<Vec<Conflict>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, field, conflict_type, severity, agent_values, detected_at, resolution FROM conflicts WHERE context_id = ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query(params![context_id])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let resolution: Option<String> = r.get(6)?;
        out.push(Conflict {
            id: r.get::<_, i64>(0)? as u64,
            context_id: context_id.to_string(),
            field: r.get(1)?,
            conflict_type: parse(&r.get::<_, String>(2)?)?,
            severity: parse(&r.get::<_, String>(3)?)?,
            agent_values: serde_json::from_str(&unseal_text(
                blobs,
                context_id,
                column::CONFLICT_VALUES,
                r.get::<_, String>(4)?,
            )?)
            .map_err(|e| StoreError::CorruptRow(e.to_string()))?,
            detected_at: r.get::<_, i64>(5)? as u64,
            resolution: resolution
                .map(|s| unseal_text(blobs, context_id, column::CONFLICT_RESOLUTION, s))
                .transpose()?
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(|e| StoreError::CorruptRow(e.to_string()))?,
        });
    }
    Ok(out)
}
