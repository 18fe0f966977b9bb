//! Channel calls go through the access gate: each of `send`, `receive` and `ack` on
//! `channel/<id>` is allowed by an allow rule and refused, and audited, by a deny rule.

use super::matrix::{ALLOW_ALL, coordinated, denied_by, denying};
use super::*;

const TASK: &str = r#"
[task]
id = "t"
[strategy]
type = "hybrid"
failureHandling = "graceful-degradation"
[[strategy.channels]]
id = "jobs"
type = "message-queue"
producers = ["produce"]
consumers = ["consume"]
[[strategy.channels]]
id = "results"
type = "event-driven"
producers = ["consume"]
consumers = ["tally"]
[agents.m]
component = "guest:messenger"
[[subtasks]]
id = "produce"
inputs = [{ name = "role", value = "producer" }, { name = "channel", value = "jobs" }, { name = "count", value = 2 }]
[[subtasks]]
id = "consume"
inputs = [{ name = "role", value = "consumer" }, { name = "channel", value = "jobs" }, { name = "resultsChannel", value = "results" }]
[[subtasks]]
id = "tally"
dependsOn = ["consume"]
inputs = [{ name = "role", value = "tally" }, { name = "resultsChannel", value = "results" }, { name = "expect", value = 2 }]
"#;

async fn run(policies: &str) -> (AuditLog, qi_host::coord::RunReport) {
    coordinated(TASK, policies).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_call_is_allowed_by_an_allow_rule_and_refused_by_a_deny_rule() {
    let (_, r) = run(ALLOW_ALL).await;
    assert!(r.success, "{r:#?}");
    for (resource, action, who) in [
        ("channel/jobs", "send", "produce"),
        ("channel/jobs", "receive", "consume"),
        ("channel/jobs", "ack", "consume"),
    ] {
        let (audit, r) = run(&denying(&[(resource, action)])).await;
        let failed = r.results.iter().find(|s| s.id == who).unwrap();
        let error = failed.error.clone().unwrap_or_default();
        assert!(error.contains("access-denied"), "{action}: {failed:#?}");
        audit.flush().await;
        let entries = audit
            .query(&AuditQuery {
                resource: Some("channel/*".into()),
                decision: Some(AuditDecision::Deny),
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        denied_by(&entries, resource, action, 1);
        // A refused send stored nothing.
        if action == "send" {
            assert_eq!(r.channels["jobs"].sent, 0);
        }
    }
}
