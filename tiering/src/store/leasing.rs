//! Leases on blocks (held against eviction) and holds on values (kept
//! alive past their removal while a reader may still use them).

use bytes::Bytes;

use super::Store;
use crate::index::{charge_of, Shard, Zombie};
use crate::leases::Lease;

impl Store {
    /// Leases the stored ones of `keys` against eviction for `lease_ms` (as
    /// `match_prefix` does for a prefix). Returns the lease id and how many
    /// keys were stored.
    pub fn lease(&self, keys: &[Bytes], lease_ms: u64) -> (u64, usize) {
        let mut held = Vec::with_capacity(keys.len());
        for k in keys {
            let mut guard = self.shard(k);
            let Shard { map, lru, .. } = &mut *guard;
            if let Some(e) = map.get_mut(&k[..]) {
                if e.evictable() {
                    lru.remove(&e.filed);
                }
                e.leases += 1;
                // The key may be a view into a request's buffer: a lease
                // keeping the view would keep the whole buffer.
                held.push(Bytes::copy_from_slice(k));
            }
        }
        let n = held.len();
        let lease = Lease::new(self.now_ms().saturating_add(lease_ms), held);
        (self.leases.insert(lease), n)
    }

    /// Drops a lease. True when it was still in force; false when it does
    /// not exist (released, or expired and swept) or its time had run out
    /// (then it is dropped now, as the sweep would have).
    pub fn release(&self, lease: u64) -> bool {
        let Some(l) = self.leases.remove(lease) else {
            return false;
        };
        let in_force = l.deadline > self.now_ms();
        self.drop_lease(l);
        in_force
    }

    /// Keeps only the first `keep` blocks of a lease taken by
    /// [`Store::match_prefix`] (its blocks in chain order), giving the rest
    /// back; with `keep` 0 the lease ends. A cluster-wide match leases what
    /// each node matched of its own keys before it knows how long the
    /// whole chain's prefix is, then trims each node's lease to the part
    /// inside it. False when the lease is gone.
    pub fn trim_lease(&self, lease: u64, keep: usize) -> bool {
        if keep == 0 {
            return self.release(lease);
        }
        match self.leases.split_off(lease, keep) {
            Some(cut) => {
                self.drop_lease(cut);
                true
            }
            None => false,
        }
    }

    /// Records that lease `lease` keeps `value`, the bytes of `key` a
    /// reader was handed (`KV.LOCATE`): if the block is removed or replaced
    /// before the lease ends, those bytes stay counted against the DRAM tier
    /// until it does. A `value` that is not the stored version (read from
    /// SSD and not promoted, or copied for a shm reader) counts from now.
    /// A lease that ended meanwhile keeps nothing.
    pub fn hold(&self, lease: u64, key: &Bytes, value: &Bytes) {
        let ptr = value.as_ptr() as usize;
        {
            let mut guard = self.shard(key);
            let Shard { map, zombies, .. } = &mut *guard;
            match map.get_mut(&key[..]) {
                Some(e) if e.value_ptr() == Some(ptr) => e.holds += 1,
                _ => {
                    let z = zombies.entry(ptr).or_insert_with(|| {
                        let charge = charge_of(key.len(), value.len());
                        self.retain(charge);
                        Zombie { charge, holds: 0 }
                    });
                    z.holds += 1;
                }
            }
        }
        // The key is copied: a view would keep the request's whole buffer
        // for as long as the lease.
        let key_copy = Bytes::copy_from_slice(key);
        let kept = self.leases.keep(lease, key_copy, value.clone());
        if !kept {
            self.unhold_value(key, value);
        }
    }

    /// One hold of `value` (of `key`) ended.
    fn unhold_value(&self, key: &[u8], value: &Bytes) {
        let ptr = value.as_ptr() as usize;
        let mut guard = self.shard(key);
        let Shard { map, zombies, .. } = &mut *guard;
        if let Some(e) = map
            .get_mut(key)
            .filter(|e| e.value_ptr() == Some(ptr) && e.holds > 0)
        {
            e.holds -= 1;
            return;
        }
        if let Some(z) = zombies.get_mut(&ptr) {
            z.holds -= 1;
            if z.holds == 0 {
                let charge = z.charge;
                zombies.remove(&ptr);
                self.unretain(charge);
            }
        }
    }

    pub(super) fn drop_lease(&self, l: Lease) {
        for (k, v) in &l.held {
            self.unhold_value(k, v);
        }
        for k in &l.keys {
            let mut shard = self.shard(k);
            if let Some(e) = shard.map.get_mut(k) {
                let was = e.evictable();
                e.leases = e.leases.saturating_sub(1);
                shard.refile(k, was);
            }
        }
    }

    /// Whether lease `id` is held (given out, not yet released or swept; it
    /// may be past its time).
    pub fn lease_exists(&self, id: u64) -> bool {
        self.leases.contains(id)
    }

    /// Leases held now (given by `match_prefix` with a lease and `lease`,
    /// neither released nor expired).
    pub fn live_leases(&self) -> u64 {
        self.leases.live()
    }
}
