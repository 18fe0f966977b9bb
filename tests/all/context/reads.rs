//! Reads are recorded without letting a reader fill the event log: a read-only agent in a loop
//! records one `accessed` event per context per window, so other agents' history stays within
//! retention; at the `monitored` isolation level every read is recorded (and such a loop then
//! does push old events out, which is what retention is for).

use super::passive::clocked_host;
use super::*;
use qi_host::events::EventError;

/// Events the store keeps in these tests.
const RETENTION: usize = 50;
/// Reads the reader makes beyond its first: four times the retention.
const READS: u64 = 4 * RETENTION as u64;

/// Another agent's context with some history, a context shared with a reader that reads it
/// `1 + READS` times (at `isolation`), and whether the first context's history from seq 1 is
/// still there afterwards.
async fn read_loop(
    isolation: qi_host::IsolationLevel,
) -> (ContextService, Result<usize, EventError>) {
    let (host, svc, _clock) = clocked_host(qi_host::EventBusConfig {
        retention: RETENTION,
        ..Default::default()
    })
    .await;
    let theirs = NewContext {
        id: Some("theirs".into()),
        context_type: "notes".into(),
        doc: json!({"n": 0}),
        ..Default::default()
    };
    svc.create(OPERATOR, theirs).await.unwrap();
    for v in 1..4 {
        svc.write(OPERATOR, "theirs", Change::Merge(json!({"n": v})), Some(v))
            .await
            .unwrap();
    }
    let mine = NewContext {
        id: Some("mine".into()),
        context_type: "notes".into(),
        doc: json!({"n": 0}),
        ..Default::default()
    };
    svc.create(OPERATOR, mine).await.unwrap();
    let loaded = host.load(RACER_COMPONENT).unwrap();
    let mut s = spec();
    s.isolation_level = isolation;
    let reader = host.spawn(&loaded, s).await.unwrap();
    let me = reader.id().to_string();
    svc.share(
        OPERATOR,
        "mine",
        std::slice::from_ref(&me),
        &[Permission::Read],
        None,
    )
    .await
    .unwrap();
    let mut accessed = svc
        .bus()
        .subscribe(
            EventFilter {
                event_types: vec![EventType::Accessed],
                context_ids: vec!["mine".into()],
                ..EventFilter::default()
            },
            SubscribeFrom::Now,
        )
        .unwrap();
    let input =
        json!({"context": "mine", "writes": 0, "field": "n", "strategy": "strong", "reads": READS});
    let report = start(reader, "reader", input).await.unwrap();
    let out = ok(&report);
    assert_eq!(out["reads"], READS, "{out}");
    assert_eq!(out["errors"], json!([]), "{out}");

    // Every read is recorded, coalesced, or answered by the agent's cache (which a read that
    // filled it was recorded for) by the time the agent has its answer.
    let m = svc.bus().metrics();
    let recorded = match isolation {
        qi_host::IsolationLevel::Monitored => READS + 1,
        _ => 1,
    };
    let hits = report.usage.context_cache_hits;
    assert_eq!(
        (m.reads_recorded, m.reads_coalesced + hits),
        (recorded, READS + 1 - recorded),
        "{m:?}, {hits} cache hits"
    );
    // The recorded ones are written in the background: wait for each.
    for _ in 0..recorded {
        let e = crate::common::hang_guard("an accessed event", accessed.next())
            .await
            .unwrap();
        assert_eq!(e.agent_id.as_deref(), Some(me.as_str()));
    }
    let theirs_only = EventFilter {
        context_ids: vec!["theirs".into()],
        ..EventFilter::default()
    };
    let history = svc
        .bus()
        .history(&theirs_only, Some(0), 100)
        .await
        .map(|events| events.len());
    (svc, history)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_agent_in_a_loop_keeps_other_agents_history_in_retention() {
    let (_svc, history) = read_loop(qi_host::IsolationLevel::Sandbox).await;
    // Created plus three updates, all still there from seq 1.
    assert_eq!(history.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_monitored_every_read_is_recorded() {
    let (_svc, history) = read_loop(qi_host::IsolationLevel::Monitored).await;
    // Four times the retention in reads: the oldest events are gone, and asking says so.
    match history {
        Err(EventError::HistoryCompacted { requested, oldest }) => {
            assert_eq!(requested, 1);
            assert!(oldest > 1);
        }
        other => panic!("expected the history to be compacted, got {other:?}"),
    }
}
