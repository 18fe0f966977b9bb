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

// ---- the binary: `qi-host run` killed with SIGKILL ------------------------------------------

/// The `qi-host` binary on `dir` with the tests' component cache.
fn qi_host(dir: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qi-host"));
    cmd.env("QI_HOST_CACHE_DIR", cache_dir())
        .arg("run")
        .arg("--data-dir")
        .arg(dir)
        .arg("--guest-dir")
        .arg(guest_dir())
        .args(["--run-id", RUN_ID])
        .args(args);
    cmd
}

/// What must not depend on crashes, from a `run --json` report: success, each subtask's
/// state, each point's completeness and result, what `final` received, and the tally of the
/// producer/consumer example.
fn essence_json(r: &Value) -> Value {
    let results = r["results"].as_array().cloned().unwrap_or_default();
    let states: Vec<Value> = results
        .iter()
        .map(|s| json!([s["id"], s["state"]]))
        .collect();
    let points: serde_json::Map<String, Value> = r["synchronization"]
        .as_object()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|(p, o)| (p, json!({"complete": o["complete"], "result": o["result"], "failed": o.get("failed")})))
        .collect();
    let output = |id: &str| {
        results
            .iter()
            .find(|s| s["id"] == id)
            .map(|s| s["output"].clone())
            .unwrap_or(Value::Null)
    };
    json!({
        "success": r["success"],
        "states": states,
        "points": points,
        "received": output("final")["received"],
        "tally": [output("tally")["processed"], output("tally")["missing"]],
    })
}

/// Runs `manifest` with the binary to its end (`--json`); the parsed report.
fn cli_run(dir: &Path, manifest: &Path, resume: bool) -> Value {
    let mut args = vec!["--json"];
    if resume {
        args.push("--resume");
    }
    let out = qi_host(dir, &args).arg(manifest).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "qi-host run printed no report ({e}); exit {:?}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Starts `qi-host run` on `dir` and kills it with SIGKILL once it printed `kill_after` lines
/// on stderr (a progress line per subtask state change, a debug line per run event); how
/// many it printed.
fn crash_cli(dir: &Path, manifest: &Path, kill_after: usize) -> usize {
    use std::io::BufRead;
    let mut child = qi_host(dir, &[])
        .arg(manifest)
        // One line per run event as it is recorded, besides the progress lines.
        .env("QI_LOG", "qi_host::coord::exec=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = 0;
    while seen < kill_after {
        match lines.recv_timeout(HANG_GUARD) {
            Ok(line) if line.starts_with('[') || line.contains("run event") => seen += 1,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("qi-host run printed nothing for {HANG_GUARD:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(lines);
    reader.join().unwrap();
    seen
}

/// The binary itself, killed with SIGKILL after each of its progress and run-event lines, on the manifest
/// with every sync point type and on `examples/producer-consumer` (a queue with a consumer
/// that crashes, and a topic): `qi-host run --resume` ends with the uninterrupted result.
#[test]
fn qi_host_run_killed_after_any_line_it_prints_resumes_to_the_same_result() {
    let work = tempfile::tempdir().unwrap();
    let points = work.path().join("crash.toml");
    std::fs::write(&points, MANIFEST).unwrap();
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/producer-consumer/task.toml");
    for manifest in [points, example] {
        let base = tempfile::tempdir().unwrap();
        let baseline = cli_run(base.path(), &manifest, false);
        assert_eq!(baseline["success"], true, "{baseline:#}");
        let expected = essence_json(&baseline);
        // How many progress lines an uninterrupted run prints.
        let total = crash_cli(tempfile::tempdir().unwrap().path(), &manifest, usize::MAX);
        assert!(total >= 16, "{total} lines");
        for kill_after in 1..total {
            let dir = tempfile::tempdir().unwrap();
            let seen = crash_cli(dir.path(), &manifest, kill_after);
            assert_eq!(seen, kill_after, "the run ended before its kill point");
            let resumed = cli_run(dir.path(), &manifest, true);
            assert_eq!(
                essence_json(&resumed),
                expected,
                "{}: killed after line {kill_after}: {resumed:#}",
                manifest.display()
            );
        }
        eprintln!(
            "{}: killed after each of {} lines, each resumed to the uninterrupted result",
            manifest.display(),
            total - 1
        );
    }
}
