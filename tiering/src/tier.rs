//! The tier trait: where block bytes live.
//!
//! The store keeps the index (keys, chains, LRU order, accounting) and asks a
//! tier only to hold bytes: `store` returns a [`Slot`], `load` reads it back,
//! `release` gives it up. A new tier (SSD, GPU) implements this trait and the
//! callers of the store do not change.

use bytes::Bytes;

/// The tiers, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TierKind {
    /// Device memory.
    Gpu,
    /// Host memory.
    Dram,
    /// Local or remote flash.
    Ssd,
}

impl TierKind {
    /// The lower-case name used in replies, INFO and config.
    pub fn as_str(self) -> &'static str {
        match self {
            TierKind::Gpu => "gpu",
            TierKind::Dram => "dram",
            TierKind::Ssd => "ssd",
        }
    }
}

/// Where a tier put a block's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Bytes held in host memory.
    Memory(Bytes),
    /// An extent of a device or file, for tiers that are not addressable memory.
    Extent {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// Outcome of a read: a miss is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Load {
    /// The bytes.
    Hit(Bytes),
    /// The tier no longer has them (or they failed their checksum).
    Miss,
}

/// A tier holds block bytes. Implementations MUST be safe to call from many
/// threads at once and MUST NOT block for long in `store`/`load`/`release` when
/// called from the request path.
pub trait Tier: Send + Sync + 'static {
    /// Which tier this is.
    fn kind(&self) -> TierKind;

    /// Holds `value` for `key`. The store has already reserved room in its
    /// accounting, so this MUST NOT fail for lack of space it was told about.
    fn store(&self, key: &[u8], value: Bytes) -> Slot;

    /// Reads a slot returned by `store`.
    fn load(&self, slot: &Slot) -> Load;

    /// Gives a slot up. The caller MUST NOT use it afterwards.
    fn release(&self, slot: Slot);
}
