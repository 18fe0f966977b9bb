//! The model budgets in pairs: the call just inside each passes, the next is refused as
//! `limit-exceeded` naming the field before anything is sent (the server's count of requests
//! says so); `max_tokens` is clamped to what is left; the isolation level's ceilings; and the
//! receipts' exact figures.

use super::*;
use qi_host::{Error, IsolationLevel};
use qi_llm_test_server::Reply;

fn text(output_tokens: u32, input_tokens: u32) -> Reply {
    Reply::Text {
        content: "fine".into(),
        input_tokens,
        output_tokens,
    }
}

fn calls(n: usize, max_tokens: Option<u32>) -> Value {
    let call = match max_tokens {
        Some(m) => json!({"model": "p/m1", "prompt": "go on", "maxTokens": m}),
        None => json!({"model": "p/m1", "prompt": "go on"}),
    };
    Value::Array(vec![call; n])
}

fn sent_max_tokens(provider: &Provider) -> Vec<u64> {
    provider
        .requests()
        .iter()
        .map(|r| r.body["max_tokens"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_llm_calls_allows_n_calls_and_refuses_the_next_before_sending() {
    let rig = Rig::start(ProviderKind::Openai).await;
    let mut s = llm_spec(&["p/*"]);
    s.resource_limits.max_llm_calls = 2;
    let report = rig.run(s, calls(3, None)).await;
    let results = results(&report);
    answered(&results[0]);
    answered(&results[1]);
    refused(&results[2], "limit-exceeded", "resourceLimits.maxLlmCalls");
    assert_eq!(rig.provider.sent(), 2);
    assert_eq!(report.usage.llm_calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_output_tokens_clamps_each_call_to_what_is_left_then_refuses() {
    let rig = Rig::start(ProviderKind::Anthropic).await;
    rig.server().push(text(7, 5));
    rig.server().push(text(3, 5));
    let mut s = llm_spec(&["p/*"]);
    s.resource_limits.max_output_tokens = 10;
    let report = rig.run(s, calls(3, Some(100))).await;
    let results = results(&report);
    answered(&results[0]);
    // Just inside: 3 tokens are left, and the call asks for exactly them.
    answered(&results[1]);
    refused(
        &results[2],
        "limit-exceeded",
        "resourceLimits.maxOutputTokens",
    );
    assert_eq!(sent_max_tokens(&rig.provider), [10, 3]);
    assert_eq!(report.usage.output_tokens, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_max_tokens_gets_the_providers_default_clamped_by_the_budget() {
    let rig = Rig::with(ProviderKind::Openai, |c| {
        c.providers.get_mut("p").unwrap().max_tokens_per_call = 50;
    })
    .await;
    rig.server().push(text(45, 1));
    let mut s = llm_spec(&["p/*"]);
    s.resource_limits.max_output_tokens = 60;
    let report = rig.run(s, calls(2, None)).await;
    for r in results(&report) {
        answered(&r);
    }
    assert_eq!(sent_max_tokens(&rig.provider), [50, 15]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_input_tokens_refuses_the_call_after_the_reported_input_reaches_it() {
    let rig = Rig::start(ProviderKind::Openai).await;
    rig.server().push(text(1, 99));
    rig.server().push(text(1, 1));
    let mut s = llm_spec(&["p/*"]);
    s.resource_limits.max_input_tokens = 100;
    let report = rig.run(s, calls(3, None)).await;
    let results = results(&report);
    answered(&results[0]);
    // 99 of 100 spent: the next call is still sent.
    answered(&results[1]);
    refused(
        &results[2],
        "limit-exceeded",
        "resourceLimits.maxInputTokens",
    );
    assert_eq!(rig.provider.sent(), 2);
    assert_eq!(report.usage.input_tokens, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_cost_usd_clamps_output_to_what_the_money_buys_then_refuses() {
    // $0.001 per output token, input free: $0.01 buys 10 output tokens.
    let rig = Rig::with(ProviderKind::Openai, |c| {
        c.prices.insert(
            "p/m1".into(),
            qi_host::llm::Price {
                input_per_million: 0.0,
                output_per_million: 1_000.0,
            },
        );
    })
    .await;
    rig.server().push(text(6, 40));
    rig.server().push(text(4, 40));
    let mut s = llm_spec(&["p/*"]);
    s.resource_limits.max_cost_usd = Some(0.01);
    let report = rig.run(s, calls(3, Some(100))).await;
    let results = results(&report);
    answered(&results[0]);
    answered(&results[1]);
    refused(&results[2], "limit-exceeded", "resourceLimits.maxCostUsd");
    assert_eq!(sent_max_tokens(&rig.provider), [10, 4]);
    assert_eq!(report.usage.cost, 0.01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_carry_the_tokens_the_provider_reported_and_their_price() {
    let rig = Rig::with(ProviderKind::Anthropic, |c| {
        c.prices.insert(
            "p/m1".into(),
            qi_host::llm::Price {
                input_per_million: 2.0,
                output_per_million: 4.0,
            },
        );
    })
    .await;
    rig.server().push(text(500, 1_000));
    rig.server().push(text(250, 3_000));
    let report = rig.run(llm_spec(&["p/*"]), calls(2, None)).await;
    let results = results(&report);
    assert_eq!(results[0]["input_tokens"], 1_000);
    assert_eq!(results[1]["output_tokens"], 250);
    let u = &report.usage;
    assert_eq!(u.llm_calls, 2);
    assert_eq!(u.llm_replayed, 0);
    assert_eq!(u.input_tokens, 4_000);
    assert_eq!(u.output_tokens, 750);
    // 2 µ$ × 4,000 input + 4 µ$ × 750 output = 11,000 µ$.
    let micro = 2 * 4_000 + 4 * 750;
    assert_eq!(u.cost, micro as f64 / 1_000_000.0);
    // The receipt serializes the same figures.
    let receipt = serde_json::to_value(u).unwrap();
    for (field, want) in [
        ("llm_calls", json!(2)),
        ("input_tokens", json!(4_000)),
        ("output_tokens", json!(750)),
        ("cost", json!(0.011)),
    ] {
        assert_eq!(receipt[field], want, "{field} in {receipt}");
    }
}

/// Sets a budget at its sandbox ceiling, or one past it when the flag is true.
type SetBudget = fn(&mut qi_host::ResourceLimits, bool);

/// Spawns `llm-agent` at `sandbox` with `set` applied: `Ok` if the spec passed validation.
async fn spawn_at_sandbox(
    rig: &Rig,
    set: impl FnOnce(&mut qi_host::ResourceLimits),
) -> Result<(), Error> {
    let mut s = llm_spec(&["p/*"]);
    assert_eq!(s.isolation_level, IsolationLevel::Sandbox);
    set(&mut s.resource_limits);
    let component = rig.host.load(LLM_AGENT_COMPONENT).unwrap();
    let agent = rig.host.spawn(&component, s).await?;
    let report = agent
        .run(TaskRequest::new(
            "one call",
            json!({"calls": calls(1, Some(8))}),
        ))
        .await;
    answered(&results(&report)[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_budgets_at_the_sandbox_ceiling_pass_and_one_more_is_refused_at_spawn() {
    // Priced (at nothing), so that a cost budget can count the calls.
    let rig = Rig::with(ProviderKind::Openai, |c| {
        for id in ["p/m", "p/m1", "p/m2"] {
            c.prices.insert(
                id.into(),
                qi_host::llm::Price {
                    input_per_million: 0.0,
                    output_per_million: 0.0,
                },
            );
        }
    })
    .await;
    let cases: [(&str, SetBudget); 4] = [
        ("resourceLimits.maxLlmCalls", |l, over| {
            l.max_llm_calls = 1_000 + u32::from(over)
        }),
        ("resourceLimits.maxOutputTokens", |l, over| {
            l.max_output_tokens = 1_000_000 + u64::from(over)
        }),
        ("resourceLimits.maxInputTokens", |l, over| {
            l.max_input_tokens = 10_000_000 + u64::from(over)
        }),
        ("resourceLimits.maxCostUsd", |l, over| {
            // 10.000002 USD is 10,000,001 micro-dollars once rounded down (10.000001 is not).
            l.max_cost_usd = Some(if over { 10.000_002 } else { 10.0 })
        }),
    ];
    for (field, set) in cases {
        spawn_at_sandbox(&rig, |l| set(l, false))
            .await
            .unwrap_or_else(|e| panic!("{field} at the ceiling: {e}"));
        match spawn_at_sandbox(&rig, |l| set(l, true)).await {
            Err(Error::IsolationCeiling {
                field: f,
                level,
                message,
            }) => {
                assert!(f.starts_with(field), "{f}: {message}");
                assert_eq!(level, "sandbox", "{f}: {message}");
            }
            other => panic!("{field} one past the ceiling: {other:?}"),
        }
    }
    assert_eq!(rig.provider.sent(), 4, "one call per agent that spawned");
}
