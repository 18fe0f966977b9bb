//! Coordinated execution (the seeds' `executeDistributedTask` and `monitorExecution`).
//!
//! Every subtask attempt runs in a fresh agent instance spawned from its agent kind. Outputs
//! are written to the shared context (`run/<run>/output/<subtask>`, one document per subtask)
//! and dependents read their inputs from there. Every step is an event on the bus under the
//! context id `run/<run>` (`qi-host events tail --filter context=run/<run>`).
//!
//! # Strategies
//!
//! `sequential`, `parallel` (waves by dependency level), `hybrid` (DAG) and `adaptive` (a
//! window and agent choice that follow what the run observes) decide how many subtasks
//! compute at once, which ready subtask may start and which agent runs it: see
//! [`crate::coord::strategy`], one file per strategy. The task graph (prerequisites, order,
//! levels, ancestors) is built once per run ([`crate::coord::graph`]).
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
//!   `retry.maxAttempts`; then reassign to a capable agent kind not tried yet, up to
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

use super::channels::ChannelHub;
use super::graph::TaskGraph;
use super::manifest::{
    FailureHandling, Manifest, RetryPolicy, Source, StrategyKind, SuccessCriterion,
};
use super::plan::{Plan, PreparedAgent};
use super::resources::{ResourceAllocation, ResourceManager, ResourceRequest, ResourceStats};
use super::strategy::{self, Strategy};
use super::sync::{SyncEngine, SyncHandle, SyncNotice, SyncOutcome};
use crate::agents::{AgentHost, AgentReport, TaskRequest};
use crate::context::{ContextService, OPERATOR};
use crate::error::{AgentFailure, Error};
use crate::events::{EventType, NewEvent};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context as TaskCx, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

mod attempt;
mod criteria;
mod failure;
mod metrics;
mod prespawn;
mod progress;
mod report;
mod resume;
mod scheduler;
#[cfg(test)]
mod tests;
mod watchdog;

pub use report::{
    AttemptRecord, CoordinationMetrics, ExecutionStatus, RunOptions, RunReport, SubtaskResult,
    SubtaskState, SubtaskStatus, TotalUsage,
};

use attempt::Msg;
use criteria::check_output;
use failure::Class;
use progress::spawn_recorder;
use watchdog::{AttemptArgs, attempt_task};

struct SubRun {
    id: String,
    state: SubtaskState,
    candidates: Vec<String>,
    agent_idx: usize,
    /// Indexes into `candidates` of the agents an attempt ran on.
    tried: BTreeSet<usize>,
    attempts_on_agent: u32,
    reassignments: u32,
    extensions: u32,
    time_limit_ms: Option<u64>,
    attempts: Vec<AttemptRecord>,
    agent_id: Option<String>,
    allocation: Option<ResourceAllocation>,
    waiting: Arc<AtomicBool>,
    /// Microseconds the current attempt spent in sync calls.
    sync_waited_us: Arc<AtomicU64>,
    /// Set by the current attempt's watchdog once it is stopping the agent.
    stopping: Arc<AtomicBool>,
    /// Why the last try to start it found no resources.
    blocked: Option<String>,
    backoff_until: Option<Instant>,
    output: Option<Value>,
    error: Option<String>,
    resumed: bool,
    /// Its next attempt's agent, started while the output before it commits.
    prespawn: Option<prespawn::Prespawn>,
}

impl SubRun {
    /// A pending subtask that has not run.
    fn new(id: String, candidates: Vec<String>, time_limit_ms: Option<u64>) -> SubRun {
        SubRun {
            id,
            state: SubtaskState::Pending,
            candidates,
            agent_idx: 0,
            tried: BTreeSet::new(),
            attempts_on_agent: 0,
            reassignments: 0,
            extensions: 0,
            time_limit_ms,
            attempts: Vec::new(),
            agent_id: None,
            allocation: None,
            waiting: Arc::new(AtomicBool::new(false)),
            sync_waited_us: Arc::new(AtomicU64::new(0)),
            stopping: Arc::new(AtomicBool::new(false)),
            blocked: None,
            backoff_until: None,
            output: None,
            error: None,
            resumed: false,
            prespawn: None,
        }
    }
}

struct Run {
    host: Arc<AgentHost>,
    ctx: ContextService,
    manifest: Arc<Manifest>,
    agents: Arc<BTreeMap<String, PreparedAgent>>,
    /// The strategy the plan chose.
    kind: StrategyKind,
    /// Its decisions (limit, admission, agent choice).
    strategy: Box<dyn Strategy>,
    graph: Arc<TaskGraph>,
    run_id: String,
    started: Instant,
    deadline: Option<Instant>,
    subs: Vec<SubRun>,
    sync: Arc<SyncEngine>,
    channels: Arc<ChannelHub>,
    resources: ResourceManager,
    tx: mpsc::UnboundedSender<Msg>,
    cancelled: Option<String>,
    /// Tells attempts still starting that the run was cancelled.
    cancel_tx: watch::Sender<bool>,
    comm_time: Duration,
    /// Summed computing time of completed attempts (wall time minus time in sync calls),
    /// unrounded (attempt records keep whole ms, which round a fast attempt to zero).
    busy_completed: Duration,
    comm_events: u64,
    peak_concurrency: u64,
    sync_reached: u64,
    sync_results: BTreeMap<String, Value>,
    resolved_at: BTreeMap<String, Instant>,
    released_at: BTreeMap<String, Instant>,
    status: Option<watch::Sender<ExecutionStatus>>,
    recorder: mpsc::UnboundedSender<NewEvent>,
    /// Prespawned agents dropped unused, awaited before the run returns.
    dropped_prespawns: prespawn::Dropped,
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
    sync.limit_total_bytes(manifest.strategy.max_sync_bytes);
    let channels = ChannelHub::new(
        &manifest.strategy.channels,
        manifest.strategy.communication_protocol,
        manifest.strategy.max_channel_bytes,
        Some((ctx.clone(), run_id.clone())),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let graph = Arc::new(TaskGraph::new(&manifest));
    let planned: HashMap<&str, &super::plan::PlannedSubtask> =
        plan.subtasks.iter().map(|p| (p.id.as_str(), p)).collect();
    let subs: Vec<SubRun> = manifest
        .subtasks
        .iter()
        .map(|s| {
            SubRun::new(
                s.id.clone(),
                planned[s.id.as_str()].candidates.clone(),
                s.time_limit_ms.or(s.constraints.max_duration_ms),
            )
        })
        .collect();
    let started = Instant::now();
    let (recorder, recorder_task) = spawn_recorder(&ctx);
    let mut run = Run {
        recorder,
        host,
        ctx,
        kind: plan.strategy,
        strategy: strategy::for_kind(plan.strategy, manifest.strategy.max_concurrent_agents),
        graph,
        deadline: manifest
            .task
            .time_limit_ms
            .and_then(|ms| started.checked_add(Duration::from_millis(ms))),
        resources: ResourceManager::new(manifest.resources.clone()),
        manifest,
        agents,
        run_id,
        started,
        subs,
        sync,
        channels,
        tx,
        cancelled: None,
        cancel_tx: watch::channel(false).0,
        comm_time: Duration::ZERO,
        busy_completed: Duration::ZERO,
        comm_events: 0,
        peak_concurrency: 0,
        sync_reached: 0,
        sync_results: BTreeMap::new(),
        resolved_at: BTreeMap::new(),
        released_at: BTreeMap::new(),
        status: options.status,
        dropped_prespawns: Default::default(),
    };
    if options.resume {
        run.load_previous().await?;
    } else {
        run.write_doc(
            &run_doc,
            "run",
            json!({"task": run.manifest.task.id, "status": "running", "strategy": run.kind.as_str()}),
        )
        .await;
    }
    run.event(
        "run-started",
        None,
        json!({"strategy": run.kind.as_str(), "failureHandling": run.manifest.strategy.failure_handling.as_str(), "subtasks": run.subs.len(), "resumed": options.resume}),
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
        // Nothing in flight and still stuck: every running agent waits at a point that only
        // subtasks unable to start could complete.
        if rx.is_empty() && sync_rx.is_empty() && run.break_deadlock().await {
            continue;
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
    run.reap_prespawns().await;
    let mut report = run.finish().await;
    // Every event is durable before the report is returned; their commits count as
    // communication.
    let committing = recorder_task.await.unwrap_or_default();
    report.metrics.communication_overhead += committing.as_secs_f64() * 1000.0;
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
    pub(super) fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) async fn event(&mut self, kind: &str, sub: Option<usize>, mut data: Value) {
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

    pub(super) async fn write_doc(&mut self, id: &str, kind: &str, doc: Value) {
        let t = Instant::now();
        if let Err(e) = self.ctx.put_as_operator(id, kind, doc).await {
            tracing::warn!(context = id, error = %e, "writing a run document");
        }
        self.comm_time += t.elapsed();
        self.comm_events += 1;
    }

    pub(super) async fn read_doc(&mut self, id: &str) -> Option<Value> {
        let t = Instant::now();
        let r = self.ctx.get(OPERATOR, id).await.ok().map(|v| v.doc);
        self.comm_time += t.elapsed();
        self.comm_events += 1;
        r
    }

    pub(super) async fn settle(&mut self, i: usize, state: SubtaskState, error: Option<String>) {
        let s = &mut self.subs[i];
        s.state = state;
        s.error = error.clone();
        s.backoff_until = None;
        s.prespawn = None;
        if let Some(a) = s.allocation.take() {
            self.resources.release(&a);
        }
        self.sync.mark_absent(&self.subs[i].id);
        self.channels.participant_over(&self.subs[i].id);
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
