//! Failure handling in detail: the retry-cascade steps, time limits and stalls, and the
//! resource budget.

use super::*;

mod retry_cascade {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transient_failure_is_retried_with_backoff_and_succeeds() {
        let h = harness().await;
        let toml = header("hybrid", "retry-cascade", "")
            + &one("t1", None, r#"[{ fail_before_attempt = 2 }]"#, "");
        let (r, ev) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let t = result(&r, "t1");
        assert_eq!(t.attempts.len(), 2);
        assert_eq!(t.attempts[0].then.as_deref(), Some("retry in 20 ms"));
        // The backoff is a lower bound: the retry cannot start earlier.
        assert!(t.attempts[1].started_ms >= t.attempts[0].started_ms + 20);
        assert_eq!(t.output.as_ref().unwrap()["attempt"], 2);
        assert_eq!(at(&ev, "subtask-retry", "t1").len(), 1);
        // The retry runs in a fresh agent instance, not in the one that failed.
        let (first, retry) = (&t.attempts[0].agent_id, &t.attempts[1].agent_id);
        assert!(
            first.is_some() && retry.is_some() && first != retry,
            "{t:#?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_limit_violation_is_not_retried_but_reassigned() {
        let h = harness().await;
        let toml = header("hybrid", "retry-cascade", "")
            + r#"
[agents.tiny]
component = "guest:worker"
spec = { capabilities = ["work"], fuel = 100_000 }
"# + &one(
            "t1",
            Some("tiny"),
            r#"[{ work = 10_000_000 }]"#,
            r#"requirements = { capabilities = ["work"] }"#,
        );
        let (r, _) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let t = result(&r, "t1");
        let agents: Vec<&str> = t.attempts.iter().map(|a| a.agent.as_str()).collect();
        assert_eq!(agents[0], "tiny");
        assert!(t.attempts[0].outcome.contains("fuel"), "{t:#?}");
        assert_eq!(t.attempts.len(), 2, "no retry on `tiny`: {t:#?}");
        assert_ne!(agents[1], "tiny");
        assert!(
            t.attempts[0]
                .then
                .as_deref()
                .unwrap()
                .starts_with("reassign")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_input_is_neither_retried_nor_reassigned() {
        let h = harness().await;
        let toml = header("hybrid", "retry-cascade", "")
            + &one("t1", None, r#"[{ invalid = "bad shape" }]"#, "");
        let (r, ev) = h.run(&toml).await;
        let t = result(&r, "t1");
        assert_eq!(t.state, SubtaskState::Failed);
        assert_eq!(t.attempts.len(), 1, "{t:#?}");
        assert!(t.error.as_deref().unwrap().contains("bad shape"));
        assert!(at(&ev, "subtask-retry", "t1").is_empty());
        assert!(at(&ev, "subtask-reassigned", "t1").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_config_specific_failure_moves_to_another_agent() {
        let h = harness().await;
        let toml = header("hybrid", "retry-cascade", "")
            + r#"
[agents.flaky]
component = "guest:worker"
config = { flaky = true }
spec = { capabilities = ["work"] }
"# + &one(
            "t1",
            Some("flaky"),
            r#"[{ fail_if_config = "flaky" }]"#,
            r#"requirements = { capabilities = ["work"] }"#,
        );
        let (r, ev) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let t = result(&r, "t1");
        let agents: Vec<&str> = t.attempts.iter().map(|a| a.agent.as_str()).collect();
        // Two attempts on `flaky` (one retry), then the next capable agent, where it succeeds.
        assert_eq!(agents.len(), 3, "{t:#?}");
        assert_eq!(&agents[..2], ["flaky", "flaky"]);
        assert_ne!(agents[2], "flaky");
        assert_eq!(at(&ev, "subtask-reassigned", "t1").len(), 1);
    }

    /// One agent kind, no retry, no reassignment: the extension is the only step left.
    fn extension_task(steps: &str) -> String {
        r#"
[task]
id = "t"
[strategy]
type = "hybrid"
failureHandling = "retry-cascade"
retry = { maxAttempts = 1, maxReassignments = 0, deadlineExtensionFactor = 3.0, maxExtensions = 1 }
[agents.worker]
component = "guest:worker"
"#
        .to_string()
            + &one("slow", None, steps, "timeLimitMs = 150")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_out_subtask_gets_its_deadline_extended_once() {
        let h = harness().await;
        // The first attempt hangs until its time limit ends it; the extended one finishes.
        let (r, ev) = h
            .run(&extension_task(r#"[{ hang_before_attempt = 2 }]"#))
            .await;
        assert!(r.success, "{r:#?}");
        let t = result(&r, "slow");
        assert_eq!(t.attempts.len(), 2);
        assert!(t.attempts[0].outcome.contains("timed out"), "{t:#?}");
        assert!(t.attempts[0].duration_ms >= 150, "{t:#?}");
        assert_eq!(
            t.attempts[0].then.as_deref(),
            Some("extend the deadline ×3")
        );
        assert_eq!(at(&ev, "deadline-extended", "slow").len(), 1);

        // An attempt that hangs past the extension too (150 ms × 3) fails for good.
        let (r, _) = h.run(&extension_task(r#"[{ hang = true }]"#)).await;
        let t = result(&r, "slow");
        assert_eq!(t.state, SubtaskState::Failed);
        assert_eq!(t.attempts.len(), 2, "only one extension: {t:#?}");
        assert!(t.attempts[1].outcome.contains("timed out"), "{t:#?}");
        assert!(t.attempts[1].duration_ms >= 450, "extended ×3: {t:#?}");
        assert_eq!(t.attempts[1].then, None);
    }
}

mod timeouts {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_that_stops_making_progress_is_terminated() {
        let h = harness().await;
        // `stuck` blocks in a tool call that never returns (a gate nobody opens): no fuel, no
        // wake-up, no wait with a timeout of its own. `busy` only computes, for far longer
        // than the stall window (200 M rounds are about 0.4 s here, 5.6 G fuel), without a
        // host call. `sleepy` sleeps twice the stall window: a wait with its own timeout.
        let toml = header("hybrid", "graceful-degradation", "stallWindowMs = 300")
            + r#"
[agents.cruncher]
component = "guest:worker"
spec = { fuel = 10_000_000_000, resourceLimits = { maxMemoryMB = 32, maxExecutionTimeMs = 60000 } }
"# + &one("stuck", None, &format!("[{}]", gate("never")), "")
            + &one("busy", Some("cruncher"), r#"[{ work = 200_000_000 }]"#, "")
            + &one("sleepy", None, r#"[{ sleep_ms = 600 }]"#, "");
        let (r, _) = h.run(&toml).await;
        let stuck = result(&r, "stuck");
        assert_eq!(stuck.state, SubtaskState::Failed);
        assert!(
            stuck
                .error
                .as_deref()
                .unwrap()
                .contains("no progress for 300 ms"),
            "{stuck:#?}"
        );
        // Computing (fuel moving) is progress.
        assert_eq!(state(&r, "busy"), SubtaskState::Completed);
        // Sleeping on a clock is waiting, not a stall.
        assert_eq!(state(&r, "sleepy"), SubtaskState::Completed, "{r:#?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timer_subscribed_and_dropped_does_not_pass_a_stuck_agent_for_a_sleeper() {
        let h = harness().await;
        // `faker` subscribes to a one-hour clock without waiting on it, then blocks in a tool
        // call that never returns; `plain` only blocks. Both stall.
        let toml = header("hybrid", "graceful-degradation", "stallWindowMs = 300")
            + &format!(
                r#"
[agents.hostile]
component = "guest:hostile"
spec = {{ resourceLimits = {{ maxMemoryMB = 32, maxExecutionTimeMs = 20000 }}, {TEST_TOOLS} }}

[[subtasks]]
id = "faker"
agent = "hostile"
inputs = [{{ name = "mode", value = "host.timer-then-tool" }}, {{ name = "timer_ms", value = 3600000 }}, {{ name = "tool", value = "test.gate" }}, {{ name = "input", value = {{ name = "never" }} }}]
"#
            )
            + &one("plain", Some("worker"), &format!("[{}]", gate("never")), "");
        let (r, _) = h.run(&toml).await;
        for id in ["faker", "plain"] {
            let t = result(&r, id);
            assert_eq!(t.state, SubtaskState::Failed, "{t:#?}");
            assert!(
                t.error
                    .as_deref()
                    .unwrap()
                    .contains("no progress for 300 ms"),
                "{t:#?}"
            );
        }
    }

    /// A `hostile` agent kind whose `describe()` never returns once `spin` exists in `dir`
    /// (written after planning, which describes every agent), with the agent's own time limit
    /// at 60 s: only the subtask's limits or the run can stop it sooner.
    fn spinning_describe(dir: &Path) -> String {
        format!(
            r#"
[agents.spinner]
component = "guest:hostile"
spec = {{ isolationLevel = "restricted", fuel = 200_000_000_000, resourceLimits = {{ maxMemoryMB = 32, maxExecutionTimeMs = 60000 }}, securityConstraints = {{ fileSystemAccess = "restricted" }}, directories = [{{ hostPath = "{}", guestPath = "/describe", writable = false }}] }}
"#,
            dir.display()
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn planning_waits_for_describe_only_up_to_the_hosts_describe_limit() {
        // An agent whose describe() sleeps first, on a host that allows 300 ms.
        let host = AgentHost::new(HostConfig {
            describe_limit_ms: 300,
            cache_dir: Some(crate::common::cache_dir()),
            ..HostConfig::default()
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let toml = header("hybrid", "graceful-degradation", "")
            + &spinning_describe(dir.path())
            + &one("s", Some("spinner"), "[]", "");
        let path = Path::new("test.toml");
        let prepare = |toml: String| {
            let host = &host;
            async move {
                let manifest = coord::Manifest::parse(&toml, path).unwrap();
                coord::prepare_parsed(host, manifest, &toml, path, Some(&guest_dir())).await
            }
        };
        // Just inside: a describe() of 100 ms plans.
        std::fs::write(dir.path().join("sleep_ms"), "100").unwrap();
        prepare(toml.clone())
            .await
            .expect("describe answers within the limit");
        // Past it: 1 s is refused at the limit, naming the agent.
        std::fs::write(dir.path().join("sleep_ms"), "1000").unwrap();
        let e = prepare(toml.clone()).await.unwrap_err().to_string();
        assert!(
            e.contains("agents.spinner")
                && e.contains("did not start and answer describe() within 300 ms"),
            "{e}"
        );
        // A describe() that never returns is refused the same way.
        std::fs::remove_file(dir.path().join("sleep_ms")).unwrap();
        std::fs::write(dir.path().join("spin"), "").unwrap();
        let e = prepare(toml).await.unwrap_err().to_string();
        assert!(e.contains("within 300 ms"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_that_never_finishes_starting_is_stopped_at_the_subtask_time_limit() {
        let h = harness().await;
        let dir = tempfile::tempdir().unwrap();
        let toml = header("hybrid", "graceful-degradation", "")
            + &spinning_describe(dir.path())
            + &one("slow-start", Some("spinner"), "[]", "timeLimitMs = 300");
        let prepared = h.prepare(&toml).await.expect("valid");
        std::fs::write(dir.path().join("spin"), "").unwrap();
        let (r, _) = h.run_prepared(&prepared, RunOptions::default()).await;
        let t = result(&r, "slow-start");
        assert_eq!(t.state, SubtaskState::Failed, "{t:#?}");
        let e = t.error.as_deref().unwrap();
        assert!(
            e.contains("timed out after") && e.contains("while the agent was starting"),
            "{e}"
        );
        assert!(t.attempts[0].agent_id.is_none(), "it never started: {t:#?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_run_stops_an_agent_still_starting() {
        let h = harness().await;
        let dir = tempfile::tempdir().unwrap();
        let toml = header("hybrid", "graceful-degradation", "")
            .replace("id = \"t\"", "id = \"t\"\ntimeLimitMs = 300")
            + &spinning_describe(dir.path())
            + &one("slow-start", Some("spinner"), "[]", "");
        let prepared = h.prepare(&toml).await.expect("valid");
        std::fs::write(dir.path().join("spin"), "").unwrap();
        let (r, _) = h.run_prepared(&prepared, RunOptions::default()).await;
        assert!(
            r.error.as_deref().unwrap().contains("timeLimitMs"),
            "{r:#?}"
        );
        let t = result(&r, "slow-start");
        assert_eq!(t.state, SubtaskState::Cancelled, "{t:#?}");
        // Stopped by the cancellation, not by the agent's own 60 s limit.
        let outcome = &t.attempts[0].outcome;
        assert!(outcome.contains("Cancelled"), "{outcome}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_task_time_limit_cancels_the_run() {
        let h = harness().await;
        let toml = header("sequential", "graceful-degradation", "")
            .replace("id = \"t\"", "id = \"t\"\ntimeLimitMs = 300")
            + &one("long", None, r#"[{ hang = true }]"#, "")
            + &one("after", None, r#"[]"#, "dependsOn = [\"long\"]");
        let (r, ev) = h.run(&toml).await;
        assert!(!r.success);
        assert!(
            r.error.as_deref().unwrap().contains("timeLimitMs"),
            "{r:#?}"
        );
        assert_eq!(state(&r, "long"), SubtaskState::Cancelled);
        assert_eq!(state(&r, "after"), SubtaskState::Cancelled);
        assert!(at(&ev, "subtask-started", "after").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attempt_that_ends_within_its_time_limit_completes() {
        let h = harness().await;
        let toml = header("hybrid", "graceful-degradation", "")
            + &one("quick", None, r#"[{ work = 1000 }]"#, "timeLimitMs = 2000");
        let (r, _) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        assert_eq!(result(&r, "quick").attempts.len(), 1);
    }
}

mod resources {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_budget_caps_concurrency() {
        let h = harness().await;
        // Four independent 32 MiB subtasks, 64 MiB budget: at most two alive at once. Each
        // finishes only once two subtasks have started, so two do run together.
        let mut toml = header("hybrid", "fail-fast", "") + "\n[resources]\nmaxTotalMemoryMB = 64\n";
        let meet = format!("[{}]", after_n(r#"kind = "subtask-started""#, 2));
        for i in 0..4 {
            toml += &one(&format!("s{i}"), None, &meet, "");
        }
        let (r, ev) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        assert_eq!(max_running(&ev), 2, "{ev:#?}");
        assert_eq!(r.metrics.resources.peak_memory_mb, 64);
        assert_eq!(r.metrics.resources.granted, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_over_the_whole_budget_is_refused_at_planning() {
        let h = harness().await;
        let toml = header("hybrid", "fail-fast", "")
            + "\n[resources]\nmaxTotalMemoryMB = 31\n"
            + &one("s", None, "[]", "");
        let e = h.prepare(&toml).await.unwrap_err();
        assert!(e.to_string().contains("resources.maxTotalMemoryMB"), "{e}");
        assert!(e.to_string().contains("needs 32 MiB"), "{e}");
        // Just inside: an agent of exactly the budget is accepted.
        let toml = toml.replace("maxTotalMemoryMB = 31", "maxTotalMemoryMB = 32");
        h.prepare(&toml).await.expect("32 MiB fits a 32 MiB budget");
    }
}

mod output_commit {
    use super::*;

    /// A harness whose context store refuses documents over 4,096 bytes, and a run whose `t1`
    /// emits a `big` string of `len` bytes that `t2` needs.
    async fn run_with_output(len: usize) -> (Harness, RunReport, Vec<Value>) {
        let svc = crate::common::context_service_with(
            qi_host::StoreConfig::in_memory(),
            qi_host::context::ContextConfig {
                max_document_bytes: 4096,
                ..Default::default()
            },
        )
        .await
        .expect("context store opens");
        let h = Harness::with_context(svc);
        let big = "x".repeat(len);
        let toml = header("hybrid", "retry-cascade", "")
            + &format!(
                r#"
[[subtasks]]
id = "t1"
inputs = [{{ name = "steps", value = [] }}, {{ name = "emit", value = {{ big = "{big}" }} }}]
outputs = ["big"]
"#
            )
            + &one("t2", None, "[]", r#"dependsOn = ["t1"]"#);
        let (r, ev) = h.run(&toml).await;
        (h, r, ev)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_output_the_store_refuses_fails_the_attempt_and_its_dependents_never_run() {
        let (h, r, ev) = run_with_output(5000).await;
        assert!(!r.success, "{r:#?}");
        let t1 = result(&r, "t1");
        assert_eq!(t1.state, SubtaskState::Failed, "{t1:#?}");
        assert!(t1.output.is_none());
        // Every attempt failed on the commit and went through the retry-cascade: two on the
        // first agent, then reassigned, two on the second.
        assert_eq!(t1.attempts.len(), 4, "{t1:#?}");
        for a in &t1.attempts {
            assert!(
                a.outcome.contains("could not be committed to `run/")
                    && a.outcome.contains("the limit is 4096"),
                "{a:#?}"
            );
        }
        let classes: Vec<&Value> = ev
            .iter()
            .filter(|e| e["kind"] == "attempt-failed")
            .map(|e| &e["class"])
            .collect();
        assert_eq!(classes, vec!["host"; 4], "{ev:#?}");
        assert_eq!(state(&r, "t2"), SubtaskState::Failed);
        assert!(result(&r, "t2").attempts.is_empty(), "t2 never ran");
        // Nothing of t1's output is in the store.
        let id = format!("run/{}/output/t1", r.coordination_id);
        assert!(h.svc.get(qi_host::context::OPERATOR, &id).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_output_within_the_store_limit_is_committed_and_read_by_dependents() {
        let (h, r, _) = run_with_output(3000).await;
        assert!(r.success, "{r:#?}");
        assert_eq!(result(&r, "t1").attempts.len(), 1);
        let id = format!("run/{}/output/t1", r.coordination_id);
        let stored = h.svc.get(qi_host::context::OPERATOR, &id).await.unwrap();
        assert_eq!(stored.doc["big"].as_str().map(str::len), Some(3000));
    }
}
