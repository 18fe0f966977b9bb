//! Resuming a run: completed outputs and resolved sync points are loaded, not run again.

use super::*;

impl Run {
    pub(super) async fn load_previous(&mut self) -> Result<(), Error> {
        for i in 0..self.subs.len() {
            let id = format!("run/{}/output/{}", self.run_id, self.subs[i].id);
            if let Some(doc) = self.read_doc(&id).await {
                let s = &mut self.subs[i];
                s.state = SubtaskState::Completed;
                s.output = Some(doc);
                s.resumed = true;
            }
        }
        // Points: an outcome that resolved stands; a failure stands only if every
        // participant already finished (nobody will arrive again). Any other point reopens,
        // counting what participants that will not run again gave before the crash.
        let finished: BTreeSet<String> = self
            .subs
            .iter()
            .filter(|s| s.state == SubtaskState::Completed)
            .map(|s| s.id.clone())
            .collect();
        for p in self.manifest.strategy.synchronization_points.clone() {
            let id = format!("run/{}/sync/{}", self.run_id, p.id);
            let stored = self.read_doc(&id).await;
            let everyone_done = p.participants.iter().all(|q| finished.contains(q));
            match stored {
                Some(doc) if doc.get("failed").is_none() => {
                    match serde_json::from_value::<SyncOutcome>(doc.clone()) {
                        Ok(o) => {
                            self.sync.preload(&p.id, Ok(o));
                            self.sync_results.insert(p.id.clone(), doc);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(point = %p.id, error = %e, "stored outcome unreadable; the point reopens")
                        }
                    }
                }
                Some(doc) if everyone_done => {
                    let m = doc["failed"].as_str().unwrap_or("failed").to_string();
                    self.sync.preload(&p.id, Err(m));
                    self.sync_results.insert(p.id.clone(), doc);
                    continue;
                }
                _ => {}
            }
            self.sync.resume_point(&p.id, &finished).await;
        }
        // Channels: what was still held comes back; finished producers send no more.
        // A resume that cannot see them would lose messages: it does not start.
        self.channels.load().await.map_err(|e| {
            Error::System(anyhow::anyhow!(
                "resuming run `{}`: loading its channel messages: {e}",
                self.run_id
            ))
        })?;
        for s in &self.subs {
            if s.state == SubtaskState::Completed {
                self.channels.participant_over(&s.id);
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
        Ok(())
    }
}
