//! How blocks move between the levels of the stack: eviction from a memory
//! level (demoted to the level below, dropped from the last), the device
//! level's worker (demotions written, matched blocks staged back),
//! promotion of blocks read from the device, the space the device reclaims
//! on its own, and what it recovered at start.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use tidepool_checksum::checksum;

use super::Store;
use crate::error::StoreError;
use crate::event::EventKind;
use crate::eviction::{Candidate, Heads};
use crate::index::{charge_of, Entry, Key, MAX_LEVELS};
use crate::stack::{Pipe, PipeSettings};
use crate::tier::{Load, Recovered, Slot};

/// A block on its way from a memory level to the device level.
pub(crate) struct Demotion {
    key: Key,
    parent: Option<Key>,
    value: Bytes,
    written: u64,
    /// The level it left.
    from: u8,
    /// The device level.
    to: u8,
}

/// Work for the device level's worker.
pub(crate) enum Job {
    /// Write a victim to the device.
    Demote(Demotion),
    /// Read one match's blocks on the device back into the level above, in
    /// chain order, each if it is still that record. One job, so that no
    /// demotion the first staging causes is written (and no space reclaimed
    /// for it) before the rest are read: the order does not depend on how
    /// soon the worker wakes up.
    Stage(Vec<(Key, Slot, u64)>),
}

thread_local! {
    /// Demotions held back until the batch this thread runs ends (see
    /// [`Store::batch`]): the store's address and the demotions.
    static HELD_DEMOTIONS: std::cell::RefCell<Option<(usize, Vec<Demotion>)>> =
        const { std::cell::RefCell::new(None) };
}

impl Store {
    /// Starts the worker of device level `d`.
    pub(super) fn start_pipe(
        self: &Arc<Self>,
        d: u8,
        settings: PipeSettings,
    ) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(settings.queue);
        let pipe = Pipe {
            queue: tx,
            settings,
            dropped: AtomicU64::new(0),
            staged: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        };
        if self.stack.level(d).pipe.set(pipe).is_err() {
            return Err("the device level's worker already runs".into());
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("tidepool-demote".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let Some(store) = weak.upgrade() else { return };
                    let done = match job {
                        Job::Demote(d) => {
                            store.finish_demotion(d);
                            1
                        }
                        Job::Stage(blocks) => {
                            for (key, slot, written) in &blocks {
                                store.stage(key, slot, *written);
                            }
                            blocks.len() as u64
                        }
                    };
                    if let Some(p) = store.stack.pipe(store.stack.len() - 1) {
                        p.pending.fetch_sub(done, Relaxed);
                    }
                }
            })
            .map_err(|e| format!("starting the demotion thread: {e}"))?;
        Ok(())
    }

    /// Indexes the blocks device level `d` recovered: records whose parent
    /// was not recovered are dropped, and so are cycles.
    pub(super) fn index_recovered(&self, d: u8, recovered: Vec<Recovered>) {
        let level = self.stack.level(d);
        let mut with_parent = Vec::new();
        for r in recovered {
            let charge = charge_of(r.key.len(), r.len as usize);
            let stamp = self.index.tick();
            let entry = Entry {
                record: Some(r.slot.clone()),
                slot: r.slot,
                len: r.len,
                checksum: 0,
                checked: false,
                parent: r.parent.clone(),
                children: Vec::new(),
                stamp,
                filed: stamp,
                expires_at: None,
                pinned: false,
                leases: 0,
                holds: 0,
                level: d,
                evicts: level.policy.is_some(),
                children_in: [0; MAX_LEVELS],
                written: stamp,
                held: 0,
                main: false,
            };
            if let Some(p) = &r.parent {
                with_parent.push((r.key.clone(), p.clone()));
            }
            self.shard(&r.key).map.insert(r.key, entry);
            level.add(charge, true);
        }
        let now = self.now_ms();
        let mut orphans = Vec::new();
        let mut linked = Vec::with_capacity(with_parent.len());
        for (key, parent) in with_parent {
            if self.index.link_child(&parent, &key, d, now).is_err() {
                orphans.push(key);
            } else {
                linked.push(key);
            }
        }
        // Records of different times may name each other as parents (the
        // newest record of each key is recovered, written under parents
        // that changed since): a cycle would never leave the tier, so its
        // blocks go, with what hangs under them.
        orphans.extend(self.index.cycles_among(&linked));
        for key in orphans {
            self.remove_tree(&key, EventKind::Orphaned);
        }
    }

    /// Whether adding `extra` bytes would take level `l` past its high
    /// watermark.
    pub(super) fn over_high_with(&self, l: u8, extra: u64) -> bool {
        let level = self.stack.level(l);
        let high = f64::from_bits(self.watermarks[0].load(Relaxed));
        level.used() + extra > (level.capacity() as f64 * high) as u64
    }

    /// Evicts from every memory level that is over its high watermark.
    pub(super) fn make_room_everywhere(&self) {
        for l in 0..self.stack.len() {
            let _ = self.make_room(l, 0);
        }
    }

    /// Evicts from level `l` until its usage is under the low watermark if
    /// it is over the high one, `incoming` bytes of a write joining
    /// probation counted (they count there when the segment to evict from is
    /// chosen). Fails when usage still exceeds capacity and nothing more can
    /// go. A device level reclaims its own space: nothing to do.
    pub(super) fn make_room(&self, l: u8, incoming: u64) -> Result<(), StoreError> {
        let level = self.stack.level(l);
        let Some(policy) = level.policy() else {
            return Ok(());
        };
        let cap = level.capacity();
        let (high, low) = self.watermarks();
        if level.used() <= (cap as f64 * high) as u64 {
            return Ok(());
        }
        let low_b = (cap as f64 * low) as u64;
        let _guard = level.evict_lock.lock();
        let mut heads = Heads::new(&self.index, l, policy);
        while level.used() > low_b {
            if !self.evict_one(l, incoming, &mut heads) {
                if !self.demote_any(l) {
                    break;
                }
                // It may have left a parent evictable in any shard.
                heads.reset();
            }
        }
        if level.used() > cap {
            return Err(StoreError::OutOfMemory {
                tier: level.kind.as_str(),
            });
        }
        Ok(())
    }

    /// Evicts least recently used blocks of the host level until at least
    /// `bytes` were freed (or nothing more can go), for memory the store
    /// does not account itself (room in the shared arena for a
    /// reservation). Returns the bytes freed.
    pub fn shed(&self, bytes: u64) -> u64 {
        let l = self.stack.host();
        let level = self.stack.level(l);
        let Some(policy) = level.policy() else {
            return 0;
        };
        let before = level.used();
        let target = before.saturating_sub(bytes);
        let _guard = level.evict_lock.lock();
        let mut heads = Heads::new(&self.index, l, policy);
        while level.used() > target {
            if !self.evict_one(l, 0, &mut heads) {
                if !self.demote_any(l) {
                    break;
                }
                // It may have left a parent evictable in any shard.
                heads.reset();
            }
        }
        before.saturating_sub(level.used())
    }

    /// Moves the policy's next victim out of level `l`: down to the next
    /// level, or out of the store from the last. False when there is none.
    fn evict_one(&self, l: u8, incoming: u64, heads: &mut Heads) -> bool {
        let level = self.stack.level(l);
        let policy = level.policy().expect("evicting from a memory level");
        loop {
            let usage = level.usage(incoming);
            let Some(Candidate { stamp, key }) = policy.victim(heads, &usage) else {
                return false;
            };
            // Whatever happens next, the victim's shard has a new head.
            heads.changed(&key);
            // Every victim goes down when there is a level below. (Admitting
            // to SSD only blocks in main was tried: on Mooncake's trace with
            // 5,000 DRAM and 20,000 SSD blocks it fell from 0.28 to 0.21.)
            if let Some(to) = self.stack.below(l) {
                if let Some(parent) = self.demote(l, to, &key, stamp, true) {
                    // A parent with no child left in the level is filed now.
                    if let Some(p) = parent {
                        heads.changed(&p);
                    }
                    return true;
                }
                continue;
            }
            let taken = {
                let mut shard = self.shard(&key);
                match shard.map.get(&key) {
                    Some(e) if e.level == l && e.stamp == stamp && e.evictable() => {
                        shard.take(&key)
                    }
                    _ => None, // touched or changed since we looked: pick again
                }
            };
            if let Some((k, e, buried)) = taken {
                self.retain(buried);
                level.counters.evictions.fetch_add(1, Relaxed);
                let charge = charge_of(k.len(), e.len as usize);
                policy.on_evict(&k, charge, e.main, &level.usage(0));
                if let Some(p) = &e.parent {
                    heads.changed(p);
                }
                self.remove_taken(k, e, EventKind::Evicted);
                return true;
            }
        }
    }

    /// Moves block `key` (if it is still the victim with `stamp`) from
    /// level `from` to level `to`. Into a memory level it moves now; into
    /// the device level its bytes are accounted there at once and queued
    /// for the worker (when the queue is full the block is dropped instead,
    /// and counted). Returns the block's parent (`Some(None)` for a root),
    /// or `None` when the victim changed meanwhile.
    ///
    /// With `leaf_only` false the block may still have children in its
    /// level (see `demote_any`).
    fn demote(
        &self,
        from: u8,
        to: u8,
        key: &Key,
        stamp: u64,
        leaf_only: bool,
    ) -> Option<Option<Key>> {
        let target = self.stack.level(to);
        let (demotion, charge, main, parent) = {
            let mut guard = self.shard(key);
            let shard = &mut *guard;
            let e = shard.map.get_mut(&key[..])?;
            if e.level != from || e.stamp != stamp || !e.movable() || (leaf_only && !e.evictable())
            {
                return None;
            }
            let value = match &e.slot {
                Slot::Memory(b) => b.clone(),
                Slot::Extent { .. } => return None,
            };
            let demotion = if target.is_device() {
                Some(Demotion {
                    key: key.clone(),
                    parent: e.parent.clone(),
                    value,
                    written: e.written,
                    from,
                    to,
                })
            } else {
                // A memory tier's `store` does not block: inline.
                let slot = target.tier.store(key, e.parent.as_deref(), value).ok()?;
                let old = std::mem::replace(&mut e.slot, slot);
                self.stack.level(from).tier.release(old);
                None
            };
            if e.evictable() {
                shard.lru.remove(&e.filed);
            }
            e.level = to;
            e.evicts = target.policy.is_some();
            if e.evictable() {
                e.filed = e.file_key();
                shard.lru.insert(e.filed, key.clone());
            }
            let charge = charge_of(key.len(), e.len as usize);
            (demotion, charge, e.main, e.parent.clone())
        };
        let source = self.stack.level(from);
        source.sub(charge, main);
        source.counters.evictions.fetch_add(1, Relaxed);
        target.add(charge, main);
        if let Some(p) = &parent {
            self.index.child_moved(p, key, from, to);
        }
        match demotion {
            Some(d) => self.queue_demotion(d),
            None => {
                source.counters.demotions.fetch_add(1, Relaxed);
                let _ = self.make_room(to, 0);
            }
        }
        Some(parent)
    }

    /// When every block of level `l` has a child in the level (one chain
    /// longer than the level), no leaf can go: with a level below, the
    /// least recently used unpinned block is demoted anyway (it stays
    /// stored, so chains stay whole). A scan of every shard, but only in
    /// that corner. False without a level below or a candidate.
    fn demote_any(&self, l: u8) -> bool {
        let Some(to) = self.stack.below(l) else {
            return false;
        };
        loop {
            let mut best: Option<(u64, Key)> = None;
            for s in self.index.shards() {
                let s = s.lock();
                for (k, e) in s.map.iter() {
                    let movable = e.level == l && e.movable();
                    if movable && best.as_ref().is_none_or(|(b, _)| e.stamp < *b) {
                        best = Some((e.stamp, k.clone()));
                    }
                }
            }
            let Some((stamp, key)) = best else {
                return false;
            };
            if self.demote(l, to, &key, stamp, false).is_some() {
                return true;
            }
        }
    }

    /// Hands a demotion to the worker, or holds it until the end of the
    /// batch this thread is in (see [`Store::batch`]). A batch holds at most a
    /// queue's worth: beyond that, what it holds goes now.
    fn queue_demotion(&self, demotion: Demotion) {
        let me = self as *const Store as usize;
        let held = HELD_DEMOTIONS.with(|h| matches!(&*h.borrow(), Some((s, _)) if *s == me));
        if !held {
            self.send_demotion(demotion);
            return;
        }
        let queue = self.stack.pipe(demotion.to).map_or(0, |p| p.settings.queue);
        let full = HELD_DEMOTIONS.with(|h| {
            let mut h = h.borrow_mut();
            let (_, jobs) = h.as_mut().expect("checked above");
            jobs.push(demotion);
            (jobs.len() > queue).then(|| std::mem::take(jobs))
        });
        for d in full.into_iter().flatten() {
            self.send_demotion(d);
        }
    }

    fn send_demotion(&self, demotion: Demotion) {
        let key = demotion.key.clone();
        let demotion_from = demotion.from;
        let Some(pipe) = self.stack.pipe(demotion.to) else {
            return;
        };
        pipe.pending.fetch_add(1, Relaxed);
        match pipe.queue.try_send(Job::Demote(demotion)) {
            Ok(()) => {
                let from = self.stack.level(demotion_from);
                from.counters.demotions.fetch_add(1, Relaxed);
            }
            Err(_) => {
                // The device is behind: drop rather than stall the writer.
                pipe.pending.fetch_sub(1, Relaxed);
                pipe.dropped.fetch_add(1, Relaxed);
                self.remove_tree(&key, EventKind::Evicted);
            }
        }
    }

    /// Runs `f` (several puts: one command's) with the worker's part held
    /// back until it ends: the demotions `f` causes are queued together, in
    /// the order they happened, when `f` returns. So the reclaims those
    /// writes cause land after the batch, not at some point inside it that
    /// depends on how fast the worker is (a `KV.MPUT` behaves the same from
    /// run to run). Blocks held back are readable from memory meanwhile, as
    /// queued ones are. Nested batches join the outer one.
    pub fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Release<'a>(&'a Store);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let held = HELD_DEMOTIONS.with(|h| h.borrow_mut().take());
                for d in held.into_iter().flat_map(|(_, jobs)| jobs) {
                    self.0.send_demotion(d);
                }
            }
        }
        let me = self as *const Store as usize;
        let outer = HELD_DEMOTIONS.with(|h| {
            let mut h = h.borrow_mut();
            if h.is_some() {
                return false;
            }
            *h = Some((me, Vec::new()));
            true
        });
        // Built only for the outer batch: dropping one flushes.
        let _release = outer.then(|| Release(self));
        f()
    }

    /// Writes a demoted block to the device (on the worker) and points its
    /// entry at the record, unless the block changed meanwhile.
    fn finish_demotion(&self, d: Demotion) {
        let level = self.stack.level(d.to);
        let current = |e: &Entry| {
            e.written == d.written && e.level == d.to && matches!(e.slot, Slot::Memory(_))
        };
        // Dropped (its parent's record reclaimed, say), deleted or rewritten
        // since it was queued: nothing to write.
        if !self.shard(&d.key).map.get(&d.key[..]).is_some_and(current) {
            return;
        }
        let stored = level.tier.store(&d.key, d.parent.as_deref(), d.value);
        self.drain_reclaimed();
        let slot = match stored {
            Ok(slot) => slot,
            Err(_) => {
                // The device failed: the block is lost, which is a miss later.
                let still = self
                    .shard(&d.key)
                    .map
                    .get(&d.key[..])
                    .is_some_and(|e| e.written == d.written && e.level == d.to);
                if still {
                    if let Some(p) = level.pipe.get() {
                        p.dropped.fetch_add(1, Relaxed);
                    }
                    self.remove_tree(&d.key, EventKind::Evicted);
                }
                return;
            }
        };
        let applied = {
            let mut shard = self.shard(&d.key);
            match shard.map.get_mut(&d.key[..]) {
                Some(e) if current(e) => {
                    e.record = Some(slot.clone());
                    e.slot = slot.clone();
                    true
                }
                _ => false,
            }
        };
        if !applied {
            // Deleted or rewritten while it was being written: the record must
            // not come back after a restart.
            self.forget_record(&d.key, Some(&slot));
        }
    }

    /// Writes a tombstone for a block's record on the device, if it has one.
    pub(super) fn forget_record(&self, key: &[u8], record: Option<&Slot>) {
        if let (Some(slot), Some(d)) = (record, self.stack.device()) {
            // A failed tombstone only risks bringing a deleted block back after
            // a restart; the device error shows up on the next write.
            let _ = self.stack.level(d).tier.forget(key, slot);
        }
    }

    /// Demotions and stagings queued and not yet done (0 without a device
    /// level).
    pub fn pending_demotions(&self) -> u64 {
        self.stack
            .device()
            .and_then(|d| self.stack.pipe(d))
            .map_or(0, |p| p.pending.load(Relaxed))
    }

    /// Whether a matched block is on the device near its reclaim end, to be
    /// staged back to memory.
    pub(super) fn near_reclaim(&self, l: u8, slot: &Slot) -> bool {
        let Some(pipe) = self.stack.pipe(l) else {
            return false;
        };
        pipe.settings.stage_on_match
            && matches!(slot, Slot::Extent { .. })
            && self
                .stack
                .level(l)
                .tier
                .reclaim_horizon(slot)
                .is_some_and(|h| h < pipe.settings.stage_window)
    }

    /// Reads a matched block from the device into the level above (on the
    /// worker), unless it changed meanwhile.
    fn stage(&self, key: &[u8], slot: &Slot, written: u64) {
        let Some(d) = self.stack.device() else { return };
        let level = self.stack.level(d);
        let current = self
            .shard(key)
            .map
            .get(key)
            .is_some_and(|e| e.written == written && e.level == d && e.slot == *slot);
        if !current {
            return;
        }
        if let Load::Hit(b) = level.tier.load(key, slot) {
            level.counters.hits.fetch_add(1, Relaxed);
            if self.promote(key, &b, written, slot) {
                if let Some(p) = level.pipe.get() {
                    p.staged.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Queues matched blocks found on the device to be read back into
    /// memory (one job); when the queue is full they stay where they are.
    pub(super) fn queue_stagings(&self, stage: Vec<(Key, Slot, u64)>) {
        let Some(pipe) = self.stack.device().and_then(|d| self.stack.pipe(d)) else {
            return;
        };
        let n = stage.len() as u64;
        pipe.pending.fetch_add(n, Relaxed);
        if pipe.queue.try_send(Job::Stage(stage)).is_err() {
            pipe.pending.fetch_sub(n, Relaxed);
        }
    }

    /// Drops the blocks whose device space was reclaimed (and what hangs
    /// under them).
    pub(super) fn drain_reclaimed(&self) {
        let Some(d) = self.stack.device() else { return };
        let level = self.stack.level(d);
        for r in level.tier.take_reclaimed() {
            let gone = {
                let mut shard = self.shard(&r.key);
                match shard.map.get_mut(&r.key[..]) {
                    Some(e) if e.level == d && e.slot == r.slot => {
                        e.record = None; // the record itself is gone: no tombstone
                        true
                    }
                    Some(e) if e.record.as_ref() == Some(&r.slot) => {
                        // Back in memory, and its old record is gone: nothing
                        // for a tombstone to cancel any more.
                        e.record = None;
                        false
                    }
                    _ => false,
                }
            };
            if gone {
                level.counters.evictions.fetch_add(1, Relaxed);
                self.remove_tree(&r.key, EventKind::Evicted);
            }
        }
    }

    /// Moves a block just read from the device back into the level above,
    /// unless that level has no room or the block changed meanwhile.
    /// Whether it moved.
    pub(super) fn promote(&self, key: &[u8], value: &Bytes, written: u64, slot: &Slot) -> bool {
        let Some(d) = self.stack.device().filter(|d| *d > 0) else {
            return false;
        };
        let up = d - 1;
        let target = self.stack.level(up);
        let charge = charge_of(key.len(), value.len());
        if charge > target.capacity() {
            return false;
        }
        target.reserve(charge);
        if self.make_room(up, 0).is_err() {
            target.unreserve(charge);
            return false;
        }
        let checksum = self.checksums.then(|| checksum(value));
        let promoted = {
            let mut shard = self.shard(key);
            let stamp = self.index.tick();
            let crate::index::Shard { map, lru, .. } = &mut *shard;
            match map.get_key_value_mut(key) {
                Some((k, e)) if e.written == written && e.level == d && e.slot == *slot => {
                    e.slot = Slot::Memory(value.clone());
                    e.level = up;
                    e.evicts = target.policy.is_some();
                    e.checksum = checksum.unwrap_or(0);
                    e.checked = checksum.is_some();
                    e.stamp = stamp;
                    if e.evictable() {
                        e.filed = e.file_key();
                        lru.insert(e.filed, k.clone());
                    }
                    Some((e.parent.clone(), e.main))
                }
                _ => None,
            }
        };
        match promoted {
            Some((parent, main)) => {
                self.stack.level(d).sub(charge, main);
                target.admit(charge, main);
                target.counters.promotions.fetch_add(1, Relaxed);
                if let Some(p) = parent {
                    self.index.child_moved(&p, key, d, up);
                }
                true
            }
            None => {
                target.unreserve(charge);
                false
            }
        }
    }
}
