//! Server settings: flags (clap) over an optional TOML file (`--config`) over
//! defaults. Option names follow Redis's where Redis has one.

use std::path::PathBuf;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Parser;
use serde::Deserialize;

/// Command-line flags. Every flag overrides the same key of the config file.
#[derive(Debug, Parser, Default)]
#[command(
    name = "tidepool-server",
    version,
    about = "tidepool: a KV-cache block store speaking RESP"
)]
pub struct Args {
    /// TOML file with settings (keys as the long flags, e.g. `dram = "4GiB"`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// TCP port of the RESP listener. Default: 6379.
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to listen on. Default: 127.0.0.1.
    #[arg(long)]
    pub bind: Option<String>,
    /// DRAM tier capacity, human size (e.g. 4GiB). Default: 1GiB.
    #[arg(long)]
    pub dram: Option<ByteSize>,
    /// Most simultaneous client connections. Default: 10000.
    #[arg(long)]
    pub maxclients: Option<usize>,
    /// Largest bulk string a client may send. Default: 512MiB.
    #[arg(long = "proto-max-bulk-len")]
    pub proto_max_bulk_len: Option<ByteSize>,
    /// Fraction of a tier's capacity above which writes evict. Default: 0.95.
    #[arg(long = "high-watermark")]
    pub high_watermark: Option<f64>,
    /// Fraction of a tier's capacity eviction brings usage back under. Default: 0.90.
    #[arg(long = "low-watermark")]
    pub low_watermark: Option<f64>,
    /// Worker threads (0: one per core). Default: 0.
    #[arg(long)]
    pub threads: Option<usize>,
    /// SSD tier: `PATH[:SIZE]`, PATH a file, a directory or a block device (a
    /// local NVMe drive or an NVMe-oF namespace). SIZE defaults to the size of
    /// an existing file or device. Default: no SSD tier.
    #[arg(long)]
    pub ssd: Option<String>,
    /// I/O engine of the SSD tier: auto (io_uring, else psync), io_uring, psync.
    /// Default: auto.
    #[arg(long = "ssd-engine")]
    pub ssd_engine: Option<String>,
    /// Segment size of the SSD tier. Default: 64MiB.
    #[arg(long = "ssd-segment-size")]
    pub ssd_segment_size: Option<ByteSize>,
    /// Move blocks read from SSD back to DRAM. Default: true.
    #[arg(long = "ssd-promote")]
    pub ssd_promote: Option<bool>,
    /// Read blocks that a KV.MATCH finds on SSD near the log's reclaim end
    /// back into DRAM, ahead of the read that usually follows. Default: true.
    #[arg(long = "ssd-stage-on-match")]
    pub ssd_stage_on_match: Option<bool>,
    /// Checksum every block stored in DRAM (XXH3), for KV.VERIFY. Off, a
    /// DRAM block has one only when it came over the tcp data plane (hashed
    /// as it arrives): shm puts then cost the server nothing per byte.
    /// Blocks on SSD always carry their records' checksums. Default: true.
    #[arg(long = "dram-checksums")]
    pub dram_checksums: Option<bool>,
    /// TCP port of the data plane (0: any free port). Default: the RESP port
    /// + 10000, or any free port when that one is taken.
    #[arg(long = "data-port")]
    pub data_port: Option<u16>,
    /// Serve the DRAM arena to clients on this host over shared memory.
    /// Default: true.
    #[arg(long)]
    pub shm: Option<bool>,
    /// Unix socket that hands the arena to local clients. Default:
    /// /tmp/tidepool-PORT.sock.
    #[arg(long = "shm-socket")]
    pub shm_socket: Option<PathBuf>,
    /// Size of the shared DRAM arena (memfd; pages are backed once used).
    /// Default: the DRAM capacity.
    #[arg(long = "shm-arena")]
    pub shm_arena: Option<ByteSize>,
    /// File mode of the shm socket, octal (Redis's `unixsocketperm`):
    /// whoever may open it may map the arena read-write. Default: 600.
    #[arg(long = "shm-socket-perm")]
    pub shm_socket_perm: Option<String>,
    /// Milliseconds before an uncommitted reservation is dropped. Default: 30000.
    #[arg(long = "reserve-timeout")]
    pub reserve_timeout: Option<u64>,
    /// Most leases held at once (KV.MATCH ... LEASE, KV.LOCATE); past it
    /// those answer -BUSY until some are released or expire. Default:
    /// 1000000.
    #[arg(long = "max-leases")]
    pub max_leases: Option<u64>,
    /// Longest lease a client may ask for, in milliseconds (KV.MATCH ...
    /// LEASE, KV.LOCATE ... LEASE); longer ones are refused. Default: 600000.
    #[arg(long = "max-lease-ms")]
    pub max_lease_ms: Option<u64>,
    /// Output buffer limit of pub/sub clients, as Redis's
    /// `client-output-buffer-limit pubsub`: `HARD SOFT SECONDS` (sizes in
    /// bytes or human sizes; 0 turns a limit off). Default: "32mb 8mb 60".
    #[arg(long = "client-output-buffer-limit-pubsub")]
    pub client_output_buffer_limit_pubsub: Option<String>,
    /// Seconds after which an idle client (no command, no subscription) is
    /// closed, as Redis's `timeout`; 0 never. Default: 0.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// DRAM eviction policy: lru (least recently used first) or adaptive
    /// (probation and main segments, ghost admission, the split tuned by
    /// miniature simulations). Both are prefix-aware: a block goes only after
    /// its children. Default: lru.
    #[arg(long)]
    pub eviction: Option<String>,
    /// Cluster mode: the etcd endpoints, `etcd://host:port[,host:port...]`.
    /// Default: none (one node alone, no etcd).
    #[arg(long)]
    pub cluster: Option<String>,
    /// The cluster's name (its keys in etcd). Default: "tidepool".
    #[arg(long = "cluster-name")]
    pub cluster_name: Option<String>,
    /// Where clients reach this node, `host:port`, as the cluster announces
    /// it (MOVED, CLUSTER SLOTS). Default: the bind address and port.
    #[arg(long)]
    pub announce: Option<String>,
    /// Seconds this node's registration outlives its last renewal. Default: 10.
    #[arg(long = "cluster-lease-ttl")]
    pub cluster_lease_ttl: Option<u64>,
    /// Publish block events in vLLM's KV-events format (msgpack batches on
    /// a ZMQ PUB socket) bound here, `tcp://HOST:PORT` (`*` for every
    /// interface), for KV-aware routers. Default: none.
    #[arg(long = "kv-events-zmq")]
    pub kv_events_zmq: Option<String>,
    /// The topic (first frame) of those messages. Default: "" (empty).
    #[arg(long = "kv-events-topic")]
    pub kv_events_topic: Option<String>,
    /// Tokens per block, as the events' `block_size` declares it (the
    /// engines' block size). Default: 16.
    #[arg(long = "kv-events-block-size")]
    pub kv_events_block_size: Option<u64>,
    /// Events queued for the ZMQ publisher; past it events are dropped (and
    /// subscribers see a gap in the sequence numbers). Default: 65536.
    #[arg(long = "kv-events-queue")]
    pub kv_events_queue: Option<usize>,
}

/// The server's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// TCP port. Default: 6379, as Redis.
    pub port: u16,
    /// Listen address. Default: loopback only, so a fresh node is not exposed.
    pub bind: String,
    /// DRAM tier capacity. Default: 1 GiB.
    pub dram: ByteSize,
    /// Most simultaneous clients. Default: 10000, as Redis.
    pub maxclients: usize,
    /// Largest bulk string. Default: 512 MiB, as Redis.
    pub proto_max_bulk_len: ByteSize,
    /// High watermark as a fraction of capacity. Default: 0.95.
    pub high_watermark: f64,
    /// Low watermark as a fraction of capacity. Default: 0.90: evicting 5% at a
    /// time amortises the eviction scan over many writes.
    pub low_watermark: f64,
    /// Worker threads; 0 means one per core. Default: 0.
    pub threads: usize,
    /// SSD tier as `PATH[:SIZE]`. Default: none.
    pub ssd: Option<String>,
    /// SSD I/O engine: `auto`, `io_uring` or `psync`. Default: auto.
    pub ssd_engine: String,
    /// SSD segment size. Default: 64 MiB: large sequential writes, and the unit
    /// of space reclaimed at once.
    pub ssd_segment_size: ByteSize,
    /// Promote blocks read from SSD to DRAM. Default: true.
    pub ssd_promote: bool,
    /// Stage blocks a match finds on SSD near reclaim into DRAM. Default: true.
    pub ssd_stage_on_match: bool,
    /// Checksum every DRAM block. Default: true.
    pub dram_checksums: bool,
    /// Data plane TCP port; `None` is the RESP port + 10000 (any free port
    /// when taken), 0 any free port.
    pub data_port: Option<u16>,
    /// Serve the arena over shared memory. Default: true.
    pub shm: bool,
    /// The shm socket path; `None` is /tmp/tidepool-PORT.sock.
    pub shm_socket: Option<PathBuf>,
    /// Arena size; `None` is the DRAM capacity.
    pub shm_arena: Option<ByteSize>,
    /// Mode of the shm socket file, octal. Default: "600": the arena is the
    /// stored blocks themselves, readable and writable by whoever maps it.
    pub shm_socket_perm: String,
    /// Milliseconds an uncommitted reservation lives. Default: 30000.
    pub reserve_timeout: u64,
    /// Most leases held at once. Default: 1,000,000: each costs the server
    /// 150-400 bytes (a KV.MATCH lease of one key about 160, a KV.LOCATE of
    /// one block about 400), so a client that leases in a loop and never
    /// releases holds at most a few hundred MB, not all the memory there is.
    pub max_leases: u64,
    /// Longest lease, in milliseconds. Default: 600000 (10 minutes): a
    /// lease keeps blocks from eviction, so one without end would freeze
    /// the cache; an engine that needs blocks longer takes a new lease.
    pub max_lease_ms: u64,
    /// Pub/sub output buffer limit: `HARD SOFT SECONDS`. Default: "32mb
    /// 8mb 60", as Redis.
    pub client_output_buffer_limit_pubsub: String,
    /// Idle client timeout in seconds, 0 for none. Default: 0, as Redis.
    pub timeout: u64,
    /// DRAM eviction policy. Default: `lru`.
    pub eviction: String,
    /// Cluster mode's etcd endpoints (`etcd://host:port,...`); none: alone.
    pub cluster: Option<String>,
    /// The cluster's name. Default: "tidepool".
    pub cluster_name: String,
    /// This node's address as announced; none: bind:port.
    pub announce: Option<String>,
    /// Seconds a registration outlives its last renewal. Default: 10.
    pub cluster_lease_ttl: u64,
    /// ZMQ PUB endpoint of vLLM-format KV events; none: off.
    pub kv_events_zmq: Option<String>,
    /// Their topic. Default: "".
    pub kv_events_topic: String,
    /// The `block_size` they declare. Default: 16.
    pub kv_events_block_size: u64,
    /// Events queued for the publisher. Default: 65536.
    pub kv_events_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 6379,
            bind: "127.0.0.1".into(),
            dram: ByteSize::gib(1),
            maxclients: 10_000,
            proto_max_bulk_len: ByteSize::mib(512),
            high_watermark: 0.95,
            low_watermark: 0.90,
            threads: 0,
            ssd: None,
            ssd_engine: "auto".into(),
            ssd_segment_size: ByteSize::mib(64),
            ssd_promote: true,
            ssd_stage_on_match: true,
            dram_checksums: true,
            data_port: None,
            shm: true,
            shm_socket: None,
            shm_arena: None,
            shm_socket_perm: "600".into(),
            reserve_timeout: 30_000,
            max_leases: 1_000_000,
            max_lease_ms: 600_000,
            client_output_buffer_limit_pubsub: "32mb 8mb 60".into(),
            timeout: 0,
            eviction: "lru".into(),
            cluster: None,
            cluster_name: "tidepool".into(),
            announce: None,
            cluster_lease_ttl: 10,
            kv_events_zmq: None,
            kv_events_topic: String::new(),
            kv_events_block_size: 16,
            kv_events_queue: 65_536,
        }
    }
}

impl Config {
    /// Reads the config file named by `args` (if any) and applies the flags.
    pub fn load(args: &Args) -> anyhow::Result<Config> {
        let mut c = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => { $(if let Some(v) = &args.$f { c.$f = v.clone(); })* };
        }
        over!(
            port,
            bind,
            dram,
            maxclients,
            proto_max_bulk_len,
            high_watermark,
            low_watermark,
            threads
        );
        if let Some(v) = &args.ssd {
            c.ssd = Some(v.clone());
        }
        over!(
            ssd_engine,
            ssd_segment_size,
            ssd_promote,
            ssd_stage_on_match,
            dram_checksums,
            shm,
            reserve_timeout,
            max_leases,
            max_lease_ms,
            client_output_buffer_limit_pubsub,
            timeout,
            shm_socket_perm,
            eviction
        );
        if let Some(v) = args.data_port {
            c.data_port = Some(v);
        }
        if let Some(v) = &args.shm_socket {
            c.shm_socket = Some(v.clone());
        }
        if let Some(v) = args.shm_arena {
            c.shm_arena = Some(v);
        }
        if let Some(v) = &args.cluster {
            c.cluster = Some(v.clone());
        }
        if let Some(v) = &args.announce {
            c.announce = Some(v.clone());
        }
        over!(cluster_name, cluster_lease_ttl);
        if let Some(v) = &args.kv_events_zmq {
            c.kv_events_zmq = Some(v.clone());
        }
        over!(kv_events_topic, kv_events_block_size, kv_events_queue);
        c.validate()?;
        Ok(c)
    }

    /// Checks the settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.dram.as_u64() >= MIN_DRAM,
            "dram must be at least 1KiB, not {} bytes",
            self.dram.as_u64()
        );
        if let Some(a) = self.shm_arena {
            anyhow::ensure!(
                a.as_u64() >= MIN_ARENA,
                "shm-arena must be at least 64KiB, not {} bytes (--shm false turns shm off)",
                a.as_u64()
            );
        }
        anyhow::ensure!(
            self.threads <= MAX_THREADS,
            "threads must be at most {MAX_THREADS}, not {}",
            self.threads
        );
        self.store_config().validate().map_err(anyhow::Error::msg)?;
        anyhow::ensure!(self.maxclients > 0, "maxclients must be at least 1");
        anyhow::ensure!(
            self.proto_max_bulk_len.as_u64() >= 1024,
            "proto-max-bulk-len must be at least 1KiB"
        );
        self.ssd_engine_choice()?;
        let seg = self.ssd_segment_size.as_u64();
        anyhow::ensure!(
            seg >= 64 * 1024 && seg.is_multiple_of(4096),
            "ssd-segment-size must be at least 64KiB and a multiple of 4KiB"
        );
        if let Some(spec) = &self.ssd {
            parse_ssd(spec)?;
        }
        anyhow::ensure!(
            (1..=MAX_LEASE_MS_LIMIT).contains(&self.reserve_timeout),
            "reserve-timeout must be from 1 ms to a year ({MAX_LEASE_MS_LIMIT} ms)"
        );
        anyhow::ensure!(self.max_leases > 0, "max-leases must be at least 1");
        anyhow::ensure!(
            (1..=MAX_LEASE_MS_LIMIT).contains(&self.max_lease_ms),
            "max-lease-ms must be from 1 to {MAX_LEASE_MS_LIMIT} (a year)"
        );
        parse_perm(&self.shm_socket_perm)?;
        if let Some(e) = &self.kv_events_zmq {
            anyhow::ensure!(
                e.strip_prefix("tcp://")
                    .and_then(|r| r.rsplit_once(':'))
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                "kv-events-zmq takes tcp://HOST:PORT (HOST * for every interface), not {e:?}"
            );
        }
        anyhow::ensure!(
            (1..=1 << 24).contains(&self.kv_events_queue),
            "kv-events-queue must be from 1 to 16777216 events"
        );
        if let Some(spec) = &self.cluster {
            cluster_endpoints(spec)?;
            anyhow::ensure!(
                (1..=3600).contains(&self.cluster_lease_ttl),
                "cluster-lease-ttl must be from 1 to 3600 seconds"
            );
            anyhow::ensure!(
                !self.cluster_name.is_empty()
                    && self
                        .cluster_name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "cluster-name must be letters, digits, - and _"
            );
            if let Some(a) = &self.announce {
                anyhow::ensure!(
                    a.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                    "announce must be host:port, not {a:?}"
                );
            }
        }
        OutputLimit::parse(&self.client_output_buffer_limit_pubsub)?;
        anyhow::ensure!(
            tidepool_tiering::Eviction::parse(&self.eviction).is_some(),
            "eviction must be lru or adaptive, not {:?}",
            self.eviction
        );
        Ok(())
    }

    /// The SSD engine setting, parsed.
    pub fn ssd_engine_choice(&self) -> anyhow::Result<tidepool_tiering::io::EngineChoice> {
        use tidepool_tiering::io::EngineChoice;
        match self.ssd_engine.as_str() {
            "auto" => Ok(EngineChoice::Auto),
            "io_uring" | "uring" => Ok(EngineChoice::Uring),
            "psync" => Ok(EngineChoice::Psync),
            other => anyhow::bail!("ssd-engine must be auto, io_uring or psync, not {other:?}"),
        }
    }

    /// The block store's part of the settings.
    pub fn store_config(&self) -> tidepool_tiering::StoreConfig {
        tidepool_tiering::StoreConfig {
            dram_capacity: self.dram.as_u64(),
            high_watermark: self.high_watermark,
            low_watermark: self.low_watermark,
            eviction: tidepool_tiering::Eviction::parse(&self.eviction)
                .unwrap_or(tidepool_tiering::Eviction::Lru),
            dram_checksums: self.dram_checksums,
        }
    }

    /// Worker threads to start.
    pub fn threads(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        }
    }
}

/// The least DRAM a server starts with (tests run a few blocks' worth;
/// 0 would hold nothing at all).
pub const MIN_DRAM: u64 = 1 << 10;

/// The least shared arena a server starts with.
pub const MIN_ARENA: u64 = 64 << 10;

/// The most runtime worker threads (`--threads`).
pub const MAX_THREADS: usize = 1024;

/// The most `max-lease-ms` may be set to: a year.
pub const MAX_LEASE_MS_LIMIT: u64 = 365 * 24 * 3600 * 1000;

/// Parses a size as Redis's config does (`1k` 1000 bytes, `1kb` 1024, the
/// same for m/mb and g/gb, any case), else as a human size (`4GiB`).
pub fn parse_redis_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let units: [(&str, u64); 6] = [
        ("kb", 1 << 10),
        ("mb", 1 << 20),
        ("gb", 1 << 30),
        ("k", 1000),
        ("m", 1_000_000),
        ("g", 1_000_000_000),
    ];
    for (suffix, mul) in units {
        if let Some(n) = t.strip_suffix(suffix) {
            if let Ok(n) = n.parse::<u64>() {
                return n.checked_mul(mul);
            }
        }
    }
    if let Ok(n) = t.parse::<u64>() {
        return Some(n);
    }
    parse_size(s)
}

/// Parses an octal file mode such as `600` or `0660`.
pub fn parse_perm(s: &str) -> anyhow::Result<u32> {
    match u32::from_str_radix(s.trim(), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => anyhow::bail!("shm-socket-perm must be an octal mode such as 600, not {s:?}"),
    }
}

/// An output buffer limit, as Redis's `client-output-buffer-limit`: a client
/// whose unsent output passes `hard` bytes is closed at once; one above
/// `soft` bytes for `soft_secs` seconds on end is closed too. 0 turns a
/// limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimit {
    /// Bytes past which the client is closed at once.
    pub hard: u64,
    /// Bytes the client may stay above for `soft_secs`.
    pub soft: u64,
    /// Seconds above `soft` before the client is closed.
    pub soft_secs: u64,
}

impl OutputLimit {
    /// Parses `HARD SOFT SECONDS` (sizes as Redis writes them: `32mb`, or
    /// bytes).
    pub fn parse(s: &str) -> anyhow::Result<OutputLimit> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let bad = || anyhow::anyhow!("an output buffer limit is HARD SOFT SECONDS, not {s:?}");
        let [hard, soft, secs] = parts.as_slice() else {
            return Err(bad());
        };
        Ok(OutputLimit {
            hard: parse_redis_size(hard).ok_or_else(bad)?,
            soft: parse_redis_size(soft).ok_or_else(bad)?,
            soft_secs: secs.parse().map_err(|_| bad())?,
        })
    }

    /// The limit as CONFIG GET shows it (bytes).
    pub fn render(&self) -> String {
        format!("{} {} {}", self.hard, self.soft, self.soft_secs)
    }
}

/// The etcd endpoints of `--cluster etcd://host:port[,host:port...]`.
pub fn cluster_endpoints(spec: &str) -> anyhow::Result<Vec<String>> {
    let rest = spec.strip_prefix("etcd://").ok_or_else(|| {
        anyhow::anyhow!("cluster must be etcd://host:port[,host:port...], not {spec:?}")
    })?;
    let eps: Vec<String> = rest.split(',').map(|e| e.trim().to_string()).collect();
    anyhow::ensure!(
        eps.iter().all(|e| e
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())),
        "cluster endpoints must be host:port, not {rest:?}"
    );
    Ok(eps)
}

/// Splits `PATH[:SIZE]` into the path and the size (when one is given).
pub fn parse_ssd(spec: &str) -> anyhow::Result<(std::path::PathBuf, Option<u64>)> {
    if let Some((path, size)) = spec.rsplit_once(':') {
        if let Some(bytes) = parse_size(size) {
            anyhow::ensure!(!path.is_empty(), "--ssd needs a path before the size");
            return Ok((path.into(), Some(bytes)));
        }
    }
    anyhow::ensure!(!spec.is_empty(), "--ssd needs a path");
    Ok((spec.into(), None))
}

/// Parses a human size (`4GiB`, `512mb`, `1048576`).
pub fn parse_size(s: &str) -> Option<u64> {
    s.trim().parse::<ByteSize>().ok().map(|b| b.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("tp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "dram = \"2GiB\"\nport = 7000\nmaxclients = 5\n").unwrap();
        let args = Args {
            config: Some(path),
            port: Some(7001),
            ..Args::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!((c.port, c.dram.as_u64(), c.maxclients), (7001, 2 << 30, 5));
        assert_eq!(c.bind, "127.0.0.1");
        std::fs::write(dir.join("bad.toml"), "nope = 1\n").unwrap();
        let bad = Args {
            config: Some(dir.join("bad.toml")),
            ..Args::default()
        };
        assert!(Config::load(&bad).is_err());
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_ssd("/d:1GiB").unwrap(), ("/d".into(), Some(1 << 30)));
        assert_eq!(
            parse_ssd("/dev/nvme0n1").unwrap(),
            ("/dev/nvme0n1".into(), None)
        );
        assert!(parse_ssd(":1GiB").is_err());
        assert_eq!(parse_redis_size("32mb"), Some(32 << 20));
        assert_eq!(parse_redis_size("8MB"), Some(8 << 20));
        assert_eq!(parse_redis_size("1k"), Some(1000));
        assert_eq!(parse_redis_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_redis_size("-1"), None);
        let l = OutputLimit::parse("32mb 8mb 60").unwrap();
        assert_eq!((l.hard, l.soft, l.soft_secs), (32 << 20, 8 << 20, 60));
        assert_eq!(OutputLimit::parse(&l.render()).unwrap(), l);
        assert!(OutputLimit::parse("32mb 8mb").is_err());
        assert_eq!(parse_perm("600").unwrap(), 0o600);
        assert!(parse_perm("800").is_err() && parse_perm("1777").is_err());
        let bad = Config {
            ssd_engine: "floppy".into(),
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }
}
