//! Redis string and generic key commands over the block store. A block is a
//! string value: `GET key` returns its bytes.

use bytes::Bytes;
use tidepool_protocol::command::{Cond, SetExpiry};
use tidepool_protocol::{glob, CommandError, Reply};
use tidepool_tiering::{Fetch, PutOptions};

use super::store_error;
use crate::state::Shared;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// GET / KV.GET. A block on SSD is read with the worker marked as blocking
/// (`block_in_place`), so the runtime moves other connections elsewhere.
pub fn get(shared: &Shared, key: &[u8]) -> Reply {
    match shared.store.fetch_memory(key) {
        Fetch::Memory(b) => Reply::Bulk(b),
        Fetch::Missing => Reply::Null,
        Fetch::Device => {
            tokio::task::block_in_place(|| shared.store.get(key)).map_or(Reply::Null, Reply::Bulk)
        }
    }
}

/// MGET / KV.MGET.
pub fn mget(shared: &Shared, keys: &[Bytes]) -> Reply {
    Reply::Array(keys.iter().map(|k| get(shared, k)).collect())
}

/// SET with EX/PX/EXAT/PXAT/KEEPTTL, NX/XX and GET.
pub fn set(
    shared: &Shared,
    key: Bytes,
    value: Bytes,
    expiry: Option<SetExpiry>,
    cond: Cond,
    get_old: bool,
    value_exclusive: bool,
) -> Reply {
    let old = get_old.then(|| shared.store.get(&key));
    let mut opts = PutOptions {
        only_if_exists: match cond {
            Cond::Nx => Some(false),
            Cond::Xx => Some(true),
            _ => None,
        },
        value_exclusive,
        ..PutOptions::default()
    };
    match expiry {
        Some(SetExpiry::In(ms)) => opts.ttl_ms = Some(ms),
        Some(SetExpiry::At(at)) => {
            let now = now_ms();
            if at <= now {
                // Already in the past: the write happens and expires at once.
                shared.store.delete([&key[..]]);
                return old.map_or(Reply::ok(), |o| o.map_or(Reply::Null, Reply::Bulk));
            }
            opts.ttl_ms = Some(at - now);
        }
        Some(SetExpiry::Keep) => opts.keep_ttl = true,
        None => {}
    }
    match shared.store.put(key, value, opts) {
        Ok(stored) => match old {
            Some(o) => o.map_or(Reply::Null, Reply::Bulk),
            None if stored => Reply::ok(),
            None => Reply::Null,
        },
        Err(e) => store_error(e),
    }
}

/// SETNX: 1 if the key was set, 0 if it existed.
pub fn setnx(shared: &Shared, key: Bytes, value: Bytes, value_exclusive: bool) -> Reply {
    match set(shared, key, value, None, Cond::Nx, false, value_exclusive) {
        Reply::Null => Reply::Int(0),
        Reply::Error(e) => Reply::Error(e),
        _ => Reply::Int(1),
    }
}

/// GETDEL: the value, and the key removed (with what is chained under it).
pub fn getdel(shared: &Shared, key: &[u8]) -> Reply {
    // Blocking for a block on SSD, as GET.
    let on_device = matches!(shared.store.fetch_memory(key), Fetch::Device);
    super::offload_if(on_device, || shared.store.get_del(key)).map_or(Reply::Null, Reply::Bulk)
}

/// GETEX: the value; `expiry` sets (`Some(Some)`) or removes (`Some(None)`)
/// its time to live.
pub fn getex(shared: &Shared, key: &[u8], expiry: Option<Option<SetExpiry>>) -> Reply {
    let reply = get(shared, key);
    if matches!(reply, Reply::Bulk(_)) {
        match expiry {
            None | Some(Some(SetExpiry::Keep)) => {}
            Some(None) => {
                shared.store.set_expiry(key, None);
            }
            Some(Some(SetExpiry::In(ms))) => {
                shared
                    .store
                    .set_expiry(key, Some(now_ms().saturating_add(ms)));
            }
            Some(Some(SetExpiry::At(at))) if at <= now_ms() => {
                shared.store.delete([key]);
            }
            Some(Some(SetExpiry::At(at))) => {
                shared.store.set_expiry(key, Some(at));
            }
        }
    }
    reply
}

/// MSET.
pub fn mset(shared: &Shared, pairs: Vec<(Bytes, Bytes)>) -> Reply {
    for (k, v) in pairs {
        if let Err(e) = shared.store.put(k, v, PutOptions::default()) {
            return store_error(e);
        }
    }
    Reply::ok()
}

/// EXISTS: counts (a key named twice counts twice, as in Redis).
pub fn exists(shared: &Shared, keys: &[Bytes]) -> Reply {
    Reply::Int(
        keys.iter()
            .filter(|k| shared.store.tier_of(k).is_some())
            .count() as i64,
    )
}

/// TYPE.
pub fn type_of(shared: &Shared, key: &[u8]) -> Reply {
    Reply::simple(if shared.store.tier_of(key).is_some() {
        "string"
    } else {
        "none"
    })
}

/// TTL / PTTL: -2 when missing, -1 without expiry.
pub fn ttl(shared: &Shared, key: &[u8], millis: bool) -> Reply {
    let Some(meta) = shared.store.meta(key) else {
        return Reply::Int(-2);
    };
    let Some(at) = meta.expires_at else {
        return Reply::Int(-1);
    };
    let left = at.saturating_sub(now_ms());
    Reply::Int(if millis { left } else { (left + 500) / 1000 } as i64)
}

/// EXPIRE / PEXPIRE with NX/XX/GT/LT.
pub fn expire(shared: &Shared, key: &[u8], ms: i64, cond: Cond) -> Reply {
    let Some(meta) = shared.store.meta(key) else {
        return Reply::Int(0);
    };
    let now = now_ms() as i64;
    let Some(at) = now.checked_add(ms) else {
        return Reply::Error(CommandError::err("invalid expire time in 'expire' command"));
    };
    let current = meta.expires_at.map(|t| t as i64);
    let allowed = match cond {
        Cond::Always => true,
        Cond::Nx => current.is_none(),
        Cond::Xx => current.is_some(),
        Cond::Gt => current.is_some_and(|c| at > c),
        Cond::Lt => current.is_none_or(|c| at < c),
    };
    if !allowed {
        return Reply::Int(0);
    }
    let at = at.max(0) as u64;
    Reply::Int(shared.store.set_expiry(key, Some(at)) as i64)
}

/// PERSIST.
pub fn persist(shared: &Shared, key: &[u8]) -> Reply {
    match shared.store.meta(key) {
        Some(m) if m.expires_at.is_some() => Reply::Int(shared.store.set_expiry(key, None) as i64),
        _ => Reply::Int(0),
    }
}

/// SCAN cursor [MATCH pattern] [COUNT n] [TYPE t].
pub fn scan(
    shared: &Shared,
    cursor: u64,
    pattern: Option<Bytes>,
    count: usize,
    kind: Option<Bytes>,
) -> Reply {
    let (next, keys) = if kind
        .as_ref()
        .is_some_and(|t| !t.eq_ignore_ascii_case(b"string"))
    {
        // Every value is a string: any other TYPE filter matches nothing.
        (0, Vec::new())
    } else {
        let filter = |k: &[u8]| pattern.as_ref().is_none_or(|p| glob::matches(p, k));
        shared.store.scan(cursor, count, &filter)
    };
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(next.to_string())),
        Reply::bulks(keys),
    ])
}

/// KEYS pattern.
pub fn keys(shared: &Shared, pattern: &[u8]) -> Reply {
    let filter = |k: &[u8]| glob::matches(pattern, k);
    let (_, keys) = shared.store.scan(0, usize::MAX, &filter);
    Reply::bulks(keys)
}
