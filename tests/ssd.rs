//! The SSD tier through the real server: demotion and promotion, and blocks
//! written with TIER ssd surviving kill -9.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::{cmd, Value};
use tidepool_tests::{server_bin, Server};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tidepool-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn block(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
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
    let dir = temp_dir("demote");
    let ssd = format!("{}:32MiB", dir.display());
    let s = Server::start(&[
        "--dram",
        "256KiB",
        "--ssd",
        &ssd,
        "--ssd-segment-size",
        "1MiB",
    ]);
    let mut c = s.redis();
    for i in 0..200 {
        let _: () = cmd("KV.PUT")
            .arg(format!("b{i}"))
            .arg(block(i, 4000))
            .query(&mut c)
            .unwrap();
    }
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
            let _: () = cmd("KV.PUT")
                .arg(format!("solo{i}"))
                .arg(block(100 + i, 5000))
                .arg("TIER")
                .arg("ssd")
                .query(&mut c)
                .unwrap();
        }
        // Dropping the server sends SIGKILL: no shutdown step runs.
    }
    let s = Server::start(&args);
    let mut c = s.redis();
    let n: i64 = cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 25);
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
    for i in 0..20 {
        let got: Vec<u8> = cmd("GET").arg(format!("solo{i}")).query(&mut c).unwrap();
        assert!(got == block(100 + i, 5000));
    }
    // The chain came back as a chain: deleting its head removes it all.
    let _: i64 = cmd("KV.DEL").arg("chain0").query(&mut c).unwrap();
    let n: i64 = cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 20);
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
