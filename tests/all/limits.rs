//! Every limit in pairs: just inside passes, just past fails with the right error.

use crate::common::*;
use qi_guest_artifacts::*;
use qi_host::{AgentFailure, Error, LimitKind, TaskRequest};
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

/// On paused tokio time the deadline timer and a guest's WASI sleep share one clock that moves
/// only when everything waits, so the pair is exact: a sleep 1 ms short of the limit completes,
/// one 1 ms past it is stopped by the deadline.
#[tokio::test(start_paused = true)]
async fn wall_clock_a_sleep_one_ms_inside_passes_one_ms_past_is_stopped() {
    let host = new_host(4);
    let sleeper = host.load(SLEEPER_COMPONENT).expect("sleeper loads");
    let mut s = spec();
    s.resource_limits.max_execution_time_ms = 1_000;
    let sleep = |ms: u64| {
        host.run(
            &sleeper,
            s.clone(),
            TaskRequest::new("sleep", json!({ "ms": ms })),
        )
    };
    let inside = sleep(999).await.expect("spawns");
    assert_eq!(ok(&inside)["slept_ms"], 999);

    let past = sleep(1_001).await.expect("spawns");
    let (kind, message) = limit(&past);
    assert_eq!(kind, LimitKind::ExecutionTime);
    assert!(message.contains("maxExecutionTimeMs = 1000"), "{message}");
}

#[tokio::test]
async fn wall_clock_stops_an_agent_in_the_middle_of_an_hour_long_wasi_sleep() {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["test.signal".into()];
    // An hour-long sleep under a 1 s deadline: only a deadline that interrupts the WASI wait
    // ends the run before the hang guard does. The signal proves the agent reached the sleep.
    s.resource_limits.max_execution_time_ms = 1_000;
    let key = unique_key("wall-clock-wasi");
    let past = tokio::spawn(run(
        SLEEPER_COMPONENT,
        s,
        json!({"ms": 3_600_000, "signal": key}),
    ));
    next_signal(&key).await;
    let past = hang_guard("the deadline during a WASI sleep", past)
        .await
        .unwrap();
    let (kind, message) = limit(&past);
    assert_eq!(kind, LimitKind::ExecutionTime);
    assert!(message.contains("maxExecutionTimeMs = 1000"), "{message}");
}

#[tokio::test]
async fn wall_clock_stops_an_agent_that_is_still_inside_a_host_call() {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["test.signal".into(), "test.block".into()];
    s.resource_limits.max_execution_time_ms = 20_000;
    let key = unique_key("wall-clock-call");
    let inside = run(
        TOOL_USER_COMPONENT,
        s.clone(),
        json!({"calls": [call("test.signal", json!({"key": key}))]}),
    )
    .await;
    assert_eq!(ok(&inside)["results"][0]["ok"], json!({}));
    next_signal(&key).await;

    // `test.block` never returns: a deadline checked only when the call comes back would never
    // fire, and the hang guard would fail the test.
    s.resource_limits.max_execution_time_ms = 1_000;
    let past = tokio::spawn(run(
        TOOL_USER_COMPONENT,
        s,
        json!({"calls": [call("test.block", json!({"key": key}))]}),
    ));
    let entered = next_signal(&key).await;
    assert_eq!(
        entered["key"],
        key.as_str(),
        "the agent is inside test.block"
    );
    let past = hang_guard("the deadline inside a host call", past)
        .await
        .unwrap();
    let (kind, message) = limit(&past);
    assert_eq!(kind, LimitKind::ExecutionTime);
    assert!(message.contains("maxExecutionTimeMs = 1000"), "{message}");
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
        restricted_spec(dir.path()),
        json!(null),
    )
    .await;
    ok(&measured);
    let need = measured.usage.file_operations as u32;
    assert!(need > 0);

    let mut s = restricted_spec(dir.path());
    s.resource_limits.max_file_operations = need;
    let inside = run(FILE_STATS_COMPONENT, s.clone(), json!(null)).await;
    ok(&inside);
    assert_eq!(inside.usage.file_operations as u32, need);

    s.resource_limits.max_file_operations = need - 1;
    let past = run(FILE_STATS_COMPONENT, s, json!(null)).await;
    assert_eq!(limit(&past).0, LimitKind::FileOperations);
}

#[tokio::test]
async fn concurrent_operations_up_to_the_limit_overlap_one_more_is_refused() {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["test.rendezvous".into()];
    s.resource_limits.max_concurrent_operations = 3;
    // Every call waits at one barrier of `n` places: the batch completes only if all `n` calls
    // are in flight at once.
    let batch = |n: usize, key: &str| {
        let calls: Vec<_> = (0..n)
            .map(|_| call("test.rendezvous", json!({"key": key, "n": n})))
            .collect();
        json!({"calls": calls, "batch": true})
    };
    let inside = hang_guard(
        "three overlapping calls of one call-many batch",
        run(
            TOOL_USER_COMPONENT,
            s.clone(),
            batch(3, &unique_key("concurrent-3")),
        ),
    )
    .await;
    let out = ok(&inside);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{out}");
    for r in results {
        assert_eq!(r["ok"]["agent"], inside.agent_id.as_str(), "{out}");
    }
    assert_eq!(inside.usage.tool_calls, 3);

    let past = run(
        TOOL_USER_COMPONENT,
        s,
        batch(4, &unique_key("concurrent-4")),
    )
    .await;
    let out = ok(&past);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{out}");
    for r in results {
        assert_eq!(r["error"]["kind"], "limit-exceeded", "{out}");
        assert_eq!(
            r["error"]["message"], "4 operations at once refused: the agent may run 3 at once",
            "{out}"
        );
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
    let server = TestServer::start().await;
    let port = server.addr.port();
    let target = json!({"target": server.addr.to_string(), "http": true});
    let inside = run(
        NET_PROBE_COMPONENT,
        network_spec(&[format!("127.0.0.1:{port}")]),
        target.clone(),
    )
    .await;
    let out = ok(&inside);
    assert_eq!(out["connected"], true, "{out}");
    assert!(
        out["response"]
            .as_str()
            .unwrap()
            .contains("hello from host"),
        "{out}"
    );
    assert!(inside.usage.network_allowed >= 1);
    assert_eq!(
        server.connections_so_far().await,
        1,
        "the agent's connection"
    );

    // The pattern one port off: the listener is accepting, and must see nothing.
    let past = run(
        NET_PROBE_COMPONENT,
        network_spec(&[format!("127.0.0.1:{}", port - 1)]),
        target,
    )
    .await;
    assert_eq!(ok(&past)["connected"], false);
    assert!(past.usage.network_denied >= 1);
    assert_eq!(
        server.connections_so_far().await,
        0,
        "the listener was reached"
    );
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
    let server = TestServer::start().await;
    let target = json!({"target": server.addr.to_string(), "http": true});
    let by_name = run(
        NET_PROBE_COMPONENT,
        network_spec(&[format!("localhost:{}", server.addr.port())]),
        target.clone(),
    )
    .await;
    assert_eq!(ok(&by_name)["connected"], true);
    assert_eq!(server.connections_so_far().await, 1);

    let glob = run(
        NET_PROBE_COMPONENT,
        network_spec(&["127.0.0.*:1-65535".into()]),
        target.clone(),
    )
    .await;
    assert_eq!(ok(&glob)["connected"], true);
    assert_eq!(server.connections_so_far().await, 1);

    let other_net = run(
        NET_PROBE_COMPONENT,
        network_spec(&["10.0.0.*:*".into()]),
        target,
    )
    .await;
    assert_eq!(ok(&other_net)["connected"], false);
    assert_eq!(
        server.connections_so_far().await,
        0,
        "the listener was reached"
    );
}
