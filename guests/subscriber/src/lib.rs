//! `subscriber`: waits for updates of one shared context, so the host's tests can check that
//! event delivery to a guest is complete, in order and without gaps.
//!
//! Input: `{"context": "<id>", "expect": N, "timeout_ms": T, "after_seq": optional seq,
//! "linger_ms": optional ms}`. The agent subscribes to the context's `updated` events (from
//! now, or resuming after `after_seq`) and collects them until N have arrived or T ms have
//! passed; with `linger_ms` it then keeps listening that long for events beyond N (which it
//! also reports, so a test can check that exactly N came). With `"signal": "<key>"` it calls
//! the host tool `test.signal` with `{"key", "subscribed": true}` once its subscription is in
//! place and with `{"key", "seq"}` after each event it receives, so a test can act on what
//! the agent has observed instead of waiting for time to pass.
//!
//! Output: `{"events": [{"seq", "version": <data.version>, "agent": <agent id>}],
//! "gap_free": <seqs strictly increasing>, "received": n, "last_seq": <resume point>,
//! "error": null | "<kind: message>"}`. A subscription that cannot be made is the agent's
//! `failed` error naming why; an error while waiting ends the wait and is reported in
//! `error`.

use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, events, log};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// The `subscriber` agent.
pub struct Subscriber;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    context: String,
    expect: usize,
    timeout_ms: u64,
    #[serde(default)]
    after_seq: Option<u64>,
    #[serde(default)]
    linger_ms: u64,
    #[serde(default)]
    signal: Option<String>,
}

/// Calls `test.signal` with `data` plus `"key": key`, when the test asked for signals.
fn signal(key: &Option<String>, mut data: Value) -> Result<(), AgentError> {
    let Some(key) = key else { return Ok(()) };
    data["key"] = json!(key);
    qi_guest_sdk::tools::call_raw("test.signal", &data.to_string())
        .map(drop)
        .map_err(|e| AgentError::Failed(format!("test.signal: {e}")))
}

impl Agent for Subscriber {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "subscriber".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["context-events".into()],
            description: "Collects the update events of one context until it has enough.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input: Input = task.input_json()?;
        let mut updates = events::subscribe(&[&input.context], &["updated"], input.after_seq)?;
        log::info!(
            task_id = task.id, subscription = updates.id();
            "waiting for {} updates of {}", input.expect, input.context
        );

        signal(
            &input.signal,
            json!({"subscribed": true, "starts_after": updates.starts_after()}),
        )?;

        let deadline = Instant::now() + Duration::from_millis(input.timeout_ms);
        let mut received: Vec<events::Event> = Vec::new();
        let mut error = None;
        let mut linger_until = None;
        loop {
            let now = Instant::now();
            if received.len() >= input.expect && linger_until.is_none() {
                linger_until = Some(now + Duration::from_millis(input.linger_ms));
            }
            let until = linger_until.unwrap_or(deadline);
            let left = until.saturating_duration_since(now);
            if left.is_zero() {
                break;
            }
            match updates.next(left) {
                Ok(Some(event)) => {
                    signal(&input.signal, json!({"seq": event.seq}))?;
                    received.push(event);
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }

        let gap_free = received.windows(2).all(|w| w[0].seq < w[1].seq);
        let listed: Vec<Value> = received
            .iter()
            .map(|e| json!({"seq": e.seq, "version": e.data["version"], "agent": e.agent_id}))
            .collect();
        TaskOutput::json(&json!({
            "events": listed,
            "gap_free": gap_free,
            "received": received.len(),
            "last_seq": updates.last_seq(),
            "error": error,
        }))
    }
}

qi_guest_sdk::export_agent!(Subscriber);
