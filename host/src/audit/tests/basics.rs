//! The chain, the canonical encoding, tampering found by the walk (modified, deleted,
//! reordered), query filters, ordering under concurrent recording, flush, caps.

use super::*;
use serde_json::json;
use sha2::{Digest, Sha256};
#[tokio::test]
async fn entries_form_a_dense_hash_chain() {
    let log = memory_log().await;
    let report = log.verify().await.unwrap();
    assert!(report.is_intact());
    assert_eq!(
        (report.entries, report.last_hash.as_str()),
        (0, GENESIS_HASH)
    );

    for n in 1..=5 {
        log.record(entry(n)).unwrap();
    }
    log.flush().await;
    assert_eq!(log.recorded(), 5);
    let entries = all(&log).await;
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(entries[0].prev_hash, GENESIS_HASH);
    for pair in entries.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    assert!(entries.iter().all(|e| e.hash.len() == 64));
    assert_eq!(entries[2].decision, AuditDecision::Allow);
    assert_eq!(entries[2].reason, "reason 3");

    let report = log.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries, 5);
    assert_eq!(report.last_hash, entries[4].hash);
    assert_eq!(log.entry(3).await.unwrap().unwrap(), entries[2]);
    assert_eq!(log.entry(6).await.unwrap(), None);
}

/// Pins the documented encoding: a change to it must be deliberate (old logs would stop
/// verifying).
#[tokio::test]
async fn the_hash_is_the_documented_canonical_encoding() {
    let log = memory_log().await;
    log.record(
        NewAuditEntry::new("a", "context/x", "read", AuditDecision::Deny, "no share")
            .details(json!({"b": 1, "a": [true, null]})),
    )
    .unwrap();
    log.flush().await;
    let e = &all(&log).await[0];
    let details = r#"{"a":[true,null],"b":1}"#;
    let mut bytes = GENESIS_HASH.as_bytes().to_vec();
    bytes.extend(1u64.to_be_bytes());
    bytes.extend(e.time_ms.to_be_bytes());
    for field in ["a", "context/x", "read", "deny", "no share", details] {
        bytes.extend((field.len() as u64).to_be_bytes());
        bytes.extend(field.as_bytes());
    }
    assert_eq!(e.hash, hex::encode(Sha256::digest(&bytes)));
}

#[test]
fn the_encoding_is_unambiguous() {
    let content = |agent: &'static str, resource: &'static str| chain::Content {
        seq: 1,
        time_ms: 7,
        agent: agent.as_bytes(),
        resource: resource.as_bytes(),
        operation: b"op",
        decision: b"allow",
        reason: b"",
        details: b"null",
    };
    let g = GENESIS_HASH.as_bytes();
    assert_ne!(
        chain::entry_hash(None, g, &content("ab", "c")),
        chain::entry_hash(None, g, &content("a", "bc"))
    );
    assert_eq!(
        chain::entry_hash(None, g, &content("ab", "c")),
        chain::entry_hash(None, g, &content("ab", "c"))
    );
}

#[tokio::test]
async fn an_untouched_log_on_disk_verifies_after_reopening() {
    let (dir, log) = disk_log(10).await;
    drop(log);
    let log = AuditLog::open(Store::open(StoreConfig::at(dir.path())).unwrap())
        .await
        .unwrap();
    log.record(entry(11)).unwrap();
    log.flush().await;
    let report = log.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries, 11);
    assert_eq!(ns(&all(&log).await), (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_modified_entry_is_named() {
    let (dir, log) = disk_log(10).await;
    tamper(
        &dir,
        "UPDATE audit SET reason = 'nothing to see' WHERE seq = 7",
    );
    let report = log.verify().await.unwrap();
    let broken = report.first_broken.as_ref().expect("broken");
    assert_eq!(broken.seq, 7);
    assert!(broken.problem.contains("modified"), "{broken}");
    assert_eq!(report.entries, 6);
    assert_eq!(report.last_hash, log.entry(6).await.unwrap().unwrap().hash);

    // Changing the decision, or the details, is caught the same way.
    let (dir, log) = disk_log(10).await;
    tamper(&dir, "UPDATE audit SET decision = 'allow' WHERE seq = 4");
    assert_eq!(log.verify().await.unwrap().first_broken.unwrap().seq, 4);
    let (dir, log) = disk_log(10).await;
    tamper(
        &dir,
        r#"UPDATE audit SET details = '{"n":99}' WHERE seq = 1"#,
    );
    assert_eq!(log.verify().await.unwrap().first_broken.unwrap().seq, 1);

    // Changing only the stored hash.
    let (dir, log) = disk_log(10).await;
    tamper(
        &dir,
        "UPDATE audit SET hash = (CASE WHEN substr(hash, 1, 1) = '0' THEN '1' ELSE '0' END) \
         || substr(hash, 2) WHERE seq = 3",
    );
    let broken = log.verify().await.unwrap().first_broken.unwrap();
    assert_eq!(broken.seq, 3, "{broken}");

    // Re-hashing the modified entry moves the break to the next one.
    let (dir, log) = disk_log(10).await;
    let e = log.entry(3).await.unwrap().unwrap();
    let forged = chain::entry_hash(
        None,
        e.prev_hash.as_bytes(),
        &chain::Content {
            seq: 3,
            time_ms: e.time_ms,
            agent: e.agent.as_bytes(),
            resource: e.resource.as_bytes(),
            operation: e.operation.as_bytes(),
            decision: b"deny",
            reason: e.reason.as_bytes(),
            details: serde_json::to_string(&e.details).unwrap().as_bytes(),
        },
    );
    tamper(
        &dir,
        &format!("UPDATE audit SET decision = 'deny', hash = '{forged}' WHERE seq = 3"),
    );
    let broken = log.verify().await.unwrap().first_broken.unwrap();
    assert_eq!(broken.seq, 4, "{broken}");
    assert!(
        broken.problem.contains("not the hash of entry 3") && broken.problem.contains("modified"),
        "{broken}"
    );

    // A column changed to a type no writer stores.
    let (dir, log) = disk_log(10).await;
    tamper(&dir, "UPDATE audit SET time_ms = 'yesterday' WHERE seq = 5");
    let broken = log.verify().await.unwrap().first_broken.unwrap();
    assert_eq!(broken.seq, 5);
    assert!(broken.problem.contains("time_ms"), "{broken}");
}

#[tokio::test]
async fn a_deleted_entry_is_named() {
    let (dir, log) = disk_log(10).await;
    tamper(&dir, "DELETE FROM audit WHERE seq = 5");
    let report = log.verify().await.unwrap();
    let broken = report.first_broken.unwrap();
    assert_eq!(broken.seq, 5);
    assert!(
        broken.problem.contains("deleted") && broken.problem.contains("from entry 4 to entry 6"),
        "{broken}"
    );
    assert_eq!(report.entries, 4);

    // The first entries.
    let (dir, log) = disk_log(10).await;
    tamper(&dir, "DELETE FROM audit WHERE seq <= 2");
    let broken = log.verify().await.unwrap().first_broken.unwrap();
    assert_eq!(broken.seq, 1);
    assert!(broken.problem.contains("starts at entry 3"), "{broken}");

    // Deleted, and the later entries renumbered to hide the gap.
    let (dir, log) = disk_log(10).await;
    tamper(
        &dir,
        "DELETE FROM audit WHERE seq = 5; UPDATE audit SET seq = -seq WHERE seq > 5; \
         UPDATE audit SET seq = -seq - 1 WHERE seq < 0;",
    );
    let broken = log.verify().await.unwrap().first_broken.unwrap();
    assert_eq!(broken.seq, 5);
    assert!(
        broken.problem.contains("prev_hash") && broken.problem.contains("deleted"),
        "{broken}"
    );

    // Truncating the newest entries leaves a valid, shorter chain: the head file shows it
    // (see tests/tamper.rs for every kind of tampering against the head file and the key).
    let (dir, log) = disk_log(10).await;
    let anchor = log.verify().await.unwrap();
    tamper(&dir, "DELETE FROM audit WHERE seq > 8");
    let report = log.verify().await.unwrap();
    assert_eq!(report.entries, 8);
    let broken = report.first_broken.unwrap();
    assert_eq!(broken.seq, 10, "{broken}");
    assert!(
        broken.problem.contains("newest entries were deleted"),
        "{broken}"
    );
    assert_eq!(log.entry(anchor.entries).await.unwrap(), None);
}

#[tokio::test]
async fn reordered_entries_are_named() {
    // Swapping the seqs of two rows.
    let (dir, log) = disk_log(10).await;
    tamper(
        &dir,
        "UPDATE audit SET seq = -1 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = 7; \
         UPDATE audit SET seq = 7 WHERE seq = -1;",
    );
    let broken = log.verify().await.unwrap().first_broken.unwrap();
    assert_eq!(broken.seq, 6);
    assert!(broken.problem.contains("reordered"), "{broken}");

    // Swapping every other column of two rows.
    let (dir, log) = disk_log(10).await;
    let cols = "time_ms, agent, resource, operation, decision, reason, details, prev_hash, hash";
    tamper(
        &dir,
        &format!(
            "CREATE TEMP TABLE saved AS SELECT * FROM audit WHERE seq IN (2, 3);
             UPDATE audit SET ({cols}) = (SELECT {cols} FROM saved WHERE seq = 3) WHERE seq = 2;
             UPDATE audit SET ({cols}) = (SELECT {cols} FROM saved WHERE seq = 2) WHERE seq = 3;"
        ),
    );
    let broken = log.verify().await.unwrap().first_broken.unwrap();
    assert_eq!(broken.seq, 2);
    assert!(broken.problem.contains("reordered"), "{broken}");
    // The entries are still readable, out of order.
    assert_eq!(ns(&all(&log).await)[..4], [1, 3, 2, 4]);
}

#[tokio::test]
async fn query_filters_by_glob_decision_time_and_limit() {
    let log = memory_log().await;
    for n in 1..=12 {
        log.record(entry(n)).unwrap();
    }
    log.record(NewAuditEntry::new(
        "worker-7",
        "file//workspace/src/main.rs",
        "fs.write",
        AuditDecision::Deny,
        "read-only mount",
    ))
    .unwrap();
    log.flush().await;
    let q = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery::default();
        f(&mut q);
        let log = log.clone();
        async move { log.query(&q).await.unwrap() }
    };

    // Exact and glob patterns.
    assert_eq!(
        ns(&q(|q| q.agent = Some("agent-1".into())).await),
        [1, 3, 5, 7, 9, 11]
    );
    assert_eq!(q(|q| q.agent = Some("agent-*".into())).await.len(), 12);
    assert_eq!(
        ns(&q(|q| q.resource = Some("context/plan-[12]".into())).await),
        [1, 2, 5, 6, 9, 10]
    );
    assert_eq!(
        ns(&q(|q| q.resource = Some("context/plan*".into())).await),
        (1..=12).collect::<Vec<_>>()
    );
    let files = q(|q| q.resource = Some("file//workspace/**".into())).await;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].agent, "worker-7");
    assert_eq!(
        q(|q| q.operation = Some("{fs.*,write}".into())).await.len(),
        7
    );
    assert!(q(|q| q.agent = Some("agent".into())).await.is_empty());

    // Decision, combined with a pattern.
    assert_eq!(
        ns(&q(|q| q.decision = Some(AuditDecision::Allow)).await),
        [3, 6, 9, 12]
    );
    assert_eq!(
        ns(&q(|q| {
            q.decision = Some(AuditDecision::Deny);
            q.agent = Some("agent-?".into());
        })
        .await),
        [1, 4, 7, 10]
    );

    // Limit: the newest matching, in seq order.
    assert_eq!(
        ns(&q(|q| {
            q.agent = Some("agent-*".into());
            q.limit = Some(3);
        })
        .await),
        [10, 11, 12]
    );
    assert!(q(|q| q.limit = Some(0)).await.is_empty());

    // An invalid glob names its field.
    let err = log
        .query(&AuditQuery {
            resource: Some("context/[".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidConfig {
                field: "resource",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn query_filters_by_time_range() {
    let (dir, log) = disk_log(6).await;
    // Spread the entries over time (this breaks the chain, which the query does not care about).
    tamper(&dir, "UPDATE audit SET time_ms = seq * 1000");
    let range = |since, until| {
        let log = log.clone();
        async move {
            let q = AuditQuery {
                since_ms: since,
                until_ms: until,
                ..Default::default()
            };
            ns(&log.query(&q).await.unwrap())
        }
    };
    assert_eq!(range(Some(2000), Some(4000)).await, [2, 3, 4]);
    assert_eq!(range(Some(4500), None).await, [5, 6]);
    assert_eq!(range(None, Some(1000)).await, [1]);
    assert!(range(Some(7000), None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_keep_call_order_and_a_valid_chain() {
    let log = memory_log().await;
    let tasks = 16u64;
    let per_task = 100u64;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    log.record(
                        NewAuditEntry::new(
                            format!("agent-{t}"),
                            "context/shared",
                            "write",
                            AuditDecision::Allow,
                            "",
                        )
                        .details(json!({"t": t, "i": i})),
                    )
                    .unwrap();
                    if i.is_multiple_of(10) {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    // Plain threads record too: `record` needs no runtime.
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..per_task {
                    log.record(
                        NewAuditEntry::new(
                            format!("thread-{t}"),
                            "x",
                            "y",
                            AuditDecision::Record,
                            "",
                        )
                        .details(json!({"t": 100 + t, "i": i})),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
    log.flush().await;
    let total = (tasks + 2) * per_task;
    assert_eq!(log.recorded(), total);
    let entries = all(&log).await;
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    // Each recorder's entries are in its call order.
    let mut next = std::collections::HashMap::<u64, u64>::new();
    for e in &entries {
        let (t, i) = (
            e.details["t"].as_u64().unwrap(),
            e.details["i"].as_u64().unwrap(),
        );
        let expected = next.entry(t).or_insert(0);
        assert_eq!(i, *expected, "recorder {t} out of order");
        *expected += 1;
    }
    let report = log.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries, total);
}

#[tokio::test]
async fn flush_waits_for_everything_recorded_before_it() {
    let log = memory_log().await;
    // Nothing recorded: returns at once.
    log.flush().await;
    let count = |log: &AuditLog| {
        let store = log.inner.store.clone();
        async move {
            store
                .read(|conn| {
                    Ok(conn.query_row("SELECT count(*) FROM audit", [], |r| r.get::<_, i64>(0))?)
                })
                .await
                .unwrap()
        }
    };
    for round in 1..=5i64 {
        for n in 0..(writer::MAX_BATCH as u64 / 2 + 7) {
            log.record(entry(n)).unwrap();
        }
        // A clone flushes the same queue.
        log.clone().flush().await;
        assert_eq!(
            count(&log).await,
            round * (writer::MAX_BATCH as i64 / 2 + 7)
        );
    }
    // Many flushes at once all return, each after what was recorded before it.
    let before = 5 * (writer::MAX_BATCH as i64 / 2 + 7);
    let waiters: Vec<_> = (0..20)
        .map(|i| {
            log.record(entry(i)).unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                log.flush().await;
                count(&log).await
            })
        })
        .collect();
    for (i, w) in waiters.into_iter().enumerate() {
        let seen = w.await.unwrap();
        assert!(
            seen > before + i as i64,
            "flush {i} returned with {seen} entries stored"
        );
    }
    log.flush().await;
    assert_eq!(
        count(&log).await,
        5 * (writer::MAX_BATCH as i64 / 2 + 7) + 20
    );
    assert!(log.verify().await.unwrap().is_intact());
}

#[tokio::test]
async fn several_handles_on_one_store_extend_one_chain() {
    let store = Store::open(StoreConfig::in_memory()).unwrap();
    let a = AuditLog::open(store.clone()).await.unwrap();
    let b = AuditLog::open(store).await.unwrap();
    for n in 0..50 {
        a.record(entry(n)).unwrap();
        b.record(entry(n)).unwrap();
        if n.is_multiple_of(7) {
            a.flush().await;
        }
    }
    a.flush().await;
    b.flush().await;
    let report = a.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries, 100);
    assert_eq!((a.recorded(), b.recorded()), (50, 50));
}

#[tokio::test]
async fn guest_sized_fields_are_capped_with_a_marker() {
    let log = memory_log().await;
    let long_reason = "é".repeat(3000); // 6,000 bytes, two per character
    let big = json!({ "blob": "\"".repeat(40_000), "n": 1 });
    log.record(
        NewAuditEntry::new(
            "a".repeat(10_000),
            "context/x",
            "write",
            AuditDecision::Deny,
            long_reason,
        )
        .details(big),
    )
    .unwrap();
    log.record(
        NewAuditEntry::new("b", "r", "o", AuditDecision::Allow, "short")
            .details(json!({"ok": true})),
    )
    .unwrap();
    log.flush().await;
    let entries = all(&log).await;
    let e = &entries[0];
    assert!(e.reason.len() <= MAX_REASON_BYTES, "{}", e.reason.len());
    assert!(
        e.reason.ends_with("...[truncated from 6000 bytes]"),
        "{}",
        e.reason
    );
    assert!(e.reason.starts_with("éé"));
    assert!(e.agent.len() <= MAX_NAME_BYTES);
    assert!(e.agent.ends_with("...[truncated from 10000 bytes]"));
    let details_len = serde_json::to_string(&e.details).unwrap().len();
    assert!(details_len <= MAX_DETAILS_BYTES, "{details_len}");
    assert!(details_len > MAX_DETAILS_BYTES / 2, "{details_len}");
    assert_eq!(e.details["truncated"], true);
    assert_eq!(e.details["originalBytes"], 80_017);
    assert!(
        e.details["prefix"]
            .as_str()
            .unwrap()
            .starts_with(r#"{"blob":""#)
    );
    // Plain text is cut close to the cap.
    let plain = chain::details_text(&json!("x".repeat(50_000)));
    assert!(plain.len() <= MAX_DETAILS_BYTES && plain.len() > MAX_DETAILS_BYTES - 64);
    assert_eq!(entries[1].reason, "short");
    assert_eq!(entries[1].details, json!({"ok": true}));
    assert!(log.verify().await.unwrap().is_intact());
}

#[test]
fn decisions_parse_and_print() {
    for d in [
        AuditDecision::Allow,
        AuditDecision::Deny,
        AuditDecision::Record,
    ] {
        assert_eq!(d.as_str().parse::<AuditDecision>().unwrap(), d);
        assert_eq!(serde_json::to_value(d).unwrap(), json!(d.as_str()));
    }
    assert!(
        "maybe"
            .parse::<AuditDecision>()
            .unwrap_err()
            .contains("allow")
    );
}
