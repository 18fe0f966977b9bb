//! What a guest's request can make the host do, and what it stores.

use super::*;
use qi_llm_test_server::Reply;

/// FINDING (precondition of the schema denial of service in `llm::redteam_tests`): the host
/// parses and compiles a guest's response-format schema (regexes included) before it looks at
/// the grant, the gate or any budget. An agent with no model at all gets `invalid-request`
/// naming its schema, not `access-denied`, and spends no call budget: it can make the host
/// compile schemas in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_without_any_model_cannot_make_the_host_compile_its_schema() {
    let rig = Rig::start(|_| {}).await;
    let call = json!({"model": "p/m", "prompt": "a",
                      "json_schema": {"type": "string", "pattern": "(unclosed"}});
    let report = rig.run(llm_spec(&[]), json!([call.clone(), call])).await;
    let r = results(&report);
    assert_eq!(rig.server.request_count(), 0);
    assert_eq!(report.usage.llm_calls, 0);
    for r in &r {
        assert_eq!(
            r["error_kind"], "access-denied",
            "an agent with no model had its schema compiled: {r}"
        );
    }
}

/// FINDING: model-call recordings are written to the data directory for every answer, with
/// the guest's whole request (up to 4 MiB each, `maxLlmCalls` of them), but are not counted
/// against the agent's host-stored-bytes bound (64 MiB, `MAX_STORED_BYTES_PER_AGENT`) that
/// every other guest-driven write to the store is: at the defaults one sandboxed agent can
/// write ~400 MB, at `monitored` ~400 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_requests_count_against_the_agents_stored_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = qi_host::Store::open(qi_host::StoreConfig::at(dir.path())).unwrap();
    let rig = Rig::with_recordings(Recordings::durable(store, None), |_| {}).await;
    let prompt = "x".repeat(1 << 20);
    let report = rig
        .run(
            llm_spec(&["p/*"]),
            json!([{"model": "p/m", "prompt": prompt, "maxTokens": 1}]),
        )
        .await;
    assert_eq!(results(&report)[0]["ok"], true);
    let on_disk: usize = files_under(dir.path()).iter().map(|(_, b)| b.len()).sum();
    assert!(
        on_disk >= 1 << 20,
        "the request was recorded ({on_disk} bytes on disk)"
    );
    assert!(
        report.usage.stored_bytes >= 1 << 20,
        "a 1 MiB request was recorded in the data directory; the receipt's stored_bytes is {}",
        report.usage.stored_bytes
    );
}

/// LOW FINDING: the model name is bounded in length only. Control characters (an escape
/// sequence, a newline) pass `check`, resolve as `<provider>/<model>`, and flow into the gate's
/// resource, the audit entry and the report (`llm/p/m\u{1b}[2J\n...`), and to the provider.
/// Provider names and tool names are checked; model names should be too (visible ASCII).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_name_with_control_characters_is_refused() {
    let rig = Rig::start(|_| {}).await;
    let report = rig
        .run(
            llm_spec(&["p/*"]),
            json!([{"model": "p/m\u{1b}[2J\nAUDIT: agent allowed", "prompt": "a"}]),
        )
        .await;
    let r = &results(&report)[0];
    assert_eq!(
        r["error_kind"],
        "invalid-request",
        "a model name with control characters was sent ({} requests): {r}",
        rig.server.request_count()
    );
}

/// HELD: a 503 whose `Retry-After` reaches past the agent's deadline is not waited for: one
/// request, `unavailable` at once, long before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_asking_past_the_deadline_is_not_retried() {
    let rig = Rig::start(|c| c.providers.get_mut("p").unwrap().max_retries = 10).await;
    rig.server.push(Reply::status_with_retry_after(
        503,
        "120",
        "{\"error\":{\"message\":\"busy\"}}",
    ));
    let report = rig
        .run(llm_spec(&["p/*"]), json!([{"model": "p/m", "prompt": "a"}]))
        .await;
    let r = &results(&report)[0];
    assert_eq!(r["error_kind"], "unavailable", "{r}");
    assert_eq!(rig.server.request_count(), 1);
}

/// HELD: the bounds of a request hold through the WIT boundary: too many messages' worth of
/// text, too many tools, a schema over 64 KiB, too many stop sequences, are refused before
/// sending and cost no call budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deep_requests_are_refused_before_sending() {
    let rig = Rig::start(|_| {}).await;
    let big_schema = json!({"type": "object", "description": "d".repeat(70 << 10)});
    let tools: Vec<Value> = (0..129).map(|i| json!({"name": format!("t{i}")})).collect();
    let report = rig
        .run(
            llm_spec(&["p/*"]),
            json!([
                {"model": "p/m", "prompt": "x".repeat((4 << 20) + 1)},
                {"model": "p/m", "prompt": "a", "tools": tools},
                {"model": "p/m", "prompt": "a", "json_schema": big_schema},
                {"model": "p/m", "prompt": "a", "stop": ["1", "2", "3", "4", "5"]},
            ]),
        )
        .await;
    for r in results(&report) {
        assert_eq!(r["error_kind"], "invalid-request", "{r}");
    }
    assert_eq!(rig.server.request_count(), 0);
    assert_eq!(report.usage.llm_calls, 0);
}
