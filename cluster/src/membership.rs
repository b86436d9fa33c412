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
    /// It is leaving on purpose: the next map gives it no slot, and its
    /// blocks go to their new owners before that map takes effect.
    pub leaving: bool,
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
    /// The next map, while the nodes that give slots away hand their
    /// blocks over to the new owners (see [`Membership::handed_over`]).
    pub pending: Option<SlotMap>,
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
    prefix: String,
    nodes: String,
    map: String,
    pending: String,
    done: String,
    leader: String,
}

impl Keys {
    fn new(cluster: &str) -> Keys {
        let prefix = format!("/tidepool/{cluster}/");
        Keys {
            nodes: format!("{prefix}nodes/"),
            map: format!("{prefix}map"),
            pending: format!("{prefix}pending"),
            done: format!("{prefix}done/"),
            leader: format!("{prefix}leader"),
            prefix,
        }
    }

    /// Where donors mark a hand-over to the map of `epoch` done.
    fn done_at(&self, epoch: u64) -> String {
        format!("{}{epoch}/", self.done)
    }
}

/// How long the leader waits for the nodes that give slots away to hand
/// their blocks over before it makes the next map take effect anyway (the
/// blocks not handed over are then lost: it is a cache).
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// This node's membership: registration, election and the watched view.
/// Dropping it stops its tasks; [`Membership::leave`] also takes the
/// registration away at once.
pub struct Membership {
    client: Client,
    keys: Arc<Keys>,
    me: NodeInfo,
    leaving: Arc<AtomicBool>,
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
        let leaving = Arc::new(AtomicBool::new(false));
        register(&mut client, &keys, &s.me, false, lease).await?;
        let lease = Arc::new(AtomicI64::new(lease));
        let registered = Arc::new(AtomicBool::new(true));
        let (stop, stopped) = watch::channel(false);
        let (publish, view) = watch::channel(Arc::new(View {
            map: SlotMap::empty(),
            nodes: BTreeMap::new(),
            registered: true,
            pending: None,
        }));
        let tasks = vec![
            tokio::spawn(keep_alive(
                client.clone(),
                keys.clone(),
                s.clone(),
                leaving.clone(),
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
            tokio::spawn(follow(
                client.clone(),
                keys.clone(),
                registered,
                publish,
                stopped,
            )),
        ];
        Ok(Membership {
            client,
            keys: keys.clone(),
            me: s.me.clone(),
            leaving,
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

    /// Marks this node as leaving: the leader makes a map without it, and
    /// it hands its blocks over (as every node that gives slots away does)
    /// before that map takes effect. Then call [`Membership::leave`].
    pub async fn set_leaving(&self) -> Result<(), Error> {
        self.leaving.store(true, Relaxed);
        register(
            &mut self.client.clone(),
            &self.keys,
            &self.me,
            true,
            self.lease.load(Relaxed),
        )
        .await
    }

    /// Tells the leader this node has handed over the blocks of the slots
    /// it gives away in the pending map of `epoch`.
    pub async fn handed_over(&self, epoch: u64) -> Result<(), Error> {
        self.client
            .clone()
            .put(
                format!("{}{}", self.keys.done_at(epoch), self.me.id),
                "",
                Some(PutOptions::new().with_lease(self.lease.load(Relaxed))),
            )
            .await
            .map(|_| ())
    }

    /// Gives the registration up at once (the leader then gives this
    /// node's slots, if it still has any, to the others); the membership's
    /// tasks stop registering again.
    pub async fn revoke(&self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.client
            .clone()
            .lease_revoke(self.lease.load(Relaxed))
            .await
            .map(|_| ())
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
    leaving: bool,
    lease: i64,
) -> Result<(), Error> {
    let flag = if leaving { " leaving" } else { "" };
    client
        .put(
            format!("{}{}", keys.nodes, me.id),
            format!("{} {}{flag}", me.addr, me.weight),
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
    leaving: Arc<AtomicBool>,
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
                let flag = leaving.load(Relaxed);
                if register(&mut client, &keys, &s.me, flag, g.id())
                    .await
                    .is_ok()
                {
                    lease.store(g.id(), Relaxed);
                    registered.set(true);
                    break;
                }
            }
        }
    }
}

/// The cluster's keys in etcd, read at one revision.
struct State {
    /// The map (empty when there is none) and its mod revision (0: none).
    map: SlotMap,
    map_rev: i64,
    /// The pending map, if any.
    pending: Option<SlotMap>,
    /// The registered nodes.
    nodes: BTreeMap<String, NodeInfo>,
    /// The revision read at.
    revision: i64,
}

/// Reads every key of the cluster in one request, so that the map, the
/// pending map and the nodes are of one moment (a map committed between
/// two reads would otherwise show the old map without its pending one).
async fn read_state(client: &mut Client, keys: &Keys) -> Result<State, Error> {
    let got = client
        .get(keys.prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut state = State {
        map: SlotMap::empty(),
        map_rev: 0,
        pending: None,
        nodes: BTreeMap::new(),
        revision: got.header().map_or(0, |h| h.revision()),
    };
    for kv in got.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        if key == keys.map {
            state.map = decode_map(kv.value());
            state.map_rev = kv.mod_revision();
        } else if key == keys.pending {
            state.pending = Some(decode_map(kv.value())).filter(|m| m.epoch > 0);
        } else if let Some(id) = key.strip_prefix(keys.nodes.as_str()) {
            if let Some(node) = parse_node(id, kv.value_str().unwrap_or("")) {
                state.nodes.insert(id.to_string(), node);
            }
        }
    }
    Ok(state)
}

/// A node's registration (`<host:port> <weight>[ leaving]`).
fn parse_node(id: &str, value: &str) -> Option<NodeInfo> {
    let mut fields = value.split(' ');
    let addr = fields.next()?.to_string();
    let weight = fields.next()?.trim().parse().ok()?;
    let leaving = fields.next() == Some("leaving");
    Some(NodeInfo {
        id: id.to_string(),
        addr,
        weight,
        leaving,
    })
}

/// Campaigns under the current lease; as leader, moves the map on whenever
/// the registered nodes call for another assignment ([`lead_pass`]).
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
        let mut waiting = None;
        while lease.load(Relaxed) == mine {
            let _ = lead_pass(&mut client, &keys, &leader_key, &mut waiting).await;
            if stopped_within(&mut stop, Duration::from_millis(300)).await {
                return;
            }
        }
    }
}

/// One pass of the leader. When the registered nodes (less those leaving)
/// call for another assignment, the new map is written as the pending map
/// first if any live node gives slots away; once every such node has
/// handed its blocks over ([`Membership::handed_over`]), or after
/// [`HANDOVER_TIMEOUT`], it becomes the map. Slots of nodes gone (their
/// lease expired) have nothing to hand over: a map that only moves those
/// takes effect at once. Every write holds only while this node still
/// leads and nobody wrote the map since it was read. `waiting` keeps the
/// pending map's epoch and when this leader first saw it.
async fn lead_pass(
    client: &mut Client,
    keys: &Keys,
    leader_key: &[u8],
    waiting: &mut Option<(u64, std::time::Instant)>,
) -> Result<(), Error> {
    let State {
        map,
        map_rev: rev,
        pending,
        nodes,
        ..
    } = read_state(client, keys).await?;
    let members: Vec<Member> = nodes
        .values()
        .filter(|n| !n.leaving)
        .map(|n| Member {
            id: n.id.clone(),
            weight: n.weight,
        })
        .collect();
    let desired = map.reassign(&members);
    let guard = || {
        [
            Compare::version(leader_key.to_vec(), CompareOp::Greater, 0),
            Compare::mod_revision(keys.map.as_str(), CompareOp::Equal, rev),
        ]
    };
    let commit = |next: &SlotMap| {
        Txn::new().when(guard()).and_then([
            TxnOp::put(keys.map.as_str(), encode_map(next), None),
            TxnOp::delete(keys.pending.as_str(), None),
            TxnOp::delete(
                keys.done.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        ])
    };
    if desired.same_owners(&map) {
        if pending.is_some() {
            client.txn(commit(&map)).await?;
        }
        *waiting = None;
        return Ok(());
    }
    // Live nodes that give slots away.
    let mut donors = std::collections::BTreeSet::new();
    for slot in 0..crate::SLOTS as u16 {
        if let Some(owner) = map.owner(slot) {
            if desired.owner(slot) != Some(owner) && nodes.contains_key(owner) {
                donors.insert(owner.to_string());
            }
        }
    }
    let current = pending.as_ref().filter(|p| p.same_owners(&desired));
    let Some(p) = current else {
        if donors.is_empty() {
            client.txn(commit(&desired)).await?;
            *waiting = None;
            return Ok(());
        }
        let mut next = desired;
        next.epoch = map.epoch.max(pending.map_or(0, |p| p.epoch)) + 1;
        let txn = Txn::new().when(guard()).and_then([TxnOp::put(
            keys.pending.as_str(),
            encode_map(&next),
            None,
        )]);
        client.txn(txn).await?;
        *waiting = Some((next.epoch, std::time::Instant::now()));
        return Ok(());
    };
    let since = match waiting {
        Some((epoch, t)) if *epoch == p.epoch => *t,
        _ => {
            // Led from here on: this leader's wait starts now.
            *waiting = Some((p.epoch, std::time::Instant::now()));
            return Ok(());
        }
    };
    let done = client
        .get(
            keys.done_at(p.epoch),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let done: std::collections::BTreeSet<String> = done
        .kvs()
        .iter()
        .filter_map(|kv| Some(kv.key_str().ok()?.rsplit('/').next()?.to_string()))
        .collect();
    if donors.is_subset(&done) || since.elapsed() >= HANDOVER_TIMEOUT {
        client.txn(commit(p)).await?;
        *waiting = None;
    }
    Ok(())
}

/// Publishes the map, the pending map and the registered nodes (as etcd's
/// watch reports a change under the cluster's keys, and at least once a
/// second).
async fn follow(
    mut client: Client,
    keys: Arc<Keys>,
    registered: Arc<AtomicBool>,
    publish: watch::Sender<Arc<View>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let state = read_state(&mut client, &keys).await;
        let rev = state.as_ref().ok().map(|s| s.revision);
        if let Ok(State {
            map,
            pending,
            nodes,
            ..
        }) = state
        {
            let newer = map.epoch >= publish.borrow().map.epoch;
            let map = if newer {
                map
            } else {
                publish.borrow().map.clone()
            };
            let view = View {
                pending: pending.filter(|p| p.epoch > map.epoch),
                map,
                nodes,
                registered: registered.load(Relaxed),
            };
            publish.send_replace(Arc::new(view));
        }
        let watched = match rev {
            Some(rev) => {
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1);
                client.watch(keys.prefix.as_str(), Some(options)).await.ok()
            }
            None => None,
        };
        tokio::select! {
            _ = async {
                match watched {
                    // Until a change: the stream's first message only says
                    // the watch was created.
                    Some(mut stream) => loop {
                        match stream.message().await {
                            Ok(Some(r)) if r.events().is_empty() && !r.canceled() => continue,
                            _ => break,
                        }
                    },
                    // etcd out of reach: try again in a while.
                    None => tokio::time::sleep(Duration::from_millis(500)).await,
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
