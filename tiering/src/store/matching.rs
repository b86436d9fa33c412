//! Prefix matches: how much of a chain is stored, where, and a lease on it.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use hashbrown::hash_map::RawEntryMut;

use super::{MatchResult, Store};
use crate::event::EventKind;
use crate::index::{by_shard, key_hash, key_hash_of, Shard, MAX_LEVELS};
use crate::leases::Lease;
use crate::tier::Slot;

#[cfg(test)]
thread_local! {
    /// Runs between the two passes of `match_prefix` on this thread, or,
    /// without a lease, between its one pass and the stamps given back (a
    /// test changes the store there).
    pub(super) static BETWEEN_MATCH_PASSES: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        const { std::cell::RefCell::new(None) };
}

impl Store {
    /// Counts the stored prefix of `keys`, refreshing the matched blocks'
    /// recency in chain order, and optionally leasing them for `lease_ms`.
    pub fn match_prefix<I>(&self, keys: I, lease_ms: Option<u64>) -> MatchResult
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
        I::IntoIter: ExactSizeIterator + Clone,
    {
        let keys = keys.into_iter();
        let queried = keys.len();
        // This runs for every prompt, over hundreds of keys: each key is hashed
        // once (shard and map), the keys take consecutive stamps from one tick
        // of the shared clock, and each shard's lock is taken once per pass
        // rather than once per key (perf had the lock's two atomics at a third
        // of a 256-key match). With a lease, pass one finds the stored
        // prefix and pass two refreshes and leases it; without, one pass
        // (`match_once`).
        let items: Vec<I::Item> = keys.collect();
        // The policy sees the request (`adaptive` feeds a sample to its
        // tuner, and hands back the keys' ids, the XXH3 the index hashes
        // too).
        let mut ids = None;
        // Whether a touch moves a block of each level to main.
        // (A policy reads its level's usage only if it needs it: lru does
        // not, and a match runs per prompt.)
        let mut to_main = [false; MAX_LEVELS];
        // Whether blocks matched in each level may be staged (a device
        // level staging on match): looked up once, not per key.
        let stages: [bool; MAX_LEVELS] = std::array::from_fn(|l| {
            (l as u8) < self.stack.len()
                && self
                    .stack
                    .pipe(l as u8)
                    .is_some_and(|p| p.settings.stage_on_match)
        });
        for (l, level) in self.stack.iter() {
            if let Some(p) = level.policy() {
                let got = p.on_match(queried, &|i| items[i].as_ref(), &|| level.usage(0));
                ids = ids.or(got);
                to_main[l as usize] = p.on_access(false);
            }
        }
        let first = self.index.tick_n(queried as u64);
        let hashed: Vec<(usize, u64)> = match &ids {
            Some(ids) => items
                .iter()
                .zip(ids)
                .map(|(k, &x)| key_hash_of(x, k.as_ref().len()))
                .collect(),
            None => items.iter().map(|k| key_hash(k.as_ref())).collect(),
        };
        let order = by_shard(&hashed);
        let groups = || order.chunk_by(|a, b| hashed[*a as usize].0 == hashed[*b as usize].0);

        let mut stage = Vec::new();
        let mut expired = Vec::new();
        if lease_ms.is_none() {
            // Without a lease, one pass: each shard's lock is taken once, and
            // each entry read once, where two passes had the server's threads
            // pass every shard's lock and entry lines back and forth twice a
            // match (perf: the lock's atomic and the entry misses were over
            // half of a 256-key match). Found keys are refreshed as they are
            // met; those that turn out to lie past a miss get their old
            // stamps back.
            let (matched, tiers) = self.match_once(
                &items,
                &hashed,
                &order,
                (first, to_main, stages),
                &mut expired,
                &mut stage,
            );
            return self.finish_match(items, matched, tiers, expired, stage, None);
        }
        let mut end = queried;
        self.index
            .walk_prefix(&hashed, &order, &mut end, |shard, i| {
                let found = shard
                    .map
                    .raw_entry()
                    .from_key_hashed_nocheck(hashed[i].1, items[i].as_ref());
                match found {
                    Some((_, e)) if e.expires_at.is_none_or(|t| t > self.now_ms()) => true,
                    Some(_) => {
                        expired.push(i);
                        false
                    }
                    None => false,
                }
            });

        #[cfg(test)]
        BETWEEN_MATCH_PASSES.with(|h| h.borrow_mut().as_mut().map(|f| f()));
        // A key removed between the passes ends the prefix there.
        let mut tiers = vec![0u8; end];
        let mut matched = end;
        let mut leased = Vec::new();
        for group in groups() {
            if group[0] as usize >= end {
                continue;
            }
            let mut guard = self.index.shard_at(hashed[group[0] as usize].0);
            for &i in group {
                let i = i as usize;
                if i >= end {
                    break;
                }
                let k = items[i].as_ref();
                let Shard { map, lru, .. } = &mut *guard;
                let RawEntryMut::Occupied(found) =
                    map.raw_entry_mut().from_key_hashed_nocheck(hashed[i].1, k)
                else {
                    matched = matched.min(i);
                    continue;
                };
                let e = found.into_mut();
                e.stamp = first + i as u64;
                if lease_ms.is_some() {
                    if e.evictable() {
                        lru.remove(&e.filed);
                    }
                    e.leases += 1;
                    leased.push(i);
                }
                tiers[i] = e.level;
                if stages[e.level as usize] && self.near_reclaim(e.level, &e.slot) {
                    stage.push((i, e.slot.clone(), e.written));
                }
                if !e.main && to_main[e.level as usize] {
                    self.moved_to_main(guard.promote_main(k));
                }
            }
        }
        self.finish_match(
            items,
            matched,
            tiers,
            expired,
            stage,
            lease_ms.map(|ms| (ms, leased)),
        )
    }

    /// `match_prefix` without a lease, in one pass over the shards: found
    /// keys are refreshed as they are met (the stamp `first + i`), and
    /// those that turn out to lie past the first miss (met in a shard
    /// visited before the miss's) get their old stamp back unless something
    /// refreshed them since, so they end neither refreshed nor staged nor
    /// promoted, as in two passes. Returns the prefix and its tiers.
    fn match_once<K: AsRef<[u8]>>(
        &self,
        items: &[K],
        hashed: &[(usize, u64)],
        order: &[u32],
        (first, to_main, stages): (u64, [bool; MAX_LEVELS], [bool; MAX_LEVELS]),
        expired: &mut Vec<usize>,
        stage: &mut Vec<(usize, Slot, u64)>,
    ) -> (usize, Vec<u8>) {
        let mut end = items.len();
        let mut tiers = vec![0u8; items.len()];
        // (index, stamp before) of each key refreshed; keys to promote.
        let mut touched: Vec<(usize, u64)> = Vec::with_capacity(items.len());
        let mut promote = Vec::new();
        self.index.walk_prefix(hashed, order, &mut end, |shard, i| {
            let found = shard
                .map
                .raw_entry_mut()
                .from_key_hashed_nocheck(hashed[i].1, items[i].as_ref());
            let RawEntryMut::Occupied(found) = found else {
                return false;
            };
            let e = found.into_mut();
            if e.expires_at.is_some_and(|t| t <= self.now_ms()) {
                expired.push(i);
                return false;
            }
            touched.push((i, e.stamp));
            e.stamp = first + i as u64;
            tiers[i] = e.level;
            if stages[e.level as usize] && self.near_reclaim(e.level, &e.slot) {
                stage.push((i, e.slot.clone(), e.written));
            }
            if !e.main && to_main[e.level as usize] {
                promote.push(i);
            }
            true
        });
        #[cfg(test)]
        BETWEEN_MATCH_PASSES.with(|h| h.borrow_mut().as_mut().map(|f| f()));
        for &(i, before) in touched.iter().filter(|(i, _)| *i > end) {
            let mut guard = self.index.shard_at(hashed[i].0);
            let Shard { map, lru, .. } = &mut *guard;
            let found = map
                .raw_entry_mut()
                .from_key_hashed_nocheck(hashed[i].1, items[i].as_ref());
            let RawEntryMut::Occupied(found) = found else {
                continue;
            };
            let (k, e) = found.into_key_value();
            if e.stamp != first + i as u64 {
                continue; // refreshed since (or another entry under the key)
            }
            e.stamp = before;
            // Filed under the newer stamp meanwhile (eviction re-files stale
            // heads): filed again, so that `filed <= stamp` holds.
            if e.evictable() && e.filed > e.file_key() {
                lru.remove(&e.filed);
                e.filed = e.file_key();
                lru.insert(e.filed, k.clone());
            }
        }
        for i in promote.into_iter().filter(|i| *i < end) {
            let moved = self
                .index
                .shard_at(hashed[i].0)
                .promote_main(items[i].as_ref());
            self.moved_to_main(moved);
        }
        (end, tiers)
    }

    /// The end of a match: expired keys removed, blocks staged, counters,
    /// the lease (its time and the indices of the keys it holds).
    fn finish_match<K: AsRef<[u8]>>(
        &self,
        items: Vec<K>,
        matched: usize,
        mut tiers: Vec<u8>,
        expired: Vec<usize>,
        mut stage: Vec<(usize, Slot, u64)>,
        lease: Option<(u64, Vec<usize>)>,
    ) -> MatchResult {
        let queried = items.len();
        let mut out = MatchResult::default();
        for i in expired {
            self.remove_tree(items[i].as_ref(), EventKind::Expired);
        }
        if !stage.is_empty() {
            // In chain order, so the prefix's head comes back first.
            stage.retain(|(i, _, _)| *i < matched);
            stage.sort_unstable_by_key(|(i, _, _)| *i);
            let stage = stage
                .into_iter()
                .map(|(i, slot, written)| {
                    (Bytes::copy_from_slice(items[i].as_ref()), slot, written)
                })
                .collect();
            self.queue_stagings(stage);
        }
        tiers.truncate(matched);
        out.tiers = tiers.into_iter().map(|l| self.stack.kind(l)).collect();
        out.matched = matched;
        self.matches.fetch_add(1, Relaxed);
        self.keys_queried.fetch_add(queried as u64, Relaxed);
        self.keys_matched.fetch_add(out.matched as u64, Relaxed);
        // Nothing matched, nothing to hold: no lease to give back.
        if let Some((ms, mut leased)) = lease.filter(|(_, l)| !l.is_empty()) {
            // Exactly the keys whose lease count went up (a key removed
            // between the passes may leave the prefix shorter).
            leased.sort_unstable();
            let keys = leased
                .iter()
                .map(|&i| Bytes::copy_from_slice(items[i].as_ref()))
                .collect();
            let lease = Lease::new(self.now_ms().saturating_add(ms), keys);
            out.lease = Some(self.leases.insert(lease));
        }
        out
    }

    /// A block of level `moved.0` moved from probation to main with
    /// `moved.1` bytes.
    fn moved_to_main(&self, moved: Option<(u8, u64)>) {
        if let Some((l, bytes)) = moved {
            self.stack.level(l).probation.fetch_sub(bytes, Relaxed);
        }
    }
}
