//! The head file: the last committed `(seq, hash)` of the chain, kept next to the database
//! (`<data dir>/audit-head`) so that a rewritten or truncated tail is caught when the log is
//! opened, without a hand-supplied anchor.
//!
//! The file is JSON, replaced atomically (written to a temporary file, fsynced, renamed over
//! the old one, the directory fsynced) after every committed batch:
//!
//! ```text
//! {"version":1,"seq":42,"hash":"<64 hex>","scheme":"hmac-sha256","keyedFrom":1,"mac":"<64 hex>"}
//! ```
//!
//! `keyedFrom` is the first entry of the keyed (HMAC) part of the chain (`null` when none).
//! With a master key, `mac` is HMAC-SHA-256 under a key derived from it (HKDF-SHA-256, info
//! `qi-host audit head v1`) over `qi-host audit head v1\n{seq}\n{hash}\n{scheme}\n{keyedFrom
//! or "none"}`, so the file cannot be forged either. Without a master key there is no `mac`:
//! anyone who can write the data directory can rewrite both the log and this file; keep an
//! external anchor (`qi-host audit head`) against that.

use super::chain::{ChainKeys, ChainScheme, hmac};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The head file's name inside the data directory.
pub const HEAD_FILE: &str = "audit-head";

/// The newest committed entry of the chain, and how the chain is keyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditHead {
    /// The newest entry's seq (0 for an empty log).
    pub seq: u64,
    /// Its hash ([`GENESIS_HASH`](super::GENESIS_HASH) for an empty log).
    pub hash: String,
    /// How that entry's hash was computed.
    pub scheme: ChainScheme,
    /// The first entry hashed with HMAC-SHA-256 (every later one is too); `None` when the log
    /// has never been written with a master key.
    pub keyed_from: Option<u64>,
}

impl AuditHead {
    /// The scheme of entry `seq` of a log keyed from `keyed_from`.
    pub(crate) fn scheme_of(seq: u64, keyed_from: Option<u64>) -> ChainScheme {
        match keyed_from {
            Some(k) if seq >= k => ChainScheme::HmacSha256,
            _ => ChainScheme::Sha256,
        }
    }
}

impl std::fmt::Display for AuditHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "entry {} hash {} ({})", self.seq, self.hash, self.scheme)?;
        if let Some(k) = self.keyed_from {
            write!(f, ", keyed from entry {k}")?;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeadFile {
    version: u32,
    #[serde(flatten)]
    head: AuditHead,
    mac: Option<String>,
}

fn mac_of(keys: &ChainKeys, head: &AuditHead) -> String {
    let keyed_from = head
        .keyed_from
        .map_or_else(|| "none".to_string(), |k| k.to_string());
    let text = format!(
        "qi-host audit head v1\n{}\n{}\n{}\n{keyed_from}",
        head.seq, head.hash, head.scheme
    );
    hex::encode(hmac(&keys.head, |update| update(text.as_bytes())))
}

/// `<dir>/audit-head`.
pub fn head_path(dir: &Path) -> PathBuf {
    dir.join(HEAD_FILE)
}

/// One head write at a time in this process, and never backwards: several logs (or writer
/// tasks) on one data directory each write the head after their batch.
static WRITING: Mutex<()> = Mutex::new(());

/// Replaces the head file of `dir` with `head` (atomically), unless it already names a newer
/// entry.
pub(crate) fn write(dir: &Path, head: &AuditHead, keys: Option<&ChainKeys>) -> std::io::Result<()> {
    let _one = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let _all = lock_dir(dir)?;
    if let Ok(Some(current)) = read(dir, keys)
        && current.seq > head.seq
    {
        return Ok(());
    }
    replace(dir, head, keys)
}

/// Replaces the head file of `dir` with `head` whatever it named (the operator's
/// `accept-head`).
pub(crate) fn write_replacing(
    dir: &Path,
    head: &AuditHead,
    keys: Option<&ChainKeys>,
) -> std::io::Result<()> {
    let _one = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let _all = lock_dir(dir)?;
    replace(dir, head, keys)
}

/// Takes the exclusive lock of `dir`'s head file (`audit-head.lock`, an advisory `flock`
/// released when the returned file is dropped), so that processes sharing the directory
/// replace the head one at a time: the check that the file names no newer entry and the
/// rename happen together. Under the lock, temporary head files a killed writer left behind are
/// removed (every writer renames its own before releasing the lock).
fn lock_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{HEAD_FILE}.lock")))?;
    lock.lock()?;
    let stale = format!("{HEAD_FILE}.tmp-");
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&stale) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(lock)
}

fn replace(dir: &Path, head: &AuditHead, keys: Option<&ChainKeys>) -> std::io::Result<()> {
    let path = head_path(dir);
    let file = HeadFile {
        version: 1,
        head: head.clone(),
        mac: keys.map(|k| mac_of(k, head)),
    };
    let text = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{HEAD_FILE}.tmp-{}", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    // The rename itself is durable once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The head file of `dir`: `Ok(None)` when there is none; `Err` says why it cannot be trusted
/// (unreadable, malformed, a missing or wrong MAC with a master key, a MAC without one).
pub(crate) fn read(dir: &Path, keys: Option<&ChainKeys>) -> Result<Option<AuditHead>, String> {
    let path = head_path(dir);
    // A head file is under 300 bytes; a huge one is damaged or forged, never read whole.
    let bytes = match crate::bounded_read::read_at_most(&path, 64 * 1024) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let file: HeadFile = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{} is not a head file ({e}): damaged or forged",
            path.display()
        )
    })?;
    if file.version != 1 {
        return Err(format!(
            "{} has version {}; this qi-host writes version 1",
            path.display(),
            file.version
        ));
    }
    match (keys, &file.mac) {
        (Some(k), Some(mac)) if *mac == mac_of(k, &file.head) => {}
        (Some(_), Some(_)) => {
            return Err(format!(
                "the MAC of {} does not verify: the file was forged, or written under another \
                 master key",
                path.display()
            ));
        }
        (Some(_), None) if file.head.keyed_from.is_some() => {
            return Err(format!(
                "{} names a keyed log but carries no MAC: forged",
                path.display()
            ));
        }
        (Some(_), None) => {}
        (None, Some(_)) => {
            return Err(format!(
                "{} was written with a master key; give it (--key-file FILE or \
                 QI_HOST_MASTER_KEY)",
                path.display()
            ));
        }
        (None, None) => {}
    }
    Ok(Some(file.head))
}
