//! `qi-host context …` and `qi-host events tail` against a data directory.

use qi_host::context::{AgentCapabilities, Change, NewContext, SyncStrategy};
use qi_host::store::{Store, StoreConfig};
use serde_json::{Value, json};
use std::process::{Command, Output};

fn qi_host(dir: &std::path::Path, args: &[&str]) -> Output {
    crate::common::qi_host_command()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("qi-host runs")
}

fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON output")
}

/// A data directory with a manual context in conflict between two agents. Seeded on a runtime
/// of its own that is gone when this returns: no task of it still holds the store (and so the
/// data directory's lock) when a command runs on the directory.
pub(crate) async fn seeded() -> tempfile::TempDir {
    std::thread::spawn(|| tokio::runtime::Runtime::new().unwrap().block_on(seed()))
        .join()
        .unwrap()
}

async fn seed() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let svc = crate::common::context_service(StoreConfig::at(dir.path()))
        .await
        .unwrap();
    for a in ["alice", "bob"] {
        svc.register_agent(a, AgentCapabilities::default())
            .await
            .unwrap();
    }
    svc.create(
        "alice",
        NewContext {
            id: Some("plan".into()),
            context_type: "plan".into(),
            doc: json!({"step": "draft"}),
            strategy: SyncStrategy::Manual,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    svc.share(
        "alice",
        "plan",
        &["bob".into()],
        &[
            qi_host::context::Permission::Read,
            qi_host::context::Permission::Write,
        ],
        None,
    )
    .await
    .unwrap();
    svc.write(
        "alice",
        "plan",
        Change::Merge(json!({"step": "alice-way"})),
        Some(1),
    )
    .await
    .unwrap();
    svc.write(
        "bob",
        "plan",
        Change::Merge(json!({"step": "bob-way"})),
        Some(1),
    )
    .await
    .unwrap();
    dir
}

#[tokio::test]
async fn operator_inspects_resolves_and_rolls_back() {
    let dir = seeded().await;
    let d = dir.path();
    let list = json_of(&qi_host(d, &["context", "list", "--json"]));
    assert_eq!(list[0]["id"], "plan");
    assert_eq!(list[0]["status"], "conflict");

    let text = qi_host(d, &["context", "get", "plan"]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains("competing values") && out.contains("bob-way"),
        "{out}"
    );

    let conflicts = json_of(&qi_host(d, &["context", "conflicts", "plan", "--json"]));
    assert_eq!(conflicts.as_array().unwrap().len(), 1);
    assert_eq!(conflicts[0]["conflictType"], "field-modification");

    let resolved = json_of(&qi_host(
        d,
        &["context", "resolve", "plan", "--agent", "bob", "--json"],
    ));
    assert_eq!(resolved["status"], "active");
    let doc = json_of(&qi_host(d, &["context", "get", "plan", "--json"]));
    assert_eq!(doc["doc"]["step"], "bob-way");

    let history = json_of(&qi_host(d, &["context", "history", "plan", "--json"]));
    let ops: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["resolve", "patch", "patch", "create"]);

    let rolled = json_of(&qi_host(d, &["context", "rollback", "plan", "1", "--json"]));
    assert_eq!(rolled["version"], 5);
    let doc = json_of(&qi_host(d, &["context", "get", "plan", "--json"]));
    assert_eq!(doc["doc"], json!({"step": "draft"}));
}

#[tokio::test]
async fn events_tail_filters_and_resumes() {
    let dir = seeded().await;
    let d = dir.path();
    let o = qi_host(
        d,
        &[
            "events",
            "tail",
            "--filter",
            "type=updated,context=plan",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let events: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Alice's write, and bob's that put the context into conflict (a status change is a
    // version too).
    assert_eq!(events.len(), 2, "{events:?}");
    let all = qi_host(d, &["events", "tail", "--limit", "1000", "--json"]);
    let seqs: Vec<u64> = String::from_utf8_lossy(&all.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // Resume after the second event: everything after it, nothing before.
    let after = seqs[1].to_string();
    let rest = qi_host(d, &["events", "tail", "--after", &after, "--json"]);
    let n = String::from_utf8_lossy(&rest.stdout).lines().count();
    assert_eq!(n, seqs.len() - 2);
    let bad = qi_host(d, &["events", "tail", "--filter", "colour=blue"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("colour"));
}

#[test]
fn an_empty_data_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = qi_host(dir.path(), &["context", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no qi-host data"));
}

#[test]
fn run_agent_with_a_data_dir_gives_the_agent_the_context_store() {
    let dir = tempfile::tempdir().unwrap();
    let input = json!({"context": "no-such-context"});
    let o = Command::new(env!("CARGO_BIN_EXE_qi-host"))
        .args([
            "run-agent",
            qi_guest_artifacts::SNOOP_COMPONENT,
            "--task",
            "look around",
            "--json",
            "--input",
        ])
        .arg(input.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .env("QI_HOST_CACHE_DIR", crate::common::cache_dir())
        .output()
        .unwrap();
    let report = json_of(&o);
    // The store answered (not found), rather than "no context store attached".
    let attempts = report["output"]["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["error_kind"], "not-found", "{report}");
    // Whatever the agent did is in the data directory for the operator to see.
    let events = qi_host(
        dir.path(),
        &[
            "events",
            "tail",
            "--filter",
            "type=agent-registered",
            "--json",
        ],
    );
    assert!(events.status.success());
    assert_eq!(String::from_utf8_lossy(&events.stdout).lines().count(), 1);
}

/// A data directory whose audit log holds entries 1..=n, recorded through the library: even
/// ones by alice (allowed), odd ones by bob (denied); every third one a write.
async fn audited(n: u64) -> tempfile::TempDir {
    use qi_host::audit::{AuditDecision, AuditLog, NewAuditEntry};
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(Store::open(StoreConfig::at(dir.path())).unwrap())
        .await
        .unwrap();
    for i in 1..=n {
        let (agent, decision) = if i.is_multiple_of(2) {
            ("alice", AuditDecision::Allow)
        } else {
            ("bob", AuditDecision::Deny)
        };
        let operation = if i.is_multiple_of(3) { "write" } else { "read" };
        log.record(
            NewAuditEntry::new(
                agent,
                format!("context/plan-{i}"),
                operation,
                decision,
                format!("rule {i}"),
            )
            .details(json!({ "i": i })),
        )
        .unwrap();
    }
    log.flush().await;
    assert_eq!(log.recorded(), n);
    dir
}

fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tamper(dir: &std::path::Path, sql: &str) {
    let conn = rusqlite::Connection::open(dir.join("qi.db")).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn audit_verify_detects_tampering_in_the_file() {
    let dir = audited(20).await;
    let d = dir.path();
    let ok = qi_host(d, &["audit", "verify"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout_of(&ok).starts_with("audit log intact: 20 entries, last hash "),
        "{}",
        stdout_of(&ok)
    );
    let report = json_of(&qi_host(d, &["audit", "verify", "--json"]));
    assert_eq!(report["entries"], 20);
    assert_eq!(report["firstBroken"], Value::Null);
    let anchor = format!("20:{}", report["lastHash"].as_str().unwrap());
    let anchored = qi_host(d, &["audit", "verify", "--anchor", &anchor]);
    assert_eq!(anchored.status.code(), Some(0), "{}", stdout_of(&anchored));

    // Deleting the newest entries leaves a valid chain; the head file kept next to the
    // database shows it (and an anchor would too).
    tamper(d, "DELETE FROM audit WHERE seq >= 19");
    let cut = qi_host(d, &["audit", "verify", "--anchor", &anchor]);
    assert_eq!(cut.status.code(), Some(1));
    let line = stdout_of(&cut);
    assert!(
        line.starts_with("audit log broken at entry 20: head file")
            && line.contains("the log ends at entry 18"),
        "{line}"
    );

    // Changing a decision in place.
    tamper(d, "UPDATE audit SET decision = 'allow' WHERE seq = 17");
    let broken = qi_host(d, &["audit", "verify"]);
    assert_eq!(broken.status.code(), Some(1));
    assert_eq!(
        stdout_of(&broken),
        "audit log broken at entry 17: hash does not match its content (modified)\n"
    );
    let o = qi_host(d, &["audit", "verify", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["firstBroken"]["seq"], 17);
    assert_eq!(report["entries"], 16);

    // Deleting one in the middle is reported before it.
    tamper(d, "DELETE FROM audit WHERE seq = 9");
    let line = stdout_of(&qi_host(d, &["audit", "verify"]));
    assert!(
        line.starts_with("audit log broken at entry 9: entry 9 is missing (deleted)"),
        "{line}"
    );

    let bad = qi_host(d, &["audit", "verify", "--anchor", "twenty"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--anchor"));
}

#[tokio::test]
async fn audit_query_filters_entries() {
    let dir = audited(12).await;
    let d = dir.path();
    let seqs = |args: &[&str]| -> Vec<u64> {
        let mut all = vec!["audit", "query", "--json"];
        all.extend_from_slice(args);
        let o = qi_host(d, &all);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        stdout_of(&o)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(seqs(&[]), (1..=12).collect::<Vec<_>>());
    assert_eq!(seqs(&["--agent", "alice"]), [2, 4, 6, 8, 10, 12]);
    assert_eq!(seqs(&["--resource", "context/plan-1*"]), [1, 10, 11, 12]);
    assert_eq!(seqs(&["--decision", "deny", "--operation", "wr*"]), [3, 9]);
    assert_eq!(seqs(&["--agent", "*", "--limit", "2"]), [11, 12]);
    // The time bounds, from the entries' own times: just inside keeps all, just past none.
    let times: Vec<u64> = stdout_of(&qi_host(d, &["audit", "query", "--json"]))
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["timeMs"]
                .as_u64()
                .expect("an entry's timeMs")
        })
        .collect();
    let (first, last) = (times[0].to_string(), times[11].to_string());
    let (before, after) = ((times[0] - 1).to_string(), (times[11] + 1).to_string());
    assert_eq!(seqs(&["--since", &first, "--until", &last]).len(), 12);
    assert_eq!(seqs(&["--since", &after]), Vec::<u64>::new());
    assert_eq!(seqs(&["--until", &before]), Vec::<u64>::new());

    let entry = &stdout_of(&qi_host(d, &["audit", "query", "--json", "--limit", "1"]));
    let entry: Value = serde_json::from_str(entry.trim()).unwrap();
    assert_eq!(entry["agent"], "alice");
    assert_eq!(entry["details"], json!({"i": 12}));
    assert_eq!(entry["hash"].as_str().unwrap().len(), 64);

    let text = stdout_of(&qi_host(
        d,
        &["audit", "query", "--agent", "bob", "--limit", "1"],
    ));
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        fields[1..],
        [
            "#11",
            "deny",
            "bob",
            "read",
            "context/plan-11",
            "rule",
            "11"
        ]
    );

    let bad = qi_host(d, &["audit", "query", "--decision", "maybe"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = qi_host(d, &["audit", "query", "--resource", "context/["]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--resource"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_follow_prints_an_event_written_after_it_started() {
    use std::io::BufRead;
    let dir = seeded().await;
    let filter = "type=created";
    let mut child = crate::common::qi_host_command()
        .args(["events", "tail", "--follow", "--json", "--filter", filter])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qi-host runs");
    /// Kills the follower on every way out of the test, a failed assertion included.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _child = Kill(child);
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    let mut next = async || {
        crate::common::hang_guard("a line from `events tail --follow`", lines.recv())
            .await
            .expect("`events tail --follow` ended")
    };
    let svc = crate::common::context_service(StoreConfig::at(dir.path()))
        .await
        .unwrap();
    // It prints the history first, which ends with the newest matching event: once that line
    // is out, the command has moved on to following.
    let newest = svc
        .bus()
        .history(
            &qi_host::events::EventFilter::parse_cli(filter).unwrap(),
            None,
            1,
        )
        .await
        .unwrap()
        .last()
        .expect("the seeded context was created")
        .seq;
    while next().await["seq"].as_u64().unwrap() < newest {}

    svc.create(
        "alice",
        NewContext {
            id: Some("followed".into()),
            context_type: "plan".into(),
            doc: json!({"step": "one"}),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let event = next().await;
    assert!(event["seq"].as_u64().unwrap() > newest, "{event}");
    assert_eq!(event["contextId"], "followed", "{event}");
    assert_eq!(event["eventType"], "created", "{event}");
}
