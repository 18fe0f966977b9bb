//! `wasi:filesystem/types.descriptor`, each method counted, gated on the guest path it touches,
//! charged and recorded (see the parent module for the table of actions).

use super::quota::{CountedInput, CountedOutput, WriteAt};
use super::{CountingFs, Fd, again};
use std::sync::Arc;
use wasmtime::component::Resource;
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p2::bindings::filesystem::types::{self, ErrorCode, HostDescriptor, PathFlags};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, FsResult};

/// Runs `$body` (the call), then records it on a monitored agent as `filesystem.$call` on the
/// file `$target` names (computed only when monitored), with its outcome.
macro_rules! recorded {
    ($self:ident, $call:literal, $target:expr, $body:expr) => {{
        let start = std::time::Instant::now();
        let target = $self.monitored().then(|| $target);
        let result = $body;
        $self.record($call, target, start, &result);
        result
    }};
}

fn follows(flags: PathFlags) -> bool {
    flags.contains(PathFlags::SYMLINK_FOLLOW)
}

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
        recorded!(
            self,
            "set-size",
            self.named(&fd, None),
            async {
                self.count()?;
                self.gate_fd(&fd, "write")?;
                let charge = self.charge(&fd, size, "set-size")?;
                let result = self.inner.set_size(fd, size).await;
                self.settle(charge);
                result
            }
            .await
        )
    }

    async fn set_times(
        &mut self,
        fd: Fd,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        recorded!(
            self,
            "set-times",
            self.named(&fd, None),
            async {
                self.count()?;
                self.gate_fd(&fd, "write")?;
                self.inner.set_times(fd, atim, mtim).await
            }
            .await
        )
    }

    async fn read(
        &mut self,
        fd: Fd,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        recorded!(
            self,
            "read",
            self.named(&fd, None),
            async {
                self.count()?;
                self.gate_fd(&fd, "read")?;
                self.inner.read(fd, len, offset).await
            }
            .await
        )
    }

    async fn write(
        &mut self,
        fd: Fd,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        recorded!(
            self,
            "write",
            self.named(&fd, None),
            async {
                self.count()?;
                self.gate_fd(&fd, "write")?;
                let end = offset.saturating_add(buf.len() as u64);
                let charge = self.charge(&fd, end, "write")?;
                let result = self.inner.write(fd, buf, offset).await;
                self.settle(charge);
                result
            }
            .await
        )
    }

    async fn read_directory(&mut self, fd: Fd) -> FsResult<Resource<types::DirectoryEntryStream>> {
        recorded!(
            self,
            "read-directory",
            self.named(&fd, None),
            async {
                self.count()?;
                self.gate_fd(&fd, "list")?;
                self.room("read-directory")?;
                let gate = self.stream_gate(&fd, "list");
                let listing = self.inner.read_directory(fd).await?;
                self.fs.listings.insert(listing.rep(), gate);
                Ok(listing)
            }
            .await
        )
    }

    async fn sync(&mut self, fd: Fd) -> FsResult<()> {
        self.count()?;
        self.inner.sync(fd).await
    }

    async fn create_directory_at(&mut self, fd: Fd, path: String) -> FsResult<()> {
        recorded!(
            self,
            "create-directory-at",
            self.named(&fd, Some(&path)),
            async {
                self.count()?;
                self.gate_at(&fd, &path, false, "create")?;
                let taken = self.take_file(&fd, "create-directory-at")?;
                let result = self.inner.create_directory_at(fd, path).await;
                self.settle_file(taken, &result);
                result
            }
            .await
        )
    }

    async fn stat(&mut self, fd: Fd) -> FsResult<types::DescriptorStat> {
        recorded!(
            self,
            "stat",
            self.named(&fd, None),
            async {
                self.count()?;
                self.gate_fd(&fd, "stat")?;
                self.inner.stat(fd).await
            }
            .await
        )
    }

    async fn stat_at(
        &mut self,
        fd: Fd,
        path_flags: PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        recorded!(
            self,
            "stat-at",
            self.named(&fd, Some(&path)),
            async {
                self.count()?;
                self.gate_at(&fd, &path, follows(path_flags), "stat")?;
                self.inner.stat_at(fd, path_flags, path).await
            }
            .await
        )
    }

    async fn set_times_at(
        &mut self,
        fd: Fd,
        path_flags: PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        recorded!(
            self,
            "set-times-at",
            self.named(&fd, Some(&path)),
            async {
                self.count()?;
                self.gate_at(&fd, &path, follows(path_flags), "write")?;
                self.inner
                    .set_times_at(fd, path_flags, path, atim, mtim)
                    .await
            }
            .await
        )
    }

    async fn link_at(
        &mut self,
        fd: Fd,
        old_path_flags: PathFlags,
        old_path: String,
        new_descriptor: Fd,
        new_path: String,
    ) -> FsResult<()> {
        recorded!(
            self,
            "link-at",
            self.named(&new_descriptor, Some(&new_path)),
            async {
                self.count()?;
                self.gate_at(&fd, &old_path, follows(old_path_flags), "read")?;
                self.gate_at(&new_descriptor, &new_path, false, "link")?;
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
                // Without `symlink-follow` (wasmtime-wasi refuses it) a hard link to a symbolic
                // link is a second name for the link itself, so its target must stay inside from
                // there.
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
            .await
        )
    }

    async fn open_at(
        &mut self,
        fd: Fd,
        path_flags: PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Fd> {
        recorded!(
            self,
            "open-at",
            self.named(&fd, Some(&path)),
            async {
                self.count()?;
                let writes = flags.contains(types::DescriptorFlags::WRITE)
                    || oflags.intersects(types::OpenFlags::CREATE | types::OpenFlags::TRUNCATE);
                let action = if writes { "write" } else { "read" };
                let name = self.gate_at(&fd, &path, follows(path_flags), action)?;
                self.room("open-at")?;
                let (rep, mount) = (fd.rep(), self.fs.mount_of(fd.rep()));
                // Looked up as the open will (following a final link with `symlink-follow`), so
                // that a file created through a dangling link takes its unit too.
                let creates = oflags.contains(types::OpenFlags::CREATE)
                    && self
                        .inner
                        .stat_at(again(&fd), path_flags, path.clone())
                        .await
                        .is_err();
                let taken = creates && self.take_file(&fd, "open-at with create")?;
                let result = self
                    .inner
                    .open_at(fd, path_flags, path.clone(), oflags, flags)
                    .await;
                self.settle_file(taken, &result);
                let opened = result?;
                if let Some(mount) = mount {
                    let named = name
                        .or_else(|| self.opened_path(&opened, mount))
                        .unwrap_or_else(|| self.fs.lexical(rep, &path));
                    self.fs.insert_at(opened.rep(), mount, named);
                }
                Ok(opened)
            }
            .await
        )
    }

    fn drop(&mut self, fd: Fd) -> wasmtime::Result<()> {
        self.fs.remove(fd.rep());
        HostDescriptor::drop(&mut self.inner, fd)
    }

    async fn readlink_at(&mut self, fd: Fd, path: String) -> FsResult<String> {
        recorded!(
            self,
            "readlink-at",
            self.named(&fd, Some(&path)),
            async {
                self.count()?;
                self.gate_at(&fd, &path, false, "read")?;
                self.inner.readlink_at(fd, path).await
            }
            .await
        )
    }

    async fn remove_directory_at(&mut self, fd: Fd, path: String) -> FsResult<()> {
        recorded!(
            self,
            "remove-directory-at",
            self.named(&fd, Some(&path)),
            async {
                self.count()?;
                self.gate_at(&fd, &path, false, "delete")?;
                self.inner.remove_directory_at(fd, path).await
            }
            .await
        )
    }

    async fn rename_at(
        &mut self,
        fd: Fd,
        old_path: String,
        new_fd: Fd,
        new_path: String,
    ) -> FsResult<()> {
        recorded!(
            self,
            "rename-at",
            self.named(&fd, Some(&old_path)),
            async {
                self.count()?;
                let from = self.gate_at(&fd, &old_path, false, "delete")?;
                let to = self.gate_at(&new_fd, &new_path, false, "write")?;
                if let (Some(from), Some(to)) = (from, to) {
                    self.gate_moved(&fd, &old_path, &from, &to)?;
                }
                if let Ok(target) = self.inner.readlink_at(again(&fd), old_path.clone()).await {
                    self.check_symlink(&new_fd, &target, &new_path)?;
                } else {
                    self.check_moved_dir(&fd, &old_path, &new_fd, &new_path)?;
                }
                self.inner.rename_at(fd, old_path, new_fd, new_path).await
            }
            .await
        )
    }

    async fn symlink_at(&mut self, fd: Fd, src_path: String, dest_path: String) -> FsResult<()> {
        recorded!(
            self,
            "symlink-at",
            self.named(&fd, Some(&dest_path)),
            async {
                self.count()?;
                self.gate_at(&fd, &dest_path, false, "link")?;
                self.check_symlink(&fd, &src_path, &dest_path)?;
                let taken = self.take_file(&fd, "symlink-at")?;
                let result = self.inner.symlink_at(fd, src_path, dest_path).await;
                self.settle_file(taken, &result);
                result
            }
            .await
        )
    }

    async fn unlink_file_at(&mut self, fd: Fd, path: String) -> FsResult<()> {
        recorded!(
            self,
            "unlink-file-at",
            self.named(&fd, Some(&path)),
            async {
                self.count()?;
                self.gate_at(&fd, &path, false, "delete")?;
                self.inner.unlink_file_at(fd, path).await
            }
            .await
        )
    }

    fn read_via_stream(
        &mut self,
        fd: Fd,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        recorded!(self, "read-via-stream", self.named(&fd, None), {
            self.count()
                .and_then(|()| self.gate_fd(&fd, "read"))
                .and_then(|()| self.room("read-via-stream"))
                .and_then(|()| {
                    let gate = self.stream_gate(&fd, "read");
                    let stream = self.inner.read_via_stream(fd, offset)?;
                    let slot = self.inner.table.get_mut(&stream)?;
                    let inner = std::mem::replace(
                        slot,
                        Box::new(wasmtime_wasi::p2::pipe::ClosedInputStream),
                    );
                    *slot = Box::new(CountedInput {
                        inner,
                        shared: self.shared.clone(),
                        gate,
                    });
                    Ok(stream)
                })
        })
    }

    fn write_via_stream(
        &mut self,
        fd: Fd,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        recorded!(self, "write-via-stream", self.named(&fd, None), {
            self.count()
                .and_then(|()| self.gate_fd(&fd, "write"))
                .and_then(|()| self.room("write-via-stream"))
                .and_then(|()| {
                    let file = self.writable_file(&fd)?;
                    let gate = self.stream_gate(&fd, "write");
                    let stream = self.inner.write_via_stream(fd, offset)?;
                    self.count_writes(stream, file, WriteAt::Offset(offset), gate)
                })
        })
    }

    fn append_via_stream(&mut self, fd: Fd) -> FsResult<Resource<DynOutputStream>> {
        recorded!(self, "append-via-stream", self.named(&fd, None), {
            self.count()
                .and_then(|()| self.gate_fd(&fd, "write"))
                .and_then(|()| self.room("append-via-stream"))
                .and_then(|()| {
                    let file = self.writable_file(&fd)?;
                    let gate = self.stream_gate(&fd, "write");
                    let stream = self.inner.append_via_stream(fd)?;
                    self.count_writes(stream, file, WriteAt::End, gate)
                })
        })
    }

    async fn is_same_object(&mut self, a: Fd, b: Fd) -> wasmtime::Result<bool> {
        self.inner.is_same_object(a, b).await
    }

    async fn metadata_hash(&mut self, fd: Fd) -> FsResult<types::MetadataHashValue> {
        recorded!(
            self,
            "metadata-hash",
            self.named(&fd, None),
            async {
                self.count()?;
                self.gate_fd(&fd, "stat")?;
                self.inner.metadata_hash(fd).await
            }
            .await
        )
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Fd,
        path_flags: PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        recorded!(
            self,
            "metadata-hash-at",
            self.named(&fd, Some(&path)),
            async {
                self.count()?;
                self.gate_at(&fd, &path, follows(path_flags), "stat")?;
                self.inner.metadata_hash_at(fd, path_flags, path).await
            }
            .await
        )
    }
}

impl CountingFs<'_> {
    /// Wraps a file output stream so that each write is counted, gated and charged.
    fn count_writes(
        &mut self,
        stream: Resource<DynOutputStream>,
        file: Option<Arc<std::fs::File>>,
        at: WriteAt,
        gate: super::names::StreamGate,
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
            gate,
        });
        Ok(stream)
    }

    /// The guest path of descriptor `opened`, just opened in mount `mount`, from the host's
    /// real path of what it opened.
    fn opened_path(&self, opened: &Fd, mount: usize) -> Option<String> {
        match self.inner.table.get(opened).ok()? {
            Descriptor::File(f) => self.fs.opened_path(mount, &*f.file),
            Descriptor::Dir(d) => self.fs.opened_path(mount, &*d.dir),
        }
    }
}
