//! Leases: blocks held against eviction until a deadline.
//!
//! A lease names the keys whose lease count it raised (a match's prefix, a
//! `KV.LEASE`), and the values it keeps alive past their removal (what
//! `KV.LOCATE` handed a reader). Leases are filed by id in [`SHARDS`]
//! shards, so that leasing matches do not meet on one lock; the ids are
//! unguessable (see [`crate::ids`]). The store gives a lease's blocks back
//! when it ends: this module only files them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};

use crate::ids::Ids;
use crate::index::{Key, SHARDS};

/// A lease: blocks held against eviction until a deadline.
#[derive(Debug)]
pub(crate) struct Lease {
    /// Unix milliseconds at which it ends.
    pub(crate) deadline: u64,
    /// The keys whose lease count it raised.
    pub(crate) keys: Vec<Key>,
    /// Values whose bytes it keeps (`Store::hold`).
    pub(crate) held: Vec<(Key, Bytes)>,
}

impl Lease {
    /// A lease of `keys` until `deadline`, keeping no values.
    pub(crate) fn new(deadline: u64, keys: Vec<Key>) -> Lease {
        Lease {
            deadline,
            keys,
            held: Vec::new(),
        }
    }
}

/// The leases in force, by id.
pub(crate) struct Leases {
    shards: Box<[Mutex<HashMap<u64, Lease>>]>,
    /// How many leases the shards hold (kept beside them: counting the
    /// shards takes every shard's lock).
    live: AtomicU64,
    ids: Ids,
}

impl Leases {
    pub(crate) fn new() -> Leases {
        Leases {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            live: AtomicU64::new(0),
            ids: Ids::default(),
        }
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, HashMap<u64, Lease>> {
        self.shards[id as usize & (SHARDS - 1)].lock()
    }

    /// Files a lease under a fresh, unguessable id.
    pub(crate) fn insert(&self, lease: Lease) -> u64 {
        loop {
            let id = self.ids.draw();
            let mut shard = self.shard(id);
            if let std::collections::hash_map::Entry::Vacant(v) = shard.entry(id) {
                v.insert(lease);
                self.live.fetch_add(1, Relaxed);
                return id;
            }
        }
    }

    /// Takes lease `id` out, if it is filed.
    pub(crate) fn remove(&self, id: u64) -> Option<Lease> {
        let l = self.shard(id).remove(&id)?;
        self.live.fetch_sub(1, Relaxed);
        Some(l)
    }

    /// Cuts lease `id` to its first `keep` keys (`keep` > 0) and returns the
    /// rest as a lease of its own, for the caller to give back. `None` when
    /// the lease is gone; an empty lease when nothing was cut.
    pub(crate) fn split_off(&self, id: u64, keep: usize) -> Option<Lease> {
        let mut shard = self.shard(id);
        let l = shard.get_mut(&id)?;
        let keys = if l.keys.len() <= keep {
            Vec::new()
        } else {
            l.keys.split_off(keep)
        };
        Some(Lease::new(l.deadline, keys))
    }

    /// Records that lease `id` keeps `value` of `key`. False when the lease
    /// is gone (then it keeps nothing).
    pub(crate) fn keep(&self, id: u64, key: Key, value: Bytes) -> bool {
        self.shard(id)
            .get_mut(&id)
            .map(|l| l.held.push((key, value)))
            .is_some()
    }

    /// Whether lease `id` is filed.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.shard(id).contains_key(&id)
    }

    /// Takes out every lease whose deadline is at or before `now`.
    pub(crate) fn take_due(&self, now: u64) -> Vec<Lease> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut leases = shard.lock();
            let ids: Vec<u64> = leases
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            out.extend(ids.iter().filter_map(|id| leases.remove(id)));
        }
        self.live.fetch_sub(out.len() as u64, Relaxed);
        out
    }

    /// Forgets every lease (their blocks are going too).
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut l = shard.lock();
            self.live.fetch_sub(l.len() as u64, Relaxed);
            l.clear();
        }
    }

    /// Leases filed, by the counter.
    pub(crate) fn live(&self) -> u64 {
        self.live.load(Relaxed)
    }

    /// Leases filed, by counting the shards.
    pub(crate) fn counted(&self) -> u64 {
        self.shards.iter().map(|l| l.lock().len() as u64).sum()
    }
}
