//! The checks the counting filesystem runs before and after delegating to wasmtime-wasi: the
//! file-operation count and access gate, room in the handle table, the quotas and the link
//! rules (see the parent module).

use super::{CountingFs, Fd, links, names, quota};
use crate::error::LimitKind;
use crate::model::ResourceKind;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode;
use wasmtime_wasi::p2::{FsError, FsResult};

impl CountingFs<'_> {
    /// Checks that the resource table has room for one more entry; `insufficient-memory` and a
    /// recorded violation otherwise.
    pub(super) fn room(&mut self, call: &str) -> FsResult<()> {
        match self.inner.table.push(()) {
            Ok(probe) => {
                self.inner.table.delete(probe)?;
                Ok(())
            }
            Err(_) => {
                let max = self.shared.spec.resource_limits.max_open_handles;
                self.shared.record_violation(
                    LimitKind::OpenHandles,
                    max.into(),
                    format!(
                        "{call} refused: the agent already holds {max} handles (descriptors, \
                         streams, sockets, pollables); close some first"
                    ),
                );
                Err(ErrorCode::InsufficientMemory.into())
            }
        }
    }

    /// The file behind `fd` when it may be written (a file on a writable mount).
    pub(super) fn writable_file(&self, fd: &Fd) -> FsResult<Option<Arc<std::fs::File>>> {
        Ok(match self.inner.table.get(fd)? {
            Descriptor::File(f) if !f.perms.write_not_permitted() => Some(f.file.clone()),
            _ => None,
        })
    }

    /// The directory behind `fd` when entries may be created in it (a writable mount).
    pub(super) fn writable_dir(&self, fd: &Fd) -> FsResult<Option<Arc<std::fs::File>>> {
        Ok(match self.inner.table.get(fd)? {
            Descriptor::Dir(d) if !d.perms.write_not_permitted() => Some(d.dir.clone()),
            _ => None,
        })
    }

    /// Refuses a link (counted as an access refusal, not a limit).
    pub(super) fn refuse_link(&self, code: ErrorCode, why: String) -> FsError {
        self.shared
            .counters
            .access_denied
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(agent = %self.shared.id, %why, "link refused");
        code.into()
    }

    /// Checks a symbolic link to `target` at `dest` relative to directory `fd`.
    pub(super) fn check_symlink(&self, fd: &Fd, target: &str, dest: &str) -> FsResult<()> {
        let dir = match self.inner.table.get(fd)? {
            Descriptor::Dir(d) => d.dir.clone(),
            Descriptor::File(_) => return Err(ErrorCode::NotDirectory.into()),
        };
        self.fs
            .check_symlink(
                self.fs.mount_of(fd.rep()),
                links::link_dir(&dir, dest),
                target,
            )
            .map_err(|why| self.refuse_link(ErrorCode::NotPermitted, why))
    }

    /// When `old` (relative to `fd`) is a directory moving to `new` (relative to `new_fd`) at a
    /// shallower depth, checks every link inside it from where it would be.
    pub(super) fn check_moved_dir(
        &self,
        fd: &Fd,
        old: &str,
        new_fd: &Fd,
        new: &str,
    ) -> FsResult<()> {
        let (Descriptor::Dir(from), Descriptor::Dir(to)) =
            (self.inner.table.get(fd)?, self.inner.table.get(new_fd)?)
        else {
            return Ok(());
        };
        let from_dir = from.dir.try_clone().map_err(|e| ErrorCode::from(&e))?;
        let moved = match cap_std::fs::Dir::from_std_file(from_dir).open_dir(old) {
            Ok(moved) => moved,
            // Not a directory, or not there: wasmtime-wasi decides.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotADirectory | std::io::ErrorKind::NotFound
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(ErrorCode::from(&e).into()),
        };
        let Some(new_parent) = links::link_dir(&to.dir, new) else {
            // No such directory to move into: wasmtime-wasi refuses the move.
            return Ok(());
        };
        let old_parent = links::link_dir(&from.dir, old);
        let checked = self
            .fs
            .depth(self.fs.mount_of(fd.rep()), old_parent)
            .and_then(|old_depth| {
                let new_depth = self
                    .fs
                    .depth(self.fs.mount_of(new_fd.rep()), Some(new_parent))?;
                if new_depth >= old_depth {
                    return Ok(());
                }
                // The links inside sit one level below the moved directory.
                let mut left = links::MAX_MOVED_ENTRIES;
                links::check_moved_dir(&moved, new_depth + 1, &mut left)
            });
        checked.map_err(|why| self.refuse_link(ErrorCode::NotPermitted, why))
    }

    /// When `old` (relative to `fd`, guest path `from`) is a directory moving to guest path
    /// `to`, decides `delete` on the name of every entry inside it and `write` on the name it
    /// would have: names are paths, so the move renames them all, and a rule written for what
    /// the directory holds (`secret/**`) must stop it. At most [`links::MAX_MOVED_ENTRIES`]
    /// entries and [`links::MAX_MOVED_DEPTH`] levels, else the move is refused.
    pub(super) fn gate_moved(&self, fd: &Fd, old: &str, from: &str, to: &str) -> FsResult<()> {
        // Without policies every name is allowed: nothing to decide entry by entry.
        let policies = self.shared.access.as_ref().is_some_and(|a| a.enabled());
        let Descriptor::Dir(d) = self.inner.table.get(fd)? else {
            return Ok(());
        };
        if !policies {
            return Ok(());
        }
        let dir =
            cap_std::fs::Dir::from_std_file(d.dir.try_clone().map_err(|e| ErrorCode::from(&e))?);
        let moved = match dir.symlink_metadata(old) {
            Ok(meta) if meta.is_dir() => dir.open_dir(old).map_err(|e| ErrorCode::from(&e))?,
            // Not a directory, or not there: its own name was decided.
            _ => return Ok(()),
        };
        let mut left = links::MAX_MOVED_ENTRIES;
        let mut pending = vec![Vec::<String>::new()];
        while let Some(rel) = pending.pop() {
            let sub;
            let here = if rel.is_empty() {
                &moved
            } else {
                sub = moved
                    .open_dir(rel.join("/"))
                    .map_err(|e| ErrorCode::from(&e))?;
                &sub
            };
            for entry in here.entries().map_err(|e| ErrorCode::from(&e))? {
                let entry = entry.map_err(|e| ErrorCode::from(&e))?;
                left = left.checked_sub(1).ok_or(ErrorCode::Access)?;
                let mut name = rel.clone();
                name.push(entry.file_name().to_string_lossy().into_owned());
                let below = name.join("/");
                self.decide(&format!("{from}/{below}"), "delete")?;
                self.decide(&format!("{to}/{below}"), "write")?;
                let is_dir = entry.file_type().map_err(|e| ErrorCode::from(&e))?.is_dir();
                if is_dir {
                    if name.len() > links::MAX_MOVED_DEPTH {
                        return Err(ErrorCode::Access.into());
                    }
                    pending.push(name);
                }
            }
        }
        Ok(())
    }

    /// Charges the growth to `end` bytes of a writable file (nothing for other descriptors);
    /// settle it with [`settle`](Self::settle) once the operation ran.
    pub(super) fn charge(&self, fd: &Fd, end: u64, what: &str) -> FsResult<Option<Charge>> {
        let Some(file) = self.writable_file(fd)? else {
            return Ok(None);
        };
        let size = quota::file_size(&file)?;
        let growth = end.saturating_sub(size);
        quota::charge_bytes(self.shared, growth, what)?;
        Ok(Some(Charge { file, size, growth }))
    }

    /// Gives back the part of a charge that did not grow the file (a short or failed write).
    pub(super) fn settle(&self, charge: Option<Charge>) {
        if let Some(Charge { file, size, growth }) = charge {
            let grown = quota::file_size(&file).map_or(0, |now| now.saturating_sub(size));
            quota::refund_bytes(self.shared, growth.saturating_sub(grown));
        }
    }

    /// Takes a `maxFilesCreated` unit when `fd` is a writable directory; returns whether one
    /// was taken (give it back with [`quota::refund_file`] if the create fails).
    pub(super) fn take_file(&self, fd: &Fd, what: &str) -> FsResult<bool> {
        if self.writable_dir(fd)?.is_none() {
            return Ok(false);
        }
        quota::take_file(self.shared, what)?;
        Ok(true)
    }

    pub(super) fn count(&self) -> FsResult<()> {
        self.shared
            .counters
            .wasi_calls
            .fetch_add(1, Ordering::Relaxed);
        self.shared
            .take_budget(LimitKind::FileOperations)
            .map_err(|_| FsError::from(ErrorCode::Quota))
    }

    /// Whether calls go through the gate: with policies loaded, and at `monitored` (where
    /// the gate records each allowed call even without policies, and refuses a call it cannot
    /// record); otherwise nothing is resolved or decided.
    fn policed(&self) -> bool {
        self.shared.access.as_ref().is_some_and(|a| a.enabled()) || self.monitored()
    }

    /// The access gate for a path operation: resolves `path` (relative to `fd`, its last
    /// segment followed when `follow`) to the guest path it lands on and decides `action` on
    /// `file/<that path>`; returns the path when policies are loaded. A refusal is `access`;
    /// a path out of the mount `not-permitted` (see [`names`]).
    pub(super) fn gate_at(
        &self,
        fd: &Fd,
        path: &str,
        follow: bool,
        action: &str,
    ) -> FsResult<Option<String>> {
        if !self.policed() {
            return Ok(None);
        }
        let name = self.fs.resolve(fd.rep(), path, follow)?;
        self.decide(&name, action)?;
        Ok(Some(name))
    }

    /// The access gate for an operation on descriptor `fd` itself (its recorded guest path).
    pub(super) fn gate_fd(&self, fd: &Fd, action: &str) -> FsResult<()> {
        if !self.policed() {
            return Ok(());
        }
        let name = self.fs.path_of(fd.rep()).ok_or(ErrorCode::Access)?;
        self.decide(name, action)
    }

    fn decide(&self, path: &str, action: &str) -> FsResult<()> {
        self.shared
            .gate(ResourceKind::File.as_str(), names::file_id(path), action)
            .map_err(|_| FsError::from(ErrorCode::Access))
    }

    /// The gate a new stream on `fd` runs before each of its reads or writes, already
    /// satisfied by the decision just taken on `fd`.
    pub(super) fn stream_gate(&self, fd: &Fd, action: &'static str) -> names::StreamGate {
        let path = self.fs.path_of(fd.rep()).map(str::to_string);
        names::StreamGate::new(self.shared, path, action)
    }

    /// Whether calls are recorded (`monitored`).
    pub(super) fn monitored(&self) -> bool {
        self.shared.grants.monitored
    }

    /// The guest path a call names: `path` relative to `fd` (lexically), or `fd` itself.
    pub(super) fn named(&self, fd: &Fd, path: Option<&str>) -> String {
        match path {
            Some(path) => self.fs.lexical(fd.rep(), path),
            None => self.fs.path_of(fd.rep()).unwrap_or("?").to_string(),
        }
    }

    /// Records a call on a monitored agent (`target` is `None` otherwise).
    pub(super) fn record<T>(
        &self,
        call: &str,
        target: Option<String>,
        start: Instant,
        result: &FsResult<T>,
    ) {
        let Some(target) = target else {
            return;
        };
        let outcome = match result {
            Ok(_) => "ok".to_string(),
            Err(e) => e
                .downcast_ref()
                .map_or_else(|| "error".to_string(), |c: &ErrorCode| c.name().to_string()),
        };
        self.shared.record_call(
            &format!("filesystem.{call}"),
            &names::file_name(&target).to_string(),
            target.len(),
            start,
            &outcome,
        );
    }

    /// Gives back the unit of a create that failed.
    pub(super) fn settle_file<T>(&self, taken: bool, result: &FsResult<T>) {
        if taken && result.is_err() {
            quota::refund_file(self.shared);
        }
    }
}

/// Bytes charged for a write before it ran.
pub(super) struct Charge {
    file: Arc<std::fs::File>,
    size: u64,
    growth: u64,
}
