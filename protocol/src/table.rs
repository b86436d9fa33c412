//! The command table: one row per command, driving name lookup, arity checks,
//! `COMMAND COUNT/INFO/DOCS` and key positions (for cluster routing later).

use std::sync::LazyLock;

/// Static description of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Lower-case name as `COMMAND INFO` reports it.
    pub name: &'static str,
    /// Redis arity: `n > 0` means exactly n words (name included), `n < 0` at least -n.
    pub arity: i32,
    /// Redis command flags (`write`, `readonly`, `fast`, `denyoom`, ...).
    pub flags: &'static [&'static str],
    /// Position of the first key (0: none or movable).
    pub first_key: i32,
    /// Position of the last key (-1: the last argument).
    pub last_key: i32,
    /// Step between keys.
    pub step: i32,
    /// Documentation group (`string`, `generic`, `kvcache`, ...).
    pub group: &'static str,
    /// One-line summary for `COMMAND DOCS`.
    pub summary: &'static str,
    /// Version of tidepool (or of Redis, for Redis's commands) that introduced it.
    pub since: &'static str,
}

impl CommandSpec {
    /// Whether `argc` words (name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= (-self.arity) as usize
        }
    }

    /// Positions of the keys in `argc` words, from the table's first/last/step.
    /// Commands flagged `movablekeys` compute theirs from their arguments.
    pub fn key_positions(&self, argc: usize) -> impl Iterator<Item = usize> {
        let first = self.first_key.max(0) as usize;
        let last = if self.last_key < 0 {
            (argc as i64 + self.last_key as i64).max(0) as usize
        } else {
            self.last_key as usize
        };
        let step = self.step.max(1) as usize;
        let range = if first == 0 { 0..0 } else { first..last + 1 };
        range.step_by(step)
    }
}

macro_rules! spec {
    ($name:literal, $arity:expr, [$($flag:literal),*], $first:expr, $last:expr, $step:expr, $group:literal, $since:literal, $summary:literal) => {
        CommandSpec {
            name: $name,
            arity: $arity,
            flags: &[$($flag),*],
            first_key: $first,
            last_key: $last,
            step: $step,
            group: $group,
            summary: $summary,
            since: $since,
        }
    };
}

/// Every command tidepool answers.
pub static COMMANDS: &[CommandSpec] = &[
    spec!("ping", -1, ["fast"], 0, 0, 0, "connection", "1.0.0", "Returns the server's liveliness response."),
    spec!("echo", 2, ["fast"], 0, 0, 0, "connection", "1.0.0", "Returns the given string."),
    spec!("hello", -1, ["noscript", "loading", "stale", "fast", "no_auth"], 0, 0, 0, "connection", "6.0.0", "Handshakes with the server, optionally switching protocol version."),
    spec!("auth", -2, ["noscript", "loading", "stale", "fast", "no_auth"], 0, 0, 0, "connection", "1.0.0", "Authenticates the connection."),
    spec!("select", 2, ["loading", "stale", "fast"], 0, 0, 0, "connection", "1.0.0", "Changes the selected database (only 0 exists)."),
    spec!("quit", -1, ["noscript", "loading", "stale", "fast", "no_auth"], 0, 0, 0, "connection", "1.0.0", "Closes the connection."),
    spec!("reset", 1, ["noscript", "loading", "stale", "fast", "no_auth"], 0, 0, 0, "connection", "6.2.0", "Resets the connection."),
    spec!("multi", 1, ["noscript", "loading", "stale", "fast", "allow_busy"], 0, 0, 0, "transactions", "1.2.0", "Starts a transaction: commands are queued until EXEC."),
    spec!("exec", 1, ["noscript", "loading", "stale", "skip_slowlog"], 0, 0, 0, "transactions", "1.2.0", "Runs the queued commands, in order, and returns their replies."),
    spec!("discard", 1, ["noscript", "loading", "stale", "fast", "allow_busy"], 0, 0, 0, "transactions", "2.0.0", "Drops the queued commands."),
    spec!("watch", -2, ["noscript", "loading", "stale", "fast", "allow_busy"], 1, -1, 1, "transactions", "2.2.0", "Refused: EXEC is not isolated from other clients, so a watch could not be honoured."),
    spec!("unwatch", 1, ["noscript", "loading", "stale", "fast", "allow_busy"], 0, 0, 0, "transactions", "2.2.0", "Forgets watched keys (there are none)."),
    spec!("client", -2, ["admin", "noscript", "loading", "stale"], 0, 0, 0, "connection", "2.4.0", "Client connection commands (SETNAME, GETNAME, ID, LIST, INFO)."),
    spec!("command", -1, ["loading", "stale"], 0, 0, 0, "server", "2.8.13", "Returns information about commands (COUNT, INFO, DOCS)."),
    spec!("config", -2, ["admin", "noscript", "loading", "stale"], 0, 0, 0, "server", "2.0.0", "Reads or changes the server's settings (GET, SET)."),
    spec!("info", -1, ["loading", "stale"], 0, 0, 0, "server", "1.0.0", "Returns information and statistics about the server."),
    spec!("time", 1, ["loading", "stale", "fast"], 0, 0, 0, "server", "2.6.0", "Returns the server's time: Unix seconds and microseconds."),
    spec!("role", 1, ["noscript", "loading", "stale", "fast"], 0, 0, 0, "server", "2.8.12", "Returns the replication role (always master)."),
    spec!("slowlog", -2, ["admin", "loading", "stale"], 0, 0, 0, "server", "2.2.12", "The slow log: GET [count], LEN, RESET."),
    spec!("latency", -2, ["admin", "noscript", "loading", "stale"], 0, 0, 0, "server", "2.8.13", "The latency monitor: LATEST, HISTORY event, DOCTOR, RESET [event ...]."),
    spec!("monitor", 1, ["admin", "noscript", "loading", "stale"], 0, 0, 0, "server", "1.0.0", "Streams every command the server receives."),
    spec!("cluster", -2, ["loading", "stale"], 0, 0, 0, "cluster", "3.0.0", "Cluster mode: INFO, MYID, NODES, SLOTS, SHARDS, KEYSLOT, COUNTKEYSINSLOT, GETKEYSINSLOT."),
    spec!("readonly", 1, ["loading", "stale", "fast"], 0, 0, 0, "cluster", "3.0.0", "Accepted: there are no replicas to read from."),
    spec!("readwrite", 1, ["loading", "stale", "fast"], 0, 0, 0, "cluster", "3.0.0", "Accepted: there are no replicas to read from."),
    spec!("dbsize", 1, ["readonly", "fast"], 0, 0, 0, "server", "1.0.0", "Returns the number of keys."),
    spec!("shutdown", -1, ["admin", "noscript", "loading", "stale", "no_async_loading"], 0, 0, 0, "server", "1.0.0", "Stops the server (nothing is persisted, so NOSAVE and SAVE are accepted alike)."),
    spec!("flushdb", -1, ["write"], 0, 0, 0, "server", "1.0.0", "Removes all keys."),
    spec!("flushall", -1, ["write"], 0, 0, 0, "server", "1.0.0", "Removes all keys."),
    spec!("memory", -2, ["readonly"], 0, 0, 0, "server", "4.0.0", "Memory introspection (USAGE)."),
    spec!("object", -2, ["readonly"], 0, 0, 0, "generic", "2.2.3", "Object introspection (ENCODING)."),
    spec!("scan", -2, ["readonly"], 0, 0, 0, "generic", "2.8.0", "Iterates over the key names."),
    spec!("keys", 2, ["readonly"], 0, 0, 0, "generic", "1.0.0", "Returns all key names that match a pattern."),
    spec!("type", 2, ["readonly", "fast"], 1, 1, 1, "generic", "1.0.0", "Returns the type of the value at a key."),
    spec!("exists", -2, ["readonly", "fast"], 1, -1, 1, "generic", "1.0.0", "Counts how many of the keys exist."),
    spec!("del", -2, ["write"], 1, -1, 1, "generic", "1.0.0", "Deletes keys (and the blocks chained under them)."),
    spec!("unlink", -2, ["write", "fast"], 1, -1, 1, "generic", "4.0.0", "Deletes keys (and the blocks chained under them)."),
    spec!("ttl", 2, ["readonly", "fast"], 1, 1, 1, "generic", "1.0.0", "Returns the remaining time to live of a key in seconds."),
    spec!("pttl", 2, ["readonly", "fast"], 1, 1, 1, "generic", "2.6.0", "Returns the remaining time to live of a key in milliseconds."),
    spec!("expire", -3, ["write", "fast"], 1, 1, 1, "generic", "1.0.0", "Sets a key's time to live in seconds."),
    spec!("pexpire", -3, ["write", "fast"], 1, 1, 1, "generic", "2.6.0", "Sets a key's time to live in milliseconds."),
    spec!("persist", 2, ["write", "fast"], 1, 1, 1, "generic", "2.2.0", "Removes a key's expiration."),
    spec!("get", 2, ["readonly", "fast"], 1, 1, 1, "string", "1.0.0", "Returns the value of a key."),
    spec!("set", -3, ["write", "denyoom"], 1, 1, 1, "string", "1.0.0", "Sets the value of a key (EX, PX, NX, XX, KEEPTTL, GET)."),
    spec!("mget", -2, ["readonly", "fast"], 1, -1, 1, "string", "1.0.0", "Returns the values of several keys."),
    spec!("mset", -3, ["write", "denyoom"], 1, -1, 2, "string", "1.0.1", "Sets several keys."),
    spec!("setex", 4, ["write", "denyoom"], 1, 1, 1, "string", "2.0.0", "Sets a key's value and its time to live in seconds."),
    spec!("psetex", 4, ["write", "denyoom"], 1, 1, 1, "string", "2.6.0", "Sets a key's value and its time to live in milliseconds."),
    spec!("setnx", 3, ["write", "denyoom", "fast"], 1, 1, 1, "string", "1.0.0", "Sets a key's value only when the key does not exist: 1 if set, 0 if not."),
    spec!("getdel", 2, ["write", "fast"], 1, 1, 1, "string", "6.2.0", "Returns a key's value and deletes the key (and the blocks chained under it)."),
    spec!("getex", -2, ["write", "fast"], 1, 1, 1, "string", "6.2.0", "Returns a key's value, optionally setting or removing its time to live."),
    spec!("incr", 2, ["write", "denyoom", "fast"], 1, 1, 1, "string", "1.0.0", "Refused: tidepool stores KV blocks, not counters."),
    spec!("decr", 2, ["write", "denyoom", "fast"], 1, 1, 1, "string", "1.0.0", "Refused: tidepool stores KV blocks, not counters."),
    spec!("incrby", 3, ["write", "denyoom", "fast"], 1, 1, 1, "string", "1.0.0", "Refused: tidepool stores KV blocks, not counters."),
    spec!("decrby", 3, ["write", "denyoom", "fast"], 1, 1, 1, "string", "1.0.0", "Refused: tidepool stores KV blocks, not counters."),
    spec!("incrbyfloat", 3, ["write", "denyoom", "fast"], 1, 1, 1, "string", "2.6.0", "Refused: tidepool stores KV blocks, not counters."),
    spec!("append", 3, ["write", "denyoom", "fast"], 1, 1, 1, "string", "2.0.0", "Refused: blocks are written whole, never grown."),
    spec!("strlen", 2, ["readonly", "fast"], 1, 1, 1, "string", "2.2.0", "Returns the length of a value."),
    spec!("subscribe", -2, ["pubsub", "noscript", "loading", "stale"], 0, 0, 0, "pubsub", "2.0.0", "Listens for messages published to channels."),
    spec!("psubscribe", -2, ["pubsub", "noscript", "loading", "stale"], 0, 0, 0, "pubsub", "2.0.0", "Listens for messages published to channels matching patterns."),
    spec!("unsubscribe", -1, ["pubsub", "noscript", "loading", "stale"], 0, 0, 0, "pubsub", "2.0.0", "Stops listening to channels."),
    spec!("punsubscribe", -1, ["pubsub", "noscript", "loading", "stale"], 0, 0, 0, "pubsub", "2.0.0", "Stops listening to channel patterns."),
    spec!("publish", 3, ["pubsub", "loading", "stale", "fast"], 0, 0, 0, "pubsub", "2.0.0", "Posts a message to a channel."),
    spec!("kv.put", -3, ["write", "denyoom"], 1, 1, 1, "kvcache", "0.1.0", "Stores one KV block: KV.PUT key value [PARENT pkey] [TTL ms] [TIER gpu|dram|ssd] [PIN]."),
    spec!("kv.mput", -4, ["write", "denyoom", "movablekeys"], 0, 0, 0, "kvcache", "0.1.0", "Stores blocks: KV.MPUT numblocks key value [key value ...] [CHAIN] [PARENT pkey]."),
    spec!("kv.get", 2, ["readonly", "fast"], 1, 1, 1, "kvcache", "0.1.0", "Returns one block's bytes."),
    spec!("kv.mget", -2, ["readonly", "fast"], 1, -1, 1, "kvcache", "0.1.0", "Returns several blocks' bytes."),
    spec!("kv.match", -3, ["readonly", "movablekeys"], 0, 0, 0, "kvcache", "0.1.0", "Counts the stored prefix of a chain: KV.MATCH numkeys key [key ...] [LEASE ms] [WITHTIERS] [WITHNODES]."),
    spec!("kv.matchtokens", -3, ["readonly"], 0, 0, 0, "kvcache", "0.1.0", "Hashes a token sequence into a chain and counts its stored prefix: KV.MATCHTOKENS seed block_tokens t1 t2 ... [LEASE ms] [WITHTIERS] [WITHNODES]."),
    spec!("kv.hash", -3, ["readonly", "fast"], 0, 0, 0, "kvcache", "0.1.0", "Returns the chain keys of a token sequence: KV.HASH seed block_tokens t1 t2 ..."),
    spec!("kv.exists", -2, ["readonly", "fast"], 1, -1, 1, "kvcache", "0.1.0", "Returns each key's tier, or nil."),
    spec!("kv.peer", -3, ["write", "movablekeys"], 0, 0, 0, "kvcache", "0.1.0", "What cluster nodes ask each other, answered from this node's store alone: KV.PEER MATCH numkeys key [key ...] [LEASE ms] [WITHTIERS] | EXISTS key [key ...] | TRIM lease keep | IMPORT epoch key value [PARENT pkey] [TTL ms] [PIN] | FORGET epoch key [key ...]."),
    spec!("kv.del", -2, ["write"], 1, -1, 1, "kvcache", "0.1.0", "Deletes blocks (and the blocks chained under them)."),
    spec!("kv.verify", -2, ["write"], 1, -1, 1, "kvcache", "0.1.0", "Checks blocks against their checksums: ok, corrupt (dropped, with the blocks chained under it), unchecked (stored without one), or nil."),
    spec!("kv.pin", -2, ["write", "fast"], 1, -1, 1, "kvcache", "0.1.0", "Pins blocks against eviction."),
    spec!("kv.unpin", -2, ["write", "fast"], 1, -1, 1, "kvcache", "0.1.0", "Unpins blocks."),
    spec!("kv.release", 2, ["write", "fast"], 0, 0, 0, "kvcache", "0.1.0", "Releases a lease taken by KV.MATCH ... LEASE or KV.LOCATE."),
    spec!("kv.reserve", -3, ["write", "denyoom", "movablekeys"], 0, 0, 0, "kvcache", "0.1.0", "Reserves blocks to be written over the data plane: KV.RESERVE key len [key len ...], or KV.RESERVE numblocks key len [key len ...] [VIA tcp|shm|rdma] [PARENT pkey] [CHAIN] [TTL ms]."),
    spec!("kv.commit", -2, ["write", "fast"], 0, 0, 0, "kvcache", "0.1.0", "Makes reserved blocks visible once their bytes are written: KV.COMMIT token [token ...] [CHECKSUMS sum [sum ...]]."),
    spec!("kv.abort", -2, ["write", "fast"], 0, 0, 0, "kvcache", "0.1.0", "Drops reservations: KV.ABORT token [token ...]."),
    spec!("kv.locate", -3, ["readonly", "movablekeys"], 0, 0, 0, "kvcache", "0.1.0", "Returns read descriptors of blocks under a lease: KV.LOCATE numkeys key [key ...] [LEASE ms] [VIA tcp|shm|rdma]."),
    spec!("kv.dataplane", 1, ["readonly", "fast"], 0, 0, 0, "kvcache", "0.1.0", "Describes the data plane: the tcp data port, the shm socket and arena, rdma."),
    spec!("kv.stats", 1, ["readonly"], 0, 0, 0, "kvcache", "0.1.0", "Returns per-tier statistics and the prefix hit ratio."),
];

/// Longest command name.
const MAX_NAME: usize = 16;

/// Commands bucketed by name length: a lookup compares a handful of names,
/// case-insensitively, without hashing or lower-casing the request's bytes.
static BY_LEN: LazyLock<Vec<Vec<&'static CommandSpec>>> = LazyLock::new(|| {
    let mut by_len = vec![Vec::new(); MAX_NAME + 1];
    for c in COMMANDS {
        assert!(c.name.len() <= MAX_NAME, "raise MAX_NAME for {}", c.name);
        by_len[c.name.len()].push(c);
    }
    by_len
});

/// Looks a command up by name, ignoring ASCII case.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    BY_LEN
        .get(name.len())?
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
        .copied()
}

/// The position of a row of [`COMMANDS`] (what per-command counters are
/// indexed by).
pub fn index_of(spec: &'static CommandSpec) -> usize {
    let at = (spec as *const CommandSpec as usize).wrapping_sub(COMMANDS.as_ptr() as usize)
        / std::mem::size_of::<CommandSpec>();
    debug_assert!(std::ptr::eq(&COMMANDS[at], spec), "a row of COMMANDS");
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_know_their_index() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert_eq!(index_of(c), i);
            assert_eq!(index_of(lookup(c.name.as_bytes()).unwrap()), i);
        }
    }

    #[test]
    fn lookup_ignores_case_and_checks_arity() {
        let get = lookup(b"GeT").unwrap();
        assert_eq!(get.name, "get");
        assert!(get.arity_ok(2) && !get.arity_ok(3));
        let mset = lookup(b"MSET").unwrap();
        assert!(mset.arity_ok(5) && !mset.arity_ok(2));
        assert_eq!(mset.key_positions(5).collect::<Vec<_>>(), vec![1, 3]);
        assert!(lookup(b"nope").is_none());
        assert!(lookup(&[b'x'; 100]).is_none());
        let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len(), "duplicate names in the table");
        for c in COMMANDS {
            assert_eq!(lookup(c.name.to_uppercase().as_bytes()), Some(c));
        }
    }
}
