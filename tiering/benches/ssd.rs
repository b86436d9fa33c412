//! SSD tier write and read throughput against `dd` with direct I/O, side by side.
//!
//! ```sh
//! cargo bench -p tidepool-tiering --bench ssd             # 1 GiB per run, 3 runs
//! TIDEPOOL_BENCH_DIR=/mnt/nvme TIDEPOOL_BENCH_MIB=4096 cargo bench -p tidepool-tiering --bench ssd
//! ```
//!
//! For 1 MiB and 4 MiB blocks: `dd oflag=direct conv=fdatasync` then the segment
//! log appending the same bytes (one sync at the end), `dd iflag=direct` then the
//! log reading every record back with checksum checks; for each I/O engine,
//! alternating, median of the runs. Prints a table of GB/s and the log/dd ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tidepool_tiering::io::EngineChoice;
use tidepool_tiering::ssd::{LogConfig, SsdTier};
use tidepool_tiering::Tier;

/// The allocator the server uses, so buffer reuse behaves as it does there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs dd and returns GB/s over `bytes`.
fn dd(args: &[String], bytes: u64) -> f64 {
    let t = Instant::now();
    let out = Command::new("dd").args(args).output().expect("running dd");
    assert!(
        out.status.success(),
        "dd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bytes as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn drop_file(p: &Path) {
    let _ = std::fs::remove_file(p);
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let dir = PathBuf::from(std::env::var("TIDEPOOL_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()));
    let total = env_u64("TIDEPOOL_BENCH_MIB", 1024) << 20;
    let runs = env_u64("TIDEPOOL_BENCH_RUNS", 3) as usize;
    let mut engines = vec![("psync", EngineChoice::Psync)];
    if tidepool_tiering::io::build(EngineChoice::Uring).is_ok() {
        engines.push(("io_uring", EngineChoice::Uring));
    }
    let dd_file = dir.join(format!("tidepool-bench-dd-{}", std::process::id()));
    let log_dir = dir.join(format!("tidepool-bench-log-{}", std::process::id()));
    println!(
        "# SSD tier vs dd (direct I/O), {} MiB per run, median of {runs}, dir {}",
        total >> 20,
        dir.display()
    );
    println!("| block | op | engine | tidepool GB/s | dd GB/s | ratio |");
    println!("|---|---|---|---|---|---|");
    for block in [1u64 << 20, 4 << 20] {
        let count = total / block;
        let value: bytes::Bytes = (0..block).map(|i| (i * 7) as u8).collect::<Vec<_>>().into();
        for (name, engine) in &engines {
            let (mut w_tp, mut w_dd, mut r_tp, mut r_dd) = (vec![], vec![], vec![], vec![]);
            for _ in 0..runs {
                // dd write and read of the same amount.
                drop_file(&dd_file);
                w_dd.push(dd(
                    &[
                        "if=/dev/zero".into(),
                        format!("of={}", dd_file.display()),
                        format!("bs={block}"),
                        format!("count={count}"),
                        "oflag=direct".into(),
                        "conv=fdatasync".into(),
                    ],
                    total,
                ));
                r_dd.push(dd(
                    &[
                        format!("if={}", dd_file.display()),
                        "of=/dev/null".into(),
                        format!("bs={block}"),
                        "iflag=direct".into(),
                    ],
                    total,
                ));
                drop_file(&dd_file);
                // The log: room for every record plus one spare segment.
                let _ = std::fs::remove_dir_all(&log_dir);
                std::fs::create_dir_all(&log_dir).unwrap();
                let seg = 64u64 << 20;
                let config = LogConfig {
                    path: log_dir.clone(),
                    capacity: Some((total * 11 / 10 / seg + 2) * seg),
                    segment_size: seg,
                    direct: true,
                };
                let tier = SsdTier::open(&config, *engine).unwrap().tier;
                assert!(
                    tier.log().is_direct(),
                    "the bench wants a file system with O_DIRECT"
                );
                let t = Instant::now();
                let slots: Vec<_> = (0..count)
                    .map(|i| {
                        let key = format!("block-{i}");
                        (
                            key.clone(),
                            tier.store(key.as_bytes(), None, value.clone()).unwrap(),
                        )
                    })
                    .collect();
                tier.sync().unwrap();
                w_tp.push(total as f64 / t.elapsed().as_secs_f64() / 1e9);
                let t = Instant::now();
                for (key, slot) in &slots {
                    match tier.load(key.as_bytes(), slot) {
                        tidepool_tiering::Load::Hit(b) => assert_eq!(b.len() as u64, block),
                        tidepool_tiering::Load::Miss | tidepool_tiering::Load::Corrupt => {
                            panic!("lost {key}")
                        }
                    }
                }
                r_tp.push(total as f64 / t.elapsed().as_secs_f64() / 1e9);
                drop(tier);
                let _ = std::fs::remove_dir_all(&log_dir);
            }
            for (op, tp, dd) in [("write", w_tp, w_dd), ("read", r_tp, r_dd)] {
                let (tp, dd) = (median(tp), median(dd));
                println!(
                    "| {} MiB | {op} | {name} | {tp:.2} | {dd:.2} | {:.2} |",
                    block >> 20,
                    tp / dd
                );
            }
        }
    }
}
