//! The client's end of the data port: a batch spread over several
//! connections, pieces sent as vectored writes, replies read into the
//! caller's buffers.

use std::io::IoSliceMut;
use std::net::SocketAddr;

use futures_util::future::try_join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{tune, Lowat};
use crate::frame::{Op, Reply, Request, Status, REPLY_LEN, REQUEST_LEN};
use crate::{check_lengths, DataPlane, Descriptor, Kind, TransportError};

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
pub(super) struct Piece<B> {
    pub(super) token: u64,
    pub(super) offset: u64,
    pub(super) buf: B,
}

/// Deals runs of pieces to `n` connections, each run whole to the
/// connection with the fewest bytes so far, keeping the runs' order.
pub(super) fn deal<B>(
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
/// reads are gathered to (`GATHER`, server.rs). Calls of 1-4 MiB moved 1 MiB puts
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

/// The client's mark while it waits for the replies to its reads, which
/// counts every byte of every reply as sure to come (a refused read ends
/// the connection): 64 KiB gets moved a third more than with a mark that
/// counted only the reply being read (which stayed near 64 KiB); larger
/// blocks the same.
const READ_LOWAT: usize = 512 << 10;

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
