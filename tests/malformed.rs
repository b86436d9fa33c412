//! Hostile input: each bad frame gets an error or a closed connection, the
//! server stays up, keeps serving others, and does not balloon in memory.

use std::io::Write;
use std::time::Duration;

use tidepool_tests::{read_until, resp, Server};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn assert_serving(s: &Server) {
    let mut c = s.redis();
    let _: () = redis::cmd("SET")
        .arg("alive")
        .arg("yes")
        .query(&mut c)
        .unwrap();
    let v: String = redis::cmd("GET").arg("alive").query(&mut c).unwrap();
    assert_eq!(v, "yes");
}

/// Sends `input` and expects `-ERR Protocol error...` followed by a close.
fn expect_protocol_error(s: &Server, input: &[u8], want: &str) {
    let mut c = s.raw();
    c.write_all(input).unwrap();
    let (got, closed) = read_until(&mut c, |_| false);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with(&format!("-ERR Protocol error: {want}")),
        "{input:?} -> {text:?}"
    );
    assert!(closed, "connection must close after a protocol error");
}

#[test]
fn bad_lengths_are_refused_at_once() {
    let s = Server::start(&[]);
    let rss0 = rss_kib(s.pid());
    expect_protocol_error(&s, b"*1\r\n$100000000000\r\n", "invalid bulk length");
    expect_protocol_error(&s, b"*2\r\n$3\r\nGET\r\n$-5\r\n", "invalid bulk length");
    expect_protocol_error(&s, b"*1\r\n$abc\r\n", "invalid bulk length");
    expect_protocol_error(&s, b"*-5x\r\n", "invalid multibulk length");
    expect_protocol_error(&s, b"*99999999999999\r\n", "invalid multibulk length");
    expect_protocol_error(
        &s,
        b"*1\r\n$3\r\nGETXX\r\n",
        "bulk string not terminated by CRLF",
    );
    let nested = b"*1\r\n".repeat(100_000);
    expect_protocol_error(&s, &nested, "expected '$', got '*'");
    expect_protocol_error(&s, &[b'x'; 70 * 1024], "too big inline request");
    assert_serving(&s);
    assert!(rss_kib(s.pid()) < rss0 + 50 * 1024, "memory grew");
    assert_eq!(redis_info_errors(&s), 8);
}

fn redis_info_errors(s: &Server) -> u64 {
    s.info_u64("total_error_replies_protocol")
}

#[test]
fn configured_bulk_limit() {
    let s = Server::start(&["--proto-max-bulk-len", "1KiB"]);
    expect_protocol_error(
        &s,
        &resp(&[b"SET", b"k", &[0u8; 2048]]),
        "invalid bulk length",
    );
    let mut c = s.redis();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg(vec![0u8; 1024])
        .query(&mut c)
        .unwrap();
}

#[test]
fn random_bytes_and_truncated_frames() {
    let s = Server::start(&[]);
    // A deterministic pseudo-random 64 KiB (xorshift), so a failure reproduces.
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for chunk in [&noise[..], &noise[..100], &noise[1..]] {
        let mut c = s.raw();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = c.write_all(chunk);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let _ = read_until(&mut c, |_| false);
    }
    // Truncated frames: the client goes away mid-request, at every byte
    // (inside the value and before its last CRLF too).
    let frame = resp(&[b"SET", b"key", b"value"]);
    for cut in 1..frame.len() {
        let mut c = s.raw();
        c.write_all(&frame[..cut]).unwrap();
        drop(c);
    }
    assert_serving(&s);
    let mut c = s.redis();
    let n: i64 = redis::cmd("EXISTS").arg("key").query(&mut c).unwrap();
    assert_eq!(n, 0, "a truncated SET must not store anything");
}

#[test]
fn stalled_huge_array_does_not_block_others() {
    let s = Server::start(&[]);
    let rss0 = rss_kib(s.pid());
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut c = s.raw();
        c.write_all(b"*1048576\r\n$3\r\nSET\r\n$1000000\r\nabc")
            .unwrap();
        stalled.push(c);
    }
    assert_serving(&s);
    let out = s.cli_text(&["PING"]);
    assert_eq!(out, "PONG\n");
    assert!(
        rss_kib(s.pid()) < rss0 + 100 * 1024,
        "declared sizes must not be allocated up front"
    );
    drop(stalled);
    assert_serving(&s);
}

#[test]
fn pipelined_replies_come_back_in_order() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend(resp(&[
            b"SET",
            format!("k{i}").as_bytes(),
            format!("{i}").as_bytes(),
        ]));
        batch.extend(resp(&[b"GET", format!("k{i}").as_bytes()]));
    }
    batch.extend_from_slice(b"PING\r\n");
    c.write_all(&batch).unwrap();
    let (got, _) = read_until(&mut c, |g| g.ends_with(b"+PONG\r\n"));
    let mut want = Vec::new();
    for i in 0..1000 {
        let v = format!("{i}");
        want.extend_from_slice(b"+OK\r\n");
        want.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
    }
    want.extend_from_slice(b"+PONG\r\n");
    assert_eq!(got, want);
}
