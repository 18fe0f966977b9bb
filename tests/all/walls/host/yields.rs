//! Fuel yields: a computing agent returns to the async runtime every `fuelYieldInterval` units
//! of fuel, so other tasks on the same thread go on while it spins.

use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rendezvous: the spinning agent cannot end until a task on the same single-threaded runtime
/// terminates it, and that task can only run while the agent is inside its loop, because the
/// agent's `run` is polled from this thread without a host call after it starts spinning.
/// Without yields the agent would hold the thread until its fuel ran out.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_agent_yields_so_another_task_on_its_thread_terminates_it() {
    const STEPS: u64 = 3;
    let mut s = spec();
    // Enough for a couple of thousand yields; spent in seconds if nothing stops the agent.
    s.fuel = 2_000_000_000;
    let agent = host()
        .spawn(&load(HOSTILE_COMPONENT), s.clone())
        .await
        .expect("hostile spawns");
    let id = agent.id().to_string();
    let progress = Arc::new(AtomicU64::new(0));
    let other = {
        let progress = progress.clone();
        tokio::spawn(async move {
            // Each step needs the thread back once more: the agent yields again and again.
            for _ in 0..STEPS {
                tokio::task::yield_now().await;
                progress.fetch_add(1, Ordering::SeqCst);
            }
            host()
                .terminate(&id, "the other task ran")
                .expect("agent is live");
        })
    };
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        agent.run(TaskRequest::new("spin", json!({"mode": "host.spin"}))),
    )
    .await
    .expect("hang guard: the spinning agent did not end in 60 s");
    match &report.failure {
        Some(AgentFailure::Terminated { reason }) => assert_eq!(reason, "the other task ran"),
        other => panic!("expected the other task's termination, got {other:?}"),
    }
    other.await.expect("the other task completes");
    assert_eq!(progress.load(Ordering::SeqCst), STEPS);
    // It was spinning when the other task ran: past one yield interval, short of its fuel.
    let spent = report.usage.fuel_consumed;
    let interval = qi_host::spec::DEFAULT_FUEL_YIELD_INTERVAL;
    assert!(spent > interval && spent < s.fuel, "{spent}");
}
