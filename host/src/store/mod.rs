//! Durable storage tiers: SQLite (WAL, schema migrations, group commit) and a
//! content-addressed blob directory.
//!
//! ```
//! use qi_host::store::{Store, StoreConfig, StoredDoc};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), qi_host::store::StoreError> {
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = Store::open(StoreConfig::in_memory())?; // or StoreConfig::at("/var/lib/qi")
//! // Returns once the transaction holding this write has committed.
//! store
//!     .write(|ctx| {
//!         // Inline below the blob threshold, else in blobs/<sha256>.
//!         let doc = ctx.store_doc(&json!({"title": "plan", "step": 1}))?;
//!         ctx.tx().execute(
//!             "INSERT INTO versions(context_id, version, revision, agent_id, hlc, op, doc, doc_blob, created_at) \
//!              VALUES ('ctx-1', 1, 1, 'agent-a', '0', 'create', ?1, ?2, 0)",
//!             (doc.doc_column(), doc.blob_column()),
//!         )?;
//!         Ok(())
//!     })
//!     .await?;
//! let blobs = store.blobs().clone();
//! let doc = store
//!     .read(move |conn| {
//!         let stored = conn.query_row(
//!             "SELECT doc, doc_blob FROM versions WHERE context_id = 'ctx-1' AND version = 1",
//!             [],
//!             |row| Ok(StoredDoc::from_row(row, "doc", "doc_blob")),
//!         )??;
//!         stored.expect("a document").load(&blobs)
//!     })
//!     .await?;
//! assert_eq!(doc, json!({"title": "plan", "step": 1}));
//! # Ok(()) })
//! # }
//! ```
//!
//! # Layout
//!
//! A data directory holds `qi.db` (plus its `-wal` and `-shm` files) and `blobs/<sha256>`. The
//! schema is created and upgraded by the migrations in `migrations.rs`, keyed by
//! `PRAGMA user_version`, one transaction each. An authorizer refuses `ATTACH` and `DETACH` on
//! every connection, so no statement can reach another database file.
//!
//! # One owner per data directory
//!
//! [`Store::open`] locks `<data_dir>/lock` ([`LOCK_FILE`], an advisory `flock`) for the store's
//! life and records its [`LockHolder`] there; another process opening the directory fails at
//! once with [`StoreError::Locked`] naming that holder (see [`lock`]). The stores of one
//! process share the lock. [`Store::open_read_only`] takes no lock and has no writer: it reads
//! what the owner has committed, beside it.
//!
//! # Blobs no row names
//!
//! A blob whose last reference a write dropped (a version removed by retention, a document
//! replaced) is removed right after that write's batch commits; blobs left by a crash or a
//! rolled-back write are removed at the next open (see `gc.rs`).
//!
//! # Writes: group commit
//!
//! One dedicated thread commits on the only write connection (which a caller may borrow for
//! its own write while that thread is idle, see "Leader commits"). [`Store::write`] queues a
//! closure and waits (asynchronously) for its answer; the thread drains up to
//! [`max_batch`](StoreConfig::max_batch) queued writes into one `BEGIN IMMEDIATE … COMMIT`,
//! each inside its own `SAVEPOINT`, so a failing write rolls back alone (a write worked out
//! beforehand can skip the savepoint, [`Store::write_self_guarded`]). A write's caller is
//! answered only after `COMMIT` returned, so an `Ok` is durable per [`Durability`]. If the
//! `COMMIT` itself fails, every write of the batch gets an error. Commits are serialized on
//! the one connection, so commit order is a total order, which the event bus uses for its
//! sequence numbers. No lock is held across an await: callers talk to the thread through a
//! channel and a oneshot reply, and a leader holds the connection only while it commits.
//!
//! # Leader commits
//!
//! A write queued with [`WriteMode::may_lead`] ([`Store::write_with`]; context writes use it)
//! is committed by its caller, on the caller's thread, when the writer is idle: nothing is
//! queued, the writer thread sleeps waiting for work, nobody holds the connection, the
//! durability is [`Durability::Process`] (no fsync per commit) and the WAL is under the
//! checkpoint backstop. It runs as a batch of one, with the same savepoint, answer and
//! after-commit rules. A lone writer so skips the two thread hand-offs (to the writer thread
//! and back) that cost about as much as its commit; under load writes queue and share group
//! commits as before.
//!
//! # Checkpoints
//!
//! Commits append to the WAL; copying it back into `qi.db` (a checkpoint, with its fsyncs)
//! runs on a checkpointer thread with its own connection, not inside the writer's commits,
//! once the WAL holds [`StoreConfig::checkpoint_pages`] pages. A commit that leaves more than
//! [`CHECKPOINT_BACKSTOP`] times that checkpoints on the writer thread (a leader's commit
//! leaves it to the writer thread's next one), so the WAL stays bounded under continuous
//! writes. [`Store::checkpoints`] counts them (see `checkpoint.rs`).
//!
//! # Reads
//!
//! [`Store::read`] runs a closure on one of a few read connections on tokio's blocking pool.
//! In WAL mode readers see the last committed state and never block the writer or wait for
//! it. (In-memory stores have no WAL: there a read waits while a batch transaction is open,
//! which is milliseconds unless a write closure itself is slow.)
//!
//! # In-memory mode
//!
//! With `data_dir: None` the database lives in SQLite's `memdb` VFS under a unique name shared
//! by this store's connections, and blobs stay in process memory. Every behaviour except
//! durability and the reader concurrency above is the same. (A `mode=memory&cache=shared`
//! database would make readers fail with `SQLITE_LOCKED` while a write transaction is open,
//! because shared-cache table locks bypass the busy timeout; `memdb` uses ordinary database
//! locks, so readers wait for the busy timeout instead of failing.)

mod blobs;
mod checkpoint;
mod config;
pub mod crypto;
#[cfg(test)]
mod crypto_tests;
mod error;
mod gc;
mod keyring;
pub mod lock;
mod migrations;
mod queue;
mod setup;
mod value;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_checkpoint;
#[cfg(test)]
mod tests_data;
#[cfg(test)]
mod tests_guard;
#[cfg(test)]
mod tests_lead;
#[cfg(test)]
mod tests_owner;

pub use blobs::BlobStore;
pub use checkpoint::{BACKSTOP as CHECKPOINT_BACKSTOP, CheckpointStats};
pub use config::{
    CHECKPOINT_PAGES_CEILING, DEFAULT_BLOB_THRESHOLD, DEFAULT_MAX_BATCH, Durability,
    MAX_BATCH_CEILING, StoreConfig,
};
pub use error::StoreError;
pub use lock::{LOCK_FILE, LockHolder};
pub use value::{StoredDoc, decode_value, encode_value};
pub use writer::{WriteCtx, WriteMode, WriterStats};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use setup::{
    configure_writer, install_authorizer, load_host_id, open_keyring, open_readers,
    seal_plaintext_events,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use writer::{ControlFlag, Job, Shared, Writer};

/// Read connections per store: enough for concurrent catch-ups and queries on a small
/// machine; more would only add memory (each has its own page cache).
pub(crate) const READ_CONNECTIONS: usize = 4;

/// How long a connection waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The database file inside a data directory.
pub const DB_FILE: &str = "qi.db";

/// The file inside a data directory holding the host's id ([`Store::host_id`]).
pub const HOST_ID_FILE: &str = "host-id";

/// The blob directory inside a data directory.
pub const BLOB_DIR: &str = "blobs";

static MEMORY_DB_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The durable store: one SQLite database with a group-commit writer, a read pool and a blob
/// tier. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    config: StoreConfig,
    /// `meta.host_id`: random, created with the database.
    host_id: String,
    /// `<data_dir>/qi.db`, or the `file:/qi-mem-…?vfs=memdb` URI.
    db_path: String,
    blobs: BlobStore,
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    /// The write connection, shared by the writer thread and leading callers.
    shared: Option<Arc<Shared>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Runs the WAL's checkpoints (`None` in memory and read-only).
    checkpointer: Option<checkpoint::Checkpointer>,
    readers: Mutex<Vec<Connection>>,
    read_permits: Arc<tokio::sync::Semaphore>,
    /// The data directory's lock, held for the store's life (`None` in memory and read-only).
    _lock: Option<lock::DirLock>,
    /// Opened by [`Store::open_read_only`]: no writer, no lock.
    read_only: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.inner.db_path)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish its batch and exit.
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            // The last handle can be dropped by an after-commit hook on the writer itself.
            if writer.thread().id() != std::thread::current().id() {
                let _ = writer.join();
            }
        }
        // After the writer: its last commit may have asked for a checkpoint.
        self.checkpointer.take();
    }
}

impl Store {
    /// Opens (creating if needed) the store described by `config`: the data directory, its
    /// `qi.db` in WAL mode with the schema migrated to the newest version, and `blobs/`.
    #[tracing::instrument(name = "qi.store.open", skip_all, fields(data_dir = ?config.data_dir), err(level = "debug"))]
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        if !(1..=MAX_BATCH_CEILING).contains(&config.max_batch) {
            return Err(StoreError::InvalidConfig {
                field: "max_batch",
                message: format!(
                    "is {}; must be from 1 to {MAX_BATCH_CEILING} writes per transaction",
                    config.max_batch
                ),
            });
        }
        if let Some(pages) = config.checkpoint_pages
            && !(1..=CHECKPOINT_PAGES_CEILING).contains(&pages)
        {
            return Err(StoreError::InvalidConfig {
                field: "checkpoint_pages",
                message: format!(
                    "is {pages}; must be from 1 to {CHECKPOINT_PAGES_CEILING} pages (or unset, for the durability's default)"
                ),
            });
        }
        let mut dir_lock = None;
        let (db_path, blobs) = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
                // Before anything reads or migrates: one owner per data directory.
                dir_lock = Some(lock::acquire(dir)?);
                tracing::info!(dir = %dir.display(), pid = std::process::id(), "took the lock of the data directory");
                let blobs = BlobStore::open_dir(
                    dir.join(BLOB_DIR),
                    config.blob_threshold,
                    config.durability == Durability::PowerLoss,
                )?;
                (dir.join(DB_FILE).to_string_lossy().into_owned(), blobs)
            }
            None => (
                format!(
                    "file:/qi-mem-{}-{}?vfs=memdb",
                    std::process::id(),
                    MEMORY_DB_COUNTER.fetch_add(1, Ordering::Relaxed)
                ),
                BlobStore::in_memory(config.blob_threshold),
            ),
        };
        let open_err = |source| StoreError::Open {
            path: db_path.clone(),
            source,
        };

        let mut conn =
            Connection::open_with_flags(&db_path, OpenFlags::default()).map_err(open_err)?;
        configure_writer(&conn, &config).map_err(|e| match e {
            StoreError::Sqlite(source) => open_err(source),
            other => other,
        })?;
        migrations::migrate(&mut conn)?;
        let blobs = open_keyring(&conn, &config, blobs)?;
        if let Some(keys) = blobs.keys() {
            seal_plaintext_events(&mut conn, keys)?;
        }
        let host_id = load_host_id(config.data_dir.as_deref(), true)?;
        // Blobs a crash or a rolled-back write left behind; later ones go after each commit.
        // Not when another store of this process holds the lock: its writes in flight have
        // their blobs on disk before their rows commit.
        if dir_lock.as_ref().is_none_or(lock::DirLock::taken) {
            gc::sweep_all(&conn, &blobs)?;
        }
        gc::install(&conn).map_err(open_err)?;
        let control: ControlFlag = Arc::new(AtomicBool::new(false));
        install_authorizer(&mut conn, Some(control.clone())).map_err(open_err)?;

        let readers = open_readers(&db_path, true)?;
        let checkpointer = match &config.data_dir {
            Some(_) => Some(checkpoint::Checkpointer::start(
                &db_path,
                &mut conn,
                config.checkpoint_pages(),
            )?),
            None => None,
        };

        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        // A caller may commit its own write only where a commit does not wait for an fsync
        // (it would hold the caller's thread, an async runtime's worker, for it).
        let leading = config.durability == Durability::Process;
        let shared = Arc::new(Shared::new(conn, control, blobs.clone(), leading));
        let writer = Writer {
            shared: shared.clone(),
            max_batch: config.max_batch,
        };
        let writer = std::thread::Builder::new()
            .name("qi-store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| StoreError::io(PathBuf::from(&db_path), e))?;

        Ok(Store {
            inner: Arc::new(StoreInner {
                config,
                host_id,
                db_path,
                blobs,
                jobs: Some(jobs),
                shared: Some(shared),
                writer: Some(writer),
                checkpointer,
                readers: Mutex::new(readers),
                read_permits: Arc::new(tokio::sync::Semaphore::new(READ_CONNECTIONS)),
                _lock: dir_lock,
                read_only: false,
            }),
        })
    }

    /// Opens the existing data directory of `config` for reading only, beside the host that
    /// may own it: no lock is taken, nothing is migrated, sealed or created, and there is no
    /// writer: [`write`](Self::write) fails with [`StoreError::ReadOnly`] naming the owner.
    /// Reads see what the owner has committed, as of each read. Fails with
    /// [`StoreError::InvalidConfig`] (`data_dir`) for an in-memory configuration or a
    /// directory without a `qi.db`, [`StoreError::SchemaTooOld`] for a database this build
    /// would have to migrate first (open it once with [`open`](Self::open)), and
    /// [`StoreError::SchemaTooNew`] for one written by a newer qi-host.
    #[tracing::instrument(name = "qi.store.open_read_only", skip_all, fields(data_dir = ?config.data_dir), err(level = "debug"))]
    pub fn open_read_only(config: StoreConfig) -> Result<Store, StoreError> {
        let Some(dir) = config.data_dir.clone() else {
            return Err(StoreError::InvalidConfig {
                field: "data_dir",
                message: "a read-only store needs a data directory".into(),
            });
        };
        let db = dir.join(DB_FILE);
        if !db.is_file() {
            return Err(StoreError::InvalidConfig {
                field: "data_dir",
                message: format!(
                    "`{}` holds no qi-host data (no {DB_FILE}); pass the right --data-dir",
                    dir.display()
                ),
            });
        }
        let db_path = db.to_string_lossy().into_owned();
        let readers = open_readers(&db_path, false)?;
        let found: u32 = readers[0].pragma_query_value(None, "user_version", |row| row.get(0))?;
        let supported = migrations::latest_version();
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        if found < supported {
            return Err(StoreError::SchemaTooOld { found, supported });
        }
        let blobs = BlobStore::read_only_dir(dir.join(BLOB_DIR), config.blob_threshold);
        let blobs = open_keyring(&readers[0], &config, blobs)?;
        let host_id = load_host_id(Some(&dir), false)?;
        Ok(Store {
            inner: Arc::new(StoreInner {
                config,
                host_id,
                db_path,
                blobs,
                jobs: None,
                shared: None,
                writer: None,
                checkpointer: None,
                readers: Mutex::new(readers),
                read_permits: Arc::new(tokio::sync::Semaphore::new(READ_CONNECTIONS)),
                _lock: None,
                read_only: true,
            }),
        })
    }

    /// Whether this store was opened with [`open_read_only`](Self::open_read_only).
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// This host's id: 32 random hex characters created with the data directory and kept in
    /// its [`HOST_ID_FILE`], so it is stable across restarts of the same data directory and differs
    /// between data directories (an in-memory store gets a fresh one). The audience of
    /// identity challenges ([`crate::security::identity`]).
    pub fn host_id(&self) -> &str {
        &self.inner.host_id
    }

    /// The configuration this store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The data directory, or `None` for an in-memory store.
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.config.data_dir.as_deref()
    }

    /// The blob tier.
    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// How many WAL checkpoints have run, and where (see `checkpoint.rs`); `None` for an
    /// in-memory or read-only store, which never checkpoints. The receiver sees every update.
    pub fn checkpoints(&self) -> Option<tokio::sync::watch::Receiver<CheckpointStats>> {
        self.inner.checkpointer.as_ref().map(|c| c.stats())
    }

    /// How writes reached the database so far: led by their callers or batched by the writer
    /// thread (see "Leader commits" above). `None` for a read-only store.
    pub fn writer_stats(&self) -> Option<WriterStats> {
        self.inner.shared.as_ref().map(|s| s.stats())
    }

    /// Returns once the writer thread sleeps waiting for work (after a batch it polls a
    /// moment for a follow-up write, and a write issued meanwhile joins its next batch
    /// instead of leading). Tests only; fails after 30 s rather than hang.
    #[cfg(test)]
    pub(crate) fn wait_writer_idle(&self) {
        let shared = self.inner.shared.as_ref().expect("a writer");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !shared.writer_idle() {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer thread never went idle"
            );
            std::thread::yield_now();
        }
    }

    /// The schema version this build migrates databases to.
    pub fn schema_version() -> u32 {
        migrations::latest_version()
    }

    /// Runs `f` on a read connection (tokio's blocking pool) and returns its result. Readers
    /// see the last committed state; in WAL mode they never block the writer. The connection
    /// refuses writes (`PRAGMA query_only`).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .inner
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .ok_or(StoreError::Closed)?;
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&conn)));
            if !conn.is_autocommit() {
                // A closure that opened a transaction and returned (or panicked) inside it.
                let _ = conn.execute_batch("ROLLBACK");
            }
            inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            result.unwrap_or_else(|payload| Err(StoreError::panicked(payload)))
        })
        .await
        .map_err(|e| StoreError::OpPanicked {
            message: e.to_string(),
        })?
    }

    /// Runs `PRAGMA integrity_check` and fails with [`StoreError::IntegrityCheck`] listing
    /// every problem it reports.
    pub async fn integrity_check(&self) -> Result<(), StoreError> {
        let problems: Vec<String> = self
            .read(|conn| {
                let mut stmt = conn.prepare("PRAGMA integrity_check")?;
                let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        if problems.len() == 1 && problems[0] == "ok" {
            Ok(())
        } else {
            Err(StoreError::IntegrityCheck {
                report: problems.join("\n"),
            })
        }
    }
}
