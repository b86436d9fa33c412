//! The TCP data port: the server's side ([`serve`]) and the client's
//! ([`TcpPlane`]). Framing in [`crate::frame`].
//!
//! A client spreads a batch over several connections, cutting blocks larger
//! than the stripe size into pieces, and sends each connection's pieces as
//! vectored writes of about 2 MiB (headers and block bytes in one `writev`).
//! The server reads a write's bytes straight into the reservation's memory
//! and writes a read's bytes straight from the stored block: no intermediate
//! buffer on either side. It reads request headers a batch at a time and
//! answers a batch of reads with vectored writes of about 2 MiB too,
//! whatever the block size; the client reads replies with vectored reads
//! into its buffers. A reader waiting for block bytes, on either side, has
//! the kernel wake it only once a megabyte of them is in (`RECV_LOWAT`; the
//! client, waiting for the replies to its reads, half a megabyte:
//! `READ_LOWAT`), not for each segment. A refused read ends the connection,
//! so that a client can count on every byte it asked for.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::try_join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::frame::{self, Op, Reply, Request, Status, REPLY_LEN, REQUEST_LEN};
use crate::region::Inbound;
use crate::{check_lengths, DataPlane, Descriptor, Kind, TransportError};

/// How the server finds the memory a token names.
pub trait Resolver: Send + Sync + 'static {
    /// The open reservation `token` (a tcp one), if any.
    fn inbound(&self, token: u64) -> Option<Arc<Inbound>>;
    /// The located block `token`, if its lease is live.
    fn outbound(&self, token: u64) -> Option<Bytes>;
}

/// Accepts data connections until the task is dropped, at most
/// `max_connections` open at once: one more is answered
/// [`Status::TooManyConnections`] and closed.
pub async fn serve(listener: TcpListener, resolver: Arc<dyn Resolver>, max_connections: usize) {
    let open = Arc::new(AtomicUsize::new(0));
    // Failed accepts (out of descriptors) are logged once a second at most.
    let (mut failed, mut logged) = (0u64, None::<std::time::Instant>);
    loop {
        match listener.accept().await {
            Ok((mut stream, peer)) => {
                if open.fetch_add(1, Relaxed) >= max_connections {
                    open.fetch_sub(1, Relaxed);
                    tracing::debug!(%peer, "data connection refused: {max_connections} open");
                    tokio::spawn(async move {
                        let _ = reply(&mut stream, Status::TooManyConnections, 0).await;
                    });
                    continue;
                }
                let (r, open) = (resolver.clone(), open.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve_conn(stream, r).await {
                        tracing::debug!(%peer, "data connection closed: {e}");
                    }
                    open.fetch_sub(1, Relaxed);
                });
            }
            Err(e) => {
                failed += 1;
                if logged.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
                    tracing::warn!(failed, "data port accept failed: {e}");
                    (failed, logged) = (0, Some(std::time::Instant::now()));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn reply(s: &mut TcpStream, status: Status, len: u64) -> std::io::Result<()> {
    s.write_all(&Reply { status, len }.encode()).await
}

/// Data connections keep the kernel's buffer autotuning (receive buffers
/// grow to `tcp_rmem`'s maximum): fixed 4 MiB buffers, which turn it off,
/// moved a few percent less.
fn tune(s: &TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)
}

/// Request bytes read ahead of the request being served: a batch of read
/// requests comes in with one syscall. A write's bytes go straight into its
/// block; only those that happen to share a read with its header (at most
/// this many) are copied there from here.
const AHEAD: usize = 4096;

/// Answers to reads are gathered into vectored writes of about this many
/// bytes: on loopback a sender making 64 KiB writes moves a third as much as
/// one making 1 MiB writes.
const GATHER: usize = 2 << 20;

/// Most iovecs in one of the server's `writev`s (the kernel takes 1024).
const SERVER_IOV: usize = 512;

/// Request bytes read but not yet served.
struct Ahead {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Ahead {
    fn new() -> Ahead {
        Ahead {
            buf: vec![0u8; AHEAD].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    /// Room for up to `want` more bytes, after moving what is held to the
    /// front.
    fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let stop = (self.end + want).min(self.buf.len());
        &mut self.buf[self.end..stop]
    }
}

/// Replies owed, in request order, written together.
#[derive(Default)]
struct Owed {
    heads: Vec<[u8; REPLY_LEN]>,
    /// A read's bytes: the block and the range asked for.
    bodies: Vec<Option<(Bytes, std::ops::Range<usize>)>>,
    bytes: usize,
}

impl Owed {
    fn push(&mut self, status: Status, len: u64, body: Option<(Bytes, std::ops::Range<usize>)>) {
        self.heads.push(Reply { status, len }.encode());
        self.bytes += REPLY_LEN + body.as_ref().map_or(0, |(_, r)| r.len());
        self.bodies.push(body);
    }

    async fn flush(&mut self, s: &mut TcpStream) -> std::io::Result<()> {
        let mut chunks: Vec<&[u8]> = Vec::with_capacity(2 * self.heads.len());
        for (head, body) in self.heads.iter().zip(&self.bodies) {
            chunks.push(head);
            if let Some((block, range)) = body {
                chunks.push(&block[range.clone()]);
            }
        }
        crate::vectored::write_all(s, &chunks, SERVER_IOV).await?;
        drop(chunks);
        self.heads.clear();
        self.bodies.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// Reads what has arrived into `buf`; when nothing has, first sends the
/// replies owed (the peer may be waiting for them), then waits for `need`
/// bytes (those it takes to make progress: never more than must come).
async fn read_some(
    s: &mut TcpStream,
    buf: &mut [u8],
    owed: &mut Owed,
    mark: &mut Lowat,
    need: usize,
) -> std::io::Result<usize> {
    match s.try_read(buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            owed.flush(s).await?;
            mark.expect(s, need)?;
            s.read(buf).await
        }
        other => other,
    }
}

/// [`read_some`] into a reservation's memory, given up (`None`, nothing
/// read) as soon as the reservation is cancelled: a writer that stalls
/// mid-block must not keep an aborted or expired reservation's memory, nor
/// write into it later.
async fn read_some_unless(
    s: &mut TcpStream,
    buf: &mut [u8],
    owed: &mut Owed,
    mark: &mut Lowat,
    need: usize,
    inbound: &Inbound,
) -> std::io::Result<Option<usize>> {
    loop {
        match s.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                owed.flush(s).await?;
                mark.expect(s, need)?;
                // Waiting for readiness can stop anywhere; a read cannot.
                tokio::select! {
                    ready = s.readable() => ready?,
                    _ = inbound.cancelled() => return Ok(None),
                }
            }
            other => return other.map(Some),
        }
    }
}

async fn serve_conn(mut s: TcpStream, r: Arc<dyn Resolver>) -> std::io::Result<()> {
    tune(&s)?;
    let mut ahead = Ahead::new();
    let mut owed = Owed::default();
    // After a write header its bytes follow: then read no further than the
    // next header, so that they land in the block and not in `ahead`.
    let mut after_write = false;
    let mut mark = Lowat::default();
    loop {
        // A peer that sends without reading its replies is held back by the
        // socket, not by memory here.
        if owed.bytes >= GATHER || owed.heads.len() >= SERVER_IOV / 2 {
            owed.flush(&mut s).await?;
        }
        if ahead.len() < REQUEST_LEN {
            let want = if after_write {
                REQUEST_LEN - ahead.len()
            } else {
                AHEAD
            };
            let need = REQUEST_LEN - ahead.len();
            let buf = ahead.spare(want);
            let n = read_some(&mut s, buf, &mut owed, &mut mark, need).await?;
            if n == 0 {
                owed.flush(&mut s).await?;
                return match ahead.len() {
                    0 => Ok(()),
                    _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
                };
            }
            ahead.end += n;
            continue;
        }
        let mut hdr = [0u8; REQUEST_LEN];
        hdr.copy_from_slice(&ahead.bytes()[..REQUEST_LEN]);
        ahead.consume(REQUEST_LEN);
        let req = match Request::decode(&hdr) {
            Ok(req) => req,
            Err(why) => {
                owed.push(Status::BadRequest, 0, None);
                owed.flush(&mut s).await?;
                return Err(std::io::Error::other(why));
            }
        };
        after_write = req.op == Op::Write;
        match req.op {
            Op::Write => {
                let ib = r.inbound(req.token);
                let mut claim = match ib.as_ref().map_or(Err(Status::UnknownToken), |ib| {
                    ib.claim(req.offset, req.len)
                }) {
                    Ok(c) => c,
                    Err(status) => {
                        // The refused bytes follow the header: read past them
                        // so the stream stays in step, then answer.
                        discard(&mut s, &mut ahead, &mut owed, &mut mark, req.len).await?;
                        owed.push(status, 0, None);
                        continue;
                    }
                };
                // Straight into the block's memory, hashed as it lands (in
                // cache). On error the claim drops and nothing counts as
                // written.
                let len = req.len as usize;
                let early = ahead.len().min(len);
                claim.buf()[..early].copy_from_slice(&ahead.bytes()[..early]);
                ahead.consume(early);
                let mut got = early;
                claim.absorb(got);
                let inbound = ib.as_deref().expect("claimed");
                while got < len && !inbound.is_cancelled() {
                    let end = (got + HASH_CHUNK).min(len);
                    let buf = &mut claim.buf()[got..end];
                    let read =
                        read_some_unless(&mut s, buf, &mut owed, &mut mark, len - got, inbound);
                    let Some(n) = read.await? else {
                        break; // aborted or expired meanwhile
                    };
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    got += n;
                    claim.absorb(got);
                }
                if got < len {
                    // The reservation ended while its bytes came: the claim
                    // and the region go now (nothing counts as written), the
                    // rest of the bytes are read past, and the write refused.
                    drop(claim);
                    drop(ib);
                    discard(&mut s, &mut ahead, &mut owed, &mut mark, (len - got) as u64).await?;
                    owed.push(Status::UnknownToken, 0, None);
                    continue;
                }
                claim.complete();
                owed.push(Status::Ok, req.len, None);
            }
            Op::Read => {
                let Some(block) = r.outbound(req.token) else {
                    return refuse_read(s, owed, Status::UnknownToken).await;
                };
                let range = req
                    .offset
                    .checked_add(req.len)
                    .filter(|end| *end <= block.len() as u64)
                    .map(|end| req.offset as usize..end as usize);
                let Some(range) = range else {
                    return refuse_read(s, owed, Status::OutOfRange).await;
                };
                owed.push(Status::Ok, req.len, Some((block, range)));
            }
        }
    }
}

/// Answers a read with a refusal and ends the connection: the replies owed
/// and the refusal go out, then the end of the stream, and what the peer
/// still sends is read and dropped until it closes (closing with unread
/// bytes would reset the connection and could lose the replies). The reader
/// of a batch then waits for every byte it asked for, not only those sure
/// to come if a later read were refused: it is woken by the end of the
/// stream.
async fn refuse_read(mut s: TcpStream, mut owed: Owed, status: Status) -> std::io::Result<()> {
    owed.push(status, 0, None);
    owed.flush(&mut s).await?;
    s.shutdown().await?;
    set_recv_lowat(&s, 1)?;
    let mut scratch = vec![0u8; 64 << 10];
    while s.read(&mut scratch).await? > 0 {}
    Ok(())
}

/// Bytes read into a block before they are hashed (they are still in the
/// CPU's cache).
const HASH_CHUNK: usize = 256 << 10;

/// Reads and drops `len` bytes (those read ahead first).
async fn discard(
    s: &mut TcpStream,
    ahead: &mut Ahead,
    owed: &mut Owed,
    mark: &mut Lowat,
    len: u64,
) -> std::io::Result<()> {
    let early = ahead.len().min(len as usize);
    ahead.consume(early);
    let mut len = len - early as u64;
    let mut scratch = vec![0u8; (64 << 10).min(len as usize)];
    while len > 0 {
        let n = (len as usize).min(scratch.len());
        let need = usize::try_from(len).unwrap_or(usize::MAX);
        let got = read_some(s, &mut scratch[..n], owed, mark, need).await?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        len -= got as u64;
    }
    Ok(())
}

/// Settings of a client's TCP data plane.
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    /// Parallel connections. Default: one per two cores, at least 1 and at
    /// most 4. The client takes the replies of all its connections on one
    /// task, so a connection more adds a sender on the server, not a
    /// reader here: on two cores, where the receive low-water mark
    /// (`RECV_LOWAT`) keeps one connection's wakeups few, a second
    /// connection's sender shares the cores with the first's and the
    /// client's reader, and one connection moved a fifth more.
    pub connections: usize,
    /// Blocks move in pieces of at most this size: a read's pieces spread
    /// over the connections, a write's stay on one connection, in order (so
    /// the server hashes the block as it arrives). Default 1 MiB.
    pub stripe: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        TcpOptions {
            connections: (cores / 2).clamp(1, 4),
            stripe: 1 << 20,
        }
    }
}

/// The client side of the TCP data port: a few connections, used together.
#[derive(Debug)]
pub struct TcpPlane {
    addr: SocketAddr,
    opts: TcpOptions,
    conns: Vec<tokio::sync::Mutex<Option<TcpStream>>>,
}

/// Most iovecs handed to one `writev` (the kernel's limit is 1024).
const MAX_IOV: usize = 64;

impl TcpPlane {
    /// Connects to the data port at `addr`.
    pub async fn connect(addr: SocketAddr, opts: TcpOptions) -> Result<TcpPlane, TransportError> {
        let n = opts.connections.max(1);
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(tokio::sync::Mutex::new(Some(dial(addr).await?)));
        }
        Ok(TcpPlane {
            addr,
            opts: TcpOptions {
                connections: n,
                stripe: opts.stripe.max(4096),
            },
            conns,
        })
    }

    /// The data port's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A write session over all the connections (locked in order, so
    /// sessions and reads of other tasks wait their turn): batches sent one
    /// after another, each one's replies read after the next is out.
    pub async fn writes(&self) -> TcpWrites<'_> {
        let mut lanes = Vec::with_capacity(self.conns.len());
        for slot in &self.conns {
            lanes.push(WriteLane {
                slot: slot.lock().await,
                stream: None,
                unconfirmed: std::collections::VecDeque::new(),
            });
        }
        TcpWrites {
            addr: self.addr,
            stripe: self.opts.stripe,
            lanes,
            broken: false,
        }
    }

    /// Sends one lane of reads on connection `i`.
    async fn lane_reads(
        &self,
        i: usize,
        mut lane: Vec<Piece<&mut [u8]>>,
    ) -> Result<(), TransportError> {
        let mut slot = self.conns[i].lock().await;
        let mut s = taken(&mut slot, self.addr).await?;
        let out = send_reads(&mut s, &mut lane).await;
        if out.is_ok() {
            *slot = Some(s);
        }
        out
    }
}

/// The stream in `slot`, taken out for one exchange (or a new one when
/// the slot is empty). The caller puts it back only when the exchange
/// completes: after an error, or an exchange given up half way (its future
/// dropped), the stream's position is unknown, and the slot stays empty
/// until the next exchange dials afresh.
async fn taken(
    slot: &mut Option<TcpStream>,
    addr: SocketAddr,
) -> Result<TcpStream, TransportError> {
    match slot.take() {
        Some(s) => Ok(s),
        None => dial(addr).await,
    }
}

async fn dial(addr: SocketAddr) -> Result<TcpStream, TransportError> {
    let s = TcpStream::connect(addr).await?;
    tune(&s)?;
    Ok(s)
}

/// One piece of a block: its token, offset in the block, and bytes.
struct Piece<B> {
    token: u64,
    offset: u64,
    buf: B,
}

/// Deals runs of pieces to `n` connections, each run whole to the
/// connection with the fewest bytes so far, keeping the runs' order.
fn deal<B>(
    runs: impl IntoIterator<Item = Vec<Piece<B>>>,
    n: usize,
    len: impl Fn(&B) -> usize,
) -> Vec<Vec<Piece<B>>> {
    let mut lanes: Vec<(usize, Vec<Piece<B>>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for run in runs {
        let lane = lanes
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("n >= 1");
        lane.0 += run.iter().map(|p| len(&p.buf).max(1)).sum::<usize>();
        lane.1.extend(run);
    }
    lanes.into_iter().map(|(_, v)| v).collect()
}

fn check_reply(b: &[u8; REPLY_LEN], want: u64) -> Result<(), TransportError> {
    let r = Reply::decode(b).map_err(TransportError::Protocol)?;
    if r.status != Status::Ok {
        return Err(TransportError::Refused(r.status));
    }
    if r.len != want {
        return Err(TransportError::Protocol(format!(
            "reply for {} bytes to a request of {want}",
            r.len
        )));
    }
    Ok(())
}

/// Sends write requests and their bytes; the replies are read later
/// ([`read_write_replies`]).
async fn send_writes(s: &mut TcpStream, pieces: &[Piece<&[u8]>]) -> Result<(), TransportError> {
    let headers: Vec<[u8; REQUEST_LEN]> = pieces
        .iter()
        .map(|p| {
            Request {
                op: Op::Write,
                token: p.token,
                offset: p.offset,
                len: p.buf.len() as u64,
            }
            .encode()
        })
        .collect();
    let mut group: Vec<&[u8]> = Vec::with_capacity(MAX_IOV);
    let mut bytes = 0;
    for (h, p) in headers.iter().zip(pieces) {
        if group.len() + 2 > MAX_IOV || bytes >= WRITE_BYTES {
            crate::vectored::write_all(s, &group, MAX_IOV).await?;
            group.clear();
            bytes = 0;
        }
        group.push(h);
        group.push(p.buf);
        bytes += h.len() + p.buf.len();
    }
    crate::vectored::write_all(s, &group, MAX_IOV).await?;
    Ok(())
}

/// A client's `writev` of write requests carries about this many bytes (a
/// request more once it is reached), the size the server's answers to
/// reads are gathered to ([`GATHER`]). Calls of 1-4 MiB moved 1 MiB puts
/// about a fifth faster than 32 MiB ones (a connection's whole share of a
/// put group), and 2 MiB suited 64 KiB blocks best.
const WRITE_BYTES: usize = 2 << 20;

/// Reads the replies to writes of `lens` bytes, all at once (they are
/// headers only), and checks them.
async fn read_write_replies(s: &mut TcpStream, lens: &[u64]) -> Result<(), TransportError> {
    let mut replies = vec![0u8; lens.len() * REPLY_LEN];
    s.read_exact(&mut replies).await?;
    for (rb, len) in replies.chunks_exact(REPLY_LEN).zip(lens) {
        check_reply(rb.try_into().expect("REPLY_LEN bytes"), *len)?;
    }
    Ok(())
}

async fn send_reads(
    s: &mut TcpStream,
    pieces: &mut [Piece<&mut [u8]>],
) -> Result<(), TransportError> {
    let mut headers = Vec::with_capacity(pieces.len() * REQUEST_LEN);
    for p in pieces.iter() {
        headers.extend_from_slice(
            &Request {
                op: Op::Read,
                token: p.token,
                offset: p.offset,
                len: p.buf.len() as u64,
            }
            .encode(),
        );
    }
    s.write_all(&headers).await?;
    // Straight into the caller's buffers, each reply's header and bytes and
    // those of the replies after it taken by one vectored read. A header is
    // checked once it is in; a refusal (no bytes follow it) means what came
    // after it was read into the wrong place: the whole read fails and the
    // connection is dropped.
    let mut heads = vec![[0u8; REPLY_LEN]; pieces.len()];
    // The first reply not yet in, and how much of it is.
    let (mut i, mut at) = (0usize, 0usize);
    // Bytes sure to come: the rest of every reply. After a refusal (a header
    // alone) the server sends nothing and closes, which wakes this reader
    // whatever its mark.
    let mut sure: usize = pieces.iter().map(|p| REPLY_LEN + p.buf.len()).sum();
    let mut mark = Lowat::default();
    while i < pieces.len() {
        let mut iov: Vec<IoSliceMut<'_>> = Vec::with_capacity(MAX_IOV);
        for (head, p) in heads[i..].iter_mut().zip(pieces[i..].iter_mut()) {
            if iov.len() + 2 > MAX_IOV {
                break;
            }
            let skip = if iov.is_empty() { at } else { 0 };
            if skip < REPLY_LEN {
                iov.push(IoSliceMut::new(&mut head[skip..]));
            }
            let body = &mut p.buf[skip.saturating_sub(REPLY_LEN)..];
            if !body.is_empty() {
                iov.push(IoSliceMut::new(body));
            }
        }
        let mut n = read_vectored(s, &mut iov, &mut mark, sure.min(READ_LOWAT)).await?;
        drop(iov);
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        sure -= n;
        while n > 0 {
            let whole = REPLY_LEN + pieces[i].buf.len();
            let take = n.min(whole - at);
            let head_done = at < REPLY_LEN && at + take >= REPLY_LEN;
            at += take;
            n -= take;
            if head_done {
                check_reply(&heads[i], pieces[i].buf.len() as u64)?;
            }
            if at == whole {
                (i, at) = (i + 1, 0);
            }
        }
    }
    // At rest a connection wakes its reader for any byte (the replies to
    // writes are a header each).
    mark.expect(s, 1)?;
    Ok(())
}

/// A reader waiting for a block's bytes (the server for a write, the client
/// for the replies to its reads) is woken once this many are in (or all
/// that must come, if fewer), not for each segment that arrives: 1 and
/// 4 MiB gets and puts moved a sixth to a fifth more with it (the server's
/// waits for data fell from about 4,000 a second to 1,000); 256 KiB gained
/// half as much, 4 MiB no more.
const RECV_LOWAT: usize = 1 << 20;

/// The client's mark while it waits for the replies to its reads, which
/// counts every byte of every reply as sure to come (a refused read ends
/// the connection): 64 KiB gets moved a third more than with a mark that
/// counted only the reply being read (which stayed near 64 KiB); larger
/// blocks the same.
const READ_LOWAT: usize = 512 << 10;

/// A socket's receive low-water mark, as last set.
struct Lowat(usize);

impl Default for Lowat {
    fn default() -> Self {
        Lowat(1)
    }
}

impl Lowat {
    /// Before a read waits: wake it once `bytes` are in (at most
    /// [`RECV_LOWAT`]). `bytes` must not exceed what is sure to come, or the
    /// wait lasts until the peer closes. A syscall only when the mark moves.
    fn expect(&mut self, s: &TcpStream, bytes: usize) -> std::io::Result<()> {
        let bytes = bytes.clamp(1, RECV_LOWAT);
        if self.0 != bytes {
            set_recv_lowat(s, bytes)?;
            self.0 = bytes;
        }
        Ok(())
    }
}

/// One vectored read of what has arrived, waiting, when nothing has, until
/// `sure` bytes (no more than must come) are in.
async fn read_vectored(
    s: &TcpStream,
    iov: &mut [IoSliceMut<'_>],
    mark: &mut Lowat,
    sure: usize,
) -> std::io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read_vectored(iov) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => mark.expect(s, sure)?,
            other => return other,
        }
    }
}

/// Sets the socket's receive low-water mark (`SO_RCVLOWAT`): readiness, and
/// the reader's wakeup, wait until that many bytes are in, the socket's
/// receive memory is nearly full, or the peer has closed. Setting it wakes
/// a reader at once if enough are in already.
fn set_recv_lowat(s: &TcpStream, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(bytes.max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `s` owns an open socket for the length of the call, and the
    // option value is a live c_int whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A run of write batches over a [`TcpPlane`]'s connections
/// ([`TcpPlane::writes`]): [`send`](TcpWrites::send) puts a batch's bytes
/// on the wire and returns, [`confirm`](TcpWrites::confirm) reads the
/// replies of the oldest batch not yet confirmed. Sending batch i + 1 before
/// confirming batch i keeps bytes moving while the server takes in the end
/// of batch i. [`finish`](TcpWrites::finish) hands the connections back
/// once every batch is confirmed; after an error, or when the session is
/// dropped with batches unconfirmed, the connections are closed (the
/// replies in flight would put them out of step) and the next user dials
/// afresh.
pub struct TcpWrites<'a> {
    addr: SocketAddr,
    stripe: usize,
    lanes: Vec<WriteLane<'a>>,
    /// An error happened: a batch may be half sent, so nothing more is
    /// sent or read, and no connection goes back.
    broken: bool,
}

/// One connection of a write session.
struct WriteLane<'a> {
    slot: tokio::sync::MutexGuard<'a, Option<TcpStream>>,
    /// Taken out of the slot on first use.
    stream: Option<TcpStream>,
    /// For each batch sent and not confirmed, the lengths of its pieces on
    /// this connection, in order.
    unconfirmed: std::collections::VecDeque<Vec<u64>>,
}

impl WriteLane<'_> {
    /// The connection, taken out of the slot (or dialled) on first use.
    async fn stream(&mut self, addr: SocketAddr) -> Result<&mut TcpStream, TransportError> {
        if self.stream.is_none() {
            self.stream = Some(taken(&mut self.slot, addr).await?);
        }
        Ok(self.stream.as_mut().expect("set above"))
    }
}

fn lost() -> TransportError {
    TransportError::Protocol("a write session failed: its connections are closed".into())
}

impl std::fmt::Debug for TcpWrites<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpWrites")
            .field("addr", &self.addr)
            .field("connections", &self.lanes.len())
            .finish()
    }
}

impl TcpWrites<'_> {
    /// Sends one batch: a block's pieces all go over one connection, in
    /// order, so the server can hash the block as it arrives (its checksum
    /// then costs no second pass); different blocks spread over the
    /// connections. Dealing the pieces of a block over two connections
    /// moved a tenth less here. An error leaves the session unusable.
    pub async fn send(&mut self, blocks: &[(Descriptor, &[u8])]) -> Result<(), TransportError> {
        check_lengths(Kind::Tcp, blocks.iter().map(|(d, b)| (d, b.len())))?;
        if self.broken {
            return Err(lost());
        }
        let mut runs = Vec::with_capacity(blocks.len());
        for (d, buf) in blocks {
            let mut run = Vec::new();
            let mut off = 0;
            loop {
                let end = (off + self.stripe).min(buf.len());
                run.push(Piece {
                    token: d.token,
                    offset: off as u64,
                    buf: &buf[off..end],
                });
                off = end;
                if off >= buf.len() {
                    break;
                }
            }
            runs.push(run);
        }
        let dealt = deal(runs, self.lanes.len(), |b| b.len());
        let addr = self.addr;
        let sends = self
            .lanes
            .iter_mut()
            .zip(dealt)
            .map(|(lane, pieces)| async move {
                if pieces.is_empty() {
                    lane.unconfirmed.push_back(Vec::new());
                    return Ok(());
                }
                lane.stream(addr).await?;
                lane.unconfirmed
                    .push_back(pieces.iter().map(|p| p.buf.len() as u64).collect());
                let s = lane.stream.as_mut().expect("taken above");
                send_writes(s, &pieces).await
            });
        let out = try_join_all(sends).await.map(|_| ());
        self.broken = out.is_err();
        out
    }

    /// Reads the replies of the oldest batch sent and not yet confirmed:
    /// `Ok` once the server holds all of its bytes. A refusal or an error
    /// leaves the session unusable.
    pub async fn confirm(&mut self) -> Result<(), TransportError> {
        if self.broken {
            return Err(lost());
        }
        let reads = self.lanes.iter_mut().map(|lane| async move {
            let lens = lane.unconfirmed.pop_front().unwrap_or_default();
            if lens.is_empty() {
                return Ok(());
            }
            let Some(s) = lane.stream.as_mut() else {
                return Err(lost());
            };
            read_write_replies(s, &lens).await
        });
        let out = try_join_all(reads).await.map(|_| ());
        self.broken = out.is_err();
        out
    }

    /// Hands the connections back for the next exchange, each only if all
    /// its batches were confirmed (else it is closed).
    pub fn finish(self) {
        if self.broken {
            return;
        }
        for mut lane in self.lanes {
            if lane.unconfirmed.iter().all(|b| b.is_empty()) {
                if let Some(s) = lane.stream.take() {
                    *lane.slot = Some(s);
                }
            }
        }
    }
}

impl DataPlane for TcpPlane {
    fn kind(&self) -> Kind {
        Kind::Tcp
    }

    /// One batch, sent and confirmed ([`TcpWrites`]).
    async fn write(&self, blocks: &[(Descriptor, &[u8])]) -> Result<(), TransportError> {
        let mut w = self.writes().await;
        w.send(blocks).await?;
        w.confirm().await?;
        w.finish();
        Ok(())
    }

    async fn read(&self, blocks: &mut [(Descriptor, &mut [u8])]) -> Result<(), TransportError> {
        check_lengths(Kind::Tcp, blocks.iter().map(|(d, b)| (d, b.len())))?;
        let stripe = self.opts.stripe;
        let mut pieces = Vec::new();
        for (d, buf) in blocks.iter_mut() {
            let mut rest: &mut [u8] = buf;
            let mut off = 0u64;
            loop {
                let take = stripe.min(rest.len());
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(take);
                pieces.push(Piece {
                    token: d.token,
                    offset: off,
                    buf: head,
                });
                off += take as u64;
                rest = tail;
                if rest.is_empty() {
                    break;
                }
            }
        }
        // Reads may split a block: each piece is dealt on its own.
        let runs = pieces.into_iter().map(|p| vec![p]);
        let lanes = deal(runs, self.conns.len(), |b| b.len());
        let lanes = lanes.into_iter().enumerate().filter(|(_, l)| !l.is_empty());
        try_join_all(lanes.map(|(i, lane)| self.lane_reads(i, lane))).await?;
        Ok(())
    }
}

impl From<frame::Status> for TransportError {
    fn from(s: frame::Status) -> Self {
        TransportError::Refused(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
