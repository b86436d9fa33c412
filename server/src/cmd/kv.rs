//! The KV.* family: blocks, chains, prefix matches, leases and statistics.

use bytes::Bytes;
use tidepool_protocol::command::{MatchOpts, TierName};
use tidepool_protocol::hash::chain_keys;
use tidepool_protocol::{CommandError, KeyList, Reply};
use tidepool_tiering::{MatchResult, PutOptions, TierKind};

use super::store_error;
use crate::session::Session;
use crate::state::Shared;

fn tier_kind(t: TierName) -> TierKind {
    match t {
        TierName::Gpu => TierKind::Gpu,
        TierName::Dram => TierKind::Dram,
        TierName::Ssd => TierKind::Ssd,
    }
}

/// Options of KV.PUT.
#[derive(Debug, Default)]
pub struct PutArgs {
    /// `PARENT pkey`.
    pub parent: Option<Bytes>,
    /// `TTL ms`.
    pub ttl_ms: Option<u64>,
    /// `TIER t`.
    pub tier: Option<TierName>,
    /// `PIN`.
    pub pin: bool,
    /// The value owns its buffer (see `Session::exclusive_frame`).
    pub exclusive: bool,
}

/// `KV.PUT key value [PARENT pkey] [TTL ms] [TIER t] [PIN]`.
pub fn put(shared: &Shared, key: Bytes, value: Bytes, a: PutArgs) -> Reply {
    let opts = PutOptions {
        parent: a.parent,
        ttl_ms: a.ttl_ms,
        pin: a.pin,
        tier: a.tier.map(tier_kind),
        value_exclusive: a.exclusive,
        ..PutOptions::default()
    };
    let put = || shared.store.put(key, value, opts);
    // A write to SSD waits for the device: mark the worker as blocking.
    let result = if a.tier == Some(TierName::Ssd) {
        tokio::task::block_in_place(put)
    } else {
        put()
    };
    match result {
        Ok(_) => Reply::ok(),
        Err(e) => store_error(e),
    }
}

/// `KV.MPUT numblocks key value ... [CHAIN] [PARENT pkey]`: one reply per block.
/// With CHAIN each block's parent is the one before it (the first's is PARENT);
/// without it, PARENT (if given) is the parent of every block. The demotions
/// the puts cause go to the SSD thread together at the end (`Store::batch`).
pub fn mput(
    shared: &Shared,
    blocks: Vec<(Bytes, Bytes)>,
    chain: bool,
    parent: Option<Bytes>,
) -> Reply {
    let mut prev = parent;
    let mut replies = Vec::with_capacity(blocks.len());
    shared.store.batch(|| {
        for (key, value) in blocks {
            let opts = PutOptions {
                parent: prev.clone(),
                ..PutOptions::default()
            };
            replies.push(match shared.store.put(key.clone(), value, opts) {
                Ok(_) => Reply::ok(),
                Err(e) => store_error(e),
            });
            if chain {
                prev = Some(key);
            }
        }
    });
    Reply::Array(replies)
}

fn match_reply(shared: &Shared, m: MatchResult, opts: MatchOpts) -> Reply {
    let here = || shared.addr.get().map_or("", String::as_str);
    match_reply_parts(
        m.matched,
        m.lease,
        opts,
        || m.tiers.iter().map(|t| Reply::text(t.as_str())).collect(),
        || vec![Reply::bulk(here()); m.matched],
    )
}

/// A KV.MATCH reply: the count alone, or a map with the lease, the tiers
/// and the nodes the options ask for.
pub fn match_reply_parts(
    matched: usize,
    lease: Option<u64>,
    opts: MatchOpts,
    tiers: impl FnOnce() -> Vec<Reply>,
    nodes: impl FnOnce() -> Vec<Reply>,
) -> Reply {
    if opts.lease_ms.is_none() && !opts.with_tiers && !opts.with_nodes {
        return Reply::Int(matched as i64);
    }
    let mut fields = vec![("matched", Reply::Int(matched as i64))];
    if opts.lease_ms.is_some() {
        // Nil when nothing matched: there is nothing to hold or give back.
        fields.push((
            "lease",
            lease.map_or(Reply::Null, |id| Reply::Int(id as i64)),
        ));
    }
    if opts.with_tiers {
        fields.push(("tiers", Reply::Array(tiers())));
    }
    if opts.with_nodes {
        fields.push(("nodes", Reply::Array(nodes())));
    }
    Reply::map(fields)
}

/// `-BUSY` when as many leases are held as `max-leases` allows: a lease
/// costs the server memory until it is released or expires, and a client
/// that leases in a loop and never releases would otherwise take it all.
pub fn leases_full(shared: &Shared) -> Option<Reply> {
    let max = shared.config.read().max_leases;
    let held = shared.store.live_leases();
    (held >= max).then(|| {
        Reply::Error(CommandError::new(
            "BUSY",
            format!(
                "{held} leases are held (max-leases {max}): give some back with KV.RELEASE, \
                 or ask for shorter ones"
            ),
        ))
    })
}

/// `-ERR` for a lease longer than `max-lease-ms`: a lease keeps its blocks
/// from eviction, and one without end (`LEASE 9223372036854775807`) froze
/// the cache for good.
pub fn lease_too_long(shared: &Shared, lease_ms: Option<u64>) -> Option<Reply> {
    let ms = lease_ms?;
    let max = shared.config.read().max_lease_ms;
    (ms > max).then(|| {
        Reply::Error(CommandError::err(format!(
            "a lease of {ms} ms is longer than max-lease-ms ({max})"
        )))
    })
}

/// Refuses a lease that is too long or one too many.
pub fn lease_refused(shared: &Shared, lease_ms: Option<u64>) -> Option<Reply> {
    lease_too_long(shared, lease_ms).or_else(|| lease_ms.and_then(|_| leases_full(shared)))
}

/// `KV.MATCH numkeys key ... [LEASE ms] [WITHTIERS]`.
pub fn match_keys(
    shared: &Shared,
    session: &mut Session,
    keys: &KeyList,
    opts: MatchOpts,
) -> Reply {
    if let Some(refused) = lease_refused(shared, opts.lease_ms) {
        return refused;
    }
    let m = if opts.local {
        // KV.PEER MATCH: the keys up to the first in a slot owned elsewhere.
        let mine = crate::fanout::mine(shared);
        let owned = keys.iter().take_while(|k| mine(k)).count();
        shared
            .store
            .match_prefix(keys.iter().take(owned), opts.lease_ms)
    } else {
        shared.store.match_prefix(keys, opts.lease_ms)
    };
    if let Some(id) = m.lease {
        session.leases.add(shared, id);
    }
    match_reply(shared, m, opts)
}

/// `KV.MATCHTOKENS seed block_tokens t1 ... [LEASE ms] [WITHTIERS]`.
pub fn match_tokens(
    shared: &Shared,
    session: &mut Session,
    seed: &[u8],
    block_tokens: u32,
    tokens: &[u32],
    opts: MatchOpts,
) -> Reply {
    if let Some(refused) = lease_refused(shared, opts.lease_ms) {
        return refused;
    }
    let keys = chain_keys(seed, block_tokens as usize, tokens);
    let m = shared.store.match_prefix(&keys, opts.lease_ms);
    if let Some(id) = m.lease {
        session.leases.add(shared, id);
    }
    match_reply(shared, m, opts)
}

/// KV.HASH seed block_tokens t1 ...
pub fn hash(seed: &[u8], block_tokens: u32, tokens: &[u32]) -> Reply {
    Reply::bulks(
        chain_keys(seed, block_tokens as usize, tokens)
            .into_iter()
            .map(|k| Bytes::copy_from_slice(&k)),
    )
}

/// KV.EXISTS key ...: tier name or nil per key. With `local` (KV.PEER
/// EXISTS), a key in a slot this node does not own counts as missing.
pub fn exists(shared: &Shared, keys: &[Bytes], local: bool) -> Reply {
    let mine = crate::fanout::mine(shared);
    let owned = |k: &Bytes| !local || mine(k);
    Reply::Array(
        keys.iter()
            .map(|k| {
                shared
                    .store
                    .tier_of(k)
                    .filter(|_| owned(k))
                    .map_or(Reply::Null, |t| Reply::text(t.as_str()))
            })
            .collect(),
    )
}

/// KV.STATS.
pub fn stats(shared: &Shared) -> Reply {
    let st = shared.store.stats();
    let tiers = st
        .tiers
        .iter()
        .map(|t| {
            let name = t.kind.map_or("?", |k| k.as_str());
            let mut fields = vec![
                ("capacity", Reply::Int(t.capacity as i64)),
                ("used", Reply::Int(t.used as i64)),
                ("blocks", Reply::Int(t.blocks as i64)),
                ("hits", Reply::Int(t.hits as i64)),
                ("misses", Reply::Int(t.misses as i64)),
                ("evictions", Reply::Int(t.evictions as i64)),
                ("demotions", Reply::Int(t.demotions as i64)),
                ("promotions", Reply::Int(t.promotions as i64)),
            ];
            if t.kind == Some(TierKind::Dram) {
                // Deleted or replaced blocks whose bytes leases still hold:
                // they count against the capacity until those end.
                fields.push(("retained", Reply::Int(shared.store.retained() as i64)));
            }
            if let (Some(TierKind::Ssd), Some(s)) = (t.kind, &st.ssd) {
                fields.extend([
                    ("segments", Reply::Int(s.segments as i64)),
                    ("segments_used", Reply::Int(s.segments_used as i64)),
                    ("dropped_demotions", Reply::Int(s.dropped_demotions as i64)),
                    ("checksum_failures", Reply::Int(s.checksum_failures as i64)),
                    ("engine", Reply::text(s.engine)),
                ]);
            }
            (Reply::text(name), Reply::map(fields))
        })
        .collect();
    Reply::map([
        ("tiers", Reply::Map(tiers)),
        ("matches", Reply::Int(st.matches as i64)),
        ("keys_queried", Reply::Int(st.keys_queried as i64)),
        ("keys_matched", Reply::Int(st.keys_matched as i64)),
        ("prefix_hit_ratio", Reply::Double(st.prefix_hit_ratio())),
        ("leases", Reply::Int(st.leases as i64)),
    ])
}
