//! "A reader gets the bytes stored under the key, whole, or a miss", checked
//! under concurrency through the real server: writers overwrite keys with
//! versioned, self-describing payloads while readers read them over inline
//! RESP, the tcp data port and shared memory, and while blocks located under
//! a lease sit through overwrites, arena refills and eviction. Every read
//! must be one whole version of its own key (never a mix, never another
//! key's, never older than one the same reader saw before) or a miss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::Value;
use tidepool_client::blocking::Client;
use tidepool_client::{ClientOptions, PlaneChoice, PutOptions};
use tidepool_tests::{dataplane, Server};
use tidepool_transport::shm::ShmPlane;
use tidepool_transport::tcp::{TcpOptions, TcpPlane};
use tidepool_transport::{DataPlane, Descriptor, Kind};

/// Payload lengths in DRAM.
const SIZES: [usize; 5] = [3_000, 17_000, 70_000, 260_000, 700_000];

const MAGIC: &[u8; 4] = b"TPv1";

/// A payload length for `version` of `key` from `sizes`: an overwrite
/// changes the size, so a refilled arena puts other blocks where the old
/// version was.
fn size_of(sizes: &[usize], key: u32, version: u64) -> usize {
    sizes[(key as usize + version as usize) % sizes.len()]
}

/// The payload of version `version` of key number `key`, `len` bytes: a
/// 20-byte header (magic, key, version, length) and a body no other
/// (key, version) shares.
fn payload(key: u32, version: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&key.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    let mut x = (u64::from(key) << 40) ^ version ^ 0x9E37_79B9_7F4A_7C15;
    while v.len() < len {
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let take = (len - v.len()).min(8);
        v.extend_from_slice(&z.to_le_bytes()[..take]);
    }
    v
}

/// The version `got` is of key `key`, when it is one whole version of it.
fn version_of(key: u32, got: &[u8]) -> Result<u64, String> {
    if got.len() < 20 || &got[..4] != MAGIC {
        return Err(format!("key {key}: no header in {} bytes", got.len()));
    }
    let k = u32::from_le_bytes(got[4..8].try_into().unwrap());
    let version = u64::from_le_bytes(got[8..16].try_into().unwrap());
    let len = u32::from_le_bytes(got[16..20].try_into().unwrap()) as usize;
    if k != key {
        return Err(format!(
            "key {key}: read key {k}'s bytes (version {version})"
        ));
    }
    if got.len() != len {
        return Err(format!(
            "key {key} version {version}: {} bytes, the version has {len}",
            got.len()
        ));
    }
    let want = payload(key, version, len);
    if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
        return Err(format!(
            "key {key} version {version}: bytes differ from offset {at} of {len}"
        ));
    }
    Ok(version)
}

fn name(key: u32) -> String {
    format!("ver:{key}")
}

/// What one reader saw: reads, hits, and the newest version per key (a
/// later read must not be older).
#[derive(Default)]
struct Seen {
    reads: u64,
    hits: u64,
    newest: HashMap<u32, u64>,
}

impl Seen {
    fn check(&mut self, who: &str, key: u32, got: Option<&[u8]>) {
        self.reads += 1;
        let Some(got) = got else { return };
        let v = version_of(key, got).unwrap_or_else(|e| panic!("{who}: {e}"));
        self.hits += 1;
        let newest = self.newest.entry(key).or_insert(0);
        assert!(
            v >= *newest,
            "{who}: key {key} read version {v} after version {newest}"
        );
        *newest = v;
    }
}

fn client(s: &Server, plane: PlaneChoice) -> Client {
    Client::connect_with(
        &format!("127.0.0.1:{}", s.port),
        ClientOptions {
            plane,
            connections: 2,
            // Every block over the data plane when it is tcp or shm.
            inline_below: if plane == PlaneChoice::Inline {
                usize::MAX
            } else {
                0
            },
            ..ClientOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("client over {plane:?}: {e}"))
}

/// A small deterministic generator for the tests' choices.
struct Pick(u64);

impl Pick {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn descriptor(v: &Value) -> Option<Descriptor> {
    let Value::Array(items) = v else {
        return None; // nil: not stored
    };
    let int = |x: &Value| match x {
        Value::Int(i) => *i as u64,
        other => panic!("{other:?}"),
    };
    let Value::BulkString(kind) = &items[0] else {
        panic!("{items:?}")
    };
    Some(Descriptor {
        kind: std::str::from_utf8(kind).unwrap().parse::<Kind>().unwrap(),
        offset: int(&items[1]),
        len: int(&items[2]),
        token: int(&items[3]),
    })
}

/// KV.LOCATE under a lease: the lease and a descriptor (or none) per key.
fn locate(con: &mut redis::Connection, keys: &[u32], via: &str) -> (i64, Vec<Option<Descriptor>>) {
    let mut cmd = redis::cmd("KV.LOCATE");
    cmd.arg(keys.len());
    for k in keys {
        cmd.arg(name(*k));
    }
    let loc: Vec<Value> = cmd
        .arg("LEASE")
        .arg(60_000)
        .arg("VIA")
        .arg(via)
        .query(con)
        .unwrap();
    let lease = match loc[1] {
        Value::Int(l) => l,
        _ => 0,
    };
    let Value::Array(blocks) = &loc[3] else {
        panic!("{loc:?}")
    };
    (lease, blocks.iter().map(descriptor).collect())
}

/// Plain GETs over RESP2 (redis crate) of random keys among the first
/// `keys` until `stop`, each checked; what it saw goes into `seen`.
fn get_reader(
    s: &Server,
    keys: u32,
    seed: u64,
    stop: &AtomicBool,
    seen: &Mutex<Vec<(String, Seen)>>,
) {
    let mut con = s.redis();
    let mut mine = Seen::default();
    let mut pick = Pick(seed);
    while !stop.load(Relaxed) {
        let k = pick.next(keys as u64) as u32;
        let got: Option<Vec<u8>> = redis::cmd("GET").arg(name(k)).query(&mut con).unwrap();
        mine.check("GET", k, got.as_deref());
    }
    seen.lock().unwrap().push(("GET".into(), mine));
}

fn kv_stat(s: &Server, tier: &str, field: &str) -> i64 {
    let st = client(s, PlaneChoice::Inline).stats().unwrap();
    st.tiers[tier][field]
}

/// Writers on every plane overwrite their keys without pause; readers on
/// every plane, and readers that hold located blocks through the churn,
/// check each read. DRAM is small, so blocks are evicted and arena space
/// is handed out again all along.
#[test]
fn readers_on_every_plane_see_whole_versions_or_misses() {
    let s = Server::start(&["--dram", "24MiB"]);
    const PER_WRITER: u32 = 8;
    let stop = AtomicBool::new(false);
    let failed_puts = AtomicU64::new(0);
    let versions = AtomicU64::new(1);
    let seen: Mutex<Vec<(String, Seen)>> = Mutex::new(Vec::new());
    let held_reads = AtomicU64::new(0);
    let run_for = Duration::from_secs(4);
    std::thread::scope(|sc| {
        // Writers: each owns its keys, so a key's versions only grow.
        let planes = [PlaneChoice::Inline, PlaneChoice::Tcp, PlaneChoice::Shm];
        for (w, plane) in planes.into_iter().enumerate() {
            let (s, stop, failed, versions) = (&s, &stop, &failed_puts, &versions);
            sc.spawn(move || {
                let c = client(s, plane);
                let mut con = s.redis();
                let mut pick = Pick(0x1234_5678 + w as u64);
                let first = w as u32 * PER_WRITER;
                while !stop.load(Relaxed) {
                    let key = first + pick.next(PER_WRITER as u64) as u32;
                    let version = versions.fetch_add(1, Relaxed);
                    if pick.next(16) == 0 {
                        let _: i64 = redis::cmd("DEL").arg(name(key)).query(&mut con).unwrap();
                        continue;
                    }
                    let value = Bytes::from(payload(key, version, size_of(&SIZES, key, version)));
                    if c.put(Bytes::from(name(key)), value, &PutOptions::default())
                        .is_err()
                    {
                        failed.fetch_add(1, Relaxed);
                    }
                }
            });
        }
        // Filler: a stream of fresh 1 MiB blocks keeps DRAM full and the
        // arena turning over.
        {
            let (s, stop) = (&s, &stop);
            sc.spawn(move || {
                let mut con = s.redis();
                let fill = vec![0xA5u8; 1 << 20];
                let mut i = 0u64;
                while !stop.load(Relaxed) {
                    let _: Value = redis::cmd("SET")
                        .arg(format!("fill:{}", i % 64))
                        .arg(&fill[..])
                        .query(&mut con)
                        .unwrap();
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        let all_keys = 3 * PER_WRITER;
        // Readers through the client on each plane (inline is KV.MGET).
        for (r, plane) in [PlaneChoice::Inline, PlaneChoice::Tcp, PlaneChoice::Shm]
            .into_iter()
            .enumerate()
        {
            let (s, stop, seen) = (&s, &stop, &seen);
            sc.spawn(move || {
                let c = client(s, plane);
                let mut mine = Seen::default();
                let mut pick = Pick(0xABCD_0000 + r as u64);
                let who = format!("client get over {plane:?}");
                while !stop.load(Relaxed) {
                    let keys: Vec<u32> =
                        (0..3).map(|_| pick.next(all_keys as u64) as u32).collect();
                    let names: Vec<Bytes> = keys.iter().map(|k| Bytes::from(name(*k))).collect();
                    match c.get_many(&names) {
                        Ok(got) => {
                            for (k, g) in keys.iter().zip(&got) {
                                mine.check(&who, *k, g.as_deref());
                            }
                        }
                        // A lease that ran out mid-copy fails the get (it
                        // is not served); nothing else may fail.
                        Err(e) => panic!("{who}: {e}"),
                    }
                }
                seen.lock().unwrap().push((who, mine));
            });
        }
        // Plain GET over RESP2 (redis crate).
        {
            let (s, stop, seen) = (&s, &stop, &seen);
            sc.spawn(move || get_reader(s, all_keys, 0x5EED, stop, seen));
        }
        // Holders: locate under a lease, let the writers and the filler
        // overwrite, evict and refill for a while, then read what the lease
        // holds: still one whole version.
        for via in ["shm", "tcp"] {
            let (s, stop, seen, held_reads) = (&s, &stop, &seen, &held_reads);
            sc.spawn(move || {
                let mut con = s.redis();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let (port, sock, id) = dataplane(&mut con);
                let shm = (via == "shm").then(|| ShmPlane::connect(sock.as_ref(), id).unwrap());
                let tcp = (via == "tcp").then(|| {
                    rt.block_on(TcpPlane::connect(
                        format!("127.0.0.1:{port}").parse().unwrap(),
                        TcpOptions::default(),
                    ))
                    .unwrap()
                });
                let who = format!("held over {via}");
                let mut mine = Seen::default();
                let mut pick = Pick(0xF00D + via.len() as u64);
                while !stop.load(Relaxed) {
                    let keys: Vec<u32> =
                        (0..4).map(|_| pick.next(all_keys as u64) as u32).collect();
                    let (lease, descs) = locate(&mut con, &keys, via);
                    std::thread::sleep(Duration::from_millis(pick.next(40)));
                    let mut bufs: Vec<(u32, Descriptor, Vec<u8>)> = keys
                        .iter()
                        .zip(descs)
                        .filter_map(|(k, d)| d.map(|d| (*k, d, vec![0u8; d.len as usize])))
                        .collect();
                    let mut pairs: Vec<(Descriptor, &mut [u8])> =
                        bufs.iter_mut().map(|(_, d, b)| (*d, &mut b[..])).collect();
                    if let Some(p) = &shm {
                        rt.block_on(p.read(&mut pairs)).unwrap();
                    } else if let Some(p) = &tcp {
                        rt.block_on(p.read(&mut pairs)).unwrap();
                    }
                    if lease != 0 {
                        let r: i64 = redis::cmd("KV.RELEASE").arg(lease).query(&mut con).unwrap();
                        assert_eq!(r, 1, "{who}: the lease held to the end");
                    }
                    for (k, _, b) in &bufs {
                        mine.check(&who, *k, Some(b));
                        held_reads.fetch_add(1, Relaxed);
                    }
                }
                seen.lock().unwrap().push((who, mine));
            });
        }
        std::thread::sleep(run_for);
        stop.store(true, Relaxed);
    });
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 6, "every reader finished");
    for (who, s) in &seen {
        eprintln!("{who}: {} reads, {} hits", s.reads, s.hits);
        assert!(
            s.hits >= 5,
            "{who}: only {} hits of {} reads",
            s.hits,
            s.reads
        );
    }
    let evictions = kv_stat(&s, "dram", "evictions");
    let written = versions.load(Relaxed);
    eprintln!(
        "{written} versions written ({} puts refused), {} held reads, {evictions} evictions",
        failed_puts.load(Relaxed),
        held_reads.load(Relaxed)
    );
    assert!(
        evictions > 0,
        "DRAM never filled: the test did not race eviction"
    );
    assert!(written > 100, "writers barely ran: {written} versions");
    // Every lease went back; nothing is held or retained.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.info_u64("data_held_blocks") != 0 || s.info_u64("used_memory_retained") != 0 {
        assert!(Instant::now() < deadline, "located blocks still held");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sizes on the SSD tier: records of 1 to 6 pages in 64 KiB segments.
const SSD_SIZES: [usize; 4] = [3_000, 9_000, 14_000, 21_000];

/// A tiny SSD tier (16 segments of 64 KiB) turning over without pause under
/// writers (demoted from DRAM, and TIER ssd straight to it), while readers
/// GET (promoting), KV.MATCH (staging blocks about to be reclaimed),
/// KV.VERIFY and KV.LOCATE the same keys: every value whole or a miss, no
/// block called corrupt, no checksum failure counted.
#[test]
fn ssd_reclaim_racing_reads_and_staging_serves_no_stale_bytes() {
    let dir = std::env::temp_dir().join(format!("tidepool-versions-ssd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ssd = format!("{}:1MiB", dir.display());
    let s = Server::start(&[
        "--dram",
        "192KiB",
        "--ssd",
        &ssd,
        "--ssd-segment-size",
        "64KiB",
        "--ssd-stage-on-match",
        "true",
    ]);
    const KEYS: u32 = 48;
    let stop = AtomicBool::new(false);
    let versions = AtomicU64::new(1);
    let seen: Mutex<Vec<(String, Seen)>> = Mutex::new(Vec::new());
    let verified = AtomicU64::new(0);
    std::thread::scope(|sc| {
        for w in 0..2u32 {
            let (s, stop, versions) = (&s, &stop, &versions);
            sc.spawn(move || {
                let mut con = s.redis();
                let mut pick = Pick(0x77 + w as u64);
                while !stop.load(Relaxed) {
                    // Writer w owns the keys of its parity.
                    let key = pick.next(KEYS as u64 / 2) as u32 * 2 + w;
                    let version = versions.fetch_add(1, Relaxed);
                    if pick.next(20) == 0 {
                        let _: i64 = redis::cmd("DEL").arg(name(key)).query(&mut con).unwrap();
                        continue;
                    }
                    let value = payload(key, version, size_of(&SSD_SIZES, key, version));
                    let mut put = redis::cmd("KV.PUT");
                    put.arg(name(key)).arg(value);
                    if w == 1 {
                        put.arg("TIER").arg("ssd");
                    }
                    let r: redis::RedisResult<Value> = put.query(&mut con);
                    if let Err(e) = r {
                        assert_eq!(e.code(), Some("OOM"), "put: {e}");
                    }
                }
            });
        }
        // GET promotes from SSD.
        {
            let (s, stop, seen) = (&s, &stop, &seen);
            sc.spawn(move || get_reader(s, KEYS, 0xBEEF, stop, seen));
        }
        // KV.MATCH stages what it finds near the reclaim end; KV.VERIFY
        // reads from the device and checks.
        {
            let (s, stop, verified) = (&s, &stop, &verified);
            sc.spawn(move || {
                let mut con = s.redis();
                let mut pick = Pick(0xCAFE);
                while !stop.load(Relaxed) {
                    let keys: Vec<String> = (0..4)
                        .map(|_| name(pick.next(KEYS as u64) as u32))
                        .collect();
                    let _: i64 = redis::cmd("KV.MATCH")
                        .arg(4)
                        .arg(&keys)
                        .query(&mut con)
                        .unwrap();
                    let answers: Vec<Option<String>> =
                        redis::cmd("KV.VERIFY").arg(&keys).query(&mut con).unwrap();
                    for (k, a) in keys.iter().zip(answers) {
                        match a.as_deref() {
                            None | Some("ok") | Some("unchecked") => {}
                            other => panic!("KV.VERIFY {k}: {other:?}"),
                        }
                        verified.fetch_add(1, Relaxed);
                    }
                }
            });
        }
        // KV.LOCATE (reading from SSD) and a tcp read of what it holds.
        {
            let (s, stop, seen) = (&s, &stop, &seen);
            sc.spawn(move || {
                let mut con = s.redis();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let (port, _, _) = dataplane(&mut con);
                let tcp = rt
                    .block_on(TcpPlane::connect(
                        format!("127.0.0.1:{port}").parse().unwrap(),
                        TcpOptions::default(),
                    ))
                    .unwrap();
                let mut mine = Seen::default();
                let mut pick = Pick(0xD00D);
                while !stop.load(Relaxed) {
                    let keys: Vec<u32> = (0..3).map(|_| pick.next(KEYS as u64) as u32).collect();
                    let (lease, descs) = locate(&mut con, &keys, "tcp");
                    for (k, d) in keys.iter().zip(descs) {
                        let Some(d) = d else {
                            mine.check("located over tcp", *k, None);
                            continue;
                        };
                        let mut b = vec![0u8; d.len as usize];
                        rt.block_on(tcp.read(&mut [(d, &mut b[..])])).unwrap();
                        mine.check("located over tcp", *k, Some(&b));
                    }
                    if lease != 0 {
                        let _: i64 = redis::cmd("KV.RELEASE").arg(lease).query(&mut con).unwrap();
                    }
                }
                seen.lock().unwrap().push(("located over tcp".into(), mine));
            });
        }
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, Relaxed);
    });
    for (who, st) in seen.into_inner().unwrap() {
        eprintln!("{who}: {} reads, {} hits", st.reads, st.hits);
        assert!(
            st.hits >= 5,
            "{who}: only {} hits of {} reads",
            st.hits,
            st.reads
        );
    }
    let reclaimed = kv_stat(&s, "ssd", "evictions");
    let staged = s.info_u64("ssd_staged");
    eprintln!(
        "{} versions, {} verified, {reclaimed} SSD evictions, {} promotions, {staged} staged",
        versions.load(Relaxed),
        verified.load(Relaxed),
        s.info_u64("dram_promotions"),
    );
    assert!(reclaimed > 0, "no segment was reclaimed: nothing raced");
    assert!(staged > 0, "no match staged a block");
    assert_eq!(s.info_u64("ssd_checksum_failures"), 0);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn payloads_describe_themselves() {
    let p = payload(3, 77, 3000);
    assert_eq!(version_of(3, &p), Ok(77));
    assert!(version_of(4, &p).is_err(), "another key's bytes");
    let mut torn = p.clone();
    torn[1500..].copy_from_slice(&payload(3, 78, 3000)[1500..]);
    assert!(
        version_of(3, &torn).is_err(),
        "half of one version, half of another"
    );
    assert!(version_of(3, &p[..p.len() - 1]).is_err(), "short");
    let mut longer = p.clone();
    longer.push(0);
    assert!(version_of(3, &longer).is_err(), "long");
}
