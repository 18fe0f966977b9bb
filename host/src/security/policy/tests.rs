use super::Effect::{Allow, Deny};
use super::*;
use crate::security::{AccessControl, Request, TrustLevel};
use crate::spec::IsolationLevel;

fn rule(effect: Effect, resources: &[&str], condition: Option<&str>) -> PolicyRule {
    PolicyRule {
        effect,
        resources: resources.iter().map(|s| s.to_string()).collect(),
        agents: vec!["*".into()],
        actions: vec!["*".into()],
        condition: condition.map(str::to_string),
    }
}

fn policy(id: &str, priority: i32, rules: Vec<PolicyRule>) -> AccessPolicy {
    AccessPolicy {
        id: id.into(),
        name: String::new(),
        priority,
        active: true,
        rules,
    }
}

const LABELS: &[String] = &[];

fn req<'a>(trust: TrustLevel, kind: &'a str, id: &'a str, action: &'a str) -> Request<'a> {
    Request {
        agent_id: "agent-1",
        agent_name: Some("worker"),
        trust,
        capabilities: &[],
        isolation: IsolationLevel::Sandbox,
        kind,
        id,
        resource_type: Some("notes"),
        owner: Some("agent-0"),
        labels: LABELS,
        action,
    }
}

fn allowed(policies: Vec<AccessPolicy>, r: &Request<'_>) -> bool {
    let set = PolicySet::new(policies).unwrap();
    let d = set.decide(r);
    assert_eq!(d, set.decide_uncached(r), "the cache agrees with Cedar");
    d.allowed
}

#[test]
fn tiers_decide_from_high_to_low_priority_and_deny_wins_within_a_tier() {
    let low = TrustLevel::Low;
    let r = req(low, "context", "x", "get");
    // Higher tier decides, in both directions.
    assert!(allowed(
        vec![
            policy("p", 0, vec![rule(Deny, &["context/*"], None)]),
            policy("q", 5, vec![rule(Allow, &["context/x"], None)]),
        ],
        &r
    ));
    assert!(!allowed(
        vec![
            policy("p", 9, vec![rule(Deny, &["*"], None)]),
            policy("q", 5, vec![rule(Allow, &["context/x"], None)]),
        ],
        &r
    ));
    // A higher tier with no matching rule (its condition false) passes to the next.
    assert!(allowed(
        vec![
            policy(
                "p",
                9,
                vec![rule(Deny, &["*"], Some("principal.trust >= 3"))]
            ),
            policy("q", 5, vec![rule(Allow, &["context/x"], None)]),
        ],
        &r
    ));
    // Within a tier deny wins, in either order and across policies of the same priority.
    for rules in [
        vec![
            rule(Allow, &["context/*"], None),
            rule(Deny, &["context/*"], None),
        ],
        vec![
            rule(Deny, &["context/*"], None),
            rule(Allow, &["context/*"], None),
        ],
    ] {
        assert!(!allowed(vec![policy("p", 0, rules)], &r));
    }
    let set = PolicySet::new(vec![
        policy("a", 1, vec![rule(Allow, &["*"], None)]),
        policy("d", 1, vec![rule(Deny, &["context/x"], None)]),
    ])
    .unwrap();
    let d = set.decide(&r);
    assert!(!d.allowed);
    assert_eq!(d.reason, "policy `d` rule 1 denies it");
    // Nothing matches: deny.
    let d = PolicySet::new(vec![policy(
        "p",
        0,
        vec![rule(Allow, &["context/a*"], None)],
    )])
    .unwrap()
    .decide(&r);
    assert_eq!(d.reason, "no policy rule matches (default deny)");
    assert!(!d.allowed);
    // Inactive policies are ignored.
    let mut p = policy("p", 0, vec![rule(Allow, &["*"], None)]);
    p.active = false;
    assert!(!allowed(vec![p], &r));
}

#[test]
fn conditions_are_cedar_over_agent_resource_and_action() {
    let cond = |c: &str, r: &Request<'_>| {
        allowed(vec![policy("p", 0, vec![rule(Allow, &["*"], Some(c))])], r)
    };
    let low = req(TrustLevel::Low, "context", "x", "get");
    let high = req(TrustLevel::High, "context", "x", "get");
    assert!(!cond("principal.trust >= 2", &low));
    assert!(cond("principal.trust >= 2", &high));
    assert!(cond(
        r#"resource.type == "notes" && resource.owner == "agent-0""#,
        &low
    ));
    assert!(!cond(r#"resource.type == "plan""#, &low));
    assert!(cond(r#"action == Action::"get""#, &low));
    assert!(!cond(r#"action == Action::"put""#, &low));
    assert!(cond(
        r#"principal.name == "worker" && principal.id == "agent-1""#,
        &low
    ));
    assert!(cond(
        r#"resource.name == "context/x" && resource.kind == "context""#,
        &low
    ));
    assert!(!cond(r#"principal.capabilities.contains("review")"#, &low));
    let labels = vec!["pii".to_string()];
    let caps = vec!["review".to_string()];
    let mut labelled = req(TrustLevel::Low, "context", "x", "get");
    labelled.labels = &labels;
    labelled.capabilities = &caps;
    assert!(cond(r#"resource.labels.contains("pii")"#, &labelled));
    assert!(cond(
        r#"principal.capabilities.contains("review")"#,
        &labelled
    ));
    assert!(cond(r#"principal.isolation == "sandbox""#, &low));
    // A deny whose condition does not hold does not count.
    let rules = vec![
        rule(Allow, &["*"], None),
        rule(Deny, &["*"], Some(r#"action == Action::"put""#)),
    ];
    assert!(allowed(vec![policy("p", 0, rules.clone())], &low));
    assert!(!allowed(
        vec![policy("p", 0, rules)],
        &req(TrustLevel::Low, "context", "x", "put")
    ));
    // A condition that fails at run time (overflow) denies, naming its rule.
    let set = PolicySet::new(vec![policy(
        "p",
        0,
        vec![rule(
            Allow,
            &["*"],
            Some("principal.trust + 9223372036854775807 > 0"),
        )],
    )])
    .unwrap();
    let d = set.decide(&low);
    assert!(!d.allowed);
    assert!(
        d.reason.contains("policy `p` rule 1: its condition failed"),
        "{d:?}"
    );
}

#[test]
fn agents_match_by_id_or_host_assigned_name_and_actions_by_name() {
    let r = req(TrustLevel::Low, "tool", "t", "call");
    for agents in ["worker", "agent-1", "agent-*"] {
        let mut x = rule(Allow, &["tool/*"], None);
        x.agents = vec![agents.into()];
        assert!(allowed(vec![policy("p", 0, vec![x])], &r), "{agents}");
    }
    let mut x = rule(Allow, &["tool/*"], None);
    x.agents = vec!["reviewer".into()];
    assert!(!allowed(vec![policy("p", 0, vec![x.clone()])], &r));
    let mut unnamed = r.clone();
    unnamed.agent_name = None;
    x.agents = vec!["worker".into()];
    assert!(
        !allowed(vec![policy("p", 0, vec![x.clone()])], &unnamed),
        "no name, no match"
    );
    x.agents = vec!["*".into()];
    x.actions = vec!["call".into()];
    assert!(allowed(vec![policy("p", 0, vec![x.clone()])], &r));
    x.resources = vec!["*".into()];
    x.actions = vec!["get".into()];
    assert!(!allowed(vec![policy("p", 0, vec![x])], &r));
}

#[test]
fn a_single_star_stays_in_its_segment_and_a_double_star_crosses() {
    let r = |id: &'static str| req(TrustLevel::Low, "file", id, "read");
    let one = || {
        vec![policy(
            "p",
            0,
            vec![rule(Allow, &["file/workspace/*"], None)],
        )]
    };
    let any = || {
        vec![policy(
            "p",
            0,
            vec![rule(Allow, &["file/workspace/**"], None)],
        )]
    };
    assert!(allowed(one(), &r("workspace/a.rs")));
    assert!(!allowed(one(), &r("workspace/src/a.rs")));
    assert!(!allowed(one(), &r("workspace")));
    assert!(allowed(any(), &r("workspace/a.rs")));
    assert!(allowed(any(), &r("workspace/src/deep/a.rs")));
    assert!(!allowed(any(), &r("other/a.rs")));
    let q = || {
        vec![policy(
            "p",
            0,
            vec![rule(Allow, &["file/workspace/?.rs"], None)],
        )]
    };
    assert!(allowed(q(), &r("workspace/a.rs")));
    assert!(!allowed(q(), &r("workspace//.rs")));
}

fn errors(policies: Vec<AccessPolicy>) -> Vec<PolicyError> {
    PolicySet::compile(policies).unwrap_err()
}

#[test]
fn load_errors_name_policy_rule_field_and_position() {
    let e = errors(vec![policy(
        "p1",
        0,
        vec![
            rule(Allow, &["*"], None),
            rule(Allow, &["*"], Some("principal.trust >= ")),
        ],
    )]);
    assert_eq!(e[0].policy.as_deref(), Some("p1"));
    assert_eq!(e[0].rule, Some(2));
    assert_eq!(e[0].field, Some("condition"));
    assert!(e[0].in_condition.is_some(), "{e:?}");
    assert!(
        e[0].to_string()
            .starts_with("policy `p1` rule 2 `condition` at line 1, column"),
        "{}",
        e[0]
    );
    // A type error, found by validation against the schema: its position in the condition.
    let e = errors(vec![policy(
        "p1",
        0,
        vec![rule(
            Allow,
            &["*"],
            Some("true &&\n  principal.trust == \"high\""),
        )],
    )]);
    assert_eq!(e[0].in_condition.map(|p| p.0), Some(2), "{e:?}");
    let e = errors(vec![policy(
        "p1",
        0,
        vec![rule(Allow, &["*"], Some("principal.colour == 1"))],
    )]);
    assert!(e[0].message.contains("colour"), "{e:?}");
    // Bad globs, unknown kinds and actions.
    let e = errors(vec![policy(
        "p1",
        0,
        vec![rule(Allow, &["context/a[b"], None)],
    )]);
    assert_eq!((e[0].field, e[0].rule), (Some("resources"), Some(1)));
    assert!(e[0].message.contains("`context/a[b`"), "{e:?}");
    let e = errors(vec![policy(
        "p1",
        0,
        vec![rule(Allow, &["contxt/*"], None)],
    )]);
    assert!(
        e[0].message.contains("`contxt` is not a resource kind"),
        "{e:?}"
    );
    let e = errors(vec![policy("p1", 0, vec![rule(Allow, &["plan"], None)])]);
    assert!(e[0].message.contains("names no kind"), "{e:?}");
    let mut r = rule(Allow, &["*"], None);
    r.actions = vec!["gett".into()];
    let e = errors(vec![policy("p1", 0, vec![r.clone()])]);
    assert!(e[0].message.contains("`gett` is not an action"), "{e:?}");
    r.actions = vec!["x*".into()];
    assert!(
        errors(vec![policy("p1", 0, vec![r])])[0]
            .message
            .contains("matches no action")
    );
    let e = errors(vec![policy("p1", 0, vec![]), policy("p1", 0, vec![])]);
    assert!(e[0].message.contains("used twice"), "{e:?}");
    // A condition cannot close its clause and add another.
    let e = errors(vec![policy(
        "p1",
        0,
        vec![rule(Allow, &["*"], Some("false } unless { false"))],
    )]);
    assert_eq!(e[0].field, Some("condition"));
}

#[test]
fn file_errors_give_line_and_column() {
    let e = PolicySet::parse(
        "[[policies]]\nid = \"p\"\nrules = []\ncolour = 1\n",
        PolicyFormat::Toml,
    )
    .unwrap_err();
    assert_eq!(e[0].in_file, Some((4, 1)), "{e:?}");
    assert!(e[0].message.contains("unknown field `colour`"), "{e:?}");
    let e = PolicySet::parse("{\"policies\": [\n  {\"id\": 1}]}", PolicyFormat::Json).unwrap_err();
    assert_eq!(e[0].in_file.map(|p| p.0), Some(2), "{e:?}");
}

fn condition_of(len: usize) -> String {
    // `true && true && ...` padded with spaces to exactly `len` bytes.
    let mut c = String::from("true");
    while c.len() + 8 <= len {
        c.push_str(" && true");
    }
    while c.len() < len {
        c.push(' ');
    }
    c
}

#[test]
fn a_condition_may_be_as_long_as_the_limit_and_no_longer() {
    let at = condition_of(MAX_CONDITION_BYTES);
    assert_eq!(at.len(), MAX_CONDITION_BYTES);
    PolicySet::new(vec![policy("p", 0, vec![rule(Allow, &["*"], Some(&at))])]).unwrap();
    let past = format!("{at} ");
    let e = errors(vec![policy("p", 0, vec![rule(Allow, &["*"], Some(&past))])]);
    assert!(e[0].message.contains("at most 2048"), "{e:?}");
    assert_eq!(e[0].field, Some("condition"));
}

#[test]
fn a_condition_may_nest_as_deep_as_the_limit_and_no_deeper() {
    let nest = |n: usize| format!("{}true{}", "(".repeat(n), ")".repeat(n));
    PolicySet::new(vec![policy(
        "p",
        0,
        vec![rule(Allow, &["*"], Some(&nest(MAX_CONDITION_DEPTH)))],
    )])
    .unwrap();
    let e = errors(vec![policy(
        "p",
        0,
        vec![rule(Allow, &["*"], Some(&nest(MAX_CONDITION_DEPTH + 1)))],
    )]);
    assert!(e[0].message.contains("nests deeper than 32"), "{e:?}");
    assert_eq!(e[0].in_condition, Some((1, MAX_CONDITION_DEPTH + 1)));
    // Unary operators and `if` count too; far past the limit is the same error, not a crash.
    for deep in [
        "!".repeat(100_000) + "true",
        "if true then ".repeat(40) + "true" + &" else false".repeat(40),
        "(".repeat(1_000_000),
    ] {
        let e = PolicySet::parse(
            &format!("[[policies]]\nid = \"p\"\n[[policies.rules]]\neffect = \"allow\"\nresources = [\"*\"]\ncondition = '{deep}'\n"),
            PolicyFormat::Toml,
        )
        .unwrap_err();
        assert!(
            e[0].message.contains("bytes long") || e[0].message.contains("nests deeper"),
            "{e:?}"
        );
    }
}

fn file_of(policies: usize, rules_each: usize) -> String {
    let mut t = String::new();
    for p in 0..policies {
        t.push_str(&format!("[[policies]]\nid = \"p{p}\"\n"));
        if rules_each == 0 {
            t.push_str("rules = []\n");
        }
        for _ in 0..rules_each {
            t.push_str("[[policies.rules]]\neffect = \"allow\"\nresources = [\"tool/*\"]\n");
        }
    }
    t
}

#[test]
fn policy_and_rule_counts_may_reach_their_limits_and_no_further() {
    PolicySet::parse(&file_of(MAX_POLICIES, 0), PolicyFormat::Toml).unwrap();
    let e = PolicySet::parse(&file_of(MAX_POLICIES + 1, 0), PolicyFormat::Toml).unwrap_err();
    assert!(e[0].message.contains("at most 500 are allowed"), "{e:?}");
    let each = MAX_RULES / 4;
    let set = PolicySet::parse(&file_of(4, each), PolicyFormat::Toml).unwrap();
    assert!(
        set.decide(&req(TrustLevel::Low, "tool", "t", "call"))
            .allowed
    );
    let mut past = file_of(4, each);
    past.push_str("[[policies.rules]]\neffect = \"allow\"\nresources = [\"tool/*\"]\n");
    let e = PolicySet::parse(&past, PolicyFormat::Toml).unwrap_err();
    assert!(e[0].message.contains("2001 rules; at most 2000"), "{e:?}");
}

#[test]
fn a_policy_file_may_be_as_large_as_the_limit_and_no_larger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let mut text = file_of(1, 1);
    let pad = MAX_POLICY_FILE_BYTES - text.len();
    text.push_str(&"#".repeat(pad));
    std::fs::write(&path, &text).unwrap();
    PolicySet::load(&path).unwrap();
    text.push('#');
    std::fs::write(&path, &text).unwrap();
    let e = PolicySet::load(&path).unwrap_err().to_string();
    assert!(e.contains("larger than 1048576 bytes"), "{e}");
    assert!(PolicySet::parse(&text, PolicyFormat::Toml).is_err());
}

#[test]
fn a_policy_change_is_seen_by_the_next_decision_despite_the_cache() {
    let ac = AccessControl::new(None, None);
    let r = req(TrustLevel::Low, "context", "x", "get");
    assert!(ac.enforce(&r).allowed, "no policies: open");
    ac.set_policies(Some(
        PolicySet::new(vec![policy("p", 0, vec![rule(Deny, &["*"], None)])]).unwrap(),
    ));
    assert!(!ac.enforce(&r).allowed);
    assert!(!ac.enforce(&r).allowed, "cached");
    ac.set_policies(Some(
        PolicySet::new(vec![policy("p", 0, vec![rule(Allow, &["*"], None)])]).unwrap(),
    ));
    assert!(ac.enforce(&r).allowed);
    // The cache tells requests apart by every attribute: a trust change is a new decision.
    ac.set_policies(Some(
        PolicySet::new(vec![policy(
            "p",
            0,
            vec![rule(Allow, &["*"], Some("principal.trust >= 2"))],
        )])
        .unwrap(),
    ));
    assert!(!ac.enforce(&r).allowed);
    assert!(
        ac.enforce(&req(TrustLevel::Medium, "context", "x", "get"))
            .allowed
    );
    assert!(!ac.enforce(&r).allowed);
}

#[test]
fn the_decision_cache_is_bounded_and_stays_correct_past_its_bound() {
    let set = PolicySet::new(vec![policy(
        "p",
        0,
        vec![rule(Allow, &["context/even-*"], None)],
    )])
    .unwrap();
    let ids: Vec<String> = (0..DECISION_CACHE_ENTRIES + 10)
        .map(|i| {
            if i % 2 == 0 {
                format!("even-{i}")
            } else {
                format!("odd-{i}")
            }
        })
        .collect();
    for _ in 0..2 {
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                set.decide(&req(TrustLevel::Low, "context", id, "get"))
                    .allowed,
                i % 2 == 0
            );
        }
    }
    assert!(set.eval.cached() <= DECISION_CACHE_ENTRIES);
}

#[test]
fn an_action_no_resource_kind_of_its_rule_has_is_an_error() {
    let with_actions = |resources: &[&str], actions: &[&str]| {
        let mut r = rule(Deny, resources, None);
        r.actions = actions.iter().map(|s| s.to_string()).collect();
        PolicySet::compile(vec![policy("p", 0, vec![r])])
            .err()
            .unwrap_or_default()
    };
    // `get` is a context action: on files it would never match, and the deny would not hold.
    let e = with_actions(&["file/workspace/secret/**"], &["get", "put"]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].field, Some("actions"), "{e:?}");
    assert!(e[0].message.contains("`get` is no action of file"), "{e:?}");
    let e = with_actions(&["file/**"], &["ge*"]);
    assert!(e[0].message.contains("no action of file"), "{e:?}");
    // An action of some kind named, a glob over kinds, or all actions, is fine.
    assert!(with_actions(&["file/**", "context/*"], &["get", "read"]).is_empty());
    assert!(with_actions(&["*/x/**"], &["get"]).is_empty());
    assert!(with_actions(&["file/**"], &["re*"]).is_empty());
}

#[test]
fn a_file_pattern_no_file_name_can_match_is_an_error() {
    for p in [
        "file//workspace/secret/**",
        "file/workspace/secret/",
        "file/workspace/./secret/**",
        "file/workspace/../secret/x",
    ] {
        let e = errors(vec![policy("p", 0, vec![rule(Deny, &[p], None)])]);
        assert_eq!(e.len(), 1, "{p}: {e:?}");
        assert!(e[0].message.contains("can never match"), "{p}: {e:?}");
    }
    PolicySet::new(vec![policy(
        "p",
        0,
        vec![rule(Deny, &["file/workspace/**/x"], None)],
    )])
    .unwrap();
    PolicySet::new(vec![policy("p", 0, vec![rule(Deny, &["file/"], None)])]).unwrap();
}

#[test]
fn a_condition_spelling_an_attribute_with_escapes_still_gets_the_resource_attributes() {
    // `resource["\u{6c}abels"]` is `resource.labels`: without them the deny never holds.
    let set = PolicySet::new(vec![policy(
        "p",
        0,
        vec![rule(
            Deny,
            &["context/*"],
            Some(r#"resource["\u{6c}abels"].contains("pii")"#),
        )],
    )])
    .unwrap();
    assert!(set.needs_resource_attrs());
}

#[test]
fn a_quote_in_a_comment_hides_no_nesting_from_the_bound() {
    // The quote in the comment would open a string to the depth count, up to the next quote.
    for n in [MAX_CONDITION_DEPTH + 1, 900] {
        let deep = format!("// \"\n{}true{} // \"", "(".repeat(n), ")".repeat(n));
        let text = format!(
            "[[policies]]\nid = \"p\"\n[[policies.rules]]\neffect = \"allow\"\nresources = [\"*\"]\ncondition = '''{deep}'''\n"
        );
        // Where a reload runs: a 2 MiB tokio worker.
        let e = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || PolicySet::parse(&text, PolicyFormat::Toml).err())
            .unwrap()
            .join()
            .expect("no stack overflow")
            .expect("refused");
        assert!(e[0].message.contains("nests deeper"), "{e:?}");
    }
}

#[test]
fn a_chain_of_arithmetic_counts_toward_the_depth_bound() {
    // `1+1+...` nests one level per operator: a long chain passed the bound and then denied
    // every request with "recursion limit reached".
    for op in ["+", "*", "-"] {
        let chain = |n: usize| format!("{} > 0", vec!["1"; n + 1].join(op));
        let e = errors(vec![policy(
            "p",
            0,
            vec![rule(Allow, &["*"], Some(&chain(600)))],
        )]);
        assert!(e[0].message.contains("nests deeper"), "{op}: {e:?}");
        let set = PolicySet::new(vec![policy(
            "p",
            0,
            vec![rule(Allow, &["*"], Some(&chain(MAX_CONDITION_DEPTH)))],
        )])
        .unwrap();
        let d = set.decide(&req(TrustLevel::Low, "context", "x", "get"));
        assert!(!d.reason.contains("failed to evaluate"), "{op}: {d:?}");
    }
}
