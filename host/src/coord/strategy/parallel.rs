//! `parallel`: dependency levels in waves. A wave is every subtask whose longest chain of
//! prerequisites has the same length; the next wave starts only when the whole current wave
//! has settled. Within a wave, up to `maxConcurrentAgents` run at once.

use super::Strategy;
use crate::coord::graph::TaskGraph;

/// See the module docs.
pub struct Parallel;

impl Strategy for Parallel {
    fn limit(&self, max: u32, _graph: &TaskGraph, _unsettled: &[usize]) -> u32 {
        max.max(1)
    }

    /// Only subtasks of the lowest level not yet settled.
    fn admits(&self, graph: &TaskGraph, unsettled: &[usize], i: usize) -> bool {
        let wave = unsettled.iter().map(|&s| graph.level(s)).min().unwrap_or(0);
        graph.level(i) <= wave
    }
}
