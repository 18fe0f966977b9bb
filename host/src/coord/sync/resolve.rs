//! When a point resolves (the rules in the module docs) and what every participant receives.

use super::*;

/// Decides whether a point resolves now. `timer` is true when called because the timeout
/// elapsed.
pub(super) fn evaluate(def: &SyncPointDef, st: &PointState, timer: bool) -> Option<Resolution> {
    let n = def.participants.len();
    let arrived = &st.index;
    let absent = st.absent.len();
    let met = match &def.condition {
        SyncCondition::AllComplete => arrived.len() == n,
        // A decision by majority resolves once one choice has a majority of all participants
        // (or everyone is accounted for), not when any majority has voted: two split votes of
        // three decide nothing yet.
        SyncCondition::MajorityComplete if def.point_type == SyncPointType::Decision => {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for (_, v) in &st.arrivals {
                *counts.entry(v.to_string()).or_default() += 1;
            }
            counts.values().any(|c| c * 2 > n) || arrived.len() + absent >= n
        }
        SyncCondition::MajorityComplete => arrived.len() * 2 > n,
        SyncCondition::SpecificAgents(list) => list.iter().all(|a| arrived.contains_key(a)),
        SyncCondition::Timeout => timer || arrived.len() + absent >= n,
    };
    if met {
        return Some(Resolution::Done(Arc::new(outcome(def, st, true))));
    }
    let impossible = match &def.condition {
        SyncCondition::AllComplete => absent > 0,
        SyncCondition::MajorityComplete if def.point_type == SyncPointType::Decision => false,
        SyncCondition::MajorityComplete => (n - absent) * 2 <= n,
        SyncCondition::SpecificAgents(list) => list.iter().any(|a| st.absent.contains(a)),
        SyncCondition::Timeout => false,
    };
    let missing = || {
        let names: Vec<&str> = def
            .participants
            .iter()
            .map(String::as_str)
            .filter(|p| !arrived.contains_key(*p))
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    if impossible {
        return Some(match def.on_timeout {
            OnTimeout::Proceed => Resolution::Done(Arc::new(outcome(def, st, false))),
            OnTimeout::Wait | OnTimeout::Fail => Resolution::Failed(format!(
                "point `{}`: condition `{}` can no longer be met; absent: {}",
                def.id,
                def.condition.name(),
                missing()
            )),
        });
    }
    if timer {
        return match def.on_timeout {
            OnTimeout::Wait => None,
            OnTimeout::Proceed => Some(Resolution::Done(Arc::new(outcome(def, st, false)))),
            OnTimeout::Fail => Some(Resolution::Failed(format!(
                "point `{}` timed out after {} ms with condition `{}` unmet; absent: {}",
                def.id,
                def.timeout_ms.unwrap_or(0),
                def.condition.name(),
                missing()
            ))),
        };
    }
    None
}

pub(super) fn outcome(def: &SyncPointDef, st: &PointState, complete: bool) -> SyncOutcome {
    let arrived: Vec<String> = st.arrivals.iter().map(|(p, _)| p.clone()).collect();
    let absent = def
        .participants
        .iter()
        .filter(|p| !st.index.contains_key(*p))
        .cloned()
        .collect();
    // Payloads in participant (manifest) order, for deterministic results.
    let ordered: Vec<(&str, &Value)> = def
        .participants
        .iter()
        .filter_map(|p| {
            st.index
                .get(p)
                .map(|&i| (st.arrivals[i].0.as_str(), &st.arrivals[i].1))
        })
        .collect();
    let result = match def.point_type {
        SyncPointType::Barrier => Value::Null,
        SyncPointType::Checkpoint => Value::Object(
            ordered
                .iter()
                .map(|(p, v)| (p.to_string(), (*v).clone()))
                .collect(),
        ),
        SyncPointType::Decision => tally(def, &ordered),
        SyncPointType::Aggregation => reduce(def.reducer.unwrap_or_default(), &ordered),
    };
    SyncOutcome {
        point: def.id.clone(),
        complete,
        timed_out: st.timed_out,
        arrived,
        absent,
        result,
        waited_ms: st
            .first_arrival
            .map(|t| t.elapsed().as_millis() as u64)
            .unwrap_or(0),
        result_text: Default::default(),
    }
}
