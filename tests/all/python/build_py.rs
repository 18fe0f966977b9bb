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

    let o = qi_host_output(&[
        "run-agent",
        out.to_str().unwrap(),
        "--task",
        "shout",
        "--input",
        r#""hello""#,
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
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
}
