//! Which models an agent may call (`allowedModels`, deny by default; `llm` in
//! `prohibitedOperations`) and the bounds of a request: each refusal is a value the agent
//! handles, made before anything is sent and before the call budget is taken.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_allowed_models_is_access_denied_without_a_request() {
    for kind in BOTH {
        let rig = Rig::start(kind).await;
        let report = rig
            .run(
                llm_spec(&[]),
                json!([{"model": "p/m1", "prompt": "hi"}, {"model": "fast", "prompt": "hi"}]),
            )
            .await;
        let out = ok(&report);
        for r in out["results"].as_array().unwrap() {
            refused(r, "access-denied", "securityConstraints.allowedModels");
        }
        assert_eq!(out["models"], json!([]), "nothing is listed");
        assert_eq!(rig.provider.sent(), 0, "{kind:?}");
        assert_eq!(report.usage.llm_calls, 0);
        assert_eq!(report.usage.access_denied, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glob_grants_the_models_it_matches_by_name_or_by_resolved_id() {
    let rig = Rig::with(ProviderKind::Openai, |c| {
        c.models.insert("other".into(), "p/x1".into());
    })
    .await;
    let report = rig
        .run(
            llm_spec(&["p/m*"]),
            json!([
                {"model": "p/m1", "prompt": "a"},
                {"model": "p/m2-large", "prompt": "b"},
                // An alias whose target the glob matches.
                {"model": "fast", "prompt": "c"},
                {"model": "p/x1", "prompt": "d"},
                {"model": "other", "prompt": "e"},
            ]),
        )
        .await;
    let out = ok(&report);
    let results = out["results"].as_array().unwrap();
    assert_eq!(answered(&results[0])["model"], "p/m1");
    assert_eq!(answered(&results[1])["model"], "p/m2-large");
    assert_eq!(answered(&results[2])["model"], "p/m1");
    refused(&results[3], "access-denied", "`p/x1`");
    refused(&results[4], "access-denied", "`other`");
    let sent: Vec<Value> = rig
        .provider
        .requests()
        .iter()
        .map(|r| r.body["model"].clone())
        .collect();
    assert_eq!(sent, [json!("m1"), json!("m2-large"), json!("m1")]);
    assert_eq!(out["models"], json!(["fast", "p/m1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_in_prohibited_operations_refuses_every_model() {
    let rig = Rig::start(ProviderKind::Anthropic).await;
    let mut s = llm_spec(&["*"]);
    s.security_constraints.prohibited_operations = vec!["llm".into()];
    let report = rig.run(s, json!([{"model": "p/m1", "prompt": "hi"}])).await;
    let out = ok(&report);
    refused(&out["results"][0], "access-denied", "prohibitedOperations");
    assert_eq!(out["models"], json!([]));
    assert_eq!(rig.provider.sent(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_an_invalid_request_naming_what_is_known() {
    let rig = Rig::start(ProviderKind::Openai).await;
    let report = rig
        .run(
            llm_spec(&["*"]),
            json!([{"model": "nowhere/m1", "prompt": "hi"}, {"model": "slow", "prompt": "hi"}]),
        )
        .await;
    for r in results(&report) {
        refused(&r, "invalid-request", "request.model");
        refused(&r, "invalid-request", "fast");
    }
    assert_eq!(rig.provider.sent(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bounds_hold_at_their_edges_before_anything_is_sent() {
    let rig = Rig::start(ProviderKind::Openai).await;
    let stops = |n: usize| -> Vec<String> { (0..n).map(|i| format!("END{i}")).collect() };
    let report = rig
        .run(
            llm_spec(&["p/*"]),
            json!([
                // Just inside every bound.
                {"model": "p/m1", "prompt": "a", "stop": stops(4), "temperature": 2.0, "topP": 1.0},
                {"model": "p/m1", "prompt": "b", "stop": stops(5)},
                {"model": "p/m1", "prompt": "c", "temperature": 2.5},
                {"model": "p/m1", "prompt": "d", "topP": 1.5},
                {"model": "p/m1", "prompt": "e", "maxTokens": 0},
                {"model": "p/m1"},
            ]),
        )
        .await;
    let results = results(&report);
    answered(&results[0]);
    refused(&results[1], "invalid-request", "request.stop");
    refused(&results[2], "invalid-request", "request.temperature");
    refused(&results[3], "invalid-request", "request.top-p");
    refused(&results[4], "invalid-request", "request.max-tokens");
    refused(&results[5], "invalid-request", "request.messages");
    let sent = rig.provider.requests();
    assert_eq!(sent.len(), 1, "only the request within bounds is sent");
    assert_eq!(sent[0].body["stop"], json!(stops(4)));
    assert_eq!(sent[0].body["temperature"], 2.0);
    // Refused requests do not use up the call budget.
    assert_eq!(report.usage.llm_calls, 1);
}
