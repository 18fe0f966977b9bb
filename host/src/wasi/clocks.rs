//! `wasi:clocks` and `wasi:random` with every call counted in
//! [`Counters::wasi_calls`](crate::sandbox::Counters::wasi_calls).
//!
//! Each function delegates to wasmtime-wasi's own implementation after one relaxed atomic
//! increment, so the receipt shows how often a guest asked for the time or for randomness.
//! Together with the counting filesystem and sockets and the stdio capture, `wasi_calls` counts
//! every WASI call except `wasi:io` (streams and polls of resources those calls made),
//! `wasi:cli` environment and exit, and dropping resources.

use super::AgentWasiView;
use crate::sandbox::AgentShared;
use std::sync::atomic::Ordering;
use std::time::Duration;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::{monotonic_clock, wall_clock};
use wasmtime_wasi::p2::bindings::random::{insecure, insecure_seed, random};
use wasmtime_wasi::random::WasiRandomCtx;

/// The clocks view handed to the generated bindings.
pub struct CountingClocks<'a> {
    inner: WasiClocksCtxView<'a>,
    shared: &'a AgentShared,
}

/// The random view handed to the generated bindings.
pub struct CountingRandom<'a> {
    inner: &'a mut WasiRandomCtx,
    shared: &'a AgentShared,
}

fn count(shared: &AgentShared) {
    shared.counters.wasi_calls.fetch_add(1, Ordering::Relaxed);
}

struct ClocksData;

impl HasData for ClocksData {
    type Data<'a> = CountingClocks<'a>;
}

struct RandomData;

impl HasData for RandomData {
    type Data<'a> = CountingRandom<'a>;
}

fn clocks<T: AgentWasiView>(state: &mut T) -> CountingClocks<'_> {
    let parts = state.wasi_parts();
    CountingClocks {
        inner: WasiClocksCtxView {
            ctx: parts.ctx.clocks(),
            table: parts.table,
        },
        shared: parts.shared,
    }
}

fn randomness<T: AgentWasiView>(state: &mut T) -> CountingRandom<'_> {
    let parts = state.wasi_parts();
    CountingRandom {
        inner: parts.ctx.random(),
        shared: parts.shared,
    }
}

/// Replaces wasmtime-wasi's `wasi:clocks` and `wasi:random` in `linker` with the counting ones.
pub fn shadow_clocks_and_random<T: AgentWasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    wall_clock::add_to_linker::<T, ClocksData>(linker, clocks::<T>)?;
    monotonic_clock::add_to_linker::<T, ClocksData>(linker, clocks::<T>)?;
    random::add_to_linker::<T, RandomData>(linker, randomness::<T>)?;
    insecure::add_to_linker::<T, RandomData>(linker, randomness::<T>)?;
    insecure_seed::add_to_linker::<T, RandomData>(linker, randomness::<T>)?;
    linker.allow_shadowing(false);
    Ok(())
}

impl wall_clock::Host for CountingClocks<'_> {
    fn now(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        count(self.shared);
        wall_clock::Host::now(&mut self.inner)
    }

    fn resolution(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        count(self.shared);
        wall_clock::Host::resolution(&mut self.inner)
    }
}

impl monotonic_clock::Host for CountingClocks<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        count(self.shared);
        monotonic_clock::Host::now(&mut self.inner)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        count(self.shared);
        monotonic_clock::Host::resolution(&mut self.inner)
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        count(self.shared);
        if let Some(sync) = &self.shared.sync {
            let now = monotonic_clock::Host::now(&mut self.inner)?;
            sync.note_timer(Duration::from_nanos(when.saturating_sub(now)));
        }
        monotonic_clock::Host::subscribe_instant(&mut self.inner, when)
    }

    fn subscribe_duration(
        &mut self,
        duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        count(self.shared);
        // A coordinated agent blocked on this timer is waiting, not stalled.
        if let Some(sync) = &self.shared.sync {
            sync.note_timer(Duration::from_nanos(duration));
        }
        monotonic_clock::Host::subscribe_duration(&mut self.inner, duration)
    }
}

impl random::Host for CountingRandom<'_> {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        count(self.shared);
        random::Host::get_random_bytes(self.inner, len)
    }

    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        count(self.shared);
        random::Host::get_random_u64(self.inner)
    }
}

impl insecure::Host for CountingRandom<'_> {
    fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        count(self.shared);
        insecure::Host::get_insecure_random_bytes(self.inner, len)
    }

    fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
        count(self.shared);
        insecure::Host::get_insecure_random_u64(self.inner)
    }
}

impl insecure_seed::Host for CountingRandom<'_> {
    fn insecure_seed(&mut self) -> wasmtime::Result<(u64, u64)> {
        count(self.shared);
        insecure_seed::Host::insecure_seed(self.inner)
    }
}
