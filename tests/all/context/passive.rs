//! Subscriptions live as long as their agent: an agent blocked on `events.next` is alive
//! however long it waits, and only an agent that makes no host call at all past the heartbeat
//! timeout is marked disconnected. Time is the context store's `ManualClock`, moved by the
//! test, never waited for.

use super::*;
use qi_guest_artifacts::SPIN_FOREVER_COMPONENT;
use qi_host::context::{AgentConnection, ContextConfig, ManualClock};
use std::sync::Arc;

/// The default heartbeat timeout, in ms.
const TIMEOUT_MS: u64 = 30_000;

/// A host of its own whose context store runs on a clock the test moves.
pub(crate) async fn clocked_host(
    bus: qi_host::EventBusConfig,
) -> (AgentHost, ContextService, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store = qi_host::Store::open(qi_host::StoreConfig::in_memory()).unwrap();
    let bus = qi_host::EventBus::new(store.clone(), bus).await.unwrap();
    let svc = ContextService::open(store, bus, clock.clone(), ContextConfig::default())
        .await
        .unwrap();
    assert_eq!(ContextConfig::default().heartbeat_timeout_ms, TIMEOUT_MS);
    let host = crate::common::new_host(4).with_context(svc.clone());
    (host, svc, clock)
}

async fn spawn_on(
    host: &AgentHost,
    component: &str,
    mut s: qi_host::SubAgentSpecification,
) -> SubAgent {
    let loaded = host.load(component).expect("bundled guest loads");
    s.security_constraints.allowed_tools = vec!["test.signal".into()];
    host.spawn(&loaded, s).await.expect("agent spawns")
}

fn status(svc: &ContextService, agent: &str) -> AgentConnection {
    svc.registered_agents()
        .into_iter()
        .find(|a| a.agent_id == agent)
        .expect("the agent is registered")
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_subscriber_waiting_60_s_still_gets_its_event() {
    let (host, svc, clock) = clocked_host(Default::default()).await;
    let id = svc
        .create(
            OPERATOR,
            NewContext {
                context_type: "passive".into(),
                doc: json!({"n": 0}),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .context_id;
    let watcher = spawn_on(&host, SUBSCRIBER_COMPONENT, spec()).await;
    let me = watcher.id().to_string();
    svc.share(
        OPERATOR,
        &id,
        std::slice::from_ref(&me),
        &[Permission::Read],
        None,
    )
    .await
    .unwrap();
    let key = crate::common::unique_key("passive");
    let watching = start(
        watcher,
        "passive",
        json!({"context": id, "expect": 1, "timeout_ms": 60_000, "signal": key}),
    );
    assert_eq!(crate::common::next_signal(&key).await["subscribed"], true);
    // It is blocked in `events.next` from here on.
    crate::common::hang_guard("the watcher waiting in events.next", async {
        while !svc.is_present(&me) {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // A minute passes without a single other host call: twice the heartbeat timeout.
    clock.advance(2 * TIMEOUT_MS);
    let swept = svc.sweep_disconnected().await.unwrap();
    assert!(
        !swept.contains(&me),
        "a waiting subscriber is alive: {swept:?}"
    );
    assert_eq!(status(&svc, &me), AgentConnection::Active);

    let written = svc
        .write(OPERATOR, &id, Change::Merge(json!({"n": 1})), Some(1))
        .await
        .unwrap();
    let out = crate::common::hang_guard("the watcher's report", watching)
        .await
        .unwrap();
    let out = ok(&out);
    assert_eq!(out["error"], Value::Null, "{out}");
    assert_eq!(out["received"], 1, "{out}");
    assert_eq!(out["events"][0]["version"], written.version, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_silent_past_the_heartbeat_timeout_is_swept_and_at_it_is_not() {
    let (host, svc, clock) = clocked_host(Default::default()).await;
    // Fuel and time for far longer than the test: only the terminate ends it.
    let mut s = spec();
    s.fuel = qi_host::spec::IsolationCeilings::of(qi_host::IsolationLevel::Sandbox).fuel;
    s.resource_limits.max_execution_time_ms = 600_000;
    let spinner = spawn_on(&host, SPIN_FOREVER_COMPONENT, s).await;
    let me = spinner.id().to_string();
    let mut disconnects = svc
        .bus()
        .subscribe(
            EventFilter {
                event_types: vec![EventType::AgentDisconnected],
                ..EventFilter::default()
            },
            SubscribeFrom::Now,
        )
        .unwrap();
    let key = crate::common::unique_key("silent");
    let spinning = start(spinner, "silent", json!({"signal": key}));
    // Its last host call (the signal) began before this returns; it makes none after.
    crate::common::next_signal(&key).await;

    // Just inside: exactly the timeout since its last call.
    clock.advance(TIMEOUT_MS);
    let swept = svc.sweep_disconnected().await.unwrap();
    assert!(!swept.contains(&me), "{swept:?}");
    assert_eq!(status(&svc, &me), AgentConnection::Active);

    // Just past: one millisecond more. (The host's own sweeper may get there first.)
    clock.advance(1);
    svc.sweep_disconnected().await.unwrap();
    assert_eq!(status(&svc, &me), AgentConnection::Disconnected);
    let event = crate::common::hang_guard("the agent-disconnected event", disconnects.next())
        .await
        .unwrap();
    assert_eq!(event.agent_id.as_deref(), Some(me.as_str()));

    host.terminate(&me, "test done").unwrap();
    let report = crate::common::hang_guard("the spinner's end", spinning)
        .await
        .unwrap();
    assert_eq!(report.status, qi_host::AgentStatus::Terminated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_a_context_store_runs_the_heartbeat_sweep() {
    // A short timeout, so that the host's sweep (every half timeout) comes round soon.
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store = qi_host::Store::open(qi_host::StoreConfig::in_memory()).unwrap();
    let bus = qi_host::EventBus::new(store.clone(), Default::default())
        .await
        .unwrap();
    let config = ContextConfig {
        heartbeat_timeout_ms: 100,
        ..ContextConfig::default()
    };
    let svc = ContextService::open(store, bus, clock.clone(), config)
        .await
        .unwrap();
    let mut disconnects = svc
        .bus()
        .subscribe(
            EventFilter {
                event_types: vec![EventType::AgentDisconnected],
                ..EventFilter::default()
            },
            SubscribeFrom::Now,
        )
        .unwrap();
    let _host = crate::common::new_host(1).with_context(svc.clone());
    // An agent registered by embedding code that then says nothing.
    svc.register_agent("embedded", Default::default())
        .await
        .unwrap();
    clock.advance(101);
    // Nobody here calls the sweep: the host does.
    let event = crate::common::hang_guard("the host's sweep", disconnects.next())
        .await
        .unwrap();
    assert_eq!(event.agent_id.as_deref(), Some("embedded"));
    assert_eq!(status(&svc, "embedded"), AgentConnection::Disconnected);
}
