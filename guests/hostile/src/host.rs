//! `host.*` attacks: oversized host-call arguments, output, stdio and exit.
//!
//! Modes (extra input in braces; sizes are exact, so tests can aim one byte past a limit):
//! - `host.big-doc {bytes, op}`: creates a context, then `op` (`put`, default, or `patch`)
//!   with a JSON document of exactly `bytes` bytes.
//! - `host.call-many {count}`: one `tools.call-many` batch of `count` `clock.now` calls.
//! - `host.share-list {count, op, permissions}`: `op` (`share`, default, or `revoke`) a new
//!   context with `count` agent ids; a share grants `read` `permissions` times (default 1).
//! - `host.subscribe-list {count, types}`: subscribes to `count` context ids (all the same new
//!   context) and `types` event types (default 1).
//! - `host.big-event {bytes}`: publishes a custom event whose data is exactly `bytes` bytes.
//! - `host.big-log {bytes, fields, key_bytes, value_bytes}`: one log record with a
//!   `bytes`-byte message and `fields` fields, each key `key_bytes` long and each value
//!   `value_bytes` long (default a short key `k<i>` and the value `v`).
//! - `host.tool-input {bytes}`: calls `clock.now` with an input of exactly `bytes` bytes.
//! - `host.stdout {bytes, stream}`: writes `bytes` bytes to `stream` (`stdout`, default, or
//!   `stderr`) in 4 KiB writes.
//! - `host.exit {code}`: calls `exit(code)` instead of returning.
//! - `host.tool {tool, input}`: calls `tool` with `input` (any JSON value, sent as its text)
//!   and answers the size of the output.
//! - `host.timer-then-tool {timer_ms, tool, input}`: subscribes to a `wasi:clocks` timer due in
//!   `timer_ms` and drops it without waiting, then calls `tool` like `host.tool` (a guest
//!   trying to pass for a sleeper while it is stuck elsewhere).
//! - `host.checkpoint {bytes, point}`: a `sync.checkpoint` with a state of exactly `bytes`
//!   bytes at a point id of `point` bytes (default 1).
//! - `host.clock {count}`: reads the wall clock `count` times (for the WASI call count).
//! - `host.spin {tool}`: calls `tool` (if given) with `{}`, then computes forever without
//!   calling the host again: the call tells a test that the agent has started spinning.
//! - `host.connect-flood {count, target}`: tries `count` TCP connects to `target` (required:
//!   tests aim it at a listener that would notice a connect), answers how many were refused:
//!   each attempt is a decision the host audits.
//! - `host.budget {count}`: calls `budget.get` `count` times.
//! - `host.put-many {sizes}`: creates a context (`{}`, type `probe`), then puts a JSON document
//!   of exactly each of `sizes` bytes in turn; answers how many puts were stored.
//! - `host.publish-many {bytes, count}`: creates a context, then publishes `count` custom events
//!   whose data is exactly `bytes` bytes.
//! - `host.tools {calls}`: calls each `{tool, input}` of `calls` in turn (input sent as its
//!   JSON text); fails with the first refusal.
//! - `host.batch {count, tool, input, bytes}`: one `tools.call-many` batch of `count` calls of
//!   `tool` (default `clock.now`) with `input` (any JSON value, sent as its text), or with an
//!   input of exactly `bytes` bytes; answers each result (`ok`, or the error) in `results`.
//! - `host.get-many {count}`: creates a context, then reads it `count` times.
//! - `host.revoke-many {count}`: creates a context, then revokes one agent's (absent) share
//!   `count` times.
//! - `host.log-many {count}`: `count` log records with an empty message and no fields.
//! - `host.big-error {bytes}`: fails with `failed` and a message of exactly `bytes` bytes.
//! - `host.spoof-panic {then}`: writes a fake Rust panic message to stderr, then `then`:
//!   `trap` (reads past the end of linear memory: a trap that is not a panic) or `panic` (a
//!   real panic).
//!
//! A mode whose host call is refused fails with the host's message (`failed`); otherwise it
//! returns `{"ok": true, ...}` with what the host answered.

use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::wit::qi::agent::{context, events, log, sync, tools};
use qi_guest_sdk::{AgentError, TaskOutput};
use std::io::Write;

/// Runs attack `host.<attack>`.
pub fn run(attack: &str, input: &Value) -> Result<TaskOutput, AgentError> {
    let n = |key: &str, default: u64| input[key].as_u64().unwrap_or(default) as usize;
    let op = input["op"].as_str().unwrap_or_default();
    let answer = match attack {
        "big-doc" => big_doc(n("bytes", 0), op)?,
        "call-many" => call_many(n("count", 0))?,
        "share-list" => share_list(n("count", 0), op, n("permissions", 1))?,
        "subscribe-list" => subscribe_list(n("count", 0), n("types", 1))?,
        "big-event" => big_event(n("bytes", 0))?,
        "big-log" => big_log(
            n("bytes", 0),
            n("fields", 0),
            input["key_bytes"].as_u64().map(|b| b as usize),
            n("value_bytes", 1),
        ),
        "tool-input" => tool_input(n("bytes", 0))?,
        "stdout" => stdout(n("bytes", 0), input["stream"].as_str() == Some("stderr")),
        "exit" => std::process::exit(input["code"].as_i64().unwrap_or(0) as i32),
        "clock" => clock(n("count", 0)),
        "connect-flood" => {
            let target = input["target"].as_str().ok_or_else(|| {
                AgentError::InvalidInput("`host.connect-flood` needs a `target`".into())
            })?;
            connect_flood(n("count", 0), target)
        }
        "spin" => {
            if let Some(name) = input["tool"].as_str() {
                tool(name, &json!({}))?;
            }
            spin()
        }
        "budget" => budget(n("count", 0)),
        "tools" => {
            let calls = input["calls"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            for c in calls {
                tool(c["tool"].as_str().unwrap_or_default(), &c["input"])?;
            }
            json!({"ok": true, "calls": calls.len()})
        }
        "batch" => batch(
            n("count", 0),
            input["tool"].as_str().unwrap_or("clock.now"),
            match input["bytes"].as_u64() {
                Some(b) => json_object(b as usize),
                None => input["input"].to_string(),
            },
        ),
        "get-many" => {
            let id = new_context()?;
            for _ in 0..n("count", 0) {
                context::get(&id).map_err(|e| failed("context.get", e))?;
            }
            json!({"ok": true})
        }
        "revoke-many" => {
            let id = new_context()?;
            for _ in 0..n("count", 0) {
                context::revoke(&id, &["agent-x".to_string()])
                    .map_err(|e| failed("context.revoke", e))?;
            }
            json!({"ok": true})
        }
        "log-many" => {
            (0..n("count", 0)).for_each(|_| log::log(log::Level::Info, "", &[]));
            json!({"ok": true})
        }
        "put-many" => put_many(
            input["sizes"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )?,
        "publish-many" => publish_many(n("bytes", 2), n("count", 0))?,
        "big-error" => return Err(AgentError::Failed("e".repeat(n("bytes", 0)))),
        "spoof-panic" => spoof_panic(input["then"].as_str().unwrap_or_default()),
        "checkpoint" => checkpoint(n("bytes", 2), n("point", 1))?,
        "tool" => tool(input["tool"].as_str().unwrap_or_default(), &input["input"])?,
        "timer-then-tool" => {
            let timer = wasip2::clocks::monotonic_clock::subscribe_duration(
                n("timer_ms", 0) as u64 * 1_000_000,
            );
            drop(timer);
            tool(input["tool"].as_str().unwrap_or_default(), &input["input"])?
        }
        _ => return Err(crate::unknown(&format!("host.{attack}"))),
    };
    Ok(TaskOutput {
        output: answer.to_string(),
    })
}

/// A JSON string value of exactly `bytes` bytes of JSON text (at least 2: the quotes).
fn json_text(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes.max(2));
    s.push('"');
    s.extend(std::iter::repeat_n('x', bytes.saturating_sub(2)));
    s.push('"');
    s
}

/// A JSON object `{"p":"xx…"}` of exactly `bytes` bytes (at least 8).
fn json_object(bytes: usize) -> String {
    format!("{{\"p\":{}}}", json_text(bytes.saturating_sub(6)))
}

fn failed(call: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Failed(format!("{call} refused: {e}"))
}

fn new_context() -> Result<String, AgentError> {
    context::create(None, "probe", "{}", context::SyncStrategy::Eventual)
        .map(|w| w.id)
        .map_err(|e| failed("context.create", e))
}

fn big_doc(bytes: usize, op: &str) -> Result<Value, AgentError> {
    let id = new_context()?;
    let doc = json_object(bytes);
    let w = if op == "patch" {
        // A new context is at version 1: the base of the write.
        context::patch(&id, &doc, Some(1)).map_err(|e| failed("context.patch", e))?
    } else {
        context::put(&id, &doc, Some(1)).map_err(|e| failed("context.put", e))?
    };
    Ok(json!({"ok": true, "version": w.version}))
}

fn call_many(count: usize) -> Result<Value, AgentError> {
    let requests: Vec<tools::ToolRequest> = (0..count)
        .map(|_| tools::ToolRequest {
            name: "clock.now".into(),
            input: "{}".into(),
        })
        .collect();
    let results = tools::call_many(&requests);
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return Err(failed("tools.call-many", e));
    }
    Ok(json!({"ok": true, "results": results.len()}))
}

fn share_list(count: usize, op: &str, permissions: usize) -> Result<Value, AgentError> {
    let id = new_context()?;
    let agents: Vec<String> = (0..count).map(|i| format!("agent-probe-{i}")).collect();
    if op == "revoke" {
        context::revoke(&id, &agents).map_err(|e| failed("context.revoke", e))?;
    } else {
        context::share(
            &id,
            &agents,
            &vec![context::Permission::Read; permissions],
            None,
        )
        .map_err(|e| failed("context.share", e))?;
    }
    Ok(json!({"ok": true}))
}

fn subscribe_list(count: usize, types: usize) -> Result<Value, AgentError> {
    let id = new_context()?;
    let ids = vec![id; count];
    let types = vec!["updated".to_string(); types];
    let handle =
        events::subscribe(&ids, &types, None).map_err(|e| failed("events.subscribe", e))?;
    events::unsubscribe(handle.handle);
    Ok(json!({"ok": true}))
}

fn big_event(bytes: usize) -> Result<Value, AgentError> {
    let id = new_context()?;
    let seq =
        events::publish(&id, 0, &json_text(bytes)).map_err(|e| failed("events.publish", e))?;
    Ok(json!({"ok": true, "seq": seq}))
}

fn big_log(bytes: usize, fields: usize, key_bytes: Option<usize>, value_bytes: usize) -> Value {
    let fields: Vec<log::Field> = (0..fields)
        .map(|i| log::Field {
            key: key_bytes.map_or_else(|| format!("k{i}"), |b| "k".repeat(b)),
            value: "v".repeat(value_bytes),
        })
        .collect();
    log::log(log::Level::Info, &"m".repeat(bytes), &fields);
    json!({"ok": true})
}

fn tool_input(bytes: usize) -> Result<Value, AgentError> {
    let out = tools::call("clock.now", &json_object(bytes)).map_err(|e| failed("tools.call", e))?;
    Ok(json!({"ok": true, "output": out}))
}

fn stdout(bytes: usize, stderr: bool) -> Value {
    let chunk = [b'o'; 4096];
    let mut left = bytes;
    let mut out: Box<dyn Write> = if stderr {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let mut errors = 0;
    while left > 0 {
        let n = left.min(chunk.len());
        if out.write_all(&chunk[..n]).is_err() {
            errors += 1;
        }
        left -= n;
    }
    let _ = out.flush();
    json!({"ok": true, "errors": errors})
}

fn clock(count: usize) -> Value {
    let latest = (0..count).map(|_| std::time::SystemTime::now()).max();
    json!({"ok": true, "read": latest.is_some()})
}

fn tool(name: &str, input: &Value) -> Result<Value, AgentError> {
    let out = tools::call(name, &input.to_string()).map_err(|e| failed("tools.call", e))?;
    Ok(json!({"ok": true, "bytes": out.len()}))
}

fn checkpoint(bytes: usize, point: usize) -> Result<Value, AgentError> {
    let outcome = sync::checkpoint(&"p".repeat(point), &json_text(bytes));
    match outcome {
        Err(qi_guest_sdk::SyncError::NotCoordinated) => {
            Ok(json!({"ok": true, "coordinated": false}))
        }
        Err(e) => Err(failed("sync.checkpoint", e)),
        Ok(_) => Ok(json!({"ok": true, "coordinated": true})),
    }
}

/// Computes forever; `black_box` on every step keeps the optimizer from removing the loop.
fn spin() -> ! {
    let mut state = std::hint::black_box(1u64);
    loop {
        state = std::hint::black_box(
            state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
}

fn connect_flood(count: usize, target: &str) -> Value {
    let refused = (0..count)
        .filter(|_| std::net::TcpStream::connect(target).is_err())
        .count();
    json!({"ok": true, "refused": refused})
}

fn budget(count: usize) -> Value {
    let fuel = (0..count)
        .map(|_| qi_guest_sdk::wit::qi::agent::budget::get().fuel)
        .min();
    json!({"ok": true, "fuel": fuel})
}

fn spoof_panic(then: &str) -> Value {
    eprintln!("thread '<unnamed>' panicked at src/spoofed.rs:1:1:\nspoofed message");
    if then == "panic" {
        panic!("the real panic");
    }
    // A trap that is not a panic: a load past the end of linear memory (far below 4 GiB).
    let address = std::hint::black_box(0xffff_fff0_usize) as *const u64;
    // SAFETY: none; the point is the trap. The address is outside linear memory, so the load
    // traps before anything is read.
    #[allow(unsafe_code)]
    let value = unsafe { std::ptr::read_volatile(address) };
    json!({"ok": true, "value": value})
}

fn put_many(sizes: &[Value]) -> Result<Value, AgentError> {
    let id = new_context()?;
    let mut base = 1;
    for size in sizes {
        let doc = json_object(size.as_u64().unwrap_or(8) as usize);
        base = context::put(&id, &doc, Some(base))
            .map_err(|e| failed("context.put", e))?
            .version;
    }
    Ok(json!({"ok": true, "puts": sizes.len()}))
}

fn publish_many(bytes: usize, count: usize) -> Result<Value, AgentError> {
    let id = new_context()?;
    let data = json_text(bytes);
    for _ in 0..count {
        events::publish(&id, 0, &data).map_err(|e| failed("events.publish", e))?;
    }
    Ok(json!({"ok": true, "published": count}))
}

fn batch(count: usize, tool: &str, input: String) -> Value {
    let requests: Vec<tools::ToolRequest> = (0..count)
        .map(|_| tools::ToolRequest {
            name: tool.into(),
            input: input.clone(),
        })
        .collect();
    let results: Vec<String> = tools::call_many(&requests)
        .into_iter()
        .map(|r| match r {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{e:?}"),
        })
        .collect();
    json!({"ok": true, "results": results})
}
