//! A list of keys that lives in one buffer.
//!
//! `KV.MATCH` carries a chain of hundreds of keys, and a prefix lookup only
//! reads them. Cutting each one out as its own `Bytes` costs two atomic
//! reference-count updates per key (perf put that at 12% of the server's CPU
//! under a load of 256-key matches), so the request's keys stay where they
//! arrived: the request buffer and the offsets of its arguments, or keys of one
//! size laid end to end.

use bytes::{Bytes, BytesMut};

/// Keys held in one shared buffer; iterating yields `&[u8]` without copying or
/// touching a reference count.
#[derive(Clone)]
pub struct KeyList {
    buf: Bytes,
    layout: Layout,
}

#[derive(Clone)]
enum Layout {
    /// (offset, length) of each key.
    Spans(Vec<(usize, usize)>),
    /// Keys of this many bytes (at least one), end to end.
    Fixed(usize),
}

impl KeyList {
    /// The keys at `spans` (offset, length) of `buf`.
    ///
    /// # Panics
    /// When a span lies outside `buf`.
    pub fn from_spans(buf: Bytes, spans: Vec<(usize, usize)>) -> Self {
        assert!(
            spans
                .iter()
                .all(|&(at, len)| at.checked_add(len).is_some_and(|end| end <= buf.len())),
            "key span outside its buffer"
        );
        KeyList {
            buf,
            layout: Layout::Spans(spans),
        }
    }

    /// `buf` cut into keys of `key_len` bytes each; `None` when `key_len` is 0
    /// or does not divide the buffer's length.
    pub fn fixed(buf: Bytes, key_len: usize) -> Option<Self> {
        (key_len > 0 && buf.len().is_multiple_of(key_len)).then_some(KeyList {
            buf,
            layout: Layout::Fixed(key_len),
        })
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        match &self.layout {
            Layout::Spans(s) => s.len(),
            Layout::Fixed(n) => self.buf.len() / n,
        }
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Key `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let (at, len) = match &self.layout {
            Layout::Spans(s) => *s.get(i)?,
            Layout::Fixed(n) => (i.checked_mul(*n).filter(|at| *at < self.buf.len())?, *n),
        };
        Some(&self.buf[at..at + len])
    }

    /// Key `i` as its own `Bytes` (a view of the shared buffer).
    pub fn bytes(&self, i: usize) -> Option<Bytes> {
        let k = self.get(i)?;
        Some(self.buf.slice_ref(k))
    }

    /// The keys, in order.
    pub fn iter(&self) -> Keys<'_> {
        Keys(match &self.layout {
            Layout::Spans(spans) => Walk::Spans(&self.buf, spans.iter()),
            Layout::Fixed(n) => Walk::Fixed(self.buf.chunks_exact(*n)),
        })
    }
}

impl<B: AsRef<[u8]>> FromIterator<B> for KeyList {
    /// Copies the keys into one new buffer.
    fn from_iter<I: IntoIterator<Item = B>>(iter: I) -> Self {
        let mut buf = BytesMut::new();
        let mut spans = Vec::new();
        for k in iter {
            let k = k.as_ref();
            spans.push((buf.len(), k.len()));
            buf.extend_from_slice(k);
        }
        KeyList {
            buf: buf.freeze(),
            layout: Layout::Spans(spans),
        }
    }
}

impl PartialEq for KeyList {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for KeyList {}

impl std::fmt::Debug for KeyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|k| String::from_utf8_lossy(k).into_owned()))
            .finish()
    }
}

impl<'a> IntoIterator for &'a KeyList {
    type Item = &'a [u8];
    type IntoIter = Keys<'a>;

    fn into_iter(self) -> Keys<'a> {
        self.iter()
    }
}

/// Iterator over a [`KeyList`].
#[derive(Clone)]
pub struct Keys<'a>(Walk<'a>);

#[derive(Clone)]
enum Walk<'a> {
    Spans(&'a [u8], std::slice::Iter<'a, (usize, usize)>),
    Fixed(std::slice::ChunksExact<'a, u8>),
}

impl<'a> Iterator for Keys<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match &mut self.0 {
            Walk::Spans(buf, spans) => spans.next().map(|&(at, len)| &buf[at..at + len]),
            Walk::Fixed(chunks) => chunks.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            Walk::Spans(_, spans) => spans.size_hint(),
            Walk::Fixed(chunks) => chunks.size_hint(),
        }
    }
}

impl ExactSizeIterator for Keys<'_> {}

impl DoubleEndedIterator for Keys<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Walk::Spans(buf, spans) => spans.next_back().map(|&(at, len)| &buf[at..at + len]),
            Walk::Fixed(chunks) => chunks.next_back(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_fixed_and_copied_lists_agree() {
        let buf = Bytes::from_static(b"xxaabbbcc");
        let spans = KeyList::from_spans(buf.clone(), vec![(2, 2), (4, 3), (7, 2)]);
        let copied: KeyList = ["aa", "bbb", "cc"].into_iter().collect();
        assert_eq!(spans, copied);
        assert_eq!(spans.len(), 3);
        assert_eq!(spans.get(1), Some(&b"bbb"[..]));
        assert_eq!(spans.get(3), None);
        assert_eq!(spans.bytes(2).unwrap(), Bytes::from_static(b"cc"));
        assert_eq!(spans.iter().next_back(), Some(&b"cc"[..]));

        let fixed = KeyList::fixed(Bytes::from_static(b"aabbcc"), 2).unwrap();
        assert_eq!(fixed.len(), 3);
        assert_eq!(
            fixed.iter().collect::<Vec<_>>(),
            vec![&b"aa"[..], b"bb", b"cc"]
        );
        assert_eq!(fixed.get(3), None);
        assert!(KeyList::fixed(Bytes::from_static(b"aab"), 2).is_none());
        assert!(KeyList::fixed(Bytes::from_static(b"aa"), 0).is_none());
        assert!(KeyList::fixed(Bytes::new(), 16).unwrap().is_empty());
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn a_span_past_the_buffer_is_refused() {
        KeyList::from_spans(Bytes::from_static(b"ab"), vec![(1, 2)]);
    }
}
