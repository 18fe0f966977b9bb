//! Red team of cluster-replicated contexts (`context::replica`, `cluster::contexts`): a
//! hostile peer writing into the bucket, a NATS server that hangs or loses its storage, and
//! a hot tier that evicts. Each test states what should hold; a failing one is a finding.

use super::Nats;
use super::contexts::{Host as RHost, new_context};
use qi_host::cluster::contexts::key;
use qi_host::cluster::{Cluster, ClusterConfig, ContextSync};
use qi_host::context::{
    Change, ContextConfig, ContextError, OPERATOR, ReplicatedContext, SyncStrategy,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn signal(nats: &Nats, sig: &str) {
    let pid = nats.child.as_ref().unwrap().id();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A hostile (or buggy) peer puts garbage, a record of another context, and a record with a
/// schema that does not compile into the bucket: the watch must skip them and keep
/// installing honest entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_watch_survives_garbage_and_foreign_records() {
    let Some(nats) = Nats::start() else { return };
    let a = RHost::open(&nats, "a").await;
    let b = RHost::open(&nats, "b").await;
    a.create("victim", SyncStrategy::Strong, json!({"ok": 1}))
        .await;
    let kv = a.kv().await;
    let (_, mut record) = {
        let e = kv.entry(key(&a.cluster, "victim")).await.unwrap().unwrap();
        let r: ReplicatedContext = serde_json::from_slice(&e.value).unwrap();
        (e.revision, r)
    };
    kv.put("c.garbage", bytes::Bytes::from_static(b"\xff\x00not json"))
        .await
        .unwrap();
    // The record of context `other` under victim's key.
    let mut other = record.clone();
    other.id = "other".into();
    other.doc = json!({"evil": true});
    other.version = 99;
    kv.put(
        key(&a.cluster, "victim"),
        serde_json::to_vec(&other).unwrap().into(),
    )
    .await
    .unwrap();
    // A new context whose schema does not compile.
    record.id = "badschema".into();
    record.schema = Some(json!({"type": 12}));
    kv.put(
        key(&a.cluster, "badschema"),
        serde_json::to_vec(&record).unwrap().into(),
    )
    .await
    .unwrap();
    a.create("after", SyncStrategy::Strong, json!({"n": 1}))
        .await;
    b.caught_up(a.ctx.kv_revision("after").unwrap()).await;
    assert_eq!(b.doc("after").await, (1, json!({"n": 1})));
    assert_eq!(b.doc("victim").await, (1, json!({"ok": 1})));
    assert!(b.ctx.get(OPERATOR, "badschema").await.is_err());
}

/// A record whose version is lower than the host's (a hostile peer; also what an honest
/// host writes after the bucket lost its entries, see below) is installed as the current
/// state without a version row; the next local version then collides with an existing row
/// of `versions` and the context can never be written on that host again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_record_with_an_older_version_wedges_the_context_on_every_host() {
    let Some(nats) = Nats::start() else { return };
    let a = RHost::open(&nats, "a").await;
    let b = RHost::open(&nats, "b").await;
    a.create("v", SyncStrategy::Eventual, json!({"n": 0})).await;
    for n in 1..=3 {
        a.ctx
            .write(OPERATOR, "v", Change::Merge(json!({"n": n})), Some(n))
            .await
            .unwrap();
    }
    b.caught_up(a.ctx.kv_revision("v").unwrap()).await;
    assert_eq!(b.doc("v").await.0, 4);
    let kv = a.kv().await;
    let e = kv.entry(key(&a.cluster, "v")).await.unwrap().unwrap();
    let mut r: ReplicatedContext = serde_json::from_slice(&e.value).unwrap();
    r.version = 1;
    r.doc = json!({"n": "rewound"});
    let rev = kv
        .put(key(&a.cluster, "v"), serde_json::to_vec(&r).unwrap().into())
        .await
        .unwrap();
    a.caught_up(rev).await;
    b.caught_up(rev).await;
    let (version_b, doc_b) = b.doc("v").await;
    eprintln!("b after the rewound record: version {version_b}, doc {doc_b}");
    // Whatever the host decided about the record, the context must stay writable.
    let mut failed = Vec::new();
    for (name, h) in [("a", &a), ("b", &b)] {
        for _ in 0..3 {
            let base = h.ctx.get(OPERATOR, "v").await.unwrap().version;
            let w = h
                .ctx
                .write(OPERATOR, "v", Change::Merge(json!({"m": name})), Some(base))
                .await;
            if let Err(e) = w {
                failed.push(format!("host {name}: {e}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "the context cannot be written: {failed:#?}"
    );
}

/// A write whose compare-and-set reached the server but whose answer came later than
/// `request_timeout` (a stalled server, here SIGSTOP then SIGCONT) fails with a `Cluster`
/// error saying the bucket may still take it; when it did, the writing host installs it
/// through the watch as its own change: its event has no `replicatedFrom`, so it is
/// forwarded to the cluster's stream like any change of this host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_timed_out_may_land_and_then_carries_its_own_event() {
    let Some(nats) = Nats::start() else { return };
    let a = RHost::open_with(
        &nats,
        "a",
        ContextConfig::default(),
        Some(Duration::from_millis(300)),
    )
    .await;
    a.create("p", SyncStrategy::Strong, json!({"n": 0})).await;
    let mut events = a
        .ctx
        .bus()
        .subscribe(
            qi_host::events::EventFilter::all(),
            qi_host::events::SubscribeFrom::Now,
        )
        .unwrap();
    signal(&nats, "-STOP");
    let w = a
        .ctx
        .write(OPERATOR, "p", Change::Put(json!({"n": 1})), Some(1))
        .await;
    signal(&nats, "-CONT");
    let e = w.expect_err("the server was stopped longer than request_timeout");
    assert!(matches!(&e, ContextError::Cluster { .. }), "{e}");
    a.reconnected().await;
    let kv = a.kv().await;
    let entry = kv.entry(key(&a.cluster, "p")).await.unwrap().unwrap();
    a.caught_up(entry.revision).await;
    let stored: ReplicatedContext = serde_json::from_slice(&entry.value).unwrap();
    // This host holds what the bucket holds, whichever way it went.
    assert_eq!(a.doc("p").await, (stored.version, stored.doc.clone()));
    if stored.version == 2 {
        loop {
            let ev = events.next().await.unwrap();
            if ev.context_id.as_deref() == Some("p")
                && ev.event_type == qi_host::events::EventType::Updated
            {
                assert_eq!(ev.data["version"], 2);
                assert!(ev.data.get("replicatedFrom").is_none(), "{ev:?}");
                break;
            }
        }
    }
}

/// The NATS server loses its JetStream storage (restarted on an empty store directory: a
/// container without a volume, a careless operator). Revisions start again from 1, but the
/// hosts keep the old ones in memory: a host whose old revision happens to equal the new
/// entry's passes the compare-and-set and overwrites another host's acknowledged create with
/// a state the bucket never had, and a host whose watch is past the new revisions never
/// installs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_nats_losing_its_storage_lets_an_old_revision_overwrite_a_new_context() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let a = RHost::open(&nats, "a").await;
    let b = RHost::open(&nats, "b").await;
    a.create("k", SyncStrategy::Strong, json!({"a": 1})).await;
    assert_eq!(a.ctx.kv_revision("k"), Some(1));
    b.caught_up(1).await;
    nats.kill();
    nats.dir = tempfile::tempdir().unwrap();
    nats.restart();
    a.reconnected().await;
    b.reconnected().await;
    // A host joining now makes the cluster's streams again and creates `k` afresh.
    let c = RHost::open(&nats, "c").await;
    c.create("k", SyncStrategy::Strong, json!({"c": 1})).await;
    assert_eq!(
        c.ctx.kv_revision("k"),
        Some(1),
        "the new bucket's first entry"
    );
    // Host a writes on its own version 1 (`{"a":1}`), which is not the bucket's.
    let w = a
        .ctx
        .write(OPERATOR, "k", Change::Put(json!({"a": 2})), Some(1))
        .await;
    eprintln!("a's write: {w:?}");
    let kv = c.kv().await;
    let entry = kv.entry(key(&c.cluster, "k")).await.unwrap().unwrap();
    let stored: ReplicatedContext = serde_json::from_slice(&entry.value).unwrap();
    eprintln!("bucket: version {} doc {}", stored.version, stored.doc);
    assert!(
        stored.doc.get("c").is_some(),
        "c's acknowledged create was overwritten by a write based on a's own, different \
         version 1: the bucket now holds {}",
        stored.doc
    );
}

/// Single host, small hot tier: reading an evicted context puts back a copy loaded from
/// SQLite, whose `kv_revision` is 0. The next delete (or rollback, resolve: only write and
/// create retry) then fails with "changed on another host" though no other host exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_an_evicted_then_read_context_cannot_be_deleted() {
    let Some(nats) = Nats::start() else { return };
    let config = ContextConfig {
        hot_tier_bytes: 300,
        ..ContextConfig::default()
    };
    let a = RHost::open_with(&nats, "a", config, None).await;
    let big = "x".repeat(150);
    for id in ["x", "y"] {
        a.create(id, SyncStrategy::Strong, json!({"s": big})).await;
    }
    let before = a.ctx.kv_revision("x");
    a.ctx.get(OPERATOR, "x").await.unwrap();
    let after = a.ctx.kv_revision("x");
    eprintln!("kv_revision of x: {before:?} before the read, {after:?} after");
    let d = a.ctx.delete(OPERATOR, "x").await;
    assert!(d.is_ok(), "delete on a one-host cluster: {d:?}");
}

/// Concurrent `eventual` merges of distinct fields from three hosts (four writers each):
/// every field must survive on every host, at one common version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redteam_eventual_merges_of_distinct_fields_from_three_hosts_lose_nothing() {
    let Some(nats) = Nats::start() else { return };
    let hosts = Arc::new([
        RHost::open(&nats, "a").await,
        RHost::open(&nats, "b").await,
        RHost::open(&nats, "c").await,
    ]);
    hosts[0]
        .ctx
        .create(
            OPERATOR,
            new_context("m", SyncStrategy::Eventual, json!({})),
        )
        .await
        .unwrap();
    let rev = hosts[0].ctx.kv_revision("m").unwrap();
    for h in hosts.iter() {
        h.caught_up(rev).await;
    }
    let mut tasks = Vec::new();
    for h in 0..3 {
        for w in 0..4 {
            let hosts = hosts.clone();
            tasks.push(tokio::spawn(async move {
                let mut refused = Vec::new();
                for i in 0..8 {
                    let field = format!("h{h}w{w}i{i}");
                    let base = hosts[h].ctx.get(OPERATOR, "m").await.unwrap().version;
                    if let Err(e) = hosts[h]
                        .ctx
                        .write(
                            OPERATOR,
                            "m",
                            Change::Merge(json!({ field: i })),
                            Some(base),
                        )
                        .await
                    {
                        refused.push(format!("host {h}: {e:?}"));
                    }
                }
                refused
            }));
        }
    }
    let mut refused = Vec::new();
    for t in tasks {
        refused.extend(t.await.unwrap());
    }
    assert!(
        refused.is_empty(),
        "{} of 96 eventual writes refused, e.g. {}",
        refused.len(),
        refused[0]
    );
    let last = hosts
        .iter()
        .filter_map(|h| h.ctx.kv_revision("m"))
        .max()
        .unwrap();
    let mut docs = Vec::new();
    for h in hosts.iter() {
        h.caught_up(last).await;
        docs.push(h.doc("m").await);
    }
    for (i, (version, doc)) in docs.iter().enumerate() {
        assert_eq!(doc.as_object().unwrap().len(), 96, "host {i} lost fields");
        assert_eq!(*version, docs[0].0, "host {i}");
    }
}

/// A host restarted on the same data directory (its `kv_revision`s start at 0) while another
/// host kept writing: it must install the newer state, write on it, and its history must not
/// clash with the versions it already had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_host_restarted_on_its_data_dir_resyncs_and_keeps_writing() {
    let Some(nats) = Nats::start() else { return };
    let a = RHost::open(&nats, "a").await;
    let b = RHost::open(&nats, "b").await;
    a.create("r", SyncStrategy::Eventual, json!({"n": 0})).await;
    a.ctx
        .write(OPERATOR, "r", Change::Merge(json!({"n": 1})), Some(1))
        .await
        .unwrap();
    b.caught_up(a.ctx.kv_revision("r").unwrap()).await;
    let RHost {
        ctx,
        cluster,
        sync,
        dir,
    } = b;
    drop(sync);
    drop(ctx);
    drop(cluster);
    for n in 2..=4 {
        a.ctx
            .write(OPERATOR, "r", Change::Merge(json!({"n": n})), Some(n))
            .await
            .unwrap();
    }
    // The same data directory, once the old store let go of it.
    let ctx = loop {
        match crate::common::context_service_with(
            qi_host::StoreConfig::at(dir.path()),
            ContextConfig::default(),
        )
        .await
        {
            Ok(c) => break c,
            Err(e) if e.contains("owns the data directory") => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    };
    let cluster = Cluster::connect(ClusterConfig::new(nats.url(), "b"), None)
        .await
        .unwrap();
    let sync = ContextSync::start(&cluster, &ctx).await.unwrap();
    let b = RHost {
        ctx,
        cluster,
        sync,
        dir,
    };
    b.caught_up(a.ctx.kv_revision("r").unwrap()).await;
    assert_eq!(b.doc("r").await, (5, json!({"n": 4})));
    b.ctx
        .write(OPERATOR, "r", Change::Merge(json!({"b": 1})), Some(5))
        .await
        .unwrap();
    a.caught_up(b.ctx.kv_revision("r").unwrap()).await;
    assert_eq!(a.doc("r").await, (6, json!({"n": 4, "b": 1})));
    let history: Vec<u64> = b
        .ctx
        .history(OPERATOR, "r", 100)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    // Newest first, each version once.
    let mut unique = history.clone();
    unique.sort_unstable_by(|x, y| y.cmp(x));
    unique.dedup();
    assert_eq!(unique, history, "b's history after the restart");
}

/// A context's entry deleted from outside the cluster (`nats kv del`): the next write on a
/// host that held it stores it as a new entry instead of failing until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_whose_entry_was_deleted_from_outside_is_stored_again_at_its_next_write() {
    let Some(nats) = Nats::start() else { return };
    let a = RHost::open(&nats, "a").await;
    a.create("gone", SyncStrategy::Strong, json!({"n": 0}))
        .await;
    let kv = a.kv().await;
    kv.delete(key(&a.cluster, "gone")).await.unwrap();
    a.ctx
        .write(OPERATOR, "gone", Change::Put(json!({"n": 1})), Some(1))
        .await
        .unwrap();
    let entry = kv.entry(key(&a.cluster, "gone")).await.unwrap().unwrap();
    let stored: ReplicatedContext = serde_json::from_slice(&entry.value).unwrap();
    assert_eq!((stored.version, stored.doc), (2, json!({"n": 1})));
}

/// An entry stamped ahead of the host's clock: within `MAX_CLOCK_AHEAD_MS` it is installed;
/// past it, it is refused (it would pin every host's HLC to that time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_stamped_just_within_the_clock_bound_is_installed_and_just_past_it_is_refused() {
    use qi_host::context::replica::MAX_CLOCK_AHEAD_MS;
    let Some(nats) = Nats::start() else { return };
    let a = RHost::open(&nats, "a").await;
    a.create("t", SyncStrategy::Strong, json!({"n": 0})).await;
    let kv = a.kv().await;
    let entry = kv.entry(key(&a.cluster, "t")).await.unwrap().unwrap();
    let mut record: ReplicatedContext = serde_json::from_slice(&entry.value).unwrap();
    record.version = 2;
    record.doc = json!({"n": 1});
    // A minute of slack for the test's own run: the bound is taken from the host's clock now.
    let now = a.ctx.now_ms();
    record.hlc.wall_ms = now + MAX_CLOCK_AHEAD_MS - 1_000;
    a.ctx
        .install_replicated(entry.revision + 1, record.clone())
        .await
        .unwrap();
    assert_eq!(a.doc("t").await, (2, json!({"n": 1})));
    record.version = 3;
    record.doc = json!({"n": 2});
    record.hlc.wall_ms = a.ctx.now_ms() + MAX_CLOCK_AHEAD_MS + 1_000;
    let e = a
        .ctx
        .install_replicated(entry.revision + 2, record)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ContextError::Cluster { message, .. } if message.contains("MAX_CLOCK_AHEAD_MS")),
        "{e}"
    );
    assert_eq!(a.doc("t").await, (2, json!({"n": 1})));
}
