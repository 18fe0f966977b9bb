//! The bounds a client is held to, each with a pair: just inside passes, just past fails
//! with a clear error, and other clients are not affected.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_is_bounded_per_client() {
    // One token a minute after the burst: the bucket does not refill during the test.
    let f = Fixture::new("requests_per_second = 1\nburst = 3", "");
    let s = f.serve().await;
    for _ in 0..3 {
        s.ok(ALICE, "list_agents", json!({})).await;
    }
    let r = s
        .http
        .post(format!("{}/v1/tools/list_agents", s.base))
        .bearer_auth(ALICE)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = json_of(r).await;
    assert!(
        message(&body).contains("limits.requests_per_second"),
        "{body}"
    );
    // Bob has his own bucket.
    s.ok(BOB, "list_agents", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_in_progress_are_bounded_per_client() {
    let f = Fixture::new("max_runs_per_client = 1", "");
    let s = f.serve().await;
    // A run that sleeps until terminated.
    let started = s
        .ok(ALICE, "run_task", json!({"manifest": "slow", "inputs": {"nap.steps": [{"sleep_ms": 600000}]}, "wait": false}))
        .await;
    let run_id = started["runId"].as_str().unwrap().to_string();
    // Just past: a second run of alice's.
    let (status, body) = s
        .call(ALICE, "run_agent", json!({"agent": "hello", "task": "t"}))
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        message(&body).contains("limits.max_runs_per_client"),
        "{body}"
    );
    // Bob is not affected.
    s.ok(BOB, "run_agent", json!({"agent": "hello", "task": "t"}))
        .await;
    // Bob cannot see or stop alice's run.
    let (status, _) = s.call(BOB, "terminate", json!({"run_id": run_id})).await;
    assert_eq!(status, 404);
    // Terminated, the slot is free again: just inside, one run.
    s.ok(ALICE, "terminate", json!({"run_id": run_id})).await;
    let (mut status_rx, mut outcome) = s
        .server
        .run_watch(&caller("alice"), &run_id)
        .expect("alice sees her run");
    let _ = status_rx.borrow_and_update();
    crate::common::hang_guard("the terminated run ends", outcome.wait_for(Option::is_some))
        .await
        .unwrap();
    let st = s.ok(ALICE, "run_status", json!({"run_id": run_id})).await;
    assert_eq!(st["state"], "terminated", "{st}");
    // Its slot was given back before its end was announced.
    let out = s
        .ok(ALICE, "run_agent", json!({"agent": "hello", "task": "t"}))
        .await;
    assert!(out["output"].is_object(), "{out}");
}

/// Alice's caller, as the HTTP layer makes it.
fn caller(name: &str) -> qi_host::serve::Caller {
    qi_host::serve::Caller {
        id: format!("client:{name}"),
        name: name.into(),
        trust: qi_host::security::TrustLevel::Low,
        capabilities: vec![],
        operator: false,
        via: qi_host::serve::Via::Token,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arguments_of_a_call_are_bounded() {
    let f = Fixture::new("max_argument_bytes = 1024", "");
    let s = f.serve().await;
    let args = |n: usize| json!({"agent": "hello", "task": "t", "input": "y".repeat(n)});
    let base = serde_json::to_vec(&args(0)).unwrap().len();
    // Just inside: exactly 1024 bytes of JSON.
    let out = s.ok(ALICE, "run_agent", args(1024 - base)).await;
    assert!(out["output"].is_object());
    // Just past.
    let (status, body) = s.call(ALICE, "run_agent", args(1025 - base)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        message(&body).contains("limits.max_argument_bytes"),
        "{body}"
    );
}

#[test]
fn a_config_out_of_bounds_is_refused_naming_the_field() {
    for (limits, says) in [
        (
            "max_runs_per_client = 0",
            "config.limits.max_runs_per_client",
        ),
        ("max_body_bytes = 100", "config.limits.max_body_bytes"),
        (
            "requests_per_second = 0",
            "config.limits.requests_per_second",
        ),
        ("colour = 1", "unknown field `colour`"),
    ] {
        let f = Fixture::new(limits, "");
        let e = ServerConfig::load(&f.config_path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "`{e}` does not say `{says}`");
    }
    // A client named like the stdio operator, a short token.
    let f = Fixture::new("", "[clients.operator]\ntoken_file = \"alice.token\"\n");
    let e = ServerConfig::load(&f.config_path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`operator`"), "{e}");
    let f = Fixture::new("", "");
    std::fs::write(at(&f, "alice.token"), "short").unwrap();
    let config = ServerConfig::load(&f.config_path()).unwrap();
    let registry = qi_host::security::identity::IdentityRegistry::new("h", None);
    let e = qi_host::serve::caller::Auth::new(&config, registry)
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.clients.alice.token_file"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_share_one_bounded_rate_that_leaves_clients_alone() {
    let f = Fixture::new("requests_per_second = 1\nburst = 3", "");
    let s = f.serve().await;
    // Just inside: three refusals are answered (and audited) as refusals.
    for i in 0..3 {
        let (status, body) = s
            .call(&format!("wrong-{i}"), "list_agents", json!({}))
            .await;
        assert_eq!(status, 401, "{body}");
    }
    // Just past: the fourth is slowed down, whatever token it tries.
    let (status, body) = s.call("wrong-3", "list_agents", json!({})).await;
    assert_eq!(status, 429, "{body}");
    let r = s
        .http
        .get(format!("{}/v1/info", s.base))
        .send()
        .await
        .unwrap();
    // Sign-in has its own bucket, and clients with their tokens are not affected.
    assert_eq!(r.status().as_u16(), 200);
    s.ok(ALICE, "list_agents", json!({})).await;
    s.ok(BOB, "list_agents", json!({})).await;
}

#[test]
fn the_example_server_config_of_the_readme_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/serve/server.toml");
    let config = ServerConfig::load(&path).unwrap();
    assert!(config.agents.contains_key("hello"));
    assert!(config.agents.contains_key("file-stats"));
    assert!(config.manifests.contains_key("code-review"));
    assert_eq!(config.limits.max_sessions, 16);
}
