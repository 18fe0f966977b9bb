//! Files named as the guest sees them: every path an agent passes (to a WASI call, relative to
//! one of its descriptors, or to an `fs.*` tool) is turned into the absolute guest path it
//! lands on before the access gate decides (resource `file/<path without the leading />`, see
//! [`crate::model::ResourceName`]).
//!
//! A path is resolved segment by segment from the descriptor's own guest path: empty and `.`
//! segments are dropped, `..` takes away the segment before it, and a segment that is a
//! symbolic link on the host is replaced by its target (a relative path from the link's
//! directory), for every segment but the last, and for the last too when the call follows
//! links (`symlink-follow`, the `fs.*` tools). So `./secret/x`, `sub/../secret/x`,
//! `secret//x`, `x` relative to an open `secret`, and `alias/x` with `alias -> secret` are all
//! `file/workspace/secret/x`. A segment that does not exist ends the link lookups (nothing
//! below it can be a link). A path that climbs above its mount's root, or a link whose target
//! is absolute or climbs out, is refused with `not-permitted` (as wasmtime-wasi refuses it);
//! more than [`MAX_LINKS_FOLLOWED`] links in one path with `loop`.
//!
//! Names are paths, so moving a directory renames everything in it: `rename-at` of a directory
//! is decided as `delete` of its old name and of the name of every entry inside it, and `write`
//! of each new name, so a rule that protects `secret/**` also stops the move of `secret` (or of
//! any directory above it). A hard link made before the policies were loaded is a
//! second name for the same file; `link-at` itself is decided as `read` of the existing name.
//!
//! A descriptor's own guest path is recorded when it is opened: the name the gate resolved
//! when policies are loaded, else the host's real path of the opened file mapped back into the
//! mount (Linux, `/proc/self/fd`), else the lexical name. Resolution costs one `lstat` per
//! segment and runs only while policies are loaded or the agent is `monitored`.

use super::links::{FsState, real_path};
use crate::model::{ResourceKind, ResourceName};
use crate::sandbox::AgentShared;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode;

/// Links followed while one path is resolved before it is refused with `loop` (ELOOP), as
/// Linux does.
pub const MAX_LINKS_FOLLOWED: usize = 40;

/// Why a path has no name inside its mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unnamed {
    /// It climbs above the mount's root, or through a link whose target is absolute.
    Escapes,
    /// It passes more than [`MAX_LINKS_FOLLOWED`] links.
    Loop,
}

impl Unnamed {
    fn code(&self) -> ErrorCode {
        match self {
            Unnamed::Escapes => ErrorCode::NotPermitted,
            Unnamed::Loop => ErrorCode::Loop,
        }
    }

    /// Why, for a tool's error message.
    pub(crate) fn why(&self, path: &str) -> String {
        match self {
            Unnamed::Escapes => format!("`{path}` leads out of the agent's directory"),
            Unnamed::Loop => format!("`{path}` passes more than {MAX_LINKS_FOLLOWED} links"),
        }
    }
}

fn segments(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .map(str::to_string)
}

/// Resolves `rel` from `base` (the segments of a directory below the root of the mount whose
/// directory is `dir`) to the segments below the root it lands on (see the module docs).
pub(crate) fn resolve_in(
    dir: &cap_std::fs::Dir,
    base: Vec<String>,
    rel: &str,
    follow_last: bool,
) -> Result<Vec<String>, Unnamed> {
    let mut done = base;
    let mut pending: VecDeque<String> = segments(rel).collect();
    let mut followed = 0;
    let mut exists = true;
    while let Some(segment) = pending.pop_front() {
        if segment == ".." {
            done.pop().ok_or(Unnamed::Escapes)?;
            continue;
        }
        if exists && (follow_last || !pending.is_empty()) {
            let here: PathBuf = done.iter().chain([&segment]).collect();
            match dir.symlink_metadata(&here) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    followed += 1;
                    if followed > MAX_LINKS_FOLLOWED {
                        return Err(Unnamed::Loop);
                    }
                    let target = dir.read_link(&here).map_err(|_| Unnamed::Escapes)?;
                    let target = target.to_str().ok_or(Unnamed::Escapes)?;
                    if target.starts_with('/') {
                        return Err(Unnamed::Escapes);
                    }
                    for s in segments(target).collect::<Vec<_>>().into_iter().rev() {
                        pending.push_front(s);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(_) => exists = false,
            }
        }
        done.push(segment);
    }
    Ok(done)
}

/// The guest path `segments` below a mount at guest path `root`.
pub(crate) fn guest_join(root: &str, segments: &[String]) -> String {
    match (root, segments.is_empty()) {
        (root, true) => root.to_string(),
        ("/", false) => format!("/{}", segments.join("/")),
        (root, false) => format!("{root}/{}", segments.join("/")),
    }
}

/// The segments of guest path `path` below mount root `root` (empty when it is the root).
fn below(root: &str, path: &str) -> Vec<String> {
    segments(path.strip_prefix(root).unwrap_or_default()).collect()
}

/// The `file` resource id of an absolute guest path (without its leading `/`).
pub(crate) fn file_id(path: &str) -> &str {
    path.trim_start_matches('/')
}

impl FsState {
    /// The absolute guest path `rel` (relative to descriptor `rep`) lands on, links followed
    /// as the module docs say; `not-permitted` when it leaves the mount, `loop` past the links
    /// limit, `access` for a descriptor whose path is unknown (refused, never guessed).
    pub(super) fn resolve(
        &self,
        rep: u32,
        rel: &str,
        follow_last: bool,
    ) -> Result<String, ErrorCode> {
        let (mount, path) = self.descriptors.get(&rep).ok_or(ErrorCode::Access)?;
        let (root, dir) = (&self.guest_roots[*mount], &self.dirs[*mount]);
        if rel.starts_with('/') {
            return Err(ErrorCode::NotPermitted);
        }
        resolve_in(dir, below(root, path), rel, follow_last)
            .map(|segments| guest_join(root, &segments))
            .map_err(|u| u.code())
    }

    /// The lexical guest path of `rel` relative to descriptor `rep`, for records (no lookups).
    pub(super) fn lexical(&self, rep: u32, rel: &str) -> String {
        let base = self.path_of(rep).unwrap_or("?");
        crate::model::normalize_guest_path(&format!("{base}/{rel}"))
            .unwrap_or_else(|| format!("{base}/{rel}"))
    }

    /// The guest path of `file`, just opened in mount `mount`, from its real host path;
    /// `None` when that cannot be told.
    pub(super) fn opened_path(
        &self,
        mount: usize,
        file: &impl std::os::fd::AsFd,
    ) -> Option<String> {
        let real = real_path(file)?;
        let root = self.roots.get(mount)?.as_deref()?;
        let rel = real.strip_prefix(root).ok()?;
        let segments: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_str().map(str::to_string))
            .collect::<Option<_>>()?;
        Some(guest_join(&self.guest_roots[mount], &segments))
    }
}

/// Resolves the path `rel` (below the root of `preopen`) for an `fs.*` tool, following every
/// link: the resolved path below the root, and the guest path it names.
pub(crate) fn resolve_for_tool(
    preopen: &crate::tools::Preopen,
    rel: &Path,
    shown: &str,
) -> Result<(PathBuf, String), String> {
    let rel_text = rel
        .to_str()
        .ok_or_else(|| format!("`{shown}` is not UTF-8"))?;
    let segments =
        resolve_in(&preopen.dir, Vec::new(), rel_text, true).map_err(|u| u.why(shown))?;
    let path = guest_join(&preopen.guest_path, &segments);
    let rel = if segments.is_empty() {
        PathBuf::from(".")
    } else {
        segments.iter().collect()
    };
    Ok((rel, path))
}

/// The file tools' view of the agent's access gate (see [`crate::tools::FileGate`]).
impl crate::tools::FileGate for AgentShared {
    fn active(&self) -> bool {
        self.access.as_ref().is_some_and(|a| a.enabled())
    }

    fn check(&self, path: &str, action: &str) -> Result<(), String> {
        self.gate(ResourceKind::File.as_str(), file_id(path), action)
    }
}

/// The resource name of the file at absolute guest path `path`.
pub(crate) fn file_name(path: &str) -> ResourceName {
    ResourceName::new(ResourceKind::File, file_id(path))
}

/// The gate a file stream runs before each read or write: the decision on its file is taken
/// again whenever the policies or the agent's trust level changed since it was last allowed,
/// so a stream opened before a change is refused at its next call when the new rules deny it
/// (and an unchanged state costs one lock read and a comparison).
#[derive(Debug)]
pub(crate) struct StreamGate {
    /// The file's guest path (`None`: unknown, refused while policies are loaded).
    path: Option<String>,
    action: &'static str,
    /// The policies and trust level under which the stream was last allowed.
    allowed_under: Option<(Arc<crate::security::PolicySet>, u8)>,
}

impl StreamGate {
    /// A gate for a stream on the file at `path`, allowed under the current state (the
    /// stream's creation was just decided).
    pub(super) fn new(shared: &AgentShared, path: Option<String>, action: &'static str) -> Self {
        let allowed_under = shared
            .access
            .as_ref()
            .and_then(|a| a.current())
            .map(|p| (p, shared.trust.load(Ordering::Relaxed)));
        StreamGate {
            path,
            action,
            allowed_under,
        }
    }

    /// Decides the next call on the stream; `Err` when the gate refuses it.
    pub(super) fn check(&mut self, shared: &AgentShared) -> Result<(), ()> {
        let Some(policies) = shared.access.as_ref().and_then(|a| a.current()) else {
            return Ok(());
        };
        let trust = shared.trust.load(Ordering::Relaxed);
        if let Some((p, t)) = &self.allowed_under
            && Arc::ptr_eq(p, &policies)
            && *t == trust
        {
            return Ok(());
        }
        let path = self.path.as_deref().ok_or(())?;
        shared
            .gate(ResourceKind::File.as_str(), file_id(path), self.action)
            .map_err(|_| ())?;
        self.allowed_under = Some((policies, trust));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_and_link_lands_on_one_name_and_escapes_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("secret/sub")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("secret", root.join("alias")).unwrap();
        std::os::unix::fs::symlink("../secret/x", root.join("sub/to-x")).unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority()).unwrap();
        let name = |base: &[&str], rel: &str, follow: bool| {
            let base = base.iter().map(|s| s.to_string()).collect();
            resolve_in(&dir, base, rel, follow).map(|s| guest_join("/workspace", &s))
        };
        for spelling in [
            "secret/x",
            "./secret/x",
            "sub/../secret/x",
            "secret//x",
            "alias/x",
        ] {
            assert_eq!(
                name(&[], spelling, false).unwrap(),
                "/workspace/secret/x",
                "{spelling}"
            );
        }
        assert_eq!(
            name(&["secret"], "x", false).unwrap(),
            "/workspace/secret/x"
        );
        assert_eq!(name(&[], "sub/to-x", true).unwrap(), "/workspace/secret/x");
        // Without following, the last segment is the link itself.
        assert_eq!(name(&[], "sub/to-x", false).unwrap(), "/workspace/sub/to-x");
        assert_eq!(name(&[], "alias", true).unwrap(), "/workspace/secret");
        assert_eq!(name(&[], "", false).unwrap(), "/workspace");
        assert_eq!(
            name(&[], "missing/../secret", false).unwrap(),
            "/workspace/secret"
        );
        assert_eq!(name(&[], "..", false), Err(Unnamed::Escapes));
        assert_eq!(name(&["secret"], "../../x", false), Err(Unnamed::Escapes));
        assert_eq!(name(&[], "up/x", false), Err(Unnamed::Escapes));
        assert_eq!(name(&[], "abs/passwd", false), Err(Unnamed::Escapes));
        assert_eq!(name(&[], "loop/x", false), Err(Unnamed::Loop));
        assert_eq!(guest_join("/", &["a".into()]), "/a");
        assert_eq!(guest_join("/", &[]), "/");
    }

    #[test]
    fn a_path_may_pass_forty_links_and_not_one_more() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("end"), "").unwrap();
        // l0 -> l1 -> ... -> l40 -> end: 41 links from l0, 40 from l1.
        for i in 0..=MAX_LINKS_FOLLOWED {
            let next = if i == MAX_LINKS_FOLLOWED {
                "end".to_string()
            } else {
                format!("l{}", i + 1)
            };
            std::os::unix::fs::symlink(next, root.join(format!("l{i}"))).unwrap();
        }
        let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority()).unwrap();
        assert_eq!(
            resolve_in(&dir, vec![], "l1", true),
            Ok(vec!["end".to_string()])
        );
        assert_eq!(resolve_in(&dir, vec![], "l0", true), Err(Unnamed::Loop));
    }
}
