//! Red team of `qi-host serve`: a hostile client, a careless operator, a crashing machine.
//! Each test states what correct code does; synchronised on the server's own answers and
//! its process's lines, never on time.

use super::process::Process;
use super::*;

/// A credential of identity `agent` (`client:<agent>`) signed with `secret`.
fn credential_of(host_id: &str, agent: &str, secret: [u8; 32], nonce: &str) -> Value {
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(&secret);
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let id = format!("client:{agent}");
    let challenge = qi_host::security::identity::Credential::challenge(host_id, &id, ts, nonce);
    json!({
        "agentId": id,
        "timestampMs": ts,
        "nonce": nonce,
        "signature": hex::encode(key.sign(challenge.as_bytes()).to_bytes()),
    })
}

const SCOUT_SECRET: [u8; 32] = [9; 32];

fn scout_identity() -> String {
    let public = ed25519_dalek::SigningKey::from_bytes(&SCOUT_SECRET).verifying_key();
    format!(
        "\n[identities.scout]\npublic_key = \"{}\"\n",
        hex::encode(public.as_bytes())
    )
}

async fn host_id(s: &Served) -> String {
    let info: Value = json_of(
        s.http
            .get(format!("{}/v1/info", s.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    info["hostId"].as_str().unwrap().to_string()
}

/// A run of `slow` that sleeps until it is stopped.
fn sleeping_run() -> Value {
    json!({"manifest": "slow", "inputs": {"nap.steps": [{"sleep_ms": 600000}]}, "wait": false})
}

// ---------------------------------------------------------------------------------------
// A hostile client
// ---------------------------------------------------------------------------------------

/// A `run_task` refused because `max_tracked_runs` runs are in progress must leave nothing
/// behind: no run record (which the next server would resume, unbounded) and no run going
/// on untracked (which nobody can see or stop, holding the client's run slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_refused_at_max_tracked_runs_leaves_no_record_and_does_not_run() {
    let f = Fixture::new("max_tracked_runs = 16\nmax_runs_per_client = 100", "");
    let s = f.serve().await;
    for _ in 0..16 {
        s.ok(ALICE, "run_task", sleeping_run()).await;
    }
    let (status, body) = s.call(ALICE, "run_task", sleeping_run()).await;
    assert_eq!(status, 429, "{body}");
    assert!(message(&body).contains("max_tracked_runs"), "{body}");
    // The operator's view of the run records: one per tracked run, no more.
    let listed = s
        .ok(
            ADMIN,
            "context_list",
            json!({"context_type": "qi-serve-run"}),
        )
        .await;
    let records = listed["contexts"].as_array().unwrap().len();
    assert_eq!(
        records, 16,
        "a refused run_task left a `running` run record behind: {listed}"
    );
}

/// One Ed25519 identity signing fresh credentials in a loop must not take every session of
/// the server (`limits.max_sessions`) from the other identities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_take_every_session_from_the_others() {
    let f = Fixture::new("max_sessions = 2", &scout_identity());
    let s = f.serve().await;
    let host = host_id(&s).await;
    for i in 0..2 {
        let cred = credential(&host, &format!("planner-nonce-{i}"));
        let (status, body) = s
            .post_raw("", "/v1/auth/ed25519", cred.to_string().into_bytes())
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // The planner is refused a third (its share is used up) ...
    let cred = credential(&host, "planner-nonce-2");
    let (status, _) = s
        .post_raw("", "/v1/auth/ed25519", cred.to_string().into_bytes())
        .await;
    let _ = status;
    // ... but the scout, which holds none, gets one.
    let cred = credential_of(&host, "scout", SCOUT_SECRET, "scout-nonce-0");
    let (status, body) = s
        .post_raw("", "/v1/auth/ed25519", cred.to_string().into_bytes())
        .await;
    assert_eq!(
        status, 200,
        "the planner's sessions locked the scout out: {body}"
    );
}

/// Anyone on the network sending wrong bearer tokens must not lock the registered Ed25519
/// identities out of getting a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_from_anyone_do_not_lock_identities_out_of_sessions() {
    let f = Fixture::new("requests_per_second = 1\nburst = 3", "");
    let s = f.serve().await;
    // The host id first (it is public and never changes).
    let host = s.server.auth.host_id().to_string();
    for i in 0..5 {
        let _ = s
            .call(&format!("not-a-token-{i}"), "list_agents", json!({}))
            .await;
    }
    let cred = credential(&host, "planner-after-flood");
    let (status, body) = s
        .post_raw("", "/v1/auth/ed25519", cred.to_string().into_bytes())
        .await;
    assert_eq!(
        status, 200,
        "an unauthenticated flood locked the planner out of its session: {body}"
    );
}

/// An MCP session (`Mcp-Session-Id`) belongs to the client that opened it: another client
/// that learns the id may not end it (nor read its stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_end_another_clients_mcp_session() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let mcp = format!("{}/mcp", s.base);
    let post = |token: &str, session: Option<&str>, body: Value| {
        let mut r = s
            .http
            .post(&mcp)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-06-18")
            .body(body.to_string());
        if let Some(id) = session {
            r = r.header("mcp-session-id", id);
        }
        r.send()
    };
    let init = post(
        ALICE,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "redteam", "version": "0"}}}),
    )
    .await
    .unwrap();
    assert_eq!(init.status().as_u16(), 200);
    let session = init
        .headers()
        .get("mcp-session-id")
        .expect("a session id")
        .to_str()
        .unwrap()
        .to_string();
    let _ = init.bytes().await.unwrap();
    let r = post(
        ALICE,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // Bob learns alice's session id and tries to end it.
    let r = s
        .http
        .delete(&mcp)
        .bearer_auth(BOB)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    let bob_status = r.status().as_u16();
    // Alice's session still works.
    let r = post(
        ALICE,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await
    .unwrap();
    let alice_status = r.status().as_u16();
    let _ = r.bytes().await;
    assert!(
        !(200..300).contains(&bob_status) && alice_status == 200,
        "bob ended alice's MCP session: bob's DELETE {bob_status}, alice's next request \
         {alice_status}"
    );
}

/// "Every request is audited under the caller's id": watching a run's events
/// (`GET /v1/runs/<id>/events`) is a request too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_a_runs_events_is_audited() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let started = s.ok(ALICE, "run_task", sleeping_run()).await;
    let run_id = started["runId"].as_str().unwrap().to_string();
    let alices = || async {
        s.server.audit().flush().await;
        let q = s
            .ok(
                ADMIN,
                "audit_query",
                json!({"agent": "client:alice", "limit": 1000}),
            )
            .await;
        q["entries"].as_array().unwrap().len()
    };
    let before = alices().await;
    let mut r = s
        .http
        .get(format!("{}/v1/runs/{run_id}/events", s.base))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The first status event has arrived: the request has been served.
    let first = crate::common::hang_guard("the first status event", r.chunk())
        .await
        .unwrap();
    assert!(first.is_some());
    let after = alices().await;
    assert!(
        after > before,
        "alice watched run {run_id}'s events and the audit log has no entry of it \
         ({before} entries of alice's before, {after} after)"
    );
    s.ok(ALICE, "terminate", json!({"run_id": run_id})).await;
}

/// What held: other clients' runs, agents and events stay out of reach, names never reach
/// host paths, limits never widen, bad JSON is one clean error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_client_probes_that_hold() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let started = s.ok(ALICE, "run_task", sleeping_run()).await;
    let run_id = started["runId"].as_str().unwrap().to_string();
    // Bob: not alice's run, its status, its events, nor its record.
    for (tool, args) in [
        ("run_status", json!({"run_id": run_id})),
        ("terminate", json!({"run_id": run_id})),
    ] {
        let (status, body) = s.call(BOB, tool, args).await;
        assert_eq!(status, 404, "{tool}: {body}");
    }
    let r = s
        .http
        .get(format!("{}/v1/runs/{run_id}/events", s.base))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (status, body) = s
        .call(
            BOB,
            "context_get",
            json!({"id": format!("serve/run/{run_id}")}),
        )
        .await;
    assert!(status == 403 || status == 404, "{status}: {body}");
    let (status, body) = s
        .call(
            BOB,
            "context_patch",
            json!({"id": format!("serve/run/{run_id}"), "patch": {"state": "completed"}}),
        )
        .await;
    assert!(status == 403 || status == 404, "{status}: {body}");
    let (status, body) = s
        .call(BOB, "audit_query", json!({"agent": "client:*"}))
        .await;
    assert_eq!(status, 403, "{body}");
    // Names, never paths.
    for agent in [
        "../guest_hello",
        "/etc/passwd",
        "guest:hello",
        "hello/../hello",
        "HELLO",
        "hello\u{0}",
    ] {
        let (status, body) = s
            .call(ALICE, "run_agent", json!({"agent": agent, "task": "t"}))
            .await;
        assert_eq!(status, 404, "{agent:?}: {body}");
    }
    let (status, body) = s
        .call(ALICE, "run_task", json!({"manifest": "../slow.toml"}))
        .await;
    assert_eq!(status, 404, "{body}");
    // Limits: zero, past the ceiling, past u64, or a field that is not narrowable.
    for limits in [
        json!({"fuel": 0}),
        json!({"max_memory_mb": 0}),
        json!({"max_execution_time_ms": 0}),
        json!({"fuel": 100000001u64}),
        json!({"max_memory_mb": 33}),
        json!({"fuel": 18446744073709551616.0}),
        json!({"fuel": -1}),
        json!({"isolation_level": "none"}),
    ] {
        let (status, body) = s
            .call(
                ALICE,
                "run_agent",
                json!({"agent": "hello", "task": "t", "limits": limits}),
            )
            .await;
        let failed = status == 200 && body["status"] == "failed";
        assert!(status == 400 || failed, "{limits}: {status} {body}");
    }
    // Inputs may replace only literal values of the manifest's subtasks.
    let (status, body) = s
        .call(
            ALICE,
            "run_task",
            json!({"manifest": "slow", "inputs": {"nap.agent": "x"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Deeply nested JSON: one clean error, and the server goes on.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, _) = s
        .post_raw(ALICE, "/v1/tools/context_list", deep.into_bytes())
        .await;
    assert!(status == 400 || status == 413, "{status}");
    let deep_doc = format!(
        "{{\"id\": \"deep\", \"context_type\": \"t\", \"doc\": {}1{}}}",
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let (status, _) = s
        .post_raw(ALICE, "/v1/tools/context_put", deep_doc.into_bytes())
        .await;
    assert_eq!(status, 400);
    // A bearer token with a session token's shape, and auth header variants.
    for auth in [
        "Bearer qis_0000",
        "Bearer ",
        "Basic YWxpY2U6eA==",
        &format!("Bearer  {ALICE}x"),
        &format!("Token {ALICE}"),
    ] {
        let r = s
            .http
            .post(format!("{}/v1/tools/list_agents", s.base))
            .header("authorization", auth)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{auth}");
    }
    // A replayed Ed25519 credential, and one for another host.
    let host = s.server.auth.host_id().to_string();
    let cred = credential(&host, "replayed-nonce");
    let (status, _) = s
        .post_raw("", "/v1/auth/ed25519", cred.to_string().into_bytes())
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post_raw("", "/v1/auth/ed25519", cred.to_string().into_bytes())
        .await;
    assert_eq!(status, 401);
    let cred = credential("another-host", "other-host-nonce");
    let (status, _) = s
        .post_raw("", "/v1/auth/ed25519", cred.to_string().into_bytes())
        .await;
    assert_eq!(status, 401);
    s.ok(ALICE, "terminate", json!({"run_id": run_id})).await;
    s.still_serves().await;
}

// ---------------------------------------------------------------------------------------
// A careless operator
// ---------------------------------------------------------------------------------------

/// Configs that must be refused, each naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_configs_are_refused_naming_the_field() {
    // A missing component: the server does not open.
    let f = Fixture::new(
        "",
        "\n[agents.ghost]\ncomponent = \"guest:no-such-guest\"\n",
    );
    let config = ServerConfig::load(&f.config_path()).unwrap();
    let e = Server::open(
        config,
        &f.data_dir(),
        None,
        qi_host::HostConfig {
            cache_dir: Some(crate::common::cache_dir()),
            ..qi_host::HostConfig::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("config.agents.ghost.component"), "{e}");
    // A missing manifest file.
    let f = Fixture::new("", "\n[manifests.gone]\npath = \"gone.toml\"\n");
    let config = ServerConfig::load(&f.config_path()).unwrap();
    let e = Server::open(
        config,
        &f.data_dir(),
        None,
        qi_host::HostConfig {
            cache_dir: Some(crate::common::cache_dir()),
            ..qi_host::HostConfig::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("config.manifests.gone"), "{e}");
    // Refused at load: a reserved name, a bad name, a name in both tables, a duplicate key,
    // an unknown limit, a token too short.
    for (extra, field) in [
        (
            "[clients.operator]\ntoken_file = \"alice.token\"",
            "operator",
        ),
        (
            "[agents.\"a/b\"]\ncomponent = \"guest:hello\"",
            "agents.a/b",
        ),
        (
            "[clients.planner]\ntoken_file = \"alice.token\"",
            "identities.planner",
        ),
        ("[clients.alice]\ntoken_file = \"bob.token\"", "--config"),
    ] {
        let f = Fixture::new("", &format!("\n{extra}\n"));
        let e = ServerConfig::load(&f.config_path())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{extra}: {e}");
    }
    let f = Fixture::new("max_body = 5", "");
    assert!(ServerConfig::load(&f.config_path()).is_err());
    let f = Fixture::new("", "");
    std::fs::write(at(&f, "alice.token"), "short\n").unwrap();
    let config = ServerConfig::load(&f.config_path()).unwrap();
    let e = Server::open(
        config,
        &f.data_dir(),
        None,
        qi_host::HostConfig {
            cache_dir: Some(crate::common::cache_dir()),
            ..qi_host::HostConfig::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("config.clients.alice.token_file"), "{e}");
    // The same token for two clients.
    let f = Fixture::new("", "");
    std::fs::write(at(&f, "bob.token"), format!("{ALICE}\n")).unwrap();
    let config = ServerConfig::load(&f.config_path()).unwrap();
    let e = Server::open(
        config,
        &f.data_dir(),
        None,
        qi_host::HostConfig {
            cache_dir: Some(crate::common::cache_dir()),
            ..qi_host::HostConfig::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("token"), "{e}");
}

// ---------------------------------------------------------------------------------------
// A crashing machine
// ---------------------------------------------------------------------------------------

/// A hostile client fills `max_tracked_runs` and asks for one more; the operator restarts
/// the server (SIGTERM). The restarted server must start: a run it cannot resume is one
/// failed run, never a server that refuses to start on its data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_max_tracked_runs_cannot_stop_the_restarted_server_from_starting() {
    let f = Fixture::new(
        "max_tracked_runs = 16\nmax_runs_per_client = 100\nshutdown_grace_ms = 0",
        "",
    );
    let p = Process::try_start(&f).expect("the server starts");
    for _ in 0..16 {
        let (status, body) = p.call(ALICE, "run_task", sleeping_run()).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = p.call(ALICE, "run_task", sleeping_run()).await;
    assert_eq!(status, 429, "{body}");
    let (code, lines) = p.stop(rustix::process::Signal::TERM);
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    match Process::try_start(&f) {
        Ok(p) => {
            let (status, body) = p.call(ALICE, "list_agents", json!({})).await;
            assert_eq!(status, 200, "{body}");
        }
        Err(lines) => panic!("the restarted server did not start:\n{}", lines.join("\n")),
    }
}

/// The operator lowers `max_tracked_runs` below the runs a killed server left running and
/// restarts: the server must still start (and resume what it can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_max_tracked_runs_does_not_stop_a_restart_after_sigkill() {
    let f = Fixture::new("max_runs_per_client = 100", "");
    let p = Process::try_start(&f).expect("the server starts");
    for _ in 0..17 {
        let (status, body) = p.call(ALICE, "run_task", sleeping_run()).await;
        assert_eq!(status, 200, "{body}");
    }
    // The machine dies: SIGKILL, the records stay `running`.
    let _ = p.stop(rustix::process::Signal::KILL);
    let config = std::fs::read_to_string(f.config_path()).unwrap();
    std::fs::write(
        f.config_path(),
        config.replace(
            "max_runs_per_client = 100",
            "max_runs_per_client = 100\nmax_tracked_runs = 16",
        ),
    )
    .unwrap();
    match Process::try_start(&f) {
        Ok(p) => {
            let (status, body) = p.call(ALICE, "list_agents", json!({})).await;
            assert_eq!(status, 200, "{body}");
        }
        Err(lines) => panic!("the restarted server did not start:\n{}", lines.join("\n")),
    }
}

/// A run record left in a bad state (a crash, a hand edit): an unknown manifest, inputs of
/// the wrong shape, no client. The restarted server starts, marks what it cannot resume
/// failed, and does not resume it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_run_records_do_not_stop_a_restart() {
    let f = Fixture::new("", "");
    // The records are planted by a client the config makes the operator (as a hand edit or
    // a torn write would leave them).
    let p = Process::try_start(&f).expect("the server starts");
    for (id, doc) in [
        (
            "serve/run/serve-bad1",
            json!({"manifest": "no-such", "state": "running"}),
        ),
        (
            "serve/run/serve-bad2",
            json!({"manifest": "slow", "inputs": {"nap.agent": 1}, "state": "running"}),
        ),
        ("serve/run/serve-bad3", json!({"state": "running"})),
        (
            "serve/run/serve-bad4",
            json!({"manifest": "slow", "inputs": "not a map", "client": 7, "state": "running"}),
        ),
    ] {
        let (status, body) = p
            .call(
                ADMIN,
                "context_put",
                json!({"id": id, "doc": doc, "context_type": qi_host::serve::runs::RUN_RECORD_TYPE}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (code, lines) = p.stop(rustix::process::Signal::TERM);
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    let p = match Process::try_start(&f) {
        Ok(p) => p,
        Err(lines) => panic!("the server did not start:\n{}", lines.join("\n")),
    };
    let (status, body) = p.call(ALICE, "list_agents", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (_, lines) = p.stop(rustix::process::Signal::TERM);
    let p = Process::try_start(&f).expect("a second restart starts");
    let (_, lines2) = p.stop(rustix::process::Signal::TERM);
    assert!(
        !lines2.iter().any(|l| l.contains("resumed")),
        "bad records resumed again:\n{}\n--\n{}",
        lines.join("\n"),
        lines2.join("\n")
    );
}
