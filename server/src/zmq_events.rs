//! Block events for KV-aware routers, in vLLM's KV-events wire format over a
//! ZMQ PUB socket (`--kv-events-zmq`), so that routers built to index what
//! vLLM engines hold (NVIDIA Dynamo's KV router, llm-d's indexer) can index
//! what tidepool holds.
//!
//! Each ZMQ message has three frames: the topic (`--kv-events-topic`,
//! default empty), the batch's sequence number (8 bytes, big-endian,
//! counting from 0), and the batch as msgpack, laid out as vLLM 0.34's
//! `KVEventBatch` encodes: an array `[ts, events]` (`ts` a float of Unix
//! seconds), each event a map tagged by `type`:
//!
//! - `BlockStored`: `block_hashes`, `parent_block_hash` (nil for a chain's
//!   first block), `token_ids` (empty: the server stores keys, not tokens),
//!   `block_size` (`--kv-events-block-size`), `lora_id` and `lora_name`
//!   (nil), `medium` (`CPU` for DRAM, `STORAGE` for SSD);
//! - `BlockRemoved`: `block_hashes`, `medium` (deleted, evicted, expired,
//!   or removed with its parent);
//! - `AllBlocksCleared` (FLUSHALL, FLUSHDB).
//!
//! A block hash is the XXH3-64 (seed 0) of the tidepool key, as an unsigned
//! 64-bit integer (Python: `tidepool.event_hash(key)`, or
//! `xxhash.xxh3_64_intdigest(key)`). Consecutive stores that continue one
//! chain share an event, as vLLM groups a request's blocks.
//!
//! Publishing never blocks a request: events go through a bounded queue
//! (`--kv-events-queue`) to the task that sends them, and a full queue
//! drops them. A batch sent after a loss skips a sequence number, so a
//! subscriber sees a gap, as it would for a message ZMQ dropped on its
//! way (a subscriber too slow for its queue); after a gap a router should
//! treat its view of this node as stale.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use tidepool_tiering::{Event, EventKind, EventSink, TierKind};
use tokio::sync::mpsc;
use tracing::{info, warn};
use zeromq::{Socket, SocketSend};

/// Most events in one batch.
const MAX_BATCH: usize = 1024;

/// What the queue carries.
#[derive(Debug, Clone)]
enum Item {
    Event(Event),
    Cleared,
}

/// The sink the store publishes into, and the counters INFO shows.
pub struct ZmqEvents {
    tx: mpsc::Sender<Item>,
    rx: parking_lot::Mutex<Option<mpsc::Receiver<Item>>>,
    /// Events dropped because the queue was full (since start).
    pub lost: AtomicU64,
    /// Losses not yet shown to subscribers by a skipped sequence number.
    unshown: AtomicU64,
    /// Batches sent.
    pub batches: AtomicU64,
    /// Events sent (before grouping).
    pub events: AtomicU64,
    /// The endpoint bound (its port resolved), once bound.
    pub endpoint: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for ZmqEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqEvents")
            .field("endpoint", &self.endpoint.get())
            .finish()
    }
}

impl ZmqEvents {
    /// A sink whose queue holds `queue` events (at least one).
    pub fn new(queue: usize) -> Arc<ZmqEvents> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        Arc::new(ZmqEvents {
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
            lost: AtomicU64::new(0),
            unshown: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            events: AtomicU64::new(0),
            endpoint: std::sync::OnceLock::new(),
        })
    }

    fn offer(&self, item: Item) {
        if self.tx.try_send(item).is_err() {
            self.lost.fetch_add(1, Relaxed);
            self.unshown.fetch_add(1, Relaxed);
        }
    }

    /// Everything was removed (FLUSHALL): an `AllBlocksCleared` event.
    pub fn cleared(&self) {
        self.offer(Item::Cleared);
    }

    /// Binds the PUB socket on `endpoint` (`tcp://HOST:PORT`; `*` for all
    /// interfaces, port 0 for any) and starts the task that sends batches.
    pub async fn start(
        self: &Arc<Self>,
        endpoint: &str,
        topic: &str,
        block_size: u64,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let Some(rest) = endpoint.strip_prefix("tcp://") else {
            anyhow::bail!("--kv-events-zmq takes tcp://HOST:PORT, got {endpoint:?}");
        };
        let bind = match rest.strip_prefix("*:") {
            Some(port) => format!("tcp://0.0.0.0:{port}"),
            None => endpoint.to_string(),
        };
        let mut socket = zeromq::PubSocket::new();
        let bound = socket
            .bind(&bind)
            .await
            .with_context(|| format!("binding the KV events socket {endpoint}"))?;
        let _ = self.endpoint.set(bound.to_string());
        info!(endpoint = %bound, "publishing KV events over ZMQ");
        let mut rx = self
            .rx
            .lock()
            .take()
            .context("the KV events publisher was already started")?;
        let me = self.clone();
        let topic = Bytes::copy_from_slice(topic.as_bytes());
        Ok(tokio::spawn(async move {
            let mut seq: u64 = 0;
            let mut items = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut items, MAX_BATCH).await > 0 {
                if me.unshown.swap(0, Relaxed) > 0 {
                    seq += 1; // the gap that says events were lost
                }
                let n = items.len() as u64;
                let payload = encode_batch(now_secs(), &items, block_size);
                items.clear();
                let frames = vec![
                    topic.clone(),
                    Bytes::copy_from_slice(&seq.to_be_bytes()),
                    Bytes::from(payload),
                ];
                let msg = zeromq::ZmqMessage::try_from(frames).expect("three frames");
                if let Err(e) = socket.send(msg).await {
                    warn!("sending KV events: {e}");
                }
                seq += 1;
                me.batches.fetch_add(1, Relaxed);
                me.events.fetch_add(n, Relaxed);
            }
        }))
    }
}

impl EventSink for ZmqEvents {
    fn enabled(&self) -> bool {
        true
    }

    fn publish(&self, event: Event) {
        self.offer(Item::Event(event));
    }
}

/// The store's sink: pub/sub's `__kv_events__` and, when configured, ZMQ.
pub struct Sinks {
    /// Pub/sub (`__kv_events__`, and the recorder behind it).
    pub pubsub: Arc<crate::pubsub::PubSub>,
    /// `--kv-events-zmq`.
    pub zmq: Option<Arc<ZmqEvents>>,
}

impl EventSink for Sinks {
    fn enabled(&self) -> bool {
        self.zmq.is_some() || self.pubsub.enabled()
    }

    fn publish(&self, event: Event) {
        match &self.zmq {
            Some(z) => {
                if self.pubsub.enabled() {
                    EventSink::publish(&*self.pubsub, event.clone());
                }
                z.publish(event);
            }
            None => EventSink::publish(&*self.pubsub, event),
        }
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A block's hash in the events: XXH3-64 of its key.
pub fn block_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

fn medium(tier: TierKind) -> &'static str {
    match tier {
        TierKind::Ssd => "STORAGE",
        _ => "CPU",
    }
}

/// Events as vLLM groups them: consecutive stores continuing one chain in
/// one medium share a `BlockStored`; consecutive removals in one medium
/// share a `BlockRemoved`.
#[derive(Debug, PartialEq)]
enum Grouped {
    Stored {
        hashes: Vec<u64>,
        parent: Option<u64>,
        medium: &'static str,
    },
    Removed {
        hashes: Vec<u64>,
        medium: &'static str,
    },
    Cleared,
}

fn group(items: &[Item]) -> Vec<Grouped> {
    let mut out: Vec<Grouped> = Vec::new();
    // The key of the last block stored by the open `Stored` group.
    let mut last_stored: Option<&Bytes> = None;
    for item in items {
        let Item::Event(e) = item else {
            out.push(Grouped::Cleared);
            last_stored = None;
            continue;
        };
        let (h, m) = (block_hash(&e.key), medium(e.tier));
        if e.kind == EventKind::Stored {
            let continues = last_stored.is_some() && e.parent.as_ref() == last_stored;
            match out.last_mut() {
                Some(Grouped::Stored { hashes, medium, .. }) if continues && *medium == m => {
                    hashes.push(h)
                }
                _ => out.push(Grouped::Stored {
                    hashes: vec![h],
                    parent: e.parent.as_deref().map(block_hash),
                    medium: m,
                }),
            }
            last_stored = Some(&e.key);
        } else {
            match out.last_mut() {
                Some(Grouped::Removed { hashes, medium }) if *medium == m => hashes.push(h),
                _ => out.push(Grouped::Removed {
                    hashes: vec![h],
                    medium: m,
                }),
            }
            last_stored = None;
        }
    }
    out
}

/// One batch as msgpack (see the module's documentation).
fn encode_batch(ts: f64, items: &[Item], block_size: u64) -> Vec<u8> {
    use rmp::encode as mp;
    let events = group(items);
    let mut b = Vec::with_capacity(64 + 16 * items.len());
    // Writes into a Vec cannot fail.
    let _ = mp::write_array_len(&mut b, 2);
    let _ = mp::write_f64(&mut b, ts);
    let _ = mp::write_array_len(&mut b, events.len() as u32);
    let hashes = |b: &mut Vec<u8>, hs: &[u64]| {
        let _ = mp::write_str(b, "block_hashes");
        let _ = mp::write_array_len(b, hs.len() as u32);
        for h in hs {
            let _ = mp::write_uint(b, *h);
        }
    };
    for e in &events {
        match e {
            Grouped::Stored {
                hashes: hs,
                parent,
                medium,
            } => {
                let _ = mp::write_map_len(&mut b, 8);
                let _ = mp::write_str(&mut b, "type");
                let _ = mp::write_str(&mut b, "BlockStored");
                hashes(&mut b, hs);
                let _ = mp::write_str(&mut b, "parent_block_hash");
                match parent {
                    Some(p) => drop(mp::write_uint(&mut b, *p)),
                    None => drop(mp::write_nil(&mut b)),
                }
                let _ = mp::write_str(&mut b, "token_ids");
                let _ = mp::write_array_len(&mut b, 0);
                let _ = mp::write_str(&mut b, "block_size");
                let _ = mp::write_uint(&mut b, block_size);
                let _ = mp::write_str(&mut b, "lora_id");
                let _ = mp::write_nil(&mut b);
                let _ = mp::write_str(&mut b, "medium");
                let _ = mp::write_str(&mut b, medium);
                let _ = mp::write_str(&mut b, "lora_name");
                let _ = mp::write_nil(&mut b);
            }
            Grouped::Removed { hashes: hs, medium } => {
                let _ = mp::write_map_len(&mut b, 3);
                let _ = mp::write_str(&mut b, "type");
                let _ = mp::write_str(&mut b, "BlockRemoved");
                hashes(&mut b, hs);
                let _ = mp::write_str(&mut b, "medium");
                let _ = mp::write_str(&mut b, medium);
            }
            Grouped::Cleared => {
                let _ = mp::write_map_len(&mut b, 1);
                let _ = mp::write_str(&mut b, "type");
                let _ = mp::write_str(&mut b, "AllBlocksCleared");
            }
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, key: &str, parent: Option<&str>, tier: TierKind) -> Item {
        Item::Event(Event {
            kind,
            key: Bytes::copy_from_slice(key.as_bytes()),
            tier,
            parent: parent.map(|p| Bytes::copy_from_slice(p.as_bytes())),
        })
    }

    #[test]
    fn a_chain_stored_in_order_is_one_event() {
        let h = |k: &str| block_hash(k.as_bytes());
        let items = [
            ev(EventKind::Stored, "a", None, TierKind::Dram),
            ev(EventKind::Stored, "b", Some("a"), TierKind::Dram),
            ev(EventKind::Stored, "c", Some("b"), TierKind::Dram),
            // Not under "c": a new event, its parent named.
            ev(EventKind::Stored, "x", Some("a"), TierKind::Dram),
            // Under "x" but on SSD: a new event.
            ev(EventKind::Stored, "y", Some("x"), TierKind::Ssd),
            ev(EventKind::Evicted, "y", Some("x"), TierKind::Ssd),
            ev(EventKind::Deleted, "c", Some("b"), TierKind::Ssd),
            ev(EventKind::Expired, "b", Some("a"), TierKind::Dram),
            Item::Cleared,
            ev(EventKind::Stored, "z", Some("c"), TierKind::Dram),
        ];
        assert_eq!(
            group(&items),
            vec![
                Grouped::Stored {
                    hashes: vec![h("a"), h("b"), h("c")],
                    parent: None,
                    medium: "CPU"
                },
                Grouped::Stored {
                    hashes: vec![h("x")],
                    parent: Some(h("a")),
                    medium: "CPU"
                },
                Grouped::Stored {
                    hashes: vec![h("y")],
                    parent: Some(h("x")),
                    medium: "STORAGE"
                },
                Grouped::Removed {
                    hashes: vec![h("y"), h("c")],
                    medium: "STORAGE"
                },
                Grouped::Removed {
                    hashes: vec![h("b")],
                    medium: "CPU"
                },
                Grouped::Cleared,
                Grouped::Stored {
                    hashes: vec![h("z")],
                    parent: Some(h("c")),
                    medium: "CPU"
                },
            ]
        );
    }

    #[test]
    fn the_batch_is_an_array_of_ts_and_tagged_maps() {
        let items = [
            ev(EventKind::Stored, "a", None, TierKind::Dram),
            Item::Cleared,
        ];
        let b = encode_batch(1.5, &items, 16);
        // fixarray(2), float64 1.5, fixarray(2), fixmap(8) "type" "BlockStored"...
        assert_eq!(&b[..2], &[0x92, 0xcb]);
        assert_eq!(f64::from_be_bytes(b[2..10].try_into().unwrap()), 1.5);
        assert_eq!(&b[10..12], &[0x92, 0x88]);
        assert_eq!(&b[12..17], b"\xa4type");
        assert_eq!(&b[17..29], b"\xabBlockStored");
        let tail = b"\x81\xa4type\xb0AllBlocksCleared";
        assert_eq!(&b[b.len() - tail.len()..], tail);
    }
}
