//! Red-team tests of `qi:agent/llm` through real guests (`llm-agent`): a hostile guest, a
//! hostile provider (the loopback stand-in scripted to misbehave) and a careless operator.
//!
//! A test that fails demonstrates a finding; a passing test is an attack that held. The
//! unit-level attacks (wire, client, recordings, schemas) are in `host/src/llm/redteam_tests.rs`.
//! Every assertion reads the server's record of the requests it received or the agent's report;
//! nothing waits on a timer.

mod bounds;
mod budgets;
mod leaks;
mod sdk;

use crate::common::*;
use qi_guest_artifacts::LLM_AGENT_COMPONENT;
use qi_host::llm::{LlmBroker, LlmConfig, Mode, ProviderConfig, ProviderKind, Recordings};
use qi_host::{AgentHost, AgentReport, SubAgentSpecification, TaskRequest};
use qi_llm_test_server::TestServer;
use serde_json::{Value, json};

/// A long key, so that a cut through it leaves a recognisable prefix.
pub const KEY: &str = "sk-redteam-int-0123456789abcdefghijklmnopqrstuvwxyz";

/// The longest prefix of [`KEY`] (at least 8 bytes) in `text`.
pub fn key_prefix_in(text: &str) -> Option<&'static str> {
    (8..=KEY.len())
        .rev()
        .map(|n| &KEY[..n])
        .find(|p| text.contains(p))
}

/// A stand-in provider `p` (key [`KEY`], in a file), and a host whose broker knows it.
pub struct Rig {
    pub server: TestServer,
    pub host: AgentHost,
    _dir: tempfile::TempDir,
}

impl Rig {
    pub async fn start(edit: impl FnOnce(&mut LlmConfig)) -> Rig {
        Rig::with_recordings(Recordings::in_memory(), edit).await
    }

    pub async fn with_recordings(recordings: Recordings, edit: impl FnOnce(&mut LlmConfig)) -> Rig {
        let server = TestServer::start(KEY).await;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, KEY).unwrap();
        let mut config = LlmConfig::default();
        config.providers.insert(
            "p".into(),
            ProviderConfig {
                kind: ProviderKind::Openai,
                base_url: server.base_url(),
                api_key_env: None,
                api_key_file: Some(key),
                timeout_ms: 30_000,
                max_concurrent_requests: 16,
                max_retries: 0,
                max_tokens_per_call: 64,
                max_response_bytes: 4 << 20,
            },
        );
        edit(&mut config);
        let broker = LlmBroker::new(config, recordings, Mode::Live).expect("the broker starts");
        let host = new_host(4).with_llm(std::sync::Arc::new(broker));
        Rig {
            server,
            host,
            _dir: dir,
        }
    }

    /// Runs `llm-agent` with `{"calls": calls}` under `spec`.
    pub async fn run(&self, spec: SubAgentSpecification, calls: Value) -> AgentReport {
        let component = self
            .host
            .load(LLM_AGENT_COMPONENT)
            .expect("llm-agent loads");
        self.host
            .run(
                &component,
                spec,
                TaskRequest::new("red team", json!({ "calls": calls })),
            )
            .await
            .expect("llm-agent spawns")
    }
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
