//! Contexts, events, audit and policies through the API: callers are principals like agents.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_creates_reads_patches_and_lists_its_context_and_others_cannot_read_it() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let created = s
        .ok(
            ALICE,
            "context_put",
            json!({"id": "notes/alice", "doc": {"a": 1}, "context_type": "notes"}),
        )
        .await;
    assert_eq!(created["version"], 1, "{created}");
    let got = s
        .ok(ALICE, "context_get", json!({"id": "notes/alice"}))
        .await;
    assert_eq!(got["doc"], json!({"a": 1}));
    assert_eq!(got["owner"], "client:alice");
    let patched = s
        .ok(
            ALICE,
            "context_patch",
            json!({"id": "notes/alice", "patch": {"b": 2}, "base_version": 1}),
        )
        .await;
    assert_eq!(patched["version"], 2, "{patched}");
    // A stale base is refused by the strong strategy.
    let (status, body) = s
        .call(
            ALICE,
            "context_put",
            json!({"id": "notes/alice", "doc": {}, "base_version": 1}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let history = s
        .ok(
            ALICE,
            "context_history",
            json!({"id": "notes/alice", "limit": 1}),
        )
        .await;
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    let (status, body) = s
        .call(
            ALICE,
            "context_history",
            json!({"id": "notes/alice", "limit": 1001}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let listed = s.ok(ALICE, "context_list", json!({})).await;
    assert!(
        listed["contexts"].to_string().contains("notes/alice"),
        "{listed}"
    );
    let events = s
        .ok(ALICE, "events_tail", json!({"context": "notes/alice"}))
        .await;
    assert!(events["events"].as_array().unwrap().len() >= 2, "{events}");
    // Bob: not his, not shared.
    let (status, body) = s
        .call(BOB, "context_get", json!({"id": "notes/alice"}))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = s
        .call(BOB, "events_tail", json!({"context": "notes/alice"}))
        .await;
    assert_eq!(status, 403);
    let listed = s.ok(BOB, "context_list", json!({})).await;
    assert!(
        !listed["contexts"].to_string().contains("notes/alice"),
        "{listed}"
    );
    // The operator client reads everything.
    let got = s
        .ok(ADMIN, "context_get", json!({"id": "notes/alice"}))
        .await;
    assert_eq!(got["doc"], json!({"a": 1, "b": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_apply_to_clients_as_principals_and_every_request_is_audited() {
    let f = Fixture::new("", "policies = \"policies.toml\"\n");
    // The config's top-level keys must come before its tables: rewrite with it first.
    let text = std::fs::read_to_string(f.config_path()).unwrap();
    let text = text.replace("policies = \"policies.toml\"\n", "");
    std::fs::write(
        f.config_path(),
        format!("policies = \"policies.toml\"\n{text}"),
    )
    .unwrap();
    std::fs::write(
        at(&f, "policies.toml"),
        r#"
[[policies]]
id = "clients"
[[policies.rules]]
effect = "allow"
resources = ["*"]
[[policies.rules]]
effect = "deny"
agents = ["client:bob"]
resources = ["agent/hello"]
actions = ["run"]
[[policies.rules]]
effect = "deny"
resources = ["audit/*"]
condition = "principal.trust < 3"
"#,
    )
    .unwrap();
    let s = f.serve().await;
    s.ok(ALICE, "run_agent", json!({"agent": "hello", "task": "t"}))
        .await;
    let (status, body) = s
        .call(BOB, "run_agent", json!({"agent": "hello", "task": "t"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        message(&body).contains("`client:bob` may not run agent/hello"),
        "{body}"
    );
    // Trust below high: no audit queries; admin (high) may.
    let (status, _) = s.call(ALICE, "audit_query", json!({})).await;
    assert_eq!(status, 403);
    s.server.audit().flush().await;
    let denied = s
        .ok(
            ADMIN,
            "audit_query",
            json!({"agent": "client:bob", "decision": "deny"}),
        )
        .await;
    assert!(
        denied["entries"].to_string().contains("agent/hello"),
        "{denied}"
    );
    let requests = s
        .ok(
            ADMIN,
            "audit_query",
            json!({"agent": "client:alice", "operation": "request"}),
        )
        .await;
    let resources: Vec<&str> = requests["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].as_str().unwrap())
        .collect();
    assert!(resources.contains(&"serve/run_agent"), "{resources:?}");
    assert!(resources.contains(&"serve/audit_query"), "{resources:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_is_not_the_operator_sees_only_its_own_audit_entries() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    s.ok(BOB, "list_agents", json!({})).await;
    s.server.audit().flush().await;
    let mine = s.ok(ALICE, "audit_query", json!({})).await;
    for e in mine["entries"].as_array().unwrap() {
        assert_eq!(e["agent"], "client:alice", "{e}");
    }
    let (status, body) = s
        .call(ALICE, "audit_query", json!({"agent": "client:bob"}))
        .await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_task_streams_its_status_as_server_sent_events_and_ends_with_the_report() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let started = s
        .ok(
            ALICE,
            "run_task",
            json!({"manifest": "slow", "wait": false}),
        )
        .await;
    let run_id = started["runId"].as_str().unwrap();
    let r = s
        .http
        .get(format!("{}/v1/runs/{run_id}/events", s.base))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = crate::common::hang_guard("the event stream ends", r.text())
        .await
        .unwrap();
    assert!(text.contains("event: status"), "{text}");
    let end = text
        .split("event: end\ndata: ")
        .nth(1)
        .expect("an end event")
        .lines()
        .next()
        .unwrap();
    let end: Value = serde_json::from_str(end).unwrap();
    assert_eq!(end["state"], "completed", "{end}");
    assert_eq!(end["report"]["coordinationId"], run_id);
    // Somebody else's run: not found.
    let r = s
        .http
        .get(format!("{}/v1/runs/{run_id}/events", s.base))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Inputs: a literal one may be given, a computed or unknown one not.
    let (status, body) = s
        .call(
            ALICE,
            "run_task",
            json!({"manifest": "slow", "inputs": {"nap.nope": 1}, "wait": false}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("inputs.nap.nope"), "{body}");
    let out = s
        .ok(
            ALICE,
            "run_task",
            json!({"manifest": "slow", "inputs": {"nap.steps": [{"sleep_ms": 1}]}}),
        )
        .await;
    assert_eq!(out["state"], "completed", "{out}");
}
