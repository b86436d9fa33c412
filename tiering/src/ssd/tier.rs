//! The SSD tier behind the [`Tier`] trait: block bytes as records of the
//! segment log.

use std::io;

use bytes::Bytes;
use parking_lot::Mutex;

use super::log::{Location, LogConfig, Read, Recovered, SegmentLog};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::io::{build, EngineChoice, IoEngine};
use crate::tier::{Load, LogFigures, Placement, Reclaimed, Slot, Tier, TierError, TierKind};

/// SSD tier: a [`SegmentLog`] plus the keys its segment evictions dropped.
#[derive(Debug)]
pub struct SsdTier {
    log: SegmentLog,
    reclaimed: Mutex<Vec<Reclaimed>>,
}

/// What opening an SSD tier found and chose.
#[derive(Debug)]
pub struct Opened {
    /// The tier.
    pub tier: SsdTier,
    /// Live records found on the device (newest copy of each key).
    pub recovered: Vec<Recovered>,
    /// Set when the engine asked for was not available and another was used.
    pub fallback: Option<String>,
}

impl Opened {
    /// The tier as a level of a store ([`crate::StoreBuilder::with_tier`]):
    /// its whole space, what it recovered, `pipe` for the way in and out.
    pub fn into_spec(self, pipe: crate::PipeSettings) -> crate::TierSpec {
        let tier = Arc::new(self.tier);
        let capacity = tier.capacity();
        crate::TierSpec::new(tier, capacity)
            .with_recovered(SsdTier::recovered(self.recovered))
            .with_pipe(pipe)
    }
}

impl SsdTier {
    /// Opens the tier on `config.path` with the chosen I/O engine and recovers
    /// what the device holds.
    pub fn open(config: &LogConfig, engine: EngineChoice) -> io::Result<Opened> {
        let (engine, fallback) = build(engine)?;
        let mut opened = Self::open_with_engine(config, engine)?;
        opened.fallback = fallback;
        Ok(opened)
    }

    /// Opens the tier with an engine of the caller's (a test's instrumented
    /// one, say).
    pub fn open_with_engine(config: &LogConfig, engine: Arc<dyn IoEngine>) -> io::Result<Opened> {
        let (log, recovered) = SegmentLog::open_with(config, engine)?;
        Ok(Opened {
            tier: SsdTier {
                log,
                reclaimed: Mutex::new(Vec::new()),
            },
            recovered,
            fallback: None,
        })
    }

    /// The underlying log.
    pub fn log(&self) -> &SegmentLog {
        &self.log
    }

    /// Bytes of device space the tier uses.
    pub fn capacity(&self) -> u64 {
        self.log.segments() as u64 * self.log.segment_size()
    }

    fn note_reclaimed(&self, evicted: Vec<(Bytes, Location)>) {
        if !evicted.is_empty() {
            self.reclaimed
                .lock()
                .extend(evicted.into_iter().map(|(key, loc)| Reclaimed {
                    key,
                    slot: Self::slot_of(&loc),
                }));
        }
    }

    /// Recovered records as the store indexes them ([`crate::Recovered`]).
    pub fn recovered(records: Vec<Recovered>) -> Vec<crate::tier::Recovered> {
        records
            .into_iter()
            .map(|r| crate::tier::Recovered {
                slot: Self::slot_of(&r.location),
                key: r.key,
                parent: r.parent,
                len: r.value_len,
            })
            .collect()
    }

    /// The slot of a recovered record.
    pub fn slot_of(loc: &Location) -> Slot {
        Slot::Extent {
            offset: loc.offset,
            len: loc.len,
            seq: loc.seq,
        }
    }
}

impl Tier for SsdTier {
    fn kind(&self) -> TierKind {
        TierKind::Ssd
    }

    fn store(&self, key: &[u8], parent: Option<&[u8]>, value: Bytes) -> Result<Slot, TierError> {
        match self.log.append(key, parent, &value, false) {
            Ok((loc, evicted)) => {
                self.note_reclaimed(evicted);
                Ok(Self::slot_of(&loc))
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                Err(TierError::TooBig(value.len() as u64))
            }
            Err(e) => Err(TierError::Io(e)),
        }
    }

    fn load(&self, key: &[u8], slot: &Slot) -> Load {
        let Slot::Extent { offset, len, seq } = *slot else {
            return Load::Miss;
        };
        let loc = Location {
            segment: (offset / self.log.segment_size()) as u32,
            offset,
            len,
            seq,
        };
        match self.log.read(key, &loc) {
            Ok(Read::Value(b)) => Load::Hit(b),
            Ok(Read::Gone) => Load::Miss,
            Ok(Read::Corrupt) => Load::Corrupt,
            // The device refused the read: nothing to serve.
            Err(_) => Load::Miss,
        }
    }

    fn forget(&self, key: &[u8], slot: &Slot) -> Result<(), TierError> {
        let Slot::Extent { seq, .. } = *slot else {
            return Ok(());
        };
        let evicted = self.log.append_tombstone(key, seq, false)?;
        self.note_reclaimed(evicted);
        Ok(())
    }

    fn release(&self, _slot: Slot) {
        // Space comes back when its whole segment is reclaimed.
    }

    fn sync(&self) -> Result<(), TierError> {
        Ok(self.log.sync()?)
    }

    fn take_reclaimed(&self) -> Vec<Reclaimed> {
        std::mem::take(&mut *self.reclaimed.lock())
    }

    fn placement(&self) -> Placement {
        Placement::Device
    }

    fn reclaim_horizon(&self, slot: &Slot) -> Option<f64> {
        let Slot::Extent { offset, .. } = slot else {
            return None;
        };
        let segments = self.log.segments().max(1) as f64;
        Some(self.log.opens_until_reclaim(*offset) as f64 / segments)
    }

    fn log_figures(&self) -> Option<LogFigures> {
        let log = &self.log;
        Some(LogFigures {
            segments: log.segments() as u64,
            segments_used: log.used_segments() as u64,
            segment_size: log.segment_size(),
            checksum_failures: log.stats.checksum_failures.load(Relaxed),
            segments_without_space: log.unbacked_segments() as u64,
            no_space_errors: log.stats.no_space.load(Relaxed),
            syncs: log.stats.syncs.load(Relaxed),
            appends: log.stats.appends.load(Relaxed),
            engine: log.engine_name(),
            direct: log.is_direct(),
        })
    }
}
