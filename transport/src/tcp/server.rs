//! The server's end of the data port: it reads a write's bytes straight
//! into the reservation and answers reads from the stored blocks, gathering
//! the answers into vectored writes.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{set_recv_lowat, tune, Lowat};
use crate::frame::{Op, Reply, Request, Status, REPLY_LEN, REQUEST_LEN};
use crate::region::Inbound;

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
