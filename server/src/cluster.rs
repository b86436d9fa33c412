//! Cluster mode in the server: joining through etcd, redirecting requests
//! for slots other nodes own (`-MOVED`), refusing requests whose keys span
//! slots (`-CROSSSLOT`) or reach a slot nobody serves (`-CLUSTERDOWN`), and
//! the CLUSTER commands in Redis's formats.
//!
//! A multi-key KV write (KV.MPUT, KV.RESERVE, ...) is served when all its
//! keys are in one slot of this node, as Redis serves multi-key commands.
//! KV.MATCH, KV.MATCHTOKENS and KV.EXISTS are cluster-wide: served here
//! when this node owns every key, else asked of the owners
//! ([`crate::fanout`]).

use bytes::Bytes;
use tidepool_cluster::{key_slot, Membership, NodeInfo, Settings, View};
use tidepool_protocol::table::CommandSpec;
use tidepool_protocol::{Command, CommandError, Reply};

use crate::state::Shared;

/// This node's place in the cluster.
pub struct Cluster {
    /// This node.
    pub me: NodeInfo,
    /// Its membership (registration, the watched map).
    pub membership: Membership,
    /// Connections to the other nodes, for cluster-wide commands.
    pub peers: std::sync::Arc<crate::fanout::Peers>,
    /// Leases of cluster-wide matches held on several nodes.
    pub leases: crate::fanout::SpreadLeases,
    /// Slots being handed over to other nodes.
    pub handover: crate::handover::Handover,
}

impl Cluster {
    /// Joins the cluster the config names (`None` when it names none).
    pub async fn join(shared: &Shared) -> anyhow::Result<Option<Cluster>> {
        let (spec, name, ttl) = {
            let c = shared.config.read();
            let Some(spec) = c.cluster.clone() else {
                return Ok(None);
            };
            (spec, c.cluster_name.clone(), c.cluster_lease_ttl)
        };
        let endpoints = crate::config::cluster_endpoints(&spec)?;
        let me = NodeInfo {
            id: shared.run_id.clone(),
            addr: shared.addr.get().cloned().unwrap_or_default(),
            weight: shared.store.capacity(),
            leaving: false,
        };
        let settings = Settings {
            endpoints: endpoints.clone(),
            cluster: name,
            me: me.clone(),
            lease_ttl: ttl as i64,
        };
        let membership = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            Membership::join(settings),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer from etcd at {} within 10 s", endpoints.join(",")))?
        .map_err(|e| {
            anyhow::anyhow!(
                "joining the cluster through etcd at {}: {e}",
                endpoints.join(",")
            )
        })?;
        Ok(Some(Cluster {
            me,
            membership,
            peers: Default::default(),
            leases: Default::default(),
            handover: Default::default(),
        }))
    }
}

/// The keys a parsed request names (as slices of its bytes where the table
/// gives their positions; from the parsed command for the KV commands
/// whose keys move).
fn keys_of<'a>(spec: &CommandSpec, cmd: &'a Command, args: &'a [&'a [u8]]) -> Vec<&'a [u8]> {
    match cmd {
        // A parent does not route a put: see [`parent_here`].
        Command::KvMPut { blocks, .. } => blocks.iter().map(|(k, _)| &k[..]).collect(),
        Command::KvReserve { blocks, .. } => blocks.iter().map(|(k, _)| &k[..]).collect(),
        Command::KvLocate { keys, .. } => keys.iter().map(|k| &k[..]).collect(),
        _ => spec
            .key_positions(args.len())
            .filter_map(|i| args.get(i).copied())
            .collect(),
    }
}

/// Where a request goes in cluster mode.
pub enum Route {
    /// Served here: no keys, or all in one slot this node owns (or, for a
    /// cluster-wide command, all in slots it owns).
    Here,
    /// Answered with this instead (`-MOVED`, `-CROSSSLOT`, `-CLUSTERDOWN`).
    Refused(Reply),
    /// A cluster-wide command over keys other nodes own: asked of them.
    FanOut(crate::fanout::Remote),
}

/// Where a request goes (see [`Route`]).
pub fn route(
    cluster: &Cluster,
    spec: &CommandSpec,
    cmd: &Command,
    args: &[&[u8]],
    in_multi: bool,
) -> Route {
    use crate::fanout::{all_here, Remote};
    // The cluster-wide commands: served here when this node owns every
    // key (any number of slots), else asked of the owners.
    let wide = match cmd {
        Command::KvMatch { opts, .. } | Command::KvMatchTokens { opts, .. } if opts.local => {
            return Route::Here
        }
        // What nodes ask each other: each answers for itself.
        Command::KvPeerExists(_)
        | Command::KvPeerTrim { .. }
        | Command::KvPeerImport { .. }
        | Command::KvPeerForget { .. } => return Route::Here,
        Command::KvMatch { keys, opts } => {
            (!all_here(cluster, keys.iter())).then(|| Remote::Match {
                keys: (0..keys.len()).filter_map(|i| keys.bytes(i)).collect(),
                opts: *opts,
            })
        }
        Command::KvMatchTokens {
            seed,
            block_tokens,
            tokens,
            opts,
        } => {
            let keys = tidepool_protocol::hash::chain_keys(seed, *block_tokens as usize, tokens);
            (!all_here(cluster, keys.iter())).then(|| Remote::Match {
                keys: keys.iter().map(|k| Bytes::copy_from_slice(k)).collect(),
                opts: *opts,
            })
        }
        Command::KvExists(keys) => {
            (!all_here(cluster, keys.iter())).then(|| Remote::Exists(keys.clone()))
        }
        _ => {
            return match refusal(cluster, spec, cmd, args) {
                Some(r) => Route::Refused(r),
                None => Route::Here,
            }
        }
    };
    match wide {
        None => Route::Here,
        Some(_) if !cluster.membership.view().registered => Route::Refused(down(
            "this node lost its registration in etcd and is joining again",
        )),
        Some(_) if in_multi => Route::Refused(crate::fanout::not_in_multi()),
        Some(work) => Route::FanOut(work),
    }
}

/// Whether a KV command over many keys is served when this node owns
/// them all, in however many slots (a client splits a chain's batch by
/// owner, not by slot); Redis's own commands keep Redis's one-slot rule.
fn any_slots_here(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::KvMPut { .. }
            | Command::KvReserve { .. }
            | Command::KvLocate { .. }
            | Command::KvMGet(_)
            | Command::KvDel(_)
            | Command::KvVerify(_)
            | Command::KvPin(_)
            | Command::KvUnpin(_)
    )
}

/// The refusal of a request this node does not serve: `None` when it
/// does (no keys, or all in one slot this node serves; or, for a KV
/// command over many keys, all in slots it serves).
fn refusal(cluster: &Cluster, spec: &CommandSpec, cmd: &Command, args: &[&[u8]]) -> Option<Reply> {
    let keys = keys_of(spec, cmd, args);
    let first = key_slot(keys.first()?);
    if keys.iter().any(|k| key_slot(k) != first)
        && !(any_slots_here(cmd) && crate::fanout::all_here(cluster, keys.iter()))
    {
        return Some(Reply::Error(CommandError::new(
            "CROSSSLOT",
            "Keys in request don't hash to the same slot",
        )));
    }
    let view = cluster.membership.view();
    if !view.registered {
        return Some(down(
            "this node lost its registration in etcd and is joining again",
        ));
    }
    match view.map.owner(first) {
        Some(owner) if owner == cluster.me.id => frozen(cluster, spec, &keys),
        Some(owner) => match view.nodes.get(owner) {
            Some(node) => Some(Reply::Error(CommandError::new(
                "MOVED",
                format!("{first} {}", node.addr),
            ))),
            None => Some(down("Hash slot not served")),
        },
        None => Some(down("Hash slot not served")),
    }
}

/// `-TRYAGAIN` for a write to a slot whose blocks are being handed over,
/// in the hand-over's last catch-up (see [`crate::handover`]).
fn frozen(cluster: &Cluster, spec: &CommandSpec, keys: &[&[u8]]) -> Option<Reply> {
    let moving = cluster.handover.moving()?;
    if !moving.frozen.load(std::sync::atomic::Ordering::Relaxed) || !spec.flags.contains(&"write") {
        return None;
    }
    let slot = keys
        .iter()
        .map(|k| key_slot(k))
        .find(|s| moving.moves(*s))?;
    Some(Reply::Error(CommandError::new(
        "TRYAGAIN",
        format!("slot {slot} is being handed over to its next owner: retry in a moment"),
    )))
}

/// A put's parent as this node keeps it: a parent in a slot another node
/// owns is taken on trust, not asked for (a round trip per put, and the
/// parent may be evicted there a moment later all the same); the block is
/// stored as a root here, so its node's eviction treats it as the head of
/// its own chain. Without cluster mode, or for a parent this node owns,
/// the parent is kept (and must be stored: `-NOPARENT`).
pub fn parent_here(shared: &Shared, parent: Option<Bytes>) -> Option<Bytes> {
    match shared.cluster.get() {
        None => parent,
        Some(cluster) => parent.filter(|p| crate::fanout::all_here(cluster, std::iter::once(p))),
    }
}

fn down(why: &str) -> Reply {
    Reply::Error(CommandError::new("CLUSTERDOWN", why.to_string()))
}

/// `host:port` split for CLUSTER SLOTS and SHARDS.
fn host_port(addr: &str) -> (&str, i64) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or(0)),
        None => (addr, 0),
    }
}

/// The CLUSTER commands (and errors for them without cluster mode).
pub fn command(shared: &Shared, sub: &tidepool_protocol::command::ClusterSub) -> Reply {
    use tidepool_protocol::command::ClusterSub as S;
    if let S::KeySlot(k) = sub {
        return Reply::Int(key_slot(k) as i64);
    }
    let Some(cluster) = shared.cluster.get() else {
        return Reply::Error(CommandError::err(
            "This instance has cluster support disabled",
        ));
    };
    let view = cluster.membership.view();
    match sub {
        S::KeySlot(_) => unreachable!("answered above"),
        S::MyId => Reply::Bulk(cluster.me.id.clone().into()),
        S::Info => Reply::Verbatim(info(cluster, &view)),
        S::Nodes => Reply::Verbatim(nodes(cluster, &view)),
        S::Slots => Reply::Array(
            view.map
                .ranges()
                .into_iter()
                .map(|(first, last, owner)| {
                    let addr = view.nodes.get(owner).map_or("", |n| n.addr.as_str());
                    let (host, port) = host_port(addr);
                    Reply::Array(vec![
                        Reply::Int(first as i64),
                        Reply::Int(last as i64),
                        Reply::Array(vec![
                            Reply::Bulk(host.to_string().into()),
                            Reply::Int(port),
                            Reply::Bulk(owner.to_string().into()),
                        ]),
                    ])
                })
                .collect(),
        ),
        S::Shards => {
            let ranges = view.map.ranges();
            Reply::Array(
                view.nodes
                    .values()
                    .map(|n| {
                        let slots: Vec<Reply> = ranges
                            .iter()
                            .filter(|r| r.2 == n.id)
                            .flat_map(|r| [Reply::Int(r.0 as i64), Reply::Int(r.1 as i64)])
                            .collect();
                        let (host, port) = host_port(&n.addr);
                        Reply::map([
                            ("slots", Reply::Array(slots)),
                            (
                                "nodes",
                                Reply::Array(vec![Reply::map([
                                    ("id", Reply::Bulk(n.id.clone().into())),
                                    ("port", Reply::Int(port)),
                                    ("ip", Reply::Bulk(host.to_string().into())),
                                    ("endpoint", Reply::Bulk(host.to_string().into())),
                                    ("role", Reply::Bulk("master".into())),
                                    ("replication-offset", Reply::Int(0)),
                                    ("health", Reply::Bulk("online".into())),
                                ])]),
                            ),
                        ])
                    })
                    .collect(),
            )
        }
        // A scan of the keys: these are maintenance commands.
        S::CountKeysInSlot(slot) => {
            let in_slot = |k: &[u8]| key_slot(k) == *slot;
            Reply::Int(shared.store.scan(0, usize::MAX, &in_slot).1.len() as i64)
        }
        S::GetKeysInSlot(slot, count) => {
            let in_slot = |k: &[u8]| key_slot(k) == *slot;
            let (_, keys) = shared.store.scan(0, usize::MAX, &in_slot);
            Reply::Array(keys.into_iter().take(*count).map(Reply::Bulk).collect())
        }
    }
}

fn info(cluster: &Cluster, view: &View) -> String {
    let assigned: usize = view.map.counts().values().sum();
    let ok = view.registered && assigned == tidepool_cluster::SLOTS;
    format!(
        "cluster_state:{}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{assigned}\r\n\
         cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{}\r\n\
         cluster_size:{}\r\ncluster_current_epoch:{}\r\ncluster_my_epoch:{}\r\n",
        if ok { "ok" } else { "fail" },
        view.nodes.len(),
        view.map.counts().len(),
        view.map.epoch,
        view.map.epoch,
    ) + &format!("cluster_myself:{}\r\n", cluster.me.id)
}

fn nodes(cluster: &Cluster, view: &View) -> String {
    let ranges = view.map.ranges();
    let mut out = String::new();
    for n in view.nodes.values() {
        let (host, port) = host_port(&n.addr);
        let flags = if n.id == cluster.me.id {
            "myself,master"
        } else {
            "master"
        };
        let slots: Vec<String> = ranges
            .iter()
            .filter(|r| r.2 == n.id)
            .map(|r| {
                if r.0 == r.1 {
                    r.0.to_string()
                } else {
                    format!("{}-{}", r.0, r.1)
                }
            })
            .collect();
        out.push_str(&format!(
            "{} {host}:{port}@{} {flags} - 0 0 {} connected {}\n",
            n.id,
            port + 10000,
            view.map.epoch,
            slots.join(" ")
        ));
    }
    out
}
