//! `messenger`: the agent of a producer/consumer run over channels
//! (`examples/producer-consumer`). One component plays three roles, chosen by `inputs.role`.
//!
//! Input: the subtask input of a coordinated run ([`SubtaskInput`]). Unknown input names are
//! `invalid-input`, as is anything below that is out of range.
//!
//! - `producer`: `channel` (a channel id), `count` (at most [`MAX_COUNT`]), optional `to` (a
//!   non-empty list of consumer subtask ids, for a `direct` channel: message `i` goes to
//!   `to[i % len]`). Sends `{"n": i}` for `i` in `0..count`. A send refused as `full` is
//!   retried every 10 ms, at most [`MAX_FULL_RETRIES`] times, before the producer fails naming
//!   the channel. Output: `{"sent": count, "ids": [message ids, in send order]}`.
//! - `consumer`: `channel`, where its results go (below), optional `ack` (default `true`: ack
//!   each message once its result is recorded, as a `message-queue` needs; `false` for the
//!   other channel types, whose messages need no ack), optional `workMs` (time each message
//!   takes, at most 60,000; default 0), and optionally `crashOnAttempt` with `crashAfter`
//!   (both or neither): on that attempt it panics on the `crashAfter`-th message it receives,
//!   before recording or acking it, so a `message-queue` delivers that message again. For
//!   each job `{"n"}` it records `{"n", "square": n * n, "by": "<subtask>", "delivery": <its
//!   delivery count>}` first and acks after, so a job is never acked unrecorded (at least once).
//!   It reads until the channel is closed. Output: `{"processed": k, "redelivered": <how many
//!   of them had a delivery count over 1>}`.
//! - `tally`: where the results are, and `expect` (at most [`MAX_COUNT`]), optional `ack` (as
//!   for a consumer, for a results channel). Output: `{"processed": <distinct n recorded>,
//!   "missing": [n in 0..expect not recorded], "redelivered": <recorded n whose last
//!   recording came from a delivery over 1>}`.
//!
//! Results go to exactly one of:
//! - `resultsChannel`: a channel id. Each result is sent on it as JSON; the tally reads the
//!   channel until it is closed (an `event-driven` channel with the consumers as producers and
//!   the tally as consumer keeps every result for it). This is what a coordinated run with
//!   several consumers needs.
//! - `results`: a context id. Each result is set at `/done/<n>` of that document with
//!   `context::update` (the document `{"done": {}}`, type `results`, strategy `strong`, is
//!   created when missing); the tally reads it. The agent that creates the document owns it,
//!   and a coordinated run shares no context between its subtasks' agents, so any other
//!   consumer or tally gets `access-denied`: this works only where one agent both records
//!   and reads, or the document is shared with the others by their agent ids.
//!
//! Either way a job handled twice (redelivered after a crash) is one entry, by `n`; the later
//! recording wins.

mod consume;
mod produce;
mod results;

use qi_guest_sdk::serde_json::{self, Value};
use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, SubtaskInput, Task, TaskOutput};
use serde::Deserialize;

pub use consume::Crash;
pub use results::{Results, Tally};

/// Most messages a producer sends and a tally expects.
pub const MAX_COUNT: u32 = 10_000;
/// How many times a producer sends a message again after `full` before it gives up.
pub const MAX_FULL_RETRIES: u32 = 1_000;
/// Longest `workMs`.
pub const MAX_WORK_MS: u64 = 60_000;

/// The `messenger` agent.
pub struct Messenger;

/// A job as the producer sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Its number, from 0.
    pub n: u32,
}

/// The inputs of each role, as the manifest spells them.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum Role {
    Producer(ProducerInputs),
    Consumer(ConsumerInputs),
    Tally(TallyInputs),
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProducerInputs {
    channel: String,
    count: u32,
    #[serde(default)]
    to: Option<Vec<String>>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConsumerInputs {
    channel: String,
    #[serde(default)]
    results: Option<String>,
    #[serde(default)]
    results_channel: Option<String>,
    #[serde(default = "yes")]
    ack: bool,
    #[serde(default)]
    work_ms: u64,
    #[serde(default)]
    crash_on_attempt: Option<u32>,
    #[serde(default)]
    crash_after: Option<u32>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TallyInputs {
    #[serde(default)]
    results: Option<String>,
    #[serde(default)]
    results_channel: Option<String>,
    expect: u32,
    #[serde(default = "yes")]
    ack: bool,
}

fn yes() -> bool {
    true
}

impl Agent for Messenger {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "messenger".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["messaging".into()],
            description: "Produces jobs on a channel, consumes them (recording each result), or \
                          tallies the results, as its `role` input says."
                .into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input = SubtaskInput::from_task(&task)?;
        let output = match parse(&input)? {
            Role::Producer(p) => produce::produce(&p.channel, p.count, p.to.as_deref())?,
            Role::Consumer(c) => {
                let results = Results::from_inputs(c.results, c.results_channel)?;
                let crash = Crash::from_inputs(c.crash_on_attempt, c.crash_after)?;
                consume::consume(&input, &c.channel, &results, c.ack, c.work_ms, crash)?
            }
            Role::Tally(t) => {
                let results = Results::from_inputs(t.results, t.results_channel)?;
                results.read(t.ack)?.summary(t.expect)
            }
        };
        TaskOutput::json(&output)
    }
}

/// The role and its inputs, checked.
fn parse(input: &SubtaskInput) -> Result<Role, AgentError> {
    let invalid = |why: String| {
        AgentError::InvalidInput(format!(
            "subtask `{}`: the messenger's inputs {why}",
            input.subtask
        ))
    };
    let role: Role = serde_json::from_value(Value::Object(input.inputs.clone()))
        .map_err(|error| invalid(format!("are not valid: {error}")))?;
    let named = |what: &str, id: &str| {
        if id.is_empty() {
            Err(invalid(format!("name an empty {what}")))
        } else {
            Ok(())
        }
    };
    match &role {
        Role::Producer(p) => {
            named("channel", &p.channel)?;
            if p.count > MAX_COUNT {
                return Err(invalid(format!(
                    "ask for {} messages; at most {MAX_COUNT}",
                    p.count
                )));
            }
            if let Some(to) = &p.to {
                if to.is_empty() {
                    return Err(invalid(
                        "give an empty `to`: leave it out, or name consumers".into(),
                    ));
                }
                for consumer in to {
                    named("consumer in `to`", consumer)?;
                }
            }
        }
        Role::Consumer(c) => {
            named("channel", &c.channel)?;
            if c.work_ms > MAX_WORK_MS {
                return Err(invalid(format!(
                    "ask for `workMs` {}; at most {MAX_WORK_MS}",
                    c.work_ms
                )));
            }
        }
        Role::Tally(t) => {
            if t.expect > MAX_COUNT {
                return Err(invalid(format!(
                    "expect {} results; at most {MAX_COUNT}",
                    t.expect
                )));
            }
        }
    }
    Ok(role)
}

qi_guest_sdk::export_agent!(Messenger);

#[cfg(test)]
mod tests {
    use super::*;
    use qi_guest_sdk::serde_json::json;

    fn subtask(inputs: Value) -> SubtaskInput {
        SubtaskInput {
            subtask: "s".into(),
            attempt: 1,
            inputs: match inputs {
                Value::Object(inputs) => inputs,
                other => panic!("inputs must be an object, not {other}"),
            },
            config: Value::Null,
        }
    }

    #[test]
    fn roles_parse_with_their_defaults() {
        assert_eq!(
            parse(&subtask(
                json!({"role": "producer", "channel": "jobs", "count": 40})
            ))
            .unwrap(),
            Role::Producer(ProducerInputs {
                channel: "jobs".into(),
                count: 40,
                to: None
            })
        );
        assert_eq!(
            parse(&subtask(json!({
                "role": "consumer", "channel": "jobs", "resultsChannel": "results",
                "crashOnAttempt": 1, "crashAfter": 5
            })))
            .unwrap(),
            Role::Consumer(ConsumerInputs {
                channel: "jobs".into(),
                results: None,
                results_channel: Some("results".into()),
                ack: true,
                work_ms: 0,
                crash_on_attempt: Some(1),
                crash_after: Some(5),
            })
        );
        assert_eq!(
            parse(&subtask(
                json!({"role": "tally", "results": "results/r1", "expect": 3, "ack": false})
            ))
            .unwrap(),
            Role::Tally(TallyInputs {
                results: Some("results/r1".into()),
                results_channel: None,
                expect: 3,
                ack: false,
            })
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        for (inputs, expected) in [
            (json!({"channel": "jobs"}), "missing field `role`"),
            (json!({"role": "boss"}), "unknown variant `boss`"),
            (
                json!({"role": "producer", "channel": "jobs"}),
                "missing field `count`",
            ),
            (
                json!({"role": "producer", "channel": "jobs", "count": 1, "cnt": 2}),
                "unknown field `cnt`",
            ),
            (
                json!({"role": "producer", "channel": "jobs", "count": 10_001}),
                "at most 10000",
            ),
            (
                json!({"role": "producer", "channel": "jobs", "count": 1, "to": []}),
                "empty `to`",
            ),
            (
                json!({"role": "producer", "channel": "", "count": 1}),
                "empty channel",
            ),
            (
                json!({"role": "consumer", "channel": "jobs", "workMs": 60_001}),
                "`workMs`",
            ),
            (json!({"role": "tally", "expect": -1}), "invalid value"),
        ] {
            let error = parse(&subtask(inputs.clone())).unwrap_err();
            assert_eq!(error.kind(), "invalid-input", "{inputs}: {error}");
            assert!(error.message().contains(expected), "{inputs}: {error}");
            assert!(error.message().contains("subtask `s`"), "{error}");
        }
    }

    #[test]
    fn a_producer_of_too_many_messages_fails_before_sending() {
        let task = Task {
            id: "t".into(),
            description: "produce".into(),
            input: json!({
                "subtask": "produce", "attempt": 1,
                "inputs": {"role": "producer", "channel": "jobs", "count": MAX_COUNT + 1}
            })
            .to_string(),
        };
        // Natively a host call would panic, so this also shows nothing was sent.
        assert_eq!(Messenger::run(task).unwrap_err().kind(), "invalid-input");
    }
}
