//! The data of an agent's Store: wasmtime-wasi's context and resource table, the memory
//! limiter, the agent ([`AgentShared`]), the bounded stdio capture, its event subscriptions, the
//! counting filesystem's state and its share of the host's descriptor budget. Every host
//! interface implements its `Host` trait on it, and the WASI shadows reach it through
//! [`AgentWasiView`].

use crate::sandbox::descriptors::DescriptorReservation;
use crate::sandbox::{AgentShared, BoundedCapture, MemoryLimiter, Stdio};
use crate::wasi::{AgentWasiParts, AgentWasiView};
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The data of an agent's `Store`.
pub struct AgentState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) shared: Arc<AgentShared>,
    pub(crate) stdout: BoundedCapture,
    pub(crate) stderr: BoundedCapture,
    /// The agent's event subscriptions, by handle, with the gate decisions they were allowed by.
    pub(crate) subscriptions: std::collections::HashMap<u64, super::events::Watched>,
    /// Which mount each filesystem descriptor belongs to.
    pub(crate) fs: crate::wasi::filesystem::FsState,
    /// The agent's share of the process descriptor budget, given back with the Store.
    pub(crate) descriptors: Option<DescriptorReservation>,
}

impl WasiView for AgentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl AgentState {
    /// The Store data holding `descriptors` (from [`crate::sandbox::descriptors::reserve`]) until it is
    /// dropped.
    pub fn holding(mut self, descriptors: Option<DescriptorReservation>) -> Self {
        self.descriptors = descriptors;
        self
    }

    /// Builds the Store data: WASI with only the granted preopens and the network check, no
    /// environment variables, no arguments, stdin empty, stdout/stderr captured and bounded
    /// ([`BoundedCapture`]: the first 64 KiB kept, the rest discarded and counted).
    pub fn new(shared: Arc<AgentShared>) -> wasmtime::Result<Self> {
        let mut b = WasiCtxBuilder::new();
        let stdout = BoundedCapture::new(Stdio::Stdout, shared.clone());
        let stderr = BoundedCapture::new(Stdio::Stderr, shared.clone());
        b.stdout(stdout.clone()).stderr(stderr.clone());
        for p in &shared.grants.preopens {
            let perms = if p.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&p.host_path, &p.guest_path, perms)?;
        }
        // Name lookups are answered by `wasi::sockets::lookup`, never by wasmtime-wasi.
        let network_on = shared.grants.network_on();
        b.allow_tcp(network_on)
            .allow_udp(network_on)
            .allow_ip_name_lookup(false)
            .socket_addr_check(crate::wasi::sockets::socket_addr_check(shared.clone()));
        let limit_bytes = (shared.spec.resource_limits.max_memory_mb as usize) << 20;
        Ok(AgentState {
            wasi: b.build(),
            table: crate::wasi::filesystem::handle_table(&shared.spec),
            fs: crate::wasi::filesystem::FsState::new(&shared.grants.preopens),
            descriptors: None,
            limiter: MemoryLimiter::new(limit_bytes, shared.clone()),
            shared,
            stdout,
            stderr,
            subscriptions: std::collections::HashMap::new(),
        })
    }
}

impl AgentWasiView for AgentState {
    fn wasi_parts(&mut self) -> AgentWasiParts<'_> {
        AgentWasiParts {
            ctx: &mut self.wasi,
            table: &mut self.table,
            shared: &self.shared,
            fs: &mut self.fs,
        }
    }
}
