//! INFO: sections server, clients, memory, stats, keyspace, kvcache, tiers and
//! dataplane,
//! as `# Section` headers and `field:value` lines.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use crate::cmd::server::REDIS_COMPAT_VERSION;
use crate::state::Shared;

const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "stats",
    "keyspace",
    "kvcache",
    "tiers",
    "dataplane",
];

/// Renders the asked sections (all of them for none, `all`, `default` or `everything`).
pub fn render(shared: &Shared, asked: &[Bytes]) -> String {
    let wanted: Vec<&str> = if asked.is_empty()
        || asked.iter().any(|a| {
            [&b"all"[..], b"default", b"everything"]
                .iter()
                .any(|w| a.eq_ignore_ascii_case(w))
        }) {
        SECTIONS.to_vec()
    } else {
        SECTIONS
            .iter()
            .copied()
            .filter(|s| asked.iter().any(|a| a.eq_ignore_ascii_case(s.as_bytes())))
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

fn rss_bytes() -> u64 {
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
            line!("process_id", std::process::id());
            line!("tcp_port", c.port);
            line!("uptime_in_seconds", shared.started.elapsed().as_secs());
            line!(
                "uptime_in_days",
                shared.started.elapsed().as_secs() / 86_400
            );
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
        }
        "memory" => {
            let used = shared.store.used();
            o.push_str("# Memory\r\n");
            line!("used_memory", used);
            line!("used_memory_human", human(used));
            line!("used_memory_rss", rss_bytes());
            line!("used_memory_retained", shared.store.retained());
            line!("maxmemory", shared.store.capacity());
            line!("maxmemory_human", human(shared.store.capacity()));
            line!("maxmemory_policy", "prefix-lru");
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
