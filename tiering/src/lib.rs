//! tidepool-tiering: the block store.
//!
//! The [`Store`] keeps blocks over a stack of tiers ([`stack`]): levels
//! fastest first, each a [`Tier`] that holds bytes, with its capacity,
//! watermarks and, for a level in memory, an eviction policy behind the
//! [`eviction`] seam (`lru`, `adaptive`). It owns the prefix-chain index
//! (which block is whose parent, in which level), the moves between levels
//! (demotion when a level is full, promotion and staging from the device
//! level), pins, leases, TTLs and checksums. DRAM ([`dram`]), the SSD log
//! ([`ssd`]) and a stand-in ([`noop`]) are the tiers; build a store over
//! them with [`StoreBuilder::with_tier`].
//!
//! This crate must never pull in CUDA, tokio or any other crate of the
//! workspace, not even transitively: the tier trait, the eviction policies
//! and the prefix index build and test on any laptop. Device-specific tiers
//! live behind features; the SSD tier's I/O needs only a Unix kernel
//! (io_uring on Linux, chosen at run time, with pread/pwrite as the
//! fallback).

pub mod dram;
pub mod error;
pub mod event;
pub mod eviction;
pub mod ids;
mod index;
pub mod io;
mod leases;
pub mod noop;
pub mod ssd;
pub mod stack;
pub mod store;
pub mod tier;

#[cfg(test)]
mod tier_suite;

/// Says, where the test run's log shows it (stderr past libtest's capture,
/// and `$TIDEPOOL_SKIP_LOG` when set), that a test skipped or reduced what
/// it covers because this machine lacks something.
#[cfg(test)]
pub(crate) fn skipped(what: &str) {
    use std::io::Write as _;
    let line = format!("SKIPPED: {what}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("TIDEPOOL_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

pub use error::StoreError;
pub use event::{Event, EventKind, EventSink};
pub use index::{ENTRY_OVERHEAD, MAX_LEVELS, SHARDS};
pub use stack::{PipeSettings, SsdStats, TierSpec, TierStats};
pub use store::{
    charge_of, BlockMeta, Eviction, Fetch, MatchResult, PutOptions, Store, StoreBuilder,
    StoreConfig, StoreStats, ValueAlloc, Verified, VALUE_ALLOC_MIN,
};
pub use tier::{
    Load, LogFigures, Placement, Reclaimed, Recovered, Slot, Tier, TierError, TierKind,
};
