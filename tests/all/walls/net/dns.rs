//! The DNS wall, proved on the wire: the host runs in its own network and mount namespaces
//! (`unshare -n -m`), where `/etc/resolv.conf` points at a DNS server this test runs on
//! 127.0.0.1:53. The server must see the query for the allowed name (so the path really
//! sends) and nothing for the refused name or the IP literal. Nothing can leave the machine:
//! the namespace has only its own loopback.
//!
//! [`refused_lookup_sends_no_packet`] re-executes this test binary under `unshare`, running
//! only [`in_namespace`] (ignored in ordinary runs, and a no-op without its environment
//! variable); it is skipped, with the reason printed, where `unshare` cannot make namespaces
//! or `ip` is missing.

use crate::common::spec;
use qi_guest_artifacts::HOSTILE_COMPONENT;
use qi_host::{AgentReport, IsolationLevel, NetworkAccessLevel, TaskRequest};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Set (to a directory holding `resolv.conf`) in the re-executed test binary only.
const NAMESPACE_DIR: &str = "QI_TEST_DNS_NAMESPACE_DIR";
const ALLOWED: &str = "allowed.qi-host.test";
const REFUSED: &str = "exfil-1234.invalid";
/// Has 16 addresses (127.0.1.1 to 127.0.1.16), the most one lookup returns.
const SIXTEEN: &str = "sixteen.qi-host.test";
/// Has 17 addresses (127.0.1.1 to 127.0.1.17).
const SEVENTEEN: &str = "seventeen.qi-host.test";
/// Is 127.0.0.1 at its first `A` query, then 127.0.0.9 and 127.0.0.1.
const MOVING: &str = "moving.qi-host.test";
/// Is 127.0.0.1 at its first `A` query (the spawn's); every later `A` query gets no answer,
/// so each lookup holds a resolver thread for the resolver's timeout.
const SLOW: &str = "slow.qi-host.test";

#[test]
fn refused_lookup_sends_no_packet() {
    // The namespaced run needs `unshare` (util-linux) and `ip` (iproute2, to bring up the
    // namespace's loopback); try both at once.
    if let Err(why) = Command::new("unshare")
        .args(["-n", "-m", "--", "ip", "link", "set", "lo", "up"])
        .status()
        .map_err(|e| e.to_string())
        .and_then(|s| s.success().then_some(()).ok_or(s.to_string()))
    {
        // CI installs both and runs as root: there a skip would hide a wall that is not tested.
        assert!(
            std::env::var_os("CI").is_none(),
            "`unshare -n -m -- ip link set lo up` failed in CI ({why})"
        );
        println!(
            "skipped: `unshare -n -m -- ip link set lo up` failed ({why}); the DNS wall needs \
             util-linux, iproute2 and the right to make namespaces"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("resolv.conf"),
        "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n",
    )
    .unwrap();
    let out = Command::new("unshare")
        .args(["-n", "-m", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "walls::net::dns::in_namespace",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(NAMESPACE_DIR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the namespaced run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[tokio::test]
#[ignore = "runs inside the namespace made by `refused_lookup_sends_no_packet`"]
async fn in_namespace() {
    let Some(dir) = std::env::var_os(NAMESPACE_DIR) else {
        return;
    };
    run(&["ip", "link", "set", "lo", "up"]);
    let resolv = Path::new(&dir).join("resolv.conf");
    run(&[
        "mount",
        "--bind",
        resolv.to_str().unwrap(),
        "/etc/resolv.conf",
    ]);
    let queries = serve_dns().await;

    let host = crate::common::new_host(4);
    let component = host.load(HOSTILE_COMPONENT).expect("hostile loads");
    let run_agent = |names: &[&str], input: Value| {
        let (host, component) = (&host, &component);
        let allowed = names.iter().map(|n| format!("{n}:47474")).collect();
        async move {
            let mut s = spec();
            s.isolation_level = IsolationLevel::Restricted;
            s.security_constraints.network_access_level = NetworkAccessLevel::Restricted;
            s.resource_limits.allowed_network_hosts = allowed;
            let report: AgentReport = host
                .run(component, s, TaskRequest::new("dns", input.clone()))
                .await
                .expect("agent spawns");
            let out = report.output.clone().unwrap_or(Value::Null);
            println!("{input}: {out} {:?}", report.usage);
            (out, report)
        }
    };
    let resolve = |allowed: &'static str, name: &'static str| {
        run_agent(&[allowed], json!({"mode": "net.resolve", "name": name}))
    };
    let asked = |name: &str| {
        queries
            .lock()
            .unwrap()
            .iter()
            .filter(|q| q.0 == name)
            .count()
    };
    let asked_a = |name: &str| {
        let seen = queries.lock().unwrap();
        seen.iter().filter(|q| q.0 == name && q.1 == 1).count()
    };

    // The spawn resolves the allow-list's names: what an agent that looks nothing up costs.
    let (_, idle) = run_agent(&[ALLOWED], json!({"mode": "net.sockets", "count": 0})).await;
    assert_eq!(idle.usage.dns_lookups, 0);
    let at_spawn = asked(ALLOWED);
    assert!(at_spawn >= 1, "the spawn asked nothing");

    let (out, allowed) = resolve(ALLOWED, ALLOWED).await;
    assert_eq!(out["addresses"], json!(["127.0.0.1"]), "{out}");
    assert_eq!(allowed.usage.dns_lookups, 1);
    assert!(
        asked(ALLOWED) > 2 * at_spawn,
        "the allowed lookup sent no query (spawn alone asks {at_spawn} times)"
    );

    let (out, refused) = resolve(ALLOWED, REFUSED).await;
    assert_eq!(out["addresses"], json!([]), "{out}");
    assert!(out["error"].is_string(), "{out}");
    assert_eq!(refused.usage.network_denied, 1);

    let (out, _) = resolve(ALLOWED, "[::1]").await;
    assert_eq!(out["addresses"], json!(["::1"]), "{out}");

    // At most 16 addresses per lookup: 16 all come back, of 17 the first 16.
    for name in [SIXTEEN, SEVENTEEN] {
        let (out, _) = resolve(name, name).await;
        assert_eq!(
            out["addresses"].as_array().map(Vec::len),
            Some(16),
            "{name}: {out}"
        );
    }

    // A lookup returns only what the allow-list admits: the address `MOVING` gained after
    // the spawn resolved it is dropped.
    let (out, _) = resolve(MOVING, MOVING).await;
    assert_eq!(out["addresses"], json!(["127.0.0.1"]), "{out}");
    assert!(asked_a(MOVING) >= 2, "the lookup of {MOVING} sent no query");

    // Lookups started and dropped at once cannot pile up resolver threads (shared by every
    // agent and by all file I/O): at most MAX_LOOKUPS_IN_FLIGHT of the agent's lookups run at
    // once, and a dropped one that has not started never does.
    let (out, burst) = run_agent(
        &[SLOW],
        json!({"mode": "net.lookup-burst", "name": SLOW, "count": 100, "rounds": 2}),
    )
    .await;
    assert_eq!(out["started"], 200, "{out}");
    assert_eq!(burst.usage.dns_lookups, 200);
    // A lookup that completes after the burst: its query follows theirs.
    let (out, _) = resolve(ALLOWED, ALLOWED).await;
    assert_eq!(out["addresses"], json!(["127.0.0.1"]), "{out}");
    let in_flight = qi_host::wasi::sockets::lookup::MAX_LOOKUPS_IN_FLIGHT;
    // Each lookup (the spawn's first) asks for `A` and `AAAA`.
    assert!(
        asked(SLOW) <= 2 + 2 * in_flight,
        "{} queries for {SLOW} from the spawn and 200 dropped lookups",
        asked(SLOW)
    );

    let seen = queries.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|q| [ALLOWED, SIXTEEN, SEVENTEEN, MOVING, SLOW].contains(&q.0.as_str())),
        "only allowed names may be queried; the server saw {seen:?}"
    );
}

fn run(argv: &[&str]) {
    let status = Command::new(argv[0]).args(&argv[1..]).status().unwrap();
    assert!(status.success(), "{argv:?}: {status}");
}

/// The `A` records of `name` at its `nth` `A` query (from 0).
fn records(name: &str, nth: usize) -> Vec<[u8; 4]> {
    match name {
        ALLOWED => vec![[127, 0, 0, 1]],
        SIXTEEN => (1..=16).map(|i| [127, 0, 1, i]).collect(),
        SEVENTEEN => (1..=17).map(|i| [127, 0, 1, i]).collect(),
        MOVING if nth == 0 => vec![[127, 0, 0, 1]],
        MOVING => vec![[127, 0, 0, 9], [127, 0, 0, 1]],
        SLOW => vec![[127, 0, 0, 1]],
        _ => Vec::new(),
    }
}

/// Serves DNS on 127.0.0.1:53 (UDP), answering `A` questions from [`records`] (except the
/// later ones for [`SLOW`]) and any other question with no records. Returns the names and types asked, in order.
async fn serve_dns() -> Arc<Mutex<Vec<(String, u16)>>> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:53").await.unwrap();
    let queries = Arc::new(Mutex::new(Vec::new()));
    let seen = queries.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let mut a_queries = std::collections::HashMap::<String, usize>::new();
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Some((name, qtype, question_end)) = question(&buf[..n]) else {
                continue;
            };
            let (found, unanswered) = if qtype == 1 {
                let nth = a_queries.entry(name.clone()).or_default();
                *nth += 1;
                (records(&name, *nth - 1), name == SLOW && *nth > 1)
            } else {
                (Vec::new(), false)
            };
            seen.lock().unwrap().push((name, qtype));
            if unanswered {
                continue;
            }
            let _ = socket
                .send_to(&answer(&buf[..question_end], &found), peer)
                .await;
        }
    });
    queries
}

/// The name and type asked in DNS query `q`, and where its question ends.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    q.get(at + 3)?;
    Some((labels.join("."), qtype, at + 4))
}

/// The response to `query` (header and question) with `A` records `found`.
fn answer(query: &[u8], found: &[[u8; 4]]) -> Vec<u8> {
    let mut r = Vec::with_capacity(query.len() + 16 * found.len());
    r.extend_from_slice(&query[..2]);
    // Response, recursion desired as asked, recursion available, no error.
    r.extend_from_slice(&[0x80 | (query[2] & 0x01), 0x80]);
    r.extend_from_slice(&[0, 1, 0, found.len() as u8, 0, 0, 0, 0]);
    r.extend_from_slice(&query[12..]);
    for ip in found {
        // Name (pointer to the question), A, IN, TTL 60, 4 bytes of address.
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(ip);
    }
    r
}
