//! [`Manifest::check`]: everything that needs no component.

use super::*;

impl Manifest {
    /// Checks everything that needs no component. `text` and `path` locate errors.
    pub fn check(&self, text: &str, path: &Path) -> Result<(), Error> {
        let err = |key: String, needle: Option<&str>, msg: String| {
            manifest_error(text, path, key, needle, msg)
        };
        self.check_bounds(text, path)?;
        if self.task.id.trim().is_empty() {
            return Err(err(
                "task.id".into(),
                None,
                "must not be empty, e.g. `id = \"code-review\"`".into(),
            ));
        }
        if self.strategy.max_concurrent_agents == 0 {
            return Err(err(
                "strategy.maxConcurrentAgents".into(),
                Some("maxConcurrentAgents"),
                "must be at least 1".into(),
            ));
        }
        let r = &self.strategy.retry;
        if r.max_attempts == 0 {
            return Err(err(
                "strategy.retry.maxAttempts".into(),
                Some("maxAttempts"),
                "must be at least 1 (1 means no retry)".into(),
            ));
        }
        if !(r.backoff_factor >= 1.0 && r.backoff_factor.is_finite()) {
            return Err(err(
                "strategy.retry.backoffFactor".into(),
                Some("backoffFactor"),
                "must be a number ≥ 1".into(),
            ));
        }
        if !(r.deadline_extension_factor > 1.0 && r.deadline_extension_factor.is_finite()) {
            return Err(err(
                "strategy.retry.deadlineExtensionFactor".into(),
                Some("deadlineExtensionFactor"),
                "must be a number > 1, e.g. 1.5".into(),
            ));
        }
        if self.strategy.stall_window_ms == 0 {
            return Err(err(
                "strategy.stallWindowMs".into(),
                Some("stallWindowMs"),
                "must be at least 1".into(),
            ));
        }
        if let Some(llm) = &self.llm {
            self.check_llm(llm, text, path)?;
        }
        if self.agents.is_empty() {
            return Err(err(
                "agents".into(),
                None,
                "declare at least one agent: [agents.worker] component = \"guest:worker\"".into(),
            ));
        }
        for (name, a) in &self.agents {
            if !valid_id(name) {
                return Err(err(
                    format!("agents.{name}"),
                    Some(name),
                    "agent names use letters, digits, `-` and `_`".into(),
                ));
            }
            if a.component.trim().is_empty() {
                return Err(err(
                    format!("agents.{name}.component"),
                    Some(name),
                    "must name a component: `guest:<name>` or a path to a .wasm file".into(),
                ));
            }
        }
        if self.subtasks.is_empty() {
            return Err(err(
                "subtasks".into(),
                None,
                "declare at least one [[subtasks]]".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.subtasks.iter().enumerate() {
            if !valid_id(&s.id) || s.id == "sync" {
                return Err(err(
                    format!("subtasks[{i}].id"),
                    Some(&s.id),
                    format!(
                        "`{}` is not a usable id: use letters, digits, `-` and `_` (and not `sync`)",
                        s.id
                    ),
                ));
            }
            if !seen.insert(s.id.as_str()) {
                return Err(err(
                    format!("subtasks[{i}].id"),
                    Some(&s.id),
                    format!("`{}` is declared twice", s.id),
                ));
            }
        }
        let mut points = BTreeSet::new();
        for (i, p) in self.strategy.synchronization_points.iter().enumerate() {
            let key = format!("strategy.synchronizationPoints[{i}]");
            if !valid_id(&p.id) || !points.insert(p.id.as_str()) {
                return Err(err(
                    format!("{key}.id"),
                    Some(&p.id),
                    format!("`{}` is not a usable id or is declared twice", p.id),
                ));
            }
            if p.participants.is_empty() {
                return Err(err(
                    format!("{key}.participants"),
                    Some(&p.id),
                    "list the subtasks that take part".into(),
                ));
            }
            let mut uniq = BTreeSet::new();
            for q in &p.participants {
                if self.subtask(q).is_none() {
                    return Err(err(
                        format!("{key}.participants"),
                        Some(q),
                        format!("no subtask `{q}`"),
                    ));
                }
                if !uniq.insert(q) {
                    return Err(err(
                        format!("{key}.participants"),
                        Some(q),
                        format!("`{q}` is listed twice"),
                    ));
                }
            }
            if let SyncCondition::SpecificAgents(list) = &p.condition
                && let Some(x) = list.iter().find(|x| !p.participants.contains(x))
            {
                return Err(err(
                    format!("{key}.condition.agents"),
                    Some(x),
                    format!("`{x}` is not a participant of `{}`", p.id),
                ));
            }
            if p.condition == SyncCondition::Timeout && p.timeout_ms.is_none() {
                return Err(err(
                    format!("{key}.timeoutMs"),
                    Some(&p.id),
                    "condition `timeout` needs `timeoutMs`".into(),
                ));
            }
            if p.reducer.is_some() && p.point_type != SyncPointType::Aggregation {
                return Err(err(
                    format!("{key}.reducer"),
                    Some(&p.id),
                    "only aggregation points take a reducer".into(),
                ));
            }
        }
        self.check_channels(text, path)?;
        for (i, s) in self.subtasks.iter().enumerate() {
            let key = format!("subtasks[{i}]");
            if let Some(a) = &s.agent
                && !self.agents.contains_key(a)
            {
                return Err(err(
                    format!("{key}.agent"),
                    Some(a),
                    format!(
                        "no agent `{a}`; declared agents: {}",
                        self.agents.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            for d in &s.depends_on {
                if self.subtask(d).is_none() {
                    return Err(err(
                        format!("{key}.dependsOn"),
                        Some(d),
                        format!("no subtask `{d}`"),
                    ));
                }
            }
            let mut names = BTreeSet::new();
            for (j, input) in s.inputs.iter().enumerate() {
                let ikey = format!("{key}.inputs[{j}]");
                if !names.insert(input.name.as_str()) {
                    return Err(err(
                        format!("{ikey}.name"),
                        Some(&input.name),
                        format!("input `{}` is declared twice", input.name),
                    ));
                }
                match (&input.value, &input.from) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(err(
                            ikey,
                            Some(&input.name),
                            format!(
                                "input `{}` needs exactly one of `value` (a literal) or `from` (`<subtask>.<output>` or `sync.<point>`)",
                                input.name
                            ),
                        ));
                    }
                    _ => {}
                }
                for r in input.from.iter().flat_map(FromRef::refs) {
                    match Source::parse(r) {
                        None => {
                            return Err(err(
                                format!("{ikey}.from"),
                                Some(r),
                                format!("`{r}` is not `<subtask>.<output>` or `sync.<point>`"),
                            ));
                        }
                        Some(Source::Sync(p)) => {
                            if self.point(&p).is_none() {
                                return Err(err(
                                    format!("{ikey}.from"),
                                    Some(r),
                                    format!("no synchronization point `{p}`"),
                                ));
                            }
                        }
                        Some(Source::Output { subtask, output }) => {
                            let Some(src) = self.subtask(&subtask) else {
                                return Err(err(
                                    format!("{ikey}.from"),
                                    Some(r),
                                    format!("no subtask `{subtask}` produces `{r}`"),
                                ));
                            };
                            if !src.outputs.iter().any(|o| o.name() == output) {
                                return Err(err(
                                    format!("{ikey}.from"),
                                    Some(r),
                                    format!(
                                        "subtask `{subtask}` has no output `{output}` (its outputs: {}); add it to its `outputs`",
                                        if src.outputs.is_empty() {
                                            "none".to_string()
                                        } else {
                                            src.outputs
                                                .iter()
                                                .map(OutputDef::name)
                                                .collect::<Vec<_>>()
                                                .join(", ")
                                        }
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
            let mut outs = BTreeSet::new();
            for o in &s.outputs {
                if !outs.insert(o.name()) {
                    return Err(err(
                        format!("{key}.outputs"),
                        Some(o.name()),
                        format!("output `{}` is declared twice", o.name()),
                    ));
                }
            }
            for (j, c) in s.success_criteria.iter().enumerate() {
                let ckey = format!("{key}.successCriteria[{j}]");
                match c.criterion.as_str() {
                    "outputs-present" => {}
                    "max-duration-ms" if c.threshold.is_some() => {}
                    "min-value" | "max-value"
                        if c.threshold.is_some() && c.measurement.is_some() => {}
                    "non-empty" if c.measurement.is_some() => {}
                    other => {
                        return Err(err(
                            ckey,
                            Some(other),
                            format!(
                                "criterion `{other}` is unknown or incomplete: use outputs-present, max-duration-ms (threshold), min-value / max-value (measurement = JSON Pointer, threshold) or non-empty (measurement)"
                            ),
                        ));
                    }
                }
            }
        }
        self.check_cycles(text, path)?;
        self.check_participants(text, path)
    }

    /// The graph: subtask → subtasks it waits for; a subtask fed by a sync point waits for
    /// every participant of that point. Any cycle is an error naming it.
    fn check_cycles(&self, text: &str, path: &Path) -> Result<(), Error> {
        let deps = self.dependencies();
        let mut graph: HashMap<String, Vec<String>> = HashMap::new();
        for (id, (subs, points)) in &deps {
            let mut edges: Vec<String> = subs.iter().cloned().collect();
            for p in points {
                edges.push(format!("sync.{p}"));
            }
            graph.insert(id.clone(), edges);
        }
        for p in &self.strategy.synchronization_points {
            graph.insert(format!("sync.{}", p.id), p.participants.clone());
        }
        // Iterative DFS with colours; on a back edge, report the stack from that node.
        let mut colour: HashMap<&str, u8> = HashMap::new();
        let mut nodes: Vec<&String> = graph.keys().collect();
        nodes.sort();
        for start in nodes {
            if colour.get(start.as_str()).copied().unwrap_or(0) != 0 {
                continue;
            }
            let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
            colour.insert(start.as_str(), 1);
            while let Some((node, idx)) = stack.last().copied() {
                let edges = graph.get(node).map(Vec::as_slice).unwrap_or(&[]);
                if idx < edges.len() {
                    stack.last_mut().expect("non-empty").1 += 1;
                    let next = edges[idx].as_str();
                    match colour.get(next).copied().unwrap_or(0) {
                        0 => {
                            colour.insert(next, 1);
                            stack.push((next, 0));
                        }
                        1 => {
                            let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                            let mut cycle: Vec<&str> =
                                stack[from..].iter().map(|(n, _)| *n).collect();
                            cycle.push(next);
                            // Printed in "runs before" order.
                            cycle.reverse();
                            let first_subtask = cycle
                                .iter()
                                .find(|n| !n.starts_with("sync."))
                                .copied()
                                .unwrap_or(next);
                            return Err(manifest_error(
                                text,
                                path,
                                "subtasks",
                                Some(first_subtask),
                                format!(
                                    "dependency cycle: {}; break it by removing one of these dependencies",
                                    cycle.join(" → ")
                                ),
                            ));
                        }
                        _ => {}
                    }
                } else {
                    colour.insert(node, 2);
                    stack.pop();
                }
            }
        }
        Ok(())
    }

    /// Two participants of one point where one waits for the other's result would wait for
    /// each other forever.
    fn check_participants(&self, text: &str, path: &Path) -> Result<(), Error> {
        if self.strategy.synchronization_points.is_empty() {
            return Ok(());
        }
        // Transitive prerequisites as bit sets over subtask numbers (the graph is acyclic:
        // `check_cycles` ran first).
        let index: HashMap<&str, usize> = self
            .subtasks
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let deps = self.dependencies();
        let prereqs: Vec<Vec<usize>> = self
            .subtasks
            .iter()
            .map(|s| {
                let Some((subs, points)) = deps.get(&s.id) else {
                    return Vec::new();
                };
                let mut v: BTreeSet<usize> = subs
                    .iter()
                    .filter_map(|d| index.get(d.as_str()).copied())
                    .collect();
                for p in points {
                    if let Some(def) = self.point(p) {
                        v.extend(
                            def.participants
                                .iter()
                                .filter_map(|q| index.get(q.as_str())),
                        );
                    }
                }
                v.into_iter().collect()
            })
            .collect();
        let order = crate::coord::dag::topological(&prereqs, std::cmp::Reverse);
        let closure = crate::coord::dag::ancestors(&prereqs, &order);
        let waits_for = |a: &str, b: &str| match (index.get(a), index.get(b)) {
            (Some(&a), Some(&b)) => closure[a].get(b),
            _ => false,
        };
        for p in &self.strategy.synchronization_points {
            // O(k · n/64): does any participant wait for another? Only then find which.
            let mut members = crate::coord::dag::Bits::new(self.subtasks.len());
            let mut before = crate::coord::dag::Bits::new(self.subtasks.len());
            for q in &p.participants {
                if let Some(&i) = index.get(q.as_str()) {
                    members.set(i);
                    before.union(&closure[i]);
                }
            }
            if !before.intersects(&members) {
                continue;
            }
            for a in &p.participants {
                for b in &p.participants {
                    if a != b && waits_for(a, b) {
                        return Err(manifest_error(
                            text,
                            path,
                            format!("strategy.synchronizationPoints[id={}].participants", p.id),
                            Some(&p.id),
                            format!(
                                "`{a}` waits for `{b}` to finish, but both meet at `{}`: `{b}` would wait there for `{a}` forever; drop the dependency or one participant",
                                p.id
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The `[llm]` section: the configuration's own checks (aliases and prices may name the
    /// operator's providers), and no keys (see [`Manifest::llm`]).
    fn check_llm(&self, llm: &crate::llm::LlmConfig, text: &str, path: &Path) -> Result<(), Error> {
        let located = |e: Error| match e {
            Error::InvalidField { field, message } => {
                let needle = field.rsplit('.').next().map(str::to_string);
                manifest_error(text, path, field, needle.as_deref(), message)
            }
            other => other,
        };
        llm.check_shape("llm").map_err(located)?;
        for (name, p) in &llm.providers {
            if p.api_key_file.is_some() || p.api_key_env.is_some() {
                let field = if p.api_key_file.is_some() {
                    "apiKeyFile"
                } else {
                    "apiKeyEnv"
                };
                return Err(located(Error::field(
                    format!("llm.providers.{name}.{field}"),
                    "a manifest may not name a key: it chooses where requests go, so a key it \
                     named could be sent anywhere; declare the provider with its key in the \
                     operator's `--llm-config` file (the manifest may still name its models)",
                )));
            }
        }
        Ok(())
    }
}
