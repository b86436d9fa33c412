//! `tidepool-bench`: benchmarks that need more than redis-benchmark.
//!
//! `tidepool-bench data`: block throughput over each data plane against
//! Redis, iperf3 and memcpy (see [`data`]).
//!
//! `tidepool-bench match`: how fast a router learns the cached prefix of a
//! 256-block chain. tidepool answers with one `KV.MATCH`; a Redis user today
//! sends a pipeline of 256 `EXISTS` (as LMCache's Redis connector and llm-d do)
//! and counts the leading hits. Both run here side by side, against a
//! tidepool-server and a redis-server the bench starts on free loopback ports.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use tidepool_client::{chain_keys, Client};

mod cluster;
mod data;
mod gen;
mod plot;
mod replay;
mod sched;
mod sim;

#[derive(Parser)]
#[command(name = "tidepool-bench", version, about = "tidepool benchmarks")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Offline replay of a trace against a cache of a given size (no server).
    Simulate {
        /// Trace in Mooncake's format (JSON lines with hash_ids).
        #[arg(long, default_value = "../shared/traces/conversation_trace.jsonl")]
        trace: std::path::PathBuf,
        /// Cache sizes in blocks.
        #[arg(long, value_delimiter = ',', default_value = "5000,20000")]
        capacity_blocks: Vec<usize>,
        /// Use only the first N requests.
        #[arg(long)]
        limit: Option<usize>,
        /// Also simulate tidepool `lru` over an SSD tier of this many blocks
        /// (as `replay --ssd-blocks` sets it up), without and with staging on
        /// match.
        #[arg(long)]
        ssd_blocks: Option<usize>,
        /// Block size for the SSD tier's records (with --ssd-blocks).
        #[arg(long, default_value_t = 4096)]
        block_bytes: usize,
    },
    /// Block put/get throughput: inline RESP, tcp and shm data planes, Redis
    /// SET/GET, with iperf3 and memcpy as ceilings, side by side.
    Data {
        /// Block sizes.
        #[arg(long, value_delimiter = ',', default_value = "64KiB,1MiB,4MiB")]
        sizes: Vec<bytesize::ByteSize>,
        /// Bytes moved per cell and direction.
        #[arg(long, default_value = "512MiB")]
        total: bytesize::ByteSize,
        /// Bytes per call (batch).
        #[arg(long, default_value = "32MiB")]
        batch: bytesize::ByteSize,
        /// Runs (alternating); medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Measure the ceilings too (memcpy, plain TCP, iperf3).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        ceilings: bool,
        /// tidepool planes to measure: inline, tcp, shm, tcp-unchecked and
        /// shm-unchecked (tcp and shm into a second server started with
        /// --dram-checksums false), shm-full (puts into a server with
        /// --full-dram of DRAM, filled by a warm-up pass: each block stored
        /// evicts one). Redis always runs.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "inline,tcp,tcp-unchecked,shm,shm-unchecked,shm-full"
        )]
        ways: Vec<String>,
        /// Parallel connections of the tcp data plane.
        #[arg(long, default_value_t = tidepool_client::TcpOptions::default().connections)]
        tcp_connections: usize,
        /// Stripe size of the tcp data plane.
        #[arg(long, default_value = "1MiB")]
        tcp_stripe: bytesize::ByteSize,
        /// Threads that copy shm puts (0: on the put's task).
        #[arg(long, default_value_t = tidepool_client::ClientOptions::default().shm_copy_threads)]
        shm_copy_threads: usize,
        /// DRAM of the server that shm-full puts into.
        #[arg(long, default_value = "2GiB")]
        full_dram: bytesize::ByteSize,
        /// tidepool-server binary.
        #[arg(long, default_value = "target/release/tidepool-server")]
        server: String,
        /// Write the results as JSON here too.
        #[arg(long)]
        json: Option<String>,
    },
    /// Replays a trace through a real tidepool-server: KV.MATCH each chain,
    /// store the blocks from the first miss on; hit ratio against the
    /// simulation of the server's policy, throughput, latencies, plot.
    Replay(replay::ReplayArgs),
    /// A prefill cluster fed by a trace: N instances with a tidepool node each
    /// and a shared pool node, scheduled by round-robin, least-loaded,
    /// cache-aware or Conductor (least estimated TTFT, early rejection).
    Sched(sched::SchedArgs),
    /// Writes a synthetic trace in Mooncake's format.
    GenTrace {
        /// Reuse shape.
        #[arg(long, value_enum, default_value = "chat")]
        shape: gen::Shape,
        /// Requests.
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        /// Popularity skew (Zipf exponent).
        #[arg(long, default_value_t = 1.0)]
        skew: f64,
        /// Typical chain length in blocks.
        #[arg(long, default_value_t = 16)]
        chain: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// KV.MATCH of a chain spread over a cluster's nodes (one node fans
    /// out) against the same chain on one node.
    ClusterMatch(cluster::MatchArgs),
    /// Small SET/GET and 1 MiB block puts/gets on clusters of 1, 3, 6 nodes.
    ClusterScale(cluster::ScaleArgs),
    /// A trace through N nodes of C/N blocks against one node of C blocks.
    ClusterReplay(cluster::ReplayArgs),
    /// KV.MATCH of a chain against a pipeline of EXISTS, side by side.
    Match {
        /// Blocks in the chain.
        #[arg(long, default_value_t = 256)]
        chain: usize,
        /// How many of them are stored (the prefix hit).
        #[arg(long, default_value_t = 192)]
        stored: usize,
        /// Queries per run.
        #[arg(long, default_value_t = 5000)]
        queries: usize,
        /// Runs (alternating); medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Concurrent clients (1: one query in flight, latency-bound).
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Queries each client sends in one pipeline before reading the
        /// replies (a router batching its lookups). 1: one at a time.
        #[arg(long, default_value_t = 1)]
        depth: usize,
        /// tidepool-server binary.
        #[arg(long, default_value = "target/release/tidepool-server")]
        server: String,
        /// Write the results as JSON here too.
        #[arg(long)]
        json: Option<String>,
    },
}

struct Proc(Child, Option<std::path::PathBuf>);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        // A killed tidepool-server leaves its shm socket behind.
        if let Some(p) = &self.1 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Starts `tidepool-server` (the binary at `server`) on `port` with `extra`
/// flags and waits until it answers.
async fn spawn_tidepool(server: &str, port: u16, extra: &[&str]) -> anyhow::Result<Proc> {
    let p = Proc(
        Command::new(server)
            .args(["--port", &port.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {server} (build it with cargo build --release)"))?,
        // Its shm socket's default path, unless `extra` names another.
        (!extra.contains(&"--shm-socket"))
            .then(|| std::path::PathBuf::from(format!("/tmp/tidepool-{port}.sock"))),
    );
    wait_up(port, p.0.id()).await?;
    Ok(p)
}

/// Starts a tidepool-server whose DRAM holds exactly `dram` bytes and
/// evicts one block per block stored once full (watermarks 1.0), with no
/// shared memory and any free data port, plus `extra` flags.
async fn spawn_exact(server: &str, port: u16, dram: u64, extra: &[&str]) -> anyhow::Result<Proc> {
    let dram = format!("{dram}B");
    let mut args = vec![
        "--data-port",
        "0",
        "--shm",
        "false",
        "--dram",
        &dram,
        "--high-watermark",
        "1.0",
        "--low-watermark",
        "1.0",
    ];
    args.extend_from_slice(extra);
    spawn_tidepool(server, port, &args).await
}

/// Starts redis-server on `port` (no persistence) and waits until it answers.
async fn spawn_redis(port: u16) -> anyhow::Result<Proc> {
    let p = Proc(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?,
        None,
    );
    wait_up(port, p.0.id()).await?;
    Ok(p)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until the server process `pid` answers on `port`. A port picked
/// free may have been taken meanwhile by another process's server: the one
/// answering must report `pid` in INFO (redis-server and tidepool-server
/// both give `process_id`).
async fn wait_up(port: u16, pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(c) = Client::connect(&format!("127.0.0.1:{port}"), 1).await {
            let info = c
                .command(vec![
                    Bytes::from_static(b"INFO"),
                    Bytes::from_static(b"server"),
                ])
                .await;
            if let Ok(tidepool_client::Frame::BulkString(b)) = info {
                let text = String::from_utf8_lossy(&b);
                let theirs = text
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match theirs {
                    Some(p) if p == pid => return Ok(()),
                    Some(p) => {
                        bail!("port {port} is served by another process ({p}), not ours ({pid})")
                    }
                    None => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("server on port {port} did not come up")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// What one query does.
#[derive(Clone, Copy)]
enum Op {
    /// One KV.MATCH of the chain.
    Match,
    /// A pipeline of EXISTS, one per key, leading hits counted here.
    Exists,
}

/// Runs `queries` queries of `op` from `clients` concurrent tasks (each with
/// its own pooled connection) and returns (queries/s, p50 µs, p99 µs).
#[allow(clippy::too_many_arguments)]
async fn run_op(
    client: Arc<Client>,
    op: Op,
    keys: Arc<Vec<Bytes>>,
    exists: Arc<Vec<Vec<Bytes>>>,
    stored: usize,
    queries: usize,
    clients: usize,
    depth: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    // `depth` queries per round trip: the same commands, repeated.
    let batch: Arc<Vec<Vec<Bytes>>> = Arc::new(match op {
        Op::Match => {
            let mut cmd = vec![
                Bytes::from_static(b"KV.MATCH"),
                Bytes::from(keys.len().to_string()),
            ];
            cmd.extend(keys.iter().cloned());
            vec![cmd; depth]
        }
        Op::Exists => exists
            .iter()
            .cloned()
            .cycle()
            .take(exists.len() * depth)
            .collect(),
    });
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..clients {
        let (client, keys, exists, batch) =
            (client.clone(), keys.clone(), exists.clone(), batch.clone());
        let n = queries / clients + usize::from(t < queries % clients);
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(n);
            let mut done = 0;
            while done < n {
                let q = Instant::now();
                if depth == 1 {
                    let hit = match op {
                        Op::Match => client.match_prefix(&keys, None).await?.matched,
                        Op::Exists => client
                            .pipeline_ints(&exists)
                            .await?
                            .iter()
                            .take_while(|r| **r == 1)
                            .count(),
                    };
                    anyhow::ensure!(
                        hit == stored,
                        "counted {hit} stored blocks, expected {stored}"
                    );
                    done += 1;
                } else {
                    let ints = client.pipeline_ints(&batch).await?;
                    let per = ints.len() / depth;
                    for q in ints.chunks(per) {
                        let hit = match op {
                            Op::Match => q[0] as usize,
                            Op::Exists => q.iter().take_while(|r| **r == 1).count(),
                        };
                        anyhow::ensure!(
                            hit == stored,
                            "counted {hit} stored blocks, expected {stored}"
                        );
                    }
                    done += depth;
                }
                lat.push(q.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let mut lat = Vec::with_capacity(queries);
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let per_client = queries / clients;
    let rounds = per_client.div_ceil(depth) * depth;
    let rate = (rounds * clients) as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok((rate, us(percentile(&lat, 0.5)), us(percentile(&lat, 0.99))))
}

/// Requests per second of `redis-benchmark -c clients -P depth -n requests`
/// running `cmd` against 127.0.0.1:`port`.
async fn redis_benchmark_rps(
    port: u16,
    clients: usize,
    depth: usize,
    requests: usize,
    cmd: &[String],
) -> anyhow::Result<f64> {
    let mut args: Vec<String> = ["-p", &port.to_string(), "-c", &clients.to_string()]
        .into_iter()
        .chain(["-P", &depth.to_string(), "-n", &requests.to_string()])
        .map(String::from)
        .collect();
    args.extend(cmd.iter().cloned());
    let text = redis_benchmark_csv(args).await?;
    csv_rps(&text, None)
}

/// Runs `redis-benchmark ARGS --csv` and returns what it printed.
async fn redis_benchmark_csv(args: Vec<String>) -> anyhow::Result<String> {
    let mut run = std::process::Command::new("redis-benchmark");
    run.arg("--csv").args(args);
    let out = tokio::task::spawn_blocking(move || run.output())
        .await?
        .context("running redis-benchmark (Debian package redis-tools)")?;
    anyhow::ensure!(
        out.status.success(),
        "redis-benchmark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The requests per second of `redis-benchmark --csv`'s row for test
/// `name` (the first row when `None`).
fn csv_rps(text: &str, name: Option<&str>) -> anyhow::Result<f64> {
    // A header line, then "name","rps",...
    let mut rows = text.lines().skip(1);
    let row = match name {
        Some(name) => rows.find(|l| l.starts_with(&format!("\"{name}\""))),
        None => rows.next(),
    }
    .with_context(|| format!("no result from redis-benchmark: {text}"))?;
    row.split(',')
        .nth(1)
        .map(|f| f.trim_matches('"'))
        .and_then(|f| f.parse::<f64>().ok())
        .with_context(|| format!("unexpected redis-benchmark line: {row}"))
}

#[allow(clippy::too_many_arguments)]
async fn bench_match(
    chain: usize,
    stored: usize,
    queries: usize,
    runs: usize,
    clients: usize,
    depth: usize,
    server: &str,
    json: Option<String>,
) -> anyhow::Result<()> {
    let clients = clients.max(1);
    let tp_port = free_port()?;
    let rd_port = free_port()?;
    let _tp = spawn_tidepool(server, tp_port, &[]).await?;
    let _rd = spawn_redis(rd_port).await?;
    let tp = Arc::new(Client::connect(&format!("127.0.0.1:{tp_port}"), clients).await?);
    let rd = Arc::new(Client::connect(&format!("127.0.0.1:{rd_port}"), clients).await?);

    let tokens: Vec<u32> = (0..(chain * 16) as u32).collect();
    let keys = chain_keys(b"bench", 16, &tokens);
    let value = Bytes::from(vec![0u8; 64]);
    let blocks: Vec<(Bytes, Bytes)> = keys[..stored]
        .iter()
        .map(|k| (k.clone(), value.clone()))
        .collect();
    tp.put_chain(&blocks, None).await?;
    for (k, v) in &blocks {
        rd.command(vec![Bytes::from_static(b"SET"), k.clone(), v.clone()])
            .await?;
    }
    // The Redis way: a pipeline of EXISTS, leading hits counted by the caller.
    let exists_cmds: Vec<Vec<Bytes>> = keys
        .iter()
        .map(|k| vec![Bytes::from_static(b"EXISTS"), k.clone()])
        .collect();
    let (mut m_rate, mut m_p50, mut m_p99) = (vec![], vec![], vec![]);
    let (mut r_rate, mut r_p50, mut r_p99) = (vec![], vec![], vec![]);
    let (mut t_rate, mut t_p50, mut t_p99) = (vec![], vec![], vec![]);
    let keys = Arc::new(keys);
    let exists_cmds = Arc::new(exists_cmds);
    for _ in 0..runs {
        for (client, op, rate, p50, p99) in [
            (&tp, Op::Match, &mut m_rate, &mut m_p50, &mut m_p99),
            (&rd, Op::Exists, &mut r_rate, &mut r_p50, &mut r_p99),
            (&tp, Op::Exists, &mut t_rate, &mut t_p50, &mut t_p99),
        ] {
            let (r, a, b) = run_op(
                client.clone(),
                op,
                keys.clone(),
                exists_cmds.clone(),
                stored,
                queries,
                clients,
                depth,
            )
            .await?;
            rate.push(r);
            p50.push(a);
            p99.push(b);
        }
    }
    let rows = [
        (
            "tidepool KV.MATCH",
            median(m_rate),
            median(m_p50),
            median(m_p99),
        ),
        (
            "redis EXISTS x chain, pipelined",
            median(r_rate),
            median(r_p50),
            median(r_p99),
        ),
        (
            "tidepool EXISTS x chain, pipelined",
            median(t_rate),
            median(t_p50),
            median(t_p99),
        ),
    ];
    println!(
        "# prefix of a {chain}-block chain ({stored} stored), {queries} queries a run from {clients} concurrent clients, {depth} in flight each, median of {runs} alternating runs (latencies are of one round trip of {depth} queries)"
    );
    println!("| how | queries/s | p50 µs | p99 µs | vs redis EXISTS |");
    println!("|---|---|---|---|---|");
    for (name, rate, p50, p99) in rows {
        println!(
            "| {name} | {rate:.0} | {p50:.1} | {p99:.1} | {:.1}x |",
            rate / rows[1].1
        );
    }
    // The same comparison driven by redis-benchmark, a C client that costs
    // both servers the same (the Rust client above spends more of this 2-core
    // machine building 256-argument commands). It repeats one command per
    // pipeline, so the Redis side asks EXISTS of one key again and again (its
    // best case); keys are text here, stored on both servers.
    let text_keys: Vec<String> = (0..chain).map(|i| format!("chain:{i}")).collect();
    for k in &text_keys[..stored] {
        for c in [&tp, &rd] {
            c.command(vec![
                Bytes::from_static(b"SET"),
                Bytes::from(k.clone()),
                value.clone(),
            ])
            .await?;
        }
    }
    let mut match_cmd = vec!["KV.MATCH".to_string(), chain.to_string()];
    match_cmd.extend(text_keys.iter().cloned());
    let exists_cmd = vec!["EXISTS".to_string(), text_keys[stored / 2].clone()];
    let (mut tp_rb, mut rd_rb) = (vec![], vec![]);
    for _ in 0..runs {
        // Runs of about a second each (a short run measures connection set-up).
        tp_rb.push(redis_benchmark_rps(tp_port, clients, depth, 20 * queries, &match_cmd).await?);
        // One query is `chain` EXISTS commands.
        let rps = redis_benchmark_rps(
            rd_port,
            clients,
            depth * chain,
            4 * queries * chain,
            &exists_cmd,
        )
        .await?;
        rd_rb.push(rps / chain as f64);
    }
    let (tp_rb, rd_rb) = (median(tp_rb), median(rd_rb));
    println!();
    println!(
        "# the same, driven by redis-benchmark (-c {clients} -P {depth}; Redis: -P {} of EXISTS of one stored key), median of {runs}",
        depth * chain
    );
    println!("| how | queries/s | vs redis EXISTS |");
    println!("|---|---|---|");
    println!("| tidepool KV.MATCH | {tp_rb:.0} | {:.1}x |", tp_rb / rd_rb);
    println!("| redis EXISTS x chain, pipelined | {rd_rb:.0} | 1.0x |");
    if let Some(path) = json {
        let j = serde_json::json!({
            "bench": "match",
            "chain": chain,
            "stored": stored,
            "queries": queries,
            "runs": runs,
            "clients": clients,
            "depth": depth,
            "rows": rows.iter().map(|(n, r, a, b)| serde_json::json!({"how": n, "qps": r, "p50_us": a, "p99_us": b})).collect::<Vec<_>>(),
            "redis_benchmark": {"tidepool_match_qps": tp_rb, "redis_exists_chain_qps": rd_rb},
        });
        std::fs::write(&path, serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}

/// Runs `work` as a task on the runtime's workers, as a serving engine calls
/// the client, rather than on the thread of `block_on`: that thread does not
/// poll the I/O driver, so each socket event there costs a wakeup handed
/// over from a worker (a driver looping 32 MiB tcp gets of 1 MiB blocks
/// moved 4-7% less, three alternating pairs, twice; bench/README).
fn on_worker<F>(rt: &tokio::runtime::Runtime, work: F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    rt.block_on(rt.spawn(work))?
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.cmd {
        Cmd::Simulate {
            trace,
            capacity_blocks,
            limit,
            ssd_blocks,
            block_bytes,
        } => {
            let trace = sim::read_trace(&trace, limit)?;
            println!(
                "# offline replay of {} requests: prefix hit ratio",
                trace.len()
            );
            let (head, rule) = match ssd_blocks {
                Some(n) => (
                    format!(" lru + {n} SSD blocks | the same, staged on match |"),
                    "---|---|",
                ),
                None => (String::new(), ""),
            };
            println!(
                "| capacity (blocks) | plain-lru | lru (leaf first; the server's default) | adaptive |{head}"
            );
            println!("|---|---|---|---|{rule}");
            for c in capacity_blocks {
                let lru = sim::simulate(&trace, c, sim::Policy::Lru).hit_ratio();
                let leaf = sim::simulate(&trace, c, sim::Policy::LeafLru).hit_ratio();
                let ad = sim::simulate(&trace, c, sim::Policy::Adaptive).hit_ratio();
                let mut row = format!("| {c} | {lru:.4} | {leaf:.4} | {ad:.4} |");
                if let Some(n) = ssd_blocks {
                    for stage in [false, true] {
                        let model = sim::SsdModel::replay(block_bytes, n, stage);
                        let r = sim::simulate_tiers(&trace, c, model, sim::Policy::LeafLru)?
                            .hit_ratio();
                        row.push_str(&format!(" {r:.4} |"));
                    }
                }
                println!("{row}");
            }
            Ok(())
        }
        Cmd::Data {
            sizes,
            total,
            batch,
            runs,
            tcp_connections,
            tcp_stripe,
            shm_copy_threads,
            full_dram,
            ways,
            ceilings,
            server,
            json,
        } => on_worker(
            &rt,
            data::bench_data(data::DataArgs {
                full_dram: full_dram.as_u64(),
                shm_copy_threads,
                ways,
                ceilings,
                tcp: tidepool_client::TcpOptions {
                    connections: tcp_connections,
                    stripe: tcp_stripe.as_u64() as usize,
                },
                sizes: sizes.iter().map(|s| s.as_u64()).collect(),
                total: total.as_u64(),
                batch: batch.as_u64(),
                runs: runs.max(1),
                server,
                json,
            }),
        ),
        Cmd::Sched(args) => rt.block_on(sched::sched(args)),
        Cmd::GenTrace {
            shape,
            requests,
            skew,
            chain,
            seed,
            out,
        } => {
            let t = gen::generate(&gen::GenArgs {
                shape,
                requests,
                skew,
                chain,
                seed,
            });
            gen::write_trace(&out, &t)?;
            let blocks: usize = t.iter().map(|c| c.len()).sum();
            println!(
                "wrote {} requests, {blocks} blocks to {}",
                t.len(),
                out.display()
            );
            Ok(())
        }
        Cmd::Replay(args) => rt.block_on(replay::replay(args)),
        Cmd::Match {
            chain,
            stored,
            queries,
            runs,
            clients,
            depth,
            server,
            json,
        } => rt.block_on(bench_match(
            chain,
            stored,
            queries,
            runs,
            clients,
            depth.max(1),
            &server,
            json,
        )),
        Cmd::ClusterMatch(a) => rt.block_on(cluster::bench_match(a)),
        Cmd::ClusterScale(a) => rt.block_on(cluster::bench_scale(a)),
        Cmd::ClusterReplay(a) => rt.block_on(cluster::bench_replay(a)),
    }
}
