//! The data plane through the real server: KV.RESERVE / KV.COMMIT /
//! KV.ABORT / KV.LOCATE with bytes moved over the TCP data port and the
//! shared-memory arena, by the transport crate and by tidepool-client.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::Value;
use tidepool_client::{ClientOptions, PlaneChoice};
use tidepool_tests::{dataplane, rt, Server};
use tidepool_transport::shm::ShmPlane;
use tidepool_transport::tcp::{TcpOptions, TcpPlane};
use tidepool_transport::{DataPlane, Descriptor, Kind};

fn block(seed: usize, len: usize) -> Bytes {
    (0..len)
        .map(|j| (seed.wrapping_mul(131) ^ j.wrapping_mul(7)) as u8)
        .collect::<Vec<_>>()
        .into()
}

fn addr(s: &Server) -> String {
    format!("127.0.0.1:{}", s.port)
}

/// KV.LOCATE of one block for a shm reader: its descriptor.
fn locate_shm(con: &mut redis::Connection, key: &str) -> Descriptor {
    let loc: Vec<Value> = redis::cmd("KV.LOCATE")
        .arg(1)
        .arg(key)
        .arg("VIA")
        .arg("shm")
        .query(con)
        .unwrap();
    let Value::Array(blocks) = &loc[3] else {
        panic!("{loc:?}")
    };
    desc(&blocks[0])
}

/// The descriptor in a KV.RESERVE or KV.LOCATE reply entry.
fn desc(v: &Value) -> Descriptor {
    let Value::Array(items) = v else {
        panic!("not a descriptor: {v:?}")
    };
    let kind = match &items[0] {
        Value::BulkString(b) => std::str::from_utf8(b).unwrap().parse::<Kind>().unwrap(),
        other => panic!("{other:?}"),
    };
    let int = |x: &Value| match x {
        Value::Int(i) => *i as u64,
        other => panic!("{other:?}"),
    };
    Descriptor {
        kind,
        offset: int(&items[1]),
        len: int(&items[2]),
        token: int(&items[3]),
    }
}

/// tidepool-client connected to `s`, moving blocks over `plane`.
async fn client_via(
    s: &Server,
    plane: PlaneChoice,
) -> Result<tidepool_client::Client, tidepool_client::ClientError> {
    tidepool_client::Client::connect_with(
        &addr(s),
        ClientOptions {
            plane,
            ..ClientOptions::default()
        },
    )
    .await
}

/// Puts `blocks` (not chained) and checks that every one was stored.
async fn put_all(c: &tidepool_client::Client, blocks: &[(Bytes, Bytes)]) {
    let put = c.put_many(blocks, false, None).await.unwrap();
    assert!(put.iter().all(|r| r.is_ok()), "{put:?}");
}

fn exists(con: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("EXISTS").arg(key).query(con).unwrap()
}

#[test]
fn tcp_reservations_are_invisible_until_committed() {
    let s = Server::start(&[]);
    let mut con = s.redis();
    let (port, _, _) = dataplane(&mut con);
    let data = block(1, 3 << 20);
    let reply: Vec<Value> = redis::cmd("KV.RESERVE")
        .arg("blk")
        .arg(data.len())
        .query(&mut con)
        .unwrap();
    let d = desc(&reply[0]);
    assert_eq!((d.kind, d.len), (Kind::Tcp, data.len() as u64));
    let rt = rt();
    let plane = rt
        .block_on(TcpPlane::connect(
            format!("127.0.0.1:{port}").parse().unwrap(),
            TcpOptions {
                connections: 3,
                stripe: 1 << 20,
            },
        ))
        .unwrap();
    // Half the block: not committable, not visible.
    rt.block_on(async {
        let half = Descriptor { len: 1 << 20, ..d };
        // Write only the first MiB by pretending the block is that long:
        // the server accepts the range and counts it.
        plane.write(&[(half, &data[..1 << 20])]).await.unwrap();
    });
    let err = redis::cmd("KV.COMMIT")
        .arg(d.token)
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("INCOMPLETE"), "{err}");
    assert!(
        err.to_string().contains("1048576 of 3145728 bytes written"),
        "{err}"
    );
    assert_eq!(exists(&mut con, "blk"), 0);
    let m: i64 = redis::cmd("KV.MATCH")
        .arg(1)
        .arg("blk")
        .query(&mut con)
        .unwrap();
    assert_eq!(m, 0);
    // Writing the same range again is refused.
    let e = rt
        .block_on(plane.write(&[(Descriptor { len: 1 << 20, ..d }, &data[..1 << 20])]))
        .unwrap_err();
    assert!(e.to_string().contains("already written"), "{e}");
    // The rest, as two raw pieces at their offsets, then commit.
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        for (off, len) in [(1usize << 20, 1usize << 20), (2 << 20, 1 << 20)] {
            let h = tidepool_transport::frame::Request {
                op: tidepool_transport::frame::Op::Write,
                token: d.token,
                offset: off as u64,
                len: len as u64,
            };
            raw.write_all(&h.encode()).await.unwrap();
            raw.write_all(&data[off..off + len]).await.unwrap();
            let mut rb = [0u8; 16];
            raw.read_exact(&mut rb).await.unwrap();
            let r = tidepool_transport::frame::Reply::decode(&rb).unwrap();
            assert_eq!(r.status, tidepool_transport::frame::Status::Ok);
        }
    });
    let ok: String = redis::cmd("KV.COMMIT")
        .arg(d.token)
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, "OK");
    let got: Vec<u8> = redis::cmd("GET").arg("blk").query(&mut con).unwrap();
    assert_eq!(got, data);
    // A token commits once.
    let err = redis::cmd("KV.COMMIT")
        .arg(d.token)
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("NORESERVATION"));
    // Reserving a stored key answers EXISTS.
    let reply: Vec<Value> = redis::cmd("KV.RESERVE")
        .arg("blk")
        .arg(10)
        .query(&mut con)
        .unwrap();
    assert_eq!(reply[0], Value::SimpleString("EXISTS".into()));
}

#[test]
fn abort_timeout_and_disconnect_drop_reservations() {
    // Long enough that the checks before the expiry never race it on a
    // loaded machine.
    let s = Server::start(&["--reserve-timeout", "2000"]);
    let mut con = s.redis();
    let reply: Vec<Value> = redis::cmd("KV.RESERVE")
        .arg("a")
        .arg(100)
        .arg("b")
        .arg(100)
        .query(&mut con)
        .unwrap();
    let (ta, tb) = (desc(&reply[0]).token, desc(&reply[1]).token);
    // Another connection can neither abort nor commit them (a stray or
    // stale token must not publish bytes still being written).
    let mut stranger = s.redis();
    let n: i64 = redis::cmd("KV.ABORT")
        .arg(ta)
        .arg(tb)
        .query(&mut stranger)
        .unwrap();
    assert_eq!(n, 0);
    let err = redis::cmd("KV.COMMIT")
        .arg(ta)
        .query::<Value>(&mut stranger)
        .unwrap_err();
    assert_eq!(err.code(), Some("NORESERVATION"), "{err}");
    assert_eq!(s.info_u64("data_reservations_open"), 2);
    let n: i64 = redis::cmd("KV.ABORT")
        .arg(ta)
        .arg(ta)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(s.info_u64("data_reservations_open"), 1);
    // b times out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.info_u64("data_reservations_open") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.info_u64("data_expired"), 1);
    let err = redis::cmd("KV.COMMIT")
        .arg(tb)
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("NORESERVATION"));

    // A client that vanishes mid-transfer leaves nothing behind.
    let s = Server::start(&[]);
    let mut other = s.redis();
    let (port, _, _) = dataplane(&mut other);
    {
        let mut con = s.redis();
        let reply: Vec<Value> = redis::cmd("KV.RESERVE")
            .arg("gone")
            .arg(1 << 20)
            .query(&mut con)
            .unwrap();
        let d = desc(&reply[0]);
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        use std::io::Write;
        let h = tidepool_transport::frame::Request {
            op: tidepool_transport::frame::Op::Write,
            token: d.token,
            offset: 0,
            len: 1 << 20,
        };
        raw.write_all(&h.encode()).unwrap();
        raw.write_all(&vec![7u8; 100_000]).unwrap();
        assert_eq!(s.info_u64("data_reservations_open"), 1);
        // Both connections drop here.
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.info_u64("data_reservations_open") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.info_u64("data_reservations_open"), 0);
    assert_eq!(exists(&mut other, "gone"), 0);
    assert_eq!(s.info_u64("data_committed"), 0);
}

#[test]
fn shm_puts_and_located_blocks_survive_deletion_until_released() {
    let s = Server::start(&["--dram", "64MiB"]);
    let mut con = s.redis();
    let (_, sock, id) = dataplane(&mut con);
    assert!(!sock.is_empty(), "shm is on by default");
    let plane = ShmPlane::connect(sock.as_ref(), id).unwrap();
    // Another id: refused.
    assert!(ShmPlane::connect(sock.as_ref(), id ^ 1).is_err());
    let data = block(9, 1 << 20);
    let reply: Vec<Value> = redis::cmd("KV.RESERVE")
        .arg(1)
        .arg("s1")
        .arg(data.len())
        .arg("VIA")
        .arg("shm")
        .query(&mut con)
        .unwrap();
    let d = desc(&reply[0]);
    assert_eq!(d.kind, Kind::Shm);
    assert_eq!(d.offset % 4096, 0);
    plane.write_one(&d, &data).unwrap();
    assert_eq!(exists(&mut con, "s1"), 0, "invisible before commit");
    let _: String = redis::cmd("KV.COMMIT")
        .arg(d.token)
        .query(&mut con)
        .unwrap();
    let got: Vec<u8> = redis::cmd("GET").arg("s1").query(&mut con).unwrap();
    assert_eq!(got, data, "the committed arena block is the stored value");

    // Locate it, then delete it and fill the arena: the located bytes stay.
    let loc: Vec<Value> = redis::cmd("KV.LOCATE")
        .arg(2)
        .arg("s1")
        .arg("missing")
        .arg("LEASE")
        .arg(60_000)
        .arg("VIA")
        .arg("shm")
        .query(&mut con)
        .unwrap();
    let Value::Int(lease) = loc[1] else {
        panic!("{loc:?}")
    };
    let Value::Array(blocks) = &loc[3] else {
        panic!("{loc:?}")
    };
    assert_eq!(blocks[1], Value::Nil);
    let ld = desc(&blocks[0]);
    assert_eq!(
        ld.offset, d.offset,
        "a block already in the arena is not copied"
    );
    let n: i64 = redis::cmd("DEL").arg("s1").query(&mut con).unwrap();
    assert_eq!(n, 1);
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg(format!("fill{i}"))
            .arg(vec![0xAAu8; 1 << 20])
            .query(&mut con)
            .unwrap();
    }
    let reply: Vec<Value> = redis::cmd("KV.RESERVE")
        .arg(1)
        .arg("s2")
        .arg(data.len())
        .arg("VIA")
        .arg("shm")
        .query(&mut con)
        .unwrap();
    let d2 = desc(&reply[0]);
    assert_ne!(d2.offset, ld.offset, "held memory is not handed out again");
    plane.write_one(&d2, &vec![0x55; data.len()]).unwrap();
    let mut back = vec![0u8; data.len()];
    plane.read_one(&ld, &mut back).unwrap();
    assert_eq!(back, data);
    let used_before = s.info_u64("data_arena_used");
    let r: i64 = redis::cmd("KV.RELEASE").arg(lease).query(&mut con).unwrap();
    assert_eq!(r, 1);
    assert_eq!(s.info_u64("data_arena_used"), used_before - (1 << 20));

    // A block stored inline (outside the arena) is copied in for shm readers.
    let _: () = redis::cmd("SET")
        .arg("inline")
        .arg(&data[..5000])
        .query(&mut con)
        .unwrap();
    let ld = locate_shm(&mut con, "inline");
    let mut back = vec![0u8; 5000];
    plane.read_one(&ld, &mut back).unwrap();
    assert_eq!(&back[..], &data[..5000]);
    assert_eq!(s.info_u64("data_located_copies"), 1);

    // Large values stored inline (copied out of the request) are placed in
    // the arena: shm readers get them without a copy.
    let big = &data[..256 * 1024];
    let _: Value = redis::cmd("KV.MPUT")
        .arg(2)
        .arg("big0")
        .arg(big)
        .arg("big1")
        .arg(big)
        .query(&mut con)
        .unwrap();
    let ld = locate_shm(&mut con, "big1");
    let mut back = vec![0u8; big.len()];
    plane.read_one(&ld, &mut back).unwrap();
    assert_eq!(&back[..], big);
    assert_eq!(s.info_u64("data_located_copies"), 1, "no copy-in");
}

#[test]
fn the_client_moves_blocks_over_each_plane() {
    let s = Server::start(&["--dram", "256MiB"]);
    let rt = rt();
    rt.block_on(async {
        for (choice, want) in [
            (PlaneChoice::Auto, Some("shm")),
            (PlaneChoice::Shm, Some("shm")),
            (PlaneChoice::Tcp, Some("tcp")),
            (PlaneChoice::Inline, None),
        ] {
            let c = client_via(&s, choice).await.unwrap();
            assert_eq!(c.data_plane(), want, "{choice:?}");
            let tag = format!("{choice:?}");
            let sizes = [64 << 10, 1 << 20, (4 << 20) + 123];
            let keys: Vec<Bytes> = (0..sizes.len())
                .map(|i| Bytes::from(format!("{tag}-{i}")))
                .collect();
            let blocks: Vec<(Bytes, Bytes)> = keys
                .iter()
                .zip(sizes)
                .enumerate()
                .map(|(i, (k, n))| (k.clone(), block(i + 7, n)))
                .collect();
            c.put_chain(&blocks, None).await.unwrap();
            assert_eq!(c.match_prefix(&keys, None).await.unwrap().matched, 3);
            // Read back into caller buffers (one spare key that misses).
            let mut all = keys.clone();
            all.push(Bytes::from(format!("{tag}-none")));
            let mut storage: Vec<Vec<u8>> = vec![vec![0u8; 5 << 20]; 4];
            let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
            let got = c.get_many_into(&all, &mut bufs).await.unwrap();
            assert_eq!(
                got,
                [Some(sizes[0]), Some(sizes[1]), Some(sizes[2]), None],
                "{tag}"
            );
            for (i, (_, v)) in blocks.iter().enumerate() {
                assert_eq!(&storage[i][..v.len()], &v[..], "{tag} block {i}");
            }
            // And through RESP, the same bytes.
            for (k, v) in &blocks {
                assert_eq!(c.get(k.clone()).await.unwrap().as_ref(), Some(v));
            }
            // Putting again leaves stored blocks as they are.
            let again = c.put_many(&blocks, true, None).await.unwrap();
            assert!(again.iter().all(|r| r.is_ok()));
        }
        // A chain whose parent is missing is refused per block.
        let c = client_via(&s, PlaneChoice::Tcp).await.unwrap();
        let orphan = [(Bytes::from("orphan"), block(1, 70_000))];
        let r = c
            .put_many(&orphan, true, Some(Bytes::from("no-such-parent")))
            .await
            .unwrap();
        assert_eq!(r[0].as_ref().unwrap_err().code(), Some("NOPARENT"));
        // RDMA is not there: a clear error.
        let e = client_via(&s, PlaneChoice::Rdma).await.unwrap_err();
        assert!(e.to_string().contains("rdma"), "{e}");
    });
    let mut con = s.redis();
    let err = redis::cmd("KV.RESERVE")
        .arg(1)
        .arg("r")
        .arg(10)
        .arg("VIA")
        .arg("rdma")
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("NOTRANSPORT"));
}

/// Over shm the client copies on its copying threads (several groups of
/// blocks at once) or, with none, on the put's task: either way every block
/// lands whole, and the checksums it hands over with KV.COMMIT are its
/// own, in order (the server, started without DRAM checksums, hashes
/// nothing itself: each "ok" of KV.VERIFY is a client checksum that
/// matches the stored bytes). Puts of several tasks at once share the
/// copying threads.
#[test]
fn shm_puts_copied_on_threads_or_inline_land_with_their_own_checksums() {
    let s = Server::start(&["--dram", "256MiB", "--dram-checksums", "false"]);
    let rt = rt();
    for threads in [0, 1, 3] {
        let tag = format!("copy{threads}");
        let blocks: Vec<(Bytes, Bytes)> = rt.block_on(async {
            let c = tidepool_client::Client::connect_with(
                &addr(&s),
                ClientOptions {
                    plane: PlaneChoice::Shm,
                    shm_copy_threads: threads,
                    inline_below: 0,
                    ..ClientOptions::default()
                },
            )
            .await
            .unwrap();
            // About 20 MiB: five groups, blocks of many sizes.
            let sizes = [100, 4097, 65_536, 300_001, 1 << 20, (2 << 20) + 5];
            let blocks: Vec<(Bytes, Bytes)> = (0..36)
                .map(|i| {
                    let len = sizes[i % sizes.len()];
                    (Bytes::from(format!("{tag}-{i}")), block(i + threads, len))
                })
                .collect();
            let put = c.put_many(&blocks, true, None).await.unwrap();
            assert!(put.iter().all(|r| r.is_ok()), "{tag}: {put:?}");
            blocks
        });
        let mut args = vec!["KV.VERIFY".to_string()];
        args.extend(
            blocks
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned()),
        );
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        assert_eq!(s.cli_text(&args), "ok\n".repeat(blocks.len()), "{tag}");
        let mut con = s.redis();
        for (k, v) in &blocks {
            let got: Vec<u8> = redis::cmd("GET").arg(&k[..]).query(&mut con).unwrap();
            assert!(got == v[..], "{tag}: {k:?}");
        }
    }
    // Puts of several tasks at once share one client's copying threads.
    let keys: Vec<Vec<(Bytes, Bytes)>> = rt.block_on(async {
        let c = client_via(&s, PlaneChoice::Shm).await.unwrap();
        let put = |t: usize| {
            let c = &c;
            async move {
                let blocks: Vec<(Bytes, Bytes)> = (0..24)
                    .map(|i| {
                        let key = Bytes::from(format!("task{t}-{i}"));
                        (key, block(100 * t + i, 300_000 + 4096 * i))
                    })
                    .collect();
                let put = c.put_many(&blocks, false, None).await.unwrap();
                assert!(put.iter().all(|r| r.is_ok()), "task {t}");
                blocks
            }
        };
        let (a, b, c, d) = tokio::join!(put(0), put(1), put(2), put(3));
        vec![a, b, c, d]
    });
    let mut args = vec!["KV.VERIFY".to_string()];
    args.extend(
        keys.iter()
            .flatten()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned()),
    );
    let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    assert_eq!(s.cli_text(&args), "ok\n".repeat(args.len() - 1));
    let mut con = s.redis();
    for (k, v) in keys.iter().flatten() {
        let got: Vec<u8> = redis::cmd("GET").arg(&k[..]).query(&mut con).unwrap();
        assert!(got == v[..], "{k:?}");
    }
}

#[test]
fn reservations_in_flight_are_bounded_by_the_dram_capacity() {
    use std::io::Write;
    use tidepool_tests::{read_until, resp};
    let s = Server::start(&["--dram", "8MiB"]);
    let three = (3u64 << 20).to_string();
    {
        let mut raw = s.raw();
        // 3 x 3 MiB fits 8 MiB only twice: the third is refused, not allocated.
        raw.write_all(&resp(&[
            b"KV.RESERVE",
            b"a",
            three.as_bytes(),
            b"b",
            three.as_bytes(),
            b"c",
            three.as_bytes(),
        ]))
        .unwrap();
        let (got, _) = read_until(&mut raw, |b| {
            b.windows(2).filter(|w| w == b"\r\n").count() >= 12
        });
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("*3\r\n*4\r\n"), "{text}");
        assert!(text.contains("-OOM "), "{text}");
        assert_eq!(s.info_u64("data_reserved_bytes"), 6 << 20);
        // A storm of reservations past the capacity is refused, not allocated.
        for _ in 0..100 {
            raw.write_all(&resp(&[b"KV.RESERVE", b"big", three.as_bytes()]))
                .unwrap();
            let (got, _) = read_until(&mut raw, |b| b.ends_with(b"\r\n") && b.len() > 6);
            assert!(
                got.starts_with(b"*1\r\n-OOM "),
                "{}",
                String::from_utf8_lossy(&got)
            );
        }
        assert_eq!(s.info_u64("data_reserved_bytes"), 6 << 20);
        // One block larger than the tier: TOOBIG.
        let huge = (500u64 << 20).to_string();
        raw.write_all(&resp(&[b"KV.RESERVE", b"big", huge.as_bytes()]))
            .unwrap();
        let (got, _) = read_until(&mut raw, |b| b.ends_with(b"\r\n") && b.len() > 6);
        assert!(
            got.starts_with(b"*1\r\n-TOOBIG "),
            "{}",
            String::from_utf8_lossy(&got)
        );
        // The connection goes, and its reservations with it.
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.info_u64("data_reserved_bytes") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.info_u64("data_reserved_bytes"), 0);
    // A storm of tiny reservations is bounded too: each counts its key and
    // a kilobyte of bookkeeping with its one byte, so 8 MiB take about
    // 8,000 of them, not 20,000 (nor millions).
    let keys: Vec<String> = (0..20_000).map(|i| format!("tiny{i:05}")).collect();
    let mut args: Vec<&[u8]> = vec![b"KV.RESERVE"];
    for k in &keys {
        args.push(k.as_bytes());
        args.push(b"1");
    }
    let mut raw = s.raw();
    raw.write_all(&resp(&args)).unwrap();
    let count = |b: &[u8], what: &[u8]| b.windows(what.len()).filter(|w| *w == what).count();
    let (got, _) = read_until(&mut raw, |b| {
        b.ends_with(b"\r\n") && count(b, b"$3\r\ntcp\r\n") + count(b, b"\r\n-OOM ") >= 20_000
    });
    let granted = count(&got, b"$3\r\ntcp\r\n");
    let refused = count(&got, b"\r\n-OOM ");
    assert_eq!(granted + refused, 20_000);
    assert!((7_000..8_200).contains(&granted), "{granted} granted");
    assert_eq!(s.info_u64("data_reservations_open"), granted as u64);
}

#[test]
fn shm_off_falls_back_to_tcp() {
    let s = Server::start(&["--shm", "false"]);
    let mut con = s.redis();
    let (port, sock, _) = dataplane(&mut con);
    assert!(port > 0);
    assert!(sock.is_empty());
    let err = redis::cmd("KV.RESERVE")
        .arg(1)
        .arg("k")
        .arg(10)
        .arg("VIA")
        .arg("shm")
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("NOTRANSPORT"));
    let rt = rt();
    rt.block_on(async {
        let c = tidepool_client::Client::connect(&addr(&s), 2)
            .await
            .unwrap();
        assert_eq!(c.data_plane(), Some("tcp"));
        let b = [(Bytes::from("k"), block(3, 100_000))];
        c.put_chain(&b, None).await.unwrap();
        assert_eq!(c.get(Bytes::from("k")).await.unwrap().unwrap(), b[0].1);
    });
}

/// KV.RESERVE of one block `VIA` a plane: its descriptor.
fn reserve_via(con: &mut redis::Connection, key: &str, len: usize, via: &str) -> Descriptor {
    let reply: Vec<Value> = redis::cmd("KV.RESERVE")
        .arg(1)
        .arg(key)
        .arg(len)
        .arg("VIA")
        .arg(via)
        .query(con)
        .unwrap();
    desc(&reply[0])
}

/// The tcp data plane to the data port `port`, with default options.
fn tcp_plane(rt: &tokio::runtime::Runtime, port: u16) -> TcpPlane {
    rt.block_on(TcpPlane::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        TcpOptions::default(),
    ))
    .unwrap()
}

fn commit(con: &mut redis::Connection, d: &Descriptor) {
    let _: String = redis::cmd("KV.COMMIT").arg(d.token).query(con).unwrap();
}

#[test]
fn kv_verify_catches_a_stray_shm_write_and_says_what_it_cannot_check() {
    for checksums in [true, false] {
        let flag = checksums.to_string();
        let s = Server::start(&["--dram", "64MiB", "--dram-checksums", &flag]);
        let mut con = s.redis();
        let (port, sock, id) = dataplane(&mut con);
        let shm = ShmPlane::connect(sock.as_ref(), id).unwrap();
        let data = block(3, 256 << 10);
        let d = reserve_via(&mut con, "viashm", data.len(), "shm");
        shm.write_one(&d, &data).unwrap();
        commit(&mut con, &d);
        let dt = reserve_via(&mut con, "viatcp", data.len(), "tcp");
        let rt = rt();
        let tcp = tcp_plane(&rt, port);
        rt.block_on(tcp.write(&[(dt, &data[..])])).unwrap();
        commit(&mut con, &dt);
        let _: () = redis::cmd("SET")
            .arg("inline")
            .arg(&data[..])
            .query(&mut con)
            .unwrap();
        // Through redis-cli: a nil is an empty line.
        let verify = |keys: &[&str]| {
            let mut args = vec!["KV.VERIFY"];
            args.extend(keys);
            s.cli_text(&args)
        };
        let want = if checksums {
            "ok\nok\nok\n\n"
        } else {
            // Nothing was hashed: not the tcp block as it arrived either.
            "unchecked\nunchecked\nunchecked\n\n"
        };
        assert_eq!(
            verify(&["viashm", "viatcp", "inline", "missing"]),
            want,
            "--dram-checksums {checksums}"
        );
        // A client scribbles over the committed block through its mapping.
        shm.write_one(&d, &vec![0u8; data.len()]).unwrap();
        if checksums {
            assert_eq!(verify(&["viashm"]), "corrupt\n");
            assert_eq!(exists(&mut con, "viashm"), 0, "dropped, never served");
        } else {
            assert_eq!(verify(&["viashm"]), "unchecked\n");
            assert_eq!(exists(&mut con, "viashm"), 1);
        }
        let tcp_want = if checksums { "ok\n" } else { "unchecked\n" };
        assert_eq!(verify(&["viatcp"]), tcp_want);
    }
}

/// KV.COMMIT of one token with a checksum.
fn commit_summed(
    con: &mut redis::Connection,
    d: &Descriptor,
    sum: u64,
) -> redis::RedisResult<String> {
    redis::cmd("KV.COMMIT")
        .arg(d.token)
        .arg("CHECKSUMS")
        .arg(sum.to_string())
        .query(con)
}

#[test]
fn commit_checksums_are_checked_over_tcp_and_kept_from_shm_clients() {
    // The server hashes no DRAM block of its own accord: every "ok" below
    // is a checksum the client gave (or, over tcp, one checked against it).
    let s = Server::start(&["--dram", "64MiB", "--dram-checksums", "false"]);
    let mut con = s.redis();
    let (port, sock, id) = dataplane(&mut con);
    let data = block(5, 300 << 10);
    let sum = xxhash_rust::xxh3::xxh3_64(&data);
    let verify = |key: &str| s.cli_text(&["KV.VERIFY", key]);
    let rt = rt();
    let tcp = tcp_plane(&rt, port);

    // Over tcp, bytes that do not match the client's checksum are refused
    // and the reservation dropped (the server, which hashed nothing as the
    // bytes arrived, hashes them at the commit).
    let d = reserve_via(&mut con, "bad", data.len(), "tcp");
    rt.block_on(tcp.write(&[(d, &data[..])])).unwrap();
    let err = commit_summed(&mut con, &d, sum ^ 1).unwrap_err();
    assert_eq!(err.code(), Some("CORRUPT"), "{err}");
    assert_eq!(exists(&mut con, "bad"), 0);
    let err = commit_summed(&mut con, &d, sum).unwrap_err();
    assert_eq!(err.code(), Some("NORESERVATION"), "{err}");
    assert_eq!(s.info_u64("data_corrupt"), 1);
    // The right checksum commits.
    let d = reserve_via(&mut con, "good", data.len(), "tcp");
    rt.block_on(tcp.write(&[(d, &data[..])])).unwrap();
    assert_eq!(commit_summed(&mut con, &d, sum).unwrap(), "OK");
    assert_eq!(verify("good"), "ok\n");

    // As many checksums as tokens, or nothing is committed.
    let d1 = reserve_via(&mut con, "one", data.len(), "shm");
    let d2 = reserve_via(&mut con, "two", data.len(), "shm");
    let shm = ShmPlane::connect(sock.as_ref(), id).unwrap();
    let s1 = shm.write_one_checksummed(&d1, &data).unwrap();
    let s2 = shm.write_one_checksummed(&d2, &data).unwrap();
    assert_eq!((s1, s2), (sum, sum));
    let err = redis::cmd("KV.COMMIT")
        .arg(d1.token)
        .arg(d2.token)
        .arg("CHECKSUMS")
        .arg(s1.to_string())
        .query::<Value>(&mut con)
        .unwrap_err();
    assert!(
        err.to_string().contains("1 checksums for 2 tokens"),
        "{err}"
    );
    assert_eq!(exists(&mut con, "one"), 0);
    // Over shm the client's checksum is kept as given.
    let ok: Vec<String> = redis::cmd("KV.COMMIT")
        .arg(d1.token)
        .arg(d2.token)
        .arg("CHECKSUMS")
        .arg(s1.to_string())
        .arg((s2 ^ 1).to_string())
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, ["OK", "OK"]);
    assert_eq!(verify("one"), "ok\n");
    // A wrong one makes the block corrupt: dropped when checked.
    assert_eq!(verify("two"), "corrupt\n");
    assert_eq!(exists(&mut con, "two"), 0);
    // So does a stray write after the commit.
    shm.write_one(&d1, &vec![0u8; data.len()]).unwrap();
    assert_eq!(verify("one"), "corrupt\n");

    // tidepool-client over shm sends the checksums its copy computed.
    rt.block_on(async {
        let c = client_via(&s, PlaneChoice::Shm).await.unwrap();
        assert_eq!(c.data_plane(), Some("shm"));
        let blocks: Vec<(Bytes, Bytes)> = (0..6)
            .map(|i| (Bytes::from(format!("c{i}")), block(i, (200 << 10) + i * 77)))
            .collect();
        for r in c.put_many(&blocks, false, None).await.unwrap() {
            r.unwrap();
        }
    });
    for i in 0..6 {
        assert_eq!(verify(&format!("c{i}")), "ok\n", "c{i}");
    }
}

/// Waits (up to 10 s) until the server holds no lease.
fn wait_no_leases(s: &Server, what: &str) {
    wait_zero(s, "kv_leases", Duration::from_secs(10), what);
}

/// Waits (up to `within`) until the INFO field `field` reads 0.
fn wait_zero(s: &Server, field: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while s.info_u64(field) != 0 {
        assert!(Instant::now() < deadline, "{what}: {field} never went to 0");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `ECHO <tag><i>` `times` times: each pooled connection in turn must
/// answer with its command's own reply (none left out of step).
async fn echoes_answer_in_step(c: &tidepool_client::Client, tag: &str, times: usize) {
    for i in 0..times {
        let word = format!("{tag}{i}");
        let echo = c
            .command(vec![Bytes::from("ECHO"), Bytes::from(word.clone())])
            .await
            .unwrap();
        assert_eq!(
            echo,
            tidepool_client::Frame::BulkString(word.into()),
            "{tag}"
        );
    }
}

#[test]
fn a_get_in_many_groups_gives_every_lease_back_even_when_it_fails() {
    let s = Server::start(&["--dram", "256MiB"]);
    let rt = rt();
    rt.block_on(async {
        for choice in [PlaneChoice::Shm, PlaneChoice::Tcp] {
            let c = client_via(&s, choice).await.unwrap();
            // 150 blocks of 64 KiB (over shm a get moves them in groups of
            // 64 keys), every fifth one missing.
            let (len, n) = (64 << 10, 150);
            let keys: Vec<Bytes> = (0..n)
                .map(|i| Bytes::from(format!("{choice:?}-{i}")))
                .collect();
            let stored: Vec<(Bytes, Bytes)> = (0..n)
                .filter(|i| i % 5 != 0)
                .map(|i| (keys[i].clone(), block(i, len)))
                .collect();
            put_all(&c, &stored).await;
            let mut storage = vec![vec![0u8; len]; n];
            let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
            let got = c.get_many_into(&keys, &mut bufs).await.unwrap();
            for (i, g) in got.iter().enumerate() {
                assert_eq!(*g, (i % 5 != 0).then_some(len), "{choice:?} {i}");
                if i % 5 != 0 {
                    assert_eq!(&storage[i][..], &block(i, len)[..], "{choice:?} {i}");
                }
            }
            // The last lease goes back (over tcp without the get waiting for
            // the reply).
            wait_no_leases(&s, "every group's lease given back");
            // Each pooled connection that gave one back answers its next
            // command with that command's own reply.
            for _ in 0..8 {
                echoes_answer_in_step(&c, "e", 1).await;
                let mut one = [vec![0u8; len]];
                let mut bufs: Vec<&mut [u8]> = one.iter_mut().map(|v| &mut v[..]).collect();
                let got = c.get_many_into(&keys[1..2], &mut bufs).await.unwrap();
                assert_eq!(got, [Some(len)]);
            }
            wait_no_leases(&s, "leases after single gets");
            // A buffer too small in a middle group: an error, and still no
            // lease kept.
            storage[101] = vec![0u8; 100];
            let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
            let e = c.get_many_into(&keys, &mut bufs).await.unwrap_err();
            assert!(e.to_string().contains("its buffer 100"), "{e}");
            wait_no_leases(&s, &format!("{choice:?}: leases after a failure"));
            // The client goes on working.
            storage[101] = vec![0u8; len];
            let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
            assert_eq!(c.get_many_into(&keys, &mut bufs).await.unwrap(), got);
        }
    });
}

/// `KV.RELEASE` answers 1 only for a lease still in force: one past its time
/// answers 0 even before the server's sweep (every 100 ms) drops it. And a
/// get that copied blocks out of the arena under a lease that had run out
/// fails with `LeaseExpired` (the server may have reused that memory
/// meanwhile), where over tcp, which the server sends while it holds the
/// bytes, the same lease is no error.
#[test]
fn a_lease_that_ran_out_during_a_shm_copy_fails_the_get() {
    let s = Server::start(&["--dram", "512MiB"]);
    let mut con = s.redis();
    let release = |con: &mut redis::Connection, lease: i64| -> i64 {
        redis::cmd("KV.RELEASE").arg(lease).query(con).unwrap()
    };
    // The value after "lease" in a map reply (RESP2: a flat array).
    let lease_of = |v: &[Value]| {
        let at = v
            .iter()
            .position(|x| matches!(x, Value::BulkString(k) if k == b"lease"))
            .unwrap_or_else(|| panic!("no lease in {v:?}"));
        match &v[at + 1] {
            Value::Int(l) => *l,
            other => panic!("{other:?}"),
        }
    };
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut con)
        .unwrap();
    for ms in [1, 60_000] {
        let mut leased = |command: &str| -> Vec<Value> {
            redis::cmd(command)
                .arg(1)
                .arg("k")
                .arg("LEASE")
                .arg(ms)
                .query(&mut con)
                .unwrap()
        };
        let (loc, matched) = (leased("KV.LOCATE"), leased("KV.MATCH"));
        std::thread::sleep(Duration::from_millis(5));
        let want = i64::from(ms > 1);
        assert_eq!(
            release(&mut con, lease_of(&loc)),
            want,
            "KV.LOCATE LEASE {ms}"
        );
        assert_eq!(
            release(&mut con, lease_of(&matched)),
            want,
            "KV.MATCH LEASE {ms}"
        );
    }
    let rt = rt();
    rt.block_on(async {
        // One group of 64 blocks of 1 MiB: its copy takes well over the
        // 1 ms lease.
        let (len, n) = (1 << 20, 64);
        let blocks: Vec<(Bytes, Bytes)> = (0..n)
            .map(|i| (Bytes::from(format!("lapse-{i}")), block(i, len)))
            .collect();
        let keys: Vec<Bytes> = blocks.iter().map(|(k, _)| k.clone()).collect();
        let c = client_via(&s, PlaneChoice::Shm).await.unwrap();
        put_all(&c, &blocks).await;
        let mut storage = vec![vec![0u8; len]; n];
        for (plane, ms) in [
            (PlaneChoice::Shm, 1),
            (PlaneChoice::Shm, 30_000),
            (PlaneChoice::Tcp, 1),
        ] {
            let c = tidepool_client::Client::connect_with(
                &addr(&s),
                ClientOptions {
                    plane,
                    read_lease_ms: ms,
                    ..ClientOptions::default()
                },
            )
            .await
            .unwrap();
            // Each arm checks bytes its own get wrote, not an earlier one's.
            storage.iter_mut().for_each(|v| v.fill(0));
            let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
            let got = c.get_many_into(&keys, &mut bufs).await;
            match (plane, ms) {
                (PlaneChoice::Shm, 1) => {
                    let e = got.unwrap_err();
                    assert!(
                        matches!(e, tidepool_client::ClientError::LeaseExpired(_)),
                        "{e}"
                    );
                    assert!(e.to_string().contains("blocks 0..64"), "{e}");
                }
                // Over tcp a lapsed lease is never `LeaseExpired`: the get
                // lands (checked below), or, when the sweep (every 100 ms)
                // drops the hold before the server has looked up every
                // block, the server refuses the rest (a 64 MiB get here: 2
                // refusals in 60).
                (PlaneChoice::Tcp, 1)
                    if matches!(
                        got,
                        Err(tidepool_client::ClientError::Transport(
                            tidepool_transport::TransportError::Refused(_)
                        ))
                    ) => {}
                _ => {
                    assert_eq!(got.unwrap(), vec![Some(len); n], "{plane:?} {ms}");
                    for (i, (_, v)) in blocks.iter().enumerate() {
                        assert_eq!(&storage[i][..], &v[..], "{plane:?} block {i}");
                    }
                }
            }
            wait_no_leases(&s, &format!("{plane:?} lease {ms} ms given back"));
            // The connection is in step for the next command.
            echoes_answer_in_step(&c, "after", 4).await;
        }
    });
}

/// Leases are bounded (`max-leases`, also through CONFIG SET): past the
/// bound KV.MATCH ... LEASE and KV.LOCATE answer -BUSY, a match without a
/// lease still answers, and a lease given back makes room again.
#[test]
fn leases_past_max_leases_are_refused_until_some_go_back() {
    let s = Server::start(&["--max-leases", "3"]);
    let mut con = s.redis();
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut con)
        .unwrap();
    let lease = |con: &mut redis::Connection| -> redis::RedisResult<Vec<Value>> {
        redis::cmd("KV.MATCH")
            .arg(1)
            .arg("k")
            .arg("LEASE")
            .arg(60_000)
            .query(con)
    };
    let locate = |con: &mut redis::Connection| -> redis::RedisResult<Vec<Value>> {
        redis::cmd("KV.LOCATE").arg(1).arg("k").query(con)
    };
    let first = lease(&mut con).unwrap();
    lease(&mut con).unwrap();
    locate(&mut con).unwrap();
    for e in [lease(&mut con).unwrap_err(), locate(&mut con).unwrap_err()] {
        assert_eq!(e.code(), Some("BUSY"), "{e}");
        assert!(e.to_string().contains("max-leases 3"), "{e}");
    }
    let e = redis::cmd("KV.MATCHTOKENS")
        .arg("seed")
        .arg(2)
        .arg(1)
        .arg(2)
        .arg("LEASE")
        .arg(10)
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(e.code(), Some("BUSY"), "{e}");
    let plain: i64 = redis::cmd("KV.MATCH")
        .arg(1)
        .arg("k")
        .query(&mut con)
        .unwrap();
    assert_eq!(plain, 1, "a match without a lease still answers");
    let Value::Int(id) = first[3] else {
        panic!("{first:?}")
    };
    let back: i64 = redis::cmd("KV.RELEASE").arg(id).query(&mut con).unwrap();
    assert_eq!(back, 1);
    locate(&mut con).unwrap();
    // CONFIG GET and SET it.
    let got: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("max-leases")
        .query(&mut con)
        .unwrap();
    assert_eq!(got, ["max-leases", "3"]);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("max-leases")
        .arg(4)
        .query(&mut con)
        .unwrap();
    lease(&mut con).unwrap();
    assert_eq!(lease(&mut con).unwrap_err().code(), Some("BUSY"));
    let e = redis::cmd("CONFIG")
        .arg("SET")
        .arg("max-leases")
        .arg(0)
        .query::<()>(&mut con)
        .unwrap_err();
    assert!(e.to_string().contains("positive integer"), "{e}");
}

/// A shm put starts no copy past its reservation's time (less a margin),
/// which KV.DATAPLANE tells the client: past it the server may give the
/// range to another block. With a 1 ms reservation timeout, a put of six
/// 16 MiB blocks (copied two at a time, each well over a millisecond) is
/// refused with `Expired` and leaves nothing stored; with the default
/// timeout the same put lands.
#[test]
fn a_shm_put_starts_no_copy_past_its_reservations_time() {
    let blocks: Vec<(Bytes, Bytes)> = (0..6)
        .map(|i| (Bytes::from(format!("late-{i}")), block(i, 16 << 20)))
        .collect();
    let rt = rt();
    for timeout in ["1", "30000"] {
        let s = Server::start(&["--dram", "512MiB", "--reserve-timeout", timeout]);
        let mut con = s.redis();
        let dp: Vec<Value> = redis::cmd("KV.DATAPLANE").query(&mut con).unwrap();
        let at = dp
            .iter()
            .position(|v| matches!(v, Value::BulkString(k) if k == b"reserve_timeout_ms"))
            .unwrap_or_else(|| panic!("{dp:?}"));
        assert_eq!(dp[at + 1], Value::Int(timeout.parse().unwrap()));
        rt.block_on(async {
            let c = client_via(&s, PlaneChoice::Shm).await.unwrap();
            let r = c.put_many(&blocks, false, None).await;
            if timeout == "1" {
                let e = r.unwrap_err();
                assert!(
                    matches!(
                        e,
                        tidepool_client::ClientError::Transport(
                            tidepool_transport::TransportError::Expired(_)
                        )
                    ),
                    "{e}"
                );
            } else {
                assert!(r.unwrap().iter().all(|r| r.is_ok()));
            }
        });
        let stored = blocks
            .iter()
            .filter(|(k, _)| exists(&mut con, std::str::from_utf8(k).unwrap()) == 1)
            .count();
        if timeout == "1" {
            // Groups committed before the late one may stand; the late one
            // and those after it are aborted.
            assert!(stored < blocks.len(), "every block stored");
        } else {
            assert_eq!(stored, blocks.len());
        }
    }
}

/// Reservation tokens, located-block tokens and lease ids are not a counter:
/// a client that sees its own cannot name another's, and the data port
/// refuses a token next to a real one.
#[test]
fn tokens_and_lease_ids_cannot_be_guessed_from_ones_own() {
    let s = Server::start(&[]);
    let mut con = s.redis();
    let (port, _, _) = dataplane(&mut con);
    let far = |a: u64, b: u64| a.abs_diff(b) > 1 << 32;
    let a = reserve_via(&mut con, "tok-a", 4096, "tcp");
    let b = reserve_via(&mut con, "tok-b", 4096, "tcp");
    assert!(far(a.token, b.token), "{} then {}", a.token, b.token);
    // Another client's reservation, and a guess at its token from ours.
    let mut other = s.redis();
    let theirs = reserve_via(&mut other, "tok-c", 4096, "tcp");
    let rt = rt();
    let plane = tcp_plane(&rt, port);
    let data = block(7, 4096);
    for guess in [b.token + 1, b.token.wrapping_sub(1), theirs.token ^ 1] {
        let e = rt
            .block_on(plane.write(&[(Descriptor { token: guess, ..b }, &data[..])]))
            .unwrap_err();
        assert!(e.to_string().contains("unknown"), "{guess}: {e}");
    }
    // Located blocks (tcp reads) and leases.
    rt.block_on(plane.write(&[(a, &data[..])])).unwrap();
    commit(&mut con, &a);
    let locate = |con: &mut redis::Connection| -> (i64, Descriptor) {
        let loc: Vec<Value> = redis::cmd("KV.LOCATE")
            .arg(1)
            .arg("tok-a")
            .arg("VIA")
            .arg("tcp")
            .query(con)
            .unwrap();
        let (Value::Int(lease), Value::Array(blocks)) = (&loc[1], &loc[3]) else {
            panic!("{loc:?}")
        };
        (*lease, desc(&blocks[0]))
    };
    let (l1, d1) = locate(&mut con);
    let (l2, d2) = locate(&mut con);
    assert!(
        l1 > 0 && l2 > 0 && far(l1 as u64, l2 as u64),
        "{l1} then {l2}"
    );
    assert!(far(d1.token, d2.token), "{} then {}", d1.token, d2.token);
    let m: Vec<Value> = redis::cmd("KV.MATCH")
        .arg(1)
        .arg("tok-a")
        .arg("LEASE")
        .arg(1000)
        .query(&mut con)
        .unwrap();
    let Value::Int(l3) = m[3] else {
        panic!("{m:?}")
    };
    assert!(far(l2 as u64, l3 as u64), "{l2} then {l3}");
    let released: i64 = redis::cmd("KV.RELEASE")
        .arg(l3 + 1)
        .query(&mut con)
        .unwrap();
    assert_eq!(released, 0, "a guessed lease id releases nothing");
}

/// Polls `fut` until it has waited `waits` times (polled again at once
/// after each wait), then drops it: a caller giving up half way, at a point
/// that depends on the protocol's progress rather than on the clock.
/// Whether it finished first.
async fn give_up_after<F: std::future::Future>(fut: F, waits: usize) -> bool {
    let mut fut = std::pin::pin!(fut);
    let mut waited = 0;
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(_) => std::task::Poll::Ready(true),
        std::task::Poll::Pending => {
            waited += 1;
            if waited >= waits {
                return std::task::Poll::Ready(false);
            }
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// A put or a get given up half way (its future dropped: a timeout, a
/// cancelled request) leaves no block half written or visible, gives its
/// reservations and leases back, and leaves the client's pooled connections
/// answering in step.
#[test]
fn a_put_or_get_given_up_half_way_leaves_nothing_half_done() {
    let s = Server::start(&["--dram", "512MiB"]);
    let rt = rt();
    rt.block_on(async {
        for choice in [PlaneChoice::Shm, PlaneChoice::Tcp] {
            let c = client_via(&s, choice).await.unwrap();
            // 40 MiB a put or a get: many groups, each pipelined with the
            // next group's reservation (or location).
            let (len, n) = (256 << 10, 160);
            // Rounds whose put or get really was given up half way (a shm
            // get can end within a poll or two; not every round is cut).
            let (mut puts_cut, mut gets_cut) = (0, 0);
            for (round, waits) in [1, 2, 3, 5, 8, 13].into_iter().enumerate() {
                let tag = format!("{choice:?}-{round}");
                let blocks: Vec<(Bytes, Bytes)> = (0..n)
                    .map(|i| (Bytes::from(format!("{tag}-{i}")), block(i + round, len)))
                    .collect();
                let keys: Vec<Bytes> = blocks.iter().map(|(k, _)| k.clone()).collect();
                let done = give_up_after(c.put_many(&blocks, false, None), waits).await;
                puts_cut += usize::from(!done);
                // Each block is stored whole or not at all.
                let mut storage = vec![vec![0u8; len]; n];
                let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
                let got = c.get_many_into(&keys, &mut bufs).await.unwrap();
                for (i, g) in got.iter().enumerate() {
                    if g.is_some() {
                        assert_eq!(*g, Some(len), "{tag} {i}");
                        assert_eq!(&storage[i][..], &blocks[i].1[..], "{tag} {i}");
                    }
                }
                // What the put reserved goes back at once: a connection left
                // out of step is closed, and the server drops what it held
                // (well before the reservations' 30 s timeout).
                let soon = Duration::from_secs(5);
                wait_zero(&s, "data_reservations_open", soon, &tag);
                // Every pooled connection answers its next command with
                // that command's own reply.
                echoes_answer_in_step(&c, &format!("{tag}-put-"), 8).await;
                // The whole put, then a get of it given up half way: no
                // lease is kept.
                let put = c.put_many(&blocks, false, None).await.unwrap();
                assert!(put.iter().all(|r| r.is_ok()), "{tag}");
                let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
                let done = give_up_after(c.get_many_into(&keys, &mut bufs), waits).await;
                gets_cut += usize::from(!done);
                echoes_answer_in_step(&c, &format!("{tag}-get-"), 8).await;
                // Well before they would expire (30 s).
                wait_zero(&s, "kv_leases", soon, &tag);
                // And the whole get still works (into buffers cleared of what
                // the earlier gets wrote).
                storage.iter_mut().for_each(|v| v.fill(0));
                let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
                let got = c.get_many_into(&keys, &mut bufs).await.unwrap();
                assert!(got.iter().all(|g| *g == Some(len)), "{tag}");
                for (i, (_, v)) in blocks.iter().enumerate() {
                    assert_eq!(&storage[i][..], &v[..], "{tag} {i}");
                }
            }
            assert!(puts_cut > 0, "{choice:?}: no put was given up half way");
            assert!(gets_cut > 0, "{choice:?}: no get was given up half way");
        }
    });
}

/// A client that moves every block over the tcp plane, with `tcp` settings.
async fn tcp_client(s: &Server, tcp: TcpOptions) -> tidepool_client::Client {
    tidepool_client::Client::connect_with(
        &addr(s),
        ClientOptions {
            plane: PlaneChoice::Tcp,
            inline_below: 0,
            tcp,
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap()
}

/// Gets `blocks` into buffers of their size and checks every byte.
async fn get_and_check(c: &tidepool_client::Client, blocks: &[(Bytes, Bytes)]) {
    let keys: Vec<Bytes> = blocks.iter().map(|(k, _)| k.clone()).collect();
    let mut storage: Vec<Vec<u8>> = blocks.iter().map(|(_, v)| vec![0u8; v.len()]).collect();
    let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
    let got = c.get_many_into(&keys, &mut bufs).await.unwrap();
    for (i, (_, v)) in blocks.iter().enumerate() {
        assert_eq!(got[i], Some(v.len()), "block {i}");
        assert_eq!(&storage[i][..], &v[..], "block {i}");
    }
}

#[test]
fn a_tcp_put_of_many_groups_commits_a_chain_in_order() {
    // 600 blocks of 8 KiB: three tcp groups (at most 256 blocks each), each
    // group's bytes sent before the replies to the group before are read.
    // Commits must still go in order: a child committed before its parent
    // is refused (NOPARENT).
    let s = Server::start(&[]);
    rt().block_on(async {
        let c = tcp_client(&s, TcpOptions::default()).await;
        let blocks: Vec<(Bytes, Bytes)> = (0..600)
            .map(|i| (Bytes::from(format!("g{i}")), block(i, 8192)))
            .collect();
        let r = c.put_many(&blocks, true, None).await.unwrap();
        assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
        get_and_check(&c, &blocks).await;
        // The chain is whole: a match of all its keys finds every block.
        let keys: Vec<Bytes> = blocks.iter().map(|(k, _)| k.clone()).collect();
        let m = c.match_prefix(&keys, None).await.unwrap();
        assert_eq!(m.matched, blocks.len());
    });
    assert_eq!(s.info_u64("data_committed"), 600);
}

#[test]
fn gets_beside_a_put_of_many_tcp_groups_finish() {
    // A put of many tcp groups holds the client's data connections to its
    // end; gets of the same client, run beside it over two connections,
    // wait their turn and read the right bytes, and every block of the put
    // is committed.
    let s = Server::start(&[]);
    rt().block_on(async {
        let tcp = TcpOptions {
            connections: 2,
            stripe: 64 << 10,
        };
        let c = tcp_client(&s, tcp).await;
        let stored: Vec<(Bytes, Bytes)> = (0..8)
            .map(|i| (Bytes::from(format!("s{i}")), block(i, 300_000)))
            .collect();
        c.put_many(&stored, false, None).await.unwrap();
        let many: Vec<(Bytes, Bytes)> = (0..600)
            .map(|i| (Bytes::from(format!("m{i}")), block(1000 + i, 8192)))
            .collect();
        let put = c.put_many(&many, false, None);
        let gets = async {
            for _ in 0..20 {
                get_and_check(&c, &stored).await;
            }
        };
        let both = async { tokio::join!(put, gets).0 };
        let r = tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .expect("a put and gets of one client stalled each other");
        assert!(r.unwrap().iter().all(|r| r.is_ok()));
    });
    assert_eq!(s.info_u64("data_committed"), 608);
}

/// Whether two descriptors' arena ranges overlap.
fn overlap(a: &Descriptor, b: &Descriptor) -> bool {
    a.offset < b.offset + b.len && b.offset < a.offset + a.len
}

/// A shm writer whose reservation ended before its copy did (it expired, or
/// its connection closed) and that then writes on (a copy under way, a
/// thread descheduled mid-copy) lands in a range no other block was given:
/// the blocks reserved meanwhile read back whole. One reserve-timeout
/// later the ranges are back in use.
#[test]
fn a_stalled_shm_writer_never_lands_in_another_block() {
    // Quarantine lasts a reserve-timeout: 3 s leaves the steps below a
    // wide margin on a slow machine.
    let s = Server::start(&["--reserve-timeout", "3000", "--dram", "32MiB"]);
    let mut con = s.redis();
    let (_, sock, id) = dataplane(&mut con);
    let plane = ShmPlane::connect(sock.as_ref(), id).unwrap();
    let len = 1 << 20;
    let base = s.info_u64("data_arena_used");
    let stalled = reserve_via(&mut con, "stalled", len, "shm");
    let wait_for = |field: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.info_u64(field) < 1 {
            assert!(Instant::now() < deadline, "no {field}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for("data_expired");
    let orphaned = {
        let mut other = s.redis();
        reserve_via(&mut other, "orphaned", len, "shm")
        // closed here: its reservation is dropped with it
    };
    wait_for("data_aborted");
    assert_eq!(s.info_u64("data_quarantined_bytes"), 2 * len as u64);
    // Others take the arena meanwhile (same size: what a freed range fits).
    let mut others = Vec::new();
    for i in 0..6 {
        let key = format!("other{i}");
        let d = reserve_via(&mut con, &key, len, "shm");
        assert!(
            !overlap(&d, &stalled) && !overlap(&d, &orphaned),
            "{key} was given a range an unfinished writer may still write: {d:?}"
        );
        plane.write_one(&d, &block(i, len)).unwrap();
        commit(&mut con, &d);
        others.push(key);
    }
    // The stalled writers wake up and finish their copies.
    plane.write_one(&stalled, &vec![0xEE; len]).unwrap();
    plane.write_one(&orphaned, &vec![0xDD; len]).unwrap();
    for (i, key) in others.iter().enumerate() {
        let got: Vec<u8> = redis::cmd("GET").arg(key).query(&mut con).unwrap();
        assert!(got == block(i, len), "{key} was written over");
    }
    assert_eq!(exists(&mut con, "stalled"), 0);
    assert_eq!(exists(&mut con, "orphaned"), 0);
    // One reserve-timeout on, the quarantined ranges go back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.info_u64("data_quarantined_bytes") > 0 {
        assert!(
            Instant::now() < deadline,
            "quarantined ranges never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.info_u64("data_arena_used"), base + 6 * len as u64);
    let again = reserve_via(&mut con, "again", len, "shm");
    assert_eq!(again.kind, Kind::Shm);
}

/// Sets its flag when dropped (unwinding included).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

/// KV.RESERVE of one block, or `None` when the server has no room (OOM).
fn try_reserve(
    con: &mut redis::Connection,
    key: &str,
    len: usize,
    via: &str,
) -> Option<Descriptor> {
    let reply: redis::RedisResult<Vec<Value>> = redis::cmd("KV.RESERVE")
        .arg(1)
        .arg(key)
        .arg(len)
        .arg("VIA")
        .arg(via)
        .query(con);
    match reply {
        Err(e) if e.code() == Some("OOM") => None,
        Ok(r) => match &r[0] {
            Value::ServerError(e) if e.code() == "OOM" => None,
            v => Some(desc(v)),
        },
        Err(e) => panic!("KV.RESERVE {key}: {e}"),
    }
}

/// A commit refused because its reservation ended (or, after a write that
/// failed part way, because its bytes are not all in).
fn refused_as_expected(key: &str, e: &redis::RedisError, wrote: bool) {
    let ok = match e.code() {
        Some("NORESERVATION") => true,
        Some("INCOMPLETE") => !wrote,
        _ => false,
    };
    assert!(
        ok,
        "{key}: {e} (the write {})",
        if wrote { "succeeded" } else { "failed" }
    );
}

/// Commits sent around the moment their reservations end, over tcp and
/// shm, while bystanders reserve, write and commit beside them (taking the
/// ranges the ended ones give back): each racing block is either stored
/// whole or not at all, and every bystander reads back whole.
#[test]
fn commits_racing_their_reservations_end_are_whole_or_absent() {
    let s = Server::start(&["--reserve-timeout", "40", "--dram", "64MiB"]);
    let (port, sock, id) = dataplane(&mut s.redis());
    let stored = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let racers: Vec<_> = ["tcp", "shm"]
            .into_iter()
            .map(|via| {
                let (s, sock, stored, refused) = (&s, &sock, &stored, &refused);
                sc.spawn(move || {
                    let rt = rt();
                    let mut con = s.redis();
                    let shm = ShmPlane::connect(sock.as_ref(), id).unwrap();
                    let tcp = tcp_plane(&rt, port);
                    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ via.len() as u64;
                    for i in 0..60 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = format!("race-{via}-{i}");
                        let data = block(i + 1000 * via.len(), 64 * 1024 + (x % 200_000) as usize);
                        // The arena may be full of the bystanders' blocks
                        // (a fair answer under this churn): next round.
                        let Some(d) = try_reserve(&mut con, &key, data.len(), via) else {
                            continue;
                        };
                        let wrote = if via == "shm" {
                            shm.write_one(&d, &data).is_ok()
                        } else {
                            rt.block_on(tcp.write(&[(d, &data[..])])).is_ok()
                        };
                        // Around the end of its 40 ms, which the sweep
                        // (every 100 ms) finds up to 100 ms late.
                        std::thread::sleep(Duration::from_millis(20 + x % 150));
                        let r: redis::RedisResult<String> =
                            redis::cmd("KV.COMMIT").arg(d.token).query(&mut con);
                        let got: Option<Vec<u8>> =
                            redis::cmd("GET").arg(&key).query(&mut con).unwrap();
                        match r {
                            Ok(_) => {
                                assert!(wrote, "{key}: committed though its write failed");
                                assert!(got.as_deref() == Some(&data[..]), "{key}: not whole");
                                stored.fetch_add(1, Relaxed);
                            }
                            Err(e) => {
                                refused_as_expected(&key, &e, wrote);
                                assert_eq!(got, None, "{key}: refused, yet stored");
                                refused.fetch_add(1, Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for via in ["tcp", "shm"] {
            let (s, sock, stop) = (&s, &sock, &stop);
            sc.spawn(move || {
                let rt = rt();
                let mut con = s.redis();
                let shm = ShmPlane::connect(sock.as_ref(), id).unwrap();
                let tcp = tcp_plane(&rt, port);
                let mut i = 0;
                while !stop.load(Relaxed) {
                    let key = format!("by-{via}-{i}");
                    let data = block(i + 7, 64 * 1024 + (i * 4099) % 150_000);
                    let Some(d) = try_reserve(&mut con, &key, data.len(), via) else {
                        i += 1;
                        continue;
                    };
                    // Late on a slow machine, a write or commit fails: then
                    // nothing may be stored.
                    let wrote = if via == "shm" {
                        shm.write_one(&d, &data).is_ok()
                    } else {
                        rt.block_on(tcp.write(&[(d, &data[..])])).is_ok()
                    };
                    let r: redis::RedisResult<String> =
                        redis::cmd("KV.COMMIT").arg(d.token).query(&mut con);
                    let got: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
                    match r {
                        Ok(_) => assert!(
                            wrote && got.as_deref() == Some(&data[..]),
                            "bystander {key} is not what it wrote"
                        ),
                        Err(e) => {
                            refused_as_expected(&key, &e, wrote);
                            assert_eq!(got, None, "{key}: refused, yet stored");
                        }
                    }
                    i += 1;
                }
            });
        }
        // Set even when a racer failed: the bystanders stop, and the
        // failure is reported instead of the test hanging.
        let _stop = StopOnDrop(&stop);
        for r in racers {
            r.join().unwrap();
        }
    });
    let (stored, refused) = (stored.load(Relaxed), refused.load(Relaxed));
    eprintln!("{stored} racing commits stored, {refused} refused");
    assert!(
        stored > 0 && refused > 0,
        "commits did not race the timeout: {stored} stored, {refused} refused"
    );
}
