//! `allowedNetworkHosts` entries: `HOST:PORT` patterns.

use crate::error::{Error, Result};
use std::net::IpAddr;

/// One parsed `allowedNetworkHosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPattern {
    /// The pattern as written.
    pub text: String,
    /// Host part: an IP glob (`127.0.0.*`, `*`) or a host name to resolve at spawn.
    pub host: HostPattern,
    /// Port part.
    pub ports: PortPattern,
}

/// Host part of a [`NetworkPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Glob over the textual IP address (`*` matches any address).
    IpGlob(String),
    /// A host name, resolved to addresses when the agent is spawned.
    Name(String),
}

/// Port part of a [`NetworkPattern`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    /// Any port.
    Any,
    /// An inclusive range.
    Range(u16, u16),
}

impl PortPattern {
    /// Whether `port` matches.
    pub fn matches(self, port: u16) -> bool {
        match self {
            PortPattern::Any => true,
            PortPattern::Range(lo, hi) => (lo..=hi).contains(&port),
        }
    }
}

impl NetworkPattern {
    /// Parses `HOST:PORT`, `[IPv6]:PORT`; `PORT` is a number, `LO-HI` or `*`.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::field(
                field,
                format!(
                    "`{text}` {why}; write HOST:PORT, e.g. `127.0.0.1:8080`, `10.0.0.*:443`, `api.example.com:443` or `[::1]:*`"
                ),
            )
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(|| bad("has no port"))?;
            (host, port)
        } else {
            text.rsplit_once(':').ok_or_else(|| bad("has no port"))?
        };
        if host.is_empty() {
            return Err(bad("has an empty host"));
        }
        let ports = if port == "*" {
            PortPattern::Any
        } else if let Some((lo, hi)) = port.split_once('-') {
            let lo: u16 = lo.parse().map_err(|_| bad("has an invalid port range"))?;
            let hi: u16 = hi.parse().map_err(|_| bad("has an invalid port range"))?;
            if lo > hi {
                return Err(bad("has a port range whose start is above its end"));
            }
            PortPattern::Range(lo, hi)
        } else {
            let p: u16 = port.parse().map_err(|_| bad("has an invalid port"))?;
            PortPattern::Range(p, p)
        };
        let is_ip_glob = host.parse::<IpAddr>().is_ok()
            || host == "*"
            || host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || ".:*?".contains(c));
        let host = if is_ip_glob {
            globset::Glob::new(host)
                .map_err(|e| bad(&format!("has an invalid host glob ({e})")))?;
            HostPattern::IpGlob(host.to_string())
        } else if host.contains(['*', '?', '[']) {
            return Err(bad(
                "uses a wildcard host name, which cannot be enforced at the socket level (names resolve to addresses); list each host name, or use an IP glob",
            ));
        } else {
            HostPattern::Name(host.to_ascii_lowercase())
        };
        Ok(NetworkPattern {
            text: text.to_string(),
            host,
            ports,
        })
    }

    /// Whether the pattern matches every address.
    pub fn matches_everything(&self) -> bool {
        self.host == HostPattern::IpGlob("*".into()) && self.ports == PortPattern::Any
    }
}
