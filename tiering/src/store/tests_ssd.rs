//! The store's tests with an SSD level: demotion, promotion, staging,
//! durability and recovery, and random operations checked before and after
//! a restart.

use super::suite::{b, mkey, put};
use super::*;
use crate::stack::TierSpec;
use proptest::prelude::*;
use std::collections::HashMap;
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
        let store = Store::new(StoreConfig::default());
        let opts = PutOptions {
            tier: Some(TierKind::Ssd),
            ..Default::default()
        };
        assert_eq!(
            store.put(b("k"), b("v"), opts).unwrap_err().code(),
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
