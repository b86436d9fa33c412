//! Applying typed commands to the shared state. One file per command family:
//! [`keyspace`] (Redis strings and generic key commands), [`kv`] (the KV.*
//! family), [`server`] (connection and server commands), [`pubsub`].

pub mod keyspace;
pub mod kv;
pub mod multi;
pub mod pubsub;
pub mod server;

use tidepool_protocol::reply::OutBuf;
use tidepool_protocol::{Command, Reply};

use crate::session::Session;
pub use crate::session::{release_lease, OwnedLeases};
use crate::state::Shared;

/// Whether the connection goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep serving.
    Continue,
    /// Flush and close (QUIT).
    Close,
    /// Flush the replies so far, then go on with the requests already read.
    Flush,
    /// A request waits for CLIENT PAUSE to end: flush the replies so far,
    /// wait, run it, then go on.
    Paused,
    /// A request asks other nodes (a cluster-wide KV.MATCH): flush the
    /// replies so far, finish it (`Session::remote`), then go on.
    Remote,
}

pub use crate::errors::store_error;

/// Stores past this many blocks make KEYS and FLUSHALL long (about 0.3 s
/// for 500,000 blocks on the development VM): they run off the runtime's
/// workers ([`offload_if`]).
const LONG_KEYS: usize = 10_000;

/// Requests with more arguments than this run off the runtime's workers
/// ([`offload_if`]): commands cost about one step per argument (a KV.MPUT
/// or DEL of half a million keys, a KV.MATCH of a million), and a worker
/// busy with one for a second would stall every connection queued on it.
pub const LONG_ARGS: usize = 4096;

/// Runs `f` with the current runtime worker handed over as a blocking
/// thread when `long` (the runtime moves the worker's other connections to
/// a fresh worker meanwhile, as Redis's lazyfree moves work off its main
/// thread); else, or outside a multi-threaded runtime, runs it in place.
pub fn offload_if<R>(long: bool, f: impl FnOnce() -> R) -> R {
    // The runtime is looked up only for long work: every command passes here.
    let multi = || {
        tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    };
    if long && multi() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// DEL, UNLINK, KV.DEL: removing a block with children removes its whole
/// subtree (a chain of 1.5 million blocks took 1.4 s), so that runs off the
/// runtime's workers; each block is removed under its own shard's lock
/// only, so other clients are never held up for long.
fn delete(shared: &Shared, keys: &[bytes::Bytes]) -> Reply {
    let cascades = keys
        .iter()
        .any(|k| shared.store.meta(k).is_some_and(|m| m.children > 0));
    offload_if(cascades, || {
        Reply::Int(shared.store.delete(keys.iter().map(|k| &k[..])) as i64)
    })
}

/// Applies one command. The reply (if any) is returned for the caller to encode;
/// commands that answer with several frames (SUBSCRIBE) write them to `out`.
pub fn execute(
    shared: &Shared,
    session: &mut Session,
    cmd: Command,
    out: &mut OutBuf,
) -> (Option<Reply>, Flow) {
    use Command as C;
    let reply = match cmd {
        C::Get(k) => keyspace::get(shared, &k),
        C::Set {
            key,
            value,
            expiry,
            cond,
            get,
        } => keyspace::set(
            shared,
            key,
            value,
            expiry,
            cond,
            get,
            session.exclusive_frame,
        ),
        C::MGet(keys) => keyspace::mget(shared, &keys),
        C::SetNx { key, value } => keyspace::setnx(shared, key, value, session.exclusive_frame),
        C::GetDel(k) => keyspace::getdel(shared, &k),
        C::GetEx { key, expiry } => keyspace::getex(shared, &key, expiry),
        C::MSet(pairs) => keyspace::mset(shared, pairs),
        C::Del(keys) => delete(shared, &keys),
        C::Exists(keys) => keyspace::exists(shared, &keys),
        C::Strlen(k) => Reply::Int(shared.store.meta(&k).map_or(0, |m| m.len as i64)),
        C::Type(k) => keyspace::type_of(shared, &k),
        C::Ttl { key, millis } => keyspace::ttl(shared, &key, millis),
        C::Expire { key, ms, cond } => keyspace::expire(shared, &key, ms, cond),
        C::Persist(k) => keyspace::persist(shared, &k),
        C::Scan {
            cursor,
            pattern,
            count,
            kind,
        } => keyspace::scan(shared, cursor, pattern, count, kind),
        C::Keys(pattern) => offload_if(shared.store.len() > LONG_KEYS, || {
            keyspace::keys(shared, &pattern)
        }),
        C::DbSize => Reply::Int(shared.store.len() as i64),
        C::FlushAll => {
            offload_if(shared.store.len() > LONG_KEYS, || shared.store.flush());
            if let Some(z) = &shared.zmq {
                z.cleared();
            }
            Reply::ok()
        }
        C::MemoryUsage(k) => shared
            .store
            .meta(&k)
            .map_or(Reply::Null, |m| Reply::Int(m.charge as i64)),
        C::ObjectEncoding(k) => match shared.store.meta(&k) {
            Some(_) => Reply::text("raw"),
            None => Reply::Null,
        },
        C::KvPut {
            key,
            value,
            parent,
            ttl_ms,
            tier,
            pin,
        } => kv::put(
            shared,
            key,
            value,
            kv::PutArgs {
                parent: crate::cluster::parent_here(shared, parent),
                ttl_ms,
                tier,
                pin,
                exclusive: session.exclusive_frame,
            },
        ),
        C::KvMPut {
            blocks,
            chain,
            parent,
        } => kv::mput(
            shared,
            blocks,
            chain,
            crate::cluster::parent_here(shared, parent),
        ),
        C::KvGet(k) => keyspace::get(shared, &k),
        C::KvMGet(keys) => keyspace::mget(shared, &keys),
        C::KvMatch { keys, opts } => kv::match_keys(shared, session, &keys, opts),
        C::KvMatchTokens {
            seed,
            block_tokens,
            tokens,
            opts,
        } => kv::match_tokens(shared, session, &seed, block_tokens, &tokens, opts),
        C::KvHash {
            seed,
            block_tokens,
            tokens,
        } => kv::hash(&seed, block_tokens, &tokens),
        C::KvExists(keys) => kv::exists(shared, &keys, false),
        C::KvPeerExists(keys) => kv::exists(shared, &keys, true),
        C::KvPeerImport {
            epoch,
            key,
            value,
            parent,
            ttl_ms,
            pin,
        } => crate::handover::import(
            shared,
            epoch,
            key,
            value,
            crate::handover::ImportOpts {
                parent,
                ttl_ms,
                pin,
            },
        ),
        C::KvPeerForget { epoch, keys } => crate::handover::forget(shared, epoch, &keys),
        C::KvPeerTrim { lease, keep } => {
            Reply::Int(shared.store.trim_lease(lease, keep as usize) as i64)
        }
        C::KvDel(keys) => delete(shared, &keys),
        C::KvVerify(keys) => Reply::Array(
            keys.iter()
                .map(|k| match shared.store.verify(k) {
                    Some(v) => Reply::Simple(v.as_str().into()),
                    None => Reply::Null,
                })
                .collect(),
        ),
        C::KvPin(keys) => {
            Reply::Int(shared.store.set_pinned(keys.iter().map(|k| &k[..]), true) as i64)
        }
        C::KvUnpin(keys) => {
            Reply::Int(shared.store.set_pinned(keys.iter().map(|k| &k[..]), false) as i64)
        }
        C::KvRelease(id) => {
            // A KV.LOCATE lease is a hold of the blocks' memory and a store
            // lease: the hold answers (it is what keeps the bytes a client
            // copies in place). A KV.MATCH lease is a store lease only.
            session.leases.forget(id);
            Reply::Int(release_lease(shared, id) as i64)
        }
        C::KvReserve { blocks, mut opts } => {
            opts.parent = crate::cluster::parent_here(shared, opts.parent.take());
            shared.data.reserve(
                &shared.store,
                session.client.id,
                shared.config.read().proto_max_bulk_len.as_u64(),
                blocks,
                opts,
            )
        }
        C::KvCommit { tokens, checksums } => shared.data.commit(
            &shared.store,
            session.client.id,
            &tokens,
            checksums.as_deref(),
        ),
        C::KvAbort(tokens) => shared.data.abort(session.client.id, &tokens),
        C::KvLocate {
            keys,
            lease_ms,
            via,
        } => match kv::lease_refused(
            shared,
            Some(lease_ms.unwrap_or(crate::data::DEFAULT_LOCATE_LEASE_MS)),
        ) {
            Some(refused) => refused,
            None => {
                let (reply, lease) = shared.data.locate(&shared.store, &keys, lease_ms, via);
                if let Some(id) = lease {
                    session.leases.add(shared, id);
                }
                reply
            }
        },
        C::KvDataplane => shared.data.describe(),
        C::KvStats => kv::stats(shared),
        // These answer with one confirmation frame per name, written to `out`.
        C::Subscribe(chs) => {
            pubsub::subscribe(shared, session, chs, false, out);
            return (None, Flow::Continue);
        }
        C::PSubscribe(ps) => {
            pubsub::subscribe(shared, session, ps, true, out);
            return (None, Flow::Continue);
        }
        C::Unsubscribe(chs) => {
            pubsub::unsubscribe(shared, session, chs, false, out);
            return (None, Flow::Continue);
        }
        C::PUnsubscribe(ps) => {
            pubsub::unsubscribe(shared, session, ps, true, out);
            return (None, Flow::Continue);
        }
        C::Publish { channel, message } => {
            Reply::Int(shared.pubsub.publish(&channel, &message) as i64)
        }
        C::Quit => return (Some(Reply::ok()), Flow::Close),
        C::Shutdown => {
            // As Redis: no reply on success, the connection just closes.
            shared.shutdown.notify_one();
            return (None, Flow::Close);
        }
        other => server::execute(shared, session, other),
    };
    (Some(reply), Flow::Continue)
}
