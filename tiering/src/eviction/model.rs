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
//! when it is large). The tuner replays the requests through miniature
//! caches, one per candidate share: for a cache of fewer than [`FULL`]
//! blocks every request through miniatures of its size; for a bigger one
//! about half of the requests (chosen by a hash of the chain's third key, so
//! a conversation's requests are kept or dropped together) through
//! miniatures of half its size. Every 100 requests it switches the real
//! cache to the candidate that hit most recently (scores decay by 0.9 a
//! round), leaving plain LRU only for a candidate at least 1% better. This is
//! the miniature-simulation idea (Waldspurger et al., "Cache Modeling and
//! Optimization using Miniature Simulations", 2017) applied to choosing a
//! segment split.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash};

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

/// Candidate probation shares; the first (1.0) is plain prefix-aware LRU.
pub const CANDIDATES: [f64; 6] = [1.0, 0.05, 0.1, 0.2, 0.4, 0.7];
/// Caches of fewer blocks than this feed every request to full-size
/// miniatures; bigger ones one in [`SAMPLE`] to miniatures that many times
/// smaller. A half-size sample of a small cache models it poorly (on
/// Mooncake's trace a node of 1,666 blocks tuned from 833-block miniatures
/// hit 6% less than from full-size ones), and below this size the six
/// miniatures' metadata stays under a few tens of MiB.
pub const FULL: usize = 16_384;
/// The sampling rate of caches of [`FULL`] blocks and more.
pub const SAMPLE: u64 = 2;
/// Requests between two choices of the share.
pub const ROUND: u64 = 100;
const DECAY: f64 = 0.9;
const MARGIN: f64 = 1.01;
/// Keys a tuner keeps at most while its capacity is not known.
const EARLY_KEYS: usize = 1 << 16;
/// Ghost list length, in capacities.
pub const GHOSTS: usize = 3;

/// One request in how many feeds the miniatures of a cache of `capacity`
/// blocks (whose capacity is that many times smaller).
pub fn sample_rate(capacity: usize) -> u64 {
    if capacity < FULL {
        1
    } else {
        SAMPLE
    }
}

/// Which key of a chain of `len` keys decides whether it is sampled.
pub fn sample_index(len: usize) -> usize {
    len.saturating_sub(1).min(2)
}

/// Whether a chain whose deciding key ([`sample_index`]) is `key` is in a
/// sample of one in `rate`.
pub fn sampled_key(key: &[u8], rate: u64) -> bool {
    sampled_id(block_id(key), rate)
}

fn sampled_id(id: u64, rate: u64) -> bool {
    rate <= 1 || id.is_multiple_of(rate)
}

/// A block's id in the miniatures and in [`SegCache`]: its key's XXH3-64
/// (a model may confuse two keys once in 2^64; it then only mispredicts).
/// The store's index hashes keys from the same XXH3, and reuses a sampled
/// match's ids for it.
pub fn block_id(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Hashes a block id (already a good hash) as itself.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A bounded first-in first-out set of keys (the store's: `Bytes`; the
/// miniatures': block ids).
#[derive(Debug)]
pub struct Ghosts<K = Bytes, S = std::hash::RandomState> {
    /// Key -> the sequence number of its entry in `order`.
    set: HashMap<K, u64, S>,
    /// Oldest first; entries whose sequence no longer matches `set` are stale.
    order: VecDeque<(u64, K)>,
    seq: u64,
}

impl<K, S: Default> Default for Ghosts<K, S> {
    fn default() -> Self {
        Ghosts {
            set: HashMap::default(),
            order: VecDeque::new(),
            seq: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, S: BuildHasher> Ghosts<K, S> {
    /// Remembers `key` (as the newest), forgetting the oldest beyond `cap`.
    pub fn push(&mut self, key: K, cap: usize) {
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
    pub fn take<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
    {
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
    parent: Option<u64>,
    children: u32,
    main: bool,
}

/// A metadata-only segmented prefix-aware cache of `capacity` blocks, which
/// knows blocks by their [`block_id`].
pub struct SegCache {
    capacity: usize,
    /// Probation share (1.0 or more: plain prefix-aware LRU).
    pub share: f64,
    blocks: IdMap<Block>,
    /// Evictable blocks by (segment, stamp).
    order: [BTreeMap<u64, u64>; 2],
    probation: usize,
    ghosts: Ghosts<u64, BuildHasherDefault<IdHasher>>,
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
            blocks: IdMap::default(),
            order: [BTreeMap::new(), BTreeMap::new()],
            probation: 0,
            ghosts: Ghosts::default(),
            clock: 0,
            queried: 0,
            matched: 0,
        }
    }

    fn file(&mut self, id: u64) {
        let b = &self.blocks[&id];
        if b.children == 0 {
            self.order[b.main as usize].insert(b.stamp, id);
        }
    }

    fn unfile(&mut self, id: u64) {
        let b = &self.blocks[&id];
        if b.children == 0 {
            self.order[b.main as usize].remove(&b.stamp);
        }
    }

    /// One request: counts its prefix hit, touches the cached blocks and
    /// stores the missing ones in chain order. Returns the prefix hit.
    pub fn request(&mut self, chain: &[Bytes]) -> usize {
        let ids: Vec<u64> = chain.iter().map(|k| block_id(k)).collect();
        self.request_ids(&ids)
    }

    /// [`request`](Self::request) of a chain given by its blocks' ids.
    pub fn request_ids(&mut self, chain: &[u64]) -> usize {
        let hit = chain
            .iter()
            .take_while(|k| self.blocks.contains_key(*k))
            .count();
        self.queried += chain.len() as u64;
        self.matched += hit as u64;
        let mut prev: Option<u64> = None;
        for &id in chain {
            self.clock += 1;
            if self.blocks.contains_key(&id) {
                self.unfile(id);
                let b = self.blocks.get_mut(&id).expect("present");
                if !b.main {
                    b.main = true;
                    self.probation -= 1;
                }
                b.stamp = self.clock;
                self.file(id);
                prev = Some(id);
                continue;
            }
            let main = self.share < 1.0 && self.ghosts.take(&id);
            if let Some(p) = prev {
                self.unfile(p);
                self.blocks.get_mut(&p).expect("parent cached").children += 1;
            }
            self.blocks.insert(
                id,
                Block {
                    stamp: self.clock,
                    parent: prev,
                    children: 0,
                    main,
                },
            );
            if !main {
                self.probation += 1;
            }
            self.file(id);
            while self.blocks.len() > self.capacity {
                if !self.evict_one(Some(id)) {
                    break;
                }
            }
            prev = Some(id);
        }
        hit
    }

    fn head(&self, seg: usize, except: Option<u64>) -> Option<(u64, u64)> {
        self.order[seg]
            .iter()
            .find(|(_, k)| Some(**k) != except)
            .map(|(s, k)| (*s, *k))
    }

    fn evict_one(&mut self, except: Option<u64>) -> bool {
        let pick = if self.share >= 1.0 {
            match (self.head(0, except), self.head(1, except)) {
                (Some(p), Some(m)) => Some(if p.0 < m.0 { p } else { m }),
                (p, m) => p.or(m),
            }
        } else {
            let main_count = self.blocks.len() - self.probation;
            let probation_first =
                self.probation as f64 > self.share * self.capacity as f64 || main_count == 0;
            let first = usize::from(!probation_first);
            self.head(first, except)
                .or_else(|| self.head(1 - first, except))
        };
        let Some((_, victim)) = pick else {
            return false;
        };
        self.unfile(victim);
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
                self.unfile(parent);
                self.blocks.get_mut(&parent).expect("present").children -= 1;
                self.file(parent);
            }
        }
        true
    }

    /// Changes the capacity, evicting down to it.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.blocks.len() > self.capacity {
            if !self.evict_one(None) {
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
    /// One request in this many feeds the miniatures; 0 until the capacity
    /// is known.
    rate: u64,
    /// Requests seen before the capacity was known (a store learns its
    /// capacity in blocks from the first blocks stored), fed to the
    /// miniatures once it is; dropped if the first round ends first.
    early: Vec<Vec<u64>>,
    /// The share in force.
    pub share: f64,
}

impl Tuner {
    /// A tuner for a cache of `capacity` blocks, starting at plain LRU.
    pub fn new(capacity: usize) -> Tuner {
        let mut t = Tuner::unknown();
        t.resize(capacity);
        t
    }

    /// A tuner for a cache whose capacity in blocks is not known yet
    /// ([`resize`](Self::resize) tells it); it keeps the requests it sees
    /// until then.
    pub fn unknown() -> Tuner {
        Tuner {
            minis: Vec::new(),
            scores: vec![0.0; CANDIDATES.len()],
            seen: 0,
            mini_capacity: 0,
            rate: 0,
            early: Vec::new(),
            share: CANDIDATES[0],
        }
    }

    /// The capacity (in blocks) the miniatures model, times the sampling
    /// rate; `None` before it is known.
    pub fn capacity(&self) -> Option<usize> {
        (self.rate > 0).then(|| self.mini_capacity * self.rate as usize)
    }

    /// One request in how many feeds the miniatures (0: all, while the
    /// capacity is not known).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Models a cache of `capacity` blocks from now on. The sampling rate is
    /// set by the first capacity given and kept while the capacity stays
    /// within a factor of two of [`FULL`]'s side it started on (a store's
    /// capacity in blocks is an estimate that moves with the block sizes);
    /// a change of rate starts the miniatures and scores afresh.
    pub fn resize(&mut self, capacity: usize) {
        let flip = match self.rate {
            1 => capacity >= 2 * FULL,
            0 => false,
            _ => capacity < FULL / 2,
        };
        if flip {
            let share = self.share;
            *self = Tuner::unknown();
            self.share = share;
        }
        if self.rate == 0 {
            self.rate = sample_rate(capacity);
            self.mini_capacity = (capacity / self.rate as usize).max(1);
            self.minis = CANDIDATES
                .iter()
                .map(|s| SegCache::new(self.mini_capacity, *s))
                .collect();
            for chain in std::mem::take(&mut self.early) {
                self.feed(&chain);
            }
            return;
        }
        let mini = (capacity / self.rate as usize).max(1);
        if mini == self.mini_capacity {
            return;
        }
        self.mini_capacity = mini;
        for m in &mut self.minis {
            m.set_capacity(self.mini_capacity);
        }
    }

    fn feed(&mut self, chain: &[u64]) {
        let decider = chain.get(sample_index(chain.len()));
        if decider.is_some_and(|id| sampled_id(*id, self.rate)) {
            for (m, s) in self.minis.iter_mut().zip(&mut self.scores) {
                *s += m.request_ids(chain) as f64;
            }
        }
    }

    /// Sees one request (a chain about to be matched and completed). Returns
    /// the share to use from now on.
    pub fn observe(&mut self, chain: &[Bytes]) -> f64 {
        let ids: Vec<u64> = chain.iter().map(|k| block_id(k)).collect();
        self.observe_ids(&ids)
    }

    /// [`observe`](Self::observe) of a chain given by its blocks'
    /// [`block_id`]s.
    pub fn observe_ids(&mut self, chain: &[u64]) -> f64 {
        if self.rate > 0 {
            self.feed(chain);
        } else if self.seen < ROUND
            && self.early.iter().map(Vec::len).sum::<usize>() + chain.len() <= EARLY_KEYS
        {
            self.early.push(chain.to_vec());
        }
        self.observe_unsampled()
    }

    /// As [`observe`](Self::observe) for a request that is not sampled
    /// (the caller checked [`sampled_key`] at [`rate`](Self::rate)): it
    /// only counts.
    pub fn observe_unsampled(&mut self) -> f64 {
        self.seen += 1;
        if self.seen.is_multiple_of(ROUND) {
            // Scores from before the capacity was known would be out of
            // step with the rounds: forget them.
            self.early.clear();
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
        assert!(c.blocks[&block_id(&k(7))].main);
    }

    #[test]
    fn ghosts_are_bounded_and_taken_once() {
        let mut g: Ghosts = Ghosts::default();
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
    fn a_tuner_sized_late_agrees_with_one_sized_at_once() {
        // A store learns its capacity from its first blocks: the requests
        // before that must count as if it had known.
        let trace: Vec<Vec<Bytes>> = (0..3000u64)
            .map(|i| chain(&[1, 2, 10 + i % 50, 1000 + i % 300, 5000 + i]))
            .collect();
        let mut sized = Tuner::new(200);
        let mut late = Tuner::unknown();
        assert_eq!(late.capacity(), None);
        let mut differed = 0;
        for (i, c) in trace.iter().enumerate() {
            if i == 3 {
                late.resize(200);
            }
            assert_eq!(sized.observe(c), late.observe(c), "request {i}");
            if i >= 3 {
                assert_eq!(sized.scores, late.scores, "request {i}");
            }
            differed += (sized.share != CANDIDATES[0]) as usize;
        }
        assert!(differed > 0, "the trace moves the share off LRU");
        assert_eq!(late.capacity(), Some(200));
        assert_eq!(late.rate(), 1);
    }

    #[test]
    fn big_caches_sample_and_the_rate_holds_near_the_threshold() {
        assert_eq!(sample_rate(FULL - 1), 1);
        assert_eq!(sample_rate(FULL), SAMPLE);
        let mut t = Tuner::new(FULL);
        assert_eq!((t.rate(), t.capacity()), (SAMPLE, Some(FULL)));
        // An estimate wobbling around the threshold keeps the rate.
        t.resize(FULL - 100);
        assert_eq!(t.rate(), SAMPLE);
        assert_eq!(t.minis[0].capacity, (FULL - 100) / SAMPLE as usize);
        // Far below it, full-size miniatures again.
        t.resize(100);
        assert_eq!((t.rate(), t.capacity()), (1, Some(100)));
        t.resize(2 * FULL);
        assert_eq!(t.rate(), SAMPLE);
    }

    #[test]
    fn an_unsized_tuner_keeps_a_bounded_number_of_requests() {
        let mut t = Tuner::unknown();
        let long: Vec<Bytes> = (0..10_000u64).map(k).collect();
        for _ in 0..50 {
            t.observe(&long);
        }
        let kept: usize = t.early.iter().map(Vec::len).sum();
        assert!(kept <= EARLY_KEYS, "{kept} keys kept");
        for _ in 0..50 {
            t.observe(&chain(&[1]));
        }
        assert!(t.early.is_empty(), "the first round ends the wait");
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
