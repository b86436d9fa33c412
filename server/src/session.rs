//! What a client connection holds between its requests: the session the
//! commands see and change, its leases, a transaction being queued, and a
//! request waiting on a pause or on other nodes.
//!
//! Its own module so that the commands ([`crate::cmd`]) and the connection
//! loop ([`crate::conn`]) both depend on it rather than on each other.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tidepool_protocol::{Command, Version};

use crate::pubsub::Subscriber;
use crate::state::{ClientState, Shared};

/// Per-connection state the commands see and change.
pub struct Session {
    /// Registry entry (id, name, addresses).
    pub client: Arc<ClientState>,
    /// Protocol version of replies.
    pub version: Version,
    /// Channels subscribed to.
    pub channels: HashSet<Bytes>,
    /// Patterns subscribed to.
    pub patterns: HashSet<Bytes>,
    /// This connection's pub/sub queue (registered with each subscription).
    pub subscriber: Subscriber,
    /// True while the command being applied arrived alone in a read buffer sized
    /// for it: its value may be stored without a copy.
    pub exclusive_frame: bool,
    /// Leases taken on this connection, given back when it closes.
    pub leases: OwnedLeases,
    /// The transaction being queued, between MULTI and EXEC.
    pub multi: Option<Multi>,
    /// Set by MONITOR: the connection is shown every command.
    pub monitor: bool,
    /// A request CLIENT PAUSE holds until the pause ends.
    pub paused: Option<Parsed>,
    /// A cluster-wide request waiting for other nodes' answers
    /// ([`crate::cmd::Flow::Remote`]).
    pub remote: Option<Pending>,
}

impl Session {
    /// Subscriptions of both kinds.
    pub fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// RESP2 subscribed mode restricts the commands a client may send.
    pub fn in_subscribed_mode(&self) -> bool {
        self.version == Version::Resp2 && self.subscriptions() > 0
    }
}

/// A request parsed and not yet run: what running it needs.
pub struct Parsed {
    pub(crate) spec: Option<&'static tidepool_protocol::table::CommandSpec>,
    pub(crate) cmd: Result<Command, tidepool_protocol::CommandError>,
    /// The request's bytes, for the slow log and MONITOR to read its
    /// arguments back (a reference count, not a copy).
    pub(crate) sample: Option<Bytes>,
    /// Its size in bytes and arguments.
    pub(crate) bytes: usize,
    pub(crate) args: usize,
}

/// A request that asks other nodes, with what its statistics need once
/// it is answered.
pub struct Pending {
    pub(crate) work: crate::fanout::Remote,
    pub(crate) spec: Option<&'static tidepool_protocol::table::CommandSpec>,
    pub(crate) sample: Option<Bytes>,
    pub(crate) spans: Vec<(usize, usize)>,
    pub(crate) started: quanta::Instant,
}

/// Leases a connection took: they end when it closes (a lease is a hold on
/// the store's memory, and nobody can give back what a vanished client
/// held). Any connection may release one earlier with `KV.RELEASE`.
#[derive(Debug, Default)]
pub struct OwnedLeases {
    pub(crate) ids: std::collections::HashSet<u64>,
    /// Size at which the ids are next checked for leases released
    /// elsewhere or expired, so the set follows the leases actually held.
    pub(crate) prune_at: usize,
}

impl OwnedLeases {
    /// Records a lease this connection took.
    pub fn add(&mut self, shared: &Shared, id: u64) {
        self.ids.insert(id);
        if self.ids.len() >= self.prune_at.max(1024) {
            self.ids.retain(|id| {
                shared.store.lease_exists(*id)
                    || shared.cluster.get().is_some_and(|c| c.leases.contains(*id))
            });
            self.prune_at = 2 * self.ids.len();
        }
    }

    /// A lease given back through this connection.
    pub fn forget(&mut self, id: u64) {
        self.ids.remove(&id);
    }

    /// Gives back every lease this connection still holds.
    pub fn release_all(&mut self, shared: &Shared) {
        for id in self.ids.drain() {
            release_lease(shared, id);
        }
    }
}

/// Gives back a lease of either kind: true when it was still in force.
pub fn release_lease(shared: &Shared, id: u64) -> bool {
    // A cluster-wide match's lease over several nodes: all its parts.
    if let Some(c) = shared.cluster.get() {
        if let Some(in_force) = c.leases.release(shared, &c.peers, id) {
            return in_force;
        }
    }
    // A KV.LOCATE lease is a hold of the blocks' memory and a store lease:
    // the hold answers (it is what keeps the bytes a client copies in
    // place). A KV.MATCH lease is a store lease only.
    let leased = shared.store.release(id);
    shared.data.release(id).unwrap_or(leased)
}

/// A transaction being queued.
#[derive(Default)]
pub struct Multi {
    pub(crate) queued: Vec<Command>,
    /// Bytes of the queued requests.
    pub(crate) bytes: usize,
    /// Arguments of the queued requests (a long EXEC runs off the
    /// runtime's workers, as a long request does).
    pub(crate) args: usize,
    /// A command could not be queued: EXEC answers `-EXECABORT`.
    pub(crate) failed: bool,
}

impl Multi {
    /// Marks the transaction failed (a command that could not be queued).
    pub fn fail(&mut self) {
        self.failed = true;
    }
}
