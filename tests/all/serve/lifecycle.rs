//! The server's lifecycle: several clients at once, a client that goes away mid-run, SIGTERM
//! during a run and a restart that resumes it. Synchronised on the run's own status (its
//! subtask is `running`) and on the process's lines, never on time.

use super::process::Process;
use super::*;

/// A client of the process `p`.
fn client(p: &Process) -> Client {
    Client {
        base: p.base.clone(),
        http: reqwest::Client::new(),
    }
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(&self, token: &str, tool: &str, args: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/tools/{tool}", self.base))
            .bearer_auth(token)
            .body(args.to_string())
            .send()
            .await
            .expect("the server answers");
        let status = r.status().as_u16();
        (status, json_of(r).await)
    }

    /// Reads the run's event stream until a status shows `subtask` running.
    async fn until_running(&self, token: &str, run_id: &str, subtask: &str) {
        let mut r = self
            .http
            .get(format!("{}/v1/runs/{run_id}/events", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut text = String::new();
        let needle = format!("{{\"id\":\"{subtask}\",\"state\":\"running\"");
        while let Some(chunk) = crate::common::hang_guard("a status event", r.chunk())
            .await
            .unwrap()
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(&needle) {
                return;
            }
        }
        panic!("the stream ended without {subtask} running:\n{text}");
    }

    /// Reads the run's event stream to its `end` event.
    async fn end(&self, token: &str, run_id: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/v1/runs/{run_id}/events", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "run {run_id}");
        let text = crate::common::hang_guard("the run's end", r.text())
            .await
            .unwrap();
        let end = text
            .split("event: end\ndata: ")
            .nth(1)
            .expect("an end event");
        serde_json::from_str(end.lines().next().unwrap()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_run_checkpoints_it_and_the_restarted_server_resumes_it() {
    let f = Fixture::new("shutdown_grace_ms = 0", "");
    let p = Process::start(&f);
    let c = client(&p);
    let (status, started) = c
        .call(ALICE, "run_task", json!({"manifest": "slow", "inputs": {"nap.steps": [{"sleep_ms": 3000}]}, "wait": false}))
        .await;
    assert_eq!(status, 200, "{started}");
    let run_id = started["runId"].as_str().unwrap().to_string();
    c.until_running(ALICE, &run_id, "nap").await;
    let (code, lines) = p.terminate();
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("stopping")),
        "{}",
        lines.join("\n")
    );

    let p = Process::start(&f);
    let resumed = p.line_with("resumed");
    assert!(resumed.contains(&run_id), "{resumed}");
    let c = client(&p);
    let end = c.end(ALICE, &run_id).await;
    assert_eq!(end["state"], "completed", "{end}");
    let subtasks = end["report"]["results"].as_array().unwrap();
    let greet = subtasks.iter().find(|s| s["id"] == "greet").unwrap();
    assert_eq!(greet["resumed"], true, "greet is not run again: {greet}");
    let nap = subtasks.iter().find(|s| s["id"] == "nap").unwrap();
    assert_eq!(nap["resumed"], false, "{nap}");
    assert_eq!(nap["output"]["subtask"], "nap", "{nap}");
    // A third start finds nothing left to resume.
    let (code, lines) = p.terminate();
    assert_eq!(code, Some(0));
    let p = Process::start(&f);
    let (_, lines2) = p.terminate();
    assert!(
        !lines2.iter().any(|l| l.contains("resumed")),
        "{}\n{}",
        lines.join("\n"),
        lines2.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_run_finish_within_the_grace_period() {
    let f = Fixture::new("shutdown_grace_ms = 600000", "");
    let p = Process::start(&f);
    let c = client(&p);
    let (_, started) = c
        .call(ALICE, "run_task", json!({"manifest": "slow", "inputs": {"nap.steps": [{"sleep_ms": 500}]}, "wait": false}))
        .await;
    let run_id = started["runId"].as_str().unwrap().to_string();
    c.until_running(ALICE, &run_id, "nap").await;
    let (code, lines) = p.terminate();
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    // It finished before the server exited: nothing to resume, and its record says so.
    let p = Process::start(&f);
    let c = client(&p);
    let (status, record) = c
        .call(
            ADMIN,
            "context_get",
            json!({"id": format!("serve/run/{run_id}")}),
        )
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["doc"]["state"], "completed", "{record}");
    let (_, lines) = p.terminate();
    assert!(
        !lines.iter().any(|l| l.contains("resumed")),
        "{}",
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_stops_only_its_own_cancellable_run() {
    let f = Fixture::new("", "");
    let s = f.serve().await;
    let bus = s.server.context().bus().clone();
    let mut records = bus
        .subscribe(
            qi_host::events::EventFilter::default(),
            qi_host::events::SubscribeFrom::Now,
        )
        .unwrap();
    // Alice waits for a long run she wants cancelled if she goes away; bob waits for a
    // short one of his.
    let alice = {
        let (base, http) = (s.base.clone(), reqwest::Client::new());
        tokio::spawn(async move {
            http.post(format!("{base}/v1/tools/run_task"))
                .bearer_auth(ALICE)
                .body(json!({"manifest": "slow", "inputs": {"nap.steps": [{"sleep_ms": 600000}]}, "on_disconnect": "cancel"}).to_string())
                .send()
                .await
        })
    };
    let alice_run = crate::common::hang_guard("alice's run record", async {
        loop {
            let e = records.next().await.unwrap();
            if let Some(id) = e
                .context_id
                .as_deref()
                .and_then(|c| c.strip_prefix("serve/run/"))
            {
                return id.to_string();
            }
        }
    })
    .await;
    let bob = {
        let (base, http) = (s.base.clone(), reqwest::Client::new());
        tokio::spawn(async move {
            http.post(format!("{base}/v1/tools/run_task"))
                .bearer_auth(BOB)
                .body(
                    json!({"manifest": "slow", "inputs": {"nap.steps": [{"sleep_ms": 200}]}})
                        .to_string(),
                )
                .send()
                .await
        })
    };
    let admin = qi_host::serve::Caller::operator();
    let (mut status, mut outcome) = s.server.run_watch(&admin, &alice_run).unwrap();
    crate::common::hang_guard(
        "alice's nap running",
        status.wait_for(|st| {
            st.subtasks
                .iter()
                .any(|t| t.id == "nap" && t.state == qi_host::coord::SubtaskState::Running)
        }),
    )
    .await
    .unwrap();
    // Alice goes away: her request (and its connection) is dropped.
    alice.abort();
    let _ = alice.await;
    crate::common::hang_guard("alice's run ends", outcome.wait_for(Option::is_some))
        .await
        .unwrap();
    let st = s
        .ok(ALICE, "run_status", json!({"run_id": alice_run}))
        .await;
    assert_eq!(st["state"], "terminated", "{st}");
    // Bob's run went on and completed.
    let r = bob.await.unwrap().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = json_of(r).await;
    assert_eq!(answer["state"], "completed", "{answer}");
}
