//! The async client: a pool of connections and the tidepool operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;
use tokio::sync::Mutex;

use crate::conn::Conn;
use crate::data::{self, Plane, Reserved, ServerPlanes};
use crate::put::{Failure, Group, Mover, Written};
use crate::{ClientError, ClientOptions, PlaneChoice};
use tidepool_transport::Descriptor;

/// Options of one put.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// The previous block of the chain (must be stored).
    pub parent: Option<Bytes>,
    /// Time to live in milliseconds.
    pub ttl_ms: Option<u64>,
    /// Pin against eviction.
    pub pin: bool,
    /// Tier to write to (`"dram"`, `"ssd"`); `None` for the server's default.
    pub tier: Option<&'static str>,
}

/// Result of a prefix match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// How many leading keys are stored.
    pub matched: usize,
    /// The lease holding the matched blocks, when one was asked for; give it
    /// back with [`Client::release`].
    pub lease: Option<u64>,
}

/// The server's `KV.STATS`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats {
    /// Per tier (`dram`, `ssd`): capacity, used, blocks, hits, misses, ...
    pub tiers: HashMap<String, HashMap<String, i64>>,
    /// `KV.MATCH` calls.
    pub matches: i64,
    /// Keys asked about by matches.
    pub keys_queried: i64,
    /// Keys found by matches.
    pub keys_matched: i64,
    /// Matched over queried.
    pub prefix_hit_ratio: f64,
}

/// A tidepool client: cheap to share (`&Client` from many tasks); each call
/// takes one pooled connection for its pipeline.
pub struct Client {
    addr: Arc<str>,
    conns: Vec<Mutex<Conn>>,
    next: AtomicUsize,
    plane: Option<Plane>,
    opts: ClientOptions,
    /// How long after sending a `KV.RESERVE` a one-sided put (shm, rdma)
    /// may still start writing the reserved memory: the server's
    /// reservation timeout less a margin (see [`write_window`]). `None`:
    /// the server did not say.
    write_window: Option<std::time::Duration>,
    /// Cluster mode ([`Client::connect_cluster`]): the nodes and who owns
    /// what. Calls over keys go to their owners; raw commands
    /// ([`Client::command`]) and [`Client::stats`] go to the node first
    /// connected to.
    cluster: Option<Arc<crate::cluster::Routes>>,
}

/// The time a one-sided put may start writing a reservation, given the
/// server's reservation timeout: past it the server may hand the range to
/// another block, so a copy that starts then (a client stalled that long
/// mid-put) could overwrite that block. A quarter of the timeout, at most
/// a second, is kept in hand for the copy that starts just before the end
/// and for the request's trip to the server.
fn write_window(timeout_ms: u64) -> std::time::Duration {
    let timeout = std::time::Duration::from_millis(timeout_ms);
    timeout - (timeout / 4).min(std::time::Duration::from_secs(1))
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connections", &self.conns.len())
            .field("plane", &self.data_plane())
            .finish()
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn num(n: impl ToString) -> Bytes {
    Bytes::from(n.to_string())
}

/// Whether a caller's command may go over a pooled connection: `Ok(true)`
/// when it ends or resets the connection (sent, then the connection is
/// replaced), an error when it would make the connection answer out of turn
/// (see [`Client::pipeline_frames`]).
fn pool_safety(cmd: &[Bytes]) -> Result<bool, ClientError> {
    let Some(name) = cmd.first() else {
        return Err(ClientError::Refused("an empty command".into()));
    };
    let is = |a: &Bytes, s: &str| a.eq_ignore_ascii_case(s.as_bytes());
    let refuse = |why: &str| {
        Err(ClientError::Refused(format!(
            "{} {why}",
            String::from_utf8_lossy(name).to_uppercase()
        )))
    };
    const SUBSCRIPTIONS: [&str; 7] = [
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "UNSUBSCRIBE",
        "PUNSUBSCRIBE",
        "SUNSUBSCRIBE",
        "MONITOR",
    ];
    if SUBSCRIPTIONS.iter().any(|s| is(name, s)) {
        return refuse("turns a connection into a stream of pushes (or answers once per channel): use a connection of its own");
    }
    if is(name, "CLIENT") && cmd.get(1).is_some_and(|a| is(a, "REPLY")) {
        return refuse("REPLY would leave a pooled connection without the replies it waits for");
    }
    if is(name, "HELLO") && cmd.get(1).is_some_and(|v| !is(v, "2")) {
        return refuse("with a protocol other than 2: this client reads RESP2");
    }
    Ok(is(name, "QUIT") || is(name, "RESET"))
}

/// Turns an error frame into an error, anything else into itself.
fn check(frame: BytesFrame) -> Result<BytesFrame, ClientError> {
    match frame {
        BytesFrame::Error(e) => Err(ClientError::server(&e)),
        f => Ok(f),
    }
}

fn int(frame: BytesFrame) -> Result<i64, ClientError> {
    match check(frame)? {
        BytesFrame::Integer(i) => Ok(i),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

fn bulk_or_nil(frame: BytesFrame) -> Result<Option<Bytes>, ClientError> {
    match check(frame)? {
        BytesFrame::BulkString(b) => Ok(Some(b)),
        BytesFrame::Null => Ok(None),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

fn array(frame: BytesFrame) -> Result<Vec<BytesFrame>, ClientError> {
    match check(frame)? {
        BytesFrame::Array(v) => Ok(v),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

fn text(frame: &BytesFrame) -> Option<String> {
    match frame {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

/// A RESP2 map (flat array of key, value) as pairs.
fn pairs(frame: BytesFrame) -> Result<Vec<(String, BytesFrame)>, ClientError> {
    let items = array(frame)?;
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let key = text(&k).ok_or_else(|| ClientError::Unexpected(format!("map key {k:?}")))?;
        out.push((key, v));
    }
    Ok(out)
}

impl Client {
    /// Connects `connections` sockets (at least one) to a tidepool server,
    /// with the data plane chosen automatically (see [`ClientOptions`]).
    pub async fn connect(addr: &str, connections: usize) -> Result<Client, ClientError> {
        Self::connect_with(
            addr,
            ClientOptions {
                connections,
                ..ClientOptions::default()
            },
        )
        .await
    }

    /// Connects with explicit settings. With [`PlaneChoice::Auto`] the data
    /// plane is shared memory when the server runs on this host, else TCP,
    /// else inline RESP; naming a plane makes its absence an error.
    pub async fn connect_with(addr: &str, opts: ClientOptions) -> Result<Client, ClientError> {
        let resp_addr = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| ClientError::Unexpected(format!("{addr} resolves to nothing")))?;
        let mut conns = Vec::with_capacity(opts.connections.max(1));
        for _ in 0..opts.connections.max(1) {
            conns.push(Mutex::new(Conn::connect(addr).await?));
        }
        let mut client = Client {
            addr: addr.into(),
            conns,
            next: AtomicUsize::new(0),
            plane: None,
            opts,
            write_window: None,
            cluster: None,
        };
        if opts.plane != PlaneChoice::Inline {
            let planes = match client.one(vec![b("KV.DATAPLANE")]).await.and_then(pairs) {
                Ok(fields) => ServerPlanes::parse(fields),
                Err(e) if opts.plane != PlaneChoice::Auto => return Err(e),
                Err(_) => ServerPlanes::default(),
            };
            client.write_window = planes.reserve_timeout_ms.map(write_window);
            client.plane = data::choose(&opts, &planes, resp_addr).await?;
        }
        Ok(client)
    }

    /// Connects to a tidepool cluster through any of `seeds` (`host:port`
    /// of some of its nodes): reads who owns which slots (`CLUSTER
    /// SHARDS`) and connects `connections` sockets to each node, each
    /// node with its own data plane (shared memory for a node on this
    /// host, else TCP). A seed that is not in cluster mode counts as a
    /// cluster of one. See the crate's README for how calls are split.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tidepool_client::ClientError> {
    /// use tidepool_client::{chain_keys, Client};
    /// let client = Client::connect_cluster(&["10.0.0.1:6379", "10.0.0.2:6379"], 4).await?;
    /// let keys = chain_keys(b"model-a", 16, &(0..256).collect::<Vec<u32>>());
    /// // One question for the whole chain, wherever its blocks live.
    /// let hit = client.match_prefix(&keys, None).await?;
    /// # let _ = hit; Ok(()) }
    /// ```
    pub async fn connect_cluster(
        seeds: &[&str],
        connections: usize,
    ) -> Result<Client, ClientError> {
        Self::connect_cluster_with(
            seeds,
            ClientOptions {
                connections,
                ..ClientOptions::default()
            },
        )
        .await
    }

    /// [`Client::connect_cluster`] with explicit settings (each node's
    /// pool takes them).
    pub async fn connect_cluster_with(
        seeds: &[&str],
        opts: ClientOptions,
    ) -> Result<Client, ClientError> {
        let (routes, mut first) = crate::cluster::Routes::connect(seeds, opts).await?;
        first.cluster = Some(Arc::new(routes));
        Ok(first)
    }

    /// In cluster mode, each node's address and data plane; else empty.
    pub fn cluster_nodes(&self) -> Vec<(String, Option<&'static str>)> {
        self.cluster.as_ref().map_or_else(Vec::new, |r| r.nodes())
    }

    /// The address this client connected to (in cluster mode, the seed).
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The data plane in use (`"shm"`, `"tcp"`), or `None` for inline RESP.
    /// In cluster mode, the first node's (see [`Client::cluster_nodes`]).
    pub fn data_plane(&self) -> Option<&'static str> {
        self.plane.as_ref().map(|p| p.kind().as_str())
    }

    /// The plane to use for a batch whose largest block is `largest` bytes.
    fn plane_for(&self, largest: usize) -> Option<&Plane> {
        self.plane
            .as_ref()
            .filter(|_| largest >= self.opts.inline_below)
    }

    async fn pipeline(&self, cmds: &[Vec<Bytes>]) -> Result<Vec<BytesFrame>, ClientError> {
        let i = self.next.fetch_add(1, Relaxed) % self.conns.len();
        self.conn(i).await?.pipeline(cmds).await
    }

    /// Pooled connection `i`, replaced first if an earlier exchange left it
    /// out of step.
    async fn conn(&self, i: usize) -> Result<Pooled<'_>, ClientError> {
        let mut conn = self.conns[i].lock().await;
        if !conn.in_step() {
            *conn = Conn::connect(&self.addr).await?;
        }
        Ok(Pooled(conn))
    }

    async fn one(&self, cmd: Vec<Bytes>) -> Result<BytesFrame, ClientError> {
        let mut replies = self.pipeline(&[cmd]).await?;
        replies
            .pop()
            .ok_or_else(|| ClientError::Unexpected("no reply".into()))
    }

    /// Sends a raw command (name first) and returns the reply frame; server
    /// errors become [`ClientError::Server`]. Commands that would leave a
    /// pooled connection answering out of turn are refused
    /// ([`ClientError::Refused`]; see [`Client::pipeline_frames`]).
    pub async fn command(&self, args: Vec<Bytes>) -> Result<BytesFrame, ClientError> {
        let mut replies = self.user_pipeline(std::slice::from_ref(&args)).await?;
        check(
            replies
                .pop()
                .ok_or_else(|| ClientError::Unexpected("no reply".into()))?,
        )
    }

    /// Sends commands (name first) in one pipeline and returns their reply
    /// frames, in order (error replies stay frames: one failing command does
    /// not hide the others).
    ///
    /// The connections are pooled and every call reads one reply per
    /// command, so commands that change how a connection answers are refused
    /// before anything is sent ([`ClientError::Refused`]): `SUBSCRIBE` and
    /// the other pub/sub subscriptions and unsubscriptions (pushes, or one
    /// reply per channel; use a connection of its own, e.g. the `redis`
    /// crate's pub/sub), `MONITOR`, `CLIENT REPLY`, and `HELLO` with a
    /// protocol other than 2 (this client reads RESP2). `QUIT` and `RESET`
    /// are sent, and the connection is then replaced.
    pub async fn pipeline_frames(
        &self,
        cmds: &[Vec<Bytes>],
    ) -> Result<Vec<BytesFrame>, ClientError> {
        self.user_pipeline(cmds).await
    }

    /// A pipeline of the caller's commands: refused when one would put the
    /// pooled connection out of step; a connection that `QUIT` or `RESET`
    /// ended or reset is replaced.
    async fn user_pipeline(&self, cmds: &[Vec<Bytes>]) -> Result<Vec<BytesFrame>, ClientError> {
        let mut ends = false;
        for cmd in cmds {
            ends |= pool_safety(cmd)?;
        }
        let i = self.next.fetch_add(1, Relaxed) % self.conns.len();
        let mut conn = self.conn(i).await?;
        let out = conn.pipeline(cmds).await;
        conn.broken |= ends;
        out
    }

    /// Sends commands (name first) in one pipeline and returns their integer
    /// replies, in order (for EXISTS-style batches).
    pub async fn pipeline_ints(&self, cmds: &[Vec<Bytes>]) -> Result<Vec<i64>, ClientError> {
        self.user_pipeline(cmds)
            .await?
            .into_iter()
            .map(int)
            .collect()
    }

    /// Stores one block.
    pub async fn put(
        &self,
        key: Bytes,
        value: Bytes,
        opts: &PutOptions,
    ) -> Result<(), ClientError> {
        if let Some(routes) = &self.cluster {
            let (k, v) = (&key, &value);
            return routes
                .on_owner(&key, |pool| async move {
                    pool.put_here(k.clone(), v.clone(), opts).await
                })
                .await;
        }
        self.put_here(key, value, opts).await
    }

    /// The single-node form (a node's own pool in cluster mode).
    pub(crate) async fn put_here(
        &self,
        key: Bytes,
        value: Bytes,
        opts: &PutOptions,
    ) -> Result<(), ClientError> {
        let mut cmd = vec![b("KV.PUT"), key, value];
        if let Some(p) = &opts.parent {
            cmd.extend([b("PARENT"), p.clone()]);
        }
        if let Some(ms) = opts.ttl_ms {
            cmd.extend([b("TTL"), num(ms)]);
        }
        if let Some(t) = opts.tier {
            cmd.extend([b("TIER"), b(t)]);
        }
        if opts.pin {
            cmd.push(b("PIN"));
        }
        check(self.one(cmd).await?).map(|_| ())
    }

    /// Stores blocks; each gets its own result (`Ok` also for a block already
    /// stored: a key names its prefix, so its bytes are the same). Without
    /// `chain` the blocks are independent (all under `parent`, if given);
    /// with it each block's parent is the one before it.
    ///
    /// Over a data plane (blocks of at least [`ClientOptions::inline_below`]
    /// bytes) the blocks are reserved (`KV.RESERVE`), moved and committed
    /// (`KV.COMMIT`) in groups, pipelined; else they go in one `KV.MPUT`.
    /// A block is visible only once committed: a call that fails or is given
    /// up half way leaves no block half written.
    ///
    /// ```no_run
    /// # async fn demo(client: &tidepool_client::Client) -> Result<(), tidepool_client::ClientError> {
    /// use bytes::Bytes;
    /// let blocks: Vec<(Bytes, Bytes)> = (0..8)
    ///     .map(|i| (Bytes::from(format!("layer0-blk{i}")), Bytes::from(vec![1u8; 1 << 20])))
    ///     .collect();
    /// for (i, r) in client.put_many(&blocks, false, None).await?.iter().enumerate() {
    ///     if let Err(e) = r {
    ///         eprintln!("block {i} refused: {e}"); // e.g. OOM when DRAM is pinned full
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn put_many(
        &self,
        blocks: &[(Bytes, Bytes)],
        chain: bool,
        parent: Option<Bytes>,
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(routes) = &self.cluster {
            return routes.put_many(blocks, chain, parent).await;
        }
        self.put_many_here(blocks, chain, parent).await
    }

    /// The single-node form (a node's own pool in cluster mode).
    pub(crate) async fn put_many_here(
        &self,
        blocks: &[(Bytes, Bytes)],
        chain: bool,
        parent: Option<Bytes>,
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let largest = blocks.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        if let Some(plane) = self.plane_for(largest) {
            return self.put_many_via(plane, blocks, chain, parent).await;
        }
        let mut cmd = Vec::with_capacity(2 * blocks.len() + 5);
        cmd.extend([b("KV.MPUT"), num(blocks.len())]);
        for (k, v) in blocks {
            cmd.extend([k.clone(), v.clone()]);
        }
        if chain {
            cmd.push(b("CHAIN"));
        }
        if let Some(p) = parent {
            cmd.extend([b("PARENT"), p]);
        }
        Ok(array(self.one(cmd).await?)?
            .into_iter()
            .map(|f| check(f).map(|_| ()))
            .collect())
    }

    /// `put_many` over the data plane, in groups of about `COMMIT_GROUP`
    /// bytes (over tcp `TCP_COMMIT_GROUP`, at most `TCP_GROUP_BLOCKS`
    /// blocks), three deep: while group i moves, the KV.RESERVE of group i + 1
    /// and the KV.COMMIT of group i - 1 are at the server, so its work
    /// (allocating, checksumming, indexing) overlaps the copy. Over shm a
    /// group's copies are queued on the plane's copying threads once its
    /// reservation is in ([`ClientOptions::shm_copy_threads`]), so that
    /// group i + 1 is copied while i is (two threads), and while this task
    /// sends, reads and parses the protocol around them (on two vCPUs, two
    /// copying threads moved 64 KiB puts a third faster and 4 MiB ones half
    /// again as fast as copying here). Commits go in order, so a chain's
    /// parents are in before their children. Over tcp a group's bytes go
    /// out before the replies to the group before it are read
    /// ([`TcpWrites`](tidepool_transport::tcp::TcpWrites)), and that group
    /// is committed once they are; the data connections are held for the
    /// whole put, so a get of the same client waits for a put of many
    /// groups to end, not for its current group. A block the server
    /// already holds is left as it is (a key names its prefix, so its bytes
    /// are the same).
    async fn put_many_via(
        &self,
        plane: &Plane,
        blocks: &[(Bytes, Bytes)],
        chain: bool,
        parent: Option<Bytes>,
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        let groups = Mover::groups(plane.kind(), blocks.iter().map(|(_, v)| v.len()));
        let kind = plane.kind().as_str();
        let reserve_cmd = |g: &std::ops::Range<usize>| {
            let mut cmd = Vec::with_capacity(2 * g.len() + 7);
            cmd.extend([b("KV.RESERVE"), num(g.len())]);
            for (k, v) in &blocks[g.clone()] {
                cmd.extend([k.clone(), num(v.len())]);
            }
            cmd.extend([b("VIA"), b(kind)]);
            let first_parent = if chain && g.start > 0 {
                Some(blocks[g.start - 1].0.clone())
            } else {
                parent.clone()
            };
            if chain {
                cmd.push(b("CHAIN"));
            }
            if let Some(p) = first_parent {
                cmd.extend([b("PARENT"), p]);
            }
            cmd
        };
        let mut results: Vec<Option<Result<(), ClientError>>> =
            (0..blocks.len()).map(|_| None).collect();
        // What a group's KV.RESERVE gave: (block index, descriptor) to write.
        let take_reserved =
            |g: &std::ops::Range<usize>,
             frame: BytesFrame,
             results: &mut Vec<Option<Result<(), ClientError>>>| {
                let frames = array(frame)?;
                if frames.len() != g.len() {
                    return Err(ClientError::Unexpected(format!(
                        "{} reservations for {} blocks",
                        frames.len(),
                        g.len()
                    )));
                }
                let mut out = Vec::new();
                for (i, f) in g.clone().zip(frames) {
                    match data::reserved(f)? {
                        Reserved::Desc(d) => out.push((i, d)),
                        Reserved::Exists => results[i] = Some(Ok(())),
                        Reserved::Err(e) => results[i] = Some(Err(e)),
                    }
                }
                Ok::<_, ClientError>(out)
            };
        let commit_cmd = |(w, sums): &Written| {
            let mut cmd = Vec::with_capacity(2 * w.len() + 2);
            cmd.push(b("KV.COMMIT"));
            cmd.extend(w.iter().map(|(_, d)| num(d.token)));
            if let Some(sums) = sums {
                cmd.push(b("CHECKSUMS"));
                cmd.extend(sums.iter().map(num));
            }
            cmd
        };
        // One connection carries the whole exchange, replies read one step
        // late: at step i the client sends the commit of group i - 1 and
        // the reservation of group i + 2 (i + `ahead`), moves group i, then
        // reads what it sent at step i - 1 (the commit of i - 2, the
        // reservation of i + 1). The server has a whole group's move to
        // answer.
        enum Owed {
            Commit(Group),
            Reserve(usize),
        }
        let n = groups.len();
        let mut reserved: Vec<Option<Group>> = (0..n).map(|_| None).collect();
        let i = self.next.fetch_add(1, Relaxed) % self.conns.len();
        let mut conn = self.conn(i).await?;
        let ahead = Mover::ahead(plane);
        // When each group's KV.RESERVE went out: a one-sided write into its
        // memory starts no later than `write_window` after that.
        let mut reserve_sent: Vec<Option<std::time::Instant>> = vec![None; n];
        let deadline = |reserve_sent: &[Option<std::time::Instant>], g: usize| {
            Some(reserve_sent[g]? + self.write_window?)
        };
        let mut owed: Vec<Owed> = Vec::new();
        let mut cmds = Vec::new();
        for (g, range) in groups.iter().enumerate().take(ahead) {
            cmds.push(reserve_cmd(range));
            owed.push(Owed::Reserve(g));
            reserve_sent[g] = Some(std::time::Instant::now());
        }
        conn.send(&cmds).await?;
        let settle = |owed: Vec<Owed>,
                      frames: Vec<BytesFrame>,
                      reserved: &mut Vec<Option<Group>>,
                      results: &mut Vec<Option<Result<(), ClientError>>>|
         -> Result<(), ClientError> {
            for (o, f) in owed.into_iter().zip(frames) {
                match o {
                    Owed::Commit(w) => record_commits(&w, f, results)?,
                    Owed::Reserve(g) => reserved[g] = Some(take_reserved(&groups[g], f, results)?),
                }
            }
            Ok(())
        };
        let frames = conn.recv(owed.len()).await?;
        // Replies out of step: the connection is not reused as is.
        settle(
            std::mem::take(&mut owed),
            frames,
            &mut reserved,
            &mut results,
        )
        .inspect_err(|_| conn.broken = true)?;
        // Declared after `conn`, so that a put given up half way stops its
        // moves (shm copies still queued) before the connection closes and
        // the server frees the reserved ranges.
        let mut mover = Mover::new(plane).await;
        mover.reserved(&reserved, blocks, &|g| deadline(&reserve_sent, g));
        // The group moved and ready to commit at the next step.
        let mut prev: Written = (Vec::new(), None);
        let mut failed: Option<Failure> = None;
        for gi in 0..n {
            let cur = reserved[gi].take().unwrap_or_default();
            let mut cmds = Vec::new();
            let mut now_owed = Vec::new();
            if !prev.0.is_empty() {
                cmds.push(commit_cmd(&prev));
                now_owed.push(Owed::Commit(std::mem::take(&mut prev).0));
            }
            if gi + ahead < n {
                cmds.push(reserve_cmd(&groups[gi + ahead]));
                now_owed.push(Owed::Reserve(gi + ahead));
                reserve_sent[gi + ahead] = Some(std::time::Instant::now());
            }
            if !cmds.is_empty() {
                conn.send(&cmds).await?;
            }
            let started = match mover
                .start(gi, &cur, blocks, deadline(&reserve_sent, gi))
                .await
            {
                Ok(Some(confirmed)) => {
                    // Confirmed now (tcp, the group before): committed now.
                    let written = (confirmed, None);
                    conn.send(&[commit_cmd(&written)]).await?;
                    now_owed.push(Owed::Commit(written.0));
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            // What was sent a step ago.
            let frames = conn.recv(owed.len()).await?;
            settle(
                std::mem::take(&mut owed),
                frames,
                &mut reserved,
                &mut results,
            )
            .inspect_err(|_| conn.broken = true)?;
            owed = now_owed;
            mover.reserved(&reserved, blocks, &|g| deadline(&reserve_sent, g));
            let finished = match started {
                Ok(_) => mover.finish(gi, cur).await,
                Err(e) => Err(mover.fail(e, cur)),
            };
            match finished {
                Ok(Some(written)) => prev = written,
                Ok(None) => {}
                Err(f) => {
                    failed = Some(f);
                    break;
                }
            }
        }
        if failed.is_none() {
            match mover.end().await {
                Ok(Some(last)) => prev = last,
                Ok(None) => {}
                Err(f) => failed = Some(f),
            }
        } else {
            // Nothing from the failed group on is committed; copies still
            // queued stop before the server frees their ranges.
            drop(mover);
        }
        let frames = conn.recv(owed.len()).await?;
        // Replies out of step: the connection is not reused as is.
        settle(
            std::mem::take(&mut owed),
            frames,
            &mut reserved,
            &mut results,
        )
        .inspect_err(|_| conn.broken = true)?;
        if let Some(Failure { error, lost }) = failed {
            let mut abort = vec![b("KV.ABORT")];
            abort.extend(
                lost.iter()
                    .chain(reserved.iter().flatten().flatten())
                    .map(|(_, d)| num(d.token)),
            );
            let _ = conn.pipeline(&[abort]).await;
            return Err(error.into());
        }
        if !prev.0.is_empty() {
            let reply = conn.pipeline(&[commit_cmd(&prev)]).await?;
            let f = reply
                .into_iter()
                .next()
                .ok_or_else(|| ClientError::Unexpected("no commit reply".into()))?;
            record_commits(&prev.0, f, &mut results)?;
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(ClientError::Unexpected("missing commit reply".into())))
            })
            .collect())
    }

    /// Stores a chain (each block's parent is the one before it; the first's is
    /// `parent`). Fails on the first block the server refused.
    pub async fn put_chain(
        &self,
        blocks: &[(Bytes, Bytes)],
        parent: Option<Bytes>,
    ) -> Result<(), ClientError> {
        for r in self.put_many(blocks, true, parent).await? {
            r?;
        }
        Ok(())
    }

    /// Reads one block.
    pub async fn get(&self, key: Bytes) -> Result<Option<Bytes>, ClientError> {
        if let Some(routes) = &self.cluster {
            let k = &key;
            return routes
                .on_owner(&key, |pool| async move { pool.get_here(k.clone()).await })
                .await;
        }
        self.get_here(key).await
    }

    /// The single-node form (a node's own pool in cluster mode).
    pub(crate) async fn get_here(&self, key: Bytes) -> Result<Option<Bytes>, ClientError> {
        bulk_or_nil(self.one(vec![b("KV.GET"), key]).await?)
    }

    /// Reads many blocks in one `KV.MGET`.
    pub async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, ClientError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(routes) = &self.cluster {
            return routes
                .per_key(
                    keys,
                    |pool, part| async move { pool.get_many_here(&part).await },
                )
                .await;
        }
        self.get_many_here(keys).await
    }

    /// The single-node form (a node's own pool in cluster mode).
    pub(crate) async fn get_many_here(
        &self,
        keys: &[Bytes],
    ) -> Result<Vec<Option<Bytes>>, ClientError> {
        let mut cmd = vec![b("KV.MGET")];
        cmd.extend(keys.iter().cloned());
        array(self.one(cmd).await?)?
            .into_iter()
            .map(bulk_or_nil)
            .collect()
    }

    /// Reads many blocks into caller buffers: `bufs[i]` receives block `i`.
    /// Returns, per key, the length written (`None` for a miss). A buffer too
    /// small for its block is an error, and nothing is written past it; after
    /// an error the buffers' contents are unspecified.
    ///
    /// Over a data plane the blocks are located under a lease
    /// (`KV.LOCATE ... LEASE`, so eviction cannot reuse their memory while
    /// they move), copied or received straight into `bufs`, and the lease
    /// is given back; small blocks come inline (`KV.MGET`). Over shm or
    /// rdma the client copies out of the server's memory itself: a lease
    /// that had run out by the time it was given back (a copy that took
    /// longer than [`ClientOptions::read_lease_ms`]) fails the get with
    /// [`ClientError::LeaseExpired`], since that memory may have been
    /// reused under the copy.
    ///
    /// ```no_run
    /// # async fn demo(client: &tidepool_client::Client, keys: &[bytes::Bytes]) -> Result<(), tidepool_client::ClientError> {
    /// // One buffer per key, as large as the largest block.
    /// let mut pool = vec![0u8; keys.len() << 20];
    /// let mut bufs: Vec<&mut [u8]> = pool.chunks_mut(1 << 20).collect();
    /// let got = client.get_many_into(keys, &mut bufs).await?;
    /// let hits = got.iter().take_while(|g| g.is_some()).count();
    /// println!("{hits} leading blocks read");
    /// # Ok(()) }
    /// ```
    pub async fn get_many_into(
        &self,
        keys: &[Bytes],
        bufs: &mut [&mut [u8]],
    ) -> Result<Vec<Option<usize>>, ClientError> {
        if keys.len() != bufs.len() {
            return Err(ClientError::Unexpected(format!(
                "{} keys but {} buffers",
                keys.len(),
                bufs.len()
            )));
        }
        if let (Some(routes), false) = (&self.cluster, keys.is_empty()) {
            return routes.get_many_into(keys, bufs).await;
        }
        self.get_many_into_here(keys, bufs).await
    }

    /// The single-node form (a node's own pool in cluster mode).
    pub(crate) async fn get_many_into_here(
        &self,
        keys: &[Bytes],
        bufs: &mut [&mut [u8]],
    ) -> Result<Vec<Option<usize>>, ClientError> {
        let smallest = bufs.iter().map(|b| b.len()).min().unwrap_or(0);
        if let Some(plane) = self.plane_for(smallest) {
            return self.get_many_into_via(plane, keys, bufs).await;
        }
        let blocks = self.get_many(keys).await?;
        let mut out = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.into_iter().enumerate() {
            match block {
                None => out.push(None),
                Some(v) if v.len() <= bufs[i].len() => {
                    bufs[i][..v.len()].copy_from_slice(&v);
                    out.push(Some(v.len()));
                }
                Some(v) => {
                    return Err(ClientError::Unexpected(format!(
                        "block {i} has {} bytes, its buffer {}",
                        v.len(),
                        bufs[i].len()
                    )))
                }
            }
        }
        Ok(out)
    }

    /// `get_many_into` over the data plane, in groups of `GET_GROUP_KEYS`
    /// keys (one group over tcp), pipelined as puts are: while group i
    /// moves, the KV.LOCATE of group i + 2 and the KV.RELEASE of group i - 1
    /// are at the server, and their replies are read a step late. Each group
    /// is located under a lease of its own, given back once it has moved
    /// (whatever happened). Locating 512 blocks of 64 KiB and releasing them
    /// took a quarter of a 32 MiB shm get when the copy waited for it.
    async fn get_many_into_via(
        &self,
        plane: &Plane,
        keys: &[Bytes],
        bufs: &mut [&mut [u8]],
    ) -> Result<Vec<Option<usize>>, ClientError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let per_group = plane.get_group_keys().unwrap_or(keys.len());
        let groups: Vec<std::ops::Range<usize>> = (0..keys.len())
            .step_by(per_group)
            .map(|start| start..(start + per_group).min(keys.len()))
            .collect();
        let locate_cmd = |g: &std::ops::Range<usize>| {
            let mut cmd = Vec::with_capacity(g.len() + 6);
            cmd.extend([b("KV.LOCATE"), num(g.len())]);
            cmd.extend(keys[g.clone()].iter().cloned());
            cmd.extend([
                b("LEASE"),
                num(self.opts.read_lease_ms),
                b("VIA"),
                b(plane.kind().as_str()),
            ]);
            cmd
        };
        let release_cmd = |lease: u64| vec![b("KV.RELEASE"), num(lease)];
        // A one-sided read is whole only if its lease was still in force
        // when given back (`KV.RELEASE` answering 1).
        let one_sided = plane.one_sided();
        let lapsed = |g: &std::ops::Range<usize>| {
            ClientError::LeaseExpired(format!(
                "blocks {}..{} were copied under a lease of {} ms that had run out when \
                 given back: their memory may have been reused meanwhile",
                g.start, g.end, self.opts.read_lease_ms
            ))
        };
        enum Owed {
            Locate(usize),
            /// The release of a group's lease, after the group was read.
            Release(usize),
        }
        // A group's lease and its blocks' locations, once located.
        type Located = Option<(u64, Vec<BytesFrame>)>;
        // A lease that had lapsed is recorded in `expired` (the first one),
        // not returned at once: the rest of the replies still count.
        let settle = |owed: Vec<Owed>,
                      frames: Vec<BytesFrame>,
                      located: &mut Vec<Located>,
                      held: &mut Vec<u64>,
                      expired: &mut Option<ClientError>|
         -> Result<(), ClientError> {
            for (o, f) in owed.into_iter().zip(frames) {
                match o {
                    Owed::Locate(g) => {
                        let (lease, blocks) = locate_reply(f, groups[g].len())?;
                        held.push(lease);
                        located[g] = Some((lease, blocks));
                    }
                    Owed::Release(g) => {
                        if int(f)? == 0 && one_sided && expired.is_none() {
                            *expired = Some(lapsed(&groups[g]));
                        }
                    }
                }
            }
            Ok(())
        };
        let n = groups.len();
        let mut located: Vec<Located> = (0..n).map(|_| None).collect();
        // The connection, and the leases located and not yet given back: if
        // the connection fails half way, they go back over another one; if
        // the get is given up (its future dropped), from a task of their
        // own, with those of locations sent for and not read (`GetGuard`).
        let i = self.next.fetch_add(1, Relaxed) % self.conns.len();
        let mut guard = GetGuard {
            conn: self.conn(i).await?,
            held: Vec::new(),
            addr: self.addr.clone(),
        };
        let GetGuard { conn, held, .. } = &mut guard;
        let res = async {
            let first: Vec<Vec<Bytes>> = groups.iter().take(2).map(locate_cmd).collect();
            conn.send(&first).await?;
            let frames = conn.recv(1).await?;
            let mut expired = None;
            // Replies out of step: the connection is not reused as is.
            settle(
                vec![Owed::Locate(0)],
                frames,
                &mut located,
                held,
                &mut expired,
            )
            .inspect_err(|_| conn.broken = true)?;
            let mut owed: Vec<Owed> = (1..first.len()).map(Owed::Locate).collect();
            let mut out: Vec<Option<usize>> = vec![None; keys.len()];
            // The lease of the group read last, and that group.
            let mut prev: Option<(u64, usize)> = None;
            let mut failed = None;
            for gi in 0..n {
                let (lease, frames) = located[gi].take().expect("located a step ago");
                let mut cmds = Vec::new();
                let mut now_owed = Vec::new();
                if gi + 2 < n {
                    cmds.push(locate_cmd(&groups[gi + 2]));
                    now_owed.push(Owed::Locate(gi + 2));
                }
                let releasing = prev.replace((lease, gi));
                if let Some((l, g)) = releasing {
                    cmds.push(release_cmd(l));
                    now_owed.push(Owed::Release(g));
                }
                if !cmds.is_empty() {
                    conn.send(&cmds).await?;
                }
                held.retain(|l| Some(*l) != releasing.map(|r| r.0));
                let g = groups[gi].clone();
                let moved = read_group(plane, frames, &mut bufs[g.clone()], &mut out[g.clone()])
                    .await
                    .map_err(|e| match e {
                        ClientError::Unexpected(why) => {
                            ClientError::Unexpected(format!("group from block {}: {why}", g.start))
                        }
                        e => e,
                    });
                let frames = conn.recv(owed.len()).await?;
                settle(
                    std::mem::take(&mut owed),
                    frames,
                    &mut located,
                    held,
                    &mut expired,
                )
                .inspect_err(|_| conn.broken = true)?;
                owed = now_owed;
                if let Err(e) = moved {
                    failed = Some(e);
                    break;
                }
            }
            // A one-sided read of the last group is whole only if its lease
            // was still in force when given back: that release is answered.
            if let (true, None, Some((l, g))) = (one_sided, &failed, prev) {
                held.retain(|h| *h != l);
                conn.send(&[release_cmd(l)]).await?;
                owed.push(Owed::Release(g));
            }
            let frames = conn.recv(owed.len()).await?;
            settle(owed, frames, &mut located, held, &mut expired)
                .inspect_err(|_| conn.broken = true)?;
            // Every lease still held goes back: over tcp the last group's,
            // and on a failure those of groups located but never read.
            // Nothing waits for the replies (a lease the server failed to
            // drop expires).
            let releases: Vec<Vec<Bytes>> = held.drain(..).map(release_cmd).collect();
            if !releases.is_empty() {
                conn.send_unanswered(&releases).await?;
            }
            match (failed, expired) {
                (Some(e), _) | (None, Some(e)) => Err(e),
                (None, None) => Ok(out),
            }
        }
        .await;
        let held = std::mem::take(&mut guard.held);
        drop(guard);
        if !held.is_empty() {
            // The connection failed: best effort over another (the leases
            // would expire anyway).
            let releases: Vec<Vec<Bytes>> = held.into_iter().map(release_cmd).collect();
            let _ = self.pipeline(&releases).await;
        }
        res
    }

    fn match_reply(frame: BytesFrame) -> Result<Match, ClientError> {
        match check(frame)? {
            BytesFrame::Integer(n) => Ok(Match {
                matched: n as usize,
                lease: None,
            }),
            f @ BytesFrame::Array(_) => {
                let mut m = Match::default();
                for (k, v) in pairs(f)? {
                    match (k.as_str(), v) {
                        ("matched", BytesFrame::Integer(n)) => m.matched = n as usize,
                        ("lease", BytesFrame::Integer(n)) => m.lease = Some(n as u64),
                        _ => {}
                    }
                }
                Ok(m)
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// How many leading `keys` are stored; with `lease_ms`, they are also held
    /// against eviction until the lease is released or runs out.
    pub async fn match_prefix(
        &self,
        keys: &[Bytes],
        lease_ms: Option<u64>,
    ) -> Result<Match, ClientError> {
        if keys.is_empty() {
            return Ok(Match::default());
        }
        if let Some(routes) = &self.cluster {
            return routes.match_prefix(keys, lease_ms).await;
        }
        self.match_prefix_here(keys, lease_ms).await
    }

    /// The single-node form (a node's own pool in cluster mode).
    pub(crate) async fn match_prefix_here(
        &self,
        keys: &[Bytes],
        lease_ms: Option<u64>,
    ) -> Result<Match, ClientError> {
        let mut cmd = vec![b("KV.MATCH"), num(keys.len())];
        cmd.extend(keys.iter().cloned());
        if let Some(ms) = lease_ms {
            cmd.extend([b("LEASE"), num(ms)]);
        }
        Self::match_reply(self.one(cmd).await?)
    }

    /// The same as [`Client::match_prefix`] with the chain hashed by the server
    /// from token ids: what a scheduler asks of each node for a prompt it
    /// has as tokens.
    ///
    /// ```no_run
    /// # async fn demo(client: &tidepool_client::Client) -> Result<(), tidepool_client::ClientError> {
    /// let prompt: Vec<u32> = vec![101, 2023, 2003, 1037, 3231]; // token ids
    /// let hit = client.match_tokens(b"model-a", 16, &prompt, None).await?;
    /// println!("{} blocks of 16 tokens cached", hit.matched);
    /// # Ok(()) }
    /// ```
    pub async fn match_tokens(
        &self,
        seed: &[u8],
        block_tokens: u32,
        tokens: &[u32],
        lease_ms: Option<u64>,
    ) -> Result<Match, ClientError> {
        if let Some(routes) = &self.cluster {
            // Routed by the chain's first key: hashed here, as the server would.
            let keys = crate::chain_keys(seed, block_tokens as usize, tokens);
            return routes.match_prefix(&keys, lease_ms).await;
        }
        let mut cmd = vec![
            b("KV.MATCHTOKENS"),
            Bytes::copy_from_slice(seed),
            num(block_tokens),
        ];
        cmd.extend(tokens.iter().map(num));
        if let Some(ms) = lease_ms {
            cmd.extend([b("LEASE"), num(ms)]);
        }
        Self::match_reply(self.one(cmd).await?)
    }

    /// Gives a lease back. False when it was already gone.
    pub async fn release(&self, lease: u64) -> Result<bool, ClientError> {
        // In cluster mode, to the node that gave it.
        if let Some(parts) = self.cluster.as_ref().and_then(|r| r.parts_of(lease)) {
            let mut in_force = false;
            for (node, id) in parts {
                in_force |= node.release_here(id).await?;
            }
            return Ok(in_force);
        }
        self.release_here(lease).await
    }

    /// The single-node form (a node's own pool in cluster mode).
    pub(crate) async fn release_here(&self, lease: u64) -> Result<bool, ClientError> {
        Ok(int(self.one(vec![b("KV.RELEASE"), num(lease)]).await?)? == 1)
    }

    /// The tier of each key (`"dram"`, `"ssd"`), or `None` when it is not stored.
    pub async fn exists(&self, keys: &[Bytes]) -> Result<Vec<Option<String>>, ClientError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(routes) = &self.cluster {
            return routes
                .per_key(
                    keys,
                    |pool, part| async move { pool.exists_here(&part).await },
                )
                .await;
        }
        self.exists_here(keys).await
    }

    /// The single-node form (a node's own pool in cluster mode).
    pub(crate) async fn exists_here(
        &self,
        keys: &[Bytes],
    ) -> Result<Vec<Option<String>>, ClientError> {
        let mut cmd = vec![b("KV.EXISTS")];
        cmd.extend(keys.iter().cloned());
        array(self.one(cmd).await?)?
            .into_iter()
            .map(|f| bulk_or_nil(f).map(|o| o.map(|b| String::from_utf8_lossy(&b).into_owned())))
            .collect()
    }

    /// Deletes blocks (and what is chained under them); returns how many of the
    /// named keys were stored.
    pub async fn delete(&self, keys: &[Bytes]) -> Result<usize, ClientError> {
        if keys.is_empty() {
            return Ok(0);
        }
        if let Some(routes) = &self.cluster {
            return routes
                .summed(
                    keys,
                    |pool, part| async move { pool.delete_here(&part).await },
                )
                .await;
        }
        self.delete_here(keys).await
    }

    /// The single-node form (a node's own pool in cluster mode).
    pub(crate) async fn delete_here(&self, keys: &[Bytes]) -> Result<usize, ClientError> {
        let mut cmd = vec![b("KV.DEL")];
        cmd.extend(keys.iter().cloned());
        Ok(int(self.one(cmd).await?)? as usize)
    }

    /// The server's statistics.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let mut stats = Stats::default();
        for (k, v) in pairs(self.one(vec![b("KV.STATS")]).await?)? {
            match (k.as_str(), v) {
                ("tiers", f) => {
                    for (tier, fields) in pairs(f)? {
                        let mut m = HashMap::new();
                        for (name, value) in pairs(fields)? {
                            if let BytesFrame::Integer(i) = value {
                                m.insert(name, i);
                            }
                        }
                        stats.tiers.insert(tier, m);
                    }
                }
                ("matches", BytesFrame::Integer(i)) => stats.matches = i,
                ("keys_queried", BytesFrame::Integer(i)) => stats.keys_queried = i,
                ("keys_matched", BytesFrame::Integer(i)) => stats.keys_matched = i,
                ("prefix_hit_ratio", f) => {
                    stats.prefix_hit_ratio = text(&f).and_then(|t| t.parse().ok()).unwrap_or(0.0)
                }
                _ => {}
            }
        }
        Ok(stats)
    }
}

/// A KV.LOCATE reply for `n` keys: its lease and one location (a
/// descriptor or nil) per key.
fn locate_reply(frame: BytesFrame, n: usize) -> Result<(u64, Vec<BytesFrame>), ClientError> {
    let (mut lease, mut located) = (None, Vec::new());
    for (k, v) in pairs(frame)? {
        match (k.as_str(), v) {
            ("lease", BytesFrame::Integer(l)) => lease = Some(l as u64),
            ("blocks", f) => located = array(f)?,
            _ => {}
        }
    }
    let lease = lease.ok_or_else(|| ClientError::Unexpected("KV.LOCATE without a lease".into()))?;
    if located.len() != n {
        return Err(ClientError::Unexpected(format!(
            "{} locations for {n} keys",
            located.len()
        )));
    }
    Ok((lease, located))
}

/// Moves one located group into its buffers, recording each block's
/// length in `out` (`None` for a miss).
async fn read_group(
    plane: &Plane,
    located: Vec<BytesFrame>,
    bufs: &mut [&mut [u8]],
    out: &mut [Option<usize>],
) -> Result<(), ClientError> {
    let mut reads = Vec::new();
    for (i, ((frame, buf), out)) in located
        .into_iter()
        .zip(bufs.iter_mut())
        .zip(out)
        .enumerate()
    {
        match check(frame)? {
            BytesFrame::Null => *out = None,
            f => {
                let d = data::descriptor(f)?;
                let len = d.len as usize;
                if len > buf.len() {
                    return Err(ClientError::Unexpected(format!(
                        "block {i} has {len} bytes, its buffer {}",
                        buf.len()
                    )));
                }
                reads.push((d, &mut buf[..len]));
                *out = Some(len);
            }
        }
    }
    plane.read(&mut reads).await?;
    Ok(())
}

/// A pooled connection in use. Given back out of step (its exchange failed,
/// or was given up half way: the caller's future dropped), it is closed at
/// once rather than when the pool next hands it out, so the server drops
/// the reservations it made without waiting for their timeout.
pub(crate) struct Pooled<'a>(tokio::sync::MutexGuard<'a, Conn>);

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.0
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.0
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if !self.0.in_step() {
            drop(self.0.take());
        }
    }
}

/// A data-plane get's connection and the leases it holds and has not
/// given back yet. Dropped with leases held or replies owed (the get's
/// future dropped half way: a timeout, a cancelled request), it moves the
/// connection out of the pool (which then opens a new one) into a task of
/// its own, which reads the replies the get never read (locations carry
/// leases too) and gives every lease back; a lease whose reply cannot be
/// read (a send cut short, a failed connection) expires.
struct GetGuard<'a> {
    conn: Pooled<'a>,
    held: Vec<u64>,
    addr: Arc<str>,
}

impl Drop for GetGuard<'_> {
    fn drop(&mut self) {
        let unread = self.conn.owed_readable();
        if self.held.is_empty() && unread == 0 {
            return;
        }
        // Outside a runtime there is no task to give them: they expire.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut leases = std::mem::take(&mut self.held);
        let mut conn = (unread > 0).then(|| self.conn.take());
        let addr = self.addr.clone();
        rt.spawn(async move {
            if let Some(c) = conn.as_mut() {
                if let Ok(frames) = c.recv(unread).await {
                    leases.extend(frames.into_iter().filter_map(lease_of));
                }
            }
            if leases.is_empty() {
                return;
            }
            let mut c = match conn.filter(|c| c.in_step()) {
                Some(c) => c,
                None => match Conn::connect(&addr).await {
                    Ok(c) => c,
                    Err(_) => return,
                },
            };
            let releases: Vec<Vec<Bytes>> = leases
                .into_iter()
                .map(|l| vec![b("KV.RELEASE"), num(l)])
                .collect();
            let _ = c.pipeline(&releases).await;
        });
    }
}

/// The lease of a KV.LOCATE reply (anything else: none).
fn lease_of(frame: BytesFrame) -> Option<u64> {
    pairs(frame)
        .ok()?
        .into_iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("lease", BytesFrame::Integer(l)) => Some(l as u64),
            _ => None,
        })
}

/// Records a KV.COMMIT reply (`OK` for one token, an array for several).
fn record_commits(
    group: &[(usize, Descriptor)],
    reply: BytesFrame,
    results: &mut [Option<Result<(), ClientError>>],
) -> Result<(), ClientError> {
    let frames = if group.len() == 1 {
        vec![reply]
    } else {
        array(reply)?
    };
    if frames.len() != group.len() {
        return Err(ClientError::Unexpected(format!(
            "{} commit replies for {} blocks",
            frames.len(),
            group.len()
        )));
    }
    for ((i, _), f) in group.iter().zip(frames) {
        results[*i] = Some(check(f).map(|_| ()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::put::put_groups;

    #[test]
    fn the_write_window_keeps_a_quarter_of_the_timeout_and_at_most_a_second() {
        let ms = std::time::Duration::from_millis;
        assert_eq!(write_window(30_000), ms(29_000));
        assert_eq!(write_window(2_000), ms(1_500));
        assert_eq!(write_window(100), ms(75));
        assert_eq!(write_window(1), std::time::Duration::from_micros(750));
    }

    #[test]
    fn put_groups_cut_by_bytes_and_by_blocks() {
        let mib = 1 << 20;
        // By bytes: 4 MiB groups of 1 MiB blocks, the rest last.
        let g = put_groups([mib; 10].into_iter(), 4 * mib, usize::MAX);
        assert_eq!(g, vec![0..4, 4..8, 8..10]);
        // A block larger than a group is a group of its own.
        let g = put_groups([mib, 9 * mib, mib].into_iter(), 4 * mib, usize::MAX);
        assert_eq!(g, vec![0..2, 2..3]);
        // By blocks: 64 KiB blocks at most 64 a group, whatever the bytes.
        let g = put_groups([64 << 10; 200].into_iter(), 16 * mib, 64);
        assert_eq!(g, vec![0..64, 64..128, 128..192, 192..200]);
        // Together they cover every block once, in order; none is empty.
        for (bytes, blocks) in [(4 * mib, usize::MAX), (16 * mib, 64), (1, 1)] {
            let sizes: Vec<usize> = (0..300).map(|i| (i * 7919) % (3 * mib)).collect();
            let g = put_groups(sizes.iter().copied(), bytes, blocks);
            covers_in_order(&g, 300);
        }
        assert!(put_groups(std::iter::empty(), 4 * mib, 64).is_empty());
    }

    /// `g` covers blocks 0..n once, in order, with no empty group.
    fn covers_in_order(g: &[std::ops::Range<usize>], n: usize) {
        assert!(g.iter().all(|r| !r.is_empty()), "{g:?}");
        assert_eq!(g.first().map(|r| r.start), Some(0));
        assert_eq!(g.last().map(|r| r.end), Some(n));
        assert!(g.windows(2).all(|w| w[0].end == w[1].start), "{g:?}");
    }
}
