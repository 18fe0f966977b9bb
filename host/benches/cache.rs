//! The per-agent context cache pays for itself: repeated reads of one context by one agent
//! through [`ContextCache::get`] against the same reads through [`ContextService::get`], each
//! ending as `context.get` ends (the document as JSON text in a `String` for the guest),
//! measured within one run, for documents of about 200 B, 16 KiB and 256 KiB, on a store in a
//! data directory (like a real host).
//!
//! A cached read still makes the access check ([`ContextService::allowed`]) and takes in the
//! event stream; it saves the copy of the document's tree, its serialization and the
//! `accessed` event the store records for a read.
//!
//! `cargo bench -p qi-host --bench cache [-- READS]` (default 2,000 reads per case). Prints
//! figures only; nothing here asserts on timing.

#![allow(missing_docs)]

use qi_host::context::cache::{ContextCache, Served};
use qi_host::context::{
    AgentCapabilities, ContextConfig, ContextService, NewContext, OPERATOR, Permission, SystemClock,
};
use qi_host::events::{EventBus, EventBusConfig};
use qi_host::store::{Store, StoreConfig};
use serde_json::{Value, json};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A document of about `bytes` bytes of JSON text: an object of 64-byte string fields.
fn document(bytes: usize) -> Value {
    let fields = (bytes / 80).max(1);
    let mut doc = serde_json::Map::new();
    for i in 0..fields {
        doc.insert(format!("field-{i:05}"), json!("x".repeat(64)));
    }
    Value::Object(doc)
}

async fn uncached(svc: &ContextService, id: &str, reads: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..reads {
        let view = svc.get("agent-reader", id).await.unwrap();
        black_box(view.doc.to_string());
    }
    start.elapsed()
}

async fn cached(svc: &ContextService, id: &str, reads: usize) -> Duration {
    let cache = ContextCache::default();
    let start = Instant::now();
    let mut hits = 0;
    for _ in 0..reads {
        let (doc, served) = cache.get(svc, "agent-reader", id).await.unwrap();
        hits += usize::from(served == Served::Hit);
        black_box(doc.doc.to_string());
    }
    let took = start.elapsed();
    assert_eq!(hits, reads - 1, "every read but the first is a hit");
    took
}

/// Waits until the store has written what earlier reads queued (their `accessed` events), so
/// that one case's background writes do not slow the next one.
async fn settle(svc: &ContextService) {
    for _ in 0..3 {
        tokio::task::yield_now().await;
        svc.store().write(|_| Ok(())).await.unwrap();
    }
}

fn main() {
    let reads: usize = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000);
    println!(
        "machine: {} CPUs available",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    runtime.block_on(async {
        let store = Store::open(StoreConfig::at(root.path())).unwrap();
        let bus = EventBus::new(store.clone(), EventBusConfig::default())
            .await
            .unwrap();
        let svc = ContextService::open(store, bus, Arc::new(SystemClock), ContextConfig::default())
            .await
            .unwrap();
        svc.register_agent("agent-reader", AgentCapabilities::default())
            .await
            .unwrap();
        println!("repeated context.get of one context by one agent, {reads} reads per case");
        println!(
            "{:>10} {:>16} {:>16} {:>8}",
            "doc bytes", "store µs/read", "cache µs/read", "ratio"
        );
        for size in [200, 16 << 10, 256 << 10] {
            let id = format!("bench-{size}");
            let doc = document(size);
            let text_bytes = doc.to_string().len();
            svc.create(
                OPERATOR,
                NewContext {
                    id: Some(id.clone()),
                    context_type: "bench".into(),
                    doc,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            svc.share(
                OPERATOR,
                &id,
                &["agent-reader".into()],
                &[Permission::Read],
                None,
            )
            .await
            .unwrap();
            // Warm both paths once.
            uncached(&svc, &id, 10).await;
            cached(&svc, &id, 10).await;
            settle(&svc).await;
            let with_cache = cached(&svc, &id, reads).await;
            settle(&svc).await;
            let without = uncached(&svc, &id, reads).await;
            settle(&svc).await;
            let per = |d: Duration| d.as_secs_f64() * 1e6 / reads as f64;
            println!(
                "{:>10} {:>16.2} {:>16.2} {:>7.1}x",
                text_bytes,
                per(without),
                per(with_cache),
                without.as_secs_f64() / with_cache.as_secs_f64()
            );
        }
    });
}
