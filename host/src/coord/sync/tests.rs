use super::*;

#[tokio::test(start_paused = true)]
async fn a_sync_wait_counts_until_its_call_returns_or_is_dropped() {
    use std::sync::atomic::Ordering;
    let handle = Arc::new(SyncHandle {
        engine: SyncEngine::new(&[], None, None),
        participant: "a".into(),
        waiting: Default::default(),
        waited_us: Default::default(),
        timer_due: Default::default(),
        polling: Default::default(),
        channels: None,
        attempt: 1,
        run_id: String::new(),
    });
    {
        let _w = handle.enter_wait();
        assert!(handle.waiting.load(Ordering::Relaxed));
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    assert!(!handle.waiting.load(Ordering::Relaxed));
    assert_eq!(handle.waited_us.load(Ordering::Relaxed), 5_000_000);
    // A call dropped inside its wait (the agent terminated) stops counting too.
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let h = handle.clone();
    let task = tokio::spawn(async move {
        let _w = h.enter_wait();
        let _ = entered_tx.send(());
        std::future::pending::<()>().await;
    });
    entered.await.unwrap();
    tokio::time::advance(Duration::from_millis(250)).await;
    task.abort();
    let _ = task.await;
    assert!(!handle.waiting.load(Ordering::Relaxed));
    assert_eq!(handle.waited_us.load(Ordering::Relaxed), 5_250_000);
}

fn def(kind: SyncPointType, cond: SyncCondition, on_timeout: OnTimeout) -> SyncPointDef {
    SyncPointDef {
        id: "p".into(),
        point_type: kind,
        description: String::new(),
        participants: vec!["a".into(), "b".into(), "c".into()],
        condition: cond,
        timeout_ms: Some(100),
        on_timeout,
        reducer: None,
        max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
    }
}

/// `a` and `b` contribute 10 bytes each to an aggregation bounded at 30 bytes, then `c`
/// contributes `last`.
async fn third_contribution(last: Value) -> Result<Arc<SyncOutcome>, SyncFailure> {
    let mut d = def(
        SyncPointType::Aggregation,
        SyncCondition::AllComplete,
        OnTimeout::Fail,
    );
    d.timeout_ms = None;
    d.max_result_bytes = 30;
    let e = SyncEngine::new(&[d], None, None);
    // A 10-byte JSON string: eight characters and the quotes.
    let value = json!("12345678");
    assert_eq!(json_bytes(&value), 10);
    for who in ["a", "b"] {
        let (e, v) = (e.clone(), value.clone());
        tokio::spawn(async move { e.arrive("p", who, SyncPointType::Aggregation, v).await });
    }
    while e.waiting_at().len() < 2 {
        tokio::task::yield_now().await;
    }
    let r = e.arrive("p", "c", SyncPointType::Aggregation, last).await;
    e.cancel_all("test over");
    r
}

/// Two aggregation points `p` and `q` (a, b, c each), the run bounded at 30 payload bytes:
/// `a` gives 10 bytes at `p`, `b` 10 at `q`, then `c` gives `last` at `p`.
async fn third_contribution_in_the_run(last: Value) -> Result<Arc<SyncOutcome>, SyncFailure> {
    let point = |id: &str| {
        let mut d = def(
            SyncPointType::Aggregation,
            SyncCondition::AllComplete,
            OnTimeout::Fail,
        );
        d.id = id.into();
        d.timeout_ms = None;
        d
    };
    let e = SyncEngine::new(&[point("p"), point("q")], None, None);
    e.limit_total_bytes(30);
    let value = json!("12345678");
    for (who, at) in [("a", "p"), ("b", "q")] {
        let (e, v) = (e.clone(), value.clone());
        tokio::spawn(async move { e.arrive(at, who, SyncPointType::Aggregation, v).await });
    }
    while e.waiting_at().len() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(e.held_bytes(), 20);
    let c = {
        let e = e.clone();
        tokio::spawn(async move { e.arrive("p", "c", SyncPointType::Aggregation, last).await })
    };
    // `c` either is refused at once or waits at `p` (which still needs `b`).
    let r = loop {
        if c.is_finished() {
            break c.await.unwrap();
        }
        if e.held_bytes() > 20 {
            e.cancel_all("test over");
            break c.await.unwrap();
        }
        tokio::task::yield_now().await;
    };
    e.cancel_all("test over");
    r
}

#[tokio::test]
async fn the_points_of_a_run_hold_payloads_up_to_max_sync_bytes_together() {
    // Exactly 30 bytes over both points: `c`'s contribution counts (the point then fails only
    // because the test ends it).
    let held = third_contribution_in_the_run(json!("12345678")).await;
    assert!(
        matches!(&held, Err(SyncFailure::Failed(m)) if m == "test over"),
        "{held:?}"
    );
    // One byte more is refused, naming the run's bound.
    let refused = third_contribution_in_the_run(json!("123456789"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, SyncFailure::InvalidPayload(m) if m.contains("would hold 31 bytes") && m.contains("strategy.maxSyncBytes is 30")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_point_holds_payloads_up_to_its_max_result_bytes() {
    // Exactly 30 bytes: the point resolves.
    let done = third_contribution(json!("12345678")).await.unwrap();
    assert!(done.complete);
    assert_eq!(
        &*done.result_text(),
        r#"{"a":"12345678","b":"12345678","c":"12345678"}"#
    );
    // One byte more is refused, naming the bound.
    let refused = third_contribution(json!("123456789")).await.unwrap_err();
    assert!(
        matches!(&refused, SyncFailure::InvalidPayload(m) if m.contains("would hold 31 bytes") && m.contains("maxResultBytes is 30")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn barrier_releases_everyone_when_all_arrive() {
    let e = SyncEngine::new(
        &[def(
            SyncPointType::Barrier,
            SyncCondition::AllComplete,
            OnTimeout::Fail,
        )],
        None,
        None,
    );
    let tasks: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|p| {
            let e = e.clone();
            tokio::spawn(async move { e.arrive("p", p, SyncPointType::Barrier, Value::Null).await })
        })
        .collect();
    for t in tasks {
        let o = t.await.unwrap().unwrap();
        assert!(o.complete && !o.timed_out);
        assert_eq!(o.arrived.len(), 3);
    }
}

#[tokio::test]
async fn majority_decision_and_absent_participant() {
    let mut d = def(
        SyncPointType::Decision,
        SyncCondition::MajorityComplete,
        OnTimeout::Fail,
    );
    d.timeout_ms = None;
    let e = SyncEngine::new(&[d], None, None);
    e.mark_absent("c");
    let e2 = e.clone();
    let a = tokio::spawn(async move {
        e2.arrive("p", "a", SyncPointType::Decision, json!("yes"))
            .await
    });
    let o = e
        .arrive("p", "b", SyncPointType::Decision, json!("yes"))
        .await
        .unwrap();
    assert_eq!(o.result["decision"], "yes");
    assert_eq!(o.absent, vec!["c".to_string()]);
    assert_eq!(a.await.unwrap().unwrap().result["tally"]["yes"], 2);
}

/// Waits until `n` participants wait at a point, or the point resolved.
async fn until_waiting(rx: &mut mpsc::UnboundedReceiver<SyncNotice>, n: usize) {
    let mut waiting = 0;
    while waiting < n {
        match rx.recv().await.expect("engine alive") {
            SyncNotice::Waiting { .. } => waiting += 1,
            SyncNotice::Resolved { .. } => return,
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_split_majority_vote_waits_for_the_deciding_vote() {
    let mut d = def(
        SyncPointType::Decision,
        SyncCondition::MajorityComplete,
        OnTimeout::Fail,
    );
    d.timeout_ms = None;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let e = SyncEngine::new(&[d], None, Some(tx));
    let (e1, e2) = (e.clone(), e.clone());
    let a = tokio::spawn(async move {
        e1.arrive("p", "a", SyncPointType::Decision, json!("yes"))
            .await
    });
    let b = tokio::spawn(async move {
        e2.arrive("p", "b", SyncPointType::Decision, json!("no"))
            .await
    });
    until_waiting(&mut rx, 2).await;
    assert!(
        e.outcome("p").is_none(),
        "one vote each decides nothing yet"
    );
    let o = e
        .arrive("p", "c", SyncPointType::Decision, json!("no"))
        .await
        .unwrap();
    assert_eq!(o.result["decision"], "no");
    assert_eq!(a.await.unwrap().unwrap().result["decision"], "no");
    assert_eq!(b.await.unwrap().unwrap().arrived.len(), 3);
}

/// The timeout counts from the first arrival: 1 ms before it nothing has happened, at it
/// the policy applies (paused time, so the boundary is exact).
#[tokio::test(start_paused = true)]
async fn the_timeout_fires_at_its_boundary_and_not_before() {
    for (policy, resolves) in [
        (OnTimeout::Proceed, true),
        (OnTimeout::Fail, true),
        (OnTimeout::Wait, false),
    ] {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let e = SyncEngine::new(
            &[def(
                SyncPointType::Barrier,
                SyncCondition::AllComplete,
                policy,
            )],
            None,
            Some(tx),
        );
        let e1 = e.clone();
        let a = tokio::spawn(async move {
            e1.arrive("p", "a", SyncPointType::Barrier, Value::Null)
                .await
        });
        until_waiting(&mut rx, 1).await;
        tokio::time::advance(Duration::from_millis(99)).await;
        tokio::task::yield_now().await;
        assert!(e.outcome("p").is_none(), "{policy:?}: 99 ms of 100");
        assert!(rx.try_recv().is_err(), "{policy:?}: nothing yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        // The timer task runs and reports.
        let notice = rx.recv().await.unwrap();
        match (resolves, notice) {
            (true, SyncNotice::Resolved { outcome, .. }) => match policy {
                OnTimeout::Proceed => {
                    let o = outcome.unwrap();
                    assert!(o.timed_out && !o.complete);
                    assert_eq!(o.absent, ["b", "c"]);
                }
                _ => assert!(outcome.unwrap_err().contains("timed out after 100 ms")),
            },
            (false, SyncNotice::TimedOutWaiting { point }) => {
                assert_eq!(point, "p");
                assert!(e.outcome("p").is_none(), "wait keeps the point open");
                e.mark_absent("b");
            }
            (_, other) => panic!("{policy:?}: unexpected {other:?}"),
        }
        let r = a.await.unwrap();
        if policy == OnTimeout::Wait {
            // b absent makes all-complete impossible: `wait` fails instead of hanging.
            assert!(r.unwrap_err().to_string().contains("can no longer be met"));
        }
    }
}

/// Every condition × every timeout policy × (all arrive, `c` dies, `c` is late), as seen by
/// participant `a`: `Some((complete, timed_out))`, or `None` for a failed point. Paused
/// time: "late" arrives at 200 ms, after the 60 ms timeout, exactly.
#[tokio::test(start_paused = true)]
async fn barrier_matrix() {
    use OnTimeout::*;
    let specific = SyncCondition::SpecificAgents(vec!["a".into(), "b".into()]);
    let conds = [
        SyncCondition::AllComplete,
        SyncCondition::MajorityComplete,
        specific,
        SyncCondition::Timeout,
    ];
    let ok = |t: bool| Some((true, t));
    let expect =
        |cond: &SyncCondition, policy: OnTimeout, scenario: &str| match (cond, policy, scenario) {
            (_, _, "all") => ok(false),
            (SyncCondition::AllComplete, Proceed, "dies") => Some((false, false)),
            (SyncCondition::AllComplete, _, "dies") => None,
            (SyncCondition::AllComplete, Wait, "late") => ok(true),
            (SyncCondition::AllComplete, Proceed, "late") => Some((false, true)),
            (SyncCondition::AllComplete, Fail, "late") => None,
            (SyncCondition::Timeout, _, "late") => ok(true),
            _ => ok(false),
        };
    let mut cases = tokio::task::JoinSet::new();
    for cond in conds {
        for policy in [Wait, Proceed, Fail] {
            for scenario in ["all", "dies", "late"] {
                let want = expect(&cond, policy, scenario);
                let mut d = def(SyncPointType::Barrier, cond.clone(), policy);
                d.timeout_ms = Some(60);
                cases.spawn(async move {
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    let e = SyncEngine::new(std::slice::from_ref(&d), None, Some(tx));
                    let arrive = |p: &'static str| {
                        let e = e.clone();
                        tokio::spawn(async move {
                            e.arrive("p", p, SyncPointType::Barrier, Value::Null).await
                        })
                    };
                    let a = arrive("a");
                    let b = arrive("b");
                    match scenario {
                        "all" => drop(arrive("c")),
                        "dies" => {
                            // After a and b are in (waiting, or resolved by their arrival).
                            until_waiting(&mut rx, 2).await;
                            e.mark_absent("c");
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            drop(arrive("c"));
                        }
                    }
                    let got = a.await.unwrap().ok().map(|o| (o.complete, o.timed_out));
                    let _ = b.await;
                    (
                        format!("{} {policy:?} {scenario}", d.condition.name()),
                        got,
                        want,
                    )
                });
            }
        }
    }
    while let Some(r) = cases.join_next().await {
        let (case, got, want) = r.unwrap();
        assert_eq!(got, want, "{case}");
    }
}

#[tokio::test]
async fn reducers() {
    let a = json!({"x": 1, "y": {"z": 2}});
    let b = json!({"x": 2, "y": {"z": 3}, "w": 1});
    let vals = [("a", &a), ("b", &b)];
    assert_eq!(
        reduce(Reducer::Sum, &vals),
        json!({"x": 3, "y": {"z": 5}, "w": 1})
    );
    assert_eq!(
        reduce(Reducer::Merge, &vals),
        json!({"x": 2, "y": {"z": 3}, "w": 1})
    );
    assert_eq!(reduce(Reducer::Concat, &vals), json!([a, b]));
    assert_eq!(reduce(Reducer::Collect, &vals), json!({"a": a, "b": b}));
    // Arrays are spliced by concat; scalars summed, a non-number kept from the first.
    let (one, two, word) = (json!([1, 2]), json!(3), json!("w"));
    assert_eq!(
        reduce(Reducer::Concat, &[("a", &one), ("b", &two)]),
        json!([1, 2, 3])
    );
    assert_eq!(reduce(Reducer::Sum, &[("a", &two), ("b", &two)]), json!(6));
    assert_eq!(
        reduce(Reducer::Sum, &[("a", &word), ("b", &two)]),
        json!("w")
    );
}
