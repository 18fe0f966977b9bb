//! The host's own descriptors under a handle-exhaustion attack, and the process-wide descriptor
//! budget at spawn.
//!
//! A test binary of its own, because it counts the process's open descriptors
//! (`/proc/self/fd`) and lowers its `RLIMIT_NOFILE`: other tests running beside it in the same
//! process would disturb both. The two tests take turns: each holds one lock for the whole life
//! of its runtime, so no runtime of the other test is starting or shutting down (opening or
//! closing its own descriptors) while one counts.

use qi_guest_artifacts::{HELLO_COMPONENT, HOSTILE_COMPONENT};
use qi_host::sandbox::descriptors::DescriptorBudget;
use qi_host::{
    AgentHost, DirectoryGrant, Error, ErrorCategory, FileSystemAccess, HostConfig, IsolationLevel,
    LimitKind, SubAgentSpecification, TaskRequest,
};
use serde_json::{Value, json};
use std::sync::OnceLock;

/// The descriptor limit of this process: budget = 1,000 − 256 kept for the host = 744.
const NOFILE: u64 = 1_000;

static TURNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `test` on a runtime of its own (two workers) while holding [`TURNS`], and drops the
/// runtime before letting the other test go.
fn in_turn(test: impl std::future::Future<Output = ()>) {
    let _turn = TURNS.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime starts");
    runtime.block_on(test);
    drop(runtime);
}

fn host() -> &'static AgentHost {
    static HOST: OnceLock<AgentHost> = OnceLock::new();
    HOST.get_or_init(|| {
        let limit = rustix::process::Rlimit {
            current: Some(NOFILE),
            maximum: Some(NOFILE),
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
            .expect("lowering RLIMIT_NOFILE");
        assert_eq!(DescriptorBudget::process().total(), NOFILE - 256);
        AgentHost::new(HostConfig {
            cache_dir: Some(
                std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache"),
            ),
            ..HostConfig::default()
        })
        .expect("host starts")
    })
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mounted(dir: &std::path::Path, max_open_handles: u32) -> SubAgentSpecification {
    let mut s = SubAgentSpecification {
        fuel: 50_000_000_000,
        isolation_level: IsolationLevel::Restricted,
        ..Default::default()
    };
    s.security_constraints.file_system_access = FileSystemAccess::Restricted;
    s.resource_limits.max_open_handles = max_open_handles;
    s.resource_limits.max_file_operations = 1_000_000;
    s.resource_limits.max_execution_time_ms = 120_000;
    s.directories.push(DirectoryGrant {
        host_path: dir.to_path_buf(),
        guest_path: "/workspace".into(),
        writable: Some(true),
    });
    s
}

async fn run(path: &str, spec: SubAgentSpecification, input: Value) -> qi_host::AgentReport {
    let h = host();
    h.run(&h.load(path).unwrap(), spec, TaskRequest::new("t", input))
        .await
        .expect("spawns")
}

#[test]
fn a_hundred_thousand_opens_hold_at_most_the_cap_and_leave_nothing_behind() {
    in_turn(async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "f").unwrap();
        let attack = |count: u64| {
            run(
                HOSTILE_COMPONENT,
                mounted(dir.path(), 256),
                json!({"mode": "fs.hold-handles", "path": "/workspace/f", "count": count}),
            )
        };
        // Warm up: compile and cache both components, start the host's threads.
        attack(10).await;
        run(HELLO_COMPONENT, SubAgentSpecification::default(), json!(1)).await;
        let baseline = open_descriptors();

        let (report, beside) = tokio::join!(
            attack(100_000),
            run(
                HELLO_COMPONENT,
                SubAgentSpecification::default(),
                json!({"beside": true})
            )
        );
        let out = beside.output.expect("the agent beside completes");
        assert_eq!(out["input"], json!({"beside": true}));
        assert_eq!(out["agent"], "hello");

        match &report.failure {
            Some(qi_host::AgentFailure::LimitExceeded { limit, .. }) => {
                assert_eq!(*limit, LimitKind::OpenHandles)
            }
            other => panic!("expected the handle limit, got {other:?}"),
        }
        let seen: Value = serde_json::from_str(
            &report
                .logs
                .iter()
                .find(|l| l.message == "fs report")
                .unwrap()
                .fields[0]
                .1,
        )
        .unwrap();
        let held = seen["done"].as_u64().unwrap();
        assert!(held > 200 && held < 256, "{seen}");
        assert_eq!(held + seen["refused"].as_u64().unwrap(), 100_000);
        assert_eq!(seen["error"]["kind"], "OutOfMemory", "{seen}");
        assert_eq!(open_descriptors(), baseline, "every descriptor given back");
        assert_eq!(DescriptorBudget::process().reserved(), 0);
    });
}

#[test]
fn a_spawn_past_the_process_budget_is_refused_until_room_is_given_back() {
    in_turn(async {
        let h = host();
        let dir = tempfile::tempdir().unwrap();
        let hello = h.load(HELLO_COMPONENT).unwrap();
        // 700 handles + 2 for the preopen: fits in 744.
        let big = h.spawn(&hello, mounted(dir.path(), 700)).await.unwrap();
        assert_eq!(DescriptorBudget::process().reserved(), 702);
        // 40 handles + 2 fits exactly beside it; 41 does not.
        let fits = h.spawn(&hello, mounted(dir.path(), 40)).await.unwrap();
        drop(fits);
        let err = h
            .spawn(&hello, mounted(dir.path(), 41))
            .await
            .expect_err("over the budget");
        assert_eq!(err.category(), ErrorCategory::Resource);
        assert!(matches!(err, Error::Resource(_)));
        let message = err.to_string();
        assert!(
            message.contains("needs 43 host descriptors")
                && message.contains("only 42 of the host's 744 are free"),
            "{message}"
        );
        // An agent without directories or network holds no host descriptors and still spawns.
        let plain = h
            .spawn(&hello, SubAgentSpecification::default())
            .await
            .unwrap();
        drop(plain);
        // Once the big agent ends, its share is back.
        let report = big.run(TaskRequest::new("t", json!(null))).await;
        assert!(report.output.is_some(), "{:?}", report.failure);
        assert_eq!(DescriptorBudget::process().reserved(), 0);
        h.spawn(&hello, mounted(dir.path(), 41)).await.unwrap();
    });
}
