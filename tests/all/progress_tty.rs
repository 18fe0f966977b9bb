//! README (`qi-host run`): "a progress bar is drawn on a terminal; elsewhere each change is one
//! line on stderr". The terminal half runs the binary under `script(1)` (util-linux), which gives
//! it a pseudo-terminal; `cli::run::run_prints_result_subtasks_receipts_and_metrics` checks the
//! plain lines when stderr is a pipe.

use std::process::Command;

#[test]
fn on_a_terminal_run_draws_a_progress_bar_instead_of_lines() {
    let data = tempfile::tempdir().unwrap();
    let manifest = format!(
        "{}/../examples/code-review/task.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let command = format!(
        "'{}' run '{}' --data-dir '{}' --guest-dir '{}'",
        env!("CARGO_BIN_EXE_qi-host"),
        manifest,
        data.path().display(),
        crate::coord::guest_dir().display()
    );
    // -q: no banner; -e: the child's exit code; -c: the command; the transcript goes to
    // /dev/null, what the terminal showed comes back on stdout.
    let o = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("QI_HOST_CACHE_DIR", crate::common::cache_dir())
        .output()
        .expect("script(1) from util-linux runs");
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{shown}");
    assert!(
        shown.contains("result: completed (7/7 subtasks completed)"),
        "{shown}"
    );
    // The bar's template: "{bar} {pos}/{len} subtasks  {elapsed}  running: …".
    assert!(
        shown.contains("/7 subtasks"),
        "no progress bar drawn:\n{shown}"
    );
    assert!(
        !shown.contains("[100%]"),
        "plain progress lines on a terminal:\n{shown}"
    );
}
