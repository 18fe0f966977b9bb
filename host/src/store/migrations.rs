//! The schema, as an append-only list of migrations keyed by `PRAGMA user_version`.
//!
//! Migration `n` (1-based) moves the database from `user_version = n - 1` to `n`. Each runs in
//! its own transaction together with the `user_version` bump, so a crash mid-migration leaves
//! the previous version intact. Never edit a released migration; append a new one.

use super::StoreError;
use rusqlite::Connection;

/// Every migration, oldest first.
pub(crate) const MIGRATIONS: &[&str] = &[
    MIGRATION_1,
    MIGRATION_2,
    MIGRATION_3,
    MIGRATION_4,
    MIGRATION_5,
    MIGRATION_6,
    MIGRATION_7,
    MIGRATION_8,
];

/// Recorded model calls (`crate::llm::recordings`): one row per answer, keyed by the request's
/// hash, the caller's scope (`run/<run>/<subtask>` or `agent/<id>`) and which time in the
/// attempt the caller made that request (from 1). `request` and `response` are JSON text, sealed
/// when the data directory has a master key.
const MIGRATION_8: &str = "
CREATE TABLE llm_recordings(
    hash TEXT NOT NULL,
    scope TEXT NOT NULL,
    occurrence INTEGER NOT NULL,
    model TEXT NOT NULL,
    request BLOB NOT NULL,
    response BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY(hash, scope, occurrence)
);
CREATE INDEX llm_recordings_by_hash ON llm_recordings(hash, created_at);
";

/// Indexes on the columns that name blobs (`store::gc::BLOB_COLUMNS`), so the collector can
/// ask whether a blob is still named without a scan. Partial: most documents are inline.
const MIGRATION_7: &str = "
CREATE INDEX versions_by_blob ON versions(doc_blob) WHERE doc_blob IS NOT NULL;
CREATE INDEX contexts_by_blob ON contexts(doc_blob) WHERE doc_blob IS NOT NULL;
";

/// Subscriptions are held in memory by the host that serves them and live as long as their
/// agent (whose id is never reused); a subscriber resumes from the seq it holds. The table
/// was written and deleted, never read.
const MIGRATION_6: &str = "
DROP INDEX IF EXISTS subscriptions_by_agent;
DROP TABLE IF EXISTS subscriptions;
";

/// Host-kept labels of a context (what access policies see as `resource.labels`), set by its
/// creator or the operator, never read from the document: `labels` is a JSON list of strings.
const MIGRATION_5: &str = "
CREATE TABLE context_labels(
    context_id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    set_by TEXT NOT NULL,
    set_at INTEGER NOT NULL
);
";

/// A share may require a minimum trust level of the agent using it.
const MIGRATION_4: &str = "ALTER TABLE shares ADD COLUMN min_trust TEXT;";

/// Wrapped data keys of encrypted contexts (see `store::crypto`): one row per context, key
/// version and holder (`operator` or an agent id).
const MIGRATION_3: &str = "
CREATE TABLE context_keys(
    context_id TEXT NOT NULL,
    key_version INTEGER NOT NULL,
    holder TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY(context_id, key_version, holder)
);
";

/// The initial schema. Times are unix milliseconds; documents are MessagePack, inline in `doc`
/// or, above the blob threshold, in the blob directory under the SHA-256 hex in `doc_blob`.
const MIGRATION_1: &str = "
CREATE TABLE contexts(
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    context_type TEXT NOT NULL,
    schema TEXT,
    strategy TEXT NOT NULL,
    resolution TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    hlc TEXT NOT NULL,
    doc BLOB,
    doc_blob TEXT,
    field_stamps BLOB NOT NULL,
    conflict BLOB,
    history_limit INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX contexts_by_owner ON contexts(owner);
CREATE INDEX contexts_by_type ON contexts(context_type);

CREATE TABLE versions(
    context_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    revision INTEGER NOT NULL UNIQUE,
    agent_id TEXT NOT NULL,
    hlc TEXT NOT NULL,
    op TEXT NOT NULL,
    doc BLOB,
    doc_blob TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY(context_id, version)
);

CREATE TABLE shares(
    context_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    permissions INTEGER NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY(context_id, agent_id)
);
CREATE INDEX shares_by_agent ON shares(agent_id);

CREATE TABLE agents(
    id TEXT PRIMARY KEY,
    capabilities TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    last_heartbeat INTEGER NOT NULL,
    status TEXT NOT NULL
);

CREATE TABLE subscriptions(
    id TEXT PRIMARY KEY,
    agent_id TEXT,
    filter TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    active INTEGER NOT NULL
);
CREATE INDEX subscriptions_by_agent ON subscriptions(agent_id);

CREATE TABLE events(
    seq INTEGER PRIMARY KEY,
    event_type TEXT NOT NULL,
    context_id TEXT,
    agent_id TEXT,
    ts INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX events_by_context ON events(context_id, seq) WHERE context_id IS NOT NULL;

CREATE TABLE conflicts(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    context_id TEXT NOT NULL,
    field TEXT NOT NULL,
    conflict_type TEXT NOT NULL,
    severity TEXT NOT NULL,
    agent_values TEXT NOT NULL,
    detected_at INTEGER NOT NULL,
    resolved_at INTEGER,
    resolution TEXT
);
CREATE INDEX conflicts_by_context ON conflicts(context_id, detected_at);

CREATE TABLE meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// The audit log (`crate::audit`): one row per entry, `seq` dense from 1, each row's `hash`
/// chaining it to the previous one. `details` is the JSON text that was hashed.
const MIGRATION_2: &str = "
CREATE TABLE audit(
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    agent TEXT NOT NULL,
    resource TEXT NOT NULL,
    operation TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_by_agent ON audit(agent, seq);
CREATE INDEX audit_by_time ON audit(time_ms);
";

/// The schema version this build writes.
pub(crate) fn latest_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// Brings `conn` up to [`latest_version`], one transaction per migration. Returns the version
/// the database was at before.
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    let found: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let supported = latest_version();
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as u32 + 1;
        let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Another process may have migrated between our read and our write lock.
            let current: u32 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
            if current < version {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", version)?;
            }
            tx.commit()
        };
        apply(conn).map_err(|source| StoreError::Migration { version, source })?;
    }
    Ok(found)
}
