//! Vectored writes of a list of byte chunks that may stop anywhere: each
//! call hands the kernel as many chunks as one `writev` may take (up to a
//! cap), and a short write resumes where it stopped.
//!
//! PERFORMANCE CRITICAL: every reply of the RESP connections (headers and
//! uncopied values), every request the tcp data plane's client sends and
//! every answer its server gathers go out through [`write_all`].

use std::io::IoSlice;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The cap on slices a write that the RESP connections and the tcp data
/// plane's client use (the data plane's server gathers more: see `tcp`).
pub const SLICES: usize = 64;

/// Position in a list of chunks being written.
#[derive(Debug)]
pub struct ChunkCursor<'a, T> {
    chunks: &'a [T],
    idx: usize,
    off: usize,
    max_slices: usize,
}

impl<'a, T: AsRef<[u8]>> ChunkCursor<'a, T> {
    /// A cursor at the start of `chunks`, handing out at most `max_slices`
    /// slices a write (at least 1; Linux takes up to 1024).
    pub fn new(chunks: &'a [T], max_slices: usize) -> Self {
        let mut c = ChunkCursor {
            chunks,
            idx: 0,
            off: 0,
            max_slices: max_slices.max(1),
        };
        c.skip_empty();
        c
    }

    fn chunk(&self, i: usize) -> &'a [u8] {
        self.chunks[i].as_ref()
    }

    fn skip_empty(&mut self) {
        while self.idx < self.chunks.len() && self.chunk(self.idx).len() == self.off {
            self.idx += 1;
            self.off = 0;
        }
    }

    /// Whether everything was written.
    pub fn is_done(&self) -> bool {
        self.idx >= self.chunks.len()
    }

    /// What is left, as slices for the next vectored write (never empty
    /// unless `is_done`).
    pub fn slices(&self) -> Vec<IoSlice<'a>> {
        let left = self.chunks.len() - self.idx.min(self.chunks.len());
        let mut v = Vec::with_capacity(left.min(self.max_slices));
        if self.is_done() {
            return v;
        }
        v.push(IoSlice::new(&self.chunk(self.idx)[self.off..]));
        v.extend(
            self.chunks[self.idx + 1..]
                .iter()
                .map(|c| c.as_ref())
                .filter(|c| !c.is_empty())
                .take(self.max_slices - 1)
                .map(IoSlice::new),
        );
        v
    }

    /// Moves past `n` written bytes.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 && !self.is_done() {
            let left = self.chunk(self.idx).len() - self.off;
            if n < left {
                self.off += n;
                return;
            }
            n -= left;
            self.idx += 1;
            self.off = 0;
            self.skip_empty();
        }
        self.skip_empty();
    }
}

/// Writes every byte of `chunks` to `w`, in order, at most `max_slices`
/// chunks a call.
pub async fn write_all<W, T>(w: &mut W, chunks: &[T], max_slices: usize) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: AsRef<[u8]>,
{
    let mut cursor = ChunkCursor::new(chunks, max_slices);
    while !cursor.is_done() {
        let n = w.write_vectored(&cursor.slices()).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        cursor.advance(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let chunks: Vec<Bytes> = vec![
            Bytes::from_static(b""),
            Bytes::from_static(b"abc"),
            Bytes::from_static(b""),
            Bytes::from_static(b"defgh"),
            Bytes::from_static(b"i"),
            Bytes::from_static(b""),
        ];
        for max in [1, 2, 64] {
            for step in 1..=9 {
                let mut out = Vec::new();
                let mut cur = ChunkCursor::new(&chunks, max);
                while !cur.is_done() {
                    let slices = cur.slices();
                    assert!(!slices.is_empty() && slices.len() <= max);
                    let flat: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
                    let n = step.min(flat.len());
                    out.extend_from_slice(&flat[..n]);
                    cur.advance(n);
                }
                assert_eq!(out, b"abcdefghi", "step {step}, at most {max}");
            }
        }
        assert!(ChunkCursor::new(&[Bytes::new()], 8).is_done());
        assert!(ChunkCursor::<&[u8]>::new(&[], 8).is_done());
    }

    /// A writer taking at most a few bytes a call and at most two slices.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut n = 0;
            for b in bufs.iter().take(2) {
                let take = b.len().min(5 - n);
                self.0.extend_from_slice(&b[..take]);
                n += take;
                if n == 5 {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn short_writes_send_everything_in_order() {
        let chunks: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; (i % 7) as usize]).collect();
        let want: Vec<u8> = chunks.concat();
        for max in [1, 3, 512] {
            let mut w = Trickle(Vec::new());
            write_all(&mut w, &chunks, max).await.unwrap();
            assert_eq!(w.0, want, "at most {max}");
        }
    }
}
