//! [`StoreError`]: every way the storage tiers can fail.

use std::path::PathBuf;
use std::sync::Arc;

/// A failure of the durable store: SQLite, the blob directory, value encoding or the writer.
///
/// Every variant's message says what went wrong and, where there is one, what to do about it.
/// Converts into [`crate::Error::System`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A [`StoreConfig`](super::StoreConfig) field is unusable.
    #[error("invalid store configuration `{field}`: {message}")]
    InvalidConfig {
        /// The field, e.g. `max_batch`.
        field: &'static str,
        /// What is allowed.
        message: String,
    },
    /// The database file could not be opened or configured.
    #[error(
        "cannot open the database `{path}`: {source}; check that the data directory is writable \
         or point QI_HOST_DATA_DIR at another one"
    )]
    Open {
        /// The database path (or in-memory URI).
        path: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite refused to put the database in WAL mode (a network or read-only file system).
    #[error(
        "the database cannot use WAL mode (journal_mode stayed `{mode}`); put the data \
         directory on a local, writable file system"
    )]
    WalUnavailable {
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The database was written by a newer qi-host whose schema this build does not know.
    #[error(
        "the database is at schema version {found} but this qi-host knows versions up to \
         {supported}; upgrade qi-host or use another data directory"
    )]
    SchemaTooNew {
        /// `PRAGMA user_version` found in the file.
        found: u32,
        /// The newest migration this build has.
        supported: u32,
    },
    /// A schema migration failed and was rolled back; the database is still at `version - 1`.
    #[error("schema migration {version} failed and was rolled back: {source}")]
    Migration {
        /// The migration that failed.
        version: u32,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The COMMIT of a group-commit batch failed; nothing in the batch was saved, so retrying
    /// the write is safe.
    #[error(
        "the transaction holding this write failed to commit ({source}); it was not saved, retry it"
    )]
    Commit {
        /// SQLite's error, shared by every write of the batch.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The whole batch transaction was rolled back while a later write of the same batch ran:
    /// by SQLite (for example on a full disk or an I/O error), or by the writer when a write
    /// queued with [`Store::write_self_guarded`](super::Store::write_self_guarded) failed
    /// after changing rows it could not undo alone. This write was not saved; retry it.
    #[error(
        "the transaction holding this write was rolled back ({cause}); it was not saved, retry it"
    )]
    TransactionAborted {
        /// What the write that triggered the rollback reported.
        cause: String,
    },
    /// A write or read closure panicked; its changes were rolled back.
    #[error("a store operation panicked and was rolled back: {message}")]
    OpPanicked {
        /// The panic payload, if it was a string.
        message: String,
    },
    /// A file in the data directory could not be read or written.
    #[error("I/O error on `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A value could not be encoded as MessagePack.
    #[error("cannot encode a value as MessagePack: {0}")]
    Encode(String),
    /// Stored bytes are not a valid MessagePack value (the row or blob is damaged).
    #[error("cannot decode a stored MessagePack value: {0}; the row or blob is damaged")]
    Decode(String),
    /// A row names a blob that the blob directory does not hold.
    #[error(
        "blob `{hash}` is referenced by the database but missing from the blob directory; restore the data directory from a backup"
    )]
    BlobMissing {
        /// SHA-256 (hex) of the blob.
        hash: String,
    },
    /// A blob's content no longer matches its SHA-256 name.
    #[error(
        "blob `{hash}` is damaged (its content does not match its hash); restore it from a backup"
    )]
    BlobCorrupt {
        /// SHA-256 (hex) the blob is stored under.
        hash: String,
    },
    /// A blob reference is not a 64-character lowercase hex SHA-256.
    #[error("`{0}` is not a blob reference (expected 64 lowercase hex characters)")]
    InvalidBlobHash(String),
    /// A row's document columns are inconsistent (both `doc` and `doc_blob` set).
    #[error("corrupt row: {0}")]
    CorruptRow(String),
    /// `PRAGMA integrity_check` reported problems.
    #[error(
        "the database failed its integrity check: {report}; restore the data directory from a backup"
    )]
    IntegrityCheck {
        /// SQLite's report, one problem per line.
        report: String,
    },
    /// Another process owns the data directory (see [`lock`](super::lock)).
    #[error(
        "{} owns the data directory `{}`; wait for it to finish or stop it (`kill PID`), or pass \
         another --data-dir; read-only commands (context list/get/history/conflicts, events \
         tail, audit head/verify/query) work beside it",
        super::lock::describe(holder),
        dir.display()
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// What the lock file says about its holder (`None` while it is still writing it).
        holder: Option<super::lock::LockHolder>,
    },
    /// A write on a store opened with [`Store::open_read_only`](super::Store::open_read_only).
    #[error(
        "this data directory was opened read-only ({}); a writing command needs the directory \
         to itself: wait for its owner to finish or stop it, then retry",
        match holder {
            Some(h) => format!("a host ({h}) owns it"),
            None => "no host recorded in its lock file".to_string(),
        }
    )]
    ReadOnly {
        /// What the lock file said about its holder when the write was refused.
        holder: Option<super::lock::LockHolder>,
    },
    /// A read-only open found a database this build would have to migrate first.
    #[error(
        "the database is at schema version {found}, older than this qi-host's {supported}; \
         run a host on the data directory once (e.g. `qi-host run-agent … --data-dir DIR`) to \
         upgrade it, then retry"
    )]
    SchemaTooOld {
        /// `PRAGMA user_version` found in the file.
        found: u32,
        /// The schema version this build reads.
        supported: u32,
    },
    /// The store's writer thread has stopped (the store is shutting down or it crashed).
    #[error("the store is closed (its writer thread has stopped); open the store again")]
    Closed,
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn panicked(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_string()
        };
        StoreError::OpPanicked { message }
    }
}

impl From<StoreError> for crate::Error {
    fn from(error: StoreError) -> Self {
        crate::Error::System(anyhow::Error::new(error))
    }
}
