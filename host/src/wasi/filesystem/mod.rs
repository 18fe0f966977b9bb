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
//!
//! Every refusal at a limit records it on the agent, so the agent's report names the limit.

mod checks;
pub(crate) mod links;
pub(crate) mod quota;

pub use links::{FsState, MAX_MOVED_DEPTH, MAX_MOVED_ENTRIES};

use crate::sandbox::AgentShared;
use crate::spec::SubAgentSpecification;
use crate::wasi::AgentWasiView;
use quota::{CountedInput, CountedOutput, WriteAt};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, FsError, FsResult};

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

impl HostDescriptor for CountingFs<'_> {
    async fn advise(
        &mut self,
        fd: Fd,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.count()?;
        self.inner.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Fd) -> FsResult<()> {
        self.count()?;
        self.inner.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Fd) -> FsResult<types::DescriptorFlags> {
        self.count()?;
        self.inner.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Fd) -> FsResult<types::DescriptorType> {
        self.count()?;
        self.inner.get_type(fd).await
    }

    async fn set_size(&mut self, fd: Fd, size: types::Filesize) -> FsResult<()> {
        self.count()?;
        let charge = self.charge(&fd, size, "set-size")?;
        let result = self.inner.set_size(fd, size).await;
        self.settle(charge);
        result
    }

    async fn set_times(
        &mut self,
        fd: Fd,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.count()?;
        self.inner.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Fd,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.count()?;
        self.inner.read(fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Fd,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        self.count()?;
        let end = offset.saturating_add(buf.len() as u64);
        let charge = self.charge(&fd, end, "write")?;
        let result = self.inner.write(fd, buf, offset).await;
        self.settle(charge);
        result
    }

    async fn read_directory(&mut self, fd: Fd) -> FsResult<Resource<types::DirectoryEntryStream>> {
        self.count()?;
        self.room("read-directory")?;
        self.inner.read_directory(fd).await
    }

    async fn sync(&mut self, fd: Fd) -> FsResult<()> {
        self.count()?;
        self.inner.sync(fd).await
    }

    async fn create_directory_at(&mut self, fd: Fd, path: String) -> FsResult<()> {
        self.count()?;
        self.gate(&path, "mkdir")?;
        let taken = self.take_file(&fd, "create-directory-at")?;
        let result = self.inner.create_directory_at(fd, path).await;
        self.settle_file(taken, &result);
        result
    }

    async fn stat(&mut self, fd: Fd) -> FsResult<types::DescriptorStat> {
        self.count()?;
        self.inner.stat(fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Fd,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        self.count()?;
        self.gate(&path, "stat")?;
        self.inner.stat_at(fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Fd,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.count()?;
        self.gate(&path, "write")?;
        self.inner
            .set_times_at(fd, path_flags, path, atim, mtim)
            .await
    }

    async fn link_at(
        &mut self,
        fd: Fd,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Fd,
        new_path: String,
    ) -> FsResult<()> {
        self.count()?;
        self.gate(&old_path, "read")?;
        self.gate(&new_path, "link")?;
        let (from, to) = (
            self.fs.mount_of(fd.rep()),
            self.fs.mount_of(new_descriptor.rep()),
        );
        if from.is_none() || from != to {
            return Err(self.refuse_link(
                ErrorCode::CrossDevice,
                format!("hard link `{new_path}` to `{old_path}` would cross mounts"),
            ));
        }
        // Without `symlink-follow` (wasmtime-wasi refuses it) a hard link to a symbolic link
        // is a second name for the link itself, so its target must stay inside from there.
        if let Ok(target) = self.inner.readlink_at(again(&fd), old_path.clone()).await {
            self.check_symlink(&new_descriptor, &target, &new_path)?;
        }
        let taken = self.take_file(&new_descriptor, "link-at")?;
        let result = self
            .inner
            .link_at(fd, old_path_flags, old_path, new_descriptor, new_path)
            .await;
        self.settle_file(taken, &result);
        result
    }

    async fn open_at(
        &mut self,
        fd: Fd,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Fd> {
        self.count()?;
        let writes = flags.contains(types::DescriptorFlags::WRITE)
            || oflags.intersects(types::OpenFlags::CREATE | types::OpenFlags::TRUNCATE);
        self.gate(&path, if writes { "write" } else { "open" })?;
        self.room("open-at")?;
        let mount = self.fs.mount_of(fd.rep());
        // Looked up as the open will (following a final link with `symlink-follow`), so that a
        // file created through a dangling link takes its unit too.
        let creates = oflags.contains(types::OpenFlags::CREATE)
            && self
                .inner
                .stat_at(again(&fd), path_flags, path.clone())
                .await
                .is_err();
        let taken = creates && self.take_file(&fd, "open-at with create")?;
        let result = self
            .inner
            .open_at(fd, path_flags, path, oflags, flags)
            .await;
        self.settle_file(taken, &result);
        let opened = result?;
        if let Some(mount) = mount {
            self.fs.insert(opened.rep(), mount);
        }
        Ok(opened)
    }

    fn drop(&mut self, fd: Fd) -> wasmtime::Result<()> {
        self.fs.remove(fd.rep());
        HostDescriptor::drop(&mut self.inner, fd)
    }

    async fn readlink_at(&mut self, fd: Fd, path: String) -> FsResult<String> {
        self.count()?;
        self.gate(&path, "stat")?;
        self.inner.readlink_at(fd, path).await
    }

    async fn remove_directory_at(&mut self, fd: Fd, path: String) -> FsResult<()> {
        self.count()?;
        self.gate(&path, "delete")?;
        self.inner.remove_directory_at(fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Fd,
        old_path: String,
        new_fd: Fd,
        new_path: String,
    ) -> FsResult<()> {
        self.count()?;
        self.gate(&old_path, "delete")?;
        self.gate(&new_path, "write")?;
        if let Ok(target) = self.inner.readlink_at(again(&fd), old_path.clone()).await {
            self.check_symlink(&new_fd, &target, &new_path)?;
        } else {
            self.check_moved_dir(&fd, &old_path, &new_fd, &new_path)?;
        }
        self.inner.rename_at(fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(&mut self, fd: Fd, src_path: String, dest_path: String) -> FsResult<()> {
        self.count()?;
        self.gate(&dest_path, "link")?;
        self.check_symlink(&fd, &src_path, &dest_path)?;
        let taken = self.take_file(&fd, "symlink-at")?;
        let result = self.inner.symlink_at(fd, src_path, dest_path).await;
        self.settle_file(taken, &result);
        result
    }

    async fn unlink_file_at(&mut self, fd: Fd, path: String) -> FsResult<()> {
        self.count()?;
        self.gate(&path, "delete")?;
        self.inner.unlink_file_at(fd, path).await
    }

    fn read_via_stream(
        &mut self,
        fd: Fd,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        self.count()?;
        self.room("read-via-stream")?;
        let stream = self.inner.read_via_stream(fd, offset)?;
        let slot = self.inner.table.get_mut(&stream)?;
        let inner = std::mem::replace(slot, Box::new(wasmtime_wasi::p2::pipe::ClosedInputStream));
        *slot = Box::new(CountedInput {
            inner,
            shared: self.shared.clone(),
        });
        Ok(stream)
    }

    fn write_via_stream(
        &mut self,
        fd: Fd,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.count()?;
        self.room("write-via-stream")?;
        let file = self.writable_file(&fd)?;
        let stream = self.inner.write_via_stream(fd, offset)?;
        self.count_writes(stream, file, WriteAt::Offset(offset))
    }

    fn append_via_stream(&mut self, fd: Fd) -> FsResult<Resource<DynOutputStream>> {
        self.count()?;
        self.room("append-via-stream")?;
        let file = self.writable_file(&fd)?;
        let stream = self.inner.append_via_stream(fd)?;
        self.count_writes(stream, file, WriteAt::End)
    }

    async fn is_same_object(&mut self, a: Fd, b: Fd) -> wasmtime::Result<bool> {
        self.inner.is_same_object(a, b).await
    }

    async fn metadata_hash(&mut self, fd: Fd) -> FsResult<types::MetadataHashValue> {
        self.count()?;
        self.inner.metadata_hash(fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Fd,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        self.count()?;
        self.inner.metadata_hash_at(fd, path_flags, path).await
    }
}

impl CountingFs<'_> {
    /// Wraps a file output stream so that each write is counted and charged.
    fn count_writes(
        &mut self,
        stream: Resource<DynOutputStream>,
        file: Option<Arc<std::fs::File>>,
        at: WriteAt,
    ) -> FsResult<Resource<DynOutputStream>> {
        // wasmtime-wasi refuses streams on read-only files, so `file` is always there.
        let Some(file) = file else {
            return Ok(stream);
        };
        let slot = self.inner.table.get_mut(&stream)?;
        let inner = std::mem::replace(slot, Box::new(wasmtime_wasi::p2::pipe::SinkOutputStream));
        *slot = Box::new(CountedOutput {
            inner,
            shared: self.shared.clone(),
            file,
            at,
        });
        Ok(stream)
    }
}

impl HostDirectoryEntryStream for CountingFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        self.inner.read_directory_entry(stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}
