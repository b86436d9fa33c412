//! The `adaptive` eviction policy's parts that need no store: a
//! metadata-only model of a segmented, prefix-aware cache ([`SegCache`]) and
//! the tuner that runs miniature copies of it on a sample of the traffic to
//! choose the probation share ([`Tuner`]).
//!
//! The policy: blocks enter a *probation* segment; a block touched again
//! (matched, read or re-stored) moves to the *main* segment. Eviction takes
//! the least recently used evictable block of probation while probation holds
//! more than its share of the capacity, else of main. A block evicted from
//! probation is remembered (a ghost list three capacities long); when it is
//! stored again it goes straight to main, since it came back. Chains stay
//! prefix-closed: only blocks without a cached child are evictable. A share
//! of 1.0 or more means plain prefix-aware LRU (the older of the two heads).
//!
//! Which share is right depends on the cache size against the reuse distances
//! of the workload: a small share filters one-off chains (good when the cache
//! is small), a large one keeps blocks long enough for their second use (good
//! when it is large). The tuner replays about half of the requests (chosen
//! by a hash of the chain's third key, so a conversation's requests are kept
//! or dropped together) through miniature caches of half the size, one per
//! candidate share, and every 100 requests switches the real
//! cache to the candidate that hit most recently (scores decay by 0.9 a
//! round), leaving plain LRU only for a candidate at least 1% better. This is
//! the miniature-simulation idea (Waldspurger et al., "Cache Modeling and
//! Optimization using Miniature Simulations", 2017) applied to choosing a
//! segment split.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

/// Candidate probation shares; the first (1.0) is plain prefix-aware LRU.
pub const CANDIDATES: [f64; 6] = [1.0, 0.05, 0.1, 0.2, 0.4, 0.7];
/// One request in this many feeds the miniature caches, whose capacity is
/// this many times smaller.
pub const SAMPLE: u64 = 2;
/// Requests between two choices of the share.
pub const ROUND: u64 = 100;
const DECAY: f64 = 0.9;
const MARGIN: f64 = 1.01;
/// Ghost list length, in capacities.
pub const GHOSTS: usize = 3;

/// Whether a chain is in the tuner's sample.
pub fn sampled(keys: &[Bytes]) -> bool {
    keys.get(sample_index(keys.len()))
        .is_some_and(|k| sampled_key(k))
}

/// Which key of a chain of `len` keys decides whether it is sampled.
pub fn sample_index(len: usize) -> usize {
    len.saturating_sub(1).min(2)
}

/// Whether a chain whose deciding key ([`sample_index`]) is `key` is sampled.
pub fn sampled_key(key: &[u8]) -> bool {
    xxh3_64(key).is_multiple_of(SAMPLE)
}

/// A bounded first-in first-out set of keys.
#[derive(Debug, Default)]
pub struct Ghosts {
    /// Key -> the sequence number of its entry in `order`.
    set: HashMap<Bytes, u64>,
    /// Oldest first; entries whose sequence no longer matches `set` are stale.
    order: VecDeque<(u64, Bytes)>,
    seq: u64,
}

impl Ghosts {
    /// Remembers `key` (as the newest), forgetting the oldest beyond `cap`.
    pub fn push(&mut self, key: Bytes, cap: usize) {
        self.seq += 1;
        self.set.insert(key.clone(), self.seq);
        self.order.push_back((self.seq, key));
        while self.set.len() > cap {
            let Some((seq, old)) = self.order.pop_front() else {
                break;
            };
            if self.set.get(&old) == Some(&seq) {
                self.set.remove(&old);
            }
        }
        if self.order.len() > 2 * cap + 64 {
            // Too many stale entries: keep the live ones, in order.
            let set = &self.set;
            self.order.retain(|(seq, k)| set.get(k) == Some(seq));
        }
    }

    /// Forgets `key`; true when it was remembered.
    pub fn take(&mut self, key: &[u8]) -> bool {
        self.set.remove(key).is_some()
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.set.clear();
        self.order.clear();
    }
}

struct Block {
    stamp: u64,
    parent: Option<Bytes>,
    children: u32,
    main: bool,
}

/// A metadata-only segmented prefix-aware cache of `capacity` blocks.
pub struct SegCache {
    capacity: usize,
    /// Probation share (1.0 or more: plain prefix-aware LRU).
    pub share: f64,
    blocks: HashMap<Bytes, Block>,
    /// Evictable blocks by (segment, stamp).
    order: [BTreeMap<u64, Bytes>; 2],
    probation: usize,
    ghosts: Ghosts,
    clock: u64,
    /// Blocks asked about and found as prefix hits.
    pub queried: u64,
    /// Prefix hits.
    pub matched: u64,
}

impl SegCache {
    /// An empty cache.
    pub fn new(capacity: usize, share: f64) -> SegCache {
        SegCache {
            capacity: capacity.max(1),
            share,
            blocks: HashMap::new(),
            order: [BTreeMap::new(), BTreeMap::new()],
            probation: 0,
            ghosts: Ghosts::default(),
            clock: 0,
            queried: 0,
            matched: 0,
        }
    }

    fn file(&mut self, key: &Bytes) {
        let b = &self.blocks[key];
        if b.children == 0 {
            self.order[b.main as usize].insert(b.stamp, key.clone());
        }
    }

    fn unfile(&mut self, key: &Bytes) {
        let b = &self.blocks[key];
        if b.children == 0 {
            self.order[b.main as usize].remove(&b.stamp);
        }
    }

    /// One request: counts its prefix hit, touches the cached blocks and
    /// stores the missing ones in chain order. Returns the prefix hit.
    pub fn request(&mut self, chain: &[Bytes]) -> usize {
        let hit = chain
            .iter()
            .take_while(|k| self.blocks.contains_key(*k))
            .count();
        self.queried += chain.len() as u64;
        self.matched += hit as u64;
        let mut prev: Option<Bytes> = None;
        for key in chain {
            self.clock += 1;
            if self.blocks.contains_key(key) {
                self.unfile(key);
                let b = self.blocks.get_mut(key).expect("present");
                if !b.main {
                    b.main = true;
                    self.probation -= 1;
                }
                b.stamp = self.clock;
                self.file(key);
                prev = Some(key.clone());
                continue;
            }
            let main = self.share < 1.0 && self.ghosts.take(key);
            if let Some(p) = &prev {
                self.unfile(p);
                self.blocks.get_mut(p).expect("parent cached").children += 1;
            }
            self.blocks.insert(
                key.clone(),
                Block {
                    stamp: self.clock,
                    parent: prev.clone(),
                    children: 0,
                    main,
                },
            );
            if !main {
                self.probation += 1;
            }
            self.file(key);
            while self.blocks.len() > self.capacity {
                if !self.evict_one(key) {
                    break;
                }
            }
            prev = Some(key.clone());
        }
        hit
    }

    fn head(&self, seg: usize, except: &Bytes) -> Option<(u64, Bytes)> {
        self.order[seg]
            .iter()
            .find(|(_, k)| *k != except)
            .map(|(s, k)| (*s, k.clone()))
    }

    fn evict_one(&mut self, except: &Bytes) -> bool {
        let (p, m) = (self.head(0, except), self.head(1, except));
        let pick = if self.share >= 1.0 {
            match (p, m) {
                (Some(p), Some(m)) => Some(if p.0 < m.0 { p } else { m }),
                (p, m) => p.or(m),
            }
        } else {
            let main_count = self.blocks.len() - self.probation;
            let probation_first =
                self.probation as f64 > self.share * self.capacity as f64 || main_count == 0;
            if probation_first {
                p.or(m)
            } else {
                m.or(p)
            }
        };
        let Some((_, victim)) = pick else {
            return false;
        };
        self.unfile(&victim);
        let b = self
            .blocks
            .remove(&victim)
            .expect("filed blocks are cached");
        if !b.main {
            self.probation -= 1;
            self.ghosts.push(victim, GHOSTS * self.capacity);
        }
        if let Some(parent) = b.parent {
            if self.blocks.contains_key(&parent) {
                self.unfile(&parent);
                self.blocks.get_mut(&parent).expect("present").children -= 1;
                self.file(&parent);
            }
        }
        true
    }

    /// Changes the capacity, evicting down to it.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        let none = Bytes::new();
        while self.blocks.len() > self.capacity {
            if !self.evict_one(&none) {
                break;
            }
        }
    }

    /// Blocks cached.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// Chooses the probation share from miniature simulations.
pub struct Tuner {
    minis: Vec<SegCache>,
    scores: Vec<f64>,
    seen: u64,
    mini_capacity: usize,
    /// The share in force.
    pub share: f64,
}

impl Tuner {
    /// A tuner for a cache of `capacity` blocks, starting at plain LRU.
    pub fn new(capacity: usize) -> Tuner {
        let mini_capacity = (capacity / SAMPLE as usize).max(1);
        Tuner {
            minis: CANDIDATES
                .iter()
                .map(|s| SegCache::new(mini_capacity, *s))
                .collect(),
            scores: vec![0.0; CANDIDATES.len()],
            seen: 0,
            mini_capacity,
            share: CANDIDATES[0],
        }
    }

    /// The capacity (in blocks) the miniatures model, times [`SAMPLE`].
    pub fn capacity(&self) -> usize {
        self.mini_capacity * SAMPLE as usize
    }

    /// Models a cache of `capacity` blocks from now on.
    pub fn resize(&mut self, capacity: usize) {
        let mini = (capacity / SAMPLE as usize).max(1);
        if mini == self.mini_capacity {
            return;
        }
        self.mini_capacity = mini;
        for m in &mut self.minis {
            m.set_capacity(self.mini_capacity);
        }
    }

    /// Sees one request (a chain about to be matched and completed). Returns
    /// the share to use from now on.
    pub fn observe(&mut self, chain: &[Bytes]) -> f64 {
        if sampled(chain) {
            for (m, s) in self.minis.iter_mut().zip(&mut self.scores) {
                *s += m.request(chain) as f64;
            }
        }
        self.observe_unsampled()
    }

    /// As [`observe`](Self::observe) for a request that is not sampled
    /// (the caller checked [`sampled_key`]): it only counts.
    pub fn observe_unsampled(&mut self) -> f64 {
        self.seen += 1;
        if self.seen.is_multiple_of(ROUND) {
            let mut best = 0;
            for i in 1..self.scores.len() {
                if self.scores[i] > self.scores[best] {
                    best = i;
                }
            }
            if self.scores[best] < self.scores[0] * MARGIN {
                best = 0;
            }
            self.share = CANDIDATES[best];
            for s in &mut self.scores {
                *s *= DECAY;
            }
        }
        self.share
    }
}

/// The offline model of the `adaptive` policy: a full-size [`SegCache`]
/// whose share a [`Tuner`] sets, exactly as the store does. Returns
/// (matched, queried).
pub fn simulate_adaptive(trace: &[Vec<Bytes>], capacity: usize) -> (u64, u64) {
    let per_request = simulate_adaptive_requests(trace, capacity);
    let matched = per_request.iter().map(|m| *m as u64).sum();
    let queried = trace.iter().map(|c| c.len() as u64).sum();
    (matched, queried)
}

/// The same, request by request: how many leading blocks each one matched.
pub fn simulate_adaptive_requests(trace: &[Vec<Bytes>], capacity: usize) -> Vec<usize> {
    let mut cache = SegCache::new(capacity, CANDIDATES[0]);
    let mut tuner = Tuner::new(capacity);
    trace
        .iter()
        .map(|chain| {
            cache.share = tuner.observe(chain);
            cache.request(chain)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u64) -> Bytes {
        Bytes::copy_from_slice(&i.to_be_bytes())
    }

    fn chain(ids: &[u64]) -> Vec<Bytes> {
        ids.iter().map(|i| k(*i)).collect()
    }

    #[test]
    fn share_one_is_prefix_aware_lru() {
        let mut c = SegCache::new(3, 1.0);
        c.request(&chain(&[1, 2, 3]));
        // 4 evicts the oldest leaf (3), not 2, which has a child.
        assert_eq!(c.request(&chain(&[1, 4])), 1);
        assert_eq!(c.request(&chain(&[1, 2, 3])), 2);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn probation_filters_one_off_blocks() {
        // Share 0.34 of 3: one probation block at most before main is used.
        let mut c = SegCache::new(3, 0.34);
        c.request(&chain(&[1, 2]));
        c.request(&chain(&[1, 2])); // both promoted to main
        c.request(&chain(&[7])); // a one-off
        c.request(&chain(&[8])); // pushes the one-off out, not the hot chain
        assert_eq!(c.request(&chain(&[1, 2])), 2);
        // The evicted one-off comes back: straight to main.
        c.request(&chain(&[7]));
        assert!(c.blocks[&k(7)].main);
    }

    #[test]
    fn ghosts_are_bounded_and_taken_once() {
        let mut g = Ghosts::default();
        for i in 0..10 {
            g.push(k(i), 4);
        }
        assert_eq!(g.len(), 4);
        assert!(!g.take(&k(0)));
        assert!(g.take(&k(9)));
        assert!(!g.take(&k(9)));
        // Taken then pushed again: the new entry counts, the stale one not.
        g.push(k(9), 4);
        for i in 10..13 {
            g.push(k(i), 4);
        }
        assert!(g.take(&k(9)), "k9 is among the 4 newest");
        for i in 0..1000 {
            g.push(k(2000 + i), 4);
            g.take(&k(2000 + i));
        }
        assert!(g.order.len() <= 2 * 4 + 64, "stale entries are compacted");
    }

    #[test]
    fn the_tuner_leaves_lru_only_for_a_better_share() {
        // A scan-heavy stream: one hot chain and many one-off chains.
        let mut trace = Vec::new();
        for i in 0..4000u64 {
            trace.push(chain(&[1, 2, 3, 1000 + i % 7]));
            trace.push(chain(&[
                100_000 + 10 * i,
                100_001 + 10 * i,
                100_002 + 10 * i,
                100_003 + 10 * i,
            ]));
        }
        let (m, q) = simulate_adaptive(&trace, 40);
        let mut lru = SegCache::new(40, 1.0);
        for c in &trace {
            lru.request(c);
        }
        assert!(m as f64 / q as f64 >= lru.matched as f64 / lru.queried as f64);
        assert_eq!(q, lru.queried);
    }
}
