//! `hostile` guest, `net.bind`: an agent is a client, so it binds only to an ephemeral port.

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
