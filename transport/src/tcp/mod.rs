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

mod client;
mod server;

use tokio::net::TcpStream;

use crate::frame;
use crate::TransportError;

pub use client::{TcpOptions, TcpPlane, TcpWrites};
pub use server::{serve, Resolver};

/// Data connections keep the kernel's buffer autotuning (receive buffers
/// grow to `tcp_rmem`'s maximum): fixed 4 MiB buffers, which turn it off,
/// moved a few percent less.
pub(crate) fn tune(s: &TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)
}

/// A reader waiting for a block's bytes (the server for a write, the client
/// for the replies to its reads) is woken once this many are in (or all
/// that must come, if fewer), not for each segment that arrives: 1 and
/// 4 MiB gets and puts moved a sixth to a fifth more with it (the server's
/// waits for data fell from about 4,000 a second to 1,000); 256 KiB gained
/// half as much, 4 MiB no more.
pub(crate) const RECV_LOWAT: usize = 1 << 20;

/// A socket's receive low-water mark, as last set.
pub(crate) struct Lowat(usize);

impl Default for Lowat {
    fn default() -> Self {
        Lowat(1)
    }
}

impl Lowat {
    /// Before a read waits: wake it once `bytes` are in (at most
    /// [`RECV_LOWAT`]). `bytes` must not exceed what is sure to come, or the
    /// wait lasts until the peer closes. A syscall only when the mark moves.
    pub(crate) fn expect(&mut self, s: &TcpStream, bytes: usize) -> std::io::Result<()> {
        let bytes = bytes.clamp(1, RECV_LOWAT);
        if self.0 != bytes {
            set_recv_lowat(s, bytes)?;
            self.0 = bytes;
        }
        Ok(())
    }
}

/// Sets the socket's receive low-water mark (`SO_RCVLOWAT`): readiness, and
/// the reader's wakeup, wait until that many bytes are in, the socket's
/// receive memory is nearly full, or the peer has closed. Setting it wakes
/// a reader at once if enough are in already.
pub(crate) fn set_recv_lowat(s: &TcpStream, bytes: usize) -> std::io::Result<()> {
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

impl From<frame::Status> for TransportError {
    fn from(s: frame::Status) -> Self {
        TransportError::Refused(s)
    }
}

#[cfg(test)]
mod tests;
