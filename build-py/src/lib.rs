//! Builds a Python agent into a `qi:agent` component: the app module (a file such as `app.py`
//! defining one subclass of `qi_agent.Agent`) plus the `qi-agent` SDK, run through
//! [componentize-py](https://pypi.org/project/componentize-py/) against the WIT this crate was
//! compiled with. `qi-host build-py` and the bundled-guest build both use it, so a Python agent
//! is always built against the host's own contract and its author needs no WIT.
//!
//! componentize-py (0.25.1 tested, see [`COMPONENTIZE_PY_VERSION`]) is found through
//! `$QI_COMPONENTIZE_PY`, else `componentize-py` on `PATH` ([`find_componentize_py`]). It
//! bundles CPython, the Python standard library, the SDK, and every module under the app's
//! directory into one component (about 18 MB), and pre-initializes it: the app module is
//! imported at build time, so an import error or an app without exactly one `Agent` subclass
//! fails the build, not the first run.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The componentize-py version this crate is tested with (`pip install componentize-py==…`).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The world every agent component implements.
pub const WORLD: &str = "qi:agent/agent";

/// The host's WIT files, as `(file name, text)`: the contract is pinned at compile time.
pub const WIT_FILES: &[(&str, &str)] = &[
    ("budget.wit", include_str!("../../wit/budget.wit")),
    ("channels.wit", include_str!("../../wit/channels.wit")),
    ("context.wit", include_str!("../../wit/context.wit")),
    ("events.wit", include_str!("../../wit/events.wit")),
    ("llm.wit", include_str!("../../wit/llm.wit")),
    ("log.wit", include_str!("../../wit/log.wit")),
    ("sync.wit", include_str!("../../wit/sync.wit")),
    ("tools.wit", include_str!("../../wit/tools.wit")),
    ("types.wit", include_str!("../../wit/types.wit")),
    ("world.wit", include_str!("../../wit/world.wit")),
];

/// The `qi_agent` package (`guest-sdk-py/qi_agent`), as `(file name, text)`.
pub const SDK_FILES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../guest-sdk-py/qi_agent/__init__.py"),
    ),
    (
        "_world.py",
        include_str!("../../guest-sdk-py/qi_agent/_world.py"),
    ),
    (
        "agent.py",
        include_str!("../../guest-sdk-py/qi_agent/agent.py"),
    ),
    (
        "budget.py",
        include_str!("../../guest-sdk-py/qi_agent/budget.py"),
    ),
    (
        "channels.py",
        include_str!("../../guest-sdk-py/qi_agent/channels.py"),
    ),
    (
        "context.py",
        include_str!("../../guest-sdk-py/qi_agent/context.py"),
    ),
    (
        "errors.py",
        include_str!("../../guest-sdk-py/qi_agent/errors.py"),
    ),
    (
        "events.py",
        include_str!("../../guest-sdk-py/qi_agent/events.py"),
    ),
    ("llm.py", include_str!("../../guest-sdk-py/qi_agent/llm.py")),
    ("log.py", include_str!("../../guest-sdk-py/qi_agent/log.py")),
    (
        "py.typed",
        include_str!("../../guest-sdk-py/qi_agent/py.typed"),
    ),
    (
        "sync.py",
        include_str!("../../guest-sdk-py/qi_agent/sync.py"),
    ),
    (
        "task.py",
        include_str!("../../guest-sdk-py/qi_agent/task.py"),
    ),
    (
        "tools.py",
        include_str!("../../guest-sdk-py/qi_agent/tools.py"),
    ),
];

/// The entry module's name: it imports the app and exports its agent as `WitWorld`.
const ENTRY_MODULE: &str = "_qi_agent_entry";

/// Names an app module may not take: the SDK, the entry module, and what componentize-py's
/// generated bindings are called.
const RESERVED_MODULES: &[&str] = &[
    "qi_agent",
    ENTRY_MODULE,
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "componentize_py_async_support",
    "poll_loop",
];

/// At most this many `.py` files are copied from the app's directory.
pub const MAX_APP_FILES: usize = 2_000;
/// At most this many bytes of `.py` files are copied from the app's directory.
pub const MAX_APP_BYTES: u64 = 32 << 20;
/// Packages are copied to at most this depth under the app's directory.
const MAX_APP_DEPTH: usize = 8;

/// At most this many bytes of componentize-py's output are kept in a [`BuildError`].
const MAX_TOOL_OUTPUT: usize = 16 * 1024;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The app path is not a readable `.py` file with a usable module name.
    #[error("{0}")]
    App(String),
    /// componentize-py is not installed or not runnable.
    #[error(
        "componentize-py was not found ({0}); install it with `pip install \
         componentize-py=={COMPONENTIZE_PY_VERSION}` (a virtual environment is fine: put its \
         bin/ on PATH) or point QI_COMPONENTIZE_PY at the executable"
    )]
    ToolMissing(String),
    /// componentize-py ran and failed; `output` is the end of what it printed (a Python
    /// traceback when the app failed to import).
    #[error("componentize-py failed ({status}) building {app}:\n{output}")]
    Componentize {
        /// The app file.
        app: String,
        /// The exit status.
        status: String,
        /// The last [`MAX_TOOL_OUTPUT`] bytes of its stderr and stdout.
        output: String,
    },
    /// Reading or writing files failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The app module, e.g. `app.py`. The `.py` files of its directory (and of packages under
    /// it) are copied into the build and go on the Python path, so modules next to it can be
    /// imported (see [`copy_app_sources`] for what is skipped and the bounds).
    pub app: PathBuf,
    /// Where to write the component. Written atomically: a failed build leaves an existing
    /// file untouched.
    pub output: PathBuf,
    /// The componentize-py executable; [`find_componentize_py`] when `None`.
    pub componentize_py: Option<PathBuf>,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    /// The component written.
    pub output: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The app's module name.
    pub module: String,
}

/// The componentize-py to run: `$QI_COMPONENTIZE_PY` when set, else `componentize-py` found on
/// `PATH`.
///
/// # Errors
///
/// [`BuildError::ToolMissing`] saying where it looked.
pub fn find_componentize_py() -> Result<PathBuf, BuildError> {
    if let Some(path) = std::env::var_os("QI_COMPONENTIZE_PY") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(BuildError::ToolMissing(format!(
                "QI_COMPONENTIZE_PY={} is not a file",
                path.display()
            )))
        };
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|dir| dir.join("componentize-py"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            BuildError::ToolMissing("not on PATH, and QI_COMPONENTIZE_PY is unset".into())
        })
}

/// The module name of app file `app`: its stem, which must be a Python identifier and not a
/// reserved name.
///
/// # Errors
///
/// [`BuildError::App`] naming the problem and the fix.
pub fn module_name(app: &Path) -> Result<String, BuildError> {
    if app.extension().and_then(|e| e.to_str()) != Some("py") {
        return Err(BuildError::App(format!(
            "{}: the app must be a Python file ending in .py",
            app.display()
        )));
    }
    let stem = app
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let identifier = stem
        .chars()
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && stem.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
    if !identifier {
        return Err(BuildError::App(format!(
            "{}: the file name must be a Python module name (letters, digits and _, not \
             starting with a digit), e.g. app.py",
            app.display()
        )));
    }
    if RESERVED_MODULES.contains(&stem.as_str()) {
        return Err(BuildError::App(format!(
            "{}: `{stem}` is a module name qi-agent uses itself; rename the file (e.g. app.py)",
            app.display()
        )));
    }
    Ok(stem)
}

/// Writes the WIT, the SDK and the entry module for `module` into `dir`; returns the WIT
/// directory, the SDK directory and the entry directory.
fn stage(dir: &Path, module: &str) -> Result<(PathBuf, PathBuf, PathBuf), BuildError> {
    let wit = dir.join("wit");
    let sdk = dir.join("sdk");
    let package = sdk.join("qi_agent");
    let entry = dir.join("entry");
    for d in [&wit, &package, &entry] {
        fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    for (name, text) in WIT_FILES {
        fs::write(wit.join(name), text).map_err(io(format!("writing {name}")))?;
    }
    for (name, text) in SDK_FILES {
        fs::write(package.join(name), text).map_err(io(format!("writing {name}")))?;
    }
    let entry_text = format!(
        "# Generated by qi-build-py: exports the qi_agent.Agent subclass of `{module}`.\n\
         from qi_agent._world import export\n\nWitWorld = export({module:?})\n"
    );
    fs::write(entry.join(format!("{ENTRY_MODULE}.py")), entry_text)
        .map_err(io("writing the entry module"))?;
    Ok((wit, sdk, entry))
}

/// Builds `options.app` into a component at `options.output`.
///
/// # Errors
///
/// [`BuildError::App`] for a bad app path, [`BuildError::ToolMissing`],
/// [`BuildError::Componentize`] with componentize-py's output (a Python traceback when the
/// app did not import), [`BuildError::Io`].
pub fn build(options: &BuildOptions) -> Result<Built, BuildError> {
    let module = module_name(&options.app)?;
    let app = fs::canonicalize(&options.app).map_err(|e| {
        BuildError::App(format!(
            "{}: cannot read the app: {e}",
            options.app.display()
        ))
    })?;
    if !app.is_file() {
        return Err(BuildError::App(format!("{}: not a file", app.display())));
    }
    let app_dir = app.parent().expect("a file has a parent").to_path_buf();
    let mut app_files = Vec::new();
    collect_py(&app_dir, 0, &mut app_files)?;
    let tool = match &options.componentize_py {
        Some(tool) => tool.clone(),
        None => find_componentize_py()?,
    };

    let out_dir = match options.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&out_dir).map_err(io(format!("creating {}", out_dir.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".qi-build-py-")
        .tempdir_in(&out_dir)
        .map_err(io(format!(
            "creating a staging directory in {}",
            out_dir.display()
        )))?;
    let (wit, sdk, entry) = stage(staging.path(), &module)?;
    let sources = staging.path().join("app");
    copy_app_sources(&app_dir, &app_files, &sources)?;
    let partial = staging.path().join("component.wasm");

    let mut command = Command::new(&tool);
    command
        .arg("-d")
        .arg(&wit)
        .args(["-w", WORLD, "componentize"])
        .arg("-p")
        .arg(&sources)
        .arg("-p")
        .arg(&sdk)
        .arg("-p")
        .arg(&entry)
        .arg(ENTRY_MODULE)
        .arg("-o")
        .arg(&partial)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = command
        .output()
        .map_err(|e| BuildError::ToolMissing(format!("running {}: {e}", tool.display())))?;
    if !output.status.success() || !partial.is_file() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(BuildError::Componentize {
            app: app.display().to_string(),
            status: output.status.to_string(),
            output: tail(&text, MAX_TOOL_OUTPUT),
        });
    }
    fs::rename(&partial, &options.output)
        .map_err(io(format!("writing {}", options.output.display())))?;
    let bytes = fs::metadata(&options.output)
        .map_err(io(format!("reading {}", options.output.display())))?
        .len();
    Ok(Built {
        output: options.output.clone(),
        bytes,
        module,
    })
}

/// The last `limit` bytes of `text`, cut at a character boundary, marked when cut.
fn tail(text: &str, limit: usize) -> String {
    let text = text.trim_end();
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} earlier bytes]\n{}", &text[start..])
}

/// A digest of everything a build of `app` depends on besides componentize-py itself: the
/// WIT, the SDK, and the `.py` files under the app's directory. The bundled-guest build skips
/// a guest whose digest is unchanged.
///
/// # Errors
///
/// [`BuildError::Io`] when the app's directory cannot be read.
pub fn input_digest(app: &Path, tool_version: &str) -> Result<String, BuildError> {
    let mut hasher = Sha256::new();
    hasher.update(tool_version.as_bytes());
    for (name, text) in WIT_FILES.iter().chain(SDK_FILES) {
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    let dir = app.parent().unwrap_or(Path::new("."));
    let mut files = Vec::new();
    collect_py(dir, 0, &mut files)?;
    for file in files {
        let bytes = fs::read(&file).map_err(io(format!("reading {}", file.display())))?;
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    let mut hex = String::new();
    for b in hasher.finalize() {
        write!(hex, "{b:02x}").expect("writing to a String");
    }
    Ok(hex)
}

/// The `.py` files under `dir`, sorted: the app's own sources. Skipped: hidden entries,
/// `__pycache__`, virtual environments (a directory holding `pyvenv.cfg`), `node_modules`,
/// `target`, and directories deeper than 8 levels. Symbolic links are not followed.
///
/// # Errors
///
/// [`BuildError::App`] past [`MAX_APP_FILES`] files or [`MAX_APP_BYTES`] bytes (build from a
/// directory that holds only the agent), [`BuildError::Io`].
fn collect_py(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) -> Result<(), BuildError> {
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
                collect_py(&path, depth + 1, files)?;
            }
        } else if name.ends_with(".py") {
            files.push(path);
            if files.len() > MAX_APP_FILES {
                return Err(BuildError::App(format!(
                    "{} holds more than {MAX_APP_FILES} .py files; build from a directory \
                     that holds only the agent's sources",
                    dir.display()
                )));
            }
        }
    }
    Ok(())
}

/// Copies `files` (under `app_dir`) into `to`, keeping their relative paths.
///
/// # Errors
///
/// [`BuildError::App`] past [`MAX_APP_BYTES`], [`BuildError::Io`].
fn copy_app_sources(app_dir: &Path, files: &[PathBuf], to: &Path) -> Result<(), BuildError> {
    let mut total = 0u64;
    for file in files {
        let relative = file
            .strip_prefix(app_dir)
            .expect("collected under the app directory");
        let target = to.join(relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        total += fs::copy(file, &target).map_err(io(format!("copying {}", file.display())))?;
        if total > MAX_APP_BYTES {
            return Err(BuildError::App(format!(
                "the .py files under {} are over {} MiB; build from a directory that holds only \
                 the agent's sources",
                app_dir.display(),
                MAX_APP_BYTES >> 20
            )));
        }
    }
    Ok(())
}

/// What `<tool> --version` prints (trimmed), e.g. `componentize-py 0.25.1`.
///
/// # Errors
///
/// [`BuildError::ToolMissing`] when it cannot be run.
pub fn tool_version(tool: &Path) -> Result<String, BuildError> {
    let output = Command::new(tool)
        .arg("--version")
        .output()
        .map_err(|e| BuildError::ToolMissing(format!("running {}: {e}", tool.display())))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded lists are the directories' contents: a WIT or SDK file added without
    /// listing it here would silently be left out of every Python agent.
    #[test]
    fn embedded_files_are_the_directories() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (dir, ext, list) in [
            ("wit", "wit", WIT_FILES),
            ("guest-sdk-py/qi_agent", "py", SDK_FILES),
        ] {
            let mut on_disk: Vec<String> = fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(&format!(".{ext}")) || n == "py.typed")
                .collect();
            on_disk.sort();
            let listed: Vec<String> = list.iter().map(|(n, _)| (*n).to_owned()).collect();
            assert_eq!(listed, on_disk, "{dir}");
        }
    }

    #[test]
    fn module_names_are_checked() {
        assert_eq!(module_name(Path::new("x/app.py")).unwrap(), "app");
        assert_eq!(module_name(Path::new("my_agent2.py")).unwrap(), "my_agent2");
        for bad in [
            "app.txt",
            "app",
            "2app.py",
            "my-agent.py",
            "qi_agent.py",
            "wit_world.py",
        ] {
            let error = module_name(Path::new(bad)).unwrap_err().to_string();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn a_missing_tool_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app.py");
        fs::write(&app, "").unwrap();
        let error = build(&BuildOptions {
            app,
            output: dir.path().join("out.wasm"),
            componentize_py: Some(dir.path().join("no-such-tool")),
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("pip install componentize-py==0.25.1"),
            "{error}"
        );
        assert!(!dir.path().join("out.wasm").exists());
    }

    #[test]
    fn long_output_keeps_its_end() {
        let text = format!("{}END", "é".repeat(20_000));
        let cut = tail(&text, 100);
        assert!(cut.ends_with("END") && cut.starts_with("[… "), "{cut}");
        assert!(cut.len() < 140);
    }
}
