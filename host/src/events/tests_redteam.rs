//! Red-team attacks on the per-subscription delivery count and the stored-waker wake-up.

use super::*;
use crate::store::StoreConfig;
use std::sync::Barrier;
use std::sync::atomic::AtomicBool;

async fn bus() -> EventBus {
    let store = Store::open(StoreConfig::in_memory()).unwrap();
    EventBus::new(store, EventBusConfig::default())
        .await
        .unwrap()
}

/// A subscription's deliveries move into the bus's count when it ends; a reader of
/// `metrics()` racing that move must never see them missing (nor twice).
#[tokio::test]
async fn delivered_count_never_dips_while_subscriptions_end() {
    let bus = bus().await;
    const ROUNDS: u64 = 3000;
    let subs: Vec<Subscription> = (0..ROUNDS)
        .map(|_| {
            bus.subscribe(EventFilter::all(), SubscribeFrom::Now)
                .unwrap()
        })
        .collect();
    // One delivery each, as counted by the subscription itself.
    for shared in bus.inner.subscribers.lock().unwrap().values() {
        shared.delivered.store(1, Ordering::Relaxed);
    }
    assert_eq!(bus.metrics().delivered, ROUNDS);
    let start = Barrier::new(2);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let ids: Vec<SubscriptionId> = subs.iter().map(|s| s.id()).collect();
        s.spawn(|| {
            start.wait();
            // Half end by unsubscribe (then drop), half by drop alone.
            for (i, (sub, id)) in subs.into_iter().zip(ids).enumerate() {
                if i % 2 == 0 {
                    bus.unsubscribe(id);
                }
                drop(sub);
            }
            done.store(true, Ordering::Release);
        });
        start.wait();
        loop {
            let finished = done.load(Ordering::Acquire);
            let delivered = bus.metrics().delivered;
            assert_eq!(delivered, ROUNDS, "a delivery missing or counted twice");
            if finished {
                break;
            }
        }
    });
}

/// `unsubscribe` from another thread, racing a `next` that is parking (or moving between
/// worker threads), always ends it: the stored waker is never missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsubscribe_racing_a_parking_next_always_ends_it() {
    let bus = bus().await;
    for _ in 0..500 {
        let mut sub = bus
            .subscribe(EventFilter::all(), SubscribeFrom::Now)
            .unwrap();
        let id = sub.id();
        let ready = Arc::new(tokio::sync::Barrier::new(2));
        let waiter = {
            let ready = ready.clone();
            tokio::spawn(async move {
                ready.wait().await;
                // Yield so the task may resume on another worker with another waker.
                tokio::task::yield_now().await;
                sub.next_shared().await
            })
        };
        ready.wait().await;
        assert!(bus.unsubscribe(id));
        let result = waiter.await.unwrap();
        assert!(
            matches!(result, Err(EventError::Unsubscribed)),
            "{result:?}"
        );
    }
}

/// A refused event given back is delivered again by either `next` or `next_shared`, the count
/// stays one, and an unsubscribe after the refusal leaves the bus total exact once dropped.
#[tokio::test]
async fn put_back_then_next_and_unsubscribe_count_once() {
    let bus = bus().await;
    let mut sub = bus
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();
    let published = bus
        .publish(NewEvent::new(EventType::Updated).context("ctx-1"))
        .await
        .unwrap();
    let shared = sub.next_shared().await.unwrap();
    sub.put_back(shared);
    assert_eq!(sub.last_seq(), published.seq - 1);
    assert_eq!(bus.metrics().delivered, 0);
    let owned = sub.next().await.unwrap();
    assert_eq!(owned, published);
    assert_eq!(bus.metrics().delivered, 1);
    // Refused after the subscription was ended elsewhere (the guest path's order reversed).
    assert!(bus.unsubscribe(sub.id()));
    assert_eq!(bus.metrics().delivered, 1);
    sub.put_back(owned);
    drop(sub);
    assert_eq!(
        bus.metrics().delivered,
        0,
        "the given-back delivery is not counted"
    );
}

/// `last_seq` under concurrent publishes: never goes back, never ahead of a committed seq,
/// and ends at the newest one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn last_seq_under_concurrent_publishes() {
    let bus = Arc::new(bus().await);
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for _ in 0..25 {
                    let e = bus
                        .publish(NewEvent::new(EventType::Updated).context("ctx-1"))
                        .await
                        .unwrap();
                    assert!(bus.last_seq() >= e.seq, "announced before publish returns");
                    seqs.push(e.seq);
                }
                seqs
            })
        })
        .collect();
    let mut seen = 0;
    let mut max = 0;
    for p in publishers {
        let after = bus.last_seq();
        assert!(after >= seen, "last_seq went back");
        seen = after;
        max = max.max(p.await.unwrap().into_iter().max().unwrap());
    }
    assert_eq!(bus.last_seq(), max);
    assert_eq!(bus.last_seq(), bus.metrics().last_seq);
    assert_eq!(max, 100);
}
