//! Golden replies: every KV command's reply, in RESP2 and in RESP3 (after
//! `HELLO 3`), decoded with `redis-protocol` and compared with a reviewed
//! rendering: nils and errors inside arrays, maps in RESP3 and their flat
//! RESP2 form, the exact simple strings. Numbers that change from run to
//! run (lease ids, tokens, offsets, counters) are matched by `*`.

use std::io::{Read, Write};
use std::net::TcpStream;

use redis_protocol::resp2::decode::decode as decode2;
use redis_protocol::resp2::types::OwnedFrame as F2;
use redis_protocol::resp3::decode::complete::decode as decode3;
use redis_protocol::resp3::types::OwnedFrame as F3;
use tidepool_tests::{resp, Server};

/// Bulk strings are shown quoted when printable, else as `$len`.
fn bulk(b: &[u8]) -> String {
    if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        format!("\"{}\"", String::from_utf8_lossy(b))
    } else {
        format!("${}", b.len())
    }
}

/// Errors are shown by their code (the first word): the prose may change.
fn error(e: &str) -> String {
    format!("-{}", e.split(' ').next().unwrap_or(""))
}

fn render2(f: &F2) -> String {
    match f {
        F2::SimpleString(s) => format!("+{}", String::from_utf8_lossy(s)),
        F2::Error(e) => error(e),
        F2::Integer(i) => format!(":{i}"),
        F2::BulkString(b) => bulk(b),
        F2::Array(a) => format!("[{}]", a.iter().map(render2).collect::<Vec<_>>().join(", ")),
        F2::Null => "nil".into(),
    }
}

fn render3(f: &F3) -> String {
    match f {
        F3::SimpleString { data, .. } => format!("+{}", String::from_utf8_lossy(data)),
        F3::SimpleError { data, .. } => error(data),
        F3::BlobError { data, .. } => error(&String::from_utf8_lossy(data)),
        F3::Number { data, .. } => format!(":{data}"),
        F3::Double { data, .. } => format!(",{data}"),
        F3::Boolean { data, .. } => format!("#{data}"),
        F3::BlobString { data, .. } => bulk(data),
        F3::VerbatimString { data, .. } => format!("={}", bulk(data)),
        F3::BigNumber { data, .. } => format!("({}", String::from_utf8_lossy(data)),
        F3::Null => "null".into(),
        F3::Array { data, .. } => {
            format!(
                "[{}]",
                data.iter().map(render3).collect::<Vec<_>>().join(", ")
            )
        }
        F3::Push { data, .. } => {
            format!(
                ">[{}]",
                data.iter().map(render3).collect::<Vec<_>>().join(", ")
            )
        }
        F3::Set { data, .. } => {
            let mut items: Vec<String> = data.iter().map(render3).collect();
            items.sort();
            format!("~[{}]", items.join(", "))
        }
        F3::Map { data, .. } => {
            // The decoder's map has no order; the rendering sorts by key.
            let mut items: Vec<String> = data
                .iter()
                .map(|(k, v)| format!("{}: {}", render3(k), render3(v)))
                .collect();
            items.sort();
            format!("{{{}}}", items.join(", "))
        }
        other => format!("?{other:?}"),
    }
}

/// Whether `got` matches `want`, where each `*` in `want` stands for a run
/// of characters other than the separators `,`, `]`, `}` (a number, a
/// word).
fn matches(want: &str, got: &str) -> bool {
    fn go(w: &[u8], g: &[u8]) -> bool {
        match w.split_first() {
            None => g.is_empty(),
            Some((b'*', rest)) => {
                let mut i = 0;
                loop {
                    if go(rest, &g[i..]) {
                        return true;
                    }
                    if i == g.len() || matches!(g[i], b',' | b']' | b'}') {
                        return false;
                    }
                    i += 1;
                }
            }
            Some((c, rest)) => g.first() == Some(c) && go(rest, &g[1..]),
        }
    }
    go(want.as_bytes(), got.as_bytes())
}

/// A raw connection speaking RESP2 or RESP3.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    resp3: bool,
}

impl Conn {
    fn new(server: &Server, resp3: bool) -> Conn {
        let mut c = Conn {
            s: server.raw(),
            buf: Vec::new(),
            resp3,
        };
        if resp3 {
            let hello = c.call(&["HELLO", "3"]).1;
            assert!(hello.starts_with('{'), "HELLO 3: {hello}");
        }
        c
    }

    /// Sends a command; returns the raw reply and its rendering.
    fn call(&mut self, args: &[&str]) -> (Vec<u8>, String) {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.s.write_all(&resp(&args)).unwrap();
        loop {
            let decoded = if self.resp3 {
                decode3(&self.buf)
                    .unwrap_or_else(|e| panic!("not RESP3: {e:?} in {:?}", self.buf))
                    .map(|(f, n)| (render3(&f), n))
            } else {
                decode2(&self.buf)
                    .unwrap_or_else(|e| panic!("not RESP2: {e:?} in {:?}", self.buf))
                    .map(|(f, n)| (render2(&f), n))
            };
            if let Some((text, n)) = decoded {
                let raw: Vec<u8> = self.buf.drain(..n).collect();
                return (raw, text);
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("reply");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// (command, RESP2 rendering, RESP3 rendering), run in order on a fresh
/// server: each step's state is what the steps before it left.
const GOLDEN: &[(&str, &str, &str)] = &[
    // Writes: OK, and each refusal's code.
    ("KV.PUT a va", "+OK", "+OK"),
    ("KV.PUT b vb PARENT a", "+OK", "+OK"),
    ("KV.PUT c vc PARENT nope", "-NOPARENT", "-NOPARENT"),
    ("KV.PUT a again PARENT b", "-REPARENT", "-REPARENT"),
    ("KV.PUT x vx TIER ssd", "-NOTIER", "-NOTIER"),
    ("KV.PUT", "-ERR", "-ERR"),
    ("KV.PUT k v TTL soon", "-ERR", "-ERR"),
    // Reads: a nil alone and inside an array.
    ("KV.GET a", "\"va\"", "\"va\""),
    ("KV.GET nope", "nil", "null"),
    (
        "KV.MGET a nope b",
        "[\"va\", nil, \"vb\"]",
        "[\"va\", null, \"vb\"]",
    ),
    ("GET nope", "nil", "null"),
    // Batches: errors inside arrays.
    ("KV.MPUT 2 m1 v1 m2 v2 CHAIN", "[+OK, +OK]", "[+OK, +OK]"),
    (
        "KV.MPUT 2 n1 v1 n2 v2 PARENT nope",
        "[-NOPARENT, -NOPARENT]",
        "[-NOPARENT, -NOPARENT]",
    ),
    ("KV.MPUT 3 o1 v1 o2", "-ERR", "-ERR"),
    // Matches: a count, or a map (flat in RESP2).
    ("KV.MATCH 3 a b nope", ":2", ":2"),
    ("KV.MATCH 0", "-ERR", "-ERR"),
    (
        "KV.MATCH 3 a b nope WITHTIERS",
        "[\"matched\", :2, \"tiers\", [\"dram\", \"dram\"]]",
        "{\"matched\": :2, \"tiers\": [\"dram\", \"dram\"]}",
    ),
    (
        "KV.MATCH 2 a b LEASE 60000",
        "[\"matched\", :2, \"lease\", :*]",
        "{\"lease\": :*, \"matched\": :2}",
    ),
    (
        "KV.MATCH 1 nope LEASE 60000",
        "[\"matched\", :0, \"lease\", nil]",
        "{\"lease\": null, \"matched\": :0}",
    ),
    ("KV.MATCH two a", "-ERR", "-ERR"),
    // What cluster nodes ask each other (alone, a node owns every key).
    ("KV.PEER MATCH 3 a b nope", ":2", ":2"),
    ("KV.PEER MATCH 1 a WITHNODES", "-ERR", "-ERR"),
    (
        "KV.PEER EXISTS a nope",
        "[\"dram\", nil]",
        "[\"dram\", null]",
    ),
    ("KV.PEER TRIM 12345 1", ":0", ":0"),
    ("KV.PEER NOPE 1", "-ERR", "-ERR"),
    ("KV.MATCHTOKENS s 2 1 2 3 4", ":0", ":0"),
    ("KV.HASH s 2 1 2 3 4 5", "[$16, $16]", "[$16, $16]"),
    ("KV.HASH s 0 1", "-ERR", "-ERR"),
    // Per-key answers with nils.
    ("KV.EXISTS a nope", "[\"dram\", nil]", "[\"dram\", null]"),
    ("KV.VERIFY a nope", "[+ok, nil]", "[+ok, null]"),
    ("KV.PIN a nope", ":1", ":1"),
    ("KV.UNPIN a", ":1", ":1"),
    ("KV.RELEASE 12345", ":0", ":0"),
    ("KV.RELEASE soon", "-ERR", "-ERR"),
    // Deletes take descendants; the count is of named keys.
    ("KV.DEL a nope", ":1", ":1"),
    ("EXISTS b", ":0", ":0"),
    // The data plane.
    (
        "KV.RESERVE 2 r1 10 m1 5 VIA tcp",
        "[[\"tcp\", :*, :10, :*], +EXISTS]",
        "[[\"tcp\", :*, :10, :*], +EXISTS]",
    ),
    (
        "KV.RESERVE 1 big 99999999999999 VIA tcp",
        "[-TOOBIG]",
        "[-TOOBIG]",
    ),
    ("KV.RESERVE 1 r2 10 VIA carrier", "-ERR", "-ERR"),
    ("KV.COMMIT 999", "-NORESERVATION", "-NORESERVATION"),
    ("KV.ABORT 999", ":0", ":0"),
    (
        "KV.LOCATE 1 nope",
        "[\"lease\", :*, \"blocks\", [nil]]",
        "{\"blocks\": [null], \"lease\": :*}",
    ),
    (
        "KV.LOCATE 2 m1 nope VIA tcp",
        "[\"lease\", :*, \"blocks\", [[\"tcp\", :0, :2, :*], nil]]",
        "{\"blocks\": [[\"tcp\", :0, :2, :*], null], \"lease\": :*}",
    ),
    (
        "KV.DATAPLANE",
        "[\"tcp_port\", :*, \"shm_socket\", *, \"shm_arena_id\", *, \"shm_arena_size\", :*, \
         \"rdma\", *, \"reserve_timeout_ms\", :30000]",
        "{\"rdma\": *, \"reserve_timeout_ms\": :30000, \"shm_arena_id\": *, \
         \"shm_arena_size\": :*, \"shm_socket\": *, \"tcp_port\": :*}",
    ),
    ("KV.NOSUCH", "-ERR", "-ERR"),
];

#[test]
fn every_kv_reply_in_resp2_and_resp3() {
    for resp3 in [false, true] {
        let s = Server::start(&["--dram", "64MiB"]);
        let mut c = Conn::new(&s, resp3);
        let mut wrong = Vec::new();
        for (cmd, want2, want3) in GOLDEN {
            let args: Vec<&str> = cmd.split(' ').collect();
            let (_, got) = c.call(&args);
            let want = if resp3 { want3 } else { want2 };
            if !matches(want, &got) {
                wrong.push(format!("{cmd}\n    want {want}\n    got  {got}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "RESP{}:\n{}",
            if resp3 { 3 } else { 2 },
            wrong.join("\n")
        );
    }
}

/// KV.STATS has a fixed shape; its numbers vary.
#[test]
fn kv_stats_shape() {
    let s = Server::start(&["--dram", "64MiB"]);
    for resp3 in [false, true] {
        let mut c = Conn::new(&s, resp3);
        let (_, got) = c.call(&["KV.STATS"]);
        let tier = "{\"blocks\": :*, \"capacity\": :*, \"demotions\": :*, \"evictions\": :*, \
                    \"hits\": :*, \"misses\": :*, \"promotions\": :*, \"retained\": :*, \"used\": :*}";
        let want3 = format!(
            "{{\"keys_matched\": :*, \"keys_queried\": :*, \"leases\": :*, \"matches\": :*, \
             \"prefix_hit_ratio\": ,*, \"tiers\": {{\"dram\": {tier}}}}}"
        );
        if resp3 {
            assert!(matches(&want3, &got), "RESP3 KV.STATS: {got}");
        } else {
            assert!(
                got.starts_with("[\"tiers\", [\"dram\", ["),
                "RESP2 KV.STATS: {got}"
            );
        }
    }
}

/// In RESP2 a missing element of an array is a nil bulk string (`$-1`),
/// as Redis sends for MGET; a nil array (`*-1`) would read as "no reply"
/// to some clients.
#[test]
fn resp2_nils_inside_arrays_are_nil_bulk_strings() {
    let s = Server::start(&[]);
    let mut c = Conn::new(&s, false);
    c.call(&["KV.PUT", "a", "va"]);
    let (raw, _) = c.call(&["KV.MGET", "nope", "a"]);
    assert_eq!(raw, b"*2\r\n$-1\r\n$2\r\nva\r\n");
    let (raw, _) = c.call(&["KV.EXISTS", "nope"]);
    assert_eq!(raw, b"*1\r\n$-1\r\n");
    let (raw, _) = c.call(&["KV.GET", "nope"]);
    assert_eq!(raw, b"$-1\r\n");
    let mut c3 = Conn::new(&s, true);
    let (raw, _) = c3.call(&["KV.GET", "nope"]);
    assert_eq!(raw, b"_\r\n");
}

#[test]
fn the_matcher_matches() {
    assert!(matches(":*", ":123"));
    assert!(matches("[:*, nil]", "[:5, nil]"));
    assert!(!matches("[:*, nil]", "[:5, :6, nil]"));
    assert!(!matches(":2", ":20"));
    assert!(matches("{\"a\": *}", "{\"a\": \"x y\"}"));
}
