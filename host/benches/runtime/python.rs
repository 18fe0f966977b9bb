//! Section 5 of the runtime bench: Python agents (componentize-py components, `guests/py-*`).
//!
//! - spawn-to-result of `py-hello` against the Rust `hello`, interleaved in one run on one host
//!   (`AgentHost::run`: spawn, describe, run, teardown, the path `qi-host run-agent` takes);
//! - how many `py-tour` agents can be alive at once, each blocked in the `bench.wait` tool,
//!   in a child process with the pooling allocator: RSS per live agent (target <= 2 MiB: the
//!   CPython heap image is shared copy-on-write through the pool's memory images) and the count
//!   reached (target >= 1,000).

use super::*;
use qi_guest_artifacts::{PY_HELLO_COMPONENT, PY_TOUR_COMPONENT, PYTHON_GUESTS_SKIPPED};

const ITERATIONS: usize = 200;
const WARMUP: usize = 20;
/// Live Python agents the child tries to hold at once.
const LIVE: u32 = 1_000;

fn skipped() -> bool {
    if let Some(reason) = PYTHON_GUESTS_SKIPPED {
        println!("  skipped: the Python guests were not built: {reason}");
        return true;
    }
    false
}

pub(super) async fn spawn_section(host: &AgentHost) -> anyhow::Result<()> {
    println!();
    println!(
        "== 5a. spawn-to-result: Python `py-hello` vs Rust `hello` (AgentHost::run, same host) =="
    );
    if skipped() {
        return Ok(());
    }
    println!("  loadavg at start: {}", loadavg());
    let t = Instant::now();
    let py = host.load(PY_HELLO_COMPONENT)?;
    println!(
        "  py-hello: {:.1} MB component, loaded in {:.0} ms ({})",
        std::fs::metadata(PY_HELLO_COMPONENT)?.len() as f64 / 1e6,
        ms(t.elapsed()),
        if py.from_cache {
            "from the component cache"
        } else {
            "compiled now"
        }
    );
    let rust = host.load(HELLO_COMPONENT)?;
    let mut spec = SubAgentSpecification {
        fuel: 5_000_000_000,
        ..SubAgentSpecification::default()
    };
    spec.resource_limits.max_memory_mb = 64;
    spec.resource_limits.max_execution_time_ms = 30_000;
    let input = json!({"name": "bench"});
    let (mut py_times, mut rust_times, mut paired) = (Vec::new(), Vec::new(), Vec::new());
    let (mut py_fuel, mut py_peak, mut failures) = (0, 0, 0usize);
    for i in 0..WARMUP + ITERATIONS {
        let t = Instant::now();
        let report = host
            .run(&py, spec.clone(), TaskRequest::new("bench", input.clone()))
            .await?;
        let d_py = t.elapsed();
        if report.failure.is_some() {
            failures += 1;
            if failures == 1 {
                println!("  first py-hello failure: {:?}", report.failure);
            }
        }
        py_fuel = report.usage.fuel_consumed;
        py_peak = report.usage.peak_memory_bytes;
        let t = Instant::now();
        let report = host
            .run(
                &rust,
                spec.clone(),
                TaskRequest::new("bench", input.clone()),
            )
            .await?;
        let d_rust = t.elapsed();
        std::hint::black_box(report);
        if i >= WARMUP {
            py_times.push(d_py);
            rust_times.push(d_rust);
            paired.push(d_py.as_secs_f64() / d_rust.as_secs_f64());
        }
    }
    let (p, r) = (stats(&mut py_times), stats(&mut rust_times));
    println!(
        "  {ITERATIONS} interleaved pairs after {WARMUP} warm-up pairs; py-hello failures: {failures}"
    );
    println!(
        "  {:<28} {:>10} {:>10} {:>10}",
        "", "median µs", "p99 µs", "mean µs"
    );
    for (name, s) in [("Python py-hello", &p), ("Rust hello", &r)] {
        println!(
            "  {name:<28} {:>10.1} {:>10.1} {:>10.1}",
            us(s.median),
            us(s.p99),
            us(s.mean)
        );
    }
    paired.sort_by(f64::total_cmp);
    println!(
        "  ratio Python / Rust, median of paired runs: {:.1}",
        paired[paired.len() / 2]
    );
    println!(
        "  py-hello per run: {py_fuel} fuel, peak linear memory {}",
        human_bytes(py_peak)
    );
    Ok(())
}

/// The `py-tour` agents a `python-<N>` child keeps alive.
pub(super) fn live_agents() -> LiveAgents {
    LiveAgents {
        component: PY_TOUR_COMPONENT,
        input: json!({"mode": "call", "tool": "bench.wait"}),
        max_memory_mb: 64,
    }
}

pub(super) async fn live_section() -> anyhow::Result<()> {
    println!();
    println!(
        "== 5b. Python agents alive at once: {LIVE} `py-tour` agents blocked in `bench.wait` (pooling) =="
    );
    if skipped() {
        return Ok(());
    }
    println!("  loadavg at start: {}", loadavg());
    let case = format!("python-{LIVE}");
    let started = Instant::now();
    let (result, notes) = run_case_child(&case).await?;
    println!(
        "  case {case} done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    match result {
        Some(r) => {
            let alive = r["alive_max"].as_u64().unwrap_or(0);
            let grew = r["rss_mib_all_alive"].as_f64().unwrap_or(f64::NAN)
                - r["rss_mib_before"].as_f64().unwrap_or(f64::NAN);
            println!(
                "  alive at once: {alive} of {LIVE} (target >= 1,000); failures {}; {:.0} ms to all alive",
                r["failures"],
                r["ms_to_all_alive"].as_f64().unwrap_or(f64::NAN)
            );
            println!(
                "  RSS: {:.0} MiB with the component loaded, {:.0} MiB with all alive: {:.2} MiB per live agent (target <= 2 MiB); peak {:.0} MiB",
                r["rss_mib_before"].as_f64().unwrap_or(f64::NAN),
                r["rss_mib_all_alive"].as_f64().unwrap_or(f64::NAN),
                grew / alive.max(1) as f64,
                r["hwm_mib"].as_f64().unwrap_or(f64::NAN)
            );
            if let Some(errors) = r["error_samples"].as_array() {
                for e in errors {
                    println!(
                        "  failure ({}x): {}",
                        e["count"],
                        e["message"].as_str().unwrap_or("?")
                    );
                }
            }
        }
        None => println!("  no result"),
    }
    for n in notes {
        println!("  {n}");
    }
    Ok(())
}
