//! Many small, individually valid calls that together would exhaust the host: every audit
//! entry a guest can cause (refused network attempts, gate decisions, monitored host calls) is
//! bounded per agent, and the receipt's counters stay exact past the bound; so are the bytes
//! one agent may write to the shared context store and event bus. Also the panic message a
//! guest writes to stderr without panicking.

use super::*;
use qi_host::NetworkAccessLevel;
use qi_host::audit::AuditLog;
use qi_host::interfaces::limits::MAX_AUDIT_ENTRIES_PER_AGENT;
use qi_host::security::AccessControl;
use std::sync::Arc;

/// A host with an audit log and no policies, as `qi-host run-agent` has by default.
async fn audited_host() -> (AgentHost, AuditLog) {
    audited(false).await
}

/// [`audited_host`], with agents given the context store (`with_context`) or not.
async fn audited(with_context: bool) -> (AgentHost, AuditLog) {
    let svc = in_memory_context().await;
    let audit = AuditLog::open(svc.store().clone())
        .await
        .expect("audit log opens");
    let mut host = crate::common::new_host(4);
    if with_context {
        host = host.with_context(svc);
    }
    let host = host.with_access(Arc::new(AccessControl::new(None, Some(audit.clone()))));
    (host, audit)
}

async fn flood_on(host: &AgentHost, spec: SubAgentSpecification, input: Value) -> AgentReport {
    host.run(
        &host.load(HOSTILE_COMPONENT).expect("hostile loads"),
        spec,
        TaskRequest::new("flood", input),
    )
    .await
    .expect("hostile spawns")
}

/// Lifecycle entries of one agent that ends normally: spawn and finish.
const LIFECYCLE_ENTRIES: u64 = 2;

#[tokio::test]
async fn refused_connects_are_audited_up_to_the_per_agent_bound_and_counted_past_it() {
    let cap = MAX_AUDIT_ENTRIES_PER_AGENT;
    // The target accepts connections: a refusal that let a connect through would be seen.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("canary listener");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let target = listener.local_addr().expect("listener address");
    // Each connect is two audited decisions: the implicit bind and the connect.
    for (count, dropped) in [(cap / 2, 0), (cap / 2 + 1, 2), (2 * cap, 3 * cap)] {
        let (host, audit) = audited_host().await;
        // Network on, but the target is not on the allow-list.
        let mut s = spec();
        s.isolation_level = IsolationLevel::Restricted;
        s.security_constraints.network_access_level = NetworkAccessLevel::Restricted;
        s.resource_limits.allowed_network_hosts = vec![format!("127.0.0.1:{}", target.port() ^ 1)];
        // Room for every attempt, so that the audit bound (not `maxNetworkOperations`, whose
        // refusals are not audited at all) is what stops the entries.
        s.resource_limits.max_network_operations = 100_000;
        let r = flood_on(
            &host,
            s,
            json!({"mode": "host.connect-flood", "count": count, "target": target.to_string()}),
        )
        .await;
        assert_eq!(ok(&r)["refused"], count, "{count}: every connect refused");
        assert_eq!(
            listener.accept().map(|_| ()).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "{count}: a refused connect reached the listener"
        );
        assert_eq!(r.usage.network_denied, count, "{count}: all counted");
        assert_eq!(r.usage.audit_dropped, dropped, "{count}");
        // Past the bound: one entry says the agent's routine entries were cut.
        let truncated = u64::from(dropped > 0);
        assert_eq!(
            audit.recorded(),
            cap.min(2 * count) + truncated + LIFECYCLE_ENTRIES,
            "{count}"
        );
    }
}

#[tokio::test]
async fn monitored_host_calls_in_a_tight_loop_are_audited_up_to_the_bound() {
    let cap = MAX_AUDIT_ENTRIES_PER_AGENT;
    let (host, audit) = audited_host().await;
    let mut s = spec();
    s.isolation_level = IsolationLevel::Monitored;
    let r = flood_on(&host, s, json!({"mode": "host.budget", "count": 3 * cap})).await;
    assert_eq!(ok(&r)["ok"], true);
    assert_eq!(r.usage.host_calls, 3 * cap);
    assert_eq!(r.usage.audit_dropped, 2 * cap);
    assert_eq!(audit.recorded(), cap + 1 + LIFECYCLE_ENTRIES);
    // The report's call log keeps as many.
    assert_eq!(r.host_call_log.len() as u64, cap);
}

#[tokio::test]
async fn a_panic_message_written_by_a_guest_that_did_not_panic_is_not_its_failure() {
    let spoof = |then: &str| json!({"mode": "host.spoof-panic", "then": then});
    let trapped = run(HOSTILE_COMPONENT, spec(), spoof("trap")).await;
    match &trapped.failure {
        Some(AgentFailure::Trapped { message }) => {
            assert!(message.contains("out of bounds"), "{message}")
        }
        other => panic!("expected the trap, got {other:?}"),
    }
    assert!(trapped.stderr.contains("spoofed message"));
    // A real panic after the fake one is reported with its own message.
    let panicked = run(HOSTILE_COMPONENT, spec(), spoof("panic")).await;
    match &panicked.failure {
        Some(AgentFailure::Panicked { message }) => {
            assert!(message.starts_with("the real panic (at "), "{message}")
        }
        other => panic!("expected the real panic, got {other:?}"),
    }
}

#[tokio::test]
async fn documents_an_agent_writes_are_bounded_in_total_at_the_limit_and_one_byte_past() {
    use qi_host::interfaces::limits::{
        MAX_DOCUMENT_BYTES, MAX_STORED_BYTES_PER_AGENT, STORED_WRITE_OVERHEAD_BYTES,
    };
    let host = context_host().await;
    let budget = MAX_STORED_BYTES_PER_AGENT as usize;
    let row = STORED_WRITE_OVERHEAD_BYTES;
    // `context.create` stores type `probe` and document `{}` first (one row).
    let created = "probe".len() + "{}".len() + row;
    let full = MAX_DOCUMENT_BYTES;
    let whole = budget / full;
    // Whole documents, then one that fills the budget exactly (every put is one row).
    let last = budget - created - (whole - 1) * (full + row) - row;
    let sizes = |last: usize| {
        let mut v = vec![full; whole - 1];
        v.push(last);
        v
    };
    let at = attack_on(
        &host,
        json!({"mode": "host.put-many", "sizes": sizes(last)}),
    )
    .await;
    assert_eq!(ok(&at)["puts"], whole);
    assert_eq!(at.usage.stored_bytes, MAX_STORED_BYTES_PER_AGENT);
    let past = attack_on(
        &host,
        json!({"mode": "host.put-many", "sizes": sizes(last + 1)}),
    )
    .await;
    match &past.failure {
        Some(AgentFailure::LimitExceeded {
            limit: LimitKind::StoredBytes,
            limit_value,
            detail,
        }) => {
            assert_eq!(*limit_value, MAX_STORED_BYTES_PER_AGENT);
            assert!(
                detail.contains(&format!("context.put: `doc` of {} bytes", last + 1)),
                "{detail}"
            );
        }
        other => panic!("expected StoredBytes, got {other:?}"),
    }
    // The refused write was not counted.
    assert_eq!(
        past.usage.stored_bytes,
        MAX_STORED_BYTES_PER_AGENT - (last + row) as u64
    );
    host_goes_on(&host).await;
}

#[tokio::test]
async fn events_an_agent_publishes_count_against_the_same_bound() {
    use qi_host::interfaces::limits::{MAX_EVENT_DATA_BYTES, MAX_STORED_BYTES_PER_AGENT};
    let host = context_host().await;
    let count = MAX_STORED_BYTES_PER_AGENT as usize / MAX_EVENT_DATA_BYTES + 1;
    let r = attack_on(
        &host,
        json!({"mode": "host.publish-many", "bytes": MAX_EVENT_DATA_BYTES, "count": count}),
    )
    .await;
    match &r.failure {
        Some(AgentFailure::LimitExceeded {
            limit: LimitKind::StoredBytes,
            detail,
            ..
        }) => assert!(detail.contains("events.publish: `data`"), "{detail}"),
        other => panic!("expected StoredBytes, got {other:?}"),
    }
    assert!(r.usage.stored_bytes <= MAX_STORED_BYTES_PER_AGENT);
    host_goes_on(&host).await;
}

#[tokio::test]
async fn empty_log_records_cost_log_bytes_so_a_loop_of_them_is_bounded() {
    use qi_host::interfaces::limits::LOG_RECORD_OVERHEAD_BYTES;
    let records = 10;
    let mut s = hostile_spec();
    s.configuration_overrides.insert(
        "maxLogBytes".into(),
        json!(records * LOG_RECORD_OVERHEAD_BYTES),
    );
    for (count, dropped) in [
        (records, 0),
        (records + 1, 1),
        (100 * records, 99 * records),
    ] {
        let r = run(
            HOSTILE_COMPONENT,
            s.clone(),
            json!({"mode": "host.log-many", "count": count}),
        )
        .await;
        assert_eq!(ok(&r)["ok"], true);
        assert_eq!(r.usage.logs_dropped, dropped as u64, "{count}");
        assert_eq!(r.logs.len(), count - dropped, "{count}");
        assert_eq!(
            r.usage.log_bytes,
            (records.min(count) * LOG_RECORD_OVERHEAD_BYTES) as u64
        );
    }
}

#[tokio::test]
async fn empty_events_cost_a_row_each_so_one_agent_cannot_flush_the_bus() {
    use qi_host::interfaces::limits::{MAX_STORED_BYTES_PER_AGENT, STORED_WRITE_OVERHEAD_BYTES};
    let host = context_host().await;
    let row = STORED_WRITE_OVERHEAD_BYTES as u64;
    // `context.create` (type `probe`, document `{}`), then events whose data is `""`.
    let created = ("probe".len() + "{}".len()) as u64 + row;
    let event = 2 + row;
    let fit = (MAX_STORED_BYTES_PER_AGENT - created) / event;
    // About 260,000 durable publishes: under a loaded debug build that takes longer than the
    // default 30 s, and the bound under test is the stored bytes, not the time.
    let mut spec = hostile_spec();
    spec.resource_limits.max_execution_time_ms = 600_000;
    let r = host
        .run(
            &host.load(HOSTILE_COMPONENT).expect("hostile loads"),
            spec,
            TaskRequest::new(
                "attack",
                json!({"mode": "host.publish-many", "bytes": 2, "count": fit + 1}),
            ),
        )
        .await
        .expect("hostile spawns");
    match &r.failure {
        Some(AgentFailure::LimitExceeded {
            limit: LimitKind::StoredBytes,
            ..
        }) => {}
        other => panic!("expected StoredBytes, got {other:?}"),
    }
    assert_eq!(r.usage.stored_bytes, created + fit * event);
}

#[tokio::test]
async fn reads_and_subscriptions_cost_a_row_each_since_each_is_stored() {
    use qi_host::interfaces::limits::STORED_WRITE_OVERHEAD_BYTES;
    let host = context_host().await;
    let row = STORED_WRITE_OVERHEAD_BYTES as u64;
    let created = ("probe".len() + "{}".len()) as u64 + row;
    let reads = 1_000;
    let r = attack_on(&host, json!({"mode": "host.get-many", "count": reads})).await;
    assert_eq!(ok(&r)["ok"], true);
    assert_eq!(r.usage.stored_bytes, created + reads * row);
    // A subscription is a stored row too.
    let r = attack_on(&host, json!({"mode": "host.subscribe-list", "count": 1})).await;
    assert_eq!(ok(&r)["ok"], true);
    assert_eq!(r.usage.stored_bytes, created + row);
}

#[tokio::test]
async fn share_and_revoke_audit_entries_count_against_the_per_agent_bound() {
    let cap = MAX_AUDIT_ENTRIES_PER_AGENT;
    let (host, audit) = audited(true).await;
    let r = attack_on(
        &host,
        json!({"mode": "host.revoke-many", "count": cap + 100}),
    )
    .await;
    assert_eq!(ok(&r)["ok"], true);
    assert_eq!(r.usage.audit_dropped, 100);
    assert_eq!(audit.recorded(), cap + 1 + LIFECYCLE_ENTRIES);
}

#[tokio::test]
async fn a_long_failure_is_cut_before_the_audit_log_and_reported_whole() {
    use qi_host::audit::AuditQuery;
    use qi_host::interfaces::limits::MAX_AUDITED_FAILURE_BYTES;
    let (host, audit) = audited_host().await;
    let bytes = 100_000;
    let r = flood_on(
        &host,
        spec(),
        json!({"mode": "host.big-error", "bytes": bytes}),
    )
    .await;
    match &r.failure {
        Some(AgentFailure::AgentError { message, .. }) => assert_eq!(message.len(), bytes),
        other => panic!("expected the agent's error, got {other:?}"),
    }
    audit.flush().await;
    let finish = audit
        .query(&AuditQuery {
            operation: Some("finish".into()),
            ..Default::default()
        })
        .await
        .expect("audit query");
    assert_eq!(finish.len(), 1);
    // The audit log keeps 1 KiB of a reason and says how long the reason it was handed was:
    // the failure was cut to MAX_AUDITED_FAILURE_BYTES before it was queued.
    let reason = &finish[0].reason;
    let handed: usize = reason
        .rsplit_once("[truncated from ")
        .and_then(|(_, n)| n.strip_suffix(" bytes]"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", &reason[reason.len().saturating_sub(80)..]));
    assert!(handed <= MAX_AUDITED_FAILURE_BYTES + 64, "{handed}");
}
