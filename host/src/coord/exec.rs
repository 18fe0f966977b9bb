//! Coordinated execution (the seeds' `executeDistributedTask` and `monitorExecution`).
//!
//! Every subtask attempt runs in a fresh agent instance spawned from its agent kind. Outputs
//! are written to the shared context (`run/<run>/output/<subtask>`, one document per subtask)
//! and dependents read their inputs from there. Every step is an event on the bus under the
//! context id `run/<run>` (`qi-host events tail --filter context=run/<run>`).
//!
//! # Strategies
//!
//! - **sequential**: one subtask computing at a time, in topological order (higher `priority`
//!   first among ready subtasks, then manifest order).
//! - **parallel**: dependency levels in waves. A wave is every subtask whose longest chain of
//!   prerequisites has the same length; the next wave starts only when the whole current wave
//!   has settled. Within a wave, up to `maxConcurrentAgents` run at once.
//! - **hybrid**: DAG scheduling. A subtask starts the moment its inputs exist (its
//!   prerequisites completed, the sync points it reads resolved), up to `maxConcurrentAgents`.
//! - **adaptive**: hybrid scheduling that adapts:
//!   - *concurrency* is a window that starts at `maxConcurrentAgents`, halves (minimum 1) on
//!     every failed attempt and grows by one on every completed attempt;
//!   - *agent choice*: among a subtask's capable agents (preferred first), the one with the
//!     fewest failures in this run, then the lowest observed mean duration relative to its
//!     estimates; agents not yet seen count as their estimate;
//!   - *budget*: when the task has a time limit and less time is left than the ready
//!     subtask's estimate, the agent with the lowest observed mean duration is chosen;
//!   - *chains*: when what is left forms a chain (no two unsettled subtasks independent),
//!     the window drops to 1 and each link runs on the agent kind that ran the previous one.
//!
//! An agent waiting at a synchronization point does not count against the concurrency limit,
//! so sync points cannot deadlock a sequential run.
//!
//! # Failure handling
//!
//! - **fail-fast**: the first failure terminates every running agent and cancels the rest.
//! - **graceful-degradation**: the failed subtask's dependents are skipped when they need its
//!   output (`required = true`, the default); optional inputs are passed as available and
//!   listed in `inputs.missing`. Independent branches finish; the result is partial and says
//!   what is missing.
//! - **retry-cascade**: retry on the same agent with exponential backoff up to
//!   `retry.maxAttempts`; then reassign to the next capable agent kind, up to
//!   `retry.maxReassignments`; then, if the attempt timed out, run once more with the time
//!   limit multiplied by `retry.deadlineExtensionFactor` (up to `retry.maxExtensions`); then
//!   fail the subtask and its dependents. A limit violation (fuel, memory, …) is never retried
//!   on the same agent but may be reassigned; an `invalid-input` error is neither.
//!
//! # Timeouts and stalls
//!
//! An attempt is terminated when its subtask's `timeLimitMs` (or `constraints.maxDurationMs`)
//! passes, or when it makes no progress for `strategy.stallWindowMs`: progress is the agent's
//! task being polled, which happens when it spends fuel (the engine yields every fuel
//! interval) and when a host call completes. Waiting in a sync call is not a stall. The whole
//! run is cancelled when `task.timeLimitMs` passes.

use super::manifest::{FailureHandling, Manifest, Source, StrategyKind, SuccessCriterion};
use super::plan::{Plan, PreparedAgent, topo_order};
use super::resources::{ResourceAllocation, ResourceManager, ResourceRequest, ResourceStats};
use super::sync::{SyncEngine, SyncHandle, SyncNotice, SyncOutcome};
use crate::agents::{AgentHost, AgentReport, TaskRequest};
use crate::context::{ContextService, OPERATOR};
use crate::error::{AgentFailure, Error};
use crate::events::{EventType, NewEvent};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context as TaskCx, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Where a subtask is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubtaskState {
    /// Waiting for prerequisites or a slot.
    Pending,
    /// An attempt is running.
    Running,
    /// Waiting out a retry backoff.
    Backoff,
    /// Finished with its outputs.
    Completed,
    /// Failed for good.
    Failed,
    /// Not run: a required input can never exist.
    Skipped,
    /// Not run or stopped because the run was cancelled.
    Cancelled,
}

impl SubtaskState {
    /// Whether the subtask is over.
    pub fn settled(self) -> bool {
        matches!(
            self,
            SubtaskState::Completed
                | SubtaskState::Failed
                | SubtaskState::Skipped
                | SubtaskState::Cancelled
        )
    }
}

/// One attempt of a subtask.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// 1-based over the whole subtask.
    pub attempt: u32,
    /// Agent kind.
    pub agent: String,
    /// Agent instance id, when it was spawned.
    pub agent_id: Option<String>,
    /// Milliseconds from the run's start.
    pub started_ms: u64,
    /// Wall time.
    pub duration_ms: u64,
    /// `completed`, or why it failed.
    pub outcome: String,
    /// Measured usage, when it ran.
    pub usage: Option<crate::sandbox::UsageReceipt>,
    /// What the coordinator did next: `retry`, `reassign`, `extend-deadline`, or nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
}

/// A subtask's result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubtaskResult {
    /// Id.
    pub id: String,
    /// Final state.
    pub state: SubtaskState,
    /// Agent kind of the last attempt.
    pub agent: Option<String>,
    /// Every attempt.
    pub attempts: Vec<AttemptRecord>,
    /// Output, when completed.
    pub output: Option<Value>,
    /// Why it failed, was skipped or cancelled.
    pub error: Option<String>,
    /// Taken from the run being resumed instead of run again.
    pub resumed: bool,
}

/// Summed usage of every attempt.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TotalUsage {
    /// Fuel.
    pub fuel_consumed: u64,
    /// Sum of each attempt's peak memory, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: f64,
    /// Sum of attempt wall times.
    pub execution_time_ms: u64,
    /// Tool calls.
    pub tool_calls: u64,
    /// Network connections allowed and denied.
    pub network_requests: u64,
    /// File operations.
    pub file_operations: u64,
    /// Host calls.
    pub host_calls: u64,
}

/// The seeds' `CoordinationMetrics`, all measured.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinationMetrics {
    /// Agent instances spawned (one per attempt that got that far).
    pub total_agents: u64,
    /// Attempts that completed.
    pub successful_agents: u64,
    /// Attempts that failed (including terminated ones).
    pub failed_agents: u64,
    /// Mean attempt wall time, ms.
    pub average_execution_time: f64,
    /// Summed usage.
    pub total_resource_usage: TotalUsage,
    /// Time the coordinator's scheduling path spent moving results through the shared context
    /// (output writes, input reads) and queueing events, ms. Events are committed in order by a
    /// background recorder, off that path.
    pub communication_overhead: f64,
    /// Messages: context reads/writes, events, sync arrivals.
    pub communication_events: u64,
    /// Completed attempts' wall time / (run wall time × peak agents computing at once).
    pub coordination_efficiency: f64,
    /// Most agents computing at once.
    pub peak_concurrency: u64,
    /// Synchronization points resolved.
    pub synchronization_points_reached: u64,
    /// Resource manager counters.
    pub resources: ResourceStats,
}

/// The seeds' `ExecutionStatus` (`monitorExecution`), plus per-subtask detail.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStatus {
    /// Run id.
    pub coordination_id: String,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Settled / total.
    pub progress: f64,
    /// Attempts running now.
    pub active_agents: usize,
    /// Subtasks settled.
    pub completed_tasks: usize,
    /// Subtasks.
    pub total_tasks: usize,
    /// Per subtask: id, state, agent kind, agent id, attempt.
    pub subtasks: Vec<SubtaskStatus>,
}

/// One row of [`ExecutionStatus`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubtaskStatus {
    /// Id.
    pub id: String,
    /// State.
    pub state: SubtaskState,
    /// Agent kind.
    pub agent: Option<String>,
    /// Agent instance.
    pub agent_id: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
}

/// The seeds' `CoordinationResult`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// Run id (also the context prefix `run/<id>`).
    pub coordination_id: String,
    /// Task id.
    pub task_id: String,
    /// Every subtask completed.
    pub success: bool,
    /// Some completed, some did not.
    pub partial: bool,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// Declared outputs that were not produced (`<subtask>.<output>`).
    pub missing: Vec<String>,
    /// Per subtask, in manifest order.
    pub results: Vec<SubtaskResult>,
    /// Outputs of the subtasks nothing depends on, by id.
    pub aggregated_result: Value,
    /// How each sync point resolved.
    pub synchronization: BTreeMap<String, Value>,
    /// Metrics.
    pub metrics: CoordinationMetrics,
    /// Strategy and failure handling used.
    pub strategy: StrategyKind,
    /// Failure handling.
    pub failure_handling: FailureHandling,
    /// Run wall time, ms.
    pub execution_time: u64,
}

/// Options of a run.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Run id; a fresh one when `None`.
    pub run_id: Option<String>,
    /// Resume `run_id`: subtasks it completed are not run again, resolved sync points stay
    /// resolved, checkpoints can be restored.
    pub resume: bool,
    /// Receives live status.
    pub status: Option<watch::Sender<ExecutionStatus>>,
}

/// Counts the wake-ups of an agent's run: it is woken when it spends fuel (the engine yields
/// every fuel interval) and when a host call completes, so a counter that stops moving means
/// the agent stopped making progress. Wake-ups of the surrounding task (the watchdog's timer)
/// are not counted: only the agent's own waker counts.
struct Counted<F> {
    inner: Pin<Box<F>>,
    wakes: Arc<AtomicU64>,
    waker: Option<(std::task::Waker, std::task::Waker)>,
}

struct CountingWaker {
    inner: std::task::Waker,
    wakes: Arc<AtomicU64>,
}

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        self.inner.wake_by_ref();
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let reuse = matches!(&this.waker, Some((outer, _)) if outer.will_wake(cx.waker()));
        if !reuse {
            let counting = std::task::Waker::from(Arc::new(CountingWaker {
                inner: cx.waker().clone(),
                wakes: this.wakes.clone(),
            }));
            this.waker = Some((cx.waker().clone(), counting));
        }
        let waker = &this.waker.as_ref().expect("set above").1;
        this.inner.as_mut().poll(&mut TaskCx::from_waker(waker))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    TimedOut,
    Stalled,
}

enum Msg {
    Spawned {
        idx: usize,
        attempt: u32,
        agent_id: String,
    },
    Done {
        idx: usize,
        attempt: u32,
        report: Box<Result<AgentReport, Error>>,
        stop: Option<StopReason>,
        started_ms: u64,
        elapsed: Duration,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Retryable,
    Limit,
    InvalidInput,
    TimedOut,
    Stalled,
}

struct SubRun {
    id: String,
    state: SubtaskState,
    candidates: Vec<String>,
    agent_idx: usize,
    attempts_on_agent: u32,
    reassignments: u32,
    extensions: u32,
    time_limit_ms: Option<u64>,
    attempts: Vec<AttemptRecord>,
    agent_id: Option<String>,
    allocation: Option<ResourceAllocation>,
    waiting: Arc<AtomicBool>,
    backoff_until: Option<Instant>,
    output: Option<Value>,
    error: Option<String>,
    resumed: bool,
    level: usize,
    topo: usize,
}

struct Run {
    host: Arc<AgentHost>,
    ctx: ContextService,
    manifest: Arc<Manifest>,
    agents: Arc<BTreeMap<String, PreparedAgent>>,
    strategy: StrategyKind,
    run_id: String,
    started: Instant,
    deadline: Option<Instant>,
    subs: Vec<SubRun>,
    sync: Arc<SyncEngine>,
    resources: ResourceManager,
    tx: mpsc::UnboundedSender<Msg>,
    cancelled: Option<String>,
    window: u32,
    last_chain_agent: Option<String>,
    agent_stats: BTreeMap<String, (u64, u64, f64)>,
    comm_time: Duration,
    /// Summed wall time of completed attempts, unrounded (attempt records keep whole ms, which
    /// round a fast attempt to zero).
    busy_completed: Duration,
    comm_events: u64,
    peak_concurrency: u64,
    sync_reached: u64,
    sync_results: BTreeMap<String, Value>,
    resolved_at: BTreeMap<String, Instant>,
    released_at: BTreeMap<String, Instant>,
    status: Option<watch::Sender<ExecutionStatus>>,
    prereqs: Vec<Vec<usize>>,
    recorder: mpsc::UnboundedSender<NewEvent>,
}

/// Publishes a run's events in order, batching whatever queued up while a commit was in
/// flight; ends when the run drops its sender, after the last event is durable.
fn spawn_recorder(
    ctx: &ContextService,
) -> (mpsc::UnboundedSender<NewEvent>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<NewEvent>();
    let bus = ctx.bus().clone();
    let handle = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            if let Err(e) = bus.publish_batch(batch).await {
                tracing::warn!(error = %e, "recording run events");
            }
        }
    });
    (tx, handle)
}

/// Runs a planned task to the end. Errors are for a run that could not start (no context
/// store, unknown run to resume); everything that happens to subtasks is in the report.
pub async fn execute(
    host: Arc<AgentHost>,
    manifest: Arc<Manifest>,
    agents: Arc<BTreeMap<String, PreparedAgent>>,
    plan: &Plan,
    options: RunOptions,
) -> Result<RunReport, Error> {
    let ctx = host.context().cloned().ok_or_else(|| {
        Error::System(anyhow::anyhow!(
            "a coordinated run needs a context store: build the host with `with_context`"
        ))
    })?;
    let run_id = options.run_id.clone().unwrap_or_else(new_run_id);
    let run_doc = format!("run/{run_id}");
    let existing = ctx.get(OPERATOR, &run_doc).await.ok();
    if options.resume {
        let Some(prev) = &existing else {
            return Err(Error::field(
                "--resume",
                format!("no run `{run_id}` in this data directory"),
            ));
        };
        if prev.doc.get("task").and_then(Value::as_str) != Some(manifest.task.id.as_str()) {
            return Err(Error::field(
                "--resume",
                format!(
                    "run `{run_id}` is of task `{}`, not `{}`",
                    prev.doc.get("task").unwrap_or(&Value::Null),
                    manifest.task.id
                ),
            ));
        }
    } else if existing.is_some() {
        return Err(Error::field(
            "--run-id",
            format!("run `{run_id}` already exists; pass --resume to continue it"),
        ));
    }

    let (sync_tx, mut sync_rx) = mpsc::unbounded_channel();
    let sync = SyncEngine::new(
        &manifest.strategy.synchronization_points,
        Some((ctx.clone(), run_id.clone())),
        Some(sync_tx),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let order = topo_order(&manifest);
    let index: BTreeMap<&str, usize> = manifest
        .subtasks
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let subs: Vec<SubRun> = manifest
        .subtasks
        .iter()
        .map(|s| {
            let p = plan
                .subtasks
                .iter()
                .find(|p| p.id == s.id)
                .expect("plan covers every subtask");
            SubRun {
                id: s.id.clone(),
                state: SubtaskState::Pending,
                candidates: p.candidates.clone(),
                agent_idx: 0,
                attempts_on_agent: 0,
                reassignments: 0,
                extensions: 0,
                time_limit_ms: s.time_limit_ms.or(s.constraints.max_duration_ms),
                attempts: Vec::new(),
                agent_id: None,
                allocation: None,
                waiting: Arc::new(AtomicBool::new(false)),
                backoff_until: None,
                output: None,
                error: None,
                resumed: false,
                level: p.level,
                topo: order.iter().position(|x| x == &s.id).unwrap_or(0),
            }
        })
        .collect();
    let prereqs = manifest
        .subtasks
        .iter()
        .map(|s| {
            super::plan::direct_prereqs(&manifest, &s.id)
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    let started = Instant::now();
    let (recorder, recorder_task) = spawn_recorder(&ctx);
    let mut run = Run {
        recorder,
        host,
        ctx,
        strategy: plan.strategy,
        deadline: manifest
            .task
            .time_limit_ms
            .map(|ms| started + Duration::from_millis(ms)),
        resources: ResourceManager::new(manifest.resources.clone()),
        window: manifest.strategy.max_concurrent_agents,
        manifest,
        agents,
        run_id,
        started,
        subs,
        sync,
        tx,
        cancelled: None,
        last_chain_agent: None,
        agent_stats: BTreeMap::new(),
        comm_time: Duration::ZERO,
        busy_completed: Duration::ZERO,
        comm_events: 0,
        peak_concurrency: 0,
        sync_reached: 0,
        sync_results: BTreeMap::new(),
        resolved_at: BTreeMap::new(),
        released_at: BTreeMap::new(),
        status: options.status,
        prereqs,
    };
    if options.resume {
        run.load_previous().await;
    } else {
        run.write_doc(
            &run_doc,
            "run",
            json!({"task": run.manifest.task.id, "status": "running", "strategy": run.strategy.as_str()}),
        )
        .await;
    }
    run.event(
        "run-started",
        None,
        json!({"strategy": run.strategy.as_str(), "failureHandling": run.manifest.strategy.failure_handling.as_str(), "subtasks": run.subs.len(), "resumed": options.resume}),
    )
    .await;

    loop {
        // Record what the sync points did before scheduling on it, so that the events keep
        // cause before effect (a point resolves before the notice of it is queued).
        while let Ok(n) = sync_rx.try_recv() {
            run.on_sync(n).await;
        }
        run.schedule().await;
        run.publish_status();
        if run.subs.iter().all(|s| s.state.settled()) {
            break;
        }
        let wake = run.next_wake();
        // Sync notices first: a participant's completion is queued only after the notice of
        // the resolution that released it, and must be recorded after it.
        tokio::select! {
            biased;
            Some(n) = sync_rx.recv() => run.on_sync(n).await,
            Some(msg) = rx.recv() => run.on_msg(msg).await,
            _ = sleep_until_opt(wake) => run.on_timer().await,
        }
    }
    // Drain sync notices that arrived with the last messages.
    while let Ok(n) = sync_rx.try_recv() {
        run.on_sync(n).await;
    }
    let report = run.finish().await;
    // Every event is durable before the report is returned.
    let _ = recorder_task.await;
    Ok(report)
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn new_run_id() -> String {
    format!("run-{}", crate::model::random_hex(8))
}

impl Run {
    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn event(&mut self, kind: &str, sub: Option<usize>, mut data: Value) {
        let t = Instant::now();
        if let Value::Object(m) = &mut data {
            m.insert("kind".into(), json!(kind));
            m.insert("run".into(), json!(self.run_id));
            m.insert("atMs".into(), json!(self.ms()));
            if let Some(i) = sub {
                m.insert("subtask".into(), json!(self.subs[i].id));
            }
        }
        let ev = NewEvent::new(EventType::Custom)
            .context(format!("run/{}", self.run_id))
            .data(data);
        // Recorded in order by the recorder task, off the scheduling path.
        let _ = self.recorder.send(ev);
        tracing::debug!(run = %self.run_id, kind, "run event");
        self.comm_time += t.elapsed();
        self.comm_events += 1;
    }

    async fn write_doc(&mut self, id: &str, kind: &str, doc: Value) {
        let t = Instant::now();
        if let Err(e) = self.ctx.put_as_operator(id, kind, doc).await {
            tracing::warn!(context = id, error = %e, "writing a run document");
        }
        self.comm_time += t.elapsed();
        self.comm_events += 1;
    }

    async fn read_doc(&mut self, id: &str) -> Option<Value> {
        let t = Instant::now();
        let r = self.ctx.get(OPERATOR, id).await.ok().map(|v| v.doc);
        self.comm_time += t.elapsed();
        self.comm_events += 1;
        r
    }

    async fn load_previous(&mut self) {
        for i in 0..self.subs.len() {
            let id = format!("run/{}/output/{}", self.run_id, self.subs[i].id);
            if let Some(doc) = self.read_doc(&id).await {
                let s = &mut self.subs[i];
                s.state = SubtaskState::Completed;
                s.output = Some(doc);
                s.resumed = true;
            }
        }
        for p in self.manifest.strategy.synchronization_points.clone() {
            let id = format!("run/{}/sync/{}", self.run_id, p.id);
            if let Some(doc) = self.read_doc(&id).await {
                let outcome = match doc.get("failed").and_then(Value::as_str) {
                    Some(m) => Err(m.to_string()),
                    None => serde_json::from_value::<SyncOutcome>(doc.clone())
                        .map_err(|e| format!("stored outcome unreadable: {e}")),
                };
                self.sync.preload(&p.id, outcome);
                self.sync_results.insert(p.id.clone(), doc);
            }
        }
        let run_doc = format!("run/{}", self.run_id);
        let task = self.manifest.task.id.clone();
        self.write_doc(
            &run_doc,
            "run",
            json!({"task": task, "status": "running", "resumed": true, "strategy": self.strategy.as_str()}),
        )
        .await;
    }

    fn computing(&self) -> u32 {
        self.subs
            .iter()
            .filter(|s| s.state == SubtaskState::Running && !s.waiting.load(Ordering::Relaxed))
            .count() as u32
    }

    fn running(&self) -> usize {
        self.subs
            .iter()
            .filter(|s| s.state == SubtaskState::Running)
            .count()
    }

    /// Whether the unsettled subtasks form a chain (each pair ordered by dependency).
    fn remaining_is_chain(&self) -> bool {
        let left: Vec<usize> = (0..self.subs.len())
            .filter(|&i| !self.subs[i].state.settled())
            .collect();
        let anc = self.manifest.ancestors();
        left.iter().enumerate().all(|(k, &a)| {
            left[k + 1..].iter().all(|&b| {
                let (ia, ib) = (&self.subs[a].id, &self.subs[b].id);
                anc[ia].contains(ib) || anc[ib].contains(ia)
            })
        })
    }

    fn limit(&self) -> u32 {
        match self.strategy {
            StrategyKind::Sequential => 1,
            StrategyKind::Parallel | StrategyKind::Hybrid => {
                self.manifest.strategy.max_concurrent_agents
            }
            StrategyKind::Adaptive => {
                if self.remaining_is_chain() {
                    1
                } else {
                    self.window.max(1)
                }
            }
        }
    }

    /// `Ok(true)`: ready; `Ok(false)`: wait; `Err(reason)`: can never run.
    fn readiness(&self, i: usize) -> Result<bool, String> {
        let def = &self.manifest.subtasks[i];
        let mut ready = true;
        // A prerequisite that did not complete blocks this subtask for good when this subtask
        // needs it: named in `dependsOn`, or the source of a required input.
        let required_of = |src: &str| -> bool {
            def.depends_on.iter().any(|d| d == src)
                || def.inputs.iter().any(|inp| {
                    inp.required
                        && inp.from.iter().flat_map(|f| f.refs()).any(|r| {
                            matches!(Source::parse(r), Some(Source::Output { subtask, .. }) if subtask == src)
                        })
                })
        };
        for &p in &self.prereqs[i] {
            let s = &self.subs[p];
            if !s.state.settled() {
                ready = false;
                continue;
            }
            if s.state != SubtaskState::Completed && required_of(&s.id) {
                return Err(format!("`{}` {}", s.id, state_word(s.state)));
            }
        }
        for inp in &def.inputs {
            for r in inp.from.iter().flat_map(|f| f.refs()) {
                if let Some(Source::Sync(p)) = Source::parse(r) {
                    match self.sync.outcome(&p) {
                        None => ready = false,
                        Some(Err(m)) if inp.required => {
                            return Err(format!("sync point `{p}` failed: {m}"));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        if self.strategy == StrategyKind::Parallel {
            let wave = self
                .subs
                .iter()
                .filter(|s| !s.state.settled())
                .map(|s| s.level)
                .min()
                .unwrap_or(0);
            if self.subs[i].level > wave {
                ready = false;
            }
        }
        Ok(ready)
    }

    async fn schedule(&mut self) {
        if self.cancelled.is_some() {
            return;
        }
        loop {
            let mut changed = false;
            // Settle what can never run.
            for i in 0..self.subs.len() {
                if self.subs[i].state != SubtaskState::Pending {
                    continue;
                }
                if let Err(reason) = self.readiness(i) {
                    let fail =
                        self.manifest.strategy.failure_handling == FailureHandling::RetryCascade;
                    self.settle(
                        i,
                        if fail {
                            SubtaskState::Failed
                        } else {
                            SubtaskState::Skipped
                        },
                        Some(format!("dependency not met: {reason}")),
                    )
                    .await;
                    changed = true;
                }
            }
            let now = Instant::now();
            let mut ready: Vec<usize> = (0..self.subs.len())
                .filter(|&i| {
                    let s = &self.subs[i];
                    (s.state == SubtaskState::Pending
                        || (s.state == SubtaskState::Backoff
                            && s.backoff_until.is_some_and(|t| t <= now)))
                        && self.readiness(i) == Ok(true)
                })
                .collect();
            ready.sort_by_key(|&i| {
                (
                    std::cmp::Reverse(self.manifest.subtasks[i].priority),
                    self.subs[i].topo,
                )
            });
            let mut started_any = false;
            for i in ready {
                if self.computing() >= self.limit() {
                    break;
                }
                if self.start(i).await {
                    started_any = true;
                    changed = true;
                }
                if self.strategy == StrategyKind::Sequential && started_any {
                    break;
                }
            }
            if !changed {
                break;
            }
        }
        self.peak_concurrency = self.peak_concurrency.max(u64::from(self.computing()));
    }

    fn choose_agent(&mut self, i: usize) {
        if self.strategy != StrategyKind::Adaptive
            || self.subs[i].attempts_on_agent > 0
            || self.subs[i].reassignments > 0
        {
            return;
        }
        let cands = self.subs[i].candidates.clone();
        if self.remaining_is_chain()
            && let Some(prev) = &self.last_chain_agent
            && let Some(k) = cands.iter().position(|c| c == prev)
        {
            self.subs[i].agent_idx = k;
            return;
        }
        let est = self.manifest.subtasks[i].estimated_duration_ms.max(1) as f64;
        let short_on_time = self
            .deadline
            .is_some_and(|d| d.saturating_duration_since(Instant::now()).as_millis() as f64 <= est);
        let score = |name: &String| -> (u64, u64) {
            let (ok, failed, ratio_sum) =
                self.agent_stats.get(name).copied().unwrap_or((0, 0, 0.0));
            let mean_ratio = if ok == 0 { 1.0 } else { ratio_sum / ok as f64 };
            if short_on_time {
                ((mean_ratio * 1000.0) as u64, failed)
            } else {
                (failed, (mean_ratio * 1000.0) as u64)
            }
        };
        if let Some((k, _)) = cands.iter().enumerate().min_by_key(|(k, c)| (score(c), *k)) {
            self.subs[i].agent_idx = k;
        }
    }

    /// Starts an attempt; `false` when the resource budget has no room now.
    async fn start(&mut self, i: usize) -> bool {
        self.choose_agent(i);
        let agent_name = self.subs[i].candidates[self.subs[i].agent_idx].clone();
        let agent = self.agents[&agent_name].clone();
        let def = self.manifest.subtasks[i].clone();
        let mut spec = agent.spec.clone();
        // Policies match the agent by the kind the manifest declares, never by the name the
        // component gives itself.
        spec.name = Some(agent_name.clone());
        if let Some(m) = def.constraints.max_memory_mb {
            spec.resource_limits.max_memory_mb = spec.resource_limits.max_memory_mb.min(m);
        }
        if let Some(t) = &def.constraints.allowed_tools {
            spec.security_constraints.allowed_tools = t.clone();
        }
        let ext = self.subs[i].extensions;
        if ext > 0 {
            let f = self
                .manifest
                .strategy
                .retry
                .deadline_extension_factor
                .powi(ext as i32);
            let ceiling = self.host.runtime().config().max_execution_time_ms;
            spec.resource_limits.max_execution_time_ms =
                ((spec.resource_limits.max_execution_time_ms as f64 * f) as u64).min(ceiling);
        }
        let lifetime = Duration::from_millis(
            self.subs[i]
                .time_limit_ms
                .unwrap_or(spec.resource_limits.max_execution_time_ms)
                .max(spec.resource_limits.max_execution_time_ms),
        );
        let attempt = self.subs[i].attempts.len() as u32 + 1;
        let holder = format!("{}#{attempt}", def.id);
        let allocation = match self.resources.allocate(
            &holder,
            ResourceRequest {
                memory_mb: u64::from(spec.resource_limits.max_memory_mb),
                agents: 1,
            },
            lifetime,
        ) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(subtask = %def.id, error = %e, "waiting for resources");
                return false;
            }
        };
        let (inputs, missing) = self.gather_inputs(i);
        let mut inputs = inputs;
        if !missing.is_empty() && !def.inputs.iter().any(|x| x.name == "missing") {
            inputs.insert("missing".into(), json!(missing));
        }
        let input = json!({
            "subtask": def.id,
            "attempt": attempt,
            "inputs": inputs,
            "config": agent.config,
        });
        let task = TaskRequest {
            id: Some(format!("{}/{}/{attempt}", self.run_id, def.id)),
            description: if def.description.is_empty() {
                def.id.clone()
            } else {
                def.description.clone()
            },
            input,
        };
        let s = &mut self.subs[i];
        s.state = SubtaskState::Running;
        s.agent_id = None;
        s.allocation = Some(allocation);
        s.attempts_on_agent += 1;
        s.waiting.store(false, Ordering::Relaxed);
        let handle = SyncHandle {
            engine: self.sync.clone(),
            participant: def.id.clone(),
            waiting: s.waiting.clone(),
        };
        let time_limit = s.time_limit_ms.map(|ms| {
            let f = self
                .manifest
                .strategy
                .retry
                .deadline_extension_factor
                .powi(ext as i32);
            Duration::from_millis((ms as f64 * f) as u64)
        });
        let started_ms = self.ms();
        self.subs[i].attempts.push(AttemptRecord {
            attempt,
            agent: agent_name.clone(),
            agent_id: None,
            started_ms,
            duration_ms: 0,
            outcome: "running".into(),
            usage: None,
            then: None,
        });
        self.event(
            "subtask-started",
            Some(i),
            json!({"agent": agent_name, "attempt": attempt, "missingInputs": missing}),
        )
        .await;
        let host = self.host.clone();
        let tx = self.tx.clone();
        let stall = Duration::from_millis(self.manifest.strategy.stall_window_ms);
        tokio::spawn(attempt_task(AttemptArgs {
            host,
            agent,
            spec,
            handle,
            task,
            time_limit,
            stall,
            tx,
            idx: i,
            attempt,
            started_ms,
        }));
        true
    }

    /// The subtask's inputs. A `<subtask>.<output>` value is the output document the
    /// coordinator committed to the shared context (`run/<run>/output/<subtask>`) before any
    /// dependent started; it keeps the copy it committed (or, resuming, the one it loaded from
    /// the context) instead of reading it back.
    fn gather_inputs(&self, i: usize) -> (Map<String, Value>, Vec<String>) {
        let def = &self.manifest.subtasks[i];
        let mut out = Map::new();
        let mut missing = Vec::new();
        for inp in &def.inputs {
            if let Some(v) = &inp.value {
                out.insert(inp.name.clone(), substitute_run(v, &self.run_id));
                continue;
            }
            let Some(from) = &inp.from else { continue };
            let mut values = Vec::new();
            for r in from.refs() {
                let v = match Source::parse(r) {
                    Some(Source::Output { subtask, output }) => self
                        .subs
                        .iter()
                        .find(|s| s.id == subtask && s.state == SubtaskState::Completed)
                        .and_then(|s| s.output.as_ref())
                        .and_then(|o| o.get(&output).cloned()),
                    Some(Source::Sync(p)) => match self.sync.outcome(&p) {
                        Some(Ok(o)) => Some(o.result),
                        _ => None,
                    },
                    None => None,
                };
                match v {
                    Some(v) => values.push(v),
                    None => missing.push(r.to_string()),
                }
            }
            let value = match from {
                super::manifest::FromRef::One(_) => values.pop().unwrap_or(Value::Null),
                super::manifest::FromRef::Many(_) => Value::Array(values),
            };
            out.insert(inp.name.clone(), value);
        }
        (out, missing)
    }

    fn next_wake(&self) -> Option<Instant> {
        let backoff = self.subs.iter().filter_map(|s| {
            (s.state == SubtaskState::Backoff)
                .then_some(s.backoff_until)
                .flatten()
        });
        backoff
            .chain(self.deadline.filter(|_| self.cancelled.is_none()))
            .min()
    }

    async fn on_timer(&mut self) {
        if let Some(d) = self.deadline
            && Instant::now() >= d
            && self.cancelled.is_none()
        {
            let ms = self.manifest.task.time_limit_ms.unwrap_or(0);
            self.cancel(format!(
                "the task's time limit of {ms} ms passed (task.timeLimitMs)"
            ))
            .await;
        }
    }

    async fn cancel(&mut self, reason: String) {
        if self.cancelled.is_some() {
            return;
        }
        self.cancelled = Some(reason.clone());
        self.event("run-cancelled", None, json!({"reason": reason}))
            .await;
        for i in 0..self.subs.len() {
            match self.subs[i].state {
                SubtaskState::Running => {
                    if let Some(id) = &self.subs[i].agent_id {
                        let _ = self.host.terminate(id, &format!("run cancelled: {reason}"));
                    }
                }
                SubtaskState::Pending | SubtaskState::Backoff => {
                    self.settle(i, SubtaskState::Cancelled, Some(reason.clone()))
                        .await;
                }
                _ => {}
            }
        }
        self.sync.cancel_all(&format!("run cancelled: {reason}"));
    }

    async fn settle(&mut self, i: usize, state: SubtaskState, error: Option<String>) {
        let s = &mut self.subs[i];
        s.state = state;
        s.error = error.clone();
        s.backoff_until = None;
        if let Some(a) = s.allocation.take() {
            self.resources.release(&a);
        }
        self.sync.mark_absent(&self.subs[i].id);
        let kind = match state {
            SubtaskState::Completed => "subtask-completed",
            SubtaskState::Failed => "subtask-failed",
            SubtaskState::Skipped => "subtask-skipped",
            SubtaskState::Cancelled => "subtask-cancelled",
            _ => "subtask-state",
        };
        let agent = self.subs[i].attempts.last().map(|a| a.agent.clone());
        self.event(kind, Some(i), json!({"agent": agent, "error": error}))
            .await;
    }

    async fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Spawned {
                idx,
                attempt,
                agent_id,
            } => {
                let s = &mut self.subs[idx];
                if s.attempts.len() as u32 == attempt {
                    s.agent_id = Some(agent_id.clone());
                    if let Some(a) = s.attempts.last_mut() {
                        a.agent_id = Some(agent_id.clone());
                    }
                }
                if let Some(reason) = &self.cancelled {
                    let _ = self
                        .host
                        .terminate(&agent_id, &format!("run cancelled: {reason}"));
                }
            }
            Msg::Done {
                idx,
                attempt,
                report,
                stop,
                started_ms,
                elapsed,
            } => {
                self.on_done(idx, attempt, *report, stop, started_ms, elapsed)
                    .await
            }
        }
    }

    async fn on_done(
        &mut self,
        i: usize,
        attempt: u32,
        report: Result<AgentReport, Error>,
        stop: Option<StopReason>,
        started_ms: u64,
        elapsed: Duration,
    ) {
        if let Some(a) = self.subs[i].allocation.take() {
            self.resources.release(&a);
        }
        self.subs[i].agent_id = None;
        let agent = self.subs[i].attempts[attempt as usize - 1].agent.clone();
        let duration_ms = elapsed.as_millis() as u64;
        let (usage, result) = match report {
            Ok(r) => {
                let usage = r.usage.clone();
                (Some(usage), r.into_result().map_err(Some))
            }
            Err(Error::Spawn(f, _)) => (None, Err(Some(f))),
            Err(e) => (
                None,
                Err(Some(AgentFailure::Host {
                    message: e.to_string(),
                })),
            ),
        };
        // Outputs and success criteria.
        let def = self.manifest.subtasks[i].clone();
        let result = result.and_then(|out| match check_output(&def, &out, duration_ms) {
            Ok(()) => Ok(out),
            Err(m) => Err(Some(AgentFailure::AgentError {
                error_kind: "criteria".into(),
                message: m,
            })),
        });
        {
            let rec = &mut self.subs[i].attempts[attempt as usize - 1];
            rec.duration_ms = duration_ms;
            rec.started_ms = started_ms;
            rec.usage = usage;
        }
        let ratio = duration_ms as f64 / def.estimated_duration_ms.max(1) as f64;
        match result {
            Ok(output) => {
                let e = self.agent_stats.entry(agent.clone()).or_default();
                e.0 += 1;
                e.2 += ratio;
                self.busy_completed += elapsed;
                self.window = (self.window + 1).min(self.manifest.strategy.max_concurrent_agents);
                self.last_chain_agent = Some(agent.clone());
                self.subs[i].attempts[attempt as usize - 1].outcome = "completed".into();
                let id = format!("run/{}/output/{}", self.run_id, def.id);
                self.write_doc(&id, "subtask-output", output.clone()).await;
                self.subs[i].output = Some(output);
                self.settle(i, SubtaskState::Completed, None).await;
            }
            Err(failure) => {
                self.agent_stats.entry(agent.clone()).or_default().1 += 1;
                self.window = (self.window / 2).max(1);
                let failure = failure.unwrap_or(AgentFailure::Host {
                    message: "no result".into(),
                });
                let class = match (stop, &failure) {
                    (Some(StopReason::TimedOut), _) => Class::TimedOut,
                    (Some(StopReason::Stalled), _) => Class::Stalled,
                    (_, AgentFailure::LimitExceeded { .. }) => Class::Limit,
                    (_, AgentFailure::AgentError { error_kind, .. })
                        if error_kind == "invalid-input" =>
                    {
                        Class::InvalidInput
                    }
                    _ => Class::Retryable,
                };
                let message = match stop {
                    Some(StopReason::TimedOut) => format!(
                        "attempt timed out after {duration_ms} ms (timeLimitMs) and was terminated"
                    ),
                    Some(StopReason::Stalled) => format!(
                        "no progress for {} ms (stallWindowMs); the agent was terminated",
                        self.manifest.strategy.stall_window_ms
                    ),
                    None => failure.to_string(),
                };
                self.subs[i].attempts[attempt as usize - 1].outcome = message.clone();
                self.event(
                    "attempt-failed",
                    Some(i),
                    json!({"agent": agent, "attempt": attempt, "error": message, "class": format!("{class:?}")}),
                )
                .await;
                if self.cancelled.is_some() {
                    let reason = self.cancelled.clone();
                    self.settle(i, SubtaskState::Cancelled, reason).await;
                    return;
                }
                self.on_failure(i, attempt, class, message).await;
            }
        }
    }

    async fn on_failure(&mut self, i: usize, attempt: u32, class: Class, message: String) {
        match self.manifest.strategy.failure_handling {
            FailureHandling::FailFast => {
                self.settle(i, SubtaskState::Failed, Some(message.clone()))
                    .await;
                self.cancel(format!("`{}` failed: {message}", self.subs[i].id))
                    .await;
            }
            FailureHandling::GracefulDegradation => {
                self.settle(i, SubtaskState::Failed, Some(message)).await;
            }
            FailureHandling::RetryCascade => {
                let policy = self.manifest.strategy.retry.clone();
                let s = &self.subs[i];
                let next_agent = s.agent_idx + 1 < s.candidates.len();
                let (then, state) =
                    if class == Class::Retryable && s.attempts_on_agent < policy.max_attempts {
                        let backoff = policy.backoff_ms as f64
                            * policy.backoff_factor.powi(s.attempts_on_agent as i32 - 1);
                        let until = Instant::now() + Duration::from_millis(backoff as u64);
                        let s = &mut self.subs[i];
                        s.backoff_until = Some(until);
                        (
                            format!("retry in {} ms", backoff as u64),
                            SubtaskState::Backoff,
                        )
                    } else if class != Class::InvalidInput
                        && s.reassignments < policy.max_reassignments
                        && next_agent
                    {
                        let s = &mut self.subs[i];
                        s.agent_idx += 1;
                        s.reassignments += 1;
                        s.attempts_on_agent = 0;
                        (
                            format!("reassign to `{}`", s.candidates[s.agent_idx]),
                            SubtaskState::Pending,
                        )
                    } else if class == Class::TimedOut && s.extensions < policy.max_extensions {
                        let s = &mut self.subs[i];
                        s.extensions += 1;
                        s.attempts_on_agent = 0;
                        (
                            format!("extend the deadline ×{}", policy.deadline_extension_factor),
                            SubtaskState::Pending,
                        )
                    } else {
                        self.settle(i, SubtaskState::Failed, Some(message)).await;
                        return;
                    };
                let action = then.split_whitespace().next().unwrap_or("").to_string();
                self.subs[i].attempts[attempt as usize - 1].then = Some(then.clone());
                self.subs[i].state = state;
                let kind = match action.as_str() {
                    "retry" => "subtask-retry",
                    "reassign" => "subtask-reassigned",
                    _ => "deadline-extended",
                };
                self.event(kind, Some(i), json!({"attempt": attempt, "then": then}))
                    .await;
            }
        }
    }

    async fn on_sync(&mut self, n: SyncNotice) {
        match n {
            SyncNotice::Waiting { participant, point } => {
                self.event(
                    "sync-arrived",
                    None,
                    json!({"participant": participant, "point": point}),
                )
                .await;
            }
            SyncNotice::Released { point, at, .. } => {
                let last = self.released_at.entry(point).or_insert(at);
                *last = (*last).max(at);
            }
            SyncNotice::TimedOutWaiting { point } => {
                self.event("sync-timeout-waiting", None, json!({"point": point}))
                    .await;
            }
            SyncNotice::Resolved { point, outcome, at } => {
                self.sync_reached += 1;
                self.resolved_at.insert(point.clone(), at);
                let doc = match &outcome {
                    Ok(o) => serde_json::to_value(&**o).unwrap_or(Value::Null),
                    Err(m) => json!({"point": point, "failed": m}),
                };
                self.event("sync-resolved", None, doc.clone()).await;
                let id = format!("run/{}/sync/{point}", self.run_id);
                self.write_doc(&id, "sync-outcome", doc.clone()).await;
                self.sync_results.insert(point, doc);
            }
        }
    }

    fn status_snapshot(&self, status: &str) -> ExecutionStatus {
        let settled = self.subs.iter().filter(|s| s.state.settled()).count();
        ExecutionStatus {
            coordination_id: self.run_id.clone(),
            status: status.into(),
            progress: settled as f64 / self.subs.len().max(1) as f64,
            active_agents: self.running(),
            completed_tasks: settled,
            total_tasks: self.subs.len(),
            subtasks: self
                .subs
                .iter()
                .map(|s| SubtaskStatus {
                    id: s.id.clone(),
                    state: s.state,
                    agent: s.attempts.last().map(|a| a.agent.clone()),
                    agent_id: s.agent_id.clone(),
                    attempts: s.attempts.len() as u32,
                })
                .collect(),
        }
    }

    fn publish_status(&self) {
        if let Some(tx) = &self.status {
            tx.send_replace(self.status_snapshot("running"));
        }
    }

    async fn finish(mut self) -> RunReport {
        let wall = self.started.elapsed();
        let all_ok = self.subs.iter().all(|s| s.state == SubtaskState::Completed);
        let any_ok = self.subs.iter().any(|s| s.state == SubtaskState::Completed);
        let mut missing = Vec::new();
        for (i, s) in self.subs.iter().enumerate() {
            if s.state != SubtaskState::Completed {
                for o in &self.manifest.subtasks[i].outputs {
                    missing.push(format!("{}.{}", s.id, o.name()));
                }
            }
        }
        let error = if all_ok {
            None
        } else if let Some(c) = &self.cancelled {
            Some(c.clone())
        } else {
            let failed: Vec<String> = self
                .subs
                .iter()
                .filter(|s| s.state != SubtaskState::Completed)
                .map(|s| format!("{} ({})", s.id, state_word(s.state)))
                .collect();
            Some(format!("not completed: {}", failed.join(", ")))
        };
        let mut metrics = CoordinationMetrics {
            peak_concurrency: self.peak_concurrency.max(1),
            synchronization_points_reached: self.sync_reached,
            resources: self.resources.stats(),
            ..CoordinationMetrics::default()
        };
        let mut total_ms = 0u64;
        let mut n_attempts = 0u64;
        for s in &self.subs {
            for a in &s.attempts {
                n_attempts += 1;
                total_ms += a.duration_ms;
                if a.agent_id.is_some() || a.usage.is_some() {
                    metrics.total_agents += 1;
                }
                if a.outcome == "completed" {
                    metrics.successful_agents += 1;
                } else {
                    metrics.failed_agents += 1;
                }
                if let Some(u) = &a.usage {
                    let t = &mut metrics.total_resource_usage;
                    t.fuel_consumed += u.fuel_consumed;
                    t.memory_mb += u.peak_memory_bytes as f64 / (1024.0 * 1024.0);
                    t.execution_time_ms += u.wall_time_us / 1000;
                    t.tool_calls += u.tool_calls;
                    t.network_requests += u.network_allowed + u.network_denied;
                    t.file_operations += u.file_operations;
                    t.host_calls += u.host_calls;
                }
            }
        }
        metrics.average_execution_time = if n_attempts == 0 {
            0.0
        } else {
            total_ms as f64 / n_attempts as f64
        };
        let wall_ms = wall.as_secs_f64() * 1000.0;
        metrics.coordination_efficiency = if wall_ms <= 0.0 {
            0.0
        } else {
            let busy_ms = self.busy_completed.as_secs_f64() * 1000.0;
            (busy_ms / (wall_ms * metrics.peak_concurrency as f64)).min(1.0)
        };
        let sinks: Vec<usize> = (0..self.subs.len())
            .filter(|&i| !self.prereqs.iter().any(|p| p.contains(&i)))
            .collect();
        let aggregated: Map<String, Value> = sinks
            .iter()
            .filter_map(|&i| {
                self.subs[i]
                    .output
                    .clone()
                    .map(|o| (self.subs[i].id.clone(), o))
            })
            .collect();
        let status = if all_ok {
            "completed"
        } else if self.cancelled.is_some() {
            "cancelled"
        } else {
            "failed"
        };
        self.event(
            "run-finished",
            None,
            json!({"status": status, "missing": missing}),
        )
        .await;
        let run_doc = format!("run/{}", self.run_id);
        let summary: Map<String, Value> = self
            .subs
            .iter()
            .map(|s| (s.id.clone(), json!(state_word(s.state))))
            .collect();
        let task = self.manifest.task.id.clone();
        self.write_doc(
            &run_doc,
            "run",
            json!({"task": task, "status": status, "subtasks": summary, "missing": missing}),
        )
        .await;
        // How long the last waiting participant took to be released after the resolution
        // (the last arrival, for a barrier that completed).
        for (point, resolved) in &self.resolved_at {
            if let (Some(released), Some(Value::Object(doc))) = (
                self.released_at.get(point),
                self.sync_results.get_mut(point),
            ) {
                doc.insert(
                    "allReleasedUs".into(),
                    json!(released.saturating_duration_since(*resolved).as_micros() as u64),
                );
            }
        }
        metrics.communication_overhead = self.comm_time.as_secs_f64() * 1000.0;
        metrics.communication_events = self.comm_events;
        if let Some(tx) = &self.status {
            tx.send_replace(self.status_snapshot(status));
        }
        RunReport {
            coordination_id: self.run_id.clone(),
            task_id: self.manifest.task.id.clone(),
            success: all_ok,
            partial: !all_ok && any_ok,
            error,
            missing,
            results: self
                .subs
                .iter()
                .map(|s| SubtaskResult {
                    id: s.id.clone(),
                    state: s.state,
                    agent: s.attempts.last().map(|a| a.agent.clone()),
                    attempts: s.attempts.clone(),
                    output: s.output.clone(),
                    error: s.error.clone(),
                    resumed: s.resumed,
                })
                .collect(),
            aggregated_result: Value::Object(aggregated),
            synchronization: self.sync_results.clone(),
            metrics,
            strategy: self.strategy,
            failure_handling: self.manifest.strategy.failure_handling,
            execution_time: wall.as_millis() as u64,
        }
    }
}

/// `{run}` in literal string inputs becomes the run id (e.g. a per-run context id).
fn substitute_run(v: &Value, run_id: &str) -> Value {
    match v {
        Value::String(s) if s.contains("{run}") => Value::String(s.replace("{run}", run_id)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|x| substitute_run(x, run_id)).collect())
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), substitute_run(x, run_id)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn state_word(s: SubtaskState) -> &'static str {
    match s {
        SubtaskState::Pending => "pending",
        SubtaskState::Running => "running",
        SubtaskState::Backoff => "waiting to retry",
        SubtaskState::Completed => "completed",
        SubtaskState::Failed => "failed",
        SubtaskState::Skipped => "skipped",
        SubtaskState::Cancelled => "cancelled",
    }
}

/// Declared outputs present and success criteria met.
fn check_output(
    def: &super::manifest::SubtaskDef,
    out: &Value,
    duration_ms: u64,
) -> Result<(), String> {
    let missing: Vec<&str> = def
        .outputs
        .iter()
        .map(|o| o.name())
        .filter(|n| out.get(n).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the agent's output lacks declared output(s) {}",
            missing.join(", ")
        ));
    }
    for c in &def.success_criteria {
        check_criterion(c, out, duration_ms)?;
    }
    Ok(())
}

fn check_criterion(c: &SuccessCriterion, out: &Value, duration_ms: u64) -> Result<(), String> {
    let at = || {
        c.measurement
            .as_deref()
            .and_then(|p| out.pointer(p))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let threshold = c.threshold.unwrap_or(0.0);
    let ok = match c.criterion.as_str() {
        "outputs-present" => true,
        "max-duration-ms" => duration_ms as f64 <= threshold,
        "min-value" => at().as_f64().is_some_and(|v| v >= threshold),
        "max-value" => at().as_f64().is_some_and(|v| v <= threshold),
        "non-empty" => {
            !matches!(at(), Value::Null | Value::Bool(false))
                && at() != json!(0)
                && at() != json!("")
                && at() != json!([])
                && at() != json!({})
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "success criterion `{}` not met (measurement {}, threshold {}; took {duration_ms} ms)",
            c.criterion,
            c.measurement
                .as_deref()
                .map(|p| format!("{p} = {}", at()))
                .unwrap_or_else(|| "-".into()),
            threshold
        ))
    }
}

struct AttemptArgs {
    host: Arc<AgentHost>,
    agent: PreparedAgent,
    spec: crate::spec::SubAgentSpecification,
    handle: SyncHandle,
    task: TaskRequest,
    time_limit: Option<Duration>,
    stall: Duration,
    tx: mpsc::UnboundedSender<Msg>,
    idx: usize,
    attempt: u32,
    started_ms: u64,
}

async fn attempt_task(a: AttemptArgs) {
    let started = Instant::now();
    let mut stop = None;
    let report = match a
        .host
        .spawn_with(&a.agent.component, a.spec, Some(a.handle.clone()))
        .await
    {
        Err(e) => Err(e),
        Ok(agent) => {
            let id = agent.id().to_string();
            let _ = a.tx.send(Msg::Spawned {
                idx: a.idx,
                attempt: a.attempt,
                agent_id: id.clone(),
            });
            let polls = Arc::new(AtomicU64::new(0));
            let mut run = Counted {
                inner: Box::pin(agent.run(a.task)),
                wakes: polls.clone(),
                waker: None,
            };
            let tick = (a.stall / 4).clamp(Duration::from_millis(5), Duration::from_millis(500));
            let deadline = a.time_limit.map(|l| started + l);
            let mut last = 0;
            let mut last_change = Instant::now();
            loop {
                tokio::select! {
                    biased;
                    r = &mut run => break Ok(r),
                    _ = sleep_until_opt(deadline.filter(|_| stop.is_none())) => {
                        stop = Some(StopReason::TimedOut);
                        let _ = a.host.terminate(&id, "the subtask's time limit passed");
                    }
                    _ = tokio::time::sleep(tick) => {
                        let p = polls.load(Ordering::Relaxed);
                        if p != last || a.handle.waiting.load(Ordering::Relaxed) {
                            last = p;
                            last_change = Instant::now();
                        } else if stop.is_none() && last_change.elapsed() >= a.stall {
                            stop = Some(StopReason::Stalled);
                            let _ = a.host.terminate(&id, &format!("no progress for {} ms", a.stall.as_millis()));
                        }
                    }
                }
            }
        }
    };
    let _ = a.tx.send(Msg::Done {
        idx: a.idx,
        attempt: a.attempt,
        report: Box::new(report),
        stop,
        started_ms: a.started_ms,
        elapsed: started.elapsed(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn subtask(extra: &str) -> super::super::manifest::SubtaskDef {
        let text = format!(
            "[task]\nid = \"t\"\n[strategy]\ntype = \"hybrid\"\n[agents.w]\ncomponent = \"guest:worker\"\n[[subtasks]]\nid = \"s\"\n{extra}\n"
        );
        Manifest::parse(&text, Path::new("m.toml"))
            .expect("manifest parses")
            .subtasks
            .remove(0)
    }

    #[test]
    fn run_ids_are_substituted_in_every_string_of_a_literal_input() {
        let v = json!({"ctx": "run/{run}/x", "list": ["{run}", 1, {"deep": "a{run}b"}], "n": 2});
        assert_eq!(
            substitute_run(&v, "run-1"),
            json!({"ctx": "run/run-1/x", "list": ["run-1", 1, {"deep": "arun-1b"}], "n": 2})
        );
    }

    #[test]
    fn a_missing_declared_output_fails_the_attempt_naming_it() {
        let def = subtask("outputs = [\"a\", \"b\"]");
        assert_eq!(check_output(&def, &json!({"a": 1, "b": null}), 0), Ok(()));
        let e = check_output(&def, &json!({"a": 1}), 0).unwrap_err();
        assert!(e.contains("lacks declared output(s) b"), "{e}");
    }

    /// Each criterion just met passes and just missed fails, naming the measurement.
    #[test]
    fn success_criteria_pass_at_their_threshold_and_fail_past_it() {
        let criterion = |kind: &str, threshold: f64, at: &str| {
            subtask(&format!(
                "successCriteria = [{{ criterion = \"{kind}\", threshold = {threshold:?}, measurement = \"{at}\" }}]"
            ))
        };
        let out = json!({"score": 0.8, "items": [1], "none": []});
        let min = criterion("min-value", 0.8, "/score");
        assert_eq!(check_output(&min, &out, 0), Ok(()));
        let e = check_output(&criterion("min-value", 0.81, "/score"), &out, 0).unwrap_err();
        assert!(
            e.contains("`min-value` not met (measurement /score = 0.8"),
            "{e}"
        );
        assert_eq!(
            check_output(&criterion("max-value", 0.8, "/score"), &out, 0),
            Ok(())
        );
        assert!(check_output(&criterion("max-value", 0.79, "/score"), &out, 0).is_err());
        // A measurement that is missing or not a number never meets a bound.
        assert!(check_output(&criterion("min-value", 0.0, "/nothing"), &out, 0).is_err());
        assert_eq!(
            check_output(&criterion("non-empty", 0.0, "/items"), &out, 0),
            Ok(())
        );
        assert!(check_output(&criterion("non-empty", 0.0, "/none"), &out, 0).is_err());
        let dur = criterion("max-duration-ms", 100.0, "");
        assert_eq!(check_output(&dur, &out, 100), Ok(()));
        let e = check_output(&dur, &out, 101).unwrap_err();
        assert!(e.contains("took 101 ms"), "{e}");
        assert!(check_output(&criterion("no-such-criterion", 0.0, ""), &out, 0).is_err());
    }
}
