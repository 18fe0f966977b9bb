//! Record and replay through the binary: `run-agent` and `run` record every answer in the data
//! directory; with `--llm-replay` the same requests are answered from the recordings, with
//! nothing sent and no key read, and a request never recorded fails as `unavailable`.

use super::*;
use std::process::Output;

/// A unique variable name for the key, set only in the live runs' environment.
fn key_var() -> String {
    format!("QI_LLM_TEST_{:016X}_API_KEY", fastrand::u64(..))
}

/// The `[providers.p]` (OpenAI, key in `var`) and `[models]` (`fast` = `p/m1`) tables, with
/// `prefix` before each table name (`llm.` in a manifest).
fn llm_tables(prefix: &str, server: &TestServer, var: &str) -> String {
    format!(
        "[{prefix}providers.p]\nkind = \"openai\"\nbaseUrl = \"{}\"\napiKeyEnv = \"{var}\"\n\
         [{prefix}models]\nfast = \"p/m1\"\n",
        server.base_url()
    )
}

/// Runs `qi-host args` off the runtime (the provider is served on it), with `env` set.
async fn qi_host(args: Vec<String>, env: Vec<(String, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        qi_host_command()
            .args(&args)
            .envs(env)
            .output()
            .expect("qi-host runs")
    })
    .await
    .unwrap()
}

/// The JSON on stdout of a run that must have succeeded.
#[track_caller]
fn report_of(o: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    parse(&stdout)
}

fn run_agent_args(cfg: &Path, data: &Path, calls: Value, replay: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "run-agent",
        LLM_AGENT_COMPONENT,
        "--task",
        "ask",
        "--allow-model",
        "p/*",
        "--llm-config",
        &cfg.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--json",
        "--input",
        &json!({ "calls": calls }).to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    if replay {
        args.push("--llm-replay".into());
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_agent_records_then_replays_offline_and_a_new_prompt_has_no_recording() {
    let key = new_key();
    let server = TestServer::start(&key).await;
    server.push(qi_llm_test_server::Reply::Text {
        content: "the recorded answer".into(),
        input_tokens: 21,
        output_tokens: 3,
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let var = key_var();
    let cfg = write(dir.path(), "llm.toml", &llm_tables("", &server, &var));
    let calls = json!([
        {"model": "fast", "prompt": "what is qi"},
        {"model": "p/m1", "prompt": "and then?", "maxTokens": 8},
    ]);

    let live = report_of(
        &qi_host(
            run_agent_args(&cfg, &data, calls.clone(), false),
            vec![(var.clone(), key.clone())],
        )
        .await,
    );
    let recorded = live["output"]["results"].as_array().unwrap().clone();
    assert_eq!(answered(&recorded[0])["content"], "the recorded answer");
    assert_eq!(answered(&recorded[1])["content"], "echo: and then?");
    assert_eq!(recorded[0]["replayed"], false);
    assert_eq!(server.request_count(), 2);
    assert_eq!(live["usage"]["llm_calls"], 2);
    assert_eq!(live["usage"]["llm_replayed"], 0);

    // Replayed while the provider still runs, so that its count shows nothing was sent; the
    // key variable is not set: replay reads no key.
    let replay =
        report_of(&qi_host(run_agent_args(&cfg, &data, calls.clone(), true), vec![]).await);
    let replayed = replay["output"]["results"].as_array().unwrap();
    for (a, b) in recorded.iter().zip(replayed) {
        let b = answered(b);
        for field in [
            "content",
            "model",
            "input_tokens",
            "output_tokens",
            "finish_reason",
        ] {
            assert_eq!(a[field], b[field], "{field}: {a} vs {b}");
        }
        assert_eq!(b["replayed"], true, "{b}");
    }
    assert_eq!(server.request_count(), 2, "nothing was sent");
    assert_eq!(replay["usage"]["llm_calls"], 2);
    assert_eq!(replay["usage"]["llm_replayed"], 2);
    assert_eq!(replay["usage"]["cost"], 0.0);

    // Offline: the same calls still answer; a changed prompt has nothing to replay.
    server.stop().await;
    let mut changed = calls.clone();
    changed
        .as_array_mut()
        .unwrap()
        .push(json!({"model": "fast", "prompt": "what is QI"}));
    let offline = report_of(&qi_host(run_agent_args(&cfg, &data, changed, true), vec![]).await);
    let results = offline["output"]["results"].as_array().unwrap();
    assert_eq!(answered(&results[0])["content"], "the recorded answer");
    assert_eq!(answered(&results[1])["content"], "echo: and then?");
    refused(&results[2], "unavailable", "no recording");
    refused(&results[2], "unavailable", "what is QI");
}

/// A run of two `llm-agent` subtasks whose provider is the manifest's own `[llm]` section.
/// Two subtasks asking model `fast`: the manifest names the alias; the provider, with its key,
/// is the operator's (`--llm-config`), since a manifest never names a key.
fn manifest() -> String {
    r#"
[task]
id = "ask-twice"
[strategy]
type = "parallel"
[agents.asker]
component = "guest:llm-agent"
spec = { securityConstraints = { allowedModels = ["fast"] } }
[[subtasks]]
id = "ask-a"
agent = "asker"
inputs = [{ name = "calls", value = [{ model = "fast", prompt = "first question" }] }]
[[subtasks]]
id = "ask-b"
agent = "asker"
inputs = [{ name = "calls", value = [{ model = "fast", prompt = "second question", maxTokens = 16 }] }]
[llm.models]
fast = "p/m1"
"#
        .to_string()
}

fn answers(report: &Value) -> Vec<(String, Value)> {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let id = s["id"].as_str().unwrap().to_string();
            let answer = s["output"]["results"][0].clone();
            (id, answer)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_run_records_and_replays_with_the_provider_gone() {
    let key = new_key();
    let server = TestServer::start(&key).await;
    let dir = tempfile::tempdir().unwrap();
    let var = key_var();
    let path = write(dir.path(), "task.toml", &manifest());
    let config = write(dir.path(), "llm.toml", &llm_tables("", &server, &var));
    let args = |replay: bool| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            path.display().to_string(),
            "--llm-config".into(),
            config.display().to_string(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--guest-dir".into(),
            crate::coord::guest_dir().display().to_string(),
            "--json".into(),
        ];
        if replay {
            a.push("--llm-replay".into());
        }
        a
    };

    let live = report_of(&qi_host(args(false), vec![(var.clone(), key.clone())]).await);
    assert_eq!(live["success"], true, "{live}");
    let recorded = answers(&live);
    assert_eq!(
        recorded
            .iter()
            .map(|(id, a)| (id.as_str(), answered(a)["content"].clone()))
            .collect::<Vec<_>>(),
        [
            ("ask-a", json!("echo: first question")),
            ("ask-b", json!("echo: second question")),
        ]
    );
    assert_eq!(server.request_count(), 2);
    for r in server.requests() {
        assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {key}")));
        assert_eq!(r.body["model"], "m1");
    }
    assert_eq!(live["metrics"]["totalResourceUsage"]["llmCalls"], 2);

    server.stop().await;
    let replay = report_of(&qi_host(args(true), vec![]).await);
    assert_eq!(replay["success"], true, "{replay}");
    for ((id, a), (_, b)) in recorded.iter().zip(answers(&replay)) {
        let b = answered(&b);
        assert_eq!(a["content"], b["content"], "{id}");
        assert_eq!(a["model"], b["model"], "{id}");
        assert_eq!(b["replayed"], true, "{id}: {b}");
    }
    let t = &replay["metrics"]["totalResourceUsage"];
    assert_eq!(t["llmCalls"], 2, "{t}");
    assert_eq!(t["llmReplayed"], 2, "{t}");
}
