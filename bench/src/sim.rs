//! Offline simulation of a trace replay: what prefix hit ratio a cache of a
//! given size reaches under an eviction policy, without a server.
//!
//! The replay a request at a time: count the leading blocks of its chain that
//! are cached (the prefix hit), refresh them, then store the rest of the chain
//! in order, evicting as the policy says whenever the cache holds more than
//! `capacity` blocks.
//!
//! tidepool's own policies (`lru`, `adaptive`, and `lru` over an SSD tier)
//! run through the store itself, in process: the policies behind
//! `tidepool_tiering::eviction`, the tier stack and the SSD tier's real log
//! (on a temporary file), driven the way `tidepool-bench replay` drives a
//! server (`KV.MATCH`, then the rest of the chain as one `KV.MPUT CHAIN`,
//! waiting for the SSD worker after each). What a server adds is its
//! protocol, its data path and its threads: `tests/replay.rs` holds the two
//! equal block for block. Plain LRU over blocks (no prefix awareness, a
//! reference point only) is simulated on its own.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use tidepool_tiering::{Eviction, PutOptions, Store, StoreBuilder, StoreConfig};

/// One request of a trace: the chain of block ids of its prompt.
pub type Chain = Vec<u64>;

/// One request of a trace with its arrival time.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Arrival, milliseconds from the trace's start.
    pub timestamp_ms: u64,
    /// The chain of block ids of its prompt.
    pub chain: Chain,
}

/// Reads a Mooncake-format trace (JSON lines with `hash_ids`).
pub fn read_trace(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<Chain>> {
    Ok(read_requests(path, limit)?
        .into_iter()
        .map(|r| r.chain)
        .collect())
}

/// Reads a Mooncake-format trace with timestamps (`timestamp`, in ms;
/// 0 when absent).
pub fn read_requests(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<Request>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        let ids = v["hash_ids"]
            .as_array()
            .with_context(|| format!("line {}: no hash_ids", i + 1))?
            .iter()
            .map(|x| x.as_u64().context("hash id is not an integer"))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        out.push(Request {
            timestamp_ms: v["timestamp"].as_u64().unwrap_or(0),
            chain: ids,
        });
    }
    Ok(out)
}

/// Eviction policies the simulator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Plain LRU over blocks.
    Lru,
    /// LRU among blocks with no cached child (tidepool's DRAM tier): chains are
    /// consumed from the tail and the cache never holds an orphan.
    LeafLru,
    /// tidepool's `adaptive` policy (see `tidepool_tiering::policy`):
    /// probation and main segments, ghost admission, the probation share
    /// chosen by miniature simulations; prefix-aware.
    Adaptive,
}

impl Policy {
    /// The name the flags use (`--eviction`, `simulate --policies`).
    pub fn flag_name(self) -> &'static str {
        match self {
            Policy::LeafLru => "lru",
            Policy::Adaptive => "adaptive",
            Policy::Lru => "plain-lru",
        }
    }

    /// Parses a policy name as the server's `--eviction` flag spells it.
    pub fn parse(name: &str) -> anyhow::Result<Policy> {
        match name {
            "lru" | "leaf-lru" => Ok(Policy::LeafLru),
            "adaptive" => Ok(Policy::Adaptive),
            "plain-lru" => Ok(Policy::Lru),
            other => anyhow::bail!("unknown eviction policy {other:?}"),
        }
    }
}

/// Result of a simulation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimResult {
    /// Blocks asked about.
    pub queried: u64,
    /// Blocks found as prefix hits.
    pub matched: u64,
    /// Leading blocks each request matched, in trace order.
    pub per_request: Vec<u32>,
}

impl SimResult {
    /// matched / queried.
    pub fn hit_ratio(&self) -> f64 {
        if self.queried == 0 {
            0.0
        } else {
            self.matched as f64 / self.queried as f64
        }
    }
}

/// The 8-byte big-endian keys the replay stores hash ids under.
pub fn keys_of(chain: &[u64]) -> Vec<bytes::Bytes> {
    chain
        .iter()
        .map(|id| bytes::Bytes::copy_from_slice(&id.to_be_bytes()))
        .collect()
}

/// Simulates `trace` against a cache of `capacity` blocks.
pub fn simulate(trace: &[Chain], capacity: usize, policy: Policy) -> SimResult {
    let eviction = match policy {
        Policy::Lru => return simulate_plain_lru(trace, capacity),
        Policy::LeafLru => Eviction::Lru,
        Policy::Adaptive => Eviction::Adaptive,
    };
    // Empty values: every block is charged the same, so the store holds
    // exactly `capacity` of them.
    let charge = tidepool_tiering::charge_of(KEY_LEN, 0);
    let store = StoreBuilder::new(store_config(capacity, charge, eviction))
        .build()
        .expect("one DRAM level is a valid stack");
    replay_in(&store, trace, &Bytes::new(), false)
}

/// The settings of a store of `blocks` blocks of `charge` bytes, which
/// evicts one block per block stored once full (as the replay's server).
fn store_config(blocks: usize, charge: u64, eviction: Eviction) -> StoreConfig {
    StoreConfig {
        dram_capacity: (blocks as u64).saturating_mul(charge).min(1 << 60),
        high_watermark: 1.0,
        low_watermark: 1.0,
        eviction,
        dram_checksums: false,
    }
}

/// The keys' length: 8-byte big-endian hash ids ([`keys_of`]).
const KEY_LEN: usize = 8;

/// Replays `trace` through `store`: for each request a match, then the rest
/// of its chain put in one batch, chained (as `KV.MPUT ... CHAIN`), with
/// `value` as every block's bytes. With `device`, waits for the store's
/// device worker after a match that found something (it may be staging) and
/// after the puts, as the replay waits for the server's.
fn replay_in(store: &Store, trace: &[Chain], value: &Bytes, device: bool) -> SimResult {
    let settle = || {
        while store.pending_demotions() > 0 {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    };
    let mut res = SimResult::default();
    for chain in trace {
        let keys = keys_of(chain);
        let hit = store.match_prefix(&keys, None).matched;
        if device && hit > 0 {
            settle();
        }
        res.queried += chain.len() as u64;
        res.matched += hit as u64;
        res.per_request.push(hit as u32);
        if hit < keys.len() {
            let mut parent = hit.checked_sub(1).map(|p| keys[p].clone());
            store.batch(|| {
                for k in &keys[hit..] {
                    let opts = PutOptions {
                        parent: parent.clone(),
                        value_exclusive: true,
                        ..PutOptions::default()
                    };
                    // A refused put (its parent gone) is the server's too.
                    let _ = store.put(k.clone(), value.clone(), opts);
                    parent = Some(k.clone());
                }
            });
            if device {
                settle();
            }
        }
    }
    res
}

/// Plain LRU over blocks: every block a candidate, parents included (a
/// dropped parent leaves its children cached, never to hit again).
fn simulate_plain_lru(trace: &[Chain], capacity: usize) -> SimResult {
    // Block id -> its stamp; the candidates by stamp.
    let mut stamps: HashMap<u64, u64> = HashMap::new();
    let mut order: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut clock = 0u64;
    let mut res = SimResult::default();
    for chain in trace {
        let hit = chain
            .iter()
            .take_while(|id| stamps.contains_key(id))
            .count();
        res.queried += chain.len() as u64;
        res.matched += hit as u64;
        res.per_request.push(hit as u32);
        for &id in chain {
            clock += 1;
            if let Some(old) = stamps.insert(id, clock) {
                order.remove(&(old, id));
            }
            order.insert((clock, id));
            while stamps.len() > capacity {
                let Some((_, victim)) = order.pop_first() else {
                    break;
                };
                stamps.remove(&victim);
            }
        }
    }
    res
}

/// The SSD tier under DRAM, as `tidepool-bench replay --ssd-blocks` gives
/// it to the server: a log of `segments` segments of [`SEGMENT`] bytes,
/// records of `block_bytes` blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsdModel {
    /// Segments in the log.
    pub segments: usize,
    /// Bytes of each block's value.
    pub block_bytes: usize,
    /// Whether a match reads the SSD blocks it finds near the log's reclaim
    /// end back into DRAM (the server's `--ssd-stage-on-match`).
    pub stage_on_match: bool,
}

/// Segment size of the SSD tier the replay gives the server (4 MiB, so that
/// first-in first-out reclaim is fine-grained).
pub const SEGMENT: u64 = 4 << 20;

impl SsdModel {
    /// The SSD tier of about `blocks` blocks of `block_bytes` that
    /// `tidepool-bench replay --ssd-blocks` gives the server.
    pub fn replay(block_bytes: usize, blocks: usize, stage_on_match: bool) -> SsdModel {
        use tidepool_tiering::ssd::record::record_len;
        // The replay's keys are 8 bytes; a block's record holds its parent's key.
        let bytes = blocks as u64 * record_len(2 * KEY_LEN, block_bytes);
        SsdModel {
            segments: bytes.div_ceil(SEGMENT).max(2) as usize,
            block_bytes,
            stage_on_match,
        }
    }
}

/// tidepool's DRAM tier of `dram_blocks` blocks under `policy` (`lru` or
/// `adaptive`) over the SSD tier of `ssd`, replayed the way
/// `tidepool-bench replay --ssd-blocks` drives the server: the store with
/// both levels, its SSD log on a temporary file.
pub fn simulate_tiers(
    trace: &[Chain],
    dram_blocks: usize,
    ssd: SsdModel,
    policy: Policy,
) -> anyhow::Result<SimResult> {
    let eviction = match policy {
        Policy::LeafLru => Eviction::Lru,
        Policy::Adaptive => Eviction::Adaptive,
        Policy::Lru => anyhow::bail!("plain LRU is not a policy of tidepool's DRAM tier"),
    };
    use tidepool_tiering::io::EngineChoice;
    use tidepool_tiering::ssd::{LogConfig, SsdTier};
    use tidepool_tiering::{PipeSettings, TierSpec};
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "tp-sim-{}-{}.ssd",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(path.clone());
    let log = LogConfig {
        path,
        capacity: Some(ssd.segments as u64 * SEGMENT),
        segment_size: SEGMENT,
        direct: false,
    };
    let opened = SsdTier::open(&log, EngineChoice::Psync).context("opening the SSD log")?;
    let pipe = PipeSettings {
        // Every demotion is written: the replay waits for the server's
        // worker after each request, and a request's demotions are few.
        queue: 1 << 20,
        stage_on_match: ssd.stage_on_match,
        ..PipeSettings::default()
    };
    let charge = tidepool_tiering::charge_of(KEY_LEN, ssd.block_bytes);
    let config = store_config(dram_blocks, charge, eviction);
    let store = StoreBuilder::new(config)
        .with_tier(TierSpec::dram(config.dram_capacity))
        .with_tier(opened.into_spec(pipe))
        .build()
        .map_err(anyhow::Error::msg)?;
    let value = Bytes::from(vec![0x5Au8; ssd.block_bytes]);
    Ok(replay_in(&store, trace, &value, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_small_trace() {
        // Two chains sharing a root, capacity 3.
        let trace = vec![vec![1, 2, 3], vec![1, 4], vec![1, 2, 3]];
        // LRU: after [1,2,3]: {1,2,3}; [1,4]: hit 1, store 4, evict 2 -> {1,3,4};
        // [1,2,3]: hit 1 (2 missing) -> 3 of 8 queried... = (0 + 1 + 1) / 8.
        let r = simulate(&trace, 3, Policy::Lru);
        assert_eq!((r.matched, r.queried), (2, 8));
        // Leaf-first: storing 4 evicts the leaf 3 (not 2): [1,2,3] then hits 1,2.
        let r = simulate(&trace, 3, Policy::LeafLru);
        assert_eq!((r.matched, r.queried), (3, 8));
    }

    #[test]
    fn reproduces_the_design_figures_on_mooncakes_trace() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/traces/conversation_trace.jsonl");
        if !path.exists() {
            eprintln!("SKIPPED: {} not found", path.display());
            return;
        }
        let trace = read_trace(&path, None).unwrap();
        assert_eq!(trace.len(), 12_031);
        let blocks: usize = trace.iter().map(|c| c.len()).sum();
        assert_eq!(blocks, 288_500);
        // DESIGN.md: LRU over blocks gives 0.110 at 5,000 and 0.2875 at 20,000;
        // an unbounded cache 0.366.
        let r = |c, p| (simulate(&trace, c, p).hit_ratio() * 10_000.0).round() / 10_000.0;
        assert_eq!(r(5_000, Policy::Lru), 0.1104);
        assert_eq!(r(20_000, Policy::Lru), 0.2875);
        assert_eq!(r(usize::MAX, Policy::Lru), 0.3664, "0.366 in DESIGN.md");
        // Leaf-first (tidepool's DRAM policy) is never worse here.
        assert!(r(5_000, Policy::LeafLru) >= 0.1104);
        assert!(r(20_000, Policy::LeafLru) >= 0.2875);
    }

    #[test]
    fn unbounded_cache_gives_the_ideal_ratio() {
        let trace = vec![vec![1, 2], vec![1, 2, 3], vec![1, 2, 3, 4]];
        let r = simulate(&trace, 1000, Policy::Lru);
        assert_eq!((r.matched, r.queried), (5, 9));
    }
}
