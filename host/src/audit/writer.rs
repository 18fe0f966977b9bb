//! The background writer: drains the bounded queue, appends each batch in one store write,
//! writes the head file after the commit, and puts the log into its failed state when a batch
//! cannot be written.

use super::chain::{self, ChainKeys, Content};
use super::head::{self, AuditHead};
use super::{AuditDecision, NewAuditEntry, SharedDecision, read};
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most entries appended in one store write.
pub(crate) const MAX_BATCH: usize = 1024;

/// Attempts at writing one batch before the log is put into its failed state.
const WRITE_ATTEMPTS: u32 = 3;

pub(crate) enum Queued {
    Entry { time_ms: u64, entry: NewAuditEntry },
    Decision { time_ms: u64, entry: SharedDecision },
    Flush(oneshot::Sender<()>),
}

/// What the writer reports to every handle: written, lost, the failure, the head.
#[derive(Default)]
pub(crate) struct Health {
    pub failed: AtomicBool,
    pub failure: Mutex<Option<Arc<str>>>,
    pub written: AtomicU64,
    pub batches: AtomicU64,
    pub lost: AtomicU64,
    pub head: Mutex<Option<AuditHead>>,
}

impl Health {
    /// Marks the log failed (the first reason is kept).
    pub(crate) fn fail(&self, reason: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(Arc::from(reason));
        }
        self.failed.store(true, Ordering::Release);
    }

    pub(crate) fn failure(&self) -> Option<Arc<str>> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// An entry with its time and caps applied, ready to be chained.
struct Prepared {
    time_ms: u64,
    agent: String,
    resource: String,
    operation: String,
    decision: AuditDecision,
    reason: String,
    details: String,
}

impl Prepared {
    fn new(time_ms: u64, e: NewAuditEntry) -> Prepared {
        use chain::{MAX_NAME_BYTES, MAX_REASON_BYTES};
        Prepared {
            time_ms: time_ms.min(i64::MAX as u64),
            agent: chain::cap_text(e.agent, MAX_NAME_BYTES),
            resource: chain::cap_text(e.resource, MAX_NAME_BYTES),
            operation: chain::cap_text(e.operation, MAX_NAME_BYTES),
            decision: e.decision,
            reason: chain::cap_text(e.reason, MAX_REASON_BYTES),
            details: chain::details_text(&e.details),
        }
    }

    /// A shared-string decision: its strings are copied here, on the writer's side.
    fn shared(time_ms: u64, e: SharedDecision) -> Prepared {
        let entry = NewAuditEntry::new(
            e.agent.to_string(),
            e.resource.to_string(),
            e.operation.to_string(),
            e.decision,
            e.reason.to_string(),
        );
        Prepared::new(time_ms, entry)
    }
}

/// What the background writer works with.
pub(crate) struct Writer {
    pub store: Store,
    pub keys: Option<Arc<ChainKeys>>,
    pub health: Arc<Health>,
    /// [`AuditOptions::batch_window`](super::AuditOptions::batch_window).
    pub window: Duration,
    /// Notified by a flush: the window ends at once.
    pub flush_now: Arc<tokio::sync::Notify>,
}

/// Waits for an entry; then, unless the last batch was full (a backlog) or a flush is
/// waiting, lets the batch window pass so that entries queued meanwhile join the batch;
/// takes whatever is queued (up to [`MAX_BATCH`] entries), appends it in one store write,
/// then answers the flushes that were queued with it.
pub(crate) async fn write_loop(
    writer: Writer,
    opened_at: AuditHead,
    mut pending: mpsc::Receiver<Queued>,
) {
    let Writer {
        store,
        keys,
        health,
        window,
        flush_now,
    } = writer;
    let mut backlog = false;
    // The newest entry this log knows to be genuine: the head checked at open, then each
    // batch's. Every batch first checks it is still there, so a tail deleted or rewritten
    // while the host runs is not silently extended (and blessed by a new head file).
    let mut known = opened_at;
    let mut batch: Vec<Prepared> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = pending.recv().await {
        if !backlog && !window.is_zero() && !matches!(first, Queued::Flush(_)) {
            tokio::select! {
                () = tokio::time::sleep(window) => {}
                () = flush_now.notified() => {}
            }
        }
        let mut next = Some(first);
        while let Some(queued) = next.take() {
            match queued {
                Queued::Entry { time_ms, entry } => batch.push(Prepared::new(time_ms, entry)),
                Queued::Decision { time_ms, entry } => {
                    batch.push(Prepared::shared(time_ms, entry));
                }
                Queued::Flush(done) => flushes.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = pending.try_recv().ok();
            }
        }
        backlog = batch.len() >= MAX_BATCH;
        if !batch.is_empty() {
            let rows = std::mem::take(&mut batch);
            if health.failed.load(Ordering::Acquire) {
                // Queued before the failure was seen: lost, and counted.
                health.lost.fetch_add(rows.len() as u64, Ordering::Relaxed);
            } else {
                if let Some(head) = persist(&store, keys.clone(), &health, &known, rows).await {
                    known = head;
                }
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Appends `batch` in one store write, retrying a failed write; then writes the head file
/// and returns the new head. A batch that still fails puts the log into its failed state.
async fn persist(
    store: &Store,
    keys: Option<Arc<ChainKeys>>,
    health: &Health,
    known: &AuditHead,
    batch: Vec<Prepared>,
) -> Option<AuditHead> {
    let batch = Arc::new(batch);
    if let Err(e) = anchor(store, keys.clone(), known).await {
        let reason = format!(
            "the audit head file could not be anchored before entry {}: {e}",
            known.seq + 1
        );
        tracing::error!(%reason, "the audit log stops accepting entries");
        health.lost.fetch_add(batch.len() as u64, Ordering::Relaxed);
        health.fail(reason);
        return None;
    }
    let mut attempt = 0;
    let error = loop {
        attempt += 1;
        let rows = batch.clone();
        let k = keys.clone();
        let known = known.clone();
        let error = match store
            .write(move |ctx| append(ctx.tx(), k.as_deref(), &known, &rows))
            .await
        {
            Ok(head) => {
                health
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                health.batches.fetch_add(1, Ordering::Relaxed);
                match write_head(store, keys, head.clone()).await {
                    Ok(()) => {
                        *health.head.lock().unwrap_or_else(|p| p.into_inner()) = Some(head.clone());
                        return Some(head);
                    }
                    Err(e) => {
                        let reason = format!(
                            "the audit head file could not be written after entry {}: {e}",
                            head.seq
                        );
                        tracing::error!(%reason, "the audit log stops accepting entries");
                        health.fail(reason);
                        return None;
                    }
                }
            }
            Err(error) => error,
        };
        if attempt < WRITE_ATTEMPTS && !matches!(error, StoreError::Closed) {
            tracing::warn!(%error, attempt, entries = batch.len(), "audit write failed; retrying");
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            continue;
        }
        break error;
    };
    let first = &batch[0];
    health.lost.fetch_add(batch.len() as u64, Ordering::Relaxed);
    tracing::error!(
        %error,
        entries = batch.len(),
        first_agent = %first.agent,
        first_operation = %first.operation,
        first_resource = %first.resource,
        "audit entries could not be written and are lost; the audit log now refuses entries, \
         so gated calls are refused until the host is restarted"
    );
    health.fail(format!(
        "writing {} audit entries failed after {WRITE_ATTEMPTS} attempts: {error}",
        batch.len()
    ));
    None
}

/// Before a batch commits, writes the head file that a crash right after the commit (before
/// the batch's own head write) must find, so that the head is then only behind the log and the
/// next open verifies forward from it, instead of refusing the data directory:
/// - the genesis, when the log is empty and has no head file yet (no head file over a log with
///   entries means it was deleted);
/// - with a master key over a log not keyed yet, the current tail with its MAC, naming the
///   entry keying starts at (an unkeyed head over a keyed log means it was forged).
///
/// Only over a head file that names `known` (or none, for an empty log): a missing, unreadable
/// or different head is the open's to report, never replaced here. Nothing is written for a
/// log that writes nothing, so opening a log with a key changes nothing until a keyed entry
/// is about to be written.
pub(super) async fn anchor(
    store: &Store,
    keys: Option<Arc<ChainKeys>>,
    known: &AuditHead,
) -> std::io::Result<()> {
    let Some(dir) = store.data_dir().map(|d| d.to_path_buf()) else {
        return Ok(());
    };
    let keying = keys.is_some() && known.keyed_from.is_none();
    if known.seq > 0 && !keying {
        return Ok(());
    }
    let known = known.clone();
    tokio::task::spawn_blocking(move || {
        let kept = head::read(&dir, keys.as_deref());
        let consistent = match &kept {
            Ok(None) => known.seq == 0,
            Ok(Some(h)) => {
                h.seq == known.seq && h.hash == known.hash && h.keyed_from.is_none() && keying
            }
            Err(_) => false,
        };
        if !consistent {
            return Ok(());
        }
        let keyed_from = keying.then_some(known.seq + 1);
        let anchor = AuditHead {
            seq: known.seq,
            hash: known.hash.clone(),
            scheme: AuditHead::scheme_of(known.seq, keyed_from),
            keyed_from,
        };
        head::write_replacing(&dir, &anchor, keys.as_deref())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Writes the head file of an on-disk store (a blocking fsync, off the runtime's threads).
async fn write_head(
    store: &Store,
    keys: Option<Arc<ChainKeys>>,
    head: AuditHead,
) -> std::io::Result<()> {
    let Some(dir) = store.data_dir().map(|d| d.to_path_buf()) else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || head::write(&dir, &head, keys.as_deref()))
        .await
        .map_err(std::io::Error::other)?
}

/// Chains `rows` onto the newest stored entry, inserts them, and returns the new head. With
/// `keys`, entries are HMAC-keyed; the first keyed entry is recorded in `meta`. Refuses to
/// write when `known`, the newest entry this log wrote or checked, is gone or changed.
fn append(
    conn: &rusqlite::Connection,
    keys: Option<&ChainKeys>,
    known: &AuditHead,
    rows: &[Prepared],
) -> Result<AuditHead, StoreError> {
    if known.seq > 0 {
        let stored: Option<String> = conn
            .prepare_cached("SELECT hash FROM audit WHERE seq = ?1")?
            .query_row([read::clamp_i64(known.seq)], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        if stored.as_deref() != Some(known.hash.as_str()) {
            return Err(StoreError::CorruptRow(format!(
                "audit entry {} (hash {}) was {} while the host ran; nothing more is appended \
                 to this log: stop the host and run `qi-host audit verify`",
                known.seq,
                known.hash,
                if stored.is_some() {
                    "rewritten"
                } else {
                    "deleted"
                }
            )));
        }
    }
    let (mut seq, mut prev_hash) = read::head(conn)?;
    let mut keyed_from = read::keyed_from(conn)?;
    if keys.is_none()
        && let Some(k) = keyed_from
    {
        return Err(StoreError::InvalidConfig {
            field: "master_key",
            message: format!(
                "the audit log is keyed with the master key from entry {k} on; give it \
                 (--key-file FILE or QI_HOST_MASTER_KEY)"
            ),
        });
    }
    if keys.is_some() && keyed_from.is_none() {
        keyed_from = Some(seq + 1);
        conn.prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2)")?
            .execute(rusqlite::params![read::KEYED_FROM, (seq + 1).to_string()])?;
    }
    let key = keys.map(|k| &*k.chain);
    let mut insert = conn.prepare_cached(
        "INSERT INTO audit(seq, time_ms, agent, resource, operation, decision, reason, details, \
         prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for row in rows {
        seq += 1;
        let decision = row.decision.as_str();
        let hash = chain::entry_hash(
            key,
            prev_hash.as_bytes(),
            &Content {
                seq,
                time_ms: row.time_ms,
                agent: row.agent.as_bytes(),
                resource: row.resource.as_bytes(),
                operation: row.operation.as_bytes(),
                decision: decision.as_bytes(),
                reason: row.reason.as_bytes(),
                details: row.details.as_bytes(),
            },
        );
        insert.execute(rusqlite::params![
            read::clamp_i64(seq),
            read::clamp_i64(row.time_ms),
            row.agent,
            row.resource,
            row.operation,
            decision,
            row.reason,
            row.details,
            prev_hash,
            hash,
        ])?;
        prev_hash = hash;
    }
    Ok(AuditHead {
        seq,
        hash: prev_hash,
        scheme: AuditHead::scheme_of(seq, keyed_from),
        keyed_from,
    })
}
