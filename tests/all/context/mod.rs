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

pub(crate) mod cache;
pub(crate) mod conflicts;
pub(crate) mod passive;
pub(crate) mod quotas;

pub(crate) mod racer;

pub(crate) mod reads;

pub(crate) mod subscriber;

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
