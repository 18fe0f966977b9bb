//! `qi-host build-py`: a newcomer's app (with a helper module beside it) builds and runs; an
//! app that cannot be an agent fails the build with a message that says why.

use super::*;

fn build(app: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    qi_host_output(&[
        "build-py",
        app.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
}

/// `qi-host run-agent <wasm> --task t --input <input>`, with `--json` when `json`.
fn run_agent(wasm: &std::path::Path, input: &str, json: bool) -> std::process::Output {
    let mut args = vec![
        "run-agent",
        wasm.to_str().unwrap(),
        "--task",
        "t",
        "--input",
        input,
    ];
    if json {
        args.push("--json");
    }
    qi_host_output(&args)
}

/// The report of a successful `run-agent --json`.
fn report_of(wasm: &std::path::Path, input: &str) -> serde_json::Value {
    let o = run_agent(wasm, input, true);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The app of README's "Writing an agent in Python", built and run as the README says.
#[test]
fn the_readme_app_builds_and_runs() {
    if python("").is_none() {
        return;
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = &readme[readme.find("## Writing an agent in Python").unwrap()..];
    let code = section
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a python block in the section");
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(&app, code).unwrap();
    let out = dir.path().join("greeter.wasm");
    let o = build(&app, &out);
    assert!(o.status.success(), "{}", text(&o));
    let o = qi_host_output(&[
        "run-agent",
        out.to_str().unwrap(),
        "--task",
        "greet",
        "--input",
        r#"{"who":"qi"}"#,
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["output"],
        json!({"greeting": "hello, qi"}),
        "{report}"
    );
    let o = qi_host_output(&[
        "run-agent",
        out.to_str().unwrap(),
        "--task",
        "greet",
        "--input",
        r#"{"who":7}"#,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("input must be"), "{}", text(&o));
}

#[test]
fn an_app_with_a_helper_module_builds_and_runs() {
    if python("").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("words.py"),
        "def shout(text: str) -> str:\n    return text.upper() + '!'\n",
    )
    .unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(
        &app,
        r#"
from qi_agent import Agent, Task, log
from words import shout

class Shouter(Agent):
    name = "shouter"
    description = "Shouts its input."

    def run(self, task: Task):
        text = task.input_json()
        log.info("shouting", length=len(text))
        return {"shout": shout(text)}
"#,
    )
    .unwrap();
    let out = dir.path().join("shouter.wasm");
    let o = build(&app, &out);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("built "), "{}", text(&o));
    assert!(
        !dir.path().join("__pycache__").exists(),
        "the build wrote into the app's directory"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".qi-build-py"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let report = report_of(&out, r#""hello""#);
    assert_eq!(report["output"], json!({"shout": "HELLO!"}), "{report}");
}

#[test]
fn an_app_that_is_not_an_agent_fails_the_build_with_the_reason() {
    if python("").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wasm");
    std::fs::write(&out, b"previous build").unwrap();

    let none = dir.path().join("app.py");
    std::fs::write(
        &none,
        "from qi_agent import Agent\n\nclass Helper:\n    pass\n",
    )
    .unwrap();
    let o = build(&none, &out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("must define exactly one subclass of qi_agent.Agent (found: none)"),
        "{}",
        text(&o)
    );
    // A failed build leaves the previous component in place.
    assert_eq!(std::fs::read(&out).unwrap(), b"previous build");

    let broken = dir.path().join("broken.py");
    std::fs::write(&broken, "import no_such_module_here\n").unwrap();
    let o = build(&broken, &out);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("no_such_module_here"), "{}", text(&o));

    // A module beside the app named like a standard library module would replace it for the
    // SDK and CPython: refused at build time, naming it.
    let shadow = tempfile::tempdir().unwrap();
    let app = shadow.path().join("app.py");
    std::fs::write(
        &app,
        "from qi_agent import Agent

class A(Agent):
    name = 'a'
",
    )
    .unwrap();
    std::fs::write(
        shadow.path().join("json.py"),
        "raise SystemExit('shadowed')
",
    )
    .unwrap();
    let o = build(&app, &out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("shadow the Python standard library module of the same name: json;"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous build");
}

#[test]
fn bad_paths_and_a_missing_tool_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = build(&dir.path().join("my-agent.py"), &dir.path().join("o.wasm"));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("must be a Python module name"),
        "{}",
        text(&o)
    );

    let app = dir.path().join("app.py");
    std::fs::write(&app, "").unwrap();
    let o = qi_host_command()
        .args(["build-py", app.to_str().unwrap()])
        .env("QI_COMPONENTIZE_PY", dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("pip install componentize-py==0.25.1"),
        "{}",
        text(&o)
    );
    assert!(!dir.path().join("app.wasm").exists());

    // The output may not overwrite the app (nor any .py file); the app is untouched.
    std::fs::write(&app, "KEEP = 1\n").unwrap();
    let o = build(&app, &app);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("not a Python file"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&app).unwrap(), "KEEP = 1\n");

    // The timeout is bounded: 1 to 86400 s.
    for (secs, ok) in [("0", false), ("86401", false)] {
        let o = qi_host_output(&[
            "build-py",
            app.to_str().unwrap(),
            "-o",
            "x.wasm",
            "--timeout-secs",
            secs,
        ]);
        assert_eq!(o.status.success(), ok, "{}", text(&o));
        assert!(text(&o).contains("--timeout-secs"), "{}", text(&o));
    }
}

/// componentize-py runs in a process group of its own (so the timeout can kill all of it): a
/// `qi-host build-py` that dies (Ctrl-C, SIGKILL) takes it along instead of leaving it running
/// with nothing to stop it. The stand-in tool holds a FIFO open for writing; the test's read of
/// it ends (EOF) only when the tool is gone.
#[test]
fn a_killed_build_py_takes_componentize_py_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(&app, "").unwrap();
    let ready = dir.path().join("ready");
    let held = dir.path().join("held");
    for fifo in [&ready, &held] {
        let made = std::process::Command::new("mkfifo")
            .arg(fifo)
            .status()
            .unwrap();
        assert!(made.success());
    }
    let tool = dir.path().join("tool.sh");
    std::fs::write(
        &tool,
        format!(
            "#!/bin/sh\necho up > {}\nexec sleep 100000 > {}\n",
            ready.display(),
            held.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut build = qi_host_command()
        .args(["build-py", app.to_str().unwrap(), "-o"])
        .arg(dir.path().join("agent.wasm"))
        .env("QI_COMPONENTIZE_PY", &tool)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The tool is running once it has said so and opened `held` (both block until we open).
    assert_eq!(std::fs::read_to_string(&ready).unwrap(), "up\n");
    let mut held = std::fs::File::open(&held).unwrap();
    build.kill().unwrap();
    build.wait().unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut held, &mut rest).unwrap();
    assert!(rest.is_empty());
}
