//! Block I/O engines for the SSD tier: positional reads and writes of aligned
//! buffers at aligned offsets, behind one trait so the tier does not care how
//! they are carried out.
//!
//! `psync` (pread/pwrite) works everywhere; `uring` (Linux) runs io_uring on a
//! dedicated I/O thread. [`EngineChoice::Auto`] picks io_uring when the kernel allows it.

mod aligned;
mod psync;
#[cfg(target_os = "linux")]
mod uring;

pub use aligned::{round_up, AlignedBuf, ALIGN};
pub use psync::PsyncEngine;
#[cfg(target_os = "linux")]
pub use uring::UringEngine;

use std::sync::Arc;

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring where the kernel allows it, else psync.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// pread/pwrite.
    Psync,
}

/// Builds the chosen engine. With `Auto`, a refused io_uring falls back to
/// psync; the second value says why, for the caller to log.
pub fn build(choice: EngineChoice) -> io::Result<(Arc<dyn IoEngine>, Option<String>)> {
    match choice {
        EngineChoice::Psync => Ok((Arc::new(PsyncEngine), None)),
        #[cfg(target_os = "linux")]
        EngineChoice::Uring => Ok((Arc::new(UringEngine::new()?), None)),
        #[cfg(not(target_os = "linux"))]
        EngineChoice::Uring => Err(io::Error::other("io_uring needs Linux")),
        EngineChoice::Auto => {
            #[cfg(target_os = "linux")]
            match UringEngine::new() {
                Ok(e) => return Ok((Arc::new(e), None)),
                Err(e) => {
                    return Ok((
                        Arc::new(PsyncEngine),
                        Some(format!("io_uring refused ({e}); using psync")),
                    ))
                }
            }
            #[allow(unreachable_code)]
            Ok((
                Arc::new(PsyncEngine),
                Some("io_uring needs Linux; using psync".into()),
            ))
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Writes through each engine and reads back through the other and through
    /// std, with O_DIRECT and aligned buffers, across a 2 MiB span.
    #[test]
    fn engines_agree_byte_for_byte() {
        let mut engines: Vec<Arc<dyn IoEngine>> = vec![Arc::new(PsyncEngine)];
        match build(EngineChoice::Uring) {
            Ok((e, _)) => engines.push(e),
            Err(e) => crate::skipped(&format!(
                "io_uring refused here ({e}): engines compared on psync only"
            )),
        }
        let path = std::env::temp_dir().join(format!("tidepool-engines-{}", std::process::id()));
        let (file, _) = open_direct(&path, true, true).unwrap();
        file.set_len(4 << 20).unwrap();
        for (i, w) in engines.iter().enumerate() {
            let mut buf = AlignedBuf::zeroed(2 << 20);
            for (j, b) in buf.iter_mut().enumerate() {
                *b = (j * 13 + i) as u8;
            }
            let offset = (i as u64) * ALIGN as u64 * 3;
            w.write_at(&file, &buf, offset).unwrap();
            w.sync(&file).unwrap();
            for r in &engines {
                let mut back = AlignedBuf::zeroed(2 << 20);
                r.read_at(&file, &mut back, offset).unwrap();
                assert!(back[..] == buf[..], "{} wrote, {} read", w.name(), r.name());
            }
            let mut plain = Vec::new();
            std::fs::File::open(&path)
                .unwrap()
                .read_to_end(&mut plain)
                .unwrap();
            assert!(plain[offset as usize..offset as usize + buf.len()] == buf[..]);
            // Reading past the end is an error, not a short success.
            let mut past = AlignedBuf::zeroed(ALIGN);
            assert!(w.read_at(&file, &mut past, 8 << 20).is_err());
        }
        let _ = std::fs::remove_file(&path);
    }
}
