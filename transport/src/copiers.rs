//! Threads that copy blocks into the shared arena, for shm puts.
//!
//! One thread copies at about a core's share of the memory bandwidth (on the
//! development VM 5-7 GB/s, where two threads copy 9-10 together), and a
//! copy made on the caller's task blocks its executor thread and leaves the
//! protocol around it (reservations, commits) in series with the bytes. So
//! a put hands each group of blocks to these threads ([`Copiers::submit`])
//! and gets on with the protocol while they copy; it awaits the group
//! ([`ShmWrite::finish`]) when it is ready to commit it, by which time the
//! next group is queued behind it.
//!
//! A job owns what it touches: the block (`Bytes`) and a handle on the
//! mapping, so it stays valid whatever the submitter does. What the
//! submitter must not do is let the server reuse a reserved range while a
//! copy into it may still run; dropping an [`ShmWrite`] therefore cancels
//! the blocks not started and waits for those under way (a block's copy at
//! most), and the put closes its connection (which frees the reservations)
//! only after that.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use memmap2::MmapRaw;
use parking_lot::{Condvar, Mutex};

use crate::TransportError;

/// One submitted group: its blocks and what the copies report.
struct Batch {
    map: Arc<MmapRaw>,
    /// (offset in the mapping, bytes), checked against the mapping.
    blocks: Vec<(usize, Bytes)>,
    sums: Vec<AtomicU64>,
    /// Blocks neither copied nor skipped yet.
    left: AtomicUsize,
    cancelled: AtomicBool,
    /// A copy panicked (a bug): the group fails rather than hang.
    failed: AtomicBool,
    /// No block's copy starts after this (see [`Copiers::submit`]).
    deadline: Option<Instant>,
    /// A block was not copied because the deadline had passed.
    late: AtomicBool,
    done: tokio::sync::Notify,
}

impl Batch {
    fn new(
        map: Arc<MmapRaw>,
        blocks: Vec<(usize, Bytes)>,
        sums: Vec<u64>,
        left: usize,
        deadline: Option<Instant>,
    ) -> Batch {
        Batch {
            map,
            blocks,
            sums: sums.into_iter().map(AtomicU64::new).collect(),
            left: AtomicUsize::new(left),
            cancelled: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            deadline,
            late: AtomicBool::new(false),
            done: tokio::sync::Notify::new(),
        }
    }

    /// Copies block `i` (unless cancelled) and counts it off, whatever
    /// happens.
    fn run(&self, i: usize) {
        let copy = std::panic::AssertUnwindSafe(|| self.copy(i));
        if std::panic::catch_unwind(copy).is_err() {
            self.failed.store(true, Ordering::Release);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    fn copy(&self, i: usize) {
        if self.cancelled.load(Ordering::Acquire) {
            return;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.late.store(true, Ordering::Release);
            return;
        }
        let (offset, src) = &self.blocks[i];
        // SAFETY: `submit`'s caller checked that the range is inside the
        // mapping, which `self.map` keeps alive; the range is reserved for
        // this put and no one else writes or reads it until the put
        // commits, which waits for `left` to reach 0 (and the reservation
        // still stands: no copy starts past the deadline the caller set
        // before it runs out).
        let sum = unsafe {
            tidepool_checksum::copy_checksummed_raw(src, self.map.as_mut_ptr().add(*offset))
        };
        self.sums[i].store(sum, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<(Arc<Batch>, usize)>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The copying threads of one shm plane; they end when it is dropped.
pub(crate) struct Copiers {
    shared: Arc<Shared>,
    threads: usize,
}

impl std::fmt::Debug for Copiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copiers")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Copiers {
    /// Starts `threads` copying threads (at least one).
    pub(crate) fn start(threads: usize) -> std::io::Result<Copiers> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        let threads = threads.max(1);
        let copiers = Copiers {
            shared: shared.clone(),
            threads,
        };
        for i in 0..threads {
            let shared = shared.clone();
            // On failure `copiers` drops, ending the threads started.
            std::thread::Builder::new()
                .name(format!("tidepool-shm-copy-{i}"))
                .spawn(move || work(&shared))?;
        }
        Ok(copiers)
    }

    /// Queues the copies of `blocks` (offset in `map`, bytes) and returns
    /// the handle that awaits them. The caller has checked every range
    /// against the mapping. No block's copy starts after `deadline`: those
    /// left then are skipped, and the group fails.
    pub(crate) fn submit(
        &self,
        map: Arc<MmapRaw>,
        blocks: Vec<(usize, Bytes)>,
        deadline: Option<Instant>,
    ) -> ShmWrite {
        let n = blocks.len();
        let batch = Arc::new(Batch::new(map, blocks, vec![0; n], n, deadline));
        if n > 0 {
            let mut q = self.shared.queue.lock();
            q.jobs.extend((0..n).map(|i| (batch.clone(), i)));
            drop(q);
            for _ in 0..n.min(self.threads) {
                self.shared.ready.notify_one();
            }
        }
        ShmWrite { batch }
    }
}

impl Drop for Copiers {
    fn drop(&mut self) {
        // Threads finish what is queued (every job holds its mapping), then
        // end.
        self.shared.queue.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

fn work(shared: &Shared) {
    loop {
        let (batch, i) = {
            let mut q = shared.queue.lock();
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                shared.ready.wait(&mut q);
            }
        };
        batch.run(i);
    }
}

/// The error of a group with a block whose copy was due to start past the
/// reservation's deadline (and was not made).
pub(crate) fn late() -> TransportError {
    TransportError::Expired(
        "a block's copy into the shm arena was due to start after its reservation's deadline, \
         and was not made"
            .into(),
    )
}

/// Copies of one group under way ([`crate::shm::ShmPlane::write_queued`]).
/// Dropped before [`ShmWrite::finish`] returns, it cancels the blocks not
/// started and waits, blocking, for the ones under way: after the drop no
/// byte of the group is written any more.
pub struct ShmWrite {
    batch: Arc<Batch>,
}

impl std::fmt::Debug for ShmWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmWrite")
            .field("blocks", &self.batch.blocks.len())
            .field("left", &self.batch.left.load(Ordering::Relaxed))
            .finish()
    }
}

impl ShmWrite {
    /// A group copied already (on the caller's thread), with its checksums.
    pub(crate) fn done(map: Arc<MmapRaw>, sums: Vec<u64>) -> ShmWrite {
        ShmWrite {
            batch: Arc::new(Batch::new(map, Vec::new(), sums, 0, None)),
        }
    }

    /// Waits until every block is in the arena; returns their checksums
    /// (XXH3-64, what `KV.COMMIT ... CHECKSUMS` takes), in order.
    pub async fn finish(self) -> Result<Vec<u64>, TransportError> {
        while self.batch.left.load(Ordering::Acquire) > 0 {
            // A wake-up sent between the load and here is kept as a permit.
            self.batch.done.notified().await;
        }
        if self.batch.failed.load(Ordering::Acquire) {
            return Err(TransportError::Protocol(
                "a copy into the shm arena panicked".into(),
            ));
        }
        if self.batch.late.load(Ordering::Acquire) {
            return Err(late());
        }
        Ok(self
            .batch
            .sums
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect())
    }
}

impl Drop for ShmWrite {
    fn drop(&mut self) {
        let b = &self.batch;
        if b.left.load(Ordering::Acquire) == 0 {
            return;
        }
        b.cancelled.store(true, Ordering::Release);
        // Skipped blocks count off at once; a block being copied takes at
        // most its copy time (a few ms for blocks of MiBs).
        while b.left.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_that_panics_fails_its_group_and_the_thread_goes_on() {
        let map = Arc::new(MmapRaw::from(
            memmap2::MmapOptions::new().len(1 << 16).map_anon().unwrap(),
        ));
        let copiers = Copiers::start(1).unwrap();
        // A job for a block the batch does not have: its copy panics.
        let batch = Arc::new(Batch::new(map.clone(), Vec::new(), vec![0], 1, None));
        copiers
            .shared
            .queue
            .lock()
            .jobs
            .push_back((batch.clone(), 0));
        copiers.shared.ready.notify_one();
        let e = ShmWrite { batch }.finish().await.unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        // The same thread copies the next group.
        let src = Bytes::from(vec![7u8; 5000]);
        let sums = copiers
            .submit(map.clone(), vec![(4096, src.clone())], None)
            .finish()
            .await
            .unwrap();
        assert_eq!(sums, [xxhash_rust::xxh3::xxh3_64(&src)]);
        // SAFETY: the copy is finished; nothing else touches the mapping.
        let back = unsafe { std::slice::from_raw_parts(map.as_ptr().add(4096), 5000) };
        assert_eq!(back, &src[..]);
    }
}
