//! Spec validation: each error names the field and what is allowed.

use crate::common::*;
use qi_guest_artifacts::*;
use qi_host::{
    DirectoryGrant, Error, ErrorCategory, FileSystemAccess, IsolationLevel, NetworkAccessLevel,
    SubAgentSpecification,
};
use serde_json::json;

async fn spawn_err(s: SubAgentSpecification) -> Error {
    host()
        .spawn(&load(HELLO_COMPONENT), s)
        .await
        .expect_err("spec must be refused")
}

#[track_caller]
fn names(err: &Error, field: &str, hint: &str) {
    let text = err.to_string();
    assert!(text.contains(field), "`{text}` does not name `{field}`");
    assert!(text.contains(hint), "`{text}` does not say `{hint}`");
    assert_eq!(err.category(), ErrorCategory::Validation);
}

#[tokio::test]
async fn memory_must_be_positive_and_under_the_ceiling() {
    let mut s = spec();
    s.resource_limits.max_memory_mb = 0;
    names(
        &spawn_err(s.clone()).await,
        "resourceLimits.maxMemoryMB",
        "between 1 and 1024",
    );
    s.resource_limits.max_memory_mb = 1025;
    names(
        &spawn_err(s).await,
        "resourceLimits.maxMemoryMB",
        "got 1025",
    );
}

#[tokio::test]
async fn zero_limits_are_refused() {
    let mut s = spec();
    s.resource_limits.max_execution_time_ms = 0;
    names(&spawn_err(s).await, "maxExecutionTimeMs", "between 1 and");
    let mut s = spec();
    s.fuel = 0;
    names(&spawn_err(s).await, "fuel", "at least 1");
    let mut s = spec();
    s.resource_limits.max_concurrent_operations = 0;
    names(&spawn_err(s).await, "maxConcurrentOperations", "at least 1");
}

#[tokio::test]
async fn sandbox_level_refuses_directories_and_network() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec();
    s.directories.push(DirectoryGrant {
        host_path: dir.path().into(),
        guest_path: "/workspace".into(),
        writable: None,
    });
    let e = spawn_err(s).await;
    assert!(matches!(e, Error::IsolationCeiling { .. }), "{e}");
    names(&e, "directories", "use `restricted`");

    let mut s = spec();
    s.security_constraints.network_access_level = NetworkAccessLevel::Restricted;
    names(&spawn_err(s).await, "networkAccessLevel", "sandbox");
}

#[tokio::test]
async fn restricted_level_refuses_full_access_and_allow_all() {
    let mut s = spec();
    s.isolation_level = IsolationLevel::Restricted;
    s.security_constraints.file_system_access = FileSystemAccess::Full;
    names(&spawn_err(s).await, "fileSystemAccess", "needs `monitored`");

    let mut s = spec();
    s.isolation_level = IsolationLevel::Restricted;
    s.security_constraints.network_access_level = NetworkAccessLevel::Full;
    names(
        &spawn_err(s).await,
        "networkAccessLevel",
        "needs `monitored`",
    );

    let mut s = spec();
    s.isolation_level = IsolationLevel::Restricted;
    s.security_constraints.network_access_level = NetworkAccessLevel::Restricted;
    s.resource_limits.allowed_network_hosts = vec!["*:*".into()];
    names(
        &spawn_err(s).await,
        "allowedNetworkHosts",
        "allows every address",
    );
}

#[tokio::test]
async fn network_patterns_are_checked() {
    let mut s = spec();
    s.isolation_level = IsolationLevel::Restricted;
    s.security_constraints.network_access_level = NetworkAccessLevel::Restricted;
    s.resource_limits.allowed_network_hosts = vec!["127.0.0.1".into()];
    names(
        &spawn_err(s.clone()).await,
        "allowedNetworkHosts[0]",
        "has no port",
    );
    s.resource_limits.allowed_network_hosts = vec!["*.example.com:443".into()];
    names(
        &spawn_err(s.clone()).await,
        "allowedNetworkHosts[0]",
        "wildcard host name",
    );
    s.resource_limits.allowed_network_hosts = vec!["10.0.0.1:99999".into()];
    names(
        &spawn_err(s).await,
        "allowedNetworkHosts[0]",
        "invalid port",
    );

    let mut s = spec();
    s.resource_limits.allowed_network_hosts = vec!["127.0.0.1:80".into()];
    names(
        &spawn_err(s).await,
        "allowedNetworkHosts",
        "set it to `restricted`",
    );
}

#[tokio::test]
async fn globs_overrides_and_paths_are_checked() {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["fs.[".into()];
    names(&spawn_err(s).await, "allowedTools[0]", "not a valid glob");

    let mut s = spec();
    s.configuration_overrides
        .insert("maxOutputByte".into(), json!(10));
    names(
        &spawn_err(s).await,
        "configurationOverrides.maxOutputByte",
        "known: maxOutputBytes",
    );

    let mut s = spec();
    s.configuration_overrides
        .insert("maxOutputBytes".into(), json!(-1));
    names(&spawn_err(s).await, "maxOutputBytes", "positive integer");

    let mut s = spec();
    s.isolation_level = IsolationLevel::Restricted;
    s.directories.push(DirectoryGrant {
        host_path: "/definitely/not/here".into(),
        guest_path: "/workspace".into(),
        writable: None,
    });
    names(
        &spawn_err(s.clone()).await,
        "directories[0].hostPath",
        "not an existing directory",
    );
    s.directories[0].host_path = std::env::temp_dir();
    s.directories[0].guest_path = "workspace".into();
    names(
        &spawn_err(s).await,
        "directories[0].guestPath",
        "must be absolute",
    );

    let mut s = spec();
    s.security_constraints.sandbox_enabled = false;
    names(&spawn_err(s).await, "sandboxEnabled", "must be true");
}

#[tokio::test]
async fn declared_capabilities_and_type_must_match() {
    let mut s = spec();
    s.capabilities = vec!["time-travel".into()];
    names(
        &spawn_err(s).await,
        "capabilities",
        "does not declare `time-travel`",
    );
    let mut s = spec();
    s.agent_type = qi_host::AgentType::DecisionCapable;
    let err = spawn_err(s).await;
    names(&err, "agentType", "declares");
    // The component ran (instantiation and `describe`) before the mismatch was found: the
    // refusal carries the receipt of what it used.
    match err {
        Error::Spawn(_, usage) => assert!(usage.fuel_consumed > 0, "{usage:?}"),
        other => panic!("expected a spawn failure with its receipt, got {other:?}"),
    }
}

#[test]
fn spec_json_uses_the_seed_field_names_and_rejects_unknown_ones() {
    let s: SubAgentSpecification = serde_json::from_value(json!({
        "agentType": "specialized",
        "capabilities": ["code-analysis"],
        "resourceLimits": {"maxMemoryMB": 32, "maxExecutionTimeMs": 1000, "maxToolCalls": 3},
        "securityConstraints": {"allowedTools": ["fs.read"], "fileSystemAccess": "read-only"},
        "isolationLevel": "restricted",
        "parentAgentId": "operator",
        "fuel": 1000000
    }))
    .unwrap();
    assert_eq!(s.resource_limits.max_memory_mb, 32);
    assert_eq!(s.isolation_level, IsolationLevel::Restricted);
    let err = serde_json::from_value::<SubAgentSpecification>(json!({
        "resourceLimits": {"maxMemoryMb": 32}
    }))
    .unwrap_err();
    assert!(err.to_string().contains("maxMemoryMb"), "{err}");
}

/// Sets the budget `field` (as the ceiling table names it) of `s` to `v`.
fn set_budget(s: &mut SubAgentSpecification, field: &str, v: u64) {
    let l = &mut s.resource_limits;
    let small = || u32::try_from(v).expect("fits the field");
    match field {
        "fuel" => s.fuel = v,
        "configurationOverrides.fuelYieldInterval" => {
            s.configuration_overrides
                .insert("fuelYieldInterval".into(), json!(v));
        }
        "configurationOverrides.maxLogBytes" => {
            s.configuration_overrides
                .insert("maxLogBytes".into(), json!(v));
        }
        "resourceLimits.maxToolCalls" => l.max_tool_calls = small(),
        "resourceLimits.maxFileOperations" => l.max_file_operations = small(),
        "resourceLimits.maxConcurrentOperations" => l.max_concurrent_operations = small(),
        "resourceLimits.maxOpenHandles" => l.max_open_handles = small(),
        "resourceLimits.maxDiskBytes" => l.max_disk_bytes = v,
        "resourceLimits.maxFilesCreated" => l.max_files_created = small(),
        "resourceLimits.maxNetworkOperations" => l.max_network_operations = small(),
        "resourceLimits.maxContextBytes" => l.max_context_bytes = v,
        "resourceLimits.maxContextWrites" => l.max_context_writes = small(),
        other => panic!("no setter for {other}"),
    }
}

#[test]
fn every_budget_at_its_isolation_ceiling_passes_and_one_more_is_refused() {
    use qi_host::spec::{IsolationCeilings, SpecCeilings};
    let host_ceilings = SpecCeilings {
        max_memory_mb: 1024,
        max_execution_time_ms: 3_600_000,
        max_output_bytes: 64 << 20,
    };
    for level in [
        IsolationLevel::Sandbox,
        IsolationLevel::Restricted,
        IsolationLevel::Monitored,
    ] {
        let c = IsolationCeilings::of(level);
        let table: [(&str, u64); 12] = [
            ("fuel", c.fuel),
            (
                "configurationOverrides.fuelYieldInterval",
                c.fuel_yield_interval,
            ),
            ("resourceLimits.maxToolCalls", c.max_tool_calls.into()),
            (
                "resourceLimits.maxFileOperations",
                c.max_file_operations.into(),
            ),
            (
                "resourceLimits.maxConcurrentOperations",
                c.max_concurrent_operations.into(),
            ),
            ("configurationOverrides.maxLogBytes", c.max_log_bytes),
            ("resourceLimits.maxOpenHandles", c.max_open_handles.into()),
            ("resourceLimits.maxDiskBytes", c.max_disk_bytes),
            ("resourceLimits.maxFilesCreated", c.max_files_created.into()),
            (
                "resourceLimits.maxNetworkOperations",
                c.max_network_operations.into(),
            ),
            ("resourceLimits.maxContextBytes", c.max_context_bytes),
            (
                "resourceLimits.maxContextWrites",
                c.max_context_writes.into(),
            ),
        ];
        for (field, ceiling) in table {
            let mut s = SubAgentSpecification {
                isolation_level: level,
                ..Default::default()
            };
            set_budget(&mut s, field, ceiling);
            s.validate(&host_ceilings)
                .unwrap_or_else(|e| panic!("{field} = {ceiling} at {level:?}: {e}"));
            set_budget(&mut s, field, ceiling + 1);
            let err = s
                .validate(&host_ceilings)
                .expect_err("one past the ceiling");
            match &err {
                Error::IsolationCeiling {
                    field: f, level: l, ..
                } => {
                    assert_eq!(f, field);
                    assert_eq!(l, level.as_str());
                }
                other => panic!("{field} at {level:?}: wrong error {other}"),
            }
            let text = err.to_string();
            assert!(
                text.contains(&format!("asks for {}", ceiling + 1))
                    && text.contains(&format!("at most {ceiling}")),
                "{text}"
            );
            assert_eq!(err.category(), ErrorCategory::Validation);
        }
    }
}

#[tokio::test]
async fn a_spawn_over_the_fuel_yield_ceiling_is_refused_naming_it() {
    let mut s = spec();
    s.configuration_overrides.insert(
        "fuelYieldInterval".into(),
        json!(qi_host::spec::MAX_FUEL_YIELD_INTERVAL + 1),
    );
    names(
        &spawn_err(s).await,
        "configurationOverrides.fuelYieldInterval",
        "at most 10000000",
    );
}

/// The largest yield interval a spec may set still lets the deadline stop a spinning agent.
#[tokio::test]
async fn the_deadline_stops_a_spinning_agent_at_the_largest_yield_interval() {
    let mut s = spec();
    s.fuel = qi_host::spec::IsolationCeilings::of(IsolationLevel::Sandbox).fuel;
    s.resource_limits.max_execution_time_ms = 300;
    s.configuration_overrides.insert(
        "fuelYieldInterval".into(),
        json!(qi_host::spec::MAX_FUEL_YIELD_INTERVAL),
    );
    let report = run(SPIN_FOREVER_COMPONENT, s, json!(null)).await;
    assert_eq!(
        report.failure.as_ref().and_then(|f| f.limit()),
        Some(qi_host::LimitKind::ExecutionTime),
        "{:?}",
        report.failure
    );
}

#[tokio::test]
async fn a_name_cannot_pass_for_a_host_assigned_id_or_the_operator() {
    for (name, hint) in [
        ("agent-abc123-7", "`agent-` names are the host's agent ids"),
        ("operator", "reserved"),
        ("", "1 to 128"),
        ("two words", "letters, digits"),
    ] {
        let mut s = spec();
        s.name = Some(name.into());
        names(&spawn_err(s).await, "name", hint);
    }
    let mut s = spec();
    s.name = Some("x".repeat(129));
    names(&spawn_err(s).await, "name", "1 to 128");
    // Just inside: 128 bytes of the allowed characters.
    let mut s = spec();
    s.name = Some(format!("Reviewer_2.a-{}", "x".repeat(115)));
    host()
        .spawn(&load(HELLO_COMPONENT), s)
        .await
        .expect("a plain name of 128 bytes is accepted");
}
