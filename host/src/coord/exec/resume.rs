//! Resuming a run: completed outputs and resolved sync points are loaded, not run again.

use super::*;

impl Run {
    pub(super) async fn load_previous(&mut self) {
        for i in 0..self.subs.len() {
            let id = format!("run/{}/output/{}", self.run_id, self.subs[i].id);
            if let Some(doc) = self.read_doc(&id).await {
                let s = &mut self.subs[i];
                s.state = SubtaskState::Completed;
                s.output = Some(doc);
                s.resumed = true;
            }
        }
        for p in self.manifest.strategy.synchronization_points.clone() {
            let id = format!("run/{}/sync/{}", self.run_id, p.id);
            if let Some(doc) = self.read_doc(&id).await {
                let outcome = match doc.get("failed").and_then(Value::as_str) {
                    Some(m) => Err(m.to_string()),
                    None => serde_json::from_value::<SyncOutcome>(doc.clone())
                        .map_err(|e| format!("stored outcome unreadable: {e}")),
                };
                self.sync.preload(&p.id, outcome);
                self.sync_results.insert(p.id.clone(), doc);
            }
        }
        let run_doc = format!("run/{}", self.run_id);
        let task = self.manifest.task.id.clone();
        self.write_doc(
            &run_doc,
            "run",
            json!({"task": task, "status": "running", "resumed": true, "strategy": self.kind.as_str()}),
        )
        .await;
    }
}
