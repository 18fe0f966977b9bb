//! [`StoreConfig`] and [`Durability`].

use std::path::PathBuf;

/// Documents whose MessagePack encoding is larger than this go to the blob tier: 64 KiB.
pub const DEFAULT_BLOB_THRESHOLD: usize = 64 << 10;

/// Most writes one group-commit transaction holds: 1,024.
pub const DEFAULT_MAX_BATCH: usize = 1024;

/// The largest [`StoreConfig::max_batch`]: 65,536 writes per transaction. The writer reserves
/// room for a whole batch up front, and a transaction that large already holds the writer for
/// a second or more; beyond it batching saves nothing measurable (see `benches/storage.rs`).
pub const MAX_BATCH_CEILING: usize = 65_536;

/// The largest [`StoreConfig::checkpoint_pages`]: 1,000,000 pages (about 4 GiB of WAL before
/// a checkpoint, and up to twice that before the writer's backstop), far past any measured
/// gain (SQLite's default is 1,000; `Durability::Process` uses 10,000).
pub const CHECKPOINT_PAGES_CEILING: u32 = 1_000_000;

/// What a successful [`Store::write`](super::Store::write) survives.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: a committed write survives the host process being killed
    /// (`kill -9`, a panic, an OOM kill) because the WAL frames are in the operating system's
    /// page cache before the write is acknowledged; a power loss or kernel crash may lose the
    /// last commits (never corrupt the database). The default.
    #[default]
    Process,
    /// WAL with `synchronous=FULL`: the WAL is fsynced before every acknowledgement, so
    /// committed writes also survive power loss. Each group commit pays one fsync.
    PowerLoss,
}

impl Durability {
    /// The `PRAGMA synchronous` setting this durability uses.
    pub fn synchronous(self) -> &'static str {
        match self {
            Durability::Process => "NORMAL",
            Durability::PowerLoss => "FULL",
        }
    }

    /// The WAL size (in pages) past which this durability checkpoints (the default of
    /// [`StoreConfig::checkpoint_pages`]; SQLite's `wal_autocheckpoint`). `Process`: 10,000
    /// pages (about 40 MiB of WAL between checkpoints). Concurrent writers touch scattered
    /// index pages, and a checkpoint writes each page once however often it changed, so rarer
    /// checkpoints cut the writer's I/O (measured: +35 % commits/s with 64 writers). `PowerLoss`:
    /// SQLite's default 1,000, because there every commit fsyncs the WAL and an fsync that
    /// also has to persist a growing file's new size costs more than the rarer checkpoints save.
    pub fn wal_autocheckpoint(self) -> u32 {
        match self {
            Durability::Process => 10_000,
            Durability::PowerLoss => 1_000,
        }
    }
}

/// Configuration of a [`Store`](super::Store). Every field has a documented default.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding `qi.db` (with its WAL) and `blobs/`; created if missing. `None`
    /// keeps everything in memory (tests): nothing survives the process.
    /// Default: [`StoreConfig::default_data_dir`].
    pub data_dir: Option<PathBuf>,
    /// Documents whose MessagePack encoding is larger than this many bytes are stored in the
    /// content-addressed blob directory instead of inline in their row, which keeps rows (and
    /// so the WAL, page cache and every scan) small. Default [`DEFAULT_BLOB_THRESHOLD`] (64 KiB).
    pub blob_threshold: usize,
    /// What an acknowledged write survives. Default [`Durability::Process`].
    pub durability: Durability,
    /// Most writes one group-commit transaction holds; at least 1. Larger batches amortize the
    /// commit over more writes, smaller ones bound how long one transaction keeps the writer.
    /// Default [`DEFAULT_MAX_BATCH`] (1,024); at most [`MAX_BATCH_CEILING`].
    pub max_batch: usize,
    /// Encrypts context values and event data at rest under this master key (see
    /// [`crypto`](super::crypto)). Never stored. Default: none (plaintext).
    pub master_key: Option<super::crypto::MasterKey>,
    /// WAL pages (4 KiB each) after which the checkpointer thread copies the WAL back into the
    /// database (see `checkpoint.rs`); at least 1, at most [`CHECKPOINT_PAGES_CEILING`].
    /// Default `None`:
    /// [`Durability::wal_autocheckpoint`] of [`durability`](Self::durability).
    pub checkpoint_pages: Option<u32>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: StoreConfig::default_data_dir(),
            blob_threshold: DEFAULT_BLOB_THRESHOLD,
            durability: Durability::default(),
            max_batch: DEFAULT_MAX_BATCH,
            master_key: None,
            checkpoint_pages: None,
        }
    }
}

impl StoreConfig {
    /// An in-memory store with every other field at its default (for tests).
    pub fn in_memory() -> Self {
        StoreConfig {
            data_dir: None,
            ..StoreConfig::default()
        }
    }

    /// [`checkpoint_pages`](Self::checkpoint_pages), or the durability's default.
    pub fn checkpoint_pages(&self) -> u32 {
        self.checkpoint_pages
            .unwrap_or_else(|| self.durability.wal_autocheckpoint())
    }

    /// A store in `data_dir` with every other field at its default.
    pub fn at(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: Some(data_dir.into()),
            ..StoreConfig::default()
        }
    }

    /// The default data directory: `$QI_HOST_DATA_DIR`, else `$XDG_DATA_HOME/qi-host`, else
    /// `~/.local/share/qi-host`; `None` when none of `QI_HOST_DATA_DIR`, `XDG_DATA_HOME` and
    /// `HOME` is set.
    pub fn default_data_dir() -> Option<PathBuf> {
        StoreConfig::data_dir_from(|name| std::env::var_os(name))
    }

    /// [`default_data_dir`](Self::default_data_dir) with the environment as a function (so
    /// the order can be tested without changing the process's variables).
    pub(crate) fn data_dir_from(
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Option<PathBuf> {
        let var = |name| var(name).filter(|d| !d.is_empty());
        if let Some(dir) = var("QI_HOST_DATA_DIR") {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = var("XDG_DATA_HOME") {
            return Some(PathBuf::from(dir).join("qi-host"));
        }
        let home = var("HOME")?;
        Some(PathBuf::from(home).join(".local/share/qi-host"))
    }
}
