//! The DRAM tier: block bytes in host memory.
//!
//! Each block gets its own exact-size allocation: a value handed in by the
//! network layer is usually a view into a larger read buffer, and keeping that
//! view would pin the whole buffer and make accounting lie.

use bytes::Bytes;

use crate::tier::{Load, Slot, Tier, TierKind};

/// Host-memory tier.
#[derive(Debug, Default)]
pub struct DramTier;

impl Tier for DramTier {
    fn kind(&self) -> TierKind {
        TierKind::Dram
    }

    fn store(&self, _key: &[u8], value: Bytes) -> Slot {
        Slot::Memory(Bytes::copy_from_slice(&value))
    }

    fn load(&self, slot: &Slot) -> Load {
        match slot {
            Slot::Memory(b) => Load::Hit(b.clone()),
            Slot::Extent { .. } => Load::Miss,
        }
    }

    fn release(&self, _slot: Slot) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_copies_out_of_shared_buffers() {
        let big = Bytes::from(vec![1u8; 4096]);
        let view = big.slice(10..20);
        let slot = DramTier.store(b"k", view.clone());
        match DramTier.load(&slot) {
            Load::Hit(b) => {
                assert_eq!(b, view);
                assert_ne!(b.as_ptr(), view.as_ptr());
            }
            Load::Miss => panic!("miss"),
        }
    }
}
