//! `hostile` guest, `net.*` modes: name resolution only for allowed names, every socket use
//! counted and audited, sockets within the handle cap. The DNS test in its own network
//! namespace is in [`dns`].

mod dns;

use crate::common::*;
use qi_guest_artifacts::HOSTILE_COMPONENT;
use qi_host::audit::{AuditDecision, AuditEntry, AuditLog, AuditQuery};
use qi_host::security::{AccessControl, AccessPolicy, PolicySet};
use qi_host::{AgentHost, AgentReport, SubAgentSpecification, TaskRequest};
use serde_json::{Value, json};
use std::sync::Arc;

use crate::common::network_spec as net_spec;

async fn hostile(spec: SubAgentSpecification, input: Value) -> AgentReport {
    run(HOSTILE_COMPONENT, spec, input).await
}

/// A host with an audit log (and `policies`, TOML, if given): every network refusal must be
/// audited, with or without policies.
struct Audited {
    host: AgentHost,
    audit: AuditLog,
}

async fn audited() -> Audited {
    audited_with(None).await
}

async fn audited_with(policies: Option<&str>) -> Audited {
    let svc = in_memory_context().await;
    let audit = AuditLog::open(svc.store().clone())
        .await
        .expect("audit log");
    let policies = policies.map(|p| {
        let file: toml::Value = toml::from_str(p).expect("policy toml");
        let list: Vec<AccessPolicy> = file["policies"].clone().try_into().expect("policies");
        PolicySet::new(list).expect("policies valid")
    });
    let host = crate::common::new_host(16)
        .with_access(Arc::new(AccessControl::new(policies, Some(audit.clone()))));
    Audited { host, audit }
}

impl Audited {
    async fn run(&self, spec: SubAgentSpecification, input: Value) -> AgentReport {
        let component = self.host.load(HOSTILE_COMPONENT).expect("hostile loads");
        self.host
            .run(&component, spec, TaskRequest::new("net wall", input))
            .await
            .expect("agent spawns")
    }

    /// The agent's `network/*` audit entries.
    async fn network_entries(&self, report: &AgentReport) -> Vec<AuditEntry> {
        self.audit.flush().await;
        let mut entries = self
            .audit
            .query(&AuditQuery {
                agent: Some(report.agent_id.clone()),
                ..AuditQuery::default()
            })
            .await
            .expect("audit query");
        entries.retain(|e| e.resource.starts_with("network/"));
        entries
    }
}

#[tokio::test]
async fn allowed_name_resolves_other_names_are_refused() {
    let spec = net_spec(&["localhost:47474".into()]);
    for name in ["localhost", "LocalHost."] {
        let inside = hostile(spec.clone(), json!({"mode": "net.resolve", "name": name})).await;
        let out = ok(&inside);
        assert_eq!(out["error"], Value::Null, "{name}: {out}");
        let addresses = out["addresses"].as_array().unwrap();
        assert!(addresses.contains(&json!("127.0.0.1")), "{name}: {out}");
        assert_eq!(inside.usage.dns_lookups, 1, "{:?}", inside.usage);
        assert_eq!(inside.usage.network_denied, 0, "{:?}", inside.usage);
        assert_eq!(inside.usage.network_allowed, 1, "{:?}", inside.usage);
    }

    let past = hostile(
        spec,
        json!({"mode": "net.resolve", "name": "exfil-1234.invalid"}),
    )
    .await;
    let out = ok(&past);
    assert_eq!(out["addresses"], json!([]), "{out}");
    // `access-denied` as a wasi-libc guest sees it: EACCES.
    assert_eq!(out["errno"], 2, "{out}");
    assert_eq!(past.usage.dns_lookups, 1, "{:?}", past.usage);
    assert_eq!(past.usage.network_denied, 1, "{:?}", past.usage);
    assert_eq!(past.usage.network_allowed, 0, "{:?}", past.usage);
}

#[tokio::test]
async fn policies_decide_lookups_the_allow_list_lets_through() {
    const RESOLVE_LOCALHOST: &str = r#"
[[policies]]
id = "resolve-localhost"
priority = 1
[[policies.rules]]
effect = "allow"
resources = ["network/localhost"]
actions = ["resolve"]
"#;
    const NOTHING: &str = r#"
[[policies]]
id = "nothing"
priority = 1
[[policies.rules]]
effect = "allow"
resources = ["tool/none"]
actions = ["call"]
"#;
    let spec = net_spec(&["localhost:47474".into()]);
    let input = json!({"mode": "net.resolve", "name": "localhost"});

    let a = audited_with(Some(RESOLVE_LOCALHOST)).await;
    let inside = a.run(spec.clone(), input.clone()).await;
    assert!(
        ok(&inside)["addresses"]
            .as_array()
            .unwrap()
            .contains(&json!("127.0.0.1")),
        "{:?}",
        inside.output
    );
    let entries = a.network_entries(&inside).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].decision, AuditDecision::Allow);
    assert!(
        entries[0].reason.contains("resolve-localhost"),
        "{entries:?}"
    );

    let a = audited_with(Some(NOTHING)).await;
    let past = a.run(spec, input).await;
    let out = ok(&past);
    assert_eq!(
        (&out["addresses"], &out["errno"]),
        (&json!([]), &json!(2)),
        "{out}"
    );
    assert_eq!(past.usage.network_denied, 1, "{:?}", past.usage);
    let entries = a.network_entries(&past).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].resource, "network/localhost");
    assert_eq!(entries[0].decision, AuditDecision::Deny);
}

#[tokio::test]
async fn ip_literal_resolves_without_a_lookup() {
    // The standard library parses `127.0.0.1` itself; a bracketed IPv6 literal reaches
    // `resolve-addresses`, which parses it without asking any resolver.
    let report = hostile(
        net_spec(&["127.0.0.1:47474".into()]),
        json!({"mode": "net.resolve", "name": "[::1]"}),
    )
    .await;
    let out = ok(&report);
    assert_eq!(out["addresses"], json!(["::1"]), "{out}");
    assert_eq!(report.usage.dns_lookups, 1, "{:?}", report.usage);
    assert_eq!(report.usage.network_allowed, 1, "{:?}", report.usage);
}

#[tokio::test]
async fn without_network_no_name_resolves() {
    let report = hostile(spec(), json!({"mode": "net.resolve", "name": "localhost"})).await;
    let out = ok(&report);
    assert_eq!(out["addresses"], json!([]), "{out}");
    assert_eq!(report.usage.dns_lookups, 1, "{:?}", report.usage);
    assert_eq!(report.usage.network_denied, 1, "{:?}", report.usage);
}

#[tokio::test]
async fn connect_outside_the_allow_list_is_refused_inside_it_accepts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap();
    let input = json!({"mode": "net.connect", "target": target.to_string()});

    let a = audited().await;
    let inside = a
        .run(
            net_spec(&[format!("127.0.0.1:{}", target.port())]),
            input.clone(),
        )
        .await;
    assert_eq!(ok(&inside)["connected"], true, "{:?}", inside.output);
    listener
        .accept()
        .expect("the allowed connect reached the listener");
    assert_eq!(inside.usage.network_denied, 0, "{:?}", inside.usage);
    let entries = a.network_entries(&inside).await;
    assert!(
        entries
            .iter()
            .any(|e| e.resource == format!("network/{target}")
                && e.operation == "connect"
                && e.decision == AuditDecision::Allow),
        "{entries:?}"
    );

    let past = a
        .run(
            net_spec(&[format!("127.0.0.1:{}", target.port() ^ 1)]),
            input,
        )
        .await;
    let out = ok(&past);
    assert_eq!(out["connected"], false, "{out}");
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the refused connect reached the listener"
    );
    assert!(past.usage.network_denied >= 1, "{:?}", past.usage);
    let entries = a.network_entries(&past).await;
    let refusal = entries
        .iter()
        .find(|e| e.resource == format!("network/{target}") && e.operation == "connect")
        .unwrap_or_else(|| panic!("no audit entry for the refused connect: {entries:?}"));
    assert_eq!(refusal.decision, AuditDecision::Deny);
    assert!(
        refusal
            .reason
            .contains("resourceLimits.allowedNetworkHosts"),
        "{}",
        refusal.reason
    );
}

#[tokio::test]
async fn datagram_outside_the_allow_list_is_refused_inside_it_arrives() {
    let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = receiver.local_addr().unwrap();
    let input = json!({"mode": "net.udp-send", "target": target.to_string(), "payload": "canary"});

    let a = audited().await;
    let inside = a
        .run(
            net_spec(&[format!("127.0.0.1:{}", target.port())]),
            input.clone(),
        )
        .await;
    assert_eq!(ok(&inside)["sent"], 6, "{:?}", inside.output);
    let mut buf = [0u8; 64];
    let (n, _) = receiver.recv_from(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"canary");

    let past = a
        .run(
            net_spec(&[format!("127.0.0.1:{}", target.port() ^ 1)]),
            input,
        )
        .await;
    let out = ok(&past);
    assert_eq!(out["sent"], Value::Null, "{out}");
    assert!(out["error"].is_string(), "{out}");
    assert_eq!(
        receiver.try_recv_from(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the refused datagram arrived"
    );
    assert!(past.usage.network_denied >= 1, "{:?}", past.usage);
    let entries = a.network_entries(&past).await;
    assert!(
        entries
            .iter()
            .any(|e| e.resource == format!("network/{target}")
                && e.operation == "send"
                && e.decision == AuditDecision::Deny),
        "{entries:?}"
    );
}

#[tokio::test]
async fn every_refusal_is_counted_and_audited_without_policies() {
    let a = audited().await;
    let spec = net_spec(&["127.0.0.1:47474".into()]);

    let lookup = a
        .run(
            spec.clone(),
            json!({"mode": "net.resolve", "name": "exfil-1234.invalid"}),
        )
        .await;
    assert!(ok(&lookup)["error"].is_string());
    assert_eq!(lookup.usage.network_denied, 1, "{:?}", lookup.usage);
    let entries = a.network_entries(&lookup).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].resource, "network/exfil-1234.invalid");
    assert_eq!(entries[0].operation, "resolve");
    assert_eq!(entries[0].decision, AuditDecision::Deny);
    assert!(
        entries[0].reason.contains("before any query was sent"),
        "{}",
        entries[0].reason
    );

    let listen = a.run(spec, json!({"mode": "net.listen"})).await;
    assert_eq!(ok(&listen)["listening"], false, "{:?}", listen.output);
    assert!(listen.usage.network_denied >= 1, "{:?}", listen.usage);
    let entries = a.network_entries(&listen).await;
    assert!(
        entries
            .iter()
            .any(|e| e.operation == "listen" && e.decision == AuditDecision::Deny),
        "{entries:?}"
    );
}

/// `new-socket-limit` as a wasi-libc guest sees it: EMFILE.
const EMFILE: u64 = 33;

/// Finds how many sockets an agent holds at once under `maxOpenHandles = cap` (a probe that
/// asks for far more), then runs the pair: exactly that many pass, one more is refused with
/// `new-socket-limit`, counted and audited, and the agent goes on to report it.
async fn handle_cap_pair(cap: u32, mut input: Value) {
    let a = audited().await;
    let mut spec = net_spec(&["127.0.0.1:1-65535".into()]);
    spec.resource_limits.max_open_handles = cap;
    input["mode"] = json!("net.sockets");
    input["count"] = json!(1_000);
    let probe = a.run(spec.clone(), input.clone()).await;
    let held = ok(&probe)["opened"].as_u64().unwrap();
    assert!(held > 0 && held < u64::from(cap), "{:?}", probe.output);

    input["count"] = json!(held);
    let inside = a.run(spec.clone(), input.clone()).await;
    let out = ok(&inside);
    assert_eq!(
        (&out["opened"], &out["error"]),
        (&json!(held), &Value::Null),
        "{out}"
    );
    assert_eq!(inside.usage.network_denied, 0, "{:?}", inside.usage);

    input["count"] = json!(held + 1);
    let past = a.run(spec, input).await;
    let out = ok(&past);
    assert_eq!(out["opened"], held, "{out}");
    assert_eq!(out["errno"], EMFILE, "{out}");
    assert_eq!(past.usage.network_denied, 1, "{:?}", past.usage);
    let entries = a.network_entries(&past).await;
    let refusal = entries
        .iter()
        .find(|e| e.resource == "network/handles")
        .unwrap_or_else(|| panic!("the refusal is not audited: {entries:?}"));
    assert_eq!(refusal.decision, AuditDecision::Deny);
    assert!(
        refusal
            .reason
            .contains(&format!("resourceLimits.maxOpenHandles allows ({cap})")),
        "{}",
        refusal.reason
    );
}

#[tokio::test]
async fn udp_sockets_past_the_handle_cap_get_new_socket_limit() {
    handle_cap_pair(24, json!({})).await;
}

#[tokio::test]
async fn tcp_connections_past_the_handle_cap_get_new_socket_limit() {
    // A connection is three handles (socket, input and output stream); the last one is
    // refused either creating its socket or, one handle short, finishing its connect.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    handle_cap_pair(32, json!({"target": target.to_string()})).await;
    accepting.abort();
}

#[tokio::test]
async fn a_network_prohibition_beats_the_allow_list() {
    // The listener accepts, and the allow-list names it: only the prohibition can refuse.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap();
    let mut spec = net_spec(&[format!("127.0.0.1:{}", target.port())]);
    spec.security_constraints.prohibited_operations = vec!["network".into()];
    let report = hostile(
        spec,
        json!({"mode": "net.connect", "target": target.to_string()}),
    )
    .await;
    let out = ok(&report);
    assert_eq!(out["connected"], false, "{out}");
    assert!(out["error"].is_string(), "{out}");
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the prohibited connect reached the listener"
    );
}

#[tokio::test]
async fn monitored_full_network_reaches_an_address_no_allow_list_names() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let mut spec = spec();
    spec.isolation_level = qi_host::IsolationLevel::Monitored;
    spec.security_constraints.network_access_level = qi_host::NetworkAccessLevel::Full;
    let report = hostile(
        spec,
        json!({"mode": "net.connect", "target": target.to_string()}),
    )
    .await;
    assert_eq!(ok(&report)["connected"], true, "{:?}", report.output);
    listener.accept().expect("the connect reached the listener");
    assert_eq!(report.usage.network_denied, 0, "{:?}", report.usage);
}
