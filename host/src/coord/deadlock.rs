//! Deadlocks outside the concurrency slots, found before a run starts.
//!
//! An agent waiting at a synchronization point holds no concurrency slot, but it stays alive:
//! it holds its memory in the run's resource budget, one of the budget's allocations and one of
//! the host's live agents, and under `parallel` its wave cannot end while it waits. A point
//! whose participants cannot all be alive at once therefore waits for ever (until time limits
//! kill its agents). [`check_points_can_gather`] refuses such a manifest at `plan` and `run`,
//! naming the point and the reason; what only the run can know (several points holding the
//! budget at once, retries) is caught while it runs (`coord::exec`, which fails the open points
//! at once).

use super::dag::Bits;
use super::graph::TaskGraph;
use super::manifest::{Manifest, StrategyKind, manifest_error};
use super::plan::{Plan, PreparedAgent};
use crate::error::Error;
use std::collections::BTreeMap;
use std::path::Path;

/// Checks that every sync point's participants can all be alive at once under `plan`'s
/// strategy, the run's resource budget and the host's limit of `live_agents` agents.
/// Memory counts the agent each participant's first attempt runs on (its first capable agent,
/// the one the manifest prefers; `maxMemoryMB` lowered by the subtask's
/// `constraints.maxMemoryMB`), as the run allocates it. (`adaptive` may choose another kind; a
/// run that gets stuck that way is caught while it runs.)
pub fn check_points_can_gather(
    manifest: &Manifest,
    plan: &Plan,
    agents: &BTreeMap<String, PreparedAgent>,
    live_agents: u32,
    text: &str,
    path: &Path,
) -> Result<(), Error> {
    let planned: BTreeMap<&str, _> = plan.subtasks.iter().map(|p| (p.id.as_str(), p)).collect();
    for (i, point) in manifest.strategy.synchronization_points.iter().enumerate() {
        let key = format!("strategy.synchronizationPoints[{i}].participants");
        let refuse = |why: String| {
            manifest_error(
                text,
                path,
                key.clone(),
                Some(&point.id),
                format!("point `{}` can never gather: {why}", point.id),
            )
        };
        let members: Vec<_> = point
            .participants
            .iter()
            .filter_map(|p| planned.get(p.as_str()).copied())
            .collect();
        if plan.strategy == StrategyKind::Parallel
            && let (Some(low), Some(high)) = (
                members.iter().min_by_key(|p| p.level),
                members.iter().max_by_key(|p| p.level),
            )
            && low.level != high.level
        {
            return Err(refuse(format!(
                "under `parallel`, `{}` (wave {}) would wait there for `{}` (wave {}), whose \
                 wave starts only once `{}` has finished; use `hybrid`, or take part only \
                 subtasks of one wave",
                low.id, low.level, high.id, high.level, low.id
            )));
        }
        let n = members.len() as u64;
        let budget = &manifest.resources;
        if n > u64::from(budget.max_concurrent_allocations) {
            return Err(refuse(format!(
                "its {n} participants must be alive at once, but \
                 resources.maxConcurrentAllocations is {}",
                budget.max_concurrent_allocations
            )));
        }
        if n > u64::from(live_agents) {
            return Err(refuse(format!(
                "its {n} participants must be alive at once, but the host runs at most \
                 {live_agents} agents (max_live_agents)"
            )));
        }
        let memory: u64 = members
            .iter()
            .map(|p| {
                let cap = manifest
                    .subtask(&p.id)
                    .and_then(|s| s.constraints.max_memory_mb);
                p.candidates
                    .first()
                    .and_then(|c| agents.get(c))
                    .map(|a| {
                        let m = a.spec.resource_limits.max_memory_mb;
                        u64::from(cap.map_or(m, |c| m.min(c)))
                    })
                    .unwrap_or(0)
            })
            .fold(0, u64::saturating_add);
        if memory > budget.max_total_memory_mb {
            return Err(refuse(format!(
                "its {n} participants must be alive at once and need {memory} MiB together \
                 (each on the agent its first attempt runs on), but resources.maxTotalMemoryMB \
                 is {}",
                budget.max_total_memory_mb
            )));
        }
    }
    Ok(())
}

/// Checks that every channel's consumers can receive while its producers send: a producer
/// that depends (directly or not) on a consumer of its channel starts only once that consumer
/// is over, and under `parallel` a consumer in an earlier wave than a producer holds its wave
/// open while the producer's wave waits for it. Either way the consumer would wait in
/// `receive` for messages that cannot come before it ends. Refused naming the channel, the
/// two subtasks and what to change.
pub fn check_channels_can_flow(
    manifest: &Manifest,
    plan: &Plan,
    text: &str,
    path: &Path,
) -> Result<(), Error> {
    if manifest.strategy.channels.is_empty() {
        return Ok(());
    }
    let graph = TaskGraph::new(manifest);
    for (i, c) in manifest.strategy.channels.iter().enumerate() {
        let refuse = |why: String| {
            manifest_error(
                text,
                path,
                format!("strategy.channels[{i}]"),
                Some(&c.id),
                format!("channel `{}` cannot carry anything: {why}", c.id),
            )
        };
        let index = |ids: &[String]| -> Vec<usize> {
            ids.iter().filter_map(|id| graph.index(id)).collect()
        };
        let (producers, consumers) = (index(&c.producers), index(&c.consumers));
        let mut consumer_set = Bits::new(graph.len());
        for &k in &consumers {
            consumer_set.set(k);
        }
        for &p in &producers {
            if graph.has_ancestor_in(&consumer_set, p) {
                let k = consumers
                    .iter()
                    .copied()
                    .find(|&k| k != p && graph.is_ancestor(k, p))
                    .unwrap_or(p);
                return Err(refuse(format!(
                    "producer `{}` depends on consumer `{}`, so it starts only once that \
                     consumer is over; drop the dependency, or pass the data as an input",
                    graph.id(p),
                    graph.id(k)
                )));
            }
        }
        if plan.strategy == StrategyKind::Parallel
            && let (Some(&k), Some(&p)) = (
                consumers.iter().min_by_key(|&&k| graph.level(k)),
                producers.iter().max_by_key(|&&p| graph.level(p)),
            )
            && graph.level(k) < graph.level(p)
        {
            return Err(refuse(format!(
                "under `parallel`, consumer `{}` (wave {}) would wait for producer `{}` (wave \
                 {}), whose wave starts only once `{}` has finished; use `hybrid`, or put \
                 them in one wave",
                graph.id(k),
                graph.level(k),
                graph.id(p),
                graph.level(p),
                graph.id(k)
            )));
        }
    }
    Ok(())
}
