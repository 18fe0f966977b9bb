//! The producer: sends the jobs, waiting out a full channel.

use std::time::Duration;

use qi_guest_sdk::channels::{self, ChannelError};
use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::{AgentError, log};

use crate::{Job, MAX_FULL_RETRIES};

/// How long the producer waits before sending again into a full channel.
const FULL_PAUSE: Duration = Duration::from_millis(10);

/// Sends `{"n": i}` for `i` in `0..count` on `channel` (round robin over `to` when given) and
/// returns `{"sent": count, "ids": [...]}`.
pub(crate) fn produce(
    channel: &str,
    count: u32,
    to: Option<&[String]>,
) -> Result<Value, AgentError> {
    let mut ids = Vec::with_capacity(count as usize);
    let mut waits = 0u64;
    for n in 0..count {
        let job = Job { n };
        let recipient = to.map(|to| to[n as usize % to.len()].as_str());
        let id = send_until_accepted(
            || match recipient {
                Some(to) => channels::send_json_to(channel, to, &job),
                None => channels::send_json(channel, &job),
            },
            MAX_FULL_RETRIES,
            || {
                waits += 1;
                std::thread::sleep(FULL_PAUSE);
            },
        )
        .map_err(|error| match error {
            ChannelError::Full(_) => AgentError::Failed(format!(
                "channel `{channel}` stayed full: job {n} was refused {} times, {} ms apart \
                 ({error}); are its consumers running?",
                MAX_FULL_RETRIES + 1,
                FULL_PAUSE.as_millis()
            )),
            other => AgentError::Failed(format!("sending job {n} on `{channel}`: {other}")),
        })?;
        ids.push(id);
    }
    if waits > 0 {
        log::info!(channel = channel, waits = waits; "waited {waits} times for room on `{channel}`");
    }
    Ok(json!({"sent": count, "ids": ids}))
}

/// Calls `send` until it is not [`ChannelError::Full`], calling `pause` before each of at most
/// `retries` repeats; returns the last `full` when they run out, and any other error at once.
fn send_until_accepted(
    mut send: impl FnMut() -> Result<u64, ChannelError>,
    retries: u32,
    mut pause: impl FnMut(),
) -> Result<u64, ChannelError> {
    let mut result = send();
    for _ in 0..retries {
        match result {
            Err(ChannelError::Full(_)) => {
                pause();
                result = send();
            }
            _ => break,
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scripted(
        script: Vec<Result<u64, ChannelError>>,
        retries: u32,
    ) -> (Result<u64, ChannelError>, usize, usize) {
        let mut script = script.into_iter();
        let (mut sends, mut pauses) = (0, 0);
        let result = send_until_accepted(
            || {
                sends += 1;
                script.next().expect("sent more often than scripted")
            },
            retries,
            || pauses += 1,
        );
        (result, sends, pauses)
    }

    fn full() -> Result<u64, ChannelError> {
        Err(ChannelError::Full("holds 4".into()))
    }

    #[test]
    fn a_full_channel_is_waited_out() {
        assert_eq!(scripted(vec![Ok(7)], 3), (Ok(7), 1, 0));
        assert_eq!(scripted(vec![full(), full(), Ok(9)], 3), (Ok(9), 3, 2));
        // Exactly as many retries as allowed still succeeds ...
        assert_eq!(
            scripted(vec![full(), full(), full(), Ok(1)], 3),
            (Ok(1), 4, 3)
        );
        // ... one more full and it gives up with it.
        assert_eq!(
            scripted(vec![full(), full(), full(), full()], 3),
            (full(), 4, 3)
        );
    }

    #[test]
    fn other_errors_are_not_retried() {
        let invalid = Err(ChannelError::Invalid("not a producer".into()));
        assert_eq!(scripted(vec![invalid.clone()], 3), (invalid, 1, 0));
        let too_large = Err(ChannelError::TooLarge("2 bytes over".into()));
        assert_eq!(
            scripted(vec![full(), too_large.clone()], 3),
            (too_large, 2, 1)
        );
    }
}
