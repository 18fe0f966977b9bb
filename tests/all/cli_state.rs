//! `qi-host context …` and `qi-host events tail` against a data directory.

use qi_host::context::{
    AgentCapabilities, Change, ContextConfig, ContextService, NewContext, SyncStrategy, SystemClock,
};
use qi_host::events::{EventBus, EventBusConfig};
use qi_host::store::{Store, StoreConfig};
use serde_json::{Value, json};
use std::process::{Command, Output};
use std::sync::Arc;

fn qi_host(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qi-host"))
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

/// A data directory with a manual context in conflict between two agents.
async fn seeded() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::at(dir.path())).unwrap();
    let bus = EventBus::new(store.clone(), EventBusConfig::default())
        .await
        .unwrap();
    let svc = ContextService::open(store, bus, Arc::new(SystemClock), ContextConfig::default())
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
