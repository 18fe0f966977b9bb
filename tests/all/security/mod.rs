//! Access policies, trust levels and the audit trail on real guests: a guest tries every host
//! interface without permission and is refused each time, audited, changing nothing.

use crate::common::cache_dir;
use qi_guest_artifacts::WORKER_COMPONENT;
use qi_host::audit::{AuditDecision, AuditLog, AuditQuery};
use qi_host::context::{ContextService, NewContext, OPERATOR, Permission};
use qi_host::security::{AccessControl, AccessPolicy, PolicySet, TrustLevel};
use qi_host::{
    AgentHost, DirectoryGrant, FileSystemAccess, HostConfig, IsolationLevel, NetworkAccessLevel,
    SubAgentSpecification, TaskRequest, Tool, ToolContext, ToolFuture, ToolRegistry,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

mod audit_closed;
mod audit_head;
mod audit_trail;
mod channels;
mod files;
mod llm;
mod matrix;
mod policies;
mod red_audit;
mod red_files;
mod reload;
mod sharing;
mod sharing_changes;

/// A tool the test controls: a call says it has `entered`, then waits until `release`.
#[derive(Clone, Default)]
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl Tool for Gate {
    fn name(&self) -> &str {
        "test.gate"
    }
    fn description(&self) -> &str {
        "Returns when the test releases it"
    }
    fn call(&self, _ctx: ToolContext, _input: Value) -> ToolFuture {
        let gate = self.clone();
        Box::pin(async move {
            gate.entered.notify_one();
            gate.release.notified().await;
            Ok(Value::Null)
        })
    }
}

struct Secured {
    host: AgentHost,
    svc: ContextService,
    access: Arc<AccessControl>,
    audit: AuditLog,
}

impl Secured {
    /// Makes the store refuse audit writes (a trigger, like a full disk), then records one
    /// entry so the next batch fails: from then on the log accepts nothing.
    async fn fail_the_audit_log(&self) {
        self.svc
            .store()
            .write(|ctx| {
                ctx.tx().execute_batch(
                    "CREATE TRIGGER no_audit BEFORE INSERT ON audit \
                     BEGIN SELECT RAISE(ABORT, 'audit disk full'); END;",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        self.audit
            .record(qi_host::audit::NewAuditEntry::new(
                "operator",
                "test",
                "probe",
                AuditDecision::Record,
                "",
            ))
            .unwrap();
        self.audit.flush().await;
        assert!(self.audit.status().failure.is_some());
    }
}

async fn secured(policies: Option<&str>) -> Secured {
    secured_with_tools(policies, ToolRegistry::with_builtins()).await
}

async fn secured_with_tools(policies: Option<&str>, tools: ToolRegistry) -> Secured {
    let svc = crate::common::in_memory_context().await;
    let audit = AuditLog::open(svc.store().clone())
        .await
        .expect("audit log");
    let policies = policies.map(|p| {
        let file: toml::Value = toml::from_str(p).expect("policy toml");
        let list: Vec<AccessPolicy> = file["policies"].clone().try_into().expect("policies parse");
        PolicySet::new(list).expect("policies valid")
    });
    let access = Arc::new(AccessControl::new(policies, Some(audit.clone())));
    let host = AgentHost::with_tools(
        HostConfig {
            max_live_agents: 16,
            cache_dir: Some(cache_dir()),
            ..HostConfig::default()
        },
        tools,
    )
    .expect("host")
    .with_context(svc.clone())
    .with_access(access.clone());
    Secured {
        host,
        svc,
        access,
        audit,
    }
}

async fn context(svc: &ContextService, id: &str) -> u64 {
    svc.create(
        OPERATOR,
        NewContext {
            id: Some(id.into()),
            context_type: "notes".into(),
            doc: json!({"n": 1}),
            ..NewContext::default()
        },
    )
    .await
    .expect("create")
    .version
}

fn steps_input(steps: Value) -> Value {
    json!({"subtask": "probe", "attempt": 1, "inputs": {"steps": steps}})
}

/// A spec whose grants allow everything the probes try, so that only policies refuse.
fn granted(dir: &std::path::Path) -> SubAgentSpecification {
    let mut s = SubAgentSpecification {
        isolation_level: IsolationLevel::Restricted,
        fuel: 5_000_000_000,
        ..Default::default()
    };
    s.directories.push(DirectoryGrant {
        host_path: dir.to_path_buf(),
        guest_path: "/workspace".into(),
        writable: Some(true),
    });
    s.security_constraints.file_system_access = FileSystemAccess::Restricted;
    s.security_constraints.network_access_level = NetworkAccessLevel::Restricted;
    s.security_constraints.allowed_tools = vec!["*".into()];
    s.resource_limits.allowed_network_hosts = vec!["127.0.0.1:*".into()];
    s
}

const ONLY_ALLOWED_CONTEXTS: &str = r#"
[[policies]]
id = "allowed-only"
priority = 1
[[policies.rules]]
effect = "allow"
resources = ["context/allowed-*"]
actions = ["get"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_interface_without_permission_is_refused_audited_and_unchanged() {
    let s = secured(Some(ONLY_ALLOWED_CONTEXTS)).await;
    let secret_version = context(&s.svc, "secret").await;
    context(&s.svc, "allowed-1").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "hello").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();

    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let agent = s.host.spawn(&component, granted(dir.path())).await.unwrap();
    let id = agent.id().to_string();
    // Sharing allows it; only the policies refuse.
    for ctx in ["secret", "allowed-1"] {
        s.svc
            .share(
                OPERATOR,
                ctx,
                std::slice::from_ref(&id),
                &[Permission::Read, Permission::Write],
                None,
            )
            .await
            .unwrap();
    }
    let report = agent
        .run(TaskRequest::new(
            "probe",
            steps_input(json!([
                {"context_get": {"id": "allowed-1"}},
                {"context_get": {"id": "secret"}},
                {"context_put": {"id": "secret", "doc": {"n": 2}}},
                {"tool": {"name": "clock.now", "input": {}}},
                {"read_file": "/workspace/a.txt"},
                {"write_file": {"path": "/workspace/new.txt", "text": "x"}},
                {"connect": addr},
                {"publish": "secret"},
                {"subscribe": "secret"},
            ])),
        ))
        .await;
    let out = report
        .output
        .clone()
        .unwrap_or_else(|| panic!("{report:?}"));
    let probes = out["probes"].as_array().unwrap();
    assert_eq!(
        probes[0]["ok"], true,
        "the allowed get works: {}",
        probes[0]
    );
    for p in &probes[1..] {
        assert_eq!(p["ok"], false, "{p}");
        let e = p["error"].as_str().unwrap().to_lowercase();
        assert!(
            e.contains("access-denied") || e.contains("permission denied") || e.contains("access"),
            "{p}"
        );
    }
    // Nothing changed.
    assert_eq!(
        s.svc.get(OPERATOR, "secret").await.unwrap().version,
        secret_version
    );
    assert!(!dir.path().join("new.txt").exists());
    assert!(
        listener.accept().is_err(),
        "no connection reached the listener"
    );
    // Every refusal is in the audit log, with the rule that decided.
    s.audit.flush().await;
    let denied = s
        .audit
        .query(&AuditQuery {
            agent: Some(id.clone()),
            decision: Some(AuditDecision::Deny),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let resources: Vec<&str> = denied.iter().map(|e| e.resource.as_str()).collect();
    for want in [
        "context/secret",
        "tool/clock.now",
        "file/workspace/a.txt",
        "file/workspace/new.txt",
        "events/secret",
    ] {
        assert!(
            resources.contains(&want),
            "no deny entry for {want}: {resources:?}"
        );
    }
    assert!(
        resources.iter().any(|r| r.starts_with("network/")),
        "no network refusal: {resources:?}"
    );
    assert!(denied.iter().all(|e| e.reason.contains("default deny")));
    let allowed = s
        .audit
        .query(&AuditQuery {
            agent: Some(id.clone()),
            decision: Some(AuditDecision::Allow),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert!(allowed[0].reason.contains("policy `allowed-only` rule 1"));
    // The lifecycle is audited too.
    let lifecycle = s
        .audit
        .query(&AuditQuery {
            agent: Some(id),
            resource: Some("lifecycle".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let ops: Vec<&str> = lifecycle.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(ops, ["spawn", "finish"]);
    assert!(s.audit.verify().await.unwrap().first_broken.is_none());
}

const TRUSTED_READS: &str = r#"
[[policies]]
id = "trusted-reads"
[[policies.rules]]
effect = "allow"
resources = ["context/*"]
actions = ["get"]
condition = 'principal.trust >= 2'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_level_changes_are_enforced_and_audited() {
    let s = secured(Some(TRUSTED_READS)).await;
    context(&s.svc, "doc").await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let probe = || steps_input(json!([{"context_get": {"id": "doc"}}]));
    let spec = SubAgentSpecification {
        trust_level: TrustLevel::Low,
        ..Default::default()
    };

    // Just below the required level: refused.
    let low = s.host.spawn(&component, spec.clone()).await.unwrap();
    s.svc
        .share(
            OPERATOR,
            "doc",
            &[low.id().to_string()],
            &[Permission::Read],
            None,
        )
        .await
        .unwrap();
    let r = low.run(TaskRequest::new("p", probe())).await;
    assert_eq!(r.output.unwrap()["probes"][0]["ok"], false);

    // Raised at runtime to exactly the required level: allowed.
    let raised = s.host.spawn(&component, spec).await.unwrap();
    let id = raised.id().to_string();
    share_doc_for_reading(&s, &id).await;
    s.host
        .update_agent_trust_level(&id, TrustLevel::Medium, "reviewed by operator")
        .unwrap();
    assert_eq!(s.host.trust_level(&id), Some(TrustLevel::Medium));
    let r = raised.run(TaskRequest::new("p", probe())).await;
    assert_eq!(r.output.unwrap()["probes"][0]["ok"], true);

    s.audit.flush().await;
    let changes = s
        .audit
        .query(&AuditQuery {
            agent: Some(id),
            operation: Some("update-trust-level".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    assert!(
        changes[0].reason.contains("low -> medium"),
        "{:?}",
        changes[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitored_agents_have_every_host_call_audited_with_sizes_and_duration() {
    let s = secured(None).await;
    context(&s.svc, "doc").await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let spec = SubAgentSpecification {
        isolation_level: IsolationLevel::Monitored,
        ..Default::default()
    };
    let a = s.host.spawn(&component, spec).await.unwrap();
    let id = a.id().to_string();
    share_doc_for_reading(&s, &id).await;
    let r = a
        .run(TaskRequest::new(
            "p",
            steps_input(json!([{"context_get": {"id": "doc", "times": 3}}, {"log": "hi"}])),
        ))
        .await;
    assert!(r.failure.is_none(), "{r:?}");
    s.audit.flush().await;
    let calls = s
        .audit
        .query(&AuditQuery {
            agent: Some(id),
            resource: Some("call/*".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let gets: Vec<_> = calls
        .iter()
        .filter(|e| e.operation == "context.get")
        .collect();
    assert_eq!(gets.len(), 3, "{calls:?}");
    assert_eq!(gets[0].resource, "call/doc");
    assert!(gets[0].details["argBytes"].as_u64().unwrap() > 0);
    assert!(gets[0].details.get("durationUs").is_some());
    assert!(calls.iter().any(|e| e.operation == "log.log"), "{calls:?}");
}

#[tokio::test]
async fn policy_file_errors_point_at_the_offending_part() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "[[policies]]\nid = \"p\"\n[[policies.rules]]\neffect = \"allow\"\nresources = [\"*\"]\ncondition = 'principal.trust >= 2 &&'\n",
    )
    .unwrap();
    let e = PolicySet::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("policy `p` rule 1 `condition` at line 1, column 24"),
        "{e}"
    );
    std::fs::write(&path, "[[policies]]\nid = \"p\"\nrules = []\ncolour = 1\n").unwrap();
    let e = PolicySet::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("line 4, column 1: unknown field `colour`"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_points_go_through_the_gate_in_a_coordinated_run() {
    let s = secured(Some(
        r#"
[[policies]]
id = "no-votes"
[[policies.rules]]
effect = "allow"
resources = ["sync/*"]
actions = ["barrier"]
"#,
    ))
    .await;
    let toml = r#"
[task]
id = "t"
[strategy]
type = "hybrid"
[[strategy.synchronizationPoints]]
id = "b"
type = "barrier"
participants = ["p"]
[[strategy.synchronizationPoints]]
id = "v"
type = "decision"
participants = ["p"]
[agents.w]
component = "guest:worker"
[[subtasks]]
id = "p"
inputs = [{ name = "steps", value = [{ barrier = "b" }, { vote = { point = "v", choice = "yes" }, tolerate = true }] }]
"#;
    let path = std::path::Path::new("t.toml");
    let host = Arc::new(s.host);
    let manifest = qi_host::coord::Manifest::parse(toml, path).unwrap();
    let prepared = qi_host::coord::prepare_parsed(
        &host,
        manifest,
        toml,
        path,
        Some(&crate::coord::guest_dir()),
    )
    .await
    .unwrap();
    let r = prepared
        .run(host.clone(), qi_host::coord::RunOptions::default())
        .await
        .unwrap();
    assert!(r.success, "{r:#?}");
    let out = r.results[0].output.as_ref().unwrap();
    assert_eq!(out["sync"][0]["complete"], true, "the barrier is allowed");
    let e = out["sync"][1]["error"].as_str().unwrap();
    assert!(e.starts_with("access-denied"), "{e}");
    s.audit.flush().await;
    let denied = s
        .audit
        .query(&AuditQuery {
            resource: Some("sync/v".into()),
            decision: Some(AuditDecision::Deny),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].operation, "vote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_can_require_a_minimum_trust_level() {
    let s = secured(None).await;
    context(&s.svc, "doc").await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let probe = || steps_input(json!([{"context_get": {"id": "doc"}}]));
    let run = |raise: Option<TrustLevel>| {
        let (s, component) = (&s, component.clone());
        async move {
            let a = s
                .host
                .spawn(&component, SubAgentSpecification::default())
                .await
                .unwrap();
            s.svc
                .share_with_min_trust(
                    OPERATOR,
                    "doc",
                    &[a.id().to_string()],
                    &[Permission::Read],
                    None,
                    Some(TrustLevel::High),
                )
                .await
                .unwrap();
            if let Some(level) = raise {
                s.host
                    .update_agent_trust_level(a.id(), level, "test")
                    .unwrap();
            }
            let r = a.run(TaskRequest::new("probe", probe())).await;
            r.output.unwrap()["probes"][0].clone()
        }
    };
    // Default trust (low), and one level short: refused, naming both levels.
    for raise in [None, Some(TrustLevel::Medium)] {
        let p = run(raise).await;
        assert_eq!(p["ok"], false, "{p}");
        assert!(
            p["error"]
                .as_str()
                .unwrap()
                .contains("requires trust level high"),
            "{p}"
        );
    }
    // Exactly the required level: allowed.
    assert_eq!(run(Some(TrustLevel::High)).await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_read_needs_both_a_policy_and_a_share() {
    // One host whose policies allow context reads, one whose policies allow only writes: each
    // half of the rule is taken away once.
    let reads = secured(Some(&context_policy("get"))).await;
    let writes = secured(Some(&context_policy("put"))).await;
    for s in [&reads, &writes] {
        context(&s.svc, "doc").await;
    }
    let refused = |p: Value| {
        assert_eq!(p["ok"], false, "{p}");
        assert!(
            p["error"].as_str().unwrap().starts_with("access-denied"),
            "{p}"
        );
    };
    // The policy allows it, the sharing does not.
    refused(read_doc(&reads, false).await);
    // The sharing allows it, no policy does.
    refused(read_doc(&writes, true).await);
    // Both allow it.
    let p = read_doc(&reads, true).await;
    assert_eq!(p["ok"], true, "{p}");
}

/// A new `worker` on `s` reads context `doc` (after the operator shared it for reading when
/// `share`); its probe.
async fn read_doc(s: &Secured, share: bool) -> Value {
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let a = s
        .host
        .spawn(&component, SubAgentSpecification::default())
        .await
        .unwrap();
    if share {
        s.svc
            .share(
                OPERATOR,
                "doc",
                &[a.id().to_string()],
                &[Permission::Read],
                None,
            )
            .await
            .unwrap();
    }
    let r = a
        .run(TaskRequest::new(
            "p",
            steps_input(json!([{"context_get": {"id": "doc"}}])),
        ))
        .await;
    r.output.unwrap()["probes"][0].clone()
}

/// Policies allowing `action` on every context and nothing else.
fn context_policy(action: &str) -> String {
    format!(
        r#"
[[policies]]
id = "contexts"
[[policies.rules]]
effect = "allow"
resources = ["context/*"]
actions = ["{action}"]
"#
    )
}

/// The operator shares context `doc` with agent `id` for reading.
async fn share_doc_for_reading(s: &Secured, id: &str) {
    s.svc
        .share(
            OPERATOR,
            "doc",
            &[id.to_string()],
            &[Permission::Read],
            None,
        )
        .await
        .unwrap();
}
