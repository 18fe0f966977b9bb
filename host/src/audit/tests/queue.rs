//! The bounded, fail-closed queue: `record` takes exactly the queue's capacity while the writer
//! has not run, and refuses everything once a write has failed.

use super::*;

/// Makes every later insert into the audit table fail.
const NO_AUDIT: &str = "CREATE TRIGGER no_audit BEFORE INSERT ON audit \
                        BEGIN SELECT RAISE(ABORT, 'audit disabled by test'); END;";

#[tokio::test] // current-thread: the writer runs only when this test awaits
async fn the_queue_takes_its_capacity_and_refuses_one_more() {
    let options = AuditOptions {
        queue_capacity: 4,
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(Store::open(StoreConfig::in_memory()).unwrap(), options)
        .await
        .unwrap();
    for n in 1..=4 {
        log.record(entry(n)).unwrap();
    }
    match log.record(entry(5)) {
        Err(e @ AuditUnavailable::QueueFull { capacity: 4 }) => {
            assert!(e.to_string().contains("4 entries waiting"), "{e}");
        }
        other => panic!("expected a full queue, got {other:?}"),
    }
    assert_eq!(
        log.recorded(),
        4,
        "the refused entry is not counted as recorded"
    );
    log.flush().await;
    log.record(entry(6)).unwrap();
    log.flush().await;
    assert_eq!(ns(&all(&log).await), vec![1, 2, 3, 4, 6]);
    let status = log.status();
    assert_eq!((status.written, status.lost, status.failure), (5, 0, None));
    assert_eq!(AuditOptions::default().queue_capacity, AUDIT_QUEUE_CAPACITY);
}

#[tokio::test]
async fn a_failed_write_refuses_every_later_record() {
    let (dir, log) = disk_log(2).await;
    tamper(&dir, NO_AUDIT);
    // Accepted (queued), then lost when every attempt at writing it fails.
    log.record(entry(3)).unwrap();
    log.flush().await;
    let status = log.status();
    assert_eq!((status.written, status.lost), (2, 1));
    let failure = status.failure.expect("the log is failed");
    assert!(failure.contains("audit disabled by test"), "{failure}");
    // Every later record is refused, even once the store works again.
    tamper(&dir, "DROP TRIGGER no_audit");
    match log.record(entry(4)) {
        Err(e @ AuditUnavailable::Failed { .. }) => {
            assert!(e.to_string().contains("audit disabled by test"), "{e}");
        }
        other => panic!("expected the failed state, got {other:?}"),
    }
    assert_eq!(log.recorded(), 3);
    // The written part of the log is intact and matches its head file.
    assert!(log.verify().await.unwrap().is_intact());
}

/// A log on a fresh in-memory store whose writer gathers entries for `window`.
async fn log_with_window(window: std::time::Duration) -> AuditLog {
    let options = AuditOptions {
        batch_window: window,
        ..AuditOptions::default()
    };
    AuditLog::open_with(Store::open(StoreConfig::in_memory()).unwrap(), options)
        .await
        .unwrap()
}

/// Entry 1 reaches an idle writer; 2 and 3 are recorded while the writer waits. With a batch
/// window the three share one store write; with none, entry 1 is written alone.
async fn batches_for(window: std::time::Duration) -> AuditStatus {
    let log = log_with_window(window).await;
    log.record(entry(1)).unwrap();
    // current-thread: the writer takes entry 1 now, and waits out its window (or writes).
    tokio::task::yield_now().await;
    log.record(entry(2)).unwrap();
    log.record(entry(3)).unwrap();
    tokio::time::sleep(window + std::time::Duration::from_millis(1)).await;
    log.flush().await;
    assert_eq!(ns(&all(&log).await), vec![1, 2, 3]);
    log.status()
}

#[tokio::test(start_paused = true)]
async fn entries_queued_within_the_batch_window_share_one_store_write() {
    let s = batches_for(AUDIT_BATCH_WINDOW).await;
    assert_eq!((s.written, s.batches), (3, 1));
    let s = batches_for(std::time::Duration::ZERO).await;
    assert_eq!(
        (s.written, s.batches),
        (3, 2),
        "with no window, the entry that woke the writer is written alone"
    );
}

#[tokio::test]
async fn a_flush_ends_the_batch_window_at_once() {
    let log = log_with_window(std::time::Duration::from_secs(3600)).await;
    log.record(entry(1)).unwrap();
    tokio::task::yield_now().await;
    // A guard against a hang only: without the flush's signal this waits an hour.
    tokio::time::timeout(std::time::Duration::from_secs(120), log.flush())
        .await
        .expect("the flush ended the hour-long window");
    assert_eq!(log.status().written, 1);
}

/// A decision recorded with shared strings is stored as the same decision recorded as a
/// [`NewAuditEntry`] is: agent, resource, operation, decision, reason, `null` details, and
/// the same caps on strings past their bounds (multi-byte characters at the cut included).
#[tokio::test]
async fn a_shared_decision_is_stored_as_the_same_new_entry_would_be() {
    let long_name = "é".repeat(super::chain::MAX_NAME_BYTES);
    let long_reason = format!("x{}", "ü".repeat(super::chain::MAX_REASON_BYTES));
    let cases = [
        (
            "agent-1",
            "context/plan",
            "get",
            AuditDecision::Allow,
            "policy `p`",
        ),
        (
            &*long_name,
            &*long_name,
            &*long_name,
            AuditDecision::Deny,
            &*long_reason,
        ),
    ];
    let log = memory_log().await;
    for (agent, resource, operation, decision, reason) in cases {
        log.record(NewAuditEntry::new(
            agent, resource, operation, decision, reason,
        ))
        .unwrap();
        log.record_decision(SharedDecision {
            agent: Arc::from(agent),
            resource: Arc::from(resource),
            operation: Arc::from(operation),
            decision,
            reason: Arc::from(reason),
        })
        .unwrap();
    }
    log.flush().await;
    let stored = all(&log).await;
    assert_eq!(stored.len(), 4);
    let fields = |e: &AuditEntry| {
        (
            e.agent.clone(),
            e.resource.clone(),
            e.operation.clone(),
            e.decision,
            e.reason.clone(),
            e.details.clone(),
        )
    };
    for pair in stored.chunks(2) {
        assert_eq!(fields(&pair[0]), fields(&pair[1]));
        assert_eq!(pair[1].details, serde_json::Value::Null);
    }
    assert!(stored[3].agent.len() <= super::chain::MAX_NAME_BYTES);
    assert!(stored[3].reason.len() <= super::chain::MAX_REASON_BYTES + 64);
    assert!(stored[3].reason.len() < long_reason.len(), "capped");
    assert!(log.verify().await.unwrap().is_intact());
}

fn decision(n: u64) -> SharedDecision {
    SharedDecision {
        agent: Arc::from("agent-1"),
        resource: Arc::from(format!("context/plan-{n}")),
        operation: Arc::from("get"),
        decision: AuditDecision::Allow,
        reason: Arc::from(format!("reason {n}")),
    }
}

/// `record_decision` takes the queue's capacity as `record` does and refuses one more; a
/// failed log refuses it too.
#[tokio::test] // current-thread: the writer runs only when this test awaits
async fn record_decision_is_refused_when_the_queue_is_full_or_the_log_failed() {
    let options = AuditOptions {
        queue_capacity: 2,
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(Store::open(StoreConfig::in_memory()).unwrap(), options)
        .await
        .unwrap();
    log.record_decision(decision(1)).unwrap();
    log.record(entry(2)).unwrap();
    assert!(matches!(
        log.record_decision(decision(3)),
        Err(AuditUnavailable::QueueFull { capacity: 2 })
    ));
    assert_eq!(log.recorded(), 2);
    log.flush().await;
    assert_eq!(log.status().written, 2);

    let (dir, log) = disk_log(1).await;
    tamper(&dir, NO_AUDIT);
    log.record_decision(decision(2)).unwrap();
    log.flush().await;
    assert_eq!((log.status().written, log.status().lost), (1, 1));
    assert!(matches!(
        log.record_decision(decision(3)),
        Err(AuditUnavailable::Failed { .. })
    ));
}

/// A flush through any handle waits for every entry queued before it through any handle,
/// shared decisions and entries alike, and they keep the order they were recorded in; a
/// flush in a later window ends that window too.
#[tokio::test]
async fn a_flush_waits_for_every_entry_queued_before_it_in_order() {
    // No test waits this long: each window here is ended by a flush.
    let log = log_with_window(std::time::Duration::from_secs(3600)).await;
    let other = log.clone();
    log.record(entry(1)).unwrap();
    // current-thread: the writer takes entry 1 and starts waiting out its window.
    tokio::task::yield_now().await;
    log.record_decision(decision(2)).unwrap();
    other.record(entry(3)).unwrap();
    other.record_decision(decision(4)).unwrap();
    other.flush().await;
    assert_eq!(log.status().written, 4, "the flush waited for all four");
    log.record(entry(5)).unwrap();
    tokio::task::yield_now().await;
    other.record_decision(decision(6)).unwrap();
    log.flush().await;
    let resources: Vec<String> = all(&log).await.into_iter().map(|e| e.resource).collect();
    assert_eq!(
        resources,
        [
            "context/plan-1",
            "context/plan-2",
            "context/plan-3",
            "context/plan-4",
            "context/plan-1",
            "context/plan-6",
        ]
    );
    assert!(log.verify().await.unwrap().is_intact());
}

/// A flush that must wait for room for its marker (the queue full, a place reserved for an
/// entry recorded meanwhile) ends the batch window, waits for every entry queued before its
/// marker, and never waits a window out. Time is paused, so a window waited out shows as an
/// hour gone by.
#[tokio::test(start_paused = true)] // current-thread: tasks run only when this test awaits
async fn a_flush_behind_a_full_queue_ends_the_window_and_waits_for_what_preceded_it() {
    let window = std::time::Duration::from_secs(3600);
    let options = AuditOptions {
        queue_capacity: 2,
        batch_window: window,
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(Store::open(StoreConfig::in_memory()).unwrap(), options)
        .await
        .unwrap();
    log.record(entry(1)).unwrap();
    // The writer takes entry 1 and waits in its window.
    tokio::task::yield_now().await;
    let late = log.reserve().unwrap();
    log.record(entry(2)).unwrap();
    let start = tokio::time::Instant::now();
    let flush = tokio::spawn({
        let log = log.clone();
        async move { log.flush().await }
    });
    tokio::task::yield_now().await;
    late.record(entry(3));
    flush.await.unwrap();
    let written = ns(&all(&log).await);
    assert_eq!(written[..2], [1, 2], "{written:?}");
    assert!(
        start.elapsed() < window,
        "the flush waited out a window: {:?}",
        start.elapsed()
    );
    log.flush().await;
    assert_eq!(ns(&all(&log).await), vec![1, 2, 3]);
}
