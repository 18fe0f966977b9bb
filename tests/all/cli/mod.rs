//! The `qi-host` binary: output, JSON, and one-line errors for bad input. One file per
//! command: [`run_agent`], [`inspect`], [`run`] (with `plan`).

mod ai_review;
mod inspect;
mod owner;
mod run;
mod run_agent;

use crate::common::qi_host_output as qi_host;
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn one_line_error(o: &Output, expect: &str) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error"), "{err}");
    assert!(err.contains(expect), "`{err}` does not say `{expect}`");
    assert!(!err.contains("panicked"), "{err}");
}
