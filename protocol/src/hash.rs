//! The chain hash shared by `KV.HASH`, `KV.MATCHTOKENS` and the client library.
//!
//! For tokens split into full blocks of `block_tokens` tokens (a trailing partial
//! block is not hashed):
//!
//! ```text
//! key_0 = XXH3-128(seed ‖ le32(t_0) ‖ ... ‖ le32(t_{B-1}))
//! key_i = XXH3-128(key_{i-1} ‖ le32(tokens of block i))
//! ```
//!
//! XXH3-128 uses the default secret and seed 0; each key is the 16-byte
//! canonical (big-endian) form of the 128-bit hash, i.e. the high 64 bits in
//! big-endian order followed by the low 64 bits in big-endian order.

use xxhash_rust::xxh3::xxh3_128;

/// Length of a chain key in bytes.
pub const KEY_LEN: usize = 16;

/// Hashes `tokens` into the keys of its full blocks.
pub fn chain_keys(seed: &[u8], block_tokens: usize, tokens: &[u32]) -> Vec<[u8; KEY_LEN]> {
    assert!(block_tokens > 0, "block_tokens must be positive");
    let mut keys: Vec<[u8; KEY_LEN]> = Vec::with_capacity(tokens.len() / block_tokens);
    let mut buf = Vec::with_capacity(seed.len().max(KEY_LEN) + 4 * block_tokens);
    for block in tokens.chunks_exact(block_tokens) {
        buf.clear();
        match keys.last() {
            Some(prev) => buf.extend_from_slice(prev),
            None => buf.extend_from_slice(seed),
        }
        for t in block {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        keys.push(xxh3_128(&buf).to_be_bytes());
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(k: &[u8]) -> String {
        k.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn layout_is_as_documented() {
        let keys = chain_keys(b"s", 2, &[1, 2, 3, 4, 5]);
        assert_eq!(keys.len(), 2, "the partial block is not hashed");
        let mut first = b"s".to_vec();
        first.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(keys[0], xxh3_128(&first).to_be_bytes());
        let mut second = keys[0].to_vec();
        second.extend_from_slice(&[3, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(keys[1], xxh3_128(&second).to_be_bytes());
    }

    #[test]
    fn known_vectors() {
        // Pinned so that any change of layout is caught: other languages rely on these.
        let keys = chain_keys(b"tidepool", 4, &[0, 1, 2, 3, 4, 5, 6, 7]);
        let got: Vec<String> = keys.iter().map(|k| hex(k)).collect();
        assert_eq!(got, KNOWN);
        assert_eq!(hex(&chain_keys(b"", 1, &[0])[0]), KNOWN_EMPTY_SEED);
    }

    // Computed independently with Python's `xxhash` package (xxh3_128_digest).
    const KNOWN: [&str; 2] = [
        "076dce5e065dc701d0c17a36bce9f886",
        "41f6bd945e4bb1d0e641445defdf4212",
    ];
    const KNOWN_EMPTY_SEED: &str = "2a33816ed7e0c373dbe563c737220b65";
}
