//! `tidepool-bench replay`: a trace replayed through a real tidepool-server.
//!
//! For each request: `KV.MATCH` its chain, then store the blocks from the
//! first miss on, in chain order (`KV.MPUT ... CHAIN`), with payloads of
//! `block_bytes`. The server the bench starts holds exactly `capacity_blocks`
//! such blocks (its DRAM capacity is that many blocks' charge, watermarks at
//! 1.0, so it evicts one block per block stored once full), which makes its
//! hit ratio comparable block for block with the offline simulation of its
//! policy, reported beside it.

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use tidepool_client::{Client, ClientOptions, PlaneChoice};

use crate::sim::{self, Policy};
use crate::{free_port, spawn_exact};

/// Settings of a replay.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Trace in Mooncake's format (JSON lines with timestamp and hash_ids).
    #[arg(long, default_value = "../shared/traces/conversation_trace.jsonl")]
    pub trace: std::path::PathBuf,
    /// Payload of each block in bytes.
    #[arg(long, default_value_t = 16384)]
    pub block_bytes: usize,
    /// Blocks the server holds (its DRAM is sized to exactly that many).
    #[arg(long, default_value_t = 5000)]
    pub capacity_blocks: usize,
    /// The server's eviction policy (its --eviction flag).
    #[arg(long)]
    pub eviction: Option<String>,
    /// Give the server an SSD tier of about this many blocks.
    #[arg(long)]
    pub ssd_blocks: Option<usize>,
    /// With --ssd-blocks: the server's --ssd-stage-on-match (matched SSD blocks
    /// near the log's reclaim end read back into DRAM).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ssd_stage_on_match: bool,
    /// Replay at this multiple of the trace's speed (timestamps honoured).
    #[arg(long, conflicts_with = "max")]
    pub speed: Option<f64>,
    /// As fast as possible (the default).
    #[arg(long)]
    pub max: bool,
    /// Only the first N requests.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Replay against this server instead of starting one.
    #[arg(long)]
    pub addr: Option<String>,
    /// tidepool-server binary.
    #[arg(long, default_value = "target/release/tidepool-server")]
    pub server: String,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Draw hit ratio over time and latency CDFs here (SVG).
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Per-block charge of the store (key + value + bookkeeping), as the server
/// computes it: keys are 8-byte big-endian hash ids.
pub(crate) fn charge(block_bytes: usize) -> u64 {
    8 + block_bytes as u64 + 128
}

fn key(id: u64) -> Bytes {
    Bytes::copy_from_slice(&id.to_be_bytes())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

/// Runs the replay and prints the report.
/// The prefix hit ratio of `requests` replayed through `client` (a node,
/// or a cluster): each chain matched, then stored from its first miss on.
///
/// With `group`, each key carries a Redis hash tag naming the first block
/// of its run of `group` blocks (`{<hex id>}` before the id), so that a
/// cluster keeps each such run of a chain on one node.
pub(crate) async fn hit_ratio(
    client: &Client,
    requests: &[sim::Request],
    block_bytes: usize,
    group: Option<usize>,
) -> anyhow::Result<f64> {
    let payload = Bytes::from(vec![0x5Au8; block_bytes]);
    let (mut queried, mut matched) = (0u64, 0u64);
    for req in requests {
        let keys: Vec<Bytes> = match group {
            None => req.chain.iter().map(|id| key(*id)).collect(),
            Some(n) => req
                .chain
                .iter()
                .enumerate()
                .map(|(j, id)| {
                    let mut k = format!("{{{:016x}}}", req.chain[j - j % n.max(1)]).into_bytes();
                    k.extend_from_slice(&id.to_be_bytes());
                    Bytes::from(k)
                })
                .collect(),
        };
        let hit = client.match_prefix(&keys, None).await?.matched;
        queried += keys.len() as u64;
        matched += hit as u64;
        if hit < keys.len() {
            let blocks: Vec<(Bytes, Bytes)> = keys[hit..]
                .iter()
                .map(|k| (k.clone(), payload.clone()))
                .collect();
            let parent = hit.checked_sub(1).map(|p| keys[p].clone());
            for r in client.put_many(&blocks, true, parent).await? {
                r?;
            }
        }
    }
    Ok(matched as f64 / queried.max(1) as f64)
}

pub async fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    let requests = sim::read_requests(&a.trace, a.limit)?;
    anyhow::ensure!(
        !requests.is_empty(),
        "{} holds no requests",
        a.trace.display()
    );
    // Declared before the server, so dropped after it.
    let mut _ssd_file = None;
    let mut _server = None;
    let addr = match &a.addr {
        Some(addr) => addr.clone(),
        None => {
            let port = free_port()?;
            let dram = a.capacity_blocks as u64 * charge(a.block_bytes);
            let mut args = Vec::new();
            if let Some(p) = &a.eviction {
                args.extend(["--eviction", p.as_str()]);
            }
            // A record is its block rounded up to 4 KiB plus a 4 KiB header
            // page at most; segments of 4 MiB keep FIFO reclaim fine-grained.
            let ssd_spec;
            if let Some(n) = a.ssd_blocks {
                let size = sim::SsdModel::replay(a.block_bytes, n, a.ssd_stage_on_match).segments
                    as u64
                    * sim::SEGMENT;
                let path = std::env::temp_dir()
                    .join(format!("tp-replay-{}-{port}.ssd", std::process::id()));
                let _ = std::fs::remove_file(&path);
                ssd_spec = format!("{}:{size}", path.display());
                _ssd_file = Some(RemoveOnDrop(path));
                args.extend(["--ssd", ssd_spec.as_str(), "--ssd-segment-size", "4MiB"]);
                if !a.ssd_stage_on_match {
                    args.extend(["--ssd-stage-on-match", "false"]);
                }
            }
            _server = Some(spawn_exact(&a.server, port, dram, &args).await?);
            format!("127.0.0.1:{port}")
        }
    };
    let client = Client::connect_with(
        &addr,
        ClientOptions {
            connections: 1,
            plane: PlaneChoice::Inline,
            ..ClientOptions::default()
        },
    )
    .await?;
    let payload = Bytes::from(vec![0x5Au8; a.block_bytes]);
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(requests.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} requests, hit {msg} [{elapsed}<{eta}]",
        )
        .expect("valid template"),
    );
    let (mut queried, mut matched, mut stored_bytes, mut put_errors) = (0u64, 0u64, 0u64, 0u64);
    let mut first_refusal: Option<String> = None;
    let mut match_lat = Vec::with_capacity(requests.len());
    let mut per_request: Vec<u32> = Vec::with_capacity(requests.len());
    let mut put_lat = Vec::new();
    // Hit ratio per window of requests, and cumulative.
    let window = (requests.len() / 100).max(1);
    let (mut wq, mut wm) = (0u64, 0u64);
    let mut series: Vec<(usize, f64, f64)> = Vec::new();
    let t0 = Instant::now();
    let first_ts = requests[0].timestamp_ms;
    for (i, req) in requests.iter().enumerate() {
        if let Some(speed) = a.speed {
            let due = Duration::from_secs_f64((req.timestamp_ms - first_ts) as f64 / 1e3 / speed);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let keys: Vec<Bytes> = req.chain.iter().map(|id| key(*id)).collect();
        let q = Instant::now();
        let hit = client.match_prefix(&keys, None).await?.matched;
        match_lat.push(q.elapsed());
        if a.ssd_blocks.is_some() && hit > 0 {
            // Matched SSD blocks are being staged into DRAM: let that end
            // before the puts, so that events happen in the trace's order.
            wait_for_demotions(&client).await?;
        }
        queried += keys.len() as u64;
        matched += hit as u64;
        per_request.push(hit as u32);
        wq += keys.len() as u64;
        wm += hit as u64;
        if hit < keys.len() {
            let blocks: Vec<(Bytes, Bytes)> = keys[hit..]
                .iter()
                .map(|k| (k.clone(), payload.clone()))
                .collect();
            let parent = hit.checked_sub(1).map(|p| keys[p].clone());
            let q = Instant::now();
            for (r, (k, _)) in client
                .put_many(&blocks, true, parent)
                .await?
                .into_iter()
                .zip(&blocks)
            {
                if let Err(e) = r {
                    put_errors += 1;
                    first_refusal.get_or_insert_with(|| format!("request {i}, block {k:?}: {e}"));
                }
            }
            put_lat.push(q.elapsed());
            stored_bytes += (blocks.len() * a.block_bytes) as u64;
            if a.ssd_blocks.is_some() {
                // Let the SSD tier take every demotion before the next
                // request (its queue would drop them otherwise): this
                // measures the policy, not the device's write speed.
                wait_for_demotions(&client).await?;
            }
        }
        if (i + 1) % window == 0 || i + 1 == requests.len() {
            series.push((
                i + 1,
                matched as f64 / queried.max(1) as f64,
                wm as f64 / wq.max(1) as f64,
            ));
            (wq, wm) = (0, 0);
            bar.set_message(format!("{:.4}", matched as f64 / queried.max(1) as f64));
        }
        bar.inc(1);
    }
    let elapsed = t0.elapsed();
    bar.finish_and_clear();
    let server_ratio = matched as f64 / queried.max(1) as f64;
    // The simulation of the policy the server runs (prefix-aware LRU).
    let chains: Vec<sim::Chain> = requests.iter().map(|r| r.chain.clone()).collect();
    let policy = match a.eviction.as_deref() {
        None | Some("lru") => Policy::LeafLru,
        Some(other) => Policy::parse(other)?,
    };
    // With an SSD tier, both tiers are simulated.
    let two_tiers = a.ssd_blocks;
    let sim_result = match two_tiers {
        Some(n) => sim::simulate_tiers(
            &chains,
            a.capacity_blocks,
            sim::SsdModel::replay(a.block_bytes, n, a.ssd_stage_on_match),
            policy,
        )?,
        None => sim::simulate(&chains, a.capacity_blocks, policy),
    };
    let simulated = sim_result.hit_ratio();
    // Request by request: how many matched as many blocks as the simulation
    // did, and the first that did not.
    let agreeing = per_request
        .iter()
        .zip(&sim_result.per_request)
        .filter(|(a, b)| a == b)
        .count();
    let first_divergence = per_request
        .iter()
        .zip(&sim_result.per_request)
        .position(|(a, b)| a != b);
    let stats = server_stats(&client).await.unwrap_or_default();
    match_lat.sort();
    put_lat.sort();
    let rps = requests.len() as f64 / elapsed.as_secs_f64();
    let mbs = stored_bytes as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "# replay of {} requests ({} blocks) from {}, {} B blocks, {} blocks of capacity, {}",
        requests.len(),
        queried,
        a.trace.display(),
        a.block_bytes,
        a.capacity_blocks,
        a.speed
            .map_or("as fast as possible".to_string(), |s| format!(
                "{s}x trace speed"
            ))
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!("| prefix hit ratio (server) | {server_ratio:.4} |");
    let what = if two_tiers.is_some() {
        format!("{} over SSD", policy.flag_name())
    } else {
        policy.flag_name().to_string()
    };
    println!("| prefix hit ratio (simulation of {what}) | {simulated:.4} |");
    println!("| difference | {:+.4} |", server_ratio - simulated);
    println!(
        "| requests matching as many blocks as simulated | {agreeing} of {} |",
        requests.len()
    );
    if let Some(i) = first_divergence {
        println!(
            "| first request that differs | {i}: server {}, simulation {} |",
            per_request[i], sim_result.per_request[i]
        );
    }
    println!("| requests/s | {rps:.0} |");
    println!("| stored MB/s | {mbs:.1} |");
    println!(
        "| KV.MATCH p50 / p99 µs | {:.0} / {:.0} |",
        pct(&match_lat, 0.5),
        pct(&match_lat, 0.99)
    );
    println!(
        "| KV.MPUT p50 / p99 µs | {:.0} / {:.0} |",
        pct(&put_lat, 0.5),
        pct(&put_lat, 0.99)
    );
    println!("| refused block puts | {put_errors} |");
    println!("| server evictions | {} |", stats.0);
    if let Some(path) = &a.json {
        let cdf = |v: &[Duration]| -> Vec<(f64, f64)> {
            (0..=100)
                .map(|p| (pct(v, p as f64 / 100.0), p as f64 / 100.0))
                .collect()
        };
        let j = serde_json::json!({
            "bench": "replay",
            "trace": a.trace.display().to_string(),
            "requests": requests.len(),
            "block_bytes": a.block_bytes,
            "capacity_blocks": a.capacity_blocks,
            "eviction": a.eviction.clone().unwrap_or_else(|| "lru".into()),
            "blocks_queried": queried,
            "blocks_matched": matched,
            "hit_ratio": server_ratio,
            "simulated_hit_ratio": simulated,
            "requests_matching_simulation": agreeing,
            "first_divergence": first_divergence.map(|i| serde_json::json!({
                "request": i,
                "server": per_request[i],
                "simulated": sim_result.per_request[i],
            })),
            "simulated_policy": what,
            "requests_per_s": rps,
            "stored_mb_per_s": mbs,
            "match_p50_us": pct(&match_lat, 0.5),
            "match_p99_us": pct(&match_lat, 0.99),
            "put_p50_us": pct(&put_lat, 0.5),
            "put_p99_us": pct(&put_lat, 0.99),
            "refused_puts": put_errors,
            "server_evictions": stats.0,
            "hit_ratio_over_time": series.iter().map(|(n, c, w)| serde_json::json!({"requests": n, "cumulative": c, "window": w})).collect::<Vec<_>>(),
            "match_latency_cdf_us": cdf(&match_lat),
            "put_latency_cdf_us": cdf(&put_lat),
        });
        std::fs::write(path, serde_json::to_string_pretty(&j)?)?;
    }
    if let Some(path) = &a.svg {
        let settings = format!(
            "{}, {} requests, {} blocks of {} B, eviction {}{}",
            a.trace
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            requests.len(),
            a.capacity_blocks,
            a.block_bytes,
            a.eviction.as_deref().unwrap_or("lru"),
            a.ssd_blocks
                .map_or(String::new(), |n| format!(", SSD {n} blocks"))
        );
        crate::plot::replay_svg(path, &series, &match_lat, &put_lat, simulated, &settings)?;
    }
    if let Some(first) = first_refusal {
        bail!("{put_errors} block puts were refused; the first: {first}");
    }
    Ok(())
}

/// A file removed when this goes out of scope.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits until the server has no demotion queued for its SSD tier.
async fn wait_for_demotions(c: &Client) -> anyhow::Result<()> {
    loop {
        let info = c
            .command(vec![
                Bytes::from_static(b"INFO"),
                Bytes::from_static(b"tiers"),
            ])
            .await?;
        let text = match info {
            tidepool_client::Frame::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            other => bail!("INFO answered {other:?}"),
        };
        let pending = text
            .lines()
            .find_map(|l| l.strip_prefix("ssd_pending_demotions:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if pending == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// (DRAM evictions) from KV.STATS.
async fn server_stats(c: &Client) -> anyhow::Result<(i64,)> {
    let s = c.stats().await?;
    let ev = s
        .tiers
        .get("dram")
        .and_then(|t| t.get("evictions"))
        .copied()
        .unwrap_or(0);
    Ok((ev,))
}
