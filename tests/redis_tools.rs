//! The real server driven by the real `redis-cli` and `redis-benchmark`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tidepool_tests::{must_have_tool, Server};

#[test]
fn one_shot_commands() {
    let s = Server::start(&[]);
    assert_eq!(s.cli_text(&["PING"]), "PONG\n");
    assert_eq!(s.cli_text(&["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(s.cli_text(&["GET", "greeting"]), "hello world\n");
    assert_eq!(s.cli_text(&["STRLEN", "greeting"]), "11\n");
    assert_eq!(s.cli_text(&["TYPE", "greeting"]), "string\n");
    assert_eq!(
        s.cli_text(&["EXISTS", "greeting", "nope", "greeting"]),
        "2\n"
    );
    assert_eq!(s.cli_text(&["MSET", "a", "1", "b", "2"]), "OK\n");
    assert_eq!(s.cli_text(&["MGET", "a", "nope", "b"]), "1\n\n2\n");
    assert_eq!(s.cli_text(&["TTL", "a"]), "-1\n");
    assert_eq!(s.cli_text(&["EXPIRE", "a", "100"]), "1\n");
    assert_eq!(s.cli_text(&["TTL", "a"]), "100\n");
    assert_eq!(s.cli_text(&["PERSIST", "a"]), "1\n");
    assert_eq!(s.cli_text(&["SET", "a", "x", "NX"]), "\n");
    assert_eq!(s.cli_text(&["DEL", "a", "b", "nope"]), "2\n");
    assert_eq!(s.cli_text(&["DBSIZE"]), "1\n");
    assert_eq!(
        s.cli_text(&["GET"]).trim(),
        "ERR wrong number of arguments for 'get' command"
    );
    assert!(s
        .cli_text(&["FOO", "bar"])
        .starts_with("ERR unknown command 'FOO', with args beginning with: 'bar'"));
    assert_eq!(s.cli_text(&["CONFIG", "GET", "save"]), "save\n\n");
    assert_eq!(s.cli_text(&["CONFIG", "SET", "dram", "128MiB"]), "OK\n");
    assert_eq!(s.cli_text(&["CONFIG", "GET", "dram"]), "dram\n134217728\n");
    assert_eq!(
        s.cli_text(&["COMMAND", "COUNT"])
            .trim()
            .parse::<usize>()
            .unwrap(),
        tidepool_protocol::table::COMMANDS.len()
    );
    assert!(s.cli_text(&["CLIENT", "LIST"]).contains("addr=127.0.0.1:"));
    assert_eq!(s.cli_text(&["FLUSHALL"]), "OK\n");
    assert_eq!(s.cli_text(&["DBSIZE"]), "0\n");
}

#[test]
fn kv_chain_match_and_hash() {
    let s = Server::start(&[]);
    assert_eq!(
        s.cli_text(&["KV.MPUT", "3", "b0", "x", "b1", "y", "b2", "z", "CHAIN"]),
        "OK\nOK\nOK\n"
    );
    assert_eq!(
        s.cli_text(&["KV.MATCH", "4", "b0", "b1", "b2", "b3"]),
        "3\n"
    );
    assert_eq!(s.cli_text(&["KV.MATCH", "2", "b1", "b0"]), "2\n");
    assert_eq!(s.cli_text(&["KV.MATCH", "2", "zz", "b0"]), "0\n");
    assert_eq!(
        s.cli_text(&["KV.MATCH", "2", "b0", "b1", "WITHTIERS"]),
        "matched\n2\ntiers\ndram\ndram\n"
    );
    assert_eq!(s.cli_text(&["KV.EXISTS", "b0", "nope"]), "dram\n\n");
    // Deleting the head of a chain removes the whole chain: no orphans.
    assert_eq!(s.cli_text(&["KV.DEL", "b0"]), "1\n");
    assert_eq!(s.cli_text(&["DBSIZE"]), "0\n");
    // KV.HASH and KV.MATCHTOKENS agree.
    let keys = s.cli(&["--no-raw", "KV.HASH", "seed", "2", "1", "2", "3", "4", "5"]);
    let text = String::from_utf8_lossy(&keys.stdout);
    assert_eq!(text.lines().count(), 2, "two full blocks: {text}");
    assert_eq!(
        s.cli_text(&["KV.MATCHTOKENS", "seed", "2", "1", "2", "3", "4"]),
        "0\n"
    );
    let raw = s.cli_stdin(&[], "KV.HASH seed 2 1 2 3 4\n");
    assert_eq!(raw.len(), 2 * 17, "two 16-byte keys, one per line");
    let k0 = &raw[..16];
    let esc: String = k0.iter().map(|b| format!("\\x{b:02x}")).collect();
    s.cli_stdin(&[], &format!("KV.PUT \"{esc}\" v\n"));
    assert_eq!(
        s.cli_text(&["KV.MATCHTOKENS", "seed", "2", "1", "2", "3", "4"]),
        "1\n"
    );
}

#[test]
fn binary_keys_and_scan() {
    let s = Server::start(&[]);
    let out = s.cli_stdin(&[], "SET \"k\\x00\\xff\\r\\n\" \"v\\x00v\"\nGET \"k\\x00\\xff\\r\\n\"\nSTRLEN \"k\\x00\\xff\\r\\n\"\n");
    assert_eq!(out, b"OK\nv\0v\n3\n");
    for i in 0..300 {
        s.cli_stdin(&[], &format!("SET user:{i} {i}\n"));
    }
    let scanned = s.cli_text(&["--scan", "--pattern", "user:*"]);
    let mut keys: Vec<&str> = scanned.lines().collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 300);
    let all = s.cli(&["--scan"]);
    assert_eq!(
        all.stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        301
    );
}

#[test]
fn resp3_and_info() {
    let s = Server::start(&[]);
    let hello = s.cli_text(&["-3", "HELLO", "3"]);
    assert!(hello.contains("proto 3"), "{hello}");
    s.cli_text(&["KV.PUT", "k", "v"]);
    let stats = s.cli_text(&["-3", "KV.STATS"]);
    assert!(stats.contains("prefix_hit_ratio"), "{stats}");
    let info = s.cli_text(&["INFO"]);
    for section in [
        "# Server",
        "# Clients",
        "# Memory",
        "# Stats",
        "# Keyspace",
        "# Kvcache",
        "# Tiers",
    ] {
        assert!(info.contains(section), "INFO lacks {section}");
    }
    assert!(info.contains("db0:keys=1"));
    let kv = s.cli_text(&["INFO", "kvcache"]);
    assert!(kv.contains("kv_prefix_hit_ratio:") && !kv.contains("# Server"));
    assert!(s
        .cli_text(&["-3", "INFO", "tiers"])
        .contains("dram_capacity:1073741824"));
}

#[test]
fn subscribe_sees_block_events() {
    let s = Server::start(&[]);
    must_have_tool("redis-cli");
    let mut sub = Command::new("redis-cli")
        .args(["-p", &s.port.to_string(), "SUBSCRIBE", "__kv_events__"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    // Wait for the subscription to be confirmed before publishing.
    let first: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
    assert_eq!(first, ["subscribe", "__kv_events__", "1"]);
    s.cli_text(&["KV.MPUT", "2", "p", "1", "c", "2", "CHAIN"]);
    s.cli_text(&["KV.DEL", "p"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut payloads = Vec::new();
    while payloads.len() < 4 && Instant::now() < deadline {
        let l = lines.next().unwrap().unwrap();
        if l.contains(" dram ") {
            payloads.push(l);
        }
    }
    let _ = sub.kill();
    let _ = sub.wait();
    // hex("p") = 70, hex("c") = 63
    assert_eq!(payloads[0], "1 stored dram 70");
    assert_eq!(payloads[1], "2 stored dram 63 70");
    assert_eq!(payloads[2], "3 deleted dram 70");
    assert_eq!(payloads[3], "4 orphaned dram 63 70");
}

#[test]
fn redis_benchmark_runs_clean() {
    let s = Server::start(&[]);
    must_have_tool("redis-benchmark");
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &s.port.to_string(),
            "-t",
            "ping,set,get",
            "-n",
            "20000",
            "-P",
            "16",
            "-q",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase()
        + &String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(out.status.success(), "{text}");
    for test in ["ping_inline", "ping_mbulk", "set", "get"] {
        assert!(
            text.contains(&format!("{test}: ")),
            "no {test} result in {text}"
        );
    }
    assert!(!text.contains("error"), "{text}");
    assert_eq!(s.info_u64("total_error_replies_protocol"), 0);
    assert!(s.info_u64("total_commands_processed") >= 80_000);
}

#[test]
fn shutdown_command_stops_the_server() {
    let mut s = Server::start(&[]);
    let _ = s.cli(&["SHUTDOWN", "NOSAVE"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!s.is_running());
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut s = Server::start(&[]);
    let status = Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!s.is_running());
}

#[test]
fn maxclients_refuses_extra_connections() {
    let s = Server::start(&["--maxclients", "2"]);
    let mut a = s.redis();
    // The start-up probe's connection may not be unregistered yet: wait until
    // `a` is the only client, so the count below is exact.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut a).unwrap();
        if info.contains("connected_clients:1\r") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probe connection never left: {info}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut b = s.redis();
    let out = s.cli_text(&["PING"]);
    assert!(out.contains("max number of clients reached"), "{out}");
    drop(a);
    // The slot frees up once a client leaves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if s.cli_text(&["PING"]) == "PONG\n" {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Asked over `b`: the redis-cli that just got PONG may still hold the
    // other slot, so a fresh connection could itself be refused.
    let info: String = redis::cmd("INFO").arg("stats").query(&mut b).unwrap();
    let rejected: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("rejected_connections:"))
        .expect("INFO has rejected_connections")
        .trim()
        .parse()
        .unwrap();
    assert!(rejected >= 1, "{info}");
}

#[test]
fn keys_expire_without_being_touched() {
    let s = Server::start(&[]);
    // One pipeline (redis-cli's pipe mode), so that no process start falls
    // between the short TTLs and the child that needs its parent stored.
    let out = s.cli_stdin(
        &[],
        "SET short v PX 300\nKV.PUT block v TTL 300\nKV.PUT child v PARENT block\n\
         SET long v EX 100\n",
    );
    assert_eq!(String::from_utf8_lossy(&out), "OK\nOK\nOK\nOK\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.cli_text(&["DBSIZE"]) != "1\n" {
        assert!(Instant::now() < deadline, "expired keys were never swept");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The child went with its expired parent; the long TTL stays.
    assert_eq!(s.cli_text(&["EXISTS", "long"]), "1\n");
    assert!(s.info_u64("expired_keys") >= 2);
}
