//! The plan: distribution analysis, allocations, channels, the synchronization and
//! fallback plans.

use super::*;

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
            declared: None,
        });
    }
    for c in &manifest.strategy.channels {
        let kind = c.kind_or(manifest.strategy.communication_protocol);
        let queue = kind == crate::coord::manifest::CommunicationProtocol::MessageQueue;
        let mut participants = c.producers.clone();
        participants.extend(c.consumers.iter().cloned());
        channels.push(CommunicationChannel {
            id: format!("channel.{}", c.id),
            channel_type: kind.as_str().into(),
            participants,
            protocol: kind.as_str().into(),
            declared: Some(super::DeclaredChannel {
                producers: c.producers.clone(),
                consumers: c.consumers.clone(),
                max_message_bytes: c.max_message_bytes,
                max_depth: c.max_depth,
                ack_timeout_ms: queue.then(|| c.ack_timeout_ms()),
                max_deliveries: queue.then(|| c.max_deliveries()),
                stored_at: if kind == crate::coord::manifest::CommunicationProtocol::EventDriven {
                    format!("events of context run/<run>/channel/{}", c.id)
                } else {
                    format!("contexts run/<run>/channel/{}/<message>", c.id)
                },
            }),
        });
    }
    for p in &manifest.strategy.synchronization_points {
        channels.push(CommunicationChannel {
            id: format!("sync.{}", p.id),
            channel_type: p.point_type.as_str().into(),
            participants: p.participants.clone(),
            protocol: "host".into(),
            declared: None,
        });
    }

    let points = manifest.strategy.synchronization_points.clone();
    let strict = points
        .iter()
        .all(|p| p.on_timeout == crate::coord::sync::OnTimeout::Fail);
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
