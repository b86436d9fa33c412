//! Shared memory for clients on the server's host.
//!
//! The server listens on a Unix socket; to each client that connects it sends
//! one hello message carrying the arena's memfd (SCM_RIGHTS), the arena's id
//! and its size, then closes. The client maps the memfd and from then on
//! copies block bytes straight into and out of the arena at the offsets that
//! `KV.RESERVE` and `KV.LOCATE` descriptors give: one copy, no socket.
//!
//! The client checks the id against the one the server reported over RESP,
//! so a socket path that belongs to another server (or a stale file) is never
//! used by mistake.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use memmap2::MmapRaw;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::arena::Arena;
use crate::copiers::Copiers;
pub use crate::copiers::ShmWrite;
use crate::{check_lengths, DataPlane, Descriptor, Kind, TransportError};

const HELLO_MAGIC: &[u8; 4] = b"TPSH";
const HELLO_VERSION: u32 = 1;
const HELLO_LEN: usize = 24;

fn hello(arena: &Arena) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[..4].copy_from_slice(HELLO_MAGIC);
    b[4..8].copy_from_slice(&HELLO_VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&arena.id().to_le_bytes());
    b[16..24].copy_from_slice(&arena.size().to_le_bytes());
    b
}

/// Hands the arena to every client that connects to `listener`, until the
/// task is dropped.
pub async fn serve(listener: tokio::net::UnixListener, arena: Arc<Arena>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Err(e) = send_arena(&stream, &arena).await {
                    tracing::debug!("shm hello failed: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("shm socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn send_arena(stream: &tokio::net::UnixStream, arena: &Arena) -> std::io::Result<()> {
    let msg = hello(arena);
    let fds = [arena.fd().as_raw_fd()];
    loop {
        stream.writable().await?;
        let iov = [std::io::IoSlice::new(&msg)];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        match sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) if n == HELLO_LEN => return Ok(()),
            Ok(n) => return Err(std::io::Error::other(format!("short hello ({n} bytes)"))),
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A Unix socket listener for the arena at `path` with file mode `mode`
/// (whoever may open the socket may map the arena read-write), replacing a
/// stale socket file left by an earlier run. A socket that a live server
/// answers on is left alone (`AddrInUse`).
///
/// The mode must not follow the umask (under umask 000 the socket would be
/// 0777), nor may a chmod after the bind leave a window when it does: the
/// socket is bound under a temporary name, given its mode, and renamed into
/// place.
pub fn bind(path: &Path, mode: u32) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another server answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Connects to a shm socket and receives the arena it hands over: the memfd
/// (sealed against any change of size), the arena's id and its size.
pub fn receive_arena(path: &Path) -> Result<(File, u64, u64), TransportError> {
    let stream = UnixStream::connect(path)
        .map_err(|e| TransportError::Unavailable(format!("shm socket {}: {e}", path.display())))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut buf = [0u8; HELLO_LEN];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (n, fd) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut fd = None;
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: the kernel just installed this descriptor for us.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        (msg.bytes, fd)
    };
    if n != HELLO_LEN || &buf[..4] != HELLO_MAGIC {
        return Err(TransportError::Protocol(format!(
            "bad shm hello ({n} bytes) from {}",
            path.display()
        )));
    }
    let version = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if version != HELLO_VERSION {
        return Err(TransportError::Protocol(format!(
            "shm hello version {version}, expected {HELLO_VERSION}"
        )));
    }
    let id = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let size = u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"));
    let fd = fd.ok_or_else(|| TransportError::Protocol("shm hello without a memfd".into()))?;
    Ok((File::from(fd), id, size))
}

/// The client side: the server's arena mapped into this process.
#[derive(Debug)]
pub struct ShmPlane {
    map: Arc<MmapRaw>,
    size: u64,
    id: u64,
    path: PathBuf,
    /// Reads copy with streaming stores ([`ShmPlane::with_streaming_reads`]).
    stream_reads: bool,
    /// Threads for [`ShmPlane::write_queued`] (0: none).
    copy_threads: usize,
    /// Started by the first [`ShmPlane::write_queued`]; `None` copies on
    /// the caller's thread.
    copiers: std::sync::OnceLock<Option<Copiers>>,
}

impl ShmPlane {
    /// Connects to the server's shm socket, receives its arena and maps it.
    /// `expect_id` is the arena id the server reported over RESP; a different
    /// id means the socket belongs to another server.
    pub fn connect(path: &Path, expect_id: u64) -> Result<ShmPlane, TransportError> {
        let (file, id, size) = receive_arena(path)?;
        if id != expect_id {
            return Err(TransportError::Unavailable(format!(
                "the shm socket {} belongs to another server (arena {id:x}, expected {expect_id:x})",
                path.display()
            )));
        }
        let real = file.metadata()?.len();
        if real < size {
            return Err(TransportError::Protocol(format!(
                "arena memfd of {real} bytes, announced {size}"
            )));
        }
        let map = Arc::new(MmapRaw::map_raw(&file)?);
        Ok(ShmPlane {
            map,
            size,
            id,
            path: path.to_owned(),
            stream_reads: false,
            copy_threads: 0,
            copiers: std::sync::OnceLock::new(),
        })
    }

    /// Whether reads copy into the caller's buffers with stores that bypass
    /// the cache ([`tidepool_checksum::copy_streaming`]). Faster when the
    /// buffers are not in cache (a batch of blocks bound for a GPU or a
    /// large host pool: a quarter to a third more at 1 and 4 MiB in
    /// `tidepool-bench data`), slower (about 10%) when the same buffers are
    /// reused while still in cache, and the CPU that reads the blocks next
    /// finds them in memory, not in cache. Writes into the arena always
    /// stream: the server does not read them back. Default: false.
    pub fn with_streaming_reads(mut self, on: bool) -> ShmPlane {
        self.stream_reads = on;
        self
    }

    /// Copies the blocks of [`ShmPlane::write_queued`] on `threads` threads
    /// (started by its first call), so that the caller's task goes on with
    /// the protocol while they copy; 0 (the default) copies on the caller's
    /// thread, as does a plane whose threads could not be started. More
    /// than one copy at a time moves more where one core cannot take a
    /// machine's memory bandwidth: on the 2-core development VM one
    /// thread's memcpy ran at 5-6 GB/s and two threads' at 9-10 together.
    pub fn with_copy_threads(mut self, threads: usize) -> ShmPlane {
        self.copy_threads = threads;
        self.copiers = std::sync::OnceLock::new();
        self
    }

    /// Threads that copy the blocks of [`ShmPlane::write_queued`] (0: the
    /// caller's).
    pub fn copy_threads(&self) -> usize {
        self.copy_threads
    }

    /// The arena's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The arena's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The socket this plane came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn at(&self, d: &Descriptor) -> Result<*mut u8, TransportError> {
        let end = d.offset.checked_add(d.len);
        if end.is_none_or(|e| e > self.size) {
            return Err(TransportError::Descriptor(format!(
                "[{}, +{}) is outside the arena of {} bytes",
                d.offset, d.len, self.size
            )));
        }
        // SAFETY: inside the mapping, checked above.
        Ok(unsafe { self.map.as_mut_ptr().add(d.offset as usize) })
    }

    /// Copies `buf` into the arena at `d` (synchronously).
    pub fn write_one(&self, d: &Descriptor, buf: &[u8]) -> Result<(), TransportError> {
        check_lengths(Kind::Shm, std::iter::once((d, buf.len())))?;
        let p = self.at(d)?;
        // SAFETY: the range is inside the mapping; the server reserved it
        // for this client and reads it only after KV.COMMIT.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), p, buf.len()) };
        Ok(())
    }

    /// Copies `buf` into the arena at `d` (synchronously) and returns its
    /// checksum, computed on the way ([`tidepool_checksum`]): what
    /// `KV.COMMIT ... CHECKSUMS` hands the server, so it need not read the
    /// block again.
    pub fn write_one_checksummed(&self, d: &Descriptor, buf: &[u8]) -> Result<u64, TransportError> {
        check_lengths(Kind::Shm, std::iter::once((d, buf.len())))?;
        let p = self.at(d)?;
        // SAFETY: as in `write_one`; the client's buffer is not in the
        // arena's reserved range, so the two do not overlap.
        Ok(unsafe { tidepool_checksum::copy_checksummed_raw(buf, p) })
    }

    /// Queues the copies of `blocks` into the arena on the plane's copying
    /// threads ([`ShmPlane::with_copy_threads`]; without them, copies now)
    /// and returns the handle that awaits them and gives their checksums.
    /// Every descriptor is checked first: nothing is queued if one is
    /// wrong. No block's copy starts after `deadline` (set it before the
    /// server's reservation runs out: past that the server may give the
    /// range to another block); then the group fails with
    /// [`TransportError::Expired`].
    pub fn write_queued(
        &self,
        blocks: Vec<(Descriptor, Bytes)>,
        deadline: Option<std::time::Instant>,
    ) -> Result<ShmWrite, TransportError> {
        check_lengths(Kind::Shm, blocks.iter().map(|(d, b)| (d, b.len())))?;
        for (d, _) in &blocks {
            self.at(d)?;
        }
        let copiers = self.copiers.get_or_init(|| match self.copy_threads {
            0 => None,
            n => Copiers::start(n)
                .inspect_err(|e| {
                    tracing::warn!("shm copy threads not started ({e}): copying inline")
                })
                .ok(),
        });
        match copiers {
            Some(c) => Ok(c.submit(
                self.map.clone(),
                blocks
                    .into_iter()
                    .map(|(d, b)| (d.offset as usize, b))
                    .collect(),
                deadline,
            )),
            None => {
                let sums = blocks
                    .iter()
                    .map(|(d, b)| {
                        if deadline.is_some_and(|t| std::time::Instant::now() >= t) {
                            return Err(crate::copiers::late());
                        }
                        self.write_one_checksummed(d, b)
                    })
                    .collect::<Result<Vec<u64>, _>>()?;
                Ok(ShmWrite::done(self.map.clone(), sums))
            }
        }
    }

    /// Copies the block at `d` into `buf` (synchronously).
    pub fn read_one(&self, d: &Descriptor, buf: &mut [u8]) -> Result<(), TransportError> {
        check_lengths(Kind::Shm, std::iter::once((d, buf.len())))?;
        let p = self.at(d)?;
        // SAFETY: inside the mapping; the block is leased, so the server
        // neither frees nor reuses it while the lease lives.
        unsafe {
            if self.stream_reads {
                tidepool_checksum::copy_streaming_raw(p, buf)
            } else {
                std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len())
            }
        };
        Ok(())
    }
}

// SAFETY: the mapping is plain shared memory; all access goes through
// copies into and out of ranges the server handed to this client.
unsafe impl Send for ShmPlane {}
// SAFETY: as above.
unsafe impl Sync for ShmPlane {}

impl DataPlane for ShmPlane {
    fn kind(&self) -> Kind {
        Kind::Shm
    }

    async fn write(&self, blocks: &[(Descriptor, &[u8])]) -> Result<(), TransportError> {
        for (d, b) in blocks {
            self.write_one(d, b)?;
        }
        Ok(())
    }

    async fn read(&self, blocks: &mut [(Descriptor, &mut [u8])]) -> Result<(), TransportError> {
        for (d, b) in blocks.iter_mut() {
            self.read_one(d, b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tp-shm-{}-{name}.sock", std::process::id()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_maps_the_servers_arena() {
        let arena = Arena::new(1 << 20).unwrap();
        let path = sock("map");
        let l = bind(&path, 0o600).unwrap();
        tokio::spawn(serve(l, arena.clone()));
        let plane = {
            let (p, id) = (path.clone(), arena.id());
            tokio::task::spawn_blocking(move || ShmPlane::connect(&p, id))
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(plane.size(), arena.size());
        let blk = arena.alloc(5).unwrap();
        let d = Descriptor {
            kind: Kind::Shm,
            offset: blk.offset(),
            len: 5,
            token: 1,
        };
        plane.write(&[(d, b"hello")]).await.unwrap();
        assert_eq!(blk.as_ref(), b"hello");
        // A block long enough for the vector path, with its checksum.
        let long: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let big = arena.alloc(long.len()).unwrap();
        let bd = Descriptor {
            offset: big.offset(),
            len: long.len() as u64,
            ..d
        };
        let sum = plane.write_one_checksummed(&bd, &long).unwrap();
        assert_eq!(big.as_ref(), &long[..]);
        assert_eq!(sum, xxhash_rust::xxh3::xxh3_64(&long));
        // Read back plainly and with streaming stores.
        let mut back = vec![0u8; long.len()];
        plane.read_one(&bd, &mut back).unwrap();
        assert_eq!(back, long);
        let plane = plane.with_streaming_reads(true);
        let mut back = vec![0u8; long.len() + 1];
        plane.read_one(&bd, &mut back[1..]).unwrap();
        assert_eq!(&back[1..], &long[..]);
        assert!(matches!(
            plane.write_one_checksummed(&bd, &long[1..]),
            Err(TransportError::Length { .. })
        ));
        let mut out = [0u8; 5];
        plane.read(&mut [(d, &mut out[..])]).await.unwrap();
        assert_eq!(&out, b"hello");
        // Out of the arena, wrong length, wrong kind: refused.
        let far = Descriptor {
            offset: arena.size() - 2,
            ..d
        };
        assert!(matches!(
            plane.write_one(&far, b"hello"),
            Err(TransportError::Descriptor(_))
        ));
        assert!(matches!(
            plane.write_one(&d, b"hi"),
            Err(TransportError::Length { .. })
        ));
        let tcp = Descriptor {
            kind: Kind::Tcp,
            ..d
        };
        assert!(matches!(
            plane.write_one(&tcp, b"hello"),
            Err(TransportError::Descriptor(_))
        ));
        let wrap = Descriptor {
            offset: u64::MAX - 1,
            ..d
        };
        assert!(plane.write_one(&wrap, b"hello").is_err());
        // Another id: refused before mapping.
        let p = path.clone();
        let e = tokio::task::spawn_blocking(move || ShmPlane::connect(&p, 42))
            .await
            .unwrap();
        assert!(matches!(e, Err(TransportError::Unavailable(_))));
        std::fs::remove_file(&path).unwrap();
    }

    /// A plane on `arena`, with `threads` copying threads.
    async fn plane_on(arena: &Arc<Arena>, name: &str, threads: usize) -> ShmPlane {
        let path = sock(name);
        let l = bind(&path, 0o600).unwrap();
        tokio::spawn(serve(l, arena.clone()));
        let id = arena.id();
        let plane = tokio::task::spawn_blocking(move || {
            let p = ShmPlane::connect(&path, id);
            std::fs::remove_file(&path).unwrap();
            p
        })
        .await
        .unwrap()
        .unwrap();
        plane.with_copy_threads(threads)
    }

    fn pattern(len: usize, seed: usize) -> Bytes {
        (0..len)
            .map(|i| (i.wrapping_mul(seed | 1) >> 3) as u8)
            .collect::<Vec<_>>()
            .into()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_copies_land_with_their_checksums() {
        let arena = Arena::new(64 << 20).unwrap();
        for threads in [0, 1, 3] {
            let plane = plane_on(&arena, &format!("queued{threads}"), threads).await;
            // Sizes around the short-copy and vector-width edges.
            let sizes = [1, 100, 4095, 4096, 4097, 65_536 + 13, 300 << 10, 1 << 20];
            let mut held = Vec::new();
            let mut blocks = Vec::new();
            for (i, &len) in sizes.iter().cycle().take(40).enumerate() {
                let a = arena.alloc(len).unwrap();
                let d = Descriptor {
                    kind: Kind::Shm,
                    offset: a.offset(),
                    len: len as u64,
                    token: i as u64,
                };
                held.push(a);
                blocks.push((d, pattern(len, i + threads)));
            }
            let sums = plane
                .write_queued(blocks.clone(), None)
                .unwrap()
                .finish()
                .await
                .unwrap();
            assert_eq!(sums.len(), blocks.len());
            for (i, ((_, want), a)) in blocks.iter().zip(&held).enumerate() {
                assert_eq!(a.as_ref(), &want[..], "{threads} threads, block {i}");
                assert_eq!(sums[i], xxhash_rust::xxh3::xxh3_64(want), "block {i}");
            }
            // One wrong descriptor: nothing of the batch is copied.
            let fresh = arena.alloc(5000).unwrap();
            let good = Descriptor {
                offset: fresh.offset(),
                len: 5000,
                ..blocks[0].0
            };
            let outside = Descriptor {
                offset: arena.size() - 10,
                len: 5000,
                ..good
            };
            let bad = vec![(good, pattern(5000, 1)), (outside, pattern(5000, 2))];
            assert!(matches!(
                plane.write_queued(bad, None),
                Err(TransportError::Descriptor(_))
            ));
            let short = vec![(good, pattern(4999, 1))];
            assert!(matches!(
                plane.write_queued(short, None),
                Err(TransportError::Length { .. })
            ));
            assert!(fresh.as_ref().iter().all(|&b| b == 0));
        }
    }

    /// `n` ranges of the arena, as a reservation would hand out, each to
    /// be written with `data`: the ranges (kept to look at) and the blocks.
    fn reserve_like(
        arena: &Arc<Arena>,
        n: u64,
        data: &Bytes,
    ) -> (Vec<crate::arena::ArenaBlock>, Vec<(Descriptor, Bytes)>) {
        (0..n)
            .map(|token| {
                let a = arena.alloc(data.len()).unwrap();
                let d = Descriptor {
                    kind: Kind::Shm,
                    offset: a.offset(),
                    len: data.len() as u64,
                    token,
                };
                (a, (d, data.clone()))
            })
            .unzip()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_queued_write_writes_nothing_after_the_drop() {
        let arena = Arena::new(256 << 20).unwrap();
        let plane = plane_on(&arena, "dropped", 2).await;
        let len = 1 << 20;
        for round in 0..4 {
            let data = pattern(len, round);
            let (held, blocks) = reserve_like(&arena, 32, &data);
            let w = plane.write_queued(blocks.clone(), None).unwrap();
            // Give the copies a moment to start (more each round).
            std::thread::sleep(std::time::Duration::from_micros(300 * round as u64));
            drop(w);
            // Once the drop returns, the ranges are the put's no more: mark
            // them, and no late copy may overwrite the marks.
            let mark = Bytes::from(vec![0xA5u8; len]);
            for (d, _) in &blocks {
                plane.write_one(d, &mark).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            for (i, a) in held.iter().enumerate() {
                assert!(a.as_ref() == &mark[..], "round {round} block {i}");
            }
        }
    }

    /// No block's copy starts past the deadline: with one already past,
    /// nothing is written; with one that passes during the group, the
    /// blocks after it are left as they were. Either way the group fails
    /// with `Expired`. On the copying threads and inline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_copy_starts_past_the_reservations_deadline() {
        let arena = Arena::new(256 << 20).unwrap();
        for threads in [0, 1, 3] {
            let plane = plane_on(&arena, &format!("deadline-{threads}"), threads).await;
            let len = 1 << 20;
            let data = pattern(len, threads + 5);
            let (held, blocks) = reserve_like(&arena, 32, &data);
            // Ranges may be reused from the round before: mark them.
            let mark = Bytes::from(vec![0xA5u8; len]);
            for (d, _) in &blocks {
                plane.write_one(d, &mark).unwrap();
            }
            let untouched = |a: &crate::arena::ArenaBlock| a.as_ref() == &mark[..];
            let now = std::time::Instant::now();
            let past = plane
                .write_queued(blocks.clone(), Some(now))
                .map(|w| w.finish());
            let e = match past {
                Ok(w) => w.await.unwrap_err(),
                Err(e) => e,
            };
            assert!(matches!(e, TransportError::Expired(_)), "{threads}: {e}");
            assert!(
                held.iter().all(untouched),
                "{threads}: copied past the deadline"
            );
            // 32 MiB take longer than 1 ms to copy at any speed seen here.
            let soon = std::time::Instant::now() + std::time::Duration::from_millis(1);
            let r = match plane.write_queued(blocks.clone(), Some(soon)) {
                Ok(w) => w.finish().await,
                Err(e) => Err(e),
            };
            assert!(
                matches!(r, Err(TransportError::Expired(_))),
                "{threads}: {r:?}"
            );
            let whole = held.iter().filter(|a| a.as_ref() == &data[..]).count();
            let left = held.iter().filter(|a| untouched(a)).count();
            assert_eq!(whole + left, held.len(), "{threads}: a block half copied");
            assert!(left > 0, "{threads} threads: every block copied");
        }
    }

    #[test]
    fn no_socket_is_unavailable() {
        let e = ShmPlane::connect(Path::new("/nonexistent/tidepool.sock"), 1).unwrap_err();
        assert!(matches!(e, TransportError::Unavailable(_)), "{e}");
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced() {
        let path = sock("stale");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _l = bind(&path, 0o600).unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn the_socket_gets_its_mode_whatever_the_umask_and_a_live_one_stays() {
        use std::os::unix::fs::PermissionsExt;
        let path = sock("mode");
        // SAFETY: umask has no memory effects; other tests' files may get
        // looser modes meanwhile, which none of them checks.
        let old = unsafe { libc::umask(0) };
        let l = bind(&path, 0o600);
        unsafe { libc::umask(old) };
        let _l = l.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = bind(&path, 0o600).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        std::fs::remove_file(&path).unwrap();
        let _l2 = bind(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        std::fs::remove_file(&path).unwrap();
    }
}
