//! The refusal matrix: every WIT host function the gate covers, and every socket operation
//! that reaches it, run by a real guest once under policies that allow it (it succeeds) and
//! once under a rule that denies exactly it (refused, access-denied, and the refusal is in
//! the audit log naming that rule). File operations are covered with the filesystem's tests.
//! `listen` never reaches the gate: grants refuse it for every agent (see `walls::net`).

use super::*;
use qi_guest_artifacts::HOSTILE_COMPONENT;

/// Allows everything: the baseline every case's deny rule is added to.
pub(super) const ALLOW_ALL: &str =
    "[[policies]]\nid = \"all\"\n[[policies.rules]]\neffect = \"allow\"\nresources = [\"*\"]\n";

/// `ALLOW_ALL` plus policy `deny` with one rule per `(resource, action)`, at the same
/// priority (deny wins in the tier).
pub(super) fn denying(cases: &[(&str, &str)]) -> String {
    let mut t = format!("{ALLOW_ALL}[[policies]]\nid = \"deny\"\n");
    for (resource, action) in cases {
        t.push_str(&format!(
            "[[policies.rules]]\neffect = \"deny\"\nresources = [\"{resource}\"]\nactions = [\"{action}\"]\n"
        ));
    }
    t
}

/// The audit entries of `agent` that were denied.
async fn denials(s: &Secured, agent: &str) -> Vec<qi_host::audit::AuditEntry> {
    s.audit.flush().await;
    s.audit
        .query(&AuditQuery {
            agent: Some(agent.to_string()),
            decision: Some(AuditDecision::Deny),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

/// Asserts that the denials include `resource`/`action` decided by rule `n` of `deny`.
pub(super) fn denied_by(
    entries: &[qi_host::audit::AuditEntry],
    resource: &str,
    action: &str,
    n: usize,
) {
    let want = format!("policy `deny` rule {n} denies it");
    assert!(
        entries
            .iter()
            .any(|e| e.resource == resource && e.operation == action && e.reason == want),
        "{resource} {action}: {entries:?}"
    );
}

/// Context, events and tool calls of one `worker` run; `(resource, action, step)` in order.
fn host_calls(peer: &str) -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "context/fresh",
            "create",
            json!({"context_create": {"id": "fresh", "doc": {"a": 1}}}),
        ),
        ("context/doc", "get", json!({"context_get": {"id": "doc"}})),
        (
            "context/doc",
            "put",
            json!({"context_put": {"id": "doc", "doc": {"n": 2}}}),
        ),
        (
            "context/doc",
            "patch",
            json!({"context_patch": {"id": "doc", "doc": {"m": 3}}}),
        ),
        (
            "context/doc",
            "share",
            json!({"context_share": {"id": "doc", "agent": peer}}),
        ),
        (
            "context/doc",
            "revoke",
            json!({"context_revoke": {"id": "doc", "agent": peer}}),
        ),
        ("context/*", "ids", json!({"context_ids": null})),
        ("events/doc", "subscribe", json!({"subscribe": "doc"})),
        ("events/doc", "publish", json!({"publish": "doc"})),
        (
            "tool/clock.now",
            "call",
            json!({"tool": {"name": "clock.now", "input": {}}}),
        ),
        ("context/gone", "delete", json!({"context_delete": "gone"})),
    ]
}

/// Runs every host call of [`host_calls`] under `policies`; the probes and the agent's id.
async fn run_host_calls(policies: &str) -> (Secured, Vec<Value>, String) {
    let s = secured(Some(policies)).await;
    for id in ["doc", "gone"] {
        // Manual, so that a write needs no base version (it is based on the current one).
        s.svc
            .create(
                OPERATOR,
                NewContext {
                    id: Some(id.into()),
                    context_type: "notes".into(),
                    doc: json!({"n": 1}),
                    strategy: qi_host::context::SyncStrategy::Manual,
                    ..NewContext::default()
                },
            )
            .await
            .unwrap();
    }
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let peer = s
        .host
        .spawn(&component, SubAgentSpecification::default())
        .await
        .unwrap();
    let mut spec = SubAgentSpecification::default();
    spec.security_constraints.allowed_tools = vec!["clock.now".into()];
    spec.fuel = 5_000_000_000;
    let a = s.host.spawn(&component, spec).await.unwrap();
    let id = a.id().to_string();
    for doc in ["doc", "gone"] {
        s.svc
            .share(
                OPERATOR,
                doc,
                std::slice::from_ref(&id),
                &Permission::ALL,
                None,
            )
            .await
            .unwrap();
    }
    let steps: Vec<Value> = host_calls(peer.id()).into_iter().map(|c| c.2).collect();
    let r = a
        .run(TaskRequest::new("p", steps_input(json!(steps))))
        .await;
    let out = r.output.clone().unwrap_or_else(|| panic!("{r:?}"));
    (s, out["probes"].as_array().unwrap().clone(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gated_host_call_is_allowed_by_an_allow_rule_and_refused_by_a_deny_rule() {
    let (_, probes, _) = run_host_calls(ALLOW_ALL).await;
    let calls = host_calls("peer");
    for ((resource, action, _), p) in calls.iter().zip(&probes) {
        assert_eq!(p["ok"], true, "allowed {resource} {action}: {p}");
    }
    assert_eq!(
        probes[6]["value"],
        json!(["doc", "fresh", "gone"]),
        "ids lists"
    );
    let targets: Vec<(&str, &str)> = calls.iter().map(|c| (c.0, c.1)).collect();
    let (s, probes, id) = run_host_calls(&denying(&targets)).await;
    let entries = denials(&s, &id).await;
    for (n, ((resource, action, _), p)) in calls.iter().zip(&probes).enumerate() {
        if *action == "ids" {
            // `ids` cannot fail: a refusal lists nothing.
            assert_eq!(p["value"], json!([]), "{p}");
        } else {
            assert_eq!(p["ok"], false, "denied {resource} {action}: {p}");
            let e = p["error"].as_str().unwrap();
            assert!(e.starts_with("access-denied"), "{resource} {action}: {e}");
        }
        denied_by(&entries, resource, action, n + 1);
    }
    // The denied writes changed nothing.
    let doc = s.svc.get(OPERATOR, "doc").await.unwrap();
    assert_eq!(doc.doc, json!({"n": 1}));
    assert!(s.svc.get(OPERATOR, "gone").await.is_ok());
    assert!(s.svc.get(OPERATOR, "fresh").await.is_err());
}

const SYNC_TASK: &str = r#"
[task]
id = "t"
[strategy]
type = "hybrid"
[[strategy.synchronizationPoints]]
id = "b"
type = "barrier"
participants = ["p"]
[[strategy.synchronizationPoints]]
id = "c"
type = "checkpoint"
participants = ["p"]
[[strategy.synchronizationPoints]]
id = "v"
type = "decision"
participants = ["p"]
[[strategy.synchronizationPoints]]
id = "k"
type = "aggregation"
participants = ["p"]
reducer = "sum"
[agents.w]
component = "guest:worker"
[[subtasks]]
id = "p"
inputs = [{ name = "steps", value = [
  { barrier = "b", tolerate = true },
  { checkpoint = { point = "c", state = { s = 1 } }, tolerate = true },
  { restore = "c", tolerate = true },
  { vote = { point = "v", choice = "yes" }, tolerate = true },
  { contribute = { point = "k", value = { n = 1 } }, tolerate = true },
] }]
"#;

const SYNC_CALLS: [(&str, &str); 5] = [
    ("sync/b", "barrier"),
    ("sync/c", "checkpoint"),
    ("sync/c", "restore"),
    ("sync/v", "vote"),
    ("sync/k", "contribute"),
];

/// One coordinated run of manifest `task` on a host under `policies`: its audit log and report.
pub(super) async fn coordinated(
    task: &str,
    policies: &str,
) -> (AuditLog, qi_host::coord::RunReport) {
    let Secured { host, audit, .. } = secured(Some(policies)).await;
    let path = std::path::Path::new("t.toml");
    let host = Arc::new(host);
    let manifest = qi_host::coord::Manifest::parse(task, path).unwrap();
    let prepared = qi_host::coord::prepare_parsed(
        &host,
        manifest,
        task,
        path,
        Some(&crate::coord::guest_dir()),
    )
    .await
    .unwrap();
    let r = prepared
        .run(host, qi_host::coord::RunOptions::default())
        .await
        .unwrap();
    (audit, r)
}

/// One coordinated run of [`SYNC_TASK`] under `policies`: the worker's `sync` outcomes.
async fn run_sync(policies: &str) -> (AuditLog, Vec<Value>) {
    let (audit, r) = coordinated(SYNC_TASK, policies).await;
    let out = r.results[0]
        .output
        .clone()
        .unwrap_or_else(|| panic!("{r:#?}"));
    (audit, out["sync"].as_array().unwrap().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_call_is_allowed_by_an_allow_rule_and_refused_by_a_deny_rule() {
    let (_, outcomes) = run_sync(ALLOW_ALL).await;
    assert_eq!(outcomes.len(), 5);
    for ((resource, action), o) in SYNC_CALLS.iter().zip(&outcomes) {
        assert!(o.get("error").is_none(), "allowed {resource} {action}: {o}");
    }
    let (audit, outcomes) = run_sync(&denying(&SYNC_CALLS)).await;
    audit.flush().await;
    let entries = audit
        .query(&AuditQuery {
            resource: Some("sync/*".into()),
            decision: Some(AuditDecision::Deny),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    for (n, ((resource, action), o)) in SYNC_CALLS.iter().zip(&outcomes).enumerate() {
        let e = o["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{resource} {action}: {o}"));
        assert!(e.starts_with("access-denied"), "{resource} {action}: {e}");
        denied_by(&entries, resource, action, n + 1);
    }
}

/// Runs `hostile` in mode `input` at `monitored` isolation with full network access (so the
/// grants let every address through and only the policies decide).
async fn hostile_net(s: &Secured, input: Value) -> (Value, String) {
    let component = s.host.load(HOSTILE_COMPONENT).unwrap();
    let mut spec = SubAgentSpecification {
        isolation_level: IsolationLevel::Monitored,
        ..Default::default()
    };
    spec.security_constraints.network_access_level = NetworkAccessLevel::Full;
    let r = s
        .host
        .run(&component, spec, TaskRequest::new("net", input))
        .await
        .unwrap();
    (
        r.output.clone().unwrap_or_else(|| panic!("{r:?}")),
        r.agent_id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gated_socket_operation_is_allowed_by_an_allow_rule_and_refused_by_a_deny_rule() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let tcp = listener.local_addr().unwrap().to_string();
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver.set_nonblocking(true).unwrap();
    let udp = receiver.local_addr().unwrap().to_string();
    let connect = json!({"mode": "net.connect", "target": tcp});
    let send = json!({"mode": "net.udp-send", "target": udp, "payload": "canary"});
    let bind = json!({"mode": "net.bind", "proto": "udp", "port": 0});
    let resolve = json!({"mode": "net.resolve", "name": "localhost"});
    let ok = |o: &Value| o["error"].is_null();

    let allowed = secured(Some(ALLOW_ALL)).await;
    let (o, _) = hostile_net(&allowed, connect.clone()).await;
    assert!(ok(&o) && o["connected"] == true, "{o}");
    listener.accept().expect("the allowed connect arrived");
    let (o, _) = hostile_net(&allowed, send.clone()).await;
    assert!(ok(&o), "{o}");
    let mut buf = [0u8; 16];
    let (n, _) = receiver
        .recv_from(&mut buf)
        .or_else(|_| {
            receiver.set_nonblocking(false)?;
            let r = receiver.recv_from(&mut buf);
            receiver.set_nonblocking(true)?;
            r
        })
        .expect("the allowed datagram arrived");
    assert_eq!(&buf[..n], b"canary");
    let (o, _) = hostile_net(&allowed, bind.clone()).await;
    assert!(ok(&o) && o["bound"] == true, "{o}");
    let (o, _) = hostile_net(&allowed, resolve.clone()).await;
    assert!(ok(&o), "{o}");
    assert!(
        o["addresses"]
            .as_array()
            .unwrap()
            .contains(&json!("127.0.0.1")),
        "{o}"
    );

    let rules = [
        ("network/127.0.0.1:*", "connect"),
        ("network/127.0.0.1:*", "send"),
        ("network/0.0.0.0:0", "bind"),
        ("network/localhost", "resolve"),
    ];
    // One host per rule: a connect or a send binds first, so a bind rule would refuse them.
    for (input, rule) in [connect, send, bind, resolve].into_iter().zip(rules) {
        let denied = secured(Some(&denying(&[rule]))).await;
        let (o, agent) = hostile_net(&denied, input).await;
        let action = rule.1;
        assert!(o["error"].is_string(), "{action}: {o}");
        let entries = denials(&denied, &agent).await;
        assert!(
            entries
                .iter()
                .any(|e| e.operation == action && e.reason == "policy `deny` rule 1 denies it"),
            "{action}: {entries:?}"
        );
    }
    // Nothing the denied guests tried reached the canaries.
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    assert_eq!(
        receiver.recv_from(&mut buf).map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

/// Red team: a name lookup is decided on the name the lookup asks for, as the allow-list reads
/// it (case and a trailing dot ignored): `LocalHost.` is `network/localhost`, and a rule
/// denying that name stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_spelt_with_capitals_and_a_trailing_dot_meets_the_rule_for_the_name() {
    let denied = secured(Some(&denying(&[("network/localhost", "resolve")]))).await;
    let (o, agent) = hostile_net(
        &denied,
        json!({"mode": "net.resolve", "name": "LocalHost."}),
    )
    .await;
    assert!(o["error"].is_string(), "{o}");
    assert!(
        o["addresses"].as_array().is_none_or(|a| a.is_empty()),
        "{o}"
    );
    let entries = denials(&denied, &agent).await;
    assert!(
        entries.iter().any(|e| e.resource == "network/localhost"
            && e.operation == "resolve"
            && e.reason == "policy `deny` rule 1 denies it"),
        "{entries:?}"
    );
}

/// Red team: an IPv4 address spelt as an IPv4-mapped IPv6 address reaches no canary a rule for
/// the IPv4 address protects (WASI refuses such addresses before the gate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_mapped_address_meets_the_rule_for_its_ipv4_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let denied = secured(Some(&denying(&[("network/127.0.0.1:*", "connect")]))).await;
    let (o, _) = hostile_net(
        &denied,
        json!({"mode": "net.connect", "target": format!("[::ffff:127.0.0.1]:{port}")}),
    )
    .await;
    assert!(o["error"].is_string(), "{o}");
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the canary listener was reached"
    );
}
