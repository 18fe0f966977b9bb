//! Shared contexts across hosts: three hosts in this process, each with its own SQLite
//! store and context service, replicating through one real `nats-server`'s KV bucket.

use super::Nats;
use qi_host::cluster::contexts::{CONTEXTS_BUCKET, HEADROOM, key};
use qi_host::cluster::{Cluster, ClusterConfig, ContextSync};
use qi_host::context::{
    AgentCapabilities, Change, ConflictResolution, ContextConfig, ContextError, ContextService,
    ContextStatus, NewContext, OPERATOR, Permission, Refusal, SyncStrategy,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// A host of these tests: its context service and its link to the cluster.
pub struct Host {
    pub ctx: ContextService,
    pub cluster: Cluster,
    pub sync: ContextSync,
    /// The data directory.
    pub dir: tempfile::TempDir,
}

impl Host {
    pub async fn open(nats: &Nats, name: &str) -> Host {
        Host::open_with(nats, name, ContextConfig::default(), None).await
    }

    /// A host whose context store is configured by `context`, with `timeout` as its
    /// cluster request timeout when given.
    pub async fn open_with(
        nats: &Nats,
        name: &str,
        context: ContextConfig,
        timeout: Option<Duration>,
    ) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let config = qi_host::StoreConfig::at(dir.path());
        let ctx = crate::common::context_service_with(config, context)
            .await
            .unwrap();
        let mut cc = ClusterConfig::new(nats.url(), name);
        if let Some(t) = timeout {
            cc.request_timeout = t;
        }
        let cluster = Cluster::connect(cc, None).await.unwrap();
        let sync = ContextSync::start(&cluster, &ctx).await.unwrap();
        Host {
            ctx,
            cluster,
            sync,
            dir,
        }
    }

    /// Creates context `id` as the operator.
    pub async fn create(&self, id: &str, strategy: SyncStrategy, doc: Value) {
        self.ctx
            .create(OPERATOR, new_context(id, strategy, doc))
            .await
            .unwrap();
    }

    /// Waits until this host's watch has handled the bucket up to `revision`.
    pub async fn caught_up(&self, revision: u64) {
        let mut installed = self.sync.installed();
        installed.wait_for(|r| *r >= revision).await.unwrap();
    }

    pub async fn doc(&self, id: &str) -> (u64, Value) {
        let v = self.ctx.get(OPERATOR, id).await.unwrap();
        (v.version, v.doc)
    }

    /// The bucket, opened directly (as a peer on the NATS server would).
    pub async fn kv(&self) -> async_nats::jetstream::kv::Store {
        let js = async_nats::jetstream::new(self.cluster.client().clone());
        js.get_key_value(CONTEXTS_BUCKET).await.unwrap()
    }

    /// Returns once the client is connected again.
    pub async fn reconnected(&self) {
        while !self.cluster.connected() {
            let _ = self.cluster.client().flush().await;
        }
    }
}

async fn three(nats: &Nats) -> [Host; 3] {
    [
        Host::open(nats, "a").await,
        Host::open(nats, "b").await,
        Host::open(nats, "c").await,
    ]
}

pub fn new_context(id: &str, strategy: SyncStrategy, doc: Value) -> NewContext {
    NewContext {
        id: Some(id.into()),
        context_type: "counter".into(),
        doc,
        strategy,
        ..Default::default()
    }
}

/// The newest entry revision any host holds for `id`.
fn newest(hosts: &[Host], id: &str) -> u64 {
    hosts
        .iter()
        .filter_map(|h| h.ctx.kv_revision(id))
        .max()
        .unwrap()
}

/// One increment of `doc.n` under `strong`: read, write based on the version read, again
/// when another writer got there first. Returns how many tries were stale.
async fn increment(ctx: &ContextService, id: &str) -> u64 {
    let mut stale = 0;
    loop {
        let v = ctx.get(OPERATOR, id).await.unwrap();
        let n = v.doc["n"].as_u64().unwrap();
        match ctx
            .write(
                OPERATOR,
                id,
                Change::Put(json!({"n": n + 1})),
                Some(v.version),
            )
            .await
        {
            Ok(_) => return stale,
            Err(ContextError::Refused {
                refusal: Refusal::Stale { .. },
                ..
            }) => stale += 1,
            Err(e) => panic!("increment failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strong_counters_incremented_from_three_hosts_end_at_the_exact_sum() {
    let Some(nats) = Nats::start() else { return };
    let hosts = Arc::new(three(&nats).await);
    hosts[0]
        .ctx
        .create(
            OPERATOR,
            new_context("count", SyncStrategy::Strong, json!({"n": 0})),
        )
        .await
        .unwrap();
    let created = hosts[0].ctx.kv_revision("count").unwrap();
    assert!(created > 0, "the create was stored in the bucket");
    for h in hosts.iter() {
        h.caught_up(created).await;
    }
    const WRITERS: usize = 4;
    const EACH: u64 = 15;
    let mut tasks = Vec::new();
    for h in 0..3 {
        for _ in 0..WRITERS {
            let hosts = hosts.clone();
            tasks.push(tokio::spawn(async move {
                let mut stale = 0;
                for _ in 0..EACH {
                    stale += increment(&hosts[h].ctx, "count").await;
                }
                stale
            }));
        }
    }
    let mut stale = 0;
    for t in tasks {
        stale += t.await.unwrap();
    }
    let total = 3 * WRITERS as u64 * EACH;
    let last = newest(&hosts[..], "count");
    for (i, h) in hosts.iter().enumerate() {
        h.caught_up(last).await;
        let (version, doc) = h.doc("count").await;
        assert_eq!(
            doc,
            json!({"n": total}),
            "host {i}: {stale} stale tries in all"
        );
        assert_eq!(version, 1 + total, "host {i}: one version per increment");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strong_write_based_on_a_version_another_host_replaced_is_stale() {
    let Some(nats) = Nats::start() else { return };
    let [a, b, _c] = three(&nats).await;
    a.create("s", SyncStrategy::Strong, json!({"v": 0})).await;
    b.caught_up(a.ctx.kv_revision("s").unwrap()).await;
    a.ctx
        .write(OPERATOR, "s", Change::Put(json!({"v": "a"})), Some(1))
        .await
        .unwrap();
    // Host b has not necessarily seen a's write: its write based on version 1 is refused
    // all the same, and b then holds a's version.
    let e = b
        .ctx
        .write(OPERATOR, "s", Change::Put(json!({"v": "b"})), Some(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ContextError::Refused {
                refusal: Refusal::Stale { current: 2, .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(b.doc("s").await, (2, json!({"v": "a"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_of_one_id_on_two_hosts_makes_one_context() {
    let Some(nats) = Nats::start() else { return };
    let [a, b, _c] = three(&nats).await;
    a.create("one", SyncStrategy::Strong, json!({"by": "a"}))
        .await;
    let e = b
        .ctx
        .create(
            OPERATOR,
            new_context("one", SyncStrategy::Strong, json!({"by": "b"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ContextError::AlreadyExists(_)), "{e}");
    assert_eq!(b.doc("one").await, (1, json!({"by": "a"})));
    // Generated ids do not collide: each host's second context gets an id no host used.
    let generated = NewContext {
        context_type: "t".into(),
        ..Default::default()
    };
    let x = a.ctx.create(OPERATOR, generated.clone()).await.unwrap();
    let y = b.ctx.create(OPERATOR, generated).await.unwrap();
    assert_ne!(x.context_id, y.context_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_writes_from_two_hosts_conflict_once_and_agree() {
    let Some(nats) = Nats::start() else { return };
    let [a, b, c] = three(&nats).await;
    a.ctx
        .create(
            OPERATOR,
            NewContext {
                resolution: ConflictResolution::LastWriteWins,
                ..new_context("e", SyncStrategy::Eventual, json!({"f": 0}))
            },
        )
        .await
        .unwrap();
    b.caught_up(a.ctx.kv_revision("e").unwrap()).await;
    // One agent on each host, each granted write on its own host.
    for (h, agent) in [(&a, "agent-a"), (&b, "agent-b")] {
        h.ctx
            .register_agent(agent, AgentCapabilities::default())
            .await
            .unwrap();
        h.ctx
            .share(
                OPERATOR,
                "e",
                &[agent.to_string()],
                &[Permission::Read, Permission::Write],
                None,
            )
            .await
            .unwrap();
    }
    // Both based on version 1: the second to reach the bucket meets the first's change.
    a.ctx
        .write("agent-a", "e", Change::Merge(json!({"f": "a"})), Some(1))
        .await
        .unwrap();
    let second = b
        .ctx
        .write("agent-b", "e", Change::Merge(json!({"f": "b"})), Some(1))
        .await
        .unwrap();
    assert_eq!(second.conflicts.len(), 1, "{second:?}");
    let hosts = [a, b, c];
    let last = newest(&hosts[..], "e");
    for h in &hosts {
        h.caught_up(last).await;
        // The later write wins (last-writer-wins by HLC) on every host.
        assert_eq!(h.doc("e").await.1, json!({"f": "b"}));
    }
    // Recorded once, by the host that detected it.
    let recorded: Vec<usize> = conflict_counts(&hosts, "e").await;
    assert_eq!(recorded, vec![0, 1, 0]);
}

async fn conflict_counts(hosts: &[Host], id: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for h in hosts {
        out.push(h.ctx.conflicts(OPERATOR, id).await.unwrap().len());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_just_under_the_servers_max_payload_is_stored_and_one_just_over_is_refused() {
    let Some(nats) = Nats::start() else { return };
    let a = Host::open(&nats, "a").await;
    let max = a.cluster.client().server_info().max_payload - HEADROOM;
    a.create("big", SyncStrategy::Strong, json!({"s": ""}))
        .await;
    // The record's size for a string of n bytes is the empty one's plus n.
    let kv = a.kv().await;
    let k = key(&a.cluster, "big");
    let empty = kv.get(k.clone()).await.unwrap().unwrap().len();
    // A version number and timestamps one digit longer at most.
    let slack = 8;
    let inside = max - empty - slack;
    let r = a
        .ctx
        .write(
            OPERATOR,
            "big",
            Change::Put(json!({"s": "x".repeat(inside)})),
            Some(1),
        )
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    let stored = kv.get(k.clone()).await.unwrap().unwrap().len();
    assert!(
        stored <= max && stored + 2 * slack > max,
        "{stored} of {max}"
    );
    let past = max - empty + slack;
    let e = a
        .ctx
        .write(
            OPERATOR,
            "big",
            Change::Put(json!({"s": "y".repeat(past)})),
            Some(2),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ContextError::Cluster { message, .. } if message.contains("max_payload")),
        "{e}"
    );
    // Nothing of it was committed here either.
    let (version, doc) = a.doc("big").await;
    assert_eq!(version, 2);
    assert_eq!(doc["s"].as_str().unwrap().len(), inside);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_while_nats_is_down_fails_and_commits_nothing_then_works_after_it_returns() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let a = Host::open(&nats, "a").await;
    a.create("d", SyncStrategy::Strong, json!({"n": 0})).await;
    nats.kill();
    // The client notices the closed connection.
    while a.cluster.connected() {
        tokio::task::yield_now().await;
    }
    let e = a
        .ctx
        .write(OPERATOR, "d", Change::Put(json!({"n": 1})), Some(1))
        .await
        .unwrap_err();
    assert!(matches!(e, ContextError::Cluster { .. }), "{e}");
    assert_eq!(a.doc("d").await, (1, json!({"n": 0})));
    nats.restart();
    a.reconnected().await;
    a.ctx
        .write(OPERATOR, "d", Change::Put(json!({"n": 1})), Some(1))
        .await
        .unwrap();
    assert_eq!(a.doc("d").await, (2, json!({"n": 1})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_sees_the_other_hosts_changes_as_local_events_and_a_deleted_context_stays_deleted() {
    let Some(nats) = Nats::start() else { return };
    let [a, b, _c] = three(&nats).await;
    let mut sub = b
        .ctx
        .bus()
        .subscribe(
            qi_host::events::EventFilter::all(),
            qi_host::events::SubscribeFrom::Now,
        )
        .unwrap();
    a.create("w", SyncStrategy::Strong, json!({"n": 0})).await;
    a.ctx
        .write(OPERATOR, "w", Change::Put(json!({"n": 1})), Some(1))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = sub.next().await.unwrap();
        if e.context_id.as_deref() == Some("w") {
            assert_eq!(e.data["replicatedFrom"], "a", "{e:?}");
            seen.push((e.event_type, e.data["version"].clone()));
        }
    }
    assert_eq!(
        seen,
        vec![
            (qi_host::events::EventType::Created, json!(1)),
            (qi_host::events::EventType::Updated, json!(2)),
        ]
    );
    a.ctx.delete(OPERATOR, "w").await.unwrap();
    b.caught_up(a.ctx.kv_revision("w").unwrap()).await;
    let v = b.ctx.get(OPERATOR, "w").await;
    assert!(
        matches!(&v, Err(ContextError::NotFound(_)))
            || matches!(&v, Ok(v) if v.status == ContextStatus::Deleted),
        "{v:?}"
    );
}
