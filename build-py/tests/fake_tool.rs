//! `qi_build_py::build` against stand-ins for componentize-py (shell scripts): the bounds on
//! its time and output, and what the build refuses before running it.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qi_build_py::{BuildError, BuildOptions, MAX_TOOL_OUTPUT, build, collect_py};

/// An executable script `name` in `dir` with `body` after the shebang.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// An app directory holding `app.py`.
fn app_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    fs::write(&app, "from qi_agent import Agent\n").unwrap();
    (dir, app)
}

/// Builds `app` with `tool` (default timeout) into `<app dir>/agent.wasm`, expecting the tool
/// to fail; its status and kept output.
#[track_caller]
fn tool_failure(app: &Path, tool: PathBuf) -> (String, String) {
    let out = app.with_file_name("agent.wasm");
    let error = build(&BuildOptions {
        componentize_py: Some(tool),
        ..BuildOptions::new(app, out)
    })
    .unwrap_err();
    match error {
        BuildError::Componentize { status, output, .. } => (status, output),
        other => panic!("expected componentize-py's failure, got {other}"),
    }
}

/// A build that hangs (and starts a child that would outlive it) is killed at the timeout
/// with its whole process group; the output file is never written.
#[test]
fn a_hanging_build_is_killed_with_its_children_at_the_timeout() {
    let (dir, app) = app_dir();
    let pid_file = dir.path().join("child.pid");
    let tool = script(
        dir.path(),
        "hang.sh",
        &format!(
            "sleep 3600 &\necho $! > {}\necho building...\nwait",
            pid_file.display()
        ),
    );
    let out = dir.path().join("out").join("agent.wasm");
    let error = build(&BuildOptions {
        componentize_py: Some(tool),
        timeout: Duration::from_secs(3),
        ..BuildOptions::new(&app, &out)
    })
    .unwrap_err();
    let BuildError::TimedOut {
        seconds, output, ..
    } = &error
    else {
        panic!("expected a timeout, got {error}");
    };
    assert_eq!(*seconds, 3);
    assert_eq!(output, "building...");
    assert!(error.to_string().contains("within 3 s"), "{error}");
    assert!(!out.exists());
    // The grandchild was killed with the group: gone, or a zombie left for its new parent to
    // reap (in a container PID 1 may never reap it), never running.
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next();
    let alive = matches!(state, Some(s) if s != "Z" && s != "X");
    assert!(!alive, "the build's child {pid} outlived the timeout");
}

/// A tool that fails within the timeout is a `Componentize` error, not a timeout: the pair of
/// the test above.
#[test]
fn a_build_that_ends_in_time_is_judged_by_its_status() {
    let (dir, app) = app_dir();
    let tool = script(dir.path(), "fail.sh", "echo 'no luck' >&2\nexit 3");
    let (status, output) = tool_failure(&app, tool);
    assert!(status.contains('3'), "{status}");
    assert_eq!(output, "no luck");
}

/// Output far past the bound is read to its end but only its last MAX_TOOL_OUTPUT bytes are
/// kept, marked; output of exactly the bound is kept whole.
#[test]
fn tool_output_keeps_only_its_end() {
    let (dir, app) = app_dir();
    // 8 MiB of x on stderr, then the line that matters.
    let tool = script(
        dir.path(),
        "loud.sh",
        "head -c 8388608 /dev/zero | tr '\\0' x >&2\necho 'the real error' >&2\nexit 1",
    );
    let (_, output) = tool_failure(&app, tool);
    assert!(output.ends_with("the real error"), "{}", &output[..80]);
    assert!(output.starts_with("[… "), "{}", &output[..80]);
    assert!(output.len() <= MAX_TOOL_OUTPUT + 64, "{}", output.len());

    let exact = script(
        dir.path(),
        "exact.sh",
        &format!("head -c {MAX_TOOL_OUTPUT} /dev/zero | tr '\\0' y >&2\nexit 1"),
    );
    let (_, output) = tool_failure(&app, exact);
    assert_eq!(output, "y".repeat(MAX_TOOL_OUTPUT));
}

/// The output may not be a Python file (every source of the app is one), however spelled;
/// the tool never runs then.
#[test]
fn an_output_over_the_sources_is_refused() {
    let (dir, app) = app_dir();
    let ran = dir.path().join("ran");
    let tool = script(dir.path(), "tool.sh", &format!("touch {}", ran.display()));
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    for output in [
        app.clone(),
        dir.path().join("other.py"),
        sub.join("..").join("app.py"),
    ] {
        let error = build(&BuildOptions {
            componentize_py: Some(tool.clone()),
            ..BuildOptions::new(&app, &output)
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("not a Python file"), "{error}");
    }
    assert!(!ran.exists(), "the tool ran");
    assert_eq!(
        fs::read_to_string(&app).unwrap(),
        "from qi_agent import Agent\n"
    );
}

/// Only regular `.py` files are sources: a FIFO named `x.py` (which would block a reader
/// forever) is skipped, as is a directory named `y.py`.
#[test]
fn a_fifo_named_like_a_source_is_skipped() {
    let (dir, app) = app_dir();
    let fifo = dir.path().join("trap.py");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    fs::create_dir(dir.path().join("y.py")).unwrap();
    fs::write(dir.path().join("helper.py"), "X = 1\n").unwrap();
    let files = collect_py(dir.path()).unwrap();
    assert_eq!(files, vec![app.clone(), dir.path().join("helper.py")]);
    // The digest reads only those.
    let digest = qi_build_py::input_digest(&app, "v").unwrap();
    assert_eq!(digest.len(), 64);
}

/// The byte budget is checked on the listed sizes, before anything is read.
#[test]
fn sources_over_the_byte_budget_are_refused_before_reading() {
    let (dir, app) = app_dir();
    let big = fs::File::create(dir.path().join("big.py")).unwrap();
    big.set_len(qi_build_py::MAX_APP_BYTES).unwrap();
    let error = collect_py(dir.path()).unwrap_err().to_string();
    assert!(error.contains("over 32 MiB"), "{error}");
    // Just inside: the app's own bytes plus big.py at the budget minus them.
    let app_len = fs::metadata(&app).unwrap().len();
    fs::File::options()
        .write(true)
        .open(dir.path().join("big.py"))
        .unwrap()
        .set_len(qi_build_py::MAX_APP_BYTES - app_len)
        .unwrap();
    assert_eq!(collect_py(dir.path()).unwrap().len(), 2);
}

/// A process the tool started that leaves the process group (`setsid`) and keeps the output
/// pipes open does not hold the build: its output is read for a short grace period only.
#[test]
fn a_process_escaping_the_group_does_not_hold_the_build() {
    let (dir, app) = app_dir();
    let pid_file = dir.path().join("escaped.pid");
    let tool = script(
        dir.path(),
        "escape.sh",
        &format!(
            "setsid sleep 600 &\necho $! > {}\necho 'failed early' >&2\nexit 1",
            pid_file.display()
        ),
    );
    let (_, output) = tool_failure(&app, tool);
    let escaped = fs::read_to_string(&pid_file).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", escaped.trim()])
        .status();
    assert_eq!(output, "failed early");
}

/// A build that succeeds is renamed into place with the permission bits the tool gave its file
/// (0644 here), not a temporary file's 0600, and never setuid or setgid (6644 here).
#[test]
fn a_built_component_keeps_the_tools_file_mode() {
    let (dir, app) = app_dir();
    let tool = script(
        dir.path(),
        "ok.sh",
        "for last; do :; done\nprintf 'component' > \"$last\"\nchmod 6644 \"$last\"",
    );
    let out = dir.path().join("agent.wasm");
    let built = build(&BuildOptions {
        componentize_py: Some(tool),
        ..BuildOptions::new(&app, &out)
    })
    .unwrap();
    assert_eq!(built.bytes, 9);
    assert_eq!(fs::read(&out).unwrap(), b"component");
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

/// A module or package beside the app named like the SDK or the entry module would replace
/// it: refused before the tool runs.
#[test]
fn modules_named_like_the_sdk_are_refused() {
    for (name, package) in [
        ("_qi_agent_entry", false),
        ("qi_agent", true),
        ("wit_world", false),
    ] {
        let (dir, app) = app_dir();
        if package {
            fs::create_dir(dir.path().join(name)).unwrap();
            fs::write(dir.path().join(name).join("__init__.py"), "").unwrap();
        } else {
            fs::write(dir.path().join(format!("{name}.py")), "").unwrap();
        }
        let ran = dir.path().join("ran");
        let tool = script(dir.path(), "tool.sh", &format!("touch {}", ran.display()));
        let error = build(&BuildOptions {
            componentize_py: Some(tool),
            ..BuildOptions::new(&app, dir.path().join("agent.wasm"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(&format!("`{name}` beside the app")),
            "{error}"
        );
        assert!(!ran.exists());
    }
}

/// The entry module is told the app directory's top-level modules and regular packages (which
/// could shadow the standard library), not its namespace directories (which cannot).
#[test]
fn only_modules_and_regular_packages_are_checked_for_shadowing() {
    let (dir, app) = app_dir();
    fs::write(dir.path().join("json.py"), "").unwrap();
    for (package, init) in [("pkg", true), ("email", false)] {
        fs::create_dir(dir.path().join(package)).unwrap();
        fs::write(dir.path().join(package).join("mod.py"), "").unwrap();
        if init {
            fs::write(dir.path().join(package).join("__init__.py"), "").unwrap();
        }
    }
    // Prints the entry module (the argument before `_qi_agent_entry` is its directory).
    let tool = script(
        dir.path(),
        "show.sh",
        "prev=\nfor a; do\n  if [ \"$a\" = _qi_agent_entry ]; then cat \"$prev/_qi_agent_entry.py\" >&2; fi\n  prev=$a\ndone\nexit 1",
    );
    let (_, output) = tool_failure(&app, tool);
    assert!(
        output.contains(r#"set(["app", "json", "pkg"])"#),
        "{output}"
    );
}
