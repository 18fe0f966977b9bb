//! Committed-only visibility: readers, access checks and events see a change only once its
//! transaction has committed; a batch that fails to commit leaves no trace; operations of one
//! batch see what earlier ones in it staged.

use super::*;
use crate::store::StoreError;
use std::future::Future;
use std::pin::Pin;

/// Holds the store's writer inside a write until [`Gate::open`]: what is queued meanwhile
/// forms one batch.
pub(super) struct Gate {
    release: std::sync::mpsc::Sender<()>,
    held: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Gate {
    /// Queues a write that blocks the writer; returns once the writer is inside it.
    pub(super) async fn hold(store: &Store) -> Gate {
        let (entered, inside) = std::sync::mpsc::channel::<()>();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let held = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(move |_| {
                        entered.send(()).unwrap();
                        gate.recv().ok();
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || inside.recv().unwrap())
            .await
            .unwrap();
        Gate { release, held }
    }

    pub(super) async fn open(self) -> Result<(), StoreError> {
        self.release.send(()).unwrap();
        self.held.await.unwrap()
    }
}

pub(super) type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls `future` once, which queues its write (writes queued this way keep their order).
pub(super) fn queue<'a, T>(future: impl Future<Output = T> + Send + 'a) -> Pending<'a, T> {
    let mut future: Pending<'a, T> = Box::pin(future);
    let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(future.as_mut().poll(&mut noop).is_pending());
    future
}

/// A write that makes its batch's `COMMIT` fail (a deferred foreign key is checked only
/// then) while the write itself succeeds.
pub(super) async fn poison_tables(store: &Store) {
    store
        .write(|ctx| {
            ctx.tx().execute_batch(
                "CREATE TABLE parent(id INTEGER PRIMARY KEY);
                 CREATE TABLE child(parent INTEGER REFERENCES parent(id) \
                 DEFERRABLE INITIALLY DEFERRED);",
            )?;
            Ok(())
        })
        .await
        .unwrap();
}

pub(super) fn poison(store: &Store) -> Pending<'static, Result<(), StoreError>> {
    let store = store.clone();
    queue(async move {
        store
            .write(|ctx| {
                ctx.tx()
                    .execute("INSERT INTO child(parent) VALUES (42)", [])?;
                Ok(())
            })
            .await
    })
}

pub(super) fn failed_commit<T: std::fmt::Debug>(r: Result<T, ContextError>) {
    assert!(
        matches!(r, Err(ContextError::Store(StoreError::Commit { .. }))),
        "{r:?}"
    );
}

fn change_events() -> EventFilter {
    EventFilter {
        event_types: vec![
            EventType::Created,
            EventType::Updated,
            EventType::Deleted,
            EventType::Shared,
            EventType::Revoked,
            EventType::AgentRegistered,
        ],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_to_commit_leaves_no_trace() {
    let f = fixture().await;
    let store = f.svc.store().clone();
    agents(&f.svc, &["owner", "a"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"x": 1}),
    )
    .await;
    f.svc
        .set_labels(OPERATOR, "c", &["blue".into()])
        .await
        .unwrap();
    poison_tables(&store).await;
    let mut events = f
        .svc
        .bus()
        .subscribe(change_events(), SubscribeFrom::Now)
        .unwrap();

    // Each of these would succeed on its own; the poisoned write makes their COMMIT fail.
    let (a, red) = (vec!["a".to_string()], vec!["red".to_string()]);
    let gate = Gate::hold(&store).await;
    let share = queue(f.svc.share("owner", "c", &a, &[Permission::Read], None));
    let write = queue(
        f.svc
            .write("owner", "c", Change::Merge(json!({"x": 2})), Some(1)),
    );
    let create = queue(f.svc.create(
        "owner",
        NewContext {
            id: Some("d".into()),
            context_type: "notes".into(),
            doc: json!({}),
            ..Default::default()
        },
    ));
    let register = queue(f.svc.register_agent("late", AgentCapabilities::default()));
    let relabel = queue(f.svc.set_labels(OPERATOR, "c", &red));
    let poisoned = poison(&store);
    gate.open().await.unwrap();
    failed_commit(share.await);
    failed_commit(write.await);
    failed_commit(create.await);
    failed_commit(register.await);
    failed_commit(relabel.await);
    assert!(matches!(poisoned.await, Err(StoreError::Commit { .. })));

    // Events: the next change event delivered is the one after the failed batch.
    let after = f
        .svc
        .write("owner", "c", Change::Merge(json!({"y": 1})), Some(1))
        .await
        .expect("the failed write left the context at version 1");
    assert_eq!(after.version, 2);
    let next = events.next().await.unwrap();
    assert_eq!(
        (next.event_type, next.data["version"].clone()),
        (EventType::Updated, json!(2))
    );

    // Reads, access checks, grants, shares, agents, labels: as before the batch.
    let view = f.svc.get("owner", "c").await.unwrap();
    assert_eq!(view.doc, json!({"x": 1, "y": 1}));
    assert!(f.svc.grants("c").is_empty());
    assert!(f.svc.shared_contexts("a").is_empty());
    assert!(matches!(
        f.svc.allowed("a", "c", Permission::Read),
        Err(ContextError::AccessDenied { .. })
    ));
    assert!(matches!(
        f.svc.get("a", "c").await,
        Err(ContextError::AccessDenied { .. })
    ));
    assert!(matches!(
        f.svc.get("owner", "d").await,
        Err(ContextError::NotFound(_))
    ));
    let ids: Vec<String> = f
        .svc
        .registered_agents()
        .into_iter()
        .map(|a| a.agent_id)
        .collect();
    assert_eq!(ids, ["a", "owner"]);
    assert_eq!(f.svc.labels("c"), Some(vec!["blue".to_string()]));
    assert!(
        f.svc
            .list("owner", None, None)
            .await
            .unwrap()
            .iter()
            .all(|c| c.id != "d")
    );

    // The writer's own state was undone too: the same operations now succeed, once.
    f.svc
        .share("owner", "c", &["a".into()], &[Permission::Read], None)
        .await
        .unwrap();
    assert_eq!(f.svc.get("a", "c").await.unwrap().version, 2);
    f.svc
        .register_agent("late", AgentCapabilities::default())
        .await
        .unwrap();
    ctx(&f.svc, "owner", "d", SyncStrategy::Eventual, json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_invisible_until_its_batch_commits() {
    let f = fixture().await;
    let store = f.svc.store().clone();
    agents(&f.svc, &["owner", "a"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"x": 1}),
    )
    .await;

    // The share runs, then the writer is held inside the next write of the same batch.
    let a = vec!["a".to_string()];
    let gate = Gate::hold(&store).await;
    let share = queue(f.svc.share("owner", "c", &a, &[Permission::Read], None));
    let write = queue(
        f.svc
            .write("owner", "c", Change::Merge(json!({"x": 2})), Some(1)),
    );
    let (entered, inside) = std::sync::mpsc::channel::<()>();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let second = queue({
        let store = store.clone();
        async move {
            store
                .write(move |_| {
                    entered.send(()).unwrap();
                    wait.recv().ok();
                    Ok(())
                })
                .await
        }
    });
    gate.open().await.unwrap();
    tokio::task::spawn_blocking(move || inside.recv().unwrap())
        .await
        .unwrap();
    // Staged, not committed: nobody sees the grant or the new value.
    assert!(f.svc.grants("c").is_empty());
    assert!(f.svc.allowed("a", "c", Permission::Read).is_err());
    assert!(f.svc.shared_contexts("a").is_empty());
    let seen = f.svc.list("owner", None, None).await.unwrap();
    assert_eq!(
        (seen.len(), seen[0].version, seen[0].doc.clone()),
        (1, 1, json!({"x": 1}))
    );
    release.send(()).unwrap();
    share.await.unwrap();
    assert_eq!(write.await.unwrap().version, 2);
    second.await.unwrap();
    assert!(f.svc.allowed("a", "c", Permission::Read).is_ok());
    assert_eq!(f.svc.get("a", "c").await.unwrap().doc, json!({"x": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_of_one_batch_see_what_earlier_ones_staged() {
    same_batch(fixture().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_of_one_batch_see_what_earlier_ones_staged_with_nothing_kept_hot() {
    same_batch(super::hot_tier::bounded(StoreConfig::in_memory(), 0).await).await;
}

async fn same_batch(f: Fixture) {
    let store = f.svc.store().clone();
    agents(&f.svc, &["owner"]).await;
    ctx(&f.svc, "owner", "m", SyncStrategy::Strong, json!({"x": 0})).await;
    let a = vec!["a".to_string()];
    let gate = Gate::hold(&store).await;
    // An existing context (evicted, with nothing kept hot), changed twice.
    let m1 = queue(
        f.svc
            .write("owner", "m", Change::Merge(json!({"x": 1})), Some(1)),
    );
    let m2 = queue(
        f.svc
            .write("owner", "m", Change::Merge(json!({"y": 2})), Some(2)),
    );
    let register = queue(f.svc.register_agent("a", AgentCapabilities::default()));
    let create = queue(f.svc.create(
        "owner",
        NewContext {
            id: Some("n".into()),
            context_type: "notes".into(),
            doc: json!({"x": 1}),
            ..Default::default()
        },
    ));
    let write = queue(
        f.svc
            .write("owner", "n", Change::Merge(json!({"x": 2})), Some(1)),
    );
    let share = queue(f.svc.share("owner", "n", &a, &[Permission::Write], None));
    let by_a = queue(
        f.svc
            .write("a", "n", Change::Merge(json!({"y": 3})), Some(2)),
    );
    gate.open().await.unwrap();
    assert_eq!(m1.await.unwrap().version, 2);
    assert_eq!(m2.await.unwrap().version, 3);
    let m = f.svc.get("owner", "m").await.unwrap();
    assert_eq!(m.doc, json!({"x": 1, "y": 2}));
    register.await.unwrap();
    assert_eq!(create.await.unwrap().version, 1);
    assert_eq!(write.await.unwrap().version, 2);
    share.await.unwrap();
    assert_eq!(by_a.await.unwrap().version, 3);
    let view = f.svc.get("owner", "n").await.unwrap();
    assert_eq!(view.doc, json!({"x": 2, "y": 3}));
}

/// An operation that grants `a` read on `c` in memory (not on disk) and then ends as `end`
/// says (`succeed`, `panic`, or rolls back).
fn grant_then(end: &'static str) -> service::Op<()> {
    Box::new(move |sh, inner, _ctx| {
        let share = Share {
            context_id: "c".into(),
            agent_id: "a".into(),
            permissions: vec![Permission::Read],
            granted_by: "owner".into(),
            granted_at: sh.clock.now_ms(),
            expires_at: None,
            min_trust: None,
        };
        inner
            .shares
            .entry("c".into())
            .or_default()
            .insert("a".into(), share);
        inner.revision += 1;
        match end {
            "panic" => panic!("an operation panicked after changing memory"),
            "succeed" => Ok(()),
            _ => Err(OpError::RolledBack(ContextError::invalid(
                "test",
                "rolled back",
            ))),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_rolls_back_or_panics_is_undone_within_its_batch() {
    let f = fixture().await;
    let store = f.svc.store().clone();
    agents(&f.svc, &["owner", "a"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"x": 1}),
    )
    .await;
    let before = f.svc.shared.committed().revision;
    let gate = Gate::hold(&store).await;
    let rolled_back = queue(f.svc.run(None, grant_then("roll back")));
    let panicked = queue(f.svc.run(None, grant_then("panic")));
    // Later in the same batch, the writer's own state shows neither grant.
    let seen = queue(f.svc.run(
        None,
        Box::new(|_sh, inner, _ctx| {
            let granted = inner.shares.get("c").is_some_and(|m| m.contains_key("a"));
            Ok((granted, inner.revision))
        }),
    ));
    let write = queue(
        f.svc
            .write("owner", "c", Change::Merge(json!({"x": 2})), Some(1)),
    );
    gate.open().await.unwrap();
    assert!(matches!(
        rolled_back.await,
        Err(ContextError::Invalid { .. })
    ));
    assert!(matches!(
        panicked.await,
        Err(ContextError::Store(StoreError::OpPanicked { .. }))
    ));
    assert_eq!(seen.await.unwrap(), (false, before));
    assert_eq!(write.await.unwrap().revision, before + 1);
    assert!(f.svc.grants("c").is_empty());
    assert!(f.svc.allowed("a", "c", Permission::Read).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_published_before_the_hooks_of_its_operation_run() {
    // Events are announced by after-commit hooks an operation registers: whoever an event
    // tells of a change must be able to read it.
    let f = fixture().await;
    agents(&f.svc, &["owner", "a"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"x": 1}),
    )
    .await;
    let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (shared, flag) = (f.svc.shared.clone(), seen.clone());
    let mut grant = grant_then("succeed");
    grant = Box::new(move |sh, inner, ctx| {
        ctx.after_commit(move || {
            let granted = shared
                .committed()
                .shares
                .get("c")
                .is_some_and(|m| m.contains_key("a"));
            flag.store(granted, std::sync::atomic::Ordering::SeqCst);
        });
        grant(sh, inner, ctx)
    });
    f.svc.run(None, grant).await.unwrap();
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst));
    assert!(f.svc.allowed("a", "c", Permission::Read).is_ok());
}
