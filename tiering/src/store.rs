//! The store: blocks indexed by key and chain over a stack of tiers.
//!
//! PERFORMANCE CRITICAL: every GET, SET and KV.* command goes through here.
//!
//! The store orchestrates three parts: the index (`index.rs`: which
//! blocks are stored, where, and how they chain), the stack of tiers
//! ([`crate::stack`]: the levels that hold the bytes, fastest first, each
//! with its capacity and, in memory, its eviction policy) and the leases
//! (`leases.rs`). This file holds the requests: put, get, delete,
//! match, verify, flush and stats; how blocks move between levels is in
//! `store/moves.rs`, matching in `store/matching.rs`, leases and holds in
//! `store/leasing.rs`.
//!
//! # Eviction
//! A block is evictable from its level when it has no stored child in the
//! level, is not pinned and holds no lease. When a write pushes a memory
//! level past its high watermark, the writer takes the level's eviction
//! lock and moves the policy's victims (chosen among the shards' eviction
//! heads) to the level below, or drops them from the last level, until
//! usage is back under the low watermark. Moving a leaf may make its parent
//! a leaf of the level, which then becomes evictable at its own (older)
//! recency: chains leave a level from the tail, so the store never holds a
//! block whose parent is gone.
//!
//! Removing a block by other means (DEL, TTL, FLUSHALL) removes its stored
//! descendants too, for the same reason.

mod leasing;
pub(crate) mod matching;
mod moves;
mod put;
mod types;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use tidepool_checksum::checksum;

use crate::event::{Event, EventKind, EventSink};
use crate::index::{Entry, Index, Key, Shard};
use crate::leases::Leases;
use crate::stack::{TierSpec, TierStack};
use crate::tier::{Load, Slot, TierKind};

pub use crate::eviction::Eviction;
pub use crate::index::{charge_of, ENTRY_OVERHEAD};
pub use crate::stack::{PipeSettings, SsdStats, TierStats};
pub(crate) use moves::Job;
pub use types::{
    BlockMeta, ClockFn, Fetch, MatchResult, PutOptions, StoreConfig, StoreStats, ValueAlloc,
    Verified, VALUE_ALLOC_MIN,
};

/// The block store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    index: Index,
    stack: TierStack,
    leases: Leases,
    /// High and low watermarks of the memory levels as `f64` bits (read on
    /// every write, so no lock).
    watermarks: [AtomicU64; 2],
    /// Bytes of removed or replaced values that leases still hold (the
    /// shards' zombies): counted against the host level with its `used`.
    retained: AtomicU64,
    matches: AtomicU64,
    expired: AtomicU64,
    keys_queried: AtomicU64,
    keys_matched: AtomicU64,
    events: Option<Arc<dyn EventSink>>,
    now: ClockFn,
    /// Where copies of large values go, when set (the server's arena).
    value_alloc: std::sync::OnceLock<ValueAlloc>,
    /// Checksum every block stored in memory ([`StoreConfig::dram_checksums`]).
    checksums: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Builds a store over a stack of tiers.
pub struct StoreBuilder {
    config: StoreConfig,
    events: Option<Arc<dyn EventSink>>,
    now: ClockFn,
    specs: Vec<TierSpec>,
}

impl StoreBuilder {
    /// A store of `config`.
    pub fn new(config: StoreConfig) -> StoreBuilder {
        StoreBuilder {
            config,
            events: None,
            now: Arc::new(types::system_ms),
            specs: Vec::new(),
        }
    }

    /// Where block events go. Default: nowhere.
    pub fn events(mut self, sink: Arc<dyn EventSink>) -> StoreBuilder {
        self.events = Some(sink);
        self
    }

    /// The source of Unix milliseconds. Default: the system clock.
    pub fn clock(mut self, now: ClockFn) -> StoreBuilder {
        self.now = now;
        self
    }

    /// Adds a level below those added before (so the first is the
    /// fastest). Default: one DRAM level of
    /// [`StoreConfig::dram_capacity`] when none is added.
    pub fn with_tier(mut self, spec: TierSpec) -> StoreBuilder {
        self.specs.push(spec);
        self
    }

    /// The store, with the worker of its device level running and what
    /// that level recovered indexed (records whose parent was not
    /// recovered are dropped, so chains stay prefix-closed). Fails when the
    /// stack breaks a rule (see [`crate::stack`]) or the worker cannot start.
    pub fn build(mut self) -> Result<Arc<Store>, String> {
        if self.specs.is_empty() {
            self.specs.push(TierSpec::dram(self.config.dram_capacity));
        }
        let stack = TierStack::new(&self.specs, self.config.eviction)?;
        let recovered: Vec<_> = self
            .specs
            .iter_mut()
            .map(|s| std::mem::take(&mut s.recovered))
            .collect();
        let store = Arc::new(Store::with_stack(self.config, stack, self.events, self.now));
        if let Some(d) = store.stack.device() {
            store.start_pipe(d, self.specs[d as usize].pipe)?;
        }
        for (l, blocks) in recovered.into_iter().enumerate() {
            if !blocks.is_empty() {
                store.index_recovered(l as u8, blocks);
            }
        }
        Ok(store)
    }
}

impl Store {
    /// A store of one DRAM level with the given settings and no event sink.
    pub fn new(config: StoreConfig) -> Store {
        Self::with_parts(config, None, Arc::new(types::system_ms))
    }

    /// A store of one DRAM level with an event sink and a clock.
    pub fn with_parts(
        config: StoreConfig,
        events: Option<Arc<dyn EventSink>>,
        now: ClockFn,
    ) -> Store {
        let stack = TierStack::new(&[TierSpec::dram(config.dram_capacity)], config.eviction)
            .expect("one DRAM level is a valid stack");
        Self::with_stack(config, stack, events, now)
    }

    fn with_stack(
        config: StoreConfig,
        stack: TierStack,
        events: Option<Arc<dyn EventSink>>,
        now: ClockFn,
    ) -> Store {
        Store {
            index: Index::new(),
            stack,
            leases: Leases::new(),
            watermarks: [
                AtomicU64::new(config.high_watermark.to_bits()),
                AtomicU64::new(config.low_watermark.to_bits()),
            ],
            retained: AtomicU64::new(0),
            matches: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            keys_queried: AtomicU64::new(0),
            keys_matched: AtomicU64::new(0),
            events,
            now,
            value_alloc: std::sync::OnceLock::new(),
            checksums: config.dram_checksums,
        }
    }

    /// The host level's eviction policy.
    pub fn eviction(&self) -> Eviction {
        self.host().policy().map_or(Eviction::Lru, |p| p.kind())
    }

    /// Whether every block in memory carries a checksum
    /// ([`StoreConfig::dram_checksums`]).
    pub fn dram_checksums(&self) -> bool {
        self.checksums
    }

    /// `adaptive`: the host level's probation share in force (1.0: plain
    /// LRU).
    pub fn probation_share(&self) -> f64 {
        self.host().policy().map_or(1.0, |p| p.probation_share())
    }

    /// Forces the probation share (tests; the tuner sets it otherwise).
    #[cfg(test)]
    fn force_share(&self, share: f64) {
        if let Some(p) = self.host().policy() {
            p.force_share(share);
        }
    }

    fn host(&self) -> &crate::stack::Level {
        self.stack.level(self.stack.host())
    }

    /// Sends copies of values of [`VALUE_ALLOC_MIN`] bytes or more through
    /// `alloc` (once; false if one was set already).
    pub fn set_value_alloc(&self, alloc: ValueAlloc) -> bool {
        self.value_alloc.set(alloc).is_ok()
    }

    /// A copy of `value` that the store owns. A large one goes through the
    /// value allocator (the server's arena), shedding blocks until it fits
    /// there: a large block on the heap would keep host-memory bytes in a
    /// second pool beside the arena, whose pages stay resident once
    /// touched. Only when shedding frees nothing does it go to the heap.
    fn copy_value(&self, value: &[u8]) -> Bytes {
        if value.len() >= VALUE_ALLOC_MIN {
            if let Some(alloc) = self.value_alloc.get() {
                for _ in 0..4 {
                    if let Some(b) = alloc(value) {
                        return b;
                    }
                    if self.shed(value.len() as u64) == 0 {
                        break;
                    }
                }
            }
        }
        Bytes::copy_from_slice(value)
    }

    fn shard(&self, key: &[u8]) -> parking_lot::MutexGuard<'_, Shard> {
        self.index.shard(key)
    }

    fn now_ms(&self) -> u64 {
        (self.now)()
    }

    fn emit(&self, kind: EventKind, key: &Key, level: u8, parent: Option<&Key>) {
        if let Some(sink) = &self.events {
            if sink.enabled() {
                sink.publish(Event {
                    kind,
                    key: key.clone(),
                    tier: self.stack.kind(level),
                    parent: parent.cloned(),
                });
            }
        }
    }

    /// The host level's capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.host().capacity()
    }

    /// Accounted bytes in use in the host level.
    pub fn used(&self) -> u64 {
        self.host().used()
    }

    /// Bytes of removed or replaced values that holding leases keep alive
    /// (see [`Store::hold`]): they are part of [`Store::used`] until those
    /// leases end.
    pub fn retained(&self) -> u64 {
        self.retained.load(Relaxed)
    }

    /// Counts `bytes` of a value that left the index but whose memory
    /// lives on: they stay in (or join) the host level's `used`, which is
    /// what eviction and `-OOM` go by, so the write path reads one counter.
    fn retain(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.retained.fetch_add(bytes, Relaxed);
        self.host().reserve(bytes);
    }

    /// Retained bytes whose memory is free now.
    fn unretain(&self, bytes: u64) {
        self.retained.fetch_sub(bytes, Relaxed);
        self.host().unreserve(bytes);
    }

    /// Changes the host level's capacity live, evicting down to the new
    /// low watermark.
    pub fn set_capacity(&self, bytes: u64) {
        self.host().counters.capacity.store(bytes, Relaxed);
        let _ = self.make_room(self.stack.host(), 0);
    }

    /// Changes the watermarks live.
    pub fn set_watermarks(&self, high: f64, low: f64) -> Result<(), String> {
        StoreConfig {
            dram_capacity: 0,
            high_watermark: high,
            low_watermark: low,
            ..StoreConfig::default()
        }
        .validate()?;
        self.watermarks[0].store(high.to_bits(), Relaxed);
        self.watermarks[1].store(low.to_bits(), Relaxed);
        self.make_room_everywhere();
        Ok(())
    }

    /// The current (high, low) watermarks.
    pub fn watermarks(&self) -> (f64, f64) {
        (
            f64::from_bits(self.watermarks[0].load(Relaxed)),
            f64::from_bits(self.watermarks[1].load(Relaxed)),
        )
    }

    /// Takes a removed entry out of the accounting (and its record out of
    /// recovery).
    fn uncount(&self, key: &[u8], e: &Entry) {
        self.forget_record(key, e.record.as_ref());
        self.stack
            .level(e.level)
            .sub(charge_of(key.len(), e.len as usize), e.main);
    }

    /// Accounting, parent unlinking and the event for an entry already taken out
    /// of its shard. Returns its children (for cascades).
    fn finish_removal(&self, key: Key, e: Entry, kind: EventKind) -> Vec<Key> {
        self.uncount(&key, &e);
        self.stack.level(e.level).tier.release(e.slot);
        if let Some(p) = &e.parent {
            self.index.unlink_child(p, &key, e.level);
        }
        self.emit(kind, &key, e.level, e.parent.as_ref());
        e.children.into_iter().map(|(k, _)| k).collect()
    }

    /// Removes `key` and every stored block chained under it. Returns whether
    /// `key` itself was stored.
    fn remove_tree(&self, key: &[u8], kind: EventKind) -> bool {
        let Some((k, e, buried)) = self.shard(key).take(key) else {
            return false;
        };
        self.retain(buried);
        if kind == EventKind::Expired {
            self.expired.fetch_add(1, Relaxed);
        }
        self.remove_taken(k, e, kind);
        true
    }

    /// Finishes removing an entry already taken out of its shard, and every
    /// stored block chained under it.
    fn remove_taken(&self, k: Key, e: Entry, kind: EventKind) {
        let children = self.finish_removal(k, e, kind);
        self.index.take_descendants(children, |k, e, buried| {
            self.retain(buried);
            self.finish_removal(k, e, EventKind::Orphaned)
        });
    }

    /// Looks a key up for reading, expiring it lazily. Runs `f` under the shard
    /// lock with the shard and the key (whose entry is present).
    fn with_live<R>(
        &self,
        key: &[u8],
        touch: bool,
        f: impl FnOnce(&mut Shard, &[u8]) -> R,
    ) -> Option<R> {
        let mut shard = self.shard(key);
        let expired = match shard.map.get(key)?.expires_at {
            None => false,
            Some(t) => t <= self.now_ms(),
        };
        if expired {
            drop(shard);
            self.remove_tree(key, EventKind::Expired);
            return None;
        }
        if touch {
            let stamp = self.index.tick();
            shard.restamp(key, stamp);
        }
        Some(f(&mut shard, key))
    }

    /// Runs `f` on the live entry of `key` (see `with_live`).
    fn read_entry<R>(&self, key: &[u8], touch: bool, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        self.with_live(key, touch, |s, k| f(s.map.get(k).expect("present")))
    }

    /// Reads a block if that needs no device I/O: a block in memory is returned
    /// (recency refreshed, counted as `get` does), a missing one is a miss, and
    /// a block on a device is `Fetch::Device`, for the caller to `get` where
    /// blocking is allowed.
    pub fn fetch_memory(&self, key: &[u8]) -> Fetch {
        let found = self.with_live(key, false, |shard, k| {
            let e = shard.map.get_mut(k).expect("present");
            match &e.slot {
                Slot::Memory(b) => {
                    let found = (b.clone(), e.level);
                    // The access, under the same lock (see `Shard::restamp`).
                    e.stamp = self.index.tick();
                    Some(found)
                }
                Slot::Extent { .. } => None,
            }
        });
        match found {
            None => {
                self.host().counters.misses.fetch_add(1, Relaxed);
                Fetch::Missing
            }
            Some(None) => Fetch::Device,
            Some(Some((b, l))) => {
                self.stack.level(l).counters.hits.fetch_add(1, Relaxed);
                Fetch::Memory(b)
            }
        }
    }

    /// Reads a block, refreshing its recency. `None` is a miss.
    ///
    /// A block on a device is read from it (blocking: async callers MUST
    /// call this off their runtime's workers when the stack has a device
    /// level) and, by default, promoted to the level above.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        let found = self.read_entry(key, true, |e| (e.slot.clone(), e.level, e.written));
        let Some((slot, l, written)) = found else {
            self.host().counters.misses.fetch_add(1, Relaxed);
            return None;
        };
        let level = self.stack.level(l);
        // In memory: a block of a memory level, or one still on its way to
        // the device.
        let load = match &slot {
            Slot::Memory(b) => Load::Hit(b.clone()),
            Slot::Extent { .. } => level.tier.load(key, &slot),
        };
        match load {
            Load::Hit(b) => {
                level.counters.hits.fetch_add(1, Relaxed);
                let promote = self.stack.pipe(l).is_some_and(|p| p.settings.promote);
                if promote && matches!(slot, Slot::Extent { .. }) {
                    self.promote(key, &b, written, &slot);
                }
                Some(b)
            }
            Load::Miss | Load::Corrupt => {
                // Reclaimed or corrupt on the device: never served; forget it.
                level.counters.misses.fetch_add(1, Relaxed);
                let unchanged = self
                    .shard(key)
                    .map
                    .get(key)
                    .is_some_and(|e| e.written == written && e.slot == slot);
                if unchanged {
                    self.remove_tree(key, EventKind::Evicted);
                }
                None
            }
        }
    }

    /// Reads a block and removes it (with the blocks chained under it), as
    /// one step: the value returned is the one removed. A block replaced
    /// between the read and the removal is read again. Blocking for a block
    /// on a device, as [`Store::get`].
    pub fn get_del(&self, key: &[u8]) -> Option<Bytes> {
        loop {
            let (slot, l, written) =
                self.read_entry(key, false, |e| (e.slot.clone(), e.level, e.written))?;
            let value = match &slot {
                Slot::Memory(b) => Some(b.clone()),
                Slot::Extent { .. } => match self.stack.level(l).tier.load(key, &slot) {
                    Load::Hit(b) => Some(b),
                    Load::Miss | Load::Corrupt => None,
                },
            };
            let taken = {
                let mut shard = self.shard(key);
                match shard.map.get(key) {
                    Some(e) if e.written == written => shard.take(key),
                    Some(_) => continue, // replaced meanwhile: read the new one
                    None => return None,
                }
            };
            let (k, e, buried) = taken?;
            self.retain(buried);
            self.remove_taken(k, e, EventKind::Deleted);
            if value.is_some() {
                self.host().counters.hits.fetch_add(1, Relaxed);
            }
            return value;
        }
    }

    /// Reads a block and checks it against its checksum; a corrupt block is
    /// dropped (with the blocks chained under it). `None`: no such block.
    pub fn verify(&self, key: &[u8]) -> Option<Verified> {
        let (slot, l, sum) = self.read_entry(key, false, |e| {
            (e.slot.clone(), e.level, e.checked.then_some(e.checksum))
        })?;
        let ok = match (&slot, sum) {
            (Slot::Memory(_), None) => return Some(Verified::Unchecked),
            (Slot::Memory(b), Some(sum)) => checksum(b) == sum,
            // A device tier checks its own record checksums on every read.
            (Slot::Extent { .. }, _) => match self.stack.level(l).tier.load(key, &slot) {
                Load::Hit(_) => true,
                Load::Corrupt => false,
                Load::Miss => {
                    // Its space was reclaimed: evicted, as the store is
                    // about to learn. Not corrupt; no longer stored.
                    let unchanged = self.shard(key).map.get(key).is_some_and(|e| e.slot == slot);
                    if unchanged {
                        self.remove_tree(key, EventKind::Evicted);
                    }
                    return None;
                }
            },
        };
        if !ok {
            self.remove_tree(key, EventKind::Deleted);
        }
        Some(if ok {
            Verified::Intact
        } else {
            Verified::Corrupt
        })
    }

    /// The tier of a stored block, without touching its recency.
    pub fn tier_of(&self, key: &[u8]) -> Option<TierKind> {
        self.read_entry(key, false, |e| self.stack.kind(e.level))
    }

    /// What is known of a block, without touching its recency.
    pub fn meta(&self, key: &[u8]) -> Option<BlockMeta> {
        self.read_entry(key, false, |e| BlockMeta {
            len: e.len,
            charge: charge_of(key.len(), e.len as usize),
            tier: self.stack.kind(e.level),
            expires_at: e.expires_at,
            pinned: e.pinned,
            leases: e.leases,
            children: e.children.len(),
            parent: e.parent.clone(),
        })
    }

    /// Removes blocks (and what is chained under them). Returns how many of the
    /// named keys were stored.
    pub fn delete<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) -> usize {
        let now = self.now_ms();
        keys.into_iter()
            .filter(|k| {
                let live = self.shard(k).map.get(*k).is_some_and(|e| !e.expired(now));
                let kind = if live {
                    EventKind::Deleted
                } else {
                    EventKind::Expired
                };
                self.remove_tree(k, kind) && live
            })
            .count()
    }

    /// Pins or unpins blocks. Returns how many were stored.
    pub fn set_pinned<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>, pinned: bool) -> usize {
        let mut n = 0;
        for k in keys {
            let mut shard = self.shard(k);
            if let Some((key, e)) = shard.map.get_key_value(k) {
                let key = key.clone();
                let was = e.evictable();
                shard.map.get_mut(k).expect("present").pinned = pinned;
                shard.refile(&key, was);
                n += 1;
            }
        }
        if !pinned {
            self.make_room_everywhere();
        }
        n
    }

    /// Sets (`Some`) or clears (`None`) a block's absolute expiry. False when the
    /// key is not stored.
    pub fn set_expiry(&self, key: &[u8], expires_at: Option<u64>) -> bool {
        let now = self.now_ms();
        if let Some(t) = expires_at {
            if t <= now {
                return self.remove_tree(key, EventKind::Expired);
            }
        }
        let mut shard = self.shard(key);
        let Some((k, e)) = shard.map.get_key_value(key) else {
            return false;
        };
        if e.expired(now) {
            drop(shard);
            self.remove_tree(key, EventKind::Expired);
            return false;
        }
        let (k, old) = (k.clone(), e.expires_at);
        if let Some(t) = old {
            shard.ttl.remove(&(t, k.clone()));
        }
        if let Some(t) = expires_at {
            shard.ttl.insert((t, k.clone()));
        }
        shard.map.get_mut(key).expect("present").expires_at = expires_at;
        true
    }

    /// Removes expired blocks and leases. Call periodically.
    pub fn expire_due(&self) -> usize {
        let now = self.now_ms();
        let mut removed = 0;
        for i in 0..crate::index::SHARDS {
            let due: Vec<Key> = {
                let s = self.index.shard_at(i);
                s.ttl
                    .iter()
                    .take_while(|(t, _)| *t <= now)
                    .map(|(_, k)| k.clone())
                    .collect()
            };
            for k in due {
                if self.remove_tree(&k, EventKind::Expired) {
                    removed += 1;
                }
            }
        }
        for l in self.leases.take_due(now) {
            self.drop_lease(l);
        }
        removed
    }

    /// Number of blocks stored.
    pub fn len(&self) -> usize {
        self.stack
            .iter()
            .map(|(_, l)| l.counters.blocks.load(Relaxed) as usize)
            .sum()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes everything (leases included).
    pub fn flush(&self) {
        self.leases.clear();
        for (_, level) in self.stack.iter() {
            if let Some(p) = level.policy() {
                p.clear();
            }
        }
        for s in self.index.shards() {
            let taken: Vec<(Key, Entry)> = {
                let mut s = s.lock();
                s.lru.clear();
                s.ttl.clear();
                // The leases that held them are gone with the rest.
                for z in s.zombies.drain() {
                    self.unretain(z.1.charge);
                }
                s.map.drain().collect()
            };
            for (k, e) in taken {
                self.uncount(&k, &e);
                self.emit(EventKind::Deleted, &k, e.level, e.parent.as_ref());
                self.stack.level(e.level).tier.release(e.slot);
            }
        }
    }

    /// One step of a cursor scan: keys of shards from `cursor` on, until at least
    /// `count` keys passed `filter` or the shards ran out. Returns the next cursor
    /// (0 when done). Every key stored for the whole scan is returned once.
    pub fn scan(
        &self,
        cursor: u64,
        count: usize,
        filter: &dyn Fn(&[u8]) -> bool,
    ) -> (u64, Vec<Bytes>) {
        self.index.scan(cursor, count, self.now_ms(), filter)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StoreStats {
        let (tiers, log) = self.stack.stats();
        StoreStats {
            tiers,
            ssd: log,
            matches: self.matches.load(Relaxed),
            keys_queried: self.keys_queried.load(Relaxed),
            keys_matched: self.keys_matched.load(Relaxed),
            leases: self.leases.counted(),
            expired: self.expired.load(Relaxed),
            with_ttl: self.index.with_ttl(),
        }
    }

    /// Zeroes the host level's hit, miss, eviction and movement counters and
    /// the match counters (CONFIG RESETSTAT).
    pub fn reset_stats(&self) {
        let c = &self.host().counters;
        for c in [
            &c.hits,
            &c.misses,
            &c.evictions,
            &c.demotions,
            &c.promotions,
            &self.matches,
            &self.expired,
            &self.keys_queried,
            &self.keys_matched,
        ] {
            c.store(0, Relaxed);
        }
    }

    /// Checks the internal invariants (for tests): accounting matches contents,
    /// every parent of a stored block is stored and lists it, eviction orders
    /// hold exactly the evictable entries.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let filed = self.leases.counted();
        if filed != self.live_leases() {
            return Err(format!(
                "{filed} leases filed, {} counted",
                self.live_leases()
            ));
        }
        let sums = self.index.check()?;
        if sums.retained != self.retained() {
            return Err(format!(
                "retained {} but held values sum to {}",
                self.retained(),
                sums.retained
            ));
        }
        let mut main_allowed = false;
        for (l, level) in self.stack.iter() {
            let i = l as usize;
            let kind = level.kind.as_str();
            let retained = if l == self.stack.host() {
                sums.retained
            } else {
                0
            };
            if sums.used[i] + retained != level.used() {
                return Err(format!(
                    "{kind}: accounted {} but entries sum to {} and retained values to {retained}",
                    level.used(),
                    sums.used[i]
                ));
            }
            if sums.blocks[i] != level.counters.blocks.load(Relaxed) {
                return Err(format!(
                    "{kind}: block counter {} but {} entries",
                    level.counters.blocks.load(Relaxed),
                    sums.blocks[i]
                ));
            }
            let probation = level.probation.load(Relaxed);
            if level.policy.is_some() && sums.probation[i] != probation {
                return Err(format!(
                    "{kind}: probation accounted {probation} but entries sum to {}",
                    sums.probation[i]
                ));
            }
            main_allowed |= level.policy().is_some_and(|p| p.kind() != Eviction::Lru);
        }
        if !main_allowed && sums.main > 0 {
            return Err("a block in main under lru".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod suite;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ssd;
