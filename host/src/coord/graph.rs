//! The task graph of a manifest, built once per run and shared by the planner and the
//! scheduler: direct prerequisites, a topological order, dependency levels and transitive
//! prerequisites (ancestors).
//!
//! A subtask's prerequisites are the subtasks it names in `dependsOn`, the sources of its
//! `<subtask>.<output>` inputs, and every participant of a sync point it reads (`sync.<point>`
//! resolves only once they arrived). Building takes O(n log n + e) for n subtasks and e
//! edges; ancestors are bit sets (n² bits: 12.5 MB at the 10,000-subtask bound,
//! [`super::manifest::MAX_SUBTASKS`]).

use super::dag::{self, Bits};
use super::manifest::{FromRef, Manifest, Source};
use std::collections::{BTreeSet, HashMap};

/// The graph; subtasks are numbered in manifest order.
#[derive(Debug, Clone)]
pub struct TaskGraph {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    prereqs: Vec<Vec<usize>>,
    order: Vec<usize>,
    position: Vec<usize>,
    level: Vec<usize>,
    ancestors: Vec<Bits>,
}

impl TaskGraph {
    /// Builds the graph of `manifest`. References to unknown subtasks or points are ignored
    /// (`Manifest::check` refuses them); should the graph have a cycle (also refused there),
    /// its subtasks follow the others in manifest order, at level 0.
    pub fn new(manifest: &Manifest) -> TaskGraph {
        let n = manifest.subtasks.len();
        let ids: Vec<String> = manifest.subtasks.iter().map(|s| s.id.clone()).collect();
        let index: HashMap<String, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let participants: HashMap<&str, Vec<usize>> = manifest
            .strategy
            .synchronization_points
            .iter()
            .map(|p| {
                let who = p
                    .participants
                    .iter()
                    .filter_map(|q| index.get(q).copied())
                    .collect();
                (p.id.as_str(), who)
            })
            .collect();
        let prereqs: Vec<Vec<usize>> = manifest
            .subtasks
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut set = BTreeSet::new();
                set.extend(s.depends_on.iter().filter_map(|d| index.get(d).copied()));
                for r in s
                    .inputs
                    .iter()
                    .flat_map(|x| x.from.iter().flat_map(FromRef::refs))
                {
                    match Source::parse(r) {
                        Some(Source::Output { subtask, .. }) => {
                            set.extend(index.get(&subtask).copied());
                        }
                        Some(Source::Sync(p)) => {
                            set.extend(participants.get(p.as_str()).into_iter().flatten());
                        }
                        None => {}
                    }
                }
                set.remove(&i);
                set.into_iter().collect()
            })
            .collect();

        // Among ready subtasks: highest priority, then first in the manifest.
        let mut order = dag::topological(&prereqs, |i| manifest.subtasks[i].priority);
        let mut placed = vec![false; n];
        for &i in &order {
            placed[i] = true;
        }
        order.extend((0..n).filter(|&i| !placed[i]));
        let mut position = vec![0; n];
        for (k, &i) in order.iter().enumerate() {
            position[i] = k;
        }
        let mut level = vec![0usize; n];
        for &i in &order {
            for &p in &prereqs[i] {
                if placed[i] {
                    level[i] = level[i].max(level[p].saturating_add(1));
                }
            }
        }
        let placed_order: Vec<usize> = order.iter().copied().filter(|&i| placed[i]).collect();
        let ancestors = dag::ancestors(&prereqs, &placed_order);
        TaskGraph {
            ids,
            index,
            prereqs,
            order,
            position,
            level,
            ancestors,
        }
    }

    /// Number of subtasks.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no subtasks.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of subtask `i`.
    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The number of subtask `id`.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Direct prerequisites of `i`, ascending.
    pub fn prereqs(&self, i: usize) -> &[usize] {
        &self.prereqs[i]
    }

    /// Every subtask, in topological order (among ready ones: higher `priority` first, then
    /// manifest order).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Where `i` is in [`order`](Self::order).
    pub fn position(&self, i: usize) -> usize {
        self.position[i]
    }

    /// The length of the longest chain of prerequisites before `i`.
    pub fn level(&self, i: usize) -> usize {
        self.level[i]
    }

    /// Whether `a` is a transitive prerequisite of `b`.
    pub fn is_ancestor(&self, a: usize, b: usize) -> bool {
        self.ancestors[b].get(a)
    }

    /// Whether any member of `set` is a transitive prerequisite of `b`.
    pub(crate) fn has_ancestor_in(&self, set: &super::dag::Bits, b: usize) -> bool {
        self.ancestors[b].intersects(set)
    }

    /// Whether `i` has no prerequisites at all.
    pub fn is_root(&self, i: usize) -> bool {
        self.ancestors[i].is_empty()
    }

    /// Whether `subset` forms a chain: every two of its subtasks are ordered by dependency.
    /// Dependency is transitive, so checking neighbours in topological order is enough: O(k).
    pub fn is_chain(&self, subset: &[usize]) -> bool {
        let mut sorted = subset.to_vec();
        sorted.sort_by_key(|&i| self.position[i]);
        sorted.windows(2).all(|w| self.is_ancestor(w[0], w[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn graph(subtasks: &str, points: &str) -> TaskGraph {
        let text = format!(
            "[task]\nid = \"t\"\n[strategy]\ntype = \"hybrid\"\n{points}\n[agents.w]\ncomponent = \"guest:worker\"\n{subtasks}"
        );
        let m = Manifest::parse(&text, Path::new("m.toml")).expect("parses");
        m.check(&text, Path::new("m.toml")).expect("valid");
        TaskGraph::new(&m)
    }

    #[test]
    fn prerequisites_levels_order_and_ancestors_follow_every_kind_of_edge() {
        // a ─► b (dependsOn), b ─► c (output), {a, d} meet at p, e reads sync.p.
        let g = graph(
            r#"
[[subtasks]]
id = "a"
[[subtasks]]
id = "b"
dependsOn = ["a"]
outputs = ["x"]
[[subtasks]]
id = "c"
inputs = [{ name = "x", from = "b.x" }]
[[subtasks]]
id = "d"
priority = 5
[[subtasks]]
id = "e"
inputs = [{ name = "p", from = "sync.p" }]
"#,
            "[[strategy.synchronizationPoints]]\nid = \"p\"\ntype = \"barrier\"\nparticipants = [\"a\", \"d\"]\n",
        );
        let ids = |v: &[usize]| v.iter().map(|&i| g.id(i).to_string()).collect::<Vec<_>>();
        assert_eq!(ids(g.prereqs(1)), ["a"]);
        assert_eq!(ids(g.prereqs(2)), ["b"]);
        assert_eq!(ids(g.prereqs(4)), ["a", "d"]);
        // `d` has the higher priority among the roots.
        assert_eq!(ids(g.order()), ["d", "a", "b", "c", "e"]);
        let levels: Vec<usize> = (0..5).map(|i| g.level(i)).collect();
        assert_eq!(levels, [0, 1, 2, 0, 1]);
        assert!(g.is_ancestor(0, 2) && !g.is_ancestor(2, 0) && !g.is_ancestor(3, 2));
        assert!(g.is_root(0) && g.is_root(3) && !g.is_root(4));
        assert!(g.is_chain(&[2, 0, 1]));
        assert!(!g.is_chain(&[0, 3]));
        assert!(g.is_chain(&[4]) && g.is_chain(&[]));
    }

    #[test]
    fn a_thousand_subtask_chain_builds_with_every_ancestor() {
        let mut subtasks = String::from("[[subtasks]]\nid = \"s0\"\n");
        for i in 1..1000 {
            subtasks += &format!(
                "[[subtasks]]\nid = \"s{i}\"\ndependsOn = [\"s{}\"]\n",
                i - 1
            );
        }
        let g = graph(&subtasks, "");
        assert_eq!(g.level(999), 999);
        assert!(g.is_ancestor(0, 999));
        let all: Vec<usize> = (0..1000).collect();
        assert!(g.is_chain(&all));
    }
}
