//! Terminate and the deadline in every phase of an agent's life, now that the guest's work is
//! polled before either is looked at: before the run, during spawn, blocked in a host call,
//! sleeping in WASI and spinning.

use super::*;
use qi_guest_artifacts::{
    HELLO_COMPONENT, SLEEPER_COMPONENT, SPIN_FOREVER_COMPONENT, TOOL_USER_COMPONENT,
};
use qi_host::{AgentFailure, Error, LimitKind, TaskRequest};

/// `max_execution_time_ms` of the deadline tests (run on tokio's paused clock).
const LIMIT_MS: u64 = 5_000;

/// Far past any deadline of these tests on the paused clock (which also counts the real time
/// spent compiling a component before the spawn, as the deadline is taken from the real clock).
const FAR_PAST_THE_LIMIT: Duration = Duration::from_secs(3_600);

#[track_caller]
fn terminated_with(failure: &Option<AgentFailure>, want: &str) {
    assert_eq!(
        failure,
        &Some(AgentFailure::Terminated {
            reason: want.into()
        })
    );
}

/// A `tool-user` agent on `host` with [`tool_spec`], and its id.
async fn spawn_tool_user(host: &AgentHost) -> (qi_host::SubAgent, String) {
    let agent = host
        .spawn(&host.load(TOOL_USER_COMPONENT).unwrap(), tool_spec())
        .await
        .expect("spawns");
    let id = agent.id().to_string();
    (agent, id)
}

#[tokio::test]
async fn terminate_before_run_ends_the_run_before_the_guest_calls_anything() {
    let host = race_host();
    let (agent, id) = spawn_tool_user(host).await;
    host.terminate(&id, "before run").unwrap();
    let report = agent
        .run(TaskRequest::new("never starts", one_call("clock.now")))
        .await;
    terminated_with(&report.failure, "before run");
    assert_eq!(report.status, AgentStatus::Terminated);
    assert_eq!(report.output, None);
    assert_eq!(report.usage.tool_calls, 0, "the guest ran after terminate");
    assert_eq!(host.status(&id), None, "the agent left the registry");
}

#[tokio::test]
async fn the_first_terminate_reason_wins_for_an_agent_blocked_in_a_host_call() {
    let host = race_host();
    let (agent, id) = spawn_tool_user(host).await;
    let running = tokio::spawn(agent.run(TaskRequest::new("blocks", one_call("race.gate"))));
    entered_gate(&id).await;
    host.terminate(&id, "first").unwrap();
    host.terminate(&id, "second").unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("terminate stops an agent blocked in a host call")
        .unwrap();
    terminated_with(&report.failure, "first");
    assert_eq!(report.usage.tool_calls, 1);
    assert_eq!(host.status(&id), None);
    assert!(matches!(
        host.terminate(&id, "third"),
        Err(Error::UnknownAgent(_))
    ));
}

#[tokio::test]
async fn terminate_stops_a_spinning_agent_before_its_fuel_runs_out() {
    let host = race_host();
    let agent = host
        .spawn(&host.load(SPIN_FOREVER_COMPONENT).unwrap(), spec())
        .await
        .expect("spawns");
    let id = agent.id().to_string();
    let running = tokio::spawn(agent.run(TaskRequest::new("spin", json!(null))));
    // Seen between two scheduler turns: the guest is parked at a fuel yield.
    status_reached(host, &id, AgentStatus::Executing).await;
    host.terminate(&id, "spinning").unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("terminate stops a spinning agent")
        .unwrap();
    terminated_with(&report.failure, "spinning");
    assert!(report.usage.fuel_consumed < spec().fuel);
    assert_eq!(host.status(&id), None);
}

#[tokio::test]
async fn terminate_stops_an_agent_sleeping_in_wasi() {
    let host = race_host();
    let agent = host
        .spawn(&host.load(SLEEPER_COMPONENT).unwrap(), spec())
        .await
        .expect("spawns");
    let id = agent.id().to_string();
    // Longer than the hang guard: only terminate can end it in time.
    let running = tokio::spawn(agent.run(TaskRequest::new("nap", json!({"ms": 600_000}))));
    status_reached(host, &id, AgentStatus::Executing).await;
    host.terminate(&id, "sleeping").unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("terminate stops a sleeping agent")
        .unwrap();
    terminated_with(&report.failure, "sleeping");
}

/// Spawns `hello` on a host of its own with a yield at every fuel unit, so the spawn parks
/// while the guest is being instantiated and described; returns the host, the spawn's task and
/// the id of the agent being spawned (the only one in the registry).
async fn parked_spawn() -> (
    Arc<AgentHost>,
    tokio::task::JoinHandle<qi_host::Result<String>>,
    String,
) {
    let host = Arc::new(own_host(1));
    let hello = host.load(HELLO_COMPONENT).unwrap();
    let mut s = spec();
    s.resource_limits.max_execution_time_ms = LIMIT_MS;
    s.configuration_overrides
        .insert("fuelYieldInterval".into(), json!(1));
    let spawning = tokio::spawn({
        let host = host.clone();
        async move { host.spawn(&hello, s).await.map(|a| a.id().to_string()) }
    });
    for _ in 0..1_000_000 {
        assert!(
            !spawning.is_finished(),
            "the spawn finished without parking"
        );
        if let Some((id, status)) = host.list().into_iter().next() {
            assert!(
                !spawning.is_finished(),
                "the spawn finished without parking"
            );
            assert_eq!(status, AgentStatus::Initializing);
            return (host, spawning, id);
        }
        tokio::task::yield_now().await;
    }
    panic!("the agent never appeared in the registry");
}

#[tokio::test]
async fn terminate_during_spawn_fails_the_spawn_and_frees_its_slot() {
    let (host, spawning, id) = parked_spawn().await;
    host.terminate(&id, "during spawn").unwrap();
    match spawning.await.unwrap() {
        Err(Error::Spawn(AgentFailure::Terminated { reason }, _)) => {
            assert_eq!(reason, "during spawn")
        }
        other => panic!("expected a terminated spawn, got {other:?}"),
    }
    assert_eq!(host.list(), vec![]);
    // The one slot is free again.
    host.spawn(&host.load(HELLO_COMPONENT).unwrap(), spec())
        .await
        .expect("the slot was freed");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passing_during_spawn_fails_the_spawn_with_execution_time() {
    let (host, spawning, _id) = parked_spawn().await;
    tokio::time::advance(FAR_PAST_THE_LIMIT).await;
    match spawning.await.unwrap() {
        Err(Error::Spawn(AgentFailure::LimitExceeded { limit, .. }, _)) => {
            assert_eq!(limit, LimitKind::ExecutionTime)
        }
        other => panic!("expected an execution-time failure, got {other:?}"),
    }
    assert_eq!(host.list(), vec![]);
}

/// Spawns on [`race_host`] with the deadline tests' limit.
async fn spawn_limited(path: &str, mut s: SubAgentSpecification) -> qi_host::SubAgent {
    s.resource_limits.max_execution_time_ms = LIMIT_MS;
    race_host()
        .spawn(&race_host().load(path).unwrap(), s)
        .await
        .expect("spawns")
}

#[track_caller]
fn execution_time_exceeded(report: &qi_host::AgentReport) {
    let (kind, message) = limit(report);
    assert_eq!(kind, LimitKind::ExecutionTime, "{message}");
    assert_eq!(report.status, AgentStatus::Failed);
}

/// Runs `agent` on `input` with a hang guard on the paused clock, far past its deadline.
async fn run_guarded(agent: qi_host::SubAgent, input: Value) -> qi_host::AgentReport {
    tokio::time::timeout(
        2 * FAR_PAST_THE_LIMIT,
        agent.run(TaskRequest::new("deadline", input)),
    )
    .await
    .expect("the deadline stopped the agent")
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_an_agent_blocked_forever_in_a_host_call() {
    // Paused clock: the runtime is idle while the agent waits, so time jumps to its deadline.
    let agent = spawn_limited(TOOL_USER_COMPONENT, tool_spec()).await;
    let id = agent.id().to_string();
    let report = run_guarded(agent, one_call("race.gate")).await;
    execution_time_exceeded(&report);
    assert!(has_entered_gate(&id), "it was stopped inside the call");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_an_agent_sleeping_in_wasi_before_its_sleep_ends() {
    // WASI sleeps are tokio timers: the paused clock jumps to the earlier one, the deadline.
    let agent = spawn_limited(SLEEPER_COMPONENT, spec()).await;
    let report = run_guarded(agent, json!({"ms": FAR_PAST_THE_LIMIT.as_millis() as u64})).await;
    execution_time_exceeded(&report);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_a_spinning_agent_before_its_fuel_runs_out() {
    let agent = spawn_limited(SPIN_FOREVER_COMPONENT, spec()).await;
    let id = agent.id().to_string();
    let running = tokio::spawn(agent.run(TaskRequest::new("spin", json!(null))));
    // A spinning agent keeps the runtime busy, so the paused clock moves only when told.
    status_reached(race_host(), &id, AgentStatus::Executing).await;
    tokio::time::advance(FAR_PAST_THE_LIMIT).await;
    let report = running.await.unwrap();
    execution_time_exceeded(&report);
    assert!(report.usage.fuel_consumed < spec().fuel);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passed_before_run_fails_the_run_before_the_guest_calls_anything() {
    // The deadline covers the agent's whole life from spawn: a run started after it must not
    // let the guest work, even when the work would finish without ever yielding.
    let agent = spawn_limited(TOOL_USER_COMPONENT, tool_spec()).await;
    tokio::time::advance(FAR_PAST_THE_LIMIT).await;
    let report = run_guarded(agent, one_call("clock.now")).await;
    execution_time_exceeded(&report);
    assert_eq!(
        report.usage.tool_calls, 0,
        "the guest ran past its deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_at_any_moment_of_a_run_stops_the_agent() {
    // Terminate races the run from another worker thread: before it starts, between the
    // signal check and the wait, inside the host call. A lost wake-up leaves an agent blocked
    // in `race.gate` forever, caught by the hang guard.
    let host = race_host();
    let tool_user = host.load(TOOL_USER_COMPONENT).unwrap();
    for round in 0..200 {
        let agent = host.spawn(&tool_user, tool_spec()).await.expect("spawns");
        let id = agent.id().to_string();
        let running = tokio::spawn(agent.run(TaskRequest::new("blocks", one_call("race.gate"))));
        host.terminate(&id, "racing").unwrap();
        let report = tokio::time::timeout(Duration::from_secs(60), running)
            .await
            .unwrap_or_else(|_| panic!("round {round}: terminate was lost"))
            .unwrap();
        terminated_with(&report.failure, "racing");
        assert!(report.usage.tool_calls <= 1, "round {round}");
    }
}

/// The largest `fuelYieldInterval`: the most guest code that may run between two looks at the
/// terminate signal and the deadline.
const INTERVAL: u64 = qi_host::spec::MAX_FUEL_YIELD_INTERVAL;

/// `spin-forever` with room for a hundred intervals.
fn spin_spec() -> SubAgentSpecification {
    let mut s = spec();
    s.fuel = 100 * INTERVAL;
    s.configuration_overrides
        .insert("fuelYieldInterval".into(), json!(INTERVAL));
    s
}

/// Polls `run` exactly once: the guest runs up to its first fuel yield and parks there.
async fn poll_once<F: std::future::Future>(mut run: std::pin::Pin<&mut F>) {
    let parked =
        std::future::poll_fn(|cx| std::task::Poll::Ready(run.as_mut().poll(cx).is_pending())).await;
    assert!(parked, "a spinning agent never finishes its run");
}

#[track_caller]
fn within_one_more_interval(report: &qi_host::AgentReport) {
    // At most one interval to the first yield (the spawn's fuel counts towards it), one more
    // after the stop: the work is polled before the signal and the deadline. wasmtime notices
    // an interval's end at its next fuel check, a few units late (2·INTERVAL + 1 here).
    assert!(
        report.usage.fuel_consumed <= 2 * INTERVAL + INTERVAL / 100,
        "the guest ran {} fuel units, more than one interval past the stop",
        report.usage.fuel_consumed
    );
}

#[tokio::test]
async fn a_spinning_agent_runs_at_most_one_more_yield_interval_after_terminate() {
    let host = race_host();
    let agent = host
        .spawn(&host.load(SPIN_FOREVER_COMPONENT).unwrap(), spin_spec())
        .await
        .expect("spawns");
    let id = agent.id().to_string();
    let mut run = std::pin::pin!(agent.run(TaskRequest::new("spin", json!(null))));
    poll_once(run.as_mut()).await;
    host.terminate(&id, "one interval").unwrap();
    let report = run.await;
    terminated_with(&report.failure, "one interval");
    within_one_more_interval(&report);
}

#[tokio::test(start_paused = true)]
async fn a_spinning_agent_runs_at_most_one_more_yield_interval_past_its_deadline() {
    let agent = spawn_limited(SPIN_FOREVER_COMPONENT, spin_spec()).await;
    let mut run = std::pin::pin!(agent.run(TaskRequest::new("spin", json!(null))));
    poll_once(run.as_mut()).await;
    tokio::time::advance(FAR_PAST_THE_LIMIT).await;
    let report = run.await;
    execution_time_exceeded(&report);
    within_one_more_interval(&report);
}
