//! Transitive prerequisites over numbered nodes, as bit sets: the one closure the manifest
//! check and the task graph (`coord::graph`) both use. n nodes take n² bits (12.5 MB at the
//! 10,000-subtask bound); building takes O(n²/64 + e) word operations.

/// A fixed-size bit set.
#[derive(Debug, Clone)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    /// `n` bits, all clear.
    pub(crate) fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    pub(crate) fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    pub(crate) fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    pub(crate) fn union(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    pub(crate) fn intersects(&self, other: &Bits) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// Every node's transitive prerequisites, given each node's direct ones and a topological
/// `order` (prerequisites first). Nodes missing from `order` (on a cycle) get none.
pub(crate) fn ancestors(prereqs: &[Vec<usize>], order: &[usize]) -> Vec<Bits> {
    let n = prereqs.len();
    let mut out: Vec<Bits> = (0..n).map(|_| Bits::new(n)).collect();
    for &i in order {
        let mut mine = Bits::new(n);
        for &p in &prereqs[i] {
            mine.set(p);
            mine.union(&out[p]);
        }
        out[i] = mine;
    }
    out
}

/// A topological order of `prereqs` (Kahn's algorithm), taking among ready nodes the one
/// `key` ranks highest; nodes on a cycle are left out.
pub(crate) fn topological<K: Ord>(prereqs: &[Vec<usize>], key: impl Fn(usize) -> K) -> Vec<usize> {
    let n = prereqs.len();
    let mut dependents = vec![Vec::new(); n];
    let mut waiting: Vec<usize> = prereqs.iter().map(Vec::len).collect();
    for (i, ps) in prereqs.iter().enumerate() {
        for &p in ps {
            dependents[p].push(i);
        }
    }
    let mut ready: std::collections::BinaryHeap<(K, std::cmp::Reverse<usize>)> = (0..n)
        .filter(|&i| waiting[i] == 0)
        .map(|i| (key(i), std::cmp::Reverse(i)))
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some((_, std::cmp::Reverse(i))) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push((key(d), std::cmp::Reverse(d)));
            }
        }
    }
    order
}
