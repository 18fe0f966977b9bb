//! Reading events back from the `events` table.

use super::{Event, UnknownEventType};
use crate::store::{BlobStore, StoreError, decode_value};
use rusqlite::Connection;

/// `(oldest stored seq, newest stored seq)`; `(last + 1, last)` when the table is empty.
pub(crate) fn seq_bounds(conn: &Connection) -> Result<(u64, u64), StoreError> {
    let (min, max): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT min(seq), max(seq) FROM events")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let last = max.unwrap_or(0) as u64;
    Ok((min.map_or(last + 1, |m| m as u64), last))
}

/// Runs a query selecting [`EVENT_COLUMNS`](super::EVENT_COLUMNS).
pub(crate) fn query_events(
    conn: &Connection,
    blobs: &BlobStore,
    sql: &str,
    params: Vec<rusqlite::types::Value>,
) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        events.push(event_from_row(row, blobs)?);
    }
    Ok(events)
}

fn event_from_row(row: &rusqlite::Row<'_>, blobs: &BlobStore) -> Result<Event, StoreError> {
    let event_type: String = row.get(1)?;
    let seq = row.get::<_, i64>(0)? as u64;
    let data: Vec<u8> = row.get(6)?;
    // With a master key every event's data is sealed, bound to its seq.
    let data = match blobs.keys() {
        Some(keys) => keys.open_event(seq, &data)?,
        None if crate::store::crypto::sealed_version(&data).is_some() => {
            return Err(StoreError::Decode(format!(
                "event {seq} is encrypted; this data directory needs its master key (--key-file FILE or QI_HOST_MASTER_KEY)"
            )));
        }
        None => data,
    };
    Ok(Event {
        seq,
        event_type: event_type
            .parse()
            .map_err(|e: UnknownEventType| StoreError::CorruptRow(e.to_string()))?,
        context_id: row.get(2)?,
        agent_id: row.get(3)?,
        timestamp_ms: row.get::<_, i64>(4)?.max(0) as u64,
        priority: row.get(5)?,
        data: decode_value(&data)?,
    })
}
