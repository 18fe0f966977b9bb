//! Deadlocks outside the concurrency slots: refused at planning when a point's participants
//! can never all be alive at once, and broken at once when a run gets stuck anyway.

use super::*;

/// Two participants of `pt` (32 MiB agents), with `extra` strategy keys and a `[resources]`
/// section.
fn pair(strategy: &str, extra: &str, resources: &str, p2_deps: &str) -> String {
    header(
        strategy,
        "graceful-degradation",
        &format!(
            "{}\n{extra}",
            point("barrier", "\"all-complete\"", "", "fail", "").replace(
                "participants = [\"p1\", \"p2\", \"p3\"]",
                "participants = [\"p1\", \"p2\"]"
            )
        ),
    ) + &format!("\n[resources]\n{resources}\n")
        + &one("p0", None, "[]", "")
        + &one("p1", None, r#"[{ barrier = "pt" }]"#, "")
        + &one("p2", None, r#"[{ barrier = "pt" }]"#, p2_deps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_across_parallel_waves_is_refused_at_planning() {
    let h = harness().await;
    // p2 after p0: wave 1, p1 in wave 0.
    let e = h
        .prepare(&pair("parallel", "", "", r#"dependsOn = ["p0"]"#))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("strategy.synchronizationPoints[0].participants")
            && e.contains("point `pt` can never gather")
            && e.contains("`p1` (wave 0) would wait there for `p2` (wave 1)"),
        "{e}"
    );
    // The same waves under hybrid, and one wave under parallel, are fine.
    h.prepare(&pair("hybrid", "", "", r#"dependsOn = ["p0"]"#))
        .await
        .expect("hybrid starts p2 as soon as p0 is done");
    h.prepare(&pair("parallel", "", "", ""))
        .await
        .expect("both in wave 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_whose_participants_cannot_be_alive_together_is_refused_at_planning() {
    let h = harness().await;
    // Two 32 MiB participants: 63 MiB cannot hold both, 64 MiB can.
    let e = h
        .prepare(&pair("hybrid", "", "maxTotalMemoryMB = 63", ""))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("need 64 MiB together") && e.contains("maxTotalMemoryMB is 63"),
        "{e}"
    );
    h.prepare(&pair("hybrid", "", "maxTotalMemoryMB = 64", ""))
        .await
        .expect("64 MiB holds both");
    let e = h
        .prepare(&pair("hybrid", "", "maxConcurrentAllocations = 1", ""))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("its 2 participants must be alive at once")
            && e.contains("maxConcurrentAllocations is 1"),
        "{e}"
    );
    h.prepare(&pair("hybrid", "", "maxConcurrentAllocations = 2", ""))
        .await
        .expect("two allocations hold both");
}

/// Points `a` (a1, a2) and `b` (b1, b2), each fitting the 64 MiB budget alone. Priorities start
/// a1 and b1 first: each waits at its point holding half the budget, and neither a2 nor b2 can
/// ever get memory.
fn crossed(on_timeout: &str) -> String {
    let mut toml = header(
        "hybrid",
        "graceful-degradation",
        &format!(
            "[[strategy.synchronizationPoints]]\nid = \"a\"\ntype = \"barrier\"\nparticipants = [\"a1\", \"a2\"]\nonTimeout = \"{on_timeout}\"\n\
         [[strategy.synchronizationPoints]]\nid = \"b\"\ntype = \"barrier\"\nparticipants = [\"b1\", \"b2\"]\nonTimeout = \"{on_timeout}\"\n"
        ),
    ) + "\n[resources]\nmaxTotalMemoryMB = 64\n";
    for (id, point, priority) in [
        ("a1", "a", 4),
        ("b1", "b", 3),
        ("a2", "a", 2),
        ("b2", "b", 1),
    ] {
        toml += &one(
            id,
            None,
            &format!(r#"[{{ barrier = "{point}", tolerate = true }}]"#),
            &format!("priority = {priority}"),
        );
    }
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stuck_with_every_agent_waiting_breaks_the_points_at_once() {
    let h = harness().await;
    let (r, ev) = h.run(&crossed("proceed")).await;
    // Found, not waited out: the event names both points and why the rest cannot start.
    let found: Vec<&Value> = ev.iter().filter(|e| e["kind"] == "deadlock").collect();
    assert_eq!(found.len(), 1, "{ev:#?}");
    let reason = found[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("`a`: a1") && reason.contains("`b`: b1") && reason.contains("no resources"),
        "{reason}"
    );
    // `proceed`: a1 and b1 go on with an incomplete barrier; a2 and b2 then start and see it.
    assert!(r.success, "{r:#?}");
    for id in ["a1", "b1", "a2", "b2"] {
        assert_eq!(outcome(&r, id)["complete"], false, "{id}: {r:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_fail_and_wait_a_deadlocked_point_fails_naming_the_deadlock() {
    for on_timeout in ["fail", "wait"] {
        let h = harness().await;
        let (r, ev) = h.run(&crossed(on_timeout)).await;
        assert_eq!(
            ev.iter().filter(|e| e["kind"] == "deadlock").count(),
            1,
            "{on_timeout}: {ev:#?}"
        );
        let doc = &r.synchronization["a"];
        assert!(
            doc["failed"]
                .as_str()
                .unwrap()
                .contains("deadlock: every running agent waits"),
            "{on_timeout}: {doc:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_waiting_for_a_participant_that_will_still_start_are_not_a_deadlock() {
    let h = harness().await;
    // p1 waits at `pt` while p2 is still to start (after p0): nothing is stuck.
    let (r, ev) = h
        .run(&pair("hybrid", "", "", r#"dependsOn = ["p0"]"#))
        .await;
    assert!(r.success, "{r:#?}");
    assert!(ev.iter().all(|e| e["kind"] != "deadlock"), "{ev:#?}");
    assert_eq!(outcome(&r, "p1")["complete"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_dies_waiting_at_a_barrier_is_absent_not_arrived() {
    let h = harness().await;
    // p1 arrives, then its time limit kills it while it waits; p2 arrives only after that.
    let toml = header(
        "hybrid",
        "graceful-degradation",
        &point("barrier", "\"all-complete\"", "", "proceed", "")
            .replace("[\"p1\", \"p2\", \"p3\"]", "[\"p1\", \"p2\"]"),
    ) + &one("p1", None, r#"[{ barrier = "pt" }]"#, "timeLimitMs = 200")
        + &one(
            "p2",
            None,
            &format!(
                r#"[{}, {{ barrier = "pt" }}]"#,
                after(r#"kind = "subtask-failed", subtask = "p1""#)
            ),
            "",
        );
    let (r, _) = h.run(&toml).await;
    assert_eq!(state(&r, "p1"), SubtaskState::Failed, "{r:#?}");
    let o = outcome(&r, "p2");
    // Without p1 alive the barrier can no longer complete: it resolved under `proceed` as
    // incomplete when p1 died, and p2 arriving later gets that outcome.
    assert_eq!(o["complete"], false, "{o:#?}");
    assert!(
        o["absent"].as_array().unwrap().contains(&json!("p1")),
        "{o:#?}"
    );
    assert!(
        !o["arrived"].as_array().unwrap().contains(&json!("p1")),
        "{o:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_participants_each_waiting_at_the_point_the_other_has_not_reached_are_broken() {
    let h = harness().await;
    // Nothing is pending: p1 waits at `a` for p2, p2 waits at `b` for p1.
    let points = "[[strategy.synchronizationPoints]]\nid = \"a\"\ntype = \"barrier\"\nparticipants = [\"p1\", \"p2\"]\nonTimeout = \"fail\"\n\
                  [[strategy.synchronizationPoints]]\nid = \"b\"\ntype = \"barrier\"\nparticipants = [\"p1\", \"p2\"]\nonTimeout = \"fail\"\n";
    let toml = header("hybrid", "graceful-degradation", points)
        + &one(
            "p1",
            None,
            r#"[{ barrier = "a", tolerate = true }, { barrier = "b", tolerate = true }]"#,
            "",
        )
        + &one(
            "p2",
            None,
            r#"[{ barrier = "b", tolerate = true }, { barrier = "a", tolerate = true }]"#,
            "",
        );
    let (r, ev) = h.run(&toml).await;
    let found: Vec<&Value> = ev.iter().filter(|e| e["kind"] == "deadlock").collect();
    assert_eq!(found.len(), 1, "{ev:#?}");
    assert!(
        found[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no other subtask is left to start"),
        "{found:#?}"
    );
    // Both points failed at once, and each agent went on (its steps tolerate the failure).
    assert!(r.synchronization["a"]["failed"].is_string(), "{r:#?}");
    assert!(r.synchronization["b"]["failed"].is_string(), "{r:#?}");
    assert_eq!(state(&r, "p1"), SubtaskState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_still_computing_is_not_taken_for_an_agent_waiting_where_its_first_attempt_died() {
    let h = harness().await;
    // p1's first attempt contributes to `ag` and dies there at its time limit; the
    // contribution still counts. Its retry (on the other agent kind) computes before it
    // contributes again. p2 waits at `b` for z, which needs p1. q computes (waits in a tool
    // call) until p1's first attempt has failed, so the run is not stuck before that. Once p1's
    // retry waits at `ag` again, the run is stuck for real, and only then.
    let points = "[[strategy.synchronizationPoints]]\nid = \"ag\"\ntype = \"aggregation\"\nparticipants = [\"p1\", \"p2\"]\nonTimeout = \"fail\"\n\
                  [[strategy.synchronizationPoints]]\nid = \"b\"\ntype = \"barrier\"\nparticipants = [\"p2\", \"z\"]\nonTimeout = \"fail\"\n";
    let toml = header("hybrid", "retry-cascade", points)
        + &one(
            "p1",
            None,
            r#"[{ work = 2_000_000 }, { contribute = { point = "ag", value = 1 }, tolerate = true }]"#,
            "timeLimitMs = 300",
        )
        + &one("p2", None, r#"[{ barrier = "b", tolerate = true }]"#, "")
        + &one(
            "q",
            None,
            &format!("[{}]", after(r#"kind = "attempt-failed", subtask = "p1""#)),
            "",
        )
        + &one(
            "z",
            None,
            r#"[{ barrier = "b", tolerate = true }]"#,
            "dependsOn = [\"p1\"]",
        );
    let (r, ev) = h.run(&toml).await;
    let deadlock = ev
        .iter()
        .position(|e| e["kind"] == "deadlock")
        .unwrap_or_else(|| panic!("no deadlock found: {ev:#?}"));
    let p1_arrivals: Vec<usize> = ev
        .iter()
        .enumerate()
        .filter(|(_, e)| e["kind"] == "sync-arrived" && e["participant"] == "p1")
        .map(|(i, _)| i)
        .collect();
    assert!(
        p1_arrivals.len() == 2 && p1_arrivals[1] < deadlock,
        "the deadlock (event {deadlock}) came before p1's retry arrived ({p1_arrivals:?}): {r:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planning_check_counts_the_agent_the_run_starts_participants_on() {
    let h = harness().await;
    // p1 and p2 name `fat` (48 MiB); `lean` (32 MiB) could run them too. 80 MiB holds two
    // lean ones but not the two fat ones the run would start: refused at planning.
    let toml = r#"
[task]
id = "t"
[strategy]
type = "hybrid"
failureHandling = "graceful-degradation"
[[strategy.synchronizationPoints]]
id = "pt"
type = "barrier"
participants = ["p1", "p2"]
[resources]
maxTotalMemoryMB = {budget}
[agents.fat]
component = "guest:worker"
spec = { resourceLimits = { maxMemoryMB = 48 } }
[agents.lean]
component = "guest:worker"
spec = { resourceLimits = { maxMemoryMB = 32 } }
[[subtasks]]
id = "p1"
agent = "fat"
inputs = [{ name = "steps", value = [{ barrier = "pt" }] }]
[[subtasks]]
id = "p2"
agent = "fat"
inputs = [{ name = "steps", value = [{ barrier = "pt" }] }]
"#;
    let e = h
        .prepare(&toml.replace("{budget}", "95"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("need 96 MiB together"), "{e}");
    let (r, ev) = h.run(&toml.replace("{budget}", "96")).await;
    assert!(r.success, "{r:#?}");
    assert!(ev.iter().all(|e| e["kind"] != "deadlock"));
}

/// The `sync` entries of a subtask's output.
fn syncs(r: &RunReport, id: &str) -> Vec<Value> {
    result(r, id)
        .output
        .as_ref()
        .unwrap_or_else(|| panic!("{id} has no output: {r:#?}"))["sync"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn deadlocks(ev: &[Value]) -> Vec<&Value> {
    ev.iter().filter(|e| e["kind"] == "deadlock").collect()
}

/// `window`: a `timeout`-condition point (it resolves, complete, when its 300 ms window
/// closes) with `on_timeout`; `q`: an all-complete barrier. p1 sits in the window, p2 sits
/// at q. When the window closes, p1 goes on to q, q completes, p2 then sees the window's
/// outcome. Nothing is stuck: a timer is still to fire.
fn window_then_barrier(window_condition: &str, on_timeout: &str) -> String {
    let points = format!(
        "[[strategy.synchronizationPoints]]\nid = \"window\"\ntype = \"barrier\"\nparticipants = [\"p1\", \"p2\"]\ncondition = \"{window_condition}\"\ntimeoutMs = 300\nonTimeout = \"{on_timeout}\"\n\
         [[strategy.synchronizationPoints]]\nid = \"q\"\ntype = \"barrier\"\nparticipants = [\"p1\", \"p2\"]\nonTimeout = \"fail\"\n"
    );
    header("hybrid", "graceful-degradation", &points)
        + &one(
            "p1",
            None,
            r#"[{ barrier = "window", tolerate = true }, { barrier = "q", tolerate = true }]"#,
            "",
        )
        + &one(
            "p2",
            None,
            r#"[{ barrier = "q", tolerate = true }, { barrier = "window", tolerate = true }]"#,
            "",
        )
}

/// A point whose condition is `timeout` is a window that resolves by
/// itself, complete, when its timer fires. Every running agent is inside a sync call (p1 in the
/// window, p2 at q), yet the run is not stuck: the window's timer is still to fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_window_still_open_is_not_a_deadlock() {
    let h = harness().await;
    let (r, ev) = h.run(&window_then_barrier("timeout", "fail")).await;
    assert!(
        deadlocks(&ev).is_empty(),
        "a deadlock was declared while the window's timer was still to fire: {:#?}\n{:#?}",
        deadlocks(&ev),
        r.synchronization
    );
    let p1 = syncs(&r, "p1");
    assert_eq!(
        p1[0]["complete"], true,
        "the window closing is its condition: {p1:#?}"
    );
    assert_eq!(
        p1[1]["complete"], true,
        "q completes once p1 is released: {p1:#?}"
    );
}

/// An all-complete point with `timeoutMs` and `proceed`: its
/// timer releases p1 (incomplete) after 300 ms, and then q completes normally. The deadlock
/// breaker waits for that timer instead of ending q as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_timer_that_will_release_an_agent_is_not_a_deadlock() {
    let h = harness().await;
    let (r, ev) = h.run(&window_then_barrier("all-complete", "proceed")).await;
    assert!(
        deadlocks(&ev).is_empty(),
        "a deadlock was declared while a point timer was still to fire: {:#?}\n{:#?}",
        deadlocks(&ev),
        r.synchronization
    );
    let p1 = syncs(&r, "p1");
    assert_eq!(
        p1[1]["complete"], true,
        "q completes once the window's timer released p1: {p1:#?}"
    );
}

/// `d` is an aggregation of x and y. x contributes and dies there at its
/// time limit (graceful-degradation: for good); its contribution still counts and d stays
/// open for y, which starts after p1. Nobody is inside d. Then p1 and p2 deadlock for real
/// (crossed barriers a and b): the breaker ends a and b only; y then starts (after p1 went
/// on) and completes d.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_leaves_alone_a_point_nobody_waits_at() {
    let h = harness().await;
    let points = "[[strategy.synchronizationPoints]]\nid = \"a\"\ntype = \"barrier\"\nparticipants = [\"p1\", \"p2\"]\nonTimeout = \"fail\"\n\
                  [[strategy.synchronizationPoints]]\nid = \"b\"\ntype = \"barrier\"\nparticipants = [\"p1\", \"p2\"]\nonTimeout = \"fail\"\n\
                  [[strategy.synchronizationPoints]]\nid = \"d\"\ntype = \"aggregation\"\nparticipants = [\"x\", \"y\"]\nonTimeout = \"fail\"\n";
    let x_failed = after(r#"kind = "subtask-failed", subtask = "x""#);
    let toml = header("hybrid", "graceful-degradation", points)
        + &one(
            "x",
            None,
            r#"[{ contribute = { point = "d", value = 1 } }]"#,
            "timeLimitMs = 300",
        )
        + &one(
            "p1",
            None,
            &format!(
                r#"[{x_failed}, {{ barrier = "a", tolerate = true }}, {{ barrier = "b", tolerate = true }}]"#
            ),
            "",
        )
        + &one(
            "p2",
            None,
            &format!(
                r#"[{x_failed}, {{ barrier = "b", tolerate = true }}, {{ barrier = "a", tolerate = true }}]"#
            ),
            "",
        )
        + &one(
            "y",
            None,
            r#"[{ contribute = { point = "d", value = 2 }, tolerate = true }]"#,
            "dependsOn = [\"p1\"]",
        );
    let (r, ev) = h.run(&toml).await;
    assert_eq!(state(&r, "x"), SubtaskState::Failed, "{r:#?}");
    assert_eq!(deadlocks(&ev).len(), 1, "the a/b deadlock is real: {ev:#?}");
    let y = syncs(&r, "y");
    assert!(
        y[0].get("error").is_none() && y[0]["complete"] == true,
        "d was ended by a deadlock it had no part in (nobody waited there, y was still to \
         start): y got {y:#?}; d = {:#?}",
        r.synchronization.get("d")
    );
}

/// The manifest's lookup index is built on the first lookup and kept by clones; changing the
/// public fields afterwards (rename, reorder, add, remove) never makes a lookup wrong.
#[test]
fn manifest_lookups_stay_right_after_the_manifest_changes() {
    let toml = header(
        "hybrid",
        "graceful-degradation",
        "[[strategy.synchronizationPoints]]\nid = \"pt\"\ntype = \"barrier\"\nparticipants = [\"a\", \"b\"]\n",
    ) + &one("a", None, "[]", "")
        + &one("b", None, "[]", "")
        + &one("c", None, "[]", "");
    let mut m = coord::Manifest::parse(&toml, Path::new("t.toml")).unwrap();
    assert_eq!(m.subtask("b").unwrap().id, "b");
    assert!(m.point("pt").is_some());
    let mut cloned = m.clone();
    // Reorder, rename, remove and add after the index exists.
    m.subtasks.swap(0, 2);
    assert_eq!(m.subtask("a").unwrap().id, "a");
    assert_eq!(m.subtask("c").unwrap().id, "c");
    m.subtasks[1].id = "renamed".into();
    assert!(m.subtask("b").is_none());
    assert_eq!(m.subtask("renamed").unwrap().id, "renamed");
    m.subtasks.remove(0);
    assert!(m.subtask("c").is_none());
    let mut extra = m.subtasks[0].clone();
    extra.id = "new".into();
    m.subtasks.push(extra);
    assert_eq!(m.subtask("new").unwrap().id, "new");
    m.strategy.synchronization_points[0].id = "moved".into();
    assert!(m.point("pt").is_none());
    assert!(m.point("moved").is_some());
    // The clone carries the built index; mutating it is just as safe.
    cloned.subtasks.reverse();
    for id in ["a", "b", "c"] {
        assert_eq!(cloned.subtask(id).unwrap().id, id);
    }
}

/// A point that can never gather is still refused; a manifest whose participant names
/// a subtask twice at one point, or names an unknown subtask, is refused without a panic in
/// the bit-set closure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_participant_lists_are_refused_not_panicked_on() {
    let h = harness().await;
    for participants in [
        r#"["a", "a"]"#,
        r#"["a", "ghost"]"#,
        r#"["a", "b", "a", "b"]"#,
    ] {
        let toml = header(
            "hybrid",
            "graceful-degradation",
            &format!(
                "[[strategy.synchronizationPoints]]\nid = \"pt\"\ntype = \"barrier\"\nparticipants = {participants}\n"
            ),
        ) + &one("a", None, r#"[{ barrier = "pt" }]"#, "")
            + &one("b", None, r#"[{ barrier = "pt" }]"#, "dependsOn = [\"a\"]");
        let r = h.prepare(&toml).await;
        eprintln!(
            "{participants}: {:?}",
            r.as_ref().err().map(|e| e.to_string())
        );
        assert!(r.is_err(), "{participants}: accepted");
    }
}
