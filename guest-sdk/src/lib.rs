//! Write qi-host agents in Rust.
//!
//! An agent is a WebAssembly component that says what it is ([`Agent::describe`]) and runs
//! tasks ([`Agent::run`]). qi-host runs each agent in its own sandbox with limits on CPU (fuel),
//! memory, wall-clock time, tool calls and file operations. This crate hides the raw WIT
//! bindings and gives you:
//!
//! - the [`Agent`] trait and the [`export_agent!`] macro that turns an implementation into the
//!   component's exports;
//! - the types of the contract: [`AgentInfo`], [`AgentType`], [`Task`], [`TaskOutput`],
//!   [`AgentError`], [`ToolError`], [`ContextError`], [`EventError`], [`SyncError`],
//!   [`ChannelError`], [`LlmError`], with JSON helpers ([`Task::input_json`],
//!   [`Task::input_value`], [`TaskOutput::json`]) and [`SubtaskInput`], the input every
//!   subtask of a coordinated run receives;
//! - one module per host interface: [`log`], [`tools`], [`budget`], [`context`] (the shared,
//!   versioned context store: typed `get`/`put`/`patch` with serde, `update(id, |doc| ...)`
//!   retrying stale writes, `share`/`revoke`), [`events`] (gap-free, resumable
//!   subscriptions with an iterator that ends on a timeout, and `publish`), [`sync`] (the
//!   synchronization points of a coordinated run: `barrier`, `checkpoint`/`restore`, `vote`,
//!   `contribute`, `outcome`), [`channels`] (the channels a run's manifest declares:
//!   `send`/`send_to` text or JSON, `receive` with a timeout, `ack`, and an iterator over a
//!   channel's messages that ends when it is closed) and [`llm`] (model calls brokered by the
//!   host: a `Request` builder, `chat`, typed JSON answers with `chat_json`, and `run_tools`, a
//!   bounded loop that lets the model call host tools);
//! - [`serde`] and [`serde_json`], re-exported.
//!
//! # Example
//!
//! ```
//! use qi_guest_sdk::serde_json::{Value, json};
//! use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log, tools};
//! use serde::{Deserialize, Serialize};
//!
//! /// Counts the words of one file in the agent's workspace.
//! struct WordCounter;
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     path: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     path: String,
//!     words: usize,
//!     counted_at: Value,
//! }
//!
//! impl Agent for WordCounter {
//!     fn describe() -> AgentInfo {
//!         AgentInfo {
//!             name: "word-counter".into(),
//!             version: "0.1.0".into(),
//!             agent_type: AgentType::Specialized,
//!             capabilities: vec!["text-analysis".into()],
//!             description: "Counts the words of one file in the workspace.".into(),
//!         }
//!     }
//!
//!     fn run(task: Task) -> Result<TaskOutput, AgentError> {
//!         // `invalid-input` naming the missing field when the input is not `{"path": ...}`.
//!         let input: Input = task.input_json()?;
//!         log::info!(task_id = task.id, path = input.path; "counting words");
//!
//!         // Files are reached through WASI: only directories the host preopened are visible.
//!         let text = std::fs::read_to_string(&input.path)
//!             .map_err(|error| AgentError::Failed(format!("cannot read {}: {error}", input.path)))?;
//!
//!         // A refused or failed tool call ends the run as `tool-failed` through `?`.
//!         let counted_at: Value = tools::call("clock.now", &json!({}))?;
//!
//!         TaskOutput::json(&Output {
//!             words: text.split_whitespace().count(),
//!             path: input.path,
//!             counted_at,
//!         })
//!     }
//! }
//!
//! qi_guest_sdk::export_agent!(WordCounter);
//! #
//! # fn main() {
//! #     assert_eq!(WordCounter::describe().name, "word-counter");
//! # }
//! ```
//!
//! # From nothing to a running agent
//!
//! 1. Install the target once: `rustup target add wasm32-wasip2`.
//! 2. `cargo new --lib my-agent`, and in its `Cargo.toml`:
//!
//!    ```toml
//!    [lib]
//!    crate-type = ["cdylib"]
//!
//!    [dependencies]
//!    qi-guest-sdk = { path = "../qi-host/guest-sdk" }
//!    # only if you derive `Serialize`/`Deserialize` for your own types
//!    serde = { version = "1", features = ["derive"] }
//!    ```
//!
//! 3. Put an agent like the one above in `src/lib.rs`, with one `export_agent!` per crate.
//! 4. Build the component: `cargo build --target wasm32-wasip2 --release`.
//! 5. Run it:
//!
//!    ```text
//!    qi-host run-agent target/wasm32-wasip2/release/my_agent.wasm --task "hi"
//!    ```
//!
//! The crate also compiles natively (host calls are stubs there that panic if called), so
//! `cargo test` and `cargo clippy` work on agent code that does not call the host.

// Lets the generated bindings name this crate the way guest crates do (`qi_guest_sdk::...`).
extern crate self as qi_guest_sdk;

#[doc(hidden)]
#[allow(
    unsafe_code,
    reason = "the generated bindings lift and lower values through the canonical ABI"
)]
pub mod wit;

pub mod budget;
pub mod channels;
pub mod context;
mod error;
pub mod events;
pub mod llm;
pub mod log;
pub mod sync;
mod task;
pub mod tools;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

pub use error::{
    AgentError, ChannelError, ContextError, EventError, LlmError, SyncError, ToolError,
};
pub use serde;
pub use serde_json;
pub use task::SubtaskInput;
pub use wit::qi::agent::types::{AgentInfo, AgentType, Task, TaskOutput};

/// An agent: describes itself and runs tasks. Export an implementation with
/// [`export_agent!`].
///
/// Both are associated functions (no `self`): an agent's state for a task lives in `run`'s
/// locals, and anything that must outlive one call in statics of the component instance.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a qi-host agent",
    label = "`export_agent!` needs a type that implements `qi_guest_sdk::Agent`",
    note = "implement `qi_guest_sdk::Agent` for it: `impl qi_guest_sdk::Agent for {Self} {{ fn describe() -> AgentInfo {{ ... }} fn run(task: Task) -> Result<TaskOutput, AgentError> {{ ... }} }}`"
)]
pub trait Agent {
    /// Returns what the agent is. Called once when the host inspects or spawns it.
    fn describe() -> AgentInfo;

    /// Runs one task and returns its output, or the agent's own error.
    ///
    /// # Errors
    ///
    /// Whatever the agent decides: [`AgentError::InvalidInput`] for input it cannot use,
    /// [`AgentError::ToolFailed`] when it gives up after a tool call failed (`?` on a
    /// [`ToolError`] does this), [`AgentError::Failed`] otherwise. Traps (panics, exceeded
    /// limits) are not errors the agent returns; the host reports them itself.
    fn run(task: Task) -> Result<TaskOutput, AgentError>;
}

/// Exports a type that implements [`Agent`] as the component's `describe` and `run`.
///
/// Use it once per crate, at the top level of a `cdylib` crate:
///
/// ```
/// # use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput};
/// struct MyAgent;
///
/// impl Agent for MyAgent {
///     // ...
/// #   fn describe() -> AgentInfo { unimplemented!() }
/// #   fn run(_: Task) -> Result<TaskOutput, AgentError> { unimplemented!() }
/// }
///
/// qi_guest_sdk::export_agent!(MyAgent);
/// # fn main() {}
/// ```
///
/// A type that does not implement [`Agent`] is a compile error saying so:
///
/// ```compile_fail
/// struct NotAnAgent;
/// qi_guest_sdk::export_agent!(NotAnAgent);
/// # fn main() {}
/// ```
///
/// and so is anything but exactly one type:
///
/// ```compile_fail
/// qi_guest_sdk::export_agent!();
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// # struct A; struct B;
/// qi_guest_sdk::export_agent!(A, B);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_agent {
    () => {
        ::core::compile_error!(
            "`export_agent!` needs the type that implements `qi_guest_sdk::Agent`: \
             write `qi_guest_sdk::export_agent!(MyAgent);`"
        );
    };
    ($agent:ty $(,)?) => {
        const _: () = {
            #[doc(hidden)]
            pub struct __QiAgentExport;

            impl $crate::wit::Guest for __QiAgentExport {
                fn describe() -> $crate::AgentInfo {
                    <$agent as $crate::Agent>::describe()
                }

                fn run(
                    task: $crate::Task,
                ) -> ::core::result::Result<$crate::TaskOutput, $crate::AgentError> {
                    <$agent as $crate::Agent>::run(task)
                }
            }

            $crate::__export_agent_impl!(__QiAgentExport with_types_in $crate::wit);
        };
    };
    ($($other:tt)+) => {
        ::core::compile_error!(::core::concat!(
            "`export_agent!` takes exactly one type, the one that implements \
             `qi_guest_sdk::Agent`, as in `qi_guest_sdk::export_agent!(MyAgent);`; it was given `",
            ::core::stringify!($($other)+),
            "`"
        ));
    };
}
