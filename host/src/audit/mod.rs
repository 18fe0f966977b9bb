//! A tamper-evident audit log: an append-only, hash-chained record of what agents were allowed
//! and denied, and of the lifecycle facts around them, kept in the store's `audit` table, with
//! its head kept outside the database.
//!
//! ```
//! use qi_host::audit::{AuditDecision, AuditLog, AuditQuery, NewAuditEntry};
//! use qi_host::store::{Store, StoreConfig};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let log = AuditLog::open(Store::open(StoreConfig::in_memory())?).await?;
//! // Never waits: the entry is queued and written by a background task. An `Err` (full queue,
//! // failed writer) means the action being recorded must be refused.
//! log.record(
//!     NewAuditEntry::new("agent-a", "context/plan", "read", AuditDecision::Deny, "no read share")
//!         .details(json!({"policy": "default-deny"})),
//! )?;
//! log.flush().await; // everything recorded so far is now durable
//! let denied = log
//!     .query(&AuditQuery { resource: Some("context/*".into()), ..Default::default() })
//!     .await?;
//! assert_eq!((denied[0].seq, denied[0].decision), (1, AuditDecision::Deny));
//! let report = log.verify().await?;
//! assert!(report.first_broken.is_none());
//! println!("head: {}", log.head().await?); // entry 1 hash … (sha256)
//! # Ok(()) })
//! # }
//! ```
//!
//! # What is recorded
//!
//! One [`AuditEntry`] per fact: who (`agent`), on what (`resource`, e.g. `context/plan`,
//! `tool/fs.read`, `network/127.0.0.1:80`, `limits/tool-calls`), doing what (`operation`), the
//! [`AuditDecision`] (`allow`, `deny`, or `record` for a lifecycle fact such as a spawn, a
//! termination, a trust change, a limit violation or a grant change), why (`reason`) and
//! free-form JSON `details`. This module only keeps the log; callers decide what to record.
//! Every refusal an agent meets goes through one helper, `AgentShared::refuse` (the gate, the
//! tool and network allow-lists, name lookups, spent budgets), and every allowed decision that
//! is recorded through `AgentShared::record_decision` (with policies loaded; without them only
//! for a `monitored` agent).
//!
//! # Recording is fail-closed
//!
//! `record` stamps the entry with the current time (`time_ms`, unix milliseconds) and puts it
//! on a bounded queue ([`AUDIT_QUEUE_CAPACITY`] = 65,536 entries; [`AuditOptions`] sets
//! another), without waiting and without allocating beyond the entry. One background task
//! drains the queue and appends every queued entry, in the order the `record` calls happened,
//! in one store write (group commit). `record` returns [`AuditUnavailable`] when:
//!
//! - the queue is full ([`AuditUnavailable::QueueFull`]): the store is not keeping up;
//! - a batch failed to be written three times ([`AuditUnavailable::Failed`]): from then on the
//!   log accepts nothing (until it is opened again); the failure and the number of entries lost
//!   (those queued when it happened) are logged with `tracing::error` and kept in
//!   [`AuditLog::status`].
//!
//! Callers that record a decision refuse the call then (`the audit log cannot record this
//! call: ...`); a lifecycle fact that cannot be recorded is only in the status. Call
//! [`AuditLog::flush`] before shutting down: entries still queued when the tokio runtime stops
//! are lost.
//!
//! Guests influence most fields, so they are capped before they are hashed: `reason` at
//! [`MAX_REASON_BYTES`] (1 KiB), `agent`, `resource` and `operation` at [`MAX_NAME_BYTES`]
//! (4 KiB), each cut on a character boundary and ending in `...[truncated from N bytes]`;
//! `details` at [`MAX_DETAILS_BYTES`] (16 KiB of JSON), replaced when larger by
//! `{"truncated": true, "originalBytes": N, "prefix": "<start of its JSON text>"}`.
//!
//! # The hash chain
//!
//! Entries are numbered `seq` = 1, 2, 3, … with no gaps. Each stores the hash of the entry
//! before it (`prev_hash`; 64 zeros, [`GENESIS_HASH`], for the first) and its own:
//!
//! ```text
//! hash = lowercase_hex(sha256(prev_hash || canonical(entry)))                 without a key
//! hash = lowercase_hex(hmac_sha256(chain_key, prev_hash || canonical(entry)))  with a key
//! chain_key = hkdf_sha256(salt = "qi-host", ikm = master key, info = "qi-host audit chain v1")
//! canonical(entry) = u64be(seq) || u64be(time_ms)
//!                 || field(agent) || field(resource) || field(operation)
//!                 || field(decision) || field(reason) || field(details)
//! field(x) = u64be(byte length of x) || the UTF-8 bytes of x
//! ```
//!
//! `prev_hash` enters as its 64 ASCII hex characters; `decision` as `allow`, `deny` or
//! `record`; `details` as the compact JSON text (`serde_json::to_string`) that the `details`
//! column stores, so verification hashes exactly the stored bytes and never depends on how a
//! JSON value is re-serialized. Every variable-length field is length-prefixed and the
//! fixed-width ones come first, so two different entries never encode to the same bytes.
//!
//! The [`ChainScheme`] is a property of the log, not of the build: a store opened with a master
//! key (`StoreConfig::master_key`) writes HMAC-keyed entries, and the first keyed entry's seq
//! is kept in the `meta` table (`audit.keyed_from`) and in the head file. Entries before it
//! (written before a key was set, including every entry of an older qi-host) stay SHA-256 and
//! verify as such; from it on, every entry must be keyed. A keyed log cannot be opened (or
//! extended) without its key. **Without a master key anyone who can write the database can
//! recompute every hash**; the head file (below) and an external anchor are what catch that.
//!
//! The next `seq` and `prev_hash` are read from the newest row inside the write transaction,
//! so several `AuditLog` handles (or processes) sharing a data directory extend one chain.
//!
//! # The head file, checked on open
//!
//! After every committed batch the writer replaces `<data dir>/audit-head` ([`HEAD_FILE`])
//! atomically (temporary file, fsync, rename) with the newest [`AuditHead`]: seq, hash,
//! scheme and where keying began, and, with a master key, an HMAC-SHA-256 over them under a key
//! derived with info `qi-host audit head v1`, so the file cannot be forged without the key.
//! [`AuditLog::open`] checks the database against it: entry `seq` must exist with that hash,
//! the chain must verify from there to the end, and the keying must agree. A truncated or
//! rewritten tail, a chain recomputed without the key, or a missing or forged head file fails
//! the open with [`AuditError::HeadMismatch`], which names the entry and what was found. The
//! operator looks with `qi-host audit verify` (which opens without the check and reports the
//! mismatch as the break) and, once the change is understood, runs `qi-host audit accept-head`
//! ([`AuditLog::accept_head`]): the chain must verify in full (a modified chain is never
//! accepted), the head file is rewritten from the tail, and an `accept-head` entry by
//! `operator` records what was accepted. An in-memory store has no head file.
//!
//! # What [`AuditLog::verify`] detects
//!
//! It walks the log in seq order, recomputing each hash, and reports the first entry that
//! breaks the chain ([`VerifyReport::first_broken`]); for an intact chain it then checks the
//! head file:
//!
//! - **modified**: an entry's content (or its `hash`) was changed: its hash no longer matches
//!   its content. Re-computing that entry's hash moves the break to the next entry, whose
//!   `prev_hash` no longer matches; recomputing every later hash needs the key (keyed log) and
//!   is caught by the head file either way.
//! - **deleted**: a missing `seq` (the report names the first missing one), or, if the rows
//!   after it were renumbered, a `prev_hash` that is not the previous entry's hash.
//! - **reordered**: rows swapped (by `seq` or by content): the entry now at the earlier place
//!   has a `prev_hash` pointing at an entry that comes after it.
//! - **truncated**: the head file names an entry that is gone.
//! - **edited columns**: a column holding something no writer stores (e.g. a text `time_ms`).
//!
//! What it cannot detect: a log *and* head file both replaced by someone who can write the data
//! directory and, for a keyed log, holds the master key; without a key, anyone who can write
//! the directory. Against that keep the head ([`AuditLog::head`], `qi-host audit head`,
//! printed after every run) somewhere the host cannot write; later, entry `N` must still exist
//! with the anchored hash (`qi-host audit verify --anchor N:HASH`).

mod chain;
mod head;
mod open;
mod read;
mod writer;

#[cfg(test)]
mod tests;

pub(crate) use chain::cap_text;
pub use chain::{
    CHAIN_KEY_INFO, ChainScheme, GENESIS_HASH, HEAD_KEY_INFO, MAX_DETAILS_BYTES, MAX_NAME_BYTES,
    MAX_REASON_BYTES,
};
pub use head::{AuditHead, HEAD_FILE};
pub use open::{AUDIT_BATCH_WINDOW, AuditError, AuditOptions};

use crate::store::{Store, StoreError};
use chain::ChainKeys;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};
use writer::{Health, Queued};

/// Entries that may wait in the queue between [`AuditLog::record`] and the background writer
/// (the default of [`AuditOptions::queue_capacity`]). Past it `record` fails with
/// [`AuditUnavailable::QueueFull`] and the call being recorded is refused.
pub const AUDIT_QUEUE_CAPACITY: usize = 65_536;

/// Why [`AuditLog::record`] could not take an entry. The caller must not go ahead with the
/// action the entry records.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditUnavailable {
    /// [`AUDIT_QUEUE_CAPACITY`] (or the configured capacity) entries are already waiting.
    #[error(
        "the audit queue is full ({capacity} entries waiting to be written): the store is not \
         keeping up; retry later"
    )]
    QueueFull {
        /// The queue's capacity, in entries.
        capacity: usize,
    },
    /// A batch could not be written after its retries; the log accepts nothing more.
    #[error(
        "the audit log stopped accepting entries after a failed write ({reason}); fix the \
         data directory and restart the host"
    )]
    Failed {
        /// What failed.
        reason: Arc<str>,
    },
    /// The background writer is gone (its runtime stopped).
    #[error("the audit log's writer has stopped; restart the host")]
    Stopped,
}

/// What [`AuditLog::status`] reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditStatus {
    /// Entries accepted by `record` since the log was opened.
    pub recorded: u64,
    /// Entries committed by this log's writer.
    pub written: u64,
    /// Store writes (transactions) those entries took: a batch takes what was queued when
    /// the writer ran, after its batch window.
    pub batches: u64,
    /// Entries accepted but never written (queued when a write failed).
    pub lost: u64,
    /// Why the log stopped accepting entries, if it did.
    pub failure: Option<String>,
    /// The head after this log's last committed batch (`None` before its first).
    pub head: Option<AuditHead>,
}

/// What happened to the request an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditDecision {
    /// An access was allowed.
    Allow,
    /// An access was denied.
    Deny,
    /// A lifecycle fact: a spawn, a termination, a trust change, a limit violation, a grant
    /// change.
    Record,
}

impl AuditDecision {
    /// `allow`, `deny` or `record` (as stored and hashed).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditDecision::Allow => "allow",
            AuditDecision::Deny => "deny",
            AuditDecision::Record => "record",
        }
    }
}

impl std::fmt::Display for AuditDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AuditDecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(AuditDecision::Allow),
            "deny" => Ok(AuditDecision::Deny),
            "record" => Ok(AuditDecision::Record),
            other => Err(format!(
                "`{other}` is not a decision; use allow, deny or record"
            )),
        }
    }
}

/// An entry to record; [`AuditLog::record`] adds the time, seq and hashes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewAuditEntry {
    /// Who: the agent id (or `operator`).
    pub agent: String,
    /// On what, e.g. `context/plan`, `file//workspace/a.txt`, `tool/fs.read`.
    pub resource: String,
    /// Doing what, e.g. `read`, `write`, `spawn`, `terminate`.
    pub operation: String,
    /// Allowed, denied, or a lifecycle fact.
    pub decision: AuditDecision,
    /// Why (which rule decided, what limit was hit). Capped at [`MAX_REASON_BYTES`].
    pub reason: String,
    /// Anything else, as JSON. Capped at [`MAX_DETAILS_BYTES`] of compact JSON.
    pub details: serde_json::Value,
}

/// An access decision for [`AuditLog::record_decision`]: the fields of a [`NewAuditEntry`]
/// with `null` details, as shared strings (each capped as `NewAuditEntry`'s are when written).
#[derive(Debug, Clone)]
pub struct SharedDecision {
    /// Who: the agent id.
    pub agent: Arc<str>,
    /// On what, e.g. `context/plan`.
    pub resource: Arc<str>,
    /// Doing what, e.g. `get`.
    pub operation: Arc<str>,
    /// Allowed or denied.
    pub decision: AuditDecision,
    /// Why (which rule decided).
    pub reason: Arc<str>,
}

impl NewAuditEntry {
    /// An entry with `null` details.
    pub fn new(
        agent: impl Into<String>,
        resource: impl Into<String>,
        operation: impl Into<String>,
        decision: AuditDecision,
        reason: impl Into<String>,
    ) -> Self {
        NewAuditEntry {
            agent: agent.into(),
            resource: resource.into(),
            operation: operation.into(),
            decision,
            reason: reason.into(),
            details: serde_json::Value::Null,
        }
    }

    /// Sets the details.
    pub fn details(mut self, v: serde_json::Value) -> Self {
        self.details = v;
        self
    }
}

/// A stored entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Position in the log: 1 for the first entry, then one more for each next.
    pub seq: u64,
    /// When [`AuditLog::record`] was called, in unix milliseconds.
    pub time_ms: u64,
    /// Who.
    pub agent: String,
    /// On what.
    pub resource: String,
    /// Doing what.
    pub operation: String,
    /// Allowed, denied, or a lifecycle fact.
    pub decision: AuditDecision,
    /// Why (as stored: possibly truncated).
    pub reason: String,
    /// Details (as stored: possibly truncated).
    pub details: serde_json::Value,
    /// The previous entry's hash ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// This entry's hash (see the module docs for what it covers).
    pub hash: String,
}

/// Which entries [`AuditLog::query`] returns: every field that is set must match.
///
/// `agent`, `resource` and `operation` are glob patterns (`*`, `?`, `[abc]`, `{a,b}`; `*` also
/// matches `/`), e.g. resource `context/plan*`; a pattern without glob syntax matches exactly
/// (and uses the agent index). `since_ms` and `until_ms` are inclusive unix milliseconds. With
/// `limit`, the newest `limit` matching entries; all of them without. Results are in seq order.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Agent glob.
    pub agent: Option<String>,
    /// Resource glob.
    pub resource: Option<String>,
    /// Operation glob.
    pub operation: Option<String>,
    /// Only this decision.
    pub decision: Option<AuditDecision>,
    /// Recorded at or after this time (unix ms).
    pub since_ms: Option<u64>,
    /// Recorded at or before this time (unix ms).
    pub until_ms: Option<u64>,
    /// At most this many (the newest).
    pub limit: Option<usize>,
}

/// A place in an audit log's queue ([`AuditLog::reserve`]).
pub struct AuditPermit {
    permit: mpsc::OwnedPermit<Queued>,
    log: AuditLog,
}

impl AuditPermit {
    /// Records `entry` in the place taken (this cannot fail for lack of room).
    pub fn record(self, entry: NewAuditEntry) {
        let queued = Queued::Entry {
            time_ms: unix_ms(),
            entry,
        };
        self.permit.send(queued);
        self.log.inner.recorded.fetch_add(1, Ordering::Relaxed);
    }
}

/// The outcome of [`AuditLog::verify`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// Entries that verified, from seq 1 up to the first broken one (all of them when the log
    /// is intact): entry `entries` is the last intact one.
    pub entries: u64,
    /// The first entry that breaks the chain; `None` when the log is intact.
    pub first_broken: Option<BrokenEntry>,
    /// The hash of the last intact entry ([`GENESIS_HASH`] for an empty log). Keep it, with
    /// `entries`, outside the host as an anchor: see the module docs.
    pub last_hash: String,
    /// How entry `entries` was hashed.
    pub scheme: ChainScheme,
    /// The first HMAC-keyed entry, if the log was ever written with a master key.
    pub keyed_from: Option<u64>,
}

impl VerifyReport {
    /// No broken entry.
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// Where and how the chain broke.
#[derive(Debug, Clone, Serialize)]
pub struct BrokenEntry {
    /// The first broken entry (for deleted entries: the first missing seq).
    pub seq: u64,
    /// What is wrong, e.g. `hash does not match its content (modified)`.
    pub problem: String,
}

impl std::fmt::Display for BrokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit log broken at entry {}: {}",
            self.seq, self.problem
        )
    }
}

/// The audit log of a [`Store`]. Cheap to clone; every clone feeds the same queue. The
/// background writer stops once the last clone is dropped and the queue is drained.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    store: Store,
    queue: mpsc::Sender<Queued>,
    capacity: usize,
    recorded: AtomicU64,
    health: Arc<Health>,
    keys: Option<Arc<ChainKeys>>,
    /// Ends the writer's batch window (a flush is waiting).
    flush_now: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("recorded", &self.recorded())
            .field("keyed", &self.inner.keys.is_some())
            .finish()
    }
}

impl AuditLog {
    /// The audit log kept in `store` (its `audit` table), with the default
    /// [`AuditOptions`]: the tail is checked against the head file (see the module docs) and
    /// the background writer starts on the current tokio runtime. Fails with
    /// [`AuditError::HeadMismatch`] when the log does not match its head file.
    pub async fn open(store: Store) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(store, AuditOptions::default()).await
    }

    /// Appends `entry`, stamped with the current time. Never waits: the entry is queued and
    /// written, in call order, by the background writer. `Err` when the queue is full or the
    /// log has failed (see [`AuditUnavailable`]): the caller must then refuse the action the
    /// entry records.
    pub fn record(&self, entry: NewAuditEntry) -> Result<(), AuditUnavailable> {
        self.enqueue(Queued::Entry {
            time_ms: unix_ms(),
            entry,
        })
    }

    /// [`record`](Self::record) for an access decision whose strings the caller keeps
    /// shared (the access gate's memo): queuing it copies no string; the writer does, off the
    /// caller's thread. The entry has `null` details; it fails as `record` does.
    pub fn record_decision(&self, entry: SharedDecision) -> Result<(), AuditUnavailable> {
        self.enqueue(Queued::Decision {
            time_ms: unix_ms(),
            entry,
        })
    }

    fn enqueue(&self, queued: Queued) -> Result<(), AuditUnavailable> {
        let health = &self.inner.health;
        if health.failed.load(Ordering::Acquire) {
            return Err(AuditUnavailable::Failed {
                reason: health.failure().unwrap_or_else(|| Arc::from("unknown")),
            });
        }
        match self.inner.queue.try_send(queued) {
            Ok(()) => {
                self.inner.recorded.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(AuditUnavailable::QueueFull {
                capacity: self.inner.capacity,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AuditUnavailable::Stopped),
        }
    }

    /// Takes a place in the queue for an entry to [`record`](AuditPermit::record) later (once
    /// the change it describes has committed, say), failing as [`record`](Self::record) would
    /// now. Dropping the permit gives the place back.
    pub fn reserve(&self) -> Result<AuditPermit, AuditUnavailable> {
        let health = &self.inner.health;
        if health.failed.load(Ordering::Acquire) {
            return Err(AuditUnavailable::Failed {
                reason: health.failure().unwrap_or_else(|| Arc::from("unknown")),
            });
        }
        match self.inner.queue.clone().try_reserve_owned() {
            Ok(permit) => Ok(AuditPermit {
                permit,
                log: self.clone(),
            }),
            Err(mpsc::error::TrySendError::Full(_)) => Err(AuditUnavailable::QueueFull {
                capacity: self.inner.capacity,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AuditUnavailable::Stopped),
        }
    }

    /// Returns once every entry recorded (through any handle of this log) before the call has
    /// been written and committed, or has failed to be (see [`status`](AuditLog::status)).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        // Ends the writer's batch window (also when the queue is full and the marker must
        // wait for room); a permit left unused only shortens the next window.
        self.inner.flush_now.notify_one();
        if self.inner.queue.send(Queued::Flush(done)).await.is_ok() {
            // Again once the marker is queued: the first signal may have ended a window that
            // closed before the marker arrived, and an entry recorded by another thread in
            // between may have opened the window the marker now waits in.
            self.inner.flush_now.notify_one();
            let _ = wait.await;
        }
    }

    /// Walks the whole log and reports the first entry that breaks the hash chain, and the
    /// hash of the last intact entry; for an intact chain in a data directory, also checks
    /// the head file (a missing, forged or mismatching head file is reported as the break).
    /// Entries still queued are not included; [`flush`](AuditLog::flush) first to include
    /// them.
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let keys = self.inner.keys.clone();
        let mut report = self
            .inner
            .store
            .read(move |conn| read::verify(conn, keys.as_deref()))
            .await?;
        if report.first_broken.is_none()
            && let Err(e) = open::check_head(&self.inner.store, self.inner.keys.as_deref()).await
        {
            report.first_broken = Some(BrokenEntry {
                seq: e.seq(),
                problem: e.problem(),
            });
        }
        Ok(report)
    }

    /// The committed head of the log: the newest entry's seq and hash and its scheme.
    pub async fn head(&self) -> Result<AuditHead, StoreError> {
        self.inner.store.read(read::current_head).await
    }

    /// Whether this log writes HMAC-keyed entries (it was opened with a master key).
    pub fn scheme(&self) -> ChainScheme {
        if self.inner.keys.is_some() {
            ChainScheme::HmacSha256
        } else {
            ChainScheme::Sha256
        }
    }

    /// The stored entries matching `q`, in seq order. Fails with
    /// [`StoreError::InvalidConfig`] (field `agent`, `resource` or `operation`) for an invalid
    /// glob.
    pub async fn query(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let compiled = read::Compiled::new(q)?;
        self.inner
            .store
            .read(move |conn| read::query(conn, compiled))
            .await
    }

    /// The stored entry `seq`, if there is one (e.g. to check an anchor).
    pub async fn entry(&self, seq: u64) -> Result<Option<AuditEntry>, StoreError> {
        self.inner
            .store
            .read(move |conn| read::entry(conn, seq))
            .await
    }

    /// How many entries were accepted through this log (all its clones) since it was opened.
    pub fn recorded(&self) -> u64 {
        self.inner.recorded.load(Ordering::Relaxed)
    }

    /// Accepted, written and lost entries, the failure if any, and the last head written.
    pub fn status(&self) -> AuditStatus {
        let h = &self.inner.health;
        AuditStatus {
            recorded: self.recorded(),
            written: h.written.load(Ordering::Relaxed),
            batches: h.batches.load(Ordering::Relaxed),
            lost: h.lost.load(Ordering::Relaxed),
            failure: h.failure().map(|r| r.to_string()),
            head: h.head.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
