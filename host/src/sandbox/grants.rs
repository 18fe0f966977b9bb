//! What an agent may do, resolved once from its spec at spawn: tool and prohibition globs, the
//! network allow-list and the opened directories.

use crate::spec::{
    FileSystemAccess, HostPattern, IsolationLevel, NetworkAccessLevel, NetworkPattern,
    SubAgentSpecification,
};
use crate::tools::Preopen;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use wasmtime_wasi::sockets::SocketAddrUse;

/// What an agent may do, resolved from its spec when it is spawned.
#[derive(Debug)]
pub struct Grants {
    /// Tool names the agent may call.
    pub allowed_tools: GlobSet,
    /// Operations refused whatever else allows them.
    pub prohibited: GlobSet,
    /// Network rules; empty means deny all.
    pub network: Vec<NetworkRule>,
    /// All addresses allowed (`networkAccessLevel: full`, monitored level).
    pub network_any: bool,
    /// Directories the agent sees.
    pub preopens: Vec<Preopen>,
    /// Record every host call.
    pub monitored: bool,
}

/// A resolved `allowedNetworkHosts` entry.
#[derive(Debug, Clone)]
pub struct NetworkRule {
    hosts: RuleHosts,
    ports: crate::spec::PortPattern,
}

#[derive(Debug, Clone)]
enum RuleHosts {
    Glob(globset::GlobMatcher),
    Addrs(Vec<IpAddr>),
}

impl NetworkRule {
    fn matches(&self, addr: SocketAddr) -> bool {
        if !self.ports.matches(addr.port()) {
            return false;
        }
        let ip = canonical_ip(addr.ip());
        match &self.hosts {
            RuleHosts::Glob(g) => g.is_match(ip.to_string()),
            RuleHosts::Addrs(addrs) => addrs.iter().any(|a| canonical_ip(*a) == ip),
        }
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Grants {
    /// Whether `operation` (a tool name or `network` / `filesystem-write`) is prohibited.
    pub fn is_prohibited(&self, operation: &str) -> bool {
        self.prohibited.is_match(operation)
    }

    /// Whether the agent may call tool `name`: allowed and not prohibited.
    pub fn tool_allowed(&self, name: &str) -> bool {
        self.allowed_tools.is_match(name) && !self.is_prohibited(name)
    }

    /// Whether a socket use is allowed.
    pub fn socket_allowed(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        if self.is_prohibited("network") {
            return false;
        }
        if !self.network_any && self.network.is_empty() {
            return false;
        }
        match usage {
            // Agents are clients: no listening sockets, no accepting.
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
            // Implicit binds before a connect use the unspecified address.
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => addr.ip().is_unspecified(),
            _ => self.network_any || self.network.iter().any(|r| r.matches(addr)),
        }
    }
}

fn globset(field: &str, patterns: &[String]) -> anyhow::Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| anyhow::anyhow!("{field}: `{p}`: {e}"))?);
    }
    Ok(b.build()?)
}

/// Resolves grants from a validated spec: compiles globs, resolves host names in the network
/// allow-list and opens the granted directories.
pub async fn resolve_grants(spec: &SubAgentSpecification) -> crate::Result<Grants> {
    let sec = &spec.security_constraints;
    let allowed_tools = globset("securityConstraints.allowedTools", &sec.allowed_tools)?;
    let prohibited = globset(
        "securityConstraints.prohibitedOperations",
        &sec.prohibited_operations,
    )?;
    let mut network = Vec::new();
    for NetworkPattern { text, host, ports } in spec.network_patterns()? {
        let hosts = match host {
            HostPattern::IpGlob(g) => RuleHosts::Glob(
                Glob::new(&g)
                    .map_err(|e| {
                        crate::Error::field("resourceLimits.allowedNetworkHosts", e.to_string())
                    })?
                    .compile_matcher(),
            ),
            HostPattern::Name(name) => {
                let addrs: Vec<IpAddr> = tokio::net::lookup_host((name.as_str(), 0))
                    .await
                    .map_err(|e| {
                        crate::Error::field(
                            "resourceLimits.allowedNetworkHosts",
                            format!("cannot resolve `{name}` from `{text}`: {e}"),
                        )
                    })?
                    .map(|a| a.ip())
                    .collect();
                RuleHosts::Addrs(addrs)
            }
        };
        network.push(NetworkRule { hosts, ports });
    }
    let no_writes = sec.file_system_access == FileSystemAccess::ReadOnly
        || prohibited.is_match("filesystem-write");
    let mut preopens = Vec::new();
    for (i, grant) in spec.directories.iter().enumerate() {
        let writable = !no_writes
            && grant
                .writable
                .unwrap_or(sec.file_system_access == FileSystemAccess::Full);
        let dir =
            cap_std::fs::Dir::open_ambient_dir(&grant.host_path, cap_std::ambient_authority())
                .map_err(|e| {
                    crate::Error::field(
                        format!("directories[{i}].hostPath"),
                        format!("cannot open `{}`: {e}", grant.host_path.display()),
                    )
                })?;
        preopens.push(Preopen {
            guest_path: match grant.guest_path.trim_end_matches('/') {
                "" => "/".to_string(),
                g => g.to_string(),
            },
            host_path: grant.host_path.clone(),
            dir: Arc::new(dir),
            writable,
        });
    }
    Ok(Grants {
        allowed_tools,
        prohibited,
        network_any: sec.network_access_level == NetworkAccessLevel::Full,
        network,
        preopens,
        monitored: spec.isolation_level == IsolationLevel::Monitored || sec.resource_monitoring,
    })
}
