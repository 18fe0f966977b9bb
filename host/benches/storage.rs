//! Storage benchmarks, each a comparison measured within one run:
//!
//! 1. `commit`: durable context versions per second through `ContextService::write` (the path
//!    agents use: access check, strategy, a version row, the context's current-state row and an
//!    `updated` event, committed by the group-commit writer) with 1, 8 and 64 concurrent
//!    writers, each writer putting a small document into its own context (strategy `strong`,
//!    then `eventual`; a write finding the writer idle is committed by its caller, a leader
//!    commit, and the counts of led and batched writes are printed), against a bare rusqlite
//!    loop doing the same durable work per commit on
//!    one connection with the store's pragmas (WAL, `synchronous=NORMAL`, the same
//!    `wal_autocheckpoint`): one transaction per write holding the version row, the
//!    current-state row (`INSERT OR REPLACE`) and the event row. Also the same bare work batched
//!    as many writes per transaction as there are writers (a group commit holds at most one
//!    write per writer, since each waits for its answer) and 1,024 writes per transaction (the
//!    floor any per-commit overhead is measured from). The bare loop checkpoints inline, as
//!    SQLite does by default; the store checkpoints on its own thread. So the one-write case
//!    is also compared with a bare loop that never checkpoints (its WAL grows for the run):
//!    the floor with no checkpoint cost anywhere.
//! 2. `fanout`: time from calling `EventBus::publish` (a durable commit) until 1,000 host-side
//!    subscribers have received the event (`Subscription::next_shared`), p50/p99 over 200
//!    publishes, against a floor measured in the same run: the same `Arc`'d event sent on a bare
//!    tokio broadcast channel from a plain thread to 1,000 tasks.
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
use qi_host::events::{
    Event, EventBus, EventBusConfig, EventFilter, EventType, NewEvent, SubscribeFrom,
};
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
        let per_write_floor = bare_with(
            &root.join(format!("bare-nockpt-{writers}")),
            durability,
            1,
            writers,
            0,
        );
        let batched = bare(
            &root.join(format!("bare-batch-{writers}")),
            durability,
            BATCH,
            writers,
        );
        // A group commit holds at most one write per writer (each waits for its answer).
        let grouped = bare(
            &root.join(format!("bare-group-{writers}")),
            durability,
            writers,
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
             1 write/tx, no checkpoints {per_write_floor:>7.0}/s (strong {:.2}x) | bare \
             {writers} writes/tx {grouped:>7.0}/s (strong {:.2}x) | bare {BATCH} writes/tx \
             {batched:>7.0}/s (strong {:.2}x)",
            strong / per_write,
            eventual / per_write,
            strong / per_write_floor,
            strong / grouped,
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
    bare_with(
        dir,
        durability,
        batch,
        contexts,
        durability.wal_autocheckpoint(),
    )
}

/// [`bare`] with `wal_autocheckpoint` set to `autocheckpoint` pages (0: never checkpoint, the
/// WAL grows for the whole run; a floor with no checkpoint cost at all).
fn bare_with(
    dir: &Path,
    durability: Durability,
    batch: usize,
    contexts: usize,
    autocheckpoint: u32,
) -> f64 {
    // The same schema the store uses.
    drop(Store::open(StoreConfig::at(dir)).unwrap());
    let conn = Connection::open(dir.join("qi.db")).unwrap();
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "synchronous", durability.synchronous())
        .unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", autocheckpoint)
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
    if let (Some(stats), Some(w)) = (svc.store().checkpoints(), svc.store().writer_stats()) {
        let s = *stats.borrow();
        eprintln!(
            "  ({strategy:?}, {writers} writers: {} writes led by their callers, {} batched by \
             the writer thread in {} transactions; checkpoints {} on the checkpointer thread, \
             {} on the writer, {} failed)",
            w.led, w.batched, w.batches, s.background, s.on_writer, s.failed
        );
    }
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

/// Subscribers in the fan-out case.
const FANOUT_SUBSCRIBERS: usize = 1000;
/// Publishes before the measured ones (not counted).
const FANOUT_WARMUP: usize = 20;
/// Measured publishes.
const FANOUT_PUBLISHES: usize = 200;

/// Counts receipts of each seq; the subscriber completing one reports when (as every fan-out
/// case does, so their figures compare).
struct Receipts {
    counts: Vec<AtomicUsize>,
    all_in: tokio::sync::mpsc::UnboundedSender<(u64, Instant)>,
}

impl Receipts {
    fn new(
        events: usize,
    ) -> (
        Arc<Receipts>,
        tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>,
    ) {
        let (all_in, rx) = tokio::sync::mpsc::unbounded_channel();
        let counts = (0..=events).map(|_| AtomicUsize::new(0)).collect();
        (Arc::new(Receipts { counts, all_in }), rx)
    }

    fn received(&self, seq: u64) {
        if self.counts[seq as usize].fetch_add(1, Ordering::AcqRel) + 1 == FANOUT_SUBSCRIBERS {
            let _ = self.all_in.send((seq, Instant::now()));
        }
    }
}

/// The fan-out payload: what `fanout` publishes for publish number `i`.
fn fanout_event(i: usize) -> NewEvent {
    NewEvent::new(EventType::Updated)
        .context("ctx-1")
        .data(json!({"i": i}))
}

async fn fanout(dir: &Path) {
    let total = FANOUT_WARMUP + FANOUT_PUBLISHES;
    println!(
        "\n== fanout: publish -> {FANOUT_SUBSCRIBERS} subscribers received it, {FANOUT_PUBLISHES} publishes =="
    );
    println!(
        "measured path: EventBus::publish (a durable commit) -> every Subscription::next_shared \
         (filter: all) returned it | floor: a bare tokio broadcast of the same Arc'd event, sent \
         from a plain thread (as the store's writer thread announces), to as many tasks"
    );
    let mut floor = fanout_floor(total, false).await;
    let mut floor_task = fanout_floor(total, true).await;
    let store = Store::open(StoreConfig::at(dir)).unwrap();
    let bus = EventBus::new(store, EventBusConfig::default())
        .await
        .unwrap();
    // The commit alone: the same publishes with nobody subscribed.
    let mut alone = Vec::with_capacity(FANOUT_PUBLISHES);
    for i in 0..total {
        let started = Instant::now();
        bus.publish(fanout_event(i)).await.unwrap();
        if i >= FANOUT_WARMUP {
            alone.push(started.elapsed());
        }
    }
    let first = bus.metrics().last_seq as usize;
    let (receipts, mut all_in_rx) = Receipts::new(first + total);
    let mut subscribers = Vec::new();
    for _ in 0..FANOUT_SUBSCRIBERS {
        let mut sub = bus
            .subscribe(EventFilter::all(), SubscribeFrom::Now)
            .unwrap();
        let receipts = receipts.clone();
        subscribers.push(tokio::spawn(async move {
            for _ in 0..total {
                let event = sub.next_shared().await.unwrap();
                receipts.received(event.seq);
            }
        }));
    }
    let mut fanout = Vec::with_capacity(FANOUT_PUBLISHES);
    let mut commit = Vec::with_capacity(FANOUT_PUBLISHES);
    for i in 0..total {
        let started = Instant::now();
        let event = bus.publish(fanout_event(i)).await.unwrap();
        let acked = started.elapsed();
        let (seq, at) = all_in_rx.recv().await.unwrap();
        assert_eq!(seq, event.seq);
        if i >= FANOUT_WARMUP {
            commit.push(acked);
            fanout.push(at.saturating_duration_since(started));
        }
    }
    for subscriber in subscribers {
        subscriber.await.unwrap();
    }
    let metrics = bus.metrics();
    let (p50, p99) = (percentile(&mut fanout, 0.50), percentile(&mut fanout, 0.99));
    let (floor50, floor99) = (percentile(&mut floor, 0.50), percentile(&mut floor, 0.99));
    println!(
        "publish -> all {FANOUT_SUBSCRIBERS} received: p50 {p50:>8.1?}  p99 {p99:>8.1?}  max {:>8.1?}",
        percentile(&mut fanout, 1.0)
    );
    println!(
        "publish acknowledged (commit):     p50 {:>8.1?}  p99 {:>8.1?}",
        percentile(&mut commit, 0.50),
        percentile(&mut commit, 0.99)
    );
    println!(
        "publish, no subscribers (commit):  p50 {:>8.1?}  p99 {:>8.1?}",
        percentile(&mut alone, 0.50),
        percentile(&mut alone, 0.99)
    );
    println!(
        "floor from a runtime task -> all:  p50 {:>8.1?}  p99 {:>8.1?}",
        percentile(&mut floor_task, 0.50),
        percentile(&mut floor_task, 0.99)
    );
    println!(
        "floor, bare broadcast -> all:      p50 {floor50:>8.1?}  p99 {floor99:>8.1?}  max {:>8.1?}  \
         (publish path / floor: p50 {:.2}x, p99 {:.2}x)",
        percentile(&mut floor, 1.0),
        p50.as_secs_f64() / floor50.as_secs_f64(),
        p99.as_secs_f64() / floor99.as_secs_f64()
    );
    println!(
        "delivered {} events, {} store catch-ups (0 = all on the live path)",
        metrics.delivered, metrics.catch_ups
    );
}

/// The floor of `fanout`: `total` events, each an `Arc<Event>` like the bus's live slot, sent on
/// a bare tokio broadcast channel from a plain thread to [`FANOUT_SUBSCRIBERS`] tasks that count
/// receipts as `fanout`'s do. Returns send -> all received for the measured ones.
async fn fanout_floor(total: usize, from_task: bool) -> Vec<Duration> {
    let (tx, _) = tokio::sync::broadcast::channel::<Arc<Event>>(4096);
    let (receipts, all_in_rx) = Receipts::new(total);
    let mut subscribers = Vec::new();
    for _ in 0..FANOUT_SUBSCRIBERS {
        let mut rx = tx.subscribe();
        let receipts = receipts.clone();
        subscribers.push(tokio::spawn(async move {
            for _ in 0..total {
                let event = rx.recv().await.unwrap();
                receipts.received(event.seq);
            }
        }));
    }
    let send_all =
        move |tx: tokio::sync::broadcast::Sender<Arc<Event>>,
              mut all_in_rx: tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>| async move {
            let mut times = Vec::with_capacity(FANOUT_PUBLISHES);
            for i in 0..total {
                let new = fanout_event(i);
                let event = Arc::new(Event {
                    seq: i as u64 + 1,
                    event_type: new.event_type,
                    context_id: new.context_id,
                    agent_id: new.agent_id,
                    timestamp_ms: 1_700_000_000_000,
                    priority: new.priority,
                    data: new.data,
                });
                let started = Instant::now();
                tx.send(event).unwrap();
                let (seq, at) = all_in_rx.recv().await.unwrap();
                assert_eq!(seq, i as u64 + 1);
                if i >= FANOUT_WARMUP {
                    times.push(at.saturating_duration_since(started));
                }
            }
            times
        };
    let times = if from_task {
        tokio::spawn(send_all(tx, all_in_rx)).await.unwrap()
    } else {
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || handle.block_on(send_all(tx, all_in_rx)))
            .join()
            .unwrap()
    };
    for subscriber in subscribers {
        subscriber.await.unwrap();
    }
    times
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[index]
}
