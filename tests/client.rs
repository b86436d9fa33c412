//! Typed replies through a real Redis client crate (`redis`).

use std::collections::HashMap;

use redis::{cmd, Value};
use tidepool_tests::Server;

#[test]
fn typed_replies_resp2() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    let pong: String = cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    let key = vec![0u8, 1, 2, 255];
    let value = vec![9u8; 100_000];
    let ok: String = cmd("SET").arg(&key).arg(&value).query(&mut c).unwrap();
    assert_eq!(ok, "OK");
    let got: Option<Vec<u8>> = cmd("GET").arg(&key).query(&mut c).unwrap();
    assert_eq!(got.as_deref(), Some(&value[..]));
    let missing: Option<Vec<u8>> = cmd("GET").arg("nope").query(&mut c).unwrap();
    assert_eq!(missing, None);
    let set_get: Option<String> = cmd("SET")
        .arg("x")
        .arg("new")
        .arg("GET")
        .query(&mut c)
        .unwrap();
    assert_eq!(set_get, None);
    let pttl: i64 = cmd("PTTL").arg("x").query(&mut c).unwrap();
    assert_eq!(pttl, -1);
    let _: () = cmd("SET")
        .arg("t")
        .arg("v")
        .arg("PX")
        .arg(60_000)
        .query(&mut c)
        .unwrap();
    let pttl: i64 = cmd("PTTL").arg("t").query(&mut c).unwrap();
    assert!((59_000..=60_000).contains(&pttl), "{pttl}");
    let usage: i64 = cmd("MEMORY").arg("USAGE").arg(&key).query(&mut c).unwrap();
    assert!(usage >= 100_004);
    let enc: String = cmd("OBJECT")
        .arg("ENCODING")
        .arg(&key)
        .query(&mut c)
        .unwrap();
    assert_eq!(enc, "raw");

    let puts: Vec<String> = cmd("KV.MPUT")
        .arg(3)
        .arg("h0")
        .arg("a")
        .arg("h1")
        .arg("b")
        .arg("h2")
        .arg("c")
        .arg("CHAIN")
        .query(&mut c)
        .unwrap();
    assert_eq!(puts, ["OK", "OK", "OK"]);
    let n: i64 = cmd("KV.MATCH")
        .arg(3)
        .arg("h0")
        .arg("h1")
        .arg("zz")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 2);
    let tiers: Vec<Option<String>> = cmd("KV.EXISTS").arg("h2").arg("zz").query(&mut c).unwrap();
    assert_eq!(tiers, [Some("dram".to_string()), None]);
    let blocks: Vec<Option<Vec<u8>>> = cmd("KV.MGET").arg("h0").arg("zz").query(&mut c).unwrap();
    assert_eq!(blocks, [Some(b"a".to_vec()), None]);
    let pinned: i64 = cmd("KV.PIN").arg("h2").arg("zz").query(&mut c).unwrap();
    assert_eq!(pinned, 1);
    let hashes: Vec<Vec<u8>> = cmd("KV.HASH")
        .arg("s")
        .arg(4)
        .arg(&[1, 2, 3, 4, 5, 6, 7, 8])
        .query(&mut c)
        .unwrap();
    // The definition in the README, computed here from XXH3-128 itself (not
    // with the function the server calls): key_0 = XXH3-128(seed ‖ tokens
    // of block 0), key_i = XXH3-128(key_{i-1} ‖ tokens of block i), tokens
    // as 4 little-endian bytes, keys big-endian.
    let le = |ts: &[u32]| -> Vec<u8> { ts.iter().flat_map(|t| t.to_le_bytes()).collect() };
    let key0 = xxhash_rust::xxh3::xxh3_128(&[&b"s"[..], &le(&[1, 2, 3, 4])].concat()).to_be_bytes();
    let key1 = xxhash_rust::xxh3::xxh3_128(&[&key0[..], &le(&[5, 6, 7, 8])].concat()).to_be_bytes();
    assert_eq!(hashes, [key0.to_vec(), key1.to_vec()]);
    // And the README's test vector, over the wire.
    let vector: Vec<Vec<u8>> = cmd("KV.HASH")
        .arg("tidepool")
        .arg(4)
        .arg(&[0, 1, 2, 3, 4, 5, 6, 7])
        .query(&mut c)
        .unwrap();
    let hex: Vec<String> = vector
        .iter()
        .map(|k| k.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    assert_eq!(
        hex,
        [
            "076dce5e065dc701d0c17a36bce9f886",
            "41f6bd945e4bb1d0e641445defdf4212"
        ]
    );

    // Leases: the reply carries the lease id, which KV.RELEASE takes once.
    let m: HashMap<String, Value> = cmd("KV.MATCH")
        .arg(2)
        .arg("h0")
        .arg("h1")
        .arg("LEASE")
        .arg(10_000)
        .query(&mut c)
        .unwrap();
    let lease = match &m["lease"] {
        Value::Int(i) => *i,
        other => panic!("lease is {other:?}"),
    };
    let released: i64 = cmd("KV.RELEASE").arg(lease).query(&mut c).unwrap();
    assert_eq!(released, 1);
    let again: i64 = cmd("KV.RELEASE").arg(lease).query(&mut c).unwrap();
    assert_eq!(again, 0);

    let stats: HashMap<String, Value> = cmd("KV.STATS").query(&mut c).unwrap();
    assert!(stats.contains_key("tiers") && stats.contains_key("prefix_hit_ratio"));
}

#[test]
fn error_codes() {
    let s = Server::start(&["--dram", "1KiB"]);
    let mut c = s.redis();
    let e = cmd("KV.PUT")
        .arg("c")
        .arg("v")
        .arg("PARENT")
        .arg("missing")
        .query::<()>(&mut c)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOPARENT"));
    let e = cmd("KV.PUT")
        .arg("big")
        .arg(vec![0u8; 4096])
        .query::<()>(&mut c)
        .unwrap_err();
    assert_eq!(e.code(), Some("TOOBIG"));
    let e = cmd("KV.PUT")
        .arg("k")
        .arg("v")
        .arg("TIER")
        .arg("ssd")
        .query::<()>(&mut c)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOTIER"));
    let e = cmd("SELECT").arg(1).query::<()>(&mut c).unwrap_err();
    assert!(e.to_string().contains("DB index is out of range"));
    let e = cmd("SET")
        .arg("k")
        .arg("v")
        .arg("EX")
        .arg("nan")
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(e
        .to_string()
        .contains("value is not an integer or out of range"));
    // Fill with pinned blocks until nothing can be evicted: -OOM.
    let mut oom = None;
    for i in 0..20 {
        if let Err(e) = cmd("KV.PUT")
            .arg(format!("p{i}"))
            .arg("x".repeat(100))
            .arg("PIN")
            .query::<()>(&mut c)
        {
            oom = Some(e);
            break;
        }
    }
    assert_eq!(oom.expect("the tier filled up").code(), Some("OOM"));
    let pong: String = cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG", "the connection carries on after errors");
}

#[test]
fn resp3_client() {
    let s = Server::start(&[]);
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{}/?protocol=resp3", s.port)).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: () = cmd("KV.PUT").arg("a").arg("1").query(&mut c).unwrap();
    let v: Value = cmd("KV.MATCH")
        .arg(1)
        .arg("a")
        .arg("WITHTIERS")
        .query(&mut c)
        .unwrap();
    assert!(matches!(v, Value::Map(_)), "{v:?}");
    let stats: Value = cmd("KV.STATS").query(&mut c).unwrap();
    match stats {
        Value::Map(fields) => {
            let ratio = fields
                .iter()
                .find(|(k, _)| matches!(k, Value::BulkString(b) if b == b"prefix_hit_ratio"));
            assert!(
                matches!(ratio, Some((_, Value::Double(r))) if *r == 1.0),
                "{ratio:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let missing: Value = cmd("GET").arg("nope").query(&mut c).unwrap();
    assert_eq!(missing, Value::Nil);
}

#[test]
fn large_values_round_trip_pipelined() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    // Sizes around the buffer thresholds: copied, own-buffer, and past the
    // up-front limit (read by doubling).
    let sizes = [
        100usize,
        64 * 1024 - 1,
        64 * 1024 + 7,
        1 << 20,
        3 << 20,
        20 << 20,
    ];
    let values: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| (0..*n).map(|j| (j * 31 + i) as u8).collect())
        .collect();
    let mut pipe = redis::pipe();
    for (i, v) in values.iter().enumerate() {
        pipe.cmd("SET").arg(format!("v{i}")).arg(v).ignore();
        pipe.cmd("KV.PUT").arg(format!("b{i}")).arg(v).ignore();
        pipe.cmd("PING").ignore();
    }
    let () = pipe.query(&mut c).unwrap();
    for (i, v) in values.iter().enumerate() {
        let got: Vec<u8> = cmd("GET").arg(format!("v{i}")).query(&mut c).unwrap();
        assert!(got == *v, "value {i} of {} bytes differs", v.len());
        let got: Vec<u8> = cmd("KV.GET").arg(format!("b{i}")).query(&mut c).unwrap();
        assert!(got == *v, "block {i} of {} bytes differs", v.len());
    }
    let total: u64 = sizes.iter().map(|n| 2 * *n as u64).sum();
    let used = s.info_u64("dram_used");
    assert!(
        used >= total && used < total + 64 * 1024,
        "accounted {used} for {total}"
    );
}
