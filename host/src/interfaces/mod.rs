//! The single `bindgen!` for the `qi:agent/agent` world and the host side of its imports, one
//! module per WIT interface: [`log`], [`tools`], [`budget`], [`context`], [`events`],
//! [`sync`], [`channels`], [`llm`]. Each host call starts with the agent's grants: deny by default, check, count,
//! record (when monitored), then act. Every argument's size is checked against the one table
//! in [`limits`] before it is parsed or copied further.
//!
//! To add a host interface: add its `.wit` file, copy one of these modules (an `impl Host for
//! AgentState` plus an `add_to_linker`), and list it in [`linker`].

use wasmtime::Engine;
use wasmtime::component::Linker;

pub mod budget;
pub mod channels;
pub mod context;
pub mod context_cache;
pub mod events;
pub mod limits;
pub mod llm;
pub mod log;
pub(crate) mod output;
pub mod state;
pub mod sync;
pub mod tools;

/// The `qi:agent` interfaces the host provides to every agent (besides WASI 0.2), as
/// `qi-host inspect` lists them.
pub const PROVIDED: &[&str] = &[
    "qi:agent/types@0.1.0",
    "qi:agent/log@0.1.0",
    "qi:agent/tools@0.1.0",
    "qi:agent/budget@0.1.0",
    "qi:agent/context@0.1.0",
    "qi:agent/events@0.1.0",
    "qi:agent/sync@0.1.0",
    "qi:agent/channels@0.1.0",
    "qi:agent/llm@0.1.0",
];

/// Code generated from `wit/` by `wasmtime::component::bindgen!`.
#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "qi:agent/agent",
        imports: { default: async },
        exports: { default: async },
    });
}

pub(crate) use generated::qi;
pub use generated::{Agent, AgentPre};
pub use state::AgentState;

pub use qi::agent::budget::Remaining;
pub use qi::agent::log::Level;
pub use qi::agent::tools::{ToolError, ToolRequest};
pub use qi::agent::types::{AgentError, AgentInfo, AgentType as WitAgentType, Task, TaskOutput};

/// The linker every agent is instantiated with: WASI 0.2 (filesystem, clocks and random
/// counted), and the `qi:agent` imports.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<AgentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::wasi::filesystem::shadow_filesystem(&mut linker)?;
    crate::wasi::sockets::shadow_sockets(&mut linker)?;
    crate::wasi::clocks::shadow_clocks_and_random(&mut linker)?;
    crate::wasi::poll::shadow_poll(&mut linker)?;
    qi::agent::types::add_to_linker::<AgentState, wasmtime::component::HasSelf<AgentState>>(
        &mut linker,
        |s| s,
    )?;
    log::add_to_linker(&mut linker)?;
    tools::add_to_linker(&mut linker)?;
    context::add_to_linker(&mut linker)?;
    events::add_to_linker(&mut linker)?;
    sync::add_to_linker(&mut linker)?;
    channels::add_to_linker(&mut linker)?;
    llm::add_to_linker(&mut linker)?;
    budget::add_to_linker(&mut linker)?;
    Ok(linker)
}

impl qi::agent::types::Host for AgentState {}
