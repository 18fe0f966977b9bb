//! The operator's model configuration through the binary: mistakes are one-line errors (exit 2)
//! naming the field, a manifest may not point at a key file, and `inspect` shows that the host
//! provides `qi:agent/llm`.

use super::*;
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts exit code 2 and a one-line error on stderr containing every one of `expect`.
#[track_caller]
fn one_line_error(o: &Output, expect: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for part in expect {
        assert!(err.contains(part), "`{err}` does not say `{part}`");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// `run-agent llm-agent` with `--llm-config` = a file of `config`, one call to `p/m1`.
fn run_agent_with_config(config: &str, env_remove: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "llm.toml", config);
    qi_host_command()
        .args([
            "run-agent",
            LLM_AGENT_COMPONENT,
            "--task",
            "ask",
            "--allow-model",
            "p/*",
            "--llm-config",
            cfg.to_str().unwrap(),
            "--input",
            r#"{"calls": [{"model": "p/m1", "prompt": "hi"}]}"#,
        ])
        .env_remove(env_remove)
        .output()
        .expect("qi-host runs")
}

#[test]
fn a_bad_base_url_is_refused_naming_the_field() {
    let o = run_agent_with_config(
        "[providers.p]\nkind = \"openai\"\nbaseUrl = \"ftp://models.example\"\n",
        "QI_HOST_LLM_CONFIG",
    );
    one_line_error(&o, &["llm.providers.p.baseUrl", "ftp://models.example"]);
}

#[test]
fn an_unknown_field_is_refused_naming_the_file() {
    let o = run_agent_with_config(
        "[providers.p]\nkind = \"openai\"\nbaseUrl = \"http://127.0.0.1:1\"\napiKey = \"sk-inline\"\n",
        "QI_HOST_LLM_CONFIG",
    );
    one_line_error(&o, &["--llm-config", "apiKey"]);
    // A key mistakenly written inline is not printed back.
    assert!(!stderr(&o).contains("sk-inline"), "{}", stderr(&o));
}

#[test]
fn a_missing_key_variable_is_refused_naming_the_field_and_the_variable() {
    let var = format!("QI_LLM_TEST_{:016X}_API_KEY", fastrand::u64(..));
    let o = run_agent_with_config(
        &format!(
            "[providers.p]\nkind = \"anthropic\"\nbaseUrl = \"http://127.0.0.1:1\"\napiKeyEnv = \"{var}\"\n"
        ),
        &var,
    );
    one_line_error(&o, &["llm.providers.p.apiKeyEnv", &var]);
}

/// `qi-host run` of a one-subtask manifest of `llm-agent` with this `[llm]` section; the data
/// directory it names must not be created for a manifest that is refused.
fn run_manifest_with_llm_section(llm: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(
        dir.path(),
        "task.toml",
        &format!(
            r#"
[task]
id = "t"
[strategy]
type = "parallel"
[agents.a]
component = "guest:llm-agent"
spec = {{ securityConstraints = {{ allowedModels = ["x/*"] }} }}
[[subtasks]]
id = "ask"
inputs = [{{ name = "calls", value = [{{ model = "x/m", prompt = "hi" }}] }}]
{llm}"#
        ),
    );
    let data = dir.path().join("data");
    let o = qi_host_command()
        .args([
            "run",
            manifest.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--guest-dir",
            crate::coord::guest_dir().to_str().unwrap(),
        ])
        .env_remove("QI_HOST_LLM_CONFIG")
        .output()
        .expect("qi-host runs");
    assert!(
        !data.exists(),
        "a refused manifest created its data directory"
    );
    o
}

#[test]
fn a_manifest_may_not_name_a_key_file() {
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "sk-from-a-file").unwrap();
    let o = run_manifest_with_llm_section(&format!(
        "[llm.providers.x]\nkind = \"openai\"\nbaseUrl = \"http://127.0.0.1:1\"\napiKeyFile = \"{}\"\n",
        key.path().display()
    ));
    one_line_error(&o, &["llm.providers.x.apiKeyFile", "--llm-config"]);
    assert!(!stderr(&o).contains("sk-from-a-file"));
}

#[test]
fn a_manifest_may_not_name_a_key_variable() {
    // Not even one that looks like an API key: the manifest chooses where requests go.
    for var in ["HOME", "OPENAI_API_KEY"] {
        let o = run_manifest_with_llm_section(&format!(
            "[llm.providers.x]\nkind = \"openai\"\nbaseUrl = \"http://127.0.0.1:1\"\napiKeyEnv = \"{var}\"\n"
        ));
        one_line_error(&o, &["llm.providers.x.apiKeyEnv", "--llm-config"]);
    }
}

#[test]
fn inspect_lists_the_llm_interface_among_what_the_host_provides() {
    let o = qi_host_output(&["inspect", LLM_AGENT_COMPONENT]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    let section = |heading: &str| -> Vec<&str> {
        lines
            .iter()
            .skip_while(|l| !l.starts_with(heading))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.trim())
            .collect()
    };
    assert!(
        section("host provides").contains(&"qi:agent/llm@0.1.0"),
        "{out}"
    );
    assert!(section("imports").contains(&"qi:agent/llm@0.1.0"), "{out}");
    assert!(out.contains("runnable  yes"), "{out}");

    let o = qi_host_output(&["inspect", LLM_AGENT_COMPONENT, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = parse(&stdout(&o));
    assert!(
        v["provides"]
            .as_array()
            .unwrap()
            .contains(&json!("qi:agent/llm@0.1.0")),
        "{v}"
    );
}
