//! `examples/ai-review` through the binary: reviewers that ask a model (the loopback test
//! server standing in for a provider), then the same run again offline from its recordings.

use super::*;
use qi_llm_test_server::TestServer;
use serde_json::Value;

const KEY: &str = "sk-ai-review-test";

fn example() -> String {
    format!(
        "{}/../examples/ai-review/task.toml",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A configuration naming the server as provider `local` with alias `reviewer`, priced.
fn config(dir: &std::path::Path, server: &TestServer) -> std::path::PathBuf {
    let key = dir.join("key");
    std::fs::write(&key, KEY).unwrap();
    let path = dir.join("llm.toml");
    std::fs::write(
        &path,
        format!(
            "[providers.local]\nkind = \"openai\"\nbaseUrl = \"{}\"\napiKeyFile = \"{}\"\n\
             [models]\nreviewer = \"local/test-model\"\n\
             [prices.\"local/test-model\"]\ninputPerMillion = 1.0\noutputPerMillion = 2.0\n",
            server.base_url(),
            key.display()
        ),
    )
    .unwrap();
    path
}

async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        qi_host(&args)
    })
    .await
    .unwrap()
}

fn reviews(report: &Value) -> Vec<(String, Value)> {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["id"].as_str().unwrap().starts_with("review-"))
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["output"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_reviewers_vote_from_model_answers_and_the_run_replays_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(KEY).await;
    let cfg = config(dir.path(), &server);
    let base = vec![
        "run".to_string(),
        example(),
        "--data-dir".into(),
        data.display().to_string(),
        "--guest-dir".into(),
        crate::coord::guest_dir().display().to_string(),
        "--llm-config".into(),
        cfg.display().to_string(),
    ];
    let mut live = base.clone();
    live.push("--json".into());
    let o = run(live).await;
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let first: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(server.request_count(), 3, "one model call per reviewer");
    for r in server.requests() {
        assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
        assert_eq!(r.body["model"], "test-model");
        assert_eq!(r.body["response_format"]["type"], "json_schema");
    }
    let t = &first["metrics"]["totalResourceUsage"];
    assert_eq!(t["llmCalls"], 3, "{t}");
    assert_eq!(t["llmReplayed"], 0, "{t}");
    assert!(t["inputTokens"].as_u64().unwrap() > 0, "{t}");
    assert!(t["cost"].as_f64().unwrap() > 0.0, "{t}");
    let live_reviews = reviews(&first);
    assert_eq!(live_reviews.len(), 3);
    for (id, out) in &live_reviews {
        assert_eq!(out["review"]["model"], "local/test-model", "{id}: {out}");
        assert!(out["review"]["vote"].is_string(), "{id}: {out}");
    }

    // The tables name tokens and cost per agent.
    server.stop().await;
    let mut replay = base.clone();
    replay.push("--llm-replay".into());
    let text = run(replay.clone()).await;
    assert!(
        text.status.success(),
        "{}\n{}",
        stdout(&text),
        stderr(&text)
    );
    let out = stdout(&text);
    for part in [
        "model calls (per agent instance)",
        "review-todos#1",
        "run total",
    ] {
        assert!(out.contains(part), "missing `{part}` in\n{out}");
    }
    replay.push("--json".into());
    let o = run(replay).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let second: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let t = &second["metrics"]["totalResourceUsage"];
    assert_eq!(t["llmCalls"], 3, "{t}");
    assert_eq!(t["llmReplayed"], 3, "{t}");
    assert_eq!(t["cost"], 0.0, "replayed answers cost nothing: {t}");
    let replayed = reviews(&second);
    for ((id, a), (_, b)) in live_reviews.iter().zip(&replayed) {
        assert_eq!(a["review"]["vote"], b["review"]["vote"], "{id}");
        assert_eq!(a["review"]["reasons"], b["review"]["reasons"], "{id}");
        assert_eq!(b["review"]["replayed"], true, "{id}: {b}");
    }
}
