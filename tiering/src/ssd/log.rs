//! The segment log: the SSD tier's space, cut into fixed-size segments that
//! records are appended to and that are reclaimed whole.
//!
//! One file (or block device) holds `capacity / segment_size` segments. Writes
//! append to the active segment; a full segment is sealed and a free one opened;
//! when none is free the oldest sealed segment is evicted (its keys are handed
//! back so the index can drop them) and reused.
//!
//! Recovery reads every segment from its start and keeps records while their
//! headers check out and their sequence numbers grow: a zeroed block, a torn
//! header, or the older records of a segment's previous use stop the scan of
//! that segment. A record whose header is intact but whose body fails its
//! checksum (torn or corrupted) is skipped and counted, and the scan goes on.
//! Where a key was written more than once, the highest sequence number wins.
//!
//! Appends to the log are serialized (one write at a time, in order), which is
//! what makes "everything before a torn record is intact" hold after a crash.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::record::{self, Header};
use crate::io::{open_direct, AlignedBuf, IoEngine, PsyncEngine, ALIGN};

/// Default segment size: large enough for sequential device throughput and for
/// the largest blocks, small enough that reclaiming one is not a big loss.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

/// Name of the log file when the tier is given a directory.
pub const FILE_NAME: &str = "tidepool.ssd";

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// Segment index.
    pub segment: u32,
    /// Byte offset of the record in the file.
    pub offset: u64,
    /// Record length on disk (header and padding included).
    pub len: u64,
    /// Sequence number it was written with.
    pub seq: u64,
}

/// A record found by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Its key.
    pub key: Bytes,
    /// Its parent, when it was stored with one.
    pub parent: Option<Bytes>,
    /// Where it is.
    pub location: Location,
    /// Value length.
    pub value_len: u64,
}

/// Settings of a segment log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A file, a directory (the log is `FILE_NAME` inside it) or a block device.
    pub path: PathBuf,
    /// Bytes to use; rounded down to whole segments. `None`: the size of an
    /// existing file or block device.
    pub capacity: Option<u64>,
    /// Segment size, a multiple of 4 KiB. Default: [`DEFAULT_SEGMENT_SIZE`].
    pub segment_size: u64,
    /// Try `O_DIRECT` (bypassing the page cache); buffered I/O plus fdatasync
    /// when false or refused. Default: true.
    pub direct: bool,
}

#[derive(Debug)]
struct State {
    active: Option<u32>,
    write_pos: u64,
    free: VecDeque<u32>,
    /// Sealed segments, oldest first.
    sealed: VecDeque<u32>,
    /// Keys written to each segment (for handing back on eviction).
    keys: Vec<Vec<(Bytes, Location)>>,
    next_seq: u64,
    /// Segments the file system had no room for: out of the rotation
    /// until space returns (see [`SegmentLog::take_unbacked`]).
    unbacked: VecDeque<u32>,
    /// Segment openings after which unbacked segments are tried again.
    retry_unbacked_at: u64,
}

/// A record as recovery reads it: key, parent, and for a tombstone the
/// sequence number it cancels.
type Scanned = (Bytes, Option<Bytes>, Option<u64>);

/// Counters of the log.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Records appended.
    pub appends: AtomicU64,
    /// Segments evicted to make room.
    pub segment_evictions: AtomicU64,
    /// Reads whose record failed its checks.
    pub checksum_failures: AtomicU64,
    /// Writes the file system refused for want of space (ENOSPC).
    pub no_space: AtomicU64,
    /// Flushes to stable storage (fdatasync, or the engine's equivalent).
    pub syncs: AtomicU64,
}

/// The segment log.
pub struct SegmentLog {
    file: File,
    path: PathBuf,
    direct: bool,
    engine: Arc<dyn IoEngine>,
    segment_size: u64,
    segments: u32,
    state: Mutex<State>,
    /// For each segment, the number of segment openings before its own; read
    /// without the lock (see [`SegmentLog::opens_until_reclaim`]).
    opened_at: Vec<AtomicU64>,
    /// For each segment, the first sequence number its latest opening may
    /// write: a location with a lower one in that segment was reclaimed.
    /// Stored before the opening's first write, read after a read that
    /// failed its checks (see [`SegmentLog::read`]).
    reused_from: Vec<AtomicU64>,
    /// What opening found wrong with the space behind the tier.
    warnings: Mutex<Vec<String>>,
    /// Segment openings so far.
    opens: AtomicU64,
    /// Counters.
    pub stats: LogStats,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("path", &self.path)
            .field("direct", &self.direct)
            .field("engine", &self.engine.name())
            .field("segments", &self.segments)
            .finish()
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

impl SegmentLog {
    /// Opens (creating if needed) the log and recovers what it holds. Returns the
    /// log and the live records, newest copy of each key only.
    pub fn open(config: &LogConfig) -> io::Result<(SegmentLog, Vec<Recovered>)> {
        Self::open_with(config, Arc::new(PsyncEngine))
    }

    /// As [`SegmentLog::open`], with a chosen I/O engine.
    pub fn open_with(
        config: &LogConfig,
        engine: Arc<dyn IoEngine>,
    ) -> io::Result<(SegmentLog, Vec<Recovered>)> {
        let seg = config.segment_size;
        if seg == 0 || !seg.is_multiple_of(ALIGN as u64) {
            return Err(invalid("segment size must be a positive multiple of 4 KiB"));
        }
        let path = if config.path.is_dir() {
            config.path.join(FILE_NAME)
        } else {
            config.path.clone()
        };
        let (file, direct) = open_direct(&path, true, config.direct)?;
        let existing = device_or_file_len(&file)?;
        let capacity = config.capacity.unwrap_or(existing);
        let segments = capacity / seg;
        if segments == 0 {
            return Err(invalid(format!(
                "{}: capacity {capacity} holds no whole segment of {seg} bytes",
                path.display()
            )));
        }
        let segments = u32::try_from(segments).map_err(|_| invalid("too many segments"))?;
        let wanted = segments as u64 * seg;
        if existing < wanted {
            file.set_len(wanted)?;
        }
        let log = SegmentLog {
            file,
            path,
            direct,
            engine,
            segment_size: seg,
            segments,
            state: Mutex::new(State {
                active: None,
                write_pos: 0,
                free: VecDeque::new(),
                sealed: VecDeque::new(),
                keys: vec![Vec::new(); segments as usize],
                next_seq: 1,
                unbacked: VecDeque::new(),
                retry_unbacked_at: 0,
            }),
            opened_at: (0..segments).map(|_| AtomicU64::new(0)).collect(),
            reused_from: (0..segments).map(|_| AtomicU64::new(0)).collect(),
            warnings: Mutex::new(Vec::new()),
            opens: AtomicU64::new(0),
            stats: LogStats::default(),
        };
        let recovered = log.recover()?;
        log.reserve_at_open(capacity)?;
        Ok((log, recovered))
    }

    /// Reserves the file's space on its file system (`fallocate`), so that
    /// no append fails later for want of it, which would leave the log
    /// believing it has room it never gets and never reclaiming. Segments
    /// the file system has no room for leave the rotation (the log wraps
    /// around within the others) until space returns; when there is none
    /// for a single segment, opening fails. What was cut, and a file
    /// system smaller than the tier, is said in [`SegmentLog::warnings`].
    fn reserve_at_open(&self, capacity: u64) -> io::Result<()> {
        let whole = self.segments as u64 * self.segment_size;
        let (fs_size, fs_free) = fs_space(&self.file)?;
        let mut warnings = Vec::new();
        if let Some(size) = fs_size.filter(|size| *size < capacity) {
            warnings.push(format!(
                "{}: the file system is {size} bytes, smaller than the SSD tier's {capacity}",
                self.path.display()
            ));
        }
        if !reserve_space(&self.file, 0, whole)? {
            let mut st = self.state.lock();
            let free: Vec<u32> = st.free.drain(..).collect();
            for seg in free {
                if reserve_space(&self.file, self.segment_start(seg), self.segment_size)? {
                    st.free.push_back(seg);
                } else {
                    st.unbacked.push_back(seg);
                }
            }
            if st.free.is_empty() && st.sealed.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "{}: the file system has no room for one SSD segment of {} bytes ({} bytes free)",
                        self.path.display(),
                        self.segment_size,
                        fs_free.unwrap_or(0)
                    ),
                ));
            }
            if !st.unbacked.is_empty() {
                warnings.push(format!(
                    "{}: the file system has room for {} of the SSD tier's {} segments ({} bytes free): \
                     the log turns over within those, and takes the others once space returns",
                    self.path.display(),
                    self.segments as usize - st.unbacked.len(),
                    self.segments,
                    fs_free.unwrap_or(0)
                ));
            }
        }
        *self.warnings.lock() = warnings;
        Ok(())
    }

    /// What opening found wrong with the space behind the tier (to log).
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    /// Segments out of the rotation for want of space on the file system.
    pub fn unbacked_segments(&self) -> usize {
        self.state.lock().unbacked.len()
    }

    /// An unbacked segment whose space the file system now gives, when the
    /// time to try again has come.
    fn take_unbacked(&self, st: &mut State) -> Option<u32> {
        let opens = self.opens.load(Relaxed);
        if st.unbacked.is_empty() || opens < st.retry_unbacked_at {
            return None;
        }
        let seg = *st.unbacked.front()?;
        match reserve_space(&self.file, self.segment_start(seg), self.segment_size) {
            Ok(true) => st.unbacked.pop_front(),
            _ => {
                st.retry_unbacked_at = opens + 1;
                None
            }
        }
    }

    /// Whether the file was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The I/O engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Number of segments.
    pub fn segments(&self) -> u32 {
        self.segments
    }

    /// Segment size in bytes.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// How many segments will open before the opening that reclaims the
    /// segment holding `offset` (0: the next one takes it). Segments are
    /// reused first in first out: the one opened n-th goes when the
    /// (n + segments)-th opens. Lock-free: a match asks it for every block it
    /// finds on SSD.
    pub fn opens_until_reclaim(&self, offset: u64) -> u64 {
        let s = (offset / self.segment_size) as usize;
        let Some(at) = self.opened_at.get(s) else {
            return 0;
        };
        (at.load(Relaxed) + self.segments as u64).saturating_sub(self.opens.load(Relaxed))
    }

    /// Segments holding data (sealed or active).
    pub fn used_segments(&self) -> u32 {
        let s = self.state.lock();
        s.sealed.len() as u32 + s.active.is_some() as u32
    }

    /// Path of the log file or device.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn segment_start(&self, segment: u32) -> u64 {
        segment as u64 * self.segment_size
    }

    /// Scans every segment; rebuilds the free and sealed lists.
    fn recover(&self) -> io::Result<Vec<Recovered>> {
        let mut newest: HashMap<Bytes, Recovered> = HashMap::new();
        // Per key, the newest sequence number a tombstone cancels.
        let mut cancelled: HashMap<Bytes, u64> = HashMap::new();
        let mut used: Vec<(u64, u32)> = Vec::new(); // (first seq, segment)
        let mut keys: Vec<Vec<(Bytes, Location)>> = vec![Vec::new(); self.segments as usize];
        let mut max_seq = 0;
        let mut head = AlignedBuf::zeroed(ALIGN);
        for segment in 0..self.segments {
            let start = self.segment_start(segment);
            let mut pos = 0u64;
            let mut last_seq = 0u64;
            let mut first_seq = None;
            while pos + ALIGN as u64 <= self.segment_size {
                self.engine.read_at(&self.file, &mut head, start + pos)?;
                let Some(h) = record::decode_header(&head) else {
                    break;
                };
                let len = h.record_len();
                if h.seq <= last_seq || pos + len > self.segment_size {
                    break; // an older use of this segment, or nonsense
                }
                let Some((key, parent, cancels)) = self.read_record(&h, start + pos, &head)? else {
                    // Torn or corrupt body under an intact header: its length is
                    // known, so skip it (never serve it) and read on.
                    self.stats.checksum_failures.fetch_add(1, Relaxed);
                    last_seq = h.seq;
                    pos += len;
                    continue;
                };
                let location = Location {
                    segment,
                    offset: start + pos,
                    len,
                    seq: h.seq,
                };
                first_seq.get_or_insert(h.seq);
                last_seq = h.seq;
                max_seq = max_seq.max(h.seq);
                if let Some(target) = cancels {
                    let t = cancelled.entry(key).or_insert(0);
                    *t = (*t).max(target);
                    pos += len;
                    continue;
                }
                keys[segment as usize].push((key.clone(), location));
                let rec = Recovered {
                    key: key.clone(),
                    parent,
                    location,
                    value_len: h.value_len,
                };
                match newest.get(&key) {
                    Some(old) if old.location.seq > h.seq => {}
                    _ => {
                        newest.insert(key, rec);
                    }
                }
                pos += len;
            }
            if let Some(f) = first_seq {
                used.push((f, segment));
            }
        }
        used.sort_unstable();
        let mut st = self.state.lock();
        st.sealed = used.iter().map(|(_, s)| *s).collect();
        // Oldest first, as if opened in that order.
        for (i, s) in st.sealed.iter().enumerate() {
            self.opened_at[*s as usize].store(i as u64, Relaxed);
        }
        self.opens.store(st.sealed.len() as u64, Relaxed);
        let in_use: std::collections::HashSet<u32> = st.sealed.iter().copied().collect();
        st.free = (0..self.segments).filter(|s| !in_use.contains(s)).collect();
        st.keys = keys;
        st.next_seq = max_seq + 1;
        let mut out: Vec<Recovered> = newest
            .into_values()
            .filter(|r| cancelled.get(&r.key).is_none_or(|t| r.location.seq > *t))
            .collect();
        out.sort_by_key(|r| r.location.seq);
        Ok(out)
    }

    /// Reads and checks a whole record whose header is `h` (already read into
    /// `head`, the first 4 KiB). Returns its key, its parent, and for a
    /// tombstone the sequence number it cancels.
    fn read_record(
        &self,
        h: &Header,
        offset: u64,
        head: &AlignedBuf,
    ) -> io::Result<Option<Scanned>> {
        let len = h.record_len() as usize;
        let full;
        let rec: &[u8] = if len <= head.len() {
            head
        } else {
            let mut buf = AlignedBuf::zeroed(len);
            buf[..head.len()].copy_from_slice(head);
            self.engine.read_at(
                &self.file,
                &mut buf[head.len()..],
                offset + head.len() as u64,
            )?;
            full = buf;
            &full
        };
        Ok(record::decode_body(h, rec).and_then(|b| {
            let cancels = if h.tombstone {
                Some(record::tombstone_target(b.value)?)
            } else {
                None
            };
            Some((
                Bytes::copy_from_slice(b.key),
                b.parent.map(Bytes::copy_from_slice),
                cancels,
            ))
        }))
    }

    /// Appends a record. With `durable`, returns only once it is on stable
    /// storage. Also returns the records of a segment evicted to make room (the
    /// caller drops those still located there).
    pub fn append(
        &self,
        key: &[u8],
        parent: Option<&[u8]>,
        value: &[u8],
        durable: bool,
    ) -> io::Result<(Location, Vec<(Bytes, Location)>)> {
        let keys_len = key.len() + parent.map_or(0, |p| p.len());
        let len = record::record_len(keys_len, value.len());
        self.append_with(key, keys_len, len, durable, true, |seq| {
            record::encode(key, parent, value, seq)
        })
    }

    /// Appends a tombstone: after a restart, `key`'s records up to sequence
    /// `cancels` are not recovered (the block was deleted or replaced).
    pub fn append_tombstone(
        &self,
        key: &[u8],
        cancels: u64,
        durable: bool,
    ) -> io::Result<Vec<(Bytes, Location)>> {
        let len = record::record_len(key.len(), 8);
        self.append_with(key, key.len(), len, durable, false, |seq| {
            record::encode_tombstone(key, cancels, seq)
        })
        .map(|(_, evicted)| evicted)
    }

    fn append_with(
        &self,
        key: &[u8],
        keys_len: usize,
        len: u64,
        durable: bool,
        track: bool,
        encode: impl FnOnce(u64) -> AlignedBuf,
    ) -> io::Result<(Location, Vec<(Bytes, Location)>)> {
        if len > self.segment_size {
            return Err(invalid(format!(
                "record of {len} bytes is larger than a segment ({} bytes)",
                self.segment_size
            )));
        }
        if key.len().max(keys_len - key.len()) > record::MAX_KEY_LEN {
            return Err(invalid("key too long for the SSD tier"));
        }
        let mut st = self.state.lock();
        let mut evicted = Vec::new();
        let mut encode = Some(encode);
        let mut buf = None;
        // Further tries after the file system refused space: in segments
        // already written, whose blocks it has.
        const TRIES: usize = 3;
        for attempt in 0..TRIES {
            let need_new = match st.active {
                None => true,
                Some(_) => st.write_pos + len > self.segment_size,
            };
            if need_new {
                if let Some(a) = st.active.take() {
                    st.sealed.push_back(a);
                }
                let next = match st.free.pop_front().or_else(|| self.take_unbacked(&mut st)) {
                    Some(s) => s,
                    None => {
                        let victim = st.sealed.pop_front().expect("at least one segment exists");
                        self.stats.segment_evictions.fetch_add(1, Relaxed);
                        evicted.extend(std::mem::take(&mut st.keys[victim as usize]));
                        victim
                    }
                };
                st.active = Some(next);
                st.write_pos = 0;
                let n = self.opens.load(Relaxed);
                self.opened_at[next as usize].store(n, Relaxed);
                // Before anything new lands in it: a reader whose record
                // this overwrites then sees the mark (SeqCst: ordered
                // before the write below reaches the device).
                self.reused_from[next as usize].store(st.next_seq, SeqCst);
                self.opens.store(n + 1, Relaxed);
            }
            let segment = st.active.expect("set above");
            if buf.is_none() {
                let seq = st.next_seq;
                st.next_seq += 1;
                buf = Some((seq, (encode.take().expect("encoded once"))(seq)));
            }
            let (seq, bytes) = buf.as_ref().expect("encoded above");
            let seq = *seq;
            let offset = self.segment_start(segment) + st.write_pos;
            // Written under the lock: appends reach the device in order.
            if let Err(e) = self.engine.write_at(&self.file, bytes, offset) {
                if !is_no_space(&e) {
                    return Err(e);
                }
                // This segment takes no more (what it holds stays readable),
                // and segments never written may have no space behind them
                // either: they leave the rotation, and the log turns over
                // within those it has written, until space returns.
                self.stats.no_space.fetch_add(1, Relaxed);
                if let Some(a) = st.active.take() {
                    if st.write_pos == 0 {
                        st.unbacked.push_back(a); // it holds nothing
                    } else {
                        st.sealed.push_back(a);
                    }
                }
                let free: Vec<u32> = st.free.drain(..).collect();
                st.unbacked.extend(free);
                st.retry_unbacked_at = self.opens.load(Relaxed) + (self.segments as u64 / 4).max(1);
                if attempt + 1 == TRIES {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        format!(
                            "the file system under the SSD tier ({}) is full",
                            self.path.display()
                        ),
                    ));
                }
                continue;
            }
            if durable {
                self.sync()?;
            }
            st.write_pos += len;
            let location = Location {
                segment,
                offset,
                len,
                seq,
            };
            if track {
                st.keys[segment as usize].push((Bytes::copy_from_slice(key), location));
            }
            self.stats.appends.fetch_add(1, Relaxed);
            return Ok((location, evicted));
        }
        unreachable!("the loop returns")
    }

    /// Makes every append so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.stats.syncs.fetch_add(1, Relaxed);
        self.engine.sync(&self.file)
    }

    /// Reads the value at `loc`, checking that it is `key`'s and intact.
    ///
    /// A record that fails its checks is [`Read::Gone`] when its segment
    /// was reopened since `loc` was written (the space now holds, or is being
    /// written with, other records: a plain miss), and [`Read::Corrupt`]
    /// otherwise (counted in `checksum_failures`).
    pub fn read(&self, key: &[u8], loc: &Location) -> io::Result<Read> {
        let mut buf = AlignedBuf::zeroed(loc.len as usize);
        self.engine.read_at(&self.file, &mut buf, loc.offset)?;
        let ok = record::decode_header(&buf)
            .filter(|h| h.seq == loc.seq && h.record_len() == loc.len)
            .and_then(|h| {
                let b = record::decode_body(&h, &buf)?;
                // Where the value sits in the buffer, to hand it out uncopied.
                let start = b.value.as_ptr() as usize - buf.as_ptr() as usize;
                Some((b.key == key, start..start + b.value.len()))
            });
        if let Some((true, range)) = ok {
            return Ok(Read::Value(Bytes::from_owner(ValueIn { buf, range })));
        }
        // Read after the bytes: a reuse that overwrote them set it first.
        let reused = self
            .reused_from
            .get(loc.segment as usize)
            .is_some_and(|r| r.load(SeqCst) > loc.seq);
        if reused || ok.is_some() {
            // Another key's record under the right sequence number cannot be
            // written by this log: a caller's location for another key.
            return Ok(Read::Gone);
        }
        self.stats.checksum_failures.fetch_add(1, Relaxed);
        Ok(Read::Corrupt)
    }
}

/// What [`SegmentLog::read`] found at a location.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The value, whole and checked.
    Value(Bytes),
    /// Not there: the segment was reclaimed since (or the location is
    /// another key's). A plain miss; nothing is wrong.
    Gone,
    /// The record is there but fails its checks (or is another's).
    Corrupt,
}

impl Read {
    /// The value, if whole.
    pub fn value(self) -> Option<Bytes> {
        match self {
            Read::Value(b) => Some(b),
            _ => None,
        }
    }
}

/// A value read from the device, still in the aligned buffer it was read into
/// (handed out as `Bytes` without a copy; it pins at most its record's padding).
struct ValueIn {
    buf: AlignedBuf,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for ValueIn {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

/// Size of a regular file, or of a block device (whose metadata length is 0).
/// Whether an I/O error says the file system is out of space.
fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

/// Reserves `[offset, offset + len)` of a regular file on its file system.
/// `Ok(false)` when the file system has no room; `Ok(true)` when it is
/// reserved, or cannot be (a block device has its space; a file system
/// without `fallocate` says nothing until a write fails).
fn reserve_space(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    if !file.metadata()?.is_file() {
        return Ok(true);
    }
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(invalid("offset past what fallocate takes"));
    };
    // SAFETY: a plain syscall on a descriptor we own.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, off, n) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Ok(false),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(true),
        _ => Err(e),
    }
}

/// The size and free space of the file system holding a regular file
/// (`None` for a block device, or when it cannot say).
fn fs_space(file: &File) -> io::Result<(Option<u64>, Option<u64>)> {
    use std::os::fd::AsRawFd;
    if !file.metadata()?.is_file() {
        return Ok((None, None));
    }
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer for the call.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Ok((None, None));
    }
    let unit = st.f_frsize as u64;
    Ok((
        Some(st.f_blocks as u64 * unit),
        Some(st.f_bavail as u64 * unit),
    ))
}

fn device_or_file_len(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

#[cfg(test)]
mod tests;
