//! Writes: a block placed in its level, indexed under its key and chain,
//! with everything undone in one place when the write goes no further.

use bytes::Bytes;
use tidepool_checksum::checksum;

use super::{PutOptions, Store};
use crate::error::StoreError;
use crate::event::EventKind;
use crate::eviction::Admit;
use crate::index::{bury, charge_of, Entry, Key, Shard, MAX_LEVELS};
use crate::tier::Slot;

/// What a put has done that it must undo if it goes no further: its room,
/// the bytes it placed, the hold on the version it replaces, its link
/// under its parent.
struct Undo<'a> {
    store: &'a Store,
    key: &'a Key,
    level: u8,
    parent: Option<&'a Key>,
    reserved: u64,
    slot: Option<Slot>,
    held_old: bool,
}

impl Undo<'_> {
    /// The put went through: nothing to undo.
    fn commit(mut self) {
        self.parent = None;
        self.reserved = 0;
        self.slot = None;
        self.held_old = false;
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        let level = self.store.stack.level(self.level);
        level.unreserve(self.reserved);
        if let Some(slot) = self.slot.take() {
            // A record must not come back after a restart as the newest
            // version (or as a cycle).
            if level.is_device() {
                self.store.forget_record(self.key, Some(&slot));
            }
            level.tier.release(slot);
        }
        if self.held_old {
            self.store.unhold(self.key);
        }
        if let Some(p) = self.parent {
            self.store.index.unlink_child(p, self.key, self.level);
        }
    }
}

/// The version a put replaced.
struct Replaced {
    len: u64,
    slot: Slot,
    parent: Option<Key>,
    level: u8,
    record: Option<Slot>,
    main: bool,
}

impl Store {
    /// Stores a block. Readers see all of it or none of it. Returns false when
    /// `only_if_exists` did not hold (nothing changed).
    ///
    /// A write to a device level (`TIER ssd`) returns once the block is
    /// durable; this blocks on the device, so async callers MUST call it off
    /// their runtime's worker threads.
    pub fn put(&self, key: Bytes, value: Bytes, opts: PutOptions) -> Result<bool, StoreError> {
        let l = match opts.tier {
            None => 0,
            Some(kind) => self
                .stack
                .find(kind)
                .ok_or(StoreError::NoTier(kind.as_str()))?,
        };
        let level = self.stack.level(l);
        let device = level.is_device();
        let charge = charge_of(key.len(), value.len());
        if charge > level.capacity() {
            return Err(StoreError::TooBig {
                len: charge,
                tier: level.kind.as_str(),
                capacity: level.capacity(),
            });
        }
        // The key and the parent's name usually are views into a
        // connection's read buffer: kept in the index (the entry, its
        // parent's list of children) they would keep that whole buffer, the
        // values of every block of a KV.MPUT included, for as long as the
        // block lives (a 256 MiB node fed 16-block chained KV.MPUTs of 1 MiB
        // blocks held over 500 MiB of request buffers that way).
        // (A new entry's key is copied where it is inserted; an overwrite
        // without a parent keeps nothing of the request, and copies nothing.)
        let key = match &opts.parent {
            Some(_) => Bytes::copy_from_slice(&key),
            None => key,
        };
        let parent = opts.parent.as_ref().map(|p| Bytes::copy_from_slice(p));
        if let Some(p) = &parent {
            if *p == key {
                return Err(StoreError::SelfParent);
            }
            // A durable write is checked before it is made (the check under
            // the shard lock below still decides, for a race meanwhile).
            if device && self.would_reparent(&key, p) {
                return Err(StoreError::Reparent);
            }
            self.index.link_child(p, &key, l, self.now_ms())?;
        }
        let mut undo = Undo {
            store: self,
            key: &key,
            level: l,
            parent: parent.as_ref(),
            reserved: 0,
            slot: None,
            held_old: false,
        };
        // Where the level's policy puts the block.
        let admit = match level.policy() {
            Some(policy) => policy.on_insert(&key, &|| self.shard(&key).map.contains_key(&key[..])),
            None => Admit::Rewrite,
        };
        let checksum = match opts.checksum {
            Some(sum) => Some(sum),
            None if device || self.checksums => Some(checksum(&value)),
            None => None,
        };
        let len = value.len() as u64;
        if device {
            let stored = level
                .tier
                .store(&key, parent.as_deref(), value)
                .and_then(|slot| level.tier.sync().map(|_| slot));
            self.drain_reclaimed();
            undo.slot = Some(stored.map_err(|e| StoreError::Io(e.to_string()))?);
            undo.reserved = charge;
            level.reserve(charge);
        } else {
            // When room must be made, the version being replaced stays put (it is
            // replaced, not evicted) and only the growth needs room. Below the
            // high watermark nothing is evicted, so the hold is skipped.
            undo.reserved = charge;
            if self.over_high_with(l, charge) {
                let held = self.hold_in(&key, l);
                undo.reserved = charge.saturating_sub(held.unwrap_or(0));
                undo.held_old = held.is_some();
            }
            level.reserve(undo.reserved);
            let incoming = if admit == Admit::Probation { charge } else { 0 };
            self.make_room(l, incoming)?;
            let value = if opts.value_exclusive {
                value
            } else {
                self.copy_value(&value)
            };
            let stored = level.tier.store(&key, parent.as_deref(), value);
            undo.slot = Some(stored.map_err(|e| StoreError::Io(e.to_string()))?);
        }
        let now = if opts.ttl_ms.is_some() || opts.only_if_exists.is_some() {
            self.now_ms()
        } else {
            0 // unused: no TTL to compute and no existence to check
        };
        let main;
        let old = {
            let mut shard = self.shard(&key);
            if let Some(want) = opts.only_if_exists {
                let exists = shard.map.get(&key).is_some_and(|e| !e.expired(now));
                if exists != want {
                    drop(shard);
                    return Ok(false);
                }
            }
            // Under the same lock as the write: a block with no child now
            // has no descendant, so it cannot become its own ancestor.
            let reparent = parent.as_ref().is_some_and(|p| {
                shard
                    .map
                    .get(&key[..])
                    .is_some_and(|e| e.parent.as_ref() != Some(p) && !e.children.is_empty())
            });
            if reparent {
                drop(shard);
                return Err(StoreError::Reparent);
            }
            let stamp = self.index.tick();
            let slot = undo.slot.take().expect("placed above");
            let Shard {
                map,
                lru,
                ttl,
                zombies,
            } = &mut *shard;
            match map.get_key_value_mut(&key[..]) {
                Some((k, e)) => {
                    // Overwrite in place: one hash lookup, the stored key kept.
                    let k = k.clone();
                    let was_evictable = e.evictable();
                    let old_main = e.main;
                    if let Some(policy) = level.policy() {
                        e.main = policy.on_access(e.main);
                    }
                    main = e.main;
                    if let Some(t) = e.expires_at {
                        ttl.remove(&(t, k.clone()));
                    }
                    let expires_at = match opts.ttl_ms {
                        Some(ms) => Some(now.saturating_add(ms)),
                        None if opts.keep_ttl => e.expires_at,
                        None => None,
                    };
                    // A held old version lives on: counted until its holds end.
                    self.retain(bury(zombies, k.len(), e));
                    let old = Replaced {
                        len: std::mem::replace(&mut e.len, len),
                        record: std::mem::replace(&mut e.record, device.then(|| slot.clone())),
                        slot: std::mem::replace(&mut e.slot, slot),
                        parent: std::mem::replace(&mut e.parent, parent.clone()),
                        level: std::mem::replace(&mut e.level, l),
                        main: old_main,
                    };
                    e.evicts = level.policy.is_some();
                    e.checksum = checksum.unwrap_or(0);
                    e.checked = checksum.is_some();
                    e.stamp = stamp;
                    e.written = stamp;
                    // Our hold is over (the entry may be another version by
                    // now, whose holds saturate at zero).
                    if undo.held_old {
                        e.held = e.held.saturating_sub(1);
                        undo.held_old = false;
                    }
                    e.expires_at = expires_at;
                    e.pinned |= opts.pin;
                    // Still filed (lazily) if it stays evictable in its place.
                    match (was_evictable, e.evictable()) {
                        (true, false) => {
                            lru.remove(&e.filed);
                        }
                        (false, true) => {
                            e.filed = e.file_key();
                            lru.insert(e.filed, k.clone());
                        }
                        (true, true) if !e.filed_in_place() => {
                            // Moved level or segment: filed eagerly in the new one.
                            lru.remove(&e.filed);
                            e.filed = e.file_key();
                            lru.insert(e.filed, k.clone());
                        }
                        _ => {}
                    }
                    if let Some(t) = expires_at {
                        ttl.insert((t, k));
                    }
                    Some(old)
                }
                None => {
                    let key = Bytes::copy_from_slice(&key);
                    let expires_at = opts.ttl_ms.map(|ms| now.saturating_add(ms));
                    main = admit == Admit::Main;
                    let mut entry = Entry {
                        len,
                        checksum: checksum.unwrap_or(0),
                        checked: checksum.is_some(),
                        parent: parent.clone(),
                        children: Vec::new(),
                        stamp,
                        filed: 0,
                        expires_at,
                        pinned: opts.pin,
                        leases: 0,
                        holds: 0,
                        level: l,
                        evicts: level.policy.is_some(),
                        children_in: [0; MAX_LEVELS],
                        written: stamp,
                        held: 0,
                        record: device.then(|| slot.clone()),
                        slot,
                        main,
                    };
                    entry.filed = entry.file_key();
                    if entry.evictable() {
                        lru.insert(entry.filed, key.clone());
                    }
                    if let Some(t) = expires_at {
                        ttl.insert((t, key.clone()));
                    }
                    map.insert(key, entry);
                    None
                }
            }
        };
        // Settle the reservation: the new version counts in full.
        level.reserve(charge - undo.reserved);
        level.admit(charge, main);
        undo.commit();
        if let Some(old) = old {
            // A new record supersedes the old one on recovery by itself.
            if !device {
                self.forget_record(&key, old.record.as_ref());
            }
            let from = self.stack.level(old.level);
            from.sub(charge_of(key.len(), old.len as usize), old.main);
            from.tier.release(old.slot);
            if let Some(op) = &old.parent {
                // The old version's link (the new one holds its own).
                self.index.unlink_child(op, &key, old.level);
            }
        }
        if let Some(p) = &parent {
            // A concurrent removal of the parent may have run between linking and
            // inserting: if the parent no longer lists us, we are an orphan.
            if !self.index.is_linked(p, &key) {
                self.remove_tree(&key, EventKind::Orphaned);
                return Err(StoreError::NoParent);
            }
        }
        self.emit(EventKind::Stored, &key, l, parent.as_ref());
        Ok(true)
    }

    /// Whether storing `key` under `parent` would move a block that has
    /// stored children to another parent (refused: see
    /// [`StoreError::Reparent`]).
    fn would_reparent(&self, key: &[u8], parent: &Bytes) -> bool {
        self.shard(key)
            .map
            .get(key)
            .is_some_and(|e| e.parent.as_ref() != Some(parent) && !e.children.is_empty())
    }

    /// Holds `key`'s version in level `l` against eviction (as a lease
    /// does) while it is being replaced; returns its charge, or `None` when
    /// there is no version in that level to hold.
    fn hold_in(&self, key: &[u8], l: u8) -> Option<u64> {
        let mut shard = self.shard(key);
        let e = shard.map.get_mut(key).filter(|e| e.level == l)?;
        let was = e.evictable();
        e.held += 1;
        let charge = charge_of(key.len(), e.len as usize);
        shard.refile(key, was);
        Some(charge)
    }

    /// Undoes `hold_in` when the replacement did not happen.
    fn unhold(&self, key: &[u8]) {
        let mut shard = self.shard(key);
        if let Some(e) = shard.map.get_mut(key) {
            let was = e.evictable();
            e.held = e.held.saturating_sub(1);
            shard.refile(key, was);
        }
    }
}
