//! Connection and server commands: PING, ECHO, HELLO, AUTH, SELECT, RESET,
//! COMMAND, CLIENT, CONFIG, INFO.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tidepool_protocol::table::{self, CommandSpec};
use tidepool_protocol::{glob, Command, CommandError, Reply, Version};

use crate::session::Session;
use crate::state::{ClientState, Shared};

/// The Redis version whose behaviour tidepool follows (reported to clients that
/// gate features on it).
pub const REDIS_COMPAT_VERSION: &str = "7.0.0";

/// Applies a connection or server command.
pub fn execute(shared: &Shared, session: &mut Session, cmd: Command) -> Reply {
    match cmd {
        Command::Ping(msg) => {
            if session.in_subscribed_mode() {
                Reply::Array(vec![
                    Reply::text("pong"),
                    Reply::Bulk(msg.unwrap_or_default()),
                ])
            } else {
                msg.map_or(Reply::simple("PONG"), Reply::Bulk)
            }
        }
        Command::Echo(m) => Reply::Bulk(m),
        Command::Hello {
            proto,
            auth,
            setname,
        } => {
            let version = match proto {
                None => session.version,
                Some(2) => Version::Resp2,
                Some(3) => Version::Resp3,
                Some(_) => {
                    return Reply::Error(CommandError::new(
                        "NOPROTO",
                        "unsupported protocol version",
                    ))
                }
            };
            if let Some((user, _)) = auth {
                if let Err(e) = check_auth(Some(&user)) {
                    return Reply::Error(e);
                }
            }
            if let Some(name) = setname {
                // Copied: a view would keep the whole read buffer it came in.
                *session.client.name.lock() = Some(Bytes::copy_from_slice(&name));
            }
            session.version = version;
            session.client.resp.store(version.number() as u8, Relaxed);
            Reply::map([
                ("server", Reply::text("redis")),
                ("version", Reply::text(REDIS_COMPAT_VERSION)),
                ("proto", Reply::Int(version.number())),
                ("id", Reply::Int(session.client.id as i64)),
                ("mode", Reply::text("standalone")),
                ("role", Reply::text("master")),
                ("modules", Reply::Array(vec![])),
            ])
        }
        Command::Auth { user, .. } => match check_auth(user.as_deref()) {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::Error(e),
        },
        Command::Select(0) => Reply::ok(),
        Command::Select(_) => Reply::Error(CommandError::err("DB index is out of range")),
        Command::Reset => {
            session.multi = None;
            session.client.multi.store(-1, Relaxed);
            session.client.multi_mem.store(0, Relaxed);
            super::pubsub::unsubscribe_all(shared, session);
            session.version = Version::Resp2;
            session.client.resp.store(2, Relaxed);
            *session.client.name.lock() = None;
            Reply::simple("RESET")
        }
        Command::CommandAll => Reply::Array(table::COMMANDS.iter().map(command_info).collect()),
        Command::CommandCount => Reply::Int(table::COMMANDS.len() as i64),
        Command::CommandInfo(names) => {
            if names.is_empty() {
                Reply::Array(table::COMMANDS.iter().map(command_info).collect())
            } else {
                Reply::Array(
                    names
                        .iter()
                        .map(|n| table::lookup(n).map_or(Reply::NullArray, command_info))
                        .collect(),
                )
            }
        }
        Command::CommandDocs(names) => {
            let specs: Vec<&CommandSpec> = if names.is_empty() {
                table::COMMANDS.iter().collect()
            } else {
                names.iter().filter_map(|n| table::lookup(n)).collect()
            };
            Reply::Map(
                specs
                    .into_iter()
                    .map(|s| {
                        (
                            Reply::text(s.name),
                            Reply::map([
                                ("summary", Reply::text(s.summary)),
                                ("since", Reply::text(s.since)),
                                ("group", Reply::text(s.group)),
                            ]),
                        )
                    })
                    .collect(),
            )
        }
        Command::ClientSetName(name) => {
            // Copied: a view would keep the whole read buffer it came in.
            *session.client.name.lock() = (!name.is_empty()).then(|| Bytes::copy_from_slice(&name));
            Reply::ok()
        }
        Command::ClientGetName => session
            .client
            .name
            .lock()
            .clone()
            .map_or(Reply::Null, Reply::Bulk),
        Command::ClientId => Reply::Int(session.client.id as i64),
        Command::ClientList { kind, ids } => {
            // The caller's own line shows the command it is running, as in Redis.
            *session.client.last_cmd.lock() = "client|list";
            let now = shared.uptime_ms();
            let mut s = String::new();
            for c in shared.clients.all() {
                let type_ok = kind.as_deref().is_none_or(|k| k == client_type(&c));
                if type_ok && (ids.is_empty() || ids.contains(&c.id)) {
                    s.push_str(&client_line(&c, now));
                    s.push('\n');
                }
            }
            Reply::Verbatim(s)
        }
        Command::ClientKill(k) => client_kill(shared, session, &k),
        Command::ClientPause { ms, writes_only } => {
            shared.pause(ms, writes_only);
            Reply::ok()
        }
        Command::ClientUnpause => {
            shared.unpause();
            Reply::ok()
        }
        // tidepool evicts blocks, never clients: there is nothing to exempt.
        Command::ClientNoEvict => Reply::ok(),
        Command::ClientSetInfo { name, value } => {
            let v = String::from_utf8_lossy(&value).into_owned();
            let mut lib = session.client.lib.lock();
            if name {
                lib.0 = v;
            } else {
                lib.1 = v;
            }
            Reply::ok()
        }
        Command::ClientInfo => {
            *session.client.last_cmd.lock() = "client|info";
            let mut s = client_line(&session.client, shared.uptime_ms());
            s.push('\n');
            Reply::Verbatim(s)
        }
        Command::ConfigGet(patterns) => config_get(shared, &patterns),
        Command::ConfigSet(pairs) => config_set(shared, &pairs),
        Command::ConfigResetStat => {
            shared.store.reset_stats();
            shared.observed.reset();
            for c in [
                &shared.stats.commands,
                &shared.stats.connections,
                &shared.stats.rejected,
                &shared.stats.net_in,
                &shared.stats.net_out,
                &shared.stats.protocol_errors,
            ] {
                c.store(0, Relaxed);
            }
            Reply::ok()
        }
        Command::Info(sections) => Reply::Verbatim(crate::info::render(shared, &sections)),
        // Queued inside MULTI, as Redis does: there is nothing watched.
        Command::Unwatch => Reply::ok(),
        Command::Refused(why) => Reply::Error(CommandError::err(why)),
        Command::MemoryStats => memory_stats(shared),
        Command::Cluster(sub) => crate::cluster::command(shared, &sub),
        Command::ReadMode => Reply::ok(),
        Command::MemoryDoctor => Reply::Verbatim(memory_doctor(shared)),
        Command::Monitor => {
            if !session.monitor {
                session.monitor = true;
                session.client.monitor.store(true, Relaxed);
                shared
                    .monitors
                    .lock()
                    .insert(session.client.id, session.subscriber.clone());
                shared.monitoring.fetch_add(1, Relaxed);
            }
            Reply::ok()
        }
        Command::SlowlogGet(n) => {
            let count = match n {
                None => Some(10),
                Some(-1) => None,
                Some(n) => Some(n.max(0) as usize),
            };
            Reply::Array(
                shared
                    .observed
                    .slowlog_get(count)
                    .into_iter()
                    .map(|e| {
                        Reply::Array(vec![
                            Reply::Int(e.id as i64),
                            Reply::Int(e.at as i64),
                            Reply::Int(e.micros as i64),
                            Reply::Array(e.args.into_iter().map(Reply::Bulk).collect()),
                            Reply::Bulk(e.addr.into()),
                            Reply::Bulk(e.name.into()),
                        ])
                    })
                    .collect(),
            )
        }
        Command::SlowlogLen => Reply::Int(shared.observed.slowlog_len() as i64),
        Command::SlowlogReset => {
            shared.observed.slowlog_reset();
            Reply::ok()
        }
        Command::LatencyLatest => Reply::Array(
            shared
                .observed
                .latency_events()
                .into_iter()
                .filter_map(|(name, e)| {
                    let (at, ms) = *e.samples.back()?;
                    Some(Reply::Array(vec![
                        Reply::Bulk(name.into()),
                        Reply::Int(at as i64),
                        Reply::Int(ms as i64),
                        Reply::Int(e.max as i64),
                    ]))
                })
                .collect(),
        ),
        Command::LatencyHistory(event) => Reply::Array(
            shared
                .observed
                .latency_events()
                .into_iter()
                .filter(|(name, _)| event.eq_ignore_ascii_case(name.as_bytes()))
                .flat_map(|(_, e)| e.samples)
                .map(|(at, ms)| Reply::Array(vec![Reply::Int(at as i64), Reply::Int(ms as i64)]))
                .collect(),
        ),
        Command::LatencyDoctor => Reply::Verbatim(latency_doctor(shared)),
        Command::LatencyReset(events) => Reply::Int(shared.observed.latency_reset(&events) as i64),
        Command::Time => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Reply::Array(vec![
                Reply::Bulk(now.as_secs().to_string().into()),
                Reply::Bulk(now.subsec_micros().to_string().into()),
            ])
        }
        Command::Role => Reply::Array(vec![
            Reply::Bulk("master".into()),
            Reply::Int(0),
            Reply::Array(vec![]),
        ]),
        Command::Help(name) => Reply::Array(
            tidepool_protocol::help::lines(name)
                .unwrap_or_default()
                .iter()
                .map(|l| Reply::simple(*l))
                .collect(),
        ),
        other => {
            // Every other command is applied by cmd::execute; reaching here is a bug.
            Reply::Error(CommandError::err(format!(
                "internal error: {other:?} not routed"
            )))
        }
    }
}

/// No password is configured (auth comes with its own issue): the default user
/// accepts any password, as Redis's `nopass` default user does.
fn check_auth(user: Option<&[u8]>) -> Result<(), CommandError> {
    match user {
        None => Err(CommandError::err(
            "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        )),
        Some(u) if u == b"default" => Ok(()),
        Some(_) => Err(CommandError::new(
            "WRONGPASS",
            "invalid username-password pair or user is disabled.",
        )),
    }
}

fn command_info(s: &CommandSpec) -> Reply {
    Reply::Array(vec![
        Reply::text(s.name),
        Reply::Int(s.arity as i64),
        Reply::Set(s.flags.iter().map(|f| Reply::simple(*f)).collect()),
        Reply::Int(s.first_key as i64),
        Reply::Int(s.last_key as i64),
        Reply::Int(s.step as i64),
        Reply::Set(vec![]),
        Reply::Set(vec![]),
        Reply::Array(vec![]),
        Reply::Array(vec![]),
    ])
}

/// CLIENT LIST's and KILL's TYPE of a client.
fn client_type(c: &ClientState) -> &'static str {
    if c.subs.load(Relaxed) + c.psubs.load(Relaxed) > 0 {
        "pubsub"
    } else {
        "normal"
    }
}

/// CLIENT KILL: the old form answers OK or an error, the filters a count.
fn client_kill(
    shared: &Shared,
    session: &Session,
    k: &tidepool_protocol::command::ClientKill,
) -> Reply {
    let killed: Vec<u64> = shared
        .clients
        .all()
        .into_iter()
        .filter(|c| {
            !(k.skip_me && c.id == session.client.id)
                && k.id.is_none_or(|id| id == c.id)
                && k.addr.as_deref().is_none_or(|a| a == c.addr.to_string())
                && k.laddr.as_deref().is_none_or(|a| a == c.laddr.to_string())
                && k.kind.as_deref().is_none_or(|t| match t {
                    "master" | "replica" | "slave" => false,
                    t => t == client_type(c),
                })
                && k.user.as_deref().is_none_or(|u| u == "default")
                && k.max_age
                    .is_none_or(|age| c.created.elapsed().as_secs() >= age)
        })
        .map(|c| {
            c.kill();
            c.id
        })
        .collect();
    match (k.legacy, killed.len()) {
        (true, 0) => Reply::Error(CommandError::err("No such client")),
        (true, _) => Reply::ok(),
        (false, n) => Reply::Int(n as i64),
    }
}

fn client_line(c: &ClientState, now_ms: u64) -> String {
    let name = c
        .name
        .lock()
        .as_ref()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default();
    let age = c.created.elapsed().as_secs();
    let idle = now_ms.saturating_sub(c.last_active_ms.load(Relaxed)) / 1000;
    let subs = c.subs.load(Relaxed);
    let psubs = c.psubs.load(Relaxed);
    let multi = c.multi.load(Relaxed);
    let mut flags = String::new();
    if subs + psubs > 0 {
        flags.push('P');
    }
    if multi >= 0 {
        flags.push('x');
    }
    if c.monitor.load(Relaxed) {
        flags.push('O');
    }
    if flags.is_empty() {
        flags.push('N');
    }
    let qbuf = c.qbuf.load(Relaxed);
    let qbuf_cap = c.qbuf_cap.load(Relaxed);
    let omem = c
        .output
        .lock()
        .as_ref()
        .map_or(0, |o| o.pending.load(Relaxed) as usize);
    let multi_mem = c.multi_mem.load(Relaxed);
    let (lib_name, lib_ver) = c.lib.lock().clone();
    format!(
        "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={} db=0 sub={} psub={} ssub=0 multi={} qbuf={} qbuf-free={} argv-mem=0 multi-mem={} rbs={} rbp={} obl=0 oll=0 omem={} tot-mem={} events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
        c.id,
        c.addr,
        c.laddr,
        c.fd,
        name,
        age,
        idle,
        flags,
        subs,
        psubs,
        multi,
        qbuf,
        qbuf_cap.saturating_sub(qbuf),
        multi_mem,
        qbuf_cap,
        qbuf_cap,
        omem,
        qbuf_cap + omem + multi_mem,
        c.last_cmd.lock(),
        c.resp.load(Relaxed),
        lib_name,
        lib_ver,
    )
}

/// The settings CONFIG GET answers, as (name, value).
fn config_pairs(shared: &Shared) -> Vec<(&'static str, String)> {
    let c = shared.config.read();
    let (high, low) = shared.store.watermarks();
    vec![
        ("port", c.port.to_string()),
        ("bind", c.bind.clone()),
        ("dram", shared.store.capacity().to_string()),
        ("maxmemory", shared.store.capacity().to_string()),
        (
            "maxmemory-policy",
            shared.store.eviction().as_str().to_string(),
        ),
        ("eviction", shared.store.eviction().as_str().to_string()),
        ("maxclients", c.maxclients.to_string()),
        ("max-leases", c.max_leases.to_string()),
        ("max-lease-ms", c.max_lease_ms.to_string()),
        ("client-output-buffer-limit", output_limits(shared)),
        ("shm-socket-perm", c.shm_socket_perm.clone()),
        ("unixsocketperm", c.shm_socket_perm.clone()),
        (
            "proto-max-bulk-len",
            c.proto_max_bulk_len.as_u64().to_string(),
        ),
        ("high-watermark", high.to_string()),
        ("low-watermark", low.to_string()),
        ("threads", c.threads().to_string()),
        ("databases", "1".to_string()),
        ("save", String::new()),
        ("appendonly", "no".to_string()),
        ("timeout", c.timeout.to_string()),
        ("dram-checksums", yes_no(c.dram_checksums)),
        ("ssd", c.ssd.clone().unwrap_or_default()),
        ("ssd-engine", c.ssd_engine.clone()),
        ("ssd-segment-size", c.ssd_segment_size.as_u64().to_string()),
        ("ssd-promote", yes_no(c.ssd_promote)),
        ("ssd-stage-on-match", yes_no(c.ssd_stage_on_match)),
        (
            "data-port",
            shared
                .data
                .tcp_addr
                .get()
                .map_or(0, |a| a.port())
                .to_string(),
        ),
        ("shm", yes_no(c.shm)),
        (
            "shm-socket",
            shared
                .data
                .shm_path
                .get()
                .map_or(String::new(), |p| p.display().to_string()),
        ),
        (
            "shm-arena",
            shared
                .data
                .arena
                .as_ref()
                .map_or(0, |a| a.size())
                .to_string(),
        ),
        ("reserve-timeout", c.reserve_timeout.to_string()),
        (
            "slowlog-log-slower-than",
            shared.observed.slower_than_us.load(Relaxed).to_string(),
        ),
        (
            "slowlog-max-len",
            shared.observed.slowlog_max_len.load(Relaxed).to_string(),
        ),
        (
            "latency-monitor-threshold",
            shared
                .observed
                .latency_threshold_ms
                .load(Relaxed)
                .to_string(),
        ),
    ]
}

/// A boolean setting as Redis shows one.
fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// `client-output-buffer-limit` as Redis shows it: every class, in bytes
/// (there are no replicas: theirs is always 0 0 0).
fn output_limits(shared: &Shared) -> String {
    let show = |l: &crate::pubsub::Limits| {
        format!(
            "{} {} {}",
            l.hard.load(Relaxed),
            l.soft.load(Relaxed),
            l.soft_secs.load(Relaxed)
        )
    };
    format!(
        "normal {} slave 0 0 0 pubsub {}",
        show(&shared.normal_limits),
        show(&shared.pubsub.limits)
    )
}

/// Applies `CLASS HARD SOFT SECONDS [CLASS ...]` (classes normal and
/// pubsub; replica limits are accepted only as 0 0 0: there are none).
fn set_output_limits(shared: &Shared, value: &str) -> Result<(), String> {
    let words: Vec<&str> = value.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(4) {
        return Err("wrong number of arguments".into());
    }
    let (mut normal, mut pubsub) = (None, None);
    for w in words.chunks(4) {
        let limit =
            crate::config::OutputLimit::parse(&w[1..].join(" ")).map_err(|e| e.to_string())?;
        match w[0].to_ascii_lowercase().as_str() {
            "pubsub" => pubsub = Some(limit),
            "normal" => normal = Some(limit),
            "slave" | "replica" if (limit.hard, limit.soft) == (0, 0) => {}
            "slave" | "replica" => return Err("this server has no replicas to limit".into()),
            other => {
                return Err(format!(
                    "Invalid client class specified in buffer limit configuration: {other}"
                ))
            }
        }
    }
    if let Some(l) = pubsub {
        shared.pubsub.limits.set(l.hard, l.soft, l.soft_secs);
        shared.config.write().client_output_buffer_limit_pubsub = l.render();
    }
    if let Some(l) = normal {
        shared.normal_limits.set(l.hard, l.soft, l.soft_secs);
    }
    Ok(())
}

fn config_get(shared: &Shared, patterns: &[Bytes]) -> Reply {
    let pairs = config_pairs(shared);
    Reply::Map(
        pairs
            .into_iter()
            .filter(|(name, _)| {
                patterns
                    .iter()
                    .any(|p| glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
            })
            .map(|(n, v)| (Reply::text(n), Reply::Bulk(Bytes::from(v))))
            .collect(),
    )
}

fn config_set(shared: &Shared, pairs: &[(Bytes, Bytes)]) -> Reply {
    let bad = |name: &str, why: &str| {
        Reply::Error(CommandError::err(format!(
            "CONFIG SET failed (possibly related to argument '{name}') - {why}"
        )))
    };
    for (name, value) in pairs {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = String::from_utf8_lossy(value).into_owned();
        match name.as_str() {
            // Sizes as Redis reads them: 300mb is 300 MiB.
            "dram" | "maxmemory" => match crate::config::parse_redis_size(&value) {
                Some(bytes) if bytes >= crate::config::MIN_DRAM => {
                    shared.store.set_capacity(bytes);
                    shared.config.write().dram = bytesize::ByteSize::b(bytes);
                }
                _ => return bad(&name, "argument must be a memory value of at least 1kb"),
            },
            "maxclients" => {
                match value.parse::<usize>() {
                    Ok(n) if n > 0 => {
                        if let Some((soft, _)) = crate::fd_limit() {
                            let need = crate::fds_for(n);
                            if need > soft {
                                return bad(
                                &name,
                                &format!("maxclients {n} needs {need} open files; the limit is {soft}"),
                            );
                            }
                        }
                        shared.config.write().maxclients = n
                    }
                    _ => return bad(&name, "argument must be a positive integer"),
                }
            }
            "max-leases" => match value.parse::<u64>() {
                Ok(n) if n > 0 => shared.config.write().max_leases = n,
                _ => return bad(&name, "argument must be a positive integer"),
            },
            "max-lease-ms" => match value.parse::<u64>() {
                Ok(n) if (1..=crate::config::MAX_LEASE_MS_LIMIT).contains(&n) => {
                    shared.config.write().max_lease_ms = n
                }
                _ => return bad(&name, "argument must be from 1 to 31536000000 (a year)"),
            },
            "timeout" => match value.parse::<u64>() {
                Ok(n) => {
                    shared.config.write().timeout = n;
                    shared.idle_timeout.store(n, Relaxed);
                }
                _ => return bad(&name, "argument must be a non-negative integer"),
            },
            "client-output-buffer-limit" => {
                if let Err(e) = set_output_limits(shared, &value) {
                    return bad(&name, &e);
                }
            }
            "high-watermark" | "low-watermark" => {
                let Ok(v) = value.parse::<f64>() else {
                    return bad(&name, "argument must be a number");
                };
                let (mut high, mut low) = shared.store.watermarks();
                if name == "high-watermark" {
                    high = v;
                } else {
                    low = v;
                }
                if let Err(e) = shared.store.set_watermarks(high, low) {
                    return bad(&name, &e);
                }
                let mut c = shared.config.write();
                c.high_watermark = high;
                c.low_watermark = low;
            }
            "slowlog-log-slower-than" => match value.parse::<i64>() {
                Ok(n) if n >= -1 => shared.observed.slower_than_us.store(n, Relaxed),
                _ => return bad(&name, "argument must be an integer from -1 up"),
            },
            "slowlog-max-len" => match value.parse::<u64>() {
                Ok(n) if n <= i64::MAX as u64 => shared.observed.slowlog_max_len.store(n, Relaxed),
                _ => return bad(&name, "argument must be a non-negative integer"),
            },
            "latency-monitor-threshold" => match value.parse::<u64>() {
                Ok(n) if n <= i64::MAX as u64 => {
                    shared.observed.latency_threshold_ms.store(n, Relaxed)
                }
                _ => return bad(&name, "argument must be a non-negative integer"),
            },
            "save" | "appendonly" => {} // accepted and ignored: nothing is persisted
            "maxmemory-policy" | "eviction"
                if value.eq_ignore_ascii_case(shared.store.eviction().as_str()) => {}
            "port" | "bind" | "proto-max-bulk-len" | "threads" | "databases"
            | "shm-socket-perm" | "maxmemory-policy" | "eviction" | "dram-checksums" | "ssd"
            | "ssd-engine" | "ssd-segment-size" | "ssd-promote" | "ssd-stage-on-match"
            | "data-port" | "shm" | "shm-socket" | "shm-arena" | "reserve-timeout" => {
                return bad(&name, "can't set immutable config (a start flag)")
            }
            _ => {
                return Reply::Error(CommandError::err(format!(
                    "Unknown option or number of arguments for CONFIG SET - '{name}'"
                )))
            }
        }
    }
    Reply::ok()
}

/// LATENCY DOCTOR: what the latency monitor saw, in words.
fn latency_doctor(shared: &Shared) -> String {
    let threshold = shared.observed.latency_threshold_ms.load(Relaxed);
    if threshold == 0 {
        return "The latency monitor is off: set latency-monitor-threshold (milliseconds) with \
                CONFIG SET to record commands at least that slow.\n"
            .into();
    }
    let events = shared.observed.latency_events();
    if events.is_empty() {
        return format!(
            "No command took {threshold} ms or more (latency-monitor-threshold) since the \
             monitor was last reset.\n"
        );
    }
    let mut out = String::new();
    for (name, e) in events {
        let n = e.samples.len();
        let avg = e.samples.iter().map(|s| s.1).sum::<u64>() / n.max(1) as u64;
        out.push_str(&format!(
            "{name}: {n} latency spikes (average {avg} ms, worst {} ms) at or above \
             {threshold} ms. SLOWLOG GET shows the commands (slowlog-log-slower-than).\n",
            e.max
        ));
    }
    out
}

/// MEMORY STATS: a map of what the memory holds, with Redis's field names
/// where tidepool has the same thing and its own for the tiers.
fn memory_stats(shared: &Shared) -> Reply {
    let used = shared.store.used();
    let rss = crate::info::rss_bytes();
    let clients = shared.clients.all();
    let client_bytes: usize = clients.iter().map(|c| c.qbuf_cap.load(Relaxed)).sum();
    Reply::map([
        ("peak.allocated", Reply::Int(rss as i64)),
        ("total.allocated", Reply::Int(rss as i64)),
        ("clients.normal", Reply::Int(client_bytes as i64)),
        ("keys.count", Reply::Int(shared.store.len() as i64)),
        ("dataset.bytes", Reply::Int(used as i64)),
        ("dram.capacity", Reply::Int(shared.store.capacity() as i64)),
        ("dram.retained", Reply::Int(shared.store.retained() as i64)),
        (
            "arena.used",
            Reply::Int(shared.data.arena.as_ref().map_or(0, |a| a.used()) as i64),
        ),
        (
            "reservations.bytes",
            Reply::Int(shared.data.reserved_bytes() as i64),
        ),
        (
            "fragmentation",
            Reply::Double(if used == 0 {
                0.0
            } else {
                rss as f64 / used as f64
            }),
        ),
    ])
}

/// MEMORY DOCTOR: what stands out in the memory figures, in words.
fn memory_doctor(shared: &Shared) -> String {
    let used = shared.store.used();
    let cap = shared.store.capacity();
    let retained = shared.store.retained();
    let mut notes = Vec::new();
    if cap > 0 && used * 100 / cap >= 95 {
        notes.push(format!(
            "DRAM is {}% full: new blocks evict old ones (that is a cache's steady state).",
            used * 100 / cap
        ));
    }
    if retained > cap / 10 {
        notes.push(format!(
            "{retained} bytes of deleted or replaced blocks are still held by KV.LOCATE leases: \
             clients should KV.RELEASE what they have read."
        ));
    }
    if shared.data.reserved_bytes() > cap / 10 {
        notes.push(format!(
            "{} bytes are reserved and not committed: clients should KV.COMMIT or KV.ABORT.",
            shared.data.reserved_bytes()
        ));
    }
    if notes.is_empty() {
        format!(
            "No memory problem found: DRAM {}% of capacity, {retained} bytes held by leases \
             past deletion, {} bytes reserved and not committed.\n",
            used * 100 / cap.max(1),
            shared.data.reserved_bytes()
        )
    } else {
        notes.join("\n") + "\n"
    }
}
