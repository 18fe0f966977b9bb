//! `wasi:sockets/ip-name-lookup` for an agent: only names the allow-list lists.
//!
//! `resolve-addresses(name)` answers, in this order:
//! - without network (no `allowedNetworkHosts`, or `network` prohibited): `access-denied`;
//! - longer than [`MAX_NAME_BYTES`]: `invalid-argument`;
//! - an IP literal (`127.0.0.1`, `::1`, `[::1]`): that address, with no lookup;
//! - a host name an `allowedNetworkHosts` entry lists (`api.example.com:443`; ASCII case and
//!   one trailing dot ignored; any name with `networkAccessLevel: full`): resolved through the
//!   host's resolver, spelled as the allow-list spells it, keeping only the addresses the
//!   allow-list admits, at most [`MAX_ADDRESSES_PER_LOOKUP`]; none left is
//!   `name-unresolvable`;
//! - any other name: `access-denied`, before anything is sent. `access-denied` rather than
//!   `name-unresolvable` so that a guest can tell "not allowed" from "does not exist".
//!
//! At most [`MAX_LOOKUPS_IN_FLIGHT`] of an agent's lookups run at once; the others wait, and a
//! lookup dropped before it started never sends anything.
//!
//! Each call counts once in `dns_lookups` and once in `network_allowed` or `network_denied`,
//! and is audited as action `resolve` on `network/<name>` (see [`super`]).
//!
//! The resource type `resolve-address-stream` is fixed by wasmtime-wasi's generated bindings,
//! but every function that touches it (`resolve-addresses`, `resolve-next-address`,
//! `subscribe`, drop) is replaced here, so the table entries behind those handles are this
//! module's [`Lookup`]; handles are converted by their table index.

use super::{Sockets, decide};
use crate::sandbox::AgentShared;
use std::future::{Future, poll_fn};
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use wasmtime::component::Resource;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    Host, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress, Network};
use wasmtime_wasi::p2::{DynPollable, Pollable, SocketResult};

/// Addresses one lookup returns at most (the first ones the resolver gave, duplicates
/// removed): a guest cannot make the host hold an unbounded answer.
pub const MAX_ADDRESSES_PER_LOOKUP: usize = 16;

/// Lookups of one agent that run at once. The host's resolver (`getaddrinfo`) blocks a
/// thread of the shared blocking pool (which also runs every agent's file I/O) until the
/// answer or the resolver's timeout; a lookup the guest drops cannot stop it. Past this
/// number, a new lookup waits for a running one to end, and a dropped one that has not
/// started never runs.
pub const MAX_LOOKUPS_IN_FLIGHT: usize = 2;

/// Longest name accepted, in bytes (the DNS limit for a full name).
pub const MAX_NAME_BYTES: usize = 253;

type Answer = Result<Vec<IpAddr>, ErrorCode>;

/// The answer to one `resolve-addresses` call, held in the agent's resource table.
pub struct Lookup {
    state: LookupState,
}

enum LookupState {
    Pending(tokio::task::JoinHandle<Answer>),
    Ready(Result<std::vec::IntoIter<IpAddr>, ErrorCode>),
}

impl Lookup {
    fn ready(answer: Answer) -> Self {
        Lookup {
            state: LookupState::Ready(answer.map(Vec::into_iter)),
        }
    }

    /// Resolves `name` (already allowed) on the tokio runtime, keeping what the allow-list
    /// admits.
    fn spawn(name: String, shared: Arc<AgentShared>) -> Self {
        let task = tokio::spawn(async move {
            // Dropping the lookup aborts this task: while it waits here nothing has started;
            // once the resolver runs, the permit goes with it and comes back when it ends.
            let permit = shared
                .lookups
                .get()
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ErrorCode::Unknown)?;
            let id = shared.id.clone();
            let found = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 0)).map_err(|e| {
                    tracing::debug!(agent = %id, name, error = %e, "lookup failed");
                    ErrorCode::NameUnresolvable
                })
            })
            .await
            .map_err(|_| ErrorCode::Unknown)??;
            let mut kept = Vec::new();
            for ip in found.map(|a| a.ip().to_canonical()) {
                if shared.grants.address_admitted(ip) && !kept.contains(&ip) {
                    kept.push(ip);
                    if kept.len() == MAX_ADDRESSES_PER_LOOKUP {
                        break;
                    }
                }
            }
            if kept.is_empty() {
                return Err(ErrorCode::NameUnresolvable);
            }
            Ok(kept)
        });
        Lookup {
            state: LookupState::Pending(task),
        }
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let LookupState::Pending(task) = &mut self.state {
            let Poll::Ready(joined) = Pin::new(task).poll(cx) else {
                return Poll::Pending;
            };
            let answer = joined.unwrap_or(Err(ErrorCode::Unknown));
            self.state = LookupState::Ready(answer.map(Vec::into_iter));
        }
        Poll::Ready(())
    }
}

impl Drop for Lookup {
    fn drop(&mut self) {
        if let LookupState::Pending(task) = &self.state {
            task.abort();
        }
    }
}

impl Pollable for Lookup {
    fn ready<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(poll_fn(|cx| self.poll_answer(cx)))
    }
}

/// An IP literal: dotted IPv4, or IPv6 with or without brackets.
fn ip_literal(name: &str) -> Option<IpAddr> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(ip);
    }
    let inner = name.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

fn own(handle: &Resource<ResolveAddressStream>) -> Resource<Lookup> {
    Resource::new_own(handle.rep())
}

fn borrowed(handle: &Resource<ResolveAddressStream>) -> Resource<Lookup> {
    Resource::new_borrow(handle.rep())
}

impl Host for Sockets<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> SocketResult<Resource<ResolveAddressStream>> {
        self.inner.table.get(&network)?;
        let shared = self.shared;
        shared.counters.dns_lookups.fetch_add(1, Ordering::Relaxed);
        let literal = ip_literal(&name);
        let allowed_name = shared.grants.allowed_name(&name);
        let verdict = if !shared.grants.network_on() {
            Err((
                ErrorCode::AccessDenied,
                format!(
                    "lookup of `{name}` refused: the agent has no network; list `{name}:PORT` in resourceLimits.allowedNetworkHosts"
                ),
            ))
        } else if name.len() > MAX_NAME_BYTES {
            Err((
                ErrorCode::InvalidArgument,
                format!(
                    "lookup refused: the name is {} bytes, longer than {MAX_NAME_BYTES}",
                    name.len()
                ),
            ))
        } else if literal.is_some() || allowed_name.is_some() {
            Ok(())
        } else {
            Err((
                ErrorCode::AccessDenied,
                format!(
                    "lookup of `{name}` refused before any query was sent: it is not a host name in resourceLimits.allowedNetworkHosts; add `{name}:PORT` to allow it"
                ),
            ))
        };
        let code = match &verdict {
            Err((code, _)) => *code,
            // Refused by the access gate.
            Ok(()) => ErrorCode::AccessDenied,
        };
        // Room first, so that an attempt counts once: refused for the cap, or decided.
        if verdict.is_ok() {
            self.reserve(1, "resolve-addresses")?;
        }
        // Decided on the name as the allow-list reads it (lower case, no trailing dot), so
        // that `LocalHost.` meets the rules written for `network/localhost`.
        let target = allowed_name.clone().unwrap_or_else(|| name.clone());
        if !decide(shared, &target, "resolve", verdict.map_err(|(_, why)| why)) {
            return Err(code.into());
        }
        let lookup = match (literal, allowed_name) {
            (Some(ip), _) => Lookup::ready(Ok(vec![ip.to_canonical()])),
            (None, Some(allowed)) => Lookup::spawn(allowed, self.shared.clone()),
            (None, None) => unreachable!("refused above"),
        };
        let handle = self.inner.table.push(lookup)?;
        Ok(Resource::new_own(handle.rep()))
    }
}

impl HostResolveAddressStream for Sockets<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> SocketResult<Option<IpAddress>> {
        let lookup = self.inner.table.get_mut(&borrowed(&stream))?;
        if lookup
            .poll_answer(&mut Context::from_waker(Waker::noop()))
            .is_pending()
        {
            return Err(ErrorCode::WouldBlock.into());
        }
        match &mut lookup.state {
            LookupState::Ready(Ok(addrs)) => Ok(addrs.next().map(IpAddress::from)),
            LookupState::Ready(Err(code)) => Err((*code).into()),
            LookupState::Pending(_) => unreachable!("polled to completion above"),
        }
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(self.inner.table, borrowed(&stream))
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.inner.table.delete(own(&stream))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_parse_names_do_not() {
        assert_eq!(ip_literal("127.0.0.1"), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(ip_literal("::1"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(ip_literal("[::1]"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        for name in [
            "localhost",
            "127.1",
            "0x7f.0.0.1",
            "[127.0.0.1]",
            "::1]",
            "",
        ] {
            assert_eq!(ip_literal(name), None, "{name}");
        }
    }
}
