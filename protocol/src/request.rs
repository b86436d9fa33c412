//! Request framing: turning the bytes a client sent into argument vectors.
//!
//! Clients send either a RESP array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`)
//! or, as `redis-benchmark`'s `PING_INLINE` and telnet users do, an inline line
//! (`PING\r\n`). Both RESP2 and RESP3 clients send requests in this one form; the
//! protocol version only changes replies.
//!
//! Every length a client declares is checked against [`Limits`] *before* anything
//! is allocated or waited for: a declared bulk of 10^11 bytes is refused at once
//! rather than buffered.
//!
//! Why not `redis-protocol`'s decoder here: requests are a strict subset of RESP
//! (one flat array of bulk strings), and the limit scan that must run first
//! already finds every argument's offsets. Decoding the frame a second time with
//! `redis-protocol` cost about 11% of server CPU under `redis-benchmark -P 16`
//! (perf, 2026-11-24), so arguments are cut straight out of the scanned buffer,
//! zero-copy. `redis-protocol` remains the reference decoder the tests check our
//! encoding against.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

/// The arguments of one request, name first. Most requests have few, kept inline.
pub type Args = SmallVec<[Bytes; 4]>;

use crate::error::ProtocolError;

/// Bounds on what one request may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string (one key or value), in bytes. Default: 512 MiB, as Redis's
    /// `proto-max-bulk-len`.
    pub max_bulk_len: u64,
    /// Most elements in one request array. Default: 1,048,576 (a KV.MPUT of half a
    /// million blocks).
    pub max_array_len: u64,
    /// Longest inline request or RESP header line, in bytes. Default: 64 KiB, as Redis.
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_array_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// What [`scan`] found at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed before anything can be said.
    Incomplete,
    /// The request is incomplete and needs at least this many bytes in all (a
    /// bulk string's declared length is known): read buffers can grow once.
    NeedBytes(usize),
    /// A complete RESP array request of this many bytes.
    Array(usize),
    /// A complete inline request whose line (without `\r\n`) has this length; the
    /// whole request, line ending included, takes `consumed` bytes.
    Inline {
        /// Length of the line's content.
        line: usize,
        /// Bytes to drop from the buffer, line ending included.
        consumed: usize,
    },
    /// A request that holds nothing (`*0\r\n`, `*-1\r\n`, a blank line): skip these bytes.
    Empty(usize),
}

/// Finds the end of the line starting at `start`, returning the index of its `\r`
/// (or of the `\n` when a bare `\n` ends it).
fn line_end(buf: &[u8], start: usize) -> Option<usize> {
    memchr::memchr(b'\n', &buf[start..]).map(|i| {
        let nl = start + i;
        if nl > start && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        }
    })
}

/// Parses a decimal header number (`-1`, `42`); `None` when it is not one.
fn parse_header_int(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let (neg, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as i64)?;
    }
    Some(if neg { -v } else { v })
}

/// The common bulk header, `$` and one to nine digits then `\r\n`, read
/// without a search for the line's end: (declared length, offset of the body).
/// `None` for anything else (longer, signed, incomplete, malformed), which the
/// general path then reads or refuses.
fn short_bulk_header(buf: &[u8], pos: usize) -> Option<(i64, usize)> {
    let mut len = 0i64;
    for (i, &c) in buf.get(pos + 1..)?.iter().take(10).enumerate() {
        match c {
            b'0'..=b'9' => len = len * 10 + i64::from(c - b'0'),
            b'\r' if i > 0 && buf.get(pos + 2 + i) == Some(&b'\n') => {
                return Some((len, pos + 3 + i));
            }
            _ => return None,
        }
    }
    None
}

/// Reads the bulk header at `pos` (`$<length>\r\n`): (declared length, offset
/// of the body), `None` while incomplete, or the error Redis gives.
fn bulk_header(
    buf: &[u8],
    pos: usize,
    limits: &Limits,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(end) = line_end(buf, pos + 1) else {
        if buf.len() - pos > limits.max_inline_len {
            return Err(ProtocolError::new("too big bulk count string"));
        }
        return Ok(None);
    };
    if buf[end] != b'\r' {
        return Err(ProtocolError::new("invalid bulk length"));
    }
    let len = parse_header_int(&buf[pos + 1..end])
        .ok_or_else(|| ProtocolError::new("invalid bulk length"))?;
    Ok(Some((len, end + 2)))
}

/// Checks the request at the front of `buf` against `limits`.
///
/// Returns how much of the buffer the next request takes, [`Scan::Incomplete`] when
/// more bytes are needed, or the protocol error Redis would give. Requests must be
/// arrays of bulk strings: a nested array or any other element type is refused at
/// once (`expected '$', got '*'`), which is also what bounds nesting depth. For a
/// complete array, `spans` receives the (offset, length) of each argument; it
/// grows only as arguments actually arrive, never by a declared count.
pub fn scan(
    buf: &[u8],
    limits: &Limits,
    spans: &mut Vec<(usize, usize)>,
) -> Result<Scan, ProtocolError> {
    scan_resuming(buf, limits, spans, &mut None)
}

/// Where the scan of an incomplete array stopped: its declared count and
/// the offset of its first element not yet scanned (those before it are in
/// the spans).
type Resume = Option<(i64, usize)>;

/// [`scan`] that picks up an incomplete array where the last call on the
/// same buffer stopped (`resume`, with the spans it left), so a request of
/// many arguments that arrives in many reads is scanned once in all, not
/// once per read: a million-argument request sent a few bytes at a time
/// would otherwise cost the server quadratic time.
fn scan_resuming(
    buf: &[u8],
    limits: &Limits,
    spans: &mut Vec<(usize, usize)>,
    resume: &mut Resume,
) -> Result<Scan, ProtocolError> {
    let (count, mut pos) = match resume.take() {
        Some(at) => at,
        None => match scan_array_header(buf, limits, spans)? {
            Ok(at) => at,
            Err(done) => return Ok(done),
        },
    };
    while spans.len() < count as usize {
        let stop = |resume: &mut Resume, scan| {
            *resume = Some((count, pos));
            Ok(scan)
        };
        if pos >= buf.len() {
            return stop(resume, Scan::Incomplete);
        }
        if buf[pos] != b'$' {
            return Err(ProtocolError::new(format!(
                "expected '$', got '{}'",
                char::from(buf[pos]).escape_default()
            )));
        }
        let found = match short_bulk_header(buf, pos) {
            Some(found) => found,
            None => match bulk_header(buf, pos, limits)? {
                Some(found) => found,
                None => return stop(resume, Scan::Incomplete),
            },
        };
        let (len, body) = found;
        if len < 0 || len as u64 > limits.max_bulk_len {
            return Err(ProtocolError::new("invalid bulk length"));
        }
        let len = len as usize;
        let after = body + len;
        if buf.len() < after + 2 {
            return stop(resume, Scan::NeedBytes(after + 2));
        }
        if &buf[after..after + 2] != b"\r\n" {
            return Err(ProtocolError::new("bulk string not terminated by CRLF"));
        }
        spans.push((body, len));
        pos = after + 2;
    }
    Ok(Scan::Array(pos))
}

/// The start of a request: `Ok((count, offset of the first element))` for
/// an array header, or `Err(scan)` for anything that ends the scan here.
fn scan_array_header(
    buf: &[u8],
    limits: &Limits,
    spans: &mut Vec<(usize, usize)>,
) -> Result<Result<(i64, usize), Scan>, ProtocolError> {
    spans.clear();
    if buf.is_empty() {
        return Ok(Err(Scan::Incomplete));
    }
    if buf[0] != b'*' {
        return scan_inline(buf, limits).map(Err);
    }
    let Some(end) = line_end(buf, 1) else {
        if buf.len() > limits.max_inline_len {
            return Err(ProtocolError::new("too big mbulk count string"));
        }
        return Ok(Err(Scan::Incomplete));
    };
    if buf[end] != b'\r' {
        return Err(ProtocolError::new("invalid multibulk length"));
    }
    let count = parse_header_int(&buf[1..end])
        .filter(|n| *n <= limits.max_array_len as i64)
        .ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
    let pos = end + 2;
    if count <= 0 {
        return Ok(Err(Scan::Empty(pos)));
    }
    Ok(Ok((count, pos)))
}

fn scan_inline(buf: &[u8], limits: &Limits) -> Result<Scan, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > limits.max_inline_len {
            return Err(ProtocolError::new("too big inline request"));
        }
        return Ok(Scan::Incomplete);
    };
    if nl > limits.max_inline_len {
        return Err(ProtocolError::new("too big inline request"));
    }
    let line = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    if buf[..line].iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(Scan::Empty(nl + 1));
    }
    Ok(Scan::Inline {
        line,
        consumed: nl + 1,
    })
}

/// Splits an inline request line into arguments the way Redis does: words
/// separated by spaces, `"double quoted"` strings with `\n`, `\xHH`-style escapes,
/// and `'single quoted'` strings.
pub fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let unbalanced = || ProtocolError::new("unbalanced quotes in request");
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let mut cur = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let c = *line.get(i).ok_or_else(unbalanced)?;
                    i += 1;
                    match c {
                        b'"' => break,
                        b'\\' => {
                            let e = *line.get(i).ok_or_else(unbalanced)?;
                            i += 1;
                            match e {
                                b'n' => cur.push(b'\n'),
                                b'r' => cur.push(b'\r'),
                                b't' => cur.push(b'\t'),
                                b'b' => cur.push(8),
                                b'a' => cur.push(7),
                                b'x' if i + 1 < line.len()
                                    && line[i].is_ascii_hexdigit()
                                    && line[i + 1].is_ascii_hexdigit() =>
                                {
                                    let hex = std::str::from_utf8(&line[i..i + 2]).unwrap_or("0");
                                    cur.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                                    i += 2;
                                }
                                other => cur.push(other),
                            }
                        }
                        other => cur.push(other),
                    }
                }
                if i < line.len() && !line[i].is_ascii_whitespace() {
                    return Err(unbalanced());
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let c = *line.get(i).ok_or_else(unbalanced)?;
                    i += 1;
                    match c {
                        b'\'' => break,
                        b'\\' if line.get(i) == Some(&b'\'') => {
                            cur.push(b'\'');
                            i += 1;
                        }
                        other => cur.push(other),
                    }
                }
                if i < line.len() && !line[i].is_ascii_whitespace() {
                    return Err(unbalanced());
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    cur.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(cur));
    }
    Ok(args)
}

/// Pulls whole requests out of a connection's read buffer.
#[derive(Debug, Default, Clone)]
pub struct RequestParser {
    limits: Limits,
    spans: Vec<(usize, usize)>,
    wanted: usize,
    /// Where the scan of the pending request stopped.
    resume: Resume,
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestParser {
            limits,
            spans: Vec::new(),
            wanted: 0,
            resume: None,
        }
    }

    /// The argument spans of the last array request returned, until the
    /// next call (the slow log reads a slow request's arguments back).
    pub fn last_spans(&self) -> &[(usize, usize)] {
        &self.spans
    }

    /// After `next` returned `Ok(None)`: how many bytes the buffer must hold for
    /// the pending request to make progress, when known (0 otherwise).
    pub fn wanted(&self) -> usize {
        self.wanted
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes the next complete request off the front of `buf`, its arguments
    /// as `Bytes` each.
    ///
    /// Between calls `buf` MUST only grow at its end (bytes appended, or the
    /// same bytes moved to a larger buffer): the scan of an incomplete
    /// request resumes where it stopped.
    ///
    /// `Ok(None)` means more bytes are needed (nothing was consumed). An error means
    /// the stream is broken: the caller MUST answer `-ERR Protocol error: ...` and
    /// close the connection, since its framing can no longer be trusted. Empty
    /// requests are skipped. Argument bytes are zero-copy views of `buf`.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Args>, ProtocolError> {
        Ok(self.next_frame(buf)?.map(Frame::into_args))
    }

    /// As [`next`](Self::next), leaving the arguments where they arrived: the
    /// caller reads them as slices and cuts out only the ones it keeps.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame<'_>>, ProtocolError> {
        loop {
            self.wanted = 0;
            match scan_resuming(buf, &self.limits, &mut self.spans, &mut self.resume)? {
                Scan::Incomplete => return Ok(None),
                Scan::NeedBytes(n) => {
                    self.wanted = n;
                    return Ok(None);
                }
                Scan::Empty(n) => {
                    let _ = buf.split_to(n);
                }
                Scan::Inline { line, consumed } => {
                    let raw = buf.split_to(consumed);
                    let args: Args = split_inline(&raw[..line])?.into();
                    if !args.is_empty() {
                        return Ok(Some(Frame::Inline(args)));
                    }
                }
                Scan::Array(n) => {
                    return Ok(Some(Frame::Array {
                        buf: buf.split_to(n).freeze(),
                        spans: &self.spans,
                    }));
                }
            }
        }
    }
}

/// One request as it arrived.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A RESP array: the request's bytes and the (offset, length) of each argument.
    Array {
        /// The whole request.
        buf: Bytes,
        /// Where each argument lies in `buf`.
        spans: &'a [(usize, usize)],
    },
    /// An inline request, split into words.
    Inline(Args),
}

impl Frame<'_> {
    /// How many arguments, the name included.
    pub fn len(&self) -> usize {
        match self {
            Frame::Array { spans, .. } => spans.len(),
            Frame::Inline(args) => args.len(),
        }
    }

    /// Whether there are no arguments (never, for a frame the parser returned).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first argument (the command's name).
    #[inline]
    pub fn name(&self) -> &[u8] {
        match self {
            Frame::Array { buf, spans } => spans.first().map_or(&[][..], |&(o, l)| &buf[o..o + l]),
            Frame::Inline(args) => args.first().map_or(&[][..], |a| &a[..]),
        }
    }

    /// Whether this is the start of an HTTP request (`POST`, or a `Host:`
    /// header line): a web page making the browser send a request to a local
    /// port, with RESP commands hidden in its body. Redis closes such a
    /// connection without running anything of it, and so must we.
    #[inline]
    pub fn is_cross_protocol(&self) -> bool {
        let name = self.name();
        // One byte decides for almost every request (this runs for each).
        matches!(name.first(), Some(b'P' | b'p' | b'H' | b'h'))
            && (name.eq_ignore_ascii_case(b"post") || name.eq_ignore_ascii_case(b"host:"))
    }

    /// Argument `i`.
    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        match self {
            Frame::Array { buf, spans } => spans.get(i).map(|&(at, len)| &buf[at..at + len]),
            Frame::Inline(args) => args.get(i).map(|a| &a[..]),
        }
    }

    /// The arguments as `Bytes` each (views of the request's buffer).
    pub fn into_args(self) -> Args {
        match self {
            Frame::Array { mut buf, spans } => {
                let Some((&(at, len), first)) = spans.split_last() else {
                    return Args::new();
                };
                let mut args: Args = first
                    .iter()
                    .map(|&(at, len)| buf.slice(at..at + len))
                    .collect();
                // The last argument takes the request's own reference: one
                // reference count less to take and give back per request.
                buf.truncate(at + len);
                bytes::Buf::advance(&mut buf, at);
                args.push(buf);
                args
            }
            Frame::Inline(args) => args,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(args) = p.next(&mut buf)? {
            out.push(args.into_iter().map(|b| b.to_vec()).collect());
        }
        Ok(out)
    }

    #[test]
    fn array_and_inline_requests() {
        let got = parse_all(
            b"*2\r\n$3\r\nGET\r\n$3\r\na\0b\r\nPING\r\n\r\n*0\r\nset k \"v\\x41\\n\" 'x y'\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                vec![b"GET".to_vec(), b"a\0b".to_vec()],
                vec![b"PING".to_vec()],
                vec![
                    b"set".to_vec(),
                    b"k".to_vec(),
                    b"vA\n".to_vec(),
                    b"x y".to_vec()
                ],
            ]
        );
    }

    #[test]
    fn incomplete_waits_and_consumes_nothing() {
        let mut p = RequestParser::default();
        for cut in [1, 3, 5, 10, 14, 20] {
            let full = b"*2\r\n$3\r\nGET\r\n$3\r\nabc\r\n";
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(p.next(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut);
            if cut >= 20 {
                assert_eq!(p.wanted(), full.len(), "the pending bulk's length is known");
            }
        }
    }

    #[test]
    fn limits_refuse_before_buffering() {
        let mut p = RequestParser::default();
        let cases: &[(&[u8], &str)] = &[
            (b"*1\r\n$100000000000\r\n", "invalid bulk length"),
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (b"*1\r\n$abc\r\n", "invalid bulk length"),
            (b"*99999999999\r\n", "invalid multibulk length"),
            (b"*x\r\n", "invalid multibulk length"),
            (b"*1\r\n*1\r\n*1\r\n", "expected '$', got '*'"),
            (
                b"*1\r\n$3\r\nabcde\r\n",
                "bulk string not terminated by CRLF",
            ),
            (b"GET \"abc\r\n", "unbalanced quotes in request"),
        ];
        for (input, want) in cases {
            let mut buf = BytesMut::from(*input);
            let err = p.next(&mut buf).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("Protocol error: {want}"),
                "{input:?}"
            );
        }
        let mut long = BytesMut::from(&vec![b'a'; 70 * 1024][..]);
        assert!(p.next(&mut long).is_err());
        let mut header = BytesMut::from(&b"*"[..]);
        header.extend_from_slice(&vec![b'1'; 70 * 1024]);
        assert!(p.next(&mut header).is_err());
    }

    #[test]
    fn configured_bulk_limit() {
        let mut p = RequestParser::new(Limits {
            max_bulk_len: 4,
            ..Limits::default()
        });
        let mut ok = BytesMut::from(&b"*1\r\n$4\r\nabcd\r\n"[..]);
        assert!(p.next(&mut ok).unwrap().is_some());
        let mut big = BytesMut::from(&b"*1\r\n$5\r\n"[..]);
        assert!(p.next(&mut big).is_err());
    }

    proptest! {
        #[test]
        fn encoded_arrays_round_trip(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..8), split in 0usize..400) {
            let mut wire = format!("*{}\r\n", args.len()).into_bytes();
            for a in &args {
                wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                wire.extend_from_slice(a);
                wire.extend_from_slice(b"\r\n");
            }
            let mut p = RequestParser::default();
            let split = split.min(wire.len());
            let mut buf = BytesMut::from(&wire[..split]);
            let first = p.next(&mut buf).unwrap();
            if split < wire.len() {
                prop_assert!(first.is_none());
                buf.extend_from_slice(&wire[split..]);
            }
            let got = match first { Some(g) => g, None => p.next(&mut buf).unwrap().unwrap() };
            prop_assert_eq!(got.into_iter().map(|b| b.to_vec()).collect::<Vec<_>>(), args);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn requests_arriving_in_any_pieces_parse_as_when_whole(
            reqs in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 1..6), 1..4),
            cuts in prop::collection::vec(1usize..30, 1..40),
        ) {
            let mut wire = Vec::new();
            for args in &reqs {
                wire.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
                for a in args {
                    wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                    wire.extend_from_slice(a);
                    wire.extend_from_slice(b"\r\n");
                }
            }
            // Fed a few bytes at a time, the scan resumes where it stopped;
            // what comes out is what whole requests give.
            let mut p = RequestParser::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < wire.len() {
                let n = cuts[i % cuts.len()].min(wire.len() - at);
                i += 1;
                buf.extend_from_slice(&wire[at..at + n]);
                at += n;
                while let Some(args) = p.next(&mut buf).unwrap() {
                    got.push(args.into_iter().map(|b| b.to_vec()).collect::<Vec<_>>());
                }
            }
            prop_assert_eq!(got, reqs);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn the_short_bulk_header_reads_as_the_general_one(
            digits in prop::collection::vec(prop::sample::select(b"0123456789".to_vec()), 0..12),
            tail in prop::collection::vec(prop::sample::select(b"0-+\r\nx".to_vec()), 0..3),
            crlf in any::<bool>(),
        ) {
            let mut buf = b"$".to_vec();
            buf.extend_from_slice(&digits);
            if crlf {
                buf.extend_from_slice(b"\r\n");
            }
            buf.extend_from_slice(&tail);
            if let Some(fast) = short_bulk_header(&buf, 0) {
                let general = bulk_header(&buf, 0, &Limits::default());
                prop_assert_eq!(general.ok(), Some(Some(fast)), "{:?}", String::from_utf8_lossy(&buf));
            }
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            let mut p = RequestParser::default();
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..64 {
                match p.next(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
