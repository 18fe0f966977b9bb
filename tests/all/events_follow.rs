//! `qi-host events tail --follow` (README, CLI section): after printing the newest matching
//! event it keeps printing the ones committed later, by another process, in seq order, and only
//! those its filter admits. Synchronised by the lines it prints; time appears only as a hang
//! guard.

use qi_host::StoreConfig;
use qi_host::context::{Change, ContextService, NewContext, OPERATOR};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

const HANG_GUARD: Duration = Duration::from_secs(60);

async fn create(svc: &ContextService, id: &str) {
    svc.create(
        OPERATOR,
        NewContext {
            id: Some(id.into()),
            context_type: "notes".into(),
            doc: json!({"n": 1}),
            ..NewContext::default()
        },
    )
    .await
    .expect("context created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_events_committed_after_it_started_and_only_matching_ones() {
    let data = tempfile::tempdir().unwrap();
    let svc = crate::common::context_service(StoreConfig::at(data.path()))
        .await
        .expect("data directory opens");
    create(&svc, "watched").await;
    let mut child = crate::common::qi_host_command()
        .args(["events", "tail", "--follow", "--json", "--limit", "1"])
        .args(["--filter", "context=watched"])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qi-host starts");
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx
                .send(serde_json::from_str(&line).expect("JSON lines"))
                .is_err()
            {
                return;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(HANG_GUARD)
            .unwrap_or_else(|_| panic!("hang guard: --follow never printed {what}"))
    };
    // The newest matching event, printed at start: from here on the follower is following.
    let started = next("the newest matching event");
    assert_eq!(started["contextId"], "watched", "{started}");
    // Committed afterwards: an event the filter excludes, then one it admits.
    create(&svc, "unwatched").await;
    svc.write(OPERATOR, "watched", Change::Put(json!({"n": 2})), Some(1))
        .await
        .expect("written");
    let later = next("the event committed after it started");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        later["contextId"], "watched",
        "the filter let {later} through"
    );
    assert!(
        later["seq"].as_u64() > started["seq"].as_u64(),
        "{started} then {later}"
    );
}
