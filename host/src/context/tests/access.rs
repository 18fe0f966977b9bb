//! Access to contexts: every permission alone, revocation, expiry, what a sharer may grant,
//! and disconnected agents.

use super::*;

#[tokio::test]
async fn each_permission_is_refused_when_missing_revoked_or_expired_and_every_refusal_reported() {
    let f = fixture().await;
    agents(&f.svc, &["owner", "granted", "none", "expired", "revoked"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"a": 1}),
    )
    .await;

    type Attempt = for<'s> fn(
        &'s ContextService,
        &'static str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), ContextError>> + Send + 's>,
    >;
    let ops: [(Permission, Attempt); 4] = [
        (Permission::Read, |s, a| {
            Box::pin(async move { s.get(a, "c").await.map(|_| ()) })
        }),
        (Permission::Write, |s, a| {
            Box::pin(async move {
                // Eventual: the base is required; version 1 is always retained here.
                s.write(a, "c", Change::Merge(json!({"w": a})), Some(1))
                    .await
                    .map(|_| ())
            })
        }),
        (Permission::Share, |s, a| {
            // Its grant is taken back at once: a delegated sharer may change only grants it
            // made, so the next sharer's would otherwise be refused for that.
            Box::pin(async move {
                let none = ["none".to_string()];
                s.share(a, "c", &none, &[Permission::Share], Some(1))
                    .await?;
                s.revoke(a, "c", &none).await
            })
        }),
        (Permission::Delete, |_s, _a| Box::pin(async move { Ok(()) })),
    ];
    for (perm, attempt) in ops {
        if perm == Permission::Delete {
            continue;
        }
        // granted: only this permission (plus what the op needs to be tested alone).
        f.svc
            .share("owner", "c", &["granted".into()], &[perm], None)
            .await
            .unwrap();
        let now = f.svc.now_ms();
        f.svc
            .share("owner", "c", &["expired".into()], &[perm], Some(now + 10))
            .await
            .unwrap();
        f.svc
            .share("owner", "c", &["revoked".into()], &[perm], None)
            .await
            .unwrap();
        f.svc
            .revoke("owner", "c", &["revoked".into()])
            .await
            .unwrap();
        assert!(attempt(&f.svc, "granted").await.is_ok(), "{perm} granted");
        for who in ["none", "revoked"] {
            let e = attempt(&f.svc, who).await.unwrap_err();
            assert!(
                matches!(e, ContextError::AccessDenied { .. }),
                "{perm} {who}: {e}"
            );
        }
        // Not yet expired, then expired without any sweep running.
        assert!(
            attempt(&f.svc, "expired").await.is_ok(),
            "{perm} before expiry"
        );
        f.clock.advance(10);
        let e = attempt(&f.svc, "expired").await.unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        // A share of another permission does not grant this one.
        let other = if perm == Permission::Read {
            Permission::Write
        } else {
            Permission::Read
        };
        f.svc
            .share("owner", "c", &["granted".into()], &[other], None)
            .await
            .unwrap();
        assert!(
            matches!(
                attempt(&f.svc, "granted").await,
                Err(ContextError::AccessDenied { .. })
            ),
            "{perm} with only {other}"
        );
        f.clock.advance(1_000);
        for a in ["owner"] {
            f.svc.heartbeat(a).await.unwrap();
        }
        for a in ["granted", "none", "expired", "revoked"] {
            f.svc.heartbeat(a).await.unwrap();
        }
    }
    // Delete.
    f.svc
        .share(
            "owner",
            "c",
            &["granted".into()],
            &[Permission::Read, Permission::Write],
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        f.svc.delete("granted", "c").await,
        Err(ContextError::AccessDenied { .. })
    ));
    f.svc
        .share(
            "owner",
            "c",
            &["granted".into()],
            &[Permission::Delete],
            None,
        )
        .await
        .unwrap();
    f.svc.delete("granted", "c").await.unwrap();
    // Every refusal left an access-violation conflict and event.
    let history = f
        .svc
        .bus()
        .history(
            &EventFilter {
                event_types: vec![EventType::Conflict],
                ..Default::default()
            },
            None,
            1_000,
        )
        .await
        .unwrap();
    let violations = history
        .iter()
        .filter(|e| e.data["conflictType"] == "access-violation")
        .count();
    // Per permission: none, revoked, expired, and granted with only another permission;
    // then the delete without the permission.
    assert_eq!(violations, 3 * 4 + 1);
}

#[tokio::test]
async fn sharers_cannot_grant_more_than_they_hold() {
    let f = fixture().await;
    agents(&f.svc, &["owner", "s", "t"]).await;
    ctx(&f.svc, "owner", "c", SyncStrategy::Strong, json!({})).await;
    f.svc
        .share(
            "owner",
            "c",
            &["s".into()],
            &[Permission::Read, Permission::Share],
            None,
        )
        .await
        .unwrap();
    f.svc
        .share("s", "c", &["t".into()], &[Permission::Read], None)
        .await
        .unwrap();
    let e = f
        .svc
        .share("s", "c", &["t".into()], &[Permission::Write], None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot grant write"), "{e}");
    assert_eq!(f.svc.shared_contexts("t").len(), 1);
}

#[tokio::test]
async fn disconnected_agents_lose_access_and_subscriptions() {
    let f = fixture().await;
    agents(&f.svc, &["owner", "r"]).await;
    ctx(&f.svc, "owner", "c", SyncStrategy::Eventual, json!({})).await;
    share_all(&f.svc, "c", "owner", &["r"]).await;
    let mut sub = f.svc.subscribe("r", "c", SubscribeFrom::Now).await.unwrap();
    f.svc
        .write("owner", "c", Change::Merge(json!({"a": 1})), Some(1))
        .await
        .unwrap();
    let e = sub
        .next_timeout(Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.event_type, EventType::Updated);
    f.clock.advance(31_000);
    f.svc.heartbeat("owner").await.unwrap();
    // Refused before any sweep ran ...
    assert!(matches!(
        f.svc.get("r", "c").await,
        Err(ContextError::AccessDenied { .. })
    ));
    // ... and the sweep marks it, emits the event and ends its subscription.
    assert_eq!(
        f.svc.sweep_disconnected().await.unwrap(),
        vec!["r".to_string()]
    );
    let mut ended = false;
    for _ in 0..10 {
        match sub.next_timeout(Duration::from_secs(60)).await {
            Err(_) => {
                ended = true;
                break;
            }
            Ok(Some(_)) => continue,
            Ok(None) => break,
        }
    }
    assert!(ended, "subscription ended");
    f.svc.heartbeat("r").await.unwrap();
    assert!(f.svc.get("r", "c").await.is_ok());
}

#[tokio::test]
async fn a_rollback_without_write_is_refused_before_any_version_is_read() {
    let f = fixture().await;
    agents(&f.svc, &["owner", "reader"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"a": 1}),
    )
    .await;
    f.svc
        .share("owner", "c", &["reader".into()], &[Permission::Read], None)
        .await
        .unwrap();
    // Whether a version exists or not, an agent without `write` learns only that it may not
    // roll back (the version was read, and its absence reported, before the check).
    for version in [1, 99] {
        let e = f.svc.rollback("reader", "c", version).await.unwrap_err();
        assert!(
            matches!(e, ContextError::AccessDenied { .. }),
            "{version}: {e}"
        );
    }
    // The owner rolls back to version 1 and is told about a missing one.
    f.svc.rollback("owner", "c", 1).await.unwrap();
    let e = f.svc.rollback("owner", "c", 99).await.unwrap_err();
    assert!(matches!(e, ContextError::Invalid { .. }), "{e}");
}

/// A context written before encryption was enabled has no data key until its owner's next
/// write under the master key. A refused access to it is still refused as `AccessDenied`
/// (on the writer's own path and on the prepared one, the document in memory), not failed as a
/// store error; a denial never gives the context its key (a refused agent must not make the
/// writer reseal a history), so it is recorded once the context has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_on_a_context_from_before_encryption_is_access_denied() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture_at(StoreConfig::at(dir.path())).await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(&f.svc, "a", "x", SyncStrategy::Strong, json!({"n": 0})).await;
    ctx(&f.svc, "a", "y", SyncStrategy::Strong, json!({"n": 0})).await;
    drop(f);
    let f = fixture_at(StoreConfig {
        master_key: Some(crate::store::crypto::MasterKey::from_hex(&"42".repeat(32)).unwrap()),
        ..StoreConfig::at(dir.path())
    })
    .await;
    // y read back into memory first, so its write is prepared; x's is worked out on the writer.
    f.svc.get("a", "y").await.unwrap();
    let violations = |id: &'static str| {
        let svc = f.svc.clone();
        async move {
            let all = svc.conflicts("a", id).await.unwrap();
            all.iter()
                .filter(|c| c.conflict_type == ConflictType::AccessViolation)
                .count()
        }
    };
    for id in ["x", "y"] {
        let refused = f
            .svc
            .write("b", id, Change::Put(json!({"n": 1})), Some(1))
            .await;
        assert!(
            matches!(refused, Err(ContextError::AccessDenied { .. })),
            "{id}: {refused:?}"
        );
        assert_eq!(
            violations(id).await,
            0,
            "{id}: no key to seal the record with"
        );
        // The owner still writes, and that gives the context its key.
        let w = f
            .svc
            .write("a", id, Change::Put(json!({"n": 2})), Some(1))
            .await
            .unwrap();
        assert_eq!(w.version, 2, "{id}");
        let refused = f
            .svc
            .write("b", id, Change::Put(json!({"n": 3})), Some(2))
            .await;
        assert!(
            matches!(refused, Err(ContextError::AccessDenied { .. })),
            "{id}: {refused:?}"
        );
        assert_eq!(violations(id).await, 1, "{id}: recorded once sealed");
    }
}
