//! Task distribution (the seeds' `distributeTask`): load and describe every agent, match
//! subtasks to capable agents, analyse the dependency graph, and lay out the synchronization
//! and fallback plans. `qi-host plan <manifest>` prints what this returns.

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
    /// The manifest's `communicationProtocol`.
    pub protocol: String,
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

/// Loads, describes and validates every agent of the manifest (each is spawned once and
/// dropped, so its spec is checked by the same code as at run time).
pub async fn prepare_agents(
    host: &AgentHost,
    manifest: &Manifest,
    text: &str,
    path: &Path,
    guest_dir: &Path,
) -> Result<BTreeMap<String, PreparedAgent>, Error> {
    let base = Manifest::base_dir(path);
    let mut out = BTreeMap::new();
    for (name, def) in &manifest.agents {
        let key = format!("agents.{name}");
        let file = match def.component.strip_prefix("guest:") {
            Some(g) => guest_dir.join(format!("guest_{}.wasm", g.replace('-', "_"))),
            None => base.join(&def.component),
        };
        if !file.is_file() {
            let hint = if def.component.starts_with("guest:") {
                format!(
                    "bundled guests are built by `cargo build -p qi-guest-artifacts`; looked in {} (set --guest-dir or QI_GUEST_DIR to change)",
                    guest_dir.display()
                )
            } else {
                "paths are relative to the manifest's directory".to_string()
            };
            return Err(manifest_error(
                text,
                path,
                format!("{key}.component"),
                Some(&def.component),
                format!(
                    "component `{}` not found at {}; {hint}",
                    def.component,
                    file.display()
                ),
            ));
        }
        let component = host.load(&file).map_err(|e| {
            manifest_error(
                text,
                path,
                format!("{key}.component"),
                Some(&def.component),
                e.to_string(),
            )
        })?;
        let mut spec = def.spec.clone();
        for d in &mut spec.directories {
            if d.host_path.is_relative() {
                d.host_path = base.join(&d.host_path);
            }
        }
        let agent = host
            .spawn(&component, spec.clone())
            .await
            .map_err(|e| match &e {
                Error::InvalidField { field, message }
                | Error::Spawn(crate::error::AgentFailure::NotDeclared { field, message }, _)
                | Error::IsolationCeiling { field, message, .. } => manifest_error(
                    text,
                    path,
                    format!("{key}.spec.{field}"),
                    Some(name),
                    match &e {
                        Error::IsolationCeiling { level, .. } => {
                            format!("not allowed at isolation level `{level}`: {message}")
                        }
                        _ => message.clone(),
                    },
                ),
                _ => manifest_error(text, path, key.clone(), Some(name), e.to_string()),
            })?;
        let description = agent.description().clone();
        drop(agent);
        let capabilities = spec
            .capabilities
            .iter()
            .chain(&description.capabilities)
            .cloned()
            .collect();
        out.insert(
            name.clone(),
            PreparedAgent {
                name: name.clone(),
                component,
                spec,
                config: def.config.clone(),
                description,
                capabilities,
            },
        );
    }
    Ok(out)
}

/// Why `agent` cannot run subtask `id`, or `None` when it can.
fn incapable(manifest: &Manifest, id: &str, agent: &PreparedAgent) -> Option<String> {
    let s = manifest.subtask(id)?;
    let r = &s.requirements;
    if let Some(c) = r
        .capabilities
        .iter()
        .find(|c| !agent.capabilities.contains(*c))
    {
        return Some(format!("lacks capability `{c}`"));
    }
    if !r.security_level.allows(agent.spec.isolation_level) {
        return Some(format!(
            "runs at isolation `{}`, below security level {}",
            agent.spec.isolation_level.as_str(),
            match r.security_level {
                SecurityLevel::Low => "low",
                SecurityLevel::Medium => "medium (needs sandbox or restricted)",
                SecurityLevel::High => "high (needs sandbox)",
            }
        ));
    }
    if let Some(t) = r.agent_type
        && agent.description.agent_type != t
    {
        return Some(format!(
            "is {:?}, not {:?}",
            agent.description.agent_type, t
        ));
    }
    if let Some(v) = &r.minimum_version
        && !version_at_least(&agent.description.version, v)
    {
        return Some(format!(
            "is version {}, below {v}",
            agent.description.version
        ));
    }
    let c = &s.constraints;
    if c.requires_network
        && agent.spec.security_constraints.network_access_level == NetworkAccessLevel::None
    {
        return Some("has no network access".into());
    }
    if let Some(tools) = &c.allowed_tools {
        let allowed = &agent.spec.security_constraints.allowed_tools;
        if let Some(t) = tools.iter().find(|t| {
            !allowed.iter().any(|p| {
                globset::Glob::new(p)
                    .map(|g| g.compile_matcher().is_match(t.as_str()))
                    .unwrap_or(false)
            })
        }) {
            return Some(format!("is not allowed tool `{t}`"));
        }
    }
    None
}

/// Builds the distribution. Fails when a subtask has no capable agent, or when an agent does
/// not fit the run's resource budget.
pub fn plan(
    manifest: &Manifest,
    agents: &BTreeMap<String, PreparedAgent>,
    text: &str,
    path: &Path,
) -> Result<Plan, Error> {
    let deps = manifest.dependencies();
    let mut planned = Vec::new();
    for (i, s) in manifest.subtasks.iter().enumerate() {
        let mut reasons = Vec::new();
        let mut candidates: Vec<&PreparedAgent> = Vec::new();
        for a in agents.values() {
            match incapable(manifest, &s.id, a) {
                None => candidates.push(a),
                Some(why) => reasons.push(format!("`{}` {why}", a.name)),
            }
        }
        if candidates.is_empty() {
            return Err(manifest_error(
                text,
                path,
                format!("subtasks[{i}].requirements"),
                Some(&s.id),
                format!(
                    "no agent is capable of subtask `{}`: {}",
                    s.id,
                    reasons.join("; ")
                ),
            ));
        }
        if let Some(pref) = &s.agent
            && !candidates.iter().any(|a| &a.name == pref)
        {
            return Err(manifest_error(
                text,
                path,
                format!("subtasks[{i}].agent"),
                Some(pref),
                format!(
                    "agent `{pref}` cannot run `{}`: {}",
                    s.id,
                    reasons
                        .iter()
                        .find(|r| r.starts_with(&format!("`{pref}`")))
                        .cloned()
                        .unwrap_or_default()
                ),
            ));
        }
        // Preferred first, then the most specialized (fewest capabilities), then by name.
        candidates.sort_by_key(|a| {
            (
                Some(&a.name) != s.agent.as_ref(),
                a.capabilities.len(),
                a.name.clone(),
            )
        });
        let (subs, points) = deps.get(&s.id).cloned().unwrap_or_default();
        planned.push(PlannedSubtask {
            id: s.id.clone(),
            candidates: candidates.iter().map(|a| a.name.clone()).collect(),
            depends_on: subs.into_iter().collect(),
            waits_for_points: points.into_iter().collect(),
            participates_in: manifest
                .strategy
                .synchronization_points
                .iter()
                .filter(|p| p.participants.contains(&s.id))
                .map(|p| p.id.clone())
                .collect(),
            level: 0,
        });
    }
    for a in agents.values() {
        let mem = u64::from(a.spec.resource_limits.max_memory_mb);
        if mem > manifest.resources.max_total_memory_mb {
            return Err(manifest_error(
                text,
                path,
                "resources.maxTotalMemoryMB",
                Some("maxTotalMemoryMB"),
                format!(
                    "agent `{}` needs {mem} MiB per instance but the run's budget is {} MiB",
                    a.name, manifest.resources.max_total_memory_mb
                ),
            ));
        }
    }

    // Levels and the critical path (graph checked acyclic by the manifest).
    let graph = TaskGraph::new(manifest);
    let mut finish: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); graph.len()];
    for &i in graph.order() {
        let (start, mut path_so_far) = graph
            .prereqs(i)
            .iter()
            .map(|&d| finish[d].clone())
            .max_by_key(|(t, _)| *t)
            .unwrap_or((0, Vec::new()));
        path_so_far.push(i);
        finish[i] = (
            start.saturating_add(manifest.subtasks[i].estimated_duration_ms),
            path_so_far,
        );
    }
    for p in &mut planned {
        p.level = graph.index(&p.id).map_or(0, |i| graph.level(i));
    }
    let depth = (0..graph.len()).map(|i| graph.level(i)).max().unwrap_or(0) + 1;
    let mut levels = vec![Vec::new(); depth];
    for &i in graph.order() {
        levels[graph.level(i)].push(graph.id(i).to_string());
    }
    let total: u64 = manifest
        .subtasks
        .iter()
        .map(|s| s.estimated_duration_ms)
        .fold(0, u64::saturating_add);
    let (critical_ms, critical_path) = finish
        .iter()
        .max_by_key(|(t, _)| *t)
        .map(|(t, path)| (*t, path.iter().map(|&i| graph.id(i).to_string()).collect()))
        .unwrap_or_default();
    let widest = levels.iter().map(Vec::len).max().unwrap_or(1);
    let conc = manifest.strategy.max_concurrent_agents as usize;
    let independent = manifest
        .subtasks
        .iter()
        .filter(|s| graph.index(&s.id).is_none_or(|i| graph.is_root(i)))
        .count();

    let (suitable, reason, strategy) = if !manifest.task.decomposable {
        (
            false,
            "task.decomposable = false: its subtasks run one at a time".to_string(),
            StrategyKind::Sequential,
        )
    } else if !manifest.task.parallelizable {
        (
            false,
            "task.parallelizable = false: its subtasks run one at a time".to_string(),
            StrategyKind::Sequential,
        )
    } else if widest == 1 {
        (
            false,
            "the subtasks form a chain: nothing can run concurrently".to_string(),
            manifest.strategy.kind,
        )
    } else {
        (
            true,
            format!("{widest} subtasks can run at once ({independent} have no prerequisites)"),
            manifest.strategy.kind,
        )
    };
    let estimated = match strategy {
        StrategyKind::Sequential => total,
        StrategyKind::Parallel => levels
            .iter()
            .map(|l| {
                let mut est: Vec<u64> = l
                    .iter()
                    .map(|id| manifest.subtask(id).expect("known").estimated_duration_ms)
                    .collect();
                est.sort_unstable_by(|a, b| b.cmp(a));
                // Waves of `conc`: each wave lasts as long as its longest subtask.
                est.chunks(conc.max(1))
                    .map(|c| c[0])
                    .fold(0, u64::saturating_add)
            })
            .fold(0, u64::saturating_add),
        StrategyKind::Hybrid | StrategyKind::Adaptive => {
            critical_ms.max(total.div_ceil(conc.max(1) as u64))
        }
    };
    let analysis = DistributionAnalysis {
        suitable,
        reason,
        recommended_agents: widest.min(conc),
        parallelization_opportunities: levels
            .iter()
            .enumerate()
            .filter(|(_, l)| l.len() > 1)
            .map(|(i, l)| format!("level {i}: {}", l.join(", ")))
            .collect(),
        total_estimated_ms: total,
        critical_path_ms: critical_ms,
        critical_path,
        estimated_ms: estimated,
        estimated_benefit: if total == 0 {
            0.0
        } else {
            1.0 - estimated as f64 / total as f64
        },
        levels,
    };

    let mut allocations: BTreeMap<String, AgentAllocation> = BTreeMap::new();
    for p in &planned {
        let agent = &p.candidates[0];
        let s = manifest.subtask(&p.id).expect("known");
        let a = allocations
            .entry(agent.clone())
            .or_insert_with(|| AgentAllocation {
                agent: agent.clone(),
                assigned_subtasks: Vec::new(),
                memory_mb: agents[agent].spec.resource_limits.max_memory_mb,
                priority: i32::MIN,
                dependencies: Vec::new(),
            });
        a.assigned_subtasks.push(p.id.clone());
        a.priority = a.priority.max(s.priority);
    }
    let primary: BTreeMap<&str, &str> = planned
        .iter()
        .map(|p| (p.id.as_str(), p.candidates[0].as_str()))
        .collect();
    for p in &planned {
        let me = primary[p.id.as_str()];
        let prereqs = graph.index(&p.id).map_or(&[][..], |i| graph.prereqs(i));
        for &d in prereqs {
            let other = primary[graph.id(d)];
            let a = allocations.get_mut(me).expect("allocated");
            if other != me && !a.dependencies.iter().any(|x| x == other) {
                a.dependencies.push(other.to_string());
            }
        }
    }

    let protocol = serde_json::to_value(manifest.strategy.communication_protocol)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut channels = Vec::new();
    for s in &manifest.subtasks {
        let consumers: Vec<String> = manifest
            .subtasks
            .iter()
            .filter(|c| {
                c.inputs.iter().any(|i| {
                    i.from.iter().flat_map(|f| f.refs()).any(|r| {
                        matches!(Source::parse(r), Some(Source::Output { subtask, .. }) if subtask == s.id)
                    })
                })
            })
            .map(|c| c.id.clone())
            .collect();
        if consumers.is_empty() {
            continue;
        }
        let mut participants = vec![s.id.clone()];
        participants.extend(consumers.iter().cloned());
        channels.push(CommunicationChannel {
            id: format!(
                "run/<run>/output/{} ({})",
                s.id,
                s.outputs
                    .iter()
                    .map(OutputDef::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            channel_type: if consumers.len() > 1 {
                "broadcast"
            } else {
                "direct"
            }
            .into(),
            participants,
            protocol: protocol.clone(),
        });
    }
    for p in &manifest.strategy.synchronization_points {
        channels.push(CommunicationChannel {
            id: format!("sync.{}", p.id),
            channel_type: p.point_type.as_str().into(),
            participants: p.participants.clone(),
            protocol: "host".into(),
        });
    }

    let points = manifest.strategy.synchronization_points.clone();
    let strict = points
        .iter()
        .all(|p| p.on_timeout == super::sync::OnTimeout::Fail);
    let synchronization_plan = SynchronizationPlan {
        strategy: if strict { "strict" } else { "flexible" }.into(),
        fallback_behavior: "a participant that fails, is terminated or is skipped counts as absent; a point whose condition can no longer be met resolves as on timeout (`wait` fails)".into(),
        points,
    };

    let r = &manifest.strategy.retry;
    let reassignable: BTreeMap<&str, Vec<String>> = planned
        .iter()
        .filter(|p| p.candidates.len() > 1)
        .map(|p| (p.id.as_str(), p.candidates[1..].to_vec()))
        .collect();
    let actions = match manifest.strategy.failure_handling {
        FailureHandling::FailFast => vec![FallbackAction {
            condition: "any subtask fails".into(),
            action: "cancel-all".into(),
            parameters: serde_json::json!({"terminateRunning": true}),
        }],
        FailureHandling::GracefulDegradation => vec![FallbackAction {
            condition: "a subtask fails".into(),
            action: "skip-dependents".into(),
            parameters: serde_json::json!({"optionalInputs": "passed as available, listed in inputs.missing"}),
        }],
        FailureHandling::RetryCascade => vec![
            FallbackAction {
                condition: "agent failure (not a limit violation or invalid input)".into(),
                action: "retry".into(),
                parameters: serde_json::json!({"maxAttempts": r.max_attempts, "backoffMs": r.backoff_ms, "backoffFactor": r.backoff_factor}),
            },
            FallbackAction {
                condition: "attempts exhausted or a limit violation".into(),
                action: "reassign".into(),
                parameters: serde_json::json!({"maxReassignments": r.max_reassignments, "to": reassignable}),
            },
            FallbackAction {
                condition: "the subtask timed out".into(),
                action: "extend-deadline".into(),
                parameters: serde_json::json!({"maxExtensions": r.max_extensions, "extensionFactor": r.deadline_extension_factor}),
            },
            FallbackAction {
                condition: "all of the above exhausted".into(),
                action: "fail-dependents".into(),
                parameters: Value::Null,
            },
        ],
    };
    Ok(Plan {
        task_id: manifest.task.id.clone(),
        strategy,
        failure_handling: manifest.strategy.failure_handling,
        analysis,
        agent_allocations: allocations.into_values().collect(),
        subtasks: planned,
        communication_channels: channels,
        synchronization_plan,
        fallback_plan: FallbackPlan {
            triggers: vec![
                "agent-failure".into(),
                "timeout".into(),
                "stall".into(),
                "limit-violation".into(),
                "sync-point-failure".into(),
            ],
            actions,
            recovery_strategy: manifest.strategy.failure_handling.as_str().into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::HostConfig;
    use std::sync::OnceLock;

    fn host() -> &'static AgentHost {
        static HOST: OnceLock<AgentHost> = OnceLock::new();
        HOST.get_or_init(|| AgentHost::new(HostConfig::default()).expect("host starts"))
    }

    async fn planned(text: &str) -> Result<Plan, Error> {
        let path = Path::new("plan.toml");
        let manifest = Manifest::parse(text, path)?;
        manifest.check(text, path)?;
        let dir = Path::new(qi_guest_artifacts::WORKER_COMPONENT)
            .parent()
            .expect("guest directory");
        let agents = prepare_agents(host(), &manifest, text, path, dir).await?;
        plan(&manifest, &agents, text, path)
    }

    const AGENTS: &str = r#"
[agents.worker]
component = "guest:worker"

[agents.backup]
component = "guest:worker"
"#;

    /// `a ──► c ──┐, b ──► d ──┴──► e` with estimates a 100, b 300, c 100, d 100, e 50.
    fn diamond(strategy: &str, concurrency: u32) -> String {
        format!(
            r#"
[task]
id = "t"
[strategy]
type = "{strategy}"
maxConcurrentAgents = {concurrency}
{AGENTS}
[[subtasks]]
id = "a"
estimatedDurationMs = 100
outputs = ["x"]
[[subtasks]]
id = "b"
estimatedDurationMs = 300
outputs = ["x"]
[[subtasks]]
id = "c"
estimatedDurationMs = 100
outputs = ["x"]
inputs = [{{ name = "x", from = "a.x" }}]
[[subtasks]]
id = "d"
estimatedDurationMs = 100
outputs = ["x"]
inputs = [{{ name = "x", from = "b.x" }}]
[[subtasks]]
id = "e"
estimatedDurationMs = 50
dependsOn = ["c", "d"]
"#
        )
    }

    #[tokio::test]
    async fn levels_critical_path_and_estimates_follow_the_graph() {
        let p = planned(&diamond("hybrid", 4)).await.unwrap();
        let a = &p.analysis;
        assert_eq!(a.levels, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
        assert_eq!(a.critical_path, ["b", "d", "e"]);
        assert_eq!(a.critical_path_ms, 450);
        assert_eq!(a.total_estimated_ms, 650);
        // DAG: max(critical path, total / concurrency).
        assert_eq!(a.estimated_ms, 450);
        assert_eq!(a.recommended_agents, 2);
        assert!(a.suitable, "{}", a.reason);
        assert_eq!(
            a.parallelization_opportunities,
            ["level 0: a, b", "level 1: c, d"]
        );
        let levels: Vec<(&str, usize)> = p
            .subtasks
            .iter()
            .map(|s| (s.id.as_str(), s.level))
            .collect();
        assert_eq!(levels, [("a", 0), ("b", 0), ("c", 1), ("d", 1), ("e", 2)]);
        assert_eq!(p.subtasks[4].depends_on, ["c", "d"]);

        // Waves: each level lasts as long as its longest subtask (300 + 100 + 50); with one
        // agent at a time, every subtask is its own wave.
        let p = planned(&diamond("parallel", 4)).await.unwrap();
        assert_eq!(p.analysis.estimated_ms, 450);
        let p = planned(&diamond("parallel", 1)).await.unwrap();
        assert_eq!(p.analysis.estimated_ms, 650);
        // A DAG strategy with one agent is bounded by the total.
        let p = planned(&diamond("hybrid", 1)).await.unwrap();
        assert_eq!(p.analysis.estimated_ms, 650);
        let p = planned(&diamond("sequential", 4)).await.unwrap();
        assert_eq!(p.analysis.estimated_ms, 650);
        assert_eq!(p.analysis.estimated_benefit, 0.0);
    }

    #[tokio::test]
    async fn a_chain_or_an_indivisible_task_is_not_distributed() {
        let chain = format!(
            "[task]\nid = \"t\"\n[strategy]\ntype = \"hybrid\"\n{AGENTS}\n[[subtasks]]\nid = \"a\"\n[[subtasks]]\nid = \"b\"\ndependsOn = [\"a\"]\n"
        );
        let p = planned(&chain).await.unwrap();
        assert!(!p.analysis.suitable);
        assert!(p.analysis.reason.contains("chain"), "{}", p.analysis.reason);
        assert_eq!(p.strategy, StrategyKind::Hybrid);

        let whole = diamond("hybrid", 4).replace("id = \"t\"", "id = \"t\"\ndecomposable = false");
        let p = planned(&whole).await.unwrap();
        assert!(!p.analysis.suitable);
        assert_eq!(p.strategy, StrategyKind::Sequential, "one at a time");
        assert!(
            p.analysis.reason.contains("task.decomposable"),
            "{}",
            p.analysis.reason
        );
    }

    #[tokio::test]
    async fn candidates_put_the_named_agent_first_then_equals_by_name() {
        let text = diamond("hybrid", 4).replacen("id = \"b\"", "id = \"b\"\nagent = \"worker\"", 1);
        let p = planned(&text).await.unwrap();
        let cands = |id: &str| {
            p.subtasks
                .iter()
                .find(|s| s.id == id)
                .unwrap()
                .candidates
                .clone()
        };
        assert_eq!(cands("b"), ["worker", "backup"], "named first");
        // Same capabilities (a spec's are added to the component's): by name.
        assert_eq!(cands("a"), ["backup", "worker"]);

        // A requirement no agent meets is refused naming the field and each agent's reason.
        let none = text.replacen(
            "id = \"a\"",
            "id = \"a\"\nrequirements = { capabilities = [\"translate\"] }",
            1,
        );
        let e = planned(&none).await.unwrap_err().to_string();
        assert!(e.contains("subtasks[0].requirements"), "{e}");
        assert!(e.contains("`backup` lacks capability `translate`"), "{e}");
        assert!(e.contains("`worker` lacks capability `translate`"), "{e}");
    }
}
