//! One test suite run over every tier (DRAM, the stand-in, and SSD with each
//! I/O engine, with direct and buffered I/O): whatever a tier is, it must
//! behave the same to the store.

use std::sync::Arc;

use bytes::Bytes;

use crate::dram::DramTier;
use crate::io::EngineChoice;
use crate::ssd::{log::LogConfig, tier::SsdTier};
use crate::tier::{Load, Tier};

fn value(seed: usize, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 + seed) as u8)
        .collect::<Vec<_>>()
        .into()
}

fn round_trips(t: &dyn Tier) {
    let keys: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![0, 255, 10, 13], vec![7; 300]];
    for (i, len) in [0usize, 1, 4095, 4096, 100_000, 1 << 20].iter().enumerate() {
        let key = &keys[i % keys.len()];
        let v = value(i, *len);
        let slot = t.store(key, None, v.clone()).expect("store");
        assert_eq!(t.load(key, &slot), Load::Hit(v), "{:?} len {len}", t.kind());
    }
    t.sync().expect("sync");
}

fn overwrite_keeps_both_slots_readable_until_released(t: &dyn Tier) {
    let s1 = t.store(b"k", Some(b"parent"), value(1, 5000)).unwrap();
    let s2 = t.store(b"k", Some(b"parent"), value(2, 5000)).unwrap();
    assert_eq!(t.load(b"k", &s2), Load::Hit(value(2, 5000)));
    assert_eq!(t.load(b"k", &s1), Load::Hit(value(1, 5000)));
    t.release(s1);
    assert_eq!(t.load(b"k", &s2), Load::Hit(value(2, 5000)));
}

fn concurrent_stores(t: Arc<dyn Tier>) {
    let handles: Vec<_> = (0..4)
        .map(|th| {
            let t = t.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let key = format!("t{th}-{i}").into_bytes();
                        let v = value(th * 100 + i, 3000 + i * 100);
                        let slot = t.store(&key, None, v.clone()).unwrap();
                        (key, v, slot)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for (key, v, slot) in h.join().unwrap() {
            assert_eq!(t.load(&key, &slot), Load::Hit(v));
        }
    }
}

fn run_suite(make: &dyn Fn() -> Arc<dyn Tier>) {
    round_trips(&*make());
    overwrite_keeps_both_slots_readable_until_released(&*make());
    concurrent_stores(make());
}

#[test]
fn dram_tier() {
    run_suite(&|| Arc::new(DramTier));
}

#[test]
fn stand_in_tier() {
    use crate::noop::StandInTier;
    use crate::tier::TierKind;
    run_suite(&|| Arc::new(StandInTier::new(TierKind::Gpu)));
}

#[test]
fn ssd_tier_every_engine_direct_and_buffered() {
    let mut engines = vec![EngineChoice::Psync];
    if crate::io::build(EngineChoice::Uring).is_ok() {
        engines.push(EngineChoice::Uring);
    } else {
        crate::skipped("io_uring refused here: the SSD tier suite ran on psync only");
    }
    let base = std::env::temp_dir().join(format!("tidepool-suite-{}", std::process::id()));
    for engine in engines {
        for direct in [true, false] {
            let n = std::sync::atomic::AtomicUsize::new(0);
            let make = || -> Arc<dyn Tier> {
                let d = base.join(format!(
                    "{engine:?}-{direct}-{}",
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&d).unwrap();
                let config = LogConfig {
                    path: d,
                    capacity: Some(64 << 20),
                    segment_size: 4 << 20,
                    direct,
                };
                Arc::new(SsdTier::open(&config, engine).unwrap().tier)
            };
            run_suite(&make);
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn ssd_tier_reports_reclaimed_keys_and_misses_them() {
    let d = std::env::temp_dir().join(format!("tidepool-reclaim-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let config = LogConfig {
        path: d.clone(),
        capacity: Some(2 << 20),
        segment_size: 1 << 20,
        direct: true,
    };
    let t = SsdTier::open(&config, EngineChoice::Auto).unwrap().tier;
    let first = t.store(b"first", None, value(0, 500_000)).unwrap();
    for i in 0..4 {
        t.store(format!("k{i}").as_bytes(), None, value(i, 500_000))
            .unwrap();
    }
    let reclaimed = t.take_reclaimed();
    assert!(
        reclaimed
            .iter()
            .any(|r| &r.key[..] == b"first" && r.slot == first),
        "{reclaimed:?}"
    );
    assert_eq!(
        t.load(b"first", &first),
        Load::Miss,
        "reclaimed space is a miss"
    );
    assert!(t.take_reclaimed().is_empty());
    let _ = std::fs::remove_dir_all(&d);
}
