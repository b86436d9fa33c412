//! The SSD tier through the real server: demotion and promotion, and blocks
//! written with TIER ssd surviving kill -9.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::{cmd, Value};
use tidepool_tests::{server_bin, skipped, Server};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tidepool-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn block(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// Stores `b0` .. `b{n-1}`, `block(i, 4000)` each, one KV.PUT at a time.
fn put_blocks(c: &mut redis::Connection, n: usize) {
    for i in 0..n {
        let _: () = cmd("KV.PUT")
            .arg(format!("b{i}"))
            .arg(block(i, 4000))
            .query(c)
            .unwrap();
    }
}

fn wait_demotions(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.info_u64("ssd_pending_demotions") > 0 {
        assert!(Instant::now() < deadline, "demotions never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn demotion_and_promotion_through_the_server() {
    for engine in ["io_uring", "psync"] {
        demotion_and_promotion(engine);
    }
}

fn demotion_and_promotion(engine: &str) {
    let dir = temp_dir(&format!("demote-{engine}"));
    let ssd = format!("{}:32MiB", dir.display());
    let s = Server::start(&[
        "--dram",
        "256KiB",
        "--ssd",
        &ssd,
        "--ssd-segment-size",
        "1MiB",
        "--ssd-engine",
        engine,
    ]);
    let info: String = redis::cmd("INFO")
        .arg("tiers")
        .query(&mut s.redis())
        .unwrap();
    assert!(info.contains(&format!("ssd_engine:{engine}")), "{info}");
    let mut c = s.redis();
    put_blocks(&mut c, 200);
    wait_demotions(&s);
    assert!(s.info_u64("dram_used") <= 256 * 1024);
    assert!(s.info_u64("ssd_blocks") > 100, "most blocks went to SSD");
    assert!(s.info_u64("dram_demotions") > 100);
    let tiers: Vec<Option<String>> = cmd("KV.EXISTS")
        .arg("b0")
        .arg("b199")
        .query(&mut c)
        .unwrap();
    assert_eq!(tiers, [Some("ssd".into()), Some("dram".into())]);
    let m: Value = cmd("KV.MATCH")
        .arg(1)
        .arg("b0")
        .arg("WITHTIERS")
        .query(&mut c)
        .unwrap();
    assert!(format!("{m:?}").contains("ssd"), "{m:?}");
    wait_demotions(&s);
    let tier: Vec<Option<String>> = cmd("KV.EXISTS").arg("b0").query(&mut c).unwrap();
    assert_eq!(
        tier,
        [Some("ssd".into())],
        "far from the log's reclaim end: left on SSD"
    );
    let got: Vec<u8> = cmd("GET").arg("b0").query(&mut c).unwrap();
    assert!(got == block(0, 4000));
    let tier: Vec<Option<String>> = cmd("KV.EXISTS").arg("b0").query(&mut c).unwrap();
    assert_eq!(tier, [Some("dram".into())], "read from SSD, promoted back");
    for i in 0..200 {
        let got: Vec<u8> = cmd("GET").arg(format!("b{i}")).query(&mut c).unwrap();
        assert!(got == block(i, 4000), "b{i} differs");
    }
    assert!(s.info_u64("dram_promotions") > 100);
    assert_eq!(s.info_u64("ssd_checksum_failures"), 0);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A match reads the SSD blocks it finds near the log's reclaim end back
/// into DRAM (and only those); `--ssd-stage-on-match false` turns it off.
#[test]
fn a_match_stages_ssd_blocks_near_reclaim() {
    for staging in [true, false] {
        match_stages_near_reclaim(staging);
    }
}

fn match_stages_near_reclaim(staging: bool) {
    let dir = temp_dir(&format!("stage-{staging}"));
    // Two segments: once the second opens, the first is next to go.
    let ssd = format!("{}:2MiB", dir.display());
    let s = Server::start(&[
        "--dram",
        "256KiB",
        "--ssd",
        &ssd,
        "--ssd-segment-size",
        "1MiB",
        "--ssd-stage-on-match",
        if staging { "true" } else { "false" },
    ]);
    let mut c = s.redis();
    put_blocks(&mut c, 400);
    wait_demotions(&s);
    let n: i64 = cmd("KV.MATCH").arg(1).arg("b0").query(&mut c).unwrap();
    assert_eq!(n, 1);
    wait_demotions(&s);
    let tier: Vec<Option<String>> = cmd("KV.EXISTS").arg("b0").arg("b1").query(&mut c).unwrap();
    let b0 = if staging { "dram" } else { "ssd" };
    assert_eq!(tier, [Some(b0.into()), Some("ssd".into())]);
    let got: Vec<u8> = cmd("GET").arg("b0").query(&mut c).unwrap();
    assert!(got == block(0, 4000));
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ssd_writes_survive_kill_9() {
    let dir = temp_dir("kill9");
    let ssd = format!("{}:16MiB", dir.display());
    let args = ["--ssd", ssd.as_str(), "--ssd-segment-size", "1MiB"];
    let chain: Vec<String> = (0..5).map(|i| format!("chain{i}")).collect();
    {
        let s = Server::start(&args);
        let mut c = s.redis();
        for (i, k) in chain.iter().enumerate() {
            let mut put = cmd("KV.PUT");
            put.arg(k).arg(block(i, 70_000)).arg("TIER").arg("ssd");
            if i > 0 {
                put.arg("PARENT").arg(&chain[i - 1]);
            }
            let _: () = put.query(&mut c).unwrap();
        }
        for i in 0..20 {
            let syncs = s.info_u64("ssd_syncs");
            let _: () = cmd("KV.PUT")
                .arg(format!("solo{i}"))
                .arg(block(100 + i, 5000))
                .arg("TIER")
                .arg("ssd")
                .query(&mut c)
                .unwrap();
            // kill -9 keeps the page cache, so the restart below cannot
            // tell a synced write from one that is not: count the syncs.
            assert!(
                s.info_u64("ssd_syncs") > syncs,
                "solo{i} acknowledged unsynced"
            );
        }
        // A deleted block must stay deleted across the crash.
        let _: i64 = cmd("DEL").arg("solo19").query(&mut c).unwrap();
        // Dropping the server sends SIGKILL: no shutdown step runs.
    }
    let s = Server::start(&args);
    let mut c = s.redis();
    let n: i64 = cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 24, "24 blocks were acknowledged and not deleted");
    let gone: Option<Vec<u8>> = cmd("GET").arg("solo19").query(&mut c).unwrap();
    assert_eq!(gone, None, "a deleted block came back");
    let matched: i64 = cmd("KV.MATCH")
        .arg(chain.len())
        .arg(&chain)
        .query(&mut c)
        .unwrap();
    assert_eq!(matched, 5);
    for (i, k) in chain.iter().enumerate() {
        let got: Vec<u8> = cmd("KV.GET").arg(k).query(&mut c).unwrap();
        assert!(got == block(i, 70_000), "{k} differs after restart");
    }
    for i in 0..19 {
        let got: Vec<u8> = cmd("GET").arg(format!("solo{i}")).query(&mut c).unwrap();
        assert!(got == block(100 + i, 5000));
    }
    // The chain came back as a chain: deleting its head removes it all.
    let _: i64 = cmd("KV.DEL").arg("chain0").query(&mut c).unwrap();
    let n: i64 = cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 19);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_ssd_settings_stop_the_server_with_a_message() {
    for args in [
        vec!["--ssd", "/nonexistent-dir/x/y:16MiB"],
        vec!["--ssd", "/tmp:16MiB", "--ssd-engine", "floppy"],
        vec!["--ssd", "/tmp:16MiB", "--ssd-segment-size", "1000"],
    ] {
        let out = std::process::Command::new(server_bin())
            .args(["--port", "0"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("ssd"), "{args:?}: {err}");
    }
}

#[test]
fn kill_9_in_a_loop_during_writes_loses_nothing_acknowledged() {
    use std::sync::{Arc, Mutex};
    let dir = temp_dir("crashloop");
    // Room for everything the rounds write (at most 5 x 400 x 61 KB): nothing is
    // reclaimed, so every acknowledged block must come back.
    let ssd = format!("{}:256MiB", dir.display());
    let args = ["--ssd", ssd.as_str(), "--ssd-segment-size", "1MiB"];
    let acked: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let mut cut_short = 0;
    for round in 0..5 {
        let s = Server::start(&args);
        // Everything acknowledged in earlier rounds is there, byte for byte.
        let mut c = s.redis();
        for (k, len) in acked.lock().unwrap().iter() {
            let got: Option<Vec<u8>> = cmd("KV.GET").arg(k).query(&mut c).unwrap();
            let seed: usize = k.len() * 131 + len;
            assert!(
                got.as_deref() == Some(&block(seed, *len)[..]),
                "round {round}: {k} lost or changed"
            );
        }
        let port = s.port;
        let acked_w = acked.clone();
        let writer = std::thread::spawn(move || {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            let Ok(mut c) = client.get_connection() else {
                return;
            };
            for i in 0..400 {
                let k = format!("r{round}-{i}");
                let len = 1000 + (i * 7919) % 60_000;
                let seed = k.len() * 131 + len;
                let r: redis::RedisResult<()> = cmd("KV.PUT")
                    .arg(&k)
                    .arg(block(seed, len))
                    .arg("TIER")
                    .arg("ssd")
                    .query(&mut c);
                match r {
                    Ok(()) => acked_w.lock().unwrap().push((k, len)),
                    Err(_) => return, // the server died under us
                }
            }
        });
        // Kill once this round has some writes acknowledged (more each
        // round), while the writer goes on: however fast the machine.
        let mine = |a: &Vec<(String, usize)>| {
            a.iter()
                .filter(|(k, _)| k.starts_with(&format!("r{round}-")))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while mine(&acked.lock().unwrap()) < 20 * (round + 1) && !writer.is_finished() {
            assert!(
                Instant::now() < deadline,
                "round {round}: the writer is stuck"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(s); // SIGKILL mid-write
        writer.join().unwrap();
        cut_short += (mine(&acked.lock().unwrap()) < 400) as usize;
    }
    assert!(cut_short > 0, "no round was killed mid-write");
    let n = acked.lock().unwrap().len();
    assert!(
        n > 20,
        "the writer got too little done to test anything ({n})"
    );
    let s = Server::start(&args);
    let mut c = s.redis();
    for (k, len) in acked.lock().unwrap().iter() {
        let got: Vec<u8> = cmd("KV.GET").arg(k).query(&mut c).unwrap();
        assert!(
            got == block(k.len() * 131 + len, *len),
            "{k} lost or changed"
        );
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flipped_bytes_on_disk_are_never_served() {
    use std::os::unix::fs::FileExt;
    let dir = temp_dir("flip");
    let ssd = format!("{}:16MiB", dir.display());
    let args = ["--ssd", ssd.as_str(), "--ssd-segment-size", "1MiB"];
    let s = Server::start(&args);
    let mut c = s.redis();
    // The first record of a fresh log sits at offset 0: header (48 bytes), key, value.
    let _: () = cmd("KV.PUT")
        .arg("victim")
        .arg(block(1, 100_000))
        .arg("TIER")
        .arg("ssd")
        .query(&mut c)
        .unwrap();
    let _: () = cmd("KV.PUT")
        .arg("other")
        .arg(block(2, 100_000))
        .arg("TIER")
        .arg("ssd")
        .query(&mut c)
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("tidepool.ssd"))
        .unwrap();
    file.write_all_at(&[0x5A; 8], 48 + 6 + 50_000).unwrap();
    file.sync_all().unwrap();
    let got: Option<Vec<u8>> = cmd("GET").arg("victim").query(&mut c).unwrap();
    assert_eq!(got, None, "a corrupt block is a miss");
    assert_eq!(s.info_u64("ssd_checksum_failures"), 1);
    let got: Vec<u8> = cmd("GET").arg("other").query(&mut c).unwrap();
    assert!(got == block(2, 100_000));
    let n: i64 = cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 1, "the corrupt block was dropped");
    drop(s);
    // After a restart the corrupt record is skipped; the rest comes back.
    let s = Server::start(&args);
    let mut c = s.redis();
    let keys: Vec<String> = cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert_eq!(keys, ["other"]);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_loop_block_device_serves_as_the_ssd_tier() {
    let dir = temp_dir("loop");
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            skipped(&format!(
                "losetup refused here ({}), no loop-device test",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            return;
        }
        Err(e) => {
            skipped(&format!("losetup not available ({e}), no loop-device test"));
            return;
        }
    };
    let detach = || {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &dev])
            .status();
    };
    let result = std::panic::catch_unwind(|| {
        // No SIZE: the device's own size (64 MiB).
        let args = ["--ssd", dev.as_str(), "--ssd-segment-size", "1MiB"];
        let s = Server::start(&args);
        assert_eq!(s.info_u64("ssd_capacity"), 64 << 20);
        let mut c = s.redis();
        for i in 0..10 {
            let _: () = cmd("KV.PUT")
                .arg(format!("d{i}"))
                .arg(block(i, 200_000))
                .arg("TIER")
                .arg("ssd")
                .query(&mut c)
                .unwrap();
        }
        drop(s);
        let s = Server::start(&args);
        let mut c = s.redis();
        for i in 0..10 {
            let got: Vec<u8> = cmd("GET").arg(format!("d{i}")).query(&mut c).unwrap();
            assert!(got == block(i, 200_000), "d{i}");
        }
    });
    detach();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Mounts a tmpfs of `size` at a fresh directory; `None` (and a SKIPPED
/// line) where mounting is refused (no privilege).
fn small_fs(name: &str, size: &str) -> Option<std::path::PathBuf> {
    let dir = temp_dir(name);
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&dir)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(dir),
        Ok(o) => {
            skipped(&format!(
                "mount refused here ({}), no full-device test",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            None
        }
        Err(e) => {
            skipped(&format!("mount not available ({e}), no full-device test"));
            None
        }
    }
}

fn unmount(dir: &std::path::Path) {
    let _ = std::process::Command::new("umount").arg(dir).status();
    let _ = std::fs::remove_dir_all(dir);
}

fn ssd_put(c: &mut redis::Connection, key: &str, value: &[u8]) -> redis::RedisResult<()> {
    cmd("KV.PUT")
        .arg(key)
        .arg(value)
        .arg("TIER")
        .arg("ssd")
        .query(c)
}

/// The tier's space is reserved when it opens: a file system that fills up
/// afterwards (other files) no longer makes every SSD write fail with
/// ENOSPC while the log believes it has room.
#[test]
fn a_file_system_filling_up_after_start_does_not_fail_the_tier() {
    let Some(dir) = small_fs("fills", "40m") else {
        return;
    };
    let result = std::panic::catch_unwind(|| {
        let spec = format!("{}:32MiB", dir.join("tier").display());
        let s = Server::start(&["--ssd", &spec, "--ssd-segment-size", "1MiB"]);
        assert_eq!(s.info_u64("ssd_segments_without_space"), 0);
        // Something else takes every byte left.
        let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
        let chunk = vec![1u8; 1 << 20];
        while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
        let mut c = s.redis();
        for i in 0..80 {
            ssd_put(&mut c, &format!("f{i}"), &block(i, 500_000)).unwrap();
        }
        assert_eq!(s.info_u64("ssd_no_space_errors"), 0);
        let got: Vec<u8> = cmd("GET").arg("f79").query(&mut c).unwrap();
        assert!(got == block(79, 500_000));
    });
    unmount(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A file system smaller than the tier: said at start, the log turns over
/// within the segments it has room for (no write fails), and takes the
/// others once space returns.
#[test]
fn a_file_system_smaller_than_the_tier_is_used_as_far_as_it_goes() {
    let Some(dir) = small_fs("small", "8m") else {
        return;
    };
    let result = std::panic::catch_unwind(|| {
        let spec = format!("{}:32MiB", dir.join("tier").display());
        let s = Server::start(&["--ssd", &spec, "--ssd-segment-size", "1MiB"]);
        let without = s.info_u64("ssd_segments_without_space");
        assert!(
            (24..32).contains(&without),
            "{without} of 32 segments without space"
        );
        let mut c = s.redis();
        for i in 0..40 {
            ssd_put(&mut c, &format!("s{i}"), &block(i, 500_000)).unwrap();
        }
        let got: Vec<u8> = cmd("GET").arg("s39").query(&mut c).unwrap();
        assert!(got == block(39, 500_000));
        let first: Option<Vec<u8>> = cmd("GET").arg("s0").query(&mut c).unwrap();
        assert!(
            first.is_none(),
            "the oldest blocks were reclaimed to make room"
        );
        // Space returns: the other segments join as the log turns over.
        let ok = std::process::Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&dir)
            .status()
            .is_ok_and(|st| st.success());
        assert!(ok, "remount");
        for i in 40..120 {
            ssd_put(&mut c, &format!("s{i}"), &block(i, 500_000)).unwrap();
        }
        assert_eq!(s.info_u64("ssd_segments_without_space"), 0);
        assert!(s.info_u64("ssd_segments_used") > 24);
    });
    unmount(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
