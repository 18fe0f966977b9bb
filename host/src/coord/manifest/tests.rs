use super::*;

const BASE: &str = r#"
[task]
id = "t"

[strategy]
type = "hybrid"
maxConcurrentAgents = 2

[agents.worker]
component = "guest:worker"

[[subtasks]]
id = "a"
outputs = ["x"]

[[subtasks]]
id = "b"
inputs = [{ name = "x", from = "a.x" }]
"#;

fn check(text: &str) -> Result<Manifest, String> {
    let path = Path::new("m.toml");
    let m = Manifest::parse(text, path).map_err(|e| e.to_string())?;
    m.check(text, path).map_err(|e| e.to_string())?;
    Ok(m)
}

/// Each change to [`BASE`] is refused with an error naming the field and saying why.
#[test]
fn each_invalid_field_is_named_with_what_is_wrong() {
    check(BASE).expect("the base manifest is valid");
    for (from, to, field, why) in [
        (
            "maxConcurrentAgents = 2",
            "maxConcurrentAgents = 0",
            "strategy.maxConcurrentAgents",
            "must be at least 1",
        ),
        (
            "maxConcurrentAgents = 2",
            "maxConcurrentAgents = 2\nstallWindowMs = 0",
            "strategy.stallWindowMs",
            "must be at least 1",
        ),
        (
            "maxConcurrentAgents = 2",
            "maxConcurrentAgents = 2\nretry = { maxAttempts = 0 }",
            "strategy.retry.maxAttempts",
            "1 means no retry",
        ),
        (
            "maxConcurrentAgents = 2",
            "maxConcurrentAgents = 2\nretry = { deadlineExtensionFactor = 1.0 }",
            "strategy.retry.deadlineExtensionFactor",
            "must be a number > 1",
        ),
        (
            "id = \"b\"",
            "id = \"a\"",
            "subtasks[1].id",
            "`a` is declared twice",
        ),
        (
            "id = \"b\"",
            "id = \"sync\"",
            "subtasks[1].id",
            "not a usable id",
        ),
        (
            "from = \"a.x\"",
            "from = \"ax\"",
            "subtasks[1].inputs[0].from",
            "is not `<subtask>.<output>` or `sync.<point>`",
        ),
        (
            "from = \"a.x\"",
            "from = \"sync.nope\"",
            "subtasks[1].inputs[0].from",
            "no synchronization point `nope`",
        ),
        (
            "from = \"a.x\"",
            "from = \"c.x\"",
            "subtasks[1].inputs[0].from",
            "no subtask `c` produces `c.x`",
        ),
    ] {
        let text = BASE.replacen(from, to, 1);
        let e = check(&text).expect_err(&text);
        assert!(e.contains(field), "{field}: {e}");
        assert!(e.contains(why), "{why}: {e}");
    }
}

#[test]
fn a_point_listing_a_participant_twice_is_refused() {
    let point = "\n[[strategy.synchronizationPoints]]\nid = \"p\"\ntype = \"barrier\"\nparticipants = [\"a\", \"b\"]\n";
    let ok = BASE
        .replacen(
            "maxConcurrentAgents = 2",
            &format!("maxConcurrentAgents = 2{point}"),
            1,
        )
        .replacen("inputs = [{ name = \"x\", from = \"a.x\" }]", "", 1);
    check(&ok).expect("distinct participants are valid");
    let twice = ok.replace("[\"a\", \"b\"]", "[\"a\", \"a\"]");
    let e = check(&twice).unwrap_err();
    assert!(
        e.contains("strategy.synchronizationPoints[0].participants"),
        "{e}"
    );
    assert!(e.contains("`a` is listed twice"), "{e}");
}

#[test]
fn sources_parse_outputs_and_sync_points() {
    assert_eq!(
        Source::parse("a.x"),
        Some(Source::Output {
            subtask: "a".into(),
            output: "x".into()
        })
    );
    assert_eq!(Source::parse("sync.p"), Some(Source::Sync("p".into())));
    for bad in ["ax", "a.", ".x", ""] {
        assert_eq!(Source::parse(bad), None, "{bad}");
    }
}

#[test]
fn versions_compare_numerically_part_by_part() {
    assert!(version_at_least("1.2.10", "1.2.9"));
    assert!(!version_at_least("1.2.9", "1.2.10"));
    assert!(version_at_least("1.2", "1.2.0"), "missing parts are 0");
    assert!(!version_at_least("1.2", "1.2.1"));
    assert!(
        version_at_least("1.0-beta", "1.0-alpha"),
        "text compares as text"
    );
}

#[test]
fn dependencies_and_ancestors_follow_inputs_depends_on_and_points() {
    let text = BASE.to_string() + "\n[[subtasks]]\nid = \"c\"\ndependsOn = [\"b\"]\n";
    let m = check(&text).unwrap();
    let deps = m.dependencies();
    assert_eq!(deps["b"].0, BTreeSet::from(["a".to_string()]));
    assert_eq!(deps["c"].0, BTreeSet::from(["b".to_string()]));
    assert!(deps["a"].0.is_empty());
    let anc = m.ancestors();
    assert_eq!(anc["c"], BTreeSet::from(["a".to_string(), "b".to_string()]));
}

/// [`BASE`]'s parts, each with room for extra lines.
#[derive(Default)]
struct Parts {
    task: String,
    strategy: String,
    retry: String,
    resources: String,
    agents: String,
    a: String,
    more: String,
}

impl Parts {
    fn text(&self) -> String {
        format!(
            "[task]\nid = \"t\"\n{}\n[strategy]\ntype = \"hybrid\"\n{}\n[strategy.retry]\n{}\n\
             [resources]\n{}\n[agents.worker]\ncomponent = \"guest:worker\"\n{}\n\
             [[subtasks]]\nid = \"a\"\noutputs = [\"x\"]\n{}\n\
             [[subtasks]]\nid = \"b\"\ninputs = [{{ name = \"x\", from = \"a.x\" }}]\n{}\n",
            self.task, self.strategy, self.retry, self.resources, self.agents, self.a, self.more
        )
    }
}

/// Two independent subtasks, for sync points.
const CD: &str = "\n[[subtasks]]\nid = \"c\"\n\n[[subtasks]]\nid = \"d\"\n";

/// Each bound: the manifest at the bound is valid; one past it is refused naming the key and
/// the bound.
#[test]
fn every_count_time_and_factor_a_manifest_sets_is_bounded_at_its_ceiling() {
    let week = MAX_MANIFEST_MS;
    type Case = (
        &'static str,
        Box<dyn Fn(&mut Parts, String)>,
        String,
        String,
    );
    let scalar =
        |key: &'static str, set: fn(&mut Parts, String), max: String, past: String| -> Case {
            (key, Box::new(set), max, past)
        };
    let cases: Vec<Case> = vec![
        scalar(
            "task.timeLimitMs",
            |p, v| p.task = format!("timeLimitMs = {v}"),
            week.to_string(),
            (week + 1).to_string(),
        ),
        scalar(
            "strategy.maxConcurrentAgents",
            |p, v| p.strategy = format!("maxConcurrentAgents = {v}"),
            MAX_CONCURRENT_AGENTS.to_string(),
            (MAX_CONCURRENT_AGENTS + 1).to_string(),
        ),
        scalar(
            "strategy.stallWindowMs",
            |p, v| p.strategy = format!("stallWindowMs = {v}"),
            week.to_string(),
            (week + 1).to_string(),
        ),
        scalar(
            "strategy.retry.maxAttempts",
            |p, v| p.retry = format!("maxAttempts = {v}"),
            MAX_ATTEMPTS.to_string(),
            (MAX_ATTEMPTS + 1).to_string(),
        ),
        scalar(
            "strategy.retry.backoffMs",
            |p, v| p.retry = format!("backoffMs = {v}"),
            MAX_BACKOFF_MS.to_string(),
            (MAX_BACKOFF_MS + 1).to_string(),
        ),
        scalar(
            "strategy.retry.backoffFactor",
            |p, v| p.retry = format!("backoffFactor = {v}"),
            "100.0".into(),
            "100.5".into(),
        ),
        scalar(
            "strategy.retry.maxReassignments",
            |p, v| p.retry = format!("maxReassignments = {v}"),
            MAX_REASSIGNMENTS.to_string(),
            (MAX_REASSIGNMENTS + 1).to_string(),
        ),
        scalar(
            "strategy.retry.deadlineExtensionFactor",
            |p, v| p.retry = format!("deadlineExtensionFactor = {v}"),
            "100.0".into(),
            "100.5".into(),
        ),
        scalar(
            "strategy.retry.maxExtensions",
            |p, v| p.retry = format!("maxExtensions = {v}"),
            MAX_EXTENSIONS.to_string(),
            (MAX_EXTENSIONS + 1).to_string(),
        ),
        scalar(
            "resources.maxTotalMemoryMB",
            |p, v| p.resources = format!("maxTotalMemoryMB = {v}"),
            MAX_TOTAL_MEMORY_MB.to_string(),
            (MAX_TOTAL_MEMORY_MB + 1).to_string(),
        ),
        scalar(
            "resources.maxConcurrentAllocations",
            |p, v| p.resources = format!("maxConcurrentAllocations = {v}"),
            MAX_CONCURRENT_ALLOCATIONS.to_string(),
            (MAX_CONCURRENT_ALLOCATIONS + 1).to_string(),
        ),
        scalar(
            "resources.allocationGraceMs",
            |p, v| p.resources = format!("allocationGraceMs = {v}"),
            week.to_string(),
            (week + 1).to_string(),
        ),
        scalar(
            "subtasks[0].estimatedDurationMs",
            |p, v| p.a = format!("estimatedDurationMs = {v}"),
            week.to_string(),
            (week + 1).to_string(),
        ),
        scalar(
            "subtasks[0].timeLimitMs",
            |p, v| p.a = format!("timeLimitMs = {v}"),
            week.to_string(),
            (week + 1).to_string(),
        ),
        scalar(
            "subtasks[0].constraints.maxDurationMs",
            |p, v| p.a = format!("constraints = {{ maxDurationMs = {v} }}"),
            week.to_string(),
            (week + 1).to_string(),
        ),
        scalar(
            "strategy.synchronizationPoints[0].timeoutMs",
            |p, v| {
                p.more = format!(
                    "\n[[strategy.synchronizationPoints]]\nid = \"p\"\ntype = \"barrier\"\nparticipants = [\"c\", \"d\"]\ntimeoutMs = {v}\n{CD}"
                )
            },
            week.to_string(),
            (week + 1).to_string(),
        ),
        scalar(
            "strategy.synchronizationPoints[0].maxResultBytes",
            |p, v| {
                p.more = format!(
                    "\n[[strategy.synchronizationPoints]]\nid = \"p\"\ntype = \"barrier\"\nparticipants = [\"c\", \"d\"]\nmaxResultBytes = {v}\n{CD}"
                )
            },
            MAX_RESULT_BYTES.to_string(),
            (MAX_RESULT_BYTES + 1).to_string(),
        ),
        // Counts: the value is how many entries to generate.
        scalar(
            "subtasks",
            |p, v| {
                let n: usize = v.parse().unwrap();
                // `a` and `b` are two of them.
                p.more = (2..n)
                    .map(|i| format!("\n[[subtasks]]\nid = \"s{i}\"\n"))
                    .collect();
            },
            MAX_SUBTASKS.to_string(),
            (MAX_SUBTASKS + 1).to_string(),
        ),
        scalar(
            "agents",
            |p, v| {
                let n: usize = v.parse().unwrap();
                p.agents = (1..n)
                    .map(|i| format!("\n[agents.w{i}]\ncomponent = \"guest:worker\"\n"))
                    .collect();
            },
            MAX_AGENTS.to_string(),
            (MAX_AGENTS + 1).to_string(),
        ),
        scalar(
            "strategy.synchronizationPoints",
            |p, v| {
                let n: usize = v.parse().unwrap();
                p.more = (0..n).map(|i| format!("\n[[strategy.synchronizationPoints]]\nid = \"p{i}\"\ntype = \"barrier\"\nparticipants = [\"c\", \"d\"]\n")).collect::<String>() + CD;
            },
            MAX_SYNC_POINTS.to_string(),
            (MAX_SYNC_POINTS + 1).to_string(),
        ),
        scalar(
            "strategy.maxSyncBytes",
            |p, v| p.strategy = format!("maxSyncBytes = {v}"),
            MAX_SYNC_BYTES.to_string(),
            (MAX_SYNC_BYTES + 1).to_string(),
        ),
        scalar(
            "strategy.synchronizationPoints[*].participants",
            |p, v| {
                // 1,000 points over 101 extra subtasks: 999 of 100 participants, the last of
                // the rest (100 at the bound, 101 past it).
                let n: usize = v.parse().unwrap();
                let names = |k: usize| {
                    (0..k)
                        .map(|i| format!("\"x{i}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let hundred = names(100);
                let mut more: String = (0..999)
                    .map(|i| format!("\n[[strategy.synchronizationPoints]]\nid = \"q{i}\"\ntype = \"barrier\"\nparticipants = [{hundred}]\n"))
                    .collect();
                more += &format!(
                    "\n[[strategy.synchronizationPoints]]\nid = \"last\"\ntype = \"barrier\"\nparticipants = [{}]\n",
                    names(n - 99_900)
                );
                more += &(0..101)
                    .map(|i| format!("\n[[subtasks]]\nid = \"x{i}\"\n"))
                    .collect::<String>();
                p.more = more;
            },
            MAX_SYNC_PARTICIPANTS.to_string(),
            (MAX_SYNC_PARTICIPANTS + 1).to_string(),
        ),
        scalar(
            "subtasks[0].dependsOn",
            |p, v| {
                let n: usize = v.parse().unwrap();
                p.more = "\n[[subtasks]]\nid = \"c\"\n".into();
                p.a = format!("dependsOn = [{}]", vec!["\"c\""; n].join(", "));
            },
            MAX_SUBTASK_LINKS.to_string(),
            (MAX_SUBTASK_LINKS + 1).to_string(),
        ),
        scalar(
            "subtasks[0].inputs",
            |p, v| {
                let n: usize = v.parse().unwrap();
                let inputs: Vec<String> = (0..n)
                    .map(|i| format!("{{ name = \"i{i}\", value = {i} }}"))
                    .collect();
                p.a = format!("inputs = [{}]", inputs.join(", "));
            },
            MAX_SUBTASK_LINKS.to_string(),
            (MAX_SUBTASK_LINKS + 1).to_string(),
        ),
        scalar(
            "subtasks[0].successCriteria",
            |p, v| {
                let n: usize = v.parse().unwrap();
                p.a = format!(
                    "successCriteria = [{}]",
                    vec!["{ criterion = \"outputs-present\" }"; n].join(", ")
                );
            },
            MAX_SUCCESS_CRITERIA.to_string(),
            (MAX_SUCCESS_CRITERIA + 1).to_string(),
        ),
    ];
    for (key, set, max, past) in cases {
        let mut parts = Parts::default();
        set(&mut parts, max.clone());
        check(&parts.text()).unwrap_or_else(|e| panic!("{key} = {max} is within its bound: {e}"));
        let mut parts = Parts::default();
        set(&mut parts, past.clone());
        let e = check(&parts.text()).expect_err(&format!("{key} = {past} is past its bound"));
        assert!(
            e.contains(&format!("`{key}`")) || e.contains(&format!("{key}:")) || e.contains(key),
            "{key}: {e}"
        );
        assert!(e.contains("the most a manifest may set is"), "{key}: {e}");
    }
}

#[test]
fn a_manifest_past_its_byte_bound_is_refused_before_parsing() {
    let pad = |n: usize| format!("{BASE}\n#{}\n", "x".repeat(n));
    let at = pad(MAX_MANIFEST_BYTES - BASE.len() - 3);
    assert_eq!(at.len(), MAX_MANIFEST_BYTES);
    check(&at).expect("a manifest of exactly the bound parses");
    let past = pad(MAX_MANIFEST_BYTES - BASE.len() - 2);
    let e = check(&past).unwrap_err();
    assert!(e.contains("the most accepted is 8388608 bytes"), "{e}");
    // Loading reads no more than the bound plus one byte, whatever the file holds.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    std::fs::write(&path, format!("{past}{}", "#".repeat(1 << 20))).unwrap();
    let e = Manifest::load(&path).unwrap_err().to_string();
    assert!(e.contains("8388609 bytes or more"), "{e}");
}

#[test]
fn a_point_holds_at_least_a_kibibyte_of_payloads() {
    let point = |v: u64| Parts {
        more: format!(
            "\n[[strategy.synchronizationPoints]]\nid = \"p\"\ntype = \"barrier\"\nparticipants = [\"c\", \"d\"]\nmaxResultBytes = {v}\n{CD}"
        ),
        ..Parts::default()
    };
    check(&point(MIN_RESULT_BYTES).text()).expect("the minimum is accepted");
    let e = check(&point(MIN_RESULT_BYTES - 1).text()).unwrap_err();
    assert!(
        e.contains("maxResultBytes") && e.contains("must be at least 1024"),
        "{e}"
    );
}

#[test]
fn the_points_of_a_run_hold_at_least_a_kibibyte_together() {
    let with = |v: u64| Parts {
        strategy: format!("maxSyncBytes = {v}"),
        ..Parts::default()
    };
    check(&with(MIN_RESULT_BYTES).text()).expect("the minimum is accepted");
    let e = check(&with(MIN_RESULT_BYTES - 1).text()).unwrap_err();
    assert!(
        e.contains("strategy.maxSyncBytes") && e.contains("must be at least 1024"),
        "{e}"
    );
}

#[test]
fn a_threshold_that_is_not_a_finite_number_is_refused() {
    for bad in ["nan", "inf", "-inf"] {
        let parts = Parts {
            a: format!(
                "successCriteria = [{{ criterion = \"max-duration-ms\", threshold = {bad} }}]"
            ),
            ..Parts::default()
        };
        let e = check(&parts.text()).unwrap_err();
        assert!(
            e.contains("subtasks[0].successCriteria[0].threshold") && e.contains("finite"),
            "{e}"
        );
    }
}
