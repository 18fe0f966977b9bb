//! Scheduling: which pending subtask is ready, how many may compute at once under the
//! strategy, and which agent an adaptive run chooses.

use super::*;

impl Run {
    pub(super) fn computing(&self) -> u32 {
        self.subs
            .iter()
            .filter(|s| s.state == SubtaskState::Running && !s.waiting.load(Ordering::Relaxed))
            .count() as u32
    }

    pub(super) fn running(&self) -> usize {
        self.subs
            .iter()
            .filter(|s| s.state == SubtaskState::Running)
            .count()
    }

    /// The subtasks not yet over.
    pub(super) fn unsettled(&self) -> Vec<usize> {
        (0..self.subs.len())
            .filter(|&i| !self.subs[i].state.settled())
            .collect()
    }

    /// Most subtasks computing at once now, as the strategy says.
    pub(super) fn limit(&self, unsettled: &[usize]) -> u32 {
        self.strategy.limit(
            self.manifest.strategy.max_concurrent_agents,
            &self.graph,
            unsettled,
        )
    }

    /// `Ok(true)`: ready; `Ok(false)`: wait; `Err(reason)`: can never run.
    pub(super) fn readiness(&self, i: usize) -> Result<bool, String> {
        let def = &self.manifest.subtasks[i];
        let mut ready = true;
        // A prerequisite that did not complete blocks this subtask for good when this subtask
        // needs it: named in `dependsOn`, or the source of a required input.
        let required_of = |src: &str| -> bool {
            def.depends_on.iter().any(|d| d == src)
                || def.inputs.iter().any(|inp| {
                    inp.required
                        && inp.from.iter().flat_map(|f| f.refs()).any(|r| {
                            matches!(Source::parse(r), Some(Source::Output { subtask, .. }) if subtask == src)
                        })
                })
        };
        for &p in self.graph.prereqs(i) {
            let s = &self.subs[p];
            if !s.state.settled() {
                ready = false;
                continue;
            }
            if s.state != SubtaskState::Completed && required_of(&s.id) {
                return Err(format!("`{}` {}", s.id, state_word(s.state)));
            }
        }
        for inp in &def.inputs {
            for r in inp.from.iter().flat_map(|f| f.refs()) {
                if let Some(Source::Sync(p)) = Source::parse(r) {
                    match self.sync.status(&p) {
                        None => ready = false,
                        Some(Err(m)) if inp.required => {
                            return Err(format!("sync point `{p}` failed: {m}"));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Ok(ready)
    }

    pub(super) async fn schedule(&mut self) {
        if self.cancelled.is_some() {
            return;
        }
        loop {
            let mut changed = false;
            // Settle what can never run.
            for i in 0..self.subs.len() {
                if self.subs[i].state != SubtaskState::Pending {
                    continue;
                }
                if let Err(reason) = self.readiness(i) {
                    let fail =
                        self.manifest.strategy.failure_handling == FailureHandling::RetryCascade;
                    self.settle(
                        i,
                        if fail {
                            SubtaskState::Failed
                        } else {
                            SubtaskState::Skipped
                        },
                        Some(format!("dependency not met: {reason}")),
                    )
                    .await;
                    changed = true;
                }
            }
            let now = Instant::now();
            let mut ready: Vec<usize> = (0..self.subs.len())
                .filter(|&i| {
                    let s = &self.subs[i];
                    (s.state == SubtaskState::Pending
                        || (s.state == SubtaskState::Backoff
                            && s.backoff_until.is_some_and(|t| t <= now)))
                        && self.readiness(i) == Ok(true)
                })
                .collect();
            let unsettled = self.unsettled();
            ready.retain(|&i| self.strategy.admits(&self.graph, &unsettled, i));
            ready.sort_by_key(|&i| {
                (
                    std::cmp::Reverse(self.manifest.subtasks[i].priority),
                    self.graph.position(i),
                )
            });
            let mut started = 0;
            for i in ready {
                if started >= self.strategy.starts_per_pass()
                    || self.computing() >= self.limit(&unsettled)
                {
                    break;
                }
                if self.start(i).await {
                    started += 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        self.peak_concurrency = self.peak_concurrency.max(u64::from(self.computing()));
    }

    /// The strategy's agent choice, for a subtask's first attempt and for each reassignment
    /// (then among the capable agents not tried yet); retries and deadline extensions stay on
    /// their agent.
    pub(super) fn choose_agent(&mut self, i: usize) {
        let s = &self.subs[i];
        let fresh = s.attempts.is_empty();
        let reassigned =
            s.attempts_on_agent == 0 && s.reassignments > 0 && !s.tried.contains(&s.agent_idx);
        if !(fresh || reassigned) {
            return;
        }
        let allowed: Vec<usize> = (0..s.candidates.len())
            .filter(|k| !s.tried.contains(k))
            .collect();
        let unsettled = self.unsettled();
        let choice = crate::coord::strategy::Choice {
            candidates: &s.candidates,
            allowed: &allowed,
            estimate_ms: self.manifest.subtasks[i].estimated_duration_ms,
            time_left: self
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now())),
            chain: self.graph.is_chain(&unsettled),
        };
        if let Some(k) = self.strategy.choose(&choice)
            && allowed.contains(&k)
        {
            self.subs[i].agent_idx = k;
        }
    }

    pub(super) fn next_wake(&self) -> Option<Instant> {
        let backoff = self.subs.iter().filter_map(|s| {
            (s.state == SubtaskState::Backoff)
                .then_some(s.backoff_until)
                .flatten()
        });
        backoff
            .chain(self.deadline.filter(|_| self.cancelled.is_none()))
            .min()
    }

    pub(super) async fn on_timer(&mut self) {
        if let Some(d) = self.deadline
            && Instant::now() >= d
            && self.cancelled.is_none()
        {
            let ms = self.manifest.task.time_limit_ms.unwrap_or(0);
            self.cancel(format!(
                "the task's time limit of {ms} ms passed (task.timeLimitMs)"
            ))
            .await;
        }
    }

    /// When every running agent waits at an open sync point, nothing waits to retry and no
    /// pending subtask could start, nothing can ever change: the open points end at once as
    /// their `onTimeout` says (see [`SyncEngine::break_deadlock`]) instead of when the agents'
    /// time limits kill them. Returns whether it did.
    pub(super) async fn break_deadlock(&mut self) -> bool {
        if self.cancelled.is_some()
            || self.subs.iter().any(|s| s.state == SubtaskState::Backoff)
            || self.sync.timer_pending()
        {
            return false;
        }
        // Whatever could start now has (an agent may have begun waiting since the last pass,
        // freeing a slot): a subtask started this way is running and not waiting.
        self.schedule().await;
        let waiting = self.sync.waiting_at();
        let mut running = 0;
        for s in &self.subs {
            if s.state != SubtaskState::Running {
                continue;
            }
            running += 1;
            if !waiting.contains_key(&s.id) || s.stopping.load(Ordering::Relaxed) {
                return false;
            }
        }
        let pending: Vec<usize> = (0..self.subs.len())
            .filter(|&i| self.subs[i].state == SubtaskState::Pending)
            .collect();
        if running == 0 {
            return false;
        }
        let mut points: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (p, point) in &waiting {
            points.entry(point).or_default().push(p);
        }
        let unsettled = self.unsettled();
        let blocked: Vec<String> = pending
            .iter()
            .map(|&i| {
                let s = &self.subs[i];
                let why = if let Some(b) = &s.blocked {
                    format!("no resources: {b}")
                } else if !self.strategy.admits(&self.graph, &unsettled, i) {
                    "its wave has not started".to_string()
                } else {
                    "its inputs are not ready".to_string()
                };
                format!("`{}`: {why}", s.id)
            })
            .collect();
        let rest = if blocked.is_empty() {
            "no other subtask is left to start".to_string()
        } else {
            format!("no other subtask can start ({})", blocked.join("; "))
        };
        let reason = format!(
            "deadlock: every running agent waits at a synchronization point ({}) and {rest}",
            points
                .iter()
                .map(|(p, who)| format!("`{p}`: {}", who.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        );
        self.event("deadlock", None, json!({"reason": reason}))
            .await;
        self.sync.break_deadlock(&reason);
        true
    }
}
