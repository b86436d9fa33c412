use super::client::{deal, Piece};
use super::*;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::frame::{Op, Reply, Request, Status, REPLY_LEN, REQUEST_LEN};
use crate::region::Inbound;
use crate::{DataPlane, Descriptor, Kind};
use parking_lot::Mutex;
use std::collections::HashMap;

/// A resolver over two maps, as the server's reservation table would be.
#[derive(Default)]
struct Table {
    inbound: Mutex<HashMap<u64, Arc<Inbound>>>,
    outbound: Mutex<HashMap<u64, Bytes>>,
}

impl Resolver for Table {
    fn inbound(&self, token: u64) -> Option<Arc<Inbound>> {
        self.inbound.lock().get(&token).cloned()
    }
    fn outbound(&self, token: u64) -> Option<Bytes> {
        self.outbound.lock().get(&token).cloned()
    }
}

/// A client plane of `connections` connections and `stripe`-byte pieces.
async fn connect_plane(addr: SocketAddr, connections: usize, stripe: usize) -> TcpPlane {
    TcpPlane::connect(
        addr,
        TcpOptions {
            connections,
            stripe,
        },
    )
    .await
    .unwrap()
}

async fn start() -> (Arc<Table>, SocketAddr) {
    let table = Arc::new(Table::default());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(l, table.clone(), 64));
    (table, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_with_a_status() {
    let table = Arc::new(Table::default());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(l, table.clone(), 2));
    let _a = TcpStream::connect(addr).await.unwrap();
    let _b = TcpStream::connect(addr).await.unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut rb = [0u8; REPLY_LEN];
    c.read_exact(&mut rb).await.unwrap();
    assert_eq!(
        Reply::decode(&rb).unwrap().status,
        Status::TooManyConnections
    );
    // One leaves: a new one is served (it answers a request).
    drop(_a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut d = TcpStream::connect(addr).await.unwrap();
        d.write_all(&[0x55u8; REQUEST_LEN]).await.unwrap();
        d.read_exact(&mut rb).await.unwrap();
        match Reply::decode(&rb).unwrap().status {
            Status::BadRequest => break,
            Status::TooManyConnections => {
                assert!(std::time::Instant::now() < deadline, "never freed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn runs_are_dealt_whole_to_the_lightest_lane() {
    let run = |token: u64, lens: &[usize]| -> Vec<Piece<usize>> {
        let mut off = 0;
        lens.iter()
            .map(|&len| {
                off += len as u64;
                Piece {
                    token,
                    offset: off - len as u64,
                    buf: len,
                }
            })
            .collect()
    };
    let lanes = deal(
        [
            run(1, &[5, 5, 5]),
            run(2, &[4]),
            run(3, &[3, 3]),
            run(4, &[1]),
        ],
        2,
        |n| *n,
    );
    let tokens: Vec<Vec<(u64, u64)>> = lanes
        .iter()
        .map(|l| l.iter().map(|p| (p.token, p.offset)).collect())
        .collect();
    // 1 (15 bytes) to lane 0; 2 (4), 3 (6) and 4 (1) to lane 1, each
    // whole and in order.
    assert_eq!(
        tokens,
        vec![
            vec![(1, 0), (1, 5), (1, 10)],
            vec![(2, 0), (3, 0), (3, 3), (4, 0)]
        ]
    );
}

fn desc(token: u64, len: usize) -> Descriptor {
    Descriptor {
        kind: Kind::Tcp,
        offset: 0,
        len: len as u64,
        token,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn striped_writes_and_reads_move_every_byte() {
    let (table, addr) = start().await;
    let plane = connect_plane(addr, 3, 5000).await;
    let sizes = [0usize, 1, 4096, 12_345, 100_000];
    let data: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| (0..*n).map(|j| (i * 31 + j * 7) as u8).collect())
        .collect();
    let mut blocks = Vec::new();
    for (i, d) in data.iter().enumerate() {
        let ib = Arc::new(Inbound::with_hashing(
            crate::Region::alloc(None, d.len()),
            true,
        ));
        table.inbound.lock().insert(i as u64 + 1, ib);
        blocks.push((desc(i as u64 + 1, d.len()), &d[..]));
    }
    plane.write(&blocks).await.unwrap();
    for (i, d) in data.iter().enumerate() {
        let ib = table.inbound.lock().remove(&(i as u64 + 1)).unwrap();
        let (region, sum) = ib.seal(true).unwrap();
        let bytes = region.into_bytes();
        // A block's pieces travel on one connection, in order: every
        // block was hashed as it arrived.
        assert_eq!(
            sum,
            Some(xxhash_rust::xxh3::xxh3_64(&bytes)),
            "block {i} hashed on arrival"
        );
        assert_eq!(&bytes[..], &d[..]);
        table.outbound.lock().insert(100 + i as u64, bytes);
    }
    let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|n| vec![0xEE; *n]).collect();
    let mut reads: Vec<(Descriptor, &mut [u8])> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| (desc(100 + i as u64, b.len()), &mut b[..]))
        .collect();
    plane.read(&mut reads).await.unwrap();
    assert_eq!(bufs, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_reported_and_the_plane_recovers() {
    let (table, addr) = start().await;
    let plane = TcpPlane::connect(addr, TcpOptions::default())
        .await
        .unwrap();
    // Unknown token: refused, and the connection stays usable.
    let e = plane.write(&[(desc(9, 3), b"abc")]).await.unwrap_err();
    assert!(
        matches!(e, TransportError::Refused(Status::UnknownToken)),
        "{e}"
    );
    let mut buf = [0u8; 3];
    let e = plane
        .read(&mut [(desc(9, 3), &mut buf[..])])
        .await
        .unwrap_err();
    assert!(
        matches!(e, TransportError::Refused(Status::UnknownToken)),
        "{e}"
    );
    // Length mismatch is caught before anything is sent.
    let e = plane.write(&[(desc(9, 4), b"abc")]).await.unwrap_err();
    assert!(matches!(e, TransportError::Length { .. }), "{e}");
    // A range written twice is refused.
    let ib = Arc::new(Inbound::new(crate::Region::alloc(None, 3)));
    table.inbound.lock().insert(5, ib.clone());
    plane.write(&[(desc(5, 3), b"xyz")]).await.unwrap();
    let e = plane.write(&[(desc(5, 3), b"xyz")]).await.unwrap_err();
    assert!(matches!(e, TransportError::Refused(Status::Overlap)), "{e}");
    assert_eq!(&ib.seal(true).unwrap().0.into_bytes()[..], b"xyz");
    // A short outbound block: out of range, and the connection goes on.
    table.outbound.lock().insert(6, Bytes::from_static(b"ab"));
    let e = plane
        .read(&mut [(desc(6, 3), &mut buf[..])])
        .await
        .unwrap_err();
    assert!(
        matches!(e, TransportError::Refused(Status::OutOfRange)),
        "{e}"
    );
    let mut two = [0u8; 2];
    plane.read(&mut [(desc(6, 2), &mut two[..])]).await.unwrap();
    assert_eq!(&two, b"ab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_amid_a_batch_of_reads_fails_it_and_the_plane_recovers() {
    let (table, addr) = start().await;
    let plane = connect_plane(addr, 1, 1 << 20).await;
    let block = Bytes::from(vec![7u8; 100_000]);
    table.outbound.lock().insert(1, block.clone());
    table.outbound.lock().insert(3, block.clone());
    let mut bufs = vec![vec![0u8; 100_000]; 3];
    let mut reads: Vec<(Descriptor, &mut [u8])> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| (desc(i as u64 + 1, b.len()), &mut b[..]))
        .collect();
    // Token 2 is unknown: its reply has no bytes, and what follows it
    // must not be taken for them.
    let e = plane.read(&mut reads).await.unwrap_err();
    assert!(
        matches!(e, TransportError::Refused(Status::UnknownToken)),
        "{e}"
    );
    table.outbound.lock().insert(2, block.clone());
    plane.read(&mut reads).await.unwrap();
    assert!(bufs.iter().all(|b| b[..] == block[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_requests_in_one_segment_are_answered_in_order() {
    let (table, addr) = start().await;
    table
        .outbound
        .lock()
        .insert(1, Bytes::from_static(b"first"));
    let ib = Arc::new(Inbound::new(crate::Region::alloc(None, 6)));
    table.inbound.lock().insert(2, ib.clone());
    let req = |op, token, len| {
        Request {
            op,
            token,
            offset: 0,
            len,
        }
        .encode()
    };
    // A read, a write with its bytes, a refused write, a read: one
    // segment, so the server reads the write's bytes along with the
    // headers.
    let mut out = Vec::new();
    out.extend(req(Op::Read, 1, 5));
    out.extend(req(Op::Write, 2, 6));
    out.extend(b"second");
    out.extend(req(Op::Write, 9, 4));
    out.extend(b"lost");
    out.extend(req(Op::Read, 1, 5));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&out).await.unwrap();
    let mut got = vec![0u8; 4 * REPLY_LEN + 10];
    s.read_exact(&mut got).await.unwrap();
    let status = |at: usize| {
        let r = Reply::decode(got[at..at + REPLY_LEN].try_into().unwrap()).unwrap();
        (r.status, r.len)
    };
    assert_eq!(status(0), (Status::Ok, 5));
    assert_eq!(&got[16..21], b"first");
    assert_eq!(status(21), (Status::Ok, 6));
    assert_eq!(status(37), (Status::UnknownToken, 0));
    assert_eq!(status(53), (Status::Ok, 5));
    assert_eq!(&got[69..74], b"first");
    assert_eq!(&ib.seal(true).unwrap().0.into_bytes()[..], b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_replies_is_held_back() {
    let (table, addr) = start().await;
    table.outbound.lock().insert(99, Bytes::from_static(b"x"));
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Reads of no bytes, 32 bytes each, each owed a reply (a header).
    let one = Request {
        op: Op::Read,
        token: 99,
        offset: 0,
        len: 0,
    }
    .encode();
    let chunk: Vec<u8> = one.iter().copied().cycle().take(1 << 20).collect();
    // The replies to 256 MiB of requests would be 128 MiB: the server
    // must stop taking requests long before (socket buffers are a few
    // MiB), so the writes stall.
    let mut sent = 0usize;
    let send = async {
        for _ in 0..256 {
            s.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
    };
    let stalled = tokio::time::timeout(std::time::Duration::from_secs(3), send).await;
    assert!(stalled.is_err(), "the server took every request unanswered");
    // Held back after what the socket buffers and one batch of owed
    // replies take (a few MiB), not after some large share of it.
    assert!(
        sent < 64 << 20,
        "{} MiB of requests were taken unanswered",
        sent >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_vanishes_mid_block_writes_nothing() {
    let (table, addr) = start().await;
    let ib = Arc::new(Inbound::new(crate::Region::alloc(None, 1 << 20)));
    table.inbound.lock().insert(1, ib.clone());
    let mut s = TcpStream::connect(addr).await.unwrap();
    let h = Request {
        op: Op::Write,
        token: 1,
        offset: 0,
        len: 1 << 20,
    };
    s.write_all(&h.encode()).await.unwrap();
    s.write_all(&vec![1u8; 300_000]).await.unwrap();
    drop(s);
    // The server notices the close and releases the claim.
    let mut sealed = false;
    for _ in 0..200 {
        if ib.seal(false).is_ok() {
            sealed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(sealed, "the vanished writer's claim was never released");
    assert_eq!(ib.written(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_data_port_is_answered_and_closed() {
    let (_table, addr) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x55u8; 64]).await.unwrap();
    let mut rb = [0u8; REPLY_LEN];
    s.read_exact(&mut rb).await.unwrap();
    assert_eq!(Reply::decode(&rb).unwrap().status, Status::BadRequest);
    // Then the server closes (a reset when our unread bytes remain).
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest).await {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_read_ends_the_connection() {
    let (table, addr) = start().await;
    table
        .outbound
        .lock()
        .insert(1, Bytes::from_static(b"first"));
    let read = |token| {
        Request {
            op: Op::Read,
            token,
            offset: 0,
            len: 5,
        }
        .encode()
    };
    // A read, a refused one (unknown token), and a read the server must
    // not answer: after a refusal it sends nothing but the end of the
    // stream.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[read(1), read(2), read(1)].concat())
        .await
        .unwrap();
    let mut got = Vec::new();
    let wait = std::time::Duration::from_secs(10);
    tokio::time::timeout(wait, s.read_to_end(&mut got))
        .await
        .expect("the connection was left open")
        .unwrap();
    assert_eq!(got.len(), 2 * REPLY_LEN + 5, "{got:?}");
    let first = Reply::decode(got[..REPLY_LEN].try_into().unwrap()).unwrap();
    assert_eq!((first.status, first.len), (Status::Ok, 5));
    assert_eq!(&got[REPLY_LEN..REPLY_LEN + 5], b"first");
    let no = Reply::decode(got[REPLY_LEN + 5..].try_into().unwrap()).unwrap();
    assert_eq!(no.status, Status::UnknownToken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waiting_for_more_is_woken_by_a_refusal() {
    // A scripted server: it answers a batch of two reads with the first
    // block, and only later refuses the second (a header alone) and ends
    // the stream, as the data port does. The reader, waiting for a
    // megabyte of the second block, must wake for the refusal.
    const LEN: usize = 2 << 20;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut reqs = [0u8; 2 * REQUEST_LEN];
        s.read_exact(&mut reqs).await.unwrap();
        let ok = Reply {
            status: Status::Ok,
            len: LEN as u64,
        };
        s.write_all(&ok.encode()).await.unwrap();
        s.write_all(&vec![9u8; LEN]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let no = Reply {
            status: Status::UnknownToken,
            len: 0,
        };
        s.write_all(&no.encode()).await.unwrap();
        s.shutdown().await.unwrap();
        let _ = done_rx.await;
    });
    let plane = connect_plane(addr, 1, LEN).await;
    let (mut a, mut b) = (vec![0u8; LEN], vec![0u8; LEN]);
    let mut reads = [(desc(1, LEN), &mut a[..]), (desc(2, LEN), &mut b[..])];
    let waited = std::time::Duration::from_secs(10);
    let e = tokio::time::timeout(waited, plane.read(&mut reads))
        .await
        .expect("the refusal was slept through")
        .unwrap_err();
    assert!(
        matches!(e, TransportError::Refused(Status::UnknownToken)),
        "{e}"
    );
    assert!(a.iter().all(|&x| x == 9));
    let _ = done_tx.send(());
}

/// A tcp reservation of `len` bytes under `token` that hashes its bytes.
fn reserve(table: &Table, token: u64, len: usize) -> Arc<Inbound> {
    let ib = Arc::new(Inbound::with_hashing(crate::Region::alloc(None, len), true));
    table.inbound.lock().insert(token, ib.clone());
    ib
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_sent_before_the_replies_to_earlier_ones_all_land() {
    let (table, addr) = start().await;
    let plane = connect_plane(addr, 3, 64 << 10).await;
    // Three batches; the second has one block, so two connections
    // carry none of it.
    let sizes: [&[usize]; 3] = [
        &[200_000, 1, 70_000, 4096, 300_000],
        &[150_000],
        &[0, 90_000],
    ];
    let mut token = 0u64;
    let mut batches = Vec::new();
    for batch in sizes {
        let mut blocks = Vec::new();
        for &n in batch {
            token += 1;
            let data: Vec<u8> = (0..n)
                .map(|j| (token as usize * 31 + j * 7) as u8)
                .collect();
            blocks.push((token, reserve(&table, token, n), data));
        }
        batches.push(blocks);
    }
    let refs = |i: usize| -> Vec<(Descriptor, &[u8])> {
        batches[i]
            .iter()
            .map(|(t, _, d)| (desc(*t, d.len()), d.as_slice()))
            .collect()
    };
    let (one, two, three) = (refs(0), refs(1), refs(2));
    let mut w = plane.writes().await;
    w.send(&one).await.unwrap();
    w.send(&two).await.unwrap();
    w.confirm().await.unwrap();
    w.send(&three).await.unwrap();
    w.confirm().await.unwrap();
    w.confirm().await.unwrap();
    w.finish();
    drop((one, two, three));
    for (t, ib, data) in batches.into_iter().flatten() {
        let (region, sum) = ib
            .seal(true)
            .unwrap_or_else(|_| panic!("block {t} incomplete"));
        let bytes = region.into_bytes();
        assert_eq!(&bytes[..], &data[..], "block {t}");
        assert_eq!(sum, Some(xxhash_rust::xxh3::xxh3_64(&bytes)), "block {t}");
    }
    // The connections went back in step: another write goes through.
    let ib = reserve(&table, 100, 3);
    plane.write(&[(desc(100, 3), b"abc")]).await.unwrap();
    assert_eq!(&ib.seal(true).unwrap().0.into_bytes()[..], b"abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_an_unconfirmed_batch_fails_its_confirm_and_the_plane_recovers() {
    let (table, addr) = start().await;
    let plane = connect_plane(addr, 1, 1 << 20).await;
    let good = reserve(&table, 1, 5);
    let later = reserve(&table, 2, 5);
    let mut w = plane.writes().await;
    // Token 9 is unknown: refused, its bytes skipped.
    w.send(&[(desc(1, 5), b"hello"), (desc(9, 3), b"xyz")])
        .await
        .unwrap();
    w.send(&[(desc(2, 5), b"later")]).await.unwrap();
    let e = w.confirm().await.unwrap_err();
    assert!(
        matches!(e, TransportError::Refused(Status::UnknownToken)),
        "{e}"
    );
    // The session is spent: its connection is gone, and confirming
    // again says so rather than waiting on a fresh one.
    let wait = std::time::Duration::from_secs(10);
    let again = tokio::time::timeout(wait, w.confirm()).await.expect("hung");
    assert!(again.is_err());
    w.finish();
    assert_eq!(&good.seal(true).unwrap().0.into_bytes()[..], b"hello");
    // The server took the second batch too (the stream stayed in step
    // after the refused bytes); only its reply went unread.
    let deadline = std::time::Instant::now() + wait;
    while !later.is_complete() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(later.is_complete());
    let ib = reserve(&table, 3, 2);
    plane.write(&[(desc(3, 2), b"ok")]).await.unwrap();
    assert_eq!(&ib.seal(true).unwrap().0.into_bytes()[..], b"ok");
}
