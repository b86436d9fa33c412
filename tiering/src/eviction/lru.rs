//! Least recently used first: one segment, the oldest evictable block goes.
//! With the index's rule that only blocks without a stored child in the
//! level are candidates, this is prefix-aware LRU: a chain is consumed from
//! its tail, each parent becoming a candidate at its own (older) recency.

use super::{Admit, Candidate, Candidates, Eviction, Policy, Segment, Usage};
use crate::index::Key;

/// Least recently used first.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lru;

impl Policy for Lru {
    fn kind(&self) -> Eviction {
        Eviction::Lru
    }

    fn segments(&self) -> &'static [Segment] {
        &[Segment::All]
    }

    fn on_insert(&self, _key: &[u8], _stored: &dyn Fn() -> bool) -> Admit {
        Admit::Probation
    }

    fn on_access(&self, main: bool) -> bool {
        main
    }

    fn on_evict(&self, _key: &Key, _charge: u64, _main: bool, _usage: &Usage) {}

    fn victim(&self, candidates: &mut dyn Candidates, _usage: &Usage) -> Option<Candidate> {
        candidates.oldest(Segment::All)
    }

    fn on_match<'k>(
        &self,
        _len: usize,
        _key: &dyn Fn(usize) -> &'k [u8],
        _usage: &dyn Fn() -> Usage,
    ) -> Option<Vec<u64>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Candidates from a list, oldest first per segment.
    pub(crate) struct Listed(pub Vec<(Segment, Candidate)>);

    impl Candidates for Listed {
        fn oldest(&mut self, segment: Segment) -> Option<Candidate> {
            self.0
                .iter()
                .filter(|(s, _)| *s == segment || segment == Segment::All)
                .map(|(_, c)| c.clone())
                .min_by_key(|c| c.stamp)
        }
    }

    fn c(stamp: u64, key: &str) -> Candidate {
        Candidate {
            stamp,
            key: Bytes::copy_from_slice(key.as_bytes()),
        }
    }

    #[test]
    fn the_oldest_candidate_goes_and_nothing_moves_to_main() {
        let mut listed = Listed(vec![
            (Segment::Probation, c(7, "b")),
            (Segment::Main, c(3, "a")),
        ]);
        assert_eq!(Lru.victim(&mut listed, &Usage::default()), Some(c(3, "a")));
        assert_eq!(Lru.on_insert(b"k", &|| true), Admit::Probation);
        assert!(!Lru.on_access(false));
        assert_eq!(Lru.victim(&mut Listed(Vec::new()), &Usage::default()), None);
    }
}
