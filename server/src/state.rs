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
}

impl Shared {
    /// Builds the shared state for `config`, opening and recovering the SSD
    /// tier when one is configured.
    pub fn new(config: Config) -> anyhow::Result<Arc<Shared>> {
        let pubsub = Arc::new(PubSub::default());
        let limit = crate::config::OutputLimit::parse(&config.client_output_buffer_limit_pubsub)?;
        pubsub.limits.set(limit.hard, limit.soft, limit.soft_secs);
        let store = Arc::new(Store::with_parts(
            config.store_config(),
            Some(pubsub.clone() as Arc<dyn EventSink>),
            Arc::new(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0)
            }),
        ));
        if let Some(spec) = &config.ssd {
            attach_ssd(&store, &config, spec)?;
        }
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
}

fn attach_ssd(store: &Arc<Store>, config: &Config, spec: &str) -> anyhow::Result<()> {
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
    let tier = Arc::new(opened.tier);
    tracing::info!(
        path = %tier.log().path().display(),
        capacity = tier.capacity(),
        engine = tier.log().engine_name(),
        direct = tier.log().is_direct(),
        recovered_blocks = opened.recovered.len(),
        recovery_ms = started.elapsed().as_millis() as u64,
        "SSD tier ready"
    );
    let capacity = tier.capacity();
    let settings = tidepool_tiering::SsdSettings {
        promote: config.ssd_promote,
        stage_on_match: config.ssd_stage_on_match,
        ..Default::default()
    };
    store
        .attach_ssd(tier, capacity, opened.recovered, settings)
        .map_err(anyhow::Error::msg)
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
