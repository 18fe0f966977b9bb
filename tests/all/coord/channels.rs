//! Channels end to end on the `messenger` guest: the bundled producer/consumer example (a
//! consumer crashes mid-way; every job is processed), a `direct` channel, a resume after a
//! consumer failed for good, what `plan` shows and what receipts count.

use super::*;

const MESSENGER: &str = r#"
[agents.messenger]
component = "guest:messenger"
spec = { capabilities = ["messaging"], fuel = 500_000_000, resourceLimits = { maxMemoryMB = 16, maxExecutionTimeMs = 20000 } }
"#;

pub(super) fn task(strategy: &str, failure: &str, channels: &str, subtasks: &str) -> String {
    format!(
        "[task]\nid = \"msg\"\n\n[strategy]\ntype = \"{strategy}\"\nmaxConcurrentAgents = 4\nfailureHandling = \"{failure}\"\nretry = {{ maxAttempts = 2, backoffMs = 10, maxReassignments = 0 }}\n{channels}\n{MESSENGER}\n{subtasks}"
    )
}

pub(super) fn sub(id: &str, inputs: &str, extra: &str) -> String {
    format!("\n[[subtasks]]\nid = \"{id}\"\nagent = \"messenger\"\ninputs = [{inputs}]\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_processes_every_job_although_a_consumer_crashes() {
    let h = harness().await;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/producer-consumer/task.toml");
    let prepared = coord::prepare(&h.host, &path, Some(&guest_dir()))
        .await
        .unwrap();
    // The plan shows the channels the run creates.
    let jobs = prepared
        .plan
        .communication_channels
        .iter()
        .find(|c| c.id == "channel.jobs")
        .expect("the plan lists channel.jobs");
    assert_eq!(jobs.channel_type, "message-queue");
    let declared = jobs.declared.as_ref().unwrap();
    assert_eq!(declared.consumers, ["consume-a", "consume-b"]);
    assert_eq!(
        (declared.max_depth, declared.ack_timeout_ms),
        (16, Some(5000))
    );
    let (r, _) = h.run_prepared(&prepared, RunOptions::default()).await;
    assert!(r.success, "{r:#?}");
    let tally = result(&r, "tally").output.clone().unwrap();
    assert_eq!(tally["processed"], 40, "{tally}");
    assert_eq!(tally["missing"], json!([]), "{tally}");
    // consume-a's first attempt panicked holding a job: it came back.
    let a = result(&r, "consume-a");
    assert_eq!(a.attempts.len(), 2, "{a:#?}");
    assert!(
        a.attempts[0].outcome.contains("crashing on purpose"),
        "{a:#?}"
    );
    let q = &r.channels["jobs"];
    assert_eq!((q.sent, q.acked, q.left), (40, 40, 0), "{q:?}");
    assert!(q.redelivered >= 1, "{q:?}");
    assert!(q.dead_lettered.is_empty(), "{q:?}");
    // Receipts count what each agent sent and received.
    let produce = result(&r, "produce").attempts[0].usage.clone().unwrap();
    assert_eq!(produce.channel_messages_sent, 40);
    let received: u64 = ["consume-a", "consume-b"]
        .iter()
        .flat_map(|id| result(&r, id).attempts.iter())
        .filter_map(|a| a.usage.as_ref())
        .map(|u| u.channel_messages_received)
        .sum();
    assert_eq!(
        received, q.delivered,
        "every delivery is in some consumer's receipt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_channel_delivers_each_message_to_the_named_consumer() {
    let h = harness().await;
    let channels = r#"
[[strategy.channels]]
id = "mail"
type = "direct"
producers = ["send"]
consumers = ["left", "right"]

[[strategy.channels]]
id = "results"
type = "event-driven"
producers = ["left", "right"]
consumers = ["tally"]
"#;
    let consumer = |id: &str| {
        sub(
            id,
            r#"{ name = "role", value = "consumer" }, { name = "channel", value = "mail" }, { name = "resultsChannel", value = "results" }, { name = "ack", value = false }"#,
            "outputs = [\"processed\"]",
        )
    };
    let toml = task(
        "hybrid",
        "fail-fast",
        channels,
        &(sub(
            "send",
            r#"{ name = "role", value = "producer" }, { name = "channel", value = "mail" }, { name = "count", value = 9 }, { name = "to", value = ["left", "right", "right"] }"#,
            "",
        ) + &consumer("left")
            + &consumer("right")
            + &sub(
                "tally",
                r#"{ name = "role", value = "tally" }, { name = "resultsChannel", value = "results" }, { name = "ack", value = false }, { name = "expect", value = 9 }"#,
                "dependsOn = [\"left\", \"right\"]",
            )),
    );
    let (r, _) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    let out = |id: &str| result(&r, id).output.clone().unwrap();
    // Round robin over [left, right, right]: 3 to left, 6 to right, each once.
    assert_eq!(out("left")["processed"], 3);
    assert_eq!(out("right")["processed"], 6);
    assert_eq!(out("tally")["processed"], 9);
    assert_eq!(out("tally")["redelivered"], 0);
    let mail = &r.channels["mail"];
    assert_eq!(
        (mail.sent, mail.delivered, mail.redelivered, mail.left),
        (9, 9, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_gets_back_what_a_failed_consumer_left_in_the_queue() {
    let h = harness().await;
    let channels = r#"
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
    let consumer = |crash: &str| {
        sub(
            "consume",
            &format!(
                r#"{{ name = "role", value = "consumer" }}, {{ name = "channel", value = "jobs" }}, {{ name = "resultsChannel", value = "results" }}{crash}"#
            ),
            "dependsOn = [\"produce\"]",
        )
    };
    let rest = sub(
        "produce",
        r#"{ name = "role", value = "producer" }, { name = "channel", value = "jobs" }, { name = "count", value = 10 }"#,
        "",
    ) + &sub(
        "tally",
        r#"{ name = "role", value = "tally" }, { name = "resultsChannel", value = "results" }, { name = "ack", value = false }, { name = "expect", value = 10 }"#,
        "dependsOn = [\"consume\"]",
    );
    // The consumer dies on its third job, for good (no retry under graceful-degradation).
    let broken = task(
        "hybrid",
        "graceful-degradation",
        channels,
        &(consumer(
            r#", { name = "crashOnAttempt", value = 1 }, { name = "crashAfter", value = 3 }"#,
        ) + &rest),
    );
    let (r1, _) = h.run(&broken).await;
    assert_eq!(state(&r1, "produce"), SubtaskState::Completed);
    assert_eq!(state(&r1, "consume"), SubtaskState::Failed);
    assert_eq!(state(&r1, "tally"), SubtaskState::Skipped);
    let q = &r1.channels["jobs"];
    assert_eq!((q.sent, q.acked, q.left), (10, 2, 8), "{q:?}");

    // Fixed and resumed: the producer is not run again; its 8 unacked jobs come back from the
    // store, the one the crash held as its second delivery, and the topic still has the two
    // results recorded before the crash.
    let fixed = task(
        "hybrid",
        "graceful-degradation",
        channels,
        &(consumer("") + &rest),
    );
    let (r2, _) = h
        .run_with(
            &fixed,
            RunOptions {
                run_id: Some(r1.coordination_id.clone()),
                resume: true,
                status: None,
            },
        )
        .await;
    assert!(r2.success, "{r2:#?}");
    assert!(result(&r2, "produce").resumed);
    let consume = result(&r2, "consume").output.clone().unwrap();
    assert_eq!(consume["processed"], 8, "{consume}");
    assert_eq!(consume["redelivered"], 1, "{consume}");
    let tally = result(&r2, "tally").output.clone().unwrap();
    assert_eq!(tally["processed"], 10, "{tally}");
    assert_eq!(tally["missing"], json!([]), "{tally}");
    assert_eq!(r2.channels["jobs"].left, 0);
}
