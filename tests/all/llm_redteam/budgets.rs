//! Every budget is enforced before sending, and counted from what the provider reported.

use super::*;
use qi_host::llm::Price;
use qi_llm_test_server::Reply;

/// `id` priced at `per_million` USD per million output tokens and nothing for input (the
/// host prices a request's input at one token per byte before sending; these tests are about
/// the output clamp).
fn priced_output(config: &mut LlmConfig, id: &str, per_million: f64) {
    config.prices.insert(
        id.into(),
        Price {
            input_per_million: 0.0,
            output_per_million: per_million,
        },
    );
}

fn priced(config: &mut LlmConfig, id: &str, per_million: f64) {
    config.prices.insert(
        id.into(),
        Price {
            input_per_million: per_million,
            output_per_million: per_million,
        },
    );
}

/// FINDING: `maxCostUsd` only clamps the *output* to what the money left buys; the input of a
/// call is not priced before it is sent. One call of a 400 KB prompt (~100,000 tokens at 10 USD
/// per million) costs 1 USD against a budget of 0.01 USD: a 100× overrun, limited only by
/// MAX_REQUEST_BYTES. (A bound is available before sending: a prompt of n bytes is at most
/// about n tokens.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_cost_usd_is_not_overrun_by_the_input_of_one_call() {
    let rig = Rig::start(|c| priced(c, "p/m", 10.0)).await;
    let mut spec = llm_spec(&["p/*"]);
    spec.resource_limits.max_cost_usd = Some(0.01);
    let prompt = "word ".repeat(80_000);
    let report = rig
        .run(
            spec,
            json!([{"model": "p/m", "prompt": prompt, "maxTokens": 1}]),
        )
        .await;
    let r = &results(&report)[0];
    let cost = report.usage.cost;
    assert!(
        cost <= 0.01 + 1e-9,
        "maxCostUsd 0.01 but one call cost {cost} USD ({} input tokens; result ok={})",
        report.usage.input_tokens,
        r["ok"]
    );
}

/// FINDING: a model without a price costs nothing, and a guest whose grant is a glob
/// (`p/*`) chooses the model id: once its `maxCostUsd` is spent on the priced model, it keeps
/// calling the same provider under any other id (another spelling, a dated version, another
/// model), each call sent and paid by the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_cost_budget_cannot_be_escaped_through_an_unpriced_model_id() {
    let rig = Rig::start(|c| priced_output(c, "p/priced", 1_000.0)).await;
    let mut spec = llm_spec(&["p/*"]);
    spec.resource_limits.max_cost_usd = Some(0.001);
    let report = rig
        .run(
            spec,
            json!([
                {"model": "p/priced", "prompt": "a", "maxTokens": 1},
                {"model": "p/priced", "prompt": "b", "maxTokens": 1},
                {"model": "p/priced-2024-01-01", "prompt": "c", "maxTokens": 1},
            ]),
        )
        .await;
    let r = results(&report);
    assert_eq!(r[0]["ok"], true, "{}", r[0]);
    assert_eq!(r[1]["error_kind"], "limit-exceeded", "{}", r[1]);
    assert_ne!(
        r[2]["ok"],
        true,
        "with maxCostUsd spent, a call to an unpriced id of the same provider was sent \
         ({} requests reached the provider): {}",
        rig.server.request_count(),
        r[2]
    );
}

/// FINDING: usage is charged only when the answer decodes. An answer the host refuses after the
/// provider produced (and billed) it, such as one with more than 128 tool calls, which a guest
/// gets by asking the model for them, is charged nothing: neither tokens nor cost, so the
/// output clamp never tightens and `maxOutputTokens`/`maxCostUsd` never bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_of_an_answer_the_host_refuses_is_still_charged() {
    let rig = Rig::start(|c| priced(c, "p/m", 1.0)).await;
    let calls: Vec<(String, Value)> = (0..129).map(|_| ("clock.now".into(), json!({}))).collect();
    rig.server.push(Reply::ToolCalls {
        calls,
        input_tokens: 5_000,
        output_tokens: 5_000,
    });
    let report = rig
        .run(
            llm_spec(&["p/*"]),
            json!([{"model": "p/m", "prompt": "call clock.now 129 times"}]),
        )
        .await;
    let r = &results(&report)[0];
    assert_eq!(r["error_kind"], "provider-error", "{r}");
    assert_eq!(rig.server.request_count(), 1);
    assert!(
        report.usage.output_tokens >= 5_000 && report.usage.input_tokens >= 5_000,
        "the provider reported 5,000 + 5,000 tokens for the refused answer; the receipt \
         charged {} in, {} out, {} USD",
        report.usage.input_tokens,
        report.usage.output_tokens,
        report.usage.cost
    );
}

/// HELD: a provider reporting `u32::MAX` tokens at the highest price overflows nothing: the
/// receipt counts it, the cost is finite, and the next call is refused before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_usage_from_a_provider_spends_the_budget_without_overflow() {
    let rig = Rig::start(|c| priced_output(c, "p/m", 1_000_000.0)).await;
    rig.server.push(Reply::Text {
        content: "x".into(),
        input_tokens: u32::MAX,
        output_tokens: u32::MAX,
    });
    let report = rig
        .run(
            llm_spec(&["p/*"]),
            json!([
                {"model": "p/m", "prompt": "a", "maxTokens": 1},
                {"model": "p/m", "prompt": "b", "maxTokens": 1},
                {"model": "p/m", "prompt": "c", "maxTokens": 1},
            ]),
        )
        .await;
    let r = results(&report);
    assert_eq!(r[0]["ok"], true, "{}", r[0]);
    assert_eq!(r[1]["error_kind"], "limit-exceeded", "{}", r[1]);
    assert_eq!(r[2]["error_kind"], "limit-exceeded", "{}", r[2]);
    assert_eq!(rig.server.request_count(), 1);
    assert_eq!(report.usage.input_tokens, u64::from(u32::MAX));
    assert_eq!(report.usage.output_tokens, u64::from(u32::MAX));
    assert!(report.usage.cost.is_finite() && report.usage.cost > 0.0);
}

/// HELD: a guest asking for `u32::MAX` output tokens gets what the token budget and what the
/// money left buy, whichever is smaller, on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_max_tokens_is_clamped_by_tokens_and_by_money() {
    let rig = Rig::start(|c| priced_output(c, "p/m", 1_000.0)).await;
    let mut spec = llm_spec(&["p/*"]);
    spec.resource_limits.max_output_tokens = 10;
    let report = rig
        .run(
            spec,
            json!([{"model": "p/m", "prompt": "a", "maxTokens": u32::MAX}]),
        )
        .await;
    assert_eq!(results(&report)[0]["ok"], true);
    // 0.005 USD buys 5 output tokens at 1,000 USD per million.
    let mut spec = llm_spec(&["p/*"]);
    spec.resource_limits.max_cost_usd = Some(0.005);
    let report = rig
        .run(
            spec,
            json!([{"model": "p/m", "prompt": "b", "maxTokens": u32::MAX}]),
        )
        .await;
    assert_eq!(results(&report)[0]["ok"], true);
    let sent: Vec<Value> = rig
        .server
        .requests()
        .iter()
        .map(|r| r.body["max_tokens"].clone())
        .collect();
    assert_eq!(sent, vec![json!(10), json!(5)]);
}
