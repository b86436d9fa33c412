//! Writing a list of byte chunks (headers and uncopied values) with vectored
//! writes that may stop anywhere: the cursor says what is left.

use std::io::IoSlice;

use bytes::Bytes;

/// Most slices handed to one vectored write (Linux takes up to 1024).
const MAX_SLICES: usize = 64;

/// Position in a list of chunks being written.
#[derive(Debug)]
pub struct ChunkCursor<'a> {
    chunks: &'a [Bytes],
    idx: usize,
    off: usize,
}

impl<'a> ChunkCursor<'a> {
    /// A cursor at the start of `chunks`.
    pub fn new(chunks: &'a [Bytes]) -> Self {
        let mut c = ChunkCursor {
            chunks,
            idx: 0,
            off: 0,
        };
        c.skip_empty();
        c
    }

    fn skip_empty(&mut self) {
        while self.idx < self.chunks.len() && self.chunks[self.idx].len() == self.off {
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
        let mut v = Vec::with_capacity((self.chunks.len() - self.idx).min(MAX_SLICES));
        if self.is_done() {
            return v;
        }
        v.push(IoSlice::new(&self.chunks[self.idx][self.off..]));
        v.extend(
            self.chunks[self.idx + 1..]
                .iter()
                .filter(|c| !c.is_empty())
                .take(MAX_SLICES - 1)
                .map(|c| IoSlice::new(c)),
        );
        v
    }

    /// Moves past `n` written bytes.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 && !self.is_done() {
            let left = self.chunks[self.idx].len() - self.off;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        for step in 1..=9 {
            let mut out = Vec::new();
            let mut cur = ChunkCursor::new(&chunks);
            while !cur.is_done() {
                let flat: Vec<u8> = cur
                    .slices()
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
                assert!(!flat.is_empty());
                let n = step.min(flat.len());
                out.extend_from_slice(&flat[..n]);
                cur.advance(n);
            }
            assert_eq!(out, b"abcdefghi", "step {step}");
        }
        assert!(ChunkCursor::new(&[Bytes::new()]).is_done());
    }
}
