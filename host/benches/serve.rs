//! `qi-host serve` benchmarks, each a comparison measured within one run:
//!
//! 1. `latency`: `run_agent` of the registered `hello` agent, one request at a time, by four
//!    paths interleaved (each iteration runs all four, in a rotating order):
//!    - in-process: `AgentHost::run` of the same component with the registered agent's spec,
//!      on the server's own host (what `run_agent` does inside the server: spawn, then run);
//!    - `Server::call`: the server's operation in-process, without HTTP (audit, access gate,
//!      run slot, the agent's own task, the report as JSON);
//!    - JSON API: `POST /v1/tools/run_agent` over HTTP/1.1 on loopback;
//!    - MCP: `tools/call` `run_agent` over MCP Streamable HTTP on loopback (an initialized
//!      session; the answer is an SSE stream, as rmcp sends it).
//!
//!    Prints median, p99 and mean per path, and the added latency of each path over the
//!    in-process one (difference of the medians, and the median of the per-iteration
//!    differences).
//! 2. `throughput`: 16 concurrent clients calling `run_agent(hello)` for a fixed time, by the
//!    same four paths in turn (the HTTP clients each with their own connection, their own MCP
//!    session and their own bearer token); prints calls/s, failures, latency under load, the
//!    CPU this process and the rest of the machine used (so the CPU per call of each path), and
//!    the MCP figure against the target of 2,000 calls/s. It also times
//!    `qi_host::serve::tools::tools()` (built once per process; before that fix every MCP
//!    `tools/call` rebuilt every schema, holding MCP to ~1,900 calls/s).
//!
//! The server is `qi_host::serve::Server` opened on a temporary config and data directory and
//! served with `axum::serve` on `127.0.0.1:0` through `http::no_delay` (`TCP_NODELAY`), as
//! `qi-host serve --listen` does. Server and
//! clients share one process and one multi-thread tokio runtime (a worker per core); on a
//! 2-core machine the clients' own HTTP work competes with the server's for the same cores.
//! The bench's `[limits]` raise the per-client request rate, burst and runs in progress so
//! that they never refuse a call (the figures are of the server's work, not of its quotas).
//!
//! `cargo bench -p qi-host --bench serve [-- latency|throughput] [SECONDS]` (default: both;
//! SECONDS: the measured window of each throughput path, default 10). Prints figures only;
//! nothing here asserts on timing.

#![allow(missing_docs)]

use qi_guest_artifacts::HELLO_COMPONENT;
use qi_host::serve::{Caller, Server, ServerConfig};
use qi_host::{HostConfig, LoadedComponent, SubAgentSpecification, TaskRequest};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Concurrent clients of the throughput section.
const CLIENTS: usize = 16;
/// The target for MCP `run_agent` calls per second on a 2-core machine.
const TARGET_PER_SEC: f64 = 2_000.0;
/// Latency section: warm-up iterations, then measured ones (each runs all four paths).
const LAT_WARMUP: usize = 200;
const LAT_ITERATIONS: usize = 2_000;
/// Throughput section: unmeasured run-in before each path's window.
const WARM: Duration = Duration::from_secs(2);
/// The MCP protocol version the client asks for (the newest with `initialize` that rmcp
/// serves with sessions; the Python SDK's).
const PROTOCOL: &str = "2025-06-18";
/// The registered spec of `hello` (as in the tests' fixture).
const HELLO_SPEC: &str = "{ fuel = 100000000, resourceLimits = { maxMemoryMB = 32 } }";

/// The `[limits]` of the bench's config: nothing refuses a call (the defaults: 100 requests
/// per second and a burst of 200 per client, 4 runs in progress per client).
const LIMITS: &str = "requests_per_second = 100000\nburst = 1000000\nmax_runs_per_client = 1000";

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    // `cargo bench` appends `--bench`; a number is the throughput window, anything else names
    // a section.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let secs = args
        .iter()
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(10);
    let mut sections: Vec<&str> = args
        .iter()
        .filter(|a| a.parse::<u64>().is_err())
        .map(String::as_str)
        .collect();
    for s in &sections {
        anyhow::ensure!(
            matches!(*s, "latency" | "throughput"),
            "unknown section `{s}`; expected latency or throughput"
        );
    }
    if sections.is_empty() {
        sections = vec!["latency", "throughput"];
    }

    println!("== qi-host serve benchmarks ==");
    match std::env::var("RUST_BACKTRACE") {
        Ok(v) => println!("RUST_BACKTRACE: set, {v:?}"),
        Err(_) => println!("RUST_BACKTRACE: not set"),
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("nproc: {}", nproc());
    println!(
        "runtime: one multi-thread tokio runtime, {workers} worker threads, shared by the server \
         (axum + rmcp + agents) and the clients (reqwest) in this process"
    );
    println!("loadavg at start: {}", loadavg());
    println!(
        "sections: {}; throughput window {secs} s",
        sections.join(", ")
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let bench = Arc::new(Bench::start().await?);
        println!(
            "server: Server::open + http::router(loopback_only = true) + axum::serve at {} \
             (HostConfig max_live_agents 1000 as `qi-host serve`); agent `hello` = guest:hello, \
             spec {HELLO_SPEC}",
            bench.base
        );
        println!(
            "[limits] of the bench config: {}; one bearer-token client per concurrent client",
            LIMITS.replace('\n', ", ")
        );
        // Everything below runs in tasks on the runtime's worker threads, as the server's
        // request handlers and agents do (not on the thread that blocks on the runtime).
        if sections.contains(&"latency") {
            let b = bench.clone();
            tokio::spawn(async move { latency_section(&b).await }).await??;
        }
        if sections.contains(&"throughput") {
            let b = bench.clone();
            tokio::spawn(async move { throughput_section(&b, Duration::from_secs(secs)).await })
                .await??;
        }
        bench.stop.cancel();
        anyhow::Ok(())
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the server under test
// ---------------------------------------------------------------------------------------------

/// The server, serving on a loopback port, and what the in-process paths need.
struct Bench {
    _dir: tempfile::TempDir,
    server: Arc<Server>,
    base: String,
    stop: CancellationToken,
    /// `hello`, loaded by the server's host (the same compiled component as the registry's).
    component: Arc<LoadedComponent>,
    /// The registered spec of `hello`, named as the registry names it.
    spec: SubAgentSpecification,
    /// Bearer tokens: `tokens[0]` for the latency section, `tokens[1..=CLIENTS]` one per
    /// concurrent client.
    tokens: Vec<String>,
}

fn token(i: usize) -> String {
    format!("{:064x}", 0xbe9c_0000_u64 + i as u64)
}

fn guest_dir() -> &'static Path {
    Path::new(HELLO_COMPONENT).parent().expect("guest dir")
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-component-cache")
}

impl Bench {
    async fn start() -> anyhow::Result<Bench> {
        let dir = tempfile::tempdir()?;
        let p = dir.path();
        let mut config = format!(
            "guest_dir = \"{}\"\n\n[limits]\n{LIMITS}\n\n[agents.hello]\ncomponent = \"guest:hello\"\nspec = {HELLO_SPEC}\n",
            guest_dir().display()
        );
        let tokens: Vec<String> = (0..=CLIENTS).map(token).collect();
        for (i, t) in tokens.iter().enumerate() {
            std::fs::write(p.join(format!("c{i:02}.token")), format!("{t}\n"))?;
            let _ = write!(
                config,
                "\n[clients.c{i:02}]\ntoken_file = \"c{i:02}.token\"\n"
            );
        }
        std::fs::write(p.join("config.toml"), config)?;
        let config = ServerConfig::load(&p.join("config.toml"))?;
        let mut spec = config.agents["hello"].spec.clone();
        spec.name = Some("hello".into());
        let server = Server::open(
            config,
            &p.join("data"),
            None,
            HostConfig {
                max_live_agents: 1_000,
                cache_dir: Some(cache_dir()),
                ..HostConfig::default()
            },
        )
        .await?;
        let component = server.host().load(HELLO_COMPONENT)?;
        let stop = CancellationToken::new();
        let app = qi_host::serve::http::router(server.clone(), stop.clone(), true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let s = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(qi_host::serve::http::no_delay(listener), app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
            {
                eprintln!("axum::serve failed: {e}");
            }
        });
        Ok(Bench {
            _dir: dir,
            server,
            base: format!("http://{addr}"),
            stop,
            component,
            spec,
            tokens,
        })
    }

    fn caller(&self, token: &str) -> Caller {
        self.server
            .auth
            .bearer(token)
            .expect("the bench's tokens are registered")
    }
}

/// The arguments of every `run_agent` call.
fn run_agent_args() -> Value {
    json!({"agent": "hello", "task": "bench", "input": {"name": "bench"}})
}

/// A `run_agent` result (the agent's report as JSON) that is a success of `hello`.
fn check_report(v: &Value) -> Result<(), String> {
    if v["status"] == "completed" && v["output"]["agent"] == "hello" && v["failure"].is_null() {
        Ok(())
    } else {
        Err(format!(
            "not a completed run of hello: {}",
            clip(&v.to_string())
        ))
    }
}

fn clip(s: &str) -> String {
    if s.len() <= 300 {
        s.to_string()
    } else {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

// ---------------------------------------------------------------------------------------------
// the four paths
// ---------------------------------------------------------------------------------------------

/// In-process: `AgentHost::run` on the server's host with the registered spec.
async fn in_process(b: &Bench) -> Result<(), String> {
    let report = b
        .server
        .host()
        .run(
            &b.component,
            b.spec.clone(),
            TaskRequest::new("bench", json!({"name": "bench"})),
        )
        .await
        .map_err(|e| format!("AgentHost::run: {e}"))?;
    if report.failure.is_some()
        || report.output.as_ref().map(|o| &o["agent"]) != Some(&json!("hello"))
    {
        return Err(format!("AgentHost::run: {:?}", report.failure));
    }
    std::hint::black_box(report);
    Ok(())
}

/// `Server::call` in-process, as `caller`.
async fn server_call(b: &Bench, caller: &Caller) -> Result<(), String> {
    let v = b
        .server
        .call(caller, "run_agent", run_agent_args())
        .await
        .map_err(|e| format!("Server::call: {}", e.message))?;
    check_report(&v)
}

/// A client of the JSON API: `POST /v1/tools/run_agent`.
struct ApiClient {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl ApiClient {
    fn new(base: &str, token: &str) -> anyhow::Result<ApiClient> {
        Ok(ApiClient {
            http: client()?,
            url: format!("{base}/v1/tools/run_agent"),
            token: token.to_string(),
        })
    }

    async fn run_agent(&self) -> Result<(), String> {
        let r = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(run_agent_args().to_string())
            .send()
            .await
            .map_err(|e| format!("POST /v1/tools/run_agent: {e}"))?;
        let status = r.status();
        let bytes = r.bytes().await.map_err(|e| format!("body: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                clip(&String::from_utf8_lossy(&bytes))
            ));
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("body: {e}"))?;
        check_report(&v)
    }
}

/// One HTTP/1.1 connection per client (a client makes one request at a time, so its pool
/// holds one connection).
fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// An MCP client over Streamable HTTP, written against the protocol (rmcp's client side is
/// not among qi-host's features): `initialize`, `notifications/initialized`, then
/// `tools/call` requests in that session, each answered as JSON or as an SSE stream.
struct McpClient {
    http: reqwest::Client,
    url: String,
    token: String,
    session: String,
    next_id: u64,
}

impl McpClient {
    async fn connect(base: &str, token: &str) -> anyhow::Result<McpClient> {
        let http = client()?;
        let url = format!("{base}/mcp");
        let init = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "qi-host-serve-bench", "version": "0.1.0"},
            },
        });
        let r = http
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(init.to_string())
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "initialize: HTTP {}", r.status());
        let session = r
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("initialize: no mcp-session-id header"))?
            .to_string();
        let answer = jsonrpc_answer(r, 0).await.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            answer["result"]["protocolVersion"].is_string(),
            "initialize: {answer}"
        );
        let r = http
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", PROTOCOL)
            .body(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "notifications/initialized: HTTP {}",
            r.status()
        );
        let _ = r.bytes().await?;
        Ok(McpClient {
            http,
            url,
            token: token.to_string(),
            session,
            next_id: 1,
        })
    }

    /// `tools/call` of `name`: the result's `structuredContent`.
    async fn call_tool(&mut self, name: &str, arguments: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments},
        });
        let r = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.session)
            .header("mcp-protocol-version", PROTOCOL)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("POST /mcp: {e}"))?;
        let answer = jsonrpc_answer(r, id).await?;
        let result = &answer["result"];
        if !answer["error"].is_null() || result.is_null() {
            return Err(format!("JSON-RPC error: {}", clip(&answer.to_string())));
        }
        if result["isError"] == true {
            return Err(format!(
                "tool error: {}",
                clip(&result["content"].to_string())
            ));
        }
        Ok(result["structuredContent"].clone())
    }

    async fn run_agent(&mut self) -> Result<(), String> {
        let v = self.call_tool("run_agent", run_agent_args()).await?;
        check_report(&v)
    }
}

/// The JSON-RPC message answering request `id`: the body as JSON, or the `data:` of the SSE
/// event carrying it (a stream may start with a priming event without data). The body is
/// read to its end, so the connection is reused.
async fn jsonrpc_answer(r: reqwest::Response, id: u64) -> Result<Value, String> {
    let status = r.status();
    let sse = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let text = r.text().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", clip(&text)));
    }
    if !sse {
        return serde_json::from_str(&text).map_err(|e| format!("JSON body: {e}: {}", clip(&text)));
    }
    for event in text.split("\n\n") {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.iter().all(|d| d.is_empty()) {
            continue;
        }
        let v: Value = serde_json::from_str(&data.join("\n"))
            .map_err(|e| format!("SSE data: {e}: {}", clip(event)))?;
        if v["id"] == id {
            return Ok(v);
        }
    }
    Err(format!(
        "no answer to request {id} in the SSE stream: {}",
        clip(&text)
    ))
}

// ---------------------------------------------------------------------------------------------
// 1. latency
// ---------------------------------------------------------------------------------------------

const PATHS: [&str; 4] = [
    "in-process AgentHost::run (baseline)",
    "Server::call run_agent (no HTTP)",
    "JSON API POST /v1/tools/run_agent",
    "MCP Streamable HTTP tools/call run_agent",
];

async fn latency_section(b: &Bench) -> anyhow::Result<()> {
    println!();
    println!("== 1. latency of run_agent(hello), one request at a time, four paths interleaved ==");
    println!("  loadavg at start: {}", loadavg());
    let caller = b.caller(&b.tokens[0]);
    let api = ApiClient::new(&b.base, &b.tokens[0])?;
    let mut mcp = McpClient::connect(&b.base, &b.tokens[0]).await?;
    let mut samples: [Vec<Duration>; 4] = Default::default();
    let mut failures = [0usize; 4];
    let mut first_failure: [Option<String>; 4] = Default::default();
    for i in 0..LAT_WARMUP + LAT_ITERATIONS {
        let mut took = [Duration::ZERO; 4];
        // A rotating order, so that no path always follows the same one.
        for k in 0..4 {
            let path = (i + k) % 4;
            let t = Instant::now();
            let r = match path {
                0 => in_process(b).await,
                1 => server_call(b, &caller).await,
                2 => api.run_agent().await,
                _ => mcp.run_agent().await,
            };
            took[path] = t.elapsed();
            if let Err(e) = r {
                failures[path] += 1;
                first_failure[path].get_or_insert(e);
            }
        }
        if i >= LAT_WARMUP {
            for (s, t) in samples.iter_mut().zip(took) {
                s.push(t);
            }
        }
    }
    println!(
        "  {LAT_ITERATIONS} iterations after {LAT_WARMUP} warm-up ones; each runs every path once \
         (one client, one keep-alive HTTP/1.1 connection per HTTP path, one MCP session)"
    );
    // Per-iteration differences against the in-process run of the same iteration: a slow
    // spell of the machine hits all four alike.
    let diffs: Vec<Vec<f64>> = (1..4)
        .map(|p| {
            samples[p]
                .iter()
                .zip(&samples[0])
                .map(|(x, base)| us(*x) - us(*base))
                .collect()
        })
        .collect();
    let stats: Vec<Stats> = samples.iter_mut().map(|s| stats(s)).collect();
    println!(
        "  {:<42} {:>10} {:>10} {:>10} {:>9} {:>12} {:>12} {:>8}",
        "path",
        "median µs",
        "p99 µs",
        "mean µs",
        "failures",
        "added µs (a)",
        "added µs (b)",
        "ratio"
    );
    for p in 0..4 {
        let s = &stats[p];
        let (added_a, added_b, ratio) = if p == 0 {
            ("-".to_string(), "-".to_string(), "1.00".to_string())
        } else {
            (
                format!("{:.0}", us(s.median) - us(stats[0].median)),
                format!("{:.0}", median(diffs[p - 1].clone())),
                format!("{:.2}", us(s.median) / us(stats[0].median)),
            )
        };
        println!(
            "  {:<42} {:>10.0} {:>10.0} {:>10.0} {:>9} {:>12} {:>12} {:>8}",
            PATHS[p],
            us(s.median),
            us(s.p99),
            us(s.mean),
            failures[p],
            added_a,
            added_b,
            ratio
        );
    }
    println!(
        "  added (a): median(path) − median(in-process); added (b): median over iterations of \
         (path − in-process of the same iteration); ratio: median(path) / median(in-process)"
    );
    println!(
        "  added latency per request over HTTP: MCP {:.0} µs, JSON API {:.0} µs (difference of medians); \
         of which the server's operation without HTTP: {:.0} µs",
        us(stats[3].median) - us(stats[0].median),
        us(stats[2].median) - us(stats[0].median),
        us(stats[1].median) - us(stats[0].median),
    );
    for p in 0..4 {
        if let Some(e) = &first_failure[p] {
            println!("  first failure of {}: {e}", PATHS[p]);
        }
    }
    Ok(())
}

struct Stats {
    median: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(samples: &mut [Duration]) -> Stats {
    samples.sort_unstable();
    let n = samples.len();
    Stats {
        median: samples[n / 2],
        p99: samples[(n * 99 / 100).min(n - 1)],
        mean: samples.iter().sum::<Duration>() / n as u32,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------------------------
// 2. throughput
// ---------------------------------------------------------------------------------------------

/// What one client did: calls completed inside the measured window, failures over the whole
/// run (run-in included), latencies of the calls inside the window.
#[derive(Default)]
struct ClientResult {
    counted: u64,
    failures: u64,
    first_failure: Option<String>,
    latencies: Vec<Duration>,
}

/// One concurrent client of path `path` (0..4, as [`PATHS`]): sets up (connection, MCP
/// session), waits for the start, then calls `run_agent(hello)` back to back until `end`.
async fn client_loop(
    b: Arc<Bench>,
    path: usize,
    i: usize,
    ready: Arc<tokio::sync::Barrier>,
    window: Arc<tokio::sync::OnceCell<(Instant, Instant)>>,
) -> anyhow::Result<ClientResult> {
    let token = b.tokens[1 + i].clone();
    let caller = b.caller(&token);
    let setup = async {
        let api = ApiClient::new(&b.base, &token)?;
        let mcp = if path == 3 {
            Some(McpClient::connect(&b.base, &token).await?)
        } else {
            None
        };
        anyhow::Ok((api, mcp))
    }
    .await;
    // Every client reaches the barrier, also one whose setup failed (its error is returned
    // after it), so the start never waits forever.
    ready.wait().await;
    let (api, mut mcp) = setup?;
    let (from, end) = *window.get().expect("the window is set before the start");
    let mut out = ClientResult::default();
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        let r = match (path, &mut mcp) {
            (0, _) => in_process(&b).await,
            (1, _) => server_call(&b, &caller).await,
            (2, _) => api.run_agent().await,
            (_, Some(m)) => m.run_agent().await,
            (_, None) => unreachable!("an MCP client has a session"),
        };
        let done = Instant::now();
        match r {
            Ok(()) => {
                if done >= from && done < end {
                    out.counted += 1;
                    out.latencies.push(done - t);
                }
            }
            Err(e) => {
                out.failures += 1;
                out.first_failure.get_or_insert(e);
            }
        }
    }
    Ok(out)
}

struct Throughput {
    per_sec: f64,
    calls: u64,
    failures: u64,
    first_failure: Option<String>,
    lat: Stats,
    cpu: CpuWindow,
}

async fn throughput(b: &Arc<Bench>, path: usize, window: Duration) -> anyhow::Result<Throughput> {
    let ready = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let cell = Arc::new(tokio::sync::OnceCell::new());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        tasks.spawn(client_loop(b.clone(), path, i, ready.clone(), cell.clone()));
    }
    let start = Instant::now();
    let (from, end) = (start + WARM, start + WARM + window);
    cell.set((from, end)).expect("set once");
    ready.wait().await;
    tokio::time::sleep_until(from.into()).await;
    let before = CpuSnapshot::take();
    tokio::time::sleep_until(end.into()).await;
    let after = CpuSnapshot::take();
    let mut calls = 0;
    let mut failures = 0;
    let mut first_failure = None;
    let mut lats = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r??;
        calls += r.counted;
        failures += r.failures;
        if first_failure.is_none() {
            first_failure = r.first_failure;
        }
        lats.extend(r.latencies);
    }
    if lats.is_empty() {
        lats.push(Duration::ZERO);
    }
    Ok(Throughput {
        per_sec: calls as f64 / window.as_secs_f64(),
        calls,
        failures,
        first_failure,
        lat: stats(&mut lats),
        cpu: before.until(&after),
    })
}

async fn throughput_section(b: &Arc<Bench>, window: Duration) -> anyhow::Result<()> {
    println!();
    println!(
        "== 2. throughput: {CLIENTS} concurrent clients calling run_agent(hello) back to back, {} s per path ==",
        window.as_secs()
    );
    println!("  loadavg at start: {}", loadavg());
    println!(
        "  each path: {CLIENTS} clients (tasks), each its own bearer token, HTTP connection and MCP \
         session; {} s run-in, then the window; calls completing inside the window are counted, \
         failures over the whole run (any non-success)",
        WARM.as_secs()
    );
    let mut results = Vec::new();
    for (p, name) in PATHS.iter().enumerate() {
        let r = throughput(b, p, window).await?;
        println!(
            "  done: {name}: {:.0} calls/s, {} failures (loadavg {})",
            r.per_sec,
            r.failures,
            loadavg()
        );
        results.push(r);
    }
    println!();
    println!(
        "  {:<42} {:>9} {:>9} {:>9} {:>10} {:>9} {:>8} {:>8} {:>11} {:>12} {:>8}",
        "path",
        "calls/s",
        "calls",
        "failures",
        "median µs",
        "p99 µs",
        "proc CPU",
        "others",
        "CPU µs/call",
        "est. calls/s",
        "vs base"
    );
    for (p, r) in results.iter().enumerate() {
        println!(
            "  {:<42} {:>9.0} {:>9} {:>9} {:>10.0} {:>9.0} {:>7.0}% {:>7.0}% {:>11.0} {:>12.0} {:>8.2}",
            PATHS[p],
            r.per_sec,
            r.calls,
            r.failures,
            us(r.lat.median),
            us(r.lat.p99),
            r.cpu.process_pct,
            (r.cpu.machine_pct - r.cpu.process_pct).max(0.0),
            cpu_per_call_us(r),
            cores() as f64 * 1e6 / cpu_per_call_us(r),
            r.per_sec / results[0].per_sec,
        );
    }
    println!(
        "  proc CPU: this process's CPU time over the window (100% = one core; server and clients \
         alike); others: every other process on the machine over the same window (its busy time \
         less this process's); CPU µs/call: proc CPU time / calls; est. calls/s: {} cores / CPU \
         µs per call, what the path would reach with every core to itself if it stays CPU-bound \
         (an estimate, not a measurement); vs base: calls/s over the in-process path's",
        cores()
    );
    let tools = tools_cost();
    println!(
        "  qi_host::serve::tools::tools() (every tool's JSON Schema, built by schemars \
         once per process, then a shared slice; list_tools and call_tool read it): {:.1} µs \
         per call after the first, single task, in this run: {:.1}% of MCP's CPU per call",
        us(tools),
        us(tools) / cpu_per_call_us(&results[3]) * 100.0
    );
    let mcp = &results[3];
    println!(
        "  CPU per call: MCP {:.0} µs more than the JSON API ({:.0} vs {:.0}); the JSON API {:.0} µs \
         more than Server::call; Server::call {:.0} µs more than in-process",
        cpu_per_call_us(mcp) - cpu_per_call_us(&results[2]),
        cpu_per_call_us(mcp),
        cpu_per_call_us(&results[2]),
        cpu_per_call_us(&results[2]) - cpu_per_call_us(&results[1]),
        cpu_per_call_us(&results[1]) - cpu_per_call_us(&results[0]),
    );
    println!(
        "  MCP run_agent: {:.0} calls/s with {CLIENTS} clients, {} failures; target {TARGET_PER_SEC:.0} \
         calls/s: ratio {:.2} ({})",
        mcp.per_sec,
        mcp.failures,
        mcp.per_sec / TARGET_PER_SEC,
        if mcp.per_sec >= TARGET_PER_SEC && mcp.failures == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  JSON API run_agent: {:.0} calls/s, {} failures; ratio to target {:.2}",
        results[2].per_sec,
        results[2].failures,
        results[2].per_sec / TARGET_PER_SEC
    );
    for (p, r) in results.iter().enumerate() {
        if let Some(e) = &r.first_failure {
            println!("  first failure of {}: {e}", PATHS[p]);
        }
    }
    println!("  CPU by thread name over each window (this process, % of one core):");
    for (p, r) in results.iter().enumerate() {
        println!("    {}: {}", PATHS[p], r.cpu.threads);
    }
    Ok(())
}

/// This process's CPU time per call counted in the window, µs.
fn cpu_per_call_us(r: &Throughput) -> f64 {
    r.cpu.process_cpu_s * 1e6 / r.calls.max(1) as f64
}

/// Mean time of one `qi_host::serve::tools::tools()` (after a warm-up).
fn tools_cost() -> Duration {
    const N: u32 = 2_000;
    for _ in 0..100 {
        std::hint::black_box(qi_host::serve::tools::tools());
    }
    let t = Instant::now();
    for _ in 0..N {
        std::hint::black_box(qi_host::serve::tools::tools());
    }
    t.elapsed() / N
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc (Linux; USER_HZ is 100 ticks per second there)
// ---------------------------------------------------------------------------------------------

const TICKS_PER_SEC: f64 = 100.0;

struct CpuSnapshot {
    at: Instant,
    /// busy and total ticks of the whole machine (`/proc/stat`).
    machine: (u64, u64),
    /// utime + stime ticks of this process (`/proc/self/stat`: threads that ended included).
    process: u64,
    /// tid → (thread name, utime + stime ticks).
    threads: HashMap<String, (String, u64)>,
}

struct CpuWindow {
    process_cpu_s: f64,
    process_pct: f64,
    machine_pct: f64,
    /// The busiest thread names, `name N%`.
    threads: String,
}

impl CpuSnapshot {
    fn take() -> CpuSnapshot {
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_string();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: u64 = v.iter().take(8).sum();
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                Some((total - idle, total))
            })
            .unwrap_or((0, 0));
        let process = std::fs::read_to_string("/proc/self/stat")
            .map(|s| cpu_ticks(&s).1)
            .unwrap_or(0);
        let mut threads = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for e in dir.flatten() {
                let tid = e.file_name().to_string_lossy().into_owned();
                let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                threads.insert(tid, cpu_ticks(&stat));
            }
        }
        CpuSnapshot {
            at: Instant::now(),
            machine,
            process,
            threads,
        }
    }

    fn until(&self, after: &CpuSnapshot) -> CpuWindow {
        let secs = (after.at - self.at).as_secs_f64();
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        for (tid, (name, ticks)) in &after.threads {
            let before = self.threads.get(tid).map_or(0, |(_, t)| *t);
            *by_name.entry(name.as_str()).or_default() += ticks.saturating_sub(before);
        }
        let process_cpu_s = after.process.saturating_sub(self.process) as f64 / TICKS_PER_SEC;
        let (busy, all) = (
            after.machine.0.saturating_sub(self.machine.0),
            after.machine.1.saturating_sub(self.machine.1),
        );
        let machine_pct = if all == 0 {
            0.0
        } else {
            busy as f64 / all as f64 * cores() as f64 * 100.0
        };
        let mut names: Vec<(&str, u64)> = by_name.into_iter().filter(|(_, t)| *t > 0).collect();
        names.sort_by_key(|n| std::cmp::Reverse(n.1));
        let threads = names
            .iter()
            .take(6)
            .map(|(n, t)| format!("{n} {:.0}%", *t as f64 / TICKS_PER_SEC / secs * 100.0))
            .collect::<Vec<_>>()
            .join(", ");
        CpuWindow {
            process_cpu_s,
            process_pct: process_cpu_s / secs * 100.0,
            machine_pct,
            threads,
        }
    }
}

/// The name and utime + stime ticks in a `/proc/.../stat` line (`pid (comm) state ...`; comm
/// may hold spaces and parentheses; after it, state is field 3, utime 14, stime 15).
fn cpu_ticks(stat: &str) -> (String, u64) {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return (String::new(), 0);
    };
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize| rest.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (stat[open + 1..close].to_string(), field(11) + field(12))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn nproc() -> String {
    let available = cores();
    match std::process::Command::new("nproc").output() {
        Ok(out) if out.status.success() => format!(
            "{} (available_parallelism {available})",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        _ => format!("{available} (available_parallelism; `nproc` did not run)"),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
