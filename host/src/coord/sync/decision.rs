//! `decision` points: votes tallied by the condition.

use super::*;

/// Tallies the votes. The rule follows the condition:
/// - `all-complete` → **unanimous**: a choice wins when every participant voted for it;
/// - `majority-complete` → **majority**: a choice wins with more than half of all participants;
/// - `specific-agents` → the listed participants decide, unanimously;
/// - `timeout` → **plurality** of the votes cast; a tie decides nothing.
///
/// No winner gives `"decision": null`.
pub(super) fn tally(def: &SyncPointDef, votes: &[(&str, &Value)]) -> Value {
    let choice = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, v) in votes {
        *counts.entry(choice(v)).or_default() += 1;
    }
    let n = def.participants.len();
    let (rule, decision) = match &def.condition {
        SyncCondition::AllComplete => (
            "unanimous",
            counts
                .iter()
                .find(|(_, c)| **c == n)
                .map(|(k, _)| k.clone()),
        ),
        SyncCondition::MajorityComplete => (
            "majority",
            counts
                .iter()
                .find(|(_, c)| **c * 2 > n)
                .map(|(k, _)| k.clone()),
        ),
        SyncCondition::SpecificAgents(list) => {
            let chosen: BTreeSet<String> = list
                .iter()
                .filter_map(|a| votes.iter().find(|(p, _)| p == a).map(|(_, v)| choice(v)))
                .collect();
            let all_voted = list.iter().all(|a| votes.iter().any(|(p, _)| p == a));
            (
                "specific-agents",
                (all_voted && chosen.len() == 1)
                    .then(|| chosen.into_iter().next())
                    .flatten(),
            )
        }
        SyncCondition::Timeout => {
            let max = counts.values().copied().max().unwrap_or(0);
            let top: Vec<&String> = counts
                .iter()
                .filter(|(_, c)| **c == max)
                .map(|(k, _)| k)
                .collect();
            (
                "plurality",
                (max > 0 && top.len() == 1).then(|| top[0].clone()),
            )
        }
    };
    json!({
        "decision": decision,
        "rule": rule,
        "votes": votes.iter().map(|(p, v)| (p.to_string(), Value::String(choice(v)))).collect::<Map<_, _>>(),
        "tally": counts,
    })
}
