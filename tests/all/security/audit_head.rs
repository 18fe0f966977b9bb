//! The audit head through the CLI: `run-agent` prints it, `audit head` prints the same, a
//! truncated log is refused on the next run and by `audit verify` until the operator runs
//! `audit accept-head`; with a master key the chain is HMAC-keyed.

use crate::common::qi_host_command;
use qi_guest_artifacts::HELLO_COMPONENT;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

fn qi(dir: &Path, key: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = qi_host_command();
    cmd.env_remove("QI_HOST_MASTER_KEY").args(args);
    cmd.arg("--data-dir").arg(dir);
    if let Some(k) = key {
        cmd.arg("--key-file").arg(k);
    }
    cmd.output().expect("qi-host runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_hello(dir: &Path, key: Option<&Path>) -> Output {
    qi(
        dir,
        key,
        &["run-agent", HELLO_COMPONENT, "--task", "greet", "--json"],
    )
}

fn head(dir: &Path, key: Option<&Path>) -> Value {
    let o = qi(dir, key, &["audit", "head", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn the_head_is_reported_kept_outside_the_database_and_checked_on_open() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("master.key");
    std::fs::write(
        &key_file,
        qi_host::store::crypto::MasterKey::generate().to_hex(),
    )
    .unwrap();
    for (key, scheme) in [(None, "sha256"), (Some(key_file.as_path()), "hmac-sha256")] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let first = run_hello(d, key);
        assert!(first.status.success(), "{}", text(&first));
        let report: Value = serde_json::from_slice(&first.stdout).unwrap();
        let reported = &report["audit_head"];
        assert_eq!(reported["scheme"], scheme, "{report}");
        assert_eq!(
            head(d, key),
            *reported,
            "`audit head` prints the run's head"
        );
        let second = run_hello(d, key);
        assert!(second.status.success(), "{}", text(&second));
        let seq = head(d, key)["seq"].as_u64().unwrap();
        assert!(seq > reported["seq"].as_u64().unwrap());

        // Delete the newest entry: the next run refuses to open the log, verify names it.
        let conn = rusqlite::Connection::open(d.join("qi.db")).unwrap();
        conn.execute("DELETE FROM audit WHERE seq = ?1", [seq as i64])
            .unwrap();
        drop(conn);
        let refused = run_hello(d, key);
        assert!(!refused.status.success());
        let why = text(&refused);
        assert!(
            why.contains(&format!("entry {seq}"))
                && why.contains("qi-host audit verify")
                && why.contains("qi-host audit accept-head"),
            "{why}"
        );
        let verify = qi(d, key, &["audit", "verify"]);
        assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
        assert!(
            text(&verify).contains("newest entries were deleted"),
            "{}",
            text(&verify)
        );

        // The operator accepts the log as it stands; runs work again.
        let accept = qi(d, key, &["audit", "accept-head"]);
        assert!(accept.status.success(), "{}", text(&accept));
        assert!(text(&accept).starts_with("accepted: the head file now names entry"));
        assert_eq!(qi(d, key, &["audit", "verify"]).status.code(), Some(0));
        let again = run_hello(d, key);
        assert!(again.status.success(), "{}", text(&again));
    }
}
