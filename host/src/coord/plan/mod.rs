//! Task distribution (the seeds' `distributeTask`): load and describe every agent, match
//! subtasks to capable agents, analyse the dependency graph, and lay out the synchronization
//! and fallback plans. `qi-host plan <manifest>` prints what this returns.

mod agents;
mod analysis;
#[cfg(test)]
mod tests;

use agents::incapable;
pub use agents::prepare_agents;
pub use analysis::plan;

use super::graph::TaskGraph;
use super::manifest::{
    FailureHandling, Manifest, OutputDef, SecurityLevel, Source, StrategyKind, manifest_error,
    version_at_least,
};
use super::sync::SyncPointDef;
use crate::agents::{AgentDescription, AgentHost};
use crate::engine::LoadedComponent;
use crate::error::Error;
use crate::spec::{NetworkAccessLevel, SubAgentSpecification};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where bundled guests (`guest:<name>`) are looked up when no directory is given:
/// `$QI_GUEST_DIR`, else `$CARGO_TARGET_DIR/guests/wasm32-wasip2/guest`, else
/// `target/guests/wasm32-wasip2/guest` under the current directory (where
/// `cargo build -p qi-guest-artifacts` puts them).
pub fn default_guest_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QI_GUEST_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("guests").join("wasm32-wasip2").join("guest")
}

/// An agent kind, loaded and described.
#[derive(Debug, Clone)]
pub struct PreparedAgent {
    /// Name in the manifest.
    pub name: String,
    /// The component.
    pub component: Arc<LoadedComponent>,
    /// Spec with directory paths resolved against the manifest.
    pub spec: SubAgentSpecification,
    /// Handed to the agent as `config`.
    pub config: Value,
    /// What the component says about itself.
    pub description: AgentDescription,
    /// Spec capabilities plus declared ones.
    pub capabilities: BTreeSet<String>,
}

/// The seeds' `DistributionAnalysis`, computed from the graph and the estimates.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DistributionAnalysis {
    /// Whether the subtasks are distributed across agents at all.
    pub suitable: bool,
    /// Why (or why not).
    pub reason: String,
    /// Agents worth running at once: the widest dependency level, capped by
    /// `maxConcurrentAgents`.
    pub recommended_agents: usize,
    /// Dependency levels: level k holds subtasks whose longest prerequisite chain has k links.
    pub levels: Vec<Vec<String>>,
    /// Independent groups worth running concurrently (levels with more than one subtask).
    pub parallelization_opportunities: Vec<String>,
    /// Sum of `estimatedDurationMs`.
    pub total_estimated_ms: u64,
    /// Longest chain of estimates.
    pub critical_path_ms: u64,
    /// The subtasks on it.
    pub critical_path: Vec<String>,
    /// Estimated time with the strategy: `max(criticalPath, total / concurrency)` for DAG
    /// strategies, the total for `sequential`.
    pub estimated_ms: u64,
    /// `1 - estimated / total`: the share of time distribution is expected to save.
    pub estimated_benefit: f64,
}

/// The seeds' `AgentAllocation`: which subtasks an agent kind is planned for.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentAllocation {
    /// Agent kind.
    pub agent: String,
    /// Subtasks it runs first (each in a fresh instance).
    pub assigned_subtasks: Vec<String>,
    /// Memory per instance, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    /// Highest priority among its subtasks.
    pub priority: i32,
    /// Agent kinds whose subtasks it waits for.
    pub dependencies: Vec<String>,
}

/// A subtask as planned.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedSubtask {
    /// Id.
    pub id: String,
    /// Capable agents, in the order they are tried.
    pub candidates: Vec<String>,
    /// Subtasks it waits for.
    pub depends_on: Vec<String>,
    /// Sync points whose result it takes.
    pub waits_for_points: Vec<String>,
    /// Sync points it takes part in.
    pub participates_in: Vec<String>,
    /// Dependency level.
    pub level: usize,
}

/// A path results travel on.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommunicationChannel {
    /// Context id (outputs) or sync point id.
    pub id: String,
    /// `direct` (one consumer), `broadcast` (several) or `barrier` (a sync point).
    #[serde(rename = "type")]
    pub channel_type: String,
    /// Producer first, then consumers (or the point's participants).
    pub participants: Vec<String>,
    /// The manifest's `communicationProtocol` (for a declared channel: its own type; for a
    /// sync point: `host`).
    pub protocol: String,
    /// A channel the run creates from `[[strategy.channels]]`: who sends, who receives, its
    /// bounds and where its messages are kept. `None` for outputs and sync points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared: Option<DeclaredChannel>,
}

/// A `[[strategy.channels]]` entry as the run creates it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredChannel {
    /// Subtasks that may send.
    pub producers: Vec<String>,
    /// Subtasks that may receive.
    pub consumers: Vec<String>,
    /// Longest body, bytes.
    pub max_message_bytes: u64,
    /// Messages held at once (per mailbox on `direct`).
    pub max_depth: u64,
    /// `message-queue`: redelivery after this long unacked, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    /// `message-queue`: deliveries before dead-lettering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    /// Where the messages are kept: context ids `run/<run>/channel/<id>/<message>`, or the
    /// events of context `run/<run>/channel/<id>` for a topic.
    pub stored_at: String,
}

/// The seeds' `SynchronizationPlan`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SynchronizationPlan {
    /// The points.
    pub points: Vec<SyncPointDef>,
    /// `strict` when every point fails rather than proceeds; else `flexible`.
    pub strategy: String,
    /// What an absent participant does.
    pub fallback_behavior: String,
}

/// One fallback step.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FallbackAction {
    /// When it applies.
    pub condition: String,
    /// What happens.
    pub action: String,
    /// Its parameters.
    pub parameters: Value,
}

/// The seeds' `FallbackPlan`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FallbackPlan {
    /// What counts as a failure.
    pub triggers: Vec<String>,
    /// The steps, in order.
    pub actions: Vec<FallbackAction>,
    /// The manifest's failure handling.
    pub recovery_strategy: String,
}

/// The seeds' `TaskDistribution`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Task id.
    pub task_id: String,
    /// Strategy used (after the analysis).
    pub strategy: StrategyKind,
    /// Failure handling.
    pub failure_handling: FailureHandling,
    /// Analysis.
    pub analysis: DistributionAnalysis,
    /// Per agent kind.
    pub agent_allocations: Vec<AgentAllocation>,
    /// Per subtask.
    pub subtasks: Vec<PlannedSubtask>,
    /// Data paths.
    pub communication_channels: Vec<CommunicationChannel>,
    /// Sync points.
    pub synchronization_plan: SynchronizationPlan,
    /// Failure handling, spelled out.
    pub fallback_plan: FallbackPlan,
}
