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
use crate::tier::Slot;

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
    /// Stored children, each link with the level its child was in when
    /// the link last heard of it (see `children_in`).
    pub(crate) children: Vec<(Key, u8)>,
    /// Recency: the clock value of the last access.
    pub(crate) stamp: u64,
    /// The stamp this entry is filed under in the LRU index (when evictable).
    pub(crate) filed: u64,
    pub(crate) expires_at: Option<u64>,
    pub(crate) pinned: bool,
    pub(crate) leases: u32,
    /// Its level in the stack of tiers (0: the fastest).
    pub(crate) level: u8,
    /// Whether its level evicts by a policy (so that it is filed in the
    /// eviction order while evictable).
    pub(crate) evicts: bool,
    /// Links in `children` per level. A block leaves its level (demoted or
    /// dropped) only after its children in that level: chains leave a level
    /// from the tail.
    ///
    /// Counted per link, from the level the link records: a child's move
    /// and its removal reach its parent under the parent's shard lock after
    /// the child's own has been let go (no request holds two shard locks),
    /// in either order, and a parent may be removed and stored again under
    /// the same key meanwhile. Each update finds its link and moves or
    /// drops what that link counted, so the counts always add up to the
    /// links; a link's level only lags its child's for a moment.
    pub(crate) children_in: [u32; MAX_LEVELS],
    /// Clock value of the write that made this version (tells a finished
    /// demotion whether the block was rewritten meanwhile).
    pub(crate) written: u64,
    /// Writes in progress that replace this block: it stays in place until they
    /// land (not a lease: nobody else can give it back by mistake).
    pub(crate) held: u32,
    /// This version's record in the stack's persistent level, if it has one
    /// (kept after a promotion): deleting or replacing the block writes a
    /// tombstone for it, so a restart does not bring it back.
    pub(crate) record: Option<Slot>,
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

    /// Whether the block may leave its level by eviction: the level evicts
    /// by a policy, no child of the block is in the level, and nothing holds
    /// it there.
    pub(crate) fn evictable(&self) -> bool {
        self.evicts
            && self.children_in[self.level as usize] == 0
            && !self.pinned
            && self.leases == 0
            && self.held == 0
    }

    /// Whether the block may be moved down although children of it are in
    /// its level (nothing holds it; see `Store::demote_any`).
    pub(crate) fn movable(&self) -> bool {
        self.evicts && !self.pinned && self.leases == 0 && self.held == 0
    }

    pub(crate) fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Whether it is filed under its own level and segment (its stamp may
    /// be older: filing is lazy).
    pub(crate) fn filed_in_place(&self) -> bool {
        (file_base(self.level)..file_end(self.level)).contains(&self.filed)
            && (self.filed & MAIN != 0) == self.main
    }

    /// Its key in the eviction order: the level in the top two bits, the
    /// segment in the next (probation sorts first), the recency stamp below.
    pub(crate) fn file_key(&self) -> u64 {
        file_base(self.level) | ((self.main as u64) * MAIN) | self.stamp
    }
}

/// Levels a stack may have (two bits of a file key).
pub const MAX_LEVELS: usize = 4;

/// The main segment's bit in a file key.
pub(crate) const MAIN: u64 = 1 << 61;

/// Where `level`'s file keys start.
pub(crate) fn file_base(level: u8) -> u64 {
    (level as u64) << 62
}

/// Where `level`'s file keys end (exclusive).
pub(crate) fn file_end(level: u8) -> u64 {
    file_base(level).saturating_add(1 << 62)
}

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

    /// Moves a touched entry to the main segment (`adaptive`). Returns its
    /// level and the bytes that left probation there.
    pub(crate) fn promote_main(&mut self, key: &[u8]) -> Option<(u8, u64)> {
        let (k, e) = self.map.get_key_value_mut(key)?;
        if e.main {
            return None;
        }
        if e.evictable() {
            self.lru.remove(&e.filed);
        }
        e.main = true;
        if e.evictable() {
            e.filed = e.file_key();
            self.lru.insert(e.filed, k.clone());
        }
        e.evicts
            .then(|| (e.level, charge_of(k.len(), e.len as usize)))
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
        child_level: u8,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut shard = self.shard(parent);
        let e = match shard.map.get_mut(parent) {
            Some(e) if !e.expired(now) => e,
            _ => return Err(StoreError::NoParent),
        };
        let was = e.evictable();
        e.children.push((child.clone(), child_level));
        e.children_in[child_level as usize] += 1;
        shard.refile(parent, was);
        Ok(())
    }

    /// Takes one link of `child` away from `parent` (if both are there).
    pub(crate) fn unlink_child(&self, parent: &Key, child: &Key, child_level: u8) {
        let mut shard = self.shard(parent);
        if let Some(e) = shard.map.get_mut(parent) {
            let was = e.evictable();
            // The link of that level if there is one (a child linked
            // twice, old and new version, may have them in two levels).
            let i = e
                .children
                .iter()
                .position(|c| c.0 == *child && c.1 == child_level)
                .or_else(|| e.children.iter().position(|c| c.0 == *child));
            if let Some(i) = i {
                let (_, level) = e.children.swap_remove(i);
                e.children_in[level as usize] -= 1;
            }
            shard.refile(parent, was);
        }
    }

    /// `child` of `parent` moved from level `from` to level `to` (if its
    /// link is still there).
    pub(crate) fn child_moved(&self, parent: &Key, child: &[u8], from: u8, to: u8) {
        let mut shard = self.shard(parent);
        if let Some(e) = shard.map.get_mut(parent) {
            let was = e.evictable();
            if let Some(link) = e
                .children
                .iter_mut()
                .find(|c| c.0[..] == *child && c.1 == from)
            {
                link.1 = to;
                e.children_in[from as usize] -= 1;
                e.children_in[to as usize] += 1;
            }
            shard.refile(parent, was);
        }
    }

    /// Takes the blocks of `children` and every stored block chained under
    /// them out of the index, one at a time, each shard locked only to take
    /// one: `f` gets each with the bytes that became retained, accounts for
    /// it and returns its children. An explicit stack, not recursion: a
    /// chain may be hundreds of thousands of blocks long.
    pub(crate) fn take_descendants(
        &self,
        mut stack: Vec<Key>,
        mut f: impl FnMut(Key, Entry, u64) -> Vec<Key>,
    ) {
        while let Some(child) = stack.pop() {
            // Bind first: a temporary guard in an `if let` scrutinee would stay
            // locked for the whole block.
            let taken = self.shard(&child).take(&child);
            if let Some((k, e, buried)) = taken {
                stack.extend(f(k, e, buried));
            }
        }
    }

    /// Whether the stored parent of `key` lists it.
    pub(crate) fn is_linked(&self, parent: &[u8], key: &Key) -> bool {
        self.shard(parent)
            .map
            .get(parent)
            .is_some_and(|e| e.children.iter().any(|c| c.0 == *key))
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
        type Node = (Option<Key>, Vec<(Key, u8)>, u8, [u32; MAX_LEVELS]);
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
                let l = e.level as usize;
                sums.used[l] += charge;
                sums.blocks[l] += 1;
                if e.evicts && !e.main {
                    sums.probation[l] += charge;
                }
                sums.main += e.main as usize;
                if e.evictable()
                    && (s.lru.get(&e.filed) != Some(k)
                        || e.filed > e.file_key()
                        || e.filed < file_base(e.level)
                        || (e.filed & MAIN != 0) != e.main)
                {
                    return Err("evictable entry missing from lru or filed ahead".into());
                }
                all.insert(
                    k.clone(),
                    (e.parent.clone(), e.children.clone(), e.level, e.children_in),
                );
            }
        }
        for (k, (parent, children, _, children_in)) in &all {
            if let Some(p) = parent {
                match all.get(p) {
                    None => return Err("orphan: parent not stored".into()),
                    Some((_, pc, _, _)) if !pc.iter().any(|c| c.0 == *k) => {
                        return Err("parent does not list its child".into())
                    }
                    _ => {}
                }
            }
            let mut sorted: Vec<&Key> = children.iter().map(|c| &c.0).collect();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != children.len() {
                return Err("a child is linked twice".into());
            }
            let mut counted = [0u32; MAX_LEVELS];
            for (c, level) in children {
                let Some(child) = all.get(c) else {
                    return Err("a listed child is not stored".into());
                };
                if child.0.as_ref() != Some(k) {
                    return Err("listed child is not stored under this parent".into());
                }
                if child.2 != *level {
                    return Err(format!(
                        "a link says level {level}, its child is in level {}",
                        child.2
                    ));
                }
                counted[*level as usize] += 1;
            }
            if counted != *children_in {
                return Err(format!(
                    "children per level counted {children_in:?}, found {counted:?}"
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
    /// Charges of entries, per level.
    pub(crate) used: [u64; MAX_LEVELS],
    /// Entries, per level.
    pub(crate) blocks: [u64; MAX_LEVELS],
    /// Charges of entries in probation, per level that evicts.
    pub(crate) probation: [u64; MAX_LEVELS],
    /// Entries in main.
    pub(crate) main: usize,
    /// Charges of values that leases keep past their removal.
    pub(crate) retained: u64,
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
