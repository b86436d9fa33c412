//! io_uring engine: a dedicated I/O thread owns the ring; callers hand it
//! operations through a channel and block on their own reply channel, so no
//! async runtime worker ever waits on the device.
//!
//! Linux only; [`UringEngine::new`] fails where the kernel refuses io_uring
//! (old kernels, seccomp), and the caller falls back to [`super::PsyncEngine`].

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, SyncSender};

use io_uring::{opcode, types, IoUring};

use super::IoEngine;

/// Submission queue depth: operations in flight at once.
const DEPTH: u32 = 64;

/// Largest single read or write handed to the kernel (its length is a u32).
const MAX_CHUNK: usize = 1 << 30;

enum Kind {
    Read,
    Write,
    Sync,
}

/// One operation. The caller blocks on `done` until the thread answers, so the
/// buffer `ptr..ptr+len` outlives the operation.
struct Op {
    kind: Kind,
    fd: i32,
    ptr: *mut u8,
    len: usize,
    offset: u64,
    done: SyncSender<io::Result<()>>,
}

// SAFETY: the pointer is only dereferenced by the kernel while the submitting
// caller is blocked waiting for the reply, which keeps the buffer alive.
unsafe impl Send for Op {}

/// io_uring engine on a named I/O thread.
pub struct UringEngine {
    tx: SyncSender<Op>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UringEngine")
    }
}

impl UringEngine {
    /// Sets up a ring and its thread; an error when the kernel refuses io_uring.
    pub fn new() -> io::Result<UringEngine> {
        let ring = IoUring::new(DEPTH)?;
        let (tx, rx) = mpsc::sync_channel::<Op>(DEPTH as usize * 4);
        std::thread::Builder::new()
            .name("tidepool-uring".into())
            .spawn(move || run(ring, rx))?;
        Ok(UringEngine { tx })
    }

    fn submit(
        &self,
        kind: Kind,
        file: &File,
        ptr: *mut u8,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        let (done, wait) = mpsc::sync_channel(1);
        let op = Op {
            kind,
            fd: file.as_raw_fd(),
            ptr,
            len,
            offset,
            done,
        };
        self.tx
            .send(op)
            .map_err(|_| io::Error::other("io_uring thread is gone"))?;
        wait.recv()
            .map_err(|_| io::Error::other("io_uring thread is gone"))?
    }
}

impl IoEngine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        self.submit(
            Kind::Write,
            file,
            buf.as_ptr() as *mut u8,
            buf.len(),
            offset,
        )
    }

    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.submit(Kind::Read, file, buf.as_mut_ptr(), buf.len(), offset)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        self.submit(Kind::Sync, file, std::ptr::null_mut(), 0, 0)
    }
}

/// An operation in flight: how much of it is done so far.
struct InFlight {
    op: Op,
    done: usize,
}

fn entry(f: &InFlight, id: u64) -> io_uring::squeue::Entry {
    let fd = types::Fd(f.op.fd);
    let rest = (f.op.len - f.done).min(MAX_CHUNK) as u32;
    let offset = f.op.offset + f.done as u64;
    // SAFETY (of the pointer arithmetic): done <= len, within the caller's buffer.
    let ptr = f.op.ptr.wrapping_add(f.done);
    match f.op.kind {
        Kind::Read => opcode::Read::new(fd, ptr, rest).offset(offset).build(),
        Kind::Write => opcode::Write::new(fd, ptr, rest).offset(offset).build(),
        Kind::Sync => opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
    }
    .user_data(id)
}

fn run(mut ring: IoUring, rx: Receiver<Op>) {
    let mut slots: Vec<Option<InFlight>> = (0..DEPTH).map(|_| None).collect();
    let mut in_flight = 0usize;
    loop {
        // Block for work only when nothing is in flight.
        let first = if in_flight == 0 {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => return, // engine dropped
            }
        } else {
            None
        };
        let mut incoming: Vec<Op> = first.into_iter().collect();
        while in_flight + incoming.len() < DEPTH as usize {
            match rx.try_recv() {
                Ok(op) => incoming.push(op),
                Err(_) => break,
            }
        }
        for op in incoming {
            let id = slots.iter().position(|s| s.is_none()).expect("a free slot");
            let f = InFlight { op, done: 0 };
            let sqe = entry(&f, id as u64);
            slots[id] = Some(f);
            in_flight += 1;
            // SAFETY: the buffer stays valid until we answer the caller.
            unsafe { ring.submission().push(&sqe).expect("queue has room") };
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            for slot in slots.iter_mut() {
                if let Some(f) = slot.take() {
                    let _ = f.op.done.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
            in_flight = 0;
            continue;
        }
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (id, res) in cqes {
            let id = id as usize;
            let mut f = slots[id].take().expect("completion for a known slot");
            let outcome = if res < 0 {
                Some(Err(io::Error::from_raw_os_error(-res)))
            } else if matches!(f.op.kind, Kind::Sync) {
                Some(Ok(()))
            } else if res == 0 && f.done < f.op.len {
                Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short read or write at end of file",
                )))
            } else {
                f.done += res as usize;
                (f.done >= f.op.len).then_some(Ok(()))
            };
            match outcome {
                Some(r) => {
                    let _ = f.op.done.send(r);
                    in_flight -= 1;
                }
                None => {
                    // Short transfer: resubmit the rest.
                    let sqe = entry(&f, id as u64);
                    slots[id] = Some(f);
                    // SAFETY: as above.
                    unsafe { ring.submission().push(&sqe).expect("queue has room") };
                }
            }
        }
    }
}
