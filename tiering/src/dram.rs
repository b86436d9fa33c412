//! The DRAM tier: block bytes in host memory.
//!
//! It keeps the `Bytes` it is given. The store hands it values that own their
//! allocation (it copies views into larger buffers first; see
//! `PutOptions::value_exclusive`), so what is held is what is accounted.

use bytes::Bytes;

use crate::tier::{Load, Slot, Tier, TierError, TierKind};

/// Host-memory tier.
#[derive(Debug, Default)]
pub struct DramTier;

impl Tier for DramTier {
    fn kind(&self) -> TierKind {
        TierKind::Dram
    }

    fn store(&self, _key: &[u8], _parent: Option<&[u8]>, value: Bytes) -> Result<Slot, TierError> {
        Ok(Slot::Memory(value))
    }

    fn load(&self, _key: &[u8], slot: &Slot) -> Load {
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
    fn store_keeps_what_it_is_given() {
        let v = Bytes::from(vec![1u8; 4096]);
        let slot = DramTier.store(b"k", None, v.clone()).unwrap();
        match DramTier.load(b"k", &slot) {
            Load::Hit(b) => assert_eq!(b.as_ptr(), v.as_ptr()),
            Load::Miss | Load::Corrupt => panic!("miss"),
        }
    }
}
