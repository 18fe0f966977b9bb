//! The hub's rules, without a store, on tokio's paused clock.

use super::*;
use crate::coord::manifest::CommunicationProtocol::{Direct, EventDriven, MessageQueue};

pub(super) fn def(
    id: &str,
    kind: CommunicationProtocol,
    producers: &[&str],
    consumers: &[&str],
) -> ChannelDef {
    ChannelDef {
        id: id.into(),
        kind: Some(kind),
        producers: producers.iter().map(|s| s.to_string()).collect(),
        consumers: consumers.iter().map(|s| s.to_string()).collect(),
        max_message_bytes: 16,
        max_depth: 3,
        ack_timeout_ms: (kind == MessageQueue).then_some(1_000),
        max_deliveries: (kind == MessageQueue).then_some(2),
    }
}

pub(super) fn hub(defs: Vec<ChannelDef>) -> Arc<ChannelHub> {
    ChannelHub::new(&defs, EventDriven, 1 << 20, None)
}

pub(super) fn who(p: &str, attempt: u32) -> Caller {
    Caller {
        participant: p.into(),
        attempt,
    }
}

pub(super) const NOW: Duration = Duration::ZERO;

#[tokio::test(start_paused = true)]
async fn queue_redelivers_what_an_ended_attempt_held() {
    let h = hub(vec![def("q", MessageQueue, &["p"], &["a", "b"])]);
    for body in ["1", "2"] {
        h.send(&who("p", 1), "q", None, body).await.unwrap();
    }
    let m = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    assert_eq!((&*m.body, m.delivery_count), ("1", 1));
    h.attempt_ended("a", 1);
    // Back in its place: before message 2.
    let m = h.receive(&who("b", 1), "q", NOW).await.unwrap().unwrap();
    assert_eq!((&*m.body, m.delivery_count), ("1", 2));
    h.ack(&who("b", 1), "q", m.id).await.unwrap();
    // The ended attempt cannot ack it any more; nor can a later one.
    let err = h.ack(&who("a", 2), "q", m.id).await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Invalid(_)), "{err:?}");
    let r = &h.report()["q"];
    assert_eq!(
        (r.sent, r.delivered, r.redelivered, r.acked, r.left),
        (2, 2, 1, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn queue_lease_expires_after_ack_timeout_not_before() {
    let h = hub(vec![def("q", MessageQueue, &["p"], &["a"])]);
    h.send(&who("p", 1), "q", None, "x").await.unwrap();
    let first = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    // Just inside the ack timeout: nothing to receive.
    let got = h
        .receive(&who("a", 1), "q", Duration::from_millis(999))
        .await
        .unwrap();
    assert!(got.is_none());
    // Just past it: the same message again, second delivery; the old lease is gone.
    let again = h
        .receive(&who("a", 1), "q", Duration::from_millis(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.id, again.delivery_count), (first.id, 2));
    assert_eq!(h.report()["q"].expired, 1);
    h.ack(&who("a", 1), "q", again.id).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn queue_dead_letters_after_max_deliveries_then_closes() {
    let h = hub(vec![def("q", MessageQueue, &["p"], &["a"])]);
    h.send(&who("p", 1), "q", None, "poison").await.unwrap();
    h.participant_over("p");
    for attempt in 1..=2 {
        let m = h
            .receive(&who("a", attempt), "q", NOW)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.delivery_count, attempt);
        h.attempt_ended("a", attempt);
    }
    // maxDeliveries = 2: the third time it is dead-lettered, and nothing is left.
    let err = h.receive(&who("a", 3), "q", NOW).await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Closed(_)), "{err:?}");
    let r = &h.report()["q"];
    assert_eq!(r.dead_lettered.len(), 1);
    assert_eq!(r.dead_lettered[0].deliveries, 2);
    assert_eq!(h.held_bytes(), 0);
}

#[tokio::test(start_paused = true)]
async fn direct_mailbox_depth_pair_and_addressing() {
    let h = hub(vec![def("d", Direct, &["p"], &["a", "b"])]);
    let p = who("p", 1);
    for i in 0..3 {
        h.send(&p, "d", Some("a"), &i.to_string()).await.unwrap();
    }
    // maxDepth = 3 per mailbox: the fourth to `a` is refused, one to `b` is not.
    let err = h.send(&p, "d", Some("a"), "3").await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Full(_)), "{err:?}");
    h.send(&p, "d", Some("b"), "b0").await.unwrap();
    for bad in [None, Some("p"), Some("nobody")] {
        let err = h.send(&p, "d", bad, "x").await.unwrap_err();
        assert!(
            matches!(err, ChannelFailure::Invalid(_)),
            "{bad:?}: {err:?}"
        );
    }
    // In send order, each message once.
    for i in 0..3 {
        let m = h.receive(&who("a", 1), "d", NOW).await.unwrap().unwrap();
        assert_eq!((&*m.body, m.delivery_count), (&*i.to_string(), 1));
    }
    assert!(h.receive(&who("a", 1), "d", NOW).await.unwrap().is_none());
    // Done once received: an ack changes nothing.
    h.ack(&who("a", 1), "d", 1).await.unwrap();
    // A consumer that is over receives nothing more: sending to it is refused.
    h.participant_over("b");
    let err = h.send(&p, "d", Some("b"), "late").await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Closed(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn topic_gives_every_consumer_every_message_and_restarts_per_attempt() {
    let h = hub(vec![def("t", EventDriven, &["p"], &["a", "b"])]);
    for body in ["1", "2"] {
        h.send(&who("p", 1), "t", None, body).await.unwrap();
    }
    let err = h.send(&who("p", 1), "t", Some("a"), "x").await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Invalid(_)), "{err:?}");
    for c in ["a", "b"] {
        for body in ["1", "2"] {
            let m = h.receive(&who(c, 1), "t", NOW).await.unwrap().unwrap();
            assert_eq!((&*m.body, m.delivery_count), (body, 1));
        }
    }
    // `a` read one message in attempt 2, then attempt 3 starts over.
    h.attempt_ended("a", 1);
    let m = h.receive(&who("a", 2), "t", NOW).await.unwrap().unwrap();
    assert_eq!((&*m.body, m.delivery_count), ("1", 2));
    h.attempt_ended("a", 2);
    let m = h.receive(&who("a", 3), "t", NOW).await.unwrap().unwrap();
    assert_eq!((&*m.body, m.delivery_count), ("1", 3));
    let m = h.receive(&who("a", 3), "t", NOW).await.unwrap().unwrap();
    assert_eq!((&*m.body, m.delivery_count), ("2", 2));
    // maxDepth = 3 for the whole topic: one more fits, the next does not.
    h.send(&who("p", 1), "t", None, "3").await.unwrap();
    let err = h.send(&who("p", 1), "t", None, "4").await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Full(_)), "{err:?}");
    h.ack(&who("a", 3), "t", 1).await.unwrap();
    let err = h.ack(&who("p", 1), "t", 1).await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Invalid(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_receiver_wakes_on_a_send_and_on_closing() {
    let h = hub(vec![def("q", MessageQueue, &["p"], &["a"])]);
    let h2 = h.clone();
    let waiter = tokio::spawn(async move {
        h2.receive(&who("a", 1), "q", Duration::from_secs(3600))
            .await
    });
    tokio::task::yield_now().await;
    h.send(&who("p", 1), "q", None, "hi").await.unwrap();
    let m = waiter.await.unwrap().unwrap().unwrap();
    h.ack(&who("a", 1), "q", m.id).await.unwrap();
    let h2 = h.clone();
    let waiter = tokio::spawn(async move {
        h2.receive(&who("a", 1), "q", Duration::from_secs(3600))
            .await
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    h.participant_over("p");
    let err = waiter.await.unwrap().unwrap_err();
    assert!(matches!(err, ChannelFailure::Closed(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_queue_is_not_closed_while_another_consumer_holds_a_lease() {
    let h = hub(vec![def("q", MessageQueue, &["p"], &["a", "b"])]);
    h.send(&who("p", 1), "q", None, "x").await.unwrap();
    h.participant_over("p");
    let m = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    // `b` must wait: `a` may fail and the message come back.
    assert!(h.receive(&who("b", 1), "q", NOW).await.unwrap().is_none());
    h.attempt_ended("a", 1);
    let again = h.receive(&who("b", 1), "q", NOW).await.unwrap().unwrap();
    assert_eq!(again.id, m.id);
    h.ack(&who("b", 1), "q", again.id).await.unwrap();
    let err = h.receive(&who("b", 1), "q", NOW).await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Closed(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn message_size_pair_membership_and_unknown_channel() {
    let h = hub(vec![def("q", MessageQueue, &["p"], &["a"])]);
    let p = who("p", 1);
    h.send(&p, "q", None, &"x".repeat(16)).await.unwrap();
    let err = h.send(&p, "q", None, &"x".repeat(17)).await.unwrap_err();
    assert!(
        matches!(err, ChannelFailure::TooLarge(ref m) if m.contains("maxMessageBytes")),
        "{err:?}"
    );
    let err = h.send(&who("a", 1), "q", None, "x").await.unwrap_err();
    assert!(
        matches!(err, ChannelFailure::Invalid(ref m) if m.contains("producers")),
        "{err:?}"
    );
    let err = h.receive(&p, "q", NOW).await.unwrap_err();
    assert!(
        matches!(err, ChannelFailure::Invalid(ref m) if m.contains("consumers")),
        "{err:?}"
    );
    let err = h.send(&p, "nope", None, "x").await.unwrap_err();
    assert!(
        matches!(err, ChannelFailure::UnknownChannel(ref m) if m.contains("q")),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn run_byte_cap_pair() {
    let mut d = def("q", MessageQueue, &["p"], &["a"]);
    d.max_depth = 100;
    let h = ChannelHub::new(&[d], EventDriven, 32, None);
    let p = who("p", 1);
    h.send(&p, "q", None, &"x".repeat(16)).await.unwrap();
    h.send(&p, "q", None, &"x".repeat(16)).await.unwrap();
    assert_eq!(h.held_bytes(), 32);
    let err = h.send(&p, "q", None, "x").await.unwrap_err();
    assert!(
        matches!(err, ChannelFailure::Full(ref m) if m.contains("maxChannelBytes")),
        "{err:?}"
    );
    // An ack gives its bytes back.
    let m = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    h.ack(&who("a", 1), "q", m.id).await.unwrap();
    h.send(&p, "q", None, "x").await.unwrap();
    assert_eq!(h.held_bytes(), 17);
}
