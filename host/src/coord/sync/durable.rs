//! What participants gave a point, stored durably so a resumed run counts it.

use super::*;

/// Durable storage of what participants gave a point, as context documents written by the
/// operator identity: checkpoints at `run/<run>/checkpoint/<point>/<participant>`, every other
/// arrival (a barrier arrival, a vote, a contribution) at
/// `run/<run>/arrival/<point>/<participant>`. Each is durable before it counts, so a resumed
/// run counts what a participant that will not run again gave.
#[derive(Clone)]
pub(super) struct Checkpoints {
    pub(super) context: ContextService,
    pub(super) run_id: String,
}

impl Checkpoints {
    pub(super) fn id(&self, point: &str, participant: &str) -> String {
        format!("run/{}/checkpoint/{point}/{participant}", self.run_id)
    }

    pub(super) async fn save(
        &self,
        point: &str,
        participant: &str,
        state: &Value,
    ) -> Result<(), String> {
        let id = self.id(point, participant);
        let doc = json!({"point": point, "participant": participant, "state": state});
        self.context
            .put_as_operator(&id, "checkpoint", doc)
            .await
            .map_err(|e| format!("storing checkpoint `{id}`: {e}"))
    }

    pub(super) fn arrival_id(&self, point: &str, participant: &str) -> String {
        format!("run/{}/arrival/{point}/{participant}", self.run_id)
    }

    pub(super) async fn save_arrival(
        &self,
        point: &str,
        participant: &str,
        payload: &Value,
    ) -> Result<(), String> {
        let id = self.arrival_id(point, participant);
        let doc = json!({"point": point, "participant": participant, "payload": payload});
        self.context
            .put_as_operator(&id, "sync-arrival", doc)
            .await
            .map(drop)
            .map_err(|e| format!("storing the arrival `{id}`: {e}"))
    }

    /// What `participant` gave `point` before, if it is stored.
    pub(super) async fn load_arrival(
        &self,
        kind: SyncPointType,
        point: &str,
        participant: &str,
    ) -> Option<Value> {
        if kind == SyncPointType::Checkpoint {
            return self.load(point, participant).await;
        }
        let view = self
            .context
            .get(OPERATOR, &self.arrival_id(point, participant))
            .await
            .ok()?;
        view.doc.get("payload").cloned()
    }

    pub(super) async fn load(&self, point: &str, participant: &str) -> Option<Value> {
        let view = self
            .context
            .get(OPERATOR, &self.id(point, participant))
            .await
            .ok()?;
        view.doc.get("state").cloned()
    }
}
