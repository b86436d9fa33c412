//! Helpers for the integration tests: start the real `tidepool-server` binary
//! on a free port, run the real `redis-cli`, talk raw RESP.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the server binary: `$TIDEPOOL_SERVER_BIN`, or `tidepool-server` in
/// the target directory these tests were built into, which must be newer
/// than every source file it is built from (a plain `cargo test` does not
/// rebuild it: a stale binary would be tested instead of the code).
pub fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDEPOOL_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/tidepool-server
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("tidepool-server");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p tidepool-server` (scripts/test.sh does)",
        bin.display()
    );
    assert_fresh(&bin);
    bin
}

/// Path of the `tidepool-bench` binary built beside the server.
pub fn bench_bin() -> PathBuf {
    let bin = server_bin().with_file_name("tidepool-bench");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` (scripts/test.sh does)",
        bin.display()
    );
    assert_fresh(&bin);
    bin
}

/// Path of an example of tidepool-client (`client/examples/NAME.rs`),
/// which `cargo test --workspace` builds (scripts/test.sh runs that).
pub fn example_bin(name: &str) -> PathBuf {
    let bin = server_bin().with_file_name("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p tidepool-client --examples` (cargo test --workspace does)",
        bin.display()
    );
    assert_fresh(&bin);
    bin
}

/// Panics when a source file `bin` was built from changed after it was
/// built. The list is cargo's own (`<bin>.d`, the dep-info beside it).
fn assert_fresh(bin: &std::path::Path) {
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .expect("binary mtime");
    let Ok(dep_info) = std::fs::read_to_string(bin.with_extension("d")) else {
        return; // not built by cargo (TIDEPOOL_SERVER_BIN or a copy): nothing to compare
    };
    // "target: src1 src2 ...", spaces inside paths escaped with '\'.
    let sources = dep_info
        .split_once(": ")
        .map_or("", |(_, s)| s.lines().next().unwrap_or(""));
    let mut newer = Vec::new();
    let mut path = String::new();
    let mut chars = sources.chars().chain(std::iter::once(' ')).peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => path.push(chars.next().unwrap()),
            ' ' if !path.is_empty() => {
                let p = std::mem::take(&mut path);
                if std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m > built)
                {
                    newer.push(p);
                }
            }
            ' ' => {}
            c => path.push(c),
        }
    }
    assert!(
        newer.is_empty(),
        "{} is older than its sources ({}): rebuild it with `cargo build --workspace --bins --examples` \
         (scripts/test.sh does) or these tests test stale code",
        bin.display(),
        newer.join(", ")
    );
}

/// Says that a test skipped something (a tool or a kernel feature missing
/// here) where the run's log shows it: written to stderr past libtest's
/// capture, and appended to `$TIDEPOOL_SKIP_LOG` when set (scripts/test.sh
/// lists those at the end of the run).
pub fn skipped(what: &str) {
    use std::io::Write as _;
    let line = format!("SKIPPED: {what}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("TIDEPOOL_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Panics with a clear message when a tool the tests need is missing.
pub fn must_have_tool(name: &str) {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{name}` is not installed: run scripts/test.sh, which installs redis-tools"
    );
}

/// The `process_id` of the server answering on `port`, if one answers.
fn answering_pid(port: u16) -> Option<u32> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"INFO server\r\n").ok()?;
    let (got, _) = read_until(&mut s, bulk_complete);
    let text = String::from_utf8_lossy(&got);
    text.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether `b` holds a whole RESP bulk string (`$len\r\n...\r\n`).
fn bulk_complete(b: &[u8]) -> bool {
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match std::str::from_utf8(&b[1..end])
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        Some(n) => b.len() >= end + 2 + n + 2,
        None => true, // an error or another type: nothing more to wait for
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `tidepool-server`, killed when dropped.
pub struct Server {
    /// Its RESP port.
    pub port: u16,
    child: Child,
}

impl Server {
    /// Starts the server with extra flags and waits until it answers PING.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with(extra, |port, extra| {
            let mut c = Command::new(server_bin());
            c.args(["--port", &port.to_string()]).args(extra);
            c
        })
    }

    /// Starts the server through `bash -c 'SETUP; exec tidepool-server ...'`
    /// (a umask, a descriptor limit) and waits until it answers PING.
    pub fn start_after(setup: &str, extra: &[&str]) -> Server {
        Server::start_with(extra, |port, extra| {
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg(format!("{setup}; exec \"$0\" \"$@\""))
                .arg(server_bin())
                .args(["--port", &port.to_string()])
                .args(extra);
            c
        })
    }

    /// Starts the server on `port` (one a server that was killed used:
    /// a restart) and waits until it answers PING.
    pub fn start_on(port: u16, extra: &[&str]) -> Server {
        Server::start_at(
            extra,
            || port,
            |port, extra| {
                let mut c = Command::new(server_bin());
                c.args(["--port", &port.to_string()]).args(extra);
                c
            },
        )
    }

    fn start_with(extra: &[&str], command: impl Fn(u16, &[&str]) -> Command) -> Server {
        Server::start_at(extra, free_port, command)
    }

    fn start_at(
        extra: &[&str],
        pick: impl Fn() -> u16,
        command: impl Fn(u16, &[&str]) -> Command,
    ) -> Server {
        for _attempt in 0..5 {
            let port = pick();
            let mut child = command(port, extra)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawning tidepool-server");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port was probably taken; try another
                }
                // The port was free when picked, but another test may have
                // taken it since: answering is not enough, the server must
                // be this child.
                match answering_pid(port) {
                    Some(pid) if pid == child.id() => return Server { port, child },
                    Some(_) => break, // another process's: try another port
                    None => {}
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("tidepool-server did not start");
    }

    /// Resident memory of the process, in bytes (VmRSS).
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// Resident bytes of the mappings whose name contains `name` (from
    /// /proc/PID/smaps; `memfd:tidepool-arena` is the shared arena).
    pub fn rss_of(&self, name: &str) -> u64 {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid())).expect("smaps");
        let mut inside = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                inside = line.contains(name);
            } else if inside && first == "Rss:" {
                kib += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        kib * 1024
    }

    /// CPU time the process has used (user and system).
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("/proc stat");
        // Fields after the command name (which ends with the last ')').
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `redis::Connection` (RESP2).
    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(10)))
            .expect("redis connection")
    }

    /// Runs `redis-cli -p PORT args...` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        must_have_tool("redis-cli");
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("running redis-cli")
    }

    /// Runs redis-cli and returns stdout as text, asserting it exited 0.
    pub fn cli_text(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Feeds `input` to redis-cli's stdin (its pipe mode parses quoted `\x..`
    /// escapes, so binary keys can be written) and returns stdout.
    pub fn cli_stdin(&self, extra: &[&str], input: &str) -> Vec<u8> {
        must_have_tool("redis-cli");
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running redis-cli");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    /// A raw TCP connection with a read timeout.
    pub fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// One INFO field as a number.
    pub fn info_u64(&self, field: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("everything")
            .query(&mut self.redis())
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("INFO has no {field}"))
            .trim()
            .parse()
            .expect("numeric INFO field")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Killed, it leaves its shm socket at the default path behind.
        let _ = std::fs::remove_file(default_shm_socket(self.port));
    }
}

/// Where a server on `port` puts its shm socket unless told otherwise.
pub fn default_shm_socket(port: u16) -> PathBuf {
    PathBuf::from(format!("/tmp/tidepool-{port}.sock"))
}

/// Reads from a raw connection until `pred` holds on what arrived, the peer
/// closes, or the read times out. Returns what arrived and whether it closed.
pub fn read_until(s: &mut TcpStream, pred: impl Fn(&[u8]) -> bool) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if pred(&got) {
                    return (got, false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

/// Encodes a request as a RESP array of bulk strings.
pub fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// The tcp data port, the shm socket and the arena id, from KV.DATAPLANE.
pub fn dataplane(con: &mut redis::Connection) -> (u16, String, u64) {
    use redis::Value;
    let v: Vec<Value> = redis::cmd("KV.DATAPLANE").query(con).expect("KV.DATAPLANE");
    let mut port = 0;
    let mut sock = String::new();
    let mut id = 0;
    for kv in v.chunks(2) {
        let Value::BulkString(k) = &kv[0] else {
            continue;
        };
        match (&k[..], &kv[1]) {
            (b"tcp_port", Value::Int(p)) => port = *p as u16,
            (b"shm_socket", Value::BulkString(b)) => {
                sock = String::from_utf8(b.clone()).expect("utf-8 path")
            }
            (b"shm_arena_id", Value::BulkString(b)) => {
                id = u64::from_str_radix(std::str::from_utf8(b).expect("hex"), 16).expect("hex")
            }
            _ => {}
        }
    }
    (port, sock, id)
}

/// A real etcd, killed (and its data removed) when dropped.
pub struct Etcd {
    child: Option<Child>,
    dir: std::path::PathBuf,
    /// The address it listens on.
    host: String,
    /// Its client and peer ports.
    ports: (u16, u16),
    /// Its client endpoint, `127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Etcd {
    /// Starts etcd on free loopback ports with its data in a temp dir
    /// (another port pair when a port was taken meanwhile).
    pub fn start() -> Etcd {
        Etcd::start_on("127.0.0.1")
    }

    /// [`Etcd::start`] listening on `host` (an address of this host).
    pub fn start_on(host: &str) -> Etcd {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        for _attempt in 0..5 {
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("tidepool-etcd-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let ports = (free_port(), free_port());
            let mut etcd = Etcd {
                child: None,
                dir,
                host: host.to_string(),
                ports,
                endpoint: format!("{host}:{}", ports.0),
            };
            if etcd.launch() {
                return etcd;
            }
        }
        panic!("etcd did not start");
    }

    /// Runs etcd on this instance's ports and data; false when it exited
    /// (a port taken).
    fn launch(&mut self) -> bool {
        let c = format!("http://{}:{}", self.host, self.ports.0);
        let p = format!("http://{}:{}", self.host, self.ports.1);
        let log = std::fs::File::create(self.dir.join("etcd.log")).unwrap();
        let mut child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("t={p}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is installed by scripts/test.sh (Debian's etcd-server)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.endpoint).is_err() {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        true
    }

    /// Stops etcd (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.launch() {
            // Its ports may linger a moment after the kill.
            assert!(Instant::now() < deadline, "etcd did not start again");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The flags of a cluster node on `etcd`: 2 s lease TTL, 64 MiB of DRAM.
pub fn cluster_args(etcd: &Etcd) -> Vec<String> {
    [
        "--cluster",
        &format!("etcd://{}", etcd.endpoint),
        "--cluster-lease-ttl",
        "2",
        "--dram",
        "64MiB",
    ]
    .map(String::from)
    .to_vec()
}

/// Starts a cluster node on `etcd` ([`cluster_args`]) with extra flags.
pub fn cluster_node(etcd: &Etcd, extra: &[&str]) -> Server {
    let args = cluster_args(etcd);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A node's CLUSTER INFO.
pub fn cluster_info(s: &Server) -> String {
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query(&mut s.redis())
        .unwrap()
}

/// Waits (up to 20 s) until `pred` holds for every node's CLUSTER INFO.
pub fn converge(nodes: &[&Server], what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|s| pred(&cluster_info(s))) {
        assert!(
            Instant::now() < deadline,
            "{what}: {}",
            cluster_info(nodes[0])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every node sees `n` nodes sharing all the slots.
pub fn converge_on(nodes: &[&Server], n: usize) {
    let size = format!("cluster_size:{n}\r");
    converge(nodes, &format!("{n} nodes"), |i| {
        i.contains("cluster_state:ok") && i.contains(&size)
    });
}

/// Each slot's owner (`host:port`), from a node's CLUSTER SLOTS.
pub fn slot_owners(s: &Server) -> Vec<String> {
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut s.redis())
        .unwrap();
    let mut owners = vec![String::new(); 16384];
    for r in slots {
        let redis::Value::Array(r) = r else {
            panic!("{r:?}")
        };
        let (redis::Value::Int(first), redis::Value::Int(last)) = (&r[0], &r[1]) else {
            panic!("{r:?}")
        };
        let redis::Value::Array(n) = &r[2] else {
            panic!("{r:?}")
        };
        let (redis::Value::BulkString(host), redis::Value::Int(port)) = (&n[0], &n[1]) else {
            panic!("{n:?}")
        };
        let addr = format!("{}:{port}", String::from_utf8_lossy(host));
        for slot in *first..=*last {
            owners[slot as usize] = addr.clone();
        }
    }
    owners
}

/// A server's DBSIZE.
pub fn dbsize(s: &Server) -> i64 {
    redis::cmd("DBSIZE").query(&mut s.redis()).unwrap()
}

/// A multi-threaded tokio runtime of two workers, for tests that drive the
/// async client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
