//! `adaptive`: probation and main segments, ghost admission, and a tuner
//! that chooses the probation share from miniature simulations of the
//! traffic (the model and the tuner are in [`super::model`]).
//!
//! A new block joins probation, or main when it was evicted from probation
//! lately (a ghost: it came back); a block touched again (matched or
//! rewritten) moves to main. The victim is the oldest candidate of
//! probation while probation, the write under way included, holds more
//! than its share of the capacity, else of main. A share of 1.0 is plain
//! prefix-aware LRU (the older of the two heads).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use super::{Admit, Candidate, Candidates, Eviction, Policy, Segment, Usage};
use crate::eviction::model::{Ghosts, Tuner, CANDIDATES, GHOSTS};
use crate::index::Key;

/// The `adaptive` policy's state.
pub struct Adaptive {
    /// The probation share in force, as `f64` bits.
    share: AtomicU64,
    /// Keys evicted from probation lately.
    ghosts: Mutex<Ghosts>,
    /// The miniature simulations choosing the share.
    tuner: Mutex<Option<Tuner>>,
    /// The tuner's sampling rate (0 until it knows the capacity: every
    /// request is kept).
    sample_rate: AtomicU64,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            share: AtomicU64::new(CANDIDATES[0].to_bits()),
            ghosts: Mutex::new(Ghosts::default()),
            tuner: Mutex::new(None),
            sample_rate: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptive")
            .field("share", &self.probation_share())
            .finish()
    }
}

/// The level's capacity in blocks, judged from the blocks stored (one byte
/// a block for a level still empty).
fn capacity_blocks(usage: &Usage) -> usize {
    let each = if usage.blocks > 0 && usage.used > 0 {
        usage.used / usage.blocks
    } else {
        1
    };
    (usage.capacity / each.max(1)) as usize
}

impl Adaptive {
    /// Shows the tuner a request about to be matched (its chain when
    /// sampled, else `None`), and takes the share it chooses.
    fn tune(&self, sampled: Option<&[u64]>, usage: &Usage) {
        let blocks = capacity_blocks(usage);
        let mut tuner = self.tuner.lock();
        let t = tuner.get_or_insert_with(Tuner::unknown);
        // The capacity in blocks is known once blocks are stored: keep the
        // miniatures at the right scale.
        if usage.blocks > 0 && t.capacity() != Some(blocks) {
            t.resize(blocks);
        }
        let share = match sampled {
            Some(chain) => t.observe_ids(chain),
            None => t.observe_unsampled(),
        };
        self.sample_rate.store(t.rate(), Relaxed);
        self.share.store(share.to_bits(), Relaxed);
    }
}

impl Policy for Adaptive {
    fn kind(&self) -> Eviction {
        Eviction::Adaptive
    }

    fn segments(&self) -> &'static [Segment] {
        // Looking in probation may re-file a block promoted since into main.
        &[Segment::Probation, Segment::Main]
    }

    fn on_insert(&self, key: &[u8], stored: &dyn Fn() -> bool) -> Admit {
        if stored() {
            Admit::Rewrite
        } else if self.probation_share() < 1.0 && self.ghosts.lock().take(key) {
            Admit::Main
        } else {
            Admit::Probation
        }
    }

    fn on_access(&self, _main: bool) -> bool {
        true
    }

    fn on_evict(&self, key: &Key, charge: u64, main: bool, usage: &Usage) {
        if !main {
            // Remember about three capacities' worth of blocks like it.
            let cap = GHOSTS * (usage.capacity / charge.max(1)) as usize;
            self.ghosts.lock().push(key.clone(), cap);
        }
    }

    fn victim(&self, candidates: &mut dyn Candidates, usage: &Usage) -> Option<Candidate> {
        let share = self.probation_share();
        let p = candidates.oldest(Segment::Probation);
        let m = candidates.oldest(Segment::Main);
        if share >= 1.0 {
            return match (p, m) {
                (Some(p), Some(m)) => Some(if p.stamp < m.stamp { p } else { m }),
                (p, m) => p.or(m),
            };
        }
        let probation = usage.probation + usage.incoming;
        let main = usage.used.saturating_sub(probation);
        if probation as f64 > share * usage.capacity as f64 || main == 0 {
            p.or(m)
        } else {
            m.or(p)
        }
    }

    fn on_match<'k>(
        &self,
        len: usize,
        key: &dyn Fn(usize) -> &'k [u8],
        usage: &dyn Fn() -> Usage,
    ) -> Option<Vec<u64>> {
        // Only sampled requests feed the miniatures (and need the keys'
        // ids); the others are only counted.
        let rate = self.sample_rate.load(Relaxed);
        let sampled = len > 0
            && crate::eviction::model::sampled_key(
                key(crate::eviction::model::sample_index(len)),
                rate,
            );
        let ids: Option<Vec<u64>> = sampled.then(|| {
            (0..len)
                .map(|i| crate::eviction::model::block_id(key(i)))
                .collect()
        });
        self.tune(ids.as_deref(), &usage());
        ids
    }

    fn probation_share(&self) -> f64 {
        f64::from_bits(self.share.load(Relaxed))
    }

    fn clear(&self) {
        self.ghosts.lock().clear();
        *self.tuner.lock() = None;
        self.sample_rate.store(0, Relaxed);
        self.share.store(CANDIDATES[0].to_bits(), Relaxed);
    }

    #[cfg(test)]
    fn force_share(&self, share: f64) {
        self.share.store(share.to_bits(), Relaxed);
    }
}
