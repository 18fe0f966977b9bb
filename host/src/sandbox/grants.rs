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
    /// Model names and ids the agent may call (`securityConstraints.allowedModels`).
    pub allowed_models: GlobSet,
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
    /// A host name (lower case, no trailing dot) and the addresses it had at spawn.
    Name {
        name: String,
        addrs: Vec<IpAddr>,
    },
}

impl NetworkRule {
    fn matches(&self, addr: SocketAddr) -> bool {
        self.ports.matches(addr.port()) && self.admits(addr.ip())
    }

    /// Whether the rule admits `ip` on some port.
    fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match &self.hosts {
            RuleHosts::Glob(g) => g.is_match(ip.to_string()),
            RuleHosts::Name { addrs, .. } => addrs.iter().any(|a| canonical_ip(*a) == ip),
        }
    }
}

/// `name` as the allow-list compares it: ASCII lower case, one trailing dot dropped.
fn normalized_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
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

    /// Whether the agent may call the model it named `name`, which resolves to `id`: a pattern
    /// of `allowedModels` matches either, and `llm` is not prohibited.
    pub fn model_allowed(&self, name: &str, id: &str) -> bool {
        (self.allowed_models.is_match(name) || self.allowed_models.is_match(id))
            && !self.is_prohibited("llm")
    }

    /// Whether the agent has any network at all: `networkAccessLevel: full`, or at least one
    /// `allowedNetworkHosts` entry, and `network` not in `prohibitedOperations`.
    pub fn network_on(&self) -> bool {
        (self.network_any || !self.network.is_empty()) && !self.is_prohibited("network")
    }

    /// Whether a socket use is allowed; `Err` says why not and which field would allow it.
    ///
    /// Agents are clients: listening and accepting are always refused, and the only bind
    /// allowed is to the unspecified address and port 0 (the implicit bind before a connect or
    /// send).
    /// Connects, sends and receives need an address `allowedNetworkHosts` matches (any address
    /// with `networkAccessLevel: full`).
    pub fn socket_allowed(&self, addr: SocketAddr, usage: SocketAddrUse) -> Result<(), String> {
        if self.is_prohibited("network") {
            return Err("`network` is in securityConstraints.prohibitedOperations".into());
        }
        if !self.network_on() {
            return Err(
                "the agent has no network: list the address in resourceLimits.allowedNetworkHosts"
                    .into(),
            );
        }
        match usage {
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => {
                Err("agents may not listen for or accept connections".into())
            }
            // Port 0: the system picks a free ephemeral port. A chosen port would let an agent
            // hold a port the host or another program needs (any port, privileged ones too
            // when the host runs as root) and, for UDP, receive what is sent to it.
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind
                if addr.ip().is_unspecified() && addr.port() == 0 =>
            {
                Ok(())
            }
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => Err(format!(
                "agents may bind only to the unspecified address and port 0 (a port the system \
                 picks), not {addr}"
            )),
            _ if self.network_any || self.network.iter().any(|r| r.matches(addr)) => Ok(()),
            _ => Err(format!(
                "{addr} is not in resourceLimits.allowedNetworkHosts; add it (e.g. `{addr}`) to allow it"
            )),
        }
    }

    /// The allow-list's spelling of host name `name` when an `allowedNetworkHosts` entry names
    /// it (ASCII case and one trailing dot ignored), else `None`. With
    /// `networkAccessLevel: full` every name is allowed and returned as given (normalized).
    pub fn allowed_name(&self, name: &str) -> Option<String> {
        if !self.network_on() {
            return None;
        }
        let wanted = normalized_name(name);
        if self.network_any {
            return Some(wanted);
        }
        self.network.iter().find_map(|r| match &r.hosts {
            RuleHosts::Name { name, .. } if *name == wanted => Some(name.clone()),
            _ => None,
        })
    }

    /// Whether some `allowedNetworkHosts` entry admits `ip` on some port (always, with
    /// `networkAccessLevel: full`): the filter on the addresses a name lookup returns.
    pub fn address_admitted(&self, ip: IpAddr) -> bool {
        self.network_on() && (self.network_any || self.network.iter().any(|r| r.admits(ip)))
    }
}

fn globset(field: &str, patterns: &[String]) -> anyhow::Result<GlobSet> {
    if patterns.is_empty() {
        return Ok(GlobSet::empty());
    }
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
    let allowed_models = globset("securityConstraints.allowedModels", &sec.allowed_models)?;
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
                RuleHosts::Name {
                    name: normalized_name(&name),
                    addrs,
                }
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
            // As every file is named: `/workspace/`, `//workspace` are `/workspace`.
            guest_path: crate::model::normalize_guest_path(&grant.guest_path)
                .unwrap_or_else(|| grant.guest_path.clone()),
            host_path: grant.host_path.clone(),
            dir: Arc::new(dir),
            writable,
        });
    }
    check_nested_grants(&preopens)?;
    Ok(Grants {
        allowed_tools,
        prohibited,
        network_any: sec.network_access_level == NetworkAccessLevel::Full,
        network,
        preopens,
        monitored: spec.isolation_level == IsolationLevel::Monitored || sec.resource_monitoring,
        allowed_models,
    })
}

/// Refuses a read-only grant whose directory is inside (or is) the directory of a writable
/// grant of the same agent: the agent could write the read-only data through the writable
/// mount. Compared on the real paths of the opened directories, so a link in a host path
/// does not hide the overlap. (A writable grant inside a read-only one is fine: that part is
/// writable anyway.)
fn check_nested_grants(preopens: &[Preopen]) -> crate::Result<()> {
    let real =
        |p: &Preopen| real_path(&*p.dir).or_else(|| std::fs::canonicalize(&p.host_path).ok());
    let paths: Vec<_> = preopens.iter().map(real).collect();
    for (i, (ro, ro_path)) in preopens.iter().zip(&paths).enumerate() {
        let Some(ro_path) = ro_path.as_ref().filter(|_| !ro.writable) else {
            continue;
        };
        for (j, (rw, rw_path)) in preopens.iter().zip(&paths).enumerate() {
            if rw.writable
                && let Some(rw_path) = rw_path
                && ro_path.starts_with(rw_path)
            {
                return Err(crate::Error::field(
                    format!("directories[{i}].hostPath"),
                    format!(
                        "`{}` is granted read-only at `{}` but is inside `{}`, granted read-write \
                         at `{}` (directories[{j}]), through which the agent could change it; \
                         grant it read-write, or grant a read-write directory beside it",
                        ro.host_path.display(),
                        ro.guest_path,
                        rw.host_path.display(),
                        rw.guest_path,
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The real host path of an open file or directory (Linux: `/proc/self/fd`), `None` elsewhere.
pub(crate) fn real_path(file: &impl std::os::fd::AsFd) -> Option<std::path::PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_fd().as_raw_fd())).ok()
}
