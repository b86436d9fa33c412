//! tidepool's bulk data plane.
//!
//! Block bytes do not travel inside RESP bulk strings: a client asks the RESP
//! port for a *descriptor* (`KV.RESERVE` to write, `KV.LOCATE` to read), moves
//! the bytes over one of the transports here, and commits (`KV.COMMIT`) or
//! releases (`KV.RELEASE`). This crate owns the byte movement on both ends:
//!
//! - [`tcp`]: a data port separate from the RESP port, a small binary framing
//!   ([`frame`]), large vectored writes, several connections per client; the
//!   server reads straight into the block's final allocation.
//! - [`shm`]: for clients on the server's host. The DRAM arena ([`arena`]) is
//!   memfd memory handed to local clients over a Unix socket (SCM_RIGHTS);
//!   the client copies straight in and out of it: one copy, no socket.
//! - `rdma` (cargo feature `rdma`): RC queue pairs with one-sided READ and
//!   WRITE into registered memory, through rdma-sys.
//!
//! Nothing here knows about keys, tiers or RESP: the server maps the tokens of
//! descriptors to allocations through the [`tcp::Resolver`] trait.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

pub mod arena;
mod copiers;
pub mod frame;
pub mod region;
pub mod shm;
pub mod tcp;
pub mod vectored;

#[cfg(feature = "rdma")]
pub mod rdma;

pub use arena::{Arena, ArenaBlock};
pub use region::{Inbound, Region};

/// A transport a descriptor is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The TCP data port.
    Tcp,
    /// The shared-memory arena (same host only).
    Shm,
    /// RDMA one-sided READ/WRITE.
    Rdma,
}

impl Kind {
    /// The name used on the wire (`tcp`, `shm`, `rdma`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Shm => "shm",
            Kind::Rdma => "rdma",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = TransportError;
    fn from_str(s: &str) -> Result<Kind, TransportError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Kind::Tcp),
            "shm" => Ok(Kind::Shm),
            "rdma" => Ok(Kind::Rdma),
            _ => Err(TransportError::Protocol(format!(
                "unknown transport '{s}' (tcp, shm or rdma)"
            ))),
        }
    }
}

/// Where one block's bytes are to be written or read: what `KV.RESERVE` and
/// `KV.LOCATE` return for each block, as the RESP array
/// `[transport, offset, len, token]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Descriptor {
    /// The transport the descriptor is for.
    pub kind: Kind,
    /// Byte offset of the block in the server's arena (shm), its remote
    /// address (rdma), or 0 (tcp: the token names the block).
    pub offset: u64,
    /// Length of the block in bytes.
    pub len: u64,
    /// Names the reservation (for `KV.COMMIT`/`KV.ABORT` and the tcp framing)
    /// or the located block (tcp reads). For rdma it carries the remote key.
    pub token: u64,
}

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket, mapping or file operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the framing or answered something unexpected.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused one transfer (unknown token, range outside the
    /// block, a range written twice...).
    #[error("transfer refused: {0}")]
    Refused(frame::Status),
    /// The caller's buffer does not fit the descriptor.
    #[error("buffer of {got} bytes for a block of {want} bytes")]
    Length {
        /// The descriptor's length.
        want: u64,
        /// The buffer's length.
        got: usize,
    },
    /// The descriptor is for another transport, or points outside the
    /// shared arena.
    #[error("bad descriptor: {0}")]
    Descriptor(String),
    /// This transport cannot run here (no shared host, no RDMA device...).
    #[error("{0}")]
    Unavailable(String),
    /// A write into server memory was not started because the reservation
    /// it was for could have run out meanwhile (the server may then give
    /// that memory to another block).
    #[error("reservation window passed: {0}")]
    Expired(String),
}

/// Moving bytes between client buffers and server-side allocations named by
/// descriptors. One implementation per transport.
pub trait DataPlane: Send + Sync {
    /// The transport.
    fn kind(&self) -> Kind;

    /// Writes each buffer into the allocation its descriptor names. The
    /// buffers' lengths must equal the descriptors'.
    fn write(
        &self,
        blocks: &[(Descriptor, &[u8])],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Reads each located block into its buffer. The buffers' lengths must
    /// equal the descriptors'.
    fn read(
        &self,
        blocks: &mut [(Descriptor, &mut [u8])],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// Checks that every buffer has its descriptor's length and kind.
pub(crate) fn check_lengths<'a>(
    kind: Kind,
    pairs: impl Iterator<Item = (&'a Descriptor, usize)>,
) -> Result<(), TransportError> {
    for (d, len) in pairs {
        if d.kind != kind {
            return Err(TransportError::Descriptor(format!(
                "a {} descriptor given to the {} transport",
                d.kind, kind
            )));
        }
        if d.len != len as u64 {
            return Err(TransportError::Length {
                want: d.len,
                got: len,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in [Kind::Tcp, Kind::Shm, Kind::Rdma] {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            assert_eq!(k.as_str().to_uppercase().parse::<Kind>().unwrap(), k);
        }
        assert!("udp".parse::<Kind>().is_err());
    }
}
