//! The store's settings, options and answers.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::eviction::Eviction;
use crate::stack::{SsdStats, TierStats};
use crate::tier::TierKind;

/// Settings of a store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreConfig {
    /// Capacity in bytes (keys + values + per-block overhead) of the DRAM
    /// level a store gets when it is built without tiers ([`Store::new`](crate::Store::new),
    /// or [`crate::StoreBuilder`] with no `with_tier`). Default: 1 GiB.
    pub dram_capacity: u64,
    /// Fraction of a memory level's capacity above which a write starts
    /// evicting from it. Default: 0.95.
    pub high_watermark: f64,
    /// Fraction of capacity eviction brings usage back under. Default: 0.90.
    pub low_watermark: f64,
    /// How a memory level picks its victims, unless its
    /// [`crate::TierSpec`] says. Default: [`Eviction::Lru`].
    pub eviction: Eviction,
    /// Checksum every block stored in memory (XXH3-64, kept for
    /// [`Store::verify`](crate::Store::verify)). Without, a block in memory carries a checksum
    /// only when the caller brought one ([`PutOptions::checksum`]: a shm
    /// client hashes its blocks as it copies them); blocks on a device
    /// always carry their records' own. Default: true.
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
    /// wrong one makes [`Store::verify`](crate::Store::verify) find the block corrupt.
    pub checksum: Option<u64>,
}

/// What [`Store::verify`](crate::Store::verify) found.
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

/// What [`Store::fetch_memory`](crate::Store::fetch_memory) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// The bytes, from memory.
    Memory(Bytes),
    /// Not stored.
    Missing,
    /// Stored on a device: reading it blocks.
    Device,
}

/// Allocates memory for a value and copies it in (the server puts values in
/// its shared arena: memory it already has, and where shm readers find them);
/// `None` when it cannot, and the value goes to the heap.
pub type ValueAlloc = Arc<dyn Fn(&[u8]) -> Option<Bytes> + Send + Sync>;

/// Values from this size on are copied through the [`ValueAlloc`] (its
/// allocations are whole 4 KiB pages: smaller ones would waste too much).
pub const VALUE_ALLOC_MIN: usize = 64 * 1024;

/// Source of the current Unix time in milliseconds (injectable for tests).
pub type ClockFn = Arc<dyn Fn() -> u64 + Send + Sync>;

pub(crate) fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
