//! The attempt task: spawning the agent and running its task under the watchdog (time limit,
//! stall window, the run's cancellation), and reporting how it ended whatever happens.

use super::attempt::{Phase, StopReason};
use super::*;

/// Counts the wake-ups of an agent's run: it is woken when it spends fuel (the engine yields
/// every fuel interval) and when a host call completes, so a counter that stops moving means
/// the agent stopped making progress. Wake-ups of the surrounding task (the watchdog's timer)
/// are not counted: only the agent's own waker counts.
pub(super) struct Counted<F> {
    inner: Pin<Box<F>>,
    wakes: Arc<AtomicU64>,
    waker: Option<(std::task::Waker, std::task::Waker)>,
}

pub(super) struct CountingWaker {
    inner: std::task::Waker,
    wakes: Arc<AtomicU64>,
}

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        self.inner.wake_by_ref();
    }
}

impl<F> Counted<F> {
    /// Counts the wake-ups of `inner` in `wakes`.
    pub(super) fn new(inner: Pin<Box<F>>, wakes: Arc<AtomicU64>) -> Counted<F> {
        Counted {
            inner,
            wakes,
            waker: None,
        }
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let reuse = matches!(&this.waker, Some((outer, _)) if outer.will_wake(cx.waker()));
        if !reuse {
            let counting = std::task::Waker::from(Arc::new(CountingWaker {
                inner: cx.waker().clone(),
                wakes: this.wakes.clone(),
            }));
            this.waker = Some((cx.waker().clone(), counting));
        }
        let waker = &this.waker.as_ref().expect("set above").1;
        this.inner.as_mut().poll(&mut TaskCx::from_waker(waker))
    }
}

pub(super) struct AttemptArgs {
    pub(super) host: Arc<AgentHost>,
    pub(super) agent: PreparedAgent,
    pub(super) spec: crate::spec::SubAgentSpecification,
    /// The agent, already being started (see `prespawn`), and the wake-ups of its start.
    pub(super) prespawned: Option<(super::prespawn::Spawning, Arc<AtomicU64>)>,
    pub(super) handle: SyncHandle,
    pub(super) task: TaskRequest,
    pub(super) time_limit: Option<Duration>,
    pub(super) stall: Duration,
    /// Turns true when the run is cancelled.
    pub(super) cancel: watch::Receiver<bool>,
    /// Set once the watchdog stops the agent.
    pub(super) stopping: Arc<AtomicBool>,
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) idx: usize,
    pub(super) attempt: u32,
    pub(super) started_ms: u64,
}

/// Sends an attempt's [`Msg::Done`] however its task ends: a task that panics or is dropped
/// before it reported becomes that attempt's failure (a host error naming which), so the run
/// never waits for a message that cannot come.
pub(super) struct DoneGuard {
    tx: mpsc::UnboundedSender<Msg>,
    idx: usize,
    attempt: u32,
    started_ms: u64,
    started: Instant,
    sent: bool,
}

impl DoneGuard {
    pub(super) fn new(
        tx: mpsc::UnboundedSender<Msg>,
        idx: usize,
        attempt: u32,
        started_ms: u64,
    ) -> DoneGuard {
        DoneGuard {
            tx,
            idx,
            attempt,
            started_ms,
            started: Instant::now(),
            sent: false,
        }
    }

    /// Reports the attempt's end.
    pub(super) fn send(mut self, report: Result<AgentReport, Error>, stop: Option<StopReason>) {
        self.sent = true;
        self.deliver(report, stop);
    }

    fn deliver(&self, report: Result<AgentReport, Error>, stop: Option<StopReason>) {
        let _ = self.tx.send(Msg::Done {
            idx: self.idx,
            attempt: self.attempt,
            report: Box::new(report),
            stop,
            started_ms: self.started_ms,
            elapsed: self.started.elapsed(),
        });
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if self.sent {
            return;
        }
        let what = if std::thread::panicking() {
            "panicked"
        } else {
            "was cancelled"
        };
        self.deliver(
            Err(Error::System(anyhow::anyhow!(
                "the host task running attempt {} {what} before the attempt ended",
                self.attempt
            ))),
            None,
        );
    }
}

/// What the watchdog saw when it stopped an attempt.
enum Seen {
    TimedOut,
    Stalled,
    Cancelled,
}

/// The time limit and stall window of one attempt, over both its phases.
struct Watchdog {
    polls: Arc<AtomicU64>,
    deadline: Option<Instant>,
    stall: Duration,
    tick: Duration,
    last: u64,
    last_change: Instant,
    handle: SyncHandle,
}

impl Watchdog {
    /// Polls `fut` until it ends (`Ok`) or a limit passes or the run is cancelled (`Err`,
    /// `fut` left to the caller). Progress is a wake-up of the agent's own task or a wait
    /// with its own timeout ([`SyncHandle::is_waiting`]).
    async fn watch<F: Future + Unpin>(
        &mut self,
        fut: &mut F,
        cancel: Option<&mut watch::Receiver<bool>>,
    ) -> Result<F::Output, Seen> {
        let mut cancel = cancel;
        loop {
            let cancelled = async {
                match cancel.as_deref_mut() {
                    Some(rx) => {
                        let _ = rx.wait_for(|c| *c).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                r = &mut *fut => return Ok(r),
                _ = cancelled => return Err(Seen::Cancelled),
                _ = sleep_until_opt(self.deadline) => return Err(Seen::TimedOut),
                _ = tokio::time::sleep(self.tick) => {
                    let p = self.polls.load(Ordering::Relaxed);
                    if p != self.last || self.handle.is_waiting() {
                        self.last = p;
                        self.last_change = Instant::now();
                    } else if self.last_change.elapsed() >= self.stall {
                        return Err(Seen::Stalled);
                    }
                }
            }
        }
    }

    /// No further stops: the attempt is already being stopped.
    fn disarm(&mut self) {
        self.deadline = None;
        self.stall = Duration::MAX;
    }
}

pub(super) async fn attempt_task(a: AttemptArgs) {
    let done = DoneGuard::new(a.tx.clone(), a.idx, a.attempt, a.started_ms);
    let started = Instant::now();
    let (prespawned, polls) = match a.prespawned {
        Some((spawning, polls)) => (Some(spawning), polls),
        None => (None, Arc::new(AtomicU64::new(0))),
    };
    let mut watchdog = Watchdog {
        polls: polls.clone(),
        // A limit too far to represent is no limit (the agent's own time limit still holds).
        deadline: a.time_limit.and_then(|l| started.checked_add(l)),
        stall: a.stall,
        tick: (a.stall / 4).clamp(Duration::from_millis(5), Duration::from_millis(500)),
        last: 0,
        last_change: Instant::now(),
        handle: a.handle.clone(),
    };
    let mut cancel = a.cancel.clone();
    // Instantiation and `describe()` run under the same limits as the task, and stop when the
    // run is cancelled: dropping the spawn drops the instance.
    let start: Pin<Box<dyn Future<Output = Result<crate::agents::SubAgent, Error>> + Send>> =
        match prespawned {
            Some(spawning) => Box::pin(spawning),
            None => {
                let host = a.host.clone();
                let component = a.agent.component.clone();
                let handle = a.handle.clone();
                Box::pin(async move { host.spawn_with(&component, a.spec, Some(handle)).await })
            }
        };
    let mut spawn = Counted::new(Box::pin(start), polls.clone());
    let started = watchdog.watch(&mut spawn, Some(&mut cancel)).await;
    // A start that was stopped is dropped (its agent with it, or, prespawned, handed to the
    // run to await) before the run hears of it, so no agent outlives the run.
    drop(spawn);
    let agent = match started {
        Ok(Ok(agent)) => agent,
        Ok(Err(e)) => return done.send(Err(e), None),
        Err(seen) => {
            let stop = match seen {
                Seen::TimedOut => StopReason::TimedOut(Phase::Starting),
                Seen::Stalled => StopReason::Stalled(Phase::Starting),
                Seen::Cancelled => StopReason::Cancelled,
            };
            let message = format!("stopped {} ({stop:?})", Phase::Starting.doing());
            return done.send(Err(Error::System(anyhow::anyhow!(message))), Some(stop));
        }
    };
    let id = agent.id().to_string();
    let _ = a.tx.send(Msg::Spawned {
        idx: a.idx,
        attempt: a.attempt,
        agent_id: id.clone(),
    });
    let mut run = Counted {
        inner: Box::pin(agent.run(a.task)),
        wakes: polls,
        waker: None,
    };
    let mut stop = None;
    // Cancellation of a running agent is the run's to do (it terminates every agent).
    let report = loop {
        match watchdog.watch(&mut run, None).await {
            Ok(r) => break Ok(r),
            Err(seen) => {
                a.stopping.store(true, Ordering::Relaxed);
                watchdog.disarm();
                let (reason, why) = match seen {
                    Seen::Stalled => (
                        StopReason::Stalled(Phase::Running),
                        format!("no progress for {} ms", a.stall.as_millis()),
                    ),
                    _ => (
                        StopReason::TimedOut(Phase::Running),
                        "the subtask's time limit passed".to_string(),
                    ),
                };
                stop = Some(reason);
                let _ = a.host.terminate(&id, &why);
            }
        }
    };
    done.send(report, stop);
}
