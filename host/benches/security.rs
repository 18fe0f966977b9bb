//! Cost of the access gate and the audit log per host call, measured within one run.
//!
//! One `worker` agent makes N `context.get` calls in a loop (probe step `context_get` with
//! `times = N`), on three hosts sharing one in-memory store:
//! 1. no access control attached (the gate is skipped),
//! 2. access control attached with no policies loaded (gate open; lifecycle audited),
//! 3. policies loaded (one allow rule with a Cedar condition), no audit log,
//! 4. policies loaded and every decision audited.
//!
//! Then Cedar's own cost per decision (`PolicySet::decide_uncached`: entities built, one tier
//! evaluated) against a decision answered by the policy set's decision cache
//! (`PolicySet::decide`).
//!
//! Prints ns per call for each and the ratios to case 1 (target for case 4: ≤ 1.2×); 21 rounds,
//! alternating, each case on a quiet store: medians, the median of each round's ratio, and the
//! fastest round of each case (runs on a shared VM are bimodal; the fastest is the least
//! disturbed). `cargo bench -p qi-host --bench security [-- N]` (default N 20,000).
//! Prints figures only; nothing here asserts on timing.

#![allow(missing_docs)]

use qi_guest_artifacts::WORKER_COMPONENT;
use qi_host::audit::AuditLog;
use qi_host::context::{
    ContextConfig, ContextService, NewContext, OPERATOR, Permission, SystemClock,
};
use qi_host::security::{AccessControl, AccessPolicy, PolicySet};
use qi_host::{
    AgentHost, EventBus, EventBusConfig, HostConfig, Store, StoreConfig, SubAgentSpecification,
    TaskRequest,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn per_call_ns(host: &AgentHost, svc: &ContextService, n: u64) -> f64 {
    let component = host.load(WORKER_COMPONENT).expect("load");
    let spec = SubAgentSpecification {
        fuel: 50_000_000_000,
        ..Default::default()
    };
    let agent = host.spawn(&component, spec).await.expect("spawn");
    svc.share(
        OPERATOR,
        "doc",
        &[agent.id().to_string()],
        &[Permission::Read],
        None,
    )
    .await
    .expect("share");
    let input = json!({"subtask": "bench", "attempt": 1, "inputs": {"steps": [{"context_get": {"id": "doc", "times": n}}]}});
    let t = Instant::now();
    let r = agent.run(TaskRequest::new("bench", input)).await;
    let elapsed = t.elapsed();
    let out = r.output.expect("runs");
    assert_eq!(out["probes"][0]["ok"], true, "{out}");
    elapsed.as_nanos() as f64 / n as f64
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    match std::env::var("RUST_BACKTRACE") {
        Ok(v) => println!("RUST_BACKTRACE: set, {v:?}"),
        Err(_) => println!("RUST_BACKTRACE: not set"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = Store::open(StoreConfig::in_memory()).expect("store");
        let bus = EventBus::new(store.clone(), EventBusConfig::default())
            .await
            .expect("bus");
        let svc = ContextService::open(
            store.clone(),
            bus,
            Arc::new(SystemClock),
            ContextConfig::default(),
        )
        .await
        .expect("context");
        svc.create(
            OPERATOR,
            NewContext {
                id: Some("doc".into()),
                context_type: "notes".into(),
                doc: json!({"n": 1}),
                ..NewContext::default()
            },
        )
        .await
        .expect("create");
        let audit = AuditLog::open(store).await.expect("audit");
        let policies: Vec<AccessPolicy> = serde_json::from_value(json!([{
            "id": "reads", "priority": 1,
            "rules": [{"effect": "allow", "resources": ["context/*"], "actions": ["get"],
                       "condition": "principal.trust >= 1 && resource.type == \"notes\""}]
        }]))
        .expect("policies");
        let config = || HostConfig {
            max_live_agents: 8,
            ..HostConfig::default()
        };
        let bare = AgentHost::new(config())
            .expect("host")
            .with_context(svc.clone());
        let open = AgentHost::new(config())
            .expect("host")
            .with_context(svc.clone())
            .with_access(Arc::new(AccessControl::new(None, Some(audit.clone()))));
        let unaudited = AgentHost::new(config())
            .expect("host")
            .with_context(svc.clone())
            .with_access(Arc::new(AccessControl::new(
                Some(PolicySet::new(policies.clone()).expect("valid")),
                None,
            )));
        let gated = AgentHost::new(config())
            .expect("host")
            .with_context(svc.clone())
            .with_access(Arc::new(AccessControl::new(
                Some(PolicySet::new(policies).expect("valid")),
                Some(audit.clone()),
            )));
        // Warm up (compile, caches).
        per_call_ns(&bare, &svc, 100).await;
        per_call_ns(&gated, &svc, 100).await;
        const ROUNDS: usize = 21;
        println!(
            "gate: {n} context.get calls by one agent per case, {ROUNDS} rounds, the four cases in \
             turn (reversed every other round)"
        );
        let (mut b, mut o, mut g, mut u) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Each case starts on a quiet store: the audit entries and the `accessed` event the
        // previous case queued (reads are coalesced: one per agent and context per minute)
        // are committed first.
        let store = svc.store().clone();
        let quiesce = || async {
            audit.flush().await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            store.write(|_| Ok(())).await.expect("store write");
        };
        let hosts = [&bare, &open, &unaudited, &gated];
        for round in 1..=ROUNDS {
            let mut ns = [0f64; 4];
            let order: Vec<usize> = if round % 2 == 1 {
                vec![0, 1, 2, 3]
            } else {
                vec![3, 2, 1, 0]
            };
            for i in order {
                quiesce().await;
                ns[i] = per_call_ns(hosts[i], &svc, n).await;
            }
            let [x, y, w, z] = ns;
            println!(
                "  round {round}: no gate {x:.0} ns/call, gate open {y:.0}, policies without audit {w:.0}, policies + audit {z:.0} (ratio {:.3})",
                z / x
            );
            b.push(x);
            o.push(y);
            g.push(z);
            u.push(w);
        }
        let w = median(u.clone());
        println!("gate: policies without an audit log: median {w:.0} ns/call");
        // The gate alone, in this thread: the same decision a `context.get` needs, without
        // the guest, the context lookup or the `accessed` event around it.
        let set = Arc::new(AccessControl::new(
            Some(PolicySet::new(serde_json::from_value(json!([{
                "id": "reads", "priority": 1,
                "rules": [{"effect": "allow", "resources": ["context/*"], "actions": ["get"],
                           "condition": "principal.trust >= 1 && resource.type == \"notes\""}]
            }])).expect("policies")).expect("valid")),
            Some(audit.clone()),
        ));
        let unaudited_set = AccessControl::new(
            Some(PolicySet::new(serde_json::from_value(json!([{
                "id": "reads", "priority": 1,
                "rules": [{"effect": "allow", "resources": ["context/*"], "actions": ["get"],
                           "condition": "principal.trust >= 1 && resource.type == \"notes\""}]
            }])).expect("policies")).expect("valid")),
            None,
        );
        let caps: Vec<String> = Vec::new();
        let labels: Vec<String> = Vec::new();
        let req = qi_host::security::Request {
            agent_id: "agent-1a2b3c-7",
            agent_name: Some("worker"),
            trust: qi_host::security::TrustLevel::Low,
            capabilities: &caps,
            isolation: qi_host::IsolationLevel::Sandbox,
            kind: "context",
            id: "doc",
            resource_type: Some("notes"),
            owner: Some("operator"),
            labels: &labels,
            action: "get",
        };
        let calls = 200_000u32;
        let cedar_set = unaudited_set.current().expect("policies");
        let mut cedar_ns = Vec::new();
        let mut cached_ns = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..calls / 10 {
                assert!(cedar_set.decide_uncached(std::hint::black_box(&req)).allowed);
            }
            cedar_ns.push(t.elapsed().as_nanos() as f64 / f64::from(calls / 10));
            let t = Instant::now();
            for _ in 0..calls {
                assert!(cedar_set.decide(std::hint::black_box(&req)).allowed);
            }
            cached_ns.push(t.elapsed().as_nanos() as f64 / f64::from(calls));
        }
        println!(
            "cedar: {:.0} ns per decision evaluated by Cedar, {:.0} ns per decision from the decision cache",
            median(cedar_ns),
            median(cached_ns)
        );
        let mut decide_ns = Vec::new();
        let mut audited_ns = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..calls {
                assert!(unaudited_set.enforce(std::hint::black_box(&req)).allowed);
            }
            decide_ns.push(t.elapsed().as_nanos() as f64 / f64::from(calls));
            let t = Instant::now();
            for _ in 0..calls {
                assert!(set.enforce(std::hint::black_box(&req)).allowed);
            }
            audited_ns.push(t.elapsed().as_nanos() as f64 / f64::from(calls));
            audit.flush().await;
        }
        let (d, a) = (median(decide_ns), median(audited_ns));
        println!(
            "gate alone: decision {d:.0} ns, decision + audit entry queued {a:.0} ns (the entry is hashed and written by the audit writer in the background)"
        );
        // Each round ran the four cases back to back, so the ratio within a round compares
        // calls made under the same load; their median is steadier than a ratio of medians.
        let paired = median(g.iter().zip(&b).map(|(z, x)| z / x).collect());
        // Runs are bimodal on a shared 2-core VM (the same case lands near 2.0 or near 3.1
        // µs/call from one fresh agent to the next, whatever the case): the fastest round of
        // each case is the one least disturbed, so their ratio is the cost of the code itself.
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (bx, by, bw, bz) = (best(&b), best(&o), best(&u), best(&g));
        let (x, y, z) = (median(b), median(o), median(g));
        println!(
            "gate: against the median call without a gate ({x:.0} ns), the gate alone adds {:.1}% ({:.3}x)",
            a / x * 100.0,
            (x + a) / x
        );
        println!(
            "gate: median no gate {x:.0} ns, gate open {y:.0} ns ({:.3}x), policies + audit {z:.0} ns ({:.3}x; median of the rounds' ratios {paired:.3}x); {:.0} ns per call for the gate and its audit entry; audit entries recorded {}",
            y / x,
            z / x,
            z - x,
            audit.recorded()
        );
        println!(
            "gate: fastest round of each case: no gate {bx:.0} ns, gate open {by:.0} ns ({:.3}x), policies without audit {bw:.0} ns ({:.3}x), policies + audit {bz:.0} ns ({:.3}x; target <= 1.2x)",
            by / bx,
            bw / bx,
            bz / bx
        );
    });
}
