use super::*;
use crate::ssd::record::HEADER_LEN;

const SEG: u64 = 64 * 1024;

fn dir(name: &str, base: &str) -> PathBuf {
    let d = PathBuf::from(base).join(format!("tidepool-ssd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

thread_local! {
    static DIRECT: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
    static ENGINE: std::cell::Cell<crate::io::EngineChoice> =
        const { std::cell::Cell::new(crate::io::EngineChoice::Psync) };
}

/// Opens with the engine of the current round of `on_both`.
fn open(c: &LogConfig) -> io::Result<(SegmentLog, Vec<Recovered>)> {
    let (engine, _) = crate::io::build(ENGINE.with(|e| e.get()))?;
    SegmentLog::open_with(c, engine)
}

fn config(d: &Path, segments: u64) -> LogConfig {
    LogConfig {
        path: d.to_path_buf(),
        capacity: Some(segments * SEG),
        segment_size: SEG,
        direct: DIRECT.with(|c| c.get()),
    }
}

fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 7 + j) as u8).collect()
}

/// Runs a test body with direct I/O and with buffered I/O.
fn on_both(name: &str, body: impl Fn(&Path, bool)) {
    for direct in [true, false] {
        DIRECT.with(|c| c.set(direct));
        let d = dir(
            &format!("{name}-{direct}"),
            &std::env::temp_dir().to_string_lossy(),
        );
        body(&d, direct);
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// Psync writes that fail with ENOSPC past `limit` bytes of the file
/// (a file system that fills up under a file it never reserved).
struct FillsUp {
    inner: PsyncEngine,
    limit: AtomicU64,
}

impl IoEngine for FillsUp {
    fn name(&self) -> &'static str {
        "fills-up"
    }
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.limit.load(Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.inner.write_at(file, buf, offset)
    }
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(file, buf, offset)
    }
    fn sync(&self, file: &File) -> io::Result<()> {
        self.inner.sync(file)
    }
}

#[test]
fn a_full_file_system_turns_the_log_over_in_what_it_has_and_space_coming_back_is_used() {
    let d = dir("fills-up", &std::env::temp_dir().to_string_lossy());
    let engine = Arc::new(FillsUp {
        inner: PsyncEngine,
        limit: AtomicU64::new(3 * SEG),
    });
    let (log, _) = SegmentLog::open_with(&config(&d, 8), engine.clone()).unwrap();
    let v = value(1, 20_000);
    // Three segments fit; the fourth is refused, and the log goes on in
    // the three it has, reclaiming the oldest, with no write failing.
    let mut evicted = 0;
    for i in 0..40 {
        let (loc, ev) = log
            .append(format!("k{i}").as_bytes(), None, &v, false)
            .unwrap();
        assert!(loc.offset + loc.len <= 3 * SEG);
        assert_eq!(
            log.read(format!("k{i}").as_bytes(), &loc)
                .unwrap()
                .value()
                .unwrap(),
            &v[..]
        );
        evicted += ev.len();
    }
    assert!(evicted > 0, "the log must reclaim within the space it has");
    // Each segment the file system cannot back costs one refused write
    // (here fallocate says yes and the writes still fail, so the
    // segments are tried again now and then, never failing an append).
    assert!(log.stats.no_space.load(Relaxed) >= 1);
    assert!(log.unbacked_segments() >= 4, "{}", log.unbacked_segments());
    // Space comes back: the other segments rejoin as the log turns over.
    engine.limit.store(u64::MAX, Relaxed);
    for i in 40..200 {
        log.append(format!("k{i}").as_bytes(), None, &v, false)
            .unwrap();
    }
    assert_eq!(log.unbacked_segments(), 0);
    assert_eq!(log.used_segments(), 8);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_file_system_too_small_for_the_tier_is_said_at_open() {
    let d = dir("too-small", &std::env::temp_dir().to_string_lossy());
    let (size, _) = fs_space(&File::open(&d).unwrap()).unwrap_or((None, None));
    // A directory is no regular file: nothing to say about it.
    assert_eq!(size, None);
    let c = LogConfig {
        capacity: Some(SEG * 4),
        ..config(&d, 4)
    };
    let (log, _) = open(&c).unwrap();
    assert!(log.warnings().is_empty(), "{:?}", log.warnings());
    let file = File::open(d.join(FILE_NAME)).unwrap();
    // Reserved: the file's blocks are allocated, not a sparse hole.
    use std::os::unix::fs::MetadataExt;
    assert!(file.metadata().unwrap().blocks() * 512 >= 4 * SEG);
    let (size, free) = fs_space(&file).unwrap();
    assert!(size.unwrap() > 0 && free.is_some());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn append_read_reopen() {
    on_both("reopen", |d, want_direct| {
        let (log, rec) = open(&config(d, 8)).unwrap();
        assert!(rec.is_empty());
        if !want_direct {
            assert!(!log.is_direct(), "buffered I/O was asked for");
        } else if !log.is_direct() {
            crate::skipped(&format!(
                "{}: the file system refused O_DIRECT; the log tests ran buffered",
                d.display()
            ));
        }
        let mut locs = Vec::new();
        for (i, len) in [0usize, 1, 4000, 4096, 20_000].iter().enumerate() {
            let k = format!("k{i}");
            let (loc, ev) = log
                .append(k.as_bytes(), None, &value(i, *len), true)
                .unwrap();
            assert!(ev.is_empty());
            assert_eq!(
                log.read(k.as_bytes(), &loc).unwrap().value().unwrap(),
                value(i, *len)
            );
            locs.push((k, loc, *len));
        }
        drop(log);
        let (log, rec) = open(&config(d, 8)).unwrap();
        assert_eq!(rec.len(), locs.len());
        for ((k, loc, len), r) in locs.iter().zip(&rec) {
            assert_eq!(
                (&r.key[..], r.location, r.value_len),
                (k.as_bytes(), *loc, *len as u64)
            );
            let i = locs.iter().position(|x| &x.0 == k).unwrap();
            assert_eq!(
                log.read(k.as_bytes(), loc).unwrap().value().unwrap(),
                value(i, *len)
            );
        }
        // New writes after recovery get newer sequence numbers.
        let (loc, _) = log.append(b"k0", None, b"newer", true).unwrap();
        assert!(loc.seq > locs.last().unwrap().1.seq);
        drop(log);
        let (_, rec) = open(&config(d, 8)).unwrap();
        let k0 = rec.iter().find(|r| &r.key[..] == b"k0").unwrap();
        assert_eq!(k0.location, loc, "the newest copy of a key wins");
    });
}

#[test]
fn parents_survive_recovery() {
    on_both("parents", |d, _| {
        let (log, _) = open(&config(d, 4)).unwrap();
        log.append(b"root", None, b"r", false).unwrap();
        log.append(b"kid", Some(b"root"), b"k", true).unwrap();
        drop(log);
        let (_, rec) = open(&config(d, 4)).unwrap();
        let parents: Vec<(&[u8], Option<&[u8]>)> = rec
            .iter()
            .map(|r| (&r.key[..], r.parent.as_deref()))
            .collect();
        assert_eq!(
            parents,
            [(&b"root"[..], None), (&b"kid"[..], Some(&b"root"[..]))]
        );
    });
}

#[test]
fn tombstones_cancel_older_records_only() {
    on_both("tomb", |d, _| {
        let (log, _) = open(&config(d, 4)).unwrap();
        let (a1, _) = log.append(b"a", None, b"one", false).unwrap();
        log.append_tombstone(b"a", a1.seq, false).unwrap();
        let (b1, _) = log.append(b"b", None, b"one", false).unwrap();
        let (b2, _) = log.append(b"b", None, b"two", false).unwrap();
        // A tombstone for b's first record must not cancel its newer one.
        log.append_tombstone(b"b", b1.seq, true).unwrap();
        drop(log);
        let (log, rec) = open(&config(d, 4)).unwrap();
        assert_eq!(rec.len(), 1, "{rec:?}");
        assert_eq!((&rec[0].key[..], rec[0].location), (&b"b"[..], b2));
        assert_eq!(log.read(b"b", &b2).unwrap().value().unwrap(), &b"two"[..]);
    });
}

#[test]
fn torn_tail_is_discarded() {
    on_both("torn", |d, _| {
        let (log, _) = open(&config(d, 4)).unwrap();
        let (a, _) = log.append(b"a", None, &value(1, 100), true).unwrap();
        let (b, _) = log.append(b"b", None, &value(2, 9000), true).unwrap();
        let path = log.path().to_path_buf();
        drop(log);
        // Crash mid-write of "b": its last 4 KiB never reached the disk.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0u8; 4096], b.offset + b.len - 4096)
            .unwrap();
        drop(f);
        let (log, rec) = open(&config(d, 4)).unwrap();
        assert_eq!(rec.iter().map(|r| &r.key[..]).collect::<Vec<_>>(), [b"a"]);
        assert_eq!(log.read(b"a", &a).unwrap().value().unwrap(), value(1, 100));
        // Appends go on after recovery.
        let (c, _) = log.append(b"c", None, b"after", true).unwrap();
        assert_eq!(log.read(b"c", &c).unwrap().value().unwrap(), &b"after"[..]);
    });
}

#[test]
fn a_corrupt_record_is_skipped_and_the_rest_recovered() {
    on_both("skip", |d, _| {
        let (log, _) = open(&config(d, 4)).unwrap();
        let (a, _) = log.append(b"a", None, &value(1, 5000), true).unwrap();
        log.append(b"b", None, &value(2, 5000), true).unwrap();
        let path = log.path().to_path_buf();
        drop(log);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0xEE], a.offset + HEADER_LEN as u64 + 2000)
            .unwrap();
        drop(f);
        let (log, rec) = open(&config(d, 4)).unwrap();
        assert_eq!(rec.iter().map(|r| &r.key[..]).collect::<Vec<_>>(), [b"b"]);
        assert_eq!(log.stats.checksum_failures.load(Relaxed), 1);
    });
}

#[test]
fn corruption_is_a_counted_miss() {
    on_both("corrupt", |d, _| {
        let (log, _) = open(&config(d, 4)).unwrap();
        let (a, _) = log.append(b"a", None, &value(1, 5000), true).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(log.path())
            .unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0xFF], a.offset + HEADER_LEN as u64 + 100)
            .unwrap();
        drop(f);
        assert_eq!(log.read(b"a", &a).unwrap(), Read::Corrupt);
        assert_eq!(log.stats.checksum_failures.load(Relaxed), 1);
        assert_eq!(log.read(b"zz", &a).unwrap(), Read::Corrupt);
    });
}

#[test]
fn a_reclaimed_slot_is_gone_not_corrupt() {
    on_both("reclaimed", |d, _| {
        let (log, _) = open(&config(d, 2)).unwrap();
        let (first, _) = log.append(b"first", None, &value(0, 5000), false).unwrap();
        // Past two segments' worth: the first segment is written over.
        for i in 1..40 {
            log.append(format!("k{i}").as_bytes(), None, &value(i, 5000), false)
                .unwrap();
        }
        assert!(log.stats.segment_evictions.load(Relaxed) > 0);
        assert_eq!(log.read(b"first", &first).unwrap(), Read::Gone);
        assert_eq!(log.stats.checksum_failures.load(Relaxed), 0);
    });
}

/// Readers of known locations race a writer that turns the log over
/// without pause: every read is the whole value written there, or gone;
/// none is counted as a checksum failure.
#[test]
fn reads_racing_reclaim_are_whole_or_gone() {
    on_both("race", |d, _| {
        let (log, _) = open(&config(d, 2)).unwrap();
        let written: Mutex<Vec<(usize, Location)>> = Mutex::new(Vec::new());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (mut whole, mut gone) = (0u64, 0u64);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..3000 {
                    let len = 1000 + (i * 37) % 9000;
                    let (loc, _) = log
                        .append(format!("k{i}").as_bytes(), None, &value(i, len), false)
                        .unwrap();
                    written.lock().push((i, loc));
                }
                stop.store(true, Relaxed);
            });
            let mut n = 0usize;
            while !stop.load(Relaxed) {
                // One of the latest 40 written: about two segments'
                // worth, so some live, some reclaimed, some going now.
                let pick = {
                    let w = written.lock();
                    let from = w.len().saturating_sub(40);
                    w.get(from + (n * 7919) % (w.len() - from).max(1)).copied()
                };
                n += 1;
                let Some((i, loc)) = pick else { continue };
                match log.read(format!("k{i}").as_bytes(), &loc).unwrap() {
                    Read::Value(b) => {
                        assert_eq!(b, value(i, 1000 + (i * 37) % 9000), "k{i}");
                        whole += 1;
                    }
                    Read::Gone => gone += 1,
                    Read::Corrupt => panic!("k{i} at {loc:?} read as corrupt"),
                }
            }
        });
        assert_eq!(log.stats.checksum_failures.load(Relaxed), 0);
        assert!(whole > 0, "no read found its value");
        assert!(gone > 0, "no read raced a reclaim ({whole} whole)");
    });
}

#[test]
fn opens_until_reclaim_counts_down_first_in_first_out() {
    on_both("countdown", |d, _| {
        let (log, _) = open(&config(d, 3)).unwrap();
        // 12 KiB records, 5 per 64 KiB segment.
        let mut locs = Vec::new();
        for i in 0..11 {
            let (loc, _) = log
                .append(format!("k{i}").as_bytes(), None, &value(i, 10_000), false)
                .unwrap();
            locs.push(loc);
        }
        // Three segments opened: the next opening takes the first.
        assert_eq!(log.opens_until_reclaim(locs[0].offset), 0);
        assert_eq!(log.opens_until_reclaim(locs[5].offset), 1);
        assert_eq!(log.opens_until_reclaim(locs[10].offset), 2);
        for i in 11..16 {
            log.append(format!("k{i}").as_bytes(), None, &value(i, 10_000), false)
                .unwrap();
        }
        // The first segment was reclaimed and reopened: the newest now.
        assert_eq!(log.opens_until_reclaim(locs[0].offset), 2);
        assert_eq!(log.opens_until_reclaim(locs[5].offset), 0);
        log.sync().unwrap();
        drop(log);
        // After a restart the order is rebuilt from the records.
        let (log, _) = open(&config(d, 3)).unwrap();
        assert_eq!(log.opens_until_reclaim(locs[5].offset), 0);
        assert_eq!(log.opens_until_reclaim(locs[10].offset), 1);
        assert_eq!(log.opens_until_reclaim(locs[0].offset), 2);
    });
}

#[test]
fn full_log_evicts_oldest_segment_and_recovery_ignores_its_old_records() {
    on_both("evict", |d, _| {
        let (log, _) = open(&config(d, 3)).unwrap();
        // 10 KiB values take 12 KiB records: 5 per 64 KiB segment.
        let mut evicted = Vec::new();
        let mut last = HashMap::new();
        let mut first = Location {
            segment: 0,
            offset: 0,
            len: 0,
            seq: 0,
        };
        for i in 0..40 {
            let k = format!("k{i}");
            let (loc, ev) = log
                .append(k.as_bytes(), None, &value(i, 10_000), false)
                .unwrap();
            evicted.extend(ev);
            if i == 0 {
                first = loc;
            }
            last.insert(k, loc);
        }
        log.sync().unwrap();
        assert!(log.stats.segment_evictions.load(Relaxed) >= 5);
        assert_eq!(
            evicted.len() as u64,
            5 * log.stats.segment_evictions.load(Relaxed)
        );
        assert_eq!(&evicted[0].0[..], b"k0", "oldest first");
        assert_eq!(evicted[0].1, first, "with the location that was reclaimed");
        let live: Vec<String> = (0..40)
            .map(|i| format!("k{i}"))
            .filter(|k| !evicted.iter().any(|e| &e.0[..] == k.as_bytes()))
            .collect();
        drop(log);
        let (log, rec) = open(&config(d, 3)).unwrap();
        let mut got: Vec<String> = rec
            .iter()
            .map(|r| String::from_utf8(r.key.to_vec()).unwrap())
            .collect();
        got.sort();
        let mut want = live.clone();
        want.sort();
        assert_eq!(got, want, "only the keys of live segments come back");
        for r in &rec {
            let i: usize = std::str::from_utf8(&r.key[1..]).unwrap().parse().unwrap();
            assert_eq!(
                log.read(&r.key, &r.location).unwrap().value().unwrap(),
                value(i, 10_000)
            );
        }
    });
}

#[test]
fn bad_settings_are_refused() {
    let d = dir("bad", "/tmp");
    let mut c = config(&d, 1);
    c.segment_size = 1000;
    assert!(SegmentLog::open(&c).is_err());
    let c = LogConfig {
        capacity: Some(SEG - 1),
        ..config(&d, 1)
    };
    assert!(SegmentLog::open(&c).is_err());
    let (log, _) = open(&config(&d, 1)).unwrap();
    assert!(log
        .append(b"k", None, &vec![0u8; SEG as usize], true)
        .is_err());
    let _ = std::fs::remove_dir_all(&d);
}
