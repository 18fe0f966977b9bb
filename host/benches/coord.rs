//! Coordination benchmarks, each a comparison measured within one run:
//!
//! 1. `overhead`: a chain of 100 subtasks of CPU-bound `worker` work (each takes the previous
//!    one's output as input) run by the coordinator with the `sequential` strategy on a durable
//!    SQLite data directory (what `qi-host run` does), against the same 100 guest calls made
//!    back to back by a minimal loop (`AgentHost::run`) in the same process. Prints both wall
//!    times and the overhead ratio; three rounds, alternating, median reported.
//! 2. `barrier`: 1,000 `worker` agents meet at one `all-complete` barrier; prints the time from
//!    the resolution (the last arrival) until the last participant is released, and the run's
//!    wall time; three rounds.
//!
//! 3. `plan`: a generated manifest of 1,000 subtasks (10 waves of 100, each subtask after two of
//!    the previous wave, a barrier per wave) through what `qi-host plan` and `run` do before a
//!    run starts (parse, check, load and describe the agents, plan, deadlock check; the seed's
//!    target is under 1 s), median of three; the process's resident memory before and after
//!    (what planning keeps); then one run of it (empty steps, 8 at once) with the growth of the
//!    peak resident memory over the run (the seed's target for coordination memory is under
//!    100 MB; agents' own linear memory is included, so this is an upper bound). It runs first,
//!    since its memory figures are the whole process's.
//!
//! `cargo bench -p qi-host --bench coord [-- overhead|barrier|plan] [WORK]` (WORK: xorshift rounds
//! per subtask, default 4,000,000). Prints figures only; nothing here asserts on timing.

#![allow(missing_docs)]

use qi_guest_artifacts::WORKER_COMPONENT;
use qi_host::context::{ContextConfig, ContextService, SystemClock};
use qi_host::coord::{self, RunOptions};
use qi_host::{
    AgentHost, EventBus, EventBusConfig, HostConfig, Store, StoreConfig, SubAgentSpecification,
    TaskRequest,
};
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn host(dir: &Path, max_live: u32) -> Arc<AgentHost> {
    let store = Store::open(StoreConfig::at(dir)).expect("store opens");
    let bus = EventBus::new(store.clone(), EventBusConfig::default())
        .await
        .expect("bus");
    let svc = ContextService::open(store, bus, Arc::new(SystemClock), ContextConfig::default())
        .await
        .expect("context");
    Arc::new(
        AgentHost::new(HostConfig {
            max_live_agents: max_live,
            ..HostConfig::default()
        })
        .expect("host")
        .with_context(svc),
    )
}

fn guest_dir() -> &'static Path {
    Path::new(WORKER_COMPONENT).parent().expect("guest dir")
}

const SPEC: &str = "spec = { fuel = 20_000_000_000, resourceLimits = { maxMemoryMB = 16, maxExecutionTimeMs = 600000 } }";

fn chain_manifest(n: usize, work: u64) -> String {
    let mut t = format!(
        "[task]\nid = \"chain\"\n[strategy]\ntype = \"sequential\"\nfailureHandling = \"fail-fast\"\n[agents.worker]\ncomponent = \"guest:worker\"\n{SPEC}\n"
    );
    for i in 0..n {
        let _ = write!(
            t,
            "\n[[subtasks]]\nid = \"s{i}\"\noutputs = [\"subtask\"]\ninputs = [{{ name = \"steps\", value = [{{ work = {work} }}] }}"
        );
        if i > 0 {
            let _ = write!(t, ", {{ name = \"prev\", from = \"s{}.subtask\" }}", i - 1);
        }
        t.push_str("]\n");
    }
    t
}

async fn coordinated(host: &Arc<AgentHost>, toml: &str) -> (Duration, coord::RunReport) {
    let path = Path::new("bench.toml");
    let manifest = coord::Manifest::parse(toml, path).expect("manifest");
    let prepared = coord::prepare_parsed(host, manifest, toml, path, Some(guest_dir()))
        .await
        .expect("prepare");
    let t = Instant::now();
    let r = prepared
        .run(host.clone(), RunOptions::default())
        .await
        .expect("run");
    assert!(r.success, "{:?}", r.error);
    (t.elapsed(), r)
}

/// The baseline: the same calls back to back, in a task on the runtime's worker threads (where
/// the coordinator's agents run too).
async fn bare_loop(host: &Arc<AgentHost>, n: usize, work: u64) -> Duration {
    let host = host.clone();
    tokio::spawn(async move { bare_loop_inner(&host, n, work).await })
        .await
        .expect("bare loop")
}

async fn bare_loop_inner(host: &Arc<AgentHost>, n: usize, work: u64) -> Duration {
    let component = host.load(WORKER_COMPONENT).expect("load");
    let mut spec = SubAgentSpecification {
        fuel: 20_000_000_000,
        ..Default::default()
    };
    spec.resource_limits.max_memory_mb = 16;
    spec.resource_limits.max_execution_time_ms = 600_000;
    let t = Instant::now();
    let mut prev = serde_json::Value::Null;
    for i in 0..n {
        let input = json!({"subtask": format!("s{i}"), "attempt": 1, "inputs": {"steps": [{"work": work}], "prev": prev}, "config": null});
        let r = host
            .run(&component, spec.clone(), TaskRequest::new("work", input))
            .await
            .expect("spawn");
        prev = r.into_result().expect("runs")["subtask"].clone();
    }
    t.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn overhead(work: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(dir.path(), 64).await;
    let n = 100;
    let toml = chain_manifest(n, work);
    // Warm up: compile and cache the component, touch the store.
    let _ = coordinated(&host, &chain_manifest(2, 1000)).await;
    let _ = bare_loop(&host, 2, 1000).await;
    let (mut coords, mut bares, mut overheads) = (Vec::new(), Vec::new(), Vec::new());
    println!("overhead: chain of {n} subtasks, {work} xorshift rounds each");
    let mut mains = Vec::new();
    for round in 1..=3 {
        let bare = bare_loop(&host, n, work).await.as_secs_f64() * 1000.0;
        let main_thread = bare_loop_inner(&host, n, work).await.as_secs_f64() * 1000.0;
        let (c, r) = coordinated(&host, &toml).await;
        let c = c.as_secs_f64() * 1000.0;
        let ratio = c / bare;
        mains.push(c / main_thread);
        println!(
            "  round {round}: bare loop on the block_on thread instead: {main_thread:.1} ms (ratio {:.4})",
            c / main_thread
        );
        let in_agents: u64 = r
            .results
            .iter()
            .flat_map(|s| &s.attempts)
            .map(|a| a.duration_ms)
            .sum();
        println!(
            "  round {round}: qi-host run {c:.1} ms, bare loop {bare:.1} ms, ratio {ratio:.4}; attempts (spawn to report) {in_agents} ms; coordinator's context time {:.1} ms over {} messages",
            r.metrics.communication_overhead, r.metrics.communication_events
        );
        coords.push(c);
        bares.push(bare);
        overheads.push(ratio);
    }
    let (c, b) = (median(coords), median(bares));
    println!(
        "overhead: median qi-host run {c:.1} ms vs bare loop {b:.1} ms: ratio {:.4} ({:+.2}% overhead; target <= 5%); {:.2} ms per subtask",
        median(overheads.clone()),
        (median(overheads) - 1.0) * 100.0,
        (c - b) / n as f64
    );
    println!(
        "overhead: against a bare loop on the block_on thread (not a runtime worker): median ratio {:.4}",
        median(mains)
    );
}

async fn barrier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 1000;
    let host = host(dir.path(), n as u32 + 16).await;
    let names: Vec<String> = (0..n).map(|i| format!("\"p{i}\"")).collect();
    let mut toml = format!(
        "[task]\nid = \"barrier\"\n[strategy]\ntype = \"hybrid\"\nmaxConcurrentAgents = 8\nfailureHandling = \"fail-fast\"\nstallWindowMs = 600000\n[[strategy.synchronizationPoints]]\nid = \"b\"\ntype = \"barrier\"\nparticipants = [{}]\n[resources]\nmaxTotalMemoryMB = 1000000\nmaxConcurrentAllocations = 2000\n[agents.worker]\ncomponent = \"guest:worker\"\nspec = {{ fuel = 1_000_000_000, resourceLimits = {{ maxMemoryMB = 2, maxExecutionTimeMs = 600000 }} }}\n",
        names.join(", ")
    );
    for i in 0..n {
        let _ = write!(
            toml,
            "\n[[subtasks]]\nid = \"p{i}\"\ninputs = [{{ name = \"steps\", value = [{{ barrier = \"b\" }}] }}]\n"
        );
    }
    println!("barrier: {n} agents at one all-complete barrier");
    let mut spans = Vec::new();
    for round in 1..=3 {
        let (wall, r) = coordinated(&host, &toml).await;
        let o = &r.synchronization["b"];
        let us = o["allReleasedUs"].as_u64().expect("release span measured");
        println!(
            "  round {round}: last arrival -> all {n} released {:.2} ms; run wall {:.0} ms; peak computing agents {}",
            us as f64 / 1000.0,
            wall.as_secs_f64() * 1000.0,
            r.metrics.peak_concurrency
        );
        assert_eq!(o["arrived"].as_array().map(Vec::len), Some(n));
        spans.push(us as f64 / 1000.0);
    }
    println!(
        "barrier: median last arrival -> all released {:.2} ms (on 2 cores this includes each released agent finishing its run before the next is resumed)",
        median(spans)
    );

    // The sync engine alone: 1,000 tokio tasks instead of agents.
    let mut engine_spans = Vec::new();
    for _ in 0..3 {
        let def = qi_host::coord::sync::SyncPointDef {
            id: "b".into(),
            point_type: qi_host::coord::sync::SyncPointType::Barrier,
            description: String::new(),
            participants: (0..n).map(|i| format!("p{i}")).collect(),
            condition: qi_host::coord::sync::SyncCondition::AllComplete,
            timeout_ms: None,
            on_timeout: qi_host::coord::sync::OnTimeout::Wait,
            reducer: None,
            max_result_bytes: qi_host::coord::sync::DEFAULT_MAX_RESULT_BYTES,
        };
        let engine = qi_host::coord::sync::SyncEngine::new(&[def], None, None);
        let mut tasks = Vec::new();
        for i in 0..n - 1 {
            let e = engine.clone();
            tasks.push(tokio::spawn(async move {
                e.arrive(
                    "b",
                    &format!("p{i}"),
                    qi_host::coord::sync::SyncPointType::Barrier,
                    serde_json::Value::Null,
                )
                .await
                .expect("released");
                Instant::now()
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let last = Instant::now();
        engine
            .arrive(
                "b",
                &format!("p{}", n - 1),
                qi_host::coord::sync::SyncPointType::Barrier,
                serde_json::Value::Null,
            )
            .await
            .expect("released");
        let mut latest = last;
        for t in tasks {
            latest = latest.max(t.await.expect("task"));
        }
        engine_spans.push(latest.duration_since(last).as_secs_f64() * 1000.0);
    }
    println!(
        "barrier: sync engine alone, {n} waiting tasks: last arrival -> all released, median {:.3} ms",
        median(engine_spans)
    );
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn wide_manifest(waves: usize, width: usize) -> String {
    let mut t = String::from(
        "[task]\nid = \"wide\"\n[strategy]\ntype = \"hybrid\"\nmaxConcurrentAgents = 8\nfailureHandling = \"fail-fast\"\n[resources]\nmaxTotalMemoryMB = 1000000\nmaxConcurrentAllocations = 2000\n[agents.worker]\ncomponent = \"guest:worker\"\nspec = { fuel = 1_000_000_000, resourceLimits = { maxMemoryMB = 2, maxExecutionTimeMs = 600000 } }\n",
    );
    for w in 0..waves {
        let names: Vec<String> = (0..width).map(|i| format!("\"s{w}_{i}\"")).collect();
        let _ = write!(
            t,
            "\n[[strategy.synchronizationPoints]]\nid = \"wave{w}\"\ntype = \"barrier\"\nparticipants = [{}]\n",
            names.join(", ")
        );
    }
    for w in 0..waves {
        for i in 0..width {
            let deps = if w == 0 {
                String::new()
            } else {
                format!(
                    "dependsOn = [\"s{}_{i}\", \"s{}_{}\"]\n",
                    w - 1,
                    w - 1,
                    (i + 1) % width
                )
            };
            let _ = write!(
                t,
                "\n[[subtasks]]\nid = \"s{w}_{i}\"\n{deps}inputs = [{{ name = \"steps\", value = [{{ barrier = \"wave{w}\" }}] }}]\n"
            );
        }
    }
    t
}

async fn plan_section() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(dir.path(), 2000).await;
    let toml = wide_manifest(10, 100);
    let path = Path::new("wide.toml");
    println!(
        "plan: {} subtasks, {} sync points, manifest {} KiB; measured path: coord::prepare_parsed (parse, check, agents, plan, deadlock check)",
        1000,
        10,
        toml.len() / 1024
    );
    // Warm the component cache and the engine first.
    let manifest = coord::Manifest::parse(&toml, path).expect("parses");
    let mut prepared = coord::prepare_parsed(&host, manifest, &toml, path, Some(guest_dir()))
        .await
        .expect("plans");
    let mut times = Vec::new();
    let (rss_before, _) = memory_kib();
    for _ in 0..3 {
        let started = Instant::now();
        let manifest = coord::Manifest::parse(&toml, path).expect("parses");
        prepared = coord::prepare_parsed(&host, manifest, &toml, path, Some(guest_dir()))
            .await
            .expect("plans");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (rss_after, hwm_before_run) = memory_kib();
    println!(
        "plan: median {:.1} ms to validate and plan (target < 1000 ms: {:.3}x of it); resident memory {} KiB before, {} KiB after",
        median(times.clone()),
        median(times) / 1000.0,
        rss_before,
        rss_after
    );
    let started = Instant::now();
    let r = prepared
        .run(host.clone(), RunOptions::default())
        .await
        .expect("runs");
    let wall = started.elapsed();
    assert!(r.success, "{:?}", r.error);
    let (_, hwm_after_run) = memory_kib();
    println!(
        "plan: the run took {:.0} ms; peak resident memory grew {:.1} MiB over it (target < 100 MB of coordination memory: {:.3}x; includes the agents' own memory)",
        wall.as_secs_f64() * 1000.0,
        hwm_after_run.saturating_sub(hwm_before_run) as f64 / 1024.0,
        hwm_after_run.saturating_sub(hwm_before_run) as f64 * 1024.0 / 100e6
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| {
        let sections: Vec<&String> = args.iter().filter(|a| a.parse::<u64>().is_err()).collect();
        sections.is_empty() || sections.iter().any(|a| *a == s)
    };
    let work = args
        .iter()
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(4_000_000);
    match std::env::var("RUST_BACKTRACE") {
        Ok(v) => println!("RUST_BACKTRACE: set, {v:?}"),
        Err(_) => println!("RUST_BACKTRACE: not set"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // First: its memory figures are the process's, so nothing may run before it.
        if want("plan") {
            plan_section().await;
        }
        if want("overhead") {
            overhead(work).await;
        }
        if want("barrier") {
            barrier().await;
        }
    });
}
