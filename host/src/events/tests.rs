//! Event bus tests: seqs, filters, history, resume, retention, backpressure, unsubscribe.

use super::*;
use crate::store::{StoreConfig, StoreError};
use serde_json::json;
use std::time::Duration;

async fn bus_with(config: EventBusConfig) -> EventBus {
    let store = Store::open(StoreConfig::in_memory()).unwrap();
    EventBus::new(store, config).await.unwrap()
}

async fn bus() -> EventBus {
    bus_with(EventBusConfig::default()).await
}

fn event(n: u64) -> NewEvent {
    let event_type = match n % 3 {
        0 => EventType::Created,
        1 => EventType::Updated,
        _ => EventType::Accessed,
    };
    NewEvent::new(event_type)
        .context(format!("ctx-{}", n % 4))
        .agent(format!("agent-{}", n % 2))
        .priority((n % 10) as u8)
        .data(json!({ "n": n }))
}

fn n_of(event: &Event) -> u64 {
    event.data["n"].as_u64().unwrap()
}

/// A hang guard, never the assertion: the event is expected to be there already.
async fn next_now(sub: &mut Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("an event that was already committed is delivered")
        .unwrap()
}

/// Publishes `fence` and reads up to it: the events before it, in order. A subscription is
/// gap-free and in seq order, so nothing that matched can hide behind the fence.
async fn read_up_to_fence(bus: &EventBus, sub: &mut Subscription, fence: NewEvent) -> Vec<u64> {
    let fence = bus.publish(fence).await.unwrap();
    let mut before = Vec::new();
    loop {
        let e = next_now(sub).await;
        if e.seq == fence.seq {
            return before;
        }
        before.push(n_of(&e));
    }
}

#[tokio::test]
async fn seqs_are_dense_and_in_commit_order() {
    let bus = bus().await;
    let first = bus.publish(event(0)).await.unwrap();
    assert_eq!(first.seq, 1);
    let batch = bus
        .publish_batch((1..5).map(event).collect())
        .await
        .unwrap();
    assert_eq!(
        batch.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2, 3, 4, 5]
    );
    let stored = bus
        .history(&EventFilter::all(), Some(0), 100)
        .await
        .unwrap();
    assert_eq!(stored.len(), 5);
    assert_eq!(stored[0], first);
    assert_eq!(&stored[1..], &batch[..]);
    let metrics = bus.metrics();
    assert_eq!(
        (metrics.published, metrics.last_seq, metrics.oldest_seq),
        (5, 5, 1)
    );
}

#[tokio::test]
async fn staged_events_commit_with_their_write_or_not_at_all() {
    let bus = bus().await;
    let mut live = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    let staging = bus.clone();
    let failed = bus
        .store()
        .write(move |ctx| {
            staging.stage(ctx, vec![event(1), event(2)])?;
            ctx.tx()
                .execute("INSERT INTO meta(key, value) VALUES ('k', 'v')", [])?;
            Err::<(), _>(StoreError::CorruptRow("the context change failed".into()))
        })
        .await;
    assert!(failed.is_err());
    assert!(
        bus.history(&EventFilter::all(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let staging = bus.clone();
    let staged = bus
        .store()
        .write(move |ctx| {
            ctx.tx()
                .execute("INSERT INTO meta(key, value) VALUES ('k', 'v')", [])?;
            staging.stage(ctx, vec![event(3)])
        })
        .await
        .unwrap();
    // The rolled-back write consumed no seq, and its events never reached the live
    // subscriber: the first thing it gets is the committed event.
    assert_eq!(staged[0].seq, 1);
    assert_eq!(next_now(&mut live).await, staged[0]);
}

#[tokio::test]
async fn filters_select_by_type_context_agent_priority_and_time() {
    let bus = bus().await;
    let published = bus
        .publish_batch((0..40).map(event).collect())
        .await
        .unwrap();
    let ts = published[0].timestamp_ms;
    type Expected = Box<dyn Fn(u64) -> bool>;
    // Each filter with the n it selects among the 40 events; event(42) (updated, ctx-2,
    // agent-0, priority 2) and event(45) (created, ctx-1, agent-1, priority 5) serve as fences.
    let cases: Vec<(EventFilter, Expected)> = vec![
        (EventFilter::all(), Box::new(|_| true)),
        (
            EventFilter {
                event_types: vec![EventType::Updated],
                ..EventFilter::default()
            },
            Box::new(|n| n % 3 == 1),
        ),
        (
            EventFilter::parse_cli("context=ctx-1,context=ctx-2,agent=agent-1").unwrap(),
            Box::new(|n| (n % 4 == 1 || n % 4 == 2) && n % 2 == 1),
        ),
        (
            EventFilter::parse_cli("priority=7,type=created").unwrap(),
            Box::new(|n| n % 10 >= 7 && n % 3 == 0),
        ),
        (
            EventFilter::parse_cli(&format!("since={ts},until={ts}")).unwrap(),
            Box::new(|_| true),
        ),
        (
            EventFilter::parse_cli(&format!("until={}", ts - 1)).unwrap(),
            Box::new(|_| false),
        ),
    ];
    for (filter, expected) in &cases {
        let want: Vec<u64> = (0..40).filter(|n| expected(*n)).collect();
        let from_history: Vec<u64> = bus
            .history(filter, Some(0), 1000)
            .await
            .unwrap()
            .iter()
            .map(n_of)
            .collect();
        assert_eq!(from_history, want, "history with {filter:?}");
        let in_memory: Vec<u64> = published
            .iter()
            .filter(|e| filter.matches(e))
            .map(n_of)
            .collect();
        assert_eq!(in_memory, want, "matches() with {filter:?}");
    }
    // Without `after_seq`: the newest `limit` matches, oldest first.
    let newest = bus
        .history(&EventFilter::parse_cli("type=updated").unwrap(), None, 3)
        .await
        .unwrap();
    assert_eq!(newest.iter().map(n_of).collect::<Vec<_>>(), [31, 34, 37]);
    // With `after_seq`: the first `limit` after it.
    let page = bus.history(&EventFilter::all(), Some(10), 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [11, 12]);

    // Subscriptions from the start deliver the same events. Each reads up to a fence it
    // matches, so one that delivered too much would show it. The fences are published after
    // the 40, so the two time-range cases (which no later event matches) rest on history.
    let mut fences: Vec<u64> = Vec::new();
    for (filter, expected) in cases.iter().take(4) {
        let want: Vec<u64> = (0..40).filter(|n| expected(*n)).collect();
        let mut sub = bus
            .subscribe(filter.clone(), SubscribeFrom::AfterSeq(0))
            .unwrap();
        let after = fences.last().copied().unwrap_or(39);
        let fence = (after + 1..).find(|n| expected(*n)).unwrap();
        let earlier_fences: Vec<u64> = fences.iter().copied().filter(|n| expected(*n)).collect();
        let delivered = read_up_to_fence(&bus, &mut sub, event(fence)).await;
        assert_eq!(
            delivered,
            [want, earlier_fences].concat(),
            "subscription with {filter:?}"
        );
        fences.push(fence);
    }
}

#[test]
fn cli_filters_name_the_bad_key() {
    let filter =
        EventFilter::parse_cli(" type=rolled-back , agent=a,since=5,until=9,priority=3").unwrap();
    assert_eq!(
        filter,
        EventFilter {
            event_types: vec![EventType::RolledBack],
            context_ids: vec![],
            agent_ids: vec!["a".into()],
            time_range: Some((5, 9)),
            min_priority: Some(3),
        }
    );
    assert_eq!(EventFilter::parse_cli("").unwrap(), EventFilter::all());
    for (spec, key) in [
        ("colour=red", "colour"),
        ("type=exploded", "type"),
        ("since=yesterday", "since"),
        ("priority=300", "priority"),
        ("context=", "context"),
        ("typo", "typo"),
        ("since=10,until=5", "since"),
    ] {
        match EventFilter::parse_cli(spec) {
            Err(EventError::InvalidFilter { key: got, .. }) => assert_eq!(got, key, "{spec}"),
            other => panic!("{spec}: {other:?}"),
        }
    }
    let error: crate::Error = EventFilter::parse_cli("colour=red").unwrap_err().into();
    assert_eq!(error.category(), crate::ErrorCategory::Validation);
}

#[test]
fn filters_and_events_use_the_documented_json_shape() {
    let filter: EventFilter = serde_json::from_value(json!({
        "eventTypes": ["agent-disconnected", "rolled-back"],
        "contextIds": ["ctx-1"],
        "timeRange": [1, 2],
        "minPriority": 4
    }))
    .unwrap();
    assert_eq!(
        filter.event_types,
        [EventType::AgentDisconnected, EventType::RolledBack]
    );
    assert_eq!(filter.time_range, Some((1, 2)));
    assert!(serde_json::from_value::<EventFilter>(json!({"eventType": ["created"]})).is_err());
    for event_type in EventType::ALL {
        assert_eq!(
            serde_json::to_value(event_type).unwrap(),
            json!(event_type.as_str())
        );
        assert_eq!(
            event_type.as_str().parse::<EventType>().unwrap(),
            event_type
        );
    }
    let event = Event {
        seq: 3,
        event_type: EventType::AgentRegistered,
        context_id: None,
        agent_id: Some("a".into()),
        timestamp_ms: 9,
        priority: 1,
        data: json!({}),
    };
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({"seq": 3, "eventType": "agent-registered", "agentId": "a", "timestampMs": 9, "priority": 1, "data": {}})
    );
}

#[tokio::test]
async fn subscriptions_resume_exactly_after_their_last_seq() {
    let dir = tempfile::tempdir().unwrap();
    let filter = EventFilter::parse_cli("type=updated").unwrap();
    let resume_at;
    {
        let store = Store::open(StoreConfig::at(dir.path())).unwrap();
        let bus = EventBus::new(store, EventBusConfig::default())
            .await
            .unwrap();
        let mut sub = bus.subscribe(filter.clone(), SubscribeFrom::Now).unwrap();
        bus.publish_batch((0..30).map(event).collect())
            .await
            .unwrap();
        // Handle five matching events, then "crash".
        for expected in [1, 4, 7, 10, 13] {
            assert_eq!(n_of(&sub.next().await.unwrap()), expected);
        }
        resume_at = sub.last_seq();
        assert_eq!(resume_at, 14, "seq of event n = 13");
    }
    let store = Store::open(StoreConfig::at(dir.path())).unwrap();
    let bus = EventBus::new(store, EventBusConfig::default())
        .await
        .unwrap();
    assert_eq!(bus.metrics().last_seq, 30);
    let mut sub = bus
        .subscribe(filter, SubscribeFrom::AfterSeq(resume_at))
        .unwrap();
    bus.publish_batch((30..40).map(event).collect())
        .await
        .unwrap();
    // event(40) is an update: the fence.
    let rest = read_up_to_fence(&bus, &mut sub, event(40)).await;
    assert_eq!(rest, [16, 19, 22, 25, 28, 31, 34, 37]);
    assert_eq!(sub.last_seq(), 41);
}

#[tokio::test]
async fn subscribing_now_skips_what_was_committed_before() {
    let bus = bus().await;
    bus.publish(event(1)).await.unwrap();
    let mut sub = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    assert_eq!(sub.last_seq(), 1);
    bus.publish(event(2)).await.unwrap();
    assert_eq!(read_up_to_fence(&bus, &mut sub, event(3)).await, [2]);
}

#[tokio::test]
async fn history_older_than_retention_is_an_explicit_error() {
    let bus = bus_with(EventBusConfig {
        retention: 10,
        buffer: 4,
        ..EventBusConfig::default()
    })
    .await;
    // Subscribed at the start but never reading: retention overtakes it.
    let mut stalled = bus
        .subscribe(EventFilter::all(), SubscribeFrom::AfterSeq(0))
        .unwrap();
    for n in 0..25 {
        bus.publish(event(n)).await.unwrap();
    }
    let metrics = bus.metrics();
    assert_eq!((metrics.last_seq, metrics.oldest_seq), (25, 16));
    let stored = bus.history(&EventFilter::all(), None, 100).await.unwrap();
    assert_eq!(stored.first().map(|e| e.seq), Some(16));
    assert_eq!(stored.len(), 10);

    match bus.subscribe(EventFilter::all(), SubscribeFrom::AfterSeq(5)) {
        Err(EventError::HistoryCompacted {
            requested: 6,
            oldest: 16,
        }) => {}
        other => panic!("{other:?}"),
    }
    match bus.history(&EventFilter::all(), Some(14), 10).await {
        Err(EventError::HistoryCompacted {
            requested: 15,
            oldest: 16,
        }) => {}
        other => panic!("{other:?}"),
    }
    // Just inside retention: fine, and complete.
    let mut edge = bus
        .subscribe(EventFilter::all(), SubscribeFrom::AfterSeq(15))
        .unwrap();
    assert_eq!(edge.next().await.unwrap().seq, 16);
    assert_eq!(
        bus.history(&EventFilter::all(), Some(15), 100)
            .await
            .unwrap()
            .len(),
        10
    );

    match stalled.next().await {
        Err(EventError::HistoryCompacted {
            requested: 1,
            oldest: 16,
        }) => {}
        other => panic!("{other:?}"),
    }
    // It stays failed rather than skipping ahead.
    assert!(matches!(
        stalled.next().await,
        Err(EventError::HistoryCompacted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_gets_everything_in_order_and_never_blocks_publishers() {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 500;
    let bus = bus_with(EventBusConfig {
        retention: 1_000_000,
        buffer: 8,
        ..EventBusConfig::default()
    })
    .await;
    let mut slow = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    let mut slow_filtered = bus
        .subscribe(
            EventFilter::parse_cli("agent=publisher-2").unwrap(),
            SubscribeFrom::Now,
        )
        .unwrap();

    // The slow subscribers read nothing until every publish has returned: if publishing
    // waited for subscribers this would never finish.
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let bus = bus.clone();
        publishers.push(tokio::spawn(async move {
            for n in 0..EACH {
                bus.publish(
                    NewEvent::new(EventType::Updated)
                        .agent(format!("publisher-{p}"))
                        .data(json!({ "p": p, "n": n })),
                )
                .await
                .unwrap();
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        for publisher in publishers {
            publisher.await.unwrap();
        }
    })
    .await
    .expect("publishers finished without waiting for the slow subscribers");

    // Keep publishing while the slow subscriber reads, sleeping now and then.
    let more = tokio::spawn({
        let bus = bus.clone();
        async move {
            for n in 0..200 {
                bus.publish(NewEvent::new(EventType::Sync).data(json!({ "n": n })))
                    .await
                    .unwrap();
            }
        }
    });
    let total = PUBLISHERS * EACH + 200;
    let mut last = 0;
    let mut per_publisher = [0u64; PUBLISHERS as usize];
    for i in 0..total {
        let e = slow.next().await.unwrap();
        assert_eq!(e.seq, last + 1, "no gap and no duplicate");
        last = e.seq;
        if e.event_type == EventType::Updated {
            let p = e.data["p"].as_u64().unwrap() as usize;
            assert_eq!(
                e.data["n"].as_u64().unwrap(),
                per_publisher[p],
                "per-publisher order"
            );
            per_publisher[p] += 1;
        }
        if i % 97 == 0 {
            tokio::task::yield_now().await;
        }
    }
    more.await.unwrap();
    assert_eq!(per_publisher, [EACH; PUBLISHERS as usize]);
    // A fence both subscribers match: nothing was delivered twice or left over before it.
    let fence = bus
        .publish(NewEvent::new(EventType::Sync).agent("publisher-2"))
        .await
        .unwrap();
    assert_eq!(next_now(&mut slow).await.seq, fence.seq);

    let mut seen = Vec::new();
    loop {
        let e = next_now(&mut slow_filtered).await;
        assert_eq!(e.agent_id.as_deref(), Some("publisher-2"));
        if e.seq == fence.seq {
            break;
        }
        seen.push(e.data["n"].as_u64().unwrap());
    }
    assert_eq!(seen, (0..EACH).collect::<Vec<_>>());

    let metrics = bus.metrics();
    assert_eq!(metrics.published, total + 1);
    assert!(
        metrics.catch_ups > 0,
        "the slow subscribers must have caught up from the store"
    );
    assert_eq!(metrics.delivered, total + 1 + EACH + 1);
}

#[tokio::test]
async fn unsubscribe_ends_a_waiting_subscription() {
    let bus = bus().await;
    let mut sub = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    let other = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    assert_eq!(bus.metrics().subscribers, 2);
    let id = sub.id();
    {
        // Polled once by hand: the subscriber is parked waiting when it is unsubscribed.
        let mut waiting = std::pin::pin!(sub.next());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            waiting.as_mut().poll(&mut cx).is_pending(),
            "nothing to read"
        );
        assert!(bus.unsubscribe(id));
        let result = tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .expect("unsubscribe wakes the waiting subscriber");
        assert!(
            matches!(result, Err(EventError::Unsubscribed)),
            "{result:?}"
        );
    }
    bus.publish(event(1)).await.unwrap();
    assert!(matches!(sub.next().await, Err(EventError::Unsubscribed)));
    assert!(!bus.unsubscribe(id), "already gone");
    assert_eq!(bus.metrics().subscribers, 1);
    drop(other);
    assert_eq!(bus.metrics().subscribers, 0);
}

#[tokio::test]
async fn invalid_configuration_is_refused() {
    let store = Store::open(StoreConfig::in_memory()).unwrap();
    for (config, field) in [
        (
            EventBusConfig {
                retention: 0,
                ..EventBusConfig::default()
            },
            "retention",
        ),
        (
            EventBusConfig {
                buffer: 0,
                ..EventBusConfig::default()
            },
            "buffer",
        ),
        (
            EventBusConfig {
                buffer_bytes: 0,
                ..EventBusConfig::default()
            },
            "buffer_bytes",
        ),
        (
            EventBusConfig {
                write_queue: 0,
                ..EventBusConfig::default()
            },
            "write_queue",
        ),
    ] {
        match EventBus::new(store.clone(), config).await {
            Err(EventError::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{other:?}"),
        }
    }
}
