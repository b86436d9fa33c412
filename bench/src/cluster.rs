//! Cluster benchmarks: each starts a real etcd and real tidepool-server
//! nodes in cluster mode on loopback and prints a table.
//!
//! - `cluster-match`: KV.MATCH of a chain spread over N nodes (asked of one
//!   node, which fans out) against the same chain on one node alone.
//! - `cluster-scale`: small SET/GET (redis-benchmark --cluster) and 1 MiB
//!   block puts/gets over the tcp data plane (tidepool-client in cluster
//!   mode) on 1, 3 and 6 nodes.
//! - `cluster-replay`: Mooncake's trace through N nodes of C/N blocks each
//!   against one node of C blocks, both policies: the prefix hit ratios
//!   side by side.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tidepool_client::{chain_keys, Client, ClientOptions, PlaneChoice};

use crate::{
    csv_rps, free_port, median, redis_benchmark_csv, run_op, spawn_exact, spawn_tidepool, Op, Proc,
};

/// Settings every cluster benchmark takes.
#[derive(clap::Args, Clone)]
pub struct FleetArgs {
    /// tidepool-server binary.
    #[arg(long, default_value = "target/release/tidepool-server")]
    pub server: String,
    /// etcd binary (Debian's etcd-server).
    #[arg(long, default_value = "etcd")]
    pub etcd: String,
}

/// A running etcd, its data removed when dropped.
struct Etcd {
    _proc: Proc,
    dir: PathBuf,
    endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_etcd(bin: &str) -> anyhow::Result<Etcd> {
    let (client, peer) = (free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!(
        "tidepool-bench-etcd-{}-{client}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let (c, p) = (
        format!("http://127.0.0.1:{client}"),
        format!("http://127.0.0.1:{peer}"),
    );
    let child = Command::new(bin)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args([
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
        ])
        .args(["--initial-cluster", &format!("bench={p}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin} (apt-get install etcd-server)"))?;
    let etcd = Etcd {
        _proc: Proc(child, None),
        dir,
        endpoint: format!("127.0.0.1:{client}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&etcd.endpoint).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(etcd)
}

/// Nodes of one cluster (dropped before their etcd).
pub struct Fleet {
    nodes: Vec<(Proc, u16)>,
    _etcd: Etcd,
}

impl Fleet {
    /// `n` nodes on a fresh etcd, each started with `extra` flags, through
    /// `spawn` (a sized node or a plain one); returns once every node
    /// sees all `n` sharing the slots.
    async fn start(
        a: &FleetArgs,
        n: usize,
        extra: &[&str],
        dram: Option<u64>,
    ) -> anyhow::Result<Fleet> {
        let etcd = start_etcd(&a.etcd).await?;
        let spec = format!("etcd://{}", etcd.endpoint);
        let mut nodes = Vec::new();
        for _ in 0..n {
            let port = free_port()?;
            let mut args = vec!["--cluster", spec.as_str()];
            args.extend_from_slice(extra);
            let proc = match dram {
                // (with no shm and any free data port)
                Some(bytes) => spawn_exact(&a.server, port, bytes, &args).await?,
                None => {
                    args.extend(["--data-port", "0"]);
                    spawn_tidepool(&a.server, port, &args).await?
                }
            };
            nodes.push((proc, port));
        }
        let fleet = Fleet { nodes, _etcd: etcd };
        fleet.converge(n).await?;
        Ok(fleet)
    }

    async fn converge(&self, n: usize) -> anyhow::Result<()> {
        let size = format!("cluster_size:{n}\r");
        let deadline = Instant::now() + Duration::from_secs(60);
        for (_, port) in &self.nodes {
            let c = Client::connect(&format!("127.0.0.1:{port}"), 1).await?;
            loop {
                let info = c
                    .command(vec![
                        Bytes::from_static(b"CLUSTER"),
                        Bytes::from_static(b"INFO"),
                    ])
                    .await?;
                let text = match info {
                    tidepool_client::Frame::BulkString(b) => {
                        String::from_utf8_lossy(&b).into_owned()
                    }
                    other => format!("{other:?}"),
                };
                if text.contains("cluster_state:ok") && text.contains(&size) {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the {n} nodes did not converge: {text}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    fn seed(&self) -> String {
        format!("127.0.0.1:{}", self.nodes[0].1)
    }
}

/// Settings of `cluster-match`.
#[derive(clap::Args)]
pub struct MatchArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Nodes of the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Blocks in the chain (all stored).
    #[arg(long, default_value_t = 256)]
    pub chain: usize,
    /// Queries per run.
    #[arg(long, default_value_t = 5000)]
    pub queries: usize,
    /// Runs (alternating); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Concurrent clients (1: one query in flight, latency-bound).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
}

/// `cluster-match`.
pub async fn bench_match(a: MatchArgs) -> anyhow::Result<()> {
    let fleet = Fleet::start(&a.fleet, a.nodes, &[], None).await?;
    let one_port = free_port()?;
    let _one = spawn_tidepool(&a.fleet.server, one_port, &["--data-port", "0"]).await?;
    let tokens: Vec<u32> = (0..(a.chain * 16) as u32).collect();
    let keys = chain_keys(b"bench", 16, &tokens);
    let blocks: Vec<(Bytes, Bytes)> = keys
        .iter()
        .map(|k| (k.clone(), Bytes::from(vec![0u8; 64])))
        .collect();
    let spread = Client::connect_cluster(&[&fleet.seed()], 1).await?;
    spread.put_chain(&blocks, None).await?;
    let one = Arc::new(Client::connect(&format!("127.0.0.1:{one_port}"), a.clients).await?);
    one.put_chain(&blocks, None).await?;
    // Asked of one node of the cluster (a plain client: that node fans
    // out), and by the cluster client (each owner at once).
    let asked = Arc::new(Client::connect(&fleet.seed(), a.clients).await?);
    let split = Arc::new(Client::connect_cluster(&[&fleet.seed()], a.clients).await?);
    let keys = Arc::new(keys);
    let none = Arc::new(Vec::new());
    let (mut c_rate, mut c_p50, mut c_p99) = (vec![], vec![], vec![]);
    let (mut o_rate, mut o_p50, mut o_p99) = (vec![], vec![], vec![]);
    let (mut s_rate, mut s_p50, mut s_p99) = (vec![], vec![], vec![]);
    for _ in 0..a.runs {
        for (client, rate, p50, p99) in [
            (&one, &mut o_rate, &mut o_p50, &mut o_p99),
            (&asked, &mut c_rate, &mut c_p50, &mut c_p99),
            (&split, &mut s_rate, &mut s_p50, &mut s_p99),
        ] {
            let (r, x, y) = run_op(
                client.clone(),
                Op::Match,
                keys.clone(),
                none.clone(),
                a.chain,
                a.queries,
                a.clients,
                1,
            )
            .await?;
            rate.push(r);
            p50.push(x);
            p99.push(y);
        }
    }
    let (o50, c50, s50) = (median(o_p50), median(c_p50), median(s_p50));
    println!(
        "# KV.MATCH of a {}-block chain, all stored; {} queries a run from {} client(s), median of {} alternating runs",
        a.chain, a.queries, a.clients, a.runs
    );
    println!("| where | matches/s | p50 µs | p99 µs | p50 vs one node |");
    println!("|---|---|---|---|---|");
    println!(
        "| one node | {:.0} | {o50:.1} | {:.1} | 1.00x |",
        median(o_rate),
        median(o_p99)
    );
    println!(
        "| {} nodes (asked of one, fanned out) | {:.0} | {c50:.1} | {:.1} | {:.2}x |",
        a.nodes,
        median(c_rate),
        median(c_p99),
        c50 / o50
    );
    println!(
        "| {} nodes (the cluster client asks each owner) | {:.0} | {s50:.1} | {:.1} | {:.2}x |",
        a.nodes,
        median(s_rate),
        median(s_p99),
        s50 / o50
    );
    Ok(())
}

/// Settings of `cluster-scale`.
#[derive(clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,3,6")]
    pub nodes: Vec<usize>,
    /// DRAM of each node (room for one run's blocks on one node).
    #[arg(long, default_value = "4GiB")]
    pub dram: String,
    /// Worker threads of each node (0: one per core; on one machine the
    /// nodes share its cores).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// redis-benchmark: requests, clients, pipeline depth, threads.
    #[arg(long, default_value_t = 400_000)]
    pub requests: usize,
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    #[arg(long, default_value_t = 16)]
    pub pipeline: usize,
    #[arg(long, default_value_t = 4)]
    pub bench_threads: usize,
    /// Block puts/gets: block size, bytes per run, concurrent tasks.
    #[arg(long, default_value = "1MiB")]
    pub block: bytesize::ByteSize,
    #[arg(long, default_value = "1GiB")]
    pub total: bytesize::ByteSize,
    #[arg(long, default_value_t = 8)]
    pub tasks: usize,
    /// Runs per size; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// `(SET/s, GET/s)` of `redis-benchmark --cluster` against the cluster
/// seeded at `port`.
async fn redis_benchmark_cluster(port: u16, n: usize, a: &ScaleArgs) -> anyhow::Result<(f64, f64)> {
    let mut args: Vec<String> = Vec::new();
    // (redis-benchmark refuses a cluster of one: that node owns every key.)
    if n > 1 {
        args.push("--cluster".into());
    }
    for (flag, value) in [
        ("-p", port.to_string()),
        ("-t", "set,get".into()),
        ("-n", a.requests.to_string()),
        ("-c", a.clients.to_string()),
        ("-P", a.pipeline.to_string()),
        ("--threads", a.bench_threads.to_string()),
        ("-r", "1000000".into()),
    ] {
        args.extend([flag.to_string(), value]);
    }
    let text = redis_benchmark_csv(args).await?;
    Ok((csv_rps(&text, Some("SET"))?, csv_rps(&text, Some("GET"))?))
}

/// `(put GB/s, get GB/s)` of `total` bytes of `block`-byte blocks through
/// the cluster client over tcp, from `tasks` tasks at once; every block
/// read back is checked.
async fn blocks_gbps(seed: &str, a: &ScaleArgs, run: usize) -> anyhow::Result<(f64, f64)> {
    let opts = ClientOptions {
        connections: a.tasks,
        plane: PlaneChoice::Tcp,
        ..ClientOptions::default()
    };
    let c = Arc::new(Client::connect_cluster_with(&[seed], opts).await?);
    let block = a.block.as_u64() as usize;
    let per_task = (a.total.as_u64() as usize / block / a.tasks).max(1);
    let batch = (32 << 20) / block;
    let keys = |t: usize| -> Vec<Bytes> {
        (0..per_task)
            .map(|i| Bytes::from(format!("scale:{run}:{t}:{i}")))
            .collect()
    };
    let value = move |k: &Bytes| -> Bytes {
        let seed = k
            .iter()
            .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(*b));
        Bytes::from(vec![seed; block])
    };
    let t = Instant::now();
    let mut puts = tokio::task::JoinSet::new();
    for task in 0..a.tasks {
        let (c, keys) = (c.clone(), keys(task));
        puts.spawn(async move {
            for chunk in keys.chunks(batch.max(1)) {
                let blocks: Vec<(Bytes, Bytes)> =
                    chunk.iter().map(|k| (k.clone(), value(k))).collect();
                for r in c.put_many(&blocks, false, None).await? {
                    r?;
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = puts.join_next().await {
        r??;
    }
    let bytes = (per_task * a.tasks * block) as f64;
    let put = bytes / t.elapsed().as_secs_f64() / 1e9;
    let t = Instant::now();
    let mut gets = tokio::task::JoinSet::new();
    for task in 0..a.tasks {
        let (c, keys) = (c.clone(), keys(task));
        gets.spawn(async move {
            let mut storage = vec![vec![0u8; block]; batch.max(1)];
            for chunk in keys.chunks(batch.max(1)) {
                let mut bufs: Vec<&mut [u8]> = storage
                    .iter_mut()
                    .take(chunk.len())
                    .map(|b| &mut b[..])
                    .collect();
                let lens = c.get_many_into(chunk, &mut bufs).await?;
                for ((k, len), buf) in chunk.iter().zip(lens).zip(&bufs) {
                    anyhow::ensure!(len == Some(block), "{k:?}: {len:?}");
                    anyhow::ensure!(
                        buf[0] == value(k)[0] && buf[block - 1] == value(k)[0],
                        "{k:?}: wrong bytes"
                    );
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = gets.join_next().await {
        r??;
    }
    let get = bytes / t.elapsed().as_secs_f64() / 1e9;
    // Room for the next run.
    for task in 0..a.tasks {
        c.delete(&keys(task)).await?;
    }
    Ok((put, get))
}

/// `cluster-scale`.
pub async fn bench_scale(a: ScaleArgs) -> anyhow::Result<()> {
    let threads = a.threads.to_string();
    let extra = ["--dram", a.dram.as_str(), "--threads", threads.as_str()];
    let mut rows = Vec::new();
    for &n in &a.nodes {
        let fleet = Fleet::start(&a.fleet, n, &extra, None).await?;
        let (mut set, mut get, mut put, mut read) = (vec![], vec![], vec![], vec![]);
        for run in 0..a.runs {
            let (s, g) = redis_benchmark_cluster(fleet.nodes[0].1, n, &a).await?;
            set.push(s);
            get.push(g);
            let (p, r) = blocks_gbps(&fleet.seed(), &a, run).await?;
            put.push(p);
            read.push(r);
        }
        rows.push((n, median(set), median(get), median(put), median(read)));
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# {cores} cores; nodes of {} threads and {} DRAM each; redis-benchmark --cluster -c {} -P {} --threads {} -n {}; {} blocks over tcp from {} tasks, {} a run; median of {} runs",
        a.threads, a.dram, a.clients, a.pipeline, a.bench_threads, a.requests, a.block, a.tasks, a.total, a.runs
    );
    println!("| nodes | SET/s | GET/s | put GB/s | get GB/s | SET vs 1 | GET vs 1 | put vs 1 | get vs 1 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let base = rows[0];
    for (n, s, g, p, r) in &rows {
        println!(
            "| {n} | {s:.0} | {g:.0} | {p:.2} | {r:.2} | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
            s / base.1,
            g / base.2,
            p / base.3,
            r / base.4
        );
    }
    Ok(())
}

/// Settings of `cluster-replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Trace in Mooncake's format.
    #[arg(long, default_value = "../shared/traces/conversation_trace.jsonl")]
    pub trace: PathBuf,
    /// Nodes of the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Blocks the whole store holds (the cluster's nodes C/N each).
    #[arg(long, value_delimiter = ',', default_value = "5000,20000")]
    pub capacity_blocks: Vec<usize>,
    /// Eviction policies.
    #[arg(long, value_delimiter = ',', default_value = "lru,adaptive")]
    pub eviction: Vec<String>,
    /// Payload of each block in bytes.
    #[arg(long, default_value_t = 4096)]
    pub block_bytes: usize,
    /// Only the first N requests.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also replay with each run of this many blocks of a chain kept on one
    /// node (a hash tag naming the run's first block in every key).
    #[arg(long)]
    pub group: Option<usize>,
}

/// `cluster-replay`.
pub async fn bench_replay(a: ReplayArgs) -> anyhow::Result<()> {
    let requests = crate::sim::read_requests(&a.trace, a.limit)?;
    anyhow::ensure!(
        !requests.is_empty(),
        "{} holds no requests",
        a.trace.display()
    );
    let charge = crate::replay::charge(a.block_bytes);
    let mut rows = Vec::new();
    for &c in &a.capacity_blocks {
        for policy in &a.eviction {
            let extra = ["--eviction", policy.as_str()];
            let port = free_port()?;
            let one = {
                let _node = spawn_exact(&a.fleet.server, port, c as u64 * charge, &extra).await?;
                let client = Client::connect_with(
                    &format!("127.0.0.1:{port}"),
                    ClientOptions {
                        connections: 1,
                        plane: PlaneChoice::Inline,
                        ..ClientOptions::default()
                    },
                )
                .await?;
                crate::replay::hit_ratio(&client, &requests, a.block_bytes, None).await?
            };
            let mut spread = Vec::new();
            for group in [None].into_iter().chain(a.group.map(Some)) {
                // A tagged key is 18 bytes longer (`{` 16 hex digits `}`).
                let key_extra = if group.is_some() { 18 } else { 0 };
                let per_node = (c / a.nodes) as u64 * (charge + key_extra);
                let fleet = Fleet::start(&a.fleet, a.nodes, &extra, Some(per_node)).await?;
                let client = Client::connect_cluster_with(
                    &[&fleet.seed()],
                    ClientOptions {
                        connections: 1,
                        plane: PlaneChoice::Inline,
                        ..ClientOptions::default()
                    },
                )
                .await?;
                spread.push(
                    crate::replay::hit_ratio(&client, &requests, a.block_bytes, group).await?,
                );
            }
            rows.push((c, policy.clone(), one, spread));
        }
    }
    println!(
        "# {} requests of {}; one node of C blocks against {} nodes of C/{} blocks each ({} B blocks)",
        requests.len(),
        a.trace.display(),
        a.nodes,
        a.nodes,
        a.block_bytes
    );
    let grouped = a
        .group
        .map(|g| format!(" {} nodes, runs of {g} together | difference |", a.nodes))
        .unwrap_or_default();
    println!(
        "| C | policy | one node | {} nodes | difference |{grouped}",
        a.nodes
    );
    println!(
        "|---|---|---|---|---|{}",
        if a.group.is_some() { "---|---|" } else { "" }
    );
    for (c, policy, one, spread) in rows {
        let mut line = format!("| {c} | {policy} | {one:.4} |");
        for s in spread {
            line.push_str(&format!(" {s:.4} | {:+.2}% |", (s - one) / one * 100.0));
        }
        println!("{line}");
    }
    Ok(())
}
