//! One owner per data directory: the exclusive lock `<data_dir>/lock` ([`LOCK_FILE`]).
//!
//! [`Store::open`](super::Store::open) takes an advisory `flock` on the lock file, and one on
//! the directory itself (so that removing the lock file lets no second host in), for the
//! store's whole life and writes its [`LockHolder`] (pid, command line, since when) into it. A
//! second writer on the same directory (another `qi-host run`, `run-agent`, or a writing CLI
//! command) fails at once with [`StoreError::Locked`](super::StoreError::Locked), which names
//! the holder. The stores of one process share its lock: the owner is a process. The kernel
//! releases a `flock` when its process dies, however it dies, so a lock left by a killed host
//! is taken over by the next open without any clean-up. Read-only opens
//! ([`Store::open_read_only`](super::Store::open_read_only)) never take the lock.

use super::StoreError;
use std::fs::{File, OpenOptions};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// The lock file inside a data directory.
pub const LOCK_FILE: &str = "lock";

/// The largest lock file read back (a holder record is about a hundred bytes plus its command
/// line).
const MAX_LOCK_FILE: usize = 16 << 10;

/// Who owns a data directory: what the owner wrote into [`LOCK_FILE`] when it took the lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockHolder {
    /// The owning process's id.
    pub pid: u32,
    /// Its command line, arguments separated by spaces.
    pub command: String,
    /// When it took the lock, unix milliseconds.
    pub since_ms: u64,
}

impl LockHolder {
    /// This process, now.
    fn current() -> LockHolder {
        let command: Vec<String> = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        LockHolder {
            pid: std::process::id(),
            command: command.join(" "),
            since_ms: now_ms(),
        }
    }
}

impl std::fmt::Display for LockHolder {
    /// `pid 4242, `qi-host run task.toml`, since 2026-11-30 13:45:12 UTC`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {}, `{}`, since {}",
            self.pid,
            self.command,
            utc(self.since_ms)
        )
    }
}

/// Data directories (canonical paths) locked by this process, with the one open lock file
/// each: the stores of one process share it (the process is the owner).
static HELD: Mutex<Vec<(PathBuf, Weak<Held>)>> = Mutex::new(Vec::new());

/// What a process holds while it owns a directory: the locked lock file and the locked
/// directory itself. The directory's lock still keeps a second host out when the lock file is
/// removed (taken for a stale pid file) while the owner runs: a new lock file would be a new,
/// unlocked inode.
#[derive(Debug)]
struct Held {
    _file: File,
    _dir: File,
}

/// The held lock; released when the last store of this process holding it is dropped (or
/// when the process dies).
#[derive(Debug)]
pub(crate) struct DirLock {
    file: Option<Arc<Held>>,
    /// This open took the lock; `false` when another store of this process already held it
    /// (and may be writing: its blobs can be on disk before their rows commit).
    taken: bool,
}

impl DirLock {
    /// Whether this open took the lock, rather than sharing one another store of this process
    /// holds: only then is no write of the directory in flight.
    pub(crate) fn taken(&self) -> bool {
        self.taken
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closed under the registry's mutex, so an open racing with this drop either shares
        // the file or finds it closed (and the flock released), never half-released.
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.file.take());
        held.retain(|(_, file)| file.strong_count() > 0);
    }
}

/// Takes the exclusive lock of `dir` without waiting, and records this process as its holder.
/// Fails with [`StoreError::Locked`] naming the current holder when another process holds it.
/// Stores of this same process share the lock (a restart in one process may open the new
/// store while a background task still drops the old one).
pub(crate) fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
    let path = dir.join(LOCK_FILE);
    let key = std::fs::canonicalize(dir).map_err(|e| StoreError::io(dir, e))?;
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(file) = held
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, f)| f.upgrade())
    {
        return Ok(DirLock {
            file: Some(file),
            taken: false,
        });
    }
    // Never through a symbolic link: a link planted as the lock file would make the host
    // truncate and overwrite (or create) whatever file it names.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => StoreError::io(
                &path,
                std::io::Error::other(
                    "the lock file is a symbolic link; remove it (the host makes its own)",
                ),
            ),
            _ => StoreError::io(&path, e),
        })?;
    let dir_file = File::open(dir).map_err(|e| StoreError::io(dir, e))?;
    for (locked, at) in [(&dir_file, dir), (&file, path.as_path())] {
        match locked.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                    holder: read_holder(dir),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io(at, e)),
        }
    }
    let record = serde_json::to_string(&LockHolder::current())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    let write = |mut file: &File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(record.as_bytes())?;
        file.write_all(b"\n")
    };
    write(&file).map_err(|e| StoreError::io(&path, e))?;
    let file = Arc::new(Held {
        _file: file,
        _dir: dir_file,
    });
    held.retain(|(_, f)| f.strong_count() > 0);
    held.push((key, Arc::downgrade(&file)));
    Ok(DirLock {
        file: Some(file),
        taken: true,
    })
}

/// What the lock file of `dir` says about its holder, without taking the lock: `None` when
/// the file is missing, empty (its holder is still writing it) or unreadable. The record may
/// be stale when its process has died (the lock itself is then free).
pub fn read_holder(dir: &Path) -> Option<LockHolder> {
    let bytes = crate::bounded_read::read_at_most(&dir.join(LOCK_FILE), MAX_LOCK_FILE).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The message part naming the holder: `a host (pid …, `…`, since …)`.
pub(crate) fn describe(holder: &Option<LockHolder>) -> String {
    match holder {
        Some(h) => format!("a host ({h})"),
        None => "another process (it has not recorded its pid yet)".to_string(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM:SS UTC` for unix milliseconds (the proleptic Gregorian calendar; days
/// to a civil date by Howard Hinnant's `civil_from_days`).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.
        assert_eq!(utc(951_827_696_000), "2000-02-29 12:34:56 UTC");
        assert_eq!(utc(1_798_761_599_999), "2026-12-31 23:59:59 UTC");
    }

    #[test]
    fn stores_of_one_process_share_the_lock_until_the_last_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path()).unwrap();
        let second = acquire(dir.path()).expect("the same process shares its lock");
        let holder = read_holder(dir.path()).expect("the holder recorded itself");
        assert_eq!(holder.pid, std::process::id());
        assert!(holder.since_ms > 0);
        // Another open file description (what another process has) is refused while either
        // store holds it.
        let probe = || {
            let f = File::open(dir.path().join(LOCK_FILE)).unwrap();
            matches!(f.try_lock(), Ok(()))
        };
        drop(first);
        assert!(!probe(), "still held by the second store");
        drop(second);
        assert!(probe(), "released with the last store");
    }
}
