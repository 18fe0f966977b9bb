//! One attempt of a subtask: starting it (agent choice, limits, inputs, resources), the
//! watchdog that enforces its time limit and stall window, and what its end means.

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

/// What an attempt was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Instantiating the component and running `describe()`.
    Starting,
    /// Running its task.
    Running,
}

impl Phase {
    /// For messages: "while …".
    pub(super) fn doing(self) -> &'static str {
        match self {
            Phase::Starting => "while the agent was starting (instantiation and describe())",
            Phase::Running => "while the agent ran its task",
        }
    }
}

/// Why the watchdog stopped an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    /// The subtask's time limit passed.
    TimedOut(Phase),
    /// No progress for the stall window.
    Stalled(Phase),
    /// The run was cancelled before the agent started.
    Cancelled,
}

pub(super) enum Msg {
    Spawned {
        idx: usize,
        attempt: u32,
        agent_id: String,
    },
    Done {
        idx: usize,
        attempt: u32,
        report: Box<Result<AgentReport, Error>>,
        stop: Option<StopReason>,
        started_ms: u64,
        elapsed: Duration,
    },
}

impl Run {
    /// Starts an attempt; `false` when the resource budget has no room now.
    pub(super) async fn start(&mut self, i: usize) -> bool {
        self.choose_agent(i);
        let agent_name = self.subs[i].candidates[self.subs[i].agent_idx].clone();
        let agent = self.agents[&agent_name].clone();
        let def = self.manifest.subtasks[i].clone();
        let mut spec = agent.spec.clone();
        // Policies match the agent by the kind the manifest declares, never by the name the
        // component gives itself.
        spec.name = Some(agent_name.clone());
        if let Some(m) = def.constraints.max_memory_mb {
            spec.resource_limits.max_memory_mb = spec.resource_limits.max_memory_mb.min(m);
        }
        if let Some(t) = &def.constraints.allowed_tools {
            spec.security_constraints.allowed_tools = t.clone();
        }
        let ext = self.subs[i].extensions;
        if ext > 0 {
            let f = self
                .manifest
                .strategy
                .retry
                .deadline_extension_factor
                .powi(ext as i32);
            let ceiling = self.host.runtime().config().max_execution_time_ms;
            spec.resource_limits.max_execution_time_ms =
                ((spec.resource_limits.max_execution_time_ms as f64 * f) as u64).min(ceiling);
        }
        let lifetime = Duration::from_millis(
            self.subs[i]
                .time_limit_ms
                .unwrap_or(spec.resource_limits.max_execution_time_ms)
                .max(spec.resource_limits.max_execution_time_ms),
        );
        let attempt = self.subs[i].attempts.len() as u32 + 1;
        let holder = format!("{}#{attempt}", def.id);
        let allocation = match self.resources.allocate(
            &holder,
            ResourceRequest {
                memory_mb: u64::from(spec.resource_limits.max_memory_mb),
                agents: 1,
            },
            lifetime,
        ) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(subtask = %def.id, error = %e, "waiting for resources");
                self.subs[i].blocked = Some(e.to_string());
                return false;
            }
        };
        let (inputs, missing) = self.gather_inputs(i);
        let mut inputs = inputs;
        if !missing.is_empty() && !def.inputs.iter().any(|x| x.name == "missing") {
            inputs.insert("missing".into(), json!(missing));
        }
        let input = json!({
            "subtask": def.id,
            "attempt": attempt,
            "inputs": inputs,
            "config": agent.config,
        });
        let task = TaskRequest {
            id: Some(format!("{}/{}/{attempt}", self.run_id, def.id)),
            description: if def.description.is_empty() {
                def.id.clone()
            } else {
                def.description.clone()
            },
            input,
        };
        let s = &mut self.subs[i];
        s.state = SubtaskState::Running;
        s.agent_id = None;
        s.allocation = Some(allocation);
        s.attempts_on_agent += 1;
        s.tried.insert(s.agent_idx);
        s.waiting.store(false, Ordering::Relaxed);
        // Each attempt counts its own sync waits.
        s.sync_waited_us = Arc::new(AtomicU64::new(0));
        s.stopping = Arc::new(AtomicBool::new(false));
        s.blocked = None;
        let handle = SyncHandle {
            engine: self.sync.clone(),
            participant: def.id.clone(),
            waiting: s.waiting.clone(),
            waited_us: s.sync_waited_us.clone(),
            timer_due: Default::default(),
            polling: Default::default(),
        };
        let time_limit = s.time_limit_ms.map(|ms| {
            let f = self
                .manifest
                .strategy
                .retry
                .deadline_extension_factor
                .powi(ext as i32);
            Duration::from_millis((ms as f64 * f) as u64)
        });
        let started_ms = self.ms();
        self.subs[i].attempts.push(AttemptRecord {
            attempt,
            agent: agent_name.clone(),
            agent_id: None,
            started_ms,
            duration_ms: 0,
            sync_wait_us: 0,
            outcome: "running".into(),
            usage: None,
            then: None,
        });
        self.event(
            "subtask-started",
            Some(i),
            json!({"agent": agent_name, "attempt": attempt, "missingInputs": missing}),
        )
        .await;
        let host = self.host.clone();
        let tx = self.tx.clone();
        let stall = Duration::from_millis(self.manifest.strategy.stall_window_ms);
        tokio::spawn(attempt_task(AttemptArgs {
            host,
            agent,
            spec,
            handle,
            task,
            time_limit,
            stall,
            cancel: self.cancel_tx.subscribe(),
            stopping: self.subs[i].stopping.clone(),
            tx,
            idx: i,
            attempt,
            started_ms,
        }));
        true
    }

    /// The subtask's inputs. A `<subtask>.<output>` value is the output document the
    /// coordinator committed to the shared context (`run/<run>/output/<subtask>`) before any
    /// dependent started; it keeps the copy it committed (or, resuming, the one it loaded from
    /// the context) instead of reading it back.
    pub(super) fn gather_inputs(&self, i: usize) -> (Map<String, Value>, Vec<String>) {
        let def = &self.manifest.subtasks[i];
        let mut out = Map::new();
        let mut missing = Vec::new();
        for inp in &def.inputs {
            if let Some(v) = &inp.value {
                out.insert(inp.name.clone(), substitute_run(v, &self.run_id));
                continue;
            }
            let Some(from) = &inp.from else { continue };
            let mut values = Vec::new();
            for r in from.refs() {
                let v = match Source::parse(r) {
                    Some(Source::Output { subtask, output }) => self
                        .subs
                        .iter()
                        .find(|s| s.id == subtask && s.state == SubtaskState::Completed)
                        .and_then(|s| s.output.as_ref())
                        .and_then(|o| o.get(&output).cloned()),
                    Some(Source::Sync(p)) => match self.sync.outcome(&p) {
                        Some(Ok(o)) => Some(o.result),
                        _ => None,
                    },
                    None => None,
                };
                match v {
                    Some(v) => values.push(v),
                    None => missing.push(r.to_string()),
                }
            }
            let value = match from {
                crate::coord::manifest::FromRef::One(_) => values.pop().unwrap_or(Value::Null),
                crate::coord::manifest::FromRef::Many(_) => Value::Array(values),
            };
            out.insert(inp.name.clone(), value);
        }
        (out, missing)
    }

    pub(super) async fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Spawned {
                idx,
                attempt,
                agent_id,
            } => {
                let s = &mut self.subs[idx];
                if s.attempts.len() as u32 == attempt {
                    s.agent_id = Some(agent_id.clone());
                    if let Some(a) = s.attempts.last_mut() {
                        a.agent_id = Some(agent_id.clone());
                    }
                }
                if let Some(reason) = &self.cancelled {
                    let _ = self
                        .host
                        .terminate(&agent_id, &format!("run cancelled: {reason}"));
                }
            }
            Msg::Done {
                idx,
                attempt,
                report,
                stop,
                started_ms,
                elapsed,
            } => {
                self.on_done(idx, attempt, *report, stop, started_ms, elapsed)
                    .await
            }
        }
    }

    pub(super) async fn on_done(
        &mut self,
        i: usize,
        attempt: u32,
        report: Result<AgentReport, Error>,
        stop: Option<StopReason>,
        started_ms: u64,
        elapsed: Duration,
    ) {
        if let Some(a) = self.subs[i].allocation.take() {
            self.resources.release(&a);
        }
        self.subs[i].agent_id = None;
        let agent = self.subs[i].attempts[attempt as usize - 1].agent.clone();
        let duration_ms = elapsed.as_millis() as u64;
        let (usage, result) = match report {
            Ok(r) => {
                let usage = r.usage.clone();
                (Some(usage), r.into_result().map_err(Some))
            }
            Err(Error::Spawn(f, _)) => (None, Err(Some(f))),
            Err(e) => (
                None,
                Err(Some(AgentFailure::Host {
                    message: e.to_string(),
                })),
            ),
        };
        // Outputs and success criteria.
        let def = self.manifest.subtasks[i].clone();
        let result = result.and_then(|out| match check_output(&def, &out, duration_ms) {
            Ok(()) => Ok(out),
            Err(m) => Err(Some(AgentFailure::AgentError {
                error_kind: "criteria".into(),
                message: m,
            })),
        });
        {
            let waited = self.subs[i].sync_waited_us.load(Ordering::Relaxed);
            let rec = &mut self.subs[i].attempts[attempt as usize - 1];
            rec.duration_ms = duration_ms;
            rec.sync_wait_us = waited;
            rec.started_ms = started_ms;
            rec.usage = usage;
        }
        // The failure class and message, or the output once it is committed: an output the
        // store refuses (larger than its document limit, a full disk) fails the attempt.
        let failed = match result {
            Ok(output) => {
                let id = format!("run/{}/output/{}", self.run_id, def.id);
                match self.commit_doc(&id, "subtask-output", output.clone()).await {
                    Ok(()) => {
                        let ratio = duration_ms as f64 / def.estimated_duration_ms.max(1) as f64;
                        self.strategy.attempt_ended(
                            &agent,
                            Some(ratio),
                            self.manifest.strategy.max_concurrent_agents,
                        );
                        // Computing time only: waits at sync points are not work.
                        let waited = self.subs[i].attempts[attempt as usize - 1].sync_wait_us;
                        self.busy_completed +=
                            elapsed.saturating_sub(Duration::from_micros(waited));
                        self.subs[i].attempts[attempt as usize - 1].outcome = "completed".into();
                        self.subs[i].output = Some(output);
                        self.settle(i, SubtaskState::Completed, None).await;
                        return;
                    }
                    Err(e) => (
                        Class::Host,
                        format!("the output could not be committed to `{id}`: {e}"),
                    ),
                }
            }
            Err(failure) => {
                let failure = failure.unwrap_or(AgentFailure::Host {
                    message: "no result".into(),
                });
                let class = match (stop, &failure) {
                    (Some(StopReason::TimedOut(_)), _) => Class::TimedOut,
                    (Some(StopReason::Stalled(_)), _) => Class::Stalled,
                    (_, AgentFailure::LimitExceeded { .. }) => Class::Limit,
                    (_, AgentFailure::AgentError { error_kind, .. })
                        if error_kind == "invalid-input" =>
                    {
                        Class::InvalidInput
                    }
                    _ => Class::Retryable,
                };
                let message = match stop {
                    Some(StopReason::TimedOut(phase)) => format!(
                        "attempt timed out after {duration_ms} ms (timeLimitMs) {} and was \
                         terminated",
                        phase.doing()
                    ),
                    Some(StopReason::Stalled(phase)) => format!(
                        "no progress for {} ms (stallWindowMs) {}; the agent was terminated",
                        self.manifest.strategy.stall_window_ms,
                        phase.doing()
                    ),
                    Some(StopReason::Cancelled) | None => failure.to_string(),
                };
                (class, message)
            }
        };
        let (class, message) = failed;
        // It no longer waits at any barrier: its arrival there does not stand.
        self.sync.withdraw(&def.id);
        self.strategy
            .attempt_ended(&agent, None, self.manifest.strategy.max_concurrent_agents);
        self.subs[i].attempts[attempt as usize - 1].outcome = message.clone();
        self.event(
            "attempt-failed",
            Some(i),
            json!({"agent": agent, "attempt": attempt, "error": message, "class": class.as_str()}),
        )
        .await;
        if self.cancelled.is_some() {
            let reason = self.cancelled.clone();
            self.settle(i, SubtaskState::Cancelled, reason).await;
            return;
        }
        self.on_failure(i, attempt, class, message).await;
    }
}

pub(super) struct AttemptArgs {
    host: Arc<AgentHost>,
    agent: PreparedAgent,
    spec: crate::spec::SubAgentSpecification,
    handle: SyncHandle,
    task: TaskRequest,
    time_limit: Option<Duration>,
    stall: Duration,
    /// Turns true when the run is cancelled.
    cancel: watch::Receiver<bool>,
    /// Set once the watchdog stops the agent.
    stopping: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Msg>,
    idx: usize,
    attempt: u32,
    started_ms: u64,
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
    let polls = Arc::new(AtomicU64::new(0));
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
    let mut spawn = Counted {
        inner: Box::pin(
            a.host
                .spawn_with(&a.agent.component, a.spec, Some(a.handle.clone())),
        ),
        wakes: polls.clone(),
        waker: None,
    };
    let agent = match watchdog.watch(&mut spawn, Some(&mut cancel)).await {
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
    drop(spawn);
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
