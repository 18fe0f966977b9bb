//! Audit log tests, by concern: `basics` (the chain, the canonical encoding, tampering found by
//! the walk, query filters, ordering, flush, caps), `tamper` (the head file and the keyed
//! chain: edit, delete, reorder, truncate, with and without a master key), `queue` (the
//! bounded, fail-closed queue).

mod anchor_redteam;
mod basics;
mod queue;
mod tamper;

use super::*;
use crate::store::{DB_FILE, StoreConfig};
use serde_json::json;

fn entry(n: u64) -> NewAuditEntry {
    let decision = match n % 3 {
        0 => AuditDecision::Allow,
        1 => AuditDecision::Deny,
        _ => AuditDecision::Record,
    };
    NewAuditEntry::new(
        format!("agent-{}", n % 2),
        format!("context/plan-{}", n % 4),
        if n.is_multiple_of(2) { "read" } else { "write" },
        decision,
        format!("reason {n}"),
    )
    .details(json!({ "n": n }))
}

async fn memory_log() -> AuditLog {
    AuditLog::open(Store::open(StoreConfig::in_memory()).unwrap())
        .await
        .unwrap()
}

/// A log in a temporary data directory holding entries `1..=n`.
async fn disk_log(n: u64) -> (tempfile::TempDir, AuditLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(Store::open(StoreConfig::at(dir.path())).unwrap())
        .await
        .unwrap();
    for i in 1..=n {
        log.record(entry(i)).unwrap();
    }
    log.flush().await;
    (dir, log)
}

/// Runs `sql` on the database file directly, as someone with file access would.
fn tamper(dir: &tempfile::TempDir, sql: &str) {
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute_batch(sql).unwrap();
}

async fn all(log: &AuditLog) -> Vec<AuditEntry> {
    log.query(&AuditQuery::default()).await.unwrap()
}

fn ns(entries: &[AuditEntry]) -> Vec<u64> {
    entries
        .iter()
        .map(|e| e.details["n"].as_u64().unwrap())
        .collect()
}
