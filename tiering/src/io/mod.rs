//! Block I/O engines for the SSD tier: positional reads and writes of aligned
//! buffers at aligned offsets, behind one trait so the tier does not care how
//! they are carried out.
//!
//! `psync` (pread/pwrite) works everywhere. An io_uring engine on dedicated I/O
//! threads comes next (issue: SSD tier); it will plug in here.

mod aligned;
mod psync;

pub use aligned::{round_up, AlignedBuf, ALIGN};
pub use psync::PsyncEngine;

use std::fs::File;
use std::io;

/// Carries out positional I/O on a file or block device.
///
/// Callers MUST pass buffers from [`AlignedBuf`] and offsets and lengths that are
/// multiples of [`ALIGN`]: files may be opened with `O_DIRECT`.
pub trait IoEngine: Send + Sync + 'static {
    /// Name for logs and INFO (`psync`, `io_uring`).
    fn name(&self) -> &'static str;

    /// Writes all of `buf` at `offset`.
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Fills all of `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Makes what was written durable.
    fn sync(&self, file: &File) -> io::Result<()>;
}

/// Opens `path` for the SSD tier, with `O_DIRECT` when `direct` is asked and
/// the file system allows it. Returns the file and whether `O_DIRECT` is on.
pub fn open_direct(path: &std::path::Path, create: bool, direct: bool) -> io::Result<(File, bool)> {
    use std::fs::OpenOptions;
    #[cfg(target_os = "linux")]
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        match direct {
            Ok(f) => return Ok((f, true)),
            // Some file systems refuse O_DIRECT: fall back to buffered I/O (made
            // durable by fdatasync).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)?;
    let _ = direct;
    Ok((f, false))
}
