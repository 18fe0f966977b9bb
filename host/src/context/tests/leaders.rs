//! Context writes committed by their callers (leader-based commits) beside queued writes.

use super::visibility::{Gate, queue};
use super::*;
use crate::events::{EventFilter, NewEvent};
use crate::store::WriterStats;

/// Sixteen agents write their own contexts (their writes lead whenever the writer is idle)
/// while four tasks publish events through the writer thread and every write is followed by
/// a read (whose `accessed` event is queued too): the event seqs stay dense and in commit
/// order, and each writer reads its own write as soon as it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaders_and_queued_writes_keep_event_seqs_dense_and_reads_fresh() {
    let dir = tempfile::tempdir().unwrap();
    mixed_writers(StoreConfig::at(dir.path())).await;
}

/// The same on one thread (every leader holds the only worker) and in memory.
#[tokio::test]
async fn on_a_current_thread_runtime_leaders_and_queued_writes_do_not_wait_on_each_other() {
    mixed_writers(StoreConfig::in_memory()).await;
    let dir = tempfile::tempdir().unwrap();
    mixed_writers(StoreConfig::at(dir.path())).await;
}

async fn mixed_writers(config: StoreConfig) {
    let f = fixture_at(config).await;
    let names = writers(16);
    for n in &names {
        f.svc
            .register_agent(n, AgentCapabilities::default())
            .await
            .unwrap();
        ctx(
            &f.svc,
            n,
            &format!("c-{n}"),
            SyncStrategy::Strong,
            json!({"n": 0}),
        )
        .await;
    }
    let bus = f.svc.bus().clone();
    let mut sub = bus
        .subscribe(EventFilter::all(), SubscribeFrom::AfterSeq(bus.last_seq()))
        .unwrap();
    let mut tasks = Vec::new();
    for n in names.clone() {
        let svc = f.svc.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("c-{n}");
            let mut version = 1;
            for i in 0..40 {
                let w = svc
                    .write(&n, &id, Change::Merge(json!({"n": i})), Some(version))
                    .await
                    .unwrap();
                assert_eq!(w.version, version + 1);
                version = w.version;
                let seen = svc.get(&n, &id).await.unwrap();
                assert_eq!(seen.version, version, "{n} read a stale version");
            }
        }));
    }
    for p in 0..4 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                bus.publish(NewEvent::new(EventType::Accessed).data(json!({"p": p, "i": i})))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = bus.last_seq();
    let mut prev: Option<u64> = None;
    let mut updated = 0;
    loop {
        let e = sub
            .next_timeout(Duration::from_secs(60))
            .await
            .unwrap()
            .expect("an event within a minute");
        if let Some(p) = prev {
            assert_eq!(e.seq, p + 1, "seqs delivered out of order or with a gap");
        }
        if e.event_type == EventType::Updated {
            updated += 1;
        }
        prev = Some(e.seq);
        if e.seq >= last {
            break;
        }
    }
    assert_eq!(updated, 16 * 40);
    f.svc.store().integrity_check().await.unwrap();
}

fn stats(f: &Fixture) -> WriterStats {
    f.svc.store().writer_stats().expect("a writable store")
}

#[tokio::test]
async fn a_lone_context_write_is_led_and_one_behind_a_busy_writer_is_batched() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture_at(StoreConfig::at(dir.path())).await;
    agents(&f.svc, &["a"]).await;
    ctx(&f.svc, "a", "x", SyncStrategy::Strong, json!({"n": 0})).await;
    let mut events = f
        .svc
        .bus()
        .subscribe(EventFilter::all(), SubscribeFrom::Now)
        .unwrap();

    f.svc.store().wait_writer_idle();
    let before = stats(&f);
    let led = f
        .svc
        .write("a", "x", Change::Put(json!({"n": 1})), Some(1))
        .await
        .unwrap();
    let after = stats(&f);
    assert_eq!(after.led, before.led + 1, "{before:?} → {after:?}");
    assert_eq!(after.batched, before.batched, "{before:?} → {after:?}");

    let gate = Gate::hold(f.svc.store()).await;
    let batched = queue(f.svc.write("a", "x", Change::Put(json!({"n": 2})), Some(2)));
    gate.open().await.unwrap();
    let batched = batched.await.unwrap();
    let last = stats(&f);
    assert_eq!(last.led, after.led, "{after:?} → {last:?}");
    assert_eq!(last.batched, after.batched + 2, "the gate and the write");

    // Both committed, readable and announced in order, whoever committed them.
    assert_eq!((led.version, batched.version), (2, 3));
    let view = f.svc.get("a", "x").await.unwrap();
    assert_eq!((view.version, view.doc), (3, json!({"n": 2})));
    for version in [2, 3] {
        let event = events.next().await.unwrap();
        assert_eq!(event.event_type, EventType::Updated);
        assert_eq!(event.data["version"], version);
    }
    drop(f);
    let f = fixture_at(StoreConfig::at(dir.path())).await;
    let view = f.svc.get("a", "x").await.unwrap();
    assert_eq!((view.version, view.doc), (3, json!({"n": 2})));
}

/// A write whose document could go to the blob tier (sealed or not) would write and fsync a
/// blob file: it never leads, so no caller's thread waits for that fsync. One byte less, it
/// leads.
#[tokio::test]
async fn a_write_that_may_store_a_blob_is_batched_and_one_byte_less_leads() {
    const THRESHOLD: usize = 1024;
    let dir = tempfile::tempdir().unwrap();
    let f = fixture_at(StoreConfig {
        blob_threshold: THRESHOLD,
        ..StoreConfig::at(dir.path())
    })
    .await;
    agents(&f.svc, &["a"]).await;
    ctx(&f.svc, "a", "x", SyncStrategy::Strong, json!({"s": ""})).await;
    // The longest string whose document, stored and sealed, stays within the threshold.
    let doc = |len: usize| json!({"s": "y".repeat(len)});
    let stored = |len: usize| {
        crate::store::encode_value(&doc(len)).len() + crate::store::crypto::SEALED_OVERHEAD
    };
    let inline = (0..THRESHOLD)
        .rev()
        .find(|&len| stored(len) <= THRESHOLD)
        .unwrap();
    assert_eq!(stored(inline + 1), THRESHOLD + 1);
    for (version, len, leads) in [
        (1, inline, true),
        (2, inline + 1, false),
        (3, 2 * THRESHOLD, false),
    ] {
        f.svc.store().wait_writer_idle();
        let before = stats(&f);
        f.svc
            .write("a", "x", Change::Put(doc(len)), Some(version))
            .await
            .unwrap();
        let after = stats(&f);
        assert_eq!(
            after.led > before.led,
            leads,
            "{len} bytes: {before:?} → {after:?}"
        );
        assert_eq!(
            after.batched > before.batched,
            !leads,
            "{len} bytes: {before:?} → {after:?}"
        );
    }
    let blobs = f.svc.store().blobs().list().unwrap().0;
    assert_eq!(
        blobs.len(),
        1,
        "the last document went to the blob tier: {blobs:?}"
    );
    let view = f.svc.get("a", "x").await.unwrap();
    assert_eq!(view.doc["s"].as_str().map(str::len), Some(2 * THRESHOLD));
}
