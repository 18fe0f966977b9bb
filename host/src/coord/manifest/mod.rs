//! The task manifest (TOML): agents, a distributed task with subtasks, and a coordination
//! strategy with synchronization points. Keys are camelCase, as in the seeds.
//!
//! Parsing refuses unknown keys. [`Manifest::check`] then validates everything that does not
//! need a component (ids, references, dependency cycles, sync points); the planner adds the
//! checks that do (components exist and load, specs within their isolation ceilings, a capable
//! agent for every subtask). Every error names the key and, where it can, the manifest line.
//!
//! See `examples/README.md` for a commented manifest.

mod bounds;
#[cfg(test)]
mod channel_tests;
mod channels;
mod check;
#[cfg(test)]
mod tests;

pub use bounds::*;

use super::sync::{SyncCondition, SyncPointDef, SyncPointType};
use crate::error::Error;
use crate::spec::{AgentType, IsolationLevel, SubAgentSpecification};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// The distributed task.
    pub task: TaskDef,
    /// How it is coordinated.
    pub strategy: StrategyDef,
    /// Host budgets the run's resource manager allocates from.
    #[serde(default)]
    pub resources: ResourceBudget,
    /// Agent kinds by name: a component and the spec each instance gets.
    pub agents: BTreeMap<String, AgentDef>,
    /// The subtasks.
    pub subtasks: Vec<SubtaskDef>,
    /// Model providers, aliases and prices for the run's agents (`qi:agent/llm`), in the shape
    /// of `crate::llm::config`; the operator's `--llm-config` file is added on top (its names
    /// win). A manifest never names a key (`apiKeyEnv`, `apiKeyFile`): it chooses where
    /// requests go, so a key it named could be sent anywhere. Its providers are keyless (local
    /// servers), and its aliases and prices may name the operator's providers.
    #[serde(default)]
    pub llm: Option<crate::llm::LlmConfig>,
    /// Subtask and point ids → their index, built on the first lookup.
    #[serde(skip)]
    index: std::sync::OnceLock<Index>,
}

/// See [`Manifest::subtask`].
#[derive(Debug, Clone, Default)]
struct Index {
    subtasks: HashMap<String, usize>,
    points: HashMap<String, usize>,
}

/// The seeds' `DistributedTask` (its subtasks are the manifest's `[[subtasks]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskDef {
    /// Task id.
    pub id: String,
    /// What the task is.
    #[serde(default)]
    pub description: String,
    /// How complex the task is.
    #[serde(default)]
    pub complexity: Complexity,
    /// Whether it may be split into subtasks run by different agents.
    #[serde(default = "yes")]
    pub decomposable: bool,
    /// Whether its subtasks may run at the same time.
    #[serde(default = "yes")]
    pub parallelizable: bool,
    /// Priority of the whole task.
    #[serde(default)]
    pub priority: Priority,
    /// Overall time limit; when it passes, everything still running is terminated.
    #[serde(default)]
    pub time_limit_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Task complexity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Complexity {
    /// One step.
    Simple,
    /// A few steps.
    #[default]
    Moderate,
    /// Many steps.
    Complex,
}

/// Task priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Low.
    Low,
    /// Medium.
    #[default]
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

/// The seeds' `CoordinationStrategy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StrategyDef {
    /// Scheduling strategy.
    #[serde(rename = "type")]
    pub kind: StrategyKind,
    /// Most agents computing at once (an agent waiting at a sync point does not count).
    #[serde(default = "default_concurrency")]
    pub max_concurrent_agents: u32,
    /// What a failed subtask does to the run.
    #[serde(default)]
    pub failure_handling: FailureHandling,
    /// Synchronization points.
    #[serde(default)]
    pub synchronization_points: Vec<SyncPointDef>,
    /// The default type of the run's `channels`. Outputs always travel through the shared
    /// context and every step is an event, whatever the protocol.
    #[serde(default)]
    pub communication_protocol: CommunicationProtocol,
    /// The channels the run creates (see [`crate::coord::channels`]).
    #[serde(default)]
    pub channels: Vec<crate::coord::channels::ChannelDef>,
    /// Most body bytes all channels of the run hold together (messages not yet received,
    /// acked or, on topics, sent). Default 64 MiB, 1 KiB to 1 GiB; a send past it is refused
    /// as `full`.
    #[serde(default = "default_max_channel_bytes")]
    pub max_channel_bytes: u64,
    /// Retry, reassignment and deadline extension (used by `retry-cascade`).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// An agent that makes no progress (no fuel spent, no host call) for this long is treated
    /// as failed and terminated. Waiting at a sync point is not a stall.
    #[serde(default = "default_stall_window")]
    pub stall_window_ms: u64,
    /// Most payload bytes (votes, contributions, checkpoint states, as JSON) all sync points
    /// of the run hold together; an arrival past it is refused as an invalid payload. Default
    /// 64 MiB, at most [`MAX_SYNC_BYTES`]. Each point also has its own `maxResultBytes`.
    #[serde(default = "default_max_sync_bytes")]
    pub max_sync_bytes: u64,
}

fn default_max_channel_bytes() -> u64 {
    crate::coord::channels::DEFAULT_CHANNEL_BYTES
}

fn default_max_sync_bytes() -> u64 {
    64 << 20
}

fn default_concurrency() -> u32 {
    4
}

fn default_stall_window() -> u64 {
    30_000
}

/// Scheduling strategy (see the `exec` module for exactly what each does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// Topological order, one subtask at a time.
    Sequential,
    /// Dependency levels in waves; each wave's subtasks run concurrently.
    Parallel,
    /// DAG scheduling: each subtask starts the moment its inputs exist.
    Hybrid,
    /// DAG scheduling with concurrency and agent choice adapted to what is observed.
    Adaptive,
}

impl StrategyKind {
    /// Name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Sequential => "sequential",
            StrategyKind::Parallel => "parallel",
            StrategyKind::Hybrid => "hybrid",
            StrategyKind::Adaptive => "adaptive",
        }
    }
}

/// Failure handling.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum FailureHandling {
    /// Cancel everything at the first failure.
    #[default]
    FailFast,
    /// Finish independent branches, skip dependents, return a partial result.
    GracefulDegradation,
    /// Retry, reassign, extend the deadline, then fail dependents.
    RetryCascade,
}

impl FailureHandling {
    /// Name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureHandling::FailFast => "fail-fast",
            FailureHandling::GracefulDegradation => "graceful-degradation",
            FailureHandling::RetryCascade => "retry-cascade",
        }
    }
}

/// A channel type (the seeds' `communicationProtocol`; see `wit/channels.wit`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum CommunicationProtocol {
    /// A bounded mailbox per consumer; a producer sends to one consumer by name.
    Direct,
    /// A durable work queue shared by the consumers, with ack and redelivery.
    MessageQueue,
    /// A topic on the event bus: every consumer receives every message.
    #[default]
    EventDriven,
}

/// Retry policy of `retry-cascade`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts on one agent before reassigning (1 = no retry).
    pub max_attempts: u32,
    /// Backoff before the second attempt.
    pub backoff_ms: u64,
    /// Each further backoff is multiplied by this.
    pub backoff_factor: f64,
    /// How many times a subtask may move to another capable agent.
    pub max_reassignments: u32,
    /// After reassignments, a subtask that timed out runs once more with its time limit
    /// multiplied by this.
    pub deadline_extension_factor: f64,
    /// How many deadline extensions.
    pub max_extensions: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 2,
            backoff_ms: 100,
            backoff_factor: 2.0,
            max_reassignments: 2,
            deadline_extension_factor: 1.5,
            max_extensions: 1,
        }
    }
}

/// Host budgets for one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ResourceBudget {
    /// Sum of `maxMemoryMB` over the agents alive at once.
    #[serde(rename = "maxTotalMemoryMB")]
    pub max_total_memory_mb: u64,
    /// Allocations (live agents) at once.
    pub max_concurrent_allocations: u32,
    /// An allocation not released within this long after its attempt's deadline expires and
    /// is reclaimed.
    pub allocation_grace_ms: u64,
}

impl Default for ResourceBudget {
    fn default() -> Self {
        ResourceBudget {
            max_total_memory_mb: 4096,
            max_concurrent_allocations: 256,
            allocation_grace_ms: 5_000,
        }
    }
}

/// An agent kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentDef {
    /// `guest:<name>` for a bundled guest, or a `.wasm` path relative to the manifest.
    pub component: String,
    /// The spec every instance is spawned with (directory host paths are relative to the
    /// manifest).
    #[serde(default)]
    pub spec: SubAgentSpecification,
    /// Handed to the agent as `config` in every task input.
    #[serde(default)]
    pub config: Value,
}

/// The seeds' `SubTask`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubtaskDef {
    /// Unique id.
    pub id: String,
    /// What to do; the agent's task description.
    #[serde(default)]
    pub description: String,
    /// Preferred agent (name in `[agents]`); otherwise any capable agent.
    #[serde(default)]
    pub agent: Option<String>,
    /// What an agent needs to run this.
    #[serde(default, alias = "agentRequirements")]
    pub requirements: Requirements,
    /// Named inputs.
    #[serde(default)]
    pub inputs: Vec<InputDef>,
    /// Named outputs: fields of the agent's output object.
    #[serde(default, alias = "expectedOutputs")]
    pub outputs: Vec<OutputDef>,
    /// Subtasks that must finish first (besides those whose outputs are inputs).
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Execution constraints.
    #[serde(default, alias = "executionConstraints")]
    pub constraints: ExecutionConstraints,
    /// Checks on the result; an unmet one fails the attempt.
    #[serde(default)]
    pub success_criteria: Vec<SuccessCriterion>,
    /// Expected duration (planning and adaptive scheduling).
    #[serde(default = "default_estimate")]
    pub estimated_duration_ms: u64,
    /// Higher runs first among ready subtasks.
    #[serde(default)]
    pub priority: i32,
    /// Time limit of one attempt (the coordinator terminates the agent when it passes).
    #[serde(default)]
    pub time_limit_ms: Option<u64>,
}

fn default_estimate() -> u64 {
    1_000
}

/// The seeds' `AgentRequirements`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirements {
    /// Capabilities the agent must have (its spec's plus those its component declares).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `high`: sandbox only; `medium`: sandbox or restricted; `low`: any isolation level.
    #[serde(default)]
    pub security_level: SecurityLevel,
    /// Agent type the component must declare.
    #[serde(default)]
    pub agent_type: Option<AgentType>,
    /// Lowest component version (`describe().version`, dotted numbers).
    #[serde(default)]
    pub minimum_version: Option<String>,
}

/// Required security level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityLevel {
    /// Any isolation level.
    #[default]
    Low,
    /// `sandbox` or `restricted`.
    Medium,
    /// `sandbox` only.
    High,
}

impl SecurityLevel {
    /// Whether an agent at `level` satisfies this.
    pub fn allows(self, level: IsolationLevel) -> bool {
        match self {
            SecurityLevel::Low => true,
            SecurityLevel::Medium => level != IsolationLevel::Monitored,
            SecurityLevel::High => level == IsolationLevel::Sandbox,
        }
    }
}

/// A named input: a literal `value`, or `from` other subtasks' outputs (`<subtask>.<output>`)
/// or a sync point's result (`sync.<point>`). Several `from` references make a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InputDef {
    /// Name in the agent's `inputs`.
    pub name: String,
    /// A literal value; `{run}` inside its strings becomes the run id.
    #[serde(default)]
    pub value: Option<Value>,
    /// Where the value comes from.
    #[serde(default)]
    pub from: Option<FromRef>,
    /// When `false`, the subtask still runs if a source failed; the input then holds what is
    /// available and `inputs.missing` lists what is not.
    #[serde(default = "yes")]
    pub required: bool,
    /// Informational type name.
    #[serde(default, rename = "type")]
    pub value_type: Option<String>,
}

/// One or several references.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FromRef {
    /// One reference: the input is its value.
    One(String),
    /// Several: the input is the list of their values.
    Many(Vec<String>),
}

impl FromRef {
    /// The references.
    pub fn refs(&self) -> Vec<&str> {
        match self {
            FromRef::One(s) => vec![s.as_str()],
            FromRef::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `<subtask>.<output>`.
    Output {
        /// Producing subtask.
        subtask: String,
        /// Its output name.
        output: String,
    },
    /// `sync.<point>`.
    Sync(String),
}

impl Source {
    /// Parses `a.b` / `sync.p`.
    pub fn parse(r: &str) -> Option<Source> {
        let (a, b) = r.split_once('.')?;
        if a.is_empty() || b.is_empty() {
            return None;
        }
        Some(if a == "sync" {
            Source::Sync(b.to_string())
        } else {
            Source::Output {
                subtask: a.to_string(),
                output: b.to_string(),
            }
        })
    }
}

/// An output: a name, or a table with a type and description.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutputDef {
    /// Just the name.
    Name(String),
    /// With details.
    Full {
        /// Name.
        name: String,
        /// Type.
        #[serde(default, rename = "type")]
        output_type: Option<String>,
        /// Description.
        #[serde(default)]
        description: Option<String>,
    },
}

impl OutputDef {
    /// The output's name.
    pub fn name(&self) -> &str {
        match self {
            OutputDef::Name(n) => n,
            OutputDef::Full { name, .. } => name,
        }
    }
}

/// The seeds' `ExecutionConstraints`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutionConstraints {
    /// Attempt time limit when `timeLimitMs` is not set.
    #[serde(default)]
    pub max_duration_ms: Option<u64>,
    /// The agent's memory limit is lowered to this for the subtask.
    #[serde(default, rename = "maxMemoryMB")]
    pub max_memory_mb: Option<u32>,
    /// The agent's allowed tools are narrowed to these (each must be allowed by its spec).
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// Only agents with network access qualify.
    #[serde(default)]
    pub requires_network: bool,
}

/// The seeds' `TaskSuccessCriterion`, evaluated on the agent's output.
///
/// - `outputs-present`: every declared output is in the result (always checked);
/// - `max-duration-ms`: the attempt took at most `threshold` ms;
/// - `min-value` / `max-value`: the number at JSON Pointer `measurement` is ≥ / ≤ `threshold`;
/// - `non-empty`: the value at `measurement` is not null, empty, 0 or false.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuccessCriterion {
    /// Kind.
    pub criterion: String,
    /// Threshold.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// JSON Pointer into the output.
    #[serde(default)]
    pub measurement: Option<String>,
}

/// The error for a manifest of `len` bytes, past [`MAX_MANIFEST_BYTES`].
fn too_large(path: &Path, len: u64) -> Error {
    Error::Manifest {
        path: path.display().to_string(),
        line: None,
        key: String::new(),
        message: format!(
            "the manifest is {len} bytes or more; the most accepted is {MAX_MANIFEST_BYTES} bytes"
        ),
    }
}

/// A manifest error: where and what.
pub(crate) fn manifest_error(
    text: &str,
    path: &Path,
    key: impl Into<String>,
    needle: Option<&str>,
    message: impl Into<String>,
) -> Error {
    Error::Manifest {
        path: path.display().to_string(),
        line: needle.and_then(|n| locate(text, n)),
        key: key.into(),
        message: message.into(),
    }
}

/// The 1-based line of the first quoted occurrence of `needle` (or of `needle` as a key).
fn locate(text: &str, needle: &str) -> Option<usize> {
    let quoted = format!("\"{needle}\"");
    let keyed = format!("{needle} =");
    let table = format!(".{needle}]");
    text.lines()
        .position(|l| {
            l.contains(&quoted) || l.trim_start().starts_with(&keyed) || l.contains(&table)
        })
        .map(|i| i + 1)
}

impl Manifest {
    /// Reads and parses a manifest file and runs [`check`](Self::check).
    pub fn load(path: &Path) -> Result<(Manifest, String), Error> {
        let unreadable = |e: std::io::Error| Error::Manifest {
            path: path.display().to_string(),
            line: None,
            key: String::new(),
            message: format!("cannot read the manifest: {e}"),
        };
        // Never more than the bound is read, whatever the file (or device) holds.
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(unreadable)?,
                MAX_MANIFEST_BYTES as u64 + 1,
            ),
            &mut text,
        )
        .map_err(unreadable)?;
        let m = Manifest::parse(&text, path)?;
        m.check(&text, path)?;
        Ok((m, text))
    }

    /// Parses TOML text; unknown keys and wrong types are errors with their line.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, Error> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(too_large(path, text.len() as u64));
        }
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let start = e.span().map(|s| s.start.min(text.len()));
            // An unknown key is reported on its table; point at the key itself.
            let key_line = e
                .message()
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
                .zip(start)
                .and_then(|(key, start)| {
                    let before = text[..start].matches('\n').count() + 1;
                    text[start..]
                        .lines()
                        .position(|l| {
                            let t = l.trim_start();
                            t.strip_prefix(key)
                                .is_some_and(|rest| rest.trim_start().starts_with('='))
                        })
                        .map(|i| before + i)
                });
            let line = key_line.or_else(|| start.map(|s| text[..s].matches('\n').count() + 1));
            Error::Manifest {
                path: path.display().to_string(),
                line,
                key: String::new(),
                message: e.message().trim().to_string(),
            }
        })
    }

    /// The directory relative paths are resolved against.
    pub fn base_dir(path: &Path) -> PathBuf {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The subtask with `id`.
    pub fn subtask(&self, id: &str) -> Option<&SubtaskDef> {
        // O(1) through the index; the fields are public, so a lookup the index gets wrong (the
        // manifest changed after it was built) falls back to a scan.
        match self.lookup().subtasks.get(id) {
            Some(&i) if self.subtasks.get(i).is_some_and(|s| s.id == id) => Some(&self.subtasks[i]),
            _ => self.subtasks.iter().find(|s| s.id == id),
        }
    }

    /// The sync point with `id`.
    pub fn point(&self, id: &str) -> Option<&SyncPointDef> {
        let points = &self.strategy.synchronization_points;
        match self.lookup().points.get(id) {
            Some(&i) if points.get(i).is_some_and(|p| p.id == id) => Some(&points[i]),
            _ => points.iter().find(|p| p.id == id),
        }
    }

    fn lookup(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut index = Index::default();
            for (i, s) in self.subtasks.iter().enumerate() {
                index.subtasks.entry(s.id.clone()).or_insert(i);
            }
            for (i, p) in self.strategy.synchronization_points.iter().enumerate() {
                index.points.entry(p.id.clone()).or_insert(i);
            }
            index
        })
    }

    /// What each subtask waits for: subtasks (explicit and through inputs) and sync points.
    pub fn dependencies(&self) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
        self.subtasks
            .iter()
            .map(|s| {
                let mut subtasks: BTreeSet<String> = s.depends_on.iter().cloned().collect();
                let mut points = BTreeSet::new();
                for i in &s.inputs {
                    for r in i.from.iter().flat_map(FromRef::refs) {
                        match Source::parse(r) {
                            Some(Source::Output { subtask, .. }) => {
                                subtasks.insert(subtask);
                            }
                            Some(Source::Sync(p)) => {
                                points.insert(p);
                            }
                            None => {}
                        }
                    }
                }
                (s.id.clone(), (subtasks, points))
            })
            .collect()
    }

    /// Every subtask's transitive prerequisites (subtasks only; a sync point input counts as
    /// its participants).
    pub fn ancestors(&self) -> BTreeMap<String, BTreeSet<String>> {
        let deps = self.dependencies();
        let direct = |id: &str| -> Vec<String> {
            let Some((subs, points)) = deps.get(id) else {
                return Vec::new();
            };
            let mut v: Vec<String> = subs.iter().cloned().collect();
            for p in points {
                if let Some(def) = self.point(p) {
                    v.extend(def.participants.iter().cloned());
                }
            }
            v
        };
        let mut out = BTreeMap::new();
        for s in &self.subtasks {
            let mut seen = BTreeSet::new();
            let mut todo = direct(&s.id);
            while let Some(x) = todo.pop() {
                if seen.insert(x.clone()) {
                    todo.extend(direct(&x));
                }
            }
            out.insert(s.id.clone(), seen);
        }
        out
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Compares dotted version numbers (`1.2.10` > `1.2.9`); non-numeric parts compare as text.
pub fn version_at_least(have: &str, want: &str) -> bool {
    let parts = |s: &str| -> Vec<String> { s.split(['.', '-']).map(str::to_string).collect() };
    let (h, w) = (parts(have), parts(want));
    for i in 0..h.len().max(w.len()) {
        let a = h.get(i).map(String::as_str).unwrap_or("0");
        let b = w.get(i).map(String::as_str).unwrap_or("0");
        let ord = match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord == std::cmp::Ordering::Greater;
        }
    }
    true
}
