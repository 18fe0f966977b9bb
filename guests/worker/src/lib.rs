//! `worker`: a scriptable subtask agent for the coordination tests. Its input says, step by
//! step, what to do: compute, sleep, hang, spin, fail in several ways, panic, or take part in
//! synchronization points, so a manifest can stage any behavior of a participant.
//!
//! Input: the subtask input of a coordinated run ([`SubtaskInput`]). `inputs.steps` is an
//! optional list of steps run in order; each is an object with one of the keys below, plus
//! optionally `"tolerate": true`, which records a sync error in the output instead of failing:
//!
//! - `{"work": N}`: N rounds of xorshift64 folded into FNV-1a (as `compute` kind `cpu`); the
//!   checksum (decimal string) becomes the output's `work`;
//! - `{"sleep_ms": N}`: sleeps N ms; `{"hang": true}`: sleeps an hour; `{"spin": true}`: burns
//!   CPU forever;
//! - `{"fail": "msg"}`: `failed: msg`; `{"invalid": "msg"}`: `invalid-input: msg`;
//!   `{"fail_before_attempt": k}`: fails while the attempt is below k;
//!   `{"fail_if_config": "key"}`: fails when `config[key]` is `true`; `{"panic": "msg"}`;
//!   `{"hang_before_attempt": k}`: hangs while the attempt is below k (a time limit ends it);
//! - `{"call": {"name": "tool", "input": any}}`: calls a host tool and fails with
//!   `failed: tool <name>: <error>` when it fails; tests use it to make a step wait for
//!   something observable (an event of the run, a gate the test opens) instead of sleeping;
//! - `{"barrier": "p"}`, `{"checkpoint": {"point": "p", "state": any}}`, `{"restore": "p"}`,
//!   `{"vote": {"point": "p", "choice": "c"}}`, `{"contribute": {"point": "p", "value": any}}`,
//!   `{"outcome": "p"}` (the full outcome of a resolved point): the sync call; its outcome (for `restore`: `{"restored": state | null}`) is appended to the
//!   output's `sync`. A sync error fails the agent with `failed: sync <point>: <error>`, or with
//!   `tolerate` appends `{"point": p, "error": "<error>"}`;
//! - `{"log": "msg"}`: logs `msg` at info.
//!
//! Every step is checked before the first one runs; a malformed or unknown step is
//! `invalid-input` naming it.
//!
//! Output: `inputs.emit` (an object, default `{}`) with these keys set on top: `subtask`,
//! `attempt`, `sync` (list), `received` (every input except `steps` and `emit`), `config`, and
//! `instance_runs` (how many times `run` was called in this instance: 1 when every attempt gets
//! a fresh instance), `work` when a work step ran, and `probes` when probe steps ran. A manifest's expected outputs
//! can thus come from `emit`.
//!
//! Probe steps call one host interface each and record the outcome in `probes` (`{"probe",
//! "ok", "value" | "error"}`) instead of failing, for access-control tests and benchmarks:
//! `{"context_get": {"id", "times"}}`, `{"context_put": {"id", "doc"}}`, `{"tool": {"name",
//! "input"}}`, `{"read_file": path}`, `{"write_file": {"path", "text"}}`, `{"connect":
//! "host:port"}`, `{"publish": context}`, `{"subscribe": context}`, `{"share": {"id",
//! "agents": [ids], "permissions": ["read" | "write" | "share" | "delete"], "expires_in_ms":
//! optional}}`, `{"revoke": {"id", "agents": [ids]}}`, `{"context_create": {"id", "doc"}}`
//! (type `notes`), `{"context_patch": {"id", "doc"}}`, `{"context_delete": id}`,
//! `{"context_share": {"id", "agent"}}` (read), `{"context_revoke": {"id", "agent"}}`,
//! `{"context_ids": null}` (value: the ids listed) and `{"wait_for": "host:port"}` (connects and
//! reads until the peer closes: a step a test releases by closing the connection; value: the
//! bytes read). Context calls beyond these, each with an optional `base` version where it
//! writes: `{"context_patch_at": {"id", "doc", "base"}}`, `{"context_pointer_patch": {"id",
//! "ops": [{"op": "set" | "remove", "path", "value"}], "base"}}` (value of a write: `{"version",
//! "new_version", "conflicts"}`), `{"context_history": {"id", "limit"}}` (value: `[{"version",
//! "agent", "op", "doc"}]`), `{"context_rollback": {"id", "version"}}`, `{"context_resolve":
//! {"id", "agent" | "fields" | "document"}}`, `{"context_pending": id}` (value: the pending
//! conflict or null);
//! `{"context_prefetch": [ids]}` (value: per id `{"ok", "version" | "error"}`)
//! and `{"context_sync_all": null}` (value: `{"total", "synced", "conflicts", "contexts":
//! [{"id", "owner", "version", "status", "conflicts", "error"}]}`).

mod context_more;

use context_more::context_more;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use qi_guest_sdk::serde_json::{Map, Value, json};
use qi_guest_sdk::sync::{self, SyncError};
use qi_guest_sdk::{
    Agent, AgentError, AgentInfo, AgentType, SubtaskInput, Task, TaskOutput, context, events, log,
    tools,
};

/// How many times `run` was called in this instance: 1 whenever the host gives every attempt
/// a fresh instance (reported as the output's `instance_runs`).
static RUNS_IN_THIS_INSTANCE: AtomicU32 = AtomicU32::new(0);

/// The `worker` agent.
pub struct Worker;

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Seed of the xorshift64 generator (the same as `compute`, so checksums agree).
const XORSHIFT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// How long a `hang` step sleeps.
const HANG: Duration = Duration::from_secs(60 * 60);

/// What one step does.
enum Action {
    Work(u64),
    SleepMs(u64),
    Hang,
    Spin,
    Fail(String),
    Invalid(String),
    FailBeforeAttempt(u64),
    FailIfConfig(String),
    HangBeforeAttempt(u64),
    Call {
        name: String,
        input: Value,
    },
    Panic(String),
    Barrier(String),
    /// `sync::outcome`: the full outcome of a resolved point.
    Outcome(String),
    Checkpoint {
        point: String,
        state: Value,
    },
    Restore(String),
    Vote {
        point: String,
        choice: String,
    },
    Contribute {
        point: String,
        value: Value,
    },
    Log(String),
    /// A host interface probe: the result (or error) goes into `probes`, never a failure.
    Probe(Probe),
}

/// One host call whose outcome is recorded (for access-control tests and benchmarks).
enum Probe {
    ContextGet {
        id: String,
        times: u64,
    },
    ContextPut {
        id: String,
        doc: Value,
    },
    Tool {
        name: String,
        input: Value,
    },
    ReadFile(String),
    WriteFile {
        path: String,
        text: String,
    },
    Connect(String),
    Publish(String),
    Subscribe(String),
    Share {
        id: String,
        agents: Vec<String>,
        permissions: Vec<context::Permission>,
        expires_in_ms: Option<u64>,
    },
    Revoke {
        id: String,
        agents: Vec<String>,
    },
    ContextCreate {
        id: String,
        doc: Value,
    },
    ContextPatch {
        id: String,
        doc: Value,
    },
    ContextDelete(String),
    ContextShare {
        id: String,
        agent: String,
    },
    ContextRevoke {
        id: String,
        agent: String,
    },
    ContextIds,
    WaitFor(String),
    /// `context_pointer_patch`, `context_history`, `context_rollback`, `context_resolve`,
    /// `context_pending`, `context_patch_at`: the call's name and its argument.
    ContextMore(String, Value),
    ContextPrefetch(Vec<String>),
    ContextSyncAll,
}

/// One step of the script.
struct Step {
    action: Action,
    tolerate: bool,
}

impl Agent for Worker {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "worker".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::DecisionCapable,
            capabilities: vec!["work".into(), "vote".into(), "aggregate".into()],
            description: "Runs a script of steps (work, sleep, fail, panic, barrier, checkpoint, \
                          vote, contribute, ...) for coordination tests."
                .into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let instance_runs = RUNS_IN_THIS_INSTANCE.fetch_add(1, Ordering::Relaxed) + 1;
        let input = SubtaskInput::from_task(&task)?;
        let steps = parse_steps(input.input("steps"))?;
        let mut output = match input.input("emit") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(emit)) => emit.clone(),
            Some(other) => {
                return Err(AgentError::InvalidInput(format!(
                    "`emit` must be an object, got {other}"
                )));
            }
        };

        let mut synced = Vec::new();
        let mut probes = Vec::new();
        let mut work = None;
        for step in steps {
            match step.action {
                Action::Work(rounds) => work = Some(cpu(rounds).to_string()),
                Action::SleepMs(ms) => std::thread::sleep(Duration::from_millis(ms)),
                Action::Hang => std::thread::sleep(HANG),
                Action::Spin => spin(),
                Action::Fail(message) => return Err(AgentError::Failed(message)),
                Action::Invalid(message) => return Err(AgentError::InvalidInput(message)),
                Action::FailBeforeAttempt(k) => {
                    if u64::from(input.attempt) < k {
                        return Err(AgentError::Failed(format!(
                            "attempt {} of {} fails on purpose",
                            input.attempt, input.subtask
                        )));
                    }
                }
                Action::FailIfConfig(key) => {
                    if input.config.get(&key) == Some(&Value::Bool(true)) {
                        return Err(AgentError::Failed(format!(
                            "config `{key}` is true: {} fails on purpose",
                            input.subtask
                        )));
                    }
                }
                Action::HangBeforeAttempt(k) => {
                    if u64::from(input.attempt) < k {
                        std::thread::sleep(HANG);
                    }
                }
                Action::Call {
                    name,
                    input: tool_input,
                } => {
                    tools::call::<Value, Value>(&name, &tool_input)
                        .map_err(|e| AgentError::Failed(format!("tool {name}: {e}")))?;
                }
                Action::Panic(message) => panic!("{message}"),
                Action::Barrier(point) => {
                    let result = sync::barrier(&point).map(outcome_value);
                    record(&mut synced, &point, step.tolerate, result)?;
                }
                Action::Checkpoint { point, state } => {
                    let result = sync::checkpoint(&point, &state).map(outcome_value);
                    record(&mut synced, &point, step.tolerate, result)?;
                }
                Action::Outcome(point) => {
                    let result = sync::outcome(&point).map(outcome_value);
                    record(&mut synced, &point, step.tolerate, result)?;
                }
                Action::Restore(point) => {
                    let result = sync::restore(&point).map(|state| json!({ "restored": state }));
                    record(&mut synced, &point, step.tolerate, result)?;
                }
                Action::Vote { point, choice } => {
                    let result = sync::vote(&point, &choice).map(outcome_value);
                    record(&mut synced, &point, step.tolerate, result)?;
                }
                Action::Contribute { point, value } => {
                    let result = sync::contribute(&point, &value).map(outcome_value);
                    record(&mut synced, &point, step.tolerate, result)?;
                }
                Action::Log(message) => {
                    log::info!(subtask = input.subtask, attempt = input.attempt; "{message}");
                }
                Action::Probe(probe) => probes.push(run_probe(probe)),
            }
        }

        let received: Map<String, Value> = input
            .inputs
            .iter()
            .filter(|(name, _)| *name != "steps" && *name != "emit")
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        output.insert("subtask".into(), Value::String(input.subtask));
        output.insert("attempt".into(), json!(input.attempt));
        output.insert("instance_runs".into(), json!(instance_runs));
        output.insert("sync".into(), Value::Array(synced));
        if !probes.is_empty() {
            output.insert("probes".into(), Value::Array(probes));
        }
        output.insert("received".into(), Value::Object(received));
        output.insert("config".into(), input.config);
        if let Some(work) = work {
            output.insert("work".into(), Value::String(work));
        }
        TaskOutput::json(&output)
    }
}

/// Runs a probe: `{"probe": name, "ok": true, "value": ...}` or `{"probe", "ok": false,
/// "error": "<kind: message>"}`.
fn run_probe(probe: Probe) -> Value {
    fn done<T: std::fmt::Display>(name: &str, r: Result<Value, T>) -> Value {
        match r {
            Ok(value) => json!({"probe": name, "ok": true, "value": value}),
            Err(e) => json!({"probe": name, "ok": false, "error": e.to_string()}),
        }
    }
    match probe {
        Probe::ContextGet { id, times } => {
            let mut last = Err(qi_guest_sdk::ContextError::NotFound(id.clone()));
            for _ in 0..times.max(1) {
                last = context::get_raw(&id);
            }
            done("context_get", last.map(|d| json!(d.version)))
        }
        Probe::ContextPut { id, doc } => done(
            "context_put",
            context::put(&id, &doc, None).map(|w| json!(w.version)),
        ),
        Probe::Tool { name, input } => done("tool", tools::call::<Value, Value>(&name, &input)),
        Probe::ReadFile(path) => done(
            "read_file",
            std::fs::read_to_string(&path).map(Value::String),
        ),
        Probe::WriteFile { path, text } => done(
            "write_file",
            std::fs::write(&path, text).map(|()| Value::Null),
        ),
        Probe::Connect(addr) => done(
            "connect",
            std::net::TcpStream::connect(addr.as_str()).map(|_| Value::Null),
        ),
        Probe::Publish(id) => done(
            "publish",
            events::publish(&id, 0, &json!({"probe": true})).map(|seq| json!(seq)),
        ),
        Probe::Subscribe(id) => done(
            "subscribe",
            events::subscribe(&[id.as_str()], &[], None).map(|_| Value::Null),
        ),
        Probe::Share {
            id,
            agents,
            permissions,
            expires_in_ms,
        } => {
            let agents: Vec<&str> = agents.iter().map(String::as_str).collect();
            done(
                "share",
                context::share(&id, &agents, &permissions, expires_in_ms).map(|()| Value::Null),
            )
        }
        Probe::Revoke { id, agents } => {
            let agents: Vec<&str> = agents.iter().map(String::as_str).collect();
            done(
                "revoke",
                context::revoke(&id, &agents).map(|()| Value::Null),
            )
        }
        Probe::ContextCreate { id, doc } => done(
            "context_create",
            context::create(Some(&id), "notes", &doc, context::SyncStrategy::Eventual)
                .map(|w| json!(w.version)),
        ),
        Probe::ContextPatch { id, doc } => done(
            "context_patch",
            context::patch(&id, &doc, None).map(|w| json!(w.version)),
        ),
        Probe::ContextDelete(id) => {
            done("context_delete", context::delete(&id).map(|()| Value::Null))
        }
        Probe::ContextShare { id, agent } => done(
            "context_share",
            context::share(&id, &[agent.as_str()], &[context::Permission::Read], None)
                .map(|()| Value::Null),
        ),
        Probe::ContextRevoke { id, agent } => done(
            "context_revoke",
            context::revoke(&id, &[agent.as_str()]).map(|()| Value::Null),
        ),
        Probe::ContextIds => done::<String>("context_ids", Ok(json!(context::ids(None)))),
        Probe::ContextMore(call, arg) => context_more(&call, &arg),
        Probe::WaitFor(addr) => done(
            "wait_for",
            std::net::TcpStream::connect(addr.as_str()).and_then(|mut s| {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut s, &mut bytes).map(|n| json!(n))
            }),
        ),
        Probe::ContextPrefetch(ids) => {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let results: Vec<Value> = context::prefetch(&ids)
                .into_iter()
                .map(|r| match r {
                    Ok(version) => json!({"ok": true, "version": version}),
                    Err(e) => json!({"ok": false, "error": e.to_string()}),
                })
                .collect();
            done::<String>("context_prefetch", Ok(json!(results)))
        }
        Probe::ContextSyncAll => done(
            "context_sync_all",
            context::sync_all_shared().map(|s| {
                let contexts: Vec<Value> = s
                    .contexts
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "owner": c.owner, "version": c.version,
                               "status": c.status, "conflicts": c.conflicts, "error": c.error})
                    })
                    .collect();
                json!({"total": s.total, "synced": s.synced, "conflicts": s.conflicts,
                       "contexts": contexts})
            }),
        ),
    }
}

/// A sync outcome as JSON.
fn outcome_value(outcome: sync::SyncOutcome) -> Value {
    json!(outcome)
}

/// Appends a sync step's result, or its error when tolerated; an untolerated error fails.
fn record(
    synced: &mut Vec<Value>,
    point: &str,
    tolerate: bool,
    result: Result<Value, SyncError>,
) -> Result<(), AgentError> {
    match result {
        Ok(value) => synced.push(value),
        Err(error) if tolerate => {
            synced.push(json!({ "point": point, "error": error.to_string() }));
        }
        Err(error) => return Err(AgentError::Failed(format!("sync {point}: {error}"))),
    }
    Ok(())
}

/// Parses the whole script up front, so a bad step fails before any step has run.
fn parse_steps(steps: Option<&Value>) -> Result<Vec<Step>, AgentError> {
    let steps = match steps {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(steps)) => steps,
        Some(other) => {
            return Err(AgentError::InvalidInput(format!(
                "`steps` must be a list of steps, got {other}"
            )));
        }
    };
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            parse_step(step).map_err(|why| {
                AgentError::InvalidInput(format!("step {i} ({step}) is invalid: {why}"))
            })
        })
        .collect()
}

fn parse_step(step: &Value) -> Result<Step, String> {
    let fields = step
        .as_object()
        .ok_or("a step must be an object with one key")?;
    let tolerate = match fields.get("tolerate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(tolerate)) => *tolerate,
        Some(_) => return Err("`tolerate` must be a boolean".into()),
    };
    let mut actions = fields.iter().filter(|(key, _)| *key != "tolerate");
    let (Some((key, arg)), None) = (actions.next(), actions.next()) else {
        return Err("a step must have exactly one key besides `tolerate`".into());
    };
    let action = match key.as_str() {
        "work" => Action::Work(number(arg)?),
        "sleep_ms" => Action::SleepMs(number(arg)?),
        "hang" => {
            flag(arg)?;
            Action::Hang
        }
        "spin" => {
            flag(arg)?;
            Action::Spin
        }
        "fail" => Action::Fail(text(arg)?),
        "invalid" => Action::Invalid(text(arg)?),
        "fail_before_attempt" => Action::FailBeforeAttempt(number(arg)?),
        "fail_if_config" => Action::FailIfConfig(text(arg)?),
        "hang_before_attempt" => Action::HangBeforeAttempt(number(arg)?),
        "call" => Action::Call {
            name: field_text(arg, "name")?,
            input: field_value(arg, "input").unwrap_or(Value::Null),
        },
        "panic" => Action::Panic(text(arg)?),
        "barrier" => Action::Barrier(text(arg)?),
        "restore" => Action::Restore(text(arg)?),
        "outcome" => Action::Outcome(text(arg)?),
        "checkpoint" => Action::Checkpoint {
            point: field_text(arg, "point")?,
            state: field_value(arg, "state")?,
        },
        "vote" => Action::Vote {
            point: field_text(arg, "point")?,
            choice: field_text(arg, "choice")?,
        },
        "contribute" => Action::Contribute {
            point: field_text(arg, "point")?,
            value: field_value(arg, "value")?,
        },
        "log" => Action::Log(text(arg)?),
        "context_get" => Action::Probe(Probe::ContextGet {
            id: field_text(arg, "id")?,
            times: field_value(arg, "times")
                .ok()
                .map(|t| number(&t))
                .transpose()?
                .unwrap_or(1),
        }),
        "context_put" => Action::Probe(Probe::ContextPut {
            id: field_text(arg, "id")?,
            doc: field_value(arg, "doc")?,
        }),
        "tool" => Action::Probe(Probe::Tool {
            name: field_text(arg, "name")?,
            input: field_value(arg, "input").unwrap_or(Value::Null),
        }),
        "read_file" => Action::Probe(Probe::ReadFile(text(arg)?)),
        "write_file" => Action::Probe(Probe::WriteFile {
            path: field_text(arg, "path")?,
            text: field_text(arg, "text")?,
        }),
        "connect" => Action::Probe(Probe::Connect(text(arg)?)),
        "publish" => Action::Probe(Probe::Publish(text(arg)?)),
        "subscribe" => Action::Probe(Probe::Subscribe(text(arg)?)),
        "share" => Action::Probe(Probe::Share {
            id: field_text(arg, "id")?,
            agents: texts(&field_value(arg, "agents")?)?,
            permissions: texts(&field_value(arg, "permissions")?)?
                .iter()
                .map(|p| p.parse())
                .collect::<Result<_, _>>()?,
            expires_in_ms: field_value(arg, "expires_in_ms")
                .ok()
                .map(|t| number(&t))
                .transpose()?,
        }),
        "revoke" => Action::Probe(Probe::Revoke {
            id: field_text(arg, "id")?,
            agents: texts(&field_value(arg, "agents")?)?,
        }),
        "context_create" => Action::Probe(Probe::ContextCreate {
            id: field_text(arg, "id")?,
            doc: field_value(arg, "doc")?,
        }),
        "context_patch" => Action::Probe(Probe::ContextPatch {
            id: field_text(arg, "id")?,
            doc: field_value(arg, "doc")?,
        }),
        "context_delete" => Action::Probe(Probe::ContextDelete(text(arg)?)),
        "context_share" => Action::Probe(Probe::ContextShare {
            id: field_text(arg, "id")?,
            agent: field_text(arg, "agent")?,
        }),
        "context_revoke" => Action::Probe(Probe::ContextRevoke {
            id: field_text(arg, "id")?,
            agent: field_text(arg, "agent")?,
        }),
        "context_ids" => Action::Probe(Probe::ContextIds),
        "wait_for" => Action::Probe(Probe::WaitFor(text(arg)?)),
        "context_pointer_patch"
        | "context_history"
        | "context_rollback"
        | "context_resolve"
        | "context_pending"
        | "context_patch_at" => Action::Probe(Probe::ContextMore(key.clone(), arg.clone())),
        "context_prefetch" => Action::Probe(Probe::ContextPrefetch(texts(arg)?)),
        "context_sync_all" => Action::Probe(Probe::ContextSyncAll),
        other => return Err(format!("unknown step `{other}`")),
    };
    Ok(Step { action, tolerate })
}

pub(crate) fn number(arg: &Value) -> Result<u64, String> {
    arg.as_u64()
        .ok_or_else(|| format!("expected a non-negative integer, got {arg}"))
}

pub(crate) fn text(arg: &Value) -> Result<String, String> {
    arg.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a string, got {arg}"))
}

fn texts(arg: &Value) -> Result<Vec<String>, String> {
    arg.as_array()
        .ok_or_else(|| format!("expected a list of strings, got {arg}"))?
        .iter()
        .map(text)
        .collect()
}

fn flag(arg: &Value) -> Result<(), String> {
    match arg {
        Value::Bool(true) => Ok(()),
        _ => Err(format!("expected `true`, got {arg}")),
    }
}

pub(crate) fn field_value(arg: &Value, name: &str) -> Result<Value, String> {
    arg.as_object()
        .ok_or_else(|| format!("expected an object with `{name}`, got {arg}"))?
        .get(name)
        .cloned()
        .ok_or_else(|| format!("missing `{name}`"))
}

pub(crate) fn field_text(arg: &Value, name: &str) -> Result<String, String> {
    text(&field_value(arg, name)?).map_err(|why| format!("`{name}`: {why}"))
}

/// `rounds` states of a xorshift64 generator folded into an FNV-1a hash.
fn cpu(rounds: u64) -> u64 {
    let mut state = black_box(XORSHIFT_SEED);
    let mut hash = FNV_OFFSET;
    for _ in 0..black_box(rounds) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        hash = (hash ^ state).wrapping_mul(FNV_PRIME);
    }
    black_box(hash)
}

/// Burns CPU forever without sleeping or calling the host.
fn spin() -> ! {
    let mut state = black_box(XORSHIFT_SEED);
    loop {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state = black_box(state);
    }
}

qi_guest_sdk::export_agent!(Worker);

#[cfg(test)]
mod tests {
    use super::*;

    fn task(input: Value) -> Task {
        Task {
            id: "t".into(),
            description: "test".into(),
            input: input.to_string(),
        }
    }

    fn run(inputs: Value, attempt: u32, config: Value) -> Result<Value, AgentError> {
        let input =
            json!({"subtask": "s1", "attempt": attempt, "inputs": inputs, "config": config});
        Worker::run(task(input)).map(|out| qi_guest_sdk::serde_json::from_str(&out.output).unwrap())
    }

    #[test]
    fn output_starts_from_emit_and_records_work() {
        let out = run(
            json!({"emit": {"answer": 42, "subtask": "overwritten"}, "steps": [{"work": 1000}], "x": [1]}),
            1,
            json!({"k": true}),
        )
        .unwrap();
        assert_eq!(out["answer"], 42);
        assert_eq!(out["subtask"], "s1");
        assert_eq!(out["attempt"], 1);
        assert_eq!(out["sync"], json!([]));
        assert_eq!(out["received"], json!({"x": [1]}));
        assert_eq!(out["config"], json!({"k": true}));
        assert_eq!(out["work"], cpu(1000).to_string());
        assert!(
            run(json!({}), 1, Value::Null)
                .unwrap()
                .get("work")
                .is_none()
        );
    }

    #[test]
    fn failures_are_staged() {
        let steps = |steps: Value| json!({ "steps": steps });
        assert_eq!(
            run(steps(json!([{"fail_before_attempt": 3}])), 2, Value::Null),
            Err(AgentError::Failed(
                "attempt 2 of s1 fails on purpose".into()
            ))
        );
        assert!(run(steps(json!([{"fail_before_attempt": 3}])), 3, Value::Null).is_ok());
        // From attempt k on, the hang step does nothing.
        assert!(run(steps(json!([{"hang_before_attempt": 2}])), 2, Value::Null).is_ok());
        assert!(
            run(
                steps(json!([{"fail_if_config": "bad"}])),
                1,
                json!({"bad": true})
            )
            .is_err()
        );
        assert!(
            run(
                steps(json!([{"fail_if_config": "bad"}])),
                1,
                json!({"bad": 1})
            )
            .is_ok()
        );
        assert_eq!(
            run(steps(json!([{"fail": "boom"}])), 1, Value::Null),
            Err(AgentError::Failed("boom".into()))
        );
        assert_eq!(
            run(steps(json!([{"invalid": "nope"}])), 1, Value::Null),
            Err(AgentError::InvalidInput("nope".into()))
        );
    }

    #[test]
    fn bad_steps_are_refused_before_anything_runs() {
        for (steps, expected) in [
            (json!([{"fail": "x"}, {"dance": 1}]), "unknown step `dance`"),
            (json!([{"work": 1, "sleep_ms": 1}]), "exactly one key"),
            (json!([{"tolerate": true}]), "exactly one key"),
            (json!([{"vote": {"point": "p"}}]), "missing `choice`"),
            (json!([{"hang": false}]), "expected `true`"),
            (
                json!([{"hang_before_attempt": "2"}]),
                "non-negative integer",
            ),
            (json!([{"call": {"input": {}}}]), "missing `name`"),
            (json!("work"), "list of steps"),
        ] {
            let error = run(json!({ "steps": steps }), 1, Value::Null).unwrap_err();
            assert_eq!(error.kind(), "invalid-input", "{error}");
            assert!(error.message().contains(expected), "{error}");
        }
    }

    #[test]
    fn tolerated_sync_errors_are_recorded() {
        let mut synced = Vec::new();
        record(&mut synced, "p", true, Err(SyncError::NotCoordinated)).unwrap();
        assert_eq!(
            synced,
            vec![json!({"point": "p", "error": SyncError::NotCoordinated.to_string()})]
        );
        assert_eq!(
            record(
                &mut synced,
                "p",
                false,
                Err(SyncError::UnknownPoint("no p".into()))
            ),
            Err(AgentError::Failed("sync p: unknown-point: no p".into()))
        );
    }
}
