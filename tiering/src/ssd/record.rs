//! On-disk record format of the SSD tier.
//!
//! A record is a 48-byte header, the key, the parent key (the previous block of
//! its chain, so that recovery restores chains), the value, and zero padding up
//! to a multiple of 4 KiB, so records can be written and read with direct I/O:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TPR1` (0x54 0x50 0x52 0x31) |
//! | 4 | 2 | format version (1), little-endian like every field |
//! | 6 | 2 | flags: bit 0 set when the block has a parent; bit 1 set for a tombstone |
//! | 8 | 4 | key length |
//! | 12 | 4 | parent key length (0 without a parent) |
//! | 16 | 8 | value length |
//! | 24 | 8 | sequence number (grows with every write; the newest copy of a key wins on recovery) |
//! | 32 | 8 | XXH3-64 of key ‖ parent ‖ value |
//! | 40 | 8 | XXH3-64 of header bytes 0..40 |
//!
//! A tombstone (flag bit 1) carries no block: its value is the 8-byte
//! little-endian sequence number of the newest record of its key that it
//! cancels (a deleted or superseded block must not come back on recovery).
//!
//! A torn write (crash mid-record) leaves a header whose checksum fails or a
//! body whose checksum fails: either way the record is not served, and recovery
//! stops reading its segment there.

use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use crate::io::{round_up, AlignedBuf};

/// Magic at the start of every record.
pub const MAGIC: [u8; 4] = *b"TPR1";
/// Format version written by this code.
pub const VERSION: u16 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 48;
/// Longest key (or parent key) the format takes.
pub const MAX_KEY_LEN: usize = 64 * 1024;
/// Flag: the record names a parent.
const HAS_PARENT: u16 = 1;
/// Flag: the record is a tombstone.
const TOMBSTONE: u16 = 2;

/// A decoded, checksum-verified header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Key length.
    pub key_len: u32,
    /// Parent key length, when the block has a parent.
    pub parent_len: Option<u32>,
    /// A tombstone rather than a block.
    pub tombstone: bool,
    /// Value length.
    pub value_len: u64,
    /// Sequence number.
    pub seq: u64,
    /// XXH3-64 of key ‖ parent ‖ value.
    pub body_checksum: u64,
}

impl Header {
    /// Bytes the whole record takes on disk, padding included.
    pub fn record_len(&self) -> u64 {
        let keys = self.key_len as usize + self.parent_len.unwrap_or(0) as usize;
        record_len(keys, self.value_len as usize)
    }
}

/// Bytes a record takes on disk, for key and parent of `keys_len` bytes in all
/// and a value of `value_len` bytes.
pub fn record_len(keys_len: usize, value_len: usize) -> u64 {
    round_up(HEADER_LEN + keys_len + value_len) as u64
}

/// A decoded record body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The parent key.
    pub parent: Option<&'a [u8]>,
    /// The value.
    pub value: &'a [u8],
}

fn body_checksum(key: &[u8], parent: &[u8], value: &[u8]) -> u64 {
    let mut h = Xxh3Default::new();
    h.update(key);
    h.update(parent);
    h.update(value);
    h.digest()
}

/// Encodes a record into an aligned buffer ready for one direct write.
pub fn encode(key: &[u8], parent: Option<&[u8]>, value: &[u8], seq: u64) -> AlignedBuf {
    encode_with(key, parent, value, seq, 0)
}

/// Encodes a tombstone cancelling `key`'s records up to sequence `cancels`.
pub fn encode_tombstone(key: &[u8], cancels: u64, seq: u64) -> AlignedBuf {
    encode_with(key, None, &cancels.to_le_bytes(), seq, TOMBSTONE)
}

/// The sequence number a tombstone's value cancels.
pub fn tombstone_target(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.try_into().ok()?))
}

fn encode_with(
    key: &[u8],
    parent: Option<&[u8]>,
    value: &[u8],
    seq: u64,
    extra: u16,
) -> AlignedBuf {
    let p = parent.unwrap_or(&[]);
    assert!(
        key.len() <= MAX_KEY_LEN && p.len() <= MAX_KEY_LEN,
        "key longer than the record format takes"
    );
    let mut buf = AlignedBuf::zeroed(HEADER_LEN + key.len() + p.len() + value.len());
    buf[0..4].copy_from_slice(&MAGIC);
    buf[4..6].copy_from_slice(&VERSION.to_le_bytes());
    let flags = if parent.is_some() { HAS_PARENT } else { 0 } | extra;
    buf[6..8].copy_from_slice(&flags.to_le_bytes());
    buf[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
    buf[12..16].copy_from_slice(&(p.len() as u32).to_le_bytes());
    buf[16..24].copy_from_slice(&(value.len() as u64).to_le_bytes());
    buf[24..32].copy_from_slice(&seq.to_le_bytes());
    buf[32..40].copy_from_slice(&body_checksum(key, p, value).to_le_bytes());
    let hsum = xxh3_64(&buf[0..40]);
    buf[40..48].copy_from_slice(&hsum.to_le_bytes());
    let mut at = HEADER_LEN;
    for part in [key, p, value] {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    buf
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes and verifies a header; `None` for anything that is not an intact
/// header of this format (zeroes, garbage, a torn write, another version).
pub fn decode_header(b: &[u8]) -> Option<Header> {
    if b.len() < HEADER_LEN || b[0..4] != MAGIC {
        return None;
    }
    if xxh3_64(&b[0..40]) != u64_at(b, 40) {
        return None;
    }
    if u16::from_le_bytes([b[4], b[5]]) != VERSION {
        return None;
    }
    let flags = u16::from_le_bytes([b[6], b[7]]);
    let (key_len, parent_len) = (u32_at(b, 8), u32_at(b, 12));
    if key_len as usize > MAX_KEY_LEN || parent_len as usize > MAX_KEY_LEN {
        return None;
    }
    if flags & HAS_PARENT == 0 && parent_len != 0 {
        return None;
    }
    Some(Header {
        key_len,
        parent_len: (flags & HAS_PARENT != 0).then_some(parent_len),
        tombstone: flags & TOMBSTONE != 0,
        value_len: u64_at(b, 16),
        seq: u64_at(b, 24),
        body_checksum: u64_at(b, 32),
    })
}

/// Splits a whole record (header included) into key, parent and value after
/// checking the body checksum; `None` when the body is corrupt or short.
pub fn decode_body<'a>(h: &Header, record: &'a [u8]) -> Option<Body<'a>> {
    let k_end = HEADER_LEN + h.key_len as usize;
    let p_end = k_end + h.parent_len.unwrap_or(0) as usize;
    let v_end = p_end.checked_add(usize::try_from(h.value_len).ok()?)?;
    if record.len() < v_end {
        return None;
    }
    let (key, parent, value) = (
        &record[HEADER_LEN..k_end],
        &record[k_end..p_end],
        &record[p_end..v_end],
    );
    (body_checksum(key, parent, value) == h.body_checksum).then_some(Body {
        key,
        parent: h.parent_len.map(|_| parent),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_alignment() {
        let rec = encode(b"key", None, b"value", 7);
        assert_eq!(rec.len(), 4096);
        let h = decode_header(&rec).unwrap();
        assert_eq!(
            (h.key_len, h.parent_len, h.value_len, h.seq),
            (3, None, 5, 7)
        );
        assert_eq!(h.record_len(), 4096);
        let want = Body {
            key: b"key",
            parent: None,
            value: b"value",
        };
        assert_eq!(decode_body(&h, &rec), Some(want));
        let child = encode(b"kid", Some(b"key"), b"v", 8);
        let h = decode_header(&child).unwrap();
        assert_eq!(h.parent_len, Some(3));
        let want = Body {
            key: b"kid",
            parent: Some(b"key"),
            value: b"v",
        };
        assert_eq!(decode_body(&h, &child), Some(want));
        let t = encode_tombstone(b"k", 41, 42);
        let h = decode_header(&t).unwrap();
        assert!(h.tombstone && h.seq == 42);
        assert_eq!(
            tombstone_target(decode_body(&h, &t).unwrap().value),
            Some(41)
        );
        let empty_parent = encode(b"k", Some(b""), b"v", 9);
        let h = decode_header(&empty_parent).unwrap();
        assert_eq!(
            decode_body(&h, &empty_parent).unwrap().parent,
            Some(&b""[..])
        );
        let big = encode(b"k", None, &vec![9u8; 5000], 1);
        assert_eq!(big.len(), 8192);
        assert_eq!(record_len(1, 5000), 8192);
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let rec = encode(b"key", Some(b"par"), &[5u8; 100], 1);
        for i in 0..HEADER_LEN + 106 {
            let mut bad = AlignedBuf::zeroed(rec.len());
            bad.copy_from_slice(&rec);
            bad[i] ^= 0x40;
            let ok = decode_header(&bad).and_then(|h| decode_body(&h, &bad).map(|_| ()));
            assert!(ok.is_none(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn zeroes_and_torn_writes_are_not_records() {
        assert!(decode_header(&[0u8; 4096]).is_none());
        let rec = encode(b"key", None, &[1u8; 10_000], 1);
        // A torn write: the first 4 KiB made it, the rest is still zero.
        let mut torn = AlignedBuf::zeroed(rec.len());
        torn[..4096].copy_from_slice(&rec[..4096]);
        let h = decode_header(&torn).unwrap();
        assert!(decode_body(&h, &torn).is_none());
    }
}
