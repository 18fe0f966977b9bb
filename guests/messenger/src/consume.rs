//! The consumer: handles every job of its channel, recording each result before acking it.

use std::time::Duration;

use qi_guest_sdk::channels;
use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::{AgentError, SubtaskInput, log};

use crate::Job;
use crate::results::{Done, Results};

/// How long one wait for a message lasts; the consumer waits again until the channel closes.
const WAIT: Duration = Duration::from_secs(1);

/// A crash on purpose: on attempt `attempt`, on the `after`-th message that attempt receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    /// The attempt that crashes (1 is the first).
    pub attempt: u32,
    /// Which received message it crashes on (1 is the first), before handling it.
    pub after: u32,
}

impl Crash {
    /// The crash the inputs `crashOnAttempt` and `crashAfter` ask for: both or neither, each at
    /// least 1.
    ///
    /// # Errors
    ///
    /// [`AgentError::InvalidInput`] when only one is given, or either is 0.
    pub fn from_inputs(
        attempt: Option<u32>,
        after: Option<u32>,
    ) -> Result<Option<Crash>, AgentError> {
        match (attempt, after) {
            (None, None) => Ok(None),
            (Some(attempt), Some(after)) if attempt >= 1 && after >= 1 => {
                Ok(Some(Crash { attempt, after }))
            }
            (Some(_), Some(_)) => Err(AgentError::InvalidInput(
                "`crashOnAttempt` and `crashAfter` count from 1".into(),
            )),
            _ => Err(AgentError::InvalidInput(
                "give both `crashOnAttempt` and `crashAfter`, or neither".into(),
            )),
        }
    }

    /// Whether attempt `attempt` crashes on its `received`-th message.
    pub fn hits(&self, attempt: u32, received: u32) -> bool {
        attempt == self.attempt && received == self.after
    }
}

/// Receives the jobs of `channel` until it is closed; records each result in `results`, then
/// acks the message when `ack`. Returns `{"processed", "redelivered"}`.
pub(crate) fn consume(
    input: &SubtaskInput,
    channel: &str,
    results: &Results,
    ack: bool,
    work_ms: u64,
    crash: Option<Crash>,
) -> Result<Value, AgentError> {
    let (mut received, mut processed, mut redelivered) = (0u32, 0u32, 0u32);
    for message in channels::messages(channel, WAIT) {
        let message = message?;
        received += 1;
        if crash.is_some_and(|crash| crash.hits(input.attempt, received)) {
            panic!("consumer crashing on purpose after {received} messages");
        }
        let job: Job = message.json()?;
        if work_ms > 0 {
            std::thread::sleep(Duration::from_millis(work_ms));
        }
        if message.delivery_count > 1 {
            redelivered += 1;
            log::info!(n = job.n, delivery = message.delivery_count; "job {} again", job.n);
        }
        results.record(&Done::of(job, &input.subtask, message.delivery_count))?;
        if ack {
            message.ack()?;
        }
        processed += 1;
    }
    Ok(json!({"processed": processed, "redelivered": redelivered}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_hits_one_message_of_one_attempt() {
        let crash = Crash::from_inputs(Some(1), Some(5)).unwrap().unwrap();
        assert!(crash.hits(1, 5));
        assert!(!crash.hits(1, 4));
        assert!(!crash.hits(1, 6));
        assert!(!crash.hits(2, 5));
        assert_eq!(Crash::from_inputs(None, None).unwrap(), None);
    }

    #[test]
    fn a_crash_needs_both_inputs_from_1() {
        for (attempt, after, expected) in [
            (Some(1), None, "both"),
            (None, Some(5), "both"),
            (Some(0), Some(5), "from 1"),
            (Some(1), Some(0), "from 1"),
        ] {
            let error = Crash::from_inputs(attempt, after).unwrap_err();
            assert_eq!(error.kind(), "invalid-input");
            assert!(error.message().contains(expected), "{error}");
        }
    }
}
