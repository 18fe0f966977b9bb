//! Red-team attacks on channels end to end (the `messenger` guest): a consumer that starts
//! before its producer under a concurrency limit of one, and a consumer whose producer is in
//! a later wave. Tests marked `Was failing` failed on the code as first committed and are fixed.

use super::*;

use super::channels::sub;

/// The run of `channels` and `subtasks` under `strategy` at `concurrency`.
fn task(strategy: &str, concurrency: u32, channels: &str, subtasks: &str) -> String {
    super::channels::task(strategy, "graceful-degradation", channels, subtasks).replace(
        "maxConcurrentAgents = 4",
        &format!("maxConcurrentAgents = {concurrency}"),
    )
}

const QUEUE: &str = r#"
[[strategy.channels]]
id = "jobs"
type = "message-queue"
producers = ["produce"]
consumers = ["consume"]

[[strategy.channels]]
id = "results"
type = "event-driven"
producers = ["consume"]
consumers = ["tally"]
"#;

fn producer(extra: &str) -> String {
    sub(
        "produce",
        r#"{ name = "role", value = "producer" }, { name = "channel", value = "jobs" }, { name = "count", value = 3 }"#,
        extra,
    )
}

fn consumer(extra: &str) -> String {
    sub(
        "consume",
        r#"{ name = "role", value = "consumer" }, { name = "channel", value = "jobs" }, { name = "resultsChannel", value = "results" }"#,
        extra,
    )
}

fn tally() -> String {
    sub(
        "tally",
        r#"{ name = "role", value = "tally" }, { name = "resultsChannel", value = "results" }, { name = "ack", value = false }, { name = "expect", value = 3 }"#,
        "dependsOn = [\"consume\"]",
    )
}

const TWO_PRODUCERS: &str = r#"
[[strategy.channels]]
id = "jobs"
type = "message-queue"
producers = ["produce1", "produce2"]
consumers = ["consume"]

[[strategy.channels]]
id = "results"
type = "event-driven"
producers = ["consume"]
consumers = ["tally"]

[[strategy.channels]]
id = "side"
type = "event-driven"
producers = ["gate"]
consumers = ["tally"]
"#;

/// `produce1` (first) sends job 0; `consume` (next) takes it, works 500 ms on it (computing,
/// holding the only slot), then waits in `receive` for more; `produce2` (last) sends jobs 0
/// and 1, once `gate` (sends nothing, done in a few ms) completed. Whenever `gate` runs, its
/// completion is the executor's last wake-up and comes while the consumer computes; the
/// consumer begins waiting ~500 ms later, with nothing left to wake the executor.
fn slot_run(strategy: &str) -> String {
    let producer = |id: &str, count: u32, priority: u32| {
        sub(
            id,
            &format!(
                r#"{{ name = "role", value = "producer" }}, {{ name = "channel", value = "jobs" }}, {{ name = "count", value = {count} }}"#
            ),
            &format!("priority = {priority}"),
        )
    };
    task(
        strategy,
        1,
        TWO_PRODUCERS,
        &(producer("produce1", 1, 20)
            + &sub(
                "consume",
                r#"{ name = "role", value = "consumer" }, { name = "channel", value = "jobs" }, { name = "resultsChannel", value = "results" }, { name = "workMs", value = 500 }"#,
                "priority = 10\ntimeLimitMs = 5000",
            )
            + &sub(
                "gate",
                r#"{ name = "role", value = "producer" }, { name = "channel", value = "side" }, { name = "count", value = 0 }"#,
                "priority = 5",
            )
            + &sub(
                "produce2",
                r#"{ name = "role", value = "producer" }, { name = "channel", value = "jobs" }, { name = "count", value = 2 }"#,
                "dependsOn = [\"gate\"]",
            )
            + &sub(
                "tally",
                r#"{ name = "role", value = "tally" }, { name = "resultsChannel", value = "results" }, { name = "ack", value = false }, { name = "expect", value = 2 }"#,
                "dependsOn = [\"consume\"]",
            )),
    )
}

fn summary(r: &RunReport) -> Vec<(String, SubtaskState, Vec<String>)> {
    r.results
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                s.state,
                s.attempts.iter().map(|a| a.outcome.clone()).collect(),
            )
        })
        .collect()
}

/// Was failing (fixed). The README says waiting in `receive` "holds no concurrency slot". Under
/// `sequential` (one subtask computing at a time) the consumer computes on its first job,
/// then waits in `receive`. `enter_idle` marks it waiting, but nothing wakes the executor
/// (a sync wait sends `SyncNotice::Waiting`; a channel wait sends nothing) and
/// `break_deadlock` only looks at sync points: `produce2` never starts, the consumer loops on
/// 1 s receives until its time limit kills it, and the run fails. (When the consumer happens
/// to be waiting already when the executor handles its spawn, the producer does start: the
/// outcome depends on timing.)
/// Expected: the producer starts while the consumer waits; every job is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_a_waiting_consumer_frees_the_only_slot_for_its_producer() {
    let h = harness().await;
    let (r, events) = h.run(&slot_run("sequential")).await;
    // The attack is staged: the consumer started before produce2.
    assert!(
        first(&events, "subtask-started", "consume")
            < first(&events, "subtask-started", "produce2"),
        "{:#?}",
        summary(&r)
    );
    assert!(
        r.success,
        "produce2 never started while the consumer waited: {:#?}",
        summary(&r)
    );
    assert_eq!(result(&r, "tally").output.clone().unwrap()["processed"], 2);
}

/// Same, under `hybrid` with `maxConcurrentAgents = 1`. Was failing (same cause; fixed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_a_waiting_consumer_frees_the_only_slot_under_hybrid() {
    let h = harness().await;
    let (r, _) = h.run(&slot_run("hybrid")).await;
    assert!(r.success, "{:#?}", summary(&r));
    assert_eq!(result(&r, "tally").output.clone().unwrap()["processed"], 2);
}

/// Was failing (fixed). Under `parallel` a wave ends when all of its subtasks are over. The consumer is
/// in wave 1; its only producer depends on another wave-1 subtask, so it is in wave 2 and
/// cannot start before the consumer is over, while the consumer reads until the channel
/// closes: it can never end but by its time limit. `plan` refuses exactly this shape for a
/// sync point ("participants in different waves"); for a channel it says nothing, and the run
/// hangs until the consumer's time limit and then fails.
/// Expected: `prepare`/`plan` refuses the manifest (naming the channel and the waves), or the
/// run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_a_consumer_whose_producer_is_in_a_later_wave_is_refused_or_runs() {
    let h = harness().await;
    let seed = sub(
        "seed",
        r#"{ name = "role", value = "producer" }, { name = "channel", value = "side" }, { name = "count", value = 0 }"#,
        "",
    );
    let channels = format!(
        "{QUEUE}\n[[strategy.channels]]\nid = \"side\"\ntype = \"event-driven\"\nproducers = [\"seed\"]\nconsumers = [\"tally\"]\n"
    );
    let toml = task(
        "parallel",
        4,
        &channels,
        &(seed + &consumer("timeLimitMs = 4000") + &producer("dependsOn = [\"seed\"]") + &tally()),
    );
    match h.prepare(&toml).await {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("jobs"),
                "refused, but without naming the channel: {msg}"
            );
        }
        Ok(prepared) => {
            let (r, _) = h.run_prepared(&prepared, RunOptions::default()).await;
            assert!(
                r.success,
                "accepted, then the consumer waited for a producer of a later wave: {:#?}",
                r.results
                    .iter()
                    .map(|s| (
                        &s.id,
                        s.state,
                        s.attempts.iter().map(|a| &a.outcome).collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            );
        }
    }
}

/// Held: a consumer with nothing to wait for (its producer already over, queue drained)
/// gets `closed` and completes; the report balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_a_consumer_started_after_its_producer_completes_drains_and_closes() {
    let h = harness().await;
    let toml = task(
        "sequential",
        1,
        QUEUE,
        &(producer("") + &consumer("dependsOn = [\"produce\"]") + &tally()),
    );
    let (r, _) = h.run(&toml).await;
    assert!(r.success, "{:#?}", r.results);
    let q = &r.channels["jobs"];
    assert_eq!(
        (q.sent, q.delivered, q.acked, q.left),
        (3, 3, 3, 0),
        "{q:?}"
    );
    assert_eq!(result(&r, "tally").output.clone().unwrap()["processed"], 3);
}
