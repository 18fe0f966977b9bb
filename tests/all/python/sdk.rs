//! The `qi-agent` SDK's own tests: `py-hello` and `py-tour` drive every module through the
//! real host.

use super::*;
use qi_host::context::{NewContext, OPERATOR, Permission, SyncStrategy};
use qi_host::{AgentFailure, AgentStatus, TaskRequest};

#[tokio::test]
async fn hello_greets_logs_and_reports_usage() {
    let Some(hello) = python(PY_HELLO_COMPONENT) else {
        return;
    };
    let report = run(hello, py_spec(), json!({"name": "qi"})).await;
    let out = ok(&report);
    assert_eq!(out["greeting"], "Hello, qi!");
    assert_eq!(out["echo"], "test task");
    assert_eq!(out["agent"], "py-hello");
    let info = report.agent.as_ref().unwrap();
    assert_eq!(info.name, "py-hello");
    assert_eq!(info.capabilities, vec!["greeting".to_string()]);
    assert!(
        report
            .logs
            .iter()
            .any(|l| l.message == "greeting"
                && l.fields.iter().any(|(k, v)| k == "who" && v == "qi")),
        "{:?}",
        report.logs
    );
    assert!(report.usage.fuel_consumed > 0);
    assert!(
        report.usage.peak_memory_bytes > 1 << 20,
        "{:?}",
        report.usage
    );
}

#[tokio::test]
async fn invalid_input_is_the_agents_typed_error() {
    let Some(hello) = python(PY_HELLO_COMPONENT) else {
        return;
    };
    let report = run(hello, py_spec(), json!([1, 2])).await;
    match &report.failure {
        Some(AgentFailure::AgentError {
            error_kind,
            message,
        }) => {
            assert_eq!(error_kind, "invalid-input");
            assert!(message.contains("input must be a name"), "{message}");
        }
        other => panic!("expected invalid-input, got {other:?}"),
    }
    assert_eq!(report.status, AgentStatus::Failed);
}

/// The tour: every module against a host with a context store, the `clock.now` tool granted
/// and `fs.read` not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_module_of_the_sdk_works_through_the_host() {
    let Some(tour) = python(PY_TOUR_COMPONENT) else {
        return;
    };
    let svc = in_memory_context().await;
    let host = new_host(4).with_context(svc.clone());
    let mut s = py_spec();
    s.security_constraints.allowed_tools = vec!["clock.now".into()];
    let report = host
        .run(
            &host.load(tour).unwrap(),
            s,
            TaskRequest::new(
                "tour",
                json!({
                    "mode": "tour",
                    "context": "tour-1",
                    "tools": [["clock.now", {}], ["fs.read", {"path": "/x"}], ["no.such", {}]],
                }),
            ),
        )
        .await
        .unwrap();
    let out = ok(&report);
    assert_eq!(out["create"], json!({"id": "tour-1", "version": 1}));
    assert_eq!(out["get"]["doc"], json!({"n": 0, "tags": []}));
    assert_eq!(out["put"], 2);
    assert_eq!(out["stale"]["class"], "ContextError");
    assert_eq!(out["stale"]["kind"], "stale");
    assert_eq!(
        out["stale_detail"],
        json!({"is_stale": true, "current_version": 2})
    );
    assert_eq!(out["patch"], 3);
    assert_eq!(out["pointer"], 4);
    assert_eq!(out["update"], 5);
    assert_eq!(
        out["final"],
        json!({"n": 11, "tags": ["a"], "meta": {"by": "py-tour"}})
    );
    assert_eq!(out["raw_is_text"], true);
    assert_eq!(out["ids_has_it"], true);
    assert_eq!(out["history_ops"].as_array().unwrap().len(), 5, "{out}");
    // The subscription saw each of the four updates once, in seq order, gap-free.
    let events = out["events"].as_array().unwrap();
    let updates: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "updated")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(updates.len(), 4, "{out}");
    assert!(updates.windows(2).all(|w| w[0] < w[1]), "{updates:?}");
    assert!(events.iter().all(|e| e["context"] == "tour-1"));
    assert_eq!(out["published"], true);
    assert_eq!(out["budget"]["fuel_positive"], true);
    assert_eq!(out["budget"]["time_ms_positive"], true);
    assert_eq!(out["tools_available"], json!(["clock.now"]));
    let tools = out["tools"].as_array().unwrap();
    assert!(
        tools[0]["ok"].is_object() || tools[0]["ok"].is_number(),
        "{out}"
    );
    assert_eq!(tools[1]["kind"], "access-denied", "{out}");
    assert_eq!(tools[2]["kind"], "access-denied", "{out}");
    assert_eq!(
        out["call_many"],
        json!(["ok", "access-denied", "access-denied"])
    );
    let errors = &out["errors"];
    assert_eq!(errors["context"]["kind"], "not-found", "{errors}");
    assert_eq!(errors["events"]["class"], "EventError");
    assert!(
        errors["events"]["message"]
            .as_str()
            .unwrap()
            .contains("tour-1-missing"),
        "{errors}"
    );
    assert_eq!(errors["priority"]["kind"], "invalid");
    assert_eq!(errors["sync"]["class"], "SyncError");
    assert_eq!(errors["sync"]["kind"], "not-coordinated");
    assert!(
        errors["sync"]["message"]
            .as_str()
            .unwrap()
            .contains("qi-host run")
    );
    assert_eq!(errors["channels"]["class"], "ChannelError");
    assert_eq!(errors["channels"]["kind"], "not-coordinated");
    assert_eq!(errors["llm"]["class"], "LlmError");
    // No models on this host: `unavailable`, saying how the operator adds them.
    assert_eq!(errors["llm"]["kind"], "unavailable", "{errors}");
    assert!(
        errors["llm"]["message"]
            .as_str()
            .unwrap()
            .contains("--llm-config")
    );
    assert_eq!(errors["subtask"]["class"], "InvalidInput");
    assert!(
        errors["subtask"]["message"]
            .as_str()
            .unwrap()
            .contains("missing `subtask`"),
        "{errors}"
    );
    assert_eq!(errors["strategy"]["kind"], "invalid");
    assert_eq!(out["models"], json!([]));
    // The owner still reads a deleted context, marked so (its history is kept).
    assert_eq!(out["deleted"], "deleted");
    assert!(
        report.logs.iter().any(|l| l.message == "tour starts"
            && l.fields
                .iter()
                .any(|(k, v)| k == "fields" && v == r#"{"nested": [1, 2]}"#)),
        "{:?}",
        report.logs
    );
    assert_eq!(report.usage.tool_calls, 6, "{:?}", report.usage);
}

/// Three Python counters race `context.update` on one strong context: every stale write is
/// retried, and the counter ends at the exact sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_retries_stale_writes_so_concurrent_counters_add_up() {
    let Some(tour) = python(PY_TOUR_COMPONENT) else {
        return;
    };
    const AGENTS: usize = 3;
    const N: u64 = 20;
    let svc = in_memory_context().await;
    let host = new_host(8).with_context(svc.clone());
    svc.create(
        OPERATOR,
        NewContext {
            id: Some("counter".into()),
            context_type: "count".into(),
            doc: json!({"n": 0}),
            strategy: SyncStrategy::Strong,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let loaded = host.load(tour).unwrap();
    let mut agents = Vec::new();
    for _ in 0..AGENTS {
        agents.push(host.spawn(&loaded, py_spec()).await.unwrap());
    }
    let ids: Vec<String> = agents.iter().map(|a| a.id().to_string()).collect();
    svc.share(
        OPERATOR,
        "counter",
        &ids,
        &[Permission::Read, Permission::Write],
        None,
    )
    .await
    .unwrap();
    let handles: Vec<_> = agents
        .into_iter()
        .enumerate()
        .map(|(i, agent)| {
            tokio::spawn(agent.run(TaskRequest {
                id: Some(format!("counter-{i}")),
                ..TaskRequest::new(
                    "count",
                    json!({"mode": "count", "context": "counter", "n": N, "barrier": AGENTS}),
                )
            }))
        })
        .collect();
    let mut retries = 0;
    for handle in handles {
        let report = handle.await.unwrap();
        let out = ok(&report);
        assert_eq!(out["acked"], N);
        assert_eq!(out["ready"], AGENTS, "{out}");
        retries += out["stale_retries"].as_u64().unwrap();
    }
    let doc = svc.get(OPERATOR, "counter").await.unwrap();
    assert_eq!(doc.doc["n"], N * AGENTS as u64, "retries: {retries}");
    assert_eq!(doc.version, 1 + N * AGENTS as u64);
}

/// `llm.Request(...).send()` through the broker to the loopback provider, both wire formats:
/// the answer, its usage and the answering model reach Python; a model outside
/// `allowedModels` is `LlmError` `access-denied` and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_calls_go_through_the_broker() {
    use crate::llm::{BOTH, Rig, llm_spec};
    use qi_llm_test_server::Reply;
    let Some(tour) = python(PY_TOUR_COMPONENT) else {
        return;
    };
    for kind in BOTH {
        let rig = Rig::start(kind).await;
        rig.server().push(Reply::Text {
            content: "bonjour".into(),
            input_tokens: 11,
            output_tokens: 3,
        });
        let component = rig.host.load(tour).unwrap();
        let mut s = llm_spec(&["p/*"]);
        s.resource_limits.max_memory_mb = 128;
        let call = |model: &str| {
            TaskRequest::new(
                "llm",
                json!({"mode": "llm", "model": model, "prompt": "say hello in French"}),
            )
        };
        let report = rig
            .host
            .run(&component, s.clone(), call("fast"))
            .await
            .unwrap();
        let out = ok(&report);
        assert_eq!(out["ok"], true, "{kind:?}: {out}");
        assert_eq!(out["content"], "bonjour");
        assert_eq!(out["input_tokens"], 11);
        assert_eq!(out["output_tokens"], 3);
        assert_eq!(out["finish_reason"], "stop");
        assert_eq!(out["replayed"], false);
        assert_eq!(rig.provider.sent(), 1);
        assert_eq!(report.usage.llm_calls, 1);

        let denied = rig
            .host
            .run(&component, llm_spec(&["q/*"]), call("p/m1"))
            .await
            .unwrap();
        let out = ok(&denied);
        assert_eq!(out["ok"], false);
        assert_eq!(out["kind"], "access-denied", "{out}");
        assert_eq!(rig.provider.sent(), 1, "a denied call reached the provider");
    }
}
