//! `qi-host run` and `qi-host plan`: a coordinated run through the binary.

use super::*;

fn example(name: &str) -> String {
    format!(
        "{}/../examples/{name}/task.toml",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn guest_dir() -> String {
    crate::coord::guest_dir().display().to_string()
}

#[test]
fn run_prints_result_subtasks_receipts_and_metrics() {
    let data = tempfile::tempdir().unwrap();
    let o = qi_host(&[
        "run",
        &example("code-review"),
        "--data-dir",
        data.path().to_str().unwrap(),
        "--guest-dir",
        &guest_dir(),
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(
        out.contains("result: completed (7/7 subtasks completed)"),
        "{out}"
    );
    for part in [
        "analyze-core",
        "usage receipts",
        "coordination metrics",
        "totalAgents 7",
        "decision changes-requested (majority)",
        "# Code review report",
    ] {
        assert!(out.contains(part), "missing `{part}` in\n{out}");
    }
    // Not a terminal: progress comes as plain lines.
    let err = stderr(&o);
    assert!(err.contains("[100%] report completed reporter"), "{err}");
    // The events it points to are there.
    let run_id = out.split_whitespace().nth(1).unwrap().to_string();
    let ev = qi_host(&[
        "events",
        "tail",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--filter",
        &format!("context=run/{run_id}"),
        "--json",
    ]);
    let text = stdout(&ev);
    assert!(ev.status.success(), "{}", stderr(&ev));
    assert!(
        text.contains("subtask-completed") && text.contains("sync-resolved"),
        "{text}"
    );
}

#[test]
fn run_json_and_exit_code_of_a_failed_run() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("t.toml");
    std::fs::write(
        &manifest,
        r#"
[task]
id = "t"
[strategy]
type = "parallel"
failureHandling = "graceful-degradation"
[agents.w]
component = "guest:worker"
[[subtasks]]
id = "good"
[[subtasks]]
id = "bad"
inputs = [{ name = "steps", value = [{ fail = "on purpose" }] }]
"#,
    )
    .unwrap();
    let o = qi_host(&[
        "run",
        manifest.to_str().unwrap(),
        "--data-dir",
        data.path().to_str().unwrap(),
        "--guest-dir",
        &guest_dir(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["partial"], true);
    assert_eq!(v["results"][1]["state"], "failed");
    assert!(
        v["results"][1]["error"]
            .as_str()
            .unwrap()
            .contains("on purpose")
    );
    // The report matches the schema `qi-host schema run-report` prints.
    let schema = qi_host(&["schema", "run-report"]);
    assert!(schema.status.success(), "{}", stderr(&schema));
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn plan_prints_levels_sync_points_and_the_fallback_plan() {
    let o = qi_host(&["plan", &example("code-review"), "--guest-dir", &guest_dir()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    for part in [
        "strategy hybrid",
        "0: analyze-core, analyze-api, analyze-misc",
        "2: report",
        "synchronization plan",
        "verdict          decision    majority-complete",
        "fallback plan (graceful-degradation)",
    ] {
        assert!(out.contains(part), "missing `{part}` in\n{out}");
    }
}

#[test]
fn invalid_manifest_is_a_one_line_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("t.toml");
    std::fs::write(
        &manifest,
        "[task]\nid = \"t\"\n[strategy]\ntype = \"hybrid\"\n[agents.w]\ncomponent = \"guest:worker\"\n[[subtasks]]\nid = \"a\"\ndependsOn = [\"b\"]\n",
    )
    .unwrap();
    let o = qi_host(&[
        "plan",
        manifest.to_str().unwrap(),
        "--guest-dir",
        &guest_dir(),
    ]);
    one_line_error(&o, "t.toml:9: `subtasks[0].dependsOn`: no subtask `b`");
    let o = qi_host(&["run", "/no/such/manifest.toml"]);
    one_line_error(&o, "cannot read the manifest");
}

#[test]
fn run_with_policies_denies_audits_and_verifies() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("p.toml");
    // Analyzers may read files and meet; nothing else is allowed.
    std::fs::write(
        &policies,
        r#"
[[policies]]
id = "analysis-only"
[[policies.rules]]
effect = "allow"
resources = ["file/**", "sync/analysis-done", "sync/totals"]
agents = ["analyzer"]
"#,
    )
    .unwrap();
    let d = data.path().to_str().unwrap();
    let o = qi_host(&[
        "run",
        &example("code-review"),
        "--data-dir",
        d,
        "--guest-dir",
        &guest_dir(),
        "--policies",
        policies.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Analyzers complete; reviewers cannot vote and the reporter cannot write its report.
    assert_eq!(v["results"][0]["state"], "completed", "{v}");
    assert_eq!(v["results"][6]["state"], "failed", "{v}");
    let q = qi_host(&[
        "audit",
        "query",
        "--data-dir",
        d,
        "--decision",
        "deny",
        "--json",
    ]);
    assert!(q.status.success(), "{}", stderr(&q));
    let text = stdout(&q);
    assert!(
        text.contains("sync/verdict") && text.contains("context/review/inventory/"),
        "{text}"
    );
    let verify = qi_host(&["audit", "verify", "--data-dir", d]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

#[test]
fn run_with_a_key_file_stores_only_ciphertext() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, qi_host::store::crypto::MasterKey::generate().to_hex()).unwrap();
    let d = data.path().to_str().unwrap();
    let k = key.to_str().unwrap();
    let o = qi_host(&[
        "run",
        &example("failure-handling"),
        "--data-dir",
        d,
        "--guest-dir",
        &guest_dir(),
        "--key-file",
        k,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("# Code review report"));
    // The report's text is nowhere on disk in the clear.
    for (p, bytes) in crate::common::files_under(data.path()) {
        assert!(
            !crate::common::contains_bytes(&bytes, b"Code review report"),
            "plaintext in {}",
            p.display()
        );
    }
    one_line_error(
        &qi_host(&["context", "list", "--data-dir", d]),
        "give its master key",
    );
    let o = qi_host(&["context", "list", "--data-dir", d, "--key-file", k]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("review/failure-handling/"),
        "{}",
        stdout(&o)
    );
}
