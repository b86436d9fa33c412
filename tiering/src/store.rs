//! The store: a sharded index of blocks with prefix-aware LRU eviction.
//!
//! PERFORMANCE CRITICAL: every GET, SET and KV.* command goes through here.
//!
//! # Layout
//! Keys hash to one of [`SHARDS`] shards, each a `parking_lot::Mutex` around a map
//! of entries and an LRU index (`BTreeMap<stamp, key>`) of the shard's
//! *evictable* entries. No request takes more than one shard lock at a time, and
//! there is no global lock on the request path: recency comes from one atomic
//! clock, accounting from atomic counters.
//!
//! The LRU index is updated lazily: a read only writes the entry's new stamp.
//! Each evictable entry is filed in the index once, under a stamp no newer than
//! its real one (`filed <= stamp`); eviction re-files a stale head at its real
//! stamp before trusting it. The head whose filed stamp is current is then the
//! shard's true least recently used evictable entry, so eviction order is exact
//! LRU while reads cost no index work.
//!
//! # Eviction
//! A block is evictable when it has no stored child, is not pinned and holds no
//! lease. When a write pushes a tier past its high watermark, the writer takes
//! the eviction lock and removes the least recently used evictable block across
//! all shards (the minimum stamp of the shards' LRU heads) until usage is back
//! under the low watermark. Removing a leaf may make its parent a leaf, which then
//! becomes evictable at its own (older) recency: chains are consumed from the
//! tail, so the store never holds a block whose parent is gone.
//!
//! Removing a block by other means (DEL, TTL, FLUSHALL) removes its stored
//! descendants too, for the same reason.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hashbrown::hash_map::RawEntryMut;
use parking_lot::Mutex;
use tidepool_checksum::checksum;

use crate::dram::DramTier;
use crate::error::StoreError;
use crate::event::{Event, EventKind, EventSink};
use crate::eviction::{Admit, Candidate, Heads, Policy, Usage};
use crate::index::{
    bury, by_shard, key_hash, key_hash_of, Entry, Index, Key, Shard, Zombie, MAIN, SHARDS,
};
use crate::leases::{Lease, Leases};
use crate::tier::{Load, Slot, Tier, TierKind};

pub use crate::eviction::Eviction;
pub use crate::index::{charge_of, ENTRY_OVERHEAD};

/// Settings of a store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreConfig {
    /// Capacity of the DRAM tier in bytes (keys + values + per-block overhead).
    /// Default: 1 GiB.
    pub dram_capacity: u64,
    /// Fraction of capacity above which a write starts evicting. Default: 0.95.
    pub high_watermark: f64,
    /// Fraction of capacity eviction brings usage back under. Default: 0.90.
    pub low_watermark: f64,
    /// How DRAM picks its victims. Default: [`Eviction::Lru`].
    pub eviction: Eviction,
    /// Checksum every block stored in DRAM (XXH3-64, kept for
    /// [`Store::verify`]). Without, a DRAM block carries a checksum only when
    /// the caller brought one ([`PutOptions::checksum`]: a shm client hashes
    /// its blocks as it copies them); blocks on SSD always carry their
    /// records' own. Default: true.
    pub dram_checksums: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dram_capacity: 1 << 30,
            high_watermark: 0.95,
            low_watermark: 0.90,
            eviction: Eviction::Lru,
            dram_checksums: true,
        }
    }
}

impl StoreConfig {
    /// Checks the settings, saying what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0 < self.low_watermark
            && self.low_watermark <= self.high_watermark
            && self.high_watermark <= 1.0)
        {
            return Err(format!(
                "watermarks must satisfy 0 < low ({}) <= high ({}) <= 1",
                self.low_watermark, self.high_watermark
            ));
        }
        Ok(())
    }
}

/// Options of one put.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// The previous block of the chain; it must be stored.
    pub parent: Option<Bytes>,
    /// Time to live in milliseconds.
    pub ttl_ms: Option<u64>,
    /// Keep the current TTL of an overwritten block (SET KEEPTTL).
    pub keep_ttl: bool,
    /// Pin against eviction.
    pub pin: bool,
    /// Tier to write to; `None` means the top tier.
    pub tier: Option<TierKind>,
    /// Store only if the key is already stored (`Some(true)`, SET XX) or only if
    /// it is not (`Some(false)`, SET NX). Checked atomically with the write.
    pub only_if_exists: Option<bool>,
    /// The value's `Bytes` is the only user of an allocation of about its own
    /// size, so the store may keep it as is. When false (the default) the store
    /// copies the value into its own allocation: a view into a larger buffer
    /// (a connection's read buffer, a batch) would pin all of that buffer.
    pub value_exclusive: bool,
    /// The value's checksum ([`tidepool_checksum::checksum`]), when the
    /// caller already has it: the tcp data plane hashes blocks as they
    /// arrive, a shm client as it copies. The store takes it at its word: a
    /// wrong one makes [`Store::verify`] find the block corrupt.
    pub checksum: Option<u64>,
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The bytes match their checksum.
    Intact,
    /// They do not: the block was dropped.
    Corrupt,
    /// A DRAM block stored without a checksum
    /// ([`StoreConfig::dram_checksums`] off): nothing to check against.
    Unchecked,
}

impl Verified {
    /// The word `KV.VERIFY` answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Verified::Intact => "ok",
            Verified::Corrupt => "corrupt",
            Verified::Unchecked => "unchecked",
        }
    }
}

/// Result of a prefix match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MatchResult {
    /// How many leading keys are stored.
    pub matched: usize,
    /// The tier of each matched block.
    pub tiers: Vec<TierKind>,
    /// The lease taken, when one was asked for.
    pub lease: Option<u64>,
}

/// What is known of one block without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMeta {
    /// Value length in bytes.
    pub len: u64,
    /// Accounted bytes.
    pub charge: u64,
    /// Tier.
    pub tier: TierKind,
    /// Absolute expiry in Unix milliseconds.
    pub expires_at: Option<u64>,
    /// Pinned.
    pub pinned: bool,
    /// Leases held.
    pub leases: u32,
    /// Stored children.
    pub children: usize,
    /// Parent key.
    pub parent: Option<Bytes>,
}

/// Counters of one tier.
#[derive(Debug, Default)]
struct TierCounters {
    capacity: AtomicU64,
    used: AtomicU64,
    blocks: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    demotions: AtomicU64,
    promotions: AtomicU64,
}

/// A snapshot of one tier's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Which tier.
    pub kind: Option<TierKind>,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Accounted bytes in use.
    pub used: u64,
    /// Blocks stored.
    pub blocks: u64,
    /// Reads that found the block here.
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Blocks evicted.
    pub evictions: u64,
    /// Blocks moved down to a slower tier.
    pub demotions: u64,
    /// Blocks moved up from a slower tier.
    pub promotions: u64,
}

/// A snapshot of the store's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    /// One entry per configured tier, fastest first.
    pub tiers: Vec<TierStats>,
    /// KV.MATCH calls.
    pub matches: u64,
    /// Keys asked about by matches.
    pub keys_queried: u64,
    /// Keys found by matches (the prefix hits).
    pub keys_matched: u64,
    /// Leases currently held.
    pub leases: u64,
    /// Blocks removed because their TTL ran out.
    pub expired: u64,
    /// Blocks that carry a TTL.
    pub with_ttl: u64,
    /// The SSD tier's own figures, when one is attached.
    pub ssd: Option<SsdStats>,
}

/// Figures particular to the SSD tier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SsdStats {
    /// Segments in all.
    pub segments: u64,
    /// Segments holding data.
    pub segments_used: u64,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Demotions dropped because the SSD fell behind.
    pub dropped_demotions: u64,
    /// Demotions queued and not yet written.
    pub pending_demotions: u64,
    /// Blocks a match read back into DRAM ahead of their segment's reclaim.
    pub staged: u64,
    /// Records that failed their checksum on read.
    pub checksum_failures: u64,
    /// Segments out of the rotation because the file system had no room
    /// for them (they rejoin once it has).
    pub segments_without_space: u64,
    /// Writes the file system refused for want of space.
    pub no_space_errors: u64,
    /// Flushes to stable storage (one per `TIER ssd` write).
    pub syncs: u64,
    /// I/O engine (`io_uring` or `psync`).
    pub engine: &'static str,
    /// Whether the device is opened with O_DIRECT.
    pub direct: bool,
}

impl StoreStats {
    /// Matched keys over queried keys (0 when nothing was asked).
    pub fn prefix_hit_ratio(&self) -> f64 {
        if self.keys_queried == 0 {
            0.0
        } else {
            self.keys_matched as f64 / self.keys_queried as f64
        }
    }
}

/// Source of the current Unix time in milliseconds (injectable for tests).
pub type ClockFn = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The block store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    index: Index,
    dram: Arc<dyn Tier>,
    dram_counters: TierCounters,
    /// High and low watermarks as `f64` bits (read on every write, so no lock).
    watermarks: [AtomicU64; 2],
    evict_lock: Mutex<()>,
    leases: Leases,
    /// Bytes of removed or replaced DRAM values that leases still hold (the
    /// shards' zombies): counted against the capacity with `used`.
    retained: AtomicU64,
    matches: AtomicU64,
    expired: AtomicU64,
    keys_queried: AtomicU64,
    keys_matched: AtomicU64,
    events: Option<Arc<dyn EventSink>>,
    now: ClockFn,
    /// The SSD tier, once attached.
    ssd: std::sync::OnceLock<SsdState>,
    /// Where copies of large values go, when set (the server's arena).
    value_alloc: std::sync::OnceLock<ValueAlloc>,
    /// How DRAM picks its victims.
    policy: Box<dyn Policy>,
    /// Checksum every DRAM block ([`StoreConfig::dram_checksums`]).
    dram_checksums: bool,
    /// DRAM bytes in the probation segment (every DRAM block under `lru`).
    probation: AtomicU64,
}

/// What [`Store::fetch_memory`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// The bytes, from memory.
    Memory(Bytes),
    /// Not stored.
    Missing,
    /// Stored on a device: reading it blocks.
    Device,
}

/// Settings of the SSD tier's place in the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsdSettings {
    /// Blocks waiting to be written to SSD before further demotions are dropped
    /// (and counted). Default: 256.
    pub queue: usize,
    /// Move a block read from SSD back to DRAM. Default: true.
    pub promote: bool,
    /// A match that finds blocks on SSD near the log's reclaim end queues
    /// them to be read back into DRAM: whoever matched is about to read them,
    /// and a block in use is rescued from the first-in first-out reclaim (it
    /// is written again at the log's head when it leaves DRAM). Default:
    /// true.
    pub stage_on_match: bool,
    /// Which matched SSD blocks are staged: those whose segment is among this
    /// share of the log next in line for reclaim. Staging every match (1.0)
    /// pushes so many blocks through DRAM and back that the log turns over
    /// faster and loses more than it saves on some workloads; 0.3 never lost
    /// in the measured cases (bench/README.md). Default: 0.3.
    pub stage_window: f64,
}

impl Default for SsdSettings {
    fn default() -> Self {
        SsdSettings {
            queue: 256,
            promote: true,
            stage_on_match: true,
            stage_window: 0.3,
        }
    }
}

/// Allocates memory for a value and copies it in (the server puts values in
/// its shared arena: memory it already has, and where shm readers find them);
/// `None` when it cannot, and the value goes to the heap.
pub type ValueAlloc = Arc<dyn Fn(&[u8]) -> Option<Bytes> + Send + Sync>;

/// Values from this size on are copied through the [`ValueAlloc`] (its
/// allocations are whole 4 KiB pages: smaller ones would waste too much).
pub const VALUE_ALLOC_MIN: usize = 64 * 1024;

/// A block on its way from DRAM to SSD.
struct Demotion {
    key: Key,
    parent: Option<Key>,
    value: Bytes,
    written: u64,
}

/// Work for the SSD thread.
enum SsdJob {
    /// Write a DRAM victim to SSD.
    Demote(Demotion),
    /// Read one match's blocks on SSD back into DRAM, in chain order, each
    /// if it is still that record. One job, so that no demotion the first
    /// staging causes is written (and no segment reclaimed for it) before
    /// the rest are read: the order does not depend on how soon the SSD
    /// thread wakes up.
    Stage(Vec<(Key, Slot, u64)>),
}

/// The attached SSD tier.
struct SsdState {
    tier: Arc<crate::ssd::SsdTier>,
    capacity: u64,
    counters: TierCounters,
    queue: std::sync::mpsc::SyncSender<SsdJob>,
    settings: SsdSettings,
    dropped: AtomicU64,
    staged: AtomicU64,
    /// Demotions and stagings queued and not yet done.
    pending: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("stats", &self.stats())
            .finish()
    }
}

thread_local! {
    /// Demotions held back until the batch this thread runs ends (see
    /// [`Store::batch`]): the store's address and the demotions.
    static HELD_DEMOTIONS: std::cell::RefCell<Option<(usize, Vec<Demotion>)>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Runs between the two passes of `match_prefix` on this thread, or,
    /// without a lease, between its one pass and the stamps given back (a
    /// test changes the store there).
    static BETWEEN_MATCH_PASSES: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        const { std::cell::RefCell::new(None) };
}

impl Store {
    /// A store with the given settings and no event sink.
    pub fn new(config: StoreConfig) -> Store {
        Self::with_parts(config, None, Arc::new(system_ms))
    }

    /// A store with an event sink and a clock.
    pub fn with_parts(
        config: StoreConfig,
        events: Option<Arc<dyn EventSink>>,
        now: ClockFn,
    ) -> Store {
        let counters = TierCounters::default();
        counters.capacity.store(config.dram_capacity, Relaxed);
        Store {
            index: Index::new(),
            dram: Arc::new(DramTier),
            dram_counters: counters,
            watermarks: [
                AtomicU64::new(config.high_watermark.to_bits()),
                AtomicU64::new(config.low_watermark.to_bits()),
            ],
            evict_lock: Mutex::new(()),
            leases: Leases::new(),
            retained: AtomicU64::new(0),
            matches: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            keys_queried: AtomicU64::new(0),
            keys_matched: AtomicU64::new(0),
            events,
            now,
            ssd: std::sync::OnceLock::new(),
            value_alloc: std::sync::OnceLock::new(),
            policy: config.eviction.build(),
            dram_checksums: config.dram_checksums,
            probation: AtomicU64::new(0),
        }
    }

    /// The eviction policy.
    pub fn eviction(&self) -> Eviction {
        self.policy.kind()
    }

    /// Whether every DRAM block carries a checksum
    /// ([`StoreConfig::dram_checksums`]).
    pub fn dram_checksums(&self) -> bool {
        self.dram_checksums
    }

    /// `adaptive`: the probation share in force (1.0: plain LRU).
    pub fn probation_share(&self) -> f64 {
        self.policy.probation_share()
    }

    /// Forces the probation share (tests; the tuner sets it otherwise).
    #[cfg(test)]
    fn force_share(&self, share: f64) {
        self.policy.force_share(share);
    }

    /// What DRAM holds, as the eviction policy sees it, with `incoming`
    /// bytes of a write joining probation.
    fn usage(&self, incoming: u64) -> Usage {
        Usage {
            capacity: self.capacity(),
            used: self.used(),
            probation: self.probation.load(Relaxed),
            blocks: self.dram_counters.blocks.load(Relaxed),
            incoming,
        }
    }

    fn counters(&self, tier: TierKind) -> &TierCounters {
        match (tier, self.ssd.get()) {
            (TierKind::Ssd, Some(s)) => &s.counters,
            _ => &self.dram_counters,
        }
    }

    fn release_slot(&self, tier: TierKind, slot: Slot) {
        match (tier, self.ssd.get()) {
            (TierKind::Ssd, Some(s)) => s.tier.release(slot),
            _ => self.dram.release(slot),
        }
    }

    /// Attaches an SSD tier: blocks evicted from DRAM are demoted to it, reads
    /// of demoted blocks are served (and promoted) from it, `TIER ssd` writes go
    /// to it. `recovered` (what the tier found on its device) is indexed first:
    /// records whose parent was not recovered are dropped, so chains stay
    /// prefix-closed. Fails if an SSD tier is already attached.
    pub fn attach_ssd(
        self: &Arc<Self>,
        tier: Arc<crate::ssd::SsdTier>,
        capacity: u64,
        recovered: Vec<crate::ssd::Recovered>,
        settings: SsdSettings,
    ) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<SsdJob>(settings.queue);
        let counters = TierCounters::default();
        counters.capacity.store(capacity, Relaxed);
        let state = SsdState {
            tier,
            capacity,
            counters,
            queue: tx,
            settings,
            dropped: AtomicU64::new(0),
            staged: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        };
        self.ssd
            .set(state)
            .map_err(|_| "an SSD tier is already attached".to_string())?;
        self.index_recovered(recovered);
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("tidepool-demote".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    match weak.upgrade() {
                        Some(store) => {
                            let done = match job {
                                SsdJob::Demote(d) => {
                                    store.finish_demotion(d);
                                    1
                                }
                                SsdJob::Stage(blocks) => {
                                    for (key, slot, written) in &blocks {
                                        store.stage(key, slot, *written);
                                    }
                                    blocks.len() as u64
                                }
                            };
                            if let Some(s) = store.ssd.get() {
                                s.pending.fetch_sub(done, Relaxed);
                            }
                        }
                        None => return,
                    }
                }
            })
            .map_err(|e| format!("starting the demotion thread: {e}"))?;
        Ok(())
    }

    fn index_recovered(&self, recovered: Vec<crate::ssd::Recovered>) {
        let ssd = self.ssd.get().expect("attached");
        let mut with_parent = Vec::new();
        for r in recovered {
            let charge = charge_of(r.key.len(), r.value_len as usize);
            let stamp = self.tick_clock();
            let slot = crate::ssd::SsdTier::slot_of(&r.location);
            let entry = Entry {
                disk: Some(slot.clone()),
                slot,
                len: r.value_len,
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
                tier: TierKind::Ssd,
                dram_children: 0,
                written: stamp,
                held: 0,
                main: false,
            };
            if let Some(p) = &r.parent {
                with_parent.push((r.key.clone(), p.clone()));
            }
            self.shard(&r.key).map.insert(r.key, entry);
            ssd.counters.used.fetch_add(charge, Relaxed);
            ssd.counters.blocks.fetch_add(1, Relaxed);
        }
        let mut orphans = Vec::new();
        let mut linked = Vec::with_capacity(with_parent.len());
        for (key, parent) in with_parent {
            if self.link_child(&parent, &key, false).is_err() {
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

    /// Writes a demoted block to SSD (on the demotion thread) and points its
    /// entry at the record, unless the block changed meanwhile.
    fn finish_demotion(&self, d: Demotion) {
        let ssd = self.ssd.get().expect("attached");
        let current = |e: &Entry| {
            e.written == d.written && e.tier == TierKind::Ssd && matches!(e.slot, Slot::Memory(_))
        };
        // Dropped (its parent's record reclaimed, say), deleted or rewritten
        // since it was queued: nothing to write.
        if !self.shard(&d.key).map.get(&d.key[..]).is_some_and(current) {
            return;
        }
        let stored = ssd.tier.store(&d.key, d.parent.as_deref(), d.value);
        self.drain_reclaimed();
        let slot = match stored {
            Ok(slot) => slot,
            Err(_) => {
                // The device failed: the block is lost, which is a miss later.
                let still = self
                    .shard(&d.key)
                    .map
                    .get(&d.key[..])
                    .is_some_and(|e| e.written == d.written && e.tier == TierKind::Ssd);
                if still {
                    ssd.dropped.fetch_add(1, Relaxed);
                    self.remove_tree(&d.key, EventKind::Evicted);
                }
                return;
            }
        };
        let applied = {
            let mut shard = self.shard(&d.key);
            match shard.map.get_mut(&d.key[..]) {
                Some(e) if current(e) => {
                    e.disk = Some(slot.clone());
                    e.slot = slot.clone();
                    true
                }
                _ => false,
            }
        };
        if !applied {
            // Deleted or rewritten while it was being written: the record must
            // not come back after a restart.
            self.forget_on_disk(&d.key, Some(&slot));
        }
    }

    /// Writes a tombstone for a block's SSD record, if it has one.
    fn forget_on_disk(&self, key: &[u8], disk: Option<&Slot>) {
        if let (Some(slot), Some(ssd)) = (disk, self.ssd.get()) {
            // A failed tombstone only risks bringing a deleted block back after
            // a restart; the device error shows up on the next write.
            let _ = ssd.tier.forget(key, slot);
        }
    }

    /// Demotions and stagings queued and not yet done (0 without an SSD tier).
    pub fn pending_demotions(&self) -> u64 {
        self.ssd.get().map_or(0, |s| s.pending.load(Relaxed))
    }

    /// Sends copies of values of [`VALUE_ALLOC_MIN`] bytes or more through
    /// `alloc` (once; false if one was set already).
    pub fn set_value_alloc(&self, alloc: ValueAlloc) -> bool {
        self.value_alloc.set(alloc).is_ok()
    }

    /// A copy of `value` that the store owns. A large one goes through the
    /// value allocator (the server's arena), shedding blocks until it fits
    /// there: a large block on the heap would keep DRAM-tier bytes in a
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

    /// Reads a matched block from SSD into DRAM (on the SSD thread), unless it
    /// changed meanwhile.
    fn stage(&self, key: &[u8], slot: &Slot, written: u64) {
        let Some(ssd) = self.ssd.get() else { return };
        let current =
            self.shard(key).map.get(key).is_some_and(|e| {
                e.written == written && e.tier == TierKind::Ssd && e.slot == *slot
            });
        if !current {
            return;
        }
        if let Load::Hit(b) = ssd.tier.load(key, slot) {
            ssd.counters.hits.fetch_add(1, Relaxed);
            if self.promote(key, &b, written, slot) {
                ssd.staged.fetch_add(1, Relaxed);
            }
        }
    }

    /// Queues matched blocks found on SSD to be read back into DRAM (one
    /// job); when the queue is full they stay where they are.
    fn queue_stagings(&self, stage: Vec<(Key, Slot, u64)>) {
        let Some(ssd) = self.ssd.get() else { return };
        let n = stage.len() as u64;
        ssd.pending.fetch_add(n, Relaxed);
        if ssd.queue.try_send(SsdJob::Stage(stage)).is_err() {
            ssd.pending.fetch_sub(n, Relaxed);
        }
    }

    /// Drops the blocks whose SSD space was reclaimed (and what hangs under them).
    fn drain_reclaimed(&self) {
        let Some(ssd) = self.ssd.get() else { return };
        for r in ssd.tier.take_reclaimed() {
            let gone = {
                let mut shard = self.shard(&r.key);
                match shard.map.get_mut(&r.key[..]) {
                    Some(e) if e.tier == TierKind::Ssd && e.slot == r.slot => {
                        e.disk = None; // the record itself is gone: no tombstone
                        true
                    }
                    Some(e) if e.disk.as_ref() == Some(&r.slot) => {
                        // Back in DRAM, and its old record is gone: nothing
                        // for a tombstone to cancel any more.
                        e.disk = None;
                        false
                    }
                    _ => false,
                }
            };
            if gone {
                ssd.counters.evictions.fetch_add(1, Relaxed);
                self.remove_tree(&r.key, EventKind::Evicted);
            }
        }
    }

    fn shard(&self, key: &[u8]) -> parking_lot::MutexGuard<'_, Shard> {
        self.index.shard(key)
    }

    fn tick_clock(&self) -> u64 {
        self.index.tick()
    }

    fn now_ms(&self) -> u64 {
        (self.now)()
    }

    fn emit(&self, kind: EventKind, key: &Key, tier: TierKind, parent: Option<&Key>) {
        if let Some(sink) = &self.events {
            if sink.enabled() {
                sink.publish(Event {
                    kind,
                    key: key.clone(),
                    tier,
                    parent: parent.cloned(),
                });
            }
        }
    }

    /// The DRAM tier's capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.dram_counters.capacity.load(Relaxed)
    }

    /// Accounted bytes in use in DRAM.
    pub fn used(&self) -> u64 {
        self.dram_counters.used.load(Relaxed)
    }

    /// Bytes of removed or replaced DRAM values that holding leases keep
    /// alive (see [`Store::hold`]): they are part of [`Store::used`] until
    /// those leases end.
    pub fn retained(&self) -> u64 {
        self.retained.load(Relaxed)
    }

    /// Counts `bytes` of a value that left the index but whose memory
    /// lives on: they stay in (or join) the DRAM tier's `used`, which is
    /// what eviction and `-OOM` go by, so the write path reads one counter.
    fn retain(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.retained.fetch_add(bytes, Relaxed);
        self.dram_counters.used.fetch_add(bytes, Relaxed);
    }

    /// Retained bytes whose memory is free now.
    fn unretain(&self, bytes: u64) {
        self.retained.fetch_sub(bytes, Relaxed);
        self.dram_counters.used.fetch_sub(bytes, Relaxed);
    }

    /// Changes the DRAM capacity live, evicting down to the new low watermark.
    pub fn set_capacity(&self, bytes: u64) {
        self.dram_counters.capacity.store(bytes, Relaxed);
        let _ = self.make_room();
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
        let _ = self.make_room();
        Ok(())
    }

    /// The current (high, low) watermarks.
    pub fn watermarks(&self) -> (f64, f64) {
        (
            f64::from_bits(self.watermarks[0].load(Relaxed)),
            f64::from_bits(self.watermarks[1].load(Relaxed)),
        )
    }

    /// Stores a block. Readers see all of it or none of it. Returns false when
    /// `only_if_exists` did not hold (nothing changed).
    ///
    /// `TIER ssd` writes straight to the SSD tier and returns once the block is
    /// durable; this blocks on the device, so async callers MUST call it off
    /// their runtime's worker threads.
    pub fn put(&self, key: Bytes, value: Bytes, opts: PutOptions) -> Result<bool, StoreError> {
        let to_ssd = match opts.tier {
            None | Some(TierKind::Dram) => false,
            Some(TierKind::Ssd) if self.ssd.get().is_some() => true,
            Some(other) => return Err(StoreError::NoTier(other.as_str())),
        };
        let charge = charge_of(key.len(), value.len());
        let capacity = if to_ssd {
            self.ssd.get().map_or(0, |s| s.capacity)
        } else {
            self.capacity()
        };
        if charge > capacity {
            return Err(StoreError::TooBig {
                len: charge,
                tier: if to_ssd { "ssd" } else { "dram" },
                capacity,
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
        let mut opts = opts;
        opts.parent = opts.parent.map(|p| Bytes::copy_from_slice(&p));
        if let Some(p) = &opts.parent {
            if *p == key {
                return Err(StoreError::SelfParent);
            }
            // A durable write is checked before it is made (the check under
            // the shard lock below still decides, for a race meanwhile).
            if to_ssd && self.would_reparent(&key, p) {
                return Err(StoreError::Reparent);
            }
            self.link_child(p, &key, !to_ssd)?;
        }
        let unlink = |this: &Self| {
            if let Some(p) = &opts.parent {
                this.unlink_child(p, &key, !to_ssd);
            }
        };
        // Where the eviction policy puts the block in DRAM.
        let admit = if to_ssd {
            Admit::Rewrite
        } else {
            self.policy
                .on_insert(&key, &|| self.shard(&key).map.contains_key(&key[..]))
        };
        let ghost_main = admit == Admit::Main;
        let incoming = if admit == Admit::Probation { charge } else { 0 };
        let checksum = match opts.checksum {
            Some(sum) => Some(sum),
            None if to_ssd || self.dram_checksums => Some(checksum(&value)),
            None => None,
        };
        let len = value.len() as u64;
        let mut reserved = charge;
        let mut held_old = false;
        let (slot, tier) = if to_ssd {
            let ssd = self.ssd.get().expect("checked above");
            let stored = ssd
                .tier
                .store(&key, opts.parent.as_deref(), value)
                .and_then(|slot| ssd.tier.sync().map(|_| slot));
            self.drain_reclaimed();
            match stored {
                Ok(slot) => (slot, TierKind::Ssd),
                Err(e) => {
                    unlink(self);
                    return Err(StoreError::Io(e.to_string()));
                }
            }
        } else {
            // When room must be made, the version being replaced stays put (it is
            // replaced, not evicted) and only the growth needs room. Below the
            // high watermark nothing is evicted, so the hold is skipped.
            if self.over_high_with(charge) {
                let held = self.hold_dram(&key);
                reserved = charge.saturating_sub(held.unwrap_or(0));
                held_old = held.is_some();
            }
            self.dram_counters.used.fetch_add(reserved, Relaxed);
            if let Err(e) = self.make_room_for(incoming) {
                self.dram_counters.used.fetch_sub(reserved, Relaxed);
                if held_old {
                    self.unhold(&key);
                }
                unlink(self);
                return Err(e);
            }
            let value = if opts.value_exclusive {
                value
            } else {
                self.copy_value(&value)
            };
            match self.dram.store(&key, opts.parent.as_deref(), value) {
                Ok(slot) => (slot, TierKind::Dram),
                Err(e) => {
                    self.dram_counters.used.fetch_sub(reserved, Relaxed);
                    if held_old {
                        self.unhold(&key);
                    }
                    unlink(self);
                    return Err(StoreError::Io(e.to_string()));
                }
            }
        };
        if to_ssd {
            self.counters(TierKind::Ssd).used.fetch_add(charge, Relaxed);
        }
        let now = if opts.ttl_ms.is_some() || opts.only_if_exists.is_some() {
            self.now_ms()
        } else {
            0 // unused: no TTL to compute and no existence to check
        };
        let old;
        {
            let mut shard = self.shard(&key);
            if let Some(want) = opts.only_if_exists {
                let exists = shard.map.get(&key).is_some_and(|e| !e.expired(now));
                if exists != want {
                    drop(shard);
                    self.counters(tier).used.fetch_sub(reserved, Relaxed);
                    if tier == TierKind::Ssd {
                        self.forget_on_disk(&key, Some(&slot));
                    }
                    if held_old {
                        self.unhold(&key);
                    }
                    unlink(self);
                    return Ok(false);
                }
            }
            // Under the same lock as the write: a block with no child now
            // has no descendant, so it cannot become its own ancestor.
            let reparent = opts.parent.as_ref().is_some_and(|p| {
                shard
                    .map
                    .get(&key[..])
                    .is_some_and(|e| e.parent.as_ref() != Some(p) && !e.children.is_empty())
            });
            if reparent {
                drop(shard);
                self.refuse_write(&key, tier, slot, reserved, held_old);
                unlink(self);
                return Err(StoreError::Reparent);
            }
            let stamp = self.tick_clock();
            let Shard {
                map,
                lru,
                ttl,
                zombies,
            } = &mut *shard;
            old = match map.get_key_value_mut(&key[..]) {
                Some((k, e)) => {
                    // Overwrite in place: one hash lookup, the stored key kept.
                    let k = k.clone();
                    let was_evictable = e.evictable();
                    if e.tier == TierKind::Dram && !e.main {
                        self.probation
                            .fetch_sub(charge_of(k.len(), e.len as usize), Relaxed);
                    }
                    if tier == TierKind::Dram {
                        e.main = self.policy.on_access(e.main);
                    }
                    if tier == TierKind::Dram && !e.main {
                        self.probation.fetch_add(charge, Relaxed);
                    }
                    if let Some(t) = e.expires_at {
                        ttl.remove(&(t, k.clone()));
                    }
                    let expires_at = match opts.ttl_ms {
                        Some(ms) => Some(now.saturating_add(ms)),
                        None if opts.keep_ttl => e.expires_at,
                        None => None,
                    };
                    // A held old version lives on: counted until its holds end.
                    let buried = bury(zombies, k.len(), e);
                    if buried > 0 {
                        self.retain(buried);
                    }
                    let old_len = std::mem::replace(&mut e.len, len);
                    let new_disk = (tier == TierKind::Ssd).then(|| slot.clone());
                    let old_disk = std::mem::replace(&mut e.disk, new_disk);
                    let old_slot = std::mem::replace(&mut e.slot, slot);
                    let old_parent = std::mem::replace(&mut e.parent, opts.parent.clone());
                    let old_tier = std::mem::replace(&mut e.tier, tier);
                    e.checksum = checksum.unwrap_or(0);
                    e.checked = checksum.is_some();
                    e.stamp = stamp;
                    e.written = stamp;
                    // Our hold is over (the entry may be another version by
                    // now, whose holds saturate at zero).
                    if held_old {
                        e.held = e.held.saturating_sub(1);
                    }
                    e.expires_at = expires_at;
                    e.pinned |= opts.pin;
                    // Still filed (lazily) if it stays evictable.
                    match (was_evictable, e.evictable()) {
                        (true, false) => {
                            lru.remove(&e.filed);
                        }
                        (false, true) => {
                            e.filed = e.file_key();
                            lru.insert(e.filed, k.clone());
                        }
                        (true, true) if (e.filed >= MAIN) != e.main => {
                            // Moved segment: filed eagerly in the new one.
                            lru.remove(&e.filed);
                            e.filed = e.file_key();
                            lru.insert(e.filed, k.clone());
                        }
                        _ => {}
                    }
                    if let Some(t) = expires_at {
                        ttl.insert((t, k));
                    }
                    Some((old_len, old_slot, old_parent, old_tier, old_disk))
                }
                None => {
                    let key = Bytes::copy_from_slice(&key);
                    let expires_at = opts.ttl_ms.map(|ms| now.saturating_add(ms));
                    let entry = Entry {
                        len,
                        checksum: checksum.unwrap_or(0),
                        checked: checksum.is_some(),
                        parent: opts.parent.clone(),
                        children: Vec::new(),
                        stamp,
                        filed: ((ghost_main as u64) << 63) | stamp,
                        expires_at,
                        pinned: opts.pin,
                        leases: 0,
                        holds: 0,
                        tier,
                        dram_children: 0,
                        written: stamp,
                        held: 0,
                        disk: (tier == TierKind::Ssd).then(|| slot.clone()),
                        slot,
                        main: ghost_main,
                    };
                    if tier == TierKind::Dram && !entry.main {
                        self.probation.fetch_add(charge, Relaxed);
                    }
                    if entry.evictable() {
                        lru.insert(entry.filed, key.clone());
                    }
                    if let Some(t) = expires_at {
                        ttl.insert((t, key.clone()));
                    }
                    map.insert(key, entry);
                    None
                }
            };
        }
        // Settle the reservation: the new version counts in full.
        self.counters(tier)
            .used
            .fetch_add(charge - reserved, Relaxed);
        self.counters(tier).blocks.fetch_add(1, Relaxed);
        if let Some((old_len, old_slot, old_parent, old_tier, old_disk)) = old {
            // A new SSD record supersedes the old one on recovery by itself.
            if tier != TierKind::Ssd {
                self.forget_on_disk(&key, old_disk.as_ref());
            }
            let c = self.counters(old_tier);
            c.used
                .fetch_sub(charge_of(key.len(), old_len as usize), Relaxed);
            c.blocks.fetch_sub(1, Relaxed);
            self.release_slot(old_tier, old_slot);
            if let Some(op) = &old_parent {
                // The old version's link (the new one holds its own).
                self.unlink_child(op, &key, old_tier == TierKind::Dram);
            }
        }
        if let Some(p) = &opts.parent {
            // A concurrent removal of the parent may have run between linking and
            // inserting: if the parent no longer lists us, we are an orphan.
            if !self.index.is_linked(p, &key) {
                self.remove_tree(&key, EventKind::Orphaned);
                return Err(StoreError::NoParent);
            }
        }
        self.emit(EventKind::Stored, &key, tier, opts.parent.as_ref());
        Ok(true)
    }

    /// Undoes a write refused once its bytes were placed: the reservation,
    /// the slot (and its SSD record, which must not come back after a
    /// restart as the newest version, or as a cycle), the hold of the old
    /// version. The caller unlinks the parent.
    #[cold]
    #[inline(never)]
    fn refuse_write(&self, key: &[u8], tier: TierKind, slot: Slot, reserved: u64, held_old: bool) {
        self.counters(tier).used.fetch_sub(reserved, Relaxed);
        if tier == TierKind::Ssd {
            self.forget_on_disk(key, Some(&slot));
        }
        self.release_slot(tier, slot);
        if held_old {
            self.unhold(key);
        }
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

    /// Holds `key`'s DRAM version against eviction (as a lease does) while it is
    /// being replaced; returns its charge, or `None` when there is no DRAM
    /// version to hold.
    fn hold_dram(&self, key: &[u8]) -> Option<u64> {
        let mut shard = self.shard(key);
        let e = shard
            .map
            .get_mut(key)
            .filter(|e| e.tier == TierKind::Dram)?;
        let was = e.evictable();
        e.held += 1;
        let charge = charge_of(key.len(), e.len as usize);
        shard.refile(key, was);
        Some(charge)
    }

    /// Undoes `hold_dram` when the replacement did not happen.
    fn unhold(&self, key: &[u8]) {
        let mut shard = self.shard(key);
        if let Some(e) = shard.map.get_mut(key) {
            let was = e.evictable();
            e.held = e.held.saturating_sub(1);
            shard.refile(key, was);
        }
    }

    fn link_child(&self, parent: &Key, child: &Key, child_in_dram: bool) -> Result<(), StoreError> {
        self.index
            .link_child(parent, child, child_in_dram, self.now_ms())
    }

    fn unlink_child(&self, parent: &Key, child: &Key, child_in_dram: bool) {
        self.index.unlink_child(parent, child, child_in_dram);
    }

    fn child_moved(&self, parent: &Key, into_dram: bool) {
        self.index.child_moved(parent, into_dram);
    }

    /// Whether adding `extra` bytes would take DRAM past its high watermark.
    fn over_high_with(&self, extra: u64) -> bool {
        let high = f64::from_bits(self.watermarks[0].load(Relaxed));
        self.used() + extra > (self.capacity() as f64 * high) as u64
    }

    /// Evicts until usage is under the low watermark if it is over the high one.
    /// Fails when usage still exceeds capacity and nothing more can go.
    fn make_room(&self) -> Result<(), StoreError> {
        self.make_room_for(0)
    }

    /// `make_room` for a write whose `incoming` bytes will join probation
    /// (they count there when the segment to evict from is chosen).
    fn make_room_for(&self, incoming: u64) -> Result<(), StoreError> {
        let cap = self.capacity();
        let (high, low) = self.watermarks();
        let high_b = (cap as f64 * high) as u64;
        if self.used() <= high_b {
            return Ok(());
        }
        let low_b = (cap as f64 * low) as u64;
        let _guard = self.evict_lock.lock();
        let mut heads = Heads::new(&self.index, &*self.policy);
        while self.used() > low_b {
            if !self.evict_one(incoming, &mut heads) {
                if !self.demote_any() {
                    break;
                }
                // It may have left a parent evictable in any shard.
                heads.reset();
            }
        }
        if self.used() > cap {
            return Err(StoreError::OutOfMemory { tier: "dram" });
        }
        Ok(())
    }

    /// Removes the least recently used evictable block. False when there is none.
    fn evict_one(&self, incoming: u64, heads: &mut Heads) -> bool {
        loop {
            let usage = self.usage(incoming);
            let Some(Candidate { stamp, key }) = self.policy.victim(heads, &usage) else {
                return false;
            };
            // Whatever happens next, the victim's shard has a new head.
            heads.changed(&key);
            // Every DRAM victim goes down to SSD when there is one. (Admitting
            // to SSD only blocks in main was tried: on Mooncake's trace with
            // 5,000 DRAM and 20,000 SSD blocks it fell from 0.28 to 0.21.)
            if let Some(ssd) = self.ssd.get() {
                if let Some(parent) = self.demote(ssd, &key, stamp, true) {
                    // A parent with no child left in DRAM is filed now.
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
                    Some(e) if e.stamp == stamp && e.evictable() => shard.take(&key),
                    _ => None, // touched or changed since we looked: pick again
                }
            };
            if let Some((k, e, buried)) = taken {
                self.retain(buried);
                self.dram_counters.evictions.fetch_add(1, Relaxed);
                let charge = charge_of(k.len(), e.len as usize);
                self.policy.on_evict(&k, charge, e.main, &self.usage(0));
                if let Some(p) = &e.parent {
                    heads.changed(p);
                }
                self.remove_taken(k, e, EventKind::Evicted);
                return true;
            }
        }
    }

    /// Moves the DRAM block `key` (if it is still the LRU victim with `stamp`)
    /// to the SSD tier: its DRAM bytes are accounted to SSD at once and queued
    /// for the demotion thread; when the queue is full the block is dropped
    /// instead, and counted. Returns the block's parent (`Some(None)` for a
    /// root), or `None` when the victim changed meanwhile.
    ///
    /// With `leaf_only` false the block may still have children in DRAM (see
    /// `demote_any`).
    fn demote(
        &self,
        ssd: &SsdState,
        key: &Key,
        stamp: u64,
        leaf_only: bool,
    ) -> Option<Option<Key>> {
        let (demotion, charge) = {
            let mut shard = self.shard(key);
            let e = shard.map.get_mut(&key[..])?;
            let movable = e.tier == TierKind::Dram && !e.pinned && e.leases == 0 && e.held == 0;
            if e.stamp != stamp || !movable || (leaf_only && !e.evictable()) {
                return None;
            }
            let was_filed = e.evictable();
            let value = match &e.slot {
                Slot::Memory(b) => b.clone(),
                Slot::Extent { .. } => return None,
            };
            e.tier = TierKind::Ssd;
            let filed = e.filed;
            let d = Demotion {
                key: key.clone(),
                parent: e.parent.clone(),
                value,
                written: e.written,
            };
            let charge = charge_of(key.len(), e.len as usize);
            if !e.main {
                self.probation.fetch_sub(charge, Relaxed);
            }
            if was_filed {
                shard.lru.remove(&filed);
            }
            (d, charge)
        };
        self.dram_counters.used.fetch_sub(charge, Relaxed);
        self.dram_counters.blocks.fetch_sub(1, Relaxed);
        self.dram_counters.evictions.fetch_add(1, Relaxed);
        ssd.counters.used.fetch_add(charge, Relaxed);
        ssd.counters.blocks.fetch_add(1, Relaxed);
        if let Some(p) = &demotion.parent {
            self.child_moved(p, false);
        }
        let parent = demotion.parent.clone();
        self.queue_demotion(ssd, demotion);
        Some(parent)
    }

    /// Hands a demotion to the SSD thread, or holds it until the end of the
    /// batch this thread is in (see [`Store::batch`]). A batch holds at most a
    /// queue's worth: beyond that, what it holds goes now.
    fn queue_demotion(&self, ssd: &SsdState, demotion: Demotion) {
        let me = self as *const Store as usize;
        let held = HELD_DEMOTIONS.with(|h| matches!(&*h.borrow(), Some((s, _)) if *s == me));
        if !held {
            self.send_demotion(ssd, demotion);
            return;
        }
        let full = HELD_DEMOTIONS.with(|h| {
            let mut h = h.borrow_mut();
            let (_, jobs) = h.as_mut().expect("checked above");
            jobs.push(demotion);
            (jobs.len() > ssd.settings.queue).then(|| std::mem::take(jobs))
        });
        for d in full.into_iter().flatten() {
            self.send_demotion(ssd, d);
        }
    }

    fn send_demotion(&self, ssd: &SsdState, demotion: Demotion) {
        let key = demotion.key.clone();
        ssd.pending.fetch_add(1, Relaxed);
        match ssd.queue.try_send(SsdJob::Demote(demotion)) {
            Ok(()) => {
                self.dram_counters.demotions.fetch_add(1, Relaxed);
            }
            Err(_) => {
                // The SSD is behind: drop rather than stall the writer.
                ssd.pending.fetch_sub(1, Relaxed);
                ssd.dropped.fetch_add(1, Relaxed);
                self.remove_tree(&key, EventKind::Evicted);
            }
        }
    }

    /// Runs `f` (several puts: one command's) with the SSD thread's part held
    /// back until it ends: the demotions `f` causes are queued together, in
    /// the order they happened, when `f` returns. So the segment reclaims
    /// those writes cause land after the batch, not at some point inside it
    /// that depends on how fast the SSD thread is (a `KV.MPUT` behaves the
    /// same from run to run). Blocks held back are readable from memory
    /// meanwhile, as queued ones are. Nested batches join the outer one.
    pub fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Release<'a>(&'a Store);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let held = HELD_DEMOTIONS.with(|h| h.borrow_mut().take());
                if let (Some((_, jobs)), Some(ssd)) = (held, self.0.ssd.get()) {
                    for d in jobs {
                        self.0.send_demotion(ssd, d);
                    }
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

    /// When every DRAM block has a child in DRAM (one chain longer than DRAM),
    /// no leaf can go: with an SSD tier the least recently used unpinned block
    /// is demoted anyway (it stays stored, so chains stay whole). A scan of every
    /// shard, but only in that corner. False without an SSD tier or a candidate.
    fn demote_any(&self) -> bool {
        let Some(ssd) = self.ssd.get() else {
            return false;
        };
        loop {
            let mut best: Option<(u64, Key)> = None;
            for s in self.index.shards() {
                let s = s.lock();
                for (k, e) in s.map.iter() {
                    let movable =
                        e.tier == TierKind::Dram && !e.pinned && e.leases == 0 && e.held == 0;
                    if movable && best.as_ref().is_none_or(|(b, _)| e.stamp < *b) {
                        best = Some((e.stamp, k.clone()));
                    }
                }
            }
            let Some((stamp, key)) = best else {
                return false;
            };
            if self.demote(ssd, &key, stamp, false).is_some() {
                return true;
            }
        }
    }

    /// Takes a removed entry out of the accounting (and its SSD record out of
    /// recovery).
    fn uncount(&self, key: &[u8], e: &Entry) {
        self.forget_on_disk(key, e.disk.as_ref());
        let c = self.counters(e.tier);
        let charge = charge_of(key.len(), e.len as usize);
        c.used.fetch_sub(charge, Relaxed);
        if e.tier == TierKind::Dram && !e.main {
            self.probation.fetch_sub(charge, Relaxed);
        }
        c.blocks.fetch_sub(1, Relaxed);
    }

    /// Accounting, parent unlinking and the event for an entry already taken out
    /// of its shard. Returns its children (for cascades).
    fn finish_removal(&self, key: Key, e: Entry, kind: EventKind) -> Vec<Key> {
        self.uncount(&key, &e);
        self.release_slot(e.tier, e.slot);
        if let Some(p) = &e.parent {
            self.unlink_child(p, &key, e.tier == TierKind::Dram);
        }
        self.emit(kind, &key, e.tier, e.parent.as_ref());
        e.children
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
        let mut stack = self.finish_removal(k, e, kind);
        while let Some(child) = stack.pop() {
            // Bind first: a temporary guard in an `if let` scrutinee would stay
            // locked for the whole block.
            let taken = self.shard(&child).take(&child);
            if let Some((k, e, buried)) = taken {
                self.retain(buried);
                stack.extend(self.finish_removal(k, e, EventKind::Orphaned));
            }
        }
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
            let stamp = self.tick_clock();
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
    /// a block on SSD is `Fetch::Device`, for the caller to `get` where blocking
    /// is allowed.
    pub fn fetch_memory(&self, key: &[u8]) -> Fetch {
        let found = self.with_live(key, false, |shard, k| {
            let e = shard.map.get_mut(k).expect("present");
            match &e.slot {
                Slot::Memory(b) => {
                    let found = (b.clone(), e.tier);
                    // The access, under the same lock (see `Shard::restamp`).
                    e.stamp = self.tick_clock();
                    Some(found)
                }
                Slot::Extent { .. } => None,
            }
        });
        match found {
            None => {
                self.dram_counters.misses.fetch_add(1, Relaxed);
                Fetch::Missing
            }
            Some(None) => Fetch::Device,
            Some(Some((b, tier))) => {
                self.counters(tier).hits.fetch_add(1, Relaxed);
                Fetch::Memory(b)
            }
        }
    }

    /// Reads a block, refreshing its recency. `None` is a miss.
    ///
    /// A block on SSD is read from the device (blocking: async callers MUST call
    /// this off their runtime's workers when an SSD tier is attached) and, by
    /// default, promoted back to DRAM.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        let found = self.read_entry(key, true, |e| (e.slot.clone(), e.tier, e.written));
        let Some((slot, tier, written)) = found else {
            self.dram_counters.misses.fetch_add(1, Relaxed);
            return None;
        };
        let ssd = match (&slot, self.ssd.get()) {
            (Slot::Extent { .. }, Some(ssd)) => ssd,
            _ => {
                // In memory: a DRAM block, or one still on its way to SSD.
                return match self.dram.load(key, &slot) {
                    Load::Hit(b) => {
                        self.counters(tier).hits.fetch_add(1, Relaxed);
                        Some(b)
                    }
                    Load::Miss | Load::Corrupt => {
                        self.counters(tier).misses.fetch_add(1, Relaxed);
                        None
                    }
                };
            }
        };
        match ssd.tier.load(key, &slot) {
            Load::Hit(b) => {
                ssd.counters.hits.fetch_add(1, Relaxed);
                if ssd.settings.promote {
                    self.promote(key, &b, written, &slot);
                }
                Some(b)
            }
            Load::Miss | Load::Corrupt => {
                // Reclaimed or corrupt on the device: never served; forget it.
                ssd.counters.misses.fetch_add(1, Relaxed);
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
    /// on SSD, as [`Store::get`].
    pub fn get_del(&self, key: &[u8]) -> Option<Bytes> {
        loop {
            let (slot, written) = self.read_entry(key, false, |e| (e.slot.clone(), e.written))?;
            let value = match (&slot, self.ssd.get()) {
                (Slot::Extent { .. }, Some(ssd)) => match ssd.tier.load(key, &slot) {
                    Load::Hit(b) => Some(b),
                    Load::Miss | Load::Corrupt => None,
                },
                _ => match self.dram.load(key, &slot) {
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
                self.dram_counters.hits.fetch_add(1, Relaxed);
            }
            return value;
        }
    }

    /// Moves a block just read from SSD back into DRAM, unless DRAM has no room
    /// or the block changed meanwhile.
    /// Whether it moved.
    fn promote(&self, key: &[u8], value: &Bytes, written: u64, slot: &Slot) -> bool {
        let Some(ssd) = self.ssd.get() else {
            return false;
        };
        let charge = charge_of(key.len(), value.len());
        if charge > self.capacity() {
            return false;
        }
        self.dram_counters.used.fetch_add(charge, Relaxed);
        if self.make_room().is_err() {
            self.dram_counters.used.fetch_sub(charge, Relaxed);
            return false;
        }
        let checksum = self.dram_checksums.then(|| checksum(value));
        let promoted = {
            let mut shard = self.shard(key);
            let stamp = self.tick_clock();
            let Shard { map, lru, .. } = &mut *shard;
            match map.get_key_value_mut(key) {
                Some((k, e))
                    if e.written == written && e.tier == TierKind::Ssd && e.slot == *slot =>
                {
                    e.slot = Slot::Memory(value.clone());
                    e.tier = TierKind::Dram;
                    e.checksum = checksum.unwrap_or(0);
                    e.checked = checksum.is_some();
                    e.stamp = stamp;
                    if !e.main {
                        self.probation.fetch_add(charge, Relaxed);
                    }
                    if e.evictable() {
                        e.filed = e.file_key();
                        lru.insert(e.filed, k.clone());
                    }
                    Some(e.parent.clone())
                }
                _ => None,
            }
        };
        match promoted {
            Some(parent) => {
                ssd.counters.used.fetch_sub(charge, Relaxed);
                ssd.counters.blocks.fetch_sub(1, Relaxed);
                self.dram_counters.blocks.fetch_add(1, Relaxed);
                self.dram_counters.promotions.fetch_add(1, Relaxed);
                if let Some(p) = parent {
                    self.child_moved(&p, true);
                }
                true
            }
            None => {
                self.dram_counters.used.fetch_sub(charge, Relaxed);
                false
            }
        }
    }

    /// Reads a block and checks it against its checksum; a corrupt block is
    /// dropped (with the blocks chained under it). `None`: no such block.
    pub fn verify(&self, key: &[u8]) -> Option<Verified> {
        let (slot, sum) = self.read_entry(key, false, |e| {
            (e.slot.clone(), e.checked.then_some(e.checksum))
        })?;
        let ok = match (&slot, self.ssd.get()) {
            // The SSD tier checks its own record checksums on every read.
            (Slot::Extent { .. }, Some(ssd)) => match ssd.tier.load(key, &slot) {
                Load::Hit(_) => true,
                Load::Corrupt => false,
                Load::Miss => {
                    // Its segment was reclaimed: evicted, as the store is
                    // about to learn. Not corrupt; no longer stored.
                    let unchanged = self.shard(key).map.get(key).is_some_and(|e| e.slot == slot);
                    if unchanged {
                        self.remove_tree(key, EventKind::Evicted);
                    }
                    return None;
                }
            },
            _ => match (self.dram.load(key, &slot), sum) {
                (Load::Hit(_), None) => return Some(Verified::Unchecked),
                (Load::Hit(b), Some(sum)) => checksum(&b) == sum,
                (_, _) => false,
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
        self.read_entry(key, false, |e| e.tier)
    }

    /// What is known of a block, without touching its recency.
    pub fn meta(&self, key: &[u8]) -> Option<BlockMeta> {
        self.read_entry(key, false, |e| BlockMeta {
            len: e.len,
            charge: 0,
            tier: e.tier,
            expires_at: e.expires_at,
            pinned: e.pinned,
            leases: e.leases,
            children: e.children.len(),
            parent: e.parent.clone(),
        })
        .map(|mut m| {
            m.charge = charge_of(key.len(), m.len as usize);
            m
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
        let ids = self
            .policy
            .on_match(queried, &|i| items[i].as_ref(), &self.usage(0));
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
            let (matched, tiers) =
                self.match_once(&items, &hashed, &order, first, &mut expired, &mut stage);
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
        let mut tiers = vec![TierKind::Dram; end];
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
                tiers[i] = e.tier;
                if e.tier == TierKind::Ssd && self.near_reclaim(&e.slot) {
                    stage.push((i, e.slot.clone(), e.written));
                }
                if !e.main && self.policy.on_access(false) {
                    let moved = guard.promote_main(k);
                    self.probation.fetch_sub(moved, Relaxed);
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

    /// Whether a matched block is on SSD near the log's reclaim end, to be
    /// staged back to DRAM.
    fn near_reclaim(&self, slot: &Slot) -> bool {
        match (slot, self.ssd.get()) {
            (Slot::Extent { offset, .. }, Some(s)) if s.settings.stage_on_match => {
                let log = s.tier.log();
                (log.opens_until_reclaim(*offset) as f64)
                    < s.settings.stage_window * log.segments() as f64
            }
            _ => false,
        }
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
        first: u64,
        expired: &mut Vec<usize>,
        stage: &mut Vec<(usize, Slot, u64)>,
    ) -> (usize, Vec<TierKind>) {
        let mut end = items.len();
        let mut tiers = vec![TierKind::Dram; items.len()];
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
            tiers[i] = e.tier;
            if e.tier == TierKind::Ssd && self.near_reclaim(&e.slot) {
                stage.push((i, e.slot.clone(), e.written));
            }
            if !e.main && self.policy.on_access(false) {
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
            self.probation.fetch_sub(moved, Relaxed);
        }
        (end, tiers)
    }

    /// The end of a match: expired keys removed, blocks staged, counters,
    /// the lease (its time and the indices of the keys it holds).
    fn finish_match<K: AsRef<[u8]>>(
        &self,
        items: Vec<K>,
        matched: usize,
        mut tiers: Vec<TierKind>,
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
        out.tiers = tiers;
        out.matched = matched;
        self.matches.fetch_add(1, Relaxed);
        self.keys_queried.fetch_add(queried as u64, Relaxed);
        self.keys_matched.fetch_add(out.matched as u64, Relaxed);
        // Nothing matched, nothing to hold: no lease to give back.
        if let Some((ms, mut leased)) = lease.filter(|(_, l)| !l.is_empty()) {
            let lease = Lease {
                held: Vec::new(),
                deadline: self.now_ms().saturating_add(ms),
                // Exactly the keys whose lease count went up (a key removed
                // between the passes may leave the prefix shorter).
                keys: {
                    leased.sort_unstable();
                    leased
                        .iter()
                        .map(|&i| Bytes::copy_from_slice(items[i].as_ref()))
                        .collect()
                },
            };
            out.lease = Some(self.leases.insert(lease));
        }
        out
    }

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
        let lease = Lease {
            held: Vec::new(),
            deadline: self.now_ms().saturating_add(lease_ms),
            keys: held,
        };
        (self.leases.insert(lease), n)
    }

    /// Evicts least recently used DRAM blocks until at least `bytes` were
    /// freed (or nothing more can go), for memory the store does not account
    /// itself (room in the shared arena for a reservation). Returns the bytes
    /// freed.
    pub fn shed(&self, bytes: u64) -> u64 {
        let before = self.used();
        let target = before.saturating_sub(bytes);
        let _guard = self.evict_lock.lock();
        let mut heads = Heads::new(&self.index, &*self.policy);
        while self.used() > target {
            if !self.evict_one(0, &mut heads) {
                if !self.demote_any() {
                    break;
                }
                // It may have left a parent evictable in any shard.
                heads.reset();
            }
        }
        before.saturating_sub(self.used())
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

    fn drop_lease(&self, l: Lease) {
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
            let _ = self.make_room();
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
        for i in 0..SHARDS {
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

    /// Leases held now (given by `match_prefix` with a lease and `lease`,
    /// neither released nor expired).
    pub fn live_leases(&self) -> u64 {
        self.leases.live()
    }

    /// Number of blocks stored.
    pub fn len(&self) -> usize {
        let ssd = self
            .ssd
            .get()
            .map_or(0, |s| s.counters.blocks.load(Relaxed));
        (self.dram_counters.blocks.load(Relaxed) + ssd) as usize
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes everything (leases included).
    pub fn flush(&self) {
        self.leases.clear();
        self.policy.clear();
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
                self.emit(EventKind::Deleted, &k, e.tier, e.parent.as_ref());
                self.release_slot(e.tier, e.slot);
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
        let snapshot = |kind: TierKind, c: &TierCounters| TierStats {
            kind: Some(kind),
            capacity: c.capacity.load(Relaxed),
            used: c.used.load(Relaxed),
            blocks: c.blocks.load(Relaxed),
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            demotions: c.demotions.load(Relaxed),
            promotions: c.promotions.load(Relaxed),
        };
        let mut tiers = vec![snapshot(TierKind::Dram, &self.dram_counters)];
        let ssd = self.ssd.get().map(|s| {
            tiers.push(snapshot(TierKind::Ssd, &s.counters));
            let log = s.tier.log();
            SsdStats {
                segments: log.segments() as u64,
                segments_used: log.used_segments() as u64,
                segment_size: log.segment_size(),
                dropped_demotions: s.dropped.load(Relaxed),
                staged: s.staged.load(Relaxed),
                pending_demotions: s.pending.load(Relaxed),
                checksum_failures: log.stats.checksum_failures.load(Relaxed),
                segments_without_space: log.unbacked_segments() as u64,
                no_space_errors: log.stats.no_space.load(Relaxed),
                syncs: log.stats.syncs.load(Relaxed),
                engine: log.engine_name(),
                direct: log.is_direct(),
            }
        });
        StoreStats {
            tiers,
            ssd,
            matches: self.matches.load(Relaxed),
            keys_queried: self.keys_queried.load(Relaxed),
            keys_matched: self.keys_matched.load(Relaxed),
            leases: self.leases.counted(),
            expired: self.expired.load(Relaxed),
            with_ttl: self.index.with_ttl(),
        }
    }

    /// Zeroes the hit, miss and match counters (CONFIG RESETSTAT).
    pub fn reset_stats(&self) {
        for c in [
            &self.dram_counters.hits,
            &self.dram_counters.misses,
            &self.dram_counters.evictions,
            &self.dram_counters.demotions,
            &self.dram_counters.promotions,
            &self.matches,
            &self.expired,
            &self.keys_queried,
            &self.keys_matched,
        ] {
            c.store(0, Relaxed);
        }
    }

    /// Checks the internal invariants (for tests): accounting matches contents,
    /// every parent of a stored block is stored and lists it, LRU indexes hold
    /// exactly the evictable entries.
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
        if sums.probation != self.probation.load(Relaxed) {
            return Err(format!(
                "probation accounted {} but entries sum to {}",
                self.probation.load(Relaxed),
                sums.probation
            ));
        }
        if self.eviction() == Eviction::Lru && sums.main > 0 {
            return Err("a block in main under lru".into());
        }
        if sums.dram + sums.retained != self.used() {
            return Err(format!(
                "accounted {} but entries sum to {} and retained values to {}",
                self.used(),
                sums.dram,
                sums.retained
            ));
        }
        if sums.retained != self.retained() {
            return Err(format!(
                "retained {} but held values sum to {}",
                self.retained(),
                sums.retained
            ));
        }
        let ssd_accounted = self.ssd.get().map_or(0, |s| s.counters.used.load(Relaxed));
        if sums.ssd != ssd_accounted {
            return Err(format!(
                "SSD accounted {ssd_accounted} but entries sum to {}",
                sums.ssd
            ));
        }
        if sums.blocks != self.len() {
            return Err(format!(
                "block counter {} but {} entries",
                self.len(),
                sums.blocks
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
