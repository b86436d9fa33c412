//! The stack of tiers: the levels a store keeps blocks in, fastest first.
//!
//! Each level is a tier ([`Tier`]) with its capacity, counters and, for a
//! level in memory, an eviction policy and the bytes of its probation
//! segment. Blocks leave a level for the one below it (demotion) and come
//! back from a device level to the one above (promotion); the last level
//! drops what it evicts. Between memory levels a block moves inline, on the
//! thread that evicts it; into a device level it moves on that level's
//! worker thread, through a bounded queue (a full queue drops the block
//! rather than stall the writer), as do the blocks a match stages back.
//!
//! Rules a stack keeps (checked when it is built): at least one level, at
//! most [`MAX_LEVELS`], a device level only last (its tier reclaims its own
//! space, so nothing can be demoted out of it), and exactly one level of
//! host memory ([`TierKind::Dram`]): the level the server's `maxmemory`,
//! watermarks and `used_memory` speak of, and where values kept alive by
//! leases are counted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::dram::DramTier;
use crate::eviction::{Eviction, Policy, Usage};
use crate::index::MAX_LEVELS;
use crate::tier::{Placement, Recovered, Tier, TierKind};

/// Settings of the pipe into a device level: demotions to it, promotions
/// and stagings out of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipeSettings {
    /// Blocks waiting to be written to the device before further demotions
    /// are dropped (and counted). Default: 256.
    pub queue: usize,
    /// Move a block read from the device back to the level above. Default:
    /// true.
    pub promote: bool,
    /// A match that finds blocks on the device near its reclaim end queues
    /// them to be read back into the level above: whoever matched is about
    /// to read them, and a block in use is rescued from the first-in
    /// first-out reclaim (it is written again at the log's head when it
    /// leaves memory). Default: true.
    pub stage_on_match: bool,
    /// Which matched blocks are staged: those whose space is among this
    /// share of the device next in line for reclaim. Staging every match
    /// (1.0) pushes so many blocks through memory and back that the log
    /// turns over faster and loses more than it saves on some workloads;
    /// 0.3 never lost in the measured cases (bench/README.md). Default: 0.3.
    pub stage_window: f64,
}

impl Default for PipeSettings {
    fn default() -> Self {
        PipeSettings {
            queue: 256,
            promote: true,
            stage_on_match: true,
            stage_window: 0.3,
        }
    }
}

/// One level of a stack, as a store is built with it
/// ([`crate::StoreBuilder::with_tier`]).
pub struct TierSpec {
    /// The tier.
    pub tier: Arc<dyn Tier>,
    /// Capacity in accounted bytes.
    pub capacity: u64,
    /// How a memory level picks its victims; `None` takes the store's
    /// ([`crate::StoreConfig::eviction`]). A device level reclaims its own
    /// space and has none.
    pub eviction: Option<Eviction>,
    /// What the tier found on its device when it opened: indexed first.
    pub recovered: Vec<Recovered>,
    /// For a device level: its pipe. Default: [`PipeSettings::default`].
    pub pipe: PipeSettings,
}

impl TierSpec {
    /// A level of `tier` with `capacity` bytes.
    pub fn new(tier: Arc<dyn Tier>, capacity: u64) -> TierSpec {
        TierSpec {
            tier,
            capacity,
            eviction: None,
            recovered: Vec::new(),
            pipe: PipeSettings::default(),
        }
    }

    /// A host-memory level of `capacity` bytes.
    pub fn dram(capacity: u64) -> TierSpec {
        TierSpec::new(Arc::new(DramTier), capacity)
    }

    /// Picks the level's eviction policy. Default: the store's.
    pub fn with_eviction(mut self, eviction: Eviction) -> TierSpec {
        self.eviction = Some(eviction);
        self
    }

    /// Blocks the tier recovered, to index. Default: none.
    pub fn with_recovered(mut self, recovered: Vec<Recovered>) -> TierSpec {
        self.recovered = recovered;
        self
    }

    /// The pipe into a device level. Default: [`PipeSettings::default`].
    pub fn with_pipe(mut self, pipe: PipeSettings) -> TierSpec {
        self.pipe = pipe;
        self
    }
}

/// Counters of one level.
#[derive(Debug, Default)]
pub(crate) struct TierCounters {
    pub(crate) capacity: AtomicU64,
    pub(crate) used: AtomicU64,
    pub(crate) blocks: AtomicU64,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) demotions: AtomicU64,
    pub(crate) promotions: AtomicU64,
}

/// A snapshot of one tier's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Which tier.
    pub kind: Option<TierKind>,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Accounted bytes in use.
    pub used: u64,
    /// Blocks stored.
    pub blocks: u64,
    /// Reads that found the block here.
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Blocks evicted.
    pub evictions: u64,
    /// Blocks moved down to a slower tier.
    pub demotions: u64,
    /// Blocks moved up from a slower tier.
    pub promotions: u64,
}

/// Figures particular to the SSD tier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SsdStats {
    /// Segments in all.
    pub segments: u64,
    /// Segments holding data.
    pub segments_used: u64,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Demotions dropped because the SSD fell behind.
    pub dropped_demotions: u64,
    /// Demotions queued and not yet written.
    pub pending_demotions: u64,
    /// Blocks a match read back into DRAM ahead of their segment's reclaim.
    pub staged: u64,
    /// Records that failed their checksum on read.
    pub checksum_failures: u64,
    /// Segments out of the rotation because the file system had no room
    /// for them (they rejoin once it has).
    pub segments_without_space: u64,
    /// Writes the file system refused for want of space.
    pub no_space_errors: u64,
    /// Flushes to stable storage (one per `TIER ssd` write).
    pub syncs: u64,
    /// I/O engine (`io_uring` or `psync`).
    pub engine: &'static str,
    /// Whether the device is opened with O_DIRECT.
    pub direct: bool,
}

/// The worker side of a device level: its queue and what went through it.
pub(crate) struct Pipe {
    pub(crate) queue: std::sync::mpsc::SyncSender<crate::store::Job>,
    pub(crate) settings: PipeSettings,
    /// Demotions dropped because the queue was full.
    pub(crate) dropped: AtomicU64,
    /// Blocks a match read back ahead of their reclaim.
    pub(crate) staged: AtomicU64,
    /// Demotions and stagings queued and not yet done.
    pub(crate) pending: AtomicU64,
}

/// One level of the stack.
pub(crate) struct Level {
    pub(crate) tier: Arc<dyn Tier>,
    pub(crate) kind: TierKind,
    pub(crate) placement: Placement,
    pub(crate) counters: TierCounters,
    /// How a memory level picks its victims (`None` for a device level).
    pub(crate) policy: Option<Box<dyn Policy>>,
    /// Bytes of the level's blocks in probation (every block under `lru`).
    pub(crate) probation: AtomicU64,
    /// Taken by whoever evicts from the level.
    pub(crate) evict_lock: Mutex<()>,
    /// A device level's pipe, once its worker runs.
    pub(crate) pipe: std::sync::OnceLock<Pipe>,
}

impl Level {
    /// Capacity in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.counters.capacity.load(Relaxed)
    }

    /// Accounted bytes in use.
    pub(crate) fn used(&self) -> u64 {
        self.counters.used.load(Relaxed)
    }

    /// What the level holds, as its policy sees it, with `incoming` bytes
    /// of a write joining probation.
    pub(crate) fn usage(&self, incoming: u64) -> Usage {
        Usage {
            capacity: self.capacity(),
            used: self.used(),
            probation: self.probation.load(Relaxed),
            blocks: self.counters.blocks.load(Relaxed),
            incoming,
        }
    }

    /// Whether the level is on a device.
    pub(crate) fn is_device(&self) -> bool {
        self.placement == Placement::Device
    }

    /// Counts `bytes` as in use (a write's room, made before its block is
    /// in place). Nothing to count is no write: every thread's puts meet on
    /// this counter.
    pub(crate) fn reserve(&self, bytes: u64) {
        if bytes > 0 {
            self.counters.used.fetch_add(bytes, Relaxed);
        }
    }

    /// Gives back what `reserve` counted.
    pub(crate) fn unreserve(&self, bytes: u64) {
        if bytes > 0 {
            self.counters.used.fetch_sub(bytes, Relaxed);
        }
    }

    /// A block of `charge` bytes whose room is reserved joined the level
    /// (in probation unless `main`).
    pub(crate) fn admit(&self, charge: u64, main: bool) {
        self.counters.blocks.fetch_add(1, Relaxed);
        if self.policy.is_some() && !main {
            self.probation.fetch_add(charge, Relaxed);
        }
    }

    /// A block of `charge` bytes joined the level.
    pub(crate) fn add(&self, charge: u64, main: bool) {
        self.reserve(charge);
        self.admit(charge, main);
    }

    /// A block of `charge` bytes left the level.
    pub(crate) fn sub(&self, charge: u64, main: bool) {
        self.unreserve(charge);
        self.counters.blocks.fetch_sub(1, Relaxed);
        if self.policy.is_some() && !main {
            self.probation.fetch_sub(charge, Relaxed);
        }
    }

    /// The policy of a memory level.
    pub(crate) fn policy(&self) -> Option<&dyn Policy> {
        self.policy.as_deref()
    }

    fn snapshot(&self) -> TierStats {
        let c = &self.counters;
        TierStats {
            kind: Some(self.kind),
            capacity: c.capacity.load(Relaxed),
            used: c.used.load(Relaxed),
            blocks: c.blocks.load(Relaxed),
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            demotions: c.demotions.load(Relaxed),
            promotions: c.promotions.load(Relaxed),
        }
    }
}

/// The levels, fastest first.
pub(crate) struct TierStack {
    levels: Vec<Level>,
    /// The host-memory level.
    host: u8,
}

impl TierStack {
    /// A stack of `specs` (fastest first; the default eviction policy for
    /// memory levels that name none), checked against the rules in the
    /// module doc.
    pub(crate) fn new(specs: &[TierSpec], eviction: Eviction) -> Result<TierStack, String> {
        if specs.is_empty() || specs.len() > MAX_LEVELS {
            return Err(format!(
                "a store has 1 to {MAX_LEVELS} tiers, not {}",
                specs.len()
            ));
        }
        let mut levels = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let placement = spec.tier.placement();
            let kind = spec.tier.kind();
            if placement == Placement::Device && i + 1 != specs.len() {
                return Err(format!(
                    "the {} tier is on a device: it must be the last",
                    kind.as_str()
                ));
            }
            if levels.iter().any(|l: &Level| l.kind == kind) {
                return Err(format!("two {} tiers", kind.as_str()));
            }
            let policy =
                (placement == Placement::Memory).then(|| spec.eviction.unwrap_or(eviction).build());
            let counters = TierCounters::default();
            counters.capacity.store(spec.capacity, Relaxed);
            levels.push(Level {
                tier: spec.tier.clone(),
                kind,
                placement,
                counters,
                policy,
                probation: AtomicU64::new(0),
                evict_lock: Mutex::new(()),
                pipe: std::sync::OnceLock::new(),
            });
        }
        let host = levels
            .iter()
            .position(|l| l.kind == TierKind::Dram)
            .ok_or("a store needs a DRAM tier")? as u8;
        Ok(TierStack { levels, host })
    }

    /// Level `l`.
    pub(crate) fn level(&self, l: u8) -> &Level {
        &self.levels[l as usize]
    }

    /// How many levels there are.
    pub(crate) fn len(&self) -> u8 {
        self.levels.len() as u8
    }

    /// The host-memory level.
    pub(crate) fn host(&self) -> u8 {
        self.host
    }

    /// The level of a tier of `kind`, if the stack has one.
    pub(crate) fn find(&self, kind: TierKind) -> Option<u8> {
        self.levels
            .iter()
            .position(|l| l.kind == kind)
            .map(|l| l as u8)
    }

    /// The level below `l`, if any.
    pub(crate) fn below(&self, l: u8) -> Option<u8> {
        ((l as usize + 1) < self.levels.len()).then_some(l + 1)
    }

    /// The device level (the last, when it is on a device).
    pub(crate) fn device(&self) -> Option<u8> {
        let last = self.len() - 1;
        self.level(last).is_device().then_some(last)
    }

    /// The worker side of level `l`, when it is a device level whose
    /// worker runs.
    pub(crate) fn pipe(&self, l: u8) -> Option<&Pipe> {
        self.level(l).pipe.get()
    }

    /// The kind of level `l`.
    pub(crate) fn kind(&self, l: u8) -> TierKind {
        self.level(l).kind
    }

    /// Every level, fastest first, with its number.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u8, &Level)> {
        self.levels.iter().enumerate().map(|(i, l)| (i as u8, l))
    }

    /// A snapshot of every level's counters, and the device log's figures.
    pub(crate) fn stats(&self) -> (Vec<TierStats>, Option<SsdStats>) {
        let tiers = self.levels.iter().map(Level::snapshot).collect();
        let log = self.device().and_then(|d| {
            let level = self.level(d);
            let f = level.tier.log_figures()?;
            let pipe = level.pipe.get();
            let count = |f: fn(&Pipe) -> &AtomicU64| pipe.map_or(0, |p| f(p).load(Relaxed));
            Some(SsdStats {
                segments: f.segments,
                segments_used: f.segments_used,
                segment_size: f.segment_size,
                dropped_demotions: count(|p| &p.dropped),
                pending_demotions: count(|p| &p.pending),
                staged: count(|p| &p.staged),
                checksum_failures: f.checksum_failures,
                segments_without_space: f.segments_without_space,
                no_space_errors: f.no_space_errors,
                syncs: f.syncs,
                engine: f.engine,
                direct: f.direct,
            })
        });
        (tiers, log)
    }
}
