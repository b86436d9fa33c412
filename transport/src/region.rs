//! Server-side destinations of writes: a reservation's memory ([`Region`]),
//! and the bookkeeping of which ranges of it were written ([`Inbound`]).
//!
//! Several data connections may fill one reservation at once (a client
//! stripes a large block over its connections). Each write first *claims* its
//! range: a range that overlaps one written or being written is refused, so
//! no two writers ever touch the same bytes, and the reservation can be
//! sealed (handed to the store) only when every byte was written and no write
//! is in flight. A connection that drops mid-write releases its claim without
//! marking anything written.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use xxhash_rust::xxh3::Xxh3Default;

use crate::arena::{Arena, ArenaBlock};
use crate::frame::Status;

/// Memory for one block: in the shared arena, or on the heap when there is
/// no arena or it is full.
#[derive(Debug)]
pub enum Region {
    /// An arena allocation (readable by local clients over shm).
    Arena(ArenaBlock),
    /// A zeroed heap allocation.
    Heap(HeapBuf),
}

/// A heap allocation held as a raw pointer (writers reach it through raw
/// pointers while it is owned here, so it is never a live `Box` meanwhile).
#[derive(Debug)]
pub struct HeapBuf(std::ptr::NonNull<[u8]>);

// SAFETY: a plain owned allocation.
unsafe impl Send for HeapBuf {}
// SAFETY: shared access only reads through `Region`'s methods.
unsafe impl Sync for HeapBuf {}

impl HeapBuf {
    fn zeroed(len: usize) -> HeapBuf {
        let b: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        // SAFETY: Box::into_raw never returns null.
        HeapBuf(unsafe { std::ptr::NonNull::new_unchecked(Box::into_raw(b)) })
    }

    fn into_box(self) -> Box<[u8]> {
        let p = self.0;
        std::mem::forget(self);
        // SAFETY: made by Box::into_raw in `zeroed`, given back once.
        unsafe { Box::from_raw(p.as_ptr()) }
    }
}

impl Drop for HeapBuf {
    fn drop(&mut self) {
        // SAFETY: made by Box::into_raw in `zeroed`, freed once.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

impl Region {
    /// `len` bytes from `arena` when given and it has room, else the heap.
    pub fn alloc(arena: Option<&Arc<Arena>>, len: usize) -> Region {
        match arena.and_then(|a| a.alloc(len)) {
            Some(b) => Region::Arena(b),
            None => Region::Heap(HeapBuf::zeroed(len)),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Region::Arena(b) => b.len(),
            Region::Heap(b) => b.0.len(),
        }
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The arena offset, for arena regions.
    pub fn arena_offset(&self) -> Option<u64> {
        match self {
            Region::Arena(b) => Some(b.offset()),
            Region::Heap(_) => None,
        }
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            Region::Arena(b) => b.as_mut_ptr(),
            Region::Heap(b) => b.0.as_ptr() as *mut u8,
        }
    }

    /// The bytes, without a copy.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Region::Arena(b) => Bytes::from_owner(b),
            Region::Heap(b) => Bytes::from(b.into_box()),
        }
    }
}

/// The block's XXH3-64, computed while the bytes arrive (in cache) when they
/// arrive in order: a writer whose range starts where the hash stopped takes
/// the hasher along and hands it back when done. Any other order breaks it,
/// and the store hashes the block itself at commit.
enum Hashing {
    /// Hashed up to this offset; the hasher is here.
    Idle(u64, Box<Xxh3Default>),
    /// A claim has the hasher.
    Taken,
    /// Out of order, or not hashed at all: no checksum.
    Broken,
}

impl std::fmt::Debug for Hashing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hashing::Idle(upto, _) => write!(f, "Idle({upto})"),
            Hashing::Taken => f.write_str("Taken"),
            Hashing::Broken => f.write_str("Broken"),
        }
    }
}

#[derive(Debug)]
struct State {
    region: Option<Region>,
    /// Written ranges, sorted and merged.
    done: Vec<(u64, u64)>,
    /// Ranges being written.
    inflight: Vec<(u64, u64)>,
    hashing: Hashing,
}

/// A reservation being filled: its memory and what was written of it.
#[derive(Debug)]
pub struct Inbound {
    ptr: *mut u8,
    len: u64,
    state: Mutex<State>,
    /// Set when the reservation ended uncommitted (aborted, expired, its
    /// connection gone): no claim is granted after, and a writer waiting
    /// for more bytes gives its claim up at once ([`Inbound::cancelled`]).
    cancelled: std::sync::atomic::AtomicBool,
    cancel: tokio::sync::Notify,
}

// SAFETY: `ptr` points into the region owned by `state`, which is only given
// up by `seal` when no claim is live; claims hand out disjoint ranges only.
unsafe impl Send for Inbound {}
// SAFETY: as above.
unsafe impl Sync for Inbound {}

impl Inbound {
    /// Wraps a fresh region whose writer copies into it directly (shm,
    /// rdma): nothing is hashed on arrival.
    pub fn new(region: Region) -> Inbound {
        Self::with_hashing(region, false)
    }

    /// Wraps a fresh region filled through claims (tcp); with `hash`, bytes
    /// arriving in order are hashed as they land.
    pub fn with_hashing(mut region: Region, hash: bool) -> Inbound {
        Inbound {
            ptr: region.as_mut_ptr(),
            len: region.len() as u64,
            state: Mutex::new(State {
                region: Some(region),
                done: Vec::new(),
                inflight: Vec::new(),
                hashing: if hash {
                    Hashing::Idle(0, Box::new(Xxh3Default::new()))
                } else {
                    Hashing::Broken
                },
            }),
            cancelled: std::sync::atomic::AtomicBool::new(false),
            cancel: tokio::sync::Notify::new(),
        }
    }

    /// Ends the reservation uncommitted: later claims are refused, and
    /// writers waiting on [`Inbound::cancelled`] stop, so the memory goes
    /// back as soon as the last of them lets the region go and no late byte
    /// is written into it.
    pub fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::Release);
        self.cancel.notify_waiters();
    }

    /// Whether [`Inbound::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once the reservation is cancelled (at once if it was).
    pub async fn cancelled(&self) {
        let notified = self.cancel.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_cancelled() {
            return;
        }
        notified.await;
    }

    /// Length of the block.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.state.lock().done.iter().map(|(a, b)| b - a).sum()
    }

    /// Claims `[offset, offset + len)` for one writer.
    pub fn claim(&self, offset: u64, len: u64) -> Result<Claim<'_>, Status> {
        let end = offset.checked_add(len).ok_or(Status::OutOfRange)?;
        if end > self.len {
            return Err(Status::OutOfRange);
        }
        let mut st = self.state.lock();
        if st.region.is_none() || self.is_cancelled() {
            return Err(Status::UnknownToken);
        }
        let overlaps = |r: &(u64, u64)| len > 0 && r.0 < end && offset < r.1;
        if st.done.iter().any(overlaps) || st.inflight.iter().any(overlaps) {
            return Err(Status::Overlap);
        }
        st.inflight.push((offset, end));
        let hasher = match std::mem::replace(&mut st.hashing, Hashing::Broken) {
            Hashing::Idle(upto, h) if upto == offset => {
                st.hashing = Hashing::Taken;
                Some(h)
            }
            // An empty write changes nothing.
            keep if len == 0 => {
                st.hashing = keep;
                None
            }
            _ => None,
        };
        Ok(Claim {
            inbound: self,
            range: (offset, end),
            completed: false,
            hasher,
            hashed: 0,
        })
    }

    /// Whether every byte was written and no write is in flight.
    pub fn is_complete(&self) -> bool {
        let st = self.state.lock();
        st.inflight.is_empty() && covers(&st.done, self.len)
    }

    /// Takes the region out for the store, with the block's XXH3-64 when it
    /// was hashed on arrival. With `check`, only when every byte was written
    /// and no write is in flight (tcp); without, whenever no write is in
    /// flight (shm and rdma: the client wrote the memory itself). `Err` says
    /// what is missing; afterwards claims are refused.
    pub fn seal(&self, check: bool) -> Result<(Region, Option<u64>), String> {
        let mut st = self.state.lock();
        if !st.inflight.is_empty() {
            return Err(format!("{} writes still in flight", st.inflight.len()));
        }
        if check && !covers(&st.done, self.len) {
            let written: u64 = st.done.iter().map(|(a, b)| b - a).sum();
            return Err(format!("{written} of {} bytes written", self.len));
        }
        let region = st
            .region
            .take()
            .ok_or_else(|| "already sealed".to_string())?;
        let sum = match &st.hashing {
            Hashing::Idle(upto, h) if *upto == self.len => Some(h.digest()),
            _ => None,
        };
        Ok((region, sum))
    }
}

fn covers(done: &[(u64, u64)], len: u64) -> bool {
    len == 0 || (done.len() == 1 && done[0] == (0, len))
}

/// The right to write one range of an [`Inbound`]. Dropped without
/// [`Claim::complete`], nothing is marked written.
pub struct Claim<'a> {
    inbound: &'a Inbound,
    range: (u64, u64),
    completed: bool,
    hasher: Option<Box<Xxh3Default>>,
    /// Bytes of the range hashed so far.
    hashed: usize,
}

impl std::fmt::Debug for Claim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("range", &self.range)
            .field("hashing", &self.hasher.is_some())
            .finish()
    }
}

impl Claim<'_> {
    /// The claimed bytes.
    pub fn buf(&mut self) -> &mut [u8] {
        let (a, b) = self.range;
        // SAFETY: the range is inside the region, which cannot be sealed
        // while this claim is in flight, and no other claim overlaps it.
        unsafe {
            std::slice::from_raw_parts_mut(self.inbound.ptr.add(a as usize), (b - a) as usize)
        }
    }

    /// Says the first `upto` bytes of the range hold their final bytes, so
    /// they are hashed now, while still in cache (when this claim carries the
    /// block's hasher). Call as the bytes arrive; `complete` hashes the rest.
    pub fn absorb(&mut self, upto: usize) {
        let len = (self.range.1 - self.range.0) as usize;
        let upto = upto.min(len);
        if let Some(h) = &mut self.hasher {
            if upto > self.hashed {
                // SAFETY: inside the claimed range (see `buf`); these bytes
                // are final and only read here.
                let done = unsafe {
                    std::slice::from_raw_parts(
                        self.inbound.ptr.add(self.range.0 as usize + self.hashed),
                        upto - self.hashed,
                    )
                };
                h.update(done);
                self.hashed = upto;
            }
        }
    }

    /// Marks the range written.
    pub fn complete(mut self) {
        self.completed = true;
        let len = (self.range.1 - self.range.0) as usize;
        self.absorb(len);
        let hasher = self.hasher.take();
        let mut st = self.inbound.state.lock();
        if let (Some(h), Hashing::Taken) = (hasher, &st.hashing) {
            st.hashing = Hashing::Idle(self.range.1, h);
        }
        remove_range(&mut st.inflight, self.range);
        let at = st.done.partition_point(|r| r.0 < self.range.0);
        st.done.insert(at, self.range);
        // Merge touching neighbours.
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(st.done.len());
        for r in st.done.drain(..) {
            match merged.last_mut() {
                Some(last) if last.1 >= r.0 => last.1 = last.1.max(r.1),
                _ => merged.push(r),
            }
        }
        st.done = merged;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.completed {
            let mut st = self.inbound.state.lock();
            remove_range(&mut st.inflight, self.range);
            if self.hasher.is_some() {
                // Part of a range that will be written again was hashed.
                st.hashing = Hashing::Broken;
            }
        }
    }
}

fn remove_range(v: &mut Vec<(u64, u64)>, r: (u64, u64)) {
    if let Some(i) = v.iter().position(|x| *x == r) {
        v.swap_remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fill(ib: &Inbound, off: u64, len: u64, byte: u8) -> Result<(), Status> {
        let mut c = ib.claim(off, len)?;
        c.buf().fill(byte);
        c.complete();
        Ok(())
    }

    #[tokio::test]
    async fn a_cancelled_reservation_grants_no_claim_and_wakes_its_writer() {
        let ib = std::sync::Arc::new(Inbound::new(Region::alloc(None, 10)));
        let claim = ib.claim(0, 5).unwrap();
        let waiter = {
            let ib = ib.clone();
            tokio::spawn(async move { ib.cancelled().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        ib.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiting writer is woken")
            .unwrap();
        assert!(matches!(ib.claim(5, 5), Err(Status::UnknownToken)));
        drop(claim);
        // Waiting after the fact returns at once.
        ib.cancelled().await;
    }

    #[test]
    fn a_block_written_in_stripes_seals_with_its_bytes() {
        let ib = Inbound::new(Region::alloc(None, 10));
        fill(&ib, 5, 5, b'b').unwrap();
        assert!(!ib.is_complete());
        assert!(ib.seal(true).unwrap_err().contains("5 of 10"));
        fill(&ib, 0, 5, b'a').unwrap();
        assert!(ib.is_complete());
        let (region, sum) = ib.seal(true).unwrap();
        assert_eq!(sum, None, "written out of order: no checksum on arrival");
        let bytes = region.into_bytes();
        assert_eq!(&bytes[..], b"aaaaabbbbb");
        assert_eq!(ib.claim(0, 1).unwrap_err(), Status::UnknownToken);
        assert!(ib.seal(false).is_err());
    }

    #[test]
    fn overlaps_and_out_of_range_are_refused() {
        let ib = Inbound::new(Region::alloc(None, 10));
        assert_eq!(ib.claim(8, 3).unwrap_err(), Status::OutOfRange);
        assert_eq!(ib.claim(u64::MAX, 2).unwrap_err(), Status::OutOfRange);
        let held = ib.claim(2, 4).unwrap();
        assert_eq!(ib.claim(5, 1).unwrap_err(), Status::Overlap);
        assert!(ib.seal(false).unwrap_err().contains("in flight"));
        held.complete();
        assert_eq!(ib.claim(0, 3).unwrap_err(), Status::Overlap);
        assert!(ib.claim(0, 2).is_ok());
    }

    #[test]
    fn in_order_writes_are_hashed_on_arrival() {
        let ib = Inbound::with_hashing(Region::alloc(None, 10), true);
        let mut c = ib.claim(0, 6).unwrap();
        c.buf().copy_from_slice(b"tidepo");
        c.absorb(3);
        c.absorb(2); // going back is ignored
        c.complete();
        fill(&ib, 6, 0, 0).unwrap(); // empty writes do not break the order
        let mut c = ib.claim(6, 4).unwrap();
        c.buf().copy_from_slice(b"ol!!");
        c.complete();
        let (region, sum) = ib.seal(true).unwrap();
        assert_eq!(sum, Some(xxhash_rust::xxh3::xxh3_64(b"tidepool!!")));
        assert_eq!(&region.into_bytes()[..], b"tidepool!!");
        // A writer that drops mid-range breaks the hash, not the block.
        let ib = Inbound::with_hashing(Region::alloc(None, 4), true);
        let mut c = ib.claim(0, 4).unwrap();
        c.buf()[..2].copy_from_slice(b"xx");
        c.absorb(2);
        drop(c);
        fill(&ib, 0, 4, b'y').unwrap();
        let (region, sum) = ib.seal(true).unwrap();
        assert_eq!((sum, &region.into_bytes()[..]), (None, &b"yyyy"[..]));
        // Shm: nothing claimed, no checksum (the store computes it).
        let ib = Inbound::new(Region::alloc(None, 4));
        assert_eq!(ib.seal(false).unwrap().1, None);
    }

    #[test]
    fn a_dropped_claim_writes_nothing() {
        let ib = Inbound::new(Region::alloc(None, 4));
        drop(ib.claim(0, 4).unwrap());
        assert_eq!(ib.written(), 0);
        fill(&ib, 0, 4, 1).unwrap();
        assert!(ib.is_complete());
    }

    #[test]
    fn arena_regions_keep_their_offset() {
        let arena = Arena::new(1 << 16).unwrap();
        let r = Region::alloc(Some(&arena), 5000);
        assert_eq!(r.arena_offset(), Some(0));
        let r2 = Region::alloc(Some(&arena), 1 << 20);
        assert!(r2.arena_offset().is_none(), "too large for the arena: heap");
        let ib = Inbound::with_hashing(r, true);
        fill(&ib, 0, 5000, 7).unwrap();
        let (region, sum) = ib.seal(true).unwrap();
        assert_eq!(sum, Some(xxhash_rust::xxh3::xxh3_64(&[7u8; 5000])));
        let b = region.into_bytes();
        assert_eq!(arena.offset_of(&b), Some(0));
    }

    proptest! {
        // Any split of a block into pieces written in any order seals with
        // exactly the bytes written.
        #[test]
        fn any_stripes_in_any_order(cuts in proptest::collection::btree_set(1u64..200, 0..8), seed: u64) {
            let len = 200u64;
            let mut bounds: Vec<u64> = std::iter::once(0).chain(cuts).chain(std::iter::once(len)).collect();
            bounds.dedup();
            let mut pieces: Vec<(u64, u64)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
            let n = pieces.len();
            for i in 0..n { pieces.swap(i, (seed as usize).wrapping_add(i * 7) % n); }
            let ib = Inbound::with_hashing(Region::alloc(None, len as usize), true);
            for (i, (a, b)) in pieces.iter().enumerate() {
                prop_assert!(!ib.is_complete() || i == n);
                fill(&ib, *a, b - a, (*a % 251) as u8).unwrap();
            }
            prop_assert!(ib.is_complete());
            let (region, sum) = ib.seal(true).unwrap();
            let bytes = region.into_bytes();
            // A checksum from arrival, when there is one, is the block's.
            if let Some(sum) = sum {
                prop_assert_eq!(sum, xxhash_rust::xxh3::xxh3_64(&bytes));
            }
            for (a, b) in pieces {
                prop_assert!(bytes[a as usize..b as usize].iter().all(|x| *x == (a % 251) as u8));
            }
        }
    }
}
