//! Whole runs: resume, live status, optional inputs, and the bundled examples.

use super::*;
use qi_host::context::OPERATOR;

mod resume {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resumed_run_keeps_completed_subtasks_and_reruns_the_rest() {
        let h = harness().await;
        let base = header("hybrid", "graceful-degradation", "")
            + &one("a", None, r#"[{ work = 1000 }]"#, "outputs = [\"subtask\"]")
            + &one(
                "b",
                Some("worker"),
                r#"[{ fail_if_config = "broken" }]"#,
                "dependsOn = [\"a\"]",
            );
        let broken = base.replace(
            "[agents.worker]\ncomponent = \"guest:worker\"",
            "[agents.worker]\ncomponent = \"guest:worker\"\nconfig = { broken = true }",
        );
        let (r1, _) = h.run(&broken).await;
        assert_eq!(state(&r1, "a"), SubtaskState::Completed);
        assert_eq!(state(&r1, "b"), SubtaskState::Failed);
        let (r2, ev) = h
            .run_with(
                &base,
                RunOptions {
                    run_id: Some(r1.coordination_id.clone()),
                    resume: true,
                    status: None,
                },
            )
            .await;
        assert!(r2.success, "{r2:#?}");
        assert!(result(&r2, "a").resumed);
        assert!(result(&r2, "a").attempts.is_empty(), "a is not run again");
        assert_eq!(result(&r2, "b").attempts.len(), 1);
        // Only b started in the resumed run's events (they share the run's context id).
        let starts: Vec<&Value> = ev
            .iter()
            .filter(|e| e["kind"] == "subtask-started")
            .collect();
        assert_eq!(starts.iter().filter(|e| e["subtask"] == "a").count(), 1);
        assert_eq!(starts.iter().filter(|e| e["subtask"] == "b").count(), 2);

        // Resuming an unknown run is a clear error.
        let prepared = h.prepare(&base).await.unwrap();
        let e = prepared
            .run(
                h.host.clone(),
                RunOptions {
                    run_id: Some("run-nope".into()),
                    resume: true,
                    status: None,
                },
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no run `run-nope`"), "{e}");
    }

    /// A point `pt` of `kind` for p1 and p2: p1 waits there with `step`; p2 (on `worker`), once
    /// p1 waits there, fails before arriving while the worker is broken.
    fn broken_point(kind: &str, step: &str, on_timeout: &str, condition: &str) -> (String, String) {
        let base = header(
            "hybrid",
            "graceful-degradation",
            &point(kind, condition, "", on_timeout, "")
                .replace("[\"p1\", \"p2\", \"p3\"]", "[\"p1\", \"p2\"]"),
        ) + &one("p1", Some("backup"), &format!("[{step}]"), "")
            + &one(
                "p2",
                Some("worker"),
                // Only once p1 waits at the point (in the run resumed, that event is already
                // in the run's history).
                &format!(
                    r#"[{}, {{ fail_if_config = "broken" }}, {step}]"#,
                    after(r#"kind = "sync-arrived", participant = "p1""#)
                ),
                "",
            );
        let broken = base.replace(
            "[agents.worker]\ncomponent = \"guest:worker\"",
            "[agents.worker]\ncomponent = \"guest:worker\"\nconfig = { broken = true }",
        );
        (base, broken)
    }

    async fn resume(h: &Harness, toml: &str, run: &str) -> (RunReport, Vec<Value>) {
        h.run_with(
            toml,
            RunOptions {
                run_id: Some(run.to_string()),
                resume: true,
                status: None,
            },
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_point_that_failed_reopens_when_its_participants_run_again() {
        let h = harness().await;
        let (fixed, broken) = broken_point(
            "barrier",
            r#"{ barrier = "pt" }"#,
            "fail",
            "\"all-complete\"",
        );
        let (r1, _) = h.run(&broken).await;
        assert!(r1.synchronization["pt"]["failed"].is_string(), "{r1:#?}");
        assert_eq!(state(&r1, "p1"), SubtaskState::Failed);
        // The broken agent fixed, the run resumes past the point instead of replaying its
        // failure.
        let (r2, _) = resume(&h, &fixed, &r1.coordination_id).await;
        assert!(r2.success, "{r2:#?}");
        assert_eq!(outcome(&r2, "p1")["complete"], true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vote_given_before_by_a_participant_that_finished_still_counts_on_resume() {
        let h = harness().await;
        // p1 votes and goes on even though the decision fails (p2 never votes).
        let (fixed, broken) = broken_point(
            "decision",
            r#"{ vote = { point = "pt", choice = "ship" }, tolerate = true }"#,
            "fail",
            "\"all-complete\"",
        );
        let (r1, _) = h.run(&broken).await;
        assert_eq!(state(&r1, "p1"), SubtaskState::Completed, "{r1:#?}");
        assert_eq!(state(&r1, "p2"), SubtaskState::Failed);
        let (r2, _) = resume(&h, &fixed, &r1.coordination_id).await;
        assert!(r2.success, "{r2:#?}");
        assert!(result(&r2, "p1").resumed, "p1 does not run again");
        // The decision counted p1's stored vote with p2's new one.
        let decided = &r2.synchronization["pt"];
        assert_eq!(decided["complete"], true, "{decided:#?}");
        assert_eq!(
            decided["arrived"].as_array().unwrap().len(),
            2,
            "{decided:#?}"
        );
        assert_eq!(decided["result"]["decision"], "ship", "{decided:#?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_outcome_a_finished_participant_went_on_with_stands_on_resume() {
        let h = harness().await;
        // p2 fails before arriving; under `proceed` that releases p1, which finishes.
        let (r1, _) = h
            .run(
                &broken_point(
                    "barrier",
                    r#"{ barrier = "pt" }"#,
                    "proceed",
                    "\"all-complete\"",
                )
                .1,
            )
            .await;
        // Under `proceed`, p2's failure released p1 with an incomplete barrier.
        assert_eq!(state(&r1, "p1"), SubtaskState::Completed, "{r1:#?}");
        let fixed = broken_point(
            "barrier",
            r#"{ barrier = "pt" }"#,
            "proceed",
            "\"all-complete\"",
        )
        .0;
        let (r2, _) = resume(&h, &fixed, &r1.coordination_id).await;
        assert!(r2.success, "{r2:#?}");
        // The outcome p1 went on with stands: it was stored before p1's output.
        assert_eq!(r2.synchronization["pt"]["complete"], false, "{r2:#?}");
    }
}

mod monitor {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_reports_live_progress() {
        let h = Arc::new(harness().await);
        // b finishes only once the watcher has seen the half-way status, so that status
        // cannot be overwritten before it is observed.
        let toml = header("sequential", "fail-fast", "")
            + &one("a", None, "[]", "")
            + &one("b", None, &format!("[{}]", gate("half-seen")), "");
        let prepared = h.prepare(&toml).await.unwrap();
        let (tx, mut rx) = tokio::sync::watch::channel(coord::ExecutionStatus {
            coordination_id: String::new(),
            status: "starting".into(),
            progress: 0.0,
            active_agents: 0,
            completed_tasks: 0,
            total_tasks: 2,
            subtasks: Vec::new(),
        });
        let watcher = h.clone();
        let seen = tokio::spawn(async move {
            let mut seen = Vec::new();
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                if s.progress == 0.5 && s.active_agents == 1 {
                    watcher.open("half-seen");
                }
                seen.push((s.progress, s.active_agents, s.status.clone()));
            }
            seen
        });
        let r = tokio::time::timeout(
            HANG_GUARD,
            prepared.run(
                h.host.clone(),
                RunOptions {
                    status: Some(tx),
                    ..RunOptions::default()
                },
            ),
        )
        .await
        .expect("hang guard")
        .unwrap();
        assert!(r.success, "{r:#?}");
        let seen = seen.await.unwrap();
        assert!(
            seen.iter()
                .any(|(p, a, s)| *p == 0.5 && *a == 1 && s == "running"),
            "{seen:?}"
        );
        assert_eq!(seen.last().unwrap().0, 1.0);
        assert_eq!(seen.last().unwrap().2, "completed");
    }
}

mod optional_inputs {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_optional_input_passes_what_exists_and_lists_the_rest_in_missing() {
        let h = harness().await;
        let toml = header("hybrid", "graceful-degradation", "")
            + &one("good", None, "[]", "outputs = [\"subtask\"]")
            + &one(
                "bad",
                None,
                r#"[{ fail = "bad breaks" }]"#,
                "outputs = [\"subtask\"]",
            )
            + r#"
[[subtasks]]
id = "join"
inputs = [{ name = "xs", from = ["good.subtask", "bad.subtask"], required = false }]

[[subtasks]]
id = "strict"
inputs = [{ name = "xs", from = ["good.subtask", "bad.subtask"] }]
"#;
        let (r, ev) = h.run(&toml).await;
        assert_eq!(state(&r, "join"), SubtaskState::Completed, "{r:#?}");
        let received = &result(&r, "join").output.as_ref().unwrap()["received"];
        assert_eq!(received["xs"], json!(["good"]));
        assert_eq!(received["missing"], json!(["bad.subtask"]));
        let started = first(&ev, "subtask-started", "join");
        assert_eq!(ev[started]["missingInputs"], json!(["bad.subtask"]));
        // The same input, required: the subtask is skipped.
        assert_eq!(state(&r, "strict"), SubtaskState::Skipped);
    }
}

/// The bundled examples run to the end with the results their comments promise.
mod examples {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn code_review_writes_its_report_into_the_context() {
        let h = harness().await;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/code-review/task.toml");
        let prepared = coord::prepare(&h.host, &path, Some(&guest_dir()))
            .await
            .unwrap();
        let r = prepared
            .run(h.host.clone(), RunOptions::default())
            .await
            .unwrap();
        assert!(r.success, "{r:#?}");
        assert_eq!(r.metrics.synchronization_points_reached, 3);
        // The sum of the three shards' totals equals the reporter's file count.
        let totals = &r.synchronization["totals"]["result"];
        assert_eq!(totals["files"], 9);
        let report_ctx = format!("review/inventory/{}", r.coordination_id);
        let doc = h.svc.get(OPERATOR, &report_ctx).await.unwrap().doc;
        assert_eq!(doc["files"], 9);
        assert_eq!(doc["totals"]["todo"], totals["todo"]);
        let verdict = r.synchronization["verdict"]["result"]["decision"].clone();
        assert_eq!(doc["verdict"], verdict);
        assert!(
            doc["markdown"]
                .as_str()
                .unwrap()
                .contains("# Code review report")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failure_handling_reassigns_the_starved_shard() {
        let h = harness().await;
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/failure-handling/task.toml");
        let prepared = coord::prepare(&h.host, &path, Some(&guest_dir()))
            .await
            .unwrap();
        let r = prepared
            .run(h.host.clone(), RunOptions::default())
            .await
            .unwrap();
        assert!(r.success, "{r:#?}");
        let api = result(&r, "analyze-api");
        assert_eq!(api.attempts[0].agent, "analyzer-tight");
        assert!(api.attempts[0].outcome.contains("fuel"), "{api:#?}");
        assert_eq!(api.attempts[1].agent, "analyzer");
        assert_eq!(r.metrics.failed_agents, 1);
    }
}
