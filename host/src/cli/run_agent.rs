//! `qi-host run-agent`: one agent, one task, a report.

use super::RunAgentArgs;
use crate::agents::{AgentHost, AgentReport, TaskRequest};
use crate::engine::HostConfig;
use crate::error::Error;
use crate::spec::{
    DirectoryGrant, FileSystemAccess, IsolationLevel, NetworkAccessLevel, SubAgentSpecification,
};

fn build_spec(args: &RunAgentArgs) -> Result<SubAgentSpecification, Error> {
    let mut spec = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::field("--spec", format!("cannot read `{}`: {e}", path.display()))
            })?;
            serde_json::from_str(&text).map_err(|e| {
                Error::field(
                    "--spec",
                    format!(
                        "`{}` is not a valid SubAgentSpecification: {e}",
                        path.display()
                    ),
                )
            })?
        }
        None => SubAgentSpecification::default(),
    };
    let limits = &mut spec.resource_limits;
    if let Some(v) = args.max_memory_mb {
        limits.max_memory_mb = v;
    }
    if let Some(v) = args.timeout_ms {
        limits.max_execution_time_ms = v;
    }
    if let Some(v) = args.max_tool_calls {
        limits.max_tool_calls = v;
    }
    if let Some(v) = args.max_file_operations {
        limits.max_file_operations = v;
    }
    if let Some(v) = args.fuel {
        spec.fuel = v;
    }
    if let Some(name) = &args.name {
        spec.name = Some(name.clone());
    }
    for d in &args.dirs {
        spec.directories.push(DirectoryGrant::parse(d)?);
    }
    if spec.directories.iter().any(|d| d.writable == Some(true))
        && spec.security_constraints.file_system_access == FileSystemAccess::ReadOnly
    {
        spec.security_constraints.file_system_access = FileSystemAccess::Restricted;
    }
    if !args.allow_hosts.is_empty() {
        spec.resource_limits
            .allowed_network_hosts
            .extend(args.allow_hosts.iter().cloned());
        if spec.security_constraints.network_access_level == NetworkAccessLevel::None {
            spec.security_constraints.network_access_level = NetworkAccessLevel::Restricted;
        }
    }
    spec.security_constraints
        .allowed_tools
        .extend(args.allow_tools.iter().cloned());
    spec.security_constraints
        .allowed_models
        .extend(args.allow_models.iter().cloned());
    match args.isolation {
        Some(level) => spec.isolation_level = level,
        None if args.spec.is_none() && (!args.dirs.is_empty() || !args.allow_hosts.is_empty()) => {
            spec.isolation_level = IsolationLevel::Restricted
        }
        None => {}
    }
    Ok(spec)
}

pub(super) async fn run_agent(args: RunAgentArgs) -> Result<i32, Error> {
    let spec = build_spec(&args)?;
    let input = match &args.input {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Error::field("--input", format!("not valid JSON: {e}")))?,
        None => serde_json::Value::Null,
    };
    let mut host = AgentHost::new(HostConfig {
        max_live_agents: 16,
        ..HostConfig::default()
    })?;
    let policies = crate::cli::state::load_policies(args.policies.as_deref())?;
    let mut audit = None;
    let mut access = None;
    let mut store = None;
    if let Some(dir) = &args.data_dir {
        let s = crate::cli::state::open_secured(dir, args.key_file.as_deref(), policies).await?;
        store = Some(s.context.store().clone());
        audit = Some(s.audit);
        access = Some(s.access.clone());
        host = host.with_context(s.context).with_access(s.access);
    } else if policies.is_some() {
        let a = std::sync::Arc::new(crate::security::AccessControl::new(policies, None));
        access = Some(a.clone());
        host = host.with_access(a);
    }
    if let Some(broker) = args.llm.broker(None, store, args.key_file.as_deref())? {
        host = host.with_llm(broker);
    }
    // The file is re-read when it changes, as `run` does.
    let watcher = args
        .policies
        .clone()
        .zip(access)
        .map(|(p, a)| crate::cli::run::watch_policies(p, a));
    let component = host.load(&args.component)?;
    let report = host
        .run(&component, spec, TaskRequest::new(args.task.clone(), input))
        .await;
    if let Some(w) = watcher {
        w.abort();
    }
    if let Some(a) = &audit {
        // Also when the spawn failed: its entries (`spawn-failed`, limit violations) may be
        // waiting in the writer's batch window, and the process ends with this error.
        a.flush().await;
    }
    let mut report = report?;
    if let Some(a) = &audit {
        report.audit_head = Some(a.head().await.map_err(|e| Error::System(e.into()))?);
        let status = a.status();
        if let Some(failure) = &status.failure {
            eprintln!(
                "warning: the audit log failed during the run ({failure}); {} entries lost, \
                 later gated calls were refused",
                status.lost
            );
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::System(e.into()))?
        );
    } else {
        print_report(&report);
    }
    Ok(if report.failure.is_some() { 1 } else { 0 })
}

fn print_report(r: &AgentReport) {
    if let Some(a) = &r.agent {
        println!("agent     {} {} ({})", a.name, a.version, r.agent_id);
    }
    println!("status    {:?}", r.status);
    match (&r.output, &r.failure) {
        (Some(out), _) => {
            let text = serde_json::to_string_pretty(out).unwrap_or_default();
            println!("output\n{text}");
        }
        (_, Some(f)) => println!("failure   [{}] {f}", f.category()),
        _ => {}
    }
    for log in &r.logs {
        let fields: String = log
            .fields
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect();
        println!("log       {:<5} {}{fields}", log.level, log.message);
    }
    if let Some(h) = &r.audit_head {
        println!("audit     head {h}");
    }
    let u = &r.usage;
    println!("usage");
    let rows: [(&str, String); 20] = [
        ("fuel consumed", u.fuel_consumed.to_string()),
        ("peak memory", format!("{} bytes", u.peak_memory_bytes)),
        (
            "wall time",
            format!("{:.3} ms", u.wall_time_us as f64 / 1000.0),
        ),
        ("host calls", u.host_calls.to_string()),
        ("tool calls", u.tool_calls.to_string()),
        ("file operations", u.file_operations.to_string()),
        ("network allowed", u.network_allowed.to_string()),
        ("network denied", u.network_denied.to_string()),
        ("dns lookups", u.dns_lookups.to_string()),
        ("disk bytes added", u.disk_bytes_written.to_string()),
        ("files created", u.files_created.to_string()),
        ("access denied", u.access_denied.to_string()),
        ("log bytes", u.log_bytes.to_string()),
        ("wasi calls", u.wasi_calls.to_string()),
        ("stdout bytes", u.stdout_bytes.to_string()),
        ("stderr bytes", u.stderr_bytes.to_string()),
        (
            "stdio dropped",
            format!("{} + {} bytes", u.stdout_dropped, u.stderr_dropped),
        ),
        (
            "model calls",
            format!("{} ({} replayed)", u.llm_calls, u.llm_replayed),
        ),
        (
            "model tokens",
            format!("{} in, {} out", u.input_tokens, u.output_tokens),
        ),
        ("model cost", format!("${:.6}", u.cost)),
    ];
    for (k, v) in rows {
        println!("  {k:<16} {v}");
    }
    if !r.host_call_log.is_empty() {
        println!("host calls (monitored)");
        for c in &r.host_call_log {
            println!(
                "  {:<16} {:<24} {:>8} B {:>8} us  {}",
                c.call, c.target, c.arg_bytes, c.duration_us, c.outcome
            );
        }
    }
    if r.failure.is_some() && !r.stderr.trim().is_empty() {
        println!("stderr\n{}", r.stderr.trim_end());
    }
}
