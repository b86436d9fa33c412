//! The shared DRAM arena: one memfd mapping, carved into page-aligned blocks
//! by an offset allocator.
//!
//! The server maps the memfd and allocates blocks of it for reservations; a
//! committed block becomes a `Bytes` over its allocation ([`ArenaBlock`]), so
//! the store keeps it without a copy and the allocation goes back to the arena
//! when the last `Bytes` over it drops. Local clients map the same memfd (see
//! [`crate::shm`]) and copy block bytes in and out at the offsets that
//! descriptors give.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use memmap2::MmapRaw;
use offset_allocator::{Allocation, Allocator};
use parking_lot::Mutex;

/// Allocation unit and alignment of arena blocks.
pub const PAGE: u64 = 4096;

/// A memfd region shared with local clients, with an allocator over it.
pub struct Arena {
    file: File,
    map: MmapRaw,
    size: u64,
    id: u64,
    alloc: Mutex<Allocator>,
    used: AtomicU64,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("size", &self.size)
            .field("id", &self.id)
            .field("used", &self.used())
            .finish()
    }
}

impl Arena {
    /// Creates an arena of `size` bytes (rounded up to whole pages) in a new
    /// memfd. Pages are only backed by memory once touched.
    pub fn new(size: u64) -> std::io::Result<Arc<Arena>> {
        let pages = size.div_ceil(PAGE).max(1);
        if pages > u32::MAX as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "arena larger than 16 TiB",
            ));
        }
        let size = pages * PAGE;
        let fd = nix::sys::memfd::memfd_create(
            c"tidepool-arena",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(std::io::Error::from)?;
        let file = File::from(fd);
        file.set_len(size)?;
        // Local clients get this very descriptor: sealed, none of them can
        // shrink it (a page of the mapping past a shrunk end is SIGBUS to the
        // server on its next read there) or grow it, and no seal can be
        // removed or added after these.
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(std::io::Error::from)?;
        let map = MmapRaw::map_raw(&file)?;
        let max_allocs = pages.clamp(64, 1 << 20) as u32;
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Ok(Arc::new(Arena {
            file,
            map,
            size,
            id: h.finish(),
            alloc: Mutex::new(Allocator::with_max_allocs(pages as u32, max_allocs)),
            used: AtomicU64::new(0),
        }))
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes allocated now (whole pages).
    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    /// A random number naming this arena, so a client can tell that the memfd
    /// it received belongs to the server it talks to.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The memfd, to hand to local clients.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Allocates `len` bytes (a block of whole pages, page-aligned). `None`
    /// when no free range is large enough.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Option<ArenaBlock> {
        let pages = (len as u64).div_ceil(PAGE).max(1);
        if pages > u32::MAX as u64 {
            return None;
        }
        let a = self.alloc.lock().allocate(pages as u32)?;
        self.used.fetch_add(pages * PAGE, Relaxed);
        Some(ArenaBlock {
            arena: self.clone(),
            offset: a.offset as u64 * PAGE,
            len,
            alloc: a,
        })
    }

    /// The arena's first byte in this process (what RDMA registers).
    pub fn base_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The offset of `bytes` in this arena, when they lie inside it.
    pub fn offset_of(&self, bytes: &[u8]) -> Option<u64> {
        let base = self.map.as_ptr() as usize;
        let p = bytes.as_ptr() as usize;
        (p >= base && p + bytes.len() <= base + self.size as usize).then(|| (p - base) as u64)
    }

    fn ptr_at(&self, offset: u64) -> *mut u8 {
        // SAFETY: callers pass offsets of their own allocations, inside the map.
        unsafe { self.map.as_mut_ptr().add(offset as usize) }
    }
}

/// One allocation in an [`Arena`]; freed when dropped. As `AsRef<[u8]>` it
/// backs a `Bytes` (`Bytes::from_owner`).
pub struct ArenaBlock {
    arena: Arc<Arena>,
    alloc: Allocation,
    offset: u64,
    len: usize,
}

impl std::fmt::Debug for ArenaBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArenaBlock")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl ArenaBlock {
    /// Offset in the arena.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the block in this process's mapping.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.arena.ptr_at(self.offset)
    }

    /// The arena this block belongs to.
    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// Copies `src` (exactly the block's length) into the block.
    ///
    /// # Panics
    /// When `src` is not `len()` bytes long.
    pub fn fill(&mut self, src: &[u8]) {
        assert_eq!(src.len(), self.len, "fill needs exactly the block's length");
        // SAFETY: the allocation is `len` bytes inside the live mapping and
        // belongs to this block alone (`&mut self`): nobody else reads or
        // writes it until the block is handed on.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.as_mut_ptr(), src.len()) };
    }
}

impl AsRef<[u8]> for ArenaBlock {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the allocation is `len` bytes inside the live mapping, and
        // is ours until dropped.
        unsafe { std::slice::from_raw_parts(self.as_mut_ptr(), self.len) }
    }
}

impl Drop for ArenaBlock {
    fn drop(&mut self) {
        let pages = (self.len as u64).div_ceil(PAGE).max(1);
        self.arena.alloc.lock().free(self.alloc);
        self.arena.used.fetch_sub(pages * PAGE, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_page_aligned_disjoint_and_freed() {
        let arena = Arena::new(1 << 20).unwrap();
        assert_eq!(arena.size(), 1 << 20);
        let a = arena.alloc(5000).unwrap();
        let b = arena.alloc(100).unwrap();
        assert_eq!(a.offset() % PAGE, 0);
        assert_eq!(b.offset() % PAGE, 0);
        assert!(a.offset() + 8192 <= b.offset() || b.offset() + PAGE <= a.offset());
        assert_eq!(arena.used(), 3 * PAGE);
        assert_eq!(arena.offset_of(a.as_ref()), Some(a.offset()));
        assert_eq!(arena.offset_of(&[1, 2, 3]), None);
        drop(a);
        drop(b);
        assert_eq!(arena.used(), 0);
        // The whole arena can be taken at once again, and no more.
        let all = arena.alloc(1 << 20).unwrap();
        assert!(arena.alloc(1).is_none());
        drop(all);
        assert!(arena.alloc(1).is_some());
    }

    #[test]
    fn a_block_as_bytes_frees_on_last_drop() {
        let arena = Arena::new(64 * PAGE).unwrap();
        let blk = arena.alloc(10).unwrap();
        // SAFETY: fresh allocation, nobody else sees it.
        unsafe { std::ptr::copy_nonoverlapping(b"0123456789".as_ptr(), blk.as_mut_ptr(), 10) };
        let bytes = bytes::Bytes::from_owner(blk);
        let view = bytes.slice(2..5);
        drop(bytes);
        assert_eq!(&view[..], b"234");
        assert_eq!(arena.used(), PAGE);
        drop(view);
        assert_eq!(arena.used(), 0);
    }

    #[test]
    fn the_memfd_shows_the_same_bytes() {
        use std::os::unix::fs::FileExt;
        let arena = Arena::new(4 * PAGE).unwrap();
        let blk = arena.alloc(4).unwrap();
        unsafe { std::ptr::copy_nonoverlapping(b"tide".as_ptr(), blk.as_mut_ptr(), 4) };
        let f = File::from(arena.fd().try_clone_to_owned().unwrap());
        let mut got = [0u8; 4];
        f.read_exact_at(&mut got, blk.offset()).unwrap();
        assert_eq!(&got, b"tide");
    }

    #[test]
    fn whoever_holds_the_memfd_cannot_change_its_size() {
        let arena = Arena::new(4 * PAGE).unwrap();
        let f = File::from(arena.fd().try_clone_to_owned().unwrap());
        for len in [0, PAGE, 8 * PAGE] {
            let e = f.set_len(len).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "set_len({len})");
        }
        assert_eq!(f.metadata().unwrap().len(), 4 * PAGE);
        // Nor take the seals off or add a write seal.
        let r = nix::fcntl::fcntl(
            &f,
            nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::F_SEAL_WRITE),
        );
        assert!(r.is_err());
        let blk = arena.alloc(PAGE as usize).unwrap();
        unsafe { std::ptr::write_volatile(blk.as_mut_ptr().add(100), 7) };
        assert_eq!(
            unsafe { std::ptr::read_volatile(blk.as_mut_ptr().add(100)) },
            7
        );
    }
}
