//! kill -9 and resume: a coordinated run killed with SIGKILL at any point resumes to the same
//! result as a run that was never interrupted.
//!
//! The manifest has every sync point type (a barrier, a decision, an aggregation, a checkpoint)
//! and a subtask that reads their results. The test re-executes its
//! own binary as a child (selected by `QI_CRASH_RUN_CHILD=<data dir>` and the test-name
//! filter) that runs the manifest on a file-backed store and prints a line for every run event
//! as it is committed. For each k, the parent kills a fresh child with SIGKILL once it printed
//! its k-th event: inside attempts, with agents waiting at points, between an outcome and the
//! outputs after it, during output commits, until after the last event. It then resumes the
//! run in process and compares what matters (each subtask completed, each point's completeness
//! and result, what the final subtask received) with an uninterrupted run. A few rounds kill
//! the first resume too and resume again.

use qi_guest_artifacts::WORKER_COMPONENT;
use qi_host::coord::{self, RunOptions, RunReport, SubtaskState};
use qi_host::events::{EventFilter, SubscribeFrom};
use qi_host::{AgentHost, HostConfig};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

#[path = "sigkill/mod.rs"]
mod sigkill;

const CHILD_ENV: &str = "QI_CRASH_RUN_CHILD";
const RESUME_ENV: &str = "QI_CRASH_RUN_RESUME";
const CHILD_TEST: &str = "crash_run_child";
const RUN_ID: &str = "run-crash";
/// How long the parent waits for the child's next event before it calls the child hung.
const HANG_GUARD: Duration = Duration::from_secs(60);

const MANIFEST: &str = r#"
[task]
id = "crash"

[strategy]
type = "hybrid"
maxConcurrentAgents = 4
failureHandling = "graceful-degradation"

[[strategy.synchronizationPoints]]
id = "meet"
type = "barrier"
participants = ["a1", "a2", "a3"]

[[strategy.synchronizationPoints]]
id = "pick"
type = "decision"
participants = ["a1", "a2", "a3"]
# Every vote counts (a majority rule resolves on whichever two votes come first).
condition = "all-complete"

[[strategy.synchronizationPoints]]
id = "total"
type = "aggregation"
participants = ["a1", "a2", "a3"]
reducer = "sum"

[[strategy.synchronizationPoints]]
id = "saved"
type = "checkpoint"
participants = ["a1", "a2"]

[agents.worker]
component = "guest:worker"

[[subtasks]]
id = "a1"
outputs = ["subtask"]
inputs = [{ name = "steps", value = [{ work = 20000 }, { barrier = "meet" }, { vote = { point = "pick", choice = "ship" } }, { contribute = { point = "total", value = 1 } }, { checkpoint = { point = "saved", state = { n = 1 } } }] }]

[[subtasks]]
id = "a2"
outputs = ["subtask"]
inputs = [{ name = "steps", value = [{ barrier = "meet" }, { vote = { point = "pick", choice = "ship" } }, { contribute = { point = "total", value = 2 } }, { checkpoint = { point = "saved", state = { n = 2 } } }] }]

[[subtasks]]
id = "a3"
outputs = ["subtask"]
inputs = [{ name = "steps", value = [{ work = 5000 }, { barrier = "meet" }, { vote = { point = "pick", choice = "hold" } }, { contribute = { point = "total", value = 4 } }] }]

[[subtasks]]
id = "final"
inputs = [
  { name = "steps", value = [] },
  { name = "decision", from = "sync.pick" },
  { name = "total", from = "sync.total" },
  { name = "saved", from = "sync.saved" },
  { name = "from", from = "a3.subtask" },
]
"#;

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

fn guest_dir() -> PathBuf {
    Path::new(WORKER_COMPONENT)
        .parent()
        .expect("guest directory")
        .to_path_buf()
}

/// Runs (or resumes) the manifest on `dir`; `on_event` sees each run event's kind as it is
/// committed.
async fn run(dir: &Path, resume: bool, on_event: impl Fn(&str) + Send + 'static) -> RunReport {
    let svc = sigkill::context_service(qi_host::StoreConfig::at(dir)).await;
    let host = Arc::new(
        AgentHost::new(HostConfig {
            cache_dir: Some(cache_dir()),
            ..HostConfig::default()
        })
        .unwrap()
        .with_context(svc.clone()),
    );
    let path = Path::new("crash.toml");
    let manifest = coord::Manifest::parse(MANIFEST, path).unwrap();
    let prepared = coord::prepare_parsed(&host, manifest, MANIFEST, path, Some(&guest_dir()))
        .await
        .unwrap();
    let filter = EventFilter::parse_cli(&format!("context=run/{RUN_ID}")).unwrap();
    let mut sub = svc.bus().subscribe(filter, SubscribeFrom::Now).unwrap();
    let watcher = tokio::spawn(async move {
        while let Ok(e) = sub.next().await {
            on_event(e.data["kind"].as_str().unwrap_or("?"));
        }
    });
    let report = prepared
        .run(
            host,
            RunOptions {
                run_id: Some(RUN_ID.into()),
                resume,
                status: None,
            },
        )
        .await
        .unwrap();
    watcher.abort();
    report
}

/// What must not depend on crashes: every subtask completed, each point's completeness and
/// result, and what `final` received.
fn essence(r: &RunReport) -> Value {
    let states: Vec<(String, SubtaskState)> =
        r.results.iter().map(|s| (s.id.clone(), s.state)).collect();
    let points: serde_json::Map<String, Value> = r
        .synchronization
        .iter()
        .map(|(p, o)| (p.clone(), json!({"complete": o["complete"], "result": o["result"], "failed": o.get("failed")})))
        .collect();
    let received = r
        .results
        .iter()
        .find(|s| s.id == "final")
        .and_then(|s| s.output.as_ref())
        .map(|o| o["received"].clone());
    json!({"success": r.success, "states": format!("{states:?}"), "points": points, "received": received})
}

/// Starts a child on `dir` and kills it with SIGKILL once it printed `kill_after` events;
/// returns how many it printed (all of them, if it finished first).
fn crash_child(dir: &Path, resume: bool, kill_after: usize) -> usize {
    let resume = if resume { "1" } else { "0" };
    let sigkill::Child {
        process: mut child,
        lines,
        reader,
    } = sigkill::spawn_child(
        CHILD_TEST,
        &[(CHILD_ENV, dir.as_os_str()), (RESUME_ENV, resume.as_ref())],
    );
    let mut seen = 0;
    while seen < kill_after {
        match lines.recv_timeout(HANG_GUARD) {
            Ok(line) if line.starts_with("event ") => seen += 1,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the child printed nothing for {HANG_GUARD:?}")
            }
            // Finished before the kill point.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // `Child::kill` sends SIGKILL: no destructor, flush or checkpoint runs.
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    sigkill::wait_for_the_lock(dir);
    seen
}

#[test]
fn a_run_killed_at_any_event_resumes_to_the_same_result() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let baseline_dir = tempfile::tempdir().unwrap();
    let events = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = events.clone();
    let baseline = runtime.block_on(run(baseline_dir.path(), false, move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }));
    assert!(baseline.success, "{baseline:#?}");
    let expected = essence(&baseline);
    let total = events.load(std::sync::atomic::Ordering::Relaxed);
    assert!(total > 20, "the run records its steps as events ({total})");
    let mut rounds = 0;
    for kill_after in 1..=total {
        let dir = tempfile::tempdir().unwrap();
        crash_child(dir.path(), false, kill_after);
        // Every third round, the first resume is killed too, half-way through its events.
        if kill_after % 3 == 0 {
            crash_child(dir.path(), true, kill_after / 2 + 1);
        }
        let resumed = runtime.block_on(run(dir.path(), true, |_| {}));
        assert_eq!(
            essence(&resumed),
            expected,
            "killed after event {kill_after}: {resumed:#?}"
        );
        rounds += 1;
    }
    eprintln!("{rounds} kill points, each resumed to the uninterrupted result");
}

/// The child half of the test above; does nothing unless `QI_CRASH_RUN_CHILD` names a
/// directory.
#[test]
#[ignore = "child process of a_run_killed_at_any_event_resumes_to_the_same_result"]
fn crash_run_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let resume = std::env::var(RESUME_ENV).is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        run(Path::new(&dir), resume, |kind| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "event {kind}").unwrap();
            out.flush().unwrap();
        })
        .await;
    });
}
