//! Collection of unreferenced blobs.
//!
//! A blob is referenced by a row whose column in [`BLOB_COLUMNS`] holds its hash (today the
//! `doc_blob` of `contexts` and `versions`; conflict rows and events hold no blob: they keep
//! their values inline or name versions). Nothing else names blobs.
//!
//! * **After a commit.** Temporary triggers on the write connection note, inside the write's
//!   own savepoint, every hash a deleted or changed row stops naming (in the temp table
//!   `qi_blob_candidates`): so retention dropping versions, a context deleted or a document
//!   replaced. Right after the batch commits, still on the writer thread and before the next
//!   batch starts, each candidate no row names any more is removed. A write that rolls back
//!   rolls its candidates back with it; a commit that fails leaves them for the next one. No
//!   write is running meanwhile, so no row can be about to name a candidate.
//! * **At open.** [`sweep_all`] removes every blob no row names and every temporary file in
//!   the blob directory: what a crash between a blob's write and its row's commit (or a write
//!   that rolled back) left behind. The directory's lock guarantees no other process writes;
//!   a store opened while another store of this process holds the lock (and may have a write
//!   in flight, its blob stored and its row not yet committed) sweeps nothing.
//!
//! A read that loaded a version row just before retention dropped it and reads its blob after
//! the collection fails with `BlobMissing`: reads of versions at the edge of retention can
//! race with their removal (the version itself is gone by then).

use super::{BlobStore, StoreError};
use rusqlite::Connection;
use std::collections::HashSet;

/// Every `(table, column)` that can hold a blob's hash. A new column naming blobs must be
/// added here (and get a partial index on it, as in migration 6), or its blobs are collected.
pub(crate) const BLOB_COLUMNS: &[(&str, &str)] =
    &[("contexts", "doc_blob"), ("versions", "doc_blob")];

/// Creates the candidate table and its triggers on the write connection (temporary: they
/// belong to this connection only and vanish with it).
pub(crate) fn install(conn: &Connection) -> rusqlite::Result<()> {
    // `INSERT OR REPLACE` deletes the replaced row; only with recursive triggers does that
    // deletion fire delete triggers.
    conn.pragma_update(None, "recursive_triggers", true)?;
    let mut sql =
        String::from("CREATE TEMP TABLE IF NOT EXISTS qi_blob_candidates(hash TEXT PRIMARY KEY);");
    for (table, column) in BLOB_COLUMNS {
        // Not `INSERT OR IGNORE`: the statement that fires a trigger imposes its own conflict
        // policy on the trigger's statements, and an upsert (`ON CONFLICT … DO UPDATE`) of a
        // row whose blob is already a candidate (its version was just trimmed, or another row
        // holding the same document changed in this batch) would abort on the duplicate.
        let note = format!(
            "INSERT INTO qi_blob_candidates(hash) SELECT OLD.{column} \
             WHERE NOT EXISTS (SELECT 1 FROM qi_blob_candidates WHERE hash = OLD.{column});"
        );
        sql.push_str(&format!(
            "CREATE TEMP TRIGGER IF NOT EXISTS qi_blob_del_{table}_{column} \
             AFTER DELETE ON main.{table} WHEN OLD.{column} IS NOT NULL BEGIN {note} END;\
             CREATE TEMP TRIGGER IF NOT EXISTS qi_blob_upd_{table}_{column} \
             AFTER UPDATE OF {column} ON main.{table} \
             WHEN OLD.{column} IS NOT NULL AND OLD.{column} IS NOT NEW.{column} BEGIN \
             {note} END;"
        ));
    }
    conn.execute_batch(&sql)
}

/// Whether some row names `hash` (through the partial indexes on [`BLOB_COLUMNS`]).
fn referenced(conn: &Connection, hash: &str) -> rusqlite::Result<bool> {
    for (table, column) in BLOB_COLUMNS {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT EXISTS(SELECT 1 FROM main.{table} WHERE {column} = ?1)"
        ))?;
        if stmt.query_row([hash], |r| r.get::<_, bool>(0))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes the candidates of the batch that just committed that no row names any more; returns
/// how many blobs were removed. Runs outside any transaction, on the writer thread.
pub(crate) fn sweep_candidates(conn: &Connection, blobs: &BlobStore) -> Result<u64, StoreError> {
    let candidates: Vec<String> = {
        let mut stmt = conn.prepare_cached("SELECT hash FROM temp.qi_blob_candidates")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    if candidates.is_empty() {
        return Ok(0);
    }
    let mut removed = 0;
    for hash in &candidates {
        if !referenced(conn, hash)? {
            blobs.remove(hash)?;
            removed += 1;
        }
    }
    conn.prepare_cached("DELETE FROM temp.qi_blob_candidates")?
        .execute([])?;
    if removed > 0 {
        tracing::debug!(removed, "unreferenced blobs removed");
    }
    Ok(removed)
}

/// Removes every blob no row names and every temporary file of the blob directory; returns
/// how many blobs were removed. For [`Store::open`](super::Store::open), which holds the
/// directory's lock and has not started its writer yet.
pub(crate) fn sweep_all(conn: &Connection, blobs: &BlobStore) -> Result<u64, StoreError> {
    let (stored, temps) = blobs.list()?;
    for temp in temps {
        super::blobs::remove_file(&temp)?;
    }
    if stored.is_empty() {
        return Ok(0);
    }
    let mut named = HashSet::new();
    for (table, column) in BLOB_COLUMNS {
        let mut stmt = conn.prepare(&format!(
            "SELECT DISTINCT {column} FROM main.{table} WHERE {column} IS NOT NULL"
        ))?;
        for hash in stmt.query_map([], |r| r.get::<_, String>(0))? {
            named.insert(hash?);
        }
    }
    let mut removed = 0;
    for hash in stored.iter().filter(|h| !named.contains(*h)) {
        blobs.remove(hash)?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "blobs no row names (left by a crash or a rolled-back write) removed"
        );
    }
    Ok(removed)
}
