//! The failure policy: what a failed attempt leads to under fail-fast,
//! graceful-degradation and retry-cascade.

use super::*;
pub(super) use crate::coord::manifest::MAX_BACKOFF_MS;

/// What kind of failure an attempt ended with; decides which retry-cascade steps apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Anything else: worth another attempt on the same agent.
    Retryable,
    /// A resource limit (fuel, memory, …): never retried on the same agent, may be reassigned.
    Limit,
    /// The agent refused its input: neither retried nor reassigned.
    InvalidInput,
    /// The subtask's time limit passed: may get its deadline extended.
    TimedOut,
    /// No progress for the stall window.
    Stalled,
    /// The host could not keep what the attempt produced (its output could not be committed):
    /// retried like [`Class::Retryable`].
    Host,
}

impl Class {
    /// The name events carry (`attempt-failed`'s `class`).
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Class::Retryable => "retryable",
            Class::Limit => "limit",
            Class::InvalidInput => "invalid-input",
            Class::TimedOut => "timed-out",
            Class::Stalled => "stalled",
            Class::Host => "host",
        }
    }
}

/// The retry-cascade's next step after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Next {
    /// Another attempt on the same agent once `after_ms` passed.
    Retry { after_ms: u64 },
    /// The next attempt on another capable agent kind (candidate index `to`).
    Reassign { to: usize },
    /// Once more with the deadline multiplied by `factor` again.
    Extend { factor: f64 },
    /// No step left: the subtask fails.
    Fail,
}

impl Next {
    /// The event recording the step.
    fn event_kind(&self) -> &'static str {
        match self {
            Next::Retry { .. } => "subtask-retry",
            Next::Reassign { .. } => "subtask-reassigned",
            Next::Extend { .. } => "deadline-extended",
            Next::Fail => "subtask-failed",
        }
    }
}

/// The retry-cascade's decision for subtask `s` after an attempt of class `class` failed:
/// retry on the same agent (only [`Class::Retryable`] and [`Class::Host`], up to
/// `maxAttempts` on this agent), else reassign to the first capable agent not tried yet (not
/// after invalid input, up to `maxReassignments`), else extend the deadline (only after a
/// timeout, up to `maxExtensions`), else fail. Backoff is `backoffMs × backoffFactor^(n-1)`
/// for the n-th attempt on the agent, saturating at [`MAX_BACKOFF_MS`].
pub(super) fn next_step(policy: &RetryPolicy, s: &SubRun, class: Class) -> Next {
    let retryable = matches!(class, Class::Retryable | Class::Host);
    if retryable && s.attempts_on_agent < policy.max_attempts {
        let exponent = s.attempts_on_agent.saturating_sub(1).min(i32::MAX as u32) as i32;
        let backoff = policy.backoff_ms as f64 * policy.backoff_factor.powi(exponent);
        let after_ms = if backoff.is_finite() {
            (backoff as u64).min(MAX_BACKOFF_MS)
        } else {
            MAX_BACKOFF_MS
        };
        return Next::Retry { after_ms };
    }
    if class != Class::InvalidInput
        && s.reassignments < policy.max_reassignments
        && let Some(to) = (0..s.candidates.len()).find(|k| !s.tried.contains(k))
    {
        return Next::Reassign { to };
    }
    if class == Class::TimedOut && s.extensions < policy.max_extensions {
        return Next::Extend {
            factor: policy.deadline_extension_factor,
        };
    }
    Next::Fail
}

impl Run {
    pub(super) async fn on_failure(
        &mut self,
        i: usize,
        attempt: u32,
        class: Class,
        message: String,
    ) {
        match self.manifest.strategy.failure_handling {
            FailureHandling::FailFast => {
                self.settle(i, SubtaskState::Failed, Some(message.clone()))
                    .await;
                self.cancel(format!("`{}` failed: {message}", self.subs[i].id))
                    .await;
            }
            FailureHandling::GracefulDegradation => {
                self.settle(i, SubtaskState::Failed, Some(message)).await;
            }
            FailureHandling::RetryCascade => {
                let next = next_step(&self.manifest.strategy.retry, &self.subs[i], class);
                let s = &mut self.subs[i];
                let then = match &next {
                    Next::Retry { after_ms } => {
                        s.backoff_until = Some(Instant::now() + Duration::from_millis(*after_ms));
                        s.state = SubtaskState::Backoff;
                        format!("retry in {after_ms} ms")
                    }
                    Next::Reassign { to } => {
                        s.agent_idx = *to;
                        s.reassignments += 1;
                        s.attempts_on_agent = 0;
                        s.state = SubtaskState::Pending;
                        format!("reassign to `{}`", s.candidates[*to])
                    }
                    Next::Extend { factor } => {
                        s.extensions += 1;
                        s.attempts_on_agent = 0;
                        s.state = SubtaskState::Pending;
                        format!("extend the deadline ×{factor}")
                    }
                    Next::Fail => {
                        self.settle(i, SubtaskState::Failed, Some(message)).await;
                        return;
                    }
                };
                self.subs[i].attempts[attempt as usize - 1].then = Some(then.clone());
                self.event(
                    next.event_kind(),
                    Some(i),
                    json!({"attempt": attempt, "then": then}),
                )
                .await;
            }
        }
    }

    pub(super) async fn cancel(&mut self, reason: String) {
        if self.cancelled.is_some() {
            return;
        }
        self.cancelled = Some(reason.clone());
        self.cancel_tx.send_replace(true);
        self.event("run-cancelled", None, json!({"reason": reason}))
            .await;
        for i in 0..self.subs.len() {
            match self.subs[i].state {
                SubtaskState::Running => {
                    if let Some(id) = &self.subs[i].agent_id {
                        let _ = self.host.terminate(id, &format!("run cancelled: {reason}"));
                    }
                }
                SubtaskState::Pending | SubtaskState::Backoff => {
                    self.settle(i, SubtaskState::Cancelled, Some(reason.clone()))
                        .await;
                }
                _ => {}
            }
        }
        self.sync.cancel_all(&format!("run cancelled: {reason}"));
    }
}
