//! Ids that name a client's lease, reservation or located block on the wire.
//!
//! The data port and `KV.RELEASE` take these ids as the proof of what a
//! request may touch, so one client must not be able to guess another's: a
//! counter would let it write into a reservation it does not own or end a
//! lease it did not take. Each id is a fresh counter value through SipHash
//! under the process's random keys (std's `RandomState`), which a client
//! that sees its own ids cannot predict the next ones from.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A source of unguessable ids: 63 bits (RESP integers are signed), never 0.
/// Two draws may collide (about 2^-63 a pair): callers that keep ids in a map
/// draw again when the id is taken ([`Ids::fresh`]).
#[derive(Debug)]
pub struct Ids {
    keys: std::hash::RandomState,
    next: AtomicU64,
}

impl Default for Ids {
    fn default() -> Self {
        Ids {
            keys: std::hash::RandomState::new(),
            next: AtomicU64::new(0),
        }
    }
}

impl Ids {
    /// The next id.
    pub fn draw(&self) -> u64 {
        loop {
            let id = self.keys.hash_one(self.next.fetch_add(1, Relaxed)) & (i64::MAX as u64);
            if id != 0 {
                return id;
            }
        }
    }

    /// The next id for which `taken` is false.
    pub fn fresh(&self, taken: impl Fn(u64) -> bool) -> u64 {
        loop {
            let id = self.draw();
            if !taken(id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_distinct_and_not_sequential() {
        let ids = Ids::default();
        let drawn: Vec<u64> = (0..10_000).map(|_| ids.draw()).collect();
        assert!(drawn.iter().all(|&i| i > 0 && i <= i64::MAX as u64));
        let set: std::collections::HashSet<u64> = drawn.iter().copied().collect();
        assert_eq!(set.len(), drawn.len());
        // Neighbouring ids differ in about half their 63 bits, not by one.
        let close = drawn
            .windows(2)
            .filter(|w| w[0].abs_diff(w[1]) < 1 << 32)
            .count();
        assert!(close < 3, "{close} pairs of consecutive ids are near");
        // Two sources (two server runs) give different sequences.
        assert_ne!(Ids::default().draw(), Ids::default().draw());
    }

    #[test]
    fn fresh_skips_taken_ids() {
        let ids = Ids::default();
        let first = ids.draw();
        let second = ids.fresh(|id| id == first);
        assert_ne!(first, second);
    }
}
