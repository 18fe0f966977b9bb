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

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod sources;
mod tool;

pub use sources::{MAX_APP_BYTES, MAX_APP_DEPTH, MAX_APP_FILES, collect_py, input_digest};
pub use tool::{MAX_TOOL_OUTPUT, find_componentize_py, tool_version};

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
        "_wire.py",
        include_str!("../../guest-sdk-py/qi_agent/_wire.py"),
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

/// How long one componentize-py build may take by default before it is killed (a build takes
/// 10 to 30 s on 2 cores; the first after an install longer).
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

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
    /// componentize-py ran past the timeout and was killed with its process group.
    #[error(
        "componentize-py did not finish building {app} within {seconds} s and was stopped; \
         a build takes 10 to 30 s, so look for an app that hangs on import (module-level \
         code runs at build time), or pass a longer timeout\n{output}"
    )]
    TimedOut {
        /// The app file.
        app: String,
        /// The timeout, in seconds.
        seconds: u64,
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
    /// imported (see [`collect_py`] for what is skipped and the bounds).
    pub app: PathBuf,
    /// Where to write the component. Written atomically: a failed build leaves an existing
    /// file untouched.
    pub output: PathBuf,
    /// The componentize-py executable; [`find_componentize_py`] when `None`.
    pub componentize_py: Option<PathBuf>,
    /// How long componentize-py may run before its whole process group is killed
    /// ([`BuildError::TimedOut`]).
    pub timeout: Duration,
}

impl BuildOptions {
    /// Builds `app` into `output` with componentize-py found by [`find_componentize_py`] and
    /// [`DEFAULT_BUILD_TIMEOUT`].
    pub fn new(app: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        BuildOptions {
            app: app.into(),
            output: output.into(),
            componentize_py: None,
            timeout: DEFAULT_BUILD_TIMEOUT,
        }
    }
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

/// The generated entry module exporting `module`'s agent; `app_modules` are the top-level
/// modules of the app's directory. Part of every build's input digest.
pub(crate) fn entry_module(module: &str, app_modules: &[String]) -> String {
    // The app's directory comes first on the module path: a file there named like a standard
    // library module (json.py) would replace it for the SDK and CPython too. The entry module
    // refuses that at build time, before anything imports such a module.
    let names: Vec<String> = app_modules.iter().map(|n| format!("{n:?}")).collect();
    format!(
        "# Generated by qi-build-py: exports the qi_agent.Agent subclass of `{module}`.\n\
         import sys\n\n\
         _shadowing = sorted(set([{names}]) & set(sys.stdlib_module_names))\n\
         if _shadowing:\n    \
             raise ImportError(\n        \
                 \"these modules of the app's directory shadow the Python standard library \"\n        \
                 \"module of the same name: \" + \", \".join(_shadowing)\n        \
                 + \"; rename them (e.g. json.py -> app_json.py)\"\n    )\n\n\
         from qi_agent._world import export\n\n\
         WitWorld = export({module:?})\n",
        names = names.join(", ")
    )
}

/// Writes the WIT, the SDK and the entry module for `module` into `dir`; returns the WIT
/// directory, the SDK directory and the entry directory.
fn stage(
    dir: &Path,
    module: &str,
    app_modules: &[String],
) -> Result<(PathBuf, PathBuf, PathBuf), BuildError> {
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
    let entry_text = entry_module(module, app_modules);
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
    let app_files = collect_py(&app_dir)?;
    check_output(&options.output)?;
    let app_modules = sources::top_level_modules(&app_dir, &app_files);
    // The app's directory comes first on the module path: a module there named like the SDK
    // or the entry module would replace it (and the checks it makes).
    if let Some(taken) = app_modules
        .iter()
        .find(|m| RESERVED_MODULES.contains(&m.as_str()) && **m != module)
    {
        return Err(BuildError::App(format!(
            "{}: `{taken}` beside the app is a module name qi-agent uses itself (it would \
             replace the SDK or the generated entry); rename it",
            app_dir.display()
        )));
    }
    let tool = match &options.componentize_py {
        Some(tool) => tool.clone(),
        None => find_componentize_py()?,
    };

    let out_dir = match options.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&out_dir).map_err(io(format!("creating {}", out_dir.display())))?;
    // Staged in the system's temporary directory (removed when dropped, and never left in
    // the output directory by a build that was killed).
    // Hidden (a leading dot), so that an app directly in the temporary directory never
    // collects another build's staging as its sources.
    let staging = tempfile::Builder::new()
        .prefix(".qi-build-py-")
        .tempdir()
        .map_err(io("creating a staging directory"))?;
    let (wit, sdk, entry) = stage(staging.path(), &module, &app_modules)?;
    let app_sources = staging.path().join("app");
    sources::copy_app_sources(&app_dir, &app_files, &app_sources)?;
    let partial = staging.path().join("component.wasm");

    let mut command = Command::new(&tool);
    command
        .arg("-d")
        .arg(&wit)
        .args(["-w", WORLD, "componentize"])
        .arg("-p")
        .arg(&app_sources)
        .arg("-p")
        .arg(&sdk)
        .arg("-p")
        .arg(&entry)
        .arg(ENTRY_MODULE)
        .arg("-o")
        .arg(&partial)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let ran = tool::run(command, &tool, options.timeout)?;
    // Each stream was cut to its own end already: stderr (where errors go) first.
    let printed = || {
        [&ran.stderr, &ran.stdout]
            .iter()
            .map(|b| String::from_utf8_lossy(b).trim_end().to_owned())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let Some(status) = ran.status else {
        return Err(BuildError::TimedOut {
            app: app.display().to_string(),
            seconds: options.timeout.as_secs(),
            output: printed(),
        });
    };
    if !status.success() || !partial.is_file() {
        return Err(BuildError::Componentize {
            app: app.display().to_string(),
            status: status.to_string(),
            output: printed(),
        });
    }
    // Copied next to the output, then renamed over it: a reader never sees half a file.
    let mut next = tempfile::Builder::new()
        .prefix(".qi-build-py-")
        .suffix(".wasm")
        .tempfile_in(&out_dir)
        .map_err(io(format!("writing into {}", out_dir.display())))?;
    let mut from = fs::File::open(&partial).map_err(io("reading the built component"))?;
    std::io::copy(&mut from, next.as_file_mut())
        .map_err(io(format!("writing into {}", out_dir.display())))?;
    // The mode componentize-py gave its file (0644 under the usual umask), not the temporary
    // file's 0600: a component is read by whoever runs it.
    // Permission bits only: never setuid, setgid or sticky.
    let mode = from
        .metadata()
        .map_err(io("reading the built component"))?
        .permissions()
        .mode()
        & 0o777;
    next.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(format!("writing into {}", out_dir.display())))?;
    next.persist(&options.output).map_err(|e| BuildError::Io {
        what: format!("writing {}", options.output.display()),
        source: e.error,
    })?;
    let bytes = fs::metadata(&options.output)
        .map_err(io(format!("reading {}", options.output.display())))?
        .len();
    Ok(Built {
        output: options.output.clone(),
        bytes,
        module,
    })
}

/// Refuses an output path that would overwrite the app or one of its sources: every source
/// is a `.py` file, so a `.py` output is refused. (The output is renamed into place, so a
/// symbolic link named `agent.wasm` is replaced, never written through.)
fn check_output(output: &Path) -> Result<(), BuildError> {
    if output.extension().is_some_and(|e| e == "py") {
        return Err(BuildError::App(format!(
            "{}: the output is a component, not a Python file (it would overwrite the app's \
             sources); name it e.g. agent.wasm (-o agent.wasm)",
            output.display()
        )));
    }
    Ok(())
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
            componentize_py: Some(dir.path().join("no-such-tool")),
            ..BuildOptions::new(app, dir.path().join("out.wasm"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("pip install componentize-py==0.25.1"),
            "{error}"
        );
        assert!(!dir.path().join("out.wasm").exists());
    }
}
