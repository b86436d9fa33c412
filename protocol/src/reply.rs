//! Replies and their encoding in RESP2 and RESP3.
//!
//! One [`Reply`] value encodes in either protocol version: maps become flat
//! arrays, nulls become `$-1`/`*-1`, doubles become bulk strings, pushes become
//! arrays in RESP2. Large bulk values are never copied: [`OutBuf`] keeps them as
//! separate `Bytes` chunks for a vectored write of header + value.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CommandError;

/// Protocol version of a connection (changed by `HELLO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// RESP2, the default.
    #[default]
    Resp2,
    /// RESP3 after `HELLO 3`.
    Resp3,
}

impl Version {
    /// The number `HELLO` reports.
    pub fn number(self) -> i64 {
        match self {
            Version::Resp2 => 2,
            Version::Resp3 => 3,
        }
    }
}

/// A reply to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+text`.
    Simple(Cow<'static, str>),
    /// `-CODE message`.
    Error(CommandError),
    /// `:n`.
    Int(i64),
    /// `$len\r\nbytes`.
    Bulk(Bytes),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// A missing array: `*-1` in RESP2, `_` in RESP3.
    NullArray,
    /// `*n` followed by the elements.
    Array(Vec<Reply>),
    /// `%n` in RESP3; a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// `~n` in RESP3; an array in RESP2.
    Set(Vec<Reply>),
    /// `,x` in RESP3; a bulk string in RESP2.
    Double(f64),
    /// `=len\r\ntxt:...` in RESP3; a bulk string in RESP2.
    Verbatim(String),
    /// `>n` out-of-band message in RESP3; an array in RESP2.
    Push(Vec<Reply>),
}

impl Reply {
    /// `+OK`.
    pub const fn ok() -> Reply {
        Reply::Simple(Cow::Borrowed("OK"))
    }

    /// A simple string.
    pub fn simple(s: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Simple(s.into())
    }

    /// A bulk string copied from a `str` or byte slice.
    pub fn bulk(b: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(b.as_ref()))
    }

    /// A bulk string from a `'static` text.
    pub fn text(s: &'static str) -> Reply {
        Reply::Bulk(Bytes::from_static(s.as_bytes()))
    }

    /// An array of bulk strings.
    pub fn bulks<I: IntoIterator<Item = Bytes>>(items: I) -> Reply {
        Reply::Array(items.into_iter().map(Reply::Bulk).collect())
    }

    /// A map whose keys are static texts.
    pub fn map<I: IntoIterator<Item = (&'static str, Reply)>>(items: I) -> Reply {
        Reply::Map(
            items
                .into_iter()
                .map(|(k, v)| (Reply::text(k), v))
                .collect(),
        )
    }

    /// Encodes this reply for `version`.
    pub fn encode(&self, version: Version, out: &mut OutBuf) {
        match self {
            Reply::Simple(s) => out.line(b'+', s.as_bytes()),
            Reply::Error(e) => {
                let b = out.buf_mut();
                b.put_u8(b'-');
                b.put_slice(e.code.as_bytes());
                b.put_u8(b' ');
                // Error lines must not hold CR or LF.
                for &c in e.msg.as_bytes() {
                    b.put_u8(if c == b'\r' || c == b'\n' { b' ' } else { c });
                }
                b.put_slice(b"\r\n");
            }
            Reply::Int(n) => out.header(b':', *n),
            Reply::Bulk(b) => out.bulk_bytes(b),
            Reply::Null => match version {
                Version::Resp2 => out.buf_mut().put_slice(b"$-1\r\n"),
                Version::Resp3 => out.buf_mut().put_slice(b"_\r\n"),
            },
            Reply::NullArray => match version {
                Version::Resp2 => out.buf_mut().put_slice(b"*-1\r\n"),
                Version::Resp3 => out.buf_mut().put_slice(b"_\r\n"),
            },
            Reply::Array(items) => encode_seq(b'*', items, version, out),
            Reply::Set(items) => encode_seq(resp3_tag(version, b'~'), items, version, out),
            Reply::Push(items) => encode_seq(resp3_tag(version, b'>'), items, version, out),
            Reply::Map(pairs) => {
                match version {
                    Version::Resp3 => out.header(b'%', pairs.len() as i64),
                    Version::Resp2 => out.header(b'*', 2 * pairs.len() as i64),
                }
                for (k, v) in pairs {
                    k.encode(version, out);
                    v.encode(version, out);
                }
            }
            Reply::Double(d) => {
                let s = format_double(*d);
                match version {
                    Version::Resp3 => out.line(b',', s.as_bytes()),
                    Version::Resp2 => out.bulk(s.as_bytes()),
                }
            }
            Reply::Verbatim(s) => match version {
                Version::Resp3 => {
                    out.header(b'=', s.len() as i64 + 4);
                    let b = out.buf_mut();
                    b.put_slice(b"txt:");
                    b.put_slice(s.as_bytes());
                    b.put_slice(b"\r\n");
                }
                Version::Resp2 => out.bulk(s.as_bytes()),
            },
        }
    }
}

impl From<CommandError> for Reply {
    fn from(e: CommandError) -> Self {
        Reply::Error(e)
    }
}

/// `tag` in RESP3; RESP2 has only arrays.
fn resp3_tag(version: Version, tag: u8) -> u8 {
    match version {
        Version::Resp3 => tag,
        Version::Resp2 => b'*',
    }
}

fn encode_seq(tag: u8, items: &[Reply], version: Version, out: &mut OutBuf) {
    out.header(tag, items.len() as i64);
    for r in items {
        r.encode(version, out);
    }
}

fn format_double(d: f64) -> String {
    if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.to_string()
    } else if d.is_nan() {
        "nan".to_string()
    } else {
        format!("{d}")
    }
}

/// Bulk values at least this large are kept as their own chunk instead of being
/// copied into the output buffer.
pub const ZERO_COPY_MIN: usize = 16 * 1024;

/// Output of a connection: small replies accumulate in one buffer; large values
/// ride along as separate chunks, ready for one vectored write.
#[derive(Debug, Default)]
pub struct OutBuf {
    cur: BytesMut,
    chunks: Vec<Bytes>,
    len: usize,
}

impl OutBuf {
    /// An empty output buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.cur
    }

    fn line(&mut self, tag: u8, s: &[u8]) {
        self.cur.reserve(s.len() + 3);
        self.cur.put_u8(tag);
        self.cur.put_slice(s);
        self.cur.put_slice(b"\r\n");
    }

    fn header(&mut self, tag: u8, n: i64) {
        let mut f = itoa::Buffer::new();
        self.line(tag, f.format(n).as_bytes());
    }

    fn bulk(&mut self, b: &[u8]) {
        self.header(b'$', b.len() as i64);
        self.cur.put_slice(b);
        self.cur.put_slice(b"\r\n");
    }

    /// Appends a bulk string without copying it when it is large.
    pub fn bulk_bytes(&mut self, b: &Bytes) {
        if b.len() < ZERO_COPY_MIN {
            return self.bulk(b);
        }
        self.header(b'$', b.len() as i64);
        self.seal();
        self.len += b.len();
        self.chunks.push(b.clone());
        self.cur.put_slice(b"\r\n");
    }

    fn seal(&mut self) {
        if !self.cur.is_empty() {
            let part = self.cur.split().freeze();
            self.len += part.len();
            self.chunks.push(part);
        }
    }

    /// Appends raw, already-encoded bytes.
    pub fn raw(&mut self, b: &[u8]) {
        self.cur.put_slice(b);
    }

    /// True when nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.cur.is_empty() && self.chunks.is_empty()
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.len + self.cur.len()
    }

    /// Hands out everything written so far as chunks, in order, leaving this empty.
    pub fn take_chunks(&mut self) -> Vec<Bytes> {
        self.seal();
        self.len = 0;
        std::mem::take(&mut self.chunks)
    }

    /// The small-reply buffer, when no large chunk was queued: the common case of
    /// a batch of small replies, written with one plain write.
    pub fn single(&mut self) -> Option<&mut BytesMut> {
        if self.chunks.is_empty() {
            Some(&mut self.cur)
        } else {
            None
        }
    }
}

/// Encodes `reply` into a fresh contiguous buffer (for tests and small uses).
pub fn to_vec(reply: &Reply, version: Version) -> Vec<u8> {
    let mut out = OutBuf::new();
    reply.encode(version, &mut out);
    out.take_chunks()
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::resp3::{decode::complete::decode, types::OwnedFrame};

    #[test]
    fn resp2_encodings() {
        let r = Reply::Array(vec![
            Reply::ok(),
            Reply::Int(-7),
            Reply::bulk("a\r\nb"),
            Reply::Null,
            Reply::map([("k", Reply::Double(1.5))]),
            Reply::Error(CommandError::syntax()),
        ]);
        assert_eq!(
            to_vec(&r, Version::Resp2),
            b"*6\r\n+OK\r\n:-7\r\n$4\r\na\r\nb\r\n$-1\r\n*2\r\n$1\r\nk\r\n$3\r\n1.5\r\n-ERR syntax error\r\n"
        );
    }

    #[test]
    fn resp3_encodings_decode_with_redis_protocol() {
        let r = Reply::Array(vec![
            Reply::map([
                ("k", Reply::Double(1.5)),
                ("s", Reply::Set(vec![Reply::Int(1)])),
            ]),
            Reply::Null,
            Reply::Verbatim("hi".into()),
            Reply::Push(vec![Reply::text("message")]),
        ]);
        let wire = to_vec(&r, Version::Resp3);
        let (frame, used) = decode(&wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        match frame {
            OwnedFrame::Array { data, .. } => {
                assert!(matches!(data[0], OwnedFrame::Map { .. }));
                assert!(matches!(data[1], OwnedFrame::Null));
                assert!(matches!(data[2], OwnedFrame::VerbatimString { .. }));
                assert!(matches!(data[3], OwnedFrame::Push { .. }));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn large_bulks_are_separate_chunks() {
        let big = Bytes::from(vec![7u8; ZERO_COPY_MIN]);
        let mut out = OutBuf::new();
        out.raw(b"+OK\r\n");
        out.bulk_bytes(&big);
        assert!(out.single().is_none());
        assert_eq!(out.len(), 5 + 8 + ZERO_COPY_MIN + 2);
        let chunks = out.take_chunks();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].as_ptr(), big.as_ptr());
        assert!(out.is_empty());
    }
}
