//! Registered manifests and the runs clients start: `run_task`, `plan_task`, `run_status`,
//! `terminate`, and resuming after a restart.
//!
//! Each run started here is recorded in the context store as `serve/run/<run id>` (type
//! `qi-serve-run`, owned by the operator): manifest, inputs, client, state. The run's own
//! progress is durable already (`run/<run id>/...`: completed outputs, sync outcomes,
//! channel messages). A server that stops (SIGTERM past its grace period, or a crash) leaves
//! the record `running`; the next server on the data directory resumes each such run with
//! `resume`, so completed subtasks are not run again.

use super::manifests::with_inputs;
use super::tools::{OnDisconnect, PlanTaskArgs, RunStatusArgs, RunTaskArgs, TerminateArgs};
use super::{Caller, OpError, Server};
use crate::context::{Change, NewContext, OPERATOR};
use crate::coord::{ExecutionStatus, Prepared, RunOptions};
use crate::error::Error;
use crate::model::ResourceKind;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The context type of run records.
pub const RUN_RECORD_TYPE: &str = "qi-serve-run";

/// The end of a run.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It ran to its end (successfully or not): the report.
    Finished(Arc<Value>),
    /// It could not run (the host's error).
    Error(String),
    /// `terminate` (or a client's `cancel`) stopped it.
    Terminated(String),
    /// The server stopped before it ended; the next server on the data directory resumes
    /// it.
    Interrupted,
}

/// A run this server started (or resumed).
#[derive(Debug)]
struct Entry {
    owner: String,
    manifest: String,
    status: watch::Receiver<ExecutionStatus>,
    outcome: Arc<watch::Sender<Option<Outcome>>>,
    abort: tokio::task::AbortHandle,
}

/// Runs this server knows, by id; finished ones are forgotten oldest first past the bound.
#[derive(Debug)]
pub struct Runs {
    max: usize,
    entries: Mutex<(HashMap<String, Entry>, VecDeque<String>)>,
}

/// A started run: its id and what to watch.
#[derive(Debug, Clone)]
pub struct Started {
    /// The run id.
    pub run_id: String,
    /// Live status.
    pub status: watch::Receiver<ExecutionStatus>,
    /// `Some` once it ended.
    pub outcome: watch::Receiver<Option<Outcome>>,
    /// What to do if the waiting client goes away.
    pub on_disconnect: OnDisconnect,
    abort: tokio::task::AbortHandle,
}

impl Started {
    /// Stops the run (a client that asked for `cancel` went away).
    pub fn cancel(&self) {
        self.abort.abort();
    }

    /// Waits for the end on `server`; if this future is dropped first (the client went away)
    /// and the run was started with `on_disconnect: cancel`, the run is stopped.
    pub async fn wait_on(&self, server: &Server) -> Result<Value, OpError> {
        struct Guard<'a>(Option<&'a Started>);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if let Some(s) = self.0.take() {
                    s.cancel();
                }
            }
        }
        let mut guard = Guard((self.on_disconnect == OnDisconnect::Cancel).then_some(self));
        let r = server.wait_run(self).await;
        guard.0 = None;
        r
    }
}

impl Runs {
    /// At most `max` runs kept.
    pub fn new(max: usize) -> Runs {
        Runs {
            max,
            entries: Mutex::default(),
        }
    }

    /// Tracks run `id`. `bounded`: refused past `max` runs when none of them has ended (a
    /// resumed run is tracked whatever the bound: it was accepted before the restart).
    fn insert(&self, id: &str, entry: Entry, bounded: bool) -> Result<(), OpError> {
        let mut guard = self.entries.lock().expect("runs lock poisoned");
        let (map, order) = &mut *guard;
        while map.len() >= self.max {
            let finished = order
                .iter()
                .position(|id| map.get(id).is_some_and(|e| e.outcome.borrow().is_some()));
            match finished {
                Some(i) => {
                    let old = order.remove(i).expect("position is in range");
                    map.remove(&old);
                }
                None if !bounded => break,
                None => {
                    return Err(OpError::limit(format!(
                        "{} runs are in progress on this server (limits.max_tracked_runs); \
                         wait for one to finish",
                        map.len()
                    )));
                }
            }
        }
        map.insert(id.to_string(), entry);
        order.push_back(id.to_string());
        Ok(())
    }

    fn remove(&self, id: &str) {
        let mut guard = self.entries.lock().expect("runs lock poisoned");
        let (map, order) = &mut *guard;
        map.remove(id);
        order.retain(|x| x != id);
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&Entry) -> T) -> Option<T> {
        self.entries
            .lock()
            .expect("runs lock poisoned")
            .0
            .get(id)
            .map(f)
    }

    /// Waits up to `grace` for every run to end, then stops the rest.
    pub async fn drain(&self, grace: Duration) {
        let outcomes: Vec<(watch::Receiver<Option<Outcome>>, tokio::task::AbortHandle)> = self
            .entries
            .lock()
            .expect("runs lock poisoned")
            .0
            .values()
            .map(|e| (e.outcome.subscribe(), e.abort.clone()))
            .collect();
        let all = futures_wait(outcomes.iter().map(|(o, _)| o.clone()).collect());
        if tokio::time::timeout(grace, all).await.is_err() {
            for (o, abort) in &outcomes {
                if o.borrow().is_none() {
                    abort.abort();
                }
            }
        }
    }
}

async fn futures_wait(outcomes: Vec<watch::Receiver<Option<Outcome>>>) {
    for mut o in outcomes {
        let _ = o.wait_for(Option::is_some).await;
    }
}

impl Server {
    /// `run_task`: starts a run of a registered manifest (one of the caller's runs in
    /// progress until it ends) and records it for resuming.
    pub async fn start_run(
        self: &Arc<Self>,
        caller: &Caller,
        args: RunTaskArgs,
    ) -> Result<Started, OpError> {
        let prepared = self.manifests.get(&args.manifest)?;
        self.gate(caller, ResourceKind::Run, &args.manifest, "start")?;
        let prepared = with_inputs(prepared, &args.inputs)?;
        let slot = self.run_slot(caller)?;
        let run_id = format!("serve-{}", crate::model::random_hex(16));
        let on_disconnect = args.on_disconnect.unwrap_or(OnDisconnect::Continue);
        // Tracked first (refused past limits.max_tracked_runs), recorded next, run last: a run
        // refused at either step leaves nothing behind and never starts.
        let (started, go) = self.launch(
            caller.id.clone(),
            args.manifest.clone(),
            prepared,
            run_id.clone(),
            false,
            slot,
            on_disconnect,
        )?;
        let record = json!({
            "manifest": args.manifest,
            "inputs": args.inputs,
            "client": caller.id,
            "state": "running",
            "startedAtMs": crate::model::unix_ms(),
        });
        let created = self
            .context
            .create(
                OPERATOR,
                NewContext {
                    id: Some(format!("serve/run/{run_id}")),
                    context_type: RUN_RECORD_TYPE.into(),
                    doc: record,
                    strategy: crate::context::SyncStrategy::Manual,
                    ..NewContext::default()
                },
            )
            .await;
        if let Err(e) = created {
            drop(go);
            self.runs.remove(&run_id);
            return Err(e.into());
        }
        let _ = go.send(());
        Ok(started)
    }

    /// Tracks the run and makes its task, which starts (or resumes) the run once the returned
    /// sender says so; dropping the sender instead ends the task without running anything.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        self: &Arc<Self>,
        owner: String,
        manifest: String,
        prepared: Prepared,
        run_id: String,
        resume: bool,
        slot: super::caller::RunSlot,
        on_disconnect: OnDisconnect,
    ) -> Result<(Started, tokio::sync::oneshot::Sender<()>), OpError> {
        let total = prepared.manifest.subtasks.len();
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (status_tx, status) = watch::channel(ExecutionStatus {
            coordination_id: run_id.clone(),
            status: "starting".into(),
            progress: 0.0,
            active_agents: 0,
            completed_tasks: 0,
            total_tasks: total,
            subtasks: Vec::new(),
        });
        let outcome_tx = Arc::new(watch::Sender::new(None));
        let outcome = outcome_tx.subscribe();
        let server = self.clone();
        let sender = outcome_tx.clone();
        let id = run_id.clone();
        let task = tokio::spawn(async move {
            if go_rx.await.is_err() {
                drop(slot);
                return;
            }
            let report = prepared
                .run(
                    server.host.clone(),
                    RunOptions {
                        run_id: Some(id.clone()),
                        resume,
                        status: Some(status_tx),
                    },
                )
                .await;
            let end = match report {
                Ok(r) => {
                    Outcome::Finished(Arc::new(serde_json::to_value(&r).unwrap_or(Value::Null)))
                }
                Err(e) => Outcome::Error(e.to_string()),
            };
            server.finish_record(&id, &end).await;
            drop(slot);
            sender.send_replace(Some(end));
        });
        let abort = task.abort_handle();
        // A run stopped by `terminate` (or a cancel) ends without its task's last lines: its
        // outcome is set here.
        let watcher = {
            let server = self.clone();
            let id = run_id.clone();
            let sender = outcome_tx.clone();
            async move {
                if task.await.is_err() && sender.borrow().is_none() {
                    let end = if server.stopping() {
                        Outcome::Interrupted
                    } else {
                        let end = Outcome::Terminated("terminated".into());
                        server.finish_record(&id, &end).await;
                        end
                    };
                    sender.send_replace(Some(end));
                }
            }
        };
        let tracked = self.runs.insert(
            &run_id,
            Entry {
                owner,
                manifest,
                status: status.clone(),
                outcome: outcome_tx,
                abort: abort.clone(),
            },
            !resume,
        );
        // Refused: dropping `go` ends the task before it runs anything.
        tracked?;
        tokio::spawn(watcher);
        Ok((
            Started {
                run_id,
                status,
                outcome,
                on_disconnect,
                abort,
            },
            go,
        ))
    }

    /// Marks the run's record finished.
    async fn finish_record(&self, run_id: &str, end: &Outcome) {
        let (state, detail) = match end {
            Outcome::Finished(r) => (
                if r.get("success").and_then(Value::as_bool) == Some(true) {
                    "completed"
                } else {
                    "failed"
                },
                Value::Null,
            ),
            Outcome::Error(e) => ("failed", Value::String(e.clone())),
            Outcome::Terminated(why) => ("terminated", Value::String(why.clone())),
            Outcome::Interrupted => return,
        };
        let patch =
            json!({"state": state, "error": detail, "finishedAtMs": crate::model::unix_ms()});
        let id = format!("serve/run/{run_id}");
        // Based on the version read, so that it is accepted whatever the record's strategy;
        // tried again once if somebody wrote in between.
        let mut last = None;
        for _ in 0..2 {
            let base = match self.context.get(OPERATOR, &id).await {
                Ok(v) => v.version,
                Err(e) => {
                    last = Some(e);
                    break;
                }
            };
            match self
                .context
                .write(OPERATOR, &id, Change::Merge(patch.clone()), Some(base))
                .await
            {
                Ok(_) => return,
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            tracing::warn!(run = run_id, error = %e, "could not record the end of a run");
        }
    }

    /// Waits for a started run's end: the report, or the error.
    pub async fn wait_run(&self, started: &Started) -> Result<Value, OpError> {
        let mut outcome = started.outcome.clone();
        let end = outcome
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .ok()
            .flatten();
        match end {
            Some(Outcome::Finished(report)) => Ok(json!({
                "runId": started.run_id,
                "state": if report.get("success").and_then(Value::as_bool) == Some(true) { "completed" } else { "failed" },
                "report": &*report,
            })),
            Some(Outcome::Error(e)) => {
                Err(OpError::failed(format!("run `{}`: {e}", started.run_id)))
            }
            Some(Outcome::Terminated(why)) => {
                Ok(json!({"runId": started.run_id, "state": "terminated", "reason": why}))
            }
            Some(Outcome::Interrupted) | None => Err(OpError::unavailable(format!(
                "run `{}` was stopped with the server; the restarted server resumes it",
                started.run_id
            ))),
        }
    }

    /// `plan_task`.
    pub(super) fn plan_task(&self, caller: &Caller, args: PlanTaskArgs) -> Result<Value, OpError> {
        let prepared = self.manifests.get(&args.manifest)?;
        self.gate(caller, ResourceKind::Run, &args.manifest, "plan")?;
        serde_json::to_value(&prepared.plan).map_err(|e| OpError::failed(e.to_string()))
    }

    /// `run_status`: a run of the caller's (any, for the operator).
    pub fn run_status(&self, caller: &Caller, args: RunStatusArgs) -> Result<Value, OpError> {
        let found = self.runs.with(&args.run_id, |e| {
            (
                e.owner.clone(),
                e.manifest.clone(),
                e.status.borrow().clone(),
                e.outcome.borrow().clone(),
            )
        });
        let Some((owner, manifest, status, outcome)) =
            found.filter(|(o, ..)| *o == caller.id || caller.operator)
        else {
            return Err(OpError::not_found(format!(
                "run_id: no run `{}` of yours on this server",
                args.run_id
            )));
        };
        self.gate(caller, ResourceKind::Run, &args.run_id, "status")?;
        let (state, report, error) = match outcome {
            None => ("running", Value::Null, Value::Null),
            Some(Outcome::Finished(r)) => (
                if r.get("success").and_then(Value::as_bool) == Some(true) {
                    "completed"
                } else {
                    "failed"
                },
                (*r).clone(),
                Value::Null,
            ),
            Some(Outcome::Error(e)) => ("failed", Value::Null, Value::String(e)),
            Some(Outcome::Terminated(w)) => ("terminated", Value::Null, Value::String(w)),
            Some(Outcome::Interrupted) => ("interrupted", Value::Null, Value::Null),
        };
        Ok(json!({
            "runId": args.run_id,
            "manifest": manifest,
            "client": owner,
            "state": state,
            "status": status,
            "report": report,
            "error": error,
        }))
    }

    /// A live status receiver of a run `caller` may see.
    pub fn run_watch(
        &self,
        caller: &Caller,
        run_id: &str,
    ) -> Result<
        (
            watch::Receiver<ExecutionStatus>,
            watch::Receiver<Option<Outcome>>,
        ),
        OpError,
    > {
        let found = self.runs.with(run_id, |e| {
            (e.owner.clone(), e.status.clone(), e.outcome.subscribe())
        });
        match found {
            Some((owner, s, o)) if owner == caller.id || caller.operator => {
                self.gate(caller, ResourceKind::Run, run_id, "status")?;
                Ok((s, o))
            }
            _ => Err(OpError::not_found(format!(
                "run_id: no run `{run_id}` of yours on this server"
            ))),
        }
    }

    /// `terminate`: a run or an agent.
    pub(super) fn terminate(&self, caller: &Caller, args: TerminateArgs) -> Result<Value, OpError> {
        match (args.run_id, args.agent_id) {
            (Some(run_id), None) => {
                let found = self
                    .runs
                    .with(&run_id, |e| (e.owner.clone(), e.abort.clone()));
                let Some((_, abort)) = found.filter(|(o, _)| *o == caller.id || caller.operator)
                else {
                    return Err(OpError::not_found(format!(
                        "run_id: no run `{run_id}` of yours on this server"
                    )));
                };
                self.gate(caller, ResourceKind::Run, &run_id, "terminate")?;
                abort.abort();
                Ok(json!({"runId": run_id, "terminated": true}))
            }
            (None, Some(agent_id)) => self.terminate_agent(caller, &agent_id),
            _ => Err(OpError::invalid(
                "terminate: give exactly one of `run_id` and `agent_id`",
            )),
        }
    }

    /// Resumes every run a previous server on this data directory left `running`. Returns
    /// their ids.
    pub async fn resume_runs(self: &Arc<Self>) -> Result<Vec<String>, Error> {
        let records = self
            .context
            .list(OPERATOR, Some(RUN_RECORD_TYPE), Some(OPERATOR))
            .await
            .map_err(|e| Error::System(anyhow::anyhow!("listing recorded runs: {e}")))?;
        let mut resumed = Vec::new();
        for r in records {
            if r.doc.get("state").and_then(Value::as_str) != Some("running") {
                continue;
            }
            let Some(run_id) = r.id.strip_prefix("serve/run/").map(str::to_string) else {
                continue;
            };
            let parsed = record_fields(&r.doc).and_then(|(manifest, owner, inputs)| {
                let p = self.manifests.get(&manifest)?;
                Ok((manifest, owner, with_inputs(p, &inputs)?))
            });
            let (manifest, owner, prepared) = match parsed {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(run = %run_id, error = %e, "cannot resume a recorded run");
                    eprintln!("not resuming run `{run_id}`: {e}");
                    self.finish_record(&run_id, &Outcome::Error(format!("not resumed: {e}")))
                        .await;
                    continue;
                }
            };
            let slot = self.quotas.unlimited_slot(&owner);
            // Resumed runs are tracked whatever limits.max_tracked_runs says now.
            let launched = self.launch(
                owner,
                manifest,
                prepared,
                run_id.clone(),
                true,
                slot,
                OnDisconnect::Continue,
            );
            match launched {
                Ok((_, go)) => {
                    let _ = go.send(());
                    resumed.push(run_id);
                }
                Err(e) => {
                    eprintln!("not resuming run `{run_id}`: {e}");
                    self.finish_record(&run_id, &Outcome::Error(format!("not resumed: {e}")))
                        .await;
                }
            }
        }
        Ok(resumed)
    }
}

/// The manifest, client and inputs of a run record, each checked: a record someone changed by
/// hand into another shape is not resumed (rather than resumed with inputs nobody gave).
fn record_fields(doc: &Value) -> Result<(String, String, BTreeMap<String, Value>), OpError> {
    let field = |name: &str| {
        doc.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| OpError::invalid(format!("the record's `{name}` is not a string")))
    };
    let manifest = field("manifest")?;
    let client = field("client")?;
    if client != OPERATOR && !client.starts_with("client:") {
        return Err(OpError::invalid(format!(
            "the record's `client` `{client}` is not a caller id"
        )));
    }
    let inputs = match doc.get("inputs") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| OpError::invalid(format!("the record's `inputs`: {e}")))?,
    };
    Ok((manifest, client, inputs))
}
