//! What the fast path moved or made lazy: stdio kept in the agent and taken by the report, the
//! registry keyed by `Arc<str>`, the `maxConcurrentOperations` semaphore made on first use, and
//! audit entries described only when an audit log is attached.

use super::*;
use qi_guest_artifacts::{HELLO_COMPONENT, HOSTILE_COMPONENT, TOOL_USER_COMPONENT};
use qi_host::audit::{AuditLog, AuditQuery};
use qi_host::context::AgentCapabilities;
use qi_host::sandbox::STDIO_CAPTURE_BYTES;
use qi_host::security::{AccessControl, TrustLevel};
use qi_host::{AgentFailure, Error, IsolationLevel, LimitKind, TaskRequest};

#[tokio::test]
async fn concurrent_agents_stdio_stays_in_its_own_stream_and_agent_and_is_counted() {
    // Distinct sizes per agent and stream: a byte landing in another agent's or stream's
    // capture changes a length. The last one crosses the 64 KiB bound on stderr.
    let mut cases: Vec<(&str, usize)> = (0..8)
        .map(|i| (["stdout", "stderr"][i % 2], 1_000 + 37 * i))
        .collect();
    cases.push(("stderr", STDIO_CAPTURE_BYTES + 1));
    let mut set = tokio::task::JoinSet::new();
    for (i, (stream, bytes)) in cases.iter().copied().enumerate() {
        set.spawn(async move {
            let host = race_host();
            let r = host
                .run(
                    &host.load(HOSTILE_COMPONENT).unwrap(),
                    spec(),
                    TaskRequest::new(
                        "print",
                        json!({"mode": "host.stdout", "bytes": bytes, "stream": stream}),
                    ),
                )
                .await
                .expect("hostile spawns");
            (i, r)
        });
    }
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.unwrap();
        let (stream, bytes) = cases[i];
        ok(&r);
        let (written, silent, dropped) = match stream {
            "stdout" => (&r.stdout, &r.stderr, r.usage.stdout_dropped),
            _ => (&r.stderr, &r.stdout, r.usage.stderr_dropped),
        };
        let kept = bytes.min(STDIO_CAPTURE_BYTES);
        assert_eq!(written.len(), kept, "agent {i} {stream} {bytes}");
        assert!(written.bytes().all(|b| b == b'o'), "agent {i}");
        assert_eq!(silent, "", "agent {i}: nothing reached the other stream");
        assert_eq!(dropped, (bytes - kept) as u64, "agent {i}");
        // The receipt is measured before the report takes the captures.
        assert_eq!(r.usage.stdout_bytes, r.stdout.len() as u64, "agent {i}");
        assert_eq!(r.usage.stderr_bytes, r.stderr.len() as u64, "agent {i}");
    }
}

#[tokio::test]
async fn concurrent_spawns_get_distinct_ids_and_every_one_leaves_the_registry() {
    const N: usize = 32;
    let host = Arc::new(own_host(N as u32));
    let hello = host.load(HELLO_COMPONENT).unwrap();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..N {
        let (host, hello) = (host.clone(), hello.clone());
        set.spawn(async move { host.spawn(&hello, spec()).await.expect("spawns") });
    }
    let mut agents = Vec::new();
    while let Some(agent) = set.join_next().await {
        agents.push(agent.unwrap());
    }
    let ids: HashSet<String> = agents.iter().map(|a| a.id().to_string()).collect();
    assert_eq!(ids.len(), N, "ids are unique");
    let listed: HashSet<String> = host.list().into_iter().map(|(id, _)| id).collect();
    assert_eq!(listed, ids);
    // Half run to the end, half are dropped unrun: all leave.
    let unrun = agents.split_off(N / 2);
    for agent in agents {
        let id = agent.id().to_string();
        let report = agent.run(TaskRequest::new("hi", json!(null))).await;
        assert_eq!(report.agent_id, id);
        assert_eq!(ok(&report)["agent"], "hello");
        assert_eq!(
            report.agent.as_ref().map(|d| d.name.as_str()),
            Some("hello")
        );
    }
    drop(unrun);
    assert_eq!(host.list(), vec![]);
}

#[tokio::test]
async fn a_failed_spawn_frees_its_slot_and_the_live_agent_limit_still_holds() {
    let host = own_host(1);
    let hello = host.load(HELLO_COMPONENT).unwrap();
    let mut starved = spec();
    // Runs out while being instantiated: a failure after the agent was registered.
    starved.fuel = 1;
    match host.spawn(&hello, starved).await {
        Err(Error::Spawn(AgentFailure::LimitExceeded { limit, .. }, _)) => {
            assert_eq!(limit, LimitKind::Fuel)
        }
        other => panic!("expected a fuel failure at spawn, got {other:?}"),
    }
    assert_eq!(host.list(), vec![]);
    let first = host.spawn(&hello, spec()).await.expect("the slot is free");
    assert!(matches!(
        host.spawn(&hello, spec()).await,
        Err(Error::TooManyAgents { limit: 1 })
    ));
    drop(first);
    host.spawn(&hello, spec())
        .await
        .expect("the slot is free again");
}

#[tokio::test]
async fn a_host_panic_during_a_run_leaves_no_registry_entry() {
    let host = Arc::new(own_host(1));
    let agent = host
        .spawn(&host.load(TOOL_USER_COMPONENT).unwrap(), tool_spec())
        .await
        .expect("spawns");
    let running = tokio::spawn(agent.run(TaskRequest::new("panics", one_call("race.panic"))));
    let joined = running.await;
    assert!(
        joined.as_ref().is_err_and(|e| e.is_panic()),
        "the tool's panic unwinds the run: {joined:?}"
    );
    assert_eq!(host.list(), vec![]);
    host.spawn(&host.load(HELLO_COMPONENT).unwrap(), spec())
        .await
        .expect("the slot was freed");
}

/// `tool-user` input: one `call-many` batch of `n` calls meeting at rendezvous `key`, which
/// opens when `open_at` calls have arrived.
fn rendezvous_batch(n: usize, key: &str, open_at: usize) -> Value {
    let calls: Vec<_> = (0..n)
        .map(|_| json!({"tool": "race.rendezvous", "input": {"key": key, "n": open_at}}))
        .collect();
    json!({"calls": calls, "batch": true})
}

async fn run_tool_user(s: SubAgentSpecification, input: Value) -> qi_host::AgentReport {
    let host = race_host();
    let tool_user = host.load(TOOL_USER_COMPONENT).unwrap();
    let run = host.run(&tool_user, s, TaskRequest::new("batch", input));
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the batch's calls overlapped (the rendezvous opened)")
        .expect("tool-user spawns")
}

fn results(report: &qi_host::AgentReport) -> Vec<Value> {
    ok(report)["results"].as_array().unwrap().clone()
}

#[tokio::test]
async fn operations_up_to_max_concurrent_operations_overlap_and_one_more_is_refused() {
    let mut s = tool_spec();
    s.resource_limits.max_concurrent_operations = 3;
    // Completes only if all three calls are in flight at once.
    let inside = run_tool_user(s.clone(), rendezvous_batch(3, "limit-inside", 3)).await;
    let out = results(&inside);
    assert_eq!(out.len(), 3);
    // Each call was made as this agent: the id tools see is the id the report gives.
    for r in &out {
        assert_eq!(r["ok"]["agent"], inside.agent_id.as_str(), "{out:?}");
    }
    assert_eq!(inside.usage.tool_calls, 3);

    let past = run_tool_user(s, rendezvous_batch(4, "limit-past", 4)).await;
    let out = results(&past);
    assert_eq!(out.len(), 4);
    for r in &out {
        assert_eq!(r["error"]["kind"], "limit-exceeded", "{out:?}");
    }
    assert_eq!(past.usage.tool_calls, 0);
}

#[tokio::test]
async fn each_agent_has_its_own_operations_semaphore() {
    // Two agents, two permits each, four calls at one rendezvous: it opens only if neither
    // agent's calls wait for the other's permits.
    let mut s = tool_spec();
    s.resource_limits.max_concurrent_operations = 2;
    let (a, b) = tokio::join!(
        run_tool_user(s.clone(), rendezvous_batch(2, "two-agents", 4)),
        run_tool_user(s, rendezvous_batch(2, "two-agents", 4)),
    );
    for r in [a, b] {
        let out = results(&r);
        assert!(out.iter().all(|r| r["ok"].is_object()), "{out:?}");
        assert_eq!(r.usage.tool_calls, 2);
    }
}

/// A host with the `race.*` tools, a context store and an audit log (no policies).
async fn audited_host() -> (Arc<AgentHost>, AuditLog) {
    let svc = in_memory_context().await;
    let audit = AuditLog::open(svc.store().clone())
        .await
        .expect("audit log opens");
    let host = own_host(8)
        .with_context(svc)
        .with_access(Arc::new(AccessControl::new(None, Some(audit.clone()))));
    (Arc::new(host), audit)
}

/// `(resource, operation, reason)` of every entry about `agent`, in order (flushed first).
async fn entries_of(audit: &AuditLog, agent: &str) -> Vec<(String, String, String)> {
    audit.flush().await;
    audit
        .query(&AuditQuery {
            agent: Some(agent.to_string()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.resource, e.operation, e.reason))
        .collect()
}

fn entry(resource: &str, operation: &str, reason: &str) -> (String, String, String) {
    (resource.into(), operation.into(), reason.into())
}

#[tokio::test]
async fn spawn_trust_terminate_and_finish_are_all_audited_with_an_audit_log() {
    let (host, audit) = audited_host().await;
    let agent = host
        .spawn(&host.load(TOOL_USER_COMPONENT).unwrap(), tool_spec())
        .await
        .expect("spawns");
    let id = agent.id().to_string();
    host.update_agent_trust_level(&id, TrustLevel::High, "earned")
        .unwrap();
    let running = tokio::spawn(agent.run(TaskRequest::new("blocks", one_call("race.gate"))));
    entered_gate(&id).await;
    host.terminate(&id, "first").unwrap();
    host.terminate(&id, "second").unwrap();
    let report = running.await.unwrap();
    assert_eq!(report.status, AgentStatus::Terminated);

    let lifecycle: Vec<_> = entries_of(&audit, &id)
        .await
        .into_iter()
        .filter(|(resource, _, _)| resource == "lifecycle" || resource == "trust")
        .map(|(resource, operation, reason)| {
            // The spawn entry's reason names the agent and its version.
            let reason = if operation == "spawn" {
                String::new()
            } else {
                reason
            };
            (resource, operation, reason)
        })
        .collect();
    let old = qi_host::SubAgentSpecification::default().trust_level;
    assert_eq!(
        lifecycle,
        vec![
            entry("lifecycle", "spawn", ""),
            entry(
                "trust",
                "update-trust-level",
                &format!("{} -> {}: earned", old.as_str(), TrustLevel::High.as_str())
            ),
            entry("lifecycle", "terminate", "first"),
            entry("lifecycle", "terminate", "second"),
            entry("lifecycle", "finish", "terminated: first"),
        ]
    );
}

#[tokio::test]
async fn a_failed_spawn_is_audited_with_an_audit_log() {
    let (host, audit) = audited_host().await;
    let mut starved = spec();
    starved.fuel = 1;
    let err = host
        .spawn(&host.load(HELLO_COMPONENT).unwrap(), starved)
        .await
        .expect_err("runs out of fuel while instantiated");
    assert!(matches!(err, Error::Spawn(..)), "{err}");
    // Running out of fuel is a limit violation like any other, audited before the failure.
    assert_eq!(
        entries_of(&audit, "*").await,
        vec![
            entry(
                "limits",
                "limit-violation",
                "fuel limit (1): all 1 units of fuel used"
            ),
            entry(
                "lifecycle",
                "spawn-failed",
                "fuel limit exceeded (fuel = 1): all 1 units of fuel used"
            )
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_violation_is_audited_with_an_audit_log() {
    let (host, audit) = audited_host().await;
    let mut s = tool_spec();
    s.resource_limits.max_execution_time_ms = 5_000;
    let agent = host
        .spawn(&host.load(TOOL_USER_COMPONENT).unwrap(), s)
        .await
        .expect("spawns");
    let id = agent.id().to_string();
    // Blocked forever: the paused clock jumps to the deadline (hang guard an hour later).
    let report = tokio::time::timeout(
        Duration::from_secs(3_600),
        agent.run(TaskRequest::new("blocks", one_call("race.gate"))),
    )
    .await
    .expect("the deadline stopped the agent");
    assert_eq!(limit(&report).0, LimitKind::ExecutionTime);
    let operations: Vec<_> = entries_of(&audit, &id)
        .await
        .into_iter()
        .filter(|(resource, _, _)| resource == "lifecycle" || resource == "limits")
        .map(|(_, operation, _)| operation)
        .collect();
    assert_eq!(operations, ["spawn", "limit-violation", "finish"]);
}

#[tokio::test]
async fn share_and_revoke_are_audited_with_an_audit_log() {
    let (host, audit) = audited_host().await;
    let context = host.context().unwrap();
    for probe in ["agent-probe-0", "agent-probe-1"] {
        context
            .register_agent(probe, AgentCapabilities::default())
            .await
            .unwrap();
    }
    let mut s = spec();
    s.isolation_level = IsolationLevel::Restricted;
    let hostile = host.load(HOSTILE_COMPONENT).unwrap();
    let mut ids = Vec::new();
    for input in [
        json!({"mode": "host.share-list", "count": 2}),
        json!({"mode": "host.revoke-many", "count": 1}),
    ] {
        let agent = host.spawn(&hostile, s.clone()).await.expect("spawns");
        ids.push(agent.id().to_string());
        let r = agent.run(TaskRequest::new("share", input)).await;
        assert_eq!(ok(&r)["ok"], true);
    }
    let shares = entries_of(&audit, &ids[0]).await;
    assert!(
        shares.iter().any(|(r, o, why)| r.starts_with("context/")
            && o == "share"
            && why == "granted to `agent-probe-0`"),
        "{shares:?}"
    );
    let revokes = entries_of(&audit, &ids[1]).await;
    assert!(
        revokes.iter().any(|(r, o, why)| r.starts_with("context/")
            && o == "revoke"
            && why == "grant of `agent-x` revoked"),
        "{revokes:?}"
    );
}

/// Starts spawning `hello` on `host` and returns the spawn's task and the agent's id once it
/// is seen in the registry while the spawn is parked (in its context registration, the only
/// wait before the guest runs). The context store's writer thread may answer before the spawn
/// parks, so this tries up to 100 spawns.
async fn catch_spawn_parked(
    host: &Arc<AgentHost>,
) -> (tokio::task::JoinHandle<qi_host::Result<String>>, String) {
    let hello = host.load(HELLO_COMPONENT).unwrap();
    for _ in 0..100 {
        let spawning = tokio::spawn({
            let (host, hello) = (host.clone(), hello.clone());
            async move { host.spawn(&hello, spec()).await.map(|a| a.id().to_string()) }
        });
        while !spawning.is_finished() {
            if let Some((id, status)) = host.list().into_iter().next() {
                assert_eq!(status, AgentStatus::Initializing);
                return (spawning, id);
            }
            tokio::task::yield_now().await;
        }
        spawning.await.unwrap().expect("spawns");
    }
    panic!("never saw a spawn parked in its context registration");
}

#[tokio::test]
async fn trust_changes_and_terminate_during_context_registration_are_audited() {
    // The spawn registers the agent in the context store (an await) after the agent is in
    // the registry: operator actions in that window must still reach the audit log.
    let (host, audit) = audited_host().await;
    let (spawning, id) = catch_spawn_parked(&host).await;
    host.update_agent_trust_level(&id, TrustLevel::High, "early")
        .unwrap();
    host.terminate(&id, "early").unwrap();
    match spawning.await.unwrap() {
        Err(Error::Spawn(AgentFailure::Terminated { reason }, _)) => assert_eq!(reason, "early"),
        other => panic!("expected a terminated spawn, got {other:?}"),
    }
    let operations: Vec<_> = entries_of(&audit, &id)
        .await
        .into_iter()
        .map(|(_, operation, _)| operation)
        .collect();
    assert_eq!(
        operations,
        ["update-trust-level", "terminate", "spawn-failed"]
    );
}

#[tokio::test]
async fn dropping_a_running_agents_future_frees_its_registry_slot() {
    // The caller gives up on a run (its own timeout, a cancelled request): the agent, blocked
    // in a host call, leaves the registry with the dropped future.
    let host = own_host(1);
    let agent = host
        .spawn(&host.load(TOOL_USER_COMPONENT).unwrap(), tool_spec())
        .await
        .expect("spawns");
    let id = agent.id().to_string();
    let run = agent.run(TaskRequest::new("blocks", one_call("race.gate")));
    tokio::select! {
        _ = run => panic!("the run ended by itself"),
        _ = entered_gate(&id) => {}
    }
    assert_eq!(host.list(), vec![]);
    host.spawn(&host.load(HELLO_COMPONENT).unwrap(), spec())
        .await
        .expect("the slot was freed");
}
