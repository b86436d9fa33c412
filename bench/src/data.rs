//! `tidepool-bench data`: block put and get throughput over each way bytes can
//! travel (inline RESP, the TCP data port, shared memory), with Redis SET/GET
//! of the same blocks, `iperf3 -l 1M` on loopback, a plain memcpy and a copy
//! with streaming stores (the one shm puts and gets use) measured in the same
//! run as the ceilings.
//!
//! Each cell writes `total` bytes of blocks of one size in batches (one
//! `put_many` / `get_many_into` call per batch, a pipeline of SET / GET for
//! Redis), on a freshly flushed server, then reads them back into caller
//! buffers. Runs alternate between the systems; medians are reported. The
//! `shm-full` way only puts, into a server whose DRAM a warm-up pass filled,
//! under keys of their own each run: each block stored evicts one.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidepool_client::{Client, ClientOptions, PlaneChoice};

use crate::{free_port, median, spawn_redis, spawn_tidepool, Proc};

/// One way of moving blocks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Inline,
    Tcp,
    /// tcp into a server started with `--dram-checksums false`.
    TcpUnchecked,
    Shm,
    /// shm into a server started with `--dram-checksums false`.
    ShmUnchecked,
    /// shm puts into a full store: each block stored evicts one.
    ShmFull,
    Redis,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Inline => "tidepool inline RESP (KV.MPUT / KV.MGET)",
            Way::Tcp => "tidepool tcp data plane",
            Way::TcpUnchecked => "tidepool tcp, --dram-checksums false",
            Way::Shm => "tidepool shm data plane",
            Way::ShmUnchecked => "tidepool shm, --dram-checksums false",
            Way::ShmFull => "tidepool shm, puts into a full store (each evicts a block)",
            Way::Redis => "redis SET / GET, pipelined, read into reused buffers",
        }
    }
}

/// Settings of the data bench.
pub struct DataArgs {
    /// Block sizes.
    pub sizes: Vec<u64>,
    /// Bytes moved per cell and direction.
    pub total: u64,
    /// Bytes per batch (one call).
    pub batch: u64,
    /// Alternating runs.
    pub runs: usize,
    /// Settings of the tcp data plane.
    pub tcp: tidepool_client::TcpOptions,
    /// Threads that copy shm puts.
    pub shm_copy_threads: usize,
    /// Measure memcpy, plain TCP and iperf3 too.
    pub ceilings: bool,
    /// DRAM of the server that `shm-full` puts into.
    pub full_dram: u64,
    /// Which tidepool planes to measure (redis always runs: it is the
    /// reference of every ratio).
    pub ways: Vec<String>,
    /// tidepool-server binary.
    pub server: String,
    /// Also write JSON here.
    pub json: Option<String>,
}

fn gbs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Block `seed` of `n` bytes: its seed at both ends, a pattern between
/// that differs from every other block's, so a get that returns another
/// block's bytes (or part of them) fails verification.
fn pattern(n: usize, seed: usize) -> Bytes {
    let mut v: Vec<u8> = (0..n)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(7) ^ (seed >> 8).wrapping_mul(13)) as u8)
        .collect();
    let tag = (seed as u64).to_le_bytes();
    if n >= 16 {
        v[..8].copy_from_slice(&tag);
        v[n - 8..].copy_from_slice(&tag);
    }
    v.into()
}

/// Marks each buffer at its first, middle and last byte with a value its
/// block does not have there, so that a get that writes nothing into a
/// buffer cannot pass [`verify`] on what an earlier cell left in it.
fn poison(bufs: &mut [Vec<u8>], blocks: &[(Bytes, Bytes)]) {
    for (b, (_, v)) in bufs.iter_mut().zip(blocks) {
        for at in [0, v.len() / 2, v.len().saturating_sub(1)] {
            if let (Some(d), Some(s)) = (b.get_mut(at), v.get(at)) {
                *d = !*s;
            }
        }
    }
}

/// Checks that every buffer holds its block, byte for byte.
fn verify(bufs: &[Vec<u8>], blocks: &[(Bytes, Bytes)], what: &str) -> anyhow::Result<()> {
    for (b, (k, v)) in bufs.iter().zip(blocks) {
        anyhow::ensure!(
            b[..] == v[..],
            "{what}: {} came back with other bytes",
            String::from_utf8_lossy(k)
        );
    }
    Ok(())
}

/// Puts `blocks` under keys of their own (`tag` before each key) into a
/// store that is full, so each block stored evicts one: the steady state of
/// a cache. Returns put GB/s.
async fn full_cell(
    c: &Client,
    blocks: &[(Bytes, Bytes)],
    per_batch: usize,
    tag: &str,
) -> anyhow::Result<f64> {
    let total: u64 = blocks.iter().map(|(_, v)| v.len() as u64).sum();
    let tagged: Vec<(Bytes, Bytes)> = blocks
        .iter()
        .map(|(k, v)| {
            let mut key = tag.as_bytes().to_vec();
            key.extend_from_slice(k);
            (Bytes::from(key), v.clone())
        })
        .collect();
    let t = Instant::now();
    for batch in tagged.chunks(per_batch) {
        for r in c.put_many(batch, false, None).await? {
            r?;
        }
    }
    let rate = gbs(total, t.elapsed());
    // The last batch stored is still there (the ones before it were
    // evicted to make room): its bytes are checked, untimed.
    if let Some(last) = tagged.chunks(per_batch).next_back() {
        let keys: Vec<Bytes> = last.iter().map(|(k, _)| k.clone()).collect();
        let got = c.get_many(&keys).await?;
        for (g, (k, v)) in got.iter().zip(last) {
            anyhow::ensure!(
                g.as_deref() == Some(&v[..]),
                "put into a full store: {} came back with other bytes",
                String::from_utf8_lossy(k)
            );
        }
    }
    Ok(rate)
}

/// Puts then gets `blocks` once; returns (put GB/s, get GB/s). The gets
/// land in `bufs`, which are checked against the blocks afterwards
/// (untimed).
async fn one_cell(
    c: &Client,
    redis: &mut RedisRef,
    way: Way,
    blocks: &[(Bytes, Bytes)],
    per_batch: usize,
    bufs: &mut [Vec<u8>],
) -> anyhow::Result<(f64, f64)> {
    let total: u64 = blocks.iter().map(|(_, v)| v.len() as u64).sum();
    if way == Way::Redis {
        redis.flush_all().await?;
    } else {
        c.command(vec![Bytes::from_static(b"FLUSHALL")]).await?;
    }
    let t = Instant::now();
    for batch in blocks.chunks(per_batch) {
        if way == Way::Redis {
            redis.set_many(batch).await?;
        } else {
            for r in c.put_many(batch, false, None).await? {
                r?;
            }
        }
    }
    let put = gbs(total, t.elapsed());
    poison(bufs, blocks);
    let t = Instant::now();
    for (batch, bufs) in blocks.chunks(per_batch).zip(bufs.chunks_mut(per_batch)) {
        let keys: Vec<Bytes> = batch.iter().map(|(k, _)| k.clone()).collect();
        if way == Way::Redis {
            redis.get_many_into(&keys, bufs).await?;
        } else {
            let mut views: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
            let got = c.get_many_into(&keys, &mut views).await?;
            anyhow::ensure!(got.iter().all(|g| g.is_some()), "a block went missing");
        }
    }
    let get = gbs(total, t.elapsed());
    verify(bufs, blocks, way.name())?;
    Ok((put, get))
}

/// The Redis reference's client, as good at moving blocks as ours: one
/// connection, each batch one pipeline; SET values go from the caller's
/// blocks to the socket without a copy (the buffered writer passes writes
/// larger than its buffer straight through), and GET replies are read
/// straight into the caller's reused buffers (only each reply's header
/// passes through the read buffer). The redis crate, and our client's RESP
/// path, would decode every reply into a fresh allocation instead.
struct RedisRef {
    rd: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::io::BufWriter<tokio::net::tcp::OwnedWriteHalf>,
}

impl RedisRef {
    async fn connect(port: u16) -> anyhow::Result<RedisRef> {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(RedisRef {
            rd: tokio::io::BufReader::with_capacity(64 << 10, r),
            wr: tokio::io::BufWriter::with_capacity(64 << 10, w),
        })
    }

    /// One reply line, without its CRLF.
    async fn line(&mut self) -> anyhow::Result<Vec<u8>> {
        use tokio::io::AsyncBufReadExt;
        let mut l = Vec::new();
        self.rd.read_until(b'\n', &mut l).await?;
        anyhow::ensure!(l.ends_with(b"\r\n"), "redis closed the connection");
        l.truncate(l.len() - 2);
        Ok(l)
    }

    async fn flush_all(&mut self) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.wr.write_all(b"*1\r\n$8\r\nFLUSHALL\r\n").await?;
        self.wr.flush().await?;
        let l = self.line().await?;
        anyhow::ensure!(l == b"+OK", "FLUSHALL: {}", String::from_utf8_lossy(&l));
        Ok(())
    }

    async fn set_many(&mut self, blocks: &[(Bytes, Bytes)]) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        for (k, v) in blocks {
            let head = format!("*3\r\n$3\r\nSET\r\n${}\r\n", k.len());
            self.wr.write_all(head.as_bytes()).await?;
            self.wr.write_all(k).await?;
            self.wr
                .write_all(format!("\r\n${}\r\n", v.len()).as_bytes())
                .await?;
            self.wr.write_all(v).await?;
            self.wr.write_all(b"\r\n").await?;
        }
        self.wr.flush().await?;
        for _ in blocks {
            let l = self.line().await?;
            anyhow::ensure!(l == b"+OK", "SET: {}", String::from_utf8_lossy(&l));
        }
        Ok(())
    }

    async fn get_many_into(&mut self, keys: &[Bytes], bufs: &mut [Vec<u8>]) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for k in keys {
            let head = format!("*2\r\n$3\r\nGET\r\n${}\r\n", k.len());
            self.wr.write_all(head.as_bytes()).await?;
            self.wr.write_all(k).await?;
            self.wr.write_all(b"\r\n").await?;
        }
        self.wr.flush().await?;
        for b in bufs.iter_mut().take(keys.len()) {
            let l = self.line().await?;
            let len: usize = std::str::from_utf8(l.strip_prefix(b"$").unwrap_or(b"x"))
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("GET: {}", String::from_utf8_lossy(&l)))?;
            anyhow::ensure!(
                len == b.len(),
                "GET: {len} bytes for a buffer of {}",
                b.len()
            );
            self.rd.read_exact(b).await?;
            let mut crlf = [0u8; 2];
            self.rd.read_exact(&mut crlf).await?;
        }
        Ok(())
    }
}

/// Copies the same blocks with `copy` into a destination working set as large
/// as the cell: GB/s. With `copy_from_slice`, memcpy (the shm put's work
/// without the protocol); with `tidepool_checksum::copy_streaming`, the copy
/// with streaming stores that the shm plane makes, in both directions.
///
/// The best of three passes: a ceiling is what the machine can do, and one
/// bench's memcpy of 4 MiB blocks (the median of one pass in each of its
/// three runs) read 5.7 GB/s against 17.5-20.3 in the others, while the
/// streaming copy measured right after it each time was not slow.
///
/// With `threads` above one, the blocks are cut into that many runs, each
/// copied by a thread of its own, all at once: the ceiling of a copy that
/// is spread over threads, as shm puts are ([`DataArgs::shm_copy_threads`]).
fn copy_rate(blocks: &[(Bytes, Bytes)], copy: fn(&[u8], &mut [u8]), threads: usize) -> f64 {
    let total: usize = blocks.iter().map(|(_, v)| v.len()).sum();
    let mut dst = vec![1u8; total];
    let per = blocks.len().div_ceil(threads.max(1));
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        std::thread::scope(|s| {
            let mut rest = &mut dst[..];
            for run in blocks.chunks(per) {
                let len = run.iter().map(|(_, v)| v.len()).sum();
                let (mine, after) = rest.split_at_mut(len);
                rest = after;
                s.spawn(move || {
                    let mut off = 0;
                    for (_, v) in run {
                        copy(v, &mut mine[off..off + v.len()]);
                        off += v.len();
                    }
                });
            }
        });
        best = best.max(gbs(total as u64, t.elapsed()));
        std::hint::black_box(&dst);
    }
    best
}

/// Plain TCP over loopback moving the same blocks from their own buffers
/// into destination buffers of their own (not one hot buffer, as iperf3):
/// the cost of moving distinct blocks over a socket with no protocol: GB/s.
fn loopback_rate(blocks: &[(Bytes, Bytes)]) -> std::io::Result<f64> {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let lens: Vec<usize> = blocks.iter().map(|(_, v)| v.len()).collect();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || -> std::io::Result<()> {
        // Destination buffers allocated and touched before anything moves.
        let mut dst: Vec<Vec<u8>> = lens.iter().map(|n| vec![1u8; *n]).collect();
        let _ = ready_tx.send(());
        let (mut s, _) = l.accept()?;
        for d in dst.iter_mut() {
            s.read_exact(d)?;
        }
        s.write_all(b"k")?;
        std::hint::black_box(&dst);
        Ok(())
    });
    let _ = ready.recv();
    let mut s = std::net::TcpStream::connect(addr)?;
    // As the data plane: no delay, the kernel's buffer autotuning.
    s.set_nodelay(true)?;
    let total: usize = blocks.iter().map(|(_, v)| v.len()).sum();
    let t = Instant::now();
    for (_, v) in blocks {
        s.write_all(v)?;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)?;
    let rate = gbs(total as u64, t.elapsed());
    receiver.join().expect("receiver thread")?;
    Ok(rate)
}

/// `iperf3 -l 1M` over loopback for 3 s: GB/s, or why not.
fn iperf3() -> Result<f64, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let _srv = Proc(
        Command::new("iperf3")
            .args(["-s", "-1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("iperf3 not runnable ({e}); apt-get install iperf3"))?,
        None,
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-l",
            "1M",
            "-t",
            "3",
            "-J",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let j: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 8e9)
        .ok_or_else(|| "iperf3 gave no rate".into())
}

/// A bar, read off this run's rows: a share of a ceiling the same run
/// measured, or a ratio to Redis.
struct Target {
    what: String,
    block: u64,
    measured: String,
    met: bool,
}

/// The write size of the iperf3 ceiling (`-l 1M`).
const IPERF3_WRITE: u64 = 1 << 20;

/// The ceilings a run measured, per block size.
#[derive(Default)]
struct Ceilings {
    /// memcpy on as many threads as shm puts copy with (one when they copy
    /// on the put's own task).
    memcpy_puts: Vec<(u64, f64)>,
    /// The threads of `memcpy_puts`.
    put_threads: usize,
    /// The copy with streaming stores that shm gets make, on one thread as
    /// they do.
    streaming: Vec<(u64, f64)>,
    /// Plain TCP of the same distinct blocks over loopback.
    loopback: Vec<(u64, f64)>,
    /// `iperf3 -l 1M`, the run's median.
    iperf3: Option<f64>,
}

/// The bars this run can tell, each against the ceiling that does the same
/// work without the protocol: tcp GET against Redis at 1 MiB; tcp put and
/// get against plain TCP of the same distinct blocks at each size, and
/// against iperf3 (at the size of its `-l 1M` writes, and, stricter, at the
/// others); shm puts against memcpy on as many threads as they copy with;
/// shm gets against the streaming-store copy they make. A share is met at
/// 80%.
fn targets(rows: &[(u64, Way, f64, f64)], c: &Ceilings) -> Vec<Target> {
    let row = |size: u64, way: Way| rows.iter().find(|r| r.0 == size && r.1 == way);
    let at = |v: &[(u64, f64)], size: u64| v.iter().find(|m| m.0 == size).map(|m| m.1);
    // Whole percents rounded down, so that a share shown as 80% has met the
    // line (79.9% once read "80%, no").
    let pct = |x: f64| format!("{:.0}%", (x * 100.0).floor());
    let mut out = Vec::new();
    if let (Some(t), Some(r)) = (row(1 << 20, Way::Tcp), row(1 << 20, Way::Redis)) {
        let x = t.3 / r.3;
        out.push(Target {
            what: "tcp get at least 2x Redis GET".into(),
            block: 1 << 20,
            measured: format!("{x:.2}x"),
            met: x >= 2.0,
        });
    }
    let mut sizes: Vec<u64> = rows.iter().map(|r| r.0).collect();
    sizes.dedup();
    for &size in &sizes {
        if let Some(r) = row(size, Way::Tcp) {
            if let Some(l) = at(&c.loopback, size) {
                let (p, g) = (r.2 / l, r.3 / l);
                out.push(Target {
                    what: "tcp put / get at least 80% of plain TCP of the same blocks".into(),
                    block: size,
                    measured: format!("{} / {}", pct(p), pct(g)),
                    met: p >= 0.8 && g >= 0.8,
                });
            }
            if let Some(i) = c.iperf3 {
                let (p, g) = (r.2 / i, r.3 / i);
                out.push(Target {
                    what: match size {
                        IPERF3_WRITE => "tcp put / get at least 80% of iperf3 -l 1M".into(),
                        _ => "tcp put / get at least 80% of iperf3 -l 1M, at another size".into(),
                    },
                    block: size,
                    measured: format!("{} / {}", pct(p), pct(g)),
                    met: p >= 0.8 && g >= 0.8,
                });
            }
        }
        if let Some(r) = row(size, Way::Shm) {
            if let Some(m) = at(&c.memcpy_puts, size) {
                let p = r.2 / m;
                out.push(Target {
                    what: format!(
                        "shm put at least 80% of memcpy on {} thread{} (as many as it copies with)",
                        c.put_threads,
                        if c.put_threads == 1 { "" } else { "s" }
                    ),
                    block: size,
                    measured: pct(p),
                    met: p >= 0.8,
                });
            }
            if let Some(st) = at(&c.streaming, size) {
                let g = r.3 / st;
                out.push(Target {
                    what: "shm get at least 80% of the streaming-store copy it makes".into(),
                    block: size,
                    measured: pct(g),
                    met: g >= 0.8,
                });
            }
        }
    }
    out
}

/// Runs the bench and prints the table.
pub async fn bench_data(a: DataArgs) -> anyhow::Result<()> {
    // Each way: its name in --ways, the server it talks to, and the
    // client's plane.
    #[derive(Clone, Copy, PartialEq)]
    enum Server {
        Main,
        /// Started with --dram-checksums false.
        Unchecked,
        /// DRAM of `full_dram`, filled by the warm-up pass.
        Full,
    }
    const WAYS: [(Way, &str, Server, PlaneChoice); 6] = [
        (Way::Inline, "inline", Server::Main, PlaneChoice::Inline),
        (Way::Tcp, "tcp", Server::Main, PlaneChoice::Tcp),
        (
            Way::TcpUnchecked,
            "tcp-unchecked",
            Server::Unchecked,
            PlaneChoice::Tcp,
        ),
        (Way::Shm, "shm", Server::Main, PlaneChoice::Shm),
        (
            Way::ShmUnchecked,
            "shm-unchecked",
            Server::Unchecked,
            PlaneChoice::Shm,
        ),
        (Way::ShmFull, "shm-full", Server::Full, PlaneChoice::Shm),
    ];
    let known = |w: &String| WAYS.iter().any(|(_, name, ..)| name == w);
    if let Some(w) = a.ways.iter().find(|w| !known(w)) {
        let names: Vec<&str> = WAYS.iter().map(|(_, name, ..)| *name).collect();
        anyhow::bail!("unknown way {w:?}: the ways are {}", names.join(", "));
    }
    let tp_port = free_port()?;
    let rd_port = free_port()?;
    let dram = (a.total * 2).max(1 << 30);
    let dram = dram.to_string();
    let _tp = spawn_tidepool(&a.server, tp_port, &["--dram", &dram]).await?;
    let _rd = spawn_redis(rd_port).await?;
    // A second server, without DRAM checksums, when asked for.
    let unchecked = a.ways.iter().any(|w| w.ends_with("-unchecked"));
    let un_port = free_port()?;
    let _un = match unchecked {
        true => Some(
            spawn_tidepool(
                &a.server,
                un_port,
                &["--dram", &dram, "--dram-checksums", "false"],
            )
            .await?,
        ),
        false => None,
    };
    // And one for puts into a full store, of a DRAM size a cache has.
    let full = a.ways.iter().any(|w| w == "shm-full");
    let full_port = free_port()?;
    let full_dram = a.full_dram.to_string();
    let _full = match full {
        true => Some(spawn_tidepool(&a.server, full_port, &["--dram", &full_dram]).await?),
        false => None,
    };
    let (tcp, shm_copy_threads) = (a.tcp, a.shm_copy_threads);
    let connect = |port: u16, plane| {
        let addr = format!("127.0.0.1:{port}");
        async move {
            Client::connect_with(
                &addr,
                ClientOptions {
                    plane,
                    inline_below: 0,
                    tcp,
                    shm_copy_threads,
                    ..ClientOptions::default()
                },
            )
            .await
        }
    };
    let mut clients = Vec::new();
    for (way, name, server, plane) in WAYS {
        if a.ways.iter().any(|w| w == name) {
            let port = match server {
                Server::Main => tp_port,
                Server::Unchecked => un_port,
                Server::Full => full_port,
            };
            clients.push((way, connect(port, plane).await?));
        }
    }
    clients.push((
        Way::Redis,
        Client::connect_with(
            &format!("127.0.0.1:{rd_port}"),
            ClientOptions {
                plane: PlaneChoice::Inline,
                ..ClientOptions::default()
            },
        )
        .await?,
    ));
    let mut redis = RedisRef::connect(rd_port).await?;
    let cells = a.sizes.len() * a.runs * clients.len();
    let bar = indicatif::ProgressBar::new(cells as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed}]")
            .expect("valid template"),
    );
    let mut rows = Vec::new();
    let mut memcpy_rows = Vec::new();
    // memcpy on as many threads as shm puts copy with, when more than one.
    let mut memcpy_n_rows = Vec::new();
    let mut streaming_rows = Vec::new();
    let mut loopback_rows = Vec::new();
    let mut iperf_runs = Vec::new();
    for &size in &a.sizes {
        let n = (a.total / size).max(4) as usize;
        let per_batch = (a.batch / size).max(1) as usize;
        let blocks: Vec<(Bytes, Bytes)> = (0..n)
            .map(|i| {
                (
                    Bytes::from(format!("blk-{size}-{i}")),
                    pattern(size as usize, i),
                )
            })
            .collect();
        let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; size as usize]).collect();
        let mut put: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
        let mut get: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
        // A warm-up pass each: pages of the arena and of the buffers mapped.
        for (way, c) in &clients {
            if *way == Way::ShmFull {
                c.command(vec![Bytes::from_static(b"FLUSHALL")]).await?;
                // Until the store is full, and once more.
                for pass in 0..=a.full_dram.div_ceil(a.total) {
                    full_cell(c, &blocks, per_batch, &format!("warm{pass}-")).await?;
                }
            } else {
                one_cell(c, &mut redis, *way, &blocks, per_batch, &mut bufs).await?;
            }
        }
        let (mut mc, mut mcn, mut st, mut lb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..a.runs {
            for j in 0..clients.len() {
                // Alternate the order between runs.
                let i = if run % 2 == 0 {
                    j
                } else {
                    clients.len() - 1 - j
                };
                let (way, c) = &clients[i];
                bar.set_message(format!("{} KiB {:?}", size >> 10, way));
                let (p, g) = if *way == Way::ShmFull {
                    let tag = format!("run{run}-");
                    (full_cell(c, &blocks, per_batch, &tag).await?, f64::NAN)
                } else {
                    one_cell(c, &mut redis, *way, &blocks, per_batch, &mut bufs).await?
                };
                put[i].push(p);
                get[i].push(g);
                bar.inc(1);
            }
            if a.ceilings {
                mc.push(copy_rate(&blocks, |s, d| d.copy_from_slice(s), 1));
                if a.shm_copy_threads > 1 {
                    let n = a.shm_copy_threads;
                    mcn.push(copy_rate(&blocks, |s, d| d.copy_from_slice(s), n));
                }
                st.push(copy_rate(&blocks, tidepool_checksum::copy_streaming, 1));
                // The best of three passes, as the copies: a ceiling is
                // what the machine can do (one pass of 4 MiB blocks read
                // 3.2 GB/s where the tcp plane itself moved 4.0).
                let mut best: f64 = 0.0;
                for _ in 0..3 {
                    best = best.max(loopback_rate(&blocks)?);
                }
                lb.push(best);
            }
        }
        if a.ceilings {
            memcpy_rows.push((size, median(mc)));
            if !mcn.is_empty() {
                memcpy_n_rows.push((size, median(mcn)));
            }
            streaming_rows.push((size, median(st)));
            loopback_rows.push((size, median(lb)));
            // One iperf3 run after each size's cells: spread over the run,
            // as the machine's load changes.
            iperf_runs.push(iperf3());
        }
        for (i, (way, _)) in clients.iter().enumerate() {
            rows.push((size, *way, median(put[i].clone()), median(get[i].clone())));
        }
    }
    bar.finish_and_clear();
    let iperf: Result<Vec<f64>, String> = if a.ceilings {
        iperf_runs.into_iter().collect()
    } else {
        Err("--ceilings false".into())
    };
    println!(
        "# block throughput, GB/s: {} MiB a cell, batches of {} MiB, median of {} alternating runs",
        a.total >> 20,
        a.batch >> 20,
        a.runs
    );
    println!("| block | how | put GB/s | get GB/s | put vs redis | get vs redis |");
    println!("|---|---|---|---|---|---|");
    for &(size, way, p, g) in &rows {
        let redis = rows
            .iter()
            .find(|r| r.0 == size && r.1 == Way::Redis)
            .expect("redis row");
        if g.is_nan() {
            println!(
                "| {} KiB | {} | {p:.2} | - | {:.2}x | - |",
                size >> 10,
                way.name(),
                p / redis.2,
            );
            continue;
        }
        println!(
            "| {} KiB | {} | {p:.2} | {g:.2} | {:.2}x | {:.2}x |",
            size >> 10,
            way.name(),
            p / redis.2,
            g / redis.3
        );
    }
    println!();
    println!("| ceiling | GB/s |");
    println!("|---|---|");
    for (size, rate) in &memcpy_rows {
        println!(
            "| memcpy, {} KiB blocks into a cold working set | {rate:.2} |",
            size >> 10
        );
    }
    for (size, rate) in &memcpy_n_rows {
        println!(
            "| memcpy on {} threads at once (as many as shm puts copy with), {} KiB blocks into a cold working set | {rate:.2} |",
            a.shm_copy_threads,
            size >> 10
        );
    }
    for (size, rate) in &streaming_rows {
        println!(
            "| copy with streaming stores (as shm moves blocks), {} KiB blocks into a cold working set | {rate:.2} |",
            size >> 10
        );
    }
    for (size, rate) in &loopback_rows {
        println!(
            "| plain TCP over loopback, {} KiB blocks from and into buffers of their own | {rate:.2} |",
            size >> 10
        );
    }
    match &iperf {
        Ok(r) => println!(
            "| iperf3 -l 1M, loopback, 3 s, median of {} runs (one after each size; {:.2}-{:.2}) | {:.2} |",
            r.len(),
            r.iter().copied().fold(f64::INFINITY, f64::min),
            r.iter().copied().fold(0.0, f64::max),
            median(r.clone())
        ),
        Err(e) => println!("| iperf3 -l 1M | not run: {e} |"),
    }
    let ceilings = Ceilings {
        memcpy_puts: if memcpy_n_rows.is_empty() {
            memcpy_rows.clone()
        } else {
            memcpy_n_rows.clone()
        },
        put_threads: a.shm_copy_threads.max(1),
        streaming: streaming_rows.clone(),
        loopback: loopback_rows.clone(),
        iperf3: iperf.as_ref().ok().map(|r| median(r.clone())),
    };
    let targets = targets(&rows, &ceilings);
    if !targets.is_empty() {
        println!();
        println!("| bar | block | measured | met |");
        println!("|---|---|---|---|");
        for t in &targets {
            println!(
                "| {} | {} KiB | {} | {} |",
                t.what,
                t.block >> 10,
                t.measured,
                if t.met { "yes" } else { "no" }
            );
        }
    }
    if let Some(path) = a.json {
        let j = serde_json::json!({
            "bench": "data",
            "total_bytes": a.total,
            "batch_bytes": a.batch,
            "runs": a.runs,
            "rows": rows.iter().map(|(s, w, p, g)| serde_json::json!({
                "block_bytes": s, "how": w.name(), "put_gbs": p,
                "get_gbs": if g.is_nan() { None } else { Some(g) },
            })).collect::<Vec<_>>(),
            "memcpy": memcpy_rows.iter().map(|(s, r)| serde_json::json!({"block_bytes": s, "gbs": r})).collect::<Vec<_>>(),
            "shm_copy_threads": a.shm_copy_threads,
            "memcpy_threads": memcpy_n_rows.iter().map(|(s, r)| serde_json::json!({"block_bytes": s, "gbs": r, "threads": a.shm_copy_threads})).collect::<Vec<_>>(),
            "streaming_copy": streaming_rows.iter().map(|(s, r)| serde_json::json!({"block_bytes": s, "gbs": r})).collect::<Vec<_>>(),
            "loopback_tcp": loopback_rows.iter().map(|(s, r)| serde_json::json!({"block_bytes": s, "gbs": r})).collect::<Vec<_>>(),
            "iperf3_gbs": iperf.as_ref().ok().map(|r| median(r.clone())),
            "iperf3_runs_gbs": iperf.as_ref().ok(),
            "bars": targets.iter().map(|t| serde_json::json!({
                "bar": t.what, "block_bytes": t.block, "measured": t.measured, "met": t.met,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceilings() -> Ceilings {
        Ceilings {
            put_threads: 2,
            ..Ceilings::default()
        }
    }

    #[test]
    fn a_share_just_under_the_line_reads_under_it() {
        let rows = [
            (1 << 20, Way::Tcp, 3.184, 4.0),
            (1 << 20, Way::Redis, 1.0, 1.0),
        ];
        let c = Ceilings {
            iperf3: Some(4.0),
            ..ceilings()
        };
        let t = targets(&rows, &c);
        let tcp = t
            .iter()
            .find(|t| t.what.starts_with("tcp put / get") && t.what.contains("iperf3"))
            .expect("a tcp share");
        // 79.6% and 100%: not met, and not shown as 80%.
        assert_eq!(tcp.measured, "79% / 100%");
        assert!(!tcp.met);
        assert_eq!(t[0].measured, "4.00x");
        assert!(t[0].met);
    }

    #[test]
    fn tcp_is_held_to_plain_tcp_of_the_same_blocks_and_to_iperf3() {
        let rows = [
            (64 << 10, Way::Tcp, 3.0, 4.0),
            (1 << 20, Way::Tcp, 3.5, 4.0),
        ];
        let c = Ceilings {
            loopback: vec![(64 << 10, 5.0), (1 << 20, 4.0)],
            iperf3: Some(4.0),
            ..ceilings()
        };
        let t = targets(&rows, &c);
        let got: Vec<(u64, &str, &str, bool)> = t
            .iter()
            .map(|t| (t.block, t.what.as_str(), t.measured.as_str(), t.met))
            .collect();
        assert_eq!(
            got,
            [
                (
                    64 << 10,
                    "tcp put / get at least 80% of plain TCP of the same blocks",
                    "60% / 80%",
                    false
                ),
                (
                    64 << 10,
                    "tcp put / get at least 80% of iperf3 -l 1M, at another size",
                    "75% / 100%",
                    false
                ),
                (
                    1 << 20,
                    "tcp put / get at least 80% of plain TCP of the same blocks",
                    "87% / 100%",
                    true
                ),
                (
                    1 << 20,
                    "tcp put / get at least 80% of iperf3 -l 1M",
                    "87% / 100%",
                    true
                ),
            ]
        );
    }

    #[test]
    fn shm_puts_meet_memcpy_on_their_threads_and_gets_the_streaming_copy() {
        let rows = [
            (64 << 10, Way::Shm, 6.0, 8.0),
            (64 << 10, Way::Redis, 1.0, 1.0),
        ];
        let c = Ceilings {
            memcpy_puts: vec![(64 << 10, 10.0)],
            streaming: vec![(64 << 10, 9.0)],
            ..ceilings()
        };
        let t = targets(&rows, &c);
        let put = t.iter().find(|t| t.what.starts_with("shm put")).unwrap();
        assert_eq!(
            put.what,
            "shm put at least 80% of memcpy on 2 threads (as many as it copies with)"
        );
        assert_eq!((put.measured.as_str(), put.met), ("60%", false));
        let get = t.iter().find(|t| t.what.starts_with("shm get")).unwrap();
        assert_eq!((get.measured.as_str(), get.met), ("88%", true));
    }

    #[test]
    fn patterns_differ_between_blocks_and_poison_is_caught() {
        let blocks: Vec<(Bytes, Bytes)> = (0..600)
            .map(|i| (Bytes::from(format!("k{i}")), pattern(4096, i)))
            .collect();
        // Unlike a pattern of the seed's low byte, blocks 256 apart differ.
        assert_ne!(blocks[3].1, blocks[259].1);
        let mut bufs: Vec<Vec<u8>> = blocks.iter().map(|(_, v)| v.to_vec()).collect();
        verify(&bufs, &blocks, "t").unwrap();
        poison(&mut bufs, &blocks);
        assert!(verify(&bufs, &blocks, "t").is_err());
    }
}
