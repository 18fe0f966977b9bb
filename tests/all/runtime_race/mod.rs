//! Attacks on the runtime's fast path (guest polled before the terminate signal and the
//! deadline, deadline timer made on first wait, terminate as a `Notify` whose first reason
//! wins, stdio kept in the agent, lazy semaphores, audit entries described only with an audit
//! log, registry keyed by `Arc<str>`).
//!
//! Every test is synchronised by events: a tool that tells the test when the agent is inside
//! it, a barrier that only opens when calls overlap, the agent's status observed between
//! scheduler turns, or tokio's paused clock. Real time appears only as a hang guard.
//!
//! [`stop`]: terminate and deadline in every phase. [`capture`]: stdio, registry, semaphores
//! and audit entries.

mod capture;
mod stop;

use crate::common::*;
use qi_host::{
    AgentHost, AgentStatus, HostConfig, SubAgentSpecification, Tool, ToolContext, ToolFuture,
    ToolRegistry,
};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Agents whose call to `race.gate` has started, and the wake-up for [`entered_gate`].
fn gate_entries() -> &'static (Mutex<HashSet<String>>, Notify) {
    static ENTRIES: OnceLock<(Mutex<HashSet<String>>, Notify)> = OnceLock::new();
    ENTRIES.get_or_init(Default::default)
}

/// Records that the calling agent reached it, then never answers: the agent stays blocked in
/// a host call until it is terminated or its deadline passes.
struct Gate;

impl Tool for Gate {
    fn name(&self) -> &str {
        "race.gate"
    }
    fn description(&self) -> &str {
        "Records the caller, then never returns"
    }
    fn call(&self, ctx: ToolContext, _input: Value) -> ToolFuture {
        Box::pin(async move {
            let (entries, notify) = gate_entries();
            entries.lock().unwrap().insert(ctx.agent_id);
            notify.notify_waiters();
            std::future::pending::<()>().await;
            unreachable!()
        })
    }
}

/// True once agent `id` has called `race.gate`.
fn has_entered_gate(id: &str) -> bool {
    gate_entries().0.lock().unwrap().contains(id)
}

/// Returns once agent `id` is inside `race.gate` (hang guard: 60 s).
async fn entered_gate(id: &str) {
    let wait = async {
        loop {
            let notified = gate_entries().1.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if has_entered_gate(id) {
                return;
            }
            notified.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("agent {id} never called race.gate"));
}

/// Answers only when `{"n": N}` calls with the same `{"key": K}` are in flight at once: a
/// batch that completes proves its calls overlapped.
struct Rendezvous;

impl Tool for Rendezvous {
    fn name(&self) -> &str {
        "race.rendezvous"
    }
    fn description(&self) -> &str {
        "Waits until {\"n\": N} calls with the same {\"key\": K} have arrived"
    }
    fn call(&self, ctx: ToolContext, input: Value) -> ToolFuture {
        static BARRIERS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Barrier>>>> =
            OnceLock::new();
        let key = input["key"].as_str().unwrap_or_default().to_string();
        let n = input["n"].as_u64().unwrap_or(1) as usize;
        let barrier = BARRIERS
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry(key)
            .or_insert_with(|| Arc::new(tokio::sync::Barrier::new(n)))
            .clone();
        Box::pin(async move {
            barrier.wait().await;
            Ok(json!({"agent": ctx.agent_id}))
        })
    }
}

/// Panics inside the host call: a host bug while an agent runs.
struct Panics;

impl Tool for Panics {
    fn name(&self) -> &str {
        "race.panic"
    }
    fn description(&self) -> &str {
        "Panics"
    }
    fn call(&self, _ctx: ToolContext, _input: Value) -> ToolFuture {
        Box::pin(async { panic!("race.panic: a deliberate host-side panic") })
    }
}

fn race_tools() -> ToolRegistry {
    let mut tools = ToolRegistry::with_builtins();
    tools.register(Gate);
    tools.register(Rendezvous);
    tools.register(Panics);
    tools
}

/// A host of this test's own (an empty registry of at most `max_live_agents`), with the
/// `race.*` tools.
fn own_host(max_live_agents: u32) -> AgentHost {
    AgentHost::with_tools(
        HostConfig {
            max_live_agents,
            cache_dir: Some(cache_dir()),
            ..HostConfig::default()
        },
        race_tools(),
    )
    .expect("host starts")
}

/// The host shared by tests that do not look at the whole registry.
fn race_host() -> &'static AgentHost {
    static HOST: OnceLock<AgentHost> = OnceLock::new();
    HOST.get_or_init(|| own_host(256))
}

/// [`spec`] for `tool-user` allowed the `race.*` tools and `clock.now`.
fn tool_spec() -> SubAgentSpecification {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec![
        "race.gate".into(),
        "race.rendezvous".into(),
        "race.panic".into(),
        "clock.now".into(),
    ];
    s
}

/// `tool-user` input: one call of `tool`.
fn one_call(tool: &str) -> Value {
    json!({"calls": [{"tool": tool, "input": {}}]})
}

/// Returns once `host` reports agent `id` as `want`, yielding to the scheduler between looks.
/// On the current-thread runtime of `#[tokio::test]`, a spawned agent task has been polled (and
/// has parked: in a host call, a sleep or a fuel yield) by the time this sees it `Executing`.
async fn status_reached(host: &AgentHost, id: &str, want: AgentStatus) {
    for _ in 0..1_000_000 {
        if host.status(id) == Some(want) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "agent {id} never became {want:?} (now {:?})",
        host.status(id)
    );
}
