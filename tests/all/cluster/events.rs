//! Shared events through JetStream, in this process: hosts are stores with their event bus
//! and forwarder; subscribers read the cluster's stream.

use super::{Nats, TestHost};
use qi_host::cluster::{Cluster, ClusterConfig, ClusterError, ClusterSubscription, StartAt};
use qi_host::events::{EventType, NewEvent};
use qi_host::store::crypto::MasterKey;
use qi_host::{Store, StoreConfig};
use serde_json::json;

#[tokio::test]
async fn a_subscriber_on_one_host_sees_every_update_of_two_others_gap_free_and_in_order() {
    let Some(nats) = Nats::start() else { return };
    let a = TestHost::open(&nats, "host-a", StoreConfig::in_memory()).await;
    let b = TestHost::open(&nats, "host-b", StoreConfig::in_memory()).await;
    let c = TestHost::open(&nats, "host-c", StoreConfig::in_memory()).await;
    let mut all = ClusterSubscription::open(&a.cluster, None, StartAt::All)
        .await
        .unwrap();
    let mut shared = ClusterSubscription::open(&a.cluster, Some("shared.ctx"), StartAt::All)
        .await
        .unwrap();
    // B and C write concurrently, 50 each, to the same context and one of their own.
    let writes = |h: &'static str, host: &TestHost| {
        let bus = host.bus.clone();
        async move {
            for i in 0..50 {
                bus.publish(
                    NewEvent::new(EventType::Updated)
                        .context("shared.ctx")
                        .data(json!({"from": h, "i": i})),
                )
                .await
                .unwrap();
                bus.publish(
                    NewEvent::new(EventType::Updated)
                        .context(format!("own-{h}"))
                        .data(json!({"i": i})),
                )
                .await
                .unwrap();
            }
        }
    };
    tokio::join!(writes("b", &b), writes("c", &c));
    b.flushed().await;
    c.flushed().await;
    // Every event of B and C, once each: stream sequences dense from 1, each host's local seqs
    // in increasing order.
    let mut next = [0u64; 2];
    let mut shared_seen = Vec::new();
    for n in 1..=200u64 {
        let e = all.next().await.unwrap();
        assert_eq!(e.stream_seq, n, "the unfiltered stream has no gap");
        let h = match e.host.as_str() {
            "host-b" => 0,
            "host-c" => 1,
            other => panic!("an event of {other}"),
        };
        assert_eq!(
            e.event.seq,
            next[h] + 1,
            "{}'s events in its own order",
            e.host
        );
        next[h] = e.event.seq;
        if e.event.context_id.as_deref() == Some("shared.ctx") {
            shared_seen.push((e.stream_seq, e.event.data.clone()));
        }
    }
    assert_eq!(next, [100, 100]);
    // The per-context subscription sees exactly the shared context's 100 updates, in the
    // same (stream) order, and nothing of the hosts' own contexts.
    for (seq, data) in &shared_seen {
        let e = shared.next().await.unwrap();
        assert_eq!((&e.stream_seq, &e.event.data), (seq, data));
        assert_eq!(e.event.context_id.as_deref(), Some("shared.ctx"));
    }
    assert_eq!(shared_seen.len(), 100);
    // Resuming after the 150th event starts with the 151st.
    let mut resumed = ClusterSubscription::open(&a.cluster, None, StartAt::AfterStreamSeq(150))
        .await
        .unwrap();
    assert_eq!(resumed.next().await.unwrap().stream_seq, 151);
    drop(a.forwarder);
}

#[tokio::test]
async fn events_committed_while_nats_is_down_reach_the_stream_after_it_restarts() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::open(&nats, "host-r", StoreConfig::at(dir.path())).await;
    for i in 0..5 {
        host.update("ctx", json!({"before": i})).await;
    }
    host.flushed().await;
    nats.kill();
    // Committed locally while the server is gone: the writes do not wait for NATS.
    for i in 0..5 {
        host.update("ctx", json!({"during": i})).await;
    }
    assert_eq!(host.forwarder.status().borrow().forwarded, 5);
    nats.restart();
    host.flushed().await;
    let mut sub = ClusterSubscription::open(&host.cluster, Some("ctx"), StartAt::All)
        .await
        .unwrap();
    for seq in 1..=10 {
        let e = sub.next().await.unwrap();
        assert_eq!((e.stream_seq, e.event.seq), (seq, seq));
    }
    let info = host
        .cluster
        .jetstream()
        .get_stream("QI_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .clone();
    assert_eq!(info.messages, 10, "each event once, none lost");
}

#[tokio::test]
async fn a_restarted_host_forwards_from_its_cursor_and_resends_are_dropped() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    {
        let host = TestHost::open(&nats, "host-c1", StoreConfig::at(dir.path())).await;
        for i in 0..3 {
            host.update("ctx", json!({"i": i})).await;
        }
        host.flushed().await;
        host.forwarder.stop().await;
    }
    // The cursor says 3; pretend the host died before writing it for the last one.
    {
        let store = Store::open(StoreConfig::at(dir.path())).unwrap();
        store
            .write(|ctx| {
                ctx.tx().execute(
                    "UPDATE meta SET value = '2' WHERE key = 'cluster.events.forwarded'",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();
    }
    let host = TestHost::open(&nats, "host-c1", StoreConfig::at(dir.path())).await;
    for i in 3..5 {
        host.update("ctx", json!({"i": i})).await;
    }
    host.flushed().await;
    let mut sub = ClusterSubscription::open(&host.cluster, None, StartAt::All)
        .await
        .unwrap();
    for i in 0..5 {
        let e = sub.next().await.unwrap();
        assert_eq!(
            e.event.data,
            json!({"i": i}),
            "event {} once, in order",
            i + 1
        );
    }
    let stream = host.cluster.jetstream().get_stream("QI_EVENTS").await;
    assert_eq!(
        stream.unwrap().info().await.unwrap().state.messages,
        5,
        "the resent third event was dropped by its message id"
    );
}

#[tokio::test]
async fn with_a_master_key_nats_never_sees_plaintext_and_other_keys_cannot_read() {
    let Some(nats) = Nats::start() else { return };
    let key = MasterKey::generate();
    let config = StoreConfig {
        master_key: Some(key.clone()),
        ..StoreConfig::in_memory()
    };
    let host = TestHost::open(&nats, "host-k", config).await;
    host.update("secret-ctx", json!({"canary": "zebra-canary-4711"}))
        .await;
    host.flushed().await;
    // The raw message on the stream.
    let raw = host
        .cluster
        .jetstream()
        .get_stream("QI_EVENTS")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert!(
        !crate::common::contains_bytes(&raw.payload, b"zebra-canary"),
        "the payload is sealed"
    );
    // The same key reads it.
    let mut sub = ClusterSubscription::open(&host.cluster, None, StartAt::All)
        .await
        .unwrap();
    assert_eq!(
        sub.next().await.unwrap().event.data["canary"],
        "zebra-canary-4711"
    );
    // Neither is the context's id: its subject token is a keyed hash.
    assert!(
        !raw.subject.contains("secret"),
        "the subject is {}",
        raw.subject
    );
    // A reader with another key, or none, cannot read it: it is skipped and counted, and
    // the reader goes on to what it can read (an event of a host with its own key).
    for (i, other) in [Some(MasterKey::generate()), None].into_iter().enumerate() {
        let config = StoreConfig {
            master_key: other.clone(),
            ..StoreConfig::in_memory()
        };
        let writer = TestHost::open(&nats, &format!("other-{i}"), config).await;
        writer.update("mine", json!({"reader": i})).await;
        writer.flushed().await;
        let cluster = Cluster::connect(ClusterConfig::new(nats.url(), "reader"), other.as_ref())
            .await
            .unwrap();
        let mut sub = ClusterSubscription::open(&cluster, None, StartAt::All)
            .await
            .unwrap();
        assert_eq!(sub.next().await.unwrap().event.data, json!({"reader": i}));
        // The first key's event, and (for the second reader) the first reader's writer's.
        assert_eq!(sub.skipped(), 1 + i as u64);
    }
}

#[tokio::test]
async fn resuming_after_events_the_stream_dropped_fails_and_just_inside_works() {
    let Some(nats) = Nats::start() else { return };
    // The stream exists already, holding at most 5 messages: qi-host leaves it as it is.
    let client = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "QI_EVENTS".into(),
            subjects: vec!["qi.events.>".into()],
            max_messages: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let host = TestHost::open(&nats, "host-s", StoreConfig::in_memory()).await;
    for i in 0..10 {
        host.update("ctx", json!({"i": i})).await;
    }
    host.flushed().await;
    // Stream sequences 6..=10 are held: resuming after 5 works, after 4 would skip 5.
    let mut sub = ClusterSubscription::open(&host.cluster, None, StartAt::AfterStreamSeq(5))
        .await
        .unwrap();
    assert_eq!(sub.next().await.unwrap().stream_seq, 6);
    let err = ClusterSubscription::open(&host.cluster, None, StartAt::AfterStreamSeq(4))
        .await
        .err()
        .expect("a gap is refused");
    assert!(
        matches!(
            err,
            ClusterError::Compacted {
                requested: 5,
                oldest: 6
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn connecting_names_what_is_wrong() {
    let Some(plain) = Nats::start_with(false) else {
        return;
    };
    let err = Cluster::connect(ClusterConfig::new(plain.url(), "h"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::NoJetStream { .. }), "{err}");
    assert!(err.to_string().contains("-js"), "{err}");
    let port = plain.port;
    drop(plain);
    let err = Cluster::connect(
        ClusterConfig::new(format!("nats://127.0.0.1:{port}"), "h"),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClusterError::Connect { .. }), "{err}");
    let err = Cluster::connect(ClusterConfig::new("nats://127.0.0.1:1", "a.b"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::InvalidConfig {
                field: "host_name",
                ..
            }
        ),
        "{err}"
    );
}
