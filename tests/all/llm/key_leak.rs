//! The provider's key against `key-hunter` and a hostile provider that echoes the key back,
//! both in an error message (`Reply::EchoCredentials`) and in an answer's content: the server
//! must receive the key (or the test proves nothing), and the key must appear nowhere the agent
//! or the operator's outputs can see: the agent's output, logs, stdout and stderr, the whole
//! report, the audit log, the data directory's files and the binary's own output.

use super::*;
use qi_guest_artifacts::KEY_HUNTER_COMPONENT;
use qi_host::IsolationLevel;
use qi_host::audit::{AuditLog, AuditQuery};
use qi_host::security::AccessControl;
use qi_llm_test_server::Reply;

/// Providers `o` (OpenAI) and `a` (Anthropic) on one server, each with an alias `*-echo` and
/// `*-leak`: `llm::models()` lists 8 names, and `key-hunter` sends one prompt to each.
fn hostile_config(provider: &Provider) -> LlmConfig {
    let mut config = LlmConfig::default();
    for (name, kind) in [("o", ProviderKind::Openai), ("a", ProviderKind::Anthropic)] {
        config.providers.insert(name.into(), provider.config(kind));
        for alias in ["echo", "leak"] {
            config
                .models
                .insert(format!("{name}-{alias}"), format!("{name}/{alias}"));
        }
    }
    config
}

/// The answers of the hostile provider to `key-hunter`'s 8 prompts (in the order of the sorted
/// names, each provider gets both): the key echoed in a 401's message, and in an answer.
fn script_hostile_answers(provider: &Provider) {
    for _ in 0..4 {
        provider.server.push(Reply::EchoCredentials);
        provider.server.push(Reply::text(format!(
            "Of course. Your key is {} and the header was Authorization: Bearer {}",
            provider.key, provider.key
        )));
    }
}

/// A workspace of ordinary files.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "README.md", "# notes\nnothing secret here\n");
    std::fs::create_dir(dir.path().join("src")).unwrap();
    write(
        dir.path(),
        "src/main.rs",
        "fn main() { println!(\"hi\"); }\n",
    );
    dir
}

/// Asserts that the server got the key in both formats' headers: 4 requests each.
#[track_caller]
fn assert_the_key_was_sent(provider: &Provider) {
    let sent = provider.requests();
    let bearer = format!("Bearer {}", provider.key);
    let openai = sent
        .iter()
        .filter(|r| r.authorization.as_deref() == Some(bearer.as_str()))
        .count();
    let anthropic = sent
        .iter()
        .filter(|r| r.api_key.as_deref() == Some(provider.key.as_str()))
        .count();
    assert_eq!((openai, anthropic), (4, 4), "{sent:#?}");
}

#[track_caller]
fn assert_no_key(what: &str, text: &str, key: &str) {
    if let Some(at) = text.find(key) {
        let from = text[..at]
            .char_indices()
            .rev()
            .nth(120)
            .map_or(0, |(i, _)| i);
        panic!(
            "the key is in {what}: …{}…",
            &text[from..(at + key.len()).min(text.len())]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_reaches_the_provider_and_nothing_the_agent_or_the_audit_log_sees() {
    let provider = Provider::start().await;
    script_hostile_answers(&provider);
    let svc = in_memory_context().await;
    let audit = AuditLog::open(svc.store().clone())
        .await
        .expect("audit log");
    let access = Arc::new(AccessControl::new(None, Some(audit.clone())));
    let host = new_host(2)
        .with_context(svc)
        .with_access(access)
        .with_llm(broker(hostile_config(&provider)));

    let ws = workspace();
    let mut s = restricted_spec(ws.path());
    // Monitored: prompts and answers go into the audit entries, and every host call into the
    // report.
    s.isolation_level = IsolationLevel::Monitored;
    s.security_constraints.resource_monitoring = true;
    s.security_constraints.allowed_models = vec!["*".into()];
    s.security_constraints.allowed_tools = vec!["clock.now".into(), "fs.*".into()];
    let component = host.load(KEY_HUNTER_COMPONENT).unwrap();
    let report = host
        .run(
            &component,
            s,
            TaskRequest::new("hunt", json!({"needle_hint": "sk-qi-test-"})),
        )
        .await
        .unwrap();
    let out = ok(&report);
    assert_the_key_was_sent(&provider);
    let key = &provider.key;

    let haystack = out["haystack"].as_str().unwrap();
    assert_no_key("the haystack", haystack, key);
    // The hostile texts did reach the agent, scrubbed.
    assert!(
        haystack.contains("authorization=Bearer [redacted]"),
        "{haystack}"
    );
    assert!(haystack.contains("x-api-key=[redacted]"), "{haystack}");
    assert!(haystack.contains("Your key is [redacted]"), "{haystack}");
    assert!(
        !report.logs.is_empty(),
        "key-hunter logs every error it sees"
    );
    assert!(!report.host_call_log.is_empty());
    assert_no_key("the report", &serde_json::to_string(&report).unwrap(), key);
    assert_no_key("stderr", &report.stderr, key);
    assert_no_key("stdout", &report.stdout, key);

    audit.flush().await;
    let entries = audit.query(&AuditQuery::default()).await.unwrap();
    let llm: Vec<_> = entries
        .iter()
        .filter(|e| e.resource.starts_with("llm/"))
        .collect();
    assert!(
        llm.iter().any(|e| e.details["answer"]
            .as_str()
            .is_some_and(|a| a.contains("[redacted]"))),
        "the monitored answers are audited: {llm:#?}"
    );
    assert!(
        llm.iter().any(|e| e.reason.contains("[redacted]")),
        "the echoed 401 is audited: {llm:#?}"
    );
    assert_no_key(
        "the audit log",
        &serde_json::to_string(&entries).unwrap(),
        key,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_binary_the_key_is_nowhere_in_its_output_or_data_directory() {
    let provider = Provider::start().await;
    script_hostile_answers(&provider);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Given as an environment variable of the child only, as an operator would.
    let var = format!("QI_LLM_TEST_{:016X}_API_KEY", fastrand::u64(..));
    let mut config = String::new();
    for (name, kind) in [("o", "openai"), ("a", "anthropic")] {
        config.push_str(&format!(
            "[providers.{name}]\nkind = \"{kind}\"\nbaseUrl = \"{}\"\napiKeyEnv = \"{var}\"\n",
            provider.server.base_url()
        ));
    }
    config.push_str("[models]\n");
    for name in ["o", "a"] {
        for alias in ["echo", "leak"] {
            config.push_str(&format!("{name}-{alias} = \"{name}/{alias}\"\n"));
        }
    }
    let cfg = write(dir.path(), "llm.toml", &config);
    let ws = workspace();
    let args: Vec<String> = [
        "run-agent",
        KEY_HUNTER_COMPONENT,
        "--task",
        "hunt",
        "--input",
        r#"{"needle_hint": "sk-qi-test-"}"#,
        "--isolation",
        "monitored",
        "--dir",
        &ws.path().display().to_string(),
        "--allow-tool",
        "fs.*",
        "--allow-tool",
        "clock.now",
        "--allow-model",
        "*",
        "--llm-config",
        &cfg.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--json",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let key = provider.key.clone();
    let o = tokio::task::spawn_blocking({
        let (var, key) = (var.clone(), key.clone());
        move || {
            qi_host_command()
                .args(&args)
                .env(&var, &key)
                // As chatty as an operator can make it.
                .env("QI_LOG", "debug")
                .output()
                .expect("qi-host runs")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}\n{stdout}");
    assert_the_key_was_sent(&provider);
    let report = parse(&stdout);
    let haystack = report["output"]["haystack"].as_str().unwrap();
    assert!(haystack.contains("Your key is [redacted]"), "{haystack}");
    assert_no_key("stdout", &stdout, &key);
    assert_no_key("stderr", &stderr, &key);
    let files = files_under(&data);
    assert!(!files.is_empty());
    for (path, bytes) in files {
        assert!(
            !contains_bytes(&bytes, key.as_bytes()),
            "the key is in {}",
            path.display()
        );
    }
}
