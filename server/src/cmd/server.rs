//! Connection and server commands: PING, ECHO, HELLO, AUTH, SELECT, RESET,
//! COMMAND, CLIENT, CONFIG, INFO.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tidepool_protocol::table::{self, CommandSpec};
use tidepool_protocol::{glob, Command, CommandError, Reply, Version};

use crate::config::parse_size;
use crate::conn::Session;
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
        Command::ClientList => {
            let now = shared.uptime_ms();
            let mut s = String::new();
            for c in shared.clients.all() {
                s.push_str(&client_line(&c, now));
                s.push('\n');
            }
            Reply::Verbatim(s)
        }
        Command::ClientInfo => {
            let mut s = client_line(&session.client, shared.uptime_ms());
            s.push('\n');
            Reply::Verbatim(s)
        }
        Command::ConfigGet(patterns) => config_get(shared, &patterns),
        Command::ConfigSet(pairs) => config_set(shared, &pairs),
        Command::ConfigResetStat => {
            shared.store.reset_stats();
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
    let flags = if subs + psubs > 0 { "P" } else { "N" };
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db=0 sub={} psub={} ssub=0 multi=-1 qbuf={} qbuf-free={} argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={}",
        c.id,
        c.addr,
        c.laddr,
        name,
        age,
        idle,
        flags,
        subs,
        psubs,
        c.qbuf.load(Relaxed),
        c.qbuf_cap.load(Relaxed).saturating_sub(c.qbuf.load(Relaxed)),
        c.last_cmd.lock(),
        c.resp.load(Relaxed)
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
        ("maxmemory-policy", "prefix-lru".to_string()),
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
    ]
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
            "dram" | "maxmemory" => match parse_size(&value) {
                Some(bytes) if bytes > 0 => {
                    shared.store.set_capacity(bytes);
                    shared.config.write().dram = bytesize::ByteSize::b(bytes);
                }
                _ => return bad(&name, "argument must be a memory value"),
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
            "save" | "appendonly" => {} // accepted and ignored: nothing is persisted
            "port" | "bind" | "proto-max-bulk-len" | "threads" | "databases"
            | "shm-socket-perm" => return bad(&name, "can't set immutable config"),
            _ => {
                return Reply::Error(CommandError::err(format!(
                    "Unknown option or number of arguments for CONFIG SET - '{name}'"
                )))
            }
        }
    }
    Reply::ok()
}
