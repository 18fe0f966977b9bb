//! Which mount each descriptor belongs to, and the link rules that keep a mount closed.
//!
//! - `symlink-at` is refused (`not-permitted`) unless its target is relative, all its `..`
//!   components come first, and there are no more of them than the depth of the link's own
//!   directory below the mount root. The depth is measured on the host's real path of that
//!   directory (not on the path the guest spelled, which may pass through links), and `..` after
//!   a name is refused because the name may itself be a link (`e -> .` makes `e/../x` leave the
//!   root). So at the mount root `l -> ..`, `l -> ../outside-file` and `l -> ../../../../../../`
//!   are refused, while `a/b -> ../x` is fine.
//! - `rename-at` of a symbolic link checks its target again from its new directory, and
//!   `rename-at` of a directory to a shallower place checks every link inside it (at most
//!   [`MAX_MOVED_ENTRIES`] entries and [`MAX_MOVED_DEPTH`] levels, else the move is refused)
//!   from where it would be.
//! - `link-at` of a symbolic link (a hard link to the link itself, as `linkat` without
//!   `AT_SYMLINK_FOLLOW` makes) checks its target from the new name's directory, as
//!   `symlink-at` would.
//! - `link-at` (hard links) is refused (`cross-device`, EXDEV) when the old and new descriptors
//!   belong to different preopened directories, so a writable mount can never get a name for a
//!   file of a read-only one.
//!
//! The guest itself never follows a link out of a mount (wasmtime-wasi resolves paths with
//! cap-std), nor do the host's file tools; these rules keep such links off the host's disk,
//! where other host code or a later agent's grant could pass through them.

pub(crate) use crate::sandbox::grants::real_path;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Per-agent filesystem bookkeeping kept beside the resource table.
#[derive(Debug, Default)]
pub struct FsState {
    /// The preopened directory (index in the agent's grants) of each live descriptor and its
    /// absolute guest path (links resolved, see [`super::names`]), by resource rep.
    pub(super) descriptors: HashMap<u32, (usize, String)>,
    /// The real host path of each preopened directory's root, in grant order.
    pub(super) roots: Vec<Option<PathBuf>>,
    /// The guest path of each preopened directory (`/workspace`), in grant order.
    pub(super) guest_roots: Vec<String>,
    /// Each preopened directory, in grant order, to resolve links in it.
    pub(super) dirs: Vec<std::sync::Arc<cap_std::fs::Dir>>,
    /// The gate of each live directory listing (`read-directory`'s stream), by resource rep.
    pub(super) listings: HashMap<u32, super::names::StreamGate>,
}

impl FsState {
    /// Bookkeeping for an agent whose preopened directories are `preopens` (grant order).
    pub fn new(preopens: &[crate::tools::Preopen]) -> Self {
        FsState {
            descriptors: HashMap::new(),
            roots: preopens
                .iter()
                .map(|p| real_path(&p.dir).or_else(|| std::fs::canonicalize(&p.host_path).ok()))
                .collect(),
            guest_roots: preopens.iter().map(|p| p.guest_path.clone()).collect(),
            dirs: preopens.iter().map(|p| p.dir.clone()).collect(),
            listings: HashMap::new(),
        }
    }

    /// Records that descriptor `rep` is the root of mount `mount`.
    pub(super) fn insert(&mut self, rep: u32, mount: usize) {
        let path = self.guest_roots.get(mount).cloned().unwrap_or_default();
        self.descriptors.insert(rep, (mount, path));
    }

    /// Records that descriptor `rep` belongs to mount `mount` and is at guest path `path`.
    pub(super) fn insert_at(&mut self, rep: u32, mount: usize, path: String) {
        self.descriptors.insert(rep, (mount, path));
    }

    /// Forgets a dropped descriptor.
    pub(super) fn remove(&mut self, rep: u32) {
        self.descriptors.remove(&rep);
    }

    /// The mount descriptor `rep` belongs to.
    pub(super) fn mount_of(&self, rep: u32) -> Option<usize> {
        self.descriptors.get(&rep).map(|(m, _)| *m)
    }

    /// The absolute guest path of descriptor `rep`.
    pub(super) fn path_of(&self, rep: u32) -> Option<&str> {
        self.descriptors.get(&rep).map(|(_, p)| p.as_str())
    }

    /// How many levels below the root of mount `mount` the directory whose real host path is
    /// `dir` is; `Err` when that cannot be told.
    pub(super) fn depth(
        &self,
        mount: Option<usize>,
        dir: Option<PathBuf>,
    ) -> Result<usize, String> {
        let root = mount
            .and_then(|m| self.roots.get(m).cloned().flatten())
            .ok_or("the descriptor's mount is unknown")?;
        dir.as_deref()
            .and_then(|d| d.strip_prefix(&root).ok())
            .map(|rel| rel.components().count())
            .ok_or_else(|| "the directory is not inside its mount".to_string())
    }

    /// Whether a symbolic link to `target`, created in the directory whose real host path is
    /// `link_dir`, stays inside mount `mount`. `Err` says why not.
    pub(super) fn check_symlink(
        &self,
        mount: Option<usize>,
        link_dir: Option<PathBuf>,
        target: &str,
    ) -> Result<(), String> {
        let depth = self
            .depth(mount, link_dir)
            .map_err(|why| format!("link target `{target}`: {why}"))?;
        check_target(target, depth)
    }
}

/// Whether a link to `target` in a directory `depth` levels below the mount root stays inside
/// the mount (see the module documentation).
pub(super) fn check_target(target: &str, depth: usize) -> Result<(), String> {
    let mut ups = 0;
    let mut named = false;
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir if named => {
                return Err(format!(
                    "link target `{target}` has `..` after a name; put every `..` first"
                ));
            }
            Component::ParentDir => ups += 1,
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "link target `{target}` is absolute; use a path relative to the link"
                ));
            }
        }
    }
    if ups > depth {
        return Err(format!(
            "link target `{target}` climbs {ups} levels from a directory {depth} levels below \
             the mount root, out of the mount"
        ));
    }
    Ok(())
}

/// Entries `check_moved_dir` looks at before it gives up (and refuses the move).
pub const MAX_MOVED_ENTRIES: usize = 10_000;

/// Levels of directories below a directory moved up that `check_moved_dir` looks into; a
/// directory nested deeper inside it cannot be moved up.
pub const MAX_MOVED_DEPTH: usize = 64;

/// Checks every link inside `dir` as if `dir` were `depth` levels below the mount root, looking
/// at no more than `left` entries in all and no deeper than [`MAX_MOVED_DEPTH`] levels below
/// `dir`.
///
/// The walk keeps a list of paths relative to `dir` rather than recursing with open
/// directories: a guest can nest directories thousands of levels deep with short paths, and
/// one frame and two descriptors per level would overflow the stack of the host call (which
/// aborts the host) and use the host's descriptors beyond the agent's share.
pub(super) fn check_moved_dir(
    dir: &cap_std::fs::Dir,
    depth: usize,
    left: &mut usize,
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("checking the links of a moved directory: {e}");
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let below = rel.components().count();
        let sub;
        let here = if below == 0 {
            dir
        } else {
            sub = dir.open_dir(&rel).map_err(io)?;
            &sub
        };
        for entry in here.entries().map_err(io)? {
            let entry = entry.map_err(io)?;
            *left = left.checked_sub(1).ok_or_else(|| {
                format!("a directory with more than {MAX_MOVED_ENTRIES} entries cannot be moved up")
            })?;
            let kind = entry.file_type().map_err(io)?;
            if kind.is_symlink() {
                let target = here.read_link(entry.file_name()).map_err(io)?;
                check_target(&target.to_string_lossy(), depth + below)?;
            } else if kind.is_dir() {
                if below == MAX_MOVED_DEPTH {
                    return Err(format!(
                        "a directory with directories nested more than {MAX_MOVED_DEPTH} levels \
                         deep cannot be moved up"
                    ));
                }
                pending.push(rel.join(entry.file_name()));
            }
        }
    }
    Ok(())
}

/// The real host path of the directory a new link at `dest` (relative to `dir`) would be in.
pub(super) fn link_dir(dir: &std::fs::File, dest: &str) -> Option<PathBuf> {
    let parent = Path::new(dest)
        .parent()
        .filter(|p| !p.as_os_str().is_empty());
    match parent {
        None => real_path(dir),
        Some(parent) => {
            let dir = cap_std::fs::Dir::from_std_file(dir.try_clone().ok()?);
            let sub = dir.open_dir(parent).ok()?;
            real_path(&sub)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(root: &str) -> FsState {
        FsState {
            roots: vec![Some(PathBuf::from(root))],
            ..FsState::default()
        }
    }

    #[test]
    fn links_may_climb_to_the_root_but_not_above() {
        let s = state("/m");
        let at = |dir: &str, target: &str| s.check_symlink(Some(0), Some(dir.into()), target);
        assert!(at("/m/a", "../x").is_ok());
        assert!(at("/m/a/b", "../../x").is_ok());
        assert!(at("/m", "x/y").is_ok());
        assert!(at("/m", "./x").is_ok());
        for bad in ["..", "../outside-file", "../../../../../../"] {
            assert!(at("/m", bad).is_err(), "{bad}");
        }
        assert!(at("/m/a", "../../x").is_err());
        assert!(at("/m/a", "e/../x").is_err());
        assert!(at("/m/a", "/etc/passwd").is_err());
        assert!(at("/elsewhere", "x").is_err());
        assert!(s.check_symlink(None, Some("/m".into()), "x").is_err());
    }
}
