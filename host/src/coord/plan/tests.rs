use super::*;
use crate::engine::HostConfig;
use std::sync::OnceLock;

fn host() -> &'static AgentHost {
    static HOST: OnceLock<AgentHost> = OnceLock::new();
    HOST.get_or_init(|| AgentHost::new(HostConfig::default()).expect("host starts"))
}

async fn planned(text: &str) -> Result<Plan, Error> {
    let path = Path::new("plan.toml");
    let manifest = Manifest::parse(text, path)?;
    manifest.check(text, path)?;
    let dir = Path::new(qi_guest_artifacts::WORKER_COMPONENT)
        .parent()
        .expect("guest directory");
    let agents = prepare_agents(host(), &manifest, text, path, dir).await?;
    plan(&manifest, &agents, text, path)
}

const AGENTS: &str = r#"
[agents.worker]
component = "guest:worker"

[agents.backup]
component = "guest:worker"
"#;

/// `a ──► c ──┐, b ──► d ──┴──► e` with estimates a 100, b 300, c 100, d 100, e 50.
fn diamond(strategy: &str, concurrency: u32) -> String {
    format!(
        r#"
[task]
id = "t"
[strategy]
type = "{strategy}"
maxConcurrentAgents = {concurrency}
{AGENTS}
[[subtasks]]
id = "a"
estimatedDurationMs = 100
outputs = ["x"]
[[subtasks]]
id = "b"
estimatedDurationMs = 300
outputs = ["x"]
[[subtasks]]
id = "c"
estimatedDurationMs = 100
outputs = ["x"]
inputs = [{{ name = "x", from = "a.x" }}]
[[subtasks]]
id = "d"
estimatedDurationMs = 100
outputs = ["x"]
inputs = [{{ name = "x", from = "b.x" }}]
[[subtasks]]
id = "e"
estimatedDurationMs = 50
dependsOn = ["c", "d"]
"#
    )
}

#[tokio::test]
async fn levels_critical_path_and_estimates_follow_the_graph() {
    let p = planned(&diamond("hybrid", 4)).await.unwrap();
    let a = &p.analysis;
    assert_eq!(a.levels, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    assert_eq!(a.critical_path, ["b", "d", "e"]);
    assert_eq!(a.critical_path_ms, 450);
    assert_eq!(a.total_estimated_ms, 650);
    // DAG: max(critical path, total / concurrency).
    assert_eq!(a.estimated_ms, 450);
    assert_eq!(a.recommended_agents, 2);
    assert!(a.suitable, "{}", a.reason);
    assert_eq!(
        a.parallelization_opportunities,
        ["level 0: a, b", "level 1: c, d"]
    );
    let levels: Vec<(&str, usize)> = p
        .subtasks
        .iter()
        .map(|s| (s.id.as_str(), s.level))
        .collect();
    assert_eq!(levels, [("a", 0), ("b", 0), ("c", 1), ("d", 1), ("e", 2)]);
    assert_eq!(p.subtasks[4].depends_on, ["c", "d"]);

    // Waves: each level lasts as long as its longest subtask (300 + 100 + 50); with one
    // agent at a time, every subtask is its own wave.
    let p = planned(&diamond("parallel", 4)).await.unwrap();
    assert_eq!(p.analysis.estimated_ms, 450);
    let p = planned(&diamond("parallel", 1)).await.unwrap();
    assert_eq!(p.analysis.estimated_ms, 650);
    // A DAG strategy with one agent is bounded by the total.
    let p = planned(&diamond("hybrid", 1)).await.unwrap();
    assert_eq!(p.analysis.estimated_ms, 650);
    let p = planned(&diamond("sequential", 4)).await.unwrap();
    assert_eq!(p.analysis.estimated_ms, 650);
    assert_eq!(p.analysis.estimated_benefit, 0.0);
}

#[tokio::test]
async fn a_chain_or_an_indivisible_task_is_not_distributed() {
    let chain = format!(
        "[task]\nid = \"t\"\n[strategy]\ntype = \"hybrid\"\n{AGENTS}\n[[subtasks]]\nid = \"a\"\n[[subtasks]]\nid = \"b\"\ndependsOn = [\"a\"]\n"
    );
    let p = planned(&chain).await.unwrap();
    assert!(!p.analysis.suitable);
    assert!(p.analysis.reason.contains("chain"), "{}", p.analysis.reason);
    assert_eq!(p.strategy, StrategyKind::Hybrid);

    let whole = diamond("hybrid", 4).replace("id = \"t\"", "id = \"t\"\ndecomposable = false");
    let p = planned(&whole).await.unwrap();
    assert!(!p.analysis.suitable);
    assert_eq!(p.strategy, StrategyKind::Sequential, "one at a time");
    assert!(
        p.analysis.reason.contains("task.decomposable"),
        "{}",
        p.analysis.reason
    );
}

#[tokio::test]
async fn candidates_put_the_named_agent_first_then_equals_by_name() {
    let text = diamond("hybrid", 4).replacen("id = \"b\"", "id = \"b\"\nagent = \"worker\"", 1);
    let p = planned(&text).await.unwrap();
    let cands = |id: &str| {
        p.subtasks
            .iter()
            .find(|s| s.id == id)
            .unwrap()
            .candidates
            .clone()
    };
    assert_eq!(cands("b"), ["worker", "backup"], "named first");
    // Same capabilities (a spec's are added to the component's): by name.
    assert_eq!(cands("a"), ["backup", "worker"]);

    // A requirement no agent meets is refused naming the field and each agent's reason.
    let none = text.replacen(
        "id = \"a\"",
        "id = \"a\"\nrequirements = { capabilities = [\"translate\"] }",
        1,
    );
    let e = planned(&none).await.unwrap_err().to_string();
    assert!(e.contains("subtasks[0].requirements"), "{e}");
    assert!(e.contains("`backup` lacks capability `translate`"), "{e}");
    assert!(e.contains("`worker` lacks capability `translate`"), "{e}");
}
