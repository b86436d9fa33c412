//! The framing of the TCP data port.
//!
//! A client sends requests, each a 32-byte header, and for a write the bytes
//! right after it; the server answers every request, in order, with a 16-byte
//! header, and for a read the bytes right after it. Requests may be pipelined.
//! All integers are little-endian.
//!
//! ```text
//! request:  "TPDQ" | op u8 | 0 u8 | 0 u16 | token u64 | offset u64 | len u64
//! reply:    "TPDA" | status u8 | 0 u8 | 0 u16 | len u64
//! ```
//!
//! `op` is 1 (write `len` bytes at `offset` of the reservation `token`) or 2
//! (read `len` bytes at `offset` of the located block `token`). A write's
//! reply carries the bytes written; a read's the bytes that follow. A refused
//! write's bytes are read and dropped before its reply, so the stream stays in
//! step. A refused read is answered (a header alone) and ends the
//! connection: the server sends nothing after it, so a reader of a batch can
//! count on every byte it asked for coming, or on the connection closing. A
//! malformed header is answered and the connection closed.

use std::fmt;

/// Size of a request header.
pub const REQUEST_LEN: usize = 32;
/// Size of a reply header.
pub const REPLY_LEN: usize = 16;
const REQUEST_MAGIC: &[u8; 4] = b"TPDQ";
const REPLY_MAGIC: &[u8; 4] = b"TPDA";

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Write into a reservation.
    Write = 1,
    /// Read from a located block.
    Read = 2,
}

/// One request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Write or read.
    pub op: Op,
    /// The descriptor's token.
    pub token: u64,
    /// Offset inside the block.
    pub offset: u64,
    /// Bytes to move.
    pub len: u64,
}

impl Request {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(REQUEST_MAGIC);
        b[4] = self.op as u8;
        b[8..16].copy_from_slice(&self.token.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses a header; `Err` says what is wrong with it.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request, String> {
        if &b[..4] != REQUEST_MAGIC {
            return Err(format!("bad request magic {:02x?}", &b[..4]));
        }
        let op = match b[4] {
            1 => Op::Write,
            2 => Op::Read,
            x => return Err(format!("unknown op {x}")),
        };
        if b[5..8] != [0, 0, 0] {
            return Err("reserved header bytes are not zero".into());
        }
        Ok(Request {
            op,
            token: u64_at(b, 8),
            offset: u64_at(b, 16),
            len: u64_at(b, 24),
        })
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// No reservation or located block has this token (never made,
    /// committed, aborted, released or expired).
    UnknownToken = 1,
    /// `offset + len` passes the end of the block.
    OutOfRange = 2,
    /// The range overlaps one already written or being written.
    Overlap = 3,
    /// The header was malformed.
    BadRequest = 4,
    /// The data port has as many connections as it takes; this one is
    /// closed.
    TooManyConnections = 5,
}

impl Status {
    fn from_u8(x: u8) -> Option<Status> {
        Some(match x {
            0 => Status::Ok,
            1 => Status::UnknownToken,
            2 => Status::OutOfRange,
            3 => Status::Overlap,
            4 => Status::BadRequest,
            5 => Status::TooManyConnections,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::UnknownToken => {
                "unknown token (never reserved, or committed, aborted, released or expired)"
            }
            Status::OutOfRange => "range outside the block",
            Status::Overlap => "range already written or being written",
            Status::BadRequest => "malformed request header",
            Status::TooManyConnections => "too many data connections",
        })
    }
}

/// One reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The outcome.
    pub status: Status,
    /// Bytes written, or bytes following (reads).
    pub len: u64,
}

impl Reply {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[..4].copy_from_slice(REPLY_MAGIC);
        b[4] = self.status as u8;
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses a header.
    pub fn decode(b: &[u8; REPLY_LEN]) -> Result<Reply, String> {
        if &b[..4] != REPLY_MAGIC {
            return Err(format!("bad reply magic {:02x?}", &b[..4]));
        }
        let status = Status::from_u8(b[4]).ok_or_else(|| format!("unknown status {}", b[4]))?;
        Ok(Reply {
            status,
            len: u64_at(b, 8),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn requests_round_trip(token: u64, offset: u64, len: u64, write: bool) {
            let r = Request { op: if write { Op::Write } else { Op::Read }, token, offset, len };
            prop_assert_eq!(Request::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn any_header_decodes_or_errs(bytes in proptest::array::uniform32(any::<u8>())) {
            let _ = Request::decode(&bytes);
        }
    }

    #[test]
    fn bad_headers_are_named() {
        let mut b = Request {
            op: Op::Read,
            token: 1,
            offset: 0,
            len: 4,
        }
        .encode();
        b[0] = b'X';
        assert!(Request::decode(&b).unwrap_err().contains("magic"));
        let mut b = Request {
            op: Op::Read,
            token: 1,
            offset: 0,
            len: 4,
        }
        .encode();
        b[4] = 9;
        assert!(Request::decode(&b).unwrap_err().contains("op"));
        let mut b = Request {
            op: Op::Read,
            token: 1,
            offset: 0,
            len: 4,
        }
        .encode();
        b[6] = 1;
        assert!(Request::decode(&b).is_err());
        let r = Reply {
            status: Status::Overlap,
            len: 7,
        };
        assert_eq!(Reply::decode(&r.encode()), Ok(r));
        let mut b = r.encode();
        b[4] = 200;
        assert!(Reply::decode(&b).is_err());
    }
}
