//! Model calls go through the access gate as `llm/<provider>/<model>` (action `chat`): allowed
//! by an allow rule, refused and audited by a deny rule before any request leaves the host;
//! every answered call is audited with its tokens, and the prompt and answer only at
//! `monitored`.

use super::matrix::{ALLOW_ALL, denied_by, denying};
use super::*;
use qi_guest_artifacts::LLM_AGENT_COMPONENT;
use qi_host::llm::{LlmBroker, LlmConfig, Mode, Recordings};
use qi_llm_test_server::{Reply, TestServer};

const KEY: &str = "sk-security-llm";

async fn call_once(policies: &str, level: IsolationLevel) -> (TestServer, AuditLog, Value, String) {
    let server = TestServer::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, KEY).unwrap();
    let config: LlmConfig = toml::from_str(&format!(
        "[providers.local]\nkind = \"openai\"\nbaseUrl = \"{}\"\napiKeyFile = \"{}\"\n",
        server.base_url(),
        key.display()
    ))
    .unwrap();
    let broker = LlmBroker::new(config, Recordings::in_memory(), Mode::Live).unwrap();
    let s = secured(Some(policies)).await;
    let audit = s.audit.clone();
    let host = s.host.with_llm(Arc::new(broker));
    let mut spec = SubAgentSpecification {
        isolation_level: level,
        ..Default::default()
    };
    spec.security_constraints.allowed_models = vec!["local/*".into()];
    server.push(Reply::Text {
        content: "the answer".into(),
        input_tokens: 11,
        output_tokens: 2,
    });
    let component = host.load(LLM_AGENT_COMPONENT).unwrap();
    let agent = host.spawn(&component, spec).await.unwrap();
    let id = agent.id().to_string();
    let input = json!({"calls": [{"model": "local/m", "prompt": "the question"}]});
    let r = agent.run(TaskRequest::new("t", input)).await;
    let out = r.output.clone().unwrap_or_else(|| panic!("{r:?}"));
    audit.flush().await;
    (server, audit, out["results"][0].clone(), id)
}

async fn entries(
    audit: &AuditLog,
    agent: &str,
    decision: AuditDecision,
) -> Vec<qi_host::audit::AuditEntry> {
    audit
        .query(&AuditQuery {
            agent: Some(agent.to_string()),
            resource: Some("llm/*".into()),
            decision: Some(decision),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_call_is_allowed_by_an_allow_rule_and_refused_before_sending_by_a_deny_rule() {
    let (server, audit, result, id) = call_once(ALLOW_ALL, IsolationLevel::Sandbox).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(server.request_count(), 1);
    let answered = entries(&audit, &id, AuditDecision::Record).await;
    let e = answered
        .iter()
        .find(|e| e.resource == "llm/local/m" && e.operation == "chat")
        .unwrap_or_else(|| panic!("{answered:?}"));
    assert_eq!(e.details["inputTokens"], 11, "{e:?}");
    assert_eq!(e.details["outputTokens"], 2, "{e:?}");
    assert_eq!(e.details["outcome"], "ok", "{e:?}");
    assert!(
        e.details.get("prompt").is_none(),
        "sandbox: no prompt in the audit log: {e:?}"
    );

    let (server, audit, result, id) = call_once(
        &denying(&[("llm/local/*", "chat")]),
        IsolationLevel::Sandbox,
    )
    .await;
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["error_kind"], "access-denied", "{result}");
    assert_eq!(server.request_count(), 0, "refused before sending");
    let denied = entries(&audit, &id, AuditDecision::Deny).await;
    denied_by(&denied, "llm/local/m", "chat", 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_monitored_the_audit_entry_holds_the_prompt_and_the_answer() {
    let (_server, audit, result, id) = call_once(ALLOW_ALL, IsolationLevel::Monitored).await;
    assert_eq!(result["ok"], true, "{result}");
    let answered = entries(&audit, &id, AuditDecision::Record).await;
    let e = answered
        .iter()
        .find(|e| e.resource == "llm/local/m" && e.operation == "chat")
        .unwrap_or_else(|| panic!("{answered:?}"));
    assert!(
        e.details["prompt"]
            .as_str()
            .unwrap()
            .contains("the question"),
        "{e:?}"
    );
    assert_eq!(e.details["answer"], "the answer", "{e:?}");
}
