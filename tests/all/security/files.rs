//! The file refusal matrix: every WASI filesystem operation and every `fs.*` tool, decided on
//! the absolute guest path the file has (`file/workspace/...`) however the guest spells it,
//! each with an allowed call that works and a denied one that is refused with `access` and
//! leaves its canary as it was. The policies name exact paths and `**` only, so they mean the
//! same whether `*` crosses `/` or not.

use super::*;
use qi_guest_artifacts::HOSTILE_COMPONENT;
use std::path::Path;

/// Every file is allowed, and tools; the canaries under `secret/` are not, nor listing or
/// describing the directory `secret` itself (which may still be opened).
const SECRETS_DENIED: &str = r#"
[[policies]]
id = "files"
[[policies.rules]]
effect = "allow"
resources = ["file/**", "tool/*"]
[[policies.rules]]
effect = "deny"
resources = [
    "file/workspace/secret/x",
    "file/workspace/secret/lnk",
    "file/workspace/secret/u",
    "file/workspace/secret/d0",
    "file/workspace/secret/r",
    "file/workspace/secret/new",
]
[[policies.rules]]
effect = "deny"
resources = ["file/workspace/secret"]
actions = ["list", "stat"]
"#;

/// Every file and tool allowed.
const ALL_FILES: &str = r#"
[[policies]]
id = "all-files"
[[policies.rules]]
effect = "allow"
resources = ["file/**", "tool/*"]
"#;

pub(super) const SECRET: &str = "secret-canary";
pub(super) const OPEN: &str = "open-canary";

/// The mount: `open/` and `secret/` with the same entries (`a`/`x` a file with its canary,
/// `lnk` a link to it, `u` a file, `d0` an empty directory, `r` a file), `sub/`, `alias ->
/// secret`, `open/to-secret -> ../secret/x` and `open/dangling -> ../secret/new`.
pub(super) fn mount() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (side, file, text) in [("open", "a", OPEN), ("secret", "x", SECRET)] {
        let d = root.join(side);
        std::fs::create_dir_all(d.join("d0")).unwrap();
        std::fs::write(d.join(file), text).unwrap();
        std::fs::write(d.join("u"), "u").unwrap();
        std::fs::write(d.join("r"), "r").unwrap();
        std::os::unix::fs::symlink(file, d.join("lnk")).unwrap();
    }
    std::fs::create_dir(root.join("sub")).unwrap();
    std::os::unix::fs::symlink("secret", root.join("alias")).unwrap();
    std::os::unix::fs::symlink("../secret/x", root.join("open/to-secret")).unwrap();
    std::os::unix::fs::symlink("../secret/new", root.join("open/dangling")).unwrap();
    dir
}

/// What a probe step should give: the value, or the WASI error code (a tool's error starts
/// with its kind).
#[derive(Debug, Clone, Copy)]
pub(super) enum Want {
    Ok,
    Value(&'static str),
    Denied,
}

/// Runs `hostile` in `fs.wasi` mode with `steps` on `s`, over `dir` at `/workspace`; returns
/// the agent id and one result per step.
pub(super) async fn probe(
    s: &Secured,
    spec: SubAgentSpecification,
    steps: Vec<Value>,
) -> (String, Vec<Value>) {
    let component = s.host.load(HOSTILE_COMPONENT).unwrap();
    let agent = s.host.spawn(&component, spec).await.unwrap();
    let id = agent.id().to_string();
    let report = agent
        .run(TaskRequest::new(
            "probe",
            json!({"mode": "fs.wasi", "steps": steps}),
        ))
        .await;
    let out = report
        .output
        .clone()
        .unwrap_or_else(|| panic!("{report:?}"));
    (id, out["results"].as_array().unwrap().clone())
}

/// Checks each result against its expectation, naming the step.
pub(super) fn check(steps: &[(Value, Want)], results: &[Value]) {
    assert_eq!(steps.len(), results.len());
    for ((step, want), got) in steps.iter().zip(results) {
        match want {
            Want::Ok => assert_eq!(got["ok"], true, "{step} should work: {got}"),
            Want::Value(v) => assert_eq!(got["value"], *v, "{step}: {got}"),
            Want::Denied => {
                assert_eq!(got["ok"], false, "{step} should be refused: {got}");
                let e = got["error"].as_str().unwrap();
                assert!(
                    e == "access" || e.starts_with("access-denied"),
                    "{step} should be refused for access: {got}"
                );
            }
        }
    }
}

/// The file resources of the agent's audited refusals.
pub(super) async fn denied_files(s: &Secured, agent: &str) -> Vec<(String, String)> {
    s.audit.flush().await;
    s.audit
        .query(&AuditQuery {
            agent: Some(agent.into()),
            decision: Some(AuditDecision::Deny),
            resource: Some("file/**".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.resource, e.operation))
        .collect()
}

pub(super) fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_operation_and_spelling_is_decided_on_the_guest_path() {
    let s = secured(Some(SECRETS_DENIED)).await;
    let dir = mount();
    let root = dir.path();
    use Want::{Denied, Ok};
    let tool = |name: &str, input: Value| json!(["call", name, input]);
    let steps: Vec<(Value, Want)> = vec![
        // open-at for reading, and read through the descriptor.
        (json!(["open", "root", "open/a", "r", "a"]), Ok),
        (json!(["read", "a"]), Want::Value(OPEN)),
        (json!(["open", "root", "secret/x", "r", "x"]), Denied),
        // Every spelling of secret/x.
        (json!(["open", "root", "./secret/x", "r", "x"]), Denied),
        (json!(["open", "root", "sub/../secret/x", "r", "x"]), Denied),
        (json!(["open", "root", "secret//x", "r", "x"]), Denied),
        (json!(["open", "root", "alias/x", "r", "x"]), Denied),
        (json!(["open", "root", "open/to-secret", "r", "x"]), Denied),
        (json!(["open", "root", "secret", "rd", "s"]), Ok),
        (json!(["open", "s", "x", "r", "x"]), Denied),
        (json!(["open", "s", "./x", "r", "x"]), Denied),
        (json!(["open", "root", "alias", "rd", "al"]), Ok),
        (json!(["open", "al", "x", "r", "x"]), Denied),
        (json!(["symlink", "root", "../secret/x", "open/mine"]), Ok),
        (json!(["open", "root", "open/mine", "r", "x"]), Denied),
        (json!(["open", "root", "open/lnk", "r", "l"]), Ok),
        (json!(["read", "l"]), Want::Value(OPEN)),
        // open-at for writing and creating.
        (json!(["open", "root", "open/a", "rw", "aw"]), Ok),
        (json!(["open", "root", "secret/x", "rw", "xw"]), Denied),
        (json!(["open", "root", "alias/x", "wt", "xw"]), Denied),
        (json!(["open", "root", "open/new", "rwc", "n"]), Ok),
        (json!(["open", "root", "secret/new", "rwc", "n2"]), Denied),
        (json!(["open", "root", "open/dangling", "wc", "n2"]), Denied),
        // stat-at, metadata-hash-at, set-times-at.
        (json!(["stat-at", "root", "open/a"]), Ok),
        (json!(["stat-at", "root", "secret/x"]), Denied),
        (json!(["stat-at", "s", "x"]), Denied),
        (json!(["hash-at", "root", "open/a"]), Ok),
        (json!(["hash-at", "root", "alias/x"]), Denied),
        (json!(["set-times-at", "root", "open/a"]), Ok),
        (json!(["set-times-at", "s", "x"]), Denied),
        // Directories: create, remove, list, stat through the descriptor.
        (json!(["mkdir", "root", "open/m"]), Ok),
        (json!(["mkdir", "root", "secret/new"]), Denied),
        (json!(["rmdir", "root", "open/d0"]), Ok),
        (json!(["rmdir", "root", "secret/d0"]), Denied),
        (json!(["list", "root"]), Ok),
        (json!(["list", "s"]), Denied),
        (json!(["stat", "root"]), Ok),
        (json!(["stat", "s"]), Denied),
        (json!(["hash", "root"]), Ok),
        (json!(["hash", "s"]), Denied),
        // unlink, rename (old and new names), links.
        (json!(["unlink", "root", "open/u"]), Ok),
        (json!(["unlink", "root", "secret/u"]), Denied),
        (json!(["rename", "root", "open/r", "open/r2"]), Ok),
        (json!(["rename", "root", "secret/r", "open/r3"]), Denied),
        (json!(["rename", "root", "open/r2", "secret/new"]), Denied),
        (json!(["symlink", "root", "a", "open/l"]), Ok),
        (json!(["symlink", "root", "x", "secret/new"]), Denied),
        (json!(["readlink", "root", "open/lnk"]), Want::Value("a")),
        (json!(["readlink", "root", "secret/lnk"]), Denied),
        (json!(["link", "root", "open/a", "open/h"]), Ok),
        (json!(["link", "root", "secret/x", "open/h2"]), Denied),
        (json!(["link", "root", "open/a", "secret/new"]), Denied),
        // The file tools, through the same gate.
        (tool("fs.read", json!({"path": "/workspace/open/a"})), Ok),
        (
            tool("fs.read", json!({"path": "/workspace/secret/x"})),
            Denied,
        ),
        (
            tool("fs.read", json!({"path": "/workspace/./secret//x"})),
            Denied,
        ),
        (
            tool("fs.read", json!({"path": "/workspace/alias/x"})),
            Denied,
        ),
        (
            tool("fs.read", json!({"path": "/workspace/open/to-secret"})),
            Denied,
        ),
        (
            tool(
                "fs.write",
                json!({"path": "/workspace/open/w", "content": "w"}),
            ),
            Ok,
        ),
        (
            tool(
                "fs.write",
                json!({"path": "/workspace/secret/x", "content": "gone"}),
            ),
            Denied,
        ),
        (
            tool(
                "fs.write",
                json!({"path": "/workspace/alias/x", "content": "gone"}),
            ),
            Denied,
        ),
        (
            tool(
                "fs.write",
                json!({"path": "/workspace/secret/new", "content": "made"}),
            ),
            Denied,
        ),
        (tool("fs.list", json!({"path": "/workspace/open"})), Ok),
        (
            tool("fs.list", json!({"path": "/workspace/./secret"})),
            Denied,
        ),
        (tool("fs.list", json!({"path": "/workspace/alias"})), Denied),
    ];
    let (id, results) = probe(
        &s,
        granted(root),
        steps.iter().map(|(step, _)| step.clone()).collect(),
    )
    .await;
    check(&steps, &results);
    // The allowed calls did their work; the refused ones left every canary as it was.
    assert_eq!(read(root, "secret/x"), SECRET);
    assert_eq!(read(root, "open/w"), "w");
    for made in [
        "open/new",
        "open/m",
        "open/r2",
        "open/l",
        "open/h",
        "open/mine",
    ] {
        assert!(root.join(made).symlink_metadata().is_ok(), "{made}");
    }
    for kept in ["secret/u", "secret/d0", "secret/r", "secret/lnk"] {
        assert!(root.join(kept).symlink_metadata().is_ok(), "{kept}");
    }
    for absent in ["secret/new", "open/r3", "open/h2", "open/u", "open/d0"] {
        assert!(root.join(absent).symlink_metadata().is_err(), "{absent}");
    }
    // Every refusal is audited under the name the file has, never the spelling.
    let denied = denied_files(&s, &id).await;
    let names: std::collections::BTreeSet<&str> = denied.iter().map(|(r, _)| r.as_str()).collect();
    let want: std::collections::BTreeSet<&str> = [
        "file/workspace/secret",
        "file/workspace/secret/x",
        "file/workspace/secret/lnk",
        "file/workspace/secret/u",
        "file/workspace/secret/d0",
        "file/workspace/secret/r",
        "file/workspace/secret/new",
    ]
    .into();
    assert_eq!(names, want, "{denied:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_and_streams_opened_before_a_policy_change_follow_the_new_rules() {
    let gate = Gate::default();
    let mut tools = ToolRegistry::with_builtins();
    tools.register(gate.clone());
    let s = secured_with_tools(Some(ALL_FILES), tools).await;
    let dir = mount();
    let root = dir.path();
    use Want::{Denied, Ok};
    let steps: Vec<(Value, Want)> = vec![
        // Opened while every file is allowed.
        (json!(["open", "root", "open/a", "rw", "a"]), Ok),
        (json!(["open", "root", "secret/x", "rw", "x"]), Ok),
        (json!(["open", "root", "secret", "rd", "s"]), Ok),
        (json!(["reader", "a", "ra"]), Ok),
        (json!(["reader", "x", "rx"]), Ok),
        (json!(["lister", "root", "lr"]), Ok),
        (json!(["lister", "s", "ls"]), Ok),
        // The test replaces the policies while the agent waits here.
        (json!(["call", "test.gate", {}]), Ok),
        (json!(["read", "a"]), Want::Value(OPEN)),
        (json!(["read", "x"]), Denied),
        (json!(["pull", "ra"]), Want::Value(OPEN)),
        (json!(["pull", "rx"]), Denied),
        (json!(["stream-read", "a"]), Want::Value(OPEN)),
        (json!(["stream-read", "x"]), Denied),
        (json!(["write", "a", "OPEN"]), Ok),
        (json!(["write", "x", "SECRET"]), Denied),
        (json!(["stream-write", "a", "OP"]), Ok),
        (json!(["stream-write", "x", "SE"]), Denied),
        (json!(["append", "a", "!"]), Ok),
        (json!(["append", "x", "!"]), Denied),
        (json!(["set-size", "a", 20]), Ok),
        (json!(["set-size", "x", 0]), Denied),
        (json!(["set-times", "a"]), Ok),
        (json!(["set-times", "x"]), Denied),
        (json!(["stat", "a"]), Ok),
        (json!(["stat", "x"]), Denied),
        (json!(["hash", "a"]), Ok),
        (json!(["hash", "x"]), Denied),
        (json!(["list", "root"]), Ok),
        (json!(["list", "s"]), Denied),
        (json!(["next", "lr"]), Ok),
        (json!(["next", "ls"]), Denied),
    ];
    let narrowed = {
        let file: toml::Value = toml::from_str(SECRETS_DENIED).unwrap();
        PolicySet::new(file["policies"].clone().try_into().unwrap()).unwrap()
    };
    let change = async {
        gate.entered.notified().await;
        s.access.set_policies(Some(narrowed));
        gate.release.notify_one();
    };
    let ((id, results), ()) = crate::common::hang_guard(
        "the agent reaches the gate and finishes once released",
        async {
            tokio::join!(
                probe(
                    &s,
                    granted(root),
                    steps.iter().map(|(step, _)| step.clone()).collect()
                ),
                change
            )
        },
    )
    .await;
    check(&steps, &results);
    assert_eq!(read(root, "secret/x"), SECRET, "the canary is unchanged");
    let a = read(root, "open/a");
    assert!(a.starts_with("OPEN") && a.len() == 20, "{a:?}");
    let denied = denied_files(&s, &id).await;
    let on_x: Vec<&str> = denied
        .iter()
        .filter(|(r, _)| r == "file/workspace/secret/x")
        .map(|(_, op)| op.as_str())
        .collect();
    assert_eq!(on_x.len(), 10, "one refusal per call on x: {denied:?}");
    for op in ["read", "write", "stat"] {
        assert!(on_x.contains(&op), "{op}: {denied:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitored_agents_have_their_file_calls_recorded() {
    let s = secured(None).await;
    let dir = mount();
    let mut spec = granted(dir.path());
    spec.isolation_level = IsolationLevel::Monitored;
    let (id, results) = probe(
        &s,
        spec,
        vec![
            json!(["open", "root", "open/./a", "r", "a"]),
            json!(["read", "a"]),
            json!(["stat-at", "root", "open/missing"]),
        ],
    )
    .await;
    assert_eq!(results[1]["value"], OPEN, "{results:?}");
    s.audit.flush().await;
    let calls = s
        .audit
        .query(&AuditQuery {
            agent: Some(id),
            resource: Some("call/file/**".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let seen: Vec<(&str, &str, &str)> = calls
        .iter()
        .map(|e| (e.operation.as_str(), e.resource.as_str(), e.reason.as_str()))
        .collect();
    for (op, resource) in [
        ("filesystem.open-at", "call/file/workspace/open/a"),
        ("filesystem.read", "call/file/workspace/open/a"),
        ("filesystem.stat-at", "call/file/workspace/open/missing"),
    ] {
        assert!(
            seen.iter().any(|(o, r, _)| *o == op && *r == resource),
            "{op} on {resource}: {seen:?}"
        );
    }
    let missing = seen
        .iter()
        .find(|(o, _, _)| *o == "filesystem.stat-at")
        .unwrap();
    assert_eq!(missing.2, "no-entry", "the outcome is the error code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_star_stays_within_one_path_segment() {
    let s = secured(Some(
        r#"
[[policies]]
id = "one-level"
[[policies.rules]]
effect = "allow"
resources = ["file/**"]
[[policies.rules]]
effect = "deny"
resources = ["file/workspace/secret/*"]
"#,
    ))
    .await;
    let dir = mount();
    std::fs::create_dir(dir.path().join("secret/sub")).unwrap();
    std::fs::write(dir.path().join("secret/sub/x"), "deeper").unwrap();
    let (_, results) = probe(
        &s,
        granted(dir.path()),
        vec![
            json!(["stat-at", "root", "secret/x"]),
            json!(["open", "root", "secret/sub/x", "r", "deep"]),
            json!(["read", "deep"]),
        ],
    )
    .await;
    assert_eq!(
        results[0]["error"], "access",
        "one level down is denied: {results:?}"
    );
    assert_eq!(
        results[2]["value"], "deeper",
        "two levels down is not: {results:?}"
    );
}
