//! `sequential`: one subtask computing at a time, in topological order (higher `priority`
//! first among ready subtasks, then manifest order).

use super::Strategy;
use crate::coord::graph::TaskGraph;

/// See the module docs.
pub struct Sequential;

impl Strategy for Sequential {
    fn limit(&self, _max: u32, _graph: &TaskGraph, _unsettled: &[usize]) -> u32 {
        1
    }

    fn starts_per_pass(&self) -> usize {
        1
    }
}
