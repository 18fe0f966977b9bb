//! The end of a run: its metrics and report.

use super::*;

impl Run {
    pub(super) async fn finish(mut self) -> RunReport {
        let wall = self.started.elapsed();
        let all_ok = self.subs.iter().all(|s| s.state == SubtaskState::Completed);
        let any_ok = self.subs.iter().any(|s| s.state == SubtaskState::Completed);
        let mut missing = Vec::new();
        for (i, s) in self.subs.iter().enumerate() {
            if s.state != SubtaskState::Completed {
                for o in &self.manifest.subtasks[i].outputs {
                    missing.push(format!("{}.{}", s.id, o.name()));
                }
            }
        }
        let error = if all_ok {
            None
        } else if let Some(c) = &self.cancelled {
            Some(c.clone())
        } else {
            let failed: Vec<String> = self
                .subs
                .iter()
                .filter(|s| s.state != SubtaskState::Completed)
                .map(|s| format!("{} ({})", s.id, state_word(s.state)))
                .collect();
            Some(format!("not completed: {}", failed.join(", ")))
        };
        let mut metrics = CoordinationMetrics {
            peak_concurrency: self.peak_concurrency.max(1),
            synchronization_points_reached: self.sync_reached,
            resources: self.resources.stats(),
            ..CoordinationMetrics::default()
        };
        let mut total_ms = 0u64;
        let mut n_attempts = 0u64;
        for s in &self.subs {
            for a in &s.attempts {
                n_attempts += 1;
                total_ms += a.duration_ms;
                if a.agent_id.is_some() || a.usage.is_some() {
                    metrics.total_agents += 1;
                }
                if a.outcome == "completed" {
                    metrics.successful_agents += 1;
                } else {
                    metrics.failed_agents += 1;
                }
                if let Some(u) = &a.usage {
                    let t = &mut metrics.total_resource_usage;
                    t.fuel_consumed += u.fuel_consumed;
                    t.memory_mb += u.peak_memory_bytes as f64 / (1024.0 * 1024.0);
                    t.execution_time_ms += u.wall_time_us / 1000;
                    t.tool_calls += u.tool_calls;
                    t.network_requests += u.network_allowed + u.network_denied;
                    t.file_operations += u.file_operations;
                    t.host_calls += u.host_calls;
                    t.llm_calls += u.llm_calls;
                    t.llm_replayed += u.llm_replayed;
                    t.input_tokens += u.input_tokens;
                    t.output_tokens += u.output_tokens;
                    t.cost += u.cost;
                }
            }
        }
        metrics.average_execution_time = if n_attempts == 0 {
            0.0
        } else {
            total_ms as f64 / n_attempts as f64
        };
        let wall_ms = wall.as_secs_f64() * 1000.0;
        metrics.coordination_efficiency = if wall_ms <= 0.0 {
            0.0
        } else {
            let busy_ms = self.busy_completed.as_secs_f64() * 1000.0;
            busy_ms / (wall_ms * metrics.peak_concurrency as f64)
        };
        let sinks: Vec<usize> = (0..self.subs.len())
            .filter(|&i| !(0..self.subs.len()).any(|d| self.graph.prereqs(d).contains(&i)))
            .collect();
        let aggregated: Map<String, Value> = sinks
            .iter()
            .filter_map(|&i| {
                self.subs[i]
                    .output
                    .clone()
                    .map(|o| (self.subs[i].id.clone(), o))
            })
            .collect();
        let status = if all_ok {
            "completed"
        } else if self.cancelled.is_some() {
            "cancelled"
        } else {
            "failed"
        };
        self.event(
            "run-finished",
            None,
            json!({"status": status, "missing": missing}),
        )
        .await;
        let run_doc = format!("run/{}", self.run_id);
        let summary: Map<String, Value> = self
            .subs
            .iter()
            .map(|s| (s.id.clone(), json!(state_word(s.state))))
            .collect();
        let task = self.manifest.task.id.clone();
        self.write_doc(
            &run_doc,
            "run",
            json!({"task": task, "status": status, "subtasks": summary, "missing": missing}),
        )
        .await;
        // How long the last waiting participant took to be released after the resolution
        // (the last arrival, for a barrier that completed).
        for (point, resolved) in &self.resolved_at {
            if let (Some(released), Some(Value::Object(doc))) = (
                self.released_at.get(point),
                self.sync_results.get_mut(point),
            ) {
                doc.insert(
                    "allReleasedUs".into(),
                    json!(released.saturating_duration_since(*resolved).as_micros() as u64),
                );
            }
        }
        metrics.communication_overhead = self.comm_time.as_secs_f64() * 1000.0;
        metrics.communication_events = self.comm_events;
        if let Some(tx) = &self.status {
            tx.send_replace(self.status_snapshot(status));
        }
        RunReport {
            coordination_id: self.run_id.clone(),
            task_id: self.manifest.task.id.clone(),
            success: all_ok,
            partial: !all_ok && any_ok,
            error,
            missing,
            results: self
                .subs
                .iter()
                .map(|s| SubtaskResult {
                    id: s.id.clone(),
                    state: s.state,
                    agent: s.attempts.last().map(|a| a.agent.clone()),
                    attempts: s.attempts.clone(),
                    output: s.output.clone(),
                    error: s.error.clone(),
                    resumed: s.resumed,
                })
                .collect(),
            aggregated_result: Value::Object(aggregated),
            synchronization: self.sync_results.clone(),
            channels: self.channels.report(),
            metrics,
            strategy: self.kind,
            failure_handling: self.manifest.strategy.failure_handling,
            execution_time: wall.as_millis() as u64,
        }
    }
}
