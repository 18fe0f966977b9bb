//! `wasi:filesystem` with every operation counted, every quota enforced and every link kept
//! inside its mount.
//!
//! The checks happen here, at the WASI level, so they cannot be bypassed or under-reported by
//! the guest:
//! - **Operations**: every descriptor operation (open, stat, read, write, directory listing,
//!   rename, ...) and every call on a file stream takes one unit of `maxFileOperations` before
//!   it is delegated to wasmtime-wasi's implementation, so a call refused afterwards (by the
//!   access gate, the handle cap, a quota or a link rule) has still cost its unit; the units
//!   are the receipt's `file_operations`. Past the budget the operation fails with `quota`
//!   (EDQUOT). Dropping handles and iterating an already-open directory stream are free.
//! - **Handles**: the Store's resource table holds at most `maxOpenHandles` entries (see
//!   [`handle_table`]). Every call that creates one (`open-at`, `read-directory`,
//!   `read-via-stream`, `write-via-stream`, `append-via-stream`) first checks that there is room
//!   and otherwise fails with `insufficient-memory` (ENOMEM): WASI 0.2 has no EMFILE, the table
//!   is host memory held for the agent, and `quota` already means a spent budget. Without the
//!   check a full table would trap the guest instead of giving it an error it can handle.
//! - **Disk and files**: see [`quota`].
//! - **Links**: see [`links`].
//! - **Access**: with policies loaded, every call that names a file or reads, writes, lists or
//!   describes one through a descriptor is decided by the access gate on the file's guest path
//!   (resource `file/<path>`, see [`names`] for how a path is resolved), after its unit is
//!   taken; a refusal is `access` (EACCES). Reads and writes through a descriptor (and each
//!   call on a file stream, once the policies or the agent's trust changed since the stream
//!   was last allowed) are decided each time, so a handle opened before a policy change is
//!   refused at its next read or write when the new rules deny it (a directory listing, at its
//!   next entry). The actions:
//!
//! | action | calls (the file they decide on) |
//! |---|---|
//! | `read` | `open-at` without `write`, `create` or `truncate`; `read`, `read-via-stream`; `readlink-at`; `link-at` (the existing file) |
//! | `write` | `open-at` with `write`, `create` or `truncate`; `write`, `write-via-stream`, `append-via-stream`, `set-size`, `set-times`, `set-times-at`; `rename-at` (the new name, and the new name of every entry of a moved directory) |
//! | `create` | `create-directory-at` |
//! | `delete` | `unlink-file-at`, `remove-directory-at`, `rename-at` (the old name, and every entry of a moved directory) |
//! | `list` | `read-directory` (the directory) |
//! | `stat` | `stat`, `stat-at`, `metadata-hash`, `metadata-hash-at` |
//! | `link` | `symlink-at` (the new link), `link-at` (the new name) |
//!
//!   `advise`, `sync`, `sync-data`, `get-flags`, `get-type` and `is-same-object` reveal nothing
//!   of a file's content and are not gated. The `fs.*` tools meet the same gate with the same
//!   names (`fs.read`: `read`, `fs.write`: `write`, `fs.list`: `list`), after their
//!   `tool/fs.*` check.
//! - **Records**: at `monitored` isolation every call above goes through the gate even
//!   without policies (which records it as allowed, and refuses it with `access` when the
//!   audit log cannot record it), and is recorded
//!   (`AgentShared::record_call`) as `filesystem.<call>` on resource `call/file/<path>` (the
//!   lexical path, links not followed) with its outcome (`ok` or the error code).
//!
//! Every refusal at a limit records it on the agent, so the agent's report names the limit.

mod checks;
mod descriptor;
pub(crate) mod links;
pub(crate) mod names;
pub(crate) mod quota;

pub use links::{FsState, MAX_MOVED_DEPTH, MAX_MOVED_ENTRIES};

use crate::sandbox::AgentShared;
use crate::spec::SubAgentSpecification;
use crate::wasi::AgentWasiView;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::{self, ErrorCode, HostDirectoryEntryStream};
use wasmtime_wasi::p2::{FsError, FsResult};

/// The resource table of an agent's Store, holding at most `resourceLimits.maxOpenHandles`
/// entries. The cap counts every WASI resource the agent holds (descriptors, including the
/// preopened directories; directory and file streams; stdio streams; sockets; pollables), with
/// no headroom: only descriptors and sockets hold host file descriptors, so the host holds at
/// most that many for the agent, and the process budget reserves exactly that (see
/// [`crate::sandbox::descriptors`]).
pub fn handle_table(spec: &SubAgentSpecification) -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(spec.resource_limits.max_open_handles as usize);
    table
}

/// The filesystem view handed to the generated bindings.
pub struct CountingFs<'a> {
    inner: WasiFilesystemCtxView<'a>,
    shared: &'a Arc<AgentShared>,
    fs: &'a mut FsState,
}

/// A borrowed handle to the same descriptor, to call wasmtime-wasi twice with it.
pub(super) fn again(fd: &Fd) -> Fd {
    Resource::new_borrow(fd.rep())
}

struct CountingFsData;

impl HasData for CountingFsData {
    type Data<'a> = CountingFs<'a>;
}

fn counting_fs<T: AgentWasiView>(state: &mut T) -> CountingFs<'_> {
    let parts = state.wasi_parts();
    CountingFs {
        inner: WasiFilesystemCtxView {
            ctx: parts.ctx.filesystem(),
            table: parts.table,
        },
        shared: parts.shared,
        fs: parts.fs,
    }
}

/// Replaces wasmtime-wasi's `wasi:filesystem/types` and `wasi:filesystem/preopens` in `linker`
/// with the counting ones.
pub fn shadow_filesystem<T: AgentWasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    types::add_to_linker::<T, CountingFsData>(linker, counting_fs::<T>)?;
    preopens::add_to_linker::<T, CountingFsData>(linker, counting_fs::<T>)?;
    linker.allow_shadowing(false);
    Ok(())
}

impl preopens::Host for CountingFs<'_> {
    /// wasmtime-wasi's list (in grant order), with each descriptor's mount recorded.
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Fd, String)>> {
        let dirs = preopens::Host::get_directories(&mut self.inner)?;
        for (mount, (fd, _)) in dirs.iter().enumerate() {
            self.fs.insert(fd.rep(), mount);
        }
        Ok(dirs)
    }
}

impl types::Host for CountingFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        if let Some(code) = quota::quota_error_code(self.inner.table.get(&err)?) {
            return Ok(Some(code));
        }
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

type Fd = Resource<Descriptor>;

impl HostDirectoryEntryStream for CountingFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        // Free, but a listing started before a policy change follows the new rules.
        if let Some(gate) = self.fs.listings.get_mut(&stream.rep())
            && gate.check(self.shared).is_err()
        {
            return Err(ErrorCode::Access.into());
        }
        self.inner.read_directory_entry(stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        self.fs.listings.remove(&stream.rep());
        HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}
