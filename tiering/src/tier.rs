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
    /// A record on a device or file, for tiers that are not addressable memory.
    Extent {
        /// Byte offset of the record.
        offset: u64,
        /// Length of the record on the device.
        len: u64,
        /// Write sequence number, told apart from a later record at the same place.
        seq: u64,
    },
}

/// Outcome of a read: a miss is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Load {
    /// The bytes.
    Hit(Bytes),
    /// The tier no longer has them.
    Miss,
    /// The tier has them but they failed its checks: never served.
    Corrupt,
}

/// A block whose bytes a tier dropped on its own to make room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// Its key.
    pub key: Bytes,
    /// The slot that no longer holds it (an entry pointing elsewhere, after an
    /// overwrite, is unaffected).
    pub slot: Slot,
}

/// How the store treats a tier's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Bytes in memory, readable without I/O: the store accounts the
    /// level's room itself and evicts from it by its eviction policy;
    /// blocks move in and out of it inline.
    Memory,
    /// Bytes on a device: `store`, `load` and `sync` block, so blocks move
    /// into the level on a worker thread; the tier reclaims its own space
    /// (see [`Tier::take_reclaimed`]) and blocks read from it are promoted
    /// to the level above.
    Device,
}

/// A block a persistent tier found on its device when it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Its key.
    pub key: Bytes,
    /// The previous block of its chain, as it was written.
    pub parent: Option<Bytes>,
    /// Its value's length.
    pub len: u64,
    /// Where it is.
    pub slot: Slot,
}

/// The figures of a tier that keeps a log of segments on a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFigures {
    /// Segments in all.
    pub segments: u64,
    /// Segments holding data.
    pub segments_used: u64,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Records that failed their checksum on read.
    pub checksum_failures: u64,
    /// Segments out of the rotation for want of space on the file system.
    pub segments_without_space: u64,
    /// Writes the file system refused for want of space.
    pub no_space_errors: u64,
    /// Flushes to stable storage.
    pub syncs: u64,
    /// Records appended.
    pub appends: u64,
    /// I/O engine.
    pub engine: &'static str,
    /// Whether the device is opened with O_DIRECT.
    pub direct: bool,
}

/// Why a tier could not store a block.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// The block cannot fit in the tier at all.
    #[error("block of {0} bytes does not fit in this tier")]
    TooBig(u64),
    /// The device failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A tier holds block bytes. Implementations MUST be safe to call from many
/// threads at once. Tiers backed by a device block in `store`, `load` and `sync`:
/// callers MUST NOT call those from an async runtime's worker threads.
pub trait Tier: Send + Sync + 'static {
    /// Which tier this is.
    fn kind(&self) -> TierKind;

    /// Holds `value` for `key`. `parent` is the previous block of its chain:
    /// persistent tiers keep it so that recovery restores chains. The store has
    /// already reserved room in its accounting for memory tiers; device tiers
    /// reclaim their own space (see `take_reclaimed`).
    fn store(&self, key: &[u8], parent: Option<&[u8]>, value: Bytes) -> Result<Slot, TierError>;

    /// Reads back `key`'s bytes from a slot returned by `store`. A slot whose
    /// bytes were reclaimed, overwritten or fail their checksum is a `Miss`.
    fn load(&self, key: &[u8], slot: &Slot) -> Load;

    /// Gives a slot up. The caller MUST NOT use it afterwards.
    fn release(&self, slot: Slot);

    /// Says that the block stored in `slot` for `key` is deleted or replaced, so
    /// that a persistent tier does not bring it back after a restart. Default:
    /// nothing to do.
    fn forget(&self, key: &[u8], slot: &Slot) -> Result<(), TierError> {
        let _ = (key, slot);
        Ok(())
    }

    /// Makes everything stored so far durable. Default: nothing to do.
    fn sync(&self) -> Result<(), TierError> {
        Ok(())
    }

    /// Blocks whose bytes the tier dropped on its own to make room since the
    /// last call (an SSD tier reclaims whole segments). Default: none.
    fn take_reclaimed(&self) -> Vec<Reclaimed> {
        Vec::new()
    }

    /// How the store treats the tier. Default: [`Placement::Memory`].
    fn placement(&self) -> Placement {
        Placement::Memory
    }

    /// For a tier that reclaims its own space: how much of it is written
    /// before `slot`'s bytes are reclaimed, as a share of the whole (0:
    /// next in line). Default: `None` (the store decides when bytes go).
    fn reclaim_horizon(&self, slot: &Slot) -> Option<f64> {
        let _ = slot;
        None
    }

    /// The figures of a log-structured tier, for INFO. Default: `None`.
    fn log_figures(&self) -> Option<LogFigures> {
        None
    }
}
