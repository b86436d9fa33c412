//! The fused copy-and-checksum against a plain copy and against copying then
//! hashing, side by side.
//!
//! ```sh
//! cargo bench -p tidepool-checksum --bench copy        # 1 GiB per cell, 5 runs
//! ```
//!
//! Each cell moves 1 GiB as distinct blocks of 64 KiB, 1 MiB or 4 MiB from one
//! buffer into another (as a shm put copies a caller's blocks into the arena):
//! `memcpy` (`copy_from_slice`), `copy_checksummed`, `copy then xxh3` (a copy,
//! then `xxhash-rust` over the destination: what the server's second pass
//! costs), and the hashes alone over the source. The ways alternate within a
//! run; the table shows the median GB/s of the runs and the ratio to memcpy.

use std::hint::black_box;
use std::time::Instant;

use tidepool_checksum::{checksum, copy_checksummed};
use xxhash_rust::xxh3::xxh3_64;

const TOTAL: usize = 1 << 30;
const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    let src: Vec<u8> = (0..TOTAL)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 12)) as u8)
        .collect();
    // Aligned as arena blocks are, so copy_checksummed streams its stores.
    let mut dst_buf = vec![1u8; TOTAL + 64];
    let at = dst_buf.as_ptr().align_offset(64);
    let dst = &mut dst_buf[at..at + TOTAL];
    type Way = fn(&[u8], &mut [u8]) -> u64;
    let ways: [(&str, Way); 5] = [
        ("memcpy", |s, d| {
            d.copy_from_slice(s);
            0
        }),
        ("copy_checksummed", |s, d| copy_checksummed(s, d)),
        ("copy then xxh3", |s, d| {
            d.copy_from_slice(s);
            xxh3_64(d)
        }),
        ("checksum (no copy)", |s, _| checksum(s)),
        ("xxh3_64 (no copy)", |s, _| xxh3_64(s)),
    ];
    println!(
        "{:>8}  {:<20} {:>8} {:>10}",
        "block", "way", "GB/s", "of memcpy"
    );
    for bs in [64usize << 10, 1 << 20, 4 << 20] {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
        for _ in 0..RUNS {
            for (w, (_, f)) in ways.iter().enumerate() {
                let t = Instant::now();
                let mut acc = 0u64;
                for (s, d) in src.chunks(bs).zip(dst.chunks_mut(bs)) {
                    acc ^= f(s, d);
                }
                black_box((acc, &*dst));
                times[w].push(TOTAL as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
        }
        let base = median(times[0].clone());
        for ((name, _), t) in ways.iter().zip(times) {
            let m = median(t);
            println!(
                "{:>8}  {:<20} {:>8.1} {:>9.0}%",
                format!("{} KiB", bs >> 10),
                name,
                m,
                100.0 * m / base
            );
        }
    }
}
