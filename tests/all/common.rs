//! Shared host, component loading and spec helpers.

use qi_host::{
    AgentFailure, AgentHost, AgentReport, HostConfig, LimitKind, LoadedComponent,
    SubAgentSpecification, TaskRequest, Tool, ToolContext, ToolFuture, ToolRegistry,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// One compiled-component cache for every test, the CLI tests included.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

/// A tool that never answers: for tests of termination and deadlines while an agent waits in a
/// host call. With `{"key": K}` it first signals K (see [`next_signal`]), so the test knows the
/// agent is inside the call.
struct BlockForever;

impl Tool for BlockForever {
    fn name(&self) -> &str {
        "test.block"
    }
    fn description(&self) -> &str {
        "Never returns"
    }
    fn call(&self, _ctx: ToolContext, input: Value) -> ToolFuture {
        Box::pin(async move {
            if let Some(key) = input.get("key").and_then(Value::as_str) {
                let _ = signal_channel(key).0.send(input.clone());
            }
            std::future::pending::<()>().await;
            unreachable!()
        })
    }
}

/// Hands `{"key": K, ...}` to the test waiting in [`next_signal`]`(K)` and returns at once: a guest
/// that calls it is provably executing at that point of its run.
struct Signal;

impl Tool for Signal {
    fn name(&self) -> &str {
        "test.signal"
    }
    fn description(&self) -> &str {
        "Sends its input to the test waiting on input.key, then returns {}"
    }
    fn call(&self, _ctx: ToolContext, input: Value) -> ToolFuture {
        Box::pin(async move {
            let key = input.get("key").and_then(Value::as_str).unwrap_or_default();
            // The test may not be waiting yet: the channel keeps the signal until it is.
            let _ = signal_channel(key).0.send(input.clone());
            Ok(serde_json::json!({}))
        })
    }
}

/// Waits at the `tokio::sync::Barrier` named `{"key": K, "n": N}` and returns the agent id: N
/// calls with one key complete only if all N are in flight at once (a test can take one of the
/// N places itself with [`rendezvous`]).
struct Rendezvous;

impl Tool for Rendezvous {
    fn name(&self) -> &str {
        "test.rendezvous"
    }
    fn description(&self) -> &str {
        "Waits until {\"n\": N} callers with the same {\"key\": K} are waiting, then returns"
    }
    fn call(&self, ctx: ToolContext, input: Value) -> ToolFuture {
        Box::pin(async move {
            let key = input.get("key").and_then(Value::as_str).unwrap_or_default();
            let n = input.get("n").and_then(Value::as_u64).unwrap_or(1) as usize;
            rendezvous(key, n).wait().await;
            Ok(serde_json::json!({"agent": ctx.agent_id}))
        })
    }
}

type SignalChannel = (
    tokio::sync::mpsc::UnboundedSender<Value>,
    Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Value>>>,
);

fn signal_channel(key: &str) -> SignalChannel {
    static CHANNELS: OnceLock<Mutex<HashMap<String, SignalChannel>>> = OnceLock::new();
    let mut channels = CHANNELS.get_or_init(Default::default).lock().unwrap();
    channels
        .entry(key.to_string())
        .or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (tx, Arc::new(tokio::sync::Mutex::new(rx)))
        })
        .clone()
}

/// The next input a guest gave `test.signal` with `"key": key`, in call order. Panics if none
/// comes within a minute (a hang guard, never the assertion).
pub async fn next_signal(key: &str) -> Value {
    let rx = signal_channel(key).1;
    let mut rx = rx.lock().await;
    hang_guard(&format!("a test.signal call with key {key}"), rx.recv())
        .await
        .expect("the sender lives in a static")
}

/// The barrier `test.rendezvous` waits at for `key` (made with `n` places on first use).
pub fn rendezvous(key: &str, n: usize) -> Arc<tokio::sync::Barrier> {
    static BARRIERS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Barrier>>>> = OnceLock::new();
    let mut barriers = BARRIERS.get_or_init(Default::default).lock().unwrap();
    barriers
        .entry(key.to_string())
        .or_insert_with(|| Arc::new(tokio::sync::Barrier::new(n)))
        .clone()
}

/// A key no other test uses, for `test.signal`, `test.rendezvous` and `test.block`.
pub fn unique_key(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Awaits `fut`, panicking with "`what` did not happen within 60 s" if it takes longer: a guard
/// against a hanging test, generous so that it never decides a passing run.
pub async fn hang_guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(60), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not happen within 60 s"),
    }
}

/// A tool-call step for `tool-user`.
pub fn call(tool: &str, input: Value) -> Value {
    serde_json::json!({"tool": tool, "input": input})
}

/// The built-in tools plus `test.block`, `test.signal` and `test.rendezvous`.
pub fn test_tools() -> ToolRegistry {
    let mut tools = ToolRegistry::with_builtins();
    tools.register(BlockForever);
    tools.register(Signal);
    tools.register(Rendezvous);
    tools
}

/// A new host of its own for up to `max_live_agents` agents, with [`test_tools`] and the shared
/// component cache; add a context store, access control or an audit log with its `with_*`
/// methods.
pub fn new_host(max_live_agents: u32) -> AgentHost {
    AgentHost::with_tools(
        HostConfig {
            max_live_agents,
            cache_dir: Some(cache_dir()),
            ..HostConfig::default()
        },
        test_tools(),
    )
    .expect("host starts")
}

/// The process-wide host (256 live agents, no context store), with [`test_tools`].
pub fn host() -> &'static AgentHost {
    static HOST: OnceLock<AgentHost> = OnceLock::new();
    HOST.get_or_init(|| new_host(256))
}

pub fn load(path: &str) -> Arc<LoadedComponent> {
    host().load(path).expect("bundled guest loads")
}

/// A roomy spec for well-behaved guests.
pub fn spec() -> SubAgentSpecification {
    let mut s = SubAgentSpecification {
        fuel: 5_000_000_000,
        ..Default::default()
    };
    s.resource_limits.max_memory_mb = 64;
    s.resource_limits.max_execution_time_ms = 30_000;
    s
}

pub async fn run(path: &str, spec: SubAgentSpecification, input: Value) -> AgentReport {
    host()
        .run(
            &load(path),
            spec,
            TaskRequest {
                // A fixed task id: the guest sees it, and fuel use must not depend on the
                // host-assigned agent id.
                id: Some("test-task".into()),
                ..TaskRequest::new("test task", input)
            },
        )
        .await
        .expect("agent spawns")
}

#[track_caller]
pub fn ok(report: &AgentReport) -> &Value {
    match (&report.output, &report.failure) {
        (Some(v), None) => v,
        _ => panic!(
            "expected success, got {:?}\nstderr: {}",
            report.failure, report.stderr
        ),
    }
}

#[track_caller]
pub fn limit(report: &AgentReport) -> (LimitKind, String) {
    match &report.failure {
        Some(f @ AgentFailure::LimitExceeded { limit, .. }) => (*limit, f.to_string()),
        other => panic!(
            "expected a limit failure, got {other:?} (output {:?})",
            report.output
        ),
    }
}

/// A context service (with its event bus) over a new in-memory store.
pub async fn in_memory_context() -> qi_host::context::ContextService {
    context_service(qi_host::StoreConfig::in_memory())
        .await
        .expect("in-memory context service opens")
}

/// A context service (with its event bus) over the store `config` describes (a data directory,
/// a master key), or the one-line reason it cannot be opened.
pub async fn context_service(
    config: qi_host::StoreConfig,
) -> Result<qi_host::context::ContextService, String> {
    context_service_with(config, qi_host::context::ContextConfig::default()).await
}

/// [`context_service`] with the context store configured by `context`.
pub async fn context_service_with(
    config: qi_host::StoreConfig,
    context: qi_host::context::ContextConfig,
) -> Result<qi_host::context::ContextService, String> {
    let store = qi_host::Store::open(config).map_err(|e| e.to_string())?;
    let bus = qi_host::EventBus::new(store.clone(), qi_host::EventBusConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    qi_host::context::ContextService::open(
        store,
        bus,
        Arc::new(qi_host::context::SystemClock),
        context,
    )
    .await
    .map_err(|e| e.to_string())
}

/// The `qi-host` binary, using the tests' shared component cache.
pub fn qi_host_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qi-host"));
    cmd.env("QI_HOST_CACHE_DIR", cache_dir());
    cmd
}

/// Runs `qi-host` with `args` to its end.
pub fn qi_host_output(args: &[&str]) -> std::process::Output {
    qi_host_command().args(args).output().expect("qi-host runs")
}

/// Every file under `dir` (recursively) with its bytes: what is on disk, for checks that
/// some text is nowhere in the clear.
pub fn files_under(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A directory grant of `dir` at `/workspace` (read-only unless the spec says otherwise) at
/// `restricted` isolation.
pub fn restricted_spec(dir: &std::path::Path) -> SubAgentSpecification {
    let mut s = spec();
    s.isolation_level = qi_host::IsolationLevel::Restricted;
    s.directories.push(qi_host::DirectoryGrant {
        host_path: dir.to_path_buf(),
        guest_path: "/workspace".into(),
        writable: None,
    });
    s
}

/// `restricted` isolation with network access to `patterns` only.
pub fn network_spec(patterns: &[String]) -> SubAgentSpecification {
    let mut s = spec();
    s.isolation_level = qi_host::IsolationLevel::Restricted;
    s.security_constraints.network_access_level = qi_host::NetworkAccessLevel::Restricted;
    s.resource_limits.allowed_network_hosts = patterns.to_vec();
    s
}

/// A TCP listener on 127.0.0.1 that accepts every connection, answers
/// `HTTP/1.0 200 OK\r\n\r\nhello from host` and records each peer in accept order, so a
/// denial test can check that nothing reached it.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    accepted: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<std::net::SocketAddr>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut sock, peer)) = listener.accept().await {
                let _ = tx.send(peer);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock
                        .write_all(b"HTTP/1.0 200 OK\r\n\r\nhello from host")
                        .await;
                });
            }
        });
        TestServer {
            addr,
            accepted: tokio::sync::Mutex::new(rx),
        }
    }

    /// The number of connections accepted so far: a connection the test makes now is accepted
    /// after every earlier one, so counting up to it needs no waiting on time.
    pub async fn connections_so_far(&self) -> usize {
        let sentinel = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let me = sentinel.local_addr().unwrap();
        let mut accepted = self.accepted.lock().await;
        let mut before = 0;
        loop {
            let peer = hang_guard("the sentinel connection's accept", accepted.recv())
                .await
                .expect("the listener runs for the whole test");
            if peer == me {
                return before;
            }
            before += 1;
        }
    }
}
