//! Warm hand-over: a node that gives slots away (it leaves on purpose, or a
//! new node takes a share) sends those slots' blocks to their new owners
//! before the new map takes effect, so scaling out or rolling a node does
//! not empty the cache.
//!
//! The leader writes the next map as the pending map ([`View::pending`])
//! and waits. Each node that gives slots away in it:
//!
//! 1. starts recording the keys stored and deleted from then on
//!    ([`crate::pubsub::Recorder`]), and sends every block of those slots
//!    to its new owner (`KV.PEER IMPORT`, parents before children, over
//!    the connections nodes keep to each other), while it goes on serving
//!    them: until the map changes it owns them;
//! 2. sends what was stored or deleted meanwhile (`KV.PEER FORGET` for a
//!    deletion), again while that keeps shrinking;
//! 3. then answers writes to those slots with `-TRYAGAIN` (reads are still
//!    served: it holds every block), sends the last changes, and tells the
//!    leader it is done ([`Membership::handed_over`]). The leader makes the
//!    pending map the map once every such node is done; from then on the
//!    old owner answers `-MOVED` and the new owner has the blocks.
//!
//! Where Redis migrates key by key with `-ASK` redirects (reads and writes
//! of a key already moved go to the new owner), here the old owner serves
//! every read until the switch, and only writes pause, for the last
//! catch-up and the leader's next pass (a few hundred milliseconds): a
//! client that retries `-TRYAGAIN` (tidepool-client does) sees no error. A
//! block whose parent moves to another node arrives there as a root (the
//! parent taken on trust, as for any put).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::RwLock;
use tidepool_cluster::{key_slot, SlotMap, View, SLOTS};
use tracing::{info, warn};

use tidepool_protocol::{CommandError, Reply};

use crate::cluster::Cluster;
use crate::state::Shared;

/// Blocks (or bytes) sent to a new owner in one pipeline.
const BATCH_BLOCKS: usize = 256;
const BATCH_BYTES: usize = 8 << 20;

/// Catch-up passes before writes pause, while each still finds this many
/// changes or more.
const CATCH_UPS: usize = 4;
const SMALL_ENOUGH: usize = 64;

/// A hand-over under way on the node giving slots away.
pub struct Moving {
    /// The pending map's epoch.
    pub epoch: u64,
    /// Each slot's new owner (`host:port`) while it moves away from here.
    to: Vec<Option<Arc<str>>>,
    /// Writes to the moving slots answer `-TRYAGAIN` (the last catch-up).
    pub frozen: AtomicBool,
}

impl Moving {
    /// Whether `slot` is moving away from this node.
    pub fn moves(&self, slot: u16) -> bool {
        self.to.get(slot as usize).is_some_and(Option::is_some)
    }
}

/// The hand-over state of this node.
#[derive(Default)]
pub struct Handover {
    moving: RwLock<Option<Arc<Moving>>>,
    /// Whether `moving` holds one: every routed request asks, and almost
    /// always there is none.
    active: AtomicBool,
}

impl Handover {
    /// The hand-over under way, if any.
    pub fn moving(&self) -> Option<Arc<Moving>> {
        if !self.active.load(Relaxed) {
            return None;
        }
        self.moving.read().clone()
    }

    fn set(&self, moving: Option<Arc<Moving>>) {
        let mut slot = self.moving.write();
        self.active.store(moving.is_some(), Relaxed);
        *slot = moving;
    }
}

/// Whether `slot` is coming to this node in the pending map (its blocks
/// may be handed over to it).
pub fn importing(cluster: &Cluster, view: &View, slot: u16) -> bool {
    view.pending
        .as_ref()
        .is_some_and(|p| p.owner(slot) == Some(cluster.me.id.as_str()))
        && view.map.owner(slot) != Some(cluster.me.id.as_str())
}

/// Follows the pending maps and hands over the slots this node gives away
/// in each; lifts the pause once the map has moved on. Runs until the
/// membership ends.
pub async fn follow(shared: Arc<Shared>) {
    let Some(cluster) = shared.cluster.get() else {
        return;
    };
    let mut views = cluster.membership.subscribe();
    let mut handled = 0;
    loop {
        let view = views.borrow_and_update().clone();
        // A hand-over ends when the map moved past it or its pending map
        // was replaced.
        if let Some(m) = cluster.handover.moving() {
            let current = view.pending.as_ref().is_some_and(|p| p.epoch == m.epoch);
            if view.map.epoch >= m.epoch || !current {
                cluster.handover.set(None);
                shared.pubsub.recorder.stop();
            }
        }
        if let Some(p) = view.pending.as_ref().filter(|p| p.epoch > handled) {
            handled = p.epoch;
            let me = cluster.me.id.as_str();
            let gives =
                (0..SLOTS as u16).any(|s| view.map.owner(s) == Some(me) && p.owner(s) != Some(me));
            if gives {
                hand_over(&shared, cluster, &view, p).await;
                continue; // the view may have moved on meanwhile
            }
        }
        if views.changed().await.is_err() {
            return;
        }
    }
}

/// Hands over the slots this node gives away in `pending`.
async fn hand_over(shared: &Shared, cluster: &Cluster, view: &View, pending: &SlotMap) {
    let me = cluster.me.id.as_str();
    let mut to: Vec<Option<Arc<str>>> = vec![None; SLOTS];
    let mut addrs: HashMap<&str, Arc<str>> = HashMap::new();
    let mut count = 0;
    for slot in 0..SLOTS as u16 {
        let (Some(now), Some(next)) = (view.map.owner(slot), pending.owner(slot)) else {
            continue;
        };
        if now != me || next == me {
            continue;
        }
        let Some(node) = view.nodes.get(next) else {
            continue;
        };
        let addr = addrs
            .entry(next)
            .or_insert_with(|| Arc::from(node.addr.as_str()))
            .clone();
        to[slot as usize] = Some(addr);
        count += 1;
    }
    if count == 0 {
        // Slots given to nobody (the last node leaving): nothing to send.
        if let Err(e) = cluster.membership.handed_over(pending.epoch).await {
            warn!(error = %e, "could not tell etcd the hand-over is done");
        }
        return;
    }
    let moving = Arc::new(Moving {
        epoch: pending.epoch,
        to,
        frozen: AtomicBool::new(false),
    });
    shared.pubsub.recorder.start();
    cluster.handover.set(Some(moving.clone()));
    let t = std::time::Instant::now();
    let in_moving = |k: &[u8]| moving.moves(key_slot(k));
    let (_, keys) = shared.store.scan(0, usize::MAX, &in_moving);
    let mut sent = send(
        shared,
        cluster,
        &moving,
        keys.into_iter().map(|k| (k, true)).collect(),
    )
    .await;
    for _ in 0..CATCH_UPS {
        let changed = shared.pubsub.recorder.take();
        let small = changed.len() < SMALL_ENOUGH;
        sent += send(shared, cluster, &moving, changed.into_iter().collect()).await;
        if small {
            break;
        }
    }
    // The last catch-up: writes to these slots pause; those already past
    // the check land within a moment.
    moving.frozen.store(true, Relaxed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let changed = shared.pubsub.recorder.take();
    sent += send(shared, cluster, &moving, changed.into_iter().collect()).await;
    info!(
        slots = count,
        blocks = sent,
        ms = t.elapsed().as_millis() as u64,
        epoch = pending.epoch,
        "handed slots over"
    );
    if let Err(e) = cluster.membership.handed_over(pending.epoch).await {
        warn!(error = %e, "could not tell etcd the hand-over is done (the leader's timeout ends it)");
    }
}

/// Sends blocks (`true`: stored, as it is now) and deletions (`false`) of
/// moving slots to their new owners, parents before children, each owner's
/// share in pipelines, the owners at once. Returns how many went.
async fn send(
    shared: &Shared,
    cluster: &Cluster,
    moving: &Moving,
    keys: Vec<(Bytes, bool)>,
) -> usize {
    let mut per_owner: HashMap<Arc<str>, Vec<Vec<Bytes>>> = HashMap::new();
    let mut forget: HashMap<Arc<str>, Vec<Bytes>> = HashMap::new();
    let mut stored: Vec<Bytes> = Vec::new();
    for (k, is_stored) in keys {
        let Some(Some(addr)) = moving.to.get(key_slot(&k) as usize) else {
            continue;
        };
        if is_stored {
            stored.push(k);
        } else {
            forget.entry(addr.clone()).or_default().push(k);
        }
    }
    let mut count = 0;
    let epoch = crate::fanout::num(moving.epoch);
    for k in parents_first(shared, stored) {
        let addr = moving.to[key_slot(&k) as usize]
            .clone()
            .expect("a moving slot");
        // Read now: the latest version (gone since: nothing to send).
        let (Some(value), Some(meta)) = (shared.store.get(&k), shared.store.meta(&k)) else {
            continue;
        };
        let mut cmd = vec![
            Bytes::from_static(b"KV.PEER"),
            Bytes::from_static(b"IMPORT"),
            epoch.clone(),
            k,
            value,
        ];
        if let Some(p) = meta.parent {
            cmd.extend([Bytes::from_static(b"PARENT"), p]);
        }
        if let Some(at) = meta.expires_at {
            let now = crate::fanout::now_ms();
            if at <= now {
                continue;
            }
            cmd.extend([Bytes::from_static(b"TTL"), crate::fanout::num(at - now)]);
        }
        if meta.pinned {
            cmd.push(Bytes::from_static(b"PIN"));
        }
        per_owner.entry(addr).or_default().push(cmd);
        count += 1;
    }
    for (addr, keys) in forget {
        count += keys.len();
        let mut cmd = vec![
            Bytes::from_static(b"KV.PEER"),
            Bytes::from_static(b"FORGET"),
            epoch.clone(),
        ];
        cmd.extend(keys);
        per_owner.entry(addr).or_default().push(cmd);
    }
    let sends = per_owner.into_iter().map(|(addr, cmds)| async move {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for cmd in cmds {
            bytes += cmd.iter().map(Bytes::len).sum::<usize>();
            batch.push(cmd);
            if batch.len() >= BATCH_BLOCKS || bytes >= BATCH_BYTES {
                pipeline(cluster, &addr, std::mem::take(&mut batch)).await;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            pipeline(cluster, &addr, batch).await;
        }
    });
    join_all(sends).await;
    count
}

/// One pipeline of hand-over commands to `addr`. Commands answered
/// `-TRYAGAIN` (the new owner has not seen the pending map yet) go again
/// after a pause, for up to 10 s; other failures are logged (those blocks
/// are then missing there: a cache miss, not an error).
async fn pipeline(cluster: &Cluster, addr: &str, mut cmds: Vec<Vec<Bytes>>) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cmds.is_empty() {
        let n = cmds.len();
        let replies = match cluster.peers.pipeline(addr, cmds.clone()).await {
            Ok(r) => r,
            Err(e) => {
                warn!(peer = %addr, error = %e, blocks = n, "handing blocks over failed");
                return;
            }
        };
        let mut again = Vec::new();
        let mut refused = 0;
        for (cmd, reply) in cmds.into_iter().zip(replies) {
            match reply {
                Err(e) if e.starts_with("TRYAGAIN") => again.push(cmd),
                Err(_) => refused += 1,
                Ok(_) => {}
            }
        }
        if refused > 0 {
            warn!(peer = %addr, refused, of = n, "a new owner refused handed-over blocks");
        }
        if !again.is_empty() {
            if tokio::time::Instant::now() >= give_up {
                warn!(peer = %addr, blocks = again.len(), "a new owner never saw the pending map");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cmds = again;
    }
}

/// `keys` ordered so that a block comes after its parent when both are in
/// `keys` (so the new owner can link them).
fn parents_first(shared: &Shared, keys: Vec<Bytes>) -> Vec<Bytes> {
    let set: HashSet<&Bytes> = keys.iter().collect();
    let mut children: HashMap<Bytes, Vec<Bytes>> = HashMap::new();
    let mut roots = Vec::new();
    for k in &keys {
        match shared.store.meta(k).and_then(|m| m.parent) {
            Some(p) if set.contains(&p) => children.entry(p).or_default().push(k.clone()),
            _ => roots.push(k.clone()),
        }
    }
    let mut out = Vec::with_capacity(keys.len());
    let mut at = 0;
    out.extend(roots);
    while at < out.len() {
        if let Some(c) = children.remove(&out[at]) {
            out.extend(c);
        }
        at += 1;
    }
    out
}

/// Options of `KV.PEER IMPORT`.
pub struct ImportOpts {
    /// `PARENT pkey`.
    pub parent: Option<Bytes>,
    /// `TTL ms`: what was left of the block's time to live.
    pub ttl_ms: Option<u64>,
    /// `PIN`.
    pub pin: bool,
}

/// This node's cluster and view for a hand-over to the pending map of
/// `epoch`: `-TRYAGAIN` while this node has not seen that map yet (the
/// sender tries again), an error when that map is gone.
fn importer(shared: &Shared, epoch: u64) -> Result<(&Cluster, Arc<View>), Reply> {
    let Some(cluster) = shared.cluster.get() else {
        return Err(Reply::Error(CommandError::err(
            "This instance has cluster support disabled",
        )));
    };
    let view = cluster.membership.view();
    let seen = view.pending.as_ref().map_or(view.map.epoch, |p| p.epoch);
    if seen < epoch {
        return Err(Reply::Error(CommandError::new(
            "TRYAGAIN",
            format!("this node has not seen the map of epoch {epoch} yet"),
        )));
    }
    if view.pending.as_ref().map(|p| p.epoch) != Some(epoch) {
        return Err(Reply::Error(CommandError::err(format!(
            "no hand-over to the map of epoch {epoch} is under way here"
        ))));
    }
    Ok((cluster, view))
}

/// `KV.PEER IMPORT`: stores a block handed over for a slot coming to this
/// node. Its parent is linked when it is here already (handed over before
/// it, or in a slot this node owns), else taken on trust.
pub fn import(shared: &Shared, epoch: u64, key: Bytes, value: Bytes, o: ImportOpts) -> Reply {
    let ImportOpts {
        parent,
        ttl_ms,
        pin,
    } = o;
    let (cluster, view) = match importer(shared, epoch) {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let slot = key_slot(&key);
    if !importing(cluster, &view, slot) {
        return Reply::Error(CommandError::err(format!(
            "slot {slot} is not coming to this node"
        )));
    }
    let mine = |p: &Bytes| {
        let s = key_slot(p);
        view.map.owner(s) == Some(cluster.me.id.as_str()) || importing(cluster, &view, s)
    };
    let parent = parent.filter(|p| mine(p) && shared.store.tier_of(p).is_some());
    let opts = tidepool_tiering::PutOptions {
        parent,
        ttl_ms,
        pin,
        ..Default::default()
    };
    match shared.store.put(key, value, opts) {
        Ok(_) => Reply::ok(),
        Err(e) => crate::cmd::store_error(e),
    }
}

/// `KV.PEER FORGET`: blocks deleted at the node handing their slots over
/// after it sent them. Returns how many were here.
pub fn forget(shared: &Shared, epoch: u64, keys: &[Bytes]) -> Reply {
    let (cluster, view) = match importer(shared, epoch) {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let n = shared.store.delete(
        keys.iter()
            .filter(|k| importing(cluster, &view, key_slot(k)))
            .map(|k| &k[..]),
    );
    Reply::Int(n as i64)
}

/// Leaves the cluster on purpose (SHUTDOWN, SIGTERM): marks this node
/// leaving, so that the leader makes a map without it once this node has
/// handed its blocks over ([`follow`] does that), waits for that map
/// (at most the leader's hand-over timeout and a margin), then gives up
/// its registration.
pub async fn leave(shared: Arc<Shared>) {
    let Some(cluster) = shared.cluster.get() else {
        return;
    };
    let me = cluster.me.id.clone();
    info!("leaving the cluster: handing this node's slots over first");
    if let Err(e) = cluster.membership.set_leaving().await {
        warn!(error = %e, "could not mark this node leaving in etcd: leaving without handing over");
        return;
    }
    let mut views = cluster.membership.subscribe();
    let deadline = tokio::time::Instant::now()
        + tidepool_cluster::membership::HANDOVER_TIMEOUT
        + Duration::from_secs(5);
    loop {
        let view = views.borrow_and_update().clone();
        if !view.map.counts().contains_key(me.as_str()) {
            break;
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => {
                warn!("the map still gives this node slots: leaving all the same");
                break;
            }
        }
    }
    if let Err(e) = cluster.membership.revoke().await {
        warn!(error = %e, "could not give the registration back (it expires with its lease)");
    }
}
