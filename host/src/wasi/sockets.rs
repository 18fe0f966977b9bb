//! `wasi:sockets` behind the agent's network allow-list: every use counted, audited and bounded.
//!
//! - **Addresses.** [`socket_addr_check`] is the check wasmtime-wasi calls before every bind,
//!   listen, accept, connect, send and receive: the allow-list
//!   ([`Grants::socket_allowed`](crate::sandbox::Grants::socket_allowed)), then the access gate
//!   (resource `network/<address>`, actions `bind`, `listen`, `connect`, `send`, `receive`).
//! - **Names.** [`lookup`] replaces `wasi:sockets/ip-name-lookup`: only names that
//!   `allowedNetworkHosts` lists are resolved, anything else is refused with `access-denied`
//!   before any packet leaves the host.
//! - **Handles.** Creating a socket ([`tcp`], [`udp`], `tcp-create-socket`,
//!   `udp-create-socket`), accepting, connecting (which opens two streams) and opening UDP
//!   datagram streams first check that the agent's resource table has room for what they
//!   create plus [`POLL_HEADROOM`] (`resourceLimits.maxOpenHandles`); without room the guest
//!   gets `new-socket-limit` (EMFILE in wasi-libc) instead of a trap, and the report names the
//!   limit if the agent then fails.
//!
//! Every attempt counts once in the receipt: `network_allowed` or `network_denied`, plus
//! `dns_lookups` for lookups. Every decided attempt takes one unit of
//! `resourceLimits.maxNetworkOperations`; past it, attempts are refused (and counted as
//! denied) without an audit entry, and the report names the limit. Every attempt is in the agent's audit log when one is attached:
//! refusals by the allow-list or the handle cap as `deny` entries naming the reason, allowed
//! uses as `allow` entries (with policies loaded, the access gate writes the entry instead).

pub mod lookup;
pub mod tcp;
pub mod udp;

use crate::audit::AuditDecision;
use crate::error::LimitKind;
use crate::sandbox::AgentShared;
use crate::wasi::AgentWasiView;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::{
    ip_name_lookup, tcp as wasi_tcp, tcp_create_socket, udp as wasi_udp, udp_create_socket,
};
use wasmtime_wasi::p2::{SocketError, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView};

/// The sockets view handed to the generated bindings: wasmtime-wasi's, plus the agent.
pub struct Sockets<'a> {
    inner: WasiSocketsCtxView<'a>,
    shared: &'a Arc<AgentShared>,
}

struct SocketsData;

impl HasData for SocketsData {
    type Data<'a> = Sockets<'a>;
}

fn sockets<T: AgentWasiView>(state: &mut T) -> Sockets<'_> {
    let parts = state.wasi_parts();
    Sockets {
        inner: WasiSocketsCtxView {
            ctx: parts.ctx.sockets(),
            table: parts.table,
        },
        shared: parts.shared,
    }
}

/// Replaces wasmtime-wasi's `wasi:sockets/ip-name-lookup`, `tcp`, `tcp-create-socket`, `udp`
/// and `udp-create-socket` in `linker` with the ones of this module (call it after
/// `wasmtime_wasi::p2::add_to_linker_async`).
pub fn shadow_sockets<T: AgentWasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    ip_name_lookup::add_to_linker::<T, SocketsData>(linker, sockets::<T>)?;
    tcp_create_socket::add_to_linker::<T, SocketsData>(linker, sockets::<T>)?;
    udp_create_socket::add_to_linker::<T, SocketsData>(linker, sockets::<T>)?;
    wasi_tcp::add_to_linker::<T, SocketsData>(linker, sockets::<T>)?;
    wasi_udp::add_to_linker::<T, SocketsData>(linker, sockets::<T>)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Whether `table` can take one more entry: pushes a placeholder and deletes it again
/// (`ResourceTableError::Full` means no room). Resource tables reuse freed slots, so the
/// probe leaves the table as it was.
pub fn table_has_room(table: &mut ResourceTable) -> bool {
    table_has_room_for(table, 1)
}

/// Whether `table` can take `n` more entries (see [`table_has_room`]).
pub fn table_has_room_for(table: &mut ResourceTable, n: usize) -> bool {
    let mut probes = Vec::with_capacity(n);
    let mut room = true;
    for _ in 0..n {
        match table.push(()) {
            Ok(probe) => probes.push(probe),
            Err(_) => {
                room = false;
                break;
            }
        }
    }
    for probe in probes.into_iter().rev() {
        table
            .delete(probe)
            .expect("a probe just pushed can be deleted");
    }
    room
}

/// The check wasmtime-wasi runs before every socket use of the agent (install it with
/// `WasiCtxBuilder::socket_addr_check`): allow-list, then access gate; counted and audited
/// (see the module docs).
pub fn socket_addr_check(
    shared: Arc<AgentShared>,
) -> impl Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>>
+ Send
+ Sync
+ 'static {
    move |addr, usage| {
        let action = match usage {
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => "bind",
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => "listen",
            SocketAddrUse::TcpConnect => "connect",
            SocketAddrUse::UdpSend => "send",
            SocketAddrUse::UdpReceive => "receive",
        };
        let allowed = decide(
            &shared,
            &addr.to_string(),
            action,
            shared.grants.socket_allowed(addr, usage),
        );
        Box::pin(async move { allowed })
    }
}

/// Decides one network use of the agent on `target` (an address or a host name): refused when
/// `allow_list` says so, else by the access gate. Counts it (`network_allowed` /
/// `network_denied`) and audits it; returns whether it may go ahead.
pub(crate) fn decide(
    shared: &AgentShared,
    target: &str,
    action: &str,
    allow_list: Result<(), String>,
) -> bool {
    // The budget first: past it each refused attempt is one `deny` of
    // `limits/network-operations` (by `take_budget`, within the agent's audit bound), never
    // a gate decision, so a flood of attempts (or of datagrams from outside, each checked on
    // receipt) costs the host a count and at most the bounded audit entries.
    if shared.take_budget(LimitKind::NetworkOperations).is_err() {
        shared
            .counters
            .network_denied
            .fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let gated = shared.access.as_ref().is_some_and(|a| a.enabled());
    let allowed = match allow_list {
        Err(reason) => {
            refuse(shared, target, action, reason);
            return false;
        }
        // With policies loaded the gate audits its decision (allow or deny) itself.
        Ok(()) if gated => shared.gate("network", target, action).is_ok(),
        // Audited as allowed; refused when the entry cannot be recorded (fail-closed).
        Ok(()) => match shared.record_decision(
            "network",
            target,
            action,
            AuditDecision::Allow,
            "allowed by resourceLimits.allowedNetworkHosts",
        ) {
            Ok(()) => true,
            Err(unrecorded) => {
                tracing::warn!(agent = %shared.id, target, action, %unrecorded, "network use refused");
                false
            }
        },
    };
    let counter = if allowed {
        &shared.counters.network_allowed
    } else {
        &shared.counters.network_denied
    };
    counter.fetch_add(1, Ordering::Relaxed);
    shared.counters.wasi_calls.fetch_add(1, Ordering::Relaxed);
    allowed
}

/// Counts, audits (through [`AgentShared::refuse`]) and logs a refused network use
/// (`reason` says why and how to allow it).
fn refuse(shared: &AgentShared, target: &str, action: &str, reason: String) {
    shared
        .counters
        .network_denied
        .fetch_add(1, Ordering::Relaxed);
    shared.counters.wasi_calls.fetch_add(1, Ordering::Relaxed);
    shared.refuse("network", target, action, &reason);
}

/// Table entries a socket operation leaves free beyond what it creates: the pollable a guest
/// subscribes to wait on the new socket or stream. `subscribe` cannot return an error, so
/// without this slot a guest at its cap would trap instead of getting `new-socket-limit`.
pub const POLL_HEADROOM: usize = 1;

impl Sockets<'_> {
    /// `Ok` when the resource table can take `n` more entries (plus [`POLL_HEADROOM`]); else the refusal is counted,
    /// audited and recorded as an `OpenHandles` violation, and the guest gets
    /// `new-socket-limit`.
    fn reserve(&mut self, n: usize, action: &str) -> SocketResult<()> {
        if table_has_room_for(self.inner.table, n + POLL_HEADROOM) {
            return Ok(());
        }
        let cap = self.shared.spec.resource_limits.max_open_handles;
        let reason = format!(
            "{action} refused: the agent holds as many handles as resourceLimits.maxOpenHandles \
             allows ({cap}); close sockets, streams or files, or raise the limit"
        );
        refuse(self.shared, "handles", action, reason.clone());
        self.shared
            .record_violation(LimitKind::OpenHandles, cap.into(), reason);
        Err(ErrorCode::NewSocketLimit.into())
    }
}

// Only converts errors of the interfaces above; `wasi:sockets/network` itself stays
// wasmtime-wasi's.
impl network::Host for Sockets<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.inner, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.inner, err)
    }
}

impl network::HostNetwork for Sockets<'_> {
    fn drop(&mut self, this: Resource<network::Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.inner, this)
    }
}

impl tcp_create_socket::Host for Sockets<'_> {
    fn create_tcp_socket(
        &mut self,
        address_family: IpAddressFamily,
    ) -> SocketResult<Resource<TcpSocket>> {
        self.reserve(1, "create-tcp-socket")?;
        tcp_create_socket::Host::create_tcp_socket(&mut self.inner, address_family)
    }
}

impl udp_create_socket::Host for Sockets<'_> {
    async fn create_udp_socket(
        &mut self,
        address_family: IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        self.reserve(1, "create-udp-socket")?;
        udp_create_socket::Host::create_udp_socket(&mut self.inner, address_family).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_probe_leaves_the_table_as_it_was() {
        let mut table = ResourceTable::new();
        table.set_max_capacity(3);
        let held = table.push(1u8).unwrap();
        assert!(table_has_room(&mut table));
        assert!(table_has_room_for(&mut table, 2));
        assert!(!table_has_room_for(&mut table, 3));
        // The probes were all freed: two more entries still fit, then none.
        let a = table.push(2u8).unwrap();
        let b = table.push(3u8).unwrap();
        assert!(!table_has_room(&mut table));
        assert_eq!(table.get(&held).copied().unwrap(), 1);
        table.delete(a).unwrap();
        assert!(table_has_room(&mut table));
        assert_eq!(table.delete(b).unwrap(), 3);
    }
}
