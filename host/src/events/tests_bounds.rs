//! The bus's bounds: live slots bounded in bytes, `accessed` coalescing, the write queue.

use super::*;
use crate::store::StoreConfig;
use serde_json::json;
use std::future::Future;
use std::time::Duration;

async fn bus_with(config: EventBusConfig) -> EventBus {
    let store = Store::open(StoreConfig::in_memory()).unwrap();
    EventBus::new(store, config).await.unwrap()
}

/// A hang guard, never the assertion.
async fn next_now(sub: &mut Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("a committed event is delivered")
        .unwrap()
}

/// An event whose data is a string of `pad` bytes (32..=255: one MessagePack length byte).
fn padded(pad: usize) -> NewEvent {
    NewEvent::new(EventType::Custom)
        .context("ctx")
        .agent("agent")
        .data(json!({ "pad": "x".repeat(pad) }))
}

fn live_bytes(new: &NewEvent) -> usize {
    Event {
        seq: 1,
        event_type: new.event_type,
        context_id: new.context_id.clone(),
        agent_id: new.agent_id.clone(),
        timestamp_ms: 0,
        priority: new.priority,
        data: new.data.clone(),
    }
    .live_bytes()
}

#[tokio::test]
async fn an_event_that_fits_a_live_slot_rides_it_and_one_byte_more_is_read_from_the_store() {
    const SLOTS: usize = 4;
    let fits = padded(100);
    let slot = live_bytes(&fits);
    assert_eq!(live_bytes(&padded(101)), slot + 1);
    let bus = bus_with(EventBusConfig {
        buffer: SLOTS,
        buffer_bytes: SLOTS * slot,
        ..EventBusConfig::default()
    })
    .await;
    let mut sub = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();

    // Just inside: exactly a slot's bytes, carried live.
    bus.publish(fits.clone()).await.unwrap();
    assert_eq!(next_now(&mut sub).await.data, fits.data);
    let m = bus.metrics();
    assert_eq!((m.announced_by_seq, m.catch_ups), (0, 0), "{m:?}");

    // Just past: announced by seq, read from the store, delivered all the same.
    let big = padded(101);
    bus.publish(big.clone()).await.unwrap();
    let got = next_now(&mut sub).await;
    assert_eq!((got.seq, &got.data), (2, &big.data));
    let m = bus.metrics();
    assert_eq!(m.announced_by_seq, 1, "{m:?}");
    assert!(m.catch_ups >= 1, "{m:?}");

    // And the live path carries the next small one again, in order.
    bus.publish(fits.clone()).await.unwrap();
    assert_eq!(next_now(&mut sub).await.seq, 3);
}

fn read(agent: &str, context: &str) -> NewEvent {
    NewEvent::new(EventType::Accessed)
        .agent(agent)
        .context(context)
        .data(json!({"version": 1}))
}

#[tokio::test]
async fn reads_are_recorded_once_per_agent_and_context_per_window() {
    const WINDOW: u64 = 1_000;
    const T0: u64 = 1_700_000_000_000;
    let bus = bus_with(EventBusConfig {
        access_window_ms: WINDOW,
        ..EventBusConfig::default()
    })
    .await;
    let mut recorded = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    let coalesced = ReadRecording::Coalesced;
    assert!(bus.record_access(read("a", "c"), T0, coalesced).await);
    // Just inside the window: coalesced, for that agent and context only.
    assert!(
        !bus.record_access(read("a", "c"), T0 + WINDOW - 1, coalesced)
            .await
    );
    assert!(
        bus.record_access(read("b", "c"), T0 + WINDOW - 1, coalesced)
            .await
    );
    assert!(
        bus.record_access(read("a", "d"), T0 + WINDOW - 1, coalesced)
            .await
    );
    // Every read, when asked (the monitored level), whatever the window.
    assert!(
        bus.record_access(read("a", "c"), T0 + 1, ReadRecording::Every)
            .await
    );
    // Just past the window: recorded again.
    assert!(
        bus.record_access(read("a", "c"), T0 + WINDOW, coalesced)
            .await
    );

    let m = bus.metrics();
    assert_eq!((m.reads_recorded, m.reads_coalesced), (5, 1), "{m:?}");
    let mut seen = Vec::new();
    for _ in 0..5 {
        let e = next_now(&mut recorded).await;
        seen.push((e.agent_id.unwrap(), e.context_id.unwrap()));
    }
    seen.sort();
    let expected = [("a", "c"), ("a", "c"), ("a", "c"), ("a", "d"), ("b", "c")];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, c)| (a.to_string(), c.to_string()))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_queue_makes_the_next_reader_wait_and_drops_nothing() {
    const QUEUE: usize = 3;
    let bus = bus_with(EventBusConfig {
        write_queue: QUEUE,
        ..EventBusConfig::default()
    })
    .await;
    let mut recorded = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    // Hold the store's writer so that nothing queued can be written.
    let (entered, inside) = std::sync::mpsc::channel::<()>();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let blocker = tokio::spawn({
        let store = bus.store().clone();
        async move {
            store
                .write(move |_| {
                    entered.send(()).unwrap();
                    gate.recv().ok();
                    Ok(())
                })
                .await
        }
    });
    tokio::task::spawn_blocking(move || inside.recv().unwrap())
        .await
        .unwrap();

    let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
    let every = ReadRecording::Every;
    // Just inside: QUEUE writes wait for the store, and their readers do not.
    for n in 0..QUEUE {
        let mut record = Box::pin(bus.record_access(read("a", &format!("c{n}")), 0, every));
        assert!(
            record.as_mut().poll(&mut noop).is_ready(),
            "read {n} of {QUEUE} waited"
        );
    }
    // Just past: the next reader waits for room.
    let mut waiting = Box::pin(bus.record_access(read("a", "last"), 0, every));
    assert!(waiting.as_mut().poll(&mut noop).is_pending());
    assert!(waiting.as_mut().poll(&mut noop).is_pending());

    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    assert!(waiting.await, "recorded once there is room");
    let mut contexts = Vec::new();
    for _ in 0..=QUEUE {
        contexts.push(next_now(&mut recorded).await.context_id.unwrap());
    }
    contexts.sort();
    assert_eq!(contexts, ["c0", "c1", "c2", "last"]);
}
