//! Red team: what a monitored agent's own calls may make the host keep. The records are bounded
//! in number (`MAX_AUDIT_ENTRIES_PER_AGENT`); each must be bounded in size too, or a guest
//! passing long paths grows host memory by as much as its own memory per call.

use super::*;
use qi_guest_artifacts::{HOSTILE_COMPONENT, WORKER_COMPONENT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitored_call_record_keeps_no_more_of_a_path_than_the_audit_log() {
    let s = secured(None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = granted(dir.path());
    spec.isolation_level = IsolationLevel::Monitored;
    let long = "a/".repeat(100_000);
    let component = s.host.load(HOSTILE_COMPONENT).unwrap();
    let agent = s.host.spawn(&component, spec).await.unwrap();
    let report = agent
        .run(TaskRequest::new(
            "probe",
            json!({"mode": "fs.wasi", "steps": [["stat-at", "root", long]]}),
        ))
        .await;
    let out = report
        .output
        .clone()
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(out["results"][0]["ok"], false, "{out}");
    let record = report
        .host_call_log
        .iter()
        .find(|c| c.call == "filesystem.stat-at")
        .unwrap_or_else(|| panic!("{:?}", report.host_call_log));
    assert!(
        record.target.len() <= qi_host::audit::MAX_NAME_BYTES,
        "a record keeps {} bytes of the path",
        record.target.len()
    );
    // The size of what was passed is still told.
    assert!(
        record.arg_bytes >= long.len() as u64 - 1,
        "{}",
        record.arg_bytes
    );
}

/// Red team: a context call the sharing rules refuse (the context is not shared with the
/// agent) is a refusal like any other, audited with or without a policy file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_call_refused_by_sharing_is_audited_without_a_policy_file() {
    let s = secured(None).await;
    let version = context(&s.svc, "unshared").await;
    let dir = tempfile::tempdir().unwrap();
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let agent = s.host.spawn(&component, granted(dir.path())).await.unwrap();
    let id = agent.id().to_string();
    let report = agent
        .run(TaskRequest::new(
            "probe",
            steps_input(json!([
                {"context_get": {"id": "unshared"}},
                {"context_put": {"id": "unshared", "doc": {"n": 2}}},
                {"publish": "unshared"},
            ])),
        ))
        .await;
    let out = report
        .output
        .clone()
        .unwrap_or_else(|| panic!("{report:?}"));
    for p in out["probes"].as_array().unwrap() {
        assert_eq!(p["ok"], false, "{p}");
    }
    assert_eq!(
        s.svc.get(OPERATOR, "unshared").await.unwrap().version,
        version,
        "nothing changed"
    );
    s.audit.flush().await;
    let denied = s
        .audit
        .query(&AuditQuery {
            agent: Some(id),
            decision: Some(AuditDecision::Deny),
            resource: Some("context/unshared".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let operations: Vec<&str> = denied.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(operations.len(), 3, "one deny per refused call: {denied:?}");
}

/// Red team: at `monitored` every WASI file call is recorded, so when the audit log cannot
/// record one the call is refused (as a gated call is), with or without a policy file, rather
/// than going ahead and being recorded nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitored_file_call_is_refused_when_the_audit_log_cannot_record_it() {
    let s = secured(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), "canary").unwrap();
    let mut spec = granted(dir.path());
    spec.isolation_level = IsolationLevel::Monitored;
    // Spawned (and its spawn recorded) while the log works.
    let component = s.host.load(HOSTILE_COMPONENT).unwrap();
    let agent = s.host.spawn(&component, spec).await.unwrap();
    // The store refuses audit writes; the next batch fails and the log stops accepting.
    s.fail_the_audit_log().await;
    let report = agent
        .run(TaskRequest::new(
            "probe",
            json!({"mode": "fs.wasi", "steps": [["open", "root", "a", "wt", "a"]]}),
        ))
        .await;
    let out = report
        .output
        .clone()
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(out["results"][0]["ok"], false, "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a")).unwrap(),
        "canary",
        "the truncating open did not happen"
    );
}

/// Red team: a trust change is audited; one the audit log cannot record is refused and leaves
/// the level as it was (a raise must never happen unrecorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_change_the_audit_log_cannot_record_is_refused() {
    let s = secured(None).await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = s.host.spawn(&component, granted(dir.path())).await.unwrap();
    let id = agent.id().to_string();
    let before = s.host.trust_level(&id).unwrap();
    s.fail_the_audit_log().await;
    let e = s
        .host
        .update_agent_trust_level(&id, TrustLevel::Full, "test")
        .unwrap_err();
    assert!(e.to_string().contains("audit"), "{e}");
    assert_eq!(s.host.trust_level(&id), Some(before), "unchanged");
}
