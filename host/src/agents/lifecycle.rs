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
use wasmtime::Store;

/// A spawned agent, ready to run one task.
pub struct SubAgent {
    pub(super) component: Arc<LoadedComponent>,
    pub(super) store: Store<AgentState>,
    pub(super) instance: Option<crate::interfaces::Agent>,
    pub(super) description: Option<AgentDescription>,
    pub(super) shared: Arc<AgentShared>,
    pub(super) entry: Arc<AgentEntry>,
    /// The wall-clock deadline, one timer for the agent's whole life (spawn and run).
    pub(super) deadline: Deadline,
    pub(super) max_wasm_stack: usize,
    pub(super) _registration: Registration,
}

impl std::fmt::Debug for SubAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubAgent")
            .field("id", &self.shared.id)
            .field("component", &self.component.path)
            .finish()
    }
}

impl SubAgent {
    /// Host-assigned id.
    pub fn id(&self) -> &str {
        &self.shared.id
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
                entry,
                deadline,
                ..
            } = self;
            race(f(store), deadline, entry).await
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
        usage.stdout_bytes = data.stdout.len() as u64;
        usage.stderr_bytes = data.stderr.len() as u64;
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
            .unwrap_or_else(|| format!("{}-task", self.shared.id));
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
        mut self,
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
        // The agent has ended: nothing writes to its captures any more.
        let stdout = data.stdout.take();
        let stderr = data.stderr.take();
        let (output, failure) = match outcome {
            Ok(v) => (Some(v), None),
            Err(f) => (None, Some(f)),
        };
        let summary = failure.as_ref().map(failure::summary);
        match &summary {
            None => tracing::debug!(agent = %self.shared.id, "agent completed"),
            Some(f) => tracing::info!(agent = %self.shared.id, failure = %f, "agent failed"),
        }
        self.shared.audit("lifecycle", "finish", || {
            (
                summary.unwrap_or_else(|| "completed".to_string()),
                serde_json::json!({"status": status, "fuel": usage.fuel_consumed}),
            )
        });
        AgentReport {
            agent_id: self.shared.id.clone(),
            task_id,
            agent: self.description.take(),
            status,
            error_category: failure.as_ref().map(AgentFailure::category),
            output,
            failure,
            usage,
            logs: std::mem::take(&mut *self.shared.logs.lock().expect("log lock poisoned")),
            host_call_log: std::mem::take(
                &mut *self.shared.call_log.lock().expect("call log poisoned"),
            ),
            stdout: lossy_utf8(stdout),
            stderr: lossy_utf8(stderr),
            audit_head: None,
        }
    }
}

/// `bytes` as text, without a copy when it is valid UTF-8.
fn lossy_utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

enum Raced<T> {
    Done(T),
    Deadline,
    Terminated(String),
}

/// The agent's wall-clock deadline. Its timer is registered only the first time a guarded
/// call has to wait (see [`race`]), so an agent that never waits never touches the timer
/// wheel.
pub(super) struct Deadline {
    at: tokio::time::Instant,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    pub(super) fn new(at: tokio::time::Instant) -> Self {
        Deadline { at, timer: None }
    }

    /// True when the deadline is already behind us (read on the timer's clock, so paused
    /// test time agrees with [`passed`](Self::passed)).
    fn is_past(&self) -> bool {
        tokio::time::Instant::now() >= self.at
    }

    /// Resolves when the deadline has passed. The clock is read at every poll (every time
    /// the guest yields or a host call wakes it), not only when the timer fires: tokio fires
    /// timers when its driver turns, which a guest that keeps yielding delays by dozens of
    /// fuel yield intervals.
    fn passed(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_past() {
                return std::task::Poll::Ready(());
            }
            let at = self.at;
            self.timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
                .as_mut()
                .poll(cx)
        })
    }
}

async fn race<T>(
    work: impl Future<Output = T>,
    deadline: &mut Deadline,
    entry: &AgentEntry,
) -> Raced<T> {
    if let Some(reason) = entry.terminate_reason() {
        return Raced::Terminated(reason.to_string());
    }
    // The deadline covers the agent's whole life from spawn: a call begun after it (a run
    // started late) must not let the guest work, even work that would finish without a
    // yield. One clock read; the timer itself is still made only on the first wait.
    if deadline.is_past() {
        return Raced::Deadline;
    }
    // The work is polled first: a guest that finishes without ever yielding (no pending host
    // call, fewer instructions than one fuel yield interval) is done before the deadline timer
    // or the terminate signal is even registered, which saves both registrations. A guest
    // that runs longer yields at least every `fuelYieldInterval` units of fuel, and at every
    // yield the signal and the deadline are polled, so neither waits more than one interval.
    tokio::select! {
        biased;
        v = work => Raced::Done(v),
        reason = entry.terminated() => Raced::Terminated(reason),
        _ = deadline.passed() => Raced::Deadline,
    }
}
