//! One store test suite run over every stack of tiers: whatever the levels
//! are, the store must behave the same to its callers.
//!
//! Stacks: [dram] with `lru` and with `adaptive`, [dram, ssd] with psync
//! and with io_uring (where the kernel allows it), and [stand-in, dram],
//! the shape of a GPU tier over DRAM. Every test fills the first level and
//! looks at what leaves it: with a level below, "evicted" means demoted
//! there (the lower levels are made big enough never to evict in these
//! tests), and a block leaves the store only from the last level. The SSD
//! level's pipe does not promote on reads here, so that a read leaves a
//! block where it is in every stack and one model fits all; promotion and
//! staging have their own tests beside the SSD tier's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::{Eviction, PipeSettings, PutOptions, Store, StoreBuilder, StoreConfig};
use crate::event::{Event, EventKind, EventSink};
use crate::index::charge_of;
use crate::io::EngineChoice;
use crate::noop::StandInTier;
use crate::ssd::{LogConfig, SsdTier};
use crate::stack::TierSpec;
use crate::tier::TierKind;
use crate::StoreError;

/// Records every event.
#[derive(Default)]
pub(super) struct Recorder(pub(super) parking_lot::Mutex<Vec<(EventKind, Bytes)>>);

impl EventSink for Recorder {
    fn enabled(&self) -> bool {
        true
    }
    fn publish(&self, e: Event) {
        self.0.lock().push((e.kind, e.key));
    }
}

pub(super) fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub(super) fn put(s: &Store, k: &str, v: &str, parent: Option<&str>) -> Result<bool, StoreError> {
    s.put(
        b(k),
        b(v),
        PutOptions {
            parent: parent.map(b),
            ..Default::default()
        },
    )
}

/// The stacks the suite runs over.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Dram(Eviction),
    DramSsd(EngineChoice),
    StandInDram,
}

/// The shapes this machine can build (io_uring only where the kernel
/// allows it).
fn shapes() -> Vec<Shape> {
    let mut shapes = vec![
        Shape::Dram(Eviction::Lru),
        Shape::Dram(Eviction::Adaptive),
        Shape::DramSsd(EngineChoice::Psync),
        Shape::StandInDram,
    ];
    if crate::io::build(EngineChoice::Uring).is_ok() {
        shapes.push(Shape::DramSsd(EngineChoice::Uring));
    } else {
        crate::skipped("io_uring refused here: the store suite ran [dram, ssd] on psync only");
    }
    shapes
}

/// A store over one stack, with its events and clock.
struct Stack {
    shape: Shape,
    store: Arc<Store>,
    events: Arc<Recorder>,
    time: Arc<AtomicU64>,
    /// The first level's kind, and the second's when there is one.
    top: TierKind,
    below: Option<TierKind>,
    dir: Option<PathBuf>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh directory for one SSD level.
fn fresh_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tidepool-suite-{}-{}",
        std::process::id(),
        N.fetch_add(1, Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `shape` with a first level of `top` bytes (lower levels far bigger)
/// and watermarks (1.0, 1.0).
fn stack(shape: Shape, top: u64) -> Stack {
    stack_with(shape, top, (1.0, 1.0))
}

fn stack_with(shape: Shape, top: u64, (high, low): (f64, f64)) -> Stack {
    let events = Arc::new(Recorder::default());
    let time = Arc::new(AtomicU64::new(1_000_000));
    let t = time.clone();
    let eviction = match shape {
        Shape::Dram(e) => e,
        _ => Eviction::Lru,
    };
    let config = StoreConfig {
        dram_capacity: top,
        high_watermark: high,
        low_watermark: low,
        eviction,
        dram_checksums: true,
    };
    let builder = StoreBuilder::new(config)
        .events(events.clone() as Arc<dyn EventSink>)
        .clock(Arc::new(move || t.load(Relaxed)));
    let mut dir = None;
    let (builder, top_kind, below) = match shape {
        Shape::Dram(_) => (builder.with_tier(TierSpec::dram(top)), TierKind::Dram, None),
        Shape::DramSsd(engine) => {
            let d = fresh_dir();
            let log = LogConfig {
                path: d.clone(),
                capacity: Some(8 << 20),
                segment_size: 512 << 10,
                direct: true,
            };
            dir = Some(d);
            let opened = SsdTier::open(&log, engine).unwrap();
            let pipe = PipeSettings {
                promote: false,
                stage_on_match: false,
                ..PipeSettings::default()
            };
            let builder = builder
                .with_tier(TierSpec::dram(top))
                .with_tier(opened.into_spec(pipe));
            (builder, TierKind::Dram, Some(TierKind::Ssd))
        }
        Shape::StandInDram => {
            let gpu = TierSpec::new(Arc::new(StandInTier::new(TierKind::Gpu)), top);
            let builder = builder.with_tier(gpu).with_tier(TierSpec::dram(1 << 30));
            (builder, TierKind::Gpu, Some(TierKind::Dram))
        }
    };
    Stack {
        shape,
        store: builder.build().unwrap(),
        events,
        time,
        top: top_kind,
        below,
        dir,
    }
}

impl Stack {
    /// Accounted bytes in the first level.
    fn top_used(&self) -> u64 {
        self.store.stats().tiers[0].used
    }

    /// Whether `k` is stored in the first level.
    fn in_top(&self, k: &str) -> bool {
        self.store.tier_of(k.as_bytes()) == Some(self.top)
    }

    /// Asserts that `k` left the first level: it is in the level below, or
    /// gone from a stack of one level.
    fn assert_left(&self, k: &str) {
        assert_eq!(
            self.store.tier_of(k.as_bytes()),
            self.below,
            "{:?}: where {k} went",
            self.shape
        );
    }

    /// Blocks dropped from the store by eviction, in order.
    fn dropped(&self) -> Vec<String> {
        self.events
            .0
            .lock()
            .iter()
            .filter(|(k, _)| *k == EventKind::Evicted)
            .map(|(_, key)| String::from_utf8_lossy(key).into_owned())
            .collect()
    }

    /// Waits for the device level's worker to be done.
    fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.store.pending_demotions() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "demotions never finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn check(&self) {
        self.settle();
        self.store
            .check_invariants()
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.shape));
    }
}

#[test]
fn put_get_overwrite_delete() {
    for shape in shapes() {
        let f = stack(shape, 1 << 20);
        put(&f.store, "a", "1", None).unwrap();
        assert_eq!(f.store.get(b"a"), Some(b("1")));
        put(&f.store, "a", "22", None).unwrap();
        assert_eq!(f.store.get(b"a"), Some(b("22")));
        assert_eq!(f.store.len(), 1);
        assert_eq!(f.top_used(), charge_of(1, 2));
        assert!(f.in_top("a"));
        assert_eq!(f.store.delete([&b"a"[..], b"zz"]), 1);
        assert_eq!(f.store.get(b"a"), None);
        assert_eq!(f.top_used(), 0);
        assert_eq!(f.store.stats().tiers[0].hits, 2, "{shape:?}");
        f.check();
    }
}

#[test]
fn parent_must_be_stored_and_not_self() {
    for shape in shapes() {
        let f = stack(shape, 1 << 20);
        assert_eq!(
            put(&f.store, "b", "x", Some("a")),
            Err(StoreError::NoParent)
        );
        assert_eq!(
            put(&f.store, "a", "x", Some("a")),
            Err(StoreError::SelfParent)
        );
        assert!(f.store.is_empty());
        f.check();
    }
}

#[test]
fn eviction_is_leaf_first_lru() {
    for shape in shapes() {
        // Room for exactly three one-byte blocks with one-byte keys.
        let f = stack(shape, 3 * charge_of(1, 1));
        put(&f.store, "a", "1", None).unwrap();
        put(&f.store, "b", "1", Some("a")).unwrap();
        put(&f.store, "x", "1", None).unwrap();
        // "a" is the oldest but has a child in the level: the leaf "b"
        // leaves first, then "a".
        f.store.get(b"x");
        put(&f.store, "y", "1", None).unwrap();
        f.assert_left("b");
        assert!(f.in_top("a") && f.in_top("x"), "{shape:?}");
        put(&f.store, "z", "1", None).unwrap();
        f.assert_left("a");
        assert!(f.in_top("x"), "{shape:?}");
        if f.below.is_none() {
            assert_eq!(f.dropped(), ["b", "a"]);
        } else {
            assert!(f.dropped().is_empty(), "{shape:?}: {:?}", f.dropped());
            assert_eq!(f.store.get(b"b"), Some(b("1")), "{shape:?}");
        }
        f.check();
    }
}

/// One eviction run (from the high watermark down to the low one) takes
/// many victims, in leaf-first LRU order: a parent whose last child just went
/// is next if it is the oldest, wherever its shard.
#[test]
fn one_eviction_run_takes_its_victims_in_leaf_first_lru_order() {
    for shape in shapes() {
        let f = stack_with(shape, 15 * charge_of(2, 1), (0.99, 0.3));
        // Two chains of four, then six single blocks: 14 blocks, under the
        // high watermark.
        for chain in ["a", "b"] {
            for i in 0..4 {
                let parent = (i > 0).then(|| format!("{chain}{}", i - 1));
                put(&f.store, &format!("{chain}{i}"), "1", parent.as_deref()).unwrap();
            }
        }
        for i in 0..6 {
            put(&f.store, &format!("s{i}"), "1", None).unwrap();
        }
        // The 15th passes it: one run moves the first level down to 4 blocks.
        put(&f.store, "t0", "1", None).unwrap();
        let gone = [
            "a3", "a2", "a1", "a0", "b3", "b2", "b1", "b0", "s0", "s1", "s2",
        ];
        for k in gone {
            f.assert_left(k);
        }
        for k in ["s3", "s4", "s5", "t0"] {
            assert!(f.in_top(k), "{shape:?}: {k}");
        }
        if f.below.is_none() {
            assert_eq!(f.dropped(), gone, "{shape:?}");
        }
        f.check();
    }
}

#[test]
fn overwriting_at_capacity_moves_out_only_for_growth() {
    for shape in shapes() {
        let f = stack(shape, 3 * charge_of(1, 10));
        for k in ["a", "b", "c"] {
            put(&f.store, k, "0123456789", None).unwrap();
        }
        // Same size: the old version makes room for the new one; nothing
        // else goes, not even the old version itself (the least recently
        // used).
        put(&f.store, "a", "9876543210", None).unwrap();
        assert!(["a", "b", "c"].iter().all(|k| f.in_top(k)), "{shape:?}");
        assert_eq!(f.store.get(b"a"), Some(b("9876543210")));
        // Growing by a byte needs a byte more: one neighbour (the LRU, "b")
        // goes.
        put(&f.store, "c", "0123456789x", None).unwrap();
        f.assert_left("b");
        assert!(f.top_used() <= 3 * charge_of(1, 10));
        f.check();
    }
}

#[test]
fn pinned_and_leased_blocks_stay_and_writes_fail_when_stuck() {
    for shape in shapes() {
        let f = stack(shape, 2 * charge_of(1, 1));
        let pin = PutOptions {
            pin: true,
            ..Default::default()
        };
        f.store.put(b("p"), b("1"), pin).unwrap();
        put(&f.store, "l", "1", None).unwrap();
        let m = f.store.match_prefix(&[b("l")], Some(60_000));
        assert_eq!(m.matched, 1);
        let err = put(&f.store, "n", "1", None).unwrap_err();
        assert_eq!(err.code(), "OOM", "{shape:?}");
        assert_eq!(f.top_used(), 2 * charge_of(1, 1));
        // Releasing the lease lets "l" go again.
        assert!(f.store.release(m.lease.unwrap()));
        assert!(!f.store.release(m.lease.unwrap()));
        put(&f.store, "n", "1", None).unwrap();
        f.assert_left("l");
        assert!(f.in_top("p"));
        // Leases run out.
        let m = f.store.match_prefix(&[b("n")], Some(100));
        assert!(put(&f.store, "o", "1", None).is_err());
        f.time.fetch_add(100, Relaxed);
        f.store.expire_due();
        assert_eq!(f.store.stats().leases, 0);
        put(&f.store, "o", "1", None).unwrap();
        assert!(!f.store.release(m.lease.unwrap()));
        f.check();
    }
}

#[test]
fn conditional_puts() {
    for shape in shapes() {
        let f = stack(shape, 1 << 20);
        let nx = PutOptions {
            only_if_exists: Some(false),
            ..Default::default()
        };
        let xx = PutOptions {
            only_if_exists: Some(true),
            ..Default::default()
        };
        assert_eq!(f.store.put(b("a"), b("1"), xx.clone()), Ok(false));
        assert_eq!(f.store.put(b("a"), b("1"), nx.clone()), Ok(true));
        assert_eq!(f.store.put(b("a"), b("2"), nx), Ok(false));
        assert_eq!(f.store.get(b"a"), Some(b("1")));
        assert_eq!(f.store.put(b("a"), b("3"), xx), Ok(true));
        assert_eq!(f.store.get(b"a"), Some(b("3")));
        assert_eq!(f.top_used(), charge_of(1, 1));
        f.check();
    }
}

#[test]
fn match_counts_leading_stored_keys_in_any_level() {
    for shape in shapes() {
        let f = stack(shape, 3 * charge_of(1, 1));
        put(&f.store, "a", "1", None).unwrap();
        put(&f.store, "b", "1", Some("a")).unwrap();
        put(&f.store, "d", "1", None).unwrap();
        let m = f
            .store
            .match_prefix(&[b("a"), b("b"), b("c"), b("d")], None);
        assert_eq!((m.matched, m.lease), (2, None));
        assert_eq!(m.tiers, [f.top, f.top]);
        // "b" leaves the first level: still matched, from where it is.
        put(&f.store, "e", "1", None).unwrap();
        put(&f.store, "f", "1", None).unwrap();
        let m = f.store.match_prefix(&[b("a"), b("b")], Some(1000));
        let want: Vec<TierKind> = match f.below {
            Some(below) => vec![f.top, below],
            None => vec![f.top],
        };
        assert_eq!(m.tiers, want, "{shape:?}");
        assert!(f.store.release(m.lease.unwrap()));
        let st = f.store.stats();
        assert_eq!((st.keys_queried, st.matches), (6, 2));
        f.check();
    }
}

#[test]
fn delete_and_expiry_cascade_to_descendants_in_every_level() {
    for shape in shapes() {
        let f = stack(shape, 3 * charge_of(2, 1));
        put(&f.store, "a", "1", None).unwrap();
        put(&f.store, "b", "1", Some("a")).unwrap();
        put(&f.store, "c", "1", Some("b")).unwrap();
        put(&f.store, "c2", "1", Some("b")).unwrap();
        assert_eq!(f.store.delete([&b"b"[..]]), 1);
        assert_eq!(f.store.len(), 1);
        f.check();
        put(&f.store, "b", "1", Some("a")).unwrap();
        let ttl = PutOptions {
            parent: Some(b("b")),
            ttl_ms: Some(50),
            ..Default::default()
        };
        f.store.put(b("t"), b("1"), ttl).unwrap();
        // With a level below, a fourth block pushes the chain's tail there.
        let pushed = f.below.is_some();
        if pushed {
            put(&f.store, "z", "1", None).unwrap();
            f.assert_left("t");
        }
        assert!(f.store.set_expiry(b"a", Some(1_000_000 + 10)));
        f.time.fetch_add(10, Relaxed);
        assert_eq!(
            f.store.get(b"t"),
            Some(b("1")),
            "t's own ttl has not run out"
        );
        assert_eq!(f.store.expire_due(), 1);
        assert_eq!(f.store.len(), pushed as usize, "{shape:?}: only z is left");
        f.check();
    }
}

/// A value that names its key, writer and sequence number, so that a reader
/// can tell a torn or foreign value.
pub(super) fn tagged_value(key: &[u8], writer: u32, seq: u32) -> Bytes {
    let len = 64 + (seq as usize % 40);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(key);
    v.extend_from_slice(&writer.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    let mut x = u64::from(seq) << 8 | u64::from(writer);
    while v.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.push((x >> 56) as u8);
    }
    Bytes::from(v)
}

pub(super) fn check_value(key: &[u8], got: &[u8]) {
    assert!(got.len() >= key.len() + 8, "{key:?}: {} bytes", got.len());
    assert_eq!(&got[..key.len()], key, "another key's value");
    let writer = u32::from_le_bytes(got[key.len()..key.len() + 4].try_into().unwrap());
    let seq = u32::from_le_bytes(got[key.len() + 4..key.len() + 8].try_into().unwrap());
    assert_eq!(
        got,
        &tagged_value(key, writer, seq)[..],
        "{key:?}: torn value"
    );
}

#[test]
fn concurrent_writers_keep_invariants() {
    for shape in shapes() {
        let f = Arc::new(stack(shape, 64 * charge_of(4, 64)));
        let cap = 64 * charge_of(4, 64);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2u32)
            .map(|r| {
                let (f, stop) = (f.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut hits = 0u64;
                    let mut i = r;
                    while !stop.load(Relaxed) {
                        let k = (i % 300).to_le_bytes();
                        if let Some(got) = f.store.get(&k) {
                            check_value(&k, &got);
                            hits += 1;
                        }
                        i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    }
                    hits
                })
            })
            .collect();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..3_000u32 {
                        let k = Bytes::from(((t * 100_000 + i) % 300).to_le_bytes().to_vec());
                        let parent = (i % 3 != 0).then(|| {
                            Bytes::from(((t * 100_000 + i - 1) % 300).to_le_bytes().to_vec())
                        });
                        let opts = PutOptions {
                            parent,
                            ..Default::default()
                        };
                        let _ = f.store.put(k.clone(), tagged_value(&k, t, i), opts);
                        if let Some(got) = f.store.get(&k) {
                            check_value(&k, &got);
                        }
                        if i % 97 == 0 {
                            f.store.delete([&k[..]]);
                        }
                        if i % 13 == 0 {
                            let chain: Vec<Bytes> = (0..4u32)
                                .map(|j| Bytes::from(((i + j) % 300).to_le_bytes().to_vec()))
                                .collect();
                            if let Some(id) = f.store.match_prefix(&chain, Some(5_000)).lease {
                                f.store.release(id);
                            }
                        }
                        assert!(f.top_used() <= cap + 4 * charge_of(4, 104));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        stop.store(true, Relaxed);
        let hits: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(hits > 0, "{shape:?}: the readers found nothing");
        f.check();
        assert!(f.top_used() <= cap);
    }
}

// ---- Against a plain model: a HashMap, an LRU stamp order, two levels ----

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: u8,
        len: u16,
        parent: Option<u8>,
        pin: bool,
    },
    Get(u8),
    Match {
        start: u8,
        n: u8,
        lease: bool,
    },
    Release(u8),
    Delete(u8),
    Unpin(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..16, 0u16..300, prop::option::weighted(0.6, 0u8..16), prop::bool::weighted(0.1))
            .prop_map(|(key, len, parent, pin)| Op::Put { key, len, parent, pin }),
        3 => (0u8..16).prop_map(Op::Get),
        2 => (0u8..16, 1u8..5, prop::bool::weighted(0.3)).prop_map(|(start, n, lease)| Op::Match { start, n, lease }),
        1 => (0u8..8).prop_map(Op::Release),
        1 => (0u8..16).prop_map(Op::Delete),
        1 => (0u8..16).prop_map(Op::Unpin),
    ]
}

#[derive(Debug, Clone)]
struct MEntry {
    len: u64,
    parent: Option<u8>,
    children: Vec<u8>,
    stamp: u64,
    pinned: bool,
    leases: u32,
    /// In the first level (else in the second).
    top: bool,
}

/// The store as a map: the first level in LRU order, leaf-first, and (when
/// `below`) a level below with room for everything that is demoted to it.
#[derive(Default)]
struct Model {
    map: HashMap<u8, MEntry>,
    clock: u64,
    /// Bytes in the first level.
    used: u64,
    cap: u64,
    below: bool,
    /// The parent the put under way is linking its block under.
    linking: Option<u8>,
    /// Blocks that left the store by eviction, in order.
    evicted: Vec<u8>,
    leases: Vec<Option<Vec<u8>>>,
}

pub(super) fn mkey(k: u8) -> Bytes {
    Bytes::from(vec![b'k', k])
}

impl Model {
    fn charge(e: &MEntry) -> u64 {
        charge_of(2, e.len as usize)
    }
    fn movable(e: &MEntry) -> bool {
        e.top && !e.pinned && e.leases == 0
    }
    /// A child being linked by the put under way counts as one in the
    /// first level (the store links it before it is in place).
    fn evictable(&self, k: u8, e: &MEntry) -> bool {
        Self::movable(e)
            && self.linking != Some(k)
            && e.children
                .iter()
                .all(|c| self.map.get(c).is_some_and(|ce| !ce.top))
    }
    fn remove(&mut self, k: u8) -> Option<MEntry> {
        let e = self.map.remove(&k)?;
        if e.top {
            self.used -= Self::charge(&e);
        }
        if let Some(p) = e.parent {
            self.unlink(p, k);
        }
        Some(e)
    }
    fn unlink(&mut self, p: u8, k: u8) {
        if let Some(pe) = self.map.get_mut(&p) {
            if let Some(i) = pe.children.iter().position(|c| *c == k) {
                pe.children.remove(i);
            }
        }
    }
    fn remove_tree(&mut self, k: u8) -> bool {
        let Some(e) = self.remove(k) else {
            return false;
        };
        let mut stack = e.children;
        while let Some(c) = stack.pop() {
            if let Some(ce) = self.remove(c) {
                stack.extend(ce.children);
            }
        }
        true
    }
    fn oldest(&self, ok: impl Fn(u8, &MEntry) -> bool) -> Option<u8> {
        self.map
            .iter()
            .filter(|(k, e)| ok(**k, e))
            .min_by_key(|(_, e)| e.stamp)
            .map(|(k, _)| *k)
    }
    fn make_room(&mut self) -> bool {
        while self.used > self.cap {
            if let Some(v) = self.oldest(|k, e| self.evictable(k, e)) {
                if self.below {
                    let e = self.map.get_mut(&v).expect("found");
                    e.top = false;
                    self.used -= Self::charge(e);
                } else {
                    self.remove(v);
                    self.evicted.push(v);
                }
                continue;
            }
            // Every block left has a child in the level: with a level below,
            // the oldest that nothing holds goes down anyway.
            match self.oldest(|_, e| Self::movable(e)).filter(|_| self.below) {
                Some(v) => {
                    let e = self.map.get_mut(&v).expect("found");
                    e.top = false;
                    self.used -= Self::charge(e);
                }
                None => return false,
            }
        }
        true
    }
    fn put(&mut self, key: u8, len: u64, parent: Option<u8>, pin: bool) -> bool {
        let charge = charge_of(2, len as usize);
        if charge > self.cap {
            return false;
        }
        if let Some(p) = parent {
            if p == key {
                return false;
            }
            let Some(pe) = self.map.get_mut(&p) else {
                return false;
            };
            pe.children.push(key);
        }
        // An old version in the first level is held in place (like a lease)
        // while room is made, and only the growth is reserved.
        let old_charge = self.map.get(&key).filter(|e| e.top).map(Self::charge);
        if let Some(e) = self.map.get_mut(&key).filter(|e| e.top) {
            e.leases += 1;
        }
        let reserved = charge.saturating_sub(old_charge.unwrap_or(0));
        self.used += reserved;
        self.linking = parent;
        let room = self.make_room();
        self.linking = None;
        if let Some(e) = self.map.get_mut(&key).filter(|_| old_charge.is_some()) {
            e.leases -= 1;
        }
        if !room {
            self.used -= reserved;
            if let Some(p) = parent {
                self.unlink(p, key);
            }
            return false;
        }
        // A block with children keeps its parent (no cycle can form).
        let reparent = parent.is_some()
            && self
                .map
                .get(&key)
                .is_some_and(|e| e.parent != parent && !e.children.is_empty());
        if reparent {
            self.used -= reserved;
            self.unlink(parent.expect("checked"), key);
            return false;
        }
        self.used += charge - reserved;
        self.clock += 1;
        let old = self.map.remove(&key);
        let (children, pinned, leases, old_parent) = match &old {
            Some(e) => {
                if e.top {
                    self.used -= Self::charge(e);
                }
                (e.children.clone(), e.pinned, e.leases, e.parent)
            }
            None => (vec![], false, 0, None),
        };
        let entry = MEntry {
            len,
            parent,
            children,
            stamp: self.clock,
            pinned: pinned || pin,
            leases,
            top: true,
        };
        self.map.insert(key, entry);
        if let Some(op) = old_parent {
            self.unlink(op, key);
        }
        true
    }
    fn touch(&mut self, k: u8) -> bool {
        self.clock += 1;
        let c = self.clock;
        match self.map.get_mut(&k) {
            Some(e) => {
                e.stamp = c;
                true
            }
            None => false,
        }
    }
}

fn matches_model(shape: Shape, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let cap = 6 * charge_of(2, 150);
    let f = stack(shape, cap);
    let mut m = Model {
        cap,
        below: f.below.is_some(),
        ..Default::default()
    };
    let mut store_leases: Vec<Option<u64>> = Vec::new();
    for op in ops {
        match op {
            Op::Put {
                key,
                len,
                parent,
                pin,
            } => {
                let opts = PutOptions {
                    parent: parent.map(mkey),
                    pin,
                    ..Default::default()
                };
                let r = f
                    .store
                    .put(mkey(key), Bytes::from(vec![key; len as usize]), opts);
                let mr = m.put(key, len as u64, parent, pin);
                prop_assert_eq!(r.is_ok(), mr, "put {} {:?} -> {:?}", key, parent, r);
            }
            Op::Get(k) => {
                let got = f.store.get(&mkey(k));
                let want = m.map.contains_key(&k);
                if want {
                    m.touch(k);
                }
                let value = want.then(|| Bytes::from(vec![k; m.map[&k].len as usize]));
                prop_assert_eq!(got, value);
            }
            Op::Match { start, n, lease } => {
                let keys: Vec<Bytes> = (start..start.saturating_add(n)).map(mkey).collect();
                let r = f.store.match_prefix(&keys, lease.then_some(1_000_000));
                let mut matched = 0;
                for k in start..start.saturating_add(n) {
                    if !m.touch(k) {
                        break;
                    }
                    matched += 1;
                }
                prop_assert_eq!(r.matched, matched);
                if lease && matched == 0 {
                    // Nothing held: no lease.
                    prop_assert!(r.lease.is_none());
                    m.leases.push(None);
                    store_leases.push(None);
                } else if lease {
                    let held: Vec<u8> = (start..start + matched as u8).collect();
                    for k in &held {
                        m.map.get_mut(k).unwrap().leases += 1;
                    }
                    m.leases.push(Some(held));
                    store_leases.push(r.lease);
                }
            }
            Op::Release(i) => {
                let i = i as usize;
                if i < m.leases.len() {
                    let held = m.leases[i].take();
                    let r = store_leases[i].is_some_and(|id| f.store.release(id));
                    prop_assert_eq!(r, held.is_some());
                    for k in held.unwrap_or_default() {
                        if let Some(e) = m.map.get_mut(&k) {
                            e.leases = e.leases.saturating_sub(1);
                        }
                    }
                }
            }
            Op::Delete(k) => {
                let n = f.store.delete([&mkey(k)[..]]);
                prop_assert_eq!(n == 1, m.remove_tree(k));
            }
            Op::Unpin(k) => {
                let n = f.store.set_pinned([&mkey(k)[..]], false);
                if let Some(e) = m.map.get_mut(&k) {
                    e.pinned = false;
                }
                prop_assert_eq!(n == 1, m.map.contains_key(&k));
                m.make_room();
            }
        }
        f.store
            .check_invariants()
            .map_err(|e| TestCaseError::fail(format!("{shape:?}: {e}")))?;
        prop_assert!(f.top_used() <= cap);
        prop_assert_eq!(f.top_used(), m.used, "{:?}", shape);
        let mut keys: Vec<u8> = m.map.keys().copied().collect();
        keys.sort();
        for k in &keys {
            let meta = f.store.meta(&mkey(*k));
            prop_assert!(
                meta.is_some(),
                "{:?}: model has {} but store does not",
                shape,
                k
            );
            let meta = meta.expect("checked");
            prop_assert_eq!(meta.parent, m.map[k].parent.map(mkey));
            let level = if m.map[k].top { Some(f.top) } else { f.below };
            prop_assert_eq!(Some(meta.tier), level, "{:?}: where {} is", shape, k);
        }
        prop_assert_eq!(f.store.len(), keys.len());
        let evicted: Vec<String> = f.dropped();
        let want: Vec<String> = m
            .evicted
            .iter()
            .map(|k| String::from_utf8_lossy(&mkey(*k)).into_owned())
            .collect();
        prop_assert_eq!(evicted, want, "{:?}: eviction order", shape);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn dram_lru_matches_the_model(ops in prop::collection::vec(op(), 1..200)) {
        matches_model(Shape::Dram(Eviction::Lru), ops)?;
    }

    /// `adaptive` with its first share (1.0, which the tuner keeps for
    /// fewer than a round of matches) is leaf-first LRU.
    #[test]
    fn dram_adaptive_at_share_one_matches_the_model(ops in prop::collection::vec(op(), 1..200)) {
        matches_model(Shape::Dram(Eviction::Adaptive), ops)?;
    }

    #[test]
    fn stand_in_over_dram_matches_the_model(ops in prop::collection::vec(op(), 1..200)) {
        matches_model(Shape::StandInDram, ops)?;
    }
}

proptest! {
    // Each case opens a log on the file system: fewer of them.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn dram_over_ssd_matches_the_model(ops in prop::collection::vec(op(), 1..200)) {
        for shape in shapes().into_iter().filter(|s| matches!(s, Shape::DramSsd(_))) {
            matches_model(shape, ops.clone())?;
        }
    }
}
