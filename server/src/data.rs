//! The control side of the data plane: reservations (`KV.RESERVE`,
//! `KV.COMMIT`, `KV.ABORT`), located blocks (`KV.LOCATE`), and the listeners
//! of the TCP data port and the shm socket.
//!
//! A reservation owns a region of memory (in the shared arena when there is
//! room, else on the heap) that nobody but its writer sees. `KV.COMMIT` hands
//! the region to the store as the block's value, without a copy; until then
//! no reader can see the block. Reservations die with the connection that
//! made them, on `KV.ABORT`, or after `reserve-timeout`; the region goes back
//! once the last in-flight write into it ends.
//!
//! The server cannot see when a shm or rdma writer stops: the client copies
//! into the mapped arena (or the NIC writes) on its own. A copy that began
//! before the reservation ended may still be running when it ends (a large
//! block, a writer descheduled mid-copy), and would land in whatever block
//! the range was handed to next. So an uncommitted shm or rdma range is kept
//! out of use for one more `reserve-timeout` (quarantined) before it returns
//! to the arena; tidepool-client starts no copy after a reservation's
//! deadline. A writer stalled longer than that can still write into a reused
//! range: shm clients are trusted with the arena (README, trust boundary).
//!
//! A located block is a `Bytes` over the stored value, held here (and leased
//! in the store) until its lease is released or expires: eviction, deletion
//! or an overwrite of the key cannot free or reuse that memory meanwhile.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tidepool_protocol::command::{ReserveOpts, Via};
use tidepool_protocol::{CommandError, Reply};
use tidepool_tiering::{Fetch, PutOptions, Store};
use tidepool_transport::tcp::Resolver;
use tidepool_transport::{Arena, Inbound, Kind, Region};

/// How long a located block is held when KV.LOCATE names no LEASE.
pub const DEFAULT_LOCATE_LEASE_MS: u64 = 30_000;

fn kind_of(v: Option<Via>) -> Kind {
    match v {
        None | Some(Via::Tcp) => Kind::Tcp,
        Some(Via::Shm) => Kind::Shm,
        Some(Via::Rdma) => Kind::Rdma,
    }
}

/// What a reservation costs the server beyond its block's bytes and key
/// (its entry, the written-range bookkeeping, the token): a reservation of a
/// 1-byte block over tcp grew the server's resident memory by about 920
/// bytes (200,000 of them held open on one connection).
const RESERVATION_OVERHEAD: u64 = 1024;

struct Reservation {
    /// Bytes reserved and not yet committed, over all reservations; this one
    /// gives its share back when dropped (committed, aborted, expired).
    outstanding: Arc<AtomicU64>,
    /// The same with each reservation's key and overhead counted
    /// ([`RESERVATION_OVERHEAD`]): what the capacity bounds, so that a
    /// storm of tiny reservations is bounded as large ones are.
    charged: Arc<AtomicU64>,
    /// This one's share of `charged`.
    cost: u64,
    len: u64,
    key: Bytes,
    kind: Kind,
    inbound: Arc<Inbound>,
    parent: Option<Bytes>,
    ttl_ms: Option<u64>,
    deadline: Instant,
    owner: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(self.len, Relaxed);
        self.charged.fetch_sub(self.cost, Relaxed);
        // Uncommitted (aborted, expired, its connection gone): a data
        // connection stalled mid-write lets the memory go at once and
        // writes nothing more into it. After a commit this does nothing.
        self.inbound.cancel();
    }
}

struct Hold {
    tokens: Vec<u64>,
    deadline: Instant,
}

/// Data plane counters (INFO dataplane).
#[derive(Debug, Default)]
pub struct DataStats {
    /// Blocks reserved.
    pub reserved: AtomicU64,
    /// Blocks committed.
    pub committed: AtomicU64,
    /// Bytes committed.
    pub committed_bytes: AtomicU64,
    /// Reservations aborted (KV.ABORT or the connection closing).
    pub aborted: AtomicU64,
    /// Commits refused because the bytes that arrived over tcp did not match
    /// the client's checksum (the reservation is dropped).
    pub corrupt: AtomicU64,
    /// Reservations dropped after the timeout.
    pub expired: AtomicU64,
    /// Blocks located.
    pub located: AtomicU64,
    /// Located blocks copied into the arena for a shm reader.
    pub located_copies: AtomicU64,
}

/// Reservations and located blocks.
pub struct DataState {
    /// The shared DRAM arena, when shm is on.
    pub arena: Option<Arc<Arena>>,
    reservations: Mutex<HashMap<u64, Reservation>>,
    /// Ranges of shm and rdma reservations that ended uncommitted, with the
    /// time they may be reused (see the module comment).
    quarantine: Mutex<std::collections::VecDeque<(Instant, Arc<Inbound>)>>,
    outstanding: Arc<AtomicU64>,
    charged: Arc<AtomicU64>,
    located: Mutex<HashMap<u64, Bytes>>,
    holds: Mutex<HashMap<u64, Hold>>,
    tokens: tidepool_tiering::ids::Ids,
    timeout: Duration,
    /// Where the TCP data port listens, once bound.
    pub tcp_addr: OnceLock<SocketAddr>,
    /// The shm socket, once bound.
    pub shm_path: OnceLock<PathBuf>,
    /// The registered arena for RDMA clients (`base:rkey:size`), or why there
    /// is none.
    pub rdma: OnceLock<Result<String, String>>,
    /// Counters.
    pub stats: DataStats,
}

impl DataState {
    /// A data plane with an arena of `arena_size` bytes (none when `None` or
    /// when memfd fails, with a warning), reservations living `timeout`.
    pub fn new(arena_size: Option<u64>, timeout: Duration) -> DataState {
        let arena = arena_size.and_then(|size| match Arena::new(size) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!("no shared arena (shm off): {e}");
                None
            }
        });
        DataState {
            arena,
            reservations: Mutex::new(HashMap::new()),
            quarantine: Mutex::new(Default::default()),
            outstanding: Arc::new(AtomicU64::new(0)),
            charged: Arc::new(AtomicU64::new(0)),
            located: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
            tokens: Default::default(),
            timeout,
            tcp_addr: OnceLock::new(),
            shm_path: OnceLock::new(),
            rdma: OnceLock::new(),
            stats: DataStats::default(),
        }
    }

    /// Bytes reserved and not committed.
    pub fn reserved_bytes(&self) -> u64 {
        self.outstanding.load(Relaxed)
    }

    /// Bytes of shm and rdma ranges kept out of use after their
    /// reservations ended uncommitted.
    pub fn quarantined_bytes(&self) -> u64 {
        self.quarantine.lock().iter().map(|(_, i)| i.len()).sum()
    }

    /// Ends reservations that were not committed: a range a client writes
    /// into itself (shm, rdma) is quarantined for one `reserve-timeout`.
    fn retire(&self, gone: Vec<Reservation>) {
        let until = Instant::now() + self.timeout;
        let keep: Vec<(Instant, Arc<Inbound>)> = gone
            .iter()
            .filter(|r| matches!(r.kind, Kind::Shm | Kind::Rdma))
            .map(|r| (until, r.inbound.clone()))
            .collect();
        drop(gone);
        if !keep.is_empty() {
            self.quarantine.lock().extend(keep);
        }
    }

    /// Open reservations.
    pub fn open_reservations(&self) -> usize {
        self.reservations.lock().len()
    }

    /// Blocks held for readers.
    pub fn held_blocks(&self) -> usize {
        self.located.lock().len()
    }

    fn unavailable(&self, kind: Kind) -> Option<Reply> {
        let why = match kind {
            Kind::Tcp => return None,
            Kind::Shm if self.arena.is_some() && self.shm_path.get().is_some() => return None,
            Kind::Shm => "shm is off on this server (--shm false, or no memfd)",
            Kind::Rdma if matches!(self.rdma.get(), Some(Ok(_))) => return None,
            Kind::Rdma => {
                return Some(Reply::Error(CommandError::new(
                    "NOTRANSPORT",
                    format!(
                        "rdma is not available on this server ({})",
                        self.rdma_reason()
                    ),
                )))
            }
        };
        Some(Reply::Error(CommandError::new("NOTRANSPORT", why)))
    }

    /// Arena memory for `len` bytes, shedding store blocks to make room.
    fn arena_block(&self, store: &Store, len: usize) -> Option<tidepool_transport::ArenaBlock> {
        let arena = self.arena.as_ref()?;
        for _ in 0..4 {
            if let Some(b) = arena.alloc(len) {
                return Some(b);
            }
            if store.shed(len as u64) == 0 {
                break;
            }
        }
        None
    }

    /// KV.RESERVE: one descriptor, `EXISTS`, or error per block.
    pub fn reserve(
        &self,
        store: &Store,
        owner: u64,
        max_len: u64,
        blocks: Vec<(Bytes, u64)>,
        opts: ReserveOpts,
    ) -> Reply {
        let kind = kind_of(opts.via);
        if let Some(e) = self.unavailable(kind) {
            return e;
        }
        // Keys are copied: a reservation lives up to the reserve timeout, and
        // a view would keep the whole read buffer it came in that long.
        let mut prev = opts.parent.map(|p| Bytes::copy_from_slice(&p));
        let mut out = Vec::with_capacity(blocks.len());
        let deadline = Instant::now() + self.timeout;
        for (key, len) in blocks {
            let key = Bytes::copy_from_slice(&key);
            let parent = prev.clone();
            if opts.chain {
                prev = Some(key.clone());
            }
            if store.tier_of(&key).is_some() {
                out.push(Reply::simple("EXISTS"));
                continue;
            }
            let charge = tidepool_tiering::charge_of(key.len(), len as usize);
            if len > max_len || charge > store.capacity() {
                out.push(Reply::Error(CommandError::new(
                    "TOOBIG",
                    format!("a block of {len} bytes does not fit this node"),
                )));
                continue;
            }
            // Memory in flight is bounded by the tier it is headed for,
            // each reservation's key and bookkeeping counted with its bytes.
            let cost = len + key.len() as u64 + RESERVATION_OVERHEAD;
            let before = self.charged.fetch_add(cost, Relaxed);
            if before + cost > store.capacity() {
                self.charged.fetch_sub(cost, Relaxed);
                out.push(Reply::Error(CommandError::new(
                    "OOM",
                    format!(
                        "reservations not committed hold {before} bytes (their blocks, keys and \
                         {RESERVATION_OVERHEAD} bytes each of bookkeeping); {cost} more would \
                         pass the DRAM capacity"
                    ),
                )));
                continue;
            }
            self.outstanding.fetch_add(len, Relaxed);
            let region = match kind {
                Kind::Shm | Kind::Rdma => match self.arena_block(store, len as usize) {
                    Some(b) => Region::Arena(b),
                    None => {
                        self.outstanding.fetch_sub(len, Relaxed);
                        self.charged.fetch_sub(cost, Relaxed);
                        out.push(Reply::Error(CommandError::new(
                            "OOM",
                            "the shared arena is full",
                        )));
                        continue;
                    }
                },
                // Tcp blocks go to the arena too, shedding to make room, so
                // the DRAM tier's large blocks have one home; the heap only
                // when nothing can be shed.
                _ => match self.arena_block(store, len as usize) {
                    Some(b) => Region::Arena(b),
                    None => Region::alloc(None, len as usize),
                },
            };
            let offset = region.arena_offset().unwrap_or(0);
            let mut reservations = self.reservations.lock();
            // Unguessable: the data port takes the token as the right to write.
            let token = self.tokens.fresh(|t| reservations.contains_key(&t));
            reservations.insert(
                token,
                Reservation {
                    outstanding: self.outstanding.clone(),
                    charged: self.charged.clone(),
                    cost,
                    len,
                    key,
                    kind,
                    // Tcp bytes are hashed as they land (in cache) for a
                    // store that checksums its DRAM blocks; for one that
                    // does not, that pass would be wasted.
                    inbound: Arc::new(Inbound::with_hashing(
                        region,
                        kind == Kind::Tcp && store.dram_checksums(),
                    )),
                    parent,
                    ttl_ms: opts.ttl_ms,
                    deadline,
                    owner,
                },
            );
            drop(reservations);
            self.stats.reserved.fetch_add(1, Relaxed);
            out.push(descriptor(kind, offset, len, token));
        }
        Reply::Array(out)
    }

    /// KV.COMMIT: stores each reserved block. One token answers OK or an
    /// error; several answer an array of those. `checksums`, when given, are
    /// the client's, one per token. Only the connection that reserved a
    /// block (`owner`) commits it: another one's token is answered as
    /// unknown, so a stray or stale token cannot publish bytes still being
    /// written.
    pub fn commit(
        &self,
        store: &Store,
        owner: u64,
        tokens: &[u64],
        checksums: Option<&[u64]>,
    ) -> Reply {
        let mut replies: Vec<Reply> = store.batch(|| {
            tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let given = checksums.and_then(|c| c.get(i).copied());
                    self.commit_one(store, owner, *t, given)
                })
                .collect()
        });
        if replies.len() == 1 {
            replies.pop().expect("one")
        } else {
            Reply::Array(replies)
        }
    }

    /// Commits one reservation. The block's checksum is the one the server
    /// computed as tcp bytes arrived in order, checked against the client's
    /// when both exist; else the client's, over tcp checked first with a
    /// pass of the server's own (the bytes were not hashed on arrival: the
    /// store keeps no DRAM checksums, or they came out of order), over shm
    /// or rdma taken at its word (the client copied the bytes itself and
    /// hashed them on the way, as it wrote them); else none, and the store
    /// hashes the block if it must.
    fn commit_one(&self, store: &Store, owner: u64, token: u64, given: Option<u64>) -> Reply {
        let (r, (region, arrived)) = {
            let mut map = self.reservations.lock();
            let Some(r) = map.get(&token).filter(|r| r.owner == owner) else {
                return Reply::Error(CommandError::new(
                    "NORESERVATION",
                    format!(
                        "no reservation {token} (committed, aborted, expired or another \
                         connection's)"
                    ),
                ));
            };
            // Over tcp every byte must have come in; over shm the client
            // wrote the memory itself and says it is done by committing.
            let region = match r.inbound.seal(r.kind == Kind::Tcp) {
                Ok(region) => region,
                Err(why) => {
                    return Reply::Error(CommandError::new(
                        "INCOMPLETE",
                        format!("reservation {token}: {why}"),
                    ))
                }
            };
            (map.remove(&token).expect("looked up above"), region)
        };
        let len = region.len() as u64;
        let value = region.into_bytes();
        let arrived = match (arrived, given) {
            (None, Some(_)) if r.kind == Kind::Tcp => Some(tidepool_checksum::checksum(&value)),
            (arrived, _) => arrived,
        };
        let checksum = match (arrived, given) {
            (Some(arrived), Some(given)) if arrived != given => {
                self.stats.corrupt.fetch_add(1, Relaxed);
                return Reply::Error(CommandError::new(
                    "CORRUPT",
                    format!(
                        "reservation {token}: the bytes that arrived do not match the \
                         client's checksum; the reservation is dropped"
                    ),
                ));
            }
            (Some(arrived), _) => {
                debug_assert_eq!(
                    arrived,
                    tidepool_checksum::checksum(&value),
                    "the checksum hashed on arrival is wrong"
                );
                Some(arrived)
            }
            (None, given) => given,
        };
        let opts = PutOptions {
            parent: r.parent.clone(),
            ttl_ms: r.ttl_ms,
            value_exclusive: true,
            checksum,
            ..PutOptions::default()
        };
        match store.put(r.key.clone(), value, opts) {
            Ok(_) => {
                self.stats.committed.fetch_add(1, Relaxed);
                self.stats.committed_bytes.fetch_add(len, Relaxed);
                Reply::ok()
            }
            Err(e) => crate::errors::store_error(e),
        }
    }

    /// KV.ABORT: drops the reservations `owner` made among `tokens`.
    /// Returns how many it dropped.
    pub fn abort(&self, owner: u64, tokens: &[u64]) -> Reply {
        let gone: Vec<Reservation> = {
            let mut map = self.reservations.lock();
            tokens
                .iter()
                .filter_map(|t| {
                    map.get(t)
                        .is_some_and(|r| r.owner == owner)
                        .then(|| map.remove(t))
                        .flatten()
                })
                .collect()
        };
        self.stats.aborted.fetch_add(gone.len() as u64, Relaxed);
        let n = gone.len();
        self.retire(gone);
        Reply::Int(n as i64)
    }

    /// Drops the reservations a closing connection made.
    pub fn abort_owned(&self, owner: u64) {
        let gone: Vec<Reservation> = {
            let mut map = self.reservations.lock();
            let tokens: Vec<u64> = map
                .iter()
                .filter(|(_, r)| r.owner == owner)
                .map(|(t, _)| *t)
                .collect();
            tokens.iter().filter_map(|t| map.remove(t)).collect()
        };
        self.stats.aborted.fetch_add(gone.len() as u64, Relaxed);
        self.retire(gone);
    }

    /// KV.LOCATE: a descriptor or nil per key, all under one lease. A block on
    /// SSD is read (and promoted) first; for shm, a block outside the arena
    /// is copied into it and the copy held under the lease. Returns the
    /// reply and the lease it took, if any.
    pub fn locate(
        &self,
        store: &Store,
        keys: &[Bytes],
        lease_ms: Option<u64>,
        via: Option<Via>,
    ) -> (Reply, Option<u64>) {
        let kind = kind_of(via);
        if let Some(e) = self.unavailable(kind) {
            return (e, None);
        }
        let ms = lease_ms.unwrap_or(DEFAULT_LOCATE_LEASE_MS);
        let (lease, _) = store.lease(keys, ms);
        let mut blocks = Vec::with_capacity(keys.len());
        let mut tokens = Vec::new();
        for k in keys {
            // A block on SSD is read with the worker marked as blocking.
            let value = match store.fetch_memory(k) {
                Fetch::Memory(b) => Some(b),
                Fetch::Missing => None,
                Fetch::Device => tokio::task::block_in_place(|| store.get(k)),
            };
            let Some(value) = value else {
                blocks.push(Reply::Null);
                continue;
            };
            let (value, offset) = match (kind, &self.arena) {
                (Kind::Shm, Some(arena)) => match arena.offset_of(&value) {
                    Some(off) => (value, off),
                    None => match self.arena_block(store, value.len()) {
                        Some(blk) => {
                            // SAFETY: a fresh allocation of value.len() bytes.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    value.as_ptr(),
                                    blk.as_mut_ptr(),
                                    value.len(),
                                )
                            };
                            self.stats.located_copies.fetch_add(1, Relaxed);
                            let off = blk.offset();
                            (Bytes::from_owner(blk), off)
                        }
                        None => {
                            blocks.push(Reply::Error(CommandError::new(
                                "OOM",
                                "the shared arena is full",
                            )));
                            continue;
                        }
                    },
                },
                _ => (value, 0),
            };
            // Its bytes count against DRAM until the lease ends, even if the
            // block is deleted or replaced meanwhile.
            store.hold(lease, k, &value);
            let len = value.len() as u64;
            let token = {
                let mut located = self.located.lock();
                let token = self.tokens.fresh(|t| located.contains_key(&t));
                located.insert(token, value);
                token
            };
            blocks.push(descriptor(kind, offset, len, token));
            tokens.push(token);
        }
        self.stats.located.fetch_add(tokens.len() as u64, Relaxed);
        self.holds.lock().insert(
            lease,
            Hold {
                tokens,
                deadline: Instant::now() + Duration::from_millis(ms),
            },
        );
        let reply = Reply::map([
            ("lease", Reply::Int(lease as i64)),
            ("blocks", Reply::Array(blocks)),
        ]);
        (reply, Some(lease))
    }

    /// Drops what KV.LOCATE held under `lease`: `None` when nothing was
    /// (another kind of lease, or one given back or swept), else whether
    /// the hold was still in force. Until it is dropped here or by the
    /// sweep, the blocks' memory cannot be reused, so `Some(true)` tells a
    /// client that copied them out of the arena that its copy is whole; a
    /// hold past its time answers `Some(false)` even before the sweep gets
    /// to it, so the answer does not hang on when the sweep last ran.
    pub fn release(&self, lease: u64) -> Option<bool> {
        let hold = self.holds.lock().remove(&lease)?;
        let mut located = self.located.lock();
        for t in hold.tokens {
            located.remove(&t);
        }
        Some(hold.deadline > Instant::now())
    }

    /// Drops expired reservations and holds, and with each hold the
    /// store's lease of the same id (so that `KV.RELEASE` of a hold that
    /// was swept cannot find that lease and answer that it held). Call
    /// periodically.
    pub fn sweep(&self, store: &Store) {
        let now = Instant::now();
        let expired: Vec<Reservation> = {
            let mut map = self.reservations.lock();
            let due: Vec<u64> = map
                .iter()
                .filter(|(_, r)| r.deadline <= now)
                .map(|(t, _)| *t)
                .collect();
            due.iter().filter_map(|t| map.remove(t)).collect()
        };
        if !expired.is_empty() {
            self.stats.expired.fetch_add(expired.len() as u64, Relaxed);
            tracing::debug!(count = expired.len(), "reservations expired uncommitted");
            self.retire(expired);
        }
        let released: Vec<Arc<Inbound>> = {
            let mut q = self.quarantine.lock();
            // In order of their deadlines: all share one timeout.
            let due = q.iter().take_while(|(t, _)| *t <= now).count();
            q.drain(..due).map(|(_, i)| i).collect()
        };
        drop(released);
        let due: Vec<u64> = self
            .holds
            .lock()
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(l, _)| *l)
            .collect();
        for lease in due {
            self.release(lease);
            store.release(lease);
        }
    }

    fn rdma_reason(&self) -> String {
        match self.rdma.get() {
            Some(Ok(_)) => "available".into(),
            Some(Err(why)) => why.clone(),
            None => "built without the rdma feature".into(),
        }
    }

    fn rdma_state(&self) -> String {
        match self.rdma.get() {
            Some(Ok(remote)) => remote.clone(),
            _ => format!("unavailable: {}", self.rdma_reason()),
        }
    }

    /// KV.DATAPLANE.
    pub fn describe(&self) -> Reply {
        let tcp = self
            .tcp_addr
            .get()
            .map_or(Reply::Null, |a| Reply::Int(a.port() as i64));
        let (shm, id, size) = match (&self.arena, self.shm_path.get()) {
            (Some(a), Some(p)) => (
                Reply::Bulk(Bytes::from(p.display().to_string())),
                Reply::Bulk(Bytes::from(format!("{:016x}", a.id()))),
                Reply::Int(a.size() as i64),
            ),
            _ => (Reply::Null, Reply::Null, Reply::Int(0)),
        };
        Reply::map([
            ("tcp_port", tcp),
            ("shm_socket", shm),
            ("shm_arena_id", id),
            ("shm_arena_size", size),
            ("rdma", Reply::Bulk(Bytes::from(self.rdma_state()))),
            (
                "reserve_timeout_ms",
                Reply::Int(i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX)),
            ),
        ])
    }
}

impl Resolver for DataState {
    fn inbound(&self, token: u64) -> Option<Arc<Inbound>> {
        self.reservations
            .lock()
            .get(&token)
            .filter(|r| r.kind == Kind::Tcp)
            .map(|r| r.inbound.clone())
    }

    fn outbound(&self, token: u64) -> Option<Bytes> {
        self.located.lock().get(&token).cloned()
    }
}

fn descriptor(kind: Kind, offset: u64, len: u64, token: u64) -> Reply {
    Reply::Array(vec![
        Reply::text(kind.as_str()),
        Reply::Int(offset as i64),
        Reply::Int(len as i64),
        Reply::Int(token as i64),
    ])
}
