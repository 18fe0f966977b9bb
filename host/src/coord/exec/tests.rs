use super::*;
use std::path::Path;

fn subtask(extra: &str) -> crate::coord::manifest::SubtaskDef {
    let text = format!(
        "[task]\nid = \"t\"\n[strategy]\ntype = \"hybrid\"\n[agents.w]\ncomponent = \"guest:worker\"\n[[subtasks]]\nid = \"s\"\n{extra}\n"
    );
    Manifest::parse(&text, Path::new("m.toml"))
        .expect("manifest parses")
        .subtasks
        .remove(0)
}

#[test]
fn run_ids_are_substituted_in_every_string_of_a_literal_input() {
    let v = json!({"ctx": "run/{run}/x", "list": ["{run}", 1, {"deep": "a{run}b"}], "n": 2});
    assert_eq!(
        substitute_run(&v, "run-1"),
        json!({"ctx": "run/run-1/x", "list": ["run-1", 1, {"deep": "arun-1b"}], "n": 2})
    );
}

#[test]
fn a_missing_declared_output_fails_the_attempt_naming_it() {
    let def = subtask("outputs = [\"a\", \"b\"]");
    assert_eq!(check_output(&def, &json!({"a": 1, "b": null}), 0), Ok(()));
    let e = check_output(&def, &json!({"a": 1}), 0).unwrap_err();
    assert!(e.contains("lacks declared output(s) b"), "{e}");
}

/// Each criterion just met passes and just missed fails, naming the measurement.
#[test]
fn success_criteria_pass_at_their_threshold_and_fail_past_it() {
    let criterion = |kind: &str, threshold: f64, at: &str| {
        subtask(&format!(
            "successCriteria = [{{ criterion = \"{kind}\", threshold = {threshold:?}, measurement = \"{at}\" }}]"
        ))
    };
    let out = json!({"score": 0.8, "items": [1], "none": []});
    let min = criterion("min-value", 0.8, "/score");
    assert_eq!(check_output(&min, &out, 0), Ok(()));
    let e = check_output(&criterion("min-value", 0.81, "/score"), &out, 0).unwrap_err();
    assert!(
        e.contains("`min-value` not met (measurement /score = 0.8"),
        "{e}"
    );
    assert_eq!(
        check_output(&criterion("max-value", 0.8, "/score"), &out, 0),
        Ok(())
    );
    assert!(check_output(&criterion("max-value", 0.79, "/score"), &out, 0).is_err());
    // A measurement that is missing or not a number never meets a bound.
    assert!(check_output(&criterion("min-value", 0.0, "/nothing"), &out, 0).is_err());
    assert_eq!(
        check_output(&criterion("non-empty", 0.0, "/items"), &out, 0),
        Ok(())
    );
    assert!(check_output(&criterion("non-empty", 0.0, "/none"), &out, 0).is_err());
    let dur = criterion("max-duration-ms", 100.0, "");
    assert_eq!(check_output(&dur, &out, 100), Ok(()));
    let e = check_output(&dur, &out, 101).unwrap_err();
    assert!(e.contains("took 101 ms"), "{e}");
    assert!(check_output(&criterion("no-such-criterion", 0.0, ""), &out, 0).is_err());
}

mod retry_cascade {
    use super::super::failure::{Class, MAX_BACKOFF_MS, Next, next_step};
    use super::super::{RetryPolicy, SubRun};

    fn sub(candidates: &[&str]) -> SubRun {
        SubRun::new(
            "s".into(),
            candidates.iter().map(|c| c.to_string()).collect(),
            None,
        )
    }

    /// `s` after `n` attempts on candidate `k`.
    fn ran(mut s: SubRun, k: usize, n: u32) -> SubRun {
        s.agent_idx = k;
        s.tried.insert(k);
        s.attempts_on_agent = n;
        s
    }

    #[test]
    fn a_retryable_failure_is_retried_with_exponential_backoff_up_to_max_attempts() {
        let p = RetryPolicy {
            max_attempts: 3,
            backoff_ms: 100,
            backoff_factor: 2.0,
            ..RetryPolicy::default()
        };
        let s = ran(sub(&["a"]), 0, 1);
        assert_eq!(
            next_step(&p, &s, Class::Retryable),
            Next::Retry { after_ms: 100 }
        );
        let s = ran(sub(&["a"]), 0, 2);
        assert_eq!(
            next_step(&p, &s, Class::Host),
            Next::Retry { after_ms: 200 }
        );
        // The last attempt allowed on the only agent: nothing left.
        let s = ran(sub(&["a"]), 0, 3);
        assert_eq!(next_step(&p, &s, Class::Retryable), Next::Fail);
    }

    #[test]
    fn backoff_saturates_at_its_ceiling_whatever_the_factor() {
        let p = RetryPolicy {
            max_attempts: 1000,
            backoff_ms: u64::MAX,
            backoff_factor: 1e300,
            ..RetryPolicy::default()
        };
        let s = ran(sub(&["a"]), 0, 999);
        assert_eq!(
            next_step(&p, &s, Class::Retryable),
            Next::Retry {
                after_ms: MAX_BACKOFF_MS
            }
        );
    }

    #[test]
    fn reassignment_tries_every_capable_agent_not_tried_yet_including_earlier_ones() {
        let p = RetryPolicy {
            max_attempts: 1,
            max_reassignments: 5,
            ..RetryPolicy::default()
        };
        // Adaptive started on the last candidate: the earlier ones are still to try.
        let s = ran(sub(&["a", "b", "c"]), 2, 1);
        assert_eq!(next_step(&p, &s, Class::Limit), Next::Reassign { to: 0 });
        let mut s = ran(s, 0, 1);
        s.reassignments = 1;
        assert_eq!(next_step(&p, &s, Class::Limit), Next::Reassign { to: 1 });
        let mut s = ran(s, 1, 1);
        s.reassignments = 2;
        assert_eq!(next_step(&p, &s, Class::Limit), Next::Fail);
    }

    #[test]
    fn invalid_input_is_never_retried_or_reassigned_and_only_a_timeout_is_extended() {
        let p = RetryPolicy {
            max_attempts: 1,
            max_reassignments: 0,
            max_extensions: 1,
            ..RetryPolicy::default()
        };
        let s = ran(sub(&["a", "b"]), 0, 1);
        assert_eq!(next_step(&p, &s, Class::InvalidInput), Next::Fail);
        assert_eq!(next_step(&p, &s, Class::Stalled), Next::Fail);
        assert_eq!(
            next_step(&p, &s, Class::TimedOut),
            Next::Extend { factor: 1.5 }
        );
        let mut s = s;
        s.extensions = 1;
        assert_eq!(next_step(&p, &s, Class::TimedOut), Next::Fail);
        // Reassignments within the bound come before an extension.
        let p = RetryPolicy {
            max_reassignments: 1,
            ..p
        };
        let s = ran(sub(&["a", "b"]), 0, 1);
        assert_eq!(next_step(&p, &s, Class::TimedOut), Next::Reassign { to: 1 });
    }
}

mod done_guard {
    use super::super::attempt::Msg;
    use super::super::watchdog::DoneGuard;
    use tokio::sync::mpsc;

    fn failure(msg: Msg) -> String {
        match msg {
            Msg::Done {
                idx,
                attempt,
                report,
                stop,
                ..
            } => {
                assert_eq!((idx, attempt, stop), (3, 2, None));
                match *report {
                    Err(e) => e.to_string(),
                    Ok(r) => panic!("expected a failure, got {r:?}"),
                }
            }
            Msg::Spawned { .. } => panic!("expected Done"),
        }
    }

    #[tokio::test]
    async fn an_attempt_task_that_panics_reports_its_attempt_failed() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let _done = DoneGuard::new(tx, 3, 2, 0);
            panic!("a bug in the attempt runner");
        });
        assert!(task.await.unwrap_err().is_panic());
        let message = failure(rx.recv().await.expect("the guard reported"));
        assert!(message.contains("attempt 2 panicked"), "{message}");
        assert!(rx.recv().await.is_none(), "reported once");
    }

    #[tokio::test]
    async fn an_attempt_task_that_is_dropped_reports_its_attempt_failed() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _done = DoneGuard::new(tx, 3, 2, 0);
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        started_rx.await.unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        let message = failure(rx.recv().await.expect("the guard reported"));
        assert!(message.contains("attempt 2 was cancelled"), "{message}");
    }
}
