use super::suite::{b, put, Recorder};
use super::*;
use crate::event::EventKind;
use crate::index::shard_of;
use crate::store::matching::BETWEEN_MATCH_PASSES;
use crate::StoreError;
use crate::SHARDS;
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
    let mut model =
        crate::eviction::model::SegCache::new(capacity, crate::eviction::model::CANDIDATES[0]);
    let mut tuner = crate::eviction::model::Tuner::new(capacity);
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
