//! `wasi:io/poll` shadowed so the host knows when a coordinated agent is blocked in `poll` or
//! `pollable.block`. Together with the due time of the clocks it subscribed to
//! (`SyncHandle::note_timer`), that tells a sleep (blocked, with a timer still to come: waiting,
//! not a stall) from a subscription to a long timer made only to look busy. Each function
//! delegates to wasmtime-wasi-io's own implementation on the resource table.

use super::AgentWasiView;
use crate::sandbox::AgentShared;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll;

/// The poll view handed to the generated bindings.
pub struct WatchedPoll<'a> {
    table: &'a mut ResourceTable,
    shared: &'a Arc<AgentShared>,
}

struct PollData;

impl HasData for PollData {
    type Data<'a> = WatchedPoll<'a>;
}

fn watched<T: AgentWasiView>(state: &mut T) -> WatchedPoll<'_> {
    let parts = state.wasi_parts();
    WatchedPoll {
        table: parts.table,
        shared: parts.shared,
    }
}

/// Replaces wasmtime-wasi's `wasi:io/poll` in `linker` with the watched one.
pub fn shadow_poll<T: AgentWasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    poll::add_to_linker::<T, PollData>(linker, watched::<T>)?;
    linker.allow_shadowing(false);
    Ok(())
}

impl poll::Host for WatchedPoll<'_> {
    async fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let _blocked = self.shared.sync.as_ref().map(|h| h.enter_poll());
        poll::Host::poll(self.table, pollables).await
    }
}

impl poll::HostPollable for WatchedPoll<'_> {
    async fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let _blocked = self.shared.sync.as_ref().map(|h| h.enter_poll());
        poll::HostPollable::block(self.table, pollable).await
    }

    async fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        poll::HostPollable::ready(self.table, pollable).await
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.table, pollable)
    }
}
