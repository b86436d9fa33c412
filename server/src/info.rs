//! INFO: every section Redis 7 has (server, clients, memory, persistence,
//! stats, replication, cpu, modules, commandstats, errorstats, cluster,
//! keyspace) with tidepool's real numbers, and tidepool's own kvcache, tiers
//! and dataplane; `# Section` headers and `field:value` lines.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use crate::cmd::server::REDIS_COMPAT_VERSION;
use crate::state::Shared;

/// Every section, in order.
const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "commandstats",
    "errorstats",
    "cluster",
    "keyspace",
    "kvcache",
    "tiers",
    "dataplane",
];

/// Sections left out of a plain `INFO` (and `INFO default`), as Redis leaves
/// commandstats out.
const NOT_DEFAULT: &[&str] = &["commandstats"];

/// Renders the asked sections: `INFO` and `default` all but commandstats,
/// `all` and `everything` all, else those named.
pub fn render(shared: &Shared, asked: &[Bytes]) -> String {
    let is = |w: &[u8]| asked.iter().any(|a| a.eq_ignore_ascii_case(w));
    let wanted: Vec<&str> = if is(b"all") || is(b"everything") {
        SECTIONS.to_vec()
    } else if asked.is_empty() || is(b"default") {
        SECTIONS
            .iter()
            .copied()
            .filter(|s| !NOT_DEFAULT.contains(s))
            .collect()
    } else {
        SECTIONS
            .iter()
            .copied()
            .filter(|s| is(s.as_bytes()))
            .collect()
    };
    let mut out = String::new();
    for (i, s) in wanted.iter().enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        section(shared, s, &mut out);
    }
    out
}

/// The process's user and system CPU time, in seconds.
fn cpu_times() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

/// The machine's memory, from /proc/meminfo.
fn total_system_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Resident memory of the process.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn human(b: u64) -> String {
    bytesize::ByteSize::b(b).display().iec_short().to_string()
}

fn section(shared: &Shared, name: &str, o: &mut String) {
    let st = shared.store.stats();
    macro_rules! line {
        ($k:expr, $v:expr) => {
            let _ = write!(o, "{}:{}\r\n", $k, $v);
        };
    }
    match name {
        "server" => {
            let c = shared.config.read();
            o.push_str("# Server\r\n");
            line!("redis_version", REDIS_COMPAT_VERSION);
            line!("tidepool_version", env!("CARGO_PKG_VERSION"));
            line!("redis_mode", "standalone");
            line!("os", std::env::consts::OS);
            line!("arch_bits", usize::BITS);
            line!("redis_git_sha1", "00000000");
            line!("redis_git_dirty", 0);
            line!("multiplexing_api", "epoll");
            line!("process_id", std::process::id());
            line!("process_supervised", "no");
            line!("run_id", shared.run_id);
            line!("tcp_port", c.port);
            line!(
                "server_time_usec",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros())
            );
            line!("uptime_in_seconds", shared.started.elapsed().as_secs());
            line!(
                "uptime_in_days",
                shared.started.elapsed().as_secs() / 86_400
            );
            line!("hz", 10);
            line!("configured_hz", 10);
            line!(
                "executable",
                std::env::current_exe().map_or(String::new(), |p| p.display().to_string())
            );
            line!("config_file", "");
            line!("io_threads_active", c.threads());
        }
        "clients" => {
            let all = shared.clients.all();
            o.push_str("# Clients\r\n");
            line!("connected_clients", all.len());
            line!("maxclients", shared.config.read().maxclients);
            line!(
                "pubsub_clients",
                all.iter()
                    .filter(|c| c.subs.load(Relaxed) + c.psubs.load(Relaxed) > 0)
                    .count()
            );
            line!("blocked_clients", 0);
            line!("tracking_clients", 0);
            line!("watching_clients", 0);
            line!("clients_in_timeout_table", 0);
            line!("total_watched_keys", 0);
            line!("total_blocking_keys", 0);
            line!("monitor_clients", shared.monitoring.load(Relaxed));
            line!(
                "client_recent_max_input_buffer",
                all.iter()
                    .map(|c| c.qbuf_cap.load(Relaxed))
                    .max()
                    .unwrap_or(0)
            );
        }
        "memory" => {
            let used = shared.store.used();
            o.push_str("# Memory\r\n");
            line!("used_memory", used);
            line!("used_memory_human", human(used));
            let rss = rss_bytes();
            line!("used_memory_rss", rss);
            line!("used_memory_rss_human", human(rss));
            line!("used_memory_dataset", used);
            line!("used_memory_retained", shared.store.retained());
            let sys = total_system_memory();
            line!("total_system_memory", sys);
            line!("total_system_memory_human", human(sys));
            line!("maxmemory", shared.store.capacity());
            line!("maxmemory_human", human(shared.store.capacity()));
            line!("maxmemory_policy", shared.store.eviction().as_str());
            line!(
                "mem_fragmentation_ratio",
                format!("{:.2}", rss as f64 / used.max(1) as f64)
            );
            line!("mem_allocator", "mimalloc");
        }
        "persistence" => {
            // A cache: nothing is saved, and the SSD tier recovers itself.
            o.push_str("# Persistence\r\n");
            line!("loading", 0);
            line!("async_loading", 0);
            line!("rdb_changes_since_last_save", 0);
            line!("rdb_bgsave_in_progress", 0);
            line!("rdb_last_save_time", shared.started_unix);
            line!("rdb_last_bgsave_status", "ok");
            line!("rdb_saves", 0);
            line!("aof_enabled", 0);
            line!("aof_rewrite_in_progress", 0);
            line!("aof_last_bgrewrite_status", "ok");
            line!("aof_last_write_status", "ok");
        }
        "replication" => {
            o.push_str("# Replication\r\n");
            line!("role", "master");
            line!("connected_slaves", 0);
            line!("master_failover_state", "no-failover");
            line!("master_replid", shared.run_id);
            line!("master_replid2", "0000000000000000000000000000000000000000");
            line!("master_repl_offset", 0);
            line!("second_repl_offset", -1);
            line!("repl_backlog_active", 0);
            line!("repl_backlog_size", 0);
        }
        "cpu" => {
            let (user, sys) = cpu_times();
            o.push_str("# CPU\r\n");
            line!("used_cpu_sys", format!("{sys:.6}"));
            line!("used_cpu_user", format!("{user:.6}"));
            line!("used_cpu_sys_children", "0.000000");
            line!("used_cpu_user_children", "0.000000");
        }
        "modules" => {
            o.push_str("# Modules\r\n");
        }
        "commandstats" => {
            o.push_str("# Commandstats\r\n");
            for (spec, calls, usec, rejected, failed) in shared.observed.commandstats() {
                let per = if calls > 0 {
                    usec as f64 / calls as f64
                } else {
                    0.0
                };
                let _ = write!(
                    o,
                    "cmdstat_{}:calls={calls},usec={usec},usec_per_call={per:.2},\
                     rejected_calls={rejected},failed_calls={failed}\r\n",
                    spec.name.replace('.', "_")
                );
            }
        }
        "errorstats" => {
            o.push_str("# Errorstats\r\n");
            for (code, n) in shared.observed.errorstats() {
                let _ = write!(o, "errorstat_{code}:count={n}\r\n");
            }
        }
        "cluster" => {
            o.push_str("# Cluster\r\n");
            line!("cluster_enabled", shared.cluster.get().is_some() as u8);
        }
        "stats" => {
            let s = &shared.stats;
            let dram = st.tiers.first().cloned().unwrap_or_default();
            o.push_str("# Stats\r\n");
            line!("total_connections_received", s.connections.load(Relaxed));
            line!("total_commands_processed", s.commands.load(Relaxed));
            line!("total_net_input_bytes", s.net_in.load(Relaxed));
            line!("total_net_output_bytes", s.net_out.load(Relaxed));
            line!("rejected_connections", s.rejected.load(Relaxed));
            line!(
                "instantaneous_ops_per_sec",
                shared.ops_per_sec.load(Relaxed)
            );
            line!(
                "total_error_replies",
                shared
                    .observed
                    .errorstats()
                    .iter()
                    .map(|e| e.1)
                    .sum::<u64>()
            );
            line!(
                "total_error_replies_protocol",
                s.protocol_errors.load(Relaxed)
            );
            line!("expired_keys", st.expired);
            line!(
                "evicted_keys",
                st.tiers.iter().map(|t| t.evictions).sum::<u64>()
            );
            line!("keyspace_hits", dram.hits);
            line!("keyspace_misses", dram.misses);
            line!("pubsub_channels", shared.pubsub.channel_count());
            line!("pubsub_patterns", shared.pubsub.pattern_count());
            line!(
                "pubsub_dropped_messages",
                shared.pubsub.dropped.load(Relaxed)
            );
            line!("latest_fork_usec", 0);
            line!("total_forks", 0);
        }
        "keyspace" => {
            o.push_str("# Keyspace\r\n");
            let keys = shared.store.len();
            if keys > 0 {
                let _ = write!(o, "db0:keys={keys},expires={},avg_ttl=0\r\n", st.with_ttl);
            }
        }
        "kvcache" => {
            o.push_str("# Kvcache\r\n");
            line!("kv_matches", st.matches);
            line!("kv_keys_queried", st.keys_queried);
            line!("kv_keys_matched", st.keys_matched);
            line!(
                "kv_prefix_hit_ratio",
                format!("{:.6}", st.prefix_hit_ratio())
            );
            line!("kv_leases", st.leases);
            line!("kv_events_published", shared.pubsub.last_event_seq());
            if let Some(z) = &shared.zmq {
                line!(
                    "kv_events_zmq_endpoint",
                    z.endpoint.get().map_or("", |e| e.as_str())
                );
                line!("kv_events_zmq_batches", z.batches.load(Relaxed));
                line!("kv_events_zmq_events", z.events.load(Relaxed));
                line!("kv_events_zmq_lost", z.lost.load(Relaxed));
            }
        }
        "tiers" => {
            o.push_str("# Tiers\r\n");
            let (high, low) = shared.store.watermarks();
            for t in &st.tiers {
                let n = t.kind.map_or("?", |k| k.as_str());
                line!(format!("{n}_capacity"), t.capacity);
                line!(format!("{n}_used"), t.used);
                line!(format!("{n}_blocks"), t.blocks);
                line!(format!("{n}_hits"), t.hits);
                line!(format!("{n}_misses"), t.misses);
                line!(format!("{n}_evictions"), t.evictions);
                line!(format!("{n}_demotions"), t.demotions);
                line!(format!("{n}_promotions"), t.promotions);
                if n == "dram" {
                    line!(format!("{n}_high_watermark"), high);
                    line!(format!("{n}_low_watermark"), low);
                    line!("dram_eviction", shared.store.eviction().as_str());
                    line!("dram_probation_share", shared.store.probation_share());
                }
            }
            if let Some(s) = &st.ssd {
                line!("ssd_segments", s.segments);
                line!("ssd_segments_used", s.segments_used);
                line!("ssd_segment_size", s.segment_size);
                line!("ssd_pending_demotions", s.pending_demotions);
                line!("ssd_dropped_demotions", s.dropped_demotions);
                line!("ssd_staged", s.staged);
                line!("ssd_checksum_failures", s.checksum_failures);
                line!("ssd_segments_without_space", s.segments_without_space);
                line!("ssd_no_space_errors", s.no_space_errors);
                line!("ssd_syncs", s.syncs);
                line!("ssd_engine", s.engine);
                line!("ssd_direct_io", if s.direct { "yes" } else { "no" });
            }
        }
        "dataplane" => {
            let d = &shared.data;
            o.push_str("# Dataplane\r\n");
            line!("data_tcp_port", d.tcp_addr.get().map_or(0, |a| a.port()));
            line!(
                "data_shm_socket",
                d.shm_path
                    .get()
                    .map_or(String::new(), |p| p.display().to_string())
            );
            line!("data_arena_size", d.arena.as_ref().map_or(0, |a| a.size()));
            line!("data_arena_used", d.arena.as_ref().map_or(0, |a| a.used()));
            line!("data_quarantined_bytes", d.quarantined_bytes());
            line!("data_reservations_open", d.open_reservations());
            line!("data_reserved_bytes", d.reserved_bytes());
            line!("data_held_blocks", d.held_blocks());
            let s = &d.stats;
            line!("data_reserved", s.reserved.load(Relaxed));
            line!("data_committed", s.committed.load(Relaxed));
            line!("data_committed_bytes", s.committed_bytes.load(Relaxed));
            line!("data_aborted", s.aborted.load(Relaxed));
            line!("data_corrupt", s.corrupt.load(Relaxed));
            line!("data_expired", s.expired.load(Relaxed));
            line!("data_located", s.located.load(Relaxed));
            line!("data_located_copies", s.located_copies.load(Relaxed));
        }
        _ => {}
    }
}
