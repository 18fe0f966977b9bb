//! What a Python agent hands the host across the component boundary. componentize-py traps
//! (uncatchable in Python) on a value the canonical ABI cannot carry: a `str` holding a lone
//! surrogate, an `int` where WIT says `string`. The SDK checks every argument against the
//! binding's type hints first (`qi_agent/_wire.py`), so each such call is the interface's own
//! error, and an agent's output or error that cannot cross becomes a `failed` report.

use super::*;

/// Every bad argument is refused by the SDK with the interface's error naming the argument,
/// and the agent goes on to finish; a log record with lone surrogates is escaped, not a trap.
#[tokio::test]
async fn arguments_the_abi_cannot_carry_are_the_interfaces_own_errors() {
    let Some(report) = hostile(py_spec(), json!({"mode": "bad-args"})).await else {
        return;
    };
    let out = ok(&report);
    let expect = [
        ("context.get(int)", "ContextError", "invalid", "`id`"),
        (
            "context.get(surrogate)",
            "ContextError",
            "invalid",
            "lone surrogate",
        ),
        (
            "context.put(doc surrogate)",
            "ContextError",
            "invalid",
            "`doc`",
        ),
        (
            "context.put(version str)",
            "ContextError",
            "invalid",
            "`base_version`",
        ),
        (
            "context.put(version 2**70)",
            "ContextError",
            "invalid",
            "(u64), got 1180591620717411303424",
        ),
        (
            "context.share(agent int)",
            "ContextError",
            "invalid",
            "`agents[1]`",
        ),
        (
            "context.create(type surrogate)",
            "ContextError",
            "invalid",
            "`context_type`",
        ),
        (
            "context.pointer_patch(value surrogate)",
            "ContextError",
            "invalid",
            "`ops[0].value.value`",
        ),
        (
            "tools.call(name surrogate)",
            "ToolError",
            "invalid-input",
            "`name`",
        ),
        (
            "tools.call(input surrogate)",
            "ToolError",
            "invalid-input",
            "`input`",
        ),
        (
            "tools.call_many(nan)",
            "ToolError",
            "invalid-input",
            "serialize",
        ),
        (
            "events.publish(surrogate)",
            "EventError",
            "invalid",
            "`data`",
        ),
        (
            "events.subscribe(list of int)",
            "EventError",
            "invalid",
            "`context_ids[0]`",
        ),
        ("sync.vote(surrogate)", "SyncError", "invalid", "`choice`"),
        (
            "channels.send(body surrogate)",
            "ChannelError",
            "invalid",
            "`body`",
        ),
        (
            "llm.chat(content surrogate)",
            "LlmError",
            "invalid-request",
            "`request.messages[0].content`",
        ),
        (
            "context.history(limit 2**32)",
            "ContextError",
            "invalid",
            "from 0 to 4294967295 (u32), got 4294967296",
        ),
        (
            "context.history(limit -1)",
            "ContextError",
            "invalid",
            "(u32), got -1",
        ),
        (
            "context.rollback(version -1)",
            "ContextError",
            "invalid",
            "(u64), got -1",
        ),
        ("channels.ack(id -1)", "ChannelError", "invalid", "`id`"),
        (
            "events.unsubscribe(id -1)",
            "EventError",
            "invalid",
            "`subscription`",
        ),
        (
            "llm.chat(max_tokens 2**32)",
            "LlmError",
            "invalid-request",
            "`request.max_tokens` of llm.chat must be from 0 to 4294967295",
        ),
        (
            "llm.chat(temperature 10**400)",
            "LlmError",
            "invalid-request",
            "too large for a float",
        ),
        (
            "context.get(lying str)",
            "ContextError",
            "invalid",
            "lone surrogate",
        ),
        (
            "context.put(lying int)",
            "ContextError",
            "invalid",
            "(u64), got 1180591620717411303424",
        ),
        (
            "context.pointer_patch(case subclass)",
            "ContextError",
            "failed",
            "no context store",
        ),
    ];
    for (call, class, kind, says) in expect {
        let got = &out[call];
        assert_eq!(got["class"], class, "{call}: {got}");
        assert_eq!(got["kind"], kind, "{call}: {got}");
        let message = got["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{call}: {message}");
    }
    assert_eq!(out.as_object().unwrap().len(), expect.len(), "{out}");
    let record = report
        .logs
        .iter()
        .find(|l| l.message.starts_with("surrogate "))
        .unwrap_or_else(|| panic!("{:?}", report.logs));
    assert_eq!(record.message, "surrogate \\udc80");
    assert!(
        report.logs.iter().any(|l| l.message == "lying message"
            && l.fields
                .iter()
                .any(|(k, v)| k == "field" && v == "lying field")),
        "{:?}",
        report.logs
    );
    assert!(
        record
            .fields
            .iter()
            .any(|(k, v)| k == "field" && v == "\\udc80"),
        "{:?}",
        record.fields
    );
}

/// An output that is not valid text, or not text at all, is the agent's `failed` error naming
/// the problem; a valid output of the same agent passes.
#[tokio::test]
async fn an_output_the_abi_cannot_carry_is_a_failure() {
    let Some(report) = hostile(py_spec(), json!({"mode": "bad-output"})).await else {
        return;
    };
    let (kind, message) = agent_error(&report);
    assert_eq!(kind, "failed");
    assert!(
        message.starts_with("the task output holds a lone surrogate"),
        "{message}"
    );
    let report = hostile(
        py_spec(),
        json!({"mode": "bad-output", "via": "task-output"}),
    )
    .await
    .unwrap();
    let (kind, message) = agent_error(&report);
    assert_eq!(kind, "failed");
    assert!(
        message.contains("TaskOutput.output must be a str, got int"),
        "{message}"
    );
    let fine = hostile(py_spec(), json!({"mode": "huge", "bytes": 3}))
        .await
        .unwrap();
    assert_eq!(ok(&fine), &json!("xxx"));
}

/// An error that cannot be described as it is still reaches the report: a `__str__` that
/// raises gives the default repr, a lone surrogate is escaped, a huge message keeps its start
/// (with the type) up to a bound and says how much went; a raw WIT error passes through.
#[tokio::test]
async fn errors_that_resist_description_still_reach_the_report() {
    let Some(report) = hostile(py_spec(), json!({"mode": "bad-error", "kind": "str"})).await else {
        return;
    };
    let (kind, message) = agent_error(&report);
    assert_eq!(kind, "failed");
    assert!(message.starts_with("_Unprintable: <"), "{message}");
    assert!(message.contains("in run"), "{message}");

    let report = hostile(
        py_spec(),
        json!({"mode": "bad-error", "kind": "huge", "bytes": 1 << 20}),
    )
    .await
    .unwrap();
    let (kind, message) = agent_error(&report);
    assert_eq!(kind, "failed");
    assert!(
        message.starts_with("ValueError: \\udc80yyy"),
        "{}",
        &message[..64]
    );
    assert!(message.len() < 32 * 1024, "{} bytes", message.len());
    assert!(
        message.contains("bytes of the message left out]"),
        "{}",
        &message[..64]
    );
    assert!(message.contains("Traceback (most recent call last)"));

    // Just inside the head's bound: the whole message, no marker.
    let report = hostile(
        py_spec(),
        json!({"mode": "bad-error", "kind": "huge", "bytes": 4000}),
    )
    .await
    .unwrap();
    let (_, message) = agent_error(&report);
    assert!(message.contains(&"y".repeat(4000)), "{}", message.len());
    assert!(!message.contains("left out]"), "{message}");

    let report = hostile(py_spec(), json!({"mode": "bad-error", "kind": "raw"}))
        .await
        .unwrap();
    assert_eq!(agent_error(&report), ("invalid-input", "raw \\udc80 error"));
    let report = hostile(py_spec(), json!({"mode": "bad-error", "kind": "lying"}))
        .await
        .unwrap();
    assert_eq!(agent_error(&report), ("invalid-input", "lying error"));
}
