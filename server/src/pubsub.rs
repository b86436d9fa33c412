//! Pub/sub: channels, patterns, and the `__kv_events__` stream of block events.
//!
//! Each subscribed connection owns a bounded queue. Publishing never blocks: a
//! subscriber whose queue is full is marked overflowed and its connection is
//! closed, as Redis does when a pub/sub client passes its output buffer limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tidepool_tiering::{Event, EventSink};
use tokio::sync::mpsc;

/// Channel on which every store and removal is published.
pub const EVENTS_CHANNEL: &[u8] = b"__kv_events__";

/// Messages a subscriber may queue before it is disconnected.
pub const QUEUE_LEN: usize = 16 * 1024;

/// A message delivered to a subscriber.
#[derive(Debug, Clone)]
pub enum PubMsg {
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

/// A subscriber's queue and overflow flag.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Queue to the connection.
    pub tx: mpsc::Sender<PubMsg>,
    /// Set when a message had to be dropped: the connection must close.
    pub overflowed: Arc<AtomicBool>,
}

impl Subscriber {
    fn deliver(&self, msg: PubMsg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

type Subs = HashMap<Bytes, HashMap<u64, Subscriber>>;

/// The pub/sub registry.
#[derive(Debug, Default)]
pub struct PubSub {
    channels: RwLock<Subs>,
    patterns: RwLock<Subs>,
    /// Subscriptions (channel or pattern) that receive `__kv_events__`.
    event_listeners: AtomicUsize,
    seq: AtomicU64,
    /// Messages dropped because a subscriber was too slow.
    pub dropped: AtomicU64,
}

impl PubSub {
    /// Subscribes client `id` to a channel (or pattern). Returns false when it
    /// already was.
    pub fn subscribe(&self, id: u64, name: Bytes, pattern: bool, sub: &Subscriber) -> bool {
        let map = if pattern {
            &self.patterns
        } else {
            &self.channels
        };
        let added = map
            .write()
            .entry(name)
            .or_default()
            .insert(id, sub.clone())
            .is_none();
        self.recount();
        added
    }

    /// Unsubscribes. Returns false when it was not subscribed.
    pub fn unsubscribe(&self, id: u64, name: &[u8], pattern: bool) -> bool {
        let map = if pattern {
            &self.patterns
        } else {
            &self.channels
        };
        let removed = {
            let mut m = map.write();
            let removed = m.get_mut(name).is_some_and(|s| s.remove(&id).is_some());
            if m.get(name).is_some_and(|s| s.is_empty()) {
                m.remove(name);
            }
            removed
        };
        self.recount();
        removed
    }

    fn recount(&self) {
        let direct = self
            .channels
            .read()
            .get(EVENTS_CHANNEL)
            .map_or(0, |s| s.len());
        let via_patterns: usize = self
            .patterns
            .read()
            .iter()
            .filter(|(p, _)| tidepool_protocol::glob::matches(p, EVENTS_CHANNEL))
            .map(|(_, s)| s.len())
            .sum();
        self.event_listeners.store(direct + via_patterns, Relaxed);
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
        for (pattern, subs) in self.patterns.read().iter() {
            if !tidepool_protocol::glob::matches(pattern, channel) {
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
        self.event_listeners.load(Relaxed) > 0
    }

    /// Payload: `<seq> <kind> <tier> <key hex> [<parent hex>]`, one space apart.
    fn publish(&self, e: Event) {
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

    #[test]
    fn publish_reaches_channels_and_patterns_and_flags_overflow() {
        let ps = PubSub::default();
        let (tx, mut rx) = mpsc::channel(1);
        let sub = Subscriber {
            tx,
            overflowed: Arc::default(),
        };
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
        assert_eq!(
            ps.publish(&Bytes::from_static(b"news"), &Bytes::from_static(b"2")),
            0
        );
        assert!(sub.overflowed.load(Relaxed));
        assert!(ps.unsubscribe(1, b"__kv*", true));
        assert!(!ps.enabled());
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}
