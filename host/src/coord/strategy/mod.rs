//! Scheduling strategies: how many subtasks compute at once, which ready subtask may start,
//! and which capable agent kind runs an attempt. One file per strategy, behind [`Strategy`];
//! a new strategy is a new file here and an arm of [`for_kind`].
//!
//! The engine (`coord::exec`) does everything else the same for every strategy: readiness
//! from inputs and sync points, the failure policy, resources and sync waits (an agent
//! waiting at a sync point never counts against the limit).

mod adaptive;
mod hybrid;
mod parallel;
mod sequential;

pub use adaptive::Adaptive;

use super::graph::TaskGraph;
use super::manifest::StrategyKind;
use std::time::Duration;

/// What a strategy decides. `unsettled` lists the subtasks not yet over (in any order).
pub trait Strategy: Send {
    /// Most subtasks computing at once now, at least 1. `max` is
    /// `strategy.maxConcurrentAgents`.
    fn limit(&self, max: u32, graph: &TaskGraph, unsettled: &[usize]) -> u32;

    /// Whether subtask `i`, whose inputs are ready, may start now. Default: yes.
    fn admits(&self, _graph: &TaskGraph, _unsettled: &[usize], _i: usize) -> bool {
        true
    }

    /// Most attempts started per scheduling pass. Default: no limit.
    fn starts_per_pass(&self) -> usize {
        usize::MAX
    }

    /// The candidate (an index into `choice.candidates`, one of `choice.allowed`) to run the
    /// attempt on, or `None` to keep the engine's (the first untried capable agent). Asked
    /// for a subtask's first attempt and after each reassignment.
    fn choose(&self, _choice: &Choice<'_>) -> Option<usize> {
        None
    }

    /// An attempt on agent kind `agent` ended: completed (`duration_ratio` is its duration
    /// over the subtask's estimate) or failed.
    fn attempt_ended(&mut self, _agent: &str, _completed: Option<f64>, _max: u32) {}
}

/// What a strategy knows when it chooses an agent.
#[derive(Debug)]
pub struct Choice<'a> {
    /// Every capable agent kind, preferred first.
    pub candidates: &'a [String],
    /// The indexes it may choose from (not tried yet), ascending.
    pub allowed: &'a [usize],
    /// The subtask's `estimatedDurationMs`.
    pub estimate_ms: u64,
    /// Time left before `task.timeLimitMs`, if it has one.
    pub time_left: Option<Duration>,
    /// Whether the unsettled subtasks form a chain.
    pub chain: bool,
}

/// The strategy of `kind`.
pub fn for_kind(kind: StrategyKind, max_concurrent: u32) -> Box<dyn Strategy> {
    match kind {
        StrategyKind::Sequential => Box::new(sequential::Sequential),
        StrategyKind::Parallel => Box::new(parallel::Parallel),
        StrategyKind::Hybrid => Box::new(hybrid::Hybrid),
        StrategyKind::Adaptive => Box::new(Adaptive::new(max_concurrent)),
    }
}
