//! One attempt of a subtask: starting it (agent choice, limits, inputs, resources) and what
//! its end means (output commit, failure class). The task that runs it is in `watchdog`.

use super::*;

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

/// See [`Run::plan_attempt`].
pub(super) struct AttemptPlan {
    pub(super) agent_name: String,
    pub(super) agent: PreparedAgent,
    pub(super) spec: crate::spec::SubAgentSpecification,
    /// The deadline extension factor applied (1 without extensions).
    pub(super) factor: f64,
    pub(super) lifetime: Duration,
    pub(super) attempt: u32,
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
    /// What the next attempt of subtask `i` runs: the agent kind chosen now, its spec (the
    /// subtask's constraints and deadline extensions applied) and its allocation's lifetime.
    pub(super) fn plan_attempt(&mut self, i: usize) -> AttemptPlan {
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
        // Each deadline extension multiplies the limits by the factor once more.
        let f = self
            .manifest
            .strategy
            .retry
            .deadline_extension_factor
            .powi(ext.min(i32::MAX as u32) as i32);
        if ext > 0 {
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
        AttemptPlan {
            agent_name,
            agent,
            spec,
            factor: f,
            lifetime,
            attempt,
        }
    }

    /// Starts an attempt; `false` when the resource budget has no room now.
    pub(super) async fn start(&mut self, i: usize) -> bool {
        let AttemptPlan {
            agent_name,
            agent,
            spec,
            factor: f,
            lifetime,
            attempt,
        } = self.plan_attempt(i);
        let def = self.manifest.subtasks[i].clone();
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
        s.stopping = Arc::new(AtomicBool::new(false));
        s.blocked = None;
        // The agent started while the output before it committed, if it is the one chosen.
        let prespawned = s.prespawn.take().filter(|p| {
            p.agent == agent_name && p.attempt == attempt && p.extensions == s.extensions
        });
        let handle = match &prespawned {
            Some(p) => p.handle.clone(),
            None => self.new_handle(i, attempt),
        };
        let s = &mut self.subs[i];
        // Each attempt counts its own sync waits.
        s.sync_waited_us = handle.waited_us.clone();
        let time_limit = s
            .time_limit_ms
            .map(|ms| Duration::from_millis((ms as f64 * f) as u64));
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
            prespawned: prespawned.map(|p| p.into_task()),
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

    /// A fresh handle for attempt `attempt` of subtask `i` (its own sync-wait counter).
    pub(super) fn new_handle(&self, i: usize, attempt: u32) -> SyncHandle {
        SyncHandle {
            engine: self.sync.clone(),
            participant: self.subs[i].id.clone(),
            waiting: self.subs[i].waiting.clone(),
            waited_us: Arc::new(AtomicU64::new(0)),
            timer_due: Default::default(),
            polling: Default::default(),
            channels: Some(self.channels.clone()),
            attempt,
            run_id: self.run_id.clone(),
        }
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
        // Whatever the outcome, what it received and did not ack goes back to its queues.
        self.channels.attempt_ended(&self.subs[i].id, attempt);
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
                // The commit runs in its own task, and the next subtask of a serial segment
                // starts its agent meanwhile (spawned second, it stays on this worker; the
                // commit is taken by the other).
                let t = Instant::now();
                let committing = tokio::spawn({
                    let ctx = self.ctx.clone();
                    let (id, doc) = (id.clone(), output.clone());
                    async move { ctx.put_as_operator(&id, "subtask-output", doc).await }
                });
                self.prespawn_successor(i);
                let committed = match committing.await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(e) => Err(format!("the commit task ended: {e}")),
                };
                self.comm_time += t.elapsed();
                self.comm_events += 1;
                match committed {
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
                    Err(e) => {
                        self.drop_prespawns();
                        (
                            Class::Host,
                            format!("the output could not be committed to `{id}`: {e}"),
                        )
                    }
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
