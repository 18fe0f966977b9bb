//! Starting the next agent of a serial segment while the output before it commits.
//!
//! When an attempt completes and nothing else runs, the subtask its output makes ready (a
//! chain's next link) has to wait for that output's durable commit before it may start. Its
//! agent is instantiated and described meanwhile, in a task of its own: no task runs and no
//! input is handed over. Once the commit is durable the attempt starts as always (events keep
//! cause before effect: the prerequisite's `subtask-completed` comes first) and takes the
//! waiting agent instead of spawning one. If the commit fails, the run is cancelled or the
//! scheduler chooses another agent or attempt, the prespawned agent is dropped unused. This
//! takes the commit off the critical path of a chain (see `cargo bench --bench coord`).

use super::watchdog::Counted;
use super::*;
use crate::agents::SubAgent;
use std::sync::Mutex;

/// An agent being started for the next attempt of a subtask.
pub(super) struct Prespawn {
    /// The agent kind it runs.
    pub(super) agent: String,
    /// The attempt it is for.
    pub(super) attempt: u32,
    /// Deadline extensions when it was planned (they change the spec).
    pub(super) extensions: u32,
    /// The handle the agent was spawned with (its identity at sync points and channels).
    pub(super) handle: SyncHandle,
    /// Wake-ups of its start, for the attempt's stall window.
    polls: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<Result<SubAgent, Error>>>,
    /// Where its start goes once aborted, for the run to await before it returns.
    dropped: Dropped,
}

/// Starts of prespawned agents dropped unused. Aborting a task only asks it to stop at its
/// next yield: the run awaits these before it returns, so that no agent outlives it.
pub(super) type Dropped = Arc<Mutex<Vec<tokio::task::JoinHandle<Result<SubAgent, Error>>>>>;

impl Drop for Prespawn {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            self.dropped.lock().expect("prespawn list poisoned").push(t);
        }
    }
}

impl Prespawn {
    /// The start, for the attempt task to await (and count as progress).
    pub(super) fn into_task(mut self) -> (Spawning, Arc<AtomicU64>) {
        let task = self
            .task
            .take()
            .expect("a prespawn holds its task until taken");
        (
            Spawning {
                task: Some(task),
                dropped: self.dropped.clone(),
            },
            self.polls.clone(),
        )
    }
}

/// A prespawned agent's start as its attempt awaits it; aborted when dropped before it ended
/// (the attempt was stopped before the agent was up), and then awaited by the run like a
/// dropped [`Prespawn`].
pub(super) struct Spawning {
    /// `None` once it ended.
    task: Option<tokio::task::JoinHandle<Result<SubAgent, Error>>>,
    dropped: Dropped,
}

impl Future for Spawning {
    type Output = Result<SubAgent, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Self::Output> {
        let task = self
            .task
            .as_mut()
            .expect("a spawning agent is not polled after it ended");
        let ready = match Pin::new(task).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(e)) => Err(Error::System(anyhow::anyhow!(
                "the task starting the agent ended: {e}"
            ))),
        };
        self.task = None;
        Poll::Ready(ready)
    }
}

impl Drop for Spawning {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            self.dropped.lock().expect("prespawn list poisoned").push(t);
        }
    }
}

impl Run {
    /// Subtask `i` completed with an output about to be committed: if nothing else runs and
    /// exactly one pending subtask becomes ready with it, and the strategy would admit it,
    /// starts that subtask's agent now (see the module docs).
    pub(super) fn prespawn_successor(&mut self, i: usize) {
        if self.cancelled.is_some() || self.running() != 1 {
            return;
        }
        // As if `i` had completed: which pending subtasks are ready then.
        let was = std::mem::replace(&mut self.subs[i].state, SubtaskState::Completed);
        let ready: Vec<usize> = (0..self.subs.len())
            .filter(|&j| {
                self.subs[j].state == SubtaskState::Pending && self.readiness(j) == Ok(true)
            })
            .collect();
        let unsettled = self.unsettled();
        let admitted = match ready[..] {
            [j] => self
                .strategy
                .admits(&self.graph, &unsettled, j)
                .then_some(j),
            _ => None,
        };
        self.subs[i].state = was;
        let Some(j) = admitted else { return };
        let plan = self.plan_attempt(j);
        let handle = self.new_handle(j, plan.attempt);
        let polls = Arc::new(AtomicU64::new(0));
        let start = Counted::new(
            Box::pin({
                let host = self.host.clone();
                let component = plan.agent.component.clone();
                let spec = plan.spec;
                let handle = handle.clone();
                async move { host.spawn_with(&component, spec, Some(handle)).await }
            }),
            polls.clone(),
        );
        self.subs[j].prespawn = Some(Prespawn {
            agent: plan.agent_name,
            attempt: plan.attempt,
            extensions: self.subs[j].extensions,
            handle,
            polls,
            task: Some(tokio::spawn(start)),
            dropped: self.dropped_prespawns.clone(),
        });
    }

    /// Drops every prespawned agent (a commit failed, or the run is being cancelled).
    pub(super) fn drop_prespawns(&mut self) {
        for s in &mut self.subs {
            s.prespawn = None;
        }
    }

    /// Waits until every prespawned agent dropped unused is gone (its start aborted, or its
    /// agent, if it was up already, dropped).
    pub(super) async fn reap_prespawns(&mut self) {
        self.drop_prespawns();
        loop {
            let next = self
                .dropped_prespawns
                .lock()
                .expect("prespawn list poisoned")
                .pop();
            let Some(t) = next else { break };
            // An agent that was up already is dropped here; an aborted start ends cancelled.
            let _ = t.await;
        }
    }
}
