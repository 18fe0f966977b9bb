//! `qi-host serve`: the HTTP API and its bounds ([`api`], [`bounds`]), contexts and audit
//! through it ([`state`]), the lifecycle of the server process ([`lifecycle`]), and real MCP
//! clients from PyPI ([`python`]).
//!
//! The in-process fixture serves the router of `qi_host::serve::http` on a loopback port
//! with the shared component cache; the lifecycle tests run the `qi-host` binary.

use crate::common::cache_dir;
use qi_host::serve::{Server, ServerConfig};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod api;
mod bounds;
mod lifecycle;
pub(crate) mod process;
mod python;
mod redteam;
mod state;

/// The tokens of the fixture's clients (each 64 hex characters).
pub const ALICE: &str = "a11ce0000000000000000000000000000000000000000000000000000000a11c";
pub const BOB: &str = "b0b0000000000000000000000000000000000000000000000000000000000b0b";
pub const ADMIN: &str = "ad00000000000000000000000000000000000000000000000000000000000ad0";
/// The Ed25519 secret key of the fixture's identity `planner`.
pub const PLANNER_SECRET: [u8; 32] = [7; 32];

/// A config directory: `config.toml`, token files, a `slow` manifest (`greet`: hello, then
/// `nap`: a worker whose `steps` input sleeps 50 ms unless overridden), a data directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// The fixture with `limits` (TOML lines of `[limits]`) and `extra` appended.
    pub fn new(limits: &str, extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for (name, token) in [("alice", ALICE), ("bob", BOB), ("admin", ADMIN)] {
            std::fs::write(p.join(format!("{name}.token")), format!("{token}\n")).unwrap();
        }
        let public = ed25519_dalek::SigningKey::from_bytes(&PLANNER_SECRET).verifying_key();
        std::fs::write(
            p.join("slow.toml"),
            r#"
[task]
id = "slow"
description = "hello, then a worker that sleeps"

[strategy]
type = "sequential"
failureHandling = "fail-fast"

[agents.hello]
component = "guest:hello"

[agents.worker]
component = "guest:worker"
spec = { resourceLimits = { maxExecutionTimeMs = 900000 } }

[[subtasks]]
id = "greet"
agent = "hello"
inputs = [{ name = "name", value = "serve" }]

[[subtasks]]
id = "nap"
agent = "worker"
dependsOn = ["greet"]
inputs = [{ name = "steps", value = [{ sleep_ms = 50 }] }]
"#,
        )
        .unwrap();
        let config = format!(
            r#"
guest_dir = "{guests}"

[limits]
{limits}

[agents.hello]
component = "guest:hello"
spec = {{ fuel = 100000000, resourceLimits = {{ maxMemoryMB = 32 }} }}

[agents.sleeper]
component = "guest:sleeper"
spec = {{ capabilities = ["sleep"], fuel = 100000000, resourceLimits = {{ maxMemoryMB = 32, maxExecutionTimeMs = 120000 }} }}

[manifests.slow]
path = "slow.toml"

[manifests.code-review]
path = "{examples}/code-review/task.toml"

[clients.alice]
token_file = "alice.token"

[clients.bob]
token_file = "bob.token"

[clients.admin]
token_file = "admin.token"
trust = "high"
operator = true

[identities.planner]
public_key = "{public}"
trust = "medium"
{extra}
"#,
            guests = crate::coord::guest_dir().display(),
            examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"),
            public = hex::encode(public.as_bytes()),
        );
        std::fs::write(p.join("config.toml"), config).unwrap();
        Fixture { dir }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Opens the server in this process.
    pub async fn open(&self) -> Arc<Server> {
        let config = ServerConfig::load(&self.config_path()).expect("the fixture config loads");
        Server::open(
            config,
            &self.data_dir(),
            None,
            qi_host::HostConfig {
                max_live_agents: 64,
                cache_dir: Some(cache_dir()),
                ..qi_host::HostConfig::default()
            },
        )
        .await
        .expect("the server opens")
    }

    /// Opens the server and serves its HTTP app on a loopback port.
    pub async fn serve(&self) -> Served {
        let server = self.open().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let app = qi_host::serve::http::router(server.clone(), stop.clone(), true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(qi_host::serve::http::no_delay(listener), app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        Served {
            server,
            base: format!("http://{addr}"),
            stop,
            http: reqwest::Client::new(),
        }
    }
}

/// A server serving HTTP in this process.
pub struct Served {
    pub server: Arc<Server>,
    pub base: String,
    pub stop: tokio_util::sync::CancellationToken,
    pub http: reqwest::Client,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Served {
    /// `POST /v1/tools/<tool>` with `args` as `token`: status and JSON body.
    pub async fn call(&self, token: &str, tool: &str, args: Value) -> (u16, Value) {
        self.post_raw(
            token,
            &format!("/v1/tools/{tool}"),
            args.to_string().into_bytes(),
        )
        .await
    }

    /// `POST <path>` with a raw body.
    pub async fn post_raw(&self, token: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        let r = req.send().await.expect("the server answers");
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes).into_owned()})),
        )
    }

    /// A call that must succeed.
    pub async fn ok(&self, token: &str, tool: &str, args: Value) -> Value {
        let (status, body) = self.call(token, tool, args).await;
        assert_eq!(status, 200, "{tool}: {body}");
        body
    }

    /// The server still serves: `hello` runs for alice.
    pub async fn still_serves(&self) {
        let out = self
            .ok(
                ALICE,
                "run_agent",
                json!({"agent": "hello", "task": "hi", "input": {"name": "qi"}}),
            )
            .await;
        assert!(out["output"].is_object(), "{out}");
    }
}

/// The error message of an error body.
pub fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// The server's `hostId` and a fresh signed credential of `planner` for it.
pub fn credential(host_id: &str, nonce: &str) -> Value {
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(&PLANNER_SECRET);
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let challenge =
        qi_host::security::identity::Credential::challenge(host_id, "client:planner", ts, nonce);
    let sig = key.sign(challenge.as_bytes());
    json!({
        "agentId": "client:planner",
        "timestampMs": ts,
        "nonce": nonce,
        "signature": hex::encode(sig.to_bytes()),
    })
}

/// The path of a file in the fixture's directory.
pub fn at(f: &Fixture, name: &str) -> PathBuf {
    Path::new(f.dir.path()).join(name)
}

/// A response's body as JSON (`null` when it is not JSON).
pub async fn json_of(r: reqwest::Response) -> Value {
    let bytes = r.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}
