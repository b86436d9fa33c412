//! The SSD tier's storage: a log of 4 KiB-aligned records in fixed-size
//! segments on a file, a directory or a block device (a local NVMe drive or an
//! NVMe-oF namespace alike), written with direct I/O where the file system
//! allows it, recovered by scanning after a restart or a crash.
//!
//! Status: the log (format, append, read with checksum checks, segment
//! eviction, recovery) and the [`SsdTier`] on top of it are built and tested;
//! the store does not use them yet (demotion, promotion and the server flag
//! `--ssd` come next).

pub mod log;
pub mod record;
pub mod tier;

pub use log::{Location, LogConfig, Recovered, SegmentLog};
pub use tier::{Opened, SsdTier};
