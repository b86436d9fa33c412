//! The rest of what Redis tools and clients call, in Redis's formats,
//! through the real server: string commands, TIME and ROLE, HELP of every
//! container, SLOWLOG, LATENCY, MONITOR, CLIENT KILL / PAUSE / SETINFO /
//! LIST, MEMORY STATS / DOCTOR, INFO's sections, CONFIG GET *, start-up
//! refusals.

use std::io::Write;
use std::time::{Duration, Instant};

use redis::Value;
use tidepool_tests::{read_until, resp, server_bin, Server};

fn cmd(con: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<Value> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con)
}

#[test]
fn string_commands_answer_as_redis() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    assert_eq!(
        cmd(&mut c, &["SETEX", "a", "100", "v"]).unwrap(),
        Value::Okay
    );
    let ttl: i64 = redis::cmd("TTL").arg("a").query(&mut c).unwrap();
    assert!((99..=100).contains(&ttl), "{ttl}");
    assert_eq!(
        cmd(&mut c, &["PSETEX", "b", "100000", "w"]).unwrap(),
        Value::Okay
    );
    let pttl: i64 = redis::cmd("PTTL").arg("b").query(&mut c).unwrap();
    assert!((90_000..=100_000).contains(&pttl), "{pttl}");
    let e = cmd(&mut c, &["SETEX", "a", "0", "v"]).unwrap_err();
    assert!(
        e.to_string()
            .contains("invalid expire time in 'setex' command"),
        "{e}"
    );
    assert_eq!(cmd(&mut c, &["SETNX", "a", "x"]).unwrap(), Value::Int(0));
    assert_eq!(cmd(&mut c, &["SETNX", "c", "x"]).unwrap(), Value::Int(1));
    let got: Vec<u8> = redis::cmd("GET").arg("c").query(&mut c).unwrap();
    assert_eq!(got, b"x");
    // GETEX: PERSIST removes the TTL, EX sets one, plain leaves it.
    let v: Vec<u8> = redis::cmd("GETEX")
        .arg("a")
        .arg("PERSIST")
        .query(&mut c)
        .unwrap();
    assert_eq!(v, b"v");
    let ttl: i64 = redis::cmd("TTL").arg("a").query(&mut c).unwrap();
    assert_eq!(ttl, -1);
    let _: Vec<u8> = redis::cmd("GETEX")
        .arg("a")
        .arg("EX")
        .arg(50)
        .query(&mut c)
        .unwrap();
    let ttl: i64 = redis::cmd("TTL").arg("a").query(&mut c).unwrap();
    assert!((49..=50).contains(&ttl));
    assert_eq!(cmd(&mut c, &["GETEX", "nope"]).unwrap(), Value::Nil);
    // GETDEL: the value, and the key (with what is chained under it) gone.
    let _: () = redis::cmd("KV.PUT")
        .arg("child")
        .arg("c1")
        .arg("PARENT")
        .arg("c")
        .query(&mut c)
        .unwrap();
    let v: Vec<u8> = redis::cmd("GETDEL").arg("c").query(&mut c).unwrap();
    assert_eq!(v, b"x");
    let n: i64 = redis::cmd("EXISTS")
        .arg("c")
        .arg("child")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(cmd(&mut c, &["GETDEL", "c"]).unwrap(), Value::Nil);
    // Counters are refused, saying why.
    for args in [
        &["INCR", "n"][..],
        &["DECRBY", "n", "2"],
        &["APPEND", "a", "z"],
    ] {
        let e = cmd(&mut c, args).unwrap_err();
        assert!(e.to_string().contains("not counters"), "{args:?}: {e}");
    }
}

#[test]
fn time_role_and_every_containers_help() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    let t: Vec<String> = redis::cmd("TIME").query(&mut c).unwrap();
    let secs: u64 = t[0].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs.abs_diff(now) <= 2);
    assert!(t[1].parse::<u32>().unwrap() < 1_000_000);
    assert_eq!(
        cmd(&mut c, &["ROLE"]).unwrap(),
        Value::Array(vec![
            Value::BulkString(b"master".to_vec()),
            Value::Int(0),
            Value::Array(vec![])
        ])
    );
    for container in [
        "CLIENT", "CONFIG", "COMMAND", "MEMORY", "OBJECT", "SLOWLOG", "LATENCY",
    ] {
        let help: Vec<String> = redis::cmd(container).arg("HELP").query(&mut c).unwrap();
        assert!(
            help[0].starts_with(&format!("{container} <subcommand>")),
            "{help:?}"
        );
        assert!(help.iter().any(|l| l == "HELP"), "{container}: {help:?}");
        // The error for an unknown subcommand points there, and every
        // subcommand the help names is one the server takes.
        let e = cmd(&mut c, &[container, "NOSUCH"]).unwrap_err();
        assert!(
            e.to_string().contains(&format!("Try {container} HELP")),
            "{e}"
        );
        for line in help
            .iter()
            .skip(1)
            .filter(|l| !l.starts_with(' ') && !l.starts_with('('))
        {
            let sub = line.split_whitespace().next().unwrap();
            let e = cmd(&mut c, &[container, sub]).err().map(|e| e.to_string());
            assert!(
                !e.as_deref().unwrap_or("").contains("unknown subcommand"),
                "{container} HELP lists {sub}, which is unknown: {e:?}"
            );
        }
    }
}

#[test]
fn slowlog_and_latency_record_slow_commands() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    let get = |c: &mut redis::Connection, k: &str| -> String {
        let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(k).query(c).unwrap();
        v[1].clone()
    };
    assert_eq!(get(&mut c, "slowlog-log-slower-than"), "10000");
    assert_eq!(get(&mut c, "slowlog-max-len"), "128");
    let n: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut c).unwrap();
    assert_eq!(n, 0);
    // Log every command; a long argument is cut as Redis cuts it.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("slowkey")
        .arg(vec![b'x'; 300])
        .query(&mut c)
        .unwrap();
    let log: Vec<Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let Value::Array(e) = &log[0] else {
        panic!("{log:?}")
    };
    assert_eq!(e.len(), 6, "id, time, micros, args, addr, name: {e:?}");
    let Value::Array(args) = &e[3] else {
        panic!("{e:?}")
    };
    assert_eq!(args[0], Value::BulkString(b"SET".to_vec()));
    assert_eq!(args[1], Value::BulkString(b"slowkey".to_vec()));
    let Value::BulkString(cut) = &args[2] else {
        panic!()
    };
    assert!(
        cut.ends_with(b"... (172 more bytes)"),
        "{}",
        String::from_utf8_lossy(cut)
    );
    let n: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut c).unwrap();
    assert!(n >= 2);
    let all: Vec<Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert!(all.len() as i64 >= n);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(-1)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut c).unwrap();
    let n: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut c).unwrap();
    assert_eq!(n, 0);
    // The latency monitor is off by default, as in Redis.
    assert_eq!(
        cmd(&mut c, &["LATENCY", "LATEST"]).unwrap(),
        Value::Array(vec![])
    );
    let doctor: String = redis::cmd("LATENCY").arg("DOCTOR").query(&mut c).unwrap();
    assert!(doctor.contains("off"), "{doctor}");
    // On at 1 ms, a KEYS over 200,000 blocks (a slow command) is recorded.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("latency-monitor-threshold")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let mut pipe = redis::pipe();
    for i in 0..200_000 {
        pipe.cmd("SET").arg(format!("k{i}")).arg("v").ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _: Vec<String> = redis::cmd("KEYS").arg("nomatch*").query(&mut c).unwrap();
        let latest: Vec<Value> = redis::cmd("LATENCY").arg("LATEST").query(&mut c).unwrap();
        if !latest.is_empty() {
            let Value::Array(ev) = &latest[0] else {
                panic!()
            };
            assert_eq!(ev[0], Value::BulkString(b"command".to_vec()));
            break;
        }
        assert!(Instant::now() < deadline, "no command reached 1 ms");
    }
    let history: Vec<Value> = redis::cmd("LATENCY")
        .arg("HISTORY")
        .arg("command")
        .query(&mut c)
        .unwrap();
    assert!(!history.is_empty());
    let n: i64 = redis::cmd("LATENCY").arg("RESET").query(&mut c).unwrap();
    assert_eq!(n, 1);
}

#[test]
fn monitor_shows_every_command_quoted() {
    let s = Server::start(&[]);
    let mut m = s.raw();
    m.write_all(&resp(&[b"MONITOR"])).unwrap();
    let (got, _) = read_until(&mut m, |b| b.ends_with(b"\r\n"));
    assert_eq!(got, b"+OK\r\n");
    let mut c = s.redis();
    let _: () = redis::cmd("SET")
        .arg("a b")
        .arg(&b"x\ny\"z"[..])
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("AUTH").arg("secret").query(&mut c).unwrap_or(());
    let _: Option<Vec<u8>> = redis::cmd("GET").arg("a b").query(&mut c).unwrap();
    let (got, _) = read_until(&mut m, |b| b.windows(5).any(|w| w == b"\"GET\""));
    let text = String::from_utf8(got).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().all(|l| l.starts_with('+')), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(r#"] "SET" "a b" "x\ny\"z""#)),
        "{text}"
    );
    assert!(!text.contains("secret"), "AUTH is not shown: {text}");
    assert!(
        lines.last().unwrap().ends_with(r#"] "GET" "a b""#),
        "{text}"
    );
    // The monitor shows up in CLIENT LIST and INFO.
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    assert!(list.contains("flags=O"), "{list}");
    assert_eq!(s.info_u64("monitor_clients"), 1);
}

#[test]
fn client_kill_pause_setinfo_and_list() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    let mut victim = s.raw();
    victim
        .write_all(&resp(&[b"CLIENT", b"SETNAME", b"victim"]))
        .unwrap();
    let _ = read_until(&mut victim, |b| b.ends_with(b"\r\n"));
    let _: () = redis::cmd("CLIENT")
        .arg("SETINFO")
        .arg("LIB-NAME")
        .arg("mylib")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("SETINFO")
        .arg("LIB-VER")
        .arg("1.2")
        .query(&mut c)
        .unwrap();
    let me: String = redis::cmd("CLIENT").arg("INFO").query(&mut c).unwrap();
    for field in [
        "lib-name=mylib",
        "lib-ver=1.2",
        "fd=",
        "age=",
        "idle=",
        "cmd=",
        "tot-mem=",
        "qbuf=",
        "omem=",
    ] {
        assert!(me.contains(field), "{field}: {me}");
    }
    assert!(
        !me.contains("fd=-1") && me.contains("cmd=client|info"),
        "{me}"
    );
    // LIST by ID and TYPE.
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("ID")
        .arg(id)
        .query(&mut c)
        .unwrap();
    assert_eq!(list.lines().count(), 1, "{list}");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut c)
        .unwrap();
    assert_eq!(list, "");
    // KILL by the old form, then by filters (count), sparing the caller.
    let victim_addr = victim.local_addr().unwrap().to_string();
    let e = cmd(&mut c, &["CLIENT", "KILL", "10.9.9.9:1"]).unwrap_err();
    assert!(e.to_string().contains("No such client"), "{e}");
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg(&victim_addr)
        .query(&mut c)
        .unwrap();
    let (_, closed) = read_until(&mut victim, |_| false);
    assert!(closed, "the victim's connection was closed");
    let mut other = s.raw();
    other.write_all(b"PING\r\n").unwrap();
    let _ = read_until(&mut other, |b| b.ends_with(b"\r\n"));
    let n: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut c)
        .unwrap();
    assert!(n >= 1);
    let (_, closed) = read_until(&mut other, |_| false);
    assert!(closed);
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG", "SKIPME yes by default");
    // PAUSE WRITE holds writes, not reads; UNPAUSE lets them go.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(60_000)
        .arg("WRITE")
        .query(&mut c)
        .unwrap();
    let mut w = s.raw();
    w.write_all(&resp(&[b"SET", b"paused", b"1"])).unwrap();
    w.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let (got, _) = read_until(&mut w, |b| b.ends_with(b"\r\n"));
    assert!(got.is_empty(), "a write ran during CLIENT PAUSE WRITE");
    let mut r = s.redis();
    let v: Option<Vec<u8>> = redis::cmd("GET").arg("paused").query(&mut r).unwrap();
    assert_eq!(v, None, "reads go on");
    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut c).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (got, _) = read_until(&mut w, |b| b.ends_with(b"\r\n"));
    assert_eq!(got, b"+OK\r\n");
    // PAUSE (ALL) for 300 ms holds reads too, then they run.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .query(&mut c)
        .unwrap();
    let t = Instant::now();
    let _: Option<Vec<u8>> = redis::cmd("GET").arg("paused").query(&mut r).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        cmd(&mut c, &["CLIENT", "NO-EVICT", "on"]).unwrap(),
        Value::Okay
    );
}

#[test]
fn memory_stats_doctor_and_config_rewrite() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
    let stats: std::collections::HashMap<String, Value> =
        redis::cmd("MEMORY").arg("STATS").query(&mut c).unwrap();
    assert_eq!(stats["keys.count"], Value::Int(1));
    assert!(matches!(stats["dataset.bytes"], Value::Int(n) if n > 0));
    let doctor: String = redis::cmd("MEMORY").arg("DOCTOR").query(&mut c).unwrap();
    assert!(doctor.contains("No memory problem"), "{doctor}");
    let e = cmd(&mut c, &["CONFIG", "REWRITE"]).unwrap_err();
    assert!(e.to_string().contains("no configuration file"), "{e}");
}

#[test]
fn info_has_every_redis_section_with_real_numbers() {
    let s = Server::start(&[]);
    let mut c = s.redis();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
    let _ = cmd(&mut c, &["NOSUCHCOMMAND"]);
    let _ = cmd(&mut c, &["KV.PUT", "x", "1", "PARENT", "nope"]);
    let all: String = redis::cmd("INFO").arg("everything").query(&mut c).unwrap();
    for section in [
        "Server",
        "Clients",
        "Memory",
        "Persistence",
        "Stats",
        "Replication",
        "CPU",
        "Modules",
        "Commandstats",
        "Errorstats",
        "Cluster",
        "Keyspace",
        "Kvcache",
        "Tiers",
        "Dataplane",
    ] {
        assert!(all.contains(&format!("# {section}\r\n")), "no {section}");
    }
    for field in [
        "role:master",
        "connected_slaves:0",
        "aof_enabled:0",
        "cluster_enabled:0",
        "maxmemory_policy:lru",
        "db0:keys=1",
    ] {
        assert!(all.contains(field), "{field}");
    }
    assert!(all.contains("cmdstat_set:calls=1,usec="), "{all}");
    assert!(all.contains("errorstat_ERR:count=1"), "{all}");
    assert!(all.contains("errorstat_NOPARENT:count=1"), "{all}");
    assert!(
        all.contains("cmdstat_kv.put:") || all.contains("cmdstat_kv_put:calls=1"),
        "{all}"
    );
    let user: f64 = all
        .lines()
        .find_map(|l| l.strip_prefix("used_cpu_user:"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(user > 0.0);
    // A plain INFO leaves commandstats out, as Redis does.
    let plain: String = redis::cmd("INFO").query(&mut c).unwrap();
    assert!(!plain.contains("# Commandstats") && plain.contains("# Errorstats"));
    // CONFIG RESETSTAT zeroes them.
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    assert!(!stats.contains("cmdstat_set"), "{stats}");
}

#[test]
fn config_get_lists_every_setting_and_sizes_read_as_redis() {
    let s = Server::start(&["--eviction", "adaptive"]);
    let mut c = s.redis();
    let all: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("*")
        .query(&mut c)
        .unwrap();
    for key in [
        "maxmemory",
        "maxmemory-policy",
        "eviction",
        "ssd",
        "ssd-engine",
        "ssd-segment-size",
        "ssd-promote",
        "ssd-stage-on-match",
        "data-port",
        "shm",
        "shm-socket",
        "shm-arena",
        "reserve-timeout",
        "dram-checksums",
        "slowlog-log-slower-than",
        "latency-monitor-threshold",
    ] {
        assert!(all.contains_key(key), "CONFIG GET * has no {key}");
    }
    assert_eq!(all["maxmemory-policy"], "adaptive");
    let info: String = redis::cmd("INFO").arg("memory").query(&mut c).unwrap();
    assert!(info.contains("maxmemory_policy:adaptive"), "{info}");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("300mb")
        .query(&mut c)
        .unwrap();
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        v[1],
        (300u64 << 20).to_string(),
        "300mb is 300 MiB, as in Redis"
    );
    let e = cmd(&mut c, &["CONFIG", "SET", "maxmemory", "0"]).unwrap_err();
    assert!(e.to_string().contains("maxmemory"), "{e}");
    let e = cmd(&mut c, &["CONFIG", "SET", "maxmemory-policy", "lru"]).unwrap_err();
    assert!(e.to_string().contains("immutable"), "{e}");
}

#[test]
fn nonsense_settings_and_a_taken_port_stop_the_server_with_one_clear_line() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(server_bin())
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (args, says) in [
        (&["--dram", "0"][..], "dram must be at least 1KiB"),
        (&["--threads", "100000"], "threads must be at most"),
        (&["--shm-arena", "0"], "shm-arena must be at least"),
        (&["--high-watermark", "2"], "watermarks"),
        (&["--maxclients", "0"], "maxclients"),
    ] {
        let err = run(&[&["--port", "0"][..], args].concat());
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("backtrace") && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    // A taken port: the address is named.
    let s = Server::start(&[]);
    let port = s.port.to_string();
    let err = run(&["--port", &port]);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("in use"),
        "{err}"
    );
}
