//! What a run reports: subtask states and attempts, metrics, live status and options.

use super::*;

/// Where a subtask is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
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
    /// Microseconds of that wall time spent inside sync calls (waiting at points).
    pub sync_wait_us: u64,
    /// `completed`, or why it failed.
    pub outcome: String,
    /// Measured usage, when it ran.
    pub usage: Option<crate::sandbox::UsageReceipt>,
    /// What the coordinator did next: `retry`, `reassign`, `extend-deadline`, or nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
}

/// A subtask's result.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
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
    /// Model calls (`qi:agent/llm`), replayed ones included.
    pub llm_calls: u64,
    /// Model calls answered from a recording.
    pub llm_replayed: u64,
    /// Input tokens of model calls.
    pub input_tokens: u64,
    /// Output tokens of model calls.
    pub output_tokens: u64,
    /// US dollars the live model calls cost, from the configured prices.
    pub cost: f64,
}

/// The seeds' `CoordinationMetrics`, all measured.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
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
    /// Communication time, ms: what the coordinator's scheduling path spent moving results
    /// through the shared context (output writes, input reads) and queueing events, plus the
    /// time the run's event recorder spent committing those events (in order, in batches, off
    /// the scheduling path, so the two may overlap with agents' work).
    pub communication_overhead: f64,
    /// Messages: context reads/writes, events, sync arrivals.
    pub communication_events: u64,
    /// Σ over completed attempts of (wall time − time in sync calls) / (run wall time × peak
    /// agents computing at once). Not clamped: failed attempts and sync waits lower it; a
    /// value above 1 would mean the peak was sampled low (it is sampled after each scheduling
    /// pass).
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
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
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
    /// What each channel (`[[strategy.channels]]`) carried, by id.
    pub channels: BTreeMap<String, crate::coord::channels::ChannelReport>,
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
