//! The per-agent context cache (`qi_host::context::cache`): hits and misses in the receipt,
//! coherence with other agents' writes, access checked on every hit, `prefetch`, its bounds
//! (TTL, entries, bytes, lag) as limit pairs, and `syncAllSharedContexts`.
//!
//! Guest tests run the `worker` guest through the real host; tests of the bounds drive a
//! [`ContextCache`] over a real [`ContextService`] on a manual clock, so that time moves only
//! when the test says.

use super::{context_host, create, share, unique};
use crate::common::{ok, rendezvous, spec};
use qi_guest_artifacts::WORKER_COMPONENT;
use qi_host::context::cache::{CacheConfig, CachedDocument, ContextCache, Served};
use qi_host::context::{
    AgentCapabilities, Change, ConflictType, ContextConfig, ContextError, ContextService,
    ManualClock, NewContext, OPERATOR, Permission, SyncStrategy,
};
use qi_host::events::{EventFilter, EventType, NewEvent, SubscribeFrom};
use qi_host::{AgentReport, IsolationLevel, SubAgent, SubAgentSpecification, TaskRequest};
use serde_json::{Value, json};
use std::sync::Arc;

fn steps(steps: Value) -> TaskRequest {
    TaskRequest::new(
        "cache probe",
        json!({"subtask": "probe", "attempt": 1, "inputs": {"steps": steps}}),
    )
}

fn worker_spec() -> SubAgentSpecification {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["test.rendezvous".into()];
    s
}

async fn worker(spec: SubAgentSpecification) -> SubAgent {
    let h = context_host().await;
    let loaded = h.host.load(WORKER_COMPONENT).expect("bundled guest loads");
    h.host.spawn(&loaded, spec).await.expect("agent spawns")
}

fn probes(report: &AgentReport) -> Vec<Value> {
    ok(report)["probes"].as_array().cloned().unwrap_or_default()
}

fn rdv(key: &str) -> Value {
    json!({"call": {"name": "test.rendezvous", "input": {"key": key, "n": 2}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_reads_are_hits_and_counted_in_the_receipt() {
    let id = create("cached", SyncStrategy::Strong, json!({"n": 1})).await;
    let agent = worker(worker_spec()).await;
    share(&id, &[&agent], &[Permission::Read]).await;
    let report = agent
        .run(steps(json!([{"context_get": {"id": id, "times": 5}}])))
        .await;
    assert_eq!(probes(&report)[0]["value"], 1, "{report:?}");
    assert_eq!(report.usage.context_cache_misses, 1);
    assert_eq!(report.usage.context_cache_hits, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_by_another_agent_is_seen_by_the_next_read() {
    let id = create("coherent", SyncStrategy::Strong, json!({"n": 1})).await;
    let agent = worker(worker_spec()).await;
    share(&id, &[&agent], &[Permission::Read]).await;
    let (k1, k2) = (unique("coherent-a"), unique("coherent-b"));
    let run = tokio::spawn(agent.run(steps(json!([
        {"context_get": {"id": id, "times": 2}},
        rdv(&k1),
        rdv(&k2),
        {"context_get": {"id": id}},
    ]))));
    // The agent has read twice (the second a hit); now another writer changes the context.
    rendezvous(&k1, 2).wait().await;
    let svc = &context_host().await.svc;
    svc.write(OPERATOR, &id, Change::Put(json!({"n": 2})), Some(1))
        .await
        .expect("operator writes");
    rendezvous(&k2, 2).wait().await;
    let report = run.await.unwrap();
    let p = probes(&report);
    assert_eq!(p[0]["value"], 1);
    assert_eq!(
        p[1]["value"], 2,
        "the cached version 1 was not served: {p:?}"
    );
    assert_eq!(report.usage.context_cache_hits, 1);
    assert_eq!(report.usage.context_cache_misses, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_write_is_seen_by_its_next_read() {
    let id = create("own-write", SyncStrategy::Strong, json!({"n": 1})).await;
    let agent = worker(worker_spec()).await;
    share(&id, &[&agent], &[Permission::Read, Permission::Delete]).await;
    let report = agent
        .run(steps(json!([
            {"context_get": {"id": id, "times": 2}},
            {"context_delete": id},
            {"context_get": {"id": id}},
        ])))
        .await;
    let p = probes(&report);
    assert_eq!(p[0]["value"], 1);
    assert_eq!(p[1]["ok"], true, "{p:?}");
    // The cached version 1 is not served after the agent's own delete (version 2, shares
    // gone): the read goes to the store.
    assert_ne!(p[2]["value"], 1, "{p:?}");
    assert_eq!(report.usage.context_cache_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_share_makes_the_next_cached_read_fail() {
    let id = create("revoked", SyncStrategy::Strong, json!({"secret": 1})).await;
    let agent = worker(worker_spec()).await;
    let agent_id = agent.id().to_string();
    share(&id, &[&agent], &[Permission::Read]).await;
    let (k1, k2) = (unique("revoke-a"), unique("revoke-b"));
    let run = tokio::spawn(agent.run(steps(json!([
        {"context_get": {"id": id, "times": 2}},
        rdv(&k1),
        rdv(&k2),
        {"context_get": {"id": id}},
    ]))));
    rendezvous(&k1, 2).wait().await;
    let svc = &context_host().await.svc;
    svc.revoke(OPERATOR, &id, std::slice::from_ref(&agent_id))
        .await
        .unwrap();
    rendezvous(&k2, 2).wait().await;
    let report = run.await.unwrap();
    let p = probes(&report);
    assert_eq!(p[0]["ok"], true);
    assert_eq!(p[1]["ok"], false, "{p:?}");
    assert!(
        p[1]["error"].as_str().unwrap().starts_with("access-denied"),
        "{p:?}"
    );
    assert_eq!(report.usage.context_cache_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_contexts_are_read_from_the_cache() {
    let a = create("prefetch-a", SyncStrategy::Strong, json!({"a": 1})).await;
    let b = create("prefetch-b", SyncStrategy::Eventual, json!({"b": 1})).await;
    let private = create("prefetch-private", SyncStrategy::Strong, json!({})).await;
    let agent = worker(worker_spec()).await;
    share(&a, &[&agent], &[Permission::Read]).await;
    share(&b, &[&agent], &[Permission::Read]).await;
    let missing = unique("prefetch-missing");
    let report = agent
        .run(steps(json!([
            {"context_prefetch": [a, b, private, missing]},
            {"context_get": {"id": a}},
            {"context_get": {"id": b}},
        ])))
        .await;
    let p = probes(&report);
    let results = p[0]["value"].as_array().unwrap();
    assert_eq!(results[0], json!({"ok": true, "version": 1}));
    assert_eq!(results[1], json!({"ok": true, "version": 1}));
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .starts_with("access-denied"),
        "{results:?}"
    );
    assert!(
        results[3]["error"]
            .as_str()
            .unwrap()
            .starts_with("not-found"),
        "{results:?}"
    );
    assert_eq!(report.usage.context_cache_prefetched, 2);
    assert_eq!(report.usage.context_cache_hits, 2);
    assert_eq!(report.usage.context_cache_misses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_of_more_ids_than_allowed_is_refused_for_every_id() {
    use qi_host::interfaces::limits::MAX_PREFETCH_CONTEXTS;
    let agent = worker(worker_spec()).await;
    let at: Vec<String> = (0..MAX_PREFETCH_CONTEXTS)
        .map(|i| format!("none-{i}"))
        .collect();
    let mut past = at.clone();
    past.push("one-more".into());
    let report = agent
        .run(steps(json!([
            {"context_prefetch": at},
            {"context_prefetch": past},
        ])))
        .await;
    let p = probes(&report);
    let at = p[0]["value"].as_array().unwrap();
    assert_eq!(at.len(), MAX_PREFETCH_CONTEXTS);
    assert!(at[0]["error"].as_str().unwrap().starts_with("not-found"));
    let past = p[1]["value"].as_array().unwrap();
    assert_eq!(past.len(), MAX_PREFETCH_CONTEXTS + 1);
    let e = past[0]["error"].as_str().unwrap();
    assert!(e.starts_with("invalid") && e.contains("`ids`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitored_agent_reads_the_store_every_time() {
    let id = create("monitored", SyncStrategy::Strong, json!({"n": 1})).await;
    let mut s = worker_spec();
    s.isolation_level = IsolationLevel::Monitored;
    let agent = worker(s).await;
    share(&id, &[&agent], &[Permission::Read]).await;
    let report = agent
        .run(steps(json!([{"context_get": {"id": id, "times": 3}}])))
        .await;
    assert_eq!(probes(&report)[0]["ok"], true);
    assert_eq!(report.usage.context_cache_hits, 0);
    assert_eq!(report.usage.context_cache_misses, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_all_shared_reports_every_shared_context_and_its_status() {
    let readable = create("sync-all-r", SyncStrategy::Strong, json!({"n": 1})).await;
    let write_only = create("sync-all-w", SyncStrategy::Strong, json!({})).await;
    let svc = &context_host().await.svc;
    svc.write(OPERATOR, &readable, Change::Put(json!({"n": 2})), Some(1))
        .await
        .unwrap();
    let agent = worker(worker_spec()).await;
    let agent_id = agent.id().to_string();
    share(&readable, &[&agent], &[Permission::Read]).await;
    share(&write_only, &[&agent], &[Permission::Write]).await;
    let violations = || async {
        svc.conflicts(OPERATOR, &write_only)
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.conflict_type == ConflictType::AccessViolation)
            .count()
    };
    let before = violations().await;
    // The service API agrees (asked while the agent lives: its shares end with it).
    let api = svc.sync_all_shared_contexts(&agent_id).await;
    assert_eq!((api.total_contexts, api.synced_contexts), (2, 1));
    assert_eq!(
        violations().await,
        before,
        "the service read no write-only context"
    );
    let report = agent.run(steps(json!([{"context_sync_all": null}]))).await;
    let summary = &probes(&report)[0]["value"];
    assert_eq!(summary["total"], 2, "{summary}");
    assert_eq!(summary["synced"], 1);
    assert_eq!(summary["conflicts"], 0);
    let mut contexts = summary["contexts"].as_array().unwrap().clone();
    contexts.sort_by_key(|c| c["id"].as_str().unwrap().to_string());
    let by_id = |id: &str| {
        contexts
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing from {contexts:?}"))
    };
    assert_eq!(
        by_id(&readable),
        json!({"id": readable, "owner": OPERATOR, "version": 2, "status": "synced",
               "conflicts": 0, "error": null})
    );
    let w = by_id(&write_only);
    assert_eq!(w["status"], "error");
    assert!(w["error"].as_str().unwrap().contains("read"), "{w}");
    assert_eq!(
        violations().await,
        before,
        "no read of the write-only context"
    );
}

// ---- The bounds, on a ContextCache over a real service and a manual clock.

struct Bench {
    svc: ContextService,
    clock: Arc<ManualClock>,
}

async fn service() -> Bench {
    let store = qi_host::Store::open(qi_host::StoreConfig::in_memory()).unwrap();
    let bus = qi_host::EventBus::new(store.clone(), qi_host::EventBusConfig::default())
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let svc = ContextService::open(store, bus, clock.clone(), ContextConfig::default())
        .await
        .unwrap();
    svc.register_agent("agent-a", AgentCapabilities::default())
        .await
        .unwrap();
    Bench { svc, clock }
}

impl Bench {
    /// Creates `id` with `doc`, readable by `agent-a` (until `expires_at`, when given).
    async fn context(&self, id: &str, doc: Value, expires_at: Option<u64>) {
        self.svc
            .create(
                OPERATOR,
                NewContext {
                    id: Some(id.into()),
                    context_type: "t".into(),
                    doc,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        self.svc
            .share(
                OPERATOR,
                id,
                &["agent-a".into()],
                &[Permission::Read],
                expires_at,
            )
            .await
            .unwrap();
    }

    async fn read(&self, cache: &ContextCache, id: &str) -> Result<Served, ContextError> {
        cache.get(&self.svc, "agent-a", id).await.map(|(_, s)| s)
    }
}

fn config(f: impl FnOnce(&mut CacheConfig)) -> CacheConfig {
    let mut c = CacheConfig::default();
    f(&mut c);
    c
}

#[tokio::test]
async fn an_entry_is_served_until_its_ttl_and_not_after() {
    let b = service().await;
    b.context("c", json!({"n": 1}), None).await;
    let cache = ContextCache::new(config(|c| c.ttl_ms = 1_000));
    assert_eq!(b.read(&cache, "c").await.unwrap(), Served::Miss);
    b.clock.advance(999);
    assert_eq!(b.read(&cache, "c").await.unwrap(), Served::Hit);
    b.clock.advance(1);
    assert_eq!(b.read(&cache, "c").await.unwrap(), Served::Miss);
}

#[tokio::test]
async fn an_expired_share_makes_a_fresh_entry_fail() {
    let b = service().await;
    let expires = b.svc.now_ms() + 500;
    b.context("c", json!({"n": 1}), Some(expires)).await;
    let cache = ContextCache::default();
    assert_eq!(b.read(&cache, "c").await.unwrap(), Served::Miss);
    b.clock.advance(499);
    assert_eq!(b.read(&cache, "c").await.unwrap(), Served::Hit);
    // No event announces an expiry: only the access check on the hit catches it.
    b.clock.advance(1);
    match b.read(&cache, "c").await {
        Err(ContextError::AccessDenied { .. }) => {}
        other => panic!("expected access denied, got {other:?}"),
    }
    assert_eq!(cache.stats().await.entries, 0);
}

#[tokio::test]
async fn the_entry_bound_evicts_the_least_recently_used_just_past_it() {
    let b = service().await;
    for id in ["a", "b", "c", "d"] {
        b.context(id, json!({"id": id}), None).await;
    }
    // At the bound: three entries, all served from the cache.
    let cache = ContextCache::new(config(|c| c.max_entries = 3));
    for id in ["a", "b", "c"] {
        assert_eq!(b.read(&cache, id).await.unwrap(), Served::Miss);
    }
    for id in ["a", "b", "c"] {
        assert_eq!(b.read(&cache, id).await.unwrap(), Served::Hit, "{id}");
    }
    // One past: `a` (least recently used) is evicted.
    assert_eq!(b.read(&cache, "d").await.unwrap(), Served::Miss);
    assert_eq!(cache.stats().await.entries, 3);
    for id in ["b", "c", "d"] {
        assert_eq!(b.read(&cache, id).await.unwrap(), Served::Hit, "{id}");
    }
    assert_eq!(b.read(&cache, "a").await.unwrap(), Served::Miss);
}

#[tokio::test]
async fn a_document_of_exactly_the_byte_bound_is_cached_and_one_byte_more_is_not() {
    let b = service().await;
    b.context("fits", json!({"s": "x".repeat(100)}), None).await;
    b.context("over", json!({"s": "x".repeat(101)}), None).await;
    let (doc, _) = ContextCache::default()
        .get(&b.svc, "agent-a", "fits")
        .await
        .unwrap();
    let bound = doc.bytes();
    assert_eq!(
        bound,
        doc.doc.len() + "fits".len() + OPERATOR.len() + "t".len()
    );
    let cache = ContextCache::new(config(|c| c.max_bytes = bound));
    assert_eq!(b.read(&cache, "fits").await.unwrap(), Served::Miss);
    assert_eq!(b.read(&cache, "fits").await.unwrap(), Served::Hit);
    assert_eq!(cache.stats().await.bytes, bound);
    // "over" has the same id length and one more byte of document.
    let over: CachedDocument = cache.get(&b.svc, "agent-a", "over").await.unwrap().0;
    assert_eq!(over.bytes(), bound + 1);
    assert_eq!(b.read(&cache, "over").await.unwrap(), Served::Miss);
    // Not cached, and it did not push out what fits.
    assert_eq!(b.read(&cache, "fits").await.unwrap(), Served::Hit);
}

/// Reads `id` once (a miss) and waits until its `accessed` event is announced and taken in,
/// so that the cache stands exactly at the bus's newest seq.
async fn settle(b: &Bench, cache: &ContextCache, id: &str) {
    let mut accessed = b
        .svc
        .bus()
        .subscribe(
            EventFilter::parse_cli("type=accessed").unwrap(),
            SubscribeFrom::Now,
        )
        .unwrap();
    assert_eq!(b.read(cache, id).await.unwrap(), Served::Miss);
    let e = accessed.next().await.unwrap();
    assert_eq!(e.event_type, EventType::Accessed);
    // A hit takes in the `accessed` event and records none.
    assert_eq!(b.read(cache, id).await.unwrap(), Served::Hit);
}

async fn unrelated_events(b: &Bench, n: usize) {
    for _ in 0..n {
        b.svc
            .bus()
            .publish(NewEvent::new(EventType::Custom).context("elsewhere"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_cache_at_its_lag_bound_keeps_its_entries_and_one_event_past_it_empties() {
    let b = service().await;
    b.context("c", json!({"n": 1}), None).await;
    let cache = ContextCache::new(config(|c| c.max_lag_events = 3));
    settle(&b, &cache, "c").await;
    unrelated_events(&b, 3).await;
    assert_eq!(b.read(&cache, "c").await.unwrap(), Served::Hit);
    unrelated_events(&b, 4).await;
    assert_eq!(b.read(&cache, "c").await.unwrap(), Served::Miss);
}

#[tokio::test]
async fn an_update_event_drops_the_entry_before_the_next_read() {
    let b = service().await;
    b.context("c", json!({"n": 1}), None).await;
    let cache = ContextCache::default();
    assert_eq!(b.read(&cache, "c").await.unwrap(), Served::Miss);
    assert!(cache.stats().await.following_events);
    b.svc
        .write(OPERATOR, "c", Change::Put(json!({"n": 2})), Some(1))
        .await
        .unwrap();
    let (doc, served) = cache.get(&b.svc, "agent-a", "c").await.unwrap();
    assert_eq!((doc.version, served), (2, Served::Miss));
    // An empty cache stops following the stream.
    cache.clear().await;
    assert!(!cache.stats().await.following_events);
}
