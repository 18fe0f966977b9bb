//! Red team: reads of evicted contexts racing changes, what the writer keeps after a batch,
//! and writer-only state in a batch that fails to commit.

use super::hot_tier::bounded;
use super::visibility::queue;
use super::*;
use crate::store::{READ_CONNECTIONS, StoreError};

/// Every read connection of a store, held until [`Reads::open`].
struct Reads {
    release: Vec<std::sync::mpsc::Sender<()>>,
    held: Vec<tokio::task::JoinHandle<Result<(), StoreError>>>,
}

impl Reads {
    /// Returns once every read connection is inside a read that waits for `open`.
    async fn hold(store: &Store) -> Reads {
        let (entered, inside) = std::sync::mpsc::channel::<()>();
        let (mut release, mut held) = (Vec::new(), Vec::new());
        for _ in 0..READ_CONNECTIONS {
            let (open, gate) = std::sync::mpsc::channel::<()>();
            let (entered, store) = (entered.clone(), store.clone());
            held.push(tokio::spawn(async move {
                store
                    .read(move |_| {
                        entered.send(()).unwrap();
                        gate.recv().ok();
                        Ok(())
                    })
                    .await
            }));
            release.push(open);
        }
        tokio::task::spawn_blocking(move || {
            for _ in 0..READ_CONNECTIONS {
                inside.recv().unwrap();
            }
        })
        .await
        .unwrap();
        Reads { release, held }
    }

    async fn open(self) {
        drop(self.release);
        for h in self.held {
            h.await.unwrap().unwrap();
        }
    }
}

/// `b` may read `c` (evicted: nothing is kept hot), then is revoked and the owner writes a
/// secret, while `read` (queued before) waits for a read connection.
async fn revoked_while_loading<T>(
    f: &Fixture,
    read: impl std::future::Future<Output = T> + Send,
) -> T {
    let reads = Reads::hold(f.svc.store()).await;
    // Passes its access check now, then waits to load the evicted document.
    let read = queue(read);
    f.svc.revoke("owner", "c", &["b".into()]).await.unwrap();
    f.svc
        .write("owner", "c", Change::Merge(json!({"secret": 1})), Some(1))
        .await
        .unwrap();
    reads.open().await;
    read.await
}

async fn shared_evicted_context() -> Fixture {
    let f = bounded(StoreConfig::in_memory(), 0).await;
    agents(&f.svc, &["owner", "b"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"x": 1}),
    )
    .await;
    f.svc
        .share("owner", "c", &["b".into()], &[Permission::Read], None)
        .await
        .unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_get_does_not_return_what_was_written_after_its_reader_was_revoked() {
    let f = shared_evicted_context().await;
    let got = revoked_while_loading(&f, f.svc.get("b", "c")).await;
    match got {
        Err(ContextError::AccessDenied { .. }) => {}
        Ok(view) => assert_eq!(view.doc, json!({"x": 1}), "b read past its revoke"),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_list_does_not_return_what_was_written_after_its_reader_was_revoked() {
    let f = shared_evicted_context().await;
    let listed = revoked_while_loading(&f, f.svc.list("b", None, None))
        .await
        .unwrap();
    for view in listed {
        assert_eq!(view.doc, json!({"x": 1}), "b listed past its revoke");
    }
}
