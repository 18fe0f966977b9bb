//! Every sync point type with its conditions and timeout policies, participants that die, are
//! terminated or skipped, and checkpoints restored to a retry and across a restart.

use super::*;
use qi_host::context::OPERATOR;

const ARRIVE: &str = r#"[{ barrier = "pt" }]"#;
const TOLERANT: &str = r#"[{ barrier = "pt", tolerate = true }]"#;

/// Dies before arriving, once the two others wait at the point.
fn die() -> String {
    format!(
        r#"[{}, {{ fail = "dies before arriving" }}]"#,
        after_n(r#"kind = "sync-arrived", point = "pt""#, 2)
    )
}

/// Arrives (tolerating an error) only after the run recorded an event with `fields`.
fn late(fields: &str) -> String {
    format!(
        r#"[{}, {{ barrier = "pt", tolerate = true }}]"#,
        after(fields)
    )
}

/// Arrives only after the point resolved.
fn after_resolution() -> String {
    late(r#"kind = "sync-resolved", point = "pt""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_all_complete_releases_everyone_together() {
    let h = harness().await;
    // p2 arrives last, once p1 and p3 wait.
    let p2 = format!(
        r#"[{}, {{ barrier = "pt" }}]"#,
        after_n(r#"kind = "sync-arrived", point = "pt""#, 2)
    );
    let toml = point_run(
        &point("barrier", "\"all-complete\"", "", "fail", ""),
        [ARRIVE, &p2, ARRIVE],
    );
    let (r, ev) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    for id in ["p1", "p2", "p3"] {
        let o = outcome(&r, id);
        assert_eq!(o["complete"], true);
        assert_eq!(o["timed_out"], false);
        assert_eq!(o["arrived"].as_array().unwrap().len(), 3);
    }
    // Nobody completed before the point resolved, which took p2's (last) arrival.
    let resolved = ev
        .iter()
        .position(|e| e["kind"] == "sync-resolved")
        .unwrap();
    for id in ["p1", "p2", "p3"] {
        assert!(first(&ev, "subtask-completed", id) > resolved, "{ev:#?}");
    }
    // p1 and p3 waited at the point until p2 arrived: their attempts record that wait, part of
    // their wall time, which coordination efficiency does not count as work.
    for id in ["p1", "p3"] {
        let a = &result(&r, id).attempts[0];
        assert!(
            a.sync_wait_us > 0 && a.sync_wait_us <= (a.duration_ms + 1) * 1000,
            "{a:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_participant_is_absent_and_proceed_releases_the_rest() {
    let h = harness().await;
    let toml = point_run(
        &point(
            "barrier",
            "\"all-complete\"",
            "timeoutMs = 60000",
            "proceed",
            "",
        ),
        [ARRIVE, ARRIVE, &die()],
    );
    let (r, _) = h.run(&toml).await;
    let o = outcome(&r, "p1");
    assert_eq!(o["complete"], false);
    assert_eq!(
        o["timed_out"], false,
        "resolved at once, not by the timeout"
    );
    assert_eq!(o["absent"], json!(["p3"]));
    assert_eq!(state(&r, "p2"), SubtaskState::Completed);
    assert_eq!(state(&r, "p3"), SubtaskState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_participant_fails_the_point_under_wait_and_fail() {
    for policy in ["wait", "fail"] {
        let h = harness().await;
        let toml = point_run(
            &point(
                "barrier",
                "\"all-complete\"",
                "timeoutMs = 60000",
                policy,
                "",
            ),
            [TOLERANT, TOLERANT, &die()],
        );
        let (r, _) = h.run(&toml).await;
        let o = outcome(&r, "p1");
        let err = o["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{policy}: {o}"));
        assert!(
            err.contains("can no longer be met") && err.contains("p3"),
            "{err}"
        );
        assert!(r.synchronization["pt"]["failed"].is_string());
    }
}

/// A participant terminated by its time limit, or skipped because what it depends on failed,
/// is absent like one that failed: the others are released at once. The point has no timeout,
/// so a participant not counted absent would leave them waiting (until the hang guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_and_skipped_participants_count_as_absent() {
    let both_wait = after_n(r#"kind = "sync-arrived", point = "pt""#, 2);
    for (p3, extra) in [
        // Terminated: its time limit passes while it hangs.
        (
            one("p3", None, r#"[{ hang = true }]"#, "timeLimitMs = 200"),
            String::new(),
        ),
        // Skipped: it needs x, which fails once p1 and p2 wait.
        (
            one("p3", None, ARRIVE, "dependsOn = [\"x\"]"),
            one(
                "x",
                None,
                &format!(r#"[{both_wait}, {{ fail = "x breaks" }}]"#),
                "",
            ),
        ),
    ] {
        let h = harness().await;
        let toml = header(
            "hybrid",
            "graceful-degradation",
            &point("barrier", "\"all-complete\"", "", "proceed", ""),
        ) + &one("p1", None, ARRIVE, "")
            + &one("p2", None, ARRIVE, "")
            + &p3
            + &extra;
        let (r, _) = h.run(&toml).await;
        let o = outcome(&r, "p1");
        assert!(
            o["absent"].as_array().unwrap().contains(&json!("p3")),
            "{r:#?}"
        );
        assert_eq!(o["complete"], false);
        assert_eq!(state(&r, "p2"), SubtaskState::Completed);
        let want = if extra.is_empty() {
            SubtaskState::Failed
        } else {
            assert_eq!(o["absent"], json!(["p3"]), "x failed after both arrived");
            SubtaskState::Skipped
        };
        assert_eq!(state(&r, "p3"), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_waiting_at_a_point_holds_no_concurrency_slot() {
    let h = harness().await;
    // Two slots, three participants who all must arrive: the third can only start once the
    // first two wait at the barrier, so the run would hang if waiting held a slot.
    let toml = point_run(
        &point("barrier", "\"all-complete\"", "", "fail", ""),
        [ARRIVE, ARRIVE, ARRIVE],
    )
    .replace("maxConcurrentAgents = 4", "maxConcurrentAgents = 2");
    let (r, ev) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    assert_eq!(outcome(&r, "p3")["complete"], true);
    // Three alive at once under two slots: the two waiting at the point held none. (The
    // order of the `sync-arrived` and `subtask-started` events is not asserted: a slot is
    // given back when the agent arrives, before its arrival is recorded, so the third start
    // may be recorded first.)
    assert_eq!(max_running(&ev), 3, "three alive at once: {ev:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_proceed_releases_early_arrivals_and_late_ones_see_the_outcome() {
    let h = harness().await;
    let toml = point_run(
        &point(
            "barrier",
            "\"all-complete\"",
            "timeoutMs = 100",
            "proceed",
            "",
        ),
        [ARRIVE, ARRIVE, &after_resolution()],
    );
    let (r, _) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    let o = outcome(&r, "p1");
    assert_eq!(o["complete"], false);
    assert_eq!(o["timed_out"], true);
    assert_eq!(o["absent"], json!(["p3"]));
    // The late participant gets the same resolution.
    assert_eq!(outcome(&r, "p3"), o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fail_fails_every_waiting_participant() {
    let h = harness().await;
    let toml = point_run(
        &point("barrier", "\"all-complete\"", "timeoutMs = 100", "fail", ""),
        [TOLERANT, TOLERANT, &after_resolution()],
    );
    let (r, _) = h.run(&toml).await;
    for id in ["p1", "p2", "p3"] {
        let e = outcome(&r, id)["error"].as_str().unwrap().to_string();
        assert!(e.contains("timed out after 100 ms"), "{id}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_wait_keeps_waiting_for_a_slow_participant() {
    let h = harness().await;
    // p3 arrives only once the timeout passed and the point kept waiting.
    let toml = point_run(
        &point("barrier", "\"all-complete\"", "timeoutMs = 100", "wait", ""),
        [
            ARRIVE,
            ARRIVE,
            &late(r#"kind = "sync-timeout-waiting", point = "pt""#),
        ],
    );
    let (r, ev) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    let o = outcome(&r, "p1");
    assert_eq!(o["complete"], true);
    assert_eq!(o["timed_out"], true);
    assert_eq!(o["arrived"].as_array().unwrap().len(), 3);
    let waiting = ev
        .iter()
        .position(|e| e["kind"] == "sync-timeout-waiting")
        .unwrap();
    let resolved = ev
        .iter()
        .position(|e| e["kind"] == "sync-resolved")
        .unwrap();
    assert!(waiting < resolved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_and_specific_agents_and_timeout_conditions() {
    let h = harness().await;
    // majority: two of three arrive; the third comes only after the point resolved.
    let toml = point_run(
        &point("barrier", "\"majority-complete\"", "", "wait", ""),
        [ARRIVE, ARRIVE, &after_resolution()],
    );
    let (r, _) = h.run(&toml).await;
    let o = outcome(&r, "p1");
    assert_eq!(o["complete"], true);
    assert_eq!(o["arrived"].as_array().unwrap().len(), 2);
    assert_eq!(o["absent"], json!(["p3"]));

    // specific-agents: only p1 and p3 matter; p3 comes once p1 waits, so p1 waits for it.
    let toml = point_run(
        &point(
            "barrier",
            "{ type = \"specific-agents\", agents = [\"p1\", \"p3\"] }",
            "",
            "wait",
            "",
        ),
        [
            ARRIVE,
            ARRIVE,
            &late(r#"kind = "sync-arrived", participant = "p1""#),
        ],
    );
    let (r, _) = h.run(&toml).await;
    let o = outcome(&r, "p1");
    assert_eq!(o["complete"], true);
    assert!(o["arrived"].as_array().unwrap().contains(&json!("p3")));

    // timeout: the window closes after 100 ms with whoever arrived.
    let toml = point_run(
        &point("barrier", "\"timeout\"", "timeoutMs = 100", "proceed", ""),
        [ARRIVE, ARRIVE, &after_resolution()],
    );
    let (r, _) = h.run(&toml).await;
    let o = outcome(&r, "p1");
    assert_eq!(o["complete"], true, "the window closing is the condition");
    assert_eq!(o["timed_out"], true);
    let mut arrived: Vec<String> = serde_json::from_value(o["arrived"].clone()).unwrap();
    arrived.sort();
    assert_eq!(arrived, ["p1", "p2"]);
    assert_eq!(o["absent"], json!(["p3"]));
}

fn vote(choice: &str) -> String {
    format!(r#"[{{ vote = {{ point = "pt", choice = "{choice}" }} }}]"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_tally_by_their_condition() {
    let cases = [
        (
            "\"majority-complete\"",
            ["yes", "yes", "no"],
            json!("yes"),
            "majority",
        ),
        (
            "\"all-complete\"",
            ["yes", "no", "yes"],
            Value::Null,
            "unanimous",
        ),
        (
            "\"all-complete\"",
            ["yes", "yes", "yes"],
            json!("yes"),
            "unanimous",
        ),
        (
            "{ type = \"specific-agents\", agents = [\"p2\", \"p3\"] }",
            ["yes", "no", "no"],
            json!("no"),
            "specific-agents",
        ),
    ];
    for (cond, votes, want, rule) in cases {
        let h = harness().await;
        let toml = point_run(
            &point("decision", cond, "", "wait", ""),
            [&vote(votes[0]), &vote(votes[1]), &vote(votes[2])],
        );
        let (r, _) = h.run(&toml).await;
        for id in ["p1", "p2", "p3"] {
            let o = outcome(&r, id);
            assert_eq!(o["result"]["decision"], want, "{cond} {votes:?}: {o}");
            assert_eq!(o["result"]["rule"], rule);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_dies_is_absent_and_the_split_vote_resolves_without_it() {
    // One vote each for p1 and p2 decides nothing while p3 may still vote; its death accounts
    // for everyone, so the point resolves (no majority) instead of hanging.
    let h = harness().await;
    let toml = point_run(
        &point("decision", "\"majority-complete\"", "", "wait", ""),
        [&vote("ship"), &vote("hold"), &die()],
    );
    let (r, _) = h.run(&toml).await;
    let o = outcome(&r, "p1");
    assert_eq!(o["absent"], json!(["p3"]));
    assert_eq!(o["result"]["decision"], Value::Null, "{o}");
    assert_eq!(o["result"]["tally"], json!({"hold": 1, "ship": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_decision_goes_to_the_plurality_when_the_window_closes() {
    // One vote of three is no majority, but it is the plurality of the votes cast when the
    // window closes (p2 died, p3 comes after the resolution).
    let h = harness().await;
    let late_vote = format!(
        r#"[{}, {{ vote = {{ point = "pt", choice = "no" }}, tolerate = true }}]"#,
        after(r#"kind = "sync-resolved", point = "pt""#)
    );
    let toml = point_run(
        &point("decision", "\"timeout\"", "timeoutMs = 100", "proceed", ""),
        [&vote("yes"), r#"[{ fail = "p2 dies" }]"#, &late_vote],
    );
    let (r, _) = h.run(&toml).await;
    let o = outcome(&r, "p1");
    assert_eq!(o["timed_out"], true, "{o}");
    assert_eq!(o["result"]["rule"], "plurality");
    assert_eq!(o["result"]["decision"], "yes");
    assert_eq!(o["result"]["tally"], json!({"yes": 1}));
    assert_eq!(outcome(&r, "p3")["result"]["decision"], "yes");
}

fn give(v: &str) -> String {
    format!(r#"[{{ contribute = {{ point = "pt", value = {v} }} }}]"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation_reduces_contributions_and_feeds_an_aggregator_subtask() {
    let h = harness().await;
    let mut toml = point_run(
        &point(
            "aggregation",
            "\"all-complete\"",
            "",
            "wait",
            "reducer = \"sum\"",
        ),
        [
            &give("{ n = 1, m = 10 }"),
            &give("{ n = 2 }"),
            &give("{ n = 3, m = 5 }"),
        ],
    );
    toml += r#"
[[subtasks]]
id = "agg"
inputs = [{ name = "total", from = "sync.pt" }]
"#;
    let (r, ev) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    assert_eq!(outcome(&r, "p2")["result"], json!({"n": 6, "m": 15}));
    assert_eq!(
        result(&r, "agg").output.as_ref().unwrap()["received"]["total"],
        json!({"n": 6, "m": 15})
    );
    let resolved = ev
        .iter()
        .position(|e| e["kind"] == "sync-resolved")
        .unwrap();
    assert!(first(&ev, "subtask-started", "agg") > resolved);
    // The event summarizes the outcome and names its document; it does not copy the result.
    let summary = &ev[resolved];
    assert!(summary.get("result").is_none(), "{summary:#?}");
    assert_eq!(summary["arrived"], 3, "{summary:#?}");
    assert_eq!(
        summary["resultBytes"].as_u64(),
        Some(json!({"n": 6, "m": 15}).to_string().len() as u64)
    );
    let doc = h
        .svc
        .get(OPERATOR, summary["document"].as_str().unwrap())
        .await
        .unwrap()
        .doc;
    assert_eq!(doc["result"], json!({"n": 6, "m": 15}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concat_and_collect_keep_what_the_living_contributed() {
    for (reducer, want) in [
        ("concat", json!([1, 2, 3])),
        ("collect", json!({"p1": [1, 2], "p2": 3})),
    ] {
        let h = harness().await;
        let toml = point_run(
            &point(
                "aggregation",
                "\"all-complete\"",
                "",
                "proceed",
                &format!("reducer = \"{reducer}\""),
            ),
            [&give("[1, 2]"), &give("3"), &die()],
        );
        let (r, _) = h.run(&toml).await;
        let o = outcome(&r, "p1");
        assert_eq!(o["result"], want, "{reducer}");
        assert_eq!(o["complete"], false);
        assert_eq!(o["absent"], json!(["p3"]));
    }
}

fn checkpoint_task(config: &str) -> String {
    let steps = r#"[{ restore = "pt" }, { checkpoint = { point = "pt", state = { step = 7 } } }, { fail_if_config = "broken" }]"#;
    let toml = header(
        "hybrid",
        "graceful-degradation",
        "[[strategy.synchronizationPoints]]\nid = \"pt\"\ntype = \"checkpoint\"\nparticipants = [\"p1\"]\n",
    ) + &one("p1", Some("worker"), steps, "");
    toml.replace(
        "[agents.worker]\ncomponent = \"guest:worker\"",
        &format!("[agents.worker]\ncomponent = \"guest:worker\"\nconfig = {config}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_handed_back_to_the_retry_of_its_participant() {
    let h = harness().await;
    let steps = r#"[{ restore = "pt" }, { checkpoint = { point = "pt", state = { step = 7 } } }, { fail_before_attempt = 2 }]"#;
    let toml = header(
        "hybrid",
        "retry-cascade",
        "[[strategy.synchronizationPoints]]\nid = \"pt\"\ntype = \"checkpoint\"\nparticipants = [\"p1\"]\n",
    ) + &one("p1", None, steps, "");
    let (r, _) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    let out = result(&r, "p1").output.clone().unwrap();
    // Attempt 1 found nothing to restore; attempt 2 got what attempt 1 stored.
    assert_eq!(out["attempt"], 2);
    assert_eq!(out["sync"][0], json!({"restored": {"step": 7}}));
    let doc = h
        .svc
        .get(
            OPERATOR,
            &format!("run/{}/checkpoint/pt/p1", r.coordination_id),
        )
        .await
        .unwrap()
        .doc;
    assert_eq!(doc["state"], json!({"step": 7}));
}

/// A checkpoint written by one process is restored by a run resumed from the same data
/// directory after the store was closed and opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_survives_closing_the_store_and_is_restored_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let open = || async {
        let store = qi_host::Store::open(qi_host::StoreConfig::at(dir.path())).unwrap();
        let bus = qi_host::EventBus::new(store.clone(), qi_host::EventBusConfig::default())
            .await
            .unwrap();
        ContextService::open(
            store,
            bus,
            Arc::new(qi_host::context::SystemClock),
            qi_host::context::ContextConfig::default(),
        )
        .await
        .unwrap()
    };
    let run_id = {
        let h = Harness::with_context(open().await);
        let (r, _) = h.run(&checkpoint_task("{ broken = true }")).await;
        assert_eq!(state(&r, "p1"), SubtaskState::Failed, "{r:#?}");
        let out = &result(&r, "p1").attempts;
        assert_eq!(out.len(), 1);
        r.coordination_id
    };
    let h = Harness::with_context(open().await);
    let (r, _) = h
        .run_with(
            &checkpoint_task("{ broken = false }"),
            RunOptions {
                run_id: Some(run_id),
                resume: true,
                status: None,
            },
        )
        .await;
    assert!(r.success, "{r:#?}");
    let out = result(&r, "p1").output.clone().unwrap();
    assert_eq!(out["sync"][0], json!({"restored": {"step": 7}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_call_to_an_unknown_point_or_of_the_wrong_type_is_refused() {
    let h = harness().await;
    let toml = point_run(
        &point("barrier", "\"all-complete\"", "", "wait", ""),
        [
            r#"[{ vote = { point = "pt", choice = "x" }, tolerate = true }, { barrier = "pt" }]"#,
            r#"[{ barrier = "nope", tolerate = true }, { barrier = "pt" }]"#,
            ARRIVE,
        ],
    );
    let (r, _) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    let e1 = outcome(&r, "p1")["error"].as_str().unwrap().to_string();
    assert!(e1.contains("is a barrier point"), "{e1}");
    let e2 = outcome(&r, "p2")["error"].as_str().unwrap().to_string();
    assert!(e2.contains("nope"), "{e2}");
    // The refused calls did not count as arrivals: the barrier still waited for all three.
    assert_eq!(outcome(&r, "p3")["arrived"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_call_outside_a_coordinated_run_is_refused_as_not_coordinated() {
    let report = crate::common::run(
        WORKER_COMPONENT,
        crate::common::spec(),
        json!({
            "subtask": "alone",
            "attempt": 1,
            "inputs": {"steps": [
                {"barrier": "pt", "tolerate": true},
                {"restore": "pt", "tolerate": true},
            ]},
        }),
    )
    .await;
    let out = crate::common::ok(&report);
    for entry in out["sync"].as_array().unwrap() {
        let e = entry["error"].as_str().unwrap_or_else(|| panic!("{out}"));
        assert!(e.starts_with("not-coordinated"), "{e}");
    }
    assert_eq!(out["sync"].as_array().unwrap().len(), 2);
}

/// A barrier of `n` participants, each arriving and then asking for the full outcome.
fn wide_barrier(n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let mut toml = header(
        "hybrid",
        "fail-fast",
        &format!(
            "[[strategy.synchronizationPoints]]\nid = \"wide\"\ntype = \"barrier\"\nparticipants = [{}]\n",
            ids.iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    for id in &ids {
        toml += &one(
            id,
            Some("backup"),
            r#"[{ barrier = "wide" }, { outcome = "wide" }]"#,
            "",
        );
    }
    toml
}

/// 64 participants get the lists; 65 get the counts and their own arrival (each would
/// otherwise copy every name), and `sync.outcome` still gives anyone the full lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_past_64_participants_hands_out_a_compact_outcome() {
    let h = harness().await;
    let (r, _) = h.run(&wide_barrier(64)).await;
    assert!(r.success, "{r:#?}");
    let o = outcome(&r, "w7");
    assert_eq!(o["arrived"].as_array().unwrap().len(), 64, "{o}");
    assert_eq!(o["arrived_count"], 64);

    let (r, _) = h.run(&wide_barrier(65)).await;
    assert!(r.success, "{r:#?}");
    for id in ["w0", "w64"] {
        let o = outcome(&r, id);
        assert_eq!(o["arrived"], json!([id]), "{o}");
        assert_eq!(o["absent"], json!([]), "{o}");
        assert_eq!(
            (o["arrived_count"].as_u64(), o["absent_count"].as_u64()),
            (Some(65), Some(0))
        );
    }
    // `sync.outcome` gives the full lists; the stored outcome keeps every name too.
    let full = &result(&r, "w3").output.as_ref().unwrap()["sync"][1];
    assert_eq!(full["arrived"].as_array().unwrap().len(), 65, "{full}");
    assert_eq!(
        r.synchronization["wide"]["arrived"]
            .as_array()
            .unwrap()
            .len(),
        65
    );
}
