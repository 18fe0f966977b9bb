//! Runtime benchmarks, each a comparison measured within one run:
//!
//! 1. `spawn`: spawn-to-result of the `hello` guest through qi-host against bare wasmtime
//!    (same engine, so the same pooling and fuel configuration).
//! 2. `fs`: `file-stats` over 500 files through `qi-host run` against bare wasmtime-wasi: the
//!    cost of the counting, gated filesystem per file operation.
//! 3. `pool`: pooling against on-demand instance allocation with 1,000 and 10,000 agents alive
//!    at once, each case in a child process of this binary.
//! 4. `fuel`: fuel-metered against unmetered execution of the `compute` guest.
//! 5. `python`: spawn-to-result of the Python `py-hello` against the Rust `hello`, and how many
//!    Python agents can be alive at once (RSS per live agent), in a child process
//!    ([`python`]).
//!
//! `cargo bench -p qi-host --bench runtime [-- spawn|fs|pool|fuel|python ...]` (default: all).
//! Prints figures only; nothing here asserts on timing.

#![allow(missing_docs)]

use qi_guest_artifacts::{
    COMPUTE_COMPONENT, FILE_STATS_COMPONENT, HELLO_COMPONENT, TOOL_USER_COMPONENT,
};

#[path = "runtime/python.rs"]
mod python;
use qi_host::{
    AgentHost, AllocatorKind, HostConfig, SubAgentSpecification, TaskRequest, Tool, ToolContext,
    ToolFuture, ToolRegistry,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wasmtime::{Config, Engine, Store};

/// Bare wasmtime: the same world, bound without any of qi-host's machinery.
mod bare {
    #![allow(missing_docs)]

    wasmtime::component::bindgen!({
        path: "../wit",
        world: "qi:agent/agent",
        imports: { default: async },
        exports: { default: async },
    });

    use qi::agent::budget::Remaining;
    use qi::agent::log::{Field, Level};
    use qi::agent::tools::{ToolError, ToolRequest};
    use wasmtime::component::types::ComponentItem;
    use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
    use wasmtime::{Engine, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    /// Fuel for bare stores on a fuel-consuming engine: effectively unlimited.
    pub const FUEL: u64 = 1 << 50;
    /// The fuel yield interval qi-host uses by default.
    pub const YIELD_INTERVAL: u64 = 1_000_000;

    pub struct State {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl State {
        pub fn new() -> Self {
            State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            }
        }

        /// WASI with `dir` preopened read-only at `/workspace`, as wasmtime-wasi gives it.
        pub fn with_dir(dir: &std::path::Path) -> wasmtime::Result<Self> {
            let mut b = WasiCtx::builder();
            b.preopened_dir(dir, "/workspace", wasmtime_wasi::FsPerms::ReadOnly)?;
            Ok(State {
                wasi: b.build(),
                table: ResourceTable::new(),
            })
        }
    }

    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl qi::agent::types::Host for State {}

    impl qi::agent::log::Host for State {
        async fn log(&mut self, _level: Level, _message: String, _fields: Vec<Field>) {}
    }

    impl qi::agent::tools::Host for State {
        async fn call(&mut self, name: String, _input: String) -> Result<String, ToolError> {
            Err(ToolError::NotFound(name))
        }

        async fn call_many(
            &mut self,
            requests: Vec<ToolRequest>,
        ) -> Vec<Result<String, ToolError>> {
            requests
                .into_iter()
                .map(|r| Err(ToolError::NotFound(r.name)))
                .collect()
        }

        async fn available(&mut self) -> Vec<String> {
            Vec::new()
        }
    }

    impl qi::agent::budget::Host for State {
        async fn get(&mut self) -> Remaining {
            Remaining {
                fuel: 0,
                time_ms: 0,
                tool_calls: 0,
                file_operations: 0,
                memory_bytes: 0,
            }
        }
    }

    /// WASI 0.2 plus `qi:agent/{types,log,tools,budget}` (no-op implementations).
    pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        qi::agent::types::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        qi::agent::log::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        qi::agent::tools::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        qi::agent::budget::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        Ok(linker)
    }

    /// Compiles `path` on `engine` and pre-instantiates it. `qi:agent` interfaces this harness
    /// does not implement (ones the world gained later) are linked as traps; the benchmarked
    /// guests never call them.
    pub fn pre(engine: &Engine, path: &str) -> wasmtime::Result<AgentPre<State>> {
        let component = Component::from_file(engine, path)?;
        let mut linker = linker(engine)?;
        stub_other_qi_imports(engine, &mut linker, &component)?;
        AgentPre::new(linker.instantiate_pre(&component)?)
    }

    /// Links every function of a `qi:agent` interface other than the four above as a trap.
    /// (`Linker::define_unknown_imports_as_traps` would also shadow the semver-matched WASI
    /// imports, e.g. a guest's `wasi:cli/environment@0.2.6`, with traps.)
    fn stub_other_qi_imports(
        engine: &Engine,
        linker: &mut Linker<State>,
        component: &Component,
    ) -> wasmtime::Result<()> {
        const IMPLEMENTED: [&str; 4] = ["types", "log", "tools", "budget"];
        for (name, item) in component.component_type().imports(engine) {
            let Some(interface) = name.strip_prefix("qi:agent/") else {
                continue;
            };
            let interface = interface.split('@').next().unwrap_or_default();
            let ComponentItem::ComponentInstance(instance) = item.ty else {
                continue;
            };
            if IMPLEMENTED.contains(&interface) {
                continue;
            }
            let mut stub = linker.instance(name)?;
            for (func, ty) in instance.exports(engine) {
                if let ComponentItem::ComponentFunc(_) = ty.ty {
                    let what = format!("{name}#{func}");
                    stub.func_new(func, move |_, _, _, _| {
                        Err(wasmtime::format_err!(
                            "`{what}` is not linked in the bare harness"
                        ))
                    })?;
                }
            }
        }
        Ok(())
    }

    pub fn task(input: &serde_json::Value) -> Task {
        Task {
            id: "bench-task".into(),
            description: "bench task".into(),
            input: input.to_string(),
        }
    }

    /// A fresh Store; with fuel (and qi-host's yield interval) when the engine meters it.
    pub fn store(engine: &Engine, fuel: bool) -> wasmtime::Result<Store<State>> {
        let mut store = Store::new(engine, State::new());
        if fuel {
            store.set_fuel(FUEL)?;
            store.fuel_async_yield_interval(Some(YIELD_INTERVAL))?;
        }
        Ok(store)
    }

    /// Runs `task` in a fresh instance whose WASI preopens `dir` read-only at `/workspace`.
    pub async fn run_with_dir(
        engine: &Engine,
        pre: &AgentPre<State>,
        task: &Task,
        dir: &std::path::Path,
    ) -> wasmtime::Result<String> {
        let mut store = Store::new(engine, State::with_dir(dir)?);
        store.set_fuel(FUEL)?;
        store.fuel_async_yield_interval(Some(YIELD_INTERVAL))?;
        let agent = pre.instantiate_async(&mut store).await?;
        let out = agent.call_run(&mut store, task).await?;
        out.map(|o| o.output)
            .map_err(|e| wasmtime::format_err!("agent failed: {e:?}"))
    }

    /// Instantiates, optionally calls `describe`, then `run`; returns the output text.
    pub async fn run(
        engine: &Engine,
        pre: &AgentPre<State>,
        task: &Task,
        describe: bool,
    ) -> wasmtime::Result<String> {
        let mut store = store(engine, true)?;
        let agent = pre.instantiate_async(&mut store).await?;
        if describe {
            agent.call_describe(&mut store).await?;
        }
        match agent.call_run(&mut store, task).await? {
            Ok(out) => Ok(out.output),
            Err(e) => Err(wasmtime::format_err!("agent error: {e:?}")),
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let case = args.get(i + 1).map(String::as_str).unwrap_or_default();
        return pool_child(case);
    }
    // `cargo bench` appends `--bench`; everything else that is not a flag names a section.
    let mut sections: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    for s in &sections {
        anyhow::ensure!(
            matches!(*s, "spawn" | "fs" | "pool" | "fuel" | "python"),
            "unknown section `{s}`; expected spawn, fs, pool, fuel or python"
        );
    }
    if sections.is_empty() {
        sections = vec!["spawn", "fs", "pool", "fuel", "python"];
    }

    let host = AgentHost::new(HostConfig {
        cache_dir: Some(cache_dir()),
        ..HostConfig::default()
    })?;
    println!("== qi-host runtime benchmarks ==");
    match std::env::var("RUST_BACKTRACE") {
        Ok(v) => println!("RUST_BACKTRACE: set, {v:?}"),
        Err(_) => println!("RUST_BACKTRACE: not set"),
    }
    println!("nproc: {}", nproc());
    println!(
        "allocator (HostConfig::default(), max_live_agents {}): {}",
        host.runtime().config().max_live_agents,
        allocator_name(host.runtime().allocator())
    );
    println!("sections: {}", sections.join(", "));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if sections.contains(&"spawn") {
        rt.block_on(spawn_section(&host))?;
    }
    if sections.contains(&"fs") {
        rt.block_on(fs_section(&host))?;
    }
    if sections.contains(&"python") {
        rt.block_on(python::spawn_section(&host))?;
    }
    drop(host);
    if sections.contains(&"pool") {
        rt.block_on(pool_section())?;
    }
    if sections.contains(&"fuel") {
        rt.block_on(fuel_section())?;
    }
    if sections.contains(&"python") {
        rt.block_on(python::live_section())?;
    }
    Ok(())
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-component-cache")
}

fn nproc() -> String {
    let available = std::thread::available_parallelism().map_or(0, |n| n.get());
    match std::process::Command::new("nproc").output() {
        Ok(out) if out.status.success() => format!(
            "{} (available_parallelism {available})",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        _ => format!("{available} (available_parallelism; `nproc` did not run)"),
    }
}

fn allocator_name(kind: AllocatorKind) -> String {
    match kind {
        AllocatorKind::Pooling { pagemap_scan } => {
            format!("pooling (pagemap_scan: {pagemap_scan})")
        }
        AllocatorKind::OnDemand => "on-demand".into(),
    }
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

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// 2. the counting filesystem
// ---------------------------------------------------------------------------------------------

const FS_FILES: usize = 500;
const FS_REPEATS: usize = 15;

/// `file-stats` over a directory of small files: `qi-host run` (spawn, counting and gated WASI
/// filesystem, quota checks, receipt) against bare wasmtime-wasi on the same engine. The
/// difference divided by the agent's counted file operations is the cost per operation (it
/// also carries the spawn overhead of section 1, a few microseconds per run, spread over the
/// operations).
async fn fs_section(host: &AgentHost) -> anyhow::Result<()> {
    println!();
    println!(
        "== 2. counting filesystem: `file-stats` over {FS_FILES} files, qi-host run vs bare wasmtime-wasi (same engine) =="
    );
    println!("  loadavg at start: {}", loadavg());
    let dir = tempfile::tempdir()?;
    for i in 0..FS_FILES {
        std::fs::write(
            dir.path().join(format!("f{i:04}.txt")),
            format!("line one of {i}\nline two\n").repeat(20),
        )?;
    }
    let component = host.load(FILE_STATS_COMPONENT)?;
    let pre = bare::pre(host.runtime().engine(), FILE_STATS_COMPONENT)?;
    let input = json!({});
    let task = bare::task(&input);
    let mut spec = SubAgentSpecification {
        isolation_level: qi_host::IsolationLevel::Restricted,
        fuel: 50_000_000_000,
        directories: vec![qi_host::DirectoryGrant {
            host_path: dir.path().to_path_buf(),
            guest_path: "/workspace".into(),
            writable: Some(false),
        }],
        ..SubAgentSpecification::default()
    };
    spec.security_constraints.file_system_access = qi_host::FileSystemAccess::ReadOnly;
    let (mut qi, mut bare_t, mut ops) = (Vec::new(), Vec::new(), 0);
    let mut outputs = std::collections::BTreeSet::new();
    for i in 0..FS_REPEATS + 2 {
        let t = Instant::now();
        let report = host
            .run(
                &component,
                spec.clone(),
                TaskRequest::new("stats", input.clone()),
            )
            .await?;
        let d_qi = t.elapsed();
        anyhow::ensure!(report.failure.is_none(), "qi-host run failed: {report:?}");
        ops = report.usage.file_operations;
        outputs.insert(report.output.map(|o| o["total"].to_string()));
        let t = Instant::now();
        let out = bare::run_with_dir(host.runtime().engine(), &pre, &task, dir.path()).await?;
        let d_bare = t.elapsed();
        let v: Value = serde_json::from_str(&out)?;
        outputs.insert(Some(v["total"].to_string()));
        if i >= 2 {
            qi.push(d_qi);
            bare_t.push(d_bare);
        }
    }
    let (q, b) = (stats(&mut qi), stats(&mut bare_t));
    println!(
        "  {FS_REPEATS} interleaved runs after 2 warm-ups; file operations counted per run: {ops}; totals {}",
        if outputs.len() == 1 {
            "agree"
        } else {
            "DIFFER"
        }
    );
    println!(
        "  qi-host run median {:.0} us, bare median {:.0} us: ratio {:.3}; extra per file operation {:.2} us",
        us(q.median),
        us(b.median),
        q.median.as_secs_f64() / b.median.as_secs_f64(),
        (us(q.median) - us(b.median)) / ops.max(1) as f64,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. spawn-to-result
// ---------------------------------------------------------------------------------------------

const SPAWN_WARMUP: usize = 200;
const SPAWN_ITERATIONS: usize = 2_000;

async fn spawn_section(host: &AgentHost) -> anyhow::Result<()> {
    println!();
    println!("== 1. spawn-to-result of `hello`: qi-host vs bare wasmtime (same engine) ==");
    println!("  loadavg at start: {}", loadavg());
    let component = host.load(HELLO_COMPONENT)?;
    let engine = host.runtime().engine();
    let pre = bare::pre(engine, HELLO_COMPONENT)?;
    let input = json!({"name": "bench"});
    let bare_task = bare::task(&input);
    let mut spec = SubAgentSpecification {
        fuel: 5_000_000_000,
        ..SubAgentSpecification::default()
    };
    spec.resource_limits.max_memory_mb = 64;
    spec.resource_limits.max_execution_time_ms = 30_000;

    let mut qi = Vec::with_capacity(SPAWN_ITERATIONS);
    let mut bare_run = Vec::with_capacity(SPAWN_ITERATIONS);
    let mut bare_describe = Vec::with_capacity(SPAWN_ITERATIONS);
    // qi-host / bare of each interleaved pair: a slow spell of the machine (a noisy neighbour
    // on a shared VM) slows both runs of a pair alike, so the median of these ratios is steadier
    // than the ratio of the two medians.
    let mut paired = Vec::with_capacity(SPAWN_ITERATIONS);
    let mut failures = 0usize;
    // Interleaved, so that load from anything else on the machine hits all three alike.
    for i in 0..SPAWN_WARMUP + SPAWN_ITERATIONS {
        let (s, task) = (spec.clone(), TaskRequest::new("bench task", input.clone()));
        let t = Instant::now();
        let report = host.run(&component, s, task).await;
        let d_qi = t.elapsed();
        if !matches!(&report, Ok(r) if r.failure.is_none()) {
            failures += 1;
            if failures == 1 {
                println!("  first qi-host failure: {report:?}");
            }
        }
        drop(report);

        let t = Instant::now();
        let out = bare::run(engine, &pre, &bare_task, false).await;
        let d_bare = t.elapsed();
        std::hint::black_box(out?);

        let t = Instant::now();
        let out = bare::run(engine, &pre, &bare_task, true).await;
        let d_describe = t.elapsed();
        std::hint::black_box(out?);

        if i >= SPAWN_WARMUP {
            qi.push(d_qi);
            bare_run.push(d_bare);
            bare_describe.push(d_describe);
            paired.push(d_qi.as_secs_f64() / d_bare.as_secs_f64());
        }
    }
    let (q, b, bd) = (
        stats(&mut qi),
        stats(&mut bare_run),
        stats(&mut bare_describe),
    );
    println!(
        "  {SPAWN_ITERATIONS} sequential runs each after {SPAWN_WARMUP} warm-up runs; allocator {}; qi-host failures: {failures}",
        allocator_name(host.runtime().allocator())
    );
    println!(
        "  {:<44} {:>10} {:>10} {:>10}",
        "", "median µs", "p99 µs", "mean µs"
    );
    for (name, s) in [
        ("qi-host AgentHost::run (spawn+describe+run)", &q),
        ("bare: Store + instantiate + run", &b),
        ("bare: Store + instantiate + describe + run", &bd),
    ] {
        println!(
            "  {name:<44} {:>10.1} {:>10.1} {:>10.1}",
            us(s.median),
            us(s.p99),
            us(s.mean)
        );
    }
    paired.sort_by(f64::total_cmp);
    println!(
        "  ratio qi-host / bare, median of paired runs: {:.2}  (target <= 1.3)",
        paired[paired.len() / 2]
    );
    println!(
        "  ratio qi-host / bare (of the medians): {:.2}",
        us(q.median) / us(b.median)
    );
    println!(
        "  ratio qi-host / bare-with-describe (median): {:.2}",
        us(q.median) / us(bd.median)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. pooling vs on-demand with many live agents
// ---------------------------------------------------------------------------------------------

const POOL_CASES: [&str; 4] = [
    "pooling-1000",
    "on-demand-1000",
    "pooling-10000",
    "on-demand-10000",
];
const CHILD_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a child waits for all its agents to be alive before it gives up.
const ALIVE_TIMEOUT: Duration = Duration::from_secs(200);

async fn pool_section() -> anyhow::Result<()> {
    println!();
    println!(
        "== 3. pooling vs on-demand: N agents of `tool-user` alive at once, blocked in `bench.wait` =="
    );
    println!("  loadavg at start: {}", loadavg());
    println!("  (each case in its own child process; timeout {CHILD_TIMEOUT:?} per case)");
    let mut rows = Vec::new();
    for case in POOL_CASES {
        let started = Instant::now();
        let (result, notes) = run_case_child(case).await?;
        let took = started.elapsed();
        println!("  case {case} done in {:.1} s", took.as_secs_f64());
        rows.push((case, result, notes));
    }

    println!();
    println!(
        "  {:<16} {:<30} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "case",
        "allocator used",
        "N",
        "alive",
        "fail",
        "to-all ms",
        "agents/s",
        "RSS MiB",
        "HWM MiB",
        "maps",
        "join ms"
    );
    for (case, result, _) in &rows {
        match result {
            Some(r) => println!(
                "  {:<16} {:<30} {:>6} {:>6} {:>6} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8} {:>9.0}",
                case,
                r["allocator"].as_str().unwrap_or("?"),
                r["n"],
                r["alive_max"],
                r["failures"],
                r["ms_to_all_alive"].as_f64().unwrap_or(f64::NAN),
                r["agents_per_sec"].as_f64().unwrap_or(f64::NAN),
                r["rss_mib_all_alive"].as_f64().unwrap_or(f64::NAN),
                r["hwm_mib"].as_f64().unwrap_or(f64::NAN),
                r["maps_all_alive"],
                r["ms_release_to_joined"].as_f64().unwrap_or(f64::NAN),
            ),
            None => println!(
                "  {case:<16} no result (counted as {} failures)",
                case_n(case)
            ),
        }
    }
    for (case, result, notes) in &rows {
        let errors = result
            .as_ref()
            .and_then(|r| r["error_samples"].as_array())
            .filter(|a| !a.is_empty());
        let map_kinds = result
            .as_ref()
            .and_then(|r| r["map_kinds_all_alive"].as_array())
            .map(|kinds| {
                kinds
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            });
        println!("  notes for {case}:");
        if let Some(kinds) = map_kinds {
            println!("    most common mappings when all were alive: {kinds}");
        }
        for n in notes {
            println!("    {n}");
        }
        if let Some(errors) = errors {
            for e in errors {
                println!(
                    "    failure ({}x): {}",
                    e["count"],
                    e["message"].as_str().unwrap_or("?")
                );
            }
        }
    }
    println!(
        "  (vm.max_map_count = {}; RSS sampled when all N were alive, HWM = process peak)",
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    );
    Ok(())
}

/// Runs `--case <case>` in a child process of this binary: its `RESULT` JSON, and notes (exit
/// status, the first lines of its stderr, a timeout).
async fn run_case_child(case: &str) -> anyhow::Result<(Option<Value>, Vec<String>)> {
    let exe = std::env::current_exe()?;
    let child = tokio::process::Command::new(&exe)
        .args(["--case", case])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let outcome = tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output()).await;
    let (result, notes) = match outcome {
        Err(_) => (
            None,
            vec![format!("timed out after {CHILD_TIMEOUT:?}; killed")],
        ),
        Ok(Err(e)) => (None, vec![format!("could not wait for the child: {e}")]),
        Ok(Ok(out)) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let result = stdout
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .and_then(|l| serde_json::from_str::<Value>(l).ok());
            let mut notes = Vec::new();
            if !out.status.success() {
                notes.push(format!("child exited with {}", out.status));
            }
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            for l in lines.iter().take(8) {
                notes.push(format!("stderr: {l}"));
            }
            if lines.len() > 8 {
                notes.push(format!("stderr: ... {} more lines", lines.len() - 8));
            }
            (result, notes)
        }
    };
    Ok((result, notes))
}

fn case_n(case: &str) -> u32 {
    case.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `bench.wait`: counts the agent as alive, then waits for the release signal.
struct WaitTool {
    arrived: Arc<AtomicU64>,
    release: watch::Receiver<bool>,
}

impl Tool for WaitTool {
    fn name(&self) -> &str {
        "bench.wait"
    }
    fn description(&self) -> &str {
        "Counts the caller as alive and returns when the benchmark releases all agents"
    }
    fn call(&self, _ctx: ToolContext, _input: Value) -> ToolFuture {
        let arrived = self.arrived.clone();
        let mut release = self.release.clone();
        Box::pin(async move {
            arrived.fetch_add(1, Ordering::SeqCst);
            let _ = release.wait_for(|released| *released).await;
            Ok(json!({}))
        })
    }
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count())
}

/// The eight most common kinds of mapping (permissions and size), e.g. `9999 x ---p 4 KiB`.
fn map_breakdown() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut kinds: std::collections::BTreeMap<(String, u64), u64> = Default::default();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let size =
            u64::from_str_radix(end, 16).unwrap_or(0) - u64::from_str_radix(start, 16).unwrap_or(0);
        *kinds.entry((perms.to_string(), size)).or_default() += 1;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    kinds
        .into_iter()
        .take(8)
        .map(|((perms, size), count)| format!("{count} x {perms} {}", human_bytes(size)))
        .collect()
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / f64::from(1u32 << 20)),
        b => format!("{} KiB", b / 1024),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One `--case <allocator>-<N>`: prints one `RESULT {json}` line.
fn pool_child(case: &str) -> anyhow::Result<()> {
    let n = case_n(case);
    let agents = if case.starts_with("python-") {
        python::live_agents()
    } else {
        LiveAgents::rust()
    };
    let pooling = case.starts_with("pooling-") || case.starts_with("python-");
    anyhow::ensure!(
        n > 0 && (pooling || case.starts_with("on-demand-")),
        "bad case `{case}`"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(pool_case(pooling, n, agents))?;
    println!("RESULT {result}");
    // Dropping thousands of stores is part of what `ms_release_to_joined` measured already;
    // don't wait for the runtime's shutdown as well.
    rt.shutdown_background();
    Ok(())
}

/// Which agents a pool case keeps alive: a component that calls `bench.wait` given `input`,
/// and its memory cap.
struct LiveAgents {
    component: &'static str,
    input: Value,
    max_memory_mb: u32,
}

impl LiveAgents {
    fn rust() -> LiveAgents {
        LiveAgents {
            component: TOOL_USER_COMPONENT,
            input: json!({"calls": [{"tool": "bench.wait", "input": {}}]}),
            max_memory_mb: 8,
        }
    }
}

async fn pool_case(pooling: bool, n: u32, agents: LiveAgents) -> anyhow::Result<Value> {
    let (release_tx, release_rx) = watch::channel(false);
    let arrived = Arc::new(AtomicU64::new(0));
    let mut tools = ToolRegistry::with_builtins();
    tools.register(WaitTool {
        arrived: arrived.clone(),
        release: release_rx,
    });
    let host = Arc::new(AgentHost::with_tools(
        HostConfig {
            pooling,
            max_live_agents: n,
            cache_dir: Some(cache_dir()),
            ..HostConfig::default()
        },
        tools,
    )?);
    let allocator = allocator_name(host.runtime().allocator());
    let component = host.load(agents.component)?;
    let mut spec = SubAgentSpecification {
        fuel: 5_000_000_000,
        ..SubAgentSpecification::default()
    };
    spec.security_constraints.allowed_tools = vec!["bench.wait".into()];
    spec.resource_limits.max_memory_mb = agents.max_memory_mb;
    spec.resource_limits.max_execution_time_ms = 600_000;
    let input = agents.input;

    let failed_early = Arc::new(AtomicU64::new(0));
    let rss_before = proc_status_kib("VmRSS").unwrap_or(0);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (host, component, spec) = (host.clone(), component.clone(), spec.clone());
        let task = TaskRequest::new("wait for release", input.clone());
        let failed_early = failed_early.clone();
        handles.push(tokio::spawn(async move {
            let outcome = match host.run(&component, spec, task).await {
                Err(e) => Err(format!("spawn error: {e}")),
                Ok(report) => match (&report.failure, &report.output) {
                    (Some(f), _) => Err(format!("agent failed: {f}")),
                    (None, Some(out))
                        if out["results"][0].get("ok").is_some() || out.get("called").is_some() =>
                    {
                        Ok(())
                    }
                    (None, out) => Err(format!("unexpected output: {out:?}")),
                },
            };
            if outcome.is_err() {
                failed_early.fetch_add(1, Ordering::SeqCst);
            }
            outcome
        }));
    }

    // Until every agent is either blocked in `bench.wait` or has failed.
    let mut alive_max = 0;
    let mut timed_out = false;
    loop {
        let alive = arrived.load(Ordering::SeqCst);
        alive_max = alive_max.max(alive);
        if alive + failed_early.load(Ordering::SeqCst) >= u64::from(n) {
            break;
        }
        if start.elapsed() > ALIVE_TIMEOUT {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let to_all_alive = start.elapsed();
    let rss_all_alive = proc_status_kib("VmRSS").unwrap_or(0);
    let maps_all_alive = map_count();
    let map_kinds = map_breakdown();
    let live_in_registry = host.list().len();

    let released = Instant::now();
    release_tx.send_replace(true);
    let mut ok = 0u64;
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for h in handles {
        match h.await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(message)) => *errors.entry(message).or_default() += 1,
            Err(e) => *errors.entry(format!("task panicked: {e}")).or_default() += 1,
        }
    }
    let release_to_joined = released.elapsed();
    let hwm = proc_status_kib("VmHWM").unwrap_or(0);
    let failures: u64 = errors.values().sum();
    let mut samples: Vec<(String, u64)> = errors.into_iter().collect();
    samples.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let samples: Vec<Value> = samples
        .into_iter()
        .take(5)
        .map(|(message, count)| json!({"message": message, "count": count}))
        .collect();
    let alive = alive_max as f64;
    Ok(json!({
        "allocator": allocator,
        "n": n,
        "alive_max": alive_max,
        "live_in_registry": live_in_registry,
        "ok": ok,
        "failures": failures,
        "timed_out": timed_out,
        "ms_to_all_alive": ms(to_all_alive),
        "agents_per_sec": alive / to_all_alive.as_secs_f64(),
        "rss_mib_before": rss_before as f64 / 1024.0,
        "rss_mib_all_alive": rss_all_alive as f64 / 1024.0,
        "hwm_mib": hwm as f64 / 1024.0,
        "maps_all_alive": maps_all_alive,
        "map_kinds_all_alive": map_kinds,
        "ms_release_to_joined": ms(release_to_joined),
        "error_samples": samples,
    }))
}

// ---------------------------------------------------------------------------------------------
// 3. fuel-metered vs unmetered
// ---------------------------------------------------------------------------------------------

const FUEL_REPEATS: usize = 7;
const FUEL_TARGET: Duration = Duration::from_millis(200);

/// qi-host's engine settings (see `engine.rs`), on-demand allocation; only fuel differs.
fn fuel_config(fuel: bool) -> Config {
    let max_wasm_stack = 512 << 10;
    let mut c = Config::new();
    c.consume_fuel(fuel);
    c.epoch_interruption(false);
    c.max_wasm_stack(max_wasm_stack);
    c.async_stack_size(max_wasm_stack + (1 << 20));
    c.wasm_backtrace_max_frames(None);
    c
}

struct Metered {
    engine: Engine,
    pre: bare::AgentPre<bare::State>,
    fuel: bool,
    /// Fuel units between async yields (`None`: never yield), when metered.
    yield_interval: Option<u64>,
}

impl Metered {
    fn new(fuel: bool, yield_interval: Option<u64>) -> anyhow::Result<Self> {
        let engine = Engine::new(&fuel_config(fuel))?;
        let pre = bare::pre(&engine, COMPUTE_COMPONENT)?;
        Ok(Metered {
            engine,
            pre,
            fuel,
            yield_interval,
        })
    }

    /// One fresh instance; returns the time of `run` alone, the checksum and the fuel used.
    async fn run(&self, input: &Value) -> anyhow::Result<(Duration, String, Option<u64>)> {
        let task = bare::task(input);
        let mut store: Store<bare::State> = bare::store(&self.engine, false)?;
        if self.fuel {
            store.set_fuel(bare::FUEL)?;
            store.fuel_async_yield_interval(self.yield_interval)?;
        }
        let agent = self.pre.instantiate_async(&mut store).await?;
        let before = store.get_fuel().ok();
        let t = Instant::now();
        let out = agent.call_run(&mut store, &task).await?;
        let took = t.elapsed();
        let fuel_used = before.zip(store.get_fuel().ok()).map(|(b, a)| b - a);
        let out = out.map_err(|e| anyhow::anyhow!("compute failed: {e:?}"))?;
        let v: Value = serde_json::from_str(&out.output)?;
        let checksum = v["checksum"].as_str().unwrap_or_default().to_string();
        Ok((took, checksum, fuel_used))
    }
}

async fn fuel_section() -> anyhow::Result<()> {
    println!();
    println!("== 4. fuel-metered vs unmetered: `compute` guest, call_run time only ==");
    println!("  loadavg at start: {}", loadavg());
    println!(
        "  engines identical except consume_fuel; metered stores yield every 1M units (qi-host's default), every 10M (the ceiling of fuelYieldInterval) or never"
    );
    println!(
        "  (the yield interval changes only how often the run returns to tokio; if the slowdown is the same for all three, it is the fuel check cranelift puts in every loop, not the yields)"
    );
    let unmetered = Metered::new(false, None)?;
    let metered = [
        ("yield 1M", Metered::new(true, Some(bare::YIELD_INTERVAL))?),
        (
            "yield 10M",
            Metered::new(true, Some(qi_host::spec::MAX_FUEL_YIELD_INTERVAL))?,
        ),
        ("no yield", Metered::new(true, None)?),
    ];
    let cases = [
        ("cpu", json!({"kind": "cpu", "iterations": 1_000_000})),
        ("memory", json!({"kind": "memory", "iterations": 4})),
        (
            "memory",
            json!({"kind": "memory", "iterations": 1, "bytes": 32 << 20}),
        ),
    ];
    for (name, mut input) in cases {
        // Calibrate on the unmetered engine so that one run takes about FUEL_TARGET.
        let n0 = input["iterations"].as_u64().unwrap_or(1);
        let (d0, _, _) = unmetered.run(&input).await?;
        let n = ((n0 as f64) * FUEL_TARGET.as_secs_f64() / d0.as_secs_f64().max(1e-6))
            .round()
            .max(1.0) as u64;
        input["iterations"] = json!(n);
        // Warm-up one of each, then interleave.
        unmetered.run(&input).await?;
        for (_, m) in &metered {
            m.run(&input).await?;
        }
        let mut without = Vec::new();
        let mut with_fuel: Vec<Vec<Duration>> = vec![Vec::new(); metered.len()];
        let (mut sums, mut fuel_used) = (std::collections::BTreeSet::new(), None);
        for _ in 0..FUEL_REPEATS {
            let (d, sum, _) = unmetered.run(&input).await?;
            without.push(d);
            sums.insert(sum);
            for (i, (_, m)) in metered.iter().enumerate() {
                let (d, sum, used) = m.run(&input).await?;
                with_fuel[i].push(d);
                sums.insert(sum);
                fuel_used = used;
            }
        }
        let u = stats(&mut without);
        println!(
            "  {name:<6} iterations {n}{}: unmetered median {:.1} ms; fuel/run {}; checksums {}",
            match input.get("bytes").and_then(Value::as_u64) {
                Some(b) => format!(" x {}", human_bytes(b)),
                None if name == "memory" => " x 1 MiB".into(),
                None => String::new(),
            },
            ms(u.median),
            fuel_used.map_or("?".into(), |f| f.to_string()),
            if sums.len() == 1 {
                "agree".to_string()
            } else {
                format!("DIFFER: {sums:?}")
            },
        );
        for ((label, _), samples) in metered.iter().zip(with_fuel.iter_mut()) {
            let m = stats(samples);
            println!(
                "    metered, {label:<9}: median {:.1} ms, slowdown {:.3} (target <= 1.10)",
                ms(m.median),
                m.median.as_secs_f64() / u.median.as_secs_f64(),
            );
        }
    }
    Ok(())
}
