//! `py-reviewer` mixed with Rust agents in one manifest (`examples/mixed-review`): the run
//! completes and gives the all-Rust `examples/code-review` run's reviews, verdict and report.

use super::*;
use serde_json::Value;

fn run_json(example: &str) -> Value {
    let data = tempfile::tempdir().unwrap();
    let manifest = format!(
        "{}/../examples/{example}/task.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let o = qi_host_output(&[
        "run",
        &manifest,
        "--data-dir",
        data.path().to_str().unwrap(),
        "--guest-dir",
        &crate::coord::guest_dir().display().to_string(),
        "--json",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{example}: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&out).unwrap()
}

fn output_of<'a>(report: &'a Value, subtask: &str) -> &'a Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == subtask)
        .map(|s| &s["output"])
        .unwrap_or_else(|| panic!("no subtask {subtask} in {report}"))
}

#[test]
fn python_reviewers_in_a_rust_run_give_the_same_review() {
    if python(PY_REVIEWER_COMPONENT).is_none() {
        return;
    }
    let rust = run_json("code-review");
    let mixed = run_json("mixed-review");
    assert_eq!(mixed["success"], true, "{mixed}");
    for subtask in ["review-todos", "review-style", "review-docs"] {
        let (r, m) = (output_of(&rust, subtask), output_of(&mixed, subtask));
        assert_eq!(r["review"], m["review"], "{subtask}");
        // `majority-complete` resolves once a majority agrees, so which votes made it in
        // time depends on timing; the decision does not.
        assert_eq!(r["decision"], m["decision"], "{subtask}");
    }
    let (r, m) = (output_of(&rust, "report"), output_of(&mixed, "report"));
    assert_eq!(r["report"]["markdown"], m["report"]["markdown"]);
    // The Python reviewers really ran: their receipts show CPython's heap (about 13 MiB of
    // linear memory) where the Rust reviewer's show about 1 MiB.
    let peak = |report: &Value, subtask: &str| {
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == subtask)
            .unwrap()["attempts"][0]["usage"]["peak_memory_bytes"]
            .as_u64()
            .unwrap()
    };
    for subtask in ["review-style", "review-docs"] {
        assert!(
            peak(&mixed, subtask) > 8 << 20,
            "{subtask} did not run in Python"
        );
        assert!(
            peak(&rust, subtask) < 8 << 20,
            "{subtask} did not run in Rust"
        );
    }
}
