//! [`BlobStore`]: the content-addressed tier for values too large to keep inline in a row.
//!
//! A blob is named by the SHA-256 of its bytes (lowercase hex) and stored as
//! `<data_dir>/blobs/<hash>`. It is written to a temporary file in the same directory,
//! fsynced and renamed into place, so a reader (or a restart after a crash) sees either the
//! whole blob or none of it; writing the same bytes twice is a no-op. Blobs are written
//! before the row that names them commits, so a committed row never points at a missing
//! blob; a write that rolls back can leave an unreferenced blob behind, which is harmless.

use super::StoreError;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The blob tier of a [`Store`](super::Store). Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<BlobInner>,
    /// Data keys, when values are encrypted at rest.
    keys: Option<Arc<super::crypto::Keyring>>,
}

struct BlobInner {
    threshold: usize,
    /// fsync the directory after a rename (power-loss durability of the new name).
    sync_dir: bool,
    backend: Backend,
}

enum Backend {
    Dir(PathBuf),
    /// In-memory stores keep blobs in the process (nothing to clean up on disk).
    Memory(Mutex<HashMap<String, Arc<[u8]>>>),
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("BlobStore");
        s.field("threshold", &self.inner.threshold);
        match &self.inner.backend {
            Backend::Dir(dir) => s.field("dir", dir),
            Backend::Memory(_) => s.field("dir", &"<memory>"),
        };
        s.finish()
    }
}

impl BlobStore {
    /// Blobs under `dir` (created if missing).
    pub(crate) fn open_dir(
        dir: PathBuf,
        threshold: usize,
        sync_dir: bool,
    ) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        Ok(BlobStore {
            inner: Arc::new(BlobInner {
                threshold,
                sync_dir,
                backend: Backend::Dir(dir),
            }),
            keys: None,
        })
    }

    /// Blobs under `dir` for reading only (nothing is created).
    pub(crate) fn read_only_dir(dir: PathBuf, threshold: usize) -> Self {
        BlobStore {
            inner: Arc::new(BlobInner {
                threshold,
                sync_dir: false,
                backend: Backend::Dir(dir),
            }),
            keys: None,
        }
    }

    /// Blobs kept in memory.
    pub(crate) fn in_memory(threshold: usize) -> Self {
        BlobStore {
            inner: Arc::new(BlobInner {
                threshold,
                sync_dir: false,
                backend: Backend::Memory(Mutex::default()),
            }),
            keys: None,
        }
    }

    /// The same blob tier, sealing context values with `keys`.
    pub(crate) fn with_keys(mut self, keys: Arc<super::crypto::Keyring>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The data keys, when values are encrypted at rest.
    pub fn keys(&self) -> Option<&super::crypto::Keyring> {
        self.keys.as_deref()
    }

    /// Encodings larger than this many bytes belong in the blob tier
    /// ([`StoreConfig::blob_threshold`](super::StoreConfig::blob_threshold)).
    pub fn threshold(&self) -> usize {
        self.inner.threshold
    }

    /// The blob directory, or `None` for an in-memory store.
    pub fn dir(&self) -> Option<&Path> {
        match &self.inner.backend {
            Backend::Dir(dir) => Some(dir),
            Backend::Memory(_) => None,
        }
    }

    /// The SHA-256 (lowercase hex) a blob of these bytes is stored under.
    pub fn hash_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Stores `bytes` durably and returns their hash. Idempotent: storing bytes that are
    /// already present does nothing.
    pub fn put(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let hash = Self::hash_of(bytes);
        match &self.inner.backend {
            Backend::Memory(map) => {
                map.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(hash.clone())
                    .or_insert_with(|| Arc::from(bytes));
            }
            Backend::Dir(dir) => {
                let path = dir.join(&hash);
                if path.exists() {
                    return Ok(hash);
                }
                let temp = dir.join(format!(
                    ".tmp-{hash}-{}-{}",
                    std::process::id(),
                    TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
                ));
                let write = || -> std::io::Result<()> {
                    let mut file = fs::File::create(&temp)?;
                    file.write_all(bytes)?;
                    // The rename must not become visible before the content is on disk.
                    file.sync_all()?;
                    fs::rename(&temp, &path)?;
                    if self.inner.sync_dir {
                        fs::File::open(dir)?.sync_all()?;
                    }
                    Ok(())
                };
                if let Err(e) = write() {
                    let _ = fs::remove_file(&temp);
                    return Err(StoreError::io(path, e));
                }
            }
        }
        Ok(hash)
    }

    /// The bytes stored under `hash`, checked against it.
    pub fn get(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        validate_hash(hash)?;
        let bytes = match &self.inner.backend {
            Backend::Memory(map) => map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(hash)
                .map(|b| b.to_vec())
                .ok_or_else(|| StoreError::BlobMissing {
                    hash: hash.to_string(),
                })?,
            Backend::Dir(dir) => {
                let path = dir.join(hash);
                match fs::read(&path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::BlobMissing {
                            hash: hash.to_string(),
                        });
                    }
                    Err(e) => return Err(StoreError::io(path, e)),
                }
            }
        };
        if Self::hash_of(&bytes) != hash {
            return Err(StoreError::BlobCorrupt {
                hash: hash.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Whether a blob with this hash is stored.
    pub fn contains(&self, hash: &str) -> Result<bool, StoreError> {
        validate_hash(hash)?;
        Ok(match &self.inner.backend {
            Backend::Memory(map) => map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(hash),
            Backend::Dir(dir) => dir.join(hash).exists(),
        })
    }
}

impl BlobStore {
    /// Every stored blob's hash, and the paths of temporary files a killed writer left in the
    /// blob directory (in memory: none).
    pub(crate) fn list(&self) -> Result<(Vec<String>, Vec<PathBuf>), StoreError> {
        match &self.inner.backend {
            Backend::Memory(map) => Ok((
                map.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .cloned()
                    .collect(),
                Vec::new(),
            )),
            Backend::Dir(dir) => {
                let (mut hashes, mut temps) = (Vec::new(), Vec::new());
                let entries = match fs::read_dir(dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok((hashes, temps));
                    }
                    Err(e) => return Err(StoreError::io(dir, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| StoreError::io(dir, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if validate_hash(&name).is_ok() {
                        hashes.push(name);
                    } else if name.starts_with(".tmp-") {
                        temps.push(entry.path());
                    }
                }
                Ok((hashes, temps))
            }
        }
    }

    /// Removes the blob `hash` (nothing if it is absent). Only the store's collector calls
    /// this, on the writer thread between transactions, after checking that no row names it.
    pub(crate) fn remove(&self, hash: &str) -> Result<(), StoreError> {
        validate_hash(hash)?;
        match &self.inner.backend {
            Backend::Memory(map) => {
                map.lock().unwrap_or_else(|p| p.into_inner()).remove(hash);
                Ok(())
            }
            Backend::Dir(dir) => remove_file(&dir.join(hash)),
        }
    }
}

/// Removes `path`; a file already gone is fine.
pub(crate) fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Refuses anything but 64 lowercase hex characters, so a value read from the database can
/// never name a path outside the blob directory.
fn validate_hash(hash: &str) -> Result<(), StoreError> {
    if hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(StoreError::InvalidBlobHash(hash.to_string()))
    }
}
