//! Validation of a [`SubAgentSpecification`]: every field, the host's ceilings and the
//! isolation level's ceilings; the error names the first offending field and what is allowed.

use super::{
    DEFAULT_FUEL_YIELD_INTERVAL, DEFAULT_MAX_LOG_BYTES, DEFAULT_MAX_OUTPUT_BYTES, FileSystemAccess,
    IsolationCeilings, IsolationLevel, KNOWN_OVERRIDES, NetworkAccessLevel, NetworkPattern,
    ResolvedOverrides, SpecCeilings, SubAgentSpecification,
};
use crate::error::{Error, Result};

impl SubAgentSpecification {
    /// Checks every field; the error names the first offending one and what is allowed.
    pub fn validate(&self, ceilings: &SpecCeilings) -> Result<ResolvedOverrides> {
        let limits = &self.resource_limits;
        let sec = &self.security_constraints;
        let level = self.isolation_level;

        if limits.max_memory_mb == 0 || limits.max_memory_mb > ceilings.max_memory_mb {
            return Err(Error::field(
                "resourceLimits.maxMemoryMB",
                format!(
                    "must be between 1 and {} (the host's ceiling), got {}",
                    ceilings.max_memory_mb, limits.max_memory_mb
                ),
            ));
        }
        if limits.max_execution_time_ms == 0
            || limits.max_execution_time_ms > ceilings.max_execution_time_ms
        {
            return Err(Error::field(
                "resourceLimits.maxExecutionTimeMs",
                format!(
                    "must be between 1 and {}, got {}",
                    ceilings.max_execution_time_ms, limits.max_execution_time_ms
                ),
            ));
        }
        if limits.max_concurrent_operations == 0 {
            return Err(Error::field(
                "resourceLimits.maxConcurrentOperations",
                "must be at least 1 (an agent's host calls are one at a time unless it batches)",
            ));
        }
        if self.fuel == 0 {
            return Err(Error::field(
                "fuel",
                "must be at least 1; a small agent needs a few hundred thousand units",
            ));
        }
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        if !sec.sandbox_enabled {
            return Err(Error::field(
                "securityConstraints.sandboxEnabled",
                "must be true: qi-host never runs an agent outside its sandbox",
            ));
        }
        for (i, cap) in self.capabilities.iter().enumerate() {
            if cap.trim().is_empty() {
                return Err(Error::field(
                    format!("capabilities[{i}]"),
                    "is empty; name a capability such as `code-analysis`",
                ));
            }
        }
        for (i, pattern) in sec
            .allowed_tools
            .iter()
            .chain(&sec.prohibited_operations)
            .enumerate()
        {
            let field = if i < sec.allowed_tools.len() {
                format!("securityConstraints.allowedTools[{i}]")
            } else {
                format!(
                    "securityConstraints.prohibitedOperations[{}]",
                    i - sec.allowed_tools.len()
                )
            };
            globset::Glob::new(pattern).map_err(|e| {
                Error::field(field, format!("`{pattern}` is not a valid glob: {e}"))
            })?;
        }
        if sec.allowed_models.len() > MAX_MODEL_PATTERNS {
            return Err(Error::field(
                "securityConstraints.allowedModels",
                format!(
                    "{} patterns; at most {MAX_MODEL_PATTERNS}",
                    sec.allowed_models.len()
                ),
            ));
        }
        for (i, pattern) in sec.allowed_models.iter().enumerate() {
            globset::Glob::new(pattern).map_err(|e| {
                Error::field(
                    format!("securityConstraints.allowedModels[{i}]"),
                    format!("`{pattern}` is not a valid glob: {e}"),
                )
            })?;
        }
        if let Some(usd) = limits.max_cost_usd
            && !(usd.is_finite() && usd >= 0.0)
        {
            return Err(Error::field(
                "resourceLimits.maxCostUsd",
                format!("{usd} is not an amount; give US dollars, 0 or more"),
            ));
        }
        let mut patterns = Vec::new();
        for (i, text) in limits.allowed_network_hosts.iter().enumerate() {
            patterns.push(NetworkPattern::parse(
                &format!("resourceLimits.allowedNetworkHosts[{i}]"),
                text,
            )?);
        }
        if sec.network_access_level == NetworkAccessLevel::None && !patterns.is_empty() {
            return Err(Error::field(
                "resourceLimits.allowedNetworkHosts",
                "lists hosts but securityConstraints.networkAccessLevel is `none`; set it to `restricted`",
            ));
        }
        for (i, dir) in self.directories.iter().enumerate() {
            if !dir.guest_path.starts_with('/') {
                return Err(Error::field(
                    format!("directories[{i}].guestPath"),
                    format!("`{}` must be absolute, e.g. `/workspace`", dir.guest_path),
                ));
            }
            if dir.guest_path.split('/').any(|c| c == ".." || c == ".") {
                return Err(Error::field(
                    format!("directories[{i}].guestPath"),
                    format!("`{}` must not contain `.` or `..`", dir.guest_path),
                ));
            }
            if !dir.host_path.is_dir() {
                return Err(Error::field(
                    format!("directories[{i}].hostPath"),
                    format!("`{}` is not an existing directory", dir.host_path.display()),
                ));
            }
        }

        // Isolation ceilings (DESIGN.md table).
        let ceiling = |field: &str, message: &str| Error::IsolationCeiling {
            field: field.to_string(),
            level: level.as_str().to_string(),
            message: message.to_string(),
        };
        match level {
            IsolationLevel::Sandbox => {
                if !self.directories.is_empty() {
                    return Err(ceiling(
                        "directories",
                        "a sandboxed agent sees no filesystem; remove the directories or use `restricted`",
                    ));
                }
                if sec.network_access_level != NetworkAccessLevel::None {
                    return Err(ceiling(
                        "securityConstraints.networkAccessLevel",
                        "a sandboxed agent has no network; set it to `none` or use `restricted`",
                    ));
                }
            }
            IsolationLevel::Restricted => {
                if sec.file_system_access == FileSystemAccess::Full {
                    return Err(ceiling(
                        "securityConstraints.fileSystemAccess",
                        "`full` needs `monitored`; use `read-only` or `restricted`",
                    ));
                }
                if sec.network_access_level == NetworkAccessLevel::Full {
                    return Err(ceiling(
                        "securityConstraints.networkAccessLevel",
                        "`full` needs `monitored`; use `restricted` with allowedNetworkHosts",
                    ));
                }
                if let Some(p) = patterns.iter().find(|p| p.matches_everything()) {
                    return Err(ceiling(
                        "resourceLimits.allowedNetworkHosts",
                        &format!(
                            "`{}` allows every address; list the hosts the agent needs",
                            p.text
                        ),
                    ));
                }
            }
            IsolationLevel::Monitored => {}
        }

        let mut resolved = ResolvedOverrides {
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            fuel_yield_interval: DEFAULT_FUEL_YIELD_INTERVAL,
        };
        for (key, value) in &self.configuration_overrides {
            let field = format!("configurationOverrides.{key}");
            let number = || {
                value.as_u64().filter(|v| *v > 0).ok_or_else(|| {
                    Error::field(
                        field.clone(),
                        format!("must be a positive integer, got {value}"),
                    )
                })
            };
            match key.as_str() {
                "maxOutputBytes" => {
                    let v = number()?;
                    if v > ceilings.max_output_bytes {
                        return Err(Error::field(
                            field,
                            format!(
                                "must be at most {} (the host's ceiling), got {v}",
                                ceilings.max_output_bytes
                            ),
                        ));
                    }
                    resolved.max_output_bytes = v;
                }
                "maxLogBytes" => resolved.max_log_bytes = number()?,
                "fuelYieldInterval" => resolved.fuel_yield_interval = number()?,
                other => {
                    return Err(Error::field(
                        field,
                        format!("`{other}` is not a known override; known: {KNOWN_OVERRIDES}"),
                    ));
                }
            }
        }
        let ceilings = IsolationCeilings::of(level);
        for (field, asked, ceiling) in ceilings.checks(self, &resolved) {
            if asked > ceiling {
                return Err(Error::IsolationCeiling {
                    field: field.to_string(),
                    level: level.as_str().to_string(),
                    message: format!(
                        "asks for {asked}, over the level's ceiling of {ceiling}; ask for at most {ceiling}{}",
                        if level == IsolationLevel::Monitored {
                            ""
                        } else {
                            ", or use a less strict isolation level (see the README's limit table)"
                        }
                    ),
                });
            }
        }
        Ok(resolved)
    }

    /// The parsed `allowedNetworkHosts` (call after [`validate`](Self::validate)).
    pub fn network_patterns(&self) -> Result<Vec<NetworkPattern>> {
        self.resource_limits
            .allowed_network_hosts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                NetworkPattern::parse(&format!("resourceLimits.allowedNetworkHosts[{i}]"), t)
            })
            .collect()
    }
}

/// Most `securityConstraints.allowedModels` patterns.
pub const MAX_MODEL_PATTERNS: usize = 256;

/// Longest agent name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// An agent name (`spec.name`, a manifest's agent kind, `--name`) is what access policies
/// match besides the host-assigned id, so it must not be able to pass for another identity:
/// not an `agent-…` id (policies written for one agent id would match it), not `operator`
/// (the context store's and key holder's operator identity), and plain text (1 to 128 letters,
/// digits, `-`, `_`, `.`) so that it reads the same in policies, audit entries and reports.
fn validate_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::field("name", format!("`{name}` {why}")));
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return bad(&format!("must be 1 to {MAX_NAME_BYTES} bytes long"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("may hold only ASCII letters, digits, `-`, `_` and `.`");
    }
    if name.starts_with("agent-") {
        return bad("looks like a host-assigned id; `agent-` names are the host's agent ids");
    }
    if name == crate::context::OPERATOR {
        return bad("is reserved for the operator");
    }
    Ok(())
}
