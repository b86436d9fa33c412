//! Membership on etcd: each node registers under a lease it keeps alive,
//! one node (elected through etcd's election API) writes the slot map with
//! its epoch whenever the members change, and every node watches the map.
//!
//! Keys, under `/tidepool/<cluster>/`: `nodes/<id>` holds a node's address
//! and weight (`<host:port> <weight>`), attached to its lease, so that a
//! node that stops renewing it disappears after the lease's TTL; `map`
//! holds the slot map (`epoch <n>` then one `<first> <last> <owner>` line
//! per range); `leader` is the election.
//!
//! The leader recomputes the map from the registered nodes
//! ([`SlotMap::reassign`]: as few slots moved as the new shares allow) and
//! writes it in a transaction that holds only while it is still the leader
//! and nobody wrote the map since it read it. A node whose lease etcd
//! expired (cut off from a running etcd past the TTL) says so in its view
//! ([`View::registered`] false) and registers again with a new lease; a
//! node that cannot reach etcd at all keeps its registration and its last
//! map until etcd answers again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::slots::{Member, SlotMap};

/// A node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its id (40 hex characters, as Redis Cluster's node ids).
    pub id: String,
    /// Where clients reach it (`host:port`).
    pub addr: String,
    /// Its share of the slots (its DRAM capacity in bytes).
    pub weight: u64,
}

/// What a node knows of the cluster.
#[derive(Debug, Clone)]
pub struct View {
    /// The newest slot map seen.
    pub map: SlotMap,
    /// The registered nodes, by id.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Whether this node holds a live registration (false while it has
    /// lost its lease and not registered again).
    pub registered: bool,
}

/// Settings of [`Membership::join`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// etcd endpoints (`host:port`).
    pub endpoints: Vec<String>,
    /// The cluster's name: its keys' prefix.
    pub cluster: String,
    /// This node.
    pub me: NodeInfo,
    /// Seconds the registration outlives the last renewal.
    pub lease_ttl: i64,
}

/// Errors talking to etcd.
pub type Error = etcd_client::Error;

struct Keys {
    nodes: String,
    map: String,
    leader: String,
}

impl Keys {
    fn new(cluster: &str) -> Keys {
        let prefix = format!("/tidepool/{cluster}/");
        Keys {
            nodes: format!("{prefix}nodes/"),
            map: format!("{prefix}map"),
            leader: format!("{prefix}leader"),
        }
    }
}

/// This node's membership: registration, election and the watched view.
/// Dropping it stops its tasks; [`Membership::leave`] also takes the
/// registration away at once.
pub struct Membership {
    client: Client,
    lease: Arc<AtomicI64>,
    view: watch::Receiver<Arc<View>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Membership {
    /// Registers this node and starts keeping its lease, campaigning to
    /// lead, and watching the map.
    pub async fn join(s: Settings) -> Result<Membership, Error> {
        let mut client = Client::connect(&s.endpoints, None).await?;
        let keys = Arc::new(Keys::new(&s.cluster));
        let lease = client.lease_grant(s.lease_ttl, None).await?.id();
        register(&mut client, &keys, &s.me, lease).await?;
        let lease = Arc::new(AtomicI64::new(lease));
        let registered = Arc::new(AtomicBool::new(true));
        let (stop, stopped) = watch::channel(false);
        let (publish, view) = watch::channel(Arc::new(View {
            map: SlotMap::empty(),
            nodes: BTreeMap::new(),
            registered: true,
        }));
        let tasks = vec![
            tokio::spawn(keep_alive(
                client.clone(),
                keys.clone(),
                s.clone(),
                lease.clone(),
                Registration {
                    flag: registered.clone(),
                    publish: publish.clone(),
                },
                stopped.clone(),
            )),
            tokio::spawn(lead(
                client.clone(),
                keys.clone(),
                s.me.id.clone(),
                lease.clone(),
                stopped.clone(),
            )),
            tokio::spawn(follow(client.clone(), keys, registered, publish, stopped)),
        ];
        Ok(Membership {
            client,
            lease,
            view,
            stop,
            tasks,
        })
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// A receiver that sees each new view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// Leaves the cluster: the registration goes at once (the leader then
    /// gives this node's slots to the others).
    pub async fn leave(mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        self.client
            .lease_revoke(self.lease.load(Relaxed))
            .await
            .map(|_| ())
    }
}

async fn register(
    client: &mut Client,
    keys: &Keys,
    me: &NodeInfo,
    lease: i64,
) -> Result<(), Error> {
    client
        .put(
            format!("{}{}", keys.nodes, me.id),
            format!("{} {}", me.addr, me.weight),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map(|_| ())
}

/// Sleeps `d`, or returns true at once when told to stop.
async fn stopped_within(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Whether this node holds a live registration, told to the view's
/// watchers at once when it changes.
struct Registration {
    flag: Arc<AtomicBool>,
    publish: watch::Sender<Arc<View>>,
}

impl Registration {
    fn set(&self, on: bool) {
        self.flag.store(on, Relaxed);
        self.publish.send_modify(|v| {
            let mut next = View::clone(v);
            next.registered = on;
            *v = Arc::new(next);
        });
    }
}

/// Renews the lease every third of its TTL. When etcd says the lease is
/// gone (it expired: this node was cut off from etcd for longer than the
/// TTL while etcd ran), the node stops serving and registers again under a
/// new lease. When etcd cannot be reached at all, the node keeps its
/// registration and its last map and keeps trying: a stopped etcd keeps
/// its leases and restarts them with a full TTL, so nothing has changed
/// when it comes back.
async fn keep_alive(
    mut client: Client,
    keys: Arc<Keys>,
    s: Settings,
    lease: Arc<AtomicI64>,
    registered: Registration,
    mut stop: watch::Receiver<bool>,
) {
    let period = Duration::from_millis((s.lease_ttl.max(1) as u64 * 1000) / 3);
    loop {
        let mut expired = false;
        if let Ok((mut keeper, mut responses)) = client.lease_keep_alive(lease.load(Relaxed)).await
        {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match responses.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => {
                        expired = true; // TTL 0: etcd expired the lease
                        break;
                    }
                    _ => break, // the stream ended: etcd is out of reach
                }
                if stopped_within(&mut stop, period).await {
                    return;
                }
            }
        }
        if !expired {
            if stopped_within(&mut stop, Duration::from_millis(200)).await {
                return;
            }
            continue;
        }
        registered.set(false);
        // Register again, as soon as etcd takes it.
        loop {
            if stopped_within(&mut stop, Duration::from_millis(200)).await {
                return;
            }
            let granted = client.lease_grant(s.lease_ttl, None).await;
            if let Ok(g) = granted {
                if register(&mut client, &keys, &s.me, g.id()).await.is_ok() {
                    lease.store(g.id(), Relaxed);
                    registered.set(true);
                    break;
                }
            }
        }
    }
}

/// Reads the map and its revision (an empty map at revision 0 when there
/// is none).
async fn read_map(client: &mut Client, keys: &Keys) -> Result<(SlotMap, i64), Error> {
    let got = client.get(keys.map.as_str(), None).await?;
    Ok(match got.kvs().first() {
        Some(kv) => (decode_map(kv.value()), kv.mod_revision()),
        None => (SlotMap::empty(), 0),
    })
}

/// The registered nodes.
async fn read_nodes(client: &mut Client, keys: &Keys) -> Result<BTreeMap<String, NodeInfo>, Error> {
    let got = client
        .get(keys.nodes.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(got
        .kvs()
        .iter()
        .filter_map(|kv| {
            let id = kv
                .key_str()
                .ok()?
                .strip_prefix(keys.nodes.as_str())?
                .to_string();
            let (addr, weight) = kv.value_str().ok()?.split_once(' ')?;
            Some((
                id.clone(),
                NodeInfo {
                    id,
                    addr: addr.to_string(),
                    weight: weight.trim().parse().ok()?,
                },
            ))
        })
        .collect())
}

/// Campaigns under the current lease; as leader, rewrites the map whenever
/// the registered nodes call for another assignment.
async fn lead(
    mut client: Client,
    keys: Arc<Keys>,
    id: String,
    lease: Arc<AtomicI64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mine = lease.load(Relaxed);
        let won = tokio::select! {
            won = client.campaign(keys.leader.as_str(), id.as_str(), mine) => won,
            _ = stop.changed() => return,
        };
        let Ok(won) = won else {
            if stopped_within(&mut stop, Duration::from_millis(500)).await {
                return;
            }
            continue;
        };
        let Some(leader_key) = won.leader().map(|l| l.key().to_vec()) else {
            continue;
        };
        // Leading while the lease we won with is ours.
        while lease.load(Relaxed) == mine {
            if let (Ok(nodes), Ok((map, rev))) = (
                read_nodes(&mut client, &keys).await,
                read_map(&mut client, &keys).await,
            ) {
                let members: Vec<Member> = nodes
                    .values()
                    .map(|n| Member {
                        id: n.id.clone(),
                        weight: n.weight,
                    })
                    .collect();
                let next = map.reassign(&members);
                if !next.same_owners(&map) {
                    // Only while still the leader, and over the map read.
                    let txn = Txn::new()
                        .when([
                            Compare::version(leader_key.clone(), CompareOp::Greater, 0),
                            Compare::mod_revision(keys.map.as_str(), CompareOp::Equal, rev),
                        ])
                        .and_then([TxnOp::put(keys.map.as_str(), encode_map(&next), None)]);
                    let _ = client.txn(txn).await;
                }
            }
            if stopped_within(&mut stop, Duration::from_millis(300)).await {
                return;
            }
        }
    }
}

/// Publishes the map (as etcd's watch reports it changed, and at least
/// once a second) with the registered nodes.
async fn follow(
    mut client: Client,
    keys: Arc<Keys>,
    registered: Arc<AtomicBool>,
    publish: watch::Sender<Arc<View>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut rev = 0;
        if let (Ok((map, r)), Ok(nodes)) = (
            read_map(&mut client, &keys).await,
            read_nodes(&mut client, &keys).await,
        ) {
            rev = r;
            let newer = map.epoch >= publish.borrow().map.epoch;
            let view = View {
                map: if newer {
                    map
                } else {
                    publish.borrow().map.clone()
                },
                nodes,
                registered: registered.load(Relaxed),
            };
            publish.send_replace(Arc::new(view));
        }
        let options = WatchOptions::new().with_start_revision(rev + 1);
        let watched = client.watch(keys.map.as_str(), Some(options)).await;
        tokio::select! {
            _ = async {
                if let Ok(mut stream) = watched {
                    let _ = stream.message().await;
                }
            } => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The map as stored in etcd.
pub fn encode_map(m: &SlotMap) -> String {
    let mut s = format!("epoch {}\n", m.epoch);
    for (first, last, owner) in m.ranges() {
        s.push_str(&format!("{first} {last} {owner}\n"));
    }
    s
}

/// Reads a map as [`encode_map`] writes it (an empty map for anything
/// else).
pub fn decode_map(b: &[u8]) -> SlotMap {
    let text = String::from_utf8_lossy(b);
    let mut lines = text.lines();
    let Some(epoch) = lines
        .next()
        .and_then(|l| l.strip_prefix("epoch "))
        .and_then(|e| e.trim().parse().ok())
    else {
        return SlotMap::empty();
    };
    let ranges: Vec<(u16, u16, String)> = lines
        .filter_map(|l| {
            let mut w = l.split(' ');
            Some((
                w.next()?.parse().ok()?,
                w.next()?.parse().ok()?,
                w.next()?.to_string(),
            ))
        })
        .collect();
    SlotMap::from_ranges(epoch, &ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_through_their_text() {
        let m = SlotMap::empty().reassign(&[
            Member {
                id: "a".into(),
                weight: 2,
            },
            Member {
                id: "b".into(),
                weight: 1,
            },
        ]);
        let back = decode_map(encode_map(&m).as_bytes());
        assert_eq!(back, m);
        assert_eq!(decode_map(b"garbage"), SlotMap::empty());
    }
}
