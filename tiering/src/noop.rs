//! The smallest tier: a skeleton to copy when adding one, and a stand-in
//! for a tier this machine cannot run (the GPU tier's place above DRAM, in
//! tests of that shape).
//!
//! A tier needs only `kind`, `store`, `load` and `release`; the rest of
//! [`Tier`] has defaults for a tier in memory. This one keeps the bytes it
//! is given in host memory, through the DRAM tier, and says it is whichever
//! kind it stands in for.

use bytes::Bytes;

use crate::dram::DramTier;
use crate::tier::{Load, Slot, Tier, TierError, TierKind};

/// A memory tier standing in for another kind.
#[derive(Debug, Clone, Copy)]
pub struct StandInTier {
    kind: TierKind,
}

impl StandInTier {
    /// A stand-in for a tier of `kind`.
    pub fn new(kind: TierKind) -> StandInTier {
        StandInTier { kind }
    }
}

impl Tier for StandInTier {
    fn kind(&self) -> TierKind {
        self.kind
    }

    fn store(&self, key: &[u8], parent: Option<&[u8]>, value: Bytes) -> Result<Slot, TierError> {
        DramTier.store(key, parent, value)
    }

    fn load(&self, key: &[u8], slot: &Slot) -> Load {
        DramTier.load(key, slot)
    }

    fn release(&self, _slot: Slot) {}
}
