//! Three `qi-host serve --nats` processes on one NATS server: they are listed by
//! `qi-host status`, their context updates reach a cluster subscriber, a host that stops
//! leaves the list, and a strong counter incremented through all three ends at the exact sum.

use super::Nats;
use crate::serve::process::{Process, ToolClient};
use crate::serve::{ALICE, Fixture};
use qi_host::cluster::{Cluster, ClusterConfig, ClusterSubscription, HostEntry, StartAt};
use serde_json::json;

fn status(nats: &Nats) -> Vec<HostEntry> {
    let out = crate::common::qi_host_output(&["status", "--nats", &nats.url(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_form_a_cluster_and_share_their_events() {
    let Some(nats) = Nats::start() else { return };
    let fixtures: Vec<Fixture> = (0..3).map(|_| Fixture::new("", "")).collect();
    let names = ["host-a", "host-b", "host-c"];
    let url = nats.url();
    let hosts = three_hosts(&nats, &fixtures);
    let listed = status(&nats);
    assert_eq!(
        listed.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(),
        names,
        "{listed:?}"
    );
    assert!(
        listed
            .iter()
            .all(|h| h.pid > 0 && h.seen_ms >= h.started_ms)
    );

    // Writes on B and then C to one shared `board`: B creates it and makes versions 2-6,
    // C (which never created it) goes on from B's last version.
    let watcher = Cluster::connect(ClusterConfig::new(&url, "watcher"), None)
        .await
        .unwrap();
    let mut board = ClusterSubscription::open(&watcher, Some("board"), StartAt::All)
        .await
        .unwrap();
    let (code, body) = hosts[1]
        .call(
            ALICE,
            "context_put",
            json!({"id": "board", "doc": {"n": 0}, "context_type": "notes"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let mut written = Vec::new();
    for (i, host) in [&hosts[1], &hosts[2]].into_iter().enumerate() {
        for k in 1..=5u64 {
            let n = i as u64 * 5 + k;
            let (code, body) = host
                .call(
                    ALICE,
                    "context_patch",
                    json!({"id": "board", "patch": {"n": n, "by": names[i + 1]}, "base_version": n}),
                )
                .await;
            assert_eq!(code, 200, "{body}");
            written.push((names[i + 1].to_string(), n));
        }
    }
    // The watcher sees every update once, from the host that made it, in order.
    let mut seen = Vec::new();
    let mut last_stream = 0;
    while seen.len() < written.len() {
        let e = board.next().await.unwrap();
        assert!(e.stream_seq > last_stream);
        last_stream = e.stream_seq;
        assert_eq!(e.event.context_id.as_deref(), Some("board"));
        assert!(
            e.event.data.get("replicatedFrom").is_none(),
            "an installed copy is not forwarded again: {e:?}"
        );
        if e.event.event_type == qi_host::events::EventType::Updated
            && e.event.data.get("version").and_then(|v| v.as_u64()) > Some(1)
        {
            seen.push((
                e.host.clone(),
                e.event.data["version"].as_u64().unwrap() - 1,
            ));
        }
    }
    assert_eq!(seen, written, "every update of B and C, in order");
    // Host A, which wrote nothing, comes to read the last version (its watch installs it).
    let mut reads = 0;
    loop {
        let (status, body) = hosts[0]
            .call(ALICE, "context_get", json!({"id": "board"}))
            .await;
        reads += 1;
        if status == 200 && body.to_string().contains("\"n\":10") {
            break;
        }
        assert!(
            reads < 10_000,
            "host A never saw version 11: {status} {body}"
        );
    }

    // SIGTERM: B leaves the list at once.
    let mut hosts = hosts;
    let b = hosts.remove(1);
    let (code, lines) = b.terminate();
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    let listed = status(&nats);
    assert_eq!(
        listed.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(),
        ["host-a", "host-c"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_bad_cluster_name_and_an_unreachable_server_naming_the_flag() {
    let Some(nats) = Nats::start() else { return };
    let f = Fixture::new("", "");
    let seen = Process::try_start_with(&f, &["--nats", &nats.url(), "--cluster-name", "a.b"])
        .err()
        .expect("a name with a dot is refused");
    assert!(
        seen.iter().any(|l| l.contains("--cluster-name")),
        "{}",
        seen.join("\n")
    );
    let port = nats.port;
    drop(nats);
    let seen = Process::try_start_with(&f, &["--nats", &format!("nats://127.0.0.1:{port}")])
        .err()
        .expect("no server: refused");
    assert!(
        seen.iter()
            .any(|l| l.contains("--nats") && l.contains("cannot connect")),
        "{}",
        seen.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_nats_puts_every_event_of_the_run_on_the_stream_before_it_exits() {
    let Some(nats) = Nats::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/code-review/task.toml"
    );
    let out = crate::common::qi_host_command()
        .args(["run", manifest, "--json", "--guest-dir"])
        .arg(crate::coord::guest_dir())
        .arg("--data-dir")
        .arg(data.path())
        .args(["--nats", &nats.url(), "--cluster-name", "runner"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["success"], true);
    // Every event of the run's data directory, in its order, is on the stream.
    let local = crate::common::qi_host_command()
        .args([
            "events",
            "tail",
            "--limit",
            "100000",
            "--json",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    let local: Vec<u64> = String::from_utf8_lossy(&local.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(local.len() > 10, "{local:?}");
    let watcher = Cluster::connect(ClusterConfig::new(nats.url(), "watcher"), None)
        .await
        .unwrap();
    let mut all = ClusterSubscription::open(&watcher, None, StartAt::All)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < local.len() {
        let e = all.next().await.unwrap();
        assert_eq!(e.host, "runner");
        seen.push(e.event.seq);
    }
    assert_eq!(seen, local);
    // The run is over: the host has left.
    assert!(status(&nats).is_empty());
}

/// Starts three `serve --nats` processes named host-a, host-b, host-c on `nats`.
fn three_hosts(nats: &Nats, fixtures: &[Fixture]) -> Vec<Process> {
    let url = nats.url();
    fixtures
        .iter()
        .zip(["host-a", "host-b", "host-c"])
        .map(|(f, name)| {
            let p = Process::try_start_with(f, &["--nats", &url, "--cluster-name", name])
                .unwrap_or_else(|seen| panic!("{name} did not start:\n{}", seen.join("\n")));
            p.line_with(&format!("joined the cluster at {url} as `{name}`"));
            p
        })
        .collect()
}

/// One increment of `doc.n` of a `strong` context through a host's HTTP tools: read, put
/// based on the version read, again when another writer got there first (a stale refusal,
/// or the host's "changed on another host" after its own retries).
async fn increment(host: &ToolClient, id: &str) -> u32 {
    let mut stale = 0;
    loop {
        let (code, view) = host.call(ALICE, "context_get", json!({"id": id})).await;
        assert_eq!(code, 200, "{view}");
        let version = view["version"].as_u64().unwrap();
        let n = view["doc"]["n"].as_u64().unwrap();
        let (code, body) = host
            .call(
                ALICE,
                "context_put",
                json!({"id": id, "doc": {"n": n + 1}, "base_version": version}),
            )
            .await;
        match code {
            200 => return stale,
            _ if body.to_string().contains("stale")
                || body.to_string().contains("another host") =>
            {
                stale += 1
            }
            _ => panic!("increment failed: {code} {body}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strong_counters_incremented_through_three_serve_processes_end_at_the_exact_sum() {
    let Some(nats) = Nats::start() else { return };
    let fixtures: Vec<Fixture> = (0..3).map(|_| Fixture::new("", "")).collect();
    let hosts = three_hosts(&nats, &fixtures);
    let (code, body) = hosts[0]
        .call(
            ALICE,
            "context_put",
            json!({"id": "tally", "doc": {"n": 0}, "context_type": "counter"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    const CLIENTS: usize = 2;
    const EACH: u64 = 10;
    let mut tasks = Vec::new();
    for host in &hosts {
        for _ in 0..CLIENTS {
            let client = host.client();
            tasks.push(tokio::spawn(async move {
                let mut stale = 0;
                for _ in 0..EACH {
                    stale += increment(&client, "tally").await;
                }
                stale
            }));
        }
    }
    let mut stale = 0;
    for t in tasks {
        stale += t.await.unwrap();
    }
    let total = 3 * CLIENTS as u64 * EACH;
    // Every host comes to the exact sum (each reads its own copy, which its watch updates).
    for (i, host) in hosts.iter().enumerate() {
        let mut reads = 0;
        loop {
            let (code, view) = host
                .call(ALICE, "context_get", json!({"id": "tally"}))
                .await;
            assert_eq!(code, 200, "{view}");
            if view["doc"]["n"] == total {
                assert_eq!(
                    view["version"],
                    1 + total,
                    "host {i}: one version per increment"
                );
                break;
            }
            reads += 1;
            assert!(
                reads < 10_000 && view["doc"]["n"].as_u64() <= Some(total),
                "host {i} holds {view} ({stale} stale tries in all)"
            );
        }
    }
}
