//! What the model broker adds to a model call, and how it holds up under many agents.
//!
//! The path measured is the one agents take: the `llm-agent` guest calls `qi:agent/llm` `chat`
//! (through `qi-guest-sdk`), the host checks the request, grants, gate and budgets, sends it
//! with reqwest to an OpenAI-compatible server and records the answer, then hands it back.
//! The server is `qi-llm-test-server` on loopback (echo answers, no model), so the figures are
//! the broker's own cost, not a model's.
//!
//! 1. Latency: per call, an agent making N calls minus an agent making none (instantiation
//!    and the rest of its run cancel out), against a direct reqwest call of the same body to
//!    the same server from host code (one client, connection reused). Recordings in memory
//!    (as `qi-host run-agent` without `--data-dir`) and durable in SQLite (as `qi-host run`).
//!    Prints ns per call, the ratio and the added µs (targets: ≤ 1.1× or ≤ 100 µs added).
//!    7 rounds alternating; medians.
//! 2. Load: 200 agents at once, each making 10 calls (2,000 calls), durable recordings:
//!    failures (must be 0), wall time, calls per second, and the process's RSS (VmRSS now,
//!    VmHWM peak).
//!
//! `cargo bench -p qi-host --bench llm [-- N]` (default N 200). Prints figures only; nothing
//! here asserts on timing.

#![allow(missing_docs)]

use qi_guest_artifacts::LLM_AGENT_COMPONENT;
use qi_host::llm::{LlmBroker, LlmConfig, Mode, Recordings};
use qi_host::{AgentHost, HostConfig, Store, StoreConfig, SubAgentSpecification, TaskRequest};
use qi_llm_test_server::TestServer;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

const KEY: &str = "sk-bench";
const MODEL: &str = "local/bench-model";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn config(server: &TestServer, concurrency: u32) -> LlmConfig {
    let text = format!(
        "[providers.local]\nkind = \"openai\"\nbaseUrl = \"{}\"\napiKeyFile = \"{}\"\nmaxConcurrentRequests = {concurrency}\n",
        server.base_url(),
        key_file().display()
    );
    toml::from_str(&text).expect("config")
}

fn key_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("qi-bench-llm-key-{}", std::process::id()));
    std::fs::write(&path, KEY).expect("key file");
    path
}

fn spec() -> SubAgentSpecification {
    let mut spec = SubAgentSpecification::default();
    spec.security_constraints.allowed_models = vec!["local/*".into()];
    spec.resource_limits.max_llm_calls = 1_000;
    spec.resource_limits.max_execution_time_ms = 600_000;
    spec
}

fn calls(n: usize) -> Value {
    let calls: Vec<Value> = (0..n)
        .map(|_| json!({"model": MODEL, "prompt": "review this diff", "maxTokens": 16}))
        .collect();
    json!({"calls": calls, "stop_on_error": true})
}

async fn agent_run(host: &AgentHost, n: usize) -> (f64, Value) {
    let component = host.load(LLM_AGENT_COMPONENT).expect("load");
    let t = Instant::now();
    let report = host
        .run(&component, spec(), TaskRequest::new("bench", calls(n)))
        .await
        .expect("spawn");
    let elapsed = t.elapsed().as_nanos() as f64;
    let out = report.output.expect("the agent runs");
    (elapsed, out)
}

async fn brokered_ns(host: &AgentHost, n: usize) -> f64 {
    let (with, out) = agent_run(host, n).await;
    let ok = out["results"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["ok"] == true).count());
    assert_eq!(ok, n, "{out}");
    let (without, _) = agent_run(host, 0).await;
    (with - without) / n as f64
}

async fn direct_ns(server: &TestServer, n: usize) -> f64 {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.base_url());
    let body = serde_json::to_vec(&json!({
        "model": "bench-model",
        "messages": [{"role": "user", "content": "review this diff"}],
        "max_tokens": 16,
    }))
    .unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let resp = client
            .post(&url)
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("send");
        assert!(resp.status().is_success());
        let v: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
        assert!(v["choices"][0]["message"]["content"].is_string());
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn host_with(broker: LlmBroker, max_live: u32) -> AgentHost {
    AgentHost::new(HostConfig {
        max_live_agents: max_live,
        ..HostConfig::default()
    })
    .expect("host")
    .with_llm(Arc::new(broker))
}

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len()..].trim().to_string())
        })
        .unwrap_or_else(|| "n/a".into())
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    match std::env::var("RUST_BACKTRACE") {
        Ok(v) => println!("RUST_BACKTRACE: set, {v:?}"),
        Err(_) => println!("RUST_BACKTRACE: not set"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = TestServer::start(KEY).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::at(dir.path())).expect("store");
        let memory = host_with(
            LlmBroker::new(config(&server, 16), Recordings::in_memory(), Mode::Live).unwrap(),
            16,
        );
        let durable = host_with(
            LlmBroker::new(
                config(&server, 64),
                Recordings::durable(store.clone(), None),
                Mode::Live,
            )
            .unwrap(),
            1_000,
        );
        // Warm up: compile the component, open connections.
        direct_ns(&server, 20).await;
        brokered_ns(&memory, 5).await;
        brokered_ns(&durable, 5).await;
        let (mut d, mut m, mut s) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            d.push(direct_ns(&server, n).await);
            m.push(brokered_ns(&memory, n).await);
            s.push(brokered_ns(&durable, n).await);
        }
        let (d, m, s) = (median(d), median(m), median(s));
        println!("\nlatency per call, {n} calls per agent, median of 7 rounds");
        println!("  direct reqwest call            {:>10.1} µs", d / 1000.0);
        for (what, v) in [
            ("brokered, recordings in memory", m),
            ("brokered, recordings in SQLite", s),
        ] {
            println!(
                "  {what} {:>10.1} µs  ratio {:.3}×  added {:.1} µs",
                v / 1000.0,
                v / d,
                (v - d) / 1000.0
            );
        }

        println!("\nload: 200 agents × 10 calls at once (recordings in SQLite)");
        let component = durable.load(LLM_AGENT_COMPONENT).expect("load");
        let durable = Arc::new(durable);
        let before = server.request_count();
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let host = durable.clone();
            let component = component.clone();
            set.spawn(async move {
                let r = host
                    .run(&component, spec(), TaskRequest::new("load", calls(10)))
                    .await;
                match r {
                    Ok(report) => report.output.map_or(10, |out| {
                        out["results"]
                            .as_array()
                            .map_or(10, |r| 10 - r.iter().filter(|r| r["ok"] == true).count())
                    }),
                    Err(_) => 10,
                }
            });
        }
        let mut failures = 0;
        while let Some(j) = set.join_next().await {
            failures += j.unwrap_or(10);
        }
        let wall = t.elapsed();
        let sent = server.request_count() - before;
        println!(
            "  failures {failures} of 2000; requests the server saw {sent}; wall {:.0} ms; {:.0} calls/s",
            wall.as_secs_f64() * 1000.0,
            2000.0 / wall.as_secs_f64()
        );
        println!(
            "  RSS now {}, peak {}",
            proc_status("VmRSS:"),
            proc_status("VmHWM:")
        );
    });
}
