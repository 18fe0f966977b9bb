//! `adaptive`: hybrid scheduling that adapts to what it observes during the run.
//!
//! - **Concurrency** is a window that starts at `maxConcurrentAgents`, halves (minimum 1) on
//!   every failed attempt and grows by one (up to `maxConcurrentAgents`) on every completed
//!   attempt.
//! - **Agent choice**: among the agent kinds it may choose (a subtask's capable agents,
//!   preferred first; after a reassignment, those not tried yet), the one with the fewest
//!   failures in this run, then the lowest mean ratio of observed duration to estimate; a kind
//!   not seen yet counts as exactly its estimate (ratio 1). Ties go to the preferred one.
//! - **Deadline**: when the task has a time limit and no more time is left than the subtask's
//!   estimate, speed comes first: the lowest mean ratio, then the fewest failures.
//! - **Chains**: when what is left forms a chain (no two unsettled subtasks independent), the
//!   window is 1 and each link runs on the agent kind that completed the previous one, when
//!   it may.

use super::{Choice, Strategy};
use crate::coord::graph::TaskGraph;
use std::collections::BTreeMap;

/// The adaptive strategy's state for one run.
#[derive(Debug, Clone)]
pub struct Adaptive {
    window: u32,
    /// Per agent kind: completed attempts, failed attempts, sum of duration ratios of the
    /// completed ones.
    stats: BTreeMap<String, (u64, u64, f64)>,
    last_completed: Option<String>,
}

impl Adaptive {
    /// A run's adaptive state, the window at `max_concurrent`.
    pub fn new(max_concurrent: u32) -> Adaptive {
        Adaptive {
            window: max_concurrent.max(1),
            stats: BTreeMap::new(),
            last_completed: None,
        }
    }

    /// The concurrency window now.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// `(failures, mean duration ratio in thousandths)` of `agent`.
    fn record(&self, agent: &str) -> (u64, u64) {
        let (ok, failed, ratio_sum) = self.stats.get(agent).copied().unwrap_or((0, 0, 0.0));
        let mean = if ok == 0 { 1.0 } else { ratio_sum / ok as f64 };
        (failed, (mean * 1000.0) as u64)
    }
}

impl Strategy for Adaptive {
    fn limit(&self, _max: u32, graph: &TaskGraph, unsettled: &[usize]) -> u32 {
        if graph.is_chain(unsettled) {
            1
        } else {
            self.window.max(1)
        }
    }

    fn choose(&self, c: &Choice<'_>) -> Option<usize> {
        if c.chain
            && let Some(prev) = &self.last_completed
            && let Some(&k) = c.allowed.iter().find(|&&k| &c.candidates[k] == prev)
        {
            return Some(k);
        }
        let short_on_time = c
            .time_left
            .is_some_and(|left| left.as_millis() <= u128::from(c.estimate_ms.max(1)));
        c.allowed.iter().copied().min_by_key(|&k| {
            let (failed, ratio) = self.record(&c.candidates[k]);
            let score = if short_on_time {
                (ratio, failed)
            } else {
                (failed, ratio)
            };
            (score, k)
        })
    }

    fn attempt_ended(&mut self, agent: &str, completed: Option<f64>, max: u32) {
        let e = self.stats.entry(agent.to_string()).or_default();
        match completed {
            Some(ratio) => {
                e.0 += 1;
                e.2 += if ratio.is_finite() { ratio } else { 0.0 };
                self.window = self.window.saturating_add(1).min(max.max(1));
                self.last_completed = Some(agent.to_string());
            }
            None => {
                e.1 += 1;
                self.window = (self.window / 2).max(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::manifest::Manifest;
    use std::path::Path;
    use std::time::Duration;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn choice<'a>(candidates: &'a [String], allowed: &'a [usize]) -> Choice<'a> {
        Choice {
            candidates,
            allowed,
            estimate_ms: 100,
            time_left: None,
            chain: false,
        }
    }

    /// `a`, `b` independent; `c` after both.
    fn graph() -> TaskGraph {
        let text = "[task]\nid = \"t\"\n[strategy]\ntype = \"adaptive\"\n[agents.w]\ncomponent = \"guest:worker\"\n\
                    [[subtasks]]\nid = \"a\"\n[[subtasks]]\nid = \"b\"\n[[subtasks]]\nid = \"c\"\ndependsOn = [\"a\", \"b\"]\n";
        TaskGraph::new(&Manifest::parse(text, Path::new("m.toml")).unwrap())
    }

    #[test]
    fn the_window_halves_on_failures_down_to_one_and_grows_by_one_up_to_the_maximum() {
        let mut s = Adaptive::new(8);
        assert_eq!(s.window(), 8);
        s.attempt_ended("w", None, 8);
        assert_eq!(s.window(), 4);
        for _ in 0..5 {
            s.attempt_ended("w", None, 8);
        }
        assert_eq!(s.window(), 1, "never below one");
        s.attempt_ended("w", Some(1.0), 8);
        assert_eq!(s.window(), 2);
        for _ in 0..20 {
            s.attempt_ended("w", Some(1.0), 8);
        }
        assert_eq!(s.window(), 8, "never above maxConcurrentAgents");
        let g = graph();
        assert_eq!(s.limit(8, &g, &[0, 1, 2]), 8);
    }

    #[test]
    fn a_chain_runs_one_at_a_time_on_the_kind_that_completed_the_last_link() {
        let g = graph();
        let s = Adaptive::new(8);
        // `a` and `b` are independent: no chain.
        assert_eq!(s.limit(8, &g, &[0, 1, 2]), 8);
        // Only `b` and `c` left: a chain.
        assert_eq!(s.limit(8, &g, &[1, 2]), 1);
        let mut s = s;
        s.attempt_ended("slow", Some(3.0), 8);
        let c = names(&["fast", "slow"]);
        let mut ch = choice(&c, &[0, 1]);
        ch.chain = true;
        assert_eq!(
            s.choose(&ch),
            Some(1),
            "the kind that ran the previous link"
        );
        ch.chain = false;
        assert_eq!(
            s.choose(&ch),
            Some(0),
            "not a chain: the better record wins"
        );
        // The previous link's kind already failed this subtask: the chain rule yields.
        ch.chain = true;
        ch.allowed = &[0];
        assert_eq!(s.choose(&ch), Some(0));
    }

    #[test]
    fn choice_moves_away_from_a_failing_kind_then_prefers_the_faster_one() {
        let mut s = Adaptive::new(4);
        let c = names(&["a", "b", "c"]);
        // Nothing seen: the preferred one.
        assert_eq!(s.choose(&choice(&c, &[0, 1, 2])), Some(0));
        s.attempt_ended("a", None, 4);
        assert_eq!(
            s.choose(&choice(&c, &[0, 1, 2])),
            Some(1),
            "fewest failures"
        );
        // `b` is observed twice as slow as its estimates, `c` unseen (counts as 1.0).
        s.attempt_ended("b", Some(2.0), 4);
        assert_eq!(s.choose(&choice(&c, &[0, 1, 2])), Some(2));
        // `c` observed faster than `b`.
        s.attempt_ended("c", Some(0.5), 4);
        assert_eq!(s.choose(&choice(&c, &[1, 2])), Some(2));
        // Only what it may choose from.
        assert_eq!(s.choose(&choice(&c, &[0, 1])), Some(1));
        assert_eq!(s.choose(&choice(&c, &[])), None);
    }

    #[test]
    fn short_on_time_speed_comes_before_failures() {
        let mut s = Adaptive::new(4);
        let c = names(&["reliable", "quick"]);
        s.attempt_ended("reliable", Some(4.0), 4);
        s.attempt_ended("quick", None, 4);
        s.attempt_ended("quick", Some(0.25), 4);
        let mut ch = choice(&c, &[0, 1]);
        ch.time_left = Some(Duration::from_millis(1_000));
        assert_eq!(s.choose(&ch), Some(0), "time enough: fewest failures");
        // Just inside the rule: exactly the estimate left.
        ch.time_left = Some(Duration::from_millis(100));
        assert_eq!(s.choose(&ch), Some(1), "estimate ≥ time left: the fastest");
        ch.time_left = Some(Duration::from_millis(101));
        assert_eq!(s.choose(&ch), Some(0));
    }
}
