//! Store events: every store and removal, for routers that keep their own index.

use bytes::Bytes;

use crate::tier::TierKind;

/// What happened to a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A block became visible (new or overwritten).
    Stored,
    /// A block was deleted by a client (DEL, KV.DEL, FLUSHALL, overwrite excluded).
    Deleted,
    /// A block was evicted to make room.
    Evicted,
    /// A block's TTL ran out.
    Expired,
    /// A block was removed because its parent was removed (chains stay prefix-closed).
    Orphaned,
}

impl EventKind {
    /// Whether the block is gone after this event.
    pub fn is_removal(self) -> bool {
        self != EventKind::Stored
    }

    /// Lower-case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Stored => "stored",
            EventKind::Deleted => "deleted",
            EventKind::Evicted => "evicted",
            EventKind::Expired => "expired",
            EventKind::Orphaned => "orphaned",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The block's key.
    pub key: Bytes,
    /// The tier it was in (or went to).
    pub tier: TierKind,
    /// Its parent, when it has one.
    pub parent: Option<Bytes>,
}

/// Receives events. Called with no store lock held.
pub trait EventSink: Send + Sync {
    /// Whether anyone listens; when false the store builds no events at all.
    fn enabled(&self) -> bool;
    /// Delivers one event. MUST NOT block for long: it runs on the request path.
    fn publish(&self, event: Event);
}
