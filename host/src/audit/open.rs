//! Opening a log: the keys from the store's master key, the check of the tail against the
//! head file, and the operator's explicit acceptance of a log that no longer matches it.

use super::chain::ChainKeys;
use super::head::{self, AuditHead};
use super::writer::{self, Health};
use super::{
    AUDIT_QUEUE_CAPACITY, AuditDecision, AuditLog, LogInner, NewAuditEntry, VerifyReport, read,
};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::mpsc;

/// How [`AuditLog::open_with`] opens a log.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Entries that may wait for the writer (default [`AUDIT_QUEUE_CAPACITY`], at least 1).
    pub queue_capacity: usize,
    /// Check the tail against the head file and refuse a mismatch (default true). The
    /// `qi-host audit` commands open without it, to report the mismatch instead.
    pub check_head: bool,
    /// How long the writer waits, once an entry arrives at an idle writer, for more entries
    /// to join its batch (default [`AUDIT_BATCH_WINDOW`], 2 ms). Callers then queue entries
    /// without waking the writer for each one, and one store write carries them all. A
    /// [`flush`](AuditLog::flush) ends the wait at once; a full batch never waits. Zero
    /// writes each entry as soon as the writer is free.
    pub batch_window: std::time::Duration,
}

/// Default [`AuditOptions::batch_window`]: 2 ms, short next to anything that reads the log
/// (a query, a run report) and long enough that at a gated call every 2 µs about 1,000
/// entries share one store write.
pub const AUDIT_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            queue_capacity: AUDIT_QUEUE_CAPACITY,
            check_head: true,
            batch_window: AUDIT_BATCH_WINDOW,
        }
    }
}

/// Why a log could not be opened (or accepted).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log's tail does not match the head file kept outside the database: entries were
    /// deleted or rewritten since the host last wrote it, or the head file was removed or
    /// forged.
    #[error(
        "the audit log does not match its head file {path}: {problem}. Run `qi-host audit \
         verify --data-dir DIR` to see where the log breaks; once the change is understood, \
         `qi-host audit accept-head --data-dir DIR` adopts the log as it now stands (and records \
         that in the log)"
    )]
    HeadMismatch {
        /// The head file.
        path: String,
        /// The entry the problem is at (the head's seq, or the first broken one).
        seq: u64,
        /// What was found.
        problem: String,
    },
    /// `accept-head` was asked to adopt a log whose chain itself is broken.
    #[error(
        "the audit chain is broken at entry {seq}: {problem}; accept-head adopts only an intact \
         chain (a truncated or replaced one), never a modified one"
    )]
    Broken {
        /// The first broken entry.
        seq: u64,
        /// What is wrong.
        problem: String,
    },
}

impl AuditError {
    /// The entry a head or chain problem is at (0 for a store error).
    pub fn seq(&self) -> u64 {
        match self {
            AuditError::Store(_) => 0,
            AuditError::HeadMismatch { seq, .. } | AuditError::Broken { seq, .. } => *seq,
        }
    }

    /// The problem alone, without the advice.
    pub fn problem(&self) -> String {
        match self {
            AuditError::Store(e) => e.to_string(),
            AuditError::HeadMismatch { problem, path, .. } => {
                format!("head file {path}: {problem}")
            }
            AuditError::Broken { problem, .. } => problem.clone(),
        }
    }
}

pub(super) fn keys_of(store: &Store) -> Option<Arc<ChainKeys>> {
    store
        .config()
        .master_key
        .as_ref()
        .map(|m| Arc::new(ChainKeys::derive(m)))
}

/// Checks the store's tail against its head file: `Ok` for an in-memory store, an empty log
/// without a head file, or a head whose entry exists with the head's hash and scheme and from
/// which the chain verifies to the end.
pub(crate) async fn check_head(store: &Store, keys: Option<&ChainKeys>) -> Result<(), AuditError> {
    let Some(dir) = store.data_dir() else {
        return Ok(());
    };
    let path = head::head_path(dir).display().to_string();
    let mismatch = |seq: u64, problem: String| AuditError::HeadMismatch {
        path: path.clone(),
        seq,
        problem,
    };
    let tail = store.read(read::current_head).await?;
    if keys.is_none()
        && let Some(k) = tail.keyed_from
    {
        return Err(StoreError::InvalidConfig {
            field: "master_key",
            message: format!(
                "the audit log is keyed with the master key from entry {k} on; give it \
                 (--key-file FILE or QI_HOST_MASTER_KEY)"
            ),
        }
        .into());
    }
    let kept = match head::read(dir, keys) {
        Ok(Some(h)) => h,
        Ok(None) if tail.seq == 0 => return Ok(()),
        Ok(None) => {
            return Err(mismatch(
                tail.seq,
                format!(
                    "the file is missing but the log holds {} entries (deleted, or the log \
                     was written by a qi-host that kept no head file)",
                    tail.seq
                ),
            ));
        }
        Err(problem) => return Err(mismatch(tail.seq, problem)),
    };
    // A head may name the entry the chain will be keyed from before that entry exists (see
    // `writer::anchor`): the process stopped before its first keyed batch committed.
    let not_yet_keyed = |k: u64| tail.keyed_from.is_none() && k > tail.seq;
    if let Some(k) = kept.keyed_from
        && tail.keyed_from != Some(k)
        && !not_yet_keyed(k)
    {
        return Err(mismatch(
            k,
            format!(
                "the head says the chain is keyed from entry {k}, the database says {} \
                 (the chain was recomputed without the key)",
                tail.keyed_from
                    .map_or_else(|| "never".to_string(), |k| format!("from entry {k}"))
            ),
        ));
    }
    // A head without `keyedFrom` carries no MAC, so anyone can write one: once the database
    // is keyed, only a MAC-ed head (written after the first keyed batch) is trusted, whatever
    // entry it names (an unkeyed one would cover a deleted keyed tail).
    if kept.keyed_from.is_none()
        && let Some(k) = tail.keyed_from
    {
        return Err(mismatch(
            k,
            format!(
                "the head names an unkeyed chain up to entry {}, the database says it is keyed \
                 from entry {k}: a head without a MAC over a keyed log is forged (or the host \
                 stopped before its first keyed head was written)",
                kept.seq
            ),
        ));
    }
    if kept.seq > 0 {
        let seq = kept.seq;
        match store.read(move |c| read::entry(c, seq)).await? {
            None => {
                return Err(mismatch(
                    seq,
                    format!(
                        "entry {seq} (hash {}) is missing: the log ends at entry {} (the \
                         newest entries were deleted)",
                        kept.hash, tail.seq
                    ),
                ));
            }
            Some(e) if e.hash != kept.hash => {
                return Err(mismatch(
                    seq,
                    format!(
                        "entry {seq} has hash {}, the head file says {} (the log was rewritten)",
                        e.hash, kept.hash
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let report = walk_from(store, keys, &kept).await?;
    if let Some(b) = report.first_broken {
        return Err(mismatch(
            b.seq,
            format!("after the head's entry {}: {}", kept.seq, b.problem),
        ));
    }
    Ok(())
}

async fn walk_from(
    store: &Store,
    keys: Option<&ChainKeys>,
    from: &AuditHead,
) -> Result<VerifyReport, StoreError> {
    // The walk needs the keys on the reader thread; they are cheap to re-derive.
    let keys = keys.map(|k| ChainKeys {
        chain: k.chain.clone(),
        head: k.head.clone(),
    });
    let (seq, hash) = (from.seq, from.hash.clone());
    store
        .read(move |c| read::walk(c, keys.as_ref(), seq, hash))
        .await
}

impl AuditLog {
    /// [`AuditLog::open`] with `options`: the queue capacity, and whether the head check runs.
    pub async fn open_with(store: Store, options: AuditOptions) -> Result<AuditLog, AuditError> {
        let keys = keys_of(&store);
        if options.check_head {
            check_head(&store, keys.as_deref()).await?;
        }
        let head = store.read(read::current_head).await?;
        tracing::debug!(%head, "audit log opened");
        let capacity = options.queue_capacity.max(1);
        let (queue, pending) = mpsc::channel(capacity);
        let health = Arc::new(Health::default());
        let flush_now = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(writer::write_loop(
            writer::Writer {
                store: store.clone(),
                keys: keys.clone(),
                health: health.clone(),
                window: options.batch_window,
                flush_now: flush_now.clone(),
            },
            head,
            pending,
        ));
        Ok(AuditLog {
            inner: Arc::new(LogInner {
                store,
                queue,
                capacity,
                recorded: AtomicU64::new(0),
                health,
                keys,
                flush_now,
            }),
        })
    }

    /// Adopts the log of `store` as it now stands, for an operator who has reviewed why it
    /// no longer matches its head file (`qi-host audit accept-head`): the whole chain must
    /// verify (a truncated log is accepted, a modified one never: [`AuditError::Broken`]);
    /// the head file is rewritten from the tail and an `accept-head` entry by `operator`
    /// records the old head and the new one. Returns the new head.
    pub async fn accept_head(store: Store) -> Result<AuditHead, AuditError> {
        let keys = keys_of(&store);
        let previous = check_head(&store, keys.as_deref()).await.err();
        let k2 = keys.as_ref().map(|k| ChainKeys {
            chain: k.chain.clone(),
            head: k.head.clone(),
        });
        let report = store.read(move |c| read::verify(c, k2.as_ref())).await?;
        if let Some(b) = report.first_broken {
            return Err(AuditError::Broken {
                seq: b.seq,
                problem: b.problem,
            });
        }
        let tail = store.read(read::current_head).await?;
        if let Some(dir) = store.data_dir() {
            head::write_replacing(dir, &tail, keys.as_deref())
                .map_err(|e| StoreError::io(head::head_path(dir), e))?;
        }
        let log = AuditLog::open_with(
            store,
            AuditOptions {
                check_head: false,
                ..AuditOptions::default()
            },
        )
        .await?;
        log.record(
            NewAuditEntry::new(
                crate::context::OPERATOR,
                "audit",
                "accept-head",
                AuditDecision::Record,
                match &previous {
                    Some(e) => {
                        format!("the operator accepted the log as it stood: {}", e.problem())
                    }
                    None => "the operator re-accepted a log that matched its head file".into(),
                },
            )
            .details(serde_json::json!({"acceptedHead": tail})),
        )
        .map_err(|e| AuditError::Broken {
            seq: tail.seq,
            problem: format!("could not record the acceptance: {e}"),
        })?;
        log.flush().await;
        if let Some(reason) = log.status().failure {
            return Err(AuditError::Broken {
                seq: tail.seq,
                problem: format!("could not record the acceptance: {reason}"),
            });
        }
        Ok(log.head().await?)
    }
}
