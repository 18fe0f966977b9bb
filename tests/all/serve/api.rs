//! The JSON API: running agents and manifests, identities, and bad input answered with one
//! clean error while the server goes on serving.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_agent_returns_the_output_and_the_usage_receipt() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let out = s
        .ok(
            ALICE,
            "run_agent",
            json!({"agent": "hello", "task": "say hi", "input": {"name": "qi"}}),
        )
        .await;
    assert_eq!(out["output"]["echo"], "say hi", "{out}");
    assert_eq!(out["output"]["input"]["name"], "qi", "{out}");
    assert!(out["usage"]["fuel_consumed"].as_u64().unwrap() > 0, "{out}");
    assert!(out["agent_id"].as_str().is_some(), "{out}");
    // The tool list carries a JSON Schema per tool.
    let r = s
        .http
        .get(format!("{}/v1/tools", s.base))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    let tools: Value = json_of(r).await;
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in [
        "list_agents",
        "run_agent",
        "run_task",
        "plan_task",
        "run_status",
        "terminate",
        "context_get",
        "context_put",
        "context_patch",
        "context_list",
        "context_history",
        "events_tail",
        "audit_query",
    ] {
        assert!(names.contains(&t), "missing {t} in {names:?}");
    }
    let run_agent = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "run_agent")
        .unwrap();
    assert_eq!(run_agent["inputSchema"]["type"], "object");
    assert!(
        run_agent["inputSchema"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("agent"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_agents_shows_describe_info_ceilings_and_manifests() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let out = s.ok(BOB, "list_agents", json!({})).await;
    let hello = out["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "hello")
        .unwrap();
    assert_eq!(hello["agent"]["name"], "hello");
    assert_eq!(hello["ceilings"]["fuel"], 100_000_000);
    assert_eq!(hello["ceilings"]["max_memory_mb"], 32);
    let manifests: Vec<&str> = out["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(manifests, ["code-review", "slow"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_may_lower_a_limit_to_the_ceiling_but_not_raise_it_past() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    // Just inside: the ceiling itself.
    let out = s
        .ok(ALICE, "run_agent", json!({"agent": "hello", "task": "t", "limits": {"fuel": 100_000_000, "max_memory_mb": 32}}))
        .await;
    assert!(out["output"].is_object(), "{out}");
    // Just past: one more.
    let (status, body) = s
        .call(
            ALICE,
            "run_agent",
            json!({"agent": "hello", "task": "t", "limits": {"fuel": 100_000_001}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("limits.fuel: 100000001 is above"),
        "{body}"
    );
    let (status, body) = s
        .call(
            ALICE,
            "run_agent",
            json!({"agent": "hello", "task": "t", "limits": {"max_memory_mb": 33}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("limits.max_memory_mb"), "{body}");
    // A lowered limit is the one enforced: too little fuel for hello.
    let out = s
        .ok(
            ALICE,
            "run_agent",
            json!({"agent": "hello", "task": "t", "limits": {"fuel": 1000}}),
        )
        .await;
    assert_eq!(out["status"], "failed", "{out}");
    assert!(out["failure"].to_string().contains("fuel"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_clean_error_and_the_server_goes_on() {
    let f = Fixture::new("max_body_bytes = 4096", "");
    let s = f.serve().await;
    let cases: Vec<(u16, Vec<u8>, &str, &str)> = vec![
        (400, b"{\"agent\": ".to_vec(), "run_agent", "not valid JSON"),
        (
            404,
            b"{}".to_vec(),
            "no_such_tool",
            "no tool `no_such_tool`",
        ),
        (
            400,
            br#"{"agent": "hello", "task": 5}"#.to_vec(),
            "run_agent",
            "arguments of `run_agent`: field `task`",
        ),
        (
            400,
            br#"{"agent": "hello", "task": "t", "colour": 1}"#.to_vec(),
            "run_agent",
            "unknown field `colour`",
        ),
        (
            404,
            br#"{"agent": "/tmp/evil.wasm", "task": "t"}"#.to_vec(),
            "run_agent",
            "never pass paths",
        ),
        (
            404,
            br#"{"manifest": "../examples/code-review/task.toml"}"#.to_vec(),
            "plan_task",
            "never pass paths",
        ),
        (
            413,
            format!(
                "{{\"agent\": \"hello\", \"task\": \"{}\"}}",
                "x".repeat(5000)
            )
            .into_bytes(),
            "run_agent",
            "too large",
        ),
    ];
    for (status, body, tool, says) in cases {
        let (got, answer) = s.post_raw(ALICE, &format!("/v1/tools/{tool}"), body).await;
        assert_eq!(got, status, "{tool}: {answer}");
        let m = message(&answer);
        assert!(m.contains(says), "{tool}: `{m}` does not say `{says}`");
        assert_eq!(m.lines().count(), 1, "{m}");
        s.still_serves().await;
    }
    // Just inside the body bound: a body of exactly 4096 bytes is read.
    let pad = 4096 - br#"{"agent": "hello", "task": ""}"#.len();
    let body = format!(
        "{{\"agent\": \"hello\", \"task\": \"{}\"}}",
        "x".repeat(pad)
    );
    assert_eq!(body.len(), 4096);
    let (status, answer) = s
        .post_raw(ALICE, "/v1/tools/run_agent", body.into_bytes())
        .await;
    assert_eq!(status, 200, "{answer}");
    // Tokens: missing, wrong.
    for token in ["", "not-a-token"] {
        let (status, answer) = s.call(token, "list_agents", json!({})).await;
        assert_eq!(status, 401, "{answer}");
        s.still_serves().await;
    }
    // A malformed JSON-RPC message to /mcp.
    let r = s
        .http
        .post(format!("{}/mcp", s.base))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body("{\"jsonrpc\": \"2.0\", \"method\": ")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    s.still_serves().await;
    // Without a token, /mcp is refused too.
    let r = s
        .http
        .post(format!("{}/mcp", s.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ed25519_identity_gets_a_session_and_a_replayed_credential_is_refused() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let info: Value = json_of(
        s.http
            .get(format!("{}/v1/info", s.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let host_id = info["hostId"].as_str().unwrap().to_string();
    let cred = credential(&host_id, "nonce-0001");
    let (status, body) = s
        .post_raw("", "/v1/auth/ed25519", cred.to_string().into_bytes())
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    let out = s
        .ok(&token, "run_agent", json!({"agent": "hello", "task": "t"}))
        .await;
    assert!(out["output"].is_object());
    // The same credential again: a replay.
    let (status, body) = s
        .post_raw("", "/v1/auth/ed25519", cred.to_string().into_bytes())
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("replay"), "{body}");
    // Signed for another host: refused.
    let other = credential("another-host", "nonce-0002");
    let (status, body) = s
        .post_raw("", "/v1/auth/ed25519", other.to_string().into_bytes())
        .await;
    assert_eq!(status, 401, "{body}");
    s.still_serves().await;
    // The session's requests are audited under the identity.
    s.server.audit().flush().await;
    let audit = s
        .ok(
            ADMIN,
            "audit_query",
            json!({"agent": "client:planner", "operation": "request"}),
        )
        .await;
    assert!(!audit["entries"].as_array().unwrap().is_empty(), "{audit}");
}
