//! `hostile` guest, `host.*` modes: every host-call argument is bounded, and each attack ends
//! with its own precise error while the host goes on. The agent's output, stdio, exit,
//! identity, receipts and the old limits' pairs are in [`outcome`].

mod flood;
mod outcome;
mod yields;

use crate::common::*;
use qi_guest_artifacts::{HELLO_COMPONENT, HOSTILE_COMPONENT, HUGE_OUTPUT_COMPONENT};
use qi_host::interfaces::limits::{
    MAX_CALL_MANY_REQUESTS, MAX_DOCUMENT_BYTES, MAX_EVENT_DATA_BYTES, MAX_LOG_FIELDS,
    MAX_LOG_MESSAGE_BYTES, MAX_SHARE_AGENTS, MAX_SHARE_PERMISSIONS, MAX_SUBSCRIBE_CONTEXTS,
    MAX_SUBSCRIBE_TYPES, MAX_TOOL_INPUT_BYTES,
};
use qi_host::sandbox::STDIO_CAPTURE_BYTES;
use qi_host::{
    AgentFailure, AgentHost, AgentReport, Error, ErrorCategory, HostConfig, IsolationLevel,
    LimitKind, SubAgentSpecification, TaskRequest, ToolRegistry,
};
use serde_json::{Value, json};

/// A host of its own with a context store (the store's tasks live on this test's runtime).
async fn context_host() -> AgentHost {
    crate::common::new_host(8).with_context(in_memory_context().await)
}

fn hostile_spec() -> SubAgentSpecification {
    let mut s = spec();
    s.isolation_level = IsolationLevel::Restricted;
    s.resource_limits.max_concurrent_operations = 64;
    s.resource_limits.max_tool_calls = 200;
    s.security_constraints
        .allowed_tools
        .push("clock.now".into());
    s
}

async fn attack_on(host: &AgentHost, input: Value) -> AgentReport {
    let mut spec = hostile_spec();
    // Room for a 16 MiB document and its copies in guest memory.
    spec.resource_limits.max_memory_mb = 256;
    host.run(
        &host.load(HOSTILE_COMPONENT).expect("hostile loads"),
        spec,
        TaskRequest::new("attack", input),
    )
    .await
    .expect("hostile spawns")
}

/// Asserts the report ends with an argument-size refusal naming `needle`, and that the host
/// goes on (a well-behaved agent still runs in it).
#[track_caller]
fn refused(report: &AgentReport, limit_value: usize, needle: &str) {
    match &report.failure {
        Some(AgentFailure::LimitExceeded {
            limit: LimitKind::ArgumentSize,
            limit_value: v,
            detail,
        }) => {
            assert_eq!(*v, limit_value as u64, "{detail}");
            assert!(detail.contains(needle), "{detail} lacks {needle}");
        }
        other => panic!("expected an argument-size refusal, got {other:?}"),
    }
    assert_eq!(report.error_category, Some(ErrorCategory::Resource));
}

async fn host_goes_on(host: &AgentHost) {
    let r = host
        .run(
            &host.load(HELLO_COMPONENT).expect("hello loads"),
            spec(),
            TaskRequest::new("greet", json!({"name": "after"})),
        )
        .await
        .expect("hello spawns");
    ok(&r);
}

#[tokio::test]
async fn a_document_at_the_limit_is_stored_and_one_byte_more_is_refused_unparsed() {
    let host = context_host().await;
    let at = attack_on(
        &host,
        json!({"mode": "host.big-doc", "bytes": MAX_DOCUMENT_BYTES}),
    )
    .await;
    assert_eq!(ok(&at)["ok"], true);
    let past = attack_on(
        &host,
        json!({"mode": "host.big-doc", "bytes": MAX_DOCUMENT_BYTES + 1, "op": "patch"}),
    )
    .await;
    refused(
        &past,
        MAX_DOCUMENT_BYTES,
        &format!(
            "context.patch: `merge-patch` is {} bytes",
            MAX_DOCUMENT_BYTES + 1
        ),
    );
    host_goes_on(&host).await;
}

#[tokio::test]
async fn a_call_many_batch_at_the_limit_runs_and_one_more_request_is_refused() {
    let host = context_host().await;
    let at = attack_on(
        &host,
        json!({"mode": "host.call-many", "count": MAX_CALL_MANY_REQUESTS}),
    )
    .await;
    assert_eq!(ok(&at)["results"], MAX_CALL_MANY_REQUESTS);
    let past = attack_on(
        &host,
        json!({"mode": "host.call-many", "count": MAX_CALL_MANY_REQUESTS + 1}),
    )
    .await;
    refused(
        &past,
        MAX_CALL_MANY_REQUESTS,
        &format!(
            "tools.call-many: `requests` is {} items",
            MAX_CALL_MANY_REQUESTS + 1
        ),
    );
    // No tool ran for the refused batch.
    assert_eq!(past.usage.tool_calls, 0);
    host_goes_on(&host).await;
}

#[tokio::test]
async fn share_and_revoke_agent_lists_and_share_permissions_are_bounded() {
    let host = context_host().await;
    let list = |count: usize, op: &str, permissions: usize| json!({"mode": "host.share-list", "count": count, "op": op, "permissions": permissions});
    // Inside the limits a share gets past the size check to the registry, which knows none
    // of the probe's agent ids; a revoke of absent shares succeeds.
    #[track_caller]
    fn reached_the_registry(report: &AgentReport) {
        match &report.failure {
            Some(AgentFailure::AgentError { message, .. }) => assert!(
                message.contains("`agent-probe-0` is not registered"),
                "{message}"
            ),
            other => panic!("expected the registry's refusal, got {other:?}"),
        }
    }
    for op in ["share", "revoke"] {
        let at = attack_on(&host, list(MAX_SHARE_AGENTS, op, 1)).await;
        if op == "share" {
            reached_the_registry(&at);
        } else {
            assert_eq!(ok(&at)["ok"], true, "{op}");
        }
        let past = attack_on(&host, list(MAX_SHARE_AGENTS + 1, op, 1)).await;
        refused(
            &past,
            MAX_SHARE_AGENTS,
            &format!("context.{op}: `agents` is {} items", MAX_SHARE_AGENTS + 1),
        );
    }
    let at = attack_on(&host, list(1, "share", MAX_SHARE_PERMISSIONS)).await;
    reached_the_registry(&at);
    let past = attack_on(&host, list(1, "share", MAX_SHARE_PERMISSIONS + 1)).await;
    refused(
        &past,
        MAX_SHARE_PERMISSIONS,
        &format!(
            "context.share: `permissions` is {} items",
            MAX_SHARE_PERMISSIONS + 1
        ),
    );
    host_goes_on(&host).await;
}

#[tokio::test]
async fn subscribe_context_ids_and_event_types_are_bounded() {
    let host = context_host().await;
    let subscribe = |count: usize, types: usize| json!({"mode": "host.subscribe-list", "count": count, "types": types});
    let at = attack_on(
        &host,
        subscribe(MAX_SUBSCRIBE_CONTEXTS, MAX_SUBSCRIBE_TYPES),
    )
    .await;
    assert_eq!(ok(&at)["ok"], true);
    let past = attack_on(&host, subscribe(MAX_SUBSCRIBE_CONTEXTS + 1, 1)).await;
    refused(
        &past,
        MAX_SUBSCRIBE_CONTEXTS,
        &format!(
            "events.subscribe: `context-ids` is {} items",
            MAX_SUBSCRIBE_CONTEXTS + 1
        ),
    );
    let past = attack_on(&host, subscribe(1, MAX_SUBSCRIBE_TYPES + 1)).await;
    refused(
        &past,
        MAX_SUBSCRIBE_TYPES,
        &format!(
            "events.subscribe: `event-types` is {} items",
            MAX_SUBSCRIBE_TYPES + 1
        ),
    );
}

#[tokio::test]
async fn event_data_at_the_limit_is_published_and_one_byte_more_is_refused() {
    let host = context_host().await;
    let at = attack_on(
        &host,
        json!({"mode": "host.big-event", "bytes": MAX_EVENT_DATA_BYTES}),
    )
    .await;
    assert_eq!(ok(&at)["ok"], true);
    let past = attack_on(
        &host,
        json!({"mode": "host.big-event", "bytes": MAX_EVENT_DATA_BYTES + 1}),
    )
    .await;
    refused(
        &past,
        MAX_EVENT_DATA_BYTES,
        &format!(
            "events.publish: `data` is {} bytes",
            MAX_EVENT_DATA_BYTES + 1
        ),
    );
}

#[tokio::test]
async fn tool_input_at_the_limit_is_accepted_and_one_byte_more_is_refused() {
    let at = run(
        HOSTILE_COMPONENT,
        hostile_spec(),
        json!({"mode": "host.tool-input", "bytes": MAX_TOOL_INPUT_BYTES}),
    )
    .await;
    assert_eq!(ok(&at)["ok"], true);
    let past = run(
        HOSTILE_COMPONENT,
        hostile_spec(),
        json!({"mode": "host.tool-input", "bytes": MAX_TOOL_INPUT_BYTES + 1}),
    )
    .await;
    refused(
        &past,
        MAX_TOOL_INPUT_BYTES,
        &format!("tools.call: `input` is {} bytes", MAX_TOOL_INPUT_BYTES + 1),
    );
    // The refused call still cost a tool call.
    assert_eq!(past.usage.tool_calls, 1);
}

#[tokio::test]
async fn a_huge_log_record_is_truncated_and_never_fails() {
    let r = run(
        HOSTILE_COMPONENT,
        hostile_spec(),
        json!({"mode": "host.big-log", "bytes": 1 << 20, "fields": 10_000}),
    )
    .await;
    assert_eq!(ok(&r)["ok"], true);
    let rec = &r.logs[0];
    assert_eq!(rec.fields.len(), MAX_LOG_FIELDS);
    // Truncated to the limit, plus the marker.
    assert_eq!(rec.message.len(), MAX_LOG_MESSAGE_BYTES + '…'.len_utf8());
}

#[tokio::test]
async fn log_messages_keys_and_values_at_their_limits_are_kept_whole_and_one_byte_more_is_cut() {
    use qi_host::interfaces::limits::{MAX_LOG_KEY_BYTES, MAX_LOG_VALUE_BYTES};
    let record = |extra: usize| async move {
        let r = run(
            HOSTILE_COMPONENT,
            hostile_spec(),
            json!({"mode": "host.big-log", "bytes": MAX_LOG_MESSAGE_BYTES + extra,
                   "fields": MAX_LOG_FIELDS + extra, "key_bytes": MAX_LOG_KEY_BYTES + extra,
                   "value_bytes": MAX_LOG_VALUE_BYTES + extra}),
        )
        .await;
        assert_eq!(ok(&r)["ok"], true, "logging never fails the agent");
        assert_eq!(r.logs.len(), 1);
        r.logs[0].clone()
    };
    let at = record(0).await;
    assert_eq!(at.message, "m".repeat(MAX_LOG_MESSAGE_BYTES));
    assert_eq!(at.fields.len(), MAX_LOG_FIELDS);
    for (key, value) in &at.fields {
        assert_eq!(key, &"k".repeat(MAX_LOG_KEY_BYTES));
        assert_eq!(value, &"v".repeat(MAX_LOG_VALUE_BYTES));
    }
    let past = record(1).await;
    assert_eq!(
        past.message,
        format!("{}…", "m".repeat(MAX_LOG_MESSAGE_BYTES))
    );
    assert_eq!(past.fields.len(), MAX_LOG_FIELDS);
    for (key, value) in &past.fields {
        assert_eq!(key, &format!("{}…", "k".repeat(MAX_LOG_KEY_BYTES)));
        assert_eq!(value, &format!("{}…", "v".repeat(MAX_LOG_VALUE_BYTES)));
    }
}

#[tokio::test]
async fn sync_payloads_and_point_ids_are_bounded_in_and_out_of_a_coordinated_run() {
    use qi_host::interfaces::limits::{MAX_ID_BYTES, MAX_SYNC_PAYLOAD_BYTES};
    let checkpoint = |bytes: usize, point: usize| json!({"mode": "host.checkpoint", "bytes": bytes, "point": point});
    // Inside both limits the call gets as far as `not-coordinated`.
    let at = run(
        HOSTILE_COMPONENT,
        hostile_spec(),
        checkpoint(MAX_SYNC_PAYLOAD_BYTES, MAX_ID_BYTES),
    )
    .await;
    assert_eq!(ok(&at)["coordinated"], false);
    let past = run(
        HOSTILE_COMPONENT,
        hostile_spec(),
        checkpoint(MAX_SYNC_PAYLOAD_BYTES + 1, 1),
    )
    .await;
    refused(
        &past,
        MAX_SYNC_PAYLOAD_BYTES,
        &format!(
            "sync.checkpoint: `state` is {} bytes",
            MAX_SYNC_PAYLOAD_BYTES + 1
        ),
    );
    let long_point = run(
        HOSTILE_COMPONENT,
        hostile_spec(),
        checkpoint(2, MAX_ID_BYTES + 1),
    )
    .await;
    refused(
        &long_point,
        MAX_ID_BYTES,
        &format!("sync.checkpoint: `point` is {} bytes", MAX_ID_BYTES + 1),
    );
}

#[tokio::test]
async fn a_host_call_argument_larger_than_the_hostcall_fuel_is_never_copied() {
    use qi_host::interfaces::limits::MAX_HOST_CALL_TRANSFER_BYTES;
    let host = context_host().await;
    let r = attack_on(
        &host,
        json!({"mode": "host.big-doc", "bytes": MAX_HOST_CALL_TRANSFER_BYTES + 1}),
    )
    .await;
    refused(
        &r,
        MAX_HOST_CALL_TRANSFER_BYTES,
        &format!(
            "more than {MAX_HOST_CALL_TRANSFER_BYTES} bytes to the host in one host call's arguments"
        ),
    );
    host_goes_on(&host).await;
}

#[tokio::test]
async fn call_many_inputs_are_bounded_in_total_at_the_limit_and_one_byte_past() {
    use qi_host::interfaces::limits::MAX_CALL_MANY_INPUT_BYTES;
    let host = context_host().await;
    let batch =
        |count: usize, bytes: usize| json!({"mode": "host.batch", "count": count, "bytes": bytes});
    let per = MAX_TOOL_INPUT_BYTES;
    let count = MAX_CALL_MANY_INPUT_BYTES / per;
    let at = attack_on(&host, batch(count, per)).await;
    let results = ok(&at)["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), count);
    assert!(results.iter().all(|r| r == "ok"), "{results:?}");
    // One request more, each a little shorter: one byte past the total.
    let shorter = (MAX_CALL_MANY_INPUT_BYTES + 1).div_ceil(count + 1);
    let extra = shorter * (count + 1) - (MAX_CALL_MANY_INPUT_BYTES + 1);
    assert_eq!(extra, 0, "pick sizes that land exactly one byte past");
    let past = attack_on(&host, batch(count + 1, shorter)).await;
    // One result for the whole batch: the refusal, which the guest can handle.
    let results = ok(&past)["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 1, "{results:?}");
    let needle = format!(
        "tools.call-many: `requests[*].input` is {} bytes in all; the limit is \
         {MAX_CALL_MANY_INPUT_BYTES}",
        MAX_CALL_MANY_INPUT_BYTES + 1
    );
    let refusal = results[0].as_str().unwrap_or_default();
    assert!(
        refusal.starts_with("InvalidInput(") && refusal.contains(&needle),
        "{refusal}"
    );
    assert_eq!(
        past.usage.tool_calls, 0,
        "no tool ran for the refused batch"
    );
}

#[tokio::test]
async fn call_many_outputs_are_bounded_in_total() {
    use qi_host::interfaces::limits::MAX_CALL_MANY_OUTPUT_BYTES;
    use qi_host::tools::FS_READ_MAX_BYTES;
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(
        dir.path().join("big"),
        "r".repeat(FS_READ_MAX_BYTES as usize),
    )
    .unwrap();
    let mut s = hostile_spec();
    s.resource_limits.max_memory_mb = 512;
    s.security_constraints.file_system_access = qi_host::FileSystemAccess::ReadOnly;
    s.directories.push(qi_host::DirectoryGrant {
        host_path: dir.path().to_path_buf(),
        guest_path: "/data".into(),
        writable: Some(false),
    });
    s.security_constraints.allowed_tools.push("fs.read".into());
    // Each output is the 4 MiB file and a few bytes more.
    let fit = MAX_CALL_MANY_OUTPUT_BYTES / (FS_READ_MAX_BYTES as usize + 64);
    let count = fit + 2;
    let r = run(
        HOSTILE_COMPONENT,
        s,
        json!({"mode": "host.batch", "count": count, "tool": "fs.read", "input": {"path": "/data/big"}}),
    )
    .await;
    let results = ok(&r)["results"].as_array().expect("results").clone();
    let fine = results.iter().filter(|r| *r == "ok").count();
    assert_eq!(fine, fit, "{results:?}");
    for refused in results.iter().filter(|r| *r != "ok") {
        let text = refused.as_str().unwrap_or_default();
        assert!(
            text.contains("LimitExceeded") && text.contains("call-many batch's outputs"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_at_the_choice_limit_is_tallied_and_one_byte_more_fails_its_voter() {
    use crate::coord::{harness, one, outcome, point, result};
    use qi_host::interfaces::limits::MAX_VOTE_BYTES;
    let vote = |choice: &str| format!(r#"[{{ vote = {{ point = "pt", choice = "{choice}" }} }}]"#);
    let run = |choices: [String; 3]| {
        let mut toml = crate::coord::header(
            "hybrid",
            "graceful-degradation",
            &point("decision", "\"majority-complete\"", "", "wait", ""),
        );
        for (id, choice) in ["p1", "p2", "p3"].iter().zip(&choices) {
            toml += &one(id, None, &vote(choice), "");
        }
        toml
    };
    let h = harness().await;

    let at = "v".repeat(MAX_VOTE_BYTES);
    let (r, _) = h.run(&run([at.clone(), at.clone(), "x".into()])).await;
    assert_eq!(outcome(&r, "p1")["result"]["decision"], json!(at), "{r:#?}");

    let past = "v".repeat(MAX_VOTE_BYTES + 1);
    let (r, _) = h.run(&run([past, "x".into(), "x".into()])).await;
    let p1 = result(&r, "p1");
    assert_eq!(p1.state, qi_host::coord::SubtaskState::Failed, "{p1:#?}");
    let error = p1.error.as_deref().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "sync.vote: `choice` is {} bytes",
            MAX_VOTE_BYTES + 1
        )),
        "{error}"
    );
    // The others still decide, without the refused voter.
    assert_eq!(outcome(&r, "p2")["result"]["decision"], "x", "{r:#?}");
}
