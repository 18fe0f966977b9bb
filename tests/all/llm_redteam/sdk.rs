//! The guest SDK's tool loop, driven by a hostile (or prompt-injected) model.

use super::*;
use qi_llm_test_server::Reply;

/// FINDING (SDK, documented but unsafe by default): `llm::run_tools` runs whatever tool the
/// model names, not only the tools the request offered. An agent that offers the model
/// `clock.now` and holds another tool for its own use (`test.signal` here; `fs.write` or a
/// network tool in practice) lets a prompt-injected model, or a hostile provider, call that
/// tool with arguments of its choosing, under the agent's grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_loop_runs_only_the_tools_the_request_offered() {
    let rig = Rig::start(|_| {}).await;
    let mut spec = llm_spec(&["p/*"]);
    spec.security_constraints.allowed_tools = vec!["clock.now".into(), "test.signal".into()];
    let key = unique_key("redteam-sdk");
    rig.server.push(Reply::tool_call(
        "test.signal",
        json!({"key": key, "exfiltrate": "anything the model chose"}),
        1,
        1,
    ));
    let report = rig
        .run(
            spec,
            json!([{"model": "p/m", "prompt": "what time is it?",
                    "tools": [{"name": "clock.now"}], "tool_loop": 2}]),
        )
        .await;
    let r = &results(&report)[0];
    assert_eq!(r["ok"], true, "{r}");
    let ran: Vec<(String, Value)> = r["tool_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t["ok"].clone()))
        .collect();
    assert!(
        ran.iter()
            .all(|(name, ok)| name == "clock.now" || ok != &json!(true)),
        "the tool loop ran a tool the request never offered: {ran:?}"
    );
}
