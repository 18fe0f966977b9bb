//! `racer`: two agents race writes to one context under each strategy.

use super::*;

const WRITES: u64 = 25;
const FIELD: &str = "f";

/// One racer's run: its host-assigned id, task id and output.
pub struct Run {
    pub agent: String,
    pub task: String,
    pub out: Value,
}

/// Two racers, each making `WRITES` writes to one fresh context under `strategy`, released
/// together by their barrier.
pub async fn race(strategy: SyncStrategy, initial: Value) -> (String, [Run; 2]) {
    let id = create(strategy.as_str(), strategy, json!({ FIELD: initial })).await;
    let a = spawn(RACER_COMPONENT).await;
    let b = spawn(RACER_COMPONENT).await;
    share(&id, &[&a, &b], &[Permission::Read, Permission::Write]).await;
    let input = json!({
        "context": id,
        "writes": WRITES,
        "field": FIELD,
        "strategy": strategy.as_str(),
        "barrier": 2,
    });
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    let ha = start(a, "racer-a", input.clone());
    let hb = start(b, "racer-b", input);
    let (ra, rb) = (ha.await.unwrap(), hb.await.unwrap());
    let runs = [(a_id, "racer-a", ra), (b_id, "racer-b", rb)].map(|(agent, task, report)| {
        let out = ok(&report).clone();
        assert_eq!(
            out["errors"],
            json!([]),
            "{agent} ({task}) had errors: {out}"
        );
        assert_eq!(out["acked"], WRITES, "{agent}: {out}");
        Run {
            agent,
            task: task.to_string(),
            out,
        }
    });
    (id, runs)
}

/// Value written by the racer with task id `task`: `<task>-<i>`.
fn is_from(value: &Value, task: &str) -> bool {
    value
        .as_str()
        .and_then(|v| v.strip_prefix(task))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|i| i.parse::<u64>().is_ok_and(|i| i < WRITES))
}

/// Eventual and causal: every acknowledged write either made a version or lost its field
/// (last-writer-wins by HLC); every write that met a concurrent change by the other racer is
/// one conflict naming both agents with values each wrote, resolved by `resolution`.
async fn check_field_conflicts(id: &str, runs: &[Run; 2], resolution: ConflictResolution) {
    let task_of = |agent: &str| {
        runs.iter()
            .find(|r| r.agent == agent)
            .map(|r| r.task.clone())
            .unwrap_or_else(|| panic!("unexpected agent {agent}"))
    };
    let versions = history(id).await;
    let made: u64 = runs
        .iter()
        .map(|r| r.out["new_versions"].as_u64().unwrap())
        .sum();
    assert_eq!(
        versions.len() as u64,
        1 + made,
        "one version per winning write"
    );
    assert!(
        versions
            .windows(2)
            .any(|w| w[0].agent_id != w[1].agent_id && w[0].version > 1),
        "the racers never overlapped: {:?}",
        versions.iter().map(|v| &v.agent_id).collect::<Vec<_>>()
    );
    let recorded = conflicts(id, ConflictType::FieldModification).await;
    let seen: u64 = runs
        .iter()
        .map(|r| r.out["conflicts_seen"].as_u64().unwrap())
        .sum();
    assert_eq!(
        seen,
        recorded.len() as u64,
        "write results report the same conflicts"
    );
    for c in &recorded {
        assert_eq!(c.field, format!("/{FIELD}"));
        assert_eq!(c.agent_values.len(), 2, "both racers named: {c:?}");
        for (agent, value) in &c.agent_values {
            assert!(is_from(value, &task_of(agent)), "{c:?}");
        }
        let outcome = c.resolution.as_ref().expect("resolved automatically");
        assert_eq!(outcome.strategy, resolution, "{c:?}");
        assert!(
            c.agent_values
                .values()
                .any(|v| v == &outcome.resolved_value),
            "{c:?}"
        );
        assert_eq!(outcome.resolved_by, "system");
    }
    let last = versions.last().unwrap();
    let view = context_host().await.svc.get(OPERATOR, id).await.unwrap();
    assert_eq!(view.doc, last.doc);
    assert_eq!(view.status, ContextStatus::Active);
}

/// Eventual, every write based on the version the racer read first: a write conflicts exactly
/// when the other racer already made a version (every rival since the base counts), so the
/// conflicts are the versions made after the other racer's first plus the writes that lost.
fn expected_eventual_conflicts(versions: &[ContextVersion], runs: &[Run; 2]) -> u64 {
    let after_rival = versions[1..]
        .iter()
        .enumerate()
        .filter(|(i, v)| versions[1..=*i].iter().any(|o| o.agent_id != v.agent_id))
        .count() as u64;
    let lost: u64 = runs
        .iter()
        .map(|r| WRITES - r.out["new_versions"].as_u64().unwrap())
        .sum();
    after_rival + lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_race_loses_no_acknowledged_write() {
    let (id, runs) = race(SyncStrategy::Strong, json!(0)).await;
    let view = context_host().await.svc.get(OPERATOR, &id).await.unwrap();
    assert_eq!(
        view.doc[FIELD],
        2 * WRITES,
        "every acknowledged increment is there"
    );
    assert_eq!(view.version, 1 + 2 * WRITES);

    // Each version is exactly one increment on the one before: nothing overwritten.
    let versions = history(&id).await;
    assert_eq!(versions.len() as u64, 1 + 2 * WRITES);
    for (n, v) in versions.iter().enumerate() {
        assert_eq!(v.version, n as u64 + 1);
        assert_eq!(v.doc[FIELD], n as u64, "version {}", v.version);
    }
    for r in &runs {
        let by_it = versions.iter().filter(|v| v.agent_id == r.agent).count() as u64;
        assert_eq!(
            by_it, WRITES,
            "{} acknowledged {} writes",
            r.agent, r.out["acked"]
        );
    }

    // Every stale refusal is one concurrent-update conflict, naming the refused writer.
    let stale: u64 = runs
        .iter()
        .map(|r| r.out["stale_retries"].as_u64().unwrap())
        .sum();
    let recorded = conflicts(&id, ConflictType::ConcurrentUpdate).await;
    assert_eq!(recorded.len() as u64, stale, "{recorded:#?}");
    // A write is stale only because the other racer wrote since its read: each conflict
    // holds the winner's document and the refused racer's change, one per racer.
    let racers: Vec<&String> = runs.iter().map(|r| &r.agent).collect();
    for c in &recorded {
        let named: Vec<&String> = c.agent_values.keys().collect();
        let mut expected = racers.clone();
        expected.sort();
        assert_eq!(named, expected, "{c:?}");
    }
    assert!(
        conflicts(&id, ConflictType::FieldModification)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_race_records_each_overlap_with_both_values() {
    let (id, runs) = race(SyncStrategy::Eventual, json!("initial")).await;
    check_field_conflicts(&id, &runs, ConflictResolution::LastWriteWins).await;
    let versions = history(&id).await;
    let recorded = conflicts(&id, ConflictType::FieldModification).await;
    assert_eq!(
        recorded.len() as u64,
        expected_eventual_conflicts(&versions, &runs),
        "every write after the other racer's first version conflicts"
    );
    for r in &runs {
        assert_eq!(r.out["stale_retries"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_race_requires_a_base_version_and_merges() {
    let (id, runs) = race(SyncStrategy::Causal, json!("initial")).await;
    check_field_conflicts(&id, &runs, ConflictResolution::Merge).await;
    // Merge always writes the merged value: every write made a version.
    assert_eq!(history(&id).await.len() as u64, 1 + 2 * WRITES);

    // A write that does not say what it observed is refused and changes nothing.
    let svc = &context_host().await.svc;
    let before = svc.get(OPERATOR, &id).await.unwrap();
    let refused = svc
        .write(
            OPERATOR,
            &id,
            Change::Merge(json!({ FIELD: "no base" })),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ContextError::Refused {
                refusal: Refusal::BaseRequired { .. },
                ..
            }
        ),
        "{refused}"
    );
    let after = svc.get(OPERATOR, &id).await.unwrap();
    assert_eq!((after.version, &after.doc), (before.version, &before.doc));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_race_waits_in_conflict_until_resolved() {
    let (id, runs) = race(SyncStrategy::Manual, json!("initial")).await;
    let svc = &context_host().await.svc;
    let view = svc.get(OPERATOR, &id).await.unwrap();
    assert_eq!(view.status, ContextStatus::Conflict);
    let pending = view.pending.as_ref().expect("competing values are held");
    let field = format!("/{FIELD}");
    let values = &pending.fields[&field];
    assert_eq!(values.len(), 2, "{pending:?}");
    for r in &runs {
        assert_eq!(values[&r.agent], r.out["last_value"], "{pending:?}");
        assert!(is_from(&values[&r.agent], &r.task));
    }
    let recorded = conflicts(&id, ConflictType::FieldModification).await;
    assert_eq!(recorded.len(), 1, "one conflict, held open: {recorded:#?}");
    assert!(recorded[0].resolution.is_none());
    assert_eq!(pending.conflict_ids, vec![recorded[0].id]);

    // While in conflict, other fields are refused.
    let refused = svc
        .write(OPERATOR, &id, Change::Merge(json!({"other": 1})), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ContextError::Refused {
                refusal: Refusal::InConflict { .. },
                ..
            }
        ),
        "{refused}"
    );

    // The operator picks racer b's value.
    let winner = &runs[1];
    let resolved = svc
        .resolve(OPERATOR, &id, ResolveChoice::Agent(winner.agent.clone()))
        .await
        .unwrap();
    assert_eq!(resolved.status, ContextStatus::Active);
    assert_eq!(resolved.version, view.version + 1);
    let view = svc.get(OPERATOR, &id).await.unwrap();
    assert_eq!(view.status, ContextStatus::Active);
    assert!(view.pending.is_none());
    assert_eq!(view.doc, json!({ FIELD: winner.out["last_value"] }));
    let recorded = conflicts(&id, ConflictType::FieldModification).await;
    let outcome = recorded[0].resolution.as_ref().expect("resolved");
    assert_eq!(outcome.strategy, ConflictResolution::Manual);
    assert_eq!(outcome.resolved_by, OPERATOR);
    assert_eq!(outcome.resolved_value, winner.out["last_value"]);
    for r in &runs {
        assert_eq!(recorded[0].agent_values[&r.agent], r.out["last_value"]);
    }
}
