//! `hostile` guest: an agent is a client, so it binds only to an ephemeral port; its network
//! operations are within `maxNetworkOperations`, past which nothing is audited.

use crate::common::*;
use qi_guest_artifacts::HOSTILE_COMPONENT;
use qi_host::{IsolationLevel, NetworkAccessLevel};
use serde_json::json;

#[tokio::test]
async fn an_agent_binds_only_ephemeral_ports() {
    // A port the host could want: free now.
    let port = std::net::UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = spec();
    s.isolation_level = IsolationLevel::Restricted;
    s.security_constraints.network_access_level = NetworkAccessLevel::Restricted;
    s.resource_limits.allowed_network_hosts = vec!["127.0.0.1:47474".into()];
    for proto in ["udp", "tcp"] {
        let bind = |port: u16| {
            run(
                HOSTILE_COMPONENT,
                s.clone(),
                json!({"mode": "net.bind", "proto": proto, "port": port}),
            )
        };
        let ephemeral = bind(0).await;
        let out = ok(&ephemeral);
        assert_eq!(out["bound"], true, "{proto}: {out}");
        let squat = bind(port).await;
        let out = ok(&squat);
        assert_eq!(out["bound"], false, "{proto}: port {port} squatted: {out}");
        assert_eq!(squat.usage.network_denied, 1, "{proto}: {:?}", squat.usage);
    }
}

#[tokio::test]
async fn network_operations_up_to_the_budget_pass_one_more_is_refused_as_a_limit() {
    use qi_host::audit::{AuditLog, AuditQuery};
    use qi_host::security::AccessControl;
    use qi_host::{AgentHost, HostConfig, TaskRequest};
    use std::sync::Arc;

    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = receiver.local_addr().unwrap();
    let svc = in_memory_context().await;
    let audit = AuditLog::open(svc.store().clone()).await.unwrap();
    let host = AgentHost::new(HostConfig {
        max_live_agents: 4,
        cache_dir: Some(cache_dir()),
        ..HostConfig::default()
    })
    .unwrap()
    .with_access(Arc::new(AccessControl::new(None, Some(audit.clone()))));
    let component = host.load(HOSTILE_COMPONENT).unwrap();
    let send = |max: u32, count: u64| {
        let mut s = spec();
        s.isolation_level = IsolationLevel::Restricted;
        s.security_constraints.network_access_level = NetworkAccessLevel::Restricted;
        s.resource_limits.allowed_network_hosts = vec![target.to_string()];
        s.resource_limits.max_network_operations = max;
        let (host, component) = (&host, &component);
        let input = json!({"mode": "net.udp-send", "target": target.to_string(), "count": count});
        async move {
            host.run(component, s, TaskRequest::new("net budget", input))
                .await
                .unwrap()
        }
    };
    let entries = |report: &qi_host::AgentReport, prefix: &'static str| {
        let (audit, agent) = (audit.clone(), report.agent_id.clone());
        async move {
            audit.flush().await;
            let mut e = audit
                .query(&AuditQuery {
                    agent: Some(agent),
                    ..AuditQuery::default()
                })
                .await
                .unwrap();
            e.retain(|e| e.resource.starts_with(prefix));
            e.len() as u64
        }
    };
    // What ten datagrams cost: the implicit bind and each send.
    let roomy = send(10_000, 10).await;
    assert_eq!(ok(&roomy)["datagrams"], 10);
    let need = roomy.usage.network_allowed;
    assert!(need >= 10, "{:?}", roomy.usage);

    let inside = send(need as u32, 10).await;
    let out = ok(&inside);
    assert_eq!(
        (&out["datagrams"], &out["error"]),
        (&json!(10), &json!(null)),
        "{out}"
    );
    assert_eq!(inside.usage.network_denied, 0);

    let past = send(need as u32, 11).await;
    let out = ok(&past);
    assert_eq!(out["datagrams"], 10, "{out}");
    assert!(out["error"].is_string(), "{out}");
    assert_eq!(past.usage.network_allowed, need);
    assert_eq!(past.usage.network_denied, 1);
    // Every allowed use audited; the refusal past the budget is audited as a spent budget,
    // never as a network decision.
    assert_eq!(entries(&past, "network/").await, need);
    assert_eq!(entries(&past, "limits/network-operations").await, 1);
    assert_eq!(entries(&inside, "limits/").await, 0);
    let mut received = 0;
    receiver.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    while receiver.recv_from(&mut buf).is_ok() {
        received += 1;
    }
    assert_eq!(
        received, 30,
        "10 + 10 + 10 datagrams arrived, the 11th did not"
    );
}
