//! Every limit in pairs: just inside passes, just past fails with the right error.

use crate::common::*;
use qi_guest_artifacts::*;
use qi_host::{AgentFailure, Error, LimitKind};
use serde_json::json;

#[tokio::test]
async fn fuel_exactly_enough_passes_one_less_fails() {
    let input = json!({"pair": "fuel"});
    let measured = run(HELLO_COMPONENT, spec(), input.clone()).await;
    ok(&measured);
    let need = measured.usage.fuel_consumed;

    let mut s = spec();
    s.fuel = need;
    let inside = run(HELLO_COMPONENT, s.clone(), input.clone()).await;
    ok(&inside);
    assert_eq!(inside.usage.fuel_consumed, need);

    // Wasmtime checks fuel at function entries and loop headers, so an agent can overrun its
    // budget by the straight-line code between two checks (about 160 units for `hello`) before
    // it traps; "just past" is therefore one check interval past, not one unit.
    s.fuel = need - 1_000;
    let past = run(HELLO_COMPONENT, s, input).await;
    assert_eq!(limit(&past).0, LimitKind::Fuel);
    assert_eq!(past.usage.fuel_consumed, need - 1_000);
}

#[tokio::test]
async fn memory_up_to_the_cap_passes_one_page_more_fails() {
    let mut s = spec();
    s.resource_limits.max_memory_mb = 8;
    let inside = run(MEMORY_HOG_COMPONENT, s.clone(), json!({"target_mb": 8})).await;
    assert_eq!(ok(&inside)["memory_bytes"], 8 << 20);
    assert_eq!(inside.usage.peak_memory_bytes, 8 << 20);

    let past = run(MEMORY_HOG_COMPONENT, s, json!({"target_mb": 9})).await;
    let (kind, message) = limit(&past);
    assert_eq!(kind, LimitKind::Memory);
    // The first refused growth is exactly one 64 KiB page past the cap.
    assert!(
        message.contains(&format!("to {} bytes refused", (8 << 20) + 65536)),
        "{message}"
    );
}

#[tokio::test]
async fn wall_clock_inside_passes_past_fails_even_while_blocked_in_wasi() {
    let mut s = spec();
    s.resource_limits.max_execution_time_ms = 2_000;
    let inside = run(SLEEPER_COMPONENT, s.clone(), json!({"ms": 150})).await;
    ok(&inside);

    s.resource_limits.max_execution_time_ms = 150;
    let past = run(SLEEPER_COMPONENT, s, json!({"ms": 5_000})).await;
    assert_eq!(limit(&past).0, LimitKind::ExecutionTime);
    assert!(past.usage.wall_time_us < 2_000_000, "{:?}", past.usage);
}

#[tokio::test]
async fn wall_clock_applies_while_waiting_in_a_host_call() {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["test.delay".into()];
    s.resource_limits.max_execution_time_ms = 2_000;
    let call = |ms: u64| json!({"calls": [{"tool": "test.delay", "input": {"ms": ms}}]});
    let inside = run(TOOL_USER_COMPONENT, s.clone(), call(100)).await;
    assert!(ok(&inside)["results"][0]["ok"]["agent"].is_string());

    s.resource_limits.max_execution_time_ms = 200;
    let past = run(TOOL_USER_COMPONENT, s, call(10_000)).await;
    assert_eq!(limit(&past).0, LimitKind::ExecutionTime);
}

#[tokio::test]
async fn tool_calls_up_to_the_limit_pass_one_more_fails() {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["clock.now".into()];
    s.resource_limits.max_tool_calls = 5;
    let inside = run(TOOL_SPAMMER_COMPONENT, s.clone(), json!({"count": 5})).await;
    assert_eq!(ok(&inside)["calls"], 5);

    let past = run(TOOL_SPAMMER_COMPONENT, s, json!({"count": 6})).await;
    let (kind, message) = limit(&past);
    assert_eq!(kind, LimitKind::ToolCalls);
    assert!(message.contains("attempt 6 refused"), "{message}");
}

#[tokio::test]
async fn file_operations_up_to_the_limit_pass_one_more_fails() {
    let dir = crate::guests::file_stats_workspace();
    let measured = run(
        FILE_STATS_COMPONENT,
        crate::guests::restricted_spec(dir.path()),
        json!(null),
    )
    .await;
    ok(&measured);
    let need = measured.usage.file_operations as u32;
    assert!(need > 0);

    let mut s = crate::guests::restricted_spec(dir.path());
    s.resource_limits.max_file_operations = need;
    let inside = run(FILE_STATS_COMPONENT, s.clone(), json!(null)).await;
    ok(&inside);
    assert_eq!(inside.usage.file_operations as u32, need);

    s.resource_limits.max_file_operations = need - 1;
    let past = run(FILE_STATS_COMPONENT, s, json!(null)).await;
    assert_eq!(limit(&past).0, LimitKind::FileOperations);
}

#[tokio::test]
async fn concurrent_operations_up_to_the_limit_pass_one_more_is_refused() {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["test.delay".into()];
    s.resource_limits.max_concurrent_operations = 3;
    let batch = |n: usize| {
        let calls: Vec<_> = (0..n)
            .map(|_| json!({"tool": "test.delay", "input": {"ms": 100}}))
            .collect();
        json!({"calls": calls, "batch": true})
    };
    let inside = run(TOOL_USER_COMPONENT, s.clone(), batch(3)).await;
    let out = ok(&inside);
    assert!(
        out["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["ok"].is_object()),
        "{out}"
    );
    // Three 100 ms calls ran concurrently, not one after another.
    assert!(inside.usage.wall_time_us < 290_000, "{:?}", inside.usage);

    let past = run(TOOL_USER_COMPONENT, s, batch(4)).await;
    let out = ok(&past);
    for r in out["results"].as_array().unwrap() {
        assert_eq!(r["error"]["kind"], "limit-exceeded", "{out}");
    }
    assert_eq!(past.usage.tool_calls, 0);
}

#[tokio::test]
async fn output_up_to_the_cap_passes_one_byte_more_fails() {
    let cap = 4096u64;
    let mut s = spec();
    s.configuration_overrides
        .insert("maxOutputBytes".into(), json!(cap));
    // The JSON text of a string of N characters is N + 2 bytes.
    let inside = run(HUGE_OUTPUT_COMPONENT, s.clone(), json!({"bytes": cap - 2})).await;
    assert_eq!(ok(&inside).as_str().unwrap().len() as u64, cap - 2);

    let past = run(HUGE_OUTPUT_COMPONENT, s, json!({"bytes": cap - 1})).await;
    let (kind, message) = limit(&past);
    assert_eq!(kind, LimitKind::OutputSize);
    assert!(message.contains(&format!("{} bytes", cap + 1)), "{message}");
}

#[tokio::test]
async fn network_allowed_host_connects_other_port_is_denied() {
    let addr = crate::guests::net_server().await;
    let target = json!({"target": addr.to_string(), "http": true});
    let inside = run(
        NET_PROBE_COMPONENT,
        crate::guests::network_spec(&[format!("127.0.0.1:{}", addr.port())]),
        target.clone(),
    )
    .await;
    let out = ok(&inside);
    assert_eq!(out["connected"], true, "{out}");
    assert!(
        out["response"]
            .as_str()
            .unwrap()
            .contains("hello from host")
    );
    assert!(inside.usage.network_allowed >= 1);

    let past = run(
        NET_PROBE_COMPONENT,
        crate::guests::network_spec(&[format!("127.0.0.1:{}", addr.port() - 1)]),
        target,
    )
    .await;
    assert_eq!(ok(&past)["connected"], false);
    assert!(past.usage.network_denied >= 1);
}

#[tokio::test]
async fn running_out_while_spawning_is_a_spawn_error_naming_the_limit() {
    let mut s = spec();
    s.fuel = 1_000;
    let err = host().spawn(&load(HELLO_COMPONENT), s).await.unwrap_err();
    match &err {
        Error::Spawn(f @ AgentFailure::LimitExceeded { .. }, _) => {
            assert!(f.to_string().contains("fuel = 1000"), "{f}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.category(), qi_host::ErrorCategory::Resource);
}

#[tokio::test]
async fn stack_depth_within_the_wasm_stack_passes_unbounded_fails() {
    let inside = run(STACK_OVERFLOW_COMPONENT, spec(), json!({"depth": 2_000})).await;
    assert_eq!(ok(&inside), &json!(2_000));
    let past = run(
        STACK_OVERFLOW_COMPONENT,
        spec(),
        json!({"mode": "wasm-stack"}),
    )
    .await;
    assert_eq!(limit(&past).0, LimitKind::Stack);
}

#[tokio::test]
async fn log_budget_exactly_enough_keeps_the_record_one_byte_less_drops_it() {
    let measured = run(HELLO_COMPONENT, spec(), json!(null)).await;
    ok(&measured);
    let need = measured.usage.log_bytes;
    assert!(need > 0);

    let mut s = spec();
    s.configuration_overrides
        .insert("maxLogBytes".into(), json!(need));
    let inside = run(HELLO_COMPONENT, s.clone(), json!(null)).await;
    ok(&inside);
    assert_eq!((inside.logs.len(), inside.usage.logs_dropped), (1, 0));

    s.configuration_overrides
        .insert("maxLogBytes".into(), json!(need - 1));
    let past = run(HELLO_COMPONENT, s, json!(null)).await;
    // Logging never fails the agent; the record is dropped and counted.
    ok(&past);
    assert_eq!((past.logs.len(), past.usage.logs_dropped), (0, 1));
}

#[tokio::test]
async fn network_host_names_are_resolved_when_the_agent_is_spawned() {
    let addr = crate::guests::net_server().await;
    let target = json!({"target": addr.to_string(), "http": true});
    let by_name = run(
        NET_PROBE_COMPONENT,
        crate::guests::network_spec(&[format!("localhost:{}", addr.port())]),
        target.clone(),
    )
    .await;
    assert_eq!(ok(&by_name)["connected"], true);

    let glob = run(
        NET_PROBE_COMPONENT,
        crate::guests::network_spec(&["127.0.0.*:1-65535".into()]),
        target.clone(),
    )
    .await;
    assert_eq!(ok(&glob)["connected"], true);

    let other_net = run(
        NET_PROBE_COMPONENT,
        crate::guests::network_spec(&["10.0.0.*:*".into()]),
        target,
    )
    .await;
    assert_eq!(ok(&other_net)["connected"], false);
}
