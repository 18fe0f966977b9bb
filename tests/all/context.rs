//! The context store and event bus through real guests (`racer`, `subscriber`, `snoop`), on a
//! host of their own with an in-memory context store, created once per test process.
//!
//! Each test spawns its agents first (so their ids are known), shares its contexts with them
//! as the operator, and only then runs them, concurrently.

use crate::common::{ok, spec};
use qi_guest_artifacts::{HELLO_COMPONENT, RACER_COMPONENT, SNOOP_COMPONENT, SUBSCRIBER_COMPONENT};
use qi_host::context::{
    Change, Conflict, ConflictResolution, ConflictType, ContextError, ContextService,
    ContextStatus, ContextVersion, NewContext, OPERATOR, Permission, Refusal, ResolveChoice,
    SyncStrategy,
};
use qi_host::events::{EventFilter, EventType, SubscribeFrom};
use qi_host::{AgentHost, AgentReport, SubAgent, TaskRequest};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::OnceCell;

/// A host whose agents share one context store.
pub struct ContextHost {
    pub host: AgentHost,
    pub svc: ContextService,
}

/// The process-wide host with a context store (in memory).
pub async fn context_host() -> &'static ContextHost {
    static HOST: OnceCell<ContextHost> = OnceCell::const_new();
    HOST.get_or_init(|| async {
        let svc = crate::common::in_memory_context().await;
        let host = crate::common::new_host(64).with_context(svc.clone());
        ContextHost { host, svc }
    })
    .await
}

/// A context id no other test uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Creates a context as the operator; causal contexts resolve by merge.
async fn create(prefix: &str, strategy: SyncStrategy, doc: Value) -> String {
    let id = unique(prefix);
    let resolution = match strategy {
        SyncStrategy::Causal => ConflictResolution::Merge,
        _ => ConflictResolution::LastWriteWins,
    };
    context_host()
        .await
        .svc
        .create(
            OPERATOR,
            NewContext {
                id: Some(id.clone()),
                context_type: "race".into(),
                doc,
                strategy,
                resolution,
                ..Default::default()
            },
        )
        .await
        .expect("operator creates the context");
    id
}

async fn spawn(component: &str) -> SubAgent {
    let h = context_host().await;
    let loaded = h.host.load(component).expect("bundled guest loads");
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["test.signal".into()];
    h.host.spawn(&loaded, s).await.expect("agent spawns")
}

async fn share(id: &str, agents: &[&SubAgent], permissions: &[Permission]) {
    let targets: Vec<String> = agents.iter().map(|a| a.id().to_string()).collect();
    context_host()
        .await
        .svc
        .share(OPERATOR, id, &targets, permissions, None)
        .await
        .expect("operator shares the context");
}

fn task(task_id: &str, input: Value) -> TaskRequest {
    TaskRequest {
        id: Some(task_id.into()),
        ..TaskRequest::new("context test", input)
    }
}

/// Runs the agent on its own tokio task, so several run at the same time.
fn start(agent: SubAgent, task_id: &str, input: Value) -> tokio::task::JoinHandle<AgentReport> {
    tokio::spawn(agent.run(task(task_id, input)))
}

/// Versions of a context, oldest first.
async fn history(id: &str) -> Vec<ContextVersion> {
    let mut versions = context_host()
        .await
        .svc
        .history(OPERATOR, id, 10_000)
        .await
        .expect("history");
    versions.reverse();
    versions
}

async fn conflicts(id: &str, kind: ConflictType) -> Vec<Conflict> {
    let all = context_host()
        .await
        .svc
        .conflicts(OPERATOR, id)
        .await
        .expect("conflicts");
    all.into_iter()
        .filter(|c| c.conflict_type == kind)
        .collect()
}

pub(crate) mod racer {
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

    /// Eventual and causal: every write made a version (the later HLC always wins), and a
    /// conflict was recorded for exactly the writes that followed the other racer's, with both
    /// agents' values, resolved by `strategy`.
    async fn check_field_conflicts(id: &str, runs: &[Run; 2], resolution: ConflictResolution) {
        let task_of = |agent: &str| {
            runs.iter()
                .find(|r| r.agent == agent)
                .map(|r| r.task.clone())
                .unwrap_or_else(|| panic!("unexpected agent {agent}"))
        };
        let versions = history(id).await;
        assert_eq!(
            versions.len() as u64,
            1 + 2 * WRITES,
            "one version per write"
        );
        for r in runs {
            assert_eq!(r.out["new_versions"], WRITES, "{}", r.out);
        }
        // A write conflicts when the field's last change since the base was the other racer's.
        let expected: Vec<(String, Value, String, Value)> = versions[1..]
            .windows(2)
            .filter(|w| w[0].agent_id != w[1].agent_id)
            .map(|w| {
                (
                    w[0].agent_id.clone(),
                    w[0].doc[FIELD].clone(),
                    w[1].agent_id.clone(),
                    w[1].doc[FIELD].clone(),
                )
            })
            .collect();
        assert!(
            !expected.is_empty(),
            "the racers never overlapped: {:?}",
            versions.iter().map(|v| &v.agent_id).collect::<Vec<_>>()
        );
        let recorded = conflicts(id, ConflictType::FieldModification).await;
        assert_eq!(
            recorded.len(),
            expected.len(),
            "one conflict per overlapping write, each once"
        );
        let seen: u64 = runs
            .iter()
            .map(|r| r.out["conflicts_seen"].as_u64().unwrap())
            .sum();
        assert_eq!(
            seen,
            recorded.len() as u64,
            "write results report the same conflicts"
        );
        for (c, (loser, lost, winner, won)) in recorded.iter().zip(&expected) {
            assert_eq!(c.field, format!("/{FIELD}"));
            assert_eq!(c.agent_values.len(), 2, "{c:?}");
            assert_eq!(&c.agent_values[loser], lost, "{c:?}");
            assert_eq!(&c.agent_values[winner], won, "{c:?}");
            assert!(is_from(lost, &task_of(loser)), "{c:?}");
            assert!(is_from(won, &task_of(winner)), "{c:?}");
            let outcome = c.resolution.as_ref().expect("resolved automatically");
            assert_eq!(outcome.strategy, resolution, "{c:?}");
            assert_eq!(&outcome.resolved_value, won, "{c:?}");
            assert_eq!(outcome.resolved_by, "system");
        }
        let last = versions.last().unwrap();
        let view = context_host().await.svc.get(OPERATOR, id).await.unwrap();
        assert_eq!(view.doc, last.doc);
        assert_eq!(view.status, ContextStatus::Active);
        let writer = runs.iter().find(|r| r.agent == last.agent_id).unwrap();
        assert_eq!(
            view.doc[FIELD], writer.out["last_value"],
            "the last write won"
        );
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
        for r in &runs {
            assert_eq!(r.out["stale_retries"], 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn causal_race_requires_a_base_version_and_merges() {
        let (id, runs) = race(SyncStrategy::Causal, json!("initial")).await;
        check_field_conflicts(&id, &runs, ConflictResolution::Merge).await;

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
}

pub(crate) mod subscriber {
    use super::*;

    const WRITES: u64 = 10;

    /// Update events as the subscriber reports them: `(seq, version, agent)`.
    fn reported(out: &Value) -> Vec<(u64, u64, String)> {
        out["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["version"].as_u64().unwrap(),
                    e["agent"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receives_exactly_the_updates_after_subscribing_in_order_and_resumes() {
        let id = create("subscribed", SyncStrategy::Strong, json!({"n": 0})).await;
        let svc = &context_host().await.svc;
        // Committed before the subscription: must not be delivered.
        svc.write(
            OPERATOR,
            &id,
            Change::Merge(json!({"before": true})),
            Some(1),
        )
        .await
        .unwrap();
        let watcher = spawn(SUBSCRIBER_COMPONENT).await;
        let writer = spawn(RACER_COMPONENT).await;
        share(&id, &[&watcher], &[Permission::Read]).await;
        share(&id, &[&writer], &[Permission::Read, Permission::Write]).await;
        let writer_id = writer.id().to_string();

        // The writer's updates, then the operator's end marker: the watcher stops at the
        // marker, so an extra or repeated event would show up before it.
        let key = crate::common::unique_key("subscriber");
        let watching = start(
            watcher,
            "subscriber",
            json!({"context": id, "expect": WRITES + 1, "timeout_ms": 60_000, "signal": key}),
        );
        assert_eq!(
            crate::common::next_signal(&key).await["subscribed"],
            true,
            "the watcher's first signal says it has subscribed"
        );
        let writing = start(
            writer,
            "writer",
            json!({"context": id, "writes": WRITES, "field": "n", "strategy": "strong"}),
        );
        assert_eq!(ok(&writing.await.unwrap())["acked"], WRITES);
        let marker = svc
            .write(
                OPERATOR,
                &id,
                Change::Merge(json!({"done": true})),
                Some(WRITES + 2),
            )
            .await
            .unwrap();
        assert_eq!(marker.version, WRITES + 3);
        let watched = crate::common::hang_guard("the watcher's end", watching)
            .await
            .unwrap();
        let out = ok(&watched);
        assert_eq!(out["error"], Value::Null, "{out}");
        assert_eq!(out["received"], WRITES + 1, "{out}");
        assert_eq!(out["gap_free"], true);
        let events = reported(out);
        let expected: Vec<(u64, String)> = (3..WRITES + 3)
            .map(|v| (v, writer_id.clone()))
            .chain([(WRITES + 3, OPERATOR.to_string())])
            .collect();
        let got: Vec<(u64, String)> = events.iter().map(|(_, v, a)| (*v, a.clone())).collect();
        assert_eq!(
            got, expected,
            "the writer's updates in version order, then the marker"
        );

        // They are the context's stored `updated` events after the subscription, seq for seq.
        let filter = EventFilter {
            event_types: vec![EventType::Updated],
            context_ids: vec![id.clone()],
            ..EventFilter::default()
        };
        let stored = svc.bus().history(&filter, Some(0), 1000).await.unwrap();
        let stored: Vec<u64> = stored.iter().map(|e| e.seq).collect();
        let seen: Vec<u64> = events.iter().map(|e| e.0).collect();
        assert_eq!(
            stored.len(),
            seen.len() + 1,
            "all but the one before subscribing"
        );
        assert_eq!(seen, stored[1..]);
        assert_eq!(out["last_seq"], *seen.last().unwrap());

        // A later subscriber resuming after the third update gets exactly the rest.
        let resumer = spawn(SUBSCRIBER_COMPONENT).await;
        share(&id, &[&resumer], &[Permission::Read]).await;
        let report = crate::common::hang_guard(
            "the resumer's end",
            resumer.run(task(
                "resumer",
                json!({"context": id, "expect": seen.len() - 3, "timeout_ms": 60_000,
                       "after_seq": seen[2]}),
            )),
        )
        .await;
        let out = ok(&report);
        assert_eq!(out["error"], Value::Null, "{out}");
        let resumed: Vec<u64> = reported(out).iter().map(|e| e.0).collect();
        assert_eq!(resumed, seen[3..]);
        assert_eq!(out["gap_free"], true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_subscriber_stops_receiving_at_once() {
        let id = create("revoked", SyncStrategy::Eventual, json!({"n": 0})).await;
        let watcher = spawn(SUBSCRIBER_COMPONENT).await;
        share(&id, &[&watcher], &[Permission::Read]).await;
        let watcher_id = watcher.id().to_string();
        let key = crate::common::unique_key("revoked");
        let watching = start(
            watcher,
            "subscriber",
            json!({"context": id, "expect": 3, "timeout_ms": 60_000, "signal": key}),
        );
        assert_eq!(crate::common::next_signal(&key).await["subscribed"], true);
        let svc = &context_host().await.svc;
        let first = svc
            .write(OPERATOR, &id, Change::Merge(json!({"n": 1})), None)
            .await
            .unwrap();
        // The watcher has the first update in hand before its share is revoked.
        let got = crate::common::next_signal(&key).await;
        let first_seq = got["seq"].as_u64().unwrap();
        svc.revoke(OPERATOR, &id, std::slice::from_ref(&watcher_id))
            .await
            .unwrap();
        svc.write(OPERATOR, &id, Change::Merge(json!({"n": 2})), None)
            .await
            .unwrap();
        svc.write(OPERATOR, &id, Change::Merge(json!({"n": 3})), None)
            .await
            .unwrap();
        let report = crate::common::hang_guard("the revoked watcher's end", watching)
            .await
            .unwrap();
        let out = ok(&report);
        let events = reported(out);
        assert_eq!(
            events,
            [(first_seq, first.version, OPERATOR.to_string())],
            "only the update before the revocation: {out}"
        );
        let error = out["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("access-denied"), "{out}");
    }
}

pub(crate) mod snoop {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_attempt_on_an_unshared_context_is_denied_and_recorded() {
        let id = create(
            "private",
            SyncStrategy::Strong,
            json!({"secret": "SECRET-7d31-never-shown"}),
        )
        .await;
        let bystander = spawn(HELLO_COMPONENT).await;
        share(&id, &[&bystander], &[Permission::Read]).await;
        let snoop = spawn(SNOOP_COMPONENT).await;
        let snoop_id = snoop.id().to_string();
        let svc = &context_host().await.svc;
        let before = svc.get(OPERATOR, &id).await.unwrap();

        let report = snoop
            .run(task("snoop", json!({"context": id, "me": snoop_id})))
            .await;
        let out = ok(&report);
        let attempts = out["attempts"].as_array().unwrap();
        let ops: Vec<&str> = attempts.iter().map(|a| a["op"].as_str().unwrap()).collect();
        assert_eq!(ops, ["get", "patch", "share", "subscribe"]);
        for a in attempts {
            assert_eq!(a["ok"], false, "{a}");
            assert_eq!(a["error_kind"], "access-denied", "{a}");
        }
        assert_eq!(out["listed"], false, "ids() must not list it");
        assert!(
            !out.to_string().contains("SECRET-7d31"),
            "nothing of the document leaked: {out}"
        );

        let after = svc.get(OPERATOR, &id).await.unwrap();
        assert_eq!((after.version, &after.doc), (before.version, &before.doc));
        assert_eq!(after.status, ContextStatus::Active);

        let violations: Vec<Conflict> = conflicts(&id, ConflictType::AccessViolation)
            .await
            .into_iter()
            .filter(|c| c.agent_values.contains_key(&snoop_id))
            .collect();
        let operations: Vec<&str> = violations
            .iter()
            .map(|c| c.agent_values[&snoop_id]["operation"].as_str().unwrap())
            .collect();
        assert_eq!(
            operations,
            ["read", "write", "share", "subscribe to"],
            "{violations:#?}"
        );
        drop(bystander);
    }
}

mod registry {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sub_agents_are_registered_while_alive() {
        let svc = &context_host().await.svc;
        let registered = |id: &str| svc.registered_agents().iter().any(|a| a.agent_id == id);
        let agent = spawn(HELLO_COMPONENT).await;
        let id = agent.id().to_string();
        assert!(registered(&id), "{id} is registered once spawned");
        // The unregistration is its own event: wait for it instead of polling.
        let mut unregistered = svc
            .bus()
            .subscribe(
                EventFilter {
                    event_types: vec![EventType::AgentUnregistered],
                    agent_ids: vec![id.clone()],
                    ..EventFilter::default()
                },
                SubscribeFrom::Now,
            )
            .unwrap();
        let report = agent.run(task("hello", json!(null))).await;
        ok(&report);
        let event = crate::common::hang_guard("the agent-unregistered event", unregistered.next())
            .await
            .unwrap();
        assert_eq!(event.agent_id.as_deref(), Some(id.as_str()));
        assert!(
            !registered(&id),
            "{id} is still registered after it finished"
        );
    }
}
