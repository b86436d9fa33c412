//! The index: which blocks are stored, where their bytes are, and how they
//! chain.
//!
//! PERFORMANCE CRITICAL: every lookup of every command goes through here.
//!
//! Keys hash to one of [`SHARDS`] shards, each a `parking_lot::Mutex` around a
//! map of entries, the shard's eviction order (its evictable entries by
//! recency), its TTL order and the values leases keep past their removal. No
//! request takes more than one shard lock at a time, and there is no global
//! lock on the request path: recency comes from one atomic clock.
//!
//! The eviction order is updated lazily: a read only writes the entry's new
//! stamp. Each evictable entry is filed in the order once, under a stamp no
//! newer than its real one (`filed <= stamp`); a victim search re-files a
//! stale head at its real stamp before trusting it (see
//! [`Shard::lru_head_in`]). The head whose filed stamp is current is then the
//! shard's true least recently used evictable entry, so eviction order is
//! exact while reads cost no index work.
//!
//! A chain is a tree of entries: each names its parent, each parent lists
//! its stored children (links are counted, see [`Index::link_child`]). The
//! index keeps the links; the store decides when a tree is removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::StoreError;
use crate::tier::{Slot, TierKind};

/// Number of index shards. A power of two; enough that two to sixteen cores
/// rarely meet on one lock, few enough that scanning the shards' LRU heads on
/// eviction stays cheap.
pub const SHARDS: usize = 32;

/// Bytes charged per block on top of key and value: the map slot, the entry and
/// the LRU node, rounded up. Charged so that many tiny blocks cannot exceed the
/// capacity by their bookkeeping.
pub const ENTRY_OVERHEAD: u64 = 128;

pub(crate) type Key = Bytes;
/// hashbrown rather than std for `get_key_value_mut`: an overwrite updates the
/// entry in place and reuses the stored key with one lookup.
pub(crate) type Map<V> = hashbrown::HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// Hashes a key with one call of XXH3-64 over its bytes (a streaming XXH3
/// state costs several times more for 16-byte keys, and a key is hashed on
/// every lookup of every prefix match).
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = (self.0.rotate_left(29) ^ xxh3_64(bytes)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, n: usize) {
        // The length prefix of `[u8]`'s Hash; the bytes' hash covers it.
        self.0 ^= n as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) slot: Slot,
    pub(crate) len: u64,
    /// The bytes' XXH3-64, when `checked` (a flag beside the entry's other
    /// flags keeps it at 200 bytes; an `Option<u64>` would add 8).
    pub(crate) checksum: u64,
    pub(crate) checked: bool,
    pub(crate) parent: Option<Key>,
    pub(crate) children: Vec<Key>,
    /// Recency: the clock value of the last access.
    pub(crate) stamp: u64,
    /// The stamp this entry is filed under in the LRU index (when evictable).
    pub(crate) filed: u64,
    pub(crate) expires_at: Option<u64>,
    pub(crate) pinned: bool,
    pub(crate) leases: u32,
    pub(crate) tier: TierKind,
    /// Children whose bytes are in DRAM. A DRAM block leaves DRAM (demoted or
    /// dropped) only after all of them: chains leave DRAM from the tail.
    pub(crate) dram_children: u32,
    /// Clock value of the write that made this version (tells a finished
    /// demotion whether the block was rewritten meanwhile).
    pub(crate) written: u64,
    /// Writes in progress that replace this block: it stays in place until they
    /// land (not a lease: nobody else can give it back by mistake).
    pub(crate) held: u32,
    /// This version's record on SSD, if it has one (kept after a promotion):
    /// deleting or replacing the block writes a tombstone for it, so a restart
    /// does not bring it back.
    pub(crate) disk: Option<Slot>,
    /// In the main segment (touched again since stored); `adaptive` only.
    pub(crate) main: bool,
    /// Holding leases (`KV.LOCATE`) that keep this version's bytes: if it
    /// is removed or replaced while they last, its memory lives on and is
    /// counted as retained (see [`Zombie`]).
    pub(crate) holds: u32,
}

impl Entry {
    /// Where this version's bytes are, when they are in memory (what a
    /// holding lease is matched against).
    pub(crate) fn value_ptr(&self) -> Option<usize> {
        match &self.slot {
            Slot::Memory(b) => Some(b.as_ptr() as usize),
            Slot::Extent { .. } => None,
        }
    }

    /// Whether the block may leave DRAM: it is in DRAM, no child of it is, and
    /// nothing holds it there.
    pub(crate) fn evictable(&self) -> bool {
        self.tier == TierKind::Dram
            && self.dram_children == 0
            && !self.pinned
            && self.leases == 0
            && self.held == 0
    }

    pub(crate) fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Its key in the eviction index: the segment in the top bit (probation
    /// sorts first), the recency stamp below.
    pub(crate) fn file_key(&self) -> u64 {
        ((self.main as u64) << 63) | self.stamp
    }
}

/// Where the main segment starts in the eviction index.
pub(crate) const MAIN: u64 = 1 << 63;

/// A value removed or replaced while holding leases still kept its bytes:
/// its memory is freed only when they end, and until then it counts
/// against the DRAM tier (`Store::retained`), so that a client locating
/// blocks and deleting them in a loop makes writers evict or fail with
/// `-OOM` instead of growing the server past its capacity.
#[derive(Debug)]
pub(crate) struct Zombie {
    pub(crate) charge: u64,
    pub(crate) holds: u32,
}

#[derive(Default)]
pub(crate) struct Shard {
    pub(crate) map: Map<Entry>,
    /// Evictable entries by recency stamp (oldest first).
    pub(crate) lru: BTreeMap<u64, Key>,
    /// Entries with a TTL, by deadline.
    pub(crate) ttl: BTreeSet<(u64, Key)>,
    /// Held values of this shard's keys that are no longer stored, by the
    /// address of their bytes (alive, so no other value has it).
    pub(crate) zombies: HashMap<usize, Zombie>,
}

/// Moves the holds of `e`, a version leaving the index, to `zombies`.
/// Returns the bytes that became retained.
#[inline]
pub(crate) fn bury(zombies: &mut HashMap<usize, Zombie>, key_len: usize, e: &mut Entry) -> u64 {
    if e.holds == 0 {
        return 0;
    }
    bury_held(zombies, key_len, e)
}

#[cold]
fn bury_held(zombies: &mut HashMap<usize, Zombie>, key_len: usize, e: &mut Entry) -> u64 {
    let Some(ptr) = e.value_ptr() else {
        return 0;
    };
    let charge = charge_of(key_len, e.len as usize);
    let holds = std::mem::take(&mut e.holds);
    match zombies.entry(ptr) {
        std::collections::hash_map::Entry::Occupied(mut z) => {
            z.get_mut().holds += holds;
            0
        }
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(Zombie { charge, holds });
            charge
        }
    }
}

impl Shard {
    /// Records an access: only the entry's stamp changes (see the module doc).
    pub(crate) fn restamp(&mut self, key: &[u8], stamp: u64) {
        if let Some(e) = self.map.get_mut(key) {
            e.stamp = stamp;
        }
    }

    /// Re-files `key` in the LRU index after its evictability may have changed.
    pub(crate) fn refile(&mut self, key: &[u8], was_evictable: bool) {
        if let Some((k, e)) = self.map.get_key_value_mut(key) {
            match (was_evictable, e.evictable()) {
                (false, true) => {
                    e.filed = e.file_key();
                    self.lru.insert(e.filed, k.clone());
                }
                (true, false) => {
                    self.lru.remove(&e.filed);
                }
                _ => {}
            }
        }
    }

    /// Moves a touched entry to the main segment (`adaptive`). Returns the
    /// DRAM bytes that left probation.
    pub(crate) fn promote_main(&mut self, key: &[u8]) -> u64 {
        let Some((k, e)) = self.map.get_key_value_mut(key) else {
            return 0;
        };
        if e.main {
            return 0;
        }
        if e.evictable() {
            self.lru.remove(&e.filed);
        }
        e.main = true;
        if e.evictable() {
            e.filed = e.file_key();
            self.lru.insert(e.filed, k.clone());
        }
        if e.tier == TierKind::Dram {
            charge_of(k.len(), e.len as usize)
        } else {
            0
        }
    }

    /// The least recently used evictable entry filed in `range` (a segment).
    pub(crate) fn lru_head_in(&mut self, range: std::ops::Range<u64>) -> Option<(u64, Key)> {
        loop {
            let (filed, key) = self
                .lru
                .range(range.clone())
                .next()
                .map(|(f, k)| (*f, k.clone()))?;
            let e = self.map.get_mut(&key).expect("filed entries are stored");
            if e.file_key() == filed {
                return Some((e.stamp, key));
            }
            self.lru.remove(&filed);
            e.filed = e.file_key();
            self.lru.insert(e.filed, key);
        }
    }

    /// Takes an entry out of the map and both indexes. Returns it with the
    /// bytes that holding leases keep alive and that became retained (see
    /// [`Zombie`]): the caller counts them.
    pub(crate) fn take(&mut self, key: &[u8]) -> Option<(Key, Entry, u64)> {
        let (k, mut e) = self.map.remove_entry(key)?;
        let buried = bury(&mut self.zombies, k.len(), &mut e);
        if e.evictable() {
            self.lru.remove(&e.filed);
        }
        if let Some(t) = e.expires_at {
            self.ttl.remove(&(t, k.clone()));
        }
        Some((k, e, buried))
    }
}

pub(crate) fn shard_of(key: &[u8]) -> usize {
    (xxh3_64(key) as usize) & (SHARDS - 1)
}

/// Indices of `hashed` (shard, hash) grouped by shard, ascending within each
/// shard (a counting sort).
pub(crate) fn by_shard(hashed: &[(usize, u64)]) -> Vec<u32> {
    let mut start = [0u32; SHARDS + 1];
    for &(s, _) in hashed {
        start[s + 1] += 1;
    }
    for s in 0..SHARDS {
        start[s + 1] += start[s];
    }
    let mut order = vec![0u32; hashed.len()];
    for (i, &(s, _)) in hashed.iter().enumerate() {
        order[start[s] as usize] = i as u32;
        start[s] += 1;
    }
    order
}

/// The key's shard and its hash in that shard's map, from one XXH3 call: the
/// value [`KeyHasher`] computes for `key` (a test holds them equal).
pub(crate) fn key_hash(key: &[u8]) -> (usize, u64) {
    key_hash_of(xxh3_64(key), key.len())
}

/// [`key_hash`] of a key of `len` bytes whose XXH3-64 is `x`.
pub(crate) fn key_hash_of(x: u64, len: usize) -> (usize, u64) {
    let h = ((len as u64).rotate_left(29) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x as usize & (SHARDS - 1), h)
}

/// Accounted size of a block.
pub fn charge_of(key_len: usize, value_len: usize) -> u64 {
    key_len as u64 + value_len as u64 + ENTRY_OVERHEAD
}
/// The shards and the recency clock.
pub(crate) struct Index {
    shards: Box<[Mutex<Shard>]>,
    clock: AtomicU64,
}

impl Index {
    pub(crate) fn new() -> Index {
        Index {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            clock: AtomicU64::new(1),
        }
    }

    /// The shard of `key`, locked.
    pub(crate) fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        self.shards[shard_of(key)].lock()
    }

    /// Shard `i` (of [`SHARDS`]), locked.
    pub(crate) fn shard_at(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock()
    }

    /// Every shard, for scans that lock them one at a time.
    pub(crate) fn shards(&self) -> &[Mutex<Shard>] {
        &self.shards
    }

    /// The next recency stamp.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Relaxed)
    }

    /// `n` consecutive stamps; returns the first.
    pub(crate) fn tick_n(&self, n: u64) -> u64 {
        self.clock.fetch_add(n, Relaxed)
    }

    /// Records `child` under `parent`, which must be stored and live at
    /// `now`.
    ///
    /// Links are counted, not deduplicated: an overwrite links the new version
    /// before the old one is gone (and the old one may be evicted meanwhile), and
    /// each version takes its own link away when it goes.
    pub(crate) fn link_child(
        &self,
        parent: &Key,
        child: &Key,
        child_in_dram: bool,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut shard = self.shard(parent);
        let e = match shard.map.get_mut(parent) {
            Some(e) if !e.expired(now) => e,
            _ => return Err(StoreError::NoParent),
        };
        let was = e.evictable();
        e.children.push(child.clone());
        e.dram_children += child_in_dram as u32;
        shard.refile(parent, was);
        Ok(())
    }

    /// Takes one link of `child` away from `parent` (if both are there).
    pub(crate) fn unlink_child(&self, parent: &Key, child: &Key, child_in_dram: bool) {
        let mut shard = self.shard(parent);
        if let Some(e) = shard.map.get_mut(parent) {
            let was = e.evictable();
            if let Some(i) = e.children.iter().position(|c| c == child) {
                e.children.swap_remove(i);
                e.dram_children -= child_in_dram as u32;
            }
            shard.refile(parent, was);
        }
    }

    /// A child of `parent` moved into DRAM (`true`) or out of it.
    pub(crate) fn child_moved(&self, parent: &Key, into_dram: bool) {
        let mut shard = self.shard(parent);
        if let Some(e) = shard.map.get_mut(parent) {
            let was = e.evictable();
            if into_dram {
                e.dram_children += 1;
            } else {
                e.dram_children = e.dram_children.saturating_sub(1);
            }
            shard.refile(parent, was);
        }
    }

    /// Whether the stored parent of `key` lists it.
    pub(crate) fn is_linked(&self, parent: &[u8], key: &Key) -> bool {
        self.shard(parent)
            .map
            .get(parent)
            .is_some_and(|e| e.children.contains(key))
    }

    /// Visits the keys of a match shard by shard (`order`, from
    /// [`by_shard`]; each shard locked once), ascending within a shard,
    /// passing over those at or past `*end`. `visit` says whether the key
    /// is stored; one that is not ends the prefix (`*end` becomes its
    /// index).
    pub(crate) fn walk_prefix(
        &self,
        hashed: &[(usize, u64)],
        order: &[u32],
        end: &mut usize,
        mut visit: impl FnMut(&mut Shard, usize) -> bool,
    ) {
        for group in order.chunk_by(|a, b| hashed[*a as usize].0 == hashed[*b as usize].0) {
            if group[0] as usize >= *end {
                continue;
            }
            let mut guard = self.shards[hashed[group[0] as usize].0].lock();
            for &i in group {
                let i = i as usize;
                if i >= *end {
                    break;
                }
                if !visit(&mut guard, i) {
                    *end = i;
                    break;
                }
            }
        }
    }

    /// One block of each cycle of parents reachable from `keys` (at
    /// recovery, before anything else runs). Linear: each walk up stops at
    /// a block already walked.
    pub(crate) fn cycles_among(&self, keys: &[Key]) -> Vec<Key> {
        let parent_of = |k: &Key| self.shard(k).map.get(k).and_then(|e| e.parent.clone());
        let mut done: std::collections::HashSet<Key> = std::collections::HashSet::new();
        let mut found = Vec::new();
        for start in keys {
            let mut path: Vec<Key> = Vec::new();
            let mut on_path: std::collections::HashSet<Key> = std::collections::HashSet::new();
            let mut at = Some(start.clone());
            while let Some(k) = at {
                if done.contains(&k) {
                    break;
                }
                if !on_path.insert(k.clone()) {
                    found.push(k);
                    break;
                }
                at = parent_of(&k);
                path.push(k);
            }
            done.extend(path);
        }
        found
    }

    /// One step of a cursor scan: keys live at `now` of shards from `cursor`
    /// on, until at least `count` keys passed `filter` or the shards ran
    /// out. Returns the next cursor (0 when done). Every key stored for the
    /// whole scan is returned once.
    pub(crate) fn scan(
        &self,
        cursor: u64,
        count: usize,
        now: u64,
        filter: &dyn Fn(&[u8]) -> bool,
    ) -> (u64, Vec<Bytes>) {
        let mut out = Vec::new();
        let mut i = cursor as usize;
        while i < SHARDS {
            // The keys are taken under the lock, the filter (a pattern a
            // client chose, which may be slow to match) runs after it.
            let keys: Vec<Key> = {
                let s = self.shards[i].lock();
                s.map
                    .iter()
                    .filter(|(_, e)| !e.expired(now))
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            out.extend(keys.into_iter().filter(|k| filter(k)));
            i += 1;
            if out.len() >= count {
                break;
            }
        }
        (if i >= SHARDS { 0 } else { i as u64 }, out)
    }

    /// Entries carrying a TTL.
    pub(crate) fn with_ttl(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().ttl.len() as u64).sum()
    }

    /// Checks the index half of the store's invariants: each shard's
    /// eviction order holds exactly its evictable entries, each at most at
    /// its stamp and in its segment; every parent is stored and lists its
    /// children once; children counts per tier are right; no block is its
    /// own ancestor; retained values are held. Returns what the entries add
    /// up to, for the store to check its counters against.
    pub(crate) fn check(&self) -> Result<IndexSums, String> {
        type Node = (Option<Key>, Vec<Key>, TierKind, u32);
        let mut all: HashMap<Key, Node> = HashMap::new();
        let mut sums = IndexSums::default();
        for s in self.shards.iter() {
            let s = s.lock();
            for z in s.zombies.values() {
                if z.holds == 0 {
                    return Err("a retained value that nothing holds".into());
                }
                sums.retained += z.charge;
            }
            let evictable = s.map.values().filter(|e| e.evictable()).count();
            if evictable != s.lru.len() {
                return Err(format!(
                    "lru holds {} entries, {} evictable",
                    s.lru.len(),
                    evictable
                ));
            }
            for (k, e) in &s.map {
                let charge = charge_of(k.len(), e.len as usize);
                match e.tier {
                    TierKind::Ssd => sums.ssd += charge,
                    _ => {
                        sums.dram += charge;
                        if !e.main {
                            sums.probation += charge;
                        }
                    }
                }
                sums.main += e.main as usize;
                if e.evictable()
                    && (s.lru.get(&e.filed) != Some(k)
                        || e.filed > e.file_key()
                        || (e.filed >= MAIN) != e.main)
                {
                    return Err("evictable entry missing from lru or filed ahead".into());
                }
                all.insert(
                    k.clone(),
                    (
                        e.parent.clone(),
                        e.children.clone(),
                        e.tier,
                        e.dram_children,
                    ),
                );
            }
        }
        sums.blocks = all.len();
        for (k, (parent, children, _, dram_children)) in &all {
            if let Some(p) = parent {
                match all.get(p) {
                    None => return Err("orphan: parent not stored".into()),
                    Some((_, pc, _, _)) if !pc.contains(k) => {
                        return Err("parent does not list its child".into())
                    }
                    _ => {}
                }
            }
            let mut sorted = children.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != children.len() {
                return Err("a child is linked twice".into());
            }
            for c in children {
                if all.get(c).and_then(|(p, ..)| p.as_ref()) != Some(k) {
                    return Err("listed child is not stored under this parent".into());
                }
            }
            let in_dram = children
                .iter()
                .filter(|c| all.get(*c).is_some_and(|n| n.2 == TierKind::Dram))
                .count() as u32;
            if in_dram != *dram_children {
                return Err(format!(
                    "{dram_children} DRAM children counted, {in_dram} found"
                ));
            }
        }
        // A chain is a tree: no block is its own ancestor. Each walk up
        // stops at a block already known to reach a root.
        let mut rooted: std::collections::HashSet<&Key> = std::collections::HashSet::new();
        for k in all.keys() {
            let mut path = Vec::new();
            let mut at = k;
            while !rooted.contains(at) {
                if path.len() > all.len() {
                    return Err("a cycle of parents".into());
                }
                path.push(at);
                match all.get(at).and_then(|n| n.0.as_ref()) {
                    Some(p) => at = p,
                    None => break,
                }
            }
            rooted.extend(path);
        }
        Ok(sums)
    }
}

/// What the index's entries add up to ([`Index::check`]).
#[derive(Debug, Default)]
pub(crate) struct IndexSums {
    /// Charges of DRAM entries.
    pub(crate) dram: u64,
    /// Charges of SSD entries.
    pub(crate) ssd: u64,
    /// Charges of DRAM entries in probation.
    pub(crate) probation: u64,
    /// Entries in main.
    pub(crate) main: usize,
    /// Charges of values that leases keep past their removal.
    pub(crate) retained: u64,
    /// Entries.
    pub(crate) blocks: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn one_hash_gives_the_shard_and_the_maps_hash() {
        let build = BuildHasherDefault::<KeyHasher>::default();
        for key in [&b""[..], b"a", b"0123456789abcdef", &[7u8; 300]] {
            let (shard, hash) = key_hash(key);
            assert_eq!(shard, shard_of(key));
            assert_eq!(hash, build.hash_one(key), "{key:?}");
            assert_eq!(hash, build.hash_one(Bytes::copy_from_slice(key)));
        }
    }
}
