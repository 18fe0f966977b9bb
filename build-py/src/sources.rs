//! The app's own sources: which `.py` files under its directory go into the build (bounded in
//! count, bytes and depth), copying them, and the digest the bundled-guest build skips on.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{BuildError, SDK_FILES, WIT_FILES, io};

/// At most this many `.py` files are copied from the app's directory.
pub const MAX_APP_FILES: usize = 2_000;
/// At most this many bytes of `.py` files are copied from the app's directory.
pub const MAX_APP_BYTES: u64 = 32 << 20;
/// Packages are copied to at most this depth under the app's directory.
pub const MAX_APP_DEPTH: usize = 8;

/// The `.py` files under `dir`, sorted: the app's own sources. Only regular files are taken
/// (a FIFO or device named `x.py` is skipped, never opened). Skipped too: hidden entries,
/// `__pycache__`, virtual environments (a directory holding `pyvenv.cfg`), `node_modules`,
/// `target`, and directories deeper than [`MAX_APP_DEPTH`] levels. Symbolic links are not
/// followed.
///
/// # Errors
///
/// [`BuildError::App`] past [`MAX_APP_FILES`] files or [`MAX_APP_BYTES`] bytes (their sizes
/// as listed, before anything is read; build from a directory that holds only the agent),
/// [`BuildError::Io`].
pub fn collect_py(dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let mut files = Vec::new();
    let mut bytes = 0u64;
    walk(dir, dir, 0, &mut files, &mut bytes)?;
    Ok(files)
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    bytes: &mut u64,
) -> Result<(), BuildError> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(format!("listing {}", dir.display())))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(format!("listing {}", dir.display())))?;
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let meta =
            fs::symlink_metadata(&path).map_err(io(format!("reading {}", path.display())))?;
        if name.starts_with('.') || meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            let skip = matches!(name, "__pycache__" | "node_modules" | "target")
                || path.join("pyvenv.cfg").exists()
                || depth + 1 > MAX_APP_DEPTH;
            if !skip {
                walk(root, &path, depth + 1, files, bytes)?;
            }
        } else if meta.is_file() && name.ends_with(".py") {
            files.push(path);
            *bytes += meta.len();
            if files.len() > MAX_APP_FILES {
                return Err(BuildError::App(format!(
                    "{} holds more than {MAX_APP_FILES} .py files; build from a directory \
                     that holds only the agent's sources",
                    root.display()
                )));
            }
            if *bytes > MAX_APP_BYTES {
                return Err(too_many_bytes(root));
            }
        }
    }
    Ok(())
}

fn too_many_bytes(root: &Path) -> BuildError {
    BuildError::App(format!(
        "the .py files under {} are over {} MiB; build from a directory that holds only the \
         agent's sources",
        root.display(),
        MAX_APP_BYTES >> 20
    ))
}

/// The top-level module names the app's directory provides (`x.py` and regular packages
/// `x/__init__.py`), for the build to refuse those that would shadow the standard library. A
/// directory without `__init__.py` is a namespace package, which never shadows a regular one.
pub(crate) fn top_level_modules(app_dir: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(app_dir).ok())
        .filter_map(|rel| {
            let parts: Vec<_> = rel.components().collect();
            match parts[..] {
                [file] => file.as_os_str().to_str()?.strip_suffix(".py"),
                [package, init] if init.as_os_str() == "__init__.py" => {
                    package.as_os_str().to_str()
                }
                _ => None,
            }
        })
        .map(str::to_owned)
        // Only an identifier can be imported (and so shadow anything).
        .filter(|n| {
            n.chars()
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && n.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Copies `files` (under `app_dir`) into `to`, keeping their relative paths.
///
/// # Errors
///
/// [`BuildError::App`] past [`MAX_APP_BYTES`] (a file that grew since it was listed),
/// [`BuildError::Io`].
pub(crate) fn copy_app_sources(
    app_dir: &Path,
    files: &[PathBuf],
    to: &Path,
) -> Result<(), BuildError> {
    let mut total = 0u64;
    for file in files {
        let relative = file
            .strip_prefix(app_dir)
            .expect("collected under the app directory");
        let target = to.join(relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        let source = fs::File::open(file).map_err(io(format!("opening {}", file.display())))?;
        let mut sink =
            fs::File::create(&target).map_err(io(format!("writing {}", target.display())))?;
        // One byte past the budget is enough to know it is over.
        let budget = MAX_APP_BYTES - total + 1;
        total += std::io::copy(&mut source.take(budget), &mut sink)
            .map_err(io(format!("copying {}", file.display())))?;
        if total > MAX_APP_BYTES {
            return Err(too_many_bytes(app_dir));
        }
    }
    Ok(())
}

/// A digest of everything a build of `app` depends on besides componentize-py itself: the
/// WIT, the SDK, the generated entry module, and the `.py` files under the app's directory (read in 64 KiB pieces). The
/// bundled-guest build skips a guest whose digest is unchanged.
///
/// # Errors
///
/// [`BuildError::App`] past the bounds of [`collect_py`], [`BuildError::Io`] when the app's
/// directory cannot be read.
pub fn input_digest(app: &Path, tool_version: &str) -> Result<String, BuildError> {
    let mut hasher = Sha256::new();
    hasher.update(tool_version.as_bytes());
    for (name, text) in WIT_FILES.iter().chain(SDK_FILES) {
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    let dir = app.parent().unwrap_or(Path::new("."));
    let files = collect_py(dir)?;
    // The generated entry module (what the build adds around the app) counts too.
    let module = crate::module_name(app)?;
    let entry = crate::entry_module(&module, &top_level_modules(dir, &files));
    hasher.update((entry.len() as u64).to_le_bytes());
    hasher.update(entry.as_bytes());
    let mut buf = vec![0u8; 64 << 10];
    for file in files {
        hasher.update(file.to_string_lossy().as_bytes());
        let mut f = fs::File::open(&file).map_err(io(format!("reading {}", file.display())))?;
        let mut len = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io(format!("reading {}", file.display())))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            hasher.update(&buf[..n]);
        }
        hasher.update(len.to_le_bytes());
    }
    let mut hex = String::new();
    for b in hasher.finalize() {
        write!(hex, "{b:02x}").expect("writing to a String");
    }
    Ok(hex)
}
