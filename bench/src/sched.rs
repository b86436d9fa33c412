//! `tidepool-bench sched`: a prefill cluster fed by a trace, in simulated
//! time, with its KV caches in real tidepool servers.
//!
//! N prefill instances each have a tidepool node of their own (their local
//! DRAM cache) and share one pool node. For each request the scheduler asks
//! every node how much of the request's chain it holds (`KV.MATCH`, never the
//! trace), estimates each instance's time to first token, picks an instance by
//! the policy, and advances that instance's clock; the instance then holds the
//! whole chain in its node and publishes it to the pool (`KV.MPUT ... CHAIN`
//! of the blocks each lacks).
//!
//! Time to first token on instance i (all in seconds):
//!
//! ```text
//! queue_i    = max(0, busy_until_i - arrival)
//! cached_i   = max(local_i, pool) blocks          (prefix blocks found)
//! fetch_i    = (pool - local_i)+ * block_bytes / bandwidth
//! new        = (chain - cached_i) * block_tokens  (tokens to prefill)
//! prefill_i  = overhead + new * per_token + new * (new/2 + cached_i * block_tokens) * per_token_pair
//! ttft_i     = queue_i + fetch_i + prefill_i
//! ```
//!
//! The linear term is the MLP cost per token, the pair term the attention of
//! each new token over the context before it; parameters are flags.
//! Policies: round-robin, least-loaded (least queue), cache-aware (longest
//! local prefix, ties to the least loaded), and Conductor (least estimated
//! TTFT; a request none can serve within the SLO is rejected early).

use bytes::Bytes;
use tidepool_client::{Client, ClientOptions, PlaneChoice};

use crate::sim::{self, keys_of};
use crate::{free_port, spawn_exact, Proc};

/// Scheduling policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedPolicy {
    /// Instances in turn.
    RoundRobin,
    /// The instance with the shortest queue.
    LeastLoaded,
    /// The instance with the longest cached prefix in its own node.
    CacheAware,
    /// The least estimated time to first token, with early rejection.
    Conductor,
}

impl SchedPolicy {
    /// The name the `--policies` flag takes.
    pub fn flag_name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
}

/// Settings of the scheduler simulation.
#[derive(clap::Args)]
pub struct SchedArgs {
    /// Trace in Mooncake's format.
    #[arg(long, default_value = "../shared/traces/conversation_trace.jsonl")]
    pub trace: std::path::PathBuf,
    /// Only the first N requests.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Prefill instances.
    #[arg(long, default_value_t = 4)]
    pub instances: usize,
    /// Blocks each instance's node holds.
    #[arg(long, default_value_t = 5000)]
    pub local_blocks: usize,
    /// Blocks the shared pool holds.
    #[arg(long, default_value_t = 20000)]
    pub pool_blocks: usize,
    /// Tokens per block.
    #[arg(long, default_value_t = 512)]
    pub block_tokens: u64,
    /// KV bytes of one block (transfer time from the pool).
    #[arg(long, default_value_t = 40 << 20)]
    pub block_kv_bytes: u64,
    /// Pool-to-instance bandwidth, bytes/s.
    #[arg(long, default_value_t = 25e9)]
    pub bandwidth: f64,
    /// Fixed cost of one prefill, s.
    #[arg(long, default_value_t = 0.02)]
    pub overhead: f64,
    /// Prefill cost per new token, s.
    #[arg(long, default_value_t = 5e-5)]
    pub per_token: f64,
    /// Attention cost per (new token, context token) pair, s.
    #[arg(long, default_value_t = 2e-9)]
    pub per_token_pair: f64,
    /// Time-to-first-token SLO, s (Conductor rejects requests that cannot meet it).
    #[arg(long, default_value_t = 5.0)]
    pub slo: f64,
    /// Arrival speed-up against the trace's timestamps.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Policies to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "round-robin,least-loaded,cache-aware,conductor"
    )]
    pub policies: Vec<SchedPolicy>,
    /// tidepool-server binary.
    #[arg(long, default_value = "target/release/tidepool-server")]
    pub server: String,
    /// JSON output.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// TTFT CDF per policy (SVG).
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
}

/// What one policy achieved.
pub struct SchedResult {
    /// The policy.
    pub policy: SchedPolicy,
    /// Blocks served from a cache (local or pool) over blocks asked for, of
    /// the requests served.
    pub hit_ratio: f64,
    /// TTFTs of the served requests, sorted, s.
    pub ttft: Vec<f64>,
    /// Requests rejected.
    pub rejected: usize,
}

async fn start_node(server: &str, blocks: usize) -> anyhow::Result<(Proc, Client)> {
    let port = free_port()?;
    // 8-byte keys, 1-byte payloads: the nodes hold block metadata; the
    // transfer cost is modelled from block_kv_bytes.
    let dram = blocks as u64 * tidepool_tiering::charge_of(8, 1);
    let p = spawn_exact(server, port, dram, &[]).await?;
    let c = Client::connect_with(
        &format!("127.0.0.1:{port}"),
        ClientOptions {
            connections: 1,
            plane: PlaneChoice::Inline,
            ..ClientOptions::default()
        },
    )
    .await?;
    Ok((p, c))
}

async fn store_from(c: &Client, keys: &[Bytes], from: usize) -> anyhow::Result<()> {
    if from >= keys.len() {
        return Ok(());
    }
    let one = Bytes::from_static(b"k");
    let blocks: Vec<(Bytes, Bytes)> = keys[from..]
        .iter()
        .map(|k| (k.clone(), one.clone()))
        .collect();
    let parent = from.checked_sub(1).map(|p| keys[p].clone());
    for r in c.put_many(&blocks, true, parent).await? {
        r?;
    }
    Ok(())
}

async fn run_policy(
    a: &SchedArgs,
    policy: SchedPolicy,
    requests: &[sim::Request],
) -> anyhow::Result<SchedResult> {
    let mut nodes = Vec::with_capacity(a.instances);
    for _ in 0..a.instances {
        nodes.push(start_node(&a.server, a.local_blocks).await?);
    }
    let (_pool_proc, pool) = start_node(&a.server, a.pool_blocks).await?;
    let mut busy = vec![0f64; a.instances];
    let (mut asked, mut found, mut rejected) = (0u64, 0u64, 0usize);
    let mut ttft = Vec::with_capacity(requests.len());
    let t0 = requests.first().map_or(0, |r| r.timestamp_ms);
    for (n, req) in requests.iter().enumerate() {
        let now = (req.timestamp_ms - t0) as f64 / 1e3 / a.speed;
        let keys = keys_of(&req.chain);
        let len = keys.len() as u64;
        // What every node holds, asked of the nodes themselves.
        let pool_hit = pool.match_prefix(&keys, None).await?.matched as u64;
        let mut est = Vec::with_capacity(a.instances);
        for (i, (_, node)) in nodes.iter().enumerate() {
            let local = node.match_prefix(&keys, None).await?.matched as u64;
            let cached = local.max(pool_hit);
            let fetch =
                pool_hit.saturating_sub(local) as f64 * a.block_kv_bytes as f64 / a.bandwidth;
            let new = ((len - cached) * a.block_tokens) as f64;
            let ctx = (cached * a.block_tokens) as f64;
            let prefill =
                a.overhead + new * a.per_token + new * (new / 2.0 + ctx) * a.per_token_pair;
            let queue = (busy[i] - now).max(0.0);
            est.push((i, local, cached, queue, fetch + prefill));
        }
        let pick = match policy {
            SchedPolicy::RoundRobin => n % a.instances,
            SchedPolicy::LeastLoaded => est
                .iter()
                .min_by(|x, y| x.3.total_cmp(&y.3))
                .map(|e| e.0)
                .expect("instances"),
            SchedPolicy::CacheAware => est
                .iter()
                .max_by(|x, y| x.1.cmp(&y.1).then(y.3.total_cmp(&x.3)))
                .map(|e| e.0)
                .expect("instances"),
            SchedPolicy::Conductor => {
                let best = est
                    .iter()
                    .min_by(|x, y| (x.3 + x.4).total_cmp(&(y.3 + y.4)))
                    .expect("instances");
                if best.3 + best.4 > a.slo {
                    rejected += 1;
                    continue;
                }
                best.0
            }
        };
        let (i, local, cached, queue, work) = est[pick];
        busy[i] = now + queue + work;
        ttft.push(queue + work);
        asked += len;
        found += cached;
        // The instance now holds the chain; it publishes it to the pool.
        store_from(&nodes[i].1, &keys, local as usize).await?;
        store_from(&pool, &keys, pool_hit as usize).await?;
    }
    ttft.sort_by(f64::total_cmp);
    Ok(SchedResult {
        policy,
        hit_ratio: found as f64 / asked.max(1) as f64,
        ttft,
        rejected,
    })
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Runs every policy on the same requests and prints the table.
pub async fn sched(a: SchedArgs) -> anyhow::Result<()> {
    let requests = sim::read_requests(&a.trace, a.limit)?;
    anyhow::ensure!(a.instances >= 1, "at least one instance");
    let mut results = Vec::new();
    for p in &a.policies {
        results.push(run_policy(&a, *p, &requests).await?);
    }
    println!(
        "# {} requests from {}, {} instances of {} blocks, pool of {} blocks, SLO {} s, speed {}x",
        requests.len(),
        a.trace.display(),
        a.instances,
        a.local_blocks,
        a.pool_blocks,
        a.slo,
        a.speed
    );
    println!("| policy | hit ratio | mean TTFT s | p90 s | p99 s | rejected |");
    println!("|---|---|---|---|---|---|");
    for r in &results {
        let mean = r.ttft.iter().sum::<f64>() / r.ttft.len().max(1) as f64;
        println!(
            "| {} | {:.4} | {:.3} | {:.3} | {:.3} | {} |",
            r.policy.flag_name(),
            r.hit_ratio,
            mean,
            pct(&r.ttft, 0.9),
            pct(&r.ttft, 0.99),
            r.rejected
        );
    }
    if let Some(path) = &a.json {
        let j = serde_json::json!({
            "bench": "sched",
            "requests": requests.len(),
            "instances": a.instances,
            "local_blocks": a.local_blocks,
            "pool_blocks": a.pool_blocks,
            "slo_s": a.slo,
            "model": {"overhead_s": a.overhead, "per_token_s": a.per_token, "per_token_pair_s": a.per_token_pair,
                      "block_tokens": a.block_tokens, "block_kv_bytes": a.block_kv_bytes, "bandwidth_bytes_s": a.bandwidth},
            "results": results.iter().map(|r| serde_json::json!({
                "policy": r.policy.flag_name(),
                "hit_ratio": r.hit_ratio,
                "mean_ttft_s": r.ttft.iter().sum::<f64>() / r.ttft.len().max(1) as f64,
                "p90_ttft_s": pct(&r.ttft, 0.9),
                "p99_ttft_s": pct(&r.ttft, 0.99),
                "served": r.ttft.len(),
                "rejected": r.rejected,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&j)?)?;
    }
    if let Some(path) = &a.svg {
        let series: Vec<(String, Vec<f64>)> = results
            .iter()
            .map(|r| (r.policy.flag_name(), r.ttft.clone()))
            .collect();
        let settings =
            format!(
            "{}, {} requests, {} instances, {} local + {} pool blocks, {} tokens a block, SLO {} s",
            a.trace.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            results.first().map_or(0, |r| r.ttft.len() + r.rejected),
            a.instances,
            a.local_blocks,
            a.pool_blocks,
            a.block_tokens,
            a.slo
        );
        crate::plot::ttft_svg(path, &series, &settings)?;
    }
    Ok(())
}
