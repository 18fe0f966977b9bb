//! The task manifest (TOML): agents, a distributed task with subtasks, and a coordination
//! strategy with synchronization points. Keys are camelCase, as in the seeds.
//!
//! Parsing refuses unknown keys. [`Manifest::check`] then validates everything that does not
//! need a component (ids, references, dependency cycles, sync points); the planner adds the
//! checks that do (components exist and load, specs within their isolation ceilings, a capable
//! agent for every subtask). Every error names the key and, where it can, the manifest line.
//!
//! See `examples/README.md` for a commented manifest.

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
    /// How results travel. qi-host always moves outputs through the shared context and records
    /// every step as an event; the protocol is reported in the plan.
    #[serde(default)]
    pub communication_protocol: CommunicationProtocol,
    /// Retry, reassignment and deadline extension (used by `retry-cascade`).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// An agent that makes no progress (no fuel spent, no host call) for this long is treated
    /// as failed and terminated. Waiting at a sync point is not a stall.
    #[serde(default = "default_stall_window")]
    pub stall_window_ms: u64,
}

fn default_concurrency() -> u32 {
    4
}

fn default_stall_window() -> u64 {
    30_000
}

/// Scheduling strategy (see the `exec` module for exactly what each does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
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

/// Communication protocol (seed field; see [`StrategyDef::communication_protocol`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CommunicationProtocol {
    /// Outputs handed straight to dependents.
    Direct,
    /// Through a queue.
    MessageQueue,
    /// Through events.
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
        let text = std::fs::read_to_string(path).map_err(|e| Error::Manifest {
            path: path.display().to_string(),
            line: None,
            key: String::new(),
            message: format!("cannot read the manifest: {e}"),
        })?;
        let m = Manifest::parse(&text, path)?;
        m.check(&text, path)?;
        Ok((m, text))
    }

    /// Parses TOML text; unknown keys and wrong types are errors with their line.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, Error> {
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
        self.subtasks.iter().find(|s| s.id == id)
    }

    /// The sync point with `id`.
    pub fn point(&self, id: &str) -> Option<&SyncPointDef> {
        self.strategy
            .synchronization_points
            .iter()
            .find(|p| p.id == id)
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

    /// Checks everything that needs no component. `text` and `path` locate errors.
    pub fn check(&self, text: &str, path: &Path) -> Result<(), Error> {
        let err = |key: String, needle: Option<&str>, msg: String| {
            manifest_error(text, path, key, needle, msg)
        };
        if self.task.id.trim().is_empty() {
            return Err(err(
                "task.id".into(),
                None,
                "must not be empty, e.g. `id = \"code-review\"`".into(),
            ));
        }
        if self.strategy.max_concurrent_agents == 0 {
            return Err(err(
                "strategy.maxConcurrentAgents".into(),
                Some("maxConcurrentAgents"),
                "must be at least 1".into(),
            ));
        }
        let r = &self.strategy.retry;
        if r.max_attempts == 0 {
            return Err(err(
                "strategy.retry.maxAttempts".into(),
                Some("maxAttempts"),
                "must be at least 1 (1 means no retry)".into(),
            ));
        }
        if !(r.backoff_factor >= 1.0 && r.backoff_factor.is_finite()) {
            return Err(err(
                "strategy.retry.backoffFactor".into(),
                Some("backoffFactor"),
                "must be a number ≥ 1".into(),
            ));
        }
        if !(r.deadline_extension_factor > 1.0 && r.deadline_extension_factor.is_finite()) {
            return Err(err(
                "strategy.retry.deadlineExtensionFactor".into(),
                Some("deadlineExtensionFactor"),
                "must be a number > 1, e.g. 1.5".into(),
            ));
        }
        if self.strategy.stall_window_ms == 0 {
            return Err(err(
                "strategy.stallWindowMs".into(),
                Some("stallWindowMs"),
                "must be at least 1".into(),
            ));
        }
        if self.agents.is_empty() {
            return Err(err(
                "agents".into(),
                None,
                "declare at least one agent: [agents.worker] component = \"guest:worker\"".into(),
            ));
        }
        for (name, a) in &self.agents {
            if !valid_id(name) {
                return Err(err(
                    format!("agents.{name}"),
                    Some(name),
                    "agent names use letters, digits, `-` and `_`".into(),
                ));
            }
            if a.component.trim().is_empty() {
                return Err(err(
                    format!("agents.{name}.component"),
                    Some(name),
                    "must name a component: `guest:<name>` or a path to a .wasm file".into(),
                ));
            }
        }
        if self.subtasks.is_empty() {
            return Err(err(
                "subtasks".into(),
                None,
                "declare at least one [[subtasks]]".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.subtasks.iter().enumerate() {
            if !valid_id(&s.id) || s.id == "sync" {
                return Err(err(
                    format!("subtasks[{i}].id"),
                    Some(&s.id),
                    format!(
                        "`{}` is not a usable id: use letters, digits, `-` and `_` (and not `sync`)",
                        s.id
                    ),
                ));
            }
            if !seen.insert(s.id.as_str()) {
                return Err(err(
                    format!("subtasks[{i}].id"),
                    Some(&s.id),
                    format!("`{}` is declared twice", s.id),
                ));
            }
        }
        let mut points = BTreeSet::new();
        for (i, p) in self.strategy.synchronization_points.iter().enumerate() {
            let key = format!("strategy.synchronizationPoints[{i}]");
            if !valid_id(&p.id) || !points.insert(p.id.as_str()) {
                return Err(err(
                    format!("{key}.id"),
                    Some(&p.id),
                    format!("`{}` is not a usable id or is declared twice", p.id),
                ));
            }
            if p.participants.is_empty() {
                return Err(err(
                    format!("{key}.participants"),
                    Some(&p.id),
                    "list the subtasks that take part".into(),
                ));
            }
            let mut uniq = BTreeSet::new();
            for q in &p.participants {
                if self.subtask(q).is_none() {
                    return Err(err(
                        format!("{key}.participants"),
                        Some(q),
                        format!("no subtask `{q}`"),
                    ));
                }
                if !uniq.insert(q) {
                    return Err(err(
                        format!("{key}.participants"),
                        Some(q),
                        format!("`{q}` is listed twice"),
                    ));
                }
            }
            if let SyncCondition::SpecificAgents(list) = &p.condition
                && let Some(x) = list.iter().find(|x| !p.participants.contains(x))
            {
                return Err(err(
                    format!("{key}.condition.agents"),
                    Some(x),
                    format!("`{x}` is not a participant of `{}`", p.id),
                ));
            }
            if p.condition == SyncCondition::Timeout && p.timeout_ms.is_none() {
                return Err(err(
                    format!("{key}.timeoutMs"),
                    Some(&p.id),
                    "condition `timeout` needs `timeoutMs`".into(),
                ));
            }
            if p.reducer.is_some() && p.point_type != SyncPointType::Aggregation {
                return Err(err(
                    format!("{key}.reducer"),
                    Some(&p.id),
                    "only aggregation points take a reducer".into(),
                ));
            }
        }
        for (i, s) in self.subtasks.iter().enumerate() {
            let key = format!("subtasks[{i}]");
            if let Some(a) = &s.agent
                && !self.agents.contains_key(a)
            {
                return Err(err(
                    format!("{key}.agent"),
                    Some(a),
                    format!(
                        "no agent `{a}`; declared agents: {}",
                        self.agents.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            for d in &s.depends_on {
                if self.subtask(d).is_none() {
                    return Err(err(
                        format!("{key}.dependsOn"),
                        Some(d),
                        format!("no subtask `{d}`"),
                    ));
                }
            }
            let mut names = BTreeSet::new();
            for (j, input) in s.inputs.iter().enumerate() {
                let ikey = format!("{key}.inputs[{j}]");
                if !names.insert(input.name.as_str()) {
                    return Err(err(
                        format!("{ikey}.name"),
                        Some(&input.name),
                        format!("input `{}` is declared twice", input.name),
                    ));
                }
                match (&input.value, &input.from) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(err(
                            ikey,
                            Some(&input.name),
                            format!(
                                "input `{}` needs exactly one of `value` (a literal) or `from` (`<subtask>.<output>` or `sync.<point>`)",
                                input.name
                            ),
                        ));
                    }
                    _ => {}
                }
                for r in input.from.iter().flat_map(FromRef::refs) {
                    match Source::parse(r) {
                        None => {
                            return Err(err(
                                format!("{ikey}.from"),
                                Some(r),
                                format!("`{r}` is not `<subtask>.<output>` or `sync.<point>`"),
                            ));
                        }
                        Some(Source::Sync(p)) => {
                            if self.point(&p).is_none() {
                                return Err(err(
                                    format!("{ikey}.from"),
                                    Some(r),
                                    format!("no synchronization point `{p}`"),
                                ));
                            }
                        }
                        Some(Source::Output { subtask, output }) => {
                            let Some(src) = self.subtask(&subtask) else {
                                return Err(err(
                                    format!("{ikey}.from"),
                                    Some(r),
                                    format!("no subtask `{subtask}` produces `{r}`"),
                                ));
                            };
                            if !src.outputs.iter().any(|o| o.name() == output) {
                                return Err(err(
                                    format!("{ikey}.from"),
                                    Some(r),
                                    format!(
                                        "subtask `{subtask}` has no output `{output}` (its outputs: {}); add it to its `outputs`",
                                        if src.outputs.is_empty() {
                                            "none".to_string()
                                        } else {
                                            src.outputs
                                                .iter()
                                                .map(OutputDef::name)
                                                .collect::<Vec<_>>()
                                                .join(", ")
                                        }
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
            let mut outs = BTreeSet::new();
            for o in &s.outputs {
                if !outs.insert(o.name()) {
                    return Err(err(
                        format!("{key}.outputs"),
                        Some(o.name()),
                        format!("output `{}` is declared twice", o.name()),
                    ));
                }
            }
            for (j, c) in s.success_criteria.iter().enumerate() {
                let ckey = format!("{key}.successCriteria[{j}]");
                match c.criterion.as_str() {
                    "outputs-present" => {}
                    "max-duration-ms" if c.threshold.is_some() => {}
                    "min-value" | "max-value"
                        if c.threshold.is_some() && c.measurement.is_some() => {}
                    "non-empty" if c.measurement.is_some() => {}
                    other => {
                        return Err(err(
                            ckey,
                            Some(other),
                            format!(
                                "criterion `{other}` is unknown or incomplete: use outputs-present, max-duration-ms (threshold), min-value / max-value (measurement = JSON Pointer, threshold) or non-empty (measurement)"
                            ),
                        ));
                    }
                }
            }
        }
        self.check_cycles(text, path)?;
        self.check_participants(text, path)
    }

    /// The graph: subtask → subtasks it waits for; a subtask fed by a sync point waits for
    /// every participant of that point. Any cycle is an error naming it.
    fn check_cycles(&self, text: &str, path: &Path) -> Result<(), Error> {
        let deps = self.dependencies();
        let mut graph: HashMap<String, Vec<String>> = HashMap::new();
        for (id, (subs, points)) in &deps {
            let mut edges: Vec<String> = subs.iter().cloned().collect();
            for p in points {
                edges.push(format!("sync.{p}"));
            }
            graph.insert(id.clone(), edges);
        }
        for p in &self.strategy.synchronization_points {
            graph.insert(format!("sync.{}", p.id), p.participants.clone());
        }
        // Iterative DFS with colours; on a back edge, report the stack from that node.
        let mut colour: HashMap<&str, u8> = HashMap::new();
        let mut nodes: Vec<&String> = graph.keys().collect();
        nodes.sort();
        for start in nodes {
            if colour.get(start.as_str()).copied().unwrap_or(0) != 0 {
                continue;
            }
            let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
            colour.insert(start.as_str(), 1);
            while let Some((node, idx)) = stack.last().copied() {
                let edges = graph.get(node).map(Vec::as_slice).unwrap_or(&[]);
                if idx < edges.len() {
                    stack.last_mut().expect("non-empty").1 += 1;
                    let next = edges[idx].as_str();
                    match colour.get(next).copied().unwrap_or(0) {
                        0 => {
                            colour.insert(next, 1);
                            stack.push((next, 0));
                        }
                        1 => {
                            let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                            let mut cycle: Vec<&str> =
                                stack[from..].iter().map(|(n, _)| *n).collect();
                            cycle.push(next);
                            // Printed in "runs before" order.
                            cycle.reverse();
                            let first_subtask = cycle
                                .iter()
                                .find(|n| !n.starts_with("sync."))
                                .copied()
                                .unwrap_or(next);
                            return Err(manifest_error(
                                text,
                                path,
                                "subtasks",
                                Some(first_subtask),
                                format!(
                                    "dependency cycle: {}; break it by removing one of these dependencies",
                                    cycle.join(" → ")
                                ),
                            ));
                        }
                        _ => {}
                    }
                } else {
                    colour.insert(node, 2);
                    stack.pop();
                }
            }
        }
        Ok(())
    }

    /// Two participants of one point where one waits for the other's result would wait for
    /// each other forever.
    fn check_participants(&self, text: &str, path: &Path) -> Result<(), Error> {
        let closure = self.ancestors();
        for p in &self.strategy.synchronization_points {
            for a in &p.participants {
                for b in &p.participants {
                    if a != b && closure.get(a).is_some_and(|anc| anc.contains(b)) {
                        return Err(manifest_error(
                            text,
                            path,
                            format!("strategy.synchronizationPoints[id={}].participants", p.id),
                            Some(&p.id),
                            format!(
                                "`{a}` waits for `{b}` to finish, but both meet at `{}`: `{b}` would wait there for `{a}` forever; drop the dependency or one participant",
                                p.id
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[task]
id = "t"

[strategy]
type = "hybrid"
maxConcurrentAgents = 2

[agents.worker]
component = "guest:worker"

[[subtasks]]
id = "a"
outputs = ["x"]

[[subtasks]]
id = "b"
inputs = [{ name = "x", from = "a.x" }]
"#;

    fn check(text: &str) -> Result<Manifest, String> {
        let path = Path::new("m.toml");
        let m = Manifest::parse(text, path).map_err(|e| e.to_string())?;
        m.check(text, path).map_err(|e| e.to_string())?;
        Ok(m)
    }

    /// Each change to [`BASE`] is refused with an error naming the field and saying why.
    #[test]
    fn each_invalid_field_is_named_with_what_is_wrong() {
        check(BASE).expect("the base manifest is valid");
        for (from, to, field, why) in [
            (
                "maxConcurrentAgents = 2",
                "maxConcurrentAgents = 0",
                "strategy.maxConcurrentAgents",
                "must be at least 1",
            ),
            (
                "maxConcurrentAgents = 2",
                "maxConcurrentAgents = 2\nstallWindowMs = 0",
                "strategy.stallWindowMs",
                "must be at least 1",
            ),
            (
                "maxConcurrentAgents = 2",
                "maxConcurrentAgents = 2\nretry = { maxAttempts = 0 }",
                "strategy.retry.maxAttempts",
                "1 means no retry",
            ),
            (
                "maxConcurrentAgents = 2",
                "maxConcurrentAgents = 2\nretry = { deadlineExtensionFactor = 1.0 }",
                "strategy.retry.deadlineExtensionFactor",
                "must be a number > 1",
            ),
            (
                "id = \"b\"",
                "id = \"a\"",
                "subtasks[1].id",
                "`a` is declared twice",
            ),
            (
                "id = \"b\"",
                "id = \"sync\"",
                "subtasks[1].id",
                "not a usable id",
            ),
            (
                "from = \"a.x\"",
                "from = \"ax\"",
                "subtasks[1].inputs[0].from",
                "is not `<subtask>.<output>` or `sync.<point>`",
            ),
            (
                "from = \"a.x\"",
                "from = \"sync.nope\"",
                "subtasks[1].inputs[0].from",
                "no synchronization point `nope`",
            ),
            (
                "from = \"a.x\"",
                "from = \"c.x\"",
                "subtasks[1].inputs[0].from",
                "no subtask `c` produces `c.x`",
            ),
        ] {
            let text = BASE.replacen(from, to, 1);
            let e = check(&text).expect_err(&text);
            assert!(e.contains(field), "{field}: {e}");
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn a_point_listing_a_participant_twice_is_refused() {
        let point = "\n[[strategy.synchronizationPoints]]\nid = \"p\"\ntype = \"barrier\"\nparticipants = [\"a\", \"b\"]\n";
        let ok = BASE
            .replacen(
                "maxConcurrentAgents = 2",
                &format!("maxConcurrentAgents = 2{point}"),
                1,
            )
            .replacen("inputs = [{ name = \"x\", from = \"a.x\" }]", "", 1);
        check(&ok).expect("distinct participants are valid");
        let twice = ok.replace("[\"a\", \"b\"]", "[\"a\", \"a\"]");
        let e = check(&twice).unwrap_err();
        assert!(
            e.contains("strategy.synchronizationPoints[0].participants"),
            "{e}"
        );
        assert!(e.contains("`a` is listed twice"), "{e}");
    }

    #[test]
    fn sources_parse_outputs_and_sync_points() {
        assert_eq!(
            Source::parse("a.x"),
            Some(Source::Output {
                subtask: "a".into(),
                output: "x".into()
            })
        );
        assert_eq!(Source::parse("sync.p"), Some(Source::Sync("p".into())));
        for bad in ["ax", "a.", ".x", ""] {
            assert_eq!(Source::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn versions_compare_numerically_part_by_part() {
        assert!(version_at_least("1.2.10", "1.2.9"));
        assert!(!version_at_least("1.2.9", "1.2.10"));
        assert!(version_at_least("1.2", "1.2.0"), "missing parts are 0");
        assert!(!version_at_least("1.2", "1.2.1"));
        assert!(
            version_at_least("1.0-beta", "1.0-alpha"),
            "text compares as text"
        );
    }

    #[test]
    fn dependencies_and_ancestors_follow_inputs_depends_on_and_points() {
        let text = BASE.to_string() + "\n[[subtasks]]\nid = \"c\"\ndependsOn = [\"b\"]\n";
        let m = check(&text).unwrap();
        let deps = m.dependencies();
        assert_eq!(deps["b"].0, BTreeSet::from(["a".to_string()]));
        assert_eq!(deps["c"].0, BTreeSet::from(["b".to_string()]));
        assert!(deps["a"].0.is_empty());
        let anc = m.ancestors();
        assert_eq!(anc["c"], BTreeSet::from(["a".to_string(), "b".to_string()]));
    }
}
