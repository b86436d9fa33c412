//! Typed commands: argument vectors checked against the table and parsed.
//!
//! [`Command::parse`] looks the name up in [`crate::table`], checks arity with
//! Redis's wording, and turns the arguments into a variant carrying typed fields,
//! so the server never re-parses strings. Keys stay `Bytes`: binary, zero-copy.

use bytes::Bytes;

use crate::error::CommandError;
use crate::keys::KeyList;
use crate::request::Frame;
use crate::table::{self, CommandSpec};

/// Expiry option of `SET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetExpiry {
    /// `EX seconds` / `PX milliseconds`, as milliseconds from now.
    In(u64),
    /// `EXAT` / `PXAT`, as a Unix time in milliseconds.
    At(u64),
    /// `KEEPTTL`.
    Keep,
}

/// A CLUSTER subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSub {
    /// CLUSTER INFO.
    Info,
    /// CLUSTER MYID.
    MyId,
    /// CLUSTER NODES.
    Nodes,
    /// CLUSTER SLOTS.
    Slots,
    /// CLUSTER SHARDS.
    Shards,
    /// CLUSTER KEYSLOT key.
    KeySlot(Bytes),
    /// CLUSTER COUNTKEYSINSLOT slot.
    CountKeysInSlot(u16),
    /// CLUSTER GETKEYSINSLOT slot count.
    GetKeysInSlot(u16, usize),
}

/// Which clients CLIENT KILL closes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientKill {
    /// The old form, `CLIENT KILL addr`: answers OK or an error, not a count.
    pub legacy: bool,
    /// `ID`.
    pub id: Option<u64>,
    /// `ADDR` (or the old form's address).
    pub addr: Option<String>,
    /// `LADDR`.
    pub laddr: Option<String>,
    /// `TYPE`, lower case.
    pub kind: Option<String>,
    /// `USER`.
    pub user: Option<String>,
    /// `MAXAGE` seconds.
    pub max_age: Option<u64>,
    /// `SKIPME` (default yes).
    pub skip_me: bool,
}

/// Condition of `SET` (NX/XX) and of `EXPIRE` (NX/XX/GT/LT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cond {
    /// No condition.
    #[default]
    Always,
    /// Only if the key (or its expiry) does not exist.
    Nx,
    /// Only if it exists.
    Xx,
    /// Only if the new expiry is greater.
    Gt,
    /// Only if the new expiry is less.
    Lt,
}

/// Tier named by `KV.PUT ... TIER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierName {
    /// Device memory.
    Gpu,
    /// Host memory.
    Dram,
    /// Local or remote flash.
    Ssd,
}

impl TierName {
    /// Parses `gpu`, `dram` or `ssd`, ignoring case.
    pub fn parse(b: &[u8]) -> Option<TierName> {
        if b.eq_ignore_ascii_case(b"gpu") {
            Some(TierName::Gpu)
        } else if b.eq_ignore_ascii_case(b"dram") {
            Some(TierName::Dram)
        } else if b.eq_ignore_ascii_case(b"ssd") {
            Some(TierName::Ssd)
        } else {
            None
        }
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TierName::Gpu => "gpu",
            TierName::Dram => "dram",
            TierName::Ssd => "ssd",
        }
    }
}

/// Options shared by `KV.MATCH` and `KV.MATCHTOKENS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatchOpts {
    /// `LEASE ms`: pin the matched blocks for this long.
    pub lease_ms: Option<u64>,
    /// `WITHTIERS`: report each matched block's tier.
    pub with_tiers: bool,
    /// `WITHNODES`: report each matched block's node (`host:port`).
    pub with_nodes: bool,
    /// Answer from this node's store alone (`KV.PEER MATCH`, what the
    /// nodes of a cluster ask each other): keys in slots it does not own
    /// count as missing, and no other node is asked.
    pub local: bool,
}

/// A data-plane transport named in `VIA` (see the transport crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The TCP data port.
    Tcp,
    /// The shared-memory arena.
    Shm,
    /// RDMA.
    Rdma,
}

impl Via {
    fn parse(b: &[u8]) -> Result<Via, CommandError> {
        if eq(b, "tcp") {
            Ok(Via::Tcp)
        } else if eq(b, "shm") {
            Ok(Via::Shm)
        } else if eq(b, "rdma") {
            Ok(Via::Rdma)
        } else {
            Err(CommandError::err("VIA must be tcp, shm or rdma"))
        }
    }
}

/// Options of `KV.RESERVE`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReserveOpts {
    /// `VIA t`: the transport the client will write with (default tcp).
    pub via: Option<Via>,
    /// `PARENT pkey`: parent of the first block (of every block without CHAIN).
    pub parent: Option<Bytes>,
    /// `CHAIN`: each block's parent is the one before it.
    pub chain: bool,
    /// `TTL ms` of the committed blocks.
    pub ttl_ms: Option<u64>,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // variant fields are named after the command's arguments
pub enum Command {
    Ping(Option<Bytes>),
    Echo(Bytes),
    Hello {
        proto: Option<i64>,
        auth: Option<(Bytes, Bytes)>,
        setname: Option<Bytes>,
    },
    Auth {
        user: Option<Bytes>,
        pass: Bytes,
    },
    Select(i64),
    Quit,
    Reset,
    /// MULTI: start queueing.
    Multi,
    /// EXEC: run the queue.
    Exec,
    /// DISCARD: drop the queue.
    Discard,
    /// WATCH keys (refused).
    Watch(Vec<Bytes>),
    /// UNWATCH.
    Unwatch,
    CommandAll,
    CommandCount,
    CommandInfo(Vec<Bytes>),
    CommandDocs(Vec<Bytes>),
    ClientSetName(Bytes),
    ClientGetName,
    ClientId,
    /// CLIENT LIST [TYPE normal|pubsub|master|replica] [ID id ...].
    ClientList {
        /// `TYPE`, lower case.
        kind: Option<String>,
        /// `ID`s.
        ids: Vec<u64>,
    },
    ClientInfo,
    /// CLIENT KILL: the old form (`addr`) or filters.
    ClientKill(ClientKill),
    /// CLIENT PAUSE ms [WRITE|ALL].
    ClientPause {
        /// How long.
        ms: u64,
        /// WRITE: only writes wait.
        writes_only: bool,
    },
    /// CLIENT UNPAUSE.
    ClientUnpause,
    /// CLIENT NO-EVICT on|off.
    ClientNoEvict,
    /// CLIENT SETINFO LIB-NAME|LIB-VER value.
    ClientSetInfo {
        /// True for LIB-NAME, false for LIB-VER.
        name: bool,
        /// The value.
        value: Bytes,
    },
    ConfigGet(Vec<Bytes>),
    ConfigSet(Vec<(Bytes, Bytes)>),
    ConfigResetStat,
    Info(Vec<Bytes>),
    DbSize,
    FlushAll,
    Shutdown,
    MemoryUsage(Bytes),
    ObjectEncoding(Bytes),
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        kind: Option<Bytes>,
    },
    Keys(Bytes),
    Type(Bytes),
    Exists(Vec<Bytes>),
    Del(Vec<Bytes>),
    Ttl {
        key: Bytes,
        millis: bool,
    },
    Expire {
        key: Bytes,
        ms: i64,
        cond: Cond,
    },
    Persist(Bytes),
    /// SETNX key value: SET ... NX answering 1 or 0.
    SetNx {
        key: Bytes,
        value: Bytes,
    },
    /// GETDEL key.
    GetDel(Bytes),
    /// GETEX key [EX|PX|EXAT|PXAT n | PERSIST]: `None` leaves the TTL,
    /// `Some(None)` removes it.
    GetEx {
        key: Bytes,
        expiry: Option<Option<SetExpiry>>,
    },
    /// A Redis command tidepool refuses on purpose, with why.
    Refused(&'static str),
    /// TIME.
    Time,
    /// ROLE.
    Role,
    /// `<CONTAINER> HELP`: the container's lines.
    Help(&'static str),
    /// SLOWLOG GET [count]: `None` for the default 10, -1 for all.
    SlowlogGet(Option<i64>),
    /// SLOWLOG LEN.
    SlowlogLen,
    /// SLOWLOG RESET.
    SlowlogReset,
    /// LATENCY LATEST.
    LatencyLatest,
    /// LATENCY HISTORY event.
    LatencyHistory(Bytes),
    /// LATENCY DOCTOR.
    LatencyDoctor,
    /// LATENCY RESET [event ...].
    LatencyReset(Vec<Bytes>),
    /// MONITOR.
    Monitor,
    /// MEMORY STATS.
    MemoryStats,
    /// CLUSTER subcommands.
    Cluster(ClusterSub),
    /// READONLY / READWRITE (accepted: there are no replicas to read from).
    ReadMode,
    /// MEMORY DOCTOR.
    MemoryDoctor,
    Get(Bytes),
    Set {
        key: Bytes,
        value: Bytes,
        expiry: Option<SetExpiry>,
        cond: Cond,
        get: bool,
    },
    MGet(Vec<Bytes>),
    MSet(Vec<(Bytes, Bytes)>),
    Strlen(Bytes),
    Subscribe(Vec<Bytes>),
    PSubscribe(Vec<Bytes>),
    Unsubscribe(Vec<Bytes>),
    PUnsubscribe(Vec<Bytes>),
    Publish {
        channel: Bytes,
        message: Bytes,
    },
    KvPut {
        key: Bytes,
        value: Bytes,
        parent: Option<Bytes>,
        ttl_ms: Option<u64>,
        tier: Option<TierName>,
        pin: bool,
    },
    KvMPut {
        blocks: Vec<(Bytes, Bytes)>,
        chain: bool,
        parent: Option<Bytes>,
    },
    KvGet(Bytes),
    KvMGet(Vec<Bytes>),
    KvMatch {
        keys: KeyList,
        opts: MatchOpts,
    },
    KvMatchTokens {
        seed: Bytes,
        block_tokens: u32,
        tokens: Vec<u32>,
        opts: MatchOpts,
    },
    KvHash {
        seed: Bytes,
        block_tokens: u32,
        tokens: Vec<u32>,
    },
    KvExists(Vec<Bytes>),
    /// `KV.PEER EXISTS key ...`: KV.EXISTS from this node's store alone.
    KvPeerExists(Vec<Bytes>),
    /// `KV.PEER TRIM lease keep`: keeps the first `keep` blocks of a lease.
    KvPeerTrim {
        lease: u64,
        keep: u64,
    },
    /// `KV.PEER IMPORT epoch key value [PARENT pkey] [TTL ms] [PIN]`: a
    /// block handed over by the node giving its slot away in the pending
    /// map of `epoch`.
    KvPeerImport {
        epoch: u64,
        key: Bytes,
        value: Bytes,
        parent: Option<Bytes>,
        ttl_ms: Option<u64>,
        pin: bool,
    },
    /// `KV.PEER FORGET epoch key ...`: blocks deleted at the node handing
    /// their slot over after it sent them.
    KvPeerForget {
        epoch: u64,
        keys: Vec<Bytes>,
    },
    KvDel(Vec<Bytes>),
    KvVerify(Vec<Bytes>),
    KvPin(Vec<Bytes>),
    KvUnpin(Vec<Bytes>),
    KvRelease(u64),
    KvStats,
    KvReserve {
        blocks: Vec<(Bytes, u64)>,
        opts: ReserveOpts,
    },
    /// KV.COMMIT: tokens, and the client's checksum of each block when it
    /// gave them (`CHECKSUMS`, one per token, in the same order).
    KvCommit {
        tokens: Vec<u64>,
        checksums: Option<Vec<u64>>,
    },
    KvAbort(Vec<u64>),
    KvLocate {
        keys: Vec<Bytes>,
        lease_ms: Option<u64>,
        via: Option<Via>,
    },
    KvDataplane,
}

/// Parses a signed decimal integer argument (Redis's `string2ll` rules).
pub fn parse_i64(b: &[u8]) -> Result<i64, CommandError> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| !(s.starts_with('+') || s.len() > 1 && s.starts_with('0')))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(CommandError::not_integer)
}

/// Parses a non-negative integer argument.
pub fn parse_u64(b: &[u8]) -> Result<u64, CommandError> {
    let v = parse_i64(b)?;
    u64::try_from(v).map_err(|_| CommandError::not_integer())
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Parses a positive millisecond count for an option such as `LEASE` or `TTL`.
fn parse_ms(b: &[u8], what: &str) -> Result<u64, CommandError> {
    match parse_i64(b) {
        Ok(v) if v > 0 => Ok(v as u64),
        _ => Err(CommandError::err(format!(
            "{what} must be a positive integer (milliseconds)"
        ))),
    }
}

/// Parses KV.RESERVE's arguments, in either of its forms:
/// `key len [key len ...]` (no options), or
/// `numblocks key len [key len ...] [VIA t] [PARENT pkey] [CHAIN] [TTL ms]`.
/// The plain form has an even number of arguments, every second one an
/// integer; the counted form never does (an odd count without CHAIN, and
/// CHAIN, not an integer, at an odd position with it), so the two never
/// read the same arguments differently.
fn parse_reserve(a: &[Bytes]) -> Result<(Vec<(Bytes, u64)>, ReserveOpts), CommandError> {
    let len_of = |b: &Bytes| {
        parse_u64(b).map_err(|_| CommandError::err("block length must be a non-negative integer"))
    };
    let plain =
        a.len().is_multiple_of(2) && a.iter().skip(1).step_by(2).all(|b| parse_u64(b).is_ok());
    if plain {
        let blocks = a
            .chunks_exact(2)
            .map(|p| Ok((p[0].clone(), len_of(&p[1])?)))
            .collect::<Result<_, CommandError>>()?;
        return Ok((blocks, ReserveOpts::default()));
    }
    let (n, rest) = parse_numkeys(a, 2)?;
    let blocks = rest[..2 * n]
        .chunks_exact(2)
        .map(|p| Ok((p[0].clone(), len_of(&p[1])?)))
        .collect::<Result<_, CommandError>>()?;
    let mut opts = ReserveOpts::default();
    let o = &rest[2 * n..];
    let mut i = 0;
    while i < o.len() {
        let has_arg = i + 1 < o.len();
        if eq(&o[i], "CHAIN") {
            opts.chain = true;
            i += 1;
            continue;
        } else if eq(&o[i], "VIA") && has_arg {
            opts.via = Some(Via::parse(&o[i + 1])?);
        } else if eq(&o[i], "PARENT") && has_arg {
            opts.parent = Some(o[i + 1].clone());
        } else if eq(&o[i], "TTL") && has_arg {
            opts.ttl_ms = Some(parse_ms(&o[i + 1], "TTL")?);
        } else {
            return Err(CommandError::syntax());
        }
        i += 2;
    }
    Ok((blocks, opts))
}

fn parse_tokens_list(a: &[Bytes]) -> Result<Vec<u64>, CommandError> {
    a.iter()
        .map(|b| parse_u64(b).map_err(|_| CommandError::err("invalid token")))
        .collect()
}

/// `token [token ...] [CHECKSUMS sum [sum ...]]`: as many sums as tokens.
fn parse_commit(a: &[Bytes]) -> Result<Command, CommandError> {
    let Some(at) = a.iter().position(|x| eq(x, "CHECKSUMS")) else {
        return Ok(Command::KvCommit {
            tokens: parse_tokens_list(a)?,
            checksums: None,
        });
    };
    let tokens = parse_tokens_list(&a[..at])?;
    let sums = a[at + 1..]
        .iter()
        .map(|b| parse_checksum(b).ok_or_else(|| CommandError::err("invalid checksum")))
        .collect::<Result<Vec<u64>, _>>()?;
    if tokens.is_empty() || sums.len() != tokens.len() {
        return Err(CommandError::err(format!(
            "{} checksums for {} tokens (CHECKSUMS gives one per token)",
            sums.len(),
            tokens.len()
        )));
    }
    Ok(Command::KvCommit {
        tokens,
        checksums: Some(sums),
    })
}

/// A block checksum: a decimal 64-bit unsigned integer (the whole range, so
/// not through `parse_u64`, which stops at Redis's signed limit).
fn parse_checksum(b: &[u8]) -> Option<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn pairs(args: &[Bytes]) -> Vec<(Bytes, Bytes)> {
    args.chunks_exact(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

fn parse_match_opts(opts: &[Bytes]) -> Result<MatchOpts, CommandError> {
    let mut out = MatchOpts::default();
    let mut i = 0;
    while i < opts.len() {
        if eq(&opts[i], "LEASE") && i + 1 < opts.len() {
            out.lease_ms = Some(parse_ms(&opts[i + 1], "LEASE")?);
            i += 2;
        } else if eq(&opts[i], "WITHTIERS") {
            out.with_tiers = true;
            i += 1;
        } else if eq(&opts[i], "WITHNODES") {
            out.with_nodes = true;
            i += 1;
        } else {
            return Err(CommandError::syntax());
        }
    }
    Ok(out)
}

/// `KV.PEER MATCH numkeys key ... [LEASE ms] [WITHTIERS]`, `KV.PEER EXISTS
/// key ...`, `KV.PEER TRIM lease keep`, `KV.PEER IMPORT epoch key value [PARENT
/// pkey] [TTL ms] [PIN]` and `KV.PEER FORGET epoch key ...` (after
/// `IMPORT`, the pending map's epoch): what cluster nodes ask each other.
fn parse_peer(a: &[Bytes]) -> Result<Command, CommandError> {
    let sub = &a[0];
    let rest = &a[1..];
    let int = |b: &Bytes| {
        parse_u64(b).map_err(|_| CommandError::err("value is not an integer or out of range"))
    };
    if eq(sub, "MATCH") && !rest.is_empty() {
        let (n, _) = parse_numkeys(rest, 1)?;
        let mut opts = parse_match_opts(&rest[1 + n..])?;
        if opts.with_nodes {
            return Err(CommandError::syntax());
        }
        opts.local = true;
        Ok(Command::KvMatch {
            keys: rest[1..1 + n].iter().collect(),
            opts,
        })
    } else if eq(sub, "EXISTS") && !rest.is_empty() {
        Ok(Command::KvPeerExists(rest.to_vec()))
    } else if eq(sub, "IMPORT") && rest.len() >= 3 {
        let epoch = int(&rest[0])?;
        let rest = &rest[1..];
        let (mut parent, mut ttl_ms, mut pin) = (None, None, false);
        let mut i = 2;
        while i < rest.len() {
            if eq(&rest[i], "PARENT") && i + 1 < rest.len() {
                parent = Some(rest[i + 1].clone());
                i += 2;
            } else if eq(&rest[i], "TTL") && i + 1 < rest.len() {
                ttl_ms = Some(parse_ms(&rest[i + 1], "TTL")?);
                i += 2;
            } else if eq(&rest[i], "PIN") {
                pin = true;
                i += 1;
            } else {
                return Err(CommandError::syntax());
            }
        }
        Ok(Command::KvPeerImport {
            epoch,
            key: rest[0].clone(),
            value: rest[1].clone(),
            parent,
            ttl_ms,
            pin,
        })
    } else if eq(sub, "FORGET") && rest.len() >= 2 {
        Ok(Command::KvPeerForget {
            epoch: int(&rest[0])?,
            keys: rest[1..].to_vec(),
        })
    } else if eq(sub, "TRIM") && rest.len() == 2 {
        Ok(Command::KvPeerTrim {
            lease: int(&rest[0])?,
            keep: int(&rest[1])?,
        })
    } else {
        Err(CommandError::err(format!(
            "unknown subcommand or wrong number of arguments for 'KV.PEER {}'",
            String::from_utf8_lossy(sub)
        )))
    }
}

/// Parses `seed block_tokens t1 t2 ... [options]`: tokens run up to the first
/// argument that is not an integer.
/// A token sequence: seed, block size, tokens, and the arguments after them.
type Tokens<'a> = (Bytes, u32, Vec<u32>, &'a [Bytes]);

fn parse_tokens(args: &[Bytes]) -> Result<Tokens<'_>, CommandError> {
    let seed = args[0].clone();
    let block_tokens = parse_u64(&args[1])
        .ok()
        .filter(|n| (1..=1 << 20).contains(n))
        .ok_or_else(|| CommandError::err("block_tokens must be an integer in 1..=1048576"))?
        as u32;
    let mut tokens = Vec::with_capacity(args.len() - 2);
    let mut i = 2;
    while i < args.len() {
        let a = &args[i];
        if a.first().is_some_and(|c| c.is_ascii_alphabetic()) {
            break;
        }
        let t = parse_u64(a)
            .ok()
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| CommandError::err("tokens must be integers in 0..=4294967295"))?;
        tokens.push(t);
        i += 1;
    }
    Ok((seed, block_tokens, tokens, &args[i..]))
}

/// Parses `numkeys key [key ...]` and returns the keys and the rest.
fn parse_numkeys(args: &[Bytes], per_item: usize) -> Result<(usize, &[Bytes]), CommandError> {
    let n = parse_u64(&args[0])?;
    if n == 0 {
        return Err(CommandError::err("count must be at least 1"));
    }
    let need = (n as u128) * per_item as u128;
    if need > (args.len() - 1) as u128 {
        return Err(CommandError::err(
            "count is greater than the number of arguments",
        ));
    }
    Ok((n as usize, &args[1..]))
}

impl Command {
    /// Parses one request. `argv[0]` is the command name.
    pub fn parse(argv: &[Bytes]) -> Result<Command, CommandError> {
        Self::parse_with_spec(&mut argv.to_vec()).1
    }

    /// Parses one request as the parser framed it, and returns its table row.
    ///
    /// `KV.MATCH` keeps its keys in the request's buffer (no `Bytes` per key);
    /// every other request, and any `KV.MATCH` that is not well formed, goes
    /// through [`parse_with_spec`](Self::parse_with_spec), so both give the
    /// same answers.
    pub fn parse_frame(
        frame: Frame<'_>,
    ) -> (Option<&'static CommandSpec>, Result<Command, CommandError>) {
        if let Frame::Array { buf, spans } = &frame {
            let arg = |i: usize| &buf[spans[i].0..spans[i].0 + spans[i].1];
            if spans.len() >= 3 && eq(arg(0), "kv.match") {
                let n = parse_u64(arg(1))
                    .ok()
                    .filter(|n| (1..=spans.len() as u64 - 2).contains(n));
                if let Some(n) = n {
                    let at = 2 + n as usize;
                    let opts: Vec<Bytes> = spans[at..]
                        .iter()
                        .map(|&(o, len)| buf.slice(o..o + len))
                        .collect();
                    let parsed = parse_match_opts(&opts).map(|opts| Command::KvMatch {
                        keys: KeyList::from_spans(buf.clone(), spans[2..at].to_vec()),
                        opts,
                    });
                    return (table::lookup(arg(0)), parsed);
                }
            }
        }
        Self::parse_with_spec(&mut frame.into_args())
    }

    /// Parses one request and also returns its table row. An error for a known
    /// command (bad arity, bad argument) still names the row.
    ///
    /// Arguments may be moved out of `argv` (left empty) rather than cloned.
    pub fn parse_with_spec(
        argv: &mut [Bytes],
    ) -> (Option<&'static CommandSpec>, Result<Command, CommandError>) {
        let Some(name) = argv.first() else {
            return (None, Err(CommandError::err("empty command")));
        };
        let Some(spec) = table::lookup(name) else {
            return (None, Err(CommandError::unknown_command(name, &argv[1..])));
        };
        if !spec.arity_ok(argv.len()) {
            return (Some(spec), Err(CommandError::arity(spec.name)));
        }
        (Some(spec), Self::parse_known(spec, argv))
    }

    fn parse_known(spec: &CommandSpec, argv: &mut [Bytes]) -> Result<Command, CommandError> {
        // The hottest forms first, moving their arguments out instead of cloning.
        let take = std::mem::take::<Bytes>;
        match (spec.name, argv.len()) {
            ("get", _) => return Ok(Command::Get(take(&mut argv[1]))),
            ("kv.get", _) => return Ok(Command::KvGet(take(&mut argv[1]))),
            ("set", 3) => {
                return Ok(Command::Set {
                    key: take(&mut argv[1]),
                    value: take(&mut argv[2]),
                    expiry: None,
                    cond: Cond::Always,
                    get: false,
                })
            }
            ("kv.put", 3) => {
                return Ok(Command::KvPut {
                    key: take(&mut argv[1]),
                    value: take(&mut argv[2]),
                    parent: None,
                    ttl_ms: None,
                    tier: None,
                    pin: false,
                })
            }
            ("kv.match", _) => {
                let (n, _) = parse_numkeys(&argv[1..], 1)?;
                let opts = parse_match_opts(&argv[2 + n..])?;
                let keys = argv[2..2 + n].iter().collect();
                return Ok(Command::KvMatch { keys, opts });
            }
            _ => {}
        }
        let a = &argv[1..];
        if let ([sub], Some(_)) = (a, crate::help::lines(spec.name)) {
            if eq(sub, "HELP") {
                return Ok(Command::Help(spec.name));
            }
        }
        let key = || a[0].clone();
        let all = || a.to_vec();
        Ok(match spec.name {
            "ping" => match a.len() {
                0 => Command::Ping(None),
                1 => Command::Ping(Some(key())),
                _ => return Err(CommandError::arity("ping")),
            },
            "echo" => Command::Echo(key()),
            "hello" => parse_hello(a)?,
            "auth" => match a.len() {
                1 => Command::Auth {
                    user: None,
                    pass: key(),
                },
                2 => Command::Auth {
                    user: Some(key()),
                    pass: a[1].clone(),
                },
                _ => return Err(CommandError::syntax()),
            },
            "select" => Command::Select(parse_i64(&a[0])?),
            "quit" => Command::Quit,
            "reset" => Command::Reset,
            "multi" => Command::Multi,
            "exec" => Command::Exec,
            "discard" => Command::Discard,
            "watch" => Command::Watch(a.to_vec()),
            "unwatch" => Command::Unwatch,
            "command" => parse_command(a)?,
            "client" => parse_client(a)?,
            "config" => parse_config(a)?,
            "info" => Command::Info(all()),
            "dbsize" => Command::DbSize,
            "shutdown" => {
                for w in a {
                    if !["NOSAVE", "SAVE", "NOW", "FORCE", "ABORT"]
                        .iter()
                        .any(|o| eq(w, o))
                    {
                        return Err(CommandError::syntax());
                    }
                }
                Command::Shutdown
            }
            "flushdb" | "flushall" => {
                match a {
                    [] => {}
                    [m] if eq(m, "ASYNC") || eq(m, "SYNC") => {}
                    _ => return Err(CommandError::syntax()),
                }
                Command::FlushAll
            }
            "memory" => {
                if eq(&a[0], "STATS") && a.len() == 1 {
                    Command::MemoryStats
                } else if eq(&a[0], "DOCTOR") && a.len() == 1 {
                    Command::MemoryDoctor
                } else if eq(&a[0], "USAGE") {
                    if a.len() != 2 && !(a.len() == 4 && eq(&a[2], "SAMPLES")) {
                        return Err(CommandError::arity("memory|usage"));
                    }
                    Command::MemoryUsage(a[1].clone())
                } else {
                    return Err(CommandError::unknown_subcommand("memory", &a[0]));
                }
            }
            "object" => {
                if eq(&a[0], "ENCODING") {
                    if a.len() != 2 {
                        return Err(CommandError::arity("object|encoding"));
                    }
                    Command::ObjectEncoding(a[1].clone())
                } else {
                    return Err(CommandError::unknown_subcommand("object", &a[0]));
                }
            }
            "setex" | "psetex" => {
                // SETEX key seconds value: SET key value EX seconds.
                let mut set = vec![a[0].clone(), a[2].clone()];
                set.push(Bytes::from_static(if spec.name == "setex" {
                    b"EX"
                } else {
                    b"PX"
                }));
                set.push(a[1].clone());
                parse_set(&set).map_err(|e| match e.code {
                    "ERR" if e.msg.starts_with("invalid expire time") => {
                        CommandError::err(format!("invalid expire time in '{}' command", spec.name))
                    }
                    _ => e,
                })?
            }
            "setnx" => Command::SetNx {
                key: key(),
                value: a[1].clone(),
            },
            "getdel" => Command::GetDel(key()),
            "getex" => parse_getex(a)?,
            "incr" | "decr" | "incrby" | "decrby" | "incrbyfloat" | "append" => Command::Refused(
                "tidepool stores KV blocks, not counters or growing strings: INCR, DECR, \
                     INCRBY, DECRBY, INCRBYFLOAT and APPEND are not supported",
            ),
            "slowlog" => match (a[0].to_ascii_uppercase().as_slice(), a.len()) {
                (b"GET", 1) => Command::SlowlogGet(None),
                (b"GET", 2) => {
                    let n = parse_i64(&a[1]).ok().filter(|n| *n >= -1).ok_or_else(|| {
                        CommandError::err("count should be greater than or equal to -1")
                    })?;
                    Command::SlowlogGet(Some(n))
                }
                (b"LEN", 1) => Command::SlowlogLen,
                (b"RESET", 1) => Command::SlowlogReset,
                (b"GET" | b"LEN" | b"RESET", _) => {
                    return Err(CommandError::arity(&format!(
                        "slowlog|{}",
                        String::from_utf8_lossy(&a[0]).to_ascii_lowercase()
                    )))
                }
                _ => return Err(CommandError::unknown_subcommand("slowlog", &a[0])),
            },
            "latency" => match (a[0].to_ascii_uppercase().as_slice(), a.len()) {
                (b"LATEST", 1) => Command::LatencyLatest,
                (b"HISTORY", 2) => Command::LatencyHistory(a[1].clone()),
                (b"DOCTOR", 1) => Command::LatencyDoctor,
                (b"RESET", _) => Command::LatencyReset(a[1..].to_vec()),
                (b"LATEST" | b"HISTORY" | b"DOCTOR", _) => {
                    return Err(CommandError::arity(&format!(
                        "latency|{}",
                        String::from_utf8_lossy(&a[0]).to_ascii_lowercase()
                    )))
                }
                _ => return Err(CommandError::unknown_subcommand("latency", &a[0])),
            },
            "monitor" => Command::Monitor,
            "readonly" | "readwrite" => Command::ReadMode,
            "cluster" => {
                let slot = |b: &Bytes| {
                    parse_i64(b)
                        .ok()
                        .filter(|n| (0..16384).contains(n))
                        .map(|n| n as u16)
                        .ok_or_else(|| CommandError::err("Invalid slot"))
                };
                let sub = match (a[0].to_ascii_uppercase().as_slice(), a.len()) {
                    (b"INFO", 1) => ClusterSub::Info,
                    (b"MYID", 1) => ClusterSub::MyId,
                    (b"NODES", 1) => ClusterSub::Nodes,
                    (b"SLOTS", 1) => ClusterSub::Slots,
                    (b"SHARDS", 1) => ClusterSub::Shards,
                    (b"KEYSLOT", 2) => ClusterSub::KeySlot(a[1].clone()),
                    (b"COUNTKEYSINSLOT", 2) => ClusterSub::CountKeysInSlot(slot(&a[1])?),
                    (b"GETKEYSINSLOT", 3) => ClusterSub::GetKeysInSlot(
                        slot(&a[1])?,
                        parse_i64(&a[2])
                            .ok()
                            .filter(|n| *n >= 0)
                            .ok_or_else(|| CommandError::err("Invalid number of keys"))?
                            as usize,
                    ),
                    (
                        b"INFO" | b"MYID" | b"NODES" | b"SLOTS" | b"SHARDS" | b"KEYSLOT"
                        | b"COUNTKEYSINSLOT" | b"GETKEYSINSLOT",
                        _,
                    ) => {
                        return Err(CommandError::arity(&format!(
                            "cluster|{}",
                            String::from_utf8_lossy(&a[0]).to_ascii_lowercase()
                        )))
                    }
                    _ => return Err(CommandError::unknown_subcommand("cluster", &a[0])),
                };
                Command::Cluster(sub)
            }
            "time" => Command::Time,
            "role" => Command::Role,
            "scan" => parse_scan(a)?,
            "keys" => Command::Keys(key()),
            "type" => Command::Type(key()),
            "exists" => Command::Exists(all()),
            "del" | "unlink" => Command::Del(all()),
            "ttl" => Command::Ttl {
                key: key(),
                millis: false,
            },
            "pttl" => Command::Ttl {
                key: key(),
                millis: true,
            },
            "expire" | "pexpire" => {
                let n = parse_i64(&a[1])?;
                let ms = if spec.name == "expire" {
                    n.checked_mul(1000).ok_or_else(|| {
                        CommandError::err("invalid expire time in 'expire' command")
                    })?
                } else {
                    n
                };
                let cond = match &a[2..] {
                    [] => Cond::Always,
                    [c] if eq(c, "NX") => Cond::Nx,
                    [c] if eq(c, "XX") => Cond::Xx,
                    [c] if eq(c, "GT") => Cond::Gt,
                    [c] if eq(c, "LT") => Cond::Lt,
                    [_] => {
                        return Err(CommandError::err(format!(
                            "Unsupported option {}",
                            crate::error::printable(&a[2], 64)
                        )))
                    }
                    _ => {
                        return Err(CommandError::err(
                            "NX and XX, GT or LT options at the same time are not compatible",
                        ))
                    }
                };
                Command::Expire {
                    key: key(),
                    ms,
                    cond,
                }
            }
            "persist" => Command::Persist(key()),
            "get" => Command::Get(key()),
            "set" => parse_set(a)?,
            "mget" => Command::MGet(all()),
            "mset" => {
                if !a.len().is_multiple_of(2) {
                    return Err(CommandError::arity("mset"));
                }
                Command::MSet(pairs(a))
            }
            "strlen" => Command::Strlen(key()),
            "subscribe" => Command::Subscribe(all()),
            "psubscribe" => Command::PSubscribe(all()),
            "unsubscribe" => Command::Unsubscribe(all()),
            "punsubscribe" => Command::PUnsubscribe(all()),
            "publish" => Command::Publish {
                channel: key(),
                message: a[1].clone(),
            },
            "kv.put" => parse_kv_put(a)?,
            "kv.mput" => {
                let (n, rest) = parse_numkeys(a, 2)?;
                let blocks = pairs(&rest[..2 * n]);
                let (mut chain, mut parent) = (false, None);
                let opts = &rest[2 * n..];
                let mut i = 0;
                while i < opts.len() {
                    if eq(&opts[i], "CHAIN") {
                        chain = true;
                        i += 1;
                    } else if eq(&opts[i], "PARENT") && i + 1 < opts.len() {
                        parent = Some(opts[i + 1].clone());
                        i += 2;
                    } else {
                        return Err(CommandError::syntax());
                    }
                }
                Command::KvMPut {
                    blocks,
                    chain,
                    parent,
                }
            }
            "kv.get" => Command::KvGet(key()),
            "kv.mget" => Command::KvMGet(all()),
            "kv.matchtokens" => {
                let (seed, block_tokens, tokens, rest) = parse_tokens(a)?;
                Command::KvMatchTokens {
                    seed,
                    block_tokens,
                    tokens,
                    opts: parse_match_opts(rest)?,
                }
            }
            "kv.hash" => {
                let (seed, block_tokens, tokens, rest) = parse_tokens(a)?;
                if !rest.is_empty() {
                    return Err(CommandError::syntax());
                }
                Command::KvHash {
                    seed,
                    block_tokens,
                    tokens,
                }
            }
            "kv.exists" => Command::KvExists(all()),
            "kv.peer" => parse_peer(a)?,
            "kv.del" => Command::KvDel(all()),
            "kv.verify" => Command::KvVerify(all()),
            "kv.pin" => Command::KvPin(all()),
            "kv.unpin" => Command::KvUnpin(all()),
            "kv.release" => Command::KvRelease(
                parse_u64(&a[0]).map_err(|_| CommandError::err("invalid lease id"))?,
            ),
            "kv.stats" => Command::KvStats,
            "kv.reserve" => {
                let (blocks, opts) = parse_reserve(a)?;
                Command::KvReserve { blocks, opts }
            }
            "kv.commit" => parse_commit(a)?,
            "kv.abort" => Command::KvAbort(parse_tokens_list(a)?),
            "kv.locate" => {
                let (n, rest) = parse_numkeys(a, 1)?;
                let keys = rest[..n].to_vec();
                let (mut lease_ms, mut via) = (None, None);
                let o = &rest[n..];
                let mut i = 0;
                while i < o.len() {
                    if eq(&o[i], "LEASE") && i + 1 < o.len() {
                        lease_ms = Some(parse_ms(&o[i + 1], "LEASE")?);
                    } else if eq(&o[i], "VIA") && i + 1 < o.len() {
                        via = Some(Via::parse(&o[i + 1])?);
                    } else {
                        return Err(CommandError::syntax());
                    }
                    i += 2;
                }
                Command::KvLocate {
                    keys,
                    lease_ms,
                    via,
                }
            }
            "kv.dataplane" => Command::KvDataplane,
            other => unreachable!("command {other} is in the table but has no parser"),
        })
    }

    /// MULTI, EXEC, DISCARD, WATCH or UNWATCH.
    pub fn is_transaction(&self) -> bool {
        matches!(
            self,
            Command::Multi
                | Command::Exec
                | Command::Discard
                | Command::Watch(_)
                | Command::Unwatch
        )
    }

    /// Whether this command may run while the connection is subscribed in RESP2.
    pub fn allowed_in_subscribed_mode(&self) -> bool {
        matches!(
            self,
            Command::Subscribe(_)
                | Command::PSubscribe(_)
                | Command::Unsubscribe(_)
                | Command::PUnsubscribe(_)
                | Command::Ping(_)
                | Command::Quit
                | Command::Reset
        )
    }
}

fn parse_hello(a: &[Bytes]) -> Result<Command, CommandError> {
    let mut proto = None;
    let (mut auth, mut setname) = (None, None);
    let mut i = 0;
    if let Some(v) = a.first() {
        proto = Some(parse_i64(v).map_err(|_| {
            CommandError::err("Protocol version is not an integer or out of range")
        })?);
        i = 1;
    }
    while i < a.len() {
        if eq(&a[i], "AUTH") && i + 2 < a.len() {
            auth = Some((a[i + 1].clone(), a[i + 2].clone()));
            i += 3;
        } else if eq(&a[i], "SETNAME") && i + 1 < a.len() {
            setname = Some(a[i + 1].clone());
            i += 2;
        } else {
            return Err(CommandError::err(format!(
                "Syntax error in HELLO option '{}'",
                crate::error::printable(&a[i], 64)
            )));
        }
    }
    Ok(Command::Hello {
        proto,
        auth,
        setname,
    })
}

fn parse_command(a: &[Bytes]) -> Result<Command, CommandError> {
    let Some(sub) = a.first() else {
        return Ok(Command::CommandAll);
    };
    if eq(sub, "COUNT") {
        if a.len() != 1 {
            return Err(CommandError::arity("command|count"));
        }
        Ok(Command::CommandCount)
    } else if eq(sub, "INFO") {
        Ok(Command::CommandInfo(a[1..].to_vec()))
    } else if eq(sub, "DOCS") {
        Ok(Command::CommandDocs(a[1..].to_vec()))
    } else {
        Err(CommandError::unknown_subcommand("command", sub))
    }
}

fn parse_client(a: &[Bytes]) -> Result<Command, CommandError> {
    let sub = &a[0];
    let exact = |n: usize, name: &str, c: Command| {
        if a.len() == n {
            Ok(c)
        } else {
            Err(CommandError::arity(name))
        }
    };
    if eq(sub, "SETNAME") {
        if a.len() != 2 {
            return Err(CommandError::arity("client|setname"));
        }
        if a[1].iter().any(|&c| c <= b' ' || c > b'~') {
            return Err(CommandError::err(
                "Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        Ok(Command::ClientSetName(a[1].clone()))
    } else if eq(sub, "GETNAME") {
        exact(1, "client|getname", Command::ClientGetName)
    } else if eq(sub, "ID") {
        exact(1, "client|id", Command::ClientId)
    } else if eq(sub, "LIST") {
        let (mut kind, mut ids) = (None, Vec::new());
        let mut i = 1;
        while i < a.len() {
            if eq(&a[i], "TYPE") && i + 1 < a.len() {
                let t = String::from_utf8_lossy(&a[i + 1]).to_ascii_lowercase();
                if !matches!(
                    t.as_str(),
                    "normal" | "pubsub" | "master" | "replica" | "slave"
                ) {
                    return Err(CommandError::err(format!(
                        "Unknown client type '{}'",
                        crate::error::printable(&a[i + 1], 64)
                    )));
                }
                kind = Some(t);
                i += 2;
            } else if eq(&a[i], "ID") && i + 1 < a.len() {
                i += 1;
                while i < a.len() && !eq(&a[i], "TYPE") {
                    let id = parse_i64(&a[i])
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| CommandError::err("Invalid client ID"))?;
                    ids.push(id as u64);
                    i += 1;
                }
            } else {
                return Err(CommandError::syntax());
            }
        }
        Ok(Command::ClientList { kind, ids })
    } else if eq(sub, "INFO") {
        exact(1, "client|info", Command::ClientInfo)
    } else if eq(sub, "KILL") {
        parse_client_kill(&a[1..])
    } else if eq(sub, "PAUSE") {
        let ms = match a.get(1).map(|v| parse_i64(v)) {
            Some(Ok(n)) if n >= 0 => n as u64,
            Some(_) => {
                return Err(CommandError::err(
                    "timeout is not an integer or out of range",
                ))
            }
            None => return Err(CommandError::arity("client|pause")),
        };
        let writes_only = match a.get(2) {
            None => false,
            Some(m) if eq(m, "ALL") => false,
            Some(m) if eq(m, "WRITE") => true,
            Some(_) => return Err(CommandError::syntax()),
        };
        if a.len() > 3 {
            return Err(CommandError::syntax());
        }
        Ok(Command::ClientPause { ms, writes_only })
    } else if eq(sub, "UNPAUSE") {
        exact(1, "client|unpause", Command::ClientUnpause)
    } else if eq(sub, "NO-EVICT") {
        match a.get(1) {
            Some(v) if a.len() == 2 && (eq(v, "ON") || eq(v, "OFF")) => Ok(Command::ClientNoEvict),
            Some(_) if a.len() == 2 => Err(CommandError::syntax()),
            _ => Err(CommandError::arity("client|no-evict")),
        }
    } else if eq(sub, "SETINFO") {
        if a.len() != 3 {
            return Err(CommandError::arity("client|setinfo"));
        }
        let name = if eq(&a[1], "LIB-NAME") {
            true
        } else if eq(&a[1], "LIB-VER") {
            false
        } else {
            return Err(CommandError::err(format!(
                "Unrecognized option '{}'",
                crate::error::printable(&a[1], 64)
            )));
        };
        if a[2].iter().any(|c| !(b'!'..=b'~').contains(c)) {
            return Err(CommandError::err(
                "lib-name and lib-ver cannot contain spaces, newlines or special characters.",
            ));
        }
        Ok(Command::ClientSetInfo {
            name,
            value: a[2].clone(),
        })
    } else {
        Err(CommandError::unknown_subcommand("client", sub))
    }
}

fn parse_client_kill(a: &[Bytes]) -> Result<Command, CommandError> {
    let mut k = ClientKill {
        skip_me: true,
        ..ClientKill::default()
    };
    match a {
        [] => return Err(CommandError::arity("client|kill")),
        [addr] => {
            k.legacy = true;
            k.skip_me = false;
            k.addr = Some(String::from_utf8_lossy(addr).into_owned());
            return Ok(Command::ClientKill(k));
        }
        _ if a.len() % 2 == 1 => return Err(CommandError::syntax()),
        _ => {}
    }
    for pair in a.chunks(2) {
        let (opt, v) = (&pair[0], &pair[1]);
        let text = || String::from_utf8_lossy(v).into_owned();
        if eq(opt, "ID") {
            k.id = Some(
                parse_i64(v)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| CommandError::err("client-id should be greater than 0"))?
                    as u64,
            );
        } else if eq(opt, "ADDR") {
            k.addr = Some(text());
        } else if eq(opt, "LADDR") {
            k.laddr = Some(text());
        } else if eq(opt, "TYPE") {
            let t = text().to_ascii_lowercase();
            if !matches!(
                t.as_str(),
                "normal" | "pubsub" | "master" | "replica" | "slave"
            ) {
                return Err(CommandError::err(format!(
                    "Unknown client type '{}'",
                    text()
                )));
            }
            k.kind = Some(t);
        } else if eq(opt, "USER") {
            k.user = Some(text());
        } else if eq(opt, "MAXAGE") {
            k.max_age = Some(parse_i64(v)?.max(0) as u64);
        } else if eq(opt, "SKIPME") {
            k.skip_me = if eq(v, "YES") {
                true
            } else if eq(v, "NO") {
                false
            } else {
                return Err(CommandError::syntax());
            };
        } else {
            return Err(CommandError::syntax());
        }
    }
    Ok(Command::ClientKill(k))
}

fn parse_config(a: &[Bytes]) -> Result<Command, CommandError> {
    let sub = &a[0];
    if eq(sub, "GET") {
        if a.len() < 2 {
            return Err(CommandError::arity("config|get"));
        }
        Ok(Command::ConfigGet(a[1..].to_vec()))
    } else if eq(sub, "SET") {
        if a.len() < 3 || a.len().is_multiple_of(2) {
            return Err(CommandError::arity("config|set"));
        }
        Ok(Command::ConfigSet(pairs(&a[1..])))
    } else if eq(sub, "RESETSTAT") {
        Ok(Command::ConfigResetStat)
    } else if eq(sub, "REWRITE") {
        Ok(Command::Refused(
            "CONFIG REWRITE is not supported: tidepool has no configuration file to rewrite \
             (settings come from flags or --config, and CONFIG SET lasts until restart)",
        ))
    } else {
        Err(CommandError::unknown_subcommand("config", sub))
    }
}

fn parse_scan(a: &[Bytes]) -> Result<Command, CommandError> {
    let cursor = std::str::from_utf8(&a[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| CommandError::err("invalid cursor"))?;
    let (mut pattern, mut count, mut kind) = (None, 10usize, None);
    let mut i = 1;
    while i < a.len() {
        if i + 1 >= a.len() {
            return Err(CommandError::syntax());
        }
        if eq(&a[i], "MATCH") {
            pattern = Some(a[i + 1].clone());
        } else if eq(&a[i], "COUNT") {
            count = parse_i64(&a[i + 1])? as usize;
            if count < 1 || count > i64::MAX as usize {
                return Err(CommandError::syntax());
            }
        } else if eq(&a[i], "TYPE") {
            kind = Some(a[i + 1].clone());
        } else {
            return Err(CommandError::syntax());
        }
        i += 2;
    }
    Ok(Command::Scan {
        cursor,
        pattern,
        count,
        kind,
    })
}

fn parse_set(a: &[Bytes]) -> Result<Command, CommandError> {
    let (mut expiry, mut cond, mut get) = (None, Cond::Always, false);
    let invalid = || CommandError::err("invalid expire time in 'set' command");
    let mut i = 2;
    while i < a.len() {
        let opt = &a[i];
        let has_next = i + 1 < a.len();
        if eq(opt, "NX") && cond == Cond::Always {
            cond = Cond::Nx;
        } else if eq(opt, "XX") && cond == Cond::Always {
            cond = Cond::Xx;
        } else if eq(opt, "GET") {
            get = true;
        } else if eq(opt, "KEEPTTL") && expiry.is_none() {
            expiry = Some(SetExpiry::Keep);
        } else if has_next
            && expiry.is_none()
            && (eq(opt, "EX") || eq(opt, "PX") || eq(opt, "EXAT") || eq(opt, "PXAT"))
        {
            let n = parse_i64(&a[i + 1])?;
            if n <= 0 {
                return Err(invalid());
            }
            let secs = eq(opt, "EX") || eq(opt, "EXAT");
            let ms = if secs {
                n.checked_mul(1000).ok_or_else(invalid)?
            } else {
                n
            } as u64;
            expiry = Some(if opt.len() == 2 {
                SetExpiry::In(ms)
            } else {
                SetExpiry::At(ms)
            });
            i += 1;
        } else {
            return Err(CommandError::syntax());
        }
        i += 1;
    }
    Ok(Command::Set {
        key: a[0].clone(),
        value: a[1].clone(),
        expiry,
        cond,
        get,
    })
}

fn parse_getex(a: &[Bytes]) -> Result<Command, CommandError> {
    let expiry = match &a[1..] {
        [] => None,
        [p] if eq(p, "PERSIST") => Some(None),
        [opt, n] if eq(opt, "EX") || eq(opt, "PX") || eq(opt, "EXAT") || eq(opt, "PXAT") => {
            let invalid = || CommandError::err("invalid expire time in 'getex' command");
            let n = parse_i64(n)?;
            if n <= 0 {
                return Err(invalid());
            }
            let ms = if eq(opt, "EX") || eq(opt, "EXAT") {
                n.checked_mul(1000).ok_or_else(invalid)?
            } else {
                n
            } as u64;
            Some(Some(if opt.len() == 2 {
                SetExpiry::In(ms)
            } else {
                SetExpiry::At(ms)
            }))
        }
        _ => return Err(CommandError::syntax()),
    };
    Ok(Command::GetEx {
        key: a[0].clone(),
        expiry,
    })
}

fn parse_kv_put(a: &[Bytes]) -> Result<Command, CommandError> {
    let (mut parent, mut ttl_ms, mut tier, mut pin) = (None, None, None, false);
    let mut i = 2;
    while i < a.len() {
        let opt = &a[i];
        let next = a.get(i + 1);
        match next {
            Some(v) if eq(opt, "PARENT") => parent = Some(v.clone()),
            Some(v) if eq(opt, "TTL") => ttl_ms = Some(parse_ms(v, "TTL")?),
            Some(v) if eq(opt, "TIER") => {
                tier = Some(
                    TierName::parse(v)
                        .ok_or_else(|| CommandError::err("TIER must be one of gpu, dram, ssd"))?,
                )
            }
            _ if eq(opt, "PIN") => {
                pin = true;
                i += 1;
                continue;
            }
            _ => return Err(CommandError::syntax()),
        }
        i += 2;
    }
    Ok(Command::KvPut {
        key: a[0].clone(),
        value: a[1].clone(),
        parent,
        ttl_ms,
        tier,
        pin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `words` as a RESP request and parses it the way the server does.
    fn parse_framed(words: &[&str]) -> Result<Command, CommandError> {
        let mut wire = format!("*{}\r\n", words.len());
        for w in words {
            wire.push_str(&format!("${}\r\n{w}\r\n", w.len()));
        }
        let mut buf = bytes::BytesMut::from(wire.as_bytes());
        let mut parser = crate::RequestParser::default();
        let frame = parser.next_frame(&mut buf).unwrap().unwrap();
        Command::parse_frame(frame).1
    }

    #[test]
    fn framed_kv_match_parses_as_the_argument_path_does() {
        let cases: &[&[&str]] = &[
            &["KV.MATCH", "2", "a", "b"],
            &["kv.match", "1", "a", "b"],
            &["KV.MATCH", "2", "a", "b", "LEASE", "7", "WITHTIERS"],
            &["KV.MATCH", "3", "a", "b"],
            &["KV.MATCH", "0", "a"],
            &["KV.MATCH", "-1", "a"],
            &["KV.MATCH", "x", "a"],
            &["KV.MATCH", "1", "a", "LEASE"],
            &["KV.MATCH", "1", "a", "LEASE", "0"],
            &["KV.MATCH", "1", "a", "BOGUS"],
            &["KV.MATCH", "1"],
            &["KV.MATCHTOKENS", "s", "2", "1", "2"],
            &["GET", "k"],
        ];
        for words in cases {
            let framed = parse_framed(words);
            assert_eq!(framed, parse(words), "{words:?}");
        }
        let Ok(Command::KvMatch { keys, .. }) =
            parse_framed(&["KV.MATCH", "2", "ab", "c", "WITHTIERS"])
        else {
            panic!("not a match");
        };
        assert_eq!(keys.iter().collect::<Vec<_>>(), vec![&b"ab"[..], b"c"]);
    }

    fn argv(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn parse(words: &[&str]) -> Result<Command, CommandError> {
        Command::parse(&argv(words))
    }

    fn err(words: &[&str]) -> String {
        parse(words).unwrap_err().to_string()
    }

    #[test]
    fn redis_error_texts() {
        assert_eq!(
            err(&["GET"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err(&["NOPE", "a", "b"]),
            "ERR unknown command 'NOPE', with args beginning with: 'a' 'b' "
        );
        assert_eq!(
            err(&["SET", "k", "v", "EX", "x"]),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            err(&["SET", "k", "v", "EX", "0"]),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(err(&["SET", "k", "v", "NX", "XX"]), "ERR syntax error");
        assert_eq!(
            err(&["CLIENT", "FOO"]),
            "ERR unknown subcommand 'FOO'. Try CLIENT HELP."
        );
        assert_eq!(
            err(&["CONFIG", "SET", "a"]),
            "ERR wrong number of arguments for 'config|set' command"
        );
    }

    #[test]
    fn set_options() {
        assert_eq!(
            parse(&["set", "k", "v", "px", "1500", "nx", "get"]).unwrap(),
            Command::Set {
                key: "k".into(),
                value: "v".into(),
                expiry: Some(SetExpiry::In(1500)),
                cond: Cond::Nx,
                get: true
            }
        );
    }

    #[test]
    fn kv_commands() {
        assert_eq!(
            parse(&["KV.PUT", "k", "v", "PARENT", "p", "TTL", "10", "TIER", "dram", "PIN"])
                .unwrap(),
            Command::KvPut {
                key: "k".into(),
                value: "v".into(),
                parent: Some("p".into()),
                ttl_ms: Some(10),
                tier: Some(TierName::Dram),
                pin: true
            }
        );
        assert_eq!(
            parse(&["KV.MPUT", "2", "a", "1", "b", "2", "CHAIN", "PARENT", "p"]).unwrap(),
            Command::KvMPut {
                blocks: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
                chain: true,
                parent: Some("p".into())
            }
        );
        assert_eq!(
            parse(&[
                "KV.MATCH",
                "2",
                "LEASE",
                "WITHTIERS",
                "LEASE",
                "5",
                "WITHTIERS"
            ])
            .unwrap(),
            Command::KvMatch {
                keys: ["LEASE", "WITHTIERS"].into_iter().collect(),
                opts: MatchOpts {
                    lease_ms: Some(5),
                    with_tiers: true,
                    ..MatchOpts::default()
                }
            }
        );
        assert_eq!(
            parse(&["KV.MATCHTOKENS", "s", "2", "1", "2", "3", "WITHTIERS"]).unwrap(),
            Command::KvMatchTokens {
                seed: "s".into(),
                block_tokens: 2,
                tokens: vec![1, 2, 3],
                opts: MatchOpts {
                    lease_ms: None,
                    with_tiers: true,
                    ..MatchOpts::default()
                }
            }
        );
        // WITHNODES; KV.PEER MATCH (this node's keys only) takes no
        // WITHNODES; KV.PEER's other forms.
        let Ok(Command::KvMatch { opts, .. }) = parse(&["KV.MATCH", "1", "a", "WITHNODES"]) else {
            panic!()
        };
        assert!(opts.with_nodes && !opts.local);
        let Ok(Command::KvMatch { keys, opts }) =
            parse(&["KV.PEER", "MATCH", "2", "a", "b", "LEASE", "9"])
        else {
            panic!()
        };
        assert!(opts.local && opts.lease_ms == Some(9) && keys.len() == 2);
        assert_eq!(
            err(&["KV.PEER", "MATCH", "1", "a", "WITHNODES"]),
            "ERR syntax error"
        );
        assert_eq!(
            parse(&["KV.PEER", "TRIM", "7", "2"]).unwrap(),
            Command::KvPeerTrim { lease: 7, keep: 2 }
        );
        assert_eq!(
            parse(&["KV.PEER", "EXISTS", "a"]).unwrap(),
            Command::KvPeerExists(vec!["a".into()])
        );
        assert_eq!(
            parse(&["KV.PEER", "IMPORT", "3", "k", "v", "TTL", "5", "PARENT", "p", "PIN"]).unwrap(),
            Command::KvPeerImport {
                epoch: 3,
                key: "k".into(),
                value: "v".into(),
                parent: Some("p".into()),
                ttl_ms: Some(5),
                pin: true
            }
        );
        assert_eq!(
            parse(&["KV.PEER", "FORGET", "3", "a", "b"]).unwrap(),
            Command::KvPeerForget {
                epoch: 3,
                keys: vec!["a".into(), "b".into()]
            }
        );
        for bad in [
            &["KV.PEER", "MATCH", "x"][..],
            &["KV.PEER", "TRIM", "1"],
            &["KV.PEER", "TRIM", "1", "-2"],
            &["KV.PEER", "NOPE", "1"],
            &["KV.PEER", "IMPORT", "1", "k"],
            &["KV.PEER", "IMPORT", "x", "k", "v"],
            &["KV.PEER", "IMPORT", "1", "k", "v", "TTL"],
            &["KV.PEER", "IMPORT", "1", "k", "v", "BOGUS"],
            &["KV.PEER", "FORGET", "x", "k"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            err(&["KV.MATCH", "3", "a", "b"]),
            "ERR count is greater than the number of arguments"
        );
        assert_eq!(
            err(&["KV.MATCH", "1", "a", "LEASE", "-1"]),
            "ERR LEASE must be a positive integer (milliseconds)"
        );
        assert_eq!(err(&["KV.MPUT", "1", "a", "b", "FOO"]), "ERR syntax error");
        assert_eq!(
            err(&["KV.HASH", "s", "0", "1"]),
            "ERR block_tokens must be an integer in 1..=1048576"
        );
        assert_eq!(
            err(&["KV.HASH", "s", "1", "-1"]),
            "ERR tokens must be integers in 0..=4294967295"
        );
        assert_eq!(
            err(&["KV.PUT", "k", "v", "TIER", "tape"]),
            "ERR TIER must be one of gpu, dram, ssd"
        );
    }

    #[test]
    fn every_table_row_parses_at_minimum_arity() {
        for spec in table::COMMANDS {
            let n = spec.arity.unsigned_abs() as usize;
            let mut words = vec![spec.name.to_string()];
            words.extend((1..n).map(|_| "1".to_string()));
            let refs: Vec<&str> = words.iter().map(|s| s.as_str()).collect();
            // Must not panic; errors are fine (e.g. unknown subcommand "1").
            let _ = parse(&refs);
        }
    }

    #[test]
    fn reserve_takes_both_forms() {
        let b = |k: &str, n: u64| (Bytes::copy_from_slice(k.as_bytes()), n);
        // Plain: pairs only.
        assert_eq!(
            parse(&["KV.RESERVE", "a", "10", "b", "20"]).unwrap(),
            Command::KvReserve {
                blocks: vec![b("a", 10), b("b", 20)],
                opts: ReserveOpts::default()
            }
        );
        // Numeric keys are still keys in the plain form.
        assert_eq!(
            parse(&["KV.RESERVE", "1", "5"]).unwrap(),
            Command::KvReserve {
                blocks: vec![b("1", 5)],
                opts: ReserveOpts::default()
            }
        );
        // Counted, with options.
        assert_eq!(
            parse(&[
                "KV.RESERVE",
                "2",
                "a",
                "1",
                "b",
                "2",
                "VIA",
                "shm",
                "CHAIN",
                "PARENT",
                "p",
                "TTL",
                "9"
            ])
            .unwrap(),
            Command::KvReserve {
                blocks: vec![b("a", 1), b("b", 2)],
                opts: ReserveOpts {
                    via: Some(Via::Shm),
                    parent: Some(Bytes::from_static(b"p")),
                    chain: true,
                    ttl_ms: Some(9)
                }
            }
        );
        assert_eq!(
            parse(&["KV.RESERVE", "1", "k", "5", "CHAIN"]).unwrap(),
            Command::KvReserve {
                blocks: vec![b("k", 5)],
                opts: ReserveOpts {
                    chain: true,
                    ..ReserveOpts::default()
                }
            }
        );
        assert_eq!(
            err(&["KV.RESERVE", "1", "k", "5", "VIA", "udp"]),
            "ERR VIA must be tcp, shm or rdma"
        );
        assert_eq!(
            err(&["KV.RESERVE", "a", "-1"]),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            err(&["KV.RESERVE", "1", "k", "x", "CHAIN"]),
            "ERR block length must be a non-negative integer"
        );
        assert_eq!(
            err(&["KV.RESERVE", "1", "k", "5", "NOPE"]),
            "ERR syntax error"
        );
        assert_eq!(
            parse(&["KV.COMMIT", "3", "4"]).unwrap(),
            Command::KvCommit {
                tokens: vec![3, 4],
                checksums: None
            }
        );
        assert_eq!(
            parse(&[
                "KV.COMMIT",
                "3",
                "4",
                "checksums",
                "18446744073709551615",
                "0"
            ])
            .unwrap(),
            Command::KvCommit {
                tokens: vec![3, 4],
                checksums: Some(vec![u64::MAX, 0])
            }
        );
        assert_eq!(
            err(&["KV.COMMIT", "3", "4", "CHECKSUMS", "1"]),
            "ERR 1 checksums for 2 tokens (CHECKSUMS gives one per token)"
        );
        assert_eq!(
            err(&["KV.COMMIT", "CHECKSUMS", "1"]),
            "ERR 1 checksums for 0 tokens (CHECKSUMS gives one per token)"
        );
        for bad in ["-1", "+1", "18446744073709551616", "0x10", ""] {
            assert_eq!(
                err(&["KV.COMMIT", "3", "CHECKSUMS", bad]),
                "ERR invalid checksum",
                "{bad:?}"
            );
        }
        assert_eq!(
            err(&["KV.COMMIT", "3", "CHECKSUMS"]),
            "ERR 0 checksums for 1 tokens (CHECKSUMS gives one per token)"
        );
        assert_eq!(err(&["KV.ABORT", "x"]), "ERR invalid token");
        assert_eq!(
            parse(&["KV.LOCATE", "2", "a", "b", "LEASE", "50", "VIA", "tcp"]).unwrap(),
            Command::KvLocate {
                keys: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
                lease_ms: Some(50),
                via: Some(Via::Tcp)
            }
        );
        assert_eq!(
            err(&["KV.LOCATE", "1", "a", "LEASE", "0"]),
            "ERR LEASE must be a positive integer (milliseconds)"
        );
    }
}
