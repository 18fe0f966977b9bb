//! Merging contexts and the seeds' synchronization calls.

use super::*;

impl ContextService {
    /// Merges contexts into a new one owned by `agent`: objects key by key, later contexts in
    /// the list winning where two disagree; every disagreement is reported as a conflict. The
    /// merged document is checked against `max_document_bytes` like any other (`Invalid` on
    /// `doc`).
    pub async fn merge_contexts(
        &self,
        agent: &str,
        ids: &[String],
        into: NewContext,
    ) -> Result<WriteResult, ContextError> {
        if ids.len() < 2 {
            return Err(ContextError::invalid(
                "contexts",
                "name at least two contexts to merge",
            ));
        }
        let mut docs = Vec::new();
        for id in ids {
            docs.push(self.get(agent, id).await?);
        }
        let mut merged = Value::Null;
        let mut origin: BTreeMap<String, (String, Value)> = BTreeMap::new();
        let mut conflicts = Vec::new();
        let now = self.shared.clock.now_ms();
        for view in &docs {
            for c in patch::diff(&empty_like(&view.doc), &view.doc).unwrap_or_default() {
                let value = c.value.clone().unwrap_or(Value::Null);
                if let Some((other, prev)) = origin.get(&c.path)
                    && prev != &value
                {
                    let mut agent_values = BTreeMap::new();
                    agent_values.insert(other.clone(), prev.clone());
                    agent_values.insert(view.id.clone(), value.clone());
                    let mut record = engine::conflict(
                        &view.id,
                        &c.path,
                        ConflictType::FieldModification,
                        ConflictSeverity::Low,
                        agent_values,
                        now,
                    );
                    record.resolution = Some(ConflictOutcome {
                        strategy: ConflictResolution::Merge,
                        resolved_value: value.clone(),
                        resolved_by: "system".into(),
                        resolved_at: now,
                    });
                    conflicts.push(record);
                }
                origin.insert(c.path.clone(), (view.id.clone(), value));
                patch::apply(&mut merged, &c)
                    .map_err(|e| ContextError::invalid("contexts", e.to_string()))?;
            }
        }
        let mut into = into;
        into.doc = merged;
        let mut result = self.create(agent, into).await?;
        if !conflicts.is_empty() {
            let shared = self.shared.clone();
            let agent = agent.to_string();
            let recorded = self
                .shared
                .store
                .write_with_error(move |ctx| {
                    Self::record_conflicts(&shared, ctx, &agent, &mut conflicts)?;
                    Ok::<_, ContextError>(conflicts)
                })
                .await?;
            result.conflicts = recorded;
        }
        Ok(result)
    }

    /// The authoritative state of a context and its unresolved conflicts.
    pub async fn synchronize(&self, agent: &str, id: &str) -> Result<SyncResult, ContextError> {
        let view = self.get(agent, id).await?;
        let conflicts = self.conflicts(agent, id).await?;
        Ok(SyncResult {
            context_id: view.id,
            version: view.version,
            status: view.status,
            conflicts: conflicts
                .into_iter()
                .filter(|c| c.resolution.is_none())
                .collect(),
            success: true,
            error: None,
        })
    }

    /// [`synchronize`](Self::synchronize) for many contexts; one failing does not stop the others.
    pub async fn batch_sync(&self, agent: &str, ids: &[String]) -> Vec<SyncResult> {
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        for id in ids {
            out.push(match self.synchronize(agent, id).await {
                Ok(r) => r,
                Err(e) => SyncResult {
                    context_id: id.clone(),
                    version: 0,
                    status: ContextStatus::Active,
                    conflicts: Vec::new(),
                    success: false,
                    error: Some(e.to_string()),
                },
            });
        }
        // One `sync` event summarizes the batch (the seeds' SyncSummary).
        let summary = json!({
            "totalContexts": out.len(),
            "syncedContexts": out.iter().filter(|r| r.success).count(),
            "conflicts": out.iter().map(|r| r.conflicts.len()).sum::<usize>(),
            "totalTimeUs": started.elapsed().as_micros() as u64,
        });
        let event = NewEvent::new(EventType::Sync).agent(agent).data(summary);
        if let Err(e) = self.shared.bus.publish(event).await {
            tracing::warn!(error = %e, "recording a sync event failed");
        }
        out
    }
}
