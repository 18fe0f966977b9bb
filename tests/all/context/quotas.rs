//! The spec's per-agent context quotas, `resourceLimits.maxContextWrites` and
//! `resourceLimits.maxContextBytes`, with the `worker` guest: at the quota every write goes
//! through; one write or one byte past, it is refused naming the field, nothing is written,
//! the receipt counts what was taken, and an agent that gives up ends with the limit.

use super::{context_host, unique};
use crate::common::{ok, spec};
use qi_guest_artifacts::WORKER_COMPONENT;
use qi_host::context::OPERATOR;
use qi_host::{AgentFailure, AgentReport, LimitKind, SubAgentSpecification, TaskRequest};
use serde_json::{Value, json};

async fn run(spec: SubAgentSpecification, steps: Value) -> AgentReport {
    let h = context_host().await;
    let loaded = h.host.load(WORKER_COMPONENT).expect("bundled guest loads");
    let agent = h.host.spawn(&loaded, spec).await.expect("agent spawns");
    agent
        .run(TaskRequest::new(
            "quota probe",
            json!({"subtask": "probe", "attempt": 1, "inputs": {"steps": steps}}),
        ))
        .await
}

fn probes(report: &AgentReport) -> Vec<Value> {
    ok(report)["probes"].as_array().cloned().unwrap_or_default()
}

/// Create `a`, create `b`, delete `a`: three writes whatever the strategies require.
fn three_writes(a: &str, b: &str) -> Value {
    json!([
        {"context_create": {"id": a, "doc": {}}},
        {"context_create": {"id": b, "doc": {}}},
        {"context_delete": a},
    ])
}

fn with_writes(n: u32) -> SubAgentSpecification {
    let mut s = spec();
    s.resource_limits.max_context_writes = n;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_writes_at_the_quota_pass_and_one_past_is_refused_naming_the_field() {
    let (a, b) = (unique("quota-w-a"), unique("quota-w-b"));
    let at = run(with_writes(3), three_writes(&a, &b)).await;
    for p in probes(&at) {
        assert_eq!(p["ok"], true, "{p}");
    }
    assert_eq!(at.usage.context_writes, 3);

    let (a, b) = (unique("quota-w-a"), unique("quota-w-b"));
    let past = run(with_writes(2), three_writes(&a, &b)).await;
    let p = probes(&past);
    assert_eq!(
        (p[0]["ok"].clone(), p[1]["ok"].clone()),
        (json!(true), json!(true))
    );
    let e = p[2]["error"].as_str().unwrap();
    assert!(
        e.starts_with("refused") && e.contains("resourceLimits.maxContextWrites"),
        "{e}"
    );
    assert_eq!(
        past.usage.context_writes, 2,
        "the refused write is not counted"
    );
    // Nothing was deleted.
    let svc = &context_host().await.svc;
    assert!(svc.get(OPERATOR, &a).await.is_ok());
}

fn doc_of(n: usize) -> Value {
    json!({"s": "x".repeat(n)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_bytes_at_the_quota_pass_and_one_byte_past_ends_the_agent_with_the_limit() {
    // A create costs its document's JSON text and its type (`notes`).
    let cost = |n: usize| (doc_of(n).to_string().len() + "notes".len()) as u64;
    let total = cost(100) + cost(200);
    let steps = |a: &str, b: &str| {
        json!([
            {"context_create": {"id": a, "doc": doc_of(100)}},
            {"context_create": {"id": b, "doc": doc_of(200)}},
            {"fail_if_config": "never"},
        ])
    };
    let mut s = spec();
    s.resource_limits.max_context_bytes = total;
    let (a, b) = (unique("quota-b-a"), unique("quota-b-b"));
    let at = run(s, steps(&a, &b)).await;
    for p in probes(&at) {
        assert_eq!(p["ok"], true, "{p}");
    }
    assert_eq!(at.usage.context_bytes, total);

    // One byte short: the second create is refused; the agent gives up and ends with the limit.
    let mut s = spec();
    s.resource_limits.max_context_bytes = total - 1;
    let (a, b) = (unique("quota-b-a"), unique("quota-b-b"));
    let mut give_up = steps(&a, &b);
    give_up.as_array_mut().unwrap()[2] = json!({"fail": "gave up"});
    let past = run(s, give_up).await;
    match &past.failure {
        Some(
            f @ AgentFailure::LimitExceeded {
                limit: LimitKind::ContextBytes,
                limit_value,
                detail,
            },
        ) => {
            assert_eq!(*limit_value, total - 1);
            assert!(
                detail.contains("resourceLimits.maxContextBytes"),
                "{detail}"
            );
            assert!(
                detail.contains(&format!("a write of {} bytes", cost(200))),
                "{detail}"
            );
            assert!(f.to_string().contains("context bytes"), "{f}");
        }
        other => panic!("expected the context bytes limit, got {other:?}"),
    }
    assert_eq!(past.usage.context_bytes, cost(100));
    let svc = &context_host().await.svc;
    assert!(svc.get(OPERATOR, &a).await.is_ok());
    assert!(
        svc.get(OPERATOR, &b).await.is_err(),
        "the refused create made nothing"
    );
    assert_eq!(
        LimitKind::ContextBytes.field(),
        "resourceLimits.maxContextBytes"
    );
    assert_eq!(
        LimitKind::ContextWrites.field(),
        "resourceLimits.maxContextWrites"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_patch_counts_the_whole_document_it_stores_against_context_bytes() {
    // Each patch makes a version holding the whole document: tiny patches on a large
    // document would otherwise store far more than maxContextBytes.
    let cost = |n: usize| (doc_of(n).to_string().len() + "notes".len()) as u64;
    let a = unique("quota-amplify");
    let mut steps = vec![json!({"context_create": {"id": a, "doc": doc_of(9_000)}})];
    for n in 1..=5 {
        steps.push(json!({"context_patch_at": {"id": a, "doc": {"n": n}, "base": n}}));
    }
    let mut s = spec();
    s.resource_limits.max_context_bytes = 3 * cost(9_000);
    let report = run(s, Value::Array(steps)).await;
    let p = probes(&report);
    let passed = p.iter().filter(|p| p["ok"] == true).count();
    assert_eq!(
        passed, 3,
        "the create and two patches: three documents; {p:?}"
    );
    for refused in &p[3..] {
        let e = refused["error"].as_str().unwrap();
        assert!(
            e.starts_with("refused") && e.contains("resourceLimits.maxContextBytes"),
            "{e}"
        );
    }
    assert!(
        report.usage.context_bytes >= 3 * 9_000,
        "the receipt counts what was stored: {}",
        report.usage.context_bytes
    );
    assert!(
        report.usage.stored_bytes >= 3 * 9_000,
        "and so does the store's bound"
    );
    let svc = &context_host().await.svc;
    assert_eq!(svc.get(OPERATOR, &a).await.unwrap().version, 3);
}
