//! State shared by all connections: the store, live settings, the client
//! registry, pub/sub and server counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tidepool_tiering::{EventSink, Store};

use crate::config::Config;
use crate::pubsub::PubSub;

/// Everything connections share.
pub struct Shared {
    /// The block store.
    pub store: Arc<Store>,
    /// Live settings (CONFIG SET changes some).
    pub config: RwLock<Config>,
    /// Connected clients.
    pub clients: Clients,
    /// Channels, patterns and the block event stream.
    pub pubsub: Arc<PubSub>,
    /// Server counters.
    pub stats: ServerStats,
    /// When the server started.
    pub started: Instant,
    /// Notified by SHUTDOWN.
    pub shutdown: tokio::sync::Notify,
    /// Reservations and located blocks of the data plane.
    pub data: Arc<crate::data::DataState>,
    /// `timeout`: seconds a client may go without a command (0: forever),
    /// kept beside the config so the connection loop reads it without a lock.
    pub idle_timeout: AtomicU64,
    /// Read buffers allocated ahead of their bytes, over all connections.
    pub read_ahead: crate::conn::ReadAhead,
    /// Output limits of normal (not subscribed) clients, as Redis's
    /// `client-output-buffer-limit normal` (0 0 0 by default: off).
    pub normal_limits: crate::pubsub::Limits,
    /// Per-command counters, the slow log, the latency monitor.
    pub observed: crate::observe::Observed,
    /// A random id of this run (INFO run_id and master_replid).
    pub run_id: String,
    /// Unix time the server started, in seconds.
    pub started_unix: u64,
    /// Commands a second over the last 1.6 s (INFO instantaneous_ops_per_sec).
    pub ops_per_sec: AtomicU64,
    /// CLIENT PAUSE: until when (milliseconds of uptime; 0: not paused).
    pub pause_until_ms: AtomicU64,
    /// CLIENT PAUSE WRITE: only writes wait.
    pub pause_writes_only: std::sync::atomic::AtomicBool,
    /// Woken by CLIENT UNPAUSE (and a new PAUSE).
    pub pause_changed: tokio::sync::Notify,
    /// Cluster mode: this node's membership (unset: one node alone).
    pub cluster: std::sync::OnceLock<crate::cluster::Cluster>,
    /// Where clients reach this node (`--announce`, else the bound
    /// address): what WITHNODES names.
    pub addr: std::sync::OnceLock<String>,
    /// `--kv-events-zmq`: block events for routers over ZMQ.
    pub zmq: Option<Arc<crate::zmq_events::ZmqEvents>>,
    /// MONITOR clients, by id.
    pub monitors: parking_lot::Mutex<HashMap<u64, crate::pubsub::Subscriber>>,
    /// How many there are (read by every command: no lock when none).
    pub monitoring: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Builds the shared state for `config`, opening and recovering the SSD
    /// tier when one is configured.
    pub fn new(config: Config) -> anyhow::Result<Arc<Shared>> {
        let pubsub = Arc::new(PubSub::default());
        let limit = crate::config::OutputLimit::parse(&config.client_output_buffer_limit_pubsub)?;
        pubsub.limits.set(limit.hard, limit.soft, limit.soft_secs);
        let zmq = config
            .kv_events_zmq
            .as_ref()
            .map(|_| crate::zmq_events::ZmqEvents::new(config.kv_events_queue));
        let sinks = crate::zmq_events::Sinks {
            pubsub: pubsub.clone(),
            zmq: zmq.clone(),
        };
        let mut builder = tidepool_tiering::StoreBuilder::new(config.store_config())
            .events(Arc::new(sinks) as Arc<dyn EventSink>)
            .with_tier(tidepool_tiering::TierSpec::dram(config.dram.as_u64()));
        if let Some(spec) = &config.ssd {
            builder = builder.with_tier(open_ssd(&config, spec)?);
        }
        let store = builder.build().map_err(anyhow::Error::msg)?;
        // The arena backs data-plane reservations whatever the transport;
        // `shm` only decides whether local clients may map it.
        let arena = Some(config.shm_arena.unwrap_or(config.dram).as_u64());
        let data = Arc::new(crate::data::DataState::new(
            arena,
            std::time::Duration::from_millis(config.reserve_timeout),
        ));
        // Large values of inline puts (KV.PUT, SET, KV.MPUT) are copied into
        // the arena too, so that the DRAM tier's large blocks have one home
        // whose resident size is bounded by the arena's (a block left in its
        // request's heap buffer made the heap a second home, and resident
        // memory up to twice the capacity); its pages are already mapped
        // (fresh heap pages cost a fault and zeroing each), and shm readers
        // find the blocks there.
        if let Some(arena) = data.arena.clone() {
            store.set_value_alloc(Arc::new(move |v| {
                let mut b = arena.alloc(v.len())?;
                b.fill(v);
                Some(Bytes::from_owner(b))
            }));
        }
        Ok(Arc::new(Shared {
            idle_timeout: AtomicU64::new(config.timeout),
            read_ahead: crate::conn::ReadAhead::new(crate::conn::READ_AHEAD_BUDGET),
            normal_limits: crate::pubsub::Limits::new(0, 0, 0),
            observed: Default::default(),
            run_id: {
                use std::hash::{BuildHasher, Hasher};
                (0..3)
                    .map(|_| {
                        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                        h.write_u64(0);
                        format!("{:016x}", h.finish())
                    })
                    .collect::<String>()[..40]
                    .to_string()
            },
            started_unix: crate::observe::unix_secs(),
            ops_per_sec: AtomicU64::new(0),
            pause_until_ms: AtomicU64::new(0),
            pause_writes_only: Default::default(),
            pause_changed: tokio::sync::Notify::new(),
            cluster: std::sync::OnceLock::new(),
            addr: std::sync::OnceLock::new(),
            zmq,
            monitors: Default::default(),
            monitoring: Default::default(),
            data,
            store,
            config: RwLock::new(config),
            clients: Clients::default(),
            pubsub,
            stats: ServerStats::default(),
            started: Instant::now(),
            shutdown: tokio::sync::Notify::new(),
        }))
    }

    /// Milliseconds since the server started.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// CLIENT PAUSE: commands (writes only, with `writes_only`) wait `ms`.
    /// A pause never shortens one in force, as in Redis.
    pub fn pause(&self, ms: u64, writes_only: bool) {
        let until = self.uptime_ms().saturating_add(ms).max(1);
        let before = self.pause_until_ms.load(Relaxed);
        let active = before > self.uptime_ms();
        // An ALL pause stays ALL while it lasts.
        let all_in_force = active && !self.pause_writes_only.load(Relaxed);
        let writes_only = writes_only && !all_in_force;
        self.pause_writes_only.store(writes_only, Relaxed);
        self.pause_until_ms.store(until.max(before), Relaxed);
        self.pause_changed.notify_waiters();
    }

    /// CLIENT UNPAUSE.
    pub fn unpause(&self) {
        self.pause_until_ms.store(0, Relaxed);
        self.pause_changed.notify_waiters();
    }

    /// How long a command of row `spec` must still wait, if paused.
    pub fn paused_for(&self, spec: &tidepool_protocol::table::CommandSpec) -> Option<u64> {
        let until = self.pause_until_ms.load(Relaxed);
        if until == 0 {
            return None;
        }
        let now = self.uptime_ms();
        if until <= now {
            return None;
        }
        // CLIENT itself (UNPAUSE among it), QUIT and RESET are never held.
        if matches!(spec.name, "client" | "quit" | "reset") {
            return None;
        }
        let writes = self.pause_writes_only.load(Relaxed);
        (!writes || spec.flags.contains(&"write")).then(|| until - now)
    }
}

/// Opens (and recovers) the SSD tier of `--ssd`, as the store's last level.
fn open_ssd(config: &Config, spec: &str) -> anyhow::Result<tidepool_tiering::TierSpec> {
    use anyhow::Context;
    let (path, capacity) = crate::config::parse_ssd(spec)?;
    let log = tidepool_tiering::ssd::LogConfig {
        path: path.clone(),
        capacity,
        segment_size: config.ssd_segment_size.as_u64(),
        direct: true,
    };
    let started = Instant::now();
    let opened = tidepool_tiering::ssd::SsdTier::open(&log, config.ssd_engine_choice()?)
        .with_context(|| format!("opening the SSD tier at {}", path.display()))?;
    if let Some(why) = &opened.fallback {
        tracing::warn!("{why}");
    }
    for why in opened.tier.log().warnings() {
        tracing::warn!("{why}");
    }
    let tier = &opened.tier;
    tracing::info!(
        path = %tier.log().path().display(),
        capacity = tier.capacity(),
        engine = tier.log().engine_name(),
        direct = tier.log().is_direct(),
        recovered_blocks = opened.recovered.len(),
        recovery_ms = started.elapsed().as_millis() as u64,
        "SSD tier ready"
    );
    let pipe = tidepool_tiering::PipeSettings {
        promote: config.ssd_promote,
        stage_on_match: config.ssd_stage_on_match,
        ..Default::default()
    };
    Ok(opened.into_spec(pipe))
}

/// Server-wide counters (INFO stats).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused for maxclients.
    pub rejected: AtomicU64,
    /// Commands processed.
    pub commands: AtomicU64,
    /// Bytes read from clients.
    pub net_in: AtomicU64,
    /// Bytes written to clients.
    pub net_out: AtomicU64,
    /// Connections closed for protocol errors.
    pub protocol_errors: AtomicU64,
}

/// What CLIENT LIST shows of one connection. Updated by its own connection only.
#[derive(Debug)]
pub struct ClientState {
    /// Client id.
    pub id: u64,
    /// Peer address.
    pub addr: SocketAddr,
    /// Local address.
    pub laddr: SocketAddr,
    /// Connection time.
    pub created: Instant,
    /// CLIENT SETNAME.
    pub name: Mutex<Option<Bytes>>,
    /// Milliseconds since server start of the last command.
    pub last_active_ms: AtomicU64,
    /// Name of the last command.
    pub last_cmd: Mutex<&'static str>,
    /// Protocol version (2 or 3).
    pub resp: AtomicU8,
    /// Channel subscriptions.
    pub subs: AtomicUsize,
    /// Pattern subscriptions.
    pub psubs: AtomicUsize,
    /// Bytes in the read (query) buffer, and its capacity (CLIENT LIST's
    /// qbuf and qbuf-free), as of the connection's last wait.
    pub qbuf: AtomicUsize,
    /// The read buffer's capacity.
    pub qbuf_cap: AtomicUsize,
    /// The socket's file descriptor.
    pub fd: i32,
    /// Commands queued in a transaction (-1 outside one), and their bytes.
    pub multi: std::sync::atomic::AtomicI64,
    /// Bytes a transaction holds queued.
    pub multi_mem: AtomicUsize,
    /// Bytes queued to the client and not yet written (pub/sub, MONITOR).
    pub output: Mutex<Option<Arc<crate::pubsub::Output>>>,
    /// CLIENT SETINFO LIB-NAME / LIB-VER.
    pub lib: Mutex<(String, String)>,
    /// Set by CLIENT KILL; the connection closes at once.
    pub killed: std::sync::atomic::AtomicBool,
    /// Wakes the connection to close (a permit is kept if it is busy).
    pub kill: tokio::sync::Notify,
    /// Set by MONITOR.
    pub monitor: std::sync::atomic::AtomicBool,
}

impl ClientState {
    /// Closes the connection (CLIENT KILL).
    pub fn kill(&self) {
        self.killed.store(true, Relaxed);
        self.kill.notify_one();
    }
}

/// Registry of connected clients.
#[derive(Debug, Default)]
pub struct Clients {
    map: Mutex<HashMap<u64, Arc<ClientState>>>,
    next_id: AtomicU64,
}

impl Clients {
    /// Registers a connection if fewer than `max` are connected.
    pub fn register(
        &self,
        addr: SocketAddr,
        laddr: SocketAddr,
        fd: i32,
        max: usize,
    ) -> Option<Arc<ClientState>> {
        let mut map = self.map.lock();
        if map.len() >= max {
            return None;
        }
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        let st = Arc::new(ClientState {
            id,
            addr,
            laddr,
            created: Instant::now(),
            name: Mutex::new(None),
            last_active_ms: AtomicU64::new(0),
            last_cmd: Mutex::new("NULL"),
            resp: AtomicU8::new(2),
            subs: AtomicUsize::new(0),
            psubs: AtomicUsize::new(0),
            qbuf: AtomicUsize::new(0),
            qbuf_cap: AtomicUsize::new(0),
            fd,
            multi: std::sync::atomic::AtomicI64::new(-1),
            multi_mem: AtomicUsize::new(0),
            output: Mutex::new(None),
            lib: Mutex::new((String::new(), String::new())),
            killed: Default::default(),
            kill: tokio::sync::Notify::new(),
            monitor: Default::default(),
        });
        map.insert(id, st.clone());
        Some(st)
    }

    /// Forgets a connection.
    pub fn unregister(&self, id: u64) {
        self.map.lock().remove(&id);
    }

    /// Connected clients.
    pub fn count(&self) -> usize {
        self.map.lock().len()
    }

    /// All clients, by id.
    pub fn all(&self) -> Vec<Arc<ClientState>> {
        let mut v: Vec<_> = self.map.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }
}
