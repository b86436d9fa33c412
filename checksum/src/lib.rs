//! tidepool-checksum: the checksum a stored block carries, XXH3-64 of its
//! bytes (default secret, seed 0: the value `xxh3_64` of any XXH3 library
//! gives), and a copy that computes it while the bytes pass through.
//!
//! A block put over shared memory is copied by the client into the server's
//! arena. Hashing it afterwards, on the server, reads every byte a second
//! time from memory: on the 2-core development machine that second pass cost
//! a fifth to a quarter of the put's throughput at 1 and 4 MiB.
//! [`copy_checksummed`] hashes each 64-byte stripe from the registers it was
//! just loaded into for the copy, so the checksum costs close to nothing
//! beyond the copy. The client sends the value with `KV.COMMIT ...
//! CHECKSUMS`.
//!
//! PERFORMANCE CRITICAL: the AVX2 kernel below runs on every byte of a shm
//! put; into an aligned destination (arena blocks are page-aligned) its
//! stores bypass the cache. It is chosen at run time
//! (`is_x86_feature_detected!`); elsewhere the portable path copies and then
//! hashes with `xxhash-rust`. Both are checked against `xxhash-rust` by the
//! tests.
//!
//! No I/O, no dependencies beyond `xxhash-rust`: the store, the transport and
//! the client all link it.

use xxhash_rust::xxh3::xxh3_64;

/// Inputs up to this length take XXH3's short-input paths (no stripes): the
/// kernel only handles longer ones and leaves these to `xxhash-rust`.
// Only the x86-64 kernel uses it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const SHORT_MAX: usize = 240;

/// The checksum of `bytes`: XXH3-64 with the default secret and seed 0.
pub fn checksum(bytes: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() > SHORT_MAX && std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above); the input is long enough
        // for the kernel; nothing is written.
        return unsafe { avx2::run::<false>(bytes.as_ptr(), bytes.len(), None) };
    }
    xxh3_64(bytes)
}

/// Copies `src` into `dst` (same length) and returns [`checksum`]`(src)`.
///
/// # Panics
/// When the lengths differ.
pub fn copy_checksummed(src: &[u8], dst: &mut [u8]) -> u64 {
    assert_eq!(src.len(), dst.len(), "copy_checksummed: lengths differ");
    // SAFETY: `dst` is a distinct, writable slice of `src.len()` bytes (a
    // `&mut` cannot alias the shared `src`).
    unsafe { copy_checksummed_raw(src, dst.as_mut_ptr()) }
}

/// [`copy_checksummed`] into raw memory, such as a shared mapping that
/// another process may read once told the bytes are there.
///
/// # Safety
/// `dst` MUST be valid for writes of `src.len()` bytes and MUST NOT overlap
/// `src`.
pub unsafe fn copy_checksummed_raw(src: &[u8], dst: *mut u8) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if src.len() > SHORT_MAX && std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; `dst` is writable for `src.len()` bytes
        // and disjoint from `src` (the caller's guarantee).
        return unsafe {
            if dst.align_offset(32) == 0 {
                avx2::run::<true>(src.as_ptr(), src.len(), Some(dst))
            } else {
                avx2::run::<false>(src.as_ptr(), src.len(), Some(dst))
            }
        };
    }
    // SAFETY: as above.
    unsafe { portable_copy_checksummed(src, dst) }
}

/// Copies `src` into `dst` (same length) with stores that bypass the cache
/// where the CPU allows (AVX2; elsewhere a plain copy). For bulk copies into
/// memory that will not be read from this core's cache soon: the lines are
/// not fetched before being overwritten, which saves a third of the memory
/// traffic of an ordinary copy into a cold destination.
///
/// # Panics
/// When the lengths differ.
pub fn copy_streaming(src: &[u8], dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len(), "copy_streaming: lengths differ");
    // SAFETY: `dst` is writable for `src.len()` bytes and, being `&mut`,
    // disjoint from `src`.
    unsafe { copy_streaming_raw(src.as_ptr(), dst) }
}

/// [`copy_streaming`] from raw memory, such as a shared mapping.
///
/// # Safety
/// `src` MUST be readable for `dst.len()` bytes and MUST NOT overlap `dst`.
pub unsafe fn copy_streaming_raw(src: *const u8, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= STREAM_MIN && std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; `dst` is at least 4 KiB; the caller's
        // guarantee for `src`.
        return unsafe { avx2::stream_copy(src, dst.as_mut_ptr(), dst.len()) };
    }
    // SAFETY: the caller's guarantee.
    unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
}

/// Below this a streamed copy is not worth its fence.
// Only the x86-64 kernel uses it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const STREAM_MIN: usize = 4096;

/// The path without AVX2: copy, then hash the source.
///
/// # Safety
/// As [`copy_checksummed_raw`].
unsafe fn portable_copy_checksummed(src: &[u8], dst: *mut u8) -> u64 {
    // SAFETY: the caller's guarantee.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    xxh3_64(src)
}

/// XXH3-64's long-input algorithm, written once more so that a stripe can be
/// stored to the destination from the same registers it is hashed from.
///
/// The input is consumed in 64-byte stripes, 16 to a 1 KiB block. Each
/// stripe updates eight 64-bit lanes against a window of the secret that
/// slides 8 bytes per stripe; after each block the lanes are scrambled. The
/// stripes of the last, partial block are taken as they come, then the last
/// 64 bytes of the input once more (against their own secret window), and
/// the lanes are folded into one value.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::long::{merge, INIT, LAST_AT, SCRAMBLE_AT, SECRET, STRIPE, STRIPES_PER_BLOCK};

    /// Copies `len` bytes: ordinary stores up to the destination's first
    /// 32-byte boundary and after the last whole 128 bytes, streamed
    /// (non-temporal) ones between, then a store fence.
    ///
    /// # Safety
    /// The CPU MUST have AVX2; `src` readable and `dst` writable for `len`
    /// bytes, disjoint.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn stream_copy(src: *const u8, dst: *mut u8, len: usize) {
        // SAFETY: every range below lies within the first `len` bytes of
        // `src` and `dst` (the caller's guarantee covers them).
        unsafe {
            let head = dst.align_offset(32).min(len);
            std::ptr::copy_nonoverlapping(src, dst, head);
            let mut at = head;
            while at + 128 <= len {
                let (s, t) = (src.add(at), dst.add(at));
                for k in 0..4 {
                    let v = _mm256_loadu_si256(s.add(32 * k) as *const __m256i);
                    _mm256_stream_si256(t.add(32 * k) as *mut __m256i, v);
                }
                at += 128;
            }
            std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), len - at);
            _mm_sfence();
        }
    }

    /// Hashes `len` bytes at `src`, and copies them to `dst` when given.
    ///
    /// `STREAM`: the copy's stores bypass the cache (non-temporal), and
    /// `dst` MUST be 32-byte aligned. A block copied into the arena is read
    /// by nobody soon (the server takes the checksum as given), so pulling
    /// its lines into this core's cache first, as ordinary stores do, only
    /// costs memory bandwidth: streamed, the copy runs at about 120% of
    /// `memcpy` here (`cargo bench -p tidepool-checksum`). A store fence at
    /// the end orders the streamed bytes before anything the caller does
    /// next (telling the server they are there).
    ///
    /// # Safety
    /// The CPU MUST have AVX2. `len` MUST exceed 240. `src` MUST be readable
    /// for `len` bytes; `dst`, when given, writable for `len` bytes and
    /// disjoint from `src`, and 32-byte aligned with `STREAM`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn run<const STREAM: bool>(
        src: *const u8,
        len: usize,
        dst: Option<*mut u8>,
    ) -> u64 {
        debug_assert!(len > super::SHORT_MAX);
        let sec = SECRET.as_ptr();
        // SAFETY (every load and store below): stripe offsets stay within
        // `len` as the loop bounds show; secret windows within its 192 bytes
        // (at most 15 * 8 + 64 = 184, the scramble window 128 + 64 = 192, the
        // last stripe's 121 + 64 = 185).
        unsafe {
            let mut acc = [
                _mm256_loadu_si256(INIT.as_ptr() as *const __m256i),
                _mm256_loadu_si256(INIT.as_ptr().add(4) as *const __m256i),
            ];
            let stripe = |acc: &mut [__m256i; 2], at: usize, key: usize, copy: bool| {
                for (h, a) in acc.iter_mut().enumerate() {
                    let d = _mm256_loadu_si256(src.add(at + 32 * h) as *const __m256i);
                    if let (true, Some(dst)) = (copy, dst) {
                        let to = dst.add(at + 32 * h) as *mut __m256i;
                        if STREAM {
                            _mm256_stream_si256(to, d);
                        } else {
                            _mm256_storeu_si256(to, d);
                        }
                    }
                    let k = _mm256_xor_si256(
                        d,
                        _mm256_loadu_si256(sec.add(key + 32 * h) as *const __m256i),
                    );
                    // Low 32 bits of each lane times its high 32 bits.
                    let p = _mm256_mul_epu32(k, _mm256_shuffle_epi32(k, 0b00_11_00_01));
                    // Each lane also gains its neighbour's input (lanes 2i, 2i+1 swap).
                    let swapped = _mm256_shuffle_epi32(d, 0b01_00_11_10);
                    *a = _mm256_add_epi64(*a, _mm256_add_epi64(p, swapped));
                }
            };
            let prime = _mm256_set1_epi32(super::long::P32_1 as i32);
            let scramble = |acc: &mut [__m256i; 2]| {
                for (h, a) in acc.iter_mut().enumerate() {
                    let x = _mm256_xor_si256(
                        _mm256_xor_si256(*a, _mm256_srli_epi64(*a, 47)),
                        _mm256_loadu_si256(sec.add(SCRAMBLE_AT + 32 * h) as *const __m256i),
                    );
                    // A 64-bit lane times a 32-bit prime, from 32x32 products.
                    let lo = _mm256_mul_epu32(x, prime);
                    let hi = _mm256_mul_epu32(_mm256_shuffle_epi32(x, 0b00_11_00_01), prime);
                    *a = _mm256_add_epi64(lo, _mm256_slli_epi64(hi, 32));
                }
            };
            let block = STRIPE * STRIPES_PER_BLOCK;
            let blocks = (len - 1) / block;
            for b in 0..blocks {
                for s in 0..STRIPES_PER_BLOCK {
                    stripe(&mut acc, b * block + s * STRIPE, s * 8, true);
                }
                scramble(&mut acc);
            }
            let stripes = (len - 1 - blocks * block) / STRIPE;
            for s in 0..stripes {
                stripe(&mut acc, blocks * block + s * STRIPE, s * 8, true);
            }
            let done = blocks * block + stripes * STRIPE;
            if let Some(dst) = dst {
                std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), len - done);
                if STREAM {
                    _mm_sfence();
                }
            }
            // The last 64 bytes, already copied: hashed only.
            stripe(&mut acc, len - STRIPE, LAST_AT, false);
            let mut lanes = [0u64; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc[0]);
            _mm256_storeu_si256(lanes.as_mut_ptr().add(4) as *mut __m256i, acc[1]);
            merge(&lanes, len)
        }
    }
}

/// The constants and the final fold of XXH3-64's long-input path, shared by
/// the kernel and the scalar model the tests check it with.
// Only the x86-64 kernel uses it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod long {
    pub(super) const P32_1: u64 = 0x9E37_79B1;
    const P32_2: u64 = 0x85EB_CA77;
    const P32_3: u64 = 0xC2B2_AE3D;
    const P64_1: u64 = 0x9E37_79B1_85EB_CA87;
    const P64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P64_3: u64 = 0x1656_67B1_9E37_79F9;
    const P64_4: u64 = 0x85EB_CA77_C2B2_AE63;
    const P64_5: u64 = 0x27D4_EB2F_1656_67C5;

    /// The eight lanes' starting values.
    pub(super) const INIT: [u64; 8] = [P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1];

    /// XXH3's default secret (192 bytes).
    pub(super) const SECRET: [u8; 192] = [
        0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad,
        0x1c, 0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3,
        0x67, 0x1f, 0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc,
        0xff, 0x72, 0x21, 0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6,
        0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65,
        0x8b, 0x1b, 0x53, 0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19,
        0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9,
        0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31,
        0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64, 0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb,
        0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb, 0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0,
        0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e, 0x2b, 0x16, 0xbe, 0x58, 0x7d,
        0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce, 0x45, 0xcb, 0x3a, 0x8f,
        0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
    ];
    /// Bytes per stripe.
    pub(super) const STRIPE: usize = 64;
    /// Stripes per block: the secret window slides 8 bytes per stripe.
    pub(super) const STRIPES_PER_BLOCK: usize = (SECRET.len() - STRIPE) / 8;
    /// The secret window of the scramble.
    pub(super) const SCRAMBLE_AT: usize = SECRET.len() - STRIPE;
    /// The secret window of the input's last stripe.
    pub(super) const LAST_AT: usize = SECRET.len() - STRIPE - 7;

    fn secret_u64(at: usize) -> u64 {
        u64::from_le_bytes(SECRET[at..at + 8].try_into().expect("8 bytes"))
    }

    /// The 128-bit product of `a` and `b`, its halves xored.
    fn fold(a: u64, b: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    }

    /// Folds the eight lanes into the hash of a `len`-byte input.
    pub(super) fn merge(lanes: &[u64; 8], len: usize) -> u64 {
        let mut h = (len as u64).wrapping_mul(P64_1);
        for i in 0..4 {
            h = h.wrapping_add(fold(
                lanes[2 * i] ^ secret_u64(11 + 16 * i),
                lanes[2 * i + 1] ^ secret_u64(11 + 16 * i + 8),
            ));
        }
        h ^= h >> 37;
        h = h.wrapping_mul(0x1656_6791_9E37_79F9);
        h ^ (h >> 32)
    }

    /// The same algorithm lane by lane: the model the kernel is tested
    /// against, and a check that the constants above are XXH3's.
    #[cfg(test)]
    pub(super) fn scalar(input: &[u8]) -> u64 {
        let len = input.len();
        assert!(len > super::SHORT_MAX);
        let word = |at: usize| u64::from_le_bytes(input[at..at + 8].try_into().expect("8 bytes"));
        let mut lanes = INIT;
        let stripe = |lanes: &mut [u64; 8], at: usize, key: usize| {
            for i in 0..8 {
                let v = word(at + 8 * i);
                let k = v ^ secret_u64(key + 8 * i);
                lanes[i ^ 1] = lanes[i ^ 1].wrapping_add(v);
                lanes[i] = lanes[i].wrapping_add((k & 0xFFFF_FFFF).wrapping_mul(k >> 32));
            }
        };
        let block = STRIPE * STRIPES_PER_BLOCK;
        let blocks = (len - 1) / block;
        for b in 0..blocks {
            for s in 0..STRIPES_PER_BLOCK {
                stripe(&mut lanes, b * block + s * STRIPE, s * 8);
            }
            for (i, lane) in lanes.iter_mut().enumerate() {
                let x = *lane ^ (*lane >> 47) ^ secret_u64(SCRAMBLE_AT + 8 * i);
                *lane = x.wrapping_mul(P32_1);
            }
        }
        for s in 0..(len - 1 - blocks * block) / STRIPE {
            stripe(&mut lanes, blocks * block + s * STRIPE, s * 8);
        }
        stripe(&mut lanes, len - STRIPE, LAST_AT);
        merge(&lanes, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Lengths where the algorithm changes course: the short-input limit, a
    /// stripe, a block (1 KiB) and the last stripe's overlap with them.
    fn edges() -> Vec<usize> {
        let mut v: Vec<usize> = (0..=300).collect();
        for base in [1024, 2048, 4096, 65536, 1 << 20] {
            v.extend(base - 65..=base + 65);
        }
        v.extend([(4 << 20) + 123, 3 << 20]);
        v
    }

    #[test]
    fn the_scalar_model_is_xxh3() {
        for len in edges().into_iter().filter(|&l| l > SHORT_MAX) {
            let b = bytes(len, len as u64);
            assert_eq!(long::scalar(&b), xxh3_64(&b), "len {len}");
        }
    }

    #[test]
    fn checksum_and_copy_agree_with_xxh3_at_every_edge() {
        for len in edges() {
            let src = bytes(len, 7 + len as u64);
            let want = xxh3_64(&src);
            assert_eq!(checksum(&src), want, "checksum, len {len}");
            let mut dst = vec![0xAAu8; len];
            assert_eq!(copy_checksummed(&src, &mut dst), want, "copy, len {len}");
            assert_eq!(dst, src, "copied bytes, len {len}");
            let mut dst = vec![0x55u8; len];
            // SAFETY: `dst` is `len` writable bytes of its own.
            let got = unsafe { portable_copy_checksummed(&src, dst.as_mut_ptr()) };
            assert_eq!((got, &dst), (want, &src), "portable, len {len}");
        }
    }

    /// A destination at every offset from a 64-byte boundary: the streaming
    /// stores (32-byte aligned only) and the ordinary ones.
    #[test]
    fn aligned_and_unaligned_destinations_copy_alike() {
        for len in [
            241,
            1000,
            1024,
            4095,
            4096,
            4096 + 17,
            4096 + 127,
            65536,
            300_001,
        ] {
            let src = bytes(len, 11 + len as u64);
            let want = xxh3_64(&src);
            let mut buf = vec![0u8; len + 128];
            let base = buf.as_ptr().align_offset(64);
            for off in [0, 1, 8, 16, 31, 32, 33, 63] {
                buf.fill(0x5A);
                let at = base + off;
                let dst = &mut buf[at..at + len];
                assert_eq!(copy_checksummed(&src, dst), want, "len {len} offset {off}");
                assert_eq!(dst, &src[..], "len {len} offset {off}");
                assert!(buf[..at].iter().chain(&buf[at + len..]).all(|&b| b == 0x5A));
                buf.fill(0x5A);
                copy_streaming(&src, &mut buf[at..at + len]);
                assert_eq!(
                    &buf[at..at + len],
                    &src[..],
                    "streamed, len {len} offset {off}"
                );
                assert!(buf[..at].iter().chain(&buf[at + len..]).all(|&b| b == 0x5A));
            }
        }
    }

    #[test]
    fn the_copy_writes_nothing_outside_its_range() {
        let src = bytes(5000, 3);
        let mut dst = vec![0xEEu8; 5000 + 128];
        copy_checksummed(&src, &mut dst[64..64 + 5000]);
        assert!(dst[..64].iter().all(|&b| b == 0xEE));
        assert!(dst[64 + 5000..].iter().all(|&b| b == 0xEE));
        assert_eq!(&dst[64..64 + 5000], &src[..]);
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn lengths_must_match() {
        copy_checksummed(&[1, 2, 3], &mut [0; 2]);
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn streamed_lengths_must_match() {
        copy_streaming(&[1, 2, 3], &mut [0; 4]);
    }

    proptest! {
        #[test]
        fn any_input_hashes_as_xxh3(src in proptest::collection::vec(any::<u8>(), 0..9000), off in 0usize..64) {
            // Misaligned sources too: the kernel uses unaligned loads.
            let src = &src[off.min(src.len())..];
            let mut dst = vec![0u8; src.len()];
            prop_assert_eq!(copy_checksummed(src, &mut dst), xxh3_64(src));
            prop_assert_eq!(&dst[..], src);
            prop_assert_eq!(checksum(src), xxh3_64(src));
            let mut streamed = vec![0u8; src.len()];
            copy_streaming(src, &mut streamed);
            prop_assert_eq!(&streamed[..], src);
        }
    }
}
