//! Both wire formats end to end through `llm-agent`: what the provider receives (path, auth
//! headers, the resolved model, messages, tools, the answer format) and what the agent gets back
//! (content, usage, tool calls, JSON answers), the tool loop with a real host tool included.

use super::*;
use qi_llm_test_server::Reply;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_answer_carries_content_usage_and_the_answering_model() {
    for kind in BOTH {
        let rig = Rig::start(kind).await;
        rig.server().push(Reply::Text {
            content: "hello there".into(),
            input_tokens: 12,
            output_tokens: 2,
        });
        let report = rig
            .run(
                llm_spec(&["p/*"]),
                json!([{"model": "p/m1", "system": "be brief", "prompt": "say hi", "maxTokens": 64}]),
            )
            .await;
        let out = ok(&report);
        let r = answered(&out["results"][0]);
        assert_eq!(r["content"], "hello there", "{kind:?}");
        assert_eq!(r["finish_reason"], "stop", "{kind:?}");
        assert_eq!(r["model"], "p/m1", "{kind:?}");
        assert_eq!(r["input_tokens"], 12, "{kind:?}");
        assert_eq!(r["output_tokens"], 2, "{kind:?}");
        assert_eq!(r["replayed"], false, "{kind:?}");
        assert_eq!(out["models"], json!(["fast", "p/m1"]), "{kind:?}");

        let sent = rig.provider.requests();
        assert_eq!(sent.len(), 1, "{kind:?}");
        let req = &sent[0];
        assert_eq!(req.path, path_of(kind));
        assert_eq!(req.body["model"], "m1", "the provider's own name: {kind:?}");
        assert_eq!(req.body["max_tokens"], 64, "{kind:?}");
        let key = &rig.provider.key;
        match kind {
            ProviderKind::Openai => {
                assert_eq!(
                    req.authorization.as_deref(),
                    Some(&*format!("Bearer {key}"))
                );
                assert_eq!(req.api_key, None);
                assert_eq!(
                    req.body["messages"],
                    json!([{"role": "system", "content": "be brief"},
                           {"role": "user", "content": "say hi"}])
                );
            }
            ProviderKind::Anthropic => {
                assert_eq!(req.api_key.as_deref(), Some(key.as_str()));
                assert_eq!(req.anthropic_version.as_deref(), Some("2023-06-01"));
                assert_eq!(req.authorization, None);
                assert_eq!(req.body["system"], "be brief");
                assert_eq!(
                    req.body["messages"],
                    json!([{"role": "user", "content": [{"type": "text", "text": "say hi"}]}])
                );
            }
        }
        let u = &report.usage;
        assert_eq!((u.llm_calls, u.input_tokens, u.output_tokens), (1, 12, 2));
        assert_eq!(u.llm_replayed, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_resolves_to_its_provider_and_model() {
    for kind in BOTH {
        let rig = Rig::with(kind, |c| {
            c.models.insert("smart".into(), "p/big-model".into());
        })
        .await;
        // Granted by the alias alone: the grant matches the name the agent used.
        let report = rig
            .run(
                llm_spec(&["smart"]),
                json!([{"model": "smart", "prompt": "who are you"}]),
            )
            .await;
        let out = ok(&report);
        let r = answered(&out["results"][0]);
        assert_eq!(r["model"], "p/big-model", "{kind:?}");
        assert_eq!(r["content"], "echo: who are you", "{kind:?}");
        assert_eq!(rig.provider.requests()[0].body["model"], "big-model");
        assert_eq!(
            out["models"],
            json!(["smart"]),
            "only what is granted is listed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_the_model_asks_for_come_back_to_the_agent() {
    for kind in BOTH {
        let rig = Rig::start(kind).await;
        rig.server().push(Reply::ToolCalls {
            calls: vec![
                ("lookup".into(), json!({"city": "Paris"})),
                ("lookup".into(), json!({"city": "Oslo"})),
            ],
            input_tokens: 30,
            output_tokens: 9,
        });
        let tool = json!({"name": "lookup", "description": "weather of a city",
                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}});
        let report = rig
            .run(
                llm_spec(&["p/*"]),
                json!([{"model": "p/m1", "prompt": "weather?", "tools": [tool]}]),
            )
            .await;
        let r = answered(&results(&report)[0]).clone();
        assert_eq!(r["finish_reason"], "tool-calls", "{kind:?}: {r}");
        let calls = r["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2, "{r}");
        for (call, city) in calls.iter().zip(["Paris", "Oslo"]) {
            assert_eq!(call["name"], "lookup");
            assert_eq!(
                parse(call["arguments"].as_str().unwrap()),
                json!({"city": city})
            );
            assert!(!call["id"].as_str().unwrap().is_empty(), "{call}");
        }
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        let body = &rig.provider.requests()[0].body;
        let offered = match kind {
            ProviderKind::Openai => &body["tools"][0]["function"],
            ProviderKind::Anthropic => &body["tools"][0],
        };
        assert_eq!(offered["name"], "lookup", "{body}");
        assert_eq!(offered["description"], "weather of a city", "{body}");
        // A tool call the agent did not run costs no tool call.
        assert_eq!(report.usage.tool_calls, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_loop_runs_a_host_tool_and_feeds_its_result_back() {
    for kind in BOTH {
        let rig = Rig::start(kind).await;
        rig.server()
            .push(Reply::tool_call("clock.now", json!({}), 10, 3));
        rig.server().push(Reply::text("it is late"));
        let mut s = llm_spec(&["p/*"]);
        s.security_constraints.allowed_tools = vec!["clock.now".into()];
        let report = rig
            .run(
                s,
                json!([{"model": "p/m1", "prompt": "what time is it",
                        "tools": [{"name": "clock.now"}], "tool_loop": 3}]),
            )
            .await;
        let r = answered(&results(&report)[0]).clone();
        assert_eq!(r["content"], "it is late", "{kind:?}: {r}");
        assert_eq!(r["rounds"], 1);
        assert_eq!(r["model_calls"], 2);
        assert_eq!(r["finished"], true);
        let tool = &r["tool_results"][0];
        assert_eq!(tool["name"], "clock.now", "{r}");
        assert_eq!(tool["ok"], true, "{r}");
        let output = tool["output"].as_str().unwrap();
        assert!(
            parse(output)["unix_ms"].as_u64().unwrap() > 1_700_000_000_000,
            "{output}"
        );
        assert_eq!(report.usage.tool_calls, 1);
        assert_eq!(report.usage.llm_calls, 2);

        // The second request carries the call and the tool's real output.
        let sent = rig.provider.requests();
        assert_eq!(sent.len(), 2, "{kind:?}");
        let messages = sent[1].body["messages"].as_array().unwrap().clone();
        let id = tool["id"].as_str().unwrap();
        match kind {
            ProviderKind::Openai => {
                let asked = &messages[messages.len() - 2];
                assert_eq!(asked["role"], "assistant");
                assert_eq!(asked["tool_calls"][0]["id"], id);
                assert_eq!(asked["tool_calls"][0]["function"]["name"], "clock.now");
                let answer = messages.last().unwrap();
                assert_eq!(answer["role"], "tool", "{answer}");
                assert_eq!(answer["tool_call_id"], id);
                assert_eq!(answer["content"], output);
            }
            ProviderKind::Anthropic => {
                let asked = &messages[messages.len() - 2];
                assert_eq!(asked["role"], "assistant");
                assert_eq!(asked["content"][0]["type"], "tool_use", "{asked}");
                assert_eq!(asked["content"][0]["id"], id);
                let answer = messages.last().unwrap();
                assert_eq!(answer["role"], "user", "{answer}");
                let block = &answer["content"][0];
                assert_eq!(block["type"], "tool_result", "{answer}");
                assert_eq!(block["tool_use_id"], id);
                assert_eq!(block["content"], output);
            }
        }
    }
}

fn vote_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"vote": {"type": "string", "enum": ["approve", "changes-requested"]}},
        "required": ["vote"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_schema_answer_is_asked_for_in_each_format_and_parses() {
    for kind in BOTH {
        let rig = Rig::start(kind).await;
        // No script: the server answers with the smallest value the schema allows, in the way
        // the request asked for it (OpenAI `response_format`, Anthropic a forced tool).
        let report = rig
            .run(
                llm_spec(&["p/*"]),
                json!([{"model": "p/m1", "prompt": "your verdict", "json_schema": vote_schema()}]),
            )
            .await;
        let r = answered(&results(&report)[0]).clone();
        assert_eq!(r["json"], json!({"vote": "approve"}), "{kind:?}: {r}");
        assert_eq!(
            parse(r["content"].as_str().unwrap()),
            json!({"vote": "approve"})
        );
        assert_eq!(r["finish_reason"], "stop", "{kind:?}: {r}");
        let body = &rig.provider.requests()[0].body;
        match kind {
            ProviderKind::Openai => {
                assert_eq!(body["response_format"]["type"], "json_schema", "{body}");
                assert_eq!(body["response_format"]["json_schema"]["name"], "answer");
                assert_eq!(
                    body["response_format"]["json_schema"]["schema"],
                    vote_schema()
                );
            }
            ProviderKind::Anthropic => {
                assert_eq!(
                    body["tool_choice"],
                    json!({"type": "tool", "name": "answer"})
                );
                assert_eq!(body["tools"][0]["name"], "answer", "{body}");
                assert_eq!(body["tools"][0]["input_schema"], vote_schema());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_breaks_the_schema_is_a_provider_error() {
    for kind in BOTH {
        let rig = Rig::start(kind).await;
        rig.server().push(Reply::json(json!({"vote": 7})));
        rig.server()
            .push(Reply::json(json!({"vote": "changes-requested"})));
        let call = json!({"model": "p/m1", "prompt": "your verdict", "json_schema": vote_schema()});
        let report = rig.run(llm_spec(&["p/*"]), json!([call, call])).await;
        let results = results(&report);
        refused(&results[0], "provider-error", "schema `answer`");
        // The same request answered within the schema passes.
        assert_eq!(
            answered(&results[1])["json"],
            json!({"vote": "changes-requested"})
        );
        // The provider counted the broken answer's tokens: they are charged.
        assert_eq!(report.usage.llm_calls, 2, "{kind:?}");
        assert!(report.usage.output_tokens >= 2, "{:?}", report.usage);
    }
}
