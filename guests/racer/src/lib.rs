//! `racer`: makes a number of writes to one shared context, so the host's tests can race two
//! or more of it against each other under each synchronization strategy.
//!
//! Input: `{"context": "<id>", "writes": N, "field": "<name>", "strategy": "strong" |
//! "eventual" | "causal" | "manual", "barrier": optional K}`.
//!
//! - `strong`: each write is a `context::update` that increments `doc[field]` (a missing field
//!   counts as 0), retrying stale writes; every retry is counted in `stale_retries`.
//! - `eventual`, `causal`, `manual`: the agent reads the context once, then makes N
//!   `context::patch` writes of `{field: "<task id>-<i>"}` (i from 0), all based on the version
//!   it read (`causal`: each on the version its previous write returned, as causal requires),
//!   so racers that write at the same time really conflict.
//! - `reads`: before writing, the agent makes R more `context::get` calls of the context (a
//!   read-only agent in a loop, with `writes: 0`); those that succeed are counted in `reads`.
//! - `barrier`: before writing, the agent publishes a `custom` event `{"barrier": <task id>}`
//!   on the context and waits (at most 10 s) until it has seen K different ones, so K racers
//!   start writing together.
//!
//! Output: `{"acked": <writes the host acknowledged>, "reads": <successful extra reads>,
//! "stale_retries": k, "last_version": v,
//! "new_versions": <acknowledged writes that made a version>, "conflicts_seen": <conflicts the
//! write results reported>, "last_value": <the last value written>, "errors": [{"write": i |
//! null, "op", "kind", "message"}]}`. A refused or failed call is listed in `errors`, never a
//! failure of the agent; only input that is not as above is (`invalid-input`).

use qi_guest_sdk::context::{self, ContextError, SyncStrategy};
use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, events, log};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The `racer` agent.
pub struct Racer;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    context: String,
    writes: u32,
    field: String,
    strategy: String,
    #[serde(default)]
    barrier: Option<usize>,
    #[serde(default)]
    reads: u32,
}

/// Longest the agent waits at the barrier.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Tally {
    acked: u64,
    stale_retries: u64,
    last_version: Option<u64>,
    new_versions: u64,
    conflicts_seen: u64,
    last_value: Value,
    errors: Vec<Value>,
}

impl Tally {
    fn error(&mut self, write: Option<u32>, op: &str, kind: &str, message: &str) {
        self.errors
            .push(json!({"write": write, "op": op, "kind": kind, "message": message}));
    }

    fn context_error(&mut self, write: Option<u32>, op: &str, error: &ContextError) {
        self.error(write, op, error.kind(), &error.message());
    }

    fn acked(&mut self, result: &context::WriteResult) {
        self.acked += 1;
        self.last_version = Some(result.version);
        if result.new_version {
            self.new_versions += 1;
        }
        self.conflicts_seen += result.conflict_values().len() as u64;
    }
}

impl Agent for Racer {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "racer".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["context-writes".into()],
            description: "Writes to one shared context N times, racing other writers.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input: Input = task.input_json()?;
        let strategy: SyncStrategy = input.strategy.parse().map_err(AgentError::InvalidInput)?;
        if input.field.is_empty() {
            return Err(AgentError::InvalidInput("`field` must not be empty".into()));
        }
        let mut tally = Tally::default();

        // Read once: the base of every patch, and a check that the document has fields.
        let base = match context::get::<Value>(&input.context) {
            Ok(d) if d.doc.is_object() || d.doc.is_null() => Some(d.version),
            Ok(d) => {
                tally.error(
                    None,
                    "get",
                    "invalid",
                    &format!("the document is not an object but {}", d.doc),
                );
                None
            }
            Err(error) => {
                tally.context_error(None, "get", &error);
                None
            }
        };

        let mut reads = 0u64;
        for _ in 0..input.reads {
            match context::get::<Value>(&input.context) {
                Ok(_) => reads += 1,
                Err(error) => tally.context_error(None, "get", &error),
            }
        }

        if let (Some(_), Some(k)) = (base, input.barrier) {
            barrier(&input.context, &task.id, k, &mut tally);
        }

        if let Some(mut base) = base {
            log::info!(
                task_id = task.id, strategy = strategy.as_str(), writes = input.writes;
                "racing on {}", input.context
            );
            for i in 0..input.writes {
                match strategy {
                    SyncStrategy::Strong => increment(&input, i, &mut tally),
                    _ => {
                        let value = Value::String(format!("{}-{i}", task.id));
                        let patch = json!({ input.field.as_str(): value });
                        match context::patch(&input.context, &patch, Some(base)) {
                            Ok(result) => {
                                tally.acked(&result);
                                tally.last_value = value;
                                // Causal: an agent must base its next write on one it made.
                                if strategy == SyncStrategy::Causal {
                                    base = result.version;
                                }
                            }
                            Err(error) => tally.context_error(Some(i), "patch", &error),
                        }
                    }
                }
            }
        }

        TaskOutput::json(&json!({
            "acked": tally.acked,
            "reads": reads,
            "stale_retries": tally.stale_retries,
            "last_version": tally.last_version,
            "new_versions": tally.new_versions,
            "conflicts_seen": tally.conflicts_seen,
            "last_value": tally.last_value,
            "errors": tally.errors,
        }))
    }
}

/// One strong write: read-modify-write of `doc[field] += 1`, retried while stale.
fn increment(input: &Input, i: u32, tally: &mut Tally) {
    let mut attempts = 0u64;
    let mut written = Value::Null;
    let result = context::update(&input.context, |doc: &mut Value| {
        attempts += 1;
        if doc.is_null() {
            *doc = json!({});
        }
        if let Some(fields) = doc.as_object_mut() {
            let n = fields
                .get(&input.field)
                .and_then(Value::as_u64)
                .unwrap_or(0);
            written = json!(n + 1);
            fields.insert(input.field.clone(), written.clone());
        }
    });
    // Every attempt but an accepted (or otherwise refused) last one was stale.
    tally.stale_retries += match &result {
        Err(ContextError::Stale(_)) => attempts,
        _ => attempts.saturating_sub(1),
    };
    match result {
        Ok(result) => {
            tally.acked(&result);
            tally.last_value = written;
        }
        Err(error) => tally.context_error(Some(i), "update", &error),
    }
}

/// Announces this racer on the context's events and waits until `k` racers have.
fn barrier(context: &str, me: &str, k: usize, tally: &mut Tally) {
    // From the beginning of the history, so announcements made before we subscribed count.
    let mut announcements = match events::subscribe(&[context], &["custom"], Some(0)) {
        Ok(s) => s,
        Err(error) => {
            tally.error(None, "barrier", error.kind(), &error.message());
            return;
        }
    };
    if let Err(error) = events::publish(context, 0, &json!({ "barrier": me })) {
        tally.error(None, "barrier", error.kind(), &error.message());
        return;
    }
    let deadline = Instant::now() + BARRIER_TIMEOUT;
    let mut seen = BTreeSet::new();
    while seen.len() < k {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tally.error(
                None,
                "barrier",
                "timeout",
                &format!("saw {} of {k} racers: {seen:?}", seen.len()),
            );
            return;
        }
        match announcements.next(left) {
            Ok(Some(event)) => {
                if let Some(who) = event.data.get("barrier").and_then(Value::as_str) {
                    seen.insert(who.to_owned());
                }
            }
            Ok(None) => {}
            Err(error) => {
                tally.error(None, "barrier", error.kind(), &error.message());
                return;
            }
        }
    }
}

qi_guest_sdk::export_agent!(Racer);
