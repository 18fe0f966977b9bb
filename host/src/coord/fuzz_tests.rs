//! A property test of manifest validation: random mutations of real manifests go through
//! everything `qi-host plan` and `qi-host run` do before a run starts (parse, check, load and
//! describe the agents, plan). Whatever the mutation, each step returns `Ok` or an error; none
//! panics, overflows or hangs. The seed is fixed, so a failure reproduces; the failing manifest
//! is printed.

use super::manifest::Manifest;
use super::plan::{plan, prepare_agents};
use crate::agents::AgentHost;
use crate::engine::HostConfig;
use std::path::Path;

/// Valid manifests to mutate, each with the path (from the repository root) its relative
/// directories resolve against: both bundled examples, and one with every sync point type,
/// retries, budgets and constraints.
const SEEDS: &[(&str, &str)] = &[
    (
        "examples/code-review/task.toml",
        include_str!("../../../examples/code-review/task.toml"),
    ),
    (
        "examples/failure-handling/task.toml",
        include_str!("../../../examples/failure-handling/task.toml"),
    ),
    (
        "examples/task.toml",
        r#"
[task]
id = "t"
timeLimitMs = 60000

[strategy]
type = "adaptive"
maxConcurrentAgents = 3
failureHandling = "retry-cascade"
stallWindowMs = 5000
retry = { maxAttempts = 3, backoffMs = 10, backoffFactor = 2.0, maxReassignments = 2, deadlineExtensionFactor = 1.5, maxExtensions = 1 }

[[strategy.synchronizationPoints]]
id = "meet"
type = "barrier"
participants = ["a", "b"]
condition = "all-complete"
timeoutMs = 1000
onTimeout = "proceed"

[[strategy.synchronizationPoints]]
id = "pick"
type = "decision"
participants = ["a", "b"]
condition = "majority-complete"

[[strategy.synchronizationPoints]]
id = "sum"
type = "aggregation"
participants = ["a", "b"]
reducer = "sum"

[resources]
maxTotalMemoryMB = 256
maxConcurrentAllocations = 4
allocationGraceMs = 100

[agents.worker]
component = "guest:worker"
spec = { fuel = 1_000_000, resourceLimits = { maxMemoryMB = 32, maxExecutionTimeMs = 2000 } }

[agents.backup]
component = "guest:worker"
config = { flaky = false }

[[subtasks]]
id = "a"
priority = 3
estimatedDurationMs = 100
outputs = ["x"]
constraints = { maxDurationMs = 500, maxMemoryMB = 16 }
successCriteria = [{ criterion = "min-value", measurement = "/x", threshold = 1.0 }]

[[subtasks]]
id = "b"
timeLimitMs = 700
outputs = ["y"]

[[subtasks]]
id = "c"
dependsOn = ["a"]
inputs = [{ name = "x", from = "a.x" }, { name = "m", from = "sync.meet", required = false }, { name = "l", value = [1, 2] }]
"#,
    ),
];

/// Values that have broken validators before: zero, negatives, the edges of every integer
/// width, floats that are not numbers.
const EXTREMES: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "\"\"",
    "\"sync\"",
    "\"a.x\"",
    "[]",
    "{}",
];

/// Fragments inserted whole: references to things that may not exist, cycles, duplicates.
const FRAGMENTS: &[&str] = &[
    "\n[[subtasks]]\nid = \"a\"\n",
    "\n[[subtasks]]\nid = \"z\"\ndependsOn = [\"z\"]\n",
    "\n[[subtasks]]\nid = \"y\"\ninputs = [{ name = \"q\", from = \"sync.nowhere\" }]\n",
    "\n[[strategy.synchronizationPoints]]\nid = \"p\"\ntype = \"barrier\"\nparticipants = [\"a\", \"a\"]\n",
    "\n[[strategy.synchronizationPoints]]\nid = \"q\"\ntype = \"voting\"\nparticipants = []\ncondition = { type = \"specific-agents\", agents = [\"ghost\"] }\n",
    "\n[agents.extra]\ncomponent = \"\"\n",
    "\n[agents.\"bad name\"]\ncomponent = \"guest:worker\"\n",
    "\n[resources]\nmaxTotalMemoryMB = 0\n",
];

fn mutate(rng: &mut fastrand::Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..rng.usize(1..=4) {
        if lines.is_empty() {
            break;
        }
        let at = rng.usize(..lines.len());
        match rng.u8(..7) {
            // A value after `=` becomes an extreme.
            0 => {
                if let Some(eq) = lines[at].find('=') {
                    let key = lines[at][..eq].to_string();
                    lines[at] = format!("{key}= {}", EXTREMES[rng.usize(..EXTREMES.len())]);
                }
            }
            // A number anywhere in the line becomes an extreme.
            1 => {
                let line = &lines[at];
                if let Some(start) = line.find(|c: char| c.is_ascii_digit()) {
                    let end = line[start..]
                        .find(|c: char| !c.is_ascii_digit() && c != '_' && c != '.')
                        .map_or(line.len(), |e| start + e);
                    let pick = EXTREMES[rng.usize(..9)];
                    lines[at] = format!("{}{pick}{}", &line[..start], &line[end..]);
                }
            }
            2 => {
                lines.remove(at);
            }
            3 => {
                let copy = lines[at].clone();
                lines.insert(rng.usize(..=lines.len()), copy);
            }
            4 => {
                let other = rng.usize(..lines.len());
                lines.swap(at, other);
            }
            // Every time (`…Ms = <integer>`) of the manifest gets the same extreme: sums and
            // products of many large values.
            5 => {
                let pick = EXTREMES[rng.usize(1..8)];
                for line in &mut lines {
                    if let Some(eq) = line.find('=')
                        && line[..eq].trim_end().ends_with("Ms")
                        && line[eq + 1..].trim().parse::<i64>().is_ok()
                    {
                        *line = format!("{}= {pick}", &line[..eq]);
                    }
                }
            }
            _ => lines.push(FRAGMENTS[rng.usize(..FRAGMENTS.len())].to_string()),
        }
    }
    lines.join("\n")
}

/// Prints the manifest being validated if validation panics.
struct Show<'a>(&'a str);

impl Drop for Show<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the manifest that panicked ---\n{}\n---", self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_manifests_are_refused_or_planned_never_panic() {
    let host = AgentHost::new(HostConfig::default()).expect("host starts");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guests = Path::new(qi_guest_artifacts::WORKER_COMPONENT)
        .parent()
        .expect("guest directory");
    for (at, seed) in SEEDS {
        let path = &root.join(at);
        let manifest = Manifest::parse(seed, path).expect("seed parses");
        manifest.check(seed, path).expect("seed is valid");
        let agents = prepare_agents(&host, &manifest, seed, path, guests)
            .await
            .expect("seed's agents load");
        plan(&manifest, &agents, seed, path).expect("seed plans");
    }
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    let (mut parsed, mut checked, mut planned) = (0, 0, 0);
    const ROUNDS: usize = 3000;
    for round in 0..ROUNDS {
        let (at, seed) = SEEDS[round % SEEDS.len()];
        let path = &root.join(at);
        // Every few rounds, mutate a mutant: errors compound.
        let mut text = mutate(&mut rng, seed);
        if round % 4 == 0 {
            text = mutate(&mut rng, &text);
        }
        let _show = Show(&text);
        let Ok(manifest) = Manifest::parse(&text, path) else {
            continue;
        };
        parsed += 1;
        if manifest.check(&text, path).is_err() {
            continue;
        }
        checked += 1;
        let Ok(agents) = prepare_agents(&host, &manifest, &text, path, guests).await else {
            continue;
        };
        if plan(&manifest, &agents, &text, path).is_ok() {
            planned += 1;
        }
    }
    eprintln!("{ROUNDS} mutants: {parsed} parsed, {checked} passed the check, {planned} planned");
    // The mutations must reach every stage, or the test proves little.
    assert!(parsed > ROUNDS / 10, "{parsed} parsed");
    assert!(checked > ROUNDS / 20, "{checked} checked");
    assert!(planned > ROUNDS / 40, "{planned} planned");
}
