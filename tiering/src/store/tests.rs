use super::suite::{b, mkey, put, Recorder};
use super::*;
use crate::event::EventKind;
use crate::index::shard_of;
use crate::stack::TierSpec;
use crate::store::matching::BETWEEN_MATCH_PASSES;
use crate::StoreError;
use crate::SHARDS;
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use xxhash_rust::xxh3::xxh3_64;

struct Fixture {
    store: Store,
    events: Arc<Recorder>,
    time: Arc<AtomicU64>,
}

fn fixture(capacity: u64) -> Fixture {
    let events = Arc::new(Recorder::default());
    let time = Arc::new(AtomicU64::new(1_000_000));
    let t = time.clone();
    let store = Store::with_parts(
        StoreConfig {
            dram_capacity: capacity,
            high_watermark: 1.0,
            low_watermark: 1.0,
            eviction: Eviction::Lru,
            dram_checksums: true,
        },
        Some(events.clone() as Arc<dyn EventSink>),
        Arc::new(move || t.load(Relaxed)),
    );
    Fixture {
        store,
        events,
        time,
    }
}

fn evicted(f: &Fixture) -> Vec<String> {
    f.events
        .0
        .lock()
        .iter()
        .filter(|(k, _)| *k == EventKind::Evicted)
        .map(|(_, key)| String::from_utf8_lossy(key).into_owned())
        .collect()
}

#[test]
fn a_lease_released_past_its_time_answers_that_it_had_run_out() {
    let f = fixture(2 * charge_of(1, 1));
    put(&f.store, "a", "1", None).unwrap();
    put(&f.store, "b", "1", None).unwrap();
    let early = f.store.match_prefix(&[b("a")], Some(100)).lease.unwrap();
    let late = f.store.match_prefix(&[b("b")], Some(100)).lease.unwrap();
    f.time.fetch_add(99, Relaxed);
    assert!(f.store.release(early), "in force 1 ms before its end");
    f.time.fetch_add(1, Relaxed);
    // Not swept yet, but its time is up: false, and dropped all the same.
    assert!(!f.store.release(late));
    assert_eq!(f.store.stats().leases, 0);
    put(&f.store, "c", "1", None).unwrap();
    f.store.check_invariants().unwrap();
}

#[test]
fn live_leases_are_counted_through_release_expiry_and_flush() {
    let f = fixture(4 * charge_of(1, 1));
    put(&f.store, "a", "1", None).unwrap();
    let held = f.store.match_prefix(&[b("a")], Some(100)).lease.unwrap();
    f.store.match_prefix(&[b("a")], Some(50));
    let (gone, _) = f.store.lease(&[b("a"), b("x")], 50);
    // A match without a lease files none.
    f.store.match_prefix(&[b("a")], None);
    assert_eq!(f.store.live_leases(), 3);
    f.store.check_invariants().unwrap();
    assert!(f.store.release(gone));
    assert!(!f.store.release(gone));
    assert_eq!(f.store.live_leases(), 2);
    f.time.fetch_add(50, Relaxed);
    f.store.expire_due();
    assert_eq!(f.store.live_leases(), 1);
    f.store.check_invariants().unwrap();
    f.store.match_prefix(&[b("a")], Some(100));
    f.store.flush();
    assert_eq!(f.store.live_leases(), 0);
    assert!(!f.store.release(held));
    f.store.check_invariants().unwrap();
}

#[test]
fn a_lease_over_any_keys_holds_the_stored_ones() {
    let f = fixture(3 * charge_of(1, 1));
    put(&f.store, "a", "1", None).unwrap();
    put(&f.store, "b", "1", None).unwrap();
    put(&f.store, "c", "1", None).unwrap();
    // Not a prefix: "x" is missing and "c" still counts.
    let (id, n) = f.store.lease(&[b("x"), b("c"), b("a")], 60_000);
    assert_eq!(n, 2);
    put(&f.store, "d", "1", None).unwrap();
    assert_eq!(evicted(&f), ["b"]);
    put(&f.store, "e", "1", None).unwrap();
    assert_eq!(evicted(&f), ["b", "d"]);
    f.store.check_invariants().unwrap();
    assert!(f.store.release(id));
    put(&f.store, "f", "1", None).unwrap();
    assert_eq!(evicted(&f), ["b", "d", "a"]);
    f.store.check_invariants().unwrap();
}

#[test]
fn shedding_frees_at_least_what_is_asked() {
    let f = fixture(10 * charge_of(1, 1));
    for k in ["a", "b", "c", "d"] {
        put(&f.store, k, "1", None).unwrap();
    }
    let freed = f.store.shed(charge_of(1, 1) + 1);
    assert_eq!(freed, 2 * charge_of(1, 1));
    assert_eq!(evicted(&f), ["a", "b"]);
    assert_eq!(f.store.shed(u64::MAX), 2 * charge_of(1, 1));
    assert!(f.store.is_empty());
    assert_eq!(f.store.shed(1), 0);
    f.store.check_invariants().unwrap();
}

#[test]
fn values_are_copied_unless_exclusive() {
    let f = fixture(1 << 20);
    let big = Bytes::from(vec![3u8; 8192]);
    let view = big.slice(0..100);
    f.store
        .put(b("v"), view.clone(), PutOptions::default())
        .unwrap();
    assert_ne!(f.store.get(b"v").unwrap().as_ptr(), view.as_ptr());
    let own = Bytes::from(vec![4u8; 100]);
    f.store
        .put(
            b("o"),
            own.clone(),
            PutOptions {
                value_exclusive: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(f.store.get(b"o").unwrap().as_ptr(), own.as_ptr());
}

#[test]
fn too_big_is_refused() {
    let f = fixture(100);
    assert_eq!(put(&f.store, "a", "1", None).unwrap_err().code(), "TOOBIG");
}

#[test]
fn long_chain_removal_does_not_recurse() {
    let f = fixture(1 << 30);
    let mut prev: Option<String> = None;
    for i in 0..50_000 {
        let k = format!("k{i}");
        put(&f.store, &k, "", prev.as_deref()).unwrap();
        prev = Some(k);
    }
    assert_eq!(f.store.delete([&b"k0"[..]]), 1);
    assert!(f.store.is_empty());
}

#[test]
fn overwrite_keeps_children_and_moves_only_a_leaf_to_another_parent() {
    let f = fixture(1 << 20);
    put(&f.store, "p1", "1", None).unwrap();
    put(&f.store, "p2", "1", None).unwrap();
    put(&f.store, "a", "1", Some("p1")).unwrap();
    put(&f.store, "c", "1", Some("a")).unwrap();
    put(&f.store, "a", "2", Some("p1")).unwrap();
    assert_eq!(f.store.meta(b"a").unwrap().children, 1);
    assert_eq!(
        put(&f.store, "a", "2", Some("p2")),
        Err(StoreError::Reparent)
    );
    put(&f.store, "c", "2", Some("p2")).unwrap();
    assert_eq!(f.store.meta(b"a").unwrap().children, 0);
    assert_eq!(f.store.meta(b"p2").unwrap().children, 1);
    put(&f.store, "a", "3", Some("p2")).unwrap();
    assert_eq!(f.store.meta(b"p1").unwrap().children, 0);
    assert_eq!(f.store.meta(b"p2").unwrap().children, 2);
    f.store.check_invariants().unwrap();
}

#[test]
fn scan_visits_every_key_once() {
    let f = fixture(1 << 24);
    for i in 0..500 {
        put(&f.store, &format!("k{i}"), "v", None).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor = 0;
    loop {
        let (next, keys) = f.store.scan(cursor, 10, &|_| true);
        for k in keys {
            assert!(seen.insert(k));
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 500);
}

#[test]
fn checksum_detects_corruption_on_demand() {
    let f = fixture(1 << 20);
    put(&f.store, "a", "hello", None).unwrap();
    assert_eq!(f.store.verify(b"a"), Some(Verified::Intact));
    assert_eq!(f.store.verify(b"nope"), None);
    // Corrupt the stored checksum to simulate a bad copy.
    f.store.shard(b"a").map.get_mut(&b"a"[..]).unwrap().checksum ^= 1;
    assert_eq!(f.store.verify(b"a"), Some(Verified::Corrupt));
    assert_eq!(
        f.store.get(b"a"),
        None,
        "a corrupt block is dropped, never served"
    );
}

#[test]
fn without_dram_checksums_only_blocks_that_brought_one_are_checked() {
    let store = Store::new(StoreConfig {
        dram_checksums: false,
        ..StoreConfig::default()
    });
    let value = Bytes::from_static(b"hello");
    store
        .put(
            Bytes::from_static(b"a"),
            value.clone(),
            PutOptions::default(),
        )
        .unwrap();
    assert_eq!(store.verify(b"a"), Some(Verified::Unchecked));
    assert_eq!(store.get(b"a"), Some(value.clone()), "still served");
    // A checksum taken on arrival (the tcp data plane) is kept and checked.
    let opts = PutOptions {
        checksum: Some(xxh3_64(&value)),
        ..PutOptions::default()
    };
    store.put(Bytes::from_static(b"b"), value, opts).unwrap();
    assert_eq!(store.verify(b"b"), Some(Verified::Intact));
    store.shard(b"b").map.get_mut(&b"b"[..]).unwrap().checksum ^= 1;
    assert_eq!(store.verify(b"b"), Some(Verified::Corrupt));
    assert_eq!(store.get(b"b"), None);
}

// ---- With an SSD tier attached ----

mod with_ssd {
    use super::*;
    use crate::io::EngineChoice;
    use crate::ssd::{LogConfig, SsdTier};
    use std::path::PathBuf;

    struct SsdFixture {
        store: Arc<Store>,
        dir: PathBuf,
    }

    impl Drop for SsdFixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn log_config(dir: &std::path::Path, segments: u64, segment: u64) -> LogConfig {
        LogConfig {
            path: dir.to_path_buf(),
            capacity: Some(segments * segment),
            segment_size: segment,
            direct: true,
        }
    }

    fn open_store(dir: &std::path::Path, dram: u64, segments: u64, segment: u64) -> Arc<Store> {
        open_store_with(dir, dram, segments, segment, PipeSettings::default())
    }

    fn open_store_with(
        dir: &std::path::Path,
        dram: u64,
        segments: u64,
        segment: u64,
        settings: PipeSettings,
    ) -> Arc<Store> {
        let config = StoreConfig {
            dram_capacity: dram,
            high_watermark: 1.0,
            low_watermark: 1.0,
            eviction: Eviction::Lru,
            dram_checksums: true,
        };
        open_store_config(dir, config, segments, segment, settings)
    }

    /// A store of `config` over an SSD log of `segments` x `segment` bytes.
    fn open_store_config(
        dir: &std::path::Path,
        config: StoreConfig,
        segments: u64,
        segment: u64,
        settings: PipeSettings,
    ) -> Arc<Store> {
        let opened =
            SsdTier::open(&log_config(dir, segments, segment), EngineChoice::Auto).unwrap();
        over_ssd(config, opened, settings)
    }

    /// A store of `config` over DRAM and the opened SSD tier.
    pub(super) fn over_ssd(
        config: StoreConfig,
        opened: crate::ssd::Opened,
        pipe: PipeSettings,
    ) -> Arc<Store> {
        StoreBuilder::new(config)
            .with_tier(TierSpec::dram(config.dram_capacity))
            .with_tier(opened.into_spec(pipe))
            .build()
            .unwrap()
    }

    /// A fresh, empty directory for one test.
    fn fresh_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tidepool-store-ssd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fixture(name: &str, dram: u64, segments: u64, segment: u64) -> SsdFixture {
        let dir = fresh_dir(name);
        let store = open_store(&dir, dram, segments, segment);
        SsdFixture { store, dir }
    }

    fn settle(s: &Store) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.pending_demotions() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "demotions never finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn val(i: usize) -> Bytes {
        Bytes::from(vec![i as u8; 1000])
    }

    /// A match that finds blocks on SSD reads them back into DRAM (in chain
    /// order, the least recently used DRAM blocks going down in their place);
    /// with staging off they stay on SSD until read.
    #[test]
    fn a_match_stages_the_blocks_it_finds_on_ssd() {
        for staging in [true, false] {
            let dir = fresh_dir(&format!("stage-{staging}"));
            // Every matched SSD block is staged (window 1.0); the window
            // itself is tested below.
            let settings = PipeSettings {
                stage_on_match: staging,
                stage_window: 1.0,
                ..Default::default()
            };
            let store = open_store_with(&dir, 4 * charge_of(2, 1000), 8, 1 << 20, settings);
            let chain: Vec<Bytes> = (0..4).map(|i| Bytes::from(format!("c{i}"))).collect();
            for (i, k) in chain.iter().enumerate() {
                let opts = PutOptions {
                    parent: i.checked_sub(1).map(|p| chain[p].clone()),
                    ..Default::default()
                };
                store.put(k.clone(), val(i), opts).unwrap();
            }
            // Four others push the chain down to SSD.
            for i in 0..4 {
                store
                    .put(Bytes::from(format!("o{i}")), val(i), PutOptions::default())
                    .unwrap();
            }
            settle(&store);
            assert!(chain
                .iter()
                .all(|k| store.tier_of(k) == Some(TierKind::Ssd)));
            let m = store.match_prefix(&chain[..2], None);
            assert_eq!(m.matched, 2);
            assert_eq!(
                m.tiers,
                vec![TierKind::Ssd; 2],
                "the match reports where they were"
            );
            settle(&store);
            let want = if staging {
                TierKind::Dram
            } else {
                TierKind::Ssd
            };
            assert_eq!(store.tier_of(b"c0"), Some(want));
            assert_eq!(store.tier_of(b"c1"), Some(want));
            assert_eq!(store.tier_of(b"c2"), Some(TierKind::Ssd), "not matched");
            if staging {
                assert_eq!(store.tier_of(b"o0"), Some(TierKind::Ssd), "made room");
            }
            assert_eq!(store.get(b"c1").as_deref(), Some(&val(1)[..]));
            settle(&store);
            store.check_invariants().unwrap();
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// With the default window, only matched blocks whose segment is near
    /// the log's reclaim end are staged.
    #[test]
    fn only_blocks_near_the_reclaim_end_are_staged() {
        let dir = fresh_dir("stage-window");
        let settings = PipeSettings {
            stage_on_match: true,
            ..Default::default()
        };
        // 8 segments of 1 MiB, 4 KiB records: 256 a segment.
        let store = open_store_with(&dir, 4 * charge_of(5, 1000), 8, 1 << 20, settings);
        let put = |k: String, i: usize| {
            store
                .put(Bytes::from(k), val(i), PutOptions::default())
                .unwrap();
        };
        put("old".into(), 0);
        // About 1,400 blocks pushed down: six of the eight segments opened.
        for i in 0..1400 {
            put(format!("o{i:04}"), i);
            if i % 100 == 0 {
                settle(&store);
            }
        }
        settle(&store);
        assert_eq!(store.stats().ssd.unwrap().segments_used, 6);
        for k in ["old", "o1390"] {
            assert_eq!(store.tier_of(k.as_bytes()), Some(TierKind::Ssd), "{k}");
        }
        assert_eq!(store.match_prefix([&b"old"[..]], None).matched, 1);
        assert_eq!(store.match_prefix([&b"o1390"[..]], None).matched, 1);
        settle(&store);
        assert_eq!(
            store.tier_of(b"old"),
            Some(TierKind::Dram),
            "in the oldest segment: staged"
        );
        assert_eq!(
            store.tier_of(b"o1390"),
            Some(TierKind::Ssd),
            "in the newest: left"
        );
        store.check_invariants().unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Under `adaptive` with an SSD tier, victims of either segment are
    /// demoted (chosen by the segments), and the accounting holds.
    #[test]
    fn adaptive_demotes_victims_of_both_segments() {
        let dir = fresh_dir("adaptive-demote");
        let config = StoreConfig {
            dram_capacity: 4 * charge_of(2, 1000),
            high_watermark: 1.0,
            low_watermark: 1.0,
            eviction: Eviction::Adaptive,
            dram_checksums: true,
        };
        let store = open_store_config(&dir, config, 8, 1 << 20, PipeSettings::default());
        let put = |k: &str, i: usize| {
            store
                .put(Bytes::from(k.to_string()), val(i), PutOptions::default())
                .unwrap();
        };
        let tier = |k: &str| store.tier_of(k.as_bytes());
        // Four blocks stored twice (a touch): all in main.
        for round in 0..2 {
            for i in 0..4 {
                put(&format!("h{i}"), i + round);
            }
        }
        store.force_share(0.25);
        // x0 takes probation's one-block share: the main victim h0 goes down.
        put("x0", 10);
        settle(&store);
        assert_eq!(tier("h0"), Some(TierKind::Ssd));
        // x1 puts probation over its share: the probation victim x0 goes down.
        put("x1", 11);
        settle(&store);
        assert_eq!(tier("x0"), Some(TierKind::Ssd));
        assert_eq!(tier("h1"), Some(TierKind::Dram), "main is protected");
        assert_eq!(
            store.get(b"h0").as_deref(),
            Some(&val(1)[..]),
            "served from SSD"
        );
        settle(&store);
        store.check_invariants().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn evicted_blocks_move_to_ssd_and_come_back() {
        let f = fixture("demote", 3 * charge_of(2, 1000), 8, 1 << 20);
        for i in 0..10 {
            f.store
                .put(Bytes::from(format!("k{i}")), val(i), PutOptions::default())
                .unwrap();
        }
        settle(&f.store);
        f.store.check_invariants().unwrap();
        let st = f.store.stats();
        assert_eq!((st.tiers[0].blocks, st.tiers[1].blocks), (3, 7));
        assert_eq!(st.tiers[0].demotions, 7);
        assert!(st.tiers[0].used <= 3 * charge_of(2, 1000));
        assert_eq!(f.store.tier_of(b"k0"), Some(TierKind::Ssd));
        assert_eq!(f.store.tier_of(b"k9"), Some(TierKind::Dram));
        // A read from SSD serves the bytes and promotes the block.
        assert_eq!(f.store.get(b"k0"), Some(val(0)));
        settle(&f.store);
        assert_eq!(f.store.tier_of(b"k0"), Some(TierKind::Dram));
        assert_eq!(f.store.stats().tiers[0].promotions, 1);
        for i in 0..10 {
            assert_eq!(
                f.store.get(format!("k{i}").as_bytes()),
                Some(val(i)),
                "k{i}"
            );
            settle(&f.store);
        }
        f.store.check_invariants().unwrap();
        let m = f.store.match_prefix(&[b("k1"), b("k2")], None);
        assert_eq!(m.matched, 2);
    }

    fn chain(store: &Store, name: &str, n: usize) -> Vec<Bytes> {
        let mut keys: Vec<Bytes> = Vec::new();
        for i in 0..n {
            let k = Bytes::from(format!("{name}{i}"));
            let opts = PutOptions {
                parent: keys.last().cloned(),
                ..Default::default()
            };
            store.put(k.clone(), val(i), opts).unwrap();
            keys.push(k);
        }
        keys
    }

    #[test]
    fn chains_leave_dram_from_the_tail() {
        let f = fixture("chain", 3 * charge_of(2, 1000), 8, 1 << 20);
        let a = chain(&f.store, "a", 2);
        let b = chain(&f.store, "b", 2);
        settle(&f.store);
        // Four blocks, room for three: the leaf of the older chain went, not its head.
        assert_eq!(f.store.tier_of(&a[0]), Some(TierKind::Dram));
        assert_eq!(f.store.tier_of(&a[1]), Some(TierKind::Ssd));
        assert_eq!(f.store.tier_of(&b[1]), Some(TierKind::Dram));
        f.store.check_invariants().unwrap();
        // Deleting a head removes its whole chain, on both tiers.
        assert_eq!(f.store.delete([&a[0][..]]), 1);
        settle(&f.store);
        assert_eq!(f.store.len(), 2);
        f.store.check_invariants().unwrap();
    }

    /// One eviction run demotes its victims in leaf-first LRU order: a
    /// parent whose last DRAM child went down is next if it is the oldest.
    #[test]
    fn one_eviction_run_demotes_in_leaf_first_lru_order() {
        let dir = fresh_dir("run-order");
        let config = StoreConfig {
            dram_capacity: 15 * charge_of(2, 1000),
            high_watermark: 0.99,
            low_watermark: 0.3,
            eviction: Eviction::Lru,
            dram_checksums: true,
        };
        let store = open_store_config(&dir, config, 8, 1 << 20, PipeSettings::default());
        let key = |s: &str| Bytes::from(s.to_string());
        for c in ["a", "b"] {
            for i in 0..4 {
                let opts = PutOptions {
                    parent: (i > 0).then(|| key(&format!("{c}{}", i - 1))),
                    ..Default::default()
                };
                store.put(key(&format!("{c}{i}")), val(i), opts).unwrap();
            }
        }
        for i in 0..7 {
            store
                .put(key(&format!("s{i}")), val(i), PutOptions::default())
                .unwrap();
        }
        settle(&store);
        let on = |k: &str| store.tier_of(k.as_bytes());
        for k in [
            "a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3", "s0", "s1", "s2",
        ] {
            assert_eq!(on(k), Some(TierKind::Ssd), "{k}");
        }
        for k in ["s3", "s4", "s5", "s6"] {
            assert_eq!(on(k), Some(TierKind::Dram), "{k}");
        }
        store.check_invariants().unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_chain_longer_than_dram_is_kept_whole() {
        let f = fixture("long", 3 * charge_of(2, 1000), 8, 1 << 20);
        let keys = chain(&f.store, "c", 8);
        settle(&f.store);
        f.store.check_invariants().unwrap();
        let st = f.store.stats();
        assert_eq!((st.tiers[0].blocks, st.tiers[1].blocks), (3, 5));
        assert_eq!(f.store.match_prefix(&keys, None).matched, 8);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(f.store.get(k), Some(val(i)));
            settle(&f.store);
        }
        f.store.check_invariants().unwrap();
    }

    /// The demotions of a batch (one command's puts) reach the SSD thread
    /// when it ends; one deleted meanwhile is never written.
    #[test]
    fn a_batch_queues_its_demotions_when_it_ends_and_skips_stale_ones() {
        let f = fixture("batch", 2 * charge_of(1, 1000), 8, 1 << 20);
        let appends = || {
            let ssd = f.store.stack.level(1).tier.log_figures().unwrap();
            ssd.appends
        };
        for k in ["a", "b"] {
            put(&f.store, k, &"x".repeat(1000), None).unwrap();
        }
        f.store.batch(|| {
            for k in ["c", "d"] {
                put(&f.store, k, &"y".repeat(1000), None).unwrap();
            }
            assert_eq!(f.store.tier_of(b"a"), Some(TierKind::Ssd));
            assert_eq!(f.store.tier_of(b"b"), Some(TierKind::Ssd));
            assert_eq!(f.store.pending_demotions(), 0, "held until the end");
            assert_eq!(
                f.store.get(b"a").as_deref(),
                Some("x".repeat(1000).as_bytes()),
                "readable meanwhile"
            );
            assert_eq!(f.store.delete([&b"a"[..]]), 1);
            // A nested batch joins this one.
            f.store
                .batch(|| put(&f.store, "e", &"z".repeat(1000), None).unwrap());
            assert_eq!(f.store.pending_demotions(), 0);
        });
        settle(&f.store);
        assert_eq!(appends(), 2, "b and c written, deleted a skipped");
        assert_eq!(f.store.tier_of(b"a"), None);
        assert_eq!(f.store.tier_of(b"b"), Some(TierKind::Ssd));
        assert_eq!(
            f.store.get(b"b").as_deref(),
            Some("x".repeat(1000).as_bytes())
        );
        f.store.check_invariants().unwrap();
    }

    /// An I/O engine that counts writes not yet followed by a sync.
    #[derive(Default)]
    struct CountingEngine {
        unsynced: AtomicU64,
        syncs: AtomicU64,
    }

    impl crate::io::IoEngine for CountingEngine {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn write_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
            crate::io::PsyncEngine.write_at(file, buf, offset)?;
            self.unsynced.fetch_add(1, Relaxed);
            Ok(())
        }
        fn read_at(
            &self,
            file: &std::fs::File,
            buf: &mut [u8],
            offset: u64,
        ) -> std::io::Result<()> {
            crate::io::PsyncEngine.read_at(file, buf, offset)
        }
        fn sync(&self, file: &std::fs::File) -> std::io::Result<()> {
            crate::io::PsyncEngine.sync(file)?;
            self.unsynced.store(0, Relaxed);
            self.syncs.fetch_add(1, Relaxed);
            Ok(())
        }
    }

    /// `TIER ssd` answers once its record is on stable storage: the write is
    /// followed by a sync before put returns (kill -9 would keep the page
    /// cache, so a crash test cannot tell). Demotions are not synced.
    #[test]
    fn ssd_writes_are_synced_before_they_are_acknowledged() {
        let dir = fresh_dir("synced");
        let engine = Arc::new(CountingEngine::default());
        let config = StoreConfig {
            dram_capacity: 4 * charge_of(2, 5000),
            high_watermark: 1.0,
            low_watermark: 1.0,
            eviction: Eviction::Lru,
            dram_checksums: true,
        };
        let opened =
            SsdTier::open_with_engine(&log_config(&dir, 8, 64 << 10), engine.clone()).unwrap();
        let store = over_ssd(config, opened, PipeSettings::default());
        let ssd = |parent: Option<&str>| PutOptions {
            parent: parent.map(b),
            tier: Some(TierKind::Ssd),
            ..Default::default()
        };
        for (i, parent) in [(0, None), (1, Some("s0")), (2, Some("s1"))] {
            let before = engine.syncs.load(Relaxed);
            store.put(b(&format!("s{i}")), val(i), ssd(parent)).unwrap();
            assert_eq!(
                engine.unsynced.load(Relaxed),
                0,
                "s{i}: acknowledged unsynced"
            );
            assert!(engine.syncs.load(Relaxed) > before);
        }
        assert_eq!(store.stats().ssd.unwrap().syncs, engine.syncs.load(Relaxed));
        // Demotions: written, not synced one by one.
        let syncs = engine.syncs.load(Relaxed);
        for i in 0..12u8 {
            store
                .put(
                    b(&format!("d{i}")),
                    Bytes::from(vec![i; 5000]),
                    PutOptions::default(),
                )
                .unwrap();
            settle(&store);
        }
        assert!(store.stats().tiers[0].demotions > 0);
        assert!(engine.unsynced.load(Relaxed) > 0);
        assert_eq!(engine.syncs.load(Relaxed), syncs);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reclaimed_segments_drop_their_blocks_and_descendants() {
        // 2 segments of 64 KiB hold 10 records of 5 KiB + 4 KiB header pages... of
        // 8 KiB each: 16 records; far more are demoted.
        let f = fixture("reclaim", 2 * charge_of(2, 5000), 2, 64 << 10);
        for i in 0..60 {
            f.store
                .put(
                    Bytes::from(format!("r{i:02}")),
                    Bytes::from(vec![i as u8; 5000]),
                    PutOptions::default(),
                )
                .unwrap();
            settle(&f.store);
        }
        f.store.check_invariants().unwrap();
        let st = f.store.stats();
        assert!(st.tiers[1].evictions > 0, "segments were reclaimed");
        assert!(f.store.len() < 60);
        assert_eq!(f.store.get(b"r00"), None, "the oldest blocks are gone");
        assert_eq!(f.store.get(b"r59"), Some(Bytes::from(vec![59u8; 5000])));
    }

    #[test]
    fn ssd_writes_are_durable_and_recovered_with_their_chains() {
        let dir = fresh_dir("recover");
        {
            let store = open_store(&dir, 1 << 20, 8, 1 << 20);
            let ssd = |parent: Option<&str>| PutOptions {
                parent: parent.map(b),
                tier: Some(TierKind::Ssd),
                ..Default::default()
            };
            store.put(b("a"), val(1), ssd(None)).unwrap();
            store.put(b("b"), val(2), ssd(Some("a"))).unwrap();
            store.put(b("c"), val(3), ssd(Some("b"))).unwrap();
            store.put(b("a"), val(4), ssd(None)).unwrap(); // overwrite: newest wins
            assert_eq!(store.tier_of(b"c"), Some(TierKind::Ssd));
            store.check_invariants().unwrap();
        } // dropped without any shutdown step, as after kill -9
        let store = open_store(&dir, 1 << 20, 8, 1 << 20);
        store.check_invariants().unwrap();
        assert_eq!(store.len(), 3);
        assert_eq!(store.get(b"a"), Some(val(4)));
        assert_eq!(store.get(b"c"), Some(val(3)));
        assert_eq!(store.meta(b"c").unwrap().parent, Some(b("b")));
        // Chains came back: deleting the head takes the rest.
        assert_eq!(store.delete([&b"a"[..]]), 1);
        assert!(store.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn demotions_are_dropped_and_counted_when_the_ssd_falls_behind() {
        let dir = fresh_dir("drop");
        // A queue of zero: a demotion is taken only while the demotion thread
        // waits, so a burst of evictions overruns it.
        let settings = PipeSettings {
            queue: 0,
            ..Default::default()
        };
        let store = open_store_with(&dir, 100 * charge_of(3, 1000), 8, 1 << 20, settings);
        let mut prev: Option<Bytes> = None;
        for i in 0..100 {
            let k = Bytes::from(format!("k{i:02}"));
            // Chains of two, so dropped blocks take their children with them.
            let parent = if i % 2 == 1 { prev.clone() } else { None };
            store
                .put(
                    k.clone(),
                    val(i),
                    PutOptions {
                        parent,
                        ..Default::default()
                    },
                )
                .unwrap();
            prev = Some(k);
        }
        store.set_capacity(5 * charge_of(3, 1000));
        settle(&store);
        let st = store.stats();
        let ssd = st.ssd.unwrap();
        assert!(ssd.dropped_demotions > 0, "{ssd:?}");
        assert!(store.len() < 100);
        store.check_invariants().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn deleted_and_replaced_blocks_do_not_come_back_after_a_restart() {
        let dir = fresh_dir("tomb");
        let ssd = || PutOptions {
            tier: Some(TierKind::Ssd),
            ..Default::default()
        };
        {
            let store = open_store(&dir, 3 * charge_of(2, 1000), 8, 1 << 20);
            for k in ["d1", "r1", "p1", "f1", "kept"] {
                store.put(b(k), val(1), ssd()).unwrap();
            }
            assert_eq!(store.delete([&b"d1"[..]]), 1); // deleted
            store.put(b("r1"), val(2), PutOptions::default()).unwrap(); // replaced in DRAM
            assert_eq!(store.get(b"p1"), Some(val(1))); // promoted, then replaced in DRAM
            store.put(b("p1"), val(3), PutOptions::default()).unwrap();
            // Demoted, then deleted.
            for i in 0..6 {
                store
                    .put(Bytes::from(format!("x{i}")), val(i), PutOptions::default())
                    .unwrap();
            }
            settle(&store);
            assert_eq!(store.tier_of(b"x0"), Some(TierKind::Ssd));
            assert_eq!(store.delete([&b"x0"[..]]), 1);
            settle(&store);
            store.check_invariants().unwrap();
        }
        let store = open_store(&dir, 3 * charge_of(2, 1000), 8, 1 << 20);
        store.check_invariants().unwrap();
        for gone in ["d1", "x0"] {
            assert_eq!(store.get(gone.as_bytes()), None, "{gone} came back");
        }
        // Replaced blocks come back only as their newest version (when that
        // version reached SSD by demotion), never as the old one.
        for (k, newest) in [("r1", val(2)), ("p1", val(3))] {
            let got = store.get(k.as_bytes());
            assert!(got.is_none() || got == Some(newest), "{k} came back stale");
        }
        assert_eq!(store.get(b"kept"), Some(val(1)));
        assert_eq!(store.get(b"f1"), Some(val(1)));
        // FLUSHALL is remembered too.
        settle(&store); // reads above promoted blocks and so demoted others
        store.flush();
        settle(&store);
        drop(store);
        let store = open_store(&dir, 3 * charge_of(2, 1000), 8, 1 << 20);
        assert!(
            store.is_empty(),
            "{} blocks came back after FLUSHALL",
            store.len()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_an_ssd_tier_ssd_writes_are_refused() {
        let f = super::fixture(1 << 20);
        let opts = PutOptions {
            tier: Some(TierKind::Ssd),
            ..Default::default()
        };
        assert_eq!(
            f.store.put(b("k"), b("v"), opts).unwrap_err().code(),
            "NOTIER"
        );
    }
}

// ---- Random operations with an SSD tier: never a stale or foreign value ----

mod ssd_random {
    use super::*;
    use crate::io::EngineChoice;
    use crate::ssd::{LogConfig, SsdTier};
    use with_ssd::over_ssd;

    #[derive(Debug, Clone)]
    enum SOp {
        Put {
            key: u8,
            len: u16,
            parent: Option<u8>,
            ssd: bool,
        },
        Get(u8),
        Del(u8),
        Match(u8, u8),
        Flush,
    }

    fn sop() -> impl Strategy<Value = SOp> {
        prop_oneof![
            24 => (0u8..24, 1u16..3000, prop::option::weighted(0.5, 0u8..24), prop::bool::weighted(0.2))
                .prop_map(|(key, len, parent, ssd)| SOp::Put { key, len, parent, ssd }),
            15 => (0u8..24).prop_map(SOp::Get),
            3 => (0u8..24).prop_map(SOp::Del),
            6 => (0u8..24, 1u8..6).prop_map(|(a, n)| SOp::Match(a, n)),
            1 => Just(SOp::Flush),
        ]
    }

    fn open(dir: &std::path::Path) -> Arc<Store> {
        let store_config = StoreConfig {
            dram_capacity: 6 * charge_of(2, 3000),
            high_watermark: 1.0,
            low_watermark: 1.0,
            eviction: Eviction::Lru,
            dram_checksums: true,
        };
        let config = LogConfig {
            path: dir.to_path_buf(),
            capacity: Some(3 * (64 << 10)),
            segment_size: 64 << 10,
            direct: true,
        };
        let opened = SsdTier::open(&config, EngineChoice::Psync).unwrap();
        over_ssd(store_config, opened, PipeSettings::default())
    }

    fn settle(s: &Store) {
        while s.pending_demotions() > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Value of the `version`-th write of `key`: every write is distinct.
    fn value(key: u8, version: u32, len: u16) -> Bytes {
        let mut v = vec![key; len as usize];
        v[..4.min(len as usize)].copy_from_slice(&version.to_le_bytes()[..4.min(len as usize)]);
        Bytes::from(v)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn reads_are_latest_or_missing_before_and_after_restart(ops in prop::collection::vec(sop(), 1..200)) {
            static RUN: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tidepool-ssd-random-{}-{}",
                std::process::id(),
                RUN.fetch_add(1, Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let store = open(&dir);
            // The latest value written for each key (None after delete/flush).
            let mut latest: HashMap<u8, Option<Bytes>> = HashMap::new();
            let mut version = 0u32;
            for op in ops {
                match op {
                    SOp::Put { key, len, parent, ssd } => {
                        version += 1;
                        let v = value(key, version, len);
                        let opts = PutOptions {
                            parent: parent.map(mkey),
                            tier: ssd.then_some(TierKind::Ssd),
                            ..Default::default()
                        };
                        if store.put(mkey(key), v.clone(), opts).is_ok() {
                            latest.insert(key, Some(v));
                        }
                    }
                    SOp::Get(k) => {
                        let got = store.get(&mkey(k));
                        if let Some(g) = got {
                            prop_assert_eq!(Some(&Some(g)), latest.get(&k), "stale or foreign value for {}", k);
                        }
                    }
                    SOp::Del(k) => {
                        store.delete([&mkey(k)[..]]);
                        latest.insert(k, None);
                    }
                    SOp::Match(a, n) => {
                        let keys: Vec<Bytes> = (a..a.saturating_add(n)).map(mkey).collect();
                        store.match_prefix(&keys, None);
                    }
                    SOp::Flush => {
                        store.flush();
                        latest.clear();
                    }
                }
                settle(&store);
                store.check_invariants().map_err(TestCaseError::fail)?;
                // A deleted key's descendants go too: forget what may have gone.
                for (k, v) in latest.iter_mut() {
                    if v.is_some() && store.tier_of(&mkey(*k)).is_none() {
                        *v = None;
                    }
                }
            }
            settle(&store);
            if std::env::var_os("TIDEPOOL_TEST_VERBOSE").is_some() {
                let st = store.stats();
                eprintln!("ops done: version {version}, blocks {}, ssd {:?}", store.len(), st.ssd);
            }
            drop(store);
            // After a restart: whatever comes back is the latest value written.
            let store = open(&dir);
            store.check_invariants().map_err(TestCaseError::fail)?;
            for k in 0..24u8 {
                if let Some(got) = store.get(&mkey(k)) {
                    prop_assert_eq!(Some(&Some(got)), latest.get(&k), "stale value of {} after restart", k);
                }
                settle(&store);
            }
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// The store under `adaptive` makes the same choices as the policy's model:
/// a replay of chains (match, then store from the first miss on) gives the
/// same prefix hit on every request.
#[test]
fn adaptive_store_matches_its_model_request_by_request() {
    let block = 100usize;
    let capacity = 120usize;
    let store = Store::with_parts(
        StoreConfig {
            dram_capacity: capacity as u64 * charge_of(8, block),
            high_watermark: 1.0,
            low_watermark: 1.0,
            eviction: Eviction::Adaptive,
            dram_checksums: true,
        },
        None,
        Arc::new(|| 1_000_000),
    );
    // Conversations of growing chains, a shared root, and one-off scans.
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut convs: Vec<Vec<u64>> = (0..30).map(|c| vec![0, 1000 + c]).collect();
    let mut fresh = 100_000u64;
    let mut trace = Vec::new();
    for _ in 0..3000 {
        if next() % 4 == 0 {
            let len = 3 + next() % 10;
            trace.push((0..len).map(|i| fresh + i).collect::<Vec<u64>>());
            fresh += len;
        } else {
            let c = (next() % 30) as usize;
            let c = c * c / 30; // skewed towards the first conversations
            convs[c].push(fresh);
            fresh += 1;
            if convs[c].len() > 14 {
                convs[c].truncate(2);
            }
            trace.push(convs[c].clone());
        }
    }
    let keys: Vec<Vec<Bytes>> = trace
        .iter()
        .map(|c| {
            c.iter()
                .map(|i| Bytes::copy_from_slice(&i.to_be_bytes()))
                .collect()
        })
        .collect();
    let mut model = crate::policy::SegCache::new(capacity, crate::policy::CANDIDATES[0]);
    let mut tuner = crate::policy::Tuner::new(capacity);
    let value = Bytes::from(vec![7u8; block]);
    let mut shares = std::collections::BTreeSet::new();
    for (i, chain) in keys.iter().enumerate() {
        model.share = tuner.observe(chain);
        let want = model.request(chain);
        let got = store.match_prefix(chain, None).matched;
        assert_eq!(got, want, "request {i}: store and model disagree");
        for (j, k) in chain.iter().enumerate().skip(got) {
            let parent = j.checked_sub(1).map(|p| chain[p].clone());
            store
                .put(
                    k.clone(),
                    value.clone(),
                    PutOptions {
                        parent,
                        ..Default::default()
                    },
                )
                .unwrap();
        }
        assert_eq!(store.probation_share(), model.share);
        shares.insert(store.probation_share().to_bits());
        if i % 500 == 0 {
            store.check_invariants().unwrap();
        }
    }
    store.check_invariants().unwrap();
    assert!(store.len() <= capacity);
    assert!(
        shares.len() > 1,
        "the tuner never moved off its first share"
    );
}

/// Matches with leases race deletes and re-puts of the same keys: every lease
/// taken is exactly the set of keys whose lease count went up, so once all are
/// released every block can be evicted again, and the indexes stay consistent.
#[test]
fn leased_matches_racing_deletes_leave_no_pin_behind() {
    let f = fixture(1 << 30);
    let store = Arc::new(f.store);
    let chain: Vec<Bytes> = (0..64).map(|i| b(&format!("c{i}"))).collect();
    // Independent keys (no parent), so that deleting one leaves those after
    // it stored: a match racing the delete may have leased them. Only the
    // deleted key is put again (a put over a key would reset its count).
    for k in &chain {
        store.put(k.clone(), b("v"), PutOptions::default()).unwrap();
    }
    std::thread::scope(|scope| {
        let matcher = scope.spawn(|| {
            let mut leases = Vec::new();
            for _ in 0..5_000 {
                let m = store.match_prefix(&chain, Some(60_000));
                assert!(m.tiers.len() == m.matched);
                match m.lease {
                    Some(l) => leases.push(l),
                    None => assert_eq!(m.matched, 0, "a lease was asked for"),
                }
            }
            leases
        });
        let mut round = 0;
        while !matcher.is_finished() {
            let k = &chain[(round * 7) % 64];
            store.delete([&k[..]]);
            let _ = store.put(k.clone(), b("v"), PutOptions::default());
            round += 1;
        }
        for lease in matcher.join().unwrap() {
            store.release(lease);
        }
    });
    store.check_invariants().unwrap();
    assert_nothing_pinned(&store);
}

/// A key deleted between the two passes of a match ends the prefix there, and
/// the lease holds exactly the keys the second pass pinned (here the ones after
/// the deleted key too), so releasing it unpins everything.
#[test]
fn a_key_deleted_between_the_passes_of_a_match_leaks_no_pin() {
    let f = fixture(1 << 30);
    let store = Arc::new(f.store);
    let keys: Vec<Bytes> = (0..10).map(|i| b(&format!("k{i}"))).collect();
    for k in &keys {
        store.put(k.clone(), b("v"), PutOptions::default()).unwrap();
    }
    let s = store.clone();
    let victim = keys[3].clone();
    BETWEEN_MATCH_PASSES.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || {
            s.delete([&victim[..]]);
        }))
    });
    let m = store.match_prefix(&keys, Some(60_000));
    BETWEEN_MATCH_PASSES.with(|h| h.borrow_mut().take());
    assert_eq!(m.matched, 3);
    assert_eq!(m.tiers.len(), 3);
    store.shed(u64::MAX);
    assert_eq!(
        store.len(),
        9,
        "the leased blocks stay while the lease does"
    );
    assert!(store.release(m.lease.unwrap()));
    store.check_invariants().unwrap();
    assert_nothing_pinned(&store);
}

/// A match visits keys grouped by shard, so keys after a miss may be found
/// before the miss is seen: they are neither refreshed nor leased. Here k3 is
/// missing and k4..k9 are stored (independent keys, not a chain).
#[test]
fn keys_after_a_miss_are_neither_refreshed_nor_leased() {
    let f = fixture(1 << 30);
    let store = f.store;
    let keys: Vec<Bytes> = (0..10).map(|i| b(&format!("k{i}"))).collect();
    // Oldest first: k4..k9, then x, then k0..k2.
    for k in keys[4..].iter().chain([&b("x")]).chain(&keys[..3]) {
        store.put(k.clone(), b("v"), PutOptions::default()).unwrap();
    }
    // The case this is about: some key after the miss lies in a shard the
    // match visits before the missing key's.
    let after = keys[4..]
        .iter()
        .filter(|k| shard_of(k) < shard_of(&keys[3]));
    assert!(after.count() >= 2, "pick other key names");
    let m = store.match_prefix(&keys, None);
    assert_eq!((m.matched, m.tiers.len()), (3, 3));
    // k4..k9 are still the least recently used: they go first, x stays.
    for _ in 4..10 {
        store.shed(1);
    }
    assert_eq!(store.len(), 4);
    assert!(store.tier_of(b"x").is_some());

    let m = store.match_prefix(&keys, Some(60_000));
    assert_eq!(m.matched, 3);
    store.check_invariants().unwrap();
    store.shed(u64::MAX);
    assert_eq!(store.len(), 3, "only the matched prefix is leased");
    assert!(store.release(m.lease.unwrap()));
    assert_nothing_pinned(&store);
}

/// A match without a lease refreshes keys as it meets them and gives the
/// ones past the miss their old stamps back. An eviction in between re-files
/// those (stale heads) under the newer stamps: given back, they are filed
/// again under the old, and they are still the first to go.
#[test]
fn keys_past_a_miss_filed_anew_in_the_meantime_go_back_to_their_place() {
    let f = fixture(1 << 30);
    let store = Arc::new(f.store);
    // k3 (missing) in the last shard, so that the match meets every other
    // key before the miss.
    let names = (0..).map(|j| b(&format!("n{j}")));
    let mut keys: Vec<Bytes> = names
        .clone()
        .filter(|k| shard_of(k) < SHARDS - 1)
        .take(9)
        .collect();
    let last = names.clone().find(|k| shard_of(k) == SHARDS - 1).unwrap();
    keys.insert(3, last);
    // Oldest first: k4..k9, then x, then k0..k2.
    for k in keys[4..].iter().chain([&b("x")]).chain(&keys[..3]) {
        store.put(k.clone(), b("v"), PutOptions::default()).unwrap();
    }
    let s = store.clone();
    BETWEEN_MATCH_PASSES.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || {
            // k4..k9 look fresh now, so eviction files them again under
            // their new stamps and takes x.
            assert!(s.shed(1) > 0);
        }))
    });
    let m = store.match_prefix(&keys, None);
    BETWEEN_MATCH_PASSES.with(|h| h.borrow_mut().take());
    assert_eq!(m.matched, 3);
    assert!(store.tier_of(b"x").is_none(), "x went in between");
    store.check_invariants().unwrap();
    for _ in 4..10 {
        store.shed(1);
    }
    assert_eq!(store.len(), 3, "k4..k9 went first");
    for k in &keys[..3] {
        assert!(store.tier_of(k).is_some());
    }
    store.check_invariants().unwrap();
}

/// Copies of large values go through the value allocator (the server's
/// arena); small ones, and values the caller hands over, do not.
#[test]
fn large_value_copies_go_through_the_value_allocator() {
    let f = fixture(1 << 30);
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    assert!(f.store.set_value_alloc(Arc::new(move |v: &[u8]| {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(Bytes::copy_from_slice(v))
    })));
    let big = Bytes::from(vec![7u8; VALUE_ALLOC_MIN]);
    f.store
        .put(b("big"), big.clone(), PutOptions::default())
        .unwrap();
    f.store
        .put(b("small"), b("v"), PutOptions::default())
        .unwrap();
    let handed = PutOptions {
        value_exclusive: true,
        ..Default::default()
    };
    f.store.put(b("own"), big.clone(), handed).unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(f.store.get(b"big").unwrap(), big);
    // An allocator that cannot: the heap takes the copy.
    let g = fixture(1 << 30);
    g.store.set_value_alloc(Arc::new(|_: &[u8]| None));
    g.store
        .put(b("big"), big.clone(), PutOptions::default())
        .unwrap();
    assert_eq!(g.store.get(b"big").unwrap(), big);
}

/// Every block can be evicted: no pin or lease is left behind.
fn assert_nothing_pinned(store: &Store) {
    store.shed(u64::MAX);
    assert_eq!(
        store.len(),
        0,
        "a block stayed pinned after every lease was released"
    );
}

#[test]
fn held_values_count_until_their_lease_ends_whatever_happens_to_the_block() {
    let f = fixture(10_000);
    let s = &f.store;
    let v = "x".repeat(1000);
    let charge = charge_of(2, 1000);
    for k in ["k0", "k1", "k2", "k3"] {
        put(s, k, &v, None).unwrap();
    }
    let keys: Vec<Bytes> = ["k0", "k1", "k2", "k3"].iter().map(|k| b(k)).collect();
    let (lease, n) = s.lease(&keys, 60_000);
    assert_eq!(n, 4);
    for k in &keys {
        let Fetch::Memory(val) = s.fetch_memory(k) else {
            panic!("in memory")
        };
        s.hold(lease, k, &val);
    }
    // Deleted, overwritten, and a copy that was never stored: all retained.
    assert_eq!(s.delete([&b"k0"[..]]), 1);
    put(s, "k1", &v, None).unwrap();
    s.hold(lease, &b("k2"), &Bytes::from(vec![0u8; 1000]));
    assert_eq!(s.retained(), 3 * charge);
    s.check_invariants().unwrap();
    // A second lease on the overwritten value's successor is its own.
    let (other, _) = s.lease(&[b("k1")], 60_000);
    let Fetch::Memory(val) = s.fetch_memory(b"k1") else {
        panic!()
    };
    s.hold(other, &b("k1"), &val);
    assert!(s.release(lease));
    assert_eq!(s.retained(), 0);
    s.check_invariants().unwrap();
    // Retained bytes bound writers: with 3 of 4 KiB-ish blocks' room held,
    // the store evicts, then refuses.
    put(s, "k1", &v, None).unwrap();
    assert_eq!(s.retained(), charge);
    s.release(other);
    assert_eq!(s.retained(), 0);
    let (l, _) = s.lease(&keys, 60_000);
    for k in &keys {
        if let Fetch::Memory(val) = s.fetch_memory(k) {
            s.hold(l, k, &val);
        }
    }
    s.flush();
    assert_eq!(s.retained(), 0);
    s.check_invariants().unwrap();
}

#[test]
fn a_lease_that_ended_keeps_nothing_and_retained_bytes_make_writers_evict_or_fail() {
    let f = fixture(4 * charge_of(2, 1000));
    let s = &f.store;
    let v = "x".repeat(1000);
    s.hold(12345, &b("zz"), &Bytes::from(vec![0u8; 1000]));
    assert_eq!(s.retained(), 0, "no such lease: nothing held");
    for k in ["k0", "k1", "k2"] {
        put(s, k, &v, None).unwrap();
    }
    let keys = [b("k0"), b("k1"), b("k2")];
    let (lease, _) = s.lease(&keys, 60_000);
    for k in &keys {
        let Fetch::Memory(val) = s.fetch_memory(k) else {
            panic!()
        };
        s.hold(lease, k, &val);
    }
    assert_eq!(s.delete(keys.iter().map(|k| &k[..])), 3);
    // Deleted, and still counted: what eviction and -OOM go by.
    assert_eq!(s.used(), s.retained());
    assert_eq!(s.retained(), 3 * charge_of(2, 1000));
    // Room for one block: a second evicts the first, a pinned one stays and
    // the next write is refused.
    put(s, "n0", &v, None).unwrap();
    put(s, "n1", &v, None).unwrap();
    assert!(s.get(b"n0").is_none());
    assert_eq!(s.set_pinned([&b"n1"[..]], true), 1);
    assert!(matches!(
        put(s, "n2", &v, None),
        Err(StoreError::OutOfMemory { .. })
    ));
    f.time.fetch_add(60_001, Relaxed);
    s.expire_due();
    assert_eq!(s.retained(), 0);
    put(s, "n2", &v, None).unwrap();
    s.check_invariants().unwrap();
}

#[test]
fn a_block_with_children_keeps_its_parent_so_no_cycle_can_form() {
    let f = fixture(1 << 20);
    let s = &f.store;
    put(s, "a", "1", None).unwrap();
    put(s, "b", "2", Some("a")).unwrap();
    put(s, "c", "3", Some("b")).unwrap();
    assert_eq!(put(s, "a", "1", Some("c")), Err(StoreError::Reparent));
    assert_eq!(put(s, "a", "1", Some("b")), Err(StoreError::Reparent));
    assert_eq!(put(s, "b", "2", Some("c")), Err(StoreError::Reparent));
    // The refused writes left everything as it was.
    s.check_invariants().unwrap();
    assert_eq!(s.get(b"a").as_deref(), Some(&b"1"[..]));
    // Same parent, a leaf's new parent, and re-rooting are allowed.
    put(s, "b", "2b", Some("a")).unwrap();
    put(s, "x", "x", None).unwrap();
    put(s, "c", "3", Some("x")).unwrap();
    put(s, "b", "2", None).unwrap();
    s.check_invariants().unwrap();
    // Everything can be evicted or deleted.
    assert_eq!(s.delete([&b"a"[..], &b"x"[..], &b"b"[..]]), 3);
    assert!(s.is_empty());
}

#[test]
fn a_trimmed_lease_keeps_its_first_blocks_and_gives_back_the_rest() {
    let f = fixture(8 * charge_of(1, 1));
    for k in ["a", "b", "c"] {
        put(&f.store, k, "1", None).unwrap();
    }
    let leases = |k: &str| f.store.meta(k.as_bytes()).unwrap().leases;
    let id = f
        .store
        .match_prefix(&[b("a"), b("b"), b("c")], Some(60_000))
        .lease
        .unwrap();
    assert!(f.store.trim_lease(id, 5), "keeping more than it holds");
    assert_eq!((leases("a"), leases("b"), leases("c")), (1, 1, 1));
    assert!(f.store.trim_lease(id, 1));
    assert_eq!((leases("a"), leases("b"), leases("c")), (1, 0, 0));
    f.store.check_invariants().unwrap();
    assert!(f.store.trim_lease(id, 0), "keeping none ends it");
    assert_eq!(leases("a"), 0);
    assert_eq!(f.store.live_leases(), 0);
    assert!(!f.store.trim_lease(id, 1));
    assert!(!f.store.release(id));
    f.store.check_invariants().unwrap();
}
