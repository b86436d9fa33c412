//! The SSD tier's storage: a log of 4 KiB-aligned records in fixed-size
//! segments on a file, a directory or a block device (a local NVMe drive or an
//! NVMe-oF namespace alike), written with direct I/O where the file system
//! allows it, recovered by scanning after a restart or a crash.
//!
//! A store takes an [`SsdTier`] as the last level of its stack
//! ([`Opened::into_spec`]): DRAM evictions are demoted to it, reads promote
//! back, `TIER ssd` writes go straight to it.

pub mod log;
pub mod record;
pub mod tier;

pub use log::{Location, LogConfig, Read, Recovered, SegmentLog};
pub use tier::{Opened, SsdTier};
