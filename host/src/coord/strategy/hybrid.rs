//! `hybrid`: DAG scheduling. A subtask starts the moment its inputs exist (its prerequisites
//! completed, the sync points it reads resolved), up to `maxConcurrentAgents`.

use super::Strategy;
use crate::coord::graph::TaskGraph;

/// See the module docs.
pub struct Hybrid;

impl Strategy for Hybrid {
    fn limit(&self, max: u32, _graph: &TaskGraph, _unsettled: &[usize]) -> u32 {
        max.max(1)
    }
}
