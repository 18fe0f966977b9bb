//! Merging contexts and the seeds' synchronization calls.

use super::*;
use std::collections::HashMap;

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

impl ContextService {
    /// The seeds' `syncAllSharedContexts(agentId)`: synchronizes every context shared with
    /// `agent` (its live, unexpired grants, see [`shared_contexts`](Self::shared_contexts))
    /// through [`batch_sync`](Self::batch_sync) and reports each one's status. A grant without
    /// `read` cannot be synchronized: it is reported as `error` without a read being attempted
    /// (so no access violation is recorded for it). One `sync` event summarizes the batch.
    pub async fn sync_all_shared_contexts(&self, agent: &str) -> SyncSummary {
        let started = std::time::Instant::now();
        let shared = self.shared_contexts(agent);
        let readable: Vec<String> = shared
            .iter()
            .filter(|s| s.permissions.contains(&Permission::Read))
            .map(|s| s.context_id.clone())
            .collect();
        let mut results: HashMap<String, SyncResult> = self
            .batch_sync(agent, &readable)
            .await
            .into_iter()
            .map(|r| (r.context_id.clone(), r))
            .collect();
        let contexts: Vec<SharedContextSync> = shared
            .into_iter()
            .map(|info| {
                let (version, status, conflicts, error) = match results.remove(&info.context_id) {
                    Some(r) if r.success => {
                        let status =
                            if r.conflicts.is_empty() && r.status != ContextStatus::Conflict {
                                "synced"
                            } else {
                                "conflict"
                            };
                        (r.version, status, r.conflicts, None)
                    }
                    Some(r) => (0, "error", Vec::new(), r.error),
                    None => (
                        0,
                        "error",
                        Vec::new(),
                        Some("the share does not grant `read`".to_string()),
                    ),
                };
                SharedContextSync {
                    context_id: info.context_id,
                    owner_id: info.owner_id,
                    permissions: info.permissions,
                    version,
                    sync_status: status.to_string(),
                    conflicts,
                    error,
                }
            })
            .collect();
        SyncSummary {
            agent_id: agent.to_string(),
            total_contexts: contexts.len(),
            synced_contexts: contexts.iter().filter(|c| c.error.is_none()).count(),
            conflicts: contexts.iter().map(|c| c.conflicts.len()).sum(),
            contexts,
            total_time_us: started.elapsed().as_micros() as u64,
        }
    }
}
