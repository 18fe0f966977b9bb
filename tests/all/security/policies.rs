//! Policy files: `qi-host policy check`, a seeded fuzz of the loader, and `run-agent
//! --policies` re-reading its file mid-run.

use crate::common::{hang_guard, qi_host_command, qi_host_output};
use qi_guest_artifacts::WORKER_COMPONENT;
use qi_host::security::{PolicyFormat, PolicySet, Request, TrustLevel};
use serde_json::{Value, json};
use std::io::BufRead;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn policy_check_prints_every_error_with_its_position_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    // Two rules wrong in different ways: a type error in a condition, a bad glob.
    let bad = write(
        &dir,
        "bad.toml",
        r#"
[[policies]]
id = "p"
[[policies.rules]]
effect = "allow"
resources = ["context/*"]
condition = '''
principal.trust >= 1 &&
  principal.name == 3'''
[[policies.rules]]
effect = "deny"
resources = ["file/a[b"]
"#,
    );
    let o = qi_host_output(&["policy", "check", &bad]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("policy `p` rule 1 `condition` at line 2, column 3"),
        "{out}"
    );
    assert!(
        out.contains("policy `p` rule 2 `resources`: pattern `file/a[b`"),
        "{out}"
    );
    assert!(out.contains("2 errors"), "{out}");
    // A TOML syntax error: its line and column in the file.
    let broken = write(&dir, "broken.toml", "[[policies]]\nid = \"p\"\nrules = [\n");
    let o = qi_host_output(&["policy", "check", &broken]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("broken.toml: line 3, column"), "{out}");
    // JSON: the same, by its extension.
    let json = write(
        &dir,
        "p.json",
        "{\"policies\": [{\"id\": \"p\", \"rules\": 7}]}",
    );
    let o = qi_host_output(&["policy", "check", &json]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("line 1, column"), "{out}");
}

#[test]
fn policy_check_summarises_a_valid_file_and_the_example_is_one() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies.toml");
    let o = qi_host_output(&["policy", "check", example]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("valid: 2 policies (2 active), 3 rules, 2 priority tiers"),
        "{out}"
    );
    let o = qi_host_output(&["policy", "schema"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("entity Agent") && out.contains("trust: Long"),
        "{out}"
    );
}

/// xorshift64: the fuzz test's seeded generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// A random condition: well-formed pieces, nested up to `depth`, sometimes cut or spliced.
fn condition(rng: &mut Rng, depth: usize) -> String {
    const LEAVES: &[&str] = &[
        "principal.trust >= 2",
        "resource.labels.contains(\"pii\")",
        "action == Action::\"get\"",
        "principal.name == \"worker\"",
        "true",
        "resource.type",
        "principal.trust + 9223372036854775807 > 0",
        "context.rules.isEmpty()",
        "principal.colour",
        "\"unterminated",
        "Action::\"nope\"",
        "1 < \"a\"",
    ];
    if depth == 0 || rng.below(3) == 0 {
        return rng.pick(LEAVES).to_string();
    }
    let a = condition(rng, depth - 1);
    match rng.below(7) {
        0 => format!("({a})"),
        1 => format!("!{a}"),
        2 => format!("{a} && {}", condition(rng, depth - 1)),
        3 => format!("{a} || {}", condition(rng, depth - 1)),
        4 => format!("if {a} then {} else false", condition(rng, depth - 1)),
        5 => format!("[{a}].contains(true)"),
        _ => {
            let cut = rng.below(a.len() + 1);
            a.get(..cut).unwrap_or(&a).to_string()
        }
    }
}

/// A random policy file (TOML or JSON), sometimes deeply nested, sometimes broken.
fn policy_file(rng: &mut Rng) -> (String, PolicyFormat) {
    const PATTERNS: &[&str] = &[
        "*",
        "context/*",
        "file/**",
        "tool/fs.*",
        "network/127.0.0.1:*",
        "a[b",
        "context/{x,y}",
        "nokind",
        "sync/**/x",
        "events/?",
    ];
    // `get`, `put` and `call` fit some patterns only (an action no kind of the rule has is an
    // error); `*` three times, so that enough files are valid.
    const ACTIONS: &[&str] = &["*", "*", "*", "get", "put", "call", "gett", "c*", "x*"];
    let mut policies = Vec::new();
    for p in 0..1 + rng.below(4) {
        let mut rules = Vec::new();
        for _ in 0..rng.below(4) {
            let mut r = json!({
                "effect": rng.pick(&["allow", "deny"]),
                "resources": [rng.pick(PATTERNS)],
                "actions": [rng.pick(ACTIONS)],
            });
            if rng.below(2) == 0 {
                r["agents"] = json!([rng.pick(&["*", "worker", "agent-*", "[", ""])]);
            }
            if rng.below(3) > 0 {
                let depth = rng.below(12);
                r["condition"] = json!(condition(rng, depth));
            }
            if rng.below(20) == 0 {
                // Nesting far past any limit, of every kind.
                let n = 1 + rng.below(50_000);
                r["condition"] = json!(match rng.below(4) {
                    0 => format!("{}true{}", "(".repeat(n), ")".repeat(n)),
                    1 => format!("{}true", "!".repeat(n)),
                    2 => format!("{}true{}", "[".repeat(n), "]".repeat(n)),
                    _ => "if true then ".repeat(n.min(400)) + "true",
                });
            }
            rules.push(r);
        }
        policies.push(json!({
            "id": if rng.below(10) == 0 { "dup".to_string() } else { format!("p{p}") },
            "priority": rng.below(3),
            "active": rng.below(5) > 0,
            "rules": rules,
        }));
    }
    let file = json!({ "policies": policies });
    let (mut text, format) = if rng.below(2) == 0 {
        (file.to_string(), PolicyFormat::Json)
    } else {
        (toml_text(&file), PolicyFormat::Toml)
    };
    match rng.below(10) {
        // Cut anywhere.
        0 => {
            let cut = rng.below(text.len() + 1);
            text = text.get(..cut).unwrap_or(&text).to_string();
        }
        // Deeply nested data in the file itself (arrays inside a field).
        1 => {
            let n = 1 + rng.below(100_000);
            let nested = format!("{}{}", "[".repeat(n), "]".repeat(n));
            text = match format {
                PolicyFormat::Json => format!("{{\"policies\": {nested}}}"),
                PolicyFormat::Toml => format!("policies = {nested}\n"),
            };
        }
        _ => {}
    }
    (text, format)
}

/// The generated file as TOML (JSON strings are TOML basic strings).
fn toml_text(file: &Value) -> String {
    let mut t = String::new();
    for p in file["policies"].as_array().unwrap() {
        t.push_str("[[policies]]\n");
        for key in ["id", "priority", "active"] {
            t.push_str(&format!("{key} = {}\n", p[key]));
        }
        let rules = p["rules"].as_array().unwrap();
        if rules.is_empty() {
            t.push_str("rules = []\n");
        }
        for r in rules {
            t.push_str("[[policies.rules]]\n");
            for (k, v) in r.as_object().unwrap() {
                t.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    t
}

/// Random and deeply nested files never panic (or overflow the stack of) the loader; each
/// gives a valid set, which then decides without panicking, or errors that each say where.
#[test]
fn random_and_deeply_nested_policy_files_load_or_fail_with_a_position() {
    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    let (mut valid, mut invalid) = (0, 0);
    for case in 0..600 {
        let (text, format) = policy_file(&mut rng);
        match PolicySet::parse(&text, format) {
            Ok(set) => {
                valid += 1;
                let labels = vec!["pii".to_string()];
                for (kind, id, action) in [("context", "x", "get"), ("tool", "fs.read", "call")] {
                    let _ = set.decide(&Request {
                        agent_id: "agent-1",
                        agent_name: Some("worker"),
                        trust: TrustLevel::Medium,
                        capabilities: &[],
                        isolation: qi_host::IsolationLevel::Sandbox,
                        kind,
                        id,
                        resource_type: None,
                        owner: None,
                        labels: &labels,
                        action,
                    });
                }
            }
            Err(errors) => {
                invalid += 1;
                assert!(!errors.is_empty(), "case {case}: {text}");
                for e in errors {
                    // In the file, or in a policy (and inside the condition for its errors).
                    let located = e.in_file.is_some()
                        || (e.policy.is_some()
                            && (e.field != Some("condition") || e.in_condition.is_some()));
                    assert!(
                        located,
                        "case {case}: error without a position: {e:?}\n{text}"
                    );
                }
            }
        }
    }
    // The generator reaches both outcomes, so neither half of the check is vacuous.
    assert!(
        valid > 50 && invalid > 50,
        "valid {valid}, invalid {invalid}"
    );
}

/// `run-agent --policies FILE` re-reads the file mid-run: the agent calls `clock.now`
/// (allowed), waits on a connection the test holds open while the file is rewritten to deny
/// tools and the host reports the reload, then calls `clock.now` again: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_agent_reloads_its_policy_file_mid_run() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let policy = |tools: &str| {
        format!(
            "[[policies]]\nid = \"v-{tools}\"\n[[policies.rules]]\neffect = \"allow\"\n\
             resources = [\"network/**\"]\n[[policies.rules]]\neffect = \"{tools}\"\n\
             resources = [\"tool/*\"]\n"
        )
    };
    let path = dir.path().join("p.toml");
    std::fs::write(&path, policy("allow")).unwrap();
    let steps = json!([
        {"tool": {"name": "clock.now", "input": {}}},
        {"wait_for": addr},
        {"tool": {"name": "clock.now", "input": {}}},
    ]);
    let input = json!({"subtask": "p", "attempt": 1, "inputs": {"steps": steps}}).to_string();
    let mut child = qi_host_command()
        .args([
            "run-agent",
            WORKER_COMPONENT,
            "--task",
            "p",
            "--json",
            "--input",
            &input,
        ])
        .args(["--policies", path.to_str().unwrap()])
        .args(["--allow-host", &addr, "--allow-tool", "clock.now"])
        .env("QI_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The agent's first call is decided; it now waits on this connection.
    let (conn, _) = hang_guard("the agent's connection", listener.accept())
        .await
        .unwrap();
    std::fs::write(&path, policy("deny")).unwrap();
    // A later mtime than the first write's, even on a filesystem with a coarse clock.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(10))
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reloaded = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("access policies reloaded"))
    });
    assert!(
        hang_guard("the reload report", reloaded).await.unwrap(),
        "the host reports the reload"
    );
    drop(conn);
    let out = hang_guard(
        "run-agent's end",
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .unwrap()
    .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let probes = &report["output"]["probes"];
    assert_eq!(probes[0]["ok"], true, "{report}");
    assert_eq!(probes[1]["ok"], true, "{report}");
    assert_eq!(probes[2]["ok"], false, "{report}");
    let e = probes[2]["error"].as_str().unwrap();
    assert!(e.contains("policy `v-deny` rule 2 denies it"), "{e}");
}
