//! Storage benchmarks, each a comparison measured within one run:
//!
//! 1. `commit`: durable context versions per second through `ContextService::write` (the path
//!    agents use: access check, strategy, a version row, the context's current-state row and an
//!    `updated` event, committed by the group-commit writer) with 1, 8 and 64 concurrent
//!    writers, each writer putting a small document into its own context (strategy `strong`,
//!    then `eventual`), against a bare rusqlite loop doing the same durable work per commit on
//!    one connection with the store's pragmas (WAL, `synchronous=NORMAL`, the same
//!    `wal_autocheckpoint`): one transaction per write holding the version row, the
//!    current-state row (`INSERT OR REPLACE`) and the event row. Also the same bare work batched
//!    1,024 writes per transaction (the floor any per-commit overhead is measured from).
//! 2. `fanout`: time from calling `EventBus::publish` (a durable commit) until 1,000 host-side
//!    subscribers have received the event, p50/p99 over 200 publishes.
//! 3. `rss`: the process's resident memory (`VmRSS`) after writing 1,000,000 versions over
//!    10,000 contexts through `ContextService::write` (64 writers; `QI_BENCH_VERSIONS` and
//!    `QI_BENCH_CONTEXTS` shrink it for a quick run).
//!
//! `cargo bench -p qi-host --bench storage [-- commit|fanout|rss ...] [WRITERS ...]` (default:
//! all sections, 1, 8 and 64 writers). Prints figures only; nothing here asserts on timing.

#![allow(missing_docs)]

use qi_host::context::{
    AgentCapabilities, Change, ContextConfig, ContextService, NewContext, SyncStrategy, SystemClock,
};
use qi_host::events::{EventBus, EventBusConfig, EventFilter, EventType, NewEvent, SubscribeFrom};
use qi_host::store::{Durability, Store, StoreConfig, encode_value};
use rusqlite::Connection;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long each throughput case runs.
const RUN: Duration = Duration::from_secs(2);
const BATCH: usize = 1024;
const INSERT_VERSION: &str = "INSERT INTO versions(context_id, version, revision, agent_id, hlc, op, doc, doc_blob, created_at) \
                              VALUES (?1, ?2, ?3, ?4, ?5, 'put', ?6, NULL, ?7)";
const UPSERT_CONTEXT: &str = "INSERT OR REPLACE INTO contexts (id, owner, context_type, schema, strategy, resolution, status, version, revision, hlc, doc, doc_blob, field_stamps, conflict, history_limit, created_at, updated_at) \
                              VALUES (?1, ?2, 'plan', NULL, 'strong', 'last-writer-wins', 'active', ?3, ?4, ?5, ?6, NULL, ?7, NULL, NULL, ?8, ?8)";
const INSERT_EVENT: &str = "INSERT INTO events(seq, event_type, context_id, agent_id, ts, priority, data) \
                            VALUES (?1, 'updated', ?2, ?3, ?4, 0, ?5)";

/// A small context document.
fn document(writer: usize, version: u64) -> Value {
    json!({
        "title": "quarterly plan",
        "owner": format!("agent-{writer}"),
        "status": "in-progress",
        "step": version,
        "tags": ["planning", "q3", "draft"],
        "assignees": {"research": "agent-2", "writing": "agent-5"},
        "progress": 0.42,
    })
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
    // Numbers restrict the writer counts (`-- commit 1`), for profiling one case.
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
    if want("rss") {
        runtime.block_on(rss(&root.path().join("rss")));
    }
}

async fn service(dir: &Path) -> ContextService {
    service_with(dir, ContextConfig::default()).await
}

async fn service_with(dir: &Path, config: ContextConfig) -> ContextService {
    let store = Store::open(StoreConfig::at(dir)).unwrap();
    let bus = EventBus::new(store.clone(), EventBusConfig::default())
        .await
        .unwrap();
    ContextService::open(store, bus, Arc::new(SystemClock), config)
        .await
        .unwrap()
}

/// The hot tier's bound in the RSS case (the figure).
const RSS_HOT_TIER_BYTES: usize = 64 << 20;

fn commit(runtime: &tokio::runtime::Runtime, root: &Path, writer_counts: &[usize]) {
    let durability = Durability::Process;
    println!(
        "\n== commit: durable context versions/s, {} s per case, data dir on {} ==",
        RUN.as_secs(),
        root.display()
    );
    println!(
        "measured path: ContextService::write (Change::Put, base version given) | bare rusqlite: \
         version row + current-state row + event row per transaction (synchronous={}, \
         wal_autocheckpoint={})",
        durability.synchronous(),
        durability.wal_autocheckpoint()
    );
    for &writers in writer_counts {
        let per_write = bare(
            &root.join(format!("bare-{writers}")),
            durability,
            1,
            writers,
        );
        let batched = bare(
            &root.join(format!("bare-batch-{writers}")),
            durability,
            BATCH,
            writers,
        );
        let strong = runtime.block_on(service_rate(
            &root.join(format!("strong-{writers}")),
            SyncStrategy::Strong,
            writers,
        ));
        let eventual = runtime.block_on(service_rate(
            &root.join(format!("eventual-{writers}")),
            SyncStrategy::Eventual,
            writers,
        ));
        println!(
            "{writers:>2} writers: ContextService::write strong {strong:>7.0}/s ({:.2}x bare) \
             eventual {eventual:>7.0}/s ({:.2}x) | bare 1 write/tx {per_write:>7.0}/s | bare \
             {BATCH} writes/tx {batched:>7.0}/s (strong {:.2}x)",
            strong / per_write,
            eventual / per_write,
            strong / batched
        );
    }
}

/// The bare loop: one connection with the store's pragmas for `durability`, `batch` writes per
/// transaction, each write the rows `ContextService::write` commits for a put (a version, the
/// context's current state, an `updated` event), for `contexts` contexts in turn (as that many
/// concurrent writers produce them). Documents are MessagePack-encoded per write, as the
/// service does.
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
    conn.pragma_update(None, "foreign_keys", true).unwrap();
    let contexts: Vec<(String, String)> = (0..contexts)
        .map(|c| (format!("ctx-{c}"), format!("agent-{c}")))
        .collect();
    let mut version_stmt = conn.prepare(INSERT_VERSION).unwrap();
    let mut context_stmt = conn.prepare(UPSERT_CONTEXT).unwrap();
    let mut event_stmt = conn.prepare(INSERT_EVENT).unwrap();
    let stamps = encode_value(&json!({}));
    let started = Instant::now();
    let mut writes = 0u64;
    while started.elapsed() < RUN {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for _ in 0..batch {
            let writer = writes as usize % contexts.len();
            let version = writes / contexts.len() as u64 + 1;
            writes += 1;
            let (context, agent) = &contexts[writer];
            let doc = encode_value(&document(writer, version));
            let now = 1_700_000_000_000i64 + writes as i64;
            version_stmt
                .execute(rusqlite::params![
                    context,
                    version as i64,
                    writes as i64,
                    agent,
                    hlc(writes),
                    doc,
                    now,
                ])
                .unwrap();
            context_stmt
                .execute(rusqlite::params![
                    context,
                    agent,
                    version as i64,
                    writes as i64,
                    hlc(writes),
                    doc,
                    stamps,
                    now,
                ])
                .unwrap();
            let data = encode_value(
                &json!({"version": version, "revision": writes, "hlc": hlc(writes), "op": "put", "fields": [""]}),
            );
            event_stmt
                .execute(rusqlite::params![writes as i64, context, agent, now, data])
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    writes as f64 / started.elapsed().as_secs_f64()
}

/// `writers` tasks, each putting small documents into its own context through
/// `ContextService::write` until the run ends; checks every acknowledged version is stored.
async fn service_rate(dir: &Path, strategy: SyncStrategy, writers: usize) -> f64 {
    let svc = service(dir).await;
    for writer in 0..writers {
        let agent = format!("agent-{writer}");
        svc.register_agent(&agent, AgentCapabilities::default())
            .await
            .unwrap();
        svc.create(
            &agent,
            NewContext {
                id: Some(format!("ctx-{writer}")),
                context_type: "plan".into(),
                doc: document(writer, 0),
                strategy,
                ..NewContext::default()
            },
        )
        .await
        .unwrap();
    }
    let started = Instant::now();
    let deadline = started + RUN;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let (agent, context) = (format!("agent-{writer}"), format!("ctx-{writer}"));
            let (mut version, mut writes) = (1u64, 0u64);
            while Instant::now() < deadline {
                let doc = document(writer, version + 1);
                let r = svc
                    .write(&agent, &context, Change::Put(doc), Some(version))
                    .await
                    .unwrap();
                version = r.version;
                writes += 1;
            }
            writes
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let stored: i64 = svc
        .store()
        .read(|conn| Ok(conn.query_row("SELECT count(*) FROM versions", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(
        stored as u64,
        total + writers as u64,
        "every acknowledged version (and each context's first) is stored"
    );
    rate
}

/// `VmRSS` of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

async fn rss(dir: &Path) {
    const WRITERS: u64 = 64;
    let versions = env_count("QI_BENCH_VERSIONS", 1_000_000);
    let contexts = env_count("QI_BENCH_CONTEXTS", 10_000).max(WRITERS);
    println!(
        "\n== rss: {versions} versions over {contexts} contexts through ContextService::write, \
         {WRITERS} writers (ContextConfig::hot_tier_bytes = {} MiB) ==",
        RSS_HOT_TIER_BYTES >> 20
    );
    let before = rss_kib();
    let config = ContextConfig {
        hot_tier_bytes: RSS_HOT_TIER_BYTES,
        ..ContextConfig::default()
    };
    let svc = service_with(dir, config).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let agent = format!("agent-{writer}");
            svc.register_agent(&agent, AgentCapabilities::default())
                .await
                .unwrap();
            // This writer's contexts: every WRITERS-th, each written in turn.
            let mine: Vec<u64> = (writer..contexts).step_by(WRITERS as usize).collect();
            let mut at = vec![0u64; mine.len()];
            let share = versions / WRITERS + u64::from(writer < versions % WRITERS);
            for n in 0..share {
                // A long run outlives the heartbeat window: the agent keeps itself connected.
                if n % 1000 == 999 {
                    svc.heartbeat(&agent).await.unwrap();
                }
                let slot = (n % mine.len() as u64) as usize;
                let id = format!("ctx-{}", mine[slot]);
                let doc = document(writer as usize, n);
                if at[slot] == 0 {
                    let r = svc
                        .create(
                            &agent,
                            NewContext {
                                id: Some(id),
                                context_type: "plan".into(),
                                doc,
                                ..NewContext::default()
                            },
                        )
                        .await
                        .unwrap();
                    at[slot] = r.version;
                } else {
                    let r = svc
                        .write(&agent, &id, Change::Put(doc), Some(at[slot]))
                        .await
                        .unwrap();
                    at[slot] = r.version;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let stored: i64 = svc
        .store()
        .read(|conn| Ok(conn.query_row("SELECT count(*) FROM versions", [], |r| r.get(0))?))
        .await
        .unwrap();
    let after = rss_kib();
    println!(
        "{stored} versions stored in {:.1} s ({:.0}/s); VmRSS {:.1} MiB (was {:.1} MiB before the store opened)",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64(),
        after as f64 / 1024.0,
        before as f64 / 1024.0
    );
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
