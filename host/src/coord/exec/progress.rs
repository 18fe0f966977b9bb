//! Progress: the run's event recorder, sync notices as events, and live status.

use super::*;

/// Publishes a run's events in order, batching whatever queued up while a commit was in
/// flight; ends when the run drops its sender, after the last event is durable, returning the
/// time its commits took.
pub(super) fn spawn_recorder(
    ctx: &ContextService,
) -> (
    mpsc::UnboundedSender<NewEvent>,
    tokio::task::JoinHandle<Duration>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<NewEvent>();
    let bus = ctx.bus().clone();
    let handle = tokio::spawn(async move {
        let mut committing = Duration::ZERO;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let t = Instant::now();
            if let Err(e) = bus.publish_batch(batch).await {
                tracing::warn!(error = %e, "recording run events");
            }
            committing += t.elapsed();
        }
        committing
    });
    (tx, handle)
}

impl Run {
    pub(super) async fn on_sync(&mut self, n: SyncNotice) {
        match n {
            SyncNotice::Waiting { participant, point } => {
                self.event(
                    "sync-arrived",
                    None,
                    json!({"participant": participant, "point": point}),
                )
                .await;
            }
            // Only a wake-up: the scheduler runs after every notice.
            SyncNotice::Idle { .. } => {}
            SyncNotice::Released { point, at, .. } => {
                let last = self.released_at.entry(point).or_insert(at);
                *last = (*last).max(at);
            }
            SyncNotice::TimedOutWaiting { point } => {
                self.event("sync-timeout-waiting", None, json!({"point": point}))
                    .await;
            }
            SyncNotice::Resolved { point, outcome, at } => {
                self.sync_reached += 1;
                self.resolved_at.insert(point.clone(), at);
                let id = format!("run/{}/sync/{point}", self.run_id);
                let (doc, summary) = match &outcome {
                    Ok(o) => (
                        serde_json::to_value(&**o).unwrap_or(Value::Null),
                        // The event names the outcome's document instead of carrying it.
                        json!({
                            "point": point,
                            "complete": o.complete,
                            "timedOut": o.timed_out,
                            "arrived": o.arrived.len(),
                            "absent": o.absent.len(),
                            "resultBytes": o.result_text().len(),
                            "document": id,
                        }),
                    ),
                    Err(m) => {
                        let doc = json!({"point": point, "failed": m});
                        (doc.clone(), doc)
                    }
                };
                self.event("sync-resolved", None, summary).await;
                self.write_doc(&id, "sync-outcome", doc.clone()).await;
                self.sync_results.insert(point, doc);
            }
        }
    }

    pub(super) fn status_snapshot(&self, status: &str) -> ExecutionStatus {
        let settled = self.subs.iter().filter(|s| s.state.settled()).count();
        ExecutionStatus {
            coordination_id: self.run_id.clone(),
            status: status.into(),
            progress: settled as f64 / self.subs.len().max(1) as f64,
            active_agents: self.running(),
            completed_tasks: settled,
            total_tasks: self.subs.len(),
            subtasks: self
                .subs
                .iter()
                .map(|s| SubtaskStatus {
                    id: s.id.clone(),
                    state: s.state,
                    agent: s.attempts.last().map(|a| a.agent.clone()),
                    agent_id: s.agent_id.clone(),
                    attempts: s.attempts.len() as u32,
                })
                .collect(),
        }
    }

    pub(super) fn publish_status(&self) {
        if let Some(tx) = &self.status {
            tx.send_replace(self.status_snapshot("running"));
        }
    }
}
