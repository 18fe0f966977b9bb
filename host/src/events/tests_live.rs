//! The live path's sharing and bookkeeping: one shared copy of an event for every subscriber,
//! `unsubscribe` waking a parked task, delivery counts that survive the subscription.

use super::*;
use crate::store::StoreConfig;
use serde_json::json;
use std::time::Duration;

async fn bus() -> EventBus {
    let store = Store::open(StoreConfig::in_memory()).unwrap();
    EventBus::new(store, EventBusConfig::default())
        .await
        .unwrap()
}

fn event(n: u64) -> NewEvent {
    NewEvent::new(EventType::Updated)
        .context("ctx-1")
        .data(json!({ "n": n }))
}

/// A hang guard, never the assertion: the event is expected to be there already.
async fn next_shared_now(sub: &mut Subscription) -> Arc<Event> {
    tokio::time::timeout(Duration::from_secs(60), sub.next_shared())
        .await
        .expect("an event that was already committed is delivered")
        .unwrap()
}

#[tokio::test]
async fn live_subscribers_share_one_copy_of_an_event() {
    let bus = bus().await;
    let mut subs: Vec<Subscription> = (0..3)
        .map(|_| {
            bus.subscribe(EventFilter::all(), SubscribeFrom::Now)
                .unwrap()
        })
        .collect();
    let published = bus.publish(event(7)).await.unwrap();
    let mut received = Vec::new();
    for sub in &mut subs {
        received.push(next_shared_now(sub).await);
    }
    for event in &received {
        assert_eq!(**event, published, "the committed event, as published");
        assert!(
            Arc::ptr_eq(event, &received[0]),
            "every live subscriber holds the same allocation, not a copy of its own"
        );
    }
    // `next` still hands out an owned event, equal to the shared one.
    let second = bus.publish(event(8)).await.unwrap();
    let owned: Event = subs[0].next().await.unwrap();
    assert_eq!(owned, second);
    assert_eq!(*next_shared_now(&mut subs[1]).await, second);
}

#[tokio::test]
async fn events_read_from_the_store_come_through_next_shared_too() {
    let bus = bus().await;
    let first = bus.publish(event(1)).await.unwrap();
    let second = bus.publish(event(2)).await.unwrap();
    let mut resumed = bus
        .subscribe(EventFilter::all(), SubscribeFrom::AfterSeq(0))
        .unwrap();
    assert_eq!(*next_shared_now(&mut resumed).await, first);
    let given_back = next_shared_now(&mut resumed).await;
    assert_eq!(*given_back, second);
    // Given back as the shared `Arc`: delivered again, the resume point before it.
    resumed.put_back(given_back);
    assert_eq!(resumed.last_seq(), first.seq);
    assert_eq!(*next_shared_now(&mut resumed).await, second);
    assert_eq!(bus.metrics().catch_ups, 1);
}

#[tokio::test]
async fn unsubscribe_wakes_a_subscriber_parked_in_a_task() {
    let bus = bus().await;
    let mut sub = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    let id = sub.id();
    let waiting = tokio::spawn(async move { sub.next_shared().await });
    // The test runtime has one thread: yielding lets the task run until it parks, waiting
    // for an event that never comes.
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "nothing to read yet");
    assert!(bus.unsubscribe(id));
    let result = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("unsubscribe wakes the parked task")
        .unwrap();
    assert!(
        matches!(result, Err(EventError::Unsubscribed)),
        "{result:?}"
    );
}

#[tokio::test]
async fn deliveries_count_once_whether_a_subscription_is_dropped_or_unsubscribed() {
    let bus = bus().await;
    let mut dropped = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    let mut unsubscribed = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    for n in 0..4 {
        bus.publish(event(n)).await.unwrap();
    }
    for _ in 0..3 {
        next_shared_now(&mut dropped).await;
        next_shared_now(&mut unsubscribed).await;
    }
    assert_eq!(bus.metrics().delivered, 6);
    let refused = next_shared_now(&mut dropped).await;
    assert_eq!((refused.seq, bus.metrics().delivered), (4, 7));
    dropped.put_back(refused);
    assert_eq!(
        bus.metrics().delivered,
        6,
        "a refused delivery does not count"
    );
    drop(dropped);
    assert_eq!(
        bus.metrics().delivered,
        6,
        "a dropped subscription's count stays"
    );

    assert!(bus.unsubscribe(unsubscribed.id()));
    assert_eq!(
        bus.metrics().delivered,
        6,
        "counted once it is unsubscribed"
    );
    drop(unsubscribed);
    assert_eq!(
        bus.metrics().delivered,
        6,
        "and not again when it is dropped"
    );
    assert_eq!(bus.metrics().subscribers, 0);
}
