//! Cluster mode: one [`Client`] over every node of a tidepool cluster.
//!
//! [`Client::connect_cluster`] reads `CLUSTER SHARDS` from a seed node and
//! keeps a pool (a [`Client`] of its own, with its own data plane: shm for
//! a node on this host, else tcp or rdma) for each node. A call over keys
//! goes to their owners: a batch is split by owner and the parts run at
//! once; a chain is cut into runs of consecutive blocks of one owner, each
//! run stored under the block before it (which the server takes on trust
//! when another node holds it). A prefix match asks each owner for its own
//! keys at once and ends the prefix at the earliest miss (one round trip,
//! where asking one node that asks the others would take two); a lease
//! over several nodes gets one id of the client's, and [`Client::release`]
//! gives every part back. A part answered with `-MOVED` (the
//! map changed; `-CROSSSLOT` for a part whose keys its map gave one
//! owner), `-CLUSTERDOWN` or a failed connection (its node may be gone)
//! makes the client read the map again and split and send that part
//! again, for up to 5 s; one answered
//! `-TRYAGAIN` (its slot in the last moment of a hand-over) is sent again
//! after a short pause, for up to 10 s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use redis_protocol::resp2::types::BytesFrame;

use crate::{Client, ClientError, ClientOptions, Match};

/// Slots of Redis Cluster.
const SLOTS: usize = 16384;

/// How long a part is sent again, the map read again before each try,
/// while answers say the map changed under it (or its node is gone).
const REDIRECTS_FOR: Duration = Duration::from_secs(5);

/// The pause before trying again when the map read again had not changed
/// yet (the nodes see a new map a moment apart).
const REDIRECT_PAUSE: Duration = Duration::from_millis(50);

/// How long a part answered `-TRYAGAIN` (its slot being handed over to
/// another node) is sent again, and the pause between tries.
const TRYAGAIN_FOR: Duration = Duration::from_secs(10);
const TRYAGAIN_PAUSE: Duration = Duration::from_millis(20);

/// Whether an answer asks to wait and send the same again.
fn try_again(e: &ClientError, since: Instant) -> bool {
    e.code() == Some("TRYAGAIN") && since.elapsed() < TRYAGAIN_FOR
}

/// Leases remembered past this many are pruned of those past their time.
const LEASES_PRUNE: usize = 65536;

/// The slot of a key (CRC16 of the key or its `{hash tag}`, as Redis
/// Cluster and the server hash it).
pub fn key_slot(key: &[u8]) -> u16 {
    tidepool_protocol::slot::key_slot(key)
}

/// Who owns what.
struct Topology {
    /// Each slot's node (an index into `nodes`), `u32::MAX` for none.
    slots: Vec<u32>,
    /// Each node's address and pool.
    nodes: Vec<(String, Arc<Client>)>,
}

impl Topology {
    fn owner(&self, key: &[u8]) -> Option<usize> {
        match self.slots[key_slot(key) as usize] {
            u32::MAX => None,
            n => Some(n as usize),
        }
    }
}

/// The cluster side of a [`Client`] made by [`Client::connect_cluster`].
pub(crate) struct Routes {
    seeds: Vec<String>,
    opts: ClientOptions,
    map: RwLock<Arc<Topology>>,
    /// One reading of the map at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// The leases of this client's matches: each one's parts (node, that
    /// node's lease id), and when it ends.
    leases: Mutex<HashMap<u64, LeaseParts>>,
    /// Ids of leases held on several nodes: a counter through SipHash
    /// under random keys.
    ids: std::hash::RandomState,
    next_id: std::sync::atomic::AtomicU64,
}

/// A lease's parts and when it ends.
type LeaseParts = (Vec<(Arc<Client>, u64)>, Instant);

/// Reads `CLUSTER SHARDS` (RESP2: maps as flat arrays) into (first, last,
/// address) ranges. `None` when the node is not in cluster mode.
/// Slot ranges and their node's address: (first, last, `host:port`).
type Ranges = Vec<(u16, u16, String)>;

fn shards(frame: BytesFrame) -> Result<Option<Ranges>, ClientError> {
    let bad = |what: &str| ClientError::Unexpected(format!("CLUSTER SHARDS: {what}"));
    let shards = match frame {
        BytesFrame::Array(a) => a,
        BytesFrame::Error(e) if e.contains("cluster support disabled") => return Ok(None),
        BytesFrame::Error(e) => return Err(ClientError::server(&e)),
        other => return Err(bad(&format!("{other:?}"))),
    };
    let text = |f: &BytesFrame| match f {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    };
    let field = |items: &[BytesFrame], name: &str| -> Option<BytesFrame> {
        items
            .chunks(2)
            .find(|kv| text(&kv[0]).as_deref() == Some(name))
            .and_then(|kv| kv.get(1).cloned())
    };
    let mut ranges = Vec::new();
    for shard in shards {
        let BytesFrame::Array(shard) = shard else {
            return Err(bad("a shard is not a map"));
        };
        let Some(BytesFrame::Array(slots)) = field(&shard, "slots") else {
            return Err(bad("a shard without slots"));
        };
        let Some(BytesFrame::Array(nodes)) = field(&shard, "nodes") else {
            return Err(bad("a shard without nodes"));
        };
        let Some(BytesFrame::Array(node)) = nodes.first() else {
            continue;
        };
        let host = field(node, "endpoint")
            .or_else(|| field(node, "ip"))
            .and_then(|f| text(&f))
            .ok_or_else(|| bad("a node without an address"))?;
        let Some(BytesFrame::Integer(port)) = field(node, "port") else {
            return Err(bad("a node without a port"));
        };
        for pair in slots.chunks(2) {
            match pair {
                [BytesFrame::Integer(first), BytesFrame::Integer(last)]
                    if 0 <= *first && first <= last && (*last as usize) < SLOTS =>
                {
                    ranges.push((*first as u16, *last as u16, format!("{host}:{port}")));
                }
                _ => return Err(bad("a bad slot range")),
            }
        }
    }
    Ok(Some(ranges))
}

impl Routes {
    pub(crate) async fn connect(
        seeds: &[&str],
        opts: ClientOptions,
    ) -> Result<(Routes, Client), ClientError> {
        let mut last = ClientError::Unexpected("no seed nodes given".into());
        for seed in seeds {
            match Client::connect_with(seed, opts).await {
                Ok(first) => {
                    let routes = Routes {
                        seeds: seeds.iter().map(|s| s.to_string()).collect(),
                        opts,
                        map: RwLock::new(Arc::new(Topology {
                            slots: vec![u32::MAX; SLOTS],
                            nodes: Vec::new(),
                        })),
                        refreshing: tokio::sync::Mutex::new(()),
                        leases: Mutex::new(HashMap::new()),
                        ids: std::hash::RandomState::new(),
                        next_id: std::sync::atomic::AtomicU64::new(0),
                    };
                    routes.read_map(&first).await?;
                    return Ok((routes, first));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Reads the map from `from` and connects to nodes not seen before.
    async fn read_map(&self, from: &Client) -> Result<(), ClientError> {
        let frame = from
            .pipeline_frames(&[vec![
                Bytes::from_static(b"CLUSTER"),
                Bytes::from_static(b"SHARDS"),
            ]])
            .await?
            .pop()
            .ok_or_else(|| ClientError::Unexpected("no reply".into()))?;
        let ranges = match shards(frame)? {
            Some(r) => r,
            // A node alone: it owns every slot.
            None => vec![(0, (SLOTS - 1) as u16, from.addr().to_string())],
        };
        let old = self.map.read().expect("map lock").clone();
        let mut nodes: Vec<(String, Arc<Client>)> = Vec::new();
        let mut slots = vec![u32::MAX; SLOTS];
        for (first, last, addr) in ranges {
            let i = match nodes.iter().position(|(a, _)| *a == addr) {
                Some(i) => i,
                None => {
                    let pool = match old.nodes.iter().find(|(a, _)| *a == addr) {
                        Some((_, c)) => c.clone(),
                        None => Arc::new(Client::connect_with(&addr, self.opts).await?),
                    };
                    nodes.push((addr, pool));
                    nodes.len() - 1
                }
            };
            for s in first..=last {
                slots[s as usize] = i as u32;
            }
        }
        *self.map.write().expect("map lock") = Arc::new(Topology { slots, nodes });
        Ok(())
    }

    /// Reads the map again, from any node that answers (the known nodes,
    /// then the seeds). Callers that raced here behind one that just
    /// refreshed do not read it once more.
    async fn refresh(&self, seen: &Arc<Topology>) -> Result<(), ClientError> {
        let _one = self.refreshing.lock().await;
        if !Arc::ptr_eq(seen, &self.map.read().expect("map lock")) {
            return Ok(());
        }
        let mut last = ClientError::Unexpected("no node answered CLUSTER SHARDS".into());
        for (_, node) in seen.nodes.iter() {
            match self.read_map(node).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        for seed in &self.seeds {
            if let Ok(c) = Client::connect_with(seed, self.opts).await {
                match self.read_map(&c).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    fn topology(&self) -> Arc<Topology> {
        self.map.read().expect("map lock").clone()
    }

    /// The pool of `key`'s owner.
    fn pool_of(&self, map: &Topology, key: &[u8]) -> Result<Arc<Client>, ClientError> {
        map.owner(key)
            .map(|i| map.nodes[i].1.clone())
            .ok_or_else(|| ClientError::Server {
                code: "CLUSTERDOWN".into(),
                message: format!("no node serves slot {}", key_slot(key)),
            })
    }

    /// Runs `f` on the owner of `key`, reading the map again and retrying
    /// when the answer says it moved.
    pub(crate) async fn on_owner<T, F, Fut>(&self, key: &[u8], f: F) -> Result<T, ClientError>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let since = Instant::now();
        loop {
            let map = self.topology();
            let result = match self.pool_of(&map, key) {
                Ok(pool) => f(pool).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) if try_again(&e, since) => tokio::time::sleep(TRYAGAIN_PAUSE).await,
                Err(e) if since.elapsed() < REDIRECTS_FOR && self.moved(&e) => {
                    self.catch_up(&map).await;
                }
                other => return other,
            }
        }
    }

    /// Whether an answer says the map this client holds is out of date:
    /// MOVED; CLUSTERDOWN while the cluster changes; CROSSSLOT for a part
    /// whose keys this client's map gave one owner; a connection that
    /// failed (its node may have left).
    fn moved(&self, e: &ClientError) -> bool {
        matches!(e, ClientError::Io(_))
            || matches!(e.code(), Some("MOVED" | "CLUSTERDOWN" | "CROSSSLOT"))
    }

    /// Reads the map again after an answer said it changed; pauses when
    /// it had not changed yet (or no node answered), so that the next try
    /// does not come back at once with the same answer.
    async fn catch_up(&self, seen: &Arc<Topology>) {
        let before: Vec<&str> = seen.nodes.iter().map(|(a, _)| a.as_str()).collect();
        let refreshed = self.refresh(seen).await;
        let now = self.topology();
        let same = now.slots == seen.slots
            && now
                .nodes
                .iter()
                .map(|(a, _)| a.as_str())
                .eq(before.iter().copied());
        if refreshed.is_err() || same {
            tokio::time::sleep(REDIRECT_PAUSE).await;
        }
    }

    /// Splits positions `at` (ascending) of `keys` by owner, in order
    /// within each group; with `runs`, a group is a run of consecutive
    /// positions of one owner instead.
    fn split(
        &self,
        map: &Topology,
        keys: &[Bytes],
        at: &[usize],
        runs: bool,
    ) -> Result<Vec<(usize, Vec<usize>)>, ClientError> {
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for &i in at {
            let owner = map.owner(&keys[i]).ok_or_else(|| ClientError::Server {
                code: "CLUSTERDOWN".into(),
                message: format!("no node serves slot {}", key_slot(&keys[i])),
            })?;
            if runs {
                match groups.last_mut() {
                    Some((o, g)) if *o == owner && i > 0 && g.last() == Some(&(i - 1)) => g.push(i),
                    _ => groups.push((owner, vec![i])),
                }
            } else {
                match groups.iter_mut().find(|(o, _)| *o == owner) {
                    Some((_, g)) => g.push(i),
                    None => groups.push((owner, vec![i])),
                }
            }
        }
        Ok(groups)
    }

    /// Runs `f` on the parts of `keys` (split by owner, or in runs), all at
    /// once, and hands each part's positions and answer to `take`. Parts
    /// answered as sent with an outdated map are split again with the map
    /// read again, a few times at most.
    async fn parts<T, F, Fut>(
        &self,
        keys: &[Bytes],
        runs: bool,
        f: F,
        mut take: impl FnMut(&[usize], T),
    ) -> Result<(), ClientError>
    where
        F: Fn(Arc<Client>, Vec<usize>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let since = Instant::now();
        while !pending.is_empty() {
            let map = self.topology();
            let groups = self.split(&map, keys, &pending, runs)?;
            let sent = groups
                .iter()
                .map(|(owner, at)| f(map.nodes[*owner].1.clone(), at.clone()));
            let answers = join_all(sent).await;
            let mut again = Vec::new();
            let mut last = None;
            let mut wait = false;
            for ((_, at), answer) in groups.iter().zip(answers) {
                match answer {
                    Ok(a) => take(at, a),
                    Err(e) if try_again(&e, since) => {
                        again.extend_from_slice(at);
                        wait = true;
                    }
                    Err(e) if since.elapsed() < REDIRECTS_FOR && self.moved(&e) => {
                        again.extend_from_slice(at);
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            if last.is_some() {
                self.catch_up(&map).await;
            } else if wait {
                tokio::time::sleep(TRYAGAIN_PAUSE).await;
            }
            again.sort_unstable();
            pending = again;
        }
        Ok(())
    }

    /// Stores blocks split by owner, the parts at once (see
    /// [`Client::put_many`]). With `chain`, consecutive blocks of one owner
    /// go together, each run under the block before it.
    pub(crate) async fn put_many(
        &self,
        blocks: &[(Bytes, Bytes)],
        chain: bool,
        parent: Option<Bytes>,
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        let keys: Vec<Bytes> = blocks.iter().map(|(k, _)| k.clone()).collect();
        let mut out: Vec<Option<Result<(), ClientError>>> =
            (0..blocks.len()).map(|_| None).collect();
        let put = |pool: Arc<Client>, at: Vec<usize>| {
            let part: Vec<(Bytes, Bytes)> = at.iter().map(|&i| blocks[i].clone()).collect();
            // A run's parent: the block before it (or the caller's).
            let first_parent = match at[0] {
                0 => parent.clone(),
                i if chain => Some(keys[i - 1].clone()),
                _ => parent.clone(),
            };
            async move { pool.put_many_here(&part, chain, first_parent).await }
        };
        self.parts(
            &keys,
            chain,
            put,
            |at, answers: Vec<Result<(), ClientError>>| {
                for (&i, r) in at.iter().zip(answers) {
                    out[i] = Some(r);
                }
            },
        )
        .await?;
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(ClientError::Unexpected("no answer for a block".into())))
            })
            .collect())
    }

    /// Reads blocks split by owner into `bufs`, the parts at once.
    pub(crate) async fn get_many_into(
        &self,
        keys: &[Bytes],
        bufs: &mut [&mut [u8]],
    ) -> Result<Vec<Option<usize>>, ClientError> {
        // Each part borrows its own buffers; a part sent again borrows them
        // again (never contended: parts are disjoint; tokio's guard, unlike
        // std's, leaves the future Send).
        let slots: Vec<tokio::sync::Mutex<&mut [u8]>> = bufs
            .iter_mut()
            .map(|b| tokio::sync::Mutex::new(&mut **b))
            .collect();
        let mut out = vec![None; keys.len()];
        let get = |pool: Arc<Client>, at: Vec<usize>| {
            let slots = &slots;
            async move {
                let part: Vec<Bytes> = at.iter().map(|&i| keys[i].clone()).collect();
                let mut guards: Vec<_> = at
                    .iter()
                    .map(|&i| slots[i].try_lock().expect("parts are disjoint"))
                    .collect();
                let mut part_bufs: Vec<&mut [u8]> = guards.iter_mut().map(|g| &mut ***g).collect();
                pool.get_many_into_here(&part, &mut part_bufs).await
            }
        };
        self.parts(keys, false, get, |at, lens: Vec<Option<usize>>| {
            for (&i, len) in at.iter().zip(lens) {
                out[i] = len;
            }
        })
        .await?;
        Ok(out)
    }

    /// Runs `f` on each owner's keys, the parts at once, and puts the
    /// per-key answers back in the keys' order.
    pub(crate) async fn per_key<T, F, Fut>(
        &self,
        keys: &[Bytes],
        f: F,
    ) -> Result<Vec<T>, ClientError>
    where
        T: Default + Clone,
        F: Fn(Arc<Client>, Vec<Bytes>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, ClientError>>,
    {
        let mut out = vec![T::default(); keys.len()];
        let ask = |pool, at: Vec<usize>| f(pool, at.iter().map(|&i| keys[i].clone()).collect());
        self.parts(keys, false, ask, |at, answers: Vec<T>| {
            for (&i, v) in at.iter().zip(answers) {
                out[i] = v;
            }
        })
        .await?;
        Ok(out)
    }

    /// Runs `f` on each owner's keys, the parts at once, and sums the
    /// answers.
    pub(crate) async fn summed<F, Fut>(&self, keys: &[Bytes], f: F) -> Result<usize, ClientError>
    where
        F: Fn(Arc<Client>, Vec<Bytes>) -> Fut,
        Fut: std::future::Future<Output = Result<usize, ClientError>>,
    {
        let mut sum = 0;
        let ask = |pool, at: Vec<usize>| f(pool, at.iter().map(|&i| keys[i].clone()).collect());
        self.parts(keys, false, ask, |_, n: usize| sum += n).await?;
        Ok(sum)
    }

    /// A prefix match of the whole chain: each owner asked for its own
    /// keys (in chain order), all at once; the prefix ends at the earliest
    /// key an owner misses. With a lease, each owner leases what it
    /// matched; the parts past the prefix are trimmed (`KV.PEER TRIM`, off
    /// the caller's path), and the caller gets one id for all the parts
    /// ([`Client::release`] gives them back). An owner that no longer owns
    /// some of its keys answers for them all the same (it asks their
    /// owners), so a stale map costs time, not a wrong answer.
    pub(crate) async fn match_prefix(
        &self,
        keys: &[Bytes],
        lease_ms: Option<u64>,
    ) -> Result<Match, ClientError> {
        let mut parts: Vec<(Vec<usize>, Arc<Client>, Match)> = Vec::new();
        let ask = |pool: Arc<Client>, at: Vec<usize>| {
            let part: Vec<Bytes> = at.iter().map(|&i| keys[i].clone()).collect();
            async move {
                let m = pool.match_prefix_here(&part, lease_ms).await?;
                Ok((pool, m))
            }
        };
        self.parts(keys, false, ask, |at, (pool, m)| {
            parts.push((at.to_vec(), pool, m))
        })
        .await?;
        let matched = parts
            .iter()
            .filter_map(|(at, _, m)| at.get(m.matched).copied())
            .fold(keys.len(), usize::min);
        let mut held: Vec<(Arc<Client>, u64)> = Vec::new();
        for (at, pool, m) in parts {
            let Some(id) = m.lease else { continue };
            let inside = at.partition_point(|&i| i < matched);
            if inside < m.matched {
                let trim = vec![
                    Bytes::from_static(b"KV.PEER"),
                    Bytes::from_static(b"TRIM"),
                    Bytes::from(id.to_string()),
                    Bytes::from(inside.to_string()),
                ];
                let pool = pool.clone();
                tokio::spawn(async move {
                    let _ = pool.command(trim).await;
                });
            }
            if inside > 0 {
                held.push((pool, id));
            }
        }
        let lease = match held.len() {
            0 => None,
            1 => Some(held[0].1),
            // Several nodes' leases: one id of this client's for them all.
            _ => Some(self.compound_id()),
        };
        if let (Some(id), Some(ms)) = (lease, lease_ms) {
            self.remember(id, held, ms);
        }
        Ok(Match { matched, lease })
    }

    /// A fresh id for a lease held on several nodes (63 bits, as the
    /// servers' ids, and unlike any this client holds).
    fn compound_id(&self) -> u64 {
        use std::hash::BuildHasher;
        let leases = self.leases.lock().expect("lease lock");
        loop {
            let n = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = self.ids.hash_one(n) & (i64::MAX as u64);
            if id != 0 && !leases.contains_key(&id) {
                return id;
            }
        }
    }

    /// Files lease `id`: its parts (node, that node's lease id), and when
    /// it ends.
    fn remember(&self, id: u64, parts: Vec<(Arc<Client>, u64)>, ms: u64) {
        let mut leases = self.leases.lock().expect("lease lock");
        if leases.len() >= LEASES_PRUNE {
            let now = Instant::now();
            leases.retain(|_, (_, until)| *until > now);
        }
        leases.insert(id, (parts, Instant::now() + Duration::from_millis(ms)));
    }

    /// The parts of lease `id` (forgotten now); `None` for a lease this
    /// client did not take.
    pub(crate) fn parts_of(&self, id: u64) -> Option<Vec<(Arc<Client>, u64)>> {
        self.leases
            .lock()
            .expect("lease lock")
            .remove(&id)
            .map(|(parts, _)| parts)
    }

    /// Each node's address and data plane.
    pub(crate) fn nodes(&self) -> Vec<(String, Option<&'static str>)> {
        self.topology()
            .nodes
            .iter()
            .map(|(a, c)| (a.clone(), c.data_plane()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> BytesFrame {
        BytesFrame::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn cluster_shards_read_as_ranges() {
        let node = || {
            BytesFrame::Array(vec![
                bulk("id"),
                bulk("abc"),
                bulk("port"),
                BytesFrame::Integer(7001),
                bulk("ip"),
                bulk("10.0.0.1"),
                bulk("endpoint"),
                bulk("10.0.0.1"),
            ])
        };
        let shard = BytesFrame::Array(vec![
            bulk("slots"),
            BytesFrame::Array(vec![
                BytesFrame::Integer(0),
                BytesFrame::Integer(5),
                BytesFrame::Integer(9),
                BytesFrame::Integer(9),
            ]),
            bulk("nodes"),
            BytesFrame::Array(vec![node()]),
        ]);
        let got = shards(BytesFrame::Array(vec![shard])).unwrap().unwrap();
        assert_eq!(
            got,
            vec![
                (0, 5, "10.0.0.1:7001".to_string()),
                (9, 9, "10.0.0.1:7001".to_string())
            ]
        );
        let alone = shards(BytesFrame::Error(
            "ERR This instance has cluster support disabled".into(),
        ))
        .unwrap();
        assert!(alone.is_none());
        let bad = BytesFrame::Array(vec![BytesFrame::Array(vec![
            bulk("slots"),
            BytesFrame::Array(vec![BytesFrame::Integer(5), BytesFrame::Integer(99999)]),
            bulk("nodes"),
            BytesFrame::Array(vec![node()]),
        ])]);
        assert!(shards(bad).is_err());
    }

    /// The client's calls can run on any tokio worker (`tokio::spawn`).
    #[allow(dead_code)]
    fn calls_are_send(
        c: &'static Client,
        keys: &'static [Bytes],
        bufs: &'static mut [&'static mut [u8]],
    ) {
        fn send<T: Send>(_: T) {}
        send(c.put_many(&[], true, None));
        send(c.get_many_into(keys, bufs));
        send(c.match_prefix(keys, Some(1)));
        send(c.get_many(keys));
        send(c.exists(keys));
        send(c.delete(keys));
        send(c.release(1));
        send(c.put(Bytes::new(), Bytes::new(), &crate::PutOptions::default()));
        send(c.get(Bytes::new()));
    }

    #[test]
    fn slots_are_redis_clusters() {
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
    }
}
