//! What qi-host puts between guests and WASI: [`filesystem`] counts every operation, gates
//! every path, keeps links inside their mount and charges disk and file quotas; [`sockets`] holds every socket use and name lookup to the network allow-list,
//! counts and audits them, and keeps sockets within the handle cap; [`clocks`] counts clock and
//! random calls.
//!
//! Each module replaces (shadows) wasmtime-wasi's interfaces in a `Linker<T>` for any Store data
//! `T` that is an [`AgentWasiView`], so this layer depends on the agent ([`AgentShared`]) but
//! not on the Store data type that sits above it (`crate::interfaces::AgentState`).

pub mod clocks;
pub mod filesystem;
pub mod poll;
pub mod sockets;

use crate::sandbox::AgentShared;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtx;

/// What the WASI shadows need from an agent's Store data, borrowed at once.
pub struct AgentWasiParts<'a> {
    /// wasmtime-wasi's context.
    pub ctx: &'a mut WasiCtx,
    /// The Store's resource table.
    pub table: &'a mut ResourceTable,
    /// The agent: spec, grants, counters, gate.
    pub shared: &'a Arc<AgentShared>,
    /// The counting filesystem's per-agent state (mounts of descriptors).
    pub fs: &'a mut filesystem::FsState,
}

/// Store data the WASI shadows of this module can serve.
pub trait AgentWasiView: Send + 'static {
    /// Borrows the parts the shadows use.
    fn wasi_parts(&mut self) -> AgentWasiParts<'_>;
}
