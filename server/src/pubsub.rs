//! Pub/sub: channels, patterns, and the `__kv_events__` stream of block events.
//!
//! Each subscribed connection owns a queue, bounded by the bytes it holds as
//! Redis's `client-output-buffer-limit pubsub` bounds a subscriber's output:
//! past the hard limit, or above the soft limit for its seconds on end, the
//! subscriber is marked overflowed and its connection is closed at once, even
//! while a write to it is stuck. Publishing never blocks.
//!
//! Subscribing costs the number of names subscribed, never the number of
//! other subscriptions: whether `__kv_events__` has listeners is counted as
//! subscriptions come and go, and the patterns that match it are kept apart,
//! so a block event is matched against those alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tidepool_tiering::{Event, EventKind, EventSink};
use tokio::sync::{mpsc, Notify};

/// Channel on which every store and removal is published.
pub const EVENTS_CHANNEL: &[u8] = b"__kv_events__";

/// Bytes a queued message is charged besides its channel, pattern and
/// payload (the queue slot and the reply's framing).
const MSG_OVERHEAD: u64 = 64;

/// Output limits of pub/sub clients (hard bytes, soft bytes, soft seconds; 0
/// turns a limit off), shared with CONFIG SET.
#[derive(Debug)]
pub struct Limits {
    /// Bytes past which a subscriber is closed at once.
    pub hard: AtomicU64,
    /// Bytes a subscriber may stay above for `soft_secs`.
    pub soft: AtomicU64,
    /// Seconds above `soft` before a subscriber is closed.
    pub soft_secs: AtomicU64,
}

impl Limits {
    /// Limits of `hard`, `soft` bytes and `soft_secs` seconds.
    pub fn new(hard: u64, soft: u64, soft_secs: u64) -> Limits {
        Limits {
            hard: AtomicU64::new(hard),
            soft: AtomicU64::new(soft),
            soft_secs: AtomicU64::new(soft_secs),
        }
    }

    /// Sets all three.
    pub fn set(&self, hard: u64, soft: u64, soft_secs: u64) {
        self.hard.store(hard, Relaxed);
        self.soft.store(soft, Relaxed);
        self.soft_secs.store(soft_secs, Relaxed);
    }
}

impl Default for Limits {
    /// Redis's: 32 MiB hard, 8 MiB for 60 seconds soft.
    fn default() -> Self {
        Limits::new(32 << 20, 8 << 20, 60)
    }
}

/// A message delivered to a subscriber.
#[derive(Debug, Clone)]
pub enum PubMsg {
    /// A command a MONITOR client is shown: its line, formatted.
    Monitor(Bytes),
    /// From a channel subscription.
    Message {
        /// Channel.
        channel: Bytes,
        /// Payload.
        payload: Bytes,
    },
    /// From a pattern subscription.
    PMessage {
        /// The pattern that matched.
        pattern: Bytes,
        /// Channel.
        channel: Bytes,
        /// Payload.
        payload: Bytes,
    },
}

impl PubMsg {
    /// Bytes this message holds in a queue, as charged to the subscriber.
    pub fn cost(&self) -> u64 {
        MSG_OVERHEAD
            + match self {
                PubMsg::Monitor(line) => line.len(),
                PubMsg::Message { channel, payload } => channel.len() + payload.len(),
                PubMsg::PMessage {
                    pattern,
                    channel,
                    payload,
                } => pattern.len() + channel.len() + payload.len(),
            } as u64
    }
}

/// A subscriber's queue, its unsent bytes and its overflow flag.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Queue to the connection (unbounded in messages: bounded in bytes).
    pub tx: mpsc::UnboundedSender<PubMsg>,
    /// What the connection has not yet written, shared with it.
    pub output: Arc<Output>,
}

/// The part of a subscriber its connection shares: unsent bytes, the
/// overflow flag and the wake-up that closes it.
#[derive(Debug)]
pub struct Output {
    /// Bytes queued or encoded and not yet written.
    pub pending: AtomicU64,
    /// Set when the limits were passed: the connection must close.
    pub overflowed: AtomicBool,
    /// Woken when `overflowed` is set.
    pub kill: Notify,
    /// Since when `pending` has been above the soft limit.
    soft_since: Mutex<Option<Instant>>,
    limits: Arc<Limits>,
}

impl Output {
    /// Output under `limits`.
    pub fn new(limits: Arc<Limits>) -> Output {
        Output {
            pending: AtomicU64::new(0),
            overflowed: AtomicBool::new(false),
            kill: Notify::new(),
            soft_since: Mutex::new(None),
            limits,
        }
    }

    /// `n` bytes were written to the client.
    pub fn written(&self, n: u64) {
        let left = self.pending.fetch_sub(n, Relaxed).saturating_sub(n);
        if left <= self.limits.soft.load(Relaxed) {
            *self.soft_since.lock() = None;
        }
    }

    /// Charges `n` more bytes; false (and the client marked overflowed and
    /// woken) when that passes the limits.
    fn charge(&self, n: u64) -> bool {
        if self.overflowed.load(Relaxed) {
            return false;
        }
        let now = self.pending.fetch_add(n, Relaxed) + n;
        let hard = self.limits.hard.load(Relaxed);
        let soft = self.limits.soft.load(Relaxed);
        let mut over = hard > 0 && now > hard;
        if !over && soft > 0 && now > soft {
            let secs = self.limits.soft_secs.load(Relaxed);
            let mut since = self.soft_since.lock();
            let start = *since.get_or_insert_with(Instant::now);
            over = start.elapsed().as_secs() >= secs;
        }
        if over {
            self.pending.fetch_sub(n, Relaxed);
            self.overflowed.store(true, Relaxed);
            self.kill.notify_one();
        }
        !over
    }
}

impl Subscriber {
    /// Queues `msg` for the connection, charged to its output limits;
    /// false when it is past them (or gone).
    pub fn deliver(&self, msg: PubMsg) -> bool {
        if !self.output.charge(msg.cost()) {
            return false;
        }
        let cost = msg.cost();
        if self.tx.send(msg).is_err() {
            self.output.written(cost);
            return false;
        }
        true
    }
}

type Subs = HashMap<Bytes, HashMap<u64, Subscriber>>;

/// The pub/sub registry.
#[derive(Debug, Default)]
pub struct PubSub {
    channels: RwLock<Subs>,
    patterns: RwLock<Subs>,
    /// Of `patterns`, those that match `__kv_events__` (the same entries).
    event_patterns: RwLock<Subs>,
    /// Subscriptions (channel or pattern) that receive `__kv_events__`.
    event_listeners: AtomicUsize,
    seq: AtomicU64,
    /// Messages dropped because a subscriber was too slow.
    pub dropped: AtomicU64,
    /// Output limits of subscribers (CONFIG SET client-output-buffer-limit).
    pub limits: Arc<Limits>,
    /// Keys stored and deleted while a hand-over records them.
    pub recorder: Recorder,
}

/// The keys stored (true) or deleted (false) since [`Recorder::start`]: a
/// node handing slots over sends them again after its first pass.
#[derive(Debug, Default)]
pub struct Recorder {
    on: AtomicBool,
    keys: Mutex<HashMap<Bytes, bool>>,
}

impl Recorder {
    /// Starts recording, from nothing.
    pub fn start(&self) {
        self.keys.lock().clear();
        self.on.store(true, Relaxed);
    }

    /// Stops recording and forgets what it held.
    pub fn stop(&self) {
        self.on.store(false, Relaxed);
        self.keys.lock().clear();
    }

    /// What was recorded since the last take (the last event of each key).
    pub fn take(&self) -> HashMap<Bytes, bool> {
        std::mem::take(&mut *self.keys.lock())
    }

    fn record(&self, e: &Event) {
        if !self.on.load(Relaxed) {
            return;
        }
        let stored = match e.kind {
            EventKind::Stored => true,
            EventKind::Deleted => false,
            // Evicted, expired or orphaned here: the copy handed over
            // may live on (its TTL went with it).
            _ => return,
        };
        self.keys.lock().insert(e.key.clone(), stored);
    }
}

impl PubSub {
    /// Subscribes client `id` to a channel (or pattern). Returns false when it
    /// already was.
    pub fn subscribe(&self, id: u64, name: Bytes, pattern: bool, sub: &Subscriber) -> bool {
        let events = if pattern {
            tidepool_protocol::glob::matches(&name, EVENTS_CHANNEL)
        } else {
            name.as_ref() == EVENTS_CHANNEL
        };
        let map = if pattern {
            &self.patterns
        } else {
            &self.channels
        };
        let added = map
            .write()
            .entry(name.clone())
            .or_default()
            .insert(id, sub.clone())
            .is_none();
        if added && events {
            if pattern {
                self.event_patterns
                    .write()
                    .entry(name)
                    .or_default()
                    .insert(id, sub.clone());
            }
            self.event_listeners.fetch_add(1, Relaxed);
        }
        added
    }

    /// Unsubscribes. Returns false when it was not subscribed.
    pub fn unsubscribe(&self, id: u64, name: &[u8], pattern: bool) -> bool {
        let map = if pattern {
            &self.patterns
        } else {
            &self.channels
        };
        let removed = remove_from(map, id, name);
        if removed {
            let events = if pattern {
                remove_from(&self.event_patterns, id, name)
            } else {
                name == EVENTS_CHANNEL
            };
            if events {
                self.event_listeners.fetch_sub(1, Relaxed);
            }
        }
        removed
    }

    /// Publishes to a channel; returns how many subscribers received it.
    pub fn publish(&self, channel: &Bytes, payload: &Bytes) -> usize {
        let mut n = 0;
        let mut send = |s: &Subscriber, msg: PubMsg| {
            if s.deliver(msg) {
                n += 1;
            } else {
                self.dropped.fetch_add(1, Relaxed);
            }
        };
        if let Some(subs) = self.channels.read().get(channel) {
            for s in subs.values() {
                let (channel, payload) = (channel.clone(), payload.clone());
                send(s, PubMsg::Message { channel, payload });
            }
        }
        // Block events go to the patterns known to match them, unmatched.
        let (patterns, known) = if channel.as_ref() == EVENTS_CHANNEL {
            (&self.event_patterns, true)
        } else {
            (&self.patterns, false)
        };
        for (pattern, subs) in patterns.read().iter() {
            if !known && !tidepool_protocol::glob::matches(pattern, channel) {
                continue;
            }
            for s in subs.values() {
                let msg = PubMsg::PMessage {
                    pattern: pattern.clone(),
                    channel: channel.clone(),
                    payload: payload.clone(),
                };
                send(s, msg);
            }
        }
        n
    }

    /// Channels with subscribers (INFO).
    pub fn channel_count(&self) -> usize {
        self.channels.read().len()
    }

    /// Patterns with subscribers (INFO).
    pub fn pattern_count(&self) -> usize {
        self.patterns.read().len()
    }

    /// Sequence number of the last event published.
    pub fn last_event_seq(&self) -> u64 {
        self.seq.load(Relaxed)
    }
}

/// Removes `id` from `name`'s subscribers in `map`, and the name when none
/// are left. Returns whether it was there.
fn remove_from(map: &RwLock<Subs>, id: u64, name: &[u8]) -> bool {
    let mut m = map.write();
    let Some(subs) = m.get_mut(name) else {
        return false;
    };
    let removed = subs.remove(&id).is_some();
    if subs.is_empty() {
        m.remove(name);
    }
    removed
}

/// Lower-case hex of a key: event payloads are text, keys are binary.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * b.len());
    for &c in b {
        s.push(DIGITS[(c >> 4) as usize] as char);
        s.push(DIGITS[(c & 15) as usize] as char);
    }
    s
}

impl EventSink for PubSub {
    fn enabled(&self) -> bool {
        self.event_listeners.load(Relaxed) > 0 || self.recorder.on.load(Relaxed)
    }

    /// Payload: `<seq> <kind> <tier> <key hex> [<parent hex>]`, one space apart.
    fn publish(&self, e: Event) {
        self.recorder.record(&e);
        if self.event_listeners.load(Relaxed) == 0 {
            return;
        }
        let seq = self.seq.fetch_add(1, Relaxed) + 1;
        let mut s = format!(
            "{seq} {} {} {}",
            e.kind.as_str(),
            e.tier.as_str(),
            hex(&e.key)
        );
        if let Some(p) = &e.parent {
            s.push(' ');
            s.push_str(&hex(p));
        }
        PubSub::publish(self, &Bytes::from_static(EVENTS_CHANNEL), &Bytes::from(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(limits: Limits) -> (Subscriber, mpsc::UnboundedReceiver<PubMsg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let output = Arc::new(Output::new(Arc::new(limits)));
        (Subscriber { tx, output }, rx)
    }

    #[test]
    fn publish_reaches_channels_and_patterns_and_flags_overflow() {
        let ps = PubSub::default();
        // Room for two one-byte messages on "news" (64 + 4 + 1 bytes each).
        let (sub, mut rx) = subscriber(Limits::new(2 * 69, 0, 0));
        assert!(ps.subscribe(1, Bytes::from_static(b"news"), false, &sub));
        assert!(!ps.subscribe(1, Bytes::from_static(b"news"), false, &sub));
        assert!(!ps.enabled());
        assert!(ps.subscribe(1, Bytes::from_static(b"__kv*"), true, &sub));
        assert!(ps.enabled());
        assert_eq!(
            ps.publish(&Bytes::from_static(b"news"), &Bytes::from_static(b"x")),
            1
        );
        assert!(matches!(rx.try_recv(), Ok(PubMsg::Message { .. })));
        ps.publish(&Bytes::from_static(b"news"), &Bytes::from_static(b"1"));
        assert!(!sub.output.overflowed.load(Relaxed));
        assert_eq!(
            ps.publish(&Bytes::from_static(b"news"), &Bytes::from_static(b"2")),
            0
        );
        assert!(sub.output.overflowed.load(Relaxed));
        assert!(ps.unsubscribe(1, b"__kv*", true));
        assert!(!ps.enabled());
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }

    #[test]
    fn what_was_written_makes_room_and_the_soft_limit_waits_its_seconds() {
        let (sub, _rx) = subscriber(Limits::new(0, 100, 0));
        assert!(sub.output.charge(100));
        sub.output.written(100);
        assert!(sub.output.charge(100));
        // Above the soft limit with 0 seconds allowed: closed at once.
        assert!(!sub.output.charge(1));
        let (sub, _rx) = subscriber(Limits::new(0, 100, 3600));
        assert!(sub.output.charge(1000));
        assert!(sub.output.charge(1000));
        assert!(!sub.output.overflowed.load(Relaxed));
    }

    #[test]
    fn event_listeners_are_counted_as_subscriptions_come_and_go() {
        let ps = PubSub::default();
        let (sub, _rx) = subscriber(Limits::default());
        ps.subscribe(1, Bytes::from_static(b"__kv_events__"), false, &sub);
        ps.subscribe(2, Bytes::from_static(b"__kv_events__"), false, &sub);
        ps.subscribe(1, Bytes::from_static(b"*events*"), true, &sub);
        ps.subscribe(1, Bytes::from_static(b"other*"), true, &sub);
        assert_eq!(ps.event_listeners.load(Relaxed), 3);
        ps.unsubscribe(1, b"other*", true);
        ps.unsubscribe(1, b"nothing", true);
        assert_eq!(ps.event_listeners.load(Relaxed), 3);
        ps.unsubscribe(2, b"__kv_events__", false);
        ps.unsubscribe(1, b"*events*", true);
        assert_eq!(ps.event_listeners.load(Relaxed), 1);
        assert!(ps.event_patterns.read().is_empty());
    }
}
