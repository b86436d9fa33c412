//! Cluster-wide prefix questions: KV.MATCH, KV.MATCHTOKENS and KV.EXISTS
//! asked of any node answer for the whole chain.
//!
//! The node asked groups the chain's keys by the node that owns each key's
//! slot, answers its own group from its store, and sends every other group
//! to its owner as one `KV.PEER MATCH` (or `KV.PEER EXISTS`), all at once,
//! over connections it keeps open to each peer: one round trip, however
//! many nodes the chain spans.
//!
//! A chain's stored prefix ends at its first missing key. Each owner
//! matches its own keys in chain order and stops at its first miss, so
//! the chain's prefix ends at the earliest of those misses, found once
//! every owner has answered. With `LEASE`, each owner leases what it
//! matched before that is known, so an owner whose own run went past the
//! chain's end holds a few blocks too many for a moment: once the answer
//! is sent, those leases are trimmed to the blocks inside the prefix
//! (`KV.PEER TRIM`). The client gets one lease id; KV.RELEASE of it on
//! this node gives back every node's part.
//!
//! A slot that no node serves, a peer that cannot be reached in
//! [`PEER_TIMEOUT`] or that answers with an error, counts as a miss at
//! that peer's first key: a cluster-wide answer may be shorter than the
//! data while a node is down, never longer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use tidepool_client::{Client, ClientError, ClientOptions, Frame, PlaneChoice};
use tidepool_cluster::key_slot;
use tidepool_protocol::command::{MatchOpts, TierName};
use tidepool_protocol::{CommandError, Reply};
use tidepool_tiering::ids::Ids;

use crate::cluster::Cluster;
use crate::state::Shared;

/// How long a peer may take to connect and answer before its keys count
/// as missing.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections kept open to each peer (each carries one exchange at a
/// time; exchanges on one are pipelined).
const PEER_CONNECTIONS: usize = 4;

/// Work a request left for the connection to finish asynchronously, after
/// the replies before it are sent.
#[derive(Debug)]
pub enum Remote {
    /// A cluster-wide KV.MATCH (or KV.MATCHTOKENS, hashed already).
    Match {
        /// The chain.
        keys: Vec<Bytes>,
        /// Its options.
        opts: MatchOpts,
    },
    /// A cluster-wide KV.EXISTS.
    Exists(Vec<Bytes>),
}

/// Open connections to the other nodes, by address.
#[derive(Default)]
pub struct Peers {
    clients: Mutex<HashMap<String, Arc<Client>>>,
}

impl Peers {
    /// The pool for `addr`, connected on first use.
    async fn get(&self, addr: &str) -> Result<Arc<Client>, ClientError> {
        if let Some(c) = self.clients.lock().get(addr) {
            return Ok(c.clone());
        }
        let opts = ClientOptions {
            connections: PEER_CONNECTIONS,
            plane: PlaneChoice::Inline,
            ..ClientOptions::default()
        };
        let client = Arc::new(Client::connect_with(addr, opts).await?);
        Ok(self
            .clients
            .lock()
            .entry(addr.to_string())
            .or_insert(client)
            .clone())
    }

    /// Sends one command to `addr`, within [`PEER_TIMEOUT`].
    async fn ask(&self, addr: &str, cmd: Vec<Bytes>) -> Result<Frame, String> {
        let exchange = async {
            let client = self.get(addr).await.map_err(|e| e.to_string())?;
            client.command(cmd).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(PEER_TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer from {addr} within {PEER_TIMEOUT:?}")),
        }
    }

    /// Sends commands to `addr` in one pipeline (within 30 s: a hand-over
    /// moves megabytes at a time): each command's reply, or its error.
    pub async fn pipeline(
        &self,
        addr: &str,
        cmds: Vec<Vec<Bytes>>,
    ) -> Result<Vec<Result<Frame, String>>, String> {
        let exchange = async {
            let client = self.get(addr).await.map_err(|e| e.to_string())?;
            client
                .pipeline_frames(&cmds)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(30), exchange).await {
            Ok(Ok(frames)) => Ok(frames
                .into_iter()
                .map(|f| match f {
                    Frame::Error(e) => Err(e.to_string()),
                    f => Ok(f),
                })
                .collect()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer from {addr} within 30 s")),
        }
    }

    /// Sends `cmd` to `addr` without waiting for it (a trim or release
    /// whose answer changes nothing).
    fn tell(self: &Arc<Self>, addr: String, cmd: Vec<Bytes>) {
        let peers = self.clone();
        tokio::spawn(async move {
            if let Err(e) = peers.ask(&addr, cmd).await {
                tracing::debug!(peer = %addr, error = %e, "a peer missed a lease trim or release");
            }
        });
    }
}

/// A lease over several nodes: the parts each holds.
#[derive(Debug)]
struct Spread {
    /// Unix milliseconds it ends at.
    deadline_ms: u64,
    /// This node's store lease.
    local: Option<u64>,
    /// Other nodes' leases: (address, id).
    remote: Vec<(String, u64)>,
}

/// Leases handed out for cluster-wide matches whose blocks are on several
/// nodes, by the id the client got.
#[derive(Default)]
pub struct SpreadLeases {
    leases: Mutex<HashMap<u64, Spread>>,
    ids: Ids,
}

/// The Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SpreadLeases {
    fn insert(&self, shared: &Shared, spread: Spread) -> u64 {
        let mut leases = self.leases.lock();
        if leases.len() >= 1024 && leases.len().is_power_of_two() {
            // Parts end on their own: forget entries past their time.
            let now = now_ms();
            leases.retain(|_, s| s.deadline_ms > now);
        }
        let id = self
            .ids
            .fresh(|id| leases.contains_key(&id) || shared.store.lease_exists(id));
        leases.insert(id, spread);
        id
    }

    /// Whether `id` names a spread lease still held.
    pub fn contains(&self, id: u64) -> bool {
        self.leases.lock().contains_key(&id)
    }

    /// Gives back every part of lease `id`: `None` when it is not a spread
    /// lease, else whether it was still in force.
    pub fn release(&self, shared: &Shared, peers: &Arc<Peers>, id: u64) -> Option<bool> {
        let spread = self.leases.lock().remove(&id)?;
        if let Some(local) = spread.local {
            shared.store.release(local);
        }
        for (addr, part) in spread.remote {
            peers.tell(addr, vec![Bytes::from_static(b"KV.RELEASE"), num(part)]);
        }
        Some(spread.deadline_ms > now_ms())
    }
}

/// An integer argument.
pub(crate) fn num(n: impl itoa::Integer) -> Bytes {
    Bytes::copy_from_slice(itoa::Buffer::new().format(n).as_bytes())
}

/// The keys of one owner, in chain order.
struct Group<'a> {
    /// The owner, as the map's index.
    owner: u16,
    /// Its address (`None`: this node).
    addr: Option<&'a str>,
    /// Positions of its keys in the chain.
    at: Vec<usize>,
}

/// What one owner answered for its keys.
#[derive(Default)]
struct Part {
    matched: usize,
    lease: Option<u64>,
    tiers: Vec<&'static str>,
}

/// Groups the first keys of `keys` by owner, stopping at the first key
/// whose slot nobody serves. Returns the groups and how many keys they
/// cover.
fn group<'v>(
    cluster: &Cluster,
    view: &'v tidepool_cluster::View,
    keys: impl Iterator<Item = impl AsRef<[u8]>>,
) -> (Vec<Group<'v>>, usize) {
    let mut groups: Vec<Group<'v>> = Vec::new();
    let mut covered = 0;
    for (i, k) in keys.enumerate() {
        let Some(owner) = view.map.owner_index(key_slot(k.as_ref())) else {
            break;
        };
        // A handful of owners: a scan beats hashing each key's owner.
        let g = match groups.iter().position(|g| g.owner == owner) {
            Some(g) => g,
            None => {
                let id = view.map.name(owner);
                let addr = if id == cluster.me.id {
                    None
                } else {
                    match view.nodes.get(id) {
                        Some(n) => Some(n.addr.as_str()),
                        None => break,
                    }
                };
                groups.push(Group {
                    owner,
                    addr,
                    at: Vec::new(),
                });
                groups.len() - 1
            }
        };
        groups[g].at.push(i);
        covered = i + 1;
    }
    (groups, covered)
}

/// Whether every key is in a slot this node owns (then a cluster-wide
/// command is answered here, as on a single node).
pub fn all_here<K: AsRef<[u8]>>(cluster: &Cluster, keys: impl Iterator<Item = K>) -> bool {
    let view = cluster.membership.view();
    let me = view.map.index_of(&cluster.me.id);
    let mut last = u16::MAX;
    for k in keys {
        let slot = key_slot(k.as_ref());
        if slot == last {
            continue;
        }
        if me.is_none() || view.map.owner_index(slot) != me {
            return false;
        }
        last = slot;
    }
    true
}

/// Whether a key's slot is this node's (always, without cluster mode),
/// against the map as it is now, read once: what `KV.PEER MATCH` and
/// `KV.PEER EXISTS` answer for (a key in a slot owned elsewhere counts as
/// missing).
pub fn mine(shared: &Shared) -> impl Fn(&[u8]) -> bool + '_ {
    let here = shared.cluster.get().map(|c| {
        let view = c.membership.view();
        let me = view.map.index_of(&c.me.id);
        (view, me)
    });
    move |k| {
        here.as_ref()
            .is_none_or(|(view, me)| me.is_some() && view.map.owner_index(key_slot(k)) == *me)
    }
}

fn peer_match_cmd(keys: &[Bytes], at: &[usize], opts: MatchOpts) -> Vec<Bytes> {
    let mut cmd = Vec::with_capacity(at.len() + 6);
    cmd.extend([
        Bytes::from_static(b"KV.PEER"),
        Bytes::from_static(b"MATCH"),
        num(at.len()),
    ]);
    cmd.extend(at.iter().map(|&i| keys[i].clone()));
    if let Some(ms) = opts.lease_ms {
        cmd.extend([Bytes::from_static(b"LEASE"), num(ms)]);
    }
    if opts.with_tiers {
        cmd.push(Bytes::from_static(b"WITHTIERS"));
    }
    cmd
}

/// Reads a peer's KV.MATCH reply (an integer, or a RESP2 map).
fn read_part(frame: Frame, asked: usize) -> Result<Part, String> {
    let tier = |f: &Frame| match f {
        Frame::BulkString(b) | Frame::SimpleString(b) => {
            TierName::parse(b).map(|t| t.as_str()).ok_or("a bad tier")
        }
        _ => Err("a bad tier"),
    };
    let part = match frame {
        Frame::Integer(n) => Part {
            matched: n as usize,
            ..Part::default()
        },
        Frame::Array(items) => {
            let mut part = Part::default();
            for kv in items.chunks(2) {
                match (&kv[0], kv.get(1)) {
                    (Frame::BulkString(k) | Frame::SimpleString(k), Some(v)) => match (&k[..], v) {
                        (b"matched", Frame::Integer(n)) => part.matched = *n as usize,
                        (b"lease", Frame::Integer(n)) => part.lease = Some(*n as u64),
                        (b"tiers", Frame::Array(ts)) => {
                            part.tiers = ts.iter().map(tier).collect::<Result<_, _>>()?
                        }
                        _ => {}
                    },
                    _ => return Err("a malformed reply".into()),
                }
            }
            part
        }
        other => return Err(format!("an unexpected reply {other:?}")),
    };
    if part.matched > asked {
        return Err(format!("{} matched of {asked} asked", part.matched));
    }
    Ok(part)
}

/// The answer to a cluster-wide match, and the lease the connection now
/// holds (to give back when it closes).
pub async fn match_keys(shared: &Shared, keys: &[Bytes], opts: MatchOpts) -> (Reply, Option<u64>) {
    if let Some(refused) = crate::cmd::kv::lease_refused(shared, opts.lease_ms) {
        return (refused, None);
    }
    let cluster = shared.cluster.get().expect("a fan-out needs cluster mode");
    let view = cluster.membership.view();
    let (groups, covered) = group(cluster, &view, keys.iter());
    // Ask the peers, all at once; answer our own keys meanwhile.
    let asked = groups.iter().map(|g| async {
        let addr = g.addr?;
        let cmd = peer_match_cmd(keys, &g.at, opts);
        let got = cluster.peers.ask(addr, cmd).await;
        Some(
            got.and_then(|f| read_part(f, g.at.len()))
                .unwrap_or_else(|e| {
                    tracing::debug!(peer = %addr, error = %e, "a peer's keys count as missing");
                    Part::default()
                }),
        )
    });
    // The peers' requests go out first (joined futures are polled in
    // order), then this node matches its own keys while they work.
    let local = async {
        groups.iter().find(|g| g.addr.is_none()).map(|g| {
            // A long chain is matched off the runtime's worker, as on one node.
            let m = crate::cmd::offload_if(g.at.len() > crate::cmd::LONG_ARGS, || {
                shared
                    .store
                    .match_prefix(g.at.iter().map(|&i| &keys[i][..]), opts.lease_ms)
            });
            Part {
                matched: m.matched,
                lease: m.lease,
                tiers: m.tiers.iter().map(|t| t.as_str()).collect(),
            }
        })
    };
    let (asked, mut local) = futures_util::future::join(join_all(asked), local).await;
    let parts: Vec<Part> = asked
        .into_iter()
        .map(|p| p.unwrap_or_else(|| local.take().unwrap_or_default()))
        .collect();
    // The chain's prefix ends at the first key an owner missed.
    let matched = groups
        .iter()
        .zip(&parts)
        .filter_map(|(g, p)| g.at.get(p.matched).copied())
        .fold(covered, usize::min);
    let mut tiers = vec![""; matched];
    let mut nodes = vec![""; matched];
    let mut spread = Spread {
        deadline_ms: now_ms().saturating_add(opts.lease_ms.unwrap_or(0)),
        local: None,
        remote: Vec::new(),
    };
    for (g, p) in groups.iter().zip(&parts) {
        let inside = g.at.partition_point(|&i| i < matched);
        for (j, &i) in g.at[..inside].iter().enumerate() {
            tiers[i] = p.tiers.get(j).copied().unwrap_or("");
            nodes[i] = g.addr.unwrap_or(cluster.me.addr.as_str());
        }
        let Some(id) = p.lease else { continue };
        // Trim what the owner leased past the chain's prefix.
        match g.addr {
            None => {
                shared.store.trim_lease(id, inside);
            }
            Some(addr) if inside < p.matched => cluster.peers.tell(
                addr.to_string(),
                vec![
                    Bytes::from_static(b"KV.PEER"),
                    Bytes::from_static(b"TRIM"),
                    num(id),
                    num(inside),
                ],
            ),
            Some(_) => {}
        }
        if inside > 0 {
            match g.addr {
                None => spread.local = Some(id),
                Some(addr) => spread.remote.push((addr.to_string(), id)),
            }
        }
    }
    let lease = match (opts.lease_ms, spread.local, spread.remote.len()) {
        (None, _, _) | (Some(_), None, 0) => None,
        // All of it here: the store's own lease, as on a single node.
        (Some(_), Some(id), 0) => Some(id),
        (Some(_), _, _) => Some(cluster.leases.insert(shared, spread)),
    };
    let reply = crate::cmd::kv::match_reply_parts(
        matched,
        lease,
        opts,
        || tiers.iter().map(|t| Reply::text(t)).collect(),
        || nodes.iter().map(Reply::bulk).collect(),
    );
    (reply, lease)
}

/// The answer to a cluster-wide KV.EXISTS: each key's tier, or nil.
pub async fn exists(shared: &Shared, keys: &[Bytes]) -> Reply {
    let cluster = shared.cluster.get().expect("a fan-out needs cluster mode");
    let view = cluster.membership.view();
    let (groups, _) = group(cluster, &view, keys.iter());
    let mut out = vec![Reply::Null; keys.len()];
    let asked = groups.iter().map(|g| async {
        let addr = g.addr?;
        let mut cmd = vec![
            Bytes::from_static(b"KV.PEER"),
            Bytes::from_static(b"EXISTS"),
        ];
        cmd.extend(g.at.iter().map(|&i| keys[i].clone()));
        match cluster.peers.ask(addr, cmd).await {
            Ok(Frame::Array(items)) if items.len() == g.at.len() => Some(items),
            other => {
                tracing::debug!(peer = %addr, answer = ?other, "a peer's keys count as missing");
                None
            }
        }
    });
    let answers = join_all(asked).await;
    for (g, answer) in groups.iter().zip(answers) {
        match (g.addr, answer) {
            (None, _) => {
                for &i in &g.at {
                    if let Some(t) = shared.store.tier_of(&keys[i]) {
                        out[i] = Reply::text(t.as_str());
                    }
                }
            }
            (Some(_), Some(items)) => {
                for (&i, f) in g.at.iter().zip(items) {
                    if let Frame::BulkString(t) | Frame::SimpleString(t) = f {
                        if let Some(t) = TierName::parse(&t) {
                            out[i] = Reply::text(t.as_str());
                        }
                    }
                }
            }
            (Some(_), None) => {}
        }
    }
    Reply::Array(out)
}

/// Runs what a request left to finish: the reply, and a lease the
/// connection now holds.
pub async fn run(shared: &Shared, work: Remote) -> (Reply, Option<u64>) {
    match work {
        Remote::Match { keys, opts } => match_keys(shared, &keys, opts).await,
        Remote::Exists(keys) => (exists(shared, &keys).await, None),
    }
}

/// Refuses a cluster-wide command inside MULTI (a transaction's commands
/// run one after another without waiting).
pub fn not_in_multi() -> Reply {
    Reply::Error(CommandError::new(
        "CROSSSLOT",
        "Keys in request don't hash to the same slot (a cluster-wide KV.MATCH or KV.EXISTS \
         cannot run inside MULTI)",
    ))
}
