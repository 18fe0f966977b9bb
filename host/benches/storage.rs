//! Storage benchmarks, each a comparison measured within one run:
//!
//! 1. `commit`: durable commits per second through [`Store::write`] (group commit) with 1, 8
//!    and 64 concurrent writers, each write one context-sized `versions` row, against a bare
//!    rusqlite loop writing the same rows on one connection with the same durability (WAL,
//!    `synchronous=NORMAL`, one transaction per row), and against the same loop batching
//!    1,024 rows per transaction (the floor any per-write overhead is measured from). Then the
//!    same for `Durability::PowerLoss` (`synchronous=FULL`, an fsync per commit).
//! 2. `fanout`: time from calling `EventBus::publish` (a durable commit, `Durability::Process`)
//!    until 1,000 host-side subscribers have received the event, p50/p99 over 200 publishes.
//!
//! `cargo bench -p qi-host --bench storage [-- commit|fanout ...] [WRITERS ...]` (default: all
//! sections, 1, 8 and 64 writers). Prints figures only; nothing here asserts on timing.

#![allow(missing_docs)]

use qi_host::events::{EventBus, EventBusConfig, EventFilter, EventType, NewEvent, SubscribeFrom};
use qi_host::store::{Durability, Store, StoreConfig, encode_value};
use rusqlite::Connection;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long each throughput case runs.
const RUN: Duration = Duration::from_secs(2);
const BATCH: usize = 1024;
const INSERT: &str = "INSERT INTO versions(context_id, version, revision, agent_id, hlc, op, doc, doc_blob, created_at) \
                      VALUES (?1, ?2, ?3, ?4, ?5, 'put', ?6, NULL, ?7)";

/// A small context document, MessagePack-encoded as the context layer stores it.
fn doc(writer: usize, version: u64) -> Vec<u8> {
    encode_value(&json!({
        "title": "quarterly plan",
        "owner": format!("agent-{writer}"),
        "status": "in-progress",
        "step": version,
        "tags": ["planning", "q3", "draft"],
        "assignees": {"research": "agent-2", "writing": "agent-5"},
        "progress": 0.42,
    }))
}

fn hlc(revision: u64) -> String {
    format!("{:016x}-0000-host", 1_700_000_000_000u64 + revision)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let sections: Vec<&String> = args
        .iter()
        .filter(|a| a.parse::<usize>().is_err())
        .collect();
    let want = |name: &str| sections.is_empty() || sections.iter().any(|a| *a == name);
    // Numbers restrict the writer counts (`-- commit 64`), for profiling one case.
    let mut writer_counts: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if writer_counts.is_empty() {
        writer_counts = vec![1, 8, 64];
    }
    println!(
        "RUST_BACKTRACE={}",
        std::env::var("RUST_BACKTRACE").unwrap_or_else(|_| "<unset>".into())
    );
    println!(
        "machine: {} CPUs available",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // On the target directory's file system (not a tmpfs /tmp), like a real data directory.
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if want("commit") {
        commit(&runtime, root.path(), &writer_counts);
    }
    if want("fanout") {
        runtime.block_on(fanout(&root.path().join("fanout")));
    }
}

fn commit(runtime: &tokio::runtime::Runtime, root: &Path, writer_counts: &[usize]) {
    println!(
        "\n== commit: durable context versions/s, {} s per case, data dir on {} ==",
        RUN.as_secs(),
        root.display()
    );
    for durability in [Durability::Process, Durability::PowerLoss] {
        let synchronous = durability.synchronous();
        println!(
            "-- durability {durability:?} (synchronous={synchronous}, wal_autocheckpoint={}) --",
            durability.wal_autocheckpoint()
        );
        for &writers in writer_counts {
            // The bare loops write the same rows: `writers` contexts, round-robin.
            let case = format!("{synchronous}-{writers}");
            let per_row = bare(
                &root.join(format!("bare-row-{case}")),
                durability,
                1,
                writers,
            );
            let batched = bare(
                &root.join(format!("bare-batch-{case}")),
                durability,
                BATCH,
                writers,
            );
            let rate = runtime.block_on(store_rate(
                &root.join(format!("store-{case}")),
                durability,
                writers,
            ));
            println!(
                "{writers:>2} writers: Store::write {rate:>7.0}/s | bare 1 row/tx {per_row:>7.0}/s \
                 ({:.2}x) | bare {BATCH} rows/tx {batched:>7.0}/s ({:.2}x)",
                rate / per_row,
                rate / batched
            );
        }
    }
}

/// The bare loop: one connection with the store's pragmas for `durability` (WAL,
/// `synchronous`, `wal_autocheckpoint`), `batch` rows per transaction, rows for `contexts`
/// contexts in turn (as that many concurrent writers produce them).
fn bare(dir: &Path, durability: Durability, batch: usize, contexts: usize) -> f64 {
    // The same schema the store uses.
    drop(Store::open(StoreConfig::at(dir)).unwrap());
    let conn = Connection::open(dir.join("qi.db")).unwrap();
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "synchronous", durability.synchronous())
        .unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", durability.wal_autocheckpoint())
        .unwrap();
    let contexts: Vec<(String, String)> = (0..contexts)
        .map(|c| (format!("ctx-{c}"), format!("agent-{c}")))
        .collect();
    let mut stmt = conn.prepare(INSERT).unwrap();
    let started = Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < RUN {
        if batch > 1 {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        }
        for _ in 0..batch {
            let writer = rows as usize % contexts.len();
            let version = rows / contexts.len() as u64 + 1;
            rows += 1;
            let (context, agent) = &contexts[writer];
            stmt.execute(rusqlite::params![
                context,
                version as i64,
                rows as i64,
                agent,
                hlc(rows),
                doc(writer, version),
                1_700_000_000_000i64,
            ])
            .unwrap();
        }
        if batch > 1 {
            conn.execute_batch("COMMIT").unwrap();
        }
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

async fn store_rate(dir: &Path, durability: Durability, writers: usize) -> f64 {
    let store = Store::open(StoreConfig {
        durability,
        ..StoreConfig::at(dir)
    })
    .unwrap();
    let revision = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + RUN;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        let revision = revision.clone();
        tasks.push(tokio::spawn(async move {
            let context = format!("ctx-{writer}");
            let agent = format!("agent-{writer}");
            let mut version = 0u64;
            while Instant::now() < deadline {
                version += 1;
                let (context, agent, revision) = (context.clone(), agent.clone(), revision.clone());
                let doc = doc(writer, version);
                store
                    .write(move |ctx| {
                        let rev = revision.fetch_add(1, Ordering::Relaxed) + 1;
                        ctx.tx().prepare_cached(INSERT)?.execute(rusqlite::params![
                            context,
                            version as i64,
                            rev as i64,
                            agent,
                            hlc(rev),
                            doc,
                            1_700_000_000_000i64,
                        ])?;
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
            version
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let stored: i64 = store
        .read(|conn| Ok(conn.query_row("SELECT count(*) FROM versions", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(stored as u64, total, "every acknowledged version is stored");
    rate
}

async fn fanout(dir: &Path) {
    const SUBSCRIBERS: usize = 1000;
    const WARMUP: usize = 20;
    const PUBLISHES: usize = 200;
    println!(
        "\n== fanout: publish -> {SUBSCRIBERS} subscribers received it, {PUBLISHES} publishes =="
    );
    let store = Store::open(StoreConfig::at(dir)).unwrap();
    let bus = EventBus::new(store, EventBusConfig::default())
        .await
        .unwrap();
    let total = WARMUP + PUBLISHES;
    let received: Arc<Vec<AtomicUsize>> =
        Arc::new((0..=total).map(|_| AtomicUsize::new(0)).collect());
    let (all_in, mut all_in_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut sub = bus
            .subscribe(EventFilter::all(), SubscribeFrom::Now)
            .unwrap();
        let received = received.clone();
        let all_in = all_in.clone();
        subscribers.push(tokio::spawn(async move {
            for _ in 0..total {
                let event = sub.next().await.unwrap();
                let seq = event.seq as usize;
                if received[seq].fetch_add(1, Ordering::AcqRel) + 1 == SUBSCRIBERS {
                    let _ = all_in.send((event.seq, Instant::now()));
                }
            }
        }));
    }
    let mut fanout = Vec::with_capacity(PUBLISHES);
    let mut commit = Vec::with_capacity(PUBLISHES);
    for i in 0..total {
        let started = Instant::now();
        let event = bus
            .publish(
                NewEvent::new(EventType::Updated)
                    .context("ctx-1")
                    .data(json!({"i": i})),
            )
            .await
            .unwrap();
        let acked = started.elapsed();
        let (seq, at) = all_in_rx.recv().await.unwrap();
        assert_eq!(seq, event.seq);
        if i >= WARMUP {
            commit.push(acked);
            fanout.push(at.saturating_duration_since(started));
        }
    }
    for subscriber in subscribers {
        subscriber.await.unwrap();
    }
    let metrics = bus.metrics();
    println!(
        "publish -> all {SUBSCRIBERS} received: p50 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}",
        percentile(&mut fanout, 0.50),
        percentile(&mut fanout, 0.99),
        percentile(&mut fanout, 1.0)
    );
    println!(
        "publish acknowledged (commit):     p50 {:>8.1?}  p99 {:>8.1?}",
        percentile(&mut commit, 0.50),
        percentile(&mut commit, 0.99)
    );
    println!(
        "delivered {} events, {} store catch-ups (0 = all on the live path)",
        metrics.delivered, metrics.catch_ups
    );
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[index]
}
