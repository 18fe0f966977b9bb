//! One agent's run: the task, raced against the deadline and the terminate signal, and the
//! report built from what was measured.

use super::failure;
use super::registry::{AgentEntry, Registration};
use super::{AgentDescription, AgentReport, AgentStatus, TaskRequest};
use crate::engine::LoadedComponent;
use crate::error::{AgentFailure, LimitKind};
use crate::interfaces::AgentState;
use crate::interfaces::output::OutputText;
use crate::sandbox::{AgentShared, UsageReceipt};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use wasmtime::Store;

/// A spawned agent, ready to run one task.
pub struct SubAgent {
    pub(super) id: String,
    pub(super) component: Arc<LoadedComponent>,
    pub(super) store: Store<AgentState>,
    pub(super) instance: Option<crate::interfaces::Agent>,
    pub(super) description: Option<AgentDescription>,
    pub(super) shared: Arc<AgentShared>,
    pub(super) entry: Arc<AgentEntry>,
    pub(super) terminate_rx: watch::Receiver<Option<String>>,
    /// The wall-clock deadline, one timer for the agent's whole life (spawn and run).
    pub(super) deadline_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    pub(super) max_wasm_stack: usize,
    pub(super) _registration: Registration,
}

impl std::fmt::Debug for SubAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubAgent")
            .field("id", &self.id)
            .field("component", &self.component.path)
            .finish()
    }
}

impl SubAgent {
    /// Host-assigned id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the component said about itself.
    pub fn description(&self) -> &AgentDescription {
        self.description
            .as_ref()
            .expect("a spawned agent has described itself")
    }

    /// Current status.
    pub fn status(&self) -> AgentStatus {
        *self.entry.status.lock().expect("status lock poisoned")
    }

    /// Runs `f` on the Store, racing it against the deadline and the terminate signal.
    /// Dropping the losing future unwinds the guest wherever it is.
    pub(super) async fn guarded<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Store<AgentState>) -> wasmtime::Result<T>,
    ) -> std::result::Result<T, AgentFailure> {
        let limit_ms = self.shared.spec.resource_limits.max_execution_time_ms;
        let result = {
            let SubAgent {
                store,
                terminate_rx,
                deadline_timer,
                ..
            } = self;
            race(f(store), deadline_timer.as_mut(), terminate_rx).await
        };
        match result {
            Raced::Done(Ok(v)) => Ok(v),
            Raced::Done(Err(e)) => Err(self.classify(e)),
            Raced::Deadline => {
                self.shared.record_violation(
                    LimitKind::ExecutionTime,
                    limit_ms,
                    format!("still running after {limit_ms} ms; stopped"),
                );
                Err(self.violation().expect("just recorded"))
            }
            Raced::Terminated(reason) => Err(AgentFailure::Terminated { reason }),
        }
    }

    fn violation(&self) -> Option<AgentFailure> {
        self.shared
            .violation
            .lock()
            .expect("violation lock poisoned")
            .clone()
    }

    /// What an error out of the guest means for the agent: see [`failure::classify`].
    fn classify(&self, e: wasmtime::Error) -> AgentFailure {
        let stderr = self.store.data().stderr.contents();
        failure::classify(e, &self.shared, &stderr, self.component_stack_limit())
    }

    /// The usage measured so far.
    pub(super) fn usage(&self) -> UsageReceipt {
        let data = self.store.data();
        let mut usage = UsageReceipt::from_counters(&self.shared.counters);
        usage.fuel_consumed = self
            .shared
            .spec
            .fuel
            .saturating_sub(self.store.get_fuel().unwrap_or(0));
        usage.peak_memory_bytes = data.limiter.peak_bytes as u64;
        usage.wall_time_us = self.shared.started.elapsed().as_micros() as u64;
        usage.stdout_bytes = data.stdout.contents().len() as u64;
        usage.stderr_bytes = data.stderr.contents().len() as u64;
        usage
    }

    fn component_stack_limit(&self) -> usize {
        self.max_wasm_stack
    }

    /// Runs the task and reports the outcome and measured usage.
    pub async fn run(mut self, task: TaskRequest) -> AgentReport {
        self.entry.set(AgentStatus::Executing);
        let task_id = task
            .id
            .clone()
            .unwrap_or_else(|| format!("{}-task", self.id));
        let wit_task = crate::interfaces::Task {
            id: task_id.clone(),
            description: task.description,
            input: task.input.to_string(),
        };
        let instance = self
            .instance
            .take()
            .expect("a spawned agent has an instance");
        // The output is checked against `maxOutputBytes` in guest memory and copied only when
        // it fits (see `interfaces::output`).
        let max_output = self.shared.overrides.max_output_bytes;
        let limit = usize::try_from(max_output).unwrap_or(usize::MAX);
        let result = self
            .guarded(async |store| {
                crate::interfaces::output::call_run(&instance, store, &wit_task, limit).await
            })
            .await;
        let too_long = |bytes: usize| AgentFailure::LimitExceeded {
            limit: LimitKind::OutputSize,
            limit_value: max_output,
            detail: format!("output is {bytes} bytes; at most {max_output} are accepted"),
        };
        let too_long_error = |bytes: usize| AgentFailure::LimitExceeded {
            limit: LimitKind::OutputSize,
            limit_value: max_output,
            detail: format!(
                "the agent's error message is {bytes} bytes; at most {max_output} are accepted"
            ),
        };
        let outcome =
            match result {
                Ok(Ok(out)) => match out.output {
                    OutputText::TooLong { bytes } => Err(too_long(bytes)),
                    OutputText::Text(text) if text.len() as u64 > max_output => {
                        Err(too_long(text.len()))
                    }
                    OutputText::Text(text) => serde_json::from_str::<serde_json::Value>(&text)
                        .map_err(|e| AgentFailure::InvalidOutput {
                            message: e.to_string(),
                        }),
                },
                Ok(Err(agent_error)) => Err(self.violation().unwrap_or_else(|| {
                    let (error_kind, message) = agent_error.into_parts();
                    let message = match message {
                        OutputText::Text(text) if text.len() as u64 <= max_output => text,
                        OutputText::Text(text) => return too_long_error(text.len()),
                        OutputText::TooLong { bytes } => return too_long_error(bytes),
                    };
                    AgentFailure::AgentError {
                        error_kind: error_kind.to_string(),
                        message,
                    }
                })),
                Err(failure) => Err(failure),
            };
        self.finish(task_id, outcome)
    }

    fn finish(
        self,
        task_id: String,
        outcome: std::result::Result<serde_json::Value, AgentFailure>,
    ) -> AgentReport {
        let status = match &outcome {
            Ok(_) => AgentStatus::Completed,
            Err(AgentFailure::Terminated { .. }) => AgentStatus::Terminated,
            Err(_) => AgentStatus::Failed,
        };
        self.entry.set(status);
        let usage = self.usage();
        let data = self.store.data();
        let stdout = data.stdout.contents();
        let stderr = data.stderr.contents();
        let (output, failure) = match outcome {
            Ok(v) => (Some(v), None),
            Err(f) => (None, Some(f)),
        };
        let summary = failure.as_ref().map(failure::summary);
        match &summary {
            None => tracing::debug!(agent = %self.id, "agent completed"),
            Some(f) => tracing::info!(agent = %self.id, failure = %f, "agent failed"),
        }
        self.shared.audit(
            "lifecycle",
            "finish",
            summary.unwrap_or_else(|| "completed".to_string()),
            serde_json::json!({"status": status, "fuel": usage.fuel_consumed}),
        );
        AgentReport {
            agent_id: self.id.clone(),
            task_id,
            agent: self.description.clone(),
            status,
            error_category: failure.as_ref().map(AgentFailure::category),
            output,
            failure,
            usage,
            logs: std::mem::take(&mut *self.shared.logs.lock().expect("log lock poisoned")),
            host_call_log: std::mem::take(
                &mut *self.shared.call_log.lock().expect("call log poisoned"),
            ),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

enum Raced<T> {
    Done(T),
    Deadline,
    Terminated(String),
}

async fn race<T>(
    work: impl Future<Output = T>,
    deadline: std::pin::Pin<&mut tokio::time::Sleep>,
    term: &mut watch::Receiver<Option<String>>,
) -> Raced<T> {
    if let Some(reason) = term.borrow().clone() {
        return Raced::Terminated(reason);
    }
    tokio::select! {
        biased;
        changed = term.wait_for(Option::is_some) => match changed {
            Ok(reason) => Raced::Terminated(reason.clone().unwrap_or_default()),
            // The sender lives in the registry as long as the agent does.
            Err(_) => Raced::Terminated("host shut down".into()),
        },
        _ = deadline => Raced::Deadline,
        v = work => Raced::Done(v),
    }
}
