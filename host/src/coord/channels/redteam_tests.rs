//! Red-team attacks on the hub: hostile consumers (foreign and stale acks), lease races,
//! byte accounting, cancellation (an agent terminated inside a host call), resume from the
//! store, and documents/events a hostile agent plants under the run's channel ids.
//!
//! Tests marked `Was failing` or `Fixed` failed on the code as first committed and are fixed.

use super::*;
use crate::context::{AgentCapabilities, ContextConfig, NewContext};
use crate::coord::manifest::CommunicationProtocol::{Direct, EventDriven, MessageQueue};
use crate::events::{EventBus, EventBusConfig, EventType, NewEvent};
use crate::store::{Store, StoreConfig};
use serde_json::json;
use std::future::Future;

use super::tests::{NOW, def, hub, who};

async fn context_with(bus_config: EventBusConfig) -> ContextService {
    let store = Store::open(StoreConfig::in_memory()).unwrap();
    let bus = EventBus::new(store.clone(), bus_config).await.unwrap();
    ContextService::open(
        store,
        bus,
        Arc::new(crate::context::SystemClock),
        ContextConfig::default(),
    )
    .await
    .unwrap()
}

async fn context() -> ContextService {
    context_with(EventBusConfig::default()).await
}

fn durable_hub(defs: &[ChannelDef], ctx: &ContextService, run: &str) -> Arc<ChannelHub> {
    ChannelHub::new(
        defs,
        EventDriven,
        1 << 20,
        Some((ctx.clone(), run.to_string())),
    )
}

// ---- hostile consumers --------------------------------------------------------------------

/// Held: a consumer cannot ack another consumer's lease, an id never sent, or an id twice;
/// the bytes come back exactly once.
#[tokio::test(start_paused = true)]
async fn rt_foreign_unknown_and_double_acks_are_refused_and_bytes_stay_exact() {
    let h = hub(vec![def("q", MessageQueue, &["p"], &["a", "b"])]);
    h.send(&who("p", 1), "q", None, "aaaa").await.unwrap();
    h.send(&who("p", 1), "q", None, "bb").await.unwrap();
    assert_eq!(h.held_bytes(), 6);
    let ma = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    let mb = h.receive(&who("b", 1), "q", NOW).await.unwrap().unwrap();
    // b acks a's message; a acks an id never sent (and u64::MAX).
    for (c, id) in [("b", ma.id), ("a", 999), ("a", u64::MAX), ("a", 0)] {
        let err = h.ack(&who(c, 1), "q", id).await.unwrap_err();
        assert!(
            matches!(err, ChannelFailure::Invalid(_)),
            "{c} {id}: {err:?}"
        );
    }
    // A producer that is not a consumer cannot ack either.
    let err = h.ack(&who("p", 1), "q", ma.id).await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Invalid(_)), "{err:?}");
    assert_eq!(h.held_bytes(), 6);
    h.ack(&who("a", 1), "q", ma.id).await.unwrap();
    let err = h.ack(&who("a", 1), "q", ma.id).await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Invalid(_)), "{err:?}");
    assert_eq!(h.held_bytes(), 2);
    h.ack(&who("b", 1), "q", mb.id).await.unwrap();
    assert_eq!(h.held_bytes(), 0);
    let r = &h.report()["q"];
    assert_eq!((r.acked, r.left), (2, 0));
}

/// Held: a lease that expired and was taken by another consumer cannot be acked by the first
/// holder; the second holder's ack releases the bytes once.
#[tokio::test(start_paused = true)]
async fn rt_expired_lease_retaken_then_late_ack_by_first_holder_is_refused() {
    let h = hub(vec![def("q", MessageQueue, &["p"], &["a", "b"])]);
    h.send(&who("p", 1), "q", None, "xyz").await.unwrap();
    let first = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    // b waits (long timeout): it gets the message when a's lease falls due.
    let again = h
        .receive(&who("b", 1), "q", Duration::from_secs(3600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.id, again.delivery_count), (first.id, 2));
    let err = h.ack(&who("a", 1), "q", first.id).await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Invalid(_)), "{err:?}");
    assert_eq!(h.held_bytes(), 3);
    h.ack(&who("b", 1), "q", again.id).await.unwrap();
    assert_eq!(h.held_bytes(), 0);
    // An ended attempt of a, releasing nothing, changes nothing.
    h.attempt_ended("a", 1);
    assert_eq!(h.held_bytes(), 0);
    assert_eq!(h.report()["q"].left, 0);
}

/// Held: a stale attempt cannot ack what the same consumer's later attempt holds, and the
/// later attempt's end puts it back (at-least-once), with the delivery count rising.
#[tokio::test(start_paused = true)]
async fn rt_stale_attempt_cannot_ack_the_next_attempts_lease() {
    let h = hub(vec![def("q", MessageQueue, &["p"], &["a"])]);
    h.send(&who("p", 1), "q", None, "m").await.unwrap();
    let m1 = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    h.attempt_ended("a", 1);
    let m2 = h.receive(&who("a", 2), "q", NOW).await.unwrap().unwrap();
    assert_eq!((m2.id, m2.delivery_count), (m1.id, 2));
    let err = h.ack(&who("a", 1), "q", m2.id).await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Invalid(_)), "{err:?}");
    // Ending attempt 1 again (a late notice) must not take attempt 2's lease away.
    h.attempt_ended("a", 1);
    h.ack(&who("a", 2), "q", m2.id).await.unwrap();
    assert_eq!(h.held_bytes(), 0);
}

/// Held: a queue counts leased messages against maxDepth; just inside and just past.
#[tokio::test(start_paused = true)]
async fn rt_queue_depth_counts_leases_pair() {
    let h = hub(vec![def("q", MessageQueue, &["p"], &["a"])]);
    let p = who("p", 1);
    for b in ["1", "2", "3"] {
        h.send(&p, "q", None, b).await.unwrap();
    }
    let m = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    let err = h.send(&p, "q", None, "4").await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Full(_)), "{err:?}");
    h.ack(&who("a", 1), "q", m.id).await.unwrap();
    h.send(&p, "q", None, "4").await.unwrap();
    assert_eq!(h.held_bytes(), 3);
}

/// Held: the run-wide byte cap counts every channel; a direct receive and a dead letter give
/// bytes back; a topic keeps them (documented).
#[tokio::test(start_paused = true)]
async fn rt_byte_cap_across_channel_types() {
    let mut q = def("q", MessageQueue, &["p"], &["a"]);
    q.max_deliveries = Some(1);
    let d = def("d", Direct, &["p"], &["a"]);
    let t = def("t", EventDriven, &["p"], &["a"]);
    let h = ChannelHub::new(&[q, d, t], EventDriven, 30, None);
    let p = who("p", 1);
    h.send(&p, "q", None, &"q".repeat(10)).await.unwrap();
    h.send(&p, "d", Some("a"), &"d".repeat(10)).await.unwrap();
    h.send(&p, "t", None, &"t".repeat(10)).await.unwrap();
    assert_eq!(h.held_bytes(), 30);
    let err = h.send(&p, "t", None, "x").await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Full(_)), "{err:?}");
    // Direct: received, bytes back.
    h.receive(&who("a", 1), "d", NOW).await.unwrap().unwrap();
    assert_eq!(h.held_bytes(), 20);
    // Queue: delivered once (maxDeliveries 1), attempt ends, dead-lettered on the next take.
    h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    h.attempt_ended("a", 1);
    assert!(h.receive(&who("a", 2), "q", NOW).await.unwrap().is_none());
    assert_eq!(h.report()["q"].dead_lettered.len(), 1);
    assert_eq!(h.held_bytes(), 10);
    // The topic still holds its 10.
    h.receive(&who("a", 2), "t", NOW).await.unwrap().unwrap();
    assert_eq!(h.held_bytes(), 10);
}

/// Held: with two producers a queue closes only after both are over.
#[tokio::test(start_paused = true)]
async fn rt_closes_only_after_the_last_producer() {
    let h = hub(vec![def("q", MessageQueue, &["p1", "p2"], &["a"])]);
    h.participant_over("p1");
    assert!(h.receive(&who("a", 1), "q", NOW).await.unwrap().is_none());
    h.send(&who("p2", 1), "q", None, "late").await.unwrap();
    h.participant_over("p2");
    let m = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    // Leased by the caller itself: not closed yet (its own lease may come back).
    assert!(h.receive(&who("a", 1), "q", NOW).await.unwrap().is_none());
    h.ack(&who("a", 1), "q", m.id).await.unwrap();
    let err = h.receive(&who("a", 1), "q", NOW).await.unwrap_err();
    assert!(matches!(err, ChannelFailure::Closed(_)), "{err:?}");
}

// ---- cancellation: an agent terminated inside a host call ---------------------------------

/// Polls `fut` once and drops it (an agent terminated inside a host call); whether it was
/// still pending then.
async fn poll_once_then_drop<F: std::future::Future>(fut: F) -> bool {
    tokio::pin!(fut);
    tokio::select! {
        biased;
        _ = &mut fut => false,
        () = std::future::ready(()) => true,
    }
}

/// Fixed (was failing). A producer terminated (time limit, stall, fail-fast) while its `send` waits for
/// the store drops the send future after the depth was reserved and the bytes counted, and
/// before `settle_send`. The reservation is never given back: `closed_for` sees
/// `reserved` non-empty forever, so once every producer is over the channel never closes and
/// every consumer loop that reads "until closed" waits until its own time limit; the bytes
/// stay counted against `maxChannelBytes` for the rest of the run.
/// Expected: a dropped send gives back its reservation and bytes (or completes them), so the
/// channel closes (or delivers the message if it was stored).
#[tokio::test]
async fn rt_send_cancelled_inside_the_store_does_not_wedge_the_channel() {
    let ctx = context().await;
    let mut d = def("q", MessageQueue, &["p"], &["a"]);
    d.max_depth = 1_000;
    let h = durable_hub(&[d], &ctx, "r-cancel");
    let p = who("p", 1);
    let mut cancelled = false;
    for _ in 0..200 {
        if poll_once_then_drop(h.send(&p, "q", None, "doomed")).await {
            cancelled = true;
            break;
        }
    }
    assert!(cancelled, "the store always answered on the first poll");
    h.participant_over("p");
    // Either a message was stored (then it is delivered) or it was not (then the channel is
    // closed). "Nothing now, wait" means a consumer waits forever.
    // The writer finishes the send whether or not the sender still waits: a receive that
    // waits sees the message stored or the channel closed (the wait ends at the change).
    loop {
        match h.receive(&who("a", 1), "q", Duration::from_secs(60)).await {
            Ok(Some(m)) => h.ack(&who("a", 1), "q", m.id).await.unwrap(),
            Err(ChannelFailure::Closed(_)) => break,
            other => panic!(
                "the queue neither delivers nor closes after a cancelled send: {other:?} \
                 (held bytes {})",
                h.held_bytes()
            ),
        }
    }
    assert_eq!(h.held_bytes(), 0, "the cancelled send's bytes stay counted");
}

/// Fixed (was failing): a consumer terminated inside `receive` on a `direct` channel after the
/// message left the mailbox, while the hub recorded it, lost the message. Now nothing is
/// awaited between taking a message and returning it (the writer records the delivery), so a
/// receive that finds a message returns it on its first poll: there is no moment at which a
/// cancellation can drop a taken message.
#[tokio::test]
async fn rt_direct_receive_cancelled_while_recording_loses_the_message() {
    let ctx = context().await;
    let mut d = def("d", Direct, &["p"], &["a"]);
    d.max_depth = 1_000;
    let h = durable_hub(&[d], &ctx, "r-recv");
    let a1 = who("a", 1);
    for _ in 0..50 {
        h.send(&who("p", 1), "d", Some("a"), "precious")
            .await
            .unwrap();
        let fut = h.receive(&a1, "d", NOW);
        tokio::pin!(fut);
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
        match first {
            std::task::Poll::Ready(Ok(Some(m))) => assert_eq!(&*m.body, "precious"),
            other => {
                panic!("a receive with a message waiting did not return it at once: {other:?}")
            }
        }
    }
}

// ---- resume -------------------------------------------------------------------------------

/// Held: a new process of the same run gets back held queue messages with their delivery
/// counts, not acked or received ones, the bytes they hold, and ids continue.
#[tokio::test]
async fn rt_resume_restores_held_messages_counts_bytes_and_ids() {
    let ctx = context().await;
    let defs = [
        def("q", MessageQueue, &["p"], &["a"]),
        def("d", Direct, &["p"], &["a"]),
        def("t", EventDriven, &["p"], &["a"]),
    ];
    {
        let h = durable_hub(&defs, &ctx, "r1");
        let p = who("p", 1);
        for b in ["q1", "q22", "q333"] {
            h.send(&p, "q", None, b).await.unwrap();
        }
        let m1 = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
        h.ack(&who("a", 1), "q", m1.id).await.unwrap();
        // q22 leased at the crash.
        h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
        h.send(&p, "d", Some("a"), "d1").await.unwrap();
        h.send(&p, "d", Some("a"), "d22").await.unwrap();
        h.receive(&who("a", 1), "d", NOW).await.unwrap().unwrap();
        h.send(&p, "t", None, "t1").await.unwrap();
        h.send(&p, "t", None, "t22").await.unwrap();
        // crash: the hub is dropped.
    }
    let h = durable_hub(&defs, &ctx, "r1");
    h.load().await.unwrap();
    // q22 + q333 + d22 + t1 + t22
    assert_eq!(h.held_bytes(), 3 + 4 + 3 + 2 + 3);
    let m = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    assert_eq!((&*m.body, m.delivery_count), ("q22", 2));
    let m = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    assert_eq!((&*m.body, m.delivery_count), ("q333", 1));
    let m = h.receive(&who("a", 1), "d", NOW).await.unwrap().unwrap();
    assert_eq!(&*m.body, "d22");
    assert!(h.receive(&who("a", 1), "d", NOW).await.unwrap().is_none());
    for b in ["t1", "t22"] {
        let m = h.receive(&who("a", 1), "t", NOW).await.unwrap().unwrap();
        assert_eq!(&*m.body, b);
    }
    // Ids continue after the highest used, per channel.
    assert_eq!(h.send(&who("p", 1), "q", None, "n").await.unwrap(), 4);
    assert_eq!(h.send(&who("p", 1), "d", Some("a"), "n").await.unwrap(), 3);
    assert_eq!(h.send(&who("p", 1), "t", None, "n").await.unwrap(), 3);
}

/// Held: one run's channel messages are not loaded into another run, nor a channel's into a
/// channel whose id starts the same.
#[tokio::test]
async fn rt_resume_does_not_mix_runs_or_prefixed_channel_ids() {
    let ctx = context().await;
    let defs = [
        def("q", MessageQueue, &["p"], &["a"]),
        def("q-2", MessageQueue, &["p"], &["a"]),
    ];
    {
        let h = durable_hub(&defs, &ctx, "r1");
        h.send(&who("p", 1), "q-2", None, "other").await.unwrap();
        let h = durable_hub(&defs, &ctx, "r1-x");
        h.send(&who("p", 1), "q", None, "foreign").await.unwrap();
    }
    let h = durable_hub(&defs, &ctx, "r1");
    h.load().await.unwrap();
    assert!(h.receive(&who("a", 1), "q", NOW).await.unwrap().is_none());
    let m = h.receive(&who("a", 1), "q-2", NOW).await.unwrap().unwrap();
    assert_eq!(&*m.body, "other");
}

/// Was failing (fixed). A topic's messages are read back on resume with
/// `history(filter, Some(0), maxDepth)`, which refuses with `HistoryCompacted` as soon as the
/// bus has dropped *any* old event (retention), whatever context it was about. On a host
/// whose bus has wrapped its retention once, every resume of a run with an `event-driven`
/// channel fails to start, although all of the run's topic events are still kept.
/// Expected: the run's topic messages, all still stored, are loaded and the resume starts.
#[tokio::test]
async fn rt_resume_with_a_topic_survives_unrelated_bus_retention() {
    let ctx = context_with(EventBusConfig {
        retention: 20,
        ..EventBusConfig::default()
    })
    .await;
    // Unrelated traffic fills the bus past its retention.
    for i in 0..40 {
        ctx.bus()
            .publish(
                NewEvent::new(EventType::Custom)
                    .context("elsewhere")
                    .data(json!({"i": i})),
            )
            .await
            .unwrap();
    }
    let defs = [def("t", EventDriven, &["p"], &["a"])];
    {
        let h = durable_hub(&defs, &ctx, "r-ret");
        h.send(&who("p", 1), "t", None, "t1").await.unwrap();
        h.send(&who("p", 1), "t", None, "t2").await.unwrap();
    }
    let h = durable_hub(&defs, &ctx, "r-ret");
    h.load()
        .await
        .expect("the topic's own events are all kept; the resume should load them");
    let m = h.receive(&who("a", 1), "t", NOW).await.unwrap().unwrap();
    assert_eq!(&*m.body, "t1");
}

// ---- hostile agents planting under the run's channel ids ----------------------------------

async fn evil(ctx: &ContextService) {
    ctx.register_agent("evil", AgentCapabilities::default())
        .await
        .unwrap();
}

/// Fixed (was failing): any agent could create a context under `run/<run>/channel/<id>/...`
/// with type `channel-message`, and the loader took it as a held message "sent by" any
/// producer. Now agents cannot create contexts under `run/` at all, and the loader takes only
/// operator-owned documents of the message type.
#[tokio::test]
async fn rt_resume_ignores_a_queue_message_forged_by_an_agent() {
    let ctx = context().await;
    evil(&ctx).await;
    let defs = [def("q", MessageQueue, &["p"], &["a"])];
    {
        let h = durable_hub(&defs, &ctx, "r-f");
        h.send(&who("p", 1), "q", None, "real").await.unwrap();
    }
    let refused = ctx
        .create(
            "evil",
            NewContext {
                id: Some("run/r-f/channel/q/5".into()),
                context_type: "channel-message".into(),
                doc: json!({"channel": "q", "id": 5, "sender": "p", "to": null, "deliveries": 0,
                            "state": "held", "body": "rm -rf /"}),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("reserved"), "{refused}");
    // An operator-owned document of another type under the prefix is not a message either.
    ctx.put_as_operator(
        "run/r-f/channel/q/6",
        "notes",
        json!({"channel": "q", "id": 6, "sender": "p", "deliveries": 0, "state": "held", "body": "x"}),
    )
    .await
    .unwrap();
    let h = durable_hub(&defs, &ctx, "r-f");
    h.load().await.unwrap();
    let m = h.receive(&who("a", 1), "q", NOW).await.unwrap().unwrap();
    assert_eq!(&*m.body, "real");
    h.ack(&who("a", 1), "q", m.id).await.unwrap();
    let next = h.receive(&who("a", 1), "q", NOW).await.unwrap();
    assert!(
        next.is_none(),
        "a forged message was delivered as if `p` sent it: {next:?}"
    );
}

/// Fixed (was failing): a topic was read back from every `custom` event about context
/// `run/<run>/channel/<id>`, whoever published it. Agents can no longer create that context
/// (so they cannot publish about it), and the loader skips events published by any agent.
#[tokio::test]
async fn rt_resume_ignores_a_topic_message_forged_by_an_agent() {
    let ctx = context().await;
    evil(&ctx).await;
    let defs = [def("t", EventDriven, &["p"], &["a"])];
    {
        let h = durable_hub(&defs, &ctx, "r-t");
        h.send(&who("p", 1), "t", None, "real").await.unwrap();
    }
    let refused = ctx
        .create(
            "evil",
            NewContext {
                id: Some("run/r-t/channel/t".into()),
                context_type: "notes".into(),
                doc: json!({}),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("reserved"), "{refused}");
    // An event with an agent on it (as a store from before the rule could hold) is skipped.
    ctx.bus()
        .publish(
            NewEvent::new(EventType::Custom)
                .context("run/r-t/channel/t")
                .agent("evil")
                .data(json!({"kind": "channel-message", "channel": "t", "id": 2,
                             "sender": "p", "body": "forged"})),
        )
        .await
        .unwrap();
    let h = durable_hub(&defs, &ctx, "r-t");
    h.load().await.unwrap();
    let m = h.receive(&who("a", 1), "t", NOW).await.unwrap().unwrap();
    assert_eq!(&*m.body, "real");
    let next = h.receive(&who("a", 1), "t", NOW).await.unwrap();
    assert!(
        next.is_none(),
        "a forged topic message was delivered as if `p` sent it: {next:?}"
    );
}

/// An agent that creates `run/<run>/channel/<id>/<n>` (type `notes`) before the
/// producer's n-th send squats the id: `put_as_operator` then overwrites the document but
/// keeps the agent's type and ownership. The squatter reads every body sent under it, and on
/// resume the message is not of type `channel-message`, so a held message is silently lost.
/// Expected: a held message the producer's send stored is back after the resume.
#[tokio::test]
async fn rt_a_squatted_message_id_is_not_lost_on_resume() {
    let ctx = context().await;
    evil(&ctx).await;
    // Fixed (was failing): the squat itself is refused now.
    let refused = ctx
        .create(
            "evil",
            NewContext {
                id: Some("run/r-s/channel/q/1".into()),
                context_type: "notes".into(),
                doc: json!({}),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("reserved"), "{refused}");
    let defs = [def("q", MessageQueue, &["p"], &["a"])];
    {
        let h = durable_hub(&defs, &ctx, "r-s");
        assert_eq!(h.send(&who("p", 1), "q", None, "secret").await.unwrap(), 1);
    }
    let h = durable_hub(&defs, &ctx, "r-s");
    h.load().await.unwrap();
    let m = h.receive(&who("a", 1), "q", NOW).await.unwrap();
    assert!(
        m.as_ref().is_some_and(|m| &*m.body == "secret"),
        "the held message is lost after the resume: {m:?}"
    );
}
