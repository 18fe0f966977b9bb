//! Disk and file-count quotas on writable mounts, and the counted file streams.
//!
//! - **Bytes** (`resourceLimits.maxDiskBytes`): every write, stream write and `set-size` is
//!   charged the growth of the file's logical size it causes, measured against the file's size
//!   on disk just before (so overwriting bytes that already exist is free, and a 1-byte write at
//!   offset 1 GiB is charged ~1 GiB, sparse or not). Shrinking a file (truncation, `set-size`
//!   down, unlink) gives nothing back: the quota bounds what the agent may add during its run,
//!   so writing, truncating and writing again is charged twice. Past the quota the call fails
//!   with `insufficient-space` (ENOSPC) and nothing is written.
//! - **Files** (`resourceLimits.maxFilesCreated`): each file created by `open-at` with `create`
//!   (also through a dangling symbolic link, when `symlink-follow` is set), each directory,
//!   symbolic link and hard link takes one unit; past it the call fails with `quota` (EDQUOT).
//!   A create that fails gives its unit back.
//! - **Tools**: the `fs.write` tool charges the same quotas (through
//!   [`crate::tools::DiskQuota`]): all the bytes it writes, and a unit when the file is new;
//!   past them it fails with `limit-exceeded` before touching the file.
//! - **Stream calls** (`resourceLimits.maxFileOperations`): every `read`, `blocking-read`,
//!   `skip`, `write` and `blocking-write-and-flush` on a stream from `read-via-stream`,
//!   `write-via-stream` or `append-via-stream` is one file operation (the stream's creation is
//!   another); past the budget the call fails with `last-operation-failed`, whose
//!   `filesystem-error-code` is `quota`.
//!
//! Every refusal records the limit on the agent, so its report names it.

use super::names::StreamGate;
use crate::error::LimitKind;
use crate::sandbox::AgentShared;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode;
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, InputStream, OutputStream, Pollable, StreamError, StreamResult,
};

/// Takes one unit of `maxFilesCreated`; `quota` past it.
pub(crate) fn take_file(shared: &AgentShared, what: &str) -> Result<(), ErrorCode> {
    let max = u64::from(shared.spec.resource_limits.max_files_created);
    let counter = &shared.counters.files_created;
    if let Err(before) = take(counter, 1, max) {
        let used = before + 1;
        shared.record_violation(
            LimitKind::FilesCreated,
            max,
            format!(
                "{what} refused: it would be entry {used}, and the agent may create {max} files, \
                 directories and links"
            ),
        );
        return Err(ErrorCode::Quota);
    }
    Ok(())
}

/// Adds `n` to `counter` unless that would pass `max` (or overflow); `Err` holds the count
/// before. One atomic step, so the counter never holds a value past `max`, even for a moment
/// (a guest's `set-size` to 2^64 - 1 must not wrap it) and concurrent charges near the limit
/// cannot refuse each other.
fn take(counter: &std::sync::atomic::AtomicU64, n: u64, max: u64) -> Result<u64, u64> {
    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
        used.checked_add(n).filter(|&u| u <= max)
    })
}

/// Gives back a unit taken by a create that failed.
pub(crate) fn refund_file(shared: &AgentShared) {
    shared
        .counters
        .files_created
        .fetch_sub(1, Ordering::Relaxed);
}

/// Charges `growth` bytes against `maxDiskBytes`; `insufficient-space` past it.
pub(crate) fn charge_bytes(shared: &AgentShared, growth: u64, what: &str) -> Result<(), ErrorCode> {
    if growth == 0 {
        return Ok(());
    }
    let max = shared.spec.resource_limits.max_disk_bytes;
    let counter = &shared.counters.disk_bytes;
    if let Err(before) = take(counter, growth, max) {
        let used = before.saturating_add(growth);
        shared.record_violation(
            LimitKind::DiskBytes,
            max,
            format!(
                "{what} refused: it would grow the agent's files by {growth} bytes to {used}, and \
                 the agent may add {max} bytes"
            ),
        );
        return Err(ErrorCode::InsufficientSpace);
    }
    Ok(())
}

/// Gives back bytes charged for growth that did not happen (a short or failed write).
pub(crate) fn refund_bytes(shared: &AgentShared, bytes: u64) {
    if bytes > 0 {
        shared
            .counters
            .disk_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The size of `file` on disk now.
pub(super) fn file_size(file: &std::fs::File) -> Result<u64, ErrorCode> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| ErrorCode::from(&e))
}

/// The error a stream call gets past a quota: an `io::Error` with the matching errno, which
/// `filesystem-error-code` turns back into `code`.
fn stream_refusal(code: ErrorCode) -> StreamError {
    let errno = match code {
        ErrorCode::InsufficientSpace => rustix::io::Errno::NOSPC,
        ErrorCode::Access => rustix::io::Errno::ACCESS,
        _ => rustix::io::Errno::DQUOT,
    };
    StreamError::LastOperationFailed(wasmtime::Error::from(std::io::Error::from_raw_os_error(
        errno.raw_os_error(),
    )))
}

/// The `filesystem-error-code` of a stream error raised by [`stream_refusal`] (EDQUOT has no
/// mapping in wasmtime-wasi; ENOSPC has).
pub(super) fn quota_error_code(err: &wasmtime::Error) -> Option<ErrorCode> {
    let io = err.downcast_ref::<std::io::Error>()?;
    (io.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error())).then_some(ErrorCode::Quota)
}

fn count(shared: &AgentShared) -> StreamResult<()> {
    shared.counters.wasi_calls.fetch_add(1, Ordering::Relaxed);
    shared
        .take_budget(LimitKind::FileOperations)
        .map_err(|_| stream_refusal(ErrorCode::Quota))
}

/// Counts one call on a file stream and runs its access gate.
fn admit(shared: &AgentShared, gate: &mut StreamGate) -> StreamResult<()> {
    count(shared)?;
    gate.check(shared)
        .map_err(|()| stream_refusal(ErrorCode::Access))
}

/// A file input stream whose every read counts as a file operation and passes its gate.
pub(super) struct CountedInput {
    pub(super) inner: DynInputStream,
    pub(super) shared: Arc<AgentShared>,
    pub(super) gate: StreamGate,
}

#[wasmtime_wasi::async_trait]
impl Pollable for CountedInput {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for CountedInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        admit(&self.shared, &mut self.gate)?;
        self.inner.read(size)
    }

    async fn blocking_read(&mut self, size: usize) -> StreamResult<Bytes> {
        admit(&self.shared, &mut self.gate)?;
        self.inner.blocking_read(size).await
    }

    fn skip(&mut self, nelem: usize) -> StreamResult<usize> {
        admit(&self.shared, &mut self.gate)?;
        self.inner.skip(nelem)
    }

    async fn blocking_skip(&mut self, nelem: usize) -> StreamResult<usize> {
        admit(&self.shared, &mut self.gate)?;
        self.inner.blocking_skip(nelem).await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// Where a counted output stream writes.
#[derive(Debug, Clone, Copy)]
pub(super) enum WriteAt {
    /// At this offset, advancing with each write (`write-via-stream`).
    Offset(u64),
    /// At the end of the file (`append-via-stream`).
    End,
}

/// A file output stream whose every write counts as a file operation, passes its gate and is
/// charged its growth of the file's logical size (only when the file is on a writable mount:
/// otherwise wasmtime-wasi refused to create the stream).
pub(super) struct CountedOutput {
    pub(super) inner: DynOutputStream,
    pub(super) shared: Arc<AgentShared>,
    pub(super) file: Arc<std::fs::File>,
    pub(super) at: WriteAt,
    pub(super) gate: StreamGate,
}

impl CountedOutput {
    /// Counts the call and charges the growth `len` bytes cause; returns the charge.
    fn admit(&mut self, len: u64) -> StreamResult<u64> {
        admit(&self.shared, &mut self.gate)?;
        let size = file_size(&self.file).map_err(stream_refusal)?;
        let start = match self.at {
            WriteAt::Offset(p) => p,
            WriteAt::End => size,
        };
        let growth = start.saturating_add(len).saturating_sub(size);
        charge_bytes(&self.shared, growth, "stream write").map_err(stream_refusal)?;
        if let WriteAt::Offset(p) = &mut self.at {
            *p = p.saturating_add(len);
        }
        Ok(growth)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CountedOutput {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CountedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        // `check-write` said the previous write finished, so the size on disk is current.
        let charged = self.admit(bytes.len() as u64)?;
        self.inner.write(bytes).inspect_err(|_| {
            refund_bytes(&self.shared, charged);
        })
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        // Let an earlier non-blocking write land first, so the size on disk is current.
        self.inner.ready().await;
        let charged = self.admit(bytes.len() as u64)?;
        let result = self.inner.blocking_write_and_flush(bytes).await;
        if result.is_err() {
            refund_bytes(&self.shared, charged);
        }
        result
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// The file tools' view of the same quotas (see [`crate::tools::DiskQuota`]).
impl crate::tools::DiskQuota for AgentShared {
    fn charge_bytes(&self, bytes: u64, what: &str) -> Result<(), String> {
        charge_bytes(self, bytes, what).map_err(|_| self.refusal(LimitKind::DiskBytes, what))
    }

    fn refund_bytes(&self, bytes: u64) {
        refund_bytes(self, bytes);
    }

    fn take_file(&self, what: &str) -> Result<(), String> {
        take_file(self, what).map_err(|_| self.refusal(LimitKind::FilesCreated, what))
    }

    fn refund_file(&self) {
        refund_file(self);
    }
}

impl AgentShared {
    /// What a tool says when `limit` refused `what`.
    fn refusal(&self, limit: LimitKind, what: &str) -> String {
        let max = match limit {
            LimitKind::DiskBytes => self.spec.resource_limits.max_disk_bytes,
            _ => u64::from(self.spec.resource_limits.max_files_created),
        };
        let field = match limit {
            LimitKind::DiskBytes => "resourceLimits.maxDiskBytes",
            _ => "resourceLimits.maxFilesCreated",
        };
        format!("{what} refused: past {field} ({max})")
    }
}

#[cfg(test)]
mod tests {
    use super::take;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn a_charge_past_the_quota_or_past_u64_leaves_the_counter_as_it_was() {
        let c = AtomicU64::new(100);
        assert_eq!(take(&c, 900, 1_000), Ok(100));
        assert_eq!(take(&c, 1, 1_000), Err(1_000));
        assert_eq!(take(&c, u64::MAX, u64::MAX), Err(1_000));
        assert_eq!(c.load(std::sync::atomic::Ordering::Relaxed), 1_000);
    }
}
