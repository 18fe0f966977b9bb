//! Python agents (`guests/py-*`, built with componentize-py by `qi-guest-artifacts` through
//! `qi-build-py`) through the real host: the SDK's own tests ([`sdk`]), the sandbox walls
//! ([`containment`]), Python and Rust agents in one manifest ([`mixed`]) and `qi-host
//! build-py` ([`build_py`]).
//!
//! Without componentize-py the Python guests are not built and these tests print why and
//! return; CI builds them always (`CI=true` makes a missing componentize-py a build error).

use crate::common::*;
use qi_guest_artifacts::*;
use serde_json::json;

pub(crate) mod boundary;
pub(crate) mod build_py;
pub(crate) mod containment;
pub(crate) mod mixed;
pub(crate) mod sdk;

/// `component` when the Python guests were built; `None` (after saying why) when they were
/// not.
fn python(component: &'static str) -> Option<&'static str> {
    match PYTHON_GUESTS_SKIPPED {
        None => Some(component),
        Some(reason) => {
            eprintln!("skipped: the Python guests were not built: {reason}");
            None
        }
    }
}

/// `py-hostile` run once with `input` under `spec`; `None` when the Python guests were not
/// built.
async fn hostile(
    spec: qi_host::SubAgentSpecification,
    input: serde_json::Value,
) -> Option<qi_host::AgentReport> {
    let component = python(PY_HOSTILE_COMPONENT)?;
    Some(run(component, spec, input).await)
}

/// The agent's own error (kind, message); panics on any other outcome.
#[track_caller]
fn agent_error(report: &qi_host::AgentReport) -> (&str, &str) {
    match &report.failure {
        Some(qi_host::AgentFailure::AgentError {
            error_kind,
            message,
        }) => (error_kind.as_str(), message.as_str()),
        other => panic!("expected the agent's own error, got {other:?}"),
    }
}

/// A spec roomy enough for CPython: its heap image is about 13 MiB.
fn py_spec() -> qi_host::SubAgentSpecification {
    let mut s = spec();
    s.resource_limits.max_memory_mb = 128;
    s
}

/// Every Python guest has a test module here (`foreach_python_guest!`).
macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::guests::$name as _;
    };
}
mod guests {
    pub(crate) use super::containment as py_hostile;
    pub(crate) use super::mixed as py_reviewer;
    pub(crate) use super::sdk as py_hello;
    pub(crate) use super::sdk as py_tour;
}
foreach_python_guest!(assert_test_exists);

#[test]
fn every_python_guest_was_built() {
    if python("").is_none() {
        return;
    }
    assert!(!PYTHON_GUESTS.is_empty());
    for (name, path) in PYTHON_GUESTS {
        let len = std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{name}: {path}: {e}"))
            .len();
        assert!(
            len > 1_000_000,
            "{name} is {len} bytes: not a CPython component"
        );
    }
}
