//! The slot of a key, checked against the real redis-server in cluster
//! mode (its CLUSTER KEYSLOT) over keys with and without hash tags.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tidepool_tests::must_have_tool;

#[test]
fn key_slots_match_redis_cluster_keyslot() {
    must_have_tool("redis-server");
    let dir = std::env::temp_dir().join(format!("tidepool-keyslot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--cluster-enabled", "yes"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut con = loop {
        if let Ok(c) = client.get_connection() {
            break c;
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Plain keys, tagged keys, empty and unclosed tags, binary bytes.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut keys: Vec<Vec<u8>> = vec![
        b"foo".to_vec(),
        b"{user1000}.following".to_vec(),
        b"foo{}{bar}".to_vec(),
        b"foo{{bar}}zap".to_vec(),
        b"{".to_vec(),
        b"}{".to_vec(),
        b"a{b".to_vec(),
    ];
    for i in 0..2000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % 24) as usize;
        let mut k: Vec<u8> = (0..len)
            .map(|j| (x >> (j % 8 * 8)) as u8 ^ j as u8)
            .collect();
        if i % 3 == 0 {
            let at = (x as usize >> 3) % len;
            k.insert(at, b'{');
            k.insert((at + 1 + (x as usize >> 7) % 4).min(k.len()), b'}');
        }
        keys.push(k);
    }
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("CLUSTER").arg("KEYSLOT").arg(&k[..]);
    }
    let slots: Vec<u16> = pipe.query(&mut con).unwrap();
    for (k, want) in keys.iter().zip(slots) {
        assert_eq!(
            tidepool_cluster::key_slot(k),
            want,
            "key {:?}",
            String::from_utf8_lossy(k)
        );
    }
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
