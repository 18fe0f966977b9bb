//! What a provider's failures become: retries that honour `Retry-After` within the agent's time,
//! `rate-limited`, `unavailable` and `provider-error` values the agent can handle, answers over
//! `maxResponseBytes`, and a call that hangs past the agent's deadline or while it is terminated.

use super::*;
use qi_host::{AgentFailure, AgentStatus, LimitKind};
use qi_llm_test_server::Reply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn one_call() -> Value {
    json!([{"model": "p/m1", "prompt": "hello"}])
}

fn openai_error(message: &str) -> String {
    json!({"error": {"message": message, "type": "server_error"}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_zero_is_retried_and_answered() {
    let rig = Rig::start(ProviderKind::Openai).await;
    rig.server().push(Reply::status_with_retry_after(
        429,
        "0",
        openai_error("slow down"),
    ));
    rig.server().push(Reply::text("finally"));
    let report = rig.run(llm_spec(&["p/*"]), one_call()).await;
    assert_eq!(answered(&results(&report)[0])["content"], "finally");
    assert_eq!(rig.provider.sent(), 2, "one refused try, one answered");
    // One model call for the agent, however many tries it took.
    assert_eq!(report.usage.llm_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_asking_for_more_than_the_time_left_is_rate_limited_at_once() {
    let rig = Rig::start(ProviderKind::Anthropic).await;
    rig.server().push(Reply::status_with_retry_after(
        429,
        "3600",
        openai_error("come back in an hour"),
    ));
    let report = rig.run(llm_spec(&["p/*"]), one_call()).await;
    let r = &results(&report)[0];
    refused(r, "rate-limited", "rate limiting");
    assert_eq!(r["retry_after_ms"], 3_600_000, "{r}");
    let message = r["message"].as_str().unwrap();
    assert!(message.contains("come back in an hour"), "{message}");
    assert!(message.contains("deadline"), "{message}");
    assert_eq!(
        rig.provider.sent(),
        1,
        "no retry that cannot finish in time"
    );
}

/// Three 500s (each with `Retry-After: 0`, so no backoff wait), then an answer.
async fn three_500s_then_an_answer(max_retries: u32) -> (Rig, Value) {
    let rig = Rig::with(ProviderKind::Openai, |c| {
        c.providers.get_mut("p").unwrap().max_retries = max_retries;
    })
    .await;
    for _ in 0..3 {
        rig.server().push(Reply::status_with_retry_after(
            500,
            "0",
            openai_error("upstream exploded"),
        ));
    }
    rig.server().push(Reply::text("recovered"));
    let report = rig.run(llm_spec(&["p/*"]), one_call()).await;
    let r = results(&report)[0].clone();
    (rig, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_server_errors_are_retried_with_max_retries_3() {
    let (rig, r) = three_500s_then_an_answer(3).await;
    assert_eq!(answered(&r)["content"], "recovered");
    assert_eq!(rig.provider.sent(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_server_errors_are_unavailable_with_max_retries_2() {
    let (rig, r) = three_500s_then_an_answer(2).await;
    refused(&r, "unavailable", "after 3 tries");
    refused(&r, "unavailable", "upstream exploded");
    assert_eq!(
        rig.provider.sent(),
        3,
        "the answer queued fourth was never asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_a_provider_error_without_retry() {
    let rig = Rig::start(ProviderKind::Openai).await;
    rig.server()
        .push(Reply::status(400, openai_error("model m1 does not exist")));
    let report = rig.run(llm_spec(&["p/*"]), one_call()).await;
    refused(
        &results(&report)[0],
        "provider-error",
        "model m1 does not exist",
    );
    assert_eq!(rig.provider.sent(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_a_provider_error() {
    for kind in BOTH {
        let rig = Rig::start(kind).await;
        rig.server().push(Reply::Malformed("{\"id\": ".into()));
        rig.server()
            .push(Reply::Malformed("{\"id\": \"x\"}".into()));
        let report = rig
            .run(llm_spec(&["p/*"]), json!([one_call()[0], one_call()[0]]))
            .await;
        let results = results(&report);
        refused(&results[0], "provider-error", "not JSON");
        // JSON, but not an answer of the format.
        refused(&results[1], "provider-error", "cannot be used");
        assert_eq!(rig.provider.sent(), 2, "{kind:?}: neither is retried");
    }
}

/// The exact size of the body the server answers `Reply::Large(content_bytes)` with, to an
/// OpenAI request for model `m1` with one user message `prompt`: measured on a server of its
/// own, so the pair below sits exactly on the limit.
async fn large_answer_bytes(content_bytes: usize, prompt: &str) -> u64 {
    let key = new_key();
    let probe = TestServer::start(&key).await;
    probe.push(Reply::Large(content_bytes));
    let body =
        json!({"model": "m1", "messages": [{"role": "user", "content": prompt}]}).to_string();
    let mut stream = tokio::net::TcpStream::connect(probe.addr()).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: probe\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let length: u64 = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    assert_eq!(length, rest.len() as u64);
    probe.stop().await;
    length
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_exactly_max_response_bytes_is_read_and_one_byte_more_is_refused() {
    let prompt = "a long answer please";
    let size = large_answer_bytes(3_000, prompt).await;
    // Two providers on the same server, one whose limit is the answer's size, one a byte less.
    let provider = Provider::start().await;
    let mut config = LlmConfig::default();
    for (name, max) in [("fits", size), ("tight", size - 1)] {
        let mut p = provider.config(ProviderKind::Openai);
        p.max_response_bytes = max;
        config.providers.insert(name.into(), p);
    }
    let host = new_host(2).with_llm(broker(config));
    provider.server.push(Reply::Large(3_000));
    provider.server.push(Reply::Large(3_000));
    let report = run_llm_agent(
        &host,
        llm_spec(&["fits/*", "tight/*"]),
        json!({"calls": [{"model": "fits/m1", "prompt": prompt}, {"model": "tight/m1", "prompt": prompt}]}),
    )
    .await;
    let results = results(&report);
    let fits = answered(&results[0]);
    assert_eq!(fits["content"].as_str().unwrap().len(), 3_000);
    refused(
        &results[1],
        "provider-error",
        "llm.providers.tight.maxResponseBytes",
    );
    refused(
        &results[1],
        "provider-error",
        &format!("larger than {} bytes", size - 1),
    );
    assert_eq!(
        provider.sent(),
        2,
        "a too-large answer is not asked for again"
    );
}

/// The deadline cancels the call in flight and ends the agent; the agent never resumes with an
/// answer (or an error) that arrives at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_hanging_past_the_deadline_ends_the_agent_at_its_time_limit() {
    let rig = Rig::start(ProviderKind::Openai).await;
    rig.server().push(Reply::Hang);
    let mut s = llm_spec(&["p/*"]);
    s.resource_limits.max_execution_time_ms = 2_000;
    let report = rig.run(s, one_call()).await;
    let (kind, message) = limit(&report);
    assert_eq!(kind, LimitKind::ExecutionTime, "{message}");
    assert!(message.contains("maxExecutionTimeMs = 2000"), "{message}");
    assert_eq!(rig.provider.sent(), 1);
    rig.server().release_hung();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_an_agent_waiting_for_a_model_ends_it_at_once() {
    let rig = Rig::start(ProviderKind::Anthropic).await;
    rig.server().push(Reply::Hang);
    let component = rig.host.load(LLM_AGENT_COMPONENT).unwrap();
    let agent = rig
        .host
        .spawn(&component, llm_spec(&["p/*"]))
        .await
        .unwrap();
    let id = agent.id().to_string();
    let running = tokio::spawn(agent.run(TaskRequest::new(
        "wait for the model",
        json!({"calls": one_call()}),
    )));
    // The request has reached the provider: the agent is inside `chat`.
    hang_guard("the hung request", rig.server().wait_for_requests(1)).await;
    assert_eq!(rig.host.status(&id), Some(AgentStatus::Executing));
    rig.host.terminate(&id, "operator stops it").unwrap();
    // The call would otherwise wait for two minutes (`timeoutMs`): only the terminate ends it.
    let report = hang_guard("the terminated agent's end", running)
        .await
        .unwrap();
    assert_eq!(report.status, AgentStatus::Terminated);
    assert_eq!(
        report.failure,
        Some(AgentFailure::Terminated {
            reason: "operator stops it".into()
        })
    );
    assert_eq!(rig.provider.sent(), 1);
    rig.server().release_hung();
}
