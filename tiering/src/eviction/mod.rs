//! The eviction seam: how a level of the store picks the blocks that leave
//! it.
//!
//! The index files a level's *evictable* blocks in each shard's eviction
//! order, keyed by segment and recency stamp (see `index.rs`); a
//! policy decides which segment a block joins and moves to, and which of
//! the segments' oldest blocks goes next. Today's policies:
//! [`lru::Lru`] (one segment, least recently used first) and
//! [`adaptive::Adaptive`] (probation and main segments, ghosts, a tuner
//! choosing the probation share).
//!
//! # Contract
//! A policy never returns a block that is pinned, leased or held (being
//! replaced), nor one with a stored child in the same level: it chooses
//! only among the candidates it is offered ([`Candidates::oldest`]), and
//! those are the heads of the index's eviction orders, which hold exactly
//! the blocks that may go. Chains therefore leave a level from the tail.
//! The store checks its choice again under the shard's lock (a candidate
//! may have been touched or pinned since it was offered) and asks again.

pub mod adaptive;
pub mod lru;
pub mod model;

use bytes::Bytes;

use crate::index::{file_base, file_end, Index, Key, MAIN, SHARDS};

/// The eviction policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Eviction {
    /// Least recently used first.
    #[default]
    Lru,
    /// Probation and main segments with ghost admission, the probation share
    /// chosen by miniature simulations (see [`model`]).
    Adaptive,
}

impl Eviction {
    /// The name used by `--eviction`.
    pub fn as_str(self) -> &'static str {
        match self {
            Eviction::Lru => "lru",
            Eviction::Adaptive => "adaptive",
        }
    }

    /// Parses `lru` or `adaptive`.
    pub fn parse(s: &str) -> Option<Eviction> {
        match s {
            "lru" => Some(Eviction::Lru),
            "adaptive" => Some(Eviction::Adaptive),
            _ => None,
        }
    }

    /// A fresh instance of the policy.
    pub fn build(self) -> Box<dyn Policy> {
        match self {
            Eviction::Lru => Box::new(lru::Lru),
            Eviction::Adaptive => Box::new(adaptive::Adaptive::default()),
        }
    }
}

/// Which part of a level's eviction order a victim is looked for in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Every evictable block.
    All,
    /// Blocks not touched since they were stored.
    Probation,
    /// Blocks touched again since.
    Main,
}

impl Segment {
    /// The file keys of the segment in `level` (see
    /// [`crate::index::Entry::file_key`]).
    pub(crate) fn range(self, level: u8) -> std::ops::Range<u64> {
        let (base, end) = (file_base(level), file_end(level));
        match self {
            Segment::All => base..end,
            Segment::Probation => base..base | MAIN,
            Segment::Main => base | MAIN..end,
        }
    }
}

/// A block that may leave the level: its recency stamp and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The clock value of its last access.
    pub stamp: u64,
    /// Its key.
    pub key: Bytes,
}

/// Where a policy finds the blocks it may choose.
pub trait Candidates {
    /// The least recently used block of `segment` that may leave the level,
    /// if any. Looking in one segment MAY re-file blocks into another, so a
    /// policy MUST look in the segments in the order of
    /// [`Policy::segments`].
    fn oldest(&mut self, segment: Segment) -> Option<Candidate>;
}

/// Where a block being stored goes ([`Policy::on_insert`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// It joins probation: its bytes are incoming there.
    Probation,
    /// It joins main (it came back soon after it was evicted).
    Main,
    /// It replaces a stored version: a rewrite is an access
    /// ([`Policy::on_access`]).
    Rewrite,
}

/// What a level holds, as a policy's choices need it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Accounted bytes in use.
    pub used: u64,
    /// Bytes of blocks in probation.
    pub probation: u64,
    /// Blocks stored.
    pub blocks: u64,
    /// Bytes of a write under way that will join probation.
    pub incoming: u64,
}

/// An eviction policy of one level. Implementations are called from many
/// threads at once; `victim` only under the store's eviction lock.
pub trait Policy: Send + Sync + 'static {
    /// Which policy this is.
    fn kind(&self) -> Eviction;

    /// The segments the policy looks for victims in, in the order it looks.
    fn segments(&self) -> &'static [Segment];

    /// A block is about to be stored in the level under `key` (`stored`
    /// says whether a version of it is there already; the policy calls it
    /// only when the answer matters). Says where it goes.
    fn on_insert(&self, key: &[u8], stored: &dyn Fn() -> bool) -> Admit;

    /// A block of the level in main (`main`) or not was touched again (a
    /// match or a rewrite; a read is only a new stamp). Returns whether it
    /// is in main now.
    fn on_access(&self, main: bool) -> bool;

    /// The policy's victim `key` of `charge` bytes, in main or not, left
    /// the level.
    fn on_evict(&self, key: &Key, charge: u64, main: bool, usage: &Usage);

    /// The next block to leave the level: one of `candidates`' blocks, or
    /// `None` when they offer none.
    fn victim(&self, candidates: &mut dyn Candidates, usage: &Usage) -> Option<Candidate>;

    /// A match of `len` keys (`key(i)` the i-th) is about to run; `usage`
    /// reads the level's figures, for a policy that needs them (a match
    /// runs per prompt: a policy that does not MUST NOT call it). Returns
    /// the keys' block ids ([`crate::eviction::model::block_id`]) when the
    /// policy computed them (the index hashes keys from the same XXH3).
    fn on_match<'k>(
        &self,
        len: usize,
        key: &dyn Fn(usize) -> &'k [u8],
        usage: &dyn Fn() -> Usage,
    ) -> Option<Vec<u64>>;

    /// The share of the capacity probation may hold (1.0: plain LRU).
    fn probation_share(&self) -> f64 {
        1.0
    }

    /// Forgets what the policy learned (FLUSHALL).
    fn clear(&self) {}

    /// Forces the probation share (tests).
    #[cfg(test)]
    fn force_share(&self, _share: f64) {}
}

/// The heads of the shards' eviction orders, kept over one eviction run
/// (under the store's eviction lock): each victim then costs a look at the
/// shards it changed (its own and its parent's, where a parent left with
/// no child in the level is filed) rather than a lock of every shard
/// (which, with its B-tree lookups, perf put at two fifths of the server's
/// samples while 64 KiB blocks were put into a full store). A head that
/// another thread changed meanwhile is caught when the victim is checked
/// under its shard's lock, and looked up again; a block another thread
/// files with an old stamp meanwhile waits for the next run.
pub(crate) struct Heads<'a> {
    index: &'a Index,
    level: u8,
    segments: &'static [Segment],
    /// Per segment, per shard: the head's key, when looked up...
    heads: [[Option<Key>; SHARDS]; 3],
    /// ... and its stamp (`u64::MAX` for none), apart for a quick minimum.
    stamps: [[u64; SHARDS]; 3],
    /// The shards whose heads must be looked up again.
    stale: u64,
}

const _: () = assert!(SHARDS <= 64, "Heads keeps a bit per shard");

impl<'a> Heads<'a> {
    pub(crate) fn new(index: &'a Index, level: u8, policy: &dyn Policy) -> Heads<'a> {
        Heads {
            index,
            level,
            segments: policy.segments(),
            heads: std::array::from_fn(|_| std::array::from_fn(|_| None)),
            stamps: [[u64::MAX; SHARDS]; 3],
            stale: u64::MAX >> (64 - SHARDS),
        }
    }

    /// `key`'s shard changed: its heads are looked up again.
    pub(crate) fn changed(&mut self, key: &[u8]) {
        self.stale |= 1u64 << crate::index::shard_of(key);
    }

    /// Every shard may have changed.
    pub(crate) fn reset(&mut self) {
        self.stale = u64::MAX >> (64 - SHARDS);
    }
}

impl Candidates for Heads<'_> {
    fn oldest(&mut self, segment: Segment) -> Option<Candidate> {
        while self.stale != 0 {
            let s = self.stale.trailing_zeros() as usize;
            self.stale &= self.stale - 1;
            let mut shard = self.index.shard_at(s);
            for &seg in self.segments {
                let head = shard.lru_head_in(seg.range(self.level));
                let i = seg as usize;
                self.stamps[i][s] = head.as_ref().map_or(u64::MAX, |h| h.0);
                self.heads[i][s] = head.map(|h| h.1);
            }
        }
        let i = segment as usize;
        let (s, &stamp) = self.stamps[i]
            .iter()
            .enumerate()
            .min_by_key(|(_, stamp)| **stamp)
            .expect("SHARDS > 0");
        let key = self.heads[i][s].clone()?;
        Some(Candidate { stamp, key })
    }
}
