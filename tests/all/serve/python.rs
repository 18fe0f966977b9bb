//! Real MCP clients that no one here wrote, from PyPI, against `qi-host serve`:
//!
//! - the official MCP Python SDK (`mcp`), over stdio (it starts `qi-host serve --mcp-stdio`
//!   itself) and over Streamable HTTP: `tests/serve-clients/mcp_client.py` initializes, lists
//!   the tools, runs `hello`, runs `code-review` with progress notifications, reads the
//!   report's context resource and receives the update notification of a subscribed one;
//! - LangChain (`langchain-mcp-adapters`) and LlamaIndex (`llama-index-tools-mcp`) load the
//!   tools over MCP and call `run_agent`, `context_put` and `context_get` directly, with no
//!   model: `tests/serve-clients/frameworks.py`.
//!
//! The interpreter: `$QI_TEST_PYTHON`, else `.ci/venv/bin/python` (where CI installs the
//! packages). LangChain's adapters need `mcp` 1.x while the SDK tests and LlamaIndex use
//! `mcp` 2.x, so LangChain runs under `$QI_TEST_PYTHON_LANGCHAIN`, else the first of
//! `.ci/venv-langchain/bin/python` and the interpreter above that has its packages. Without
//! a usable interpreter a test (or framework) prints `skipped: ...` and returns, except under
//! `CI=true`, where that is a failure.
//!
//! The scripts synchronise on the server's own messages; their timeouts are hang guards.

use super::*;
use std::ffi::OsString;
use std::time::Duration;

/// A guard against a hung client: `code-review` runs seven agents, slowly in a debug build.
const CLIENT_GUARD: Duration = Duration::from_secs(900);

/// What the official SDK's test imports (`mcp` 2.x).
const SDK_IMPORTS: &str = "import anyio, httpx2; \
    from mcp import ClientSession, types; \
    from mcp.client.stdio import StdioServerParameters, stdio_client; \
    from mcp.client.streamable_http import streamable_http_client; \
    from mcp.shared.exceptions import MCPDeprecationWarning, MCPError";
/// What the LlamaIndex test imports.
const LLAMAINDEX_IMPORTS: &str = "import anyio; \
    from llama_index.tools.mcp import BasicMCPClient, McpToolSpec; \
    from mcp import types";
/// What the LangChain test imports.
const LANGCHAIN_IMPORTS: &str = "import anyio; \
    from langchain_core.messages import ToolMessage; \
    from langchain_mcp_adapters.client import MultiServerMCPClient";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script(name: &str) -> PathBuf {
    repo().join("tests/serve-clients").join(name)
}

/// `$var` when set; else the venv's interpreters in order.
fn candidates(var: &str, venvs: &[&str]) -> Vec<PathBuf> {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => vec![PathBuf::from(p)],
        _ => venvs
            .iter()
            .map(|v| repo().join(".ci").join(v).join("bin/python"))
            .collect(),
    }
}

/// The first of `candidates` that runs `imports`; `None` (after printing why) when there is
/// none, a panic instead under `CI=true`.
fn interpreter(candidates: &[PathBuf], imports: &str) -> Option<PathBuf> {
    let mut why = Vec::new();
    for python in candidates {
        if !python.exists() {
            why.push(format!("{} does not exist", python.display()));
            continue;
        }
        match std::process::Command::new(python)
            .args(["-c", imports])
            .output()
        {
            Ok(out) if out.status.success() => return Some(python.clone()),
            Ok(out) => why.push(format!(
                "{} cannot `{imports}`: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            )),
            Err(e) => why.push(format!("{} does not run: {e}", python.display())),
        }
    }
    let why = why.join("; ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("no Python with the MCP client packages under CI: {why}");
    }
    eprintln!("skipped: no Python with the MCP client packages ({why}); set QI_TEST_PYTHON");
    None
}

fn sdk_python() -> Option<PathBuf> {
    interpreter(&candidates("QI_TEST_PYTHON", &["venv"]), SDK_IMPORTS)
}

/// Runs `python script args...` to its end (asynchronously: the in-process server goes on
/// serving) and returns its summary, the JSON of its last stdout line; panics with everything
/// it printed unless it exits 0 with `"ok": true`.
async fn run_client(python: &Path, script: &Path, args: Vec<OsString>) -> Value {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script)
        .args(args)
        .env("QI_HOST_CACHE_DIR", cache_dir())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(CLIENT_GUARD, cmd.output()).await {
        Ok(out) => out.expect("python runs"),
        Err(_) => panic!(
            "{} did not end within {} s",
            script.display(),
            CLIENT_GUARD.as_secs()
        ),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = || {
        format!(
            "{} exited with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            script.display(),
            out.status
        )
    };
    assert!(out.status.success(), "{}", report());
    let summary: Value = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary line\n{}", report()));
    assert_eq!(summary["ok"], true, "{}", report());
    println!(
        "{}: {summary}",
        script.file_name().unwrap().to_string_lossy()
    );
    summary
}

/// The checks of `mcp_client.py`'s summary that do not depend on the transport.
fn assert_sdk_summary(summary: &Value, transport: &str) {
    assert_eq!(summary["transport"], transport, "{summary}");
    assert_eq!(summary["protocolVersion"], "2025-11-25", "{summary}");
    assert!(summary["tools"].as_u64().unwrap() >= 13, "{summary}");
    assert!(summary["progress"].as_u64().unwrap() >= 1, "{summary}");
    let run_id = summary["runId"].as_str().unwrap();
    assert!(!run_id.is_empty(), "{summary}");
    assert!(
        summary["updated"]
            .as_str()
            .unwrap()
            .starts_with("qi://context/notes/"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_mcp_client_works_over_stdio() {
    let Some(python) = sdk_python() else { return };
    let f = Fixture::new("", "");
    let summary = run_client(
        &python,
        &script("mcp_client.py"),
        vec![
            "--stdio".into(),
            env!("CARGO_BIN_EXE_qi-host").into(),
            "serve".into(),
            "--mcp-stdio".into(),
            "--config".into(),
            f.config_path().into(),
            "--data-dir".into(),
            f.data_dir().into(),
        ],
    )
    .await;
    assert_sdk_summary(&summary, "stdio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_mcp_client_works_over_http() {
    let Some(python) = sdk_python() else { return };
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let url = format!("{}/mcp", s.base);
    let summary = run_client(
        &python,
        &script("mcp_client.py"),
        vec!["--url".into(), url.into(), "--token".into(), ADMIN.into()],
    )
    .await;
    assert_sdk_summary(&summary, "http");
    // The run the client started is the server's, with the report it read.
    let run_id = summary["runId"].as_str().unwrap();
    let status = s.ok(ADMIN, "run_status", json!({"run_id": run_id})).await;
    assert_eq!(status["state"], "completed", "{status}");
    let report = s
        .ok(
            ADMIN,
            "context_get",
            json!({"id": format!("review/inventory/{run_id}")}),
        )
        .await;
    assert_eq!(report["doc"]["files"], 9, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn langchain_and_llamaindex_load_and_call_the_tools() {
    let llamaindex = interpreter(&candidates("QI_TEST_PYTHON", &["venv"]), LLAMAINDEX_IMPORTS);
    let mut langchain = candidates("QI_TEST_PYTHON_LANGCHAIN", &["venv-langchain"]);
    if std::env::var_os("QI_TEST_PYTHON_LANGCHAIN").is_none() {
        langchain.extend(candidates("QI_TEST_PYTHON", &["venv"]));
    }
    let langchain = interpreter(&langchain, LANGCHAIN_IMPORTS);
    let runs: Vec<(&str, PathBuf)> = [("llamaindex", llamaindex), ("langchain", langchain)]
        .into_iter()
        .filter_map(|(framework, python)| Some((framework, python?)))
        .collect();
    if runs.is_empty() {
        return;
    }
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let url = format!("{}/mcp", s.base);
    for (framework, python) in runs {
        let summary = run_client(
            &python,
            &script("frameworks.py"),
            vec![
                "--url".into(),
                (&url).into(),
                "--token".into(),
                ALICE.into(),
                "--framework".into(),
                framework.into(),
            ],
        )
        .await;
        let done = &summary[framework];
        assert!(done["tools"].as_u64().unwrap() >= 13, "{summary}");
        // What the framework wrote through the tools is there, as alice's.
        let ctx = done["context"].as_str().unwrap();
        let got = s.ok(ALICE, "context_get", json!({"id": ctx})).await;
        assert_eq!(got["doc"]["framework"], framework, "{got}");
        assert_eq!(got["owner"], "client:alice", "{got}");
    }
}
