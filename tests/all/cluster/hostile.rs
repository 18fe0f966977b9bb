//! Peers on the NATS server that are not well-behaved qi-hosts, foreign stream settings, and
//! a server that lost its storage: each test aims at what would break without the defence.

use super::{Nats, TestHost};
use qi_host::cluster::{
    Cluster, ClusterConfig, ClusterError, ClusterSubscription, EventForwarder, HostLoad,
    Membership, StartAt, membership,
};
use qi_host::store::crypto::MasterKey;
use qi_host::{Store, StoreConfig};
use serde_json::json;
use std::sync::Arc;

async fn raw_js(nats: &Nats) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

async fn publish(js: &async_nats::jetstream::Context, subject: &str, payload: Vec<u8>) {
    js.publish(subject.to_string(), payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn garbage_and_replayed_sealed_messages_are_skipped_not_fatal_or_doubled() {
    let Some(nats) = Nats::start() else { return };
    let key = MasterKey::generate();
    let config = StoreConfig {
        master_key: Some(key),
        ..StoreConfig::in_memory()
    };
    let host = TestHost::open(&nats, "h", config).await;
    host.update("x", json!({"i": 1})).await;
    host.flushed().await;
    let js = raw_js(&nats).await;
    // Garbage, then two replays of the sealed first event (a peer can copy what it sees).
    publish(&js, "qi.events.ctx.x", b"garbage".to_vec()).await;
    let first = js
        .get_stream("QI_EVENTS")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    for _ in 0..2 {
        publish(&js, first.subject.as_str(), first.payload.to_vec()).await;
    }
    host.update("x", json!({"i": 2})).await;
    host.flushed().await;
    let mut sub = ClusterSubscription::open(&host.cluster, None, StartAt::All)
        .await
        .unwrap();
    assert_eq!(sub.next().await.unwrap().event.data, json!({"i": 1}));
    let second = sub.next().await.unwrap();
    assert_eq!(second.event.data, json!({"i": 2}));
    assert_eq!(second.stream_seq, 5);
    assert_eq!((sub.skipped(), sub.replays()), (1, 2));
    // Resuming after the last one read goes on from there.
    assert_eq!(sub.last_stream_seq(), 5);
}

#[tokio::test]
async fn message_ids_taken_by_a_forger_do_not_swallow_a_hosts_events() {
    let Some(nats) = Nats::start() else { return };
    // Three events committed before the host joins; a forger that learned their message ids
    // (instance, seq and digest) publishes under them first.
    let store = Store::open(StoreConfig::in_memory()).unwrap();
    let instance = store.host_id().to_string();
    let bus = qi_host::EventBus::new(store, qi_host::EventBusConfig::default())
        .await
        .unwrap();
    for i in 0..3 {
        bus.publish(
            qi_host::events::NewEvent::new(qi_host::events::EventType::Updated)
                .context("c")
                .data(json!({"i": i})),
        )
        .await
        .unwrap();
    }
    let cluster = Cluster::connect(ClusterConfig::new(nats.url(), "victim"), None)
        .await
        .unwrap();
    let js = raw_js(&nats).await;
    let events = bus
        .history(&qi_host::events::EventFilter::all(), None, 10)
        .await
        .unwrap();
    for event in events {
        let wire = qi_host::cluster::ClusterEvent {
            stream_seq: 0,
            host: "victim".into(),
            instance: instance.clone(),
            event,
        };
        let seq = wire.event.seq;
        let json = qi_host::cluster::events::encode(wire, usize::MAX);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            qi_host::cluster::forward::message_id(&instance, seq, &json).as_str(),
        );
        js.publish_with_headers("qi.events.ctx.c", headers, "forged".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let forwarder = EventForwarder::start(&cluster, &bus).await.unwrap();
    forwarder.wait_forwarded(3).await;
    assert_eq!(forwarder.status().borrow().forged, 3);
    let mut sub = ClusterSubscription::open(&cluster, Some("c"), StartAt::All)
        .await
        .unwrap();
    for i in 0..3 {
        assert_eq!(sub.next().await.unwrap().event.data, json!({"i": i}));
    }
    assert_eq!(sub.skipped(), 3, "the forgeries");
}

#[tokio::test]
async fn a_stream_that_takes_small_messages_gets_the_event_without_its_data_and_the_rest_flows() {
    let Some(nats) = Nats::start() else { return };
    raw_js(&nats)
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: "QI_EVENTS".into(),
            subjects: vec!["qi.events.>".into()],
            max_message_size: 1024,
            ..Default::default()
        })
        .await
        .unwrap();
    let host = TestHost::open(&nats, "h", StoreConfig::in_memory()).await;
    host.update("c", json!({"pad": "y".repeat(4000)})).await;
    host.update("c", json!({"small": 1})).await;
    host.flushed().await;
    let mut sub = ClusterSubscription::open(&host.cluster, None, StartAt::All)
        .await
        .unwrap();
    let big = sub.next().await.unwrap();
    assert_eq!(big.event.data["dataOmitted"], true, "{:?}", big.event.data);
    assert_eq!(sub.next().await.unwrap().event.data, json!({"small": 1}));
}

#[tokio::test]
async fn a_server_restarted_without_its_storage_gets_its_stream_back_and_the_next_events() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let host = TestHost::open(&nats, "h", StoreConfig::in_memory()).await;
    host.update("c", json!({"i": 0})).await;
    host.flushed().await;
    nats.kill();
    for entry in std::fs::read_dir(nats.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_file(&path);
    }
    nats.restart();
    host.update("c", json!({"i": 1})).await;
    host.flushed().await;
    let mut sub = ClusterSubscription::open(&host.cluster, None, StartAt::All)
        .await
        .unwrap();
    assert_eq!(sub.next().await.unwrap().event.data, json!({"i": 1}));
}

#[tokio::test]
async fn a_live_name_is_one_hosts_and_forged_or_stale_entries_are_not_listed() {
    let Some(nats) = Nats::start() else { return };
    let url = nats.url();
    let load: membership::LoadSource = Arc::new(HostLoad::default);
    let a = Cluster::connect(ClusterConfig::new(&url, "alive"), None)
        .await
        .unwrap();
    let _first = Membership::join(&a, "instance-1", load.clone(), None)
        .await
        .unwrap();
    // Another instance under the same name is refused; the same instance (a restart) is not.
    let err = Membership::join(&a, "instance-2", load.clone(), None)
        .await
        .err()
        .expect("the name is taken");
    assert!(matches!(err, ClusterError::NameTaken { .. }), "{err}");
    assert!(err.to_string().contains("--cluster-name"), "{err}");
    Membership::join(&a, "instance-1", load.clone(), None)
        .await
        .unwrap();
    // Forged entries: not for their key, unprintable, stale, a key that is no host name.
    let js = raw_js(&nats).await;
    let entry = |host: &str, version: &str, seen_ms: u64| {
        json!({"host": host, "instance": "x", "pid": 1, "version": version, "startedMs": 0,
               "seenMs": seen_ms, "load": {"runningAgents": 0, "runningRuns": 0},
               "eventsForwarded": 0})
        .to_string()
        .into_bytes()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    publish(&js, "$KV.qi_hosts.impostor", entry("alive", "1", now)).await;
    publish(&js, "$KV.qi_hosts.esc", entry("esc", "\u{1b}[2J", now)).await;
    publish(&js, "$KV.qi_hosts.ghost", entry("ghost", "1", 0)).await;
    publish(&js, "$KV.qi_hosts.bad~key", entry("bad~key", "1", now)).await;
    publish(&js, "$KV.qi_hosts.fine", entry("fine", "1", now)).await;
    let listed = membership::hosts(&a).await.unwrap();
    assert_eq!(
        listed.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(),
        ["alive", "fine"]
    );
    let out = crate::common::qi_host_output(&["status", "--nats", &url]);
    assert!(out.status.success());
    assert!(
        !out.stdout.contains(&0x1b),
        "no terminal escapes reach the table"
    );
}

#[tokio::test]
async fn resume_positions_are_bounded_and_a_drop_under_a_reader_is_reported() {
    let Some(nats) = Nats::start() else { return };
    raw_js(&nats)
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: "QI_EVENTS".into(),
            subjects: vec!["qi.events.>".into()],
            max_messages: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let host = TestHost::open(&nats, "h", StoreConfig::in_memory()).await;
    let err = ClusterSubscription::open(&host.cluster, None, StartAt::AfterStreamSeq(u64::MAX))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ClusterError::InvalidConfig { .. }), "{err}");
    host.update("c", json!({"i": 0})).await;
    host.flushed().await;
    // A reader of context `c` (a filtered consumer is sent only `c`'s messages, so none of
    // the later ones reach it early).
    let mut sub = ClusterSubscription::open(&host.cluster, Some("c"), StartAt::All)
        .await
        .unwrap();
    assert_eq!(sub.next().await.unwrap().stream_seq, 1);
    // Five events of another context: the stream keeps the newest 3 (4..=6), so it dropped
    // 2 and 3 after the reader's position; then one of `c` (7, and 4 is dropped too).
    for i in 1..=5 {
        host.update("d", json!({"i": i})).await;
    }
    host.update("c", json!({"i": 6})).await;
    host.flushed().await;
    let err = sub.next().await.expect_err("the drop is reported");
    assert!(
        matches!(
            err,
            ClusterError::Compacted {
                requested: 2,
                oldest: 5
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_full_stream_holds_forwarding_back_and_skips_nothing() {
    let Some(nats) = Nats::start() else { return };
    let js = raw_js(&nats).await;
    let mut config = async_nats::jetstream::stream::Config {
        name: "QI_EVENTS".into(),
        subjects: vec!["qi.events.>".into()],
        max_messages: 2,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.create_stream(config.clone()).await.unwrap();
    let host = TestHost::open(&nats, "h", StoreConfig::in_memory()).await;
    for i in 0..3 {
        host.update("c", json!({"i": i})).await;
    }
    // The third is refused by the full stream: forwarding waits on it, saying why.
    let mut status = host.forwarder.status();
    let stuck = status
        .wait_for(|s| s.forwarded == 2 && s.last_error.is_some())
        .await
        .unwrap()
        .clone();
    assert_eq!(stuck.refused, 0, "{stuck:?}");
    // Room again: it goes on, and every event is there.
    config.max_messages = 10;
    js.update_stream(config).await.unwrap();
    host.flushed().await;
    assert_eq!(host.forwarder.status().borrow().refused, 0);
    let mut sub = ClusterSubscription::open(&host.cluster, None, StartAt::All)
        .await
        .unwrap();
    for i in 0..3 {
        assert_eq!(sub.next().await.unwrap().event.data, json!({"i": i}));
    }
}

/// Copies directory `from` into `to` (files and subdirectories).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_data_directory_restored_from_a_backup_forwards_its_new_events() {
    let Some(nats) = Nats::start() else { return };
    let live = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let session = |dir: std::path::PathBuf, label: &'static str| {
        let nats = &nats;
        async move {
            let host = TestHost::open(nats, "h", StoreConfig::at(&dir)).await;
            for i in 0..3 {
                host.update("c", json!({label: i})).await;
            }
            host.flushed().await;
            host.forwarder.stop().await;
        }
    };
    session(live.path().to_path_buf(), "before").await;
    copy_dir(live.path(), backup.path());
    session(live.path().to_path_buf(), "lost-with-disk").await;
    // The backup commits seqs 4..=6 again, with other events: same instance, same seqs.
    session(backup.path().to_path_buf(), "after-restore").await;
    let reader = Cluster::connect(ClusterConfig::new(nats.url(), "reader"), None)
        .await
        .unwrap();
    let mut sub = ClusterSubscription::open(&reader, None, StartAt::All)
        .await
        .unwrap();
    let mut labels = Vec::new();
    for _ in 0..9 {
        let e = sub.next().await.unwrap();
        let (label, _) = e.event.data.as_object().unwrap().iter().next().unwrap();
        labels.push(label.clone());
    }
    assert_eq!(
        labels.iter().filter(|l| *l == "after-restore").count(),
        3,
        "{labels:?}"
    );
    assert_eq!(sub.replays(), 0);
}

#[tokio::test]
async fn a_host_whose_name_was_taken_while_its_entry_expired_stops_heartbeating() {
    let Some(nats) = Nats::start() else { return };
    let mut config = ClusterConfig::new(nats.url(), "n");
    config.heartbeat = std::time::Duration::from_millis(100);
    // Long enough that no entry expires while the test runs on a loaded machine: the purge
    // below stands for the expiry.
    config.host_ttl = std::time::Duration::from_secs(120);
    let a = Cluster::connect(config.clone(), None).await.unwrap();
    let load: membership::LoadSource = Arc::new(HostLoad::default);
    let first = Membership::join(&a, "instance-a", load.clone(), None)
        .await
        .unwrap();
    // Its entry disappears (as when it expires during a partition), and B claims the name.
    a.jetstream()
        .get_key_value("qi_hosts")
        .await
        .unwrap()
        .purge("n")
        .await
        .unwrap();
    let b = Cluster::connect(config, None).await.unwrap();
    let _second = Membership::join(&b, "instance-b", load, None)
        .await
        .unwrap();
    // A's next heartbeat finds B's entry: A leaves the list instead of fighting over it.
    let mut listed = first.listed();
    listed.wait_for(|l| !l).await.unwrap();
    let hosts = membership::hosts(&b).await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].instance, "instance-b");
    // A stopping cleanly leaves B's entry alone.
    first.leave().await.unwrap();
    let hosts = membership::hosts(&b).await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].instance, "instance-b");
}
