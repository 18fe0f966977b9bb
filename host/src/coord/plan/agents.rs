//! Loading and describing a manifest's agents, and which subtasks each can run.

use super::*;

/// Loads, describes and validates every agent of the manifest (each is spawned once and
/// dropped, so its spec is checked by the same code as at run time). Each must start and
/// answer within the host's `describe_limit_ms` (`HostConfig`); one that takes longer is
/// refused naming the agent, instead of holding `plan` and `run` for its whole time limit.
pub async fn prepare_agents(
    host: &AgentHost,
    manifest: &Manifest,
    text: &str,
    path: &Path,
    guest_dir: &Path,
) -> Result<BTreeMap<String, PreparedAgent>, Error> {
    let base = Manifest::base_dir(path);
    let mut out = BTreeMap::new();
    for (name, def) in &manifest.agents {
        let key = format!("agents.{name}");
        let file = match def.component.strip_prefix("guest:") {
            Some(g) => guest_dir.join(format!("guest_{}.wasm", g.replace('-', "_"))),
            None => base.join(&def.component),
        };
        if !file.is_file() {
            let hint = if def.component.starts_with("guest:") {
                format!(
                    "bundled guests are built by `cargo build -p qi-guest-artifacts`; looked in {} (set --guest-dir or QI_GUEST_DIR to change)",
                    guest_dir.display()
                )
            } else {
                "paths are relative to the manifest's directory".to_string()
            };
            return Err(manifest_error(
                text,
                path,
                format!("{key}.component"),
                Some(&def.component),
                format!(
                    "component `{}` not found at {}; {hint}",
                    def.component,
                    file.display()
                ),
            ));
        }
        let component = host.load(&file).map_err(|e| {
            manifest_error(
                text,
                path,
                format!("{key}.component"),
                Some(&def.component),
                e.to_string(),
            )
        })?;
        let mut spec = def.spec.clone();
        for d in &mut spec.directories {
            if d.host_path.is_relative() {
                d.host_path = base.join(&d.host_path);
            }
        }
        let limit_ms = host.runtime().config().describe_limit_ms;
        let limit = std::time::Duration::from_millis(limit_ms);
        let agent = tokio::time::timeout(limit, host.spawn(&component, spec.clone()))
            .await
            .map_err(|_| {
                manifest_error(
                    text,
                    path,
                    key.clone(),
                    Some(name),
                    format!(
                        "the agent did not start and answer describe() within {limit_ms} ms \
                         (the host's describe_limit_ms); describe() must return at once"
                    ),
                )
            })?
            .map_err(|e| match &e {
                Error::InvalidField { field, message }
                | Error::Spawn(crate::error::AgentFailure::NotDeclared { field, message }, _)
                | Error::IsolationCeiling { field, message, .. } => manifest_error(
                    text,
                    path,
                    format!("{key}.spec.{field}"),
                    Some(name),
                    match &e {
                        Error::IsolationCeiling { level, .. } => {
                            format!("not allowed at isolation level `{level}`: {message}")
                        }
                        _ => message.clone(),
                    },
                ),
                _ => manifest_error(text, path, key.clone(), Some(name), e.to_string()),
            })?;
        let description = agent.description().clone();
        drop(agent);
        let capabilities = spec
            .capabilities
            .iter()
            .chain(&description.capabilities)
            .cloned()
            .collect();
        out.insert(
            name.clone(),
            PreparedAgent {
                name: name.clone(),
                component,
                spec,
                config: def.config.clone(),
                description,
                capabilities,
            },
        );
    }
    Ok(out)
}

/// Why `agent` cannot run subtask `id`, or `None` when it can.
pub(super) fn incapable(manifest: &Manifest, id: &str, agent: &PreparedAgent) -> Option<String> {
    let s = manifest.subtask(id)?;
    let r = &s.requirements;
    if let Some(c) = r
        .capabilities
        .iter()
        .find(|c| !agent.capabilities.contains(*c))
    {
        return Some(format!("lacks capability `{c}`"));
    }
    if !r.security_level.allows(agent.spec.isolation_level) {
        return Some(format!(
            "runs at isolation `{}`, below security level {}",
            agent.spec.isolation_level.as_str(),
            match r.security_level {
                SecurityLevel::Low => "low",
                SecurityLevel::Medium => "medium (needs sandbox or restricted)",
                SecurityLevel::High => "high (needs sandbox)",
            }
        ));
    }
    if let Some(t) = r.agent_type
        && agent.description.agent_type != t
    {
        return Some(format!(
            "is {:?}, not {:?}",
            agent.description.agent_type, t
        ));
    }
    if let Some(v) = &r.minimum_version
        && !version_at_least(&agent.description.version, v)
    {
        return Some(format!(
            "is version {}, below {v}",
            agent.description.version
        ));
    }
    let c = &s.constraints;
    if c.requires_network
        && agent.spec.security_constraints.network_access_level == NetworkAccessLevel::None
    {
        return Some("has no network access".into());
    }
    if let Some(tools) = &c.allowed_tools {
        let allowed = &agent.spec.security_constraints.allowed_tools;
        if let Some(t) = tools.iter().find(|t| {
            !allowed.iter().any(|p| {
                globset::Glob::new(p)
                    .map(|g| g.compile_matcher().is_match(t.as_str()))
                    .unwrap_or(false)
            })
        }) {
            return Some(format!("is not allowed tool `{t}`"));
        }
    }
    None
}
