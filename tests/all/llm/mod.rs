//! Model calls through `qi:agent/llm` on real guests (`llm-agent`, `key-hunter`), against the
//! loopback stand-in provider of `qi_llm_test_server`: the wire formats ([`providers`]), failures and
//! retries ([`failures`]), budgets ([`budgets`]) and grants ([`grants`]), the provider's key
//! ([`key_leak`]), record and replay through the binary ([`replay`]) and the operator's
//! configuration ([`config`]).
//!
//! Every assertion about what was or was not sent reads the server's own record of the requests
//! it received; no test waits on a timer except where the agent's deadline is the subject.

mod budgets;
mod config;
mod failures;
mod grants;
mod key_leak;
mod replay;
mod wire;

use crate::common::*;
use qi_guest_artifacts::LLM_AGENT_COMPONENT;
use qi_host::llm::{LlmBroker, LlmConfig, Mode, ProviderConfig, ProviderKind, Recordings};
use qi_host::{AgentHost, AgentReport, SubAgentSpecification, TaskRequest};
use qi_llm_test_server::TestServer;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Both wire formats.
pub const BOTH: [ProviderKind; 2] = [ProviderKind::Openai, ProviderKind::Anthropic];

/// A key no other test uses: `sk-qi-test-` and 32 random hex digits.
pub fn new_key() -> String {
    format!(
        "sk-qi-test-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// The path the host sends `kind`'s requests to.
pub fn path_of(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "/v1/chat/completions",
        ProviderKind::Anthropic => "/v1/messages",
    }
}

/// A stand-in provider with a fresh key, and that key in a file (the crate forbids
/// `unsafe_code`, so in-process tests cannot set a key variable; the CLI tests give theirs in
/// the child's environment).
pub struct Provider {
    pub server: TestServer,
    pub key: String,
    dir: tempfile::TempDir,
}

impl Provider {
    pub async fn start() -> Provider {
        let key = new_key();
        let server = TestServer::start(&key).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), format!("{key}\n")).unwrap();
        Provider { server, key, dir }
    }

    /// The file holding the key (with a trailing newline, which the host trims).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("key")
    }

    /// A provider of `kind` at this server with the documented defaults.
    pub fn config(&self, kind: ProviderKind) -> ProviderConfig {
        ProviderConfig {
            kind,
            base_url: self.server.base_url(),
            api_key_env: None,
            api_key_file: Some(self.key_file()),
            timeout_ms: 120_000,
            max_concurrent_requests: 16,
            max_retries: 3,
            max_tokens_per_call: 4_096,
            max_response_bytes: 4 << 20,
        }
    }

    /// Every request the server received so far.
    pub fn requests(&self) -> Vec<qi_llm_test_server::Recorded> {
        self.server.requests()
    }

    /// How many requests the server received so far.
    pub fn sent(&self) -> usize {
        self.server.request_count()
    }
}

/// A live broker over `config` with in-memory recordings.
pub fn broker(config: LlmConfig) -> Arc<LlmBroker> {
    Arc::new(
        LlmBroker::new(config, Recordings::in_memory(), Mode::Live).expect("the broker starts"),
    )
}

/// A provider and a host whose broker knows it as `p` (alias `fast` = `p/m1`).
pub struct Rig {
    pub provider: Provider,
    pub host: AgentHost,
}

impl Rig {
    pub async fn start(kind: ProviderKind) -> Rig {
        Rig::with(kind, |_| {}).await
    }

    /// [`Rig::start`] with the configuration changed by `edit` first.
    pub async fn with(kind: ProviderKind, edit: impl FnOnce(&mut LlmConfig)) -> Rig {
        let provider = Provider::start().await;
        let mut config = LlmConfig::default();
        config.providers.insert("p".into(), provider.config(kind));
        config.models.insert("fast".into(), "p/m1".into());
        edit(&mut config);
        let host = new_host(4).with_llm(broker(config));
        Rig { provider, host }
    }

    /// Runs `llm-agent` with `{"calls": calls}`.
    pub async fn run(&self, spec: SubAgentSpecification, calls: Value) -> AgentReport {
        run_llm_agent(&self.host, spec, json!({ "calls": calls })).await
    }

    pub fn server(&self) -> &TestServer {
        &self.provider.server
    }
}

/// Runs `llm-agent` on `host` with `input`.
pub async fn run_llm_agent(
    host: &AgentHost,
    spec: SubAgentSpecification,
    input: Value,
) -> AgentReport {
    let component = host.load(LLM_AGENT_COMPONENT).expect("llm-agent loads");
    host.run(&component, spec, TaskRequest::new("model calls", input))
        .await
        .expect("llm-agent spawns")
}

/// [`spec`] with `allowedModels` = `models`.
pub fn llm_spec(models: &[&str]) -> SubAgentSpecification {
    let mut s = spec();
    s.security_constraints.allowed_models = models.iter().map(|m| m.to_string()).collect();
    s
}

/// The `results` of a successful `llm-agent` run.
#[track_caller]
pub fn results(report: &AgentReport) -> Vec<Value> {
    ok(report)["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {:?}", report.output))
        .clone()
}

/// Asserts that `result` is an answer, and returns it.
#[track_caller]
pub fn answered(result: &Value) -> &Value {
    assert_eq!(result["ok"], true, "expected an answer, got {result}");
    result
}

/// Asserts that `result` is an `llm-error` of `kind` whose message contains `needle`.
#[track_caller]
pub fn refused(result: &Value, kind: &str, needle: &str) {
    assert_eq!(result["ok"], false, "expected {kind}, got {result}");
    assert_eq!(result["error_kind"], kind, "{result}");
    let message = result["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "`{message}` does not say `{needle}`"
    );
}

/// `text` parsed as JSON.
#[track_caller]
pub fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
